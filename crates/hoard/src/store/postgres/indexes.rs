//! PostgreSQL's index rows (schema 4): the group committer's part (what a batch changes, sent in
//! the batch's pipeline before COMMIT) and the `OperatorStore` lookups, declarations and purges.
//!
//! Invariants:
//! - A batch takes its stores' index locks shared (`LOCK_STORES_SHARED_SQL`) after its row
//!   locks and reads the declarations in a later statement, so it sees every declaration that
//!   committed before it; declaring or dropping takes the lock exclusive, so no batch is in flight
//!   on that store while it fills or empties an index. Batches never wait on each other for it
//!   (shared), and a declaration holds no row lock, so no cycle can form.
//! - Index rows of a key change only with that key's row locked by the batch that changed it.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

use tokio_postgres::types::Type;

use super::sql::Param;
use super::{PostgresProfile, PostgresStore, unavailable};
use crate::store::StoreError;
use crate::store::index::{IndexDecl, IndexKind, entries_for};
use crate::store::operator::{
    DocIdPage, OperatorStore, Rank, RankCursor, RankedKey, check_new_decl, index_page_size, require_index,
};
use crate::store::types::{DocId, Key, StoreName};

/// The advisory lock key of a store's indexes, within this schema.
const LOCK_KEY_SQL: &str = "hashtextextended({schema_name} || ':hoard-index:' || s, 0)";

/// Every store of a batch, index lock taken shared, in sorted order.
pub(super) static LOCK_STORES_SHARED_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT count(pg_advisory_xact_lock_shared({LOCK_KEY_SQL}))
         FROM (SELECT DISTINCT s FROM unnest($1::text[]) AS u(s) ORDER BY s) AS stores"
    )
});

pub(super) const SELECT_DECLS_SQL: &str =
    "SELECT store, name, kind, path FROM {index_decls} WHERE store = ANY($1::text[]) ORDER BY store, name";

pub(super) const DELETE_INDEX_ROWS_SQL: &str = "WITH u AS (
         DELETE FROM {user_keys} AS t USING unnest($1::text[], $2::text[]) AS w(store, key)
         WHERE t.store = w.store AND t.key = w.key RETURNING 1
     ), n AS (
         DELETE FROM {index_numbers} AS t USING unnest($3::text[], $4::text[]) AS w(store, key)
         WHERE t.store = w.store AND t.key = w.key RETURNING 1
     ), m AS (
         DELETE FROM {index_members} AS t USING unnest($3::text[], $4::text[]) AS w(store, key)
         WHERE t.store = w.store AND t.key = w.key RETURNING 1
     )
     SELECT (SELECT count(*) FROM u) + (SELECT count(*) FROM n) + (SELECT count(*) FROM m) AS deleted";

pub(super) const INSERT_INDEX_ROWS_SQL: &str = "WITH u AS (
         INSERT INTO {user_keys} (user_id, store, key)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING RETURNING 1
     ), n AS (
         INSERT INTO {index_numbers} (store, name, key, value)
         SELECT * FROM unnest($4::text[], $5::text[], $6::text[], $7::float8[]) RETURNING 1
     ), m AS (
         INSERT INTO {index_members} (store, name, member, key)
         SELECT * FROM unnest($8::text[], $9::text[], $10::text[], $11::text[]) ON CONFLICT DO NOTHING RETURNING 1
     )
     SELECT (SELECT count(*) FROM u) + (SELECT count(*) FROM n) + (SELECT count(*) FROM m) AS inserted";

/// The declarations the batch read, by store.
pub(super) fn decls_from_rows(rows: &[tokio_postgres::Row]) -> Result<HashMap<String, Vec<IndexDecl>>, String> {
    let mut decls: HashMap<String, Vec<IndexDecl>> = HashMap::new();
    for row in rows {
        let decl = decl_from_row(row)?;
        decls.entry(decl.store.as_str().to_string()).or_default().push(decl);
    }
    Ok(decls)
}

fn decl_from_row(row: &tokio_postgres::Row) -> Result<IndexDecl, String> {
    let text = |column: &str| row.try_get::<_, String>(column).map_err(|error| error.to_string());
    let store = StoreName::new(text("store")?).map_err(|error| error.to_string())?;
    let kind = IndexKind::parse(&text("kind")?).map_err(|error| error.to_string())?;
    Ok(IndexDecl { store, name: text("name")?, kind, path: text("path")? })
}

/// The index rows a batch deletes and inserts, as the columns of the two statements.
#[derive(Debug, Default)]
pub(super) struct IndexColumns {
    pub user_delete_stores: Vec<String>,
    pub user_delete_keys: Vec<String>,
    pub path_delete_stores: Vec<String>,
    pub path_delete_keys: Vec<String>,
    pub user_ids: Vec<String>,
    pub user_stores: Vec<String>,
    pub user_keys: Vec<String>,
    pub number_stores: Vec<String>,
    pub number_names: Vec<String>,
    pub number_keys: Vec<String>,
    pub number_values: Vec<f64>,
    pub member_stores: Vec<String>,
    pub member_names: Vec<String>,
    pub member_members: Vec<String>,
    pub member_keys: Vec<String>,
}

impl IndexColumns {
    pub fn is_empty(&self) -> bool {
        self.user_delete_keys.is_empty() && self.path_delete_keys.is_empty()
    }

    /// The key's user ids changed from `old` to `new`.
    pub fn user_ids_changed(&mut self, id: &DocId, new: &[String]) {
        self.user_delete_stores.push(id.store.to_string());
        self.user_delete_keys.push(id.key.to_string());
        for user_id in new {
            self.user_ids.push(user_id.clone());
            self.user_stores.push(id.store.to_string());
            self.user_keys.push(id.key.to_string());
        }
    }

    /// The key's value changed to `text` (`None`: deleted): its rows in every declared index.
    pub fn value_changed(&mut self, id: &DocId, decls: &[IndexDecl], text: Option<&str>) -> Result<(), StoreError> {
        let value = match text {
            Some(text) => Some(
                serde_json::from_str::<serde_json::Value>(text)
                    .map_err(|error| StoreError::corrupt(format!("indexing {id}: {error}")))?,
            ),
            None => None,
        };
        self.path_delete_stores.push(id.store.to_string());
        self.path_delete_keys.push(id.key.to_string());
        for decl in decls {
            self.push_entries(decl, id.key.as_str(), value.as_ref());
        }
        Ok(())
    }

    fn push_entries(&mut self, decl: &IndexDecl, key: &str, value: Option<&serde_json::Value>) {
        let entries = entries_for(decl, value);
        if let Some(number) = entries.number {
            self.number_stores.push(decl.store.to_string());
            self.number_names.push(decl.name.clone());
            self.number_keys.push(key.to_string());
            self.number_values.push(number);
        }
        for member in entries.members {
            self.member_stores.push(decl.store.to_string());
            self.member_names.push(decl.name.clone());
            self.member_members.push(member);
            self.member_keys.push(key.to_string());
        }
    }

    pub fn delete_params(&self) -> [Param<'_>; 4] {
        [
            (&self.user_delete_stores, Type::TEXT_ARRAY),
            (&self.user_delete_keys, Type::TEXT_ARRAY),
            (&self.path_delete_stores, Type::TEXT_ARRAY),
            (&self.path_delete_keys, Type::TEXT_ARRAY),
        ]
    }

    pub fn insert_params(&self) -> [Param<'_>; 11] {
        [
            (&self.user_ids, Type::TEXT_ARRAY),
            (&self.user_stores, Type::TEXT_ARRAY),
            (&self.user_keys, Type::TEXT_ARRAY),
            (&self.number_stores, Type::TEXT_ARRAY),
            (&self.number_names, Type::TEXT_ARRAY),
            (&self.number_keys, Type::TEXT_ARRAY),
            (&self.number_values, Type::FLOAT8_ARRAY),
            (&self.member_stores, Type::TEXT_ARRAY),
            (&self.member_names, Type::TEXT_ARRAY),
            (&self.member_members, Type::TEXT_ARRAY),
            (&self.member_keys, Type::TEXT_ARRAY),
        ]
    }
}

/// Rows a declaration's fill reads from `docs` per statement.
const DECLARE_FILL_ROWS_PER_FETCH: i64 = 1_000;

fn key_of(store: &StoreName, text: String) -> Result<Key, StoreError> {
    Key::new(text).map_err(|error| StoreError::corrupt(format!("an index of {store} names a bad key: {error}")))
}

impl PostgresStore {
    async fn decls(&self, store: &StoreName) -> Result<Vec<IndexDecl>, StoreError> {
        let client = self.client().await?;
        let stores = vec![store.as_str()];
        let rows = self
            .sql
            .query(&client, SELECT_DECLS_SQL, &[(&stores, Type::TEXT_ARRAY)])
            .await
            .map_err(|error| unavailable("read index declarations", error))?;
        let decls = decls_from_rows(&rows).map_err(StoreError::corrupt)?;
        Ok(decls.into_values().next().unwrap_or_default())
    }
}

/// Begins a transaction holding the store's index lock exclusively. The portable profile takes
/// no advisory lock: its transactions are SERIALIZABLE, so a declaration and a batch that would
/// each miss the other's writes cannot both commit (one fails with 40001; a batch retries).
async fn index_lock<'a>(
    store: &PostgresStore,
    client: &'a mut deadpool_postgres::Object,
    name: &StoreName,
    context: &'static str,
) -> Result<deadpool_postgres::Transaction<'a>, StoreError> {
    let transaction = client
        .build_transaction()
        .isolation_level(store.sql.isolation())
        .start()
        .await
        .map_err(|error| unavailable(context, error))?;
    if store.profile == PostgresProfile::Full {
        let lock = format!("SELECT pg_advisory_xact_lock({})", LOCK_KEY_SQL.replace(" s,", " $1,"));
        store
            .sql
            .query(&transaction, &lock, &[(&name.as_str(), Type::TEXT)])
            .await
            .map_err(|error| unavailable(context, error))?;
    }
    Ok(transaction)
}

#[async_trait]
impl OperatorStore for PostgresStore {
    async fn declare_index(&self, decl: IndexDecl) -> Result<u64, StoreError> {
        decl.check()?;
        let context = "declare an index";
        let mut client = self.client().await?;
        let transaction = index_lock(self, &mut client, &decl.store, context).await?;
        {
            let stores = vec![decl.store.as_str()];
            let rows = self
                .sql
                .query(&transaction, SELECT_DECLS_SQL, &[(&stores, Type::TEXT_ARRAY)])
                .await
                .map_err(|error| unavailable(context, error))?;
            let existing =
                decls_from_rows(&rows).map_err(StoreError::corrupt)?.into_values().next().unwrap_or_default();
            if !check_new_decl(&decl, &existing)? {
                return Ok(0);
            }
            self.sql
                .query(
                    &transaction,
                    "INSERT INTO {index_decls} (store, name, kind, path) VALUES ($1, $2, $3, $4)",
                    &[
                        (&decl.store.as_str(), Type::TEXT),
                        (&decl.name, Type::TEXT),
                        (&decl.kind.as_str(), Type::TEXT),
                        (&decl.path, Type::TEXT),
                    ],
                )
                .await
                .map_err(|error| unavailable(context, error))?;
            let mut indexed = 0u64;
            let mut after = String::new();
            loop {
                let rows = self
                    .sql
                    .query(
                        &transaction,
                        "SELECT key, value FROM {docs} WHERE store = $1 AND key > $2 AND value IS NOT NULL
                         ORDER BY key LIMIT $3",
                        &[
                            (&decl.store.as_str(), Type::TEXT),
                            (&after, Type::TEXT),
                            (&DECLARE_FILL_ROWS_PER_FETCH, Type::INT8),
                        ],
                    )
                    .await
                    .map_err(|error| unavailable(context, error))?;
                let Some(last) = rows.last() else { break };
                after = last.try_get("key").map_err(|error| unavailable(context, error))?;
                let mut columns = IndexColumns::default();
                for row in &rows {
                    let key: String = row.try_get("key").map_err(|error| unavailable(context, error))?;
                    let text: String = row.try_get("value").map_err(|error| unavailable(context, error))?;
                    let value: serde_json::Value = serde_json::from_str(&text)
                        .map_err(|error| StoreError::corrupt(format!("indexing {}/{key}: {error}", decl.store)))?;
                    columns.push_entries(&decl, &key, Some(&value));
                    indexed += 1;
                }
                self.sql
                    .query(&transaction, INSERT_INDEX_ROWS_SQL, &columns.insert_params())
                    .await
                    .map_err(|error| unavailable(context, error))?;
            }
            transaction.commit().await.map_err(|error| unavailable(context, error))?;
            Ok(indexed)
        }
    }

    async fn drop_index(&self, store: &StoreName, name: &str) -> Result<bool, StoreError> {
        let context = "drop an index";
        let mut client = self.client().await?;
        let transaction = index_lock(self, &mut client, store, context).await?;
        let store = store.as_str();
        let params: [Param<'_>; 2] = [(&store, Type::TEXT), (&name, Type::TEXT)];
        for template in [
            "DELETE FROM {index_numbers} WHERE store = $1 AND name = $2",
            "DELETE FROM {index_members} WHERE store = $1 AND name = $2",
        ] {
            self.sql.query(&transaction, template, &params).await.map_err(|error| unavailable(context, error))?;
        }
        let dropped = self
            .sql
            .query(&transaction, "DELETE FROM {index_decls} WHERE store = $1 AND name = $2 RETURNING 1", &params)
            .await
            .map_err(|error| unavailable(context, error))?;
        transaction.commit().await.map_err(|error| unavailable(context, error))?;
        Ok(!dropped.is_empty())
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
        let (after_store, after_key) =
            after.map_or((None, None), |id| (Some(id.store.as_str()), Some(id.key.as_str())));
        let client = self.client().await?;
        let fetch = limit as i64 + 1;
        let rows = self
            .sql
            .query(
                &client,
                "SELECT store, key FROM {user_keys} WHERE user_id = $1
                   AND ($2::text IS NULL OR (store, key) > ($2::text, $3::text))
                 ORDER BY store, key LIMIT $4",
                &[(&user_id, Type::TEXT), (&after_store, Type::TEXT), (&after_key, Type::TEXT), (&fetch, Type::INT8)],
            )
            .await
            .map_err(|error| unavailable("look up a user id", error))?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            let store: String = row.try_get("store").map_err(|error| unavailable("look up a user id", error))?;
            let key: String = row.try_get("key").map_err(|error| unavailable("look up a user id", error))?;
            ids.push(DocId::parse(&store, &key).map_err(|error| StoreError::corrupt(error.to_string()))?);
        }
        Ok(DocIdPage::from_fetched(ids, limit))
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
        let after = after.map(Key::as_str);
        let client = self.client().await?;
        let rows = self
            .sql
            .query(
                &client,
                "SELECT key FROM {index_members} WHERE store = $1 AND name = $2 AND member = $3
                   AND ($4::text IS NULL OR key > $4) ORDER BY key LIMIT $5",
                &[
                    (&store.as_str(), Type::TEXT),
                    (&index, Type::TEXT),
                    (&member, Type::TEXT),
                    (&after, Type::TEXT),
                    (&limit, Type::INT8),
                ],
            )
            .await
            .map_err(|error| unavailable("look up an index member", error))?;
        rows.iter()
            .map(|row| {
                let key: String = row.try_get(0).map_err(|error| unavailable("look up an index member", error))?;
                key_of(store, key)
            })
            .collect()
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
        let (after_value, after_key) =
            after.map_or((None, None), |cursor| (Some(cursor.value), Some(cursor.key.as_str())));
        let client = self.client().await?;
        let rows = self
            .sql
            .query(
                &client,
                "SELECT key, value FROM {index_numbers} WHERE store = $1 AND name = $2
                   AND ($3::float8 IS NULL OR value < $3 OR (value = $3 AND key > $4::text))
                 ORDER BY value DESC, key ASC LIMIT $5",
                &[
                    (&store.as_str(), Type::TEXT),
                    (&index, Type::TEXT),
                    (&after_value, Type::FLOAT8),
                    (&after_key, Type::TEXT),
                    (&limit, Type::INT8),
                ],
            )
            .await
            .map_err(|error| unavailable("read an index", error))?;
        rows.iter()
            .map(|row| {
                let key: String = row.try_get("key").map_err(|error| unavailable("read an index", error))?;
                let value: f64 = row.try_get("value").map_err(|error| unavailable("read an index", error))?;
                Ok(RankedKey { key: key_of(store, key)?, value })
            })
            .collect()
    }

    async fn index_rank(&self, store: &StoreName, index: &str, key: &Key) -> Result<Option<Rank>, StoreError> {
        require_index(&self.decls(store).await?, index, true)?;
        let client = self.client().await?;
        let row = self
            .sql
            .query_opt(
                &client,
                "SELECT n.value, (SELECT count(*) FROM {index_numbers} AS o WHERE o.store = n.store AND o.name = n.name
                                   AND (o.value > n.value OR (o.value = n.value AND o.key < n.key))) AS above
                 FROM {index_numbers} AS n WHERE n.store = $1 AND n.name = $2 AND n.key = $3",
                &[(&store.as_str(), Type::TEXT), (&index, Type::TEXT), (&key.as_str(), Type::TEXT)],
            )
            .await
            .map_err(|error| unavailable("read an index", error))?;
        let Some(row) = row else { return Ok(None) };
        let value: f64 = row.try_get("value").map_err(|error| unavailable("read an index", error))?;
        let above: i64 = row.try_get("above").map_err(|error| unavailable("read an index", error))?;
        Ok(Some(Rank { rank: above as u64 + 1, value }))
    }

    async fn index_count(
        &self,
        store: &StoreName,
        index: &str,
        min: Option<f64>,
        max: Option<f64>,
    ) -> Result<u64, StoreError> {
        require_index(&self.decls(store).await?, index, true)?;
        let client = self.client().await?;
        let row = self
            .sql
            .query_opt(
                &client,
                "SELECT count(*) FROM {index_numbers} WHERE store = $1 AND name = $2
                   AND ($3::float8 IS NULL OR value >= $3) AND ($4::float8 IS NULL OR value <= $4)",
                &[(&store.as_str(), Type::TEXT), (&index, Type::TEXT), (&min, Type::FLOAT8), (&max, Type::FLOAT8)],
            )
            .await
            .map_err(|error| unavailable("count an index", error))?
            .ok_or_else(|| StoreError::unavailable("postgres: count an index: no row answered"))?;
        let count: i64 = row.try_get(0).map_err(|error| unavailable("count an index", error))?;
        Ok(count as u64)
    }

    async fn purge_history(&self, ids: &[DocId]) -> Result<u64, StoreError> {
        let stores: Vec<&str> = ids.iter().map(|id| id.store.as_str()).collect();
        let keys: Vec<&str> = ids.iter().map(|id| id.key.as_str()).collect();
        let client = self.client().await?;
        let removed = self
            .sql
            .query(
                &client,
                "DELETE FROM {history} AS h USING unnest($1::text[], $2::text[]) AS w(store, key)
                 WHERE h.store = w.store AND h.key = w.key RETURNING 1",
                &[(&stores, Type::TEXT_ARRAY), (&keys, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(|error| unavailable("purge history", error))?;
        Ok(removed.len() as u64)
    }
}

/// Which keys of a batch got a new version: their user ids before the batch, and whether an
/// applied write changed the value.
#[derive(Debug, Default)]
pub(super) struct BatchReindex {
    pub keys: BTreeMap<DocId, (Vec<String>, bool)>,
}

impl BatchReindex {
    pub fn new_version(&mut self, id: &DocId, user_ids_before: &[String], value_changed: bool) {
        let entry = self.keys.entry(id.clone()).or_insert_with(|| (user_ids_before.to_vec(), false));
        entry.1 |= value_changed;
    }
}
