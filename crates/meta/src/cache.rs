//! A read-through cache of manifests in front of any [`MetadataStore`]: manifest GET and HEAD
//! are the registry's hottest path, and a manifest is small and, by digest, immutable.
//!
//! Writes through this store invalidate the repository's entries at once, so this process
//! always reads its own writes. Entries also expire after a short time, which bounds how
//! long another replica sharing the database can serve a tag that was moved elsewhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_oci::{Digest, Reference, RepositoryName, Tag};

use crate::{MetadataStore, NewManifest, Page, Referrer, Result, StoredManifest, UploadSession};

/// How long a cached answer may be served.
pub const TTL: Duration = Duration::from_secs(2);
/// Bytes of manifests kept at most; beyond, the cache starts over.
const MAX_BYTES: usize = 64 * 1024 * 1024;

type Entry = (Instant, Option<Arc<StoredManifest>>);

fn size_of(entry: &Entry) -> usize {
    entry.1.as_ref().map(|m| m.content.len()).unwrap_or(0)
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
}

pub struct CachedStore {
    inner: Arc<dyn MetadataStore>,
    entries: Mutex<Entries>,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn MetadataStore>) -> Self {
        CachedStore {
            inner,
            entries: Mutex::new(Entries::default()),
        }
    }

    fn invalidate(&self, repo: &RepositoryName) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gone) = e.repos.remove(repo.as_str()) {
            e.bytes -= gone.bytes;
        }
    }

    fn lookup(&self, repo: &RepositoryName, reference: &str) -> Option<Option<StoredManifest>> {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (at, manifest) = e.repos.get(repo.as_str())?.by_reference.get(reference)?;
        (at.elapsed() < TTL).then(|| manifest.as_deref().cloned())
    }

    fn remember(&self, repo: &RepositoryName, reference: String, found: Option<StoredManifest>) {
        let entry: Entry = (Instant::now(), found.map(Arc::new));
        let size = size_of(&entry);
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.bytes + size > MAX_BYTES {
            *e = Entries::default();
        }
        let r = e.repos.entry(repo.as_str().to_owned()).or_default();
        let replaced = r
            .by_reference
            .insert(reference, entry)
            .map(|old| size_of(&old))
            .unwrap_or(0);
        r.bytes = r.bytes + size - replaced;
        e.bytes = e.bytes + size - replaced;
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
    ) -> Result<Option<StoredManifest>> {
        let key = reference.to_string();
        if let Some(cached) = self.lookup(repo, &key) {
            return Ok(cached);
        }
        let found = self.inner.get_manifest(repo, reference).await?;
        self.remember(repo, key, found.clone());
        Ok(found)
    }
    async fn delete_manifest(&self, r: &RepositoryName, d: &Digest) -> Result<bool> {
        let result = self.inner.delete_manifest(r, d).await;
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
    async fn create_upload(&self, s: &UploadSession) -> Result<()> {
        self.inner.create_upload(s).await
    }
    async fn get_upload(&self, id: &str) -> Result<Option<UploadSession>> {
        self.inner.get_upload(id).await
    }
    async fn delete_upload(&self, id: &str) -> Result<()> {
        self.inner.delete_upload(id).await
    }
    async fn expired_uploads(&self, before: i64, limit: u32) -> Result<Vec<String>> {
        self.inner.expired_uploads(before, limit).await
    }
    async fn unreferenced_blobs(&self, before: i64, limit: u32) -> Result<Vec<(String, u64)>> {
        self.inner.unreferenced_blobs(before, limit).await
    }
    async fn forget_blob_if_unreferenced(&self, d: &Digest) -> Result<bool> {
        self.inner.forget_blob_if_unreferenced(d).await
    }
}
