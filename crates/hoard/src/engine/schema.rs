//! A game's profile schema: the template for new profiles, ordered migrations with a
//! backwards-compatibility marker (like Lapis' `lastCompatibleVersion`), reconcile of missing
//! fields from the template, validation before every save, private fields and change lists.
//!
//! Invariants:
//! - A stored value that is not a hoard profile envelope is reported (`DecodeError::NotAProfile`),
//!   never replaced by the template, so the engine can quarantine it instead of overwriting it.
//! - The version marker never goes down: data written by a newer game keeps its newer marker when
//!   an older (but compatible) game saves it, and `encode` refuses a marker older than this game's,
//!   so a migration can never run twice on the same data.
//! - A profile is always a JSON object at the top level: private fields, reconcile and change
//!   events all work on its top-level fields.
//!
//! Pure code: no I/O, no async, no clock.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

/// The envelope field holding hoard's marker (`ProfileMeta`).
pub const ENVELOPE_META_FIELD: &str = "hoard_profile";
/// The envelope field holding the game's profile data.
pub const ENVELOPE_DATA_FIELD: &str = "data";
/// The marker field holding the data version (number of migrations applied).
pub const META_DATA_VERSION_FIELD: &str = "data_version";
/// The marker field holding the lowest data version whose readers can still read the data.
pub const META_LAST_COMPATIBLE_VERSION_FIELD: &str = "last_compatible_version";

type TemplateFn<P> = dyn Fn() -> P + Send + Sync;
type MigrateFn = dyn Fn(Value) -> Result<Value, String> + Send + Sync;
type ValidateFn<P> = dyn Fn(&P) -> Result<(), String> + Send + Sync;

/// One step that moves raw profile data from one data version to the next.
///
/// The migration at position `i` (counting from 0) in a schema takes data at version `i` to
/// version `i + 1`.
#[derive(Clone)]
pub struct Migration {
    name: Arc<str>,
    migrate: Arc<MigrateFn>,
    backwards_compatible: bool,
}

impl Migration {
    /// A migration that is not backwards compatible: once it has run, game versions that do not
    /// know it can no longer open the data.
    pub fn new(
        name: impl Into<String>,
        migrate: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Migration {
        Migration { name: Arc::from(name.into()), migrate: Arc::new(migrate), backwards_compatible: false }
    }

    /// Whether game versions from before this migration can still read *and save* the data after
    /// it (for example: it only adds fields that older versions keep or can do without).
    ///
    /// Saving through an older game goes through that game's profile type, so fields it does not
    /// know are dropped unless the type keeps them (e.g. `#[serde(flatten)] extra: Map<..>`).
    /// Only mark a migration backwards compatible if that loss is acceptable or impossible.
    pub fn backwards_compatible(mut self, backwards_compatible: bool) -> Migration {
        self.backwards_compatible = backwards_compatible;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_backwards_compatible(&self) -> bool {
        self.backwards_compatible
    }
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("name", &self.name)
            .field("backwards_compatible", &self.backwards_compatible)
            .finish_non_exhaustive()
    }
}

/// hoard's marker stored next to the profile data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProfileMeta {
    /// Number of migrations applied to the data.
    pub data_version: u32,
    /// The lowest data version whose readers can still read (and save) this data.
    pub last_compatible_version: u32,
}

/// A stored value opened by `ProfileSchema::decode`.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded<P> {
    pub profile: P,
    /// The marker to pass back to `encode` when saving this profile.
    pub meta: ProfileMeta,
    /// The key held nothing: `profile` is the template.
    pub is_new: bool,
    /// The data version the stored data had before migrations ran, if any ran.
    pub migrated_from: Option<u32>,
    /// At least one missing field was filled from the template.
    pub reconciled: bool,
}

/// A top-level field of the profile data that differs between two states.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldChange {
    pub field: String,
    /// The new value; `None` when the field was removed.
    pub value: Option<Value>,
}

/// Why a stored value could not be opened as a profile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "the stored value is not a hoard profile ({reason}); it was left untouched: inspect it, \
         fix or delete it with the operator tools, then let the player join again"
    )]
    NotAProfile { reason: String },
    #[error(
        "the stored profile has data version {stored_version} and needs a game at data version \
         {last_compatible_version} or later, but this game is at {this_game_version}: run a newer \
         game build for this player"
    )]
    NewerThanThisGame { stored_version: u32, last_compatible_version: u32, this_game_version: u32 },
    #[error(
        "migration {name:?} (from data version {from_version}) failed: {reason}; the stored value \
         was left untouched: fix the migration and let the player join again"
    )]
    MigrationFailed { name: String, from_version: u32, reason: String },
    #[error(
        "the schema's template is not usable ({reason}): make the template serialize to a JSON \
         object"
    )]
    BadTemplate { reason: String },
}

/// Why a profile could not be turned into a stored value. Nothing is saved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "the profile failed the schema's validation ({reason}): nothing was saved; fix the code \
         that produced this state"
    )]
    Invalid { reason: String },
    #[error(
        "the profile cannot be serialized to JSON ({reason}): nothing was saved; check the \
         profile type's Serialize implementation (maps need string keys)"
    )]
    NotSerializable { reason: String },
    #[error(
        "the profile serializes to a JSON {found}, not an object: nothing was saved; make the \
         profile type a struct or a map with string keys"
    )]
    NotAnObject { found: &'static str },
    #[error(
        "the profile's marker says data version {meta_version}, older than this game's \
         {this_game_version}: nothing was saved, since migrations would run again on \
         already-migrated data; pass the meta returned by decode"
    )]
    MetaOlderThanThisGame { meta_version: u32, this_game_version: u32 },
}

/// Describes a game's profile type `P`: template, migrations, validation and private fields.
///
/// Cheap to clone: every part is behind an `Arc`.
pub struct ProfileSchema<P> {
    template: Arc<TemplateFn<P>>,
    migrations: Arc<Vec<Migration>>,
    validate: Option<Arc<ValidateFn<P>>>,
    private_fields: Arc<BTreeSet<String>>,
}

impl<P> Clone for ProfileSchema<P> {
    fn clone(&self) -> Self {
        ProfileSchema {
            template: Arc::clone(&self.template),
            migrations: Arc::clone(&self.migrations),
            validate: self.validate.clone(),
            private_fields: Arc::clone(&self.private_fields),
        }
    }
}

impl<P> fmt::Debug for ProfileSchema<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfileSchema")
            .field("migrations", &self.migrations)
            .field("has_validation", &self.validate.is_some())
            .field("private_fields", &self.private_fields)
            .finish_non_exhaustive()
    }
}

impl<P> ProfileSchema<P>
where
    P: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// A schema whose new profiles come from `template`, with no migrations, no validation and
    /// no private fields.
    pub fn new(template: impl Fn() -> P + Send + Sync + 'static) -> ProfileSchema<P> {
        ProfileSchema {
            template: Arc::new(template),
            migrations: Arc::new(Vec::new()),
            validate: None,
            private_fields: Arc::new(BTreeSet::new()),
        }
    }

    /// Appends a migration; its position fixes the data version it produces, so never reorder
    /// or remove migrations once a game has shipped them.
    pub fn migration(mut self, migration: Migration) -> ProfileSchema<P> {
        Arc::make_mut(&mut self.migrations).push(migration);
        self
    }

    /// Sets the check run before every save (`encode`). A later call replaces an earlier one.
    pub fn validate(mut self, validate: impl Fn(&P) -> Result<(), String> + Send + Sync + 'static) -> ProfileSchema<P> {
        self.validate = Some(Arc::new(validate));
        self
    }

    /// Marks a top-level field as private: it is left out of `client_view` and `client_changes`.
    pub fn private_field(mut self, name: impl Into<String>) -> ProfileSchema<P> {
        Arc::make_mut(&mut self.private_fields).insert(name.into());
        self
    }

    /// A fresh profile from the template.
    pub fn template(&self) -> P {
        (self.template)()
    }

    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    pub fn is_private_field(&self, name: &str) -> bool {
        self.private_fields.contains(name)
    }

    /// This game's data version: the number of migrations.
    pub fn data_version(&self) -> u32 {
        u32::try_from(self.migrations.len()).unwrap_or(u32::MAX)
    }

    /// The lowest data version whose readers can still read data at this game's version: walk
    /// back from the newest migration while migrations are backwards compatible.
    pub fn last_compatible_version(&self) -> u32 {
        let trailing_compatible =
            self.migrations.iter().rev().take_while(|migration| migration.backwards_compatible).count();
        self.data_version().saturating_sub(u32::try_from(trailing_compatible).unwrap_or(u32::MAX))
    }

    /// The marker for data written by this game.
    pub fn current_meta(&self) -> ProfileMeta {
        ProfileMeta { data_version: self.data_version(), last_compatible_version: self.last_compatible_version() }
    }

    /// Opens a stored value (`None`: the key holds nothing) as a profile: migrates older data,
    /// opens compatible newer data as is, fills missing fields from the template.
    pub fn decode(&self, stored: Option<&Value>) -> Result<Decoded<P>, DecodeError> {
        let Some(stored) = stored else {
            return Ok(Decoded {
                profile: self.template(),
                meta: self.current_meta(),
                is_new: true,
                migrated_from: None,
                reconciled: false,
            });
        };
        let (stored_meta, stored_data) = read_envelope(stored)?;
        let this_game_version = self.data_version();

        let (data, meta, migrated_from) = if stored_meta.data_version > this_game_version {
            if this_game_version < stored_meta.last_compatible_version {
                return Err(DecodeError::NewerThanThisGame {
                    stored_version: stored_meta.data_version,
                    last_compatible_version: stored_meta.last_compatible_version,
                    this_game_version,
                });
            }
            // Keep the newer marker: saving through this game must not make the data look
            // older, or the newer game would migrate it again.
            (stored_data.clone(), stored_meta, None)
        } else if stored_meta.data_version < this_game_version {
            let migrated = self.run_migrations(stored_meta.data_version, stored_data.clone())?;
            (migrated, self.current_meta(), Some(stored_meta.data_version))
        } else {
            // Same version: this game's flags describe these migrations, so its marker is the
            // authoritative one.
            (stored_data.clone(), self.current_meta(), None)
        };

        let template = serde_json::to_value(self.template())
            .map_err(|error| DecodeError::BadTemplate { reason: error.to_string() })?;
        let Value::Object(template) = template else {
            return Err(DecodeError::BadTemplate {
                reason: format!("it serializes to a JSON {}", json_kind(&template)),
            });
        };
        let mut data = data;
        let reconciled = match &mut data {
            Value::Object(fields) => fill_missing_fields(fields, &template),
            // Checked by read_envelope and run_migrations; kept total rather than panicking.
            other => {
                return Err(DecodeError::NotAProfile {
                    reason: format!("the profile data is a JSON {}, not an object", json_kind(other)),
                });
            }
        };

        let profile = serde_json::from_value::<P>(data).map_err(|error| DecodeError::NotAProfile {
            reason: format!("the profile data does not fit the profile type: {error}"),
        })?;
        Ok(Decoded { profile, meta, is_new: false, migrated_from, reconciled })
    }

    /// Turns a profile into the stored value: validates it, serializes it and wraps it in the
    /// envelope with `meta` (the meta returned by `decode`).
    pub fn encode(&self, profile: &P, meta: &ProfileMeta) -> Result<Value, EncodeError> {
        if meta.data_version < self.data_version() {
            return Err(EncodeError::MetaOlderThanThisGame {
                meta_version: meta.data_version,
                this_game_version: self.data_version(),
            });
        }
        if let Some(validate) = &self.validate {
            validate(profile).map_err(|reason| EncodeError::Invalid { reason })?;
        }
        let data = serde_json::to_value(profile)
            .map_err(|error| EncodeError::NotSerializable { reason: error.to_string() })?;
        if !data.is_object() {
            return Err(EncodeError::NotAnObject { found: json_kind(&data) });
        }
        Ok(envelope(meta, data))
    }

    /// The profile data without private fields, for sending to the player's client.
    /// A value that is not an object has no fields to hide and is returned as is.
    pub fn client_view(&self, data: &Value) -> Value {
        match data {
            Value::Object(fields) => Value::Object(
                fields
                    .iter()
                    .filter(|(name, _)| !self.is_private_field(name))
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// `changed_fields` without private fields: what a client should be told.
    pub fn client_changes(&self, before: &Value, after: &Value) -> Vec<FieldChange> {
        changed_fields(before, after).into_iter().filter(|change| !self.is_private_field(&change.field)).collect()
    }

    fn run_migrations(&self, from_version: u32, data: Value) -> Result<Value, DecodeError> {
        let first = usize::try_from(from_version).unwrap_or(usize::MAX);
        let mut data = data;
        let mut version = from_version;
        for migration in self.migrations.iter().skip(first) {
            data = (migration.migrate)(data).map_err(|reason| DecodeError::MigrationFailed {
                name: migration.name.to_string(),
                from_version: version,
                reason,
            })?;
            if !data.is_object() {
                return Err(DecodeError::MigrationFailed {
                    name: migration.name.to_string(),
                    from_version: version,
                    reason: format!("it returned a JSON {}, not an object", json_kind(&data)),
                });
            }
            version = version.saturating_add(1);
        }
        Ok(data)
    }
}

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

/// Wraps profile data in the stored envelope.
fn envelope(meta: &ProfileMeta, data: Value) -> Value {
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
fn read_envelope(stored: &Value) -> Result<(ProfileMeta, &Value), DecodeError> {
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

/// Fills fields missing from `data` with the template's, descending into fields that are
/// objects on both sides. Returns whether anything was filled.
///
/// Existing values are never replaced, null included: null is a value the game chose (an
/// `Option` set to `None`, say), and filling it would bring back a default the game cleared.
/// Arrays are not entered: their elements have no names to match against the template's.
fn fill_missing_fields(data: &mut Map<String, Value>, template: &Map<String, Value>) -> bool {
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

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Settings {
        music: bool,
        volume: u8,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Profile {
        coins: i64,
        items: Vec<String>,
        settings: Settings,
        title: Option<String>,
        purchase_history: Vec<String>,
    }

    fn template() -> Profile {
        Profile {
            coins: 100,
            items: vec!["starter sword".to_owned()],
            settings: Settings { music: true, volume: 5 },
            title: Some("newcomer".to_owned()),
            purchase_history: Vec::new(),
        }
    }

    fn schema() -> ProfileSchema<Profile> {
        ProfileSchema::new(template).private_field("purchase_history")
    }

    fn stored(data_version: u32, last_compatible_version: u32, data: Value) -> Value {
        json!({
            "hoard_profile": {
                "data_version": data_version,
                "last_compatible_version": last_compatible_version,
            },
            "data": data,
        })
    }

    fn full_data() -> Value {
        json!({
            "coins": 7,
            "items": ["axe"],
            "settings": {"music": false, "volume": 9},
            "title": "hero",
            "purchase_history": ["p1"],
        })
    }

    /// Three migrations: rename gold→coins (breaking), then two that only add fields.
    fn schema_with_three_migrations() -> ProfileSchema<Profile> {
        schema()
            .migration(Migration::new("rename gold to coins", |mut value: Value| {
                let fields = value.as_object_mut().ok_or("not an object")?;
                let gold = fields.remove("gold").ok_or("no gold")?;
                fields.insert("coins".to_owned(), gold);
                Ok(value)
            }))
            .migration(
                Migration::new("double coins", |mut value: Value| {
                    let coins = value["coins"].as_i64().ok_or("coins is not a number")?;
                    value["coins"] = json!(coins * 2);
                    Ok(value)
                })
                .backwards_compatible(true),
            )
            .migration(
                Migration::new("add a title", |mut value: Value| {
                    value["title"] = json!("veteran");
                    Ok(value)
                })
                .backwards_compatible(true),
            )
    }

    #[test]
    fn new_key_gets_the_template() {
        let schema = schema_with_three_migrations();
        let decoded = schema.decode(None).expect("decode");
        assert_eq!(decoded.profile, template());
        assert!(decoded.is_new);
        assert_eq!(decoded.meta, ProfileMeta { data_version: 3, last_compatible_version: 1 });
        assert_eq!(decoded.migrated_from, None);
        assert!(!decoded.reconciled);
    }

    #[test]
    fn stored_profile_round_trips_through_encode_and_decode() {
        let schema = schema();
        let mut profile = template();
        profile.coins = 42;
        let value = schema.encode(&profile, &schema.current_meta()).expect("encode");
        assert_eq!(value["hoard_profile"], json!({"data_version": 0, "last_compatible_version": 0}));
        let decoded = schema.decode(Some(&value)).expect("decode");
        assert_eq!(decoded.profile, profile);
        assert!(!decoded.is_new);
        assert!(!decoded.reconciled);
    }

    #[test]
    fn missing_fields_are_filled_from_the_template_recursively() {
        let value = stored(0, 0, json!({"coins": 3, "settings": {"music": false}}));
        let decoded = schema().decode(Some(&value)).expect("decode");
        assert!(decoded.reconciled);
        assert_eq!(decoded.profile.coins, 3);
        assert_eq!(decoded.profile.items, vec!["starter sword".to_owned()]);
        assert_eq!(decoded.profile.settings, Settings { music: false, volume: 5 });
        assert_eq!(decoded.profile.title, Some("newcomer".to_owned()));
    }

    #[test]
    fn null_and_existing_arrays_are_kept_by_reconcile() {
        let value = stored(0, 0, json!({"items": [], "title": null}));
        let decoded = schema().decode(Some(&value)).expect("decode");
        assert!(decoded.reconciled);
        assert_eq!(decoded.profile.items, Vec::<String>::new());
        assert_eq!(decoded.profile.title, None);
    }

    #[test]
    fn migrations_run_in_order_from_the_stored_version() {
        let schema = schema_with_three_migrations();
        // At version 0 the field was called gold: all three run, in order.
        let from_zero = stored(0, 0, json!({"gold": 5}));
        let decoded = schema.decode(Some(&from_zero)).expect("decode");
        assert_eq!(decoded.profile.coins, 10);
        assert_eq!(decoded.profile.title, Some("veteran".to_owned()));
        assert_eq!(decoded.migrated_from, Some(0));
        assert_eq!(decoded.meta, ProfileMeta { data_version: 3, last_compatible_version: 1 });

        // At version 2 only the last one runs.
        let from_two = stored(2, 1, json!({"coins": 5}));
        let decoded = schema.decode(Some(&from_two)).expect("decode");
        assert_eq!(decoded.profile.coins, 5);
        assert_eq!(decoded.profile.title, Some("veteran".to_owned()));
        assert_eq!(decoded.migrated_from, Some(2));
    }

    #[test]
    fn last_compatible_version_walks_back_over_backwards_compatible_migrations() {
        assert_eq!(schema().last_compatible_version(), 0);
        assert_eq!(schema_with_three_migrations().last_compatible_version(), 1);
        let breaking_last =
            schema_with_three_migrations().migration(Migration::new("breaking", Ok).backwards_compatible(false));
        assert_eq!(breaking_last.data_version(), 4);
        assert_eq!(breaking_last.last_compatible_version(), 4);
        let all_compatible = schema().migration(Migration::new("compatible", Ok).backwards_compatible(true));
        assert_eq!(all_compatible.last_compatible_version(), 0);
    }

    #[test]
    fn failing_migration_is_reported_by_name() {
        let schema = schema_with_three_migrations();
        let value = stored(0, 0, json!({"coins": 5}));
        let error = schema.decode(Some(&value)).expect_err("no gold field");
        assert_eq!(
            error,
            DecodeError::MigrationFailed {
                name: "rename gold to coins".to_owned(),
                from_version: 0,
                reason: "no gold".to_owned(),
            }
        );
    }

    #[test]
    fn migration_that_returns_a_non_object_fails() {
        let schema = schema().migration(Migration::new("breaks everything", |_| Ok(json!(1))));
        let error = schema.decode(Some(&stored(0, 0, full_data()))).expect_err("non-object");
        assert!(matches!(error, DecodeError::MigrationFailed { from_version: 0, .. }), "{error}");
    }

    #[test]
    fn newer_data_opens_when_this_game_is_at_least_the_last_compatible_version() {
        // This game is at version 1; the data was written at version 3, readable from 1.
        let schema = schema().migration(Migration::new("first", Ok));
        let value = stored(3, 1, full_data());
        let decoded = schema.decode(Some(&value)).expect("decode");
        assert_eq!(decoded.profile.coins, 7);
        assert_eq!(decoded.migrated_from, None);
        assert_eq!(decoded.meta, ProfileMeta { data_version: 3, last_compatible_version: 1 });
    }

    #[test]
    fn newer_incompatible_data_is_refused() {
        let schema = schema().migration(Migration::new("first", Ok));
        let value = stored(3, 2, full_data());
        let error = schema.decode(Some(&value)).expect_err("too new");
        assert_eq!(
            error,
            DecodeError::NewerThanThisGame { stored_version: 3, last_compatible_version: 2, this_game_version: 1 }
        );
    }

    #[test]
    fn saving_newer_data_keeps_its_version_marker() {
        let schema = schema().migration(Migration::new("first", Ok));
        let decoded = schema.decode(Some(&stored(3, 1, full_data()))).expect("decode");
        let saved = schema.encode(&decoded.profile, &decoded.meta).expect("encode");
        assert_eq!(saved["hoard_profile"], json!({"data_version": 3, "last_compatible_version": 1}));
    }

    #[test]
    fn encode_refuses_a_marker_older_than_this_game() {
        let schema = schema_with_three_migrations();
        let stale = ProfileMeta { data_version: 1, last_compatible_version: 1 };
        let error = schema.encode(&template(), &stale).expect_err("stale marker");
        assert_eq!(error, EncodeError::MetaOlderThanThisGame { meta_version: 1, this_game_version: 3 });
    }

    #[test]
    fn validation_failure_refuses_encode() {
        let schema =
            schema().validate(
                |profile: &Profile| {
                    if profile.coins < 0 { Err(format!("coins is {}", profile.coins)) } else { Ok(()) }
                },
            );
        let mut profile = template();
        assert!(schema.encode(&profile, &schema.current_meta()).is_ok());
        profile.coins = -1;
        let error = schema.encode(&profile, &schema.current_meta()).expect_err("invalid");
        assert_eq!(error, EncodeError::Invalid { reason: "coins is -1".to_owned() });
    }

    #[test]
    fn profile_that_is_not_an_object_is_refused_by_encode() {
        let schema = ProfileSchema::new(|| 5_i64);
        let error = schema.encode(&5, &schema.current_meta()).expect_err("number");
        assert_eq!(error, EncodeError::NotAnObject { found: "number" });
    }

    #[test]
    fn value_that_is_not_a_profile_is_reported_not_replaced() {
        let schema = schema();
        let foreign_values = [
            json!("just a string"),
            json!({"coins": 5}),
            json!({"data": {"coins": 5}}),
            json!({"hoard_profile": {"data_version": 0, "last_compatible_version": 0}}),
            json!({"hoard_profile": "v1", "data": {}}),
            json!({"hoard_profile": {"data_version": -1, "last_compatible_version": 0}, "data": {}}),
            json!({"hoard_profile": {"data_version": 0}, "data": {}}),
            stored(0, 1, json!({})),
            stored(0, 0, json!([1, 2])),
            stored(0, 0, json!({"coins": "lots"})),
        ];
        for foreign in foreign_values {
            let result = schema.decode(Some(&foreign));
            assert!(matches!(result, Err(DecodeError::NotAProfile { .. })), "{foreign} gave {result:?}");
        }
    }

    #[test]
    fn private_fields_are_left_out_of_the_client_view() {
        let schema = schema();
        let view = schema.client_view(&full_data());
        assert!(view.get("purchase_history").is_none());
        assert_eq!(view["coins"], json!(7));
        assert_eq!(view["settings"], json!({"music": false, "volume": 9}));
    }

    #[test]
    fn changed_fields_name_each_top_level_change() {
        let before = json!({"coins": 1, "items": ["a"], "title": "x", "settings": {"volume": 1}});
        let after = json!({"coins": 2, "items": ["a"], "settings": {"volume": 2}, "badge": true});
        assert_eq!(
            changed_fields(&before, &after),
            vec![
                FieldChange { field: "badge".to_owned(), value: Some(json!(true)) },
                FieldChange { field: "coins".to_owned(), value: Some(json!(2)) },
                FieldChange { field: "settings".to_owned(), value: Some(json!({"volume": 2})) },
                FieldChange { field: "title".to_owned(), value: None },
            ]
        );
        assert!(changed_fields(&before, &before).is_empty());
    }

    #[test]
    fn client_changes_leave_out_private_fields() {
        let before = full_data();
        let mut after = full_data();
        after["coins"] = json!(8);
        after["purchase_history"] = json!(["p1", "p2"]);
        assert_eq!(
            schema().client_changes(&before, &after),
            vec![FieldChange { field: "coins".to_owned(), value: Some(json!(8)) }]
        );
    }

    #[test]
    fn schema_clones_share_their_parts() {
        let schema = schema_with_three_migrations();
        let copy = schema.clone();
        assert!(Arc::ptr_eq(&schema.migrations, &copy.migrations));
        assert_eq!(copy.data_version(), 3);
    }
}
