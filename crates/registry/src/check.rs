//! Integrity check and repair (`berth check [--repair]`): every blob in storage is read and
//! hashed against its digest and recorded size, every blob row must have its bytes, and every
//! manifest reference must point at something. It runs while the registry serves: reads
//! only, unless repairing.
//!
//! Repair makes the registry consistent, never by guessing content:
//! - A corrupt blob is moved into the quarantine (`berth/quarantine/`) and forgotten.
//! - A blob row whose bytes are gone is forgotten.
//! - A manifest that references a forgotten or absent blob is deleted (its pulls failed
//!   already; now they say it is unknown), unless an immutable tag names it. An index lacking
//!   a child is reported and kept: its other platforms still pull. With sparse manifests
//!   allowed, absent references are not problems.
//! - Nothing is repaired while an import of registry:2's repositories is unfinished: the
//!   blobs it has yet to link would look orphaned.
//! - Bytes no row knows of (and that are not a manifest's copy, as registry:2 leaves them)
//!   are filed for garbage collection, which deletes them after its grace period.

use std::collections::HashSet;

use berth_meta::{BlobKnown, Dangling};
use berth_oci::{Digest, RepositoryName};
use futures_util::{StreamExt, TryStreamExt};

use crate::{Actor, Registry, Result};

/// Blobs hashed at once: enough to keep a disk (or an object store) busy.
const IN_FLIGHT: usize = 4;
const PAGE: usize = 1000;
/// Dangling references fetched per round.
const DANGLING_LIMIT: u32 = 10_000;

/// Where a check stands, for a progress display: told after each blob.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckProgress {
    pub blobs: u64,
    pub bytes: u64,
}

/// What a check found (and, repairing, did).
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub blobs_checked: u64,
    pub bytes_read: u64,
    /// Blobs whose bytes do not hash to their digest, or differ from the recorded size.
    pub corrupt: Vec<String>,
    /// Blob rows whose bytes are not in storage.
    pub missing: Vec<String>,
    /// Stored bytes no row knows of.
    pub orphaned: Vec<String>,
    /// Manifest references that point at nothing.
    pub dangling: Vec<String>,
    /// With repair: what was done, one line each.
    pub repairs: Vec<String>,
}

impl CheckReport {
    pub fn problems(&self) -> usize {
        self.corrupt.len() + self.missing.len() + self.orphaned.len() + self.dangling.len()
    }
}

enum Verdict {
    Sound,
    Corrupt(String),
    Orphan(u64),
    /// Gone since it was listed.
    Vanished,
}

impl Registry {
    /// Checks every blob and reference; with `repair`, fixes what it found (module docs).
    pub async fn check(
        &self,
        actor: &Actor,
        repair: bool,
        progress: impl Fn(CheckProgress) + Sync,
    ) -> Result<CheckReport> {
        if repair {
            self.require_writable()?;
            if self.distribution_import_unfinished().await? {
                return Err(crate::RegistryError::Conflict(
                    "an import of registry:2's repositories has not finished, and the blobs it \
                     has yet to link would look orphaned; finish it (`berth import`) first"
                        .into(),
                ));
            }
        }
        let started = berth_meta::now();
        let mut report = CheckReport::default();
        // Digests whose bytes were found (sound or corrupt), for the rows' walk below.
        let mut stored: HashSet<String> = HashSet::new();
        let mut after: Option<Digest> = None;
        loop {
            let page = self.blobs.list_blobs(after.as_ref(), PAGE).await?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            let verdicts: Vec<(Digest, u64, Verdict)> = futures_util::stream::iter(page)
                .map(|digest| async move {
                    let (size, verdict) = self.verify_blob(&digest).await?;
                    Ok::<_, crate::RegistryError>((digest, size, verdict))
                })
                .buffer_unordered(IN_FLIGHT)
                .try_collect()
                .await?;
            for (digest, size, verdict) in verdicts {
                report.blobs_checked += 1;
                report.bytes_read += size;
                progress(CheckProgress {
                    blobs: report.blobs_checked,
                    bytes: report.bytes_read,
                });
                if !matches!(verdict, Verdict::Vanished) {
                    stored.insert(digest.to_string());
                }
                match verdict {
                    Verdict::Sound | Verdict::Vanished => {}
                    Verdict::Corrupt(why) => {
                        report.corrupt.push(format!("{digest}: {why}"));
                        if repair {
                            let moved = self.blobs.quarantine_blob(&digest).await?;
                            self.meta.remove_blob(&digest).await?;
                            report.repairs.push(format!(
                                "quarantined {digest} at {}",
                                moved.unwrap_or_else(|| "(gone meanwhile)".into())
                            ));
                        }
                    }
                    Verdict::Orphan(size) => {
                        report
                            .orphaned
                            .push(format!("{digest}: {size} bytes no row knows of"));
                        if repair {
                            // A row with no link: collectable once the grace period passes.
                            self.meta.reserve_blob(&digest, size, 0).await?;
                            report
                                .repairs
                                .push(format!("filed {digest} for garbage collection"));
                        }
                    }
                }
            }
            after = Some(last);
        }

        // Rows whose bytes must exist (not marked by a collection, not held by a commit that
        // started before the walk).
        let mut cursor: Option<String> = None;
        loop {
            let rows = self
                .meta
                .settled_blobs(cursor.as_deref(), started, PAGE as u32)
                .await?;
            let Some((last, _)) = rows.last().cloned() else {
                break;
            };
            for (digest, _) in rows {
                if stored.contains(&digest) {
                    continue;
                }
                let Ok(parsed) = digest.parse::<Digest>() else {
                    continue;
                };
                // Committed after its page was listed? Then it is there now.
                if self.blobs.blob_size(&parsed).await?.is_some() {
                    continue;
                }
                report
                    .missing
                    .push(format!("{digest}: recorded, but its bytes are not stored"));
                if repair {
                    self.meta.remove_blob(&parsed).await?;
                    report.repairs.push(format!("forgot {digest}"));
                }
            }
            cursor = Some(last);
        }

        // References that point at nothing (after the repairs above, which may add some).
        for dangling in self.meta.dangling_references(DANGLING_LIMIT).await? {
            let (repository, manifest, what) = match &dangling {
                Dangling::Blob {
                    repository,
                    manifest,
                    blob,
                } => (repository, manifest, format!("blob {blob}")),
                Dangling::Child {
                    repository,
                    manifest,
                    child,
                } => (repository, manifest, format!("child manifest {child}")),
            };
            if self.config.allow_sparse_manifests {
                continue;
            }
            report.dangling.push(format!(
                "{repository}@{manifest} references {what}, which is absent"
            ));
            if !repair {
                continue;
            }
            let (Ok(r), Ok(d)) = (
                repository.parse::<RepositoryName>(),
                manifest.parse::<Digest>(),
            ) else {
                continue;
            };
            if let Dangling::Child { .. } = dangling {
                // Its other platforms still pull: an index is not thrown away for one.
                report.repairs.push(format!(
                    "kept {repository}@{manifest}: only its {what} is absent"
                ));
                continue;
            }
            let policy = self.policy_of(&r).await?;
            let inventory = self.meta.repository_inventory(&r).await?;
            if let Some(tag) = inventory
                .tags
                .iter()
                .find(|t| t.manifest == d.as_str() && policy.immutable_rule(&r, &t.name).is_some())
            {
                report.repairs.push(format!(
                    "kept {repository}@{manifest}: its tag {} is immutable",
                    tag.name
                ));
                continue;
            }
            if self.meta.delete_manifest(&r, &d).await? {
                self.manifests.invalidate(&r);
                self.publish(
                    actor,
                    crate::Change::ManifestDeleted {
                        repository: r.clone(),
                        digest: d,
                    },
                );
                report.repairs.push(format!(
                    "deleted {repository}@{manifest} (it referenced {what})"
                ));
            }
        }
        Ok(report)
    }

    /// Reads `digest` whole, hashing it; the bytes read and what they say.
    async fn verify_blob(&self, digest: &Digest) -> Result<(u64, Verdict)> {
        let Some(size) = self.blobs.blob_size(digest).await? else {
            return Ok((0, Verdict::Vanished));
        };
        let mut hasher = digest.algorithm().hasher();
        let mut stream = self.blobs.read_blob(digest, 0..size).await?;
        let mut read = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(berth_storage::StorageError::Io)?;
            read += chunk.len() as u64;
            hasher.update(&chunk);
        }
        let computed = hasher.finish();
        if &computed != digest {
            return Ok((
                read,
                Verdict::Corrupt(format!("its bytes hash to {computed}")),
            ));
        }
        Ok((
            read,
            match self.meta.blob_known(digest).await? {
                BlobKnown::Blob(recorded) if recorded != read => {
                    Verdict::Corrupt(format!("{read} bytes stored, {recorded} recorded"))
                }
                BlobKnown::Blob(_) | BlobKnown::Manifest => Verdict::Sound,
                BlobKnown::Unknown => Verdict::Orphan(read),
            },
        ))
    }
}
