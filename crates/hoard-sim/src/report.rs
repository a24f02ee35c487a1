//! What a world and a sweep report: operations by kind, faults injected, invariants checked,
//! violations (with seed, key and trail), as a human summary or JSON.
//!
//! Invariant: the JSON and the human summary are built from the same `SweepReport` fields, so
//! they never disagree; the required figures (`ops`, `dupes`, `lost_acknowledged`,
//! `double_grants`, `violations`) are top-level numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::audit::{AuditFigures, Violation};
use crate::world::World;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorldReport {
    pub seed: u64,
    pub strategy: String,
    /// `in-process` or `http`.
    #[serde(default)]
    pub path: String,
    pub store: String,
    /// Simulated time the world ran, play plus settle and shutdown.
    pub sim_ms: u64,
    /// Wall-clock time the world took (not part of the replayable log).
    pub wall_ms: u64,
    pub ops: u64,
    pub ops_by_kind: BTreeMap<String, u64>,
    pub outcomes: BTreeMap<String, u64>,
    pub faults: BTreeMap<String, u64>,
    pub engine: BTreeMap<String, u64>,
    pub figures: AuditFigures,
    /// Cross-server trades by how they ended (see `World::cross_trade_outcomes`).
    #[serde(default)]
    pub cross_trades: BTreeMap<String, u64>,
    pub violations: Vec<Violation>,
    pub event_log_lines: u64,
    /// The full event log (compared by the replay test; not printed).
    #[serde(skip)]
    pub event_log: Vec<String>,
}

pub(crate) fn world_report(world: &World, sim_ms: u64) -> WorldReport {
    let stats = world.stats();
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    for store in &stats.fault_stores {
        let c = store.counts();
        for (name, count) in [
            ("errors_before_apply", c.errors_before_apply),
            ("errors_after_apply", c.errors_after_apply),
            ("unknown_without_apply", c.unknown_without_apply),
            ("read_errors", c.read_errors),
            ("latency_spikes", c.latency_spikes),
            ("notifications_lost", c.notifications_lost),
        ] {
            *faults.entry(name.to_string()).or_insert(0) += count;
        }
    }
    for link in &stats.http_links {
        let c = link.counts();
        for (name, count) in [
            ("http_requests", c.requests),
            ("http_requests_lost", c.requests_lost),
            ("http_answers_lost", c.answers_lost),
            ("http_duplicated", c.duplicated),
            ("http_cut_by_restarts", c.cut_by_restarts),
            ("http_refused", c.refused),
        ] {
            *faults.entry(name.to_string()).or_insert(0) += count;
        }
    }
    if world.service.is_some() {
        faults.insert("serve_restarts".into(), stats.serve_restarts);
    }
    faults.insert("crashes".into(), stats.crashes);
    faults.insert("freezes".into(), stats.pauses);
    faults.insert("restarts".into(), stats.restarts);
    let mut engine: BTreeMap<String, u64> = BTreeMap::new();
    for server in &stats.all_servers {
        for (name, count) in server.counters() {
            *engine.entry(name).or_insert(0) += count;
        }
    }
    engine.insert("shutdown_saved".into(), stats.shutdown_saved);
    engine.insert("shutdown_failed".into(), stats.shutdown_failed);
    engine.insert("shutdown_timed_out".into(), stats.shutdown_timed_out);
    let event_log = world.audit.log();
    WorldReport {
        seed: world.seed,
        strategy: world.config.strategy.name().to_string(),
        path: world.config.path.name().to_string(),
        store: match &world.config.store {
            crate::config::StoreChoice::Memory => "memory".to_string(),
            crate::config::StoreChoice::Database { location } => world_store_name(location),
        },
        sim_ms,
        wall_ms: 0,
        ops: stats.ops.values().sum(),
        ops_by_kind: stats.ops.clone(),
        outcomes: stats.outcomes.clone(),
        faults,
        engine,
        figures: world.audit.figures(),
        cross_trades: BTreeMap::new(),
        violations: world.audit.violations(),
        event_log_lines: event_log.len() as u64,
        event_log,
    }
}

fn world_store_name(location: &str) -> String {
    if hoard::store::is_postgres_location(location) { "postgres".into() } else { "sqlite".into() }
}

/// A sweep of worlds: totals plus each failing seed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepReport {
    pub strategy: String,
    #[serde(default)]
    pub path: String,
    pub store: String,
    pub first_seed: u64,
    pub worlds: u64,
    pub ops: u64,
    pub dupes: u64,
    pub lost_items: u64,
    pub lost_acknowledged: u64,
    pub double_grants: u64,
    pub double_gifts: u64,
    pub phantom_gifts: u64,
    pub currency_drift: u64,
    pub exclusive_writer: u64,
    #[serde(default)]
    pub escrow_misreleased: u64,
    #[serde(default)]
    pub unsettled_trades: u64,
    pub violations: u64,
    pub invariants_checked: u64,
    pub audits: u64,
    /// Cross-server trades by how they ended: committed, aborted, pending_then_settled (a party
    /// heard `pending`, then it was decided), refused, undecided, not_started.
    #[serde(default)]
    pub cross_trades: BTreeMap<String, u64>,
    pub sim_ms: u64,
    pub wall_ms: u64,
    pub ops_by_kind: BTreeMap<String, u64>,
    pub outcomes: BTreeMap<String, u64>,
    pub faults: BTreeMap<String, u64>,
    pub engine: BTreeMap<String, u64>,
    pub failing_seeds: Vec<u64>,
    /// Worlds that could not run at all (setup errors), with the reason.
    pub errors: Vec<(u64, String)>,
    /// The violations, each with its seed.
    pub violation_details: Vec<(u64, Violation)>,
}

/// Violations kept with details across a sweep (all are counted).
pub const SWEEP_VIOLATION_DETAILS_MAX: usize = 20;

fn add_all(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (name, count) in from {
        *into.entry(name.clone()).or_insert(0) += count;
    }
}

impl SweepReport {
    pub fn add(&mut self, world: &WorldReport) {
        self.strategy.clone_from(&world.strategy);
        self.path.clone_from(&world.path);
        self.store.clone_from(&world.store);
        self.worlds += 1;
        self.ops += world.ops;
        let f = &world.figures;
        self.dupes += f.dupes;
        self.lost_items += f.lost_items;
        self.lost_acknowledged += f.lost_acknowledged;
        self.double_grants += f.double_grants;
        self.double_gifts += f.double_gifts;
        self.phantom_gifts += f.phantom_gifts;
        self.currency_drift += f.currency_drift;
        self.exclusive_writer += f.exclusive_writer;
        self.escrow_misreleased += f.escrow_misreleased;
        self.unsettled_trades += f.unsettled_trades;
        add_all(&mut self.cross_trades, &world.cross_trades);
        self.violations += f.violations;
        self.invariants_checked += f.invariants_checked;
        self.audits += f.audits;
        self.sim_ms += world.sim_ms;
        self.wall_ms += world.wall_ms;
        add_all(&mut self.ops_by_kind, &world.ops_by_kind);
        add_all(&mut self.outcomes, &world.outcomes);
        add_all(&mut self.faults, &world.faults);
        add_all(&mut self.engine, &world.engine);
        if f.violations > 0 {
            self.failing_seeds.push(world.seed);
        }
        for violation in &world.violations {
            if self.violation_details.len() < SWEEP_VIOLATION_DETAILS_MAX {
                self.violation_details.push((world.seed, violation.clone()));
            }
        }
    }

    pub fn failed(&self) -> bool {
        self.violations > 0 || !self.errors.is_empty()
    }

    /// The human summary.
    pub fn summary(&self, elapsed_ms: u64) -> String {
        let mut out = String::new();
        let seconds = (elapsed_ms as f64 / 1000.0).max(0.001);
        let _ = writeln!(
            out,
            "hoard sim: strategy {}, path {}, store {}, {} world(s) from seed {}",
            self.strategy, self.path, self.store, self.worlds, self.first_seed
        );
        let _ = writeln!(
            out,
            "  {} ops in {:.1} simulated s; {:.2} s wall ({:.2} worlds/s, {:.0} ops/s)",
            self.ops,
            self.sim_ms as f64 / 1000.0,
            seconds,
            self.worlds as f64 / seconds,
            self.ops as f64 / seconds
        );
        let _ = writeln!(out, "  operations: {}", join_counts(&self.ops_by_kind));
        let _ = writeln!(out, "  outcomes:   {}", join_counts(&self.outcomes));
        if !self.cross_trades.is_empty() {
            let _ = writeln!(out, "  cross-server trades: {}", join_counts(&self.cross_trades));
        }
        let _ = writeln!(out, "  faults:     {}", join_counts(&self.faults));
        if self.engine.values().any(|v| *v > 0) {
            let _ = writeln!(out, "  engine:     {}", join_counts(&self.engine));
        }
        let _ = writeln!(out, "  invariants checked: {} in {} audits", self.invariants_checked, self.audits);
        let _ = writeln!(
            out,
            "  dupes {}, lost items {}, lost acknowledged {}, double grants {}, double gifts {}, phantom gifts {}, currency drift {}, exclusive-writer {}, escrow misreleased {}, unsettled trades {}",
            self.dupes,
            self.lost_items,
            self.lost_acknowledged,
            self.double_grants,
            self.double_gifts,
            self.phantom_gifts,
            self.currency_drift,
            self.exclusive_writer,
            self.escrow_misreleased,
            self.unsettled_trades
        );
        for (seed, error) in &self.errors {
            let _ = writeln!(out, "  ERROR seed {seed}: {error}");
        }
        if self.violations == 0 {
            let _ = writeln!(out, "  violations: 0");
            return out;
        }
        let _ = writeln!(out, "  VIOLATIONS: {} (failing seeds: {:?})", self.violations, self.failing_seeds);
        for (seed, violation) in &self.violation_details {
            let _ = writeln!(out, "  - seed {seed}: {} on {}: {}", violation.kind, violation.key, violation.detail);
            let _ = writeln!(out, "    last events on {}:", violation.key);
            for line in &violation.trail {
                let _ = writeln!(out, "      {line}");
            }
        }
        let _ = writeln!(
            out,
            "  replay one with: hoard sim --path {} --strategy {} --seed <seed>",
            self.path, self.strategy
        );
        out
    }
}

fn join_counts(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts.iter().map(|(name, count)| format!("{name} {count}")).collect::<Vec<_>>().join(", ")
}
