//! Projects (token auth): the list, a project's settings — visibility, members and roles,
//! robot accounts (the secret shown once), its lifecycle policy with the quota — and a
//! dry-run preview of its retention. Each change is one `manage` call.

use askama::Template;
use axum::extract::Path;
use axum::response::{IntoResponse, Redirect, Response};
use berth_auth::Permission;
use berth_registry::policy::Policy;
use http::StatusCode;

use crate::format;
use crate::i18n::Catalog;
use crate::pages::{message_page, render, Chrome};
use crate::{Caller, Form};

struct ProjectRow {
    name: String,
    public: bool,
    usage: String,
    quota: String,
}

#[derive(Template)]
#[template(path = "projects.html")]
struct ListPage {
    c: Chrome,
    rows: Vec<ProjectRow>,
    can_create: bool,
}

/// Usage and quota of a project, formatted (`""` quota when it has none).
async fn usage_of(caller: &Caller, project: &str) -> (String, String, u64, Option<u64>) {
    match caller.api.registry.project_usage(project).await {
        Ok((usage, quota)) => (
            format::bytes(usage.bytes),
            quota.map(format::bytes).unwrap_or_default(),
            usage.bytes,
            quota,
        ),
        Err(_) => (String::new(), String::new(), 0, None),
    }
}

pub async fn list(caller: Caller) -> Response {
    if caller.api.token_auth().is_err() {
        return message_page(
            &caller,
            StatusCode::NOT_FOUND,
            caller.t.get("projects.none_without_token_auth"),
        );
    }
    let mut rows = Vec::new();
    for (name, public) in caller.api.visible_projects(&caller.access) {
        let (usage, quota, _, _) = usage_of(&caller, &name).await;
        rows.push(ProjectRow {
            name,
            public,
            usage,
            quota,
        });
    }
    let page = ListPage {
        c: Chrome::new(&caller, caller.t.get("projects.title"), "projects"),
        rows,
        can_create: caller.allows(Permission::ManageProjects),
    };
    render(StatusCode::OK, &page)
}

pub async fn create(caller: Caller, body: axum::body::Bytes) -> Response {
    let form = Form::parse(&body);
    if let Some(refused) = caller.forged(form.token()) {
        return refused;
    }
    let name = form.get("name").unwrap_or("").trim().to_owned();
    let public = form.get("public") == Some("on");
    match caller
        .api
        .create_project(&caller.access, &name, public)
        .await
    {
        Ok(()) => Redirect::to(&format!("/ui/projects/{name}")).into_response(),
        Err(e) => caller.failed(e),
    }
}

struct MemberRow {
    user: String,
    /// The role in the reader's language.
    role: String,
}

/// Role names are the access model's words (`guest`, …, as the CLI and the admin API take
/// them); the page shows them in the reader's language.
fn role_label(t: &Catalog, role: &str) -> String {
    match role {
        "guest" => t.get("role.guest"),
        "developer" => t.get("role.developer"),
        "maintainer" => t.get("role.maintainer"),
        "admin" => t.get("role.admin"),
        other => other,
    }
    .to_owned()
}

struct RobotRow {
    name: String,
    actions: String,
    expires: String,
}

#[derive(Template)]
#[template(path = "project.html")]
struct ProjectPage {
    c: Chrome,
    name: String,
    public: bool,
    usage: String,
    quota: String,
    /// Usage as a share of the quota, 0–100, for the meter.
    quota_percent: u64,
    administer: bool,
    members: Vec<MemberRow>,
    robots: Vec<RobotRow>,
    policy: String,
    /// A robot just created: its login and its secret, shown this once (empty otherwise).
    robot_login: String,
    robot_secret: String,
    /// The roles a member may be given, as (value, label).
    roles: Vec<(&'static str, String)>,
}

async fn project_page(
    caller: &Caller,
    name: &str,
    created_robot: Option<(String, String)>,
) -> Response {
    let Some((_, public)) = caller
        .api
        .visible_projects(&caller.access)
        .into_iter()
        .find(|(p, _)| p == name)
    else {
        if !caller.signed_in() && caller.api.has_accounts() {
            return caller.refuse();
        }
        return message_page(
            caller,
            StatusCode::NOT_FOUND,
            caller.t.get("error.not_found"),
        );
    };
    let administer = caller.allows(Permission::AdministerProject(name));
    let (usage, quota, used, limit) = usage_of(caller, name).await;
    let (members, robots, policy) = if administer {
        let members = caller
            .api
            .project_members(&caller.access, name)
            .unwrap_or_default()
            .into_iter()
            .map(|(user, role)| MemberRow {
                user,
                role: role_label(caller.t, role.as_str()),
            })
            .collect();
        let robots = caller
            .api
            .robots(&caller.access, Some(name))
            .unwrap_or_default()
            .into_iter()
            .map(|r| RobotRow {
                name: r.name,
                actions: r.actions,
                expires: r.expires_at.map(format::time).unwrap_or_default(),
            })
            .collect();
        let policy = match caller.api.policy(&caller.access, name).await {
            Ok(p) => serde_json::to_string_pretty(&p).unwrap_or_default(),
            Err(e) => return caller.failed(e),
        };
        (members, robots, policy)
    } else {
        (Vec::new(), Vec::new(), String::new())
    };
    let page = ProjectPage {
        c: Chrome::new(caller, name.to_owned(), "projects"),
        name: name.to_owned(),
        public,
        usage,
        quota,
        quota_percent: limit
            .filter(|l| *l > 0)
            .map(|l| (used.saturating_mul(100) / l).min(100))
            .unwrap_or(0),
        administer,
        members,
        robots,
        policy,
        robot_login: created_robot
            .as_ref()
            .map(|r| r.0.clone())
            .unwrap_or_default(),
        robot_secret: created_robot.map(|r| r.1).unwrap_or_default(),
        roles: ["guest", "developer", "maintainer", "admin"]
            .into_iter()
            .map(|r| (r, role_label(caller.t, r)))
            .collect(),
    };
    let status = if !page.robot_login.is_empty() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    render(status, &page)
}

pub async fn show(caller: Caller, Path(name): Path<String>) -> Response {
    project_page(&caller, &name, None).await
}

/// `POST /ui/projects/<name>/<action>`.
pub async fn change(
    caller: Caller,
    Path((name, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let form = Form::parse(&body);
    if let Some(refused) = caller.forged(form.token()) {
        return refused;
    }
    let field = |k: &str| form.get(k).unwrap_or("").trim().to_owned();
    let api = &caller.api;
    let who = &caller.access;
    let done = match action.as_str() {
        "visibility" => {
            api.set_project_visibility(who, &name, field("public") == "on")
                .await
        }
        "member" => {
            api.set_member(who, &name, &field("user"), &field("role"))
                .await
        }
        "member-remove" => api.remove_member(who, &name, &field("user")).await,
        "robot" => {
            let days = field("expires_in_days")
                .parse::<u32>()
                .ok()
                .filter(|d| *d > 0);
            let actions: Vec<&str> = ["pull", "push", "delete"]
                .into_iter()
                .filter(|a| form.get(a) == Some("on"))
                .collect();
            match api
                .create_robot(who, &name, &field("name"), &actions.join(","), days)
                .await
            {
                // The secret is on this response only: never in a redirect's URL.
                Ok(created) => {
                    return project_page(&caller, &name, Some((created.name, created.secret))).await
                }
                Err(e) => Err(e),
            }
        }
        "robot-remove" => api.remove_robot(who, &field("robot")).await,
        "policy" => match Policy::parse(&field("policy")) {
            Ok(policy) => api.set_policy(who, &name, &policy).await,
            Err(e) => {
                let message = caller.t.with("projects.policy_invalid", e);
                return message_page(&caller, StatusCode::BAD_REQUEST, &message);
            }
        },
        "policy-remove" => api.remove_policy(who, &name).await,
        _ => {
            return message_page(
                &caller,
                StatusCode::NOT_FOUND,
                caller.t.get("error.not_found"),
            );
        }
    };
    match done {
        Ok(()) => Redirect::to(&format!("/ui/projects/{name}")).into_response(),
        Err(e) => caller.failed(e),
    }
}

struct DeletionRow {
    repository: String,
    digest: String,
    short: String,
    tags: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "retention.html")]
struct RetentionPage {
    c: Chrome,
    name: String,
    rows: Vec<DeletionRow>,
    freed: String,
}

/// What retention would delete now (a dry run: nothing changes).
pub async fn retention(caller: Caller, Path(name): Path<String>) -> Response {
    let report = match caller.api.retention(&caller.access, &name, true).await {
        Ok(r) => r,
        Err(e) => return caller.failed(e),
    };
    let rows = report
        .plan
        .deletions
        .iter()
        .map(|d| DeletionRow {
            repository: d.repository.clone(),
            digest: d.digest.clone(),
            short: format::short_digest(&d.digest),
            tags: d.tags.join(", "),
            reason: d.reason.clone(),
        })
        .collect();
    let page = RetentionPage {
        c: Chrome::new(&caller, caller.t.get("retention.title"), "projects"),
        name,
        rows,
        freed: format::bytes(report.plan.bytes_freed),
    };
    render(StatusCode::OK, &page)
}
