//! Changes to the access model, shared by the CLI (`berth user|project|robot`) and the admin
//! HTTP API: validation, password hashing and robot secret generation live here once.

use base64::Engine;
use berth_meta::{AccessStore, Member, MetaError, Project, Robot, User};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::access::{Action, Role};
use crate::htpasswd::{hash_password, HtpasswdError, DEFAULT_COST};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] MetaError),
    #[error(transparent)]
    Hash(#[from] HtpasswdError),
}

fn valid_name(kind: &str, name: &str) -> Result<(), AdminError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(AdminError::Invalid(format!(
            "{kind} name {name:?} must be 1-64 of [a-z0-9._-], starting with a letter or digit"
        )))
    }
}

fn valid_password(password: &str) -> Result<(), AdminError> {
    if password.len() < 8 {
        return Err(AdminError::Invalid(
            "passwords need at least 8 characters".into(),
        ));
    }
    Ok(())
}

pub async fn put_user(
    store: &dyn AccessStore,
    name: &str,
    password: &str,
    admin: bool,
) -> Result<(), AdminError> {
    valid_name("user", name)?;
    valid_password(password)?;
    let (n, p) = (name.to_owned(), password.to_owned());
    let hash = tokio::task::spawn_blocking(move || hash_password(&n, &p, DEFAULT_COST))
        .await
        .map_err(|e| AdminError::Invalid(e.to_string()))??;
    store
        .put_user(&User {
            name: name.to_owned(),
            password_hash: hash,
            admin,
            created_at: berth_meta::now(),
        })
        .await?;
    Ok(())
}

/// Changes a password, keeping the admin flag.
pub async fn set_password(
    store: &dyn AccessStore,
    name: &str,
    password: &str,
) -> Result<(), AdminError> {
    let snapshot = store.access_snapshot().await?;
    let user = snapshot
        .users
        .iter()
        .find(|u| u.name == name)
        .ok_or_else(|| AdminError::NotFound(format!("user {name}")))?;
    put_user(store, name, password, user.admin).await
}

pub async fn delete_user(store: &dyn AccessStore, name: &str) -> Result<(), AdminError> {
    if store.delete_user(name).await? {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!("user {name}")))
    }
}

pub async fn put_project(
    store: &dyn AccessStore,
    name: &str,
    public: bool,
) -> Result<(), AdminError> {
    if name.parse::<berth_oci::RepositoryName>().is_err() || name.contains('/') {
        return Err(AdminError::Invalid(format!(
            "project name {name:?} must be one repository name segment"
        )));
    }
    store
        .put_project(&Project {
            name: name.to_owned(),
            public,
            created_at: berth_meta::now(),
        })
        .await?;
    Ok(())
}

pub async fn delete_project(store: &dyn AccessStore, name: &str) -> Result<(), AdminError> {
    if store.delete_project(name).await? {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!("project {name}")))
    }
}

async fn require_project(store: &dyn AccessStore, project: &str) -> Result<(), AdminError> {
    let s = store.access_snapshot().await?;
    if s.projects.iter().any(|p| p.name == project) {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!("project {project}")))
    }
}

pub async fn set_member(
    store: &dyn AccessStore,
    project: &str,
    user: &str,
    role: &str,
) -> Result<(), AdminError> {
    let role = Role::parse(role).ok_or_else(|| {
        AdminError::Invalid(format!(
            "role {role:?} is not guest, developer, maintainer or admin"
        ))
    })?;
    require_project(store, project).await?;
    store
        .set_member(&Member {
            project: project.to_owned(),
            username: user.to_owned(),
            role: role.as_str().to_owned(),
        })
        .await?;
    Ok(())
}

pub async fn remove_member(
    store: &dyn AccessStore,
    project: &str,
    user: &str,
) -> Result<(), AdminError> {
    if store.remove_member(project, user).await? {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!("member {user} of {project}")))
    }
}

/// A new robot's login name and its secret, which is never stored nor shown again.
pub struct NewRobot {
    pub name: String,
    pub secret: String,
}

pub fn robot_login(project: &str, name: &str) -> String {
    format!("robot${project}+{name}")
}

pub async fn add_robot(
    store: &dyn AccessStore,
    project: &str,
    name: &str,
    actions: &str,
    expires_in_days: Option<u32>,
) -> Result<NewRobot, AdminError> {
    valid_name("robot", name)?;
    let actions = Action::parse_list(actions)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            AdminError::Invalid(format!(
                "actions {actions:?} must be a list of pull, push, delete"
            ))
        })?;
    require_project(store, project).await?;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let login = robot_login(project, name);
    let now = berth_meta::now();
    store
        .add_robot(&Robot {
            name: login.clone(),
            secret_hash: hex::encode(Sha256::digest(secret.as_bytes())),
            project: project.to_owned(),
            actions: Action::join(&actions),
            expires_at: expires_in_days.map(|d| now + i64::from(d) * 86_400),
            created_at: now,
        })
        .await
        .map_err(|e| match e {
            MetaError::Conflict(_) => AdminError::Invalid(format!("robot {login} exists already")),
            other => other.into(),
        })?;
    Ok(NewRobot {
        name: login,
        secret,
    })
}

pub async fn delete_robot(store: &dyn AccessStore, name: &str) -> Result<(), AdminError> {
    if store.delete_robot(name).await? {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!("robot {name}")))
    }
}
