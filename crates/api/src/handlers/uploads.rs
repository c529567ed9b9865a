//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (session, single-request monolithic, or
//! cross-repository mount), then `PATCH` chunks, `PUT ?digest=` to finish, `GET` for status and
//! `DELETE` to cancel.
//!
//! Bytes are hashed as they stream to storage; a blob is committed only after the computed
//! digest equals the one the client named. A wrong digest discards the upload.

use axum::response::Response;
use berth_meta::UploadSession;
use berth_oci::{Algorithm, Digest, ErrorCode, Hasher, RepositoryName};
use http::{header, HeaderMap, StatusCode};
use rand::RngCore;

use super::{body_stream, header_str, no_content, stall_timeout, Query, ResponseExt, UnreadBody};
use crate::access::{Access, Need};
use crate::error::ApiError;
use crate::uploads::{hasher_at, HashState};
use crate::Registry;

/// 128 random bits: session ids are capabilities and must not be guessable.
fn new_upload_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The request body for the blob store, abandoned when it stalls (no byte for the configured
/// time); a slow body that keeps moving is read to the end.
fn upload_body(registry: &Registry, body: &mut UnreadBody) -> berth_storage::ByteStream {
    stall_timeout(body_stream(body.take()), registry.config.body_read_timeout)
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
    registry: &Registry,
    access: &Access,
    name: &RepositoryName,
    query: &Query,
    body: &mut UnreadBody,
) -> Result<Response, ApiError> {
    if let Some(digest) = query.digest("mount")? {
        // A mount the caller cannot have (unknown source, blob not there, source not readable
        // by the caller) becomes a plain upload session, as the spec asks.
        let from = query
            .get("from")
            .and_then(|f| f.parse::<RepositoryName>().ok());
        let readable = |f: &RepositoryName| {
            registry.may(
                access,
                &Need::Repository(f.clone(), berth_auth::Action::Pull),
            )
        };
        if let Some(from) = from.filter(readable) {
            if registry
                .meta
                .mount_blob(&from, name, &digest)
                .await?
                .is_some()
            {
                return Ok(blob_created(name, &digest));
            }
        }
    }
    let algorithm = match query.get("digest-algorithm") {
        Some(a) => a.parse::<Algorithm>()?,
        None => Algorithm::Sha256,
    };
    let id = new_upload_id();
    registry.blobs.create_upload(&id).await?;

    if let Some(digest) = query.digest("digest")? {
        let hasher = digest.algorithm().hasher();
        let appended = registry
            .blobs
            .append_upload(&id, 0, upload_body(registry, body), hasher)
            .await;
        let completed = match appended {
            Ok(a) => complete(registry, name, &id, &digest, a.hasher, a.size).await,
            Err(e) => Err(e.into()),
        };
        if completed.is_err() {
            // No session refers to these bytes: a failed single-request push keeps nothing.
            if let Err(e) = registry.blobs.delete_upload(&id).await {
                tracing::warn!("discarding a failed single-request upload: {e}");
            }
        }
        return completed;
    }

    let session = UploadSession {
        id: id.clone(),
        repository: name.clone(),
        algorithm,
        created_at: berth_meta::now(),
        owner: access.principal.name().into_owned(),
    };
    if let Err(e) = registry
        .meta
        .create_upload(&session, registry.config.upload_limits)
        .await
    {
        registry.blobs.delete_upload(&id).await?;
        return Err(e.into());
    }
    registry.uploads.started(session);
    Ok(progress(name, &id, 0, StatusCode::ACCEPTED))
}

async fn session(
    registry: &Registry,
    name: &RepositoryName,
    id: &str,
) -> Result<UploadSession, ApiError> {
    let known = match registry.uploads.session(id) {
        Some(s) => Some(s),
        None => registry.meta.get_upload(id).await?,
    };
    match known {
        Some(s) if &s.repository == name => Ok(s),
        _ => Err(ApiError::new(
            ErrorCode::BlobUploadUnknown,
            format!("no upload {id} in {name}"),
        )),
    }
}

/// Bytes stored so far: the hash state's offset when this process took the last chunk, else
/// storage's answer. Only an append may trust the state, since it re-checks the offset against
/// storage before writing.
async fn current_size(
    registry: &Registry,
    id: &str,
    state: Option<&HashState>,
) -> Result<u64, ApiError> {
    if let Some(state) = state {
        return Ok(state.offset);
    }
    registry
        .blobs
        .upload_size(id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::BlobUploadUnknown, "upload has no data"))
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

/// Checks a chunk's `Content-Range` against the bytes already received: chunks must arrive in
/// order, without gaps or overlap, or the request gets 416.
fn check_chunk(headers: &HeaderMap, size: u64) -> Result<(), ApiError> {
    let Some(value) = header_str(headers, header::CONTENT_RANGE) else {
        return Ok(());
    };
    let invalid = |detail: String| ApiError::new(ErrorCode::RangeInvalid, detail);
    let (start, end) = parse_content_range(value)
        .ok_or_else(|| invalid(format!("Content-Range {value:?} is not <start>-<end>")))?;
    if start != size {
        return Err(invalid(format!(
            "chunk starts at {start}, the upload holds {size} bytes"
        )));
    }
    let length = header_str(headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok());
    if length.is_some_and(|l| l != end - start + 1) {
        return Err(invalid(format!(
            "Content-Range {value:?} does not match Content-Length"
        )));
    }
    Ok(())
}

pub async fn patch(
    registry: &Registry,
    name: &RepositoryName,
    id: &str,
    headers: &HeaderMap,
    body: &mut UnreadBody,
) -> Result<Response, ApiError> {
    let session = session(registry, name, id).await?;
    let slot = registry.uploads.slot(id);
    let mut state = slot.lock().await;
    let size = current_size(registry, id, state.as_ref()).await?;
    check_chunk(headers, size)?;
    let hasher = hasher_at(&*registry.blobs, id, size, session.algorithm, state.take()).await?;
    let appended = registry
        .blobs
        .append_upload(id, size, upload_body(registry, body), hasher)
        .await?;
    let new_size = appended.size;
    *state = Some(HashState {
        offset: appended.size,
        hasher: appended.hasher,
    });
    Ok(progress(name, id, new_size, StatusCode::ACCEPTED))
}

pub async fn finish(
    registry: &Registry,
    name: &RepositoryName,
    id: &str,
    query: &Query,
    headers: &HeaderMap,
    body: &mut UnreadBody,
) -> Result<Response, ApiError> {
    session(registry, name, id).await?;
    let digest = query.digest("digest")?.ok_or_else(|| {
        ApiError::new(ErrorCode::DigestInvalid, "the digest parameter is required")
    })?;
    let slot = registry.uploads.slot(id);
    let mut state = slot.lock().await;
    // From storage, not the hash state: a stale state must not decide the digest check.
    let size = current_size(registry, id, None).await?;
    check_chunk(headers, size)?;
    let hasher = hasher_at(&*registry.blobs, id, size, digest.algorithm(), state.take()).await?;
    // Most clients finish with an empty PUT; skip the append (and its fsync) then.
    let (hasher, size) = if has_body(headers) {
        let appended = registry
            .blobs
            .append_upload(id, size, upload_body(registry, body), hasher)
            .await?;
        (appended.hasher, appended.size)
    } else {
        (hasher, size)
    };
    complete(registry, name, id, &digest, hasher, size).await
}

/// Whether a request carries body bytes (a non-zero length, or a chunked body).
fn has_body(headers: &HeaderMap) -> bool {
    match header_str(headers, header::CONTENT_LENGTH) {
        Some(len) => len.trim() != "0",
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

/// Verifies the digest and commits, or discards the upload.
async fn complete(
    registry: &Registry,
    name: &RepositoryName,
    id: &str,
    digest: &Digest,
    hasher: Hasher,
    size: u64,
) -> Result<Response, ApiError> {
    let computed = hasher.finish();
    registry.uploads.forget(id);
    if &computed != digest {
        registry.blobs.delete_upload(id).await?;
        registry.meta.delete_upload(id).await?;
        return Err(ApiError::new(
            ErrorCode::DigestInvalid,
            format!("the uploaded bytes hash to {computed}, not {digest}"),
        ));
    }
    // Reserve before placing the bytes: garbage collection leaves a reserved blob alone, and
    // a refusal here (a full disk, a collection in progress) leaves the upload staged.
    registry.reserve_blob(digest, size).await?;
    registry.blobs.commit_upload(id, digest).await?;
    registry.meta.add_blob(name, digest, size, Some(id)).await?;
    Ok(blob_created(name, digest))
}

pub async fn status(
    registry: &Registry,
    name: &RepositoryName,
    id: &str,
) -> Result<Response, ApiError> {
    session(registry, name, id).await?;
    let size = current_size(registry, id, None).await?;
    Ok(progress(name, id, size, StatusCode::NO_CONTENT))
}

pub async fn cancel(
    registry: &Registry,
    name: &RepositoryName,
    id: &str,
) -> Result<Response, ApiError> {
    session(registry, name, id).await?;
    let slot = registry.uploads.slot(id);
    let _guard = slot.lock().await;
    registry.blobs.delete_upload(id).await?;
    registry.meta.delete_upload(id).await?;
    registry.uploads.forget(id);
    Ok(no_content(StatusCode::NO_CONTENT))
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
