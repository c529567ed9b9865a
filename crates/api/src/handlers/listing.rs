//! Listings: `/v2/_catalog`, `/v2/<name>/tags/list` (with `n`/`last` and `Link`), and the
//! referrers API.

use axum::body::Body;
use axum::response::Response;
use berth_oci::manifest::OCI_INDEX;
use berth_oci::{Digest, ErrorCode, RepositoryName};
use http::{header, StatusCode};
use serde_json::{json, Map, Value};

use super::{empty, Query, ResponseExt};
use crate::access::Access;
use crate::error::ApiError;
use crate::Api;

/// Largest page served; larger `n` values are clamped, and `Link` points to the rest.
const MAX_PAGE: u32 = 10_000;

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

fn link(path: &str, n: Option<u32>, last: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("n", &n.unwrap_or(MAX_PAGE).to_string())
        .append_pair("last", last)
        .finish();
    format!("<{path}?{q}>; rel=\"next\"")
}

/// Repositories the caller may pull, in pages over what the caller may see (so neither a
/// page nor its `Link` names a hidden repository).
pub async fn catalog(api: &Api, access: &Access, query: &Query) -> Result<Response, ApiError> {
    let n = page_size(query)?.unwrap_or(MAX_PAGE);
    let listed = api
        .registry
        .catalog(query.get("last"), n, api.listable(access))
        .await?;
    let mut response = json_response(json!({ "repositories": listed.entries }));
    if let Some(last) = listed.next {
        response = response.with_header(header::LINK, link("/v2/_catalog", Some(n), &last));
    }
    Ok(response)
}

pub async fn tags(api: &Api, name: &RepositoryName, query: &Query) -> Result<Response, ApiError> {
    let n = page_size(query)?;
    let listed = api.registry.tags(name, query.get("last"), n).await?;
    let mut response = json_response(json!({ "name": name.as_str(), "tags": listed.entries }));
    if let Some(last) = listed.next {
        response = response.with_header(
            header::LINK,
            link(&format!("/v2/{name}/tags/list"), n, &last),
        );
    }
    Ok(response)
}

pub async fn referrers(
    api: &Api,
    name: &RepositoryName,
    subject: &Digest,
    query: &Query,
) -> Result<Response, ApiError> {
    let artifact_type = query.get("artifactType").filter(|t| !t.is_empty());
    let referrers = api.registry.referrers(name, subject, artifact_type).await?;
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
