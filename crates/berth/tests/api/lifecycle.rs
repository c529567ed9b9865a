//! Keeping a registry tidy while it serves: read-only mode (registry:2's variable, the admin
//! API and the CLI, shared through the metadata store) and whole-repository deletion followed by
//! garbage collection.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;
use reqwest::Response;

pub(crate) const ADMIN: (&str, &str) = ("admin", "admin-pass-1");

fn berth(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .output()
        .expect("run berth");
    assert!(
        out.status.success(),
        "berth {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) async fn token_server(data: &std::path::Path) -> Server {
    Server::start_on(
        data,
        &[
            ("BERTH_AUTH_MODE", "token"),
            ("BERTH_AUTH_BOOTSTRAP_ADMIN_PASSWORD", ADMIN.1),
        ],
    )
    .await
}

pub(crate) fn as_user(
    s: &Server,
    who: (&str, &str),
    method: Method,
    path: &str,
) -> reqwest::RequestBuilder {
    s.req(method, path).basic_auth(who.0, Some(who.1))
}

/// Sends each (method, path, JSON body) as the admin; each must succeed.
pub(crate) async fn as_admin(s: &Server, requests: &[(Method, &str, Value)]) {
    for (method, path, body) in requests {
        let r = as_user(s, ADMIN, method.clone(), path)
            .json(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
}

/// Pushes a one-layer image as `who`; returns the manifest's and the layer's digests.
pub(crate) async fn push_as(
    s: &Server,
    who: (&str, &str),
    repo: &str,
    tag: &str,
) -> (String, String) {
    let config = serde_json::to_vec(&json!({"os": "linux", "n": rand::random::<u64>()})).unwrap();
    let layer = random_bytes(2048);
    let mut digests = Vec::new();
    for blob in [&config, &layer] {
        let d = sha256(blob);
        let r = as_user(
            s,
            who,
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        )
        .body(blob.clone())
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{repo}");
        digests.push(d);
    }
    let m = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digests[0], "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digests[1], "size": layer.len()}]}))
    .unwrap();
    let r = as_user(s, who, Method::PUT, &format!("/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    (sha256(&m), digests.remove(1))
}

/// The status of a blob upload started as `who`, within `within`, once it is `want`.
async fn upload_status_becomes(s: &Server, who: (&str, &str), want: StatusCode) -> Response {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = as_user(s, who, Method::POST, "/v2/proj/app/blobs/uploads/")
            .send()
            .await
            .unwrap();
        if r.status() == want || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn registry2_read_only_variable_refuses_writes_and_serves_pulls() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_on(dir.path(), &[]).await;
    let digest = s.push_image("app/x", "v1").await;
    s.terminate();
    let s = Server::start_on(
        dir.path(),
        &[(
            "REGISTRY_STORAGE_MAINTENANCE_READONLY",
            r#"{"enabled": true}"#,
        )],
    )
    .await;
    let r = s.get("/v2/app/x/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);

    let layer = sha256(b"never uploaded");
    let body = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": layer, "size": 14},
        "layers": []}))
    .unwrap();
    let r = s.put_manifest("app/x", "v2", OCI_MANIFEST, &body).await;
    assert_eq!(r.status(), 405);
    assert_eq!(header(&r, "allow"), "GET, HEAD");
    let text = r.text().await.unwrap();
    assert!(
        text.contains("UNSUPPORTED") && text.contains("read-only"),
        "{text}"
    );
    let r = s
        .req(Method::POST, "/v2/app/x/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_error(r, 405, "UNSUPPORTED").await;
    let r = s.delete(&format!("/v2/app/x/manifests/{digest}")).await;
    assert_error(r, 405, "UNSUPPORTED").await;
    assert_eq!(
        s.get("/v2/app/x/manifests/v1").await.status(),
        200,
        "nothing was deleted"
    );
}

#[tokio::test]
async fn read_only_switch_from_the_admin_api_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let s = token_server(dir.path()).await;
    let r = as_user(&s, ADMIN, Method::POST, "/api/v1/users")
        .json(&json!({"name": "dev", "password": "dev-pass-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = as_user(
        &s,
        ("dev", "dev-pass-1"),
        Method::PUT,
        "/api/v1/system/read-only",
    )
    .json(&json!({"enabled": true}))
    .send()
    .await
    .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "only registry admins switch it"
    );

    let r = as_user(&s, ADMIN, Method::PUT, "/api/v1/system/read-only")
        .json(&json!({"enabled": true, "reason": "backup until 10:00"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let state: Value = r.json().await.unwrap();
    assert_eq!(state["enabled"], true);
    let r = upload_status_becomes(&s, ADMIN, StatusCode::METHOD_NOT_ALLOWED).await;
    let text = r.text().await.unwrap();
    assert!(text.contains("backup until 10:00"), "{text}");
    assert!(berth(&["read-only", "status", "--data", data]).contains("backup until 10:00"));

    // The CLI writes the shared setting; the server follows within its two-second refresh.
    berth(&["read-only", "off", "--data", data]);
    let r = upload_status_becomes(&s, ADMIN, StatusCode::ACCEPTED).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    berth(&[
        "read-only",
        "on",
        "--reason",
        "moving disks",
        "--data",
        data,
    ]);
    let r = upload_status_becomes(&s, ADMIN, StatusCode::METHOD_NOT_ALLOWED).await;
    assert!(r.text().await.unwrap().contains("moving disks"));
    let r = as_user(&s, ADMIN, Method::GET, "/api/v1/system/read-only")
        .send()
        .await
        .unwrap();
    let state: Value = r.json().await.unwrap();
    assert_eq!(state["reason"], "moving disks");

    let r = as_user(&s, ADMIN, Method::PUT, "/api/v1/system/read-only")
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = upload_status_becomes(&s, ADMIN, StatusCode::ACCEPTED).await;
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "at once on the server that switched"
    );
    let audit = berth(&["audit", "--action", "read_only.on", "--data", data]);
    assert!(audit.contains("moving disks"), "{audit}");
}

#[tokio::test]
async fn deleting_a_repository_then_gc_frees_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let s = token_server(dir.path()).await;
    as_admin(
        &s,
        &[
            (Method::POST, "/api/v1/projects", json!({"name": "proj"})),
            (
                Method::POST,
                "/api/v1/users",
                json!({"name": "dev", "password": "dev-pass-1"}),
            ),
            (
                Method::PUT,
                "/api/v1/projects/proj/members/dev",
                json!({"role": "developer"}),
            ),
        ],
    )
    .await;
    let (_, layer) = push_as(&s, ADMIN, "proj/app", "v1").await;
    let (kept, kept_layer) = push_as(&s, ADMIN, "proj/other", "v1").await;
    let layer_file = dir.path().join(blob_path(&layer));
    assert!(layer_file.exists());

    let r = as_user(
        &s,
        ("dev", "dev-pass-1"),
        Method::DELETE,
        "/api/v1/repositories/proj/app",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "developers may not delete repositories"
    );
    let r = as_user(&s, ADMIN, Method::DELETE, "/api/v1/repositories/proj/app")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = as_user(&s, ADMIN, Method::GET, "/v2/proj/app/manifests/v1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = as_user(&s, ADMIN, Method::DELETE, "/api/v1/repositories/proj/app")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "gone already");
    let catalog: Value = as_user(&s, ADMIN, Method::GET, "/v2/_catalog")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(catalog["repositories"], json!(["proj/other"]));

    // Collectable once a second has passed since the layer was stored (times are seconds).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let freed = berth(&["gc", "--grace-seconds", "0", "--data", data]);
    assert!(freed.contains(&layer), "{freed}");
    assert!(
        !layer_file.exists(),
        "the deleted repository's layer is gone"
    );
    let r = as_user(
        &s,
        ADMIN,
        Method::GET,
        &format!("/v2/proj/other/manifests/{kept}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = as_user(
        &s,
        ADMIN,
        Method::GET,
        &format!("/v2/proj/other/blobs/{kept_layer}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the other repository keeps its bytes"
    );

    // The CLI deletes too, and says what it did in the audit log.
    berth(&["repository", "rm", "proj/other", "--data", data]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = as_user(&s, ADMIN, Method::GET, "/v2/proj/other/manifests/v1")
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server still serves proj/other"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let audit = berth(&["audit", "--action", "repository.delete", "--data", data]);
    assert!(
        audit.contains("proj/app") && audit.contains("proj/other"),
        "{audit}"
    );
}

fn berth_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .output()
        .expect("run berth");
    assert!(!out.status.success(), "berth {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn set_policy(data: &str, project: &str, policy: Value) {
    let file = std::path::Path::new(data).join(format!("policy-{project}.json"));
    std::fs::write(&file, policy.to_string()).unwrap();
    berth(&[
        "policy",
        "set",
        project,
        "--file",
        file.to_str().unwrap(),
        "--data",
        data,
    ]);
}

/// A manifest of one fresh config blob (no layers), pushed under `reference`; its digest.
async fn push_small(s: &Server, repo: &str, reference: &str, extra: Value) -> String {
    let body = s.image_manifest(repo, extra).await;
    let digest = sha256(&body);
    let reference = if reference.is_empty() {
        digest.as_str()
    } else {
        reference
    };
    let r = s.put_manifest(repo, reference, OCI_MANIFEST, &body).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{repo}:{reference}");
    digest
}

#[tokio::test]
async fn immutable_tags_cannot_be_moved_or_deleted_until_the_rule_is_lifted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let s = Server::start_on(dir.path(), &[]).await;
    set_policy(data, "app", json!({"immutable": [{"tags": "v*"}]}));
    let first = s.image_manifest("app/x", json!({})).await;
    let r = s.put_manifest("app/x", "v1", OCI_MANIFEST, &first).await;
    assert_eq!(r.status(), 201);
    let r = s.put_manifest("app/x", "v1", OCI_MANIFEST, &first).await;
    assert_eq!(
        r.status(),
        201,
        "pushing the same manifest again moves nothing"
    );

    let other = s.image_manifest("app/x", json!({})).await;
    let r = s.put_manifest("app/x", "v1", OCI_MANIFEST, &other).await;
    assert_eq!(r.status(), 403);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("DENIED") && text.contains("\\\"v*\\\"") && text.contains("immutab"),
        "the refusal names the rule: {text}"
    );
    let served = s.get("/v2/app/x/manifests/v1").await.bytes().await.unwrap();
    assert_eq!(sha256(&served), sha256(&first), "v1 did not move");
    for _ in 0..2 {
        let r = s
            .put_manifest("app/x", "latest", OCI_MANIFEST, &other)
            .await;
        assert_eq!(r.status(), 201, "other tags move freely");
    }
    let r = s.delete("/v2/app/x/manifests/v1").await;
    assert_error(r, 403, "DENIED").await;
    let r = s
        .delete(&format!("/v2/app/x/manifests/{}", sha256(&first)))
        .await;
    assert_error(r, 403, "DENIED").await;
    let file = dir.path().join("bad-policy.json");
    std::fs::write(
        &file,
        r#"{"immutable": [{"tags": "v*"}], "retention": {"rules": [{}]}}"#,
    )
    .unwrap();
    let err = berth_fails(&[
        "policy",
        "set",
        "app",
        "--file",
        file.to_str().unwrap(),
        "--data",
        data,
    ]);
    assert!(err.contains("not a valid policy"), "{err}");
    let shown = berth(&["policy", "show", "app", "--data", data]);
    assert!(
        shown.contains("\"v*\"") && !shown.contains("retention"),
        "the stored policy is unchanged: {shown}"
    );
    let err = berth_fails(&["repository", "rm", "app/x", "--data", data]);
    assert!(err.contains("immutable"), "{err}");

    // Lifted through the CLI: the server reads policies again within two seconds.
    berth(&["policy", "rm", "app", "--data", data]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.delete("/v2/app/x/manifests/v1").await.status() != 202 {
        assert!(Instant::now() < deadline, "lifted: deletes work again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn retention_dry_run_names_what_a_run_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let s = Server::start_on(dir.path(), &[]).await;
    // Oldest first, one second apart: push times are seconds.
    let untagged = push_small(&s, "app/r", "", json!({})).await;
    let old = push_small(&s, "app/r", "t1", json!({})).await;
    let signature = push_small(
        &s,
        "app/r",
        "",
        json!({"subject": {"mediaType": OCI_MANIFEST, "digest": old, "size": 1}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t2 = push_small(&s, "app/r", "t2", json!({})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t3 = push_small(&s, "app/r", "t3", json!({})).await;
    let release = push_small(&s, "app/r", "release-1", json!({})).await;
    let kept_elsewhere = push_small(&s, "keep/r", "t0", json!({})).await;
    set_policy(
        data,
        "app",
        json!({"retention": {
            "rules": [{"tags": "t*", "keep": {"latest_pushed": 2}},
                      {"tags": "release-*", "keep": "always"}],
            "untagged": {"delete_after_days": 0}}}),
    );

    let dry = berth(&["retention", "run", "app", "--dry-run", "--data", data]);
    let would: std::collections::BTreeSet<String> = dry
        .lines()
        .filter(|l| l.starts_with("would delete\t"))
        .map(|l| l.split('\t').nth(1).unwrap().to_owned())
        .collect();
    let expected: std::collections::BTreeSet<String> = [&untagged, &old, &signature]
        .iter()
        .map(|d| format!("app/r@{d}"))
        .collect();
    assert_eq!(would, expected, "{dry}");
    let bytes = |out: &str| {
        out.lines()
            .last()
            .and_then(|l| l.split("frees ").nth(1))
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no byte count: {out}"))
    };
    assert!(bytes(&dry) > 0, "{dry}");
    assert_eq!(
        s.get(&format!("/v2/app/r/manifests/{old}")).await.status(),
        200,
        "dry runs delete nothing"
    );

    let run = berth(&["retention", "run", "app", "--data", data]);
    let deleted: std::collections::BTreeSet<String> = run
        .lines()
        .filter(|l| l.starts_with("delete\t"))
        .map(|l| l.split('\t').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(deleted, would, "the run deletes what the dry run said");
    assert_eq!(bytes(&run), bytes(&dry));
    // The server's manifest cache drops what another process deleted within seconds.
    let deadline = Instant::now() + Duration::from_secs(6);
    for gone in [&untagged, &old, &signature] {
        while s.get(&format!("/v2/app/r/manifests/{gone}")).await.status() != 404 {
            assert!(Instant::now() < deadline, "{gone} is still served");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for (repo, kept) in [
        ("app/r", &t2),
        ("app/r", &t3),
        ("app/r", &release),
        ("keep/r", &kept_elsewhere),
    ] {
        assert_eq!(
            s.get(&format!("/v2/{repo}/manifests/{kept}"))
                .await
                .status(),
            200
        );
    }
    let audit = berth(&["audit", "--action", "delete", "--data", data]);
    assert!(
        audit.contains(&format!("app/r:{old}")) && audit.contains("retention"),
        "{audit}"
    );
    let again = berth(&["retention", "run", "app", "--data", data]);
    assert!(again.contains("deleted 0 manifests"), "{again}");
}

#[tokio::test]
async fn scheduled_retention_keeps_what_was_pulled() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let s = Server::start_on(dir.path(), &[("BERTH_RETENTION_INTERVAL_SECONDS", "1")]).await;
    let old = push_small(&s, "app/p", "old", json!({})).await;
    let mid = push_small(&s, "app/p", "mid", json!({})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new = push_small(&s, "app/p", "new", json!({})).await;
    assert_eq!(
        s.get("/v2/app/p/manifests/old").await.status(),
        200,
        "a pull"
    );
    set_policy(
        data,
        "app",
        json!({"retention": {"rules": [
            {"keep": {"latest_pushed": 1}},
            {"keep": {"pulled_within_days": 1}}]}}),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.get(&format!("/v2/app/p/manifests/{mid}")).await.status() != 404 {
        assert!(
            Instant::now() < deadline,
            "the scheduled run did not delete mid"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for kept in [&old, &new] {
        assert_eq!(
            s.get(&format!("/v2/app/p/manifests/{kept}")).await.status(),
            200
        );
    }
}

#[tokio::test]
async fn quota_counts_shared_layers_once_and_refuses_before_storing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let s = Server::start_on(dir.path(), &[]).await;
    set_policy(data, "q", json!({"quota_bytes": 10_000}));
    let blob_file = |digest: &str| dir.path().join(blob_path(digest));
    let post = |repo: &str, data: &[u8]| {
        let d = sha256(data);
        s.req(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        )
        .body(data.to_vec())
        .send()
    };

    let layer = random_bytes(6000);
    assert_eq!(post("q/a", &layer).await.unwrap().status(), 201);
    assert_eq!(
        post("q/b", &layer).await.unwrap().status(),
        201,
        "a layer the project holds costs nothing more"
    );
    let other = random_bytes(6000);
    let r = post("q/b", &other).await.unwrap();
    assert_eq!(r.status(), 403);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("DENIED") && text.contains("6000 of its 10000 bytes"),
        "the refusal gives usage and limit: {text}"
    );
    assert!(
        !blob_file(&sha256(&other)).exists(),
        "the refused blob stored nothing"
    );

    // A chunked upload is refused at the chunk that would pass the quota.
    let location = s.start_upload("q/c").await;
    let r = s.patch_upload(&location, Some("0-5999"), &other).await;
    assert_error(r, 403, "DENIED").await;
    // Other projects are not limited by it.
    assert_eq!(post("free/a", &other).await.unwrap().status(), 201);
    let r = s
        .req(
            Method::POST,
            &format!(
                "/v2/q/d/blobs/uploads/?mount={}&from=free/a",
                sha256(&other)
            ),
        )
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "DENIED").await;

    let usage = berth(&["project", "usage", "q", "--data", data]);
    assert!(
        usage.starts_with("q\t6000 bytes\tquota 10000 bytes"),
        "{usage}"
    );
    assert!(
        usage.contains("q/a\t6000 bytes") && usage.contains("q/b\t6000 bytes"),
        "{usage}"
    );
    let all = berth(&["project", "usage", "--data", data]);
    assert!(
        all.contains("q\t6000 bytes\tquota 10000 bytes")
            && all.contains("free\t6000 bytes\tno quota"),
        "{all}"
    );
    let uploads = std::fs::read_dir(dir.path().join("berth/uploads"))
        .unwrap()
        .count();
    assert!(
        uploads <= 1,
        "only the open chunked session is staged ({uploads})"
    );
}

fn berth_status(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .output()
        .expect("run berth");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn check_finds_corrupt_missing_and_orphaned_blobs_and_repair_makes_it_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let s = Server::start_on(dir.path(), &[]).await;
    let blob_file = |digest: &str| dir.path().join(blob_path(digest));
    let a = s.image_manifest("app/a", json!({})).await;
    assert_eq!(
        s.put_manifest("app/a", "v1", OCI_MANIFEST, &a)
            .await
            .status(),
        201
    );
    let b = s.image_manifest("app/b", json!({})).await;
    assert_eq!(
        s.put_manifest("app/b", "v1", OCI_MANIFEST, &b)
            .await
            .status(),
        201
    );
    let c = s.image_manifest("app/c", json!({})).await;
    assert_eq!(
        s.put_manifest("app/c", "v1", OCI_MANIFEST, &c)
            .await
            .status(),
        201
    );
    let layer_of = |m: &[u8]| {
        let v: Value = serde_json::from_slice(m).unwrap();
        v["layers"][0]["digest"].as_str().unwrap().to_owned()
    };
    let (corrupt, missing) = (layer_of(&a), layer_of(&b));
    let (ok, clean) = berth_status(&["check", "--data", data]);
    assert!(ok, "a healthy registry passes: {clean}");

    // The same size, other bytes; a deleted file; bytes nobody recorded; and a manifest's
    // copy among the blobs, as registry:2 keeps them (not an orphan).
    let size = std::fs::metadata(blob_file(&corrupt)).unwrap().len() as usize;
    std::fs::write(blob_file(&corrupt), vec![b'x'; size]).unwrap();
    std::fs::remove_file(blob_file(&missing)).unwrap();
    let stray = random_bytes(777);
    let orphan = sha256(&stray);
    std::fs::create_dir_all(blob_file(&orphan).parent().unwrap()).unwrap();
    std::fs::write(blob_file(&orphan), &stray).unwrap();
    std::fs::create_dir_all(blob_file(&sha256(&c)).parent().unwrap()).unwrap();
    std::fs::write(blob_file(&sha256(&c)), &c).unwrap();

    let (ok, found) = berth_status(&["check", "--data", data]);
    assert!(!ok, "problems make it fail");
    let lines_of = |kind: &str| -> Vec<String> {
        found
            .lines()
            .filter(|l| l.starts_with(&format!("{kind}\t")))
            .map(str::to_owned)
            .collect()
    };
    assert!(
        lines_of("corrupt").iter().any(|l| l.contains(&corrupt)),
        "{found}"
    );
    assert!(
        lines_of("missing").iter().any(|l| l.contains(&missing)),
        "{found}"
    );
    assert_eq!(lines_of("orphaned").len(), 1, "{found}");
    assert!(lines_of("orphaned")[0].contains(&orphan), "{found}");
    assert!(lines_of("dangling").is_empty(), "{found}");

    let (ok, repaired) = berth_status(&["check", "--repair", "--data", data]);
    assert!(!ok, "it found problems, so it still says so: {repaired}");
    assert!(repaired.contains("quarantined"), "{repaired}");
    let hex = &corrupt["sha256:".len()..];
    assert!(dir
        .path()
        .join(format!("berth/quarantine/sha256-{hex}"))
        .exists());
    assert!(!blob_file(&corrupt).exists());
    let (ok, after) = berth_status(&["check", "--data", data]);
    assert!(ok, "consistent after the repair: {after}");

    // The broken images are gone (unknown rather than failing mid-pull); the server's
    // manifest cache follows within seconds.
    let deadline = Instant::now() + Duration::from_secs(6);
    for repo in ["app/a", "app/b"] {
        while s.get(&format!("/v2/{repo}/manifests/v1")).await.status() != 404 {
            assert!(Instant::now() < deadline, "{repo}:v1 still served");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let collected = berth(&["gc", "--grace-seconds", "0", "--data", data]);
    assert!(
        collected.contains(&orphan),
        "the orphan was filed for GC: {collected}"
    );
    assert!(!blob_file(&orphan).exists());
    assert_eq!(
        s.get("/v2/app/c/manifests/v1").await.status(),
        200,
        "the healthy image stays"
    );
}

#[tokio::test]
async fn only_registry_admins_change_a_project_quota() {
    let dir = tempfile::tempdir().unwrap();
    let s = token_server(dir.path()).await;
    as_admin(
        &s,
        &[
            (Method::POST, "/api/v1/projects", json!({"name": "proj"})),
            (
                Method::POST,
                "/api/v1/users",
                json!({"name": "boss", "password": "boss-pass-1"}),
            ),
            (
                Method::PUT,
                "/api/v1/projects/proj/members/boss",
                json!({"role": "admin"}),
            ),
        ],
    )
    .await;
    let boss = ("boss", "boss-pass-1");
    let put = |who, policy: Value| {
        as_user(&s, who, Method::PUT, "/api/v1/projects/proj/policy")
            .json(&policy)
            .send()
    };
    let r = put(boss, json!({"quota_bytes": 1_000_000_000_000u64}))
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "a project admin cannot raise its quota"
    );
    let r = put(ADMIN, json!({"quota_bytes": 1000})).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = put(
        boss,
        json!({"quota_bytes": 1000, "immutable": [{"tags": "v*"}]}),
    )
    .await
    .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the rest of the policy is the project admin's"
    );
    let r = as_user(&s, boss, Method::DELETE, "/api/v1/projects/proj/policy")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "removing the policy would lift the quota"
    );
    // A policy that does not parse is refused whole, and the stored one stays.
    for bad in [
        json!({"immutable": [{"tags": ""}]}),
        json!({"quota": 1}),
        json!({"retention": {"rules": [{"keep": "sometimes"}]}}),
    ] {
        let r = put(boss, bad.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        let text = r.text().await.unwrap();
        assert!(text.contains("not a valid policy"), "{text}");
    }
    let shown: Value = as_user(&s, boss, Method::GET, "/api/v1/projects/proj/policy")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["quota_bytes"], 1000);
    assert_eq!(shown["immutable"][0]["tags"], "v*");
}
