//! [`MetadataStore`] on SQLite: repositories, blobs, manifests, tags, referrers, uploads.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use berth_oci::{Digest, Reference, RepositoryName, Tag};
use rusqlite::{Connection, OptionalExtension};

use super::SqliteStore;
use crate::sql;
use crate::{
    now, project_range, renewal_due, summary_of, BlobKnown, BlobReservation, Dangling, GcRun,
    Inventory, InventoryManifest, InventoryTag, MetaError, MetadataStore, NewManifest, Page, Pull,
    Quota, Referrer, RepositorySummary, Result, SavedHash, StoredManifest, UploadLimits,
    UploadSession, Usage,
};

fn ensure_repository(conn: &Connection, repo: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )?
    .execute((repo, now()))?;
    Ok(())
}

/// The size of a blob `repo` may serve; a blob being garbage collected is not served.
fn repository_blob_size(conn: &Connection, repo: &str, digest: &str) -> Result<Option<u64>> {
    let size: Option<i64> = conn
        .prepare_cached(
            "SELECT b.size FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest
             WHERE rb.repository = $1 AND rb.digest = $2 AND b.deleting = 0",
        )?
        .query_row((repo, digest), |r| r.get(0))
        .optional()?;
    Ok(size.map(|s| s as u64))
}

/// Links a blob to a repository; linking again refreshes the time, which the grace period of
/// garbage collection counts from.
fn link_blob(conn: &Connection, repo: &str, digest: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO repository_blobs (repository, digest, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (repository, digest) DO UPDATE SET created_at = excluded.created_at",
    )?
    .execute((repo, digest, now()))?;
    Ok(())
}

fn blob_deleting(conn: &Connection, digest: &str) -> Result<bool> {
    let deleting: Option<i64> = conn
        .prepare_cached("SELECT deleting FROM blobs WHERE digest = $1")?
        .query_row([digest], |r| r.get(0))
        .optional()?;
    Ok(deleting == Some(1))
}

fn project_bytes(conn: &Connection, project: &str) -> Result<u64> {
    let (from, to) = project_range(project);
    let bytes: i64 = conn
        .prepare_cached(sql::PROJECT_USAGE)?
        .query_row((project, &from, &to), |r| r.get(0))?;
    Ok(bytes.max(0) as u64)
}

/// Refuses holding `size` more bytes of `digest` in the quota's project when that passes
/// the limit; a blob the project holds already is free.
fn quota_allows(conn: &Connection, q: &Quota, digest: &str, size: u64) -> Result<()> {
    if linked_in_project(conn, &q.project, digest)? {
        return Ok(());
    }
    let usage = project_bytes(conn, &q.project)?;
    if usage + size > q.limit {
        return Err(MetaError::QuotaExceeded {
            project: q.project.clone(),
            usage,
            size,
            limit: q.limit,
        });
    }
    Ok(())
}

fn linked_in_project(conn: &Connection, project: &str, digest: &str) -> Result<bool> {
    let (from, to) = project_range(project);
    Ok(conn
        .prepare_cached(sql::LINKED_IN_PROJECT)?
        .query_row((digest, project, &from, &to), |_| Ok(()))
        .optional()?
        .is_some())
}

fn parse_digest(s: &str) -> Result<Digest> {
    Digest::from_str(s).map_err(|e| MetaError::Corrupt(e.to_string()))
}

/// A page's limit as SQL takes it on every backend: "no limit" is the largest count, not
/// SQLite's `-1` (which PostgreSQL refuses).
fn limit_of(page: Page<'_>) -> i64 {
    page.limit.map(i64::from).unwrap_or(i64::MAX)
}

/// A manifest to store, owned so it can travel to the writer thread.
struct OwnedManifest {
    repository: String,
    digest: String,
    media_type: String,
    content: Vec<u8>,
    /// `(digest, declared size)`.
    blobs: Vec<(String, u64)>,
    children: Vec<(String, u64)>,
    allow_missing: bool,
    subject: Option<String>,
    artifact_type: Option<String>,
    annotations_json: Option<String>,
    tags: Vec<String>,
    immutable_tags: Vec<String>,
}

impl From<NewManifest<'_>> for OwnedManifest {
    fn from(m: NewManifest<'_>) -> Self {
        OwnedManifest {
            repository: m.repository.to_string(),
            digest: m.digest.to_string(),
            media_type: m.media_type.to_owned(),
            content: m.content.to_vec(),
            blobs: m
                .blobs
                .iter()
                .map(|r| (r.digest.to_string(), r.size))
                .collect(),
            children: m
                .children
                .iter()
                .map(|r| (r.digest.to_string(), r.size))
                .collect(),
            allow_missing: m.allow_missing,
            subject: m.subject.map(Digest::to_string),
            artifact_type: m.artifact_type.map(str::to_owned),
            annotations_json: m.annotations_json,
            tags: m.tags.iter().map(|t| t.as_str().to_owned()).collect(),
            immutable_tags: m
                .immutable_tags
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect(),
        }
    }
}

fn put_manifest(conn: &Connection, m: &OwnedManifest) -> Result<()> {
    let repo = m.repository.as_str();
    ensure_repository(conn, repo)?;

    let (mut missing, mut wrong) = (Vec::new(), Vec::new());
    let mut check = |digest: &str, declared: u64, stored: Option<u64>| match stored {
        None => missing.push(digest.to_owned()),
        Some(size) if size != declared => wrong.push(format!(
            "{digest} is {size} bytes, its descriptor says {declared}"
        )),
        Some(_) => {}
    };
    for (blob, declared) in &m.blobs {
        check(blob, *declared, repository_blob_size(conn, repo, blob)?);
    }
    {
        let mut manifest_size = conn.prepare_cached(
            "SELECT length(content) FROM manifests WHERE repository = $1 AND digest = $2",
        )?;
        for (child, declared) in &m.children {
            let stored: Option<i64> = manifest_size
                .query_row((repo, child), |r| r.get(0))
                .optional()?;
            check(child, *declared, stored.map(|s| s.max(0) as u64));
        }
    }
    if !wrong.is_empty() {
        return Err(MetaError::WrongSizes(wrong));
    }
    if !missing.is_empty() && !m.allow_missing {
        return Err(MetaError::MissingReferences(missing));
    }
    for tag in &m.immutable_tags {
        let current: Option<String> = conn
            .prepare_cached(sql::TAG_TARGET)?
            .query_row((repo, tag), |r| r.get(0))
            .optional()?;
        if current.is_some_and(|c| c != m.digest) {
            return Err(MetaError::TagImmutable(tag.clone()));
        }
    }

    let at = now();
    let inserted = conn
        .prepare_cached(
            "INSERT INTO manifests
               (repository, digest, media_type, content, subject, artifact_type, annotations, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )?
        .execute(rusqlite::params![
            repo,
            m.digest,
            m.media_type,
            m.content,
            m.subject,
            m.artifact_type,
            m.annotations_json,
            at
        ])?;
    if inserted > 0 {
        let mut add_blob = conn.prepare_cached(
            "INSERT INTO manifest_blobs (repository, manifest, blob) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )?;
        for (blob, _) in &m.blobs {
            add_blob.execute((repo, &m.digest, blob))?;
        }
        let mut add_child = conn.prepare_cached(
            "INSERT INTO manifest_children (repository, manifest, child) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )?;
        for (child, _) in &m.children {
            add_child.execute((repo, &m.digest, child))?;
        }
    }
    let mut set_tag = conn.prepare_cached(
        "INSERT INTO tags (repository, name, manifest, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (repository, name) DO UPDATE SET manifest = excluded.manifest,
         updated_at = excluded.updated_at",
    )?;
    for tag in &m.tags {
        set_tag.execute((repo, tag, &m.digest, at))?;
    }
    Ok(())
}

#[async_trait]
impl MetadataStore for SqliteStore {
    async fn check(&self) -> Result<()> {
        self.read("check", |conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn repository_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<Option<u64>> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.read("repository_blob", move |conn| {
            repository_blob_size(conn, &repo, &digest)
        })
        .await
    }

    async fn add_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        size: u64,
        upload_id: Option<&str>,
        quota: Option<&Quota>,
    ) -> Result<()> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        let upload_id = upload_id.map(str::to_owned);
        let quota = quota.cloned();
        self.write("add_blob", move |conn| {
            if let Some(q) = &quota {
                // One writer: the count and the link below are one step.
                quota_allows(conn, q, &digest, size)?;
            }
            ensure_repository(conn, &repo)?;
            if blob_deleting(conn, &digest)? {
                return Err(MetaError::Conflict(format!(
                    "{digest} is being garbage collected"
                )));
            }
            conn.prepare_cached(
                "INSERT INTO blobs (digest, size, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (digest) DO UPDATE SET lease_until = 0",
            )?
            .execute((&digest, size as i64, now()))?;
            link_blob(conn, &repo, &digest)?;
            if let Some(id) = upload_id {
                conn.prepare_cached("DELETE FROM uploads WHERE id = $1")?
                    .execute([id])?;
            }
            Ok(())
        })
        .await
    }

    async fn reserve_blob(
        &self,
        digest: &Digest,
        size: u64,
        lease_until: i64,
    ) -> Result<BlobReservation> {
        let digest = digest.to_string();
        self.write("reserve_blob", move |conn| {
            if blob_deleting(conn, &digest)? {
                return Ok(BlobReservation::BeingDeleted);
            }
            conn.prepare_cached(
                "INSERT INTO blobs (digest, size, created_at, lease_until) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (digest) DO UPDATE SET lease_until = excluded.lease_until",
            )?
            .execute((&digest, size as i64, now(), lease_until))?;
            Ok(BlobReservation::Reserved)
        })
        .await
    }

    async fn mount_blob(
        &self,
        from: &RepositoryName,
        to: &RepositoryName,
        digest: &Digest,
        quota: Option<&Quota>,
    ) -> Result<Option<u64>> {
        let (from, to, digest) = (from.to_string(), to.to_string(), digest.to_string());
        let quota = quota.cloned();
        self.write("mount_blob", move |conn| {
            let Some(size) = repository_blob_size(conn, &from, &digest)? else {
                return Ok(None);
            };
            if let Some(q) = &quota {
                quota_allows(conn, q, &digest, size)?;
            }
            ensure_repository(conn, &to)?;
            link_blob(conn, &to, &digest)?;
            Ok(Some(size))
        })
        .await
    }

    async fn unlink_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<bool> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.write("unlink_blob", move |conn| {
            let n = conn
                .prepare_cached(
                    "DELETE FROM repository_blobs WHERE repository = $1 AND digest = $2",
                )?
                .execute((repo, digest))?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_manifest(&self, m: NewManifest<'_>) -> Result<()> {
        let m = OwnedManifest::from(m);
        self.write("put_manifest", move |conn| put_manifest(conn, &m))
            .await
    }

    async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<Option<Arc<StoredManifest>>> {
        let (repo, reference) = (repo.to_string(), reference.clone());
        self.read("get_manifest", move |conn| {
            let (sql, key) = match &reference {
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
            let row = conn
                .prepare_cached(sql)?
                .query_row((&repo, key), |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })
                .optional()?;
            row.map(|(digest, media_type, content)| {
                Ok(Arc::new(StoredManifest {
                    digest: parse_digest(&digest)?,
                    media_type,
                    content: content.into(),
                }))
            })
            .transpose()
        })
        .await
    }

    async fn delete_manifest(&self, repo: &RepositoryName, digest: &Digest) -> Result<bool> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.write("delete_manifest", move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM manifests WHERE repository = $1 AND digest = $2")?
                .execute((repo, digest))?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_repository(&self, repo: &RepositoryName) -> Result<bool> {
        let repo = repo.to_string();
        self.write("delete_repository", move |conn| {
            // Manifests, their references and tags, and blob links cascade from the repository.
            let n = conn
                .prepare_cached("DELETE FROM repositories WHERE name = $1")?
                .execute([repo])?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_tag(&self, repo: &RepositoryName, tag: &Tag) -> Result<bool> {
        let (repo, tag) = (repo.to_string(), tag.as_str().to_owned());
        self.write("delete_tag", move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM tags WHERE repository = $1 AND name = $2")?
                .execute((repo, tag))?;
            Ok(n > 0)
        })
        .await
    }

    async fn list_tags(
        &self,
        repo: &RepositoryName,
        page: Page<'_>,
    ) -> Result<Option<Vec<String>>> {
        let repo = repo.to_string();
        let (last, limit) = (page.last.unwrap_or("").to_owned(), limit_of(page));
        self.read("list_tags", move |conn| {
            let exists = conn
                .prepare_cached("SELECT 1 FROM repositories WHERE name = $1")?
                .exists([&repo])?;
            if !exists {
                return Ok(None);
            }
            let tags = conn
                .prepare_cached(
                    "SELECT name FROM tags WHERE repository = $1 AND name > $2
                     ORDER BY name LIMIT $3",
                )?
                .query_map((&repo, &last, limit), |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(Some(tags))
        })
        .await
    }

    async fn list_repositories(&self, page: Page<'_>) -> Result<Vec<String>> {
        let (last, limit) = (page.last.unwrap_or("").to_owned(), limit_of(page));
        self.read("list_repositories", move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2",
                )?
                .query_map((&last, limit), |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?)
        })
        .await
    }

    async fn search_repositories(&self, text: &str, page: Page<'_>) -> Result<Vec<String>> {
        let (last, limit) = (page.last.unwrap_or("").to_owned(), limit_of(page));
        let pattern = sql::contains_pattern(text);
        self.read("search_repositories", move |conn| {
            Ok(conn
                .prepare_cached(sql::SEARCH_REPOSITORIES)?
                .query_map((&last, &pattern, limit), |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?)
        })
        .await
    }

    async fn list_project_repositories(
        &self,
        projects: &[String],
        text: &str,
        page: Page<'_>,
    ) -> Result<Vec<String>> {
        let (last, limit) = (page.last.unwrap_or("").to_owned(), limit_of(page));
        let pattern = sql::contains_pattern(text);
        let projects = projects.to_vec();
        // Each project's first `limit` names, merged: SQLite compares bytes, as Rust does.
        self.read("list_project_repositories", move |conn| {
            let mut own = conn.prepare_cached(sql::PROJECT_OWN_REPOSITORY)?;
            let mut range = conn.prepare_cached(sql::PROJECT_RANGE_REPOSITORIES)?;
            let mut names = Vec::new();
            for project in &projects {
                let (low, high) = crate::project_range(project);
                for name in own.query_map((project, &last, &pattern), |r| r.get(0))? {
                    names.push(name?);
                }
                let rows = range.query_map((&low, &high, &last, &pattern, limit), |r| r.get(0))?;
                for name in rows {
                    names.push(name?);
                }
            }
            names.sort_unstable();
            names.dedup();
            names.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            Ok(names)
        })
        .await
    }

    async fn repository_summaries(
        &self,
        repos: &[RepositoryName],
    ) -> Result<Vec<RepositorySummary>> {
        let names: Vec<String> = repos.iter().map(ToString::to_string).collect();
        // One statement per name, all on one connection in one blocking call: in-process
        // SQLite pays microseconds per statement, not a round trip.
        self.read("repository_summaries", move |conn| {
            let mut statement = conn.prepare_cached(sql::REPOSITORY_SUMMARY)?;
            let mut summaries = Vec::with_capacity(names.len());
            for name in &names {
                let summary = statement
                    .query_row([name], |r| {
                        Ok(summary_of(name, r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })
                    .optional()?;
                summaries.extend(summary);
            }
            Ok(summaries)
        })
        .await
    }

    async fn referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        let (repo, subject) = (repo.to_string(), subject.to_string());
        let artifact_type = artifact_type.map(str::to_owned);
        self.read("referrers", move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT digest, media_type, LENGTH(content), artifact_type, annotations
                     FROM manifests
                     WHERE repository = $1 AND subject = $2 AND ($3 IS NULL OR artifact_type = $3)
                     ORDER BY digest",
                )?
                .query_map((&repo, &subject, &artifact_type), |r| {
                    Ok(Referrer {
                        digest: r.get(0)?,
                        media_type: r.get(1)?,
                        size: r.get::<_, i64>(2)? as u64,
                        artifact_type: r.get(3)?,
                        annotations_json: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn create_upload(&self, s: &UploadSession, limits: UploadLimits) -> Result<()> {
        let s = s.clone();
        self.write("create_upload", move |conn| {
            // One writer runs this whole closure: nothing can insert between count and insert.
            let checks = [
                ("repository", s.repository.as_str(), limits.per_repository),
                ("owner", s.owner.as_str(), limits.per_owner),
            ];
            for (column, value, limit) in checks {
                let Some(limit) = limit else { continue };
                let sql = format!("SELECT COUNT(*) FROM uploads WHERE {column} = $1");
                let count: i64 = conn
                    .prepare_cached(&sql)?
                    .query_row([value], |r| r.get(0))?;
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
                    });
                }
            }
            conn.prepare_cached(
                "INSERT INTO uploads (id, repository, algorithm, created_at, owner)
                 VALUES ($1, $2, $3, $4, $5)",
            )?
            .execute((
                &s.id,
                s.repository.as_str(),
                s.algorithm.as_str(),
                s.created_at,
                &s.owner,
            ))?;
            Ok(())
        })
        .await
    }

    async fn get_upload(&self, id: &str) -> Result<Option<UploadSession>> {
        let id = id.to_owned();
        self.read("get_upload", move |conn| {
            let row = conn
                .prepare_cached(
                    "SELECT id, repository, algorithm, created_at, owner, hash_offset, hash_state
                     FROM uploads WHERE id = $1",
                )?
                .query_row([&id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, Option<Vec<u8>>>(6)?,
                    ))
                })
                .optional()?;
            row.map(
                |(id, repository, algorithm, created_at, owner, offset, state)| {
                    Ok(UploadSession {
                        id,
                        repository: repository
                            .parse()
                            .map_err(|e: berth_oci::NameError| MetaError::Corrupt(e.to_string()))?,
                        algorithm: algorithm.parse().map_err(|e: berth_oci::DigestError| {
                            MetaError::Corrupt(e.to_string())
                        })?,
                        created_at,
                        owner,
                        hash_state: state.map(|state| SavedHash {
                            offset: offset.max(0) as u64,
                            state,
                        }),
                    })
                },
            )
            .transpose()
        })
        .await
    }

    async fn save_upload_hash(&self, id: &str, saved: &SavedHash) -> Result<()> {
        let (id, saved) = (id.to_owned(), saved.clone());
        self.write("save_upload_hash", move |conn| {
            conn.prepare_cached(
                "UPDATE uploads SET hash_offset = $1, hash_state = $2 WHERE id = $3",
            )?
            .execute((saved.offset as i64, &saved.state, &id))?;
            Ok(())
        })
        .await
    }

    async fn delete_upload(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.write("delete_upload", move |conn| {
            conn.prepare_cached("DELETE FROM uploads WHERE id = $1")?
                .execute([id])?;
            Ok(())
        })
        .await
    }

    async fn collectable_blobs(
        &self,
        before: i64,
        now: i64,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, u64)>> {
        let after = after.unwrap_or("").to_owned();
        self.read("collectable_blobs", move |conn| {
            Ok(conn
                .prepare_cached(sql::COLLECTABLE_BLOBS)?
                .query_map((before, now, &after, i64::from(limit)), |r| {
                    Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn mark_blob_deleting(&self, digest: &Digest, before: i64, now: i64) -> Result<bool> {
        let digest = digest.to_string();
        self.write("mark_blob_deleting", move |conn| {
            let n = conn
                .prepare_cached(sql::MARK_BLOB_DELETING)?
                .execute((before, now, &digest))?;
            Ok(n > 0)
        })
        .await
    }

    async fn forget_blob(&self, digest: &Digest) -> Result<()> {
        let digest = digest.to_string();
        self.write("forget_blob", move |conn| {
            conn.prepare_cached("DELETE FROM repository_blobs WHERE digest = $1")?
                .execute([&digest])?;
            conn.prepare_cached("DELETE FROM blobs WHERE digest = $1 AND deleting = 1")?
                .execute([&digest])?;
            Ok(())
        })
        .await
    }

    async fn claim_lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write("claim_lease", move |conn| {
            let held: Option<(String, i64)> = conn
                .prepare_cached(sql::LEASE)?
                .query_row([&name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if held.is_some_and(|(h, u)| h == holder && u >= renewal_due(now, until)) {
                return Ok(true);
            }
            let n = conn
                .prepare_cached(sql::CLAIM_LEASE)?
                .execute((&name, &holder, until, now))?;
            Ok(n > 0)
        })
        .await
    }

    async fn blob_known(&self, digest: &Digest) -> Result<BlobKnown> {
        let digest = digest.to_string();
        self.read("blob_known", move |conn| {
            let size: Option<i64> = conn
                .prepare_cached(sql::BLOB_ROW)?
                .query_row([&digest], |r| r.get(0))
                .optional()?;
            if let Some(size) = size {
                return Ok(BlobKnown::Blob(size.max(0) as u64));
            }
            let manifest = conn
                .prepare_cached(sql::IS_MANIFEST)?
                .query_row([&digest], |_| Ok(()))
                .optional()?;
            Ok(if manifest.is_some() {
                BlobKnown::Manifest
            } else {
                BlobKnown::Unknown
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
        let after = after.unwrap_or("").to_owned();
        self.read("settled_blobs", move |conn| {
            Ok(conn
                .prepare_cached(sql::SETTLED_BLOBS)?
                .query_map((&after, now, i64::from(limit)), |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
                })?
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn dangling_references(&self, limit: u32) -> Result<Vec<Dangling>> {
        self.read("dangling_references", move |conn| {
            let limit = i64::from(limit);
            let mut found: Vec<Dangling> = conn
                .prepare_cached(sql::DANGLING_BLOB_REFERENCES)?
                .query_map([limit], |r| {
                    Ok(Dangling::Blob {
                        repository: r.get(0)?,
                        manifest: r.get(1)?,
                        blob: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let children = conn
                .prepare_cached(sql::DANGLING_CHILD_REFERENCES)?
                .query_map([limit], |r| {
                    Ok(Dangling::Child {
                        repository: r.get(0)?,
                        manifest: r.get(1)?,
                        child: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            found.extend(children);
            Ok(found)
        })
        .await
    }

    async fn remove_blob(&self, digest: &Digest) -> Result<()> {
        let digest = digest.to_string();
        self.write("remove_blob", move |conn| {
            conn.prepare_cached("DELETE FROM repository_blobs WHERE digest = $1")?
                .execute([&digest])?;
            conn.prepare_cached("DELETE FROM blobs WHERE digest = $1")?
                .execute([&digest])?;
            Ok(())
        })
        .await
    }

    async fn project_usage(&self, project: &str, per_repository: bool) -> Result<Usage> {
        let project = project.to_owned();
        self.read("project_usage", move |conn| {
            let bytes = project_bytes(conn, &project)?;
            if !per_repository {
                return Ok(Usage {
                    bytes,
                    repositories: Vec::new(),
                });
            }
            let (from, to) = project_range(&project);
            let repositories = conn
                .prepare_cached(sql::PROJECT_REPOSITORY_USAGE)?
                .query_map((&project, &from, &to), |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(Usage {
                bytes,
                repositories,
            })
        })
        .await
    }

    async fn linked_in_project(&self, project: &str, digest: &Digest) -> Result<bool> {
        let (project, digest) = (project.to_owned(), digest.to_string());
        self.read("linked_in_project", move |conn| {
            linked_in_project(conn, &project, &digest)
        })
        .await
    }

    async fn delete_planned_manifest(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        tagged_before: i64,
    ) -> Result<bool> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.write("delete_planned_manifest", move |conn| {
            let n = conn
                .prepare_cached(sql::DELETE_PLANNED_MANIFEST)?
                .execute((&repo, &digest, tagged_before))?;
            Ok(n > 0)
        })
        .await
    }

    async fn repository_inventory(&self, repo: &RepositoryName) -> Result<Inventory> {
        let repo = repo.to_string();
        self.read("repository_inventory", move |conn| {
            let mut manifests: Vec<InventoryManifest> = conn
                .prepare_cached(sql::INVENTORY_MANIFESTS)?
                .query_map([&repo], |r| {
                    Ok(InventoryManifest {
                        digest: r.get(0)?,
                        media_type: r.get(1)?,
                        size: r.get::<_, i64>(2)?.max(0) as u64,
                        created_at: r.get(3)?,
                        pulled_at: r.get(4)?,
                        subject: r.get(5)?,
                        children: Vec::new(),
                        blobs: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let index: std::collections::HashMap<String, usize> = manifests
                .iter()
                .enumerate()
                .map(|(i, m)| (m.digest.clone(), i))
                .collect();
            let children = conn
                .prepare_cached(sql::INVENTORY_CHILDREN)?
                .query_map([&repo], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (parent, child) in children {
                if let Some(&i) = index.get(&parent) {
                    manifests[i].children.push(child);
                }
            }
            let blobs = conn
                .prepare_cached(sql::INVENTORY_BLOBS)?
                .query_map([&repo], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (manifest, blob, size) in blobs {
                if let Some(&i) = index.get(&manifest) {
                    manifests[i].blobs.push((blob, size.max(0) as u64));
                }
            }
            let tags = conn
                .prepare_cached(sql::INVENTORY_TAGS)?
                .query_map([&repo], |r| {
                    Ok(InventoryTag {
                        name: r.get(0)?,
                        manifest: r.get(1)?,
                        pushed_at: r.get(2)?,
                        pulled_at: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(Inventory { manifests, tags })
        })
        .await
    }

    async fn blob_users(&self, digest: &Digest) -> Result<Vec<(String, String)>> {
        let digest = digest.to_string();
        self.read("blob_users", move |conn| {
            Ok(conn
                .prepare_cached(sql::BLOB_USERS)?
                .query_map([&digest], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn record_pulls(&self, pulls: &[Pull]) -> Result<()> {
        let pulls = pulls.to_vec();
        self.write("record_pulls", move |conn| {
            for p in &pulls {
                let args = (p.at, &p.repository, &p.reference);
                if p.reference.contains(':') {
                    conn.prepare_cached(sql::PULLED_MANIFEST)?.execute(args)?;
                } else {
                    conn.prepare_cached(sql::PULLED_TAG)?.execute(args)?;
                    conn.prepare_cached(sql::PULLED_TAGGED_MANIFEST)?
                        .execute(args)?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn project_policy(&self, project: &str) -> Result<Option<String>> {
        let project = project.to_owned();
        self.read("project_policy", move |conn| {
            Ok(conn
                .prepare_cached(sql::PROJECT_POLICY)?
                .query_row([&project], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn put_project_policy(&self, project: &str, policy: Option<&str>) -> Result<()> {
        let (project, policy) = (project.to_owned(), policy.map(str::to_owned));
        self.write("put_project_policy", move |conn| {
            match &policy {
                Some(p) => {
                    conn.prepare_cached(sql::PUT_PROJECT_POLICY)?
                        .execute((&project, p, now()))?
                }
                None => conn
                    .prepare_cached(sql::DELETE_PROJECT_POLICY)?
                    .execute([&project])?,
            };
            Ok(())
        })
        .await
    }

    async fn projects_with_policies(&self) -> Result<Vec<String>> {
        self.read("projects_with_policies", move |conn| {
            Ok(conn
                .prepare_cached(sql::PROJECTS_WITH_POLICIES)?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn record_gc_run(&self, run: &GcRun) -> Result<()> {
        let run = run.clone();
        self.write("record_gc_run", move |conn| {
            conn.prepare_cached(sql::RECORD_GC_RUN)?.execute((
                &run.id,
                run.started_at,
                run.finished_at,
                &run.instance,
                run.blobs_deleted as i64,
                run.bytes_freed as i64,
                &run.error,
            ))?;
            conn.prepare_cached(sql::PRUNE_GC_RUNS)?.execute([])?;
            Ok(())
        })
        .await
    }

    async fn gc_runs(&self, limit: u32) -> Result<Vec<GcRun>> {
        self.read("gc_runs", move |conn| {
            Ok(conn
                .prepare_cached(sql::GC_RUNS)?
                .query_map([i64::from(limit)], |r| {
                    Ok(GcRun {
                        id: r.get(0)?,
                        started_at: r.get(1)?,
                        finished_at: r.get(2)?,
                        instance: r.get(3)?,
                        blobs_deleted: r.get::<_, i64>(4)? as u64,
                        bytes_freed: r.get::<_, i64>(5)? as u64,
                        error: r.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn setting(&self, name: &str) -> Result<Option<String>> {
        let name = name.to_owned();
        self.read("setting", move |conn| {
            Ok(conn
                .prepare_cached(sql::SETTING)?
                .query_row([&name], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn put_setting(&self, name: &str, value: &str) -> Result<()> {
        let (name, value) = (name.to_owned(), value.to_owned());
        self.write("put_setting", move |conn| {
            conn.prepare_cached(sql::PUT_SETTING)?
                .execute((&name, &value, now()))?;
            Ok(())
        })
        .await
    }

    async fn expired_uploads(&self, before: i64, limit: u32) -> Result<Vec<String>> {
        self.read("expired_uploads", move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT id FROM uploads WHERE created_at < $1 ORDER BY created_at LIMIT $2",
                )?
                .query_map((before, i64::from(limit)), |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?)
        })
        .await
    }
}
