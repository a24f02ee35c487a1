//! Release announcements: telling every process that keys were released, so a server waiting to
//! take one retries at once instead of at its next poll.
//!
//! Why batched: a shutdown (or a burst of players leaving) releases thousands of keys at once,
//! and one notification each is one database statement each (a PostgreSQL NOTIFY), which costs
//! as much as the saves themselves. Announcements queue in an outbox; one task sends whatever has
//! queued as a few notifications (`protocol::released_notifications`). Alone, a release is
//! announced at once.
//!
//! Invariants:
//! - Best effort: an acquirer that misses an announcement (lost, dropped past
//!   `RELEASED_OUTBOX_IDS_MAX`, or from a process that stopped) finds the key free at its next
//!   poll. Correctness never depends on it; only handoff latency does. What is dropped or fails
//!   to send is counted and logged.
//! - At most one sending task per engine (`sending`), which ends when the outbox is empty.
//! - A component: it knows the store, not the engine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::store::{DocId, SharedStore};

use super::protocol::released_notifications;

/// Keys waiting to be announced; past it, further releases are not announced (acquirers poll).
pub const RELEASED_OUTBOX_IDS_MAX: usize = 100_000;

/// Keys queued for announcement, and whether a task is sending them.
#[derive(Debug, Default)]
pub(crate) struct ReleasedOutbox {
    state: Mutex<OutboxState>,
    /// Announcements dropped past the limit or whose notification failed.
    not_announced: AtomicU64,
}

#[derive(Debug, Default)]
struct OutboxState {
    ids: Vec<DocId>,
    sending: bool,
}

impl ReleasedOutbox {
    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // Vector operations only: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `id`. True when no task is sending: the caller must start `send_queued`.
    pub fn queue(&self, id: &DocId) -> bool {
        let mut state = self.lock();
        if state.ids.len() < RELEASED_OUTBOX_IDS_MAX {
            state.ids.push(id.clone());
        } else {
            self.not_announced.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%id, "release outbox full; the release is not announced (acquirers poll)");
        }
        let start = !state.sending;
        state.sending = true;
        start
    }

    /// The sender could not be started: nobody sends until the next release starts one.
    pub fn sender_not_started(&self) {
        let mut state = self.lock();
        state.sending = false;
    }

    fn take(&self) -> Option<Vec<DocId>> {
        let mut state = self.lock();
        if state.ids.is_empty() {
            state.sending = false;
            return None;
        }
        Some(std::mem::take(&mut state.ids))
    }

    /// Announcements that were dropped or failed, for the engine's `gave_up` count.
    pub fn not_announced(&self) -> u64 {
        self.not_announced.load(Ordering::Relaxed)
    }
}

/// Sends everything queued, then whatever queued meanwhile, until the outbox is empty.
pub(crate) async fn send_queued(outbox: Arc<ReleasedOutbox>, store: SharedStore) {
    let payload_bytes_max = store.limits().notification_payload_bytes_max;
    while let Some(ids) = outbox.take() {
        for notification in released_notifications(&ids, payload_bytes_max) {
            if let Err(error) = store.notify(notification).await {
                outbox.not_announced.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, "a release announcement failed (acquirers poll)");
            }
        }
    }
}
