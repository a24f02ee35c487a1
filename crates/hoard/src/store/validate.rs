//! Checks a commit against the store's limits before any backend sees it.
//!
//! Invariant: a commit that passes `validate_commit` can only fail at the store through a
//! condition (a `Conflict`) or an infrastructure error, never through its shape or size; a commit
//! that fails it changes nothing, because no backend has been called yet.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::error::InvalidInput;
use super::limits::Limits;
use super::types::{CONDITIONS_PER_WRITE_MAX, Commit, Condition, DocId, LeaseOp, Notification, ValueOp};

/// Counts bytes written to it, so a size check allocates nothing.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serialized size of a JSON value in bytes.
pub fn json_bytes(value: &Value) -> usize {
    let mut counter = ByteCounter(0);
    // Serializing a `Value` cannot fail: its map keys are strings and it holds no NaN.
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// Parses JSON text into a value, with an error that says what is wrong.
/// `NaN` and `Infinity` are not JSON and are refused here.
pub fn parse_json_value(text: &str) -> Result<Value, InvalidInput> {
    serde_json::from_str(text).map_err(|error| InvalidInput::NotJson { reason: error.to_string() })
}

pub fn validate_doc_id(id: &DocId, limits: &Limits) -> Result<(), InvalidInput> {
    check_len("store name", id.store.as_str(), limits.store_name_bytes_max)?;
    check_len("key", id.key.as_str(), limits.key_bytes_max)
}

fn check_len(what: &'static str, text: &str, bytes_max: usize) -> Result<(), InvalidInput> {
    if text.len() > bytes_max {
        return Err(InvalidInput::TooLong { what, bytes: text.len(), bytes_max });
    }
    Ok(())
}

fn check_size(what: &'static str, bytes: usize, bytes_max: usize) -> Result<(), InvalidInput> {
    if bytes > bytes_max {
        return Err(InvalidInput::TooLong { what, bytes, bytes_max });
    }
    Ok(())
}

/// Nesting depth of a JSON value: 0 for a scalar, 1 for `[]` or `{}`, one more per level inside.
/// Walked with an explicit stack (not recursion), so any value in memory can be measured.
pub fn json_depth(value: &Value) -> usize {
    fn container(value: &&Value) -> bool {
        value.is_array() || value.is_object()
    }
    let mut deepest = 0;
    let mut pending: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((at, depth)) = pending.pop() {
        let inside = depth + 1;
        match at {
            Value::Array(items) => {
                deepest = deepest.max(inside);
                pending.extend(items.iter().filter(container).map(|child| (child, inside)));
            }
            Value::Object(map) => {
                deepest = deepest.max(inside);
                pending.extend(map.values().filter(container).map(|child| (child, inside)));
            }
            _ => {}
        }
    }
    deepest
}

/// The depth limit (`Limits::json_depth_max`) of a value, message or attribute map.
pub fn check_depth(what: &'static str, value: &Value, limits: &Limits) -> Result<(), InvalidInput> {
    check_depth_of(what, json_depth(value), limits)
}

/// The depth limit, given a depth already measured (the attributes map counts one level).
pub fn check_depth_of(what: &'static str, depth: usize, limits: &Limits) -> Result<(), InvalidInput> {
    if depth > limits.json_depth_max {
        return Err(InvalidInput::TooDeep { what, depth, depth_max: limits.json_depth_max });
    }
    Ok(())
}

pub fn validate_value(value: &Value, limits: &Limits) -> Result<(), InvalidInput> {
    check_depth("value", value, limits)?;
    check_value_bytes(json_bytes(value), limits)
}

/// The size limit of a value, given its serialized size in bytes.
pub fn check_value_bytes(bytes: usize, limits: &Limits) -> Result<(), InvalidInput> {
    check_size("value", bytes, limits.value_bytes_max)
}

pub fn validate_attributes(attributes: &Map<String, Value>, limits: &Limits) -> Result<(), InvalidInput> {
    let inside = attributes.values().map(json_depth).max().unwrap_or(0);
    check_depth_of("attributes", inside + 1, limits)?;
    let mut counter = ByteCounter(0);
    let bytes = match serde_json::to_writer(&mut counter, attributes) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    };
    check_size("attributes", bytes, limits.attributes_bytes_max)
}

pub fn validate_user_ids(user_ids: &[String], limits: &Limits) -> Result<(), InvalidInput> {
    if user_ids.len() > limits.user_ids_per_key_max {
        return Err(InvalidInput::TooMany {
            what: "user ids",
            count: user_ids.len(),
            count_max: limits.user_ids_per_key_max,
        });
    }
    for user_id in user_ids {
        if user_id.is_empty() {
            return Err(InvalidInput::Empty { what: "user id" });
        }
        check_len("user id", user_id, limits.user_id_bytes_max)?;
        if let Some(position) = user_id.chars().position(char::is_control) {
            return Err(InvalidInput::ControlCharacter { what: "user id", position });
        }
    }
    Ok(())
}

pub fn validate_commit(commit: &Commit, limits: &Limits) -> Result<(), InvalidInput> {
    validate_commit_except_values(commit, limits)?;
    for write in &commit.writes {
        if let ValueOp::Put(value) = &write.value {
            validate_value(value, limits)?;
        }
    }
    Ok(())
}

/// Everything `validate_commit` checks except the put values (depth and size), for callers that
/// serialize the values anyway and check them there (`encoded::EncodedCommit`).
pub fn validate_commit_except_values(commit: &Commit, limits: &Limits) -> Result<(), InvalidInput> {
    if commit.writes.is_empty() {
        return Err(InvalidInput::EmptyCommit);
    }
    if commit.writes.len() > limits.writes_per_commit_max {
        return Err(InvalidInput::TooMany {
            what: "writes in one commit",
            count: commit.writes.len(),
            count_max: limits.writes_per_commit_max,
        });
    }
    let mut seen = HashSet::with_capacity(commit.writes.len());
    for write in &commit.writes {
        validate_doc_id(&write.id, limits)?;
        if !seen.insert(&write.id) {
            return Err(InvalidInput::DuplicateKey { key: write.id.to_string() });
        }
        if let Condition::All(conditions) = &write.condition {
            if conditions.len() > CONDITIONS_PER_WRITE_MAX {
                return Err(InvalidInput::TooMany {
                    what: "conditions in one write",
                    count: conditions.len(),
                    count_max: CONDITIONS_PER_WRITE_MAX,
                });
            }
            if conditions.iter().any(|condition| matches!(condition, Condition::All(_))) {
                return Err(InvalidInput::Malformed {
                    what: "a combined condition",
                    expected: "flat (no All inside All)",
                });
            }
        }
        if let Some(attributes) = &write.attributes {
            validate_attributes(attributes, limits)?;
        }
        if let Some(user_ids) = &write.user_ids {
            validate_user_ids(user_ids, limits)?;
        }
        if let LeaseOp::Acquire(holder) = &write.lease {
            check_len("holder id", holder.as_str(), limits.holder_id_bytes_max)?;
        }
        if write.inbox_push.len() > limits.inbox_messages_max {
            return Err(InvalidInput::TooMany {
                what: "inbox messages in one write",
                count: write.inbox_push.len(),
                count_max: limits.inbox_messages_max,
            });
        }
        for message in &write.inbox_push {
            check_depth("inbox message", message, limits)?;
            check_size("inbox message", json_bytes(message), limits.inbox_message_bytes_max)?;
        }
    }
    Ok(())
}

pub fn validate_notification(notification: &Notification, limits: &Limits) -> Result<(), InvalidInput> {
    if notification.topic.is_empty() {
        return Err(InvalidInput::Empty { what: "notification topic" });
    }
    check_len("notification topic", &notification.topic, limits.notification_topic_bytes_max)?;
    check_len("notification payload", &notification.payload, limits.notification_payload_bytes_max)?;
    if notification.topic.contains('\0') || notification.payload.contains('\0') {
        return Err(InvalidInput::ControlCharacter { what: "notification", position: 0 });
    }
    Ok(())
}
