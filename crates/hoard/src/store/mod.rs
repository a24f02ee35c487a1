//! The store: durable documents with versions, leases, inboxes and history, behind one trait.
//!
//! Invariant: this module tree is the only place in hoard that knows SQL. Everything above it
//! (the engine, the server, the CLI) speaks `Store`, and every backend gives the same answers to
//! the same calls: the conformance suite in `tests/it/store_conformance.rs` runs against each.
//! Commit semantics live in `apply`, limits in `limits` and `validate`; backends only move rows.

pub mod apply;
pub mod delta;
pub mod encoded;
pub mod error;
/// The fault-injecting wrapper: tests and the simulator only (feature `testing`).
#[cfg(feature = "testing")]
pub mod fault;
pub mod history;
pub mod index;
pub mod limits;
pub mod memory;
mod memory_index;
mod open;
pub mod operator;
#[cfg(feature = "postgres")]
pub mod postgres;
mod postgres_choices;
pub mod pruner;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod types;
pub mod validate;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use error::{InvalidInput, RawText, StoreError, Unreadable};
pub use limits::{HistoryPolicy, Limits};
pub use open::{StoreOptions, is_postgres_location, open_store};
pub use operator::OperatorStore;
pub use postgres_choices::{Pooler, PostgresProfile};
pub use types::*;

/// A stream of notifications from every process sharing the store. Lossy by design: a slow
/// receiver skips notifications (`RecvError::Lagged`) rather than holding the store up.
pub type Subscription = broadcast::Receiver<Notification>;

/// Capacity of each process's notification fan-out channel.
pub const NOTIFICATION_CHANNEL_CAPACITY: usize = 4_096;

/// The store every part of hoard builds on. See the module docs of `types` for the vocabulary.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// A short name of the backend ("memory", "sqlite", "postgres", ...), for logs and reports.
    fn backend_name(&self) -> &'static str;

    fn limits(&self) -> &Limits;

    /// The store's clock in milliseconds since the Unix epoch. Lease expiry is judged by this
    /// clock only, never by a writer's.
    async fn now_ms(&self) -> Result<i64, StoreError>;

    /// Reads keys with their versions, leases and inboxes. A key never written reads as
    /// `Document::absent`. The result is in the order of `ids`.
    async fn get_many(&self, ids: &[DocId]) -> Result<Vec<Document>, StoreError>;

    /// Lists keys that hold a value, in byte order, with a prefix, after a cursor.
    async fn list_keys(&self, store: &StoreName, query: &ListQuery) -> Result<KeyPage, StoreError>;

    /// Applies every write of the commit or none. A failed condition is `Ok(Conflict)`.
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError>;

    /// Lists a key's versions, newest first.
    async fn list_versions(&self, id: &DocId, query: &VersionQuery) -> Result<Vec<VersionInfo>, StoreError>;

    /// Reads one past (or the current) version.
    async fn get_version(&self, id: &DocId, version: u64) -> Result<Option<VersionRecord>, StoreError>;

    /// Removes history entries the store's `HistoryPolicy` no longer keeps; returns how many.
    async fn prune_history(&self) -> Result<u64, StoreError>;

    /// One bounded step of `prune_history`: prunes whole keys after `after`, in (store, key)
    /// byte order, until at least `rows_max` history rows were examined or the last key was
    /// done (`next_after` is then `None`). The background pruner (`pruner`) calls this.
    ///
    /// The default prunes nothing and reports the end: a store that cannot bound the work here
    /// (a remote store) leaves pruning to the process next to its database.
    async fn prune_history_page(&self, after: Option<DocId>, rows_max: usize) -> Result<PrunedPage, StoreError> {
        let _ = (after, rows_max);
        Ok(PrunedPage::default())
    }

    /// Creates or extends a holder's process lease to `ttl_ms` from the store's now.
    async fn renew_holder(&self, holder: &HolderId, ttl_ms: u64) -> Result<HolderLease, StoreError>;

    /// Ends a holder's process lease at once: every key it names becomes free to take.
    async fn release_holder(&self, holder: &HolderId) -> Result<(), StoreError>;

    /// Reads a holder's process lease.
    async fn holder_lease(&self, holder: &HolderId) -> Result<Option<HolderLease>, StoreError>;

    /// Sends a best-effort notification to every subscriber, in every process.
    async fn notify(&self, notification: Notification) -> Result<(), StoreError>;

    /// Subscribes to notifications sent after this call.
    fn subscribe(&self) -> Subscription;

    /// How commits were grouped into database transactions, for backends that group-commit.
    fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        None
    }

    /// The operators' lookups and purges (`operator::OperatorStore`), for backends that keep
    /// index rows: memory, SQLite and PostgreSQL. A remote store answers `None`: operators ask
    /// the `hoard serve` in front of the database instead.
    fn operator(&self) -> Option<&dyn OperatorStore> {
        None
    }
}

/// Counters of the group-commit write path: `commits_total / transactions_total` is the average
/// number of commits that shared one database transaction (and one fsync).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupCommitStats {
    /// Commits that reached a database transaction (committed or conflicted).
    pub commits_total: u64,
    /// Database transactions run for commits (including a batch whose commits all conflicted).
    pub transactions_total: u64,
    /// The most commits that shared one transaction.
    pub largest_batch: u64,
}

/// What one `Store::prune_history_page` step did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PrunedPage {
    /// Versions removed.
    pub pruned: u64,
    /// History rows looked at.
    pub rows_examined: u64,
    /// The last key examined, where the next step starts; `None` when the history's end was
    /// reached.
    pub next_after: Option<DocId>,
}

/// A shared handle to any store.
pub type SharedStore = Arc<dyn Store>;

/// Reads one key.
pub async fn get(store: &dyn Store, id: &DocId) -> Result<Document, StoreError> {
    let mut docs = store.get_many(std::slice::from_ref(id)).await?;
    docs.pop().ok_or_else(|| StoreError::corrupt("store returned no document for a read of one key"))
}

/// Writes a past version's value, attributes and user ids as a new version, on the condition
/// given (e.g. `LeaseFree`, so a held key is not rolled back under its session).
pub async fn restore_version(
    store: &dyn Store,
    id: &DocId,
    version: u64,
    condition: Condition,
) -> Result<CommitOutcome, StoreError> {
    let record = store
        .get_version(id, version)
        .await?
        .ok_or_else(|| InvalidInput::NoSuchVersion { key: id.to_string(), version })?;
    let value = match record.value {
        Some(value) => ValueOp::Put(value),
        None => ValueOp::Delete,
    };
    let write =
        Write::new(id.clone()).when(condition).value(value).attributes(record.attributes).user_ids(record.user_ids);
    store.commit(Commit::single(write)).await
}

/// Frees a key a session still holds (an operator's force-release): releases it on the condition
/// of the holder and epoch just read, so that holder is fenced out and can never write it again.
/// Returns the holder fenced out (`None`: nobody held it), or the conflict when the key changed
/// hands meanwhile (run it again).
pub async fn force_release(store: &dyn Store, id: &DocId) -> Result<Result<Option<HolderId>, Conflict>, StoreError> {
    let document = get(store, id).await?;
    let Some(holder) = document.lease.holder.clone() else { return Ok(Ok(None)) };
    let condition = Condition::Lease { holder: holder.clone(), epoch: document.lease.epoch };
    let write = Write::new(id.clone()).when(condition).lease(LeaseOp::Release);
    match store.commit(Commit::single(write)).await? {
        CommitOutcome::Committed { .. } => Ok(Ok(Some(holder))),
        CommitOutcome::Conflict(conflict) => Ok(Err(conflict)),
    }
}

/// `Store::prune_history` for a store that pages: every page, from the first key to the last.
pub(crate) async fn prune_every_page(store: &dyn Store) -> Result<u64, StoreError> {
    let mut pruned_total = 0u64;
    let mut after = None;
    loop {
        let page = store.prune_history_page(after, usize::MAX).await?;
        pruned_total = pruned_total.saturating_add(page.pruned);
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(pruned_total),
        }
    }
}

/// How far back `resolve_unknown_commit` looks in a key's history for the commit.
pub const RESOLVE_HISTORY_VERSIONS_MAX: usize = 1_000;

/// Finds out whether a commit whose outcome was unknown applied, by reading back.
///
/// Returns `Some(true)` when it applied, `Some(false)` when it did not, and `None` when the
/// commit leaves no trace that can be told apart (it changes no version and acquires no lease).
/// A commit is atomic, so the first write that leaves a trace decides for all of them.
pub async fn resolve_unknown_commit(store: &dyn Store, commit: &Commit) -> Result<Option<bool>, StoreError> {
    for write in &commit.writes {
        if write.changes_version() {
            let doc = get(store, &write.id).await?;
            if doc.last_commit_id == Some(commit.id) {
                return Ok(Some(true));
            }
            let mut before_version = None;
            let mut scanned = 0;
            while scanned < RESOLVE_HISTORY_VERSIONS_MAX {
                let query = VersionQuery { before_version, limit: store.limits().page_size_max };
                let page = store.list_versions(&write.id, &query).await?;
                let Some(last) = page.last() else { break };
                if page.iter().any(|info| info.commit_id == commit.id) {
                    return Ok(Some(true));
                }
                scanned += page.len();
                before_version = Some(last.version);
            }
            return Ok(Some(false));
        }
        if let LeaseOp::Acquire(holder) = &write.lease {
            let doc = get(store, &write.id).await?;
            // Holder ids are unique per process incarnation, and a holder acquires a key once per
            // session: if the key names it, this acquisition (or a later one of its own) applied.
            return Ok(Some(doc.lease.holder.as_ref() == Some(holder)));
        }
    }
    Ok(None)
}
