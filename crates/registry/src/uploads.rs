//! Blob uploads: a single-request push, sessions taking chunks in order, the final commit, and
//! cross-repository mounts.
//!
//! Bytes are hashed as they stream to storage; a blob is committed only after the computed
//! digest equals the one the client named. A wrong digest discards the upload. A commit
//! reserves its blob in the metadata store before the bytes move into place (see [`crate::gc`]).

use berth_meta::{SavedHash, UploadSession};
use berth_oci::{Algorithm, Digest, Hasher, RepositoryName};
use berth_storage::{ByteStream, StorageError};
use futures_util::StreamExt;
use rand::RngCore;
use std::sync::{Arc, Mutex};

use crate::upload_state::{hasher_at, HashState};
use crate::{Actor, Change, Registry, RegistryError, Result};

/// A chunk's place in the upload, `start..=end`, as `Content-Range` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRange {
    pub start: u64,
    pub end: u64,
}

/// Uploads smaller than this do not save their hash state after a chunk: reading a few
/// megabytes back costs less than a metadata write per chunk of every small push. It is the
/// blob stores' read-back limit, so no store is asked to read back more.
pub const SAVE_HASH_FROM: u64 = berth_storage::READ_BACK_LIMIT;

/// 128 random bits: session ids are capabilities and must not be guessable.
pub(crate) fn new_upload_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Registry {
    /// Makes `digest` of `from` visible in `to`; `false` when `from` does not have it (the
    /// caller then starts a plain upload, as the spec asks). The caller checked that the
    /// actor may read `from`.
    pub async fn mount_blob(
        &self,
        actor: &Actor,
        from: &RepositoryName,
        to: &RepositoryName,
        digest: &Digest,
    ) -> Result<bool> {
        self.require_writable()?;
        let quota = self.quota_of(to).await?;
        let mounted = self
            .meta
            .mount_blob(from, to, digest, quota.as_ref())
            .await?
            .is_some();
        if mounted {
            self.publish(
                actor,
                Change::BlobMounted {
                    repository: to.clone(),
                    from: from.clone(),
                    digest: digest.clone(),
                },
            );
        }
        Ok(mounted)
    }

    /// A single-request push: the whole blob in one body, verified and committed, or nothing
    /// kept at all.
    pub async fn push_blob(
        &self,
        actor: &Actor,
        repository: &RepositoryName,
        digest: &Digest,
        length: Option<u64>,
        body: ByteStream,
    ) -> Result<()> {
        self.require_writable()?;
        if let (Some(length), Some(quota)) = (length, self.quota_of(repository).await?) {
            // Refused before a byte is read when the size is known.
            self.check_quota(&quota, Some(digest), length).await?;
        }
        let id = new_upload_id();
        let outcome = async {
            self.blobs.create_upload(&id).await?;
            let appended = self
                .blobs
                .append_upload(&id, 0, body, digest.algorithm().hasher())
                .await?;
            self.complete(
                actor,
                repository,
                &id,
                digest,
                appended.hasher,
                appended.size,
            )
            .await
        }
        .await;
        if outcome.is_err() {
            // No session refers to these bytes: a failed single-request push keeps nothing.
            if let Err(e) = self.blobs.delete_upload(&id).await {
                tracing::warn!("discarding a failed single-request upload: {e}");
            }
        }
        self.note_write(outcome, true)
    }

    /// Opens an upload session owned by the actor, within the configured limits.
    pub async fn start_upload(
        &self,
        actor: &Actor,
        repository: &RepositoryName,
        algorithm: Algorithm,
    ) -> Result<String> {
        self.require_writable()?;
        let id = new_upload_id();
        let session = UploadSession {
            id: id.clone(),
            repository: repository.clone(),
            algorithm,
            created_at: berth_meta::now(),
            owner: actor.name.clone(),
            hash_state: None,
        };
        let outcome = async {
            self.blobs.create_upload(&id).await?;
            if let Err(e) = self
                .meta
                .create_upload(&session, self.config.upload_limits)
                .await
            {
                self.blobs.delete_upload(&id).await?;
                return Err(e.into());
            }
            Ok(())
        }
        .await;
        self.note_write(outcome, false)?;
        self.uploads.started(session);
        Ok(id)
    }

    async fn session(&self, repository: &RepositoryName, id: &str) -> Result<UploadSession> {
        let known = match self.uploads.session(id) {
            Some(s) => Some(s),
            None => self.meta.get_upload(id).await?,
        };
        match known {
            Some(s) if &s.repository == repository => Ok(s),
            _ => Err(RegistryError::UploadUnknown {
                repository: repository.to_string(),
                id: id.to_owned(),
            }),
        }
    }

    /// Bytes stored so far: the hash state's offset when this process took the last chunk
    /// and the client continues from there (`range`, or no range: a streamed chunk), else
    /// storage's answer — another replica may have taken chunks since. Only an append may
    /// trust the state, since the store re-checks the offset before writing: a state gone
    /// stale (a later chunk went to another replica) is refused there, before a byte is
    /// written, as a range the client must resume from.
    async fn current_size(
        &self,
        id: &str,
        state: Option<&HashState>,
        range: Option<ChunkRange>,
    ) -> Result<u64> {
        if let Some(state) = state {
            if range.is_none_or(|r| r.start == state.offset) {
                return Ok(state.offset);
            }
        }
        self.blobs
            .upload_size(id)
            .await?
            .ok_or(RegistryError::Storage(
                berth_storage::StorageError::UploadNotFound,
            ))
    }

    /// Appends a chunk; it must continue the upload where it stands (`range.start` equal to
    /// the bytes received, its length equal to `length` when both are given). Returns the
    /// upload's new size.
    pub async fn append_upload(
        &self,
        repository: &RepositoryName,
        id: &str,
        range: Option<ChunkRange>,
        length: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        self.require_writable()?;
        let session = self.session(repository, id).await?;
        let slot = self.uploads.slot(id);
        let mut state = slot.lock().await;
        // A streamed chunk (no range) goes where this process's state says, unasked; should
        // the store find that stale, it refuses before reading a byte, and the chunk goes
        // where the store says instead.
        let trusted_state = range.is_none() && state.is_some();
        let (size, hasher) = self
            .append_point(repository, &session, id, state.take(), range, length)
            .await?;
        let (body, unread) = Unread::wrap(body);
        let mut appended = self.blobs.append_upload(id, size, body, hasher).await;
        if let Err(StorageError::OffsetMismatch { .. }) = &appended {
            if let Some(body) = unread.take().filter(|_| trusted_state) {
                let (size, hasher) = self
                    .append_point(repository, &session, id, None, range, length)
                    .await?;
                appended = self.blobs.append_upload(id, size, body, hasher).await;
            }
        }
        let appended = self.note_write(appended.map_err(RegistryError::from), true)?;
        let new_size = appended.size;
        if new_size >= SAVE_HASH_FROM {
            self.save_hash(id, &appended.hasher).await;
        }
        *state = Some(HashState {
            offset: appended.size,
            hasher: appended.hasher,
        });
        Ok(new_size)
    }

    /// Where the next chunk of an upload goes, within the quota, and the hash of the bytes
    /// before it (from `state` when that covers them).
    async fn append_point(
        &self,
        repository: &RepositoryName,
        session: &UploadSession,
        id: &str,
        state: Option<HashState>,
        range: Option<ChunkRange>,
        length: Option<u64>,
    ) -> Result<(u64, Hasher)> {
        let size = self.current_size(id, state.as_ref(), range).await?;
        check_chunk(range, length, size)?;
        if let (Some(length), Some(quota)) = (length, self.quota_of(repository).await?) {
            self.check_quota(&quota, None, size + length).await?;
        }
        let saved = self.saved_hash(session, state.as_ref(), size).await?;
        let hasher = hasher_at(
            &*self.blobs,
            id,
            size,
            session.algorithm,
            state,
            saved.as_ref(),
        )
        .await?;
        Ok((size, hasher))
    }

    /// Finishes an upload with an optional last chunk: verifies the digest and commits the
    /// blob, or discards the upload when the bytes hash to something else.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_upload(
        &self,
        actor: &Actor,
        repository: &RepositoryName,
        id: &str,
        digest: &Digest,
        range: Option<ChunkRange>,
        length: Option<u64>,
        last_chunk: Option<ByteStream>,
    ) -> Result<()> {
        self.require_writable()?;
        let session = self.session(repository, id).await?;
        let slot = self.uploads.slot(id);
        let mut state = slot.lock().await;
        if last_chunk.is_none() && range.is_none() {
            if let Some(known) = state.take_if(|known| known.hashes_to(digest)) {
                // The bytes this process hashed are the digest the client names, so they are
                // all the bytes it sent (short of a SHA-256 collision): the state cannot be
                // stale, and storage need not be asked its size. The store's commit still
                // checks the upload is there (and, on S3, its own hash of it).
                let outcome = self
                    .complete(actor, repository, id, digest, known.hasher, known.offset)
                    .await;
                return self.note_write(outcome, true);
            }
        }
        // From storage, not the hash state: a stale state must not decide the digest check.
        let size = self.current_size(id, None, None).await?;
        check_chunk(range, length, size)?;
        let saved = self.saved_hash(&session, state.as_ref(), size).await?;
        let hasher = hasher_at(
            &*self.blobs,
            id,
            size,
            digest.algorithm(),
            state.take(),
            saved.as_ref(),
        )
        .await?;
        let outcome = async {
            let (hasher, size) = match last_chunk {
                Some(body) => {
                    let appended = self.blobs.append_upload(id, size, body, hasher).await?;
                    (appended.hasher, appended.size)
                }
                None => (hasher, size),
            };
            self.complete(actor, repository, id, digest, hasher, size)
                .await
        }
        .await;
        self.note_write(outcome, true)
    }

    /// The hash state saved in the metadata store for an upload of `size` bytes, when this
    /// process's own `state` does not cover them (another replica took the last chunks, or
    /// this process restarted): the session as this process knows it, else as stored now.
    async fn saved_hash(
        &self,
        session: &UploadSession,
        state: Option<&HashState>,
        size: u64,
    ) -> Result<Option<SavedHash>> {
        let covers = |saved: &SavedHash| saved.offset == size;
        if state.is_some_and(|s| s.offset == size) {
            return Ok(None);
        }
        if let Some(saved) = session.hash_state.as_ref().filter(|s| covers(s)) {
            return Ok(Some(saved.clone()));
        }
        if size < SAVE_HASH_FROM {
            return Ok(None); // never saved: read back
        }
        let stored = self.meta.get_upload(&session.id).await?;
        Ok(stored.and_then(|s| s.hash_state).filter(covers))
    }

    /// Saves the hash state after a chunk, before the client hears the chunk was taken: the
    /// next chunk may go to another replica, which must find it (an object store cannot read
    /// an unfinished upload back to rebuild it). A failed save is not the chunk's failure:
    /// this process still holds the state, and elsewhere the upload must start over.
    async fn save_hash(&self, id: &str, hasher: &Hasher) {
        let saved = SavedHash {
            offset: hasher.len(),
            state: hasher.state(),
        };
        if let Err(e) = self.meta.save_upload_hash(id, &saved).await {
            tracing::warn!("saving the hash state of upload {id}: {e}");
        }
    }

    /// Verifies the digest and commits, or discards the upload.
    async fn complete(
        &self,
        actor: &Actor,
        repository: &RepositoryName,
        id: &str,
        digest: &Digest,
        hasher: Hasher,
        size: u64,
    ) -> Result<()> {
        let computed = hasher.finish();
        self.uploads.forget(id);
        if &computed != digest {
            self.blobs.delete_upload(id).await?;
            self.meta.delete_upload(id).await?;
            return Err(RegistryError::DigestInvalid(format!(
                "the uploaded bytes hash to {computed}, not {digest}"
            )));
        }
        let quota = self.quota_of(repository).await?;
        if let Some(q) = &quota {
            if let Err(e) = self.check_quota(q, Some(digest), size).await {
                self.discard_upload(id).await;
                return Err(e);
            }
        }
        // Reserve before placing the bytes: garbage collection leaves a reserved blob alone,
        // and a refusal here (a full disk, a collection in progress) leaves the upload staged.
        self.reserve_blob(digest, size).await?;
        self.blobs.commit_upload(id, digest).await?;
        let linked = self
            .meta
            .add_blob(repository, digest, size, Some(id), quota.as_ref())
            .await;
        if let Err(e @ berth_meta::MetaError::QuotaExceeded { .. }) = &linked {
            // A parallel push took the room since the check: the bytes stay unlinked, for
            // garbage collection once the reservation lapses.
            let refusal = RegistryError::QuotaExceeded(crate::error::quota_message(e));
            self.meta.delete_upload(id).await?;
            return Err(refusal);
        }
        linked?;
        self.publish(
            actor,
            Change::BlobCommitted {
                repository: repository.clone(),
                digest: digest.clone(),
                size,
            },
        );
        Ok(())
    }

    /// Discards a refused upload's bytes and session; failures are logged (the purge finds
    /// what is left).
    async fn discard_upload(&self, id: &str) {
        if let Err(e) = self.blobs.delete_upload(id).await {
            tracing::warn!("discarding a refused upload: {e}");
        }
        if let Err(e) = self.meta.delete_upload(id).await {
            tracing::warn!("discarding a refused upload's session: {e}");
        }
    }

    /// Bytes an upload holds.
    pub async fn upload_size(&self, repository: &RepositoryName, id: &str) -> Result<u64> {
        self.session(repository, id).await?;
        self.current_size(id, None, None).await
    }

    /// Discards an upload and its session.
    pub async fn cancel_upload(&self, repository: &RepositoryName, id: &str) -> Result<()> {
        self.require_writable()?;
        self.session(repository, id).await?;
        let slot = self.uploads.slot(id);
        let _guard = slot.lock().await;
        self.blobs.delete_upload(id).await?;
        self.meta.delete_upload(id).await?;
        self.uploads.forget(id);
        Ok(())
    }
}

/// A request body handed to a store that can be had back if the store never read from it
/// (it refused the chunk's offset first), to be tried at another.
struct Unread(Arc<Mutex<Option<ByteStream>>>);

impl Unread {
    /// The stream to give the store, and the handle that takes the body back while unread.
    fn wrap(body: ByteStream) -> (ByteStream, Unread) {
        let slot = Arc::new(Mutex::new(Some(body)));
        let reader = Arc::clone(&slot);
        let mut taken: Option<ByteStream> = None;
        let stream = futures_util::stream::poll_fn(move |cx| {
            let body = taken.get_or_insert_with(|| {
                reader
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .unwrap_or_else(|| Box::pin(futures_util::stream::empty()) as ByteStream)
            });
            body.poll_next_unpin(cx)
        });
        (Box::pin(stream), Unread(slot))
    }

    /// The body, if the store never polled it.
    fn take(&self) -> Option<ByteStream> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Chunks must arrive in order, without gaps or overlap.
fn check_chunk(range: Option<ChunkRange>, length: Option<u64>, size: u64) -> Result<()> {
    let Some(range) = range else { return Ok(()) };
    if range.start != size {
        return Err(RegistryError::RangeInvalid(format!(
            "chunk starts at {}, the upload holds {size} bytes",
            range.start
        )));
    }
    if length.is_some_and(|l| l != range.end - range.start + 1) {
        return Err(RegistryError::RangeInvalid(format!(
            "Content-Range {}-{} does not match Content-Length",
            range.start, range.end
        )));
    }
    Ok(())
}
