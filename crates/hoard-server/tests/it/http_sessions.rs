//! Sessions, handoff, trades, receipts and idempotency over HTTP, in-process on the memory
//! store (and on a store that loses answers, for retries after a client timeout).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hoard::store::memory::MemoryStore;
use hoard::store::{
    Commit, CommitOutcome, DocId, Document, HolderId, HolderLease, KeyPage, Limits, ListQuery, Notification,
    SharedStore, Store, StoreError, StoreName, Subscription, VersionInfo, VersionQuery, VersionRecord,
};
use serde_json::{Value, json};

use crate::support::{ADMIN_SECRET, Client, GAME_SECRET, OTHER_GAME_SECRET, READ_SECRET, start, start_memory};

async fn holder(client: &Client, label: &str) -> String {
    let (status, answer) = client.post("/v1/holders", GAME_SECRET, &json!({"label": label})).await;
    assert_eq!(status, 200, "{answer}");
    answer["holder"].as_str().expect("holder").to_string()
}

async fn start_session(client: &Client, holder: &str, key: &str, policy: &str) -> (u16, Value) {
    let body = json!({"store": "players", "key": key, "holder": holder, "policy": policy, "wait_ms": 5000});
    client.post("/v1/sessions/start", GAME_SECRET, &body).await
}

#[tokio::test]
async fn a_stolen_session_token_is_fenced_out_and_never_writes() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let a = holder(&client, "a").await;
    let b = holder(&client, "b").await;
    let (status, started) = start_session(&client, &a, "alice", "fail_fast").await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["value"], Value::Null);
    let token_a = started["token"].clone();
    let (status, saved) = client
        .post("/v1/sessions/save", GAME_SECRET, &json!({"token": token_a, "base_version": 0, "value": {"coins": 1}}))
        .await;
    assert_eq!((status, saved["version"].clone()), (200, json!(1)));
    let (status, locked) = start_session(&client, &b, "alice", "fail_fast").await;
    assert_eq!((status, locked["error"].clone()), (409, json!("locked")));
    let (status, stolen) = start_session(&client, &b, "alice", "steal_now").await;
    assert_eq!(status, 200, "{stolen}");
    assert_eq!(stolen["stole"], true);
    assert_eq!(stolen["value"], json!({"coins": 1}));
    let stale_write = json!({"token": token_a, "base_version": 1, "value": {"coins": 999}});
    let (status, fenced) = client.post("/v1/sessions/save", GAME_SECRET, &stale_write).await;
    assert_eq!((status, fenced["error"].clone()), (409, json!("fenced_out")), "{fenced}");
    let (status, _) = client.post("/v1/sessions/end", GAME_SECRET, &stale_write).await;
    assert_eq!(status, 409);
    let (status, ended) = client
        .post(
            "/v1/sessions/end",
            GAME_SECRET,
            &json!({"token": stolen["token"], "base_version": stolen["version"], "value": {"coins": 2}}),
        )
        .await;
    assert_eq!(status, 200, "{ended}");
    let (_, document) = client.get("/v1/stores/players/keys/alice", READ_SECRET).await;
    assert_eq!(document["value"], json!({"coins": 2}));
    assert_eq!(document["lease"]["holder"], Value::Null);
    // Another game server's key cannot use this key's holders or tokens.
    let (status, _) = client
        .post(
            "/v1/sessions/save",
            OTHER_GAME_SECRET,
            &json!({"token": stolen["token"], "base_version": 2, "value": {}}),
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_forced_rollback_fences_the_session_out_so_its_saves_never_overwrite_the_rollback() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let a = holder(&client, "a").await;
    let (status, started) = start_session(&client, &a, "carol", "fail_fast").await;
    assert_eq!(status, 200, "{started}");
    let token = started["token"].clone();
    for coins in [1, 2] {
        let body = json!({"token": token, "base_version": coins - 1, "value": {"coins": coins}});
        let (status, saved) = client.post("/v1/sessions/save", GAME_SECRET, &body).await;
        assert_eq!(status, 200, "{saved}");
    }
    let rollback = "/v1/stores/players/keys/carol/rollback";
    let (status, refused) = client.post(rollback, ADMIN_SECRET, &json!({"version": 1})).await;
    assert_eq!((status, refused["error"].clone()), (409, json!("held")), "{refused}");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("force")), "the message names the way out");
    let (status, rolled) = client.post(rollback, ADMIN_SECRET, &json!({"version": 1, "force": true})).await;
    assert_eq!(status, 200, "{rolled}");
    assert_eq!((rolled["restored_from"].clone(), rolled["version"].clone()), (json!(1), json!(3)));
    assert_eq!(rolled["released"], true, "the holder was fenced out");
    let (_, document) = client.get("/v1/stores/players/keys/carol", READ_SECRET).await;
    assert_eq!(document["value"], json!({"coins": 1}));
    assert_eq!(document["lease"]["holder"], Value::Null);
    for route in ["/v1/sessions/save", "/v1/sessions/end"] {
        let body = json!({"token": token, "base_version": 3, "value": {"coins": 999}});
        let (status, fenced) = client.post(route, GAME_SECRET, &body).await;
        assert_eq!((status, fenced["error"].clone()), (409, json!("fenced_out")), "{route}: {fenced}");
    }
    let (_, document) = client.get("/v1/stores/players/keys/carol", READ_SECRET).await;
    assert_eq!((document["value"].clone(), document["version"].clone()), (json!({"coins": 1}), json!(3)));
    // Forcing a key nobody holds rolls back all the same and fences nobody.
    let (status, rolled) = client.post(rollback, ADMIN_SECRET, &json!({"version": 2, "force": true})).await;
    assert_eq!((status, rolled["released"].clone()), (200, json!(false)), "{rolled}");
    let (status, forbidden) = client.post(rollback, GAME_SECRET, &json!({"version": 1, "force": true})).await;
    assert_eq!(status, 403, "{forbidden}");
}

#[tokio::test]
async fn a_live_holder_hands_over_on_request_by_polling_and_websocket() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    for transport in ["poll", "websocket"] {
        let key = format!("hop-{transport}");
        let a = holder(&client, "a").await;
        let b = holder(&client, "b").await;
        let (_, started) = start_session(&client, &a, &key, "fail_fast").await;
        let token_a = started["token"].clone();
        let mut socket = if transport == "websocket" {
            let url = format!("{}/v1/holders/{a}/events", server.url.replace("http://", "ws://"));
            let mut request =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).expect("url");
            request.headers_mut().insert("authorization", format!("Bearer {GAME_SECRET}").parse().expect("header"));
            Some(tokio_tungstenite::connect_async(request).await.expect("websocket").0)
        } else {
            None
        };
        let starter = {
            let client = client.clone();
            let (b, key) = (b.clone(), key.clone());
            tokio::spawn(async move { start_session(&client, &b, &key, "wait_then_steal").await })
        };
        let begun = tokio::time::Instant::now();
        let request: Value = match socket.as_mut() {
            Some(socket) => {
                use futures_util::StreamExt;
                loop {
                    let message = socket.next().await.expect("a message").expect("ok");
                    if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                        break serde_json::from_str(text.as_str()).expect("json");
                    }
                }
            }
            None => loop {
                let (status, polled) = client.get(&format!("/v1/holders/{a}/events?poll=1"), GAME_SECRET).await;
                assert_eq!(status, 200, "{polled}");
                if let Some(first) = polled["requests"].as_array().and_then(|r| r.first()) {
                    break first.clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            },
        };
        assert_eq!(request, json!({"type": "handoff", "store": "players", "key": key}));
        let (status, _) = client
            .post(
                "/v1/sessions/end",
                GAME_SECRET,
                &json!({"token": token_a, "base_version": started["version"], "value": {"hopped": transport}}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, taken) = starter.await.expect("starter");
        assert_eq!(status, 200, "{taken}");
        assert_eq!(taken["stole"], false, "handed over, not stolen");
        assert_eq!(taken["value"], json!({"hopped": transport}), "the final save is seen");
        assert!(begun.elapsed() < Duration::from_secs(4), "well within the wait");
    }
}

/// Parties alice and bob with holdings, both held by one holder.
async fn two_parties(client: &Client) -> (Value, Value) {
    two_parties_named(client, "alice", "bob").await
}

/// Parties with holdings, both held by one holder: the first holds `sword-1` and 100 gold.
async fn two_parties_named(client: &Client, first: &str, second: &str) -> (Value, Value) {
    let h = holder(client, "trader").await;
    let mut tokens = Vec::new();
    for (key, value) in [
        (first, json!({"currencies": {"gold": 100}, "items": {"sword-1": {"dmg": 5}}})),
        (second, json!({"currencies": {"gold": 10}, "items": {}})),
    ] {
        let (status, started) = start_session(client, &h, key, "fail_fast").await;
        assert_eq!(status, 200, "{started}");
        let body = json!({"token": started["token"], "base_version": started["version"], "value": value});
        let (status, _) = client.post("/v1/sessions/save", GAME_SECRET, &body).await;
        assert_eq!(status, 200);
        tokens.push(started["token"].clone());
    }
    (tokens[0].clone(), tokens[1].clone())
}

async fn gold(client: &Client, key: &str) -> i64 {
    let (_, document) = client.get(&format!("/v1/stores/players/keys/{key}"), READ_SECRET).await;
    document["value"]["currencies"]["gold"].as_i64().expect("gold")
}

#[tokio::test]
async fn trades_move_value_once_by_trade_id_and_by_idempotency_key() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let (alice, bob) = two_parties(&client).await;
    let trade = json!({"trade_id": "t-1", "parties": [alice, bob],
        "legs": [{"from": 0, "to": 1, "items": ["sword-1"]}, {"from": 1, "to": 0, "currencies": {"gold": 7}}]});
    let (status, first) = client.send("POST", "/v1/trades", Some(GAME_SECRET), Some(&trade), Some("k-1")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["outcome"], "committed");
    assert_eq!(first["parties"][1]["value"]["items"]["sword-1"], json!({"dmg": 5}));
    let (status, replay) = client.send("POST", "/v1/trades", Some(GAME_SECRET), Some(&trade), Some("k-1")).await;
    assert_eq!((status, replay["replayed"].clone()), (200, json!(true)));
    let (status, again) = client.post("/v1/trades", GAME_SECRET, &trade).await;
    assert_eq!((status, again["outcome"].clone()), (200, json!("already_committed")));
    assert_eq!((gold(&client, "alice").await, gold(&client, "bob").await), (107, 3));
    let mut other = trade.clone();
    other["legs"] = json!([{"from": 1, "to": 0, "currencies": {"gold": 1}}]);
    let (status, reused) = client.post("/v1/trades", GAME_SECRET, &other).await;
    assert_eq!((status, reused["error"].clone()), (409, json!("trade_id_reused")));
    let (status, reused) = client.send("POST", "/v1/trades", Some(GAME_SECRET), Some(&other), Some("k-1")).await;
    assert_eq!((status, reused["error"].clone()), (422, json!("idempotency_key_reused")));
    other["trade_id"] = json!("t-2");
    other["legs"] =
        json!([{"from": 1, "to": 0, "items": ["sword-1"]}, {"from": 0, "to": 1, "currencies": {"gold": 500}}]);
    let (status, short) = client.post("/v1/trades", GAME_SECRET, &other).await;
    assert_eq!((status, short["error"].clone()), (409, json!("insufficient_balance")));
    assert_eq!((gold(&client, "alice").await, gold(&client, "bob").await), (107, 3), "a refused trade moves nothing");
    let (_, record) = client.get("/v1/stores/hoard.trades/keys/players%2Ft-1", READ_SECRET).await;
    assert_eq!(record["value"]["status"], "committed", "the library's record format, scoped by the parties' store");
}

#[tokio::test]
async fn a_trade_reads_an_empty_json_array_as_empty_holdings_as_roblox_encodes_an_empty_table() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let holder = holder(&client, "roblox").await;
    let (_, alice) = start_session(&client, &holder, "alice", "fail_fast").await;
    let (_, bob) = start_session(&client, &holder, "bob", "fail_fast").await;
    let trade = json!({"trade_id": "t-empty", "parties": [alice["token"], bob["token"]],
        "party_states": [
            {"value": {"currencies": {"gold": 10}, "items": {"sword-1": {"dmg": 5}}}, "base_version": 0},
            {"value": {"currencies": [], "items": []}, "base_version": 0}],
        "legs": [{"from": 0, "to": 1, "items": ["sword-1"], "currencies": {"gold": 4}}]});
    let (status, answer) = client.post("/v1/trades", GAME_SECRET, &trade).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["parties"][1]["value"]["items"]["sword-1"], json!({"dmg": 5}));
    assert_eq!(answer["parties"][1]["value"]["currencies"]["gold"], 4);
    assert_eq!(answer["parties"][0]["value"]["currencies"]["gold"], 6);
    let mut bad = trade.clone();
    bad["trade_id"] = json!("t-bad");
    bad["party_states"][0] =
        json!({"value": answer["parties"][0]["value"], "base_version": answer["parties"][0]["version"]});
    bad["party_states"][1] =
        json!({"value": {"items": ["not", "a map"]}, "base_version": answer["parties"][1]["version"]});
    let (status, refused) = client.post("/v1/trades", GAME_SECRET, &bad).await;
    assert_eq!((status, refused["error"].clone()), (422, json!("not_tradable")), "{refused}");
}

#[tokio::test]
async fn a_receipt_grants_once_across_retries_and_refuses_another_payload() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let (alice, _) = two_parties(&client).await;
    let receipt = json!({"token": alice, "purchase_id": "p-1", "payload": {"product": "gold-pack"},
        "grant": [{"op": "increment", "path": "/currencies/gold", "by": 50}]});
    let (status, granted) = client.post("/v1/receipts", GAME_SECRET, &receipt).await;
    assert_eq!((status, granted["outcome"].clone()), (200, json!("granted")), "{granted}");
    let (status, again) = client.post("/v1/receipts", GAME_SECRET, &receipt).await;
    assert_eq!((status, again["outcome"].clone()), (200, json!("already_granted")));
    assert_eq!(gold(&client, "alice").await, 150);
    let mut other = receipt.clone();
    other["payload"] = json!({"product": "other"});
    let (status, refused) = client.post("/v1/receipts", GAME_SECRET, &other).await;
    assert_eq!((status, refused["error"].clone()), (409, json!("receipt_refused")));
    assert_eq!(gold(&client, "alice").await, 150);
    let (_, record) = client.get("/v1/stores/hoard.receipts/keys/players%2Fp-1", READ_SECRET).await;
    assert_eq!(record["value"]["purchase_id"], "p-1", "the library's record format and store");
}

/// A store whose commits apply and then take long to answer, so the client times out after
/// the commit applied: the case of a retried request after a timeout.
#[derive(Debug)]
struct SlowAnswers {
    inner: SharedStore,
    slow: AtomicBool,
}

#[async_trait]
impl Store for SlowAnswers {
    fn backend_name(&self) -> &'static str {
        "slow-answers"
    }
    fn limits(&self) -> &Limits {
        self.inner.limits()
    }
    async fn now_ms(&self) -> Result<i64, StoreError> {
        self.inner.now_ms().await
    }
    async fn get_many(&self, ids: &[DocId]) -> Result<Vec<Document>, StoreError> {
        self.inner.get_many(ids).await
    }
    async fn list_keys(&self, store: &StoreName, query: &ListQuery) -> Result<KeyPage, StoreError> {
        self.inner.list_keys(store, query).await
    }
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError> {
        let outcome = self.inner.commit(commit).await;
        if self.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
        outcome
    }
    async fn list_versions(&self, id: &DocId, query: &VersionQuery) -> Result<Vec<VersionInfo>, StoreError> {
        self.inner.list_versions(id, query).await
    }
    async fn get_version(&self, id: &DocId, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        self.inner.get_version(id, version).await
    }
    async fn prune_history(&self) -> Result<u64, StoreError> {
        self.inner.prune_history().await
    }
    async fn renew_holder(&self, holder: &HolderId, ttl_ms: u64) -> Result<HolderLease, StoreError> {
        self.inner.renew_holder(holder, ttl_ms).await
    }
    async fn release_holder(&self, holder: &HolderId) -> Result<(), StoreError> {
        self.inner.release_holder(holder).await
    }
    async fn holder_lease(&self, holder: &HolderId) -> Result<Option<HolderLease>, StoreError> {
        self.inner.holder_lease(holder).await
    }
    async fn notify(&self, notification: Notification) -> Result<(), StoreError> {
        self.inner.notify(notification).await
    }
    fn subscribe(&self) -> Subscription {
        self.inner.subscribe()
    }
}

#[tokio::test]
async fn a_trade_and_a_receipt_retried_after_a_client_timeout_apply_once() {
    let store = Arc::new(SlowAnswers { inner: Arc::new(MemoryStore::new()), slow: AtomicBool::new(false) });
    let server = start(store.clone()).await;
    let client = Client::new(&server.url);
    let (alice, bob) = two_parties(&client).await;
    let impatient = Client {
        url: server.url.clone(),
        http: reqwest::Client::builder().timeout(Duration::from_millis(300)).build().expect("client"),
    };
    let trade = json!({"trade_id": "t-timeout", "parties": [alice, bob], "legs": [{"from": 0, "to": 1, "currencies": {"gold": 30}}]});
    let receipt = json!({"token": alice, "purchase_id": "p-timeout", "payload": {"pack": 1},
        "grant": [{"op": "increment", "path": "/currencies/gold", "by": 5}]});
    store.slow.store(true, Ordering::SeqCst);
    for (path, body, key) in [("/v1/trades", &trade, "trade-key"), ("/v1/receipts", &receipt, "receipt-key")] {
        let timed_out = impatient
            .http
            .post(format!("{}{path}", server.url))
            .bearer_auth(GAME_SECRET)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        assert!(timed_out.is_err_and(|e| e.is_timeout()), "the client gave up before the answer");
    }
    // Let the abandoned requests' commits finish, then retry with the same keys.
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    store.slow.store(false, Ordering::SeqCst);
    let (status, retried) = client.send("POST", "/v1/trades", Some(GAME_SECRET), Some(&trade), Some("trade-key")).await;
    assert_eq!(status, 200, "{retried}");
    assert!(retried["replayed"] == json!(true) || retried["outcome"] == json!("committed"), "{retried}");
    let (status, retried) =
        client.send("POST", "/v1/receipts", Some(GAME_SECRET), Some(&receipt), Some("receipt-key")).await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!((gold(&client, "alice").await, gold(&client, "bob").await), (75, 40), "each applied exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_of_a_trade_or_a_receipt_all_answer_its_one_result() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    for round in 0..5 {
        let (alice, bob) = two_parties_named(&client, &format!("dup-a-{round}"), &format!("dup-b-{round}")).await;
        // Without party states, so every duplicate reads the saved values (the racy path).
        let trade = json!({"trade_id": format!("dup-{round}"), "parties": [alice, bob],
            "legs": [{"from": 0, "to": 1, "items": ["sword-1"]}]});
        let receipt = json!({"token": alice, "purchase_id": format!("dup-p-{round}"), "payload": {},
            "grant": [{"op": "add_item", "path": "/items", "id": format!("gift-{round}"), "value": {}}]});
        let mut sent = Vec::new();
        for body in std::iter::repeat_n(("/v1/trades", trade.clone()), 6)
            .chain(std::iter::repeat_n(("/v1/receipts", receipt.clone()), 6))
        {
            let client = client.clone();
            sent.push(tokio::spawn(async move { (body.0, client.post(body.0, GAME_SECRET, &body.1).await) }));
        }
        for answer in sent {
            let (route, (status, answer)) = answer.await.expect("request");
            assert_eq!(status, 200, "round {round}: every duplicate of {route} answers the one result: {answer}");
        }
        let (_, bob_now) = client.get(&format!("/v1/stores/players/keys/dup-b-{round}"), READ_SECRET).await;
        assert!(bob_now["value"]["items"].get("sword-1").is_some());
        let (_, alice_now) = client.get(&format!("/v1/stores/players/keys/dup-a-{round}"), READ_SECRET).await;
        assert!(alice_now["value"]["items"].get(format!("gift-{round}")).is_some());
    }
}
