//! The engine: opens sessions on a store and keeps them durable, exclusive and answerable.
//!
//! Invariants:
//! - One engine process incarnation is one holder; its process lease is renewed by one write per
//!   `lease_renew_interval_ms`, whatever the number of sessions (ARCHITECTURE.md, "Leases").
//! - At most one session per key per engine: a second `start_session` for a key that is loading,
//!   live or closing waits for that one and gets the same session (never a second one that
//!   silently never saves, Lapis #48; never a load before the previous final save, Nevermore).
//! - The engine reads no wall clock: time comes from tokio (tests and the simulator pause it)
//!   and lease expiry from the store's clock.
//! - Background tasks hold only weak references: dropping the engine stops them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::store::{DocId, HolderId, Key, SharedStore, StoreError};

use super::config::EngineConfig;
use super::error::{SessionError, StartError};
use super::session::{LiveSession, Profile, ProfileKind, Session};
use super::shared_docs::SharedDocs;

/// Notification topics. Handoff requests go to one holder; releases and inbox arrivals to all.
pub const TOPIC_HANDOFF_PREFIX: &str = "hoard.handoff.";
pub const TOPIC_RELEASED: &str = "hoard.released";
pub const TOPIC_INBOX: &str = "hoard.inbox";

/// The smallest list of background-task handles swept for finished ones.
const TRACKED_TASKS_SWEEP_MIN: usize = 64;

/// Counters of what the engine did, for operators and tests.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub saves: AtomicU64,
    pub conflicts: AtomicU64,
    pub fenced_out: AtomicU64,
    pub steals: AtomicU64,
    pub handoffs_given: AtomicU64,
    pub handoffs_requested: AtomicU64,
    pub retries: AtomicU64,
    pub load_failures: AtomicU64,
    pub renew_failures: AtomicU64,
    pub sessions_started: AtomicU64,
}

/// A snapshot of the engine's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineCounters {
    pub saves: u64,
    pub conflicts: u64,
    pub fenced_out: u64,
    pub steals: u64,
    pub handoffs_given: u64,
    pub handoffs_requested: u64,
    pub retries: u64,
    pub load_failures: u64,
    pub renew_failures: u64,
    pub sessions_started: u64,
    pub sessions_live: u64,
}

pub(crate) enum Slot {
    Loading(watch::Receiver<bool>),
    Live(Arc<dyn LiveSession>),
}

pub(crate) struct EngineShared {
    pub store: SharedStore,
    pub config: EngineConfig,
    pub holder: HolderId,
    pub counters: Counters,
    pub registry: Mutex<BTreeMap<DocId, Slot>>,
    pub accepting: AtomicBool,
    pub random: Mutex<ChaCha8Rng>,
    /// Woken when any key is announced released, so waiting acquirers retry at once.
    pub released: Notify,
    pub tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Prunes the store's history while the engine lives (`store::pruner`).
    pub _history_pruner: crate::store::pruner::HistoryPruner,
    /// While set, the process lease is not renewed (a paused server, for tests and the simulator).
    pub renewal_suspended: AtomicBool,
    pub save_slots: Semaphore,
    /// Lock-free shared documents this engine has touched: queues, previews and flush locks.
    pub shared_docs: super::shared_docs::SharedDocsState,
    /// Released keys waiting to be announced to other processes (`announce`).
    pub released_outbox: super::announce::ReleasedOutbox,
}

impl std::fmt::Debug for EngineShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineShared").field("holder", &self.holder).field("store", &self.store.backend_name()).finish()
    }
}

impl EngineShared {
    pub fn registry(&self) -> MutexGuard<'_, BTreeMap<DocId, Slot>> {
        self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes a session from the registry (it ended or lost its key).
    pub fn forget(&self, id: &DocId) {
        let mut registry = self.registry();
        if matches!(registry.get(id), Some(Slot::Live(_))) {
            registry.remove(id);
        }
    }

    pub fn live(&self, id: &DocId) -> Option<Arc<dyn LiveSession>> {
        match self.registry().get(id) {
            Some(Slot::Live(session)) => Some(session.clone()),
            _ => None,
        }
    }

    pub fn jitter(&self) -> f64 {
        self.random.lock().unwrap_or_else(std::sync::PoisonError::into_inner).random::<f64>()
    }

    pub async fn sleep_backoff(&self, attempt: u32) {
        let delay_ms = self.config.backoff_ms(attempt, self.jitter());
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }

    /// Tells every process that a key is free, so a waiting acquirer tries at once.
    pub fn announce_released(self: &Arc<Self>, id: &DocId) {
        self.released.notify_waiters();
        super::announce::announce_released(self, id);
    }

    pub fn spawn_inbox_check(self: &Arc<Self>, id: DocId) {
        if let Some(session) = self.live(&id) {
            tokio::spawn(async move {
                let _ = session.check_inbox_dyn().await;
            });
        }
    }

    /// Reads one key, retrying transient store failures with backoff (bounded by
    /// `load_attempts_max`).
    pub async fn read_with_retries(&self, id: &DocId) -> Result<crate::store::Document, StoreError> {
        let mut last_error = StoreError::unavailable("not read");
        for attempt in 0..self.config.load_attempts_max {
            if attempt > 0 {
                self.sleep_backoff(attempt - 1).await;
            }
            match crate::store::get(&*self.store, id).await {
                Ok(document) => return Ok(document),
                Err(error) if error.is_transient() => last_error = error,
                Err(error) => return Err(error),
            }
        }
        Err(last_error)
    }

    /// Keeps a background task's handle so shutdown and crash can stop it. Finished handles are
    /// dropped when the list has doubled since the last sweep, so tracking stays O(1) amortized
    /// with 100,000 sessions (a sweep on every call made starting sessions quadratic).
    pub fn track(&self, task: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if tasks.len() >= tasks.capacity() {
            tasks.retain(|task| !task.is_finished());
            let room = tasks.len().max(TRACKED_TASKS_SWEEP_MIN);
            tasks.reserve(room);
        }
        tasks.push(task);
    }
}

/// Why an engine could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("invalid engine configuration: {0}")]
    Config(String),
    #[error("cannot register this server's lease with the store: {0}")]
    Store(StoreError),
}

/// The engine. Cheap to clone; all clones are the same engine.
#[derive(Clone, Debug)]
pub struct Engine {
    pub(crate) shared: Arc<EngineShared>,
}

/// What to do when another server holds the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeldPolicy {
    /// Ask the holder to hand over, wait up to this long, then take the key.
    WaitThenSteal { wait_ms: u64 },
    /// Ask the holder to hand over and wait up to this long; never take it by force.
    Wait { wait_ms: u64 },
    /// Take the key at once (the holder is fenced out).
    StealNow,
    /// Return `Locked` at once.
    FailFast,
}

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

/// What shutdown did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownReport {
    pub saved: Vec<DocId>,
    pub failed: Vec<(DocId, String)>,
    /// Sessions whose final save had not finished by the deadline.
    pub timed_out: Vec<DocId>,
}

impl Engine {
    /// Opens an engine on a store: registers this process's lease and starts the background
    /// tasks (lease renewal, handoff and inbox notifications).
    pub async fn open(store: SharedStore, config: EngineConfig) -> Result<Engine, OpenError> {
        config.check().map_err(OpenError::Config)?;
        let holder = HolderId::generate(&config.server_label);
        let seed = holder
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3));
        Engine::open_with_holder(store, config, holder, seed).await
    }

    /// Opens with a given holder id and random seed (the simulator uses this for replayable runs).
    pub async fn open_with_holder(
        store: SharedStore,
        config: EngineConfig,
        holder: HolderId,
        seed: u64,
    ) -> Result<Engine, OpenError> {
        config.check().map_err(OpenError::Config)?;
        let mut renewed = Err(StoreError::unavailable("not tried"));
        for attempt in 0..config.acquire_attempts_max {
            renewed = store.renew_holder(&holder, config.lease_ttl_ms).await;
            if renewed.is_ok() {
                break;
            }
            let delay_ms = config.backoff_ms(attempt, 0.5);
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        renewed.map_err(OpenError::Store)?;
        let history_pruner = crate::store::pruner::HistoryPruner::start(store.clone(), config.history_pruning.clone());
        let shared = Arc::new(EngineShared {
            _history_pruner: history_pruner,
            save_slots: Semaphore::new(config.concurrent_saves_max),
            store,
            config,
            holder,
            counters: Counters::default(),
            registry: Mutex::new(BTreeMap::new()),
            accepting: AtomicBool::new(true),
            random: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            released: Notify::new(),
            tasks: Mutex::new(Vec::new()),
            renewal_suspended: AtomicBool::new(false),
            shared_docs: super::shared_docs::SharedDocsState::default(),
            released_outbox: super::announce::ReleasedOutbox::default(),
        });
        super::background::start(&shared);
        super::shared_docs::start(&shared);
        Ok(Engine { shared })
    }

    pub fn holder(&self) -> &HolderId {
        &self.shared.holder
    }

    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    pub fn store(&self) -> &SharedStore {
        &self.shared.store
    }

    pub fn default_start_options(&self) -> StartOptions {
        StartOptions::default_for(&self.shared.config)
    }

    pub fn counters(&self) -> EngineCounters {
        let c = &self.shared.counters;
        let live = self.shared.registry().values().filter(|slot| matches!(slot, Slot::Live(_))).count();
        EngineCounters {
            saves: c.saves.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            fenced_out: c.fenced_out.load(Ordering::Relaxed),
            steals: c.steals.load(Ordering::Relaxed),
            handoffs_given: c.handoffs_given.load(Ordering::Relaxed),
            handoffs_requested: c.handoffs_requested.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            load_failures: c.load_failures.load(Ordering::Relaxed),
            renew_failures: c.renew_failures.load(Ordering::Relaxed),
            sessions_started: c.sessions_started.load(Ordering::Relaxed),
            sessions_live: live as u64,
        }
    }

    /// Starts (or joins) the session of `key`, with the engine's default options.
    pub async fn start_session<P: Profile>(&self, kind: &ProfileKind<P>, key: &str) -> Result<Session<P>, StartError> {
        self.start_session_with(kind, key, self.default_start_options()).await
    }

    /// Starts (or joins) the session of `key`. A second call for a key this engine is loading
    /// or holds returns the same session.
    pub async fn start_session_with<P: Profile>(
        &self,
        kind: &ProfileKind<P>,
        key: &str,
        options: StartOptions,
    ) -> Result<Session<P>, StartError> {
        let key = Key::with_limits(key, self.shared.store.limits()).map_err(StartError::InvalidKey)?;
        let id = DocId::new(kind.store.clone(), key);
        // Bounded: each pass either returns, waits for a load to finish, or waits one poll
        // interval for a closing session's final save.
        let passes_max = 4 * self.shared.config.acquire_attempts_max;
        for _pass in 0..passes_max {
            // Decide under the registry lock; wait or load after releasing it (a guard must not
            // live across an await, or the future would not be Send).
            enum Next {
                Wait(watch::Receiver<bool>),
                Load(watch::Sender<bool>),
                /// The previous session of this key is saving and releasing: never load before its
                /// final save (Nevermore's trap), never hand out a session about to end.
                WaitClosing,
                Again,
            }
            let next = {
                let mut registry = self.shared.registry();
                if !self.shared.accepting.load(Ordering::SeqCst) {
                    return Err(StartError::ShuttingDown);
                }
                match registry.get(&id) {
                    Some(Slot::Live(session)) if session.is_closing() => Next::WaitClosing,
                    Some(Slot::Live(session)) if session.is_open() => {
                        let any = session.clone().as_any();
                        return match any.downcast::<super::session::SessionCore<P>>() {
                            Ok(core) => Ok(Session { core }),
                            Err(_) => Err(StartError::TypeMismatch { id }),
                        };
                    }
                    Some(Slot::Live(_)) => {
                        registry.remove(&id);
                        Next::Again
                    }
                    Some(Slot::Loading(waiter)) => Next::Wait(waiter.clone()),
                    None => {
                        if registry.len() >= self.shared.config.sessions_max {
                            return Err(StartError::TooManySessions { sessions_max: self.shared.config.sessions_max });
                        }
                        let (done, waiter) = watch::channel(false);
                        registry.insert(id.clone(), Slot::Loading(waiter));
                        Next::Load(done)
                    }
                }
            };
            match next {
                Next::Load(done) => return self.load_in_task(kind.clone(), id, options, done).await,
                Next::Wait(mut waiter) => {
                    // The loader always sends (or drops the sender); either wakes us.
                    let _ = waiter.wait_for(|done| *done).await;
                }
                Next::WaitClosing => {
                    let poll = Duration::from_millis(self.shared.config.handoff_poll_interval_ms);
                    // Woken by the release announcement; the poll bounds a missed wake-up.
                    let _ = tokio::time::timeout(poll, self.shared.released.notified()).await;
                }
                Next::Again => {}
            }
        }
        Err(StartError::Locked { id, holder: self.shared.holder.clone() })
    }

    /// Runs the load in its own task, so a caller that gives up cannot strand an acquired lease:
    /// if nobody is waiting when the load finishes, the session is ended at once.
    async fn load_in_task<P: Profile>(
        &self,
        kind: ProfileKind<P>,
        id: DocId,
        options: StartOptions,
        done: watch::Sender<bool>,
    ) -> Result<Session<P>, StartError> {
        let shared = self.shared.clone();
        let cancelled_id = id.clone();
        let (answer, answered) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let result = super::load::load_session(&shared, &kind, &id, options).await;
            {
                let mut registry = shared.registry();
                match &result {
                    Ok(core) if shared.accepting.load(Ordering::SeqCst) => {
                        registry.insert(id.clone(), Slot::Live(core.clone()));
                    }
                    _ => {
                        registry.remove(&id);
                    }
                }
            }
            let _ = done.send(true);
            match result {
                Ok(core) => {
                    if !shared.accepting.load(Ordering::SeqCst) {
                        let _ = core.end(false).await;
                        let _ = answer.send(Err(StartError::ShuttingDown));
                        return;
                    }
                    super::background::spawn_autosave(&shared, core.clone());
                    shared.counters.sessions_started.fetch_add(1, Ordering::Relaxed);
                    if let Err(Ok(session)) = answer.send(Ok(Session { core: core.clone() })) {
                        // The caller went away: nobody plays this session, so end it now.
                        let _ = session.end().await;
                    }
                }
                Err(error) => {
                    shared.counters.load_failures.fetch_add(1, Ordering::Relaxed);
                    let _ = answer.send(Err(error));
                }
            }
        });
        self.shared.track(task);
        answered.await.unwrap_or(Err(StartError::Cancelled { id: cancelled_id }))
    }

    /// The lock-free shared documents of this engine: keys no server holds, changed by pure
    /// update functions from any number of engines (see `shared_docs`).
    pub fn shared_docs(&self) -> SharedDocs {
        SharedDocs { shared: self.shared.clone() }
    }

    /// Sends a message to a key's inbox, whether its player is offline, here or elsewhere. It is
    /// applied exactly once by whichever session holds the key now or next (G7). A full inbox
    /// refuses the message; nothing is dropped.
    pub async fn send_message(&self, id: &DocId, body: serde_json::Value) -> Result<u64, super::inbox::SendError> {
        super::inbox::send_message(&self.shared, id, body).await
    }

    /// Saves and releases every session in parallel, refusing new ones, and flushes every shared
    /// document with updates waiting, all within `deadline` (G9).
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        self.shared.accepting.store(false, Ordering::SeqCst);
        let sessions: Vec<Arc<dyn LiveSession>> = self
            .shared
            .registry()
            .values()
            .filter_map(|slot| match slot {
                Slot::Live(session) => Some(session.clone()),
                Slot::Loading(_) => None,
            })
            .collect();
        let deadline_at = tokio::time::Instant::now() + deadline;
        let ends = sessions.into_iter().map(|session| async move {
            let id = session.id().clone();
            let result = tokio::time::timeout_at(deadline_at, session.end_dyn(false)).await;
            (id, result)
        });
        let docs_waiting = self.shared.shared_docs.ids_with_pending();
        let docs_flush = tokio::time::timeout_at(deadline_at, super::shared_docs::flush_all_keys(&self.shared));
        let (ended, docs_flushed) = tokio::join!(futures_util::future::join_all(ends), docs_flush);
        let mut report = ShutdownReport::default();
        match docs_flushed {
            Ok(flushed) => {
                report.saved.extend(flushed.flushed.into_iter().map(|(id, _)| id));
                report.failed.extend(flushed.failed.into_iter().map(|(id, error)| (id, error.to_string())));
            }
            Err(_elapsed) => report.timed_out.extend(docs_waiting),
        }
        for (id, result) in ended {
            match result {
                Ok(Ok(())) => report.saved.push(id),
                Ok(Err(SessionError::Ended)) => {}
                Ok(Err(error)) => report.failed.push((id, error.to_string())),
                Err(_elapsed) => report.timed_out.push(id),
            }
        }
        if report.failed.is_empty() && report.timed_out.is_empty() {
            // Every key is released; dropping the process lease frees anything left at once.
            let _ = self.shared.store.release_holder(&self.shared.holder).await;
        }
        self.stop_background_tasks();
        report
    }

    fn stop_background_tasks(&self) {
        let tasks = std::mem::take(&mut *self.shared.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for task in tasks {
            task.abort();
        }
    }

    /// Stops (or resumes) renewing this process's lease, as a paused or partitioned server would.
    /// Its keys become free to take once the lease lapses; its sessions stay open and are fenced
    /// out by their next write if another server took their key. For tests and the simulator.
    pub fn suspend_lease_renewal(&self, suspended: bool) {
        self.shared.renewal_suspended.store(suspended, Ordering::SeqCst);
    }

    /// Simulates a crash: stops every background task and forgets every session without saving
    /// or releasing anything. The process lease lapses after `lease_ttl_ms`. For tests and the
    /// simulator.
    pub fn crash(&self) {
        self.shared.accepting.store(false, Ordering::SeqCst);
        self.stop_background_tasks();
        self.shared.shared_docs.abandon_all();
        let sessions: Vec<Arc<dyn LiveSession>> = std::mem::take(&mut *self.shared.registry())
            .into_values()
            .filter_map(|slot| match slot {
                Slot::Live(session) => Some(session),
                Slot::Loading(_) => None,
            })
            .collect();
        for session in sessions {
            session.abandon();
        }
    }
}
