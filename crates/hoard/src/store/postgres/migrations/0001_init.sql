-- hoard PostgreSQL schema, version 1. Runs with search_path set to hoard's schema, inside the
-- migration transaction (see schema.rs). Key columns use COLLATE "C" so that ORDER BY and range
-- comparisons follow byte order, exactly like the memory and SQLite stores.

-- One row per key that was ever written or locked by a commit. A row with version 0 and a NULL
-- value is a placeholder (made so a commit could lock a key that did not exist yet): it reads as
-- an absent key.
CREATE TABLE docs (
    store          TEXT COLLATE "C" NOT NULL,
    key            TEXT COLLATE "C" NOT NULL,
    -- The exact JSON text of the value, or NULL when never written or deleted.
    value          TEXT NULL,
    version        BIGINT NOT NULL DEFAULT 0,
    created_at_ms  BIGINT NOT NULL DEFAULT 0,
    updated_at_ms  BIGINT NOT NULL DEFAULT 0,
    -- JSON object text.
    attributes     TEXT NOT NULL DEFAULT '{}',
    -- JSON array of strings.
    user_ids       TEXT NOT NULL DEFAULT '[]',
    lease_holder   TEXT NULL,
    lease_epoch    BIGINT NOT NULL DEFAULT 0,
    -- JSON array of {seq, body, sent_at_ms}.
    inbox          TEXT NOT NULL DEFAULT '[]',
    inbox_next_seq BIGINT NOT NULL DEFAULT 1,
    last_commit_id TEXT NULL,
    PRIMARY KEY (store, key)
);

-- Finds every key a holder names (for operators and a future "release all keys of a holder").
CREATE INDEX docs_by_lease_holder ON docs (lease_holder) WHERE lease_holder IS NOT NULL;

-- Every version a commit wrote, until prune_history removes it. The latest version of a key is
-- always here.
CREATE TABLE history (
    store         TEXT COLLATE "C" NOT NULL,
    key           TEXT COLLATE "C" NOT NULL,
    version       BIGINT NOT NULL,
    written_at_ms BIGINT NOT NULL,
    deleted       BOOLEAN NOT NULL,
    value         TEXT NULL,
    attributes    TEXT NOT NULL,
    user_ids      TEXT NOT NULL,
    commit_id     TEXT NOT NULL,
    PRIMARY KEY (store, key, version)
);

-- Process-level leases: one row per live engine process, renewed by that process.
CREATE TABLE holders (
    holder        TEXT NOT NULL PRIMARY KEY,
    expires_at_ms BIGINT NOT NULL
);
