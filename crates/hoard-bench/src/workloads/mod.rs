//! The workloads, one file each, and what they share: the engine configuration, seeding, starting
//! many sessions, and the two ways of driving load (a storm issued all at once, and a closed loop
//! of a fixed number of clients).
//!
//! Invariant: a workload never aborts the run: a failure becomes the `error` of its own row, and
//! the other workloads still run. Setup (seeding, starting sessions) is never inside a measured
//! interval.

pub mod autosave;
pub mod cycle;
pub mod handoff;
pub mod memory;
pub mod over_http;
pub mod receipts;
pub mod shutdown;
pub mod trades;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hoard::engine::{Engine, EngineConfig, ProfileKind, Session};
use hoard::store::{Commit, DocId, Key, SharedStore, StoreName, Write};
use indicatif::ProgressBar;
use tokio::sync::Semaphore;

use crate::latency::LatencyRecorder;
use crate::profile::BenchProfile;
use crate::progress::Progress;
use crate::report::WorkloadResult;
use crate::target::Target;
use crate::{BenchError, Sizes};

/// Autosave interval of benchmark engines: an hour, so no autosave runs inside a measurement
/// (the storm saves with `save_now`, all at once, which is the autosave burst's worst case).
pub const BENCH_AUTOSAVE_INTERVAL_MS: u64 = 3_600_000;
/// Sessions one benchmark engine may hold (above the memory workload's 100,000).
pub const BENCH_SESSIONS_MAX: usize = 1_000_000;
/// Session starts in flight at once while setting up.
pub const SESSION_STARTS_IN_FLIGHT_MAX: usize = 256;
/// Profiles per seeding commit (under the store's `writes_per_commit_max` of 128).
pub const SEED_WRITES_PER_COMMIT: usize = 100;
/// Seeding commits in flight at once.
pub const SEED_COMMITS_IN_FLIGHT_MAX: usize = 8;

/// The engine configuration of every benchmark engine: hoard's defaults, with autosave out of the
/// way and room for many sessions.
pub fn bench_engine_config(label: &str) -> EngineConfig {
    EngineConfig {
        server_label: label.to_string(),
        autosave_interval_ms: BENCH_AUTOSAVE_INTERVAL_MS,
        sessions_max: BENCH_SESSIONS_MAX,
        ..EngineConfig::default()
    }
}

pub fn store_name(name: &str) -> Result<StoreName, BenchError> {
    StoreName::new(name).map_err(|error| BenchError::Setup(format!("store name {name}: {error}")))
}

pub fn key_name(index: usize) -> String {
    format!("player-{index:07}")
}

pub async fn open_engine(store: &SharedStore, config: EngineConfig) -> Result<Engine, BenchError> {
    Engine::open(store.clone(), config).await.map_err(|error| BenchError::Hoard(format!("open engine: {error}")))
}

/// Stops an engine without saving (its sessions are done with) and frees its keys at once.
pub async fn discard_engine(engine: Engine) {
    engine.crash();
    let _ = engine.store().release_holder(engine.holder()).await;
}

/// Writes `count` stored benchmark profiles to keys `player-0000000..` of `store_name`.
pub async fn seed_profiles(
    store: &SharedStore,
    store_name: &StoreName,
    count: usize,
    bar: &ProgressBar,
) -> Result<(), BenchError> {
    let value: serde_json::Value = serde_json::from_str(&crate::profile::stored_profile_text())
        .map_err(|error| BenchError::Setup(format!("encode the profile: {error}")))?;
    let slots = Arc::new(Semaphore::new(SEED_COMMITS_IN_FLIGHT_MAX));
    let mut tasks = Vec::new();
    for first in (0..count).step_by(SEED_WRITES_PER_COMMIT) {
        let last = (first + SEED_WRITES_PER_COMMIT).min(count);
        let mut writes = Vec::with_capacity(last - first);
        for index in first..last {
            let key = Key::new(key_name(index)).map_err(|error| BenchError::Setup(error.to_string()))?;
            writes.push(Write::put(DocId::new(store_name.clone(), key), value.clone()));
        }
        let permit = slots.clone().acquire_owned().await.map_err(|error| BenchError::Setup(error.to_string()))?;
        let (store, bar) = (store.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let outcome = store.commit(Commit::new(writes)).await;
            drop(permit);
            bar.inc((last - first) as u64);
            match outcome {
                Ok(outcome) if outcome.is_committed() => Ok(()),
                Ok(outcome) => Err(format!("seeding conflicted: {outcome:?}")),
                Err(error) => Err(error.to_string()),
            }
        }));
    }
    for task in tasks {
        task.await
            .map_err(|error| BenchError::Setup(error.to_string()))?
            .map_err(|error| BenchError::Setup(format!("seed profiles: {error}")))?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Starts sessions for keys `first..first + count`, at most `SESSION_STARTS_IN_FLIGHT_MAX` at a
/// time; returns them in key order, with the wall time the starts took.
pub async fn start_sessions(
    engine: &Engine,
    kind: &ProfileKind<BenchProfile>,
    first: usize,
    count: usize,
    bar: &ProgressBar,
) -> Result<(Vec<Session<BenchProfile>>, LatencyRecorder, Duration), BenchError> {
    let slots = Arc::new(Semaphore::new(SESSION_STARTS_IN_FLIGHT_MAX));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for index in first..first + count {
        let permit = slots.clone().acquire_owned().await.map_err(|error| BenchError::Setup(error.to_string()))?;
        let (engine, kind, bar) = (engine.clone(), kind.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let session = engine.start_session(&kind, &key_name(index)).await;
            let latency = start.elapsed();
            drop(permit);
            bar.inc(1);
            session.map(|session| (session, latency)).map_err(|error| error.to_string())
        }));
    }
    let mut sessions = Vec::with_capacity(count);
    let mut recorder = LatencyRecorder::new();
    for task in tasks {
        let (session, latency) = task
            .await
            .map_err(|error| BenchError::Hoard(error.to_string()))?
            .map_err(|error| BenchError::Hoard(format!("start a session: {error}")))?;
        recorder.record(latency);
        sessions.push(session);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok((sessions, recorder, elapsed))
}

/// Issues every operation at once and records, for each, the time from the storm's start until
/// it finished. Returns the latencies and the time until the last one finished.
pub async fn storm<Fut>(operations: Vec<Fut>, bar: &ProgressBar) -> (LatencyRecorder, Duration)
where
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = operations
        .into_iter()
        .map(|operation| {
            let bar = bar.clone();
            tokio::spawn(async move {
                let outcome = operation.await;
                bar.inc(1);
                outcome.map(|()| started.elapsed())
            })
        })
        .collect();
    let mut recorder = LatencyRecorder::new();
    for task in tasks {
        match task.await {
            Ok(Ok(latency)) => recorder.record(latency),
            _ => recorder.record_failure(),
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    (recorder, elapsed)
}

/// Runs operations `0..total` from `clients` concurrent clients, each issuing its next operation
/// when the previous one finished; records each operation's own latency.
pub async fn closed_loop<F, Fut>(
    clients: usize,
    total: usize,
    operation: F,
    bar: &ProgressBar,
) -> (LatencyRecorder, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let operation = Arc::new(operation);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (operation, next, bar) = (operation.clone(), next.clone(), bar.clone());
            tokio::spawn(async move {
                let mut recorder = LatencyRecorder::new();
                let mut first_error = None;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= total {
                        return (recorder, first_error);
                    }
                    let operation_started = Instant::now();
                    match operation(index).await {
                        Ok(()) => recorder.record(operation_started.elapsed()),
                        Err(error) => {
                            recorder.record_failure();
                            first_error.get_or_insert(error);
                        }
                    }
                    bar.inc(1);
                }
            })
        })
        .collect();
    let mut merged = LatencyRecorder::new();
    for task in tasks {
        if let Ok((recorder, first_error)) = task.await {
            merged.merge(&recorder);
            if let Some(error) = first_error {
                tracing_free_warning(&error);
            }
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    (merged, elapsed)
}

/// Failures are counted in the figures; the first message of each client goes to stderr so a
/// person can see why (stdout stays the report).
fn tracing_free_warning(error: &str) {
    eprintln!("hoard bench: an operation failed: {error}");
}

/// Every workload but memory on one target, in order.
pub async fn run_target(target: &Target, sizes: &Sizes, progress: &Progress) -> Vec<WorkloadResult> {
    vec![
        autosave::run(target, sizes, progress).await,
        cycle::run(target, sizes, progress).await,
        trades::run(target, sizes, progress).await,
        receipts::run(target, sizes, progress).await,
        handoff::run_live(target, sizes, progress).await,
        handoff::run_crashed(target, sizes, progress).await,
        shutdown::run(target, sizes, progress).await,
        over_http::run(target, sizes, progress).await,
    ]
}
