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
use berth_auth::admin::{self, AdminError};
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
        match &self.api.auth {
            Authenticator::Token(t) => Ok(t),
            _ => Err(ApiError::NoRoute),
        }
    }

    /// Asks the authorizer; a refusal says who may do this instead.
    fn require(&self, permission: Permission<'_>) -> Result<(), ApiError> {
        if self.api.allows(&self.access, permission) {
            return Ok(());
        }
        Err(ApiError::Denied(match permission {
            Permission::AdministerProject(project) => {
                format!("only admins of project {project} may do this")
            }
            Permission::ChangePassword(user) => {
                format!("only {user} or a registry admin may change this password")
            }
            _ => "only registry admins may do this".into(),
        }))
    }

    /// Applies a change: audit it, then reload the model so it holds from the next request.
    async fn changed(&self, action: &str, resource: &str, detail: &str) -> Result<(), ApiError> {
        let a = &self.access;
        self.api.audit.record(
            &a.principal.name(),
            action,
            resource,
            "ok",
            &a.client,
            detail,
        );
        self.token_auth()?.refresh().await?;
        Ok(())
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(detail) => ApiError::InvalidRequest(detail),
            AdminError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            AdminError::Store(e) => ApiError::Meta(e),
            AdminError::Hash(e) => ApiError::InvalidRequest(e.to_string()),
        }
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
    let model = c.token_auth()?.model();
    let mut projects: Vec<Value> = model
        .projects
        .iter()
        .filter(|(name, _)| c.api.allows(&c.access, Permission::ReadProject(name)))
        .map(|(name, public)| json!({"name": name, "public": public}))
        .collect();
    projects.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    ok(json!({ "projects": projects }))
}

async fn create_project(c: Caller, Json(p): Json<NewProject>) -> Reply {
    c.require(Permission::ManageProjects)?;
    admin::put_project(&*c.token_auth()?.store, &p.name, p.public).await?;
    c.changed(
        "project.add",
        &p.name,
        if p.public { "public" } else { "private" },
    )
    .await?;
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
    c.require(Permission::AdministerProject(&name))?;
    if !c.token_auth()?.model().projects.contains_key(&name) {
        return Err(ApiError::NotFound(format!("project {name} not found")));
    }
    admin::put_project(&*c.token_auth()?.store, &name, s.public).await?;
    c.changed(
        "project.update",
        &name,
        if s.public { "public" } else { "private" },
    )
    .await?;
    ok(json!({"name": name, "public": s.public}))
}

async fn remove_project(c: Caller, Path(name): Path<String>) -> Reply {
    c.require(Permission::ManageProjects)?;
    admin::delete_project(&*c.token_auth()?.store, &name).await?;
    c.changed("project.remove", &name, "").await?;
    ok(json!({}))
}

async fn list_members(c: Caller, Path(name): Path<String>) -> Reply {
    c.require(Permission::AdministerProject(&name))?;
    let model = c.token_auth()?.model();
    let mut members: Vec<Value> = model
        .members
        .iter()
        .filter(|((p, _), _)| *p == name)
        .map(|((_, u), r)| json!({"user": u, "role": r.as_str()}))
        .collect();
    members.sort_by(|a, b| a["user"].as_str().cmp(&b["user"].as_str()));
    ok(json!({ "members": members }))
}

async fn put_member(
    c: Caller,
    Path((name, user)): Path<(String, String)>,
    Json(r): Json<RoleBody>,
) -> Reply {
    c.require(Permission::AdministerProject(&name))?;
    admin::set_member(&*c.token_auth()?.store, &name, &user, &r.role).await?;
    c.changed("project.member", &format!("{name}/{user}"), &r.role)
        .await?;
    ok(json!({"user": user, "role": r.role}))
}

async fn remove_member(c: Caller, Path((name, user)): Path<(String, String)>) -> Reply {
    c.require(Permission::AdministerProject(&name))?;
    admin::remove_member(&*c.token_auth()?.store, &name, &user).await?;
    c.changed("project.member.remove", &format!("{name}/{user}"), "")
        .await?;
    ok(json!({}))
}

async fn list_robots(c: Caller) -> Reply {
    c.require(Permission::ManageUsers)?;
    let model = c.token_auth()?.model();
    let mut robots: Vec<Value> = model
        .robots
        .iter()
        .map(|(n, r)| json!({"name": n, "project": r.project, "actions": berth_auth::Action::join(&r.actions), "expires_at": r.expires_at}))
        .collect();
    robots.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    ok(json!({ "robots": robots }))
}

async fn create_robot(c: Caller, Json(r): Json<NewRobot>) -> Reply {
    c.require(Permission::AdministerProject(&r.project))?;
    let created = admin::add_robot(
        &*c.token_auth()?.store,
        &r.project,
        &r.name,
        &r.actions,
        r.expires_in_days,
    )
    .await?;
    c.changed("robot.add", &created.name, &r.actions).await?;
    // The secret is shown here once and never again.
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": created.name, "secret": created.secret})),
    ))
}

async fn remove_robot(c: Caller, Path(name): Path<String>) -> Reply {
    let project = c
        .token_auth()?
        .model()
        .robots
        .get(&name)
        .map(|r| r.project.clone());
    match &project {
        Some(p) => c.require(Permission::AdministerProject(p))?,
        None => c.require(Permission::ManageUsers)?,
    }
    admin::delete_robot(&*c.token_auth()?.store, &name).await?;
    c.changed("robot.remove", &name, "").await?;
    ok(json!({}))
}

async fn audit(c: Caller, Query(q): Query<AuditParams>) -> Reply {
    c.require(Permission::ReadAudit)?;
    let events = c
        .token_auth()?
        .store
        .query_audit(&AuditQuery {
            since_ms: q.since_ms,
            actor: q.actor,
            action: q.action,
            limit: q.limit.unwrap_or(100).min(10_000),
        })
        .await?;
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
    let project = repository.project();
    c.require(Permission::AdministerProject(project))?;
    let actor = berth_registry::Actor::new(c.access.principal.name(), c.access.client.clone());
    c.api
        .registry
        .delete_repository(&actor, &repository)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// A project's lifecycle policy (immutable tags, retention rules); `{}` when it has none.
async fn show_policy(c: Caller, Path(project): Path<String>) -> Reply {
    c.require(Permission::AdministerProject(&project))?;
    let policy = c.api.registry.project_policy(&project).await?;
    ok(serde_json::to_value(&*policy).unwrap_or_default())
}

/// Replaces a project's policy; lifting an immutability rule is putting the policy without
/// it.
async fn set_policy(c: Caller, Path(project): Path<String>, body: String) -> Reply {
    c.require(Permission::AdministerProject(&project))?;
    let policy = berth_registry::policy::Policy::parse(&body)
        .map_err(|e| ApiError::InvalidRequest(format!("not a valid policy: {e}")))?;
    // The quota bounds what a project may take from everyone's storage: a project admin
    // sets the rest of the policy, the registry's admins its quota.
    let current = c.api.registry.project_policy(&project).await?;
    if policy.quota_bytes != current.quota_bytes
        && !c.api.allows(&c.access, Permission::ManageProjects)
    {
        return Err(ApiError::Denied(
            "only registry admins may change a project's quota".into(),
        ));
    }
    c.api
        .registry
        .set_project_policy(&project, Some(&policy))
        .await?;
    let a = &c.access;
    c.api.audit.record(
        &a.principal.name(),
        "policy.set",
        &project,
        "ok",
        &a.client,
        &serde_json::to_string(&policy).unwrap_or_default(),
    );
    ok(serde_json::to_value(policy).unwrap_or_default())
}

async fn remove_policy(c: Caller, Path(project): Path<String>) -> Reply {
    c.require(Permission::AdministerProject(&project))?;
    if c.api
        .registry
        .project_policy(&project)
        .await?
        .quota_bytes
        .is_some()
    {
        // Removing the policy would lift the quota too.
        c.require(Permission::ManageProjects)?;
    }
    c.api.registry.set_project_policy(&project, None).await?;
    let a = &c.access;
    c.api.audit.record(
        &a.principal.name(),
        "policy.rm",
        &project,
        "ok",
        &a.client,
        "",
    );
    ok(json!({}))
}

/// Applies the project's retention now (`?dry_run=true`: only says what would go).
async fn run_retention(
    c: Caller,
    Path(project): Path<String>,
    Query(q): Query<RetentionParams>,
) -> Reply {
    c.require(Permission::AdministerProject(&project))?;
    let actor = berth_registry::Actor::new(c.access.principal.name(), c.access.client.clone());
    let report = c
        .api
        .registry
        .run_retention(&actor, &project, q.dry_run)
        .await?;
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
