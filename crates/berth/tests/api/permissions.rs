//! The permission matrix: every role × every action, on a public and a private project, for
//! anonymous, user and robot callers, against the real binary in token mode.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

const ADMIN: (&str, &str) = ("admin", "admin-pass-1");

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Pull,
    Push,
    Delete,
    Untag,
    Catalog,
    Mount,
    AdminApi,
}

struct Matrix {
    s: Server,
    robots: Vec<(String, String)>,
}

impl Matrix {
    async fn req(
        &self,
        who: Option<(&str, &str)>,
        method: Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let r = self.s.req(method, path);
        match who {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    async fn admin_json(&self, method: Method, path: &str, body: Value) -> Value {
        let r = self
            .req(Some(ADMIN), method, path)
            .await
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Pushes a unique image as admin; returns its digest.
    async fn push_as_admin(&self, repo: &str, tag: &str) -> String {
        let config =
            serde_json::to_vec(&json!({"tag": tag, "repo": repo, "n": rand::random::<u64>()}))
                .unwrap();
        let cd = sha256(&config);
        let r = self
            .req(
                Some(ADMIN),
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={cd}"),
            )
            .await
            .body(config.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let m = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()}, "layers": []}))
        .unwrap();
        let r = self
            .req(
                Some(ADMIN),
                Method::PUT,
                &format!("/v2/{repo}/manifests/{tag}"),
            )
            .await
            .header("content-type", OCI_MANIFEST)
            .body(m.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        sha256(&m)
    }

    /// Performs `act` on `project` as `who`; returns whether it was allowed, checking that a
    /// refusal is 401 for anonymous callers and 403 for known ones.
    async fn attempt(&self, who: Option<(&str, &str)>, project: &str, act: Act, tag: &str) -> bool {
        let repo = format!("{project}/app");
        let status = match act {
            Act::Pull => self
                .req(who, Method::GET, &format!("/v2/{repo}/manifests/v1"))
                .await
                .send()
                .await
                .unwrap()
                .status(),
            Act::Push => self
                .req(who, Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
                .await
                .send()
                .await
                .unwrap()
                .status(),
            Act::Delete => {
                let d = self.push_as_admin(&repo, tag).await;
                self.req(who, Method::DELETE, &format!("/v2/{repo}/manifests/{d}"))
                    .await
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
            Act::Untag => {
                self.push_as_admin(&repo, tag).await;
                self.req(who, Method::DELETE, &format!("/v2/{repo}/manifests/{tag}"))
                    .await
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
            Act::Catalog => {
                let r = self
                    .req(who, Method::GET, "/v2/_catalog")
                    .await
                    .send()
                    .await
                    .unwrap();
                if r.status() != StatusCode::OK {
                    r.status()
                } else {
                    let body: Value = r.json().await.unwrap();
                    let listed = body["repositories"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|v| v == &json!(repo));
                    return listed;
                }
            }
            Act::Mount => {
                // Mount from this project into a repository everyone in the test may push to.
                let d = self.push_as_admin(&repo, tag).await;
                let r = self
                    .req(
                        who,
                        Method::POST,
                        &format!(
                            "/v2/open/dst/blobs/uploads/?mount={}&from={repo}",
                            self.config_of(&repo, &d).await
                        ),
                    )
                    .await
                    .send()
                    .await
                    .unwrap();
                match r.status() {
                    StatusCode::CREATED => return true,
                    StatusCode::ACCEPTED => return false,
                    other => other,
                }
            }
            Act::AdminApi => self
                .req(
                    who,
                    Method::PUT,
                    &format!("/api/v1/projects/{project}/members/someone"),
                )
                .await
                .json(&json!({"role": "guest"}))
                .send()
                .await
                .unwrap()
                .status(),
        };
        if status.is_success() {
            return true;
        }
        let expected = if who.is_none() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(status, expected, "{who:?} {act:?} on {project}");
        false
    }

    async fn config_of(&self, repo: &str, manifest: &str) -> String {
        let m: Value = self
            .req(
                Some(ADMIN),
                Method::GET,
                &format!("/v2/{repo}/manifests/{manifest}"),
            )
            .await
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        m["config"]["digest"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn every_role_and_action_on_public_and_private_projects() {
    let s = Server::start_with_env(&[
        ("BERTH_AUTH_MODE", "token"),
        ("BERTH_AUTH_BOOTSTRAP_ADMIN_PASSWORD", ADMIN.1),
    ])
    .await;
    let mut m = Matrix {
        s,
        robots: Vec::new(),
    };
    for (name, public) in [("pub", true), ("priv", false), ("open", false)] {
        m.admin_json(
            Method::POST,
            "/api/v1/projects",
            json!({"name": name, "public": public}),
        )
        .await;
    }
    let users = ["guest", "developer", "maintainer", "padmin", "outsider"];
    for u in users {
        m.admin_json(
            Method::POST,
            "/api/v1/users",
            json!({"name": u, "password": format!("{u}-password")}),
        )
        .await;
        // everyone may push to the mount target
        m.admin_json(
            Method::PUT,
            &format!("/api/v1/projects/open/members/{u}"),
            json!({"role": "developer"}),
        )
        .await;
    }
    for project in ["pub", "priv"] {
        for (u, role) in [
            ("guest", "guest"),
            ("developer", "developer"),
            ("maintainer", "maintainer"),
            ("padmin", "admin"),
        ] {
            m.admin_json(
                Method::PUT,
                &format!("/api/v1/projects/{project}/members/{u}"),
                json!({"role": role}),
            )
            .await;
        }
    }
    for (name, actions) in [("reader", "pull"), ("writer", "pull,push")] {
        let r = m
            .admin_json(
                Method::POST,
                "/api/v1/robots",
                json!({"project": "priv", "name": name, "actions": actions}),
            )
            .await;
        m.robots.push((
            r["name"].as_str().unwrap().to_owned(),
            r["secret"].as_str().unwrap().to_owned(),
        ));
    }
    for p in ["pub", "priv"] {
        m.push_as_admin(&format!("{p}/app"), "v1").await;
    }

    let passwords: Vec<(String, String)> = users
        .iter()
        .map(|u| (u.to_string(), format!("{u}-password")))
        .collect();
    let mut callers: Vec<(&str, Option<(&str, &str)>)> =
        vec![("anonymous", None), ("admin", Some(ADMIN))];
    for (u, p) in &passwords {
        callers.push((u.as_str(), Some((u.as_str(), p.as_str()))));
    }
    let robots = m.robots.clone();
    callers.push((
        "robot-reader",
        Some((robots[0].0.as_str(), robots[0].1.as_str())),
    ));
    callers.push((
        "robot-writer",
        Some((robots[1].0.as_str(), robots[1].1.as_str())),
    ));

    use Act::*;
    // (caller, project) -> [pull, push, delete, untag, catalog, mount-from, admin api]
    let expected = |caller: &str, project: &str| -> [bool; 7] {
        let public = project == "pub";
        match caller {
            "admin" | "padmin" => [true; 7],
            "maintainer" => [true, true, true, true, true, true, false],
            "developer" => [true, true, false, false, true, true, false],
            "guest" => [true, false, false, false, true, true, false],
            "outsider" => [public, false, false, false, public, public, false],
            "anonymous" => [public, false, false, false, false, false, false],
            // Robots are bound to priv; public content is readable by them too. The mount
            // target `open` is not theirs, so mounts are refused (no push there).
            "robot-reader" => [true, false, false, false, true, false, false],
            "robot-writer" => [true, !public, false, false, true, false, false],
            _ => unreachable!(),
        }
    };
    let acts = [Pull, Push, Delete, Untag, Catalog, Mount, AdminApi];
    let mut failures = Vec::new();
    for (caller, creds) in &callers {
        for project in ["pub", "priv"] {
            let want = expected(caller, project);
            for (i, act) in acts.iter().enumerate() {
                if *act == Mount && creds.is_none() {
                    continue; // anonymous cannot even open an upload session
                }
                let tag = format!("t-{caller}-{i}").replace('$', "").replace('+', "");
                let got = m.attempt(*creds, project, *act, &tag).await;
                if got != want[i] {
                    failures.push(format!(
                        "{caller} {act:?} on {project}: expected {}, got {got}",
                        want[i]
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "permission matrix mismatches:\n{}",
        failures.join("\n")
    );
}

/// The Docker token flow: a challenge names the scope, the token service grants the allowed
/// subset, and the token works exactly for that.
#[tokio::test]
async fn bearer_tokens_carry_exactly_the_granted_scope() {
    let s = Server::start_with_env(&[
        ("BERTH_AUTH_MODE", "token"),
        ("BERTH_AUTH_BOOTSTRAP_ADMIN_PASSWORD", ADMIN.1),
    ])
    .await;
    let admin = |m: Method, p: &str| s.req(m, p).basic_auth(ADMIN.0, Some(ADMIN.1));
    admin(Method::POST, "/api/v1/projects")
        .json(&json!({"name": "team"}))
        .send()
        .await
        .unwrap();
    admin(Method::POST, "/api/v1/users")
        .json(&json!({"name": "dev", "password": "dev-password"}))
        .send()
        .await
        .unwrap();
    admin(Method::PUT, "/api/v1/projects/team/members/dev")
        .json(&json!({"role": "developer"}))
        .send()
        .await
        .unwrap();

    let r = s
        .req(Method::POST, "/v2/team/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = header(&r, "www-authenticate");
    assert!(
        challenge.starts_with("Bearer realm=\"http://127.0.0.1:"),
        "{challenge}"
    );
    assert!(
        challenge.contains(
            "/auth/token\",service=\"berth-registry\",scope=\"repository:team/app:pull,push\""
        ),
        "{challenge}"
    );

    let token_url = "/auth/token?service=berth-registry&scope=repository:team/app:pull,push,delete&scope=repository:other/x:pull";
    let r = s
        .req(Method::GET, token_url)
        .basic_auth("dev", Some("dev-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    let payload = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}])
    );
    assert_eq!(claims["sub"], "dev");

    let bearer = |m: Method, p: &str| s.req(m, p).bearer_auth(&token);
    assert_eq!(
        bearer(Method::POST, "/v2/team/app/blobs/uploads/")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::ACCEPTED
    );
    let r = bearer(
        Method::DELETE,
        &format!("/v2/team/app/manifests/{}", sha256(b"x")),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "scope missing: denied, with a challenge"
    );
    let challenge = header(&r, "www-authenticate");
    assert!(
        challenge.contains("scope=\"repository:team/app:delete\",error=\"insufficient_scope\""),
        "{challenge}"
    );
    let r = s
        .req(Method::GET, "/v2/")
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "UNAUTHORIZED").await;

    // Wrong password: 401 from the token service, and an audit record.
    let r = s
        .req(Method::GET, token_url)
        .basic_auth("dev", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // POST form (OAuth2 password grant), as containerd uses.
    let r = s
        .req(Method::POST, "/auth/token")
        .form(&[
            ("grant_type", "password"),
            ("username", "dev"),
            ("password", "dev-password"),
            ("service", "berth-registry"),
            ("scope", "repository:team/app:pull"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.json::<Value>().await.unwrap()["access_token"].is_string());
    let r = s
        .req(Method::POST, "/auth/token")
        .form(&[("grant_type", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn failed_logins_are_rate_limited_and_audited() {
    let s = Server::start_with_env(&[
        ("BERTH_AUTH_MODE", "token"),
        ("BERTH_AUTH_BOOTSTRAP_ADMIN_PASSWORD", ADMIN.1),
    ])
    .await;
    for _ in 0..10 {
        let r = s.login("admin", "guess").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = s.login("admin", "guess").await;
    assert_error(r, 429, "TOOMANYREQUESTS").await;
    let r = s.login("admin", ADMIN.1).await;
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits out the window"
    );

    // The audit log has the failures, with who and from where, and no password. It is
    // written in batches, so the last failures may take a moment to land.
    let (mut text, mut failed) = (String::new(), Vec::<Value>::new());
    for _ in 0..50 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["audit", "--action", "login", "--json", "--data"])
            .arg(&s.data)
            .output()
            .unwrap();
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        failed = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|e: &Value| e["outcome"] == "failed")
            .collect();
        if failed.len() >= 10 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(failed.len() >= 10, "{text}");
    assert_eq!(failed[0]["actor"], "admin");
    assert_eq!(failed[0]["client"], "127.0.0.1");
    assert!(!text.contains("guess"), "no secret in the audit log");
}

#[tokio::test]
async fn pushes_pulls_deletes_and_changes_are_audited() {
    let s = Server::start_with_env(&[
        ("BERTH_AUTH_MODE", "token"),
        ("BERTH_AUTH_BOOTSTRAP_ADMIN_PASSWORD", ADMIN.1),
    ])
    .await;
    let m = Matrix { s, robots: vec![] };
    m.admin_json(Method::POST, "/api/v1/projects", json!({"name": "aud"}))
        .await;
    let d = m.push_as_admin("aud/app", "v1").await;
    m.req(Some(ADMIN), Method::GET, "/v2/aud/app/manifests/v1")
        .await
        .send()
        .await
        .unwrap();
    m.req(
        Some(ADMIN),
        Method::DELETE,
        &format!("/v2/aud/app/manifests/{d}"),
    )
    .await
    .send()
    .await
    .unwrap();
    let mut actions = Vec::new();
    for _ in 0..50 {
        let events = m
            .admin_json(Method::GET, "/api/v1/audit?limit=50", json!(null))
            .await;
        actions = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap().to_owned())
            .collect();
        if actions.contains(&"delete".to_owned()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for a in ["project.add", "push", "pull", "delete"] {
        assert!(
            actions.contains(&a.to_owned()),
            "{a} missing from {actions:?}"
        );
    }
    let r = m
        .req(Some(("nobody", "x")), Method::GET, "/api/v1/audit")
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// Tokens from an external issuer are accepted when its public key is configured, for what
/// they grant; tokens of an unknown key are not. The audit stream gets JSON lines.
#[tokio::test]
async fn external_issuer_tokens_and_audit_stream() {
    use berth_auth::{AccessEntry, TokenIssuer};
    let dir = tempfile::tempdir().unwrap();
    let external = TokenIssuer::open(
        &dir.path().join("corp.key"),
        "corp-sso",
        "berth-registry",
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let pem = dir.path().join("corp.pub");
    std::fs::write(&pem, external.public_key_pem()).unwrap();
    let stream = dir.path().join("audit.jsonl");
    let s = Server::start_with_env(&[
        ("BERTH_AUTH_MODE", "token"),
        ("BERTH_AUTH_EXTERNAL_ISSUER", "corp-sso"),
        ("BERTH_AUTH_EXTERNAL_PUBLIC_KEY_PATH", pem.to_str().unwrap()),
        ("BERTH_AUDIT_STREAM", stream.to_str().unwrap()),
    ])
    .await;
    let grant = |actions: &[&str]| {
        vec![AccessEntry {
            kind: "repository".into(),
            name: "sso/app".into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }]
    };
    let (push, _) = external
        .issue("sso-user", grant(&["pull", "push"]), None)
        .unwrap();
    let r = s
        .req(Method::POST, "/v2/sso/app/blobs/uploads/")
        .bearer_auth(&push)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let (pull, _) = external.issue("sso-user", grant(&["pull"]), None).unwrap();
    let r = s
        .req(Method::POST, "/v2/sso/app/blobs/uploads/")
        .bearer_auth(&pull)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let stranger = TokenIssuer::open(
        &dir.path().join("other.key"),
        "corp-sso",
        "berth-registry",
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let (forged, _) = stranger
        .issue("sso-user", grant(&["pull", "push"]), None)
        .unwrap();
    let r = s
        .req(Method::POST, "/v2/sso/app/blobs/uploads/")
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "UNAUTHORIZED").await;

    // A failed login lands in the JSON-lines stream.
    s.login("mallory", "guess").await;
    let mut line = None;
    for _ in 0..50 {
        let text = std::fs::read_to_string(&stream).unwrap_or_default();
        line = text
            .lines()
            .find(|l| l.contains("mallory"))
            .map(str::to_owned);
        if line.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let event: Value =
        serde_json::from_str(&line.expect("audit line for the failed login")).unwrap();
    assert_eq!(event["action"], "login");
    assert_eq!(event["outcome"], "failed");
}

/// In token mode, users of an htpasswd file log in too, as ordinary users whose rights come
/// from project membership.
#[tokio::test]
async fn htpasswd_users_work_in_token_mode() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    let line = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["htpasswd", "-Bbn", "carol", "carol-password"])
        .output()
        .unwrap()
        .stdout;
    std::fs::write(&file, line).unwrap();
    let s = Server::start_with_env(&[
        ("BERTH_AUTH_MODE", "token"),
        ("BERTH_AUTH_HTPASSWD_PATH", file.to_str().unwrap()),
        ("BERTH_AUTH_BOOTSTRAP_ADMIN_PASSWORD", ADMIN.1),
    ])
    .await;
    let admin = |m: Method, p: &str| s.req(m, p).basic_auth(ADMIN.0, Some(ADMIN.1));
    admin(Method::POST, "/api/v1/projects")
        .json(&json!({"name": "ht"}))
        .send()
        .await
        .unwrap();
    let carol = |m: Method, p: &str| s.req(m, p).basic_auth("carol", Some("carol-password"));
    assert_eq!(
        carol(Method::GET, "/v2/").send().await.unwrap().status(),
        StatusCode::OK
    );
    let r = carol(Method::POST, "/v2/ht/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "not a member yet");
    admin(Method::PUT, "/api/v1/projects/ht/members/carol")
        .json(&json!({"role": "developer"}))
        .send()
        .await
        .unwrap();
    let r = carol(Method::POST, "/v2/ht/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = s.login("carol", "wrong").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = carol(Method::GET, "/api/v1/users").send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "htpasswd users are never admins"
    );
}
