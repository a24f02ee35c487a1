//! Live operations over HTTP against a real `hoard serve` on SQLite: lookups and scopes, restore
//! with a preview, inbox grants, freeing sessions, the audit log, erasure, Roblox's signed
//! erasure webhook (good signature, bad one, replay, stale timestamp), and the view of a
//! cross-server trade held by two engines.

use std::sync::Arc;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use hoard::store::sqlite::{SqliteOptions, SqliteStore};
use hoard::store::{DocId, HolderId, LeaseOp, SharedStore, Store, Write};
use hoard_server::auth::Scope;
use hoard_server::config::{KeyEntry, ServiceConfig};
use serde_json::{Value, json};

use crate::support::{ADMIN_SECRET, Client, GAME_SECRET, READ_SECRET, TestServer, start_with, test_config};

pub const OPERATOR_SECRET: &str = "operator-secret-0123456789";
const WEBHOOK_SECRET: &str = "roblox-webhook-secret";

pub fn liveops_config() -> ServiceConfig {
    let mut config = test_config();
    let operator = KeyEntry {
        name: "support-lead".into(),
        scope: Scope::Operator,
        stores: None,
        sha256: None,
        secret: Some(OPERATOR_SECRET.into()),
        rate_per_second: Some(1_000_000),
        rate_burst: Some(1_000_000),
    }
    .into_key()
    .expect("valid key");
    config.keys.push(operator);
    config.roblox_webhook_secret = Some(WEBHOOK_SECRET.into());
    config.roblox_user_id_prefix = "roblox:".into();
    config
}

pub async fn sqlite_server() -> (TestServer, SharedStore, tempfile::TempDir) {
    let folder = tempfile::tempdir().expect("temporary folder");
    let options = SqliteOptions { path: folder.path().join("hoard.sqlite3"), ..SqliteOptions::default() };
    let store: SharedStore = Arc::new(SqliteStore::open(options).await.expect("open sqlite"));
    let server = start_with(store.clone(), liveops_config()).await;
    (server, store, folder)
}

fn id(store: &str, key: &str) -> DocId {
    DocId::parse(store, key).expect("valid id")
}

async fn put(store: &dyn Store, key: &str, value: Value, user_id: &str) {
    let write = Write::put(id("players", key), value).user_ids(vec![user_id.into()]);
    let outcome = store.commit(hoard::store::Commit::single(write)).await.expect("commit");
    assert!(outcome.is_committed());
}

fn profile(level: i64, coins: i64, items: &[&str]) -> Value {
    let bag: serde_json::Map<String, Value> = items.iter().map(|item| (item.to_string(), json!({}))).collect();
    json!({"data": {"level": level, "coins": coins, "items": bag, "purchases": ["p1"]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_answer_operators_and_read_only_keys_and_refuse_others() {
    let (server, store, _folder) = sqlite_server().await;
    let client = Client::new(&server.url);
    put(&*store, "alice", profile(12, 5, &["sword-1"]), "roblox:1").await;
    put(&*store, "bob", profile(30, 7, &["sword-1", "gem-2"]), "roblox:2").await;

    let index = json!({"name": "items", "kind": "keys", "path": "/data/items"});
    let (status, _) = client.post("/v1/ops/stores/players/indexes", READ_SECRET, &index).await;
    assert_eq!(status, 403, "a read-only key cannot declare an index");
    let (status, answer) = client.post("/v1/ops/stores/players/indexes", OPERATOR_SECRET, &index).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["indexed"], 2);
    let level = json!({"name": "level", "kind": "number", "path": "/data/level"});
    assert_eq!(client.post("/v1/ops/stores/players/indexes", OPERATOR_SECRET, &level).await.0, 200);
    let (status, answer) = client
        .post("/v1/ops/stores/players/indexes", OPERATOR_SECRET, &json!({"name": "x", "kind": "nope", "path": "/a"}))
        .await;
    assert_eq!(status, 400, "{answer}");

    let (status, answer) = client.get("/v1/ops/users/roblox:2/keys", READ_SECRET).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ids"], json!([{"store": "players", "key": "bob"}]));
    let (status, answer) = client.get("/v1/ops/stores/players/indexes/items/members/sword-1", OPERATOR_SECRET).await;
    assert_eq!(status, 200);
    assert_eq!(answer["keys"], json!(["alice", "bob"]));
    let (_, answer) = client.get("/v1/ops/stores/players/indexes/level/top?limit=1", READ_SECRET).await;
    assert_eq!(answer["entries"], json!([{"key": "bob", "value": 30.0}]));
    let (_, answer) = client.get("/v1/ops/stores/players/indexes/level/rank/alice", READ_SECRET).await;
    assert_eq!(answer["rank"]["rank"], 2);
    let (_, answer) = client.get("/v1/ops/stores/players/indexes/level/count?min=20", READ_SECRET).await;
    assert_eq!(answer["count"], 1);

    // The session holder.
    let holder = HolderId::new("game:server-1").expect("valid");
    store.renew_holder(&holder, 60_000).await.expect("renew");
    let acquire = Write::new(id("players", "alice")).lease(LeaseOp::Acquire(holder.clone()));
    assert!(store.commit(hoard::store::Commit::single(acquire)).await.expect("commit").is_committed());
    let (_, answer) = client.get("/v1/ops/stores/players/keys/alice/holder", READ_SECRET).await;
    assert_eq!((answer["holder"].as_str(), answer["alive"].as_bool()), (Some(holder.as_str()), Some(true)));

    // Game servers use the document routes, not the operators'.
    assert_eq!(client.get("/v1/ops/users/roblox:2/keys", GAME_SECRET).await.0, 403);
    // Every change made here is in the audit log.
    let (_, audit) = client.get("/v1/ops/audit", READ_SECRET).await;
    let actions: Vec<&str> =
        audit["entries"].as_array().expect("entries").iter().filter_map(|e| e["entry"]["action"].as_str()).collect();
    assert_eq!(actions, vec!["declare_index", "declare_index"]);
    assert_eq!(audit["entries"][0]["entry"]["actor"], "support-lead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_previews_then_writes_selected_paths_grants_go_through_the_inbox_once() {
    let (server, store, _folder) = sqlite_server().await;
    let client = Client::new(&server.url);
    put(&*store, "alice", profile(1, 100, &["sword-1"]), "roblox:1").await;
    // A scam: coins and the sword gone, a purchase made since.
    let mut scammed = profile(1, 3, &[]);
    scammed["data"]["purchases"] = json!(["p1", "p2"]);
    put(&*store, "alice", scammed, "roblox:1").await;

    let (_, diff) = client.get("/v1/ops/stores/players/keys/alice/diff?from=1", READ_SECRET).await;
    let paths: Vec<&str> =
        diff["changes"].as_array().expect("changes").iter().filter_map(|c| c["path"].as_str()).collect();
    assert_eq!(paths, vec!["/data/coins", "/data/items/sword-1", "/data/purchases"]);
    let (_, field) = client.get("/v1/ops/stores/players/keys/alice/field?path=/data/coins", READ_SECRET).await;
    let values: Vec<&Value> = field["changes"].as_array().expect("changes").iter().map(|c| &c["value"]).collect();
    assert_eq!(values, vec![&json!(3), &json!(100)], "newest first");

    let body = json!({"version": 1, "except": ["/data/purchases"], "preview": true});
    let (status, preview) = client.post("/v1/ops/stores/players/keys/alice/restore", OPERATOR_SECRET, &body).await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["proposed"]["data"]["purchases"], json!(["p1", "p2"]), "everything but purchases");
    assert_eq!(preview["proposed"]["data"]["coins"], 100);
    let before = hoard::store::get(&*store, &id("players", "alice")).await.expect("read");
    assert_eq!(before.version, 2, "a preview writes nothing");
    let (status, _) =
        client.post("/v1/ops/stores/players/keys/alice/restore", READ_SECRET, &json!({"version": 1})).await;
    assert_eq!(status, 403, "a read-only key is refused");
    let body = json!({"version": 1, "except": ["/data/purchases"]});
    let (status, done) = client.post("/v1/ops/stores/players/keys/alice/restore", OPERATOR_SECRET, &body).await;
    assert_eq!(status, 200, "{done}");
    let after = hoard::store::get(&*store, &id("players", "alice")).await.expect("read");
    assert_eq!(after.value.as_ref().and_then(|v| v.pointer("/data/coins")), Some(&json!(100)));
    assert_eq!(after.value.as_ref().and_then(|v| v.pointer("/data/purchases")), Some(&json!(["p1", "p2"])));

    // Online: a restore is refused; a grant goes to the inbox without taking the key.
    let holder = HolderId::new("game:server-1").expect("valid");
    store.renew_holder(&holder, 60_000).await.expect("renew");
    let acquire = Write::new(id("players", "alice")).lease(LeaseOp::Acquire(holder.clone()));
    assert!(store.commit(hoard::store::Commit::single(acquire)).await.expect("commit").is_committed());
    let (status, _) =
        client.post("/v1/ops/stores/players/keys/alice/restore", OPERATOR_SECRET, &json!({"version": 1})).await;
    assert_eq!(status, 409, "no restore under a live session");
    let grant = json!({"grant_id": "g-1", "currencies": {"coins": 50}, "reason": "refund"});
    let (status, sent) = client.post("/v1/ops/stores/players/keys/alice/grant", OPERATOR_SECRET, &grant).await;
    assert_eq!((status, &sent["sent"]), (200, &json!(true)), "{sent}");
    let (_, again) = client.post("/v1/ops/stores/players/keys/alice/grant", OPERATOR_SECRET, &grant).await;
    assert_eq!(again["sent"], false, "a retried grant is not sent twice");
    let other = json!({"grant_id": "g-1", "currencies": {"coins": 5000}, "reason": "refund"});
    let (status, refused) = client.post("/v1/ops/stores/players/keys/alice/grant", OPERATOR_SECRET, &other).await;
    assert_eq!((status, refused["error"].as_str()), (409, Some("grant_id_reused")), "{refused}");
    let document = hoard::store::get(&*store, &id("players", "alice")).await.expect("read");
    assert_eq!(document.inbox.len(), 1);
    assert_eq!(document.inbox[0].body["hoard_grant"]["currencies"]["coins"], 50);
    assert_eq!(document.lease.holder.as_ref(), Some(&holder), "the session was not kicked");

    // Free refuses a live holder; force_end fences it out.
    let (status, _) = client.post("/v1/ops/stores/players/keys/alice/free", OPERATOR_SECRET, &json!({})).await;
    assert_eq!(status, 409);
    let (status, ended) = client.post("/v1/ops/stores/players/keys/alice/force_end", OPERATOR_SECRET, &json!({})).await;
    assert_eq!((status, &ended["ended"]), (200, &json!(true)));
    assert!(hoard::store::get(&*store, &id("players", "alice")).await.expect("read").lease.holder.is_none());
    let (_, audit) = client.get("/v1/ops/audit", OPERATOR_SECRET).await;
    let actions: Vec<&str> =
        audit["entries"].as_array().expect("entries").iter().filter_map(|e| e["entry"]["action"].as_str()).collect();
    assert_eq!(actions, vec!["restore", "grant", "force_end_session"]);
    assert_eq!(audit["entries"][0]["entry"]["version_before"], 2);
    assert_eq!(audit["entries"][0]["entry"]["version_after"], 3);
}

fn signature(body: &[u8], timestamp: i64, secret: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("t={timestamp},v1={signature}")
}

async fn send_webhook(client: &Client, body: &[u8], header: &str) -> (u16, Value) {
    let response = client
        .http
        .post(format!("{}/v1/webhooks/roblox/erasure", client.url))
        .header("roblox-signature", header)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .expect("answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn erasure_notification(notification_id: &str, user_id: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "NotificationId": notification_id, "EventType": "RightToErasureRequest",
        "EventTime": "2026-12-03T07:00:00Z", "EventPayload": {"UserId": user_id, "GameIds": [1818]},
    }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roblox_webhook_erases_on_a_good_signature_once_and_answers_a_replay() {
    let (server, store, _folder) = sqlite_server().await;
    let client = Client::new(&server.url);
    put(&*store, "alice", profile(1, 100, &["sword-1"]), "roblox:1").await;
    put(&*store, "alice", profile(2, 90, &["sword-1"]), "roblox:1").await;
    put(&*store, "bob", profile(1, 1, &[]), "roblox:2").await;
    let now_s = store.now_ms().await.expect("clock") / 1_000;
    let body = erasure_notification("n-1", 1);
    let (status, answer) = send_webhook(&client, &body, &signature(&body, now_s, WEBHOOK_SECRET)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["erased"], true);
    assert!(hoard::liveops::erase::holds_no_data(&*store, &id("players", "alice")).await.expect("check"));
    assert!(hoard::store::get(&*store, &id("players", "bob")).await.expect("read").exists());
    // Roblox retries: the same notification is a duplicate, answered 2xx, erasing nothing again.
    let (status, answer) = send_webhook(&client, &body, &signature(&body, now_s, WEBHOOK_SECRET)).await;
    assert_eq!((status, &answer["duplicate"]), (200, &json!(true)));
    let (_, tombstones) = client.get("/v1/ops/erasures", ADMIN_SECRET).await;
    let tombstones = tombstones["tombstones"].as_array().expect("tombstones");
    assert_eq!(tombstones.len(), 1, "one erasure for one notification");
    assert_eq!(tombstones[0]["requested_by"], "roblox-webhook");
    assert_eq!(tombstones[0]["user_id"], "roblox:1");
    // A request a crash left pending is finished at start; a finished one is left alone.
    assert_eq!(hoard_server::routes::ops::webhook::resume_pending(&*store).await.expect("resume"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roblox_webhook_refuses_bad_signatures_and_stale_timestamps_and_changes_nothing() {
    let (server, store, _folder) = sqlite_server().await;
    let client = Client::new(&server.url);
    put(&*store, "alice", profile(1, 100, &[]), "roblox:1").await;
    let now_s = store.now_ms().await.expect("clock") / 1_000;
    let body = erasure_notification("n-2", 1);
    let refusals = [
        signature(&body, now_s, "the-wrong-secret"),
        signature(&body, now_s - 3_600, WEBHOOK_SECRET),
        signature(b"another body", now_s, WEBHOOK_SECRET),
        format!("t={now_s}"),
        "v1=abc".to_string(),
    ];
    for header in refusals {
        let (status, answer) = send_webhook(&client, &body, &header).await;
        assert_eq!(status, 401, "{header}: {answer}");
        assert_eq!(answer["error"], "bad_signature");
    }
    let (status, _) = client
        .http
        .post(format!("{}/v1/webhooks/roblox/erasure", client.url))
        .body(body.clone())
        .send()
        .await
        .map(|response| (response.status().as_u16(), ()))
        .expect("answer");
    assert_eq!(status, 401, "no signature header");
    assert!(hoard::store::get(&*store, &id("players", "alice")).await.expect("read").exists(), "nothing erased");
    let requests =
        hoard::store::StoreName::new(hoard_server::routes::ops::webhook::ERASURE_REQUEST_STORE).expect("name");
    let page = store.list_keys(&requests, &Default::default()).await.expect("list");
    assert!(page.keys.is_empty(), "nothing recorded");
    // Other event types are answered 2xx and ignored.
    let other =
        serde_json::to_vec(&json!({"NotificationId": "n-3", "EventType": "SampleNotification", "EventPayload": {}}))
            .expect("json");
    let (status, answer) = send_webhook(&client, &other, &signature(&other, now_s, WEBHOOK_SECRET)).await;
    assert_eq!((status, &answer["ignored"]), (200, &json!(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_route_is_for_admin_keys_only() {
    let (server, store, _folder) = sqlite_server().await;
    let client = Client::new(&server.url);
    put(&*store, "alice", profile(1, 100, &[]), "roblox:1").await;
    let body = json!({"user_id": "roblox:1", "reason": "ticket 7"});
    assert_eq!(client.post("/v1/ops/erase", OPERATOR_SECRET, &body).await.0, 403);
    assert_eq!(client.post("/v1/ops/erase", READ_SECRET, &body).await.0, 403);
    assert!(hoard::store::get(&*store, &id("players", "alice")).await.expect("read").exists());
    let (status, tombstone) = client.post("/v1/ops/erase", ADMIN_SECRET, &body).await;
    assert_eq!(status, 200, "{tombstone}");
    assert_eq!((tombstone["documents_erased"].as_u64(), tombstone["requested_by"].as_str()), (Some(1), Some("ops")));
    assert!(!hoard::store::get(&*store, &id("players", "alice")).await.expect("read").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_assets_are_served_from_the_binary_without_a_key() {
    let (server, _store, _folder) = sqlite_server().await;
    let client = Client::new(&server.url);
    for (path, kind, marker) in [
        ("/console", "text/html", "hoard console"),
        ("/console/console.js", "text/javascript", "Authorization"),
        ("/console/console.css", "text/css", ".page"),
    ] {
        let response = client.http.get(format!("{}{path}", client.url)).send().await.expect("answer");
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let content_type = response.headers()["content-type"].to_str().expect("text").to_string();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let text = response.text().await.expect("body");
        assert!(text.contains(marker), "{path} is the console's asset");
        assert!(!text.contains("https://"), "{path} loads nothing from the internet");
    }
}

/// A profile that trades across servers.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Trader {
    holdings: hoard::engine::Holdings,
}

impl hoard::engine::Tradable for Trader {
    fn holdings(&self) -> &hoard::engine::Holdings {
        &self.holdings
    }
    fn holdings_mut(&mut self) -> &mut hoard::engine::Holdings {
        &mut self.holdings
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_cross_server_trade_is_seen_with_its_escrow_deadline_and_holders_then_settled() {
    use hoard::engine::{CrossOutcome, CrossTrade, Engine, EngineConfig, ProfileKind, ProfileSchema, TradeLeg};
    let (server, store, _folder) = sqlite_server().await;
    let client = Client::new(&server.url);
    let kind =
        ProfileKind::new(hoard::store::StoreName::new("players").expect("name"), ProfileSchema::new(Trader::default))
            .tradable();
    let config = |label: &str| EngineConfig { server_label: label.into(), ..EngineConfig::default() };
    let a = Engine::open(store.clone(), config("server-a")).await.expect("open a");
    let b = Engine::open(store.clone(), config("server-b")).await.expect("open b");
    let alice = a.start_session(&kind, "alice").await.expect("alice");
    let bob = b.start_session(&kind, "bob").await.expect("bob");
    alice
        .update(|t| {
            t.holdings.items.insert("sword-1".into(), json!({"kind": "sword"}));
        })
        .expect("seed");
    bob.update(|t| {
        t.holdings.currencies.insert("coins".into(), 100);
    })
    .expect("seed");
    alice.save_now().await.expect("save");
    bob.save_now().await.expect("save");
    let trade = CrossTrade {
        id: "h-1".into(),
        parties: vec![id("players", "alice"), id("players", "bob")],
        legs: vec![
            TradeLeg { from: 0, to: 1, items: vec!["sword-1".into()], currencies: Default::default() },
            TradeLeg { from: 1, to: 0, items: vec![], currencies: [("coins".to_string(), 30)].into() },
        ],
        timeout_ms: 60_000,
    };
    assert!(matches!(a.trade_across(&alice, &trade).await.expect("prepare"), CrossOutcome::Pending(_)));

    for secret in [OPERATOR_SECRET, READ_SECRET, ADMIN_SECRET] {
        let (status, answer) = client.get("/v1/ops/trades/h-1", secret).await;
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(client.get("/v1/ops/trades/h-1", GAME_SECRET).await.0, 403, "a game server key reads no trade view");
    let (_, answer) = client.get("/v1/ops/trades/h-1", OPERATOR_SECRET).await;
    let view = &answer["trade"];
    assert_eq!((&view["status"], &view["cross_server"]), (&json!("pending"), &json!(true)));
    assert_eq!(view["deadline_ms"].as_i64(), view["created_at_ms"].as_i64().map(|at| at + 60_000));
    assert_eq!(view["past_deadline"], false);
    assert_eq!(view["prepared"], json!([0]));
    assert_eq!(view["escrows_present"], 1);
    assert_eq!(view["legs"][0]["escrow_id"], json!({"store": "hoard.escrow", "key": "h-1/0"}));
    assert_eq!(view["legs"][0]["escrow"]["items"], json!({"sword-1": {"kind": "sword"}}));
    assert_eq!(view["legs"][1]["escrow"], Value::Null);
    assert_eq!(view["parties"][0]["holder"], a.holder().as_str());
    assert_eq!(view["parties"][1]["holder"], b.holder().as_str());
    assert_eq!((&view["parties"][0]["pending"], &view["parties"][1]["pending"]), (&json!(true), &json!(false)));
    assert_eq!(view["parties"][0]["pending_at"], "/data/holdings/pending_trades");

    let (status, page) = client.get("/v1/ops/trades?stuck=true", READ_SECRET).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["trades"][0]["trade_id"], "h-1");
    assert_eq!(page["trades"][0]["status"], "pending");
    assert_eq!(page["trades"][0]["escrowed_legs"], json!([0]));
    assert_eq!(page["next_after"], Value::Null);
    assert_eq!(client.get("/v1/ops/trades", READ_SECRET).await.0, 400, "only escrowed trades are listed");
    assert_eq!(client.get("/v1/ops/trades?stuck=true", GAME_SECRET).await.0, 403);
    assert_eq!(client.get("/v1/ops/trades/nope", OPERATOR_SECRET).await.0, 404);

    assert!(matches!(b.trade_across(&bob, &trade).await.expect("decide"), CrossOutcome::Committed(_)));
    let mut settled = Value::Null;
    for _ in 0..200 {
        settled = client.get("/v1/ops/trades/h-1", OPERATOR_SECRET).await.1;
        if settled["trade"]["escrows_present"] == 0 && settled["trade"]["parties"][0]["pending"] == false {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(settled["trade"]["status"], "committed", "{settled}");
    assert_eq!(settled["trade"]["escrows_present"], 0, "{settled}");
    assert_eq!(settled["trade"]["parties"][0]["pending"], false, "alice's server settled her side: {settled}");
    assert_eq!(client.get("/v1/ops/trades?stuck=true", OPERATOR_SECRET).await.1["trades"], json!([]));
    a.shutdown(std::time::Duration::from_secs(10)).await;
    b.shutdown(std::time::Duration::from_secs(10)).await;
}
