//! Moving a completed upload to its blob key, server-side.
//!
//! S3 copies an object of up to 5 GiB in one CopyObject. Above that (and layers of 5 GiB and
//! more exist: CUDA, model weights) the copy is a multipart upload whose parts are
//! UploadPartCopy requests, each naming a byte range of the source, run a few at a time as
//! Distribution's driver does. object_store has no call for UploadPartCopy, so each one is a
//! request presigned by object_store (which holds the credentials and knows the endpoint's
//! style) with the copy headers bound into the signature, and sent with our own client.

use futures_util::{StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::ObjectStoreExt;

use super::{classify, S3BlobStore, MAX_PARTS};
use crate::StorageError;

/// S3's limit for a single CopyObject.
pub const COPY_OBJECT_LIMIT: u64 = 5 * 1024 * 1024 * 1024;
/// Bytes per UploadPartCopy (at least; more when the object would need over 10,000 parts).
const COPY_PART: u64 = 512 * 1024 * 1024;
/// UploadPartCopy requests in flight per copy.
const COPIES_IN_FLIGHT: usize = 8;

impl S3BlobStore {
    /// Copies `from` (of `size` bytes) to `to`. Copying onto an existing blob rewrites the same
    /// bytes, which is harmless: the digest was verified.
    pub(super) async fn copy_into_place(
        &self,
        from: &Path,
        to: &Path,
        size: u64,
    ) -> Result<(), StorageError> {
        if size <= self.copy_limit {
            return self.client.copy(from, to).await.map_err(classify);
        }
        let multipart = self.client.create_multipart(to).await.map_err(classify)?;
        let result = self.copy_parts(from, to, &multipart, size).await;
        match result {
            Ok(parts) => self
                .client
                .complete_multipart(to, &multipart, parts)
                .await
                .map(|_| ())
                .map_err(classify),
            Err(e) => {
                if let Err(abort) = self.client.abort_multipart(to, &multipart).await {
                    tracing::warn!("aborting a failed multipart copy to {to}: {abort}");
                }
                Err(e)
            }
        }
    }

    async fn copy_parts(
        &self,
        from: &Path,
        to: &Path,
        multipart: &str,
        size: u64,
    ) -> Result<Vec<PartId>, StorageError> {
        // Parts no larger than the copy limit, which only the suite lowers below COPY_PART
        // (to copy 20 MB part by part); more than COPY_PART when 10,000 would not hold it.
        let part = COPY_PART
            .min(self.copy_limit.max(super::MIN_PART_SIZE))
            .max(size.div_ceil(MAX_PARTS as u64));
        let ranges: Vec<(usize, u64, u64)> = (0..size.div_ceil(part))
            .map(|i| (i as usize + 1, i * part, ((i + 1) * part).min(size) - 1))
            .collect();
        futures_util::stream::iter(ranges)
            .map(|(number, first, last)| self.copy_part(from, to, multipart, number, first, last))
            .buffered(COPIES_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// One UploadPartCopy of bytes `first..=last` of `from` as part `number` of `to`.
    async fn copy_part(
        &self,
        from: &Path,
        to: &Path,
        multipart: &str,
        number: usize,
        first: u64,
        last: u64,
    ) -> Result<PartId, StorageError> {
        let source = format!("/{}/{}", self.bucket, from.as_ref());
        let source = http::HeaderValue::try_from(source)
            .map_err(|e| StorageError::Io(std::io::Error::other(e)))?;
        let range = http::HeaderValue::try_from(format!("bytes={first}-{last}"))
            .map_err(|e| StorageError::Io(std::io::Error::other(e)))?;
        let options = SignedUrlOptions::default()
            .with_query([
                ("partNumber", number.to_string()),
                ("uploadId", multipart.to_owned()),
            ])
            .with_signed_header(
                http::HeaderName::from_static("x-amz-copy-source"),
                source.clone(),
            )
            .with_signed_header(
                http::HeaderName::from_static("x-amz-copy-source-range"),
                range.clone(),
            );
        let url = self
            .client
            .signed_url_opts(http::Method::PUT, to, super::PRESIGN_FOR, &options)
            .await
            .map_err(classify)?;
        let response = self
            .http
            .put(url.as_str())
            .header("x-amz-copy-source", source)
            .header("x-amz-copy-source-range", range)
            .send()
            .await
            .map_err(|e| StorageError::Unavailable(format!("S3 UploadPartCopy: {e}")))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| StorageError::Unavailable(format!("S3 UploadPartCopy: {e}")))?;
        if !status.is_success() {
            let message = format!("S3 UploadPartCopy answered {status}: {body}");
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                StorageError::Unavailable(message)
            } else {
                StorageError::Io(std::io::Error::other(message))
            });
        }
        // S3 may answer 200 with an error document; only an ETag makes the part real.
        let content_id = element(&body, "ETag").ok_or_else(|| {
            StorageError::Unavailable(format!(
                "S3 UploadPartCopy answered without an ETag: {body}"
            ))
        })?;
        Ok(PartId {
            content_id: content_id.replace("&quot;", "\""),
        })
    }
}

/// The text of the first `<name>` element in an XML answer.
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(&xml[start..end])
}

#[cfg(test)]
mod tests {
    #[test]
    fn etag_from_a_copy_part_result() {
        let xml = "<?xml version=\"1.0\"?><CopyPartResult><LastModified>x</LastModified>\
                   <ETag>&quot;abc&quot;</ETag></CopyPartResult>";
        assert_eq!(super::element(xml, "ETag"), Some("&quot;abc&quot;"));
        assert_eq!(super::element("<Error/>", "ETag"), None);
    }
}
