//! The web UI from outside, in token mode: signing in (wrong passwords, robots and forged
//! sign-in forms refused), what a session may see and delete, forged state changes (no CSRF
//! token, another origin, a guest's own token, Basic credentials instead of a session)
//! refused with nothing changed, the language from `Accept-Language`, and signing out.
//! The browser-driven tests are in tests/ui.

use reqwest::header::{HeaderMap, ACCEPT_LANGUAGE, COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::{Method, Response, StatusCode};
use serde_json::json;

use crate::common::*;
use crate::lifecycle::{as_admin, as_user, push_as, token_server, ADMIN};

/// The value `name` is set to by the response's `Set-Cookie` headers, with its attributes.
fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// The first `value` of a hidden input named `name` in a page.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).map(|i| i + marker.len()).unwrap_or(0);
    html[start..].split('"').next().unwrap_or("").to_owned()
}

/// A signed-in browser: its session cookie and the CSRF token its pages carry.
struct Browser {
    cookie: String,
    csrf: String,
}

async fn sign_in_attempt(s: &Server, who: (&str, &str)) -> Response {
    let form = s.get("/ui/login").await;
    assert_eq!(form.status(), StatusCode::OK);
    let login_cookie = set_cookie(form.headers(), "berth_login").expect("login cookie");
    let value = login_cookie.split(';').next().unwrap().to_owned();
    let token = hidden(&form.text().await.unwrap(), "csrf");
    s.req(Method::POST, "/ui/login")
        .header(COOKIE, value)
        .form(&[
            ("csrf", token.as_str()),
            ("user", who.0),
            ("password", who.1),
            ("next", "/ui/"),
        ])
        .send()
        .await
        .unwrap()
}

async fn sign_in(s: &Server, who: (&str, &str)) -> Browser {
    let r = sign_in_attempt(s, who).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{who:?} signs in");
    let session = set_cookie(r.headers(), "berth_session").expect("session cookie");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/ui"] {
        assert!(session.contains(attribute), "{session}");
    }
    let cookie = session.split(';').next().unwrap().to_owned();
    let page = s
        .req(Method::GET, "/ui/")
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    let csrf = hidden(&page.text().await.unwrap(), "csrf");
    assert_eq!(csrf.len(), 64, "the page carries the session's CSRF token");
    Browser { cookie, csrf }
}

impl Browser {
    async fn get(&self, s: &Server, path: &str) -> (StatusCode, String) {
        let r = s
            .req(Method::GET, path)
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn post(&self, s: &Server, path: &str, form: &[(&str, &str)]) -> Response {
        s.req(Method::POST, path)
            .header(COOKIE, &self.cookie)
            .form(form)
            .send()
            .await
            .unwrap()
    }
}

async fn tag_exists(s: &Server, repo: &str, tag: &str) -> bool {
    let r = as_user(
        s,
        ADMIN,
        Method::HEAD,
        &format!("/v2/{repo}/manifests/{tag}"),
    )
    .send()
    .await
    .unwrap();
    r.status() == StatusCode::OK
}

#[tokio::test]
async fn sessions_pages_and_forged_changes() {
    let data = tempfile::tempdir().unwrap();
    let s = token_server(data.path()).await;
    as_admin(
        &s,
        &[
            (Method::POST, "/api/v1/projects", json!({"name": "team"})),
            (
                Method::POST,
                "/api/v1/projects",
                json!({"name": "open", "public": true}),
            ),
            (
                Method::POST,
                "/api/v1/users",
                json!({"name": "guest", "password": "guest-pass-1"}),
            ),
            (
                Method::PUT,
                "/api/v1/projects/team/members/guest",
                json!({"role": "guest"}),
            ),
        ],
    )
    .await;
    let (digest, layer) = push_as(&s, ADMIN, "team/app", "v1").await;
    push_as(&s, ADMIN, "team/app", "v2").await;
    push_as(&s, ADMIN, "open/tool", "latest").await;

    // A browser asking for / is sent to the UI.
    let r = s
        .req(Method::GET, "/")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(header(&r, "location"), "/ui/");

    // Sign-in refusals: a wrong password, a robot, a form without its token.
    let r = sign_in_attempt(&s, (ADMIN.0, "wrong")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookie(r.headers(), "berth_session").is_none());
    let robot = as_user(&s, ADMIN, Method::POST, "/api/v1/robots")
        .json(&json!({"project": "team", "name": "ci", "actions": "pull"}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let (robot_name, robot_secret) = (
        robot["name"].as_str().unwrap().to_owned(),
        robot["secret"].as_str().unwrap().to_owned(),
    );
    let r = sign_in_attempt(&s, (&robot_name, &robot_secret)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "robots cannot sign in");
    assert!(set_cookie(r.headers(), "berth_session").is_none());
    let r = s
        .req(Method::POST, "/ui/login")
        .form(&[("csrf", "x"), ("user", ADMIN.0), ("password", ADMIN.1)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "login CSRF");
    assert!(set_cookie(r.headers(), "berth_session").is_none());

    // Anonymous: public projects only; a private repository's page asks to sign in.
    let html = s.get("/ui/").await.text().await.unwrap();
    assert!(
        html.contains("open/tool") && !html.contains("team/app"),
        "{html}"
    );
    let r = s.get("/ui/repo/team/app").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(header(&r, "location").starts_with("/ui/login?next="));

    // The admin sees everything, with delete links, the manifest and its layers.
    let admin = sign_in(&s, ADMIN).await;
    let (status, html) = admin.get(&s, "/ui/?q=team").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("/ui/repo/team/app") && !html.contains("open/tool"),
        "search"
    );
    let (status, html) = admin.get(&s, "/ui/repo/team/app").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("data-tag=\"v1\"") && html.contains("data-tag=\"v2\""));
    assert!(
        html.contains("-/delete?target=tag:v1"),
        "the admin may delete"
    );
    assert!(html.contains(&format!(
        "docker pull {}/team/app:v1",
        s.base.trim_start_matches("http://")
    )));
    let (status, html) = admin
        .get(&s, &format!("/ui/repo/team/app/-/manifest/{digest}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(&layer[..19]), "the layer is listed");

    // The guest: the page without delete links, and a delete with its own valid token refused.
    let guest = sign_in(&s, ("guest", "guest-pass-1")).await;
    let (status, html) = guest.get(&s, "/ui/repo/team/app").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("data-tag=\"v1\"") && !html.contains("-/delete"),
        "no delete for guests"
    );
    let r = guest
        .post(
            &s,
            "/ui/repo/team/app/-/delete",
            &[("csrf", &guest.csrf), ("target", "tag:v1")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Forged by others: no token, another session's token, another origin, Basic credentials.
    let r = admin
        .post(&s, "/ui/repo/team/app/-/delete", &[("target", "tag:v1")])
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no CSRF token");
    let r = admin
        .post(
            &s,
            "/ui/repo/team/app/-/delete",
            &[("csrf", &guest.csrf), ("target", "tag:v1")],
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "the guest's token in the admin's session"
    );
    let r = s
        .req(Method::POST, "/ui/repo/team/app/-/delete")
        .header(COOKIE, &admin.cookie)
        .header(ORIGIN, "http://evil.example")
        .form(&[("csrf", admin.csrf.as_str()), ("target", "tag:v1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "another origin");
    let r = as_user(&s, ADMIN, Method::POST, "/ui/repo/team/app/-/delete")
        .form(&[("csrf", admin.csrf.as_str()), ("target", "tag:v1")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "Basic is not a UI credential"
    );
    assert!(
        tag_exists(&s, "team/app", "v1").await,
        "nothing was deleted"
    );

    // Bad input: a target that is not a tag, digest or repository changes nothing.
    let r = admin
        .post(
            &s,
            "/ui/repo/team/app/-/delete",
            &[("csrf", &admin.csrf), ("target", "v1")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(tag_exists(&s, "team/app", "v1").await);

    // The admin's confirmed delete: the tag is gone from the registry API, v2 stays.
    let r = admin
        .post(
            &s,
            "/ui/repo/team/app/-/delete",
            &[("csrf", &admin.csrf), ("target", "tag:v1")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        !tag_exists(&s, "team/app", "v1").await,
        "deleted through the UI"
    );
    assert!(tag_exists(&s, "team/app", "v2").await);

    // Simplified Chinese from Accept-Language, and no English catalog strings on the page.
    let r = s
        .req(Method::GET, "/ui/repo/team/app")
        .header(COOKIE, &admin.cookie)
        .header(ACCEPT_LANGUAGE, "zh-CN,zh;q=0.9,en;q=0.5")
        .send()
        .await
        .unwrap();
    let html = r.text().await.unwrap();
    assert!(html.contains("<html lang=\"zh-CN\">") && html.contains("拉取命令"));
    for english in ["Pull command", "Last pulled", "Sign out", "Repositories"] {
        assert!(!html.contains(english), "zh-CN page shows {english:?}");
    }

    // Signing out ends the session on the server: the old cookie opens nothing.
    let r = admin.post(&s, "/ui/logout", &[("csrf", &admin.csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = s
        .req(Method::GET, "/ui/repo/team/app")
        .header(COOKIE, &admin.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "signed out: asked to sign in again"
    );
    assert!(r.headers().get(LOCATION).is_some());
}
