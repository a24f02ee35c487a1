//! The process lease seen from the engine: renewal by deadline (a failed renewal is retried soon,
//! not at the next interval), the local deadline that turns sessions not active, and recovery.
//! Paused time on the memory store (whose clock follows tokio's); failures are scripted with
//! `FaultStore::fail_next_renewals`.

use std::sync::Arc;
use std::time::Duration;

use hoard::engine::{
    Engine, EngineConfig, HeldPolicy, LoadFailurePolicy, SessionError, SessionStatus, StartError, StartOptions,
};
use hoard::store::SharedStore;
use hoard::store::fault::{FaultConfig, FaultStore};
use hoard::store::memory::MemoryStore;

use crate::engine_sessions::players;

fn config(label: &str) -> EngineConfig {
    EngineConfig { server_label: label.into(), ..EngineConfig::default() }
}

fn fail_fast() -> StartOptions {
    StartOptions { held: HeldPolicy::FailFast, on_load_failure: LoadFailurePolicy::Fail }
}

/// An engine whose store can fail its renewals on script, and the plain store beside it.
async fn engine_over_faults(label: &str) -> (Engine, Arc<FaultStore>, SharedStore) {
    let inner: SharedStore = Arc::new(MemoryStore::new());
    let faults = Arc::new(FaultStore::new(inner.clone(), FaultConfig::none(1)));
    let store: SharedStore = faults.clone();
    let engine = Engine::open(store, config(label)).await.expect("open");
    (engine, faults, inner)
}

#[tokio::test(start_paused = true)]
async fn two_failed_renewals_in_a_row_do_not_lose_the_lease() {
    let (a, faults, inner) = engine_over_faults("a").await;
    let b = Engine::open(inner.clone(), config("b")).await.expect("open");
    let kept = a.start_session(&players(), "kept").await.expect("start");
    kept.save_now().await.expect("save");
    // Each failure takes a second, as a renewal that times out does.
    faults.fail_next_renewals(2, 1_000);
    let lease = Duration::from_millis(a.config().lease_ttl_ms);
    tokio::time::sleep(lease + Duration::from_secs(1)).await;
    let taken = b.start_session_with(&players(), "kept", fail_fast()).await;
    assert!(matches!(taken, Err(StartError::Locked { .. })), "the lease survived two failed renewals: {taken:?}");
    assert_eq!(kept.status(), SessionStatus::Active);
    kept.update(|p| p.coins += 1).expect("still playing");
    kept.save_now().await.expect("still saving");
    assert_eq!(a.counters().renew_failures, 2);
}

#[tokio::test(start_paused = true)]
async fn a_session_reports_not_active_after_its_local_deadline() {
    let (a, faults, _inner) = engine_over_faults("a").await;
    let session = a.start_session(&players(), "lapsing").await.expect("start");
    faults.fail_next_renewals(u64::MAX, 0);
    assert_eq!(session.status(), SessionStatus::Active);
    let lease = Duration::from_millis(a.config().lease_ttl_ms);
    tokio::time::sleep(lease).await;
    assert_eq!(
        session.status(),
        SessionStatus::LeaseLapsed,
        "no renewal for a whole lease: the session cannot be sure"
    );
    assert_eq!(session.update(|p| p.coins += 1), Err(SessionError::LeaseLapsed), "and it refuses new changes");
    faults.fail_next_renewals(0, 0);
    tokio::time::sleep(Duration::from_millis(2 * a.config().lease_renew_interval_ms)).await;
    assert_eq!(session.status(), SessionStatus::Active, "renewed, and nobody took the key: active again");
    session.update(|p| p.coins += 1).expect("changes are taken again");
}

#[tokio::test(start_paused = true)]
async fn a_lapsed_session_whose_key_was_taken_is_fenced_out_when_the_lease_comes_back() {
    let (a, faults, inner) = engine_over_faults("a").await;
    let b = Engine::open(inner.clone(), config("b")).await.expect("open");
    let lost = a.start_session(&players(), "lost").await.expect("start");
    let kept = a.start_session(&players(), "kept").await.expect("start");
    faults.fail_next_renewals(u64::MAX, 0);
    // Past the store's expiry: B may take a key with `LeaseFree`, without stealing.
    tokio::time::sleep(Duration::from_millis(a.config().lease_ttl_ms + 500)).await;
    let taken = b.start_session_with(&players(), "lost", fail_fast()).await.expect("free to take");
    assert_eq!(b.counters().steals, 0);
    assert_eq!(lost.status(), SessionStatus::LeaseLapsed);
    faults.fail_next_renewals(0, 0);
    tokio::time::sleep(Duration::from_millis(2 * a.config().lease_renew_interval_ms)).await;
    assert_eq!(lost.status(), SessionStatus::FencedOut, "the sweep after the lapse found the key taken");
    assert_eq!(kept.status(), SessionStatus::Active, "and this one still held");
    assert_eq!(a.counters().lease_lapses, 1);
    assert_eq!(taken.status(), SessionStatus::Active);
}

#[tokio::test(start_paused = true)]
async fn still_holds_answers_with_one_read_and_no_write() {
    let probe = Arc::new(crate::probe_store::ProbeStore::new(Arc::new(MemoryStore::new())));
    let store: SharedStore = probe.clone();
    let a = Engine::open(store.clone(), config("a")).await.expect("open");
    let b = Engine::open(store.clone(), config("b")).await.expect("open");
    let session = a.start_session(&players(), "checked").await.expect("start");
    let (reads, commits) = (probe.reads(), probe.commits());
    assert!(session.still_holds().await.expect("read"), "held at its epoch");
    assert_eq!(probe.reads(), reads + 1, "one read");
    assert_eq!(probe.commits(), commits, "no write");
    let steal = StartOptions { held: HeldPolicy::StealNow, on_load_failure: LoadFailurePolicy::Fail };
    b.start_session_with(&players(), "checked", steal).await.expect("stolen");
    assert_eq!(session.status(), SessionStatus::Active, "status alone cannot see a steal");
    assert!(!session.still_holds().await.expect("read"), "the store names another holder");
    assert_eq!(session.status(), SessionStatus::FencedOut, "and the session learned it");
}

#[tokio::test(start_paused = true)]
async fn still_holds_is_false_during_a_lapse_and_confirms_the_session_after_it() {
    let (a, faults, _inner) = engine_over_faults("a").await;
    let session = a.start_session(&players(), "unsure").await.expect("start");
    a.suspend_lease_renewal(true);
    tokio::time::sleep(Duration::from_millis(a.config().lease_ttl_ms)).await;
    assert!(!session.still_holds().await.expect("read"), "held, but the lease cannot vouch for it");
    assert_eq!(session.status(), SessionStatus::LeaseLapsed);
    a.suspend_lease_renewal(false);
    faults.fail_next_renewals(0, 0);
    tokio::time::sleep(Duration::from_millis(a.config().lease_renew_interval_ms + 100)).await;
    assert!(session.still_holds().await.expect("read"));
    assert_eq!(session.status(), SessionStatus::Active);
}
