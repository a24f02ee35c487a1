//! The workloads, one file each, and what they share: a row per workload (`measured_row`), where
//! the hoard side runs (`HoardPlace`: in process, or through `hoard serve` for over_http), the
//! engine configuration, seeding and starting many sessions (`seed_and_open`, `seed_and_start`),
//! and the two ways of driving load (a storm issued all at once, and a closed loop of a fixed
//! number of clients).
//!
//! Invariant: a workload never aborts the run: a failure becomes the `error` of its own row, and
//! the other workloads still run. Setup (seeding, starting sessions) is never inside a measured
//! interval.

pub mod autosave;
pub mod cross_trades;
pub mod curves;
pub mod cycle;
pub mod handoff;
pub mod liveops;
pub mod memory;
pub mod over_http;
pub mod over_http_sync;
pub mod receipts;
pub mod shutdown;
pub mod storage;
pub mod trades;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hoard::engine::{Engine, EngineConfig, ProfileKind, Session};
use hoard::store::{Commit, DocId, GroupCommitStats, Key, SharedStore, StoreName, Write};
use indicatif::ProgressBar;
use tokio::sync::Semaphore;

use crate::latency::LatencyRecorder;
use crate::profile::{BenchProfile, bench_kind};
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

/// Runs a workload's `measure` into a row of its own: an error becomes the row's `error` (the
/// module's invariant), and whatever `measure` filled in before it failed stays.
pub async fn measured_row(
    workload: &str,
    store: &str,
    measure: impl AsyncFnOnce(&mut WorkloadResult) -> Result<(), BenchError>,
) -> WorkloadResult {
    let mut result = WorkloadResult::new(workload, store);
    if let Err(error) = measure(&mut result).await {
        result.error = Some(error.to_string());
    }
    result
}

/// Prefix of the named stores the in-process workloads write.
pub const IN_PROCESS_STORE_PREFIX: &str = "bench.";

/// Where a workload's hoard side runs: in process on the target's store, or through `hoard serve`
/// on a remote store in front of the same database (over_http). The hoard side of a workload only
/// speaks `SharedStore`, so this is all that differs between the two.
#[derive(Clone, Debug)]
pub struct HoardPlace {
    /// The row's workload name ("autosave_storm", "over_http/trades"), for progress labels.
    pub workload: String,
    /// The backend ("sqlite", "postgres", "memory"), for progress labels.
    pub backend: &'static str,
    /// The store the workload's engine (and its seeding) speaks to.
    pub store: SharedStore,
    /// The database's own store, whose group-commit counters say how commits were combined: the
    /// same store in process, the store behind the server over HTTP.
    pub database: SharedStore,
    /// Prefix of the named stores the workload writes, so a second run on the same database (over
    /// HTTP) works on documents of its own, from the same starting state as the first.
    pub store_prefix: &'static str,
}

impl HoardPlace {
    pub fn in_process(target: &Target, workload: &str) -> HoardPlace {
        HoardPlace {
            workload: workload.to_string(),
            backend: target.spec.name(),
            store: target.store.clone(),
            database: target.store.clone(),
            store_prefix: IN_PROCESS_STORE_PREFIX,
        }
    }

    /// A progress bar's label: "sqlite autosave_storm: seed".
    pub fn label(&self, phase: &str) -> String {
        format!("{} {}: {phase}", self.backend, self.workload)
    }

    /// The named store `name` under this place's prefix ("bench.autosave").
    pub fn store_name(&self, name: &str) -> Result<StoreName, BenchError> {
        store_name(&format!("{}{name}", self.store_prefix))
    }

    pub fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        self.database.group_commit_stats()
    }
}

/// Commits per database transaction between two readings of the group-commit counters, and the
/// transactions run: `None` for a store without counters or when no transaction ran.
pub fn commits_per_transaction(
    before: Option<GroupCommitStats>,
    after: Option<GroupCommitStats>,
) -> Option<(f64, f64)> {
    let (before, after) = (before?, after?);
    let commits = after.commits_total.saturating_sub(before.commits_total) as f64;
    let transactions = after.transactions_total.saturating_sub(before.transactions_total) as f64;
    (transactions > 0.0).then(|| (commits / transactions, transactions))
}

/// Seeds `count` profiles in the named store `name` (under the place's prefix) and opens an engine
/// labelled `engine_label` on the place's store.
pub async fn seed_and_open(
    place: &HoardPlace,
    name: &str,
    engine_label: &str,
    count: usize,
    progress: &Progress,
) -> Result<(ProfileKind<BenchProfile>, Engine), BenchError> {
    let name = place.store_name(name)?;
    seed_profiles(&place.store, &name, count, &progress.bar(count, place.label("seed"))).await?;
    let engine = open_engine(&place.store, bench_engine_config(engine_label)).await?;
    Ok((bench_kind(&name), engine))
}

/// `seed_and_open`, then a live session on each of the `count` seeded keys, in key order.
pub async fn seed_and_start(
    place: &HoardPlace,
    name: &str,
    engine_label: &str,
    count: usize,
    progress: &Progress,
) -> Result<(Engine, Vec<Session<BenchProfile>>), BenchError> {
    let (kind, engine) = seed_and_open(place, name, engine_label, count, progress).await?;
    let (sessions, _, _) = start_sessions(&engine, &kind, 0, count, &progress.bar(count, place.label("start"))).await?;
    Ok((engine, sessions))
}

/// Changes every session once, so each has something to save.
pub fn make_dirty(sessions: &[Session<BenchProfile>]) -> Result<(), BenchError> {
    for session in sessions {
        session.update(|profile| profile.changes += 1).map_err(|error| BenchError::Hoard(error.to_string()))?;
    }
    Ok(())
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
/// Dropping an engine's last handle aborts its tasks (a crash, as far as the store can tell);
/// the callers' clones live only in tasks they have awaited.
pub async fn discard_engine(engine: Engine) {
    let (store, holder) = (engine.store().clone(), engine.holder().clone());
    drop(engine);
    let _ = store.release_holder(&holder).await;
}

/// Writes `count` stored benchmark profiles to keys `player-0000000..` of `store_name`.
pub async fn seed_profiles(
    store: &SharedStore,
    store_name: &StoreName,
    count: usize,
    bar: &ProgressBar,
) -> Result<(), BenchError> {
    seed_profiles_with(store, store_name, count, &crate::profile::stored_profile_text(), bar).await
}

/// `seed_profiles` with the stored text `text` instead of the benchmark profile's.
pub async fn seed_profiles_with(
    store: &SharedStore,
    store_name: &StoreName,
    count: usize,
    text: &str,
    bar: &ProgressBar,
) -> Result<(), BenchError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| BenchError::Setup(format!("encode the profile: {error}")))?;
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

/// Every workload but memory on one target, in order. Over HTTP comes last: its ratios are
/// against the in-process rows of this same run.
/// The names `hoard bench --only` takes, in the order the workloads run.
pub const SELECTABLE: [&str; 13] = [
    "storage",
    "autosave_storm",
    "session_cycle",
    "trades",
    "cross_trades",
    "receipts",
    "handoff",
    "shutdown",
    "over_http",
    "autosave_sync",
    "liveops",
    "memory",
    "curves",
];

/// The in-process workloads `over_http` is compared with (run with it even when not asked for).
pub const OVER_HTTP_COMPARES_WITH: [&str; 3] = ["autosave_storm", "session_cycle", "trades"];

pub async fn run_target(
    target: &Target,
    sizes: &Sizes,
    progress: &Progress,
    config: &crate::BenchConfig,
) -> Vec<WorkloadResult> {
    let mut results = Vec::new();
    // First, on a fresh database, so what it measures is its own load's.
    if config.runs("storage") {
        results.push(storage::run(target, sizes, progress).await);
    }
    if config.runs("autosave_storm") {
        results.push(autosave::run(target, sizes, progress).await);
    }
    if config.runs("session_cycle") {
        results.push(cycle::run(target, sizes, progress).await);
    }
    if config.runs("trades") {
        results.push(trades::run(target, sizes, progress).await);
    }
    if config.runs("cross_trades") {
        results.push(cross_trades::run(target, sizes, progress).await);
    }
    if config.runs("receipts") {
        results.push(receipts::run(target, sizes, progress).await);
    }
    if config.runs("handoff") {
        results.push(handoff::run_live(target, sizes, progress).await);
        results.push(handoff::run_crashed(target, sizes, progress).await);
    }
    if config.runs("shutdown") {
        results.push(shutdown::run(target, sizes, progress).await);
    }
    if config.runs("over_http") {
        let over_http = over_http::run(target, sizes, progress, &results).await;
        results.extend(over_http);
    }
    if config.runs(over_http_sync::NAME) {
        let row = over_http_sync::run(target, sizes, progress, &results).await;
        results.push(row);
    }
    if config.runs("liveops") && target.store.operator().is_some() {
        results.push(liveops::run(target, sizes, progress).await);
    }
    results
}
