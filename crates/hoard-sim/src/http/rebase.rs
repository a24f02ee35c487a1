//! Client rule 2 (README, "Client rules"): adopt a returned value, with the game's changes since
//! the request rebased onto it. `rebase(new, base, now)` is `new + (now − base)`: numbers move
//! by their difference, objects merge key by key (a key the game added is added, one it removed
//! is removed, one both sides added merges from nothing: zero, `{}`, `[]`), and lists — which the simulated game only ever appends to — keep `new` and
//! append what the game appended since `base`.
//!
//! Invariant: `rebase(new, base, base) == new` and `rebase(base, base, now) == now`, so adopting
//! an answer that changed nothing keeps the game's data, and one taken with no game change since
//! is the answer itself.

use serde_json::{Map, Value};

pub fn rebase(new: &Value, base: &Value, now: &Value) -> Value {
    if now == base {
        return new.clone();
    }
    if new == base {
        return now.clone();
    }
    match (new, base, now) {
        (Value::Number(_), Value::Number(_), Value::Number(_)) => match (new.as_i64(), base.as_i64(), now.as_i64()) {
            (Some(new), Some(base), Some(now)) => Value::from(new + (now - base)),
            _ => now.clone(),
        },
        (Value::Object(new), Value::Object(base), Value::Object(now)) => Value::Object(merge(new, base, now)),
        (Value::Array(new), Value::Array(base), Value::Array(now)) => {
            let mut merged = new.clone();
            for element in now {
                if !base.contains(element) && !merged.contains(element) {
                    merged.push(element.clone());
                }
            }
            Value::Array(merged)
        }
        _ => now.clone(),
    }
}

fn merge(new: &Map<String, Value>, base: &Map<String, Value>, now: &Map<String, Value>) -> Map<String, Value> {
    let mut merged = new.clone();
    for key in base.keys().chain(now.keys()) {
        match (base.get(key), now.get(key)) {
            (Some(_), None) => {
                merged.remove(key);
            }
            (None, Some(added)) => match new.get(key) {
                None => {
                    merged.insert(key.clone(), added.clone());
                }
                // Both sides added the key (a trade credits a currency the game also just
                // earned): each side's change counts, from nothing.
                Some(answered) => {
                    merged.insert(key.clone(), rebase(answered, &nothing_like(added), added));
                }
            },
            (Some(before), Some(after)) if before != after => match new.get(key) {
                Some(answered) => {
                    merged.insert(key.clone(), rebase(answered, before, after));
                }
                None => {
                    merged.insert(key.clone(), after.clone());
                }
            },
            _ => {}
        }
    }
    merged
}

/// What a key absent from `base` counts as, for a value like `present`: zero, an empty object or
/// list; `null` for the rest (then the game's value stands).
fn nothing_like(present: &Value) -> Value {
    match present {
        Value::Number(_) => Value::from(0),
        Value::Object(_) => Value::Object(Map::new()),
        Value::Array(_) => Value::Array(Vec::new()),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_trade_answer_keeps_the_play_made_while_it_was_in_flight() {
        let base = json!({"coins": 10, "progress": 3, "minted": ["a"], "items": {"a": {}}});
        let traded = json!({"coins": 4, "progress": 3, "minted": ["a"], "items": {}});
        let now = json!({"coins": 15, "progress": 4, "minted": ["a", "b"], "items": {"a": {}, "b": {}}});
        let adopted = rebase(&traded, &base, &now);
        assert_eq!(adopted, json!({"coins": 9, "progress": 4, "minted": ["a", "b"], "items": {"b": {}}}));
    }

    /// Found by `hoard sim --path http` (seed 120016): a settle credited a currency the profile did
    /// not have when it was saved, while gifts credited it in memory; the gifts' coins were lost.
    #[test]
    fn a_key_both_sides_added_keeps_both_changes() {
        let base = json!({"currencies": {}, "gifted": 0});
        let settled = json!({"currencies": {"coins": 7}, "gifted": 0});
        let now = json!({"currencies": {"coins": 10}, "gifted": 10});
        let adopted = rebase(&settled, &base, &now);
        assert_eq!(adopted, json!({"currencies": {"coins": 17}, "gifted": 10}));
        let items = rebase(&json!({"bag": {"a": 1}}), &json!({}), &json!({"bag": {"b": 2}}));
        assert_eq!(items, json!({"bag": {"a": 1, "b": 2}}));
    }

    #[test]
    fn no_change_on_either_side_is_the_other_side() {
        let base = json!({"coins": 1});
        let other = json!({"coins": 2});
        assert_eq!(rebase(&other, &base, &base), other);
        assert_eq!(rebase(&base, &base, &other), other);
    }
}
