//! Online garbage collection: the bytes of blobs that no repository links and no manifest
//! references are deleted while the registry keeps serving — no read-only window.
//!
//! Safety against a concurrent push of the same digest: GC and upload commits take the same
//! per-digest lock, and GC first removes the blob's row only if it is still unreferenced (one
//! conditional DELETE), then its bytes. A blob pushed again afterwards is simply stored anew.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_oci::Digest;

use crate::error::ApiError;
use crate::Registry;

/// One lock per digest being committed or collected.
#[derive(Default)]
pub struct DigestLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl DigestLocks {
    /// Runs `f` while holding the lock of `digest`.
    pub async fn with<T>(&self, digest: &Digest, f: impl std::future::Future<Output = T>) -> T {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(digest.to_string()).or_default().clone()
        };
        let result = {
            let _held = lock.lock().await;
            f.await
        };
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Drop the entry when nobody else waits on it (our clone and the map's are the two).
        if Arc::strong_count(&lock) <= 2 {
            locks.remove(digest.as_str());
        }
        result
    }
}

/// What one collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
}

impl Registry {
    /// Deletes blobs unreferenced for at least `grace` (by creation time).
    pub async fn collect_garbage(&self, grace: Duration) -> Result<GcReport, ApiError> {
        let started = Instant::now();
        let before = berth_meta::now() - grace.as_secs() as i64;
        let mut report = GcReport::default();
        loop {
            let batch = self.meta.unreferenced_blobs(before, 500).await?;
            let mut progressed = false;
            for (text, size) in batch {
                let Ok(digest) = text.parse::<Digest>() else {
                    continue;
                };
                let removed = self
                    .blob_locks
                    .with(&digest, async {
                        if self.meta.forget_blob_if_unreferenced(&digest).await? {
                            self.blobs.delete_blob(&digest).await?;
                            return Ok::<_, ApiError>(true);
                        }
                        Ok(false)
                    })
                    .await?;
                if removed {
                    progressed = true;
                    report.blobs_deleted += 1;
                    report.bytes_freed += size;
                }
            }
            if !progressed {
                break;
            }
        }
        let m = &self.metrics;
        m.gc_runs.fetch_add(1, Ordering::Relaxed);
        m.gc_blobs_deleted
            .fetch_add(report.blobs_deleted, Ordering::Relaxed);
        m.gc_bytes_freed
            .fetch_add(report.bytes_freed, Ordering::Relaxed);
        m.gc_last_duration_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        Ok(report)
    }
}
