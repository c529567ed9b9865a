-- Who started each upload session, so that sessions in progress can be limited per user as
-- well as per repository.
ALTER TABLE uploads ADD COLUMN owner TEXT NOT NULL DEFAULT '';
CREATE INDEX uploads_by_owner ON uploads (owner);
CREATE INDEX uploads_by_repository ON uploads (repository);
