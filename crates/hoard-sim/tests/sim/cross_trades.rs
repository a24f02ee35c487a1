//! Cross-server trades in the simulator (issue 13): a bounded sweep of hoard with trades between
//! players on different servers, under crashes, freezes, lost answers and lost notifications,
//! finds nothing and both commits and aborts trades; each cross-server trade control (a refund
//! after a failed deciding write, an escrow released before the decision) is caught.

use hoard_sim::{SimConfig, Strategy, SweepReport, sweep};

use super::{count, seed_from_env};

/// A small world where players on different servers trade often.
fn cross_trading_world(strategy: Strategy) -> SimConfig {
    let mut config = SimConfig::default_world(strategy);
    config.players = 16;
    config.servers = 3;
    config.duration_ms = 30_000;
    config.settle_ms = 15_000;
    config.weights.cross_trade = 20;
    config
}

#[test]
fn hoard_sweep_with_cross_server_trades_finds_no_violation() {
    let config = cross_trading_world(Strategy::Hoard);
    let report = sweep(&config, seed_from_env(4_000), 6, 2, &|_| {});
    let summary = report.summary(0);
    assert!(!report.failed(), "{summary}");
    assert!(count(&report.ops_by_kind, "cross_trade") > 0, "no cross-server trade: {summary}");
    assert!(count(&report.cross_trades, "committed") > 0, "no cross-server trade committed: {summary}");
    assert!(count(&report.cross_trades, "aborted") > 0, "no cross-server trade aborted: {summary}");
    assert!(count(&report.cross_trades, "pending_then_settled") > 0, "none settled after pending: {summary}");
    assert_eq!(count(&report.cross_trades, "undecided"), 0, "{summary}");
    assert!(report.faults.get("crashes").copied().unwrap_or(0) > 0, "no crash: {summary}");
}

/// The control is caught in most worlds of a short sweep.
fn cross_control_is_caught(strategy: Strategy) -> SweepReport {
    let mut config = cross_trading_world(strategy);
    // The controls' flaws need trades that reach their decision; step faults crash many servers
    // before it, and would leave the catch to luck.
    config.faults.cross_trade_step_faults = 0.0;
    let report = sweep(&config, seed_from_env(5_000), 4, 2, &|_| {});
    let summary = report.summary(0);
    assert!(report.errors.is_empty(), "{summary}");
    assert!(
        report.failing_seeds.len() * 2 > report.worlds as usize,
        "the audit missed the {} control in too many worlds: {summary}",
        strategy.name()
    );
    report
}

#[test]
fn record_failure_as_abort_control_is_caught() {
    let report = cross_control_is_caught(Strategy::RecordFailureAsAbort);
    assert!(
        report.dupes + report.currency_drift > 0,
        "a refund after a deciding write that applied dupes: {}",
        report.summary(0)
    );
}

#[test]
fn early_escrow_release_control_is_caught() {
    let report = cross_control_is_caught(Strategy::EarlyEscrowRelease);
    assert!(report.escrow_misreleased > 0, "{}", report.summary(0));
}

/// Half the parties' parts arm a crash or freeze at one of their server's commits of the trade
/// (more would leave few servers up to trade on), so the sweep reaches each step (escrow, decision, leg) with each fault before and after the commit.
#[test]
fn crashes_and_freezes_at_every_step_of_a_cross_server_trade_lose_and_dupe_nothing() {
    let mut config = cross_trading_world(Strategy::Hoard);
    config.faults.cross_trade_step_faults = 0.5;
    let report = sweep(&config, seed_from_env(6_000), 24, 2, &|_| {});
    let summary = report.summary(0);
    assert!(!report.failed(), "{summary}");
    assert_eq!(count(&report.cross_trades, "undecided"), 0, "{summary}");
    let missed: Vec<String> = hoard_sim::step_faults::every_step_fault_name()
        .into_iter()
        .filter(|name| count(&report.outcomes, name) == 0)
        .collect();
    assert!(missed.is_empty(), "step faults never reached: {missed:?}\n{summary}");
    assert!(count(&report.cross_trades, "committed") > 0, "no cross-server trade committed: {summary}");
}
