//! hoard bench: hoard's throughput and latency on each workload of issue 7, each measured beside
//! the baseline a game would otherwise write (plain SQL with the same driver, same database, same
//! process, same minute), reported as a table, JSON and SVG plots.
//!
//! Invariant: nothing here asserts or assumes a speed; a run only measures and reports. Every run
//! works in its own SQLite file or PostgreSQL schema and removes it afterwards (`target`).
//!
//! Modules: `workloads` (one file per workload), `baseline` (the SQL baselines: the thin integer
//! floor), `json_baseline` (what a Nakama-style JSON backend writes), `target` (opening
//! and removing the databases), `profile` (the 8 KiB player), `latency` (HDR percentiles),
//! `report` (table and JSON), `svg` (plots), `progress` (indicatif on stderr).

pub mod baseline;
pub mod json_baseline;
pub mod latency;
pub mod profile;
pub mod progress;
pub mod report;
pub mod svg;
pub mod target;
pub mod workloads;

use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use report::{Report, WorkloadResult};
pub use target::TargetSpec;

use crate::progress::Progress;
use crate::target::Target;

/// Why a benchmark could not run (a failing workload is reported in its row instead).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("setting up the benchmark failed: {0}")]
    Setup(String),
    #[error("the baseline failed: {0}")]
    Baseline(String),
    #[error("hoard failed: {0}")]
    Hoard(String),
}

/// How big a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BenchSize {
    /// Tiny, for tests: a few seconds in a debug build.
    Smoke,
    /// Every workload, smaller: under two minutes for both stores in a release build.
    Quick,
    /// The sizes (10,000 sessions, 100,000 for memory).
    Full,
}

impl BenchSize {
    pub fn name(self) -> &'static str {
        match self {
            BenchSize::Smoke => "smoke",
            BenchSize::Quick => "quick",
            BenchSize::Full => "full",
        }
    }

    pub fn sizes(self) -> Sizes {
        match self {
            BenchSize::Smoke => Sizes {
                autosave_sessions: 20,
                cycle_players: 4,
                cycles_per_player: 1,
                trade_sessions: 8,
                trade_clients: 4,
                trades_total: 20,
                cross_trades_total: 20,
                receipt_sessions: 4,
                receipts_total: 20,
                handoff_keys: 2,
                crash_rounds: 1,
                crash_keys_per_round: 2,
                crash_lease_ttl_ms: 400,
                shutdown_sessions: 20,
                memory_sessions: 50,
                storage_players: 10,
                liveops_players: 200,
                liveops_saves: 20,
                storage_saves_per_player: 3,
                curve_saves: 16,
                curve_size_saves: 4,
            },
            BenchSize::Quick => Sizes {
                autosave_sessions: 2_000,
                cycle_players: 64,
                cycles_per_player: 2,
                trade_sessions: 200,
                trade_clients: 16,
                trades_total: 2_000,
                cross_trades_total: 1_000,
                receipt_sessions: 100,
                receipts_total: 2_000,
                handoff_keys: 20,
                crash_rounds: 2,
                crash_keys_per_round: 3,
                crash_lease_ttl_ms: 1_000,
                shutdown_sessions: 2_000,
                memory_sessions: 10_000,
                storage_players: 500,
                liveops_players: 10_000,
                liveops_saves: 2_000,
                storage_saves_per_player: 20,
                curve_saves: 1_000,
                curve_size_saves: 200,
            },
            BenchSize::Full => Sizes {
                autosave_sessions: 10_000,
                cycle_players: 256,
                cycles_per_player: 4,
                trade_sessions: 1_000,
                trade_clients: 16,
                trades_total: 20_000,
                cross_trades_total: 10_000,
                receipt_sessions: 1_000,
                receipts_total: 20_000,
                handoff_keys: 200,
                crash_rounds: 5,
                crash_keys_per_round: 3,
                crash_lease_ttl_ms: 2_000,
                shutdown_sessions: 10_000,
                memory_sessions: 100_000,
                storage_players: 2_000,
                liveops_players: 100_000,
                liveops_saves: 5_000,
                storage_saves_per_player: 20,
                curve_saves: 4_000,
                curve_size_saves: 500,
            },
        }
    }
}

/// Every count and size a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sizes {
    pub autosave_sessions: usize,
    /// Players playing session cycles at once.
    pub cycle_players: usize,
    pub cycles_per_player: usize,
    /// Live sessions trades pick their parties from.
    pub trade_sessions: usize,
    /// Trades in flight at once (and the cross-server workload's trader pairs).
    pub trade_clients: usize,
    pub trades_total: usize,
    /// Cross-server trades of the cross_trades workload (and of its same-engine baseline).
    pub cross_trades_total: usize,
    pub receipt_sessions: usize,
    pub receipts_total: usize,
    /// Keys handed from a live engine to a second one, one after another.
    pub handoff_keys: usize,
    /// Crashes of a holder, each measured until its keys are taken.
    pub crash_rounds: usize,
    pub crash_keys_per_round: usize,
    /// The short process lease of the crashing engine.
    pub crash_lease_ttl_ms: u64,
    pub shutdown_sessions: usize,
    pub memory_sessions: usize,
    /// Live sessions of the storage workload, and saves of each.
    pub storage_players: usize,
    /// Profiles of the liveops workload (100,000 in a full run), and saves of its write-cost rows.
    pub liveops_players: usize,
    pub liveops_saves: usize,
    pub storage_saves_per_player: usize,
    /// Saves at each point of the clients curve.
    pub curve_saves: usize,
    /// Saves at each point of the profile-size curve.
    pub curve_size_saves: usize,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub size: BenchSize,
    pub targets: Vec<TargetSpec>,
    /// Draw progress bars on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Run only these workloads (names as in `workloads::SELECTABLE`); empty: all of them.
    /// `over_http` also runs the in-process workloads it is compared with, `autosave_sync` the
    /// autosave storm.
    pub only: Vec<String>,
}

impl BenchConfig {
    /// Whether `workload` (a name from `workloads::SELECTABLE`) is to run.
    pub fn runs(&self, workload: &str) -> bool {
        self.only.is_empty()
            || self.only.iter().any(|name| name == workload)
            || (workloads::OVER_HTTP_COMPARES_WITH.contains(&workload)
                && self.only.iter().any(|name| name == "over_http"))
            || (workload == workloads::autosave::NAME
                && self.only.iter().any(|name| name == workloads::over_http_sync::NAME))
    }
}

/// Runs every workload on every target and returns the report.
pub async fn run(config: &BenchConfig) -> Result<Report, BenchError> {
    let started = Instant::now();
    let sizes = config.size.sizes();
    let progress = Progress::new(config.progress);
    let mut targets = Vec::with_capacity(config.targets.len());
    for spec in &config.targets {
        targets.push(Target::open(spec).await?);
    }
    let mut results = Vec::new();
    // Memory first, before anything else grew the heap, and with every target's sessions kept
    // until all are measured, so no measurement reuses memory another one freed.
    if config.runs("memory") {
        results.extend(workloads::memory::run_all(&targets, &sizes, &progress).await);
    }
    let mut curves = Vec::new();
    for target in &targets {
        results.extend(workloads::run_target(target, &sizes, &progress, config).await);
        if config.runs("curves") {
            curves.extend(workloads::curves::run(target, &sizes, &progress).await);
        }
    }
    for target in targets {
        target.remove().await?;
    }
    results.sort_by_key(|result| {
        (report::WORKLOADS.iter().position(|name| *name == result.workload).unwrap_or(usize::MAX), result.store.clone())
    });
    Ok(Report {
        hoard_version: env!("CARGO_PKG_VERSION").to_string(),
        size: config.size.name().to_string(),
        profile_stored_bytes: profile::stored_bytes(&profile::bench_profile()),
        baseline_clients: baseline::BASELINE_CLIENTS,
        machine: report::Machine::this(),
        results,
        curves,
        total_elapsed_s: started.elapsed().as_secs_f64(),
    })
}
