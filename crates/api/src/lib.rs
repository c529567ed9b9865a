//! The registry's HTTP API: the OCI Distribution Spec (v1.1 and what spec main adds) and the
//! Docker v2 API, over a [`BlobStore`] and a [`MetadataStore`].
//!
//! Flow of a request, as tower layers: `resolve` turns the path into a [`route::Endpoint`] →
//! [`access::authorize`] identifies the caller and decides whether the endpoint is allowed →
//! `handlers` run the registry rules → a response or an [`error::ApiError`], mapped to the wire
//! in one place. Handlers never touch SQL or files directly.

pub mod access;
mod admin;
pub mod audit;
pub mod error;
pub mod gc;
mod handlers;
mod metered;
pub mod observe;
pub mod otlp;
pub mod route;
mod token_service;
mod uploads;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use berth_meta::MetadataStore;
use berth_storage::BlobStore;
use http::HeaderValue;

pub use access::{Authenticator, TokenAuth};
pub use audit::AuditLog;
pub use error::ApiError;

/// Behaviour switches of the API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Allow DELETE of manifests, tags and blobs (`REGISTRY_STORAGE_DELETE_ENABLED`).
    pub delete_enabled: bool,
    /// Largest manifest accepted; bigger pushes get 413.
    pub max_manifest_bytes: usize,
    /// Served over TLS (for absolute URLs such as the token realm).
    pub tls: bool,
    /// Failed password logins allowed before further attempts are refused for a while.
    pub login_limits: berth_auth::LoginLimits,
    /// Upload sessions in progress allowed per user and per repository.
    pub upload_limits: berth_meta::UploadLimits,
    /// Accept manifests whose blobs or child manifests are absent (sparse mirrors).
    pub allow_sparse_manifests: bool,
    /// A request body that delivers nothing for this long is abandoned.
    pub body_read_timeout: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            delete_enabled: true,
            max_manifest_bytes: 4 * 1024 * 1024,
            tls: false,
            login_limits: berth_auth::LoginLimits::default(),
            upload_limits: berth_meta::UploadLimits {
                per_owner: Some(1024),
                per_repository: Some(256),
            },
            allow_sparse_manifests: false,
            body_read_timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// Everything a request handler may use.
pub struct Registry {
    pub blobs: Arc<dyn BlobStore>,
    pub meta: Arc<dyn MetadataStore>,
    pub config: ApiConfig,
    pub auth: Authenticator,
    pub audit: AuditLog,
    pub metrics: Arc<observe::Metrics>,
    /// Where request spans go, when OpenTelemetry export is configured.
    pub traces: Option<otlp::TraceExporter>,
    failed_logins: berth_auth::FailedLogins,
    /// Set while writes fail because the storage is full: the episode is logged once.
    storage_full: std::sync::atomic::AtomicBool,
    uploads: uploads::Uploads,
}

impl Registry {
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        meta: Arc<dyn MetadataStore>,
        config: ApiConfig,
        auth: Authenticator,
        audit: AuditLog,
    ) -> Self {
        // Every store call is timed for /metrics.
        let metrics = Arc::new(observe::Metrics::default());
        let blobs = Arc::new(metered::MeteredBlobStore {
            inner: blobs,
            metrics: metrics.clone(),
        });
        let meta = Arc::new(metered::MeteredMetadataStore {
            inner: meta,
            metrics: metrics.clone(),
        });
        let failed_logins = access::failed_logins(config.login_limits);
        Registry {
            blobs,
            meta,
            config,
            auth,
            audit,
            metrics,
            traces: None,
            failed_logins,
            storage_full: Default::default(),
            uploads: uploads::Uploads::default(),
        }
    }
}

impl Registry {
    /// Notes how a write went: the first refusal for a full disk starts an episode (logged
    /// once, shown in `/metrics`), the next successful write ends it.
    pub(crate) fn note_write<T>(&self, outcome: &Result<T, ApiError>) {
        use std::sync::atomic::Ordering;
        match outcome {
            Err(e) if e.is_storage_full() => {
                if !self.storage_full.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        "the registry's storage is full: writes are refused with 507 until space is freed ({e})"
                    );
                }
            }
            Ok(_) => {
                if self.storage_full.swap(false, Ordering::Relaxed) {
                    tracing::warn!("the registry's storage has room again: writes succeed");
                }
            }
            Err(_) => {}
        }
    }

    pub fn storage_is_full(&self) -> bool {
        self.storage_full.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Registry {
    /// Discards upload sessions (and their bytes) started more than `max_age` ago: abandoned
    /// uploads must not fill the disk. Returns how many were removed.
    pub async fn purge_uploads(&self, max_age: std::time::Duration) -> Result<usize, ApiError> {
        let before = berth_meta::now() - max_age.as_secs() as i64;
        let mut purged = 0;
        loop {
            let ids = self.meta.expired_uploads(before, 500).await?;
            if ids.is_empty() {
                return Ok(purged);
            }
            for id in ids {
                self.blobs.delete_upload(&id).await?;
                self.meta.delete_upload(&id).await?;
                self.uploads.forget(&id);
                purged += 1;
            }
        }
    }
}

/// The complete API as an axum router: resolve the endpoint, authorize, dispatch.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
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
            registry.clone(),
            access::authorize,
        ))
        .layer(axum::middleware::from_fn(resolve))
        .layer(axum::middleware::from_fn(require_one_host))
        .layer(axum::middleware::map_response(api_version_header))
        .layer(axum::middleware::from_fn_with_state(
            registry.clone(),
            observe::observe,
        ))
        .with_state(registry)
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

async fn dispatch(State(registry): State<Arc<Registry>>, mut request: Request) -> Response {
    let Some(endpoint) = request.extensions_mut().remove::<route::Endpoint>() else {
        return ApiError::NoRoute.into_response();
    };
    match handlers::handle(&registry, endpoint, request).await {
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
