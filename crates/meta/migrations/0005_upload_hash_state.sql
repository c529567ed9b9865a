-- The hash state of an upload after its last chunk (Berth's own format, see
-- berth_oci::Hasher::state), so that any replica, or this one after a restart, continues the
-- upload without reading back the bytes already stored. `hash_offset` is the number of bytes
-- the state covers; a state that does not match the stored size is ignored.
ALTER TABLE uploads ADD COLUMN hash_offset BIGINT NOT NULL DEFAULT 0;
ALTER TABLE uploads ADD COLUMN hash_state BYTEA;
