//! The S3 backend: AWS S3 and any S3-compatible store (MinIO, Ceph RGW, Garage, SeaweedFS),
//! through `object_store`, which signs (SigV4), retries with backoff and jitter, and finds
//! credentials (keys, `AWS_*` variables, web identity / IRSA, ECS, instance metadata).
//!
//! Layout under the configured root directory, the same as Distribution's S3 driver for blobs:
//!
//! ```text
//! <root>/docker/registry/v2/blobs/<algorithm>/<first two hex>/<hex>/data   a committed blob
//! <root>/berth/uploads/<id>/record    an upload in progress (see `record`)
//! <root>/berth/uploads/<id>/data      its multipart upload, once it outgrew one part
//! <root>/berth/quarantine/<alg>-<hex> a blob `berth check --repair` found corrupt
//! ```
//!
//! An upload is a multipart upload plus a record object that lists its parts and holds the
//! tail not yet large enough to be a part. An append reads the record, streams whole parts
//! (two in flight while the next fills: at most three parts in memory), and rewrites the
//! record in one conditional PUT: a failed append leaves the old record, so the upload stays
//! where it was. Nothing about an upload lives in the process, so any replica continues any
//! upload.
//!
//! A commit of an upload that never filled a part is a single PUT of the blob. A larger one
//! completes its multipart upload and copies the result to the blob's key (server-side: one
//! CopyObject up to 5 GiB, parallel UploadPartCopy above; see `copy`). S3 PUTs and copies are
//! atomic and durable when acknowledged, so a blob is complete under its key or absent.
//!
//! Multipart uploads that a crash leaves behind without a record cost storage until aborted;
//! docs/kubernetes.md recommends the bucket lifecycle rule that aborts them after some days.

mod copy;
mod record;

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_oci::{Digest, Hasher};
use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesOrdered;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
    UpdateVersion,
};

use crate::{is_valid_upload_id, Appended, BlobStore, ByteStream, Observer, StorageError};
use record::UploadRecord;

/// S3's smallest part (every part of a multipart upload but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's largest part number.
const MAX_PARTS: usize = 10_000;
/// Part sizes grow by one `part_size` every this many parts (see [`S3BlobStore::part_size`]).
const PARTS_PER_STEP: usize = 1_000;
/// Parts of one append sent at once while the next fills (each is a part-sized buffer).
const PARTS_IN_FLIGHT: usize = 2;
/// How long a presigned blob URL stays valid (Distribution's S3 driver uses 20 minutes).
/// Distribution's repository index under the root, which `berth import` reads.
const INDEX: &str = "docker/registry/v2/repositories";
const PRESIGN_FOR: Duration = Duration::from_secs(20 * 60);

/// Where and how to reach the bucket; the fields of Distribution's `s3` storage driver.
#[derive(Clone, Debug, Default)]
pub struct S3Config {
    pub bucket: String,
    pub region: String,
    /// A custom endpoint (`http://minio:9000`, or a host with `secure` choosing the scheme);
    /// empty means AWS.
    pub endpoint: String,
    /// Static credentials; empty means the AWS chain (variables, web identity, instance role).
    pub access_key: String,
    pub secret_key: String,
    /// Prefix for every key, as Distribution's `rootdirectory`.
    pub root_directory: String,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`.
    pub force_path_style: bool,
    /// The scheme for an endpoint given without one.
    pub secure: bool,
    /// Accept any TLS certificate from the endpoint (test setups only).
    pub skip_verify: bool,
    /// Size of each multipart part, at least [`MIN_PART_SIZE`]; also the most an upload
    /// buffers in memory (it grows for very large blobs, see [`S3BlobStore::part_size`]).
    pub part_size: u64,
    /// Server-side encryption: SSE-KMS with `kms_key_id`, or SSE-S3 without one.
    pub encrypt: bool,
    pub kms_key_id: String,
    /// `x-amz-storage-class` of blobs written by a single PUT (e.g. `STANDARD_IA`).
    pub storage_class: String,
    /// Each request (one part at most) must complete within this time.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries of a failed request (5xx, throttling, connection errors) before giving up.
    pub max_retries: usize,
}

impl S3Config {
    /// The endpoint URL object_store is given, if not AWS's own.
    fn endpoint_url(&self) -> Option<String> {
        let endpoint = self.endpoint.trim().trim_end_matches('/');
        if endpoint.is_empty() {
            return None;
        }
        let (scheme, host) = match endpoint.split_once("://") {
            Some((scheme, host)) => (scheme.to_owned(), host),
            None => (
                if self.secure { "https" } else { "http" }.to_owned(),
                endpoint,
            ),
        };
        // Virtual-hosted style on a custom endpoint: the bucket is part of the host name.
        Some(if self.force_path_style {
            format!("{scheme}://{host}")
        } else {
            format!("{scheme}://{}.{host}", self.bucket)
        })
    }
}

#[derive(Clone)]
pub struct S3BlobStore {
    client: Arc<AmazonS3>,
    /// For the requests object_store has no call for (UploadPartCopy, through presigned URLs).
    http: reqwest_s3::Client,
    bucket: String,
    root: String,
    part_size: u64,
    /// Completed uploads up to this size are copied with one CopyObject, larger ones part by
    /// part (S3 refuses CopyObject above 5 GiB).
    copy_limit: u64,
    storage_class: String,
    observer: Option<Arc<dyn Observer>>,
}

impl std::fmt::Debug for S3BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3BlobStore")
            .field("bucket", &self.bucket)
            .field("root", &self.root)
            .field("part_size", &self.part_size)
            .finish()
    }
}

impl S3BlobStore {
    /// A store on `config`'s bucket. Makes no request: [`BlobStore::check`] tells whether the
    /// bucket is reachable with these credentials.
    pub fn new(config: &S3Config) -> Result<S3BlobStore, StorageError> {
        if config.bucket.is_empty() {
            return Err(invalid("the S3 bucket is not set"));
        }
        let part_size = config.part_size.max(MIN_PART_SIZE);
        // The HTTP client takes the process's TLS provider; Berth's is ring throughout. Fails
        // only when one is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = ClientOptions::new()
            .with_timeout(config.request_timeout)
            .with_connect_timeout(config.connect_timeout)
            .with_allow_http(true)
            .with_allow_invalid_certificates(config.skip_verify);
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: config.max_retries,
            retry_timeout: config.request_timeout,
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_client_options(options)
            .with_retry(retry)
            .with_virtual_hosted_style_request(!config.force_path_style);
        if !config.region.is_empty() {
            builder = builder.with_region(&config.region);
        }
        if let Some(endpoint) = config.endpoint_url() {
            builder = builder.with_endpoint(endpoint);
        }
        if !config.access_key.is_empty() {
            builder = builder
                .with_access_key_id(&config.access_key)
                .with_secret_access_key(&config.secret_key);
        }
        if config.encrypt {
            builder = if config.kms_key_id.is_empty() {
                let key = "aws_server_side_encryption"
                    .parse::<AmazonS3ConfigKey>()
                    .map_err(|e| invalid(e.to_string()))?;
                builder.with_config(key, "AES256")
            } else {
                builder.with_sse_kms_encryption(&config.kms_key_id)
            };
        }
        let client = builder
            .build()
            .map_err(|e| invalid(format!("the S3 configuration: {e}")))?;
        let http = reqwest_s3::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout.max(Duration::from_secs(600)))
            .tls_danger_accept_invalid_certs(config.skip_verify)
            .build()
            .map_err(|e| invalid(format!("an HTTP client for S3: {e}")))?;
        Ok(S3BlobStore {
            client: Arc::new(client),
            http,
            bucket: config.bucket.clone(),
            root: config.root_directory.trim_matches('/').to_owned(),
            part_size,
            copy_limit: copy::COPY_OBJECT_LIMIT,
            storage_class: config.storage_class.clone(),
            observer: None,
        })
    }

    /// Reports every operation, with its time from call to answer, to `observer`.
    pub fn observed_by(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Copies completed uploads above `limit` bytes part by part instead of with one
    /// CopyObject: the suite lowers it to exercise that path without 5 GiB of test data.
    pub fn with_copy_limit(mut self, limit: u64) -> Self {
        self.copy_limit = limit;
        self
    }

    /// The size of part `index` (0-based): `part_size` for the first thousand parts, twice
    /// that for the next thousand, and so on, so that 10,000 parts hold 55,000 × `part_size`
    /// (537 GiB at the default 10 MiB) while small and medium blobs keep small parts. A
    /// 100 GiB layer at 10 MiB ends with 50 MiB parts.
    fn part_size(&self, index: usize) -> u64 {
        self.part_size * (1 + (index / PARTS_PER_STEP) as u64)
    }

    fn key(&self, relative: &str) -> Path {
        if self.root.is_empty() {
            Path::from(relative)
        } else {
            Path::from(format!("{}/{relative}", self.root))
        }
    }

    fn blob_key(&self, digest: &Digest) -> Path {
        let hex = digest.hex();
        self.key(&format!(
            "docker/registry/v2/blobs/{}/{}/{hex}/data",
            digest.algorithm().as_str(),
            &hex[..2]
        ))
    }

    fn blobs_prefix(&self) -> Path {
        self.key("docker/registry/v2/blobs")
    }

    fn uploads_prefix(&self) -> Path {
        self.key("berth/uploads")
    }

    fn record_key(&self, id: &str) -> Path {
        self.key(&format!("berth/uploads/{id}/record"))
    }

    fn upload_data_key(&self, id: &str) -> Path {
        self.key(&format!("berth/uploads/{id}/data"))
    }

    async fn observed<T>(
        &self,
        op: &'static str,
        work: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        crate::observed(self.observer.as_ref(), op, work).await
    }

    fn attributes(&self) -> Attributes {
        let mut attributes = Attributes::new();
        if !self.storage_class.is_empty() {
            attributes.insert(Attribute::StorageClass, self.storage_class.clone().into());
        }
        attributes
    }

    /// The upload's record and its ETag (for the conditional rewrite), or `UploadNotFound`.
    async fn load(&self, id: &str) -> Result<(UploadRecord, Option<String>), StorageError> {
        if !is_valid_upload_id(id) {
            return Err(StorageError::UploadNotFound);
        }
        let got = self
            .client
            .get(&self.record_key(id))
            .await
            .map_err(|e| on_missing(e, StorageError::UploadNotFound))?;
        let etag = got.meta.e_tag.clone();
        let bytes = got.bytes().await.map_err(classify)?;
        let record = UploadRecord::decode(bytes).map_err(|e| {
            StorageError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        Ok((record, etag))
    }

    /// Writes the record; with `previous`, only over that version of it where the server
    /// supports conditional writes (two replicas appending to one upload at once: one wins).
    async fn store_record(
        &self,
        id: &str,
        record: &UploadRecord,
        previous: Option<String>,
    ) -> Result<Option<String>, StorageError> {
        let mode = match previous {
            Some(e_tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
            None => PutMode::Overwrite,
        };
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let written = self
            .client
            .put_opts(&self.record_key(id), record.encode().into(), options)
            .await
            .map_err(|e| match e {
                object_store::Error::Precondition { .. } => changed_meanwhile(),
                e => classify(e),
            })?;
        Ok(written.e_tag)
    }

    /// Starts the multipart upload behind `id` and records it before any part is written,
    /// so that a purge can always abort it.
    async fn start_multipart(
        &self,
        id: &str,
        record: &mut UploadRecord,
        etag: &mut Option<String>,
    ) -> Result<String, StorageError> {
        let options = PutMultipartOptions {
            attributes: self.attributes(),
            ..PutMultipartOptions::default()
        };
        let multipart = self
            .client
            .create_multipart_opts(&self.upload_data_key(id), options)
            .await
            .map_err(classify)?;
        record.header.multipart = Some(multipart.clone());
        *etag = self.store_record(id, record, etag.take()).await?;
        Ok(multipart)
    }

    async fn put_part(
        &self,
        id: &str,
        multipart: &str,
        index: usize,
        payload: PutPayload,
    ) -> Result<String, StorageError> {
        if index >= MAX_PARTS {
            return Err(invalid("the upload exceeds S3's 10,000 parts"));
        }
        let part = self
            .client
            .put_part(
                &self.upload_data_key(id),
                &multipart.to_owned(),
                index,
                payload,
            )
            .await
            .map_err(classify)?;
        Ok(part.content_id)
    }

    /// The completed multipart upload of `id` at its data key: completes it, or finds it
    /// completed by an earlier commit attempt that failed after that step.
    async fn complete_multipart(
        &self,
        id: &str,
        record: &UploadRecord,
        multipart: &str,
    ) -> Result<(), StorageError> {
        let data = self.upload_data_key(id);
        if let Ok(meta) = self.client.head(&data).await {
            if meta.size == record.size() {
                return Ok(());
            }
        }
        let mut parts: Vec<PartId> = record
            .header
            .parts
            .iter()
            .map(|etag| PartId {
                content_id: etag.clone(),
            })
            .collect();
        if !record.tail.is_empty() {
            let last = self
                .put_part(id, multipart, parts.len(), record.tail.clone().into())
                .await?;
            parts.push(PartId { content_id: last });
        }
        self.client
            .complete_multipart(&data, &multipart.to_owned(), parts)
            .await
            .map_err(classify)?;
        Ok(())
    }
}

/// A part's ETag once the store has it.
type PartResult = Result<String, StorageError>;

/// Collects a stream's chunks into one contiguous buffer per part. Copying each chunk costs a
/// memcpy, and buys memory that goes back to the system: a part-sized buffer is one mapping
/// (above the allocator's mmap threshold), unmapped once its part is sent, where the network's
/// small frames kept as they are stayed in the allocator's arenas after the upload (tens of
/// MiB of resident memory after a 1 GiB push).
struct PartBuffer {
    filling: BytesMut,
}

impl PartBuffer {
    fn new(capacity: u64) -> PartBuffer {
        PartBuffer {
            filling: BytesMut::with_capacity(capacity as usize),
        }
    }

    fn len(&self) -> u64 {
        self.filling.len() as u64
    }

    fn push(&mut self, chunk: &[u8]) {
        self.filling.extend_from_slice(chunk);
    }

    /// The first `n` bytes (at most `len`), as a part's payload; what is left moves to a new
    /// buffer of `next_capacity`, so the part's allocation is freed with the part.
    fn take(&mut self, n: u64, next_capacity: u64) -> PutPayload {
        let n = n.min(self.len()) as usize;
        let mut next =
            BytesMut::with_capacity((next_capacity as usize).max(self.filling.len() - n));
        next.extend_from_slice(&self.filling[n..]);
        let mut part = std::mem::replace(&mut self.filling, next);
        part.truncate(n);
        part.freeze().into()
    }

    /// What is left, in an allocation of its own size (it becomes the record's tail).
    fn into_bytes(self) -> Bytes {
        Bytes::copy_from_slice(&self.filling)
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        self.observed("blob_size", async {
            match self.client.head(&self.blob_key(digest)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(classify(e)),
            }
        })
        .await
    }

    async fn read_blob(
        &self,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<ByteStream, StorageError> {
        self.observed("read_blob", async {
            let key = self.blob_key(digest);
            if range.is_empty() {
                // A zero-length range is no request S3 can answer; the blob must still exist.
                self.client
                    .head(&key)
                    .await
                    .map_err(|e| on_missing(e, StorageError::BlobNotFound))?;
                return Ok(Box::pin(futures_util::stream::empty()) as ByteStream);
            }
            let options = GetOptions {
                range: Some(GetRange::Bounded(range)),
                ..GetOptions::default()
            };
            let got = self
                .client
                .get_opts(&key, options)
                .await
                .map_err(|e| on_missing(e, StorageError::BlobNotFound))?;
            let stream = got
                .into_stream()
                .map_err(|e| std::io::Error::other(classify(e)));
            Ok(Box::pin(stream) as ByteStream)
        })
        .await
    }

    async fn delete_blob(&self, digest: &Digest) -> Result<bool, StorageError> {
        self.observed("delete_blob", async {
            let key = self.blob_key(digest);
            match self.client.head(&key).await {
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(classify(e)),
                Ok(_) => {}
            }
            match self.client.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
                Err(e) => Err(classify(e)),
            }
        })
        .await
    }

    async fn create_upload(&self, id: &str) -> Result<(), StorageError> {
        self.observed("create_upload", async {
            if !is_valid_upload_id(id) {
                return Err(StorageError::UploadNotFound);
            }
            self.store_record(id, &UploadRecord::default(), None)
                .await?;
            Ok(())
        })
        .await
    }

    async fn upload_size(&self, id: &str) -> Result<Option<u64>, StorageError> {
        self.observed("upload_size", async {
            if !is_valid_upload_id(id) {
                return Ok(None);
            }
            let options = GetOptions {
                range: Some(GetRange::Bounded(0..record::FIRST_LINE_MAX)),
                ..GetOptions::default()
            };
            let got = match self.client.get_opts(&self.record_key(id), options).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(classify(e)),
            };
            let start = got.bytes().await.map_err(classify)?;
            let size = record::stated_size(&start).map_err(|e| {
                StorageError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            })?;
            Ok(Some(size))
        })
        .await
    }

    async fn append_upload(
        &self,
        id: &str,
        offset: u64,
        mut data: ByteStream,
        mut hasher: Hasher,
    ) -> Result<Appended, StorageError> {
        self.observed("append_upload", async {
            let (mut record, mut etag) = self.load(id).await?;
            if record.size() != offset {
                return Err(StorageError::OffsetMismatch {
                    expected: offset,
                    actual: record.size(),
                });
            }
            if record.header.hash_state.is_some()
                && record.header.hash_state != Some(hex::encode(hasher.state()))
            {
                // The caller hashed other bytes than the record holds: another request
                // appended the same length since.
                return Err(changed_meanwhile());
            }
            let old_tail = std::mem::take(&mut record.tail);
            let first_part = record.header.parts.len();
            let mut pending = PartBuffer::new(self.part_size(first_part));
            pending.push(&old_tail);
            // Parts written here count only once the record lists them: if this append
            // fails, the next one writes the same part numbers again.
            let mut written: Vec<String> = Vec::new();
            let mut written_bytes = 0u64;
            // Up to PARTS_IN_FLIGHT parts are sent while the next fills, so the client's bytes
            // keep flowing while the store takes a part, and a store that handles each request
            // on one core (Garage hashes every part) works on several. All stay in this task,
            // in part order: an append that fails drops its parts in flight.
            let mut sending: FuturesOrdered<Pin<Box<dyn Future<Output = PartResult> + Send + '_>>> =
                FuturesOrdered::new();
            loop {
                let next = if sending.is_empty() {
                    data.next().await
                } else {
                    tokio::select! {
                        Some(sent) = sending.next() => {
                            written.push(sent?);
                            continue;
                        }
                        next = data.next() => next,
                    }
                };
                let Some(chunk) = next else { break };
                let chunk = chunk.map_err(StorageError::Client)?;
                hasher.update(&chunk);
                pending.push(&chunk);
                loop {
                    let index = record.header.parts.len() + written.len() + sending.len();
                    let size = self.part_size(index);
                    if pending.len() < size {
                        break;
                    }
                    let multipart = match record.header.multipart.clone() {
                        Some(m) => m,
                        None => {
                            // The record keeps its old tail until this append completes.
                            let mut at_start = UploadRecord {
                                header: record.header.clone(),
                                tail: old_tail.clone(),
                            };
                            let m = self.start_multipart(id, &mut at_start, &mut etag).await?;
                            record.header.multipart = Some(m.clone());
                            m
                        }
                    };
                    if sending.len() >= PARTS_IN_FLIGHT {
                        if let Some(sent) = sending.next().await {
                            written.push(sent?);
                        }
                    }
                    let payload = pending.take(size, self.part_size(index + 1));
                    sending.push_back(Box::pin(async move {
                        self.put_part(id, &multipart, index, payload).await
                    }));
                    written_bytes += size;
                }
            }
            while let Some(sent) = sending.next().await {
                written.push(sent?);
            }
            record.header.parts.extend(written);
            record.header.parts_bytes += written_bytes;
            record.header.hash_state = Some(hex::encode(hasher.state()));
            record.tail = pending.into_bytes();
            self.store_record(id, &record, etag).await?;
            Ok(Appended {
                size: record.size(),
                hasher,
            })
        })
        .await
    }

    async fn read_upload(&self, id: &str) -> Result<ByteStream, StorageError> {
        self.observed("read_upload", async {
            let (record, _) = self.load(id).await?;
            if !record.header.parts.is_empty() {
                // A multipart upload cannot be read before it completes; the registry saves
                // the hash state of every upload this large, so only a lost state gets here.
                return Err(StorageError::Io(std::io::Error::other(
                    "the upload's hash state was lost and S3 cannot read an unfinished \
                     multipart upload back: the client must start this upload again",
                )));
            }
            let tail = record.tail;
            Ok(Box::pin(futures_util::stream::once(async move { Ok(tail) })) as ByteStream)
        })
        .await
    }

    async fn commit_upload(&self, id: &str, digest: &Digest) -> Result<(), StorageError> {
        self.observed("commit_upload", async {
            let (record, _) = self.load(id).await?;
            check_digest(&record, digest)?;
            let blob = self.blob_key(digest);
            match (&record.header.multipart, record.header.parts.is_empty()) {
                (Some(multipart), false) => {
                    self.complete_multipart(id, &record, multipart).await?;
                    let data = self.upload_data_key(id);
                    self.copy_into_place(&data, &blob, record.size()).await?;
                    delete_if_present(&self.client, &data).await?;
                }
                (multipart, _) => {
                    let options = PutOptions {
                        attributes: self.attributes(),
                        ..PutOptions::default()
                    };
                    self.client
                        .put_opts(&blob, record.tail.clone().into(), options)
                        .await
                        .map_err(classify)?;
                    if let Some(multipart) = multipart {
                        self.abort(id, multipart).await?;
                    }
                }
            }
            delete_if_present(&self.client, &self.record_key(id)).await
        })
        .await
    }

    async fn delete_upload(&self, id: &str) -> Result<(), StorageError> {
        self.observed("delete_upload", async {
            let record = match self.load(id).await {
                Ok((record, _)) => record,
                Err(StorageError::UploadNotFound) => return Ok(()),
                Err(e) => return Err(e),
            };
            if let Some(multipart) = &record.header.multipart {
                self.abort(id, multipart).await?;
            }
            delete_if_present(&self.client, &self.upload_data_key(id)).await?;
            delete_if_present(&self.client, &self.record_key(id)).await
        })
        .await
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.observed("check", async {
            // Any answer but "not found" means the bucket, the endpoint or the credentials
            // are wrong (or the store is down). A GET, not a HEAD: its error answer has a
            // body that names the problem (SignatureDoesNotMatch, NoSuchBucket).
            match self.client.get(&self.key("berth/probe")).await {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(classify(e)),
            }
        })
        .await
    }

    async fn list_blobs(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<Digest>, StorageError> {
        self.observed("list_blobs", async {
            let prefix = self.blobs_prefix();
            let listing = match after {
                Some(digest) => self
                    .client
                    .list_with_offset(Some(&prefix), &self.blob_key(digest)),
                None => self.client.list(Some(&prefix)),
            };
            let mut listing = std::pin::pin!(listing);
            let mut found = Vec::new();
            while found.len() < limit {
                let Some(object) = listing.next().await else {
                    break;
                };
                let object = object.map_err(classify)?;
                if let Some(digest) = digest_of_blob_key(&object.location) {
                    if after.is_none_or(|a| &digest > a) {
                        found.push(digest);
                    }
                }
            }
            Ok(found)
        })
        .await
    }

    async fn list_uploads(&self) -> Result<Vec<String>, StorageError> {
        self.observed("list_uploads", async {
            let listing = self
                .client
                .list_with_delimiter(Some(&self.uploads_prefix()))
                .await
                .map_err(classify)?;
            Ok(listing
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_owned))
                .filter(|id| is_valid_upload_id(id))
                .collect())
        })
        .await
    }

    async fn quarantine_blob(&self, digest: &Digest) -> Result<Option<String>, StorageError> {
        let to = self.key(&format!(
            "berth/quarantine/{}-{}",
            digest.algorithm().as_str(),
            digest.hex()
        ));
        match self.client.rename(&self.blob_key(digest), &to).await {
            Ok(()) => Ok(Some(to.to_string())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    async fn list_distribution_index(&self) -> Result<Vec<String>, StorageError> {
        let prefix = self.key(INDEX);
        let mut listing = std::pin::pin!(self.client.list(Some(&prefix)));
        let mut found = Vec::new();
        while let Some(object) = listing.next().await {
            let object = object.map_err(classify)?;
            let relative = object
                .location
                .prefix_match(&prefix)
                .map(|parts| parts.map(|p| p.as_ref().to_owned()).collect::<Vec<_>>());
            if let Some(parts) = relative.filter(|p| !p.iter().any(|s| s == "_uploads")) {
                found.push(parts.join("/"));
            }
        }
        Ok(found)
    }

    async fn read_distribution_index(&self, path: &str) -> Result<Option<Bytes>, StorageError> {
        if !crate::is_index_path(path) {
            return Ok(None);
        }
        match self.client.get(&self.key(&format!("{INDEX}/{path}"))).await {
            Ok(found) => Ok(Some(found.bytes().await.map_err(classify)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    async fn blob_url(&self, digest: &Digest) -> Result<Option<String>, StorageError> {
        let url = self
            .client
            .signed_url(http::Method::GET, &self.blob_key(digest), PRESIGN_FOR)
            .await
            .map_err(classify)?;
        Ok(Some(url.to_string()))
    }
}

impl S3BlobStore {
    async fn abort(&self, id: &str, multipart: &str) -> Result<(), StorageError> {
        match self
            .client
            .abort_multipart(&self.upload_data_key(id), &multipart.to_owned())
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }
}

/// `…/blobs/<algorithm>/<xx>/<hex>/data` as a digest; anything else is not a blob.
fn digest_of_blob_key(key: &Path) -> Option<Digest> {
    let parts: Vec<&str> = key.as_ref().rsplitn(5, '/').collect();
    match parts.as_slice() {
        ["data", hex, prefix, algorithm, ..] if hex.starts_with(prefix) => {
            format!("{algorithm}:{hex}").parse().ok()
        }
        _ => None,
    }
}

async fn delete_if_present(client: &AmazonS3, key: &Path) -> Result<(), StorageError> {
    match client.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(classify(e)),
    }
}

fn changed_meanwhile() -> StorageError {
    StorageError::Unavailable("another request changed this upload at the same time".into())
}

/// The record's bytes hash to `digest` (a record written before hash states were kept has
/// none, and relies on the caller's check alone).
fn check_digest(record: &UploadRecord, digest: &Digest) -> Result<(), StorageError> {
    let Some(state) = &record.header.hash_state else {
        return Ok(());
    };
    let stored = hex::decode(state)
        .ok()
        .and_then(|bytes| Hasher::from_state(&bytes).ok())
        .filter(|h| h.len() == record.size())
        .map(Hasher::finish);
    match stored {
        Some(d) if &d == digest => Ok(()),
        _ => Err(StorageError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the stored upload does not hash to {digest}: it changed while being committed"
            ),
        ))),
    }
}

fn invalid(message: impl Into<String>) -> StorageError {
    StorageError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        message.into(),
    ))
}

/// `missing` for a not-found answer, else the error classified.
fn on_missing(e: object_store::Error, missing: StorageError) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => missing,
        e => classify(e),
    }
}

/// An object_store error in the registry's terms. object_store has already retried what is
/// safe to retry (5xx, throttling, dropped connections, timeouts), so an error it reports as
/// generic is one the store kept answering: transient by nature. Refused credentials and
/// missing permissions are the operator's to fix, and say so.
fn classify(e: object_store::Error) -> StorageError {
    use std::io::{Error, ErrorKind};
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => StorageError::Io(Error::new(
            ErrorKind::PermissionDenied,
            format!("S3 refused Berth's credentials or lacks a permission: {e}"),
        )),
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. } => {
            StorageError::Unavailable(format!("S3: {e}"))
        }
        e => StorageError::Io(Error::other(format!("S3: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(part_size: u64) -> S3BlobStore {
        S3BlobStore::new(&S3Config {
            bucket: "b".into(),
            region: "us-east-1".into(),
            endpoint: "http://127.0.0.1:1".into(),
            access_key: "k".into(),
            secret_key: "s".into(),
            force_path_style: true,
            part_size,
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            ..S3Config::default()
        })
        .unwrap()
    }

    #[test]
    fn part_sizes_fit_a_100_gib_layer_in_10000_parts() {
        let s = store(10 << 20);
        let total: u64 = (0..MAX_PARTS).map(|i| s.part_size(i)).sum();
        assert!(total > 500 << 30, "{total}");
        let mut left: u64 = 100 << 30;
        let mut parts = 0;
        while left > 0 {
            left = left.saturating_sub(s.part_size(parts));
            parts += 1;
        }
        assert!(parts < MAX_PARTS, "{parts} parts");
        assert_eq!(s.part_size(parts), 50 << 20);
        assert_eq!(store(1).part_size(0), MIN_PART_SIZE, "S3's minimum holds");
    }

    #[test]
    fn keys_follow_distribution_and_parse_back() {
        let s = store(0);
        let d = Digest::sha256_of(b"x");
        let key = s.blob_key(&d);
        assert_eq!(
            key.as_ref(),
            format!(
                "docker/registry/v2/blobs/sha256/{}/{}/data",
                &d.hex()[..2],
                d.hex()
            )
        );
        assert_eq!(digest_of_blob_key(&key), Some(d));
        assert_eq!(
            digest_of_blob_key(&Path::from("docker/registry/v2/blobs/x")),
            None
        );
    }

    #[test]
    fn endpoints() {
        let mut c = S3Config {
            bucket: "reg".into(),
            endpoint: "minio:9000".into(),
            force_path_style: true,
            ..S3Config::default()
        };
        assert_eq!(c.endpoint_url().as_deref(), Some("http://minio:9000"));
        c.secure = true;
        assert_eq!(c.endpoint_url().as_deref(), Some("https://minio:9000"));
        c.force_path_style = false;
        c.endpoint = "http://s3.local/".into();
        assert_eq!(c.endpoint_url().as_deref(), Some("http://reg.s3.local"));
        c.endpoint.clear();
        assert_eq!(c.endpoint_url(), None);
    }

    #[test]
    fn part_buffer_cuts_exact_parts() {
        let mut b = PartBuffer::new(5);
        for chunk in [&b"abc"[..], b"defg", b"h"] {
            b.push(chunk);
        }
        let part: Vec<u8> = b.take(5, 5).into_iter().flatten().collect();
        assert_eq!(part, b"abcde");
        assert_eq!(b.len(), 3);
        assert_eq!(b.into_bytes(), Bytes::from_static(b"fgh"));
    }
}
