//! Dropped futures: a game server that gives up waiting (a timeout, a disconnected client, a
//! `select!`) drops the engine's future midway. Every party of a transaction, trade or receipt
//! must stay usable, and memory must end up agreeing with the store. Paused time on the memory
//! store, with commits delayed so the drop lands while the commit is in flight.

use std::sync::Arc;
use std::time::Duration;

use hoard::engine::{Engine, EngineConfig, SessionError};
use hoard::store::memory::MemoryStore;
use hoard::store::{SharedStore, get};
use serde_json::json;

use crate::engine_trades::{Trader, coins, seed_traders_named, simple_trade, stored};
use crate::probe_store::ProbeStore;

const COMMIT_DELAY_MS: u64 = 1_000;

async fn engine_with_slow_commits() -> (Engine, Arc<ProbeStore>) {
    let probe = Arc::new(ProbeStore::new(Arc::new(MemoryStore::new())));
    let store: SharedStore = probe.clone();
    let engine = Engine::open(store, EngineConfig { server_label: "drop".into(), ..EngineConfig::default() })
        .await
        .expect("open");
    (engine, probe)
}

/// Waits long enough for any commit the dropped future left in flight to finish.
async fn let_in_flight_work_finish() {
    tokio::time::sleep(Duration::from_millis(3 * COMMIT_DELAY_MS)).await;
}

/// Memory and store agree for every party: what the session shows is what is durable.
async fn assert_memory_matches_store(probe: &ProbeStore, sessions: &[hoard::engine::Session<Trader>]) {
    for session in sessions {
        assert!(!session.is_dirty(), "{}: nothing waits to be saved", session.id());
        let document = get(&**probe.inner(), session.id()).await.expect("read");
        assert_eq!(session.read(Trader::clone), stored(&document), "{}: memory shows the durable state", session.id());
    }
}

#[tokio::test(start_paused = true)]
async fn a_trade_future_dropped_while_its_commit_is_in_flight_leaves_every_party_usable() {
    let (engine, probe) = engine_with_slow_commits().await;
    let parties = seed_traders_named(&engine, "drop-trade", 2).await;
    probe.delay_commits(COMMIT_DELAY_MS);
    let trade = simple_trade("dropped-trade", "item-0-0", 10);
    let gave_up =
        tokio::time::timeout(Duration::from_millis(10), engine.trade(&[&parties[0], &parties[1]], &trade)).await;
    assert!(gave_up.is_err(), "the caller gave up while the commit was in flight");
    let_in_flight_work_finish().await;
    probe.delay_commits(0);
    for session in &parties {
        session.update(|t| t.holdings.currencies.insert("gems".into(), 1)).expect("usable after the drop");
        session.save_now().await.expect("saves after the drop");
    }
    assert_memory_matches_store(&probe, &parties).await;
    let total: i64 = parties.iter().map(coins).sum();
    assert_eq!(total, 200, "no coin made or lost by the dropped trade");
    let again = engine.trade(&[&parties[0], &parties[1]], &simple_trade("next-trade", "item-0-1", 5)).await;
    assert!(again.is_ok(), "a later trade among the same parties commits: {again:?}");
}

#[tokio::test(start_paused = true)]
async fn a_transaction_future_dropped_before_its_commit_leaves_every_party_usable() {
    let (engine, probe) = engine_with_slow_commits().await;
    let parties = seed_traders_named(&engine, "drop-tx", 2).await;
    let bank = hoard::store::DocId::parse("guilds", "drop-bank").expect("id");
    // The shared document's read is what is slow here: the drop lands before any commit.
    probe.delay_reads(COMMIT_DELAY_MS);
    let both = [&parties[0], &parties[1]];
    let transaction = engine.transact(&both, std::slice::from_ref(&bank), |context| {
        context.docs[0] = Some(json!({"coins": 1}));
        Ok(())
    });
    assert!(tokio::time::timeout(Duration::from_millis(10), transaction).await.is_err(), "dropped midway");
    probe.delay_reads(0);
    for session in &parties {
        session
            .update(|t| t.holdings.currencies.insert("gems".into(), 2))
            .expect("usable at once: nothing was in flight");
    }
    assert!(!get(&**probe.inner(), &bank).await.expect("read").exists(), "the dropped transaction wrote nothing");
}

#[tokio::test(start_paused = true)]
async fn a_receipt_future_dropped_while_its_commit_is_in_flight_grants_once_and_leaves_the_player_usable() {
    let (engine, probe) = engine_with_slow_commits().await;
    let parties = seed_traders_named(&engine, "drop-receipt", 1).await;
    let player = &parties[0];
    probe.delay_commits(COMMIT_DELAY_MS);
    let grant = |t: &mut Trader| {
        *t.holdings.currencies.entry("gems".into()).or_insert(0) += 100;
        Ok(())
    };
    let receipt = engine.process_receipt(player, "dropped-purchase", json!({"gems": 100}), grant);
    assert!(tokio::time::timeout(Duration::from_millis(10), receipt).await.is_err(), "dropped midway");
    let_in_flight_work_finish().await;
    probe.delay_commits(0);
    assert_ne!(player.update(|_| ()), Err(SessionError::Busy), "the player is not left busy");
    let replay = engine.process_receipt(player, "dropped-purchase", json!({"gems": 100}), grant).await;
    assert!(
        matches!(replay, hoard::engine::ReceiptOutcome::AlreadyGranted | hoard::engine::ReceiptOutcome::Granted),
        "{replay:?}"
    );
    player.save_now().await.expect("save");
    assert_memory_matches_store(&probe, &parties).await;
    let gems = player.read(|t| t.holdings.currencies.get("gems").copied().unwrap_or(0));
    assert_eq!(gems, 100, "granted exactly once across the drop and the replay");
}

#[tokio::test(start_paused = true)]
async fn a_save_future_dropped_midway_still_saves_and_a_later_save_applies_after_it() {
    let (engine, probe) = engine_with_slow_commits().await;
    let parties = seed_traders_named(&engine, "drop-save", 1).await;
    let player = &parties[0];
    player.update(|t| t.holdings.currencies.insert("coins".into(), 7)).expect("change");
    probe.delay_commits(COMMIT_DELAY_MS);
    assert!(tokio::time::timeout(Duration::from_millis(10), player.save_now()).await.is_err(), "dropped midway");
    player.update(|t| t.holdings.currencies.insert("coins".into(), 8)).expect("change again");
    probe.delay_commits(0);
    player.save_now().await.expect("the later save");
    let document = get(&**probe.inner(), player.id()).await.expect("read");
    assert_eq!(stored(&document).holdings.currencies["coins"], 8, "the later save is the last one applied");
    let versions = probe
        .inner()
        .list_versions(player.id(), &hoard::store::VersionQuery { before_version: None, limit: 10 })
        .await
        .expect("history");
    assert!(versions.len() >= 3, "the dropped save applied too, before the later one: {} versions", versions.len());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_start_leaves_the_key_with_its_holder() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let config = |label: &str| EngineConfig { server_label: label.into(), ..EngineConfig::default() };
    let a = Engine::open(store.clone(), config("a")).await.expect("open");
    // B's handoff requests are lost, so only its wait can end its start.
    let deaf: SharedStore = Arc::new(hoard::store::fault::FaultStore::new(
        store.clone(),
        hoard::store::fault::FaultConfig { notification_loss: 1.0, ..hoard::store::fault::FaultConfig::none(8) },
    ));
    let b = Engine::open(deaf, config("b")).await.expect("open");
    let on_a = a.start_session(&crate::engine_sessions::players(), "quinn").await.expect("start");
    on_a.save_now().await.expect("save");
    let wait = hoard::engine::StartOptions {
        held: hoard::engine::HeldPolicy::Wait { wait_ms: 1_500 },
        on_load_failure: hoard::engine::LoadFailurePolicy::Fail,
    };
    // The game gives up waiting: dropping the future cancels the start; its load ends by itself.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(200),
        b.start_session_with(&crate::engine_sessions::players(), "quinn", wait),
    )
    .await;
    assert!(cancelled.is_err(), "still waiting when cancelled");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(b.counters().load_failures, 1, "the abandoned load ended at its wait");
    let document = get(&*store, &hoard::store::DocId::parse("players", "quinn").expect("id")).await.expect("read");
    assert_eq!(document.lease.holder.as_ref(), Some(a.holder()), "the holder keeps its key");
    on_a.update(|p| p.coins = 12).expect("update");
    on_a.save_now().await.expect("the holder still saves");
    assert_eq!(b.counters().sessions_live, 0);
}
