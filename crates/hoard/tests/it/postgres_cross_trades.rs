//! Cross-server trades between two OS processes on one PostgreSQL database: process A holds alice,
//! process B holds bob, each an `Engine` of its own (its own holder, connections, LISTEN). A trade
//! where both call `trade_across` settles both sides; a trade where B is killed (`SIGKILL`) after
//! A prepared and before B prepares aborts at the deadline on A's side, and alice gets her escrow
//! back. The processes are this test binary again, running the ignored
//! `cross_trade_party_process`, told what to do through files in a temporary folder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hoard::engine::{CrossOutcome, CrossTrade, Engine, EngineConfig, TradeLeg};
use hoard::liveops::trades::{escrowed_trades, trade_view};
use hoard::store::{DocId, ListQuery, StoreName};
use serde_json::{Value, json};

use crate::engine_trades::{stored, traders};

/// How long either side waits for the other (a file to appear, a trade to settle).
const WAIT_MS_MAX: u64 = 60_000;
/// The killed round's timeout: the shortest a cross-server trade may have.
const KILLED_ROUND_TIMEOUT_MS: u64 = hoard::engine::trade::CROSS_TRADE_TIMEOUT_MS_MIN * 3;

fn id(key: &str) -> DocId {
    DocId::parse("traders", key).expect("id")
}

/// alice gives her sword, bob gives 30 coins.
fn swap(trade_id: &str, timeout_ms: u64) -> CrossTrade {
    CrossTrade {
        id: trade_id.into(),
        parties: vec![id("alice"), id("bob")],
        legs: vec![
            TradeLeg { from: 0, to: 1, items: vec!["sword-alice".into()], currencies: Default::default() },
            TradeLeg { from: 1, to: 0, items: vec![], currencies: [("coins".to_string(), 30)].into() },
        ],
        timeout_ms,
    }
}

fn wait_for_file(path: &Path, children: &mut [&mut Child]) -> String {
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        for child in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("a party process stopped ({status}) before {} appeared", path.display());
            }
        }
        assert!(started.elapsed() < Duration::from_millis(WAIT_MS_MAX), "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `text` to `path` whole (through a rename), so a reader never sees half of it.
fn write_file(path: &Path, text: &str) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).expect("write");
    std::fs::rename(&partial, path).expect("rename");
}

/// A party process, killed when the test ends however it ends.
struct Party(Child);

impl Drop for Party {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn party(role: &str, schema: &str, folder: &Path) -> Party {
    let child = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "postgres_cross_trades::cross_trade_party_process", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env("HOARD_CROSS_TRADE_ROLE", role)
        .env("HOARD_CROSS_TRADE_SCHEMA", schema)
        .env("HOARD_CROSS_TRADE_DIR", folder)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a party process");
    Party(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn a_cross_server_trade_between_two_processes_settles_and_a_killed_party_aborts_at_the_deadline() {
    let schema = crate::backends::fresh_schema_name();
    let t = crate::backends::postgres_in_schema(Default::default(), schema.clone()).await;
    let folder = tempfile::tempdir().expect("folder");
    let dir = folder.path().to_path_buf();
    let (mut a, mut b) = (party("alice", &schema, &dir), party("bob", &schema, &dir));
    let file = |name: &str| dir.join(name);
    let in_blocking = |path: PathBuf, a: &mut Party, b: &mut Party| wait_for_file(&path, &mut [&mut a.0, &mut b.0]);

    in_blocking(file("alice.ready"), &mut a, &mut b);
    in_blocking(file("bob.ready"), &mut a, &mut b);

    // Round 1: both processes call trade_across; whichever prepares second decides.
    write_file(&file("go-1"), "");
    let alice_done: Value = serde_json::from_str(&in_blocking(file("alice.done-1"), &mut a, &mut b)).expect("json");
    let bob_done: Value = serde_json::from_str(&in_blocking(file("bob.done-1"), &mut a, &mut b)).expect("json");
    assert_eq!((&alice_done["status"], &bob_done["status"]), (&json!("committed"), &json!("committed")));
    let documents = t.store.get_many(&[id("alice"), id("bob")]).await.expect("read");
    let (alice, bob) = (stored(&documents[0]), stored(&documents[1]));
    assert_eq!(alice.holdings.currencies.get("coins"), Some(&130), "alice got bob's coins");
    assert!(!alice.holdings.items.contains_key("sword-alice") && bob.holdings.items.contains_key("sword-alice"));
    assert_eq!(bob.holdings.currencies.get("coins"), Some(&70));
    assert!(alice.holdings.pending_trades.is_empty() && bob.holdings.pending_trades.is_empty());
    let view = trade_view(&*t.store, "p-1").await.expect("read").expect("recorded");
    assert_eq!((view.status.as_str(), view.prepared.len(), view.escrows_present), ("committed", 2, 0));
    let holders: Vec<_> = view.parties.iter().map(|party| party.holder.clone().expect("held")).collect();
    assert_ne!(holders[0], holders[1], "each party is held by its own process");
    assert!(escrowed_trades(&*t.store, None, 0).await.expect("list").trades.is_empty(), "no escrow left");

    // Round 2: alice buys her sword back for 10 coins; only A prepares, then B is killed before
    // it does.
    write_file(&file("go-2"), "");
    in_blocking(file("alice.prepared-2"), &mut a, &mut b);
    let pending = trade_view(&*t.store, "p-2").await.expect("read").expect("recorded");
    assert_eq!((pending.status.as_str(), pending.prepared.clone(), pending.escrows_present), ("pending", vec![0], 1));
    assert!(pending.parties[0].pending && !pending.parties[1].pending);
    b.0.kill().expect("SIGKILL bob's process");
    b.0.wait().expect("reap");
    let alice_done: Value = serde_json::from_str(&wait_for_file(&file("alice.done-2"), &mut [&mut a.0])).expect("json");
    assert_eq!(alice_done["status"], "aborted", "{alice_done}");
    let record_id = hoard::engine::trade::record_id("p-2").expect("id");
    let record = hoard::store::get(&*t.store, &record_id).await.expect("read");
    assert_eq!(record.value.as_ref().map(|value| value["status"].clone()), Some(json!("aborted")));
    let documents = t.store.get_many(&[id("alice"), id("bob")]).await.expect("read");
    let (alice, bob) = (stored(&documents[0]), stored(&documents[1]));
    assert_eq!(alice.holdings.currencies.get("coins"), Some(&130), "alice got her 10 coins back");
    assert!(alice.holdings.pending_trades.is_empty(), "alice is settled");
    assert_eq!(bob.holdings.currencies.get("coins"), Some(&70), "bob's killed server moved nothing");
    assert!(bob.holdings.items.contains_key("sword-alice") && bob.holdings.pending_trades.is_empty());
    let escrows = StoreName::new(hoard::engine::trade::TRADE_ESCROW_STORE).expect("name");
    let left = t.store.list_keys(&escrows, &ListQuery::default()).await.expect("list");
    assert!(left.keys.is_empty(), "no escrow left: {:?}", left.keys);
    write_file(&file("stop"), "");
    let status = a.0.wait().expect("alice's process ends");
    assert!(status.success(), "alice's process: {status}");
}

/// Round 2: alice pays 10 coins for her sword back.
fn buy_back(trade_id: &str, timeout_ms: u64) -> CrossTrade {
    CrossTrade {
        id: trade_id.into(),
        parties: vec![id("alice"), id("bob")],
        legs: vec![
            TradeLeg { from: 0, to: 1, items: vec![], currencies: [("coins".to_string(), 10)].into() },
            TradeLeg { from: 1, to: 0, items: vec!["sword-alice".into()], currencies: Default::default() },
        ],
        timeout_ms,
    }
}

/// One party's process (started by the test above; does nothing when run by hand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a party process of the two-process cross-server trade test, which starts it itself"]
async fn cross_trade_party_process() {
    let (Ok(role), Ok(schema), Ok(dir)) = (
        std::env::var("HOARD_CROSS_TRADE_ROLE"),
        std::env::var("HOARD_CROSS_TRADE_SCHEMA"),
        std::env::var("HOARD_CROSS_TRADE_DIR"),
    ) else {
        eprintln!("cross_trade_party_process: started by hand; nothing to do");
        return;
    };
    let dir = PathBuf::from(dir);
    let file = |name: &str| dir.join(name);
    let t = crate::backends::postgres_in_schema(Default::default(), schema).await;
    let config = EngineConfig {
        server_label: format!("process-{role}"),
        retry_backoff_initial_ms: 5,
        retry_backoff_max_ms: 50,
        ..EngineConfig::default()
    };
    let engine = Engine::open(t.store.clone(), config).await.expect("open the engine");
    let kind = traders().tradable();
    let session = engine.start_session(&kind, &role).await.expect("start the session");
    session
        .update(|trader| {
            trader.holdings.currencies.insert("coins".into(), 100);
            if role == "alice" {
                trader.holdings.items.insert("sword-alice".into(), json!({"kind": "sword"}));
            }
        })
        .expect("seed");
    session.save_now().await.expect("save");
    write_file(&file(&format!("{role}.ready")), "");

    let wait = |name: &str| {
        let path = file(name);
        async move {
            let started = Instant::now();
            while !path.exists() {
                assert!(started.elapsed() < Duration::from_millis(WAIT_MS_MAX), "{} never appeared", path.display());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let settled = |trade_id: &'static str| {
        let session = session.clone();
        async move {
            let started = Instant::now();
            while session.read(|trader| trader.holdings.pending_trades.contains_key(trade_id)) {
                assert!(started.elapsed() < Duration::from_millis(WAIT_MS_MAX), "{trade_id} never settled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let report = |round: u32, status: &str| {
        let coins = session.read(|trader| trader.holdings.currencies.get("coins").copied().unwrap_or(0));
        write_file(&file(&format!("{role}.done-{round}")), &json!({ "status": status, "coins": coins }).to_string());
    };

    wait("go-1").await;
    let outcome = engine.trade_across(&session, &swap("p-1", 30_000)).await.expect("round 1");
    settled("p-1").await;
    let record = engine.trade_record("p-1").await.expect("read").expect("recorded");
    assert!(!matches!(outcome, CrossOutcome::Aborted(_)), "{outcome:?}");
    report(1, &record.status);

    // Round 2: only alice prepares; bob's process waits to be killed.
    wait("go-2").await;
    if role == "alice" {
        let outcome = engine.trade_across(&session, &buy_back("p-2", KILLED_ROUND_TIMEOUT_MS)).await.expect("round 2");
        assert!(matches!(outcome, CrossOutcome::Pending(_)), "bob has not prepared: {outcome:?}");
        write_file(&file("alice.prepared-2"), "");
        // Nobody decides: this server's deadline timer aborts the trade and refunds alice.
        settled("p-2").await;
        let record = engine.trade_record("p-2").await.expect("read").expect("recorded");
        report(2, &record.status);
        wait("stop").await;
        let shutdown = engine.shutdown(Duration::from_secs(10)).await;
        assert!(shutdown.failed.is_empty(), "{shutdown:?}");
    } else {
        wait("stop").await;
    }
}
