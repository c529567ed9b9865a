//! `GET`/`HEAD`/`PUT /v2/<name>/manifests/<reference>`: the HTTP side of manifests. The body is
//! read within the size limit here; validation and storage are the registry's.

use axum::body::Body;
use axum::response::Response;
use berth_oci::{ErrorCode, Reference, RepositoryName};
use berth_registry::Actor;
use http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;

use super::{empty, etag, etag_matches, header_str, no_content, Query, ResponseExt, UnreadBody};
use crate::error::ApiError;
use crate::Api;

pub async fn get(
    api: &Api,
    actor: &Actor,
    name: &RepositoryName,
    reference: &Reference,
    head: bool,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let m = api.registry.manifest(actor, name, reference, !head).await?;
    if etag_matches(headers, &m.digest) {
        return Ok(no_content(StatusCode::NOT_MODIFIED)
            .with_header("docker-content-digest", m.digest.as_str())
            .with_header(header::ETAG, etag(&m.digest)));
    }
    let len = m.content.len();
    let body = if head {
        Body::empty()
    } else {
        Body::from(m.content.clone())
    };
    Ok(empty(StatusCode::OK, body)
        .with_header(header::CONTENT_TYPE, &m.media_type)
        .with_header(header::CONTENT_LENGTH, len.to_string())
        .with_header("docker-content-digest", m.digest.as_str())
        .with_header(header::ETAG, etag(&m.digest)))
}

/// Reads the manifest, at most `limit` bytes. Past the limit the rest of the body is handed
/// back unread, for `handle` to drain like that of any refused request.
async fn read_limited(
    unread: &mut UnreadBody,
    limit: usize,
    stall: std::time::Duration,
) -> Result<bytes::Bytes, ApiError> {
    let mut body = unread.take();
    let mut collected = bytes::BytesMut::new();
    loop {
        let Ok(next) = tokio::time::timeout(stall, body.frame()).await else {
            return Err(ApiError::new(
                ErrorCode::ManifestInvalid,
                format!("the manifest body sent nothing for {} s", stall.as_secs()),
            ));
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| {
            ApiError::new(
                ErrorCode::ManifestInvalid,
                format!("reading the manifest failed: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if collected.len() + data.len() > limit {
            unread.give_back(body);
            return Err(ApiError::new(
                ErrorCode::ManifestTooLarge,
                format!("manifests are limited to {limit} bytes"),
            ));
        }
        collected.extend_from_slice(&data);
    }
    Ok(collected.freeze())
}

pub async fn put(
    api: &Api,
    actor: &Actor,
    name: &RepositoryName,
    reference: &Reference,
    query: &Query,
    headers: &HeaderMap,
    body: &mut UnreadBody,
) -> Result<Response, ApiError> {
    let content_type = header_str(headers, header::CONTENT_TYPE);
    let bytes = read_limited(
        body,
        api.registry.config.max_manifest_bytes,
        api.config.body_read_timeout,
    )
    .await?;
    let tags: Vec<&str> = query.all("tag").collect();
    let pushed = api
        .registry
        .push_manifest(actor, name, reference, content_type, &bytes, &tags)
        .await?;
    let digest = pushed.digest;
    let mut response = no_content(StatusCode::CREATED)
        .with_header(header::LOCATION, format!("/v2/{name}/manifests/{digest}"))
        .with_header("docker-content-digest", digest.as_str());
    if let Some(subject) = &pushed.subject {
        response = response.with_header("oci-subject", subject.as_str());
    }
    Ok(response)
}
