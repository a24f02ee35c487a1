-- hoard SQLite schema, migration 1. Applied once, inside the BEGIN IMMEDIATE transaction that
-- also records `schema_version`. Plain tables and TEXT JSON only, so the Debian sqlite3 CLI
-- (3.40) can read and json_extract everything. STRICT (3.37+) makes SQLite refuse a value of the
-- wrong type instead of storing it silently.

-- The current state of every key that was ever touched (a value, a lease or an inbox message).
CREATE TABLE docs (
    store TEXT NOT NULL,
    key TEXT NOT NULL,
    -- The JSON text exactly as hoard serialized it; NULL: never written, or deleted.
    value TEXT,
    -- Counts every change of value, attributes or user ids; never reused, never decreases.
    version INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    -- JSON object.
    attributes TEXT NOT NULL,
    -- JSON array of strings.
    user_ids TEXT NOT NULL,
    lease_holder TEXT,
    -- Fencing epoch: bumped by every acquisition, kept by a release.
    lease_epoch INTEGER NOT NULL,
    -- JSON array of {"seq", "body", "sent_at_ms"}, oldest first.
    inbox TEXT NOT NULL,
    inbox_next_seq INTEGER NOT NULL,
    -- The commit that wrote the current version (a UUID), for reading back an unknown outcome.
    last_commit_id TEXT,
    PRIMARY KEY (store, key)
) STRICT;

-- Which keys a holder names: lets an operator see a server's sessions at once.
CREATE INDEX docs_by_lease_holder ON docs (lease_holder) WHERE lease_holder IS NOT NULL;

-- Every version written, until `prune_history` removes it under the history policy.
CREATE TABLE history (
    store TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    written_at_ms INTEGER NOT NULL,
    -- 1 when this version is a deletion (value NULL).
    deleted INTEGER NOT NULL,
    value TEXT,
    -- Bytes of `value` as serialized JSON (0 for a deletion), so listing needs no value read.
    value_bytes INTEGER NOT NULL,
    attributes TEXT NOT NULL,
    user_ids TEXT NOT NULL,
    commit_id TEXT NOT NULL,
    PRIMARY KEY (store, key, version)
) STRICT;

-- Process-level leases: one row per engine process incarnation, renewed by that process.
CREATE TABLE holders (
    holder TEXT PRIMARY KEY NOT NULL,
    expires_at_ms INTEGER NOT NULL
) STRICT;

-- Best-effort wake-ups between processes; every process polls rows newer than it has seen.
-- AUTOINCREMENT: ids are never reused after old rows are deleted, so `id > last_seen` is safe.
CREATE TABLE notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;

CREATE INDEX notifications_by_created_at ON notifications (created_at_ms);
