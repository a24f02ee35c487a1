//! The fenced, ordered save path of a session (G1, G2, G5).
//!
//! Invariants:
//! - A save runs only in its key's write turn (`write_order`), snapshotting the newest state at
//!   each attempt, so a retry never overtakes a later write and never writes older data.
//! - `save` hands the turn to an engine task, so a caller that stops waiting cannot end the
//!   save midway: the commit's answer is always taken in, and the turn is released after it.
//! - Transient failures are retried by the engine's one retry helper; a hidden outcome is
//!   resolved by reading back before the next attempt counts it as not applied.
//! - A lease conflict fences the session out, except when reading back shows the conflict is our
//!   own earlier success (a final save that already released the key).

use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Map, Value};
use tokio::sync::OwnedMutexGuard;

use crate::retry::Attempt;
use crate::store::{Commit, CommitOutcome, ConflictKind, LeaseOp, StoreError, ValueOp, Write, resolve_unknown_commit};

use super::super::core::Core;
use super::super::counters::Counter;
use super::super::error::SessionError;
use super::super::listener::check_inbox_soon;
use super::{Profile, SaveKind, SaveOutcome, SessionCore, SessionEvent, SessionStatus};

/// Data a save took from memory, and what the store must be told.
struct Snapshot {
    value: Option<Value>,
    revision: u64,
    ack_through: Option<u64>,
    attributes: Option<Map<String, Value>>,
    user_ids: Option<Vec<String>>,
}

/// What one save attempt ended with, when it ended the save.
type SaveResult = Result<SaveOutcome, SessionError>;

impl<P: Profile> SessionCore<P> {
    fn snapshot(&self, kind: SaveKind) -> Result<Option<Snapshot>, SessionError> {
        let state = self.lock();
        // The stored status: a save while the lease is lapsed still runs; its fence decides.
        match (&state.status, kind) {
            (SessionStatus::Active, _) | (SessionStatus::Closing, SaveKind::Final) => {}
            (SessionStatus::Errored { .. }, _) => return Err(SessionError::Errored),
            (SessionStatus::FencedOut, _) => return Err(SessionError::FencedOut),
            (SessionStatus::HandedOff, _) => return Err(SessionError::HandedOff),
            (SessionStatus::Closing | SessionStatus::Ended | SessionStatus::LeaseLapsed, _) => {
                debug_assert_ne!(state.status, SessionStatus::LeaseLapsed, "LeaseLapsed is reported, never stored");
                return Err(SessionError::Ended);
            }
        }
        if !state.is_dirty() && kind != SaveKind::Final {
            return Ok(None);
        }
        let value = if state.revision > state.durable_revision {
            Some(self.kind.schema.encode(&state.profile, &state.meta)?)
        } else {
            None
        };
        let metadata_changed = state.metadata_revision > state.durable_revision;
        Ok(Some(Snapshot {
            value,
            revision: state.revision,
            ack_through: (state.inbox_applied_through > state.inbox_durable_through)
                .then_some(state.inbox_applied_through),
            attributes: metadata_changed.then(|| state.attributes.clone()),
            user_ids: metadata_changed.then(|| state.user_ids.clone()),
        }))
    }

    /// The write that saves `snapshot`. Takes the encoded value out of it (a profile is
    /// kilobytes of JSON; a snapshot is made per attempt, so it is not needed again).
    fn write_for(&self, snapshot: &mut Snapshot, kind: SaveKind) -> Write {
        let mut write = Write::new(self.id.clone()).when(self.fence());
        if let Some(value) = snapshot.value.take() {
            write = write.value(ValueOp::Put(value));
        }
        if let Some(through) = snapshot.ack_through {
            write = write.ack_inbox_through(through);
        }
        if let Some(attributes) = &snapshot.attributes {
            write = write.attributes(attributes.clone());
        }
        if let Some(user_ids) = &snapshot.user_ids {
            write = write.user_ids(user_ids.clone());
        }
        if kind == SaveKind::Final {
            write = write.lease(LeaseOp::Release);
        }
        write
    }

    /// Records a durable save. Returns whether messages wait in the inbox beyond what was applied.
    fn on_durable(
        &self,
        snapshot: &Snapshot,
        kind: SaveKind,
        inbox_last_waiting_seq: Option<u64>,
        vouched: Option<u64>,
    ) -> bool {
        let mut state = self.lock();
        debug_assert!(snapshot.revision <= state.revision, "a save never claims a revision memory has not reached");
        state.durable_revision = state.durable_revision.max(snapshot.revision);
        if let Some(through) = snapshot.ack_through {
            state.inbox_durable_through = state.inbox_durable_through.max(through);
        }
        if kind == SaveKind::Final && state.status == SessionStatus::Closing {
            state.status = SessionStatus::Ended;
        }
        if let Some(generation) = vouched {
            // A fenced write that applied after the renewal of this generation, while the lease
            // was within its deadline: the key is still ours.
            state.lease_generation = state.lease_generation.max(generation);
        }
        let messages_waiting = inbox_last_waiting_seq.is_some_and(|seq| seq > state.inbox_applied_through);
        drop(state);
        self.emit(SessionEvent::Saved { revision: snapshot.revision });
        messages_waiting
    }

    /// Saves the newest state, in order with every other write of the key. Waits for the key's
    /// turn here; the save itself runs in an engine task that owns the turn.
    pub(crate) async fn save(self: &Arc<Self>, kind: SaveKind) -> SaveResult {
        let core = self.engine.upgrade().ok_or(SessionError::Ended)?;
        let turn = self.write_order.clone().lock_owned().await;
        let session = self.clone();
        let answered = core
            .spawn_answering("save", async move { session.save_in_turn(turn, kind).await })
            .map_err(|refused| SessionError::Store { message: refused.to_string() })?;
        // The sender is gone only when the task was aborted (a crash, or the end of shutdown).
        answered.await.unwrap_or(Err(SessionError::Ended))
    }

    /// Waits for the key's write turn (for callers already in an engine task).
    pub(crate) async fn write_turn(&self) -> OwnedMutexGuard<()> {
        self.write_order.clone().lock_owned().await
    }

    /// Saves while holding the key's write turn.
    pub(crate) async fn save_in_turn(self: &Arc<Self>, turn: OwnedMutexGuard<()>, kind: SaveKind) -> SaveResult {
        let core = self.engine.upgrade().ok_or(SessionError::Ended)?;
        // The commit of an earlier attempt whose outcome stayed hidden, for a later conflict.
        let last_unknown: Mutex<Option<Commit>> = Mutex::new(None);
        let attempts = core.retry("save a session", core.config().save_attempts_max);
        let result = attempts.run(|attempt| self.save_attempt(&core, kind, attempt, &last_unknown)).await;
        drop(turn);
        match result {
            Ok(result) => result,
            Err(gave_up) => {
                let message = gave_up.error;
                self.emit(SessionEvent::SaveFailed { message: message.clone() });
                Err(SessionError::SaveFailed { attempts: gave_up.attempts, message })
            }
        }
    }

    async fn save_attempt(
        self: &Arc<Self>,
        core: &Arc<Core>,
        kind: SaveKind,
        attempt: u32,
        last_unknown: &Mutex<Option<Commit>>,
    ) -> Attempt<SaveResult, String> {
        let mut snapshot = match self.snapshot(kind) {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return Attempt::Done(Ok(SaveOutcome::Clean)),
            Err(error) => return Attempt::Done(Err(error)),
        };
        let writes_value = snapshot.value.is_some();
        let commit = Commit::single(self.write_for(&mut snapshot, kind));
        // What a hidden outcome is resolved with: the commit without its value.
        let trace = commit.trace();
        let generation = self.lease.generation();
        let saved = Ok(SaveOutcome::Saved { revision: snapshot.revision });
        match core.store().commit(commit).await {
            Ok(CommitOutcome::Committed { applied, .. }) => {
                let waiting = applied.first().map(|applied| applied.inbox_last_waiting_seq);
                core.counters().one(Counter::Saves);
                if self.on_durable(&snapshot, kind, waiting, self.generation_vouched(generation)) {
                    check_inbox_soon(core, &self.id);
                }
                Attempt::Done(saved)
            }
            Ok(CommitOutcome::Conflict(conflict)) if conflict.kind == ConflictKind::LeaseMismatch => {
                // A retry after a hidden outcome can meet its own earlier success (a final save
                // that already released the key): read back before giving up the key.
                let unknown = last_unknown.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(unknown) = unknown
                    && matches!(resolve_unknown_commit(&**core.store(), &unknown).await, Ok(Some(true)))
                {
                    self.on_durable(&snapshot, kind, None, None);
                    return Attempt::Done(saved);
                }
                // A final save with nothing to write only releases: if the key is released at
                // our epoch (by our own earlier attempt, or by an operator), nothing is lost.
                let released_at_our_epoch =
                    conflict.found.lease.holder.is_none() && conflict.found.lease.epoch == self.epoch;
                if kind == SaveKind::Final && !writes_value && released_at_our_epoch {
                    self.on_durable(&snapshot, kind, None, None);
                    return Attempt::Done(saved);
                }
                core.counters().one(Counter::Conflicts);
                self.fence_out();
                Attempt::Done(Err(SessionError::FencedOut))
            }
            Ok(CommitOutcome::Conflict(conflict)) => {
                let message = format!("the store refused the save: {conflict}");
                self.emit(SessionEvent::SaveFailed { message: message.clone() });
                Attempt::Done(Err(SessionError::SaveFailed { attempts: attempt + 1, message }))
            }
            Err(StoreError::InvalidInput(error)) => {
                let message = error.to_string();
                self.emit(SessionEvent::SaveFailed { message: message.clone() });
                Attempt::Done(Err(SessionError::Invalid { reason: message }))
            }
            Err(error) if error.may_have_applied() => match resolve_unknown_commit(&**core.store(), &trace).await {
                Ok(Some(true)) => {
                    core.counters().one(Counter::Saves);
                    self.on_durable(&snapshot, kind, None, None);
                    check_inbox_soon(core, &self.id);
                    Attempt::Done(saved)
                }
                Ok(Some(false)) => Attempt::Retry(error.to_string()),
                Ok(None) | Err(_) => {
                    *last_unknown.lock().unwrap_or_else(PoisonError::into_inner) = Some(trace);
                    Attempt::Retry(error.to_string())
                }
            },
            Err(error) if error.is_transient() => Attempt::Retry(error.to_string()),
            // Corrupt data or a closed store: another attempt would meet the same.
            Err(error) => Attempt::Fail(error.to_string()),
        }
    }
}
