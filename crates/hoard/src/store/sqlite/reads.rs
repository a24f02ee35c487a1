//! The read side: a small pool of read-only connections used from `spawn_blocking`, and the read
//! queries (documents, key listings, holder leases; history's are in `history`).
//!
//! Invariant: reads never go through the writer thread and never take the write lock: in WAL
//! mode each read runs in its own read transaction and sees one committed snapshot (a multi-key
//! `get_many` cannot see half of a commit), while the writer commits concurrently. At most
//! `read_connections` reads run at once; the rest wait for a permit, not for the writer.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};
use tokio::sync::Semaphore;

use super::connection::{ConnectionSettings, open_read_connection};
use super::rows::{read_document, sql_error};
use crate::store::StoreError;
use crate::store::limits::Limits;
use crate::store::types::{DocId, Document, HolderId, HolderLease, Key, KeyPage, ListQuery, StoreName};

/// Read-only connections, opened lazily up to the permit count and reused.
#[derive(Debug)]
pub(crate) struct ReadPool {
    path: PathBuf,
    settings: ConnectionSettings,
    idle_connections: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    pub(crate) fn new(path: PathBuf, settings: ConnectionSettings, read_connections: usize) -> ReadPool {
        ReadPool {
            path,
            settings,
            idle_connections: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(read_connections.max(1))),
        }
    }

    fn take_idle(&self) -> Option<Connection> {
        // A poisoned lock only means a reader panicked; the idle list itself is still sound.
        self.idle_connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop()
    }

    fn put_back(&self, connection: Connection) {
        self.idle_connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(connection);
    }

    /// Runs `work` inside one read transaction on a pooled connection, off the async threads.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| StoreError::Closed)?;
        let pool = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let connection = match pool.take_idle() {
                Some(connection) => connection,
                None => open_read_connection(&pool.path, &pool.settings)?,
            };
            let result = read_transaction(&connection, work);
            // A connection left inside a transaction (its ROLLBACK failed) is dropped, not reused.
            if connection.is_autocommit() {
                pool.put_back(connection);
            }
            result
        });
        task.await.map_err(|error| StoreError::unavailable(format!("SQLite read task failed: {error}")))?
    }
}

fn read_transaction<T>(
    connection: &Connection,
    work: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // A deferred BEGIN on a read-only connection takes a WAL read snapshot at the first SELECT and
    // keeps it until COMMIT, so every statement of `work` sees the same committed state.
    connection.execute_batch("BEGIN").map_err(sql_error("starting a read transaction"))?;
    let result = work(connection);
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = connection.execute_batch(end).map_err(sql_error("ending a read transaction"));
    let value = result?;
    ended?;
    Ok(value)
}

pub(crate) fn get_many(connection: &Connection, ids: &[DocId], limits: &Limits) -> Result<Vec<Document>, StoreError> {
    ids.iter().map(|id| read_document(connection, id, limits)).collect()
}

/// The smallest string greater than every string that starts with `prefix`, in byte order (which
/// is code-point order for UTF-8), or `None` when no such string exists (empty prefix, or every
/// character is U+10FFFF). Keys `>= prefix` and `< successor` are exactly the keys that start
/// with `prefix`, and the range can use the primary-key index (LIKE could not: it is
/// case-insensitive for ASCII and treats `%` and `_` as wildcards).
pub(crate) fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = u32::from(last) + 1;
        // Skip the surrogate range, which holds no `char`.
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(next) = char::from_u32(next) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

pub(crate) fn list_keys(
    connection: &Connection,
    store: &StoreName,
    query: &ListQuery,
    limits: &Limits,
) -> Result<KeyPage, StoreError> {
    let page_size = limits.page_size(query.limit);
    // One more than the page tells whether another page follows.
    let fetch = i64::try_from(page_size.saturating_add(1)).unwrap_or(i64::MAX);
    let lower = match &query.after {
        Some(after) if after.as_str() >= query.prefix.as_str() => after.as_str().to_string(),
        _ => query.prefix.clone(),
    };
    // `key > after` is exclusive, `key >= prefix` inclusive; the greater bound wins.
    let lower_inclusive = !matches!(&query.after, Some(after) if after.as_str() >= query.prefix.as_str());
    let upper = prefix_successor(&query.prefix);
    let sql = format!(
        "SELECT key FROM docs WHERE store = ?1 AND value IS NOT NULL AND key {} ?2 AND (?3 IS NULL OR key < ?3) \
         ORDER BY key LIMIT ?4",
        if lower_inclusive { ">=" } else { ">" }
    );
    let mut statement = connection.prepare_cached(&sql).map_err(sql_error("preparing a key listing"))?;
    let texts: Vec<String> = statement
        .query_map(params![store.as_str(), lower, upper, fetch], |row| row.get(0))
        .and_then(|rows| rows.collect())
        .map_err(sql_error("listing keys"))?;
    let more = texts.len() > page_size;
    let keys = texts
        .into_iter()
        .take(page_size)
        .map(|text| {
            Key::with_limits(text, limits)
                .map_err(|error| StoreError::corrupt(format!("stored key in {store}: {error}")))
        })
        .collect::<Result<Vec<Key>, StoreError>>()?;
    let next_after = if more { keys.last().cloned() } else { None };
    Ok(KeyPage { keys, next_after })
}

pub(crate) fn holder_lease(connection: &Connection, holder: &HolderId) -> Result<Option<HolderLease>, StoreError> {
    let mut statement = connection
        .prepare_cached("SELECT expires_at_ms FROM holders WHERE holder = ?1")
        .map_err(sql_error("preparing a holder read"))?;
    let mut rows = statement.query(params![holder.as_str()]).map_err(sql_error("reading a holder"))?;
    let row = rows.next().map_err(sql_error("reading a holder"))?;
    match row {
        Some(row) => {
            let expires_at_ms: i64 = row.get(0).map_err(sql_error("reading a holder"))?;
            Ok(Some(HolderLease { holder: holder.clone(), expires_at_ms }))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_successor;

    #[test]
    fn prefix_successor_bounds_exactly_the_keys_with_the_prefix() {
        assert_eq!(prefix_successor(""), None);
        assert_eq!(prefix_successor("player-").as_deref(), Some("player."));
        assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{10FFFF}"), None);
        assert_eq!(prefix_successor("x\u{D7FF}").as_deref(), Some("x\u{E000}"));
        let successor = prefix_successor("ab").unwrap_or_default();
        for key in ["ab", "ab\u{10FFFF}\u{10FFFF}", "ab%", "abz"] {
            assert!(key >= "ab" && key < successor.as_str(), "{key} is in the range");
        }
        for key in ["aa\u{10FFFF}", "ac", "AB", "b"] {
            assert!(!(key >= "ab" && key < successor.as_str()), "{key} is outside the range");
        }
    }
}
