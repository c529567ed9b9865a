//! [`AccessStore`] on SQLite. Every mutation bumps `access_state.generation` in the same
//! transaction, so servers notice changes made by the CLI or another replica.

use async_trait::async_trait;
use sqlx::{Row, Sqlite, Transaction};

use crate::access::{
    AccessSnapshot, AccessStore, AuditEvent, AuditQuery, Member, Project, Robot, User,
};
use crate::{Result, SqliteStore};

async fn bump(tx: &mut Transaction<'_, Sqlite>) -> Result<()> {
    sqlx::query("UPDATE access_state SET generation = generation + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl SqliteStore {
    /// Runs one access mutation and bumps the generation, atomically; returns rows affected.
    async fn mutate<'q>(
        &self,
        query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> Result<u64> {
        let mut tx = self.writer.begin().await?;
        let n = query.execute(&mut *tx).await?.rows_affected();
        if n > 0 {
            bump(&mut tx).await?;
        }
        tx.commit().await?;
        self.durable.wait().await?;
        Ok(n)
    }
}

#[async_trait]
impl AccessStore for SqliteStore {
    async fn access_generation(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT generation FROM access_state WHERE id = 1")
                .fetch_one(&self.reader)
                .await?,
        )
    }

    async fn access_snapshot(&self) -> Result<AccessSnapshot> {
        // One read transaction, so the snapshot is consistent with its generation.
        let mut tx = self.reader.begin().await?;
        let generation: i64 =
            sqlx::query_scalar("SELECT generation FROM access_state WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
        let users =
            sqlx::query("SELECT name, password_hash, admin, created_at FROM users ORDER BY name")
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|r| {
                    Ok(User {
                        name: r.try_get(0)?,
                        password_hash: r.try_get(1)?,
                        admin: r.try_get::<i64, _>(2)? != 0,
                        created_at: r.try_get(3)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
        let projects = sqlx::query("SELECT name, public, created_at FROM projects ORDER BY name")
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| {
                Ok(Project {
                    name: r.try_get(0)?,
                    public: r.try_get::<i64, _>(1)? != 0,
                    created_at: r.try_get(2)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let members = sqlx::query(
            "SELECT project, username, role FROM project_members ORDER BY project, username",
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| {
            Ok(Member {
                project: r.try_get(0)?,
                username: r.try_get(1)?,
                role: r.try_get(2)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let robots = sqlx::query(
            "SELECT name, secret_hash, project, actions, expires_at, created_at FROM robots ORDER BY name",
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| {
            Ok(Robot {
                name: r.try_get(0)?,
                secret_hash: r.try_get(1)?,
                project: r.try_get(2)?,
                actions: r.try_get(3)?,
                expires_at: r.try_get(4)?,
                created_at: r.try_get(5)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok(AccessSnapshot {
            generation,
            users,
            projects,
            members,
            robots,
        })
    }

    async fn put_user(&self, u: &User) -> Result<()> {
        self.mutate(
            sqlx::query(
                "INSERT INTO users (name, password_hash, admin, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash,
                 admin = excluded.admin",
            )
            .bind(&u.name)
            .bind(&u.password_hash)
            .bind(i64::from(u.admin))
            .bind(u.created_at),
        )
        .await?;
        Ok(())
    }

    async fn delete_user(&self, name: &str) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let n = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM project_members WHERE username = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        bump(&mut tx).await?;
        tx.commit().await?;
        self.durable.wait().await?;
        Ok(n > 0)
    }

    async fn put_project(&self, p: &Project) -> Result<()> {
        self.mutate(
            sqlx::query(
                "INSERT INTO projects (name, public, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET public = excluded.public",
            )
            .bind(&p.name)
            .bind(i64::from(p.public))
            .bind(p.created_at),
        )
        .await?;
        Ok(())
    }

    async fn delete_project(&self, name: &str) -> Result<bool> {
        Ok(self
            .mutate(sqlx::query("DELETE FROM projects WHERE name = $1").bind(name))
            .await?
            > 0)
    }

    async fn set_member(&self, m: &Member) -> Result<()> {
        self.mutate(
            sqlx::query(
                "INSERT INTO project_members (project, username, role) VALUES ($1, $2, $3)
                 ON CONFLICT (project, username) DO UPDATE SET role = excluded.role",
            )
            .bind(&m.project)
            .bind(&m.username)
            .bind(&m.role),
        )
        .await?;
        Ok(())
    }

    async fn remove_member(&self, project: &str, username: &str) -> Result<bool> {
        Ok(self
            .mutate(
                sqlx::query("DELETE FROM project_members WHERE project = $1 AND username = $2")
                    .bind(project)
                    .bind(username),
            )
            .await?
            > 0)
    }

    async fn add_robot(&self, r: &Robot) -> Result<()> {
        self.mutate(
            sqlx::query(
                "INSERT INTO robots (name, secret_hash, project, actions, expires_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&r.name)
            .bind(&r.secret_hash)
            .bind(&r.project)
            .bind(&r.actions)
            .bind(r.expires_at)
            .bind(r.created_at),
        )
        .await?;
        Ok(())
    }

    async fn delete_robot(&self, name: &str) -> Result<bool> {
        Ok(self
            .mutate(sqlx::query("DELETE FROM robots WHERE name = $1").bind(name))
            .await?
            > 0)
    }

    async fn record_audit(&self, events: &[AuditEvent]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for e in events {
            let mut id = [0u8; 16];
            rand_id(&mut id);
            sqlx::query(
                "INSERT INTO audit_events (id, at_ms, actor, action, resource, outcome, client, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(hex_id(&id))
            .bind(e.at_ms)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.resource)
            .bind(&e.outcome)
            .bind(&e.client)
            .bind(&e.detail)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        // Audit records are flushed in batches and need no fsync of their own: the next
        // durable write (or checkpoint) covers them.
        Ok(())
    }

    async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let rows = sqlx::query(
            "SELECT at_ms, actor, action, resource, outcome, client, detail FROM audit_events
             WHERE at_ms >= $1 AND ($2 IS NULL OR actor = $2) AND ($3 IS NULL OR action = $3)
             ORDER BY at_ms DESC, id DESC LIMIT $4",
        )
        .bind(q.since_ms.unwrap_or(0))
        .bind(q.actor.as_deref())
        .bind(q.action.as_deref())
        .bind(i64::from(if q.limit == 0 { 100 } else { q.limit }))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(AuditEvent {
                    at_ms: r.try_get(0)?,
                    actor: r.try_get(1)?,
                    action: r.try_get(2)?,
                    resource: r.try_get(3)?,
                    outcome: r.try_get(4)?,
                    client: r.try_get(5)?,
                    detail: r.try_get(6)?,
                })
            })
            .collect()
    }
}

fn rand_id(buf: &mut [u8]) {
    use std::time::{SystemTime, UNIX_EPOCH};
    // Uniqueness, not secrecy: time plus a process-wide counter.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0) as u64;
    buf[..8].copy_from_slice(&t.to_be_bytes());
    buf[8..].copy_from_slice(&(n ^ u64::from(std::process::id()) << 32).to_be_bytes());
}

fn hex_id(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
