//! Blob uploads over HTTP: `POST /v2/<name>/blobs/uploads/` (session, single-request push, or
//! cross-repository mount), `PATCH` chunks, `PUT ?digest=` to finish, `GET` for status. The
//! headers and parameters are read here; the rules (order of chunks, digest check, commit) are
//! the registry's.

use axum::response::Response;
use berth_oci::{Algorithm, Digest, RepositoryName};
use berth_registry::{Actor, ChunkRange, RegistryError};
use http::{header, HeaderMap, StatusCode};

use super::{header_str, no_content, stall_timeout, Query, ResponseExt, UnreadBody};
use crate::access::{Access, Need};
use crate::error::ApiError;
use crate::Api;

/// The request body for the blob store, abandoned when it stalls (no byte for the configured
/// time); a slow body that keeps moving is read to the end.
fn upload_body(api: &Api, body: &mut UnreadBody) -> berth_storage::ByteStream {
    stall_timeout(body.lend(), api.config.body_read_timeout)
}

fn upload_location(name: &RepositoryName, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// `Range: 0-<last byte>` as Distribution reports it (`0-0` for an empty upload).
fn progress(name: &RepositoryName, id: &str, size: u64, status: StatusCode) -> Response {
    no_content(status)
        .with_header(header::LOCATION, upload_location(name, id))
        .with_header(header::RANGE, format!("0-{}", size.saturating_sub(1)))
        .with_header("docker-upload-uuid", id)
}

fn blob_created(name: &RepositoryName, digest: &Digest) -> Response {
    no_content(StatusCode::CREATED)
        .with_header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
        .with_header("docker-content-digest", digest.as_str())
}

pub async fn start(
    api: &Api,
    access: &Access,
    name: &RepositoryName,
    query: &Query,
    headers: &HeaderMap,
    body: &mut UnreadBody,
) -> Result<Response, ApiError> {
    let actor = access.actor();
    if let Some(digest) = query.digest("mount")? {
        // A mount the caller cannot have (unknown source, blob not there, source not readable
        // by the caller) becomes a plain upload session, as the spec asks.
        let from = query
            .get("from")
            .and_then(|f| f.parse::<RepositoryName>().ok());
        let readable = |f: &RepositoryName| {
            api.may(
                access,
                &Need::Repository(f.clone(), berth_auth::Action::Pull),
            )
        };
        if let Some(from) = from.filter(readable) {
            if api
                .registry
                .mount_blob(&actor, &from, name, &digest)
                .await?
            {
                return Ok(blob_created(name, &digest));
            }
        }
    }
    let algorithm = match query.get("digest-algorithm") {
        Some(a) => a.parse::<Algorithm>()?,
        None => Algorithm::Sha256,
    };
    if let Some(digest) = query.digest("digest")? {
        let length = chunk_of(headers)?.1;
        api.registry
            .push_blob(&actor, name, &digest, length, upload_body(api, body))
            .await?;
        return Ok(blob_created(name, &digest));
    }
    let id = api.registry.start_upload(&actor, name, algorithm).await?;
    Ok(progress(name, &id, 0, StatusCode::ACCEPTED))
}

/// `Content-Range: <start>-<end>` (inclusive), exactly as the spec writes it
/// (`^[0-9]+-[0-9]+$`): no unit, no spaces, no total.
fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let (a, b) = value.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return None;
    }
    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    (a <= b).then_some((a, b))
}

/// The chunk's `Content-Range` and `Content-Length`, when given.
fn chunk_of(headers: &HeaderMap) -> Result<(Option<ChunkRange>, Option<u64>), ApiError> {
    let length = header_str(headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok());
    let Some(value) = header_str(headers, header::CONTENT_RANGE) else {
        return Ok((None, length));
    };
    let (start, end) = parse_content_range(value).ok_or_else(|| {
        RegistryError::RangeInvalid(format!("Content-Range {value:?} is not <start>-<end>"))
    })?;
    Ok((Some(ChunkRange { start, end }), length))
}

pub async fn patch(
    api: &Api,
    name: &RepositoryName,
    id: &str,
    headers: &HeaderMap,
    body: &mut UnreadBody,
) -> Result<Response, ApiError> {
    let (range, length) = chunk_of(headers)?;
    let size = api
        .registry
        .append_upload(name, id, range, length, upload_body(api, body))
        .await?;
    Ok(progress(name, id, size, StatusCode::ACCEPTED))
}

pub async fn finish(
    api: &Api,
    actor: &Actor,
    name: &RepositoryName,
    id: &str,
    query: &Query,
    headers: &HeaderMap,
    body: &mut UnreadBody,
) -> Result<Response, ApiError> {
    let digest = query
        .digest("digest")?
        .ok_or_else(|| RegistryError::DigestInvalid("the digest parameter is required".into()))?;
    let (range, length) = chunk_of(headers)?;
    // Most clients finish with an empty PUT; skip the append (and its fsync) then.
    let last_chunk = has_body(headers).then(|| upload_body(api, body));
    api.registry
        .finish_upload(actor, name, id, &digest, range, length, last_chunk)
        .await?;
    Ok(blob_created(name, &digest))
}

/// Whether a request carries body bytes (a non-zero length, or a chunked body).
fn has_body(headers: &HeaderMap) -> bool {
    match header_str(headers, header::CONTENT_LENGTH) {
        Some(len) => len.trim() != "0",
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

pub async fn status(api: &Api, name: &RepositoryName, id: &str) -> Result<Response, ApiError> {
    let size = api.registry.upload_size(name, id).await?;
    Ok(progress(name, id, size, StatusCode::NO_CONTENT))
}

#[cfg(test)]
mod tests {
    use super::parse_content_range;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("5-5"), Some((5, 5)));
        for refused in [
            "9-1",
            "x-1",
            "100",
            "0 - 9",
            " 0-9",
            "bytes 100-199/1000",
            "bytes=5-5",
            "-5",
            "1-",
        ] {
            assert_eq!(parse_content_range(refused), None, "{refused:?}");
        }
    }
}
