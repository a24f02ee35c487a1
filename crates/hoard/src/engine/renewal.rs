//! Renewing the process lease by deadline, and confirming sessions after a lapse.
//!
//! Invariants:
//! - A round starts every `lease_renew_interval_ms` after the last renewal was sent. A failed
//!   renewal is retried soon, with backoff, until the local deadline (`LeaseClock`): failures
//!   lose the lease only when the store stays unreachable for most of a lease, not after two.
//! - Past the deadline, rounds go on every `retry_backoff_max_ms`; the lapse is counted and
//!   logged once. A renewal after a lapse starts a new generation and one sweep that reads every
//!   live session's key: held at its epoch, the session is confirmed (active again); taken, it
//!   is fenced out.
//! - Every read and renewal goes through the retry helper; the tasks hold only `Weak`s.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::retry::Attempt;
use crate::store::DocId;

use super::core::Core;
use super::counters::Counter;
use super::lease::Renewed;
use super::tasks::TaskSetFull;

/// Renewal attempts in one round; the local deadline usually ends a round first.
const RENEW_ATTEMPTS_PER_ROUND_MAX: u32 = 64;
/// Keys read at once when confirming sessions after a lapse.
const CONFIRM_KEYS_PER_READ_MAX: usize = 100;

pub(crate) fn start(core: &Arc<Core>) -> Result<(), TaskSetFull> {
    core.spawn("lease renewal", renew_by_deadline(Arc::downgrade(core)))
}

async fn renew_by_deadline(weak: Weak<Core>) {
    loop {
        let next_at = match weak.upgrade() {
            Some(core) => core.lease().next_renewal_at(),
            None => return,
        };
        tokio::time::sleep_until(next_at).await;
        let Some(core) = weak.upgrade() else { return };
        if !core.registry().is_accepting() && core.registry().is_empty() {
            // Shut down with nothing left to hold.
            return;
        }
        if core.lease().is_suspended() {
            core.lease().retry_after(core.lease().renew_interval());
            continue;
        }
        renew_round(&core).await;
    }
}

async fn renew_round(core: &Arc<Core>) {
    let lease = core.lease();
    let retry = core.retry("renew the process lease", RENEW_ATTEMPTS_PER_ROUND_MAX).until(lease.valid_until());
    let renewed = retry
        .run(|_| async {
            let sent_at = Instant::now();
            match core.store().renew_holder(core.holder(), core.config().lease_ttl_ms).await {
                Ok(_) => Attempt::Done(sent_at),
                Err(error) => {
                    core.counters().one(Counter::RenewFailures);
                    if error.is_transient() { Attempt::Retry(error) } else { Attempt::Fail(error) }
                }
            }
        })
        .await;
    match renewed {
        Ok(sent_at) => {
            if let Renewed::AfterLapse { generation, lapse_noted } = lease.renewed(sent_at) {
                if !lapse_noted {
                    count_lapse(core);
                }
                tracing::info!(generation, "process lease renewed after a lapse; confirming every session's key");
                // If refused (counted by `spawn`), sessions stay `LeaseLapsed` until a save or
                // `still_holds` confirms them.
                let _ =
                    core.spawn("confirm sessions after a lapse", confirm_sessions(Arc::downgrade(core), generation));
            }
        }
        Err(gave_up) => {
            if !lease.is_valid_now() && lease.mark_lapse_noted() {
                count_lapse(core);
            }
            tracing::warn!(error = %gave_up.error, attempts = gave_up.attempts, "process lease not renewed this round");
            lease.retry_after(Duration::from_millis(core.config().retry_backoff_max_ms));
        }
    }
}

fn count_lapse(core: &Core) {
    core.counters().one(Counter::LeaseLapses);
    tracing::warn!(
        "process lease past its local deadline: sessions report LeaseLapsed and refuse changes until it is renewed"
    );
}

/// Reads every live session's key after the renewal that started `generation`.
async fn confirm_sessions(weak: Weak<Core>, generation: u64) {
    let Some(core) = weak.upgrade() else { return };
    let sessions: Vec<_> = core
        .registry()
        .live_sessions()
        .into_iter()
        // Errored sessions hold no lease; closing ones are releasing theirs.
        .filter(|session| session.epoch() > 0 && session.is_open() && !session.is_closing())
        .collect();
    let chunk_size = CONFIRM_KEYS_PER_READ_MAX.min(core.store().limits().page_size_max).max(1);
    for chunk in sessions.chunks(chunk_size) {
        if core.lease().generation() != generation {
            // A newer lapse began: its own sweep takes over.
            return;
        }
        let ids: Vec<DocId> = chunk.iter().map(|session| session.id().clone()).collect();
        let read = core
            .retry("confirm sessions after a lease lapse", core.config().load_attempts_max)
            .run(|_| async { Attempt::from_store(core.store().get_many(&ids).await) })
            .await;
        let documents = match read {
            Ok(documents) => documents,
            // Logged and counted by the helper; the rest stay lapsed until a save confirms them.
            Err(_) => return,
        };
        let vouched = core.lease().generation() == generation && core.lease().is_valid_now();
        for (session, document) in chunk.iter().zip(&documents) {
            let held = document.lease.holder.as_ref() == Some(core.holder()) && document.lease.epoch == session.epoch();
            if !held {
                session.fence_out_dyn();
            } else if vouched {
                session.confirm_lease(generation);
            }
        }
    }
}
