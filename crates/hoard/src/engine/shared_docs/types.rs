//! The vocabulary of lock-free shared documents: what an update decides, what a flush did with
//! it, and why an update or a flush gave no outcome.
//!
//! Invariant: plain data, no behaviour; shared by the queues, the flush and the public handle.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use tokio::sync::oneshot;

use crate::store::DocId;

/// What an update function decides for the value it is given (`None`: the key holds no value).
#[derive(Clone, Debug, PartialEq)]
pub enum UpdateVerdict {
    /// Store this value.
    Write(Value),
    /// Delete the value.
    Delete,
    /// Change nothing, for this reason (like returning nil from Roblox's `UpdateAsync`); the
    /// other updates of the flush still apply.
    Refuse(String),
}

/// What a flush did with one update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateOutcome {
    /// The update's effect is durable in this version (or, when it changed nothing, the key was
    /// at this version when it ran).
    Applied { version: u64 },
    /// The update refused the value it was given at the flush; it changed nothing.
    Refused { reason: String },
}

/// Why an update or a flush did not give an outcome.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SharedDocError {
    #[error(
        "{id} already has {pending_max} updates waiting for a flush (shared_doc_pending_updates_max); flush it, wait for the next flush, or raise the limit"
    )]
    TooManyPending { id: DocId, pending_max: usize },
    #[error(
        "this engine already caches {keys_max} shared documents, all with updates waiting (shared_doc_keys_max); flush them or raise the limit"
    )]
    TooManyKeys { keys_max: usize },
    #[error("the engine is shutting down and takes no new shared-document updates")]
    ShuttingDown,
    #[error("the update of {id} is invalid and changed nothing: {reason}")]
    Invalid { id: DocId, reason: String },
    #[error("reading {id} failed: {message}")]
    Read { id: DocId, message: String },
    #[error(
        "the flush of {id} was not applied after {attempts} attempts: {message}; nothing of these updates was stored, issue them again"
    )]
    NotApplied { id: DocId, attempts: u32, message: String },
    #[error(
        "the store lost the answer to the flush of {id} and reading back could not tell whether it applied: the updates may or may not be stored; read the key before issuing them again"
    )]
    OutcomeUnknown { id: DocId },
    #[error(
        "the engine stopped (crash or drop) before the flush of {id} answered: the update may or may not be stored; read the key before issuing it again"
    )]
    Abandoned { id: DocId },
}

/// What one flush of one key did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushReport {
    pub updates_applied: usize,
    pub updates_refused: usize,
    /// Updates whose new value broke a store limit; each caller got `SharedDocError::Invalid`.
    pub updates_invalid: usize,
    /// The key's version after the flush; `None` when nothing was waiting (no store access).
    pub version: Option<u64>,
}

/// What `flush_all` did, key by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushAllReport {
    /// Keys that had updates waiting and were flushed.
    pub flushed: Vec<(DocId, FlushReport)>,
    pub failed: Vec<(DocId, SharedDocError)>,
}

/// An issued update: its local preview now, its durable outcome after the next flush.
#[derive(Debug)]
pub struct PendingUpdate {
    id: DocId,
    local_view: Option<Value>,
    local_refusal: Option<String>,
    answered: oneshot::Receiver<Result<UpdateOutcome, SharedDocError>>,
}

impl PendingUpdate {
    pub(super) fn new(
        id: DocId,
        local_view: Option<Value>,
        local_refusal: Option<String>,
        answered: oneshot::Receiver<Result<UpdateOutcome, SharedDocError>>,
    ) -> PendingUpdate {
        PendingUpdate { id, local_view, local_refusal, answered }
    }
}

impl PendingUpdate {
    pub fn id(&self) -> &DocId {
        &self.id
    }

    /// This engine's view of the key right after the update: the last value it saw stored with
    /// every waiting update, this one included, applied in order. A preview, not a promise.
    pub fn local_view(&self) -> Option<Value> {
        self.local_view.clone()
    }

    /// Why the update refused the local view, if it did. The flush runs it again on the stored
    /// value, which may differ, so only `durable` tells what it did.
    pub fn local_refusal(&self) -> Option<&str> {
        self.local_refusal.as_deref()
    }

    /// Waits for the flush that takes this update (the interval flush, or `flush`/`flush_all`).
    pub async fn durable(self) -> Result<UpdateOutcome, SharedDocError> {
        let id = self.id;
        // The sender is gone only when the engine stopped before the flush answered.
        self.answered.await.unwrap_or(Err(SharedDocError::Abandoned { id }))
    }
}
