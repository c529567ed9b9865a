//! Authentication and authorization for every route, decided here and nowhere else.
//!
//! The `authorize` middleware runs after the route is resolved: it identifies the caller from
//! the `Authorization` header, works out what the endpoint needs (pull, push, delete on a
//! repository), asks [`Registry::may`], and either passes the request on with the
//! [`Principal`] attached or answers 401 (with a challenge) / 403.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use berth_auth::{Action, Htpasswd, Principal};
use berth_oci::RepositoryName;
use http::{header, Method};

use crate::error::ApiError;
use crate::route::Endpoint;
use crate::Registry;

/// How callers prove who they are.
pub enum Authenticator {
    /// No authentication: everyone may do everything (the `registry:2` default).
    Open,
    /// HTTP Basic against an htpasswd file; every request needs a valid user, as in
    /// `registry:2` with `REGISTRY_AUTH=htpasswd`.
    Htpasswd { realm: String, file: Arc<Htpasswd> },
}

/// What one request needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    /// Only to be identified (`/v2/`, which clients use to discover the auth scheme).
    Login,
    Catalog,
    Repository(RepositoryName, Action),
}

/// The access an endpoint requires for a method.
pub fn need(endpoint: &Endpoint, method: &Method) -> Need {
    let read = matches!(*method, Method::GET | Method::HEAD);
    let on = |name: &RepositoryName, action| Need::Repository(name.clone(), action);
    match endpoint {
        Endpoint::Base => Need::Login,
        Endpoint::Catalog => Need::Catalog,
        Endpoint::Tags { name } | Endpoint::Referrers { name, .. } => on(name, Action::Pull),
        Endpoint::Manifest { name, .. } | Endpoint::Blob { name, .. } => match *method {
            _ if read => on(name, Action::Pull),
            Method::DELETE => on(name, Action::Delete),
            _ => on(name, Action::Push),
        },
        Endpoint::UploadStart { name } | Endpoint::Upload { name, .. } => on(name, Action::Push),
    }
}

/// The `user:password` of a Basic `Authorization` header.
fn basic_credentials(request: &Request) -> Option<(String, String)> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl Registry {
    /// The single authorization decision.
    pub fn may(&self, principal: &Principal, need: &Need) -> bool {
        match &self.auth {
            Authenticator::Open => true,
            // registry:2 semantics: any valid user may do everything.
            Authenticator::Htpasswd { .. } => {
                let _ = need;
                matches!(principal, Principal::User(_))
            }
        }
    }

    async fn authenticate(
        &self,
        credentials: Option<(String, String)>,
    ) -> Result<Principal, ApiError> {
        match &self.auth {
            Authenticator::Open => Ok(Principal::Anonymous),
            Authenticator::Htpasswd { file, .. } => match credentials {
                None => Ok(Principal::Anonymous),
                Some((user, password)) => {
                    if file.verify(&user, &password).await {
                        Ok(Principal::User(user))
                    } else {
                        tracing::info!(user = %user, "failed login");
                        Err(self.challenge("invalid username or password"))
                    }
                }
            },
        }
    }

    fn challenge(&self, detail: &str) -> ApiError {
        let challenge = match &self.auth {
            Authenticator::Open => String::new(),
            Authenticator::Htpasswd { realm, .. } => {
                format!("Basic realm=\"{}\"", realm.replace('"', ""))
            }
        };
        ApiError::Unauthorized {
            challenge,
            detail: detail.to_owned(),
        }
    }
}

pub async fn authorize(
    State(registry): State<Arc<Registry>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(endpoint) = request.extensions().get::<Endpoint>() else {
        return next.run(request).await;
    };
    let need = need(endpoint, request.method());
    let credentials = basic_credentials(&request);
    let principal = match registry.authenticate(credentials).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if !registry.may(&principal, &need) {
        return match principal {
            Principal::Anonymous => registry
                .challenge("authentication required")
                .into_response(),
            _ => ApiError::Denied(format!("{need:?} is not allowed")).into_response(),
        };
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}
