//! [`MetadataStore`] on PostgreSQL: the same rules and the same SQL as the SQLite backend,
//! each write one serializable transaction.

use std::str::FromStr;
use std::sync::Arc;
use tokio_postgres::IsolationLevel;

use async_trait::async_trait;
use berth_oci::{Digest, Reference, RepositoryName, Tag};
use deadpool_postgres::{Client, GenericClient};
use tokio_postgres::types::ToSql;

use super::write_tx;
use super::{PostgresStore, TxResult, CHANGES_CHANNEL};
use crate::sql;
use crate::{
    now, project_range, renewal_due, summary_of, BlobKnown, BlobReservation, Dangling, GcRun,
    Inventory, InventoryManifest, InventoryTag, MetaError, MetadataStore, NewManifest, Page, Pull,
    Quota, Referrer, RepositorySummary, Result, SavedHash, StoredManifest, UploadLimits,
    UploadSession, Usage,
};

pub(super) type PgResult<T> = std::result::Result<T, tokio_postgres::Error>;

pub(super) async fn execute(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> PgResult<u64> {
    let statement = c.prepare_cached(sql).await?;
    c.execute(&statement, params).await
}

pub(super) async fn query_opt(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> PgResult<Option<tokio_postgres::Row>> {
    let statement = c.prepare_cached(sql).await?;
    c.query_opt(&statement, params).await
}

pub(super) async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> PgResult<Vec<tokio_postgres::Row>> {
    let statement = c.prepare_cached(sql).await?;
    c.query(&statement, params).await
}

/// Tells every watching process, when this transaction commits, that `repo`'s references
/// changed.
async fn project_bytes(c: &impl GenericClient, project: &str) -> PgResult<u64> {
    let (from, to) = project_range(project);
    let row = c
        .query_one(
            &c.prepare_cached(sql::PROJECT_USAGE).await?,
            &[&project, &from, &to],
        )
        .await?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

/// Refuses holding `size` more bytes of `digest` in the quota's project when that passes
/// the limit. Commits and mounts into one project with a quota take its lock first, so the
/// count and the link that follows are one step; other projects never wait on it.
async fn quota_allows(
    tx: &deadpool_postgres::Transaction<'_>,
    q: &Quota,
    digest: &str,
    size: u64,
) -> TxResult<()> {
    execute(
        tx,
        "SELECT pg_advisory_xact_lock(hashtextextended('quota:' || $1, 0))",
        &[&q.project],
    )
    .await?;
    if linked_in_project(tx, &q.project, digest).await? {
        return Ok(());
    }
    let usage = project_bytes(tx, &q.project).await?;
    if usage + size > q.limit {
        return Err(MetaError::QuotaExceeded {
            project: q.project.clone(),
            usage,
            size,
            limit: q.limit,
        }
        .into());
    }
    Ok(())
}

async fn linked_in_project(c: &impl GenericClient, project: &str, digest: &str) -> PgResult<bool> {
    let (from, to) = project_range(project);
    let row = query_opt(c, sql::LINKED_IN_PROJECT, &[&digest, &project, &from, &to]).await?;
    Ok(row.is_some())
}

async fn announce(tx: &deadpool_postgres::Transaction<'_>, repo: &str) -> PgResult<()> {
    query(tx, "SELECT pg_notify($1, $2)", &[&CHANGES_CHANNEL, &repo]).await?;
    Ok(())
}

async fn ensure_repository(c: &impl GenericClient, repo: &str) -> PgResult<()> {
    execute(
        c,
        "INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&repo, &now()],
    )
    .await?;
    Ok(())
}

/// The size of a blob `repo` may serve; a blob being garbage collected is not served.
async fn repository_blob_size(
    c: &impl GenericClient,
    repo: &str,
    digest: &str,
) -> PgResult<Option<u64>> {
    let row = query_opt(
        c,
        "SELECT b.size FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest
         WHERE rb.repository = $1 AND rb.digest = $2 AND b.deleting = 0",
        &[&repo, &digest],
    )
    .await?;
    Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
}

/// Links a blob to a repository; linking again refreshes the time, which the grace period of
/// garbage collection counts from.
async fn link_blob(c: &impl GenericClient, repo: &str, digest: &str) -> PgResult<()> {
    execute(
        c,
        "INSERT INTO repository_blobs (repository, digest, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (repository, digest) DO UPDATE SET created_at = excluded.created_at",
        &[&repo, &digest, &now()],
    )
    .await?;
    Ok(())
}

fn parse_digest(s: &str) -> Result<Digest> {
    Digest::from_str(s).map_err(|e| MetaError::Corrupt(e.to_string()))
}

/// "No limit" is the largest count.
fn limit_of(page: Page<'_>) -> i64 {
    page.limit.map(i64::from).unwrap_or(i64::MAX)
}

fn size_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn put_manifest(
    tx: &deadpool_postgres::Transaction<'_>,
    m: &NewManifest<'_>,
) -> TxResult<()> {
    let repo = m.repository.as_str();
    let digest = m.digest.as_str();
    ensure_repository(tx, repo).await?;

    let (mut missing, mut wrong) = (Vec::new(), Vec::new());
    let mut check = |digest: &str, declared: u64, stored: Option<u64>| match stored {
        None => missing.push(digest.to_owned()),
        Some(size) if size != declared => wrong.push(format!(
            "{digest} is {size} bytes, its descriptor says {declared}"
        )),
        Some(_) => {}
    };
    for blob in m.blobs {
        let stored = repository_blob_size(tx, repo, blob.digest.as_str()).await?;
        check(blob.digest.as_str(), blob.size, stored);
    }
    for child in m.children {
        let row = query_opt(
            tx,
            "SELECT length(content) FROM manifests WHERE repository = $1 AND digest = $2",
            &[&repo, &child.digest.as_str()],
        )
        .await?;
        let stored = row.map(|r| r.get::<_, i32>(0).max(0) as u64);
        check(child.digest.as_str(), child.size, stored);
    }
    if !wrong.is_empty() {
        return Err(MetaError::WrongSizes(wrong).into());
    }
    if !missing.is_empty() && !m.allow_missing {
        return Err(MetaError::MissingReferences(missing).into());
    }
    for tag in m.immutable_tags {
        let current = query_opt(tx, sql::TAG_TARGET, &[&repo, &tag.as_str()]).await?;
        if current.is_some_and(|r| r.get::<_, &str>(0) != digest) {
            return Err(MetaError::TagImmutable(tag.to_string()).into());
        }
    }

    let at = now();
    let subject = m.subject.map(Digest::as_str);
    let inserted = execute(
        tx,
        "INSERT INTO manifests
           (repository, digest, media_type, content, subject, artifact_type, annotations, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        &[
            &repo,
            &digest,
            &m.media_type,
            &m.content,
            &subject,
            &m.artifact_type,
            &m.annotations_json,
            &at,
        ],
    )
    .await?;
    if inserted > 0 {
        for blob in m.blobs {
            execute(
                tx,
                "INSERT INTO manifest_blobs (repository, manifest, blob) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&repo, &digest, &blob.digest.as_str()],
            )
            .await?;
        }
        for child in m.children {
            execute(
                tx,
                "INSERT INTO manifest_children (repository, manifest, child) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&repo, &digest, &child.digest.as_str()],
            )
            .await?;
        }
    }
    for tag in m.tags {
        execute(
            tx,
            "INSERT INTO tags (repository, name, manifest, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (repository, name) DO UPDATE SET manifest = excluded.manifest,
             updated_at = excluded.updated_at",
            &[&repo, &tag.as_str(), &digest, &at],
        )
        .await?;
    }
    announce(tx, repo).await?;
    Ok(())
}

#[async_trait]
impl MetadataStore for PostgresStore {
    async fn check(&self) -> Result<()> {
        self.observed("check", async {
            let client = self.client().await?;
            let c: &Client = &client;
            c.query_one("SELECT 1", &[]).await?;
            Ok(())
        })
        .await
    }

    async fn repository_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<Option<u64>> {
        self.observed("repository_blob", async {
            let client = self.client().await?;
            let c: &Client = &client;
            Ok(repository_blob_size(c, repo.as_str(), digest.as_str()).await?)
        })
        .await
    }

    // add_blob and reserve_blob run at READ COMMITTED: every push of a layer many images
    // share (a common config or base layer) writes the same `blobs` row, and SERIALIZABLE
    // failed all but one of such concurrent writers, round after round, until some gave up.
    // Each is safe without it: the "not being deleted" check is the upsert's own WHERE,
    // evaluated on the latest row version under its row lock, and garbage collection's
    // serializable mark of a row either commits first (the upsert then sees `deleting`) or
    // fails on the row these wrote and is retried, seeing the lease or the link.
    async fn add_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        size: u64,
        upload_id: Option<&str>,
        quota: Option<&Quota>,
    ) -> Result<()> {
        let (repo, digest) = (repo.as_str(), digest.as_str());
        write_tx!(self, "add_blob", IsolationLevel::ReadCommitted, |tx| {
            if let Some(q) = quota {
                quota_allows(tx, q, digest, size).await?;
            }
            ensure_repository(tx, repo).await?;
            let written = query_opt(
                tx,
                "INSERT INTO blobs (digest, size, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (digest) DO UPDATE SET lease_until = 0
                 WHERE blobs.deleting = 0
                 RETURNING 1",
                &[&digest, &size_of(size), &now()],
            )
            .await?;
            if written.is_none() {
                return Err(
                    MetaError::Conflict(format!("{digest} is being garbage collected")).into(),
                );
            }
            link_blob(tx, repo, digest).await?;
            if let Some(id) = upload_id {
                execute(tx, "DELETE FROM uploads WHERE id = $1", &[&id]).await?;
            }
            Ok(())
        })
    }

    async fn reserve_blob(
        &self,
        digest: &Digest,
        size: u64,
        lease_until: i64,
    ) -> Result<BlobReservation> {
        let digest = digest.as_str();
        write_tx!(self, "reserve_blob", IsolationLevel::ReadCommitted, |tx| {
            let written = query_opt(
                tx,
                "INSERT INTO blobs (digest, size, created_at, lease_until) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (digest) DO UPDATE SET lease_until = excluded.lease_until
                 WHERE blobs.deleting = 0
                 RETURNING 1",
                &[&digest, &size_of(size), &now(), &lease_until],
            )
            .await?;
            Ok(if written.is_some() {
                BlobReservation::Reserved
            } else {
                BlobReservation::BeingDeleted
            })
        })
    }

    async fn mount_blob(
        &self,
        from: &RepositoryName,
        to: &RepositoryName,
        digest: &Digest,
        quota: Option<&Quota>,
    ) -> Result<Option<u64>> {
        let (from, to, digest) = (from.as_str(), to.as_str(), digest.as_str());
        write_tx!(self, "mount_blob", |tx| {
            let Some(size) = repository_blob_size(tx, from, digest).await? else {
                return Ok(None);
            };
            if let Some(q) = quota {
                quota_allows(tx, q, digest, size).await?;
            }
            ensure_repository(tx, to).await?;
            link_blob(tx, to, digest).await?;
            Ok(Some(size))
        })
    }

    async fn unlink_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<bool> {
        let (repo, digest) = (repo.as_str(), digest.as_str());
        write_tx!(self, "unlink_blob", |tx| {
            let n = execute(
                tx,
                "DELETE FROM repository_blobs WHERE repository = $1 AND digest = $2",
                &[&repo, &digest],
            )
            .await?;
            Ok(n > 0)
        })
    }

    async fn put_manifest(&self, m: NewManifest<'_>) -> Result<()> {
        write_tx!(self, "put_manifest", |tx| { put_manifest(tx, &m).await })
    }

    async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<Option<Arc<StoredManifest>>> {
        let (sql, key) = match reference {
            Reference::Digest(d) => (
                "SELECT digest, media_type, content FROM manifests
                 WHERE repository = $1 AND digest = $2",
                d.as_str(),
            ),
            Reference::Tag(t) => (
                "SELECT m.digest, m.media_type, m.content FROM tags t
                 JOIN manifests m ON m.repository = t.repository AND m.digest = t.manifest
                 WHERE t.repository = $1 AND t.name = $2",
                t.as_str(),
            ),
        };
        self.observed("get_manifest", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let Some(row) = query_opt(c, sql, &[&repo.as_str(), &key]).await? else {
                return Ok(None);
            };
            Ok(Some(Arc::new(StoredManifest {
                digest: parse_digest(row.get(0))?,
                media_type: row.get(1),
                content: row.get::<_, Vec<u8>>(2).into(),
            })))
        })
        .await
    }

    async fn delete_manifest(&self, repo: &RepositoryName, digest: &Digest) -> Result<bool> {
        let (repo, digest) = (repo.as_str(), digest.as_str());
        write_tx!(self, "delete_manifest", |tx| {
            let n = execute(
                tx,
                "DELETE FROM manifests WHERE repository = $1 AND digest = $2",
                &[&repo, &digest],
            )
            .await?;
            announce(tx, repo).await?;
            Ok(n > 0)
        })
    }

    async fn delete_repository(&self, repo: &RepositoryName) -> Result<bool> {
        let repo = repo.as_str();
        write_tx!(self, "delete_repository", |tx| {
            // Manifests, their references and tags, and blob links cascade from the repository.
            let n = execute(tx, "DELETE FROM repositories WHERE name = $1", &[&repo]).await?;
            announce(tx, repo).await?;
            Ok(n > 0)
        })
    }

    async fn delete_tag(&self, repo: &RepositoryName, tag: &Tag) -> Result<bool> {
        let (repo, tag) = (repo.as_str(), tag.as_str());
        write_tx!(self, "delete_tag", |tx| {
            let n = execute(
                tx,
                "DELETE FROM tags WHERE repository = $1 AND name = $2",
                &[&repo, &tag],
            )
            .await?;
            announce(tx, repo).await?;
            Ok(n > 0)
        })
    }

    async fn list_tags(
        &self,
        repo: &RepositoryName,
        page: Page<'_>,
    ) -> Result<Option<Vec<String>>> {
        let (repo, last, limit) = (repo.as_str(), page.last.unwrap_or(""), limit_of(page));
        self.observed("list_tags", async {
            let client = self.client().await?;
            let c: &Client = &client;
            if query_opt(c, "SELECT 1 FROM repositories WHERE name = $1", &[&repo])
                .await?
                .is_none()
            {
                return Ok(None);
            }
            let rows = query(
                c,
                "SELECT name FROM tags WHERE repository = $1 AND name > $2
                 ORDER BY name LIMIT $3",
                &[&repo, &last, &limit],
            )
            .await?;
            Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
        })
        .await
    }

    async fn list_repositories(&self, page: Page<'_>) -> Result<Vec<String>> {
        let (last, limit) = (page.last.unwrap_or(""), limit_of(page));
        self.observed("list_repositories", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let rows = query(
                c,
                "SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2",
                &[&last, &limit],
            )
            .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    async fn search_repositories(&self, text: &str, page: Page<'_>) -> Result<Vec<String>> {
        let (last, limit) = (page.last.unwrap_or(""), limit_of(page));
        let pattern = sql::contains_pattern(text);
        self.observed("search_repositories", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let rows = query(c, sql::SEARCH_REPOSITORIES, &[&last, &pattern, &limit]).await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    async fn list_project_repositories(
        &self,
        projects: &[String],
        text: &str,
        page: Page<'_>,
    ) -> Result<Vec<String>> {
        let (last, limit) = (page.last.unwrap_or(""), limit_of(page));
        let pattern = sql::contains_pattern(text);
        let (lows, highs): (Vec<String>, Vec<String>) =
            projects.iter().map(|p| crate::project_range(p)).unzip();
        self.observed("list_project_repositories", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let rows = query(
                c,
                sql::PROJECTS_REPOSITORIES,
                &[&projects, &lows, &highs, &last, &pattern, &limit],
            )
            .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    async fn repository_summaries(
        &self,
        repos: &[RepositoryName],
    ) -> Result<Vec<RepositorySummary>> {
        let names: Vec<&str> = repos.iter().map(RepositoryName::as_str).collect();
        self.observed("repository_summaries", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let rows = query(c, sql::REPOSITORY_SUMMARIES, &[&names]).await?;
            let mut found: std::collections::HashMap<String, RepositorySummary> = rows
                .iter()
                .map(|r| {
                    let name: String = r.get(0);
                    let summary = summary_of(&name, r.get(1), r.get(2), r.get(3), r.get(4));
                    (name, summary)
                })
                .collect();
            // In the order asked for: the database's collation need not be Rust's.
            Ok(names.iter().filter_map(|n| found.remove(*n)).collect())
        })
        .await
    }

    async fn referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        let (repo, subject) = (repo.as_str(), subject.as_str());
        self.observed("referrers", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let rows = query(
                c,
                "SELECT digest, media_type, length(content), artifact_type, annotations
                 FROM manifests
                 WHERE repository = $1 AND subject = $2
                   AND ($3::text IS NULL OR artifact_type = $3::text)
                 ORDER BY digest",
                &[&repo, &subject, &artifact_type],
            )
            .await?;
            Ok(rows
                .iter()
                .map(|r| Referrer {
                    digest: r.get(0),
                    media_type: r.get(1),
                    size: r.get::<_, i32>(2).max(0) as u64,
                    artifact_type: r.get(3),
                    annotations_json: r.get(4),
                })
                .collect())
        })
        .await
    }

    async fn create_upload(&self, s: &UploadSession, limits: UploadLimits) -> Result<()> {
        // READ COMMITTED, serialized per repository and per owner by transaction-scoped
        // advisory locks (always taken in that order): two creations cannot both count below
        // a limit, and 32 clients of one user starting uploads at once wait for each other
        // instead of failing serialization round after round (SERIALIZABLE's predicate locks
        // on the counts made some give up).
        write_tx!(self, "create_upload", IsolationLevel::ReadCommitted, |tx| {
            for key in [
                format!("berth upload repository {}", s.repository.as_str()),
                format!("berth upload owner {}", s.owner),
            ] {
                execute(
                    tx,
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                    &[&key],
                )
                .await?;
            }
            let checks = [
                ("repository", s.repository.as_str(), limits.per_repository),
                ("owner", s.owner.as_str(), limits.per_owner),
            ];
            for (column, value, limit) in checks {
                let Some(limit) = limit else { continue };
                let sql = format!("SELECT COUNT(*) FROM uploads WHERE {column} = $1");
                let statement = tx.prepare_cached(&sql).await?;
                let count: i64 = tx.query_one(&statement, &[&value]).await?.get(0);
                let count = count.max(0) as u64;
                if count >= limit {
                    let scope = match column {
                        "repository" => format!("repository {value}"),
                        _ => format!("user {value}"),
                    };
                    return Err(MetaError::TooManyUploads {
                        scope,
                        count,
                        limit,
                    }
                    .into());
                }
            }
            execute(
                tx,
                "INSERT INTO uploads (id, repository, algorithm, created_at, owner)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &s.id,
                    &s.repository.as_str(),
                    &s.algorithm.as_str(),
                    &s.created_at,
                    &s.owner,
                ],
            )
            .await?;
            Ok(())
        })
    }

    async fn get_upload(&self, id: &str) -> Result<Option<UploadSession>> {
        self.observed("get_upload", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let Some(r) = query_opt(
                c,
                "SELECT id, repository, algorithm, created_at, owner, hash_offset, hash_state
                 FROM uploads WHERE id = $1",
                &[&id],
            )
            .await?
            else {
                return Ok(None);
            };
            let corrupt = |e: &dyn std::fmt::Display| MetaError::Corrupt(e.to_string());
            let offset: i64 = r.get(5);
            Ok(Some(UploadSession {
                id: r.get(0),
                repository: r
                    .get::<_, &str>(1)
                    .parse()
                    .map_err(|e: berth_oci::NameError| corrupt(&e))?,
                algorithm: r
                    .get::<_, &str>(2)
                    .parse()
                    .map_err(|e: berth_oci::DigestError| corrupt(&e))?,
                created_at: r.get(3),
                owner: r.get(4),
                hash_state: r.get::<_, Option<Vec<u8>>>(6).map(|state| SavedHash {
                    offset: offset.max(0) as u64,
                    state,
                }),
            }))
        })
        .await
    }

    async fn save_upload_hash(&self, id: &str, saved: &SavedHash) -> Result<()> {
        write_tx!(self, "save_upload_hash", |tx| {
            execute(
                tx,
                "UPDATE uploads SET hash_offset = $1, hash_state = $2 WHERE id = $3",
                &[&size_of(saved.offset), &saved.state, &id],
            )
            .await?;
            Ok(())
        })
    }

    async fn delete_upload(&self, id: &str) -> Result<()> {
        write_tx!(self, "delete_upload", |tx| {
            execute(tx, "DELETE FROM uploads WHERE id = $1", &[&id]).await?;
            Ok(())
        })
    }

    async fn collectable_blobs(
        &self,
        before: i64,
        now: i64,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, u64)>> {
        let after = after.unwrap_or("");
        self.observed("collectable_blobs", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let params: [&(dyn ToSql + Sync); 4] = [&before, &now, &after, &i64::from(limit)];
            let rows = query(c, sql::COLLECTABLE_BLOBS, &params).await?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
                .collect())
        })
        .await
    }

    async fn mark_blob_deleting(&self, digest: &Digest, before: i64, now: i64) -> Result<bool> {
        let digest = digest.as_str();
        write_tx!(self, "mark_blob_deleting", |tx| {
            let params: [&(dyn ToSql + Sync); 3] = [&before, &now, &digest];
            Ok(execute(tx, sql::MARK_BLOB_DELETING, &params).await? > 0)
        })
    }

    async fn forget_blob(&self, digest: &Digest) -> Result<()> {
        let digest = digest.as_str();
        write_tx!(self, "forget_blob", |tx| {
            execute(
                tx,
                "DELETE FROM repository_blobs WHERE digest = $1",
                &[&digest],
            )
            .await?;
            execute(
                tx,
                "DELETE FROM blobs WHERE digest = $1 AND deleting = 1",
                &[&digest],
            )
            .await?;
            Ok(())
        })
    }

    async fn claim_lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool> {
        write_tx!(self, "claim_lease", |tx| {
            let held = query_opt(tx, sql::LEASE, &[&name]).await?;
            if held.is_some_and(|r| {
                r.get::<_, &str>(0) == holder && r.get::<_, i64>(1) >= renewal_due(now, until)
            }) {
                return Ok(true);
            }
            let n = execute(tx, sql::CLAIM_LEASE, &[&name, &holder, &until, &now]).await?;
            Ok(n > 0)
        })
    }

    async fn blob_known(&self, digest: &Digest) -> Result<BlobKnown> {
        let digest = digest.as_str();
        self.observed("blob_known", async {
            let client = self.client().await?;
            let c: &Client = &client;
            if let Some(r) = query_opt(c, sql::BLOB_ROW, &[&digest]).await? {
                return Ok(BlobKnown::Blob(r.get::<_, i64>(0).max(0) as u64));
            }
            Ok(match query_opt(c, sql::IS_MANIFEST, &[&digest]).await? {
                Some(_) => BlobKnown::Manifest,
                None => BlobKnown::Unknown,
            })
        })
        .await
    }

    async fn settled_blobs(
        &self,
        after: Option<&str>,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(String, u64)>> {
        let after = after.unwrap_or("");
        self.observed("settled_blobs", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let rows = query(c, sql::SETTLED_BLOBS, &[&after, &now, &i64::from(limit)]).await?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
                .collect())
        })
        .await
    }

    async fn dangling_references(&self, limit: u32) -> Result<Vec<Dangling>> {
        self.observed("dangling_references", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let limit = i64::from(limit);
            let mut found: Vec<Dangling> = query(c, sql::DANGLING_BLOB_REFERENCES, &[&limit])
                .await?
                .iter()
                .map(|r| Dangling::Blob {
                    repository: r.get(0),
                    manifest: r.get(1),
                    blob: r.get(2),
                })
                .collect();
            found.extend(
                query(c, sql::DANGLING_CHILD_REFERENCES, &[&limit])
                    .await?
                    .iter()
                    .map(|r| Dangling::Child {
                        repository: r.get(0),
                        manifest: r.get(1),
                        child: r.get(2),
                    }),
            );
            Ok(found)
        })
        .await
    }

    async fn remove_blob(&self, digest: &Digest) -> Result<()> {
        let digest = digest.as_str();
        write_tx!(self, "remove_blob", |tx| {
            execute(
                tx,
                "DELETE FROM repository_blobs WHERE digest = $1",
                &[&digest],
            )
            .await?;
            execute(tx, "DELETE FROM blobs WHERE digest = $1", &[&digest]).await?;
            Ok(())
        })
    }

    async fn project_usage(&self, project: &str, per_repository: bool) -> Result<Usage> {
        self.observed("project_usage", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let bytes = project_bytes(c, project).await?;
            if !per_repository {
                return Ok(Usage {
                    bytes,
                    repositories: Vec::new(),
                });
            }
            let (from, to) = project_range(project);
            let rows = query(c, sql::PROJECT_REPOSITORY_USAGE, &[&project, &from, &to]).await?;
            let repositories = rows
                .iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
                .collect();
            Ok(Usage {
                bytes,
                repositories,
            })
        })
        .await
    }

    async fn linked_in_project(&self, project: &str, digest: &Digest) -> Result<bool> {
        self.observed("linked_in_project", async {
            let client = self.client().await?;
            let c: &Client = &client;
            Ok(linked_in_project(c, project, digest.as_str()).await?)
        })
        .await
    }

    async fn delete_planned_manifest(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        tagged_before: i64,
    ) -> Result<bool> {
        let (repo, digest) = (repo.as_str(), digest.as_str());
        write_tx!(self, "delete_planned_manifest", |tx| {
            let n = execute(
                tx,
                sql::DELETE_PLANNED_MANIFEST,
                &[&repo, &digest, &tagged_before],
            )
            .await?;
            announce(tx, repo).await?;
            Ok(n > 0)
        })
    }

    async fn repository_inventory(&self, repo: &RepositoryName) -> Result<Inventory> {
        let repo = repo.as_str();
        self.observed("repository_inventory", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let mut manifests: Vec<InventoryManifest> =
                query(c, sql::INVENTORY_MANIFESTS, &[&repo])
                    .await?
                    .iter()
                    .map(|r| InventoryManifest {
                        digest: r.get(0),
                        media_type: r.get(1),
                        size: r.get::<_, i32>(2).max(0) as u64,
                        created_at: r.get(3),
                        pulled_at: r.get(4),
                        subject: r.get(5),
                        children: Vec::new(),
                        blobs: Vec::new(),
                    })
                    .collect();
            let index: std::collections::HashMap<String, usize> = manifests
                .iter()
                .enumerate()
                .map(|(i, m)| (m.digest.clone(), i))
                .collect();
            for r in query(c, sql::INVENTORY_CHILDREN, &[&repo]).await? {
                if let Some(&i) = index.get(r.get::<_, &str>(0)) {
                    manifests[i].children.push(r.get(1));
                }
            }
            for r in query(c, sql::INVENTORY_BLOBS, &[&repo]).await? {
                if let Some(&i) = index.get(r.get::<_, &str>(0)) {
                    manifests[i]
                        .blobs
                        .push((r.get(1), r.get::<_, i64>(2).max(0) as u64));
                }
            }
            let tags = query(c, sql::INVENTORY_TAGS, &[&repo])
                .await?
                .iter()
                .map(|r| InventoryTag {
                    name: r.get(0),
                    manifest: r.get(1),
                    pushed_at: r.get(2),
                    pulled_at: r.get(3),
                })
                .collect();
            Ok(Inventory { manifests, tags })
        })
        .await
    }

    async fn blob_users(&self, digest: &Digest) -> Result<Vec<(String, String)>> {
        let digest = digest.as_str();
        self.observed("blob_users", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let rows = query(c, sql::BLOB_USERS, &[&digest]).await?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
        .await
    }

    async fn record_pulls(&self, pulls: &[Pull]) -> Result<()> {
        write_tx!(self, "record_pulls", IsolationLevel::ReadCommitted, |tx| {
            for p in pulls {
                let args: [&(dyn ToSql + Sync); 3] = [&p.at, &p.repository, &p.reference];
                if p.reference.contains(':') {
                    execute(tx, sql::PULLED_MANIFEST, &args).await?;
                } else {
                    execute(tx, sql::PULLED_TAG, &args).await?;
                    execute(tx, sql::PULLED_TAGGED_MANIFEST, &args).await?;
                }
            }
            Ok(())
        })
    }

    async fn project_policy(&self, project: &str) -> Result<Option<String>> {
        self.observed("project_policy", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let row = query_opt(c, sql::PROJECT_POLICY, &[&project]).await?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }

    async fn put_project_policy(&self, project: &str, policy: Option<&str>) -> Result<()> {
        write_tx!(self, "put_project_policy", |tx| {
            match policy {
                Some(p) => execute(tx, sql::PUT_PROJECT_POLICY, &[&project, &p, &now()]).await?,
                None => execute(tx, sql::DELETE_PROJECT_POLICY, &[&project]).await?,
            };
            Ok(())
        })
    }

    async fn projects_with_policies(&self) -> Result<Vec<String>> {
        self.observed("projects_with_policies", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let rows = query(c, sql::PROJECTS_WITH_POLICIES, &[]).await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    async fn record_gc_run(&self, run: &GcRun) -> Result<()> {
        write_tx!(self, "record_gc_run", IsolationLevel::ReadCommitted, |tx| {
            let (blobs, bytes) = (run.blobs_deleted as i64, run.bytes_freed as i64);
            execute(
                tx,
                sql::RECORD_GC_RUN,
                &[
                    &run.id,
                    &run.started_at,
                    &run.finished_at,
                    &run.instance,
                    &blobs,
                    &bytes,
                    &run.error,
                ],
            )
            .await?;
            execute(tx, sql::PRUNE_GC_RUNS, &[]).await?;
            Ok(())
        })
    }

    async fn gc_runs(&self, limit: u32) -> Result<Vec<GcRun>> {
        self.observed("gc_runs", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let rows = query(c, sql::GC_RUNS, &[&i64::from(limit)]).await?;
            Ok(rows
                .iter()
                .map(|r| GcRun {
                    id: r.get(0),
                    started_at: r.get(1),
                    finished_at: r.get(2),
                    instance: r.get(3),
                    blobs_deleted: r.get::<_, i64>(4) as u64,
                    bytes_freed: r.get::<_, i64>(5) as u64,
                    error: r.get(6),
                })
                .collect())
        })
        .await
    }

    async fn setting(&self, name: &str) -> Result<Option<String>> {
        self.observed("setting", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let row = query_opt(c, sql::SETTING, &[&name]).await?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }

    async fn put_setting(&self, name: &str, value: &str) -> Result<()> {
        write_tx!(self, "put_setting", IsolationLevel::ReadCommitted, |tx| {
            execute(tx, sql::PUT_SETTING, &[&name, &value, &now()]).await?;
            Ok(())
        })
    }

    fn watch_changes(&self) -> Option<tokio::sync::broadcast::Receiver<crate::Changed>> {
        Some(self.changes())
    }

    async fn expired_uploads(&self, before: i64, limit: u32) -> Result<Vec<String>> {
        self.observed("expired_uploads", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let rows = query(
                c,
                "SELECT id FROM uploads WHERE created_at < $1 ORDER BY created_at LIMIT $2",
                &[&before, &i64::from(limit)],
            )
            .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }
}
