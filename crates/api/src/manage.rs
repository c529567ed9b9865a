//! Managing the registry on a caller's behalf: projects, members, robots, policies,
//! retention, repository deletion and the audit log. The admin API and the web UI are both
//! thin callers of these methods, so each rule — who may, what is audited, when the access
//! model reloads — is written once. Every method asks the authorizer first.

use berth_auth::admin::{self, AdminError};
use berth_auth::{Permission, Role};
use berth_meta::{AuditEvent, AuditQuery, DailyActivity};
use berth_oci::{Reference, RepositoryName};
use berth_registry::policy::Policy;
use berth_registry::retention::RetentionReport;

use crate::access::{Access, Authenticator, TokenAuth};
use crate::error::ApiError;
use crate::Api;

/// A robot account as a project's page lists it.
#[derive(Clone, Debug)]
pub struct RobotInfo {
    pub name: String,
    pub project: String,
    pub actions: String,
    pub expires_at: Option<i64>,
}

/// A robot just created; its secret is shown this once.
pub struct CreatedRobot {
    pub name: String,
    pub secret: String,
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

impl Api {
    /// Asks the authorizer; a refusal says who may do this instead.
    pub fn require(&self, caller: &Access, permission: Permission<'_>) -> Result<(), ApiError> {
        if self.allows(caller, permission) {
            return Ok(());
        }
        Err(ApiError::Denied(match permission {
            Permission::AdministerProject(project) => {
                format!("only admins of project {project} may do this")
            }
            Permission::ChangePassword(user) => {
                format!("only {user} or a registry admin may change this password")
            }
            Permission::Repository(name, action) => {
                format!(
                    "{} may not {} {name}",
                    caller.principal.name(),
                    action.as_str()
                )
            }
            _ => "only registry admins may do this".into(),
        }))
    }

    /// The users, projects and robots model; only token auth has one.
    pub fn token_auth(&self) -> Result<&TokenAuth, ApiError> {
        match &self.auth {
            Authenticator::Token(t) => Ok(t),
            _ => Err(ApiError::NoRoute),
        }
    }

    /// Records a change in the audit log.
    pub fn audited(&self, caller: &Access, action: &str, resource: &str, detail: &str) {
        self.audit.record(
            &caller.principal.name(),
            action,
            resource,
            "ok",
            &caller.client,
            detail,
        );
    }

    /// An access change: audit it, then reload the model so it holds from the next request.
    pub async fn access_changed(
        &self,
        caller: &Access,
        action: &str,
        resource: &str,
        detail: &str,
    ) -> Result<(), ApiError> {
        self.audited(caller, action, resource, detail);
        self.token_auth()?.refresh().await?;
        Ok(())
    }

    /// Projects the caller may see, by name, with whether each is public.
    pub fn visible_projects(&self, caller: &Access) -> Vec<(String, bool)> {
        let Ok(t) = self.token_auth() else {
            return Vec::new();
        };
        let mut projects: Vec<(String, bool)> = t
            .model()
            .projects
            .iter()
            .filter(|(name, _)| self.allows(caller, Permission::ReadProject(name)))
            .map(|(name, public)| (name.clone(), *public))
            .collect();
        projects.sort();
        projects
    }

    /// A project's members and their roles, by user name.
    pub fn project_members(
        &self,
        caller: &Access,
        project: &str,
    ) -> Result<Vec<(String, Role)>, ApiError> {
        self.require(caller, Permission::AdministerProject(project))?;
        let mut members: Vec<(String, Role)> = self
            .token_auth()?
            .model()
            .members
            .iter()
            .filter(|((p, _), _)| p == project)
            .map(|((_, u), r)| (u.clone(), *r))
            .collect();
        members.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(members)
    }

    /// Robot accounts of `project`, or of every project when `None` (registry admins).
    pub fn robots(
        &self,
        caller: &Access,
        project: Option<&str>,
    ) -> Result<Vec<RobotInfo>, ApiError> {
        match project {
            Some(p) => self.require(caller, Permission::AdministerProject(p))?,
            None => self.require(caller, Permission::ManageUsers)?,
        }
        let mut robots: Vec<RobotInfo> = self
            .token_auth()?
            .model()
            .robots
            .iter()
            .filter(|(_, r)| project.is_none_or(|p| r.project == p))
            .map(|(n, r)| RobotInfo {
                name: n.clone(),
                project: r.project.clone(),
                actions: berth_auth::Action::join(&r.actions),
                expires_at: r.expires_at,
            })
            .collect();
        robots.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(robots)
    }

    pub async fn create_project(
        &self,
        caller: &Access,
        name: &str,
        public: bool,
    ) -> Result<(), ApiError> {
        self.require(caller, Permission::ManageProjects)?;
        admin::put_project(&*self.token_auth()?.store, name, public).await?;
        let detail = if public { "public" } else { "private" };
        self.access_changed(caller, "project.add", name, detail)
            .await
    }

    pub async fn set_project_visibility(
        &self,
        caller: &Access,
        name: &str,
        public: bool,
    ) -> Result<(), ApiError> {
        self.require(caller, Permission::AdministerProject(name))?;
        let t = self.token_auth()?;
        if !t.model().projects.contains_key(name) {
            return Err(ApiError::NotFound(format!("project {name} not found")));
        }
        admin::put_project(&*t.store, name, public).await?;
        let detail = if public { "public" } else { "private" };
        self.access_changed(caller, "project.update", name, detail)
            .await
    }

    pub async fn remove_project(&self, caller: &Access, name: &str) -> Result<(), ApiError> {
        self.require(caller, Permission::ManageProjects)?;
        admin::delete_project(&*self.token_auth()?.store, name).await?;
        self.access_changed(caller, "project.remove", name, "")
            .await
    }

    pub async fn set_member(
        &self,
        caller: &Access,
        project: &str,
        user: &str,
        role: &str,
    ) -> Result<(), ApiError> {
        self.require(caller, Permission::AdministerProject(project))?;
        admin::set_member(&*self.token_auth()?.store, project, user, role).await?;
        self.access_changed(caller, "project.member", &format!("{project}/{user}"), role)
            .await
    }

    pub async fn remove_member(
        &self,
        caller: &Access,
        project: &str,
        user: &str,
    ) -> Result<(), ApiError> {
        self.require(caller, Permission::AdministerProject(project))?;
        admin::remove_member(&*self.token_auth()?.store, project, user).await?;
        self.access_changed(
            caller,
            "project.member.remove",
            &format!("{project}/{user}"),
            "",
        )
        .await
    }

    pub async fn create_robot(
        &self,
        caller: &Access,
        project: &str,
        name: &str,
        actions: &str,
        expires_in_days: Option<u32>,
    ) -> Result<CreatedRobot, ApiError> {
        self.require(caller, Permission::AdministerProject(project))?;
        let created = admin::add_robot(
            &*self.token_auth()?.store,
            project,
            name,
            actions,
            expires_in_days,
        )
        .await?;
        self.access_changed(caller, "robot.add", &created.name, actions)
            .await?;
        Ok(CreatedRobot {
            name: created.name,
            secret: created.secret,
        })
    }

    /// Deletes a robot: its project's admins may, or registry admins for any.
    pub async fn remove_robot(&self, caller: &Access, name: &str) -> Result<(), ApiError> {
        let t = self.token_auth()?;
        let project = t.model().robots.get(name).map(|r| r.project.clone());
        match &project {
            Some(p) => self.require(caller, Permission::AdministerProject(p))?,
            None => self.require(caller, Permission::ManageUsers)?,
        }
        admin::delete_robot(&*t.store, name).await?;
        self.access_changed(caller, "robot.remove", name, "").await
    }

    /// A project's lifecycle policy (empty when it has none).
    pub async fn policy(&self, caller: &Access, project: &str) -> Result<Policy, ApiError> {
        self.require(caller, Permission::AdministerProject(project))?;
        Ok((*self.registry.project_policy(project).await?).clone())
    }

    /// Replaces a project's policy. Project admins set the rules, registry admins the quota:
    /// it bounds what a project may take from everyone's storage.
    pub async fn set_policy(
        &self,
        caller: &Access,
        project: &str,
        policy: &Policy,
    ) -> Result<(), ApiError> {
        self.require(caller, Permission::AdministerProject(project))?;
        let current = self.registry.project_policy(project).await?;
        if policy.quota_bytes != current.quota_bytes
            && !self.allows(caller, Permission::ManageProjects)
        {
            return Err(ApiError::Denied(
                "only registry admins may change a project's quota".into(),
            ));
        }
        self.registry
            .set_project_policy(project, Some(policy))
            .await?;
        let detail = serde_json::to_string(policy).unwrap_or_default();
        self.audited(caller, "policy.set", project, &detail);
        Ok(())
    }

    pub async fn remove_policy(&self, caller: &Access, project: &str) -> Result<(), ApiError> {
        self.require(caller, Permission::AdministerProject(project))?;
        if self
            .registry
            .project_policy(project)
            .await?
            .quota_bytes
            .is_some()
        {
            // Removing the policy would lift the quota too.
            self.require(caller, Permission::ManageProjects)?;
        }
        self.registry.set_project_policy(project, None).await?;
        self.audited(caller, "policy.rm", project, "");
        Ok(())
    }

    /// Applies the project's retention now, or only says what would go (`dry_run`).
    pub async fn retention(
        &self,
        caller: &Access,
        project: &str,
        dry_run: bool,
    ) -> Result<RetentionReport, ApiError> {
        self.require(caller, Permission::AdministerProject(project))?;
        Ok(self
            .registry
            .run_retention(&caller.actor(), project, dry_run)
            .await?)
    }

    /// Deletes a tag (untags) or a manifest (by digest): what a registry client with delete
    /// rights on the repository may do.
    pub async fn delete_reference(
        &self,
        caller: &Access,
        repository: &RepositoryName,
        reference: &Reference,
    ) -> Result<(), ApiError> {
        self.require(
            caller,
            Permission::Repository(repository.as_str(), berth_auth::Action::Delete),
        )?;
        Ok(self
            .registry
            .delete_manifest(&caller.actor(), repository, reference)
            .await?)
    }

    /// Deletes a whole repository (tags, manifests, blob links); its bytes go with the next
    /// collection. Project admins may delete their project's repositories.
    pub async fn delete_repository(
        &self,
        caller: &Access,
        repository: &RepositoryName,
    ) -> Result<(), ApiError> {
        self.require(caller, Permission::AdministerProject(repository.project()))?;
        Ok(self
            .registry
            .delete_repository(&caller.actor(), repository)
            .await?)
    }

    /// Audit events, newest first (registry admins).
    pub async fn audit_events(
        &self,
        caller: &Access,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEvent>, ApiError> {
        self.require(caller, Permission::ReadAudit)?;
        Ok(self.access_store.query_audit(query).await?)
    }

    /// Pushes and pulls per day since `since_ms`, from the audit log (what it still holds).
    pub async fn activity(&self, since_ms: i64) -> Result<Vec<DailyActivity>, ApiError> {
        Ok(self.access_store.audit_activity(since_ms).await?)
    }
}
