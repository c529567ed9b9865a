//! The suite every [`BlobStore`] backend must pass (in the spirit of Distribution's driver
//! `testsuites`): a backend is correct when this passes, with no per-backend test drift.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use berth_oci::{Algorithm, Digest};
use bytes::Bytes;
use futures_util::{stream, StreamExt};

use crate::{BlobStore, ByteStream, StorageError};

fn body(chunks: Vec<&'static [u8]>) -> ByteStream {
    Box::pin(stream::iter(
        chunks.into_iter().map(|c| Ok(Bytes::from_static(c))),
    ))
}

async fn collect(mut s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.expect("stream chunk"));
    }
    out
}

/// Uploads `data` as upload `id` and commits it; returns its digest.
pub async fn put_blob(store: &dyn BlobStore, id: &str, data: &'static [u8]) -> Digest {
    store.create_upload(id).await.expect("create upload");
    let appended = store
        .append_upload(id, 0, body(vec![data]), Algorithm::Sha256.hasher())
        .await
        .expect("append");
    let digest = appended.hasher.finish();
    store.commit_upload(id, &digest).await.expect("commit");
    digest
}

/// Runs every check against stores that `open` opens on one backend: most checks on one
/// instance, and the resume check across two (as a restart, or another replica, sees it).
pub async fn run_all<S: BlobStore>(open: impl AsyncFn() -> S) {
    let first = open().await;
    let store: &dyn BlobStore = &first;
    resume_in_a_fresh_instance(store, &open().await).await;
    roundtrip_and_ranges(store).await;
    chunked_append_and_offsets(store).await;
    large_append_hashes_every_byte(store).await;
    large_appends_at_unaligned_offsets(store).await;
    failed_append_is_rolled_back(store).await;
    missing_things(store).await;
    dedupe_and_delete(store).await;
    bad_upload_ids(store).await;
    small_unaligned_chunks(store).await;
    no_leftovers_after_commit_or_cancel(store).await;
    concurrent_commits_of_one_digest(store).await;
    listings(store).await;
    store.check().await.expect("check");
    if let Some(c) = store.capacity().await.expect("capacity") {
        assert!(c.total > 0 && c.free <= c.total, "{c:?}");
    }
}

/// An upload continues in another instance of the store from nothing but its offset and the
/// saved hash state: no instance state is needed, and no bytes are read back.
async fn resume_in_a_fresh_instance(first: &dyn BlobStore, second: &dyn BlobStore) {
    let (head, tail): (&'static [u8], &'static [u8]) = (&[7u8; 65_539], b"and the rest");
    first.create_upload("suite-resume").await.expect("create");
    let appended = first
        .append_upload(
            "suite-resume",
            0,
            body(vec![head]),
            Algorithm::Sha256.hasher(),
        )
        .await
        .expect("first half");
    // Only the state's bytes cross over, as they do through the metadata store.
    let saved = appended.hasher.state();

    let size = second
        .upload_size("suite-resume")
        .await
        .expect("size")
        .expect("the upload is visible to the other instance");
    assert_eq!(size, head.len() as u64);
    let hasher = berth_oci::Hasher::from_state(&saved).expect("saved state");
    let appended = second
        .append_upload("suite-resume", size, body(vec![tail]), hasher)
        .await
        .expect("second half");
    assert_eq!(appended.size, (head.len() + tail.len()) as u64);
    let digest = appended.hasher.finish();
    let whole = [head, tail].concat();
    assert_eq!(digest, Digest::sha256_of(&whole));
    second
        .commit_upload("suite-resume", &digest)
        .await
        .expect("commit");
    let range = 0..whole.len() as u64;
    for store in [first, second] {
        let read = collect(store.read_blob(&digest, range.clone()).await.expect("read")).await;
        assert!(read == whole, "both instances serve the committed blob");
    }
    assert!(second.delete_blob(&digest).await.expect("delete"));
}

async fn roundtrip_and_ranges(store: &dyn BlobStore) {
    let digest = put_blob(store, "suite-rt", b"0123456789").await;
    assert_eq!(digest, Digest::sha256_of(b"0123456789"));
    assert_eq!(store.blob_size(&digest).await.unwrap(), Some(10));
    let all = collect(store.read_blob(&digest, 0..10).await.unwrap()).await;
    assert_eq!(all, b"0123456789");
    let part = collect(store.read_blob(&digest, 3..7).await.unwrap()).await;
    assert_eq!(part, b"3456");
    assert_eq!(store.upload_size("suite-rt").await.unwrap(), None);
}

async fn chunked_append_and_offsets(store: &dyn BlobStore) {
    let id = "suite-chunks";
    store.create_upload(id).await.unwrap();
    assert_eq!(store.upload_size(id).await.unwrap(), Some(0));
    let a = store
        .append_upload(
            id,
            0,
            body(vec![b"hello ", b"wor"]),
            Algorithm::Sha512.hasher(),
        )
        .await
        .unwrap();
    assert_eq!(a.size, 9);
    // Refused before the body is read: the caller may send it again elsewhere.
    let polled = Arc::new(AtomicBool::new(false));
    let watched = {
        let polled = polled.clone();
        Box::pin(stream::once(async move {
            polled.store(true, Ordering::SeqCst);
            Ok(Bytes::from_static(b"x"))
        })) as ByteStream
    };
    let wrong = store
        .append_upload(id, 3, watched, Algorithm::Sha512.hasher())
        .await;
    assert!(matches!(
        wrong,
        Err(StorageError::OffsetMismatch {
            expected: 3,
            actual: 9
        })
    ));
    assert!(
        !polled.load(Ordering::SeqCst),
        "a refused append read its body"
    );
    let b = store
        .append_upload(id, 9, body(vec![b"ld"]), a.hasher)
        .await
        .unwrap();
    assert_eq!(b.size, 11);
    assert_eq!(
        collect(store.read_upload(id).await.unwrap()).await,
        b"hello world"
    );
    let digest = b.hasher.finish();
    assert_eq!(digest, Digest::of(Algorithm::Sha512, b"hello world"));
    store.commit_upload(id, &digest).await.unwrap();
    assert_eq!(store.blob_size(&digest).await.unwrap(), Some(11));
}

/// Large enough that backends may hash on another thread; chunks of uneven sizes.
async fn large_append_hashes_every_byte(store: &dyn BlobStore) {
    let data: Vec<u8> = (0..20_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = Digest::sha256_of(&data);
    let chunks: Vec<io::Result<Bytes>> = data
        .chunks(777_777)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    store.create_upload("suite-large").await.unwrap();
    let a = store
        .append_upload(
            "suite-large",
            0,
            Box::pin(stream::iter(chunks)),
            Algorithm::Sha256.hasher(),
        )
        .await
        .unwrap();
    assert_eq!(a.size, data.len() as u64);
    assert_eq!(a.hasher.finish(), expected);
    store.commit_upload("suite-large", &expected).await.unwrap();
    let back = collect(
        store
            .read_blob(&expected, 0..data.len() as u64)
            .await
            .unwrap(),
    )
    .await;
    assert!(back == data, "read back differs");
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect()
}

fn uneven_chunks(data: &[u8]) -> ByteStream {
    let chunks: Vec<io::Result<Bytes>> = data
        .chunks(1_000_003)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(stream::iter(chunks))
}

/// Several large appends, each starting where the previous one ended at an offset that is not
/// a multiple of any block size (backends may write large appends differently, e.g. unbuffered
/// in aligned blocks), one of them broken off midway: every byte must read back in place.
async fn large_appends_at_unaligned_offsets(store: &dyn BlobStore) {
    let id = "suite-unaligned";
    let first = pattern(9_000_123, 1);
    let second = pattern(10_485_765, 2);
    let third = pattern(4_099, 3);
    store.create_upload(id).await.unwrap();
    let a = store
        .append_upload(id, 0, uneven_chunks(&first), Algorithm::Sha256.hasher())
        .await
        .unwrap();
    assert_eq!(a.size, first.len() as u64);

    let lost = pattern(12_000_000, 4);
    let broken: ByteStream = Box::pin(uneven_chunks(&lost).chain(stream::iter(vec![Err(
        io::Error::new(io::ErrorKind::ConnectionReset, "client went away"),
    )])));
    let r = store
        .append_upload(id, a.size, broken, a.hasher.clone())
        .await;
    assert!(matches!(r, Err(StorageError::Client(_))), "{r:?}");
    assert_eq!(store.upload_size(id).await.unwrap(), Some(a.size));

    let b = store
        .append_upload(id, a.size, uneven_chunks(&second), a.hasher)
        .await
        .unwrap();
    let c = store
        .append_upload(id, b.size, uneven_chunks(&third), b.hasher)
        .await
        .unwrap();
    let all = [first, second, third].concat();
    assert_eq!(c.size, all.len() as u64);
    let digest = c.hasher.finish();
    assert_eq!(digest, Digest::sha256_of(&all));
    store.commit_upload(id, &digest).await.unwrap();
    let back = collect(store.read_blob(&digest, 0..all.len() as u64).await.unwrap()).await;
    assert!(back == all, "read back differs");
}

async fn failed_append_is_rolled_back(store: &dyn BlobStore) {
    let id = "suite-broken";
    store.create_upload(id).await.unwrap();
    let kept = store
        .append_upload(id, 0, body(vec![b"keep"]), Algorithm::Sha256.hasher())
        .await
        .unwrap();
    let broken: ByteStream = Box::pin(stream::iter(vec![
        Ok(Bytes::from_static(b"lost")),
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ]));
    let r = store.append_upload(id, 4, broken, kept.hasher).await;
    assert!(matches!(r, Err(StorageError::Client(_))), "{r:?}");
    assert_eq!(store.upload_size(id).await.unwrap(), Some(4));
    store.delete_upload(id).await.unwrap();
    assert_eq!(store.upload_size(id).await.unwrap(), None);
    store
        .delete_upload(id)
        .await
        .expect("deleting twice is fine");
}

async fn missing_things(store: &dyn BlobStore) {
    let absent = Digest::sha256_of(b"never stored");
    assert_eq!(store.blob_size(&absent).await.unwrap(), None);
    assert!(matches!(
        store.read_blob(&absent, 0..1).await,
        Err(StorageError::BlobNotFound)
    ));
    assert!(!store.delete_blob(&absent).await.unwrap());
    assert!(matches!(
        store
            .append_upload(
                "suite-none",
                0,
                body(vec![b"x"]),
                Algorithm::Sha256.hasher()
            )
            .await,
        Err(StorageError::UploadNotFound)
    ));
    assert!(matches!(
        store.commit_upload("suite-none", &absent).await,
        Err(StorageError::UploadNotFound)
    ));
}

async fn dedupe_and_delete(store: &dyn BlobStore) {
    let first = put_blob(store, "suite-d1", b"same bytes").await;
    let second = put_blob(store, "suite-d2", b"same bytes").await;
    assert_eq!(first, second);
    assert_eq!(store.upload_size("suite-d2").await.unwrap(), None);
    assert!(store.delete_blob(&first).await.unwrap());
    assert_eq!(store.blob_size(&first).await.unwrap(), None);
}

async fn bad_upload_ids(store: &dyn BlobStore) {
    for bad in ["../escape", "a/b", "", "dot.dot"] {
        assert!(
            matches!(
                store.create_upload(bad).await,
                Err(StorageError::UploadNotFound)
            ),
            "{bad:?} accepted"
        );
    }
}

/// Many small chunks at unaligned offsets (a backend with a minimum part size must buffer).
async fn small_unaligned_chunks(store: &dyn BlobStore) {
    let id = "suite-small-chunks";
    store.create_upload(id).await.unwrap();
    let data: Vec<u8> = (0..10_007u32).map(|i| (i % 253) as u8).collect();
    let mut hasher = Algorithm::Sha256.hasher();
    let mut offset = 0u64;
    for chunk in data.chunks(97) {
        let bytes = Bytes::copy_from_slice(chunk);
        let stream: ByteStream = Box::pin(stream::iter([Ok(bytes)]));
        let appended = store
            .append_upload(id, offset, stream, hasher)
            .await
            .unwrap();
        offset = appended.size;
        hasher = appended.hasher;
    }
    assert_eq!(offset, data.len() as u64);
    let digest = hasher.finish();
    assert_eq!(digest, Digest::sha256_of(&data));
    store.commit_upload(id, &digest).await.unwrap();
    let back = collect(
        store
            .read_blob(&digest, 0..data.len() as u64)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(back, data);
}

/// Committing or cancelling leaves no upload behind.
async fn no_leftovers_after_commit_or_cancel(store: &dyn BlobStore) {
    put_blob(store, "suite-left-commit", b"committed and gone").await;
    store.create_upload("suite-left-cancel").await.unwrap();
    store
        .append_upload(
            "suite-left-cancel",
            0,
            body(vec![b"cancelled"]),
            Algorithm::Sha256.hasher(),
        )
        .await
        .unwrap();
    store.delete_upload("suite-left-cancel").await.unwrap();
    let uploads = store.list_uploads().await.unwrap();
    for id in ["suite-left-commit", "suite-left-cancel"] {
        assert!(
            !uploads.iter().any(|u| u == id),
            "{id} left behind: {uploads:?}"
        );
        assert_eq!(store.upload_size(id).await.unwrap(), None);
    }
}

/// The same bytes committed by several uploads at once: one blob, intact, and no upload left.
async fn concurrent_commits_of_one_digest(store: &dyn BlobStore) {
    let data: &'static [u8] = b"the same layer pushed by many clients at once";
    let ids: Vec<String> = (0..8).map(|i| format!("suite-same-{i}")).collect();
    let commits = ids.iter().map(|id| put_blob(store, id, data));
    let digests = futures_util::future::join_all(commits).await;
    assert!(digests.iter().all(|d| *d == Digest::sha256_of(data)));
    let back = collect(
        store
            .read_blob(&digests[0], 0..data.len() as u64)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(back, data);
    let uploads = store.list_uploads().await.unwrap();
    assert!(
        !uploads.iter().any(|u| u.starts_with("suite-same-")),
        "{uploads:?}"
    );
}

/// Blobs are listed in digest order and in pages; uploads in progress are listed.
async fn listings(store: &dyn BlobStore) {
    let a = put_blob(store, "suite-list-a", b"listed blob a").await;
    let b = put_blob(store, "suite-list-b", b"listed blob b").await;
    let all = store.list_blobs(None, usize::MAX).await.unwrap();
    assert!(all.contains(&a) && all.contains(&b), "{all:?}");
    assert!(all.windows(2).all(|w| w[0] < w[1]), "in order, each once");
    let first = store.list_blobs(None, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    let rest = store.list_blobs(Some(&first[0]), usize::MAX).await.unwrap();
    assert_eq!(rest.len(), all.len() - 1);
    store.create_upload("suite-list-open").await.unwrap();
    assert!(store
        .list_uploads()
        .await
        .unwrap()
        .contains(&"suite-list-open".to_owned()));
    store.delete_upload("suite-list-open").await.unwrap();
}
