//! Release announcements: telling every process that keys were released, so a server waiting to
//! take one retries at once instead of at its next poll.
//!
//! Why batched: a shutdown (or a burst of players leaving) releases thousands of keys at once,
//! and one notification each is one database statement each (a PostgreSQL NOTIFY), which costs
//! as much as the saves themselves. Announcements queue in an outbox; one task sends whatever has
//! queued as a few notifications, each naming as many keys as fit in a payload. Alone, a release
//! is announced at once, as before.
//!
//! Invariants:
//! - Best effort, as before: an acquirer that misses an announcement (lost, dropped past
//!   `RELEASED_OUTBOX_IDS_MAX`, or from a process that stopped) finds the key free at its next
//!   poll. Correctness never depends on it; only handoff latency does.
//! - A payload names one key as its JSON (`"{store, key}"`, what older processes expect) or
//!   several as a JSON array of them; `announces_release` accepts both.
//! - At most one sending task per engine; it holds only a weak reference.

use std::sync::{Arc, Mutex, Weak};

use crate::store::{DocId, Notification};

use super::engine::{EngineShared, TOPIC_RELEASED};

/// Keys waiting to be announced; past it, further releases are not announced (acquirers poll).
pub const RELEASED_OUTBOX_IDS_MAX: usize = 100_000;

/// Keys queued for announcement, and whether a task is sending them.
#[derive(Debug, Default)]
pub(crate) struct ReleasedOutbox {
    state: Mutex<OutboxState>,
}

#[derive(Debug, Default)]
struct OutboxState {
    ids: Vec<DocId>,
    sending: bool,
}

impl ReleasedOutbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Queues `id` for announcement and starts the sending task if none runs.
pub(crate) fn announce_released(shared: &Arc<EngineShared>, id: &DocId) {
    let start_sender = {
        let mut state = shared.released_outbox.lock();
        if state.ids.len() < RELEASED_OUTBOX_IDS_MAX {
            state.ids.push(id.clone());
        }
        let start = !state.sending;
        state.sending = true;
        start
    };
    if start_sender {
        tokio::spawn(send_queued(Arc::downgrade(shared)));
    }
}

/// Sends everything queued, then whatever queued meanwhile, until the outbox is empty.
async fn send_queued(weak: Weak<EngineShared>) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let ids = {
            let mut state = shared.released_outbox.lock();
            if state.ids.is_empty() {
                state.sending = false;
                return;
            }
            std::mem::take(&mut state.ids)
        };
        let payload_bytes_max = shared.store.limits().notification_payload_bytes_max;
        for notification in released_notifications(&ids, payload_bytes_max) {
            // Best effort (see the module invariant).
            let _ = shared.store.notify(notification).await;
        }
    }
}

/// The notification telling every process that `id` was released (topic `hoard.released`).
pub fn released_notification(id: &DocId) -> Notification {
    let payload = serde_json::to_string(id).unwrap_or_default();
    Notification { topic: TOPIC_RELEASED.to_string(), payload }
}

/// Notifications announcing `ids`, each payload at most `payload_bytes_max` bytes: a single key
/// as its own JSON, several as a JSON array.
pub fn released_notifications(ids: &[DocId], payload_bytes_max: usize) -> Vec<Notification> {
    let mut notifications = Vec::new();
    let mut chunk: Vec<String> = Vec::new();
    let mut chunk_bytes = 2; // "[" and "]"
    let flush = |chunk: &mut Vec<String>, notifications: &mut Vec<Notification>| {
        let payload = match chunk.len() {
            0 => return,
            1 => chunk.remove(0),
            _ => format!("[{}]", chunk.join(",")),
        };
        chunk.clear();
        notifications.push(Notification { topic: TOPIC_RELEASED.to_string(), payload });
    };
    for id in ids {
        let Ok(text) = serde_json::to_string(id) else { continue };
        if !chunk.is_empty() && chunk_bytes + 1 + text.len() > payload_bytes_max {
            flush(&mut chunk, &mut notifications);
            chunk_bytes = 2;
        }
        chunk_bytes += text.len() + 1;
        chunk.push(text);
    }
    flush(&mut chunk, &mut notifications);
    notifications
}

/// Whether `notification` announces the release of `id` (one key, or a list naming it).
pub fn announces_release(notification: &Notification, id: &DocId) -> bool {
    if notification.topic != TOPIC_RELEASED {
        return false;
    }
    let payload = notification.payload.trim_start();
    if payload.starts_with('[') {
        serde_json::from_str::<Vec<DocId>>(payload).is_ok_and(|ids| ids.contains(id))
    } else {
        serde_json::from_str::<DocId>(payload).is_ok_and(|announced| &announced == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(count: usize) -> Vec<DocId> {
        (0..count).map(|n| DocId::parse("players", &format!("player-{n}")).expect("id")).collect()
    }

    #[test]
    fn one_release_is_announced_as_the_single_key_older_processes_expect() {
        let id = &ids(1)[0];
        let notifications = released_notifications(std::slice::from_ref(id), 7_000);
        assert_eq!(notifications, vec![released_notification(id)]);
        assert!(announces_release(&notifications[0], id));
    }

    #[test]
    fn many_releases_share_payloads_within_the_limit_and_each_key_is_announced_once() {
        let all = ids(2_000);
        let notifications = released_notifications(&all, 7_000);
        assert!(notifications.len() > 1 && notifications.len() < 100, "{} notifications", notifications.len());
        for notification in &notifications {
            assert!(notification.payload.len() <= 7_000, "payload of {} bytes", notification.payload.len());
        }
        for id in &all {
            let announcing = notifications.iter().filter(|n| announces_release(n, id)).count();
            assert_eq!(announcing, 1, "{id} announced {announcing} times");
        }
        let other = DocId::parse("players", "someone-else").expect("id");
        assert!(notifications.iter().all(|n| !announces_release(n, &other)));
    }
}
