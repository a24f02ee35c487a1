//! Trades (G3): items with unique ids and integer currency balances moving between sessions held
//! by this engine, validated, recorded and idempotent by trade id.
//!
//! Invariants:
//! - A trade applies entirely or not at all: the parties' new profiles, the trade record and the
//!   per-player log entries are one fenced atomic commit (`transaction`).
//! - An item id moves from exactly the party that holds it to exactly one other; no balance goes
//!   negative; no item is listed twice.
//! - The trade record is written with `Condition::Absent`, so a trade id commits at most once: a
//!   retry returns the first result and never moves value twice.
//!
//! Cross-server trades (a later issue) fit this record: its `status` will gain `prepared` and
//! `aborted`, and `escrow` will name the escrow document holding items in flight; a same-engine
//! trade is recorded as `committed` with no escrow.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::store::{Condition, ConflictKind, DocId, Key, ListQuery, StoreError, StoreName, Write};

use super::engine::Engine;
use super::session::{Profile, Session};
use super::transaction::TransactError;

/// The named store holding one record per trade, keyed by trade id.
pub const TRADE_RECORD_STORE: &str = "hoard.trades";
/// The named store holding one entry per (player, trade): `{store}/{key}/{trade id}`.
pub const TRADE_LOG_STORE: &str = "hoard.trade_log";
pub const TRADE_ID_BYTES_MAX: usize = 64;
/// Legs in one trade (each leg moves items and currencies from one party to another).
pub const TRADE_LEGS_MAX: usize = 32;
/// Items moved by one trade, over all legs.
pub const TRADE_ITEMS_MAX: usize = 256;

/// The common shape trades move: currencies by name, and items by unique id.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Holdings {
    pub currencies: BTreeMap<String, i64>,
    /// Item id → item data. Ids are unique across the game: an id is held by one profile only.
    pub items: BTreeMap<String, Value>,
}

/// A profile that carries `Holdings`.
pub trait Tradable: Profile {
    fn holdings(&self) -> &Holdings;
    fn holdings_mut(&mut self) -> &mut Holdings;
}

/// One direction of value in a trade: `from` gives `items` and `currencies` to `to`
/// (indexes into the trade's sessions).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeLeg {
    pub from: usize,
    pub to: usize,
    pub items: Vec<String>,
    pub currencies: BTreeMap<String, i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trade {
    /// Unique per trade; a retry with the same id returns the first result.
    pub id: String,
    pub legs: Vec<TradeLeg>,
}

/// A leg as recorded: parties named by key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedLeg {
    pub from: DocId,
    pub to: DocId,
    pub items: Vec<String>,
    pub currencies: BTreeMap<String, i64>,
}

/// The durable record of a trade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeRecord {
    pub trade_id: String,
    pub parties: Vec<DocId>,
    pub legs: Vec<RecordedLeg>,
    /// `committed` for every trade this engine makes; cross-server trades will add others.
    pub status: String,
    /// Cross-server trades will name their escrow document here.
    pub escrow: Option<DocId>,
    /// When it committed, by the store's clock (filled in when read back).
    #[serde(default)]
    pub committed_at_ms: i64,
}

impl TradeRecord {
    /// True when both records move the same value between the same parties (ids and times aside).
    pub fn same_trade(&self, other: &TradeRecord) -> bool {
        self.parties == other.parties && self.legs == other.legs
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TradeOutcome {
    Committed(TradeRecord),
    /// This trade id had already committed: nothing moved now; here is the first result.
    AlreadyCommitted(TradeRecord),
}

#[derive(Debug, Error)]
pub enum TradeError {
    #[error("invalid trade: {reason}")]
    Invalid { reason: String },
    #[error("party {party} does not hold item {item}")]
    ItemNotHeld { party: DocId, item: String },
    #[error("party {party} has {balance} {currency}, less than the {amount} it would give")]
    InsufficientBalance { party: DocId, currency: String, balance: i64, amount: i64 },
    #[error("trade id {trade_id} was already used for a different trade; use a new id")]
    TradeIdReused { trade_id: String, first: Box<TradeRecord> },
    #[error(transparent)]
    Transaction(TransactError),
    #[error("reading the trade record failed: {0}")]
    Store(StoreError),
}

/// The document holding a trade's record (`hoard.trades/{trade id}`).
pub fn record_id(trade_id: &str) -> Result<DocId, TradeError> {
    let invalid = |reason: String| TradeError::Invalid { reason };
    let store = StoreName::new(TRADE_RECORD_STORE).map_err(|e| invalid(e.to_string()))?;
    Ok(DocId::new(store, Key::new(trade_id).map_err(|e| invalid(format!("trade id: {e}")))?))
}

/// The per-player log entry of a trade (`hoard.trade_log/{store}/{key}/{trade id}`).
pub fn log_id(player: &DocId, trade_id: &str) -> Result<DocId, TradeError> {
    let store = StoreName::new(TRADE_LOG_STORE).map_err(|e| TradeError::Invalid { reason: e.to_string() })?;
    let key = Key::new(format!("{}/{}/{}", player.store, player.key, trade_id)).map_err(|e| TradeError::Invalid {
        reason: format!("player key too long for the trade log ({e}); use shorter keys or trade ids"),
    })?;
    Ok(DocId::new(store, key))
}

/// Checks a trade's shape against the named limits, for `parties` parties.
pub fn check_shape(trade: &Trade, parties: usize) -> Result<(), TradeError> {
    let invalid = |reason: String| Err(TradeError::Invalid { reason });
    if trade.id.is_empty() || trade.id.len() > TRADE_ID_BYTES_MAX || trade.id.contains('/') {
        return invalid(format!("trade id must be 1 to {TRADE_ID_BYTES_MAX} bytes without '/'"));
    }
    if trade.legs.is_empty() || trade.legs.len() > TRADE_LEGS_MAX {
        return invalid(format!("a trade has 1 to {TRADE_LEGS_MAX} legs"));
    }
    let mut items = BTreeSet::new();
    for leg in &trade.legs {
        if leg.from >= parties || leg.to >= parties || leg.from == leg.to {
            return invalid(format!("leg {} → {} must join two different parties of {parties}", leg.from, leg.to));
        }
        if leg.items.is_empty() && leg.currencies.is_empty() {
            return invalid("a leg moves at least one item or currency".into());
        }
        for (currency, amount) in &leg.currencies {
            if *amount <= 0 || currency.is_empty() {
                return invalid(format!(
                    "currency amounts are positive integers with a name (got {currency:?} {amount})"
                ));
            }
        }
        for item in &leg.items {
            if !items.insert(item.clone()) {
                return invalid(format!("item {item} is given twice"));
            }
        }
    }
    if items.len() > TRADE_ITEMS_MAX {
        return invalid(format!("a trade moves at most {TRADE_ITEMS_MAX} items"));
    }
    Ok(())
}

/// Applies the legs to the parties' holdings, refusing on any missing item or short balance.
fn apply_legs<P: Tradable>(profiles: &mut [P], parties: &[DocId], trade: &Trade) -> Result<(), TradeError> {
    let mut holdings: Vec<&mut Holdings> = profiles.iter_mut().map(Tradable::holdings_mut).collect();
    apply_legs_to_holdings(&mut holdings, parties, trade)
}

/// Applies the legs to the parties' holdings (in the order of `parties`), refusing on any missing
/// item or short balance. Shared by the engine and `hoard serve`, so both move value the same way.
/// Call `check_shape` first; a leg naming a party out of range is refused here too.
pub fn apply_legs_to_holdings(
    holdings: &mut [&mut Holdings],
    parties: &[DocId],
    trade: &Trade,
) -> Result<(), TradeError> {
    if holdings.len() != parties.len() {
        return Err(TradeError::Invalid { reason: "one holdings per party".into() });
    }
    for leg in &trade.legs {
        if leg.from >= parties.len() || leg.to >= parties.len() {
            return Err(TradeError::Invalid { reason: format!("leg {} → {} names no party", leg.from, leg.to) });
        }
        let party = |index: usize| parties[index].clone();
        for (currency, amount) in &leg.currencies {
            let giver = &mut holdings[leg.from];
            let balance = giver.currencies.get(currency).copied().unwrap_or(0);
            if balance < *amount {
                return Err(TradeError::InsufficientBalance {
                    party: party(leg.from),
                    currency: currency.clone(),
                    balance,
                    amount: *amount,
                });
            }
            giver.currencies.insert(currency.clone(), balance - amount);
            let taker = &mut holdings[leg.to];
            let entry = taker.currencies.entry(currency.clone()).or_insert(0);
            *entry =
                entry.checked_add(*amount).ok_or_else(|| TradeError::Invalid { reason: "balance overflow".into() })?;
        }
        for item in &leg.items {
            let data = holdings[leg.from]
                .items
                .remove(item)
                .ok_or_else(|| TradeError::ItemNotHeld { party: party(leg.from), item: item.clone() })?;
            holdings[leg.to].items.insert(item.clone(), data);
        }
    }
    Ok(())
}

/// The record a trade among `parties` (in the trade's index order) is stored as.
pub fn record_for(trade: &Trade, parties: &[DocId]) -> TradeRecord {
    TradeRecord {
        trade_id: trade.id.clone(),
        parties: parties.to_vec(),
        legs: trade
            .legs
            .iter()
            .filter_map(|leg| {
                Some(RecordedLeg {
                    from: parties.get(leg.from)?.clone(),
                    to: parties.get(leg.to)?.clone(),
                    items: leg.items.clone(),
                    currencies: leg.currencies.clone(),
                })
            })
            .collect(),
        status: "committed".into(),
        escrow: None,
        committed_at_ms: 0,
    }
}

impl Engine {
    /// Trades items and currencies among sessions held by this engine, atomically (G3).
    /// Idempotent by `trade.id`: a retry returns the first result and moves nothing.
    pub async fn trade<P: Tradable>(
        &self,
        sessions: &[&Session<P>],
        trade: &Trade,
    ) -> Result<TradeOutcome, TradeError> {
        check_shape(trade, sessions.len())?;
        let parties: Vec<DocId> = sessions.iter().map(|s| s.id().clone()).collect();
        let record = record_for(trade, &parties);
        // No read of the record first: the record is written with `Absent`, so a trade id that
        // already committed makes this commit conflict (or its legs refuse), and only then is
        // the first record read. A new trade, the common case, costs one commit.
        let record_doc = record_id(&trade.id)?;
        let record_value = serde_json::to_value(&record).map_err(|e| TradeError::Invalid { reason: e.to_string() })?;
        let mut log_writes = Vec::with_capacity(parties.len());
        for party in &parties {
            let entry = serde_json::json!({ "trade_id": trade.id });
            log_writes.push(Write::put(log_id(party, &trade.id)?, entry).when(Condition::Absent));
        }
        let mut refusal: Option<TradeError> = None;
        let result = super::transaction::transact(&self.shared, sessions, &[], |context| {
            apply_legs(&mut context.profiles, &parties, trade).map_err(|error| {
                let reason = error.to_string();
                refusal = Some(error);
                reason
            })?;
            context.add_write(Write::put(record_doc.clone(), record_value.clone()).when(Condition::Absent));
            for write in &log_writes {
                context.add_write(write.clone());
            }
            Ok(())
        })
        .await;
        match result {
            // The record was created by this commit, so it was stamped with the commit's time.
            Ok(((), Some(at_ms))) => Ok(TradeOutcome::Committed(TradeRecord { committed_at_ms: at_ms, ..record })),
            Ok(((), None)) => Ok(TradeOutcome::Committed(self.trade_record(&trade.id).await?.unwrap_or(record))),
            Err(TransactError::Conflict(conflict)) if conflict.kind == ConflictKind::Exists => {
                // Another attempt with this id committed first.
                match self.trade_record(&trade.id).await? {
                    Some(first) => already(first, &record),
                    None => Err(TradeError::Transaction(TransactError::Conflict(conflict))),
                }
            }
            Err(TransactError::Refused { reason }) => {
                // A concurrent retry of this very trade may have moved the items already.
                if let Some(first) = self.trade_record(&trade.id).await? {
                    return already(first, &record);
                }
                Err(refusal.unwrap_or(TradeError::Invalid { reason }))
            }
            Err(error) => {
                // A replay whose party has since ended or been fenced out still learns that the
                // trade committed (nothing was read before the attempt).
                match self.trade_record(&trade.id).await {
                    Ok(Some(first)) => already(first, &record),
                    Ok(None) | Err(_) => Err(TradeError::Transaction(error)),
                }
            }
        }
    }

    /// Reads a trade's record.
    pub async fn trade_record(&self, trade_id: &str) -> Result<Option<TradeRecord>, TradeError> {
        let id = record_id(trade_id)?;
        let document = self.shared.read_with_retries(&id).await.map_err(TradeError::Store)?;
        let Some(value) = document.value else { return Ok(None) };
        let mut record: TradeRecord = serde_json::from_value(value)
            .map_err(|e| TradeError::Store(StoreError::corrupt(format!("trade record {trade_id}: {e}"))))?;
        record.committed_at_ms = document.created_at_ms;
        Ok(Some(record))
    }

    /// Lists a player's trades (ids), oldest id first, a page at a time.
    pub async fn trades_of(
        &self,
        player: &DocId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, TradeError> {
        let store = StoreName::new(TRADE_LOG_STORE).map_err(|e| TradeError::Invalid { reason: e.to_string() })?;
        let prefix = format!("{}/{}/", player.store, player.key);
        let after = after
            .map(|trade_id| Key::new(format!("{prefix}{trade_id}")))
            .transpose()
            .map_err(|e| TradeError::Invalid { reason: e.to_string() })?;
        let page = self
            .store()
            .list_keys(&store, &ListQuery { prefix: prefix.clone(), after, limit })
            .await
            .map_err(TradeError::Store)?;
        Ok(page.keys.iter().filter_map(|key| key.as_str().strip_prefix(&prefix).map(str::to_string)).collect())
    }
}

/// Decides a replay: the same trade again is `AlreadyCommitted`, another trade with the id is refused.
pub fn already(first: TradeRecord, attempted: &TradeRecord) -> Result<TradeOutcome, TradeError> {
    if first.same_trade(attempted) {
        Ok(TradeOutcome::AlreadyCommitted(first))
    } else {
        Err(TradeError::TradeIdReused { trade_id: first.trade_id.clone(), first: Box::new(first) })
    }
}
