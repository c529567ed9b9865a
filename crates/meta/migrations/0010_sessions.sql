-- Web UI sessions, server-side: the cookie carries a random id whose SHA-256 is the key here
-- (a leaked table opens no session), the user it was opened for, and the CSRF token every
-- state-changing form must echo. Opening a session is one insert; requests only read.
CREATE TABLE sessions (
    id_hash     TEXT PRIMARY KEY,
    username    TEXT NOT NULL,
    csrf_token  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (username, created_at);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
CREATE INDEX audit_events_by_action ON audit_events (action, at_ms);
