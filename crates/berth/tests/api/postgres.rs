//! The registry on PostgreSQL metadata (`BERTH_METADATA_URL`), against a real PostgreSQL
//! server: what one replica pushes another sees, and a database outage is answered 503 with
//! `Retry-After` (and `/readyz` false) until the database returns.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::common::*;
use crate::pg::Cluster;

/// Asks `probe` every 20 ms until its answer satisfies `done` or `limit` has passed; returns
/// the last answer.
pub(crate) async fn poll<T>(
    limit: Duration,
    mut probe: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let started = std::time::Instant::now();
    loop {
        let answer = probe().await;
        if done(&answer) || started.elapsed() >= limit {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn manifest_status(s: &Server, repo: &str, reference: &str) -> reqwest::Response {
    s.req(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("manifest GET")
}

/// Two servers with their own data directories and one database: the index is the
/// database's, not a file of either server.
#[tokio::test(flavor = "multi_thread")]
async fn servers_sharing_a_database_share_the_index() {
    let cluster = Cluster::start();
    let url = cluster.database("shared").await;
    let env = [("BERTH_METADATA_URL", url.as_str())];
    let (a, b) = (
        Server::start_with_env(&env).await,
        Server::start_with_env(&env).await,
    );
    let digest = a.push_image("team/app", "v1").await;
    assert!(
        !a.data.join("berth/metadata.sqlite").exists(),
        "no SQLite file beside PostgreSQL"
    );

    let r = manifest_status(&b, "team/app", "v1").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), digest);
    let tags: serde_json::Value = b
        .get("/v2/team/app/tags/list")
        .await
        .json()
        .await
        .expect("tags");
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));

    let r = b
        .req(Method::DELETE, &format!("/v2/team/app/manifests/{digest}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = manifest_status(&a, "team/app", &digest).await;
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "deleted through the other server"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_is_answered_503_until_it_ends() {
    let cluster = Cluster::start();
    let url = cluster.database("outage").await;
    let s = Server::start_with_env(&[
        ("BERTH_METADATA_URL", url.as_str()),
        ("BERTH_METADATA_CONNECT_TIMEOUT_SECONDS", "1"),
    ])
    .await;
    s.push_image("team/app", "v1").await;
    assert_eq!(s.get("/readyz").await.status(), StatusCode::OK);

    cluster.stop();
    // A reference nobody read yet, so the manifest cache cannot answer for the database.
    let r = manifest_status(&s, "team/app", "v2").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&r, "retry-after"), "1");
    let body: serde_json::Value = r.json().await.expect("OCI error body");
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    let r = s
        .req(Method::POST, "/v2/team/app/blobs/uploads/")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "writes too");
    assert_eq!(
        s.get("/readyz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    cluster.restart();
    let status = poll(
        Duration::from_secs(5),
        async || manifest_status(&s, "team/app", "v1").await.status(),
        |s| *s == StatusCode::OK,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "served again once the database is back"
    );
    assert_eq!(s.get("/readyz").await.status(), StatusCode::OK);
}

/// A tag moved through one server is served moved by the other within a second, although
/// the other had it cached (its cache is fresh for two seconds): the database announces the
/// change to every server.
#[tokio::test(flavor = "multi_thread")]
async fn a_tag_moved_on_one_server_is_seen_on_the_other_within_a_second() {
    let cluster = Cluster::start();
    let url = cluster.database("moves").await;
    let env = [("BERTH_METADATA_URL", url.as_str())];
    let (a, b) = (
        Server::start_with_env(&env).await,
        Server::start_with_env(&env).await,
    );
    let first = a.push_image("team/app", "v1").await;
    let r = manifest_status(&b, "team/app", "v1").await;
    assert_eq!(header(&r, "docker-content-digest"), first, "b caches v1");

    let second = a.push_image("team/app", "v1").await;
    assert_ne!(first, second);
    let seen = poll(
        Duration::from_secs(1),
        async || {
            header(
                &manifest_status(&b, "team/app", "v1").await,
                "docker-content-digest",
            )
        },
        |d| *d == second,
    )
    .await;
    assert_eq!(seen, second, "b serves the moved tag within a second");

    let r = a
        .req(Method::DELETE, "/v2/team/app/manifests/v1")
        .send()
        .await
        .expect("untag");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let status = poll(
        Duration::from_secs(1),
        async || manifest_status(&b, "team/app", "v1").await.status(),
        |s| *s == StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "b sees the untag within a second"
    );
}

/// Two replicas on one volume and one database, as the Kubernetes guide's ReadWriteMany
/// setup runs them.
async fn replicas(cluster: &Cluster, database: &str) -> (Server, Server) {
    let url = cluster.database(database).await;
    let env = [("BERTH_METADATA_URL", url.as_str())];
    let a = Server::start_with_env(&env).await;
    let b = Server::start_beside(&a, &env).await;
    (a, b)
}

pub(crate) async fn blob_bytes(s: &Server, repo: &str, digest: &str) -> Vec<u8> {
    let r = s.get(&format!("/v2/{repo}/blobs/{digest}")).await;
    assert_eq!(r.status(), StatusCode::OK, "GET {digest} from {}", s.base);
    r.bytes().await.expect("blob body").to_vec()
}

/// A chunked upload whose chunks alternate between the replicas completes, large (the hash
/// state travels through the database) and small (the replica reads the bytes back), and
/// either replica serves the blob.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_alternating_between_replicas_completes() {
    let cluster = Cluster::start();
    let (a, b) = replicas(&cluster, "alternate").await;
    alternate_chunks(&a, &b).await;
}

/// Pushes two blobs whose chunks alternate between `a` and `b`, and reads both back through
/// each.
pub(crate) async fn alternate_chunks(a: &Server, b: &Server) {
    for sizes in [
        vec![5 * 1024 * 1024 + 7, 1024 * 1024 + 3, 100, 10],
        vec![1000, 2001, 3002, 17],
    ] {
        let data = random_bytes(sizes.iter().sum());
        let digest = sha256(&data);
        let location = a.start_upload("team/app").await;
        let mut at = 0;
        let (last, chunks) = sizes.split_last().expect("chunks");
        for (i, len) in chunks.iter().enumerate() {
            let replica = if i % 2 == 0 { b } else { a };
            let range = format!("{at}-{}", at + len - 1);
            let r = replica
                .patch_upload(&location, Some(&range), &data[at..at + len])
                .await;
            assert_eq!(
                r.status(),
                StatusCode::ACCEPTED,
                "chunk {i} via {}",
                replica.base
            );
            assert_eq!(header(&r, "range"), format!("0-{}", at + len - 1));
            at += len;
        }
        let finisher = if chunks.len() % 2 == 0 { b } else { a };
        let r = finisher
            .req(Method::PUT, &format!("{location}?digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data[at..at + last].to_vec())
            .send()
            .await
            .expect("PUT");
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap_or_default()
        );
        for s in [a, b] {
            assert!(
                blob_bytes(s, "team/app", &digest).await == data,
                "intact via {}",
                s.base
            );
        }
    }
}

/// A replica killed in the middle of a push: the client carries on through the other one,
/// which reports where the upload stands and finishes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_push_continues_on_the_other_replica_when_one_dies() {
    let cluster = Cluster::start();
    let (mut a, b) = replicas(&cluster, "failover").await;
    push_through_a_dying_replica(&mut a, &b).await;
}

/// Starts a push on `a`, kills `a` after the first chunk, and finishes the push on `b`.
pub(crate) async fn push_through_a_dying_replica(a: &mut Server, b: &Server) {
    let data = random_bytes(6 * 1024 * 1024 + 11);
    let digest = sha256(&data);
    let half = 4 * 1024 * 1024 + 5;
    let location = a.start_upload("team/app").await;
    let r = a
        .patch_upload(&location, Some(&format!("0-{}", half - 1)), &data[..half])
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    a.kill();

    let r = b.get(&location).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), format!("0-{}", half - 1));
    let r = b
        .patch_upload(
            &location,
            Some(&format!("{half}-{}", data.len() - 1)),
            &data[half..],
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = b
        .req(Method::PUT, &format!("{location}?digest={digest}"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
    assert!(blob_bytes(b, "team/app", &digest).await == data);
}

fn gc_runs(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with("berth_gc_runs_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Of two replicas, one collects garbage (it holds the lease); when it dies, the other
/// takes over within the lease's three periods.
#[tokio::test(flavor = "multi_thread")]
async fn one_replica_collects_garbage_and_another_takes_over() {
    let cluster = Cluster::start();
    let url = cluster.database("leader").await;
    let env = |name| {
        [
            ("BERTH_METADATA_URL", url.as_str()),
            ("BERTH_GC_INTERVAL_SECONDS", "1"),
            ("BERTH_SERVER_INSTANCE", name),
        ]
    };
    let mut a = Server::start_with_env(&env("a")).await;
    let mut b = Server::start_beside(&a, &env("b")).await;
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let runs_a = gc_runs(&a.get("/metrics").await.text().await.expect("metrics"));
    let runs_b = gc_runs(&b.get("/metrics").await.text().await.expect("metrics"));
    assert!(
        (runs_a > 0.0) != (runs_b > 0.0),
        "exactly one replica collects: {runs_a} and {runs_b} runs"
    );
    let follower = if runs_a > 0.0 {
        a.kill();
        &b
    } else {
        b.kill();
        &a
    };
    let runs = poll(
        Duration::from_secs(8),
        async || {
            gc_runs(
                &follower
                    .get("/metrics")
                    .await
                    .text()
                    .await
                    .expect("metrics"),
            )
        },
        |runs| *runs > 0.0,
    )
    .await;
    let taken_over = runs > 0.0;
    assert!(
        taken_over,
        "the other replica collects once the lease expired"
    );
}

/// `metadata.url` with `sslmode=require` and `metadata.tls_ca_file`: the registry keeps its
/// index over TLS to a database with a private CA.
#[tokio::test(flavor = "multi_thread")]
async fn the_database_may_be_reached_over_tls_with_a_private_ca() {
    let cluster = Cluster::start_with_tls();
    let url = format!("{}?sslmode=require", cluster.database("tls").await);
    let ca = cluster.ca.clone().expect("the cluster's CA");
    let ca = ca.to_str().expect("utf-8 path");
    let s = Server::start_with_env(&[
        ("BERTH_METADATA_URL", url.as_str()),
        ("BERTH_METADATA_TLS_CA_FILE", ca),
    ])
    .await;
    let digest = s.push_image("team/app", "v1").await;
    let r = manifest_status(&s, "team/app", "v1").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), digest);
}

/// Pushes one image (a layer and a config) without asserting: the manifest's digest and the
/// blobs' digests and bytes when every step was acknowledged, `None` when one was refused.
async fn try_push(s: &Server, repo: &str, tag: &str) -> Option<(String, Vec<(String, Vec<u8>)>)> {
    let config =
        serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux", "n": tag}))
            .expect("config");
    let layer = random_bytes(20_000);
    let mut blobs = Vec::new();
    for data in [config.clone(), layer.clone()] {
        let digest = sha256(&data);
        let r = s
            .req(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            )
            .body(data.clone())
            .send()
            .await
            .ok()?;
        if r.status() != StatusCode::CREATED {
            assert_eq!(
                r.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "refusals say 503"
            );
            return None;
        }
        blobs.push((digest, data));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blobs[0].0, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blobs[1].0, "size": layer.len()}],
    }))
    .expect("manifest");
    let r = s.put_manifest(repo, tag, OCI_MANIFEST, &manifest).await;
    if r.status() != StatusCode::CREATED {
        assert_eq!(
            r.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "refusals say 503"
        );
        return None;
    }
    Some((sha256(&manifest), blobs))
}

/// Pushes keep coming while the database stops and starts again: each is acknowledged or
/// refused with 503, and every acknowledged image pulls intact afterwards — no manifest
/// without its blobs, no tag lost.
#[tokio::test(flavor = "multi_thread")]
async fn pushes_during_a_database_restart_are_kept_or_refused() {
    let cluster = Cluster::start();
    let url = cluster.database("restart").await;
    let s = std::sync::Arc::new(
        Server::start_with_env(&[
            ("BERTH_METADATA_URL", url.as_str()),
            ("BERTH_METADATA_CONNECT_TIMEOUT_SECONDS", "1"),
        ])
        .await,
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pushers: Vec<_> = (0..6)
        .map(|p| {
            let (s, stop) = (s.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut kept, mut refused) = (Vec::new(), 0);
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let tag = format!("p{p}-{i}");
                    match try_push(&s, "load/app", &tag).await {
                        Some(image) => kept.push((tag, image)),
                        None => refused += 1,
                    }
                }
                (kept, refused)
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    cluster.stop();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    cluster.restart();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let (mut kept, mut refused) = (Vec::new(), 0);
    for p in pushers {
        let (k, r) = p.await.expect("pusher");
        kept.extend(k);
        refused += r;
    }
    assert!(refused > 0, "the outage refused some pushes");
    assert!(
        kept.len() > 6,
        "pushes were acknowledged around it: {}",
        kept.len()
    );
    for (tag, (digest, blobs)) in &kept {
        let r = manifest_status(&s, "load/app", tag).await;
        assert_eq!(r.status(), StatusCode::OK, "acknowledged {tag} is there");
        assert_eq!(&header(&r, "docker-content-digest"), digest);
        for (blob, data) in blobs {
            let r = s.get(&format!("/v2/load/app/blobs/{blob}")).await;
            assert_eq!(r.status(), StatusCode::OK, "{tag}: blob {blob}");
            assert!(
                r.bytes().await.expect("body") == *data,
                "{tag}: blob {blob} intact"
            );
        }
    }
}

fn berth_migrate(data: &std::path::Path, to: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["migrate", "--data"])
        .arg(data)
        .args(["--to", to])
        .env("BERTH_LOG_LEVEL", "warn")
        .output()
        .expect("run berth migrate")
}

/// A registry that grew up on SQLite moves to PostgreSQL with `berth migrate`: run twice
/// (the second run finds everything there), then served from PostgreSQL, every image, tag and
/// blob is where it was.
#[tokio::test(flavor = "multi_thread")]
async fn berth_migrate_moves_a_registry_from_sqlite_to_postgres() {
    let mut s = Server::start().await;
    let mut images = Vec::new();
    for (repo, tag) in [
        ("team/app", "v1"),
        ("team/app", "v2"),
        ("other/tool", "latest"),
    ] {
        images.push((repo, tag, s.push_image(repo, tag).await));
    }
    s.terminate();
    let cluster = Cluster::start();
    let url = cluster.database("migrated").await;

    let first = berth_migrate(&s.data, &url);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let summary = String::from_utf8_lossy(&first.stdout).into_owned();
    let row = |table: &str| {
        summary
            .lines()
            .find(|l| l.starts_with(&format!("{table}\t")))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(row("manifests"), "manifests\t3 rows\t3 new", "{summary}");
    assert_eq!(row("tags"), "tags\t3 rows\t3 new", "{summary}");
    let again = berth_migrate(&s.data, &url);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let again = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(
        again.contains("manifests\t3 rows\t0 new"),
        "a second run adds nothing: {again}"
    );

    std::fs::remove_file(s.data.join("berth/metadata.sqlite")).expect("the SQLite file");
    let moved = Server::start_beside(&s, &[("BERTH_METADATA_URL", url.as_str())]).await;
    for (repo, tag, digest) in &images {
        let r = manifest_status(&moved, repo, tag).await;
        assert_eq!(r.status(), StatusCode::OK, "{repo}:{tag}");
        assert_eq!(&header(&r, "docker-content-digest"), digest);
        let manifest: serde_json::Value = r.json().await.expect("manifest");
        for layer in manifest["layers"].as_array().expect("layers") {
            let d = layer["digest"].as_str().expect("digest");
            assert_eq!(
                blob_bytes(&moved, repo, d).await.len() as u64,
                layer["size"].as_u64().unwrap_or(0)
            );
        }
    }
    let tags: serde_json::Value = moved
        .get("/v2/team/app/tags/list")
        .await
        .json()
        .await
        .expect("tags");
    assert_eq!(tags["tags"], serde_json::json!(["v1", "v2"]));
}
