//! The registry on PostgreSQL metadata (`BERTH_METADATA_URL`), against a real PostgreSQL
//! server: what one replica pushes another sees, and a database outage is answered 503 with
//! `Retry-After` (and `/readyz` false) until the database returns.

use reqwest::{Method, StatusCode};

use crate::common::*;
use crate::pg::Cluster;

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
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        status = manifest_status(&s, "team/app", "v1").await.status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
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
    let moved = std::time::Instant::now();
    let mut seen = String::new();
    while moved.elapsed() < std::time::Duration::from_secs(1) {
        seen = header(
            &manifest_status(&b, "team/app", "v1").await,
            "docker-content-digest",
        );
        if seen == second {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen, second, "b serves the moved tag within a second");

    let r = a
        .req(Method::DELETE, "/v2/team/app/manifests/v1")
        .send()
        .await
        .expect("untag");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let untagged = std::time::Instant::now();
    let mut status = StatusCode::OK;
    while untagged.elapsed() < std::time::Duration::from_secs(1) {
        status = manifest_status(&b, "team/app", "v1").await.status();
        if status == StatusCode::NOT_FOUND {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "b sees the untag within a second"
    );
}
