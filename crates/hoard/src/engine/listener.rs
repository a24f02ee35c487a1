//! Notifications this engine answers: handoff requests for its holder (save and release at once,
//! G6) and inbox arrivals (read the key's inbox soon, G7).
//!
//! Invariants:
//! - Lost notifications are allowed: a handoff request unanswered ends in a steal after the
//!   requester's wait, an inbox arrival missed is found at the next save. Missed ones (the
//!   listener fell behind) are counted and logged.
//! - Inbox checks coalesce per key and their reads are bounded (`InboxChecks`); one notification
//!   starts at most one task, and a key has at most one check task at a time.
//! - The listener holds only a `Weak` to the core and ends with the engine.

use std::sync::{Arc, Weak};

use tokio::sync::broadcast;

use crate::store::{DocId, Notification, Subscription};

use super::core::Core;
use super::counters::Counter;
use super::inbox_checks::CheckRequest;
use super::protocol::{TOPIC_HANDOFF_PREFIX, TOPIC_INBOX};
use super::tasks::TaskSetFull;

/// Checks one task makes for a key before handing on to a fresh task (so no task loops forever
/// under a steady stream of notifications).
const INBOX_CHECK_PASSES_PER_TASK_MAX: u32 = 16;

pub(crate) fn start(core: &Arc<Core>) -> Result<(), TaskSetFull> {
    let subscription = core.store().subscribe();
    core.spawn("notification listener", listen(Arc::downgrade(core), subscription))
}

async fn listen(weak: Weak<Core>, mut subscription: Subscription) {
    loop {
        let notification = match subscription.recv().await {
            Ok(notification) => notification,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let Some(core) = weak.upgrade() else { return };
                core.counters().add(Counter::NotificationsMissed, missed);
                tracing::debug!(
                    missed,
                    "notification listener fell behind; handoffs fall back to steals, inbox checks to saves"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(core) = weak.upgrade() else { return };
        handle(&core, &notification);
    }
}

fn parse_id(notification: &Notification) -> Option<DocId> {
    match serde_json::from_str::<DocId>(&notification.payload) {
        Ok(id) => Some(id),
        Err(error) => {
            tracing::debug!(topic = %notification.topic, %error, "a notification names no key; ignored");
            None
        }
    }
}

fn handle(core: &Arc<Core>, notification: &Notification) {
    if let Some(holder) = notification.topic.strip_prefix(TOPIC_HANDOFF_PREFIX) {
        if holder != core.holder().as_str() {
            return;
        }
        let Some(id) = parse_id(notification) else { return };
        let Some(session) = core.registry().live(&id) else { return };
        let weak = Arc::downgrade(core);
        // A live holder saves and releases at once (G6); the requester wakes on the release
        // announcement. If this fails, the requester steals after its wait.
        let handing_over = async move {
            if let Err(error) = session.end_dyn(true).await
                && let Some(core) = weak.upgrade()
            {
                core.gave_up("hand a key over on request", &id, &error);
            }
        };
        // A refusal is counted by `spawn`; the requester steals after its wait.
        let _ = core.spawn("handoff", handing_over);
    } else if notification.topic == TOPIC_INBOX
        && let Some(id) = parse_id(notification)
    {
        check_inbox_soon(core, &id);
    }
}

/// Reads `id`'s inbox soon if this engine holds it: at once if no check of the key is waiting or
/// running, otherwise folded into that one.
pub(crate) fn check_inbox_soon(core: &Arc<Core>, id: &DocId) {
    if core.registry().live(id).is_none() {
        return;
    }
    match core.inbox_checks().request(id) {
        CheckRequest::Coalesced => core.counters().one(Counter::InboxChecksCoalesced),
        CheckRequest::Start => {
            if core.spawn("inbox check", run_checks(Arc::downgrade(core), id.clone())).is_err() {
                core.inbox_checks().abandon(id);
            }
        }
    }
}

async fn run_checks(weak: Weak<Core>, id: DocId) {
    for _pass in 0..INBOX_CHECK_PASSES_PER_TASK_MAX {
        let Some(core) = weak.upgrade() else { return };
        let Some(session) = core.registry().live(&id) else {
            core.inbox_checks().abandon(&id);
            return;
        };
        let permits = core.inbox_checks().permits();
        // Never closed: the semaphore lives as long as the core.
        let permit = permits.acquire_owned().await.expect("the inbox-check semaphore is never closed");
        if let Err(error) = session.check_inbox_dyn().await {
            // The messages stay in the inbox; the next save or notification reads them.
            core.gave_up("check an inbox", &id, &error);
        }
        drop(permit);
        if !core.inbox_checks().finished(&id) {
            return;
        }
    }
    // Still requested after every pass: hand on to a fresh task (one per key, as always).
    if let Some(core) = weak.upgrade() {
        core.inbox_checks().abandon(&id);
        check_inbox_soon(&core, &id);
    }
}
