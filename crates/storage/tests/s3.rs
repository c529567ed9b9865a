//! The shared blob-store suite on the S3 backend, against a real S3-compatible server.

#[path = "support/s3.rs"]
mod support;

use std::time::Duration;

use berth_oci::Algorithm;
use berth_storage::{testsuite, BlobStore, S3BlobStore, S3Config};
use bytes::Bytes;
use futures_util::StreamExt;
use support::{Moto, S3sFs};

fn config(moto: &Moto, bucket: &str) -> S3Config {
    S3Config {
        bucket: bucket.into(),
        ..config_for(&moto.endpoint())
    }
}

fn config_for(endpoint: &str) -> S3Config {
    S3Config {
        region: "us-east-1".into(),
        endpoint: endpoint.into(),
        access_key: "test".into(),
        secret_key: "test".into(),
        root_directory: "/registry".into(),
        force_path_style: true,
        part_size: berth_storage::s3::MIN_PART_SIZE,
        request_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        max_retries: 2,
        ..S3Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_passes_the_suite() {
    let moto = Moto::start();
    moto.create_bucket("suite");
    let config = config(&moto, "suite");
    testsuite::run_all(async || S3BlobStore::new(&config).expect("store")).await;
}

/// Completed uploads above the copy limit are copied part by part (UploadPartCopy), as blobs
/// over 5 GiB must be; the limit is lowered so the suite's 20 MB blobs take that path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_passes_the_suite_with_multipart_copies() {
    let moto = Moto::start();
    moto.create_bucket("copies");
    let config = config(&moto, "copies");
    testsuite::run_all(async || {
        S3BlobStore::new(&config)
            .expect("store")
            .with_copy_limit(6 * 1024 * 1024)
    })
    .await;
}

/// On a server that checks signatures (s3s-fs): our requests are signed right, the presigned
/// UploadPartCopy requests included, and a wrong secret is refused with an error that says what
/// is wrong. (Not the whole suite: s3s-fs cannot store keys as long as a sha512 blob's, its
/// temporary file names exceed 255 bytes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_checked_and_a_wrong_secret_says_so() {
    let server = S3sFs::start("berth", "right-secret", "signed");
    let mut config = S3Config {
        bucket: "signed".into(),
        access_key: "berth".into(),
        secret_key: "right-secret".into(),
        ..config_for(&server.endpoint())
    };
    let store = S3BlobStore::new(&config)
        .expect("store")
        .with_copy_limit(6 * 1024 * 1024);
    store.check().await.expect("check with the right secret");
    for len in [1_000, 13 * 1024 * 1024 + 7] {
        let data: Vec<u8> = (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
            .collect();
        store.create_upload("signed-upload").await.expect("create");
        let chunks: Vec<std::io::Result<Bytes>> = data
            .chunks(1_000_003)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let appended = store
            .append_upload(
                "signed-upload",
                0,
                Box::pin(futures_util::stream::iter(chunks)),
                Algorithm::Sha256.hasher(),
            )
            .await
            .expect("append");
        let digest = appended.hasher.finish();
        store
            .commit_upload("signed-upload", &digest)
            .await
            .expect("commit");
        let mut read = store.read_blob(&digest, 0..len as u64).await.expect("read");
        let mut back = Vec::new();
        while let Some(chunk) = read.next().await {
            back.extend_from_slice(&chunk.expect("chunk"));
        }
        assert!(back == data, "{len} bytes read back intact");
    }

    config.secret_key = "wrong-secret".into();
    let wrong = S3BlobStore::new(&config).expect("store");
    let err = wrong.check().await.expect_err("a wrong secret must fail");
    assert!(!err.is_transient(), "not a transient fault: {err}");
    let message = err.to_string();
    assert!(
        message.contains("credentials") && message.contains("SignatureDoesNotMatch"),
        "{message}"
    );
}

/// An append whose hash state covers other bytes than the upload holds (two replicas raced on
/// one upload, the other won) is refused, so the record's hash state always covers exactly its
/// bytes, and a commit is checked against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_hashed_over_other_bytes_is_refused() {
    let moto = Moto::start();
    moto.create_bucket("races");
    let store = S3BlobStore::new(&config(&moto, "races")).expect("store");
    let one = |bytes: &'static [u8]| -> berth_storage::ByteStream {
        Box::pin(futures_util::stream::iter([Ok(Bytes::from_static(bytes))]))
    };
    store.create_upload("race").await.expect("create");
    let mine = store
        .append_upload("race", 0, one(b"aaa"), Algorithm::Sha256.hasher())
        .await
        .expect("first append");
    let mut theirs = Algorithm::Sha256.hasher();
    theirs.update(b"bbb");
    let refused = store.append_upload("race", 3, one(b"ccc"), theirs).await;
    assert!(
        matches!(refused, Err(berth_storage::StorageError::Unavailable(_))),
        "{refused:?}"
    );
    let wrong = berth_oci::Digest::sha256_of(b"bbbccc");
    assert!(
        store.commit_upload("race", &wrong).await.is_err(),
        "digest checked"
    );
    let right = mine.hasher.finish();
    store.commit_upload("race", &right).await.expect("commit");
    assert_eq!(store.blob_size(&right).await.expect("size"), Some(3));
}
