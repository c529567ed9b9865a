//! `registry:2` compatibility of access: the Kubernetes recipe's environment, htpasswd files
//! made by `berth htpasswd` (and checked by Apache's), Basic auth and hot reload.

use std::process::Command;
use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::common::*;

fn berth(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .output()
        .expect("run berth")
}

fn htpasswd_line(user: &str, password: &str) -> String {
    let out = berth(&["htpasswd", "-Bbn", user, password]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn berth_htpasswd_output_is_verified_by_apache_htpasswd() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, htpasswd_line("username", "password")).unwrap();
    let check = |user: &str, pw: &str| {
        Command::new("htpasswd")
            .args(["-vb", file.to_str().unwrap(), user, pw])
            .output()
            .expect("Apache htpasswd (apache2-utils) is installed by scripts/install-test-deps.sh")
            .status
            .success()
    };
    assert!(check("username", "password"));
    assert!(!check("username", "wrong"));

    // -c creates, a second user is added, -D deletes, -v verifies; password from stdin with -i.
    let f = file.to_str().unwrap();
    assert!(berth(&["htpasswd", "-cBb", f, "alice", "pw-alice"])
        .status
        .success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["htpasswd", "-Bi", f, "bob"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"pw-bob\n").unwrap();
    assert!(child.wait().unwrap().success());
    assert!(check("alice", "pw-alice") && check("bob", "pw-bob"));
    assert!(berth(&["htpasswd", "-vb", f, "bob", "pw-bob"])
        .status
        .success());
    assert!(!berth(&["htpasswd", "-vb", f, "bob", "nope"])
        .status
        .success());
    assert!(berth(&["htpasswd", "-D", f, "alice"]).status.success());
    assert!(!check("alice", "pw-alice"));
    assert!(!berth(&["htpasswd", "-Bb", "/nonexistent/file", "x", "y"])
        .status
        .success());
}

async fn recipe_server(dir: &std::path::Path) -> Server {
    let file = dir.join("htpasswd");
    std::fs::write(&file, htpasswd_line("username", "password")).unwrap();
    Server::start_with_env(&[
        ("REGISTRY_AUTH", "htpasswd"),
        ("REGISTRY_AUTH_HTPASSWD_REALM", "Registry Realm"),
        ("REGISTRY_AUTH_HTPASSWD_PATH", file.to_str().unwrap()),
    ])
    .await
}

/// The recipe's curl / login / push / catalog sequence, against the recipe's environment.
#[tokio::test]
async fn recipe_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let s = recipe_server(dir.path()).await;

    let r = s.get("/v2/_catalog").await;
    assert_eq!(
        header(&r, "www-authenticate"),
        "Basic realm=\"Registry Realm\""
    );
    assert_error(r, 401, "UNAUTHORIZED").await;
    let r = s.get("/v2/").await;
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "docker login starts here"
    );
    assert!(!header(&r, "www-authenticate").is_empty());

    let login = s.login("username", "password").await;
    assert_eq!(login.status(), StatusCode::OK);
    let wrong = s.login("username", "nope").await;
    assert_error(wrong, 401, "UNAUTHORIZED").await;
    let unknown = s.login("nobody", "password").await;
    assert_error(unknown, 401, "UNAUTHORIZED").await;

    let r = s
        .req(Method::GET, "/v2/_catalog")
        .basic_auth("username", Some("password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), r#"{"repositories":[]}"#);

    // Push without credentials is refused; with them it works.
    let r = s
        .req(Method::POST, "/v2/hello-world/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "UNAUTHORIZED").await;
    let data = b"layer".to_vec();
    let d = sha256(&data);
    let r = s
        .req(
            Method::POST,
            &format!("/v2/hello-world/blobs/uploads/?digest={d}"),
        )
        .basic_auth("username", Some("password"))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_error(
        s.get(&format!("/v2/hello-world/blobs/{d}")).await,
        401,
        "UNAUTHORIZED",
    )
    .await;

    let r = s
        .req(Method::GET, "/v2/_catalog")
        .basic_auth("username", Some("password"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"repositories":["hello-world"]}"#
    );
}

#[tokio::test]
async fn rotated_htpasswd_takes_effect_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = recipe_server(dir.path()).await;
    let ok = |user: &'static str, pw: &'static str| {
        s.req(Method::GET, "/v2/").basic_auth(user, Some(pw)).send()
    };
    assert_eq!(
        ok("username", "password").await.unwrap().status(),
        StatusCode::OK
    );
    // Replace the file the way a Secret update does: a new file renamed into place.
    let tmp = dir.path().join("htpasswd.new");
    std::fs::write(&tmp, htpasswd_line("rotated", "n3w-pass")).unwrap();
    std::fs::rename(&tmp, dir.path().join("htpasswd")).unwrap();
    let mut switched = false;
    for _ in 0..50 {
        if ok("rotated", "n3w-pass").await.unwrap().status() == StatusCode::OK {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(switched, "new user accepted after rotation");
    assert_eq!(
        ok("username", "password").await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "old user gone"
    );
}

#[test]
fn non_bcrypt_entries_stop_startup_naming_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, "legacy:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--data",
            dir.path().join("d").to_str().unwrap(),
        ])
        .env("REGISTRY_AUTH_HTPASSWD_PATH", &file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("legacy") && err.contains("bcrypt"), "{err}");
}

#[tokio::test]
async fn unsupported_registry_variables_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["config", "check", "--data", dir.path().to_str().unwrap()])
        .env("REGISTRY_STORAGE_SWIFT_CONTAINER", "b")
        .env("REGISTRY_HTTP_SECRET", "top-secret-value")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: REGISTRY_STORAGE_SWIFT_CONTAINER is not supported"),
        "{err}"
    );
    assert!(!err.contains("top-secret-value"), "secrets never printed");
}

#[tokio::test]
async fn htpasswd_logins_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let s = recipe_server(dir.path()).await;
    for _ in 0..10 {
        let r = s.login("username", "guess").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = s.login("username", "password").await;
    assert_error(r, 429, "TOOMANYREQUESTS").await;
}
