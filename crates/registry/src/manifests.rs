//! Manifests and tags: push (validated, recorded with all its tags in one transaction), get,
//! delete by digest, untag. Manifests are kept byte for byte with the media type they were
//! pushed with.

use std::sync::Arc;

use berth_meta::{NewManifest, StoredManifest};
use berth_oci::manifest::MANIFEST_MEDIA_TYPES;
use berth_oci::{Digest, Manifest, Reference, RepositoryName, Tag};

use crate::policy::Policy;
use crate::{Actor, Change, Registry, RegistryError, Result};

/// What a push stored.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub digest: Digest,
    /// The manifest's `subject`, echoed to the client as `OCI-Subject`.
    pub subject: Option<Digest>,
}

impl Registry {
    /// The manifest `reference` names in `repository`. `pull` publishes a pull event (a GET,
    /// not a HEAD).
    pub async fn manifest(
        &self,
        actor: &Actor,
        repository: &RepositoryName,
        reference: &Reference,
        pull: bool,
    ) -> Result<Arc<StoredManifest>> {
        let Some(m) = self.manifests.get(repository, reference).await? else {
            return Err(RegistryError::ManifestUnknown(format!(
                "{repository}:{reference}"
            )));
        };
        if pull {
            self.pulls.note(repository, reference);
            self.publish(
                actor,
                Change::Pulled {
                    repository: repository.clone(),
                    reference: reference.clone(),
                },
            );
        }
        Ok(m)
    }

    /// Validates and stores a manifest pushed as `content_type` under `reference`, tagged
    /// also with `extra_tags` (`?tag=`). A push by digest must hash to it (with the digest's
    /// algorithm, which is then the manifest's digest); references must be in the repository
    /// with their declared sizes (unless sparse manifests are allowed and they are absent).
    pub async fn push_manifest(
        &self,
        actor: &Actor,
        repository: &RepositoryName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: &[u8],
        extra_tags: &[&str],
    ) -> Result<Pushed> {
        self.require_writable()?;
        let manifest = Manifest::parse(bytes, content_type)?;
        let (digest, mut tags) = match reference {
            Reference::Digest(claimed) => {
                let computed = Digest::of(claimed.algorithm(), bytes);
                if &computed != claimed {
                    return Err(RegistryError::DigestInvalid(format!(
                        "the manifest hashes to {computed}, not {claimed}"
                    )));
                }
                (computed, Vec::new())
            }
            Reference::Tag(tag) => (Digest::sha256_of(bytes), vec![tag.clone()]),
        };
        for tag in extra_tags {
            tags.push(tag.parse::<Tag>()?);
        }
        // Serve back exactly the type the client pushed, when it is a manifest type.
        let media_type = content_type
            .filter(|ct| MANIFEST_MEDIA_TYPES.contains(ct))
            .unwrap_or(&manifest.media_type);
        let policy = self.policy_of(repository).await?;
        let immutable: Vec<Tag> = tags
            .iter()
            .filter(|t| policy.immutable_rule(repository, t.as_str()).is_some())
            .cloned()
            .collect();
        let recorded = self
            .record_manifest(
                repository, &digest, media_type, bytes, &manifest, &tags, &immutable,
            )
            .await;
        if let Err(RegistryError::TagImmutable(tag)) = &recorded {
            return Err(immutable_refusal(&policy, repository, tag, "moved"));
        }
        recorded?;
        self.publish(
            actor,
            Change::ManifestPushed {
                repository: repository.clone(),
                reference: reference.clone(),
                digest: digest.clone(),
                tags,
            },
        );
        Ok(Pushed {
            digest,
            subject: manifest.subject,
        })
    }

    /// Stores a parsed, validated manifest with its references and `tags` in one transaction
    /// (references checked by the store), and drops the repository's cached manifests.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn record_manifest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        media_type: &str,
        bytes: &[u8],
        manifest: &Manifest,
        tags: &[Tag],
        immutable_tags: &[Tag],
    ) -> Result<()> {
        let annotations_json = manifest
            .annotations
            .as_ref()
            .and_then(|a| serde_json::to_string(a).ok());
        let stored = self
            .meta
            .put_manifest(NewManifest {
                repository,
                digest,
                media_type,
                content: bytes,
                blobs: &manifest.blobs,
                children: &manifest.children,
                allow_missing: self.config.allow_sparse_manifests,
                subject: manifest.subject.as_ref(),
                artifact_type: manifest.artifact_type.as_deref(),
                annotations_json,
                tags,
                immutable_tags,
            })
            .await
            .map_err(RegistryError::from);
        self.manifests.invalidate(repository);
        self.note_write(stored, true)
    }

    /// Deletes a manifest and its tags (by digest), or removes a tag only (by tag).
    pub async fn delete_manifest(
        &self,
        actor: &Actor,
        repository: &RepositoryName,
        reference: &Reference,
    ) -> Result<()> {
        self.require_writable()?;
        self.require_deletes()?;
        let doomed = match reference {
            Reference::Tag(tag) => Doomed::Tag(tag),
            Reference::Digest(digest) => Doomed::Manifest(digest),
        };
        self.refuse_deleting_immutable(repository, doomed).await?;
        let (deleted, change) = match reference {
            Reference::Digest(d) => (
                self.meta.delete_manifest(repository, d).await,
                Change::ManifestDeleted {
                    repository: repository.clone(),
                    digest: d.clone(),
                },
            ),
            Reference::Tag(t) => (
                self.meta.delete_tag(repository, t).await,
                Change::TagDeleted {
                    repository: repository.clone(),
                    tag: t.clone(),
                },
            ),
        };
        self.manifests.invalidate(repository);
        if !deleted? {
            return Err(RegistryError::ManifestUnknown(format!(
                "{repository}:{reference}"
            )));
        }
        self.publish(actor, change);
        Ok(())
    }
}

impl Registry {
    /// Deletes a whole repository: tags, manifests and links. Its bytes go with the next
    /// collection where nothing else references them.
    pub async fn delete_repository(
        &self,
        actor: &Actor,
        repository: &RepositoryName,
    ) -> Result<()> {
        self.require_writable()?;
        self.require_deletes()?;
        self.refuse_deleting_immutable(repository, Doomed::Repository)
            .await?;
        let deleted = self.meta.delete_repository(repository).await;
        self.manifests.invalidate(repository);
        if !deleted? {
            return Err(RegistryError::NameUnknown(repository.to_string()));
        }
        self.publish(
            actor,
            Change::RepositoryDeleted {
                repository: repository.clone(),
            },
        );
        Ok(())
    }
}

impl Registry {
    /// Refuses a deletion when an immutability rule protects a tag it would take.
    async fn refuse_deleting_immutable(
        &self,
        repository: &RepositoryName,
        doomed: Doomed<'_>,
    ) -> Result<()> {
        let policy = self.policy_of(repository).await?;
        if policy.immutable.is_empty() {
            return Ok(());
        }
        let tags: Vec<String> = match doomed {
            Doomed::Tag(tag) => vec![tag.as_str().to_owned()],
            Doomed::Manifest(_) | Doomed::Repository => {
                let inventory = self.meta.repository_inventory(repository).await?;
                inventory
                    .tags
                    .into_iter()
                    .filter(|t| match doomed {
                        Doomed::Manifest(digest) => t.manifest == digest.as_str(),
                        _ => true,
                    })
                    .map(|t| t.name)
                    .collect()
            }
        };
        match tags
            .iter()
            .find(|t| policy.immutable_rule(repository, t).is_some())
        {
            Some(tag) => Err(immutable_refusal(&policy, repository, tag, "deleted")),
            None => Ok(()),
        }
    }
}

/// What a deletion takes, for the immutability check.
#[derive(Clone, Copy)]
enum Doomed<'a> {
    Tag(&'a Tag),
    /// A manifest and every tag on it.
    Manifest(&'a Digest),
    /// A repository and every tag in it.
    Repository,
}

/// The refusal naming the rule that protects `tag`.
fn immutable_refusal(
    policy: &Policy,
    repository: &RepositoryName,
    tag: &str,
    verb: &str,
) -> RegistryError {
    let rule = policy
        .immutable_rule(repository, tag)
        .map(ToString::to_string)
        .unwrap_or_else(|| "an immutability rule".into());
    RegistryError::Immutable(format!(
        "tag {tag} of {repository} is immutable and cannot be {verb}: {rule} of project {}; \
         a project admin can lift the rule",
        repository.project()
    ))
}
