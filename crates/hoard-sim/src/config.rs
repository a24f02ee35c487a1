//! The simulator's settings: world size, action weights, fault rates, engine timings, and every
//! bound the simulator itself keeps.
//!
//! Invariant: a world is a pure function of (`SimConfig`, seed) on the memory store; nothing else
//! is read (no environment, no wall clock).

use hoard::engine::EngineConfig;
use hoard::store::fault::FaultConfig;
use serde::{Deserialize, Serialize};

use crate::strategies::Strategy;

/// Where the world's data lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreChoice {
    /// The in-memory store on paused tokio time: replayable, fast.
    Memory,
    /// A real database at this location (SQLite file or postgres:// URL), in real time.
    Database { location: String },
}

/// How the game servers reach their data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimPath {
    /// Each game server links the engine, over its own faulty link to the store.
    #[default]
    InProcess,
    /// Each game server is a stateless HTTP client of one in-process `hoard serve` (its real
    /// router, driven in memory), speaking only the documented API (`crate::http`).
    Http,
}

impl SimPath {
    pub fn name(self) -> &'static str {
        match self {
            SimPath::InProcess => "in-process",
            SimPath::Http => "http",
        }
    }
}

/// Relative weights of the player actions the world picks from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionWeights {
    pub join: u32,
    pub play: u32,
    pub leave: u32,
    pub hop: u32,
    pub trade: u32,
    pub buy: u32,
    pub gift: u32,
    pub deposit: u32,
    /// A trade between two players on different servers (each server takes its party's part;
    /// in process, for the strategies that trade across servers).
    #[serde(default)]
    pub cross_trade: u32,
}

impl Default for ActionWeights {
    fn default() -> ActionWeights {
        ActionWeights { join: 14, play: 40, leave: 6, hop: 8, trade: 12, buy: 5, gift: 6, deposit: 5, cross_trade: 6 }
    }
}

/// Fault rates: the store faults (per call, see `FaultConfig`) plus process faults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultRates {
    pub error_before_apply: f64,
    pub error_after_apply: f64,
    pub unknown_without_apply: f64,
    pub read_error: f64,
    pub latency_spike: f64,
    pub latency_spike_ms_max: u64,
    pub notification_loss: f64,
    /// Expected server crashes per simulated minute (whole world).
    pub crashes_per_minute: f64,
    /// Expected server freezes (longer than a lease) per simulated minute (whole world).
    pub pauses_per_minute: f64,
    /// Upper bound of each store call's network latency, each way.
    pub link_latency_ms_max: u64,
    /// Chance that a party's part in a cross-server trade arms a step fault on its server: a
    /// crash or freeze just before or after one of its commits of the trade (`step_faults`).
    #[serde(default)]
    pub cross_trade_step_faults: f64,
    /// HTTP path: a request applied by `hoard serve` whose answer is lost (probability each).
    #[serde(default)]
    pub http_answer_lost: f64,
    /// HTTP path: a request lost on the way, never applied; the client times out.
    #[serde(default)]
    pub http_request_lost: f64,
    /// HTTP path: a request delivered twice, the copy up to `http_duplicate_delay_ms_max` later
    /// (so it arrives out of order, after later requests).
    #[serde(default)]
    pub http_duplicated: f64,
    #[serde(default)]
    pub http_duplicate_delay_ms_max: u64,
    /// HTTP path: restarts of the `hoard serve` process per simulated minute (in-flight requests
    /// are cut; the new process serves the same store after a downtime).
    #[serde(default)]
    pub serve_restarts_per_minute: f64,
    /// HTTP path: how long `hoard serve` stays down at a restart (connections refused).
    #[serde(default)]
    pub serve_down_ms_max: u64,
}

impl FaultRates {
    /// The default: far harsher than production (hoard's `FaultConfig::harsh`, plus a crash and
    /// a freeze every few simulated seconds).
    pub fn harsh() -> FaultRates {
        let store = FaultConfig::harsh(0);
        FaultRates {
            error_before_apply: store.error_before_apply,
            error_after_apply: store.error_after_apply,
            unknown_without_apply: store.unknown_without_apply,
            read_error: store.read_error,
            latency_spike: store.latency_spike,
            latency_spike_ms_max: store.latency_spike_ms_max,
            notification_loss: store.notification_loss,
            crashes_per_minute: 4.0,
            pauses_per_minute: 4.0,
            link_latency_ms_max: 8,
            cross_trade_step_faults: 0.2,
            http_answer_lost: 0.08,
            http_request_lost: 0.05,
            http_duplicated: 0.05,
            http_duplicate_delay_ms_max: 3_000,
            serve_restarts_per_minute: 2.0,
            serve_down_ms_max: 1_000,
        }
    }

    pub fn none() -> FaultRates {
        FaultRates {
            error_before_apply: 0.0,
            error_after_apply: 0.0,
            unknown_without_apply: 0.0,
            read_error: 0.0,
            latency_spike: 0.0,
            latency_spike_ms_max: 0,
            notification_loss: 0.0,
            crashes_per_minute: 0.0,
            pauses_per_minute: 0.0,
            link_latency_ms_max: 0,
            cross_trade_step_faults: 0.0,
            http_answer_lost: 0.0,
            http_request_lost: 0.0,
            http_duplicated: 0.0,
            http_duplicate_delay_ms_max: 0,
            serve_restarts_per_minute: 0.0,
            serve_down_ms_max: 0,
        }
    }

    pub fn store_faults(&self, seed: u64) -> FaultConfig {
        FaultConfig {
            seed,
            error_before_apply: self.error_before_apply,
            error_after_apply: self.error_after_apply,
            unknown_without_apply: self.unknown_without_apply,
            read_error: self.read_error,
            latency_spike: self.latency_spike,
            latency_spike_ms_max: self.latency_spike_ms_max,
            notification_loss: self.notification_loss,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    pub strategy: Strategy,
    /// In process (the engine) or over HTTP (clients of an in-process `hoard serve`).
    #[serde(default)]
    pub path: SimPath,
    pub store: StoreChoice,
    pub servers: usize,
    pub players: usize,
    /// Simulated duration of play (the world then settles and shuts down).
    pub duration_ms: u64,
    /// Mean simulated time between two player actions, world-wide.
    pub action_gap_ms_mean: u64,
    pub weights: ActionWeights,
    pub faults: FaultRates,
    /// Guild banks (lock-free shared documents) players deposit into.
    pub guild_banks: usize,
    /// How often the durable state is audited during play.
    pub audit_interval_ms: u64,
    /// Lease, autosave and handoff timings of every server (the controls use the same).
    pub engine: EngineConfig,
    /// Clock error of each server in the skewed-clock control: uniform in ±this.
    pub clock_skew_ms_max: i64,
    /// How long a frozen server stays frozen: uniform in this range (longer than a lease).
    pub pause_ms_min: u64,
    pub pause_ms_max: u64,
    /// How long a crashed server stays down before its next incarnation starts.
    pub restart_ms_min: u64,
    pub restart_ms_max: u64,
    /// After play: how long in-flight actions may take before shutdown.
    pub settle_ms: u64,
    /// The deadline given to each server's graceful shutdown.
    pub shutdown_deadline_ms: u64,
}

impl SimConfig {
    /// The default world: small enough for a sweep of 100 seeds in a minute or two.
    pub fn default_world(strategy: Strategy) -> SimConfig {
        SimConfig {
            strategy,
            path: SimPath::InProcess,
            store: StoreChoice::Memory,
            servers: 4,
            players: 40,
            duration_ms: 120_000,
            action_gap_ms_mean: 40,
            weights: ActionWeights::default(),
            faults: FaultRates::harsh(),
            guild_banks: 2,
            audit_interval_ms: 5_000,
            engine: sim_engine_config(),
            clock_skew_ms_max: 6_000,
            pause_ms_min: 8_000,
            pause_ms_max: 16_000,
            restart_ms_min: 500,
            restart_ms_max: 8_000,
            settle_ms: 30_000,
            shutdown_deadline_ms: 10_000,
        }
    }

    pub fn check(&self) -> Result<(), String> {
        self.engine.check()?;
        if self.servers < 2 {
            return Err("a world needs at least 2 servers (hops, steals)".into());
        }
        if self.players < 3 {
            return Err("a world needs at least 3 players (trades of several)".into());
        }
        if self.guild_banks == 0 || self.action_gap_ms_mean == 0 || self.audit_interval_ms == 0 {
            return Err("guild_banks, action_gap_ms_mean and audit_interval_ms must be positive".into());
        }
        match self.path {
            SimPath::InProcess if self.strategy.is_http_only() => {
                return Err(format!(
                    "strategy {} is a client of hoard serve: run it with --path http",
                    self.strategy.name()
                ));
            }
            SimPath::Http if !self.strategy.runs_over_http() => {
                return Err(format!(
                    "strategy {} is an in-process design; over HTTP run hoard, no-adopt or fresh-ids",
                    self.strategy.name()
                ));
            }
            SimPath::Http if self.store != StoreChoice::Memory => {
                return Err("--path http runs on the memory store (paused time, replayable)".into());
            }
            _ => {}
        }
        if self.pause_ms_min > self.pause_ms_max || self.restart_ms_min > self.restart_ms_max {
            return Err("pause and restart ranges must have min <= max".into());
        }
        Ok(())
    }
}

/// Engine timings for simulated worlds: shorter than production so that steals, expiries and
/// handoffs happen often within a short world (every relation `EngineConfig::check` asks holds).
pub fn sim_engine_config() -> EngineConfig {
    EngineConfig {
        server_label: "sim".to_string(),
        lease_ttl_ms: 5_000,
        lease_renew_interval_ms: 1_000,
        autosave_interval_ms: 10_000,
        save_attempts_max: 6,
        retry_backoff_initial_ms: 20,
        retry_backoff_max_ms: 1_000,
        load_attempts_max: 5,
        acquire_attempts_max: 20,
        handoff_wait_ms: 2_000,
        handoff_poll_interval_ms: 100,
        ..EngineConfig::default()
    }
}
