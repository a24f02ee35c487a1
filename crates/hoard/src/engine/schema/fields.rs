//! Top-level fields of profile data: what changed between two states, and reconcile from the
//! template.
//!
//! Invariant: reconcile only adds what is missing; it never replaces a value the game stored,
//! null included.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::FieldChange;

/// The top-level fields that differ between two states of the profile data, sorted by name.
/// A removed field has `value: None`. A value that is not an object counts as having no fields.
pub fn changed_fields(before: &Value, after: &Value) -> Vec<FieldChange> {
    let empty = Map::new();
    let before = before.as_object().unwrap_or(&empty);
    let after = after.as_object().unwrap_or(&empty);
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| match (before.get(name), after.get(name)) {
            (Some(old), Some(new)) if old == new => None,
            (_, Some(new)) => Some(FieldChange { field: name.clone(), value: Some(new.clone()) }),
            (Some(_), None) => Some(FieldChange { field: name.clone(), value: None }),
            (None, None) => None,
        })
        .collect()
}

/// Fills fields missing from `data` with the template's, descending into fields that are
/// objects on both sides. Returns whether anything was filled.
///
/// Existing values are never replaced, null included: null is a value the game chose (an
/// `Option` set to `None`, say), and filling it would bring back a default the game cleared.
/// Arrays are not entered: their elements have no names to match against the template's.
pub(super) fn fill_missing_fields(data: &mut Map<String, Value>, template: &Map<String, Value>) -> bool {
    let mut filled = false;
    for (name, template_value) in template {
        match data.get_mut(name) {
            None => {
                data.insert(name.clone(), template_value.clone());
                filled = true;
            }
            Some(Value::Object(nested)) => {
                if let Value::Object(nested_template) = template_value {
                    filled |= fill_missing_fields(nested, nested_template);
                }
            }
            Some(_) => {}
        }
    }
    filled
}
