//! A game server's link to the shared store: per-call network latency, a pause switch (a frozen
//! process), a kill switch (a crashed process), and the observation of every applied commit for
//! the audit. The store-level faults (errors before and after apply, lost requests, latency
//! spikes, lost notifications) come from hoard's `FaultStore`, stacked above this link:
//! server → `FaultStore` → `SimLink` → shared store.
//!
//! Invariants:
//! - A paused link holds every call before it reaches the store and every answer before it
//!   reaches the server, until resumed: a frozen process neither sends nor hears.
//! - A killed link never answers again (its calls pend forever), so nothing a crashed
//!   incarnation still had in flight can reach the store after the crash.
//! - Latency is drawn from the link's own seeded generator in call order (replayable).
//! - The audit sees each applied commit synchronously after the store answered; on the memory
//!   store that is the store's apply order.
//! - At most one cross-server trade step fault (`step_faults`) is armed on a link (the newest);
//!   it fires at the commit it names, before the commit leaves or after it applied, then is gone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hoard::store::{
    Commit, CommitOutcome, DocId, Document, HolderId, HolderLease, KeyPage, Limits, ListQuery, Notification,
    SharedStore, Store, StoreError, StoreName, Subscription, VersionInfo, VersionQuery, VersionRecord,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Notify;

use crate::audit::Audit;
use crate::step_faults::{StepMoment, StepTrap, TradeStep, TrapSlot};

#[derive(Debug)]
pub struct SimLink {
    id: usize,
    inner: SharedStore,
    audit: Arc<Audit>,
    latency_ms_max: u64,
    random: Mutex<ChaCha8Rng>,
    paused: AtomicBool,
    /// Wakes calls held by a pause. A `Notify` (not a `watch`) because it wakes waiters in a
    /// fixed order; `watch` spreads them over randomly chosen wakers, which would make the
    /// order of the latency draws after a resume differ between runs of one seed.
    resumed: Notify,
    killed: AtomicBool,
    /// The cross-server trade step fault armed on this link, if any.
    trap: TrapSlot,
    /// The link under `hoard serve` (HTTP path): commits are attributed to the game server whose
    /// holder each write names, not to this link.
    attribute_by_holder: bool,
}

impl SimLink {
    pub fn new(id: usize, inner: SharedStore, audit: Arc<Audit>, latency_ms_max: u64, seed: u64) -> SimLink {
        SimLink {
            id,
            inner,
            audit,
            latency_ms_max,
            random: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            paused: AtomicBool::new(false),
            resumed: Notify::new(),
            killed: AtomicBool::new(false),
            trap: TrapSlot::default(),
            attribute_by_holder: false,
        }
    }

    /// The store link of the in-process `hoard serve` of the HTTP path: no latency (the network
    /// faults are between the game servers and the service), never paused or killed, and every
    /// applied commit attributed to the game server whose holder it names.
    pub fn for_service(id: usize, inner: SharedStore, audit: Arc<Audit>) -> SimLink {
        SimLink { attribute_by_holder: true, ..SimLink::new(id, inner, audit, 0, 0) }
    }

    pub fn id(&self) -> usize {
        self.id
    }

    /// Freezes the process's traffic: calls wait until `resume`.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.resumed.notify_waiters();
    }

    /// The process crashed: nothing it sends arrives any more.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        // Wake waiters so they notice the kill and pend forever instead.
        self.resume();
    }

    /// Arms `trap` (see `TrapSlot::arm`); answers whether it replaced one that had not sprung.
    pub fn arm(&self, trap: StepTrap) -> bool {
        self.trap.arm(trap)
    }

    /// Takes off the armed trap, if any.
    pub fn disarm(&self) {
        self.trap.disarm();
    }

    /// The armed trap, taken off the link, when `commit` is the commit it hits.
    fn sprung_by(&self, commit: &Commit) -> Option<(StepTrap, TradeStep)> {
        self.trap.sprung_by(|trade_id| TradeStep::of(commit, trade_id))
    }

    /// Makes the trap's fault happen to this link's server (a crash kills this link, a freeze
    /// pauses it).
    fn spring(&self, trap: &StepTrap, step: TradeStep) {
        (trap.fire)(trap.fault, trap.moment, step);
    }

    async fn travel(&self) {
        if self.latency_ms_max > 0 {
            let delay_ms = {
                let mut random = self.random.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                random.random_range(0..=self.latency_ms_max)
            };
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
        }
        loop {
            // Registered before the check, so a resume between the two is not missed.
            let resumed = self.resumed.notified();
            if !self.paused.load(Ordering::SeqCst) {
                break;
            }
            resumed.await;
        }
        if self.killed.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl Store for SimLink {
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
        self.travel().await;
        let result = self.inner.get_many(ids).await;
        self.travel().await;
        result
    }

    async fn list_keys(&self, store: &StoreName, query: &ListQuery) -> Result<KeyPage, StoreError> {
        self.travel().await;
        let result = self.inner.list_keys(store, query).await;
        self.travel().await;
        result
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError> {
        self.travel().await;
        let sprung = self.sprung_by(&commit);
        if let Some((trap, step)) = &sprung
            && trap.moment == StepMoment::Before
        {
            self.spring(trap, *step);
            // A crash killed the link (this pends for ever); a freeze holds the commit here.
            self.travel().await;
        }
        let observed = commit.clone();
        let result = self.inner.commit(commit).await;
        if let Ok(outcome) = &result {
            if self.attribute_by_holder {
                self.audit.observe_commit_by_holder(&observed, outcome);
            } else {
                self.audit.observe_commit(self.id, &observed, outcome);
            }
        }
        if let Some((trap, step)) = &sprung
            && trap.moment == StepMoment::After
        {
            self.spring(trap, *step);
        }
        self.travel().await;
        result
    }

    async fn list_versions(&self, id: &DocId, query: &VersionQuery) -> Result<Vec<VersionInfo>, StoreError> {
        self.travel().await;
        let result = self.inner.list_versions(id, query).await;
        self.travel().await;
        result
    }

    async fn get_version(&self, id: &DocId, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        self.travel().await;
        let result = self.inner.get_version(id, version).await;
        self.travel().await;
        result
    }

    async fn prune_history(&self) -> Result<u64, StoreError> {
        self.inner.prune_history().await
    }

    async fn renew_holder(&self, holder: &HolderId, ttl_ms: u64) -> Result<HolderLease, StoreError> {
        self.travel().await;
        let result = self.inner.renew_holder(holder, ttl_ms).await;
        self.travel().await;
        result
    }

    async fn release_holder(&self, holder: &HolderId) -> Result<(), StoreError> {
        self.travel().await;
        let result = self.inner.release_holder(holder).await;
        self.travel().await;
        result
    }

    async fn holder_lease(&self, holder: &HolderId) -> Result<Option<HolderLease>, StoreError> {
        self.travel().await;
        let result = self.inner.holder_lease(holder).await;
        self.travel().await;
        result
    }

    async fn notify(&self, notification: Notification) -> Result<(), StoreError> {
        self.travel().await;
        self.inner.notify(notification).await
    }

    fn subscribe(&self) -> Subscription {
        self.inner.subscribe()
    }
}
