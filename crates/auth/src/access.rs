//! The vocabulary of access decisions: actions, roles and callers.

/// What a request does to a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Read manifests, blobs, tags and referrers.
    Pull,
    /// Upload blobs, push manifests and tags.
    Push,
    /// Delete manifests and blobs, remove tags.
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s.trim() {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }

    /// Parses `pull,push`; `*` means all. Unknown words are an error.
    pub fn parse_list(s: &str) -> Option<Vec<Action>> {
        if s.trim() == "*" {
            return Some(Action::ALL.to_vec());
        }
        let mut out: Vec<Action> = s
            .split(',')
            .filter(|w| !w.trim().is_empty())
            .map(Action::parse)
            .collect::<Option<_>>()?;
        out.sort();
        out.dedup();
        Some(out)
    }

    pub fn join(actions: &[Action]) -> String {
        actions
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A project member's role; each includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Pull.
    Guest,
    /// Pull and push.
    Developer,
    /// Also delete and untag.
    Maintainer,
    /// Also manage members and project settings.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::Developer => "developer",
            Role::Maintainer => "maintainer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "guest" => Some(Role::Guest),
            "developer" => Some(Role::Developer),
            "maintainer" => Some(Role::Maintainer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn allows(self, action: Action) -> bool {
        match action {
            Action::Pull => true,
            Action::Push => self >= Role::Developer,
            Action::Delete => self >= Role::Maintainer,
        }
    }
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    /// A user from the metadata store or an htpasswd file.
    User {
        name: String,
        admin: bool,
    },
    /// A robot account limited to one project and some actions.
    Robot {
        name: String,
        project: String,
        actions: Vec<Action>,
    },
    /// The subject of an external issuer's token. It is never a local account, whatever its
    /// name: it may do exactly what its token's `access` claim grants, nothing from the model.
    External {
        issuer: String,
        subject: String,
    },
}

impl Principal {
    pub fn user(name: impl Into<String>) -> Principal {
        Principal::User {
            name: name.into(),
            admin: false,
        }
    }

    /// The name for logs and audit records; an external subject is `<issuer>:<subject>`, so
    /// it never reads as a local account.
    pub fn name(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Principal::Anonymous => "anonymous".into(),
            Principal::User { name, .. } | Principal::Robot { name, .. } => name.as_str().into(),
            Principal::External { issuer, subject } => format!("{issuer}:{subject}").into(),
        }
    }

    pub fn is_anonymous(&self) -> bool {
        matches!(self, Principal::Anonymous)
    }
}
