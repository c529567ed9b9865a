//! Pure OCI Distribution vocabulary: digests, repository names, references, manifests and the
//! spec's error codes. Nothing here does I/O, so every rule can be unit-tested in isolation and
//! shared by the storage, metadata and HTTP layers.

pub mod digest;
pub mod error;
pub mod manifest;
pub mod name;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::ErrorCode;
pub use manifest::{Descriptor, Manifest, ManifestError, ManifestKind, Referenced};
pub use name::{NameError, Reference, RepositoryName, Tag};
