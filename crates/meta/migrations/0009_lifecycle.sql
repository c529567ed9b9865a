-- Lifecycle: each project's policy (immutable tags, retention rules) as one JSON document,
-- keyed by the project name (a repository name's first segment, in every auth mode), and when
-- tags and manifests were last pulled (written in batches, at most once a minute per item).
CREATE TABLE project_policies (
    project     TEXT PRIMARY KEY,
    policy      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
ALTER TABLE tags ADD COLUMN pulled_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE manifests ADD COLUMN pulled_at BIGINT NOT NULL DEFAULT 0;
