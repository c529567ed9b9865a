//! [`AccessStore`] on PostgreSQL. Every mutation bumps `access_state.generation` in the same
//! transaction, so every replica notices changes made anywhere.

use async_trait::async_trait;
use deadpool_postgres::{Client, GenericClient, Transaction};
use tokio_postgres::types::ToSql;
use tokio_postgres::IsolationLevel;

use super::registry::{execute, query, query_opt, PgResult};
use super::write_tx;
use super::PostgresStore;
use crate::access::{
    fold_activity, AccessSnapshot, AccessStore, AuditEvent, AuditQuery, DailyActivity, Member,
    Project, Robot, Session, User,
};
use crate::{sql, MetaError, Result};

async fn bump(c: &impl GenericClient) -> PgResult<()> {
    execute(
        c,
        "UPDATE access_state SET generation = generation + 1 WHERE id = 1",
        &[],
    )
    .await?;
    Ok(())
}

/// Runs one access statement and, if it changed anything, bumps the generation; returns the
/// rows it changed.
async fn mutate(tx: &Transaction<'_>, sql: &str, params: &[&(dyn ToSql + Sync)]) -> PgResult<u64> {
    let n = execute(tx, sql, params).await?;
    if n > 0 {
        bump(tx).await?;
    }
    Ok(n)
}

async fn snapshot(tx: &Transaction<'_>) -> PgResult<AccessSnapshot> {
    let generation: i64 = query_opt(tx, "SELECT generation FROM access_state WHERE id = 1", &[])
        .await?
        .map(|r| r.get(0))
        .unwrap_or(0);
    let users = query(
        tx,
        "SELECT name, password_hash, admin, created_at FROM users ORDER BY name",
        &[],
    )
    .await?
    .iter()
    .map(|r| User {
        name: r.get(0),
        password_hash: r.get(1),
        admin: r.get::<_, i64>(2) != 0,
        created_at: r.get(3),
    })
    .collect();
    let projects = query(
        tx,
        "SELECT name, public, created_at FROM projects ORDER BY name",
        &[],
    )
    .await?
    .iter()
    .map(|r| Project {
        name: r.get(0),
        public: r.get::<_, i64>(1) != 0,
        created_at: r.get(2),
    })
    .collect();
    let members = query(
        tx,
        "SELECT project, username, role FROM project_members ORDER BY project, username",
        &[],
    )
    .await?
    .iter()
    .map(|r| Member {
        project: r.get(0),
        username: r.get(1),
        role: r.get(2),
    })
    .collect();
    let robots = query(
        tx,
        "SELECT name, secret_hash, project, actions, expires_at, created_at
         FROM robots ORDER BY name",
        &[],
    )
    .await?
    .iter()
    .map(|r| Robot {
        name: r.get(0),
        secret_hash: r.get(1),
        project: r.get(2),
        actions: r.get(3),
        expires_at: r.get(4),
        created_at: r.get(5),
    })
    .collect();
    Ok(AccessSnapshot {
        generation,
        users,
        projects,
        members,
        robots,
    })
}

#[async_trait]
impl AccessStore for PostgresStore {
    async fn access_generation(&self) -> Result<i64> {
        self.observed("access_generation", async {
            let client = self.client().await?;
            let c: &Client = &client;
            Ok(
                c.query_one("SELECT generation FROM access_state WHERE id = 1", &[])
                    .await?
                    .get(0),
            )
        })
        .await
    }

    async fn access_snapshot(&self) -> Result<AccessSnapshot> {
        let started = std::time::Instant::now();
        let result = async {
            let mut client = self.client().await?;
            // One repeatable-read transaction, so the snapshot matches its generation.
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let snapshot = snapshot(&tx).await?;
            tx.commit().await?;
            Ok::<_, MetaError>(snapshot)
        }
        .await;
        self.observe("access_snapshot", started, &result);
        result
    }

    async fn put_user(&self, u: &User) -> Result<()> {
        write_tx!(self, "put_user", |tx| {
            mutate(
                tx,
                "INSERT INTO users (name, password_hash, admin, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash,
                 admin = excluded.admin",
                &[
                    &u.name,
                    &u.password_hash,
                    &i64::from(u.admin),
                    &u.created_at,
                ],
            )
            .await?;
            Ok(())
        })
    }

    async fn delete_user(&self, name: &str) -> Result<bool> {
        write_tx!(self, "delete_user", |tx| {
            let n = execute(tx, "DELETE FROM users WHERE name = $1", &[&name]).await?;
            execute(
                tx,
                "DELETE FROM project_members WHERE username = $1",
                &[&name],
            )
            .await?;
            bump(tx).await?;
            Ok(n > 0)
        })
    }

    async fn put_project(&self, p: &Project) -> Result<()> {
        write_tx!(self, "put_project", |tx| {
            mutate(
                tx,
                "INSERT INTO projects (name, public, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET public = excluded.public",
                &[&p.name, &i64::from(p.public), &p.created_at],
            )
            .await?;
            Ok(())
        })
    }

    async fn delete_project(&self, name: &str) -> Result<bool> {
        write_tx!(self, "delete_project", |tx| {
            Ok(mutate(tx, "DELETE FROM projects WHERE name = $1", &[&name]).await? > 0)
        })
    }

    async fn set_member(&self, m: &Member) -> Result<()> {
        write_tx!(self, "set_member", |tx| {
            mutate(
                tx,
                "INSERT INTO project_members (project, username, role) VALUES ($1, $2, $3)
                 ON CONFLICT (project, username) DO UPDATE SET role = excluded.role",
                &[&m.project, &m.username, &m.role],
            )
            .await?;
            Ok(())
        })
    }

    async fn remove_member(&self, project: &str, username: &str) -> Result<bool> {
        write_tx!(self, "remove_member", |tx| {
            let n = mutate(
                tx,
                "DELETE FROM project_members WHERE project = $1 AND username = $2",
                &[&project, &username],
            )
            .await?;
            Ok(n > 0)
        })
    }

    async fn add_robot(&self, r: &Robot) -> Result<()> {
        write_tx!(self, "add_robot", |tx| {
            mutate(
                tx,
                "INSERT INTO robots (name, secret_hash, project, actions, expires_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &r.name,
                    &r.secret_hash,
                    &r.project,
                    &r.actions,
                    &r.expires_at,
                    &r.created_at,
                ],
            )
            .await?;
            Ok(())
        })
    }

    async fn delete_robot(&self, name: &str) -> Result<bool> {
        write_tx!(self, "delete_robot", |tx| {
            Ok(mutate(tx, "DELETE FROM robots WHERE name = $1", &[&name]).await? > 0)
        })
    }

    async fn record_audit(&self, events: &[AuditEvent]) -> Result<()> {
        write_tx!(self, "record_audit", |tx| {
            for e in events {
                execute(
                    tx,
                    "INSERT INTO audit_events
                       (id, at_ms, actor, action, resource, outcome, client, detail)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &crate::access::new_event_id(),
                        &e.at_ms,
                        &e.actor,
                        &e.action,
                        &e.resource,
                        &e.outcome,
                        &e.client,
                        &e.detail,
                    ],
                )
                .await?;
            }
            Ok(())
        })
    }

    async fn prune_audit(&self, before_ms: Option<i64>, keep_at_most: Option<u64>) -> Result<u64> {
        write_tx!(self, "prune_audit", |tx| {
            let mut deleted = 0;
            if let Some(before) = before_ms {
                deleted +=
                    execute(tx, "DELETE FROM audit_events WHERE at_ms < $1", &[&before]).await?;
            }
            if let Some(keep) = keep_at_most {
                // The newest event beyond the cap; it and everything older go.
                let cutoff = query_opt(
                    tx,
                    "SELECT at_ms, id FROM audit_events ORDER BY at_ms DESC, id DESC
                     LIMIT 1 OFFSET $1",
                    &[&i64::try_from(keep).unwrap_or(i64::MAX)],
                )
                .await?;
                if let Some(row) = cutoff {
                    let (at, id): (i64, String) = (row.get(0), row.get(1));
                    deleted += execute(
                        tx,
                        "DELETE FROM audit_events WHERE at_ms < $1 OR (at_ms = $1 AND id <= $2)",
                        &[&at, &id],
                    )
                    .await?;
                }
            }
            Ok(deleted)
        })
    }

    async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let limit = i64::from(if q.limit == 0 { 100 } else { q.limit });
        self.observed("query_audit", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let rows = query(
                c,
                "SELECT at_ms, actor, action, resource, outcome, client, detail
                 FROM audit_events
                 WHERE at_ms >= $1 AND ($2::text IS NULL OR actor = $2::text)
                   AND ($3::text IS NULL OR action = $3::text)
                 ORDER BY at_ms DESC, id DESC LIMIT $4",
                &[&q.since_ms.unwrap_or(0), &q.actor, &q.action, &limit],
            )
            .await?;
            Ok(rows
                .iter()
                .map(|r| AuditEvent {
                    at_ms: r.get(0),
                    actor: r.get(1),
                    action: r.get(2),
                    resource: r.get(3),
                    outcome: r.get(4),
                    client: r.get(5),
                    detail: r.get(6),
                })
                .collect())
        })
        .await
    }

    async fn audit_activity(&self, since_ms: i64) -> Result<Vec<DailyActivity>> {
        self.observed("audit_activity", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let rows = query(c, sql::AUDIT_ACTIVITY, &[&since_ms]).await?;
            Ok(fold_activity(
                rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))),
            ))
        })
        .await
    }

    async fn open_session(&self, s: &Session, keep_per_user: u32) -> Result<()> {
        let keep = i64::from(keep_per_user);
        write_tx!(self, "open_session", IsolationLevel::ReadCommitted, |tx| {
            execute(
                tx,
                sql::INSERT_SESSION,
                &[
                    &s.id_hash,
                    &s.username,
                    &s.csrf_token,
                    &s.created_at,
                    &s.expires_at,
                ],
            )
            .await?;
            execute(tx, sql::TRIM_USER_SESSIONS, &[&s.username, &keep]).await?;
            Ok(())
        })
    }

    async fn session(&self, id_hash: &str, now: i64) -> Result<Option<Session>> {
        self.observed("session", async {
            let client = self.client().await?;
            let c: &Client = &client;
            let row = query_opt(c, sql::SESSION, &[&id_hash, &now]).await?;
            Ok(row.map(|r| Session {
                id_hash: r.get(0),
                username: r.get(1),
                csrf_token: r.get(2),
                created_at: r.get(3),
                expires_at: r.get(4),
            }))
        })
        .await
    }

    async fn close_session(&self, id_hash: &str) -> Result<bool> {
        write_tx!(self, "close_session", IsolationLevel::ReadCommitted, |tx| {
            Ok(execute(tx, sql::DELETE_SESSION, &[&id_hash]).await? > 0)
        })
    }

    async fn prune_sessions(&self, now: i64) -> Result<u64> {
        write_tx!(
            self,
            "prune_sessions",
            IsolationLevel::ReadCommitted,
            |tx| { Ok(execute(tx, sql::DELETE_EXPIRED_SESSIONS, &[&now]).await?) }
        )
    }
}
