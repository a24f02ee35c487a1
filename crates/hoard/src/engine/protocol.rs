//! The session protocol shared by the engine and `hoard serve`: how a key is acquired (ask the
//! holder to hand over, wait, steal), how a key nobody will play is released, the notifications
//! processes send each other, and the defaults of every wait. One copy, used by both, so a game
//! server in process and one over HTTP take keys the same way.
//!
//! Invariants:
//! - Acquiring is a commit with `LeaseFree` (or, to steal, `Lease{holder seen, epoch seen}`) that
//!   bumps the epoch; a hidden outcome is resolved by reading back (holder ids are unique per
//!   process incarnation, so a key naming the acquirer was acquired by it).
//! - Every wait is bounded: by the policy's `wait_ms` (polled every `poll_interval_ms`, woken
//!   sooner by a release announcement) plus `ACQUIRE_CHANGED_PASSES_MAX` passes for a lease that
//!   changes hands under us; transient store errors are retried by the one retry helper.
//! - Notifications are best effort: a lost handoff request ends in a steal after the wait, a lost
//!   release announcement in the next poll. Nothing correct depends on one arriving.
//! - Callable for many keys at once: a call shares nothing mutable with another.

use std::future::Future;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};

use crate::retry::{Attempt, Backoff, Jitter, Retry};
use crate::store::{
    Commit, CommitOutcome, Condition, ConflictKind, DocId, Document, HolderId, LeaseOp, Notification, Store,
    StoreError, Subscription, Write, get,
};

/// How long a process lease lasts without renewal: a crashed server's keys are free within it (G6).
pub const LEASE_TTL_MS_DEFAULT: u64 = 15_000;
/// How often a process lease is renewed: a third of the lease, so two failed rounds in a row
/// still leave time to retry.
pub const LEASE_RENEW_INTERVAL_MS_DEFAULT: u64 = 5_000;
/// How long a start waits for a live holder to hand over before the policy steals or gives up.
pub const HANDOFF_WAIT_MS_DEFAULT: u64 = 5_000;
/// How often a waiting start re-checks the key when no release announcement wakes it.
pub const HANDOFF_POLL_INTERVAL_MS_DEFAULT: u64 = 250;
/// Attempts of one store call of the protocol before its error is returned.
pub const ACQUIRE_ATTEMPTS_MAX_DEFAULT: u32 = 20;
/// Passes beyond the wait for a lease that changes hands under us (released and re-taken
/// between our read and our write).
pub const ACQUIRE_CHANGED_PASSES_MAX: u64 = 16;

/// Notification topics. Handoff requests go to one holder; releases and inbox arrivals to all.
pub const TOPIC_HANDOFF_PREFIX: &str = "hoard.handoff.";
pub const TOPIC_RELEASED: &str = "hoard.released";
pub const TOPIC_INBOX: &str = "hoard.inbox";

/// What to do when another holder has the key. `hoard serve`'s `StartPolicy` maps onto it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeldPolicy {
    /// Ask the holder to hand over, wait up to this long, then take the key.
    WaitThenSteal { wait_ms: u64 },
    /// Ask the holder to hand over and wait up to this long; never take it by force.
    Wait { wait_ms: u64 },
    /// Take the key at once (the holder is fenced out).
    StealNow,
    /// Answer `Locked` at once.
    FailFast,
}

impl HeldPolicy {
    /// How long this policy waits for a handoff.
    pub fn wait_ms(self) -> u64 {
        match self {
            HeldPolicy::WaitThenSteal { wait_ms } | HeldPolicy::Wait { wait_ms } => wait_ms,
            HeldPolicy::StealNow | HeldPolicy::FailFast => 0,
        }
    }
}

/// What one acquisition attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcquireAttempt {
    /// The key is ours at this epoch.
    Acquired { epoch: u64 },
    /// A holder has it at this epoch (possibly the acquirer itself, from a session it lost).
    HeldBy { holder: HolderId, epoch: u64 },
    /// The lease changed between the read and the write (released meanwhile): try again.
    Changed,
}

/// One attempt to acquire `id` for `holder` on `condition` (`LeaseFree`, or `Lease{..}` to
/// steal from the holder seen). A hidden outcome is resolved by reading back.
pub async fn acquire_once(
    store: &dyn Store,
    holder: &HolderId,
    id: &DocId,
    condition: Condition,
) -> Result<AcquireAttempt, StoreError> {
    let write = Write::new(id.clone()).when(condition).lease(LeaseOp::Acquire(holder.clone()));
    match store.commit(Commit::single(write)).await {
        Ok(CommitOutcome::Committed { applied, .. }) => {
            let applied = applied.first().ok_or_else(|| StoreError::corrupt("an acquire committed no write"))?;
            debug_assert!(applied.epoch > 0, "an acquired lease has a positive epoch");
            Ok(AcquireAttempt::Acquired { epoch: applied.epoch })
        }
        Ok(CommitOutcome::Conflict(conflict)) => match conflict.found.lease.holder {
            Some(found) if matches!(conflict.kind, ConflictKind::LeaseHeld | ConflictKind::LeaseMismatch) => {
                Ok(AcquireAttempt::HeldBy { holder: found, epoch: conflict.found.lease.epoch })
            }
            _ => Ok(AcquireAttempt::Changed),
        },
        Err(error) if error.may_have_applied() => {
            let document = get(store, id).await?;
            if document.lease.holder.as_ref() == Some(holder) {
                Ok(AcquireAttempt::Acquired { epoch: document.lease.epoch })
            } else {
                Err(error)
            }
        }
        Err(error) => Err(error),
    }
}

/// How a caller asks a holder to hand a key over: the engine sends a notification; `hoard serve`
/// also leaves the request in the holder's event inbox for clients that poll.
pub trait HandoffAsker: Send + Sync {
    fn ask(&self, holder: &HolderId, id: &DocId) -> impl Future<Output = ()> + Send;
}

/// Asks by notification only (best effort: a lost request ends in a steal after the wait).
#[derive(Debug)]
pub struct NotifyHolder<'a>(pub &'a dyn Store);

impl HandoffAsker for NotifyHolder<'_> {
    async fn ask(&self, holder: &HolderId, id: &DocId) {
        if let Err(error) = self.0.notify(handoff_notification(holder, id)).await {
            tracing::debug!(%id, %holder, %error, "a handoff request was not sent; the start steals after its wait");
        }
    }
}

/// One acquisition: what to take, for whom, how to treat a holder, and how to wait and retry.
#[derive(Debug)]
pub struct Acquisition<'a> {
    pub store: &'a dyn Store,
    pub holder: &'a HolderId,
    pub id: &'a DocId,
    pub policy: HeldPolicy,
    pub poll_interval_ms: u64,
    /// Retries each store call's transient failures.
    pub retry: Retry<'a>,
    /// This process's own release signal, when it has one (the engine's sessions ending).
    pub local_releases: Option<&'a Notify>,
}

impl<'a> Acquisition<'a> {
    /// The library's defaults: poll every `HANDOFF_POLL_INTERVAL_MS_DEFAULT`, retry each store
    /// call up to `ACQUIRE_ATTEMPTS_MAX_DEFAULT` times with the default backoff.
    pub fn with_defaults(
        store: &'a dyn Store,
        holder: &'a HolderId,
        id: &'a DocId,
        policy: HeldPolicy,
        jitter: &'a Jitter,
    ) -> Acquisition<'a> {
        Acquisition {
            store,
            holder,
            id,
            policy,
            poll_interval_ms: HANDOFF_POLL_INTERVAL_MS_DEFAULT,
            retry: Retry::new("acquire a key", ACQUIRE_ATTEMPTS_MAX_DEFAULT, Backoff::DEFAULT, jitter),
            local_releases: None,
        }
    }
}

/// The key is the acquirer's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acquired {
    pub epoch: u64,
    /// The holder it was taken from, when the policy stole it.
    pub stole_from: Option<HolderId>,
    /// Handoff requests sent while waiting.
    pub handoffs_requested: u32,
}

/// How an acquisition ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcquireOutcome {
    Acquired(Acquired),
    /// The policy does not allow taking the key from `holder` (now, or after its wait), or the
    /// key kept changing hands past every pass.
    Locked {
        holder: HolderId,
    },
}

/// Acquires `request.id` for `request.holder`, following the policy.
pub async fn acquire_with_policy(
    request: &Acquisition<'_>,
    asker: &impl HandoffAsker,
) -> Result<AcquireOutcome, StoreError> {
    // Subscribed before the first attempt, so a release between it and the wait is not missed.
    let mut released = request.store.subscribe();
    let started = tokio::time::Instant::now();
    let wait_ms = request.policy.wait_ms();
    let poll_interval_ms = request.poll_interval_ms.max(1);
    let mut condition = Condition::LeaseFree;
    let mut stealing_from: Option<HolderId> = None;
    let mut asked: Option<(HolderId, u64)> = None;
    let mut handoffs_requested = 0u32;
    let mut last_holder: Option<HolderId> = None;
    let passes_max = wait_ms / poll_interval_ms + 1 + ACQUIRE_CHANGED_PASSES_MAX;
    for _pass in 0..passes_max {
        let attempt =
            request
                .retry
                .run(|_| {
                    let condition = condition.clone();
                    async move {
                        Attempt::from_store(acquire_once(request.store, request.holder, request.id, condition).await)
                    }
                })
                .await
                .map_err(|gave_up| gave_up.into_error())?;
        let (found, found_epoch) = match attempt {
            AcquireAttempt::Acquired { epoch } => {
                return Ok(AcquireOutcome::Acquired(Acquired { epoch, stole_from: stealing_from, handoffs_requested }));
            }
            AcquireAttempt::Changed => {
                condition = Condition::LeaseFree;
                stealing_from = None;
                continue;
            }
            AcquireAttempt::HeldBy { holder, epoch } => (holder, epoch),
        };
        if &found == request.holder {
            // The acquirer's own lease from a session it no longer has (its release was lost):
            // nobody plays it, take it back at once.
            condition = Condition::Lease { holder: found, epoch: found_epoch };
            stealing_from = None;
            continue;
        }
        last_holder = Some(found.clone());
        let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let steal = match request.policy {
            HeldPolicy::FailFast => return Ok(AcquireOutcome::Locked { holder: found }),
            HeldPolicy::StealNow => true,
            HeldPolicy::Wait { .. } if waited_ms >= wait_ms => return Ok(AcquireOutcome::Locked { holder: found }),
            HeldPolicy::WaitThenSteal { .. } => waited_ms >= wait_ms,
            HeldPolicy::Wait { .. } => false,
        };
        if steal {
            condition = Condition::Lease { holder: found.clone(), epoch: found_epoch };
            stealing_from = Some(found);
            continue;
        }
        condition = Condition::LeaseFree;
        stealing_from = None;
        if asked.as_ref() != Some(&(found.clone(), found_epoch)) {
            asker.ask(&found, request.id).await;
            handoffs_requested += 1;
            asked = Some((found, found_epoch));
        }
        let remaining_ms = wait_ms.saturating_sub(waited_ms).max(1);
        wait_for_release(&mut released, request.id, poll_interval_ms.min(remaining_ms), request.local_releases).await;
    }
    Ok(AcquireOutcome::Locked { holder: last_holder.unwrap_or_else(|| request.holder.clone()) })
}

/// Waits for a release announcement of `id` (from any process, or this process's own signal),
/// or `poll_interval_ms`, whichever comes first.
pub async fn wait_for_release(
    released: &mut Subscription,
    id: &DocId,
    poll_interval_ms: u64,
    local_releases: Option<&Notify>,
) {
    let poll = tokio::time::sleep(std::time::Duration::from_millis(poll_interval_ms));
    tokio::pin!(poll);
    let local = async {
        match local_releases {
            Some(notify) => notify.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(local);
    loop {
        // `biased`: branches are polled in order, not at random, so simulated runs replay exactly.
        tokio::select! {
            biased;
            () = &mut poll => return,
            () = &mut local => return,
            received = released.recv() => match received {
                Ok(notification) if announces_release(&notification, id) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    poll.as_mut().await;
                    return;
                }
            },
        }
    }
}

/// Releases a key its holder acquired but will not play (unreadable data, a read that failed,
/// shutdown), fenced by the epoch it was acquired at. `Ok(true)`: released (announce it);
/// `Ok(false)`: the key is no longer held at that epoch, nothing to do.
pub async fn release_untouched(
    store: &dyn Store,
    holder: &HolderId,
    id: &DocId,
    epoch: u64,
    retry: &Retry<'_>,
) -> Result<bool, StoreError> {
    let release =
        || Write::new(id.clone()).when(Condition::Lease { holder: holder.clone(), epoch }).lease(LeaseOp::Release);
    retry
        .run(|_| async {
            // A release is idempotent: retrying one whose answer was lost finds the key released
            // at our epoch (a conflict), which is the same outcome.
            match store.commit(Commit::single(release())).await {
                Ok(CommitOutcome::Committed { .. }) => Attempt::Done(true),
                Ok(CommitOutcome::Conflict(conflict)) => {
                    let released_by_us = conflict.found.lease.holder.is_none() && conflict.found.lease.epoch == epoch;
                    Attempt::Done(released_by_us)
                }
                Err(error) if error.is_transient() => Attempt::Retry(error),
                Err(error) => Attempt::Fail(error),
            }
        })
        .await
        .map_err(|gave_up| gave_up.into_error())
}

/// Reads the document of a key `request.holder` just acquired at `epoch`, retrying transient
/// failures with `read_retry`. If it still cannot be read, releases the key untouched (and
/// announces the release, best effort) before returning the read's error: never keep a key
/// nobody will play.
pub async fn read_or_release(
    request: &Acquisition<'_>,
    epoch: u64,
    read_retry: &Retry<'_>,
) -> Result<Document, StoreError> {
    let read = read_retry.run(|_| async { Attempt::from_store(get(request.store, request.id).await) }).await;
    let error = match read {
        Ok(document) => return Ok(document),
        Err(gave_up) => gave_up.into_error(),
    };
    match release_untouched(request.store, request.holder, request.id, epoch, &request.retry).await {
        Ok(true) => {
            if let Err(notify_error) = request.store.notify(released_notification(request.id)).await {
                tracing::debug!(id = %request.id, %notify_error, "release not announced; acquirers poll");
            }
        }
        // Taken by someone else meanwhile: nothing of ours to release.
        Ok(false) => {}
        Err(release_error) => tracing::warn!(
            id = %request.id,
            %release_error,
            "a key acquired but not readable stays held until its holder's process lease lapses"
        ),
    }
    Err(error)
}

fn id_json(id: &DocId) -> String {
    serde_json::to_string(id).expect("a DocId is two strings and always serializes")
}

/// The notification asking `holder` to save and release `id` at once (topic
/// `hoard.handoff.<holder>`, payload the `DocId` as JSON).
pub fn handoff_notification(holder: &HolderId, id: &DocId) -> Notification {
    Notification { topic: format!("{TOPIC_HANDOFF_PREFIX}{holder}"), payload: id_json(id) }
}

/// The notification telling every process that a message arrived in `id`'s inbox.
pub fn inbox_notification(id: &DocId) -> Notification {
    Notification { topic: TOPIC_INBOX.to_string(), payload: id_json(id) }
}

/// The notification telling every process that `id` was released (topic `hoard.released`).
pub fn released_notification(id: &DocId) -> Notification {
    Notification { topic: TOPIC_RELEASED.to_string(), payload: id_json(id) }
}

/// Notifications announcing `ids`, each payload at most `payload_bytes_max` bytes: a single key
/// as its own JSON (what older processes expect), several as a JSON array.
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
        let text = id_json(id);
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
