//! The `hoard` command: `hoard serve` (the HTTP/JSON service) and operator tools on a database
//! (SQLite file or PostgreSQL URL).
//!
//! Invariant: the CLI parses, opens a store and prints; every rule (limits, conditions, history)
//! is the library's, so the CLI can never store what the library would refuse. Everything it
//! prints goes through `output`, so a closed pipe ends it quietly instead of in a panic.

mod bench;
mod liveops;
mod operator;
mod output;
mod serve;
#[cfg(feature = "sim")]
mod sim;

use clap::{Parser, Subcommand};

/// mimalloc, not glibc's malloc: see the dependency's comment in Cargo.toml.
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The embedded default database, relative to the working directory.
pub const DEFAULT_DATABASE: &str = "hoard-data/hoard.sqlite3";

#[derive(Debug, Parser)]
#[command(name = "hoard", version, about = "hoard: a player-data engine for online games", long_about = None)]
#[cfg_attr(
    not(feature = "sim"),
    command(
        after_help = "`hoard sim` (the simulator) is in builds with the `sim` feature: cargo build --release -p hoard-cli --features sim"
    )
)]
struct Cli {
    /// Database: an SQLite file path or a postgres:// URL. `serve`, `put`, `delete` and
    /// `increment` create it when missing; every other command needs an existing hoard database
    /// and refuses, creating nothing. A file that is not a hoard database is always refused
    /// and left untouched.
    #[arg(long, global = true, env = "HOARD_DB", default_value = DEFAULT_DATABASE)]
    db: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP/JSON service for game servers in any language (see `hoard serve --help`).
    Serve(serve::ServeArgs),
    /// Run simulated game worlds against the engine (or, with `--path http`, hoard serve's HTTP
    /// API) under harsh faults and audit every guarantee (dupes, losses, double grants,
    /// exclusive writers). Exits non-zero on a violation.
    #[cfg(feature = "sim")]
    Sim(sim::SimArgs),
    /// `hoard sim` is left out of this build (it needs tokio's paused test clock and the
    /// library's test hooks): build with `--features sim`.
    #[cfg(not(feature = "sim"))]
    #[command(hide = true, disable_help_flag = true)]
    Sim(SimLeftOut),
    /// Open an existing database and print what it is (refuses, creating nothing, when there is
    /// no hoard database at --db).
    Status,
    /// Print a key's document: value, version, times, attributes, user ids, lease and inbox.
    Get {
        store: String,
        key: String,
        /// Print this past version instead of the current one.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Write a JSON value to a key (`-` reads it from standard input).
    Put {
        store: String,
        key: String,
        /// JSON text, or `-` for standard input.
        value: String,
        /// Only write if the key is at this version (compare-and-set).
        #[arg(long, conflicts_with = "if_absent")]
        if_version: Option<u64>,
        /// Only write if the key holds no value.
        #[arg(long)]
        if_absent: bool,
        /// Replace the key's attributes with this JSON object.
        #[arg(long)]
        attributes: Option<String>,
        /// Replace the key's user ids (comma-separated), for data-deletion requests.
        #[arg(long, value_delimiter = ',')]
        user_ids: Option<Vec<String>>,
        /// Write even while a session holds the key: the key is first taken from its holder, which
        /// is fenced out and can never overwrite this write.
        #[arg(long)]
        force: bool,
        /// Allow writing one of hoard's internal stores (`hoard.*`: trade records, receipts,
        /// idempotency records, API keys …), where a hand-made record can forge or break one.
        #[arg(long)]
        write_internal_store: bool,
    },
    /// Delete a key's value, leaving a tombstone in its history.
    Delete {
        store: String,
        key: String,
        /// Only delete if the key is at this version (compare-and-set).
        #[arg(long)]
        if_version: Option<u64>,
        /// Delete even while a session holds the key: the key is first taken from its holder,
        /// which is fenced out.
        #[arg(long)]
        force: bool,
        /// Allow deleting from one of hoard's internal stores (`hoard.*`).
        #[arg(long)]
        write_internal_store: bool,
    },
    /// Add an integer to a key holding an integer (absent counts as 0).
    Increment {
        store: String,
        key: String,
        #[arg(allow_negative_numbers = true)]
        by: i64,
        /// Allow writing one of hoard's internal stores (`hoard.*`).
        #[arg(long)]
        write_internal_store: bool,
    },
    /// List keys holding a value, in byte order.
    List {
        store: String,
        #[arg(long, default_value = "")]
        prefix: String,
        /// Start after this key (the `next_after` of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Page size (up to the store's page-size limit).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// List a key's versions, newest first.
    History {
        store: String,
        key: String,
        /// List versions older than this one.
        #[arg(long)]
        before: Option<u64>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Roll a key back: write a past version as its new version. Refused while a session holds
    /// the key, unless --force, which first takes the key from its holder (fencing it out).
    Restore {
        store: String,
        key: String,
        version: u64,
        #[arg(long)]
        force: bool,
        /// Allow restoring a key of one of hoard's internal stores (`hoard.*`).
        #[arg(long)]
        write_internal_store: bool,
    },
    /// Free a key a session still holds (a stuck session). The holder is fenced out: it can
    /// never write this key again.
    Release {
        store: String,
        key: String,
        /// Allow releasing a key of one of hoard's internal stores (`hoard.*`).
        #[arg(long)]
        write_internal_store: bool,
    },
    /// Remove history the retention policy no longer keeps now (every version for an hour, the
    /// last of each hour for a day, of each day for 30 days); engines and `hoard serve` also prune
    /// in the background.
    Prune,
    /// Measure hoard beside plain-SQL baselines on this machine (table, --json, SVG plots).
    Bench(bench::BenchArgs),
    /// Find every key carrying a platform user id (documents' user ids), a page at a time.
    FindUser {
        user_id: String,
        /// The `next_after` of the previous page: its store …
        #[arg(long)]
        after_store: Option<String>,
        /// … and its key.
        #[arg(long)]
        after_key: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Find which profiles hold an item (a member of a declared members or keys index).
    FindItem {
        store: String,
        index: String,
        member: String,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Declare an index on a JSON path of a store (kind: number, members or keys) and fill it;
    /// saves keep it in their own commit from then on.
    Index { store: String, name: String, kind: String, path: String },
    /// The highest values of a number index (a leaderboard).
    Top {
        store: String,
        index: String,
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// Erase every key carrying a user id, with its history, index entries, trade log entries and
    /// the payloads of its trade records and receipts; prints the tombstone kept.
    Erase {
        #[arg(long)]
        user_id: String,
        /// Why (kept in the tombstone).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Read the operators' audit log, oldest first.
    Audit {
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Inspect cross-server trades: one trade by id, or the trades with value still in escrow.
    #[command(subcommand)]
    Trade(TradeCommand),
}

/// `hoard trade …`: read only; nothing here settles or aborts a trade.
#[derive(Debug, Subcommand)]
enum TradeCommand {
    /// Print a trade: status, creation time and deadline (store clock), prepared parties, abort
    /// reason, each leg with the escrow it still holds, and each party's key holder, epoch,
    /// whether that holder is alive and whether the party's profile still marks the trade pending.
    Show { trade_id: String },
    /// List the trades with value still in escrow (pending, or decided and not yet settled by
    /// every party), with status, deadline and whether they are pending past it.
    Stuck {
        /// The `next_after` of the previous page (a trade id).
        #[arg(long)]
        after: Option<String>,
        /// Trades per page (at most 100).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// `hoard sim` in a build without it: takes any arguments, to answer with how to get it.
#[cfg(not(feature = "sim"))]
#[derive(Debug, clap::Args)]
struct SimLeftOut {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    arguments: Vec<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Each simulated world builds its own single-threaded runtime (determinism), so the
    // simulator runs outside the operator's runtime.
    #[cfg(feature = "sim")]
    if let Command::Sim(args) = cli.command {
        return sim::run(&cli.db, &args);
    }
    #[cfg(not(feature = "sim"))]
    if let Command::Sim(_) = cli.command {
        eprintln!(
            "error: this hoard was built without `hoard sim` (it runs on tokio's paused test clock, which release builds leave out); build it with `cargo build --release -p hoard-cli --features sim`, or run `cargo run --release -p hoard-cli --features sim -- sim --seeds 100`"
        );
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            output::print_stderr(&format!("error: cannot start the async runtime: {error}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Command::Bench(args) => runtime.block_on(bench::run(&cli.db, args)),
        Command::Serve(args) => runtime.block_on(serve::run(&cli.db, args)).map(|()| std::process::ExitCode::SUCCESS),
        command => runtime.block_on(operator::run(&cli.db, command)),
    };
    match outcome {
        Ok(code) => code,
        // The reader of standard output stopped reading (`hoard history … | head`): what the
        // command did is done, and there is no one left to tell.
        Err(error) if output::is_standard_output_closed(&error) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            output::print_stderr(&format!("error: {error:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}
