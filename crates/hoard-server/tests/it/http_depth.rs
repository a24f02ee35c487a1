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
