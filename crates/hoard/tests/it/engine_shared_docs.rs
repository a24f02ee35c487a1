//! Lock-free shared documents on every backend: no lost update under concurrent writers, refusals
//! that change nothing, the caller's preview, issue order, hidden commit outcomes never applied
//! twice, and the pending-updates limit. The interval flush runs under paused time on memory.

use std::sync::Arc;
use std::time::Duration;

use hoard::engine::{Engine, EngineConfig, SharedDocError, UpdateOutcome, UpdateVerdict};
use hoard::store::fault::{FaultConfig, FaultStore};
use hoard::store::memory::MemoryStore;
use hoard::store::{DocId, SharedStore, get};
use serde_json::{Value, json};

use crate::backends::TestStore;
use crate::engine_sessions::fast_config;

fn id(key: &str) -> DocId {
    DocId::parse("guilds", key).expect("id")
}

fn number(value: Option<&Value>) -> i64 {
    value.and_then(Value::as_i64).unwrap_or(0)
}

fn increment(value: Option<&Value>) -> UpdateVerdict {
    UpdateVerdict::Write(json!(number(value) + 1))
}

fn deposit(amount: i64) -> impl Fn(Option<&Value>) -> UpdateVerdict + Send + Sync + 'static {
    move |value| UpdateVerdict::Write(json!(number(value) + amount))
}

fn withdraw(amount: i64) -> impl Fn(Option<&Value>) -> UpdateVerdict + Send + Sync + 'static {
    move |value| {
        let balance = number(value);
        if balance < amount {
            UpdateVerdict::Refuse(format!("balance {balance} is under {amount}"))
        } else {
            UpdateVerdict::Write(json!(balance - amount))
        }
    }
}

fn append(n: u64) -> impl Fn(Option<&Value>) -> UpdateVerdict + Send + Sync + 'static {
    move |value| {
        let mut list = value.and_then(Value::as_array).cloned().unwrap_or_default();
        list.push(json!(n));
        UpdateVerdict::Write(Value::Array(list))
    }
}

async fn open(store: &SharedStore, config: EngineConfig) -> Engine {
    Engine::open(store.clone(), config).await.expect("engine opens")
}

pub async fn many_concurrent_writers_of_one_key_lose_no_update(t: TestStore) {
    const ENGINES: usize = 4;
    const UPDATES_PER_ENGINE: usize = 50;
    let key = id("counter");
    let mut writers = Vec::new();
    for engine_index in 0..ENGINES {
        let engine = open(&t.store, fast_config(&format!("w{engine_index}"))).await;
        let key = key.clone();
        writers.push(tokio::spawn(async move {
            let docs = engine.shared_docs();
            let mut pendings = Vec::new();
            let mut flushes = Vec::new();
            for n in 0..UPDATES_PER_ENGINE {
                pendings.push(docs.update(&key, increment).await.expect("update"));
                if n % 5 == 4 {
                    // Flushes overlap each other and the next updates: updates issued during a
                    // flush wait for the next one.
                    let docs = docs.clone();
                    let key = key.clone();
                    flushes.push(tokio::spawn(async move { docs.flush(&key).await }));
                }
            }
            for flush in flushes {
                flush.await.expect("task").expect("flush settles");
            }
            let last = docs.flush_all().await;
            assert!(last.failed.is_empty(), "{:?}", last.failed);
            let mut outcomes = Vec::new();
            for pending in pendings {
                outcomes.push(pending.durable().await.expect("durable"));
            }
            outcomes
        }));
    }
    let mut applied = 0;
    for writer in writers {
        for outcome in writer.await.expect("writer") {
            assert!(matches!(outcome, UpdateOutcome::Applied { .. }), "{outcome:?}");
            applied += 1;
        }
    }
    assert_eq!(applied, ENGINES * UPDATES_PER_ENGINE);
    let stored = get(&*t.store, &key).await.expect("read");
    assert_eq!(stored.value, Some(json!(ENGINES * UPDATES_PER_ENGINE)), "no increment lost, none doubled");
}

pub async fn a_refusing_update_changes_nothing(t: TestStore) {
    let engine = open(&t.store, fast_config("bank")).await;
    let docs = engine.shared_docs();
    let key = id("bank");
    let first = docs.update(&key, deposit(100)).await.expect("update");
    docs.flush(&key).await.expect("flush");
    assert!(matches!(first.durable().await, Ok(UpdateOutcome::Applied { .. })));
    let before = get(&*t.store, &key).await.expect("read");
    assert_eq!(before.value, Some(json!(100)));

    let overdraw = docs.update(&key, withdraw(150)).await.expect("update");
    assert!(overdraw.local_refusal().is_some(), "the preview already refuses");
    assert_eq!(overdraw.local_view(), Some(json!(100)));
    let report = docs.flush(&key).await.expect("flush");
    assert_eq!((report.updates_applied, report.updates_refused), (0, 1));
    match overdraw.durable().await {
        Ok(UpdateOutcome::Refused { reason }) => assert!(reason.contains("under 150"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let after = get(&*t.store, &key).await.expect("read");
    assert_eq!((after.value, after.version), (before.value, before.version), "a refusal writes nothing");

    // In one batch a refusal is skipped and the rest still apply, in order: 100-50=50, 50-60
    // refused, 50+5=55.
    let a = docs.update(&key, withdraw(50)).await.expect("update");
    let b = docs.update(&key, withdraw(60)).await.expect("update");
    let c = docs.update(&key, deposit(5)).await.expect("update");
    assert_eq!(c.local_view(), Some(json!(55)));
    docs.flush(&key).await.expect("flush");
    let version = before.version + 1;
    assert_eq!(a.durable().await, Ok(UpdateOutcome::Applied { version }));
    assert!(matches!(b.durable().await, Ok(UpdateOutcome::Refused { .. })));
    assert_eq!(c.durable().await, Ok(UpdateOutcome::Applied { version }));
    let last = get(&*t.store, &key).await.expect("read");
    assert_eq!((last.value, last.version), (Some(json!(55)), version));
}

pub async fn local_view_shows_the_callers_change_before_the_flush(t: TestStore) {
    let here = open(&t.store, fast_config("here")).await;
    let there = open(&t.store, fast_config("there")).await;
    let key = id("board");
    let docs = here.shared_docs();
    let first = docs.update(&key, deposit(7)).await.expect("update");
    assert_eq!(first.local_view(), Some(json!(7)));
    let second = docs.update(&key, deposit(3)).await.expect("update");
    assert_eq!(second.local_view(), Some(json!(10)), "the view stacks the waiting updates");
    assert_eq!(docs.local_view(&key), Some(Some(json!(10))));
    assert_eq!(docs.pending_updates(&key), 2);
    assert_eq!(docs.read(&key).await.expect("read"), None, "nothing is stored before the flush");
    assert_eq!(there.shared_docs().read(&key).await.expect("read"), None);
    assert_eq!(there.shared_docs().local_view(&key), None, "another engine has no view of it");

    docs.flush(&key).await.expect("flush");
    assert_eq!(docs.read(&key).await.expect("read"), Some(json!(10)));
    assert_eq!(docs.local_view(&key), Some(Some(json!(10))));
    // Another engine's first update starts from the stored value.
    let elsewhere = there.shared_docs().update(&key, deposit(1)).await.expect("update");
    assert_eq!(elsewhere.local_view(), Some(json!(11)));
}

pub async fn updates_to_one_key_apply_in_issue_order(t: TestStore) {
    const UPDATES: u64 = 40;
    let engine = open(&t.store, fast_config("order")).await;
    let docs = engine.shared_docs();
    let key = id("log");
    let mut pendings = Vec::new();
    let mut flushes = Vec::new();
    for n in 0..UPDATES {
        pendings.push(docs.update(&key, append(n)).await.expect("update"));
        if n % 7 == 3 {
            let docs = docs.clone();
            let key = key.clone();
            flushes.push(tokio::spawn(async move { docs.flush(&key).await }));
        }
    }
    for flush in flushes {
        flush.await.expect("task").expect("flush");
    }
    docs.flush(&key).await.expect("flush");
    let mut last_version = 0;
    for pending in pendings {
        match pending.durable().await {
            Ok(UpdateOutcome::Applied { version }) => {
                assert!(version >= last_version, "a later update never lands in an earlier version");
                last_version = version;
            }
            other => panic!("expected applied, got {other:?}"),
        }
    }
    let expected: Vec<Value> = (0..UPDATES).map(|n| json!(n)).collect();
    assert_eq!(docs.read(&key).await.expect("read"), Some(Value::Array(expected)));
}

pub async fn hidden_commit_outcome_never_applies_an_update_twice(t: TestStore) {
    const UPDATES_PER_ENGINE: usize = 40;
    let faults =
        Arc::new(FaultStore::new(t.store.clone(), FaultConfig { error_after_apply: 0.5, ..FaultConfig::none(11) }));
    let faulty: SharedStore = faults.clone();
    let key = id("hidden");
    let mut writers = Vec::new();
    for label in ["a", "b"] {
        let engine = open(&faulty, fast_config(label)).await;
        let key = key.clone();
        writers.push(tokio::spawn(async move {
            let docs = engine.shared_docs();
            let mut outcomes = Vec::new();
            for _batch in 0..UPDATES_PER_ENGINE / 4 {
                let mut pendings = Vec::new();
                for _ in 0..4 {
                    pendings.push(docs.update(&key, increment).await.expect("update"));
                }
                let _ = docs.flush(&key).await;
                for pending in pendings {
                    outcomes.push(pending.durable().await);
                }
            }
            outcomes
        }));
    }
    let (mut applied, mut unknown) = (0, 0);
    for writer in writers {
        for outcome in writer.await.expect("writer") {
            match outcome {
                Ok(UpdateOutcome::Applied { .. }) => applied += 1,
                Err(SharedDocError::OutcomeUnknown { .. }) => unknown += 1,
                Err(SharedDocError::NotApplied { .. }) => {}
                other => panic!("unexpected outcome {other:?}"),
            }
        }
    }
    assert!(faults.counts().errors_after_apply > 0, "the faults hid some answers");
    let stored = number(get(&*t.store, &key).await.expect("read").value.as_ref());
    // Reads never fail here, so every hidden outcome is resolved by reading back.
    assert_eq!(unknown, 0);
    assert_eq!(stored, applied, "exactly the applied updates, never one twice");
    assert!(applied > 0);
}

pub async fn past_the_pending_limit_updates_are_refused_with_a_clear_error(t: TestStore) {
    let config = EngineConfig { shared_doc_pending_updates_max: 5, ..fast_config("limit") };
    let engine = open(&t.store, config).await;
    let docs = engine.shared_docs();
    let key = id("full");
    let mut pendings = Vec::new();
    for _ in 0..5 {
        pendings.push(docs.update(&key, increment).await.expect("within the limit"));
    }
    let error = docs.update(&key, increment).await.expect_err("past the limit");
    assert_eq!(error, SharedDocError::TooManyPending { id: key.clone(), pending_max: 5 });
    assert!(error.to_string().contains("shared_doc_pending_updates_max"), "{error}");
    assert_eq!(docs.local_view(&key), Some(Some(json!(5))), "the refused update is not in the view");
    assert_eq!(docs.read(&key).await.expect("read"), None, "nothing stored");
    docs.flush(&key).await.expect("flush");
    for pending in pendings {
        assert!(matches!(pending.durable().await, Ok(UpdateOutcome::Applied { .. })));
    }
    let after = docs.update(&key, increment).await.expect("room again after the flush");
    docs.flush(&key).await.expect("flush");
    assert!(matches!(after.durable().await, Ok(UpdateOutcome::Applied { .. })));
    assert_eq!(docs.read(&key).await.expect("read"), Some(json!(6)));
}

pub async fn shutdown_flushes_waiting_updates_and_a_crash_abandons_them(t: TestStore) {
    let key = id("closing");
    let closing = open(&t.store, fast_config("closing")).await;
    let pending = closing.shared_docs().update(&key, deposit(9)).await.expect("update");
    let report = closing.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.saved, vec![key.clone()]);
    assert!(matches!(pending.durable().await, Ok(UpdateOutcome::Applied { .. })));
    assert_eq!(closing.shared_docs().update(&key, deposit(1)).await.err(), Some(SharedDocError::ShuttingDown));

    let crashing = open(&t.store, fast_config("crashing")).await;
    let lost = crashing.shared_docs().update(&key, deposit(100)).await.expect("update");
    crashing.crash();
    assert_eq!(lost.durable().await, Err(SharedDocError::Abandoned { id: key.clone() }));
    assert_eq!(get(&*t.store, &key).await.expect("read").value, Some(json!(9)), "an unflushed update is lost");
}

/// Paused time on the memory store: the interval flush makes an update durable within one
/// interval, with no flush called.
#[tokio::test(start_paused = true)]
async fn interval_flush_makes_updates_durable() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let engine = open(&store, EngineConfig { server_label: "interval".into(), ..EngineConfig::default() }).await;
    let interval_ms = engine.config().shared_doc_flush_interval_ms;
    assert_eq!(interval_ms, 10_000, "the seed's interval is the default");
    let key = id("interval");
    let pending = engine.shared_docs().update(&key, deposit(42)).await.expect("update");
    tokio::time::sleep(Duration::from_millis(interval_ms / 2)).await;
    assert!(!get(&*store, &key).await.expect("read").exists(), "not flushed yet");
    let outcome = tokio::time::timeout(Duration::from_millis(interval_ms), pending.durable())
        .await
        .expect("flushed within one interval");
    assert!(matches!(outcome, Ok(UpdateOutcome::Applied { .. })), "{outcome:?}");
    assert_eq!(get(&*store, &key).await.expect("read").value, Some(json!(42)));
}

crate::backends::backend_suite! {
    config: Default::default();
    backends: [memory, sqlite, postgres];
    cases: [
        many_concurrent_writers_of_one_key_lose_no_update,
        a_refusing_update_changes_nothing,
        local_view_shows_the_callers_change_before_the_flush,
        updates_to_one_key_apply_in_issue_order,
        hidden_commit_outcome_never_applies_an_update_twice,
        past_the_pending_limit_updates_are_refused_with_a_clear_error,
        shutdown_flushes_waiting_updates_and_a_crash_abandons_them,
    ]
}
