-- Every garbage collection that ran (not dry runs): when, where, what it freed, and how it
-- ended. Kept for `berth gc --history` and /metrics; the newest thousand are kept.
CREATE TABLE gc_runs (
    id             TEXT PRIMARY KEY,
    started_at     BIGINT NOT NULL,
    finished_at    BIGINT NOT NULL,
    instance       TEXT NOT NULL,
    blobs_deleted  BIGINT NOT NULL,
    bytes_freed    BIGINT NOT NULL,
    -- empty when it completed, else the error that stopped it
    error          TEXT NOT NULL
);
CREATE INDEX gc_runs_by_start ON gc_runs (started_at);
