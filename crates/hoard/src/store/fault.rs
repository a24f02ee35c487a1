//! A fault-injecting wrapper around any store: errors before applying, errors after applying
//! (the outcome hidden from the caller, as Roblox warns happens), added latency, and lost
//! notifications.
//!
//! Invariant: every fault is drawn from one seeded generator in call order, so the same seed and
//! the same sequence of calls inject the same faults (replayable runs). The wrapper never changes
//! what the inner store does; it only hides or delays the answer, or refuses before calling.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::limits::Limits;
use super::types::{
    Commit, CommitOutcome, DocId, Document, HolderId, HolderLease, KeyPage, ListQuery, Notification, StoreName,
    VersionInfo, VersionQuery, VersionRecord,
};
use super::{GroupCommitStats, SharedStore, Store, StoreError, Subscription};

/// Fault rates, each a probability per call in `0.0..=1.0`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultConfig {
    pub seed: u64,
    /// A write fails before reaching the store: nothing applied, the caller is told so.
    pub error_before_apply: f64,
    /// A write applies, then the answer is lost: the caller gets `OutcomeUnknown`.
    pub error_after_apply: f64,
    /// A write is lost on its way (the connection died before the store took it): nothing
    /// applies, but the caller gets `OutcomeUnknown` and must read back to learn that.
    #[serde(default)]
    pub unknown_without_apply: f64,
    /// A read fails (`Unavailable`).
    pub read_error: f64,
    /// A call is delayed by a latency spike.
    pub latency_spike: f64,
    pub latency_spike_ms_max: u64,
    /// A notification is silently lost.
    pub notification_loss: f64,
}

impl FaultConfig {
    /// No faults at all.
    pub fn none(seed: u64) -> FaultConfig {
        FaultConfig {
            seed,
            error_before_apply: 0.0,
            error_after_apply: 0.0,
            unknown_without_apply: 0.0,
            read_error: 0.0,
            latency_spike: 0.0,
            latency_spike_ms_max: 0,
            notification_loss: 0.0,
        }
    }

    /// Far harsher than production: the simulator's default.
    pub fn harsh(seed: u64) -> FaultConfig {
        FaultConfig {
            seed,
            error_before_apply: 0.05,
            error_after_apply: 0.05,
            unknown_without_apply: 0.03,
            read_error: 0.03,
            latency_spike: 0.02,
            latency_spike_ms_max: 2_000,
            notification_loss: 0.2,
        }
    }
}

/// How many faults of each kind were injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCounts {
    pub errors_before_apply: u64,
    pub errors_after_apply: u64,
    pub unknown_without_apply: u64,
    pub read_errors: u64,
    pub latency_spikes: u64,
    pub notifications_lost: u64,
}

#[derive(Debug, Default)]
struct Counters {
    errors_before_apply: AtomicU64,
    errors_after_apply: AtomicU64,
    unknown_without_apply: AtomicU64,
    read_errors: AtomicU64,
    latency_spikes: AtomicU64,
    notifications_lost: AtomicU64,
}

#[derive(Debug)]
pub struct FaultStore {
    inner: SharedStore,
    config: FaultConfig,
    random: Mutex<ChaCha8Rng>,
    enabled: AtomicBool,
    counters: Counters,
    /// Renewals still to fail on purpose (`fail_next_renewals`), and how long each takes to fail.
    scripted_renewal_failures: AtomicU64,
    scripted_renewal_failure_delay_ms: AtomicU64,
}

/// What to do with one write call.
enum WriteFault {
    None,
    After,
}

impl FaultStore {
    pub fn new(inner: SharedStore, config: FaultConfig) -> FaultStore {
        let random = Mutex::new(ChaCha8Rng::seed_from_u64(config.seed));
        FaultStore {
            inner,
            config,
            random,
            enabled: AtomicBool::new(true),
            counters: Counters::default(),
            scripted_renewal_failures: AtomicU64::new(0),
            scripted_renewal_failure_delay_ms: AtomicU64::new(0),
        }
    }

    /// Makes the next `count` process-lease renewals fail (`Unavailable`, nothing applied), each
    /// after `delay_ms`, as a renewal that times out would. Drawn from no random generator, so a
    /// test can script exactly the failures it needs; seeded faults still apply to other calls.
    pub fn fail_next_renewals(&self, count: u64, delay_ms: u64) {
        self.scripted_renewal_failure_delay_ms.store(delay_ms, Ordering::SeqCst);
        self.scripted_renewal_failures.store(count, Ordering::SeqCst);
    }

    /// Takes one scripted renewal failure, if any is left.
    fn take_scripted_renewal_failure(&self) -> Option<u64> {
        self.scripted_renewal_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
            .ok()
            .map(|_| self.scripted_renewal_failure_delay_ms.load(Ordering::SeqCst))
    }

    /// Turns fault injection on or off (e.g. off for a final audit read).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::SeqCst);
    }

    pub fn counts(&self) -> FaultCounts {
        FaultCounts {
            errors_before_apply: self.counters.errors_before_apply.load(Ordering::Relaxed),
            errors_after_apply: self.counters.errors_after_apply.load(Ordering::Relaxed),
            unknown_without_apply: self.counters.unknown_without_apply.load(Ordering::Relaxed),
            read_errors: self.counters.read_errors.load(Ordering::Relaxed),
            latency_spikes: self.counters.latency_spikes.load(Ordering::Relaxed),
            notifications_lost: self.counters.notifications_lost.load(Ordering::Relaxed),
        }
    }

    pub fn inner(&self) -> &SharedStore {
        &self.inner
    }

    fn draw(&self, probability: f64) -> bool {
        if probability <= 0.0 || !self.enabled.load(Ordering::SeqCst) {
            return false;
        }
        let mut random = self.random.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        random.random_bool(probability.min(1.0))
    }

    async fn maybe_delay(&self) {
        if self.config.latency_spike_ms_max == 0 || !self.draw(self.config.latency_spike) {
            return;
        }
        let delay_ms = {
            let mut random = self.random.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            random.random_range(1..=self.config.latency_spike_ms_max)
        };
        self.counters.latency_spikes.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }

    async fn read_fault(&self) -> Result<(), StoreError> {
        self.maybe_delay().await;
        if self.draw(self.config.read_error) {
            self.counters.read_errors.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::unavailable("injected read fault"));
        }
        Ok(())
    }

    async fn write_fault(&self) -> Result<WriteFault, StoreError> {
        self.maybe_delay().await;
        if self.draw(self.config.error_before_apply) {
            self.counters.errors_before_apply.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::unavailable("injected fault before apply"));
        }
        if self.draw(self.config.unknown_without_apply) {
            self.counters.unknown_without_apply.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::outcome_unknown("injected fault: the request was lost before the store took it"));
        }
        if self.draw(self.config.error_after_apply) {
            return Ok(WriteFault::After);
        }
        Ok(WriteFault::None)
    }

    fn hide_outcome<T>(&self, fault: WriteFault, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match (fault, result) {
            (WriteFault::After, Ok(_)) => {
                self.counters.errors_after_apply.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::outcome_unknown("injected fault after apply: the answer was lost"))
            }
            (WriteFault::None | WriteFault::After, result) => result,
        }
    }
}

#[async_trait]
impl Store for FaultStore {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    fn limits(&self) -> &Limits {
        self.inner.limits()
    }

    async fn now_ms(&self) -> Result<i64, StoreError> {
        self.inner.now_ms().await
    }

    async fn get_many(&self, ids: &[DocId]) -> Result<Vec<Document>, StoreError> {
        self.read_fault().await?;
        self.inner.get_many(ids).await
    }

    async fn list_keys(&self, store: &StoreName, query: &ListQuery) -> Result<KeyPage, StoreError> {
        self.read_fault().await?;
        self.inner.list_keys(store, query).await
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError> {
        let fault = self.write_fault().await?;
        let result = self.inner.commit(commit).await;
        self.hide_outcome(fault, result)
    }

    async fn list_versions(&self, id: &DocId, query: &VersionQuery) -> Result<Vec<VersionInfo>, StoreError> {
        self.read_fault().await?;
        self.inner.list_versions(id, query).await
    }

    async fn get_version(&self, id: &DocId, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        self.read_fault().await?;
        self.inner.get_version(id, version).await
    }

    async fn prune_history(&self) -> Result<u64, StoreError> {
        self.inner.prune_history().await
    }

    async fn prune_history_page(&self, after: Option<DocId>, rows_max: usize) -> Result<super::PrunedPage, StoreError> {
        self.inner.prune_history_page(after, rows_max).await
    }

    async fn renew_holder(&self, holder: &HolderId, ttl_ms: u64) -> Result<HolderLease, StoreError> {
        if let Some(delay_ms) = self.take_scripted_renewal_failure() {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            return Err(StoreError::unavailable("scripted renewal failure (FaultStore::fail_next_renewals)"));
        }
        let fault = self.write_fault().await?;
        let result = self.inner.renew_holder(holder, ttl_ms).await;
        self.hide_outcome(fault, result)
    }

    async fn release_holder(&self, holder: &HolderId) -> Result<(), StoreError> {
        let fault = self.write_fault().await?;
        let result = self.inner.release_holder(holder).await;
        self.hide_outcome(fault, result)
    }

    async fn holder_lease(&self, holder: &HolderId) -> Result<Option<HolderLease>, StoreError> {
        self.read_fault().await?;
        self.inner.holder_lease(holder).await
    }

    async fn notify(&self, notification: Notification) -> Result<(), StoreError> {
        if self.draw(self.config.notification_loss) {
            self.counters.notifications_lost.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.inner.notify(notification).await
    }

    fn subscribe(&self) -> Subscription {
        self.inner.subscribe()
    }

    fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        self.inner.group_commit_stats()
    }

    /// Lookups go to the inner store unfaulted: faults model the commit path, not operators.
    fn operator(&self) -> Option<&dyn super::OperatorStore> {
        self.inner.operator()
    }
}
