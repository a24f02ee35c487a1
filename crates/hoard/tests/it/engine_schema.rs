//! Reconcile, migrations and validation through real sessions, on SQLite: what a game sees when
//! its profile type changes between versions.

use hoard::engine::schema::Migration;
use hoard::engine::{Engine, ProfileKind, ProfileSchema, SessionError, StartError};
use hoard::store::{Commit, DocId, StoreName, Write, get};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::engine_sessions::fast_config;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct V2 {
    gold: i64,
    level: u32,
    #[serde(default)]
    title: String,
}

fn rename_coins_to_gold(mut value: Value) -> Result<Value, String> {
    let object = value.as_object_mut().ok_or("profile is not an object")?;
    let coins = object.remove("coins").unwrap_or(json!(0));
    object.insert("gold".into(), coins);
    Ok(value)
}

fn add_level(mut value: Value) -> Result<Value, String> {
    value.as_object_mut().ok_or("profile is not an object")?.entry("level").or_insert(json!(1));
    Ok(value)
}

fn kind_v2() -> ProfileKind<V2> {
    let schema = ProfileSchema::new(|| V2 { gold: 0, level: 1, title: "novice".into() })
        .migration(Migration::new("rename coins to gold", rename_coins_to_gold))
        .migration(Migration::new("add level", add_level).backwards_compatible(true))
        .validate(
            |profile: &V2| if profile.gold < 0 { Err(format!("gold {} is negative", profile.gold)) } else { Ok(()) },
        );
    ProfileKind::new(StoreName::new("players").expect("name"), schema)
}

/// The same game one version older: it knows the first migration only.
fn kind_v1() -> ProfileKind<serde_json::Map<String, Value>> {
    let schema = ProfileSchema::new(serde_json::Map::new)
        .migration(Migration::new("rename coins to gold", rename_coins_to_gold));
    ProfileKind::new(StoreName::new("players").expect("name"), schema)
}

fn id(key: &str) -> DocId {
    DocId::parse("players", key).expect("id")
}

async fn put_raw(store: &dyn hoard::store::Store, key: &str, value: Value) {
    assert!(store.commit(Commit::single(Write::put(id(key), value))).await.expect("commit").is_committed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_data_is_migrated_in_order_and_reconciled_on_load() {
    let t = crate::backends::sqlite(Default::default()).await;
    put_raw(
        &*t.store,
        "old",
        json!({"hoard_profile": {"data_version": 0, "last_compatible_version": 0}, "data": {"coins": 40}}),
    )
    .await;
    let engine = Engine::open(t.store.clone(), fast_config("a")).await.expect("open");
    let session = engine.start_session(&kind_v2(), "old").await.expect("start");
    assert_eq!(session.read(Clone::clone), V2 { gold: 40, level: 1, title: "novice".into() });
    session.end().await.expect("end");
    let stored = get(&*t.store, &id("old")).await.expect("read").value.expect("saved");
    assert_eq!(stored["hoard_profile"]["data_version"], 2);
    assert_eq!(stored["hoard_profile"]["last_compatible_version"], 1, "an older game at version 1 can still read it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_data_opens_in_an_older_game_that_is_still_compatible() {
    let t = crate::backends::sqlite(Default::default()).await;
    let newer = Engine::open(t.store.clone(), fast_config("new")).await.expect("open");
    let session = newer.start_session(&kind_v2(), "mixed").await.expect("start");
    session.update(|p| p.gold = 9).expect("update");
    session.end().await.expect("end");
    let older = Engine::open(t.store.clone(), fast_config("old")).await.expect("open");
    let session = older.start_session(&kind_v1(), "mixed").await.expect("version 1 reads version 2 data");
    assert_eq!(session.read(|data| data.get("gold").cloned()), Some(json!(9)));
    session.update(|data| data.insert("gold".into(), json!(10))).expect("update");
    session.end().await.expect("end");
    let stored = get(&*t.store, &id("mixed")).await.expect("read").value.expect("saved");
    assert_eq!(stored["hoard_profile"]["data_version"], 2, "the older game keeps the newer marker");
    assert_eq!(stored["data"]["gold"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_incompatible_data_is_refused_and_left_untouched() {
    let t = crate::backends::sqlite(Default::default()).await;
    let future = json!({"hoard_profile": {"data_version": 7, "last_compatible_version": 5}, "data": {"gold": 1}});
    put_raw(&*t.store, "future", future.clone()).await;
    let engine = Engine::open(t.store.clone(), fast_config("a")).await.expect("open");
    match engine.start_session(&kind_v2(), "future").await {
        Err(StartError::NewerData { .. }) => {}
        other => panic!("expected NewerData, got {other:?}"),
    }
    let document = get(&*t.store, &id("future")).await.expect("read");
    assert_eq!(document.value, Some(future));
    assert!(document.lease.holder.is_none(), "released, so the newer game can open it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_refuses_a_bad_save_and_keeps_the_last_good_one() {
    let t = crate::backends::sqlite(Default::default()).await;
    let engine = Engine::open(t.store.clone(), fast_config("a")).await.expect("open");
    let session = engine.start_session(&kind_v2(), "valid").await.expect("start");
    session.update(|p| p.gold = 5).expect("update");
    session.save_now().await.expect("valid save");
    session.update(|p| p.gold = -100).expect("memory accepts it");
    match session.save_now().await {
        Err(SessionError::Invalid { reason }) => assert!(reason.contains("negative"), "{reason}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(get(&*t.store, &id("valid")).await.expect("read").value.expect("saved")["data"]["gold"], 5);
    session.update(|p| p.gold = 6).expect("fixed");
    session.end().await.expect("a valid final save goes through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_events_and_client_view_leave_private_fields_out() {
    let t = crate::backends::sqlite(Default::default()).await;
    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    struct Secretive {
        coins: i64,
        anti_cheat_score: i64,
    }
    let schema = ProfileSchema::new(Secretive::default).private_field("anti_cheat_score");
    let kind = ProfileKind::new(StoreName::new("players").expect("name"), schema);
    let engine = Engine::open(t.store.clone(), fast_config("a")).await.expect("open");
    let session = engine.start_session(&kind, "secret").await.expect("start");
    let mut events = session.events();
    session
        .update(|p| {
            p.coins = 3;
            p.anti_cheat_score = 99;
        })
        .expect("update");
    match events.recv().await.expect("event") {
        hoard::engine::SessionEvent::Changed { changes, client_changes } => {
            assert_eq!(changes.len(), 2);
            assert_eq!(client_changes.len(), 1);
            assert_eq!(client_changes[0].field, "coins");
        }
        other => panic!("expected Changed, got {other:?}"),
    }
    let view = session.client_view().expect("the profile encodes");
    assert_eq!(view["coins"], 3);
    assert!(view.get("anti_cheat_score").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_and_user_ids_survive_saves() {
    let t = crate::backends::sqlite(Default::default()).await;
    let engine = Engine::open(t.store.clone(), fast_config("a")).await.expect("open");
    let session = engine.start_session(&kind_v2(), "meta").await.expect("start");
    session.set_user_ids(vec!["1234".into()]).expect("user ids");
    let mut attributes = serde_json::Map::new();
    attributes.insert("region".into(), json!("eu"));
    session.set_attributes(attributes.clone()).expect("attributes");
    session.save_now().await.expect("save");
    for gold in 1..5 {
        session.update(|p| p.gold = gold).expect("update");
        session.save_now().await.expect("save");
    }
    session.end().await.expect("end");
    let document = get(&*t.store, &id("meta")).await.expect("read");
    assert_eq!(document.user_ids, vec!["1234".to_string()]);
    assert_eq!(document.attributes, attributes);
    let again = engine.start_session(&kind_v2(), "meta").await.expect("start again");
    assert_eq!(again.user_ids(), vec!["1234".to_string()]);
    again.update(|p| p.gold = 9).expect("update");
    again.end().await.expect("end");
    assert_eq!(
        get(&*t.store, &id("meta")).await.expect("read").user_ids,
        vec!["1234".to_string()],
        "never wiped by a save"
    );
}
