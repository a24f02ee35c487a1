//! Workload 9, storage: what a store holds after a fixed load, and the history written per save.
//! The load: `storage_players` live sessions of the 8 KiB profile, each saved
//! `storage_saves_per_player` times with a typical edit of a few fields (`profile::typical_edit`),
//! all players' saves of a round at once. Nothing is pruned (every version is younger than the
//! first retention tier), so the history's growth is what the load wrote into it.
//!
//! Invariant: the sizes are read from the database's own accounting (SQLite `dbstat` after a
//! checkpoint, PostgreSQL `pg_total_relation_size` with indexes and TOAST), by table name only, so
//! the same measurement reads any of hoard's schema versions; the workload runs first on its
//! target, so the figures are this load's alone.

use crate::profile::{PROFILE_STORED_BYTES_TARGET, typical_edit};
use crate::progress::Progress;
use crate::report::{Goal, WorkloadResult};
use crate::target::Target;
use crate::workloads::{HoardPlace, discard_engine, measured_row, seed_and_start, storm};
use crate::{BenchError, Sizes};

pub const NAME: &str = "storage";
/// The goal (issue 15): history written per save at most this share of the profile's bytes.
pub const GOAL_HISTORY_SHARE_OF_PROFILE_MAX: f64 = 0.15;

pub async fn run(target: &Target, sizes: &Sizes, progress: &Progress) -> WorkloadResult {
    measured_row(NAME, target.spec.name(), async |result| measure(target, sizes, progress, result).await).await
}

async fn measure(
    target: &Target,
    sizes: &Sizes,
    progress: &Progress,
    result: &mut WorkloadResult,
) -> Result<(), BenchError> {
    let (players, rounds) = (sizes.storage_players, sizes.storage_saves_per_player);
    let place = HoardPlace::in_process(target, NAME);
    let before = target.stored_bytes().await?;
    let (engine, sessions) = seed_and_start(&place, "storage", "bench-storage", players, progress).await?;
    let after_seed = target.stored_bytes().await?;
    let mut merged = crate::latency::LatencyRecorder::new();
    let started = std::time::Instant::now();
    for round in 0..rounds {
        for session in &sessions {
            session
                .update(|profile| typical_edit(profile, round))
                .map_err(|error| BenchError::Hoard(error.to_string()))?;
        }
        let saves: Vec<_> = sessions
            .iter()
            .cloned()
            .map(|session| async move { session.save_now().await.map(|_| ()).map_err(|error| error.to_string()) })
            .collect();
        let (recorder, _) = storm(saves, &progress.bar(players, place.label(&format!("round {round}")))).await;
        merged.merge(&recorder);
    }
    let elapsed = started.elapsed();
    drop(sessions);
    discard_engine(engine).await;
    let after = target.stored_bytes().await?;
    *result = result.clone().with_figures(merged.figures(elapsed), None);
    let saves = (players * rounds) as f64;
    result.hoard_setup = format!(
        "{players} live sessions of the {} KiB profile, {rounds} saves each of a typical edit (coins, experience, one quest, a counter); bytes held by hoard's tables",
        PROFILE_STORED_BYTES_TARGET / 1024
    );
    result.extra.insert("saves".into(), saves);
    let profile_bytes = crate::profile::stored_bytes(&crate::profile::bench_profile()) as f64;
    result.extra.insert("profile_stored_bytes".into(), profile_bytes);
    let (Some(before), Some(after_seed), Some(after)) = (before, after_seed, after) else {
        result.not_measured = Some("not measured: the memory store has no size on disk".into());
        return Ok(());
    };
    let held = after.total.saturating_sub(before.total) as f64;
    let history_per_save = after.history.saturating_sub(after_seed.history) as f64 / saves.max(1.0);
    result.extra.insert("store_bytes_after_load".into(), held);
    result.extra.insert("docs_bytes_after_load".into(), after.docs.saturating_sub(before.docs) as f64);
    result.extra.insert("history_bytes_after_load".into(), after.history.saturating_sub(before.history) as f64);
    result.extra.insert("history_bytes_per_save".into(), history_per_save);
    result.extra.insert("history_share_of_profile".into(), history_per_save / profile_bytes.max(1.0));
    result.note = format!(
        "{:.1} MB held after {saves:.0} saves; history {:.0} bytes per save ({:.1} % of the profile)",
        held / 1e6,
        history_per_save,
        100.0 * history_per_save / profile_bytes.max(1.0)
    );
    result.goal = Some(Goal {
        text: format!(
            "history written per save at most {:.0} % of the profile's bytes for a typical edit",
            GOAL_HISTORY_SHARE_OF_PROFILE_MAX * 100.0
        ),
        met: Some(history_per_save <= GOAL_HISTORY_SHARE_OF_PROFILE_MAX * profile_bytes),
    });
    Ok(())
}
