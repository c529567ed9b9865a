//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.
//!
//! Manifests are stored and served byte for byte with the media type they were pushed with.
//! A push is validated (JSON, media type, references present in the repository) and then
//! recorded with all its tags in one metadata transaction.

use axum::body::Body;
use axum::response::Response;
use berth_meta::NewManifest;
use berth_oci::manifest::MANIFEST_MEDIA_TYPES;
use berth_oci::{Digest, ErrorCode, Manifest, Reference, RepositoryName, Tag};
use http::{header, HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;

use super::{empty, etag, etag_matches, header_str, no_content, Query, ResponseExt, UnreadBody};
use crate::error::ApiError;
use crate::Registry;

pub async fn get(
    registry: &Registry,
    name: &RepositoryName,
    reference: &Reference,
    head: bool,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let Some(m) = registry.meta.get_manifest(name, reference).await? else {
        return Err(ApiError::new(
            ErrorCode::ManifestUnknown,
            format!("{name}:{reference} does not exist"),
        ));
    };
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
    registry: &Registry,
    name: &RepositoryName,
    reference: &Reference,
    query: &Query,
    headers: &HeaderMap,
    body: &mut UnreadBody,
) -> Result<Response, ApiError> {
    let content_type = header_str(headers, header::CONTENT_TYPE).map(str::to_owned);
    let bytes = read_limited(
        body,
        registry.config.max_manifest_bytes,
        registry.config.body_read_timeout,
    )
    .await?;
    let manifest = Manifest::parse(&bytes, content_type.as_deref())?;

    let (digest, mut tags) = match reference {
        Reference::Digest(claimed) => {
            let computed = Digest::of(claimed.algorithm(), &bytes);
            if &computed != claimed {
                return Err(ApiError::new(
                    ErrorCode::DigestInvalid,
                    format!("the manifest hashes to {computed}, not {claimed}"),
                ));
            }
            (computed, Vec::new())
        }
        Reference::Tag(tag) => (Digest::sha256_of(&bytes), vec![tag.clone()]),
    };
    for tag in query.all("tag") {
        tags.push(tag.parse::<Tag>()?);
    }
    // Serve back exactly the type the client pushed, when it is a manifest type.
    let media_type = content_type
        .as_deref()
        .filter(|ct| MANIFEST_MEDIA_TYPES.contains(ct))
        .unwrap_or(&manifest.media_type);
    let annotations_json = manifest
        .annotations
        .as_ref()
        .and_then(|a| serde_json::to_string(a).ok());

    registry
        .meta
        .put_manifest(NewManifest {
            repository: name,
            digest: &digest,
            media_type,
            content: &bytes,
            blobs: &manifest.blobs,
            children: &manifest.children,
            allow_missing: registry.config.allow_sparse_manifests,
            subject: manifest.subject.as_ref(),
            artifact_type: manifest.artifact_type.as_deref(),
            annotations_json,
            tags: &tags,
        })
        .await?;

    let mut response = no_content(StatusCode::CREATED)
        .with_header(header::LOCATION, format!("/v2/{name}/manifests/{digest}"))
        .with_header("docker-content-digest", digest.as_str());
    if let Some(subject) = &manifest.subject {
        response = response.with_header("oci-subject", subject.as_str());
    }
    Ok(response)
}

pub async fn delete(
    registry: &Registry,
    name: &RepositoryName,
    reference: &Reference,
) -> Result<Response, ApiError> {
    if !registry.config.delete_enabled {
        return Err(super::method_not_allowed(
            &[Method::GET, Method::HEAD, Method::PUT, Method::DELETE],
            &Method::DELETE,
            "deletes are disabled on this registry",
        ));
    }
    let deleted = match reference {
        Reference::Digest(d) => registry.meta.delete_manifest(name, d).await?,
        // Deleting by tag removes the tag only; the manifest stays reachable by digest.
        Reference::Tag(t) => registry.meta.delete_tag(name, t).await?,
    };
    if deleted {
        Ok(no_content(StatusCode::ACCEPTED))
    } else {
        Err(ApiError::new(
            ErrorCode::ManifestUnknown,
            format!("{name}:{reference} does not exist"),
        ))
    }
}
