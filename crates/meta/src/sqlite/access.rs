//! [`AccessStore`] on SQLite. Every mutation bumps `access_state.generation` in the same
//! transaction, so servers notice changes made by the CLI or another replica.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Params};

use super::SqliteStore;
use crate::access::{
    fold_activity, AccessSnapshot, AccessStore, AuditEvent, AuditQuery, DailyActivity, Member,
    Project, Robot, Session, User,
};
use crate::{sql, Result};

fn bump(conn: &Connection) -> Result<()> {
    conn.prepare_cached("UPDATE access_state SET generation = generation + 1 WHERE id = 1")?
        .execute([])?;
    Ok(())
}

/// Runs one access statement and, if it changed anything, bumps the generation; returns the
/// rows it changed.
fn mutate(conn: &Connection, sql: &str, params: impl Params) -> Result<usize> {
    let n = conn.prepare_cached(sql)?.execute(params)?;
    if n > 0 {
        bump(conn)?;
    }
    Ok(n)
}

fn snapshot(conn: &Connection) -> Result<AccessSnapshot> {
    // One read transaction, so the snapshot is consistent with its generation.
    let tx = conn.unchecked_transaction()?;
    let generation: i64 = tx.query_row(
        "SELECT generation FROM access_state WHERE id = 1",
        [],
        |r| r.get(0),
    )?;
    let users = tx
        .prepare_cached("SELECT name, password_hash, admin, created_at FROM users ORDER BY name")?
        .query_map([], |r| {
            Ok(User {
                name: r.get(0)?,
                password_hash: r.get(1)?,
                admin: r.get::<_, i64>(2)? != 0,
                created_at: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let projects = tx
        .prepare_cached("SELECT name, public, created_at FROM projects ORDER BY name")?
        .query_map([], |r| {
            Ok(Project {
                name: r.get(0)?,
                public: r.get::<_, i64>(1)? != 0,
                created_at: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let members = tx
        .prepare_cached(
            "SELECT project, username, role FROM project_members ORDER BY project, username",
        )?
        .query_map([], |r| {
            Ok(Member {
                project: r.get(0)?,
                username: r.get(1)?,
                role: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let robots = tx
        .prepare_cached(
            "SELECT name, secret_hash, project, actions, expires_at, created_at
             FROM robots ORDER BY name",
        )?
        .query_map([], |r| {
            Ok(Robot {
                name: r.get(0)?,
                secret_hash: r.get(1)?,
                project: r.get(2)?,
                actions: r.get(3)?,
                expires_at: r.get(4)?,
                created_at: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    tx.finish()?;
    Ok(AccessSnapshot {
        generation,
        users,
        projects,
        members,
        robots,
    })
}

#[async_trait]
impl AccessStore for SqliteStore {
    async fn access_generation(&self) -> Result<i64> {
        self.read("access_generation", |conn| {
            Ok(conn
                .prepare_cached("SELECT generation FROM access_state WHERE id = 1")?
                .query_row([], |r| r.get(0))?)
        })
        .await
    }

    async fn access_snapshot(&self) -> Result<AccessSnapshot> {
        self.read("access_snapshot", snapshot).await
    }

    async fn put_user(&self, u: &User) -> Result<()> {
        let u = u.clone();
        self.write("put_user", move |conn| {
            mutate(
                conn,
                "INSERT INTO users (name, password_hash, admin, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash,
                 admin = excluded.admin",
                (&u.name, &u.password_hash, i64::from(u.admin), u.created_at),
            )
        })
        .await?;
        Ok(())
    }

    async fn delete_user(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.write("delete_user", move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM users WHERE name = $1")?
                .execute([&name])?;
            conn.prepare_cached("DELETE FROM project_members WHERE username = $1")?
                .execute([&name])?;
            bump(conn)?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_project(&self, p: &Project) -> Result<()> {
        let p = p.clone();
        self.write("put_project", move |conn| {
            mutate(
                conn,
                "INSERT INTO projects (name, public, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET public = excluded.public",
                (&p.name, i64::from(p.public), p.created_at),
            )
        })
        .await?;
        Ok(())
    }

    async fn delete_project(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        let n = self
            .write("delete_project", move |conn| {
                mutate(conn, "DELETE FROM projects WHERE name = $1", [name])
            })
            .await?;
        Ok(n > 0)
    }

    async fn set_member(&self, m: &Member) -> Result<()> {
        let m = m.clone();
        self.write("set_member", move |conn| {
            mutate(
                conn,
                "INSERT INTO project_members (project, username, role) VALUES ($1, $2, $3)
                 ON CONFLICT (project, username) DO UPDATE SET role = excluded.role",
                (&m.project, &m.username, &m.role),
            )
        })
        .await?;
        Ok(())
    }

    async fn remove_member(&self, project: &str, username: &str) -> Result<bool> {
        let (project, username) = (project.to_owned(), username.to_owned());
        let n = self
            .write("remove_member", move |conn| {
                mutate(
                    conn,
                    "DELETE FROM project_members WHERE project = $1 AND username = $2",
                    (project, username),
                )
            })
            .await?;
        Ok(n > 0)
    }

    async fn add_robot(&self, r: &Robot) -> Result<()> {
        let r = r.clone();
        self.write("add_robot", move |conn| {
            mutate(
                conn,
                "INSERT INTO robots (name, secret_hash, project, actions, expires_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                (
                    &r.name,
                    &r.secret_hash,
                    &r.project,
                    &r.actions,
                    r.expires_at,
                    r.created_at,
                ),
            )
        })
        .await?;
        Ok(())
    }

    async fn delete_robot(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        let n = self
            .write("delete_robot", move |conn| {
                mutate(conn, "DELETE FROM robots WHERE name = $1", [name])
            })
            .await?;
        Ok(n > 0)
    }

    async fn record_audit(&self, events: &[AuditEvent]) -> Result<()> {
        let events = events.to_vec();
        self.write("record_audit", move |conn| {
            let mut insert = conn.prepare_cached(
                "INSERT INTO audit_events (id, at_ms, actor, action, resource, outcome, client, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )?;
            for e in &events {
                insert.execute((
                    crate::access::new_event_id(),
                    e.at_ms,
                    &e.actor,
                    &e.action,
                    &e.resource,
                    &e.outcome,
                    &e.client,
                    &e.detail,
                ))?;
            }
            Ok(())
        })
        .await
    }

    async fn prune_audit(&self, before_ms: Option<i64>, keep_at_most: Option<u64>) -> Result<u64> {
        self.write("prune_audit", move |conn| {
            let mut deleted = 0;
            if let Some(before) = before_ms {
                deleted += conn
                    .prepare_cached("DELETE FROM audit_events WHERE at_ms < $1")?
                    .execute([before])? as u64;
            }
            if let Some(keep) = keep_at_most {
                // The newest event beyond the cap; it and everything older go. (No `LIMIT -1`:
                // the query is the same on PostgreSQL.)
                let cutoff: Option<(i64, String)> = conn
                    .prepare_cached(
                        "SELECT at_ms, id FROM audit_events ORDER BY at_ms DESC, id DESC
                         LIMIT 1 OFFSET $1",
                    )?
                    .query_row([i64::try_from(keep).unwrap_or(i64::MAX)], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                if let Some((at, id)) = cutoff {
                    deleted += conn
                        .prepare_cached(
                            "DELETE FROM audit_events
                             WHERE at_ms < $1 OR (at_ms = $1 AND id <= $2)",
                        )?
                        .execute((at, id))? as u64;
                }
            }
            Ok(deleted)
        })
        .await
    }

    async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let q = q.clone();
        self.read("query_audit", move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT at_ms, actor, action, resource, outcome, client, detail
                     FROM audit_events
                     WHERE at_ms >= $1 AND ($2 IS NULL OR actor = $2)
                       AND ($3 IS NULL OR action = $3)
                     ORDER BY at_ms DESC, id DESC LIMIT $4",
                )?
                .query_map(
                    (
                        q.since_ms.unwrap_or(0),
                        &q.actor,
                        &q.action,
                        i64::from(if q.limit == 0 { 100 } else { q.limit }),
                    ),
                    |r| {
                        Ok(AuditEvent {
                            at_ms: r.get(0)?,
                            actor: r.get(1)?,
                            action: r.get(2)?,
                            resource: r.get(3)?,
                            outcome: r.get(4)?,
                            client: r.get(5)?,
                            detail: r.get(6)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn audit_activity(&self, since_ms: i64) -> Result<Vec<DailyActivity>> {
        self.read("audit_activity", move |conn| {
            let rows = conn
                .prepare_cached(sql::AUDIT_ACTIVITY)?
                .query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<(i64, String, i64)>>>()?;
            Ok(fold_activity(rows))
        })
        .await
    }

    async fn open_session(&self, s: &Session, keep_per_user: u32) -> Result<()> {
        let s = s.clone();
        self.write("open_session", move |conn| {
            conn.prepare_cached(sql::INSERT_SESSION)?.execute((
                &s.id_hash,
                &s.username,
                &s.csrf_token,
                s.created_at,
                s.expires_at,
            ))?;
            conn.prepare_cached(sql::TRIM_USER_SESSIONS)?
                .execute((&s.username, i64::from(keep_per_user)))?;
            Ok(())
        })
        .await
    }

    async fn session(&self, id_hash: &str, now: i64) -> Result<Option<Session>> {
        let id_hash = id_hash.to_owned();
        self.read("session", move |conn| {
            Ok(conn
                .prepare_cached(sql::SESSION)?
                .query_row((&id_hash, now), |r| {
                    Ok(Session {
                        id_hash: r.get(0)?,
                        username: r.get(1)?,
                        csrf_token: r.get(2)?,
                        created_at: r.get(3)?,
                        expires_at: r.get(4)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn close_session(&self, id_hash: &str) -> Result<bool> {
        let id_hash = id_hash.to_owned();
        self.write("close_session", move |conn| {
            Ok(conn
                .prepare_cached(sql::DELETE_SESSION)?
                .execute([&id_hash])?
                > 0)
        })
        .await
    }

    async fn prune_sessions(&self, now: i64) -> Result<u64> {
        self.write("prune_sessions", move |conn| {
            Ok(conn
                .prepare_cached(sql::DELETE_EXPIRED_SESSIONS)?
                .execute([now])? as u64)
        })
        .await
    }
}
