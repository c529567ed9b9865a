//! The one authorization decision of every interface — registry API, token service, admin
//! API, and the web UI to come: may this caller, holding this credential, do this?
//!
//! The decision has two halves, both needed:
//! - **the credential's bound**: a bearer token allows only what its `access` claim names
//!   (`repository:<name>:<actions>`, `registry:catalog:*`, and `registry:admin:*` for every
//!   administrative permission); a password login or a session is bounded by nothing;
//! - **the caller's rights now**, from the access model: roles, visibility, the admin flag,
//!   robot scopes. An external issuer's subject has none: its token's claim is all it holds,
//!   and it can never administer anything.
//!
//! Pure and in memory; every row of the decision table is unit-tested below.

use std::collections::BTreeSet;

use crate::access::{Action, Principal};
use crate::policy::AccessModel;
use crate::token::Claims;

/// How a registry is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No authentication: everyone may do everything with repositories (`registry:2`'s
    /// default); there is no admin API.
    Open,
    /// Any valid htpasswd user may do everything with repositories (`registry:2`'s
    /// `REGISTRY_AUTH=htpasswd`); there is no admin API.
    Htpasswd,
    /// Users, projects, roles and robots.
    Token,
}

/// How the caller proved who they are.
#[derive(Clone, Copy, Debug)]
pub enum Credential<'a> {
    None,
    /// A password (Basic) or a session opened with one.
    Password,
    /// A bearer token and its verified claims.
    Token(&'a Claims),
}

/// What a request wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission<'a> {
    /// Just be identified (`GET /v2/`, how clients discover the auth scheme).
    Login,
    Repository(&'a str, Action),
    /// List repositories (each listed one is then checked with `ListRepository`).
    Catalog,
    /// Show this repository in the catalog: a catalog token lists what its subject may pull
    /// now; an external token lists only what it names.
    ListRepository(&'a str),
    /// Use the admin API at all: credentials meant for it.
    AdminApi,
    /// See a project (in the project list).
    ReadProject(&'a str),
    /// Change a project's settings, members and robots.
    AdministerProject(&'a str),
    /// Create and delete projects.
    ManageProjects,
    /// List, create and delete users; list all robots.
    ManageUsers,
    /// Change this user's password.
    ChangePassword(&'a str),
    ReadAudit,
    /// Operate the registry as a whole: switch read-only mode.
    OperateRegistry,
    /// See the registry's status (storage per project, activity, GC runs, backends): its
    /// operators — registry admins with token auth; with no administration (registry:2's
    /// modes), whoever may use the registry at all.
    ReadStatus,
}

impl Permission<'_> {
    /// Whether a token needs the admin scope for this.
    fn is_administrative(&self) -> bool {
        !matches!(
            self,
            Permission::Login
                | Permission::Repository(..)
                | Permission::Catalog
                | Permission::ListRepository(_)
                | Permission::ReadStatus
        )
    }
}

/// The decision, over the access model as it is now.
pub struct Authorizer<'a> {
    pub mode: Mode,
    pub model: &'a AccessModel,
}

impl Authorizer<'_> {
    pub fn allows(
        &self,
        principal: &Principal,
        credential: Credential<'_>,
        permission: Permission<'_>,
    ) -> bool {
        self.token_bounds(principal, credential, permission)
            && self.caller_may(principal, credential, permission)
    }

    /// The projects outside which `ListRepository` allows this caller nothing, or `None` when
    /// listing is not bounded by project. A listing reads only these projects' repositories,
    /// so a caller who sees two projects does not page through everyone's; each name it reads
    /// is still decided by [`Authorizer::allows`]. A superset is always correct, only slower.
    pub fn listable_projects(&self, principal: &Principal) -> Option<BTreeSet<String>> {
        if self.mode != Mode::Token {
            return None;
        }
        let public = || {
            self.model
                .projects
                .iter()
                .filter(|(_, public)| **public)
                .map(|(project, _)| project.clone())
        };
        let projects = match principal {
            Principal::User { admin: true, .. } | Principal::External { .. } => return None,
            Principal::Anonymous => public().collect(),
            Principal::User { name, .. } => public()
                .chain(
                    self.model
                        .members
                        .keys()
                        .filter(|(_, member)| member == name)
                        .map(|(project, _)| project.clone()),
                )
                .collect(),
            Principal::Robot { project, .. } => {
                public().chain(std::iter::once(project.clone())).collect()
            }
        };
        Some(projects)
    }

    /// The credential's half: what a token's claim lets it reach at all.
    fn token_bounds(
        &self,
        principal: &Principal,
        credential: Credential<'_>,
        permission: Permission<'_>,
    ) -> bool {
        let Credential::Token(claims) = credential else {
            return true;
        };
        if permission.is_administrative() {
            return !matches!(principal, Principal::External { .. })
                && claims.grants("registry", "admin", "*");
        }
        match permission {
            Permission::Login => true,
            Permission::ReadStatus => {
                !matches!(principal, Principal::External { .. })
                    && claims.grants("registry", "admin", "*")
            }
            Permission::Catalog => claims.grants("registry", "catalog", "*"),
            Permission::Repository(name, action) => {
                claims.grants("repository", name, action.as_str())
            }
            Permission::ListRepository(name) => match principal {
                Principal::External { .. } => claims.grants("repository", name, "pull"),
                _ => claims.grants("registry", "catalog", "*"),
            },
            _ => false,
        }
    }

    /// The caller's half: their rights in the model now.
    fn caller_may(
        &self,
        principal: &Principal,
        credential: Credential<'_>,
        permission: Permission<'_>,
    ) -> bool {
        let known = !principal.is_anonymous();
        match self.mode {
            Mode::Open => !permission.is_administrative(),
            Mode::Htpasswd => known && !permission.is_administrative(),
            Mode::Token => {
                let admin = matches!(principal, Principal::User { admin: true, .. });
                let external = matches!(principal, Principal::External { .. });
                let user = matches!(principal, Principal::User { .. });
                match permission {
                    // Anonymous callers are asked to log in (or to fetch an anonymous token).
                    Permission::Login => known || matches!(credential, Credential::Token(_)),
                    Permission::Catalog => known,
                    // An external subject's rights are its token's claim, checked above.
                    Permission::Repository(..) | Permission::ListRepository(_) if external => true,
                    Permission::Repository(name, action) => self.model.may(principal, name, action),
                    Permission::ListRepository(name) => {
                        self.model.may(principal, name, Action::Pull)
                    }
                    Permission::AdminApi => user,
                    Permission::ReadProject(project) => {
                        admin
                            || self.model.projects.get(project) == Some(&true)
                            || (user && self.model.role(project, &principal.name()).is_some())
                    }
                    Permission::AdministerProject(project) => {
                        self.model.may_administer(principal, project)
                    }
                    Permission::ChangePassword(name) => admin || (user && principal.name() == name),
                    Permission::ManageProjects
                    | Permission::ManageUsers
                    | Permission::ReadAudit
                    | Permission::OperateRegistry
                    | Permission::ReadStatus => admin,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Role;
    use crate::token::AccessEntry;

    fn model() -> AccessModel {
        let mut m = AccessModel::default();
        m.projects.insert("pub".into(), true);
        m.projects.insert("priv".into(), false);
        m.members
            .insert(("priv".into(), "dev".into()), Role::Developer);
        m.members
            .insert(("priv".into(), "boss".into()), Role::Admin);
        m
    }

    fn claims(access: &[(&str, &str, &[&str])]) -> Claims {
        Claims {
            iss: "berth".into(),
            sub: "x".into(),
            aud: "registry".into(),
            exp: u64::MAX,
            nbf: 0,
            iat: 0,
            jti: String::new(),
            access: access
                .iter()
                .map(|(kind, name, actions)| AccessEntry {
                    kind: (*kind).into(),
                    name: (*name).into(),
                    actions: actions.iter().map(|a| (*a).to_owned()).collect(),
                })
                .collect(),
        }
    }

    /// Every caller kind × credential × permission, as one table.
    #[test]
    fn the_decision_table() {
        let m = model();
        let token_mode = Authorizer {
            mode: Mode::Token,
            model: &m,
        };
        let anon = Principal::Anonymous;
        let admin = Principal::User {
            name: "root".into(),
            admin: true,
        };
        let dev = Principal::user("dev");
        let boss = Principal::user("boss");
        let outsider = Principal::user("eve");
        let robot = Principal::Robot {
            name: "robot$priv+ci".into(),
            project: "priv".into(),
            actions: vec![Action::Pull],
        };
        let external = Principal::External {
            issuer: "corp".into(),
            subject: "root".into(),
        };
        let pull_priv = claims(&[("repository", "priv/app", &["pull"])]);
        let admin_scope = claims(&[("registry", "admin", &["*"])]);
        let catalog_scope = claims(&[("registry", "catalog", &["*"])]);
        let none = claims(&[]);
        use Action::*;
        use Credential as C;
        use Permission as P;
        let rows: Vec<(&Principal, Credential<'_>, Permission<'_>, bool)> = vec![
            // Repositories: visibility and roles.
            (&anon, C::None, P::Repository("pub/app", Pull), true),
            (&anon, C::None, P::Repository("pub/app", Push), false),
            (&anon, C::None, P::Repository("priv/app", Pull), false),
            (
                &outsider,
                C::Password,
                P::Repository("priv/app", Pull),
                false,
            ),
            (&dev, C::Password, P::Repository("priv/app", Push), true),
            (&dev, C::Password, P::Repository("priv/app", Delete), false),
            (
                &admin,
                C::Password,
                P::Repository("any/thing", Delete),
                true,
            ),
            (&robot, C::Password, P::Repository("priv/app", Pull), true),
            (&robot, C::Password, P::Repository("priv/app", Push), false),
            // Tokens are bounded by their claim, and by the subject's rights now.
            (
                &dev,
                C::Token(&pull_priv),
                P::Repository("priv/app", Pull),
                true,
            ),
            (
                &dev,
                C::Token(&pull_priv),
                P::Repository("priv/app", Push),
                false,
            ),
            (
                &dev,
                C::Token(&pull_priv),
                P::Repository("priv/other", Pull),
                false,
            ),
            (
                &outsider,
                C::Token(&pull_priv),
                P::Repository("priv/app", Pull),
                false,
            ),
            (
                &admin,
                C::Token(&none),
                P::Repository("pub/app", Pull),
                false,
            ),
            // External subjects: their claim and nothing else.
            (
                &external,
                C::Token(&pull_priv),
                P::Repository("priv/app", Pull),
                true,
            ),
            (
                &external,
                C::Token(&none),
                P::Repository("pub/app", Pull),
                false,
            ),
            (&external, C::Token(&admin_scope), P::ManageUsers, false),
            (&external, C::Token(&admin_scope), P::AdminApi, false),
            // The catalog.
            (&anon, C::None, P::Catalog, false),
            (&dev, C::Password, P::Catalog, true),
            (&dev, C::Token(&pull_priv), P::Catalog, false),
            (&dev, C::Token(&catalog_scope), P::Catalog, true),
            (&dev, C::Password, P::ListRepository("priv/app"), true),
            (&outsider, C::Password, P::ListRepository("priv/app"), false),
            (
                &dev,
                C::Token(&catalog_scope),
                P::ListRepository("priv/app"),
                true,
            ),
            (
                &dev,
                C::Token(&pull_priv),
                P::ListRepository("priv/app"),
                false,
            ),
            (
                &external,
                C::Token(&pull_priv),
                P::ListRepository("priv/app"),
                true,
            ),
            (
                &external,
                C::Token(&catalog_scope),
                P::ListRepository("priv/app"),
                false,
            ),
            // The admin API: credentials meant for it, then the caller's own rights.
            (&anon, C::None, P::AdminApi, false),
            (&dev, C::Password, P::AdminApi, true),
            (&robot, C::Password, P::AdminApi, false),
            (&admin, C::Token(&pull_priv), P::AdminApi, false),
            (&admin, C::Token(&pull_priv), P::ManageUsers, false),
            (&admin, C::Token(&admin_scope), P::ManageUsers, true),
            (&dev, C::Token(&admin_scope), P::ManageUsers, false),
            (&admin, C::Password, P::ManageProjects, true),
            (&boss, C::Password, P::ManageProjects, false),
            (&boss, C::Password, P::AdministerProject("priv"), true),
            (&dev, C::Password, P::AdministerProject("priv"), false),
            (&boss, C::Password, P::AdministerProject("pub"), false),
            (&admin, C::Password, P::AdministerProject("priv"), true),
            (&robot, C::Password, P::AdministerProject("priv"), false),
            (&dev, C::Password, P::ReadProject("priv"), true),
            (&outsider, C::Password, P::ReadProject("priv"), false),
            (&outsider, C::Password, P::ReadProject("pub"), true),
            (&dev, C::Password, P::ChangePassword("dev"), true),
            (&dev, C::Password, P::ChangePassword("boss"), false),
            (&admin, C::Password, P::ChangePassword("dev"), true),
            (&dev, C::Token(&pull_priv), P::ChangePassword("dev"), false),
            (&admin, C::Password, P::ReadAudit, true),
            (&boss, C::Password, P::ReadAudit, false),
            (&admin, C::Password, P::OperateRegistry, true),
            (&admin, C::Token(&pull_priv), P::OperateRegistry, false),
            (&boss, C::Password, P::OperateRegistry, false),
            (&admin, C::Password, P::ReadStatus, true),
            (&admin, C::Token(&admin_scope), P::ReadStatus, true),
            (&admin, C::Token(&catalog_scope), P::ReadStatus, false),
            (&boss, C::Password, P::ReadStatus, false),
            (&anon, C::None, P::ReadStatus, false),
            (&anon, C::None, P::Login, false),
            (&anon, C::Token(&none), P::Login, true),
            (&dev, C::Password, P::Login, true),
        ];
        for (principal, credential, permission, expected) in rows {
            assert_eq!(
                token_mode.allows(principal, credential, permission),
                expected,
                "token mode: {principal:?} with {credential:?} → {permission:?}"
            );
        }

        // Listing reads only the projects the caller could see a repository of.
        let names = ["pub", "pub/app", "priv/app", "priv/a/b", "other/x", "solo"];
        for principal in [&anon, &admin, &dev, &boss, &outsider, &robot, &external] {
            let Some(projects) = token_mode.listable_projects(principal) else {
                assert!(matches!(
                    principal,
                    Principal::User { admin: true, .. } | Principal::External { .. }
                ));
                continue;
            };
            for name in names {
                let credential = if principal.is_anonymous() {
                    C::None
                } else {
                    C::Password
                };
                if token_mode.allows(principal, credential, P::ListRepository(name)) {
                    let project = name.split('/').next().unwrap_or(name);
                    assert!(projects.contains(project), "{principal:?} lists {name}");
                }
            }
        }
        let listable = |p: &Principal| {
            token_mode
                .listable_projects(p)
                .map(|s| s.into_iter().collect::<Vec<_>>())
        };
        assert_eq!(listable(&anon), Some(vec!["pub".to_owned()]));
        assert_eq!(
            listable(&dev),
            Some(vec!["priv".to_owned(), "pub".to_owned()])
        );
        assert_eq!(listable(&outsider), Some(vec!["pub".to_owned()]));
        assert_eq!(
            listable(&robot),
            Some(vec!["priv".to_owned(), "pub".to_owned()])
        );

        // registry:2 modes: repositories for everyone (open) or every user (htpasswd); no
        // administration at all.
        for (mode, anon_may) in [(Mode::Open, true), (Mode::Htpasswd, false)] {
            let a = Authorizer { mode, model: &m };
            assert_eq!(
                a.allows(&anon, C::None, P::Repository("x/y", Push)),
                anon_may,
                "{mode:?}"
            );
            assert!(a.allows(&dev, C::Password, P::Repository("x/y", Delete)));
            assert!(!a.allows(&admin, C::Password, P::ManageUsers), "{mode:?}");
            assert_eq!(
                a.allows(&anon, C::None, P::ReadStatus),
                anon_may,
                "{mode:?}"
            );
            assert!(a.allows(&dev, C::Password, P::ReadStatus), "{mode:?}");
            assert_eq!(a.listable_projects(&anon), None, "{mode:?}");
        }
    }
}
