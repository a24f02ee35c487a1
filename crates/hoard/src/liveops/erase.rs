//! Right to erasure: every key carrying a user id, with its history, index entries, trade log
//! entries, quarantine records and the payloads of its trade records and receipts, purged; a
//! tombstone kept.
//!
//! Invariants:
//! - Each document is first changed by an ordinary commit (value deleted or redacted, attributes
//!   and user ids emptied, the lease released so a session still holding the key is fenced out
//!   and can never write the data back, the inbox acknowledged), so the backends drop its index
//!   rows in that commit; then every superseded version of it is purged. The same holds for the
//!   trade log entries and the quarantine records of the erased keys (deleted) and for the trade
//!   records and receipts naming them (redacted).
//! - A key whose stored value does not read (quarantined) is erased all the same: it is
//!   scrubbed without reading the value, as an admin's repair writes.
//! - Before anything is scrubbed, the erasure writes its plan: the ids (never the data) of every
//!   document it will scrub, in `hoard.erasure_plans` under the user id. A scrub empties the user
//!   ids a later run would look keys up by, so a run that crashed after scrubbing and before
//!   purging history could not find those keys again; the plan finds them. The plan is deleted
//!   (with its history) only after the tombstone is written.
//! - Erasing again is harmless: it finds what is left (nothing, once done) and purges it. So a
//!   crash half-way is repaired by running it again, which the webhook's durable queue does.
//! - The tombstone names the user id, the stores, counts, when and by whom: never a value.

use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use super::{ERASURE_STORE, operator_of, receipts_of, store_name, trades_of};
use crate::engine::QUARANTINE_STORE;
use crate::engine::trade::{TRADE_LOG_STORE, TRADE_RECORD_STORE};
use crate::store::{
    Commit, CommitOutcome, Condition, DocId, Document, InvalidInput, Key, LeaseOp, ListQuery, Store, StoreError,
    ValueOp, Write, get,
};

/// Keys carrying one user id that one erasure handles; past it the erasure is refused before it
/// changes anything (an operator looks at such a user id by hand).
pub const ERASE_KEYS_MAX: usize = 10_000;
/// Trades or receipts of one player an erasure redacts.
pub const ERASE_RECORDS_PER_PLAYER_MAX: usize = 100_000;
/// Quarantine records of one key an erasure deletes (one per quarantined version).
pub const ERASE_QUARANTINE_RECORDS_PER_KEY_MAX: usize = 100_000;
/// Longest user id accepted.
pub const USER_ID_BYTES_MAX: usize = 256;
/// Where an erasure's plan is kept while it runs (ids only, deleted when it is done).
pub const ERASURE_PLAN_STORE: &str = "hoard.erasure_plans";
/// Ids one plan document holds (a plan is as many documents as it needs).
pub const ERASE_PLAN_IDS_PER_PAGE: usize = 500;

/// What the erasure does to one planned document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Planned {
    Player,
    TradeLog,
    Quarantine,
    TradeRecord,
    Receipt,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PlanPage {
    entries: Vec<(Planned, DocId)>,
}

/// The plan's documents of `user_id`: `{byte length}:{user id}/{page}`, so one user id's prefix
/// never lists another's.
fn plan_prefix(user_id: &str) -> String {
    format!("{}:{user_id}/", user_id.len())
}

/// The plan a previous run of this erasure left (empty when none), and its documents.
async fn read_plan(store: &dyn Store, user_id: &str) -> Result<(Vec<(Planned, DocId)>, Vec<DocId>), StoreError> {
    let plans = store_name(ERASURE_PLAN_STORE);
    let query = ListQuery { prefix: plan_prefix(user_id), after: None, limit: store.limits().page_size_max };
    let mut entries = Vec::new();
    let mut pages = Vec::new();
    let mut query = query;
    loop {
        let page = store.list_keys(&plans, &query).await?;
        let ids: Vec<DocId> = page.keys.iter().map(|key| DocId::new(plans.clone(), key.clone())).collect();
        for document in store.get_many(&ids).await? {
            let Some(value) = document.value else { continue };
            let plan: PlanPage = serde_json::from_value(value)
                .map_err(|error| StoreError::corrupt(format!("erasure plan {}: {error}", document.id)))?;
            entries.extend(plan.entries);
            pages.push(document.id);
        }
        match page.next_after {
            Some(next) => query.after = Some(next),
            None => return Ok((entries, pages)),
        }
    }
}

/// Writes the plan (before anything is scrubbed); returns its documents.
async fn write_plan(store: &dyn Store, user_id: &str, entries: &[(Planned, DocId)]) -> Result<Vec<DocId>, StoreError> {
    let mut pages = Vec::new();
    for (number, chunk) in entries.chunks(ERASE_PLAN_IDS_PER_PAGE).enumerate() {
        let id = DocId::new(store_name(ERASURE_PLAN_STORE), Key::new(format!("{}{number:06}", plan_prefix(user_id)))?);
        let value = serde_json::to_value(PlanPage { entries: chunk.to_vec() })
            .map_err(|error| StoreError::corrupt(error.to_string()))?;
        match store.commit(Commit::single(Write::put(id.clone(), value))).await? {
            CommitOutcome::Committed { .. } => pages.push(id),
            CommitOutcome::Conflict(conflict) => {
                return Err(StoreError::unavailable(format!("writing the erasure plan: {conflict}; run it again")));
            }
        }
    }
    Ok(pages)
}

/// What an erasure did; kept as the tombstone (`hoard.erasures/<erasure_id>`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub erasure_id: String,
    pub user_id: String,
    /// Who asked: an API key name, `roblox-webhook`, or the CLI's user.
    pub requested_by: String,
    pub reason: String,
    pub erased_at_ms: i64,
    /// The named stores that held the user's documents.
    pub stores: Vec<String>,
    pub documents_erased: u64,
    pub trade_log_entries_erased: u64,
    pub trade_records_redacted: u64,
    pub receipts_redacted: u64,
    /// Quarantine records (`hoard.quarantine`) of the erased keys, deleted with their history.
    #[serde(default)]
    pub quarantine_records_erased: u64,
    pub history_rows_purged: u64,
}

/// Checks a user id before anything is read.
pub fn check_user_id(user_id: &str) -> Result<(), InvalidInput> {
    if user_id.is_empty() {
        return Err(InvalidInput::Empty { what: "user id" });
    }
    if user_id.len() > USER_ID_BYTES_MAX {
        return Err(InvalidInput::TooLong { what: "user id", bytes: user_id.len(), bytes_max: USER_ID_BYTES_MAX });
    }
    Ok(())
}

/// Every key carrying `user_id`, all pages.
pub async fn keys_of_user(store: &dyn Store, user_id: &str) -> Result<Vec<DocId>, StoreError> {
    let operator = operator_of(store)?;
    let mut ids = Vec::new();
    let mut after: Option<DocId> = None;
    loop {
        let page = operator.keys_by_user_id(user_id, after.as_ref(), 0).await?;
        ids.extend(page.ids);
        if ids.len() > ERASE_KEYS_MAX {
            return Err(InvalidInput::TooMany {
                what: "keys of this user id",
                count: ids.len(),
                count_max: ERASE_KEYS_MAX,
            }
            .into());
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(ids),
        }
    }
}

/// Every quarantine record of `id` (`hoard.quarantine/{store}/{key}/v{version}`, written by
/// `engine::quarantine_write`), all pages. A store name and a key may both hold `/`, so a
/// record listed under the prefix counts only if its value names exactly this store and key.
pub async fn quarantine_records_of(store: &dyn Store, id: &DocId) -> Result<Vec<DocId>, StoreError> {
    let quarantine = store_name(QUARANTINE_STORE);
    let prefix = format!("{}/{}/", id.store, id.key);
    let mut records = Vec::new();
    let mut after: Option<Key> = None;
    loop {
        let query = ListQuery { prefix: prefix.clone(), after, limit: store.limits().page_size_max };
        let page = store.list_keys(&quarantine, &query).await?;
        let listed: Vec<DocId> = page.keys.into_iter().map(|key| DocId::new(quarantine.clone(), key)).collect();
        for record in store.get_many(&listed).await? {
            let names = |field: &str, expected: &str| {
                record.value.as_ref().and_then(|value| value.get(field)).and_then(serde_json::Value::as_str)
                    == Some(expected)
            };
            if names("store", id.store.as_str()) && names("key", id.key.as_str()) {
                records.push(record.id);
            }
        }
        if records.len() > ERASE_QUARANTINE_RECORDS_PER_KEY_MAX {
            return Err(InvalidInput::TooMany {
                what: "quarantine records of one key",
                count: records.len(),
                count_max: ERASE_QUARANTINE_RECORDS_PER_KEY_MAX,
            }
            .into());
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(records),
        }
    }
}

/// A write that leaves no data of the document: no value (or `redacted`), no attributes or user
/// ids, no holder, an empty inbox.
fn scrub(doc: &Document, redacted: Option<serde_json::Value>) -> Write {
    let value = match redacted {
        Some(value) => ValueOp::Put(value),
        None => ValueOp::Delete,
    };
    let mut write = Write::new(doc.id.clone()).value(value).attributes(Map::new()).user_ids(Vec::new());
    if doc.lease.holder.is_some() {
        write = write.lease(LeaseOp::Release);
    }
    if let Some(last) = doc.inbox.last() {
        write = write.ack_inbox_through(last.seq);
    }
    write
}

/// The same as `scrub`, for a key whose stored value does not read (`StoreError::Unreadable`,
/// quarantined): written without reading it, as an admin's repair is. Releasing a lease nobody
/// holds and acknowledging past the last message change nothing.
fn scrub_unread(id: &DocId, redacted: Option<serde_json::Value>) -> Write {
    let value = match redacted {
        Some(value) => ValueOp::Put(value),
        None => ValueOp::Delete,
    };
    Write::new(id.clone())
        .value(value)
        .attributes(Map::new())
        .user_ids(Vec::new())
        .lease(LeaseOp::Release)
        .ack_inbox_through(u64::MAX)
}

/// A key as erasure reads it.
enum Found {
    Read(Document),
    /// Its stored value does not read; its other fields are left to the commit to read.
    ValueUnreadable(DocId),
}

/// Reads `ids`; when one value does not read (which fails the whole read), key by key.
async fn read_for_scrub(store: &dyn Store, ids: &[DocId]) -> Result<Vec<Found>, StoreError> {
    match store.get_many(ids).await {
        Ok(docs) => return Ok(docs.into_iter().map(Found::Read).collect()),
        Err(StoreError::Unreadable(_)) => {}
        Err(error) => return Err(error),
    }
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        match get(store, id).await {
            Ok(doc) => found.push(Found::Read(doc)),
            Err(StoreError::Unreadable(unreadable)) if unreadable.field == "value" && &unreadable.id == id => {
                found.push(Found::ValueUnreadable(id.clone()));
            }
            Err(error) => return Err(error),
        }
    }
    Ok(found)
}

async fn scrub_all(store: &dyn Store, ids: &[DocId], redacted: Option<serde_json::Value>) -> Result<(), StoreError> {
    for chunk in ids.chunks(store.limits().page_size_max.max(1)) {
        for found in read_for_scrub(store, chunk).await? {
            let write = match found {
                Found::Read(doc) if doc.is_pristine() => continue,
                Found::Read(doc) => scrub(&doc, redacted.clone()),
                Found::ValueUnreadable(id) => scrub_unread(&id, redacted.clone()),
            };
            // Unconditional: the operator's erasure wins over any session (its lease is released).
            let write = write.when(Condition::None);
            let id = write.id.clone();
            match store.commit(Commit::single(write)).await? {
                CommitOutcome::Committed { .. } => {}
                CommitOutcome::Conflict(conflict) => {
                    return Err(StoreError::unavailable(format!("erasing {id}: {conflict}; run it again")));
                }
            }
        }
    }
    Ok(())
}

/// Erases every key carrying `user_id` (see the module docs) and writes the tombstone.
pub async fn erase_user(
    store: &dyn Store,
    user_id: &str,
    requested_by: &str,
    reason: &str,
) -> Result<Tombstone, StoreError> {
    erase(store, user_id, requested_by, reason, false).await
}

/// Runs an erasure up to its scrubs and stops, as a crash there would: the documents are
/// scrubbed, their history is not purged, and no tombstone is written. Test hook.
#[cfg(feature = "testing")]
pub async fn erase_user_crashing_after_the_scrub(store: &dyn Store, user_id: &str) -> Result<(), StoreError> {
    erase(store, user_id, "test", "a crash after the scrub", true).await.map(|_| ())
}

async fn erase(
    store: &dyn Store,
    user_id: &str,
    requested_by: &str,
    reason: &str,
    crash_after_scrub: bool,
) -> Result<Tombstone, StoreError> {
    check_user_id(user_id)?;
    let operator = operator_of(store)?;
    let (planned, _previous_pages) = read_plan(store, user_id).await?;
    let mut players = keys_of_user(store, user_id).await?;
    let erasure_id = uuid::Uuid::now_v7().to_string();
    let redacted = json!({ "erased": true, "erasure_id": erasure_id });
    let mut tombstone = Tombstone {
        erasure_id: erasure_id.clone(),
        user_id: user_id.to_string(),
        requested_by: requested_by.to_string(),
        reason: reason.to_string(),
        ..Tombstone::default()
    };
    let mut log_ids = Vec::new();
    let mut record_ids = Vec::new();
    let mut receipt_ids = Vec::new();
    let mut quarantine_ids = Vec::new();
    // A previous run's players are found by its plan (their user ids are gone).
    for (kind, id) in &planned {
        if *kind == Planned::Player && !players.contains(id) {
            players.push(id.clone());
        }
    }
    for player in &players {
        if !tombstone.stores.contains(&player.store.to_string()) {
            tombstone.stores.push(player.store.to_string());
        }
        quarantine_ids.extend(quarantine_records_of(store, player).await?);
        let mut after: Option<String> = None;
        loop {
            let trades = trades_of(store, player, after.as_deref(), 0).await?;
            let Some(last) = trades.last().cloned() else { break };
            for trade_id in trades {
                log_ids.push(DocId::new(
                    store_name(TRADE_LOG_STORE),
                    Key::new(format!("{}/{}/{trade_id}", player.store, player.key))?,
                ));
                record_ids.push(DocId::new(store_name(TRADE_RECORD_STORE), Key::new(trade_id)?));
            }
            if log_ids.len() > ERASE_RECORDS_PER_PLAYER_MAX {
                return Err(InvalidInput::TooMany {
                    what: "trades of one player",
                    count: log_ids.len(),
                    count_max: ERASE_RECORDS_PER_PLAYER_MAX,
                }
                .into());
            }
            after = Some(last);
        }
        let mut after: Option<Key> = None;
        loop {
            let receipts = receipts_of(store, player, after.as_ref(), 0).await?;
            let Some((last, _)) = receipts.last().cloned() else { break };
            receipt_ids.extend(
                receipts.into_iter().map(|(key, _)| DocId::new(store_name(crate::engine::receipt::RECEIPT_STORE), key)),
            );
            after = Some(last);
        }
    }
    for (kind, id) in planned {
        let list = match kind {
            Planned::Player => continue,
            Planned::TradeLog => &mut log_ids,
            Planned::Quarantine => &mut quarantine_ids,
            Planned::TradeRecord => &mut record_ids,
            Planned::Receipt => &mut receipt_ids,
        };
        if !list.contains(&id) {
            list.push(id);
        }
    }
    let mut entries = Vec::new();
    for (kind, ids) in [
        (Planned::Player, &players),
        (Planned::TradeLog, &log_ids),
        (Planned::Quarantine, &quarantine_ids),
        (Planned::TradeRecord, &record_ids),
        (Planned::Receipt, &receipt_ids),
    ] {
        entries.extend(ids.iter().map(|id| (kind, id.clone())));
    }
    let plan_pages = write_plan(store, user_id, &entries).await?;
    scrub_all(store, &players, None).await?;
    scrub_all(store, &log_ids, None).await?;
    scrub_all(store, &quarantine_ids, None).await?;
    scrub_all(store, &record_ids, Some(redacted.clone())).await?;
    scrub_all(store, &receipt_ids, Some(redacted)).await?;
    if crash_after_scrub {
        return Ok(tombstone);
    }
    let mut everything = players.clone();
    everything.extend(log_ids.iter().cloned());
    everything.extend(record_ids.iter().cloned());
    everything.extend(receipt_ids.iter().cloned());
    everything.extend(quarantine_ids.iter().cloned());
    tombstone.history_rows_purged = operator.purge_history(&everything).await?;
    tombstone.documents_erased = players.len() as u64;
    tombstone.trade_log_entries_erased = log_ids.len() as u64;
    tombstone.trade_records_redacted = record_ids.len() as u64;
    tombstone.receipts_redacted = receipt_ids.len() as u64;
    tombstone.quarantine_records_erased = quarantine_ids.len() as u64;
    tombstone.erased_at_ms = store.now_ms().await?;
    let value = serde_json::to_value(&tombstone).map_err(|error| StoreError::corrupt(error.to_string()))?;
    let id = DocId::new(store_name(ERASURE_STORE), Key::new(erasure_id)?);
    match store.commit(Commit::single(Write::put(id, value).when(Condition::Absent))).await? {
        CommitOutcome::Committed { .. } => {}
        CommitOutcome::Conflict(conflict) => {
            return Err(StoreError::corrupt(format!("erasure id collided: {conflict}")));
        }
    }
    // Done: the plan goes (a crash here leaves a plan whose documents hold nothing; the next
    // run of this user id finds them clean and deletes it).
    for page in &plan_pages {
        if let CommitOutcome::Conflict(conflict) = store.commit(Commit::single(Write::delete(page.clone()))).await? {
            return Err(StoreError::unavailable(format!("deleting the erasure plan: {conflict}; run it again")));
        }
    }
    operator.purge_history(&plan_pages).await?;
    Ok(tombstone)
}

/// The tombstones, oldest first, after `after`.
pub async fn list_tombstones(
    store: &dyn Store,
    after: Option<Key>,
    limit: usize,
) -> Result<(Vec<(Key, Tombstone)>, Option<Key>), StoreError> {
    super::read_log(store, ERASURE_STORE, after, limit).await
}

/// True when `id` holds nothing of anyone: no value (or only a redaction), no attributes, no
/// user ids, no inbox, and no superseded version left. For tests and operators' checks.
pub async fn holds_no_data(store: &dyn Store, id: &DocId) -> Result<bool, StoreError> {
    let doc = get(store, id).await?;
    let value_clean = doc.value.as_ref().is_none_or(|value| value.get("erased") == Some(&json!(true)));
    let versions = store.list_versions(id, &crate::store::VersionQuery { before_version: None, limit: 0 }).await?;
    let history_clean = versions.iter().all(|info| info.version == doc.version);
    Ok(value_clean && doc.attributes.is_empty() && doc.user_ids.is_empty() && doc.inbox.is_empty() && history_clean)
}
