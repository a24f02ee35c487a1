//! Atomic multi-session transactions (G3): change several sessions' profiles, and optionally
//! lock-free shared documents, in one fenced atomic commit.
//!
//! Invariants:
//! - Parties are locked in canonical key order (their write turns), so concurrent transactions
//!   on this engine cannot deadlock, and no save of a party runs while the transaction commits.
//! - While a transaction commits, its parties refuse in-memory changes (`Busy`): the result is
//!   shown in memory only after the commit is durable, and the prior state stays if it fails.
//!   The busy flags belong to one RAII guard (`Parties`): however the transaction ends (an
//!   answer, an error, a panic, the caller dropping the future), every party is usable after.
//! - A commit, once sent, is seen through in an engine task that owns the guard: its answer is
//!   always taken in (shown in memory, or its parties fenced out), even if the caller is gone.
//! - A commit whose outcome is unknown is resolved by reading back before anything is reported;
//!   the change function is never re-run on a state that may already contain its effect.
//! - Only sessions of this engine take part; a session of another engine is refused with
//!   `OnAnotherEngine` (a cross-server trade is a different protocol, `trade::across`: escrow, a
//!   decided record and a deadline).

use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;
use thiserror::Error;
use tokio::sync::OwnedMutexGuard;

use crate::retry::Attempt;
use crate::store::{
    Commit, CommitOutcome, Condition, Conflict, ConflictKind, DocId, HolderId, StoreError, ValueOp, Write,
};

use super::core::Core;
use super::counters::Counter;
use super::listener::check_inbox_soon;
use super::session::PartyStanding;
use super::session::{PartySnapshot, Profile, Session, SessionCore, SessionStatus};

/// Why a transaction did not commit. Nothing changed, in the store or in memory, unless the
/// variant says otherwise.
#[derive(Debug, Error)]
pub enum TransactError {
    #[error("the change refused: {reason}")]
    Refused { reason: String },
    #[error("a transaction takes 1 to {parties_max} distinct parties (transaction_parties_max); got {count}")]
    BadParties { count: usize, parties_max: usize },
    #[error(
        "session {id} belongs to another engine (holder {holder}); a transaction or trade takes only sessions of the engine running it; players on different servers trade with Engine::trade_across"
    )]
    OnAnotherEngine { id: DocId, holder: HolderId },
    #[error("session {id} is not live on this engine ({status:?}); it cannot take part")]
    NotLive { id: DocId, status: SessionStatus },
    #[error("session {id} is in another transaction that is committing; try again in a moment")]
    Busy { id: DocId },
    #[error(
        "session {id} cannot be sure it still holds its key (its engine's lease lapsed); try again once it is active"
    )]
    LeaseLapsed { id: DocId },
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

/// The locked parties, in canonical key order: their write turns and their busy flags.
struct Parties<P: Profile> {
    sessions: Vec<Arc<SessionCore<P>>>,
    _turns: Vec<OwnedMutexGuard<()>>,
    /// Parties whose inbox holds a message they passed over while busy: checked on release.
    recheck_inbox: Option<(Arc<Core>, Vec<DocId>)>,
}

impl<P: Profile> Parties<P> {
    /// Takes every party's write turn (in canonical order), then marks all busy or none.
    async fn lock(sessions: Vec<Arc<SessionCore<P>>>) -> Result<Parties<P>, TransactError> {
        debug_assert!(
            sessions.windows(2).all(|pair| pair[0].id() < pair[1].id()),
            "parties are locked in canonical key order, each once"
        );
        let mut turns = Vec::with_capacity(sessions.len());
        for session in &sessions {
            turns.push(session.write_turn().await);
        }
        for session in &sessions {
            let id = session.id().clone();
            match session.party_standing() {
                PartyStanding::Ready => {}
                PartyStanding::LeaseLapsed => return Err(TransactError::LeaseLapsed { id }),
                PartyStanding::Errored => return Err(TransactError::Errored { id }),
                PartyStanding::FencedOut => return Err(TransactError::FencedOut { id }),
                PartyStanding::Busy => return Err(TransactError::Busy { id }),
                PartyStanding::NotLive(status) => return Err(TransactError::NotLive { id, status }),
            }
        }
        for session in &sessions {
            session.set_in_transaction(true);
        }
        Ok(Parties { sessions, _turns: turns, recheck_inbox: None })
    }
}

impl<P: Profile> Drop for Parties<P> {
    fn drop(&mut self) {
        // Before the turns are released (fields drop after this), so no save slips in between.
        for session in &self.sessions {
            session.set_in_transaction(false);
        }
        if let Some((core, ids)) = self.recheck_inbox.take() {
            for id in &ids {
                check_inbox_soon(&core, id);
            }
        }
    }
}

/// The prepared commit and what memory becomes if it applies, per party in canonical order.
struct Prepared<P> {
    commit: Commit,
    parties: Vec<PartySnapshot<P>>,
}

/// How a commit sent by the task ended.
enum Verdict {
    Committed {
        at_ms: Option<i64>,
    },
    Conflict(Conflict),
    /// Reading back showed it did not apply: nothing changed.
    NotApplied(StoreError),
    /// Reading back could not tell; the parties were fenced out.
    Unknown,
}

/// Why an attempt is retried (the last one is what the caller hears if every attempt fails).
#[derive(Debug)]
enum RetryReason {
    Store(StoreError),
    SharedDocMoved(Conflict),
}

impl std::fmt::Display for RetryReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetryReason::Store(error) => write!(f, "{error}"),
            RetryReason::SharedDocMoved(conflict) => write!(f, "a shared document moved: {conflict}"),
        }
    }
}

fn prepare<P: Profile, R>(
    sessions: &[Arc<SessionCore<P>>],
    caller_order: &[usize],
    docs: &[(DocId, Option<Value>, u64)],
    change: &mut impl FnMut(&mut TxContext<P>) -> Result<R, String>,
) -> Result<(R, Prepared<P>), TransactError> {
    let mut snapshots: Vec<PartySnapshot<P>> = sessions.iter().map(|session| session.party_snapshot()).collect();
    // `change` sees the profiles in the caller's order; the commit is in canonical order.
    let mut context = TxContext {
        profiles: caller_order.iter().map(|&canonical| snapshots[canonical].profile.clone()).collect(),
        docs: docs.iter().map(|(_, value, _)| value.clone()).collect(),
        extra_writes: Vec::new(),
    };
    let result = change(&mut context).map_err(|reason| TransactError::Refused { reason })?;
    assert_eq!(context.profiles.len(), sessions.len(), "the change function must not add or remove parties");
    assert_eq!(context.docs.len(), docs.len(), "the change function must not add or remove shared documents");
    for (profile, &canonical) in context.profiles.drain(..).zip(caller_order) {
        snapshots[canonical].profile = profile;
    }
    let mut writes = Vec::with_capacity(sessions.len() + docs.len() + context.extra_writes.len());
    for (session, snapshot) in sessions.iter().zip(&snapshots) {
        let value = session
            .kind()
            .schema
            .encode(&snapshot.profile, &snapshot.meta)
            .map_err(|error| TransactError::Invalid { reason: error.to_string() })?;
        let mut write = Write::put(session.id().clone(), value).when(session.fence());
        if snapshot.inbox_applied_through > snapshot.inbox_durable_through {
            write = write.ack_inbox_through(snapshot.inbox_applied_through);
        }
        writes.push(write);
    }
    for ((id, before, version), after) in docs.iter().zip(&context.docs) {
        let write = Write::new(id.clone()).when(Condition::Version(*version));
        writes.push(match (before == after, after) {
            // Unchanged, but the commit still depends on it: re-check its version.
            (true, _) => write,
            (false, Some(value)) => write.value(ValueOp::Put(value.clone())),
            (false, None) => write.value(ValueOp::Delete),
        });
    }
    writes.append(&mut context.extra_writes);
    Ok((result, Prepared { commit: Commit::new(writes), parties: snapshots }))
}

fn adopt<P: Profile>(parties: &Parties<P>, prepared: Prepared<P>, confirmed_generation: Option<u64>) {
    for (session, snapshot) in parties.sessions.iter().zip(prepared.parties) {
        session.adopt_committed(
            snapshot.profile,
            snapshot.next_revision,
            snapshot.inbox_applied_through,
            snapshot.before_view,
            confirmed_generation,
        );
    }
}

/// Sends the commit and takes in its answer, whatever happens to the caller.
async fn commit_in_task<P: Profile>(
    core: Arc<Core>,
    mut parties: Parties<P>,
    prepared: Prepared<P>,
) -> (Parties<P>, Verdict) {
    let mut prepared = prepared;
    // What a hidden outcome is resolved with: the commit without its values.
    let trace = prepared.commit.trace();
    let commit = std::mem::replace(&mut prepared.commit, trace);
    let generation = core.lease().generation();
    let vouched = || (core.lease().generation() == generation && core.lease().is_valid_now()).then_some(generation);
    let verdict = match core.store().commit(commit).await {
        Ok(CommitOutcome::Committed { at_ms, applied, .. }) => {
            core.counters().add(Counter::Saves, parties.sessions.len() as u64);
            // A message that arrived while a party was busy was passed over (it reads again
            // later): as a save does, look again when the commit shows one still waiting.
            let waiting: Vec<DocId> = parties
                .sessions
                .iter()
                .zip(&prepared.parties)
                .filter(|(session, snapshot)| {
                    applied.iter().any(|applied| {
                        &applied.id == session.id() && applied.inbox_last_waiting_seq > snapshot.inbox_applied_through
                    })
                })
                .map(|(session, _)| session.id().clone())
                .collect();
            adopt(&parties, prepared, vouched());
            if !waiting.is_empty() {
                // Looked at once the parties are no longer busy (when the guard drops).
                parties.recheck_inbox = Some((core.clone(), waiting));
            }
            Verdict::Committed { at_ms: Some(at_ms) }
        }
        Ok(CommitOutcome::Conflict(conflict)) => {
            if conflict.kind == ConflictKind::LeaseMismatch
                && let Some(session) = parties.sessions.iter().find(|session| session.id() == &conflict.id)
            {
                session.fence_out();
            }
            Verdict::Conflict(conflict)
        }
        Err(error) if error.may_have_applied() => {
            match core.resolve(&prepared.commit, core.config().save_attempts_max).await {
                Some(true) => {
                    core.counters().add(Counter::Saves, parties.sessions.len() as u64);
                    adopt(&parties, prepared, None);
                    Verdict::Committed { at_ms: None }
                }
                Some(false) => Verdict::NotApplied(error),
                None => {
                    for session in &parties.sessions {
                        session.fence_out();
                    }
                    Verdict::Unknown
                }
            }
        }
        Err(error) => Verdict::NotApplied(error),
    };
    (parties, verdict)
}

/// Runs a transaction. `change` may be called more than once (when a shared document changed
/// under it), so it must be a pure function of what it is given. Also returns the store time
/// the commit applied at, when the store answered it (`None`: a hidden outcome was resolved by
/// reading back, which does not say when).
pub(crate) async fn transact<P: Profile, R>(
    core: &Arc<Core>,
    sessions: &[&Session<P>],
    shared_docs: &[DocId],
    change: impl FnMut(&mut TxContext<P>) -> Result<R, String>,
) -> Result<(R, Option<i64>), TransactError> {
    let parties_max = core.config().transaction_parties_max;
    let count = sessions.len() + shared_docs.len();
    let mut canonical: Vec<Arc<SessionCore<P>>> = sessions.iter().map(|s| s.core().clone()).collect();
    canonical.sort_by(|a, b| a.id().cmp(b.id()));
    let mut doc_ids: Vec<&DocId> = shared_docs.iter().collect();
    doc_ids.sort();
    let distinct = canonical.windows(2).all(|pair| pair[0].id() != pair[1].id())
        && doc_ids.windows(2).all(|pair| pair[0] != pair[1])
        && shared_docs.iter().all(|id| canonical.iter().all(|session| session.id() != id));
    if count == 0 || count > parties_max || !distinct {
        return Err(TransactError::BadParties { count, parties_max });
    }
    if let Some(foreign) = canonical.iter().find(|session| !session.belongs_to(core)) {
        return Err(TransactError::OnAnotherEngine { id: foreign.id().clone(), holder: foreign.holder().clone() });
    }
    let caller_order: Vec<usize> = sessions
        .iter()
        .map(|s| {
            canonical.iter().position(|session| session.id() == s.id()).expect("every party is in the canonical list")
        })
        .collect();
    let parties = Parties::lock(canonical.clone()).await?;
    // The guard sits here between attempts and travels into each commit's task and back.
    let parked: Mutex<Option<Parties<P>>> = Mutex::new(Some(parties));
    // `change` is called synchronously, never across an await; the mutex only lends it out.
    let change = Mutex::new(change);
    let attempts = core.retry("commit a transaction", core.config().save_attempts_max);
    let result = attempts.run(|_| attempt(core, &canonical, &caller_order, shared_docs, &parked, &change)).await;
    match result {
        Ok(done) => done,
        Err(gave_up) => Err(match gave_up.error {
            RetryReason::Store(error) => TransactError::Store(error),
            RetryReason::SharedDocMoved(conflict) => TransactError::Conflict(Box::new(conflict)),
        }),
    }
}

type Done<R> = Result<(R, Option<i64>), TransactError>;

async fn attempt<P: Profile, R>(
    core: &Arc<Core>,
    canonical: &[Arc<SessionCore<P>>],
    caller_order: &[usize],
    shared_docs: &[DocId],
    parked: &Mutex<Option<Parties<P>>>,
    change: &Mutex<impl FnMut(&mut TxContext<P>) -> Result<R, String>>,
) -> Attempt<Done<R>, RetryReason> {
    let documents = if shared_docs.is_empty() {
        Vec::new()
    } else {
        match core.store().get_many(shared_docs).await {
            Ok(documents) => documents,
            Err(error) if error.is_transient() => return Attempt::Retry(RetryReason::Store(error)),
            Err(error) => return Attempt::Done(Err(TransactError::Store(error))),
        }
    };
    let docs: Vec<(DocId, Option<Value>, u64)> = documents.into_iter().map(|d| (d.id, d.value, d.version)).collect();
    let prepared = {
        let mut change = change.lock().unwrap_or_else(PoisonError::into_inner);
        prepare(canonical, caller_order, &docs, &mut *change)
    };
    let (result, prepared) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => return Attempt::Done(Err(error)),
    };
    let parties =
        parked.lock().unwrap_or_else(PoisonError::into_inner).take().expect("the parties are parked between attempts");
    let answered = match core.spawn_answering("transaction commit", commit_in_task(core.clone(), parties, prepared)) {
        Ok(answered) => answered,
        Err(refused) => return Attempt::Done(Err(TransactError::Store(StoreError::unavailable(refused)))),
    };
    let Ok((parties, verdict)) = answered.await else {
        // The task was aborted (a crash, or the end of shutdown): its commit may have applied.
        return Attempt::Done(Err(TransactError::OutcomeUnknown));
    };
    *parked.lock().unwrap_or_else(PoisonError::into_inner) = Some(parties);
    match verdict {
        Verdict::Committed { at_ms } => Attempt::Done(Ok((result, at_ms))),
        Verdict::Conflict(conflict)
            if conflict.kind == ConflictKind::LeaseMismatch && canonical.iter().any(|s| s.id() == &conflict.id) =>
        {
            Attempt::Done(Err(TransactError::FencedOut { id: conflict.id }))
        }
        Verdict::Conflict(conflict)
            if conflict.kind == ConflictKind::VersionMismatch && shared_docs.contains(&conflict.id) =>
        {
            // A shared document moved: re-read and re-run the change.
            Attempt::Retry(RetryReason::SharedDocMoved(conflict))
        }
        Verdict::Conflict(conflict) => Attempt::Done(Err(TransactError::Conflict(Box::new(conflict)))),
        Verdict::NotApplied(StoreError::InvalidInput(error)) => {
            Attempt::Done(Err(TransactError::Store(StoreError::InvalidInput(error))))
        }
        Verdict::NotApplied(error) if error.is_transient() => Attempt::Retry(RetryReason::Store(error)),
        Verdict::NotApplied(error) => Attempt::Fail(RetryReason::Store(error)),
        Verdict::Unknown => Attempt::Done(Err(TransactError::OutcomeUnknown)),
    }
}
