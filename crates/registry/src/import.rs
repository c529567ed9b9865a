//! Importing a `registry:2` (CNCF Distribution) registry: its repository index (which
//! repositories exist, their manifests, tags and layer links) is read from Distribution's tree
//! and recorded in the metadata store, so Berth serves every image it held.
//!
//! The blobs already sit where Berth keeps them (the layout is the same), so an import in place
//! copies nothing; from another directory or bucket it copies each blob through a verified
//! upload first. Manifests are read from their blobs and checked against their digests, then
//! stored like pushes (references checked), images before the indexes that list them. What
//! cannot be imported is skipped and reported with the reason: a tag whose manifest is gone, a
//! schema 1 manifest, a layer link to a missing blob. Running it again changes nothing, and an
//! import that stopped halfway resumes; Distribution's tree is only read, never changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use berth_oci::{Digest, Manifest, ManifestError, RepositoryName, Tag};
use berth_storage::transfer::{copy_blob, Copied};
use berth_storage::BlobStore;
use futures_util::{StreamExt, TryStreamExt};

use crate::{Actor, Change, Registry, RegistryError, Result};

/// How long an imported blob is held against garbage collection while its repository is
/// imported (its link then keeps it for the grace period).
const LEASE_SECONDS: i64 = 600;
/// Blobs looked up (or copied) at once.
const IN_FLIGHT: usize = 8;

/// The setting recording an import: [`IMPORT_STARTED`] while one has not finished, then its
/// summary, so a server resumes an unfinished import on its own and never starts another
/// after repositories were deleted (`berth import` can still be run by hand).
pub const IMPORTED_SETTING: &str = "import.distribution";
/// [`IMPORTED_SETTING`]'s value while an import has not finished.
pub const IMPORT_STARTED: &str = "started";

/// Something that was not imported, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// `repository`, `repository:tag`, `repository@digest` or a path of Distribution's index.
    pub item: String,
    pub reason: String,
}

/// What an import did.
#[derive(Clone, Debug, Default)]
pub struct ImportReport {
    pub repositories: u64,
    pub manifests: u64,
    pub tags: u64,
    /// Layer and config links recorded.
    pub blobs: u64,
    /// Bytes copied from another store (0 in place).
    pub copied_bytes: u64,
    pub skipped: Vec<Skipped>,
}

/// Where an import stands, for a progress display: told after each repository.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportProgress {
    pub repositories_done: u64,
    pub repositories_total: u64,
    pub copied_bytes: u64,
}

/// One repository as Distribution's index describes it.
#[derive(Debug, Default)]
struct IndexedRepository {
    layers: BTreeSet<String>,
    revisions: BTreeSet<String>,
    /// Tag name → path of its `current/link`.
    tags: BTreeMap<String, String>,
}

/// Groups the index's files by repository: `<name>/_layers/<alg>/<hex>/link`,
/// `<name>/_manifests/revisions/<alg>/<hex>/link` and `<name>/_manifests/tags/<tag>/current/link`.
/// Anything else (tag history under `index/`, stray files) is ignored.
fn group_index(files: Vec<String>) -> BTreeMap<String, IndexedRepository> {
    let mut repositories: BTreeMap<String, IndexedRepository> = BTreeMap::new();
    for path in files {
        let segments: Vec<&str> = path.split('/').collect();
        let Some(at) = segments
            .iter()
            .position(|s| *s == "_layers" || *s == "_manifests")
        else {
            continue;
        };
        if at == 0 {
            continue;
        }
        let name = segments[..at].join("/");
        let rest = &segments[at..];
        let repository = repositories.entry(name).or_default();
        match rest {
            ["_layers", alg, hex, "link"] => {
                repository.layers.insert(format!("{alg}:{hex}"));
            }
            ["_manifests", "revisions", alg, hex, "link"] => {
                repository.revisions.insert(format!("{alg}:{hex}"));
            }
            ["_manifests", "tags", tag, "current", "link"] => {
                repository.tags.insert((*tag).to_owned(), path.clone());
            }
            _ => {}
        }
    }
    repositories
}

/// A manifest read from its blob, ready to be stored.
struct Revision {
    digest: Digest,
    bytes: bytes::Bytes,
    manifest: Manifest,
}

impl Registry {
    /// Imports the `registry:2` repositories found in `source`'s Distribution tree; `None`
    /// imports from this registry's own blob store, in place. `progress` is told after each
    /// repository. Store failures stop the import (run it again to resume); everything
    /// else that cannot be imported is skipped and reported.
    pub async fn import_distribution(
        &self,
        actor: &Actor,
        source: Option<&dyn BlobStore>,
        progress: impl Fn(ImportProgress),
    ) -> Result<ImportReport> {
        let source_store: &dyn BlobStore = source.unwrap_or(&*self.blobs);
        let repositories = group_index(source_store.list_distribution_index().await?);
        self.note_write(
            self.meta
                .put_setting(IMPORTED_SETTING, IMPORT_STARTED)
                .await
                .map_err(RegistryError::from),
            false,
        )?;
        let mut report = ImportReport::default();
        let mut state = ImportProgress {
            repositories_total: repositories.len() as u64,
            ..Default::default()
        };
        for (name, indexed) in repositories {
            match name.parse::<RepositoryName>() {
                Ok(repository) => {
                    self.import_repository(source, &repository, indexed, &mut report)
                        .await?
                }
                Err(e) => report.skipped.push(Skipped {
                    item: name,
                    reason: format!("not a valid repository name: {e}"),
                }),
            }
            state.repositories_done += 1;
            state.copied_bytes = report.copied_bytes;
            progress(state);
        }
        self.note_write(
            self.meta
                .put_setting(IMPORTED_SETTING, &summary(&report))
                .await
                .map_err(RegistryError::from),
            false,
        )?;
        self.publish(
            actor,
            Change::Imported {
                repositories: report.repositories,
                manifests: report.manifests,
                tags: report.tags,
            },
        );
        Ok(report)
    }

    async fn import_repository(
        &self,
        source: Option<&dyn BlobStore>,
        repository: &RepositoryName,
        indexed: IndexedRepository,
        report: &mut ImportReport,
    ) -> Result<()> {
        let source_store: &dyn BlobStore = source.unwrap_or(&*self.blobs);
        let before = (report.manifests, report.blobs);

        // Layers and configs first: manifests are checked against them.
        let linked: Vec<(String, std::result::Result<u64, String>)> =
            futures_util::stream::iter(indexed.layers)
                .map(|text| async move {
                    let outcome = self.import_blob(source, repository, &text).await;
                    outcome.map(|linked| (text, linked))
                })
                .buffer_unordered(IN_FLIGHT)
                .try_collect()
                .await?;
        for (text, linked) in linked {
            match linked {
                Ok(copied) => {
                    report.blobs += 1;
                    report.copied_bytes += copied;
                }
                Err(reason) => report.skipped.push(Skipped {
                    item: format!("{repository}@{text}"),
                    reason,
                }),
            }
        }

        // Manifests, read from their blobs in the source.
        let mut revisions = Vec::new();
        for text in indexed.revisions {
            match self.read_revision(source_store, &text).await? {
                Ok(revision) => revisions.push(revision),
                Err(reason) => report.skipped.push(Skipped {
                    item: format!("{repository}@{text}"),
                    reason,
                }),
            }
        }
        let mut tags_of: HashMap<Digest, Vec<Tag>> = HashMap::new();
        for (name, link) in indexed.tags {
            let target = source_store.read_distribution_index(&link).await?;
            let digest = target
                .as_deref()
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|t| t.trim().parse::<Digest>().ok());
            match (name.parse::<Tag>(), digest) {
                (Ok(tag), Some(digest)) => tags_of.entry(digest).or_default().push(tag),
                (Err(e), _) => report.skipped.push(Skipped {
                    item: format!("{repository}:{name}"),
                    reason: format!("not a valid tag: {e}"),
                }),
                (_, None) => report.skipped.push(Skipped {
                    item: format!("{repository}:{name}"),
                    reason: "its link does not hold a digest".into(),
                }),
            }
        }

        // Images before the indexes that list them; an index of indexes waits a round.
        revisions.sort_by_key(|r| r.manifest.kind.is_index());
        let policy = self.policy_of(repository).await?;
        let mut stored: BTreeSet<Digest> = BTreeSet::new();
        let mut pending = revisions;
        loop {
            let mut refused = Vec::new();
            let count = pending.len();
            for revision in pending {
                let tags = tags_of.get(&revision.digest).cloned().unwrap_or_default();
                // An import run again never moves a tag an immutability rule protects.
                let immutable: Vec<Tag> = tags
                    .iter()
                    .filter(|t| policy.immutable_rule(repository, t.as_str()).is_some())
                    .cloned()
                    .collect();
                let outcome = self
                    .record_manifest(
                        repository,
                        &revision.digest,
                        &revision.manifest.media_type,
                        &revision.bytes,
                        &revision.manifest,
                        &tags,
                        &immutable,
                    )
                    .await;
                match outcome {
                    Ok(()) => {
                        report.manifests += 1;
                        report.tags += tags.len() as u64;
                        stored.insert(revision.digest);
                    }
                    Err(
                        e @ (RegistryError::MissingReferences(_) | RegistryError::WrongSizes(_)),
                    ) => refused.push((revision, e.to_string())),
                    Err(RegistryError::TagImmutable(tag)) => report.skipped.push(Skipped {
                        item: format!("{repository}:{tag}"),
                        reason: "the tag is immutable here and names another manifest".into(),
                    }),
                    Err(e) => return Err(e),
                }
            }
            let progressed = refused.len() < count;
            if refused.is_empty() || !progressed {
                for (revision, reason) in refused {
                    report.skipped.push(Skipped {
                        item: format!("{repository}@{}", revision.digest),
                        reason,
                    });
                }
                break;
            }
            pending = refused.into_iter().map(|(r, _)| r).collect();
        }
        for (digest, tags) in tags_of {
            if stored.contains(&digest) {
                continue;
            }
            for tag in tags {
                report.skipped.push(Skipped {
                    item: format!("{repository}:{tag}"),
                    reason: format!("its manifest {digest} was not imported"),
                });
            }
        }
        if (report.manifests, report.blobs) != before {
            report.repositories += 1;
        }
        Ok(())
    }

    /// Links one layer (or config) blob into `repository`, copying it from `source` first
    /// when that is another store. `Ok(Err(reason))` when it cannot be imported; the bytes
    /// copied otherwise.
    async fn import_blob(
        &self,
        source: Option<&dyn BlobStore>,
        repository: &RepositoryName,
        text: &str,
    ) -> Result<std::result::Result<u64, String>> {
        let Ok(digest) = text.parse::<Digest>() else {
            return Ok(Err("not a digest Berth supports".into()));
        };
        let mut copied = 0;
        if let Some(source) = source {
            match copy_blob(source, &*self.blobs, &digest).await? {
                Copied::Bytes(n) => copied = n,
                Copied::Present => {}
                Copied::Missing => return Ok(Err("linked, but its blob is not stored".into())),
                Copied::Corrupt => {
                    return Ok(Err("its stored bytes do not match its digest".into()))
                }
            }
        }
        let Some(size) = self.blobs.blob_size(&digest).await? else {
            return Ok(Err("linked, but its blob is not stored".into()));
        };
        let lease_until = berth_meta::now() + LEASE_SECONDS;
        let reserved = self
            .meta
            .reserve_blob(&digest, size, lease_until)
            .await
            .map_err(RegistryError::from);
        if self.note_write(reserved, false)? == berth_meta::BlobReservation::BeingDeleted {
            return Ok(Err("garbage collection is deleting it; import again".into()));
        }
        let linked = self
            .meta
            .add_blob(repository, &digest, size, None, None)
            .await
            .map_err(RegistryError::from);
        self.note_write(linked, false)?;
        Ok(Ok(copied))
    }

    /// Reads and parses the manifest `text` names from its blob. `Ok(Err(reason))` when it
    /// cannot be imported.
    async fn read_revision(
        &self,
        source: &dyn BlobStore,
        text: &str,
    ) -> Result<std::result::Result<Revision, String>> {
        let Ok(digest) = text.parse::<Digest>() else {
            return Ok(Err("not a digest Berth supports".into()));
        };
        let Some(size) = source.blob_size(&digest).await? else {
            return Ok(Err("its manifest blob is not stored".into()));
        };
        if size > self.config.max_manifest_bytes as u64 {
            return Ok(Err(format!(
                "the manifest is {size} bytes, over the limit of {}",
                self.config.max_manifest_bytes
            )));
        }
        let chunks: Vec<bytes::Bytes> = source
            .read_blob(&digest, 0..size)
            .await?
            .try_collect()
            .await
            .map_err(berth_storage::StorageError::Io)?;
        let bytes = bytes::Bytes::from(chunks.concat());
        if Digest::of(digest.algorithm(), &bytes) != digest {
            return Ok(Err("its stored bytes do not match its digest".into()));
        }
        match Manifest::parse(&bytes, None) {
            Ok(manifest) => Ok(Ok(Revision {
                digest,
                bytes,
                manifest,
            })),
            Err(ManifestError::SchemaVersion) => Ok(Err(
                "a schema 1 manifest (deprecated, and not served by Berth); push the image again"
                    .into(),
            )),
            Err(e) => Ok(Err(format!("not a manifest Berth can serve: {e}"))),
        }
    }

    /// Whether an import has started and not finished (a server resumes it; `berth check
    /// --repair` must not take its blobs for orphans meanwhile).
    pub async fn distribution_import_unfinished(&self) -> Result<bool> {
        let setting = self.meta.setting(IMPORTED_SETTING).await?;
        Ok(setting.as_deref() == Some(IMPORT_STARTED))
    }

    /// Whether this server should import `registry:2`'s repositories on its own at startup:
    /// an import started and did not finish; or its metadata has no repository, no import
    /// ran before, and Distribution's index in its blob store lists some.
    pub async fn distribution_import_due(&self) -> Result<bool> {
        match self.meta.setting(IMPORTED_SETTING).await?.as_deref() {
            Some(IMPORT_STARTED) => return Ok(true),
            Some(_) => return Ok(false),
            None => {}
        }
        let page = berth_meta::Page {
            last: None,
            limit: Some(1),
        };
        if !self.meta.list_repositories(page).await?.is_empty() {
            return Ok(false);
        }
        Ok(!self.blobs.list_distribution_index().await?.is_empty())
    }
}

/// What an import recorded, as kept in its setting and logged.
pub fn summary(report: &ImportReport) -> String {
    format!(
        "{} repositories, {} manifests, {} tags, {} blob links imported ({} bytes copied); {} skipped",
        report.repositories,
        report.manifests,
        report.tags,
        report.blobs,
        report.copied_bytes,
        report.skipped.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_distribution_index_files() {
        let files = [
            "library/nginx/_layers/sha256/aa/link",
            "library/nginx/_manifests/revisions/sha256/bb/link",
            "library/nginx/_manifests/tags/1.25/current/link",
            "library/nginx/_manifests/tags/1.25/index/sha256/bb/link",
            "busybox/_manifests/tags/latest/current/link",
            "stray-file",
        ];
        let grouped = group_index(files.iter().map(|s| s.to_string()).collect());
        assert_eq!(grouped.len(), 2, "{grouped:?}");
        let nginx = &grouped["library/nginx"];
        assert_eq!(nginx.layers.iter().collect::<Vec<_>>(), ["sha256:aa"]);
        assert_eq!(nginx.revisions.iter().collect::<Vec<_>>(), ["sha256:bb"]);
        assert_eq!(
            nginx.tags.get("1.25").map(String::as_str),
            Some("library/nginx/_manifests/tags/1.25/current/link")
        );
        assert!(grouped["busybox"].layers.is_empty());
        assert_eq!(grouped["busybox"].tags.len(), 1);
    }
}
