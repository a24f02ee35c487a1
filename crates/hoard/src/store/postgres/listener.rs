//! Cross-process notifications over PostgreSQL LISTEN/NOTIFY.
//!
//! Invariant: one dedicated connection per store LISTENs on the schema's channel and forwards
//! every notification it receives to the store's broadcast channel; the store is not opened until
//! the first LISTEN is active, so a notification sent after `subscribe()` returns reaches the
//! subscriber. Notifications are best-effort by contract: while the listener connection is down
//! (it reconnects with bounded backoff) notifications are missed, never replayed. The listener
//! task ends when the store is dropped (its shutdown `watch` sender goes away).

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, oneshot, watch};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::store::types::Notification;

/// First pause before reconnecting a failed listener connection.
pub const LISTENER_RECONNECT_BACKOFF_INITIAL_MS: u64 = 100;
/// Longest pause between reconnection attempts.
pub const LISTENER_RECONNECT_BACKOFF_MAX_MS: u64 = 5_000;

/// How one listening connection ended.
enum ListenEnd {
    /// The store was dropped.
    Shutdown,
    /// The connection failed; reconnect.
    Failed(String),
}

/// Runs the listener until the store is dropped. `ready` is answered after the first LISTEN is
/// active (or with the reason the first attempt failed).
pub async fn run_listener(
    config: tokio_postgres::Config,
    channel: String,
    notifications: broadcast::Sender<Notification>,
    ready: oneshot::Sender<Result<(), String>>,
    mut shutdown: watch::Receiver<()>,
) {
    let mut ready = Some(ready);
    let mut backoff_ms = LISTENER_RECONNECT_BACKOFF_INITIAL_MS;
    loop {
        match listen_once(&config, &channel, &notifications, &mut ready, &mut shutdown, &mut backoff_ms).await {
            ListenEnd::Shutdown => return,
            ListenEnd::Failed(message) => {
                if let Some(ready) = ready.take() {
                    // The first attempt failed: open reports it and drops the store.
                    let _ = ready.send(Err(message));
                    return;
                }
                tracing::warn!(%channel, %message, backoff_ms, "notification listener lost its connection; reconnecting");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
            _ = shutdown.changed() => return,
        }
        backoff_ms = backoff_ms.saturating_mul(2).min(LISTENER_RECONNECT_BACKOFF_MAX_MS);
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    channel: &str,
    notifications: &broadcast::Sender<Notification>,
    ready: &mut Option<oneshot::Sender<Result<(), String>>>,
    shutdown: &mut watch::Receiver<()>,
    backoff_ms: &mut u64,
) -> ListenEnd {
    let connected = tokio::select! {
        connected = config.connect(NoTls) => connected,
        _ = shutdown.changed() => return ListenEnd::Shutdown,
    };
    let (client, mut connection) = match connected {
        Ok(pair) => pair,
        Err(error) => return ListenEnd::Failed(format!("connect: {}", super::describe_error(&error))),
    };
    // The connection delivers LISTEN's reply and the notifications; it is driven here, in the
    // same task, so nothing outlives the store.
    let mut messages = futures_util::stream::poll_fn(move |context| connection.poll_message(context));
    let listen_sql = format!("LISTEN {}", super::quote_identifier(channel));
    let mut listen = std::pin::pin!(client.batch_execute(&listen_sql));
    let mut listening = false;
    loop {
        tokio::select! {
            result = &mut listen, if !listening => {
                if let Err(error) = result {
                    return ListenEnd::Failed(format!("LISTEN: {}", super::describe_error(&error)));
                }
                listening = true;
                *backoff_ms = LISTENER_RECONNECT_BACKOFF_INITIAL_MS;
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                }
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(notification))) if notification.channel() == channel => {
                    match serde_json::from_str::<Notification>(notification.payload()) {
                        // No subscriber is not an error: notifications are best-effort wake-ups.
                        Ok(notification) => { let _ = notifications.send(notification); }
                        Err(error) => tracing::warn!(%channel, %error, "ignoring a notification that is not hoard's JSON"),
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return ListenEnd::Failed(super::describe_error(&error)),
                None => return ListenEnd::Failed("connection closed".to_string()),
            },
            _ = shutdown.changed() => return ListenEnd::Shutdown,
        }
    }
}
