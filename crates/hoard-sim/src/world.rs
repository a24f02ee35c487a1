//! One world: game servers, players, the action loop, the fault scheduler, the continuous and
//! final audit, all decided by one seed.
//!
//! Invariants:
//! - Every choice comes from the world's one `ChaCha8Rng` (or a generator seeded from it), drawn
//!   in task order on a current-thread runtime with paused time, and every map is a `BTreeMap`,
//!   so the same (config, seed) on the memory store gives the same event log.
//! - A player takes part in at most one action at a time (`busy`); a guard clears it even when
//!   a crash aborts the action.
//! - A server incarnation's actions are aborted when it crashes, and its link is killed, so
//!   nothing of a dead incarnation reaches the store afterwards.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use hoard::store::fault::FaultStore;
use hoard::store::memory::MemoryStore;
use hoard::store::{DocId, HolderId, SharedStore, StoreOptions, open_store};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::task::AbortHandle;

use crate::audit::{Audit, WorldSnapshot};
use crate::config::{SimConfig, StoreChoice};
use crate::link::SimLink;
use crate::model::{Names, decode_stored_profile, gift_of_message};
use crate::report::WorldReport;
use crate::strategies::{GameServer, ServerContext, open_server};

/// Tries to open a server incarnation before giving up on it for this world.
pub const SERVER_OPEN_ATTEMPTS_MAX: u32 = 5;

/// A split-mix step: derives independent seeds for the world's parts from the world seed.
pub fn derive_seed(seed: u64, part: u64, index: u64) -> u64 {
    let mut z = seed ^ part.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(crate) const SEED_PART_WORLD: u64 = 1;
pub(crate) const SEED_PART_FAULTS: u64 = 2;
pub(crate) const SEED_PART_LINK: u64 = 3;
pub(crate) const SEED_PART_ENGINE: u64 = 4;

pub(crate) struct ServerSlot {
    pub incarnation: u64,
    pub link: Arc<SimLink>,
    /// `None` while the server is down (crashed, not yet restarted).
    pub server: Option<Arc<dyn GameServer>>,
    pub frozen: bool,
    pub tasks: Vec<AbortHandle>,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PlayerSlot {
    /// The server the world believes the player plays on.
    pub at: Option<usize>,
    pub busy: bool,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub ops: BTreeMap<String, u64>,
    pub outcomes: BTreeMap<String, u64>,
    pub crashes: u64,
    pub pauses: u64,
    pub restarts: u64,
    pub shutdown_saved: u64,
    pub shutdown_failed: u64,
    pub shutdown_timed_out: u64,
    /// Every incarnation's fault injector and server, for the report's totals.
    pub fault_stores: Vec<Arc<FaultStore>>,
    pub all_servers: Vec<Arc<dyn GameServer>>,
}

pub(crate) struct World {
    pub config: SimConfig,
    pub seed: u64,
    pub names: Names,
    pub inner: SharedStore,
    pub audit: Arc<Audit>,
    pub random: Mutex<ChaCha8Rng>,
    pub servers: Mutex<Vec<ServerSlot>>,
    pub players: Mutex<Vec<PlayerSlot>>,
    pub stats: Mutex<Stats>,
    pub next_id: AtomicU64,
    next_link: AtomicU64,
}

/// Clears the players' busy flags when the action ends, however it ends (aborted included).
pub(crate) struct BusyGuard {
    world: Arc<World>,
    players: Vec<usize>,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut players = self.world.players();
        for player in &self.players {
            if let Some(slot) = players.get_mut(*player) {
                slot.busy = false;
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs one world to the end and audits it.
pub fn run_world(config: &SimConfig, seed: u64) -> Result<WorldReport, String> {
    config.check()?;
    let wall_started = std::time::Instant::now();
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if config.store == StoreChoice::Memory {
        builder.start_paused(true);
    }
    let runtime = builder.build().map_err(|e| format!("cannot build the world's runtime: {e}"))?;
    let mut report = runtime.block_on(async {
        let world = World::build(config.clone(), seed).await?;
        world.run().await
    })?;
    // Tasks of crashed incarnations pend forever by design; dropping the runtime ends them.
    drop(runtime);
    report.wall_ms = u64::try_from(wall_started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

impl World {
    async fn build(config: SimConfig, seed: u64) -> Result<Arc<World>, String> {
        let (inner, namespace): (SharedStore, String) = match &config.store {
            StoreChoice::Memory => (Arc::new(MemoryStore::new()), format!("w{seed}")),
            StoreChoice::Database { location } => {
                let store = open_store(location, StoreOptions::default()).await.map_err(|e| e.to_string())?;
                // A run tag keeps reruns of a seed apart on a database that keeps data.
                let tag = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                (store, format!("w{seed}-{tag}"))
            }
        };
        let names = Names { namespace };
        let players = vec![PlayerSlot::default(); config.players];
        let world = Arc::new(World {
            audit: Arc::new(Audit::new(names.clone())),
            random: Mutex::new(ChaCha8Rng::seed_from_u64(derive_seed(seed, SEED_PART_WORLD, 0))),
            servers: Mutex::new(Vec::new()),
            players: Mutex::new(players),
            stats: Mutex::new(Stats::default()),
            next_id: AtomicU64::new(0),
            next_link: AtomicU64::new(0),
            config,
            seed,
            names,
            inner,
        });
        for index in 0..world.config.servers {
            let slot = world.open_incarnation(index, 0).await?;
            lock(&world.servers).push(slot);
        }
        Ok(world)
    }

    pub fn players(&self) -> MutexGuard<'_, Vec<PlayerSlot>> {
        lock(&self.players)
    }

    pub fn servers(&self) -> MutexGuard<'_, Vec<ServerSlot>> {
        lock(&self.servers)
    }

    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.stats)
    }

    pub fn random(&self) -> MutexGuard<'_, ChaCha8Rng> {
        lock(&self.random)
    }

    pub fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Builds one incarnation of server `index`: its link, its fault injector, its strategy.
    pub(crate) async fn open_incarnation(&self, index: usize, incarnation: u64) -> Result<ServerSlot, String> {
        let link_id = usize::try_from(self.next_link.fetch_add(1, Ordering::Relaxed)).unwrap_or(usize::MAX);
        let part = (index as u64) << 32 | incarnation;
        let link = Arc::new(SimLink::new(
            link_id,
            self.inner.clone(),
            self.audit.clone(),
            self.config.faults.link_latency_ms_max,
            derive_seed(self.seed, SEED_PART_LINK, part),
        ));
        let faults = Arc::new(FaultStore::new(
            link.clone(),
            self.config.faults.store_faults(derive_seed(self.seed, SEED_PART_FAULTS, part)),
        ));
        let holder =
            HolderId::new(format!("{}-s{index}-i{incarnation}", self.names.namespace)).map_err(|e| e.to_string())?;
        let skew_max = self.config.clock_skew_ms_max;
        let clock_skew_ms = if skew_max > 0 { self.random().random_range(-skew_max..=skew_max) } else { 0 };
        let context = ServerContext {
            config: self.config.clone(),
            names: self.names.clone(),
            store: faults.clone(),
            audit: self.audit.clone(),
            link: link_id,
            holder,
            seed: derive_seed(self.seed, SEED_PART_ENGINE, part),
            clock_skew_ms,
        };
        let server = open_server(self.config.strategy, context).await?;
        {
            let mut stats = self.stats();
            stats.fault_stores.push(faults);
            stats.all_servers.push(server.clone());
        }
        self.audit.event(
            &[],
            &format!("server s{index} incarnation {incarnation} up as link{link_id} (clock skew {clock_skew_ms} ms)"),
        );
        Ok(ServerSlot { incarnation, link, server: Some(server), frozen: false, tasks: Vec::new() })
    }

    /// The live, unfrozen server `index`, if it is up.
    pub fn server(&self, index: usize) -> Option<Arc<dyn GameServer>> {
        self.servers().get(index).and_then(|slot| slot.server.clone())
    }

    /// Marks players busy for one action; `None` if any of them already is.
    pub fn busy(self: &Arc<Self>, players: &[usize]) -> Option<BusyGuard> {
        let mut slots = self.players();
        if players.iter().any(|p| slots.get(*p).is_none_or(|slot| slot.busy)) {
            return None;
        }
        for player in players {
            slots[*player].busy = true;
        }
        Some(BusyGuard { world: self.clone(), players: players.to_vec() })
    }

    pub fn set_location(&self, player: usize, at: Option<usize>) {
        if let Some(slot) = self.players().get_mut(player) {
            slot.at = at;
        }
    }

    pub fn count_op(&self, kind: &str) {
        *self.stats().ops.entry(kind.to_string()).or_insert(0) += 1;
    }

    pub fn count_outcome(&self, outcome: &str) {
        *self.stats().outcomes.entry(outcome.to_string()).or_insert(0) += 1;
    }

    /// Spawns an action that dies with any of `servers` (a crash aborts it).
    pub fn spawn_on(&self, servers: &[usize], action: impl Future<Output = ()> + Send + 'static) {
        let task = tokio::spawn(action);
        let mut slots = self.servers();
        for index in servers {
            if let Some(slot) = slots.get_mut(*index) {
                slot.tasks.retain(|task| !task.is_finished());
                slot.tasks.push(task.abort_handle());
            }
        }
    }

    /// Indexes of servers that are up and not frozen.
    pub fn servers_up(&self) -> Vec<usize> {
        self.servers().iter().enumerate().filter(|(_, s)| s.server.is_some() && !s.frozen).map(|(i, _)| i).collect()
    }

    pub fn pick<T: Copy>(&self, choices: &[T]) -> Option<T> {
        if choices.is_empty() {
            return None;
        }
        let index = self.random().random_range(0..choices.len());
        Some(choices[index])
    }

    pub fn chance(&self, probability: f64) -> bool {
        self.random().random_bool(probability.clamp(0.0, 1.0))
    }

    async fn run(self: Arc<Self>) -> Result<WorldReport, String> {
        let started = tokio::time::Instant::now();
        let end = started + Duration::from_millis(self.config.duration_ms);
        let faults = tokio::spawn(self.clone().fault_scheduler(end));
        let audit_interval = Duration::from_millis(self.config.audit_interval_ms);
        let mut next_audit = started + audit_interval;
        let continuous_audit = self.config.store == StoreChoice::Memory;
        while tokio::time::Instant::now() < end {
            let gap_ms = self.random().random_range(0..=2 * self.config.action_gap_ms_mean);
            tokio::time::sleep(Duration::from_millis(gap_ms)).await;
            self.step();
            if continuous_audit && tokio::time::Instant::now() >= next_audit {
                self.audit_durable_state().await?;
                next_audit += audit_interval;
            }
        }
        let _ = faults.await;
        self.audit.event(&[], "play ends; settling");
        tokio::time::sleep(Duration::from_millis(self.config.settle_ms)).await;
        self.shutdown_all().await;
        self.audit_durable_state().await?;
        self.audit.check_unresolved_writers();
        let sim_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(crate::report::world_report(&self, sim_ms))
    }

    async fn shutdown_all(&self) {
        let servers: Vec<(usize, Arc<dyn GameServer>)> =
            self.servers().iter().enumerate().filter_map(|(i, s)| s.server.clone().map(|server| (i, server))).collect();
        let deadline = Duration::from_millis(self.config.shutdown_deadline_ms);
        let shutdowns = servers.iter().map(|(_, server)| server.shutdown(deadline));
        let summaries = futures_util::future::join_all(shutdowns).await;
        let mut stats = self.stats();
        for summary in summaries {
            stats.shutdown_saved += summary.saved as u64;
            stats.shutdown_failed += summary.failed as u64;
            stats.shutdown_timed_out += summary.timed_out as u64;
        }
        drop(stats);
        for (index, _) in servers {
            if let Some(slot) = self.servers().get_mut(index) {
                slot.server = None;
            }
        }
        self.audit.event(&[], "every server shut down");
    }

    /// Reads the world's durable state from the inner store (no faults, no latency) and audits it.
    pub async fn audit_durable_state(&self) -> Result<(), String> {
        let mut ids: Vec<DocId> = Vec::with_capacity(self.config.players + self.config.guild_banks);
        for player in 0..self.config.players {
            ids.push(self.names.player_id(player)?);
        }
        for bank in 0..self.config.guild_banks {
            ids.push(self.names.bank_id(bank)?);
        }
        let mut documents = Vec::with_capacity(ids.len());
        let page = self.inner.limits().page_size_max.max(1);
        for chunk in ids.chunks(page) {
            documents.extend(self.inner.get_many(chunk).await.map_err(|e| format!("audit read failed: {e}"))?);
        }
        let mut snapshot = WorldSnapshot::default();
        for (index, document) in documents.iter().enumerate() {
            if index >= self.config.players {
                snapshot.bank_coins.push(crate::model::bank_coins(document.value.as_ref()));
                continue;
            }
            if let Some(value) = &document.value {
                let profile =
                    decode_stored_profile(value).map_err(|e| format!("unreadable profile {}: {e}", document.id))?;
                snapshot.profiles.insert(index, profile);
            }
            let waiting: Vec<String> =
                document.inbox.iter().filter_map(|m| gift_of_message(&m.body)).map(|g| g.gift_id).collect();
            if !waiting.is_empty() {
                snapshot.inbox_gifts.insert(index, waiting);
            }
        }
        self.audit.check_snapshot(&snapshot);
        Ok(())
    }

    /// Picks and starts one player action.
    fn step(self: &Arc<Self>) {
        let weights = &self.config.weights;
        let table = [
            ("join", weights.join),
            ("play", weights.play),
            ("leave", weights.leave),
            ("hop", weights.hop),
            ("trade", weights.trade),
            ("buy", weights.buy),
            ("gift", weights.gift),
            ("deposit", weights.deposit),
        ];
        let total: u32 = table.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return;
        }
        let mut roll = self.random().random_range(0..total);
        let mut chosen = "play";
        for (name, weight) in table {
            if roll < weight {
                chosen = name;
                break;
            }
            roll -= weight;
        }
        let started = match chosen {
            "join" => self.action_join(),
            "leave" => self.action_leave(),
            "hop" => self.action_hop(),
            "trade" => self.action_trade(),
            "buy" => self.action_buy(),
            "gift" => self.action_gift(),
            "deposit" => self.action_deposit(),
            _ => self.action_play(),
        };
        if started {
            self.count_op(chosen);
        }
    }
}

/// Waits for a spawned sub-action, treating an abort (its server crashed) as "no answer".
pub(crate) async fn joined<T>(handle: tokio::task::JoinHandle<T>) -> Option<T> {
    handle.map(Result::ok).await
}
