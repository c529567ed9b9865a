//! The embedded default backend: SQLite in WAL mode, one writer connection and a read-only
//! pool, so concurrent pushes queue on one connection instead of failing with `SQLITE_BUSY`.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use berth_oci::{Digest, Reference, RepositoryName, Tag};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use crate::durable::WalSync;
use crate::migrations::{CREATE_VERSION_TABLE, MIGRATIONS};
use crate::{
    now, MetaError, MetadataStore, NewManifest, Page, Referrer, Result, StoredManifest,
    UploadSession,
};

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pub(crate) writer: SqlitePool,
    pub(crate) reader: SqlitePool,
    /// Every write awaits this after committing: see `durable.rs`.
    pub(crate) durable: WalSync,
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the database file at `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| MetaError::Migration(e.to_string()))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL: no fsync per commit; `WalSync` makes commits durable in groups, so an
            // acknowledged change still survives power loss.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone())
            .await?;
        migrate(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .connect_with(options.read_only(true))
            .await?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let durable = WalSync::spawn(wal.into(), path.to_owned());
        Ok(SqliteStore {
            writer,
            reader,
            durable,
        })
    }
}

async fn migrate(pool: &SqlitePool) -> Result<()> {
    sqlx::query(CREATE_VERSION_TABLE).execute(pool).await?;
    let applied: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM berth_schema")
        .fetch_one(pool)
        .await?;
    let applied = applied.unwrap_or(0);
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
        let mut tx = pool.begin().await?;
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO berth_schema (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version, "applied metadata migration");
    }
    Ok(())
}

async fn ensure_repository(tx: &mut Transaction<'_, Sqlite>, repo: &RepositoryName) -> Result<()> {
    sqlx::query(
        "INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(repo.as_str())
    .bind(now())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn parse_digest(s: &str) -> Result<Digest> {
    Digest::from_str(s).map_err(|e| MetaError::Corrupt(e.to_string()))
}

fn limit_of(page: Page<'_>) -> i64 {
    page.limit.map(i64::from).unwrap_or(-1)
}

#[async_trait]
impl MetadataStore for SqliteStore {
    async fn check(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn repository_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<Option<u64>> {
        let size: Option<i64> = sqlx::query_scalar(
            "SELECT b.size FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest
             WHERE rb.repository = $1 AND rb.digest = $2",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .fetch_optional(&self.reader)
        .await?;
        Ok(size.map(|s| s as u64))
    }

    async fn add_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        size: u64,
        upload_id: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        ensure_repository(&mut tx, repo).await?;
        let at = now();
        sqlx::query("INSERT INTO blobs (digest, size, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(digest.as_str())
            .bind(size as i64)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO repository_blobs (repository, digest, created_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .bind(at)
        .execute(&mut *tx)
        .await?;
        if let Some(id) = upload_id {
            sqlx::query("DELETE FROM uploads WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.durable.wait().await?;
        Ok(())
    }

    async fn mount_blob(
        &self,
        from: &RepositoryName,
        to: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        let mut tx = self.writer.begin().await?;
        let size: Option<i64> = sqlx::query_scalar(
            "SELECT b.size FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest
             WHERE rb.repository = $1 AND rb.digest = $2",
        )
        .bind(from.as_str())
        .bind(digest.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(size) = size else {
            return Ok(None);
        };
        ensure_repository(&mut tx, to).await?;
        sqlx::query(
            "INSERT INTO repository_blobs (repository, digest, created_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(to.as_str())
        .bind(digest.as_str())
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.durable.wait().await?;
        Ok(Some(size as u64))
    }

    async fn unlink_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM repository_blobs WHERE repository = $1 AND digest = $2")
                .bind(repo.as_str())
                .bind(digest.as_str())
                .execute(&self.writer)
                .await?;
        self.durable.wait().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn put_manifest(&self, m: NewManifest<'_>) -> Result<()> {
        let repo = m.repository.as_str();
        let mut tx = self.writer.begin().await?;
        ensure_repository(&mut tx, m.repository).await?;

        let mut missing = Vec::new();
        for blob in m.blobs {
            let found: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM repository_blobs WHERE repository = $1 AND digest = $2",
            )
            .bind(repo)
            .bind(blob.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if found.is_none() {
                missing.push(blob.to_string());
            }
        }
        for child in m.children {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM manifests WHERE repository = $1 AND digest = $2")
                    .bind(repo)
                    .bind(child.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if found.is_none() {
                missing.push(child.to_string());
            }
        }
        if !missing.is_empty() {
            return Err(MetaError::MissingReferences(missing));
        }

        let at = now();
        let inserted = sqlx::query(
            "INSERT INTO manifests
               (repository, digest, media_type, content, subject, artifact_type, annotations, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(repo)
        .bind(m.digest.as_str())
        .bind(m.media_type)
        .bind(m.content)
        .bind(m.subject.map(Digest::as_str))
        .bind(m.artifact_type)
        .bind(m.annotations_json.as_deref())
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted > 0 {
            for blob in m.blobs {
                sqlx::query(
                    "INSERT INTO manifest_blobs (repository, manifest, blob) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                )
                .bind(repo)
                .bind(m.digest.as_str())
                .bind(blob.as_str())
                .execute(&mut *tx)
                .await?;
            }
            for child in m.children {
                sqlx::query(
                    "INSERT INTO manifest_children (repository, manifest, child) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                )
                .bind(repo)
                .bind(m.digest.as_str())
                .bind(child.as_str())
                .execute(&mut *tx)
                .await?;
            }
        }
        for tag in m.tags {
            sqlx::query(
                "INSERT INTO tags (repository, name, manifest, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (repository, name) DO UPDATE SET manifest = excluded.manifest,
                 updated_at = excluded.updated_at",
            )
            .bind(repo)
            .bind(tag.as_str())
            .bind(m.digest.as_str())
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.durable.wait().await?;
        Ok(())
    }

    async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>> {
        let row = match reference {
            Reference::Digest(d) => {
                sqlx::query(
                    "SELECT digest, media_type, content FROM manifests
                     WHERE repository = $1 AND digest = $2",
                )
                .bind(repo.as_str())
                .bind(d.as_str())
                .fetch_optional(&self.reader)
                .await?
            }
            Reference::Tag(t) => {
                sqlx::query(
                    "SELECT m.digest, m.media_type, m.content FROM tags t
                     JOIN manifests m ON m.repository = t.repository AND m.digest = t.manifest
                     WHERE t.repository = $1 AND t.name = $2",
                )
                .bind(repo.as_str())
                .bind(t.as_str())
                .fetch_optional(&self.reader)
                .await?
            }
        };
        row.map(|r| {
            Ok(StoredManifest {
                digest: parse_digest(r.try_get::<&str, _>(0)?)?,
                media_type: r.try_get(1)?,
                content: r.try_get(2)?,
            })
        })
        .transpose()
    }

    async fn delete_manifest(&self, repo: &RepositoryName, digest: &Digest) -> Result<bool> {
        let done = sqlx::query("DELETE FROM manifests WHERE repository = $1 AND digest = $2")
            .bind(repo.as_str())
            .bind(digest.as_str())
            .execute(&self.writer)
            .await?;
        self.durable.wait().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_tag(&self, repo: &RepositoryName, tag: &Tag) -> Result<bool> {
        let done = sqlx::query("DELETE FROM tags WHERE repository = $1 AND name = $2")
            .bind(repo.as_str())
            .bind(tag.as_str())
            .execute(&self.writer)
            .await?;
        self.durable.wait().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_tags(
        &self,
        repo: &RepositoryName,
        page: Page<'_>,
    ) -> Result<Option<Vec<String>>> {
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM repositories WHERE name = $1")
            .bind(repo.as_str())
            .fetch_optional(&self.reader)
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let tags = sqlx::query_scalar(
            "SELECT name FROM tags WHERE repository = $1 AND name > $2 ORDER BY name LIMIT $3",
        )
        .bind(repo.as_str())
        .bind(page.last.unwrap_or(""))
        .bind(limit_of(page))
        .fetch_all(&self.reader)
        .await?;
        Ok(Some(tags))
    }

    async fn list_repositories(&self, page: Page<'_>) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2",
        )
        .bind(page.last.unwrap_or(""))
        .bind(limit_of(page))
        .fetch_all(&self.reader)
        .await?)
    }

    async fn referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        let rows = sqlx::query(
            "SELECT digest, media_type, LENGTH(content), artifact_type, annotations FROM manifests
             WHERE repository = $1 AND subject = $2 AND ($3 IS NULL OR artifact_type = $3)
             ORDER BY digest",
        )
        .bind(repo.as_str())
        .bind(subject.as_str())
        .bind(artifact_type)
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Referrer {
                    digest: r.try_get(0)?,
                    media_type: r.try_get(1)?,
                    size: r.try_get::<i64, _>(2)? as u64,
                    artifact_type: r.try_get(3)?,
                    annotations_json: r.try_get(4)?,
                })
            })
            .collect()
    }

    async fn create_upload(&self, s: &UploadSession) -> Result<()> {
        sqlx::query(
            "INSERT INTO uploads (id, repository, algorithm, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&s.id)
        .bind(s.repository.as_str())
        .bind(s.algorithm.as_str())
        .bind(s.created_at)
        .execute(&self.writer)
        .await?;
        self.durable.wait().await?;
        Ok(())
    }

    async fn get_upload(&self, id: &str) -> Result<Option<UploadSession>> {
        let row =
            sqlx::query("SELECT id, repository, algorithm, created_at FROM uploads WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
        row.map(|r| {
            let repository: &str = r.try_get(1)?;
            let algorithm: &str = r.try_get(2)?;
            Ok(UploadSession {
                id: r.try_get(0)?,
                repository: repository
                    .parse()
                    .map_err(|e: berth_oci::NameError| MetaError::Corrupt(e.to_string()))?,
                algorithm: algorithm
                    .parse()
                    .map_err(|e: berth_oci::DigestError| MetaError::Corrupt(e.to_string()))?,
                created_at: r.try_get(3)?,
            })
        })
        .transpose()
    }

    async fn delete_upload(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        self.durable.wait().await?;
        Ok(())
    }

    async fn unreferenced_blobs(&self, before: i64, limit: u32) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query(
            "SELECT b.digest, b.size FROM blobs b
             WHERE b.created_at < $1
               AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest)
               AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob = b.digest)
             ORDER BY b.created_at LIMIT $2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)? as u64)))
            .collect()
    }

    async fn forget_blob_if_unreferenced(&self, digest: &Digest) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM blobs WHERE digest = $1
               AND NOT EXISTS (SELECT 1 FROM repository_blobs WHERE digest = $1)
               AND NOT EXISTS (SELECT 1 FROM manifest_blobs WHERE blob = $1)",
        )
        .bind(digest.as_str())
        .execute(&self.writer)
        .await?;
        self.durable.wait().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn expired_uploads(&self, before: i64, limit: u32) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM uploads WHERE created_at < $1 ORDER BY created_at LIMIT $2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?)
    }
}
