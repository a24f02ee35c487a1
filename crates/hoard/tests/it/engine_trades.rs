//! Trades (G3) and purchase receipts (G4) on every backend, with and without injected faults.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hoard::engine::{
    Engine, HeldPolicy, Holdings, LoadFailurePolicy, ProfileKind, ProfileSchema, ReceiptOutcome, Session, StartOptions,
    Tradable, Trade, TradeError, TradeLeg, TradeOutcome, TransactError,
};
use hoard::store::fault::{FaultConfig, FaultStore};
use hoard::store::{DocId, SharedStore, StoreName, get};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::backends::TestStore;
use crate::engine_sessions::fast_config;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Trader {
    pub holdings: Holdings,
}

impl Tradable for Trader {
    fn holdings(&self) -> &Holdings {
        &self.holdings
    }
    fn holdings_mut(&mut self) -> &mut Holdings {
        &mut self.holdings
    }
}

pub fn traders() -> ProfileKind<Trader> {
    ProfileKind::new(StoreName::new("traders").expect("name"), ProfileSchema::new(Trader::default))
}

fn id(key: &str) -> DocId {
    DocId::parse("traders", key).expect("id")
}

pub fn coins(session: &Session<Trader>) -> i64 {
    session.read(|t| t.holdings.currencies.get("coins").copied().unwrap_or(0))
}

pub fn stored(document: &hoard::store::Document) -> Trader {
    serde_json::from_value(document.value.as_ref().expect("saved")["data"].clone()).expect("trader")
}

/// Starts `count` traders with 100 coins and three unique items each, saved.
async fn seed_traders(engine: &Engine, count: usize) -> Vec<Session<Trader>> {
    seed_traders_named(engine, "t", count).await
}

pub async fn seed_traders_named(engine: &Engine, prefix: &str, count: usize) -> Vec<Session<Trader>> {
    let mut sessions = Vec::with_capacity(count);
    for n in 0..count {
        let session = engine.start_session(&traders(), &format!("{prefix}{n}")).await.expect("start");
        session
            .update(|t| {
                t.holdings.currencies.insert("coins".into(), 100);
                for k in 0..3 {
                    t.holdings.items.insert(format!("item-{n}-{k}"), json!({"kind": "sword"}));
                }
            })
            .expect("seed");
        session.save_now().await.expect("save");
        sessions.push(session);
    }
    sessions
}

pub fn simple_trade(trade_id: &str, item: &str, amount: i64) -> Trade {
    Trade {
        id: trade_id.into(),
        legs: vec![
            TradeLeg { from: 0, to: 1, items: vec![item.into()], currencies: BTreeMap::new() },
            TradeLeg { from: 1, to: 0, items: vec![], currencies: BTreeMap::from([("coins".to_string(), amount)]) },
        ],
    }
}

pub async fn trades_conserve_items_and_currency_under_faults(t: TestStore) {
    let config = FaultConfig {
        error_before_apply: 0.05,
        error_after_apply: 0.05,
        unknown_without_apply: 0.05,
        read_error: 0.02,
        latency_spike: 0.01,
        latency_spike_ms_max: 20,
        ..FaultConfig::none(2024)
    };
    let faulty: SharedStore = Arc::new(FaultStore::new(t.store.clone(), config));
    let engine = Engine::open(faulty, fast_config("trader")).await.expect("open");
    let players = 120;
    let sessions = Arc::new(seed_traders(&engine, players).await);
    let mut workers = Vec::new();
    for worker in 0..8u64 {
        let (engine, sessions) = (engine.clone(), sessions.clone());
        workers.push(tokio::spawn(async move {
            let mut random = rand_chacha::ChaCha8Rng::seed_from_u64(worker);
            let (mut committed, mut refused) = (0u32, 0u32);
            for round in 0..150 {
                let a = random.random_range(0..sessions.len());
                let b = (a + random.random_range(1..sessions.len())) % sessions.len();
                let (giver, taker) = (&sessions[a], &sessions[b]);
                let items: Vec<String> = giver.read(|t| t.holdings.items.keys().take(2).cloned().collect());
                let amount = random.random_range(1..40);
                let mut legs = vec![TradeLeg {
                    from: 1,
                    to: 0,
                    items: vec![],
                    currencies: BTreeMap::from([("coins".to_string(), amount)]),
                }];
                if let Some(item) = items.first() {
                    legs.push(TradeLeg { from: 0, to: 1, items: vec![item.clone()], currencies: BTreeMap::new() });
                }
                let trade = Trade { id: format!("w{worker}-r{round}"), legs };
                match engine.trade(&[giver, taker], &trade).await {
                    Ok(TradeOutcome::Committed(_)) => committed += 1,
                    Ok(TradeOutcome::AlreadyCommitted(_)) => panic!("fresh ids never repeat"),
                    Err(TradeError::InsufficientBalance { .. } | TradeError::ItemNotHeld { .. }) => refused += 1,
                    Err(TradeError::Transaction(TransactError::Store(_))) => refused += 1,
                    Err(other) => panic!("unexpected trade error: {other}"),
                }
            }
            (committed, refused)
        }));
    }
    let mut committed = 0;
    for worker in workers {
        committed += worker.await.expect("worker").0;
    }
    assert!(committed > 300, "most trades commit despite faults ({committed})");
    let report = engine.shutdown(Duration::from_secs(60)).await;
    assert!(report.failed.is_empty() && report.timed_out.is_empty(), "{report:?}");
    let ids: Vec<DocId> = (0..players).map(|n| id(&format!("t{n}"))).collect();
    let documents = t.store.get_many(&ids).await.expect("read");
    let mut owners: BTreeMap<String, usize> = BTreeMap::new();
    let mut total_coins = 0;
    for (n, document) in documents.iter().enumerate() {
        let trader = stored(document);
        total_coins += trader.holdings.currencies.get("coins").copied().unwrap_or(0);
        for item in trader.holdings.items.keys() {
            assert!(owners.insert(item.clone(), n).is_none(), "item {item} has two owners");
        }
        assert!(trader.holdings.currencies.values().all(|balance| *balance >= 0));
    }
    assert_eq!(owners.len(), players * 3, "no item lost");
    assert_eq!(total_coins, 100 * players as i64, "no coin made or lost");
}

pub async fn retried_trade_returns_the_first_result_and_moves_nothing(t: TestStore) {
    let engine = Engine::open(t.store.clone(), fast_config("a")).await.expect("open");
    let sessions = seed_traders(&engine, 2).await;
    let trade = simple_trade("trade-1", "item-0-0", 30);
    let first = match engine.trade(&[&sessions[0], &sessions[1]], &trade).await.expect("trade") {
        TradeOutcome::Committed(record) => record,
        other => panic!("expected Committed, got {other:?}"),
    };
    assert_eq!((coins(&sessions[0]), coins(&sessions[1])), (130, 70));
    match engine.trade(&[&sessions[0], &sessions[1]], &trade).await.expect("retry") {
        TradeOutcome::AlreadyCommitted(record) => assert_eq!(record, first),
        other => panic!("expected AlreadyCommitted, got {other:?}"),
    }
    assert_eq!((coins(&sessions[0]), coins(&sessions[1])), (130, 70), "nothing moved twice");
    let reused = simple_trade("trade-1", "item-0-1", 5);
    assert!(matches!(
        engine.trade(&[&sessions[0], &sessions[1]], &reused).await,
        Err(TradeError::TradeIdReused { .. })
    ));
    assert_eq!(engine.trades_of(&id("t0"), None, 10).await.expect("log"), vec!["trade-1".to_string()]);
    assert_eq!(engine.trades_of(&id("t1"), None, 10).await.expect("log"), vec!["trade-1".to_string()]);
    let record = engine.trade_record("trade-1").await.expect("read").expect("recorded");
    assert!(record.committed_at_ms > 0);
    assert_eq!(record.legs[0].items, vec!["item-0-0".to_string()]);
    let documents = t.store.get_many(&[id("t0"), id("t1")]).await.expect("read");
    assert!(stored(&documents[1]).holdings.items.contains_key("item-0-0"));
    assert!(!stored(&documents[0]).holdings.items.contains_key("item-0-0"));
    // A retry reaching a party that has ended since still learns the trade committed.
    sessions[1].end().await.expect("end");
    match engine.trade(&[&sessions[0], &sessions[1]], &trade).await.expect("retry after end") {
        TradeOutcome::AlreadyCommitted(record) => assert_eq!(record, first),
        other => panic!("expected AlreadyCommitted, got {other:?}"),
    }
}

pub async fn invalid_trades_are_refused_and_change_nothing(t: TestStore) {
    let engine = Engine::open(t.store.clone(), fast_config("a")).await.expect("open");
    let sessions = seed_traders(&engine, 2).await;
    let pair = [&sessions[0], &sessions[1]];
    let not_held = simple_trade("bad-1", "item-1-0", 5);
    assert!(matches!(engine.trade(&pair, &not_held).await, Err(TradeError::ItemNotHeld { .. })));
    let too_much = simple_trade("bad-2", "item-0-0", 101);
    assert!(matches!(engine.trade(&pair, &too_much).await, Err(TradeError::InsufficientBalance { .. })));
    let twice = Trade {
        id: "bad-3".into(),
        legs: vec![
            TradeLeg { from: 0, to: 1, items: vec!["item-0-0".into()], currencies: BTreeMap::new() },
            TradeLeg { from: 0, to: 1, items: vec!["item-0-0".into()], currencies: BTreeMap::new() },
        ],
    };
    assert!(matches!(engine.trade(&pair, &twice).await, Err(TradeError::Invalid { .. })));
    let negative = Trade {
        id: "bad-4".into(),
        legs: vec![TradeLeg { from: 0, to: 1, items: vec![], currencies: BTreeMap::from([("coins".into(), -5)]) }],
    };
    assert!(matches!(engine.trade(&pair, &negative).await, Err(TradeError::Invalid { .. })));
    let to_self = Trade {
        id: "bad-5".into(),
        legs: vec![TradeLeg { from: 0, to: 0, items: vec!["item-0-0".into()], ..TradeLeg::default() }],
    };
    assert!(matches!(engine.trade(&pair, &to_self).await, Err(TradeError::Invalid { .. })));
    assert_eq!((coins(&sessions[0]), coins(&sessions[1])), (100, 100));
    for trade_id in ["bad-1", "bad-2", "bad-3", "bad-4", "bad-5"] {
        assert!(engine.trade_record(trade_id).await.expect("read").is_none());
    }
    assert!(sessions[0].update(|_| ()).is_ok(), "refused trades leave sessions usable");
}

pub async fn fenced_out_sessions_trade_and_grant_nothing(t: TestStore) {
    let a = Engine::open(t.store.clone(), fast_config("a")).await.expect("open");
    let b = Engine::open(t.store.clone(), fast_config("b")).await.expect("open");
    let on_a = seed_traders(&a, 2).await;
    let steal = StartOptions { held: HeldPolicy::StealNow, on_load_failure: LoadFailurePolicy::Fail };
    let on_b = b.start_session_with(&traders(), "t0", steal).await.expect("steal");
    let result = a.trade(&[&on_a[0], &on_a[1]], &simple_trade("stale-trade", "item-0-0", 10)).await;
    assert!(matches!(result, Err(TradeError::Transaction(TransactError::FencedOut { .. }))), "{result:?}");
    assert!(a.trade_record("stale-trade").await.expect("read").is_none());
    assert_eq!(coins(&on_a[1]), 100, "the other party's memory keeps its prior state");
    let documents = t.store.get_many(&[id("t0"), id("t1")]).await.expect("read");
    assert_eq!(stored(&documents[1]).holdings.currencies["coins"], 100);
    assert!(stored(&documents[0]).holdings.items.contains_key("item-0-0"));
    let grant = a.process_receipt(&on_a[0], "purchase-1", json!({"product": "gems"}), |t: &mut Trader| {
        *t.holdings.currencies.entry("gems".into()).or_insert(0) += 500;
        Ok(())
    });
    assert!(matches!(grant.await, ReceiptOutcome::NotProcessedYet { .. }));
    assert_eq!(on_b.read(|t| t.holdings.currencies.get("gems").copied()), None);
    let outcome = b
        .process_receipt(&on_b, "purchase-1", json!({"product": "gems"}), |t: &mut Trader| {
            *t.holdings.currencies.entry("gems".into()).or_insert(0) += 500;
            Ok(())
        })
        .await;
    assert_eq!(outcome, ReceiptOutcome::Granted, "the real holder grants it");
}

fn grant_gems(t: &mut Trader) -> Result<(), String> {
    *t.holdings.currencies.entry("gems".into()).or_insert(0) += 100;
    Ok(())
}

pub async fn receipt_replays_and_changed_payloads(t: TestStore) {
    let engine = Engine::open(t.store.clone(), fast_config("a")).await.expect("open");
    let sessions = seed_traders(&engine, 2).await;
    let payload = json!({"product": "gems-100", "price": 99});
    assert_eq!(engine.process_receipt(&sessions[0], "p-1", payload.clone(), grant_gems).await, ReceiptOutcome::Granted);
    assert_eq!(
        engine.process_receipt(&sessions[0], "p-1", payload.clone(), grant_gems).await,
        ReceiptOutcome::AlreadyGranted
    );
    let changed = json!({"product": "gems-100", "price": 1});
    assert!(matches!(
        engine.process_receipt(&sessions[0], "p-1", changed, grant_gems).await,
        ReceiptOutcome::Refused { .. }
    ));
    assert!(matches!(
        engine.process_receipt(&sessions[1], "p-1", payload, grant_gems).await,
        ReceiptOutcome::Refused { .. }
    ));
    assert_eq!(sessions[0].read(|t| t.holdings.currencies.get("gems").copied()), Some(100));
    assert_eq!(sessions[1].read(|t| t.holdings.currencies.get("gems").copied()), None);
    let document = get(&*t.store, &id("t0")).await.expect("read");
    assert_eq!(stored(&document).holdings.currencies["gems"], 100, "the grant is durable when Granted is returned");
    // Purchase ids are kept for the life of the store: the 1,000th purchase does not forget the first.
    for n in 0..150 {
        engine.process_receipt(&sessions[0], &format!("bulk-{n}"), json!({}), grant_gems).await;
    }
    let again =
        engine.process_receipt(&sessions[0], "p-1", json!({"product": "gems-100", "price": 99}), grant_gems).await;
    assert_eq!(again, ReceiptOutcome::AlreadyGranted);
    // A replay reaching a session that has ended since still learns the purchase was granted.
    sessions[0].end().await.expect("end");
    let after_end =
        engine.process_receipt(&sessions[0], "p-1", json!({"product": "gems-100", "price": 99}), grant_gems).await;
    assert_eq!(after_end, ReceiptOutcome::AlreadyGranted);
    let unknown = engine.process_receipt(&sessions[0], "p-2", json!({}), grant_gems).await;
    assert!(matches!(unknown, ReceiptOutcome::NotProcessedYet { .. }), "an ended session grants nothing: {unknown:?}");
}

pub async fn concurrent_receipts_on_two_engines_grant_exactly_once(t: TestStore) {
    let a = Engine::open(t.store.clone(), fast_config("a")).await.expect("open");
    let b = Engine::open(t.store.clone(), fast_config("b")).await.expect("open");
    let on_a = a.start_session(&traders(), "buyer").await.expect("start");
    on_a.save_now().await.expect("save");
    // B takes the player while A still believes it holds it: both get the receipt at once.
    let steal = StartOptions { held: HeldPolicy::StealNow, on_load_failure: LoadFailurePolicy::Fail };
    let on_b = b.start_session_with(&traders(), "buyer", steal).await.expect("steal");
    let payload = json!({"product": "gems-100"});
    let (from_a, from_b) = tokio::join!(
        a.process_receipt(&on_a, "dup-1", payload.clone(), grant_gems),
        b.process_receipt(&on_b, "dup-1", payload.clone(), grant_gems)
    );
    assert_eq!(from_b, ReceiptOutcome::Granted);
    // A is fenced out: it never grants. Whether it answers "retry later" or already sees B's
    // record depends on which commit reached the store first; both are true.
    assert!(matches!(from_a, ReceiptOutcome::NotProcessedYet { .. } | ReceiptOutcome::AlreadyGranted), "{from_a:?}");
    // And the same engine receiving it twice at once.
    let (first, second) = tokio::join!(
        b.process_receipt(&on_b, "dup-2", payload.clone(), grant_gems),
        b.process_receipt(&on_b, "dup-2", payload.clone(), grant_gems)
    );
    let mut outcomes = vec![first, second];
    outcomes.sort_by_key(|outcome| format!("{outcome:?}"));
    assert_eq!(outcomes, vec![ReceiptOutcome::AlreadyGranted, ReceiptOutcome::Granted]);
    on_b.end().await.expect("end");
    let document = get(&*t.store, &DocId::parse("traders", "buyer").expect("id")).await.expect("read");
    assert_eq!(stored(&document).holdings.currencies["gems"], 200, "two purchases, each granted once");
}

pub async fn errored_session_never_grants(t: TestStore) {
    let broken: SharedStore =
        Arc::new(FaultStore::new(t.store.clone(), FaultConfig { read_error: 1.0, ..FaultConfig::none(3) }));
    let engine = Engine::open(broken, fast_config("a")).await.expect("open");
    let options = StartOptions { held: HeldPolicy::FailFast, on_load_failure: LoadFailurePolicy::PlayOnDefaults };
    let session = engine.start_session_with(&traders(), "errored", options).await.expect("defaults");
    let outcome = engine.process_receipt(&session, "p-err", json!({}), grant_gems).await;
    assert!(matches!(outcome, ReceiptOutcome::NotProcessedYet { .. }));
    assert!(
        !get(&*t.store, &DocId::parse("hoard.receipts", "traders/p-err").expect("id")).await.expect("read").exists()
    );
}

pub async fn unknown_commit_outcome_is_resolved_both_ways(t: TestStore) {
    let applied_but_answer_lost = FaultConfig { error_after_apply: 1.0, ..FaultConfig::none(12) };
    let lost_before_the_store = FaultConfig { unknown_without_apply: 1.0, ..FaultConfig::none(13) };
    for (round, (config, applies)) in
        [(applied_but_answer_lost, true), (lost_before_the_store, false)].into_iter().enumerate()
    {
        let faults = Arc::new(FaultStore::new(t.store.clone(), config));
        faults.set_enabled(false);
        let engine = Engine::open(faults.clone(), fast_config("a")).await.expect("open");
        let sessions = seed_traders_named(&engine, &format!("u{round}-"), 2).await;
        let trade = simple_trade(&format!("unknown-{round}"), "item-0-0", 10);
        faults.set_enabled(true);
        let outcome = engine.trade(&[&sessions[0], &sessions[1]], &trade).await;
        faults.set_enabled(false);
        let documents = t.store.get_many(&[sessions[0].id().clone(), sessions[1].id().clone()]).await.expect("read");
        let stored_coins = stored(&documents[0]).holdings.currencies["coins"];
        if applies {
            assert!(matches!(outcome, Ok(TradeOutcome::Committed(_))), "{outcome:?}");
            assert_eq!((coins(&sessions[0]), coins(&sessions[1])), (110, 90));
            assert_eq!(stored_coins, 110, "applied exactly once");
            assert!(faults.counts().errors_after_apply >= 1);
        } else {
            assert!(matches!(outcome, Err(TradeError::Transaction(TransactError::Store(_)))), "{outcome:?}");
            assert_eq!((coins(&sessions[0]), coins(&sessions[1])), (100, 100), "memory keeps the prior state");
            assert_eq!(stored_coins, 100);
            assert!(engine.trade_record(&trade.id).await.expect("read").is_none());
            assert!(faults.counts().unknown_without_apply >= 1);
        }
    }
}

pub async fn guild_bank_deposits_mix_sessions_and_lock_free_documents(t: TestStore) {
    let bank = DocId::parse("guilds", "bank-1").expect("id");
    let mut tasks = Vec::new();
    for server in 0..3 {
        let store = t.store.clone();
        let bank = bank.clone();
        tasks.push(tokio::spawn(async move {
            let engine = Engine::open(store, fast_config(&format!("s{server}"))).await.expect("open");
            let players = seed_traders_named(&engine, &format!("g{server}-"), 3).await;
            for round in 0..10 {
                let player = &players[round % players.len()];
                engine
                    .transact(&[player], std::slice::from_ref(&bank), |context| {
                        let coins = context.profiles[0].holdings.currencies.entry("coins".into()).or_insert(0);
                        if *coins < 5 {
                            return Err("not enough coins".into());
                        }
                        *coins -= 5;
                        let banked = context.docs[0].as_ref().and_then(|v| v["coins"].as_i64()).unwrap_or(0);
                        context.docs[0] = Some(json!({ "coins": banked + 5 }));
                        Ok(())
                    })
                    .await
                    .expect("deposit");
            }
            let report = engine.shutdown(Duration::from_secs(30)).await;
            assert!(report.failed.is_empty());
            players.iter().map(|p| p.id().clone()).collect::<Vec<_>>()
        }));
    }
    let mut player_ids = Vec::new();
    for task in tasks {
        player_ids.extend(task.await.expect("server"));
    }
    let bank_document = get(&*t.store, &bank).await.expect("read");
    assert_eq!(bank_document.value, Some(json!({"coins": 150})), "30 deposits of 5, none lost to a concurrent one");
    let documents = t.store.get_many(&player_ids).await.expect("read");
    let player_coins: i64 = documents.iter().map(|d| stored(d).holdings.currencies["coins"]).sum();
    assert_eq!(player_coins + 150, 100 * player_ids.len() as i64, "every coin that left a player is in the bank");
}

pub async fn transactions_refuse_bad_parties(t: TestStore) {
    let a = Engine::open(t.store.clone(), fast_config("a")).await.expect("open");
    let b = Engine::open(t.store.clone(), fast_config("b")).await.expect("open");
    let on_a = seed_traders_named(&a, "x", 1).await;
    let on_b = seed_traders_named(&b, "y", 1).await;
    let foreign = a.transact(&[&on_a[0], &on_b[0]], &[], |_| Ok(())).await;
    match foreign {
        Err(TransactError::OnAnotherEngine { id, holder }) => {
            assert_eq!(&id, on_b[0].id(), "the refusal names the foreign party");
            assert_eq!(&holder, b.holder(), "and the engine that holds it");
        }
        other => panic!("a session of another engine cannot take part, and the refusal says so: {other:?}"),
    }
    let twice = a.transact(&[&on_a[0], &on_a[0]], &[], |_| Ok(())).await;
    assert!(matches!(twice, Err(TransactError::BadParties { .. })));
    let none: Result<(), _> = a.transact::<Trader, ()>(&[], &[], |_| Ok(())).await;
    assert!(matches!(none, Err(TransactError::BadParties { .. })));
    let many: Vec<DocId> = (0..a.config().transaction_parties_max)
        .map(|n| DocId::parse("guilds", &format!("d{n}")).expect("id"))
        .collect();
    let too_many = a.transact(&[&on_a[0]], &many, |_| Ok(())).await;
    assert!(matches!(too_many, Err(TransactError::BadParties { .. })), "the party limit is named and enforced");
    let refused = a
        .transact(&[&on_a[0]], &[], |context| {
            context.profiles[0].holdings.currencies.insert("coins".into(), 0);
            Err::<(), _>("the game said no".to_string())
        })
        .await;
    assert!(matches!(refused, Err(TransactError::Refused { .. })));
    assert_eq!(coins(&on_a[0]), 100, "a refused change leaves memory as it was");
}

crate::backends::backend_suite! {
    config: Default::default();
    backends: [memory, sqlite, postgres];
    cases: [
        trades_conserve_items_and_currency_under_faults,
        retried_trade_returns_the_first_result_and_moves_nothing,
        invalid_trades_are_refused_and_change_nothing,
        fenced_out_sessions_trade_and_grant_nothing,
        receipt_replays_and_changed_payloads,
        concurrent_receipts_on_two_engines_grant_exactly_once,
        errored_session_never_grants,
        unknown_commit_outcome_is_resolved_both_ways,
        guild_bank_deposits_mix_sessions_and_lock_free_documents,
        transactions_refuse_bad_parties,
    ]
}

/// Game servers spawn engine calls on multi-threaded runtimes: every public future is `Send`.
#[allow(dead_code, clippy::let_underscore_future)]
fn engine_futures_are_send(engine: Engine, session: Session<Trader>, trade: Trade, id: DocId) {
    fn send<T: Send>(_: T) {}
    send(engine.start_session(&traders(), "k"));
    send(engine.trade(&[&session], &trade));
    send(engine.transact(&[&session], std::slice::from_ref(&id), |_| Ok(())));
    send(engine.process_receipt(&session, "p", json!({}), |_: &mut Trader| Ok(())));
    send(engine.send_message(&id, json!({})));
    send(engine.shutdown(Duration::from_secs(1)));
    send(session.save_now());
    send(session.end());
}
