//! The engine's core: what one engine process incarnation is (its store, configuration, holder
//! id) and the components every part of the engine works through, each behind a narrow
//! interface: the registry of sessions, the lease clock, the task set, the release outbox, the
//! inbox checks, the shared documents' queues, the counters.
//!
//! Invariants:
//! - Arrows run one way: the engine's modules (start, session, transaction, trade, receipt,
//!   inbox, shared docs, renewal, listener) use the core; the core uses only components, which
//!   know neither the core nor the modules. Nothing inside the engine uses the `Engine` facade.
//! - Every field is private; every change goes through a component's methods.
//! - Every spawn goes through the task set, every retried store call through `retry`, and every
//!   give-up is counted here and logged by the caller.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, Semaphore};

use crate::retry::{Attempt, Jitter, Retry};
use crate::store::{Commit, DocId, Document, HolderId, SharedStore, StoreError, get, resolve_unknown_commit};

use super::announce::{ReleasedOutbox, send_queued};
use super::config::EngineConfig;
use super::counters::{Counter, Counters, EngineCounters};
use super::inbox_checks::InboxChecks;
use super::lease::LeaseClock;
use super::registry::Registry;
use super::shared_docs::queue::SharedDocsState;
use super::tasks::{TaskSet, TaskSetFull};

pub(crate) struct Core {
    store: SharedStore,
    config: EngineConfig,
    holder: HolderId,
    counters: Counters,
    jitter: Jitter,
    lease: Arc<LeaseClock>,
    registry: Registry,
    tasks: TaskSet,
    /// Woken when this engine releases any key, so its own waiting starts retry at once.
    local_releases: Notify,
    released_outbox: Arc<ReleasedOutbox>,
    inbox_checks: InboxChecks,
    shared_docs: SharedDocsState,
    /// Bounds the saves in flight at once (autosave, shutdown, flushes).
    save_slots: Semaphore,
    /// Numbers the inbox messages this engine sends (with the holder id, a unique message id).
    messages_sent: AtomicU64,
    /// Prunes the store's history while the engine lives (`store::pruner`; stopped on drop).
    _history_pruner: crate::store::pruner::HistoryPruner,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("holder", &self.holder).field("store", &self.store.backend_name()).finish()
    }
}

impl Core {
    pub fn new(store: SharedStore, config: EngineConfig, holder: HolderId, seed: u64, lease: LeaseClock) -> Core {
        Core {
            registry: Registry::new(config.sessions_max),
            tasks: TaskSet::for_sessions(config.sessions_max),
            inbox_checks: InboxChecks::new(config.inbox_checks_in_flight_max),
            save_slots: Semaphore::new(config.concurrent_saves_max),
            counters: Counters::default(),
            jitter: Jitter::seeded(seed),
            lease: Arc::new(lease),
            local_releases: Notify::new(),
            released_outbox: Arc::new(ReleasedOutbox::default()),
            shared_docs: SharedDocsState::default(),
            messages_sent: AtomicU64::new(0),
            _history_pruner: crate::store::pruner::HistoryPruner::start(store.clone(), config.history_pruning.clone()),
            store,
            config,
            holder,
        }
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn holder(&self) -> &HolderId {
        &self.holder
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn lease(&self) -> &Arc<LeaseClock> {
        &self.lease
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn inbox_checks(&self) -> &InboxChecks {
        &self.inbox_checks
    }

    pub fn shared_docs(&self) -> &SharedDocsState {
        &self.shared_docs
    }

    pub fn save_slots(&self) -> &Semaphore {
        &self.save_slots
    }

    pub fn local_releases(&self) -> &Notify {
        &self.local_releases
    }

    /// A number no other message of this engine incarnation has.
    pub fn next_message_number(&self) -> u64 {
        self.messages_sent.fetch_add(1, Ordering::Relaxed)
    }

    /// A retry loop with the engine's backoff and jitter, counted in the engine's counters.
    pub fn retry(&self, operation: &'static str, attempts_max: u32) -> Retry<'_> {
        Retry::new(operation, attempts_max, self.config.backoff(), &self.jitter).counted(self.counters.retry())
    }

    /// Reads one key, retrying transient failures (at most `load_attempts_max` attempts).
    pub async fn read(&self, id: &DocId) -> Result<Document, StoreError> {
        self.retry("read a key", self.config.load_attempts_max)
            .run(|_| async { Attempt::from_store(get(&*self.store, id).await) })
            .await
            .map_err(|gave_up| gave_up.into_error())
    }

    /// Reads back whether a commit whose answer was lost applied (retrying the reads, at most
    /// `attempts_max` attempts). `None`: still unknown (or the commit leaves no trace).
    pub async fn resolve(&self, commit: &Commit, attempts_max: u32) -> Option<bool> {
        self.retry("read back a commit whose answer was lost", attempts_max)
            .run(|_| async { Attempt::from_store(resolve_unknown_commit(&*self.store, commit).await) })
            .await
            .unwrap_or(None)
    }

    /// Starts a background task; a refusal is counted and logged here, and returned.
    pub fn spawn(
        &self,
        what: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), TaskSetFull> {
        self.tasks.spawn(what, task).inspect_err(|refused| self.task_refused(refused))
    }

    /// Starts a task whose answer the caller awaits; it runs to its end if the caller stops waiting.
    pub fn spawn_answering<T: Send + 'static>(
        &self,
        what: &'static str,
        task: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<T>, TaskSetFull> {
        self.tasks.spawn_answering(what, task).inspect_err(|refused| self.task_refused(refused))
    }

    fn task_refused(&self, refused: &TaskSetFull) {
        self.counters.one(Counter::TasksRefused);
        tracing::error!(%refused, "engine task not started");
    }

    /// Stops every background task (the end of shutdown, or a crash).
    pub fn abort_tasks(&self) {
        self.tasks.abort_all();
    }

    /// Tells this engine's waiting starts at once, and every process soon, that `id` is free.
    pub fn announce_released(&self, id: &DocId) {
        self.local_releases.notify_waiters();
        if self.released_outbox.queue(id) {
            let sending = send_queued(self.released_outbox.clone(), self.store.clone());
            if self.spawn("release announcer", sending).is_err() {
                // Acquirers elsewhere find the key free at their next poll.
                self.released_outbox.sender_not_started();
            }
        }
    }

    /// Something gave up without the retry helper (a best-effort call failed): logged and counted.
    pub fn gave_up(&self, operation: &'static str, id: &DocId, error: &dyn std::fmt::Display) {
        self.counters.gave_up();
        tracing::warn!(operation, %id, %error, "gave up");
    }

    pub fn counters_snapshot(&self) -> EngineCounters {
        let mut snapshot = self.counters.snapshot(self.registry.live_count() as u64, self.tasks.panicked());
        snapshot.gave_up += self.released_outbox.not_announced();
        snapshot
    }
}
