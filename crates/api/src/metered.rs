//! Decorators that time every operation of the blob and metadata stores and count failures,
//! so store latency shows up in `/metrics` without any store knowing about metrics.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use berth_meta::{
    BlobReservation, MetadataStore, NewManifest, Page, Referrer, SavedHash, StoredManifest,
    UploadLimits, UploadSession,
};
use berth_oci::{Digest, Hasher, Reference, RepositoryName, Tag};
use berth_storage::{Appended, BlobStore, ByteStream, StorageError};

use crate::observe::Metrics;

macro_rules! timed {
    ($self:ident, $store:literal, $op:literal, $call:expr) => {{
        let started = Instant::now();
        let result = $call.await;
        $self
            .metrics
            .store_op($store, $op, started.elapsed(), result.is_err());
        result
    }};
}

pub struct MeteredBlobStore {
    pub inner: Arc<dyn BlobStore>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl BlobStore for MeteredBlobStore {
    async fn blob_size(&self, d: &Digest) -> Result<Option<u64>, StorageError> {
        timed!(self, "blob", "blob_size", self.inner.blob_size(d))
    }
    async fn read_blob(&self, d: &Digest, r: Range<u64>) -> Result<ByteStream, StorageError> {
        timed!(self, "blob", "read_blob", self.inner.read_blob(d, r))
    }
    async fn delete_blob(&self, d: &Digest) -> Result<bool, StorageError> {
        timed!(self, "blob", "delete_blob", self.inner.delete_blob(d))
    }
    async fn create_upload(&self, id: &str) -> Result<(), StorageError> {
        timed!(self, "blob", "create_upload", self.inner.create_upload(id))
    }
    async fn upload_size(&self, id: &str) -> Result<Option<u64>, StorageError> {
        timed!(self, "blob", "upload_size", self.inner.upload_size(id))
    }
    async fn append_upload(
        &self,
        id: &str,
        offset: u64,
        data: ByteStream,
        hasher: Hasher,
    ) -> Result<Appended, StorageError> {
        timed!(
            self,
            "blob",
            "append_upload",
            self.inner.append_upload(id, offset, data, hasher)
        )
    }
    async fn read_upload(&self, id: &str) -> Result<ByteStream, StorageError> {
        timed!(self, "blob", "read_upload", self.inner.read_upload(id))
    }
    async fn commit_upload(&self, id: &str, d: &Digest) -> Result<(), StorageError> {
        timed!(
            self,
            "blob",
            "commit_upload",
            self.inner.commit_upload(id, d)
        )
    }
    async fn delete_upload(&self, id: &str) -> Result<(), StorageError> {
        timed!(self, "blob", "delete_upload", self.inner.delete_upload(id))
    }
    async fn check(&self) -> Result<(), StorageError> {
        timed!(self, "blob", "check", self.inner.check())
    }
    async fn list_blobs(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<Digest>, StorageError> {
        timed!(
            self,
            "blob",
            "list_blobs",
            self.inner.list_blobs(after, limit)
        )
    }
    async fn list_uploads(&self) -> Result<Vec<String>, StorageError> {
        timed!(self, "blob", "list_uploads", self.inner.list_uploads())
    }
    async fn blob_url(&self, d: &Digest) -> Result<Option<String>, StorageError> {
        self.inner.blob_url(d).await
    }
    async fn capacity(&self) -> Result<Option<berth_storage::Capacity>, StorageError> {
        self.inner.capacity().await
    }
}

pub struct MeteredMetadataStore {
    pub inner: Arc<dyn MetadataStore>,
    pub metrics: Arc<Metrics>,
}

type MetaResult<T> = berth_meta::Result<T>;

#[async_trait]
impl MetadataStore for MeteredMetadataStore {
    async fn check(&self) -> MetaResult<()> {
        timed!(self, "metadata", "check", self.inner.check())
    }
    async fn repository_blob(&self, r: &RepositoryName, d: &Digest) -> MetaResult<Option<u64>> {
        timed!(
            self,
            "metadata",
            "repository_blob",
            self.inner.repository_blob(r, d)
        )
    }
    async fn add_blob(
        &self,
        r: &RepositoryName,
        d: &Digest,
        size: u64,
        upload: Option<&str>,
    ) -> MetaResult<()> {
        timed!(
            self,
            "metadata",
            "add_blob",
            self.inner.add_blob(r, d, size, upload)
        )
    }
    async fn reserve_blob(
        &self,
        d: &Digest,
        size: u64,
        lease_until: i64,
    ) -> MetaResult<BlobReservation> {
        timed!(
            self,
            "metadata",
            "reserve_blob",
            self.inner.reserve_blob(d, size, lease_until)
        )
    }
    async fn mount_blob(
        &self,
        from: &RepositoryName,
        to: &RepositoryName,
        d: &Digest,
    ) -> MetaResult<Option<u64>> {
        timed!(
            self,
            "metadata",
            "mount_blob",
            self.inner.mount_blob(from, to, d)
        )
    }
    async fn unlink_blob(&self, r: &RepositoryName, d: &Digest) -> MetaResult<bool> {
        timed!(
            self,
            "metadata",
            "unlink_blob",
            self.inner.unlink_blob(r, d)
        )
    }
    async fn put_manifest(&self, m: NewManifest<'_>) -> MetaResult<()> {
        timed!(self, "metadata", "put_manifest", self.inner.put_manifest(m))
    }
    async fn get_manifest(
        &self,
        r: &RepositoryName,
        reference: &Reference,
    ) -> MetaResult<Option<Arc<StoredManifest>>> {
        timed!(
            self,
            "metadata",
            "get_manifest",
            self.inner.get_manifest(r, reference)
        )
    }
    async fn delete_manifest(&self, r: &RepositoryName, d: &Digest) -> MetaResult<bool> {
        timed!(
            self,
            "metadata",
            "delete_manifest",
            self.inner.delete_manifest(r, d)
        )
    }
    async fn delete_repository(&self, r: &RepositoryName) -> MetaResult<bool> {
        timed!(
            self,
            "metadata",
            "delete_repository",
            self.inner.delete_repository(r)
        )
    }
    async fn delete_tag(&self, r: &RepositoryName, t: &Tag) -> MetaResult<bool> {
        timed!(self, "metadata", "delete_tag", self.inner.delete_tag(r, t))
    }
    async fn list_tags(
        &self,
        r: &RepositoryName,
        page: Page<'_>,
    ) -> MetaResult<Option<Vec<String>>> {
        timed!(self, "metadata", "list_tags", self.inner.list_tags(r, page))
    }
    async fn list_repositories(&self, page: Page<'_>) -> MetaResult<Vec<String>> {
        timed!(
            self,
            "metadata",
            "list_repositories",
            self.inner.list_repositories(page)
        )
    }
    async fn referrers(
        &self,
        r: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> MetaResult<Vec<Referrer>> {
        timed!(
            self,
            "metadata",
            "referrers",
            self.inner.referrers(r, subject, artifact_type)
        )
    }
    async fn create_upload(&self, s: &UploadSession, limits: UploadLimits) -> MetaResult<()> {
        timed!(
            self,
            "metadata",
            "create_upload",
            self.inner.create_upload(s, limits)
        )
    }
    async fn get_upload(&self, id: &str) -> MetaResult<Option<UploadSession>> {
        timed!(self, "metadata", "get_upload", self.inner.get_upload(id))
    }
    async fn save_upload_hash(&self, id: &str, saved: &SavedHash) -> MetaResult<()> {
        timed!(
            self,
            "metadata",
            "save_upload_hash",
            self.inner.save_upload_hash(id, saved)
        )
    }
    async fn delete_upload(&self, id: &str) -> MetaResult<()> {
        timed!(
            self,
            "metadata",
            "delete_upload",
            self.inner.delete_upload(id)
        )
    }
    async fn expired_uploads(&self, before: i64, limit: u32) -> MetaResult<Vec<String>> {
        timed!(
            self,
            "metadata",
            "expired_uploads",
            self.inner.expired_uploads(before, limit)
        )
    }
    async fn collectable_blobs(
        &self,
        before: i64,
        now: i64,
        after: Option<&str>,
        limit: u32,
    ) -> MetaResult<Vec<(String, u64)>> {
        timed!(
            self,
            "metadata",
            "collectable_blobs",
            self.inner.collectable_blobs(before, now, after, limit)
        )
    }
    async fn mark_blob_deleting(&self, d: &Digest, before: i64, now: i64) -> MetaResult<bool> {
        timed!(
            self,
            "metadata",
            "mark_blob_deleting",
            self.inner.mark_blob_deleting(d, before, now)
        )
    }
    async fn forget_blob(&self, d: &Digest) -> MetaResult<()> {
        timed!(self, "metadata", "forget_blob", self.inner.forget_blob(d))
    }
}
