//! What an outside attacker tries against access control in token mode, tried from outside:
//! external tokens posing as local accounts, tokens used beyond their scope or their subject's
//! rights, parallel password guessing, locking other users out, walking the catalog for
//! private names, flooding the audit log.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use berth_auth::{AccessEntry, TokenIssuer};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

const ADMIN: (&str, &str) = ("admin", "admin-pass-1");

async fn token_server(extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("BERTH_AUTH_MODE", "token"),
        ("BERTH_AUTH_BOOTSTRAP_ADMIN_PASSWORD", ADMIN.1),
    ];
    env.extend_from_slice(extra);
    Server::start_with_env(&env).await
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address reaches the server).
fn client_from(ip: [u8; 4]) -> Client {
    Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::from(ip)))
        .build()
        .unwrap()
}

async fn admin(s: &Server, method: Method, path: &str, body: Value) -> reqwest::Response {
    s.req(method, path)
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn token_for(s: &Server, who: (&str, &str), scopes: &[&str]) -> String {
    let query: String = scopes.iter().map(|sc| format!("&scope={sc}")).collect();
    let r = s
        .req(
            Method::GET,
            &format!("/auth/token?service=berth-registry{query}"),
        )
        .basic_auth(who.0, Some(who.1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Creates the user `dev` (password `dev-password`), a member of `project` with `role` when
/// given.
async fn add_dev(s: &Server, membership: Option<(&str, &str)>) {
    let r = admin(
        s,
        Method::POST,
        "/api/v1/users",
        json!({"name": "dev", "password": "dev-password"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    if let Some((project, role)) = membership {
        let path = format!("/api/v1/projects/{project}/members/dev");
        let r = admin(s, Method::PUT, &path, json!({ "role": role })).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
}

/// Pushes `data` as a blob of `repo` with the admin's credentials; returns its digest.
async fn admin_blob(s: &Server, repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let r = s
        .req(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
        )
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    digest
}

fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

struct External {
    issuer: TokenIssuer,
    key_pem: String,
    _dir: tempfile::TempDir,
    pub_path: std::path::PathBuf,
}

fn external_issuer() -> External {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("corp.key");
    let issuer =
        TokenIssuer::open(&key, "corp-sso", "berth-registry", Duration::from_secs(60)).unwrap();
    let pub_path = dir.path().join("corp.pub");
    std::fs::write(&pub_path, issuer.public_key_pem()).unwrap();
    External {
        key_pem: std::fs::read_to_string(&key).unwrap(),
        issuer,
        _dir: dir,
        pub_path,
    }
}

fn grant(kind: &str, name: &str, actions: &[&str]) -> AccessEntry {
    AccessEntry {
        kind: kind.into(),
        name: name.into(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
    }
}

/// Finding 1: an external token naming `admin` is not the local admin, and a token is worth
/// exactly its claim (no mount from a private project it names nothing of).
#[tokio::test]
async fn external_tokens_are_never_local_accounts() {
    let ext = external_issuer();
    let s = token_server(&[
        ("BERTH_AUTH_EXTERNAL_ISSUER", "corp-sso"),
        (
            "BERTH_AUTH_EXTERNAL_PUBLIC_KEY_PATH",
            ext.pub_path.to_str().unwrap(),
        ),
    ])
    .await;
    for (name, public) in [("priv", false), ("open", true)] {
        let r = admin(
            &s,
            Method::POST,
            "/api/v1/projects",
            json!({"name": name, "public": public}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let secret_layer = admin_blob(&s, "priv/app", b"private layer bytes").await;
    let bearer = |t: &str, m: Method, p: &str| s.req(m, p).bearer_auth(t.to_owned());

    let (as_admin, _) = ext.issuer.issue("admin", vec![], None).unwrap();
    let r = bearer(&as_admin, Method::GET, "/api/v1/users")
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "DENIED").await;
    let r = bearer(&as_admin, Method::POST, "/api/v1/users")
        .json(&json!({"name": "mallory", "password": "mallory-pass", "admin": true}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "DENIED").await;
    // Not even when the external token names the admin scope.
    let (admin_scoped, _) = ext
        .issuer
        .issue("admin", vec![grant("registry", "admin", &["*"])], None)
        .unwrap();
    let r = bearer(&admin_scoped, Method::GET, "/api/v1/users")
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "DENIED").await;
    let r = bearer(&as_admin, Method::GET, "/v2/priv/app/tags/list")
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "DENIED").await;

    // A mount needs pull on the source in the token itself: none here, so a plain session.
    let (push_open, _) = ext
        .issuer
        .issue(
            "admin",
            vec![grant("repository", "open/dst", &["pull", "push"])],
            None,
        )
        .unwrap();
    let r = bearer(
        &push_open,
        Method::POST,
        &format!("/v2/open/dst/blobs/uploads/?mount={secret_layer}&from=priv/app"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "mount refused, upload session instead"
    );
    let r = s
        .req(Method::GET, "/api/v1/users")
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap();
    let users: Value = r.json().await.unwrap();
    assert_eq!(users["users"].as_array().unwrap().len(), 1, "{users}");
}

/// A token from the future (`nbf` tomorrow) is refused today.
#[tokio::test]
async fn external_tokens_not_yet_valid_are_refused() {
    let ext = external_issuer();
    let s = token_server(&[
        ("BERTH_AUTH_EXTERNAL_ISSUER", "corp-sso"),
        (
            "BERTH_AUTH_EXTERNAL_PUBLIC_KEY_PATH",
            ext.pub_path.to_str().unwrap(),
        ),
    ])
    .await;
    admin(&s, Method::POST, "/api/v1/projects", json!({"name": "sso"})).await;
    let (_, mut claims) = ext
        .issuer
        .issue(
            "ci",
            vec![grant("repository", "sso/app", &["pull", "push"])],
            None,
        )
        .unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(ext.key_pem.as_bytes()).unwrap();
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    let now = claims.iat;
    claims.nbf = now + 86_400;
    claims.exp = now + 2 * 86_400;
    let tomorrow = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let r = s
        .req(Method::POST, "/v2/sso/app/blobs/uploads/")
        .bearer_auth(&tomorrow)
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "UNAUTHORIZED").await;
    claims.nbf = now;
    let today = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let r = s
        .req(Method::POST, "/v2/sso/app/blobs/uploads/")
        .bearer_auth(&today)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

/// Finding 2: a token scoped to a repository carries no admin-API powers; the admin API takes
/// Basic credentials or a token for `registry:admin:*`, and then the caller's own rights.
#[tokio::test]
async fn the_admin_api_needs_credentials_meant_for_it() {
    let s = token_server(&[]).await;
    admin(
        &s,
        Method::POST,
        "/api/v1/projects",
        json!({"name": "pub", "public": true}),
    )
    .await;
    add_dev(&s, None).await;

    let pull_only = token_for(&s, ADMIN, &["repository:pub/app:pull"]).await;
    let r = s
        .req(Method::POST, "/api/v1/users")
        .bearer_auth(&pull_only)
        .json(&json!({"name": "eve", "password": "eve-password", "admin": true}))
        .send()
        .await
        .unwrap();
    let challenge = header(&r, "www-authenticate");
    assert_error(r, 403, "DENIED").await;
    assert!(
        challenge.contains("scope=\"registry:admin:*\",error=\"insufficient_scope\""),
        "{challenge}"
    );
    let r = s
        .req(Method::PUT, "/api/v1/users/dev/password")
        .bearer_auth(&pull_only)
        .json(&json!({"password": "taken-over-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let admin_token = token_for(&s, ADMIN, &["registry:admin:*"]).await;
    assert_eq!(
        claims_of(&admin_token)["access"],
        json!([{"type": "registry", "name": "admin", "actions": ["*"]}])
    );
    let r = s
        .req(Method::GET, "/api/v1/users")
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The scope opens the admin API; what the caller may do there stays their own right.
    let dev_token = token_for(&s, ("dev", "dev-password"), &["registry:admin:*"]).await;
    let r = s
        .req(Method::GET, "/api/v1/users")
        .bearer_auth(&dev_token)
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "DENIED").await;
    // Without any credentials: a challenge naming the admin scope.
    let r = s.get("/api/v1/users").await;
    assert!(header(&r, "www-authenticate").contains("scope=\"registry:admin:*\""));
    assert_error(r, 401, "UNAUTHORIZED").await;
}

/// Finding 9: a role change or a deleted account takes a token's rights at once; a robot's
/// token never outlives the robot.
#[tokio::test]
async fn tokens_lose_what_their_subject_loses() {
    let s = token_server(&[("BERTH_AUTH_TOKEN_TTL_SECONDS", "259200")]).await;
    admin(
        &s,
        Method::POST,
        "/api/v1/projects",
        json!({"name": "team"}),
    )
    .await;
    add_dev(&s, Some(("team", "developer"))).await;
    let token = token_for(
        &s,
        ("dev", "dev-password"),
        &["repository:team/app:pull,push"],
    )
    .await;
    let push = || {
        s.req(Method::POST, "/v2/team/app/blobs/uploads/")
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(push().await.unwrap().status(), StatusCode::ACCEPTED);
    admin(
        &s,
        Method::PUT,
        "/api/v1/projects/team/members/dev",
        json!({"role": "guest"}),
    )
    .await;
    assert_eq!(
        push().await.unwrap().status(),
        StatusCode::FORBIDDEN,
        "the demotion holds from the next request"
    );
    admin(&s, Method::DELETE, "/api/v1/users/dev", json!({})).await;
    assert_error(push().await.unwrap(), 401, "UNAUTHORIZED").await;

    let r = admin(
        &s,
        Method::POST,
        "/api/v1/robots",
        json!({"project": "team", "name": "ci", "actions": "pull,push", "expires_in_days": 1}),
    )
    .await;
    let robot: Value = r.json().await.unwrap();
    let robot_token = token_for(
        &s,
        (
            robot["name"].as_str().unwrap(),
            robot["secret"].as_str().unwrap(),
        ),
        &["repository:team/app:pull,push", "registry:admin:*"],
    )
    .await;
    let claims = claims_of(&robot_token);
    let robots: Value = admin(&s, Method::GET, "/api/v1/robots", json!({}))
        .await
        .json()
        .await
        .unwrap();
    let expires_at = robots["robots"][0]["expires_at"].as_u64().unwrap();
    assert!(
        claims["exp"].as_u64().unwrap() <= expires_at,
        "{claims} vs {expires_at}"
    );
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]),
        "robots get no admin scope"
    );
}

/// Finding 3: 200 parallel guesses for one user from one address: at most the limit of them
/// are checked; the rest are refused before any password check.
#[tokio::test]
async fn parallel_guesses_cannot_pass_the_limit() {
    let s = token_server(&[]).await;
    let checked = parallel_guesses(&s, "admin").await;
    assert!(checked <= 10, "{checked} of 200 guesses were checked");
}

/// The same in htpasswd mode (registry:2's), where the file holds the user.
#[tokio::test]
async fn parallel_guesses_cannot_pass_the_limit_with_htpasswd() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    let line = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["htpasswd", "-Bbn", "user", "the-password"])
        .output()
        .unwrap()
        .stdout;
    std::fs::write(&file, line).unwrap();
    let s =
        Server::start_with_env(&[("REGISTRY_AUTH_HTPASSWD_PATH", file.to_str().unwrap())]).await;
    let checked = parallel_guesses(&s, "user").await;
    assert!(checked <= 10, "{checked} of 200 guesses were checked");
}

/// Sends 200 distinct wrong passwords at once; returns how many were checked (401, not 429).
async fn parallel_guesses(s: &Server, user: &str) -> usize {
    let guesses = (0..200).map(|i| {
        let req = s
            .req(Method::GET, "/v2/")
            .basic_auth(user, Some(format!("guess-{i}")));
        async move { req.send().await.unwrap().status() }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(checked + limited, 200, "{statuses:?}");
    checked
}

/// Finding 4: a stranger's failures lock out neither the real user elsewhere nor anyone else;
/// an address guessing many users is stopped.
#[tokio::test]
async fn a_stranger_cannot_lock_out_a_user() {
    let s = token_server(&[]).await;
    let stranger = client_from([127, 0, 0, 2]);
    let login = |c: &Client, user: &str, password: &str| {
        c.get(s.url("/v2/")).basic_auth(user, Some(password)).send()
    };
    for i in 0..12 {
        let r = login(&stranger, "admin", &format!("guess-{i}"))
            .await
            .unwrap();
        assert!(
            matches!(
                r.status(),
                StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
            ),
            "{}",
            r.status()
        );
    }
    let r = login(&stranger, "admin", ADMIN.1).await.unwrap();
    assert_error(r, 429, "TOOMANYREQUESTS").await;
    let owner = client_from([127, 0, 0, 1]);
    let r = login(&owner, "admin", ADMIN.1).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the real admin still logs in from elsewhere"
    );

    let sprayer = client_from([127, 0, 0, 3]);
    for i in 0..30 {
        let r = login(&sprayer, &format!("user{i}"), "password1")
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = login(&sprayer, "admin", ADMIN.1).await.unwrap();
    assert_error(r, 429, "TOOMANYREQUESTS").await;
}

/// Finding 5: walking the catalog page by page names exactly the repositories the caller may
/// see, in pages and `Link` headers alike.
#[tokio::test]
async fn the_catalog_walk_reveals_no_private_names() {
    let s = token_server(&[]).await;
    for (name, public) in [
        ("a-secret", false),
        ("mine", false),
        ("mine-secret", false),
        ("pub", true),
        ("z-secret", false),
    ] {
        admin(
            &s,
            Method::POST,
            "/api/v1/projects",
            json!({"name": name, "public": public}),
        )
        .await;
    }
    add_dev(&s, Some(("mine", "guest"))).await;
    // A repository named like its project, and a hidden project whose names sort between
    // the visible project's own name and its repositories.
    let mut all = vec!["mine".to_owned()];
    admin_blob(&s, "mine", b"x").await;
    for project in ["a-secret", "mine", "mine-secret", "pub", "z-secret"] {
        for i in 0..3 {
            let repo = format!("{project}/r{i}");
            admin_blob(&s, &repo, b"x").await;
            all.push(repo);
        }
    }
    all.sort();
    let expected: Vec<String> = all
        .iter()
        .filter(|r| *r == "mine" || r.starts_with("mine/") || r.starts_with("pub/"))
        .cloned()
        .collect();
    let robot: Value = admin(
        &s,
        Method::POST,
        "/api/v1/robots",
        json!({"project": "mine", "name": "lister", "actions": "pull"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let robot = (
        robot["name"].as_str().unwrap().to_owned(),
        robot["secret"].as_str().unwrap().to_owned(),
    );
    for credential in ["basic", "token", "robot"] {
        let token = token_for(&s, ("dev", "dev-password"), &["registry:catalog:*"]).await;
        let mut seen = Vec::new();
        let mut path = "/v2/_catalog?n=1".to_owned();
        loop {
            let mut req = s.req(Method::GET, &path);
            req = match credential {
                "basic" => req.basic_auth("dev", Some("dev-password")),
                "robot" => req.basic_auth(&robot.0, Some(&robot.1)),
                _ => req.bearer_auth(&token),
            };
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let link = header(&r, "link");
            let body: Value = r.json().await.unwrap();
            let page: Vec<String> = serde_json::from_value(body["repositories"].clone()).unwrap();
            assert!(page.len() <= 1);
            seen.extend(page);
            assert!(!link.contains("secret"), "{link}");
            if link.is_empty() {
                break;
            }
            path = link
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap()
                .to_owned();
            assert!(seen.len() <= all.len(), "the walk does not end");
        }
        assert_eq!(seen, expected, "with {credential}");
    }
}

/// Finding 6: a flood of refused logins adds a handful of audit rows, not one per request, and
/// the events that matter stay in the default view.
#[tokio::test]
async fn a_login_flood_does_not_fill_the_audit_log() {
    let s = token_server(&[]).await;
    admin(
        &s,
        Method::POST,
        "/api/v1/projects",
        json!({"name": "team"}),
    )
    .await;
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let config_digest = admin_blob(&s, "team/app", config).await;
    let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()}});
    let r = s
        .req(Method::PUT, "/v2/team/app/manifests/v1")
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let flood = client_from([127, 0, 0, 9]);
    let url = s.url("/auth/token?service=berth-registry&scope=repository:team/app:pull");
    let mut statuses = Vec::new();
    for round in 0..50 {
        let batch = (0..60).map(|i| {
            flood
                .get(&url)
                .basic_auth(format!("user{}", i % 7), Some(format!("guess-{round}-{i}")))
                .send()
        });
        for r in futures_util::future::join_all(batch).await {
            statuses.push(r.unwrap().status());
        }
    }
    assert_eq!(statuses.len(), 3000);
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events: Value = s
        .req(Method::GET, "/api/v1/audit?limit=10000")
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = events["events"].as_array().unwrap();
    let from_flood = events.iter().filter(|e| e["client"] == "127.0.0.9").count();
    assert!(
        from_flood <= 40,
        "{from_flood} audit rows for 3,000 refused requests"
    );
    let view: Value = s
        .req(Method::GET, "/api/v1/audit")
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        view["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "push"),
        "the push is still in the default view"
    );
}

/// Audit retention: a row cap holds (pruned at startup and hourly).
#[tokio::test]
async fn the_audit_log_keeps_at_most_its_cap() {
    let mut s = token_server(&[("BERTH_AUDIT_MAX_EVENTS", "5")]).await;
    for i in 0..12 {
        admin(
            &s,
            Method::POST,
            "/api/v1/projects",
            json!({"name": format!("p{i}")}),
        )
        .await;
    }
    let data = s.data.clone();
    let count = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["audit", "--json", "--limit", "1000", "--data"])
            .arg(&data)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    for _ in 0..50 {
        if count() >= 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(count() >= 12);
    s.terminate();
    s.start_again();
    let mut left = count();
    for _ in 0..50 {
        if left <= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = count();
    }
    assert_eq!(left, 5);
}

/// Finding 7: `berth audit` prints a forged user name escaped, on its own line.
#[tokio::test]
async fn the_audit_text_output_escapes_control_characters() {
    let s = token_server(&[]).await;
    let forged = "x\n1700000000000\tadmin\tuser.add\tmallory\tok\t10.0.0.1\t\u{1b}[2K";
    let r = s.login(forged, "guess").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let mut text = String::new();
    for _ in 0..50 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["audit", "--data"])
            .arg(&s.data)
            .output()
            .unwrap();
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("login") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(text.lines().count(), 1, "{text:?}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(text.contains("x\\n1700000000000\\tadmin"), "{text:?}");
}
