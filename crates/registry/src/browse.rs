//! What people browse: read models of repositories, tags and manifests for the web UI (and
//! any other caller that shows an image rather than serving it). Everything comes from the
//! index, plus an image's config blob, read only when a manifest page is shown.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_meta::{InventoryManifest, Page, RepositorySummary, StoredManifest};
use berth_oci::{Digest, Reference, RepositoryName};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::listing::Listable;
use crate::{Actor, Registry, RegistryError, Result};

/// Image configs larger than this are not shown (they are a few KiB in practice).
const CONFIG_LIMIT: u64 = 1 << 20;

/// One page of repositories, and the name the next page starts after.
#[derive(Clone, Debug, Default)]
pub struct RepositoryList {
    pub repositories: Vec<RepositorySummary>,
    pub next: Option<String>,
}

/// A tag as a repository's page lists it.
#[derive(Clone, Debug)]
pub struct TagView {
    pub name: String,
    pub digest: String,
    pub media_type: String,
    /// The manifest and what it references; for an index, its children's too.
    pub size: u64,
    /// `os/architecture[/variant]` of each image an index lists.
    pub platforms: Vec<String>,
    pub pushed_at: i64,
    /// 0 when never pulled.
    pub pulled_at: i64,
}

/// A manifest no tag names (children of an index, referrers, untagged images).
#[derive(Clone, Debug)]
pub struct UntaggedView {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub pushed_at: i64,
}

#[derive(Clone, Debug)]
pub struct RepositoryView {
    pub name: RepositoryName,
    pub tags: Vec<TagView>,
    pub untagged: Vec<UntaggedView>,
}

#[derive(Clone, Debug)]
pub struct LayerView {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

#[derive(Clone, Debug)]
pub struct PlatformView {
    pub platform: String,
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

#[derive(Clone, Debug, Default)]
pub struct HistoryView {
    pub created: String,
    pub created_by: String,
    pub empty_layer: bool,
}

/// What an image's config says about running it.
#[derive(Clone, Debug, Default)]
pub struct ConfigView {
    pub os: String,
    pub architecture: String,
    pub created: String,
    pub user: String,
    pub working_dir: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub history: Vec<HistoryView>,
}

#[derive(Clone, Debug)]
pub struct ManifestView {
    pub repository: RepositoryName,
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    /// The manifest's own bytes.
    pub size: u64,
    /// Tags naming it.
    pub tags: Vec<String>,
    pub config: Option<LayerView>,
    pub layers: Vec<LayerView>,
    /// What the config blob says, for images (absent for artifacts and indexes).
    pub image: Option<ConfigView>,
    /// The images an index lists.
    pub platforms: Vec<PlatformView>,
    pub subject: Option<String>,
    pub referrers: Vec<crate::Referrer>,
    pub annotations: BTreeMap<String, String>,
    /// The manifest as pushed, pretty-printed when it is JSON.
    pub content: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
    #[serde(default)]
    manifests: Vec<RawDescriptor>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    artifact_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    variant: Option<String>,
}

impl RawPlatform {
    fn label(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    user: String,
    #[serde(default)]
    working_dir: String,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
struct RawHistory {
    #[serde(default)]
    created: String,
    #[serde(default)]
    created_by: String,
    #[serde(default)]
    empty_layer: bool,
}

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    created: String,
    #[serde(default)]
    config: Option<RawRunConfig>,
    #[serde(default)]
    history: Vec<RawHistory>,
}

fn parse_raw(content: &[u8]) -> RawManifest {
    serde_json::from_slice(content).unwrap_or_default()
}

/// The platforms an index's stored bytes list.
fn platforms_of(manifest: &InventoryManifest, content: &[u8]) -> Vec<String> {
    if manifest.children.is_empty() {
        return Vec::new();
    }
    parse_raw(content)
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref().map(RawPlatform::label))
        .filter(|p| p != "unknown/unknown")
        .collect()
}

/// Parses an image config blob into what the UI shows; `None` when it is not one.
pub fn config_view(bytes: &[u8]) -> Option<ConfigView> {
    let raw: RawConfig = serde_json::from_slice(bytes).ok()?;
    let run = raw.config.unwrap_or_default();
    Some(ConfigView {
        os: raw.os,
        architecture: raw.architecture,
        created: raw.created,
        user: run.user,
        working_dir: run.working_dir,
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        env: run.env.unwrap_or_default(),
        labels: run.labels.unwrap_or_default(),
        history: raw
            .history
            .into_iter()
            .map(|h| HistoryView {
                created: h.created,
                created_by: h.created_by,
                empty_layer: h.empty_layer,
            })
            .collect(),
    })
}

fn is_image_config(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.config.v1+json"
            | "application/vnd.docker.container.image.v1+json"
    )
}

impl Registry {
    /// Repositories whose names contain `search` (all when empty) after `after`, at most `n`,
    /// only those the caller may see, with what the list shows of each. Like the catalog,
    /// hidden names are skipped while the page fills, so nothing reveals them.
    pub async fn browse_repositories(
        &self,
        search: &str,
        after: Option<&str>,
        n: u32,
        listable: Listable<impl Fn(&RepositoryName) -> bool>,
    ) -> Result<RepositoryList> {
        let n = n.max(1);
        let mut names = self
            .visible_repositories(&listable, search, after, n + 1)
            .await?;
        let more = names.len() > n as usize;
        names.truncate(n as usize);
        let repositories = self.meta.repository_summaries(&names).await?;
        let next = more.then(|| names.last().map(|r| r.to_string())).flatten();
        Ok(RepositoryList { repositories, next })
    }

    /// A repository's tags and untagged manifests, newest push first.
    pub async fn repository_view(&self, repository: &RepositoryName) -> Result<RepositoryView> {
        let exists = Page {
            last: None,
            limit: Some(0),
        };
        if self.meta.list_tags(repository, exists).await?.is_none() {
            return Err(RegistryError::NameUnknown(repository.to_string()));
        }
        let inventory = self.meta.repository_inventory(repository).await?;
        let by_digest: BTreeMap<&str, &InventoryManifest> = inventory
            .manifests
            .iter()
            .map(|m| (m.digest.as_str(), m))
            .collect();
        let own_size = |m: &InventoryManifest| m.size + m.blobs.iter().map(|b| b.1).sum::<u64>();
        let size_of = |m: &InventoryManifest| {
            own_size(m)
                + m.children
                    .iter()
                    .filter_map(|c| by_digest.get(c.as_str()))
                    .map(|c| own_size(c))
                    .sum::<u64>()
        };
        let mut tags = Vec::with_capacity(inventory.tags.len());
        for t in &inventory.tags {
            let Some(m) = by_digest.get(t.manifest.as_str()) else {
                continue;
            };
            let platforms = if m.children.is_empty() {
                Vec::new()
            } else {
                match self.stored(repository, &m.digest).await? {
                    Some(stored) => platforms_of(m, &stored.content),
                    None => Vec::new(),
                }
            };
            tags.push(TagView {
                name: t.name.clone(),
                digest: m.digest.clone(),
                media_type: m.media_type.clone(),
                size: size_of(m),
                platforms,
                pushed_at: t.pushed_at,
                pulled_at: t.pulled_at.max(m.pulled_at),
            });
        }
        tags.sort_by(|a, b| b.pushed_at.cmp(&a.pushed_at).then(a.name.cmp(&b.name)));
        let tagged: std::collections::HashSet<&str> =
            inventory.tags.iter().map(|t| t.manifest.as_str()).collect();
        let mut untagged: Vec<UntaggedView> = inventory
            .manifests
            .iter()
            .filter(|m| !tagged.contains(m.digest.as_str()))
            .map(|m| UntaggedView {
                digest: m.digest.clone(),
                media_type: m.media_type.clone(),
                size: size_of(m),
                pushed_at: m.created_at,
            })
            .collect();
        untagged.sort_by(|a, b| b.pushed_at.cmp(&a.pushed_at).then(a.digest.cmp(&b.digest)));
        Ok(RepositoryView {
            name: repository.clone(),
            tags,
            untagged,
        })
    }

    /// A manifest with its layers, image config, platforms and referrers. Showing it is not a
    /// pull: no pull event, no pull time.
    pub async fn manifest_view(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
    ) -> Result<ManifestView> {
        let stored = self
            .manifest(&Actor::new("browse", ""), repository, reference, false)
            .await?;
        let digest = stored.digest.clone();
        let raw = parse_raw(&stored.content);
        let inventory = self.meta.repository_inventory(repository).await?;
        let tags = inventory
            .tags
            .iter()
            .filter(|t| t.manifest == digest.as_str())
            .map(|t| t.name.clone())
            .collect();
        let this = inventory
            .manifests
            .iter()
            .find(|m| m.digest == digest.as_str());
        let layer = |d: &RawDescriptor| LayerView {
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
            size: d.size,
        };
        let config = raw.config.as_ref().map(layer);
        let image = match &config {
            Some(c) if is_image_config(&c.media_type) => self.image_config(repository, c).await,
            _ => None,
        };
        let platforms = raw
            .manifests
            .iter()
            .map(|d| PlatformView {
                platform: d
                    .platform
                    .as_ref()
                    .map(RawPlatform::label)
                    .unwrap_or_default(),
                digest: d.digest.clone(),
                media_type: d.media_type.clone(),
                size: d.size,
            })
            .collect();
        let referrers = self.referrers(repository, &digest, None).await?;
        let content = serde_json::from_slice::<serde_json::Value>(&stored.content)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| String::from_utf8_lossy(&stored.content).into_owned());
        Ok(ManifestView {
            repository: repository.clone(),
            digest: digest.to_string(),
            media_type: stored.media_type.clone(),
            artifact_type: raw.artifact_type.clone(),
            size: stored.content.len() as u64,
            tags,
            config,
            layers: raw.layers.iter().map(layer).collect(),
            image,
            platforms,
            subject: this.and_then(|m| m.subject.clone()),
            referrers,
            annotations: raw.annotations,
            content,
        })
    }

    /// The config blob of an image, when this repository holds it and it is small.
    async fn image_config(
        &self,
        repository: &RepositoryName,
        config: &LayerView,
    ) -> Option<ConfigView> {
        let digest: Digest = config.digest.parse().ok()?;
        let size = match self.blob(repository, &digest).await.ok()? {
            crate::BlobLookup::Blob { size } if size <= CONFIG_LIMIT => size,
            _ => return None,
        };
        let mut stream = self.read_blob(&digest, 0..size).await.ok()?;
        let mut bytes = Vec::with_capacity(size as usize);
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.ok()?);
        }
        config_view(&bytes)
    }

    async fn stored(
        &self,
        repository: &RepositoryName,
        digest: &str,
    ) -> Result<Option<Arc<StoredManifest>>> {
        let Ok(digest) = digest.parse::<Digest>() else {
            return Ok(None);
        };
        Ok(self
            .manifests
            .get(repository, &Reference::Digest(digest))
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_config_is_read_for_display() {
        let config = br#"{"os":"linux","architecture":"arm64","created":"2026-01-02T03:04:05Z",
            "config":{"Entrypoint":["/bin/app"],"Cmd":["--serve"],"Env":["PATH=/bin"],
            "Labels":{"org.opencontainers.image.source":"https://example.org"},"WorkingDir":"/srv"},
            "history":[{"created_by":"COPY app /bin/app"},{"created_by":"ENV x","empty_layer":true}]}"#;
        let view = config_view(config).expect("a config");
        assert_eq!(view.architecture, "arm64");
        assert_eq!(view.entrypoint, ["/bin/app"]);
        assert_eq!(view.cmd, ["--serve"]);
        assert_eq!(view.working_dir, "/srv");
        assert_eq!(view.labels.len(), 1);
        assert_eq!(view.history.len(), 2);
        assert!(view.history[1].empty_layer);
        assert!(config_view(b"not json").is_none());
    }

    #[test]
    fn index_platforms_are_labelled() {
        let index = br#"{"manifests":[
            {"digest":"sha256:aa","size":1,"platform":{"os":"linux","architecture":"arm","variant":"v7"}},
            {"digest":"sha256:bb","size":1,"platform":{"os":"linux","architecture":"amd64"}},
            {"digest":"sha256:cc","size":1,"platform":{"os":"unknown","architecture":"unknown"}}]}"#;
        let m = InventoryManifest {
            digest: "sha256:ff".into(),
            media_type: String::new(),
            size: 0,
            created_at: 0,
            pulled_at: 0,
            subject: None,
            children: vec!["sha256:aa".into()],
            blobs: Vec::new(),
        };
        assert_eq!(platforms_of(&m, index), ["linux/arm/v7", "linux/amd64"]);
    }
}
