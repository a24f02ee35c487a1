//! The cross-server trade controls: the engine, unchanged, with one step of the cross-server
//! trade protocol replaced by a broken one written here (the engine is never weakened):
//!
//! - `record-failure-as-abort` — the seed's flaw: a deciding prepare (the commit that writes the
//!   record `committed`) answered with an error is taken as "not committed", and the party gets
//!   back in memory what it escrowed, although the write may have applied (and the engine,
//!   reading back, found it did). The next save makes the refund durable: a dupe. A `TapStore`
//!   between the engine and its faulty link tells the server which deciding writes were
//!   answered with an error.
//!   Over HTTP (`http::cross`), hoard's client makes the same refund when a prepare's first
//!   attempt went unanswered (`refund_given`).
//! - `early-escrow-release` — a receiver takes what the other party escrowed for it as soon as
//!   the escrow is there, before the trade is decided: one fenced commit that deletes the escrow
//!   and credits the receiver (the engine's settle, run too early).
//!
//! Invariant: these are wrong on purpose and only here; nothing in them is used by hoard.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use hoard::engine::trade::{Escrow, TRADE_RECORD_STORE, escrow_id};
use hoard::engine::{CrossTrade, Engine, Session};
use hoard::store::{
    Commit, CommitOutcome, DocId, Document, HolderId, HolderLease, KeyPage, Limits, ListQuery, Notification,
    SharedStore, Store, StoreError, StoreName, Subscription, ValueOp, VersionInfo, VersionQuery, VersionRecord,
};
use serde_json::Value;

use crate::model::SimProfile;

/// Which step of the cross-server trade protocol a control breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrossFlaw {
    RecordFailureAsAbort,
    EarlyEscrowRelease,
}

/// A store that remembers the trades whose deciding record write was answered with an error
/// (whatever the store did with it). Everything else passes through.
#[derive(Debug)]
pub struct TapStore {
    inner: SharedStore,
    failed_decisions: Mutex<BTreeSet<String>>,
}

impl TapStore {
    pub fn new(inner: SharedStore) -> TapStore {
        TapStore { inner, failed_decisions: Mutex::new(BTreeSet::new()) }
    }

    /// Whether the deciding write of `trade_id` was answered with an error (forgets it).
    pub fn take_failed_decision(&self, trade_id: &str) -> bool {
        self.failed_decisions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(trade_id)
    }

    /// The trade a commit decides `committed`, if it does.
    fn deciding(commit: &Commit) -> Option<String> {
        commit.writes.iter().find_map(|write| {
            if write.id.store.as_str() != TRADE_RECORD_STORE {
                return None;
            }
            let ValueOp::Put(value) = &write.value else { return None };
            let cross = value.get("timeout_ms").is_some_and(|t| !t.is_null());
            (cross && value.get("status").and_then(Value::as_str) == Some(hoard::engine::trade::STATUS_COMMITTED))
                .then(|| write.id.key.to_string())
        })
    }
}

#[async_trait]
impl Store for TapStore {
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
        self.inner.get_many(ids).await
    }
    async fn list_keys(&self, store: &StoreName, query: &ListQuery) -> Result<KeyPage, StoreError> {
        self.inner.list_keys(store, query).await
    }
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError> {
        let deciding = TapStore::deciding(&commit);
        let result = self.inner.commit(commit).await;
        if let (Some(trade_id), Err(_)) = (deciding, &result) {
            self.failed_decisions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(trade_id);
        }
        result
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

/// The `record-failure-as-abort` refund: what `session`'s party gave in `trade` goes back into
/// its profile, in memory (saved by the next save), as taken from `before` (its profile read
/// before its part). Returns whether anything was refunded.
pub fn refund_in_memory(session: &Session<SimProfile>, trade: &CrossTrade, before: &SimProfile) -> bool {
    let Some(me) = trade.parties.iter().position(|party| party == session.id()) else { return false };
    if !trade.legs.iter().any(|leg| leg.from == me) {
        return false;
    }
    session.update(|profile| refund_given(profile, me, trade, before)).is_ok()
}

/// The refund itself, on a profile: what party `me` gave in `trade` goes back (item data as in
/// `before`), and the trade is no longer pending. Shared by the in-process and the HTTP control.
pub fn refund_given(profile: &mut SimProfile, me: usize, trade: &CrossTrade, before: &SimProfile) {
    for leg in trade.legs.iter().filter(|leg| leg.from == me) {
        for (currency, amount) in &leg.currencies {
            *profile.holdings.currencies.entry(currency.clone()).or_insert(0) += amount;
        }
        for item in &leg.items {
            let data = before.holdings.items.get(item).cloned().unwrap_or(Value::Null);
            profile.holdings.items.insert(item.clone(), data);
        }
    }
    // As far as this server knows, the trade never happened.
    profile.holdings.pending_trades.remove(&trade.id);
}

/// The `early-escrow-release` step: takes into `session`'s profile every escrow of `trade`
/// that is already there for it, deleting it, in one fenced commit, without looking at the
/// record. Returns how many escrows it took.
pub async fn take_escrows_early(engine: &Engine, session: &Session<SimProfile>, trade: &CrossTrade) -> usize {
    let Some(me) = trade.parties.iter().position(|party| party == session.id()) else { return 0 };
    let ids: Vec<DocId> = trade
        .legs
        .iter()
        .enumerate()
        .filter(|(_, leg)| leg.to == me)
        .filter_map(|(index, _)| escrow_id(&trade.id, index).ok())
        .collect();
    if ids.is_empty() {
        return 0;
    }
    let taken = Arc::new(Mutex::new(0));
    let counted = taken.clone();
    let result = engine
        .transact(&[session], &ids, move |context| {
            let mut count = 0;
            let profile = context.profiles.first_mut().ok_or("no profile")?;
            for doc in &mut context.docs {
                let Some(value) = doc.take() else { continue };
                let escrow: Escrow = serde_json::from_value(value).map_err(|e| e.to_string())?;
                for (currency, amount) in &escrow.currencies {
                    *profile.holdings.currencies.entry(currency.clone()).or_insert(0) += amount;
                }
                for (item, data) in escrow.items {
                    profile.holdings.items.insert(item, data);
                }
                count += 1;
            }
            if count == 0 {
                return Err("nothing escrowed yet".to_string());
            }
            *counted.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = count;
            Ok(())
        })
        .await;
    let count = *taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if result.is_ok() { count } else { 0 }
}
