//! An upload continues in another registry instance (another replica, or this one after a
//! restart) from the hash state saved with its session, without reading back a byte — as an
//! object store that cannot read a multipart upload back needs.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_meta::{MetadataStore, SqliteStore};
use berth_oci::{Algorithm, Digest, Hasher, RepositoryName};
use berth_registry::{Actor, ChunkRange, Events, Registry, RegistryConfig};
use berth_storage::{Appended, BlobStore, ByteStream, FsBlobStore, StorageError};

/// The filesystem store, counting how often an upload is read back and its size asked.
struct CountingReads {
    inner: FsBlobStore,
    reads: AtomicUsize,
    sizes: AtomicUsize,
}

#[async_trait]
impl BlobStore for CountingReads {
    async fn blob_size(&self, d: &Digest) -> Result<Option<u64>, StorageError> {
        self.inner.blob_size(d).await
    }
    async fn read_blob(&self, d: &Digest, r: Range<u64>) -> Result<ByteStream, StorageError> {
        self.inner.read_blob(d, r).await
    }
    async fn delete_blob(&self, d: &Digest) -> Result<bool, StorageError> {
        self.inner.delete_blob(d).await
    }
    async fn create_upload(&self, id: &str) -> Result<(), StorageError> {
        self.inner.create_upload(id).await
    }
    async fn upload_size(&self, id: &str) -> Result<Option<u64>, StorageError> {
        self.sizes.fetch_add(1, Ordering::Relaxed);
        self.inner.upload_size(id).await
    }
    async fn append_upload(
        &self,
        id: &str,
        offset: u64,
        data: ByteStream,
        hasher: Hasher,
    ) -> Result<Appended, StorageError> {
        self.inner.append_upload(id, offset, data, hasher).await
    }
    async fn read_upload(&self, id: &str) -> Result<ByteStream, StorageError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_upload(id).await
    }
    async fn commit_upload(&self, id: &str, d: &Digest) -> Result<(), StorageError> {
        self.inner.commit_upload(id, d).await
    }
    async fn delete_upload(&self, id: &str) -> Result<(), StorageError> {
        self.inner.delete_upload(id).await
    }
    async fn check(&self) -> Result<(), StorageError> {
        self.inner.check().await
    }
    async fn list_blobs(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<Digest>, StorageError> {
        self.inner.list_blobs(after, limit).await
    }
    async fn list_uploads(&self) -> Result<Vec<String>, StorageError> {
        self.inner.list_uploads().await
    }
    async fn quarantine_blob(&self, digest: &Digest) -> Result<Option<String>, StorageError> {
        self.inner.quarantine_blob(digest).await
    }
    async fn list_distribution_index(&self) -> Result<Vec<String>, StorageError> {
        self.inner.list_distribution_index().await
    }
    async fn read_distribution_index(
        &self,
        path: &str,
    ) -> Result<Option<bytes::Bytes>, StorageError> {
        self.inner.read_distribution_index(path).await
    }
}

fn body(bytes: &[u8]) -> ByteStream {
    let chunk: std::io::Result<bytes::Bytes> = Ok(bytes::Bytes::copy_from_slice(bytes));
    Box::pin(futures_util::stream::iter([chunk]))
}

#[tokio::test]
async fn another_instance_continues_from_the_saved_hash_state() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Arc::new(CountingReads {
        inner: FsBlobStore::open(dir.path()).await.unwrap(),
        reads: AtomicUsize::new(0),
        sizes: AtomicUsize::new(0),
    });
    let meta = Arc::new(
        SqliteStore::open(&dir.path().join("m.sqlite"))
            .await
            .unwrap(),
    );
    let replica = || {
        Registry::new(
            blobs.clone(),
            meta.clone(),
            RegistryConfig::default(),
            Events::default(),
        )
    };
    let (a, b) = (replica(), replica());
    let actor = Actor::new("ci", "10.0.0.1");
    let repo: RepositoryName = "team/app".parse().unwrap();
    // Unaligned chunks, so the saved state carries an incomplete block; past the size from
    // which states are saved.
    let from = berth_registry::SAVE_HASH_FROM as usize;
    let data: Vec<u8> = (0..(2 * from + 200_003) as u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let (cut1, cut2) = (from + 70_001, 2 * from + 150_000);
    let (first, second, last) = (&data[..cut1], &data[cut1..cut2], &data[cut2..]);
    let id = a
        .start_upload(&actor, &repo, Algorithm::Sha256)
        .await
        .unwrap();
    let range = |start: usize, chunk: &[u8]| {
        Some(ChunkRange {
            start: start as u64,
            end: (start + chunk.len() - 1) as u64,
        })
    };
    a.append_upload(&repo, &id, range(0, first), None, body(first))
        .await
        .unwrap();
    wait_for_saved(&*meta, &id, first.len()).await;
    b.append_upload(&repo, &id, range(cut1, second), None, body(second))
        .await
        .unwrap();
    wait_for_saved(&*meta, &id, cut2).await;
    // Back to the replica that started it, whose own state and session are now stale.
    let digest = Digest::sha256_of(&data);
    a.finish_upload(
        &actor,
        &repo,
        &id,
        &digest,
        range(cut2, last),
        Some(last.len() as u64),
        Some(body(last)),
    )
    .await
    .unwrap();
    assert_eq!(
        blobs.reads.load(Ordering::Relaxed),
        0,
        "no byte was read back"
    );
    assert!(matches!(
        b.blob(&repo, &digest).await.unwrap(),
        berth_registry::BlobLookup::Blob { size } if size == data.len() as u64
    ));

    // A state that no longer matches what is stored is not trusted: the bytes are read back.
    let id = a
        .start_upload(&actor, &repo, Algorithm::Sha256)
        .await
        .unwrap();
    a.append_upload(&repo, &id, None, None, body(first))
        .await
        .unwrap();
    wait_for_saved(&*meta, &id, first.len()).await;
    meta.save_upload_hash(
        &id,
        &berth_meta::SavedHash {
            offset: 5,
            state: vec![1],
        },
    )
    .await
    .unwrap();
    b.finish_upload(
        &actor,
        &repo,
        &id,
        &Digest::sha256_of(first),
        None,
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(blobs.reads.load(Ordering::Relaxed), 1);

    // A small upload saves no state (reading it back is cheap): still correct elsewhere.
    let small = &data[..1000];
    let id = a
        .start_upload(&actor, &repo, Algorithm::Sha256)
        .await
        .unwrap();
    a.append_upload(&repo, &id, None, None, body(small))
        .await
        .unwrap();
    assert!(meta
        .get_upload(&id)
        .await
        .unwrap()
        .unwrap()
        .hash_state
        .is_none());
    b.finish_upload(
        &actor,
        &repo,
        &id,
        &Digest::sha256_of(small),
        None,
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(blobs.reads.load(Ordering::Relaxed), 2);
}

/// Streamed chunks (no `Content-Range`) go where this instance's state says without asking
/// storage; when another instance took a chunk since, the store refuses the stale offset
/// before reading the body and the chunk goes where the store says. A final `PUT` whose
/// digest the state already matches asks storage nothing either (an object store's GET).
#[tokio::test]
async fn streamed_chunks_trust_the_state_until_the_store_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Arc::new(CountingReads {
        inner: FsBlobStore::open(dir.path()).await.unwrap(),
        reads: AtomicUsize::new(0),
        sizes: AtomicUsize::new(0),
    });
    let meta = Arc::new(
        SqliteStore::open(&dir.path().join("m.sqlite"))
            .await
            .unwrap(),
    );
    let replica = || {
        Registry::new(
            blobs.clone(),
            meta.clone(),
            RegistryConfig::default(),
            Events::default(),
        )
    };
    let (a, b) = (replica(), replica());
    let actor = Actor::new("ci", "10.0.0.1");
    let repo: RepositoryName = "team/app".parse().unwrap();
    let sizes = || blobs.sizes.load(Ordering::Relaxed);

    // One instance throughout: storage is never asked where the upload stands.
    let data: Vec<u8> = (0..30_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let id = a
        .start_upload(&actor, &repo, Algorithm::Sha256)
        .await
        .unwrap();
    a.append_upload(&repo, &id, None, None, body(&data[..10_000]))
        .await
        .unwrap();
    a.append_upload(&repo, &id, None, None, body(&data[10_000..]))
        .await
        .unwrap();
    let digest = Digest::sha256_of(&data);
    a.finish_upload(&actor, &repo, &id, &digest, None, None, None)
        .await
        .unwrap();
    assert_eq!(sizes(), 0, "no size was asked of storage");

    // Chunks alternating between instances, the last back where the state is stale.
    let other: Vec<u8> = data.iter().rev().copied().collect();
    let id = a
        .start_upload(&actor, &repo, Algorithm::Sha256)
        .await
        .unwrap();
    a.append_upload(&repo, &id, None, None, body(&other[..1_000]))
        .await
        .unwrap();
    b.append_upload(&repo, &id, None, None, body(&other[1_000..5_000]))
        .await
        .unwrap();
    let size = a
        .append_upload(&repo, &id, None, None, body(&other[5_000..]))
        .await
        .unwrap();
    assert_eq!(size, other.len() as u64, "the stale chunk went to the end");
    let digest = Digest::sha256_of(&other);
    a.finish_upload(&actor, &repo, &id, &digest, None, None, None)
        .await
        .unwrap();

    // The last chunk through another instance: `a`'s state covers 1,000 bytes, which do not
    // hash to the digest, so the commit asks storage; a wrong digest is still refused.
    let reversed: Vec<u8> = other.iter().map(|b| b ^ 0x5a).collect();
    let id = a
        .start_upload(&actor, &repo, Algorithm::Sha256)
        .await
        .unwrap();
    a.append_upload(&repo, &id, None, None, body(&reversed[..1_000]))
        .await
        .unwrap();
    b.append_upload(&repo, &id, None, None, body(&reversed[1_000..]))
        .await
        .unwrap();
    let wrong = Digest::sha256_of(b"something else");
    assert!(matches!(
        a.finish_upload(&actor, &repo, &id, &wrong, None, None, None)
            .await,
        Err(berth_registry::RegistryError::DigestInvalid(_))
    ));
    let id = a
        .start_upload(&actor, &repo, Algorithm::Sha256)
        .await
        .unwrap();
    a.append_upload(&repo, &id, None, None, body(&reversed[..1_000]))
        .await
        .unwrap();
    b.append_upload(&repo, &id, None, None, body(&reversed[1_000..]))
        .await
        .unwrap();
    let digest = Digest::sha256_of(&reversed);
    // `a`'s state covers 1,000 bytes, which do not hash to the digest: it asks storage.
    let asked = sizes();
    a.finish_upload(&actor, &repo, &id, &digest, None, None, None)
        .await
        .unwrap();
    assert!(sizes() > asked, "a stale state sent the commit to storage");
    assert!(matches!(
        a.blob(&repo, &digest).await.unwrap(),
        berth_registry::BlobLookup::Blob { size } if size == reversed.len() as u64
    ));
}

async fn wait_for_saved(meta: &dyn MetadataStore, id: &str, offset: usize) {
    for _ in 0..100 {
        let session = meta.get_upload(id).await.unwrap().unwrap();
        if session
            .hash_state
            .is_some_and(|s| s.offset == offset as u64)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the hash state of {id} at {offset} was never saved");
}
