//! Berth's web UI, served by the registry's own binary and port under `/ui`.
//!
//! Pages are rendered on the server from askama templates (`crates/ui/templates`, checked at
//! compile time), in the caller's language (`i18n`); the only script is a copy button's, and
//! every asset is embedded (`assets`), so building Berth needs no Node step.
//!
//! This crate decides nothing. A page identifies its caller with
//! [`berth_api::Api::session_access`] (the session cookie; Basic and bearer credentials are
//! not UI credentials), reads through the registry's read models
//! ([`berth_registry::browse`]) and changes things through [`berth_api::manage`] — the same
//! methods, and so the same authorizer and audit records, as the admin API. What it asks the
//! authorizer itself is only what to show (a delete button for a caller who may delete).
//!
//! Every state-changing request is a `POST` form carrying the session's CSRF token (checked
//! by [`Caller::forged`]) from the same origin; responses carry a strict
//! Content-Security-Policy, and pages are never cached.

mod assets;
mod format;
pub mod i18n;
mod pages;
mod projects;
mod repositories;
mod signin;
mod status;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use berth_api::access::{client_address, Access};
use berth_api::{Api, ApiError};
use berth_auth::Permission;
use berth_meta::Session;
use http::request::Parts;
use http::{header, HeaderValue, StatusCode};

use crate::i18n::Catalog;

/// Where the UI lives.
pub const PREFIX: &str = "/ui";

/// The UI's routes, to serve beside the registry API (`berth_api::router_with`).
pub fn router() -> Router<Arc<Api>> {
    Router::new()
        .route("/", get(root))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(repositories::list))
        .route("/ui/assets/{file}", get(assets::serve))
        .route("/ui/login", get(signin::form).post(signin::submit))
        .route("/ui/logout", post(signin::logout))
        .route(
            "/ui/repo/{*path}",
            get(repositories::show).post(repositories::change),
        )
        .route("/ui/projects", get(projects::list).post(projects::create))
        .route("/ui/projects/{name}", get(projects::show))
        .route("/ui/projects/{name}/{action}", post(projects::change))
        .route("/ui/projects/{name}/retention", get(projects::retention))
        .route("/ui/status", get(status::show))
        .route("/ui/audit", get(status::audit))
        .layer(axum::middleware::from_fn(frame))
}

/// `/` in a browser opens the UI; registry clients never ask for it.
async fn root(request: Request) -> Response {
    let wants_html = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html {
        Redirect::to("/ui/").into_response()
    } else {
        ApiError::NoRoute.into_response()
    }
}

/// Headers on every UI response: no framing, no inline script or style, no sniffing, pages
/// never cached; and the language switch remembered in a cookie.
async fn frame(request: Request, next: Next) -> Response {
    let switch = query_param(request.uri().query(), "lang").and_then(|l| i18n::by_tag(&l));
    let is_asset = request.uri().path().starts_with("/ui/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    if !is_asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let Some(catalog) = switch {
        let cookie = format!(
            "{}={}; Path=/ui; Max-Age=31536000; SameSite=Lax",
            i18n::LANG_COOKIE,
            catalog.tag
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, v);
        }
    }
    response
}

/// One query parameter, decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Whoever sent a UI request, in their language.
pub(crate) struct Caller {
    pub api: Arc<Api>,
    pub access: Access,
    pub session: Option<Session>,
    pub t: &'static Catalog,
    /// `host[:port]` the browser used, for pull commands.
    pub host: String,
    pub path: String,
    /// Served over TLS (directly or behind a proxy that says so): cookies get `Secure`.
    pub secure: bool,
    /// The request's `Origin`, when it has one and it is not this host.
    foreign_origin: bool,
}

impl FromRequestParts<Arc<Api>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, Response> {
        let client = client_address(&parts.extensions);
        let switch = query_param(parts.uri.query(), "lang");
        let t = i18n::for_request(&parts.headers, switch.as_deref());
        let found = api
            .session_access(&parts.headers, &client)
            .await
            .map_err(|e| pages::error_page(t, e))?;
        let base = berth_api::access::external_base(&parts.headers, api.config.tls);
        let (scheme, host) = base.split_once("://").unwrap_or(("http", &base));
        let foreign_origin = parts
            .headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|origin| origin != base);
        Ok(Caller {
            api: api.clone(),
            access: found.access,
            session: found.session,
            t,
            host: host.to_owned(),
            path: parts.uri.path().to_owned(),
            secure: scheme == "https",
            foreign_origin,
        })
    }
}

impl Caller {
    pub fn allows(&self, permission: Permission<'_>) -> bool {
        self.api.allows(&self.access, permission)
    }

    pub fn signed_in(&self) -> bool {
        self.session.is_some()
    }

    /// The CSRF token forms of this page carry (empty without a session).
    pub fn csrf(&self) -> &str {
        self.session
            .as_ref()
            .map(|s| s.csrf_token.as_str())
            .unwrap_or("")
    }

    /// A state-changing form must come from this origin and carry this session's token (a
    /// form without a session changes nothing); anything else is answered with the page
    /// returned here.
    pub fn forged(&self, submitted_token: Option<&str>) -> Option<Response> {
        let valid = !self.foreign_origin
            && self.session.as_ref().is_some_and(|s| {
                berth_api::session::csrf_matches(s, submitted_token.unwrap_or(""))
            });
        (!valid).then(|| pages::message_page(self, StatusCode::FORBIDDEN, self.t.get("error.csrf")))
    }

    /// Sends an anonymous visitor to sign in (and back), or tells a signed-in one no.
    pub fn refuse(&self) -> Response {
        if !self.signed_in() && self.api.has_accounts() {
            let next = form_urlencoded::byte_serialize(self.path.as_bytes()).collect::<String>();
            return Redirect::to(&format!("/ui/login?next={next}")).into_response();
        }
        pages::message_page(self, StatusCode::FORBIDDEN, self.t.get("error.forbidden"))
    }

    /// A failure as a page in the caller's language (the status the API would answer).
    pub fn failed(&self, e: ApiError) -> Response {
        if matches!(e, ApiError::Denied(_)) {
            return self.refuse();
        }
        pages::error_page(self.t, e)
    }
}

/// A parsed `application/x-www-form-urlencoded` body.
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn token(&self) -> Option<&str> {
        self.get("csrf")
    }
}
