//! Starting a session: acquire the key (asking a live holder to hand over, stealing after a
//! bounded wait), then read, migrate, reconcile and check the profile.
//!
//! Invariants:
//! - The profile is read only after the key is acquired, so the previous holder's final save is
//!   always seen.
//! - A value that is not a valid profile is never overwritten: the key is released untouched and
//!   a quarantine record names it (it stays in history too).
//! - Every wait and retry is bounded by `EngineConfig`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::broadcast;

use crate::store::{
    Commit, CommitOutcome, Condition, ConflictKind, DocId, Document, HolderId, LeaseOp, Notification, Store,
    StoreError, StoreName, Write, get,
};

use super::engine::{EngineShared, HeldPolicy, LoadFailurePolicy, StartOptions, TOPIC_HANDOFF_PREFIX};
use super::error::StartError;
use super::schema::{DecodeError, ProfileMeta};
use super::session::{Profile, ProfileKind, SESSION_EVENT_CHANNEL_CAPACITY, SessionCore, SessionState, SessionStatus};

/// The named store where quarantine records go: one key per quarantined value.
pub const QUARANTINE_STORE: &str = "hoard.quarantine";

/// What one acquisition attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcquireAttempt {
    /// The key is ours at this epoch.
    Acquired { epoch: u64 },
    /// A holder has it at this epoch (possibly `holder` itself, from a session it lost track of).
    HeldBy { holder: HolderId, epoch: u64 },
    /// The lease changed between the read and the write (released meanwhile): try again.
    Changed,
}

/// One attempt to acquire `id` for `holder` on `condition` (`LeaseFree`, or `Lease{..}` to
/// steal from the holder seen). A hidden outcome is resolved by reading back: holder ids are
/// unique per process incarnation, so a key naming `holder` was acquired by it. Shared by the
/// engine and `hoard serve`, so both acquire keys the same way.
pub async fn acquire_once(
    store: &dyn Store,
    holder: &HolderId,
    id: &DocId,
    condition: Condition,
) -> Result<AcquireAttempt, StoreError> {
    let write = Write::new(id.clone()).when(condition).lease(LeaseOp::Acquire(holder.clone()));
    match store.commit(Commit::single(write)).await {
        Ok(CommitOutcome::Committed { applied, .. }) => {
            let epoch = applied.first().map_or(0, |applied| applied.epoch);
            Ok(AcquireAttempt::Acquired { epoch })
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

/// The notification asking `holder` to save and release `id` at once (topic
/// `hoard.handoff.<holder>`, payload the `DocId` as JSON).
pub fn handoff_notification(holder: &HolderId, id: &DocId) -> Notification {
    let payload = serde_json::to_string(id).unwrap_or_default();
    Notification { topic: format!("{TOPIC_HANDOFF_PREFIX}{holder}"), payload }
}

enum Acquired {
    Yes { epoch: u64 },
    HeldBy { holder: HolderId, epoch: u64 },
}

async fn try_acquire(shared: &EngineShared, id: &DocId, condition: Condition) -> Result<Acquired, StoreError> {
    Ok(match acquire_once(&*shared.store, &shared.holder, id, condition).await? {
        AcquireAttempt::Acquired { epoch } => Acquired::Yes { epoch },
        AcquireAttempt::HeldBy { holder, epoch } => Acquired::HeldBy { holder, epoch },
        AcquireAttempt::Changed => Acquired::HeldBy { holder: shared.holder.clone(), epoch: u64::MAX },
    })
}

/// Acquires `id` for this engine, following the policy. Returns the epoch.
async fn acquire(shared: &EngineShared, id: &DocId, policy: HeldPolicy) -> Result<u64, StartError> {
    let mut released = shared.store.subscribe();
    let started = tokio::time::Instant::now();
    let wait_ms = match policy {
        HeldPolicy::WaitThenSteal { wait_ms } | HeldPolicy::Wait { wait_ms } => wait_ms,
        HeldPolicy::StealNow | HeldPolicy::FailFast => 0,
    };
    let mut asked: Option<(HolderId, u64)> = None;
    let mut store_failures = 0u32;
    let mut condition = Condition::LeaseFree;
    // Bounded: each pass polls at most every `handoff_poll_interval_ms` until `wait_ms` is over,
    // and store failures are capped by `acquire_attempts_max`.
    let passes_max =
        wait_ms / shared.config.handoff_poll_interval_ms + 4 * u64::from(shared.config.acquire_attempts_max);
    for _pass in 0..passes_max {
        match try_acquire(shared, id, condition.clone()).await {
            Ok(Acquired::Yes { epoch }) => return Ok(epoch),
            Ok(Acquired::HeldBy { holder, epoch }) => {
                condition = Condition::LeaseFree;
                if holder == shared.holder && epoch != u64::MAX {
                    // Our own lease from a session this engine no longer has (its release was
                    // lost): nobody plays it, take it back at once.
                    condition = Condition::Lease { holder, epoch };
                    continue;
                }
                if epoch == u64::MAX {
                    continue;
                }
                if policy == HeldPolicy::FailFast {
                    return Err(StartError::Locked { id: id.clone(), holder });
                }
                let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let steal = policy == HeldPolicy::StealNow
                    || matches!(policy, HeldPolicy::WaitThenSteal { .. }) && waited_ms >= wait_ms;
                if steal {
                    shared.counters.steals.fetch_add(1, Ordering::Relaxed);
                    condition = Condition::Lease { holder, epoch };
                    continue;
                }
                if waited_ms >= wait_ms {
                    return Err(StartError::Locked { id: id.clone(), holder });
                }
                if asked.as_ref() != Some(&(holder.clone(), epoch)) {
                    request_handoff(shared, id, &holder).await;
                    asked = Some((holder, epoch));
                }
                wait_for_release(shared, id, &mut released).await;
            }
            Err(error) => {
                store_failures += 1;
                if store_failures >= shared.config.acquire_attempts_max {
                    return Err(StartError::Store { id: id.clone(), source: error });
                }
                shared.sleep_backoff(store_failures - 1).await;
            }
        }
    }
    Err(StartError::Locked { id: id.clone(), holder: shared.holder.clone() })
}

async fn request_handoff(shared: &EngineShared, id: &DocId, holder: &HolderId) {
    shared.counters.handoffs_requested.fetch_add(1, Ordering::Relaxed);
    // Best effort: a lost request only means we wait for the steal.
    let _ = shared.store.notify(handoff_notification(holder, id)).await;
}

/// Waits for a release announcement of `id` (from any process), or one poll interval.
async fn wait_for_release(shared: &EngineShared, id: &DocId, released: &mut broadcast::Receiver<Notification>) {
    let poll = tokio::time::sleep(Duration::from_millis(shared.config.handoff_poll_interval_ms));
    tokio::pin!(poll);
    loop {
        // `biased`: branches are polled in order, not at random, so simulated runs replay exactly.
        tokio::select! {
            biased;
            () = &mut poll => return,
            () = shared.released.notified() => return,
            received = released.recv() => match received {
                Ok(notification) if super::announce::announces_release(&notification, id) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    poll.as_mut().await;
                    return;
                }
            },
        }
    }
}

/// Releases a key this engine acquired but will not play (bad data, or shutdown).
async fn release_untouched(shared: &Arc<EngineShared>, id: &DocId, epoch: u64) {
    let write =
        Write::new(id.clone()).when(Condition::Lease { holder: shared.holder.clone(), epoch }).lease(LeaseOp::Release);
    for attempt in 0..shared.config.save_attempts_max {
        match shared.store.commit(Commit::single(write.clone())).await {
            Ok(_) => {
                shared.announce_released(id);
                return;
            }
            Err(_) => shared.sleep_backoff(attempt).await,
        }
    }
}

/// The quarantine record of version `version` of `id`: `hoard.quarantine/{store}/{key}/v{version}`
/// holding `{store, key, version, reason}`. The value itself stays in the key and its history;
/// the record only points at it. Shared by the engine and `hoard serve`, so operators find every
/// quarantined key in one place. `None` when the record's key would be over the key limit.
pub fn quarantine_write(id: &DocId, version: u64, reason: &str, limits: &crate::store::Limits) -> Option<Write> {
    let store = StoreName::new(QUARANTINE_STORE).ok()?;
    let key = crate::store::Key::with_limits(format!("{}/{}/v{version}", id.store, id.key), limits).ok()?;
    let record = json!({ "store": id.store.as_str(), "key": id.key.as_str(), "version": version, "reason": reason });
    Some(Write::put(DocId::new(store, key), record))
}

async fn quarantine(shared: &EngineShared, document: &Document, reason: &str) {
    let Some(write) = quarantine_write(&document.id, document.version, reason, shared.store.limits()) else { return };
    let _ = shared.store.commit(Commit::single(write)).await;
}

#[allow(clippy::too_many_arguments)] // one constructor, every field of a session named at its call sites
fn new_core<P: Profile>(
    shared: &Arc<EngineShared>,
    kind: &ProfileKind<P>,
    id: &DocId,
    epoch: u64,
    profile: P,
    meta: ProfileMeta,
    status: SessionStatus,
    document: Option<&Document>,
) -> Arc<SessionCore<P>> {
    let (events, _) = broadcast::channel(SESSION_EVENT_CHANNEL_CAPACITY);
    let state = SessionState {
        profile,
        meta,
        status,
        revision: 0,
        durable_revision: 0,
        attributes: document.map(|d| d.attributes.clone()).unwrap_or_default(),
        user_ids: document.map(|d| d.user_ids.clone()).unwrap_or_default(),
        metadata_revision: 0,
        inbox_applied_through: 0,
        inbox_durable_through: 0,
        in_transaction: false,
    };
    Arc::new(SessionCore {
        id: id.clone(),
        holder: shared.holder.clone(),
        epoch,
        kind: kind.clone(),
        engine: Arc::downgrade(shared),
        state: Mutex::new(state),
        write_order: tokio::sync::Mutex::new(()),
        events,
    })
}

fn errored_core<P: Profile>(
    shared: &Arc<EngineShared>,
    kind: &ProfileKind<P>,
    id: &DocId,
    reason: String,
) -> Arc<SessionCore<P>> {
    let decoded = kind.schema.decode(None);
    let (profile, meta) = match decoded {
        Ok(decoded) => (decoded.profile, decoded.meta),
        Err(_) => (kind.schema.template(), kind.schema.current_meta()),
    };
    // Epoch 0 never matches a real lease: even a bug that tried to save it would be fenced.
    new_core(shared, kind, id, 0, profile, meta, SessionStatus::Errored { reason }, None)
}

pub(crate) async fn load_session<P: Profile>(
    shared: &Arc<EngineShared>,
    kind: &ProfileKind<P>,
    id: &DocId,
    options: StartOptions,
) -> Result<Arc<SessionCore<P>>, StartError> {
    let play_on_defaults = options.on_load_failure == LoadFailurePolicy::PlayOnDefaults;
    let epoch = match acquire(shared, id, options.held).await {
        Ok(epoch) => epoch,
        Err(StartError::Store { id, source }) if play_on_defaults => {
            return Ok(errored_core(shared, kind, &id, format!("could not acquire: {source}")));
        }
        Err(error) => return Err(error),
    };
    let document = match shared.read_with_retries(id).await {
        Ok(document) => document,
        Err(error) => {
            release_untouched(shared, id, epoch).await;
            if play_on_defaults {
                return Ok(errored_core(shared, kind, id, format!("could not read: {error}")));
            }
            return Err(StartError::Store { id: id.clone(), source: error });
        }
    };
    let decoded = match kind.schema.decode(document.value.as_ref()) {
        Ok(decoded) => decoded,
        Err(error) => {
            release_untouched(shared, id, epoch).await;
            return match error {
                DecodeError::NewerThanThisGame { .. } => Err(StartError::NewerData { id: id.clone(), source: error }),
                other => {
                    let reason = other.to_string();
                    quarantine(shared, &document, &reason).await;
                    if play_on_defaults {
                        Ok(errored_core(shared, kind, id, format!("quarantined: {reason}")))
                    } else {
                        Err(StartError::Quarantined { id: id.clone(), reason })
                    }
                }
            };
        }
    };
    let changed_on_load = decoded.is_new || decoded.migrated_from.is_some() || decoded.reconciled;
    let core = new_core(shared, kind, id, epoch, decoded.profile, decoded.meta, SessionStatus::Active, Some(&document));
    if changed_on_load {
        // New, migrated or reconciled data is saved at the next save like any change.
        core.lock().revision = 1;
    }
    core.apply_messages(&document.inbox);
    Ok(core)
}
