-- hoard SQLite schema, migration 2: write each value once, and keep superseded versions small.
-- Applied inside the BEGIN IMMEDIATE transaction that also records `schema_version`.
--
-- From version 2 on, the latest version of a key is its `docs` row alone (the one copy of its
-- value); `history` holds only superseded versions, each as exactly one of: no value (deleted = 1),
-- its whole JSON text in `value` (a keyframe, still readable with json_extract), or in `delta` a
-- store::delta that rebuilds its text from the text of the next kept version. Small delta rows
-- fit in one leaf page, where a whole 8 KiB value spilled into overflow pages.
--
-- Existing rows: a history row of a key's current version duplicates the docs row (same value,
-- attributes, user ids, commit id, and written_at_ms = docs.updated_at_ms), so it goes; every
-- older row keeps its whole text, which is a valid keyframe. Nothing is rewritten.
ALTER TABLE history ADD COLUMN delta BLOB;

DELETE FROM history
WHERE EXISTS (
    SELECT 1 FROM docs AS d
    WHERE d.store = history.store AND d.key = history.key AND d.version = history.version
);
