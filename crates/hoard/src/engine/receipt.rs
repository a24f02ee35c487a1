//! Purchase receipts (G4): a grant and its purchase id in one fenced commit, exactly once.
//!
//! Invariants:
//! - "Granted" is returned only after the grant and the receipt record are durable in the same
//!   commit; anything else is `NotProcessedYet`, so the platform retries.
//! - The receipt record is written with `Condition::Absent`: the commit that inserts it decides
//!   "first", across servers and retries (never a timestamp comparison, Nakama's trap).
//! - Records are kept for the life of the store, not a window of recent ids; the same id with a
//!   different payload or player is refused.
//! - An errored or fenced-out session never grants.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{Condition, ConflictKind, DocId, Key, StoreName, Write};

use std::sync::Arc;

use super::core::Core;
use super::session::{Profile, Session};
use super::transaction::{TransactError, transact};

/// The named store of receipt records, keyed `{profile store}/{purchase id}`.
pub const RECEIPT_STORE: &str = "hoard.receipts";
pub const PURCHASE_ID_BYTES_MAX: usize = 128;

/// What to tell the platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptOutcome {
    /// Granted now, durably (Roblox: `PurchaseGranted`).
    Granted,
    /// Granted before (by this or another server); nothing was granted now.
    AlreadyGranted,
    /// Not granted; the platform should retry later (Roblox: `NotProcessedYet`).
    NotProcessedYet { reason: String },
    /// The purchase id was used with another payload or player: never granted.
    Refused { reason: String },
}

/// The durable record of a processed purchase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReceiptRecord {
    pub purchase_id: String,
    pub player: DocId,
    pub payload: Value,
}

/// The document recording a purchase of a player in `store` (`hoard.receipts/{store}/{purchase id}`).
pub fn receipt_id(store: &StoreName, purchase_id: &str) -> Result<DocId, String> {
    if purchase_id.is_empty() || purchase_id.len() > PURCHASE_ID_BYTES_MAX {
        return Err(format!("purchase id must be 1 to {PURCHASE_ID_BYTES_MAX} bytes"));
    }
    let receipts = StoreName::new(RECEIPT_STORE).map_err(|e| e.to_string())?;
    let key = Key::new(format!("{store}/{purchase_id}")).map_err(|e| format!("purchase id: {e}"))?;
    Ok(DocId::new(receipts, key))
}

/// Decides a replay: the same purchase again is `AlreadyGranted`, a different one is `Refused`.
pub fn compare(first: &ReceiptRecord, attempted: &ReceiptRecord) -> ReceiptOutcome {
    if first.player == attempted.player && first.payload == attempted.payload {
        ReceiptOutcome::AlreadyGranted
    } else {
        ReceiptOutcome::Refused {
            reason: format!(
                "purchase {} was already processed for {} with a different payload; it is never granted twice",
                first.purchase_id, first.player
            ),
        }
    }
}

/// Processes a purchase receipt: runs `grant` on the player's profile and records the purchase
/// id in the same fenced commit. Safe to call any number of times, on any server.
pub(crate) async fn process_receipt<P: Profile>(
    core: &Arc<Core>,
    session: &Session<P>,
    purchase_id: &str,
    payload: Value,
    mut grant: impl FnMut(&mut P) -> Result<(), String>,
) -> ReceiptOutcome {
    let id = match receipt_id(&session.id().store, purchase_id) {
        Ok(id) => id,
        Err(reason) => return ReceiptOutcome::Refused { reason },
    };
    let attempted = ReceiptRecord { purchase_id: purchase_id.to_string(), player: session.id().clone(), payload };
    if session.is_errored() {
        return ReceiptOutcome::NotProcessedYet { reason: "the session plays on default data and never grants".into() };
    }
    // No read of the record first: it is written with `Absent`, so a purchase processed
    // before makes this commit conflict (or the grant refuse), and only then is the first
    // record read. A new purchase, the common case, costs one commit.
    let record = match serde_json::to_value(&attempted) {
        Ok(record) => record,
        Err(error) => return ReceiptOutcome::Refused { reason: error.to_string() },
    };
    let result = transact(core, &[session], &[], |context| {
        let profile = context.profiles.first_mut().expect("a receipt's transaction has its one party");
        grant(profile)?;
        context.add_write(Write::put(id.clone(), record.clone()).when(Condition::Absent));
        Ok(())
    })
    .await;
    match result {
        Ok(((), _)) => ReceiptOutcome::Granted,
        Err(TransactError::Conflict(conflict)) if conflict.kind == ConflictKind::Exists && conflict.id == id => {
            match receipt_record(core, &id).await {
                Ok(Some(first)) => compare(&first, &attempted),
                Ok(None) => ReceiptOutcome::NotProcessedYet { reason: "the receipt record vanished".into() },
                Err(reason) => ReceiptOutcome::NotProcessedYet { reason },
            }
        }
        Err(TransactError::Refused { reason }) => match receipt_record(core, &id).await {
            // Processed before: the grant may refuse now (say, a one-time item already held).
            Ok(Some(first)) => compare(&first, &attempted),
            Ok(None) => ReceiptOutcome::NotProcessedYet { reason },
            Err(reason) => ReceiptOutcome::NotProcessedYet { reason },
        },
        // A replay on a session that has since ended or been fenced out still learns that
        // the purchase was granted (nothing was read before the attempt).
        Err(error) => match receipt_record(core, &id).await {
            Ok(Some(first)) => compare(&first, &attempted),
            Ok(None) | Err(_) => ReceiptOutcome::NotProcessedYet { reason: error.to_string() },
        },
    }
}

async fn receipt_record(core: &Core, id: &DocId) -> Result<Option<ReceiptRecord>, String> {
    let document = core.read(id).await.map_err(|e| e.to_string())?;
    match document.value {
        None => Ok(None),
        Some(value) => serde_json::from_value(value).map(Some).map_err(|e| format!("unreadable receipt record: {e}")),
    }
}
