//! Workload 7, over HTTP: workloads 1–3 (autosave storm, session cycle, trades) through
//! `hoard serve` and its remote store, against the in-process figures of the same run.
//!
//! For each target, a `hoard serve` runs in this process on the target's own store (the same
//! SQLite file or PostgreSQL schema, the same store handle and group-commit writer), a
//! `RemoteStore` connects to it over loopback HTTP, and each workload's hoard side runs unchanged
//! on that remote store, at the same sizes, on named stores of its own (`bench.http.*`) seeded
//! like the in-process ones. The server's one API key has the `engine` scope and rate limits far
//! above anything a run sends, so the limiter is not what is measured. The game-server side
//! (engine, remote store) and the server share this machine's cores, as they would not in a
//! deployment: on a small machine the ratio is a pessimistic figure.
//!
//! A row per workload, `over_http/<workload>`: `hoard` holds the figures over HTTP and `baseline`
//! the in-process hoard figures of the same workload on the same backend in the same run, copied
//! from that workload's row, so `ratio` is HTTP throughput ÷ in-process throughput (the issue's
//! goal: at least 0.5).
//!
//! Invariant: every workload has its row on every target, measured or saying why not: a server
//! that did not start fails all three rows, an in-process row without figures leaves the ratio
//! out and says so in the note. The server is shut down (gracefully, within
//! `SERVER_SHUTDOWN_DEADLINE`) before the target is removed.

use std::sync::Arc;
use std::time::Duration;

use hoard::store::SharedStore;
use hoard_server::auth::Scope;
use hoard_server::config::{KeyEntry, ServiceConfig};
use hoard_server::{AppState, RemoteStore};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::latency::Figures;
use crate::progress::Progress;
use crate::report::{Goal, WorkloadResult};
use crate::target::Target;
use crate::workloads::{HoardPlace, autosave, cycle, measured_row, trades};
use crate::{BenchError, Sizes};

pub const NAME: &str = "over_http";
/// The goal: HTTP throughput at least this share of in-process throughput.
pub const GOAL_SHARE_OF_IN_PROCESS_MIN: f64 = 0.8;
/// Prefix of the named stores the HTTP runs write (the in-process runs use `bench.`).
pub const HTTP_STORE_PREFIX: &str = "bench.http.";
/// The bench server's API key: its name, and rate limits (requests per second, burst) far above
/// what any run sends (the full autosave storm is 10,000 requests at once), so the server's
/// per-key limiter never refuses or delays a request of the bench.
pub const BENCH_KEY_NAME: &str = "bench";
pub const BENCH_KEY_RATE_PER_SECOND: u32 = 100_000_000;
pub const BENCH_KEY_RATE_BURST: u32 = 100_000_000;
/// How long requests still in flight get when the bench's server shuts down.
pub const SERVER_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// The in-process workloads measured again over HTTP, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverHttp {
    Autosave,
    Cycle,
    Trades,
}

impl OverHttp {
    pub const ALL: [OverHttp; 3] = [OverHttp::Autosave, OverHttp::Cycle, OverHttp::Trades];

    /// The in-process workload's name (its row's `workload`).
    pub fn in_process(self) -> &'static str {
        match self {
            OverHttp::Autosave => autosave::NAME,
            OverHttp::Cycle => cycle::NAME,
            OverHttp::Trades => trades::NAME,
        }
    }

    /// This workload's row name over HTTP: `over_http/<in-process name>`.
    pub fn row(self) -> &'static str {
        match self {
            OverHttp::Autosave => "over_http/autosave_storm",
            OverHttp::Cycle => "over_http/session_cycle",
            OverHttp::Trades => "over_http/trades",
        }
    }

    async fn measure_hoard(
        self,
        place: &HoardPlace,
        sizes: &Sizes,
        progress: &Progress,
        result: &mut WorkloadResult,
    ) -> Result<Figures, BenchError> {
        match self {
            OverHttp::Autosave => autosave::measure_hoard(place, sizes, progress, result).await,
            OverHttp::Cycle => cycle::measure_hoard(place, sizes, progress, result).await,
            OverHttp::Trades => trades::measure_hoard(place, sizes, progress, result).await,
        }
    }
}

/// Runs the three workloads over HTTP on `target`; `in_process` holds the rows already measured
/// on it in this run (their figures are the ratios' denominators).
pub async fn run(
    target: &Target,
    sizes: &Sizes,
    progress: &Progress,
    in_process: &[WorkloadResult],
) -> Vec<WorkloadResult> {
    let backend = target.spec.name();
    let (server, remote) = match start(target.store.clone()).await {
        Ok(started) => started,
        Err(error) => {
            return OverHttp::ALL
                .iter()
                .map(|workload| {
                    let mut row = WorkloadResult::new(workload.row(), backend);
                    row.error = Some(error.to_string());
                    row
                })
                .collect();
        }
    };
    let mut rows = Vec::with_capacity(OverHttp::ALL.len());
    for workload in OverHttp::ALL {
        let place = HoardPlace {
            workload: workload.row().to_string(),
            backend,
            store: remote.clone(),
            database: target.store.clone(),
            store_prefix: HTTP_STORE_PREFIX,
        };
        let in_process_row =
            in_process.iter().find(|row| row.workload == workload.in_process() && row.store == backend);
        let row = measured_row(workload.row(), backend, async |result| {
            measure(workload, &place, sizes, progress, in_process_row, result).await
        })
        .await;
        rows.push(row);
    }
    // The remote store's notification socket goes first, so the shutdown has nothing to wait for.
    drop(remote);
    if let Err(error) = server.stop().await {
        for row in &mut rows {
            row.error.get_or_insert_with(|| error.to_string());
        }
    }
    rows
}

async fn measure(
    workload: OverHttp,
    place: &HoardPlace,
    sizes: &Sizes,
    progress: &Progress,
    in_process: Option<&WorkloadResult>,
    result: &mut WorkloadResult,
) -> Result<(), BenchError> {
    let http = workload.measure_hoard(place, sizes, progress, result).await?;
    result.hoard_setup = format!(
        "through hoard serve in this process on loopback (RemoteStore, engine key, rate limit raised to {BENCH_KEY_RATE_PER_SECOND}/s so the limiter is not measured; client and server share the cores): {}",
        result.hoard_setup
    );
    compare_with_in_process(result, http, workload.in_process(), in_process, place.backend);
    Ok(())
}

/// Fills in a row over HTTP from its figures `http` and the in-process row `in_process` of the
/// workload `in_process_name` on `backend` (the ratio's denominator), with the goal. A
/// missing in-process figure leaves the ratio out and says why in the note.
pub(crate) fn compare_with_in_process(
    result: &mut WorkloadResult,
    http: Figures,
    in_process_name: &str,
    in_process: Option<&WorkloadResult>,
    backend: &str,
) {
    let in_process_figures = in_process.and_then(|row| row.hoard);
    *result = result.clone().with_figures(http, in_process_figures);
    if in_process_figures.is_some() {
        result.baseline_setup = format!("hoard in process: the {in_process_name} row of this run on {backend}");
    } else {
        let why = in_process.and_then(|row| row.error.clone()).unwrap_or_else(|| "no such row".into());
        let separator = if result.note.is_empty() { "" } else { "; " };
        result.note = format!("{}{separator}no in-process figure to compare with ({why})", result.note);
    }
    result.goal = Some(Goal {
        text: format!("at least {GOAL_SHARE_OF_IN_PROCESS_MIN}x the in-process throughput"),
        // The memory store is the reference for tests, not a backend a game serves from: HTTP
        // against it says little about a deployment, so the goal is judged on SQLite and PostgreSQL.
        met: (backend != "memory").then(|| result.ratio.is_some_and(|ratio| ratio >= GOAL_SHARE_OF_IN_PROCESS_MIN)),
    });
}

/// A `hoard serve` running in this process, on a loopback port.
#[derive(Debug)]
pub(crate) struct BenchServer {
    /// Where it listens: `http://127.0.0.1:<port>`.
    pub(crate) base_url: String,
    /// The bench key's secret (an `engine` key), for `authorization: Bearer …`.
    pub(crate) secret: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl BenchServer {
    /// Stops taking requests and waits for the server to finish (at most its shutdown deadline).
    pub(crate) async fn stop(self) -> Result<(), BenchError> {
        // The server may have ended already; its task then says why.
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(BenchError::Setup(format!("the bench's hoard serve failed: {error}"))),
            Err(error) => Err(BenchError::Setup(format!("the bench's hoard serve task failed: {error}"))),
        }
    }
}

/// Starts `hoard serve` on `store` and connects a remote store to it.
async fn start(store: SharedStore) -> Result<(BenchServer, SharedStore), BenchError> {
    let server = start_server(store).await?;
    match RemoteStore::connect(&server.base_url, &server.secret).await {
        Ok(remote) => Ok((server, Arc::new(remote))),
        Err(error) => {
            let _ = server.stop().await;
            Err(BenchError::Setup(format!("connect the remote store to the bench's hoard serve: {error}")))
        }
    }
}

/// Starts `hoard serve` on `store`, on a loopback port, with the bench's one `engine` key.
pub(crate) async fn start_server(store: SharedStore) -> Result<BenchServer, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| BenchError::Setup(format!("bind a loopback port for hoard serve: {error}")))?;
    let address =
        listener.local_addr().map_err(|error| BenchError::Setup(format!("the server's local address: {error}")))?;
    // A fresh secret per run: nothing outside this process can use the server.
    let secret = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let key = KeyEntry {
        name: BENCH_KEY_NAME.into(),
        scope: Scope::Engine,
        stores: None,
        sha256: None,
        secret: Some(secret.clone()),
        rate_per_second: Some(BENCH_KEY_RATE_PER_SECOND),
        rate_burst: Some(BENCH_KEY_RATE_BURST),
    }
    .into_key()
    .map_err(BenchError::Setup)?;
    let state = AppState::new(store, ServiceConfig { keys: vec![key], ..ServiceConfig::default() });
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        // A dropped sender stops the server as well.
        let _ = stopped.await;
    };
    let task = tokio::spawn(hoard_server::serve(listener, state, shutdown, SERVER_SHUTDOWN_DEADLINE));
    Ok(BenchServer { base_url: format!("http://{address}"), secret, stop, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_is_named_after_its_in_process_workload_and_is_in_the_report_order() {
        for workload in OverHttp::ALL {
            assert_eq!(workload.row(), format!("{NAME}/{}", workload.in_process()));
            assert!(crate::report::WORKLOADS.contains(&workload.row()), "{} missing from WORKLOADS", workload.row());
            assert!(crate::report::WORKLOADS.contains(&workload.in_process()));
        }
    }
}
