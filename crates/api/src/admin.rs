//! The admin HTTP API (`/api/v1`), available with token auth: users, projects and members,
//! robot accounts, and the audit log. Callers log in with Basic credentials or bring one of
//! Berth's tokens issued for the scope `registry:admin:*` (a token scoped to repositories is
//! not enough, and an external issuer's token never is); system admins may do everything,
//! project admins manage their project. Every change is audited and takes effect at once.
//! Documented in `docs/admin-api.md`.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use berth_auth::admin;
use berth_auth::Permission;
use berth_meta::AuditQuery;
use http::request::Parts;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::access::{client_address, Access, Authenticator, Need, TokenAuth};
use crate::error::ApiError;
use crate::Api;

pub fn router() -> Router<Arc<Api>> {
    Router::new()
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{name}", delete(remove_user))
        .route("/api/v1/users/{name}/password", put(change_password))
        .route("/api/v1/projects", get(list_projects).post(create_project))
        .route(
            "/api/v1/projects/{name}",
            put(update_project).delete(remove_project),
        )
        .route("/api/v1/projects/{name}/members", get(list_members))
        .route(
            "/api/v1/projects/{name}/members/{user}",
            put(put_member).delete(remove_member),
        )
        .route("/api/v1/robots", get(list_robots).post(create_robot))
        .route("/api/v1/robots/{name}", delete(remove_robot))
        .route("/api/v1/audit", get(audit))
        .route(
            "/api/v1/system/read-only",
            get(read_only).put(switch_read_only),
        )
        .route("/api/v1/repositories/{*name}", delete(remove_repository))
        .route(
            "/api/v1/projects/{name}/policy",
            get(show_policy).put(set_policy).delete(remove_policy),
        )
        .route(
            "/api/v1/projects/{name}/retention",
            axum::routing::post(run_retention),
        )
}

/// An authenticated caller of the admin API.
struct Caller {
    api: Arc<Api>,
    access: Access,
}

impl FromRequestParts<Arc<Api>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, Response> {
        if !matches!(api.auth, Authenticator::Token(_)) {
            return Err(ApiError::NoRoute.into_response());
        }
        let client = client_address(&parts.extensions);
        let access = api
            .identify(&parts.headers, &client)
            .await
            .map_err(IntoResponse::into_response)?;
        if !api.may(&access, &Need::Admin) {
            return Err(api.refusal(&parts.headers, &access, &Need::Admin));
        }
        Ok(Caller {
            api: api.clone(),
            access,
        })
    }
}

impl Caller {
    fn token_auth(&self) -> Result<&TokenAuth, ApiError> {
        self.api.token_auth()
    }

    fn require(&self, permission: Permission<'_>) -> Result<(), ApiError> {
        self.api.require(&self.access, permission)
    }

    async fn changed(&self, action: &str, resource: &str, detail: &str) -> Result<(), ApiError> {
        self.api
            .access_changed(&self.access, action, resource, detail)
            .await
    }
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize)]
struct Password {
    password: String,
}

#[derive(Deserialize)]
struct NewProject {
    name: String,
    #[serde(default)]
    public: bool,
}

#[derive(Deserialize)]
struct ProjectSettings {
    public: bool,
}

#[derive(Deserialize)]
struct RoleBody {
    role: String,
}

#[derive(Deserialize)]
struct NewRobot {
    project: String,
    name: String,
    actions: String,
    expires_in_days: Option<u32>,
}

#[derive(Deserialize)]
struct ReadOnlySwitch {
    enabled: bool,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct RetentionParams {
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize)]
struct AuditParams {
    actor: Option<String>,
    action: Option<String>,
    since_ms: Option<i64>,
    limit: Option<u32>,
}

type Reply = Result<(StatusCode, Json<Value>), ApiError>;

fn ok(v: Value) -> Reply {
    Ok((StatusCode::OK, Json(v)))
}

async fn list_users(c: Caller) -> Reply {
    c.require(Permission::ManageUsers)?;
    let model = c.token_auth()?.model();
    let mut users: Vec<Value> = model
        .users
        .iter()
        .map(|(n, u)| json!({"name": n, "admin": u.admin}))
        .collect();
    users.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    ok(json!({ "users": users }))
}

async fn create_user(c: Caller, Json(u): Json<NewUser>) -> Reply {
    c.require(Permission::ManageUsers)?;
    admin::put_user(&*c.token_auth()?.store, &u.name, &u.password, u.admin).await?;
    c.changed("user.add", &u.name, if u.admin { "admin" } else { "" })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": u.name, "admin": u.admin})),
    ))
}

async fn remove_user(c: Caller, Path(name): Path<String>) -> Reply {
    c.require(Permission::ManageUsers)?;
    admin::delete_user(&*c.token_auth()?.store, &name).await?;
    c.changed("user.remove", &name, "").await?;
    ok(json!({}))
}

async fn change_password(c: Caller, Path(name): Path<String>, Json(p): Json<Password>) -> Reply {
    c.require(Permission::ChangePassword(&name))?;
    admin::set_password(&*c.token_auth()?.store, &name, &p.password).await?;
    c.changed("user.password", &name, "").await?;
    ok(json!({}))
}

async fn list_projects(c: Caller) -> Reply {
    let projects: Vec<Value> = c
        .api
        .visible_projects(&c.access)
        .into_iter()
        .map(|(name, public)| json!({"name": name, "public": public}))
        .collect();
    ok(json!({ "projects": projects }))
}

async fn create_project(c: Caller, Json(p): Json<NewProject>) -> Reply {
    c.api.create_project(&c.access, &p.name, p.public).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": p.name, "public": p.public})),
    ))
}

async fn update_project(
    c: Caller,
    Path(name): Path<String>,
    Json(s): Json<ProjectSettings>,
) -> Reply {
    c.api
        .set_project_visibility(&c.access, &name, s.public)
        .await?;
    ok(json!({"name": name, "public": s.public}))
}

async fn remove_project(c: Caller, Path(name): Path<String>) -> Reply {
    c.api.remove_project(&c.access, &name).await?;
    ok(json!({}))
}

async fn list_members(c: Caller, Path(name): Path<String>) -> Reply {
    let members: Vec<Value> = c
        .api
        .project_members(&c.access, &name)?
        .into_iter()
        .map(|(u, r)| json!({"user": u, "role": r.as_str()}))
        .collect();
    ok(json!({ "members": members }))
}

async fn put_member(
    c: Caller,
    Path((name, user)): Path<(String, String)>,
    Json(r): Json<RoleBody>,
) -> Reply {
    c.api.set_member(&c.access, &name, &user, &r.role).await?;
    ok(json!({"user": user, "role": r.role}))
}

async fn remove_member(c: Caller, Path((name, user)): Path<(String, String)>) -> Reply {
    c.api.remove_member(&c.access, &name, &user).await?;
    ok(json!({}))
}

async fn list_robots(c: Caller) -> Reply {
    let robots: Vec<Value> = c
        .api
        .robots(&c.access, None)?
        .into_iter()
        .map(|r| json!({"name": r.name, "project": r.project, "actions": r.actions, "expires_at": r.expires_at}))
        .collect();
    ok(json!({ "robots": robots }))
}

async fn create_robot(c: Caller, Json(r): Json<NewRobot>) -> Reply {
    let created = c
        .api
        .create_robot(
            &c.access,
            &r.project,
            &r.name,
            &r.actions,
            r.expires_in_days,
        )
        .await?;
    // The secret is shown here once and never again.
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": created.name, "secret": created.secret})),
    ))
}

async fn remove_robot(c: Caller, Path(name): Path<String>) -> Reply {
    c.api.remove_robot(&c.access, &name).await?;
    ok(json!({}))
}

async fn audit(c: Caller, Query(q): Query<AuditParams>) -> Reply {
    let query = AuditQuery {
        since_ms: q.since_ms,
        actor: q.actor,
        action: q.action,
        limit: q.limit.unwrap_or(100).min(10_000),
    };
    let events = c.api.audit_events(&c.access, &query).await?;
    ok(json!({ "events": events }))
}

/// Whether writes are refused, and why: `configured` when `storage.read_only` holds it on
/// (the switch cannot lift that).
async fn read_only(c: Caller) -> Reply {
    c.require(Permission::OperateRegistry)?;
    c.api.registry.refresh_read_only().await?;
    let reason = c.api.registry.read_only();
    ok(json!({
        "enabled": reason.is_some(),
        "reason": reason,
        "configured": c.api.registry.config.read_only,
    }))
}

async fn switch_read_only(c: Caller, Json(s): Json<ReadOnlySwitch>) -> Reply {
    c.require(Permission::OperateRegistry)?;
    let reason = s.enabled.then_some(s.reason.as_str());
    c.api.registry.switch_read_only(reason).await?;
    let a = &c.access;
    let action = if s.enabled {
        "read_only.on"
    } else {
        "read_only.off"
    };
    c.api.audit.record(
        &a.principal.name(),
        action,
        "registry",
        "ok",
        &a.client,
        &s.reason,
    );
    read_only(c).await
}

/// Deletes a whole repository (tags, manifests, blob links); its bytes go with the next
/// garbage collection. Project admins may delete their project's repositories.
async fn remove_repository(c: Caller, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    let repository: berth_oci::RepositoryName = name.parse()?;
    c.api.delete_repository(&c.access, &repository).await?;
    Ok(StatusCode::ACCEPTED)
}

/// A project's lifecycle policy (immutable tags, retention rules); `{}` when it has none.
async fn show_policy(c: Caller, Path(project): Path<String>) -> Reply {
    let policy = c.api.policy(&c.access, &project).await?;
    ok(serde_json::to_value(&policy).unwrap_or_default())
}

/// Replaces a project's policy; lifting an immutability rule is putting the policy without
/// it.
async fn set_policy(c: Caller, Path(project): Path<String>, body: String) -> Reply {
    // Who may is asked before the body is even parsed.
    c.require(Permission::AdministerProject(&project))?;
    let policy = berth_registry::policy::Policy::parse(&body)
        .map_err(|e| ApiError::InvalidRequest(format!("not a valid policy: {e}")))?;
    c.api.set_policy(&c.access, &project, &policy).await?;
    ok(serde_json::to_value(policy).unwrap_or_default())
}

async fn remove_policy(c: Caller, Path(project): Path<String>) -> Reply {
    c.api.remove_policy(&c.access, &project).await?;
    ok(json!({}))
}

/// Applies the project's retention now (`?dry_run=true`: only says what would go).
async fn run_retention(
    c: Caller,
    Path(project): Path<String>,
    Query(q): Query<RetentionParams>,
) -> Reply {
    let report = c.api.retention(&c.access, &project, q.dry_run).await?;
    let deletions: Vec<Value> = report
        .plan
        .deletions
        .iter()
        .map(|d| {
            json!({"repository": d.repository, "digest": d.digest, "tags": d.tags, "reason": d.reason})
        })
        .collect();
    ok(json!({
        "dry_run": q.dry_run,
        "deletions": deletions,
        "deleted": report.deleted.len(),
        "kept_by_push": report.kept_by_push,
        "bytes_freed": report.plan.bytes_freed,
    }))
}
