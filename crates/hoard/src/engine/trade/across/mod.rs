//! Trades among players held by different engines (servers): escrow, one decided record, a
//! deadline on the store's clock (G3 across servers). The seed's `pending_trades` and commit
//! record, made exact: what is in flight sits in escrow documents, and the decision is one
//! conditional write.
//!
//! The protocol, every step a fenced commit or a conditional write, every step idempotent by
//! trade id:
//! 1. **Prepare** (each party, on its own server): in one commit fenced by the party's lease, move
//!    what the party gives out of its profile into one escrow document per leg
//!    (`hoard.escrow/<trade id>/<leg>`, `Absent`), mark the trade pending in the profile
//!    (`Holdings::pending_trades`), and add the party to the record's `prepared`. The first party
//!    creates the record (`Absent`); later ones write it on `Version(read) ∧ Before(deadline)`.
//! 2. **Decide**: the party whose prepare completes `prepared` writes `committed` in that same
//!    commit. `aborted` is written on `Version(read)` by a party that declines or cannot give, or
//!    by anyone once the deadline has passed. The record's version decides who was first; a
//!    commit after the deadline (by the store's clock) is refused by the store itself, so a late
//!    prepare can never decide `committed`.
//! 3. **Settle** (each party, on whatever server holds it now): in one fenced commit, take the
//!    escrows of the legs it receives (committed) or gives (aborted) into its profile, delete them
//!    on `Version(read)`, and clear its pending mark. A party that rejoins elsewhere is settled
//!    on load, from the record.
//!
//! Invariants:
//! - In every committed state, each item is in exactly one profile or one escrow document, and
//!   every currency unit in a profile or an escrow (value leaves a profile only into an escrow,
//!   in one commit, and leaves an escrow only into a profile, in one commit).
//! - The decision is made once: `committed` needs every party prepared and the store's clock
//!   before the deadline; `aborted` needs the record still pending. Both are conditional on the
//!   record's version, so the first writer wins and nothing overwrites it.
//! - Escrow goes to the receivers only after `committed`, back to the givers only after
//!   `aborted`; a party's pending mark is cleared in the commit that settles it, never before.
//!
//! Layout: the vocabulary and the pure plan here (shared with `hoard serve`, which runs the same
//! steps on stored JSON); the engine's driver in `flow`.

mod flow;

pub(crate) use flow::{abort_trade, settle_pending, trade_across};

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{DocId, Key, StoreName};

use super::super::session::TRADE_DECISION_MESSAGE_FIELD;

use super::legs::check_shape;
use super::{
    Holdings, PendingTrade, RecordedLeg, STATUS_ABORTED, STATUS_COMMITTED, STATUS_PENDING, Trade, TradeError, TradeLeg,
    TradeRecord,
};

/// The named store holding what cross-server trades have in flight: one document per leg.
pub const TRADE_ESCROW_STORE: &str = "hoard.escrow";
/// Parties in one cross-server trade.
pub const CROSS_TRADE_PARTIES_MAX: usize = 8;
/// The longest a cross-server trade may stay undecided.
pub const CROSS_TRADE_TIMEOUT_MS_MAX: u64 = 10 * 60 * 1000;
/// The shortest: less would abort trades whose servers are merely slow.
pub const CROSS_TRADE_TIMEOUT_MS_MIN: u64 = 1_000;
/// What a game that does not choose gets.
pub const CROSS_TRADE_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Cross-server trades one profile may have pending at once.
pub const PENDING_TRADES_PER_PROFILE_MAX: usize = 16;

/// A trade among players who may be held by different servers. Every party's server calls
/// `Engine::trade_across` with the same description; each takes its own party's part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrossTrade {
    /// Unique per trade; every step is idempotent by it.
    pub id: String,
    /// The players, by key; legs name them by index.
    pub parties: Vec<DocId>,
    pub legs: Vec<TradeLeg>,
    /// How long after the first party's prepare the trade may still commit (by the store's clock).
    pub timeout_ms: u64,
}

/// Where a cross-server trade stands, as one party sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrossOutcome {
    /// Waiting for other parties; it commits when the last prepares, or aborts at the deadline.
    Pending(TradeRecord),
    /// Decided `committed`; this party's side is settled (or was already).
    Committed(TradeRecord),
    /// Decided `aborted`; what this party gave is back (or it gave nothing).
    Aborted(TradeRecord),
}

impl CrossOutcome {
    pub fn record(&self) -> &TradeRecord {
        match self {
            CrossOutcome::Pending(record) | CrossOutcome::Committed(record) | CrossOutcome::Aborted(record) => record,
        }
    }

    pub(crate) fn of(record: TradeRecord) -> CrossOutcome {
        match record.status.as_str() {
            STATUS_COMMITTED => CrossOutcome::Committed(record),
            STATUS_ABORTED => CrossOutcome::Aborted(record),
            _ => CrossOutcome::Pending(record),
        }
    }
}

/// What one leg has in flight: created by the giver's prepare, deleted by the settle that takes
/// it (the receiver's after `committed`, the giver's after `aborted`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Escrow {
    pub trade_id: String,
    pub leg: usize,
    pub from: DocId,
    pub to: DocId,
    pub currencies: BTreeMap<String, i64>,
    /// Item id → item data, as the giver held it.
    pub items: BTreeMap<String, Value>,
}

/// The escrow document of leg `leg` of a trade (`hoard.escrow/{trade id}/{leg}`).
pub fn escrow_id(trade_id: &str, leg: usize) -> Result<DocId, TradeError> {
    let store = StoreName::new(TRADE_ESCROW_STORE).map_err(|e| TradeError::invalid(e.to_string()))?;
    let key = Key::new(format!("{trade_id}/{leg}")).map_err(|e| TradeError::invalid(format!("trade id: {e}")))?;
    Ok(DocId::new(store, key))
}

/// Checks a cross-server trade against the named limits and gives the record it starts as.
pub fn cross_record(trade: &CrossTrade) -> Result<TradeRecord, TradeError> {
    let parties = &trade.parties;
    if parties.len() < 2 || parties.len() > CROSS_TRADE_PARTIES_MAX {
        return Err(TradeError::invalid(format!("a cross-server trade has 2 to {CROSS_TRADE_PARTIES_MAX} parties")));
    }
    if parties.iter().collect::<BTreeSet<_>>().len() != parties.len() {
        return Err(TradeError::invalid("a player is a party once"));
    }
    if !(CROSS_TRADE_TIMEOUT_MS_MIN..=CROSS_TRADE_TIMEOUT_MS_MAX).contains(&trade.timeout_ms) {
        return Err(TradeError::invalid(format!(
            "timeout_ms must be {CROSS_TRADE_TIMEOUT_MS_MIN} to {CROSS_TRADE_TIMEOUT_MS_MAX} (got {})",
            trade.timeout_ms
        )));
    }
    check_shape(&Trade { id: trade.id.clone(), legs: trade.legs.clone() }, parties.len())?;
    Ok(TradeRecord {
        trade_id: trade.id.clone(),
        parties: parties.clone(),
        legs: trade
            .legs
            .iter()
            .map(|leg| RecordedLeg {
                from: parties[leg.from].clone(),
                to: parties[leg.to].clone(),
                items: leg.items.clone(),
                currencies: leg.currencies.clone(),
            })
            .collect(),
        status: STATUS_PENDING.into(),
        escrow: None,
        committed_at_ms: 0,
        timeout_ms: Some(trade.timeout_ms),
        prepared: Vec::new(),
        abort_reason: None,
    })
}

/// The store time after which the trade can no longer commit: its record's creation plus its
/// timeout (`committed_at_ms` holds the creation time of a cross-server record once read back).
pub fn deadline_ms(record: &TradeRecord) -> i64 {
    let timeout_ms = record.timeout_ms.unwrap_or(0);
    record.committed_at_ms.saturating_add(i64::try_from(timeout_ms).unwrap_or(i64::MAX))
}

/// The index of `id` among the trade's parties.
pub fn party_of(record: &TradeRecord, id: &DocId) -> Option<usize> {
    record.parties.iter().position(|party| party == id)
}

/// The record once `party` has prepared: it joins `prepared`, and the last to join decides
/// `committed`.
pub fn with_prepared(record: &TradeRecord, party: usize) -> TradeRecord {
    let mut next = record.clone();
    if !next.prepared.contains(&party) {
        next.prepared.push(party);
    }
    if next.prepared.len() == next.parties.len() {
        next.status = STATUS_COMMITTED.into();
    }
    next
}

/// The record once aborted, for `reason`.
pub fn with_aborted(record: &TradeRecord, reason: &str) -> TradeRecord {
    let mut next = record.clone();
    next.status = STATUS_ABORTED.into();
    next.abort_reason = Some(reason.to_string());
    next
}

/// The inbox message that tells a party its trade was decided (its holder settles it at once):
/// `{"hoard_trade": {"trade_id", "status"}}` (`TRADE_DECISION_MESSAGE_FIELD`).
pub fn decision_message(record: &TradeRecord) -> Value {
    serde_json::json!({ TRADE_DECISION_MESSAGE_FIELD: { "trade_id": record.trade_id, "status": record.status } })
}

/// The parties (indexes) to tell of a decision, but `except` (the one that decided, settling
/// itself): every party when committed; when aborted, only those that prepared (the others have
/// nothing to settle).
pub fn parties_to_tell(record: &TradeRecord, except: Option<usize>) -> Vec<usize> {
    let aborted = record.status == STATUS_ABORTED;
    (0..record.parties.len())
        .filter(|index| Some(*index) != except && (!aborted || record.prepared.contains(index)))
        .collect()
}

/// Prepares `party` in its holdings: takes out what it gives, one escrow per leg it gives on,
/// and marks the trade pending. Refuses on a missing item, a short balance, or too many pending
/// trades; the caller discards the copy it passed.
pub fn escrow_out(holdings: &mut Holdings, record: &TradeRecord, party: usize) -> Result<Vec<Escrow>, TradeError> {
    let me = record.parties.get(party).ok_or_else(|| TradeError::invalid("no such party"))?.clone();
    if holdings.pending_trades.len() >= PENDING_TRADES_PER_PROFILE_MAX
        && !holdings.pending_trades.contains_key(&record.trade_id)
    {
        return Err(TradeError::invalid(format!(
            "{me} has {PENDING_TRADES_PER_PROFILE_MAX} cross-server trades pending (PENDING_TRADES_PER_PROFILE_MAX); settle some first"
        )));
    }
    let mut escrows = Vec::new();
    for (index, leg) in record.legs.iter().enumerate() {
        if leg.from != me {
            continue;
        }
        let mut escrow = Escrow {
            trade_id: record.trade_id.clone(),
            leg: index,
            from: leg.from.clone(),
            to: leg.to.clone(),
            currencies: BTreeMap::new(),
            items: BTreeMap::new(),
        };
        for (currency, amount) in &leg.currencies {
            let balance = holdings.currencies.get(currency).copied().unwrap_or(0);
            if balance < *amount {
                return Err(TradeError::InsufficientBalance {
                    party: me,
                    currency: currency.clone(),
                    balance,
                    amount: *amount,
                });
            }
            holdings.currencies.insert(currency.clone(), balance - amount);
            escrow.currencies.insert(currency.clone(), *amount);
        }
        for item in &leg.items {
            let data = holdings
                .items
                .remove(item)
                .ok_or_else(|| TradeError::ItemNotHeld { party: me.clone(), item: item.clone() })?;
            escrow.items.insert(item.clone(), data);
        }
        escrows.push(escrow);
    }
    holdings.pending_trades.insert(record.trade_id.clone(), PendingTrade { party });
    Ok(escrows)
}

/// The legs whose escrows `party` takes when it settles a decided trade: those it receives when
/// committed, those it gave when aborted. Empty while pending.
pub fn legs_to_settle(record: &TradeRecord, party: usize) -> Vec<usize> {
    let Some(me) = record.parties.get(party) else { return Vec::new() };
    let committed = match record.status.as_str() {
        STATUS_COMMITTED => true,
        STATUS_ABORTED => false,
        _ => return Vec::new(),
    };
    record
        .legs
        .iter()
        .enumerate()
        .filter(|(_, leg)| if committed { &leg.to == me } else { &leg.from == me })
        .map(|(index, _)| index)
        .collect()
}

/// Settles `party` in its holdings: takes in the escrows (from `legs_to_settle`) and clears the
/// pending mark. Refuses when the trade is not pending in these holdings (already settled), or a
/// balance would overflow.
pub fn settle_in(holdings: &mut Holdings, trade_id: &str, escrows: &[Escrow]) -> Result<(), TradeError> {
    if holdings.pending_trades.remove(trade_id).is_none() {
        return Err(TradeError::invalid(format!("trade {trade_id} is not pending in this profile")));
    }
    for escrow in escrows {
        debug_assert_eq!(escrow.trade_id, trade_id, "escrows of this trade only");
        for (currency, amount) in &escrow.currencies {
            let entry = holdings.currencies.entry(currency.clone()).or_insert(0);
            *entry = entry.checked_add(*amount).ok_or_else(|| TradeError::invalid("balance overflow"))?;
        }
        for (item, data) in &escrow.items {
            if holdings.items.insert(item.clone(), data.clone()).is_some() {
                return Err(TradeError::invalid(format!("item {item} is already in the profile it would settle into")));
            }
        }
    }
    Ok(())
}
