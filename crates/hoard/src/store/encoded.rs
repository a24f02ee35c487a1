//! A commit whose put values are already serialized: validated and encoded once, on the caller's
//! task, before it is queued for a database writer.
//!
//! Why: a profile is kilobytes of nested JSON. Counting its bytes for the size limit, cloning it
//! into the next document and serializing it for the history row and again for the docs row
//! cost more CPU than the database's own work for the save. Encoding once, on the caller's task
//! (many run in parallel), lets the writers (SQLite's single writer thread, PostgreSQL's
//! group-commit workers) store the text as it is.
//!
//! Invariant: `value_texts[i]` is `Some(text)` exactly when `commit.writes[i]` puts a value, and
//! `text` is `serde_json::to_string` of that value as it was given, which is what the backends
//! store and what `validate::json_bytes` counts. A put value in `commit` may be replaced by
//! `apply::VALUE_NOT_READ` (`strip_put_values`) only where nothing will read it back from the
//! document that `apply_commit` returns; the backend then stores `value_texts[i]`.

use serde_json::Value;

use super::apply::VALUE_NOT_READ;
use super::error::InvalidInput;
use super::limits::Limits;
use super::types::{Commit, DocId, ValueOp};
use super::validate::{check_depth, check_value_bytes, validate_commit_except_values};

/// A validated commit and the JSON text of each value it puts.
#[derive(Debug)]
pub struct EncodedCommit {
    pub commit: Commit,
    /// One per write: the put value's JSON text, `None` for writes that put no value.
    pub value_texts: Vec<Option<String>>,
}

impl EncodedCommit {
    /// Validates `commit` like `validate::validate_commit` and serializes each put value once.
    pub fn new(commit: Commit, limits: &Limits) -> Result<EncodedCommit, InvalidInput> {
        validate_commit_except_values(&commit, limits)?;
        let mut value_texts = Vec::with_capacity(commit.writes.len());
        for write in &commit.writes {
            let text = match &write.value {
                ValueOp::Put(value) => Some(encode_value(value, limits)?),
                _ => None,
            };
            value_texts.push(text);
        }
        Ok(EncodedCommit { commit, value_texts })
    }

    /// Replaces the put value of every write whose key `keep_value` rejects by the stand-in
    /// `VALUE_NOT_READ`, dropping the decoded value: `apply_commit` then copies a `null` instead
    /// of kilobytes, and the backend stores `value_texts`. `keep_value` must accept every key
    /// whose value a later write judged in the same transaction reads (`apply::write_reads_value`).
    pub fn strip_put_values(&mut self, keep_value: impl Fn(&DocId) -> bool) {
        for write in &mut self.commit.writes {
            if let ValueOp::Put(value) = &mut write.value
                && !keep_value(&write.id)
            {
                *value = VALUE_NOT_READ;
            }
        }
    }

    /// The JSON text of write `index`'s new value: its put value's text, or `None` when the
    /// write puts nothing (the backend then serializes the document's value itself).
    pub fn value_text(&self, index: usize) -> Option<&String> {
        self.value_texts.get(index).and_then(Option::as_ref)
    }
}

/// Checks a value's depth, serializes it and checks its size against `value_bytes_max`.
fn encode_value(value: &Value, limits: &Limits) -> Result<String, InvalidInput> {
    check_depth("value", value, limits)?;
    let text = serde_json::to_string(value)
        .map_err(|error| InvalidInput::NotJson { reason: format!("the value cannot be serialized: {error}") })?;
    check_value_bytes(text.len(), limits)?;
    Ok(text)
}
