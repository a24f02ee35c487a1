//! Encoding between rows of the `docs` table and hoard's `Document`, the few SQL statements that
//! read and write them, and the column codecs `history` shares.
//!
//! Invariant: a value is stored as the exact JSON text `serde_json` writes for it (so operators
//! can `json_extract` it and a read returns what was written), counters (`version`, `lease_epoch`,
//! `inbox_next_seq`) are stored as INTEGER and must fit in i64, and anything stored that cannot be
//! decoded is reported as `StoreError::Corrupt`, never guessed at.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Map, Value};

use crate::store::StoreError;
use crate::store::apply::{Current, VALUE_NOT_READ};
use crate::store::limits::Limits;
use crate::store::types::{CommitId, DocId, Document, HolderId, InboxMessage, LeaseState};

/// Maps an SQL error of a read or write to `Unavailable`: the statement did not change the file
/// (a failed statement inside a transaction is undone with its savepoint or transaction).
pub(crate) fn sql_error(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |error| StoreError::unavailable(format!("SQLite {context}: {}", super::describe_error(&error)))
}

pub(crate) fn to_json_text<T: serde::Serialize>(what: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|error| StoreError::corrupt(format!("cannot encode {what} as JSON: {error}")))
}

pub(crate) fn from_json_text<T: serde::de::DeserializeOwned>(
    what: &'static str,
    id: &DocId,
    version: u64,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|error| StoreError::unreadable(id, version, what, error, text))
}

pub(crate) fn counter_to_sql(what: &str, counter: u64) -> Result<i64, StoreError> {
    i64::try_from(counter)
        .map_err(|_| StoreError::corrupt(format!("{what} {counter} does not fit in an SQLite INTEGER")))
}

pub(crate) fn counter_from_sql(what: &str, id: &DocId, stored: i64) -> Result<u64, StoreError> {
    u64::try_from(stored).map_err(|_| StoreError::corrupt(format!("stored {what} of {id} is negative ({stored})")))
}

pub(crate) fn commit_id_from_sql(id: &DocId, text: &str) -> Result<CommitId, StoreError> {
    uuid::Uuid::parse_str(text)
        .map(CommitId)
        .map_err(|error| StoreError::corrupt(format!("stored commit id of {id} is not a UUID: {error}")))
}

/// The `docs` columns `document_from_row` reads, in order, from a table aliased `d`.
pub(crate) const DOC_COLUMNS: &str = "d.value, d.version, d.created_at_ms, d.updated_at_ms, d.attributes, d.user_ids, \
     d.lease_holder, d.lease_epoch, d.inbox, d.inbox_next_seq, d.last_commit_id";

/// How many columns `DOC_COLUMNS` names; a query may add its own after them.
pub(crate) const DOC_COLUMN_COUNT: usize = 11;

/// The raw column values of one `docs` row, taken out of the row before decoding (decoding needs
/// `StoreError`s, which a rusqlite row closure cannot return).
pub(crate) struct DocRow {
    value: Option<String>,
    version: i64,
    created_at_ms: i64,
    updated_at_ms: i64,
    attributes: String,
    user_ids: String,
    lease_holder: Option<String>,
    lease_epoch: i64,
    inbox: String,
    inbox_next_seq: i64,
    last_commit_id: Option<String>,
}

impl DocRow {
    pub(crate) fn from_row(row: &Row<'_>) -> rusqlite::Result<DocRow> {
        Ok(DocRow {
            value: row.get(0)?,
            version: row.get(1)?,
            created_at_ms: row.get(2)?,
            updated_at_ms: row.get(3)?,
            attributes: row.get(4)?,
            user_ids: row.get(5)?,
            lease_holder: row.get(6)?,
            lease_epoch: row.get(7)?,
            inbox: row.get(8)?,
            inbox_next_seq: row.get(9)?,
            last_commit_id: row.get(10)?,
        })
    }

    pub(crate) fn decode(self, id: DocId, limits: &Limits) -> Result<Document, StoreError> {
        Ok(self.decode_with_text(id, limits, true)?.0)
    }

    /// Decodes the row and hands back the value's stored text as it is. With `parse_value`
    /// false the text is not parsed: `Document::value` is then `None` and the caller decides.
    pub(crate) fn decode_with_text(
        mut self,
        id: DocId,
        limits: &Limits,
        parse_value: bool,
    ) -> Result<(Document, Option<String>), StoreError> {
        let version = counter_from_sql("version", &id, self.version)?;
        let text = self.value.take();
        let value = match &text {
            Some(text) if parse_value => Some(from_json_text::<Value>("value", &id, version, text)?),
            _ => None,
        };
        let attributes: Map<String, Value> = from_json_text("attributes", &id, version, &self.attributes)?;
        let user_ids: Vec<String> = from_json_text("user ids", &id, version, &self.user_ids)?;
        let holder = match self.lease_holder {
            Some(text) => Some(
                HolderId::with_limits(text, limits)
                    .map_err(|error| StoreError::corrupt(format!("stored lease holder of {id}: {error}")))?,
            ),
            None => None,
        };
        let inbox: Vec<InboxMessage> = from_json_text("inbox", &id, version, &self.inbox)?;
        let last_commit_id = match &self.last_commit_id {
            Some(text) => Some(commit_id_from_sql(&id, text)?),
            None => None,
        };
        let document = Document {
            version,
            lease: LeaseState { holder, epoch: counter_from_sql("lease epoch", &id, self.lease_epoch)? },
            inbox_next_seq: counter_from_sql("inbox sequence", &id, self.inbox_next_seq)?,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            value,
            attributes,
            user_ids,
            inbox,
            last_commit_id,
            id,
        };
        Ok((document, text))
    }
}

/// Reads one key's document (absent when no row exists).
pub(crate) fn read_document(connection: &Connection, id: &DocId, limits: &Limits) -> Result<Document, StoreError> {
    let sql = format!("SELECT {DOC_COLUMNS} FROM docs AS d WHERE d.store = ?1 AND d.key = ?2");
    let mut statement = connection.prepare_cached(&sql).map_err(sql_error("preparing a document read"))?;
    let row = statement
        .query_row(params![id.store.as_str(), id.key.as_str()], DocRow::from_row)
        .optional()
        .map_err(sql_error("reading a document"))?;
    match row {
        Some(row) => row.decode(id.clone(), limits),
        None => Ok(Document::absent(id.clone())),
    }
}

/// Reads one key's state for a commit: its document, its holder's process-lease expiry (`None`
/// when the key names no holder or the holder has no lease row), in one statement, and with
/// `read_text` the stored text of its value.
///
/// With `read_value` false (no write of the commit reads the value: `apply::write_reads_value`)
/// the value is not decoded; an existing one is stood in for by `apply::VALUE_NOT_READ`, which
/// `upsert_document` never stores. With `read_text` false the text is not even read (a lease or
/// inbox change: nothing is superseded).
pub(crate) fn read_current(
    connection: &Connection,
    id: &DocId,
    limits: &Limits,
    read_value: bool,
    read_text: bool,
) -> Result<(Current, Option<String>), StoreError> {
    // Built once: this runs for every write on the writer thread.
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let columns = DOC_COLUMNS.replacen("d.value,", "CASE WHEN ?3 THEN d.value END,", 1);
        format!(
            "SELECT {columns}, h.expires_at_ms, d.value IS NOT NULL FROM docs AS d \
             LEFT JOIN holders AS h ON h.holder = d.lease_holder \
             WHERE d.store = ?1 AND d.key = ?2"
        )
    });
    let mut statement = connection.prepare_cached(&SQL).map_err(sql_error("preparing a commit read"))?;
    let row = statement
        .query_row(params![id.store.as_str(), id.key.as_str(), read_value || read_text], |row| {
            Ok((
                DocRow::from_row(row)?,
                row.get::<_, Option<i64>>(DOC_COLUMN_COUNT)?,
                row.get::<_, bool>(DOC_COLUMN_COUNT + 1)?,
            ))
        })
        .optional()
        .map_err(sql_error("reading a key inside a commit"))?;
    match row {
        Some((row, holder_expires_at_ms, has_value)) => {
            let (mut doc, text) = row.decode_with_text(id.clone(), limits, read_value)?;
            if has_value && doc.value.is_none() {
                doc.value = Some(VALUE_NOT_READ);
            }
            Ok((Current { doc, holder_expires_at_ms }, text))
        }
        None => Ok((Current { doc: Document::absent(id.clone()), holder_expires_at_ms: None }, None)),
    }
}

/// Writes a key's whole new state over its row (creating the row if needed). `value_text`: the
/// JSON text of its new value (`Some(None)`: deleted), as already serialized for its history
/// row; `None` keeps the stored value (the write changed only the lease or inbox), and
/// `doc.value` is then not looked at (it may be `VALUE_NOT_READ`).
pub(crate) fn upsert_document(
    connection: &Connection,
    doc: &Document,
    value_text: Option<Option<String>>,
) -> Result<(), StoreError> {
    let value_set = value_text.is_some();
    let value = value_text.flatten();
    let attributes = to_json_text("attributes", &doc.attributes)?;
    let user_ids = to_json_text("user ids", &doc.user_ids)?;
    let inbox = to_json_text("inbox", &doc.inbox)?;
    let mut statement = connection
        .prepare_cached(
            "INSERT INTO docs (store, key, value, version, created_at_ms, updated_at_ms, attributes, user_ids, \
                               lease_holder, lease_epoch, inbox, inbox_next_seq, last_commit_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT (store, key) DO UPDATE SET
                 value = CASE WHEN ?14 THEN excluded.value ELSE docs.value END, version = excluded.version, created_at_ms = excluded.created_at_ms,
                 updated_at_ms = excluded.updated_at_ms, attributes = excluded.attributes,
                 user_ids = excluded.user_ids, lease_holder = excluded.lease_holder,
                 lease_epoch = excluded.lease_epoch, inbox = excluded.inbox,
                 inbox_next_seq = excluded.inbox_next_seq, last_commit_id = excluded.last_commit_id",
        )
        .map_err(sql_error("preparing a document write"))?;
    statement
        .execute(params![
            doc.id.store.as_str(),
            doc.id.key.as_str(),
            value,
            counter_to_sql("version", doc.version)?,
            doc.created_at_ms,
            doc.updated_at_ms,
            attributes,
            user_ids,
            doc.lease.holder.as_ref().map(HolderId::as_str),
            counter_to_sql("lease epoch", doc.lease.epoch)?,
            inbox,
            counter_to_sql("inbox sequence", doc.inbox_next_seq)?,
            doc.last_commit_id.map(|commit_id| commit_id.to_string()),
            value_set,
        ])
        .map_err(sql_error("writing a document"))?;
    Ok(())
}
