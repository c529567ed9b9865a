//! Uploads in progress, as this process knows them: their sessions and hash states.
//!
//! Hashing happens while bytes stream to storage, so finishing an upload costs nothing extra.
//! The state after the last accepted chunk is kept in memory per upload, and saved in the
//! metadata store with the session; when this process does not have it (restart, another
//! replica took the previous chunk) the saved state is used, and only when that is missing or
//! stale are the bytes already stored read back. No upload depends on this process surviving. Each upload also has a lock
//! here, so two requests never append to the same upload at once.
//!
//! Sessions started here are remembered too, so the chunks and the final `PUT` of an upload
//! skip the metadata store; the store stays the record (a session not in memory is looked up
//! there), and finishing, cancelling or purging an upload forgets it here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use berth_meta::{SavedHash, UploadSession};
use berth_oci::{Algorithm, Hasher};
use berth_storage::BlobStore;
use futures_util::StreamExt;

use crate::error::RegistryError;

/// The hash of an upload's first `offset` bytes.
pub struct HashState {
    pub offset: u64,
    pub hasher: Hasher,
}

impl HashState {
    /// Whether these bytes hash to `digest`.
    pub fn hashes_to(&self, digest: &berth_oci::Digest) -> bool {
        self.hasher.algorithm() == digest.algorithm() && &self.hasher.clone().finish() == digest
    }
}

pub type UploadSlot = Arc<tokio::sync::Mutex<Option<HashState>>>;

/// What this process knows of one upload: its session, if it started here,
/// and the slot holding its hash state.
#[derive(Default)]
struct Known {
    session: Option<UploadSession>,
    slot: UploadSlot,
}

#[derive(Default)]
pub struct Uploads {
    known: Mutex<HashMap<String, Known>>,
}

impl Uploads {
    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot of upload `id`; hold its lock for the whole request.
    pub fn slot(&self, id: &str) -> UploadSlot {
        self.known().entry(id.to_owned()).or_default().slot.clone()
    }

    /// Keeps a session just stored in the metadata store, with the hash state of its
    /// (still empty) upload, for the upload's next requests.
    pub fn started(&self, session: UploadSession) {
        let state = HashState {
            offset: 0,
            hasher: session.algorithm.hasher(),
        };
        let id = session.id.clone();
        let known = Known {
            session: Some(session),
            slot: Arc::new(tokio::sync::Mutex::new(Some(state))),
        };
        self.known().insert(id, known);
    }

    /// The session of upload `id`, if this process knows it.
    pub fn session(&self, id: &str) -> Option<UploadSession> {
        self.known().get(id).and_then(|k| k.session.clone())
    }

    /// Drops everything known about upload `id` (finished, cancelled or purged).
    pub fn forget(&self, id: &str) {
        self.known().remove(id);
    }
}

/// The hash of upload `id`'s stored bytes with `algorithm`: from this process's `cached`
/// state, else from the state `saved` in the metadata store (by another replica, or before a
/// restart), when either covers exactly `size` bytes; else, for stores that can, by reading
/// the bytes back.
pub async fn hasher_at(
    blobs: &dyn BlobStore,
    id: &str,
    size: u64,
    algorithm: Algorithm,
    cached: Option<HashState>,
    saved: Option<&SavedHash>,
) -> Result<Hasher, RegistryError> {
    if let Some(state) = cached {
        if state.offset == size && state.hasher.algorithm() == algorithm {
            return Ok(state.hasher);
        }
    }
    if size == 0 {
        return Ok(algorithm.hasher());
    }
    if let Some(saved) = saved.filter(|s| s.offset == size) {
        match Hasher::from_state(&saved.state) {
            Ok(h) if h.algorithm() == algorithm && h.len() == size => return Ok(h),
            Ok(_) => {}
            Err(e) => tracing::warn!("upload {id}: {e}; reading its bytes back instead"),
        }
    }
    let mut hasher = algorithm.hasher();
    let mut stream = blobs.read_upload(id).await?;
    let mut seen = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| RegistryError::Storage(berth_storage::StorageError::Io(e)))?;
        seen += chunk.len() as u64;
        hasher.update(&chunk);
    }
    if seen != size {
        return Err(berth_storage::StorageError::OffsetMismatch {
            expected: size,
            actual: seen,
        }
        .into());
    }
    Ok(hasher)
}
