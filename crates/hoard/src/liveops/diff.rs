//! JSON diffs between versions, values at paths, and restoring selected paths: pure.
//!
//! Invariant: `diff(a, b)` lists every JSON pointer where `a` and `b` differ (objects compared
//! member by member, anything else as a whole), and `restore_paths` changes only the paths it
//! is given, so "everything but purchases" leaves the purchases exactly as they are now.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Differences one diff reports at most (the rest are counted in `truncated`).
pub const DIFF_CHANGES_MAX: usize = 1_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    /// `None`: absent on that side.
    pub from: Option<Value>,
    pub to: Option<Value>,
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The changes from `from` to `to`, by JSON pointer, in key order.
pub fn diff(from: Option<&Value>, to: Option<&Value>) -> Vec<Change> {
    let mut changes = Vec::new();
    walk("", from, to, &mut changes);
    changes
}

fn walk(path: &str, from: Option<&Value>, to: Option<&Value>, out: &mut Vec<Change>) {
    if out.len() >= DIFF_CHANGES_MAX || from == to {
        return;
    }
    match (from, to) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                walk(&format!("{path}/{}", escape(key)), a.get(key), b.get(key), out);
            }
        }
        _ => out.push(Change { path: path.to_string(), from: from.cloned(), to: to.cloned() }),
    }
}

/// Sets (or, with `None`, removes) the value at a JSON pointer, creating objects on the way.
/// Returns false when the path runs through something that is not an object.
pub fn set_path(root: &mut Value, pointer: &str, value: Option<Value>) -> bool {
    if pointer.is_empty() {
        match value {
            Some(value) => *root = value,
            None => *root = Value::Null,
        }
        return true;
    }
    let segments: Vec<String> = pointer.split('/').skip(1).map(|s| s.replace("~1", "/").replace("~0", "~")).collect();
    let Some((last, parents)) = segments.split_last() else { return false };
    let mut node = root;
    for segment in parents {
        let Value::Object(map) = node else { return false };
        node = map.entry(segment.clone()).or_insert_with(|| Value::Object(Default::default()));
    }
    let Value::Object(map) = node else { return false };
    match value {
        Some(value) => {
            map.insert(last.clone(), value);
        }
        None => {
            map.remove(last);
        }
    }
    true
}

/// What a selective restore writes: `only` paths taken from `old` into `current`, or (with
/// `except`) `old` with the `except` paths kept as they are in `current`.
pub fn restore_paths(current: &Value, old: &Value, only: &[String], except: &[String]) -> Result<Value, String> {
    if !only.is_empty() && !except.is_empty() {
        return Err("give `paths` or `except`, not both".into());
    }
    for path in only.iter().chain(except) {
        if !path.starts_with('/') {
            return Err(format!("path {path:?} is not a JSON pointer (it must start with /)"));
        }
    }
    let (mut base, source, paths) =
        if only.is_empty() { (old.clone(), current, except) } else { (current.clone(), old, only) };
    for path in paths {
        if !set_path(&mut base, path, source.pointer(path).cloned()) {
            return Err(format!("path {path:?} runs through a value that is not an object"));
        }
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_lists_changed_pointers_and_restore_keeps_excepted_paths() {
        let old = json!({"coins": 5, "bag": {"a": 1}, "purchases": ["p1"]});
        let now = json!({"coins": 9, "bag": {"a": 1, "b": 2}, "purchases": ["p1", "p2"]});
        let changes = diff(Some(&old), Some(&now));
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, vec!["/bag/b", "/coins", "/purchases"]);
        let restored = restore_paths(&now, &old, &[], &["/purchases".into()]).expect("restore");
        assert_eq!(restored, json!({"coins": 5, "bag": {"a": 1}, "purchases": ["p1", "p2"]}));
        let only_coins = restore_paths(&now, &old, &["/coins".into()], &[]).expect("restore");
        assert_eq!(only_coins, json!({"coins": 5, "bag": {"a": 1, "b": 2}, "purchases": ["p1", "p2"]}));
        assert!(restore_paths(&now, &old, &["coins".into()], &[]).is_err());
    }
}
