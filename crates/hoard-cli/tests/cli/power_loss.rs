//! Power loss on the SQLite store: a writer process commits transfers as fast as it can and logs
//! each one the store acknowledged; it is killed with SIGKILL at a random moment; the database
//! folder is then rebuilt as a disk that lost power would leave it, reopened, and audited.
//!
//! The disk model (`durable_shim.c`, an LD_PRELOAD shim compiled here with gcc):
//! - a file's durable content is what it held when fsync or fdatasync last succeeded on it;
//! - a folder's durable names are those it held when it was last fsynced (a file created, or
//!   deleted, after that may or may not be there: here it is gone, or back);
//! - everything written later is lost ("strict" rounds), or, in "torn" rounds, each 4 KiB page
//!   written later survives or not at random, independently (so a later write can be half there);
//! - a write never corrupts a page it did not write, and an fsync that returned is not undone (the
//!   disk honours flushes: no lying write cache).
//!
//! The audit: `PRAGMA integrity_check` is ok; hoard opens the file; every acknowledged commit is
//! in the history of every key it wrote, with its commit id; no version holds a commit the writer
//! never attempted; and the balances still sum to zero (each commit is a transfer, so a commit
//! that survived in part would show). The control runs the same writer with
//! `synchronous=NORMAL` (the documented option that may drop the last acknowledged commits on
//! power loss) and must lose some: a model or an audit that could not see a loss would fail it.
//!
//! `HOARD_POWER_LOSS_ROUNDS` sets the rounds of the hoard run (default `ROUNDS_DEFAULT`). Without
//! gcc this is skipped loudly, and under CI=true it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hoard::store::sqlite::{SqliteOptions, SqliteStore, SqliteSynchronous};
use hoard::store::{Commit, CommitOutcome, DocId, Store, ValueOp, VersionQuery, Write, get};

/// Rounds of the hoard run unless `HOARD_POWER_LOSS_ROUNDS` says otherwise.
const ROUNDS_DEFAULT: usize = 12;
/// Rounds of the synchronous=NORMAL control.
const CONTROL_ROUNDS: usize = 4;
/// Players whose balances the transfers move between.
const KEYS: usize = 16;
/// Writer tasks committing at once (so group commits carry several commits per fsync).
const WRITER_TASKS: usize = 8;
/// WAL pages after which the writer checkpoints: small, so checkpoints (and their fsyncs of the
/// database file) fall inside the rounds too.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 64;
/// The page size of the torn-write model.
const PAGE_BYTES: usize = 4096;
/// Acknowledgements a round waits for before it may kill, at least and at most.
const ACKS_BEFORE_KILL_MIN: u64 = 30;
const ACKS_BEFORE_KILL_MAX: u64 = 400;
/// The longest a round waits for its writer.
const WRITER_WAIT_S: u64 = 60;
const STORE: &str = "players";

/// A small deterministic generator (xorshift64*): the rounds replay from their seed (the crash
/// rounds use it too).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

fn key_name(index: u64) -> String {
    format!("player-{index:02}")
}

fn doc_id(key: &str) -> DocId {
    DocId::parse(STORE, key).expect("a valid key")
}

/// The writer: commits transfers between random players until it is killed, and appends
/// `try <id>` before and `ack <id> <key>:<version>,…` after each acknowledged commit to its log.
#[test]
#[ignore = "the writer process of the power-loss tests, which start it themselves"]
fn power_loss_writer_process() {
    let db = std::env::var("HOARD_POWER_LOSS_WRITER_DB").expect("started by the power-loss tests");
    let log = std::env::var("HOARD_POWER_LOSS_WRITER_LOG").expect("a log path");
    let synchronous = match std::env::var("HOARD_POWER_LOSS_WRITER_SYNCHRONOUS").as_deref() {
        Ok("normal") => SqliteSynchronous::Normal,
        _ => SqliteSynchronous::Full,
    };
    let seed: u64 = std::env::var("HOARD_POWER_LOSS_WRITER_SEED").expect("a seed").parse().expect("a number");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let options = SqliteOptions {
            path: PathBuf::from(db),
            synchronous,
            wal_autocheckpoint_pages: WAL_AUTOCHECKPOINT_PAGES,
            must_exist: true,
            ..SqliteOptions::default()
        };
        let store = std::sync::Arc::new(SqliteStore::open(options).await.expect("open the store"));
        let log = std::sync::Arc::new(std::sync::Mutex::new(
            std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open the log"),
        ));
        let append = |log: &std::sync::Mutex<std::fs::File>, line: String| {
            // One write per line on an O_APPEND file: lines never interleave, and a line the
            // kill cuts short is not a whole line.
            log.lock().expect("log lock").write_all(line.as_bytes()).expect("append to the log");
        };
        append(&log, "ready\n".to_string());
        let mut tasks = Vec::new();
        for task in 0..WRITER_TASKS as u64 {
            let (store, log) = (store.clone(), log.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng::new(seed ^ (task + 1).wrapping_mul(0xA24B_AED4_963E_E407));
                loop {
                    let from = rng.below(KEYS as u64);
                    let to = (from + 1 + rng.below(KEYS as u64 - 1)) % KEYS as u64;
                    let amount = 1 + i64::try_from(rng.below(100)).expect("small");
                    let commit = Commit::new(vec![
                        Write::new(doc_id(&key_name(from))).value(ValueOp::Increment(-amount)),
                        Write::new(doc_id(&key_name(to))).value(ValueOp::Increment(amount)),
                    ]);
                    append(&log, format!("try {}\n", commit.id));
                    match store.commit(commit.clone()).await {
                        Ok(CommitOutcome::Committed { commit_id, applied, .. }) => {
                            let versions: Vec<String> =
                                applied.iter().map(|a| format!("{}:{}", a.id.key.as_str(), a.version)).collect();
                            append(&log, format!("ack {commit_id} {}\n", versions.join(",")));
                        }
                        Ok(CommitOutcome::Conflict(conflict)) => {
                            panic!("an unconditional transfer conflicted: {conflict}")
                        }
                        Err(error) => append(&log, format!("error {} {error}\n", commit.id)),
                    }
                }
            }));
        }
        // The tasks run until the test kills the process; one that ends has failed.
        let (ended, _, _) = futures_util::future::select_all(tasks).await;
        panic!("a writer task ended: {ended:?}");
    });
}

/// How the folder is rebuilt after the kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Restore {
    /// Only what was durable.
    Strict,
    /// What was durable, plus each later-written page with probability one half.
    Torn,
}

/// What one round found.
#[derive(Debug, Default)]
struct Round {
    acknowledged: usize,
    attempted: usize,
    lost: usize,
    lost_examples: Vec<String>,
    invented: usize,
    versions_stored: usize,
    balance_sum: i64,
    integrity: String,
    /// Successful flushes the writer made, by file (`(folder)` for the folder itself).
    syncs: BTreeMap<String, usize>,
    /// Torn rounds: pages written after their file's last flush that the rebuild kept.
    later_pages_kept: usize,
}

fn gcc_shim(folder: &Path) -> Option<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/durable_shim.c");
    let library = folder.join("libdurable_shim.so");
    let compiled = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&library)
        .arg(&source)
        .args(["-ldl", "-lpthread"])
        .output();
    match compiled {
        Ok(output) if output.status.success() => Some(library),
        Ok(output) => panic!("the shim does not compile: {}", String::from_utf8_lossy(&output.stderr)),
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("gcc is missing and CI=true: the power-loss test must run in CI")
        }
        Err(_) => {
            eprintln!("\n*** SKIPPED: gcc is not installed; the power-loss test was not run ***\n");
            None
        }
    }
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// Makes the database: opened and closed once, in this process, then every file in the folder
/// is taken as durable (the machine had been up long before the round).
fn make_database(live: &Path, shadow: &Path) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let options = SqliteOptions { path: live.join("hoard.sqlite3"), ..SqliteOptions::default() };
        let store = SqliteStore::open(options).await.expect("create the database");
        store.close().await;
    });
    copy_folder(live, shadow);
    let names: Vec<String> = std::fs::read_dir(live)
        .expect("list")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned() + "\n")
        .collect();
    std::fs::write(shadow.join(".manifest"), names.concat()).expect("manifest");
}

/// The folder a disk that lost power would leave: every durable name with its durable content,
/// plus (torn) a random half of the pages written since. Returns how many such pages it kept.
fn rebuild(live: &Path, shadow: &Path, crashed: &Path, restore: Restore, rng: &mut Rng) -> usize {
    let mut later_pages_kept = 0;
    std::fs::create_dir_all(crashed).expect("create");
    let manifest = std::fs::read_to_string(shadow.join(".manifest")).expect("the manifest");
    for name in manifest.lines().filter(|name| !name.is_empty()) {
        let mut image = std::fs::read(shadow.join(name)).unwrap_or_default();
        if restore == Restore::Torn {
            let later = std::fs::read(live.join(name)).unwrap_or_default();
            let pages = later.len().div_ceil(PAGE_BYTES);
            for page in 0..pages {
                let start = page * PAGE_BYTES;
                let end = (start + PAGE_BYTES).min(later.len());
                let changed = image.get(start..end) != Some(&later[start..end]);
                if changed && rng.below(2) == 1 {
                    if image.len() < end {
                        image.resize(end, 0);
                    }
                    image[start..end].copy_from_slice(&later[start..end]);
                    later_pages_kept += 1;
                }
            }
        }
        std::fs::write(crashed.join(name), image).expect("write the rebuilt file");
    }
    later_pages_kept
}

/// Commit id → the key:version pairs it was acknowledged with.
type Acknowledged = BTreeMap<String, Vec<(String, u64)>>;

/// The acknowledged commits, and every attempted commit id.
fn read_writer_log(log: &Path) -> (Acknowledged, BTreeSet<String>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut acknowledged = BTreeMap::new();
    let mut attempted = BTreeSet::new();
    // A line the kill cut short has no newline: it is not counted.
    let whole_lines = text.rsplit_once('\n').map_or("", |(whole, _)| whole);
    for line in whole_lines.lines() {
        let mut words = line.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("try"), Some(id), None) => {
                attempted.insert(id.to_string());
            }
            (Some("ack"), Some(id), Some(versions)) => {
                let versions = versions
                    .split(',')
                    .map(|pair| {
                        let (key, version) = pair.rsplit_once(':').expect("key:version");
                        (key.to_string(), version.parse().expect("a version"))
                    })
                    .collect();
                acknowledged.insert(id.to_string(), versions);
            }
            _ => {}
        }
    }
    (acknowledged, attempted)
}

fn count_acknowledgements(log: &Path) -> u64 {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|line| line.starts_with("ack ")).count() as u64
}

/// Reopens the rebuilt database and checks it against the writer's log.
fn audit(crashed: &Path, log: &Path) -> Round {
    let path = crashed.join("hoard.sqlite3");
    let connection = rusqlite::Connection::open(&path).expect("SQLite opens the rebuilt file");
    let integrity: String =
        connection.query_row("PRAGMA integrity_check", [], |row| row.get(0)).expect("integrity_check");
    drop(connection);
    let (acknowledged, attempted) = read_writer_log(log);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (stored, balance_sum) = runtime.block_on(async {
        let options = SqliteOptions { path: path.clone(), must_exist: true, ..SqliteOptions::default() };
        let store = SqliteStore::open(options).await.expect("hoard opens the rebuilt file");
        let mut stored: BTreeMap<(String, u64), String> = BTreeMap::new();
        let mut balance_sum = 0i64;
        for index in 0..KEYS as u64 {
            let key = key_name(index);
            let id = doc_id(&key);
            let document = get(&store, &id).await.expect("read");
            balance_sum += document.value.as_ref().and_then(serde_json::Value::as_i64).unwrap_or(0);
            let mut before = None;
            loop {
                let query = VersionQuery { before_version: before, limit: store.limits().page_size_max };
                let page = store.list_versions(&id, &query).await.expect("history");
                let Some(last) = page.last() else { break };
                before = Some(last.version);
                for info in &page {
                    stored.insert((key.clone(), info.version), info.commit_id.to_string());
                }
            }
            let versions: Vec<u64> =
                stored.range((key.clone(), 0)..=(key.clone(), u64::MAX)).map(|((_, version), _)| *version).collect();
            let contiguous: Vec<u64> = (1..=document.version).collect();
            assert_eq!(versions, contiguous, "{key}: its history has every version up to its current one");
        }
        store.close().await;
        (stored, balance_sum)
    });
    let mut round = Round {
        acknowledged: acknowledged.len(),
        attempted: attempted.len(),
        versions_stored: stored.len(),
        balance_sum,
        integrity,
        ..Round::default()
    };
    for (commit_id, versions) in &acknowledged {
        let survived = versions.iter().all(|(key, version)| stored.get(&(key.clone(), *version)) == Some(commit_id));
        if !survived {
            round.lost += 1;
            if round.lost_examples.len() < 3 {
                round.lost_examples.push(format!("{commit_id} at {versions:?}"));
            }
        }
    }
    round.invented = stored.values().filter(|commit_id| !attempted.contains(*commit_id)).count();
    round
}

fn run_round(shim: &Path, synchronous: &str, restore: Restore, seed: u64) -> Round {
    let folder = tempfile::tempdir().expect("folder");
    let live = folder.path().join("live");
    let shadow = folder.path().join("shadow");
    let crashed = folder.path().join("crashed");
    let log = folder.path().join("writer.log");
    std::fs::create_dir_all(&live).expect("create");
    std::fs::create_dir_all(&shadow).expect("create");
    let live = live.canonicalize().expect("canonical");
    make_database(&live, &shadow);
    let mut rng = Rng::new(seed);
    let kill_after = ACKS_BEFORE_KILL_MIN + rng.below(ACKS_BEFORE_KILL_MAX - ACKS_BEFORE_KILL_MIN);
    let mut writer = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "power_loss::power_loss_writer_process", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("LD_PRELOAD", shim)
        .env("HOARD_DURABLE_DIR", &live)
        .env("HOARD_DURABLE_SHADOW", &shadow)
        .env("HOARD_POWER_LOSS_WRITER_DB", live.join("hoard.sqlite3"))
        .env("HOARD_POWER_LOSS_WRITER_LOG", &log)
        .env("HOARD_POWER_LOSS_WRITER_SYNCHRONOUS", synchronous)
        .env("HOARD_POWER_LOSS_WRITER_SEED", seed.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the writer");
    let started = Instant::now();
    while count_acknowledgements(&log) < kill_after {
        if let Some(status) = writer.try_wait().expect("wait") {
            let output = writer.wait_with_output().expect("output");
            panic!("the writer stopped by itself ({status}): {}", String::from_utf8_lossy(&output.stderr));
        }
        assert!(started.elapsed() < Duration::from_secs(WRITER_WAIT_S), "the writer made no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    // Land the kill anywhere in the writer's cycle, not just after an acknowledgement.
    std::thread::sleep(Duration::from_micros(rng.below(20_000)));
    writer.kill().expect("SIGKILL the writer");
    let output = writer.wait_with_output().expect("reap the writer");
    assert_eq!(
        output.status.signal(),
        Some(9),
        "the writer died of SIGKILL, not by itself: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let later_pages_kept = rebuild(&live, &shadow, &crashed, restore, &mut rng);
    let mut round = audit(&crashed, &log);
    round.later_pages_kept = later_pages_kept;
    for name in std::fs::read_to_string(shadow.join(".syncs")).unwrap_or_default().lines() {
        *round.syncs.entry(name.to_string()).or_default() += 1;
    }
    round
}

fn rounds_from_environment() -> usize {
    std::env::var("HOARD_POWER_LOSS_ROUNDS").map_or(ROUNDS_DEFAULT, |text| text.parse().expect("a number of rounds"))
}

#[test]
fn acknowledged_commits_survive_power_loss_on_sqlite() {
    let folder = tempfile::tempdir().expect("folder");
    let Some(shim) = gcc_shim(folder.path()) else { return };
    let rounds = rounds_from_environment();
    let (mut acknowledged, mut attempted, mut versions, mut later_pages) = (0, 0, 0, 0);
    let mut syncs: BTreeMap<String, usize> = BTreeMap::new();
    for round_index in 0..rounds {
        let restore = if round_index % 2 == 0 { Restore::Strict } else { Restore::Torn };
        let seed = 1_000 + round_index as u64;
        let round = run_round(&shim, "full", restore, seed);
        eprintln!("power loss, synchronous=FULL, round {round_index} ({restore:?}, seed {seed}): {round:?}");
        assert_eq!(round.integrity, "ok", "round {round_index}: integrity_check");
        assert_eq!(round.lost, 0, "round {round_index}: acknowledged commits lost: {:?}", round.lost_examples);
        assert_eq!(round.invented, 0, "round {round_index}: versions no writer attempted");
        assert_eq!(round.balance_sum, 0, "round {round_index}: a transfer survived in part");
        assert!(round.acknowledged >= ACKS_BEFORE_KILL_MIN as usize, "round {round_index}: the writer wrote");
        acknowledged += round.acknowledged;
        attempted += round.attempted;
        versions += round.versions_stored;
        later_pages += round.later_pages_kept;
        for (name, count) in &round.syncs {
            *syncs.entry(name.clone()).or_default() += count;
        }
    }
    eprintln!(
        "power loss, synchronous=FULL: {rounds} rounds, {attempted} commits attempted, {acknowledged} acknowledged, \
         0 lost; {versions} versions on disk after the rebuilds; {later_pages} pages written after a flush kept by \
         torn rebuilds; flushes by file: {syncs:?}"
    );
    if rounds >= 2 {
        // The rounds must have crossed checkpoints (flushes of the database file itself) and the
        // torn rebuilds must have kept later writes, or they tested less than they say.
        assert!(syncs.get("hoard.sqlite3").is_some_and(|count| *count > 0), "no checkpoint in any round: {syncs:?}");
        assert!(later_pages > 0, "the torn rebuilds kept no later page");
    }
}

#[test]
fn the_power_loss_model_catches_the_losses_of_synchronous_normal() {
    let folder = tempfile::tempdir().expect("folder");
    let Some(shim) = gcc_shim(folder.path()) else { return };
    let (mut acknowledged, mut lost) = (0, 0);
    for round_index in 0..CONTROL_ROUNDS {
        let seed = 2_000 + round_index as u64;
        let round = run_round(&shim, "normal", Restore::Strict, seed);
        eprintln!("power loss, synchronous=NORMAL (control), round {round_index} (seed {seed}): {round:?}");
        // NORMAL keeps the file consistent; it just ends earlier.
        assert_eq!(round.integrity, "ok", "control round {round_index}: integrity_check");
        assert_eq!(round.invented, 0);
        assert_eq!(round.balance_sum, 0, "control round {round_index}: a transfer survived in part");
        acknowledged += round.acknowledged;
        lost += round.lost;
    }
    eprintln!(
        "power loss, synchronous=NORMAL (control): {CONTROL_ROUNDS} rounds, {acknowledged} acknowledged, {lost} lost"
    );
    assert!(lost > 0, "the control lost nothing: the model or the audit cannot see a lost acknowledged commit");
}
