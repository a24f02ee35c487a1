//! The simulator's CI: a short sweep of hoard finds nothing, a short sweep of each control finds
//! something, and a replayed seed gives the identical event log — in process here, over HTTP in
//! `sim/http_path.rs`; cross-server trades and their controls in `sim/cross_trades.rs`.

use hoard_sim::{SimConfig, Strategy, run_world, sweep};

#[path = "sim/cross_trades.rs"]
mod cross_trades;
#[path = "sim/http_path.rs"]
mod http_path;

/// A small world: enough for every action and fault to happen, quick in a debug build.
fn small_world(strategy: Strategy) -> SimConfig {
    let mut config = SimConfig::default_world(strategy);
    config.players = 16;
    config.servers = 3;
    config.duration_ms = 30_000;
    config.settle_ms = 15_000;
    config
}

pub(crate) fn seed_from_env(default: u64) -> u64 {
    std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// One named count of a report's table (0 when absent).
pub(crate) fn count(counts: &std::collections::BTreeMap<String, u64>, name: &str) -> u64 {
    counts.get(name).copied().unwrap_or(0)
}

#[test]
fn hoard_sweep_finds_no_violation() {
    let config = small_world(Strategy::Hoard);
    let report = sweep(&config, seed_from_env(1_000), 12, 2, &|_| {});
    assert!(report.ops > 1_000, "the world did too little: {}", report.summary(0));
    assert!(report.faults.get("crashes").copied().unwrap_or(0) > 0, "no crash: {}", report.summary(0));
    assert!(!report.failed(), "{}", report.summary(0));
}

fn control_is_caught(strategy: Strategy) {
    let config = small_world(strategy);
    let report = sweep(&config, seed_from_env(2_000), 4, 2, &|_| {});
    assert!(report.errors.is_empty(), "{}", report.summary(0));
    assert!(report.violations > 0, "the audit missed the {} control: {}", strategy.name(), report.summary(0));
}

#[test]
fn naive_control_is_caught() {
    control_is_caught(Strategy::Naive);
}

#[test]
fn unfenced_control_is_caught() {
    control_is_caught(Strategy::Unfenced);
}

#[test]
fn skewed_clock_control_is_caught() {
    control_is_caught(Strategy::SkewedClock);
}

#[test]
fn a_seed_replays_to_the_identical_event_log() {
    let config = small_world(Strategy::Hoard);
    let seed = seed_from_env(7);
    let first = run_world(&config, seed).expect("first run");
    let second = run_world(&config, seed).expect("second run");
    assert!(first.event_log.len() > 500, "too short a log to prove anything: {}", first.event_log.len());
    if first.event_log != second.event_log {
        let at = first.event_log.iter().zip(&second.event_log).position(|(a, b)| a != b).unwrap_or(0);
        let from = at.saturating_sub(5);
        panic!(
            "seed {seed} diverged at line {at}:\nfirst:\n{}\nsecond:\n{}",
            first.event_log[from..(at + 5).min(first.event_log.len())].join("\n"),
            second.event_log[from..(at + 5).min(second.event_log.len())].join("\n")
        );
    }
    assert_eq!(first.figures, second.figures);
    assert_eq!(first.ops_by_kind, second.ops_by_kind);
    assert_eq!(first.faults, second.faults);
}

#[test]
fn a_control_replays_to_the_identical_event_log() {
    let config = small_world(Strategy::Unfenced);
    let first = run_world(&config, 11).expect("first run");
    let second = run_world(&config, 11).expect("second run");
    assert_eq!(first.event_log, second.event_log);
}
