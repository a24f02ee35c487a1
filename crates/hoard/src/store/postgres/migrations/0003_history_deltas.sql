-- hoard PostgreSQL schema, version 3: write each value once, and keep superseded versions small.
--
-- From version 3 on, the latest version of a key is its `docs` row alone (the one copy of its
-- value: lz4-compressed and TOASTed once, and kept as the same TOASTed datum by every UPDATE that
-- changes only the lease or the inbox); `history` holds only superseded versions, each as exactly
-- one of: no value (deleted), its whole text in `value` (a keyframe), or in `delta` a
-- store::delta that rebuilds its text from the next kept version's text (a few hundred bytes,
-- stored inline in the heap tuple rather than in TOAST). `value_bytes` is the text's length, so
-- listing needs no rebuild.
--
-- Existing rows: a history row of a key's current version duplicates the docs row (same value,
-- attributes, user ids, commit id, and written_at_ms = docs.updated_at_ms), so it goes; every
-- older row keeps its whole text, a valid keyframe. Filling value_bytes rewrites each remaining
-- heap tuple but not its value: an UPDATE that leaves a TOASTed column alone keeps its datum.
ALTER TABLE history ADD COLUMN delta BYTEA NULL, ADD COLUMN value_bytes BIGINT NULL;

DELETE FROM history AS h USING docs AS d
WHERE h.store = d.store AND h.key = d.key AND h.version = d.version;

UPDATE history SET value_bytes = coalesce(octet_length(value), 0);

ALTER TABLE history ALTER COLUMN value_bytes SET NOT NULL;

-- Exactly one payload for a kept value, none for a deletion (store::history::StoredPayload).
ALTER TABLE history ADD CONSTRAINT history_one_payload CHECK (
    (deleted AND value IS NULL AND delta IS NULL)
    OR (NOT deleted AND (value IS NULL) <> (delta IS NULL))
);
