//! The suite every metadata backend must pass, as `berth_storage::testsuite` is for blob
//! stores: registry data, access data, the audit log, upload sessions and the garbage
//! collection queries, including the concurrent cases whose consistency the
//! [`MetadataStore`] docs require. Cases share one store and keep to names of their own, so
//! a backend runs the suite on a fresh database once.
//!
//! Failures panic with what was expected; call [`run_all`] from a test.

use std::sync::Arc;

use berth_oci::{Algorithm, Digest, Reference, Referenced, RepositoryName, Tag};

use crate::access::{AuditEvent, AuditQuery, Member, Project, Robot, Session, User};
use crate::{
    now, BlobReservation, MetaError, NewManifest, Page, Pull, Quota, UploadLimits, UploadSession,
};

pub use crate::Store;

pub async fn run_all(store: Arc<dyn Store>) {
    blobs_are_scoped_to_repositories(&*store).await;
    manifests_tags_and_references(&*store).await;
    two_pushes_of_one_tag(store.clone()).await;
    many_commits_of_one_shared_blob(store.clone()).await;
    listings_page_without_sqlite_only_sql(&*store).await;
    sparse_manifests_when_allowed(&*store).await;
    uploads_and_their_limits(store.clone()).await;
    collection_rules(&*store).await;
    collections_race_pushes(store.clone()).await;
    leases_have_one_holder(store.clone()).await;
    settings_are_kept(&*store).await;
    gc_history_is_kept_newest_first(&*store).await;
    lifecycle_reads_and_guarded_writes(&*store).await;
    quotas_count_each_blob_once_and_hold_under_concurrency(store.clone()).await;
    access_data_moves_the_generation(&*store).await;
    ui_reads_search_summarize_and_count(&*store).await;
    listings_by_project_read_those_projects_only(&*store).await;
    sessions_expire_close_and_are_capped_per_user(&*store).await;
    audit_is_recorded_queried_and_pruned(&*store).await;
}

async fn ui_reads_search_summarize_and_count(store: &dyn Store) {
    let (a, b) = (repo("suite-ui/app_1"), repo("suite-ui/appx1"));
    let layer = Digest::sha256_of(b"ui layer");
    store.add_blob(&a, &layer, 700, None, None).await.unwrap();
    store.add_blob(&b, &layer, 700, None, None).await.unwrap();
    let body = b"{\"ui\":1}";
    let md = Digest::sha256_of(body);
    let refs = [Referenced {
        digest: layer.clone(),
        size: 700,
    }];
    store
        .put_manifest(manifest(&a, &md, body, &refs, &[tag("v1"), tag("v2")]))
        .await
        .unwrap();
    // Existing ones only, in the order asked for (not the database's collation).
    let summaries = store
        .repository_summaries(&[b.clone(), repo("suite-ui/none"), a.clone()])
        .await
        .unwrap();
    let names: Vec<&str> = summaries.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [b.as_str(), a.as_str()]);
    let summary = &summaries[1];
    assert_eq!((summary.tags, summary.bytes), (2, 700), "{summary:?}");
    assert!(summary.pushed_at > 0);
    assert_eq!((summaries[0].tags, summaries[0].bytes), (0, 700));
    assert!(store.repository_summaries(&[]).await.unwrap().is_empty());
    let all = Page {
        last: None,
        limit: Some(10),
    };
    // `_` is a character to find, not LIKE's wildcard.
    assert_eq!(
        store.search_repositories("app_", all).await.unwrap(),
        ["suite-ui/app_1"]
    );
    assert_eq!(
        store
            .search_repositories("suite-ui/app", all)
            .await
            .unwrap(),
        ["suite-ui/app_1", "suite-ui/appx1"]
    );
    let after = Page {
        last: Some("suite-ui/app_1"),
        limit: Some(10),
    };
    assert_eq!(
        store.search_repositories("suite-ui", after).await.unwrap(),
        ["suite-ui/appx1"]
    );
    assert!(store
        .search_repositories("100%", all)
        .await
        .unwrap()
        .is_empty());

    // Pushes and pulls per day, from the audit log; other actions and refusals are not counted.
    let day = 20_000_i64;
    let at = |d: i64, h: i64| d * 86_400_000 + h * 3_600_000;
    let event = |at_ms, action: &str, outcome: &str| AuditEvent {
        at_ms,
        actor: "suite-ui".into(),
        action: action.into(),
        resource: "suite-ui/app_1:v1".into(),
        outcome: outcome.into(),
        client: "c".into(),
        detail: String::new(),
    };
    store
        .record_audit(&[
            event(at(day, 1), "push", "ok"),
            event(at(day, 2), "pull", "ok"),
            event(at(day, 3), "pull", "ok"),
            event(at(day, 4), "pull", "denied"),
            event(at(day, 5), "login", "ok"),
            event(at(day + 2, 1), "pull", "ok"),
            event(at(day - 1, 1), "push", "ok"),
        ])
        .await
        .unwrap();
    let days = store.audit_activity(at(day, 0)).await.unwrap();
    let days: Vec<(i64, u64, u64)> = days
        .iter()
        .filter(|d| d.day < day + 10)
        .map(|d| (d.day, d.pushes, d.pulls))
        .collect();
    assert_eq!(days, [(day, 1, 2), (day + 2, 0, 1)]);
}

async fn listings_by_project_read_those_projects_only(store: &dyn Store) {
    let layer = Digest::sha256_of(b"project listing layer");
    // Neighbours of `suite-pl` in every order a collation might use: its own name, names
    // under it, and projects that share its first letters.
    for name in [
        "suite-pl",
        "suite-pl/a",
        "suite-pl/b/c",
        "suite-pl-x/a",
        "suite-pl.y/z",
        "suite-pl_w/v",
        "suite-pl0/q",
        "suite-plz/q",
        "suite-pm/a",
    ] {
        store
            .add_blob(&repo(name), &layer, 5, None, None)
            .await
            .unwrap();
    }
    let page = |last, limit| Page { last, limit };
    let projects = [
        "suite-pm".to_owned(),
        "suite-pl".to_owned(),
        "suite-none".to_owned(),
    ];
    let list = |text: &'static str, last, limit| {
        let projects = &projects;
        async move {
            store
                .list_project_repositories(projects, text, page(last, limit))
                .await
                .unwrap()
        }
    };
    assert_eq!(
        list("", None, Some(10)).await,
        ["suite-pl", "suite-pl/a", "suite-pl/b/c", "suite-pm/a"]
    );
    assert_eq!(list("", None, Some(2)).await, ["suite-pl", "suite-pl/a"]);
    assert_eq!(
        list("", Some("suite-pl/a"), None).await,
        ["suite-pl/b/c", "suite-pm/a"]
    );
    assert_eq!(list("b/", None, Some(10)).await, ["suite-pl/b/c"]);
    assert_eq!(
        list("/a", Some("suite-pl"), Some(10)).await,
        ["suite-pl/a", "suite-pm/a"]
    );
    assert!(list("", None, Some(0)).await.is_empty());
    assert!(store
        .list_project_repositories(&[], "", page(None, Some(10)))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .list_project_repositories(&["suite-pl-x".to_owned()], "", page(None, None))
            .await
            .unwrap(),
        ["suite-pl-x/a"]
    );
}

async fn sessions_expire_close_and_are_capped_per_user(store: &dyn Store) {
    let generation = store.access_generation().await.unwrap();
    let session = |id: &str, created_at, expires_at| Session {
        id_hash: id.into(),
        username: "suite-session".into(),
        csrf_token: format!("csrf-{id}"),
        created_at,
        expires_at,
    };
    let t = now();
    store
        .open_session(&session("s1", t, t + 100), 2)
        .await
        .unwrap();
    assert_eq!(
        store.session("s1", t).await.unwrap(),
        Some(session("s1", t, t + 100))
    );
    assert_eq!(store.session("s1", t + 100).await.unwrap(), None, "expired");
    assert_eq!(store.session("nope", t).await.unwrap(), None);
    store
        .open_session(&session("s2", t + 1, t + 100), 2)
        .await
        .unwrap();
    store
        .open_session(&session("s3", t + 2, t + 100), 2)
        .await
        .unwrap();
    assert_eq!(
        store.session("s1", t).await.unwrap(),
        None,
        "only the newest two are kept"
    );
    assert!(store.session("s2", t).await.unwrap().is_some());
    assert!(store.close_session("s2").await.unwrap());
    assert!(!store.close_session("s2").await.unwrap());
    assert_eq!(store.session("s2", t).await.unwrap(), None);
    store
        .open_session(&session("s4", t + 3, t - 1), 5)
        .await
        .unwrap();
    assert!(store.prune_sessions(t).await.unwrap() >= 1);
    assert!(
        store.session("s3", t).await.unwrap().is_some(),
        "not expired, kept"
    );
    assert_eq!(
        store.access_generation().await.unwrap(),
        generation,
        "sessions are not access data: no model reload"
    );
}

async fn quotas_count_each_blob_once_and_hold_under_concurrency(store: Arc<dyn Store>) {
    let quota = |project: &str, limit| Quota {
        project: project.into(),
        limit,
    };
    let q = quota("suite-quota", 150);
    let (a, b) = (repo("suite-quota/a"), repo("suite-quota/b"));
    let (x, y) = (Digest::sha256_of(b"quota x"), Digest::sha256_of(b"quota y"));
    store.add_blob(&a, &x, 100, None, Some(&q)).await.unwrap();
    store
        .add_blob(&b, &x, 100, None, Some(&q))
        .await
        .expect("a blob the project holds already is free");
    let over = store.add_blob(&a, &y, 60, None, Some(&q)).await;
    assert!(
        matches!(
            over,
            Err(MetaError::QuotaExceeded {
                usage: 100,
                size: 60,
                limit: 150,
                ..
            })
        ),
        "{over:?}"
    );
    assert_eq!(
        store.repository_blob(&a, &y).await.unwrap(),
        None,
        "nothing linked"
    );
    store
        .add_blob(
            &repo("suite-quota-x/z"),
            &y,
            1000,
            None,
            Some(&quota("suite-quota-x", 2000)),
        )
        .await
        .expect("another project has its own quota");
    let usage = store.project_usage("suite-quota", true).await.unwrap();
    assert_eq!(usage.bytes, 100, "a look-alike project name is not counted");
    assert_eq!(
        usage.repositories,
        vec![
            ("suite-quota/a".to_owned(), 100),
            ("suite-quota/b".to_owned(), 100)
        ]
    );
    assert!(store.linked_in_project("suite-quota", &x).await.unwrap());
    assert!(!store.linked_in_project("suite-quota", &y).await.unwrap());
    // Deleting the links does not free what a manifest still holds.
    let body = b"{\"quota manifest\":1}";
    let md = Digest::sha256_of(body);
    let held = [Referenced {
        digest: x.clone(),
        size: 100,
    }];
    store
        .put_manifest(manifest(&a, &md, body, &held, &[]))
        .await
        .unwrap();
    assert!(store.unlink_blob(&a, &x).await.unwrap());
    assert!(store.unlink_blob(&b, &x).await.unwrap());
    assert_eq!(
        store
            .project_usage("suite-quota", false)
            .await
            .unwrap()
            .bytes,
        100
    );
    assert!(store.linked_in_project("suite-quota", &x).await.unwrap());
    let over = store.add_blob(&b, &y, 60, None, Some(&q)).await;
    assert!(
        matches!(over, Err(MetaError::QuotaExceeded { .. })),
        "{over:?}"
    );
    let mounted = store
        .mount_blob(&repo("suite-quota-x/z"), &b, &y, Some(&q))
        .await;
    assert!(
        matches!(mounted, Err(MetaError::QuotaExceeded { .. })),
        "mounts count: {mounted:?}"
    );

    // Sixteen parallel commits of 30-byte blobs into a 150-byte quota: exactly five fit.
    let q = quota("suite-quota-race", 150);
    let commits: Vec<_> = (0..16)
        .map(|i| {
            let (store, q) = (store.clone(), q.clone());
            tokio::spawn(async move {
                let d = Digest::sha256_of(format!("quota race {i}").as_bytes());
                store
                    .add_blob(
                        &repo(&format!("suite-quota-race/r{}", i % 3)),
                        &d,
                        30,
                        None,
                        Some(&q),
                    )
                    .await
            })
        })
        .collect();
    let mut stored = 0;
    for c in commits {
        match c.await.expect("task") {
            Ok(()) => stored += 1,
            Err(MetaError::QuotaExceeded { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(stored, 5);
    assert_eq!(
        store
            .project_usage("suite-quota-race", false)
            .await
            .unwrap()
            .bytes,
        150
    );
}

/// What tag immutability and retention stand on: immutable tags refused atomically, the
/// inventory, pull times, the delete a later push wins, and policy documents.
async fn lifecycle_reads_and_guarded_writes(store: &dyn Store) {
    let r = repo("suite-life/app");
    let layer = Digest::sha256_of(b"suite life layer");
    store.add_blob(&r, &layer, 7, None, None).await.unwrap();
    let refs = [Referenced {
        digest: layer.clone(),
        size: 7,
    }];
    let (one, two) = (b"{\"life\":1}".as_slice(), b"{\"life\":2}".as_slice());
    let (d1, d2) = (Digest::sha256_of(one), Digest::sha256_of(two));
    let fixed = [tag("v1")];
    store
        .put_manifest(NewManifest {
            immutable_tags: &fixed,
            ..manifest(&r, &d1, one, &refs, &fixed)
        })
        .await
        .expect("a new immutable tag is pushed");
    store
        .put_manifest(NewManifest {
            immutable_tags: &fixed,
            ..manifest(&r, &d1, one, &refs, &fixed)
        })
        .await
        .expect("pushing the same manifest again is no move");
    let moved = store
        .put_manifest(NewManifest {
            immutable_tags: &fixed,
            ..manifest(&r, &d2, two, &refs, &[tag("v1"), tag("latest")])
        })
        .await;
    assert!(
        matches!(moved, Err(MetaError::TagImmutable(ref t)) if t == "v1"),
        "{moved:?}"
    );
    assert!(
        store
            .get_manifest(&r, &Reference::Tag(tag("latest")))
            .await
            .unwrap()
            .is_none(),
        "the refused push stored nothing"
    );
    store
        .put_manifest(manifest(&r, &d2, two, &refs, &[tag("latest")]))
        .await
        .unwrap();

    let at = now() + 100;
    store
        .record_pulls(&[
            Pull {
                repository: r.to_string(),
                reference: "latest".into(),
                at,
            },
            Pull {
                repository: r.to_string(),
                reference: d1.to_string(),
                at: at - 5,
            },
            Pull {
                repository: r.to_string(),
                reference: "no-such-tag".into(),
                at,
            },
        ])
        .await
        .unwrap();
    let inventory = store.repository_inventory(&r).await.unwrap();
    assert_eq!(inventory.manifests.len(), 2);
    let of = |d: &Digest| {
        inventory
            .manifests
            .iter()
            .find(|m| m.digest == d.as_str())
            .cloned()
            .expect("manifest in the inventory")
    };
    assert_eq!(
        of(&d2).pulled_at,
        at,
        "a tag's pull counts for its manifest"
    );
    assert_eq!(of(&d1).pulled_at, at - 5);
    assert_eq!(of(&d1).size, one.len() as u64);
    assert_eq!(of(&d1).blobs, vec![(layer.to_string(), 7)]);
    let latest = inventory.tags.iter().find(|t| t.name == "latest").unwrap();
    assert_eq!(
        (latest.manifest.as_str(), latest.pulled_at),
        (d2.as_str(), at)
    );
    let users = store.blob_users(&layer).await.unwrap();
    assert_eq!(users.len(), 2, "{users:?}");

    // Retention's delete loses against a tag pushed since it planned.
    let planned = latest.pushed_at;
    assert!(!store
        .delete_planned_manifest(&r, &d2, planned)
        .await
        .unwrap());
    assert!(store
        .delete_planned_manifest(&r, &d2, planned + 1)
        .await
        .unwrap());
    assert!(store
        .get_manifest(&r, &Reference::Tag(tag("latest")))
        .await
        .unwrap()
        .is_none());

    // Nor does it take what a manifest still needs: a child an index lists, a referrer
    // whose subject exists.
    let (child_body, index_body, sig_body) = (
        b"{\"life child\":1}".as_slice(),
        b"{\"life index\":1}".as_slice(),
        b"{\"life sig\":1}".as_slice(),
    );
    let (child, index, sig) = (
        Digest::sha256_of(child_body),
        Digest::sha256_of(index_body),
        Digest::sha256_of(sig_body),
    );
    store
        .put_manifest(manifest(&r, &child, child_body, &refs, &[]))
        .await
        .unwrap();
    let children = [Referenced {
        digest: child.clone(),
        size: child_body.len() as u64,
    }];
    store
        .put_manifest(NewManifest {
            children: &children,
            ..manifest(&r, &index, index_body, &[], &[])
        })
        .await
        .unwrap();
    store
        .put_manifest(NewManifest {
            subject: Some(&d1),
            ..manifest(&r, &sig, sig_body, &refs, &[])
        })
        .await
        .unwrap();
    let later = now() + 10;
    assert!(!store
        .delete_planned_manifest(&r, &child, later)
        .await
        .unwrap());
    assert!(!store
        .delete_planned_manifest(&r, &sig, later)
        .await
        .unwrap());
    assert!(store
        .delete_planned_manifest(&r, &index, later)
        .await
        .unwrap());
    assert!(store
        .delete_planned_manifest(&r, &child, later)
        .await
        .unwrap());
    assert!(store.delete_planned_manifest(&r, &d1, later).await.unwrap());
    assert!(store
        .delete_planned_manifest(&r, &sig, later)
        .await
        .unwrap());

    assert_eq!(store.project_policy("suite-life").await.unwrap(), None);
    store
        .put_project_policy("suite-life", Some("{\"immutable\":[]}"))
        .await
        .unwrap();
    assert_eq!(
        store.project_policy("suite-life").await.unwrap().as_deref(),
        Some("{\"immutable\":[]}")
    );
    assert!(store
        .projects_with_policies()
        .await
        .unwrap()
        .contains(&"suite-life".to_owned()));
    store.put_project_policy("suite-life", None).await.unwrap();
    assert_eq!(store.project_policy("suite-life").await.unwrap(), None);
}

async fn gc_history_is_kept_newest_first(store: &dyn Store) {
    let run = |n: i64| crate::GcRun {
        id: format!("suite-{n:05}"),
        started_at: 1_000_000 + n,
        finished_at: 1_000_000 + n + 1,
        instance: "suite".into(),
        blobs_deleted: n as u64,
        bytes_freed: 10 * n as u64,
        error: if n == 2 {
            "stopped".into()
        } else {
            String::new()
        },
    };
    for n in 1..=3 {
        store.record_gc_run(&run(n)).await.unwrap();
    }
    store.record_gc_run(&run(3)).await.unwrap(); // recorded once
    let runs = store.gc_runs(2).await.unwrap();
    assert_eq!(runs, vec![run(3), run(2)]);
    for n in 4..=(i64::from(crate::GC_RUNS_KEPT) + 5) {
        store.record_gc_run(&run(n)).await.unwrap();
    }
    let kept = store.gc_runs(crate::GC_RUNS_KEPT + 100).await.unwrap();
    assert_eq!(
        kept.len(),
        crate::GC_RUNS_KEPT as usize,
        "the oldest are pruned"
    );
    assert_eq!(kept.last().map(|r| r.started_at), Some(1_000_000 + 6));
}

async fn settings_are_kept(store: &dyn Store) {
    assert_eq!(store.setting("suite.setting").await.unwrap(), None);
    store.put_setting("suite.setting", "one").await.unwrap();
    store.put_setting("suite.setting", "two").await.unwrap();
    assert_eq!(
        store.setting("suite.setting").await.unwrap().as_deref(),
        Some("two")
    );
    assert_eq!(store.setting("suite.other").await.unwrap(), None);
}

/// Runs `n` probes at once, so a backend with a connection pool has `n` connections open.
async fn warm_up(store: &Arc<dyn Store>, n: usize) {
    let probes: Vec<_> = (0..n)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.check().await })
        })
        .collect();
    for p in probes {
        p.await.expect("task").expect("check");
    }
}

fn repo(s: &str) -> RepositoryName {
    s.parse().expect("repository name")
}

fn tag(s: &str) -> Tag {
    s.parse().expect("tag")
}

fn manifest<'a>(
    repository: &'a RepositoryName,
    digest: &'a Digest,
    content: &'a [u8],
    blobs: &'a [Referenced],
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
        subject: None,
        artifact_type: None,
        annotations_json: None,
        tags,
        immutable_tags: &[],
    }
}

async fn blobs_are_scoped_to_repositories(store: &dyn Store) {
    let (a, b) = (repo("suite-scope/a"), repo("suite-scope/b"));
    let d = Digest::sha256_of(b"suite scope");
    store
        .add_blob(&a, &d, 11, None, None)
        .await
        .expect("add blob");
    assert_eq!(store.repository_blob(&a, &d).await.unwrap(), Some(11));
    assert_eq!(store.repository_blob(&b, &d).await.unwrap(), None);
    let unknown = Digest::sha256_of(b"suite scope, never pushed");
    assert_eq!(
        store.mount_blob(&a, &b, &unknown, None).await.unwrap(),
        None
    );
    assert_eq!(store.mount_blob(&a, &b, &d, None).await.unwrap(), Some(11));
    assert!(store.unlink_blob(&a, &d).await.unwrap());
    assert!(!store.unlink_blob(&a, &d).await.unwrap());
    assert_eq!(store.repository_blob(&b, &d).await.unwrap(), Some(11));
}

async fn manifests_tags_and_references(store: &dyn Store) {
    let r = repo("suite-manifests/app");
    let layer = Digest::sha256_of(b"suite layer");
    let refs = [Referenced {
        digest: layer.clone(),
        size: 5,
    }];
    let body = b"{\"suite\":1}";
    let md = Digest::sha256_of(body);
    let missing = store
        .put_manifest(manifest(&r, &md, body, &refs, &[tag("v1")]))
        .await;
    assert!(
        matches!(missing, Err(MetaError::MissingReferences(ref m)) if m == &[layer.to_string()]),
        "{missing:?}"
    );
    let v1 = Reference::Tag(tag("v1"));
    assert!(
        store.get_manifest(&r, &v1).await.unwrap().is_none(),
        "a refused push stores nothing"
    );
    store.add_blob(&r, &layer, 5, None, None).await.unwrap();
    let wrong = [Referenced {
        digest: layer.clone(),
        size: 4,
    }];
    let refused = store
        .put_manifest(manifest(&r, &md, body, &wrong, &[tag("v1")]))
        .await;
    assert!(
        matches!(refused, Err(MetaError::WrongSizes(_))),
        "{refused:?}"
    );
    let tags = [tag("v1"), tag("latest")];
    store
        .put_manifest(manifest(&r, &md, body, &refs, &tags))
        .await
        .expect("push");
    let got = store.get_manifest(&r, &v1).await.unwrap().expect("by tag");
    assert_eq!((&got.digest, got.content.as_ref()), (&md, &body[..]));
    assert!(store.delete_tag(&r, &tag("v1")).await.unwrap());
    assert!(store.get_manifest(&r, &v1).await.unwrap().is_none());
    let by_digest = Reference::Digest(md.clone());
    assert!(
        store.get_manifest(&r, &by_digest).await.unwrap().is_some(),
        "untag keeps it"
    );
    assert!(store.delete_manifest(&r, &md).await.unwrap());
    let latest = Reference::Tag(tag("latest"));
    assert!(
        store.get_manifest(&r, &latest).await.unwrap().is_none(),
        "its tags went too"
    );
}

/// Two pushes of one tag at once: the tag ends on one of the two manifests, never on none.
async fn two_pushes_of_one_tag(store: Arc<dyn Store>) {
    let r = repo("suite-race/tag");
    let mut pushes = Vec::new();
    let mut digests = Vec::new();
    for i in 0..16 {
        let body = format!("{{\"n\":{i}}}").into_bytes();
        let digest = Digest::sha256_of(&body);
        digests.push(digest.clone());
        let (store, r) = (store.clone(), r.clone());
        pushes.push(tokio::spawn(async move {
            store
                .put_manifest(manifest(&r, &digest, &body, &[], &[tag("hot")]))
                .await
        }));
    }
    for p in pushes {
        p.await.expect("task").expect("push");
    }
    let got = store
        .get_manifest(&r, &Reference::Tag(tag("hot")))
        .await
        .unwrap()
        .expect("the tag points somewhere");
    assert!(digests.contains(&got.digest));
}

/// Many pushes at once of a blob every image shares (a common config or base layer): each
/// reserves and adds the same blob row, and every one succeeds. (On PostgreSQL, serializable
/// transactions failed all but one such writer per round, and some gave up.)
async fn many_commits_of_one_shared_blob(store: Arc<dyn Store>) {
    warm_up(&store, 16).await;
    let digest = Digest::sha256_of(b"the config every image shares");
    let commits: Vec<_> = (0..48)
        .map(|i| {
            let (store, digest) = (store.clone(), digest.clone());
            tokio::spawn(async move {
                let r = repo(&format!("suite-shared/app-{i}"));
                // As an HTTP push does it: a session of one user, then the commit ending it.
                let session = UploadSession {
                    id: format!("suite-shared-{i}"),
                    repository: r.clone(),
                    algorithm: Algorithm::Sha256,
                    created_at: crate::now(),
                    owner: "pusher".into(),
                    hash_state: None,
                };
                let limits = UploadLimits {
                    per_owner: Some(1000),
                    per_repository: Some(1000),
                };
                store.create_upload(&session, limits).await?;
                let reserved = store.reserve_blob(&digest, 29, crate::now() + 600).await?;
                assert_eq!(reserved, BlobReservation::Reserved);
                store
                    .add_blob(&r, &digest, 29, Some(&session.id), None)
                    .await?;
                let body = format!("{{\"image\":{i}}}").into_bytes();
                let image = Digest::sha256_of(&body);
                let layers = [Referenced {
                    digest: digest.clone(),
                    size: 29,
                }];
                store
                    .put_manifest(manifest(&r, &image, &body, &layers, &[tag("v1")]))
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    for c in commits {
        c.await.expect("task").expect("a shared blob's commit");
    }
    for i in [0, 47] {
        let r = repo(&format!("suite-shared/app-{i}"));
        assert_eq!(store.repository_blob(&r, &digest).await.unwrap(), Some(29));
    }
}

/// Unbounded and bounded pages (no `LIMIT -1` on any backend).
async fn listings_page_without_sqlite_only_sql(store: &dyn Store) {
    let r = repo("suite-list/app");
    let body = b"{\"list\":1}";
    let md = Digest::sha256_of(body);
    let tags: Vec<Tag> = ["c", "a", "b"].iter().map(|t| tag(t)).collect();
    store
        .put_manifest(manifest(&r, &md, body, &[], &tags))
        .await
        .unwrap();
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
    assert_eq!(all, ["a", "b", "c"]);
    let after_a = store
        .list_tags(
            &r,
            Page {
                last: Some("a"),
                limit: Some(1),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after_a, ["b"]);
    assert!(store
        .list_tags(
            &repo("suite-list/none"),
            Page {
                last: None,
                limit: None
            }
        )
        .await
        .unwrap()
        .is_none());
    let repos = store
        .list_repositories(Page {
            last: Some("suite-list"),
            limit: None,
        })
        .await
        .unwrap();
    assert!(repos.contains(&"suite-list/app".to_owned()), "{repos:?}");
}

/// A sparse mirror may push manifests whose blobs and children are absent; what is present
/// must still have its declared size.
async fn sparse_manifests_when_allowed(store: &dyn Store) {
    let r = repo("suite-sparse/app");
    let absent = [Referenced {
        digest: Digest::sha256_of(b"suite sparse, not here"),
        size: 8,
    }];
    let child_body = b"{\"sparse child\":1}";
    let child = Digest::sha256_of(child_body);
    store
        .put_manifest(manifest(&r, &child, child_body, &[], &[]))
        .await
        .unwrap();
    let index_body = b"{\"sparse index\":1}";
    let index = Digest::sha256_of(index_body);
    let children = [
        Referenced {
            digest: child.clone(),
            size: child_body.len() as u64,
        },
        Referenced {
            digest: Digest::sha256_of(b"suite sparse, other platform"),
            size: 99,
        },
    ];
    let strict = store
        .put_manifest(NewManifest {
            children: &children,
            ..manifest(&r, &index, index_body, &absent, &[])
        })
        .await;
    assert!(
        matches!(strict, Err(MetaError::MissingReferences(_))),
        "{strict:?}"
    );
    store
        .put_manifest(NewManifest {
            allow_missing: true,
            children: &children,
            ..manifest(&r, &index, index_body, &absent, &[])
        })
        .await
        .expect("sparse push");
    assert!(store
        .get_manifest(&r, &Reference::Digest(index.clone()))
        .await
        .unwrap()
        .is_some());
    let wrong_child = [Referenced {
        digest: child,
        size: 1,
    }];
    let other = Digest::sha256_of(b"{\"sparse other\":1}");
    let refused = store
        .put_manifest(NewManifest {
            allow_missing: true,
            children: &wrong_child,
            ..manifest(&r, &other, b"{\"sparse other\":1}", &[], &[])
        })
        .await;
    assert!(
        matches!(refused, Err(MetaError::WrongSizes(_))),
        "{refused:?}"
    );
}

/// Sessions survive as stored, and their limits hold when many are created at once.
async fn uploads_and_their_limits(store: Arc<dyn Store>) {
    let limits = UploadLimits {
        per_owner: Some(3),
        per_repository: Some(5),
    };
    // Connections first (a backend with a pool), so the creations below really overlap.
    warm_up(&store, 24).await;
    let mut created = Vec::new();
    for round in 0..4 {
        let owner = format!("suite-owner-{round}");
        let attempts: Vec<_> = (0..24)
            .map(|i| {
                let (store, owner) = (store.clone(), owner.clone());
                tokio::spawn(async move {
                    let session = UploadSession {
                        id: format!("suite-upload-{round}-{i}"),
                        repository: repo(&format!("suite-uploads/app{round}")),
                        algorithm: Algorithm::Sha512,
                        created_at: 100 + i,
                        owner,
                        hash_state: None,
                    };
                    store.create_upload(&session, limits).await
                })
            })
            .collect();
        created.clear();
        for (i, a) in attempts.into_iter().enumerate() {
            match a.await.expect("task") {
                Ok(()) => created.push(i),
                Err(MetaError::TooManyUploads { limit: 3, .. }) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(
            created.len(),
            3,
            "the owner's limit holds under concurrency (round {round})"
        );
    }
    let id = format!("suite-upload-3-{}", created[0]);
    let back = store.get_upload(&id).await.unwrap().expect("stored");
    assert_eq!(
        (
            back.repository.as_str(),
            back.algorithm,
            back.owner.as_str()
        ),
        ("suite-uploads/app3", Algorithm::Sha512, "suite-owner-3")
    );
    let saved = crate::SavedHash {
        offset: 42,
        state: vec![1, 2, 3],
    };
    store.save_upload_hash(&id, &saved).await.unwrap();
    let back = store.get_upload(&id).await.unwrap().expect("stored");
    assert_eq!(
        back.hash_state,
        Some(saved),
        "the hash state is saved with the session"
    );
    store
        .save_upload_hash(
            "suite-upload-none",
            &crate::SavedHash {
                offset: 1,
                state: vec![],
            },
        )
        .await
        .expect("saving for an upload that is gone is not an error");
    let expired = store.expired_uploads(1000, 10).await.unwrap();
    assert!(expired.contains(&id), "{expired:?}");
    store.delete_upload(&id).await.unwrap();
    assert!(store.get_upload(&id).await.unwrap().is_none());
}

async fn collection_rules(store: &dyn Store) {
    let r = repo("suite-gc/app");
    let (used, loose, held) = (
        Digest::sha256_of(b"suite gc used"),
        Digest::sha256_of(b"suite gc loose"),
        Digest::sha256_of(b"suite gc held"),
    );
    for d in [&used, &loose] {
        store.add_blob(&r, d, 4, None, None).await.unwrap();
    }
    let refs = [Referenced {
        digest: used.clone(),
        size: 4,
    }];
    let body = b"{\"gc\":1}";
    let md = Digest::sha256_of(body);
    store
        .put_manifest(manifest(&r, &md, body, &refs, &[]))
        .await
        .unwrap();
    let t = crate::now();
    let later = t + 10;
    let listed = |found: Vec<(String, u64)>, d: &Digest| found.iter().any(|(x, _)| x == d.as_str());
    assert!(
        !listed(
            store
                .collectable_blobs(t - 60, t, None, 1000)
                .await
                .unwrap(),
            &loose
        ),
        "linked within the grace period"
    );
    let found = store
        .collectable_blobs(later, later, None, 1000)
        .await
        .unwrap();
    assert!(listed(found.clone(), &loose) && !listed(found, &used));
    assert_eq!(
        store.reserve_blob(&held, 4, later + 600).await.unwrap(),
        BlobReservation::Reserved
    );
    assert!(
        !store.mark_blob_deleting(&held, later, later).await.unwrap(),
        "leased"
    );
    assert!(
        !store.mark_blob_deleting(&used, later, later).await.unwrap(),
        "referenced"
    );
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
            .mount_blob(&r, &repo("suite-gc/other"), &loose, None)
            .await
            .unwrap(),
        None
    );
    store.forget_blob(&loose).await.unwrap();
    assert_eq!(
        store.reserve_blob(&loose, 4, later + 600).await.unwrap(),
        BlobReservation::Reserved,
        "stored anew after its collection"
    );
    assert!(store.delete_manifest(&r, &md).await.unwrap());
    assert!(listed(
        store
            .collectable_blobs(later, later, None, 1000)
            .await
            .unwrap(),
        &used
    ));
}

/// Two collections at once and commits of the same digests: a blob is never both reserved
/// and marked.
async fn collections_race_pushes(store: Arc<dyn Store>) {
    warm_up(&store, 48).await;
    let r = repo("suite-gc-race/app");
    let digests: Vec<Digest> = (0..24)
        .map(|i| Digest::sha256_of(format!("suite race {i}").as_bytes()))
        .collect();
    for d in &digests {
        store.add_blob(&r, d, 1, None, None).await.unwrap();
    }
    let later = crate::now() + 10;
    let mut tasks = Vec::new();
    for (i, d) in digests.iter().enumerate() {
        for _ in 0..2 {
            let (store, d) = (store.clone(), d.clone());
            tasks.push(tokio::spawn(async move {
                store.mark_blob_deleting(&d, later, later).await.map(|_| ())
            }));
        }
        if i % 2 == 0 {
            let (store, d) = (store.clone(), d.clone());
            tasks.push(tokio::spawn(async move {
                store.reserve_blob(&d, 1, later + 600).await.map(|_| ())
            }));
        }
    }
    for t in tasks {
        t.await.expect("task").expect("no errors in the race");
    }
    for (i, d) in digests.iter().enumerate() {
        let reserved = store.reserve_blob(d, 1, later + 600).await.unwrap();
        let marked = store.mark_blob_deleting(d, later, later).await.unwrap();
        assert!(
            reserved == BlobReservation::BeingDeleted || !marked,
            "{d}: reserved and marked"
        );
        if i % 2 == 1 {
            assert!(marked, "{d}: nobody committed it, so it is collected");
        }
    }
}

/// A lease has one holder at a time, even when many claim it at once; it can be renewed by
/// its holder and taken over once it expired.
async fn leases_have_one_holder(store: Arc<dyn Store>) {
    warm_up(&store, 16).await;
    let claims: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim_lease("suite-lease", &format!("holder-{i}"), 1000, 1100)
                    .await
                    .map(|won| won.then_some(i))
            })
        })
        .collect();
    let mut winners = Vec::new();
    for c in claims {
        if let Some(i) = c.await.expect("task").expect("claim") {
            winners.push(i);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "one holder of a contended lease: {winners:?}"
    );
    let (holder, other) = (format!("holder-{}", winners[0]), "another".to_owned());
    let claim = |who: &str, now: i64| {
        let (store, who) = (store.clone(), who.to_owned());
        async move {
            store
                .claim_lease("suite-lease", &who, now, now + 100)
                .await
                .unwrap()
        }
    };
    assert!(!claim(&other, 1050).await, "held");
    assert!(
        claim(&holder, 1020).await,
        "still its holder's (early in the term: no write)"
    );
    assert!(!claim(&other, 1099).await, "held until its first term ends");
    assert!(claim(&holder, 1060).await, "renewed by its holder");
    assert!(!claim(&other, 1149).await, "the renewal extended it");
    assert!(claim(&other, 1161).await, "taken over once expired");
    assert!(!claim(&holder, 1170).await, "the old holder lost it");
    assert!(
        store
            .claim_lease("suite-other-lease", &holder, 1160, 1260)
            .await
            .unwrap(),
        "leases are independent"
    );
}

async fn access_data_moves_the_generation(store: &dyn Store) {
    let g0 = store.access_generation().await.unwrap();
    store
        .put_user(&User {
            name: "suite-user".into(),
            password_hash: "$2y$10$x".into(),
            admin: false,
            created_at: 1,
        })
        .await
        .unwrap();
    store
        .put_project(&Project {
            name: "suite-project".into(),
            public: true,
            created_at: 1,
        })
        .await
        .unwrap();
    store
        .set_member(&Member {
            project: "suite-project".into(),
            username: "suite-user".into(),
            role: "developer".into(),
        })
        .await
        .unwrap();
    let robot = Robot {
        name: "robot$suite-project+ci".into(),
        secret_hash: "00".into(),
        project: "suite-project".into(),
        actions: "pull".into(),
        expires_at: Some(9),
        created_at: 1,
    };
    store.add_robot(&robot).await.unwrap();
    assert!(
        matches!(store.add_robot(&robot).await, Err(MetaError::Conflict(_))),
        "a robot name is taken once"
    );
    let g1 = store.access_generation().await.unwrap();
    assert!(g1 > g0, "changes move the generation");
    let s = store.access_snapshot().await.unwrap();
    assert!(s.users.iter().any(|u| u.name == "suite-user"));
    assert!(s
        .members
        .iter()
        .any(|m| m.username == "suite-user" && m.role == "developer"));
    assert!(s.robots.iter().any(|r| r.expires_at == Some(9)));
    assert!(store.delete_user("suite-user").await.unwrap());
    let s = store.access_snapshot().await.unwrap();
    assert!(
        !s.members.iter().any(|m| m.username == "suite-user"),
        "a deleted user's memberships go with them"
    );
    assert!(store.delete_robot(&robot.name).await.unwrap());
    assert!(!store.delete_robot(&robot.name).await.unwrap());
    assert!(store.access_generation().await.unwrap() > g1);
}

async fn audit_is_recorded_queried_and_pruned(store: &dyn Store) {
    let event = |at_ms: i64, actor: &str| AuditEvent {
        at_ms,
        actor: actor.into(),
        action: "suite.action".into(),
        resource: "r".into(),
        outcome: "ok".into(),
        client: "c".into(),
        detail: String::new(),
    };
    let events: Vec<AuditEvent> = (0..10).map(|i| event(1_000 + i, "suite-a")).collect();
    store.record_audit(&events).await.unwrap();
    store
        .record_audit(&[event(5_000, "suite-b")])
        .await
        .unwrap();
    let q = |actor: &str| AuditQuery {
        actor: Some(actor.into()),
        action: Some("suite.action".into()),
        since_ms: None,
        limit: 100,
    };
    let found = store.query_audit(&q("suite-a")).await.unwrap();
    assert_eq!(found.len(), 10);
    assert!(
        found.windows(2).all(|w| w[0].at_ms >= w[1].at_ms),
        "newest first"
    );
    let deleted = store.prune_audit(Some(1_005), None).await.unwrap();
    assert!(deleted >= 5, "{deleted}");
    assert_eq!(store.query_audit(&q("suite-a")).await.unwrap().len(), 5);
    store.prune_audit(None, Some(1)).await.unwrap();
    let left = store
        .query_audit(&AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "the cap keeps the newest: {left:?}");
}
