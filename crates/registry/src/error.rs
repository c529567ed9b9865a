//! What can go wrong in the registry's rules, in the registry's terms. The API layer maps
//! each case to an HTTP status and an OCI error code, in one place.

use berth_meta::MetaError;
use berth_oci::{DigestError, ManifestError, NameError};
use berth_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("repository {0} is not known")]
    NameUnknown(String),
    #[error("{0} does not exist")]
    ManifestUnknown(String),
    #[error("{0}")]
    BlobUnknown(String),
    #[error("no upload {id} in {repository}")]
    UploadUnknown { repository: String, id: String },
    /// A digest that is malformed, or not the one the content hashes to.
    #[error("{0}")]
    DigestInvalid(String),
    #[error("{0} is not a valid tag")]
    TagInvalid(String),
    #[error(transparent)]
    ManifestInvalid(#[from] ManifestError),
    #[error("descriptor sizes do not match: {}", .0.join("; "))]
    WrongSizes(Vec<String>),
    #[error("not in this repository: {}", .0.join(", "))]
    MissingReferences(Vec<String>),
    /// A chunk that does not continue the upload where it stands.
    #[error("{0}")]
    RangeInvalid(String),
    #[error("deletes are disabled on this registry")]
    DeletesDisabled,
    /// A tag an immutability rule protects would be moved or deleted; the message names the
    /// rule.
    #[error("{0}")]
    Immutable(String),
    /// Storing this would take the project past its quota; the message gives usage and limit.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The store refused to move this immutable tag (the registry then names the rule).
    #[error("tag {0} is immutable")]
    TagImmutable(String),
    /// Writes are refused: the registry is in read-only mode, for this reason.
    #[error("{0}; pulls still work")]
    ReadOnly(String),
    #[error("{0}; finish or cancel some before starting more")]
    TooManyUploads(String),
    /// Another change holds what this one needs; retrying later succeeds.
    #[error("{0}")]
    Conflict(String),
    /// The client's request body failed or stalled while it was read.
    #[error("{0}")]
    BodyFailed(String),
    #[error(transparent)]
    Storage(StorageError),
    #[error(transparent)]
    Meta(MetaError),
}

impl RegistryError {
    /// The storage holding blobs or metadata is full (ENOSPC, a quota, SQLITE_FULL).
    pub fn is_storage_full(&self) -> bool {
        match self {
            RegistryError::Storage(e) => e.is_storage_full(),
            RegistryError::Meta(e) => e.is_storage_full(),
            _ => false,
        }
    }

    /// A store cannot serve right now; the same request may succeed shortly.
    pub fn is_unavailable(&self) -> bool {
        match self {
            RegistryError::Storage(e) => e.is_transient(),
            RegistryError::Meta(e) => matches!(e, MetaError::Unavailable(_)),
            _ => false,
        }
    }
}

impl From<StorageError> for RegistryError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::BlobNotFound => RegistryError::BlobUnknown(e.to_string()),
            StorageError::OffsetMismatch { .. } => RegistryError::RangeInvalid(e.to_string()),
            StorageError::Client(e) => RegistryError::BodyFailed(e.to_string()),
            other => RegistryError::Storage(other),
        }
    }
}

impl From<MetaError> for RegistryError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::MissingReferences(missing) => RegistryError::MissingReferences(missing),
            MetaError::WrongSizes(wrong) => RegistryError::WrongSizes(wrong),
            MetaError::Conflict(detail) => RegistryError::Conflict(detail),
            MetaError::TooManyUploads { .. } => RegistryError::TooManyUploads(e.to_string()),
            MetaError::TagImmutable(tag) => RegistryError::TagImmutable(tag),
            MetaError::QuotaExceeded { .. } => RegistryError::QuotaExceeded(quota_message(&e)),
            other => RegistryError::Meta(other),
        }
    }
}

impl From<NameError> for RegistryError {
    fn from(e: NameError) -> Self {
        match e {
            NameError::InvalidTag(t) => RegistryError::TagInvalid(t),
            other => RegistryError::DigestInvalid(other.to_string()),
        }
    }
}

impl From<DigestError> for RegistryError {
    fn from(e: DigestError) -> Self {
        RegistryError::DigestInvalid(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, RegistryError>;

/// The quota refusal as clients read it.
pub(crate) fn quota_message(e: &MetaError) -> String {
    match e {
        MetaError::QuotaExceeded {
            project,
            usage,
            size,
            limit,
        } => format!(
            "storage quota exceeded: project {project} stores {usage} of its {limit} bytes, \
             and this needs {size} more"
        ),
        other => other.to_string(),
    }
}
