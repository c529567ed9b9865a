//! The registry's rules without HTTP, on the real filesystem store and SQLite: every completed
//! change is published once, refused ones not at all.

use std::sync::{Arc, Mutex};

use berth_meta::SqliteStore;
use berth_oci::{Digest, Reference, RepositoryName};
use berth_registry::{Actor, Change, Event, Events, Registry, RegistryConfig, RegistryError};
use berth_storage::FsBlobStore;

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl berth_registry::Subscriber for Recorder {
    fn deliver(&self, event: &Event) {
        self.0.lock().unwrap().push(event.clone());
    }
}

fn body(bytes: &[u8]) -> berth_storage::ByteStream {
    let chunk: std::io::Result<bytes::Bytes> = Ok(bytes::Bytes::copy_from_slice(bytes));
    Box::pin(futures_util::stream::iter([chunk]))
}

#[tokio::test]
async fn changes_are_published_once_refusals_never() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = FsBlobStore::open(dir.path()).await.unwrap();
    let meta = SqliteStore::open(&dir.path().join("m.sqlite"))
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let mut events = Events::default();
    events.subscribe(recorder.clone());
    let registry = Registry::new(
        Arc::new(blobs),
        Arc::new(meta),
        RegistryConfig::default(),
        events,
    );
    let actor = Actor::new("alice", "10.0.0.1");
    let repo: RepositoryName = "team/app".parse().unwrap();

    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = Digest::sha256_of(config);
    registry
        .push_blob(&actor, &repo, &cd, None, body(config))
        .await
        .unwrap();
    let wrong = Digest::sha256_of(b"something else");
    let refused = registry
        .push_blob(&actor, &repo, &wrong, None, body(config))
        .await;
    assert!(matches!(refused, Err(RegistryError::DigestInvalid(_))));

    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[]}}"#,
        config.len()
    );
    let tag = Reference::Tag("v1".parse().unwrap());
    let pushed = registry
        .push_manifest(&actor, &repo, &tag, None, manifest.as_bytes(), &["latest"])
        .await
        .unwrap();
    registry.manifest(&actor, &repo, &tag, true).await.unwrap();
    registry.manifest(&actor, &repo, &tag, false).await.unwrap();
    registry.delete_manifest(&actor, &repo, &tag).await.unwrap();
    let gone = registry.delete_manifest(&actor, &repo, &tag).await;
    assert!(matches!(gone, Err(RegistryError::ManifestUnknown(_))));

    let seen: Vec<Change> = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.change.clone())
        .collect();
    assert_eq!(
        seen,
        vec![
            Change::BlobCommitted {
                repository: repo.clone(),
                digest: cd.clone(),
                size: config.len() as u64
            },
            Change::ManifestPushed {
                repository: repo.clone(),
                reference: tag.clone(),
                digest: pushed.digest.clone(),
                tags: vec!["v1".parse().unwrap(), "latest".parse().unwrap()],
            },
            Change::Pulled {
                repository: repo.clone(),
                reference: tag.clone()
            },
            Change::TagDeleted {
                repository: repo.clone(),
                tag: "v1".parse().unwrap()
            },
        ]
    );
    assert!(recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .all(|e| e.actor == actor && e.at_ms > 0));
}
