//! The `hoard` binary, run as an operator would: the operator commands on a fresh SQLite file
//! here; operators' mistakes and failing disks and databases in `operator_input`; hostile HTTP
//! input against `hoard serve` in `hostile_input`; power loss under a writer in `power_loss`;
//! `kill -9` of `hoard serve` and of game-server processes in `crash_rounds` (audited by
//! `crash_audit`).

/// hoard's test backends, for the PostgreSQL rule (one place for every crate's PostgreSQL tests).
#[allow(dead_code, unused_imports, unused_macros)]
#[path = "../../hoard/tests/it/backends.rs"]
mod backends;
#[path = "cli/crash_audit.rs"]
mod crash_audit;
#[path = "cli/crash_rounds.rs"]
mod crash_rounds;
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
fn find_user_find_item_top_and_erase_by_user_id() {
    let db = database();
    json_of(&hoard(
        &db,
        &["put", "players", "alice", r#"{"lvl": 3, "items": {"sword-1": {}}}"#, "--user-ids", "roblox:1"],
    ));
    json_of(&hoard(&db, &["put", "players", "alice", r#"{"lvl": 4, "items": {"sword-1": {}}}"#]));
    json_of(&hoard(
        &db,
        &["put", "players", "bob", r#"{"lvl": 9, "items": {"sword-1": {}}}"#, "--user-ids", "roblox:2"],
    ));
    assert_eq!(json_of(&hoard(&db, &["index", "players", "items", "keys", "/items"]))["indexed"], 2);
    json_of(&hoard(&db, &["index", "players", "lvl", "number", "/lvl"]));
    let found = json_of(&hoard(&db, &["find-user", "roblox:1"]));
    assert_eq!(found["ids"], serde_json::json!([{"store": "players", "key": "alice"}]));
    assert_eq!(
        json_of(&hoard(&db, &["find-item", "players", "items", "sword-1"]))["keys"],
        serde_json::json!(["alice", "bob"])
    );
    assert_eq!(json_of(&hoard(&db, &["top", "players", "lvl", "--limit", "1"]))["entries"][0]["key"], "bob");

    let tombstone = json_of(&hoard(&db, &["erase", "--user-id", "roblox:1", "--reason", "ticket 9"]));
    assert_eq!(tombstone["documents_erased"], 1);
    assert!(tombstone["requested_by"].as_str().is_some_and(|by| by.starts_with("cli:")));
    assert_eq!(json_of(&hoard(&db, &["get", "players", "alice"]))["exists"], false);
    assert!(json_of(&hoard(&db, &["find-user", "roblox:1"]))["ids"].as_array().is_some_and(Vec::is_empty));
    assert_eq!(json_of(&hoard(&db, &["find-item", "players", "items", "sword-1"]))["keys"], serde_json::json!(["bob"]));
    let history = json_of(&hoard(&db, &["history", "players", "alice"]));
    assert!(history.as_array().is_some_and(|versions| versions.iter().all(|v| v["deleted"] == true)), "{history}");
    let audit = json_of(&hoard(&db, &["audit"]));
    let actions: Vec<&str> =
        audit["entries"].as_array().expect("entries").iter().filter_map(|e| e["entry"]["action"].as_str()).collect();
    assert_eq!(actions, vec!["declare_index", "declare_index", "erase"]);
    let refused = hoard(&db, &["erase", "--user-id", ""]);
    assert!(!refused.status.success(), "an empty user id is refused");
}

/// A profile that trades across servers, for `hoard trade`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Trader {
    holdings: hoard::engine::Holdings,
}

impl hoard::engine::Tradable for Trader {
    fn holdings(&self) -> &hoard::engine::Holdings {
        &self.holdings
    }
    fn holdings_mut(&mut self) -> &mut hoard::engine::Holdings {
        &mut self.holdings
    }
}

#[test]
fn trade_show_and_stuck_print_a_pending_cross_server_trade_then_the_settled_one() {
    use hoard::engine::{CrossOutcome, CrossTrade, Engine, EngineConfig, ProfileKind, ProfileSchema, TradeLeg};
    use hoard::store::{DocId, StoreName, StoreOptions, open_store};
    let db = database();
    json_of(&hoard(&db, &["put", "scratch", "init", "1"]));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let kind =
        ProfileKind::new(StoreName::new("traders").expect("name"), ProfileSchema::new(Trader::default)).tradable();
    let id = |key: &str| DocId::parse("traders", key).expect("id");
    let trade = CrossTrade {
        id: "cli-1".into(),
        parties: vec![id("alice"), id("bob")],
        legs: vec![
            TradeLeg { from: 0, to: 1, items: vec!["sword-1".into()], currencies: Default::default() },
            TradeLeg { from: 1, to: 0, items: vec![], currencies: [("coins".to_string(), 30)].into() },
        ],
        timeout_ms: 60_000,
    };
    // Two servers on the file: a holds alice, b holds bob; alice prepares, bob not yet.
    let (a, b, alice, bob) = runtime.block_on(async {
        let store = open_store(&db.path, StoreOptions::default()).await.expect("open");
        let config = |label: &str| EngineConfig { server_label: label.into(), ..EngineConfig::default() };
        let a = Engine::open(store.clone(), config("server-a")).await.expect("open a");
        let b = Engine::open(store, config("server-b")).await.expect("open b");
        let alice = a.start_session(&kind, "alice").await.expect("alice");
        let bob = b.start_session(&kind, "bob").await.expect("bob");
        alice
            .update(|t| {
                t.holdings.items.insert("sword-1".into(), serde_json::json!({}));
            })
            .expect("seed");
        bob.update(|t| {
            t.holdings.currencies.insert("coins".into(), 100);
        })
        .expect("seed");
        alice.save_now().await.expect("save");
        bob.save_now().await.expect("save");
        assert!(matches!(a.trade_across(&alice, &trade).await.expect("prepare"), CrossOutcome::Pending(_)));
        (a, b, alice, bob)
    });

    let shown = json_of(&hoard(&db, &["trade", "show", "cli-1"]))["trade"].clone();
    assert_eq!(shown["status"], "pending");
    assert_eq!(shown["deadline_ms"].as_i64(), shown["created_at_ms"].as_i64().map(|at| at + 60_000));
    assert_eq!(shown["prepared"], serde_json::json!([0]));
    assert_eq!(shown["legs"][0]["escrow"]["items"], serde_json::json!({"sword-1": {}}), "the sword is in escrow");
    assert_eq!(shown["legs"][1]["escrow"], Value::Null);
    assert_eq!(shown["parties"][0]["holder"], a.holder().as_str());
    assert_eq!(shown["parties"][1]["holder"], b.holder().as_str());
    assert_eq!(shown["parties"][0]["holder_alive"], true);
    assert_eq!(
        (&shown["parties"][0]["pending"], &shown["parties"][1]["pending"]),
        (&Value::Bool(true), &Value::Bool(false))
    );
    let stuck = json_of(&hoard(&db, &["trade", "stuck"]));
    assert_eq!(stuck["trades"][0]["trade_id"], "cli-1");
    assert_eq!(stuck["trades"][0]["escrowed_legs"], serde_json::json!([0]));
    assert_eq!(stuck["next_after"], Value::Null);
    let missing = hoard(&db, &["trade", "show", "nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no trade"));

    runtime.block_on(async {
        assert!(matches!(b.trade_across(&bob, &trade).await.expect("decide"), CrossOutcome::Committed(_)));
        // alice's server settles her side when the decision reaches her inbox.
        for _ in 0..200 {
            if alice.read(|t| t.holdings.pending_trades.is_empty()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(alice.read(|t| t.holdings.currencies.get("coins") == Some(&30)), "alice settled");
    });
    let shown = json_of(&hoard(&db, &["trade", "show", "cli-1"]))["trade"].clone();
    assert_eq!((&shown["status"], &shown["escrows_present"]), (&Value::from("committed"), &Value::from(0)));
    assert_eq!(json_of(&hoard(&db, &["trade", "stuck"]))["trades"], serde_json::json!([]));
    runtime.block_on(async {
        a.shutdown(std::time::Duration::from_secs(10)).await;
        b.shutdown(std::time::Duration::from_secs(10)).await;
    });
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
fn sim_over_http_prints_json_figures_and_exits_zero_and_its_controls_exit_non_zero() {
    let output = sim(&["--seeds", "1", "--json", "--path", "http"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let figures = json_of(&output);
    assert_eq!(figures["path"], "http");
    assert!(figures["faults"]["http_requests"].as_u64().unwrap_or(0) > 100, "{figures}");
    assert_eq!(figures["violations"], 0, "{figures}");
    for control in ["no-adopt", "fresh-ids"] {
        let output = sim(&["--seeds", "2", "--json", "--path", "http", "--strategy", control]);
        assert!(!output.status.success(), "the {control} control passed the audit");
        let figures: Value = serde_json::from_slice(&output.stdout).expect("JSON even on failure");
        assert!(figures["violations"].as_u64().unwrap_or(0) > 0, "{control}: {figures}");
    }
    let refused = sim(&["--strategy", "no-adopt"]);
    assert!(!refused.status.success(), "an HTTP control in process is refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--path http"), "the error says how to run it");
}

#[test]
fn sim_of_a_control_strategy_exits_non_zero() {
    let output = sim(&["--seeds", "2", "--json", "--strategy", "naive"]);
    assert!(!output.status.success(), "the naive control passed the audit");
    let figures: Value = serde_json::from_slice(&output.stdout).expect("JSON even on failure");
    assert!(figures["violations"].as_u64().unwrap_or(0) > 0, "{figures}");
}
