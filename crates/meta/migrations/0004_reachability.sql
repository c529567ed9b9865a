-- Garbage collection by reachability, coordinated through this store rather than a lock in
-- one process, so that it stays correct with several replicas:
-- a commit in progress holds its blob until `lease_until` (seconds since the epoch), and GC
-- marks a blob `deleting` (in the same statement that re-checks it is unreachable) before it
-- deletes the bytes; pushes, mounts and manifest reference checks ignore marked blobs.
ALTER TABLE blobs ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
ALTER TABLE blobs ADD COLUMN deleting BIGINT NOT NULL DEFAULT 0;
CREATE INDEX blobs_by_age ON blobs (created_at);
CREATE INDEX repository_blobs_by_digest_and_age ON repository_blobs (digest, created_at);
