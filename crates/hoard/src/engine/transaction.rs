//! Atomic multi-session transactions (G3): change several sessions' profiles, and optionally
//! lock-free shared documents, in one fenced atomic commit.
//!
//! Invariants:
//! - Parties are locked in canonical key order (their `write_order`), so concurrent transactions
//!   on this engine cannot deadlock, and no save of a party runs while the transaction commits.
//! - While a transaction commits, its sessions refuse in-memory changes (`Busy`): the result is
//!   shown in memory only after the commit is durable, and the prior state stays if it fails.
//! - A commit whose outcome is unknown is resolved by reading back before anything is reported;
//!   the change function is never re-run on a state that may already contain its effect.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::Value;
use thiserror::Error;

use crate::store::{
    Commit, CommitOutcome, Condition, Conflict, ConflictKind, DocId, StoreError, ValueOp, Write, resolve_unknown_commit,
};

use super::engine::{Engine, EngineShared};
use super::schema::{ProfileMeta, changed_fields};
use super::session::{Profile, Session, SessionCore, SessionEvent, SessionStatus};

/// Why a transaction did not commit. Nothing changed, in the store or in memory, unless the
/// variant says otherwise.
#[derive(Debug, Error)]
pub enum TransactError {
    #[error("the change refused: {reason}")]
    Refused { reason: String },
    #[error("a transaction takes 1 to {parties_max} distinct parties (transaction_parties_max); got {count}")]
    BadParties { count: usize, parties_max: usize },
    #[error("session {id} is not live on this engine ({status:?}); it cannot take part")]
    NotLive { id: DocId, status: SessionStatus },
    #[error("session {id} plays on default data after a failed load; it cannot trade or receive grants")]
    Errored { id: DocId },
    #[error("session {id} lost its key to another server; kick the player")]
    FencedOut { id: DocId },
    #[error("a profile failed validation: {reason}")]
    Invalid { reason: String },
    #[error("a condition of the commit failed: {0}")]
    Conflict(Box<Conflict>),
    #[error("the store failed; nothing was committed: {0}")]
    Store(StoreError),
    /// The commit may or may not have applied and reading back could not tell; the sessions
    /// involved were ended (fenced out) so that no player keeps playing on a state that may
    /// differ from the durable one.
    #[error("the commit's outcome is unknown and could not be read back; the sessions involved were ended")]
    OutcomeUnknown,
}

/// What the change function sees and changes: copies of the parties' profiles and shared
/// documents, and extra writes (records) to commit with them.
#[derive(Debug)]
pub struct TxContext<P> {
    pub profiles: Vec<P>,
    /// Current values of the shared (lock-free) documents; set to change, `None` to delete.
    pub docs: Vec<Option<Value>>,
    extra_writes: Vec<Write>,
}

impl<P> TxContext<P> {
    /// Adds a write committed atomically with the transaction (e.g. a trade or receipt record,
    /// usually with `Condition::Absent` so a retry cannot apply twice).
    pub fn add_write(&mut self, write: Write) {
        self.extra_writes.push(write);
    }
}

/// The prepared commit and what memory becomes if it applies.
struct Prepared<P> {
    commit: Commit,
    profiles: Vec<P>,
    revisions: Vec<u64>,
    acks: Vec<u64>,
    before_views: Vec<Option<Value>>,
}

fn lock_parties<P: Profile>(sessions: &[Arc<SessionCore<P>>]) -> Result<(), TransactError> {
    // Check every party first, then mark all busy: all or none.
    for core in sessions {
        let state = core.lock();
        match &state.status {
            SessionStatus::Active => {}
            SessionStatus::Errored { .. } => return Err(TransactError::Errored { id: core.id.clone() }),
            SessionStatus::FencedOut => return Err(TransactError::FencedOut { id: core.id.clone() }),
            status => return Err(TransactError::NotLive { id: core.id.clone(), status: status.clone() }),
        }
        if state.in_transaction {
            return Err(TransactError::NotLive { id: core.id.clone(), status: SessionStatus::Active });
        }
    }
    for core in sessions {
        core.lock().in_transaction = true;
    }
    Ok(())
}

fn unlock_parties<P: Profile>(sessions: &[Arc<SessionCore<P>>]) {
    for core in sessions {
        core.lock().in_transaction = false;
    }
}

fn prepare<P: Profile, R>(
    sessions: &[Arc<SessionCore<P>>],
    docs: &[(DocId, Option<Value>, u64)],
    change: &mut impl FnMut(&mut TxContext<P>) -> Result<R, String>,
) -> Result<(R, Prepared<P>), TransactError> {
    let mut profiles = Vec::with_capacity(sessions.len());
    let mut metas: Vec<ProfileMeta> = Vec::with_capacity(sessions.len());
    let mut revisions = Vec::with_capacity(sessions.len());
    let mut acks = Vec::with_capacity(sessions.len());
    for core in sessions {
        let state = core.lock();
        profiles.push(state.profile.clone());
        metas.push(state.meta);
        revisions.push(state.revision + 1);
        acks.push(state.inbox_applied_through);
    }
    // Change events need the profiles as JSON before and after; only build them for listeners
    // (a profile is kilobytes of JSON, and trades run hot).
    let before_views: Vec<Option<Value>> = sessions
        .iter()
        .zip(&profiles)
        .map(|(core, profile)| if core.events.receiver_count() > 0 { serde_json::to_value(profile).ok() } else { None })
        .collect();
    let mut context = TxContext {
        profiles,
        docs: docs.iter().map(|(_, value, _)| value.clone()).collect(),
        extra_writes: Vec::new(),
    };
    let result = change(&mut context).map_err(|reason| TransactError::Refused { reason })?;
    assert_eq!(context.profiles.len(), sessions.len(), "the change function must not add or remove parties");
    assert_eq!(context.docs.len(), docs.len(), "the change function must not add or remove shared documents");
    let mut writes = Vec::with_capacity(sessions.len() + docs.len() + context.extra_writes.len());
    for ((core, profile), (meta, ack)) in sessions.iter().zip(&context.profiles).zip(metas.iter().zip(&acks)) {
        let value = core
            .kind
            .schema
            .encode(profile, meta)
            .map_err(|error| TransactError::Invalid { reason: error.to_string() })?;
        let mut write = Write::put(core.id.clone(), value).when(core.fence());
        let durable_ack = core.lock().inbox_durable_through;
        if *ack > durable_ack {
            write = write.ack_inbox_through(*ack);
        }
        writes.push(write);
    }
    for ((id, before, version), after) in docs.iter().zip(&context.docs) {
        if before == after {
            // Unchanged, but the commit still depends on it: re-check its version.
            writes.push(Write::new(id.clone()).when(Condition::Version(*version)));
            continue;
        }
        let op = match after {
            Some(value) => ValueOp::Put(value.clone()),
            None => ValueOp::Delete,
        };
        writes.push(Write::new(id.clone()).when(Condition::Version(*version)).value(op));
    }
    writes.append(&mut context.extra_writes);
    let prepared = Prepared { commit: Commit::new(writes), profiles: context.profiles, revisions, acks, before_views };
    Ok((result, prepared))
}

fn show_in_memory<P: Profile>(sessions: &[Arc<SessionCore<P>>], prepared: Prepared<P>) {
    let Prepared { profiles, revisions, acks, before_views, .. } = prepared;
    for (((core, profile), revision), (ack, before)) in
        sessions.iter().zip(profiles).zip(revisions).zip(acks.into_iter().zip(before_views))
    {
        let listening = core.events.receiver_count() > 0;
        let after = if listening { serde_json::to_value(&profile).ok() } else { None };
        {
            let mut state = core.lock();
            state.profile = profile;
            state.revision = state.revision.max(revision);
            state.durable_revision = state.durable_revision.max(revision);
            state.inbox_durable_through = state.inbox_durable_through.max(ack);
            state.in_transaction = false;
        }
        if let (Some(before), Some(after)) = (before, after) {
            core.emit(SessionEvent::Changed {
                changes: changed_fields(&before, &after),
                client_changes: core.kind.schema.client_changes(&before, &after),
            });
        }
        core.emit(SessionEvent::Saved { revision });
    }
}

/// Runs a transaction. `change` may be called more than once (when a shared document changed
/// under it), so it must be a pure function of what it is given. Also returns the store time
/// the commit applied at, when the store answered it (`None`: a hidden outcome was resolved by
/// reading back, which does not say when).
pub(crate) async fn transact<P: Profile, R>(
    shared: &Arc<EngineShared>,
    sessions: &[&Session<P>],
    shared_docs: &[DocId],
    mut change: impl FnMut(&mut TxContext<P>) -> Result<R, String>,
) -> Result<(R, Option<i64>), TransactError> {
    let parties_max = shared.config.transaction_parties_max;
    let count = sessions.len() + shared_docs.len();
    let mut cores: Vec<Arc<SessionCore<P>>> = sessions.iter().map(|s| s.core.clone()).collect();
    cores.sort_by(|a, b| a.id.cmp(&b.id));
    let distinct = cores.windows(2).all(|pair| pair[0].id != pair[1].id)
        && shared_docs.iter().all(|id| cores.iter().all(|core| &core.id != id))
        && {
            let mut ids: Vec<&DocId> = shared_docs.iter().collect();
            ids.sort();
            ids.windows(2).all(|pair| pair[0] != pair[1])
        };
    if count == 0 || count > parties_max || !distinct {
        return Err(TransactError::BadParties { count, parties_max });
    }
    for core in &cores {
        let from_this_engine = core.engine.upgrade().is_some_and(|engine| Arc::ptr_eq(&engine, shared));
        if !from_this_engine {
            return Err(TransactError::NotLive { id: core.id.clone(), status: core.lock().status.clone() });
        }
    }
    // Canonical order: no deadlock between transactions, and no save of a party runs meanwhile.
    let mut order_guards = Vec::with_capacity(cores.len());
    for core in &cores {
        order_guards.push(core.write_order.lock().await);
    }
    // The caller's order of sessions is what `change` sees; map it to the canonical order.
    let caller_order: Vec<usize> =
        sessions.iter().map(|s| cores.iter().position(|core| core.id == s.core.id).unwrap_or(0)).collect();
    lock_parties(&cores)?;
    let result = run_locked(shared, &cores, shared_docs, &caller_order, &mut change).await;
    unlock_parties(&cores);
    drop(order_guards);
    result
}

async fn run_locked<P: Profile, R>(
    shared: &Arc<EngineShared>,
    cores: &[Arc<SessionCore<P>>],
    shared_docs: &[DocId],
    caller_order: &[usize],
    change: &mut impl FnMut(&mut TxContext<P>) -> Result<R, String>,
) -> Result<(R, Option<i64>), TransactError> {
    // Present profiles to `change` in the caller's order, commit in canonical order.
    let mut in_caller_order = |context: &mut TxContext<P>| -> Result<R, String> {
        let canonical = std::mem::take(&mut context.profiles);
        let mut slots: Vec<Option<P>> = canonical.into_iter().map(Some).collect();
        context.profiles = caller_order.iter().filter_map(|&i| slots.get_mut(i).and_then(Option::take)).collect();
        let result = change(context);
        let mut back: Vec<Option<P>> = (0..caller_order.len()).map(|_| None).collect();
        for (profile, &i) in std::mem::take(&mut context.profiles).into_iter().zip(caller_order) {
            if let Some(slot) = back.get_mut(i) {
                *slot = Some(profile);
            }
        }
        context.profiles = back.into_iter().flatten().collect();
        result
    };
    let mut last_error: Option<StoreError> = None;
    for attempt in 0..shared.config.save_attempts_max {
        if attempt > 0 {
            shared.counters.retries.fetch_add(1, Ordering::Relaxed);
            shared.sleep_backoff(attempt - 1).await;
        }
        let documents = if shared_docs.is_empty() {
            Vec::new()
        } else {
            match shared.store.get_many(shared_docs).await {
                Ok(documents) => documents,
                Err(error) => {
                    last_error = Some(error);
                    continue;
                }
            }
        };
        let docs: Vec<(DocId, Option<Value>, u64)> =
            documents.into_iter().map(|d| (d.id.clone(), d.value.clone(), d.version)).collect();
        let (result, mut prepared) = prepare(cores, &docs, &mut in_caller_order)?;
        // What a hidden outcome is resolved with: the commit without its values.
        let trace = prepared.commit.trace();
        let commit = std::mem::replace(&mut prepared.commit, trace);
        match shared.store.commit(commit).await {
            Ok(CommitOutcome::Committed { at_ms, .. }) => {
                shared.counters.saves.fetch_add(cores.len() as u64, Ordering::Relaxed);
                show_in_memory(cores, prepared);
                return Ok((result, Some(at_ms)));
            }
            Ok(CommitOutcome::Conflict(conflict)) => {
                match conflict_party(cores, &conflict) {
                    Some(core) if conflict.kind == ConflictKind::LeaseMismatch => {
                        unlock_parties(cores);
                        core.fence_out();
                        return Err(TransactError::FencedOut { id: core.id.clone() });
                    }
                    _ => {}
                }
                let on_shared_doc =
                    shared_docs.contains(&conflict.id) && conflict.kind == ConflictKind::VersionMismatch;
                if on_shared_doc {
                    // A shared document moved: re-read and re-run the change.
                    continue;
                }
                return Err(TransactError::Conflict(Box::new(conflict)));
            }
            Err(StoreError::InvalidInput(error)) => return Err(TransactError::Store(StoreError::InvalidInput(error))),
            Err(error) if error.may_have_applied() => match resolve(shared, &prepared.commit).await {
                Some(true) => {
                    shared.counters.saves.fetch_add(cores.len() as u64, Ordering::Relaxed);
                    show_in_memory(cores, prepared);
                    return Ok((result, None));
                }
                Some(false) => last_error = Some(error),
                None => {
                    unlock_parties(cores);
                    for core in cores {
                        core.fence_out();
                    }
                    return Err(TransactError::OutcomeUnknown);
                }
            },
            Err(error) => last_error = Some(error),
        }
    }
    Err(TransactError::Store(last_error.unwrap_or_else(|| StoreError::unavailable("no attempt was made"))))
}

fn conflict_party<'a, P: Profile>(
    cores: &'a [Arc<SessionCore<P>>],
    conflict: &Conflict,
) -> Option<&'a Arc<SessionCore<P>>> {
    cores.iter().find(|core| core.id == conflict.id)
}

/// Reads back until the store says whether the commit applied (bounded).
pub(crate) async fn resolve(shared: &EngineShared, commit: &Commit) -> Option<bool> {
    for attempt in 0..shared.config.save_attempts_max {
        if attempt > 0 {
            shared.sleep_backoff(attempt - 1).await;
        }
        if let Ok(answer) = resolve_unknown_commit(&*shared.store, commit).await {
            return answer;
        }
    }
    None
}

impl Engine {
    /// Changes several sessions' profiles (and optionally shared lock-free documents) in one
    /// fenced atomic commit (G3). Every session must be live on this engine and not errored. The
    /// result shows in memory only once durable; on any failure memory keeps its prior state.
    /// `change` sees the profiles in the order of `sessions` and may run more than once.
    pub async fn transact<P: Profile, R>(
        &self,
        sessions: &[&Session<P>],
        shared_docs: &[DocId],
        change: impl FnMut(&mut TxContext<P>) -> Result<R, String>,
    ) -> Result<R, TransactError> {
        transact(&self.shared, sessions, shared_docs, change).await.map(|(result, _)| result)
    }
}
