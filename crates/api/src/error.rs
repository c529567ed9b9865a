//! Every failure of the HTTP API, and its one mapping to an OCI error response
//! (`{"errors":[{"code","message","detail"}]}` with the matching status).

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use berth_meta::MetaError;
use berth_oci::{DigestError, ErrorCode, ManifestError, NameError};
use berth_registry::RegistryError;
use berth_storage::StorageError;
use http::{header, HeaderValue, StatusCode};

/// What a 503 for an unavailable store asks clients to wait: short, since a store that comes
/// back serves at once, and clients retry with their own backoff anyway.
const RETRY_AFTER_SECONDS: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A spec error code with a human detail for the client.
    #[error("{code:?}: {detail}")]
    Oci { code: ErrorCode, detail: String },
    /// A Range header that cannot be served; carries the blob size for `Content-Range`.
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("no such endpoint")]
    NoRoute,
    /// The endpoint exists but not for this method; `allow` lists the methods it takes.
    #[error("method not allowed: {detail}")]
    MethodNotAllowed { allow: String, detail: String },
    /// A failure of ours that the client cannot fix.
    #[error("internal error: {0}")]
    Internal(String),
    /// The caller must (re-)authenticate; `challenge` is the `WWW-Authenticate` value.
    #[error("unauthorized: {detail}")]
    Unauthorized { challenge: String, detail: String },
    #[error("denied: {0}")]
    Denied(String),
    /// A malformed request to a non-registry API (admin, token).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// A refusal or failure of the registry's rules.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError::Oci {
            code,
            detail: detail.into(),
        }
    }

    /// The OCI code this error is reported with; internal failures count as `None`.
    pub fn code(&self) -> ErrorCode {
        self.wire().1.unwrap_or(ErrorCode::Unsupported)
    }

    /// The status and the detail the wire format carries, for callers that answer in
    /// another form (the web UI's pages); internal failures say no more than on the wire.
    pub fn status_and_detail(&self) -> (StatusCode, String) {
        let (status, _, detail) = self.wire();
        (status, detail)
    }

    /// Whether the failure is the registry's storage (blobs or metadata) being full.
    pub fn is_storage_full(&self) -> bool {
        match self {
            ApiError::Meta(e) => e.is_storage_full(),
            ApiError::Registry(e) => e.is_storage_full(),
            _ => false,
        }
    }

    /// A store is unavailable right now (answered 503 with `Retry-After`).
    fn is_unavailable(&self) -> bool {
        match self {
            ApiError::Meta(e) => matches!(e, MetaError::Unavailable(_)),
            ApiError::Registry(e) => e.is_unavailable(),
            _ => false,
        }
    }

    /// Status, spec code (None for internal errors) and detail: the single mapping.
    fn wire(&self) -> (StatusCode, Option<ErrorCode>, String) {
        let oci = |code: ErrorCode, detail: String| {
            let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST);
            (status, Some(code), detail)
        };
        if self.is_unavailable() {
            return oci(
                ErrorCode::Unavailable,
                format!(
                    "the registry's storage is unavailable right now; try again in {RETRY_AFTER_SECONDS} s"
                ),
            );
        }
        if self.is_storage_full() {
            // No spec code says "full"; DENIED is what quota refusals use too, and the status
            // and message say why.
            return (
                StatusCode::INSUFFICIENT_STORAGE,
                Some(ErrorCode::Denied),
                "the registry's storage is full; nothing was stored. Try again once space is freed"
                    .into(),
            );
        }
        match self {
            ApiError::Oci { code, detail } => oci(*code, detail.clone()),
            ApiError::RangeNotSatisfiable { size } => {
                oci(ErrorCode::RangeInvalid, format!("blob size is {size}"))
            }
            // UNSUPPORTED, the spec's code for what the registry does not implement.
            ApiError::NoRoute => (
                StatusCode::NOT_FOUND,
                Some(ErrorCode::Unsupported),
                "no such endpoint".into(),
            ),
            ApiError::MethodNotAllowed { detail, .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                Some(ErrorCode::Unsupported),
                detail.clone(),
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                "internal error".into(),
            ),
            ApiError::Unauthorized { detail, .. } => oci(ErrorCode::Unauthorized, detail.clone()),
            ApiError::Denied(detail) => oci(ErrorCode::Denied, detail.clone()),
            ApiError::InvalidRequest(detail) => (
                StatusCode::BAD_REQUEST,
                Some(ErrorCode::Unsupported),
                detail.clone(),
            ),
            ApiError::NotFound(detail) => (StatusCode::NOT_FOUND, None, detail.clone()),
            ApiError::Registry(e) => registry_wire(e),
            // The admin API's store errors take the registry's path to the wire.
            ApiError::Meta(e) => registry_wire(&RegistryError::from(e.clone())),
        }
    }
}

/// Storage failures: what the client did wrong, or an internal error without details.
fn storage_wire(e: &StorageError) -> (StatusCode, Option<ErrorCode>, String) {
    let oci = |code: ErrorCode, detail: String| {
        let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Some(code), detail)
    };
    match e {
        StorageError::BlobNotFound => oci(ErrorCode::BlobUnknown, e.to_string()),
        StorageError::UploadNotFound => oci(ErrorCode::BlobUploadUnknown, e.to_string()),
        StorageError::OffsetMismatch { .. } => oci(ErrorCode::RangeInvalid, e.to_string()),
        StorageError::Client(_) => oci(ErrorCode::BlobUploadInvalid, e.to_string()),
        // Transient failures were answered 503 before getting here.
        StorageError::Unavailable(_) | StorageError::Io(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            "storage error".into(),
        ),
    }
}

/// The registry's refusals in the spec's terms.
fn registry_wire(e: &RegistryError) -> (StatusCode, Option<ErrorCode>, String) {
    let oci = |code: ErrorCode| {
        let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Some(code), e.to_string())
    };
    match e {
        RegistryError::NameUnknown(_) => oci(ErrorCode::NameUnknown),
        RegistryError::ManifestUnknown(_) => oci(ErrorCode::ManifestUnknown),
        RegistryError::BlobUnknown(_) => oci(ErrorCode::BlobUnknown),
        RegistryError::UploadUnknown { .. } => oci(ErrorCode::BlobUploadUnknown),
        RegistryError::DigestInvalid(_) => oci(ErrorCode::DigestInvalid),
        RegistryError::TagInvalid(_) => oci(ErrorCode::TagInvalid),
        RegistryError::ManifestInvalid(_) | RegistryError::WrongSizes(_) => {
            oci(ErrorCode::ManifestInvalid)
        }
        RegistryError::MissingReferences(_) => oci(ErrorCode::ManifestBlobUnknown),
        RegistryError::RangeInvalid(_) => oci(ErrorCode::RangeInvalid),
        // Handlers turn this into a 405 with the endpoint's `Allow`.
        RegistryError::DeletesDisabled => oci(ErrorCode::Unsupported),
        RegistryError::ReadOnly(_) => oci(ErrorCode::Unsupported),
        RegistryError::Immutable(_)
        | RegistryError::TagImmutable(_)
        | RegistryError::QuotaExceeded(_) => oci(ErrorCode::Denied),
        // Transient: limits and collisions clear up; retrying later succeeds.
        RegistryError::TooManyUploads(_) | RegistryError::Conflict(_) => {
            oci(ErrorCode::TooManyRequests)
        }
        RegistryError::BodyFailed(_) => oci(ErrorCode::BlobUploadInvalid),
        RegistryError::Storage(inner) => storage_wire(inner),
        RegistryError::Meta(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            "metadata error".into(),
        ),
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        let code = match e {
            NameError::InvalidName(_) | NameError::NameTooLong => ErrorCode::NameInvalid,
            NameError::InvalidTag(_) => ErrorCode::TagInvalid,
            NameError::Digest(_) => ErrorCode::DigestInvalid,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<DigestError> for ApiError {
    fn from(e: DigestError) -> Self {
        ApiError::new(ErrorCode::DigestInvalid, e.to_string())
    }
}

impl From<ManifestError> for ApiError {
    fn from(e: ManifestError) -> Self {
        ApiError::new(ErrorCode::ManifestInvalid, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, detail) = self.wire();
        // A full disk is logged once per episode by the registry, not once per request.
        if status.is_server_error() && !self.is_storage_full() {
            tracing::error!(error = %self, "request failed");
        }
        let (code_str, message) = match code {
            Some(c) => (c.as_str(), c.message()),
            None if status == StatusCode::NOT_FOUND => ("NOT_FOUND", "not found"),
            None if status == StatusCode::BAD_REQUEST => ("INVALID_REQUEST", "invalid request"),
            None => ("UNKNOWN", "internal server error"),
        };
        let body = serde_json::json!({
            "errors": [{ "code": code_str, "message": message, "detail": detail }]
        });
        let mut response = Response::new(Body::from(body.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            ApiError::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            ApiError::Unauthorized { challenge, .. } if !challenge.is_empty() => {
                if let Ok(v) = HeaderValue::from_str(challenge) {
                    headers.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    headers.insert(header::ALLOW, v);
                }
            }
            _ if code == Some(ErrorCode::Unavailable) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    async fn answer(e: ApiError) -> (StatusCode, Option<String>, serde_json::Value) {
        let response = e.into_response();
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        let json = serde_json::from_slice(&body).unwrap_or_default();
        (status, retry_after, json)
    }

    fn code(json: &serde_json::Value) -> &str {
        json["errors"][0]["code"].as_str().unwrap_or_default()
    }

    /// A store that cannot serve right now is a 503 with `Retry-After` and an OCI body, from
    /// either store and for every transient kind; a permanent failure stays a bare 500.
    #[tokio::test]
    async fn unavailable_stores_answer_503_with_retry_after() {
        let transient = [
            RegistryError::Storage(StorageError::Unavailable("SlowDown".into())),
            RegistryError::Storage(StorageError::Io(io::ErrorKind::TimedOut.into())),
            RegistryError::Storage(StorageError::Io(io::ErrorKind::ConnectionRefused.into())),
            RegistryError::Meta(MetaError::Unavailable("database is locked".into())),
        ];
        for e in transient {
            let what = e.to_string();
            let (status, retry_after, json) = answer(ApiError::Registry(e)).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}");
            assert_eq!(retry_after.as_deref(), Some("1"), "{what}");
            assert_eq!(code(&json), "UNAVAILABLE", "{what}");
        }
        let (status, retry_after, json) =
            answer(ApiError::Meta(MetaError::Unavailable("refused".into()))).await;
        assert_eq!(
            (status, retry_after.as_deref()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("1"))
        );
        assert_eq!(code(&json), "UNAVAILABLE");

        let permanent =
            RegistryError::Storage(StorageError::Io(io::ErrorKind::PermissionDenied.into()));
        let (status, retry_after, json) = answer(ApiError::Registry(permanent)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(retry_after, None);
        assert_eq!(code(&json), "UNKNOWN");
    }
}
