//! The access model's storage: users, projects, members, robot accounts, and the audit log.
//! Decisions are made elsewhere (`berth-auth`); this only records and loads.

use async_trait::async_trait;

use crate::Result;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// bcrypt hash.
    pub password_hash: String,
    pub admin: bool,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Project {
    pub name: String,
    /// Anyone, even anonymous, may pull.
    pub public: bool,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub project: String,
    pub username: String,
    /// `guest`, `developer`, `maintainer` or `admin`.
    pub role: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Robot {
    /// Login name, `robot$<project>+<name>`.
    pub name: String,
    /// SHA-256 (hex) of the secret, which is shown once at creation.
    pub secret_hash: String,
    pub project: String,
    /// Comma-separated actions: `pull`, `push`, `delete`.
    pub actions: String,
    /// Seconds since the epoch; `None` never expires.
    pub expires_at: Option<i64>,
    pub created_at: i64,
}

/// Everything an authorization decision needs, loaded at once.
#[derive(Clone, Debug, Default)]
pub struct AccessSnapshot {
    pub generation: i64,
    pub users: Vec<User>,
    pub projects: Vec<Project>,
    pub members: Vec<Member>,
    pub robots: Vec<Robot>,
}

/// One audit record. Its JSON form (`time_ms`, `actor`, …) is the same in the JSON-lines
/// stream, `/api/v1/audit` and `berth audit --json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditEvent {
    #[serde(rename = "time_ms")]
    pub at_ms: i64,
    /// User or robot name, or `anonymous`.
    pub actor: String,
    /// `login`, `push`, `pull`, `delete`, `user.add`, `project.member`, …
    pub action: String,
    /// What was acted on: a repository reference, a user, a project.
    pub resource: String,
    /// `ok`, `denied`, `failed`.
    pub outcome: String,
    /// Client address.
    pub client: String,
    pub detail: String,
}

#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub since_ms: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub limit: u32,
}

/// A web UI session. The cookie holds the id; the store only its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// SHA-256 (hex) of the cookie's random id.
    pub id_hash: String,
    pub username: String,
    /// Echoed by every state-changing form of this session.
    pub csrf_token: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// Successful pushes and pulls on one day, from the audit log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DailyActivity {
    /// Days since the epoch (UTC).
    pub day: i64,
    pub pushes: u64,
    pub pulls: u64,
}

#[async_trait]
pub trait AccessStore: Send + Sync + 'static {
    /// Changes whenever anything below changes.
    async fn access_generation(&self) -> Result<i64>;
    async fn access_snapshot(&self) -> Result<AccessSnapshot>;

    async fn put_user(&self, user: &User) -> Result<()>;
    async fn delete_user(&self, name: &str) -> Result<bool>;

    async fn put_project(&self, project: &Project) -> Result<()>;
    async fn delete_project(&self, name: &str) -> Result<bool>;

    /// Adds a member or changes their role.
    async fn set_member(&self, member: &Member) -> Result<()>;
    async fn remove_member(&self, project: &str, username: &str) -> Result<bool>;

    async fn add_robot(&self, robot: &Robot) -> Result<()>;
    async fn delete_robot(&self, name: &str) -> Result<bool>;

    async fn record_audit(&self, events: &[AuditEvent]) -> Result<()>;
    /// Deletes events older than `before_ms` (when given), then all but the newest
    /// `keep_at_most` (when given). Returns how many were deleted.
    async fn prune_audit(&self, before_ms: Option<i64>, keep_at_most: Option<u64>) -> Result<u64>;
    /// Newest first.
    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>>;
    /// Pushes and pulls the audit log holds since `since_ms`, per day, oldest first.
    async fn audit_activity(&self, since_ms: i64) -> Result<Vec<DailyActivity>>;

    /// Stores a new session and keeps only the user's newest `keep_per_user`. Sessions do not
    /// change the access generation.
    async fn open_session(&self, session: &Session, keep_per_user: u32) -> Result<()>;
    /// The session with this id hash, unless it expired by `now`.
    async fn session(&self, id_hash: &str, now: i64) -> Result<Option<Session>>;
    async fn close_session(&self, id_hash: &str) -> Result<bool>;
    /// Deletes sessions expired by `now`; returns how many.
    async fn prune_sessions(&self, now: i64) -> Result<u64>;
}

/// Folds `(day, action, count)` rows into one [`DailyActivity`] per day.
pub(crate) fn fold_activity(
    rows: impl IntoIterator<Item = (i64, String, i64)>,
) -> Vec<DailyActivity> {
    let mut days: Vec<DailyActivity> = Vec::new();
    for (day, action, count) in rows {
        if days.last().is_none_or(|d| d.day != day) {
            days.push(DailyActivity {
                day,
                ..DailyActivity::default()
            });
        }
        if let Some(d) = days.last_mut() {
            let count = count.max(0) as u64;
            match action.as_str() {
                "push" => d.pushes += count,
                _ => d.pulls += count,
            }
        }
    }
    days
}

/// A unique audit row id: time plus a process-wide counter (uniqueness, not secrecy).
pub(crate) fn new_event_id() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0) as u64;
    format!("{t:016x}{:016x}", n ^ (u64::from(std::process::id()) << 32))
}
