//! Lock-free updates as data: a small set of operations on JSON paths with preconditions,
//! applied to a document's latest value by compare-and-set.
//!
//! Operations (paths are JSON Pointers, RFC 6901; `""` is the whole value):
//! - `{"op":"test","path":P,"value":V}` — precondition: the value at P equals V.
//! - `{"op":"set","path":P,"value":V}` — sets P (creating missing parent objects).
//! - `{"op":"remove","path":P}` — removes P, which must exist.
//! - `{"op":"increment","path":P,"by":N,"min":A,"max":B}` — adds the integer N (absent counts
//!   as 0); the result must stay within the optional bounds [A, B].
//! - `{"op":"add_item","path":P,"id":I,"value":V}` — in the object at P (created if absent),
//!   adds entry I; refused if I is there already (item ids are unique).
//! - `{"op":"remove_item","path":P,"id":I}` — removes entry I, which must be there.
//!
//! Invariant: `apply` is pure and all-or-nothing: either every operation applies and the new
//! value is returned, or the first failing one is named and the input is untouched. The caller
//! commits the result on `Condition::Version(read version)` and retries on a version conflict,
//! so concurrent updates from any number of servers never lose one another.

use hoard::store::Limits;
use hoard::store::validate::{check_depth_of, json_depth};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Operations in one update.
pub const OPS_PER_UPDATE_MAX: usize = 64;
/// Bytes of one path.
pub const PATH_BYTES_MAX: usize = 512;

/// One operation. See the module documentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    Test {
        path: String,
        #[schema(value_type = Object)]
        value: Value,
    },
    Set {
        path: String,
        #[schema(value_type = Object)]
        value: Value,
    },
    Remove {
        path: String,
    },
    Increment {
        path: String,
        by: i64,
        min: Option<i64>,
        max: Option<i64>,
    },
    AddItem {
        path: String,
        id: String,
        #[schema(value_type = Object)]
        value: Value,
    },
    RemoveItem {
        path: String,
        id: String,
    },
}

/// Why an update did not apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpError {
    /// The request is malformed (bad path, too many operations): 400.
    Invalid(String),
    /// A precondition failed on the current value: 409, nothing applied.
    Precondition { index: usize, reason: String },
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::Invalid(reason) => write!(f, "{reason}"),
            OpError::Precondition { index, reason } => write!(f, "operation {index}: {reason}"),
        }
    }
}

fn tokens(path: &str) -> Result<Vec<String>, String> {
    if path.len() > PATH_BYTES_MAX {
        return Err(format!("path is over {PATH_BYTES_MAX} bytes"));
    }
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("path {path:?} must be a JSON Pointer starting with '/'"));
    };
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

fn child<'a>(value: &'a Value, token: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map.get(token),
        Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    }
}

fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |at, token| child(at, token))
}

/// The parent container of `path`, created as objects where missing.
fn parent_mut<'a>(value: &'a mut Value, path: &[String]) -> Result<&'a mut Value, String> {
    let mut at = value;
    for token in path {
        if at.is_null() {
            *at = Value::Object(Map::new());
        }
        at = match at {
            Value::Object(map) => map.entry(token.clone()).or_insert(Value::Null),
            Value::Array(items) => {
                let index: usize = token.parse().map_err(|_| format!("{token:?} is not an array index"))?;
                items.get_mut(index).ok_or_else(|| format!("index {index} is past the array's end"))?
            }
            _ => return Err(format!("{token:?} is inside a value that is neither object nor array")),
        };
    }
    Ok(at)
}

fn set(value: &mut Value, path: &[String], new: Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        *value = new;
        return Ok(());
    };
    let parent = parent_mut(value, parents)?;
    if parent.is_null() {
        *parent = Value::Object(Map::new());
    }
    match parent {
        Value::Object(map) => {
            map.insert(last.clone(), new);
            Ok(())
        }
        Value::Array(items) => {
            let index: usize = last.parse().map_err(|_| format!("{last:?} is not an array index"))?;
            let slot = items.get_mut(index).ok_or_else(|| format!("index {index} is past the array's end"))?;
            *slot = new;
            Ok(())
        }
        _ => Err("the parent is neither object nor array".into()),
    }
}

fn remove(value: &mut Value, path: &[String]) -> Result<Value, String> {
    let Some((last, parents)) = path.split_last() else { return Err("cannot remove the whole value".into()) };
    let parent = lookup_mut(value, parents).ok_or("the path does not exist")?;
    match parent {
        Value::Object(map) => map.remove(last).ok_or_else(|| "the path does not exist".to_string()),
        Value::Array(items) => {
            let index: usize = last.parse().map_err(|_| format!("{last:?} is not an array index"))?;
            if index < items.len() { Ok(items.remove(index)) } else { Err("the path does not exist".into()) }
        }
        _ => Err("the path does not exist".into()),
    }
}

fn lookup_mut<'a>(value: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut at = value;
    for token in path {
        at = match at {
            Value::Object(map) => map.get_mut(token)?,
            Value::Array(items) => items.get_mut(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

fn apply_one(value: &mut Value, op: &Op) -> Result<(), String> {
    match op {
        Op::Test { path, value: expected } => {
            let found = lookup(value, &tokens(path)?);
            if found == Some(expected) { Ok(()) } else { Err(format!("test failed: {path} is {found:?}")) }
        }
        Op::Set { path, value: new } => set(value, &tokens(path)?, new.clone()),
        Op::Remove { path } => remove(value, &tokens(path)?).map(drop),
        Op::Increment { path, by, min, max } => {
            let path = tokens(path)?;
            let current = match lookup(value, &path) {
                None | Some(Value::Null) => 0,
                Some(found) => found.as_i64().ok_or("increment needs an integer there")?,
            };
            let next = current.checked_add(*by).ok_or("the increment overflows")?;
            if min.is_some_and(|min| next < min) || max.is_some_and(|max| next > max) {
                return Err(format!("the result {next} would leave the bounds [{min:?}, {max:?}]"));
            }
            set(value, &path, Value::from(next))
        }
        Op::AddItem { path, id, value: item } => {
            let path = tokens(path)?;
            let container = parent_mut(value, &path)?;
            if container.is_null() {
                *container = Value::Object(Map::new());
            }
            let map = container.as_object_mut().ok_or("add_item needs an object of items there")?;
            if map.contains_key(id) {
                return Err(format!("item {id} is already there"));
            }
            map.insert(id.clone(), item.clone());
            Ok(())
        }
        Op::RemoveItem { path, id } => {
            let path = tokens(path)?;
            let map =
                lookup_mut(value, &path).and_then(Value::as_object_mut).ok_or("there is no object of items there")?;
            map.remove(id).map(drop).ok_or_else(|| format!("item {id} is not there"))
        }
    }
}

/// Checks an update against the store's limits before any value is read: its shape, and that
/// no operation can nest the value past `Limits::json_depth_max` (a path's segments plus the
/// depth of the value it places), so that nothing is accepted that cannot be read back. The
/// store checks the resulting value again before it writes it.
pub fn check(ops: &[Op], limits: &Limits) -> Result<(), OpError> {
    check_shape(ops)?;
    for op in ops {
        let (path, placed) = match op {
            Op::Set { path, value } => (path, json_depth(value)),
            Op::AddItem { path, value, .. } => (path, json_depth(value) + 1),
            Op::Test { path, value } => (path, json_depth(value)),
            Op::Remove { path } | Op::Increment { path, .. } | Op::RemoveItem { path, .. } => (path, 0),
        };
        let segments = tokens(path).map_err(OpError::Invalid)?.len();
        check_depth_of("the value an operation makes", segments + placed, limits)
            .map_err(|error| OpError::Invalid(format!("{path}: {error}")))?;
    }
    Ok(())
}

/// Checks the shape of an update (count, paths) before any value is read.
fn check_shape(ops: &[Op]) -> Result<(), OpError> {
    if ops.is_empty() || ops.len() > OPS_PER_UPDATE_MAX {
        return Err(OpError::Invalid(format!("an update has 1 to {OPS_PER_UPDATE_MAX} operations")));
    }
    for op in ops {
        let path = match op {
            Op::Test { path, .. }
            | Op::Set { path, .. }
            | Op::Remove { path }
            | Op::Increment { path, .. }
            | Op::AddItem { path, .. }
            | Op::RemoveItem { path, .. } => path,
        };
        tokens(path).map_err(OpError::Invalid)?;
    }
    Ok(())
}

/// Applies every operation to a copy of `value` (`None`: absent, starts as `null`).
pub fn apply(value: Option<&Value>, ops: &[Op]) -> Result<Value, OpError> {
    check_shape(ops)?;
    let mut next = value.cloned().unwrap_or(Value::Null);
    for (index, op) in ops.iter().enumerate() {
        apply_one(&mut next, op).map_err(|reason| OpError::Precondition { index, reason })?;
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ops(value: Value) -> Vec<Op> {
        serde_json::from_value(value).expect("ops")
    }

    #[test]
    fn guild_bank_deposit_increments_within_bounds_and_refuses_overdraft() {
        let bank = json!({"gold": 10});
        let next = apply(Some(&bank), &ops(json!([{"op": "increment", "path": "/gold", "by": 5, "max": 100}])))
            .expect("deposit");
        assert_eq!(next, json!({"gold": 15}));
        let refused = apply(Some(&next), &ops(json!([{"op": "increment", "path": "/gold", "by": -20, "min": 0}])));
        assert!(matches!(refused, Err(OpError::Precondition { index: 0, .. })));
    }

    #[test]
    fn auction_listing_adds_and_removes_items_by_unique_id() {
        let listings =
            apply(None, &ops(json!([{"op": "add_item", "path": "/listings", "id": "sword-1", "value": {"price": 5}}])))
                .expect("list");
        assert_eq!(listings, json!({"listings": {"sword-1": {"price": 5}}}));
        let twice = apply(
            Some(&listings),
            &ops(json!([{"op": "add_item", "path": "/listings", "id": "sword-1", "value": {}}])),
        );
        assert!(twice.is_err(), "an item id is listed once");
        let bought = apply(
            Some(&listings),
            &ops(json!([
                {"op": "test", "path": "/listings/sword-1/price", "value": 5},
                {"op": "remove_item", "path": "/listings", "id": "sword-1"}
            ])),
        )
        .expect("buy");
        assert_eq!(bought, json!({"listings": {}}));
    }

    #[test]
    fn a_failing_operation_leaves_nothing_applied_and_names_itself() {
        let value = json!({"a": 1});
        let result = apply(
            Some(&value),
            &ops(json!([{"op": "set", "path": "/b", "value": 2}, {"op": "remove", "path": "/zz"}])),
        );
        assert!(matches!(result, Err(OpError::Precondition { index: 1, .. })));
        assert_eq!(value, json!({"a": 1}));
    }

    #[test]
    fn paths_follow_json_pointer_escapes_and_bad_paths_are_invalid() {
        let next = apply(None, &ops(json!([{"op": "set", "path": "/a~1b/c~0d", "value": 1}]))).expect("set");
        assert_eq!(next, json!({"a/b": {"c~d": 1}}));
        assert!(matches!(
            apply(None, &ops(json!([{"op": "set", "path": "no-slash", "value": 1}]))),
            Err(OpError::Invalid(_))
        ));
        assert!(matches!(apply(None, &[]), Err(OpError::Invalid(_))));
    }
}
