//! The registry's HTTP API: the OCI Distribution Spec (v1.1 and what spec main adds), the
//! Docker v2 API, the token service and the admin API — thin adapters over the registry's
//! rules in [`berth_registry::Registry`].
//!
//! Flow of a request, as tower layers: `resolve` turns the path into a [`route::Endpoint`] →
//! [`access::authorize`] identifies the caller and decides whether the endpoint is allowed →
//! `handlers` parse the HTTP request, call the registry and build the response → errors become
//! an [`error::ApiError`], mapped to the wire in one place. Nothing here touches SQL or files.

pub mod access;
mod admin;
pub mod audit;
pub mod error;
mod handlers;
pub mod manage;
pub mod observe;
pub mod otlp;
pub mod route;
pub mod session;
mod token_service;
pub mod workers;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use berth_meta::{AccessStore, Store};
use berth_registry::{Events, Registry, RegistryConfig};
use berth_storage::BlobStore;
use http::HeaderValue;

pub use access::{Authenticator, TokenAuth};
pub use audit::AuditLog;
pub use error::ApiError;

/// Behaviour switches of the HTTP layer (the registry's own are [`RegistryConfig`]).
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Served over TLS (for absolute URLs such as the token realm).
    pub tls: bool,
    /// Failed password logins allowed before further attempts are refused for a while.
    pub login_limits: berth_auth::LoginLimits,
    /// A request body that delivers nothing for this long is abandoned.
    pub body_read_timeout: std::time::Duration,
    /// What this server runs on, as `(what, which)` (storage, metadata, auth), for the
    /// status page.
    pub backends: Vec<(String, String)>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            tls: false,
            login_limits: berth_auth::LoginLimits::default(),
            body_read_timeout: std::time::Duration::from_secs(60),
            backends: Vec::new(),
        }
    }
}

/// Everything a request handler may use: the registry, and who may call it.
pub struct Api {
    pub registry: Arc<Registry>,
    pub config: ApiConfig,
    pub auth: Authenticator,
    pub audit: AuditLog,
    pub metrics: Arc<observe::Metrics>,
    /// Where request spans go, when OpenTelemetry export is configured.
    pub traces: Option<otlp::TraceExporter>,
    /// The background workers, for `/metrics`.
    pub workers: Arc<workers::Workers>,
    /// Work that keeps `/readyz` false while it runs (the first start's import).
    pub readiness: observe::Readiness,
    /// Where sessions and the audit log are read (in every auth mode).
    access_store: Arc<dyn AccessStore>,
    failed_logins: berth_auth::FailedLogins,
}

impl Api {
    /// Builds the registry on `blobs` and the metadata backend `meta`, with the audit log
    /// subscribed to its events. `metrics` is where the stores already report their
    /// operations ([`observe::Metrics::store_observer`]); requests are added to it here.
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        meta: Arc<dyn Store>,
        registry_config: RegistryConfig,
        config: ApiConfig,
        auth: Authenticator,
        audit: AuditLog,
        metrics: Arc<observe::Metrics>,
    ) -> Self {
        let mut events = Events::default();
        events.subscribe(Arc::new(audit.clone()));
        let access_store: Arc<dyn AccessStore> = meta.clone();
        let registry = Arc::new(Registry::new(blobs, meta, registry_config, events));
        let failed_logins = berth_auth::FailedLogins::new(config.login_limits);
        Api {
            registry,
            config,
            auth,
            audit,
            metrics,
            traces: None,
            workers: Arc::default(),
            readiness: observe::Readiness::default(),
            access_store,
            failed_logins,
        }
    }
}

/// The complete API as an axum router: resolve the endpoint, authorize, dispatch.
pub fn router(api: Arc<Api>) -> Router {
    router_with(api, Router::new())
}

/// The API with more routes (the web UI) served beside it, under the same outer layers
/// (request ids, the access log, metrics, the Host check). Those routes identify and authorize
/// their callers through [`Api`] themselves; `authorize` only acts on registry endpoints.
pub fn router_with(api: Arc<Api>, more: Router<Arc<Api>>) -> Router {
    Router::new()
        .merge(more)
        .route(
            "/auth/token",
            axum::routing::get(token_service::token).post(token_service::token),
        )
        .route("/healthz", axum::routing::get(observe::healthz))
        .route("/readyz", axum::routing::get(observe::readyz))
        .route("/metrics", axum::routing::get(observe::metrics))
        .merge(admin::router())
        .fallback(dispatch)
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            access::authorize,
        ))
        .layer(axum::middleware::from_fn(resolve))
        .layer(axum::middleware::from_fn(require_one_host))
        .layer(axum::middleware::map_response(api_version_header))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            observe::observe,
        ))
        .with_state(api)
}

/// Parses the path into an [`route::Endpoint`] stored in the request's extensions.
async fn resolve(mut request: Request, next: Next) -> Response {
    match route::parse(request.uri().path()) {
        Ok(Some(endpoint)) => {
            let repository = endpoint
                .repository()
                .map(|r| r.to_string())
                .unwrap_or_default();
            request.extensions_mut().insert(endpoint);
            let mut response = next.run(request).await;
            // The access log learns the repository here and the user from `authorize`.
            let facts = response
                .extensions_mut()
                .get_or_insert_default::<observe::RequestFacts>();
            facts.repository = repository;
            response
        }
        // Not a registry path: the token service, the admin API, or nothing.
        Ok(None) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(State(api): State<Arc<Api>>, mut request: Request) -> Response {
    let Some(endpoint) = request.extensions_mut().remove::<route::Endpoint>() else {
        return ApiError::NoRoute.into_response();
    };
    match handlers::handle(&api, endpoint, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// RFC 9112: an HTTP/1.1 request without a `Host` header, or with several, gets 400. (HTTP/2
/// carries `:authority` instead; HTTP/1.0 predates the rule.)
async fn require_one_host(request: Request, next: Next) -> Response {
    if request.version() == http::Version::HTTP_11
        && request.headers().get_all(http::header::HOST).iter().count() != 1
    {
        return ApiError::InvalidRequest(
            "an HTTP/1.1 request needs exactly one Host header".into(),
        )
        .into_response();
    }
    next.run(request).await
}

async fn api_version_header(mut response: Response) -> Response {
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}
