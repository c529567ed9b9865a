//! Copying every blob from one store into another (`berth migrate --blobs-to`): filesystem to
//! S3 and back, or between two buckets.
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

enum Outcome {
    Copied(u64),
    Present,
    Corrupt(Digest),
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
        let outcomes: Vec<Outcome> = futures_util::stream::iter(page)
            .map(|digest| async move { copy_one(source, target, digest).await })
            .buffer_unordered(IN_FLIGHT)
            .inspect_ok(|outcome| {
                let size = match outcome {
                    Outcome::Copied(size) => *size,
                    _ => 0,
                };
                progress(Progress {
                    blobs: blobs.fetch_add(1, Ordering::Relaxed) + 1,
                    bytes: bytes.fetch_add(size, Ordering::Relaxed) + size,
                });
            })
            .try_collect()
            .await?;
        for outcome in outcomes {
            match outcome {
                Outcome::Copied(size) => {
                    report.copied.blobs += 1;
                    report.copied.bytes += size;
                }
                Outcome::Present => report.skipped += 1,
                Outcome::Corrupt(digest) => report.corrupt.push(digest),
            }
        }
        after = Some(last);
    }
    Ok(report)
}

async fn copy_one(
    source: &dyn BlobStore,
    target: &dyn BlobStore,
    digest: Digest,
) -> Result<Outcome, StorageError> {
    let Some(size) = source.blob_size(&digest).await? else {
        return Ok(Outcome::Present); // deleted since it was listed
    };
    if target.blob_size(&digest).await? == Some(size) {
        return Ok(Outcome::Present);
    }
    let id = format!("migrate-{}", &digest.hex()[..32.min(digest.hex().len())]);
    target.delete_upload(&id).await?; // a copy interrupted before
    target.create_upload(&id).await?;
    let bytes = source.read_blob(&digest, 0..size).await?;
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
    if appended.size != size || appended.hasher.finish() != digest {
        target.delete_upload(&id).await?;
        return Ok(Outcome::Corrupt(digest));
    }
    target.commit_upload(&id, &digest).await?;
    Ok(Outcome::Copied(size))
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
