//! History stored as deltas restores every kept version exactly, on every backend: random JSON
//! edits (puts, metadata-only versions, deletions and re-creations, with pauses so versions fall
//! in different buckets), then pruning under a policy with tiny buckets, then more edits; after
//! each phase every version the store lists must read back as the value, attributes and user ids
//! its commit wrote, and pruning must keep exactly the versions an independent model of the
//! policy keeps (the last of each bucket, and always the latest).

use std::collections::BTreeMap;
use std::time::Duration;

use hoard::store::limits::{HistoryPolicy, Limits};
use hoard::store::{Commit, CommitOutcome, DocId, Key, SharedStore, StoreName, ValueOp, VersionQuery, Write};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::backends::TestConfig;

/// Width of the test policy's buckets: edits without a pause mostly share one, a pause of
/// `PAUSE_MS` always starts another.
const BUCKET_MS: i64 = 4;
const PAUSE_MS: u64 = 5;
/// Small, so short runs cross keyframes and pruning re-encodes chains.
const KEYFRAME_INTERVAL_VERSIONS: u64 = 4;

fn test_policy() -> HistoryPolicy {
    HistoryPolicy {
        keep_every_version_ms: 0,
        keep_hourly_ms: 3_600_000,
        retention_ms: 3_600_000,
        hourly_bucket_ms: BUCKET_MS,
        daily_bucket_ms: BUCKET_MS,
        keyframe_interval_versions: KEYFRAME_INTERVAL_VERSIONS,
    }
}

fn test_config() -> TestConfig {
    TestConfig { limits: Limits::default(), history_policy: test_policy() }
}

#[derive(Clone, Debug)]
enum Edit {
    /// Sets a top-level field (one of a few names) to a number.
    SetNumber(usize, i64),
    /// Sets a field to a string of this many repeated characters.
    SetText(usize, char, usize),
    RemoveField(usize),
    /// Appends to the `items` array.
    PushItem(u32),
    /// Changes an entry in the middle of the `items` array.
    ChangeItem(prop::sample::Index, u32),
    /// Removes an entry of the `items` array.
    RemoveItem(prop::sample::Index),
    /// Writes the same value with new attributes: a version whose value is the previous one's.
    MetadataOnly(u8),
    Delete,
    /// Sleeps `PAUSE_MS`, so the next version lands in a later bucket.
    Pause,
}

const FIELDS: [&str; 6] = ["coins", "gems", "name", "motto", "level", "guild"];

fn edit_strategy() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (0..FIELDS.len(), -1_000i64..1_000_000).prop_map(|(field, n)| Edit::SetNumber(field, n)),
        2 => (0..FIELDS.len(), prop::char::range('a', 'z'), 0usize..400).prop_map(|(f, c, n)| Edit::SetText(f, c, n)),
        1 => (0..FIELDS.len()).prop_map(Edit::RemoveField),
        2 => any::<u32>().prop_map(Edit::PushItem),
        3 => (any::<prop::sample::Index>(), any::<u32>()).prop_map(|(at, n)| Edit::ChangeItem(at, n)),
        1 => any::<prop::sample::Index>().prop_map(Edit::RemoveItem),
        1 => any::<u8>().prop_map(Edit::MetadataOnly),
        1 => Just(Edit::Delete),
        2 => Just(Edit::Pause),
    ]
}

fn starting_value() -> Value {
    let items: Vec<Value> =
        (0..30).map(|n| json!({"id": format!("item-{n:03}"), "level": n % 7, "tags": ["fire", "frost"]})).collect();
    json!({"coins": 100, "gems": 5, "name": "player", "items": items, "journal": "j".repeat(2_000)})
}

/// What one version must read back as.
#[derive(Clone, Debug, PartialEq)]
struct Expected {
    value: Option<Value>,
    attributes: Map<String, Value>,
}

/// Applies `edit` to the model's current value; returns the write to commit (or `None` for a pause).
fn next_write(
    id: &DocId,
    current: &mut Option<Value>,
    attributes: &mut Map<String, Value>,
    edit: &Edit,
) -> Option<Write> {
    let write = Write::new(id.clone());
    if let Edit::Pause = edit {
        return None;
    }
    if let Edit::MetadataOnly(n) = edit {
        *attributes = Map::from_iter([("tag".to_string(), json!(n))]);
        return Some(write.attributes(attributes.clone()));
    }
    if let Edit::Delete = edit {
        if current.is_none() {
            return None;
        }
        *current = None;
        attributes.clear();
        return Some(write.value(ValueOp::Delete));
    }
    let value = current.get_or_insert_with(starting_value);
    let object = value.as_object_mut().expect("the model's values are objects");
    match edit {
        Edit::SetNumber(field, n) => drop(object.insert(FIELDS[*field].into(), json!(n))),
        Edit::SetText(field, c, len) => drop(object.insert(FIELDS[*field].into(), json!(c.to_string().repeat(*len)))),
        Edit::RemoveField(field) => drop(object.remove(FIELDS[*field])),
        Edit::PushItem(_) | Edit::ChangeItem(..) | Edit::RemoveItem(_) => {
            let items = object.entry("items").or_insert_with(|| json!([])).as_array_mut().expect("items is an array");
            match edit {
                Edit::PushItem(n) => items.push(json!({"id": format!("new-{n}"), "level": n % 9})),
                Edit::ChangeItem(at, n) if !items.is_empty() => {
                    let at = at.index(items.len());
                    items[at] = json!({"id": format!("changed-{n}"), "level": n % 5});
                }
                Edit::RemoveItem(at) if !items.is_empty() => drop(items.remove(at.index(items.len()))),
                _ => {}
            }
        }
        Edit::MetadataOnly(_) | Edit::Delete | Edit::Pause => unreachable!("handled above"),
    }
    Some(write.value(ValueOp::Put(value.clone())).attributes(attributes.clone()))
}

async fn play(
    store: &SharedStore,
    id: &DocId,
    edits: &[Edit],
    model: &mut BTreeMap<u64, Expected>,
) -> Result<(), TestCaseError> {
    let (mut current, mut attributes) = match model.last_key_value() {
        Some((_, last)) => (last.value.clone(), last.attributes.clone()),
        None => (None, Map::new()),
    };
    for edit in edits {
        let Some(write) = next_write(id, &mut current, &mut attributes, edit) else {
            if let Edit::Pause = edit {
                tokio::time::sleep(Duration::from_millis(PAUSE_MS)).await;
            }
            continue;
        };
        match store.commit(Commit::single(write)).await.map_err(|e| TestCaseError::fail(e.to_string()))? {
            CommitOutcome::Committed { applied, .. } => {
                model.insert(applied[0].version, Expected { value: current.clone(), attributes: attributes.clone() });
            }
            CommitOutcome::Conflict(conflict) => prop_assert!(false, "an unconditional write conflicted: {}", conflict),
        }
    }
    Ok(())
}

/// Every listed version reads back as the model says; returns the listing, oldest first.
async fn check_every_listed_version(
    store: &SharedStore,
    id: &DocId,
    model: &BTreeMap<u64, Expected>,
) -> Result<Vec<hoard::store::VersionInfo>, TestCaseError> {
    let mut listed = store
        .list_versions(id, &VersionQuery { before_version: None, limit: 1_000 })
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    listed.reverse();
    prop_assert_eq!(
        listed.last().map(|info| info.version),
        model.keys().last().copied(),
        "the latest version is listed"
    );
    for info in &listed {
        let want =
            model.get(&info.version).ok_or_else(|| TestCaseError::fail(format!("unknown version {}", info.version)))?;
        let record = store
            .get_version(id, info.version)
            .await
            .map_err(|e| TestCaseError::fail(format!("version {}: {e}", info.version)))?
            .ok_or_else(|| TestCaseError::fail(format!("listed version {} does not read", info.version)))?;
        prop_assert_eq!(&record.value, &want.value, "value of version {}", info.version);
        prop_assert_eq!(&record.attributes, &want.attributes, "attributes of version {}", info.version);
        prop_assert_eq!(record.info.deleted, want.value.is_none(), "deleted flag of version {}", info.version);
        let bytes = want.value.as_ref().map_or(0, |value| serde_json::to_string(value).map_or(0, |text| text.len()));
        prop_assert_eq!(record.info.value_bytes, bytes as u64, "value bytes of version {}", info.version);
        prop_assert_eq!(&record.info, info, "a version reads as it is listed");
    }
    Ok(listed)
}

async fn run_case(store: SharedStore, id: DocId, before: Vec<Edit>, after: Vec<Edit>) -> Result<(), TestCaseError> {
    let mut model = BTreeMap::new();
    play(&store, &id, &before, &mut model).await?;
    if model.is_empty() {
        return Ok(());
    }
    let listed = check_every_listed_version(&store, &id, &model).await?;
    prop_assert_eq!(listed.len(), model.len(), "nothing is pruned before pruning");
    // The independent model of the test policy: a superseded version survives when its successor
    // was written in a later bucket; the latest always does. (Times are far under an hour old.)
    let survivors: Vec<u64> = listed
        .iter()
        .enumerate()
        .filter(|(index, info)| {
            listed
                .get(index + 1)
                .is_none_or(|next| info.written_at_ms.div_euclid(BUCKET_MS) != next.written_at_ms.div_euclid(BUCKET_MS))
        })
        .map(|(_, info)| info.version)
        .collect();
    store.prune_history().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    let kept = check_every_listed_version(&store, &id, &model).await?;
    prop_assert_eq!(
        kept.iter().map(|info| info.version).collect::<Vec<_>>(),
        survivors.clone(),
        "pruning keeps the last of each bucket"
    );
    model.retain(|version, _| survivors.contains(version));
    // Edits after pruning build on the re-encoded chain.
    play(&store, &id, &after, &mut model).await?;
    check_every_listed_version(&store, &id, &model).await?;
    Ok(())
}

fn check_backend(opened: crate::backends::TestStore, runtime: &tokio::runtime::Runtime, cases: u32) {
    let counter = std::sync::atomic::AtomicU64::new(0);
    let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(before in prop::collection::vec(edit_strategy(), 1..40), after in prop::collection::vec(edit_strategy(), 0..12))| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = DocId::new(StoreName::new("history").expect("name"), Key::new(format!("case-{n}")).expect("key"));
        runtime.block_on(run_case(opened.store.clone(), id, before, after))?;
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

#[test]
fn random_json_edits_restore_exactly_through_pruning_on_memory() {
    let runtime = runtime();
    let opened = runtime.block_on(crate::backends::memory(test_config()));
    check_backend(opened, &runtime, 64);
}

#[test]
fn random_json_edits_restore_exactly_through_pruning_on_sqlite() {
    let runtime = runtime();
    let opened = runtime.block_on(crate::backends::sqlite(test_config()));
    check_backend(opened, &runtime, 48);
}

#[test]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
fn random_json_edits_restore_exactly_through_pruning_on_postgres() {
    let runtime = runtime();
    let opened = runtime.block_on(crate::backends::postgres(test_config()));
    check_backend(opened, &runtime, 48);
}
