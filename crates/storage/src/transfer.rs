//! Copying blobs from one store into another: every blob (`berth migrate --blobs-to`:
//! filesystem to S3 and back, or between two buckets), or the ones named (`berth import` from a
//! `registry:2` directory elsewhere).
//!
//! Each blob streams through an upload in the target, hashed on the way, and is committed only
//! if its bytes hash to its name: a corrupt source blob is reported, never copied. A blob the
//! target already holds at the same size is skipped, so an interrupted copy resumes where it
//! stopped.

use std::sync::atomic::{AtomicU64, Ordering};

use berth_oci::Digest;
use futures_util::{StreamExt, TryStreamExt};

use crate::{BlobStore, StorageError};

/// Blobs copied at once.
const IN_FLIGHT: usize = 4;
/// Blobs listed per page of the source.
const PAGE: usize = 1000;

/// Where a copy stands, for a progress display.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub blobs: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub struct Report {
    /// Blobs copied, and their bytes.
    pub copied: Progress,
    /// Blobs the target had already.
    pub skipped: u64,
    /// Blobs whose bytes do not match their digest, left behind.
    pub corrupt: Vec<Digest>,
}

/// What [`copy_blob`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copied {
    /// Copied, this many bytes.
    Bytes(u64),
    /// The target holds the blob already, at the source's size.
    Present,
    /// The source does not hold it.
    Missing,
    /// The source's bytes do not hash to the digest; nothing was copied.
    Corrupt,
}

/// Copies every blob of `source` that `target` lacks; `progress` is told after each blob.
pub async fn copy_all(
    source: &dyn BlobStore,
    target: &dyn BlobStore,
    progress: impl Fn(Progress) + Sync,
) -> Result<Report, StorageError> {
    let mut report = Report::default();
    let (blobs, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut after: Option<Digest> = None;
    loop {
        let page = source.list_blobs(after.as_ref(), PAGE).await?;
        let Some(last) = page.last().cloned() else {
            break;
        };
        let outcomes: Vec<(Digest, Copied)> = futures_util::stream::iter(page)
            .map(|digest| async move {
                let outcome = copy_blob(source, target, &digest).await;
                outcome.map(|copied| (digest, copied))
            })
            .buffer_unordered(IN_FLIGHT)
            .inspect_ok(|(_, copied)| {
                let size = match copied {
                    Copied::Bytes(size) => *size,
                    _ => 0,
                };
                progress(Progress {
                    blobs: blobs.fetch_add(1, Ordering::Relaxed) + 1,
                    bytes: bytes.fetch_add(size, Ordering::Relaxed) + size,
                });
            })
            .try_collect()
            .await?;
        for (digest, copied) in outcomes {
            match copied {
                Copied::Bytes(size) => {
                    report.copied.blobs += 1;
                    report.copied.bytes += size;
                }
                // Missing: deleted since it was listed.
                Copied::Present | Copied::Missing => report.skipped += 1,
                Copied::Corrupt => report.corrupt.push(digest),
            }
        }
        after = Some(last);
    }
    Ok(report)
}

/// Copies one blob from `source` into `target` through an upload hashed on the way,
/// committed only if the bytes hash to `digest`; a blob the target holds at the same size is
/// left as it is.
pub async fn copy_blob(
    source: &dyn BlobStore,
    target: &dyn BlobStore,
    digest: &Digest,
) -> Result<Copied, StorageError> {
    let Some(size) = source.blob_size(digest).await? else {
        return Ok(Copied::Missing);
    };
    if target.blob_size(digest).await? == Some(size) {
        return Ok(Copied::Present);
    }
    let id = format!("migrate-{}", &digest.hex()[..32.min(digest.hex().len())]);
    target.delete_upload(&id).await?; // a copy interrupted before
    target.create_upload(&id).await?;
    let bytes = source.read_blob(digest, 0..size).await?;
    let appended = target
        .append_upload(&id, 0, bytes, digest.algorithm().hasher())
        .await;
    let appended = match appended {
        Ok(a) => a,
        Err(e) => {
            target.delete_upload(&id).await?;
            return Err(e);
        }
    };
    if appended.size != size || &appended.hasher.finish() != digest {
        target.delete_upload(&id).await?;
        return Ok(Copied::Corrupt);
    }
    target.commit_upload(&id, digest).await?;
    Ok(Copied::Bytes(size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testsuite::put_blob;
    use crate::FsBlobStore;

    #[tokio::test]
    async fn copies_verifies_and_resumes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = FsBlobStore::open(a.path()).await.unwrap();
        let target = FsBlobStore::open(b.path()).await.unwrap();
        let first = put_blob(&source, "one", b"first blob").await;
        let second = put_blob(&source, "two", b"second blob, longer").await;
        put_blob(&target, "pre", b"first blob").await;
        // Corrupt the second blob on disk, keeping its size.
        let hex = second.hex();
        let path = a.path().join(format!(
            "docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ));
        std::fs::write(&path, b"second blob, LONGER").unwrap();

        let report = copy_all(&source, &target, |_| {}).await.unwrap();
        assert_eq!(report.skipped, 1, "already there");
        assert_eq!(report.copied.blobs, 0);
        assert_eq!(report.corrupt, vec![second.clone()]);
        assert_eq!(
            target.blob_size(&second).await.unwrap(),
            None,
            "never copied"
        );

        std::fs::write(&path, b"second blob, longer").unwrap();
        let report = copy_all(&source, &target, |_| {}).await.unwrap();
        assert_eq!((report.copied.blobs, report.skipped), (1, 1));
        assert!(report.corrupt.is_empty());
        assert_eq!(target.blob_size(&second).await.unwrap(), Some(19));
        assert_eq!(target.blob_size(&first).await.unwrap(), Some(10));
        assert!(target.list_uploads().await.unwrap().is_empty());
    }
}
