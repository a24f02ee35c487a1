//! Retention tiers and the background pruner, on paused tokio time over the memory store (its
//! clock follows tokio's): every version is kept for the first tier, then the last of each hour,
//! then the last of each day; the pruner passes at its interval, examines a bounded number of
//! rows per pass and wraps around, counts failed passes and retries them, stops with its guard,
//! and runs inside every engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hoard::engine::{Engine, EngineConfig};
use hoard::store::limits::{DAY_MS, HOUR_MS, HistoryPolicy, Limits};
use hoard::store::memory::{MEMORY_CLOCK_START_MS, MemoryClock, MemoryStore};
use hoard::store::pruner::{HistoryPruneOptions, HistoryPruner};
use hoard::store::{
    Commit, CommitOutcome, DocId, Document, HolderId, HolderLease, KeyPage, ListQuery, Notification, PrunedPage,
    SharedStore, Store, StoreError, StoreName, Subscription, VersionInfo, VersionQuery, VersionRecord, Write,
};
use serde_json::json;

use crate::store_conformance::{commit_ok, doc};

fn paused_memory(policy: HistoryPolicy) -> Arc<MemoryStore> {
    let clock = MemoryClock::Tokio { start_ms: MEMORY_CLOCK_START_MS, started: tokio::time::Instant::now() };
    Arc::new(MemoryStore::with_options(Limits::default(), policy, clock))
}

async fn versions(store: &dyn Store, id: &DocId) -> Vec<u64> {
    let listing = store.list_versions(id, &VersionQuery { before_version: None, limit: 1_000 }).await.expect("list");
    listing.iter().rev().map(|info| info.version).collect()
}

#[tokio::test(start_paused = true)]
async fn retention_keeps_every_version_then_the_last_of_each_hour_then_of_each_day() {
    let store = paused_memory(HistoryPolicy::default());
    let id = doc("players", "tiers");
    // Start at a UTC day boundary so hours and days are easy to name.
    let to_midnight_ms = DAY_MS - MEMORY_CLOCK_START_MS.rem_euclid(DAY_MS);
    tokio::time::advance(Duration::from_millis(to_midnight_ms as u64)).await;
    // Day 0: four versions in hour 0, two in hour 5; day 1: three in hour 2. Then, 32 days
    // later, three versions ten minutes apart.
    let mut now_ms = 0i64;
    for at_ms in [
        0,
        10,
        20,
        30,
        5 * HOUR_MS,
        5 * HOUR_MS + 10,
        DAY_MS + 2 * HOUR_MS,
        DAY_MS + 2 * HOUR_MS + 5,
        DAY_MS + 2 * HOUR_MS + 9,
    ] {
        tokio::time::advance(Duration::from_millis((at_ms - now_ms) as u64)).await;
        now_ms = at_ms;
        commit_ok(&*store, vec![Write::put(id.clone(), json!({"at": at_ms}))]).await;
    }
    // Now (day 1, 02:00): versions 1-6 were superseded about a day ago (hourly tier): of hour 0
    // only its last (4) stays, of hour 5 only its last (6); 7 and 8 were superseded milliseconds
    // ago (every version is kept).
    assert_eq!(store.prune_history().await.expect("prune"), 4);
    assert_eq!(versions(&*store, &id).await, vec![4, 6, 7, 8, 9]);
    tokio::time::advance(Duration::from_millis((32 * DAY_MS - now_ms) as u64)).await;
    for step in 0..3 {
        tokio::time::advance(Duration::from_millis(if step == 0 { 0 } else { 10 * 60_000 })).await;
        commit_ok(&*store, vec![Write::put(id.clone(), json!({"late": step}))]).await;
    }
    // Versions 4-8 were superseded 31 days ago: past retention. Version 9 was superseded by
    // version 10 twenty minutes ago, and 10 and 11 even later: every version of the last hour stays.
    assert_eq!(store.prune_history().await.expect("prune"), 4);
    assert_eq!(versions(&*store, &id).await, vec![9, 10, 11, 12]);

    // Ten hours later all three are in the hourly tier: 10 and 11 share their successor's hour
    // and go; 9 is the last of its hour and stays.
    tokio::time::advance(Duration::from_millis((10 * HOUR_MS) as u64)).await;
    store.prune_history().await.expect("prune");
    assert_eq!(versions(&*store, &id).await, vec![9, 12], "the hourly tier keeps the last of each hour");

    // Past retention everything superseded goes; the latest is never pruned, however old.
    tokio::time::advance(Duration::from_millis((400 * DAY_MS) as u64)).await;
    store.prune_history().await.expect("prune");
    assert_eq!(versions(&*store, &id).await, vec![12]);
}

#[tokio::test(start_paused = true)]
async fn the_daily_tier_keeps_the_last_version_of_each_utc_day() {
    let policy = HistoryPolicy { keep_every_version_ms: 0, keep_hourly_ms: 0, ..HistoryPolicy::default() };
    let store = paused_memory(policy);
    let id = doc("players", "daily");
    let to_midnight_ms = DAY_MS - MEMORY_CLOCK_START_MS.rem_euclid(DAY_MS);
    tokio::time::advance(Duration::from_millis(to_midnight_ms as u64)).await;
    // Two versions on each of three days (at hours 0 and 6), then one on the fourth.
    for day in 0..3 {
        for hour in [0, 6] {
            commit_ok(&*store, vec![Write::put(id.clone(), json!({"day": day, "hour": hour}))]).await;
            tokio::time::advance(Duration::from_millis((6 * HOUR_MS) as u64)).await;
        }
        tokio::time::advance(Duration::from_millis((12 * HOUR_MS) as u64)).await;
    }
    commit_ok(&*store, vec![Write::put(id.clone(), json!({"day": 3}))]).await;
    store.prune_history().await.expect("prune");
    assert_eq!(versions(&*store, &id).await, vec![2, 4, 6, 7], "one per day, the day's last, and the latest");
}

#[tokio::test(start_paused = true)]
async fn the_background_pruner_passes_every_interval_in_bounded_steps_and_wraps_around() {
    let store = paused_memory(HistoryPolicy::keep_latest_only());
    let ids: Vec<DocId> = (0..3).map(|n| doc("players", &format!("p{n}"))).collect();
    for round in 0..5 {
        for id in &ids {
            commit_ok(&*store, vec![Write::put(id.clone(), json!(round))]).await;
        }
    }
    let shared: SharedStore = store.clone();
    // 5 rows per key; at most 5 rows a pass: one key per pass.
    let pruner = HistoryPruner::start(shared, HistoryPruneOptions { interval_ms: 1_000, rows_per_pass: 5 });
    tokio::time::sleep(Duration::from_millis(999)).await;
    assert_eq!(pruner.stats().passes, 0, "nothing before the first interval");
    assert_eq!(versions(&*store, &ids[0]).await.len(), 5);
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(pruner.stats().passes, 1);
    assert_eq!(versions(&*store, &ids[0]).await, vec![5], "the first pass pruned the first key");
    assert_eq!(versions(&*store, &ids[1]).await.len(), 5, "and stopped at its row limit");
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let stats = pruner.stats();
    assert_eq!(stats.passes, 4);
    assert_eq!(stats.pruned_versions, 12);
    assert_eq!(stats.failures, 0);
    assert!(stats.rounds_completed >= 1, "the pass reached the end and started over: {stats:?}");
    for id in &ids {
        assert_eq!(versions(&*store, id).await, vec![5]);
    }
    // Writes after a full round are found by the next round.
    commit_ok(&*store, vec![Write::put(ids[0].clone(), json!("again"))]).await;
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    assert_eq!(versions(&*store, &ids[0]).await, vec![6]);
}

/// A memory store whose `prune_history_page` fails while `failing` is set, counting its calls.
#[derive(Debug)]
struct FlakyPruning {
    inner: Arc<MemoryStore>,
    failing: std::sync::atomic::AtomicBool,
    calls: AtomicU64,
}

#[async_trait]
impl Store for FlakyPruning {
    fn backend_name(&self) -> &'static str {
        "flaky-pruning"
    }
    fn limits(&self) -> &Limits {
        self.inner.limits()
    }
    async fn now_ms(&self) -> Result<i64, StoreError> {
        self.inner.now_ms().await
    }
    async fn get_many(&self, ids: &[DocId]) -> Result<Vec<Document>, StoreError> {
        self.inner.get_many(ids).await
    }
    async fn list_keys(&self, store: &StoreName, query: &ListQuery) -> Result<KeyPage, StoreError> {
        self.inner.list_keys(store, query).await
    }
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError> {
        self.inner.commit(commit).await
    }
    async fn list_versions(&self, id: &DocId, query: &VersionQuery) -> Result<Vec<VersionInfo>, StoreError> {
        self.inner.list_versions(id, query).await
    }
    async fn get_version(&self, id: &DocId, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        self.inner.get_version(id, version).await
    }
    async fn prune_history(&self) -> Result<u64, StoreError> {
        self.inner.prune_history().await
    }
    async fn prune_history_page(&self, after: Option<DocId>, rows_max: usize) -> Result<PrunedPage, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("injected pruning failure"));
        }
        self.inner.prune_history_page(after, rows_max).await
    }
    async fn renew_holder(&self, holder: &HolderId, ttl_ms: u64) -> Result<HolderLease, StoreError> {
        self.inner.renew_holder(holder, ttl_ms).await
    }
    async fn release_holder(&self, holder: &HolderId) -> Result<(), StoreError> {
        self.inner.release_holder(holder).await
    }
    async fn holder_lease(&self, holder: &HolderId) -> Result<Option<HolderLease>, StoreError> {
        self.inner.holder_lease(holder).await
    }
    async fn notify(&self, notification: Notification) -> Result<(), StoreError> {
        self.inner.notify(notification).await
    }
    fn subscribe(&self) -> Subscription {
        self.inner.subscribe()
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_pruning_pass_is_counted_and_retried_and_dropping_the_pruner_stops_it() {
    let inner = paused_memory(HistoryPolicy::keep_latest_only());
    let id = doc("players", "flaky");
    for n in 0..3 {
        commit_ok(&*inner, vec![Write::put(id.clone(), json!(n))]).await;
    }
    let flaky = Arc::new(FlakyPruning { inner: inner.clone(), failing: true.into(), calls: AtomicU64::new(0) });
    let shared: SharedStore = flaky.clone();
    let pruner = HistoryPruner::start(shared, HistoryPruneOptions { interval_ms: 1_000, rows_per_pass: 100 });
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(pruner.stats().failures, 2);
    assert_eq!(pruner.stats().passes, 0);
    assert_eq!(versions(&*inner, &id).await.len(), 3, "a failed pass changed nothing");
    flaky.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(pruner.stats().passes, 1, "the next interval retried");
    assert_eq!(versions(&*inner, &id).await, vec![3]);
    drop(pruner);
    let calls = flaky.calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(10_000)).await;
    assert_eq!(flaky.calls.load(Ordering::SeqCst), calls, "a dropped pruner makes no more passes");
}

#[tokio::test(start_paused = true)]
async fn an_engine_prunes_its_stores_history_in_the_background() {
    let store = paused_memory(HistoryPolicy::keep_latest_only());
    let id = doc("players", "engine-pruned");
    for n in 0..4 {
        commit_ok(&*store, vec![Write::put(id.clone(), json!(n))]).await;
    }
    let config = EngineConfig {
        history_pruning: HistoryPruneOptions { interval_ms: 5_000, rows_per_pass: 1_000 },
        ..EngineConfig::default()
    };
    let shared: SharedStore = store.clone();
    let engine = Engine::open(shared, config).await.expect("open");
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    assert_eq!(versions(&*store, &id).await.len(), 4);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(versions(&*store, &id).await, vec![4], "pruned without `hoard prune`");
    engine.shutdown(Duration::from_secs(1)).await;
    let bad = EngineConfig {
        history_pruning: HistoryPruneOptions { interval_ms: 1, rows_per_pass: 0 },
        ..EngineConfig::default()
    };
    let shared: SharedStore = store.clone();
    assert!(Engine::open(shared, bad).await.is_err(), "a pass of zero rows is refused at open");
}

#[tokio::test]
async fn a_history_policy_with_tiers_out_of_order_is_refused_when_a_store_opens() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("refused.sqlite3");
    let policy = HistoryPolicy { keep_every_version_ms: DAY_MS, keep_hourly_ms: HOUR_MS, ..HistoryPolicy::default() };
    let options =
        hoard::store::sqlite::SqliteOptions { path: path.clone(), history_policy: policy, ..Default::default() };
    match hoard::store::sqlite::SqliteStore::open(options).await {
        Err(StoreError::InvalidInput(error)) => assert!(error.to_string().contains("keep_every_version_ms"), "{error}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert!(!path.exists(), "nothing was created");
    let no_buckets = HistoryPolicy { hourly_bucket_ms: 0, ..HistoryPolicy::default() };
    assert!(no_buckets.check().is_err());
    assert!(HistoryPolicy { keyframe_interval_versions: 0, ..HistoryPolicy::default() }.check().is_err());
    assert!(HistoryPolicy::default().check().is_ok() && HistoryPolicy::keep_latest_only().check().is_ok());
}
