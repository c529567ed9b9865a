//! Versioned schema migrations, shared by every SQL backend.

/// `(version, sql)` in order. Never edit an applied migration; add a new one.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_access.sql")),
    (3, include_str!("../migrations/0003_upload_owner.sql")),
    (4, include_str!("../migrations/0004_reachability.sql")),
    (5, include_str!("../migrations/0005_upload_hash_state.sql")),
    (6, include_str!("../migrations/0006_leases.sql")),
    (7, include_str!("../migrations/0007_settings.sql")),
    (8, include_str!("../migrations/0008_gc_runs.sql")),
    (9, include_str!("../migrations/0009_lifecycle.sql")),
    (10, include_str!("../migrations/0010_sessions.sql")),
];

pub const CREATE_VERSION_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS berth_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)";
