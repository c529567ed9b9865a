//! Authentication and authorization: who is calling, and what they may do.
//!
//! [`htpasswd`] reads and writes Apache htpasswd files (bcrypt only, as `registry:2`);
//! [`Htpasswd`] checks Basic credentials against one, with a cache of verified logins (bcrypt
//! costs ~70 ms, and clients send credentials on every request) and reloads the file when it
//! changes. [`access`] names the actions a request needs.

pub mod access;
pub mod htpasswd;
mod secret;

pub use access::{Action, Principal};
pub use htpasswd::{Htpasswd, HtpasswdError, HtpasswdFile};
pub use secret::constant_time_eq;
