//! The PostgreSQL backend against a real PostgreSQL server: the shared metadata testsuite,
//! migrations by replicas starting together, and a database that goes away and comes back.

mod support;

use std::sync::Arc;

use berth_meta::{MetaError, MetadataStore, PostgresOptions, PostgresStore};
use support::postgres::Cluster;

async fn open(url: &str) -> PostgresStore {
    PostgresStore::open(url, PostgresOptions::default())
        .await
        .expect("open the PostgreSQL store")
}

/// The suite every metadata backend must pass, concurrency cases included.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_passes_the_shared_testsuite() {
    let cluster = Cluster::start();
    let store = open(&cluster.database("suite").await).await;
    berth_meta::testsuite::run_all(Arc::new(store)).await;
}

/// The same suite in a database whose collation is a language's (ICU English), not the byte
/// order the test cluster defaults to, as many production databases are created: listings,
/// project ranges and pagination must not depend on the collation.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_with_a_language_collation_passes_the_shared_testsuite() {
    let cluster = Cluster::start();
    let url = cluster
        .database_with(
            "suite_icu",
            "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'",
        )
        .await;
    let store = open(&url).await;
    berth_meta::testsuite::run_all(Arc::new(store)).await;
}

/// Replicas that start at once against a new database apply every migration exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_starting_together_migrate_once() {
    let cluster = Cluster::start();
    let url = cluster.database("together").await;
    let opening: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { open(&url).await })
        })
        .collect();
    for replica in opening {
        let store = replica.await.expect("replica task");
        store.check().await.expect("the replica serves");
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let rows = client
        .query("SELECT version FROM berth_schema ORDER BY version", &[])
        .await
        .expect("schema versions");
    let versions: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let expected: Vec<i64> = (1..=versions.len() as i64).collect();
    assert!(versions.len() >= 5, "{versions:?}");
    assert_eq!(versions, expected, "each migration once, in order");
}

/// A database that stops answers `Unavailable` (which the API turns into 503) instead of
/// hanging or lying, and the store serves again once the database is back, without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_database_is_unavailable_until_it_returns() {
    let cluster = Cluster::start();
    let url = cluster.database("outage").await;
    let store = PostgresStore::open(
        &url,
        PostgresOptions {
            connect_timeout: std::time::Duration::from_secs(2),
            ..PostgresOptions::default()
        },
    )
    .await
    .expect("open");
    store.check().await.expect("up");

    cluster.stop();
    let started = std::time::Instant::now();
    match store.check().await {
        Err(MetaError::Unavailable(_)) => {}
        other => panic!("a stopped database must be Unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "answered within the connect timeout, not hung: {:?}",
        started.elapsed()
    );

    cluster.restart();
    let mut last = None;
    for _ in 0..50 {
        match store.check().await {
            Ok(()) => return,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the store did not recover after the database came back: {last:?}");
}

/// Committed changes to a repository's references are announced to every process that
/// watches, and a watcher that lost its connection is told anything may have changed.
#[tokio::test(flavor = "multi_thread")]
async fn changes_are_announced_to_other_processes() {
    use berth_meta::{Changed, NewManifest};
    use berth_oci::{Digest, RepositoryName, Tag};
    use std::time::Duration;

    let cluster = Cluster::start();
    let url = cluster.database("announce").await;
    let (writer, watcher) = (open(&url).await, open(&url).await);
    let mut changes = watcher
        .watch_changes()
        .expect("PostgreSQL announces changes");
    let next = async |changes: &mut tokio::sync::broadcast::Receiver<Changed>| {
        tokio::time::timeout(Duration::from_secs(5), changes.recv())
            .await
            .expect("an announcement within 5 s")
            .expect("the channel stays open")
    };
    assert_eq!(
        next(&mut changes).await,
        Changed::Anything,
        "listening starts"
    );

    let repo: RepositoryName = "announce/app".parse().unwrap();
    let content = b"{\"announce\":1}";
    let digest = Digest::sha256_of(content);
    writer
        .put_manifest(NewManifest {
            repository: &repo,
            digest: &digest,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            content,
            blobs: &[],
            children: &[],
            allow_missing: false,
            subject: None,
            artifact_type: None,
            annotations_json: None,
            tags: &["v1".parse::<Tag>().unwrap()],
            immutable_tags: &[],
        })
        .await
        .unwrap();
    assert_eq!(
        next(&mut changes).await,
        Changed::Repository("announce/app".into())
    );
    assert!(writer
        .delete_tag(&repo, &"v1".parse().unwrap())
        .await
        .unwrap());
    assert_eq!(
        next(&mut changes).await,
        Changed::Repository("announce/app".into())
    );

    cluster.stop();
    assert_eq!(
        next(&mut changes).await,
        Changed::Anything,
        "connection lost"
    );
    cluster.restart();
    // Once the watcher has reconnected, announcements flow again; until then writes may go
    // unannounced (and the watcher was told `Anything`), so write until one is heard.
    let mut heard = false;
    'writes: for _ in 0..30 {
        let _ = writer.delete_tag(&repo, &"v1".parse().unwrap()).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Ok(change)) = tokio::time::timeout_at(deadline, changes.recv()).await {
            if change == Changed::Repository("announce/app".into()) {
                heard = true;
                break 'writes;
            }
        }
    }
    assert!(heard, "announcements resume after the database returns");
}

/// `sslmode=require` with the server's CA connects over TLS (the server says so); a CA the
/// certificate does not chain to, or a server without TLS, is refused with a clear error
/// instead of falling back to plain text.
#[tokio::test(flavor = "multi_thread")]
async fn tls_is_required_and_verified_when_asked() {
    let cluster = Cluster::start_with_tls();
    let url = format!("{}?sslmode=require", cluster.database("tls").await);
    let options = |ca: Option<std::path::PathBuf>| PostgresOptions {
        tls_ca_file: ca,
        connect_timeout: std::time::Duration::from_secs(2),
        ..PostgresOptions::default()
    };
    let store = PostgresStore::open(&url, options(cluster.ca.clone()))
        .await
        .expect("TLS with the right CA");
    store.check().await.expect("serves");
    let (client, connection) = tokio_postgres::connect(
        &url.replace("sslmode=require", "sslmode=disable"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("plain admin connection");
    tokio::spawn(connection);
    let tls_sessions: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid
             WHERE s.ssl AND a.application_name = 'berth'",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(tls_sessions >= 1, "berth's connections use TLS");

    let stranger = Cluster::start_with_tls();
    let refused = PostgresStore::open(&url, options(stranger.ca.clone())).await;
    let err = refused
        .expect_err("a certificate from another CA is refused")
        .to_string();
    assert!(err.contains("certificate"), "{err}");

    let plain = Cluster::start();
    let url = format!("{}?sslmode=require", plain.database("plain").await);
    let refused = PostgresStore::open(&url, options(cluster.ca.clone())).await;
    assert!(
        refused.is_err(),
        "a server without TLS is refused under sslmode=require"
    );
}

/// A manifest whose bytes do not hash to its digest stops the copy, naming it: a migration
/// never carries corruption over.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_refuses_a_corrupt_manifest() {
    use berth_meta::{NewManifest, SqliteStore};
    use berth_oci::{Digest, RepositoryName, Tag};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.sqlite");
    let sqlite = SqliteStore::open(&path).await.unwrap();
    let repo: RepositoryName = "team/app".parse().unwrap();
    let claimed = Digest::sha256_of(b"what was pushed");
    sqlite
        .put_manifest(NewManifest {
            repository: &repo,
            digest: &claimed,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            content: b"what the disk says now",
            blobs: &[],
            children: &[],
            allow_missing: false,
            subject: None,
            artifact_type: None,
            annotations_json: None,
            tags: &["v1".parse::<Tag>().unwrap()],
            immutable_tags: &[],
        })
        .await
        .unwrap();
    drop(sqlite);

    let cluster = Cluster::start();
    let target = open(&cluster.database("corrupt").await).await;
    let refused = berth_meta::transfer::sqlite_to_postgres(&path, &target, |_| {}).await;
    match refused {
        Err(MetaError::Corrupt(why)) => assert!(why.contains(claimed.as_str()), "{why}"),
        other => panic!("a corrupt manifest must stop the copy: {other:?}"),
    }
    let repos = target
        .list_repositories(berth_meta::Page {
            last: None,
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(
        repos,
        vec!["team/app".to_owned()],
        "what came before it was copied"
    );
    assert!(target
        .get_manifest(&repo, &berth_oci::Reference::Digest(claimed))
        .await
        .unwrap()
        .is_none());
}
