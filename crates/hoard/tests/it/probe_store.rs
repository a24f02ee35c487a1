//! A store wrapper for engine tests: counts what reaches the inner store, measures how many reads
//! are in flight at once, can delay reads and commits (on paused time, a delay is exact), and can
//! stop the process at one chosen commit, before or after it reaches the inner store (a crash
//! point: the commit's caller never hears back, and the test crashes the engine).
//!
//! Invariant: it never changes an answer; it only counts and waits (a stopped commit waits forever).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hoard::store::{
    Commit, CommitOutcome, DocId, Document, HolderId, HolderLease, KeyPage, Limits, ListQuery, Notification,
    SharedStore, Store, StoreError, StoreName, Subscription, VersionInfo, VersionQuery, VersionRecord,
};

/// Which commit stops, and whether it reaches the inner store first.
type StopPredicate = Box<dyn Fn(&Commit) -> bool + Send + Sync>;

struct StopAt {
    matches: StopPredicate,
    applied_first: bool,
}

pub struct ProbeStore {
    inner: SharedStore,
    stop_at: std::sync::Mutex<Option<StopAt>>,
    stopped: tokio::sync::watch::Sender<bool>,
    read_delay_ms: AtomicU64,
    commit_delay_ms: AtomicU64,
    reads: AtomicU64,
    reads_in_flight: AtomicU64,
    reads_in_flight_max: AtomicU64,
    commits: AtomicU64,
    renewals: AtomicU64,
}

/// Decrements the in-flight count however the read ends (answered or dropped).
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for ProbeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeStore").field("commits", &self.commits).field("reads", &self.reads).finish()
    }
}

impl ProbeStore {
    pub fn new(inner: SharedStore) -> ProbeStore {
        ProbeStore {
            inner,
            stop_at: std::sync::Mutex::new(None),
            stopped: tokio::sync::watch::channel(false).0,
            read_delay_ms: AtomicU64::new(0),
            commit_delay_ms: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            reads_in_flight: AtomicU64::new(0),
            reads_in_flight_max: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &SharedStore {
        &self.inner
    }

    /// Every document read from now on waits this long before reaching the inner store.
    pub fn delay_reads(&self, delay_ms: u64) {
        self.read_delay_ms.store(delay_ms, Ordering::SeqCst);
    }

    /// Every commit from now on waits this long before reaching the inner store.
    pub fn delay_commits(&self, delay_ms: u64) {
        self.commit_delay_ms.store(delay_ms, Ordering::SeqCst);
    }

    /// The first commit from now on for which `matches` holds never answers: it stops before the
    /// inner store, or (`applied_first`) after the inner store applied it.
    pub fn stop_at_commit(&self, applied_first: bool, matches: impl Fn(&Commit) -> bool + Send + Sync + 'static) {
        *self.stop_at.lock().expect("stop point") = Some(StopAt { matches: Box::new(matches), applied_first });
    }

    /// Waits until the chosen commit has stopped.
    pub async fn stopped(&self) {
        let mut stopped = self.stopped.subscribe();
        stopped.wait_for(|stopped| *stopped).await.expect("the probe outlives its waiters");
    }

    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// The most document reads that were in flight at the same time.
    pub fn reads_in_flight_max(&self) -> u64 {
        self.reads_in_flight_max.load(Ordering::SeqCst)
    }

    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::SeqCst)
    }

    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::SeqCst)
    }
}

async fn wait_ms(delay_ms: &AtomicU64) {
    let delay_ms = delay_ms.load(Ordering::SeqCst);
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
}

#[async_trait]
impl Store for ProbeStore {
    fn backend_name(&self) -> &'static str {
        "probe"
    }
    fn limits(&self) -> &Limits {
        self.inner.limits()
    }
    async fn now_ms(&self) -> Result<i64, StoreError> {
        self.inner.now_ms().await
    }
    async fn get_many(&self, ids: &[DocId]) -> Result<Vec<Document>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let now = self.reads_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _in_flight = InFlight(&self.reads_in_flight);
        self.reads_in_flight_max.fetch_max(now, Ordering::SeqCst);
        wait_ms(&self.read_delay_ms).await;
        self.inner.get_many(ids).await
    }
    async fn list_keys(&self, store: &StoreName, query: &ListQuery) -> Result<KeyPage, StoreError> {
        self.inner.list_keys(store, query).await
    }
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        wait_ms(&self.commit_delay_ms).await;
        let stop = {
            let mut stop_at = self.stop_at.lock().expect("stop point");
            match stop_at.as_ref() {
                Some(stop) if (stop.matches)(&commit) => stop_at.take(),
                _ => None,
            }
        };
        let Some(stop) = stop else { return self.inner.commit(commit).await };
        if stop.applied_first {
            let _answer_never_heard = self.inner.commit(commit).await;
        }
        self.stopped.send_replace(true);
        std::future::pending().await
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
    async fn renew_holder(&self, holder: &HolderId, ttl_ms: u64) -> Result<HolderLease, StoreError> {
        self.renewals.fetch_add(1, Ordering::SeqCst);
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
