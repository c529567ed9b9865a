//! Authentication and authorization: who is calling, and what they may do.
//!
//! [`htpasswd`] reads and writes Apache htpasswd files (bcrypt only, as `registry:2`);
//! [`Htpasswd`] checks Basic credentials against one, with a cache of verified logins (bcrypt
//! costs ~70 ms, and clients send credentials on every request) and reloads the file when it
//! changes. [`policy`] decides what a caller may do from users, projects, roles and robots;
//! [`token`] issues and verifies Docker registry bearer tokens; [`logins`] remembers verified
//! logins and slows down guessing.

pub mod access;
pub mod admin;
pub mod authorizer;
pub mod htpasswd;
pub mod logins;
pub mod policy;
mod secret;
pub mod token;

pub use access::{Action, Principal, Role};
pub use authorizer::{Authorizer, Credential, Mode, Permission};
pub use htpasswd::{Htpasswd, HtpasswdError, HtpasswdFile};
pub use logins::{Attempt, FailedLogins, LoginCache, LoginLimits};
pub use policy::AccessModel;
pub use secret::constant_time_eq;
pub use token::{AccessEntry, Claims, Scope, TokenIssuer, TokenVerifier};
