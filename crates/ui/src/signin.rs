//! Signing in and out. The sign-in form is protected against login CSRF by a double-submit
//! token (a cookie only this path receives, echoed by the form); the session cookie is
//! HttpOnly, SameSite=Lax, limited to `/ui`, and Secure under TLS.

use askama::Template;
use axum::extract::Query;
use axum::response::{IntoResponse, Redirect, Response};
use berth_api::session::{self, SignInRefused, SESSION_COOKIE, SESSION_SECONDS};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;

use crate::pages::{render, Chrome};
use crate::{Caller, Form};

const LOGIN_COOKIE: &str = "berth_login";

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    c: Chrome,
    token: String,
    next: String,
    user: String,
    error: String,
}

#[derive(Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// Only pages of the UI itself are followed after signing in (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.contains("//") && !n.contains('\\') => n.to_owned(),
        _ => "/ui/".into(),
    }
}

fn cookie(
    caller: &Caller,
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
    same_site: &str,
) -> HeaderValue {
    let secure = if caller.secure { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite={same_site}{secure}"
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn login_page(
    caller: &Caller,
    status: StatusCode,
    next: String,
    user: String,
    error: String,
) -> Response {
    let token = session::random_token();
    let page = LoginPage {
        c: Chrome::new(caller, caller.t.get("login.title"), "login"),
        token: token.clone(),
        next,
        user,
        error,
    };
    let mut response = render(status, &page);
    response.headers_mut().append(
        header::SET_COOKIE,
        cookie(caller, LOGIN_COOKIE, &token, "/ui/login", 3600, "Strict"),
    );
    response
}

pub async fn form(caller: Caller, Query(q): Query<Next>) -> Response {
    if !caller.api.has_accounts() || caller.signed_in() {
        return Redirect::to(&safe_next(q.next.as_deref())).into_response();
    }
    login_page(
        &caller,
        StatusCode::OK,
        safe_next(q.next.as_deref()),
        String::new(),
        String::new(),
    )
}

pub async fn submit(caller: Caller, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let form = Form::parse(&body);
    let next = safe_next(form.get("next"));
    let user = form.get("user").unwrap_or("").trim().to_owned();
    let t = caller.t;
    let expected = session::cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    let echoed = form.token().unwrap_or("");
    if caller.foreign_origin
        || expected.is_empty()
        || !berth_auth::constant_time_eq(expected.as_bytes(), echoed.as_bytes())
    {
        return login_page(
            &caller,
            StatusCode::FORBIDDEN,
            next,
            user,
            t.get("error.csrf").into(),
        );
    }
    let password = form.get("password").unwrap_or("");
    match caller
        .api
        .open_session(&user, password, &caller.access.client)
        .await
    {
        Ok(opened) => {
            let mut response = Redirect::to(&next).into_response();
            let headers = response.headers_mut();
            headers.append(
                header::SET_COOKIE,
                cookie(
                    &caller,
                    SESSION_COOKIE,
                    &opened.cookie_value,
                    "/ui",
                    SESSION_SECONDS,
                    "Lax",
                ),
            );
            headers.append(
                header::SET_COOKIE,
                cookie(&caller, LOGIN_COOKIE, "", "/ui/login", 0, "Strict"),
            );
            response
        }
        Err(refused) => {
            let (status, key) = match refused {
                SignInRefused::Invalid => (StatusCode::UNAUTHORIZED, "login.invalid"),
                SignInRefused::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "login.rate_limited"),
                SignInRefused::Robot => (StatusCode::FORBIDDEN, "login.robot"),
                SignInRefused::NoAccounts => return Redirect::to("/ui/").into_response(),
                SignInRefused::Store(e) => return caller.failed(e),
            };
            login_page(&caller, status, next, user, t.get(key).into())
        }
    }
}

pub async fn logout(caller: Caller, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let form = Form::parse(&body);
    if let Some(refused) = caller.forged(form.token()) {
        return refused;
    }
    if let Err(e) = caller.api.close_session(&headers).await {
        return caller.failed(e);
    }
    let mut response = Redirect::to("/ui/").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        cookie(&caller, SESSION_COOKIE, "", "/ui", 0, "Lax"),
    );
    response
}
