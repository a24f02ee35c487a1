//! How the durable backends store history: the latest version of a key is its document (one copy
//! of the value), and each superseded version is a history row holding either nothing (a
//! deletion), its whole text (a keyframe) or a delta against its successor's text.
//!
//! Invariant: every kept version's text can be rebuilt exactly from the document's value and the
//! rows above it, and rebuilding one never applies `2 * keyframe_interval_versions` deltas or
//! more. A row is a delta only against the text of the next *kept* version (or of the document),
//! so pruning a version re-encodes the row below it before it deletes it (`plan_prune`), in the
//! same transaction. A delta that does not rebuild its recorded checksum is `Corrupt`, never
//! returned.
//!
//! The backends own the SQL; this module owns the encoding and the pruning plan, so SQLite and
//! PostgreSQL cannot disagree on either (the memory store keeps whole values and shares only
//! `HistoryPolicy::keeps`).

use super::delta;
use super::error::StoreError;
use super::limits::HistoryPolicy;
use super::types::DocId;

/// What a history row holds for its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredPayload {
    /// The version is a deletion: no value.
    Deleted,
    /// The whole JSON text.
    Full(String),
    /// A `store::delta` that rebuilds the text from the successor's text.
    Delta(Vec<u8>),
}

impl StoredPayload {
    /// The columns a backend stores: (`value` text, `delta` bytes); at most one is set.
    pub fn into_columns(self) -> (Option<String>, Option<Vec<u8>>) {
        match self {
            StoredPayload::Deleted => (None, None),
            StoredPayload::Full(text) => (Some(text), None),
            StoredPayload::Delta(bytes) => (None, Some(bytes)),
        }
    }

    /// Reads the stored columns back; both set is corrupt. `deleted` is the row's own flag.
    pub fn from_columns(
        id: &DocId,
        version: u64,
        deleted: bool,
        value: Option<String>,
        delta: Option<Vec<u8>>,
    ) -> Result<StoredPayload, StoreError> {
        match (deleted, value, delta) {
            (true, None, None) => Ok(StoredPayload::Deleted),
            (false, Some(text), None) => Ok(StoredPayload::Full(text)),
            (false, None, Some(bytes)) => Ok(StoredPayload::Delta(bytes)),
            (deleted, value, delta) => Err(StoreError::corrupt(format!(
                "history row {version} of {id} is inconsistent: deleted {deleted}, text {}, delta {}",
                value.is_some(),
                delta.is_some()
            ))),
        }
    }

    /// Whether rebuilding this row needs its successor's text.
    pub fn needs_successor(&self) -> bool {
        matches!(self, StoredPayload::Delta(_))
    }
}

/// The payload of version `version` (text `text`, `None`: a deletion) when the version after it,
/// with text `successor_text`, is written. Whole when it is a keyframe (`version` a multiple of
/// `keyframe_interval_versions`), when the successor has no text (a deletion) and when a delta
/// would not be smaller.
pub fn encode_superseded(
    version: u64,
    text: Option<&str>,
    successor_text: Option<&str>,
    policy: &HistoryPolicy,
) -> StoredPayload {
    let Some(text) = text else { return StoredPayload::Deleted };
    let keyframe = version.is_multiple_of(policy.keyframe_interval_versions.max(1));
    match successor_text {
        Some(successor) if !keyframe => encode_against(text, successor),
        _ => StoredPayload::Full(text.to_string()),
    }
}

/// A delta of `text` against `successor`, or the whole text when that is not larger.
fn encode_against(text: &str, successor: &str) -> StoredPayload {
    let bytes = delta::encode(text.as_bytes(), successor.as_bytes());
    if bytes.len() < text.len() { StoredPayload::Delta(bytes) } else { StoredPayload::Full(text.to_string()) }
}

/// The text of a version (`None`: a deletion) from its row and, for a delta, its successor's text.
pub fn rebuild_text(
    id: &DocId,
    version: u64,
    payload: &StoredPayload,
    successor_text: Option<&str>,
) -> Result<Option<String>, StoreError> {
    match payload {
        StoredPayload::Deleted => Ok(None),
        StoredPayload::Full(text) => Ok(Some(text.clone())),
        StoredPayload::Delta(bytes) => {
            let successor = successor_text.ok_or_else(|| {
                StoreError::corrupt(format!("history row {version} of {id} is a delta against a deleted successor"))
            })?;
            let rebuilt = delta::apply(bytes, successor.as_bytes())
                .map_err(|error| StoreError::corrupt(format!("history row {version} of {id}: {error}")))?;
            String::from_utf8(rebuilt).map(Some).map_err(|_| {
                StoreError::corrupt(format!("history row {version} of {id} rebuilds text that is not UTF-8"))
            })
        }
    }
}

/// Bytes of the text a row stands for (0 for a deletion), without rebuilding it.
pub fn payload_text_bytes(id: &DocId, version: u64, payload: &StoredPayload) -> Result<u64, StoreError> {
    match payload {
        StoredPayload::Deleted => Ok(0),
        StoredPayload::Full(text) => Ok(text.len() as u64),
        StoredPayload::Delta(bytes) => delta::target_len(bytes)
            .map_err(|error| StoreError::corrupt(format!("history row {version} of {id}: {error}"))),
    }
}

/// Rebuilds the text of the lowest of `rows` (ascending versions, consecutive kept rows of one
/// key) from the text of the version just above the highest (`top_text`: the document's value,
/// or a keyframe's). Walks down only as far as it must: from the highest row, each delta applied
/// to the text above it.
pub fn rebuild_lowest(
    id: &DocId,
    rows: &[(u64, StoredPayload)],
    top_text: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let mut above: Option<String> = top_text.map(str::to_string);
    for (version, payload) in rows.iter().rev() {
        above = rebuild_text(id, *version, payload, above.as_deref())?;
    }
    Ok(above)
}

/// One history row of a key as pruning sees it before deciding: no payload yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowMeta {
    pub version: u64,
    pub written_at_ms: i64,
}

/// Which of a key's history rows (ascending versions) go, judged by `HistoryPolicy::keeps` against
/// each row's successor among the rows present (the last row's successor is the document's
/// current version, written at `current_written_at_ms`). Returns one flag per row: `true` = prune.
pub fn doomed_rows(rows: &[RowMeta], current_written_at_ms: i64, now_ms: i64, policy: &HistoryPolicy) -> Vec<bool> {
    rows.iter()
        .enumerate()
        .map(|(index, row)| {
            let successor_written_at_ms = rows.get(index + 1).map_or(current_written_at_ms, |next| next.written_at_ms);
            !policy.keeps(row.written_at_ms, successor_written_at_ms, now_ms)
        })
        .collect()
}

/// What pruning one key writes: rows to delete and rows to store again with a new payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrunePlan {
    pub delete_versions: Vec<u64>,
    pub rewrite: Vec<(u64, StoredPayload)>,
}

/// The plan for one key: `rows` are all its history rows with payloads, ascending; `doomed` comes
/// from `doomed_rows`; `current_text` is the document's value text. Every survivor whose successor
/// changes (the row above it goes) is re-encoded against its new successor, and a survivor whose
/// chain of deltas up to a whole text would reach `keyframe_interval_versions + 1` is stored whole,
/// so after the plan no kept version needs more than that many deltas below the next writes'
/// keyframe.
pub fn plan_prune(
    id: &DocId,
    rows: &[(u64, StoredPayload)],
    doomed: &[bool],
    current_text: Option<&str>,
    policy: &HistoryPolicy,
) -> Result<PrunePlan, StoreError> {
    debug_assert_eq!(rows.len(), doomed.len(), "one verdict per row");
    let mut plan = PrunePlan::default();
    if !doomed.iter().any(|gone| *gone) {
        return Ok(plan);
    }
    // Texts of every row, top down (each from the one above it, as stored).
    let mut texts: Vec<Option<String>> = vec![None; rows.len()];
    let mut above: Option<String> = current_text.map(str::to_string);
    for (index, (version, payload)) in rows.iter().enumerate().rev() {
        let text = rebuild_text(id, *version, payload, above.as_deref())?;
        texts[index] = text.clone();
        above = text;
    }
    // Survivors, top down: the successor of each is the survivor above it (or the document).
    let keyframe_depth_max = policy.keyframe_interval_versions.max(1);
    let mut successor_text: Option<String> = current_text.map(str::to_string);
    let mut successor_depth = 0u64;
    let mut successor_is_original = true;
    for index in (0..rows.len()).rev() {
        let (version, payload) = &rows[index];
        if doomed[index] {
            plan.delete_versions.push(*version);
            successor_is_original = false;
            continue;
        }
        let text = texts[index].as_deref();
        let mut new_payload = if successor_is_original {
            None
        } else {
            Some(match (text, successor_text.as_deref()) {
                (None, _) => StoredPayload::Deleted,
                (Some(text), Some(successor)) => encode_against(text, successor),
                (Some(text), None) => StoredPayload::Full(text.to_string()),
            })
        };
        let depth = match new_payload.as_ref().unwrap_or(payload) {
            StoredPayload::Delta(_) => successor_depth + 1,
            StoredPayload::Full(_) | StoredPayload::Deleted => 0,
        };
        let depth = if depth > keyframe_depth_max {
            let whole =
                text.ok_or_else(|| StoreError::corrupt(format!("history row {version} of {id} lost its text")))?;
            new_payload = Some(StoredPayload::Full(whole.to_string()));
            0
        } else {
            depth
        };
        if let Some(new_payload) = new_payload {
            plan.rewrite.push((*version, new_payload));
        }
        successor_text = texts[index].clone();
        successor_depth = depth;
        successor_is_original = true;
    }
    plan.delete_versions.reverse();
    plan.rewrite.reverse();
    Ok(plan)
}
