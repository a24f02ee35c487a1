//! Workload 3, trades: two-party trades between random live sessions of one engine (coins one
//! way, gems the other), `trade_clients` in flight at once. Baselines, from `BASELINE_CLIENTS`
//! clients: a plain two-row transfer (`UPDATE … balance - x; UPDATE … balance + x` in one
//! transaction: the floor), and a JSON backend's trade (`json_baseline`: both profiles locked in
//! key order, both written with version checks, a trade record inserted).
//!
//! Invariant: each trade has a fresh id (over HTTP too: ids carry the run's store prefix) and
//! balances never run short (`PROFILE_STARTING_BALANCE`), so every trade is expected to commit; a
//! refused one is a failure.

use std::collections::BTreeMap;
use std::sync::Arc;

use hoard::engine::{Trade, TradeLeg, TradeOutcome};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::baseline::{BASELINE_CLIENTS, BaselineOp, LatencyFrom};
use crate::json_baseline::JsonOp;
use crate::latency::Figures;
use crate::profile::stored_profile_text;
use crate::progress::Progress;
use crate::report::{Goal, WorkloadResult};
use crate::target::Target;
use crate::workloads::{
    HoardPlace, closed_loop, commits_per_transaction, discard_engine, measured_row, seed_and_start,
};
use crate::{BenchError, Sizes};

pub const NAME: &str = "trades";
/// The goals on PostgreSQL (issue 15): p99 latency under this ...
pub const GOAL_P99_MS_MAX: f64 = 10.0;
/// ... at least this many times the JSON backend's trades ...
pub const GOAL_JSON_RATIO_MIN: f64 = 2.0;
/// ... and at least this share of the two-integer transfer.
pub const GOAL_TRANSFER_RATIO_MIN: f64 = 0.5;

pub async fn run(target: &Target, sizes: &Sizes, progress: &Progress) -> WorkloadResult {
    measured_row(NAME, target.spec.name(), async |result| measure(target, sizes, progress, result).await).await
}

/// A trade between two distinct random parties (indexes into the live sessions). Trade ids are
/// global to the database, so each run names its own with `id_prefix` (its named-store prefix).
pub fn random_trade(id_prefix: &str, index: usize, parties: usize) -> (usize, usize, Trade) {
    let mut random = ChaCha8Rng::seed_from_u64(index as u64);
    let first = random.random_range(0..parties);
    let second = (first + 1 + random.random_range(0..parties.saturating_sub(1).max(1))) % parties.max(1);
    let trade = Trade {
        id: format!("{id_prefix}trade-{index}-{}", random.random::<u32>()),
        legs: vec![
            TradeLeg { from: 0, to: 1, items: vec![], currencies: BTreeMap::from([("coins".to_string(), 1)]) },
            TradeLeg { from: 1, to: 0, items: vec![], currencies: BTreeMap::from([("gems".to_string(), 1)]) },
        ],
    };
    (first, second, trade)
}

async fn measure(
    target: &Target,
    sizes: &Sizes,
    progress: &Progress,
    result: &mut WorkloadResult,
) -> Result<(), BenchError> {
    let (parties, total) = (sizes.trade_sessions.max(2), sizes.trades_total);
    let place = HoardPlace::in_process(target, NAME);
    let hoard = measure_hoard(&place, sizes, progress, result).await?;
    let mut baseline = None;
    if let Some(database) = &target.baseline {
        let table = "baseline_accounts".to_string();
        database.create_accounts(&table, parties, None).await?;
        let op = BaselineOp::Transfer { table, accounts: parties };
        let bar = progress.bar(total, place.label("baseline"));
        baseline =
            Some(database.measure(&op, &Arc::new(String::new()), total, LatencyFrom::OperationStart, bar).await?);
        result.baseline_setup = format!(
            "{total} two-row transfers (two UPDATEs in one transaction) among {parties} accounts, {BASELINE_CLIENTS} clients"
        );
    }
    *result = result.clone().with_figures(hoard, baseline);
    if let Some(database) = &target.baseline {
        let (table, trades_table) = ("baseline_json_traders".to_string(), "baseline_json_trades".to_string());
        let value = Arc::new(stored_profile_text());
        database.create_json_profiles(&table, parties, &value, Some(&trades_table)).await?;
        let op = BaselineOp::Json(JsonOp::Trade { table, trades_table, accounts: parties });
        let bar = progress.bar(total, place.label("JSON backend"));
        let json = database.measure(&op, &value, total, LatencyFrom::OperationStart, bar).await?;
        let setup = format!(
            "{total} JSON-backend trades among {parties} profiles: SELECT both FOR UPDATE in key order, UPDATE both JSON profiles WHERE version, INSERT the trade record; {BASELINE_CLIENTS} clients"
        );
        *result = result.clone().with_json_baseline(setup, json);
    }
    let p99_ms = hoard.latency_p99_ms;
    result.goal = Some(Goal {
        text: format!(
            "on PostgreSQL: at least {GOAL_JSON_RATIO_MIN}x the JSON backend's trades, {GOAL_TRANSFER_RATIO_MIN}x the two-integer transfer, p99 under {GOAL_P99_MS_MAX} ms"
        ),
        met: (target.spec.name() == "postgres").then(|| {
            result.json_ratio.is_some_and(|ratio| ratio >= GOAL_JSON_RATIO_MIN)
                && result.ratio.is_some_and(|ratio| ratio >= GOAL_TRANSFER_RATIO_MIN)
                && p99_ms < GOAL_P99_MS_MAX
        }),
    });
    Ok(())
}

/// The hoard side at `place`: fills the row's setup, note and extras, returns the figures.
pub async fn measure_hoard(
    place: &HoardPlace,
    sizes: &Sizes,
    progress: &Progress,
    result: &mut WorkloadResult,
) -> Result<Figures, BenchError> {
    let (parties, clients, total) = (sizes.trade_sessions.max(2), sizes.trade_clients, sizes.trades_total);
    let (engine, sessions) = seed_and_start(place, "trades", "bench-trades", parties, progress).await?;
    let sessions = Arc::new(sessions);
    let stats_before = place.group_commit_stats();
    let (trader, live, id_prefix) = (engine.clone(), sessions.clone(), place.store_prefix);
    let (recorder, elapsed) = closed_loop(
        clients,
        total,
        move |index| {
            let (engine, sessions) = (trader.clone(), live.clone());
            async move {
                let (first, second, trade) = random_trade(id_prefix, index, sessions.len());
                match engine.trade(&[&sessions[first], &sessions[second]], &trade).await {
                    Ok(TradeOutcome::Committed(_)) => Ok(()),
                    Ok(other) => Err(format!("trade did not commit now: {other:?}")),
                    Err(error) => Err(error.to_string()),
                }
            }
        },
        &progress.bar(total, place.label("hoard")),
    )
    .await;
    let stats_after = place.group_commit_stats();
    drop(sessions);
    discard_engine(engine).await;
    result.hoard_setup = format!(
        "{total} two-party trades among {parties} live sessions, {clients} in flight; each: one fenced commit (2 profiles + record + 2 log entries)"
    );
    if let Some((per_transaction, _)) = commits_per_transaction(stats_before, stats_after) {
        result.extra.insert("commits_per_transaction".into(), per_transaction);
        result.note = format!("{per_transaction:.1} commits per database transaction");
    }
    Ok(recorder.figures(elapsed))
}
