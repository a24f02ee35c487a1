//! Sending inbox messages to a key, wherever its player is (G7).
//!
//! Invariant: a message is pushed once. A send whose outcome was hidden is resolved by reading the
//! inbox back (messages carry a unique id); when that cannot tell, the caller is told so rather
//! than risk a second copy.

use std::sync::Arc;

use serde_json::{Value, json};
use thiserror::Error;

use crate::store::{Commit, CommitOutcome, ConflictKind, DocId, Notification, StoreError, Write};

use super::engine::{EngineShared, TOPIC_INBOX};

#[derive(Debug, Error)]
pub enum SendError {
    #[error("the inbox of {id} is full; the player must come online (or an operator act) before more messages fit")]
    InboxFull { id: DocId },
    #[error("the message could not be sent: {0}")]
    Store(StoreError),
    #[error(
        "the store lost the answer and the inbox cannot tell whether the message arrived; check the player's inbox before sending again"
    )]
    OutcomeUnknown,
}

/// The field of a message body that carries its unique id.
pub const MESSAGE_ID_FIELD: &str = "message_id";

pub(crate) async fn send_message(shared: &Arc<EngineShared>, id: &DocId, body: Value) -> Result<u64, SendError> {
    let message_id = uuid::Uuid::now_v7().to_string();
    let envelope = json!({ MESSAGE_ID_FIELD: message_id, "body": body });
    let before = shared.read_with_retries(id).await.map_err(SendError::Store)?;
    let write = Write::new(id.clone()).push_message(envelope);
    for attempt in 0..shared.config.save_attempts_max {
        if attempt > 0 {
            shared.sleep_backoff(attempt - 1).await;
        }
        match shared.store.commit(Commit::single(write.clone())).await {
            Ok(CommitOutcome::Committed { applied, .. }) => {
                let seq = applied.first().and_then(|applied| applied.inbox_seqs.first().copied()).unwrap_or(0);
                announce(shared, id).await;
                return Ok(seq);
            }
            Ok(CommitOutcome::Conflict(conflict)) if conflict.kind == ConflictKind::InboxFull => {
                return Err(SendError::InboxFull { id: id.clone() });
            }
            Ok(CommitOutcome::Conflict(conflict)) => {
                return Err(SendError::Store(StoreError::corrupt(format!(
                    "unexpected conflict sending a message: {conflict}"
                ))));
            }
            Err(StoreError::InvalidInput(error)) => return Err(SendError::Store(StoreError::InvalidInput(error))),
            Err(error) if error.may_have_applied() => {
                let Ok(after) = shared.read_with_retries(id).await else { return Err(SendError::OutcomeUnknown) };
                if let Some(message) = after
                    .inbox
                    .iter()
                    .find(|m| m.body.get(MESSAGE_ID_FIELD).and_then(Value::as_str) == Some(&message_id))
                {
                    announce(shared, id).await;
                    return Ok(message.seq);
                }
                // Not waiting: either it never arrived, or it arrived and was already applied.
                // Only when no message at all arrived since our first read is a retry safe.
                if after.inbox_next_seq != before.inbox_next_seq {
                    return Err(SendError::OutcomeUnknown);
                }
            }
            Err(_) => {}
        }
    }
    Err(SendError::Store(StoreError::unavailable("the store did not take the message after every attempt")))
}

async fn announce(shared: &EngineShared, id: &DocId) {
    let payload = serde_json::to_string(id).unwrap_or_default();
    // Best effort: a holder that misses it finds the message at its next save.
    let _ = shared.store.notify(Notification { topic: TOPIC_INBOX.to_string(), payload }).await;
}
