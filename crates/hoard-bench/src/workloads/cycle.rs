//! Workload 2, session cycle: start (acquire + load an 8 KiB profile), five saves, end (final
//! save + release), by many concurrent players. Baseline: the same cycle in plain SQL, seven
//! transactions (acquire, five conditional saves, releasing save), from `BASELINE_CLIENTS`
//! clients.
//!
//! Invariant: every cycle plays its own stored key (player `p`'s cycle `c` is key
//! `p * cycles_per_player + c`) on both sides, so no cycle waits for another's lease.

use std::sync::Arc;
use std::time::Instant;

use crate::baseline::{BASELINE_CLIENTS, BaselineOp, CYCLE_SAVES, LatencyFrom};
use crate::latency::LatencyRecorder;
use crate::profile::{bench_kind, stored_profile_text};
use crate::progress::Progress;
use crate::report::WorkloadResult;
use crate::target::Target;
use crate::workloads::{bench_engine_config, key_name, open_engine, seed_profiles, store_name};
use crate::{BenchError, Sizes};

pub const NAME: &str = "session_cycle";

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
    let (players, cycles) = (sizes.cycle_players, sizes.cycles_per_player);
    let total = players * cycles;
    let label = |phase: &str| format!("{} {NAME}: {phase}", target.spec.name());
    let name = store_name("bench.cycle")?;
    let kind = bench_kind(&name);
    seed_profiles(&target.store, &name, total, &progress.bar(total, label("seed"))).await?;
    let engine = open_engine(&target.store, bench_engine_config("bench-cycle")).await?;

    let bar = progress.bar(total, label("hoard"));
    let started = Instant::now();
    let tasks: Vec<_> = (0..players)
        .map(|player| {
            let (engine, kind, bar) = (engine.clone(), kind.clone(), bar.clone());
            tokio::spawn(async move {
                let mut recorder = LatencyRecorder::new();
                let mut first_error: Option<String> = None;
                for cycle in 0..cycles {
                    let cycle_started = Instant::now();
                    let outcome: Result<(), String> = async {
                        let key = key_name(player * cycles + cycle);
                        let session = engine.start_session(&kind, &key).await.map_err(|e| e.to_string())?;
                        for _ in 0..CYCLE_SAVES {
                            session.update(|profile| profile.changes += 1).map_err(|e| e.to_string())?;
                            session.save_now().await.map_err(|e| e.to_string())?;
                        }
                        session.update(|profile| profile.changes += 1).map_err(|e| e.to_string())?;
                        session.end().await.map_err(|e| e.to_string())
                    }
                    .await;
                    match outcome {
                        Ok(()) => recorder.record(cycle_started.elapsed()),
                        Err(error) => {
                            recorder.record_failure();
                            first_error.get_or_insert(error);
                        }
                    }
                    bar.inc(1);
                }
                (recorder, first_error)
            })
        })
        .collect();
    let mut recorder = LatencyRecorder::new();
    for task in tasks {
        let (player_recorder, first_error) = task.await.map_err(|error| BenchError::Hoard(error.to_string()))?;
        recorder.merge(&player_recorder);
        if let Some(error) = first_error {
            eprintln!("hoard bench: a session cycle failed: {error}");
        }
    }
    let hoard = recorder.figures(started.elapsed());
    bar.finish_and_clear();
    engine.shutdown(std::time::Duration::from_secs(60)).await;
    result.hoard_setup = format!(
        "{players} concurrent players x {cycles} cycles: start (acquire + load), {CYCLE_SAVES} saves, end (final save + release)"
    );
    result.note = "one op = one whole cycle (7 durable writes)".into();

    let mut baseline = None;
    if let Some(database) = &target.baseline {
        let table = "baseline_cycle".to_string();
        let value = Arc::new(stored_profile_text());
        database.create_docs(&table, total, &value, false).await?;
        let bar = progress.bar(total, label("baseline"));
        let (recorder, elapsed) =
            database.run(&BaselineOp::Cycle { table }, &value, total, LatencyFrom::OperationStart, &bar).await?;
        bar.finish_and_clear();
        baseline = Some(recorder.figures(elapsed));
        result.baseline_setup = format!(
            "the same {total} cycles as 7 plain SQL transactions each (acquire UPDATE … RETURNING, {CYCLE_SAVES} conditional UPDATEs, releasing UPDATE), {BASELINE_CLIENTS} clients"
        );
    }
    *result = result.clone().with_figures(hoard, baseline);
    Ok(())
}
