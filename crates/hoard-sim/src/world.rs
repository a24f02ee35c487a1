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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use hoard::engine::TradeRecord;
use hoard::engine::trade::{Escrow, STATUS_ABORTED, STATUS_COMMITTED, TRADE_ESCROW_STORE, record_id};
use hoard::store::fault::FaultStore;
use hoard::store::memory::MemoryStore;
use hoard::store::{DocId, HolderId, ListQuery, SharedStore, StoreName, StoreOptions, open_store};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::task::AbortHandle;

use crate::audit::{Audit, WorldSnapshot};
use crate::config::{SimConfig, SimPath, StoreChoice};
use crate::http::{HttpContext, HttpLink, HttpServer, SimService, client_rules};
use crate::link::SimLink;
use crate::model::{Names, SimProfile, decode_stored_profile, gift_of_message};
use crate::report::WorldReport;
use crate::step_faults::StepTrap;
use crate::strategies::{GameServer, ServerContext, open_server};

/// Tries to open a server incarnation before giving up on it for this world.
pub const SERVER_OPEN_ATTEMPTS_MAX: u32 = 5;
/// At the end of play: how often the world looks whether its frozen servers woke.
const FROZEN_POLL_MS: u64 = 100;
/// At the end of play: rounds of rejoining and settling players who hold cross-server trades.
pub const END_SETTLE_ROUNDS_MAX: u32 = 20;
/// Simulated time between two such rounds.
pub const END_SETTLE_ROUND_MS: u64 = 1_000;

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

/// A game server's link: to the store (in process) or to `hoard serve` (HTTP path).
#[derive(Clone, Debug)]
pub(crate) enum ServerLink {
    Store(Arc<SimLink>),
    Http(Arc<HttpLink>),
}

impl ServerLink {
    pub fn id(&self) -> usize {
        match self {
            ServerLink::Store(link) => link.id(),
            ServerLink::Http(link) => link.id(),
        }
    }

    pub fn pause(&self) {
        match self {
            ServerLink::Store(link) => link.pause(),
            ServerLink::Http(link) => link.pause(),
        }
    }

    pub fn resume(&self) {
        match self {
            ServerLink::Store(link) => link.resume(),
            ServerLink::Http(link) => link.resume(),
        }
    }

    pub fn kill(&self) {
        match self {
            ServerLink::Store(link) => link.kill(),
            ServerLink::Http(link) => link.kill(),
        }
    }

    /// Arms a cross-server trade step fault on the server's commits (in process) or requests
    /// (HTTP) of its trade; answers whether it replaced one that had not sprung.
    pub fn arm(&self, trap: StepTrap) -> bool {
        match self {
            ServerLink::Store(link) => link.arm(trap),
            ServerLink::Http(link) => link.arm(trap),
        }
    }

    pub fn disarm(&self) {
        match self {
            ServerLink::Store(link) => link.disarm(),
            ServerLink::Http(link) => link.disarm(),
        }
    }
}

pub(crate) struct ServerSlot {
    pub incarnation: u64,
    pub link: ServerLink,
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
    /// HTTP path: restarts of the `hoard serve` process.
    pub serve_restarts: u64,
    pub shutdown_saved: u64,
    pub shutdown_failed: u64,
    pub shutdown_timed_out: u64,
    /// Every incarnation's fault injector and server, for the report's totals.
    pub fault_stores: Vec<Arc<FaultStore>>,
    /// HTTP path: every incarnation's network to the service.
    pub http_links: Vec<Arc<HttpLink>>,
    pub all_servers: Vec<Arc<dyn GameServer>>,
    /// Every cross-server trade started, by id: its parties' answers, in order.
    pub cross_trades: BTreeMap<String, Vec<String>>,
}

pub(crate) struct World {
    pub config: SimConfig,
    pub seed: u64,
    pub names: Names,
    pub inner: SharedStore,
    /// HTTP path: the one in-process `hoard serve` every game server talks to.
    pub service: Option<Arc<SimService>>,
    pub audit: Arc<Audit>,
    pub random: Mutex<ChaCha8Rng>,
    pub servers: Mutex<Vec<ServerSlot>>,
    pub players: Mutex<Vec<PlayerSlot>>,
    pub stats: Mutex<Stats>,
    pub next_id: AtomicU64,
    next_link: AtomicU64,
    /// Set when play ends: no process fault starts after it (the settling rounds wait on their
    /// servers, and a crash would leave them waiting for ever).
    play_over: AtomicBool,
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
        let audit = Arc::new(Audit::new(names.clone()));
        audit.set_observed_in_apply_order(config.store == StoreChoice::Memory);
        let next_link = AtomicU64::new(0);
        let service = match config.path {
            SimPath::InProcess => None,
            SimPath::Http => {
                let id = usize::try_from(next_link.fetch_add(1, Ordering::Relaxed)).unwrap_or(usize::MAX);
                let store: SharedStore = Arc::new(SimLink::for_service(id, inner.clone(), audit.clone()));
                let weakened = config.strategy == crate::Strategy::NoAdopt;
                audit.event(
                    &[],
                    &format!(
                        "hoard serve up on link{id}{}",
                        if weakened { " (weakened: lease-only session fence)" } else { "" }
                    ),
                );
                Some(Arc::new(SimService::start(store, config.engine.lease_ttl_ms, weakened)))
            }
        };
        let world = Arc::new(World {
            audit,
            service,
            random: Mutex::new(ChaCha8Rng::seed_from_u64(derive_seed(seed, SEED_PART_WORLD, 0))),
            servers: Mutex::new(Vec::new()),
            players: Mutex::new(players),
            stats: Mutex::new(Stats::default()),
            next_id: AtomicU64::new(0),
            next_link,
            play_over: AtomicBool::new(false),
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
        if let Some(service) = &self.service {
            return self.open_http_incarnation(service, index, incarnation, link_id, part).await;
        }
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
        Ok(ServerSlot {
            incarnation,
            link: ServerLink::Store(link),
            server: Some(server),
            frozen: false,
            tasks: Vec::new(),
        })
    }

    /// The HTTP path's incarnation: a client of the world's `hoard serve` over its own network.
    async fn open_http_incarnation(
        &self,
        service: &Arc<SimService>,
        index: usize,
        incarnation: u64,
        link_id: usize,
        part: u64,
    ) -> Result<ServerSlot, String> {
        let link = Arc::new(HttpLink::new(
            link_id,
            service.clone(),
            self.config.faults.clone(),
            derive_seed(self.seed, SEED_PART_LINK, part),
            self.inner.clone(),
        ));
        let context = HttpContext {
            config: self.config.clone(),
            names: self.names.clone(),
            audit: self.audit.clone(),
            link: link.clone(),
            label: format!("s{index}-i{incarnation}"),
        };
        let server: Arc<dyn GameServer> =
            Arc::new(HttpServer::open(client_rules(self.config.strategy)?, context).await?);
        {
            let mut stats = self.stats();
            stats.http_links.push(link.clone());
            stats.all_servers.push(server.clone());
        }
        self.audit.event(&[], &format!("server s{index} incarnation {incarnation} up as link{link_id} (HTTP client)"));
        Ok(ServerSlot {
            incarnation,
            link: ServerLink::Http(link),
            server: Some(server),
            frozen: false,
            tasks: Vec::new(),
        })
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

    /// Spawns an action that dies with any of `servers` (a crash aborts it); its handle tells the
    /// caller how it ended (`joined`).
    pub fn spawn_on<T: Send + 'static>(
        &self,
        servers: &[usize],
        action: impl Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        let task = tokio::spawn(action);
        let mut slots = self.servers();
        for index in servers {
            if let Some(slot) = slots.get_mut(*index) {
                slot.tasks.retain(|task| !task.is_finished());
                slot.tasks.push(task.abort_handle());
            }
        }
        task
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
        self.play_over.store(true, Ordering::SeqCst);
        self.disarm_step_faults();
        self.audit.event(&[], "play ends; settling");
        // A freeze a step fault began just before the end may outlast the settle time.
        self.wait_until_no_server_is_frozen().await;
        tokio::time::sleep(Duration::from_millis(self.config.settle_ms)).await;
        self.settle_cross_trades().await?;
        self.shutdown_all().await;
        let snapshot = self.audit_durable_state().await?;
        self.audit.check_settled(&snapshot);
        self.audit.check_unresolved_writers();
        let cross_trades = self.cross_trade_outcomes().await?;
        let sim_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut report = crate::report::world_report(&self, sim_ms);
        report.cross_trades = cross_trades;
        Ok(report)
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

    /// Whether play has ended (process faults have stopped).
    pub fn play_is_over(&self) -> bool {
        self.play_over.load(Ordering::SeqCst)
    }

    /// Waits for every frozen server to wake (a freeze ends by itself within `pause_ms_max`).
    async fn wait_until_no_server_is_frozen(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.pause_ms_max + FROZEN_POLL_MS);
        while self.servers().iter().any(|slot| slot.frozen) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(FROZEN_POLL_MS)).await;
        }
    }

    /// At the end of play: every player whose durable profile holds a cross-server trade pending
    /// rejoins (if offline) and is settled, until none is left or the rounds run out (the final
    /// audit then reports what stayed).
    async fn settle_cross_trades(self: &Arc<Self>) -> Result<(), String> {
        if !self.config.strategy.trades_across_servers() {
            return Ok(());
        }
        for round in 0..END_SETTLE_ROUNDS_MAX {
            let pending: Vec<usize> = self
                .read_profiles()
                .await?
                .into_iter()
                .filter(|(_, profile)| !profile.holdings.pending_trades.is_empty())
                .map(|(player, _)| player)
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            self.audit.event(&[], &format!("settling round {round}: players {pending:?} hold cross-server trades"));
            for player in pending {
                let up = self.servers_up();
                let here = self.players().get(player).and_then(|slot| slot.at).filter(|s| up.contains(s));
                let Some(server) = here.or_else(|| self.pick(&up)) else { continue };
                let Some(game) = self.server(server) else { continue };
                let Some(_guard) = self.busy(&[player]) else {
                    self.audit.player_event(&[player], &format!("p{player} is busy: settled next round"));
                    continue;
                };
                if here.is_none() {
                    let joined = game.join(player, true).await;
                    self.audit.player_event(&[player], &format!("p{player} rejoins s{server} to settle: {joined:?}"));
                    if joined.is_err() {
                        continue;
                    }
                    self.count_outcome("cross_trade.end.rejoined");
                    self.set_location(player, Some(server));
                }
                let left = game.settle_pending(player).await;
                self.count_outcome(if left == Some(0) {
                    "cross_trade.end.settled"
                } else {
                    "cross_trade.end.still_pending"
                });
                if left.is_none_or(|left| left > 0 && round > 0) {
                    // Perhaps a stale session: leave, and rejoin next round (loading settles too).
                    let _ = game.leave(player).await;
                    self.set_location(player, None);
                }
            }
            tokio::time::sleep(Duration::from_millis(END_SETTLE_ROUND_MS)).await;
        }
        Ok(())
    }

    /// Every player's durable profile (no faults, no latency).
    async fn read_profiles(&self) -> Result<BTreeMap<usize, SimProfile>, String> {
        let ids: Vec<DocId> = (0..self.config.players).map(|p| self.names.player_id(p)).collect::<Result<_, _>>()?;
        let mut profiles = BTreeMap::new();
        let page = self.inner.limits().page_size_max.max(1);
        let mut index = 0;
        for chunk in ids.chunks(page) {
            for document in self.inner.get_many(chunk).await.map_err(|e| format!("audit read failed: {e}"))? {
                if let Some(value) = &document.value {
                    let profile =
                        decode_stored_profile(value).map_err(|e| format!("unreadable profile {}: {e}", document.id))?;
                    profiles.insert(index, profile);
                }
                index += 1;
            }
        }
        Ok(profiles)
    }

    /// The world's escrow documents (`hoard.escrow/<trade id>/<leg>` of its trades), by key.
    async fn read_escrows(&self) -> Result<BTreeMap<String, Escrow>, String> {
        let store = StoreName::new(TRADE_ESCROW_STORE).map_err(|e| e.to_string())?;
        let prefix = format!("{}-x", self.names.namespace);
        let mut keys = Vec::new();
        let mut after = None;
        loop {
            let query = ListQuery { prefix: prefix.clone(), after, limit: 0 };
            let page = self.inner.list_keys(&store, &query).await.map_err(|e| format!("audit list failed: {e}"))?;
            keys.extend(page.keys);
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let ids: Vec<DocId> = keys.into_iter().map(|key| DocId::new(store.clone(), key)).collect();
        let mut escrows = BTreeMap::new();
        for chunk in ids.chunks(self.inner.limits().page_size_max.max(1)) {
            for document in self.inner.get_many(chunk).await.map_err(|e| format!("audit read failed: {e}"))? {
                let Some(value) = document.value else { continue };
                let escrow: Escrow =
                    serde_json::from_value(value).map_err(|e| format!("unreadable escrow {}: {e}", document.id))?;
                escrows.insert(document.id.key.to_string(), escrow);
            }
        }
        Ok(escrows)
    }

    /// The durable records of `trade_ids` (absent: never written).
    async fn read_records(&self, trade_ids: &[String]) -> Result<BTreeMap<String, TradeRecord>, String> {
        let ids: Vec<DocId> =
            trade_ids.iter().map(|id| record_id(id).map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
        let mut records = BTreeMap::new();
        for chunk in ids.chunks(self.inner.limits().page_size_max.max(1)) {
            for document in self.inner.get_many(chunk).await.map_err(|e| format!("audit read failed: {e}"))? {
                let Some(value) = document.value else { continue };
                let record: TradeRecord =
                    serde_json::from_value(value).map_err(|e| format!("unreadable record {}: {e}", document.id))?;
                records.insert(document.id.key.to_string(), record);
            }
        }
        Ok(records)
    }

    /// Cross-server trades by how they ended, from their durable records and their parties'
    /// answers: `committed`, `aborted`, `pending_then_settled` (a party heard `pending`, and the
    /// trade was decided later), `refused` (a party could not give), `undecided` (a record still
    /// pending), `not_started` (no party prepared).
    async fn cross_trade_outcomes(&self) -> Result<BTreeMap<String, u64>, String> {
        let trades: Vec<(String, Vec<String>)> =
            self.stats().cross_trades.iter().map(|(id, answers)| (id.clone(), answers.clone())).collect();
        let ids: Vec<String> = trades.iter().map(|(id, _)| id.clone()).collect();
        let records = self.read_records(&ids).await?;
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut count = |name: &str| *counts.entry(name.to_string()).or_insert(0) += 1;
        for (id, answers) in &trades {
            let status = records.get(id).map(|record| record.status.as_str());
            match status {
                Some(STATUS_COMMITTED) => count("committed"),
                Some(STATUS_ABORTED) => count("aborted"),
                Some(_) => count("undecided"),
                None => count("not_started"),
            }
            if answers.iter().any(|a| a == "pending") && matches!(status, Some(STATUS_COMMITTED | STATUS_ABORTED)) {
                count("pending_then_settled");
            }
            if answers.iter().any(|a| a == "refused") {
                count("refused");
            }
        }
        Ok(counts)
    }

    /// Reads the world's durable state from the inner store (no faults, no latency) and audits it.
    pub async fn audit_durable_state(&self) -> Result<WorldSnapshot, String> {
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
        if self.config.strategy.trades_across_servers() {
            snapshot.escrows = self.read_escrows().await?;
            snapshot.records = self.read_records(&self.audit.released_trades()).await?;
        }
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
        Ok(snapshot)
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
            ("cross_trade", weights.cross_trade),
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
            "cross_trade" => self.action_cross_trade(),
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
