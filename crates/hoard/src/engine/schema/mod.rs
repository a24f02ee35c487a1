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

mod envelope;
mod fields;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use envelope::{envelope, json_kind, read_envelope};
pub use fields::changed_fields;
use fields::fill_missing_fields;

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
