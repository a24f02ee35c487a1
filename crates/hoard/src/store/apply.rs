//! The semantics of a commit, as a pure function from the keys' current state to their next.
//!
//! Invariant: every backend decides conditions and computes new documents here and only here.
//! A backend's job is to read the current rows under a lock that excludes other writers, call
//! `apply_commit`, and write back exactly the documents it returns (or nothing, on a conflict).
//! This is why memory, SQLite and PostgreSQL cannot disagree on what a commit means.

use serde_json::Value;

use super::limits::Limits;
use super::types::{
    Applied, Commit, CommitId, Condition, Conflict, ConflictKind, Document, Found, InboxMessage, LeaseOp, ValueOp,
    Write,
};
use super::validate::json_bytes;

/// A key's current state, as read inside the commit's transaction.
#[derive(Clone, Debug)]
pub struct Current {
    pub doc: Document,
    /// When the key's current holder's process lease expires (`None`: no holder, or the holder has
    /// no lease row).
    pub holder_expires_at_ms: Option<i64>,
}

/// One key's new state, and whether it is a new version (which also goes to history).
#[derive(Clone, Debug)]
pub struct Next {
    pub doc: Document,
    pub new_version: bool,
}

fn found(current: &Current) -> Found {
    Found {
        exists: current.doc.exists(),
        version: current.doc.version,
        lease: current.doc.lease.clone(),
        holder_expires_at_ms: current.holder_expires_at_ms,
        inbox_len: current.doc.inbox.len(),
    }
}

/// Whether the key has a live holder at `now_ms`, by the store's clock.
pub fn lease_is_live(current: &Current, now_ms: i64) -> bool {
    match (&current.doc.lease.holder, current.holder_expires_at_ms) {
        (None, _) => false,
        (Some(_), None) => false,
        (Some(_), Some(expires_at_ms)) => expires_at_ms > now_ms,
    }
}

pub fn check_condition(current: &Current, condition: &Condition, now_ms: i64) -> Result<(), ConflictKind> {
    let doc = &current.doc;
    match condition {
        Condition::None => Ok(()),
        Condition::Absent if doc.exists() => Err(ConflictKind::Exists),
        Condition::Absent => Ok(()),
        Condition::Version(version) if *version != doc.version => Err(ConflictKind::VersionMismatch),
        Condition::Version(_) => Ok(()),
        Condition::Lease { holder, epoch } => {
            if doc.lease.holder.as_ref() == Some(holder) && doc.lease.epoch == *epoch {
                Ok(())
            } else {
                Err(ConflictKind::LeaseMismatch)
            }
        }
        Condition::LeaseFree if lease_is_live(current, now_ms) => Err(ConflictKind::LeaseHeld),
        Condition::LeaseFree => Ok(()),
        Condition::Before(deadline_ms) if now_ms >= *deadline_ms => Err(ConflictKind::DeadlinePassed),
        Condition::Before(_) => Ok(()),
        Condition::All(conditions) => {
            conditions.iter().try_for_each(|condition| check_condition(current, condition, now_ms))
        }
    }
}

fn increment(value: Option<&Value>, by: i64) -> Result<Value, ConflictKind> {
    let base = match value {
        None => 0,
        Some(Value::Number(number)) => number.as_i64().ok_or(ConflictKind::NotAnInteger)?,
        Some(_) => return Err(ConflictKind::NotAnInteger),
    };
    let sum = base.checked_add(by).ok_or(ConflictKind::IncrementOverflow)?;
    Ok(Value::from(sum))
}

/// A copy of `doc` with every field but the value.
fn document_without_value(doc: &Document) -> Document {
    Document {
        id: doc.id.clone(),
        value: None,
        version: doc.version,
        created_at_ms: doc.created_at_ms,
        updated_at_ms: doc.updated_at_ms,
        attributes: doc.attributes.clone(),
        user_ids: doc.user_ids.clone(),
        lease: doc.lease.clone(),
        inbox: doc.inbox.clone(),
        inbox_next_seq: doc.inbox_next_seq,
        last_commit_id: doc.last_commit_id,
    }
}

/// Whether judging and applying `write` needs the key's current value, or only whether it has
/// one. A write that puts or deletes replaces the value without looking at it (conditions see
/// only existence, version, lease and inbox), and one that changes only the lease or inbox
/// leaves it alone. So a backend may skip reading and decoding a kilobytes-long value for a key
/// none of whose writes reads it: it stands the current value in with `VALUE_NOT_READ` (`None`
/// when absent), and must never store that stand-in: it keeps the stored value unless a write
/// that applied made a new version (`Next::new_version`).
pub fn write_reads_value(write: &Write) -> bool {
    match write.value {
        ValueOp::Put(_) | ValueOp::Delete => false,
        ValueOp::Increment(_) => true,
        // Keeping the value under a new version copies it into history; a write that changes
        // only the lease or the inbox leaves the value where it is.
        ValueOp::Keep => write.changes_version(),
    }
}

/// What a backend puts in `Document::value` for an existing key whose value it did not read
/// because no write of the commit (or batch) reads it (`write_reads_value`). Conditions look only
/// at existence; a write that applies either replaces it or leaves the stored value untouched.
pub const VALUE_NOT_READ: Value = Value::Null;

/// Computes one key's next state, or the reason it cannot change.
pub fn apply_write(
    current: &Current,
    write: &Write,
    commit_id: CommitId,
    now_ms: i64,
    limits: &Limits,
) -> Result<Next, ConflictKind> {
    check_condition(current, &write.condition, now_ms)?;
    let existed = current.doc.exists();
    // The next value is built without cloning the current one when the write replaces it: a
    // profile is kilobytes of nested JSON, and this runs for every save.
    let next_value = match &write.value {
        ValueOp::Keep => current.doc.value.clone(),
        ValueOp::Put(value) => Some(value.clone()),
        ValueOp::Delete => None,
        ValueOp::Increment(by) => {
            let next = increment(current.doc.value.as_ref(), *by)?;
            if json_bytes(&next) > limits.value_bytes_max {
                return Err(ConflictKind::ValueTooLarge);
            }
            Some(next)
        }
    };
    let mut doc = Document { value: next_value, ..document_without_value(&current.doc) };
    if matches!(write.value, ValueOp::Delete) {
        doc.attributes.clear();
        doc.user_ids.clear();
    }
    if let Some(attributes) = &write.attributes {
        doc.attributes = attributes.clone();
    }
    if let Some(user_ids) = &write.user_ids {
        doc.user_ids = user_ids.clone();
    }
    let new_version = write.changes_version();
    if new_version {
        doc.version = doc.version.checked_add(1).ok_or(ConflictKind::IncrementOverflow)?;
        doc.updated_at_ms = now_ms;
        doc.last_commit_id = Some(commit_id);
        if !existed && doc.exists() {
            doc.created_at_ms = now_ms;
        }
    }
    match &write.lease {
        LeaseOp::Keep => {}
        LeaseOp::Acquire(holder) => {
            doc.lease.holder = Some(holder.clone());
            doc.lease.epoch = doc.lease.epoch.checked_add(1).ok_or(ConflictKind::IncrementOverflow)?;
        }
        LeaseOp::Release => doc.lease.holder = None,
    }
    if let Some(through) = write.inbox_ack_through {
        doc.inbox.retain(|message| message.seq > through);
    }
    for body in &write.inbox_push {
        if doc.inbox.len() >= limits.inbox_messages_max {
            return Err(ConflictKind::InboxFull);
        }
        doc.inbox.push(InboxMessage { seq: doc.inbox_next_seq, body: body.clone(), sent_at_ms: now_ms });
        doc.inbox_next_seq = doc.inbox_next_seq.saturating_add(1);
    }
    Ok(Next { doc, new_version })
}

/// Applies a whole commit to the current states of its keys (`currents[i]` belongs to
/// `commit.writes[i]`). Either every write applies, or the first failing one is returned and the
/// caller must write nothing.
// A conflict is an expected outcome returned by value; it is built only when a commit fails.
#[allow(clippy::result_large_err)]
pub fn apply_commit<C: std::borrow::Borrow<Current>>(
    currents: &[C],
    commit: &Commit,
    now_ms: i64,
    limits: &Limits,
) -> Result<(Vec<Next>, Vec<Applied>), Conflict> {
    assert_eq!(currents.len(), commit.writes.len(), "one current state per write");
    let mut nexts = Vec::with_capacity(commit.writes.len());
    let mut applied = Vec::with_capacity(commit.writes.len());
    for (write_index, (current, write)) in currents.iter().zip(&commit.writes).enumerate() {
        let current = current.borrow();
        debug_assert_eq!(current.doc.id, write.id, "current state matches its write");
        let seq_before = current.doc.inbox_next_seq;
        match apply_write(current, write, commit.id, now_ms, limits) {
            Ok(next) => {
                let inbox_seqs = (seq_before..next.doc.inbox_next_seq).collect();
                applied.push(Applied {
                    id: write.id.clone(),
                    version: next.doc.version,
                    epoch: next.doc.lease.epoch,
                    inbox_seqs,
                    inbox_last_waiting_seq: next.doc.inbox.last().map_or(0, |message| message.seq),
                });
                nexts.push(next);
            }
            Err(kind) => {
                return Err(Conflict { write_index, id: write.id.clone(), kind, found: found(current) });
            }
        }
    }
    Ok((nexts, applied))
}
