//! The engine's background work: process-lease renewal, notification handling (handoff requests
//! and inbox arrivals) and per-session autosave.
//!
//! Invariant: every task holds only a `Weak` to the engine and ends when the engine is gone, the
//! session ends, or shutdown aborts it. Autosave is spread over the interval by a per-key phase so
//! 10,000 sessions do not save in one burst, and saves of many sessions group-commit in the store.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::store::DocId;

use super::engine::{EngineShared, TOPIC_HANDOFF_PREFIX, TOPIC_INBOX};
use super::session::{LiveSession, Profile, SaveKind, SessionCore};

pub(crate) fn start(shared: &Arc<EngineShared>) {
    let renewal = tokio::spawn(renew_lease(Arc::downgrade(shared)));
    shared.track(renewal);
    let subscription = shared.store.subscribe();
    let listener = tokio::spawn(listen(Arc::downgrade(shared), subscription));
    shared.track(listener);
}

async fn renew_lease(weak: Weak<EngineShared>) {
    loop {
        let interval_ms = match weak.upgrade() {
            Some(shared) => shared.config.lease_renew_interval_ms,
            None => return,
        };
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        let Some(shared) = weak.upgrade() else { return };
        if !shared.accepting.load(Ordering::SeqCst) && shared.registry().is_empty() {
            return;
        }
        if shared.renewal_suspended.load(Ordering::SeqCst) {
            continue;
        }
        if shared.store.renew_holder(&shared.holder, shared.config.lease_ttl_ms).await.is_err() {
            // Fencing keeps this safe: if the lease lapses and a key is taken, our writes to it
            // fail and the session ends. The next renewal may still succeed in time.
            shared.counters.renew_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn listen(weak: Weak<EngineShared>, mut subscription: broadcast::Receiver<crate::store::Notification>) {
    loop {
        let notification = match subscription.recv().await {
            Ok(notification) => notification,
            // Lost notifications are allowed: handoff falls back to a steal, inbox to the next save.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(shared) = weak.upgrade() else { return };
        let Ok(id) = serde_json::from_str::<DocId>(&notification.payload) else { continue };
        if let Some(holder) = notification.topic.strip_prefix(TOPIC_HANDOFF_PREFIX) {
            if holder == shared.holder.as_str()
                && let Some(session) = shared.live(&id)
            {
                tokio::spawn(async move {
                    // A live holder saves and releases at once (G6); the requester wakes on the
                    // release announcement.
                    let _ = session.end_dyn(true).await;
                });
            }
        } else if notification.topic == TOPIC_INBOX {
            shared.spawn_inbox_check(id);
        }
    }
}

/// A stable phase in `0..interval_ms` for a key, so autosaves spread over the interval.
fn autosave_phase_ms(id: &DocId, interval_ms: u64) -> u64 {
    let hash = id
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3));
    hash % interval_ms.max(1)
}

pub(crate) fn spawn_autosave<P: Profile>(shared: &Arc<EngineShared>, core: Arc<SessionCore<P>>) {
    let interval_ms = shared.config.autosave_interval_ms;
    let phase_ms = autosave_phase_ms(&core.id, interval_ms);
    let weak_engine = Arc::downgrade(shared);
    let weak_session = Arc::downgrade(&core);
    drop(core);
    let task = tokio::spawn(async move {
        let first = tokio::time::Instant::now() + Duration::from_millis(phase_ms.max(1));
        let mut ticker = tokio::time::interval_at(first, Duration::from_millis(interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let (Some(shared), Some(session)) = (weak_engine.upgrade(), weak_session.upgrade()) else { return };
            if !session.is_open() {
                return;
            }
            if session.is_dirty() {
                let Ok(_permit) = shared.save_slots.acquire().await else { return };
                // Failures are reported to the game as events and retried at the next tick.
                let _ = session.save(SaveKind::Autosave).await;
            }
        }
    });
    shared.track(task);
}
