//! The in-memory store: the reference backend for unit tests and the simulator.
//!
//! Invariant: same semantics as the durable backends (it runs the same conformance suite and the
//! same `apply` logic), but nothing survives the process. Never use it where a test claims
//! database behaviour. Its clock follows tokio's, so paused-time tests and the simulator control
//! lease expiry.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::apply::{Current, apply_commit};
use super::history::{RowMeta, doomed_rows};
use super::limits::{HistoryPolicy, Limits};
use super::memory_index::MemoryIndexes;
use super::types::{
    CommitOutcome, DocId, Document, HolderId, HolderLease, KeyPage, ListQuery, Notification, StoreName, VersionInfo,
    VersionQuery, VersionRecord,
};
use super::validate::{json_bytes, validate_commit, validate_doc_id, validate_notification};
use super::{Commit, NOTIFICATION_CHANNEL_CAPACITY, PrunedPage, Store, StoreError, Subscription};

/// Where the memory store's clock comes from.
#[derive(Clone, Debug)]
pub enum MemoryClock {
    /// `start_ms` plus the tokio time elapsed since the store was made (follows paused time).
    Tokio { start_ms: i64, started: tokio::time::Instant },
    /// A clock the test sets by hand.
    Manual(Arc<std::sync::atomic::AtomicI64>),
}

impl MemoryClock {
    fn now_ms(&self) -> i64 {
        match self {
            MemoryClock::Tokio { start_ms, started } => {
                let elapsed_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
                start_ms.saturating_add(elapsed_ms)
            }
            MemoryClock::Manual(now_ms) => now_ms.load(std::sync::atomic::Ordering::SeqCst),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) docs: BTreeMap<DocId, Document>,
    pub(super) history: BTreeMap<DocId, BTreeMap<u64, VersionRecord>>,
    holders: HashMap<HolderId, i64>,
    /// Index declarations and rows (`memory_index`), changed under the same lock as `docs`.
    pub(super) indexes: MemoryIndexes,
}

#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    limits: Limits,
    history_policy: HistoryPolicy,
    clock: MemoryClock,
    notifications: broadcast::Sender<Notification>,
}

/// A fixed epoch start for the tokio clock, so simulated runs are reproducible.
pub const MEMORY_CLOCK_START_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

impl MemoryStore {
    /// A memory store with default limits and history policy, and a tokio-driven clock.
    pub fn new() -> MemoryStore {
        let clock = MemoryClock::Tokio { start_ms: MEMORY_CLOCK_START_MS, started: tokio::time::Instant::now() };
        MemoryStore::with_options(Limits::default(), HistoryPolicy::default(), clock)
    }

    pub fn with_options(limits: Limits, history_policy: HistoryPolicy, clock: MemoryClock) -> MemoryStore {
        debug_assert!(history_policy.check().is_ok(), "a memory store's history policy is checked by its test");
        let (notifications, _) = broadcast::channel(NOTIFICATION_CHANNEL_CAPACITY);
        MemoryStore { state: Mutex::new(State::default()), limits, history_policy, clock, notifications }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied commit: commits are computed
        // first and inserted after, so the state is usable even if poisoned.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

fn current(state: &State, id: &DocId) -> Current {
    let doc = state.docs.get(id).cloned().unwrap_or_else(|| Document::absent(id.clone()));
    let holder_expires_at_ms = doc.lease.holder.as_ref().and_then(|holder| state.holders.get(holder).copied());
    Current { doc, holder_expires_at_ms }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }

    async fn now_ms(&self) -> Result<i64, StoreError> {
        Ok(self.clock.now_ms())
    }

    async fn get_many(&self, ids: &[DocId]) -> Result<Vec<Document>, StoreError> {
        for id in ids {
            validate_doc_id(id, &self.limits)?;
        }
        let state = self.lock();
        Ok(ids.iter().map(|id| current(&state, id).doc).collect())
    }

    async fn list_keys(&self, store: &StoreName, query: &ListQuery) -> Result<KeyPage, StoreError> {
        let limit = self.limits.page_size(query.limit);
        let state = self.lock();
        let mut keys = Vec::with_capacity(limit);
        let mut more = false;
        for (id, doc) in &state.docs {
            if &id.store != store || !doc.exists() || !id.key.as_str().starts_with(&query.prefix) {
                continue;
            }
            if let Some(after) = &query.after
                && id.key.as_str() <= after.as_str()
            {
                continue;
            }
            if keys.len() == limit {
                more = true;
                break;
            }
            keys.push(id.key.clone());
        }
        let next_after = if more { keys.last().cloned() } else { None };
        Ok(KeyPage { keys, next_after })
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError> {
        validate_commit(&commit, &self.limits)?;
        let now_ms = self.clock.now_ms();
        let mut state = self.lock();
        let currents: Vec<Current> = commit.writes.iter().map(|write| current(&state, &write.id)).collect();
        let (nexts, applied) = match apply_commit(&currents, &commit, now_ms, &self.limits) {
            Ok(result) => result,
            Err(conflict) => return Ok(CommitOutcome::Conflict(conflict)),
        };
        for next in nexts {
            if next.new_version {
                let doc = &next.doc;
                let record = VersionRecord {
                    info: VersionInfo {
                        version: doc.version,
                        written_at_ms: now_ms,
                        deleted: doc.value.is_none(),
                        value_bytes: doc.value.as_ref().map_or(0, |value| json_bytes(value) as u64),
                        commit_id: commit.id,
                    },
                    value: doc.value.clone(),
                    attributes: doc.attributes.clone(),
                    user_ids: doc.user_ids.clone(),
                };
                state.history.entry(doc.id.clone()).or_default().insert(doc.version, record);
                state.indexes.reindex(&next.doc);
            }
            state.docs.insert(next.doc.id.clone(), next.doc);
        }
        Ok(CommitOutcome::Committed { commit_id: commit.id, at_ms: now_ms, applied })
    }

    async fn list_versions(&self, id: &DocId, query: &VersionQuery) -> Result<Vec<VersionInfo>, StoreError> {
        validate_doc_id(id, &self.limits)?;
        let limit = self.limits.page_size(query.limit);
        let state = self.lock();
        let Some(versions) = state.history.get(id) else { return Ok(Vec::new()) };
        let before = query.before_version.unwrap_or(u64::MAX);
        Ok(versions.range(..before).rev().take(limit).map(|(_, record)| record.info.clone()).collect())
    }

    async fn get_version(&self, id: &DocId, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        validate_doc_id(id, &self.limits)?;
        let state = self.lock();
        Ok(state.history.get(id).and_then(|versions| versions.get(&version)).cloned())
    }

    async fn prune_history(&self) -> Result<u64, StoreError> {
        super::prune_every_page(self).await
    }

    async fn prune_history_page(&self, after: Option<DocId>, rows_max: usize) -> Result<PrunedPage, StoreError> {
        // The durable backends' rule (`history::doomed_rows`) over whole values: this store's
        // history map also holds the latest version, which is the successor of the one before it
        // and is never pruned.
        let now_ms = self.clock.now_ms();
        let mut state = self.lock();
        let mut page = PrunedPage::default();
        let range = match &after {
            Some(after) => state.history.range_mut((Bound::Excluded(after.clone()), Bound::Unbounded)),
            None => state.history.range_mut(..),
        };
        for (id, versions) in range {
            if page.rows_examined as usize >= rows_max {
                return Ok(page);
            }
            page.rows_examined += versions.len() as u64;
            page.next_after = Some(id.clone());
            let Some((_, latest)) = versions.last_key_value() else { continue };
            let current_written_at_ms = latest.info.written_at_ms;
            let superseded: Vec<RowMeta> = versions
                .values()
                .take(versions.len() - 1)
                .map(|record| RowMeta { version: record.info.version, written_at_ms: record.info.written_at_ms })
                .collect();
            let doomed = doomed_rows(&superseded, current_written_at_ms, now_ms, &self.history_policy);
            for (row, gone) in superseded.iter().zip(doomed) {
                if gone {
                    versions.remove(&row.version);
                    page.pruned += 1;
                }
            }
        }
        page.next_after = None;
        Ok(page)
    }

    async fn renew_holder(&self, holder: &HolderId, ttl_ms: u64) -> Result<HolderLease, StoreError> {
        let ttl_ms = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let expires_at_ms = self.clock.now_ms().saturating_add(ttl_ms);
        self.lock().holders.insert(holder.clone(), expires_at_ms);
        Ok(HolderLease { holder: holder.clone(), expires_at_ms })
    }

    async fn release_holder(&self, holder: &HolderId) -> Result<(), StoreError> {
        self.lock().holders.remove(holder);
        Ok(())
    }

    async fn holder_lease(&self, holder: &HolderId) -> Result<Option<HolderLease>, StoreError> {
        let state = self.lock();
        Ok(state
            .holders
            .get(holder)
            .map(|expires_at_ms| HolderLease { holder: holder.clone(), expires_at_ms: *expires_at_ms }))
    }

    async fn notify(&self, notification: Notification) -> Result<(), StoreError> {
        validate_notification(&notification, &self.limits)?;
        // No receiver is not an error: notifications are best-effort wake-ups.
        let _ = self.notifications.send(notification);
        Ok(())
    }

    fn subscribe(&self) -> Subscription {
        self.notifications.subscribe()
    }

    fn operator(&self) -> Option<&dyn super::OperatorStore> {
        Some(self)
    }
}
