//! Engine timers under paused tokio time on the memory store (whose clock follows tokio's):
//! autosave, lease expiry at the default 15 s, and what a clean session writes.

use std::sync::Arc;
use std::time::Duration;

use hoard::engine::{Engine, EngineConfig, HeldPolicy, LoadFailurePolicy, StartOptions};
use hoard::store::memory::MemoryStore;
use hoard::store::{SharedStore, get};

use crate::engine_sessions::players;
use crate::probe_store::ProbeStore;

fn memory() -> SharedStore {
    Arc::new(MemoryStore::new())
}

fn config(label: &str) -> EngineConfig {
    EngineConfig { server_label: label.into(), ..EngineConfig::default() }
}

fn id(key: &str) -> hoard::store::DocId {
    hoard::store::DocId::parse("players", key).expect("id")
}

#[tokio::test(start_paused = true)]
async fn autosave_makes_changes_durable_within_one_interval() {
    let store = memory();
    let engine = Engine::open(store.clone(), config("a")).await.expect("open");
    let session = engine.start_session(&players(), "auto").await.expect("start");
    session.update(|p| p.coins = 500).expect("update");
    assert!(!get(&*store, &id("auto")).await.expect("read").exists(), "nothing saved yet");
    tokio::time::sleep(Duration::from_millis(engine.config().autosave_interval_ms + 1_000)).await;
    let document = get(&*store, &id("auto")).await.expect("read");
    assert_eq!(document.value.expect("autosaved")["data"]["coins"], 500);
    assert!(!session.is_dirty());
}

#[tokio::test(start_paused = true)]
async fn clean_sessions_write_nothing_at_autosave() {
    let store = memory();
    let engine = Engine::open(store.clone(), config("a")).await.expect("open");
    let session = engine.start_session(&players(), "clean").await.expect("start");
    session.save_now().await.expect("save");
    let version = get(&*store, &id("clean")).await.expect("read").version;
    tokio::time::sleep(Duration::from_secs(10 * 60)).await;
    assert_eq!(
        get(&*store, &id("clean")).await.expect("read").version,
        version,
        "ten minutes of autosave ticks wrote nothing"
    );
    assert!(engine.counters().saves <= 1);
}

#[tokio::test(start_paused = true)]
async fn crashed_holders_key_is_free_within_the_default_lease_time() {
    let store = memory();
    let a = Engine::open(store.clone(), config("a")).await.expect("open");
    let b = Engine::open(store.clone(), config("b")).await.expect("open");
    let session = a.start_session(&players(), "crash").await.expect("start");
    session.save_now().await.expect("save");
    a.crash();
    let started = tokio::time::Instant::now();
    let options =
        StartOptions { held: HeldPolicy::Wait { wait_ms: 120_000 }, on_load_failure: LoadFailurePolicy::Fail };
    b.start_session_with(&players(), "crash", options).await.expect("taken after expiry");
    let waited = started.elapsed();
    let lease = Duration::from_millis(EngineConfig::default().lease_ttl_ms);
    assert!(
        waited <= lease + Duration::from_millis(EngineConfig::default().handoff_poll_interval_ms),
        "waited {waited:?}"
    );
    assert!(
        waited >= lease - Duration::from_millis(EngineConfig::default().lease_renew_interval_ms),
        "not before the lease lapsed: {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn unanswered_handoff_is_stolen_after_the_bounded_wait() {
    let store = memory();
    let a = Engine::open(store.clone(), config("a")).await.expect("open");
    let b = Engine::open(store.clone(), config("b")).await.expect("open");
    let on_a = a.start_session(&players(), "mute").await.expect("start");
    on_a.save_now().await.expect("save");
    let wait_ms = 2_000;
    let options =
        StartOptions { held: HeldPolicy::WaitThenSteal { wait_ms }, on_load_failure: LoadFailurePolicy::Fail };
    let store_for_a = store.clone();
    // A holder that is alive (its process lease keeps being renewed) but never answers a handoff
    // request: stop A's own tasks and renew its lease by hand, so only a steal frees the key.
    a.crash();
    let holder = a.holder().clone();
    let renewer = tokio::spawn(async move {
        for _ in 0..200 {
            let _ = store_for_a.renew_holder(&holder, 15_000).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let started = tokio::time::Instant::now();
    let on_b = b.start_session_with(&players(), "mute", options).await.expect("stolen");
    let waited = started.elapsed();
    renewer.abort();
    assert!(
        waited >= Duration::from_millis(wait_ms) && waited < Duration::from_millis(wait_ms + 1_000),
        "waited {waited:?}"
    );
    assert_eq!(b.counters().steals, 1);
    assert!(on_b.epoch() > on_a.epoch());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_engine_without_shutdown_keeps_acknowledged_saves() {
    let store = memory();
    {
        let engine = Engine::open(store.clone(), config("a")).await.expect("open");
        let session = engine.start_session(&players(), "dropped").await.expect("start");
        session.update(|p| p.coins = 31).expect("update");
        session.save_now().await.expect("acknowledged");
        session.update(|p| p.coins = 32).expect("not acknowledged");
    }
    tokio::time::sleep(Duration::from_secs(16)).await;
    let b = Engine::open(store.clone(), config("b")).await.expect("open");
    let session = b.start_session(&players(), "dropped").await.expect("start after the lease lapsed");
    assert_eq!(session.read(|p| p.coins), 31);
}

/// A game server starts sessions from spawned tasks (one per joining player), so the start
/// future must be `Send`. Found by the simulator: a registry guard held across an await made
/// `start_session` impossible to `tokio::spawn`.
#[tokio::test(start_paused = true)]
async fn sessions_can_be_started_from_spawned_tasks() {
    let store = memory();
    let engine = Engine::open(store.clone(), config("spawned")).await.expect("open");
    let kind = players();
    let started = tokio::spawn(async move { engine.start_session(&kind, "spawned").await.map(|s| s.epoch()) });
    assert!(started.await.expect("task").expect("start") >= 1);
}

#[tokio::test(start_paused = true)]
async fn keeping_many_clean_sessions_costs_one_renewal_per_interval_not_one_per_session() {
    let counting = Arc::new(ProbeStore::new(memory()));
    let store: SharedStore = counting.clone();
    let engine = Engine::open(store, config("a")).await.expect("open");
    let mut sessions = Vec::with_capacity(10_000);
    for n in 0..10_000 {
        let session = engine.start_session(&players(), &format!("p{n}")).await.expect("start");
        sessions.push(session);
    }
    for session in &sessions {
        session.save_now().await.expect("save");
    }
    let commits_before = counting.commits();
    let renewals_before = counting.renewals();
    let minute = Duration::from_secs(60);
    tokio::time::sleep(minute).await;
    let commits = counting.commits() - commits_before;
    let renewals = counting.renewals() - renewals_before;
    assert_eq!(commits, 0, "clean sessions write nothing");
    let interval = Duration::from_millis(engine.config().lease_renew_interval_ms);
    let expected = (minute.as_millis() / interval.as_millis()) as u64;
    assert!(
        renewals <= expected + 1,
        "{renewals} renewals in a minute for 10,000 sessions: one per interval, not per session"
    );
    assert!(renewals >= 1);
    let stored = get(&**counting.inner(), &id("p9999")).await.expect("read");
    assert_eq!(stored.lease.holder.as_ref(), Some(engine.holder()), "every key is still held");
}

#[tokio::test(start_paused = true)]
async fn dropping_every_engine_handle_stops_its_renewal_and_its_keys_free_within_the_lease() {
    let counting = Arc::new(ProbeStore::new(memory()));
    let store: SharedStore = counting.clone();
    let b = Engine::open(store.clone(), config("b")).await.expect("open");
    {
        let a = Engine::open(store.clone(), config("a")).await.expect("open");
        a.start_session(&players(), "dropped-holder").await.expect("start");
    }
    let renewals = counting.renewals();
    let lease = Duration::from_millis(EngineConfig::default().lease_ttl_ms);
    tokio::time::sleep(lease + Duration::from_secs(1)).await;
    assert_eq!(counting.renewals() - renewals, 3, "only B renews (every 5 s for 16 s), A's tasks are gone");
    let options = StartOptions { held: HeldPolicy::FailFast, on_load_failure: LoadFailurePolicy::Fail };
    b.start_session_with(&players(), "dropped-holder", options).await.expect("free once A's lease lapsed");
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_every_background_task() {
    let counting = Arc::new(ProbeStore::new(memory()));
    let store: SharedStore = counting.clone();
    let engine = Engine::open(store, config("a")).await.expect("open");
    let session = engine.start_session(&players(), "stopping").await.expect("start");
    session.update(|p| p.coins = 9).expect("change");
    let report = engine.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.saved.len(), 1);
    let (renewals, commits) = (counting.renewals(), counting.commits());
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(counting.renewals(), renewals, "no renewal after shutdown");
    assert_eq!(counting.commits(), commits, "no autosave or flush after shutdown");
}

#[tokio::test(start_paused = true)]
async fn shutdown_saves_a_session_the_game_began_ending_and_reports_it() {
    let store = memory();
    let engine = Engine::open(store.clone(), config("a")).await.expect("open");
    let session = engine.start_session(&players(), "leaving").await.expect("start");
    session.update(|p| p.coins = 77).expect("change");
    let ending = session.end();
    let report = engine.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.saved, vec![session.id().clone()], "the end in flight is waited for and reported");
    ending.await.expect("the game's end succeeded too");
    let document = get(&*store, session.id()).await.expect("read");
    assert_eq!(document.value.expect("saved")["data"]["coins"], 77);
    assert_eq!(document.lease.holder, None, "released");
}
