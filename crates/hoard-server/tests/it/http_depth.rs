//! Nothing is accepted that cannot be read back: JSON nesting depth has one named limit,
//! checked before any backend for every way a value, message or attribute enters the store
//! (issue 11, reproduction 3).

use serde_json::json;

use crate::support::{
    Client, GAME_SECRET, READ_SECRET, read_document, register_holder, save_value, start_memory, start_player,
};

fn pointer(segments: usize) -> String {
    (0..segments).map(|i| format!("/{}", i % 10)).collect()
}

/// Every route a game server and an operator read a key through still answers.
async fn key_is_readable_everywhere(client: &Client, key: &str) {
    let (status, document) = client.get(&format!("/v1/stores/players/keys/{key}"), READ_SECRET).await;
    assert_eq!(status, 200, "read: {document}");
    let (status, versions) = client.get(&format!("/v1/stores/players/keys/{key}/versions"), READ_SECRET).await;
    assert_eq!(status, 200, "versions: {versions}");
    let update = json!({"ops": [{"op": "increment", "path": "/n", "by": 1}]});
    let (status, updated) = client.post(&format!("/v1/stores/players/keys/{key}/update"), GAME_SECRET, &update).await;
    assert_eq!(status, 200, "update: {updated}");
    let holder = register_holder(client, "reader").await;
    let started = start_player(client, &holder, key).await;
    let body = json!({"token": started["token"], "base_version": started["version"]});
    let (status, ended) = client.post("/v1/sessions/end", GAME_SECRET, &body).await;
    assert_eq!(status, 200, "end: {ended}");
}

#[tokio::test]
async fn an_update_with_a_path_deeper_than_the_depth_limit_is_refused_and_the_key_stays_readable() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let path = pointer(200);
    assert!(path.len() < 512, "under the path byte limit, as in the report");
    let update = json!({"ops": [{"op": "set", "path": path, "value": 1}]});
    let (status, refused) = client.post("/v1/stores/players/keys/deep/update", GAME_SECRET, &update).await;
    assert_eq!((status, refused["error"].clone()), (400, json!("invalid_input")), "{refused}");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("deep")), "the message names the limit: {refused}");
    assert_eq!(read_document(&client, "players", "deep").await["version"], 0, "nothing was written");
    key_is_readable_everywhere(&client, "deep").await;
}

#[tokio::test]
async fn a_receipt_grant_deeper_than_the_depth_limit_grants_nothing_and_the_key_stays_readable() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, "buyer").await;
    let started = start_player(&client, &holder, "buyer").await;
    let (status, saved) = save_value(&client, &started["token"], 0, json!({"n": 0})).await;
    assert_eq!(status, 200, "{saved}");
    let receipt = json!({"token": started["token"], "purchase_id": "deep-1", "payload": {},
        "grant": [{"op": "set", "path": pointer(150), "value": 1}]});
    let (status, refused) = client.post("/v1/receipts", GAME_SECRET, &receipt).await;
    assert_eq!((status, refused["error"].clone()), (400, json!("invalid_input")), "{refused}");
    let document = read_document(&client, "players", "buyer").await;
    assert_eq!((document["value"].clone(), document["version"].clone()), (json!({"n": 0}), json!(1)));
    // The purchase was not recorded, so a valid grant under the same id still applies.
    let receipt = json!({"token": started["token"], "purchase_id": "deep-1", "payload": {},
        "grant": [{"op": "increment", "path": "/n", "by": 1}]});
    let (status, granted) = client.post("/v1/receipts", GAME_SECRET, &receipt).await;
    assert_eq!((status, granted["outcome"].clone()), (200, json!("granted")), "{granted}");
    let body = json!({"token": started["token"], "base_version": granted["party"]["version"]});
    let (status, ended) = client.post("/v1/sessions/end", GAME_SECRET, &body).await;
    assert_eq!(status, 200, "{ended}");
    key_is_readable_everywhere(&client, "buyer").await;
}

/// A JSON value nested `depth` deep (arrays and objects in turn).
fn nested(depth: usize) -> serde_json::Value {
    let mut value = json!("bottom");
    for level in 0..depth {
        value = if level % 2 == 0 { json!([value]) } else { json!({ "k": value }) };
    }
    value
}

/// A tradable profile nested exactly `depth` deep: its item's data carries the depth.
fn tradable(depth: usize, item: &str) -> serde_json::Value {
    json!({"currencies": {"gold": 10}, "items": {item: nested(depth - 2)}})
}

/// Every route that writes a value, a message or attributes, at the deepest accepted depth and
/// one deeper; each deepest write reads back whole through every read route, each deeper one is
/// refused with 400 and changes nothing.
async fn deepest_json_through_every_route(store: hoard::store::SharedStore) {
    use hoard::store::Store as _;
    let depth = hoard::store::Limits::default().json_depth_max;
    let server = crate::support::start(store).await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, "deep").await;
    let mut expected: Vec<(String, serde_json::Value)> = Vec::new();

    // save, sync, commit: the deepest value each, then one deeper refused.
    let by_save = start_player(&client, &holder, "d-save").await;
    let (status, saved) = save_value(&client, &by_save["token"], 0, nested(depth)).await;
    assert_eq!(status, 200, "save: {saved}");
    let (status, refused) = save_value(&client, &by_save["token"], 1, nested(depth + 1)).await;
    assert_eq!(status, 400, "save one deeper: {refused}");
    expected.push(("d-save".into(), nested(depth)));

    let by_sync = start_player(&client, &holder, "d-sync").await;
    let deeper = json!({"sessions": [{"token": by_sync["token"], "base_version": 0, "value": nested(depth + 1)}]});
    let (_, refused) = client.post(&format!("/v1/holders/{holder}/sync"), GAME_SECRET, &deeper).await;
    assert_eq!(refused["sessions"][0]["error"]["error"], "invalid_input", "sync one deeper: {refused}");
    let deepest = json!({"sessions": [{"token": by_sync["token"], "base_version": 0, "value": nested(depth)}]});
    let (status, synced) = client.post(&format!("/v1/holders/{holder}/sync"), GAME_SECRET, &deepest).await;
    assert_eq!((status, synced["sessions"][0]["outcome"].clone()), (200, json!("saved")), "sync: {synced}");
    expected.push(("d-sync".into(), nested(depth)));

    let by_commit = start_player(&client, &holder, "d-commit").await;
    for (value, status_expected) in [(nested(depth + 1), 400), (nested(depth), 200)] {
        let body = json!({"saves": [{"token": by_commit["token"], "base_version": 0, "value": value}]});
        let (status, answer) = client.post("/v1/sessions/commit", GAME_SECRET, &body).await;
        assert_eq!(status, status_expected, "commit: {answer}");
    }
    expected.push(("d-commit".into(), nested(depth)));

    // Attributes: the map itself is one level.
    let by_attributes = start_player(&client, &holder, "d-attributes").await;
    for (inside, status_expected) in [(depth, 400), (depth - 1, 200)] {
        let body = json!({"token": by_attributes["token"], "base_version": 0, "value": 1,
            "attributes": {"a": nested(inside)}});
        let (status, answer) = client.post("/v1/sessions/save", GAME_SECRET, &body).await;
        assert_eq!(status, status_expected, "attributes: {answer}");
    }

    // Lock-free update: a path's segments count, and so does the value it places.
    for (inside, status_expected) in [(depth - 1, 400), (depth - 2, 200)] {
        let update = json!({"ops": [{"op": "set", "path": "/a/b", "value": nested(inside)}]});
        let (status, answer) = client.post("/v1/stores/players/keys/d-update/update", GAME_SECRET, &update).await;
        assert_eq!(status, status_expected, "update: {answer}");
    }
    expected.push(("d-update".into(), json!({"a": {"b": nested(depth - 2)}})));

    // Receipts: a grant placing a deep value; a sent party value at the deepest depth.
    let by_grant = start_player(&client, &holder, "d-grant").await;
    for (inside, purchase, status_expected) in [(depth, "p-deeper", 400), (depth - 1, "p-deepest", 200)] {
        let receipt = json!({"token": by_grant["token"], "purchase_id": purchase, "payload": {},
            "grant": [{"op": "set", "path": "/g", "value": nested(inside)}]});
        let (status, answer) = client.post("/v1/receipts", GAME_SECRET, &receipt).await;
        assert_eq!(status, status_expected, "grant: {answer}");
    }
    expected.push(("d-grant".into(), json!({"g": nested(depth - 1)})));
    let by_receipt = start_player(&client, &holder, "d-receipt").await;
    for (value, purchase, status_expected) in
        [(tradable(depth + 1, "gem"), "r-deeper", 400), (tradable(depth, "gem"), "r-deepest", 200)]
    {
        let receipt = json!({"token": by_receipt["token"], "purchase_id": purchase, "payload": {},
            "grant": [{"op": "increment", "path": "/currencies/gold", "by": 1}], "value": value, "base_version": 0});
        let (status, answer) = client.post("/v1/receipts", GAME_SECRET, &receipt).await;
        assert_eq!(status, status_expected, "receipt value: {answer}");
    }
    let mut receipt_value = tradable(depth, "gem");
    receipt_value["currencies"]["gold"] = json!(11);
    expected.push(("d-receipt".into(), receipt_value));

    // A trade with party states moves a deep item between two deepest profiles.
    let giver = start_player(&client, &holder, "d-giver").await;
    let taker = start_player(&client, &holder, "d-taker").await;
    let legs = json!([{"from": 0, "to": 1, "items": ["sword"]}]);
    let mut too_deep_giver = tradable(depth, "sword");
    too_deep_giver["items"]["sword"] = nested(depth - 1);
    for (giver_value, trade_id, status_expected) in
        [(too_deep_giver, "t-deeper", 400), (tradable(depth, "sword"), "t-deepest", 200)]
    {
        let trade = json!({"trade_id": trade_id, "parties": [giver["token"], taker["token"]], "legs": legs,
            "party_states": [{"value": giver_value, "base_version": 0}, {"value": tradable(depth, "shield"), "base_version": 0}]});
        let (status, answer) = client.post("/v1/trades", GAME_SECRET, &trade).await;
        assert_eq!(status, status_expected, "trade: {answer}");
    }
    expected.push(("d-giver".into(), json!({"currencies": {"gold": 10}, "items": {}})));
    expected.push((
        "d-taker".into(),
        json!({"currencies": {"gold": 10}, "items": {"shield": nested(depth - 2), "sword": nested(depth - 2)}}),
    ));

    // A message body sits in an envelope one level deep.
    for (inside, status_expected) in [(depth, 400), (depth - 1, 200)] {
        let body = json!({"body": nested(inside)});
        let (status, answer) = client.post("/v1/stores/players/keys/d-save/messages", GAME_SECRET, &body).await;
        assert_eq!(status, status_expected, "message: {answer}");
    }

    // end and end_many with the deepest values.
    let by_end = start_player(&client, &holder, "d-end").await;
    for (value, status_expected) in [(nested(depth + 1), 400), (nested(depth), 200)] {
        let body = json!({"token": by_end["token"], "base_version": 0, "value": value});
        let (status, answer) = client.post("/v1/sessions/end", GAME_SECRET, &body).await;
        assert_eq!(status, status_expected, "end: {answer}");
    }
    expected.push(("d-end".into(), nested(depth)));
    let by_end_many = start_player(&client, &holder, "d-end-many").await;
    let body = json!({"ends": [{"token": by_end_many["token"], "base_version": 0, "value": nested(depth)}]});
    let (status, answer) = client.post("/v1/sessions/end_many", GAME_SECRET, &body).await;
    assert_eq!((status, answer["results"][0]["ok"]["ended"].clone()), (200, json!(true)), "end_many: {answer}");
    expected.push(("d-end-many".into(), nested(depth)));

    // Everything reads back whole: the document, its history, a new session's start, the raw
    // store protocol (RemoteStore), and the session read.
    let remote = hoard_server::RemoteStore::connect(&server.url, crate::support::ENGINE_SECRET).await.expect("connect");
    for (key, value) in &expected {
        let document = read_document(&client, "players", key).await;
        assert_eq!(&document["value"], value, "{key}: document");
        let version = document["version"].as_u64().expect("version");
        let (status, record) =
            client.get(&format!("/v1/stores/players/keys/{key}/versions/{version}"), READ_SECRET).await;
        assert_eq!((status, &record["value"]), (200, value), "{key}: history");
        let id = hoard::store::DocId::parse("players", key).expect("id");
        let through_remote = remote.get_many(std::slice::from_ref(&id)).await.expect("remote read");
        assert_eq!(through_remote[0].value.as_ref(), Some(value), "{key}: raw store protocol");
    }
    let attributes = read_document(&client, "players", "d-attributes").await;
    assert_eq!(attributes["attributes"], json!({"a": nested(depth - 1)}));
    let messages = read_document(&client, "players", "d-save").await;
    assert_eq!(messages["inbox"].as_array().map(Vec::len), Some(1), "one message, the deepest");
    assert_eq!(messages["inbox"][0]["body"]["body"], nested(depth - 1));
    let (status, read) = client.post("/v1/sessions/read", GAME_SECRET, &json!({"token": by_save["token"]})).await;
    assert_eq!((status, &read["document"]["value"]), (200, &nested(depth)), "session read");
    let next = register_holder(&client, "next").await;
    let restarted = start_player(&client, &next, "d-end").await;
    assert_eq!(restarted["value"], nested(depth), "start answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_deepest_json_through_every_route_reads_back_and_one_deeper_is_refused() {
    let opened = crate::local_backends::memory(Default::default()).await;
    deepest_json_through_every_route(opened.store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deepest_json_through_every_route_reads_back_and_one_deeper_is_refused() {
    let opened = crate::local_backends::sqlite(Default::default()).await;
    deepest_json_through_every_route(opened.store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn postgres_deepest_json_through_every_route_reads_back_and_one_deeper_is_refused() {
    let opened = crate::local_backends::postgres(Default::default()).await;
    deepest_json_through_every_route(opened.store.clone()).await;
}
