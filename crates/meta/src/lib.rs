//! The metadata store: the registry's index of what exists and who may see it.
//!
//! Storage holds the bytes; this store knows repositories, tags, manifests (their exact bytes
//! and media type), what each manifest references, which repository may serve which blob,
//! referrers by subject, and upload sessions. Every request path answers from here and never
//! lists the blob store. [`MetadataStore`] is the interface; [`SqliteStore`] the embedded
//! default, [`PostgresStore`] the one replicas share. All SQL lives in the backend modules;
//! the schema's migrations are shared by both.

pub mod access;
mod migrations;
mod postgres;
mod sql;
mod sqlite;
pub mod testsuite;
pub mod transfer;

use std::sync::Arc;

use async_trait::async_trait;
use berth_oci::{Digest, Reference, Referenced, RepositoryName, Tag};

pub use access::{
    AccessSnapshot, AccessStore, AuditEvent, AuditQuery, DailyActivity, Member, Project, Robot,
    Session, User,
};
pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::SqliteStore;

/// Told of every operation a backend ran: its name, how long it took from call to answer, and
/// whether it failed. Backends time themselves, so the figures are the backend's own — no
/// cache in front of them, and no decorator to keep in step with the traits.
pub trait Observer: Send + Sync + 'static {
    fn operation(&self, name: &'static str, elapsed: std::time::Duration, failed: bool);
}

/// What can go wrong in a metadata store, in terms every backend can report: callers decide
/// on the kind (retry a transient failure, refuse a conflict, answer "full"), never on a
/// backend's own error type.
#[derive(Clone, Debug, thiserror::Error)]
pub enum MetaError {
    #[error("manifest references content missing from the repository: {0:?}")]
    MissingReferences(Vec<String>),
    /// Descriptors whose declared size is not the stored content's, as `digest: why`.
    #[error("manifest descriptors declare wrong sizes: {0:?}")]
    WrongSizes(Vec<String>),
    /// The change collides with another (e.g. a blob being garbage collected, a name that
    /// exists already); retrying later can succeed.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("{count} upload sessions are in progress for {scope} (the limit is {limit})")]
    TooManyUploads {
        scope: String,
        count: u64,
        limit: u64,
    },
    /// Linking the blob would take its project past its quota.
    #[error("project {project} would store {} bytes, over its quota of {limit} (it stores {usage})", usage + size)]
    QuotaExceeded {
        project: String,
        usage: u64,
        size: u64,
        limit: u64,
    },
    /// The push would move a tag that may not be moved.
    #[error("tag {0} exists and is immutable")]
    TagImmutable(String),
    /// The backend could not take the change for lack of space (disk, quota).
    #[error("the metadata store is full: {0}")]
    Full(String),
    /// The backend is busy, locked or unreachable for now; the same call may succeed later.
    #[error("the metadata store is unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("metadata migration failed: {0}")]
    Migration(String),
    /// Anything else the backend reported.
    #[error("metadata backend error: {0}")]
    Backend(String),
}

impl MetaError {
    /// The database could not grow: its disk (or quota) is full.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, MetaError::Full(_))
    }

    /// Worth retrying as it is.
    pub fn is_transient(&self) -> bool {
        matches!(self, MetaError::Unavailable(_) | MetaError::Conflict(_))
    }
}

pub type Result<T> = std::result::Result<T, MetaError>;

/// A manifest as stored: its bytes exactly as pushed. Handed out behind an `Arc`, so that the
/// cache gives every request the same manifest instead of a copy.
#[derive(Clone, Debug)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub content: bytes::Bytes,
}

/// Everything recorded, in one transaction, when a manifest is pushed.
#[derive(Debug)]
pub struct NewManifest<'a> {
    pub repository: &'a RepositoryName,
    pub digest: &'a Digest,
    pub media_type: &'a str,
    pub content: &'a [u8],
    pub blobs: &'a [Referenced],
    pub children: &'a [Referenced],
    /// Accept references to blobs and child manifests the repository does not hold (a sparse
    /// mirror); those it holds must still match their declared sizes.
    pub allow_missing: bool,
    pub subject: Option<&'a Digest>,
    pub artifact_type: Option<&'a str>,
    /// The manifest's annotations as a JSON object, for the referrers API.
    pub annotations_json: Option<String>,
    pub tags: &'a [Tag],
    /// Of `tags`, those that may not be moved once they exist: the push fails with
    /// [`MetaError::TagImmutable`] when one points at another manifest.
    pub immutable_tags: &'a [Tag],
}

/// What [`MetadataStore::blob_known`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKnown {
    /// A blob row with this size.
    Blob(u64),
    /// No blob row, but a manifest with this digest: a manifest's copy among the blobs, as
    /// `registry:2` writes them (Berth keeps manifests in the index).
    Manifest,
    Unknown,
}

/// A reference in the index to something absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dangling {
    Blob {
        repository: String,
        manifest: String,
        blob: String,
    },
    Child {
        repository: String,
        manifest: String,
        child: String,
    },
}

/// A project's storage limit, for [`MetadataStore::add_blob`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    pub project: String,
    pub limit: u64,
}

/// What a project stores: its repositories' committed blobs, deduplicated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    /// Per repository (a layer shared by two counts in each), in name order.
    pub repositories: Vec<(String, u64)>,
}

/// The bounds of a project's repositories in name order: the project itself, and names in
/// `[project/, project0)` (`0` follows `/`), for range scans of the primary keys.
pub fn project_range(project: &str) -> (String, String) {
    (format!("{project}/"), format!("{project}0"))
}

/// A repository as retention sees it.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub manifests: Vec<InventoryManifest>,
    pub tags: Vec<InventoryTag>,
}

#[derive(Clone, Debug)]
pub struct InventoryManifest {
    pub digest: String,
    pub media_type: String,
    /// The manifest's own size.
    pub size: u64,
    pub created_at: i64,
    /// 0 when never pulled (or not since pull times were recorded).
    pub pulled_at: i64,
    pub subject: Option<String>,
    /// Child manifests (of an index).
    pub children: Vec<String>,
    /// Config and layers, with their sizes.
    pub blobs: Vec<(String, u64)>,
}

#[derive(Clone, Debug)]
pub struct InventoryTag {
    pub name: String,
    pub manifest: String,
    /// When the tag was last pointed (pushed).
    pub pushed_at: i64,
    pub pulled_at: i64,
}

/// What the web UI's repository list shows of one repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepositorySummary {
    pub name: String,
    pub tags: u64,
    /// Bytes of the blobs it links or its manifests reference, each once.
    pub bytes: u64,
    /// When a manifest was last pushed or a tag last moved (seconds; 0 when empty).
    pub pushed_at: i64,
}

/// A summary from the columns of `sql::summary_columns`.
pub(crate) fn summary_of(
    name: &str,
    tags: i64,
    bytes: i64,
    manifest_pushed: i64,
    tag_pushed: i64,
) -> RepositorySummary {
    RepositorySummary {
        name: name.to_owned(),
        tags: tags.max(0) as u64,
        bytes: bytes.max(0) as u64,
        pushed_at: manifest_pushed.max(tag_pushed),
    }
}

/// A pull, for [`MetadataStore::record_pulls`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pull {
    pub repository: String,
    /// A tag, or a manifest digest.
    pub reference: String,
    pub at: i64,
}

/// A manifest that names another as its subject.
#[derive(Clone, Debug)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations_json: Option<String>,
}

#[derive(Clone, Debug)]
pub struct UploadSession {
    pub id: String,
    pub repository: RepositoryName,
    pub algorithm: berth_oci::Algorithm,
    pub created_at: i64,
    /// The user (or robot, or `anonymous`) who started it.
    pub owner: String,
    /// The hash state after the first `offset` bytes, as last saved.
    pub hash_state: Option<SavedHash>,
}

/// A saved hasher state (`berth_oci::Hasher::state`) and how many bytes it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedHash {
    pub offset: u64,
    pub state: Vec<u8>,
}

/// How many upload sessions may be in progress at once; `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadLimits {
    pub per_owner: Option<u64>,
    pub per_repository: Option<u64>,
}

/// What [`MetadataStore::reserve_blob`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobReservation {
    Reserved,
    /// Garbage collection is deleting this blob's bytes right now.
    BeingDeleted,
}

/// One page of a lexically ordered listing.
#[derive(Clone, Copy, Debug)]
pub struct Page<'a> {
    /// Start after this entry (exclusive).
    pub last: Option<&'a str>,
    pub limit: Option<u32>,
}

/// The registry's index. Every backend must pass [`testsuite::run_all`].
///
/// **Consistency each backend must give** (SQLite gives it with one writer; PostgreSQL with
/// serializable transactions or the row locks named here):
/// - `put_manifest`: the reference check and the inserts are one transaction, serialized with
///   `mark_blob_deleting`, `unlink_blob` and `delete_manifest` of the same rows (lock the blob
///   and link rows it checks, `SELECT … FOR SHARE`); a refused push changes nothing; two pushes
///   of one tag leave the tag on one of the two manifests, never on none.
/// - `reserve_blob` / `mark_blob_deleting`: each is one atomic statement on the blob's row (lock
///   it, `FOR UPDATE`), so the two never both succeed for one digest; `mount_blob` and `add_blob`
///   re-check the mark in their own transaction.
/// - `create_upload`: the count and the insert are one serialized step per owner and
///   repository (an advisory lock, or serializable isolation), so limits hold under
///   concurrency.
/// - Reads may lag writes of other replicas, never this caller's own acknowledged writes.
/// - Errors are [`MetaError`]s of the right kind: `Full`, `Unavailable` (retry), `Conflict`,
///   `Corrupt`, `Backend` — never a backend's own error type.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Cheap reachability probe for readiness checks.
    async fn check(&self) -> Result<()>;

    /// Size of `digest` if the repository may serve it.
    async fn repository_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<Option<u64>>;

    /// Holds `digest` for a commit about to place its bytes: records the blob (if new) and
    /// leases it until `lease_until`, so garbage collection leaves it alone until
    /// [`add_blob`](Self::add_blob) links it. [`BlobReservation::BeingDeleted`] when GC has
    /// already marked it; the caller waits for GC to finish and tries again. Atomic with
    /// [`mark_blob_deleting`](Self::mark_blob_deleting): the two never both succeed.
    async fn reserve_blob(
        &self,
        digest: &Digest,
        size: u64,
        lease_until: i64,
    ) -> Result<BlobReservation>;

    /// Records a committed blob as pushed to `repo` (a push refreshes the link's time), ends
    /// its lease and the upload session `upload_id`, in one transaction. With a `quota`, a
    /// blob new to its project that would take the project's usage past the limit is refused
    /// ([`MetaError::QuotaExceeded`]); the count and the link are one serialized step per
    /// project, so parallel pushes cannot overshoot.
    async fn add_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        size: u64,
        upload_id: Option<&str>,
        quota: Option<&Quota>,
    ) -> Result<()>;

    /// The bytes of the distinct blobs a project's repositories hold (linked, or referenced
    /// by their manifests; a layer in two of them counts once), and with `per_repository`
    /// each repository's share.
    async fn project_usage(&self, project: &str, per_repository: bool) -> Result<Usage>;

    /// Whether a repository of `project` holds `digest` (linked, or referenced by a manifest).
    async fn linked_in_project(&self, project: &str, digest: &Digest) -> Result<bool>;

    /// Makes a blob of `from` visible in `to`; `None` when `from` does not have it. With a
    /// `quota`, refused like [`add_blob`](Self::add_blob) and in the same serialized step.
    async fn mount_blob(
        &self,
        from: &RepositoryName,
        to: &RepositoryName,
        digest: &Digest,
        quota: Option<&Quota>,
    ) -> Result<Option<u64>>;

    /// Unlinks a blob from a repository; `false` when it was not linked.
    async fn unlink_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<bool>;

    /// Stores a manifest, its references and its tags atomically. Fails with
    /// [`MetaError::MissingReferences`] when a blob or child manifest is not in the repository
    /// (unless `allow_missing`), and with [`MetaError::WrongSizes`] when one is there with
    /// another size than its descriptor declares.
    async fn put_manifest(&self, manifest: NewManifest<'_>) -> Result<()>;

    async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<Option<Arc<StoredManifest>>>;

    /// Deletes a manifest and every tag pointing at it; `false` when it did not exist.
    async fn delete_manifest(&self, repo: &RepositoryName, digest: &Digest) -> Result<bool>;

    /// Deletes a repository: its tags, manifests and blob links, in one transaction (the blobs
    /// go with the next collection if nothing else reaches them). `false` when it did not
    /// exist.
    async fn delete_repository(&self, repo: &RepositoryName) -> Result<bool>;

    /// Deletes a manifest retention planned to delete at `tagged_before` (seconds since the
    /// epoch), with its tags, unless it is needed now, in one atomic step: a tag was pointed
    /// at it since (a push racing retention wins), a manifest lists it as a child (its
    /// index was kept after all), or it is a referrer whose subject exists. `false` when it
    /// kept or lacked it.
    async fn delete_planned_manifest(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        tagged_before: i64,
    ) -> Result<bool>;

    /// A repository's manifests (with references, push and pull times) and tags, for
    /// retention and usage.
    async fn repository_inventory(&self, repo: &RepositoryName) -> Result<Inventory>;

    /// Every manifest, of any repository, that references the blob, as (repository, digest).
    async fn blob_users(&self, digest: &Digest) -> Result<Vec<(String, String)>>;

    /// Records when tags and manifests were pulled (a reference is a tag or a digest; a tag's
    /// pull counts for its manifest too). Times only move forward; unknown references are
    /// ignored. Callers batch pulls: this is not one write per request.
    async fn record_pulls(&self, pulls: &[Pull]) -> Result<()>;

    /// What the index knows of a digest found in blob storage (`berth check`).
    async fn blob_known(&self, digest: &Digest) -> Result<BlobKnown>;

    /// Blob rows after `after` in digest order, at most `limit`, as (digest, size), leaving
    /// out those a collection marked or a commit holds at `now`: rows whose bytes must exist.
    async fn settled_blobs(
        &self,
        after: Option<&str>,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(String, u64)>>;

    /// Manifest references that point at nothing: blobs without a row, child manifests that
    /// do not exist (at most `limit` of each).
    async fn dangling_references(&self, limit: u32) -> Result<Vec<Dangling>>;

    /// Removes a blob's row and every repository link to it, whatever its state: for a blob
    /// whose bytes are gone or corrupt (`berth check --repair`).
    async fn remove_blob(&self, digest: &Digest) -> Result<()>;

    /// A project's lifecycle policy document, as last put.
    async fn project_policy(&self, project: &str) -> Result<Option<String>>;

    /// Sets (or with `None` removes) a project's lifecycle policy document.
    async fn put_project_policy(&self, project: &str, policy: Option<&str>) -> Result<()>;

    /// The projects that have a policy, in lexical order.
    async fn projects_with_policies(&self) -> Result<Vec<String>>;

    /// Removes a tag only; `false` when it did not exist.
    async fn delete_tag(&self, repo: &RepositoryName, tag: &Tag) -> Result<bool>;

    /// Tags of a repository in lexical order; `None` when the repository is unknown.
    async fn list_tags(&self, repo: &RepositoryName, page: Page<'_>)
        -> Result<Option<Vec<String>>>;

    /// Repository names in lexical order.
    async fn list_repositories(&self, page: Page<'_>) -> Result<Vec<String>>;
    /// Like `list_repositories`, only names containing `text` (case as given).
    async fn search_repositories(&self, text: &str, page: Page<'_>) -> Result<Vec<String>>;
    /// Like `search_repositories` (`text` empty: every name), only repositories of
    /// `projects` (those named like the project and those under `<project>/`). Its cost
    /// follows those projects' repositories, not the registry's: the listings of a caller
    /// who sees a few projects use it.
    async fn list_project_repositories(
        &self,
        projects: &[String],
        text: &str,
        page: Page<'_>,
    ) -> Result<Vec<String>>;
    /// Summaries of those of `repos` that exist, in the order given; one round trip however
    /// many (the web UI lists fifty a page).
    async fn repository_summaries(
        &self,
        repos: &[RepositoryName],
    ) -> Result<Vec<RepositorySummary>>;

    async fn referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>>;

    /// Records a new upload session unless its owner or repository already has `limits`
    /// sessions in progress ([`MetaError::TooManyUploads`]). The count and the insert are one
    /// atomic step: concurrent creations never exceed a limit.
    async fn create_upload(&self, session: &UploadSession, limits: UploadLimits) -> Result<()>;
    async fn get_upload(&self, id: &str) -> Result<Option<UploadSession>>;
    /// Saves an upload's hash state after a chunk; an upload that is gone is not an error.
    async fn save_upload_hash(&self, id: &str, saved: &SavedHash) -> Result<()>;
    async fn delete_upload(&self, id: &str) -> Result<()>;
    /// Upload sessions created before `before` (seconds since the epoch), oldest first.
    async fn expired_uploads(&self, before: i64, limit: u32) -> Result<Vec<String>>;

    /// Candidates for garbage collection after `after`, in digest order, as `(digest, size)`:
    /// blobs created before `before` that no manifest of any repository references, no
    /// repository linked at or after `before` (a push or mount within the grace period), and
    /// no commit holds at `now`; also blobs already marked (a collection that stopped
    /// halfway). Only [`mark_blob_deleting`](Self::mark_blob_deleting) decides.
    async fn collectable_blobs(
        &self,
        before: i64,
        now: i64,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, u64)>>;

    /// Marks `digest` as being deleted if it is still collectable by the rules of
    /// [`collectable_blobs`](Self::collectable_blobs) (or already marked), in one atomic step
    /// that pushes, mounts and manifest reference checks are serialized with; `true` when the
    /// caller may delete its bytes.
    async fn mark_blob_deleting(&self, digest: &Digest, before: i64, now: i64) -> Result<bool>;

    /// Removes a marked blob's row and its repository links, after its bytes are gone.
    async fn forget_blob(&self, digest: &Digest) -> Result<()>;

    /// Takes or renews the lease `name` for `holder` until `until` if it is free, expired at
    /// `now`, or already `holder`'s; `true` when `holder` holds it now. One atomic step: of
    /// holders claiming at once, one wins. A holder's lease with more than half of the new
    /// term left is not written again ([`renewal_due`]): a restarted replica keeps its lease
    /// without a write, which matters when the disk is full.
    async fn claim_lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool>;

    /// A registry-wide setting (read-only mode, the import's record), as last put by any
    /// process sharing this backend; `None` when never put.
    async fn setting(&self, name: &str) -> Result<Option<String>>;

    /// Sets a registry-wide setting.
    async fn put_setting(&self, name: &str, value: &str) -> Result<()>;

    /// Records a garbage collection that ran, keeping the newest [`GC_RUNS_KEPT`].
    async fn record_gc_run(&self, run: &GcRun) -> Result<()>;

    /// The latest `limit` garbage collections, newest first.
    async fn gc_runs(&self, limit: u32) -> Result<Vec<GcRun>>;

    /// Announcements of changes to repositories' manifests and tags made through any process
    /// sharing this backend (this one included), for caches to drop what they hold; `None`
    /// when the backend cannot tell, and caches must bound their staleness by time alone.
    fn watch_changes(&self) -> Option<tokio::sync::broadcast::Receiver<Changed>> {
        None
    }
}

/// How many garbage collections the history keeps.
pub const GC_RUNS_KEPT: u32 = 1000;

/// One garbage collection, as its history keeps it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GcRun {
    pub id: String,
    /// Seconds since the epoch.
    pub started_at: i64,
    pub finished_at: i64,
    /// The replica (or `cli`) that ran it.
    pub instance: String,
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
    /// Empty when it completed, else what stopped it.
    pub error: String,
}

/// What [`MetadataStore::watch_changes`] announces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// A manifest or tag of this repository was pushed, moved or deleted, or the repository
    /// was deleted.
    Repository(String),
    /// Announcements may have been missed (the backend's connection was lost): anything may
    /// have changed.
    Anything,
}

/// The time after which a lease claimed at `now` until `until` is renewed: half the term.
pub fn renewal_due(now: i64, until: i64) -> i64 {
    now + (until - now) / 2
}

/// A whole backend: the registry's index and the access model, as every backend provides both.
pub trait Store: MetadataStore + AccessStore {}
impl<T: MetadataStore + AccessStore> Store for T {}

/// Seconds since the Unix epoch, as stored in every `*_at` column.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
