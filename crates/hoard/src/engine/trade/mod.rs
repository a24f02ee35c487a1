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
//!
//! Layout: the vocabulary here; `legs` (shape checks and moving value, pure, shared with
//! `hoard serve`), `record` (record and log documents, replays), `local` (a trade among sessions
//! of one engine, as one transaction). A cross-server trade adds its own flow beside `local`
//! (escrow legs, a decided record, a deadline), reusing `legs` and `record`.

mod legs;
mod local;
mod record;

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
