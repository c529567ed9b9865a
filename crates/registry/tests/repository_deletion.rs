//! Deleting a manifest, then a whole repository, frees exactly the blobs nothing else
//! references (files counted on disk); a layer shared with another repository survives.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use berth_meta::SqliteStore;
use berth_oci::{Digest, Reference, RepositoryName};
use berth_registry::{Actor, Events, Registry, RegistryConfig};
use berth_storage::FsBlobStore;

fn body(bytes: &[u8]) -> berth_storage::ByteStream {
    let chunk: std::io::Result<bytes::Bytes> = Ok(bytes::Bytes::copy_from_slice(bytes));
    Box::pin(futures_util::stream::iter([chunk]))
}

/// The blob files on disk, by the filesystem store's own listing.
async fn blob_files(registry: &Registry) -> HashSet<String> {
    let listed = registry.blobs.list_blobs(None, usize::MAX).await.unwrap();
    listed.iter().map(Digest::to_string).collect()
}

/// Pushes a config and `layers` as `repo:tag`; returns the manifest digest and every blob.
async fn push(
    registry: &Registry,
    actor: &Actor,
    repo: &RepositoryName,
    tag: &str,
    layers: &[&[u8]],
) -> (Digest, Vec<Digest>) {
    let config = format!("{{\"repo\":\"{repo}\",\"tag\":\"{tag}\"}}").into_bytes();
    let mut blobs = Vec::new();
    let mut descriptors = Vec::new();
    for data in std::iter::once(config.as_slice()).chain(layers.iter().copied()) {
        let d = Digest::sha256_of(data);
        registry
            .push_blob(actor, repo, &d, None, body(data))
            .await
            .unwrap();
        descriptors.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#,
            data.len()
        ));
        blobs.push(d);
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[{}]}}"#,
        descriptors[0].replace("layer.v1.tar", "config.v1+json"),
        descriptors[1..].join(",")
    );
    let pushed = registry
        .push_manifest(
            actor,
            repo,
            &Reference::Tag(tag.parse().unwrap()),
            None,
            manifest.as_bytes(),
            &[],
        )
        .await
        .unwrap();
    (pushed.digest, blobs)
}

#[tokio::test]
async fn deleting_manifests_and_repositories_frees_exactly_the_unshared_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let meta = SqliteStore::open(&dir.path().join("m.sqlite"))
        .await
        .unwrap();
    let registry = Registry::new(
        Arc::new(FsBlobStore::open(dir.path()).await.unwrap()),
        Arc::new(meta),
        RegistryConfig::default(),
        Events::default(),
    );
    let actor = Actor::new("ops", "127.0.0.1");
    let (a, b) = ("team/a".parse().unwrap(), "team/b".parse().unwrap());
    let shared = vec![7u8; 3000];
    let (a1, blobs_a1) = push(&registry, &actor, &a, "v1", &[b"a1 layer", &shared]).await;
    let (_, blobs_a2) = push(&registry, &actor, &a, "v2", &[b"a2 layer"]).await;
    let (_, blobs_b) = push(&registry, &actor, &b, "v1", &[&shared, b"b layer"]).await;
    let all: HashSet<String> = [&blobs_a1, &blobs_a2, &blobs_b]
        .iter()
        .flat_map(|v| v.iter().map(|d| d.to_string()))
        .collect();
    assert_eq!(blob_files(&registry).await, all);
    // Collections count whole seconds: let the pushes be older than "now".
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let grace = Duration::ZERO;
    assert_eq!(
        registry.collect_garbage(grace).await.unwrap().blobs_deleted,
        0
    );

    // A manifest: its unshared blobs go.
    registry
        .delete_manifest(&actor, &a, &Reference::Digest(a1.clone()))
        .await
        .unwrap();
    let freed = registry.collect_garbage(grace).await.unwrap();
    let expected: HashSet<String> = blobs_a1
        .iter()
        .filter(|d| **d != Digest::sha256_of(&shared))
        .map(|d| d.to_string())
        .collect();
    let removed: HashSet<String> = freed.removed.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(removed, expected);
    // The whole repository: the rest of its unshared blobs go, the shared layer stays.
    registry.delete_repository(&actor, &a).await.unwrap();
    let freed = registry.collect_garbage(grace).await.unwrap();
    let removed: HashSet<String> = freed.removed.iter().map(|(d, _)| d.clone()).collect();
    let a2: HashSet<String> = blobs_a2.iter().map(|d| d.to_string()).collect();
    assert_eq!(removed, a2);
    let left: HashSet<String> = blobs_b.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        blob_files(&registry).await,
        left,
        "exactly b's blobs remain, the shared one too"
    );
    assert!(
        registry.tags(&a, None, None).await.is_err(),
        "the repository is gone"
    );
    assert!(registry
        .delete_repository(&actor, &a)
        .await
        .is_err_and(|e| matches!(e, berth_registry::RegistryError::NameUnknown(_))));
}

/// A collection walks every candidate, not only the first page of them: a dry run (which
/// removes nothing, so the same candidates come back) lists them all, and a run removes them.
#[tokio::test]
async fn collections_walk_past_the_first_page() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(
        SqliteStore::open(&dir.path().join("m.sqlite"))
            .await
            .unwrap(),
    );
    let registry = Registry::new(
        Arc::new(FsBlobStore::open(dir.path()).await.unwrap()),
        meta.clone(),
        RegistryConfig::default(),
        Events::default(),
    );
    let repo: RepositoryName = "team/many".parse().unwrap();
    for i in 0..1_200 {
        let d = Digest::sha256_of(format!("loose {i}").as_bytes());
        berth_meta::MetadataStore::add_blob(&*meta, &repo, &d, 1, None, None)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let would = registry.garbage_dry_run(Duration::ZERO).await.unwrap();
    assert_eq!(would.blobs_deleted, 1_200);
    let done = registry.collect_garbage(Duration::ZERO).await.unwrap();
    assert_eq!(done.blobs_deleted, 1_200);
    assert_eq!(
        registry
            .garbage_dry_run(Duration::ZERO)
            .await
            .unwrap()
            .blobs_deleted,
        0
    );
}
