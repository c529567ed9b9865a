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
    }
}

#[tokio::test]
async fn blobs_are_scoped_to_repositories() {
    let (_dir, store) = open().await;
    let (a, b) = (repo("team/a"), repo("team/b"));
    let d = Digest::sha256_of(b"layer");
    store.add_blob(&a, &d, 5, None).await.unwrap();
    assert_eq!(store.repository_blob(&a, &d).await.unwrap(), Some(5));
    assert_eq!(store.repository_blob(&b, &d).await.unwrap(), None);
    assert_eq!(
        store
            .mount_blob(&b, &a, &Digest::sha256_of(b"x"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.mount_blob(&a, &b, &d).await.unwrap(), Some(5));
    assert_eq!(store.repository_blob(&b, &d).await.unwrap(), Some(5));
    assert!(store.unlink_blob(&a, &d).await.unwrap());
    assert!(!store.unlink_blob(&a, &d).await.unwrap());
    assert_eq!(store.repository_blob(&a, &d).await.unwrap(), None);
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

    store.add_blob(&r, &layer, 5, None).await.unwrap();
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
        .add_blob(&repo("x/y"), &Digest::sha256_of(b"1"), 1, Some("abc"))
        .await
        .unwrap();
    assert!(store.get_upload("abc").await.unwrap().is_none());
    for name in ["c", "a", "b/z"] {
        store
            .add_blob(&repo(name), &Digest::sha256_of(b"1"), 1, None)
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

/// The manifest cache reads its own writes: a moved tag, an untag and a delete are seen at once.
#[tokio::test]
async fn cache_reads_its_own_writes() {
    use berth_meta::CachedStore;
    use std::sync::Arc;

    let (_dir, sqlite) = open().await;
    let store = CachedStore::new(Arc::new(sqlite));
    let r = repo("cached");
    let v1 = Reference::Tag(tag("v1"));
    let (a, b) = (b"{\"a\":1}".as_slice(), b"{\"b\":2}".as_slice());
    let (da, db) = (Digest::sha256_of(a), Digest::sha256_of(b));
    assert!(
        store.get_manifest(&r, &v1).await.unwrap().is_none(),
        "a miss is cached too"
    );
    store
        .put_manifest(manifest(&r, &da, a, &[], None, &[tag("v1")]))
        .await
        .unwrap();
    assert_eq!(
        store.get_manifest(&r, &v1).await.unwrap().unwrap().digest,
        da
    );
    store
        .put_manifest(manifest(&r, &db, b, &[], None, &[tag("v1")]))
        .await
        .unwrap();
    assert_eq!(
        store.get_manifest(&r, &v1).await.unwrap().unwrap().digest,
        db,
        "moved tag"
    );
    assert!(store.delete_tag(&r, &tag("v1")).await.unwrap());
    assert!(
        store.get_manifest(&r, &v1).await.unwrap().is_none(),
        "untagged"
    );
    let by_digest = Reference::Digest(da.clone());
    assert!(store.get_manifest(&r, &by_digest).await.unwrap().is_some());
    assert!(store.delete_manifest(&r, &da).await.unwrap());
    assert!(
        store.get_manifest(&r, &by_digest).await.unwrap().is_none(),
        "deleted"
    );
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
                    .add_blob(&r, &blob, u64::from(i), None)
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

/// A tag moved behind the cache's back (another replica, the CLI) is served from the cache
/// until the entry expires; the first request after that still gets the cached answer at once
/// while the entry refreshes in the background, and the requests after it see the move.
#[tokio::test]
async fn cache_refreshes_expired_entries_in_the_background() {
    use berth_meta::cache::TTL;
    use berth_meta::CachedStore;
    use std::sync::Arc;

    let (_dir, sqlite) = open().await;
    let sqlite = Arc::new(sqlite);
    let cached = CachedStore::new(sqlite.clone());
    let r = repo("refresh");
    let v1 = Reference::Tag(tag("v1"));
    let (a, b) = (b"{\"a\":1}".as_slice(), b"{\"b\":2}".as_slice());
    let (da, db) = (Digest::sha256_of(a), Digest::sha256_of(b));
    cached
        .put_manifest(manifest(&r, &da, a, &[], None, &[tag("v1")]))
        .await
        .unwrap();
    let digest = |m: Option<std::sync::Arc<berth_meta::StoredManifest>>| m.unwrap().digest.clone();
    assert_eq!(digest(cached.get_manifest(&r, &v1).await.unwrap()), da);

    // Moved behind the cache's back.
    sqlite
        .put_manifest(manifest(&r, &db, b, &[], None, &[tag("v1")]))
        .await
        .unwrap();
    assert_eq!(
        digest(cached.get_manifest(&r, &v1).await.unwrap()),
        da,
        "fresh entry"
    );

    tokio::time::sleep(TTL + std::time::Duration::from_millis(100)).await;
    assert_eq!(
        digest(cached.get_manifest(&r, &v1).await.unwrap()),
        da,
        "an expired entry answers once more while it refreshes"
    );
    let mut seen = da.clone();
    for _ in 0..100 {
        seen = digest(cached.get_manifest(&r, &v1).await.unwrap());
        if seen == db {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(seen, db, "the refresh brought the moved tag");
}

/// Sessions in progress are limited per owner and per repository, and the limit holds when
/// many sessions are created at once.
#[tokio::test]
async fn upload_limits_hold_under_concurrency() {
    let (_dir, store) = open().await;
    let store = std::sync::Arc::new(store);
    let limits = UploadLimits {
        per_owner: Some(5),
        per_repository: Some(8),
    };
    let attempts = (0..40).map(|i| {
        let store = store.clone();
        async move {
            let session = UploadSession {
                id: format!("u{i}"),
                repository: repo(if i % 2 == 0 { "x/even" } else { "x/odd" }),
                algorithm: Algorithm::Sha256,
                created_at: 1,
                owner: "mallory".into(),
                hash_state: None,
            };
            store.create_upload(&session, limits).await
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 5, "the owner limit");
    assert!(results
        .iter()
        .all(|r| matches!(r, Ok(()) | Err(MetaError::TooManyUploads { limit: 5, .. }))));
    // Another owner is limited by the repository alone.
    let mut repository_full = 0;
    for i in 0..10 {
        let session = UploadSession {
            id: format!("v{i}"),
            repository: repo("x/even"),
            algorithm: Algorithm::Sha256,
            created_at: 1,
            owner: format!("user{i}"),
            hash_state: None,
        };
        if let Err(MetaError::TooManyUploads { scope, .. }) =
            store.create_upload(&session, limits).await
        {
            assert_eq!(scope, "repository x/even");
            repository_full += 1;
        }
    }
    let even = results.iter().step_by(2).filter(|r| r.is_ok()).count();
    assert_eq!(repository_full, 10 - (8 - even));
}

/// A sparse mirror may push manifests whose blobs and children are absent; what is present
/// must still have its declared size.
#[tokio::test]
async fn sparse_manifests_when_allowed() {
    let (_dir, store) = open().await;
    let r = repo("mirror/app");
    let absent = [Referenced {
        digest: Digest::sha256_of(b"not here"),
        size: 8,
    }];
    let child_body = b"{\"child\":1}";
    let child = Digest::sha256_of(child_body);
    store
        .put_manifest(manifest(&r, &child, child_body, &[], None, &[]))
        .await
        .unwrap();
    let index_body = b"{\"index\":1}";
    let index = Digest::sha256_of(index_body);
    let children = [
        Referenced {
            digest: child.clone(),
            size: child_body.len() as u64,
        },
        Referenced {
            digest: Digest::sha256_of(b"other platform"),
            size: 99,
        },
    ];
    let sparse = |blobs, children| NewManifest {
        allow_missing: true,
        children,
        ..manifest(&r, &index, index_body, blobs, None, &[])
    };
    store
        .put_manifest(sparse(&absent, &children))
        .await
        .unwrap();
    assert!(store
        .get_manifest(&r, &Reference::Digest(index.clone()))
        .await
        .unwrap()
        .is_some());
    let wrong_child = [Referenced {
        digest: child.clone(),
        size: 1,
    }];
    let other = Digest::sha256_of(b"{}");
    let refused = store
        .put_manifest(NewManifest {
            digest: &other,
            ..sparse(&[], &wrong_child)
        })
        .await;
    assert!(
        matches!(refused, Err(MetaError::WrongSizes(_))),
        "{refused:?}"
    );
}

/// The rules garbage collection relies on, decided by the store: what is collectable, and how
/// marking serializes with commits, mounts and manifest reference checks.
#[tokio::test]
async fn collection_by_reachability() {
    use berth_meta::BlobReservation;
    let (_dir, store) = open().await;
    let r = repo("gc/app");
    let (used, loose, held) = (
        Digest::sha256_of(b"used"),
        Digest::sha256_of(b"loose"),
        Digest::sha256_of(b"held"),
    );
    for d in [&used, &loose] {
        store.add_blob(&r, d, 4, None).await.unwrap();
    }
    let refs = [Referenced {
        digest: used.clone(),
        size: 4,
    }];
    let body = b"{\"m\":1}";
    let md = Digest::sha256_of(body);
    store
        .put_manifest(manifest(&r, &md, body, &refs, None, &[tag("v1")]))
        .await
        .unwrap();
    let t = berth_meta::now();
    // Pushed within the grace period: nothing is collectable.
    assert!(store
        .collectable_blobs(t - 60, t, None, 100)
        .await
        .unwrap()
        .is_empty());
    // Past the grace period: the blob no manifest references is.
    let later = t + 10;
    let found = store
        .collectable_blobs(later, later, None, 100)
        .await
        .unwrap();
    assert_eq!(found, vec![(loose.to_string(), 4)]);

    // A commit's lease keeps a blob; a marked blob cannot be reserved, mounted or referenced.
    assert_eq!(
        store.reserve_blob(&held, 4, later + 600).await.unwrap(),
        BlobReservation::Reserved
    );
    assert!(!store.mark_blob_deleting(&held, later, later).await.unwrap());
    assert!(!store.mark_blob_deleting(&used, later, later).await.unwrap());
    assert!(store
        .mark_blob_deleting(&loose, later, later)
        .await
        .unwrap());
    assert_eq!(
        store.reserve_blob(&loose, 4, later + 600).await.unwrap(),
        BlobReservation::BeingDeleted
    );
    assert_eq!(store.repository_blob(&r, &loose).await.unwrap(), None);
    assert_eq!(
        store
            .mount_blob(&r, &repo("gc/other"), &loose)
            .await
            .unwrap(),
        None
    );
    let loose_ref = [Referenced {
        digest: loose.clone(),
        size: 4,
    }];
    let body2 = b"{\"m\":2}";
    let md2 = Digest::sha256_of(body2);
    let refused = store
        .put_manifest(manifest(&r, &md2, body2, &loose_ref, None, &[]))
        .await;
    assert!(
        matches!(refused, Err(MetaError::MissingReferences(_))),
        "{refused:?}"
    );
    assert!(matches!(
        store.add_blob(&r, &loose, 4, None).await,
        Err(MetaError::Conflict(_))
    ));
    // A collection that stopped halfway is found again, and finishing it forgets the blob.
    let again = store.collectable_blobs(t - 60, t, None, 100).await.unwrap();
    assert_eq!(
        again,
        vec![(loose.to_string(), 4)],
        "marked blobs are listed until forgotten"
    );
    store.forget_blob(&loose).await.unwrap();
    assert!(store
        .collectable_blobs(later, later, None, 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.reserve_blob(&loose, 4, later + 600).await.unwrap(),
        BlobReservation::Reserved,
        "pushed again after its collection"
    );

    // Deleting the manifest makes its blob collectable; a fresh link (a push) keeps it.
    assert!(store.delete_manifest(&r, &md).await.unwrap());
    let found = store
        .collectable_blobs(later, later, None, 100)
        .await
        .unwrap();
    assert!(found.contains(&(used.to_string(), 4)), "{found:?}");
    store.add_blob(&r, &used, 4, None).await.unwrap();
    assert!(
        !store.mark_blob_deleting(&used, t - 60, t).await.unwrap(),
        "linked within grace"
    );
}

/// Two collections at once, and collections racing commits of the same digests: each blob is
/// either kept or forgotten whole, never a row without a mark or a commit on a marked blob.
#[tokio::test]
async fn concurrent_collections_and_commits() {
    use berth_meta::BlobReservation;
    let (_dir, store) = open().await;
    let store = std::sync::Arc::new(store);
    let r = repo("gc/race");
    let digests: Vec<Digest> = (0..40)
        .map(|i| Digest::sha256_of(format!("b{i}").as_bytes()))
        .collect();
    for d in &digests {
        store.add_blob(&r, d, 1, None).await.unwrap();
    }
    let later = berth_meta::now() + 10;
    let mut tasks = Vec::new();
    for (i, d) in digests.iter().enumerate() {
        for _ in 0..2 {
            let (store, d) = (store.clone(), d.clone());
            tasks.push(tokio::spawn(async move {
                (
                    "gc",
                    store.mark_blob_deleting(&d, later, later).await.unwrap(),
                )
            }));
        }
        if i % 2 == 0 {
            let (store, d) = (store.clone(), d.clone());
            tasks.push(tokio::spawn(async move {
                let reserved = store.reserve_blob(&d, 1, later + 600).await.unwrap();
                ("commit", reserved == BlobReservation::Reserved)
            }));
        }
    }
    let mut marked = 0;
    for t in tasks {
        let (who, won) = t.await.unwrap();
        if who == "gc" && won {
            marked += 1;
        }
    }
    // Whatever the interleaving: a reserved blob is never marked, a marked one never reserved.
    for d in &digests {
        let reserve = store.reserve_blob(d, 1, later + 600).await.unwrap();
        let mark = store.mark_blob_deleting(d, later, later).await.unwrap();
        assert!(
            reserve == BlobReservation::BeingDeleted || !mark,
            "{d}: reserved and marked"
        );
    }
    assert!(marked >= 20, "blobs nobody commits are collected: {marked}");
}

/// The suite every metadata backend must pass.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_passes_the_shared_testsuite() {
    let (_dir, store) = open().await;
    berth_meta::testsuite::run_all(std::sync::Arc::new(store)).await;
}
