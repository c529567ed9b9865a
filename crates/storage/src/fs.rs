//! The filesystem backend: a directory laid out like Distribution's (see `paths`).
//!
//! Writes are hashed as they arrive and stream, batched, to a blocking worker thread that
//! appends them. Appends are not synced: an upload in progress is durable only as far as the
//! page cache, which a crashed process keeps and a crashed machine may not; after either, the
//! stored bytes are hashed again before any commit (see `berth-api`'s `uploads`), so a torn
//! upload fails its digest instead of becoming a blob. A commit `fdatasync`s the upload,
//! `rename`s it into the blob path and fsyncs the directories it touched, so a blob is either
//! complete and durable under its digest, or absent.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use berth_oci::{Digest, Hasher};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::write_behind::{self, WriteBehind};
use crate::{
    is_valid_upload_id, paths, Appended, BlobStore, ByteStream, Capacity, Observer, StorageError,
};

/// Size of each read from disk when serving a blob: large enough that per-chunk overhead
/// vanishes against the copy, small enough to keep memory per download bounded, and below the
/// allocator's mmap threshold (`berth` sets 1 MiB) so each chunk's buffer is recycled from the
/// heap: 1 MiB chunks were each mapped, faulted in page by page and unmapped again.
const READ_CHUNK: usize = 512 * 1024;
/// Batches in flight between the network and the disk worker, per request.
const PIPELINE_DEPTH: usize = 2;
/// A request body arrives in frames of whatever the socket held (about 64 KiB on loopback);
/// they cross to the disk worker in batches of at least this many bytes. One hand-off per frame
/// cost two thread wake-ups each, 16,000 per GiB, and a quarter of the registry's CPU on an
/// upload.
const BATCH_BYTES: usize = 512 * 1024;

#[derive(Clone)]
pub struct FsBlobStore {
    root: PathBuf,
    write_window: u64,
    observer: Option<Arc<dyn Observer>>,
}

impl std::fmt::Debug for FsBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsBlobStore")
            .field("root", &self.root)
            .field("write_window", &self.write_window)
            .finish()
    }
}

impl FsBlobStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let root = root.into();
        tokio::fs::create_dir_all(paths::uploads_dir(&root)).await?;
        tokio::fs::create_dir_all(root.join("docker/registry/v2/blobs")).await?;
        Ok(FsBlobStore {
            root,
            write_window: write_behind::WINDOW,
            observer: None,
        })
    }

    /// A store over a directory as it is, creating nothing: for reading another registry's
    /// blobs (`berth import --from`), which may be mounted read-only.
    pub fn existing(root: impl Into<PathBuf>) -> Self {
        FsBlobStore {
            root: root.into(),
            write_window: write_behind::WINDOW,
            observer: None,
        }
    }

    /// Reports every operation, with its time from call to answer, to `observer`.
    pub fn observed_by(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    async fn observed<T>(
        &self,
        op: &'static str,
        work: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        crate::observed(self.observer.as_ref(), op, work).await
    }

    /// Sets the write-behind window (`write_behind.rs`); tests make it small to exercise it.
    #[cfg(test)]
    fn with_write_window(mut self, bytes: u64) -> Self {
        self.write_window = bytes;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn upload_path(&self, id: &str) -> Result<PathBuf, StorageError> {
        if is_valid_upload_id(id) {
            Ok(paths::upload_data(&self.root, id))
        } else {
            Err(StorageError::UploadNotFound)
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Io(io::Error::other(e)))?
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn not_found_as<T>(e: io::Error, err: StorageError) -> Result<T, StorageError> {
    if e.kind() == io::ErrorKind::NotFound {
        Err(err)
    } else {
        Err(StorageError::Io(e))
    }
}

/// Reads up to `want` bytes at `pos` into a fresh buffer, without zero-filling it first.
fn read_chunk(file: &File, pos: u64, want: usize) -> io::Result<Bytes> {
    use std::os::fd::AsRawFd;
    let mut buf = BytesMut::with_capacity(want);
    loop {
        // SAFETY: pread writes at most `want` bytes into the buffer's spare capacity, which is
        // at least `want` long; only the bytes it reports written are then marked initialised.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.spare_capacity_mut().as_mut_ptr().cast(),
                want,
                pos as libc::off_t,
            )
        };
        if n >= 0 {
            // SAFETY: the kernel initialised the first `n` bytes.
            unsafe { buf.set_len(n as usize) };
            return Ok(buf.freeze());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Streams `range` of `file` from a blocking thread through a bounded channel.
fn stream_file(file: File, range: Range<u64>) -> ByteStream {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut pos = range.start;
        while pos < range.end {
            let want = READ_CHUNK.min((range.end - pos) as usize);
            let item = match read_chunk(&file, pos, want) {
                Ok(b) if b.is_empty() => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob shorter than expected",
                )),
                Ok(b) => {
                    pos += b.len() as u64;
                    Ok(b)
                }
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                break;
            }
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Consecutive frames of a request body, handed to the disk worker together (see `BATCH_BYTES`).
#[derive(Default)]
struct Batch {
    frames: Vec<Bytes>,
    len: usize,
}

impl Batch {
    fn push(&mut self, frame: Bytes) {
        if !frame.is_empty() {
            self.len += frame.len();
            self.frames.push(frame);
        }
    }
}

enum Chunk {
    Data(Batch),
    End,
}

/// The disk side of an append: runs on a blocking thread, writes every batch, and on `End`
/// reports the new size, or cuts the file back to `offset` if the stream ended early.
fn append_worker(
    path: &Path,
    write_window: u64,
    offset: u64,
    mut rx: mpsc::Receiver<Chunk>,
) -> Result<u64, StorageError> {
    let file = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) => return not_found_as(e, StorageError::UploadNotFound),
    };
    let actual = file.metadata()?.len();
    if actual != offset {
        return Err(StorageError::OffsetMismatch {
            expected: offset,
            actual,
        });
    }
    let mut behind = WriteBehind::new(offset, write_window);
    let mut size = offset;
    let mut outcome: io::Result<bool> = Ok(false);
    while let Some(chunk) = rx.blocking_recv() {
        match chunk {
            Chunk::Data(batch) => {
                let written = batch.frames.iter().try_fold(size, |at, frame| {
                    file.write_all_at(frame, at)?;
                    Ok(at + frame.len() as u64)
                });
                match written.and_then(|end| behind.written(&file, end).map(|()| end)) {
                    Ok(end) => size = end,
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            Chunk::End => {
                outcome = Ok(true);
                break;
            }
        }
    }
    match outcome {
        Ok(true) => Ok(size),
        Ok(false) => {
            file.set_len(offset)?;
            Err(StorageError::Client(io::Error::new(
                io::ErrorKind::Interrupted,
                "request body ended early",
            )))
        }
        Err(e) => {
            let _ = file.set_len(offset);
            Err(StorageError::Io(e))
        }
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        self.observed("blob_size", async {
            match tokio::fs::metadata(paths::blob_data(&self.root, digest)).await {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn read_blob(
        &self,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<ByteStream, StorageError> {
        self.observed("read_blob", async {
            let path = paths::blob_data(&self.root, digest);
            let file = blocking(move || {
                File::open(path).or_else(|e| not_found_as(e, StorageError::BlobNotFound))
            })
            .await?;
            Ok(stream_file(file, range))
        })
        .await
    }

    async fn delete_blob(&self, digest: &Digest) -> Result<bool, StorageError> {
        self.observed("delete_blob", async {
            let path = paths::blob_data(&self.root, digest);
            blocking(move || match fs::remove_file(&path) {
                Ok(()) => {
                    if let Some(dir) = path.parent() {
                        let _ = fs::remove_dir(dir);
                    }
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e.into()),
            })
            .await
        })
        .await
    }

    async fn create_upload(&self, id: &str) -> Result<(), StorageError> {
        self.observed("create_upload", async {
            let path = self.upload_path(id)?;
            // No directory fsync: a session lost to a crash makes its client start over, and
            // nothing acknowledged depends on it.
            blocking(move || {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                Ok(())
            })
            .await
        })
        .await
    }

    async fn upload_size(&self, id: &str) -> Result<Option<u64>, StorageError> {
        self.observed("upload_size", async {
            let path = self.upload_path(id)?;
            match tokio::fs::metadata(path).await {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn append_upload(
        &self,
        id: &str,
        offset: u64,
        mut data: ByteStream,
        mut hasher: Hasher,
    ) -> Result<Appended, StorageError> {
        self.observed("append_upload", async {
            let path = self.upload_path(id)?;
            // Checked before the body is read (the contract); the disk thread checks again
            // once it holds the file, for an append racing this one.
            match tokio::fs::metadata(&path).await {
                Ok(m) if m.len() != offset => {
                    return Err(StorageError::OffsetMismatch {
                        expected: offset,
                        actual: m.len(),
                    })
                }
                Ok(_) => {}
                Err(e) => return not_found_as(e, StorageError::UploadNotFound),
            }
            let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
            let write_window = self.write_window;
            let worker =
                tokio::task::spawn_blocking(move || append_worker(&path, write_window, offset, rx));
            // Frames are hashed here, as they arrive, rather than on the disk thread: at most a
            // few hundred microseconds of CPU per frame, and the task that reads the socket
            // stays busy long enough for the socket to fill, so it wakes once per several
            // frames instead of once per frame.
            let mut client_error = None;
            let mut batch = Batch::default();
            while let Some(item) = data.next().await {
                match item {
                    Ok(frame) => {
                        hasher.update(&frame);
                        batch.push(frame);
                        if batch.len >= BATCH_BYTES
                            && tx
                                .send(Chunk::Data(std::mem::take(&mut batch)))
                                .await
                                .is_err()
                        {
                            break; // the worker stopped; its result says why
                        }
                    }
                    Err(e) => {
                        client_error = Some(e);
                        break;
                    }
                }
            }
            if client_error.is_none() {
                if batch.len > 0 {
                    let _ = tx.send(Chunk::Data(batch)).await;
                }
                let _ = tx.send(Chunk::End).await;
            }
            drop(tx);
            let result = worker
                .await
                .map_err(|e| StorageError::Io(io::Error::other(e)))?;
            match (client_error, result) {
                (Some(e), Err(StorageError::Client(_))) => Err(StorageError::Client(e)),
                (_, result) => result.map(|size| Appended { size, hasher }),
            }
        })
        .await
    }

    async fn read_upload(&self, id: &str) -> Result<ByteStream, StorageError> {
        self.observed("read_upload", async {
            let path = self.upload_path(id)?;
            let (file, len) = blocking(move || {
                let file =
                    File::open(path).or_else(|e| not_found_as(e, StorageError::UploadNotFound))?;
                let len = file.metadata()?.len();
                Ok((file, len))
            })
            .await?;
            Ok(stream_file(file, 0..len))
        })
        .await
    }

    async fn commit_upload(&self, id: &str, digest: &Digest) -> Result<(), StorageError> {
        self.observed("commit_upload", async {
            let upload = self.upload_path(id)?;
            let target = paths::blob_data(&self.root, digest);
            blocking(move || {
                let data = File::open(&upload)
                    .or_else(|e| not_found_as(e, StorageError::UploadNotFound))?;
                if target.exists() {
                    fs::remove_file(&upload)?;
                    return Ok(());
                }
                // The bytes must be on disk before the name that promises them.
                data.sync_data()?;
                drop(data);
                let dir = target
                    .parent()
                    .ok_or_else(|| io::Error::other("blob path has no parent"))?;
                fs::create_dir_all(dir)?;
                fs::rename(&upload, &target)?;
                fsync_dir(dir)?;
                if let Some(parent) = dir.parent() {
                    fsync_dir(parent)?;
                }
                Ok(())
            })
            .await
        })
        .await
    }

    async fn delete_upload(&self, id: &str) -> Result<(), StorageError> {
        self.observed("delete_upload", async {
            let path = self.upload_path(id)?;
            match tokio::fs::remove_file(path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.observed("check", async {
            tokio::fs::metadata(paths::uploads_dir(&self.root)).await?;
            Ok(())
        })
        .await
    }

    async fn list_blobs(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<Digest>, StorageError> {
        self.observed("list_blobs", async {
            let root = self.root.clone();
            let after = after.map(Digest::to_string);
            blocking(move || {
                let mut found = paths::all_blobs(&root)?;
                found.sort();
                Ok(found
                    .into_iter()
                    .filter(|d| after.as_deref().is_none_or(|a| d.as_str() > a))
                    .take(limit)
                    .collect())
            })
            .await
        })
        .await
    }

    async fn list_uploads(&self) -> Result<Vec<String>, StorageError> {
        self.observed("list_uploads", async {
            let dir = paths::uploads_dir(&self.root);
            blocking(move || {
                let mut ids = Vec::new();
                for entry in fs::read_dir(&dir)? {
                    let name = entry?.file_name();
                    if let Some(id) = name.to_str().filter(|n| is_valid_upload_id(n)) {
                        ids.push(id.to_owned());
                    }
                }
                Ok(ids)
            })
            .await
        })
        .await
    }

    async fn quarantine_blob(&self, digest: &Digest) -> Result<Option<String>, StorageError> {
        let (from, to) = (
            paths::blob_data(&self.root, digest),
            paths::quarantined(&self.root, digest),
        );
        blocking(move || {
            if let Some(dir) = to.parent() {
                fs::create_dir_all(dir)?;
            }
            match fs::rename(&from, &to) {
                Ok(()) => {
                    if let Some(dir) = from.parent() {
                        let _ = fs::remove_dir(dir);
                    }
                    Ok(Some(to.display().to_string()))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn list_distribution_index(&self) -> Result<Vec<String>, StorageError> {
        let root = self.root.clone();
        blocking(move || Ok(paths::index_files(&root)?)).await
    }

    async fn read_distribution_index(&self, path: &str) -> Result<Option<Bytes>, StorageError> {
        if !crate::is_index_path(path) {
            return Ok(None);
        }
        match tokio::fs::read(paths::distribution_index(&self.root).join(path)).await {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn capacity(&self) -> Result<Option<Capacity>, StorageError> {
        self.observed("capacity", async {
            let root = self.root.clone();
            let capacity = tokio::task::spawn_blocking(move || statvfs(&root))
                .await
                .map_err(|e| StorageError::Io(std::io::Error::other(e)))??;
            Ok(Some(capacity))
        })
        .await
    }
}

fn statvfs(path: &Path) -> std::io::Result<Capacity> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: c_path is a valid NUL-terminated string and st points to writable memory of the
    // right type; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    let fragment = st.f_frsize;
    Ok(Capacity {
        total: st.f_blocks * fragment,
        free: st.f_bavail * fragment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_shared_suite() {
        let dir = tempfile::tempdir().unwrap();
        crate::testsuite::run_all(async || FsBlobStore::open(dir.path()).await.unwrap()).await;
    }

    /// Windows of 64 KiB, so the suite's appends (up to 12 MB) start, wait for and drop many.
    #[tokio::test]
    async fn passes_the_shared_suite_with_a_small_write_behind_window() {
        let dir = tempfile::tempdir().unwrap();
        crate::testsuite::run_all(async || {
            FsBlobStore::open(dir.path())
                .await
                .unwrap()
                .with_write_window(64 * 1024)
        })
        .await;
    }

    #[tokio::test]
    async fn committed_blob_uses_distribution_layout() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let digest = crate::testsuite::put_blob(&store, "layout", b"hello").await;
        let path = paths::blob_data(dir.path(), &digest);
        assert_eq!(std::fs::read(path).unwrap(), b"hello");
        assert!(!paths::upload_data(dir.path(), "layout").exists());
    }
}
