//! Request handlers, one module per resource. `handle` picks the handler for an endpoint and
//! method; everything shared by several handlers (query parsing, common headers) is here.

mod blobs;
mod listing;
mod manifests;
mod uploads;

use std::io;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use berth_oci::{Digest, ErrorCode};
use berth_storage::ByteStream;
use futures_util::TryStreamExt;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use berth_registry::RegistryError;

use crate::access::{client_address, Access};
use crate::error::ApiError;
use crate::route::Endpoint;
use crate::Api;

/// A client that is refused while still sending its body reads the error only if we read
/// that body first (else it sees a broken pipe); up to this much is read and dropped, beyond
/// it the connection is simply closed.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// The request body, until a handler takes it. What a failed request left unread is drained
/// (up to [`DRAIN_LIMIT`]) before its error goes out, whichever check refused it — also when
/// the body was lent to the registry as a stream that was dropped before it was read.
pub struct UnreadBody {
    body: Option<Body>,
    returned: Arc<Mutex<Option<Body>>>,
}

impl UnreadBody {
    fn new(body: Body) -> UnreadBody {
        UnreadBody {
            body: Some(body),
            returned: Arc::default(),
        }
    }

    pub fn take(&mut self) -> Body {
        self.body.take().unwrap_or_else(Body::empty)
    }

    /// Returns a body a handler read only part of before refusing the request.
    pub fn give_back(&mut self, body: Body) {
        self.body = Some(body);
    }

    /// The body as a stream for the blob store. A stream dropped before its first poll (the
    /// registry refused the request before reading) gives the body back, to be drained.
    pub fn lend(&mut self) -> ByteStream {
        Box::pin(Lent {
            body: Some(self.take()),
            stream: None,
            back: self.returned.clone(),
        })
    }

    async fn drain(self) {
        let returned = self
            .returned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(body) = self.body.or(returned) else {
            return;
        };
        let mut stream = body_stream(body);
        let mut seen = 0;
        while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut stream).await {
            seen += chunk.len();
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
}

/// A body lent as a stream: read on first poll, handed back when dropped unread.
struct Lent {
    body: Option<Body>,
    stream: Option<ByteStream>,
    back: Arc<Mutex<Option<Body>>>,
}

impl futures_util::Stream for Lent {
    type Item = io::Result<bytes::Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.stream.is_none() {
            let body = self.body.take().unwrap_or_else(Body::empty);
            self.stream = Some(body_stream(body));
        }
        match self.stream.as_mut() {
            Some(stream) => stream.as_mut().poll_next(cx),
            None => std::task::Poll::Ready(None),
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(body) = self.body.take() {
            *self.back.lock().unwrap_or_else(|p| p.into_inner()) = Some(body);
        }
    }
}

pub async fn handle(api: &Api, endpoint: Endpoint, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let mut body = UnreadBody::new(body);
    let allowed = endpoint.allowed_methods();
    let result = dispatch(api, endpoint, &parts, &mut body)
        .await
        .map_err(|e| match e {
            ApiError::Registry(RegistryError::DeletesDisabled) => method_not_allowed(
                allowed,
                &Method::DELETE,
                "deletes are disabled on this registry",
            ),
            ApiError::Registry(RegistryError::ReadOnly(reason)) => {
                let reads: Vec<&str> = allowed
                    .iter()
                    .filter(|m| matches!(**m, Method::GET | Method::HEAD))
                    .map(Method::as_str)
                    .collect();
                ApiError::MethodNotAllowed {
                    allow: reads.join(", "),
                    detail: format!("{reason}; pulls still work"),
                }
            }
            other => other,
        });
    if result.is_err() {
        body.drain().await;
    }
    result
}

async fn dispatch(
    api: &Api,
    endpoint: Endpoint,
    request: &http::request::Parts,
    body: &mut UnreadBody,
) -> Result<Response, ApiError> {
    let method = request.method.clone();
    let query = Query::parse(request.uri.query());
    let access = request
        .extensions
        .get::<Access>()
        .cloned()
        .unwrap_or_else(|| Access::anonymous(client_address(&request.extensions)));
    // Built only where an event will name the caller.
    let actor = || access.actor();
    let headers = &request.headers;
    let allowed = endpoint.allowed_methods();
    match (endpoint, method) {
        (Endpoint::InvalidTag { name, reference }, Method::GET | Method::HEAD | Method::DELETE) => {
            Err(ApiError::new(
                ErrorCode::ManifestUnknown,
                format!("{name}:{reference} does not exist ({reference:?} is not a valid tag)"),
            ))
        }
        (Endpoint::InvalidTag { reference, .. }, _) => Err(ApiError::new(
            ErrorCode::TagInvalid,
            format!("{reference:?} is not a valid tag"),
        )),
        (Endpoint::Base, Method::GET | Method::HEAD) => Ok(empty(StatusCode::OK, Body::from("{}"))
            .with_header(header::CONTENT_TYPE, "application/json")),
        (Endpoint::Catalog, Method::GET) => listing::catalog(api, &access, &query).await,
        (Endpoint::Tags { name }, Method::GET) => listing::tags(api, &name, &query).await,
        (Endpoint::Referrers { name, digest }, Method::GET) => {
            listing::referrers(api, &name, &digest, &query).await
        }
        (Endpoint::Manifest { name, reference }, m @ (Method::GET | Method::HEAD)) => {
            manifests::get(api, &actor(), &name, &reference, m == Method::HEAD, headers).await
        }
        (Endpoint::Manifest { name, reference }, Method::PUT) => {
            manifests::put(api, &actor(), &name, &reference, &query, headers, body).await
        }
        (Endpoint::Manifest { name, reference }, Method::DELETE) => {
            api.registry
                .delete_manifest(&actor(), &name, &reference)
                .await?;
            Ok(no_content(StatusCode::ACCEPTED))
        }
        (Endpoint::Blob { name, digest }, m @ (Method::GET | Method::HEAD)) => {
            blobs::get(api, &name, &digest, m == Method::HEAD, headers).await
        }
        (Endpoint::Blob { name, digest }, Method::DELETE) => {
            api.registry.delete_blob(&actor(), &name, &digest).await?;
            Ok(no_content(StatusCode::ACCEPTED)
                .with_header("docker-content-digest", digest.as_str()))
        }
        (Endpoint::UploadStart { name }, Method::POST) => {
            uploads::start(api, &access, &name, &query, headers, body).await
        }
        (Endpoint::Upload { name, id }, Method::PATCH) => {
            uploads::patch(api, &name, &id, headers, body).await
        }
        (Endpoint::Upload { name, id }, Method::PUT) => {
            uploads::finish(api, &actor(), &name, &id, &query, headers, body).await
        }
        (Endpoint::Upload { name, id }, Method::GET) => uploads::status(api, &name, &id).await,
        (Endpoint::Upload { name, id }, Method::DELETE) => {
            api.registry.cancel_upload(&name, &id).await?;
            Ok(no_content(StatusCode::NO_CONTENT))
        }
        (_, method) => Err(method_not_allowed(allowed, &method, "")),
    }
}

/// 405 with the `Allow` header RFC 9110 requires: the endpoint's methods but `refused`.
pub fn method_not_allowed(allowed: &[Method], refused: &Method, why: &str) -> ApiError {
    let allow: Vec<&str> = allowed
        .iter()
        .filter(|m| *m != refused)
        .map(Method::as_str)
        .collect();
    let detail = if why.is_empty() {
        format!(
            "method {refused} is not allowed here; use {}",
            allow.join(", ")
        )
    } else {
        why.to_owned()
    };
    ApiError::MethodNotAllowed {
        allow: allow.join(", "),
        detail,
    }
}

/// Query parameters, in order, repeated keys kept (`?tag=a&tag=b`).
pub struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The digest named by `key`; given twice, the request is ambiguous and refused.
    pub fn digest(&self, key: &str) -> Result<Option<Digest>, ApiError> {
        if self.all(key).nth(1).is_some() {
            return Err(ApiError::new(
                ErrorCode::DigestInvalid,
                format!("the {key} parameter is given more than once"),
            ));
        }
        self.get(key)
            .map(|d| d.parse().map_err(ApiError::from))
            .transpose()
    }
}

/// Builder sugar for responses assembled by hand.
pub trait ResponseExt {
    fn with_header(self, name: impl header::IntoHeaderName, value: impl AsRef<str>) -> Self;
}

impl ResponseExt for Response {
    fn with_header(mut self, name: impl header::IntoHeaderName, value: impl AsRef<str>) -> Self {
        // Every value we set is ASCII we built ourselves; an invalid one is dropped, never panics.
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.headers_mut().insert(name, v);
        }
        self
    }
}

pub fn empty(status: StatusCode, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

/// A response with no body and an explicit `Content-Length: 0`.
pub fn no_content(status: StatusCode) -> Response {
    empty(status, Body::empty()).with_header(header::CONTENT_LENGTH, "0")
}

/// The request body as a stream for the blob store.
pub fn body_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(io::Error::other))
}

/// Ends `stream` with a `TimedOut` error when no chunk arrives within `limit`: the timeout is
/// per chunk, so a slow body that keeps moving is read to its end.
pub fn stall_timeout(stream: ByteStream, limit: std::time::Duration) -> ByteStream {
    Box::pin(Stalling {
        inner: Some(stream),
        limit,
        last: tokio::time::Instant::now(),
        timer: Box::pin(tokio::time::sleep(limit)),
    })
}

/// One timer per body, re-armed only when it fires (to the last chunk's time plus the limit),
/// not per chunk: a blob streams tens of thousands of chunks per GiB.
struct Stalling {
    inner: Option<ByteStream>,
    limit: std::time::Duration,
    last: tokio::time::Instant,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl futures_util::Stream for Stalling {
    type Item = io::Result<bytes::Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(item)) => {
                self.last = tokio::time::Instant::now();
                return Poll::Ready(Some(item));
            }
            Poll::Ready(None) => {
                self.inner = None;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let deadline = self.last + self.limit;
            if tokio::time::Instant::now() >= deadline {
                self.inner = None;
                let stalled = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the request body sent nothing for {} s",
                        self.limit.as_secs()
                    ),
                );
                return Poll::Ready(Some(Err(stalled)));
            }
            self.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

pub fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `If-None-Match` against a digest ETag.
pub fn etag_matches(headers: &HeaderMap, digest: &Digest) -> bool {
    header_str(headers, header::IF_NONE_MATCH).is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().trim_matches('"') == digest.as_str() || t.trim() == "*")
    })
}

pub fn etag(digest: &Digest) -> String {
    format!("\"{digest}\"")
}
