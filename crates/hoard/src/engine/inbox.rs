//! Sending inbox messages to a key, wherever its player is (G7). The receiving side (coalesced
//! checks after a notification) is `listener` and `inbox_checks`.
//!
//! Invariants:
//! - A message is pushed once. Each carries an id unique to this engine incarnation (its holder
//!   id and a counter: no clock, replayable); a send whose outcome was hidden is resolved by
//!   finding that id in the inbox. When that cannot tell, the caller is told so rather than
//!   risk a second copy.
//! - Attempts go through the retry helper: transient failures only, bounded by
//!   `save_attempts_max`.

use std::sync::Arc;

use serde_json::{Value, json};
use thiserror::Error;

use crate::retry::Attempt;
use crate::store::{Commit, CommitOutcome, ConflictKind, DocId, StoreError, Write};

use super::core::Core;
use super::protocol::inbox_notification;

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

pub(crate) async fn send_message(core: &Arc<Core>, id: &DocId, body: Value) -> Result<u64, SendError> {
    let message_id = format!("{}/{}", core.holder(), core.next_message_number());
    let envelope = json!({ MESSAGE_ID_FIELD: message_id, "body": body });
    let before = core.read(id).await.map_err(SendError::Store)?;
    let write = Write::new(id.clone()).push_message(envelope);
    let sent = core
        .retry("send an inbox message", core.config().save_attempts_max)
        .run(|_| async {
            match core.store().commit(Commit::single(write.clone())).await {
                Ok(CommitOutcome::Committed { applied, .. }) => {
                    match applied.first().and_then(|applied| applied.inbox_seqs.first().copied()) {
                        Some(seq) => Attempt::Done(Ok(seq)),
                        None => {
                            Attempt::Fail(StoreError::corrupt("a message push committed without a sequence number"))
                        }
                    }
                }
                Ok(CommitOutcome::Conflict(conflict)) if conflict.kind == ConflictKind::InboxFull => {
                    Attempt::Done(Err(SendError::InboxFull { id: id.clone() }))
                }
                Ok(CommitOutcome::Conflict(conflict)) => {
                    Attempt::Fail(StoreError::corrupt(format!("unexpected conflict sending a message: {conflict}")))
                }
                Err(error) if error.may_have_applied() => {
                    let Ok(after) = core.read(id).await else { return Attempt::Done(Err(SendError::OutcomeUnknown)) };
                    let arrived = after
                        .inbox
                        .iter()
                        .find(|m| m.body.get(MESSAGE_ID_FIELD).and_then(Value::as_str) == Some(message_id.as_str()));
                    if let Some(message) = arrived {
                        return Attempt::Done(Ok(message.seq));
                    }
                    // Not waiting: either it never arrived, or it arrived and was already applied.
                    // Only when no message at all arrived since our first read is a retry safe.
                    if after.inbox_next_seq != before.inbox_next_seq {
                        return Attempt::Done(Err(SendError::OutcomeUnknown));
                    }
                    Attempt::Retry(error)
                }
                Err(error) if error.is_transient() => Attempt::Retry(error),
                Err(error) => Attempt::Fail(error),
            }
        })
        .await
        .map_err(|gave_up| SendError::Store(gave_up.into_error()))??;
    // Best effort: a holder that misses it finds the message at its next save.
    if let Err(error) = core.store().notify(inbox_notification(id)).await {
        tracing::debug!(%id, %error, "an inbox notification was not sent; the holder finds the message at its next save");
    }
    Ok(sent)
}
