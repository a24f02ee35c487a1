//! Workload 8, memory: resident memory per live session, from the process's RSS before and after
//! starting N sessions (each holding the ~8 KiB benchmark profile in memory). The same run's
//! session starts give a throughput and latency figure too.
//!
//! Invariant: measured before any other workload, and every target's sessions stay alive until
//! all targets are measured, so no measurement reuses heap another one freed. RSS includes the
//! store's own growth (SQLite's page cache, connection buffers): it is what a server pays.

use std::time::Duration;

use crate::profile::{bench_kind, bench_profile, stored_bytes};
use crate::progress::Progress;
use crate::report::WorkloadResult;
use crate::target::Target;
use crate::workloads::{bench_engine_config, discard_engine, open_engine, start_sessions, store_name};
use crate::{BenchError, Sizes};

pub const NAME: &str = "memory";
/// The goal (issue 15): RSS per live session at most this many profiles ...
pub const GOAL_PROFILE_MULTIPLE_MAX: f64 = 2.0;
/// ... plus this many bytes.
pub const GOAL_OVERHEAD_BYTES_MAX: f64 = 4_096.0;
/// Pause before reading RSS, so tasks that finish a start (and free its buffers) have run.
pub const RSS_SETTLE: Duration = Duration::from_millis(200);

/// Resident set size of this process in bytes (`VmRSS` of `/proc/self/status`, the same figure as
/// `/proc/self/statm`'s second field, already in bytes rather than pages). `None` off Linux.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Measures every target in turn, keeping each one's sessions alive until all are measured.
pub async fn run_all(targets: &[Target], sizes: &Sizes, progress: &Progress) -> Vec<WorkloadResult> {
    let mut results = Vec::with_capacity(targets.len());
    let mut kept = Vec::with_capacity(targets.len());
    for target in targets {
        let mut result = WorkloadResult::new(NAME, target.spec.name());
        match measure(target, sizes, progress, &mut result).await {
            Ok(alive) => kept.push(alive),
            Err(error) => result.error = Some(error.to_string()),
        }
        results.push(result);
    }
    for (engine, sessions) in kept {
        drop(sessions);
        discard_engine(engine).await;
    }
    results
}

type Alive = (hoard::engine::Engine, Vec<hoard::engine::Session<crate::profile::BenchProfile>>);

async fn measure(
    target: &Target,
    sizes: &Sizes,
    progress: &Progress,
    result: &mut WorkloadResult,
) -> Result<Alive, BenchError> {
    let count = sizes.memory_sessions;
    let kind = bench_kind(&store_name("bench.memory")?);
    let engine = open_engine(&target.store, bench_engine_config("bench-memory")).await?;
    tokio::time::sleep(RSS_SETTLE).await;
    let before = resident_bytes();
    let bar = progress.bar(count, format!("{} {NAME}: start sessions", target.spec.name()));
    let (sessions, recorder, elapsed) = start_sessions(&engine, &kind, 0, count, &bar).await?;
    tokio::time::sleep(RSS_SETTLE).await;
    let after = resident_bytes();
    let profile_bytes = stored_bytes(&bench_profile());
    result.hoard_setup = format!(
        "{count} live sessions started on new keys (profile {profile_bytes} bytes as JSON); RSS before and after"
    );
    *result = result.clone().with_figures(recorder.figures(elapsed), None);
    result.extra.insert("sessions".into(), count as f64);
    result.extra.insert("profile_stored_bytes".into(), profile_bytes as f64);
    match (before, after) {
        (Some(before), Some(after)) => {
            let per_session = after.saturating_sub(before) as f64 / count.max(1) as f64;
            result.extra.insert("rss_before_bytes".into(), before as f64);
            result.extra.insert("rss_after_bytes".into(), after as f64);
            result.extra.insert("rss_bytes_per_session".into(), per_session);
            result.note = format!(
                "{:.1} KiB RSS per live session ({count} sessions, {:.1} KiB profile); throughput = session starts",
                per_session / 1024.0,
                profile_bytes as f64 / 1024.0
            );
            let goal_bytes = GOAL_PROFILE_MULTIPLE_MAX * profile_bytes as f64 + GOAL_OVERHEAD_BYTES_MAX;
            result.goal = Some(crate::report::Goal {
                text: format!(
                    "at most {GOAL_PROFILE_MULTIPLE_MAX}x the profile + {} KiB per live session",
                    GOAL_OVERHEAD_BYTES_MAX / 1024.0
                ),
                // Judged on the durable stores: the memory store's own copies are its history.
                met: (target.spec.name() != "memory").then_some(per_session <= goal_bytes),
            });
        }
        _ => result.not_measured = Some("not measured: no /proc/self/status on this system".into()),
    }
    Ok((engine, sessions))
}
