//! The `hoard` binary, run as an operator would: the operator commands on a fresh SQLite file
//! here; operators' mistakes and failing disks and databases in `operator_input`; hostile HTTP
//! input against `hoard serve` in `hostile_input`; power loss under a writer in `power_loss`.

#[path = "cli/hostile_input.rs"]
mod hostile_input;
#[path = "cli/operator_input.rs"]
mod operator_input;
#[path = "cli/power_loss.rs"]
mod power_loss;
#[path = "cli/served.rs"]
mod served;

use std::process::{Command, Output};

use serde_json::Value;

struct Database {
    _folder: tempfile::TempDir,
    path: String,
}

fn database() -> Database {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("nested/folder/hoard.sqlite3").to_string_lossy().into_owned();
    Database { _folder: folder, path }
}

fn hoard(db: &Database, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hoard")).arg("--db").arg(&db.path).args(args).output().expect("run hoard")
}

fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "hoard failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("hoard prints JSON")
}

#[test]
fn put_get_history_restore_and_delete_round_trip() {
    let db = database();
    json_of(&hoard(&db, &["put", "players", "alice", r#"{"coins": 10}"#, "--user-ids", "1001"]));
    json_of(&hoard(&db, &["put", "players", "alice", r#"{"coins": 0}"#, "--if-version", "1"]));
    let document = json_of(&hoard(&db, &["get", "players", "alice"]));
    assert_eq!(document["value"]["coins"], 0);
    assert_eq!(document["version"], 2);
    assert_eq!(document["user_ids"][0], "1001");
    let history = json_of(&hoard(&db, &["history", "players", "alice"]));
    assert_eq!(history.as_array().map(Vec::len), Some(2));
    let old = json_of(&hoard(&db, &["get", "players", "alice", "--version", "1"]));
    assert_eq!(old["value"]["coins"], 10);
    json_of(&hoard(&db, &["restore", "players", "alice", "1"]));
    let document = json_of(&hoard(&db, &["get", "players", "alice"]));
    assert_eq!(document["value"]["coins"], 10);
    assert_eq!(document["version"], 3);
    json_of(&hoard(&db, &["delete", "players", "alice"]));
    let document = json_of(&hoard(&db, &["get", "players", "alice"]));
    assert_eq!(document["exists"], false);
    assert_eq!(document["version"], 4);
}

#[test]
fn stale_compare_and_set_exits_with_conflict_and_changes_nothing() {
    let db = database();
    json_of(&hoard(&db, &["put", "players", "bob", "1"]));
    let output = hoard(&db, &["put", "players", "bob", "2", "--if-version", "7"]);
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stderr).contains("VersionMismatch"));
    assert_eq!(json_of(&hoard(&db, &["get", "players", "bob"]))["value"], 1);
}

#[test]
fn list_pages_through_keys_by_prefix() {
    let db = database();
    for n in 0..5 {
        json_of(&hoard(&db, &["increment", "scores", &format!("p{n}"), "-3"]));
    }
    let page = json_of(&hoard(&db, &["list", "scores", "--prefix", "p", "--limit", "3"]));
    assert_eq!(page["keys"].as_array().map(Vec::len), Some(3));
    assert_eq!(page["next_after"], "p2");
    let rest = json_of(&hoard(&db, &["list", "scores", "--prefix", "p", "--after", "p2"]));
    assert_eq!(rest["keys"], serde_json::json!(["p3", "p4"]));
    assert_eq!(json_of(&hoard(&db, &["get", "scores", "p4"]))["value"], -3);
}

#[test]
fn bad_input_is_refused_with_a_clear_message_and_nothing_stored() {
    let db = database();
    for (args, needle) in [
        (vec!["put", "players", "carol", "{not json"], "JSON"),
        (vec!["put", "players", "carol", "NaN"], "JSON"),
        (vec!["put", "players", "", "1"], "empty"),
        (vec!["put", "players", "tab\tkey", "1"], "control character"),
        (vec!["put", "players", "carol", "1", "--attributes", "[1]"], "JSON object"),
    ] {
        let output = hoard(&db, &args);
        assert!(!output.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: stderr {stderr:?} should mention {needle:?}");
    }
    let long_key = "k".repeat(10_000);
    assert!(!hoard(&db, &["put", "players", &long_key, "1"]).status.success());
    let page = json_of(&hoard(&db, &["list", "players"]));
    assert_eq!(page["keys"], serde_json::json!([]));
}

#[cfg(unix)]
#[test]
fn non_utf8_key_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let db = database();
    let output = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .arg("--db")
        .arg(&db.path)
        .args(["put", "players"])
        .arg(std::ffi::OsStr::from_bytes(b"bad\xff"))
        .arg("1")
        .output()
        .expect("run hoard");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).to_lowercase().contains("utf-8"));
}

#[test]
fn restore_of_a_held_key_is_refused_unless_forced() {
    let db = database();
    json_of(&hoard(&db, &["put", "players", "dave", "1"]));
    json_of(&hoard(&db, &["put", "players", "dave", "2"]));
    // Take the key with a holder whose process lease is live, through the library.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        use hoard::store::{Commit, Condition, DocId, HolderId, LeaseOp, StoreOptions, Write, open_store};
        let store = open_store(&db.path, StoreOptions::default()).await.expect("open");
        let holder = HolderId::new("game-server-1").expect("holder");
        store.renew_holder(&holder, 600_000).await.expect("renew");
        let id = DocId::parse("players", "dave").expect("id");
        let write = Write::new(id).when(Condition::LeaseFree).lease(LeaseOp::Acquire(holder));
        assert!(store.commit(Commit::single(write)).await.expect("commit").is_committed());
    });
    let refused = hoard(&db, &["restore", "players", "dave", "1"]);
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    assert_eq!(json_of(&hoard(&db, &["get", "players", "dave"]))["value"], 2);
    json_of(&hoard(&db, &["restore", "players", "dave", "1", "--force"]));
    let document = json_of(&hoard(&db, &["get", "players", "dave"]));
    assert_eq!(document["value"], 1);
    assert_eq!(document["lease"]["holder"], Value::Null);
    assert_eq!(document["lease"]["epoch"], 1, "the release keeps the epoch, so the old holder stays fenced out");
}

#[test]
fn status_reports_the_backend_of_an_existing_database() {
    let db = database();
    json_of(&hoard(&db, &["put", "players", "alice", "1"]));
    let status = json_of(&hoard(&db, &["status"]));
    assert_eq!(status["backend"], "sqlite");
    assert_eq!(status["location"], db.path.as_str());
}

#[test]
fn help_lists_every_operator_command() {
    let output = Command::new(env!("CARGO_BIN_EXE_hoard")).arg("--help").output().expect("run hoard");
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["status", "get", "put", "delete", "increment", "list", "history", "restore", "release", "prune"] {
        assert!(help.contains(command), "--help mentions {command}");
    }
}

#[test]
fn bench_smoke_on_sqlite_prints_json() {
    let db = database();
    let plots = tempfile::tempdir().expect("plots folder");
    let out = plots.path().to_string_lossy().into_owned();
    let output = hoard(&db, &["bench", "--smoke", "--store", "sqlite", "--json", "--no-progress", "--out", &out]);
    let report = json_of(&output);
    assert_eq!(report["size"], "smoke");
    let rows = report["results"].as_array().expect("results");
    // Workload 7 runs through a `hoard serve` of the bench's own and compares with in process.
    for workload in ["over_http/autosave_storm", "over_http/session_cycle", "over_http/trades"] {
        let row = rows.iter().find(|row| row["workload"] == workload && row["store"] == "sqlite").expect(workload);
        assert!(row["error"].is_null(), "{workload}: {}", row["error"]);
        assert!(row["hoard"]["throughput_per_s"].is_number(), "{workload}: {row}");
        assert!(row["baseline"]["throughput_per_s"].is_number(), "{workload}: {row}");
        assert!(row["ratio"].is_number(), "{workload}: {row}");
    }
    assert!(plots.path().join("summary.svg").exists());
    assert!(plots.path().join("over_http-autosave_storm.svg").exists());
}

#[test]
fn bench_only_runs_the_named_workloads_and_refuses_unknown_names() {
    let db = database();
    let plots = tempfile::tempdir().expect("plots folder");
    let out = plots.path().to_string_lossy().into_owned();
    let args = [
        "bench",
        "--smoke",
        "--store",
        "memory",
        "--json",
        "--no-progress",
        "--out",
        &out,
        "--only",
        "trades,receipts",
    ];
    let report = json_of(&hoard(&db, &args));
    let mut workloads: Vec<String> = report["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|row| row["workload"].as_str().unwrap_or_default().to_string())
        .collect();
    workloads.sort();
    assert_eq!(workloads, ["receipts", "trades"]);
    let refused = hoard(&db, &["bench", "--smoke", "--store", "memory", "--only", "everything"]);
    assert!(!refused.status.success(), "an unknown workload name is refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("possible values"), "the error lists the names");
}

fn sim(args: &[&str]) -> Output {
    let small = ["sim", "--players", "12", "--servers", "3", "--duration", "20", "--seed", "300"];
    Command::new(env!("CARGO_BIN_EXE_hoard")).args(small).args(args).output().expect("run hoard sim")
}

#[test]
fn sim_sweep_prints_json_figures_and_exits_zero() {
    let output = sim(&["--seeds", "3", "--json"]);
    let figures = json_of(&output);
    assert_eq!(figures["worlds"], 3);
    assert!(figures["ops"].as_u64().unwrap_or(0) > 100, "{figures}");
    for field in ["dupes", "lost_acknowledged", "double_grants", "violations"] {
        assert_eq!(figures[field], 0, "{field}: {figures}");
    }
}

#[test]
fn sim_of_a_control_strategy_exits_non_zero() {
    let output = sim(&["--seeds", "2", "--json", "--strategy", "naive"]);
    assert!(!output.status.success(), "the naive control passed the audit");
    let figures: Value = serde_json::from_slice(&output.stdout).expect("JSON even on failure");
    assert!(figures["violations"].as_u64().unwrap_or(0) > 0, "{figures}");
}
