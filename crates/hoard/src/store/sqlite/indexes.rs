//! SQLite's index rows (schema 3): kept by the writer in the savepoint of each commit, read by the
//! `OperatorStore` lookups on the read pool, declared and purged through the writer.
//!
//! Invariant: `reindex` runs inside the same savepoint as the commit's document rows (see
//! `writer::write_commit`), so a rolled-back commit rolls its index rows back with it, and the
//! declarations it reads are the ones in force under the write lock.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use super::rows::sql_error;
use super::writer::WriteRequest;
use crate::store::StoreError;
use crate::store::index::{IndexDecl, IndexKind, entries_for};
use crate::store::operator::{
    DocIdPage, OperatorStore, Rank, RankCursor, RankedKey, check_new_decl, index_page_size, require_index,
};
use crate::store::types::{DocId, Key, StoreName};

/// What a commit changed of one key, for its index rows.
pub(crate) struct Reindex<'a> {
    pub id: &'a DocId,
    pub old_user_ids: &'a [String],
    pub new_user_ids: &'a [String],
    /// The new value's text when the value changed (`Some(None)`: deleted); `None`: same value.
    pub new_text: Option<Option<&'a str>>,
}

pub(crate) fn decls_of(connection: &Connection, store: &str) -> Result<Vec<IndexDecl>, StoreError> {
    let mut statement = connection
        .prepare_cached("SELECT name, kind, path FROM index_decls WHERE store = ?1 ORDER BY name")
        .map_err(sql_error("reading index declarations"))?;
    let rows = statement
        .query_map(params![store], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get(2)?)))
        .map_err(sql_error("reading index declarations"))?;
    let mut decls = Vec::new();
    for row in rows {
        let (name, kind, path) = row.map_err(sql_error("reading index declarations"))?;
        let store = StoreName::new(store).map_err(|error| StoreError::corrupt(format!("index store: {error}")))?;
        let kind = IndexKind::parse(&kind).map_err(|error| StoreError::corrupt(format!("index {name}: {error}")))?;
        decls.push(IndexDecl { store, name, kind, path });
    }
    Ok(decls)
}

/// Replaces the key's index rows by what its new version contributes.
pub(crate) fn reindex(connection: &Connection, change: Reindex<'_>) -> Result<(), StoreError> {
    let (store, key) = (change.id.store.as_str(), change.id.key.as_str());
    if change.old_user_ids != change.new_user_ids {
        connection
            .prepare_cached("DELETE FROM user_keys WHERE store = ?1 AND key = ?2")
            .and_then(|mut statement| statement.execute(params![store, key]))
            .map_err(sql_error("updating the user-id index"))?;
        let mut insert = connection
            .prepare_cached("INSERT OR IGNORE INTO user_keys (user_id, store, key) VALUES (?1, ?2, ?3)")
            .map_err(sql_error("updating the user-id index"))?;
        for user_id in change.new_user_ids {
            insert.execute(params![user_id, store, key]).map_err(sql_error("updating the user-id index"))?;
        }
    }
    let Some(new_text) = change.new_text else { return Ok(()) };
    let decls = decls_of(connection, store)?;
    if decls.is_empty() {
        return Ok(());
    }
    let value = match new_text {
        Some(text) => Some(
            serde_json::from_str::<serde_json::Value>(text)
                .map_err(|error| StoreError::corrupt(format!("indexing {}: {error}", change.id)))?,
        ),
        None => None,
    };
    for decl in &decls {
        write_entries(connection, decl, key, value.as_ref())?;
    }
    Ok(())
}

fn write_entries(
    connection: &Connection,
    decl: &IndexDecl,
    key: &str,
    value: Option<&serde_json::Value>,
) -> Result<(), StoreError> {
    let (store, name) = (decl.store.as_str(), decl.name.as_str());
    let entries = entries_for(decl, value);
    let error = sql_error("updating a declared index");
    match decl.kind {
        IndexKind::Number => {
            connection
                .prepare_cached("DELETE FROM index_numbers WHERE store = ?1 AND name = ?2 AND key = ?3")
                .and_then(|mut statement| statement.execute(params![store, name, key]))
                .map_err(&error)?;
            if let Some(number) = entries.number {
                connection
                    .prepare_cached("INSERT INTO index_numbers (store, name, key, value) VALUES (?1, ?2, ?3, ?4)")
                    .and_then(|mut statement| statement.execute(params![store, name, key, number]))
                    .map_err(&error)?;
            }
        }
        IndexKind::Members | IndexKind::Keys => {
            connection
                .prepare_cached("DELETE FROM index_members WHERE store = ?1 AND name = ?2 AND key = ?3")
                .and_then(|mut statement| statement.execute(params![store, name, key]))
                .map_err(&error)?;
            let mut insert = connection
                .prepare_cached("INSERT INTO index_members (store, name, member, key) VALUES (?1, ?2, ?3, ?4)")
                .map_err(&error)?;
            for member in &entries.members {
                insert.execute(params![store, name, member, key]).map_err(&error)?;
            }
        }
    }
    Ok(())
}

/// The writer's side of `declare_index`: the declaration and the backfill in one savepoint.
pub(crate) fn declare(connection: &Connection, decl: &IndexDecl) -> Result<u64, StoreError> {
    let existing = decls_of(connection, decl.store.as_str())?;
    if !check_new_decl(decl, &existing)? {
        return Ok(0);
    }
    connection
        .execute(
            "INSERT INTO index_decls (store, name, kind, path) VALUES (?1, ?2, ?3, ?4)",
            params![decl.store.as_str(), decl.name, decl.kind.as_str(), decl.path],
        )
        .map_err(sql_error("declaring an index"))?;
    let mut statement = connection
        .prepare("SELECT key, value FROM docs WHERE store = ?1 AND value IS NOT NULL")
        .map_err(sql_error("filling an index"))?;
    let rows = statement
        .query_map(params![decl.store.as_str()], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))
        .map_err(sql_error("filling an index"))?;
    let mut indexed = 0u64;
    for row in rows {
        let (key, text) = row.map_err(sql_error("filling an index"))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|error| StoreError::corrupt(format!("indexing {}/{key}: {error}", decl.store)))?;
        write_entries(connection, decl, &key, Some(&value))?;
        indexed += 1;
    }
    Ok(indexed)
}

fn drop_decl(connection: &Connection, store: &str, name: &str) -> Result<u64, StoreError> {
    let error = sql_error("dropping an index");
    connection
        .execute("DELETE FROM index_numbers WHERE store = ?1 AND name = ?2", params![store, name])
        .map_err(&error)?;
    connection
        .execute("DELETE FROM index_members WHERE store = ?1 AND name = ?2", params![store, name])
        .map_err(&error)?;
    let dropped = connection
        .execute("DELETE FROM index_decls WHERE store = ?1 AND name = ?2", params![store, name])
        .map_err(&error)?;
    Ok(dropped as u64)
}

fn purge(connection: &Connection, ids: &[DocId]) -> Result<u64, StoreError> {
    let mut removed = 0u64;
    let mut statement = connection
        .prepare_cached("DELETE FROM history WHERE store = ?1 AND key = ?2")
        .map_err(sql_error("purging history"))?;
    for id in ids {
        removed += statement
            .execute(params![id.store.as_str(), id.key.as_str()])
            .map_err(sql_error("purging history"))? as u64;
    }
    Ok(removed)
}

fn key_of(store: &StoreName, text: String) -> Result<Key, StoreError> {
    Key::new(text).map_err(|error| StoreError::corrupt(format!("an index of {store} names a bad key: {error}")))
}

impl SqliteStore {
    async fn operator_write(
        &self,
        work: impl FnOnce(&Connection) -> Result<u64, StoreError> + Send + 'static,
    ) -> Result<u64, StoreError> {
        self.write(|reply| WriteRequest::Operator { work: super::writer::OperatorWork(Box::new(work)), reply }).await
    }

    async fn decls(&self, store: &StoreName) -> Result<Vec<IndexDecl>, StoreError> {
        let store = store.as_str().to_string();
        self.reads.read(move |connection| decls_of(connection, &store)).await
    }
}

#[async_trait]
impl OperatorStore for SqliteStore {
    async fn declare_index(&self, decl: IndexDecl) -> Result<u64, StoreError> {
        decl.check()?;
        self.operator_write(move |connection| declare(connection, &decl)).await
    }

    async fn drop_index(&self, store: &StoreName, name: &str) -> Result<bool, StoreError> {
        let (store, name) = (store.as_str().to_string(), name.to_string());
        Ok(self.operator_write(move |connection| drop_decl(connection, &store, &name)).await? > 0)
    }

    async fn list_indexes(&self, store: &StoreName) -> Result<Vec<IndexDecl>, StoreError> {
        self.decls(store).await
    }

    async fn keys_by_user_id(
        &self,
        user_id: &str,
        after: Option<&DocId>,
        limit: usize,
    ) -> Result<DocIdPage, StoreError> {
        let limit = index_page_size(limit, self.limits.page_size_default);
        let user_id = user_id.to_string();
        let (after_store, after_key) =
            after.map_or((String::new(), String::new()), |id| (id.store.to_string(), id.key.to_string()));
        let has_after = after.is_some();
        self.reads
            .read(move |connection| {
                let mut statement = connection
                    .prepare_cached(
                        "SELECT store, key FROM user_keys WHERE user_id = ?1 AND (NOT ?2 OR (store, key) > (?3, ?4))
                         ORDER BY store, key LIMIT ?5",
                    )
                    .map_err(sql_error("looking up a user id"))?;
                let rows = statement
                    .query_map(params![user_id, has_after, after_store, after_key, limit as i64 + 1], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                    })
                    .map_err(sql_error("looking up a user id"))?;
                let mut ids = Vec::new();
                for row in rows {
                    let (store, key) = row.map_err(sql_error("looking up a user id"))?;
                    ids.push(DocId::parse(&store, &key).map_err(|error| StoreError::corrupt(error.to_string()))?);
                }
                Ok(DocIdPage::from_fetched(ids, limit))
            })
            .await
    }

    async fn keys_by_member(
        &self,
        store: &StoreName,
        index: &str,
        member: &str,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Key>, StoreError> {
        require_index(&self.decls(store).await?, index, false)?;
        let limit = index_page_size(limit, self.limits.page_size_default) as i64;
        let (store, index, member) = (store.clone(), index.to_string(), member.to_string());
        let after = after.map(|key| key.to_string());
        self.reads
            .read(move |connection| {
                let mut statement = connection
                    .prepare_cached(
                        "SELECT key FROM index_members WHERE store = ?1 AND name = ?2 AND member = ?3
                         AND (?4 IS NULL OR key > ?4) ORDER BY key LIMIT ?5",
                    )
                    .map_err(sql_error("looking up an index member"))?;
                let rows = statement
                    .query_map(params![store.as_str(), index, member, after, limit], |row| row.get::<_, String>(0))
                    .map_err(sql_error("looking up an index member"))?;
                rows.map(|row| key_of(&store, row.map_err(sql_error("looking up an index member"))?)).collect()
            })
            .await
    }

    async fn index_top(
        &self,
        store: &StoreName,
        index: &str,
        after: Option<&RankCursor>,
        limit: usize,
    ) -> Result<Vec<RankedKey>, StoreError> {
        require_index(&self.decls(store).await?, index, true)?;
        let limit = index_page_size(limit, self.limits.page_size_default) as i64;
        let (store, index) = (store.clone(), index.to_string());
        let (has_after, after_value, after_key) =
            after.map_or((false, 0.0, String::new()), |cursor| (true, cursor.value, cursor.key.to_string()));
        self.reads
            .read(move |connection| {
                let mut statement = connection
                    .prepare_cached(
                        "SELECT key, value FROM index_numbers WHERE store = ?1 AND name = ?2
                         AND (NOT ?3 OR value < ?4 OR (value = ?4 AND key > ?5))
                         ORDER BY value DESC, key ASC LIMIT ?6",
                    )
                    .map_err(sql_error("reading an index"))?;
                let rows = statement
                    .query_map(params![store.as_str(), index, has_after, after_value, after_key, limit], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, f64>(1)?))
                    })
                    .map_err(sql_error("reading an index"))?;
                rows.map(|row| {
                    let (key, value) = row.map_err(sql_error("reading an index"))?;
                    Ok(RankedKey { key: key_of(&store, key)?, value })
                })
                .collect()
            })
            .await
    }

    async fn index_rank(&self, store: &StoreName, index: &str, key: &Key) -> Result<Option<Rank>, StoreError> {
        require_index(&self.decls(store).await?, index, true)?;
        let (store, index, key) = (store.to_string(), index.to_string(), key.to_string());
        self.reads
            .read(move |connection| {
                let value: Option<f64> = connection
                    .prepare_cached("SELECT value FROM index_numbers WHERE store = ?1 AND name = ?2 AND key = ?3")
                    .and_then(|mut statement| {
                        statement.query_row(params![store, index, key], |row| row.get(0)).optional()
                    })
                    .map_err(sql_error("reading an index"))?;
                let Some(value) = value else { return Ok(None) };
                let above: i64 = connection
                    .prepare_cached(
                        "SELECT count(*) FROM index_numbers WHERE store = ?1 AND name = ?2
                         AND (value > ?3 OR (value = ?3 AND key < ?4))",
                    )
                    .and_then(|mut statement| statement.query_row(params![store, index, value, key], |row| row.get(0)))
                    .map_err(sql_error("reading an index"))?;
                Ok(Some(Rank { rank: above as u64 + 1, value }))
            })
            .await
    }

    async fn index_count(
        &self,
        store: &StoreName,
        index: &str,
        min: Option<f64>,
        max: Option<f64>,
    ) -> Result<u64, StoreError> {
        require_index(&self.decls(store).await?, index, true)?;
        let (store, index) = (store.to_string(), index.to_string());
        self.reads
            .read(move |connection| {
                let count: i64 = connection
                    .prepare_cached(
                        "SELECT count(*) FROM index_numbers WHERE store = ?1 AND name = ?2
                         AND (?3 IS NULL OR value >= ?3) AND (?4 IS NULL OR value <= ?4)",
                    )
                    .and_then(|mut statement| statement.query_row(params![store, index, min, max], |row| row.get(0)))
                    .map_err(sql_error("counting an index"))?;
                Ok(count as u64)
            })
            .await
    }

    async fn purge_history(&self, ids: &[DocId]) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        self.operator_write(move |connection| purge(connection, &ids)).await
    }
}
