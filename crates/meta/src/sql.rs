//! The statements whose text both SQL backends run as is: the rules that must not drift
//! apart between SQLite and PostgreSQL (which blobs garbage collection may take, who holds a
//! lease), kept once. Parameters are numbered in order of first appearance, because SQLite
//! numbers `$N` that way whatever `N` says.

/// Blobs garbage collection may take, or that a collection already marked, after `$3` in
/// digest order, at most `$4`; with `$1` the grace cutoff and `$2` now. A blob is collectable
/// when no manifest references it, no repository linked it within the grace period and no
/// commit in progress holds its lease.
pub(crate) const COLLECTABLE_BLOBS: &str = "SELECT b.digest, b.size FROM blobs b
     WHERE (b.deleting = 1 OR (b.deleting = 0 AND b.created_at < $1 AND b.lease_until < $2
       AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob = b.digest)
       AND NOT EXISTS (SELECT 1 FROM repository_blobs rb
                       WHERE rb.digest = b.digest AND rb.created_at >= $1)))
       AND b.digest > $3
     ORDER BY b.digest LIMIT $4";

/// Marks blob `$3` as being deleted if it is collectable by the rule of [`COLLECTABLE_BLOBS`]
/// (same `$1`, `$2`) or already marked; one row changed when the caller may delete its bytes.
pub(crate) const MARK_BLOB_DELETING: &str = "UPDATE blobs AS b SET deleting = 1
     WHERE (b.deleting = 1 OR (b.deleting = 0 AND b.created_at < $1 AND b.lease_until < $2
       AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob = b.digest)
       AND NOT EXISTS (SELECT 1 FROM repository_blobs rb
                       WHERE rb.digest = b.digest AND rb.created_at >= $1)))
       AND b.digest = $3";

/// The holder and expiry of lease `$1`.
pub(crate) const LEASE: &str = "SELECT holder, until FROM leases WHERE name = $1";

/// Gives lease `$1` to holder `$2` until `$3` if it is free, expired at `$4`, or already
/// `$2`'s; one row changed when `$2` holds it now.
pub(crate) const CLAIM_LEASE: &str = "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3)
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
     WHERE leases.until < $4 OR leases.holder = excluded.holder";

pub(crate) const SETTING: &str = "SELECT value FROM settings WHERE name = $1";

pub(crate) const PUT_SETTING: &str =
    "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3)
     ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at";

pub(crate) const RECORD_GC_RUN: &str = "INSERT INTO gc_runs
     (id, started_at, finished_at, instance, blobs_deleted, bytes_freed, error)
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING";

/// Keeps the newest [`crate::GC_RUNS_KEPT`] runs.
pub(crate) const PRUNE_GC_RUNS: &str = "DELETE FROM gc_runs WHERE id NOT IN
     (SELECT id FROM gc_runs ORDER BY started_at DESC, id DESC LIMIT 1000)";

pub(crate) const GC_RUNS: &str = "SELECT id, started_at, finished_at, instance, blobs_deleted,
     bytes_freed, error FROM gc_runs ORDER BY started_at DESC, id DESC LIMIT $1";
