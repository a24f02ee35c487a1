//! `hoard sim`: parses the simulator's flags, runs the sweep (with a progress bar on stderr) and
//! prints the human summary or JSON.
//!
//! Invariant: every rule of the world and the audit is `hoard-sim`'s; this file only maps flags
//! to a `SimConfig` and a report to text and an exit code (non-zero on any violation).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use hoard_sim::{FaultRates, SimConfig, SimPath, StoreChoice, Strategy, sweep};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::DEFAULT_DATABASE;
use crate::output::{is_standard_output_closed, print_stderr, print_stdout};

/// Where sim worlds go on SQLite when `--db` was left at the operator's default database.
pub const SIM_SQLITE_DEFAULT: &str = "hoard-data/sim.sqlite3";
/// Default simulated seconds of play on the memory store.
pub const DURATION_SECONDS_MEMORY_DEFAULT: u64 = 120;
/// Default seconds of play on a real database (real time).
pub const DURATION_SECONDS_DATABASE_DEFAULT: u64 = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// hoard: the engine in process, or hoard's own HTTP client over `--path http`.
    Hoard,
    /// In process: load on join, unconditional saves, no lock (a control).
    Naive,
    /// In process: a lease taken on join but never checked by saves (a control).
    Unfenced,
    /// In process: a lock judged by each server's own skewed clock (a control).
    SkewedClock,
    /// Over HTTP: a client that never adopts the values answers carry, against a service
    /// weakened to fence session writes by the lease alone (a control).
    NoAdopt,
    /// Over HTTP: hoard's client retrying lost value moves with fresh ids (a control).
    FreshIds,
    /// The engine (or, over HTTP, hoard's client), but a cross-server trade whose deciding record
    /// write failed (over HTTP: whose prepare's first attempt went unanswered) is taken as not
    /// committed and the party refunded (a control).
    RecordFailureAsAbort,
    /// In process: the engine, but a receiver takes the other party's escrow before the trade
    /// is decided (a control).
    EarlyEscrowRelease,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PathArg {
    /// Each game server links the engine.
    InProcess,
    /// Each game server is a stateless HTTP client of an in-process `hoard serve` (memory
    /// store only; replayable).
    Http,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreArg {
    Memory,
    Sqlite,
    Postgres,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// The first world's seed (printed; the same seed replays the same world on memory).
    /// Default: drawn from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// How many worlds to run, seeds `seed`, `seed + 1`, ...
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Game servers per world.
    #[arg(long, default_value_t = 4)]
    servers: usize,
    /// Players per world.
    #[arg(long, default_value_t = 40)]
    players: usize,
    /// Seconds of play (simulated on memory, real on a database); default 120 on memory, 20
    /// on a database.
    #[arg(long)]
    duration: Option<u64>,
    /// The design the game servers run: hoard, or a control that must be caught.
    #[arg(long, value_enum, default_value_t = StrategyArg::Hoard)]
    strategy: StrategyArg,
    /// How game servers reach their data: the engine in process, or the documented HTTP API of
    /// an in-process `hoard serve` (with lost answers, late duplicates and service restarts).
    #[arg(long, value_enum, default_value_t = PathArg::InProcess)]
    path: PathArg,
    /// Where the data lives: memory (paused time, replayable), or the --db SQLite file or
    /// PostgreSQL URL (real time).
    #[arg(long, value_enum, default_value_t = StoreArg::Memory)]
    store: StoreArg,
    /// Worlds run at once (each on its own thread).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print the figures as JSON on stdout (no progress bar).
    #[arg(long)]
    json: bool,
    /// No faults at all (overrides the rates below).
    #[arg(long)]
    no_faults: bool,
    /// In process: store writes failing before they apply (probability per call).
    /// (Over HTTP the faults are the network's and the service's: the flags below.)
    #[arg(long)]
    error_before_apply: Option<f64>,
    /// In process: store writes applying with the answer lost (probability per call).
    #[arg(long)]
    error_after_apply: Option<f64>,
    /// In process: store writes lost on the way with the answer "unknown" (probability per call).
    #[arg(long)]
    unknown_without_apply: Option<f64>,
    /// In process: store reads failing (probability per call).
    #[arg(long)]
    read_error: Option<f64>,
    /// In process: store latency spikes of up to 2 s (probability per call).
    #[arg(long)]
    latency_spike: Option<f64>,
    /// In process: notifications lost (probability per notification).
    #[arg(long)]
    notification_loss: Option<f64>,
    /// Server crashes per minute, world-wide.
    #[arg(long)]
    crashes_per_minute: Option<f64>,
    /// Server freezes longer than a lease per minute, world-wide.
    #[arg(long)]
    pauses_per_minute: Option<f64>,
    /// In process: chance each party's part in a cross-server trade arms a crash or freeze just
    /// before or after one of its server's commits of the trade (escrow, decision, leg).
    #[arg(long)]
    cross_trade_step_faults: Option<f64>,
    /// `--path http`: requests applied whose answer is lost (probability per request).
    #[arg(long)]
    http_answer_lost: Option<f64>,
    /// `--path http`: requests lost on the way, never applied (probability per request).
    #[arg(long)]
    http_request_lost: Option<f64>,
    /// `--path http`: requests delivered twice, the copy up to 3 s later (probability).
    #[arg(long)]
    http_duplicated: Option<f64>,
    /// `--path http`: restarts of the `hoard serve` process per minute.
    #[arg(long)]
    serve_restarts_per_minute: Option<f64>,
}

fn strategy(arg: StrategyArg) -> Strategy {
    match arg {
        StrategyArg::Hoard => Strategy::Hoard,
        StrategyArg::Naive => Strategy::Naive,
        StrategyArg::Unfenced => Strategy::Unfenced,
        StrategyArg::SkewedClock => Strategy::SkewedClock,
        StrategyArg::NoAdopt => Strategy::NoAdopt,
        StrategyArg::FreshIds => Strategy::FreshIds,
        StrategyArg::RecordFailureAsAbort => Strategy::RecordFailureAsAbort,
        StrategyArg::EarlyEscrowRelease => Strategy::EarlyEscrowRelease,
    }
}

fn faults(args: &SimArgs) -> FaultRates {
    let mut rates = if args.no_faults { FaultRates::none() } else { FaultRates::harsh() };
    let set = |target: &mut f64, value: Option<f64>| {
        if let Some(value) = value {
            *target = value;
        }
    };
    set(&mut rates.error_before_apply, args.error_before_apply);
    set(&mut rates.error_after_apply, args.error_after_apply);
    set(&mut rates.unknown_without_apply, args.unknown_without_apply);
    set(&mut rates.read_error, args.read_error);
    set(&mut rates.latency_spike, args.latency_spike);
    set(&mut rates.notification_loss, args.notification_loss);
    set(&mut rates.crashes_per_minute, args.crashes_per_minute);
    set(&mut rates.pauses_per_minute, args.pauses_per_minute);
    set(&mut rates.cross_trade_step_faults, args.cross_trade_step_faults);
    set(&mut rates.http_answer_lost, args.http_answer_lost);
    set(&mut rates.http_request_lost, args.http_request_lost);
    set(&mut rates.http_duplicated, args.http_duplicated);
    set(&mut rates.serve_restarts_per_minute, args.serve_restarts_per_minute);
    rates
}

fn config(db: &str, args: &SimArgs) -> Result<SimConfig, String> {
    let mut config = SimConfig::default_world(strategy(args.strategy));
    config.path = match args.path {
        PathArg::InProcess => SimPath::InProcess,
        PathArg::Http => SimPath::Http,
    };
    config.servers = args.servers;
    config.players = args.players;
    config.faults = faults(args);
    let memory = args.store == StoreArg::Memory;
    let seconds = args.duration.unwrap_or(if memory {
        DURATION_SECONDS_MEMORY_DEFAULT
    } else {
        DURATION_SECONDS_DATABASE_DEFAULT
    });
    config.duration_ms = seconds.saturating_mul(1_000);
    match args.store {
        StoreArg::Memory => {}
        StoreArg::Sqlite => {
            if hoard::store::is_postgres_location(db) {
                return Err("--store sqlite needs --db to be a file path, not a postgres:// URL".into());
            }
            let location = if db == DEFAULT_DATABASE { SIM_SQLITE_DEFAULT } else { db };
            config.store = StoreChoice::Database { location: location.to_string() };
        }
        StoreArg::Postgres => {
            if !hoard::store::is_postgres_location(db) {
                return Err("--store postgres needs --db postgres://user@host/database".into());
            }
            config.store = StoreChoice::Database { location: db.to_string() };
        }
    }
    if !memory {
        // Real time: keep the waits short (a freeze still outlasts the 5 s lease).
        config.settle_ms = 5_000;
        config.shutdown_deadline_ms = 5_000;
        config.pause_ms_min = 6_000;
        config.pause_ms_max = 9_000;
        config.restart_ms_max = 3_000;
    }
    config.check()?;
    Ok(config)
}

fn progress_bar(args: &SimArgs) -> ProgressBar {
    if args.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(args.seeds), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} worlds {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

pub fn run(db: &str, args: &SimArgs) -> ExitCode {
    let config = match config(db, args) {
        Ok(config) => config,
        Err(error) => {
            print_stderr(&format!("error: {error}"));
            return ExitCode::FAILURE;
        }
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
    });
    if !args.json {
        print_stderr(&format!(
            "hoard sim: seed {seed}, {} world(s), strategy {}, path {}, {} servers, {} players",
            args.seeds,
            config.strategy.name(),
            config.path.name(),
            config.servers,
            config.players
        ));
    }
    let threads = if config.store == StoreChoice::Memory { args.threads } else { 1 };
    let bar = progress_bar(args);
    let started = std::time::Instant::now();
    let on_world = |world: &hoard_sim::WorldReport| {
        bar.inc(1);
        if world.figures.violations > 0 {
            bar.set_message(format!("violations in seed {}", world.seed));
        }
    };
    let report = sweep(&config, seed, args.seeds, threads, &on_world);
    bar.finish_and_clear();
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let printed = if args.json {
        let seconds = (elapsed_ms as f64 / 1000.0).max(0.001);
        let mut value = serde_json::to_value(&report).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("elapsed_ms".into(), elapsed_ms.into());
            object.insert("worlds_per_second".into(), (report.worlds as f64 / seconds).into());
            object.insert("ops_per_second".into(), (report.ops as f64 / seconds).into());
        }
        serde_json::to_string_pretty(&value)
            .map(|text| text + "\n")
            .map_err(anyhow::Error::from)
            .and_then(|text| print_stdout(&text))
    } else {
        print_stdout(&report.summary(elapsed_ms))
    };
    match printed {
        Ok(()) => {}
        // A closed pipe changes nothing about the audit: the exit code still reports it.
        Err(error) if is_standard_output_closed(&error) => {}
        Err(error) => {
            print_stderr(&format!("error: {error:#}"));
            return ExitCode::FAILURE;
        }
    }
    if report.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
