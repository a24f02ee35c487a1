//! Workload 2, session cycle: start (acquire + load an 8 KiB profile), five saves, end (final
//! save + release), by many concurrent players. Baseline: the same cycle in plain SQL, seven
//! transactions (acquire, five conditional saves, releasing save), from `BASELINE_CLIENTS`
//! clients.
//!
//! Invariant: every cycle plays its own stored key (cycle `i` is key `i`, taken by whichever of
//! the `cycle_players` clients is free next) on both sides, so no cycle waits for another's lease.

use std::sync::Arc;
use std::time::Duration;

use crate::baseline::{BASELINE_CLIENTS, BaselineOp, CYCLE_SAVES, LatencyFrom};
use crate::latency::Figures;
use crate::profile::stored_profile_text;
use crate::progress::Progress;
use crate::report::WorkloadResult;
use crate::target::Target;
use crate::workloads::{HoardPlace, closed_loop, key_name, measured_row, seed_and_open};
use crate::{BenchError, Sizes};

pub const NAME: &str = "session_cycle";
/// The deadline of the engine's shutdown after the cycles (every session has ended by then).
pub const ENGINE_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(60);

pub async fn run(target: &Target, sizes: &Sizes, progress: &Progress) -> WorkloadResult {
    measured_row(NAME, target.spec.name(), async |result| measure(target, sizes, progress, result).await).await
}

async fn measure(
    target: &Target,
    sizes: &Sizes,
    progress: &Progress,
    result: &mut WorkloadResult,
) -> Result<(), BenchError> {
    let total = sizes.cycle_players * sizes.cycles_per_player;
    let place = HoardPlace::in_process(target, NAME);
    let hoard = measure_hoard(&place, sizes, progress, result).await?;
    let mut baseline = None;
    if let Some(database) = &target.baseline {
        let table = "baseline_cycle".to_string();
        let value = Arc::new(stored_profile_text());
        database.create_docs(&table, total, &value, false).await?;
        let bar = progress.bar(total, place.label("baseline"));
        baseline = Some(
            database.measure(&BaselineOp::Cycle { table }, &value, total, LatencyFrom::OperationStart, bar).await?,
        );
        result.baseline_setup = format!(
            "the same {total} cycles as 7 plain SQL transactions each (acquire UPDATE … RETURNING, {CYCLE_SAVES} conditional UPDATEs, releasing UPDATE), {BASELINE_CLIENTS} clients"
        );
    }
    *result = result.clone().with_figures(hoard, baseline);
    Ok(())
}

/// The hoard side at `place`: fills the row's setup and note, returns the figures.
pub async fn measure_hoard(
    place: &HoardPlace,
    sizes: &Sizes,
    progress: &Progress,
    result: &mut WorkloadResult,
) -> Result<Figures, BenchError> {
    let (players, cycles) = (sizes.cycle_players, sizes.cycles_per_player);
    let total = players * cycles;
    let (kind, engine) = seed_and_open(place, "cycle", "bench-cycle", total, progress).await?;

    let cycler = engine.clone();
    let (recorder, elapsed) = closed_loop(
        players,
        total,
        move |index| {
            let (engine, kind) = (cycler.clone(), kind.clone());
            async move {
                let session = engine.start_session(&kind, &key_name(index)).await.map_err(|e| e.to_string())?;
                for _ in 0..CYCLE_SAVES {
                    session.update(|profile| profile.changes += 1).map_err(|e| e.to_string())?;
                    session.save_now().await.map_err(|e| e.to_string())?;
                }
                session.update(|profile| profile.changes += 1).map_err(|e| e.to_string())?;
                session.end().await.map_err(|e| e.to_string())
            }
        },
        &progress.bar(total, place.label("hoard")),
    )
    .await;
    engine.shutdown(ENGINE_SHUTDOWN_DEADLINE).await;
    result.hoard_setup = format!(
        "{players} concurrent players x {cycles} cycles: start (acquire + load), {CYCLE_SAVES} saves, end (final save + release)"
    );
    result.note = "one op = one whole cycle (7 durable writes)".into();
    Ok(recorder.figures(elapsed))
}
