//! Stored data that trips a reader anyway (here: a value nested past serde_json's limit, as
//! hoard accepted before the depth limit) is quarantined and reported, never a 500 on every
//! route: the key answers 409 `quarantined`, gets a quarantine record, reads raw and is repaired
//! by an admin; other keys are untouched. A quarantined player is erased all the same, with its
//! quarantine record and history. On the real engines (SQLite and PostgreSQL), whose rows hold
//! JSON text.

use std::sync::Arc;

use hoard::liveops::erase::holds_no_data;
use hoard::store::sqlite::{SqliteOptions, SqliteStore};
use hoard::store::{Commit, DocId, ListQuery, SharedStore, StoreName, VersionQuery, Write};
use serde_json::{Value, json};

use crate::local_backends::{fresh_schema_name, postgres_in_schema, postgres_url};
use crate::support::{ADMIN_SECRET, Client, GAME_SECRET, READ_SECRET, register_holder, start, start_player};

/// JSON text nested 200 deep: valid JSON that serde_json (128 levels) refuses to read.
fn too_deep_text() -> String {
    format!("{}1{}", "[".repeat(200), "]".repeat(200))
}

async fn write_two_keys(store: &SharedStore) {
    for key in ["deep", "fine"] {
        let id = DocId::parse("players", key).expect("id");
        let write = Write::put(id, json!({"currencies": {"gold": 5}, "items": {}}));
        store.commit(Commit::single(write)).await.expect("commit");
    }
}

async fn quarantined_key_is_reported_read_raw_and_repaired(store: SharedStore, planted: String) {
    let server = start(store).await;
    let client = Client::new(&server.url);
    let (status, refused) = client.get("/v1/stores/players/keys/deep", READ_SECRET).await;
    assert_eq!((status, refused["error"].clone()), (409, json!("quarantined")), "{refused}");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("players/deep")), "{refused}");
    let (status, fine) = client.get("/v1/stores/players/keys/fine", READ_SECRET).await;
    assert_eq!(status, 200, "another key reads: {fine}");

    let holder = register_holder(&client, "q").await;
    let start_deep = json!({"store": "players", "key": "deep", "holder": holder, "policy": "fail_fast"});
    let (status, refused) = client.post("/v1/sessions/start", GAME_SECRET, &start_deep).await;
    assert_eq!((status, refused["error"].clone()), (409, json!("quarantined")), "{refused}");
    let update = json!({"ops": [{"op": "increment", "path": "/n", "by": 1}]});
    let (status, refused) = client.post("/v1/stores/players/keys/deep/update", GAME_SECRET, &update).await;
    assert_eq!((status, refused["error"].clone()), (409, json!("quarantined")), "{refused}");
    let _fine_session = start_player(&client, &holder, "fine").await;
    let (status, _) = client.get("/v1/stores/players/keys/deep/versions", READ_SECRET).await;
    assert_eq!(status, 200, "history lists without reading values");

    let (status, listed) = client.get("/v1/stores/hoard.quarantine/keys?prefix=players/deep/", ADMIN_SECRET).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["keys"].as_array().map(Vec::len), Some(1), "one quarantine record: {listed}");
    let record_key = listed["keys"][0].as_str().expect("key").replace('/', "%2F");
    let (_, record) = client.get(&format!("/v1/stores/hoard.quarantine/keys/{record_key}"), ADMIN_SECRET).await;
    assert_eq!((record["value"]["store"].clone(), record["value"]["key"].clone()), (json!("players"), json!("deep")));

    let (status, raw) = client.get("/v1/stores/players/keys/deep/raw", ADMIN_SECRET).await;
    assert_eq!(status, 200, "{raw}");
    assert_eq!((raw["readable"].clone(), raw["field"].clone()), (json!(false), json!("value")), "{raw}");
    assert_eq!(raw["raw_text"], Value::String(planted), "the stored text, exactly");
    let (status, _) = client.get("/v1/stores/players/keys/deep/raw", GAME_SECRET).await;
    assert_eq!(status, 403, "raw reads are for admins");

    let repair = json!({"value": {"currencies": {"gold": 5}, "items": {}}});
    let (status, refused) = client.post("/v1/stores/players/keys/deep/repair", GAME_SECRET, &repair).await;
    assert_eq!(status, 403, "{refused}");
    let (status, repaired) = client.post("/v1/stores/players/keys/deep/repair", ADMIN_SECRET, &repair).await;
    assert_eq!(status, 200, "{repaired}");
    let (status, document) = client.get("/v1/stores/players/keys/deep", READ_SECRET).await;
    assert_eq!((status, document["value"].clone()), (200, repair["value"].clone()), "{document}");
    let started = start_player(&client, &holder, "deep").await;
    assert_eq!(started["value"], repair["value"]);
    let (_, raw) = client.get("/v1/stores/players/keys/deep/raw", ADMIN_SECRET).await;
    assert_eq!(raw["readable"], true, "{raw}");
}

const SECRET: &str = "SECRET-PAYLOAD-3141";

/// `deep` (user `roblox:9`, two versions holding `SECRET`) and `fine` (user `roblox:8`).
async fn write_two_players(store: &SharedStore) {
    for (key, user_id, versions) in [("deep", "roblox:9", 2), ("fine", "roblox:8", 1)] {
        for level in 0..versions {
            let id = DocId::parse("players", key).expect("id");
            let value = json!({"currencies": {"gold": 5}, "items": {}, "note": SECRET, "level": level});
            let write = Write::put(id, value).user_ids(vec![user_id.into()]);
            store.commit(Commit::single(write)).await.expect("commit");
        }
    }
}

async fn quarantined_player_is_erased_with_its_quarantine_record_and_history(store: SharedStore, planted: String) {
    let server = start(store.clone()).await;
    let client = Client::new(&server.url);
    let (status, refused) = client.get("/v1/stores/players/keys/deep", READ_SECRET).await;
    assert_eq!((status, refused["error"].clone()), (409, json!("quarantined")), "{refused}");
    let quarantine = StoreName::new(hoard::engine::QUARANTINE_STORE).expect("name");
    let under_deep = ListQuery { prefix: "players/deep/".into(), ..ListQuery::default() };
    let records = store.list_keys(&quarantine, &under_deep).await.expect("list").keys;
    assert_eq!(records.len(), 1, "the key was quarantined: {records:?}");
    let record = DocId::new(quarantine.clone(), records[0].clone());

    let (status, tombstone) =
        client.post("/v1/ops/erase", ADMIN_SECRET, &json!({"user_id": "roblox:9", "reason": "ticket 9"})).await;
    assert_eq!(status, 200, "a quarantined player is erased too: {tombstone}");
    assert_eq!(
        (tombstone["documents_erased"].as_u64(), tombstone["quarantine_records_erased"].as_u64()),
        (Some(1), Some(1))
    );

    let deep = DocId::parse("players", "deep").expect("id");
    for id in [&deep, &record] {
        assert!(holds_no_data(&*store, id).await.expect("reads now"), "{id} holds no data");
        for info in store.list_versions(id, &VersionQuery::default()).await.expect("versions") {
            let version = store.get_version(id, info.version).await.expect("a version that reads");
            let text = serde_json::to_string(&version).expect("json");
            assert!(
                !text.contains(SECRET) && !text.contains(&planted),
                "version {} of {id} holds no data",
                info.version
            );
        }
    }
    assert!(store.list_keys(&quarantine, &under_deep).await.expect("list").keys.is_empty(), "no record left");
    let (status, fine) = client.get("/v1/stores/players/keys/fine", READ_SECRET).await;
    assert_eq!((status, fine["value"]["note"].clone()), (200, json!(SECRET)), "another user's data stays: {fine}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_quarantined_player_is_erased_with_its_quarantine_record_and_history() {
    let folder = tempfile::tempdir().expect("folder");
    let path = folder.path().join("hoard.sqlite3");
    let store: SharedStore = Arc::new(
        SqliteStore::open(SqliteOptions { path: path.clone(), ..SqliteOptions::default() }).await.expect("open"),
    );
    write_two_players(&store).await;
    let planted = format!("{{\"note\": \"{SECRET}\", \"deep\": {}}}", too_deep_text());
    let connection = rusqlite::Connection::open(&path).expect("open the file");
    let changed = connection
        .execute("UPDATE docs SET value = ?1 WHERE store = 'players' AND key = 'deep'", [&planted])
        .expect("plant");
    assert_eq!(changed, 1);
    quarantined_player_is_erased_with_its_quarantine_record_and_history(store, planted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn postgres_quarantined_player_is_erased_with_its_quarantine_record_and_history() {
    let schema = fresh_schema_name();
    let opened = postgres_in_schema(Default::default(), schema.clone()).await;
    write_two_players(&opened.store).await;
    let planted = format!("{{\"note\": \"{SECRET}\", \"deep\": {}}}", too_deep_text());
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await.expect("connect");
    let driver = tokio::spawn(connection);
    let sql = format!("UPDATE \"{schema}\".docs SET value = $1 WHERE store = 'players' AND key = 'deep'");
    let changed = client.execute(&sql, &[&planted]).await.expect("plant");
    assert_eq!(changed, 1);
    drop(client);
    let _ = driver.await;
    quarantined_player_is_erased_with_its_quarantine_record_and_history(opened.store.clone(), planted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_unreadable_value_is_quarantined_read_raw_and_repaired() {
    let folder = tempfile::tempdir().expect("folder");
    let path = folder.path().join("hoard.sqlite3");
    let store: SharedStore = Arc::new(
        SqliteStore::open(SqliteOptions { path: path.clone(), ..SqliteOptions::default() }).await.expect("open"),
    );
    write_two_keys(&store).await;
    let planted = too_deep_text();
    let connection = rusqlite::Connection::open(&path).expect("open the file");
    let changed = connection
        .execute("UPDATE docs SET value = ?1 WHERE store = 'players' AND key = 'deep'", [&planted])
        .expect("plant");
    assert_eq!(changed, 1);
    quarantined_key_is_reported_read_raw_and_repaired(store, planted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn postgres_unreadable_value_is_quarantined_read_raw_and_repaired() {
    let schema = fresh_schema_name();
    let opened = postgres_in_schema(Default::default(), schema.clone()).await;
    write_two_keys(&opened.store).await;
    let planted = too_deep_text();
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await.expect("connect");
    let driver = tokio::spawn(connection);
    let sql = format!("UPDATE \"{schema}\".docs SET value = $1 WHERE store = 'players' AND key = 'deep'");
    let changed = client.execute(&sql, &[&planted]).await.expect("plant");
    assert_eq!(changed, 1);
    drop(client);
    let _ = driver.await;
    quarantined_key_is_reported_read_raw_and_repaired(opened.store.clone(), planted).await;
}
