//! Live operations over any store with an `OperatorStore`: the audit log, a player's trades and
//! receipts, version diffs (`diff`), erasure (`erase`), the operator grant message games apply in
//! their inbox handlers (`grant`), and the view of cross-server trades in flight or stuck
//! (`trades`). Used by `hoard serve`'s operator routes and the CLI.
//!
//! Invariants:
//! - The audit log (`hoard.audit`) and the erasure tombstones (`hoard.erasures`) are documents
//!   written with `Condition::Absent` under time-ordered ids (UUIDv7), so through hoard's API an
//!   entry is only ever appended, and listing keys in byte order lists them in time order.
//! - Neither holds player data: an audit entry names the key, the action and the versions; a
//!   tombstone names the user id, the stores, the counts, when and by whom.

pub mod diff;
pub mod erase;
pub mod grant;
pub mod trades;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::index::{IndexDecl, IndexKind};
use crate::store::{
    Commit, CommitOutcome, Condition, DocId, Key, ListQuery, OperatorStore, Store, StoreError, StoreName, Write,
};

/// The operators' audit log: one document per action.
pub const AUDIT_STORE: &str = "hoard.audit";
/// Erasure tombstones: what was erased, when and by whom, never the data.
pub const ERASURE_STORE: &str = "hoard.erasures";
/// The receipts index `erase` and `receipts_of` use (declared on `hoard.receipts` on first use).
pub const RECEIPTS_BY_PLAYER_INDEX: &str = "player";
/// Longest free-text field (action name, detail) an audit entry keeps.
pub const AUDIT_TEXT_BYTES_MAX: usize = 512;

/// One operator action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The API key (or CLI user) that acted.
    pub actor: String,
    /// What it did: `rollback`, `restore_paths`, `grant`, `free_session`, `erase`, …
    pub action: String,
    /// The document acted on, if one.
    pub target: Option<DocId>,
    pub version_before: Option<u64>,
    pub version_after: Option<u64>,
    /// A short description (never a profile value).
    pub detail: String,
    /// Filled in from the store's clock when appended.
    #[serde(default)]
    pub at_ms: i64,
}

fn store_name(name: &str) -> StoreName {
    StoreName::new(name).expect("hoard's internal store names are valid")
}

fn clip(text: &str) -> String {
    let mut end = text.len().min(AUDIT_TEXT_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Appends an entry to the audit log; returns its id.
pub async fn append_audit(store: &dyn Store, mut entry: AuditEntry) -> Result<Key, StoreError> {
    entry.at_ms = store.now_ms().await?;
    entry.action = clip(&entry.action);
    entry.detail = clip(&entry.detail);
    let key = Key::new(uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid key");
    let value = serde_json::to_value(&entry).map_err(|error| StoreError::corrupt(error.to_string()))?;
    let write = Write::put(DocId::new(store_name(AUDIT_STORE), key.clone()), value).when(Condition::Absent);
    match store.commit(Commit::single(write)).await? {
        CommitOutcome::Committed { .. } => Ok(key),
        CommitOutcome::Conflict(conflict) => Err(StoreError::corrupt(format!("audit id collided: {conflict}"))),
    }
}

/// A page of audit entries, oldest first, after `after`.
pub async fn list_audit(
    store: &dyn Store,
    after: Option<Key>,
    limit: usize,
) -> Result<(Vec<(Key, AuditEntry)>, Option<Key>), StoreError> {
    read_log(store, AUDIT_STORE, after, limit).await
}

async fn read_log<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    name: &str,
    after: Option<Key>,
    limit: usize,
) -> Result<(Vec<(Key, T)>, Option<Key>), StoreError> {
    let log = store_name(name);
    let page = store.list_keys(&log, &ListQuery { prefix: String::new(), after, limit }).await?;
    let ids: Vec<DocId> = page.keys.iter().map(|key| DocId::new(log.clone(), key.clone())).collect();
    let docs = store.get_many(&ids).await?;
    let mut entries = Vec::with_capacity(docs.len());
    for doc in docs {
        let Some(value) = doc.value else { continue };
        let entry = serde_json::from_value(value)
            .map_err(|error| StoreError::corrupt(format!("{} is not a log entry: {error}", doc.id)))?;
        entries.push((doc.id.key, entry));
    }
    Ok((entries, page.next_after))
}

/// The operator side of a store, or a clear error for one without it (a remote store).
pub fn operator_of(store: &dyn Store) -> Result<&dyn OperatorStore, StoreError> {
    store.operator().ok_or_else(|| {
        StoreError::unavailable(format!(
            "the {} store keeps no operator indexes; run this against the database (or the hoard serve in front of it)",
            store.backend_name()
        ))
    })
}

/// A player's trade ids, from the trade log (oldest id first), after `after`.
pub async fn trades_of(
    store: &dyn Store,
    player: &DocId,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let log = store_name(crate::engine::trade::TRADE_LOG_STORE);
    let prefix = format!("{}/{}/", player.store, player.key);
    let after = after.map(|trade_id| Key::new(format!("{prefix}{trade_id}"))).transpose()?;
    let page = store.list_keys(&log, &ListQuery { prefix: prefix.clone(), after, limit }).await?;
    Ok(page.keys.iter().filter_map(|key| key.as_str().strip_prefix(&prefix).map(str::to_string)).collect())
}

/// Declares the receipts-by-player index if it is missing (fills it from every receipt once).
pub async fn ensure_receipts_index(operator: &dyn OperatorStore) -> Result<(), StoreError> {
    let decl = IndexDecl {
        store: store_name(crate::engine::receipt::RECEIPT_STORE),
        name: RECEIPTS_BY_PLAYER_INDEX.to_string(),
        kind: IndexKind::Members,
        path: "/player/key".to_string(),
    };
    operator.declare_index(decl).await.map(|_| ())
}

/// A player's receipt records (`hoard.receipts` documents naming the player), by key.
pub async fn receipts_of(
    store: &dyn Store,
    player: &DocId,
    after: Option<&Key>,
    limit: usize,
) -> Result<Vec<(Key, Value)>, StoreError> {
    let operator = operator_of(store)?;
    ensure_receipts_index(operator).await?;
    let receipts = store_name(crate::engine::receipt::RECEIPT_STORE);
    let keys = operator.keys_by_member(&receipts, RECEIPTS_BY_PLAYER_INDEX, player.key.as_str(), after, limit).await?;
    let ids: Vec<DocId> = keys.iter().map(|key| DocId::new(receipts.clone(), key.clone())).collect();
    let docs = store.get_many(&ids).await?;
    Ok(docs
        .into_iter()
        .filter_map(|doc| {
            let value = doc.value?;
            // The index holds the player's key; the record also names its store.
            let same_store = value.pointer("/player/store").and_then(Value::as_str) == Some(player.store.as_str());
            same_store.then_some((doc.id.key, value))
        })
        .collect())
}
