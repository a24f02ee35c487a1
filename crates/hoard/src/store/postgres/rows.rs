//! Conversion between PostgreSQL rows and the store's types.
//!
//! Invariant: a value is stored as the exact text `serde_json::to_string` gives and read back with
//! `serde_json::from_str`, so what a caller wrote is what every later read returns (and
//! `octet_length(value)` equals `validate::json_bytes`). A placeholder row (version 0, NULL
//! value, no lease, empty inbox) converts to exactly `Document::absent`. A JSON column that does not
//! parse is `StoreError::Unreadable` naming the key (quarantined, readable raw); any other is
//! `StoreError::Corrupt` naming the key, never a panic and never a silently wrong value.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio_postgres::Row;

use crate::store::StoreError;
use crate::store::history::StoredPayload;
use crate::store::types::{CommitId, DocId, Document, HolderId, InboxMessage, Key, LeaseState, StoreName, VersionInfo};

/// The columns of `docs` that `document_from_row` reads, in a form to paste after SELECT.
pub const DOC_COLUMNS: &str = "d.store, d.key, d.value, d.version, d.created_at_ms, d.updated_at_ms, d.attributes, \
     d.user_ids, d.lease_holder, d.lease_epoch, d.inbox, d.inbox_next_seq, d.last_commit_id";

/// The listing columns of a version, from `history` (`h`) or, for the current version, `docs`.
pub const VERSION_INFO_COLUMNS: &str = "version, written_at_ms, deleted, value_bytes, commit_id";

fn corrupt(id: &str, what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::corrupt(format!("{what} of {id} is unreadable: {error}"))
}

fn column<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, name: &str, id: &str) -> Result<T, StoreError> {
    row.try_get(name).map_err(|error| corrupt(id, name, error))
}

/// Parses a stored JSON field of key `id` at `version`; text its reader refuses is `Unreadable`.
fn parse_json<T: DeserializeOwned>(text: &str, what: &'static str, id: &DocId, version: u64) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|error| StoreError::unreadable(id, version, what, error, text))
}

/// Serializes to JSON text. Serializing the store's types cannot fail (string map keys, no NaN in
/// a `Value`), but the error is still reported rather than unwrapped.
pub fn to_json_text<T: Serialize + ?Sized>(value: &T, what: &str, id: &DocId) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|error| corrupt(&id.to_string(), what, error))
}

/// A non-negative counter from a BIGINT column.
pub fn counter_from_db(value: i64, what: &str, id: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(id, what, format!("negative count {value}")))
}

/// A counter for a BIGINT column. Counters grow by one per commit, so they never reach 2^63;
/// saturating keeps a corrupt input from wrapping into a negative number.
pub fn counter_to_db(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn commit_id_from_text(text: &str, id: &str) -> Result<CommitId, StoreError> {
    uuid::Uuid::parse_str(text).map(CommitId).map_err(|error| corrupt(id, "commit id", error))
}

/// Reads a `docs` row selected with `DOC_COLUMNS`.
pub fn document_from_row(row: &Row) -> Result<Document, StoreError> {
    Ok(document_from_row_with_text(row, true)?.0)
}

/// Reads a `docs` row selected with `DOC_COLUMNS` and hands back its value's stored text as it
/// is; with `parse_value` false the text is not parsed and `Document::value` is `None`.
pub fn document_from_row_with_text(row: &Row, parse_value: bool) -> Result<(Document, Option<String>), StoreError> {
    let store_text: String = column(row, "store", "a docs row")?;
    let key_text: String = column(row, "key", &store_text)?;
    let label = format!("{store_text}/{key_text}");
    let store = StoreName::new(store_text).map_err(|error| corrupt(&label, "store name", error))?;
    let key = Key::new(key_text).map_err(|error| corrupt(&label, "key", error))?;
    let id = DocId::new(store, key);
    let version = counter_from_db(column(row, "version", &label)?, "version", &label)?;
    let value_text: Option<String> = column(row, "value", &label)?;
    let value: Option<Value> = match value_text.as_deref() {
        Some(text) if parse_value => Some(parse_json(text, "value", &id, version)?),
        _ => None,
    };
    let attributes_text: String = column(row, "attributes", &label)?;
    let attributes: Map<String, Value> = parse_json(&attributes_text, "attributes", &id, version)?;
    let user_ids_text: String = column(row, "user_ids", &label)?;
    let user_ids: Vec<String> = parse_json(&user_ids_text, "user ids", &id, version)?;
    let inbox_text: String = column(row, "inbox", &label)?;
    let inbox: Vec<InboxMessage> = parse_json(&inbox_text, "inbox", &id, version)?;
    let holder_text: Option<String> = column(row, "lease_holder", &label)?;
    let holder = holder_text.map(HolderId::new).transpose().map_err(|error| corrupt(&label, "lease holder", error))?;
    let last_commit_text: Option<String> = column(row, "last_commit_id", &label)?;
    let last_commit_id = last_commit_text.as_deref().map(|text| commit_id_from_text(text, &label)).transpose()?;
    let document = Document {
        id,
        value,
        version,
        created_at_ms: column(row, "created_at_ms", &label)?,
        updated_at_ms: column(row, "updated_at_ms", &label)?,
        attributes,
        user_ids,
        lease: LeaseState {
            holder,
            epoch: counter_from_db(column(row, "lease_epoch", &label)?, "lease epoch", &label)?,
        },
        inbox,
        inbox_next_seq: counter_from_db(column(row, "inbox_next_seq", &label)?, "inbox sequence", &label)?,
        last_commit_id,
    };
    Ok((document, value_text))
}

/// Reads a row selected with `VERSION_INFO_COLUMNS`.
pub fn version_info_from_row(row: &Row, id: &DocId) -> Result<VersionInfo, StoreError> {
    let label = id.to_string();
    let value_bytes: i64 = column(row, "value_bytes", &label)?;
    let commit_text: Option<String> = column(row, "commit_id", &label)?;
    let commit_text = commit_text.ok_or_else(|| corrupt(&label, "commit id", "missing for a written version"))?;
    Ok(VersionInfo {
        version: counter_from_db(column(row, "version", &label)?, "version", &label)?,
        written_at_ms: column(row, "written_at_ms", &label)?,
        deleted: column(row, "deleted", &label)?,
        value_bytes: counter_from_db(value_bytes, "value size", &label)?,
        commit_id: commit_id_from_text(&commit_text, &label)?,
    })
}

/// The JSON text of a stored value, parsed.
pub fn parse_value(text: &str, id: &DocId, version: u64) -> Result<Value, StoreError> {
    parse_json(text, "value", id, version)
}

/// Parses stored attributes and user ids.
pub fn parse_metadata(
    attributes: &str,
    user_ids: &str,
    id: &DocId,
    version: u64,
) -> Result<(Map<String, Value>, Vec<String>), StoreError> {
    Ok((parse_json(attributes, "attributes", id, version)?, parse_json(user_ids, "user ids", id, version)?))
}

/// The final state of changed `docs` rows, one array per column, for one bulk `UPDATE ... FROM
/// unnest(...)` statement.
#[derive(Debug, Default)]
pub struct DocColumns {
    pub stores: Vec<String>,
    pub keys: Vec<String>,
    pub values: Vec<Option<String>>,
    pub versions: Vec<i64>,
    pub created_at_ms: Vec<i64>,
    pub updated_at_ms: Vec<i64>,
    pub attributes: Vec<String>,
    pub user_ids: Vec<String>,
    pub lease_holders: Vec<Option<String>>,
    pub lease_epochs: Vec<i64>,
    pub inboxes: Vec<String>,
    pub inbox_next_seqs: Vec<i64>,
    pub last_commit_ids: Vec<Option<String>>,
    /// False: keep the stored value (the batch changed only the lease or inbox).
    pub value_sets: Vec<bool>,
}

impl DocColumns {
    /// Adds `doc`'s final state. `value_text`: the JSON text of its new value (`Some(None)`:
    /// deleted), as already serialized for its history row; `None` keeps the stored value, and
    /// `doc.value` is then not looked at (it may be the batch's stand-in for an unread value).
    pub fn push(&mut self, doc: &Document, value_text: Option<Option<String>>) -> Result<(), StoreError> {
        self.stores.push(doc.id.store.as_str().to_string());
        self.keys.push(doc.id.key.as_str().to_string());
        self.value_sets.push(value_text.is_some());
        self.values.push(value_text.flatten());
        self.versions.push(counter_to_db(doc.version));
        self.created_at_ms.push(doc.created_at_ms);
        self.updated_at_ms.push(doc.updated_at_ms);
        self.attributes.push(to_json_text(&doc.attributes, "attributes", &doc.id)?);
        self.user_ids.push(to_json_text(&doc.user_ids, "user ids", &doc.id)?);
        self.lease_holders.push(doc.lease.holder.as_ref().map(|holder| holder.as_str().to_string()));
        self.lease_epochs.push(counter_to_db(doc.lease.epoch));
        self.inboxes.push(to_json_text(&doc.inbox, "inbox", &doc.id)?);
        self.inbox_next_seqs.push(counter_to_db(doc.inbox_next_seq));
        self.last_commit_ids.push(doc.last_commit_id.map(|commit_id| commit_id.to_string()));
        Ok(())
    }
}

/// New `history` rows (versions a batch superseded), one array per column, for one bulk
/// `INSERT ... SELECT FROM unnest(...)`.
#[derive(Debug, Default)]
pub struct HistoryColumns {
    pub stores: Vec<String>,
    pub keys: Vec<String>,
    pub versions: Vec<i64>,
    pub written_at_ms: Vec<i64>,
    pub deleted: Vec<bool>,
    pub values: Vec<Option<String>>,
    pub deltas: Vec<Option<Vec<u8>>>,
    pub value_bytes: Vec<i64>,
    pub attributes: Vec<String>,
    pub user_ids: Vec<String>,
    pub commit_ids: Vec<String>,
}

impl HistoryColumns {
    /// Records `superseded` (the key's state before the batch's write, whose value text was
    /// `text`) as a history row with `payload`.
    pub fn push(
        &mut self,
        superseded: &Document,
        text: Option<&str>,
        payload: StoredPayload,
    ) -> Result<(), StoreError> {
        let id = &superseded.id;
        let commit_id = superseded.last_commit_id.ok_or_else(|| {
            corrupt(&id.to_string(), "commit id", format!("missing for version {}", superseded.version))
        })?;
        self.stores.push(id.store.as_str().to_string());
        self.keys.push(id.key.as_str().to_string());
        self.versions.push(counter_to_db(superseded.version));
        self.written_at_ms.push(superseded.updated_at_ms);
        self.deleted.push(matches!(payload, StoredPayload::Deleted));
        self.value_bytes.push(counter_to_db(text.map_or(0, str::len) as u64));
        let (value, delta) = payload.into_columns();
        self.values.push(value);
        self.deltas.push(delta);
        self.attributes.push(to_json_text(&superseded.attributes, "attributes", id)?);
        self.user_ids.push(to_json_text(&superseded.user_ids, "user ids", id)?);
        self.commit_ids.push(commit_id.to_string());
        Ok(())
    }
}
