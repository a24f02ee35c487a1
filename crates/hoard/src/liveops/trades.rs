//! The operator view of cross-server trades: one trade by id (its record, the escrow documents
//! still present, and for each party who holds its key now and whether its profile still marks
//! the trade pending), and the trades that still have value in escrow (pending, or decided and not
//! yet settled by every party), a page at a time. Used by `hoard serve`'s
//! `/v1/ops/trades` routes and the CLI's `hoard trade show` / `hoard trade stuck`.
//!
//! Invariants:
//! - Read only: nothing here writes, takes a lease or settles a trade (settling belongs to the
//!   engine of whichever server holds the party).
//! - Each answer is bounded: a view reads the record, at most `TRADE_LEGS_MAX` escrows and
//!   `CROSS_TRADE_PARTIES_MAX` parties; a list reads at most `ESCROWED_TRADES_PAGE_MAX` trades.
//! - A party's pending mark is found in the stored JSON, wherever its `Holdings` sit: in the
//!   engine's schema envelope (`{"hoard_profile", "data"}`) or in a plain value (`hoard serve`'s
//!   trades take a `holdings_path`), so the view never needs the game's profile type.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::trade::{
    Escrow, STATUS_PENDING, TRADE_ESCROW_STORE, TRADE_ID_BYTES_MAX, TRADE_RECORD_STORE, TradeRecord, deadline_ms,
    escrow_id,
};
use crate::store::{DocId, HolderId, InvalidInput, Key, ListQuery, Store, StoreError, StoreName};

/// Trades one page of `escrowed_trades` lists at most.
pub const ESCROWED_TRADES_PAGE_MAX: usize = 100;
/// Trades a page of `escrowed_trades` lists when the caller asks for 0.
pub const ESCROWED_TRADES_PAGE_DEFAULT: usize = 50;
/// How many object levels deep a profile is searched for its `pending_trades` map.
pub const PENDING_MARK_DEPTH_MAX: usize = 8;
/// The field of `Holdings` marking the trades a player has prepared and not yet settled.
pub const PENDING_TRADES_FIELD: &str = "pending_trades";

/// One cross-server (or same-engine) trade as an operator sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TradeView {
    pub trade_id: String,
    /// `pending`, `committed` or `aborted`.
    pub status: String,
    /// True for a cross-server trade (its record has a timeout); false for a same-engine trade.
    pub cross_server: bool,
    /// When the record was created (a cross-server trade) or committed (same engine), by the
    /// store's clock.
    pub created_at_ms: i64,
    /// A cross-server trade's deadline by the store's clock: past it, it can only abort.
    pub deadline_ms: Option<i64>,
    /// The store's clock when this view was read.
    pub now_ms: i64,
    /// Still pending past its deadline: whoever next touches it (a party's server at its deadline
    /// timer or its next load, or `Engine::abort_trade`) aborts it.
    pub past_deadline: bool,
    pub timeout_ms: Option<u64>,
    /// Indexes of the parties that have escrowed what they give, in order.
    pub prepared: Vec<usize>,
    pub abort_reason: Option<String>,
    pub legs: Vec<LegView>,
    pub parties: Vec<PartyView>,
    /// Escrow documents still present: value in flight. Zero once every party is settled.
    pub escrows_present: usize,
}

/// One leg of a trade and its escrow, if still present.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LegView {
    pub leg: usize,
    pub from: DocId,
    pub to: DocId,
    pub items: Vec<String>,
    pub currencies: BTreeMap<String, i64>,
    /// The escrow document of this leg (`hoard.escrow/{trade id}/{leg}`).
    pub escrow_id: DocId,
    /// What the escrow holds now; `None` before the giver prepared or after the leg settled.
    pub escrow: Option<Escrow>,
    /// The escrow document's version (0: never written).
    pub escrow_version: u64,
}

/// One party: who holds its key now, and whether its profile still marks the trade pending.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartyView {
    pub party: usize,
    pub id: DocId,
    /// It has escrowed what it gives (it is in the record's `prepared`).
    pub prepared: bool,
    /// The holder named on the party's key (`Document.lease`), if any.
    pub holder: Option<HolderId>,
    /// The key's fencing epoch.
    pub epoch: u64,
    /// When the holder's process lease expires, by the store's clock (`None`: no holder, or its
    /// holder row is gone).
    pub holder_expires_at_ms: Option<i64>,
    /// The holder's process lease has not expired: that server can settle this party.
    pub holder_alive: bool,
    /// The party's profile still marks the trade pending (it prepared and is not yet settled).
    pub pending: bool,
    /// Where the mark was found: the JSON pointer of the `pending_trades` map that holds it.
    pub pending_at: Option<String>,
    /// The profile's version.
    pub version: u64,
}

/// A trade with value still in escrow, as listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EscrowedTrade {
    pub trade_id: String,
    /// The record's status (`None`: escrow without a record, which the protocol never leaves).
    pub status: Option<String>,
    pub deadline_ms: Option<i64>,
    pub past_deadline: bool,
    /// Legs whose escrow is present.
    pub escrowed_legs: Vec<usize>,
}

/// A page of `escrowed_trades`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EscrowedTradesPage {
    pub trades: Vec<EscrowedTrade>,
    pub now_ms: i64,
    /// Pass as `after` for the next page; `None` on the last.
    pub next_after: Option<String>,
}

fn store_name(name: &str) -> StoreName {
    StoreName::new(name).expect("hoard's internal store names are valid")
}

fn bad_trade_id(trade_id: &str) -> Option<StoreError> {
    let what = "trade id";
    let invalid = if trade_id.is_empty() {
        InvalidInput::Empty { what }
    } else if trade_id.len() > TRADE_ID_BYTES_MAX {
        InvalidInput::TooLong { what, bytes: trade_id.len(), bytes_max: TRADE_ID_BYTES_MAX }
    } else if trade_id.contains('/') {
        InvalidInput::Malformed { what, expected: "text without '/'" }
    } else {
        return None;
    };
    Some(StoreError::InvalidInput(invalid))
}

fn record_of(document: &crate::store::Document) -> Result<Option<TradeRecord>, StoreError> {
    let Some(value) = document.value.clone() else { return Ok(None) };
    let mut record: TradeRecord = serde_json::from_value(value)
        .map_err(|error| StoreError::corrupt(format!("{} is not a trade record: {error}", document.id)))?;
    // As the engine reads it: a cross-server record's deadline counts from its creation.
    record.committed_at_ms = document.created_at_ms;
    Ok(Some(record))
}

fn deadline_of(record: &TradeRecord) -> Option<i64> {
    record.timeout_ms.map(|_| deadline_ms(record))
}

/// The operator view of trade `trade_id`, or `None` when there is no such trade.
pub async fn trade_view(store: &dyn Store, trade_id: &str) -> Result<Option<TradeView>, StoreError> {
    if let Some(error) = bad_trade_id(trade_id) {
        return Err(error);
    }
    let record_doc = DocId::new(store_name(TRADE_RECORD_STORE), Key::new(trade_id)?);
    let Some(record) = record_of(&crate::store::get(store, &record_doc).await?)? else { return Ok(None) };
    let escrow_ids: Vec<DocId> = (0..record.legs.len())
        .map(|leg| escrow_id(trade_id, leg).map_err(|error| StoreError::corrupt(error.to_string())))
        .collect::<Result<_, _>>()?;
    let escrow_docs = store.get_many(&escrow_ids).await?;
    let party_docs = store.get_many(&record.parties).await?;
    let now_ms = store.now_ms().await?;

    let mut legs = Vec::with_capacity(record.legs.len());
    for ((index, leg), document) in record.legs.iter().enumerate().zip(escrow_docs) {
        let escrow = match document.value {
            Some(value) => Some(
                serde_json::from_value::<Escrow>(value)
                    .map_err(|error| StoreError::corrupt(format!("{} is not an escrow: {error}", document.id)))?,
            ),
            None => None,
        };
        legs.push(LegView {
            leg: index,
            from: leg.from.clone(),
            to: leg.to.clone(),
            items: leg.items.clone(),
            currencies: leg.currencies.clone(),
            escrow_id: document.id,
            escrow,
            escrow_version: document.version,
        });
    }

    let mut leases = BTreeMap::new();
    for holder in party_docs.iter().filter_map(|document| document.lease.holder.as_ref()).collect::<BTreeSet<_>>() {
        leases.insert(holder.clone(), store.holder_lease(holder).await?.map(|lease| lease.expires_at_ms));
    }
    let parties = party_docs
        .into_iter()
        .enumerate()
        .map(|(index, document)| {
            let expires = document.lease.holder.as_ref().and_then(|holder| leases.get(holder).copied().flatten());
            let pending_at = document.value.as_ref().and_then(|value| pending_mark(value, trade_id));
            PartyView {
                party: index,
                prepared: record.prepared.contains(&index),
                holder: document.lease.holder,
                epoch: document.lease.epoch,
                holder_expires_at_ms: expires,
                holder_alive: expires.is_some_and(|at| at > now_ms),
                pending: pending_at.is_some(),
                pending_at,
                version: document.version,
                id: document.id,
            }
        })
        .collect();
    let deadline = deadline_of(&record);
    Ok(Some(TradeView {
        trade_id: record.trade_id.clone(),
        cross_server: record.timeout_ms.is_some(),
        created_at_ms: record.committed_at_ms,
        deadline_ms: deadline,
        now_ms,
        past_deadline: record.status == STATUS_PENDING && deadline.is_some_and(|at| now_ms >= at),
        timeout_ms: record.timeout_ms,
        prepared: record.prepared.clone(),
        abort_reason: record.abort_reason.clone(),
        escrows_present: legs.iter().filter(|leg| leg.escrow.is_some()).count(),
        legs,
        parties,
        status: record.status,
    }))
}

/// Where `value` marks trade `trade_id` pending: the JSON pointer of the first `pending_trades`
/// object (breadth first, objects only, at most `PENDING_MARK_DEPTH_MAX` levels) that holds the
/// trade id. Reads an engine profile's envelope (`/data/...`) and a plain value alike.
pub fn pending_mark(value: &Value, trade_id: &str) -> Option<String> {
    let mut queue = VecDeque::from([(value, String::new(), 0usize)]);
    while let Some((node, pointer, depth)) = queue.pop_front() {
        let Some(object) = node.as_object() else { continue };
        if let Some(Value::Object(marks)) = object.get(PENDING_TRADES_FIELD)
            && marks.contains_key(trade_id)
        {
            return Some(format!("{pointer}/{PENDING_TRADES_FIELD}"));
        }
        if depth + 1 >= PENDING_MARK_DEPTH_MAX {
            continue;
        }
        for (field, child) in object {
            if child.is_object() && field != PENDING_TRADES_FIELD {
                let escaped = field.replace('~', "~0").replace('/', "~1");
                queue.push_back((child, format!("{pointer}/{escaped}"), depth + 1));
            }
        }
    }
    None
}

/// The trades with an escrow document still present (pending, or decided and not yet settled by
/// every party), in escrow key order, after trade `after`; at most `limit` trades
/// (`ESCROWED_TRADES_PAGE_MAX`; 0: `ESCROWED_TRADES_PAGE_DEFAULT`). A trade here past its
/// deadline, or decided with a party whose holder is gone, is stuck until that party's next load.
pub async fn escrowed_trades(
    store: &dyn Store,
    after: Option<&str>,
    limit: usize,
) -> Result<EscrowedTradesPage, StoreError> {
    let limit = if limit == 0 { ESCROWED_TRADES_PAGE_DEFAULT } else { limit.min(ESCROWED_TRADES_PAGE_MAX) };
    if let Some(error) = after.and_then(bad_trade_id) {
        return Err(error);
    }
    let escrows = store_name(TRADE_ESCROW_STORE);
    // Escrow keys are `{trade id}/{leg}` and trade ids hold no '/', so one trade's keys are
    // contiguous, and `{trade id}/~` sorts after every leg of it ('~' is above every digit) and
    // before any other trade's keys.
    let mut cursor = after.map(|trade_id| Key::new(format!("{trade_id}/~"))).transpose()?;
    let mut found: Vec<(String, Vec<usize>)> = Vec::new();
    let mut more = false;
    'pages: loop {
        let query = ListQuery { prefix: String::new(), after: cursor.clone(), limit: 0 };
        let page = store.list_keys(&escrows, &query).await?;
        for key in &page.keys {
            let Some((trade_id, leg)) = key.as_str().rsplit_once('/') else { continue };
            let Ok(leg) = leg.parse::<usize>() else { continue };
            let count = found.len();
            match found.last_mut() {
                Some((last, legs)) if last == trade_id => legs.push(leg),
                _ if count == limit => {
                    more = true;
                    break 'pages;
                }
                _ => found.push((trade_id.to_string(), vec![leg])),
            }
        }
        match page.next_after {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let record_ids: Vec<DocId> = found
        .iter()
        .map(|(trade_id, _)| Ok(DocId::new(store_name(TRADE_RECORD_STORE), Key::new(trade_id.as_str())?)))
        .collect::<Result<_, StoreError>>()?;
    let records = store.get_many(&record_ids).await?;
    let now_ms = store.now_ms().await?;
    let mut trades = Vec::with_capacity(found.len());
    for ((trade_id, escrowed_legs), document) in found.into_iter().zip(records) {
        let record = record_of(&document)?;
        let deadline = record.as_ref().and_then(deadline_of);
        let pending = record.as_ref().is_some_and(|record| record.status == STATUS_PENDING);
        trades.push(EscrowedTrade {
            trade_id,
            status: record.map(|record| record.status),
            deadline_ms: deadline,
            past_deadline: pending && deadline.is_some_and(|at| now_ms >= at),
            escrowed_legs,
        });
    }
    let next_after = more.then(|| trades.last().map(|trade| trade.trade_id.clone())).flatten();
    Ok(EscrowedTradesPage { trades, now_ms, next_after })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::pending_mark;

    #[test]
    fn the_pending_mark_is_found_in_an_envelope_in_a_plain_value_and_nowhere_else() {
        let enveloped = json!({"hoard_profile": {"data_version": 0, "last_compatible_version": 0},
            "data": {"holdings": {"currencies": {}, "items": {}, "pending_trades": {"t-1": {"party": 0}}}}});
        assert_eq!(pending_mark(&enveloped, "t-1").as_deref(), Some("/data/holdings/pending_trades"));
        assert_eq!(pending_mark(&enveloped, "t-2"), None);
        let plain = json!({"pending_trades": {"t-1": {"party": 1}}, "a/b": {"pending_trades": {"t-3": {}}}});
        assert_eq!(pending_mark(&plain, "t-1").as_deref(), Some("/pending_trades"));
        assert_eq!(pending_mark(&plain, "t-3").as_deref(), Some("/a~1b/pending_trades"));
        assert_eq!(pending_mark(&json!([{"pending_trades": {"t-1": {}}}]), "t-1"), None, "objects only");
        let mut deep = json!({"pending_trades": {"t-1": {}}});
        for _ in 0..super::PENDING_MARK_DEPTH_MAX {
            deep = json!({ "x": deep });
        }
        assert_eq!(pending_mark(&deep, "t-1"), None, "bounded depth");
    }
}
