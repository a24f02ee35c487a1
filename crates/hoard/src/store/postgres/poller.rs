//! Cross-process notifications without LISTEN/NOTIFY (the `Portable` profile): `notify` inserts a
//! row into the schema's `notifications` table and one task per store polls it.
//!
//! Invariant: the poller starts after the newest row that existed when the store opened (read
//! before `open` returns), then forwards every row it sees once, in id order, to the store's
//! subscribers; rows older than `NOTIFICATION_RETENTION_MS` by the database's clock are deleted.
//! Notifications stay best-effort by contract, as with LISTEN: a poll that fails is retried at
//! the next tick and what was missed meanwhile is still read (rows stay for the retention), but
//! a row whose id was taken before a row already seen yet committed after the poll read past it
//! is missed. The engine never depends on a notification: it also polls what it waits for.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{broadcast, oneshot, watch};
use tokio_postgres::types::Type;

use super::errors::describe_any;
use super::sql::Sql;
use crate::store::Notification;

/// Most notification rows one poll reads; more wait for the next tick (which comes at once).
pub const NOTIFICATION_POLL_ROWS_MAX: i64 = 1_000;

/// How long a notification row is kept, by the database's clock: far longer than any poll gap a
/// live process has, short enough that the table stays small.
pub const NOTIFICATION_RETENTION_MS: i64 = 60_000;

/// Old rows are deleted once every this many polls (by every process; deleting is idempotent).
const POLLS_PER_CLEANUP: u64 = 100;

pub(crate) const INSERT_NOTIFICATION_SQL: &str = "INSERT INTO {notifications} (sent_at_ms, payload)
     VALUES ((extract(epoch from clock_timestamp()) * 1000)::bigint, $1)";

const NEWEST_NOTIFICATION_SQL: &str = "SELECT coalesce(max(id), 0) FROM {notifications}";

const POLL_NOTIFICATIONS_SQL: &str = "SELECT id, payload FROM {notifications} WHERE id > $1 ORDER BY id LIMIT $2";

const DELETE_OLD_NOTIFICATIONS_SQL: &str = "DELETE FROM {notifications}
     WHERE sent_at_ms < (extract(epoch from clock_timestamp()) * 1000)::bigint - $1";

/// Polls until the store is dropped. `ready` is answered once the starting point is read (or
/// with why it could not be).
pub async fn run_poller(
    pool: Pool,
    sql: Arc<Sql>,
    poll_interval: Duration,
    notifications: broadcast::Sender<Notification>,
    ready: oneshot::Sender<Result<(), String>>,
    mut shutdown: watch::Receiver<()>,
) {
    let mut last_seen_id = match newest_id(&pool, &sql).await {
        Ok(id) => id,
        Err(message) => {
            let _ = ready.send(Err(message));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut polls: u64 = 0;
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        polls += 1;
        loop {
            match poll_once(&pool, &sql, last_seen_id, &notifications).await {
                Ok((newest, full_page)) => {
                    last_seen_id = newest;
                    if !full_page {
                        break;
                    }
                }
                Err(message) => {
                    tracing::warn!(%message, "notification poll failed; polling again at the next tick");
                    break;
                }
            }
        }
        if polls.is_multiple_of(POLLS_PER_CLEANUP)
            && let Err(message) = delete_old(&pool, &sql).await
        {
            tracing::warn!(%message, "deleting old notification rows failed; trying again later");
        }
    }
}

async fn newest_id(pool: &Pool, sql: &Sql) -> Result<i64, String> {
    let client = pool.get().await.map_err(|error| describe_any(&error))?;
    let row = sql
        .query_opt(&client, NEWEST_NOTIFICATION_SQL, &[])
        .await
        .map_err(|error| describe_any(&error))?
        .ok_or_else(|| "no row answered".to_string())?;
    row.try_get(0).map_err(|error| describe_any(&error))
}

/// Forwards the rows after `after`; returns the newest id seen and whether the page was full.
async fn poll_once(
    pool: &Pool,
    sql: &Sql,
    after: i64,
    notifications: &broadcast::Sender<Notification>,
) -> Result<(i64, bool), String> {
    let client = pool.get().await.map_err(|error| describe_any(&error))?;
    let rows = sql
        .query(&client, POLL_NOTIFICATIONS_SQL, &[(&after, Type::INT8), (&NOTIFICATION_POLL_ROWS_MAX, Type::INT8)])
        .await
        .map_err(|error| describe_any(&error))?;
    let mut newest = after;
    for row in &rows {
        let id: i64 = row.try_get("id").map_err(|error| describe_any(&error))?;
        let payload: String = row.try_get("payload").map_err(|error| describe_any(&error))?;
        newest = newest.max(id);
        match serde_json::from_str::<Notification>(&payload) {
            // No subscriber is not an error: nobody is waiting.
            Ok(notification) => {
                let _ = notifications.send(notification);
            }
            Err(error) => tracing::warn!(id, %error, "skipping a notification row that does not parse"),
        }
    }
    Ok((newest, i64::try_from(rows.len()).unwrap_or(i64::MAX) >= NOTIFICATION_POLL_ROWS_MAX))
}

async fn delete_old(pool: &Pool, sql: &Sql) -> Result<(), String> {
    let client = pool.get().await.map_err(|error| describe_any(&error))?;
    sql.query(&client, DELETE_OLD_NOTIFICATIONS_SQL, &[(&NOTIFICATION_RETENTION_MS, Type::INT8)])
        .await
        .map_err(|error| describe_any(&error))?;
    Ok(())
}
