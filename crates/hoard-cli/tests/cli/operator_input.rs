//! Operators' input: read commands never create a database and refuse what is not a hoard
//! database (leaving it untouched), writes to hoard's internal stores need a flag, a closed pipe
//! ends a command quietly, and SQLite and PostgreSQL failures (a read-only mount, a full disk, a
//! database that does not exist, a server that is down or restarting) name their cause and what
//! to do. Mounts are made in a private mount namespace (`unshare`), so nothing leaks outside the
//! test.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::served::{Served, serve_must_exit};
use super::{database, hoard, json_of};

/// Every command that only reads, with the arguments it needs.
const READ_COMMANDS: &[&[&str]] = &[
    &["status"],
    &["get", "players", "alice"],
    &["get", "players", "alice", "--version", "1"],
    &["list", "players"],
    &["history", "players", "alice"],
];

/// Commands that write but have nothing to act on in a new database: they must not create one.
const WRITES_NEEDING_DATA: &[&[&str]] =
    &[&["restore", "players", "alice", "1"], &["release", "players", "alice"], &["prune"]];

/// Commands that create a database when there is none (and so must refuse a foreign file).
const CREATING_WRITES: &[&[&str]] =
    &[&["put", "players", "alice", "1"], &["increment", "players", "alice", "1"], &["delete", "players", "alice"]];

fn hoard_at(location: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hoard"))
        .env_remove("HOARD_DB")
        .arg("--db")
        .arg(location)
        .args(args)
        .output()
        .expect("run hoard")
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every file in `folder` with its bytes and modification time.
fn folder_snapshot(folder: &Path) -> BTreeMap<String, (Vec<u8>, std::time::SystemTime)> {
    std::fs::read_dir(folder)
        .expect("read the folder")
        .map(|entry| {
            let entry = entry.expect("entry");
            let metadata = entry.metadata().expect("metadata");
            let bytes = std::fs::read(entry.path()).expect("read");
            (entry.file_name().to_string_lossy().into_owned(), (bytes, metadata.modified().expect("mtime")))
        })
        .collect()
}

#[test]
fn read_commands_refuse_a_missing_database_and_create_nothing() {
    let folder = tempfile::tempdir().expect("folder");
    let typo = folder.path().join("typo");
    let location = typo.join("hoard.sqlite3").to_string_lossy().into_owned();
    for args in READ_COMMANDS.iter().chain(WRITES_NEEDING_DATA) {
        let output = hoard_at(&location, args);
        let stderr = stderr_of(&output);
        assert!(!output.status.success(), "{args:?} on a missing database must fail: {stderr}");
        assert!(stderr.contains("no hoard database"), "{args:?}: {stderr}");
        assert!(stderr.contains("does not exist") && stderr.contains("--db"), "{args:?} says what to do: {stderr}");
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    // A write creates it, and then the reads work.
    json_of(&hoard_at(&location, &["put", "players", "alice", "1"]));
    assert_eq!(json_of(&hoard_at(&location, &["get", "players", "alice"]))["value"], 1);
}

#[test]
fn an_empty_file_is_refused_by_reads_and_made_a_hoard_database_by_a_write() {
    let folder = tempfile::tempdir().expect("folder");
    let path = folder.path().join("empty.sqlite3");
    std::fs::write(&path, b"").expect("create an empty file");
    let location = path.to_string_lossy().into_owned();
    for args in READ_COMMANDS {
        let output = hoard_at(&location, args);
        let stderr = stderr_of(&output);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("is empty") && stderr.contains("--db"), "{args:?}: {stderr}");
        assert_eq!(std::fs::metadata(&path).expect("metadata").len(), 0, "{args:?} wrote to the empty file");
    }
    json_of(&hoard_at(&location, &["put", "players", "alice", "1"]));
    assert_eq!(json_of(&hoard_at(&location, &["get", "players", "alice"]))["value"], 1);
}

/// Makes an SQLite database of another application in `folder`, closed cleanly.
fn another_applications_database(folder: &Path, name: &str, journal_mode: &str) -> String {
    let path = folder.join(name);
    let connection = rusqlite::Connection::open(&path).expect("open");
    let mode: String = connection
        .query_row(&format!("PRAGMA journal_mode = {journal_mode}"), [], |row| row.get(0))
        .expect("journal mode");
    assert_eq!(mode, journal_mode.to_lowercase());
    connection
        .execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
             CREATE TABLE schema_version (version INTEGER NOT NULL);
             INSERT INTO users (name) VALUES ('ada'), ('grace');
             INSERT INTO schema_version VALUES (7);",
        )
        .expect("the other application's tables");
    connection.close().expect("close");
    path.to_string_lossy().into_owned()
}

#[test]
fn another_applications_sqlite_file_is_refused_by_every_command_and_left_untouched() {
    for journal_mode in ["DELETE", "WAL"] {
        let folder = tempfile::tempdir().expect("folder");
        let location = another_applications_database(folder.path(), "app.db", journal_mode);
        let before = folder_snapshot(folder.path());
        for args in READ_COMMANDS.iter().chain(WRITES_NEEDING_DATA).chain(CREATING_WRITES) {
            let output = hoard_at(&location, args);
            let stderr = stderr_of(&output);
            assert!(!output.status.success(), "{journal_mode} {args:?} must be refused: {stderr}");
            assert!(stderr.contains("another application") && stderr.contains("users"), "{args:?}: {stderr}");
            assert!(stderr.contains("untouched") && stderr.contains("--db"), "{args:?} says what to do: {stderr}");
        }
        let output = serve_must_exit(folder.path(), &["--db", &location], Duration::from_secs(60));
        assert!(!output.status.success());
        assert!(stderr_of(&output).contains("another application"), "serve: {}", stderr_of(&output));
        assert_eq!(folder_snapshot(folder.path()), before, "{journal_mode}: the folder changed");
    }
}

#[test]
fn a_file_that_is_not_an_sqlite_database_is_refused_and_left_untouched() {
    let folder = tempfile::tempdir().expect("folder");
    let path = folder.path().join("notes.txt");
    std::fs::write(&path, "remember the milk\n".repeat(20)).expect("write");
    let location = path.to_string_lossy().into_owned();
    let before = folder_snapshot(folder.path());
    for args in READ_COMMANDS.iter().chain(CREATING_WRITES) {
        let output = hoard_at(&location, args);
        let stderr = stderr_of(&output);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("not an SQLite database") && stderr.contains("untouched"), "{args:?}: {stderr}");
    }
    assert_eq!(folder_snapshot(folder.path()), before);
}

#[test]
fn a_database_from_a_newer_hoard_is_refused_by_reads_and_writes() {
    let db = database();
    json_of(&hoard(&db, &["put", "players", "alice", "1"]));
    let connection = rusqlite::Connection::open(&db.path).expect("open with plain SQLite");
    connection.execute("UPDATE schema_version SET version = version + 1000", []).expect("a newer version");
    drop(connection);
    for args in [&["get", "players", "alice"][..], &["put", "players", "alice", "2"]] {
        let output = hoard(&db, args);
        let stderr = stderr_of(&output);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("newer hoard"), "{args:?} says to upgrade: {stderr}");
    }
    let connection = rusqlite::Connection::open(&db.path).expect("open with plain SQLite");
    connection.execute("UPDATE schema_version SET version = version - 1000", []).expect("this hoard's version");
    drop(connection);
    let document = json_of(&hoard(&db, &["get", "players", "alice"]));
    assert_eq!((document["value"].clone(), document["version"].clone()), (1.into(), 1.into()), "nothing was written");
}

#[test]
fn writes_to_internal_stores_need_the_explicit_flag() {
    let db = database();
    json_of(&hoard(&db, &["put", "players", "alice", "1"]));
    for args in [
        &["put", "hoard.trades", "trade-1", r#"{"status": "committed"}"#][..],
        &["delete", "hoard.receipts", "players/alice/purchase-1"],
        &["increment", "hoard.api_keys_count", "count", "1"],
        &["restore", "hoard.idempotency", "some-key", "1"],
        &["release", "hoard.trades", "trade-1"],
    ] {
        let output = hoard(&db, args);
        let stderr = stderr_of(&output);
        assert!(!output.status.success(), "{args:?} must be refused: {stderr}");
        assert!(stderr.contains("internal stores") && stderr.contains("--write-internal-store"), "{args:?}: {stderr}");
    }
    let record = json_of(&hoard(&db, &["get", "hoard.trades", "trade-1"]));
    assert_eq!(record["exists"], false, "nothing was written: {record}");
    assert_eq!(json_of(&hoard(&db, &["get", "hoard.api_keys_count", "count"]))["exists"], false);
    let forced = json_of(&hoard(&db, &["put", "hoard.trades", "trade-1", "{}", "--write-internal-store"]));
    assert_eq!(forced["committed"], true);
    assert_eq!(json_of(&hoard(&db, &["get", "hoard.trades", "trade-1"]))["exists"], true);
}

#[test]
fn a_closed_pipe_ends_every_printing_command_quietly() {
    let db = database();
    for coins in 0..30 {
        json_of(&hoard(&db, &["put", "players", "alice", &format!("{{\"coins\": {coins}}}")]));
    }
    for args in [
        &["history", "players", "alice"][..],
        &["get", "players", "alice"],
        &["list", "players"],
        &["status"],
        &["put", "players", "bob", "1"],
        &["serve", "--check-config"],
        &["serve", "--hash-key", "a-secret"],
    ] {
        // The reader is gone before the command starts, so its first write meets a closed pipe.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let output = Command::new(env!("CARGO_BIN_EXE_hoard"))
            .arg("--db")
            .arg(&db.path)
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run hoard");
        let stderr = stderr_of(&output);
        assert!(stderr.is_empty(), "{args:?} printed on standard error: {stderr}");
        assert!(output.status.success(), "{args:?}: {:?}", output.status);
    }
    assert_eq!(json_of(&hoard(&db, &["get", "players", "bob"]))["value"], 1, "the write was done");
}

/// Runs `script` with `sh -eu` as root in a private mount namespace (mounts made there vanish
/// with it), with `HOARD` naming the binary and `DIR`/`OUT` the given folders. `None` (after
/// saying so loudly) when this machine cannot make one; under CI=true that is a failure.
fn in_private_mount_namespace(script: &str, dir: &Path, out: &Path) -> Option<Output> {
    let probe = Command::new("unshare").args(["--mount", "--propagation", "private", "true"]).output();
    if !probe.is_ok_and(|output| output.status.success()) {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but `unshare --mount` is not permitted: run CI as root on a machine that allows it");
        }
        eprintln!("\n*** SKIPPED: `unshare --mount` is not permitted here (needs root); mount tests not run ***\n");
        return None;
    }
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-euc", script])
        .env("HOARD", env!("CARGO_BIN_EXE_hoard"))
        .env("DIR", dir)
        .env("OUT", out)
        .env_remove("HOARD_DB")
        .output()
        .expect("run unshare");
    assert!(
        output.status.success(),
        "the mount script failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(output)
}

/// What `hoard` printed for the step `name` of a mount script (`$OUT/name.{code,stdout,stderr}`).
fn step(out: &Path, name: &str) -> (i32, String, String) {
    let read = |suffix: &str| std::fs::read_to_string(out.join(format!("{name}.{suffix}"))).unwrap_or_default();
    let code = read("code").trim().parse().unwrap_or_else(|_| panic!("step {name} did not run"));
    (code, read("stdout"), read("stderr"))
}

/// Shell for one step: runs hoard with arguments and records its exit code and output.
const STEP_FUNCTION: &str = r#"step() { name=$1; shift; set +e; "$HOARD" "$@" >"$OUT/$name.stdout" 2>"$OUT/$name.stderr"; echo $? >"$OUT/$name.code"; set -e; }"#;

#[test]
fn a_read_only_mount_is_reported_as_read_only_with_what_to_do_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("mount point");
    let out = tempfile::tempdir().expect("outputs");
    let script = format!(
        r#"{STEP_FUNCTION}
mount -t tmpfs -o size=4m hoard-read-only "$DIR"
step put1 --db "$DIR/hoard.sqlite3" put players alice '{{"coins": 1}}'
mount -o remount,ro "$DIR"
step get --db "$DIR/hoard.sqlite3" get players alice
step put2 --db "$DIR/hoard.sqlite3" put players alice '{{"coins": 2}}'
step new --db "$DIR/new/hoard.sqlite3" put players alice '{{"coins": 3}}'
step newfile --db "$DIR/new.sqlite3" put players alice '{{"coins": 4}}'
mount -o remount,rw "$DIR"
step after --db "$DIR/hoard.sqlite3" get players alice
"#
    );
    if in_private_mount_namespace(&script, dir.path(), out.path()).is_none() {
        return;
    }
    assert_eq!(step(out.path(), "put1").0, 0, "{:?}", step(out.path(), "put1"));
    for name in ["get", "put2", "new", "newfile"] {
        let (code, _, stderr) = step(out.path(), name);
        assert_ne!(code, 0, "{name} on a read-only mount must fail");
        assert!(stderr.contains("read-only file system"), "{name} names the cause: {stderr}");
        assert!(stderr.contains("remount") || stderr.contains("writable"), "{name} says what to do: {stderr}");
    }
    let (code, stdout, stderr) = step(out.path(), "after");
    assert_eq!(code, 0, "{stderr}");
    let document: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!((document["value"]["coins"].clone(), document["version"].clone()), (1.into(), 1.into()));
}

#[test]
fn a_full_disk_is_reported_as_full_with_what_to_do_and_the_write_is_not_applied() {
    let dir = tempfile::tempdir().expect("mount point");
    let out = tempfile::tempdir().expect("outputs");
    let big_value = out.path().join("big.json");
    std::fs::write(&big_value, format!("\"{}\"", "x".repeat(400_000))).expect("a 400 kB value");
    let script = format!(
        r#"{STEP_FUNCTION}
mount -t tmpfs -o size=2m hoard-full "$DIR"
step put1 --db "$DIR/hoard.sqlite3" put players alice '{{"coins": 1}}'
# Fill what is left with another file, as a log or a core dump would.
dd if=/dev/zero of="$DIR/filler" bs=64k 2>/dev/null || true
step full --db "$DIR/hoard.sqlite3" put players alice - <"$OUT/big.json"
rm "$DIR/filler"
step after --db "$DIR/hoard.sqlite3" get players alice
step put2 --db "$DIR/hoard.sqlite3" put players alice '{{"coins": 2}}'
"#
    );
    if in_private_mount_namespace(&script, dir.path(), out.path()).is_none() {
        return;
    }
    assert_eq!(step(out.path(), "put1").0, 0, "{:?}", step(out.path(), "put1"));
    let (code, _, stderr) = step(out.path(), "full");
    assert_ne!(code, 0, "a write to a full disk must fail");
    assert!(stderr.contains("full"), "names the cause: {stderr}");
    assert!(stderr.contains("free space"), "says what to do: {stderr}");
    assert!(
        !stderr.contains("may have applied") || stderr.contains("not applied"),
        "says it was not applied: {stderr}"
    );
    let (code, stdout, stderr) = step(out.path(), "after");
    assert_eq!(code, 0, "{stderr}");
    let document: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!((document["value"]["coins"].clone(), document["version"].clone()), (1.into(), 1.into()), "unchanged");
    let (code, stdout, stderr) = step(out.path(), "put2");
    assert_eq!(code, 0, "with space again, writes work: {stderr}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).expect("JSON")["version"], 2);
}

/// Where the PostgreSQL tests connect, by the workspace's PostgreSQL rule (hoard's
/// `tests/it/backends.rs`): never green without PostgreSQL; `HOARD_TEST_POSTGRES_URL=skip` is the
/// explicit opt-out, under which these tests are ignored (`cfg(hoard_postgres_tests_skipped)`).
fn postgres_url() -> String {
    match std::env::var("HOARD_TEST_POSTGRES_URL") {
        Ok(url) if url == "skip" => {
            panic!("HOARD_TEST_POSTGRES_URL=skip, yet this PostgreSQL test ran without its ignore attribute")
        }
        Ok(url) => url,
        Err(_) => "postgres://postgres@127.0.0.1:5432/test".to_string(),
    }
}

/// A client of the test server; an unreachable server fails the test with what to do.
fn postgres_client(url: &str) -> Option<(tokio::runtime::Runtime, tokio_postgres::Client)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let connected = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(url, tokio_postgres::NoTls)).await
    });
    match connected {
        Ok(Ok((client, connection))) => {
            runtime.spawn(connection);
            Some((runtime, client))
        }
        _ => panic!(
            "PostgreSQL at {url} is unreachable: start it (pg_ctlcluster <version> main start), point \
             HOARD_TEST_POSTGRES_URL at one, or opt out explicitly with HOARD_TEST_POSTGRES_URL=skip"
        ),
    }
}

/// `url` with its database name replaced.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(base, query)| (base, Some(query)));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

#[test]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
fn a_postgres_database_that_does_not_exist_is_named_with_what_to_do() {
    let url = postgres_url();
    if postgres_client(&url).is_none() {
        return;
    }
    let missing = with_database(&url, "hoard_no_such_database_for_tests");
    for args in [&["get", "players", "alice"][..], &["put", "players", "alice", "1"]] {
        let output = hoard_at(&missing, args);
        let stderr = stderr_of(&output);
        assert!(!output.status.success());
        assert!(stderr.contains(r#"database "hoard_no_such_database_for_tests" does not exist"#), "{args:?}: {stderr}");
        assert!(stderr.contains("CREATE DATABASE"), "{args:?} says what to do: {stderr}");
    }
}

#[test]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
fn a_postgres_server_that_is_down_is_named_with_what_to_do() {
    // Port 1 on loopback: nothing listens there, as during an outage.
    let output = hoard_at("postgres://postgres@127.0.0.1:1/hoard", &["status"]);
    let stderr = stderr_of(&output);
    assert!(!output.status.success());
    assert!(stderr.to_lowercase().contains("connection refused"), "names the cause: {stderr}");
    assert!(stderr.contains("start PostgreSQL"), "says what to do: {stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "names the server: {stderr}");
}

#[test]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
fn a_postgres_password_is_never_printed() {
    let output = hoard_at("postgres://hoard:sup3r-s3cret@127.0.0.1:1/hoard", &["status"]);
    let stderr = stderr_of(&output);
    assert!(!output.status.success());
    assert!(!stderr.contains("sup3r-s3cret"), "{stderr}");
}

#[test]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
fn postgres_reads_refuse_a_database_without_hoards_schema_and_create_nothing() {
    let url = postgres_url();
    let Some((runtime, client)) = postgres_client(&url) else { return };
    let database = format!("hoard_empty_{}", uuid::Uuid::new_v4().simple());
    runtime.block_on(client.batch_execute(&format!("CREATE DATABASE {database}"))).expect("create database");
    let empty = with_database(&url, &database);
    let outputs: Vec<(Vec<&str>, Output)> =
        READ_COMMANDS.iter().map(|args| (args.to_vec(), hoard_at(&empty, args))).collect();
    let schemas = runtime.block_on(async {
        let (inner, connection) = tokio_postgres::connect(&empty, tokio_postgres::NoTls).await.expect("connect");
        let driver = tokio::spawn(connection);
        let row = inner
            .query_one("SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'hoard'", &[])
            .await
            .expect("count");
        drop(inner);
        let _ = driver.await;
        row.get::<_, i64>(0)
    });
    runtime.block_on(client.batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)"))).expect("drop database");
    for (args, output) in outputs {
        let stderr = stderr_of(&output);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("no hoard data") && stderr.contains(&database), "{args:?}: {stderr}");
    }
    assert_eq!(schemas, 0, "a read created hoard's schema");
}

#[test]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
fn serve_logs_name_the_cause_when_postgres_cuts_its_connections() {
    let url = postgres_url();
    let Some((runtime, client)) = postgres_client(&url) else { return };
    let folder = tempfile::tempdir().expect("folder");
    let schema = format!("hoard_cut_{}", uuid::Uuid::new_v4().simple());
    let served = Served::start(
        folder.path(),
        &url,
        &[("HOARD_POSTGRES_SCHEMA", schema.as_str()), ("HOARD_API_KEYS", "ops:admin:*:secret:ops-secret-cut")],
    );
    // What a restart or an administrator does to every connection: the server ends them with
    // FATAL 57P01.
    let application_name = format!("hoard:{schema}");
    runtime
        .block_on(client.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        ))
        .expect("terminate the server's connections");
    let line = served.wait_for_log("notification listener lost its connection", Duration::from_secs(30));
    let line = line.unwrap_or_else(|| panic!("no reconnect logged: {:?}", served.log()));
    assert!(line.contains("terminating connection due to administrator command"), "names the cause: {line}");
    assert!(line.contains("57P01") && line.contains("retries"), "says what happens and what to do: {line}");
    drop(served);
    let _ = runtime.block_on(client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")));
}
