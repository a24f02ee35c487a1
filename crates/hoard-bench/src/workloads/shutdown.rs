//! Workload 6, shutdown: `Engine::shutdown` saving and releasing N dirty sessions. Baseline: the
//! same N final saves as one conditional, releasing `UPDATE` transaction each, from
//! `BASELINE_CLIENTS` clients.
//!
//! Invariant: both sides' latencies run from the moment shutdown began (hoard: when each
//! session's `Ended` event arrived), and the hoard figure's elapsed time is the whole shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hoard::engine::SessionEvent;
use tokio::sync::broadcast::error::RecvError;

use crate::baseline::{BASELINE_CLIENTS, BaselineOp, LatencyFrom};
use crate::latency::LatencyRecorder;
use crate::profile::stored_profile_text;
use crate::progress::Progress;
use crate::report::{Goal, WorkloadResult};
use crate::target::Target;
use crate::workloads::{HoardPlace, make_dirty, measured_row, seed_and_start};
use crate::{BenchError, Sizes};

pub const NAME: &str = "shutdown";
/// The goal: this many dirty sessions ...
pub const GOAL_SESSIONS: usize = 10_000;
/// ... saved and released within this long, on PostgreSQL.
pub const GOAL_SECONDS_MAX: f64 = 3.0;
/// The deadline handed to `Engine::shutdown` (Roblox gives a closing server 30 s).
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(120);

pub async fn run(target: &Target, sizes: &Sizes, progress: &Progress) -> WorkloadResult {
    measured_row(NAME, target.spec.name(), async |result| measure(target, sizes, progress, result).await).await
}

async fn measure(
    target: &Target,
    sizes: &Sizes,
    progress: &Progress,
    result: &mut WorkloadResult,
) -> Result<(), BenchError> {
    let count = sizes.shutdown_sessions;
    let place = HoardPlace::in_process(target, NAME);
    let (engine, sessions) = seed_and_start(&place, "shutdown", "bench-shutdown", count, progress).await?;
    make_dirty(&sessions)?;
    let mut endings = Vec::with_capacity(count);
    for session in &sessions {
        let mut events = session.events();
        endings.push(tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(SessionEvent::Ended) => return Some(Instant::now()),
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                }
            }
        }));
    }
    drop(sessions);
    let started = Instant::now();
    let report = engine.shutdown(SHUTDOWN_DEADLINE).await;
    let elapsed = started.elapsed();
    let mut recorder = LatencyRecorder::new();
    for ending in endings {
        match ending.await {
            Ok(Some(ended_at)) => recorder.record(ended_at.saturating_duration_since(started)),
            _ => recorder.record_failure(),
        }
    }
    let mut hoard = recorder.figures(elapsed);
    hoard.failures = hoard.failures.max((report.failed.len() + report.timed_out.len()) as u64);
    result.hoard_setup = format!("Engine::shutdown with {count} dirty sessions: final save + release of each");
    result.extra.insert("shutdown_s".into(), elapsed.as_secs_f64());
    result.extra.insert("saved".into(), report.saved.len() as f64);
    let projected_s = elapsed.as_secs_f64() * GOAL_SESSIONS as f64 / count.max(1) as f64;
    result.extra.insert("projected_s_for_goal_sessions".into(), projected_s);
    result.note = format!("{:.2} s for {count} sessions", elapsed.as_secs_f64());
    if count < GOAL_SESSIONS {
        result.note.push_str(&format!(" (~{projected_s:.1} s per {GOAL_SESSIONS}, linear)"));
    }

    let mut baseline = None;
    if let Some(database) = &target.baseline {
        let table = "baseline_shutdown".to_string();
        let value = Arc::new(stored_profile_text());
        database.create_docs(&table, count, &value, true).await?;
        let op = BaselineOp::Save { table, release: true };
        let bar = progress.bar(count, place.label("baseline"));
        baseline = Some(database.measure(&op, &value, count, LatencyFrom::RunStart, bar).await?);
        result.baseline_setup = format!(
            "the same {count} final saves as one conditional releasing UPDATE transaction each, {BASELINE_CLIENTS} clients"
        );
    }
    *result = result.clone().with_figures(hoard, baseline);
    let on_postgres_at_goal_size = target.spec.name() == "postgres" && count >= GOAL_SESSIONS;
    result.goal = Some(Goal {
        text: format!("{GOAL_SESSIONS} dirty sessions saved and released in under {GOAL_SECONDS_MAX} s on PostgreSQL"),
        met: on_postgres_at_goal_size.then_some(hoard.failures == 0 && elapsed.as_secs_f64() < GOAL_SECONDS_MAX),
    });
    Ok(())
}
