//! `GET`/`HEAD /v2/<name>/blobs/<digest>`, with single byte ranges (RFC 9110).

use std::ops::Range;

use axum::body::Body;
use axum::response::Response;
use berth_oci::{Digest, RepositoryName};
use berth_registry::BlobLookup;
use http::{header, HeaderMap, StatusCode};

use super::{empty, etag, etag_matches, header_str, no_content, ResponseExt};
use crate::error::ApiError;
use crate::Api;

pub async fn get(
    api: &Api,
    name: &RepositoryName,
    digest: &Digest,
    head: bool,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let size = match api.registry.blob(name, digest).await? {
        BlobLookup::Blob { size } => size,
        BlobLookup::Manifest(m) => {
            let len = m.content.len();
            let body = if head {
                Body::empty()
            } else {
                Body::from(m.content.clone())
            };
            return Ok(empty(StatusCode::OK, body)
                .with_header(header::CONTENT_LENGTH, len.to_string())
                .with_header(header::CONTENT_TYPE, &m.media_type)
                .with_header("docker-content-digest", digest.as_str())
                .with_header(header::ETAG, etag(digest)));
        }
    };
    if etag_matches(headers, digest) {
        return Ok(no_content(StatusCode::NOT_MODIFIED)
            .with_header("docker-content-digest", digest.as_str())
            .with_header(header::ETAG, etag(digest)));
    }
    if !head {
        if let Some(url) = api.registry.download_url(digest).await? {
            // The client repeats its Range header to the store, which answers it.
            return Ok(no_content(StatusCode::TEMPORARY_REDIRECT)
                .with_header(header::LOCATION, url)
                .with_header("docker-content-digest", digest.as_str()));
        }
    }
    let range = match header_str(headers, header::RANGE).map(|v| parse_range(v, size)) {
        None | Some(RangeRequest::Whole) => None,
        Some(RangeRequest::Part(span)) => Some(span),
        Some(RangeRequest::Unsatisfiable) => return Err(ApiError::RangeNotSatisfiable { size }),
    };
    let (status, span) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.clone()),
        None => (StatusCode::OK, 0..size),
    };
    let body = if head || span.is_empty() {
        Body::empty()
    } else {
        Body::from_stream(api.registry.read_blob(digest, span.clone()).await?)
    };
    let mut response = empty(status, body)
        .with_header(header::CONTENT_LENGTH, (span.end - span.start).to_string())
        .with_header(header::CONTENT_TYPE, "application/octet-stream")
        .with_header(header::ACCEPT_RANGES, "bytes")
        .with_header("docker-content-digest", digest.as_str())
        .with_header(header::ETAG, etag(digest));
    if range.is_some() {
        response = response.with_header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", span.start, span.end.saturating_sub(1)),
        );
    }
    Ok(response)
}

/// What a `Range` header asks of a blob.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// Serve the whole blob (200): the header names a unit other than bytes, which RFC 9110
    /// says to ignore, or several ranges, which a 200 with everything also satisfies.
    Whole,
    Part(Range<u64>),
    /// 416: a malformed byte range, or one that starts past the end.
    Unsatisfiable,
}

/// Parses a `Range` header against a blob of `size` bytes (one byte range is served as 206).
pub fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some((unit, spec)) = value.trim().split_once('=') else {
        return RangeRequest::Unsatisfiable;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeRequest::Whole;
    }
    let spec = spec.trim();
    if spec.contains(',') {
        let all_valid = spec
            .split(',')
            .all(|one| one_range(one.trim(), size).is_some());
        return if all_valid {
            RangeRequest::Whole
        } else {
            RangeRequest::Unsatisfiable
        };
    }
    one_range(spec, size).map_or(RangeRequest::Unsatisfiable, RangeRequest::Part)
}

/// One `first-last`, `first-` or `-suffix` range; `None` when malformed or unsatisfiable.
fn one_range(spec: &str, size: u64) -> Option<Range<u64>> {
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    if first.is_empty() {
        // Suffix range: the last N bytes.
        let n = number(last)?;
        if n == 0 || size == 0 {
            return None;
        }
        return Some(size.saturating_sub(n)..size);
    }
    let start = number(first)?;
    if start >= size {
        return None;
    }
    let end = if last.is_empty() {
        size
    } else {
        let end = number(last)?;
        if end < start {
            return None;
        }
        end.saturating_add(1).min(size)
    };
    Some(start..end)
}

#[cfg(test)]
mod tests {
    use super::{parse_range, RangeRequest};

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Part(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Part(90..100));
        assert_eq!(parse_range("bytes=-1000", 100), Part(0..100));
        assert_eq!(
            parse_range("bytes=50-5000", 100),
            Part(50..100),
            "clamped to what exists"
        );
        assert_eq!(
            parse_range("bytes=500-0", 1000),
            Unsatisfiable,
            "end before start"
        );
        assert_eq!(
            parse_range("bytes=100-200", 100),
            Unsatisfiable,
            "start past the end"
        );
        assert_eq!(
            parse_range("bytes=0-1,5-6", 100),
            Whole,
            "several ranges: all of it"
        );
        assert_eq!(parse_range("bytes=0-1,500-600", 100), Unsatisfiable);
        assert_eq!(
            parse_range("items=0-1", 100),
            Whole,
            "unknown units are ignored"
        );
        assert_eq!(parse_range("bytes=a-b", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("nonsense", 100), Unsatisfiable);
    }
}
