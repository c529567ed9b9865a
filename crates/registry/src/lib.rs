//! The registry's rules, under every interface: manifests and tags (push, get, delete), blobs
//! (read, delete), uploads (start, append, status, finish, cancel, mount), listings, referrers,
//! garbage collection and upload purging. HTTP handlers, the admin API, the CLI and the web UI
//! call [`Registry`]; none of them decides validity on its own.
//!
//! Every method returns a [`RegistryError`] in the registry's terms; the API layer alone maps
//! errors to statuses and OCI codes. Completed changes are published as [`events`] (the audit
//! log subscribes). Who may call what is decided before, by the authorizer; this layer only
//! knows the actor's name for its events.
//!
//! Layers below: [`BlobStore`] (bytes by digest, staged uploads) and [`MetadataStore`] (the
//! index: repositories, manifests, tags, links, sessions), both behind traits.

mod blobs;
pub mod browse;
pub mod check;
pub mod error;
pub mod events;
pub mod gc;
pub mod import;
mod listing;
mod manifest_cache;
mod manifests;
pub mod policy;
mod pulls;
pub mod retention;
mod upload_state;
mod uploads;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_meta::{MetadataStore, UploadLimits};
use berth_storage::BlobStore;

pub use blobs::BlobLookup;
pub use error::{RegistryError, Result};
pub use events::{Actor, Change, Event, Events, Subscriber};
pub use gc::{GcReport, GcStats};
pub use import::{ImportProgress, ImportReport, Skipped};
pub use listing::{Listable, Listed, Referrer};
pub use manifests::Pushed;
pub use uploads::{ChunkRange, SAVE_HASH_FROM};

/// The rules' settings.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Allow deleting manifests, tags and blobs (`REGISTRY_STORAGE_DELETE_ENABLED`).
    pub delete_enabled: bool,
    /// Largest manifest accepted.
    pub max_manifest_bytes: usize,
    /// Upload sessions in progress allowed per user and per repository.
    pub upload_limits: UploadLimits,
    /// Accept manifests whose blobs or child manifests are absent (sparse mirrors).
    pub allow_sparse_manifests: bool,
    /// This replica's name among those sharing the stores: the holder of its leases.
    pub instance: String,
    /// Refuse every write, whatever the run-time switch says (`storage.read_only`).
    pub read_only: bool,
    /// Answer blob downloads with a redirect to the blob store's own URL for the blob
    /// (a presigned S3 URL) where the store has one.
    pub redirect_downloads: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            delete_enabled: true,
            max_manifest_bytes: 4 * 1024 * 1024,
            upload_limits: UploadLimits {
                per_owner: Some(1024),
                per_repository: Some(256),
            },
            allow_sparse_manifests: false,
            read_only: false,
            instance: host_name(),
            redirect_downloads: false,
        }
    }
}

/// The setting holding the run-time read-only switch: the reason while on, empty while off.
pub const READ_ONLY_SETTING: &str = "read_only";

/// This machine's (or pod's) name, the default name of a replica.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "berth".into())
}

/// The registry: its stores, its settings, and what this process knows of uploads in
/// progress.
pub struct Registry {
    pub blobs: Arc<dyn BlobStore>,
    /// The index. Writes that change what a repository's references name go through the
    /// registry's methods, which keep `manifests` in step; reads of manifests go through it.
    pub meta: Arc<dyn MetadataStore>,
    manifests: manifest_cache::ManifestCache,
    pub config: RegistryConfig,
    events: Events,
    uploads: upload_state::Uploads,
    /// Set while writes fail because the storage is full: the episode is logged once.
    storage_full: AtomicBool,
    /// The run-time read-only switch and its reason, as last read from the
    /// [`READ_ONLY_SETTING`] shared by replicas.
    read_only: std::sync::RwLock<Option<String>>,
    /// Pulls noted since the last [`flush_pulls`](Registry::flush_pulls).
    pulls: pulls::PullTimes,
    /// Projects' lifecycle policies, as recently read.
    policies: policy::PolicyCache,
    pub gc_stats: GcStats,
}

impl Registry {
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        meta: Arc<dyn MetadataStore>,
        config: RegistryConfig,
        events: Events,
    ) -> Registry {
        let manifests = manifest_cache::ManifestCache::new(meta.clone());
        manifests.follow_changes();
        Registry {
            blobs,
            manifests,
            meta,
            config,
            events,
            uploads: upload_state::Uploads::default(),
            storage_full: AtomicBool::new(false),
            read_only: std::sync::RwLock::new(None),
            pulls: pulls::PullTimes::default(),
            policies: policy::PolicyCache::default(),
            gc_stats: GcStats::default(),
        }
    }

    /// Whether this process should run the shared background task `task` now: it takes or
    /// renews the task's lease for `term`, so of replicas sharing the stores one runs it, and
    /// another takes over within `term` of its last run when it dies (a restart under the
    /// same `instance` name keeps it). The rules never
    /// depend on the lease — two collections at once are safe — it only saves the work.
    pub async fn lead(&self, task: &str, term: Duration) -> Result<bool> {
        let now = berth_meta::now();
        let until = now.saturating_add(i64::try_from(term.as_secs()).unwrap_or(i64::MAX));
        Ok(self
            .meta
            .claim_lease(task, &self.config.instance, now, until)
            .await?)
    }

    /// Whether writes are failing because the storage is full right now.
    pub fn storage_is_full(&self) -> bool {
        self.storage_full.load(Ordering::Relaxed)
    }

    /// Notes how a write went: the first refusal for a full disk starts an episode (logged
    /// once); the next successful write of content (`content`) ends it — a small metadata
    /// write that fits says little about room for blobs.
    fn note_write<T>(&self, outcome: Result<T>, content: bool) -> Result<T> {
        match &outcome {
            Err(e) if e.is_storage_full() && !self.storage_full.swap(true, Ordering::Relaxed) => {
                tracing::error!(
                    "the registry's storage is full: writes are refused with 507 until space is freed ({e})"
                );
            }
            Ok(_) if content && self.storage_full.swap(false, Ordering::Relaxed) => {
                tracing::warn!("the registry's storage has room again: writes succeed");
            }
            _ => {}
        }
        outcome
    }

    fn publish(&self, actor: &Actor, change: Change) {
        self.events.publish(actor, change);
    }

    /// Why writes are refused now, if they are: the configuration's read-only mode, or the
    /// run-time switch.
    pub fn read_only(&self) -> Option<String> {
        if self.config.read_only {
            return Some("the registry is in read-only mode (storage.read_only)".into());
        }
        self.read_only
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Switches read-only mode at run time for every replica (the [`READ_ONLY_SETTING`]);
    /// `Some(reason)` turns it on. Takes effect here at once, elsewhere within a refresh.
    pub async fn switch_read_only(&self, reason: Option<&str>) -> Result<()> {
        let reason = reason.map(|r| {
            let r = r.trim();
            if r.is_empty() {
                "the registry is in read-only mode".to_owned()
            } else {
                r.to_owned()
            }
        });
        self.meta
            .put_setting(READ_ONLY_SETTING, reason.as_deref().unwrap_or(""))
            .await?;
        *self.read_only.write().unwrap_or_else(|p| p.into_inner()) = reason;
        Ok(())
    }

    /// Reads the run-time read-only switch from the metadata store (other replicas, or the
    /// CLI, may have moved it).
    pub async fn refresh_read_only(&self) -> Result<()> {
        let setting = self.meta.setting(READ_ONLY_SETTING).await?;
        let reason = setting.filter(|r| !r.is_empty());
        *self.read_only.write().unwrap_or_else(|p| p.into_inner()) = reason;
        Ok(())
    }

    fn require_writable(&self) -> Result<()> {
        match self.read_only() {
            Some(reason) => Err(RegistryError::ReadOnly(reason)),
            None => Ok(()),
        }
    }

    fn require_deletes(&self) -> Result<()> {
        if self.config.delete_enabled {
            Ok(())
        } else {
            Err(RegistryError::DeletesDisabled)
        }
    }

    /// Discards upload sessions (and their bytes) started more than `max_age` ago: abandoned
    /// uploads must not fill the disk. Returns how many were removed.
    pub async fn purge_uploads(&self, max_age: Duration) -> Result<usize> {
        self.require_writable()?;
        let before = berth_meta::now() - max_age.as_secs() as i64;
        let mut purged = 0;
        loop {
            let ids = self.meta.expired_uploads(before, 500).await?;
            if ids.is_empty() {
                return Ok(purged);
            }
            for id in ids {
                self.blobs.delete_upload(&id).await?;
                self.meta.delete_upload(&id).await?;
                self.uploads.forget(&id);
                purged += 1;
            }
        }
    }
}
