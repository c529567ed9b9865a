-- Berth metadata schema, version 1. Written in the SQL that SQLite and PostgreSQL share:
-- natural keys (no autoincrement), BIGINT, TEXT and BYTEA only.

CREATE TABLE repositories (
    name        TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

-- Every committed blob, once, whatever repositories it belongs to.
CREATE TABLE blobs (
    digest      TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Which repository may serve which blob: pushed or mounted there. Cross-repository access is
-- never implicit.
CREATE TABLE repository_blobs (
    repository  TEXT NOT NULL REFERENCES repositories (name) ON DELETE CASCADE,
    digest      TEXT NOT NULL REFERENCES blobs (digest),
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (repository, digest)
);
CREATE INDEX repository_blobs_by_digest ON repository_blobs (digest);

-- Manifests with their exact bytes and the media type they were pushed with.
CREATE TABLE manifests (
    repository     TEXT NOT NULL REFERENCES repositories (name) ON DELETE CASCADE,
    digest         TEXT NOT NULL,
    media_type     TEXT NOT NULL,
    content        BYTEA NOT NULL,
    subject        TEXT,
    artifact_type  TEXT,
    annotations    TEXT,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (repository, digest)
);
CREATE INDEX manifests_by_subject ON manifests (repository, subject);

CREATE TABLE manifest_blobs (
    repository  TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    blob        TEXT NOT NULL,
    PRIMARY KEY (repository, manifest, blob),
    FOREIGN KEY (repository, manifest) REFERENCES manifests (repository, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_blobs_by_blob ON manifest_blobs (blob);

CREATE TABLE manifest_children (
    repository  TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    child       TEXT NOT NULL,
    PRIMARY KEY (repository, manifest, child),
    FOREIGN KEY (repository, manifest) REFERENCES manifests (repository, digest) ON DELETE CASCADE
);

CREATE TABLE tags (
    repository  TEXT NOT NULL,
    name        TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (repository, name),
    FOREIGN KEY (repository, manifest) REFERENCES manifests (repository, digest) ON DELETE CASCADE
);
CREATE INDEX tags_by_manifest ON tags (repository, manifest);

-- Upload sessions; their bytes live in the blob store's staging area under the same id.
CREATE TABLE uploads (
    id          TEXT PRIMARY KEY,
    repository  TEXT NOT NULL,
    algorithm   TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
