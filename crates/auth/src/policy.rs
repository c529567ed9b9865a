//! The authorization decision: given the access model (users, projects, members, robots),
//! may this caller do this to that repository? Pure and in memory; the server reloads the
//! model when the store's generation changes.

use std::collections::HashMap;

use berth_meta::AccessSnapshot;

use crate::access::{Action, Principal, Role};

pub use berth_oci::name::project_of;

#[derive(Clone, Debug)]
pub struct StoredUser {
    pub password_hash: String,
    pub admin: bool,
}

#[derive(Clone, Debug)]
pub struct StoredRobot {
    pub secret_hash: String,
    pub project: String,
    pub actions: Vec<Action>,
    pub expires_at: Option<i64>,
}

/// An in-memory copy of the access tables.
#[derive(Clone, Debug, Default)]
pub struct AccessModel {
    pub generation: i64,
    pub users: HashMap<String, StoredUser>,
    /// Project name → public.
    pub projects: HashMap<String, bool>,
    /// (project, user) → role.
    pub members: HashMap<(String, String), Role>,
    pub robots: HashMap<String, StoredRobot>,
}

impl AccessModel {
    pub fn from_snapshot(s: AccessSnapshot) -> AccessModel {
        AccessModel {
            generation: s.generation,
            users: s
                .users
                .into_iter()
                .map(|u| {
                    (
                        u.name,
                        StoredUser {
                            password_hash: u.password_hash,
                            admin: u.admin,
                        },
                    )
                })
                .collect(),
            projects: s.projects.into_iter().map(|p| (p.name, p.public)).collect(),
            members: s
                .members
                .into_iter()
                .filter_map(|m| Role::parse(&m.role).map(|r| ((m.project, m.username), r)))
                .collect(),
            robots: s
                .robots
                .into_iter()
                .map(|r| {
                    let actions = Action::parse_list(&r.actions).unwrap_or_default();
                    (
                        r.name,
                        StoredRobot {
                            secret_hash: r.secret_hash,
                            project: r.project,
                            actions,
                            expires_at: r.expires_at,
                        },
                    )
                })
                .collect(),
        }
    }

    pub fn role(&self, project: &str, user: &str) -> Option<Role> {
        self.members
            .get(&(project.to_owned(), user.to_owned()))
            .copied()
    }

    /// May `principal` do `action` on `repository`?
    pub fn may(&self, principal: &Principal, repository: &str, action: Action) -> bool {
        let project = project_of(repository);
        match principal {
            Principal::User { admin: true, .. } => true,
            // Worth its token's claim only, which the caller checks; nothing here.
            Principal::External { .. } => false,
            _ if !self.projects.contains_key(project) => false,
            Principal::Anonymous => action == Action::Pull && self.projects[project],
            Principal::User { name, .. } => {
                (action == Action::Pull && self.projects[project])
                    || self.role(project, name).is_some_and(|r| r.allows(action))
            }
            Principal::Robot {
                project: own,
                actions,
                ..
            } => {
                (own == project && actions.contains(&action))
                    || (action == Action::Pull && self.projects[project])
            }
        }
    }

    /// May `principal` manage members and settings of `project`?
    pub fn may_administer(&self, principal: &Principal, project: &str) -> bool {
        match principal {
            Principal::User { admin: true, .. } => true,
            Principal::User { name, .. } => self.role(project, name) == Some(Role::Admin),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> AccessModel {
        let mut m = AccessModel::default();
        m.projects.insert("pub".into(), true);
        m.projects.insert("priv".into(), false);
        for (user, role) in [
            ("g", Role::Guest),
            ("d", Role::Developer),
            ("m", Role::Maintainer),
            ("a", Role::Admin),
        ] {
            m.members.insert(("priv".into(), user.into()), role);
        }
        m
    }

    #[test]
    fn roles_and_visibility() {
        let m = model();
        let anon = Principal::Anonymous;
        assert!(m.may(&anon, "pub/app", Action::Pull));
        assert!(!m.may(&anon, "pub/app", Action::Push));
        assert!(!m.may(&anon, "priv/app", Action::Pull));
        assert!(!m.may(&anon, "nosuch/app", Action::Pull));
        let expect = [
            ("g", [true, false, false]),
            ("d", [true, true, false]),
            ("m", [true, true, true]),
            ("a", [true, true, true]),
        ];
        for (user, allowed) in expect {
            for (action, ok) in Action::ALL.iter().zip(allowed) {
                assert_eq!(
                    m.may(&Principal::user(user), "priv/x/y", *action),
                    ok,
                    "{user} {action:?}"
                );
            }
        }
        let outsider = Principal::user("o");
        assert!(m.may(&outsider, "pub/app", Action::Pull));
        assert!(!m.may(&outsider, "priv/app", Action::Pull));
        let admin = Principal::User {
            name: "root".into(),
            admin: true,
        };
        assert!(m.may(&admin, "anything/at/all", Action::Delete));
        assert!(m.may_administer(&Principal::user("a"), "priv"));
        assert!(!m.may_administer(&Principal::user("m"), "priv"));
    }

    #[test]
    fn robots_are_scoped() {
        let m = model();
        let r = Principal::Robot {
            name: "robot$priv+ci".into(),
            project: "priv".into(),
            actions: vec![Action::Pull, Action::Push],
        };
        assert!(m.may(&r, "priv/app", Action::Push));
        assert!(!m.may(&r, "priv/app", Action::Delete));
        assert!(!m.may(&r, "pub/app", Action::Push));
        assert!(
            m.may(&r, "pub/app", Action::Pull),
            "public content is public to robots too"
        );
        let granted: Vec<Action> = Action::ALL
            .into_iter()
            .filter(|a| m.may(&r, "priv/app", *a))
            .collect();
        assert_eq!(granted, vec![Action::Pull, Action::Push]);
    }
}
