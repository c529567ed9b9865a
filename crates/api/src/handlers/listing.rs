//! Listings: `/v2/_catalog`, `/v2/<name>/tags/list` (with `n`/`last` and `Link`), and the
//! referrers API.

use axum::body::Body;
use axum::response::Response;
use berth_meta::Page;
use berth_oci::manifest::OCI_INDEX;
use berth_oci::{Digest, ErrorCode, RepositoryName};
use http::{header, StatusCode};
use serde_json::{json, Map, Value};

use super::{empty, Query, ResponseExt};
use crate::access::Access;
use crate::error::ApiError;
use crate::Registry;

/// Largest page served; larger `n` values are clamped, and `Link` points to the rest.
const MAX_PAGE: u32 = 10_000;
/// Repositories read from the store at a time while a catalog page is filled.
const CATALOG_BATCH: u32 = 500;

fn page_size(query: &Query) -> Result<Option<u32>, ApiError> {
    query
        .get("n")
        .map(|n| {
            n.parse::<u32>().map(|n| n.min(MAX_PAGE)).map_err(|_| {
                ApiError::new(
                    ErrorCode::PaginationNumberInvalid,
                    format!("n={n:?} is not a count"),
                )
            })
        })
        .transpose()
}

fn json_response(value: Value) -> Response {
    empty(StatusCode::OK, Body::from(value.to_string()))
        .with_header(header::CONTENT_TYPE, "application/json")
}

/// Fetches one extra entry to learn whether a next page exists.
fn paginate(mut items: Vec<String>, n: Option<u32>) -> (Vec<String>, Option<String>) {
    match n {
        Some(n) if items.len() > n as usize => {
            items.truncate(n as usize);
            let last = items.last().cloned();
            (items, last)
        }
        _ => (items, None),
    }
}

fn link(path: &str, n: Option<u32>, last: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("n", &n.unwrap_or(MAX_PAGE).to_string())
        .append_pair("last", last)
        .finish();
    format!("<{path}?{q}>; rel=\"next\"")
}

/// Repositories the caller may pull, in pages. Pagination runs over what the caller may
/// see: hidden repositories are skipped while the page is filled, so neither the page nor its
/// `Link` (which names the page's last entry) reveals a name the caller may not pull.
pub async fn catalog(
    registry: &Registry,
    access: &Access,
    query: &Query,
) -> Result<Response, ApiError> {
    let n = page_size(query)?.unwrap_or(MAX_PAGE);
    if n == 0 {
        return Ok(json_response(json!({ "repositories": [] })));
    }
    // One entry past the page tells whether a next page exists.
    let wanted = n as usize + 1;
    let batch = (n + 1).max(CATALOG_BATCH);
    let mut visible: Vec<String> = Vec::with_capacity(wanted.min(1024));
    let mut cursor = query.get("last").map(str::to_owned);
    loop {
        let page = Page {
            last: cursor.as_deref(),
            limit: Some(batch),
        };
        let repos = registry.meta.list_repositories(page).await?;
        let exhausted = repos.len() < batch as usize;
        cursor = repos.last().cloned();
        visible.extend(repos.into_iter().filter(|r| {
            r.parse::<RepositoryName>()
                .is_ok_and(|name| registry.may_list(access, &name))
        }));
        if visible.len() >= wanted || exhausted {
            break;
        }
    }
    let (visible, next) = paginate(visible, Some(n));
    let mut response = json_response(json!({ "repositories": visible }));
    if let Some(last) = next {
        response = response.with_header(header::LINK, link("/v2/_catalog", Some(n), &last));
    }
    Ok(response)
}

pub async fn tags(
    registry: &Registry,
    name: &RepositoryName,
    query: &Query,
) -> Result<Response, ApiError> {
    let n = page_size(query)?;
    let limit = n.map(|n| n.saturating_add(1));
    let page = Page {
        last: query.get("last"),
        limit: if n == Some(0) { Some(0) } else { limit },
    };
    let Some(tags) = registry.meta.list_tags(name, page).await? else {
        return Err(ApiError::new(
            ErrorCode::NameUnknown,
            format!("repository {name} is not known"),
        ));
    };
    let (tags, next) = paginate(tags, n);
    let mut response = json_response(json!({ "name": name.as_str(), "tags": tags }));
    if let Some(last) = next {
        response = response.with_header(
            header::LINK,
            link(&format!("/v2/{name}/tags/list"), n, &last),
        );
    }
    Ok(response)
}

pub async fn referrers(
    registry: &Registry,
    name: &RepositoryName,
    subject: &Digest,
    query: &Query,
) -> Result<Response, ApiError> {
    let artifact_type = query.get("artifactType").filter(|t| !t.is_empty());
    let referrers = registry
        .meta
        .referrers(name, subject, artifact_type)
        .await?;
    let manifests: Vec<Value> = referrers
        .into_iter()
        .map(|r| {
            let mut d = Map::new();
            d.insert("mediaType".into(), r.media_type.into());
            d.insert("digest".into(), r.digest.into());
            d.insert("size".into(), r.size.into());
            if let Some(t) = r.artifact_type {
                d.insert("artifactType".into(), t.into());
            }
            if let Some(a) = r
                .annotations_json
                .and_then(|a| serde_json::from_str::<Value>(&a).ok())
            {
                d.insert("annotations".into(), a);
            }
            Value::Object(d)
        })
        .collect();
    let body = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    let mut response = empty(StatusCode::OK, Body::from(body.to_string()))
        .with_header(header::CONTENT_TYPE, OCI_INDEX);
    if artifact_type.is_some() {
        response = response.with_header("oci-filters-applied", "artifactType");
    }
    Ok(response)
}
