//! The calls shaped for a request budget (issue 12): sync, start_many, end_many, the events
//! long-poll and gzip bodies. Each batched session has its own outcome, a malformed batch is
//! refused whole, and every per-call limit refuses one past its value with nothing changed.

use std::io::{Read, Write as _};
use std::time::Duration;

use hoard_server::routes::batch::{END_MANY_MAX, START_MANY_MAX};
use hoard_server::routes::events::LONG_POLL_WAIT_MS_MAX;
use hoard_server::routes::sync::SYNC_SESSIONS_MAX;
use serde_json::{Value, json};

use crate::support::{
    Client, GAME_SECRET, read_document, register_holder, save_value, start_memory, start_player, start_with,
    test_config,
};

fn version(answer: &Value) -> u64 {
    answer["version"].as_u64().unwrap_or_else(|| panic!("a version in {answer}"))
}

async fn sync(client: &Client, holder: &str, body: &Value) -> (u16, Value) {
    client.post(&format!("/v1/holders/{holder}/sync"), GAME_SECRET, body).await
}

/// A long-poll that must answer long before its own deadline (20 s): if it waited for the
/// deadline the test fails at this bound instead.
const ANSWERS_AT_ONCE_WITHIN: Duration = Duration::from_secs(10);
const LONG_WAIT_MS: u64 = 20_000;

#[tokio::test]
async fn sync_gives_each_session_its_own_outcome_so_a_stale_or_fenced_out_one_fails_no_other() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, "sync").await;
    let fresh = start_player(&client, &holder, "s-fresh").await;
    let stale = start_player(&client, &holder, "s-stale").await;
    let stolen = start_player(&client, &holder, "s-stolen").await;
    let checked = start_player(&client, &holder, "s-checked").await;
    let (_, stale_saved) = save_value(&client, &stale["token"], 0, json!({"n": 1})).await;
    let thief = register_holder(&client, "thief").await;
    let steal = json!({"store": "players", "key": "s-stolen", "holder": thief, "policy": "steal_now"});
    let (status, _) = client.post("/v1/sessions/start", GAME_SECRET, &steal).await;
    assert_eq!(status, 200);
    let before = client.post(&format!("/v1/holders/{holder}/renew"), GAME_SECRET, &json!({})).await.1;

    let body = json!({"sessions": [
        {"token": fresh["token"], "base_version": 0, "value": {"n": 10}, "attributes": {"tier": "gold"}},
        {"token": stale["token"], "base_version": 0, "value": {"n": 20}},
        {"token": stolen["token"], "base_version": 0, "value": {"n": 30}},
        {"token": checked["token"], "base_version": 0},
    ]});
    let (status, answer) = sync(&client, &holder, &body).await;
    assert_eq!(status, 200, "{answer}");
    let outcomes: Vec<Value> =
        answer["sessions"].as_array().expect("sessions").iter().map(|s| s["outcome"].clone()).collect();
    assert_eq!(outcomes, [json!("saved"), json!("stale"), json!("fenced_out"), json!("unchanged")], "{answer}");
    let sessions = &answer["sessions"];
    assert_eq!((sessions[0]["key"].clone(), sessions[0]["version"].clone()), (json!("s-fresh"), json!(1)));
    assert_eq!(sessions[1]["current"]["value"], json!({"n": 1}), "a stale session gets the document to adopt");
    assert_eq!(sessions[1]["current"]["version"], version(&stale_saved));
    assert_eq!(sessions[2]["error"]["error"], "fenced_out");
    assert_eq!(sessions[3]["version"], 0);
    assert!(answer["holder"]["expires_at_ms"].as_i64() >= before["expires_at_ms"].as_i64(), "renewed: {answer}");

    let fresh_now = read_document(&client, "players", "s-fresh").await;
    assert_eq!(
        (fresh_now["value"].clone(), fresh_now["attributes"].clone()),
        (json!({"n": 10}), json!({"tier": "gold"}))
    );
    assert_eq!(read_document(&client, "players", "s-stale").await["value"], json!({"n": 1}), "stale: nothing written");
    assert_eq!(read_document(&client, "players", "s-stolen").await["version"], 0, "fenced out: nothing written");
    // The same sync again is a retry: the saved session answers as before, writing nothing.
    let (status, again) = sync(&client, &holder, &body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["sessions"][0]["outcome"].clone(), again["sessions"][0]["replayed"].clone()),
        (json!("saved"), json!(true))
    );
    // A checked session whose base is behind is told stale, with the document.
    let late = json!({"sessions": [{"token": fresh["token"], "base_version": 0}]});
    let (_, late) = sync(&client, &holder, &late).await;
    assert_eq!(late["sessions"][0]["outcome"], "stale", "{late}");
}

#[tokio::test]
async fn sync_answers_new_messages_until_they_are_acknowledged_and_the_holders_handoff_requests() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, "inbox").await;
    let kim = start_player(&client, &holder, "kim").await;
    let (status, _) =
        client.post("/v1/stores/players/keys/kim/messages", GAME_SECRET, &json!({"body": {"gift": 5}})).await;
    assert_eq!(status, 200);
    let check = json!({"sessions": [{"token": kim["token"], "base_version": 0}]});
    let (_, answer) = sync(&client, &holder, &check).await;
    let inbox = answer["sessions"][0]["inbox"].as_array().expect("inbox").clone();
    assert_eq!(inbox.len(), 1, "{answer}");
    assert_eq!(inbox[0]["body"]["body"], json!({"gift": 5}));
    let seq = inbox[0]["seq"].as_u64().expect("seq");
    let seen = json!({"sessions": [{"token": kim["token"], "base_version": 0, "inbox_seen_through": seq}]});
    let (_, answer) = sync(&client, &holder, &seen).await;
    assert_eq!(answer["sessions"][0]["inbox"], json!([]), "nothing after what was seen");
    let applied = json!({"sessions": [{"token": kim["token"], "base_version": 0, "value": {"gifts": 5}, "ack_inbox_through": seq}]});
    let (_, answer) = sync(&client, &holder, &applied).await;
    assert_eq!(
        (answer["sessions"][0]["outcome"].clone(), answer["sessions"][0]["inbox"].clone()),
        (json!("saved"), json!([]))
    );
    assert_eq!(read_document(&client, "players", "kim").await["inbox"], json!([]), "acknowledged with the save");

    let other = register_holder(&client, "hopper").await;
    let start = json!({"store": "players", "key": "kim", "holder": other, "policy": "wait", "wait_ms": 3000});
    let starter = {
        let client = client.clone();
        tokio::spawn(async move { client.post("/v1/sessions/start", GAME_SECRET, &start).await })
    };
    let check = json!({"sessions": [{"token": kim["token"], "base_version": 1}], "wait_ms": LONG_WAIT_MS});
    let (status, answer) =
        tokio::time::timeout(ANSWERS_AT_ONCE_WITHIN, sync(&client, &holder, &check)).await.expect("prompt");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["handoffs"], json!([{"type": "handoff", "store": "players", "key": "kim"}]), "{answer}");
    let end = json!({"ends": [{"token": kim["token"], "base_version": 1}]});
    let (status, ended) = client.post("/v1/sessions/end_many", GAME_SECRET, &end).await;
    assert_eq!((status, ended["results"][0]["ok"]["ended"].clone()), (200, json!(true)), "{ended}");
    let (status, taken) = starter.await.expect("starter");
    assert_eq!((status, taken["value"].clone()), (200, json!({"gifts": 5})), "{taken}");
}

#[tokio::test]
async fn the_events_long_poll_answers_at_once_when_something_is_pending_and_promptly_on_an_arrival() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, "poller").await;
    let _lea = start_player(&client, &holder, "lea").await;
    let events = format!("/v1/holders/{holder}/events?wait_ms={LONG_WAIT_MS}");
    // Pending before the poll: answered at once.
    let (status, _) = client.post("/v1/stores/players/keys/lea/messages", GAME_SECRET, &json!({"body": 1})).await;
    assert_eq!(status, 200);
    let (status, answer) =
        tokio::time::timeout(ANSWERS_AT_ONCE_WITHIN, client.get(&events, GAME_SECRET)).await.expect("at once");
    assert_eq!((status, answer["inbox"].clone()), (200, json!([{"store": "players", "key": "lea"}])), "{answer}");
    // Delivered once: an empty poll waits (here a short one, to its end).
    let (status, empty) = client.get(&format!("/v1/holders/{holder}/events?wait_ms=50"), GAME_SECRET).await;
    assert_eq!((status, empty), (200, json!({"requests": [], "inbox": [], "stolen": []})));
    // Arriving while the poll waits: answered on the arrival.
    let poll = {
        let (client, events) = (client.clone(), events.clone());
        tokio::spawn(async move { client.get(&events, GAME_SECRET).await })
    };
    tokio::task::yield_now().await;
    let (status, _) = client.post("/v1/stores/players/keys/lea/messages", GAME_SECRET, &json!({"body": 2})).await;
    assert_eq!(status, 200);
    let (status, answer) = tokio::time::timeout(ANSWERS_AT_ONCE_WITHIN, poll).await.expect("prompt").expect("poll");
    assert_eq!((status, answer["inbox"].clone()), (200, json!([{"store": "players", "key": "lea"}])), "{answer}");
    // A handoff request wakes it too.
    let poll = {
        let (client, events) = (client.clone(), events.clone());
        tokio::spawn(async move { client.get(&events, GAME_SECRET).await })
    };
    let other = register_holder(&client, "other").await;
    let start = json!({"store": "players", "key": "lea", "holder": other, "policy": "fail_fast"});
    let (status, _) = client.post("/v1/sessions/start", GAME_SECRET, &start).await;
    assert_eq!(status, 409, "fail_fast does not ask");
    let start = json!({"store": "players", "key": "lea", "holder": other, "policy": "wait", "wait_ms": 200});
    let (status, _) = client.post("/v1/sessions/start", GAME_SECRET, &start).await;
    assert_eq!(status, 409, "the holder did not hand over within 200 ms");
    let (status, answer) = tokio::time::timeout(ANSWERS_AT_ONCE_WITHIN, poll).await.expect("prompt").expect("poll");
    assert_eq!(status, 200);
    assert_eq!(answer["requests"], json!([{"type": "handoff", "store": "players", "key": "lea"}]), "{answer}");
}

#[tokio::test]
async fn start_many_and_end_many_give_each_key_its_own_result() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, "wave").await;
    let other = register_holder(&client, "other").await;
    let _held = start_player(&client, &other, "w-held").await;
    let body = json!({"holder": holder, "policy": "fail_fast", "starts": [
        {"store": "players", "key": "w-1"}, {"store": "players", "key": "w-held"}, {"store": "players", "key": "w-2"},
    ]});
    let (status, started) = client.post("/v1/sessions/start_many", GAME_SECRET, &body).await;
    assert_eq!(status, 200, "{started}");
    let results = started["results"].as_array().expect("results");
    assert_eq!(results[0]["ok"]["token"]["key"], "w-1");
    assert_eq!(results[1]["error"]["error"], "locked", "{started}");
    assert_eq!(results[2]["ok"]["token"]["key"], "w-2");
    assert!(results[0]["ok"]["created_at_ms"].is_i64());

    let (_, saved) = save_value(&client, &results[2]["ok"]["token"], 0, json!({"n": 2})).await;
    let ends = json!({"ends": [
        {"token": results[0]["ok"]["token"], "base_version": 0, "value": {"n": 1}, "user_ids": ["u-1"]},
        {"token": results[2]["ok"]["token"], "base_version": 0, "value": {"n": 99}},
    ]});
    let (status, ended) = client.post("/v1/sessions/end_many", GAME_SECRET, &ends).await;
    assert_eq!(status, 200, "{ended}");
    assert_eq!(ended["results"][0]["ok"], json!({"ended": true, "version": 1}));
    assert_eq!(ended["results"][1]["error"]["error"], "stale", "{ended}");
    assert_eq!(ended["results"][1]["error"]["current"]["version"], version(&saved));
    let first = read_document(&client, "players", "w-1").await;
    assert_eq!((first["value"].clone(), first["user_ids"].clone()), (json!({"n": 1}), json!(["u-1"])));
    assert!(first["lease"]["holder"].is_null());
    let second = read_document(&client, "players", "w-2").await;
    assert_eq!(second["value"], json!({"n": 2}), "a stale end writes nothing");
    assert!(second["lease"]["holder"].is_string(), "and keeps the session");
}

#[tokio::test]
async fn every_per_call_limit_refuses_one_past_its_value_and_changes_nothing() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, "limits").await;
    let player = start_player(&client, &holder, "limit-1").await;
    let save = json!({"token": player["token"], "base_version": 0, "value": {"n": 1}});

    let too_many: Vec<Value> = (0..=SYNC_SESSIONS_MAX).map(|_| save.clone()).collect();
    let (status, refused) = sync(&client, &holder, &json!({"sessions": too_many})).await;
    assert_eq!(status, 400, "{refused}");
    let (status, refused) =
        sync(&client, &holder, &json!({"sessions": [save], "wait_ms": LONG_POLL_WAIT_MS_MAX + 1})).await;
    assert_eq!(status, 400, "{refused}");
    let (status, refused) = sync(&client, &holder, &json!({"sessions": [save, save]})).await;
    assert_eq!(status, 400, "a key twice: {refused}");
    let other = register_holder(&client, "other").await;
    let (status, refused) = sync(&client, &other, &json!({"sessions": [save]})).await;
    assert_eq!(status, 400, "another holder's token: {refused}");
    let ack_only = json!({"token": player["token"], "base_version": 0, "ack_inbox_through": 1});
    let (status, refused) = sync(&client, &holder, &json!({"sessions": [ack_only]})).await;
    assert_eq!(status, 400, "an ack without a save: {refused}");
    let events = format!("/v1/holders/{holder}/events?wait_ms={}", LONG_POLL_WAIT_MS_MAX + 1);
    let (status, refused) = client.get(&events, GAME_SECRET).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(read_document(&client, "players", "limit-1").await["version"], 0, "no sync saved anything");

    let starts: Vec<Value> =
        (0..=START_MANY_MAX).map(|i| json!({"store": "players", "key": format!("many-{i}")})).collect();
    let (status, refused) =
        client.post("/v1/sessions/start_many", GAME_SECRET, &json!({"holder": holder, "starts": starts})).await;
    assert_eq!(status, 400, "{refused}");
    let twice = json!({"holder": holder, "starts": [{"store": "players", "key": "many-0"}, {"store": "players", "key": "many-0"}]});
    let (status, refused) = client.post("/v1/sessions/start_many", GAME_SECRET, &twice).await;
    assert_eq!(status, 400, "{refused}");
    assert!(read_document(&client, "players", "many-0").await["lease"]["holder"].is_null(), "nothing acquired");

    let end = json!({"token": player["token"], "base_version": 0});
    let ends: Vec<Value> = (0..=END_MANY_MAX).map(|_| end.clone()).collect();
    let (status, refused) = client.post("/v1/sessions/end_many", GAME_SECRET, &json!({"ends": ends})).await;
    assert_eq!(status, 400, "{refused}");
    let (status, refused) = client.post("/v1/sessions/end_many", GAME_SECRET, &json!({"ends": []})).await;
    assert_eq!(status, 400, "{refused}");
    assert!(read_document(&client, "players", "limit-1").await["lease"]["holder"].is_string(), "nothing ended");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("compress");
    encoder.finish().expect("compress")
}

#[tokio::test]
async fn gzip_request_bodies_are_read_and_answers_are_gzipped_when_accepted() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, "gzip").await;
    let player = start_player(&client, &holder, "zipped").await;
    let value = json!({"text": "x".repeat(10_000)});
    let body = json!({"sessions": [{"token": player["token"], "base_version": 0, "value": value}]});
    let response = client
        .http
        .post(format!("{}/v1/holders/{holder}/sync", server.url))
        .bearer_auth(GAME_SECRET)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("accept-encoding", "gzip")
        .body(gzip(&serde_json::to_vec(&body).expect("json")))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers().get("content-encoding").and_then(|v| v.to_str().ok()), Some("gzip"));
    let compressed = response.bytes().await.expect("body");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&compressed[..]).read_to_string(&mut text).expect("a gzip answer");
    let answer: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(answer["sessions"][0]["outcome"], "saved", "{answer}");
    assert_eq!(read_document(&client, "players", "zipped").await["value"], value);
}

#[tokio::test]
async fn a_gzipped_body_is_limited_by_its_decompressed_size_and_changes_nothing() {
    let mut config = test_config();
    config.limits.body_bytes_max = 64 * 1024;
    let server = start_with(std::sync::Arc::new(hoard::store::memory::MemoryStore::new()), config).await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, "bomb").await;
    let player = start_player(&client, &holder, "bombed").await;
    // Two megabytes of one letter compress to a few kilobytes.
    let body = json!({"token": player["token"], "base_version": 0, "value": {"text": "a".repeat(2 * 1024 * 1024)}});
    let compressed = gzip(&serde_json::to_vec(&body).expect("json"));
    assert!(compressed.len() < 64 * 1024, "the wire body is under the limit");
    let response = client
        .http
        .post(format!("{}/v1/sessions/save", server.url))
        .bearer_auth(GAME_SECRET)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(compressed)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 413);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["error"], "body_too_large", "{answer}");
    assert_eq!(read_document(&client, "players", "bombed").await["version"], 0, "nothing saved");
}

#[tokio::test]
async fn a_steal_tells_the_old_holder_through_its_long_poll_and_its_sync() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let old = register_holder(&client, "old").await;
    let victim = start_player(&client, &old, "max").await;
    let poll = {
        let (client, events) = (client.clone(), format!("/v1/holders/{old}/events?wait_ms={LONG_WAIT_MS}"));
        tokio::spawn(async move { client.get(&events, GAME_SECRET).await })
    };
    let thief = register_holder(&client, "thief").await;
    let steal = json!({"store": "players", "key": "max", "holder": thief, "policy": "steal_now"});
    let (status, stolen) = client.post("/v1/sessions/start", GAME_SECRET, &steal).await;
    assert_eq!((status, stolen["stole"].clone()), (200, json!(true)), "{stolen}");
    let (status, answer) = tokio::time::timeout(ANSWERS_AT_ONCE_WITHIN, poll).await.expect("prompt").expect("poll");
    assert_eq!(status, 200);
    assert_eq!(answer["stolen"], json!([{"store": "players", "key": "max"}]), "{answer}");
    // Delivered once; the old holder's sync says the same of the session itself.
    let (_, empty) = client.get(&format!("/v1/holders/{old}/events?poll=1"), GAME_SECRET).await;
    assert_eq!(empty["stolen"], json!([]));
    let check = json!({"sessions": [{"token": victim["token"], "base_version": 0}]});
    let (_, synced) = sync(&client, &old, &check).await;
    assert_eq!(synced["sessions"][0]["outcome"], "fenced_out", "{synced}");
    // A handed-over key is no steal.
    let handed = start_player(&client, &thief, "ned").await;
    let (status, _) =
        client.post("/v1/sessions/end", GAME_SECRET, &json!({"token": handed["token"], "base_version": 0})).await;
    assert_eq!(status, 200);
    let _ = start_player(&client, &old, "ned").await;
    let (_, none) = client.get(&format!("/v1/holders/{thief}/events?poll=1"), GAME_SECRET).await;
    assert_eq!(none["stolen"], json!([]), "{none}");
}

#[tokio::test]
async fn inbox_arrivals_and_steals_are_recorded_only_for_holders_registered_over_http() {
    use hoard::store::{Commit, DocId, HolderId, LeaseOp, Write};
    let store: hoard::store::SharedStore = std::sync::Arc::new(hoard::store::memory::MemoryStore::new());
    let server = crate::support::start(store.clone()).await;
    let client = Client::new(&server.url);
    // An engine (the library, or RemoteStore) holds this key: it never reads the event inbox.
    let engine = HolderId::generate("rust-engine");
    store.renew_holder(&engine, 15_000).await.expect("renew");
    let id = DocId::parse("players", "oli").expect("id");
    let acquire = Write::new(id.clone()).lease(LeaseOp::Acquire(engine.clone()));
    store.commit(Commit::single(acquire)).await.expect("acquire");
    let (status, _) = client.post("/v1/stores/players/keys/oli/messages", GAME_SECRET, &json!({"body": 1})).await;
    assert_eq!(status, 200);
    let thief = register_holder(&client, "thief").await;
    let steal = json!({"store": "players", "key": "oli", "holder": thief, "policy": "steal_now"});
    let (status, _) = client.post("/v1/sessions/start", GAME_SECRET, &steal).await;
    assert_eq!(status, 200);
    let events = DocId::parse("hoard.holder_events", engine.as_str()).expect("id");
    let document = hoard::store::get(&*store, &events).await.expect("read");
    assert!(document.inbox.is_empty(), "nothing piles up for an engine holder: {:?}", document.inbox);
    // The holder registered over HTTP is told of an arrival on the key it now holds.
    let (status, _) = client.post("/v1/stores/players/keys/oli/messages", GAME_SECRET, &json!({"body": 2})).await;
    assert_eq!(status, 200);
    let (_, polled) = client.get(&format!("/v1/holders/{thief}/events?poll=1"), GAME_SECRET).await;
    assert_eq!(polled["inbox"], json!([{"store": "players", "key": "oli"}]), "{polled}");
}
