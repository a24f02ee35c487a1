//! Declared indexes and the user-id index: what entries a document contributes, pure.
//!
//! Invariant: every backend keeps its index rows by calling `entries_for` on the document a
//! commit leaves, in the same transaction as that commit (memory: under its one lock; SQLite: in
//! the writer's savepoint; PostgreSQL: in the batch's transaction, pipelined before COMMIT), so an
//! index never shows a value no committed version holds, and a rolled-back commit leaves none.
//! Backends only move the rows this module decides on; they never interpret a path themselves.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::InvalidInput;
use super::types::StoreName;

/// Indexes one named store may declare.
pub const INDEXES_PER_STORE_MAX: usize = 16;
/// Members one document contributes to one `members`/`keys` index; past it the rest are not
/// indexed (a save is never refused because of an operator's index) and the count is logged.
pub const INDEX_MEMBERS_PER_DOC_MAX: usize = 1_024;
/// Longest indexed member text; a longer string is not indexed.
pub const INDEX_MEMBER_BYTES_MAX: usize = 256;
/// Longest index name.
pub const INDEX_NAME_BYTES_MAX: usize = 64;
/// Longest declared path.
pub const INDEX_PATH_BYTES_MAX: usize = 256;
/// Entries one index query answers at most (top-N pages, member and user-id lookups).
pub const INDEX_PAGE_ENTRIES_MAX: usize = 1_000;

/// What an index keeps of the value its path reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexKind {
    /// One number per document: top-N, rank of a key, counts in a range.
    Number,
    /// Every string or number reached (an array reached contributes its elements): "which
    /// profiles hold item X".
    Members,
    /// The keys of every object reached (inventories keyed by item id).
    Keys,
}

impl IndexKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IndexKind::Number => "number",
            IndexKind::Members => "members",
            IndexKind::Keys => "keys",
        }
    }

    pub fn parse(text: &str) -> Result<IndexKind, InvalidInput> {
        match text {
            "number" => Ok(IndexKind::Number),
            "members" => Ok(IndexKind::Members),
            "keys" => Ok(IndexKind::Keys),
            _ => Err(InvalidInput::Malformed { what: "index kind", expected: "number, members or keys" }),
        }
    }
}

/// A declared index on one JSON path of one named store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDecl {
    pub store: StoreName,
    /// `[a-z0-9_]`, 1 to `INDEX_NAME_BYTES_MAX` bytes.
    pub name: String,
    pub kind: IndexKind,
    /// A JSON pointer (`/stats/level`) whose segments may be `*` (every array element or object
    /// member value at that level).
    pub path: String,
}

impl IndexDecl {
    /// Checks the name and path; the backends call it before storing a declaration.
    pub fn check(&self) -> Result<(), InvalidInput> {
        if self.name.is_empty() {
            return Err(InvalidInput::Empty { what: "index name" });
        }
        if self.name.len() > INDEX_NAME_BYTES_MAX {
            return Err(InvalidInput::TooLong {
                what: "index name",
                bytes: self.name.len(),
                bytes_max: INDEX_NAME_BYTES_MAX,
            });
        }
        if !self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(InvalidInput::Malformed { what: "index name", expected: "lower-case letters, digits and _" });
        }
        if self.path.len() > INDEX_PATH_BYTES_MAX {
            return Err(InvalidInput::TooLong {
                what: "index path",
                bytes: self.path.len(),
                bytes_max: INDEX_PATH_BYTES_MAX,
            });
        }
        if !self.path.starts_with('/') || self.path.len() < 2 {
            return Err(InvalidInput::Malformed {
                what: "index path",
                expected: "a JSON pointer such as /stats/level",
            });
        }
        if self.kind == IndexKind::Number && self.path.split('/').any(|segment| segment == "*") {
            return Err(InvalidInput::Malformed {
                what: "number index path",
                expected: "a path without * (one number per document)",
            });
        }
        Ok(())
    }
}

/// What one document contributes to one index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IndexEntries {
    /// `Number` indexes: the number at the path, if it is one.
    pub number: Option<f64>,
    /// `Members` and `Keys` indexes: distinct, sorted, at most `INDEX_MEMBERS_PER_DOC_MAX`.
    pub members: Vec<String>,
}

/// The entries `value` (a document's value; `None`: deleted) contributes to `decl`.
pub fn entries_for(decl: &IndexDecl, value: Option<&Value>) -> IndexEntries {
    let Some(value) = value else { return IndexEntries::default() };
    let segments: Vec<String> = decl.path.split('/').skip(1).map(unescape).collect();
    let mut reached = Vec::new();
    walk(value, &segments, &mut reached);
    let mut entries = IndexEntries::default();
    match decl.kind {
        IndexKind::Number => entries.number = reached.first().and_then(|v| v.as_f64()).filter(|n| n.is_finite()),
        IndexKind::Members => {
            for found in reached {
                match found {
                    Value::Array(elements) => elements.iter().for_each(|element| push_member(&mut entries, element)),
                    other => push_member(&mut entries, other),
                }
            }
        }
        IndexKind::Keys => {
            for found in reached {
                if let Value::Object(map) = found {
                    for key in map.keys() {
                        push_text(&mut entries, key.clone());
                    }
                }
            }
        }
    }
    entries.members.sort();
    entries.members.dedup();
    if entries.members.len() > INDEX_MEMBERS_PER_DOC_MAX {
        tracing::warn!(
            index = %decl.name, store = %decl.store, members = entries.members.len(),
            limit = INDEX_MEMBERS_PER_DOC_MAX, "a document has more index members than the limit; the rest are not indexed"
        );
        entries.members.truncate(INDEX_MEMBERS_PER_DOC_MAX);
    }
    entries
}

fn push_member(entries: &mut IndexEntries, value: &Value) {
    match value {
        Value::String(text) => push_text(entries, text.clone()),
        Value::Number(number) => push_text(entries, number.to_string()),
        _ => {}
    }
}

fn push_text(entries: &mut IndexEntries, text: String) {
    // Bounded before sorting, so a hostile document cannot make the commit path sort millions.
    if text.len() <= INDEX_MEMBER_BYTES_MAX && entries.members.len() <= INDEX_MEMBERS_PER_DOC_MAX * 4 {
        entries.members.push(text);
    }
}

fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

fn walk<'a>(value: &'a Value, segments: &[String], out: &mut Vec<&'a Value>) {
    let Some((first, rest)) = segments.split_first() else {
        out.push(value);
        return;
    };
    match (first.as_str(), value) {
        ("*", Value::Array(elements)) => elements.iter().for_each(|element| walk(element, rest, out)),
        ("*", Value::Object(map)) => map.values().for_each(|member| walk(member, rest, out)),
        (name, Value::Object(map)) => {
            if let Some(member) = map.get(name) {
                walk(member, rest, out);
            }
        }
        (index, Value::Array(elements)) => {
            if let Some(element) = index.parse::<usize>().ok().and_then(|i| elements.get(i)) {
                walk(element, rest, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decl(kind: IndexKind, path: &str) -> IndexDecl {
        IndexDecl { store: StoreName::new("players").expect("valid"), name: "i".into(), kind, path: path.into() }
    }

    #[test]
    fn number_members_and_keys_are_read_from_their_paths() {
        let value = json!({"stats": {"level": 7}, "bag": ["b", "a", "a"], "items": {"sword-1": {}, "gem-2": 1},
                           "slots": [{"id": "x"}, {"id": 3}]});
        assert_eq!(entries_for(&decl(IndexKind::Number, "/stats/level"), Some(&value)).number, Some(7.0));
        assert_eq!(entries_for(&decl(IndexKind::Members, "/bag"), Some(&value)).members, vec!["a", "b"]);
        assert_eq!(entries_for(&decl(IndexKind::Keys, "/items"), Some(&value)).members, vec!["gem-2", "sword-1"]);
        assert_eq!(entries_for(&decl(IndexKind::Members, "/slots/*/id"), Some(&value)).members, vec!["3", "x"]);
        assert_eq!(entries_for(&decl(IndexKind::Number, "/bag"), Some(&value)).number, None);
        assert_eq!(entries_for(&decl(IndexKind::Number, "/stats/level"), None), IndexEntries::default());
    }

    #[test]
    fn bad_declarations_are_refused() {
        assert!(decl(IndexKind::Number, "/a/*").check().is_err());
        assert!(decl(IndexKind::Number, "stats").check().is_err());
        let mut bad_name = decl(IndexKind::Number, "/a");
        bad_name.name = "Level!".into();
        assert!(bad_name.check().is_err());
        assert!(decl(IndexKind::Members, "/items/*/id").check().is_ok());
    }
}
