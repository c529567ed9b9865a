//! The statements whose text both SQL backends run as is: the rules that must not drift
//! apart between SQLite and PostgreSQL (which blobs garbage collection may take, who holds a
//! lease), kept once. Parameters are numbered in order of first appearance, because SQLite
//! numbers `$N` that way whatever `N` says.

/// Blobs garbage collection may take, or that a collection already marked, after `$3` in
/// digest order, at most `$4`; with `$1` the grace cutoff and `$2` now. A blob is collectable
/// when no manifest references it, no repository linked it within the grace period and no
/// commit in progress holds its lease.
pub(crate) const COLLECTABLE_BLOBS: &str = "SELECT b.digest, b.size FROM blobs b
     WHERE (b.deleting = 1 OR (b.deleting = 0 AND b.created_at < $1 AND b.lease_until < $2
       AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob = b.digest)
       AND NOT EXISTS (SELECT 1 FROM repository_blobs rb
                       WHERE rb.digest = b.digest AND rb.created_at >= $1)))
       AND b.digest > $3
     ORDER BY b.digest LIMIT $4";

/// Marks blob `$3` as being deleted if it is collectable by the rule of [`COLLECTABLE_BLOBS`]
/// (same `$1`, `$2`) or already marked; one row changed when the caller may delete its bytes.
pub(crate) const MARK_BLOB_DELETING: &str = "UPDATE blobs AS b SET deleting = 1
     WHERE (b.deleting = 1 OR (b.deleting = 0 AND b.created_at < $1 AND b.lease_until < $2
       AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob = b.digest)
       AND NOT EXISTS (SELECT 1 FROM repository_blobs rb
                       WHERE rb.digest = b.digest AND rb.created_at >= $1)))
       AND b.digest = $3";

/// The holder and expiry of lease `$1`.
pub(crate) const LEASE: &str = "SELECT holder, until FROM leases WHERE name = $1";

/// Gives lease `$1` to holder `$2` until `$3` if it is free, expired at `$4`, or already
/// `$2`'s; one row changed when `$2` holds it now.
pub(crate) const CLAIM_LEASE: &str = "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3)
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
     WHERE leases.until < $4 OR leases.holder = excluded.holder";

pub(crate) const SETTING: &str = "SELECT value FROM settings WHERE name = $1";

pub(crate) const PUT_SETTING: &str =
    "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3)
     ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at";

pub(crate) const RECORD_GC_RUN: &str = "INSERT INTO gc_runs
     (id, started_at, finished_at, instance, blobs_deleted, bytes_freed, error)
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING";

/// Keeps the newest [`crate::GC_RUNS_KEPT`] runs.
pub(crate) const PRUNE_GC_RUNS: &str = "DELETE FROM gc_runs WHERE id NOT IN
     (SELECT id FROM gc_runs ORDER BY started_at DESC, id DESC LIMIT 1000)";

pub(crate) const GC_RUNS: &str = "SELECT id, started_at, finished_at, instance, blobs_deleted,
     bytes_freed, error FROM gc_runs ORDER BY started_at DESC, id DESC LIMIT $1";

/// The manifest tag `$2` of repository `$1` names.
pub(crate) const TAG_TARGET: &str = "SELECT manifest FROM tags WHERE repository = $1 AND name = $2";

/// Deletes manifest `$2` of `$1` (its tags and references cascade) that retention planned
/// to delete at `$3`, unless it is needed now: a tag was pointed at it since, a manifest
/// (not deleted after all) lists it as a child, or it is a referrer whose subject exists.
pub(crate) const DELETE_PLANNED_MANIFEST: &str = "DELETE FROM manifests
     WHERE repository = $1 AND digest = $2
       AND NOT EXISTS (SELECT 1 FROM tags
                        WHERE repository = $1 AND manifest = $2 AND updated_at >= $3)
       AND NOT EXISTS (SELECT 1 FROM manifest_children WHERE repository = $1 AND child = $2)
       AND NOT EXISTS (SELECT 1 FROM manifests m JOIN manifests s
                         ON s.repository = m.repository AND s.digest = m.subject
                        WHERE m.repository = $1 AND m.digest = $2)";

pub(crate) const INVENTORY_MANIFESTS: &str = "SELECT digest, media_type, length(content),
     created_at, pulled_at, subject FROM manifests WHERE repository = $1";
pub(crate) const INVENTORY_CHILDREN: &str =
    "SELECT manifest, child FROM manifest_children WHERE repository = $1";
pub(crate) const INVENTORY_BLOBS: &str = "SELECT mb.manifest, mb.blob, b.size
     FROM manifest_blobs mb JOIN blobs b ON b.digest = mb.blob WHERE mb.repository = $1";
pub(crate) const INVENTORY_TAGS: &str =
    "SELECT name, manifest, updated_at, pulled_at FROM tags WHERE repository = $1";

/// Every manifest of any repository that references blob `$1`, as (repository, digest).
pub(crate) const BLOB_USERS: &str =
    "SELECT repository, manifest FROM manifest_blobs WHERE blob = $1";

/// Pull times only move forward: `$1` the time, `$2` the repository, `$3` the tag or digest
/// (the time first, as it is used first).
pub(crate) const PULLED_TAG: &str = "UPDATE tags SET pulled_at = $1
     WHERE repository = $2 AND name = $3 AND pulled_at < $1";
pub(crate) const PULLED_TAGGED_MANIFEST: &str = "UPDATE manifests SET pulled_at = $1
     WHERE repository = $2 AND pulled_at < $1
       AND digest = (SELECT manifest FROM tags WHERE repository = $2 AND name = $3)";
pub(crate) const PULLED_MANIFEST: &str = "UPDATE manifests SET pulled_at = $1
     WHERE repository = $2 AND digest = $3 AND pulled_at < $1";

pub(crate) const PROJECT_POLICY: &str = "SELECT policy FROM project_policies WHERE project = $1";
pub(crate) const PUT_PROJECT_POLICY: &str = "INSERT INTO project_policies (project, policy, updated_at)
     VALUES ($1, $2, $3)
     ON CONFLICT (project) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at";
pub(crate) const DELETE_PROJECT_POLICY: &str = "DELETE FROM project_policies WHERE project = $1";
pub(crate) const PROJECTS_WITH_POLICIES: &str =
    "SELECT project FROM project_policies ORDER BY project";

/// A project holds the blobs its repositories link and those their manifests reference (a
/// link can be deleted while a manifest keeps the bytes alive): `$1` the project, `$2` and
/// `$3` its range ([`crate::project_range`]). (PostgreSQL sums BIGINTs as NUMERIC: the cast
/// keeps the answer an integer in both.)
pub(crate) const PROJECT_USAGE: &str = "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blobs
     WHERE digest IN (SELECT digest FROM repository_blobs
                       WHERE repository = $1 OR (repository >= $2 AND repository < $3))
        OR digest IN (SELECT blob FROM manifest_blobs
                       WHERE repository = $1 OR (repository >= $2 AND repository < $3))";
pub(crate) const PROJECT_REPOSITORY_USAGE: &str = "SELECT held.repository,
       CAST(SUM(b.size) AS BIGINT)
     FROM (SELECT repository, digest FROM repository_blobs
            WHERE repository = $1 OR (repository >= $2 AND repository < $3)
           UNION
           SELECT repository, blob FROM manifest_blobs
            WHERE repository = $1 OR (repository >= $2 AND repository < $3)) held
     JOIN blobs b ON b.digest = held.digest
     GROUP BY held.repository ORDER BY held.repository";
/// Whether project `$2` (range `$3`, `$4`) holds blob `$1`.
pub(crate) const LINKED_IN_PROJECT: &str = "SELECT 1 WHERE EXISTS
       (SELECT 1 FROM repository_blobs WHERE digest = $1
         AND (repository = $2 OR (repository >= $3 AND repository < $4)))
     OR EXISTS
       (SELECT 1 FROM manifest_blobs WHERE blob = $1
         AND (repository = $2 OR (repository >= $3 AND repository < $4)))";

pub(crate) const BLOB_ROW: &str = "SELECT size FROM blobs WHERE digest = $1";
pub(crate) const IS_MANIFEST: &str = "SELECT 1 FROM manifests WHERE digest = $1 LIMIT 1";
/// Committed blob rows after `$1` in digest order, at most `$3`; rows a collection marked or
/// a commit in progress holds at `$2` are left out (their bytes may rightly be absent).
pub(crate) const SETTLED_BLOBS: &str = "SELECT digest, size FROM blobs
     WHERE digest > $1 AND lease_until < $2 AND deleting = 0 ORDER BY digest LIMIT $3";
/// Manifest references to blobs that have no row, and to child manifests that do not exist.
pub(crate) const DANGLING_BLOB_REFERENCES: &str = "SELECT mb.repository, mb.manifest, mb.blob
     FROM manifest_blobs mb WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.digest = mb.blob)
     ORDER BY mb.repository, mb.manifest, mb.blob LIMIT $1";
pub(crate) const DANGLING_CHILD_REFERENCES: &str = "SELECT mc.repository, mc.manifest, mc.child
     FROM manifest_children mc WHERE NOT EXISTS
       (SELECT 1 FROM manifests m WHERE m.repository = mc.repository AND m.digest = mc.child)
     ORDER BY mc.repository, mc.manifest, mc.child LIMIT $1";

// Web UI sessions (`AccessStore::open_session` and friends).
pub(crate) const INSERT_SESSION: &str =
    "INSERT INTO sessions (id_hash, username, csrf_token, created_at, expires_at)
     VALUES ($1, $2, $3, $4, $5)";
/// All but the newest `$2` sessions of user `$1` go, so logging in again and again cannot grow
/// the table without bound.
pub(crate) const TRIM_USER_SESSIONS: &str = "DELETE FROM sessions WHERE username = $1
       AND id_hash NOT IN (SELECT id_hash FROM sessions WHERE username = $1
                           ORDER BY created_at DESC, id_hash DESC LIMIT $2)";
pub(crate) const SESSION: &str = "SELECT id_hash, username, csrf_token, created_at, expires_at
     FROM sessions WHERE id_hash = $1 AND expires_at > $2";
pub(crate) const DELETE_SESSION: &str = "DELETE FROM sessions WHERE id_hash = $1";
pub(crate) const DELETE_EXPIRED_SESSIONS: &str = "DELETE FROM sessions WHERE expires_at <= $1";

/// Successful pushes and pulls since `$1` (ms), per day (days since the epoch, UTC).
pub(crate) const AUDIT_ACTIVITY: &str =
    "SELECT at_ms / 86400000, action, COUNT(*) FROM audit_events
     WHERE action IN ('push', 'pull') AND outcome = 'ok' AND at_ms >= $1
     GROUP BY at_ms / 86400000, action ORDER BY 1, 2";

/// What the web UI's repository list shows of repository `r.name`: its tags, the bytes of the
/// blobs it links or its manifests reference (each once), its last manifest push and its last
/// tag move.
macro_rules! summary_columns {
    () => {
        "(SELECT COUNT(*) FROM tags WHERE repository = r.name),
       (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blobs
         WHERE digest IN (SELECT digest FROM repository_blobs WHERE repository = r.name)
            OR digest IN (SELECT blob FROM manifest_blobs WHERE repository = r.name)),
       (SELECT COALESCE(MAX(created_at), 0) FROM manifests WHERE repository = r.name),
       (SELECT COALESCE(MAX(updated_at), 0) FROM tags WHERE repository = r.name)"
    };
}

/// Repository names after `$1` containing `$2` (a `LIKE` pattern, `\` escaping), at most `$3`.
pub(crate) const SEARCH_REPOSITORIES: &str = "SELECT name FROM repositories
     WHERE name > $1 AND name LIKE $2 ESCAPE '\\' ORDER BY name LIMIT $3";

/// The repository named like project `$1` itself, when it is after `$2` and contains `$3`.
pub(crate) const PROJECT_OWN_REPOSITORY: &str = "SELECT name FROM repositories
     WHERE name = $1 AND name > $2 AND name LIKE $3 ESCAPE '\\'";
/// Repositories in project range [`$1`, `$2`) ([`crate::project_range`]) after `$3` containing
/// `$4`, at most `$5`: an ordered scan of the primary key over that range only.
pub(crate) const PROJECT_RANGE_REPOSITORIES: &str = "SELECT name FROM repositories
     WHERE name >= $1 AND name < $2 AND name > $3 AND name LIKE $4 ESCAPE '\\'
     ORDER BY name LIMIT $5";
/// Both of the above for every project of `$1` (ranges `$2`, `$3`; all `text[]`) at once,
/// merged in name order: PostgreSQL only. Each project costs an index probe and at most `$6`
/// rows, whatever the registry's size.
pub(crate) const PROJECTS_REPOSITORIES: &str = "SELECT r.name
     FROM unnest($1::text[], $2::text[], $3::text[]) AS p(project, lo, hi)
     CROSS JOIN LATERAL (
        (SELECT name FROM repositories
          WHERE name = p.project AND name > $4 AND name LIKE $5 ESCAPE '\\')
        UNION ALL
        (SELECT name FROM repositories
          WHERE name >= p.lo AND name < p.hi AND name > $4 AND name LIKE $5 ESCAPE '\\'
          ORDER BY name LIMIT $6)) r
     ORDER BY r.name LIMIT $6";

/// The summary columns of repository `$1` (SQLite, which runs it once per name in-process).
pub(crate) const REPOSITORY_SUMMARY: &str = concat!(
    "SELECT ",
    summary_columns!(),
    " FROM repositories r WHERE r.name = $1"
);

/// [`REPOSITORY_SUMMARY`] for the names in `$1` (a `text[]`) at once: PostgreSQL only, where a
/// page's fifty summaries would otherwise be fifty round trips. The row starts with the name.
pub(crate) const REPOSITORY_SUMMARIES: &str = concat!(
    "SELECT r.name, ",
    summary_columns!(),
    " FROM repositories r WHERE r.name = ANY($1)"
);

/// `text` as a `LIKE` pattern matching names that contain it.
pub(crate) fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    /// Every statement here numbers its parameters in order of first appearance (see the
    /// module docs): a `$3` before a `$1` binds differently in SQLite and PostgreSQL.
    #[test]
    fn parameters_appear_in_numeric_order() {
        let source = include_str!("sql.rs");
        let source = &source[..source.find("#[cfg(test)]").unwrap_or(source.len())];
        for statement in source.split("pub(crate) const ").skip(1) {
            // The string literal only: the doc comment of the next statement follows it.
            let text = statement.split("\";").next().unwrap_or("");
            let mut seen: Vec<u32> = Vec::new();
            for part in text.split('$').skip(1) {
                let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(n) = digits.parse::<u32>() {
                    if !seen.contains(&n) {
                        seen.push(n);
                    }
                }
            }
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            assert_eq!(
                seen,
                sorted,
                "in {}",
                statement.lines().next().unwrap_or("")
            );
        }
    }
}
