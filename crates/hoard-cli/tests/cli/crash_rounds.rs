//! Crash rounds (issue 16, point 1): real `hoard serve` processes and real game-server processes
//! (`crash_client.py`, driving hoard's Python example client) play sessions, saves, trades and
//! purchases while `kill -9` lands on the servers, and on some clients, at seeded random moments;
//! everything restarts and the clients recover (new sessions after a steal or a lapsed lease,
//! unknown outcomes retried unchanged, owed purchases redelivered with their ids). After the
//! rounds `crash_audit` checks the database against everything the clients' journals say hoard
//! acknowledged, every key must start again within the lease time, and on SQLite
//! `PRAGMA integrity_check` must be ok.
//!
//! A round: start the servers and `CLIENTS` clients; run until a seeded random number of
//! acknowledgements, plus a random delay; kill -9 one or both servers (PostgreSQL) or the one
//! server (SQLite), and each client with probability 1/3; restart them after a short outage, the
//! servers on the same addresses (clients retry through it); run again; kill -9 everything. Configurations: SQLite with one `hoard serve`; PostgreSQL with two
//! sharing one schema, every request (retries included) sent to one of them at random.
//!
//! `HOARD_CRASH_ROUNDS` sets the rounds per configuration (default `ROUNDS_DEFAULT`, for CI);
//! the figures are printed (run with `--nocapture` to see them).

use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hoard::store::{Commit, CommitOutcome, Condition, StoreOptions, Write, open_store};
use serde_json::{Value, json};

use crate::backends;
use crate::crash_audit::{Audit, PLAYERS_STORE, Seeded, audit, read_journals, read_stored};
use crate::power_loss::Rng;
use crate::served::Served;

/// Rounds per configuration unless `HOARD_CRASH_ROUNDS` says otherwise.
const ROUNDS_DEFAULT: usize = 3;
/// Game-server processes per round.
const CLIENTS: usize = 3;
/// Players, the items each is seeded with, and the gold each starts with.
const PLAYERS: usize = 12;
const ITEMS_PER_PLAYER: usize = 3;
const STARTING_GOLD: i64 = 100;
/// The holders' process lease in these rounds: short, so dead clients' keys free up quickly.
const LEASE_TTL_MS: u64 = 3_000;
/// Acknowledgements a phase of a round waits for before its kill, at least and at most beyond
/// it (counted, not timed, so a loaded machine runs the same rounds, only slower), and the
/// random delay after them that lands the kill anywhere in the clients' cycles.
const PHASE_ACKS_MIN: usize = 20;
const PHASE_ACKS_SPREAD: u64 = 80;
const KILL_DELAY_MS_MAX: u64 = 300;
/// The longest a phase may go without reaching its acknowledgements (then the run fails).
const PHASE_WAIT_S_MAX: u64 = 120;
/// How often a phase looks at the journals.
const JOURNAL_POLL_MS: u64 = 20;
/// The longest gap between the kills of two servers.
const KILL_GAP_MS_MAX: u64 = 200;
/// The longest outage between a kill and the restart.
const OUTAGE_MS_MAX: u64 = 800;
/// A client stops by itself after this (the rounds kill it long before).
const CLIENT_RUN_S: u64 = 300;
/// What a key may take to start again after the last kill, beyond the lease: the server's start
/// and the requests themselves.
const RESTART_SLACK_MS: u64 = 10_000;
/// Seeds of the rounds: `SEED_BASE + round`, replayable.
const SEED_BASE: u64 = 16_000;
const GAME: &str = "game-secret-for-crash-rounds";

fn rounds_from_environment() -> usize {
    std::env::var("HOARD_CRASH_ROUNDS").map_or(ROUNDS_DEFAULT, |text| text.parse().expect("a number of rounds"))
}

fn player(index: usize) -> String {
    format!("p{index:02}")
}

fn players() -> Vec<String> {
    (0..PLAYERS).map(player).collect()
}

/// Whether python3 runs; without it the rounds cannot run (fatal under CI=true).
fn python_available() -> bool {
    let ran = Command::new("python3").arg("--version").output();
    if ran.is_ok_and(|output| output.status.success()) {
        return true;
    }
    assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "python3 is missing and CI=true: the crash rounds must run");
    eprintln!("\n*** SKIPPED: python3 is not installed; the crash rounds did not run ***\n");
    false
}

/// Where the rounds run: the database, the servers' environment, and how many servers.
struct Setup {
    name: &'static str,
    db: String,
    schema: Option<String>,
    servers: usize,
}

impl Setup {
    fn environment(&self) -> Vec<(String, String)> {
        let mut environment = vec![
            ("HOARD_API_KEYS".to_string(), format!("game:game_server:{PLAYERS_STORE}:secret:{GAME}")),
            ("HOARD_LEASE_TTL_MS".to_string(), LEASE_TTL_MS.to_string()),
        ];
        if let Some(schema) = &self.schema {
            environment.push(("HOARD_POSTGRES_SCHEMA".to_string(), schema.clone()));
        }
        environment
    }

    fn store_options(&self) -> StoreOptions {
        StoreOptions { postgres_schema: self.schema.clone(), ..StoreOptions::default() }
    }
}

/// The players' starting profiles, written once before the first round; returns what was seeded.
async fn seed_players(setup: &Setup) -> Seeded {
    let store = open_store(&setup.db, setup.store_options()).await.expect("open the store to seed it");
    let mut seeded = Seeded::default();
    let mut writes = Vec::new();
    for index in 0..PLAYERS {
        let items: serde_json::Map<String, Value> = (0..ITEMS_PER_PLAYER)
            .map(|item| {
                let id = format!("item-{}-{item}", player(index));
                seeded.items.insert(id.clone());
                (id, json!({"seeded_with": player(index)}))
            })
            .collect();
        let value = json!({"currencies": {"gold": STARTING_GOLD}, "items": items, "xp": 0, "purchases": {}});
        seeded.gold_total += STARTING_GOLD;
        let id = hoard::store::DocId::parse(PLAYERS_STORE, &player(index)).expect("a key");
        writes.push(Write::put(id, value).when(Condition::Absent));
    }
    let outcome = store.commit(Commit::new(writes)).await.expect("seed the players");
    assert!(matches!(outcome, CommitOutcome::Committed { .. }), "seeding a fresh database: {outcome:?}");
    seeded
}

/// One game-server process (`crash_client.py`); killed with SIGKILL when dropped.
struct Client {
    child: Child,
    stderr: PathBuf,
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Client {
    fn start(folder: &Path, urls: &str, index: usize, incarnation: usize, seed: u64) -> Client {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/crash_client.py");
        let stderr = folder.join(format!("client-{index}-{incarnation}.stderr"));
        let child = Command::new("python3")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg(script)
            .args(["--urls", urls, "--api-key", GAME, "--client", &format!("c{index}")])
            .args(["--incarnation", &incarnation.to_string(), "--seed", &seed.to_string()])
            .arg("--journal")
            .arg(folder.join(format!("journal-c{index}.jsonl")))
            .args(["--players", &players().join(","), "--run-s", &CLIENT_RUN_S.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("a stderr file"))
            .spawn()
            .expect("start a client");
        Client { child, stderr }
    }

    /// Panics with its output if the client stopped by itself (a driver error fails the run).
    fn check_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait") {
            let printed = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            panic!("a crash client stopped by itself ({status}):\n{printed}");
        }
    }

    /// kill -9 (on drop), after checking the client did not die by itself.
    fn kill(mut self) {
        self.check_running();
    }
}

/// Counts the acknowledgements in the clients' journals as they grow (complete lines only,
/// reading each journal from where the last look stopped).
#[derive(Default)]
struct AckCounter {
    read_bytes: BTreeMap<PathBuf, u64>,
    acks: usize,
}

impl AckCounter {
    fn refresh(&mut self, folder: &Path) -> usize {
        for index in 0..CLIENTS {
            let path = folder.join(format!("journal-c{index}.jsonl"));
            let Ok(mut file) = std::fs::File::open(&path) else { continue };
            let read = self.read_bytes.entry(path).or_default();
            let mut fresh = Vec::new();
            file.seek(SeekFrom::Start(*read)).expect("seek in a journal");
            file.read_to_end(&mut fresh).expect("read a journal");
            let Some(end) = fresh.iter().rposition(|byte| *byte == b'\n') else { continue };
            let lines = fresh[..end].split(|byte| *byte == b'\n');
            self.acks += lines.filter(|line| line.starts_with(br#"{"t":"ack""#)).count();
            *read += end as u64 + 1;
        }
        self.acks
    }
}

/// Lets the clients run until `acks` more acknowledgements are journaled, then a random delay.
fn run_phase(folder: &Path, counter: &mut AckCounter, clients: &mut [Option<Client>], acks: usize, rng: &mut Rng) {
    let target = counter.refresh(folder) + acks;
    let started = Instant::now();
    while counter.refresh(folder) < target {
        for client in clients.iter_mut().flatten() {
            client.check_running();
        }
        assert!(
            started.elapsed() < Duration::from_secs(PHASE_WAIT_S_MAX),
            "the clients journaled {} of {acks} acknowledgements in {PHASE_WAIT_S_MAX} s",
            acks + counter.acks - target
        );
        sleep_ms(JOURNAL_POLL_MS);
    }
    sleep_ms(rng.below(KILL_DELAY_MS_MAX));
}

/// What the rounds did, beside what the audit found.
#[derive(Debug, Default)]
struct Kills {
    servers: usize,
    clients: usize,
}

fn sleep_ms(milliseconds: u64) {
    std::thread::sleep(Duration::from_millis(milliseconds));
}

/// One round; `addresses` holds each server's address once it first started.
fn run_round(
    setup: &Setup,
    folder: &Path,
    addresses: &mut Vec<String>,
    incarnations: &mut [usize],
    counter: &mut AckCounter,
    round: usize,
) -> Kills {
    let environment = setup.environment();
    let environment: Vec<(&str, &str)> = environment.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let seed = SEED_BASE + round as u64;
    let mut rng = Rng::new(seed);
    let mut kills = Kills::default();
    let start_server = |index: usize, addresses: &[String]| {
        let listen = addresses.get(index).map_or("127.0.0.1:0", String::as_str);
        Served::start_at(folder, &setup.db, listen, &environment)
    };
    let mut servers: Vec<Option<Served>> = Vec::new();
    for index in 0..setup.servers {
        let served = start_server(index, addresses);
        if addresses.len() <= index {
            addresses.push(served.address.to_string());
        }
        servers.push(Some(served));
    }
    let urls: Vec<String> = addresses.iter().map(|address| format!("http://{address}")).collect();
    let urls = urls.join(",");
    let client_seed = |index: usize, incarnation: usize| seed * 1_000 + (index * 100 + incarnation) as u64;
    let mut clients: Vec<Option<Client>> = (0..CLIENTS)
        .map(|index| {
            Some(Client::start(folder, &urls, index, incarnations[index], client_seed(index, incarnations[index])))
        })
        .collect();

    let acks = PHASE_ACKS_MIN + rng.below(PHASE_ACKS_SPREAD) as usize;
    run_phase(folder, counter, &mut clients, acks, &mut rng);
    // The crash: the server (SQLite), one or both servers (PostgreSQL), a third of the clients.
    let doomed_servers: Vec<usize> = match (setup.servers, rng.below(3)) {
        (1, _) => vec![0],
        (_, 0) => vec![0],
        (_, 1) => vec![1],
        _ => (0..setup.servers).collect(),
    };
    // Clients die either while the servers still run (a request of theirs may commit with nobody
    // left to hear the answer: a later incarnation redelivers it) or during the outage.
    let clients_die_first = rng.below(2) == 0;
    let mut kill_clients = |clients: &mut [Option<Client>], rng: &mut Rng, kills: &mut Kills| {
        for (index, slot) in clients.iter_mut().enumerate() {
            if rng.below(3) == 0 {
                slot.take().expect("a running client").kill();
                incarnations[index] += 1;
                kills.clients += 1;
            }
        }
    };
    if clients_die_first {
        kill_clients(&mut clients, &mut rng, &mut kills);
    }
    for index in &doomed_servers {
        drop(servers[*index].take()); // Child::kill is SIGKILL
        kills.servers += 1;
        // Land the next kill anywhere in the others' cycles, not all at once.
        sleep_ms(rng.below(KILL_GAP_MS_MAX));
    }
    if !clients_die_first {
        kill_clients(&mut clients, &mut rng, &mut kills);
    }
    sleep_ms(rng.below(OUTAGE_MS_MAX));
    for index in &doomed_servers {
        servers[*index] = Some(start_server(*index, addresses));
    }
    for (index, slot) in clients.iter_mut().enumerate() {
        if slot.is_none() {
            *slot =
                Some(Client::start(folder, &urls, index, incarnations[index], client_seed(index, incarnations[index])));
        }
    }

    let acks = PHASE_ACKS_MIN + rng.below(PHASE_ACKS_SPREAD) as usize;
    run_phase(folder, counter, &mut clients, acks, &mut rng);
    // The round ends in a second crash of everything.
    for (index, slot) in clients.iter_mut().enumerate() {
        slot.take().expect("a running client").kill();
        incarnations[index] += 1;
        kills.clients += 1;
    }
    for slot in &mut servers {
        drop(slot.take());
        kills.servers += 1;
    }
    kills
}

/// Starts every player through a fresh server with the `wait` policy (never a steal): each must
/// start once the killed holders' leases run out. Returns the keys that stayed locked.
fn keys_that_stay_locked(setup: &Setup, folder: &Path) -> Vec<String> {
    let environment = setup.environment();
    let environment: Vec<(&str, &str)> = environment.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let served = Served::start(folder, &setup.db, &environment);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/crash_client.py");
    let output = Command::new("python3")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(script)
        .args(["--check-free", "--urls", &served.url, "--api-key", GAME, "--client", "check"])
        .args(["--incarnation", "0", "--seed", "0", "--journal"])
        .arg(folder.join("check.jsonl"))
        .args(["--players", &players().join(","), "--wait-ms", &(LEASE_TTL_MS + RESTART_SLACK_MS).to_string()])
        .output()
        .expect("run the start check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the start check failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let answer: Value = serde_json::from_str(stdout.trim()).expect("the start check prints JSON");
    assert_eq!(
        answer["started"].as_array().map(Vec::len).unwrap_or(0)
            + answer["locked"].as_array().map(Vec::len).unwrap_or(0),
        PLAYERS
    );
    answer["locked"].as_array().into_iter().flatten().filter_map(|key| key.as_str().map(str::to_string)).collect()
}

fn print_figures(setup: &Setup, rounds: usize, kills: &Kills, found: &Audit, restart_ms: u128) {
    eprintln!(
        "crash rounds, {}: {rounds} rounds, {} servers and {} clients killed with SIGKILL; {} operations sent, \
         {} acknowledged {:?}, {} of them answering a retry or redelivery as the first time; {} requests cut by \
         a kill (outcome unknown) and {} refused while a server was down; {} given up after the retry deadline, {} sessions fenced out or holders lost; every key started \
         again {restart_ms} ms after the last kill; {} violations",
        setup.name,
        kills.servers,
        kills.clients,
        found.operations,
        found.acknowledged_total(),
        found.acknowledged,
        found.replays,
        found.cut,
        found.refused,
        found.gave_up,
        found.fenced,
        found.violations.len()
    );
    for violation in found.violations.iter().take(20) {
        eprintln!("  violation: {violation}");
    }
}

/// Runs the rounds on `setup`, audits, and checks that every key starts again; returns the audit.
fn run_rounds(setup: &Setup, folder: &Path) -> Audit {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let seeded = runtime.block_on(seed_players(setup));
    let rounds = rounds_from_environment();
    let mut addresses = Vec::new();
    let mut incarnations = vec![0; CLIENTS];
    let mut kills = Kills::default();
    let mut counter = AckCounter::default();
    for round in 0..rounds {
        let round_kills = run_round(setup, folder, &mut addresses, &mut incarnations, &mut counter, round);
        eprintln!("crash rounds, {}: round {round} (seed {}): {round_kills:?}", setup.name, SEED_BASE + round as u64);
        kills.servers += round_kills.servers;
        kills.clients += round_kills.clients;
    }
    // First, right after the last kill: every key starts again within the lease (starting
    // moves leases only, never a value or a version, so the audit below reads the same data).
    let last_kill = Instant::now();
    let locked = keys_that_stay_locked(setup, folder);
    let restart_ms = last_kill.elapsed().as_millis();
    let found = runtime.block_on(async {
        let options = StoreOptions { must_exist: true, ..setup.store_options() };
        let store = open_store(&setup.db, options).await.expect("open the store to audit it");
        let stored = read_stored(&*store, &players()).await;
        audit(&stored, &seeded, &read_journals(folder))
    });
    print_figures(setup, rounds, &kills, &found, restart_ms);
    assert_eq!(found.violations, Vec::<String>::new(), "{}: the audit found violations", setup.name);
    assert_eq!(locked, Vec::<String>::new(), "{}: keys still locked after the lease time", setup.name);
    assert!(
        restart_ms <= u128::from(LEASE_TTL_MS + RESTART_SLACK_MS),
        "{}: every key started again only {restart_ms} ms after the last kill",
        setup.name
    );
    assert!(found.acknowledged.get("trade").copied().unwrap_or(0) > 0, "{}: no trade was acknowledged", setup.name);
    assert!(found.acknowledged.get("grant").copied().unwrap_or(0) > 0, "{}: no grant was acknowledged", setup.name);
    assert!(found.acknowledged.get("save").copied().unwrap_or(0) > 0, "{}: no save was acknowledged", setup.name);
    found
}

#[test]
fn crash_rounds_on_sqlite_with_one_server_lose_nothing_acknowledged_and_duplicate_nothing() {
    if !python_available() {
        return;
    }
    let folder = tempfile::tempdir().expect("folder");
    let db = folder.path().join("hoard.sqlite3").to_string_lossy().into_owned();
    let setup = Setup { name: "SQLite, one hoard serve", db: db.clone(), schema: None, servers: 1 };
    run_rounds(&setup, folder.path());
    let connection = rusqlite::Connection::open(&db).expect("SQLite opens the database");
    let integrity: String =
        connection.query_row("PRAGMA integrity_check", [], |row| row.get(0)).expect("integrity_check");
    assert_eq!(integrity, "ok");
}

#[test]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
fn crash_rounds_on_postgres_with_two_servers_lose_nothing_acknowledged_and_duplicate_nothing() {
    let url = backends::postgres_url();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(backends::require_postgres(&url));
    if !python_available() {
        return;
    }
    let folder = tempfile::tempdir().expect("folder");
    let schema = backends::fresh_schema_name();
    let setup =
        Setup { name: "PostgreSQL, two hoard serve", db: url.clone(), schema: Some(schema.clone()), servers: 2 };
    run_rounds(&setup, folder.path());
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.expect("drop the rounds' schema");
    });
}
