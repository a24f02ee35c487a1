//! Autosave: each live session saves its changes every `autosave_interval_ms`, at a phase of
//! the interval fixed by its key, so 10,000 sessions do not save in one burst (and their saves
//! group-commit in the store).
//!
//! Invariants:
//! - One autosave task per session, holding only `Weak`s: it ends when the session ends, the
//!   engine is gone, or the task set is aborted.
//! - Clean sessions write nothing; saves in flight are bounded by `concurrent_saves_max`.
//! - An idle autosave task is small (its timer and two `Weak`s): the save it runs is boxed, so
//!   its state is allocated per save, not kept per session.

use std::sync::Arc;
use std::time::Duration;

use crate::retry::Jitter;
use crate::store::DocId;

use super::core::Core;
use super::error::SessionError;
use super::registry::LiveSession;
use super::session::{Profile, SaveKind, SessionCore};

/// A stable phase in `0..interval_ms` for a key.
fn autosave_phase_ms(id: &DocId, interval_ms: u64) -> u64 {
    Jitter::seed_from(&id.to_string()) % interval_ms.max(1)
}

pub(crate) fn start<P: Profile>(core: &Arc<Core>, session: &Arc<SessionCore<P>>) {
    let interval_ms = core.config().autosave_interval_ms;
    let phase_ms = autosave_phase_ms(session.id(), interval_ms);
    let weak_core = Arc::downgrade(core);
    let weak_session = Arc::downgrade(session);
    let task = async move {
        let first = tokio::time::Instant::now() + Duration::from_millis(phase_ms.max(1));
        let mut ticker = tokio::time::interval_at(first, Duration::from_millis(interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let (Some(core), Some(session)) = (weak_core.upgrade(), weak_session.upgrade()) else { return };
            if !session.is_open() {
                return;
            }
            if !session.is_dirty() {
                continue;
            }
            // Boxed: a save's state (over a kilobyte) then exists only while it runs, instead of
            // inline in every live session's idle autosave task.
            let saved = Box::pin(async {
                // Never closed: the semaphore lives as long as the core.
                let _slot = core.save_slots().acquire().await.expect("the save-slot semaphore is never closed");
                let turn = session.write_turn().await;
                session.save_in_turn(turn, SaveKind::Autosave).await
            })
            .await;
            match saved {
                // Failures were told to the game as events; the next tick tries again.
                Ok(_) | Err(SessionError::SaveFailed { .. } | SessionError::Store { .. }) => {}
                Err(_) => return,
            }
        }
    };
    // Refused only past the task set's bound (counted and logged there): the session still
    // saves on `save_now`, `end` and shutdown.
    let _ = core.spawn("autosave", task);
}
