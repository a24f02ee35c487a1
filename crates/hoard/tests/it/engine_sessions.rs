//! Sessions on every backend: fencing (G1), no lost acknowledged write (G2), order (G5), bounded
//! lockout and handoff (G6), inbox (G7), shutdown (G9). Real time with short leases, so the same
//! cases run on memory, SQLite and PostgreSQL; paused-time cases are in `engine_timers`.

use std::sync::Arc;
use std::time::Duration;

use hoard::engine::{
    Engine, EngineConfig, HeldPolicy, LoadFailurePolicy, ProfileKind, ProfileSchema, SessionError, SessionEvent,
    SessionStatus, StartError, StartOptions,
};
use hoard::store::fault::{FaultConfig, FaultStore};
use hoard::store::{Commit, DocId, SharedStore, StoreName, VersionQuery, Write, get};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::backends::TestStore;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Player {
    pub coins: i64,
    pub items: Vec<String>,
    pub counter: u64,
    #[serde(default)]
    pub gifts: Vec<String>,
}

pub fn players() -> ProfileKind<Player> {
    let schema = ProfileSchema::new(|| Player { coins: 100, ..Player::default() });
    ProfileKind::new(StoreName::new("players").expect("name"), schema).on_message(|player: &mut Player, message| {
        let gift = message.body.get("body").and_then(|body| body.get("gift")).and_then(Value::as_str).unwrap_or("?");
        player.gifts.push(gift.to_string());
        player.coins += 10;
    })
}

/// Short leases and waits so real-time cases stay quick; margins in assertions stay generous.
pub fn fast_config(label: &str) -> EngineConfig {
    EngineConfig {
        server_label: label.to_string(),
        lease_ttl_ms: 1_000,
        lease_renew_interval_ms: 200,
        lease_safety_margin_ms: 100,
        autosave_interval_ms: 60_000,
        handoff_wait_ms: 3_000,
        handoff_poll_interval_ms: 50,
        retry_backoff_initial_ms: 5,
        retry_backoff_max_ms: 50,
        save_attempts_max: 12,
        ..EngineConfig::default()
    }
}

pub async fn engine(store: &SharedStore, label: &str) -> Engine {
    Engine::open(store.clone(), fast_config(label)).await.expect("engine opens")
}

fn stored_player(document: &hoard::store::Document) -> Player {
    let data = document.value.as_ref().and_then(|value| value.get("data")).cloned().expect("a saved profile");
    serde_json::from_value(data).expect("profile data")
}

fn id(key: &str) -> DocId {
    DocId::parse("players", key).expect("id")
}

fn steal_now() -> StartOptions {
    StartOptions { held: HeldPolicy::StealNow, on_load_failure: LoadFailurePolicy::Fail }
}

pub async fn new_profile_gets_the_template_and_saves_durably(t: TestStore) {
    let a = engine(&t.store, "a").await;
    let session = a.start_session(&players(), "alice").await.expect("start");
    assert_eq!(session.read(|p| p.coins), 100);
    assert!(session.is_dirty(), "a new profile is saved at the next save");
    session.update(|p| p.coins += 5).expect("update");
    session.save_now().await.expect("save");
    assert!(!session.is_dirty());
    let document = get(&*t.store, &id("alice")).await.expect("read");
    assert_eq!(stored_player(&document).coins, 105);
    assert_eq!(document.lease.holder.as_ref(), Some(a.holder()));
    session.end().await.expect("end");
    assert_eq!(session.status(), SessionStatus::Ended);
    assert!(matches!(session.update(|p| p.coins += 1), Err(SessionError::Ended)));
    let document = get(&*t.store, &id("alice")).await.expect("read");
    assert!(document.lease.holder.is_none(), "end releases the key");
}

pub async fn stale_holder_cannot_write_after_steal(t: TestStore) {
    let (a, b) = (engine(&t.store, "a").await, engine(&t.store, "b").await);
    let on_a = a.start_session(&players(), "bob").await.expect("start on a");
    let mut a_events = on_a.events();
    on_a.update(|p| p.coins = 1).expect("update");
    on_a.save_now().await.expect("save");
    let on_b = b.start_session_with(&players(), "bob", steal_now()).await.expect("steal on b");
    assert_eq!(on_b.read(|p| p.coins), 1);
    assert!(on_b.epoch() > on_a.epoch());
    on_b.update(|p| p.coins = 2).expect("update");
    on_b.save_now().await.expect("save on b");
    on_a.update(|p| p.coins = 999).expect("memory change still allowed until the store says no");
    assert!(matches!(on_a.save_now().await, Err(SessionError::FencedOut)));
    assert_eq!(on_a.status(), SessionStatus::FencedOut);
    assert!(
        matches!(on_a.update(|p| p.coins = 1_000), Err(SessionError::FencedOut)),
        "fenced sessions refuse changes at once"
    );
    let mut saw_fenced = false;
    while let Ok(event) = a_events.try_recv() {
        saw_fenced |= event == SessionEvent::FencedOut;
    }
    assert!(saw_fenced, "the game is told, so it can kick the player");
    assert_eq!(stored_player(&get(&*t.store, &id("bob")).await.expect("read")).coins, 2);
    assert_eq!(a.counters().fenced_out, 1);
}

pub async fn stale_holder_cannot_write_after_release_and_retake(t: TestStore) {
    let (a, b) = (engine(&t.store, "a").await, engine(&t.store, "b").await);
    let on_a = a.start_session(&players(), "carol").await.expect("start on a");
    on_a.save_now().await.expect("save");
    let on_b = b.start_session_with(&players(), "carol", steal_now()).await.expect("steal");
    on_b.update(|p| p.coins = 7).expect("update");
    on_b.end().await.expect("b ends and releases");
    // The key is free now; A's fence must still fail (DocumentService's trap).
    on_a.update(|p| p.coins = -1).expect("memory");
    assert!(matches!(on_a.save_now().await, Err(SessionError::FencedOut)));
    let document = get(&*t.store, &id("carol")).await.expect("read");
    assert_eq!(stored_player(&document).coins, 7);
    assert!(document.lease.holder.is_none());
}

pub async fn stale_holder_cannot_write_after_expiry_and_take(t: TestStore) {
    let a = engine(&t.store, "a").await;
    // B's handoff requests are lost, so A never hears of B: only A's lease expiry frees the key.
    let deaf: SharedStore =
        Arc::new(FaultStore::new(t.store.clone(), FaultConfig { notification_loss: 1.0, ..FaultConfig::none(5) }));
    let b = engine(&deaf, "b").await;
    let on_a = a.start_session(&players(), "dave").await.expect("start");
    on_a.save_now().await.expect("save");
    // A pauses with a change it has not saved yet; its process lease lapses; B takes the key
    // when it expires, without stealing.
    on_a.update(|p| p.coins = -5).expect("A changes its copy");
    a.suspend_lease_renewal(true);
    let wait = StartOptions { held: HeldPolicy::Wait { wait_ms: 10_000 }, on_load_failure: LoadFailurePolicy::Fail };
    let on_b = b.start_session_with(&players(), "dave", wait).await.expect("b takes the expired key");
    assert_eq!(b.counters().steals, 0);
    on_b.update(|p| p.coins = 50).expect("update");
    on_b.save_now().await.expect("save");
    // A wakes up: its lease is past its local deadline, so it reports so and takes no changes;
    // and the write of its old change is refused by the fence, whatever any clock says.
    a.suspend_lease_renewal(false);
    assert_ne!(on_a.status(), SessionStatus::Active, "A does not claim a key it may have lost");
    assert!(matches!(on_a.save_now().await, Err(SessionError::FencedOut)));
    assert_eq!(on_a.status(), SessionStatus::FencedOut);
    assert_eq!(stored_player(&get(&*t.store, &id("dave")).await.expect("read")).coins, 50);
}

pub async fn crashed_holders_key_is_taken_within_the_lease_time(t: TestStore) {
    let (a, b) = (engine(&t.store, "a").await, engine(&t.store, "b").await);
    let on_a = a.start_session(&players(), "erin").await.expect("start");
    on_a.update(|p| p.coins = 3).expect("update");
    on_a.save_now().await.expect("save");
    a.crash();
    let started = tokio::time::Instant::now();
    let wait = StartOptions { held: HeldPolicy::Wait { wait_ms: 10_000 }, on_load_failure: LoadFailurePolicy::Fail };
    let on_b = b.start_session_with(&players(), "erin", wait).await.expect("b takes the crashed holder's key");
    let waited = started.elapsed();
    let lease = Duration::from_millis(fast_config("x").lease_ttl_ms);
    assert!(waited <= lease + Duration::from_millis(1_500), "waited {waited:?}, lease {lease:?}");
    assert_eq!(on_b.read(|p| p.coins), 3, "acknowledged data survives the crash");
}

pub async fn live_holder_hands_over_on_request(t: TestStore) {
    let (a, b) = (engine(&t.store, "a").await, engine(&t.store, "b").await);
    let on_a = a.start_session(&players(), "frank").await.expect("start");
    let mut a_events = on_a.events();
    on_a.update(|p| p.coins = 42).expect("unsaved change on A");
    let started = tokio::time::Instant::now();
    let wait = StartOptions { held: HeldPolicy::Wait { wait_ms: 10_000 }, on_load_failure: LoadFailurePolicy::Fail };
    let on_b = b.start_session_with(&players(), "frank", wait).await.expect("handoff");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(1), "a live holder hands over well under a second, took {waited:?}");
    assert_eq!(on_b.read(|p| p.coins), 42, "the holder saved before releasing");
    assert_eq!(on_a.status(), SessionStatus::HandedOff);
    let mut saw = false;
    while let Ok(event) = a_events.try_recv() {
        saw |= event == SessionEvent::HandedOff;
    }
    assert!(saw);
    assert_eq!(a.counters().handoffs_given, 1);
    assert_eq!(b.counters().steals, 0);
}

pub async fn fail_fast_reports_the_holder(t: TestStore) {
    let (a, b) = (engine(&t.store, "a").await, engine(&t.store, "b").await);
    let _on_a = a.start_session(&players(), "gina").await.expect("start");
    let fail = StartOptions { held: HeldPolicy::FailFast, on_load_failure: LoadFailurePolicy::Fail };
    match b.start_session_with(&players(), "gina", fail).await {
        Err(StartError::Locked { holder, .. }) => assert_eq!(&holder, a.holder()),
        other => panic!("expected Locked, got {other:?}"),
    }
}

pub async fn errored_session_never_writes(t: TestStore) {
    let faulty: SharedStore =
        Arc::new(FaultStore::new(t.store.clone(), FaultConfig { read_error: 1.0, ..FaultConfig::none(1) }));
    let a = engine(&faulty, "a").await;
    let options = StartOptions { held: HeldPolicy::FailFast, on_load_failure: LoadFailurePolicy::PlayOnDefaults };
    let session = a.start_session_with(&players(), "hank", options).await.expect("plays on defaults");
    assert!(session.is_errored());
    assert_eq!(session.read(|p| p.coins), 100);
    session.update(|p| p.coins = 1_000_000).expect("memory changes allowed");
    assert!(matches!(session.save_now().await, Err(SessionError::Errored)));
    session.end().await.expect("end");
    let document = get(&*t.store, &id("hank")).await.expect("read");
    assert!(!document.exists(), "an errored session never writes");
    assert!(document.lease.holder.is_none(), "and holds no key");
}

pub async fn invalid_stored_value_is_quarantined_and_kept_in_history(t: TestStore) {
    let store = &*t.store;
    let key = id("ivan");
    assert!(
        store
            .commit(Commit::single(Write::put(key.clone(), json!("not a profile"))))
            .await
            .expect("commit")
            .is_committed()
    );
    let a = engine(&t.store, "a").await;
    match a.start_session(&players(), "ivan").await {
        Err(StartError::Quarantined { .. }) => {}
        other => panic!("expected Quarantined, got {other:?}"),
    }
    let document = get(store, &key).await.expect("read");
    assert_eq!(document.value, Some(json!("not a profile")), "never silently overwritten");
    assert_eq!(document.version, 1);
    assert!(document.lease.holder.is_none(), "released untouched");
    let history = store.list_versions(&key, &VersionQuery::default()).await.expect("history");
    assert_eq!(history.len(), 1);
    let record = DocId::parse(hoard::engine::QUARANTINE_STORE, "players/ivan/v1").expect("id");
    assert!(get(store, &record).await.expect("read").exists(), "a quarantine record names it");
    let options = StartOptions { held: HeldPolicy::FailFast, on_load_failure: LoadFailurePolicy::PlayOnDefaults };
    let session = a.start_session_with(&players(), "ivan", options).await.expect("plays on defaults");
    assert!(session.is_errored());
    session.update(|p| p.coins = 5).expect("memory");
    assert!(session.save_now().await.is_err());
    assert_eq!(get(store, &key).await.expect("read").value, Some(json!("not a profile")));
}

pub async fn rejoin_during_load_yields_one_working_session(t: TestStore) {
    let a = engine(&t.store, "a").await;
    let kind = players();
    let (first, second) = tokio::join!(a.start_session(&kind, "judy"), a.start_session(&kind, "judy"));
    let (first, second) = (first.expect("first"), second.expect("second"));
    assert_eq!(first.epoch(), second.epoch(), "one acquisition");
    first.update(|p| p.coins = 77).expect("update");
    assert_eq!(second.read(|p| p.coins), 77, "the same session");
    second.save_now().await.expect("the rejoined handle saves");
    assert_eq!(stored_player(&get(&*t.store, &id("judy")).await.expect("read")).coins, 77);
    let third = a.start_session(&kind, "judy").await.expect("again");
    assert_eq!(third.epoch(), first.epoch());
    assert_eq!(a.counters().sessions_started, 1);
}

pub async fn message_is_applied_once_when_holder_crashes_before_saving(t: TestStore) {
    let (a, b, c) = (engine(&t.store, "a").await, engine(&t.store, "b").await, engine(&t.store, "c").await);
    let on_a = a.start_session(&players(), "kim").await.expect("start");
    on_a.save_now().await.expect("save");
    b.send_message(&id("kim"), json!({"gift": "sword"})).await.expect("send");
    // A applies it in memory (by notification or by asking), then crashes before saving.
    on_a.check_inbox().await.expect("inbox");
    assert_eq!(on_a.read(|p| p.gifts.clone()), vec!["sword".to_string()]);
    a.crash();
    let wait = StartOptions { held: HeldPolicy::Wait { wait_ms: 10_000 }, on_load_failure: LoadFailurePolicy::Fail };
    let on_b = b.start_session_with(&players(), "kim", wait).await.expect("b takes over");
    assert_eq!(
        on_b.read(|p| (p.gifts.clone(), p.coins)),
        (vec!["sword".to_string()], 110),
        "applied once, by the next holder"
    );
    on_b.end().await.expect("end");
    let on_c = c.start_session(&players(), "kim").await.expect("c");
    assert_eq!(on_c.read(|p| (p.gifts.clone(), p.coins)), (vec!["sword".to_string()], 110), "and never again");
    assert!(get(&*t.store, &id("kim")).await.expect("read").inbox.is_empty(), "acknowledged with the data");
}

pub async fn offline_players_messages_apply_in_order_at_next_start(t: TestStore) {
    let a = engine(&t.store, "a").await;
    for gift in ["first", "second", "third"] {
        a.send_message(&id("lena"), json!({"gift": gift})).await.expect("send");
    }
    let session = a.start_session(&players(), "lena").await.expect("start");
    assert_eq!(session.read(|p| p.gifts.clone()), vec!["first", "second", "third"]);
    session.end().await.expect("end");
    let document = get(&*t.store, &id("lena")).await.expect("read");
    assert!(document.inbox.is_empty());
    assert_eq!(stored_player(&document).coins, 130);
}

pub async fn full_inbox_refuses_new_messages(t: TestStore) {
    let a = engine(&t.store, "a").await;
    let inbox_max = t.store.limits().inbox_messages_max;
    for n in 0..inbox_max {
        a.send_message(&id("mia"), json!({"gift": format!("g{n}")})).await.expect("send");
    }
    match a.send_message(&id("mia"), json!({"gift": "overflow"})).await {
        Err(hoard::engine::SendError::InboxFull { .. }) => {}
        other => panic!("expected InboxFull, got {other:?}"),
    }
    assert_eq!(get(&*t.store, &id("mia")).await.expect("read").inbox.len(), inbox_max, "nothing dropped");
}

pub async fn shutdown_saves_and_releases_every_dirty_session(t: TestStore) {
    let a = engine(&t.store, "a").await;
    let mut sessions = Vec::new();
    for n in 0..40 {
        let session = a.start_session(&players(), &format!("s{n}")).await.expect("start");
        session.update(|p| p.coins = n).expect("update");
        sessions.push(session);
    }
    let report = a.shutdown(Duration::from_secs(20)).await;
    assert_eq!(report.saved.len(), 40, "{report:?}");
    assert!(report.failed.is_empty() && report.timed_out.is_empty());
    for n in 0..40 {
        let document = get(&*t.store, &id(&format!("s{n}"))).await.expect("read");
        assert_eq!(stored_player(&document).coins, n);
        assert!(document.lease.holder.is_none());
    }
    assert!(matches!(a.start_session(&players(), "late").await, Err(StartError::ShuttingDown)));
    assert!(t.store.holder_lease(a.holder()).await.expect("read").is_none(), "the process lease is released too");
}

pub async fn writes_to_one_key_apply_in_issue_order_despite_failures(t: TestStore) {
    let config = FaultConfig { error_before_apply: 0.2, error_after_apply: 0.2, ..FaultConfig::none(99) };
    let faulty: SharedStore = Arc::new(FaultStore::new(t.store.clone(), config));
    let a = Engine::open(faulty, fast_config("a")).await.expect("open");
    let session = a.start_session(&players(), "nina").await.expect("start");
    let mut saves = Vec::new();
    for n in 1..=40u64 {
        session.update(|p| p.counter = n).expect("update");
        let handle = session.clone();
        saves.push(tokio::spawn(async move { handle.save_now().await }));
    }
    for save in saves {
        save.await.expect("task").expect("every save lands within its retries");
    }
    let key = id("nina");
    assert_eq!(stored_player(&get(&*t.store, &key).await.expect("read")).counter, 40);
    let versions =
        t.store.list_versions(&key, &VersionQuery { before_version: None, limit: 1_000 }).await.expect("history");
    let mut counters = Vec::new();
    for info in versions.iter().rev() {
        let record = t.store.get_version(&key, info.version).await.expect("read").expect("kept");
        let value = record.value.expect("value");
        counters.push(value["data"]["counter"].as_u64().expect("counter"));
    }
    assert!(counters.windows(2).all(|pair| pair[0] <= pair[1]), "never an older state after a newer one: {counters:?}");
}

pub async fn operator_reads_without_taking_and_rolls_back_only_when_free_or_forced(t: TestStore) {
    let a = engine(&t.store, "a").await;
    let operator = engine(&t.store, "operator").await;
    let session = a.start_session(&players(), "olga").await.expect("start");
    session.update(|p| p.coins = 1).expect("update");
    session.save_now().await.expect("save v1");
    session.update(|p| p.coins = 2).expect("update");
    session.save_now().await.expect("save v2");
    let peek = operator.peek(&players(), "olga").await.expect("peek");
    assert_eq!(peek.profile.map(|p| p.coins), Some(2));
    assert_eq!(peek.document.lease.holder.as_ref(), Some(a.holder()), "peeking does not take the key");
    let versions = operator.versions(&id("olga"), &VersionQuery::default()).await.expect("versions");
    assert_eq!(versions.len(), 2);
    let first = versions[1].version;
    assert!(matches!(
        operator.rollback(&id("olga"), first, false).await,
        Err(hoard::engine::OperatorError::Held { .. })
    ));
    assert_eq!(stored_player(&get(&*t.store, &id("olga")).await.expect("read")).coins, 2, "refused: nothing changed");
    operator.rollback(&id("olga"), first, true).await.expect("forced rollback");
    assert_eq!(stored_player(&get(&*t.store, &id("olga")).await.expect("read")).coins, 1);
    session.update(|p| p.coins = 99).expect("the old holder does not know yet");
    assert!(matches!(session.save_now().await, Err(SessionError::FencedOut)), "and can never overwrite the rollback");
    assert_eq!(stored_player(&get(&*t.store, &id("olga")).await.expect("read")).coins, 1);
}

pub async fn a_new_start_waits_for_the_previous_sessions_final_save(t: TestStore) {
    let a = engine(&t.store, "a").await;
    let first = a.start_session(&players(), "paul").await.expect("start");
    first.update(|p| p.coins = 555).expect("update");
    // The player leaves and rejoins at once: the rejoin must wait for the final save.
    let ending = tokio::spawn(first.end());
    let second = a.start_session(&players(), "paul").await.expect("start again");
    ending.await.expect("task").expect("first ended");
    assert_eq!(first.status(), SessionStatus::Ended);
    assert_eq!(second.status(), SessionStatus::Active, "a fresh session, not the one that ended");
    assert_eq!(second.read(|p| p.coins), 555, "loaded after the previous final save");
    second.update(|p| p.coins += 1).expect("update");
    second.end().await.expect("end");
    assert_eq!(stored_player(&get(&*t.store, &id("paul")).await.expect("read")).coins, 556);
}

pub async fn save_failures_are_reported_to_the_game(t: TestStore) {
    let faults =
        Arc::new(FaultStore::new(t.store.clone(), FaultConfig { error_before_apply: 1.0, ..FaultConfig::none(4) }));
    faults.set_enabled(false);
    let faulty: SharedStore = faults.clone();
    let a = engine(&faulty, "a").await;
    let session = a.start_session(&players(), "rita").await.expect("start");
    session.save_now().await.expect("first save");
    let mut events = session.events();
    session.update(|p| p.coins = 1).expect("update");
    faults.set_enabled(true);
    match session.save_now().await {
        Err(SessionError::SaveFailed { attempts, .. }) => assert_eq!(attempts, fast_config("x").save_attempts_max),
        other => panic!("expected SaveFailed, got {other:?}"),
    }
    faults.set_enabled(false);
    let mut reported = false;
    while let Ok(event) = events.try_recv() {
        reported |= matches!(event, SessionEvent::SaveFailed { .. });
    }
    assert!(reported, "the game hears about the failed save");
    assert!(session.is_dirty(), "the change is kept and saved later");
    session.save_now().await.expect("saves once the store is back");
    assert_eq!(stored_player(&get(&*t.store, &id("rita")).await.expect("read")).coins, 1);
}

/// The event channel is made by the first listener: changes before it are not heard (nobody was
/// listening), every listener after it hears every later event, and a listener that comes after
/// all others left still hears.
pub async fn listeners_that_come_late_hear_every_later_event(t: TestStore) {
    let a = engine(&t.store, "a").await;
    let session = a.start_session(&players(), "tess").await.expect("start");
    session.update(|p| p.coins = 1).expect("a change nobody listens to");
    session.save_now().await.expect("a save nobody listens to");
    let (mut first, mut second) = (session.events(), session.events());
    session.update(|p| p.coins = 2).expect("update");
    let heard = SessionEvent::Changed {
        changes: vec![hoard::engine::FieldChange { field: "coins".into(), value: Some(json!(2)) }],
        client_changes: vec![hoard::engine::FieldChange { field: "coins".into(), value: Some(json!(2)) }],
    };
    assert_eq!(first.try_recv().expect("the first listener hears the change"), heard);
    assert_eq!(second.try_recv().expect("the second listener hears the same change"), heard);
    assert!(first.try_recv().is_err(), "nothing from before the listener came");
    drop((first, second));
    session.update(|p| p.coins = 3).expect("a change nobody listens to again");
    let mut third = session.events();
    session.save_now().await.expect("save");
    assert!(matches!(third.try_recv(), Ok(SessionEvent::Saved { .. })), "a listener after all others left hears");
    session.end().await.expect("end");
    assert_eq!(stored_player(&get(&*t.store, &id("tess")).await.expect("read")).coins, 3);
}

crate::backends::backend_suite! {
    config: crate::backends::TestConfig { limits: hoard::store::Limits { inbox_messages_max: 20, ..Default::default() }, ..Default::default() };
    backends: [memory, sqlite, postgres];
    cases: [
        new_profile_gets_the_template_and_saves_durably,
        stale_holder_cannot_write_after_steal,
        stale_holder_cannot_write_after_release_and_retake,
        stale_holder_cannot_write_after_expiry_and_take,
        crashed_holders_key_is_taken_within_the_lease_time,
        live_holder_hands_over_on_request,
        fail_fast_reports_the_holder,
        errored_session_never_writes,
        invalid_stored_value_is_quarantined_and_kept_in_history,
        rejoin_during_load_yields_one_working_session,
        message_is_applied_once_when_holder_crashes_before_saving,
        offline_players_messages_apply_in_order_at_next_start,
        full_inbox_refuses_new_messages,
        shutdown_saves_and_releases_every_dirty_session,
        writes_to_one_key_apply_in_issue_order_despite_failures,
        operator_reads_without_taking_and_rolls_back_only_when_free_or_forced,
        a_new_start_waits_for_the_previous_sessions_final_save,
        save_failures_are_reported_to_the_game,
        listeners_that_come_late_hear_every_later_event,
    ]
}
