//! Workload 1, autosave storm: every live session dirty, all saved at once; group commit must
//! combine them. Baseline: the same saves as one conditional `UPDATE … WHERE key = $1 AND
//! lease_epoch = $2` transaction each, from `BASELINE_CLIENTS` clients.
//!
//! Invariant: latency on both sides is measured from the storm's start (every save was due at
//! that moment), so p50/p99/max say when a player's data became durable.

use std::sync::Arc;

use crate::baseline::{BASELINE_CLIENTS, BaselineOp, LatencyFrom};
use crate::profile::{bench_kind, stored_profile_text};
use crate::progress::Progress;
use crate::report::{Goal, WorkloadResult};
use crate::target::Target;
use crate::workloads::{
    bench_engine_config, discard_engine, open_engine, seed_profiles, start_sessions, store_name, storm,
};
use crate::{BenchError, Sizes};

pub const NAME: &str = "autosave_storm";
/// The goal on PostgreSQL: at least this many times the per-save-transaction baseline.
pub const GOAL_RATIO_MIN: f64 = 5.0;

pub async fn run(target: &Target, sizes: &Sizes, progress: &Progress) -> WorkloadResult {
    let mut result = WorkloadResult::new(NAME, target.spec.name());
    if let Err(error) = measure(target, sizes, progress, &mut result).await {
        result.error = Some(error.to_string());
    }
    result
}

async fn measure(
    target: &Target,
    sizes: &Sizes,
    progress: &Progress,
    result: &mut WorkloadResult,
) -> Result<(), BenchError> {
    let count = sizes.autosave_sessions;
    let label = |phase: &str| format!("{} {NAME}: {phase}", target.spec.name());
    let name = store_name("bench.autosave")?;
    let kind = bench_kind(&name);
    seed_profiles(&target.store, &name, count, &progress.bar(count, label("seed"))).await?;
    let engine = open_engine(&target.store, bench_engine_config("bench-autosave")).await?;
    let (sessions, _, _) = start_sessions(&engine, &kind, 0, count, &progress.bar(count, label("start"))).await?;
    for session in &sessions {
        session.update(|profile| profile.changes += 1).map_err(|error| BenchError::Hoard(error.to_string()))?;
    }
    let stats_before = target.store.group_commit_stats();
    let saves: Vec<_> = sessions
        .iter()
        .cloned()
        .map(|session| async move { session.save_now().await.map(|_| ()).map_err(|error| error.to_string()) })
        .collect();
    let (recorder, elapsed) = storm(saves, &progress.bar(count, label("hoard"))).await;
    let stats_after = target.store.group_commit_stats();
    drop(sessions);
    discard_engine(engine).await;
    let hoard = recorder.figures(elapsed);
    result.hoard_setup =
        format!("{count} live sessions, all dirty, save_now on every one at once; group commit combines them");
    if let (Some(before), Some(after)) = (stats_before, stats_after) {
        let commits = after.commits_total.saturating_sub(before.commits_total) as f64;
        let transactions = after.transactions_total.saturating_sub(before.transactions_total) as f64;
        if transactions > 0.0 {
            result.extra.insert("commits_per_transaction".into(), commits / transactions);
            result.extra.insert("transactions".into(), transactions);
            result.note = format!("{:.1} saves per database transaction", commits / transactions);
        }
    }

    let mut baseline = None;
    if let Some(database) = &target.baseline {
        let table = "baseline_autosave".to_string();
        let value = Arc::new(stored_profile_text());
        database.create_docs(&table, count, &value, true).await?;
        let bar = progress.bar(count, label("baseline"));
        let (recorder, elapsed) = database
            .run(&BaselineOp::Save { table, release: false }, &value, count, LatencyFrom::RunStart, &bar)
            .await?;
        bar.finish_and_clear();
        baseline = Some(recorder.figures(elapsed));
        result.baseline_setup = format!(
            "the same {count} saves, one conditional UPDATE transaction each, {BASELINE_CLIENTS} concurrent clients"
        );
    }
    *result = result.clone().with_figures(hoard, baseline);
    result.goal = Some(Goal {
        text: format!("at least {GOAL_RATIO_MIN}x the per-save-transaction baseline on PostgreSQL"),
        met: (target.spec.name() == "postgres").then(|| result.ratio.is_some_and(|ratio| ratio >= GOAL_RATIO_MIN)),
    });
    Ok(())
}
