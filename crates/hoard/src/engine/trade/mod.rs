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
//! - A cross-server trade shares the record store: `pending` until decided once, `committed` or
//!   `aborted` (`across`). A same-engine trade is recorded `committed` with no timeout, and a
//!   replay of a trade id is only ever matched against a record of its own kind.
//!
//! Layout: the vocabulary here; `legs` (shape checks and moving value, pure, shared with
//! `hoard serve`), `record` (record and log documents, replays), `local` (a trade among sessions
//! of one engine, as one transaction), `across` (a trade among players of different servers:
//! escrow, one decided record, a deadline).

mod across;
mod legs;
mod local;
mod record;

pub use across::{
    CROSS_TRADE_PARTIES_MAX, CROSS_TRADE_TIMEOUT_MS_DEFAULT, CROSS_TRADE_TIMEOUT_MS_MAX, CROSS_TRADE_TIMEOUT_MS_MIN,
    CrossOutcome, CrossTrade, Escrow, PENDING_TRADES_PER_PROFILE_MAX, TRADE_ESCROW_STORE, cross_record, deadline_ms,
    decision_message, escrow_id, escrow_out, legs_to_settle, parties_to_tell, party_of, settle_in, with_aborted,
    with_prepared,
};
pub(crate) use across::{abort_trade, settle_pending, trade_across};

pub use legs::{apply_legs_to_holdings, check_shape};
pub(crate) use local::{trade_local, trade_record, trades_of};
pub use record::{already, log_id, record_for, record_id};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::store::{DocId, StoreError};

use super::session::Profile;
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
    /// Cross-server trades this player has taken part in and not yet settled, by trade id (the
    /// seed's `pending_trades`). Written by hoard only, in the same commit that escrows what the
    /// player gives; resolved from the trade's record on the next load, wherever that is. It
    /// holds no value: what is in flight is in the escrow documents.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pending_trades: BTreeMap<String, PendingTrade>,
}

/// A player's mark of a cross-server trade it has prepared and not yet settled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTrade {
    /// This player's index among the trade's parties.
    pub party: usize,
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
    /// `committed` (`STATUS_COMMITTED`) for every trade among sessions of one engine; a
    /// cross-server trade is `pending` until it is decided, once, `committed` or `aborted`.
    pub status: String,
    /// Unused (kept so records written before cross-server trades read the same): a
    /// cross-server trade's escrow documents are named by trade id and leg (`across::escrow_id`).
    pub escrow: Option<DocId>,
    /// When it committed, by the store's clock (filled in when read back): for a cross-server
    /// trade, when its record was created.
    #[serde(default)]
    pub committed_at_ms: i64,
    /// Cross-server trades: how long after the record's creation (by the store's clock) the
    /// trade may still be decided `committed`; past that it can only abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Cross-server trades: the parties (indexes) that have escrowed what they give, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prepared: Vec<usize>,
    /// Cross-server trades: why it aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_reason: Option<String>,
}

/// `TradeRecord::status` of a trade that moved its value (every same-engine trade).
pub const STATUS_COMMITTED: &str = "committed";
/// `TradeRecord::status` of a cross-server trade not yet decided.
pub const STATUS_PENDING: &str = "pending";
/// `TradeRecord::status` of a cross-server trade that moved nothing in the end.
pub const STATUS_ABORTED: &str = "aborted";

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

impl TradeError {
    pub(crate) fn invalid(reason: impl Into<String>) -> TradeError {
        TradeError::Invalid { reason: reason.into() }
    }
}
