//! The `history` table of the SQLite store: superseded versions (the latest version is the `docs`
//! row), listed, rebuilt and pruned. The encoding and the pruning plan are `store::history`'s.
//!
//! Invariant: every statement here runs inside one transaction (a read transaction of the read
//! pool, or the writer's), so a version is always rebuilt from rows and a `docs` value of one
//! committed state; pruning deletes a row only in the transaction that re-encodes the row below
//! it (`history::plan_prune`), so no kept row is ever a delta against a missing successor.

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{commit_id_from_sql, counter_from_sql, counter_to_sql, from_json_text, sql_error};
use crate::store::StoreError;
use crate::store::history::{PrunePlan, RowMeta, StoredPayload, doomed_rows, plan_prune, rebuild_lowest};
use crate::store::limits::{HistoryPolicy, Limits};
use crate::store::types::{CommitId, DocId, Key, StoreName, VersionInfo, VersionQuery, VersionRecord};

/// A version that a commit just superseded, as its history row stores it.
#[derive(Debug)]
pub(crate) struct SupersededRow<'a> {
    pub id: &'a DocId,
    pub version: u64,
    pub written_at_ms: i64,
    /// Bytes of its text (0 for a deletion).
    pub value_bytes: u64,
    pub attributes: String,
    pub user_ids: String,
    pub commit_id: CommitId,
    pub payload: StoredPayload,
}

pub(crate) fn insert_superseded(connection: &Connection, row: SupersededRow<'_>) -> Result<(), StoreError> {
    let deleted = matches!(row.payload, StoredPayload::Deleted);
    let (value, delta) = row.payload.into_columns();
    connection
        .prepare_cached(
            "INSERT INTO history (store, key, version, written_at_ms, deleted, value, value_bytes, attributes, \
                                  user_ids, commit_id, delta)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .map_err(sql_error("preparing a history write"))?
        .execute(params![
            row.id.store.as_str(),
            row.id.key.as_str(),
            counter_to_sql("version", row.version)?,
            row.written_at_ms,
            deleted,
            value,
            counter_to_sql("value bytes", row.value_bytes)?,
            row.attributes,
            row.user_ids,
            row.commit_id.to_string(),
            delta,
        ])
        .map_err(sql_error("writing a history entry"))?;
    Ok(())
}

fn version_info(
    id: &DocId,
    version: i64,
    written_at_ms: i64,
    deleted: bool,
    value_bytes: i64,
    commit_id: &str,
) -> Result<VersionInfo, StoreError> {
    Ok(VersionInfo {
        version: counter_from_sql("history version", id, version)?,
        written_at_ms,
        deleted,
        value_bytes: counter_from_sql("history value bytes", id, value_bytes)?,
        commit_id: commit_id_from_sql(id, commit_id)?,
    })
}

/// The key's versions below `before_version`, newest first: the document's current version and
/// the kept superseded ones, in one statement (one snapshot).
pub(crate) fn list_versions(
    connection: &Connection,
    id: &DocId,
    query: &VersionQuery,
    limits: &Limits,
) -> Result<Vec<VersionInfo>, StoreError> {
    let page_size = i64::try_from(limits.page_size(query.limit)).unwrap_or(i64::MAX);
    let before = query.before_version.map_or(i64::MAX, |version| i64::try_from(version).unwrap_or(i64::MAX));
    let mut statement = connection
        .prepare_cached(
            "SELECT version, written_at_ms, deleted, value_bytes, commit_id FROM history
             WHERE store = ?1 AND key = ?2 AND version < ?3
             UNION ALL
             SELECT version, updated_at_ms, value IS NULL, coalesce(octet_length(value), 0), last_commit_id FROM docs
             WHERE store = ?1 AND key = ?2 AND version < ?3 AND version > 0
             ORDER BY version DESC LIMIT ?4",
        )
        .map_err(sql_error("preparing a history listing"))?;
    let rows: Vec<(i64, i64, bool, i64, String)> = statement
        .query_map(params![id.store.as_str(), id.key.as_str(), before, page_size], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
        })
        .and_then(|rows| rows.collect())
        .map_err(sql_error("listing history"))?;
    rows.into_iter()
        .map(|(version, written_at_ms, deleted, value_bytes, commit_id)| {
            version_info(id, version, written_at_ms, deleted, value_bytes, &commit_id)
        })
        .collect()
}

fn payload_from_row(
    id: &DocId,
    row: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<Result<(u64, StoredPayload), StoreError>> {
    let version: i64 = row.get(first)?;
    let deleted: bool = row.get(first + 1)?;
    let value: Option<String> = row.get(first + 2)?;
    let delta: Option<Vec<u8>> = row.get(first + 3)?;
    Ok(counter_from_sql("history version", id, version)
        .and_then(|version| Ok((version, StoredPayload::from_columns(id, version, deleted, value, delta)?))))
}

/// Reads one version with its contents: the document itself for the current version, else its
/// history row, rebuilt through the deltas above it.
pub(crate) fn read_version(
    connection: &Connection,
    id: &DocId,
    version: u64,
) -> Result<Option<VersionRecord>, StoreError> {
    let Ok(wanted) = i64::try_from(version) else { return Ok(None) };
    let document = connection
        .prepare_cached(
            "SELECT version, updated_at_ms, value, attributes, user_ids, last_commit_id FROM docs
             WHERE store = ?1 AND key = ?2",
        )
        .map_err(sql_error("preparing a version read"))?
        .query_row(params![id.store.as_str(), id.key.as_str()], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, Option<String>>(5)?,
            ))
        })
        .optional()
        .map_err(sql_error("reading a version"))?;
    let Some((current_version, updated_at_ms, current_text, attributes, user_ids, last_commit_id)) = document else {
        return Ok(None);
    };
    if wanted == 0 || wanted > current_version {
        return Ok(None);
    }
    if wanted == current_version {
        let commit_id = last_commit_id
            .ok_or_else(|| StoreError::corrupt(format!("{id} has version {current_version} but no commit id")))?;
        let value_bytes = current_text.as_ref().map_or(0, String::len) as i64;
        return Ok(Some(VersionRecord {
            info: version_info(id, current_version, updated_at_ms, current_text.is_none(), value_bytes, &commit_id)?,
            value: current_text.map(|text| from_json_text("value", id, version, &text)).transpose()?,
            attributes: from_json_text("attributes", id, version, &attributes)?,
            user_ids: from_json_text("user ids", id, version, &user_ids)?,
        }));
    }
    let row = connection
        .prepare_cached(
            "SELECT version, deleted, value, delta, written_at_ms, value_bytes, commit_id, attributes, user_ids
             FROM history WHERE store = ?1 AND key = ?2 AND version = ?3",
        )
        .map_err(sql_error("preparing a version read"))?
        .query_row(params![id.store.as_str(), id.key.as_str(), wanted], |row| {
            Ok((
                payload_from_row(id, row, 0)?,
                row.get::<_, i64>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, String>(6)?,
                row.get::<_, String>(7)?,
                row.get::<_, String>(8)?,
            ))
        })
        .optional()
        .map_err(sql_error("reading a version"))?;
    let Some((payload, written_at_ms, value_bytes, commit_id, attributes, user_ids)) = row else {
        return Ok(None);
    };
    let (_, payload) = payload?;
    let deleted = matches!(payload, StoredPayload::Deleted);
    let mut chain = vec![(version, payload)];
    let mut top_text = current_text;
    if chain[0].1.needs_successor() {
        // The rows above, up to the first that needs no successor (a keyframe or a deletion);
        // without one, the document's value is the base. Read lazily: a keyframe ends it.
        let mut statement = connection
            .prepare_cached(
                "SELECT version, deleted, value, delta FROM history
                 WHERE store = ?1 AND key = ?2 AND version > ?3 ORDER BY version",
            )
            .map_err(sql_error("preparing a version rebuild"))?;
        let mut rows = statement
            .query(params![id.store.as_str(), id.key.as_str(), wanted])
            .map_err(sql_error("rebuilding a version"))?;
        while let Some(row) = rows.next().map_err(sql_error("rebuilding a version"))? {
            let (above_version, above) = payload_from_row(id, row, 0).map_err(sql_error("rebuilding a version"))??;
            match above {
                StoredPayload::Delta(_) => chain.push((above_version, above)),
                StoredPayload::Full(text) => {
                    top_text = Some(text);
                    break;
                }
                StoredPayload::Deleted => {
                    top_text = None;
                    break;
                }
            }
        }
    }
    let text = rebuild_lowest(id, &chain, top_text.as_deref())?;
    Ok(Some(VersionRecord {
        info: version_info(id, wanted, written_at_ms, deleted, value_bytes, &commit_id)?,
        value: text.map(|text| from_json_text("history value", id, version, &text)).transpose()?,
        attributes: from_json_text("history attributes", id, version, &attributes)?,
        user_ids: from_json_text("history user ids", id, version, &user_ids)?,
    }))
}

/// A position in `prune_history_page`'s walk: the last (store, key) examined.
pub(crate) type PruneCursor = (String, String);

/// What one transaction of pruning did.
#[derive(Clone, Debug, Default)]
pub(crate) struct PrunePage {
    pub pruned: u64,
    pub rows_examined: u64,
    /// Where the next page starts; `None` when the whole history was examined.
    pub next_after: Option<PruneCursor>,
}

fn doc_id(store: String, key: String) -> Result<DocId, StoreError> {
    let label = format!("{store}/{key}");
    let store = StoreName::new(store).map_err(|error| StoreError::corrupt(format!("history of {label}: {error}")))?;
    let key = Key::new(key).map_err(|error| StoreError::corrupt(format!("history of {label}: {error}")))?;
    Ok(DocId::new(store, key))
}

/// Examines the history of whole keys after `after`, in (store, key, version) order, until at
/// least `rows_max` rows were examined, and applies `history::plan_prune` to each: deletes the
/// versions the policy no longer keeps and re-encodes the rows below them.
pub(crate) fn prune_history_page(
    connection: &Connection,
    after: Option<&PruneCursor>,
    rows_max: usize,
    now_ms: i64,
    policy: &HistoryPolicy,
) -> Result<PrunePage, StoreError> {
    // Read first, write after: the walk's statement is finished before any row changes.
    let (after_store, after_key) = after.map_or(("", ""), |(store, key)| (store.as_str(), key.as_str()));
    let mut keys: Vec<(DocId, Vec<RowMeta>)> = Vec::new();
    let mut page = PrunePage::default();
    let mut reached_end = true;
    {
        let mut statement = connection
            .prepare_cached(
                "SELECT store, key, version, written_at_ms FROM history
                 WHERE (store, key) > (?1, ?2) ORDER BY store, key, version",
            )
            .map_err(sql_error("preparing a history walk"))?;
        let mut rows = statement.query(params![after_store, after_key]).map_err(sql_error("walking history"))?;
        let mut last: Option<(String, String)> = None;
        while let Some(row) = rows.next().map_err(sql_error("walking history"))? {
            let store: String = row.get(0).map_err(sql_error("walking history"))?;
            let key: String = row.get(1).map_err(sql_error("walking history"))?;
            let version: i64 = row.get(2).map_err(sql_error("walking history"))?;
            let written_at_ms: i64 = row.get(3).map_err(sql_error("walking history"))?;
            let same_key = last.as_ref().is_some_and(|(last_store, last_key)| *last_store == store && *last_key == key);
            if !same_key {
                if page.rows_examined as usize >= rows_max {
                    reached_end = false;
                    break;
                }
                last = Some((store.clone(), key.clone()));
                keys.push((doc_id(store, key)?, Vec::new()));
            }
            let entry = keys.last_mut().expect("a key was pushed for this row");
            let version = counter_from_sql("history version", &entry.0, version)?;
            entry.1.push(RowMeta { version, written_at_ms });
            page.rows_examined += 1;
        }
    }
    for (id, rows) in &keys {
        page.pruned += prune_key(connection, id, rows, now_ms, policy)?;
    }
    page.next_after = if reached_end {
        None
    } else {
        keys.last().map(|(id, _)| (id.store.as_str().to_string(), id.key.as_str().to_string()))
    };
    Ok(page)
}

fn prune_key(
    connection: &Connection,
    id: &DocId,
    rows: &[RowMeta],
    now_ms: i64,
    policy: &HistoryPolicy,
) -> Result<u64, StoreError> {
    let document: Option<(i64, i64)> = connection
        .prepare_cached("SELECT version, updated_at_ms FROM docs WHERE store = ?1 AND key = ?2")
        .map_err(sql_error("preparing a prune read"))?
        .query_row(params![id.store.as_str(), id.key.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
        .map_err(sql_error("reading a key to prune"))?;
    let Some((current_version, current_written_at_ms)) = document else {
        return Err(StoreError::corrupt(format!("{id} has history rows but no document")));
    };
    if rows.last().is_some_and(|row| i64::try_from(row.version).unwrap_or(i64::MAX) >= current_version) {
        return Err(StoreError::corrupt(format!(
            "{id} has a history row at or above its current version {current_version}"
        )));
    }
    let doomed = doomed_rows(rows, current_written_at_ms, now_ms, policy);
    if !doomed.iter().any(|gone| *gone) {
        return Ok(0);
    }
    let current_text: Option<String> = connection
        .prepare_cached("SELECT value FROM docs WHERE store = ?1 AND key = ?2")
        .map_err(sql_error("preparing a prune read"))?
        .query_row(params![id.store.as_str(), id.key.as_str()], |row| row.get(0))
        .map_err(sql_error("reading a key to prune"))?;
    let payloads: Vec<(u64, StoredPayload)> = connection
        .prepare_cached(
            "SELECT version, deleted, value, delta FROM history WHERE store = ?1 AND key = ?2 ORDER BY version",
        )
        .map_err(sql_error("preparing a prune read"))?
        .query_map(params![id.store.as_str(), id.key.as_str()], |row| payload_from_row(id, row, 0))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql_error("reading history to prune"))?
        .into_iter()
        .collect::<Result<_, StoreError>>()?;
    if payloads.iter().map(|(version, _)| *version).ne(rows.iter().map(|row| row.version)) {
        return Err(StoreError::corrupt(format!("{id}: history changed inside the pruning transaction")));
    }
    let plan: PrunePlan = plan_prune(id, &payloads, &doomed, current_text.as_deref(), policy)?;
    // Re-encoded rows first: in one transaction the order does not matter for readers, but it
    // keeps every intermediate state of this connection a valid chain too.
    for (version, payload) in plan.rewrite {
        let version = counter_to_sql("version", version)?;
        let (value, delta) = payload.into_columns();
        connection
            .prepare_cached("UPDATE history SET value = ?4, delta = ?5 WHERE store = ?1 AND key = ?2 AND version = ?3")
            .and_then(|mut statement| {
                statement.execute(params![id.store.as_str(), id.key.as_str(), version, value, delta])
            })
            .map_err(sql_error("re-encoding history"))?;
    }
    let mut pruned = 0;
    for version in plan.delete_versions {
        let version = counter_to_sql("version", version)?;
        connection
            .prepare_cached("DELETE FROM history WHERE store = ?1 AND key = ?2 AND version = ?3")
            .and_then(|mut statement| statement.execute(params![id.store.as_str(), id.key.as_str(), version]))
            .map_err(sql_error("pruning history"))?;
        pruned += 1;
    }
    Ok(pruned)
}
