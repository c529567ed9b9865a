//! A read-through cache of manifests in front of any [`MetadataStore`]: manifest GET and HEAD
//! are the registry's hottest path, and a manifest is small and, by digest, immutable.
//!
//! Writes through this store invalidate the repository's entries at once, so this process
//! always reads its own writes; a read that raced a write is not cached. Entries are fresh for
//! [`TTL`], which bounds how long another replica sharing the database can serve a tag that was
//! moved elsewhere. A request that finds its entry just expired is answered from it while one
//! background read refreshes it, so hot manifests never make a request wait on the database
//! (that wait, for every hot entry every TTL, was the tail latency under load); past
//! `TTL + STALE_GRACE` an entry is not served at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_oci::{Digest, Reference, RepositoryName, Tag};

use crate::{
    BlobReservation, MetadataStore, NewManifest, Page, Referrer, Result, SavedHash, StoredManifest,
    UploadLimits, UploadSession,
};

/// How long a cached answer is fresh.
pub const TTL: Duration = Duration::from_secs(2);
/// How long past `TTL` an entry may still answer while its refresh is under way.
const STALE_GRACE: Duration = Duration::from_secs(2);
/// Bytes of manifests kept at most; beyond, the cache starts over.
const MAX_BYTES: usize = 64 * 1024 * 1024;

struct Entry {
    fetched: Instant,
    manifest: Option<Arc<StoredManifest>>,
    refreshing: bool,
}

impl Entry {
    fn size(&self) -> usize {
        self.manifest.as_ref().map(|m| m.content.len()).unwrap_or(0)
    }
}

/// Cached answers of one repository, so a write drops exactly its repository's entries.
#[derive(Default)]
struct RepoEntries {
    by_reference: HashMap<String, Entry>,
    bytes: usize,
}

#[derive(Default)]
struct Entries {
    repos: HashMap<String, RepoEntries>,
    bytes: usize,
    /// Bumped by every write, so a read that started before one is not cached.
    writes: u64,
}

impl Entries {
    /// Caches what a read that started at write count `writes` found, unless a write came since.
    fn remember(
        &mut self,
        repo: &str,
        reference: String,
        found: Option<Arc<StoredManifest>>,
        writes: u64,
    ) {
        if self.writes != writes {
            self.forget(repo, &reference);
            return;
        }
        let entry = Entry {
            fetched: Instant::now(),
            manifest: found,
            refreshing: false,
        };
        let size = entry.size();
        if self.bytes + size > MAX_BYTES {
            *self = Entries {
                writes: self.writes,
                ..Entries::default()
            };
        }
        let r = self.repos.entry(repo.to_owned()).or_default();
        let replaced = r
            .by_reference
            .insert(reference, entry)
            .map(|old| old.size())
            .unwrap_or(0);
        r.bytes = r.bytes + size - replaced;
        self.bytes = self.bytes + size - replaced;
    }

    fn forget(&mut self, repo: &str, reference: &str) {
        if let Some(r) = self.repos.get_mut(repo) {
            if let Some(old) = r.by_reference.remove(reference) {
                r.bytes -= old.size();
                self.bytes -= old.size();
            }
        }
    }
}

enum Lookup {
    Fresh(Option<Arc<StoredManifest>>),
    /// Expired but within the grace period; `true` when this caller is to refresh it.
    Stale(Option<Arc<StoredManifest>>, bool),
    Missing,
}

pub struct CachedStore {
    inner: Arc<dyn MetadataStore>,
    entries: Arc<Mutex<Entries>>,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn MetadataStore>) -> Self {
        CachedStore {
            inner,
            entries: Arc::new(Mutex::new(Entries::default())),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn invalidate(&self, repo: &RepositoryName) {
        let mut e = self.entries();
        e.writes += 1;
        if let Some(gone) = e.repos.remove(repo.as_str()) {
            e.bytes -= gone.bytes;
        }
    }

    /// What the cache holds for `reference`, and the write count to remember a read under.
    fn lookup(&self, repo: &RepositoryName, reference: &str) -> (Lookup, u64) {
        let mut e = self.entries();
        let writes = e.writes;
        let Some(entry) = e
            .repos
            .get_mut(repo.as_str())
            .and_then(|r| r.by_reference.get_mut(reference))
        else {
            return (Lookup::Missing, writes);
        };
        let age = entry.fetched.elapsed();
        let value = || entry.manifest.clone();
        let found = if age < TTL {
            Lookup::Fresh(value())
        } else if age < TTL + STALE_GRACE {
            let claim = !entry.refreshing;
            entry.refreshing = true;
            Lookup::Stale(value(), claim)
        } else {
            Lookup::Missing
        };
        (found, writes)
    }

    /// Re-reads one entry off the request path; on failure the entry is dropped, so the next
    /// request reads it itself.
    fn refresh(&self, repo: &RepositoryName, reference: &Reference, key: String, writes: u64) {
        let (inner, entries) = (self.inner.clone(), self.entries.clone());
        let (repo, reference) = (repo.clone(), reference.clone());
        tokio::spawn(async move {
            let found = inner.get_manifest(&repo, &reference).await;
            let mut e = entries.lock().unwrap_or_else(|p| p.into_inner());
            match found {
                Ok(found) => e.remember(repo.as_str(), key, found, writes),
                Err(_) => e.forget(repo.as_str(), &key),
            }
        });
    }
}

#[async_trait]
impl MetadataStore for CachedStore {
    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }
    async fn repository_blob(&self, r: &RepositoryName, d: &Digest) -> Result<Option<u64>> {
        self.inner.repository_blob(r, d).await
    }
    async fn add_blob(
        &self,
        r: &RepositoryName,
        d: &Digest,
        size: u64,
        upload: Option<&str>,
    ) -> Result<()> {
        self.inner.add_blob(r, d, size, upload).await
    }
    async fn reserve_blob(
        &self,
        d: &Digest,
        size: u64,
        lease_until: i64,
    ) -> Result<BlobReservation> {
        self.inner.reserve_blob(d, size, lease_until).await
    }
    async fn mount_blob(
        &self,
        from: &RepositoryName,
        to: &RepositoryName,
        d: &Digest,
    ) -> Result<Option<u64>> {
        self.inner.mount_blob(from, to, d).await
    }
    async fn unlink_blob(&self, r: &RepositoryName, d: &Digest) -> Result<bool> {
        self.inner.unlink_blob(r, d).await
    }
    async fn put_manifest(&self, m: NewManifest<'_>) -> Result<()> {
        let repo = m.repository.clone();
        let result = self.inner.put_manifest(m).await;
        self.invalidate(&repo);
        result
    }
    async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<Option<Arc<StoredManifest>>> {
        let key = reference.to_string();
        match self.lookup(repo, &key) {
            (Lookup::Fresh(found) | Lookup::Stale(found, false), _) => Ok(found),
            (Lookup::Stale(found, true), writes) => {
                self.refresh(repo, reference, key, writes);
                Ok(found)
            }
            (Lookup::Missing, writes) => {
                let found = self.inner.get_manifest(repo, reference).await?;
                self.entries()
                    .remember(repo.as_str(), key, found.clone(), writes);
                Ok(found)
            }
        }
    }
    async fn delete_manifest(&self, r: &RepositoryName, d: &Digest) -> Result<bool> {
        let result = self.inner.delete_manifest(r, d).await;
        self.invalidate(r);
        result
    }
    async fn delete_repository(&self, r: &RepositoryName) -> Result<bool> {
        let result = self.inner.delete_repository(r).await;
        self.invalidate(r);
        result
    }
    async fn delete_tag(&self, r: &RepositoryName, t: &Tag) -> Result<bool> {
        let result = self.inner.delete_tag(r, t).await;
        self.invalidate(r);
        result
    }
    async fn list_tags(&self, r: &RepositoryName, page: Page<'_>) -> Result<Option<Vec<String>>> {
        self.inner.list_tags(r, page).await
    }
    async fn list_repositories(&self, page: Page<'_>) -> Result<Vec<String>> {
        self.inner.list_repositories(page).await
    }
    async fn referrers(
        &self,
        r: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        self.inner.referrers(r, subject, artifact_type).await
    }
    async fn create_upload(&self, s: &UploadSession, limits: UploadLimits) -> Result<()> {
        self.inner.create_upload(s, limits).await
    }
    async fn get_upload(&self, id: &str) -> Result<Option<UploadSession>> {
        self.inner.get_upload(id).await
    }
    async fn save_upload_hash(&self, id: &str, saved: &SavedHash) -> Result<()> {
        self.inner.save_upload_hash(id, saved).await
    }
    async fn delete_upload(&self, id: &str) -> Result<()> {
        self.inner.delete_upload(id).await
    }
    async fn expired_uploads(&self, before: i64, limit: u32) -> Result<Vec<String>> {
        self.inner.expired_uploads(before, limit).await
    }
    async fn collectable_blobs(
        &self,
        before: i64,
        now: i64,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, u64)>> {
        self.inner
            .collectable_blobs(before, now, after, limit)
            .await
    }
    async fn mark_blob_deleting(&self, d: &Digest, before: i64, now: i64) -> Result<bool> {
        self.inner.mark_blob_deleting(d, before, now).await
    }
    async fn forget_blob(&self, d: &Digest) -> Result<()> {
        self.inner.forget_blob(d).await
    }
}
