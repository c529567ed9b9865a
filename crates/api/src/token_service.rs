//! The built-in Docker token service: `GET /auth/token?service=…&scope=…` (Basic credentials
//! or anonymous) and the OAuth2 form `POST /auth/token` (`grant_type=password`). It issues a
//! short-lived JWT for the subset of the requested scopes the caller is allowed. A robot's token
//! never outlives the robot. Scopes: `repository:<name>:<actions>`, `registry:catalog:*`
//! (any logged-in caller) and `registry:admin:*` (users, for the admin API).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use berth_auth::{AccessEntry, Action, Authorizer, Credential, Mode, Permission, Principal, Scope};
use berth_oci::{ErrorCode, RepositoryName};
use http::{header, Method, StatusCode};
use http_body_util::BodyExt;

use crate::access::{basic_credentials, client_address, Authenticator, LoginRefused};
use crate::error::ApiError;
use crate::Api;

const MAX_FORM: usize = 64 * 1024;

fn params(text: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(text.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = serde_json::json!({ "error": error, "error_description": description });
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

pub async fn token(State(api): State<Arc<Api>>, request: Request) -> Response {
    match issue(&api, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn issue(api: &Api, request: Request) -> Result<Response, ApiError> {
    let Authenticator::Token(t) = &api.auth else {
        return Err(ApiError::NoRoute);
    };
    let client = client_address(request.extensions());
    let mut credentials = basic_credentials(request.headers());
    let mut p = params(request.uri().query().unwrap_or(""));
    if request.method() == Method::POST {
        let body = http_body_util::Limited::new(request.into_body(), MAX_FORM)
            .collect()
            .await
            .map_err(|_| ApiError::InvalidRequest("token request body too large".into()))?
            .to_bytes();
        let form = params(&String::from_utf8_lossy(&body));
        match form
            .iter()
            .find(|(k, _)| k == "grant_type")
            .map(|(_, v)| v.as_str())
        {
            Some("password") => {
                let get = |key: &str| form.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
                if let (Some(u), Some(pw)) = (get("username"), get("password")) {
                    credentials = Some((u, pw));
                }
            }
            Some(other) => {
                return Ok(oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    &format!("grant_type {other} is not supported; use password"),
                ));
            }
            None => {}
        }
        p.extend(form);
    }
    if let Some(service) = p.iter().find(|(k, _)| k == "service").map(|(_, v)| v) {
        if service != &t.issuer.service {
            return Ok(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("unknown service {service:?}"),
            ));
        }
    }

    let principal = match &credentials {
        None => Principal::Anonymous,
        Some((user, password)) => {
            match api.check_password(user, password, &client, "token").await {
                Ok(p) => {
                    api.audit.record(user, "login", "token", "ok", &client, "");
                    p
                }
                Err(LoginRefused::RateLimited) => {
                    return Err(ApiError::new(
                        ErrorCode::TooManyRequests,
                        "too many failed logins from this address; try again later",
                    ))
                }
                Err(LoginRefused::Invalid) => {
                    return Err(ApiError::Unauthorized {
                        challenge: String::new(),
                        detail: "invalid username or password".into(),
                    })
                }
            }
        }
    };

    let model = t.model();
    // What the login itself (no token yet) may do, by the one authorizer.
    let credential = if credentials.is_some() {
        Credential::Password
    } else {
        Credential::None
    };
    let authorizer = Authorizer {
        mode: Mode::Token,
        model: &model,
    };
    let may = |permission: Permission<'_>| authorizer.allows(&principal, credential, permission);
    let mut access = Vec::new();
    let requested = p
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' '))
        .filter_map(Scope::parse);
    for scope in requested {
        match scope.kind.as_str() {
            "repository" if scope.name.parse::<RepositoryName>().is_ok() => {
                let wanted: Vec<Action> = scope
                    .actions
                    .iter()
                    .flat_map(|a| {
                        if a == "*" {
                            Action::ALL.to_vec()
                        } else {
                            Action::parse(a).into_iter().collect()
                        }
                    })
                    .collect();
                let granted: Vec<Action> = wanted
                    .into_iter()
                    .filter(|a| may(Permission::Repository(&scope.name, *a)))
                    .collect();
                if !granted.is_empty() {
                    access.push(AccessEntry {
                        kind: "repository".into(),
                        name: scope.name,
                        actions: granted.iter().map(|a| a.as_str().to_owned()).collect(),
                    });
                }
            }
            "registry" if scope.name == "catalog" && may(Permission::Catalog) => {
                access.push(AccessEntry {
                    kind: "registry".into(),
                    name: "catalog".into(),
                    actions: vec!["*".into()],
                });
            }
            // The admin API, for users only; what they may change there is decided by their
            // rights at the time of each request.
            "registry" if scope.name == "admin" && may(Permission::AdminApi) => {
                access.push(AccessEntry {
                    kind: "registry".into(),
                    name: "admin".into(),
                    actions: vec!["*".into()],
                });
            }
            _ => {}
        }
    }
    let subject = if principal.is_anonymous() {
        String::new()
    } else {
        principal.name().into_owned()
    };
    let not_after = t.not_after(&principal);
    let (token, claims) = t
        .issuer
        .issue(&subject, access, not_after)
        .map_err(|e| ApiError::Internal(format!("issuing a token failed: {e}")))?;
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": claims.exp - claims.iat,
    });
    let mut r = Response::new(Body::from(body.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(r)
}
