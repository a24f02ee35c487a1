-- hoard PostgreSQL schema, version 4: the operators' indexes (store::index, store::operator).
-- Rows here change only in the group-commit transaction of the commit that changed the document
-- they describe (committer.rs), under that key's row lock; declaring or dropping an index takes
-- the store's index lock (an exclusive transaction-level advisory lock; batches take it shared).

-- user id → keys.
CREATE TABLE user_keys (
    user_id TEXT COLLATE "C" NOT NULL,
    store   TEXT COLLATE "C" NOT NULL,
    key     TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (user_id, store, key)
);
CREATE INDEX user_keys_by_key ON user_keys (store, key);

-- Declared indexes on JSON paths of a store.
CREATE TABLE index_decls (
    store TEXT COLLATE "C" NOT NULL,
    name  TEXT COLLATE "C" NOT NULL,
    -- number, members or keys (store::index::IndexKind).
    kind  TEXT NOT NULL,
    path  TEXT NOT NULL,
    PRIMARY KEY (store, name)
);

CREATE TABLE index_numbers (
    store TEXT COLLATE "C" NOT NULL,
    name  TEXT COLLATE "C" NOT NULL,
    key   TEXT COLLATE "C" NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (store, name, key)
);
CREATE INDEX index_numbers_by_value ON index_numbers (store, name, value, key);
-- A save replaces its key's entries of every index of the store: found by (store, key), not by
-- scanning the store's part of the primary key.
CREATE INDEX index_numbers_by_key ON index_numbers (store, key);

CREATE TABLE index_members (
    store  TEXT COLLATE "C" NOT NULL,
    name   TEXT COLLATE "C" NOT NULL,
    member TEXT COLLATE "C" NOT NULL,
    key    TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (store, name, member, key)
);
CREATE INDEX index_members_by_key ON index_members (store, key);

-- Existing documents carry their user ids already: index them now.
INSERT INTO user_keys (user_id, store, key)
SELECT DISTINCT u.user_id, d.store, d.key
FROM docs AS d, jsonb_array_elements_text(d.user_ids::jsonb) AS u(user_id)
WHERE jsonb_typeof(d.user_ids::jsonb) = 'array';
