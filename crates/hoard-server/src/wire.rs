//! The JSON shapes of the public routes that are not the store's own types.
//!
//! Invariant: a session token names exactly what the store fences on — holder, epoch and key —
//! so the server needs no memory of sessions: a token is valid exactly while the store's lease
//! of that key names that holder at that epoch.

use hoard::store::{DocId, Document, HolderId, InboxMessage};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::ApiError;

/// What `POST /v1/sessions/start` returns and every session route takes. Not secret, and
/// unforgeable in effect: it writes only while the store's lease still names its holder at its
/// epoch, and only the key that registered the holder may use it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionToken {
    pub holder: String,
    pub epoch: u64,
    pub store: String,
    pub key: String,
}

impl SessionToken {
    pub fn new(holder: &HolderId, epoch: u64, id: &DocId) -> SessionToken {
        SessionToken { holder: holder.to_string(), epoch, store: id.store.to_string(), key: id.key.to_string() }
    }

    pub fn holder_id(&self) -> Result<HolderId, ApiError> {
        HolderId::new(self.holder.clone()).map_err(|e| ApiError::bad_request(format!("token holder: {e}")))
    }

    pub fn doc_id(&self) -> Result<DocId, ApiError> {
        DocId::parse(&self.store, &self.key).map_err(|e| ApiError::bad_request(format!("token: {e}")))
    }
}

/// A key's stored state, as a `stale` answer carries it: the client adopts it (rebasing its
/// unsaved changes onto `value`) and writes again with `version` as its `base_version`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CurrentDocument {
    pub store: String,
    pub key: String,
    /// `null`: never written, or deleted.
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    /// The `base_version` of the next write.
    pub version: u64,
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
    pub user_ids: Vec<String>,
    /// Messages still waiting.
    #[schema(value_type = Vec<Object>)]
    pub inbox: Vec<InboxMessage>,
}

impl CurrentDocument {
    pub fn of(document: Document) -> CurrentDocument {
        CurrentDocument {
            store: document.id.store.to_string(),
            key: document.id.key.to_string(),
            value: document.value,
            version: document.version,
            attributes: document.attributes,
            user_ids: document.user_ids,
            inbox: document.inbox,
        }
    }
}

/// A party's value and version after a server-side change (trade, receipt, update): the client
/// adopts them when `version` is newer than its `base_version` (see README, "Client rules").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PartyState {
    pub store: String,
    pub key: String,
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    pub version: u64,
}

impl PartyState {
    pub fn new(id: &DocId, value: Option<Value>, version: u64) -> PartyState {
        PartyState { store: id.store.to_string(), key: id.key.to_string(), value, version }
    }

    pub fn of(document: &Document) -> PartyState {
        PartyState::new(&document.id, document.value.clone(), document.version)
    }
}

/// For `skip_serializing_if`: flags such as `replayed` appear only when true.
pub fn is_false(value: &bool) -> bool {
    !*value
}

/// Query of `GET /v1/stores/{store}/keys`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only keys starting with this (literal, case-sensitive).
    #[serde(default)]
    pub prefix: String,
    /// Start after this key: the `next_after` of the previous page.
    pub after: Option<String>,
    /// Page size (0 or absent: the store's default; capped at its maximum).
    #[serde(default)]
    pub limit: usize,
}

/// Query of `GET /v1/stores/{store}/keys/{key}/versions`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VersionParams {
    /// List versions strictly older than this one.
    pub before: Option<u64>,
    #[serde(default)]
    pub limit: usize,
}

/// A key's document as stored (value, version, times, attributes, user ids, lease, inbox).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(value_type = Object)]
pub struct DocumentSchema(pub serde_json::Value);

/// The JSON shapes of the raw store protocol (`/v1/store/*`): the hoard library's store types
/// (`hoard::store::*`) as serde writes them, described for the OpenAPI document only. Enums are
/// externally tagged: a unit variant is a string (`"Absent"`), the others an object with one
/// field named after the variant (`{"Version": 3}`).
///
/// Invariant: each type here mirrors the library type of the same name field for field; the
/// raw routes decode into the library types themselves, so these never parse anything.
pub mod store {
    use serde_json::{Map, Value};
    use utoipa::ToSchema;

    /// Any JSON value (a stored value is whatever JSON the game keeps).
    #[derive(Debug, ToSchema)]
    #[schema(value_type = Object)]
    pub struct JsonValue(pub Value);

    /// One key in a named store (`hoard::store::DocId`).
    #[derive(Debug, ToSchema)]
    pub struct DocId {
        pub store: String,
        pub key: String,
    }

    /// A precondition on one key, checked inside the commit (`hoard::store::Condition`).
    #[derive(Debug, ToSchema)]
    #[schema(no_recursion)]
    pub enum Condition {
        /// No precondition.
        None,
        /// The key holds no value (never written, or deleted).
        Absent,
        /// The key's version equals this (0: never written).
        Version(u64),
        /// The key's lease names this holder at this epoch: the fence of every session write.
        Lease { holder: String, epoch: u64 },
        /// No live holder, by the store's clock.
        LeaseFree,
        /// The store's clock is before this time (ms since the Unix epoch), whatever the key.
        Before(i64),
        /// Every one of these (flat, at most 4).
        All(Vec<Condition>),
    }

    /// What a write does to the value (`hoard::store::ValueOp`).
    #[derive(Debug, ToSchema)]
    pub enum ValueOp {
        Keep,
        Put(JsonValue),
        /// Leaves a tombstone in history.
        Delete,
        /// Adds to an integer value (absent counts as 0).
        Increment(i64),
    }

    /// What a write does to the lease (`hoard::store::LeaseOp`).
    #[derive(Debug, ToSchema)]
    pub enum LeaseOp {
        Keep,
        /// Name this holder and bump the epoch.
        Acquire(String),
        /// Clear the holder; the epoch stays.
        Release,
    }

    /// One key's part of a commit (`hoard::store::Write`).
    #[derive(Debug, ToSchema)]
    pub struct Write {
        pub id: DocId,
        pub condition: Condition,
        pub value: ValueOp,
        /// An object replaces the attributes; `null` keeps them.
        #[schema(value_type = Option<Object>)]
        pub attributes: Option<Map<String, Value>>,
        /// A list replaces the user ids; `null` keeps them.
        pub user_ids: Option<Vec<String>>,
        pub lease: LeaseOp,
        /// Messages appended to the inbox, in order.
        #[schema(value_type = Vec<Object>)]
        pub inbox_push: Vec<Value>,
        /// Removes every inbox message with `seq` up to this.
        pub inbox_ack_through: Option<u64>,
    }

    /// A conditional multi-key atomic commit (`hoard::store::Commit`): all writes apply or none.
    #[derive(Debug, ToSchema)]
    pub struct Commit {
        /// A UUID (v7) naming the commit, recorded in history so a lost answer can be resolved.
        pub id: String,
        pub writes: Vec<Write>,
    }

    /// What one write of a committed commit left (`hoard::store::Applied`).
    #[derive(Debug, ToSchema)]
    pub struct Applied {
        pub id: DocId,
        pub version: u64,
        pub epoch: u64,
        pub inbox_seqs: Vec<u64>,
        pub inbox_last_waiting_seq: u64,
    }

    /// Why a condition failed (`hoard::store::ConflictKind`).
    #[derive(Debug, ToSchema)]
    pub enum ConflictKind {
        Exists,
        VersionMismatch,
        LeaseMismatch,
        LeaseHeld,
        NotAnInteger,
        IncrementOverflow,
        InboxFull,
        ValueTooLarge,
        DeadlinePassed,
    }

    /// Who holds a key, and its fencing epoch (`hoard::store::LeaseState`).
    #[derive(Debug, ToSchema)]
    pub struct LeaseState {
        pub holder: Option<String>,
        pub epoch: u64,
    }

    /// The key-level facts a failed condition was judged on (`hoard::store::Found`).
    #[derive(Debug, ToSchema)]
    pub struct Found {
        pub exists: bool,
        pub version: u64,
        pub lease: LeaseState,
        pub holder_expires_at_ms: Option<i64>,
        pub inbox_len: u64,
    }

    /// A failed condition: nothing in the commit applied (`hoard::store::Conflict`).
    #[derive(Debug, ToSchema)]
    pub struct Conflict {
        /// Index of the failing write.
        pub write_index: u64,
        pub id: DocId,
        pub kind: ConflictKind,
        pub found: Found,
    }

    /// The answer of a commit (`hoard::store::CommitOutcome`): a conflict is an answer, not an
    /// error.
    #[derive(Debug, ToSchema)]
    pub enum CommitOutcome {
        Committed { commit_id: String, at_ms: i64, applied: Vec<Applied> },
        Conflict(Conflict),
    }

    /// One inbox message (`hoard::store::InboxMessage`).
    #[derive(Debug, ToSchema)]
    pub struct InboxMessage {
        pub seq: u64,
        #[schema(value_type = Object)]
        pub body: Value,
        pub sent_at_ms: i64,
    }

    /// A key's full stored state (`hoard::store::Document`).
    #[derive(Debug, ToSchema)]
    pub struct Document {
        pub id: DocId,
        /// `null`: never written, or deleted.
        #[schema(value_type = Option<Object>)]
        pub value: Option<Value>,
        /// 0: never written.
        pub version: u64,
        pub created_at_ms: i64,
        pub updated_at_ms: i64,
        #[schema(value_type = Object)]
        pub attributes: Map<String, Value>,
        pub user_ids: Vec<String>,
        pub lease: LeaseState,
        pub inbox: Vec<InboxMessage>,
        pub inbox_next_seq: u64,
        pub last_commit_id: Option<String>,
    }

    /// A page of keys (`hoard::store::KeyPage`).
    #[derive(Debug, ToSchema)]
    pub struct KeyPage {
        pub keys: Vec<String>,
        /// Pass as `after` for the next page; `null` on the last page.
        pub next_after: Option<String>,
    }

    /// One history entry, without its value (`hoard::store::VersionInfo`).
    #[derive(Debug, ToSchema)]
    pub struct VersionInfo {
        pub version: u64,
        pub written_at_ms: i64,
        pub deleted: bool,
        pub value_bytes: u64,
        pub commit_id: String,
    }

    /// One past version with its contents (`hoard::store::VersionRecord`).
    #[derive(Debug, ToSchema)]
    pub struct VersionRecord {
        pub info: VersionInfo,
        #[schema(value_type = Option<Object>)]
        pub value: Option<Value>,
        #[schema(value_type = Object)]
        pub attributes: Map<String, Value>,
        pub user_ids: Vec<String>,
    }

    /// A holder's process lease (`hoard::store::HolderLease`).
    #[derive(Debug, ToSchema)]
    pub struct HolderLease {
        pub holder: String,
        pub expires_at_ms: i64,
    }

    /// A best-effort wake-up between processes (`hoard::store::Notification`).
    #[derive(Debug, ToSchema)]
    pub struct Notification {
        pub topic: String,
        pub payload: String,
    }

    /// `GET /v1/store/info`: the backend behind the server and its limits.
    #[derive(Debug, ToSchema)]
    pub struct StoreInfo {
        pub backend: String,
        /// `hoard::store::Limits`: every size and count the store enforces.
        #[schema(value_type = Object)]
        pub limits: Value,
    }

    /// `GET /v1/store/now`: the store's clock.
    #[derive(Debug, ToSchema)]
    pub struct StoreNow {
        pub now_ms: i64,
    }

    /// `POST /v1/store/prune`: history entries removed.
    #[derive(Debug, ToSchema)]
    pub struct Pruned {
        pub pruned: u64,
    }

    /// The empty object some raw routes answer.
    #[derive(Debug, ToSchema)]
    pub struct Empty {}
}
