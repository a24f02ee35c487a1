//! The store's vocabulary: documents, conditions, writes, commits and their outcomes.
//!
//! Invariant: these types say *what* a backend must do, never *how*; every backend
//! interprets them through `store::apply`, so the semantics cannot drift between engines.
//! Validated names (`StoreName`, `Key`, `HolderId`) can only be built through their
//! checking constructors, so a backend never sees an empty, oversized or control-character key.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

use super::error::InvalidInput;
use super::limits::Limits;

/// A named store (like a Roblox DataStore name): one database serves many games or data kinds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StoreName(String);

/// A key inside a named store.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Key(String);

/// The identity of a lease holder: one per engine process incarnation (see ARCHITECTURE.md).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HolderId(String);

fn check_name(kind: &'static str, text: &str, bytes_max: usize) -> Result<(), InvalidInput> {
    if text.is_empty() {
        return Err(InvalidInput::Empty { what: kind });
    }
    if text.len() > bytes_max {
        return Err(InvalidInput::TooLong { what: kind, bytes: text.len(), bytes_max });
    }
    if let Some(position) = text.chars().position(char::is_control) {
        return Err(InvalidInput::ControlCharacter { what: kind, position });
    }
    Ok(())
}

macro_rules! checked_name {
    ($type:ident, $kind:literal, $limit:ident) => {
        impl $type {
            /// Checks the text against the default limits (see `Limits`).
            pub fn new(text: impl Into<String>) -> Result<Self, InvalidInput> {
                Self::with_limits(text, &Limits::default())
            }

            /// Checks the text against the given limits.
            pub fn with_limits(text: impl Into<String>, limits: &Limits) -> Result<Self, InvalidInput> {
                let text = text.into();
                check_name($kind, &text, limits.$limit)?;
                Ok(Self(text))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $type {
            type Error = InvalidInput;
            fn try_from(text: String) -> Result<Self, Self::Error> {
                Self::new(text)
            }
        }

        impl From<$type> for String {
            fn from(name: $type) -> String {
                name.0
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

checked_name!(StoreName, "store name", store_name_bytes_max);
checked_name!(Key, "key", key_bytes_max);
checked_name!(HolderId, "holder id", holder_id_bytes_max);

impl HolderId {
    /// A fresh, unique holder id for one engine process incarnation.
    pub fn generate(label: &str) -> HolderId {
        let label: String = label.chars().filter(|c| !c.is_control()).take(48).collect();
        HolderId(format!("{label}-{}", uuid::Uuid::now_v7()))
    }
}

/// The address of one document: a key in a named store.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DocId {
    pub store: StoreName,
    pub key: Key,
}

impl DocId {
    pub fn new(store: StoreName, key: Key) -> DocId {
        DocId { store, key }
    }

    /// Builds a `DocId` from two texts, checking both with the default limits.
    pub fn parse(store: &str, key: &str) -> Result<DocId, InvalidInput> {
        Ok(DocId { store: StoreName::new(store)?, key: Key::new(key)? })
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.store, self.key)
    }
}

/// Identifies one commit, so that a caller who lost the answer can find out whether it applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommitId(pub uuid::Uuid);

impl CommitId {
    pub fn generate() -> CommitId {
        CommitId(uuid::Uuid::now_v7())
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Who holds a key's lease, and the key's fencing epoch.
///
/// The epoch only grows: every acquisition bumps it, and a release keeps it, so a holder that
/// lost the key can never match it again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseState {
    pub holder: Option<HolderId>,
    pub epoch: u64,
}

/// One message waiting in a key's inbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboxMessage {
    /// Sequence number, unique and increasing per key; acknowledgements name it.
    pub seq: u64,
    pub body: Value,
    pub sent_at_ms: i64,
}

/// The full stored state of one key. A key that was never written reads as `Document::absent`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub id: DocId,
    /// `None` when the key was never written or its latest version is a deletion (tombstone).
    pub value: Option<Value>,
    /// Counts every change of value, attributes or user ids; 0 means never written.
    pub version: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub attributes: Map<String, Value>,
    pub user_ids: Vec<String>,
    pub lease: LeaseState,
    pub inbox: Vec<InboxMessage>,
    /// The sequence number the next inbox message will get.
    pub inbox_next_seq: u64,
    /// The commit that wrote the current version.
    pub last_commit_id: Option<CommitId>,
}

impl Document {
    pub fn absent(id: DocId) -> Document {
        Document {
            id,
            value: None,
            version: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            attributes: Map::new(),
            user_ids: Vec::new(),
            lease: LeaseState::default(),
            inbox: Vec::new(),
            inbox_next_seq: 1,
            last_commit_id: None,
        }
    }

    /// True when the key holds a value (not never-written, not deleted).
    pub fn exists(&self) -> bool {
        self.value.is_some()
    }

    /// True when no row at all was ever stored for the key.
    pub fn is_pristine(&self) -> bool {
        self.version == 0 && self.lease.epoch == 0 && self.inbox_next_seq == 1
    }
}

/// A precondition on one key, checked inside the commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// No precondition.
    None,
    /// The key holds no value (never written, or deleted).
    Absent,
    /// The key's version equals this (0: never written).
    Version(u64),
    /// The key's lease names this holder at this epoch: the fence of every session write.
    Lease { holder: HolderId, epoch: u64 },
    /// No live holder: the lease is unset, or its holder's lease has expired by the store's
    /// clock, or its holder is gone.
    LeaseFree,
    /// The store's clock, when the commit is judged, is before this time (milliseconds since the
    /// Unix epoch). It does not look at the key: a deadline that no server's clock can stretch,
    /// e.g. a cross-server trade's, after which it can only abort.
    Before(i64),
    /// Every one of these (flat: no nested `All`; at most `CONDITIONS_PER_WRITE_MAX`). The first
    /// that fails is reported.
    All(Vec<Condition>),
}

/// How many conditions one `Condition::All` may combine.
pub const CONDITIONS_PER_WRITE_MAX: usize = 4;

/// What a write does to a key's value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ValueOp {
    /// Leave the value as it is.
    Keep,
    /// Replace the value.
    Put(Value),
    /// Delete the value, leaving a tombstone in history.
    Delete,
    /// Add to an integer value (absent counts as 0).
    Increment(i64),
}

/// What a write does to a key's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOp {
    Keep,
    /// Name this holder and bump the epoch.
    Acquire(HolderId),
    /// Clear the holder; the epoch stays.
    Release,
}

/// One key's part of a commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Write {
    pub id: DocId,
    pub condition: Condition,
    pub value: ValueOp,
    /// `Some` replaces the attributes; `None` keeps them.
    pub attributes: Option<Map<String, Value>>,
    /// `Some` replaces the user ids; `None` keeps them.
    pub user_ids: Option<Vec<String>>,
    pub lease: LeaseOp,
    /// Messages to append to the inbox, in order.
    pub inbox_push: Vec<Value>,
    /// Remove every inbox message with `seq <= this`.
    pub inbox_ack_through: Option<u64>,
}

impl Write {
    /// A write that changes nothing yet; set its parts with the builder methods.
    pub fn new(id: DocId) -> Write {
        Write {
            id,
            condition: Condition::None,
            value: ValueOp::Keep,
            attributes: None,
            user_ids: None,
            lease: LeaseOp::Keep,
            inbox_push: Vec::new(),
            inbox_ack_through: None,
        }
    }

    pub fn put(id: DocId, value: Value) -> Write {
        Write::new(id).value(ValueOp::Put(value))
    }

    pub fn delete(id: DocId) -> Write {
        Write::new(id).value(ValueOp::Delete)
    }

    pub fn increment(id: DocId, by: i64) -> Write {
        Write::new(id).value(ValueOp::Increment(by))
    }

    pub fn when(mut self, condition: Condition) -> Write {
        self.condition = condition;
        self
    }

    pub fn value(mut self, value: ValueOp) -> Write {
        self.value = value;
        self
    }

    pub fn attributes(mut self, attributes: Map<String, Value>) -> Write {
        self.attributes = Some(attributes);
        self
    }

    pub fn user_ids(mut self, user_ids: Vec<String>) -> Write {
        self.user_ids = Some(user_ids);
        self
    }

    pub fn lease(mut self, lease: LeaseOp) -> Write {
        self.lease = lease;
        self
    }

    pub fn push_message(mut self, body: Value) -> Write {
        self.inbox_push.push(body);
        self
    }

    pub fn ack_inbox_through(mut self, seq: u64) -> Write {
        self.inbox_ack_through = Some(seq);
        self
    }

    /// True when the write creates a new version (and a history entry).
    pub fn changes_version(&self) -> bool {
        !matches!(self.value, ValueOp::Keep) || self.attributes.is_some() || self.user_ids.is_some()
    }
}

/// A conditional multi-key atomic commit: every write applies, or none does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    pub id: CommitId,
    pub writes: Vec<Write>,
}

impl Commit {
    pub fn new(writes: Vec<Write>) -> Commit {
        Commit { id: CommitId::generate(), writes }
    }

    pub fn single(write: Write) -> Commit {
        Commit::new(vec![write])
    }

    /// A copy with every put value replaced by `null` (and pushed messages dropped): the same
    /// id, keys, conditions and kinds of change, which is all `resolve_unknown_commit` looks at,
    /// without copying kilobytes of JSON to keep for it.
    pub fn trace(&self) -> Commit {
        let writes = self
            .writes
            .iter()
            .map(|write| Write {
                id: write.id.clone(),
                condition: write.condition.clone(),
                value: match &write.value {
                    ValueOp::Put(_) => ValueOp::Put(Value::Null),
                    other => other.clone(),
                },
                attributes: write.attributes.clone(),
                user_ids: write.user_ids.clone(),
                lease: write.lease.clone(),
                inbox_push: Vec::new(),
                inbox_ack_through: write.inbox_ack_through,
            })
            .collect();
        Commit { id: self.id, writes }
    }
}

/// What one write of a committed commit left behind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub id: DocId,
    pub version: u64,
    pub epoch: u64,
    /// Sequence numbers given to the messages this write pushed, in order.
    pub inbox_seqs: Vec<u64>,
    /// The highest sequence number still waiting in the key's inbox after this write (0: empty),
    /// so a holder learns from its own saves that messages arrived.
    pub inbox_last_waiting_seq: u64,
}

/// Why a condition failed, with what the store found on the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConflictKind {
    /// `Absent` was asked, the key holds a value.
    Exists,
    /// `Version(v)` was asked, the key is at another version.
    VersionMismatch,
    /// `Lease { holder, epoch }` was asked, the key names another holder or epoch.
    LeaseMismatch,
    /// `LeaseFree` was asked, a live holder has the key.
    LeaseHeld,
    /// `Increment` on a value that is not an integer.
    NotAnInteger,
    /// `Increment` would leave the 64-bit signed range.
    IncrementOverflow,
    /// The inbox would exceed `Limits::inbox_messages_max`.
    InboxFull,
    /// The value would exceed `Limits::value_bytes_max` (an increment or inbox push that grew it).
    ValueTooLarge,
    /// `Before(t)` was asked, and the store's clock had reached `t`.
    DeadlinePassed,
}

/// The key-level facts a failed condition is judged on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    pub exists: bool,
    pub version: u64,
    pub lease: LeaseState,
    /// When the named holder's lease expires, by the store's clock (`None`: no such holder).
    pub holder_expires_at_ms: Option<i64>,
    pub inbox_len: usize,
}

/// A failed condition: a value, not an error. Nothing in the commit was applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// Index of the failing write within the commit.
    pub write_index: usize,
    pub id: DocId,
    pub kind: ConflictKind,
    pub found: Found,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} on {} (found version {}, holder {:?}, epoch {})",
            self.kind,
            self.id,
            self.found.version,
            self.found.lease.holder.as_ref().map(HolderId::as_str),
            self.found.lease.epoch
        )
    }
}

/// The result of a commit that reached the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitOutcome {
    Committed { commit_id: CommitId, at_ms: i64, applied: Vec<Applied> },
    Conflict(Conflict),
}

impl CommitOutcome {
    pub fn is_committed(&self) -> bool {
        matches!(self, CommitOutcome::Committed { .. })
    }

    pub fn conflict(&self) -> Option<&Conflict> {
        match self {
            CommitOutcome::Conflict(conflict) => Some(conflict),
            CommitOutcome::Committed { .. } => None,
        }
    }
}

/// A page of keys, in byte order of the key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPage {
    pub keys: Vec<Key>,
    /// Pass as `ListQuery::after` to read the next page; `None` on the last page.
    pub next_after: Option<Key>,
}

/// Which keys to list: those holding a value, optionally with a prefix, after a cursor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub prefix: String,
    pub after: Option<Key>,
    /// Page size; 0 means `Limits::page_size_default`.
    pub limit: usize,
}

/// One entry of a key's version history, without its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: u64,
    pub written_at_ms: i64,
    /// True when this version is a deletion.
    pub deleted: bool,
    pub value_bytes: u64,
    pub commit_id: CommitId,
}

/// One past version with its contents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub info: VersionInfo,
    pub value: Option<Value>,
    pub attributes: Map<String, Value>,
    pub user_ids: Vec<String>,
}

/// Which versions to list: newest first, before a cursor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionQuery {
    /// List versions strictly older than this one.
    pub before_version: Option<u64>,
    /// Page size; 0 means `Limits::page_size_default`.
    pub limit: usize,
}

/// A holder's process-level lease, renewed by one write per holder rather than one per key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderLease {
    pub holder: HolderId,
    pub expires_at_ms: i64,
}

/// A best-effort wake-up sent between processes (handoff requests, inbox arrivals).
/// Notifications may be lost; nothing that must happen may depend on one arriving.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub topic: String,
    pub payload: String,
}
