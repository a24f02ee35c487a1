//! Flushing lock-free shared documents: read the key, re-run every taken update in issue order on
//! what was read, commit one write on `Condition::Version(read)`; a lost race re-reads and
//! re-runs. See the module docs of `shared_docs` for the invariants this keeps.
//!
//! Invariants (of this file):
//! - A flush of a key runs in the key's flush turn and settles every update it took: each caller
//!   hears `Applied`, `Refused`, `Invalid`, or the batch's error.
//! - A commit whose answer was lost is resolved by reading back, never re-run; when reading back
//!   cannot tell, the callers hear `OutcomeUnknown`.
//! - Read-and-commit attempts go through the engine's retry helper, bounded by
//!   `shared_doc_flush_attempts_max`; read-backs by `shared_doc_resolve_attempts_max`.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use serde_json::Value;

use crate::retry::Attempt;
use crate::store::{Commit, CommitOutcome, Condition, ConflictKind, DocId, Write, get};

use super::super::core::Core;
use super::super::counters::Counter;
use super::super::tasks::TaskSetFull;
use super::queue::{KeyState, Queued, Step, UpdateFn, step};
use super::types::{FlushAllReport, FlushReport, SharedDocError, UpdateOutcome};

/// A batch the store settled: the value and version it left, and what each update did.
struct Settled {
    value: Option<Value>,
    version: u64,
    steps: Vec<Step>,
}

pub(crate) async fn flush_all_keys(core: &Arc<Core>) -> FlushAllReport {
    let keys = core.shared_docs().with_pending();
    let flushes = keys.iter().map(|key| async move { (key.id().clone(), flush_key(core, key).await) });
    let mut report = FlushAllReport::default();
    for (id, result) in futures_util::future::join_all(flushes).await {
        match result {
            Ok(flushed) if flushed.version.is_some() => report.flushed.push((id, flushed)),
            Ok(_nothing_waited) => {}
            Err(error) => report.failed.push((id, error)),
        }
    }
    report
}

pub(crate) async fn flush_key(core: &Arc<Core>, key: &KeyState) -> Result<FlushReport, SharedDocError> {
    let _turn = key.flush_turn().await;
    let batch: Vec<Queued> = key.take_batch();
    if batch.is_empty() {
        return Ok(FlushReport::default());
    }
    // Shares the engine's bound on saves in flight.
    let _slot = core.save_slots().acquire().await.expect("the save-slot semaphore is never closed");
    let updates: Vec<UpdateFn> = batch.iter().map(|queued| queued.update().clone()).collect();
    let last_read: Mutex<Option<Option<Value>>> = Mutex::new(None);
    let result = core
        .retry("flush a shared document", core.config().shared_doc_flush_attempts_max)
        .run(|_| flush_attempt(core, key.id(), &updates, &last_read))
        .await;
    let limits = core.store().limits();
    let settled = match result {
        Ok(Ok(settled)) => settled,
        Ok(Err(error)) => return Err(unsettled(key, batch, error, last_read, limits)),
        Err(gave_up) => {
            let error =
                SharedDocError::NotApplied { id: key.id().clone(), attempts: gave_up.attempts, message: gave_up.error };
            return Err(unsettled(key, batch, error, last_read, limits));
        }
    };
    key.settle(Some(settled.value), limits);
    let mut report = FlushReport { version: Some(settled.version), ..FlushReport::default() };
    for (queued, step) in batch.into_iter().zip(settled.steps) {
        let outcome = match step {
            Step::Changed => {
                report.updates_applied += 1;
                Ok(UpdateOutcome::Applied { version: settled.version })
            }
            Step::Refused(reason) => {
                report.updates_refused += 1;
                Ok(UpdateOutcome::Refused { reason })
            }
            Step::Invalid(reason) => {
                report.updates_invalid += 1;
                Err(SharedDocError::Invalid { id: key.id().clone(), reason })
            }
        };
        queued.answer(outcome);
    }
    Ok(report)
}

/// Tells every caller of the batch that it did not settle, and keeps what was read for the preview.
fn unsettled(
    key: &KeyState,
    batch: Vec<Queued>,
    error: SharedDocError,
    last_read: Mutex<Option<Option<Value>>>,
    limits: &crate::store::Limits,
) -> SharedDocError {
    key.settle(last_read.into_inner().unwrap_or_else(PoisonError::into_inner), limits);
    for queued in batch {
        queued.answer(Err(error.clone()));
    }
    error
}

/// One read, re-run and commit. `Retry`: read failed or another writer got there first.
async fn flush_attempt(
    core: &Arc<Core>,
    id: &DocId,
    updates: &[UpdateFn],
    last_read: &Mutex<Option<Option<Value>>>,
) -> Attempt<Result<Settled, SharedDocError>, String> {
    let limits = core.store().limits();
    let document = match get(&**core.store(), id).await {
        Ok(document) => document,
        Err(error) if error.is_transient() => return Attempt::Retry(error.to_string()),
        Err(error) => return Attempt::Fail(error.to_string()),
    };
    *last_read.lock().unwrap_or_else(PoisonError::into_inner) = Some(document.value.clone());
    let mut state = document.value.clone();
    let steps: Vec<Step> = updates.iter().map(|update| step(&mut state, update, limits)).collect();
    if state == document.value {
        // Nothing to write: every update saw this version and left it as it was.
        return Attempt::Done(Ok(Settled { value: state, version: document.version, steps }));
    }
    let write = match &state {
        Some(value) => Write::put(id.clone(), value.clone()),
        None => Write::delete(id.clone()),
    };
    // Version only, no lease condition: these keys are never held.
    let commit = Commit::single(write.when(Condition::Version(document.version)));
    let trace = commit.trace();
    // A single write on `Version(v)` that applied made version v + 1.
    let next_version = document.version + 1;
    match core.store().commit(commit).await {
        Ok(CommitOutcome::Committed { applied, .. }) => {
            debug_assert_eq!(
                applied.first().map(|applied| applied.version),
                Some(next_version),
                "a write on Version(v) makes version v + 1"
            );
            Attempt::Done(Ok(Settled { value: state, version: next_version, steps }))
        }
        Ok(CommitOutcome::Conflict(conflict)) if conflict.kind == ConflictKind::VersionMismatch => {
            // Another writer got there first: re-read and re-run on its value.
            core.counters().one(Counter::Conflicts);
            Attempt::Retry(conflict.to_string())
        }
        Ok(CommitOutcome::Conflict(conflict)) => Attempt::Fail(conflict.to_string()),
        Err(error) if error.may_have_applied() => {
            match core.resolve(&trace, core.config().shared_doc_resolve_attempts_max).await {
                Some(true) => Attempt::Done(Ok(Settled { value: state, version: next_version, steps })),
                Some(false) => Attempt::Retry(error.to_string()),
                // Never re-run here: the stored value may already hold these updates.
                None => Attempt::Done(Err(SharedDocError::OutcomeUnknown { id: id.clone() })),
            }
        }
        Err(error) if error.is_transient() => Attempt::Retry(error.to_string()),
        Err(error) => Attempt::Fail(error.to_string()),
    }
}

/// Starts the engine's interval flush; it holds only a `Weak` to the core.
pub(crate) fn start(core: &Arc<Core>) -> Result<(), TaskSetFull> {
    core.spawn("shared-document flush", flush_on_interval(Arc::downgrade(core)))
}

async fn flush_on_interval(weak: Weak<Core>) {
    loop {
        let interval_ms = match weak.upgrade() {
            Some(core) => core.config().shared_doc_flush_interval_ms,
            None => return,
        };
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        let Some(core) = weak.upgrade() else { return };
        // Failures were told to each update's caller; the next interval flushes what came after.
        flush_all_keys(&core).await;
    }
}
