//! The `history` table of the PostgreSQL store: superseded versions (the latest version is the
//! `docs` row), listed, rebuilt and pruned. The encoding and the pruning plan are
//! `store::history`'s.
//!
//! Invariant: a version is rebuilt from rows of one snapshot: a listing is one statement, and a
//! read runs in a REPEATABLE READ transaction, because under READ COMMITTED a commit landing
//! between two statements would put a new `docs` value under history rows read before it.
//! Pruning locks each key's `docs` row first (`FOR UPDATE`, in the committers' canonical order, so
//! it never deadlocks with them) and so works on a history no commit can extend meanwhile; it
//! deletes a row only in the transaction that re-encodes the row below it.

use std::collections::BTreeMap;

use deadpool_postgres::Pool;
use tokio_postgres::types::Type;
use tokio_postgres::{IsolationLevel, Row};

use super::rows::{
    VERSION_INFO_COLUMNS, counter_from_db, counter_to_db, parse_metadata, parse_value, version_info_from_row,
};
use super::sql::Sql;
use super::unavailable;
use crate::store::history::{RowMeta, StoredPayload, doomed_rows, plan_prune, rebuild_lowest};
use crate::store::limits::{HistoryPolicy, Limits};
use crate::store::types::{DocId, VersionInfo, VersionQuery, VersionRecord};
use crate::store::{PrunedPage, StoreError};

/// History rows one pruning transaction examines at most (whole keys), so pruning never holds
/// the locks of many keys (and delays their commits) for long.
pub const PRUNE_HISTORY_ROWS_PER_TRANSACTION: i64 = 500;

/// Rows above a delta fetched per round trip while rebuilding it (a keyframe ends the walk long
/// before this with the default keyframe interval).
const REBUILD_ROWS_PER_FETCH: i64 = 128;

pub async fn list_versions(
    pool: &Pool,
    sql: &Sql,
    id: &DocId,
    query: &VersionQuery,
    limits: &Limits,
) -> Result<Vec<VersionInfo>, StoreError> {
    let limit = i64::try_from(limits.page_size(query.limit)).unwrap_or(i64::MAX);
    let before = query.before_version.map_or(i64::MAX, counter_to_db);
    let client = pool.get().await.map_err(|error| unavailable("get a connection", error))?;
    // One statement, so the current version and the superseded ones come from one snapshot.
    let template = format!(
        "SELECT {VERSION_INFO_COLUMNS} FROM {{history}}
         WHERE store = $1 AND key = $2 AND version < $3
         UNION ALL
         SELECT version, updated_at_ms, value IS NULL, coalesce(octet_length(value), 0)::bigint, last_commit_id
         FROM {{docs}} WHERE store = $1 AND key = $2 AND version < $3 AND version > 0
         ORDER BY version DESC
         LIMIT $4"
    );
    let rows = sql
        .query(
            &client,
            &template,
            &[
                (&id.store.as_str(), Type::TEXT),
                (&id.key.as_str(), Type::TEXT),
                (&before, Type::INT8),
                (&limit, Type::INT8),
            ],
        )
        .await
        .map_err(|error| unavailable("list versions", error))?;
    rows.iter().map(|row| version_info_from_row(row, id)).collect()
}

fn payload_from_row(row: &Row, id: &DocId) -> Result<(u64, StoredPayload), StoreError> {
    let read = |error: tokio_postgres::Error| unavailable("read history", error);
    let version = counter_from_db(row.try_get("version").map_err(read)?, "version", &id.to_string())?;
    let deleted: bool = row.try_get("deleted").map_err(read)?;
    let value: Option<String> = row.try_get("value").map_err(read)?;
    let delta: Option<Vec<u8>> = row.try_get("delta").map_err(read)?;
    Ok((version, StoredPayload::from_columns(id, version, deleted, value, delta)?))
}

/// Reads one version with its contents: the document for the current version, else its history
/// row rebuilt through the deltas above it, all in one REPEATABLE READ snapshot.
pub async fn get_version(
    pool: &Pool,
    sql: &Sql,
    id: &DocId,
    version: u64,
) -> Result<Option<VersionRecord>, StoreError> {
    let Ok(wanted) = i64::try_from(version) else { return Ok(None) };
    let read = |error: tokio_postgres::Error| unavailable("read a version", error);
    let mut client = pool.get().await.map_err(|error| unavailable("get a connection", error))?;
    let transaction = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(read)?;
    let store_and_key: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
        [(&id.store.as_str(), Type::TEXT), (&id.key.as_str(), Type::TEXT)];
    let document = sql
        .query_opt(
            &transaction,
            "SELECT version, updated_at_ms AS written_at_ms, value IS NULL AS deleted,
                    coalesce(octet_length(value), 0)::bigint AS value_bytes, last_commit_id AS commit_id,
                    value, attributes, user_ids
             FROM {docs} WHERE store = $1 AND key = $2",
            &store_and_key,
        )
        .await
        .map_err(read)?;
    let Some(document) = document else { return Ok(None) };
    let current_version: i64 = document.try_get("version").map_err(read)?;
    if wanted == 0 || wanted > current_version {
        return Ok(None);
    }
    let current_text: Option<String> = document.try_get("value").map_err(read)?;
    let record_of = |row: &Row, text: Option<String>| -> Result<VersionRecord, StoreError> {
        let attributes: String = row.try_get("attributes").map_err(read)?;
        let user_ids: String = row.try_get("user_ids").map_err(read)?;
        let info = version_info_from_row(row, id)?;
        let (attributes, user_ids) = parse_metadata(&attributes, &user_ids, id, info.version)?;
        Ok(VersionRecord {
            value: text.map(|text| parse_value(&text, id, info.version)).transpose()?,
            info,
            attributes,
            user_ids,
        })
    };
    if wanted == current_version {
        return record_of(&document, current_text).map(Some);
    }
    let row = sql
        .query_opt(
            &transaction,
            &format!("SELECT {VERSION_INFO_COLUMNS}, value, delta, attributes, user_ids FROM {{history}} WHERE store = $1 AND key = $2 AND version = $3"),
            &[(&id.store.as_str(), Type::TEXT), (&id.key.as_str(), Type::TEXT), (&wanted, Type::INT8)],
        )
        .await
        .map_err(read)?;
    let Some(row) = row else { return Ok(None) };
    let mut chain = vec![payload_from_row(&row, id)?];
    let mut top_text = current_text;
    let mut after = wanted;
    'walk: while chain.last().is_some_and(|(_, payload)| payload.needs_successor()) {
        // The rows above, up to the first that needs no successor; without one, the document's
        // value is the base.
        let above = sql
            .query(
                &transaction,
                "SELECT version, deleted, value, delta FROM {history}
                 WHERE store = $1 AND key = $2 AND version > $3 ORDER BY version LIMIT $4",
                &[
                    (&id.store.as_str(), Type::TEXT),
                    (&id.key.as_str(), Type::TEXT),
                    (&after, Type::INT8),
                    (&REBUILD_ROWS_PER_FETCH, Type::INT8),
                ],
            )
            .await
            .map_err(read)?;
        let fetched = above.len();
        for row in &above {
            let (above_version, payload) = payload_from_row(row, id)?;
            after = counter_to_db(above_version);
            match payload {
                StoredPayload::Delta(_) => chain.push((above_version, payload)),
                StoredPayload::Full(text) => {
                    top_text = Some(text);
                    break 'walk;
                }
                StoredPayload::Deleted => {
                    top_text = None;
                    break 'walk;
                }
            }
        }
        if i64::try_from(fetched).unwrap_or(i64::MAX) < REBUILD_ROWS_PER_FETCH {
            break;
        }
    }
    let text = rebuild_lowest(id, &chain, top_text.as_deref())?;
    transaction.commit().await.map_err(read)?;
    record_of(&row, text).map(Some)
}

/// One pruning step: transactions of at most `PRUNE_HISTORY_ROWS_PER_TRANSACTION` rows until
/// `rows_max` rows were examined or the history's end was reached.
pub async fn prune_history_page(
    pool: &Pool,
    sql: &Sql,
    after: Option<DocId>,
    rows_max: usize,
    policy: &HistoryPolicy,
) -> Result<PrunedPage, StoreError> {
    let mut done = PrunedPage::default();
    let mut cursor = after;
    loop {
        let examined = usize::try_from(done.rows_examined).unwrap_or(usize::MAX);
        let budget = i64::try_from(rows_max.saturating_sub(examined))
            .unwrap_or(i64::MAX)
            .clamp(1, PRUNE_HISTORY_ROWS_PER_TRANSACTION);
        let (pruned, rows_examined, next) = prune_transaction(pool, sql, cursor.as_ref(), budget, policy).await?;
        done.pruned += pruned;
        done.rows_examined += rows_examined;
        cursor = next;
        let examined = usize::try_from(done.rows_examined).unwrap_or(usize::MAX);
        if cursor.is_none() || examined >= rows_max || rows_examined == 0 {
            done.next_after = cursor;
            return Ok(done);
        }
    }
}

/// One transaction: the keys after `after` whose rows add up to `budget` (whole keys), locked,
/// judged and pruned. Returns (pruned, rows examined, the last key or `None` at the end).
async fn prune_transaction(
    pool: &Pool,
    sql: &Sql,
    after: Option<&DocId>,
    budget: i64,
    policy: &HistoryPolicy,
) -> Result<(u64, u64, Option<DocId>), StoreError> {
    let prune = |error: tokio_postgres::Error| unavailable("prune history", error);
    let mut client = pool.get().await.map_err(|error| unavailable("get a connection", error))?;
    let (after_store, after_key) = after.map_or(("", ""), |id| (id.store.as_str(), id.key.as_str()));
    // Which keys: the next ones with history, as many as make up the budget (at least one).
    let counted = sql
        .query(
            &client,
            "SELECT store, key, count(*) AS rows FROM {history} WHERE (store, key) > ($1, $2)
             GROUP BY store, key ORDER BY store, key LIMIT $3",
            &[(&after_store, Type::TEXT), (&after_key, Type::TEXT), (&budget, Type::INT8)],
        )
        .await
        .map_err(prune)?;
    let mut ids: Vec<DocId> = Vec::new();
    let mut counted_rows = 0i64;
    for row in &counted {
        let store: &str = row.try_get("store").map_err(prune)?;
        let key: &str = row.try_get("key").map_err(prune)?;
        let rows: i64 = row.try_get("rows").map_err(prune)?;
        ids.push(
            DocId::parse(store, key)
                .map_err(|error| StoreError::corrupt(format!("history key {store}/{key}: {error}")))?,
        );
        counted_rows += rows;
        if counted_rows >= budget {
            break;
        }
    }
    let reached_end = i64::try_from(counted.len()).unwrap_or(i64::MAX) < budget && ids.len() == counted.len();
    if ids.is_empty() {
        return Ok((0, 0, None));
    }
    let stores: Vec<&str> = ids.iter().map(|id| id.store.as_str()).collect();
    let keys: Vec<&str> = ids.iter().map(|id| id.key.as_str()).collect();
    let transaction = client.build_transaction().isolation_level(sql.isolation()).start().await.map_err(prune)?;
    let now_row = sql
        .query_opt(&transaction, "SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint", &[])
        .await
        .map_err(prune)?
        .ok_or_else(|| StoreError::unavailable("postgres: prune history: the clock answered no row"))?;
    let now_ms: i64 = now_row.try_get(0).map_err(prune)?;
    let documents = sql
        .query(
            &transaction,
            "SELECT d.store, d.key, d.version, d.updated_at_ms FROM {docs} AS d
             JOIN unnest($1::text[], $2::text[]) AS want(store, key) ON d.store = want.store AND d.key = want.key
             ORDER BY d.store, d.key FOR UPDATE OF d",
            &[(&stores, Type::TEXT_ARRAY), (&keys, Type::TEXT_ARRAY)],
        )
        .await
        .map_err(prune)?;
    let mut current: BTreeMap<DocId, (i64, i64)> = BTreeMap::new();
    for row in &documents {
        let store: &str = row.try_get("store").map_err(prune)?;
        let key: &str = row.try_get("key").map_err(prune)?;
        let id = DocId::parse(store, key)
            .map_err(|error| StoreError::corrupt(format!("docs key {store}/{key}: {error}")))?;
        current.insert(id, (row.try_get("version").map_err(prune)?, row.try_get("updated_at_ms").map_err(prune)?));
    }
    let metas = sql
        .query(
            &transaction,
            "SELECT h.store, h.key, h.version, h.written_at_ms FROM {history} AS h
             JOIN unnest($1::text[], $2::text[]) AS want(store, key) ON h.store = want.store AND h.key = want.key
             ORDER BY h.store, h.key, h.version",
            &[(&stores, Type::TEXT_ARRAY), (&keys, Type::TEXT_ARRAY)],
        )
        .await
        .map_err(prune)?;
    let mut rows_by_key: BTreeMap<DocId, Vec<RowMeta>> = BTreeMap::new();
    for row in &metas {
        let store: &str = row.try_get("store").map_err(prune)?;
        let key: &str = row.try_get("key").map_err(prune)?;
        let id = DocId::parse(store, key)
            .map_err(|error| StoreError::corrupt(format!("history key {store}/{key}: {error}")))?;
        let version = counter_from_db(row.try_get("version").map_err(prune)?, "version", &id.to_string())?;
        rows_by_key
            .entry(id)
            .or_default()
            .push(RowMeta { version, written_at_ms: row.try_get("written_at_ms").map_err(prune)? });
    }
    let rows_examined = metas.len() as u64;
    let mut delete = (Vec::<String>::new(), Vec::<String>::new(), Vec::<i64>::new());
    let mut rewrite = (
        Vec::<String>::new(),
        Vec::<String>::new(),
        Vec::<i64>::new(),
        Vec::<Option<String>>::new(),
        Vec::<Option<Vec<u8>>>::new(),
    );
    for (id, rows) in &rows_by_key {
        let Some((current_version, current_written_at_ms)) = current.get(id).copied() else {
            return Err(StoreError::corrupt(format!("{id} has history rows but no document")));
        };
        if rows.last().is_some_and(|row| counter_to_db(row.version) >= current_version) {
            return Err(StoreError::corrupt(format!(
                "{id} has a history row at or above its current version {current_version}"
            )));
        }
        let doomed = doomed_rows(rows, current_written_at_ms, now_ms, policy);
        if !doomed.iter().any(|gone| *gone) {
            continue;
        }
        let store_and_key: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
            [(&id.store.as_str(), Type::TEXT), (&id.key.as_str(), Type::TEXT)];
        let payload_rows = sql
            .query(
                &transaction,
                "SELECT version, deleted, value, delta FROM {history} WHERE store = $1 AND key = $2 ORDER BY version",
                &store_and_key,
            )
            .await
            .map_err(prune)?;
        let payloads = payload_rows.iter().map(|row| payload_from_row(row, id)).collect::<Result<Vec<_>, _>>()?;
        let document = sql
            .query_opt(&transaction, "SELECT value FROM {docs} WHERE store = $1 AND key = $2", &store_and_key)
            .await
            .map_err(prune)?
            .ok_or_else(|| StoreError::corrupt(format!("{id} has history rows but no document")))?;
        let current_text: Option<String> = document.try_get("value").map_err(prune)?;
        let plan = plan_prune(id, &payloads, &doomed, current_text.as_deref(), policy)?;
        for version in plan.delete_versions {
            delete.0.push(id.store.as_str().to_string());
            delete.1.push(id.key.as_str().to_string());
            delete.2.push(counter_to_db(version));
        }
        for (version, payload) in plan.rewrite {
            let (value, delta) = payload.into_columns();
            rewrite.0.push(id.store.as_str().to_string());
            rewrite.1.push(id.key.as_str().to_string());
            rewrite.2.push(counter_to_db(version));
            rewrite.3.push(value);
            rewrite.4.push(delta);
        }
    }
    if !rewrite.0.is_empty() {
        sql.query(
            &transaction,
            "UPDATE {history} AS h SET value = n.value, delta = n.delta
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bytea[]) AS n(store, key, version, value, delta)
             WHERE h.store = n.store AND h.key = n.key AND h.version = n.version",
            &[
                (&rewrite.0, Type::TEXT_ARRAY),
                (&rewrite.1, Type::TEXT_ARRAY),
                (&rewrite.2, Type::INT8_ARRAY),
                (&rewrite.3, Type::TEXT_ARRAY),
                (&rewrite.4, Type::BYTEA_ARRAY),
            ],
        )
            .await
            .map_err(prune)?;
    }
    let pruned = if delete.0.is_empty() {
        0
    } else {
        let deleted = sql
            .query(
                &transaction,
                "DELETE FROM {history} AS h USING unnest($1::text[], $2::text[], $3::bigint[]) AS d(store, key, version)
                 WHERE h.store = d.store AND h.key = d.key AND h.version = d.version
                 RETURNING 1",
                &[(&delete.0, Type::TEXT_ARRAY), (&delete.1, Type::TEXT_ARRAY), (&delete.2, Type::INT8_ARRAY)],
            )
            .await
            .map_err(prune)?;
        deleted.len() as u64
    };
    transaction.commit().await.map_err(prune)?;
    let next = if reached_end { None } else { ids.last().cloned() };
    Ok((pruned, rows_examined, next))
}
