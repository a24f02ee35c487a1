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
