//! Blobs as a repository serves them: only what was pushed or mounted there.

use std::ops::Range;
use std::sync::Arc;

use berth_meta::StoredManifest;
use berth_oci::{Digest, Reference, RepositoryName};
use berth_storage::ByteStream;

use crate::{Actor, Change, Registry, RegistryError, Result};

/// What a blob digest names in a repository.
pub enum BlobLookup {
    Blob {
        size: u64,
    },
    /// Clients may fetch a manifest through the blob endpoint by its digest.
    Manifest(Arc<StoredManifest>),
}

impl Registry {
    pub async fn blob(&self, repository: &RepositoryName, digest: &Digest) -> Result<BlobLookup> {
        if let Some(size) = self.meta.repository_blob(repository, digest).await? {
            return Ok(BlobLookup::Blob { size });
        }
        let reference = Reference::Digest(digest.clone());
        match self.manifests.get(repository, &reference).await? {
            Some(m) => Ok(BlobLookup::Manifest(m)),
            None => Err(RegistryError::BlobUnknown(format!(
                "{digest} is not in {repository}"
            ))),
        }
    }

    /// The bytes of `span` of a blob (the caller looked it up in its repository first).
    pub async fn read_blob(&self, digest: &Digest, span: Range<u64>) -> Result<ByteStream> {
        Ok(self.blobs.read_blob(digest, span).await?)
    }

    /// Where a client may download a blob directly instead (a presigned object-store URL),
    /// when downloads are redirected and the store has such URLs.
    pub async fn download_url(&self, digest: &Digest) -> Result<Option<String>> {
        if !self.config.redirect_downloads {
            return Ok(None);
        }
        Ok(self.blobs.blob_url(digest).await?)
    }

    /// Unlinks a blob from a repository: its bytes go once nothing reaches them.
    pub async fn delete_blob(
        &self,
        actor: &Actor,
        repository: &RepositoryName,
        digest: &Digest,
    ) -> Result<()> {
        self.require_writable()?;
        self.require_deletes()?;
        if !self.meta.unlink_blob(repository, digest).await? {
            return Err(RegistryError::BlobUnknown(format!(
                "{digest} is not in {repository}"
            )));
        }
        self.publish(
            actor,
            Change::BlobDeleted {
                repository: repository.clone(),
                digest: digest.clone(),
            },
        );
        Ok(())
    }
}
