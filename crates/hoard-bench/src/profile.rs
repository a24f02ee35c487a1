//! The profile every workload plays with: a realistic player document of about 8 KiB of JSON.
//!
//! Invariant: `bench_profile()` is the same value every time (no randomness), and its stored
//! envelope (`ProfileSchema::encode`) is within `PROFILE_PADDING_SLACK_BYTES` of
//! `PROFILE_STORED_BYTES_TARGET`, so figures from different runs and machines compare.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use hoard::engine::{Holdings, ProfileKind, ProfileSchema, Tradable};
use hoard::store::StoreName;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Size the stored profile (envelope included) is padded up to: 8 KiB.
pub const PROFILE_STORED_BYTES_TARGET: usize = 8 * 1024;
/// How far below the target the padding may leave the profile (the envelope's own fields vary).
pub const PROFILE_PADDING_SLACK_BYTES: usize = 64;
/// Items in the profile's holdings (never traded by the benchmarks: trades move currencies).
pub const PROFILE_ITEMS: usize = 40;
/// Quest entries in the profile.
pub const PROFILE_QUESTS: usize = 60;
/// Starting balance of each currency: large enough that no benchmark trade ever runs short.
pub const PROFILE_STARTING_BALANCE: i64 = 1_000_000_000;

/// A player: currencies and items (tradable), progress, and a journal that pads it to size.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchProfile {
    pub holdings: Holdings,
    pub level: u32,
    pub experience: u64,
    pub quests: BTreeMap<String, u32>,
    /// Bumped by every benchmark change, so every save carries a new value.
    pub changes: u64,
    pub journal: String,
}

impl Tradable for BenchProfile {
    fn holdings(&self) -> &Holdings {
        &self.holdings
    }
    fn holdings_mut(&mut self) -> &mut Holdings {
        &mut self.holdings
    }
}

fn unpadded_profile() -> BenchProfile {
    let mut holdings = Holdings::default();
    holdings.currencies.insert("coins".into(), PROFILE_STARTING_BALANCE);
    holdings.currencies.insert("gems".into(), PROFILE_STARTING_BALANCE);
    for item in 0..PROFILE_ITEMS {
        holdings.items.insert(
            format!("item-{item:03}"),
            json!({"kind": "sword", "level": item % 10, "enchantments": ["fire", "frost"], "durability": 97}),
        );
    }
    let quests = (0..PROFILE_QUESTS).map(|quest| (format!("quest-{quest:03}"), (quest % 5) as u32)).collect();
    BenchProfile { holdings, level: 42, experience: 1_234_567, quests, changes: 0, journal: String::new() }
}

/// The benchmark profile, padded to about `PROFILE_STORED_BYTES_TARGET` bytes when stored.
pub fn bench_profile() -> BenchProfile {
    static PROFILE: OnceLock<BenchProfile> = OnceLock::new();
    PROFILE
        .get_or_init(|| {
            let mut profile = unpadded_profile();
            let unpadded = stored_bytes(&profile);
            profile.journal = "x".repeat(PROFILE_STORED_BYTES_TARGET.saturating_sub(unpadded));
            profile
        })
        .clone()
}

/// The schema of the benchmark profile; its template is the padded profile.
pub fn bench_schema() -> ProfileSchema<BenchProfile> {
    ProfileSchema::new(bench_profile)
}

/// The profile kind in the named store (each workload uses its own store name).
pub fn bench_kind(store: &StoreName) -> ProfileKind<BenchProfile> {
    ProfileKind::new(store.clone(), bench_schema())
}

/// Bytes of the profile as stored (the JSON envelope hoard writes).
pub fn stored_bytes(profile: &BenchProfile) -> usize {
    let schema = ProfileSchema::new(BenchProfile::default);
    schema
        .encode(profile, &schema.current_meta())
        .ok()
        .and_then(|value| serde_json::to_vec(&value).ok())
        .map_or(0, |bytes| bytes.len())
}

/// The stored JSON text of the benchmark profile, for baselines and seeding.
pub fn stored_profile_text() -> String {
    let schema = bench_schema();
    schema
        .encode(&bench_profile(), &schema.current_meta())
        .ok()
        .and_then(|value| serde_json::to_string(&value).ok())
        .unwrap_or_default()
}

/// The benchmark profile padded (by its journal) to about `stored_bytes_target` bytes as stored,
/// for the curve of cost per save against profile size.
pub fn profile_of_stored_bytes(stored_bytes_target: usize) -> BenchProfile {
    let mut profile = unpadded_profile();
    let unpadded = stored_bytes(&profile);
    profile.journal = "x".repeat(stored_bytes_target.saturating_sub(unpadded));
    profile
}

/// A profile kind whose template is `profile` (every new session of it starts from that value).
pub fn bench_kind_with(store: &StoreName, profile: BenchProfile) -> ProfileKind<BenchProfile> {
    ProfileKind::new(store.clone(), ProfileSchema::new(move || profile.clone()))
}

/// The stored JSON text of `profile`.
pub fn stored_text_of(profile: &BenchProfile) -> String {
    let schema = bench_schema();
    schema
        .encode(profile, &schema.current_meta())
        .ok()
        .and_then(|value| serde_json::to_string(&value).ok())
        .unwrap_or_default()
}

/// A typical edit of a few fields: what one play session's autosave carries (a currency, the
/// experience, one quest's progress and the change counter).
pub fn typical_edit(profile: &mut BenchProfile, round: usize) {
    profile.changes += 1;
    profile.experience += 17;
    *profile.holdings.currencies.entry("coins".into()).or_insert(0) += 5;
    if let Some(progress) = profile.quests.get_mut(&format!("quest-{:03}", round % PROFILE_QUESTS)) {
        *progress += 1;
    }
}
