//! Placeholder: replaced by the schema branch.
use std::sync::Arc;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ProfileMeta { pub data_version: u32, pub last_compatible_version: u32 }
#[derive(Debug)]
pub struct Decoded<P> { pub profile: P, pub meta: ProfileMeta, pub is_new: bool, pub migrated_from: Option<u32>, pub reconciled: bool }
#[derive(Debug, thiserror::Error)]
pub enum DecodeError { #[error("not a profile: {reason}")] NotAProfile { reason: String }, #[error("newer")] NewerThanThisGame { stored_version: u32, last_compatible_version: u32, this_game_version: u32 }, #[error("migration {name} failed: {reason}")] MigrationFailed { name: String, reason: String } }
#[derive(Debug, thiserror::Error)]
pub enum EncodeError { #[error("invalid: {reason}")] Invalid { reason: String }, #[error("not serializable: {reason}")] NotSerializable { reason: String } }
#[derive(Clone, Debug, PartialEq)]
pub struct FieldChange { pub field: String, pub value: Option<Value> }
pub struct ProfileSchema<P> { template: Arc<dyn Fn() -> P + Send + Sync> }
impl<P> Clone for ProfileSchema<P> { fn clone(&self) -> Self { ProfileSchema { template: self.template.clone() } } }
impl<P> std::fmt::Debug for ProfileSchema<P> { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("ProfileSchema") } }
impl<P: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> ProfileSchema<P> {
    pub fn new(template: impl Fn() -> P + Send + Sync + 'static) -> Self { ProfileSchema { template: Arc::new(template) } }
    pub fn decode(&self, stored: Option<&Value>) -> Result<Decoded<P>, DecodeError> {
        match stored {
            None => Ok(Decoded { profile: (self.template)(), meta: ProfileMeta::default(), is_new: true, migrated_from: None, reconciled: false }),
            Some(v) => { let data = v.get("data").cloned().ok_or(DecodeError::NotAProfile { reason: "no data".into() })?; let profile = serde_json::from_value(data).map_err(|e| DecodeError::NotAProfile { reason: e.to_string() })?; Ok(Decoded { profile, meta: ProfileMeta::default(), is_new: false, migrated_from: None, reconciled: false }) }
        }
    }
    pub fn encode(&self, profile: &P, meta: &ProfileMeta) -> Result<Value, EncodeError> {
        let data = serde_json::to_value(profile).map_err(|e| EncodeError::NotSerializable { reason: e.to_string() })?;
        Ok(serde_json::json!({"hoard_profile": {"data_version": meta.data_version, "last_compatible_version": meta.last_compatible_version}, "data": data}))
    }
    pub fn template(&self) -> P { (self.template)() }
    pub fn client_view(&self, data: &Value) -> Value { data.clone() }
    pub fn changed_fields(before: &Value, after: &Value) -> Vec<FieldChange> { let _ = (before, after); Vec::new() }
    pub fn client_changes(&self, before: &Value, after: &Value) -> Vec<FieldChange> { Self::changed_fields(before, after) }
}
