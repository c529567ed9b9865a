-- Registry-wide settings changed at run time and shared by replicas (read-only mode), and
-- facts the registry records about itself (that registry:2's repositories were imported).
CREATE TABLE settings (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
