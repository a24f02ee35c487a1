//! Starting a session: admission through the registry (one session per key per engine), then,
//! in an engine task, acquire the key (the shared `protocol`), read, migrate, reconcile, check.
//!
//! Invariants:
//! - At most one session per key per engine: a second start of a key that is loading, live or
//!   closing waits for that one and gets the same session (never a second one that silently
//!   never saves, Lapis #48; never a load before the previous final save, Nevermore).
//! - The profile is read only after the key is acquired, so the previous holder's final save is
//!   always seen.
//! - The load runs in an engine task: a caller that gives up cannot strand an acquired lease; a
//!   load nobody waits for any more ends its session at once.
//! - A value that is not a valid profile is never overwritten: the key is released untouched and
//!   a quarantine record names it (it stays in history too).
//! - Every wait and retry is bounded by `EngineConfig`; every give-up is counted and logged.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;

use crate::retry::Attempt;
use crate::store::{Commit, DocId, Document, HolderId, Key, StoreError, StoreName, Write};

use super::autosave;
use super::config::EngineConfig;
use super::core::Core;
use super::counters::Counter;
use super::error::StartError;
use super::protocol::{
    AcquireOutcome, Acquisition, HandoffAsker, HeldPolicy, acquire_with_policy, handoff_notification, read_or_release,
    release_untouched,
};
use super::registry::{Admission, LiveSession, LoadTicket};
use super::schema::DecodeError;
use super::session::{NewSession, PendingTradesCause, Profile, ProfileKind, Session, SessionCore, SessionStatus};

/// What to do when the profile cannot be loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadFailurePolicy {
    /// Return the error.
    #[default]
    Fail,
    /// Play on the template's data, marked errored: never saved, no trades, no grants.
    PlayOnDefaults,
}

/// Per-call choices of `start_session`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartOptions {
    pub held: HeldPolicy,
    pub on_load_failure: LoadFailurePolicy,
}

impl StartOptions {
    /// Wait the engine's `handoff_wait_ms` for a handoff, then steal; fail on load errors.
    pub fn default_for(config: &EngineConfig) -> StartOptions {
        StartOptions {
            held: HeldPolicy::WaitThenSteal { wait_ms: config.handoff_wait_ms },
            on_load_failure: LoadFailurePolicy::Fail,
        }
    }
}

/// The named store where quarantine records go: one key per quarantined value.
pub const QUARANTINE_STORE: &str = "hoard.quarantine";

/// Admission passes per `acquire_attempts_max`: each pass joins, waits for a load, or waits one
/// poll interval for a closing session's final save.
const START_PASSES_PER_ACQUIRE_ATTEMPT: u32 = 4;

/// Starts (or joins) the session of `key`.
pub(crate) async fn start_session<P: Profile>(
    core: &Arc<Core>,
    kind: &ProfileKind<P>,
    key: &str,
    options: StartOptions,
) -> Result<Session<P>, StartError> {
    let key = Key::with_limits(key, core.store().limits()).map_err(StartError::InvalidKey)?;
    let id = DocId::new(kind.store.clone(), key);
    let passes_max = START_PASSES_PER_ACQUIRE_ATTEMPT * core.config().acquire_attempts_max;
    for _pass in 0..passes_max {
        match core.registry().begin_start(&id)? {
            Admission::Join(session) => {
                return match session.as_any().downcast::<SessionCore<P>>() {
                    Ok(session) => Ok(Session::from_core(session)),
                    Err(_) => Err(StartError::TypeMismatch { id }),
                };
            }
            Admission::Load(ticket) => return load_in_task(core, kind.clone(), id, options, ticket).await,
            Admission::WaitForLoad(mut waiter) => {
                // The loader sends `true` or drops the sender; either wakes us, and we look again.
                let _ = waiter.wait_for(|done| *done).await;
            }
            Admission::WaitForClose => {
                let poll = Duration::from_millis(core.config().handoff_poll_interval_ms);
                // Woken by the release; the poll bounds a missed wake-up.
                let _ = tokio::time::timeout(poll, core.local_releases().notified()).await;
            }
        }
    }
    Err(StartError::Locked { id, holder: core.holder().clone() })
}

/// Runs the load in an engine task, so a caller that gives up cannot strand an acquired lease.
async fn load_in_task<P: Profile>(
    core: &Arc<Core>,
    kind: ProfileKind<P>,
    id: DocId,
    options: StartOptions,
    ticket: LoadTicket,
) -> Result<Session<P>, StartError> {
    let (answer, answered) = oneshot::channel();
    let task_core = core.clone();
    let task_id = id.clone();
    let loading = async move {
        let core = task_core;
        let result = load_session(&core, &kind, &task_id, options).await;
        let session = match result {
            Ok(session) => session,
            Err(error) => {
                ticket.finish(None, core.registry());
                core.counters().one(Counter::LoadFailures);
                let _ = answer.send(Err(error));
                return;
            }
        };
        if !ticket.finish(Some(session.clone() as Arc<dyn LiveSession>), core.registry()) {
            // Shutdown began during the load: hand the key back at once.
            if let Err(error) = session.end_or_join(false).await {
                core.gave_up("release a key loaded during shutdown", &task_id, &error);
            }
            let _ = answer.send(Err(StartError::ShuttingDown));
            return;
        }
        autosave::start(&core, &session);
        // Cross-server trades left pending in the profile are resolved from their records (G3).
        session.resolve_pending_trades(PendingTradesCause::Loaded);
        core.counters().one(Counter::SessionsStarted);
        if let Err(Ok(orphan)) = answer.send(Ok(Session::from_core(session))) {
            // The caller went away: nobody plays this session, so end it now.
            if let Err(error) = orphan.end().await {
                core.gave_up("end a session nobody waited for", &task_id, &error);
            }
        }
    };
    core.spawn("load", loading)
        .map_err(|refused| StartError::Store { id: id.clone(), source: StoreError::unavailable(refused) })?;
    // The sender is gone only when the task was aborted (a crash or the end of shutdown).
    answered.await.unwrap_or(Err(StartError::Cancelled { id }))
}

/// Asks a holder to hand over by notification, counting the request.
struct AskByNotification<'a>(&'a Core);

impl HandoffAsker for AskByNotification<'_> {
    async fn ask(&self, holder: &HolderId, id: &DocId) {
        self.0.counters().one(Counter::HandoffsRequested);
        if let Err(error) = self.0.store().notify(handoff_notification(holder, id)).await {
            // A lost request only means we wait for the steal.
            tracing::debug!(%id, %holder, %error, "handoff request not sent; stealing after the wait");
        }
    }
}

/// This engine's acquisition of `id`, with the shared protocol's rules and its own settings.
fn acquisition<'a>(core: &'a Core, id: &'a DocId, policy: HeldPolicy) -> Acquisition<'a> {
    Acquisition {
        store: &**core.store(),
        holder: core.holder(),
        id,
        policy,
        poll_interval_ms: core.config().handoff_poll_interval_ms,
        retry: core.retry("acquire a key", core.config().acquire_attempts_max),
        local_releases: Some(core.local_releases()),
    }
}

/// Acquires the key of `request` with the shared protocol. Returns the epoch.
async fn acquire(core: &Core, request: &Acquisition<'_>) -> Result<u64, StartError> {
    let id = request.id;
    match acquire_with_policy(request, &AskByNotification(core)).await {
        Ok(AcquireOutcome::Acquired(acquired)) => {
            if acquired.stole_from.is_some() {
                core.counters().one(Counter::Steals);
            }
            Ok(acquired.epoch)
        }
        Ok(AcquireOutcome::Locked { holder }) => Err(StartError::Locked { id: id.clone(), holder }),
        Err(source) => Err(StartError::Store { id: id.clone(), source }),
    }
}

/// Releases a key this engine acquired but will not play (bad data, a failed read).
async fn give_back(core: &Core, id: &DocId, epoch: u64) {
    let retry = core.retry("release a key acquired but not played", core.config().save_attempts_max);
    match release_untouched(&**core.store(), core.holder(), id, epoch, &retry).await {
        Ok(true) => core.announce_released(id),
        // Taken by someone else meanwhile: nothing of ours to release.
        Ok(false) => {}
        // Logged and counted as given up by the helper; the lease lapses with this process's.
        Err(error) => {
            tracing::warn!(%id, %error, "a key acquired but not played stays held until the process lease lapses")
        }
    }
}

/// The quarantine record of version `version` of `id`: `hoard.quarantine/{store}/{key}/v{version}`
/// holding `{store, key, version, reason}`. The value itself stays in the key and its history;
/// the record only points at it. Shared by the engine and `hoard serve`, so operators find every
/// quarantined key in one place. An error when the record's key would be over the key limit.
pub fn quarantine_write(
    id: &DocId,
    version: u64,
    reason: &str,
    limits: &crate::store::Limits,
) -> Result<Write, StoreError> {
    let store = StoreName::new(QUARANTINE_STORE)?;
    let key = Key::with_limits(format!("{}/{}/v{version}", id.store, id.key), limits)?;
    let record = json!({ "store": id.store.as_str(), "key": id.key.as_str(), "version": version, "reason": reason });
    Ok(Write::put(DocId::new(store, key), record))
}

/// Writes a record pointing at a value that is not a valid profile (the value itself stays in
/// the key and its history).
async fn quarantine(core: &Core, document: &Document, reason: &str) {
    let write = match quarantine_write(&document.id, document.version, reason, core.store().limits()) {
        Ok(write) => write,
        Err(error) => return core.gave_up("name a quarantine record", &document.id, &error),
    };
    // The same record again is harmless: retried on any transient failure.
    let written = core
        .retry("write a quarantine record", core.config().save_attempts_max)
        .run(|_| async { Attempt::from_store(core.store().commit(Commit::single(write.clone())).await) })
        .await;
    if let Err(gave_up) = written {
        tracing::warn!(id = %document.id, error = %gave_up.error, "the quarantine record was not written; the value stays untouched in its key");
    }
}

fn errored_session<P: Profile>(
    core: &Arc<Core>,
    kind: &ProfileKind<P>,
    id: &DocId,
    reason: String,
) -> Arc<SessionCore<P>> {
    let (profile, meta) = match kind.schema.decode(None) {
        Ok(decoded) => (decoded.profile, decoded.meta),
        Err(_) => (kind.schema.template(), kind.schema.current_meta()),
    };
    let status = SessionStatus::Errored { reason };
    SessionCore::new(
        core,
        NewSession { kind, id, epoch: 0, profile, meta, status, document: None, changed_on_load: false },
    )
}

async fn load_session<P: Profile>(
    core: &Arc<Core>,
    kind: &ProfileKind<P>,
    id: &DocId,
    options: StartOptions,
) -> Result<Arc<SessionCore<P>>, StartError> {
    let play_on_defaults = options.on_load_failure == LoadFailurePolicy::PlayOnDefaults;
    let request = acquisition(core, id, options.held);
    let epoch = match acquire(core, &request).await {
        Ok(epoch) => epoch,
        Err(StartError::Store { id, source }) if play_on_defaults => {
            return Ok(errored_session(core, kind, &id, format!("could not acquire: {source}")));
        }
        Err(error) => return Err(error),
    };
    let read_retry = core.retry("read a profile just acquired", core.config().load_attempts_max);
    let document = match read_or_release(&request, epoch, &read_retry).await {
        Ok(document) => document,
        Err(error) => {
            // Released untouched (so the other starts of this engine wake too).
            core.local_releases().notify_waiters();
            if play_on_defaults {
                return Ok(errored_session(core, kind, id, format!("could not read: {error}")));
            }
            return Err(StartError::Store { id: id.clone(), source: error });
        }
    };
    let decoded = match kind.schema.decode(document.value.as_ref()) {
        Ok(decoded) => decoded,
        Err(error) => {
            give_back(core, id, epoch).await;
            return match error {
                DecodeError::NewerThanThisGame { .. } => Err(StartError::NewerData { id: id.clone(), source: error }),
                other => {
                    let reason = other.to_string();
                    quarantine(core, &document, &reason).await;
                    if play_on_defaults {
                        Ok(errored_session(core, kind, id, format!("quarantined: {reason}")))
                    } else {
                        Err(StartError::Quarantined { id: id.clone(), reason })
                    }
                }
            };
        }
    };
    let changed_on_load = decoded.is_new || decoded.migrated_from.is_some() || decoded.reconciled;
    let session = SessionCore::new(
        core,
        NewSession {
            kind,
            id,
            epoch,
            profile: decoded.profile,
            meta: decoded.meta,
            status: SessionStatus::Active,
            document: Some(&document),
            changed_on_load,
        },
    );
    session.apply_messages(&document.inbox);
    Ok(session)
}
