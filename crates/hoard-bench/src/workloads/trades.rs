//! Workload 3, trades: two-party trades between random live sessions of one engine (coins one
//! way, gems the other), `trade_clients` in flight at once. Baseline: a plain two-row transfer
//! (`UPDATE … balance - x; UPDATE … balance + x` in one transaction), from `BASELINE_CLIENTS`
//! clients.
//!
//! Invariant: each trade has a fresh id and balances never run short
//! (`PROFILE_STARTING_BALANCE`), so every trade is expected to commit; a refused one is a failure.

use std::collections::BTreeMap;
use std::sync::Arc;

use hoard::engine::{Trade, TradeLeg, TradeOutcome};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::baseline::{BASELINE_CLIENTS, BaselineOp, LatencyFrom};
use crate::profile::bench_kind;
use crate::progress::Progress;
use crate::report::{Goal, WorkloadResult};
use crate::target::Target;
use crate::workloads::{
    bench_engine_config, closed_loop, discard_engine, open_engine, seed_profiles, start_sessions, store_name,
};
use crate::{BenchError, Sizes};

pub const NAME: &str = "trades";
/// The latency goal for trades on PostgreSQL.
pub const GOAL_P99_MS_MAX: f64 = 5.0;

pub async fn run(target: &Target, sizes: &Sizes, progress: &Progress) -> WorkloadResult {
    let mut result = WorkloadResult::new(NAME, target.spec.name());
    if let Err(error) = measure(target, sizes, progress, &mut result).await {
        result.error = Some(error.to_string());
    }
    result
}

/// A trade between two distinct random parties (indexes into the live sessions).
pub fn random_trade(index: usize, parties: usize) -> (usize, usize, Trade) {
    let mut random = ChaCha8Rng::seed_from_u64(index as u64);
    let first = random.random_range(0..parties);
    let second = (first + 1 + random.random_range(0..parties.saturating_sub(1).max(1))) % parties.max(1);
    let trade = Trade {
        id: format!("bench-trade-{index}-{}", random.random::<u32>()),
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
    let (parties, clients, total) = (sizes.trade_sessions.max(2), sizes.trade_clients, sizes.trades_total);
    let label = |phase: &str| format!("{} {NAME}: {phase}", target.spec.name());
    let name = store_name("bench.trades")?;
    let kind = bench_kind(&name);
    seed_profiles(&target.store, &name, parties, &progress.bar(parties, label("seed"))).await?;
    let engine = open_engine(&target.store, bench_engine_config("bench-trades")).await?;
    let (sessions, _, _) = start_sessions(&engine, &kind, 0, parties, &progress.bar(parties, label("start"))).await?;
    let sessions = Arc::new(sessions);
    let stats_before = target.store.group_commit_stats();
    let trader = engine.clone();
    let live = sessions.clone();
    let (recorder, elapsed) = closed_loop(
        clients,
        total,
        move |index| {
            let (engine, sessions) = (trader.clone(), live.clone());
            async move {
                let (first, second, trade) = random_trade(index, sessions.len());
                match engine.trade(&[&sessions[first], &sessions[second]], &trade).await {
                    Ok(TradeOutcome::Committed(_)) => Ok(()),
                    Ok(other) => Err(format!("trade did not commit now: {other:?}")),
                    Err(error) => Err(error.to_string()),
                }
            }
        },
        &progress.bar(total, label("hoard")),
    )
    .await;
    let stats_after = target.store.group_commit_stats();
    drop(sessions);
    discard_engine(engine).await;
    let hoard = recorder.figures(elapsed);
    result.hoard_setup = format!(
        "{total} two-party trades among {parties} live sessions, {clients} in flight; each: read record, one fenced commit (2 profiles + record + 2 log entries), read back"
    );
    if let (Some(before), Some(after)) = (stats_before, stats_after) {
        let commits = after.commits_total.saturating_sub(before.commits_total) as f64;
        let transactions = after.transactions_total.saturating_sub(before.transactions_total) as f64;
        if transactions > 0.0 {
            result.extra.insert("commits_per_transaction".into(), commits / transactions);
            result.note = format!("{:.1} commits per database transaction", commits / transactions);
        }
    }

    let mut baseline = None;
    if let Some(database) = &target.baseline {
        let table = "baseline_accounts".to_string();
        database.create_accounts(&table, parties, None).await?;
        let bar = progress.bar(total, label("baseline"));
        let op = BaselineOp::Transfer { table, accounts: parties };
        let value = Arc::new(String::new());
        let (recorder, elapsed) = database.run(&op, &value, total, LatencyFrom::OperationStart, &bar).await?;
        bar.finish_and_clear();
        baseline = Some(recorder.figures(elapsed));
        result.baseline_setup = format!(
            "{total} two-row transfers (two UPDATEs in one transaction) among {parties} accounts, {BASELINE_CLIENTS} clients"
        );
    }
    *result = result.clone().with_figures(hoard, baseline);
    let p99_ms = hoard.latency_p99_ms;
    result.goal = Some(Goal {
        text: format!("at least the two-row transfer's throughput on PostgreSQL, p99 under {GOAL_P99_MS_MAX} ms"),
        met: (target.spec.name() == "postgres")
            .then(|| result.ratio.is_some_and(|ratio| ratio >= 1.0) && p99_ms < GOAL_P99_MS_MAX),
    });
    Ok(())
}
