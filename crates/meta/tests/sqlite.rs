//! The metadata store's behaviour, against a real SQLite file.

use berth_meta::{
    MetaError, MetadataStore, NewManifest, Page, SqliteStore, UploadLimits, UploadSession,
};
use berth_oci::{Algorithm, Digest, Reference, Referenced, RepositoryName, Tag};

fn repo(s: &str) -> RepositoryName {
    s.parse().unwrap()
}

fn tag(s: &str) -> Tag {
    s.parse().unwrap()
}

async fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("meta.sqlite"))
        .await
        .unwrap();
    (dir, store)
}

fn manifest<'a>(
    repository: &'a RepositoryName,
    digest: &'a Digest,
    content: &'a [u8],
    blobs: &'a [Referenced],
    subject: Option<&'a Digest>,
    tags: &'a [Tag],
) -> NewManifest<'a> {
    NewManifest {
        repository,
        digest,
        media_type: "application/vnd.oci.image.manifest.v1+json",
        content,
        blobs,
        children: &[],
        allow_missing: false,
        subject,
        artifact_type: Some("application/x-test"),
        annotations_json: None,
        tags,
        immutable_tags: &[],
    }
}

#[tokio::test]
async fn manifests_tags_and_referrers() {
    let (_dir, store) = open().await;
    let r = repo("app");
    let layer = Digest::sha256_of(b"layer");
    let content = b"{\"manifest\":1}";
    let md = Digest::sha256_of(content);
    let layer_ref = [Referenced {
        digest: layer.clone(),
        size: 5,
    }];

    let missing = store
        .put_manifest(manifest(&r, &md, content, &layer_ref, None, &[tag("v1")]))
        .await;
    assert!(
        matches!(missing, Err(MetaError::MissingReferences(ref m)) if m == &[layer.to_string()])
    );
    assert!(store
        .get_manifest(&r, &Reference::Tag(tag("v1")))
        .await
        .unwrap()
        .is_none());

    store.add_blob(&r, &layer, 5, None, None).await.unwrap();
    // Present, but not with the size the descriptor declares: refused, nothing stored.
    let wrong = [Referenced {
        digest: layer.clone(),
        size: 1,
    }];
    let refused = store
        .put_manifest(manifest(&r, &md, content, &wrong, None, &[tag("v1")]))
        .await;
    assert!(
        matches!(refused, Err(MetaError::WrongSizes(ref w)) if w[0].contains("5 bytes")),
        "{refused:?}"
    );
    let tags = [tag("v1"), tag("latest")];
    store
        .put_manifest(manifest(&r, &md, content, &layer_ref, None, &tags))
        .await
        .unwrap();
    let got = store
        .get_manifest(&r, &Reference::Tag(tag("latest")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.content, content.as_slice());
    assert_eq!(got.digest, md);

    let all = store
        .list_tags(
            &r,
            Page {
                last: None,
                limit: None,
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all, vec!["latest", "v1"]);
    let after = store
        .list_tags(
            &r,
            Page {
                last: Some("latest"),
                limit: Some(5),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after, vec!["v1"]);
    assert!(store
        .list_tags(
            &repo("nope"),
            Page {
                last: None,
                limit: None
            }
        )
        .await
        .unwrap()
        .is_none());

    let sig = b"{\"sig\":1}";
    let sd = Digest::sha256_of(sig);
    store
        .put_manifest(manifest(&r, &sd, sig, &[], Some(&md), &[]))
        .await
        .unwrap();
    let refs = store.referrers(&r, &md, None).await.unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].digest, sd.to_string());
    assert_eq!(refs[0].size, sig.len() as u64);
    assert!(store
        .referrers(&r, &md, Some("other/type"))
        .await
        .unwrap()
        .is_empty());

    assert!(store.delete_tag(&r, &tag("v1")).await.unwrap());
    assert!(store
        .get_manifest(&r, &Reference::Digest(md.clone()))
        .await
        .unwrap()
        .is_some());
    assert!(store.delete_manifest(&r, &md).await.unwrap());
    assert!(store
        .get_manifest(&r, &Reference::Tag(tag("latest")))
        .await
        .unwrap()
        .is_none());
    let none = store
        .list_tags(
            &r,
            Page {
                last: None,
                limit: None,
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn uploads_and_catalog() {
    let (dir, store) = open().await;
    let session = UploadSession {
        id: "abc".into(),
        repository: repo("x/y"),
        algorithm: Algorithm::Sha512,
        created_at: 7,
        owner: "alice".into(),
        hash_state: None,
    };
    store
        .create_upload(&session, UploadLimits::default())
        .await
        .unwrap();
    drop(store);
    let store = SqliteStore::open(&dir.path().join("meta.sqlite"))
        .await
        .unwrap();
    let back = store.get_upload("abc").await.unwrap().unwrap();
    assert_eq!(back.repository, repo("x/y"));
    assert_eq!(back.owner, "alice");
    assert_eq!(back.algorithm, Algorithm::Sha512);
    store
        .add_blob(&repo("x/y"), &Digest::sha256_of(b"1"), 1, Some("abc"), None)
        .await
        .unwrap();
    assert!(store.get_upload("abc").await.unwrap().is_none());
    for name in ["c", "a", "b/z"] {
        store
            .add_blob(&repo(name), &Digest::sha256_of(b"1"), 1, None, None)
            .await
            .unwrap();
    }
    let page = store
        .list_repositories(Page {
            last: Some("a"),
            limit: Some(2),
        })
        .await
        .unwrap();
    assert_eq!(page, vec!["b/z", "c"]);
}

/// Concurrent writes are committed in groups; a write that fails inside a group is undone
/// alone, and every other write of the group stands.
#[tokio::test]
async fn a_failed_write_leaves_its_group_intact() {
    let (_dir, store) = open().await;
    let store = std::sync::Arc::new(store);
    let r = repo("group/commit");
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let store = store.clone();
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let blob = Digest::sha256_of(format!("blob {i}").as_bytes());
            if i % 2 == 0 {
                store
                    .add_blob(&r, &blob, u64::from(i), None, None)
                    .await
                    .map(|_| ())
            } else {
                // References a blob nobody pushed: must fail and store nothing.
                let body = format!("{{\"n\":{i}}}");
                let digest = Digest::sha256_of(body.as_bytes());
                let tags = [tag(&format!("t{i}"))];
                store
                    .put_manifest(manifest(
                        &r,
                        &digest,
                        body.as_bytes(),
                        &[Referenced {
                            digest: blob,
                            size: 0,
                        }],
                        None,
                        &tags,
                    ))
                    .await
            }
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let outcome = task.await.unwrap();
        if i % 2 == 0 {
            outcome.unwrap();
        } else {
            assert!(matches!(outcome, Err(MetaError::MissingReferences(_))));
        }
    }
    for i in (0..64u32).step_by(2) {
        let blob = Digest::sha256_of(format!("blob {i}").as_bytes());
        assert_eq!(
            store.repository_blob(&r, &blob).await.unwrap(),
            Some(u64::from(i))
        );
    }
    let tags = store
        .list_tags(
            &r,
            Page {
                last: None,
                limit: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(tags, Some(vec![]), "no failed manifest left a tag behind");
}

/// The suite every metadata backend must pass.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_passes_the_shared_testsuite() {
    let (_dir, store) = open().await;
    berth_meta::testsuite::run_all(std::sync::Arc::new(store)).await;
}
