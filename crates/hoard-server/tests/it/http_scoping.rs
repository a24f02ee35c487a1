//! What one request, key or tenant can reach (issue 11, reproductions 4 and 5): an
//! `Idempotency-Key` answers only the request it was first used for; trade ids are scoped so
//! that one tenant's key can neither block nor detect another's; a key created under a revoked
//! key's name can never use the revoked key's holders; a trade answer carries the store's commit
//! time.

use serde_json::{Value, json};

use crate::support::{
    ADMIN_SECRET, Client, GAME_SECRET, OTHER_GAME_SECRET, read_document, register_holder, start_memory,
};

#[tokio::test]
async fn an_idempotency_key_reused_on_another_target_key_is_refused_and_applies_nothing() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let update = json!({"ops": [{"op": "increment", "path": "/coins", "by": 5}]});
    let alice = "/v1/stores/players/keys/alice/update";
    let bob = "/v1/stores/players/keys/bob/update";
    let (status, first) = client.send("POST", alice, Some(GAME_SECRET), Some(&update), Some("same-key")).await;
    assert_eq!((status, first["value"].clone()), (200, json!({"coins": 5})), "{first}");
    let (status, replay) = client.send("POST", alice, Some(GAME_SECRET), Some(&update), Some("same-key")).await;
    assert_eq!((status, replay["replayed"].clone()), (200, json!(true)), "{replay}");
    let (status, refused) = client.send("POST", bob, Some(GAME_SECRET), Some(&update), Some("same-key")).await;
    assert_eq!((status, refused["error"].clone()), (422, json!("idempotency_key_reused")), "{refused}");
    assert_eq!(read_document(&client, "players", "bob").await["version"], 0, "nothing was applied to bob");
    assert_eq!(read_document(&client, "players", "alice").await["value"], json!({"coins": 5}), "nor twice to alice");

    let message = json!({"body": {"gift": 1}});
    let (status, sent) = client
        .send("POST", "/v1/stores/players/keys/alice/messages", Some(GAME_SECRET), Some(&message), Some("msg-key"))
        .await;
    assert_eq!(status, 200, "{sent}");
    let (status, refused) = client
        .send("POST", "/v1/stores/players/keys/bob/messages", Some(GAME_SECRET), Some(&message), Some("msg-key"))
        .await;
    assert_eq!((status, refused["error"].clone()), (422, json!("idempotency_key_reused")), "{refused}");
    assert_eq!(read_document(&client, "players", "bob").await["inbox"], json!([]), "bob got no message");
    // The same key through another route is refused too.
    let (status, refused) = client.send("POST", alice, Some(GAME_SECRET), Some(&update), Some("msg-key")).await;
    assert_eq!((status, refused["error"].clone()), (422, json!("idempotency_key_reused")), "{refused}");
}

async fn two_parties(client: &Client, secret: &str, store: &str, holder: &str, names: [&str; 2]) -> [Value; 2] {
    let mut tokens = Vec::new();
    for (name, value) in names
        .into_iter()
        .zip([json!({"currencies": {"gold": 10}, "items": {}}), json!({"currencies": {"gold": 10}, "items": {}})])
    {
        let body = json!({"store": store, "key": name, "holder": holder, "policy": "fail_fast"});
        let (status, started) = client.post("/v1/sessions/start", secret, &body).await;
        assert_eq!(status, 200, "{started}");
        let save = json!({"token": started["token"], "base_version": started["version"], "value": value});
        let (status, saved) = client.post("/v1/sessions/save", secret, &save).await;
        assert_eq!(status, 200, "{saved}");
        tokens.push(started["token"].clone());
    }
    [tokens[0].clone(), tokens[1].clone()]
}

#[tokio::test]
async fn trade_ids_are_scoped_so_another_tenant_can_neither_block_nor_detect_them() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let (status, other_holder) = client.post("/v1/holders", OTHER_GAME_SECRET, &json!({"label": "squat"})).await;
    assert_eq!(status, 200, "{other_holder}");
    let other_holder = other_holder["holder"].as_str().expect("holder").to_string();
    let squatters = two_parties(&client, OTHER_GAME_SECRET, "other-game", &other_holder, ["s1", "s2"]).await;
    let squat = json!({"trade_id": "squat-1", "parties": squatters,
        "legs": [{"from": 0, "to": 1, "currencies": {"gold": 1}}]});
    let (status, squatted) = client.post("/v1/trades", OTHER_GAME_SECRET, &squat).await;
    assert_eq!((status, squatted["outcome"].clone()), (200, json!("committed")), "{squatted}");

    let holder = register_holder(&client, "players").await;
    let players = two_parties(&client, GAME_SECRET, "players", &holder, ["alice", "bob"]).await;
    let trade = json!({"trade_id": "squat-1", "parties": players,
        "legs": [{"from": 0, "to": 1, "currencies": {"gold": 3}}]});
    let (status, traded) = client.post("/v1/trades", GAME_SECRET, &trade).await;
    assert_eq!((status, traded["outcome"].clone()), (200, json!("committed")), "not blocked: {traded}");
    assert_eq!(read_document(&client, "players", "bob").await["value"]["currencies"]["gold"], 13);
    // The squatter's retry still answers its own trade, and learns nothing of the other one.
    let (status, replay) = client.post("/v1/trades", OTHER_GAME_SECRET, &squat).await;
    assert_eq!((status, replay["outcome"].clone()), (200, json!("already_committed")), "{replay}");
    assert_eq!(replay["record"]["parties"][0]["store"], "other-game");
    let mut probe = squat.clone();
    probe["legs"] = json!([{"from": 0, "to": 1, "currencies": {"gold": 3}}]);
    let (status, probed) = client.post("/v1/trades", OTHER_GAME_SECRET, &probe).await;
    assert_eq!((status, probed["error"].clone()), (409, json!("trade_id_reused")), "{probed}");
    assert_eq!(probed["message"].as_str().map(|m| m.contains("players")), Some(false), "{probed}");
}

#[tokio::test]
async fn a_committed_trade_answers_with_the_stores_commit_time() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, "time").await;
    let parties = two_parties(&client, GAME_SECRET, "players", &holder, ["tia", "tom"]).await;
    let trade =
        json!({"trade_id": "timed-1", "parties": parties, "legs": [{"from": 0, "to": 1, "currencies": {"gold": 1}}]});
    let (status, traded) = client.post("/v1/trades", GAME_SECRET, &trade).await;
    assert_eq!(status, 200, "{traded}");
    let committed_at_ms = traded["record"]["committed_at_ms"].as_i64().expect("committed_at_ms");
    assert!(committed_at_ms > 0, "{traded}");
    let (_, replay) = client.post("/v1/trades", GAME_SECRET, &trade).await;
    assert_eq!(replay["record"]["committed_at_ms"], committed_at_ms, "a replay reports the same commit time");
}

#[tokio::test]
async fn a_key_created_under_a_revoked_keys_name_cannot_use_the_revoked_keys_holders() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let new_key = json!({"name": "eu-1", "scope": "game_server", "stores": ["players"]});
    let (status, created) = client.post("/v1/admin/keys", ADMIN_SECRET, &new_key).await;
    assert_eq!(status, 201, "{created}");
    let first_secret = created["secret"].as_str().expect("secret").to_string();
    let (status, registered) = client.post("/v1/holders", &first_secret, &json!({"label": "old"})).await;
    assert_eq!(status, 200, "{registered}");
    let old_holder = registered["holder"].as_str().expect("holder").to_string();
    let body = json!({"store": "players", "key": "uma", "holder": old_holder, "policy": "fail_fast"});
    let (status, started) = client.post("/v1/sessions/start", &first_secret, &body).await;
    assert_eq!(status, 200, "{started}");

    let (status, _) = client.send("DELETE", "/v1/admin/keys/eu-1", Some(ADMIN_SECRET), None, None).await;
    assert_eq!(status, 200);
    let (status, recreated) = client.post("/v1/admin/keys", ADMIN_SECRET, &new_key).await;
    assert_eq!(status, 201, "{recreated}");
    let second_secret = recreated["secret"].as_str().expect("secret").to_string();

    let renew = format!("/v1/holders/{old_holder}/renew");
    let (status, refused) = client.post(&renew, &second_secret, &json!({})).await;
    assert_eq!((status, refused["error"].clone()), (403, json!("forbidden")), "{refused}");
    let save = json!({"token": started["token"], "base_version": 0, "value": {"stolen": true}});
    let (status, refused) = client.post("/v1/sessions/save", &second_secret, &save).await;
    assert_eq!(status, 403, "{refused}");
    let (status, refused) = client.post("/v1/sessions/start", &second_secret, &body).await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(read_document(&client, "players", "uma").await["version"], 0, "nothing was written");
    // The new key works with holders of its own.
    let (status, own) = client.post("/v1/holders", &second_secret, &json!({"label": "new"})).await;
    assert_eq!(status, 200, "{own}");
}
