//! Cross-server trades (G3 across engines): escrow, one decided record, a deadline on the store's
//! clock. Every crash point on memory with paused time; conservation under the fault wrapper on
//! every backend; the deadline passing while a party's server is frozen.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hoard::engine::{
    CrossOutcome, CrossTrade, Engine, ProfileKind, Session, SessionEvent, TradeError, TradeLeg, TransactError,
};
use hoard::store::fault::{FaultConfig, FaultStore};
use hoard::store::{Commit, DocId, ListQuery, SharedStore, StoreName, ValueOp};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::backends::TestStore;
use crate::engine_sessions::fast_config;
use crate::engine_trades::{Trader, stored, traders};
use crate::probe_store::ProbeStore;

fn tradable() -> ProfileKind<Trader> {
    traders().tradable()
}

fn id(key: &str) -> DocId {
    DocId::parse("traders", key).expect("id")
}

/// alice gives `sword-<key>`, bob gives 30 coins.
fn swap(trade_id: &str, alice: &str, bob: &str, timeout_ms: u64) -> CrossTrade {
    CrossTrade {
        id: trade_id.into(),
        parties: vec![id(alice), id(bob)],
        legs: vec![
            TradeLeg { from: 0, to: 1, items: vec![format!("sword-{alice}")], currencies: BTreeMap::new() },
            TradeLeg { from: 1, to: 0, items: vec![], currencies: BTreeMap::from([("coins".to_string(), 30)]) },
        ],
        timeout_ms,
    }
}

/// Starts `key` on `engine` with 100 coins and `sword-<key>`, saved.
async fn seeded(engine: &Engine, key: &str) -> Session<Trader> {
    let session = engine.start_session(&tradable(), key).await.expect("start");
    session
        .update(|t| {
            t.holdings.currencies.insert("coins".into(), 100);
            t.holdings.items.insert(format!("sword-{key}"), json!({"kind": "sword"}));
        })
        .expect("seed");
    session.save_now().await.expect("save");
    session
}

/// What the store holds for `keys`: items by owner (a profile key or an escrow), coins in all,
/// escrow documents and pending marks left. Panics on an item held twice (G3).
struct Audit {
    owners: BTreeMap<String, String>,
    coins: i64,
    escrows: usize,
    pending_marks: usize,
}

async fn audit(store: &SharedStore, keys: &[String]) -> Audit {
    let ids: Vec<DocId> = keys.iter().map(|key| id(key)).collect();
    let mut owners = BTreeMap::new();
    let (mut coins, mut pending_marks) = (0, 0);
    for document in store.get_many(&ids).await.expect("read profiles") {
        let trader = stored(&document);
        coins += trader.holdings.currencies.values().sum::<i64>();
        assert!(trader.holdings.currencies.values().all(|balance| *balance >= 0), "no negative balance");
        pending_marks += trader.holdings.pending_trades.len();
        for item in trader.holdings.items.keys() {
            let first = owners.insert(item.clone(), document.id.key.to_string());
            assert!(first.is_none(), "item {item} is held twice ({first:?} and {})", document.id.key);
        }
    }
    let escrow_store = StoreName::new(hoard::engine::trade::TRADE_ESCROW_STORE).expect("name");
    let page = store
        .list_keys(&escrow_store, &ListQuery { prefix: String::new(), after: None, limit: 10_000 })
        .await
        .expect("list escrows");
    let escrow_ids: Vec<DocId> = page.keys.iter().map(|key| DocId::new(escrow_store.clone(), key.clone())).collect();
    let mut escrows = 0;
    for document in store.get_many(&escrow_ids).await.expect("read escrows") {
        let Some(value) = document.value else { continue };
        escrows += 1;
        let escrow: hoard::engine::trade::Escrow = serde_json::from_value(value).expect("escrow");
        coins += escrow.currencies.values().sum::<i64>();
        for item in escrow.items.keys() {
            let first = owners.insert(item.clone(), format!("escrow {}", document.id.key));
            assert!(first.is_none(), "item {item} is held twice ({first:?} and escrow {})", document.id.key);
        }
    }
    Audit { owners, coins, escrows, pending_marks }
}

/// Waits (virtual or real time) until the store holds no escrow and no pending mark for `keys`.
async fn settled(store: &SharedStore, keys: &[String], wait_ms_max: u64) -> Audit {
    let step_ms = 50;
    for _ in 0..wait_ms_max / step_ms {
        let audit = audit(store, keys).await;
        if audit.escrows == 0 && audit.pending_marks == 0 {
            return audit;
        }
        tokio::time::sleep(Duration::from_millis(step_ms)).await;
    }
    let audit = audit(store, keys).await;
    panic!("not settled within {wait_ms_max} ms: {} escrows, {} pending marks", audit.escrows, audit.pending_marks);
}

async fn status_of(engine: &Engine, trade_id: &str) -> String {
    engine.trade_record(trade_id).await.expect("read").map(|record| record.status).unwrap_or_else(|| "none".into())
}

pub async fn cross_server_trade_escrows_decides_once_and_settles_both_sides(t: TestStore) {
    let a = Engine::open(t.store.clone(), fast_config("a")).await.expect("open a");
    let b = Engine::open(t.store.clone(), fast_config("b")).await.expect("open b");
    let alice = seeded(&a, "alice").await;
    let bob = seeded(&b, "bob").await;
    let mut alice_events = alice.events();
    let trade = swap("x-1", "alice", "bob", 30_000);

    let first = a.trade_across(&alice, &trade).await.expect("alice prepares");
    assert!(matches!(first, CrossOutcome::Pending(_)), "waits for bob: {first:?}");
    assert!(alice.read(|t| !t.holdings.items.contains_key("sword-alice")), "the sword left alice's profile");
    assert!(alice.read(|t| t.holdings.pending_trades.contains_key("x-1")), "alice holds the trade pending");
    let keys = vec!["alice".to_string(), "bob".to_string()];
    let midway = audit(&t.store, &keys).await;
    assert_eq!(midway.owners.get("sword-alice").map(String::as_str), Some("escrow x-1/0"), "the sword is in escrow");
    assert_eq!(midway.coins, 200);

    let second = b.trade_across(&bob, &trade).await.expect("bob prepares and decides");
    assert!(matches!(second, CrossOutcome::Committed(_)), "the last to prepare decides: {second:?}");
    assert!(bob.read(|t| t.holdings.items.contains_key("sword-alice")), "bob received at once");
    assert_eq!(bob.read(|t| t.holdings.currencies["coins"]), 70);

    // Alice's server learns of the decision through her inbox and settles her side by itself.
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match alice_events.recv().await.expect("events") {
                SessionEvent::TradeSettled { trade_id, committed } => return (trade_id, committed),
                _ => continue,
            }
        }
    })
    .await
    .expect("alice is settled");
    assert_eq!(event, ("x-1".to_string(), true));
    assert_eq!(alice.read(|t| t.holdings.currencies["coins"]), 130);
    let done = settled(&t.store, &keys, 10_000).await;
    assert_eq!(done.owners.get("sword-alice").map(String::as_str), Some("bob"));
    assert_eq!(done.coins, 200, "no coin made or lost");

    // Every step is idempotent by trade id: a retry anywhere moves nothing.
    assert!(matches!(a.trade_across(&alice, &trade).await.expect("retry"), CrossOutcome::Committed(_)));
    assert!(matches!(b.trade_across(&bob, &trade).await.expect("retry"), CrossOutcome::Committed(_)));
    assert_eq!(
        (alice.read(|t| t.holdings.currencies["coins"]), bob.read(|t| t.holdings.currencies["coins"])),
        (130, 70)
    );
    // A different trade under the same id is refused, and so is a local trade reusing it.
    let mut other = swap("x-1", "alice", "bob", 30_000);
    other.legs[1].currencies.insert("coins".into(), 1);
    assert!(matches!(a.trade_across(&alice, &other).await, Err(TradeError::TradeIdReused { .. })));
    let record = a.trade_record("x-1").await.expect("read").expect("recorded");
    assert_eq!((record.status.as_str(), record.prepared.len()), ("committed", 2));
    assert_eq!(a.trades_of(&id("alice"), None, 10).await.expect("log"), vec!["x-1".to_string()]);
    assert_eq!(b.trades_of(&id("bob"), None, 10).await.expect("log"), vec!["x-1".to_string()]);
}

pub async fn a_party_that_cannot_give_aborts_the_trade_and_the_others_get_their_escrow_back(t: TestStore) {
    let a = Engine::open(t.store.clone(), fast_config("a")).await.expect("open a");
    let b = Engine::open(t.store.clone(), fast_config("b")).await.expect("open b");
    let alice = seeded(&a, "alice").await;
    let bob = seeded(&b, "bob").await;
    let mut trade = swap("x-short", "alice", "bob", 30_000);
    trade.legs[1].currencies.insert("coins".into(), 500);
    assert!(matches!(a.trade_across(&alice, &trade).await.expect("alice prepares"), CrossOutcome::Pending(_)));
    assert!(matches!(b.trade_across(&bob, &trade).await, Err(TradeError::InsufficientBalance { .. })));
    assert_eq!(status_of(&a, "x-short").await, "aborted");
    let keys = vec!["alice".to_string(), "bob".to_string()];
    let done = settled(&t.store, &keys, 10_000).await;
    assert_eq!(done.owners.get("sword-alice").map(String::as_str), Some("alice"), "alice got her sword back");
    assert_eq!(done.coins, 200);
    assert_eq!(bob.read(|t| t.holdings.currencies["coins"]), 100, "bob's refused prepare changed nothing");
}

pub async fn a_first_party_that_cannot_give_records_the_trade_aborted_so_it_cannot_start_again(t: TestStore) {
    let a = Engine::open(t.store.clone(), fast_config("a")).await.expect("open a");
    let b = Engine::open(t.store.clone(), fast_config("b")).await.expect("open b");
    let alice = seeded(&a, "alice").await;
    let bob = seeded(&b, "bob").await;
    let mut trade = swap("x-first", "alice", "bob", 30_000);
    trade.legs[0].items = vec!["sword-nobody".into()];
    assert!(matches!(a.trade_across(&alice, &trade).await, Err(TradeError::ItemNotHeld { .. })));
    let record = a.trade_record("x-first").await.expect("read").expect("recorded");
    assert_eq!(record.status, "aborted");
    assert!(record.abort_reason.as_deref().is_some_and(|reason| reason.contains("cannot give")), "{record:?}");
    assert!(matches!(b.trade_across(&bob, &trade).await.expect("bob"), CrossOutcome::Aborted(_)));
    assert_eq!(bob.read(|t| t.holdings.currencies["coins"]), 100, "bob escrowed nothing");
    assert!(bob.read(|t| t.holdings.pending_trades.is_empty()));
}

pub async fn cross_server_trades_are_refused_clearly_when_malformed(t: TestStore) {
    let a = Engine::open(t.store.clone(), fast_config("a")).await.expect("open a");
    let alice = seeded(&a, "alice").await;
    let not_tradable = a.start_session(&traders(), "plain").await.expect("start");
    let invalid = |result: Result<CrossOutcome, TradeError>| matches!(result, Err(TradeError::Invalid { .. }));
    assert!(invalid(a.trade_across(&not_tradable, &swap("m-0", "plain", "bob", 30_000)).await), "kind not tradable");
    assert!(invalid(a.trade_across(&alice, &swap("m-1", "carol", "bob", 30_000)).await), "not a party");
    assert!(invalid(a.trade_across(&alice, &swap("m-2", "alice", "bob", 10)).await), "timeout too short");
    assert!(invalid(a.trade_across(&alice, &swap("m-3", "alice", "alice", 30_000)).await), "a party twice");
    let mut bad_leg = swap("m-4", "alice", "bob", 30_000);
    bad_leg.legs[0].to = 7;
    assert!(invalid(a.trade_across(&alice, &bad_leg).await), "a leg to no party");
    assert!(a.trade_record("m-1").await.expect("read").is_none(), "a refused trade leaves no record");
    assert!(alice.read(|t| t.holdings.pending_trades.is_empty() && t.holdings.items.contains_key("sword-alice")));
}

pub async fn cross_trades_conserve_items_and_currency_under_faults(t: TestStore) {
    let faults = |seed| FaultConfig {
        error_before_apply: 0.03,
        error_after_apply: 0.03,
        unknown_without_apply: 0.03,
        read_error: 0.02,
        notification_loss: 0.3,
        ..FaultConfig::none(seed)
    };
    let per_side = 6;
    let mut engines = Vec::new();
    let mut sides: Vec<Vec<Session<Trader>>> = Vec::new();
    let mut keys = Vec::new();
    for (side, seed) in [("a", 71), ("b", 72)] {
        let faulty: SharedStore = Arc::new(FaultStore::new(t.store.clone(), faults(seed)));
        let engine = Engine::open(faulty, fast_config(side)).await.expect("open");
        let mut sessions = Vec::new();
        for n in 0..per_side {
            let key = format!("{side}{n}");
            sessions.push(seeded_retrying(&engine, &key).await);
            keys.push(key);
        }
        engines.push(engine);
        sides.push(sessions);
    }
    let mut random = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut outcomes: BTreeMap<&'static str, u32> = BTreeMap::new();
    for round in 0..30 {
        let (i, j) = (random.random_range(0..per_side), random.random_range(0..per_side));
        let (alice, bob) = (&sides[0][i], &sides[1][j]);
        // alice gives one item she holds (if any), bob gives coins.
        let item = alice.read(|t| t.holdings.items.keys().next().cloned());
        let mut legs =
            vec![TradeLeg { from: 1, to: 0, items: vec![], currencies: BTreeMap::from([("coins".to_string(), 5)]) }];
        if let Some(item) = item {
            legs.push(TradeLeg { from: 0, to: 1, items: vec![item], currencies: BTreeMap::new() });
        }
        let trade = CrossTrade {
            id: format!("f-{round}"),
            parties: vec![alice.id().clone(), bob.id().clone()],
            legs,
            timeout_ms: 2_000,
        };
        let (left, right) = tokio::join!(engines[0].trade_across(alice, &trade), engines[1].trade_across(bob, &trade));
        for result in [left, right] {
            let label = match result {
                Ok(CrossOutcome::Committed(_)) => "committed",
                Ok(CrossOutcome::Aborted(_)) => "aborted",
                Ok(CrossOutcome::Pending(_)) => "pending",
                Err(TradeError::InsufficientBalance { .. } | TradeError::ItemNotHeld { .. }) => "refused",
                Err(TradeError::Transaction(TransactError::OutcomeUnknown | TransactError::FencedOut { .. })) => {
                    "session ended"
                }
                Err(TradeError::Transaction(_) | TradeError::Store(_)) => "store failed",
                Err(other) => panic!("unexpected: {other}"),
            };
            *outcomes.entry(label).or_default() += 1;
        }
    }
    assert!(outcomes.get("committed").copied().unwrap_or(0) > 10, "most trades commit despite faults: {outcomes:?}");
    // Both servers die with trades in flight; once nothing moves, whatever is in flight is in
    // escrow: nothing is duplicated or lost.
    for engine in &engines {
        engine.crash();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let midway = audit(&t.store, &keys).await;
    assert_eq!(midway.coins, 100 * keys.len() as i64, "coins in profiles and escrows: {outcomes:?}");
    assert_eq!(midway.owners.len(), keys.len(), "every item in one profile or one escrow");
    // Everyone rejoins on a clean server: what they hold pending resolves on load or at the deadline.
    let clean = Engine::open(t.store.clone(), fast_config("clean")).await.expect("open clean");
    let mut rejoined = Vec::new();
    for key in &keys {
        rejoined.push(clean.start_session(&tradable(), key).await.expect("rejoin"));
    }
    let done = settled(&t.store, &keys, 30_000).await;
    assert_eq!(done.coins, 100 * keys.len() as i64, "no coin made or lost: {outcomes:?}");
    assert_eq!(done.owners.len(), keys.len(), "no item lost: {outcomes:?}");
    let report = clean.shutdown(Duration::from_secs(30)).await;
    assert!(report.failed.is_empty(), "{report:?}");
}

/// Seeds under faults: a start or save that fails is retried (the audit needs every player).
async fn seeded_retrying(engine: &Engine, key: &str) -> Session<Trader> {
    for _ in 0..20 {
        let Ok(session) = engine.start_session(&tradable(), key).await else { continue };
        if session.read(|t| t.holdings.items.is_empty()) {
            let _ = session.update(|t| {
                t.holdings.currencies.insert("coins".into(), 100);
                t.holdings.items.insert(format!("sword-{key}"), json!({"kind": "sword"}));
            });
        }
        if session.save_now().await.is_ok() {
            return session;
        }
    }
    panic!("{key} could not be seeded");
}

/// The operator view (`hoard::liveops::trades`): a pending trade with its deadline, the escrow
/// still present, who holds each party and which party's profile marks it pending; the list of
/// trades with escrow, page by page; then the same trade once settled.
pub async fn the_operator_view_shows_a_pending_trade_its_escrow_and_holders_then_the_settled_trade(t: TestStore) {
    use hoard::liveops::trades::{escrowed_trades, trade_view};
    let a = Engine::open(t.store.clone(), fast_config("a")).await.expect("open a");
    let b = Engine::open(t.store.clone(), fast_config("b")).await.expect("open b");
    let alice = seeded(&a, "alice").await;
    let bob = seeded(&b, "bob").await;
    let trade = swap("v-1", "alice", "bob", 30_000);
    assert!(matches!(a.trade_across(&alice, &trade).await.expect("alice prepares"), CrossOutcome::Pending(_)));
    assert!(trade_view(&*t.store, "v-0").await.expect("read").is_none(), "no such trade");
    assert!(trade_view(&*t.store, "a/b").await.is_err(), "a trade id holds no '/'");

    let view = trade_view(&*t.store, "v-1").await.expect("read").expect("the trade");
    assert_eq!((view.status.as_str(), view.cross_server, view.prepared.clone()), ("pending", true, vec![0]));
    assert!(view.created_at_ms > 0);
    assert_eq!(view.deadline_ms, Some(view.created_at_ms + 30_000));
    assert!(!view.past_deadline && view.now_ms < view.created_at_ms + 30_000);
    assert_eq!(view.escrows_present, 1, "alice's leg is in escrow, bob's not yet");
    let escrow = view.legs[0].escrow.as_ref().expect("alice's escrow");
    assert_eq!(escrow.items.keys().collect::<Vec<_>>(), vec!["sword-alice"]);
    assert_eq!(view.legs[0].escrow_id.key.as_str(), "v-1/0");
    assert!(view.legs[1].escrow.is_none() && view.legs[1].currencies["coins"] == 30);
    let (alice_view, bob_view) = (&view.parties[0], &view.parties[1]);
    assert_eq!((alice_view.id.clone(), bob_view.id.clone()), (id("alice"), id("bob")));
    assert_eq!(alice_view.holder.as_ref(), Some(a.holder()), "alice is held by server a");
    assert_eq!(bob_view.holder.as_ref(), Some(b.holder()), "bob is held by server b");
    assert!(alice_view.holder_alive && bob_view.holder_alive);
    assert!(alice_view.epoch > 0 && alice_view.holder_expires_at_ms.is_some_and(|at| at > view.now_ms));
    assert!(alice_view.prepared && !bob_view.prepared);
    assert!(alice_view.pending && !bob_view.pending, "only alice's profile marks it pending");
    assert_eq!(alice_view.pending_at.as_deref(), Some("/data/holdings/pending_trades"), "inside the envelope");

    // A second trade in escrow: the list pages by trade.
    let tip = CrossTrade {
        id: "v-2".into(),
        parties: vec![id("alice"), id("bob")],
        legs: vec![TradeLeg { from: 0, to: 1, items: vec![], currencies: BTreeMap::from([("coins".to_string(), 5)]) }],
        timeout_ms: 30_000,
    };
    assert!(matches!(a.trade_across(&alice, &tip).await.expect("alice tips"), CrossOutcome::Pending(_)));
    let first = escrowed_trades(&*t.store, None, 1).await.expect("list");
    assert_eq!(first.trades.len(), 1);
    assert_eq!((first.trades[0].trade_id.as_str(), first.trades[0].status.as_deref()), ("v-1", Some("pending")));
    assert_eq!(first.trades[0].escrowed_legs, vec![0]);
    assert_eq!(first.trades[0].deadline_ms, view.deadline_ms);
    assert_eq!(first.next_after.as_deref(), Some("v-1"));
    let second = escrowed_trades(&*t.store, first.next_after.as_deref(), 1).await.expect("list");
    assert_eq!(second.trades.iter().map(|trade| trade.trade_id.as_str()).collect::<Vec<_>>(), vec!["v-2"]);
    assert_eq!(second.next_after, None, "the last page");
    let aborted = a.abort_trade("v-2", "an operator aborted it").await.expect("abort");
    assert_eq!(aborted.status, "aborted");

    // bob prepares and decides; both sides settle: nothing left in escrow, no pending mark.
    assert!(matches!(b.trade_across(&bob, &trade).await.expect("bob decides"), CrossOutcome::Committed(_)));
    let keys = vec!["alice".to_string(), "bob".to_string()];
    let done = settled(&t.store, &keys, 10_000).await;
    assert_eq!(done.coins, 200);
    let view = trade_view(&*t.store, "v-1").await.expect("read").expect("the trade");
    assert_eq!((view.status.as_str(), view.prepared.clone(), view.escrows_present), ("committed", vec![0, 1], 0));
    assert!(!view.past_deadline);
    assert!(view.legs.iter().all(|leg| leg.escrow.is_none() && leg.escrow_version > 0), "taken, not never written");
    assert!(view.parties.iter().all(|party| !party.pending && party.prepared));
    let aborted = trade_view(&*t.store, "v-2").await.expect("read").expect("the trade");
    assert_eq!((aborted.status.as_str(), aborted.abort_reason.as_deref()), ("aborted", Some("an operator aborted it")));
    assert!(escrowed_trades(&*t.store, None, 0).await.expect("list").trades.is_empty(), "nothing stuck");
}

crate::backends::backend_suite! {
    config: Default::default();
    backends: [memory, sqlite, postgres];
    cases: [
        cross_server_trade_escrows_decides_once_and_settles_both_sides,
        a_party_that_cannot_give_aborts_the_trade_and_the_others_get_their_escrow_back,
        a_first_party_that_cannot_give_records_the_trade_aborted_so_it_cannot_start_again,
        cross_server_trades_are_refused_clearly_when_malformed,
        cross_trades_conserve_items_and_currency_under_faults,
        the_operator_view_shows_a_pending_trade_its_escrow_and_holders_then_the_settled_trade,
    ]
}

// ---- Crash points, on memory with paused time. ----

/// Where a server dies. `Before`: the commit never reaches the store; `After`: it applied and the
/// answer never came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// alice's prepare (she goes first: it creates the record and escrows her sword).
    AlicePrepares,
    /// bob's prepare, which decides.
    BobDecides,
    /// bob's settle (he receives the sword).
    BobSettles,
    /// alice's settle (she receives the coins).
    AliceSettles,
}

fn writes_record(commit: &Commit) -> bool {
    commit.writes.iter().any(|write| write.id.store.as_str() == hoard::engine::trade::TRADE_RECORD_STORE)
}

fn takes_escrow(commit: &Commit) -> bool {
    commit.writes.iter().any(|write| {
        write.id.store.as_str() == hoard::engine::trade::TRADE_ESCROW_STORE && write.value == ValueOp::Delete
    })
}

async fn a_crash_at(step: Step, applied: bool) {
    let base = crate::backends::memory(Default::default()).await;
    let probe_a = Arc::new(ProbeStore::new(base.store.clone()));
    let probe_b = Arc::new(ProbeStore::new(base.store.clone()));
    let a = Engine::open(probe_a.clone(), fast_config("a")).await.expect("open a");
    let b = Engine::open(probe_b.clone(), fast_config("b")).await.expect("open b");
    let alice = seeded(&a, "alice").await;
    let bob = seeded(&b, "bob").await;
    let trade = swap("c-1", "alice", "bob", 5_000);
    let (crashing, probe) = match step {
        Step::AlicePrepares | Step::AliceSettles => (&a, &probe_a),
        Step::BobDecides | Step::BobSettles => (&b, &probe_b),
    };
    match step {
        Step::AlicePrepares | Step::BobDecides => probe.stop_at_commit(applied, writes_record),
        Step::BobSettles | Step::AliceSettles => probe.stop_at_commit(applied, takes_escrow),
    }
    let mut calls = Vec::new();
    {
        let (a, alice, trade) = (a.clone(), alice.clone(), trade.clone());
        calls.push(tokio::spawn(async move { a.trade_across(&alice, &trade).await }));
    }
    if step != Step::AlicePrepares {
        let first = calls.pop().expect("alice's call").await.expect("alice's call");
        assert!(matches!(first, Ok(CrossOutcome::Pending(_))), "{first:?}");
        let (b, bob, trade) = (b.clone(), bob.clone(), trade.clone());
        calls.push(tokio::spawn(async move { b.trade_across(&bob, &trade).await }));
    }
    probe.stopped().await;
    crashing.crash();
    for call in calls {
        call.abort();
    }
    // The crashed party rejoins on a new server; the other plays on.
    let rejoin = Engine::open(base.store.clone(), fast_config("rejoin")).await.expect("open rejoin");
    let crashed_key = if std::ptr::eq(crashing, &a) { "alice" } else { "bob" };
    let _rejoined = rejoin.start_session(&tradable(), crashed_key).await.expect("rejoin");
    let keys = vec!["alice".to_string(), "bob".to_string()];
    let done = settled(&base.store, &keys, 60_000).await;
    assert_eq!(done.coins, 200, "{step:?} applied={applied}: no coin made or lost");
    let status = status_of(&rejoin, "c-1").await;
    let sword = done.owners.get("sword-alice").map(String::as_str);
    match status.as_str() {
        "committed" => assert_eq!(sword, Some("bob"), "{step:?} applied={applied}: committed moves the sword"),
        "aborted" | "none" => assert_eq!(sword, Some("alice"), "{step:?} applied={applied}: nothing moved in the end"),
        other => panic!("{step:?} applied={applied}: the trade is still {other}"),
    }
    let expected = match (step, applied) {
        (Step::AlicePrepares, false) => "none",
        (Step::AlicePrepares, true) | (Step::BobDecides, false) => "aborted",
        _ => "committed",
    };
    assert_eq!(status, expected, "{step:?} applied={applied}");
}

#[tokio::test(start_paused = true)]
async fn a_crash_before_the_first_escrow_leaves_nothing_pending() {
    a_crash_at(Step::AlicePrepares, false).await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_after_the_first_escrow_aborts_at_the_deadline_and_refunds_on_rejoin() {
    a_crash_at(Step::AlicePrepares, true).await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_before_the_decision_aborts_at_the_deadline() {
    a_crash_at(Step::BobDecides, false).await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_after_the_decision_settles_both_sides_from_the_record() {
    a_crash_at(Step::BobDecides, true).await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_before_the_receivers_leg_settles_it_on_rejoin() {
    a_crash_at(Step::BobSettles, false).await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_after_the_receivers_leg_moves_nothing_twice() {
    a_crash_at(Step::BobSettles, true).await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_before_the_other_sides_leg_settles_it_on_rejoin() {
    a_crash_at(Step::AliceSettles, false).await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_after_the_other_sides_leg_moves_nothing_twice() {
    a_crash_at(Step::AliceSettles, true).await;
}

/// The deadline passes while bob's server is frozen (its commit held back): alice's server aborts
/// the trade at the deadline and gets her sword back, and bob's late prepare, when it finally
/// reaches the store, changes nothing.
#[tokio::test(start_paused = true)]
async fn a_trade_whose_deadline_passes_while_a_server_is_frozen_aborts_and_the_late_commit_changes_nothing() {
    let base = crate::backends::memory(Default::default()).await;
    let probe_b = Arc::new(ProbeStore::new(base.store.clone()));
    let a = Engine::open(base.store.clone(), fast_config("a")).await.expect("open a");
    let b = Engine::open(probe_b.clone(), fast_config("b")).await.expect("open b");
    let alice = seeded(&a, "alice").await;
    let bob = seeded(&b, "bob").await;
    let trade = swap("z-1", "alice", "bob", 5_000);
    assert!(matches!(a.trade_across(&alice, &trade).await.expect("alice"), CrossOutcome::Pending(_)));
    // bob's server freezes between reading the record and committing its prepare: every commit
    // it sends now takes 8 s to arrive, past the 5 s deadline.
    probe_b.delay_commits(8_000);
    let late = b.trade_across(&bob, &trade).await.expect("bob's late call answers");
    assert!(matches!(late, CrossOutcome::Aborted(_)), "bob learns it aborted: {late:?}");
    probe_b.delay_commits(0);
    assert_eq!(status_of(&a, "z-1").await, "aborted");
    let keys = vec!["alice".to_string(), "bob".to_string()];
    let done = settled(&base.store, &keys, 30_000).await;
    assert_eq!(done.owners.get("sword-alice").map(String::as_str), Some("alice"), "alice has her sword back");
    assert_eq!(bob.read(|t| t.holdings.currencies["coins"]), 100, "bob's late prepare moved nothing");
    assert!(bob.read(|t| t.holdings.pending_trades.is_empty()));
    assert_eq!(done.coins, 200);
}

/// With nobody left to abort it (alice's server crashed after escrowing), the store's clock alone
/// refuses a prepare after the deadline: the trade can no longer commit, and alice is refunded
/// when she rejoins.
#[tokio::test(start_paused = true)]
async fn past_the_deadline_the_store_refuses_the_deciding_prepare_by_itself() {
    let base = crate::backends::memory(Default::default()).await;
    let a = Engine::open(base.store.clone(), fast_config("a")).await.expect("open a");
    let b = Engine::open(base.store.clone(), fast_config("b")).await.expect("open b");
    let alice = seeded(&a, "alice").await;
    let bob = seeded(&b, "bob").await;
    let trade = swap("z-2", "alice", "bob", 5_000);
    assert!(matches!(a.trade_across(&alice, &trade).await.expect("alice"), CrossOutcome::Pending(_)));
    a.crash();
    tokio::time::sleep(Duration::from_millis(6_000)).await;
    assert_eq!(status_of(&b, "z-2").await, "pending", "nobody has aborted it yet");
    let late = b.trade_across(&bob, &trade).await.expect("bob");
    assert!(matches!(late, CrossOutcome::Aborted(_)), "{late:?}");
    assert_eq!(bob.read(|t| t.holdings.currencies["coins"]), 100);
    let rejoin = Engine::open(base.store.clone(), fast_config("rejoin")).await.expect("open");
    let _alice = rejoin.start_session(&tradable(), "alice").await.expect("rejoin");
    let done = settled(&base.store, &["alice".to_string(), "bob".to_string()], 30_000).await;
    assert_eq!(done.owners.get("sword-alice").map(String::as_str), Some("alice"));
    assert_eq!(done.coins, 200);
}

/// The reproduction: a same-engine trade naming a party of another engine used to read
/// the trade record first and then refuse with "not live on this engine". Now it is refused at
/// once, saying what to use, with nothing read or written.
#[tokio::test(start_paused = true)]
async fn a_local_trade_with_a_party_of_another_engine_is_refused_at_once_with_nothing_read() {
    let base = crate::backends::memory(Default::default()).await;
    let probe = Arc::new(ProbeStore::new(base.store.clone()));
    let a = Engine::open(probe.clone(), fast_config("a")).await.expect("open a");
    let b = Engine::open(base.store.clone(), fast_config("b")).await.expect("open b");
    let alice = seeded(&a, "alice").await;
    let bob = seeded(&b, "bob").await;
    let trade = hoard::engine::Trade { id: "l-1".into(), legs: swap("l-1", "alice", "bob", 30_000).legs };
    let (reads, commits) = (probe.reads(), probe.commits());
    let refused = a.trade(&[&alice, &bob], &trade).await;
    let Err(TradeError::Transaction(error @ TransactError::OnAnotherEngine { .. })) = refused else {
        panic!("expected OnAnotherEngine, got {refused:?}");
    };
    assert!(error.to_string().contains("trade_across"), "the message says what to use: {error}");
    assert_eq!((probe.reads(), probe.commits()), (reads, commits), "nothing read or written");
}

/// Game servers spawn engine calls on multi-threaded runtimes: the cross-server futures are `Send`.
#[allow(dead_code, clippy::let_underscore_future)]
fn cross_trade_futures_are_send(engine: Engine, session: Session<Trader>, trade: CrossTrade) {
    fn send<T: Send>(_: T) {}
    send(engine.trade_across(&session, &trade));
    send(engine.settle_trade(&session, "x"));
    send(engine.abort_trade("x", "declined"));
}

// Conservation under faults on the PostgreSQL deployment variants too (polled notifications and
// no advisory locks; a transaction-mode pooler): every backend hoard ships for.
mod profiles {
    use super::*;

    crate::backends::backend_suite! {
        config: Default::default();
        backends: [postgres_portable, postgres_pooled];
        cases: [cross_trades_conserve_items_and_currency_under_faults]
    }
}
