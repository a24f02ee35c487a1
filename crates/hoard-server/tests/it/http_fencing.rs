//! Version-fenced session writes over HTTP: every save, end and multi-session commit is
//! conditional on the token's lease and on the version its value was based on, so a stale write
//! (an autosave in flight across a trade, a client that never adopted a grant) is refused with
//! the current document and changes nothing (issue 11, reproductions 1 and 2).

use serde_json::{Value, json};

use crate::support::{Client, GAME_SECRET, read_document, register_holder, save_value, start_memory, start_player};

fn version(answer: &Value) -> u64 {
    answer["version"].as_u64().unwrap_or_else(|| panic!("a version in {answer}"))
}

#[tokio::test]
async fn a_stale_save_after_a_trade_is_refused_so_the_traded_item_is_not_duplicated() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, "repro1").await;
    let alice = start_player(&client, &holder, "alice").await;
    let bob = start_player(&client, &holder, "bob").await;
    let before_trade = json!({"items": {"sword-1": {}}, "currencies": {}});
    let (status, saved_alice) = save_value(&client, &alice["token"], version(&alice), before_trade.clone()).await;
    assert_eq!(status, 200, "{saved_alice}");
    let (status, saved_bob) =
        save_value(&client, &bob["token"], version(&bob), json!({"items": {}, "currencies": {}})).await;
    assert_eq!(status, 200, "{saved_bob}");
    let trade = json!({"trade_id": "repro-1", "parties": [alice["token"], bob["token"]],
        "legs": [{"from": 0, "to": 1, "items": ["sword-1"]}]});
    let (status, traded) = client.post("/v1/trades", GAME_SECRET, &trade).await;
    assert_eq!((status, traded["outcome"].clone()), (200, json!("committed")), "{traded}");

    // An autosave that was already in flight, or a client that has not adopted the answer.
    let (status, stale) = save_value(&client, &alice["token"], version(&saved_alice), before_trade).await;
    assert_eq!((status, stale["error"].clone()), (409, json!("stale")), "{stale}");
    assert_eq!(stale["current"]["key"], "alice");
    assert_eq!(stale["current"]["value"], json!({"items": {}, "currencies": {}}), "the current document rides along");
    assert_eq!(stale["current"]["version"], version(&saved_alice) + 1);

    let alice_now = read_document(&client, "players", "alice").await;
    let bob_now = read_document(&client, "players", "bob").await;
    assert!(alice_now["value"]["items"].get("sword-1").is_none(), "alice no longer holds the sword: {alice_now}");
    assert!(bob_now["value"]["items"].get("sword-1").is_some(), "bob holds it: {bob_now}");
    assert_eq!(alice_now["version"], stale["current"]["version"], "nothing was written");
}

#[tokio::test]
async fn a_stale_save_after_a_receipt_is_refused_so_the_grant_is_kept() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, "repro2").await;
    let carol = start_player(&client, &holder, "carol").await;
    let (status, saved) = save_value(&client, &carol["token"], version(&carol), json!({"gems": 0})).await;
    assert_eq!(status, 200, "{saved}");
    let receipt = json!({"token": carol["token"], "purchase_id": "p-repro-2", "payload": {"product": "gems-100"},
        "grant": [{"op": "increment", "path": "/gems", "by": 100}]});
    let (status, granted) = client.post("/v1/receipts", GAME_SECRET, &receipt).await;
    assert_eq!((status, granted["outcome"].clone()), (200, json!("granted")), "{granted}");

    let (status, stale) = save_value(&client, &carol["token"], version(&saved), json!({"gems": 0})).await;
    assert_eq!((status, stale["error"].clone()), (409, json!("stale")), "{stale}");
    assert_eq!(stale["current"]["value"], json!({"gems": 100}));
    assert_eq!(read_document(&client, "players", "carol").await["value"], json!({"gems": 100}), "the grant stays");
    let (status, replay) = client.post("/v1/receipts", GAME_SECRET, &receipt).await;
    assert_eq!((status, replay["outcome"].clone()), (200, json!("already_granted")), "{replay}");
    assert_eq!(
        read_document(&client, "players", "carol").await["value"],
        json!({"gems": 100}),
        "paid once, granted once"
    );
}

#[tokio::test]
async fn a_session_write_without_base_version_is_refused_and_changes_nothing() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, "nobase").await;
    let dave = start_player(&client, &holder, "dave").await;
    let (status, saved) = save_value(&client, &dave["token"], 0, json!({"coins": 1})).await;
    assert_eq!(status, 200, "{saved}");
    let token = &dave["token"];
    for (route, body) in [
        ("/v1/sessions/save", json!({"token": token, "value": {"coins": 99}})),
        ("/v1/sessions/end", json!({"token": token, "value": {"coins": 99}})),
        ("/v1/sessions/commit", json!({"saves": [{"token": token, "value": {"coins": 99}}]})),
    ] {
        let (status, refused) = client.post(route, GAME_SECRET, &body).await;
        assert_eq!((status, refused["error"].clone()), (400, json!("invalid_input")), "{route}: {refused}");
        assert!(refused["message"].as_str().is_some_and(|m| m.contains("base_version")), "{route}: {refused}");
    }
    let document = read_document(&client, "players", "dave").await;
    assert_eq!((document["value"].clone(), document["version"].clone()), (json!({"coins": 1}), json!(1)));
    assert!(document["lease"]["holder"].is_string(), "the session still holds the key");
}

#[tokio::test]
async fn a_retried_save_or_end_whose_answer_was_lost_answers_as_the_first_did_and_writes_nothing() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, "retry").await;
    let erin = start_player(&client, &holder, "erin").await;
    let save = json!({"token": erin["token"], "base_version": 0, "value": {"coins": 5}, "ack_inbox_through": null});
    let (status, first) = client.post("/v1/sessions/save", GAME_SECRET, &save).await;
    assert_eq!(status, 200, "{first}");
    // The same request again, as a client does when the first answer never arrived.
    let (status, retried) = client.post("/v1/sessions/save", GAME_SECRET, &save).await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!((retried["version"].clone(), retried["replayed"].clone()), (first["version"].clone(), json!(true)));
    // The same base with another value is stale, not a retry.
    let (status, stale) = save_value(&client, &erin["token"], 0, json!({"coins": 6})).await;
    assert_eq!((status, stale["error"].clone()), (409, json!("stale")), "{stale}");

    let end = json!({"token": erin["token"], "base_version": version(&first), "value": {"coins": 7}});
    let (status, ended) = client.post("/v1/sessions/end", GAME_SECRET, &end).await;
    assert_eq!((status, ended["ended"].clone(), ended["version"].clone()), (200, json!(true), json!(2)), "{ended}");
    let (status, again) = client.post("/v1/sessions/end", GAME_SECRET, &end).await;
    assert_eq!((status, again["replayed"].clone(), again["version"].clone()), (200, json!(true), json!(2)), "{again}");
    let document = read_document(&client, "players", "erin").await;
    assert_eq!((document["value"].clone(), document["version"].clone()), (json!({"coins": 7}), json!(2)));
    // Once another session took the key, the old token's end is fenced out, even with the same body.
    let next = register_holder(&client, "next").await;
    let taken = start_player(&client, &next, "erin").await;
    let (status, fenced) = client.post("/v1/sessions/end", GAME_SECRET, &end).await;
    assert_eq!((status, fenced["error"].clone()), (409, json!("fenced_out")), "{fenced}");
    assert_eq!(taken["value"], json!({"coins": 7}));
}

#[tokio::test]
async fn a_stale_end_is_refused_with_the_current_document_and_keeps_the_session() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, "end").await;
    let fred = start_player(&client, &holder, "fred").await;
    let (_, saved) = save_value(&client, &fred["token"], 0, json!({"gems": 0})).await;
    let receipt = json!({"token": fred["token"], "purchase_id": "p-end", "payload": {},
        "grant": [{"op": "increment", "path": "/gems", "by": 10}]});
    let (status, granted) = client.post("/v1/receipts", GAME_SECRET, &receipt).await;
    assert_eq!(status, 200, "{granted}");
    let end = json!({"token": fred["token"], "base_version": version(&saved), "value": {"gems": 0}});
    let (status, stale) = client.post("/v1/sessions/end", GAME_SECRET, &end).await;
    assert_eq!((status, stale["error"].clone()), (409, json!("stale")), "{stale}");
    let current = &stale["current"];
    assert_eq!(current["value"], json!({"gems": 10}));
    let document = read_document(&client, "players", "fred").await;
    assert!(document["lease"]["holder"].is_string(), "a stale end releases nothing: {document}");
    // The client adopts `current` and ends on its version.
    let end = json!({"token": fred["token"], "base_version": current["version"], "value": current["value"]});
    let (status, ended) = client.post("/v1/sessions/end", GAME_SECRET, &end).await;
    assert_eq!((status, ended["ended"].clone()), (200, json!(true)), "{ended}");
    assert_eq!(read_document(&client, "players", "fred").await["value"], json!({"gems": 10}));
}

#[tokio::test]
async fn a_multi_session_commit_with_one_stale_base_applies_nothing() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, "commit").await;
    let gina = start_player(&client, &holder, "gina").await;
    let hank = start_player(&client, &holder, "hank").await;
    let (_, gina_saved) = save_value(&client, &gina["token"], 0, json!({"n": 1})).await;
    let (_, hank_saved) = save_value(&client, &hank["token"], 0, json!({"n": 1})).await;
    let (_, _) = save_value(&client, &hank["token"], version(&hank_saved), json!({"n": 2})).await;
    let commit = json!({"saves": [
        {"token": gina["token"], "base_version": version(&gina_saved), "value": {"n": 10}},
        {"token": hank["token"], "base_version": version(&hank_saved), "value": {"n": 10}},
    ]});
    let (status, stale) = client.post("/v1/sessions/commit", GAME_SECRET, &commit).await;
    assert_eq!((status, stale["error"].clone()), (409, json!("stale")), "{stale}");
    assert_eq!((stale["current"]["key"].clone(), stale["current"]["value"].clone()), (json!("hank"), json!({"n": 2})));
    assert_eq!(read_document(&client, "players", "gina").await["value"], json!({"n": 1}), "all or none");
    let commit = json!({"saves": [
        {"token": gina["token"], "base_version": version(&gina_saved), "value": {"n": 10}},
        {"token": hank["token"], "base_version": version(&hank_saved) + 1, "value": {"n": 10}},
    ]});
    let (status, committed) = client.post("/v1/sessions/commit", GAME_SECRET, &commit).await;
    assert_eq!(status, 200, "{committed}");
    assert_eq!(committed["versions"], json!([2, 3]), "each key's new version, in order");
    let (status, retried) = client.post("/v1/sessions/commit", GAME_SECRET, &commit).await;
    assert_eq!((status, retried["replayed"].clone(), retried["versions"].clone()), (200, json!(true), json!([2, 3])));
}

#[tokio::test]
async fn a_token_that_lost_its_key_is_told_fenced_out_not_stale() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let first = register_holder(&client, "first").await;
    let second = register_holder(&client, "second").await;
    let ivy = start_player(&client, &first, "ivy").await;
    let (_, saved) = save_value(&client, &ivy["token"], 0, json!({"n": 1})).await;
    let body = json!({"store": "players", "key": "ivy", "holder": second, "policy": "steal_now"});
    let (status, stolen) = client.post("/v1/sessions/start", GAME_SECRET, &body).await;
    assert_eq!(status, 200, "{stolen}");
    let (_, newer) = save_value(&client, &stolen["token"], version(&stolen), json!({"n": 2})).await;
    // Stale by version and fenced out by lease: the lease is judged first.
    let (status, fenced) = save_value(&client, &ivy["token"], version(&saved), json!({"n": 99})).await;
    assert_eq!((status, fenced["error"].clone()), (409, json!("fenced_out")), "{fenced}");
    assert!(fenced.get("current").is_none(), "a fenced-out session is told nothing of the new holder's data");
    assert_eq!(read_document(&client, "players", "ivy").await["version"], newer["version"]);
}
