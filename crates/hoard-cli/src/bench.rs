//! `hoard bench`: runs hoard-bench's workloads and prints the table (or `--json`), writing SVG
//! plots to `--out`.
//!
//! Invariant: the bench never touches the database `--db` names: it works in a fresh SQLite file
//! beside it (or in `hoard-data/` by default) and in a fresh schema of the PostgreSQL server,
//! both removed afterwards. Progress goes to stderr; stdout is only the table or the JSON.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use hoard::store::is_postgres_location;
use hoard_bench::{BenchConfig, BenchSize, TargetSpec};

use crate::output::print_stdout;

/// The PostgreSQL server used when `--db` is not a postgres:// URL.
pub const DEFAULT_BENCH_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreChoice {
    Sqlite,
    Postgres,
    Both,
    /// The in-memory store (no durability, no baselines): for trying the bench itself.
    Memory,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which stores to measure.
    #[arg(long, value_enum, default_value_t = StoreChoice::Both)]
    store: StoreChoice,
    /// A smaller run of every workload (under two minutes in a release build).
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// The smallest run, for tests (seconds, even in a debug build).
    #[arg(long)]
    smoke: bool,
    /// Print the report as JSON (every figure) instead of the table.
    #[arg(long)]
    json: bool,
    /// Folder for the SVG plots.
    #[arg(long, default_value = "hoard-data/bench")]
    out: PathBuf,
    /// PostgreSQL server to measure (a fresh schema is made and dropped) when --db is not a
    /// postgres:// URL.
    #[arg(long, env = "HOARD_BENCH_POSTGRES_URL", default_value = DEFAULT_BENCH_POSTGRES_URL)]
    postgres_url: String,
    /// Hide progress bars.
    #[arg(long)]
    no_progress: bool,
    /// Run only these workloads (comma-separated), e.g. to profile one; `over_http` also runs the
    /// in-process workloads it is compared with, `autosave_sync` (the autosave storm through
    /// batched `POST /v1/holders/{holder}/sync`) the in-process autosave storm.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(hoard_bench::workloads::SELECTABLE))]
    only: Vec<String>,
}

/// `--db` decides the places: a postgres:// URL is the PostgreSQL server to use; an SQLite path
/// puts the bench's own SQLite file in the same folder.
fn targets(location: &str, args: &BenchArgs) -> Vec<TargetSpec> {
    let (sqlite_folder, postgres_url) = if is_postgres_location(location) {
        (PathBuf::from("hoard-data"), location.to_string())
    } else {
        let folder = Path::new(location).parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf);
        (folder.unwrap_or_else(|| PathBuf::from(".")), args.postgres_url.clone())
    };
    let sqlite = TargetSpec::Sqlite { folder: sqlite_folder };
    let postgres = TargetSpec::Postgres { url: postgres_url };
    match args.store {
        StoreChoice::Sqlite => vec![sqlite],
        StoreChoice::Postgres => vec![postgres],
        StoreChoice::Both => vec![sqlite, postgres],
        StoreChoice::Memory => vec![TargetSpec::Memory],
    }
}

pub async fn run(location: &str, args: BenchArgs) -> Result<ExitCode> {
    let size = match (args.smoke, args.quick) {
        (true, _) => BenchSize::Smoke,
        (false, true) => BenchSize::Quick,
        (false, false) => BenchSize::Full,
    };
    let config =
        BenchConfig { size, targets: targets(location, &args), progress: !args.no_progress, only: args.only.clone() };
    let report = hoard_bench::run(&config).await.context("the benchmark could not run")?;
    let plots = hoard_bench::svg::write_plots(&report, &args.out)
        .with_context(|| format!("cannot write the plots to {}", args.out.display()))?;
    if args.json {
        print_stdout(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        let plots: Vec<String> = plots.iter().map(|path| path.display().to_string()).collect();
        print_stdout(&format!("{}plots: {}\n", report.table(), plots.join(", ")))?;
    }
    Ok(ExitCode::SUCCESS)
}
