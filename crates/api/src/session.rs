//! Web UI sessions: a credential like Basic and tokens, decided here beside them.
//!
//! A session is opened with the same password check as every other login
//! ([`Api::check_password`]: rate limits, audit), for users only — robots are for machines and
//! cannot sign in. The browser holds a random id in an HttpOnly, SameSite=Lax cookie (Secure
//! under TLS); the metadata store holds its SHA-256, the user, the CSRF token its forms must
//! echo, and an expiry. Each request turns the cookie back into an [`Access`] with the live
//! account (a deleted user's session opens nothing; a revoked admin flag holds at once), and
//! the authorizer then treats it as a password login ([`Credential::Password`]). Requests only
//! read: opening is one insert, and each user keeps at most [`SESSIONS_PER_USER`].

use berth_auth::Principal;
use berth_meta::{AccessStore, Session};
use http::{header, HeaderMap};
use rand::RngCore;
use sha2::{Digest as _, Sha256};

use crate::access::{Access, Authenticator, Credential, LoginRefused};
use crate::error::ApiError;
use crate::Api;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "berth_session";
/// How long a session lasts from sign-in (no sliding renewal: that would be a write per
/// request).
pub const SESSION_SECONDS: i64 = 12 * 3600;
/// Sessions kept per user; signing in once more ends the oldest.
pub const SESSIONS_PER_USER: u32 = 16;

/// Why a sign-in failed.
#[derive(Debug)]
pub enum SignInRefused {
    /// Wrong name or password.
    Invalid,
    /// Too many failed logins from this address or for this user.
    RateLimited,
    /// A robot account: they pull and push, they do not browse.
    Robot,
    /// Nothing to sign in to (`auth.mode = none`).
    NoAccounts,
    /// The password was right but the session could not be stored (the metadata store is
    /// down or full): said as such, never as a wrong password.
    Store(ApiError),
}

/// A session just opened: the cookie's value (shown once, never stored) and its CSRF token.
pub struct OpenedSession {
    pub cookie_value: String,
    pub csrf_token: String,
    pub principal: Principal,
}

/// The caller of a UI request: who they are, and their session when they have one.
pub struct SessionAccess {
    pub access: Access,
    pub session: Option<Session>,
}

/// 256 random bits, hex: session ids and CSRF tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn hash_of(cookie_value: &str) -> String {
    hex::encode(Sha256::digest(cookie_value.as_bytes()))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

impl Api {
    fn sessions(&self) -> &dyn AccessStore {
        &*self.access_store
    }

    /// Whether the UI has accounts to sign in with.
    pub fn has_accounts(&self) -> bool {
        !matches!(self.auth, Authenticator::Open)
    }

    /// Checks a password and opens a session for the user.
    pub async fn open_session(
        &self,
        user: &str,
        password: &str,
        client: &str,
    ) -> Result<OpenedSession, SignInRefused> {
        if !self.has_accounts() {
            return Err(SignInRefused::NoAccounts);
        }
        let principal = self
            .check_password(user, password, client, "ui")
            .await
            .map_err(|e| match e {
                LoginRefused::RateLimited => SignInRefused::RateLimited,
                LoginRefused::Invalid => SignInRefused::Invalid,
            })?;
        if !matches!(principal, Principal::User { .. }) {
            self.audit.record(
                user,
                "login",
                "ui",
                "denied",
                client,
                "robots cannot sign in",
            );
            return Err(SignInRefused::Robot);
        }
        let cookie_value = random_token();
        let now = berth_meta::now();
        let session = Session {
            id_hash: hash_of(&cookie_value),
            username: principal.name().into_owned(),
            csrf_token: random_token(),
            created_at: now,
            expires_at: now + SESSION_SECONDS,
        };
        self.sessions()
            .open_session(&session, SESSIONS_PER_USER)
            .await
            .map_err(|e| SignInRefused::Store(e.into()))?;
        self.audit.record(user, "login", "ui", "ok", client, "");
        Ok(OpenedSession {
            cookie_value,
            csrf_token: session.csrf_token,
            principal,
        })
    }

    /// Who sends this UI request: the session cookie's user as the access model knows them
    /// now, or anonymous. Other credentials (Basic, bearer tokens) are not UI credentials and
    /// are ignored here, so they can never lift a browser's rights.
    pub async fn session_access(
        &self,
        headers: &HeaderMap,
        client: &str,
    ) -> Result<SessionAccess, ApiError> {
        let anonymous = SessionAccess {
            access: Access::anonymous(client.to_owned()),
            session: None,
        };
        let Some(value) = cookie(headers, SESSION_COOKIE).filter(|v| !v.is_empty()) else {
            return Ok(anonymous);
        };
        let Some(session) = self
            .sessions()
            .session(&hash_of(value), berth_meta::now())
            .await?
        else {
            return Ok(anonymous);
        };
        let Some(principal) = self.account(&session.username) else {
            return Ok(anonymous);
        };
        Ok(SessionAccess {
            access: Access {
                principal,
                credential: Credential::Password,
                client: client.to_owned(),
            },
            session: Some(session),
        })
    }

    /// Ends the session this request's cookie names, if any.
    pub async fn close_session(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if let Some(value) = cookie(headers, SESSION_COOKIE).filter(|v| !v.is_empty()) {
            self.sessions().close_session(&hash_of(value)).await?;
        }
        Ok(())
    }

    /// Deletes expired sessions (a worker, hourly).
    pub async fn prune_sessions(&self) -> Result<u64, berth_meta::MetaError> {
        self.sessions().prune_sessions(berth_meta::now()).await
    }

    /// The user account `name` now: not a robot, and gone once deleted.
    fn account(&self, name: &str) -> Option<Principal> {
        match &self.auth {
            Authenticator::Open => None,
            Authenticator::Htpasswd { file, .. } => {
                file.contains(name).then(|| Principal::user(name))
            }
            Authenticator::Token(t) => t
                .local_subject(name)
                .filter(|p| matches!(p, Principal::User { .. })),
        }
    }
}

/// Compares a submitted CSRF token with the session's in constant time.
pub fn csrf_matches(session: &Session, submitted: &str) -> bool {
    !submitted.is_empty()
        && berth_auth::constant_time_eq(session.csrf_token.as_bytes(), submitted.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, "a=1; berth_session_x=2".parse().unwrap());
        headers.append(
            header::COOKIE,
            "berth_session=abc ; lang=zh-CN".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "lang"), Some("zh-CN"));
        assert_eq!(cookie(&headers, "b"), None);
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let session = Session {
            id_hash: String::new(),
            username: "u".into(),
            csrf_token: "abc".into(),
            created_at: 0,
            expires_at: 1,
        };
        assert!(csrf_matches(&session, "abc"));
        assert!(!csrf_matches(&session, "abd"));
        assert!(!csrf_matches(&session, ""));
        assert!(!csrf_matches(&session, "abcd"));
    }
}
