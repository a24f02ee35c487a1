//! Store errors: what went wrong, and whether the commit may have applied.
//!
//! Invariant: an expected outcome (a failed condition) is never an error; it is a
//! `CommitOutcome::Conflict`. Errors are for bad input, unreachable or failing databases, and
//! stored data the store cannot read. `OutcomeUnknown` is the only error after which a commit may
//! have applied; callers resolve it by reading back (`store::resolve_unknown_commit`). Every
//! message names the cause and, where the caller can act, what to do (the backends' error texts
//! go through `sqlite::describe_error` and `postgres::describe_error`, which add both).

use thiserror::Error;

use super::types::DocId;

/// Input that breaks a documented rule or limit. Nothing was stored.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum InvalidInput {
    #[error("{what} is empty; give a non-empty {what}")]
    Empty { what: &'static str },
    #[error("{what} is {bytes} bytes, over the limit of {bytes_max} bytes")]
    TooLong { what: &'static str, bytes: usize, bytes_max: usize },
    #[error("{what} has a control character at position {position}; use printable characters only")]
    ControlCharacter { what: &'static str, position: usize },
    #[error("{what} has {count} entries, over the limit of {count_max}")]
    TooMany { what: &'static str, count: usize, count_max: usize },
    #[error("value is not valid JSON: {reason}")]
    NotJson { reason: String },
    #[error("{what} is nested {depth} deep, over the limit of {depth_max} (arrays and objects inside one another)")]
    TooDeep { what: &'static str, depth: usize, depth_max: usize },
    #[error("value holds a number JSON cannot represent (NaN or infinity)")]
    NotFinite,
    #[error("commit has no writes; give at least one")]
    EmptyCommit,
    #[error("commit writes key {key} twice; merge the writes into one")]
    DuplicateKey { key: String },
    #[error("{what} must be {expected}")]
    Malformed { what: &'static str, expected: &'static str },
    #[error("version {version} of {key} is not in history (pruned or never written)")]
    NoSuchVersion { key: String, version: u64 },
    /// Refused by a remote store (`hoard serve`), whose message says which rule was broken.
    #[error("refused by the remote store: {message}")]
    Remote { message: String },
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("invalid input: {0}")]
    InvalidInput(#[from] InvalidInput),
    /// The store could not be reached or refused the request; the commit did not apply.
    #[error("store unavailable (nothing applied): {message}")]
    Unavailable { message: String },
    /// The connection failed while the commit was in flight: it may or may not have applied.
    #[error("commit outcome unknown (it may have applied; read back before deciding): {message}")]
    OutcomeUnknown { message: String },
    /// Stored data that this version of hoard cannot read.
    #[error("stored data is unreadable: {message}")]
    Corrupt { message: String },
    /// One key's stored JSON that its reader refuses (nested past what the reader accepts,
    /// written before the depth limit existed, or damaged outside hoard). Names the key and
    /// carries the stored text, so that it can be quarantined, read raw and repaired instead of
    /// failing every route that touches it.
    #[error("{0}")]
    Unreadable(Box<Unreadable>),
    /// The store is closed or shutting down.
    #[error("store is closed")]
    Closed,
    /// The location names no database this hoard may use: nothing there when it must exist, an
    /// SQLite file of another application (or not an SQLite file at all), or a PostgreSQL
    /// database without hoard's schema. Nothing was created or changed; the message says what to
    /// do. Not transient: the same location gives the same answer until someone changes it.
    #[error("{message}")]
    WrongDatabase { message: String },
}

impl StoreError {
    /// True when retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. } | StoreError::OutcomeUnknown { .. })
    }

    /// True when the request may have changed the store.
    pub fn may_have_applied(&self) -> bool {
        matches!(self, StoreError::OutcomeUnknown { .. })
    }

    pub fn unavailable(message: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable { message: message.to_string() }
    }

    pub fn outcome_unknown(message: impl std::fmt::Display) -> StoreError {
        StoreError::OutcomeUnknown { message: message.to_string() }
    }

    pub fn corrupt(message: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt { message: message.to_string() }
    }

    pub fn wrong_database(message: impl std::fmt::Display) -> StoreError {
        StoreError::WrongDatabase { message: message.to_string() }
    }

    /// A key's stored `field` (at `version`) whose JSON text `raw` did not parse.
    pub fn unreadable(
        id: &DocId,
        version: u64,
        field: &'static str,
        reason: impl std::fmt::Display,
        raw: &str,
    ) -> StoreError {
        StoreError::Unreadable(Box::new(Unreadable {
            id: id.clone(),
            version,
            field,
            reason: reason.to_string(),
            raw_text: RawText(raw.to_string()),
        }))
    }
}

/// What `StoreError::Unreadable` knows of an unreadable key.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error(
    "the stored {field} of {id} (version {version}) cannot be read: {reason}; it is quarantined: read it raw and repair it"
)]
pub struct Unreadable {
    pub id: DocId,
    /// The row's version (the history version, for a history entry).
    pub version: u64,
    /// Which stored field: `value`, `attributes`, `user ids`, `inbox`, or a history field.
    pub field: &'static str,
    pub reason: String,
    pub raw_text: RawText,
}

/// Stored JSON text, kept whole for an operator; its `Debug` shows only its length, so logs of
/// an error never carry a player's data.
#[derive(Clone, PartialEq, Eq)]
pub struct RawText(pub String);

impl std::fmt::Debug for RawText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawText({} bytes)", self.0.len())
    }
}
