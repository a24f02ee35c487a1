//! Lock-free shared documents: keys no server holds (guild banks, auction houses, global counters),
//! changed by pure update functions from any number of engines (the seed's `UpdateAsync` queue).
//!
//! Invariants:
//! - No lost update: a flush re-runs every queued update of a key, in issue order, on the value it
//!   just read, and commits one write on `Condition::Version(read)`. A lost race re-reads and
//!   re-runs; nothing is ever written over a value the functions did not see.
//! - Order (G5): at most one flush per key is in flight on an engine (a per-key async mutex), and
//!   updates issued during a flush wait for the next one, behind those already taken.
//! - No update applies twice: a flush whose answer was lost is resolved by reading back
//!   (`resolve_unknown_commit`); its functions are never re-run on a state that may already hold
//!   their effect. When reading back cannot tell, the callers are told the outcome is unknown.
//! - The local view is a preview, never written: the last value this engine saw stored, with the
//!   updates still waiting applied in order. Only a flush decides what an update did.
//! - Every queue, cache and retry has a named bound in `EngineConfig` (`shared_doc_*`, G8).

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use tokio::sync::oneshot;

use crate::store::validate::{validate_doc_id, validate_value};
use crate::store::{Commit, CommitOutcome, Condition, ConflictKind, DocId, Limits, Write, get, resolve_unknown_commit};

use super::engine::EngineShared;

/// What an update function decides for the value it is given (`None`: the key holds no value).
#[derive(Clone, Debug, PartialEq)]
pub enum UpdateVerdict {
    /// Store this value.
    Write(Value),
    /// Delete the value.
    Delete,
    /// Change nothing, for this reason (like returning nil from Roblox's `UpdateAsync`); the
    /// other updates of the flush still apply.
    Refuse(String),
}

/// What a flush did with one update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateOutcome {
    /// The update's effect is durable in this version (or, when it changed nothing, the key was
    /// at this version when it ran).
    Applied { version: u64 },
    /// The update refused the value it was given at the flush; it changed nothing.
    Refused { reason: String },
}

/// Why an update or a flush did not give an outcome.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SharedDocError {
    #[error(
        "{id} already has {pending_max} updates waiting for a flush (shared_doc_pending_updates_max); flush it, wait for the next flush, or raise the limit"
    )]
    TooManyPending { id: DocId, pending_max: usize },
    #[error(
        "this engine already caches {keys_max} shared documents, all with updates waiting (shared_doc_keys_max); flush them or raise the limit"
    )]
    TooManyKeys { keys_max: usize },
    #[error("the engine is shutting down and takes no new shared-document updates")]
    ShuttingDown,
    #[error("the update of {id} is invalid and changed nothing: {reason}")]
    Invalid { id: DocId, reason: String },
    #[error("reading {id} failed: {message}")]
    Read { id: DocId, message: String },
    #[error(
        "the flush of {id} was not applied after {attempts} attempts: {message}; nothing of these updates was stored, issue them again"
    )]
    NotApplied { id: DocId, attempts: u32, message: String },
    #[error(
        "the store lost the answer to the flush of {id} and reading back could not tell whether it applied: the updates may or may not be stored; read the key before issuing them again"
    )]
    OutcomeUnknown { id: DocId },
    #[error(
        "the engine stopped (crash or drop) before the flush of {id} answered: the update may or may not be stored; read the key before issuing it again"
    )]
    Abandoned { id: DocId },
}

/// What one flush of one key did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushReport {
    pub updates_applied: usize,
    pub updates_refused: usize,
    /// Updates whose new value broke a store limit; each caller got `SharedDocError::Invalid`.
    pub updates_invalid: usize,
    /// The key's version after the flush; `None` when nothing was waiting (no store access).
    pub version: Option<u64>,
}

/// What `flush_all` did, key by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushAllReport {
    /// Keys that had updates waiting and were flushed.
    pub flushed: Vec<(DocId, FlushReport)>,
    pub failed: Vec<(DocId, SharedDocError)>,
}

/// An issued update: its local preview now, its durable outcome after the next flush.
#[derive(Debug)]
pub struct PendingUpdate {
    id: DocId,
    local_view: Option<Value>,
    local_refusal: Option<String>,
    answered: oneshot::Receiver<Result<UpdateOutcome, SharedDocError>>,
}

impl PendingUpdate {
    pub fn id(&self) -> &DocId {
        &self.id
    }

    /// This engine's view of the key right after the update: the last value it saw stored with
    /// every waiting update, this one included, applied in order. A preview, not a promise.
    pub fn local_view(&self) -> Option<Value> {
        self.local_view.clone()
    }

    /// Why the update refused the local view, if it did. The flush runs it again on the stored
    /// value, which may differ, so only `durable` tells what it did.
    pub fn local_refusal(&self) -> Option<&str> {
        self.local_refusal.as_deref()
    }

    /// Waits for the flush that takes this update (the interval flush, or `flush`/`flush_all`).
    pub async fn durable(self) -> Result<UpdateOutcome, SharedDocError> {
        let id = self.id;
        self.answered.await.unwrap_or(Err(SharedDocError::Abandoned { id }))
    }
}

type UpdateFn = Arc<dyn Fn(Option<&Value>) -> UpdateVerdict + Send + Sync>;

struct Queued {
    update: UpdateFn,
    answer: oneshot::Sender<Result<UpdateOutcome, SharedDocError>>,
}

/// What running one update on a state did.
#[derive(Clone, Debug, PartialEq)]
enum Step {
    Changed,
    Refused(String),
    Invalid(String),
}

/// One key's queue and cache, under a std mutex that is never held across an await.
#[derive(Default)]
struct KeyQueue {
    /// The last value this engine saw stored.
    base: Option<Value>,
    /// Updates a flush has taken and not settled, in order.
    in_flight: Vec<UpdateFn>,
    /// Updates waiting for the next flush, in issue order.
    pending: VecDeque<Queued>,
    /// `base` with `in_flight`, then `pending`, applied.
    view: Option<Value>,
}

struct KeyState {
    id: DocId,
    /// Set once the first read filled `base`; a failed first read leaves it unset for a retry.
    loaded: tokio::sync::OnceCell<()>,
    queue: Mutex<KeyQueue>,
    /// Held for the whole of a flush: one flush per key at a time keeps the order.
    flushing: tokio::sync::Mutex<()>,
}

impl KeyState {
    fn queue(&self) -> MutexGuard<'_, KeyQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The shared documents an engine has touched. Lives in `EngineShared`.
#[derive(Default)]
pub(crate) struct SharedDocsState {
    keys: Mutex<HashMap<DocId, Arc<KeyState>>>,
}

impl SharedDocsState {
    fn keys(&self) -> MutexGuard<'_, HashMap<DocId, Arc<KeyState>>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn existing(&self, id: &DocId) -> Option<Arc<KeyState>> {
        self.keys().get(id).cloned()
    }

    /// The key's state, created if new. To make room, forgets idle keys: nobody else holds them
    /// (checked under the map lock, so nobody can start using one) and nothing waits or flies.
    fn key(&self, id: &DocId, keys_max: usize) -> Result<Arc<KeyState>, SharedDocError> {
        let mut keys = self.keys();
        if let Some(key) = keys.get(id) {
            return Ok(key.clone());
        }
        if keys.len() >= keys_max {
            keys.retain(|_, key| {
                let queue = key.queue();
                Arc::strong_count(key) > 1 || !queue.pending.is_empty() || !queue.in_flight.is_empty()
            });
        }
        if keys.len() >= keys_max {
            return Err(SharedDocError::TooManyKeys { keys_max });
        }
        let key = Arc::new(KeyState {
            id: id.clone(),
            loaded: tokio::sync::OnceCell::new(),
            queue: Mutex::new(KeyQueue::default()),
            flushing: tokio::sync::Mutex::new(()),
        });
        keys.insert(id.clone(), key.clone());
        Ok(key)
    }

    fn with_pending(&self) -> Vec<Arc<KeyState>> {
        self.keys().values().filter(|key| !key.queue().pending.is_empty()).cloned().collect()
    }

    /// Drops every waiting update (a crash): their callers learn `Abandoned`.
    pub fn abandon_all(&self) {
        let keys: Vec<Arc<KeyState>> = self.keys().drain().map(|(_, key)| key).collect();
        for key in keys {
            let mut queue = key.queue();
            queue.pending.clear();
        }
    }

    /// Keys with updates waiting, for the shutdown report.
    pub fn ids_with_pending(&self) -> Vec<DocId> {
        self.with_pending().iter().map(|key| key.id.clone()).collect()
    }
}

/// Runs one update. A panicking update is a refusal: it must not take down the flush of every
/// other update queued with it, nor poison the key's queue.
fn run(update: &UpdateFn, state: Option<&Value>) -> UpdateVerdict {
    catch_unwind(AssertUnwindSafe(|| update(state)))
        .unwrap_or_else(|_| UpdateVerdict::Refuse("the update function panicked".to_string()))
}

/// Applies one update to a state: a refused or invalid update leaves it as it was.
fn step(state: &mut Option<Value>, update: &UpdateFn, limits: &Limits) -> Step {
    match run(update, state.as_ref()) {
        UpdateVerdict::Write(value) => match validate_value(&value, limits) {
            Ok(()) => {
                *state = Some(value);
                Step::Changed
            }
            Err(error) => Step::Invalid(error.to_string()),
        },
        UpdateVerdict::Delete => {
            *state = None;
            Step::Changed
        }
        UpdateVerdict::Refuse(reason) => Step::Refused(reason),
    }
}

/// Recomputes the preview from the last stored value and everything not yet settled.
fn recompute_view(queue: &mut KeyQueue, limits: &Limits) {
    let mut view = queue.base.clone();
    for update in queue.in_flight.iter().chain(queue.pending.iter().map(|queued| &queued.update)) {
        step(&mut view, update, limits);
    }
    queue.view = view;
}

/// The handle of an engine's lock-free shared documents. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SharedDocs {
    pub(crate) shared: Arc<EngineShared>,
}

impl SharedDocs {
    /// Queues a pure update of a key no server holds, applies it to this engine's view at once,
    /// and returns its preview. The first use of a key reads it once. The update runs again, on
    /// the latest stored value, at the next flush: it must give the same answer for the same
    /// value (no randomness, no clock, no side effects).
    pub async fn update<F>(&self, id: &DocId, update: F) -> Result<PendingUpdate, SharedDocError>
    where
        F: Fn(Option<&Value>) -> UpdateVerdict + Send + Sync + 'static,
    {
        let shared = &self.shared;
        if !shared.accepting.load(Ordering::SeqCst) {
            return Err(SharedDocError::ShuttingDown);
        }
        let limits = shared.store.limits();
        validate_doc_id(id, limits)
            .map_err(|error| SharedDocError::Invalid { id: id.clone(), reason: error.to_string() })?;
        let key = shared.shared_docs.key(id, shared.config.shared_doc_keys_max)?;
        key.loaded
            .get_or_try_init(|| async {
                let document = get(&*shared.store, id)
                    .await
                    .map_err(|error| SharedDocError::Read { id: id.clone(), message: error.to_string() })?;
                let mut queue = key.queue();
                queue.base = document.value;
                recompute_view(&mut queue, limits);
                Ok::<(), SharedDocError>(())
            })
            .await?;
        let update: UpdateFn = Arc::new(update);
        let (answer, answered) = oneshot::channel();
        let mut queue = key.queue();
        let pending_max = shared.config.shared_doc_pending_updates_max;
        if queue.pending.len() >= pending_max {
            return Err(SharedDocError::TooManyPending { id: id.clone(), pending_max });
        }
        let mut view = queue.view.take();
        let local_refusal = match step(&mut view, &update, limits) {
            Step::Changed => None,
            Step::Refused(reason) | Step::Invalid(reason) => Some(reason),
        };
        queue.view = view.clone();
        queue.pending.push_back(Queued { update, answer });
        Ok(PendingUpdate { id: id.clone(), local_view: view, local_refusal, answered })
    }

    /// Flushes the key's waiting updates and returns once they are settled (after any flush
    /// already in flight for the key). `Err` when the whole batch failed; each caller was told.
    pub async fn flush(&self, id: &DocId) -> Result<FlushReport, SharedDocError> {
        match self.shared.shared_docs.existing(id) {
            Some(key) => flush_key(&self.shared, &key).await,
            None => Ok(FlushReport::default()),
        }
    }

    /// Flushes every key with updates waiting, concurrently (bounded by `concurrent_saves_max`).
    pub async fn flush_all(&self) -> FlushAllReport {
        flush_all_keys(&self.shared).await
    }

    /// Reads the key's stored value (not this engine's view).
    pub async fn read(&self, id: &DocId) -> Result<Option<Value>, SharedDocError> {
        let document = get(&*self.shared.store, id)
            .await
            .map_err(|error| SharedDocError::Read { id: id.clone(), message: error.to_string() })?;
        Ok(document.value)
    }

    /// This engine's current view of the key (`None`: the key is not cached here).
    pub fn local_view(&self, id: &DocId) -> Option<Option<Value>> {
        let key = self.shared.shared_docs.existing(id)?;
        key.loaded.initialized().then(|| key.queue().view.clone())
    }

    /// How many updates of the key wait for a flush on this engine.
    pub fn pending_updates(&self, id: &DocId) -> usize {
        self.shared.shared_docs.existing(id).map_or(0, |key| key.queue().pending.len())
    }
}

pub(crate) async fn flush_all_keys(shared: &Arc<EngineShared>) -> FlushAllReport {
    let keys = shared.shared_docs.with_pending();
    let flushes = keys.iter().map(|key| async move { (key.id.clone(), flush_key(shared, key).await) });
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

/// A batch the store settled: the value and version it left, and what each update did.
struct Settled {
    value: Option<Value>,
    version: u64,
    steps: Vec<Step>,
}

/// A batch that did not settle, with the last value read (for the preview).
struct Unsettled {
    error: SharedDocError,
    last_read: Option<Option<Value>>,
}

async fn flush_key(shared: &Arc<EngineShared>, key: &KeyState) -> Result<FlushReport, SharedDocError> {
    let _flushing = key.flushing.lock().await;
    let batch: Vec<Queued> = {
        let mut queue = key.queue();
        let batch: Vec<Queued> = queue.pending.drain(..).collect();
        queue.in_flight = batch.iter().map(|queued| queued.update.clone()).collect();
        batch
    };
    if batch.is_empty() {
        return Ok(FlushReport::default());
    }
    // Shares the engine's bound on saves in flight; the semaphore is never closed.
    let _permit = shared.save_slots.acquire().await.ok();
    let updates: Vec<UpdateFn> = batch.iter().map(|queued| queued.update.clone()).collect();
    let result = commit_batch(shared, &key.id, &updates).await;
    let limits = shared.store.limits();
    match result {
        Ok(settled) => {
            {
                let mut queue = key.queue();
                queue.base = settled.value;
                queue.in_flight.clear();
                recompute_view(&mut queue, limits);
            }
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
                        Err(SharedDocError::Invalid { id: key.id.clone(), reason })
                    }
                };
                // A caller that stopped waiting does not change what was stored.
                let _ = queued.answer.send(outcome);
            }
            Ok(report)
        }
        Err(unsettled) => {
            {
                let mut queue = key.queue();
                if let Some(value) = unsettled.last_read {
                    queue.base = value;
                }
                queue.in_flight.clear();
                recompute_view(&mut queue, limits);
            }
            for queued in batch {
                let _ = queued.answer.send(Err(unsettled.error.clone()));
            }
            Err(unsettled.error)
        }
    }
}

/// Reads, re-runs every update in order, and commits one write on the version read, until the
/// store settles it or `shared_doc_flush_attempts_max` attempts are spent.
async fn commit_batch(shared: &Arc<EngineShared>, id: &DocId, updates: &[UpdateFn]) -> Result<Settled, Unsettled> {
    let limits = shared.store.limits();
    let attempts_max = shared.config.shared_doc_flush_attempts_max;
    let mut last_read = None;
    let mut last_problem = String::from("not tried");
    let not_applied = |attempts: u32, message: String, last_read| Unsettled {
        error: SharedDocError::NotApplied { id: id.clone(), attempts, message },
        last_read,
    };
    for attempt in 0..attempts_max {
        if attempt > 0 {
            shared.counters.retries.fetch_add(1, Ordering::Relaxed);
            shared.sleep_backoff(attempt - 1).await;
        }
        let document = match get(&*shared.store, id).await {
            Ok(document) => document,
            Err(error) if error.is_transient() => {
                last_problem = error.to_string();
                continue;
            }
            Err(error) => return Err(not_applied(attempt + 1, error.to_string(), last_read)),
        };
        last_read = Some(document.value.clone());
        let mut state = document.value.clone();
        let steps: Vec<Step> = updates.iter().map(|update| step(&mut state, update, limits)).collect();
        if state == document.value {
            // Nothing to write: every update saw this version and left it as it was.
            return Ok(Settled { value: state, version: document.version, steps });
        }
        let write = match &state {
            Some(value) => Write::put(id.clone(), value.clone()),
            None => Write::delete(id.clone()),
        };
        // Version only, no lease condition: these keys are never held.
        let commit = Commit::single(write.when(Condition::Version(document.version)));
        match shared.store.commit(commit.clone()).await {
            Ok(CommitOutcome::Committed { applied, .. }) => {
                let version = applied.first().map_or(document.version + 1, |applied| applied.version);
                return Ok(Settled { value: state, version, steps });
            }
            Ok(CommitOutcome::Conflict(conflict)) if conflict.kind == ConflictKind::VersionMismatch => {
                // Another writer got there first: re-read and re-run on its value.
                shared.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                last_problem = conflict.to_string();
            }
            Ok(CommitOutcome::Conflict(conflict)) => {
                return Err(not_applied(attempt + 1, conflict.to_string(), last_read));
            }
            Err(error) if error.may_have_applied() => match resolve(shared, &commit).await {
                // A single write on `Version(v)` that applied made version v + 1.
                Some(true) => return Ok(Settled { value: state, version: document.version + 1, steps }),
                Some(false) => last_problem = error.to_string(),
                // Never re-run here: the stored value may already hold these updates.
                None => return Err(Unsettled { error: SharedDocError::OutcomeUnknown { id: id.clone() }, last_read }),
            },
            Err(error) if error.is_transient() => last_problem = error.to_string(),
            Err(error) => return Err(not_applied(attempt + 1, error.to_string(), last_read)),
        }
    }
    Err(not_applied(attempts_max, last_problem, last_read))
}

/// Reads back whether a commit with a lost answer applied, up to `shared_doc_resolve_attempts_max`
/// times. `None`: still unknown.
async fn resolve(shared: &Arc<EngineShared>, commit: &Commit) -> Option<bool> {
    for attempt in 0..shared.config.shared_doc_resolve_attempts_max {
        if attempt > 0 {
            shared.sleep_backoff(attempt - 1).await;
        }
        if let Ok(Some(applied)) = resolve_unknown_commit(&*shared.store, commit).await {
            return Some(applied);
        }
    }
    None
}

/// Starts the engine's interval flush. It holds only a `Weak` to the engine and is tracked, so
/// dropping the engine, shutdown or a crash stops it.
pub(crate) fn start(shared: &Arc<EngineShared>) {
    let task = tokio::spawn(flush_on_interval(Arc::downgrade(shared)));
    shared.track(task);
}

async fn flush_on_interval(weak: Weak<EngineShared>) {
    loop {
        let interval_ms = match weak.upgrade() {
            Some(shared) => shared.config.shared_doc_flush_interval_ms,
            None => return,
        };
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        let Some(shared) = weak.upgrade() else { return };
        // Failures were told to each update's caller; the next interval flushes what came after.
        let _ = flush_all_keys(&shared).await;
    }
}
