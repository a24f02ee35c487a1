//! Engine errors and the expected outcomes a game must handle.
//!
//! Invariant: a game can tell from the variant alone what to do: retry later (`Locked`,
//! `Store`, `Busy`, `LeaseLapsed`), kick the player (`FencedOut`, `HandedOff`), fix its code or
//! data (`Invalid`, `Quarantined`, `NewerData`), or stop (`ShuttingDown`).

use thiserror::Error;

use crate::store::{DocId, HolderId, StoreError};

use super::schema::{DecodeError, EncodeError};

/// Why a session could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("{id} is held by {holder} and the start policy does not allow taking it; try again later")]
    Locked { id: DocId, holder: HolderId },
    #[error("the engine is shutting down and starts no new sessions")]
    ShuttingDown,
    #[error("this engine already has {sessions_max} live sessions (sessions_max); end some or raise the limit")]
    TooManySessions { sessions_max: usize },
    #[error(
        "{id} holds a value that is not a valid profile; it is kept untouched (quarantined) for an operator: {reason}"
    )]
    Quarantined { id: DocId, reason: String },
    #[error("{id} was saved by a newer game version this server cannot read: {source}")]
    NewerData { id: DocId, source: DecodeError },
    #[error("{id} is already open on this engine with another profile type")]
    TypeMismatch { id: DocId },
    #[error("loading {id} failed: {source}")]
    Store { id: DocId, source: StoreError },
    #[error("invalid key: {0}")]
    InvalidKey(crate::store::InvalidInput),
    #[error("the start of {id} was cancelled")]
    Cancelled { id: DocId },
}

/// Why a session operation failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SessionError {
    #[error("the session has ended; start a new one")]
    Ended,
    #[error("another server took this key; this session can never write again: kick the player")]
    FencedOut,
    #[error("this key was handed over to another server on request: kick or move the player")]
    HandedOff,
    #[error("this session plays on default data after a failed load; it never saves, trades or grants")]
    Errored,
    #[error("a transaction on this session is committing; try again in a moment")]
    Busy,
    #[error(
        "this engine could not renew its lease in time, so another server may take this key: changes wait until the lease is renewed and the key confirmed (status LeaseLapsed)"
    )]
    LeaseLapsed,
    #[error("the profile failed validation and was not saved: {reason}")]
    Invalid { reason: String },
    #[error("the store failed: {message}")]
    Store { message: String },
    #[error("saving failed after {attempts} attempts: {message}; the session stays dirty and autosave tries again")]
    SaveFailed { attempts: u32, message: String },
}

impl From<EncodeError> for SessionError {
    fn from(error: EncodeError) -> SessionError {
        SessionError::Invalid { reason: error.to_string() }
    }
}
