//! A trade among sessions of one engine: one fenced transaction that applies the legs, inserts
//! the record and the per-party log entries (G3).
//!
//! Invariants:
//! - No read before the attempt: the record is written with `Absent`, so a trade id that already
//!   committed makes the commit conflict (or its legs refuse), and only then is the first record
//!   read and compared. A new trade, the common case, costs one commit.
//! - A replay whose party has since ended or been fenced out still learns that the trade
//!   committed (the record is read after any failure).

use std::sync::Arc;

use crate::store::{Condition, ConflictKind, DocId, Key, ListQuery, StoreError, StoreName, Write};

use super::super::core::Core;
use super::super::session::Session;
use super::super::transaction::{TransactError, transact};
use super::legs::{apply_legs, check_shape};
use super::record::{already, log_id, read_record, record_for, record_id};
use super::{TRADE_LOG_STORE, Tradable, Trade, TradeError, TradeOutcome, TradeRecord};

/// Trades items and currencies among sessions held by this engine, atomically (G3).
/// Idempotent by `trade.id`: a retry returns the first result and moves nothing.
pub(crate) async fn trade_local<P: Tradable>(
    core: &Arc<Core>,
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
    let result = transact(core, sessions, &[], |context| {
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
        // Resolved by reading back: the record is there, with the store's commit time.
        Ok(((), None)) => match trade_record(core, &trade.id).await? {
            Some(first) => Ok(TradeOutcome::Committed(first)),
            None => Err(TradeError::Store(StoreError::corrupt(format!(
                "trade {} committed but its record is missing",
                trade.id
            )))),
        },
        Err(TransactError::Conflict(conflict)) if conflict.kind == ConflictKind::Exists => {
            // Another attempt with this id committed first.
            match trade_record(core, &trade.id).await? {
                Some(first) => already(first, &record),
                None => Err(TradeError::Transaction(TransactError::Conflict(conflict))),
            }
        }
        Err(TransactError::Refused { reason }) => {
            // A concurrent retry of this very trade may have moved the items already.
            if let Some(first) = trade_record(core, &trade.id).await? {
                return already(first, &record);
            }
            Err(refusal.unwrap_or(TradeError::Invalid { reason }))
        }
        // Nothing was attempted: no record to read (a party of another engine trades with
        // `Engine::trade_across`).
        Err(error @ (TransactError::OnAnotherEngine { .. } | TransactError::BadParties { .. })) => {
            Err(TradeError::Transaction(error))
        }
        Err(error) => {
            // A replay whose party has since ended or been fenced out still learns that the
            // trade committed (nothing was read before the attempt).
            match trade_record(core, &trade.id).await {
                Ok(Some(first)) => already(first, &record),
                Ok(None) | Err(_) => Err(TradeError::Transaction(error)),
            }
        }
    }
}

/// Reads a trade's record.
pub(crate) async fn trade_record(core: &Core, trade_id: &str) -> Result<Option<TradeRecord>, TradeError> {
    Ok(read_record(core, trade_id).await?.record)
}

/// Lists a player's trades (ids), oldest id first, a page at a time.
pub(crate) async fn trades_of(
    core: &Core,
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
    let page = core
        .store()
        .list_keys(&store, &ListQuery { prefix: prefix.clone(), after, limit })
        .await
        .map_err(TradeError::Store)?;
    Ok(page.keys.iter().filter_map(|key| key.as_str().strip_prefix(&prefix).map(str::to_string)).collect())
}
