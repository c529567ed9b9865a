//! Repositories: the list across projects, a repository's tags, a manifest, and deleting
//! tags, manifests and whole repositories (after a confirmation page).
//!
//! Paths: `/ui/repo/<name>` is a repository; `/-/` separates the name (whose components never
//! are `-`) from what follows: `/-/manifest/<digest>`, `/-/delete?target=…`.

use askama::Template;
use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Redirect, Response};
use berth_auth::{Action, Permission};
use berth_oci::{Digest, Reference, RepositoryName, Tag};
use berth_registry::browse::ManifestView;
use http::StatusCode;
use serde::Deserialize;

use crate::format;
use crate::pages::{message_page, render, Chrome};
use crate::{Caller, Form};

/// Repositories per page of the list.
const PAGE_SIZE: u32 = 50;

struct RepositoryRow {
    name: String,
    tags: u64,
    size: String,
    pushed: String,
}

#[derive(Template)]
#[template(path = "repositories.html")]
struct ListPage {
    c: Chrome,
    search: String,
    rows: Vec<RepositoryRow>,
    /// The link to the next page, when there is one.
    next: Option<String>,
    /// The link to the first page, when this is not it.
    first: Option<String>,
}

#[derive(Deserialize)]
pub struct ListQuery {
    q: Option<String>,
    after: Option<String>,
}

pub async fn list(caller: Caller, Query(query): Query<ListQuery>) -> Response {
    let search = query.q.unwrap_or_default().trim().to_owned();
    let listed = caller
        .api
        .registry
        .browse_repositories(
            &search,
            query.after.as_deref(),
            PAGE_SIZE,
            caller.api.listable(&caller.access),
        )
        .await;
    let listed = match listed {
        Ok(l) => l,
        Err(e) => return caller.failed(e.into()),
    };
    let link = |after: Option<&str>| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if !search.is_empty() {
            q.append_pair("q", &search);
        }
        if let Some(after) = after {
            q.append_pair("after", after);
        }
        format!("/ui/?{}", q.finish())
    };
    let next = listed.next.as_deref().map(|after| link(Some(after)));
    let first = query.after.is_some().then(|| link(None));
    let rows = listed
        .repositories
        .into_iter()
        .map(|r| RepositoryRow {
            size: format::bytes(r.bytes),
            pushed: format::time(r.pushed_at),
            tags: r.tags,
            name: r.name,
        })
        .collect();
    let page = ListPage {
        c: Chrome::new(&caller, caller.t.get("repos.title"), "repositories"),
        search,
        rows,
        next,
        first,
    };
    render(StatusCode::OK, &page)
}

/// What a `/ui/repo/…` path names.
enum Target {
    Repository(RepositoryName),
    Manifest(RepositoryName, Digest),
    Delete(RepositoryName),
}

fn parse_path(path: &str) -> Option<Target> {
    let (name, rest) = match path.split_once("/-/") {
        Some((name, rest)) => (name, Some(rest)),
        None => (path.trim_end_matches('/'), None),
    };
    let name: RepositoryName = name.parse().ok()?;
    match rest {
        None => Some(Target::Repository(name)),
        Some("delete") => Some(Target::Delete(name)),
        Some(rest) => {
            let digest = rest.strip_prefix("manifest/")?.parse().ok()?;
            Some(Target::Manifest(name, digest))
        }
    }
}

#[derive(Deserialize)]
pub struct ShowQuery {
    target: Option<String>,
    deleted: Option<String>,
}

pub async fn show(
    caller: Caller,
    Path(path): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Response {
    let Some(target) = parse_path(&path) else {
        return message_page(
            &caller,
            StatusCode::NOT_FOUND,
            caller.t.get("error.not_found"),
        );
    };
    let name = match &target {
        Target::Repository(n) | Target::Manifest(n, _) | Target::Delete(n) => n.clone(),
    };
    // Pages of a repository are for whoever may pull from it; to others it does not exist.
    if !caller.allows(Permission::Repository(name.as_str(), Action::Pull)) {
        if caller.signed_in() || !caller.api.has_accounts() {
            return message_page(
                &caller,
                StatusCode::NOT_FOUND,
                caller.t.get("error.not_found"),
            );
        }
        return caller.refuse();
    }
    match target {
        Target::Repository(name) => repository(&caller, name, q.deleted).await,
        Target::Manifest(name, digest) => manifest(&caller, name, digest).await,
        Target::Delete(name) => confirm(&caller, name, q.target.as_deref().unwrap_or("")).await,
    }
}

struct TagRow {
    name: String,
    digest: String,
    short: String,
    size: String,
    platforms: String,
    pushed: String,
    pulled: String,
    docker_pull: String,
    podman_pull: String,
}

struct UntaggedRow {
    digest: String,
    short: String,
    kind: String,
    size: String,
    pushed: String,
}

#[derive(Template)]
#[template(path = "repository.html")]
struct RepositoryPage {
    c: Chrome,
    name: String,
    tags: Vec<TagRow>,
    untagged: Vec<UntaggedRow>,
    can_delete: bool,
    can_delete_repository: bool,
    deleted: String,
}

/// Whether the caller may delete in `name`, and deletes are enabled at all.
fn may_delete(caller: &Caller, name: &RepositoryName) -> bool {
    caller.api.registry.config.delete_enabled
        && caller.allows(Permission::Repository(name.as_str(), Action::Delete))
}

fn may_delete_repository(caller: &Caller, name: &RepositoryName) -> bool {
    caller.api.registry.config.delete_enabled
        && caller.allows(Permission::AdministerProject(name.project()))
}

async fn repository(caller: &Caller, name: RepositoryName, deleted: Option<String>) -> Response {
    let view = match caller.api.registry.repository_view(&name).await {
        Ok(v) => v,
        Err(e) => return caller.failed(e.into()),
    };
    let tags = view
        .tags
        .into_iter()
        .map(|t| TagRow {
            docker_pull: format!("docker pull {}/{}:{}", caller.host, name, t.name),
            podman_pull: format!("podman pull {}/{}:{}", caller.host, name, t.name),
            short: format::short_digest(&t.digest),
            size: format::bytes(t.size),
            platforms: t.platforms.join(", "),
            pushed: format::time(t.pushed_at),
            pulled: format::time(t.pulled_at),
            name: t.name,
            digest: t.digest,
        })
        .collect();
    let untagged = view
        .untagged
        .into_iter()
        .map(|m| UntaggedRow {
            short: format::short_digest(&m.digest),
            kind: format::media_type(&m.media_type),
            size: format::bytes(m.size),
            pushed: format::time(m.pushed_at),
            digest: m.digest,
        })
        .collect();
    let page = RepositoryPage {
        c: Chrome::new(caller, name.to_string(), "repositories"),
        can_delete: may_delete(caller, &name),
        can_delete_repository: may_delete_repository(caller, &name),
        name: name.to_string(),
        tags,
        untagged,
        deleted: deleted.unwrap_or_default(),
    };
    render(StatusCode::OK, &page)
}

struct LayerRow {
    digest: String,
    short: String,
    media_type: String,
    size: String,
}

struct PlatformRow {
    platform: String,
    digest: String,
    short: String,
    size: String,
}

struct ReferrerRow {
    artifact_type: String,
    digest: String,
    short: String,
    size: String,
}

struct HistoryRow {
    created: String,
    created_by: String,
    empty: bool,
}

#[derive(Template)]
#[template(path = "manifest.html")]
struct ManifestPage {
    c: Chrome,
    repository: String,
    digest: String,
    media_type: String,
    artifact_type: String,
    size: String,
    tags: Vec<String>,
    config: Option<LayerRow>,
    layers: Vec<LayerRow>,
    total_layers: String,
    has_image: bool,
    platform: String,
    created: String,
    entrypoint: String,
    cmd: String,
    user: String,
    working_dir: String,
    env: Vec<String>,
    labels: Vec<(String, String)>,
    history: Vec<HistoryRow>,
    platforms: Vec<PlatformRow>,
    subject: String,
    referrers: Vec<ReferrerRow>,
    annotations: Vec<(String, String)>,
    content: String,
    can_delete: bool,
    pull_by_digest: String,
}

fn layer_row(l: &berth_registry::browse::LayerView) -> LayerRow {
    LayerRow {
        digest: l.digest.clone(),
        short: format::short_digest(&l.digest),
        media_type: format::media_type(&l.media_type),
        size: format::bytes(l.size),
    }
}

/// An argument list as a shell would show it (JSON's quoting, which is unambiguous).
fn argv(args: &[String]) -> String {
    if args.is_empty() {
        String::new()
    } else {
        serde_json::to_string(args).unwrap_or_default()
    }
}

async fn manifest(caller: &Caller, name: RepositoryName, digest: Digest) -> Response {
    let view: ManifestView = match caller
        .api
        .registry
        .manifest_view(&name, &Reference::Digest(digest))
        .await
    {
        Ok(v) => v,
        Err(e) => return caller.failed(e.into()),
    };
    let image = view.image.clone().unwrap_or_default();
    let page = ManifestPage {
        c: Chrome::new(
            caller,
            format!("{}@{}", name, format::short_digest(&view.digest)),
            "repositories",
        ),
        repository: name.to_string(),
        pull_by_digest: format!("docker pull {}/{}@{}", caller.host, name, view.digest),
        digest: view.digest.clone(),
        media_type: view.media_type.clone(),
        artifact_type: view.artifact_type.clone().unwrap_or_default(),
        size: format::bytes(view.size),
        tags: view.tags.clone(),
        config: view.config.as_ref().map(layer_row),
        total_layers: format::bytes(view.layers.iter().map(|l| l.size).sum()),
        layers: view.layers.iter().map(layer_row).collect(),
        has_image: view.image.is_some(),
        platform: if image.os.is_empty() {
            String::new()
        } else {
            format!("{}/{}", image.os, image.architecture)
        },
        created: image.created.clone(),
        entrypoint: argv(&image.entrypoint),
        cmd: argv(&image.cmd),
        user: image.user.clone(),
        working_dir: image.working_dir.clone(),
        env: image.env.clone(),
        labels: image.labels.clone().into_iter().collect(),
        history: image
            .history
            .iter()
            .map(|h| HistoryRow {
                created: h.created.clone(),
                created_by: h.created_by.clone(),
                empty: h.empty_layer,
            })
            .collect(),
        platforms: view
            .platforms
            .iter()
            .map(|p| PlatformRow {
                platform: p.platform.clone(),
                digest: p.digest.clone(),
                short: format::short_digest(&p.digest),
                size: format::bytes(p.size),
            })
            .collect(),
        subject: view.subject.clone().unwrap_or_default(),
        referrers: view
            .referrers
            .iter()
            .map(|r| ReferrerRow {
                artifact_type: r
                    .artifact_type
                    .clone()
                    .unwrap_or_else(|| r.media_type.clone()),
                digest: r.digest.clone(),
                short: format::short_digest(&r.digest),
                size: format::bytes(r.size),
            })
            .collect(),
        annotations: view.annotations.clone().into_iter().collect(),
        content: view.content.clone(),
        can_delete: may_delete(caller, &name),
    };
    render(StatusCode::OK, &page)
}

/// What a delete form names: a tag, a manifest, or the whole repository.
enum Doomed {
    Tag(Tag),
    Manifest(Digest),
    Repository,
}

fn parse_doomed(target: &str) -> Option<Doomed> {
    if target == "repository" {
        return Some(Doomed::Repository);
    }
    if let Some(tag) = target.strip_prefix("tag:") {
        return tag.parse().ok().map(Doomed::Tag);
    }
    target
        .strip_prefix("digest:")?
        .parse()
        .ok()
        .map(Doomed::Manifest)
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmPage {
    c: Chrome,
    repository: String,
    target: String,
    question: String,
}

async fn confirm(caller: &Caller, name: RepositoryName, target: &str) -> Response {
    let t = caller.t;
    let Some(doomed) = parse_doomed(target) else {
        return message_page(caller, StatusCode::BAD_REQUEST, t.get("error.bad_request"));
    };
    let allowed = match doomed {
        Doomed::Repository => may_delete_repository(caller, &name),
        _ => may_delete(caller, &name),
    };
    if !allowed {
        return caller.refuse();
    }
    let question = match &doomed {
        Doomed::Tag(tag) => t.with("delete.tag_question", format!("{name}:{tag}")),
        Doomed::Manifest(d) => t.with("delete.manifest_question", format!("{name}@{d}")),
        Doomed::Repository => t.with("delete.repository_question", &name),
    };
    let page = ConfirmPage {
        c: Chrome::new(caller, t.get("delete.title"), "repositories"),
        repository: name.to_string(),
        target: target.to_owned(),
        question,
    };
    render(StatusCode::OK, &page)
}

/// `POST /ui/repo/<name>/-/delete`: the confirmed deletion.
pub async fn change(caller: Caller, Path(path): Path<String>, body: axum::body::Bytes) -> Response {
    let form = Form::parse(&body);
    if let Some(refused) = caller.forged(form.token()) {
        return refused;
    }
    let Some(Target::Delete(name)) = parse_path(&path) else {
        return message_page(
            &caller,
            StatusCode::NOT_FOUND,
            caller.t.get("error.not_found"),
        );
    };
    let Some(doomed) = parse_doomed(form.get("target").unwrap_or("")) else {
        return message_page(
            &caller,
            StatusCode::BAD_REQUEST,
            caller.t.get("error.bad_request"),
        );
    };
    let (result, gone, label) = match &doomed {
        Doomed::Tag(tag) => (
            caller
                .api
                .delete_reference(&caller.access, &name, &Reference::Tag(tag.clone()))
                .await,
            false,
            format!("{name}:{tag}"),
        ),
        Doomed::Manifest(d) => (
            caller
                .api
                .delete_reference(&caller.access, &name, &Reference::Digest(d.clone()))
                .await,
            false,
            format!("{name}@{}", format::short_digest(d.as_str())),
        ),
        Doomed::Repository => (
            caller.api.delete_repository(&caller.access, &name).await,
            true,
            name.to_string(),
        ),
    };
    if let Err(e) = result {
        return caller.failed(e);
    }
    let deleted = form_urlencoded::byte_serialize(label.as_bytes()).collect::<String>();
    if gone {
        return Redirect::to(&format!("/ui/?deleted={deleted}")).into_response();
    }
    Redirect::to(&format!("/ui/repo/{name}?deleted={deleted}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_a_repository_and_what_follows() {
        assert!(
            matches!(parse_path("a/b/c"), Some(Target::Repository(n)) if n.as_str() == "a/b/c")
        );
        assert!(matches!(parse_path("a/b/"), Some(Target::Repository(n)) if n.as_str() == "a/b"));
        assert!(
            matches!(parse_path("a/b/-/delete"), Some(Target::Delete(n)) if n.as_str() == "a/b")
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(
            parse_path(&format!("lib/app/-/manifest/{digest}")),
            Some(Target::Manifest(n, d)) if n.as_str() == "lib/app" && d.as_str() == digest
        ));
        assert!(parse_path("lib/app/-/manifest/nope").is_none());
        assert!(parse_path("Not/Valid").is_none());
        assert!(parse_path("a/-/other").is_none());
    }

    #[test]
    fn delete_targets_are_parsed_strictly() {
        assert!(matches!(parse_doomed("tag:v1.0"), Some(Doomed::Tag(_))));
        assert!(matches!(
            parse_doomed("repository"),
            Some(Doomed::Repository)
        ));
        assert!(parse_doomed("tag:").is_none());
        assert!(parse_doomed("digest:sha256:zz").is_none());
        assert!(parse_doomed("v1").is_none());
    }
}
