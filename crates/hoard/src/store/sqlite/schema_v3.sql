-- hoard SQLite schema, migration 3: the operators' indexes (store::index, store::operator).
-- Every row here is written by the writer in the savepoint of the commit that changed the
-- document it describes, so the indexes never disagree with a committed document.

-- user id → keys (Roblox's right-to-erasure requests name a user id, support finds players by it).
CREATE TABLE user_keys (
    user_id TEXT NOT NULL,
    store TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (user_id, store, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX user_keys_by_key ON user_keys (store, key);

-- Declared indexes on JSON paths of a store.
CREATE TABLE index_decls (
    store TEXT NOT NULL,
    name TEXT NOT NULL,
    -- number, members or keys (store::index::IndexKind).
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (store, name)
) STRICT;

-- One number per (index, key): top-N reads index_numbers_by_value backwards.
CREATE TABLE index_numbers (
    store TEXT NOT NULL,
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (store, name, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX index_numbers_by_value ON index_numbers (store, name, value, key);

-- Members (item ids, object keys) of a members/keys index.
CREATE TABLE index_members (
    store TEXT NOT NULL,
    name TEXT NOT NULL,
    member TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (store, name, member, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX index_members_by_key ON index_members (store, name, key);

-- Existing documents carry their user ids already: index them now.
INSERT INTO user_keys (user_id, store, key)
SELECT DISTINCT j.value, d.store, d.key FROM docs AS d, json_each(d.user_ids) AS j WHERE j.type = 'text';
