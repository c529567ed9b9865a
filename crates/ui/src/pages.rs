//! What every page shares: the frame around it (navigation, who is signed in, the language
//! switch), rendering, and the pages that say something went wrong.

use askama::Template;
use axum::response::{IntoResponse, Response};
use berth_api::ApiError;
use berth_auth::Permission;
use http::{header, HeaderValue, StatusCode};

use crate::i18n::{self, Catalog};
use crate::Caller;

/// The frame of a page.
pub struct Chrome {
    pub t: &'static Catalog,
    pub title: String,
    /// Which navigation entry is this page's.
    pub section: &'static str,
    pub user: Option<String>,
    pub csrf: String,
    /// Whether there are accounts to sign in with (not in `auth.mode = none`).
    pub accounts: bool,
    pub nav_projects: bool,
    pub nav_status: bool,
    pub nav_audit: bool,
    /// The other languages, as `(tag, name)`, for the switch.
    pub languages: Vec<(&'static str, &'static str)>,
    pub path: String,
}

impl Chrome {
    pub fn new(caller: &Caller, title: impl Into<String>, section: &'static str) -> Chrome {
        let token_mode = caller.api.token_auth().is_ok();
        Chrome {
            t: caller.t,
            title: title.into(),
            section,
            user: caller
                .session
                .as_ref()
                .map(|_| caller.access.principal.name().into_owned()),
            csrf: caller.csrf().to_owned(),
            accounts: caller.api.has_accounts(),
            nav_projects: token_mode,
            nav_status: caller.allows(Permission::ReadStatus),
            nav_audit: token_mode && caller.allows(Permission::ReadAudit),
            languages: other_languages(caller.t),
            path: caller.path.clone(),
        }
    }

    /// A frame for pages shown before a caller could be identified.
    fn bare(t: &'static Catalog, title: &str) -> Chrome {
        Chrome {
            t,
            title: title.to_owned(),
            section: "",
            user: None,
            csrf: String::new(),
            accounts: false,
            nav_projects: false,
            nav_status: false,
            nav_audit: false,
            languages: other_languages(t),
            path: "/ui/".into(),
        }
    }
}

fn other_languages(t: &'static Catalog) -> Vec<(&'static str, &'static str)> {
    i18n::catalogs()
        .iter()
        .filter(|c| c.tag != t.tag)
        .map(|c| (c.tag, c.name))
        .collect()
}

/// Renders a page with `status`.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => {
            let mut response = (status, html).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "a UI template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    c: Chrome,
    status: u16,
    message: String,
}

/// A page that says `message`, with `status`.
pub fn message_page(caller: &Caller, status: StatusCode, message: &str) -> Response {
    let page = MessagePage {
        c: Chrome::new(caller, caller.t.get("error.title"), ""),
        status: status.as_u16(),
        message: message.to_owned(),
    };
    render(status, &page)
}

/// An API failure as a page, with the status the API would answer.
pub fn error_page(t: &'static Catalog, e: ApiError) -> Response {
    let (status, detail) = e.status_and_detail();
    if status.is_server_error() {
        tracing::warn!(error = %e, "a UI page failed");
    }
    let message = if status == StatusCode::NOT_FOUND {
        t.get("error.not_found").to_owned()
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        t.get("error.unavailable").to_owned()
    } else {
        detail
    };
    let page = MessagePage {
        c: Chrome::bare(t, t.get("error.title")),
        status: status.as_u16(),
        message,
    };
    render(status, &page)
}
