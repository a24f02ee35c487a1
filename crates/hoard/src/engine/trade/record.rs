//! A trade's durable traces: its record (`hoard.trades/<trade id>`, written with
//! `Condition::Absent`, so a trade id commits at most once), one log entry per party
//! (`hoard.trade_log/<store>/<key>/<trade id>`), and how a replay is told apart.
//!
//! Invariant: "first" is decided by the commit that inserted the record; a replay is compared
//! with that record (same parties and legs: `AlreadyCommitted`; anything else: refused).

use crate::store::{DocId, Key, StoreError, StoreName};

use super::super::core::Core;

use super::{
    RecordedLeg, STATUS_COMMITTED, TRADE_LOG_STORE, TRADE_RECORD_STORE, Trade, TradeError, TradeOutcome, TradeRecord,
};

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
        status: STATUS_COMMITTED.into(),
        escrow: None,
        committed_at_ms: 0,
        timeout_ms: None,
        prepared: Vec::new(),
        abort_reason: None,
    }
}

/// Decides a replay: the same trade again is `AlreadyCommitted`, another trade with the id (or a
/// cross-server trade's id, whatever its state) is refused.
pub fn already(first: TradeRecord, attempted: &TradeRecord) -> Result<TradeOutcome, TradeError> {
    if first.same_trade(attempted) && first.status == STATUS_COMMITTED && first.timeout_ms.is_none() {
        Ok(TradeOutcome::AlreadyCommitted(first))
    } else {
        Err(TradeError::TradeIdReused { trade_id: first.trade_id.clone(), first: Box::new(first) })
    }
}

/// A trade's record as read, with the version of its document (0: never written).
pub(crate) struct RecordRead {
    pub record: Option<TradeRecord>,
    pub version: u64,
}

/// Reads a trade's record; `committed_at_ms` is filled with the store time the record was created.
pub(crate) async fn read_record(core: &Core, trade_id: &str) -> Result<RecordRead, TradeError> {
    let id = record_id(trade_id)?;
    let document = core.read(&id).await.map_err(TradeError::Store)?;
    let Some(value) = document.value else { return Ok(RecordRead { record: None, version: document.version }) };
    let mut record: TradeRecord = serde_json::from_value(value)
        .map_err(|e| TradeError::Store(StoreError::corrupt(format!("trade record {trade_id}: {e}"))))?;
    record.committed_at_ms = document.created_at_ms;
    Ok(RecordRead { record: Some(record), version: document.version })
}
