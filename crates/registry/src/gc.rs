//! Online garbage collection by reachability: the bytes of blobs that nothing can reach are
//! deleted while the registry keeps serving — no read-only window.
//!
//! A blob is kept while a manifest of any repository references it, while a push or mount
//! linked it within the grace period, and while a commit holds its lease. Deleting a manifest
//! (or a repository's manifests) therefore frees the layers nothing else references once the
//! grace period since they were pushed has passed. Manifests themselves are never collected
//! here: untagged manifests stay until a retention rule removes them.
//!
//! Coordination goes through the metadata store, not a lock in this process, so it holds with
//! any number of replicas and with `berth gc` running beside a server: GC marks a blob
//! `deleting` in the same atomic step that re-checks it is unreachable, then deletes its
//! bytes, then its row. Pushes, mounts and manifest reference checks ignore marked blobs; a
//! commit first reserves its blob (which fails while it is marked, and makes GC leave it
//! alone until the commit has linked it), so a blob pushed again while GC deletes it is
//! stored anew after GC is done, never left as a row without bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_meta::{BlobReservation, GcRun};
use berth_oci::Digest;

use crate::error::{RegistryError, Result};
use crate::Registry;

/// How long a commit may hold its blob between reserving it and linking it; a process that
/// dies in between leaves the blob collectable again after this.
pub const COMMIT_LEASE: Duration = Duration::from_secs(600);
/// Candidates read from the metadata store at a time.
const GC_BATCH: u32 = 500;
/// How long a commit waits for a collection that is deleting the same digest.
const WAIT_FOR_COLLECTION: Duration = Duration::from_secs(10);

/// Totals over this process's collections, for `/metrics`.
#[derive(Debug, Default)]
pub struct GcStats {
    pub runs: AtomicU64,
    pub blobs_deleted: AtomicU64,
    pub bytes_freed: AtomicU64,
    pub last_duration_ms: AtomicU64,
    /// 1 while a collection runs in this process.
    pub running: AtomicU64,
    /// What the running (or else the last) collection has deleted so far.
    pub run_blobs_deleted: AtomicU64,
    pub run_bytes_freed: AtomicU64,
}

/// What one collection did (or, dry, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
    /// The digests removed (or, dry, that would be), with their sizes.
    pub removed: Vec<(String, u64)>,
}

impl Registry {
    /// Deletes blobs nothing has reached for at least `grace`.
    /// Each run, completed or stopped by an error, is recorded in the GC history
    /// ([`MetadataStore::gc_runs`](berth_meta::MetadataStore::gc_runs)).
    pub async fn collect_garbage(&self, grace: Duration) -> Result<GcReport> {
        self.require_writable()?;
        let stats = &self.gc_stats;
        let started_at = berth_meta::now();
        stats.run_blobs_deleted.store(0, Ordering::Relaxed);
        stats.run_bytes_freed.store(0, Ordering::Relaxed);
        stats.running.store(1, Ordering::Relaxed);
        let outcome = self.garbage(grace, false).await;
        stats.running.store(0, Ordering::Relaxed);
        let run = GcRun {
            id: crate::uploads::new_upload_id(),
            started_at,
            finished_at: berth_meta::now(),
            instance: self.config.instance.clone(),
            blobs_deleted: stats.run_blobs_deleted.load(Ordering::Relaxed),
            bytes_freed: stats.run_bytes_freed.load(Ordering::Relaxed),
            error: outcome
                .as_ref()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
        };
        if let Err(e) = self.meta.record_gc_run(&run).await {
            tracing::warn!("could not record the garbage collection in its history: {e}");
        }
        outcome
    }

    /// The latest `limit` collections of any replica or the CLI, newest first.
    pub async fn gc_history(&self, limit: u32) -> Result<Vec<GcRun>> {
        Ok(self.meta.gc_runs(limit).await?)
    }

    /// What [`collect_garbage`](Self::collect_garbage) would delete now, deleting nothing.
    pub async fn garbage_dry_run(&self, grace: Duration) -> Result<GcReport> {
        self.garbage(grace, true).await
    }

    async fn garbage(&self, grace: Duration, dry: bool) -> Result<GcReport> {
        let started = Instant::now();
        let now = berth_meta::now();
        let before = now - grace.as_secs() as i64;
        let mut report = GcReport::default();
        // Pages by digest: candidates that are reached again (or, dry, that stay) do not
        // hold the walk at the first page.
        let mut cursor: Option<String> = None;
        loop {
            let batch = self
                .meta
                .collectable_blobs(before, now, cursor.as_deref(), GC_BATCH)
                .await?;
            let Some((last, _)) = batch.last() else {
                break;
            };
            cursor = Some(last.clone());
            for (text, size) in batch {
                let Ok(digest) = text.parse::<Digest>() else {
                    continue;
                };
                if dry {
                    report.removed.push((text, size));
                    continue;
                }
                if !self.meta.mark_blob_deleting(&digest, before, now).await? {
                    continue; // reached again since it was listed
                }
                self.blobs.delete_blob(&digest).await?;
                self.meta.forget_blob(&digest).await?;
                self.gc_stats
                    .run_blobs_deleted
                    .fetch_add(1, Ordering::Relaxed);
                self.gc_stats
                    .run_bytes_freed
                    .fetch_add(size, Ordering::Relaxed);
                report.removed.push((text, size));
            }
        }
        report.blobs_deleted = report.removed.len() as u64;
        report.bytes_freed = report.removed.iter().map(|(_, s)| s).sum();
        if !dry {
            let s = &self.gc_stats;
            s.runs.fetch_add(1, Ordering::Relaxed);
            s.blobs_deleted
                .fetch_add(report.blobs_deleted, Ordering::Relaxed);
            s.bytes_freed
                .fetch_add(report.bytes_freed, Ordering::Relaxed);
            s.last_duration_ms
                .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        Ok(report)
    }

    /// Holds `digest` for a commit (see the module docs), waiting out a collection that is
    /// deleting it right now.
    pub(crate) async fn reserve_blob(&self, digest: &Digest, size: u64) -> Result<()> {
        let waited = Instant::now();
        loop {
            let lease_until = berth_meta::now() + COMMIT_LEASE.as_secs() as i64;
            match self.meta.reserve_blob(digest, size, lease_until).await? {
                BlobReservation::Reserved => return Ok(()),
                BlobReservation::BeingDeleted if waited.elapsed() < WAIT_FOR_COLLECTION => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                BlobReservation::BeingDeleted => {
                    return Err(RegistryError::Conflict(format!(
                        "{digest} is being garbage collected; try again"
                    )))
                }
            }
        }
    }
}
