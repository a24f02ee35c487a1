//! The notification poller: one background thread per store that reads rows other processes (and
//! this one) inserted into `notifications` and fans them out to this process's subscribers.
//!
//! Invariant: each row is delivered at most once per process, in id order, starting after the
//! largest id that existed when the store opened; a row is never read twice because ids only grow
//! (`AUTOINCREMENT`) and writers are serialized, so no smaller id can commit after a larger one
//! was seen. Delivery is best-effort: a row deleted by retention before a (paused) process polled
//! it is skipped. The thread ends as soon as the store drops its stop sender, so no loop outlives
//! the store.

use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::broadcast;

use super::rows::sql_error;
use crate::store::StoreError;
use crate::store::types::Notification;

/// Rows read per poll; a burst larger than this is read over the next polls without waiting.
const NOTIFICATION_ROWS_PER_POLL: i64 = 1_000;

/// The largest notification id in the file (0 when there is none).
pub(crate) fn largest_notification_id(connection: &Connection) -> Result<i64, StoreError> {
    let largest: Option<i64> = connection
        .query_row("SELECT max(id) FROM notifications", [], |row| row.get(0))
        .optional()
        .map_err(sql_error("reading the last notification id"))?
        .flatten();
    Ok(largest.unwrap_or(0))
}

/// Polls until `stop` is dropped (or sent to). `poll_interval` is the pause between polls when
/// there is nothing new.
pub(crate) fn run_poller(
    connection: Connection,
    mut last_seen_id: i64,
    poll_interval: Duration,
    stop: mpsc::Receiver<()>,
    subscribers: broadcast::Sender<Notification>,
) {
    loop {
        let full_page = match poll_once(&connection, &mut last_seen_id, &subscribers) {
            Ok(full_page) => full_page,
            Err(error) => {
                // Best-effort: a failed poll is retried at the next interval, never fatal.
                tracing::warn!(%error, "polling SQLite notifications failed");
                false
            }
        };
        let pause = if full_page { Duration::ZERO } else { poll_interval };
        match stop.recv_timeout(pause) {
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Delivers the rows after `last_seen_id`; returns true when a full page was read (more may wait).
fn poll_once(
    connection: &Connection,
    last_seen_id: &mut i64,
    subscribers: &broadcast::Sender<Notification>,
) -> Result<bool, StoreError> {
    let mut statement = connection
        .prepare_cached("SELECT id, topic, payload FROM notifications WHERE id > ?1 ORDER BY id LIMIT ?2")
        .map_err(sql_error("preparing the notification poll"))?;
    let rows: Vec<(i64, String, String)> = statement
        .query_map(params![*last_seen_id, NOTIFICATION_ROWS_PER_POLL], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .and_then(|rows| rows.collect())
        .map_err(sql_error("polling notifications"))?;
    let count = rows.len();
    for (id, topic, payload) in rows {
        *last_seen_id = id;
        // No subscriber is not an error: notifications are wake-ups, not messages.
        let _ = subscribers.send(Notification { topic, payload });
    }
    Ok(i64::try_from(count).unwrap_or(i64::MAX) >= NOTIFICATION_ROWS_PER_POLL)
}
