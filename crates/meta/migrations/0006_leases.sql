-- Leadership of background work shared by replicas (garbage collection, the upload purge):
-- the holder of a lease runs the task until `until` (seconds since the epoch), renewing it
-- each run; another replica takes over once it has expired. Correctness never depends on a
-- lease, only how much work is duplicated.
CREATE TABLE leases (
    name    TEXT PRIMARY KEY,
    holder  TEXT NOT NULL,
    until   BIGINT NOT NULL
);
