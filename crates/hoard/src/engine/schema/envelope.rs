//! The stored envelope of a profile: `{"hoard_profile": {data_version, last_compatible_version},
//! "data": {..}}`.
//!
//! Invariant: a value that is not such an envelope (or whose data is not an object) is reported
//! as `NotAProfile`, never read as one; fields a later hoard adds are ignored, not refused.

use serde_json::{Map, Value};

use super::{
    DecodeError, ENVELOPE_DATA_FIELD, ENVELOPE_META_FIELD, META_DATA_VERSION_FIELD, META_LAST_COMPATIBLE_VERSION_FIELD,
    ProfileMeta,
};

/// Wraps profile data in the stored envelope.
pub(super) fn envelope(meta: &ProfileMeta, data: Value) -> Value {
    let mut marker = Map::new();
    marker.insert(META_DATA_VERSION_FIELD.to_owned(), Value::from(meta.data_version));
    marker.insert(META_LAST_COMPATIBLE_VERSION_FIELD.to_owned(), Value::from(meta.last_compatible_version));
    let mut outer = Map::new();
    outer.insert(ENVELOPE_META_FIELD.to_owned(), Value::Object(marker));
    outer.insert(ENVELOPE_DATA_FIELD.to_owned(), data);
    Value::Object(outer)
}

/// Reads the envelope's marker and data. Other envelope fields are ignored (and not kept by
/// `encode`), so a later hoard can add fields without older ones refusing the value.
pub(super) fn read_envelope(stored: &Value) -> Result<(ProfileMeta, &Value), DecodeError> {
    let not_a_profile = |reason: String| DecodeError::NotAProfile { reason };
    let outer = stored
        .as_object()
        .ok_or_else(|| not_a_profile(format!("the value is a JSON {}, not an object", json_kind(stored))))?;
    let marker = outer
        .get(ENVELOPE_META_FIELD)
        .ok_or_else(|| not_a_profile(format!("it has no {ENVELOPE_META_FIELD:?} field")))?
        .as_object()
        .ok_or_else(|| not_a_profile(format!("its {ENVELOPE_META_FIELD:?} field is not an object")))?;
    let data = outer
        .get(ENVELOPE_DATA_FIELD)
        .ok_or_else(|| not_a_profile(format!("it has no {ENVELOPE_DATA_FIELD:?} field")))?;
    if !data.is_object() {
        return Err(not_a_profile(format!(
            "its {ENVELOPE_DATA_FIELD:?} field is a JSON {}, not an object",
            json_kind(data)
        )));
    }
    let version_field = |name: &str| -> Result<u32, DecodeError> {
        marker.get(name).and_then(Value::as_u64).and_then(|number| u32::try_from(number).ok()).ok_or_else(|| {
            not_a_profile(format!(
                "{ENVELOPE_META_FIELD}.{name} is missing or not a whole number from 0 to {}",
                u32::MAX
            ))
        })
    };
    let meta = ProfileMeta {
        data_version: version_field(META_DATA_VERSION_FIELD)?,
        last_compatible_version: version_field(META_LAST_COMPATIBLE_VERSION_FIELD)?,
    };
    if meta.last_compatible_version > meta.data_version {
        return Err(not_a_profile(format!(
            "its last compatible version {} is above its data version {}",
            meta.last_compatible_version, meta.data_version
        )));
    }
    Ok((meta, data))
}

pub(super) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
