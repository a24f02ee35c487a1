//! The per-key queues and previews of the shared documents an engine has touched: a component
//! of the core, with no I/O (the flush reads and commits, `flush`).
//!
//! Invariants:
//! - A key's queue is `base` (the last value this engine saw stored), `in_flight` (updates a
//!   flush has taken and not settled) and `pending` (waiting for the next flush), in issue
//!   order; the preview is `base` with both applied in that order.
//! - At most one flush per key (`KeyState::flush_turn`); at most `shared_doc_keys_max` keys,
//!   idle ones forgotten to make room; at most `shared_doc_pending_updates_max` pending updates.
//! - A panicking update is a refusal: it must not take down the flush of every other update
//!   queued with it, nor poison the key's queue.
//! - The std mutexes here are never held across an await.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;
use tokio::sync::oneshot;

use crate::store::validate::validate_value;
use crate::store::{DocId, Limits};

use super::types::{PendingUpdate, SharedDocError, UpdateOutcome, UpdateVerdict};

pub(crate) type UpdateFn = Arc<dyn Fn(Option<&Value>) -> UpdateVerdict + Send + Sync>;

/// An update waiting for a flush, and where its outcome goes.
pub(crate) struct Queued {
    update: UpdateFn,
    answer: oneshot::Sender<Result<UpdateOutcome, SharedDocError>>,
}

impl Queued {
    pub fn update(&self) -> &UpdateFn {
        &self.update
    }

    pub fn answer(self, outcome: Result<UpdateOutcome, SharedDocError>) {
        // A caller that stopped waiting does not change what was stored.
        let _ = self.answer.send(outcome);
    }
}

/// What running one update on a state did.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Step {
    Changed,
    Refused(String),
    Invalid(String),
}

#[derive(Default)]
struct KeyQueue {
    base: Option<Value>,
    in_flight: Vec<UpdateFn>,
    pending: VecDeque<Queued>,
    view: Option<Value>,
}

pub(crate) struct KeyState {
    id: DocId,
    /// Set once the first read filled `base`; a failed first read leaves it unset for a retry.
    loaded: tokio::sync::OnceCell<()>,
    queue: Mutex<KeyQueue>,
    /// Held for the whole of a flush: one flush per key at a time keeps the order.
    flushing: tokio::sync::Mutex<()>,
}

impl KeyState {
    fn queue(&self) -> MutexGuard<'_, KeyQueue> {
        // Queue operations only (update functions run under `catch_unwind`): still consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn id(&self) -> &DocId {
        &self.id
    }

    /// Fills `base` once, from `read` (the key's stored value); a failed read is tried again by
    /// the next caller.
    pub async fn load_once(
        &self,
        limits: &Limits,
        read: impl Future<Output = Result<Option<Value>, SharedDocError>>,
    ) -> Result<(), SharedDocError> {
        self.loaded
            .get_or_try_init(|| async {
                let value = read.await?;
                let mut queue = self.queue();
                queue.base = value;
                recompute_view(&mut queue, limits);
                Ok::<(), SharedDocError>(())
            })
            .await
            .map(|_| ())
    }

    /// Queues `update` behind the others and applies it to the preview at once.
    pub fn enqueue(
        &self,
        update: UpdateFn,
        pending_max: usize,
        limits: &Limits,
    ) -> Result<PendingUpdate, SharedDocError> {
        debug_assert!(self.loaded.initialized(), "a key is read once before its first update");
        let (answer, answered) = oneshot::channel();
        let mut queue = self.queue();
        if queue.pending.len() >= pending_max {
            return Err(SharedDocError::TooManyPending { id: self.id.clone(), pending_max });
        }
        let mut view = queue.view.take();
        let local_refusal = match step(&mut view, &update, limits) {
            Step::Changed => None,
            Step::Refused(reason) | Step::Invalid(reason) => Some(reason),
        };
        queue.view = view.clone();
        queue.pending.push_back(Queued { update, answer });
        Ok(PendingUpdate::new(self.id.clone(), view, local_refusal, answered))
    }

    /// Waits for this key's flush turn.
    pub async fn flush_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.flushing.lock().await
    }

    /// Takes every pending update for a flush (they stay in the preview as in flight).
    pub fn take_batch(&self) -> Vec<Queued> {
        let mut queue = self.queue();
        let batch: Vec<Queued> = queue.pending.drain(..).collect();
        queue.in_flight = batch.iter().map(|queued| queued.update.clone()).collect();
        batch
    }

    /// The flush settled (or gave up): `base` becomes what it last read, if it read anything.
    pub fn settle(&self, last_read: Option<Option<Value>>, limits: &Limits) {
        let mut queue = self.queue();
        if let Some(value) = last_read {
            queue.base = value;
        }
        queue.in_flight.clear();
        recompute_view(&mut queue, limits);
    }

    /// The preview, once the key was read.
    pub fn view(&self) -> Option<Option<Value>> {
        self.loaded.initialized().then(|| self.queue().view.clone())
    }

    pub fn pending_count(&self) -> usize {
        self.queue().pending.len()
    }
}

/// The shared documents an engine has touched.
#[derive(Default)]
pub(crate) struct SharedDocsState {
    keys: Mutex<HashMap<DocId, Arc<KeyState>>>,
}

impl std::fmt::Debug for SharedDocsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDocsState").field("keys", &self.keys().len()).finish()
    }
}

impl SharedDocsState {
    fn keys(&self) -> MutexGuard<'_, HashMap<DocId, Arc<KeyState>>> {
        // Map operations only: a poisoned lock is still consistent.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn existing(&self, id: &DocId) -> Option<Arc<KeyState>> {
        self.keys().get(id).cloned()
    }

    /// The key's state, created if new. To make room, forgets idle keys: nobody else holds them
    /// (checked under the map lock, so nobody can start using one) and nothing waits or flies.
    pub fn key(&self, id: &DocId, keys_max: usize) -> Result<Arc<KeyState>, SharedDocError> {
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

    pub fn with_pending(&self) -> Vec<Arc<KeyState>> {
        self.keys().values().filter(|key| !key.queue().pending.is_empty()).cloned().collect()
    }

    /// Drops every waiting update (a crash): their callers learn `Abandoned`.
    #[cfg(feature = "testing")]
    pub fn abandon_all(&self) {
        let keys: Vec<Arc<KeyState>> = self.keys().drain().map(|(_, key)| key).collect();
        for key in keys {
            key.queue().pending.clear();
        }
    }

    /// Keys with updates waiting, for the shutdown report.
    pub fn ids_with_pending(&self) -> Vec<DocId> {
        self.with_pending().iter().map(|key| key.id.clone()).collect()
    }
}

/// Runs one update, a panic counting as a refusal.
fn run(update: &UpdateFn, state: Option<&Value>) -> UpdateVerdict {
    catch_unwind(AssertUnwindSafe(|| update(state)))
        .unwrap_or_else(|_| UpdateVerdict::Refuse("the update function panicked".to_string()))
}

/// Applies one update to a state: a refused or invalid update leaves it as it was.
pub(crate) fn step(state: &mut Option<Value>, update: &UpdateFn, limits: &Limits) -> Step {
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
