//! Workload 5, handoff: (a) with a live holder: a second engine asks for a key a first engine
//! holds (dirty, so the handoff includes its final save); measured from the request until the
//! second engine holds the key. (b) With a crashed holder: the first engine crashes (no save, no
//! release) and the second waits; measured from the crash until it holds the key, against the
//! crashed engine's (short) process lease.
//!
//! Invariant: the two engines use separate store handles (`Target::open_another_store`), as two
//! server processes would, so notifications travel the way they do between machines.

use std::time::{Duration, Instant};

use hoard::engine::{EngineConfig, HeldPolicy, LoadFailurePolicy, StartOptions};

use crate::latency::LatencyRecorder;
use crate::profile::bench_kind;
use crate::progress::Progress;
use crate::report::{Goal, WorkloadResult};
use crate::target::Target;
use crate::workloads::{
    bench_engine_config, discard_engine, key_name, make_dirty, measured_row, open_engine, start_sessions, store_name,
};
use crate::{BenchError, Sizes};

pub const NAME_LIVE: &str = "handoff_live";
pub const NAME_CRASHED: &str = "handoff_crashed";
/// The goal for a handoff from a live holder.
pub const GOAL_LIVE_P99_MS_MAX: f64 = 100.0;
/// How often the waiting engine re-checks a crashed holder's key (its `handoff_poll_interval_ms`).
pub const CRASH_WAITER_POLL_INTERVAL_MS: u64 = 50;
/// The crashing engine renews its lease this many times per lease time (hoard's default is 3).
pub const CRASH_RENEWALS_PER_LEASE: u64 = 4;

pub async fn run_live(target: &Target, sizes: &Sizes, progress: &Progress) -> WorkloadResult {
    measured_row(NAME_LIVE, target.spec.name(), async |result| measure_live(target, sizes, progress, result).await)
        .await
}

pub async fn run_crashed(target: &Target, sizes: &Sizes, progress: &Progress) -> WorkloadResult {
    measured_row(NAME_CRASHED, target.spec.name(), async |result| {
        measure_crashed(target, sizes, progress, result).await
    })
    .await
}

async fn measure_live(
    target: &Target,
    sizes: &Sizes,
    progress: &Progress,
    result: &mut WorkloadResult,
) -> Result<(), BenchError> {
    let count = sizes.handoff_keys;
    let label = |phase: &str| format!("{} {NAME_LIVE}: {phase}", target.spec.name());
    let kind = bench_kind(&store_name("bench.handoff")?);
    let first = open_engine(&target.store, bench_engine_config("bench-handoff-first")).await?;
    let second_store = target.open_another_store().await?;
    let second = open_engine(&second_store, bench_engine_config("bench-handoff-second")).await?;
    let (held, _, _) = start_sessions(&first, &kind, 0, count, &progress.bar(count, label("start"))).await?;
    make_dirty(&held)?;
    let options = second.default_start_options();
    let bar = progress.bar(count, label("hoard"));
    let mut recorder = LatencyRecorder::new();
    let started = Instant::now();
    let mut taken = Vec::with_capacity(count);
    for index in 0..count {
        let requested = Instant::now();
        match second.start_session_with(&kind, &key_name(index), options).await {
            Ok(session) => {
                recorder.record(requested.elapsed());
                taken.push(session);
            }
            Err(error) => {
                recorder.record_failure();
                eprintln!("hoard bench: a handoff failed: {error}");
            }
        }
        bar.inc(1);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let steals = second.counters().steals;
    let handed = first.counters().handoffs_given;
    drop((held, taken));
    discard_engine(first).await;
    discard_engine(second).await;
    let hoard = recorder.figures(elapsed);
    result.hoard_setup = format!(
        "{count} keys held (dirty) by a live engine, requested one after another by a second engine (own store handle, default handoff settings)"
    );
    result.extra.insert("handoffs_given".into(), handed as f64);
    result.extra.insert("steals".into(), steals as f64);
    result.note = format!("{handed} handed over, {steals} stolen after the wait");
    *result = result.clone().with_figures(hoard, None);
    result.goal = Some(Goal {
        text: format!("p99 under {GOAL_LIVE_P99_MS_MAX} ms"),
        met: Some(hoard.operations > 0 && hoard.latency_p99_ms < GOAL_LIVE_P99_MS_MAX),
    });
    Ok(())
}

fn crashing_config(lease_ttl_ms: u64) -> EngineConfig {
    EngineConfig {
        lease_ttl_ms,
        lease_renew_interval_ms: (lease_ttl_ms / CRASH_RENEWALS_PER_LEASE).max(1),
        lease_safety_margin_ms: lease_ttl_ms / 10,
        ..bench_engine_config("bench-crashing")
    }
}

async fn measure_crashed(
    target: &Target,
    sizes: &Sizes,
    progress: &Progress,
    result: &mut WorkloadResult,
) -> Result<(), BenchError> {
    let (rounds, keys) = (sizes.crash_rounds, sizes.crash_keys_per_round);
    let lease_ttl_ms = sizes.crash_lease_ttl_ms;
    let label = |phase: &str| format!("{} {NAME_CRASHED}: {phase}", target.spec.name());
    let kind = bench_kind(&store_name("bench.crash")?);
    let waiter_store = target.open_another_store().await?;
    let waiter_config =
        EngineConfig { handoff_poll_interval_ms: CRASH_WAITER_POLL_INTERVAL_MS, ..bench_engine_config("bench-waiter") };
    let waiter = open_engine(&waiter_store, waiter_config).await?;
    // Wait, never steal: what is measured is how long the crashed holder's lease keeps the key.
    let options =
        StartOptions { held: HeldPolicy::Wait { wait_ms: lease_ttl_ms * 5 }, on_load_failure: LoadFailurePolicy::Fail };
    let bar = progress.bar(rounds * keys, label("hoard"));
    let mut recorder = LatencyRecorder::new();
    let started = Instant::now();
    let mut taken = Vec::new();
    for round in 0..rounds {
        let crashing = open_engine(&target.store, crashing_config(lease_ttl_ms)).await?;
        let (held, _, _) =
            start_sessions(&crashing, &kind, round * keys, keys, &indicatif::ProgressBar::hidden()).await?;
        // Crash at a different point of the renewal cycle each round.
        let phase_ms = lease_ttl_ms / CRASH_RENEWALS_PER_LEASE * (round as u64 + 1) / (rounds as u64 + 1);
        tokio::time::sleep(Duration::from_millis(lease_ttl_ms / 2 + phase_ms)).await;
        // The crash: the engine's last handle goes, which aborts its tasks (no save, no release,
        // no renewal), as a killed process's would stop. Its sessions go with the round.
        drop(crashing);
        let crashed_at = Instant::now();
        let waits: Vec<_> = (round * keys..(round + 1) * keys)
            .map(|index| {
                let (waiter, kind, bar) = (waiter.clone(), kind.clone(), bar.clone());
                tokio::spawn(async move {
                    let outcome = waiter.start_session_with(&kind, &key_name(index), options).await;
                    bar.inc(1);
                    outcome.map(|session| (session, crashed_at.elapsed()))
                })
            })
            .collect();
        for wait in waits {
            match wait.await {
                Ok(Ok((session, unavailable))) => {
                    recorder.record(unavailable);
                    taken.push(session);
                }
                Ok(Err(error)) => {
                    recorder.record_failure();
                    eprintln!("hoard bench: taking a crashed holder's key failed: {error}");
                }
                Err(error) => return Err(BenchError::Hoard(error.to_string())),
            }
        }
        drop(held);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    drop(taken);
    discard_engine(waiter).await;
    let hoard = recorder.figures(elapsed);
    result.hoard_setup = format!(
        "{rounds} crashes of an engine holding {keys} keys (lease {lease_ttl_ms} ms, renewed every {} ms); a second engine waits (polls every {CRASH_WAITER_POLL_INTERVAL_MS} ms)",
        (lease_ttl_ms / CRASH_RENEWALS_PER_LEASE).max(1)
    );
    result.extra.insert("lease_ttl_ms".into(), lease_ttl_ms as f64);
    result.extra.insert("waiter_poll_interval_ms".into(), CRASH_WAITER_POLL_INTERVAL_MS as f64);
    result.note = format!("unavailable after crash, vs lease {lease_ttl_ms} ms");
    *result = result.clone().with_figures(hoard, None);
    result.goal = Some(Goal {
        text: format!("a crashed holder's key unavailable no longer than the lease ({lease_ttl_ms} ms)"),
        met: Some(hoard.operations > 0 && hoard.failures == 0 && hoard.latency_max_ms <= lease_ttl_ms as f64),
    });
    Ok(())
}
