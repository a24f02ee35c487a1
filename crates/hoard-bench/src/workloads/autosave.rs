//! Workload 1, autosave storm: every live session dirty, all saved at once; group commit must
//! combine them. Baselines, from `BASELINE_CLIENTS` clients: the same saves as one conditional
//! `UPDATE … WHERE key = $1 AND lease_epoch = $2` of a TEXT column each (the floor), and as a
//! Nakama-style JSON backend writes them (`json_baseline`: a version-checked JSON document).
//!
//! Invariant: latency on both sides is measured from the storm's start (every save was due at
//! that moment), so p50/p99/max say when a player's data became durable.

use std::sync::Arc;

use crate::baseline::{BASELINE_CLIENTS, BaselineOp, LatencyFrom};
use crate::json_baseline::JsonOp;
use crate::latency::Figures;
use crate::profile::stored_profile_text;
use crate::progress::Progress;
use crate::report::{Goal, WorkloadResult};
use crate::target::Target;
use crate::workloads::{
    HoardPlace, commits_per_transaction, discard_engine, make_dirty, measured_row, seed_and_start, storm,
};
use crate::{BenchError, Sizes};

pub const NAME: &str = "autosave_storm";
/// The goal on PostgreSQL (issue 15): at least this many times the JSON backend's saves.
pub const GOAL_JSON_RATIO_MIN: f64 = 3.0;

pub async fn run(target: &Target, sizes: &Sizes, progress: &Progress) -> WorkloadResult {
    measured_row(NAME, target.spec.name(), async |result| measure(target, sizes, progress, result).await).await
}

async fn measure(
    target: &Target,
    sizes: &Sizes,
    progress: &Progress,
    result: &mut WorkloadResult,
) -> Result<(), BenchError> {
    let count = sizes.autosave_sessions;
    let place = HoardPlace::in_process(target, NAME);
    let hoard = measure_hoard(&place, sizes, progress, result).await?;
    let mut baseline = None;
    if let Some(database) = &target.baseline {
        let table = "baseline_autosave".to_string();
        let value = Arc::new(stored_profile_text());
        database.create_docs(&table, count, &value, true).await?;
        let op = BaselineOp::Save { table, release: false };
        let bar = progress.bar(count, place.label("baseline"));
        baseline = Some(database.measure(&op, &value, count, LatencyFrom::RunStart, bar).await?);
        result.baseline_setup = format!(
            "the same {count} saves, one conditional UPDATE transaction each, {BASELINE_CLIENTS} concurrent clients"
        );
    }
    *result = result.clone().with_figures(hoard, baseline);
    if let Some(database) = &target.baseline {
        let table = "baseline_json_autosave".to_string();
        let value = Arc::new(stored_profile_text());
        database.create_json_profiles(&table, count, &value, None).await?;
        let op = BaselineOp::Json(JsonOp::Save { table });
        let bar = progress.bar(count, place.label("JSON backend"));
        let json = database.measure(&op, &value, count, LatencyFrom::RunStart, bar).await?;
        let setup = format!(
            "the same {count} saves as a JSON backend: UPDATE of the JSON document WHERE key AND version, one transaction each, {BASELINE_CLIENTS} clients"
        );
        *result = result.clone().with_json_baseline(setup, json);
    }
    result.goal = Some(Goal {
        text: format!("at least {GOAL_JSON_RATIO_MIN}x the JSON backend's saves on PostgreSQL"),
        met: (target.spec.name() == "postgres")
            .then(|| result.json_ratio.is_some_and(|ratio| ratio >= GOAL_JSON_RATIO_MIN)),
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
    let count = sizes.autosave_sessions;
    let (engine, sessions) = seed_and_start(place, "autosave", "bench-autosave", count, progress).await?;
    make_dirty(&sessions)?;
    let stats_before = place.group_commit_stats();
    let saves: Vec<_> = sessions
        .iter()
        .cloned()
        .map(|session| async move { session.save_now().await.map(|_| ()).map_err(|error| error.to_string()) })
        .collect();
    let (recorder, elapsed) = storm(saves, &progress.bar(count, place.label("hoard"))).await;
    let stats_after = place.group_commit_stats();
    drop(sessions);
    discard_engine(engine).await;
    result.hoard_setup =
        format!("{count} live sessions, all dirty, save_now on every one at once; group commit combines them");
    if let Some((per_transaction, transactions)) = commits_per_transaction(stats_before, stats_after) {
        result.extra.insert("commits_per_transaction".into(), per_transaction);
        result.extra.insert("transactions".into(), transactions);
        result.note = format!("{per_transaction:.1} saves per database transaction");
    }
    Ok(recorder.figures(elapsed))
}
