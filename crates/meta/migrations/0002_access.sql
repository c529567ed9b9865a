-- Access model (users, projects, members, robot accounts) and the audit log.

CREATE TABLE users (
    name           TEXT PRIMARY KEY,
    password_hash  TEXT NOT NULL,
    admin          BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL
);

-- A project is the first segment of a repository name.
CREATE TABLE projects (
    name        TEXT PRIMARY KEY,
    public      BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL
);

CREATE TABLE project_members (
    project   TEXT NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    username  TEXT NOT NULL,
    role      TEXT NOT NULL,
    PRIMARY KEY (project, username)
);

-- Robot secrets are random and long, stored as SHA-256 only.
CREATE TABLE robots (
    name         TEXT PRIMARY KEY,
    secret_hash  TEXT NOT NULL,
    project      TEXT NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    actions      TEXT NOT NULL,
    expires_at   BIGINT,
    created_at   BIGINT NOT NULL
);

-- Bumped by every change to the tables above, so servers know when to reload them.
CREATE TABLE access_state (
    id          BIGINT PRIMARY KEY,
    generation  BIGINT NOT NULL
);
INSERT INTO access_state (id, generation) VALUES (1, 0);

CREATE TABLE audit_events (
    id        TEXT PRIMARY KEY,
    at_ms     BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    resource  TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    client    TEXT NOT NULL,
    detail    TEXT NOT NULL
);
CREATE INDEX audit_events_by_time ON audit_events (at_ms);
