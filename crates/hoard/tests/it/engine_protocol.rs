//! The acquisition protocol the engine and `hoard serve` share (`engine::protocol`), called
//! directly on the memory store on paused time: policies, bounded waits, transient store errors,
//! releases of keys nobody plays, and the notification formats.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hoard::engine::protocol::{
    AcquireOutcome, Acquisition, HandoffAsker, HeldPolicy, acquire_with_policy, announces_release, read_or_release,
    released_notification, released_notifications,
};
use hoard::retry::{Backoff, Jitter, Retry};
use hoard::store::fault::{FaultConfig, FaultStore};
use hoard::store::memory::MemoryStore;
use hoard::store::{Commit, DocId, HolderId, LeaseOp, SharedStore, Store, Write, get};

/// Counts the handoff requests the protocol sends.
#[derive(Default)]
struct CountingAsker {
    asked: AtomicU32,
}

impl HandoffAsker for CountingAsker {
    async fn ask(&self, _holder: &HolderId, _id: &DocId) {
        self.asked.fetch_add(1, Ordering::SeqCst);
    }
}

fn id(key: &str) -> DocId {
    DocId::parse("players", key).expect("id")
}

fn holder(name: &str) -> HolderId {
    HolderId::new(name).expect("holder id")
}

/// A store where `owner` holds `key` (its process lease lasts an hour).
async fn held_by(owner: &HolderId, key: &str) -> SharedStore {
    let store: SharedStore = Arc::new(MemoryStore::new());
    store.renew_holder(owner, 3_600_000).await.expect("register the owner");
    let write = Write::new(id(key)).lease(LeaseOp::Acquire(owner.clone()));
    assert!(store.commit(Commit::single(write)).await.expect("acquire").is_committed());
    store
}

async fn acquire(store: &dyn Store, key: &str, policy: HeldPolicy, asker: &CountingAsker) -> AcquireOutcome {
    let (me, target, jitter) = (holder("me"), id(key), Jitter::seeded(1));
    store.renew_holder(&me, 3_600_000).await.expect("register");
    let request = Acquisition::with_defaults(store, &me, &target, policy, &jitter);
    acquire_with_policy(&request, asker).await.expect("no store error")
}

#[tokio::test(start_paused = true)]
async fn fail_fast_answers_locked_with_the_holder_and_asks_nothing() {
    let owner = holder("owner");
    let store = held_by(&owner, "k").await;
    let asker = CountingAsker::default();
    let outcome = acquire(&*store, "k", HeldPolicy::FailFast, &asker).await;
    assert_eq!(outcome, AcquireOutcome::Locked { holder: owner });
    assert_eq!(asker.asked.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn steal_now_takes_the_key_and_says_from_whom() {
    let owner = holder("owner");
    let store = held_by(&owner, "k").await;
    let before = get(&*store, &id("k")).await.expect("read").lease.epoch;
    let outcome = acquire(&*store, "k", HeldPolicy::StealNow, &CountingAsker::default()).await;
    let AcquireOutcome::Acquired(acquired) = outcome else { panic!("stolen: {outcome:?}") };
    assert_eq!(acquired.stole_from, Some(owner));
    assert!(acquired.epoch > before, "the steal bumps the epoch, fencing the owner out");
    let document = get(&*store, &id("k")).await.expect("read");
    assert_eq!(document.lease.holder, Some(holder("me")));
}

#[tokio::test(start_paused = true)]
async fn wait_answers_locked_after_its_wait_having_asked_the_holder_once() {
    let owner = holder("owner");
    let store = held_by(&owner, "k").await;
    let asker = CountingAsker::default();
    let started = tokio::time::Instant::now();
    let outcome = acquire(&*store, "k", HeldPolicy::Wait { wait_ms: 2_000 }, &asker).await;
    assert_eq!(outcome, AcquireOutcome::Locked { holder: owner });
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(2_000) && waited < Duration::from_millis(2_500), "waited {waited:?}");
    assert_eq!(asker.asked.load(Ordering::SeqCst), 1, "one request per holder and epoch");
}

#[tokio::test(start_paused = true)]
async fn wait_then_steal_takes_the_key_once_the_wait_is_over() {
    let owner = holder("owner");
    let store = held_by(&owner, "k").await;
    let started = tokio::time::Instant::now();
    let outcome = acquire(&*store, "k", HeldPolicy::WaitThenSteal { wait_ms: 1_000 }, &CountingAsker::default()).await;
    let AcquireOutcome::Acquired(acquired) = outcome else { panic!("stolen after the wait: {outcome:?}") };
    assert_eq!(acquired.stole_from, Some(owner));
    assert_eq!(acquired.handoffs_requested, 1);
    assert!(started.elapsed() >= Duration::from_millis(1_000));
}

#[tokio::test(start_paused = true)]
async fn a_release_announcement_wakes_a_waiting_acquirer_before_its_poll() {
    let owner = holder("owner");
    let store = held_by(&owner, "k").await;
    let releaser = store.clone();
    let released_by = owner.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let release = Write::new(id("k")).lease(LeaseOp::Release);
        assert!(releaser.commit(Commit::single(release)).await.expect("release").is_committed());
        releaser.notify(released_notification(&id("k"))).await.expect("announce");
        drop(released_by);
    });
    let (me, target, jitter) = (holder("me"), id("k"), Jitter::seeded(1));
    store.renew_holder(&me, 3_600_000).await.expect("register");
    let mut request = Acquisition::with_defaults(&*store, &me, &target, HeldPolicy::Wait { wait_ms: 60_000 }, &jitter);
    request.poll_interval_ms = 30_000;
    let started = tokio::time::Instant::now();
    let outcome = acquire_with_policy(&request, &CountingAsker::default()).await.expect("no store error");
    assert!(matches!(outcome, AcquireOutcome::Acquired(_)), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "woken by the announcement, not the 30 s poll");
}

#[tokio::test(start_paused = true)]
async fn transient_store_errors_are_retried_not_returned() {
    let inner: SharedStore = Arc::new(MemoryStore::new());
    let flaky = FaultStore::new(inner.clone(), FaultConfig { error_before_apply: 0.7, ..FaultConfig::none(11) });
    let (me, target, jitter) = (holder("me"), id("k"), Jitter::seeded(1));
    inner.renew_holder(&me, 3_600_000).await.expect("register");
    let request = Acquisition::with_defaults(&flaky, &me, &target, HeldPolicy::FailFast, &jitter);
    let outcome = acquire_with_policy(&request, &CountingAsker::default()).await.expect("retried through the faults");
    assert!(matches!(outcome, AcquireOutcome::Acquired(_)), "{outcome:?}");
    assert!(flaky.counts().errors_before_apply > 0, "the seed injects failures before the success");
}

#[tokio::test(start_paused = true)]
async fn a_store_that_keeps_failing_ends_the_acquisition_after_the_bounded_attempts() {
    let inner: SharedStore = Arc::new(MemoryStore::new());
    let down = FaultStore::new(inner.clone(), FaultConfig { error_before_apply: 1.0, ..FaultConfig::none(3) });
    let (me, target, jitter) = (holder("me"), id("k"), Jitter::seeded(1));
    let mut request = Acquisition::with_defaults(&down, &me, &target, HeldPolicy::FailFast, &jitter);
    request.retry = Retry::new("acquire a key", 5, Backoff::DEFAULT, &jitter);
    let result = acquire_with_policy(&request, &CountingAsker::default()).await;
    assert!(result.is_err(), "the store error is returned: {result:?}");
    assert_eq!(down.counts().errors_before_apply, 5, "exactly the bounded attempts");
}

#[tokio::test(start_paused = true)]
async fn a_key_acquired_but_unreadable_is_released_untouched() {
    let inner: SharedStore = Arc::new(MemoryStore::new());
    let (me, target, jitter) = (holder("me"), id("k"), Jitter::seeded(1));
    inner.renew_holder(&me, 3_600_000).await.expect("register");
    let request = Acquisition::with_defaults(&*inner, &me, &target, HeldPolicy::FailFast, &jitter);
    let AcquireOutcome::Acquired(acquired) =
        acquire_with_policy(&request, &CountingAsker::default()).await.expect("ok")
    else {
        panic!("a free key is acquired");
    };
    let unreadable = FaultStore::new(inner.clone(), FaultConfig { read_error: 1.0, ..FaultConfig::none(4) });
    let reading = Acquisition::with_defaults(&unreadable, &me, &target, HeldPolicy::FailFast, &jitter);
    let read_retry = Retry::new("read", 3, Backoff::DEFAULT, &jitter);
    let read = read_or_release(&reading, acquired.epoch, &read_retry).await;
    assert!(read.is_err(), "the read's error is returned");
    let document = get(&*inner, &target).await.expect("read");
    assert_eq!(document.lease.holder, None, "nobody keeps a key nobody plays");
    assert_eq!(document.lease.epoch, acquired.epoch, "released at the epoch it was acquired at");
}

fn ids(count: usize) -> Vec<DocId> {
    (0..count).map(|n| id(&format!("player-{n}"))).collect()
}

#[test]
fn one_release_is_announced_as_the_single_key_older_processes_expect() {
    let id = &ids(1)[0];
    let notifications = released_notifications(std::slice::from_ref(id), 7_000);
    assert_eq!(notifications, vec![released_notification(id)]);
    assert!(announces_release(&notifications[0], id));
}

#[test]
fn many_releases_share_payloads_within_the_limit_and_each_key_is_announced_once() {
    let all = ids(2_000);
    let notifications = released_notifications(&all, 7_000);
    assert!(notifications.len() > 1 && notifications.len() < 100, "{} notifications", notifications.len());
    for notification in &notifications {
        assert!(notification.payload.len() <= 7_000, "payload of {} bytes", notification.payload.len());
    }
    for id in &all {
        let announcing = notifications.iter().filter(|n| announces_release(n, id)).count();
        assert_eq!(announcing, 1, "{id} announced {announcing} times");
    }
    let other = DocId::parse("players", "someone-else").expect("id");
    assert!(notifications.iter().all(|n| !announces_release(n, &other)));
}
