//! API keys on every route group: missing and wrong keys are 401, scopes are 403, a read-only
//! key changes nothing, and rate limits answer 429 with Retry-After.

use serde_json::{Value, json};

use crate::support::{
    ADMIN_SECRET, Client, ENGINE_SECRET, GAME_SECRET, OTHER_GAME_SECRET, READ_SECRET, start_memory, start_with,
    test_config,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Who {
    Admin,
    Engine,
    Game,
    OtherGame,
    Read,
}

const EVERYONE: &[Who] = &[Who::Admin, Who::Engine, Who::Game, Who::OtherGame, Who::Read];
const READERS_OF_PLAYERS: &[Who] = &[Who::Admin, Who::Engine, Who::Game, Who::Read];
const PLAYERS_OF_PLAYERS: &[Who] = &[Who::Admin, Who::Engine, Who::Game];
const HOLDERS: &[Who] = &[Who::Admin, Who::Engine, Who::Game, Who::OtherGame];
const ADMINS: &[Who] = &[Who::Admin];
const ENGINES: &[Who] = &[Who::Admin, Who::Engine];

fn secret(who: Who) -> &'static str {
    match who {
        Who::Admin => ADMIN_SECRET,
        Who::Engine => ENGINE_SECRET,
        Who::Game => GAME_SECRET,
        Who::OtherGame => OTHER_GAME_SECRET,
        Who::Read => READ_SECRET,
    }
}

/// One route: (group, method, path, body, who may call it).
pub type RouteCase = (&'static str, &'static str, String, Option<Value>, &'static [Who]);

/// Every route group.
pub fn routes() -> Vec<RouteCase> {
    let doc = json!({"store": "players", "key": "alice"});
    let token = json!({"holder": "game:x-1", "epoch": 1, "store": "players", "key": "alice"});
    vec![
        ("operations", "GET", "/metrics".into(), None, EVERYONE),
        ("operations", "GET", "/v1/openapi.json".into(), None, EVERYONE),
        ("documents", "GET", "/v1/stores/players/keys".into(), None, READERS_OF_PLAYERS),
        ("documents", "GET", "/v1/stores/players/keys/alice".into(), None, READERS_OF_PLAYERS),
        ("documents", "GET", "/v1/stores/players/keys/alice/versions".into(), None, READERS_OF_PLAYERS),
        ("documents", "GET", "/v1/stores/players/keys/alice/versions/1".into(), None, READERS_OF_PLAYERS),
        ("admin", "POST", "/v1/stores/players/keys/alice/rollback".into(), Some(json!({"version": 1})), ADMINS),
        ("admin", "POST", "/v1/stores/players/keys/alice/release".into(), None, ADMINS),
        ("admin", "GET", "/v1/admin/keys".into(), None, ADMINS),
        (
            "admin",
            "POST",
            "/v1/admin/keys".into(),
            Some(json!({"name": "made-by-auth-test", "scope": "read_only"})),
            ADMINS,
        ),
        ("admin", "DELETE", "/v1/admin/keys/nobody".into(), None, ADMINS),
        ("store", "GET", "/v1/store/info".into(), None, ENGINES),
        ("store", "GET", "/v1/store/now".into(), None, ENGINES),
        (
            "store",
            "POST",
            "/v1/store/commit".into(),
            Some(
                json!({"id": "00000000-0000-7000-8000-000000000000", "writes": [{"id": doc, "condition": "None", "value": {"Put": 1}, "attributes": null, "user_ids": null, "lease": "Keep", "inbox_push": [], "inbox_ack_through": null}]}),
            ),
            ENGINES,
        ),
        ("store", "POST", "/v1/store/get_many".into(), Some(json!({"ids": [doc]})), ENGINES),
        ("store", "POST", "/v1/store/list".into(), Some(json!({"store": "players"})), ENGINES),
        ("store", "POST", "/v1/store/versions".into(), Some(json!({"id": doc})), ENGINES),
        ("store", "POST", "/v1/store/version".into(), Some(json!({"id": doc, "version": 1})), ENGINES),
        ("store", "POST", "/v1/store/prune".into(), Some(json!({})), ENGINES),
        ("store", "POST", "/v1/store/holders/renew".into(), Some(json!({"holder": "h", "ttl_ms": 1000})), ENGINES),
        ("store", "POST", "/v1/store/holders/release".into(), Some(json!({"holder": "h"})), ENGINES),
        ("store", "POST", "/v1/store/holders/read".into(), Some(json!({"holder": "h"})), ENGINES),
        ("store", "POST", "/v1/store/notify".into(), Some(json!({"topic": "t", "payload": "p"})), ENGINES),
        ("holders", "POST", "/v1/holders".into(), Some(json!({"label": "eu"})), HOLDERS),
        (
            "sessions",
            "POST",
            "/v1/sessions/start".into(),
            Some(json!({"store": "players", "key": "alice", "holder": "game:x-1", "policy": "fail_fast"})),
            PLAYERS_OF_PLAYERS,
        ),
        (
            "sessions",
            "POST",
            "/v1/sessions/save".into(),
            Some(json!({"token": token, "base_version": 0, "value": {}})),
            PLAYERS_OF_PLAYERS,
        ),
        (
            "sessions",
            "POST",
            "/v1/sessions/end".into(),
            Some(json!({"token": token, "base_version": 0})),
            PLAYERS_OF_PLAYERS,
        ),
        ("sessions", "POST", "/v1/sessions/read".into(), Some(json!({"token": token})), PLAYERS_OF_PLAYERS),
        (
            "sessions",
            "POST",
            "/v1/sessions/commit".into(),
            Some(json!({"saves": [{"token": token, "base_version": 0, "value": {}}]})),
            PLAYERS_OF_PLAYERS,
        ),
        (
            "trades",
            "POST",
            "/v1/trades".into(),
            Some(json!({"trade_id": "t1", "parties": [token, token], "legs": [{"from": 0, "to": 1, "items": ["x"]}]})),
            PLAYERS_OF_PLAYERS,
        ),
        (
            "receipts",
            "POST",
            "/v1/receipts".into(),
            Some(json!({"token": token, "purchase_id": "p1", "payload": {}, "grant": []})),
            PLAYERS_OF_PLAYERS,
        ),
        (
            "messages",
            "POST",
            "/v1/stores/players/keys/alice/messages".into(),
            Some(json!({"body": {"gift": 1}})),
            PLAYERS_OF_PLAYERS,
        ),
        (
            "updates",
            "POST",
            "/v1/stores/players/keys/alice/update".into(),
            Some(json!({"ops": [{"op": "increment", "path": "/coins", "by": 1}]})),
            PLAYERS_OF_PLAYERS,
        ),
    ]
}

#[tokio::test]
async fn missing_or_wrong_key_is_401_on_every_route_group() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    for (group, method, path, body, _) in routes() {
        for secret in [None, Some("wrong-key"), Some(""), Some(&"x".repeat(5_000)[..])] {
            let (status, answer) = client.send(method, &path, secret, body.as_ref(), None).await;
            assert_eq!(status, 401, "{group} {method} {path} with {secret:?}: {answer}");
            assert_eq!(answer["error"], "unauthorized");
            let text = answer.to_string();
            assert!(!text.contains("secret") && !text.contains("sha"), "nothing leaks: {text}");
        }
    }
}

#[tokio::test]
async fn each_scope_reaches_only_its_route_groups() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    for (group, method, path, body, allowed) in routes() {
        for who in EVERYONE {
            let (status, answer) = client.send(method, &path, Some(secret(*who)), body.as_ref(), None).await;
            assert_ne!(status, 401, "{group} {path} as {who:?}: {answer}");
            assert!(status < 500, "{group} {path} as {who:?} answered {status}: {answer}");
            if allowed.contains(who) {
                assert_ne!(status, 403, "{group} {method} {path} must be allowed for {who:?}: {answer}");
            } else {
                assert_eq!(status, 403, "{group} {method} {path} must be forbidden for {who:?}: {answer}");
                assert_eq!(answer["error"], "forbidden");
            }
        }
    }
}

#[tokio::test]
async fn read_only_key_cannot_change_anything() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let (status, _) = client
        .post(
            "/v1/stores/players/keys/alice/update",
            ADMIN_SECRET,
            &json!({"ops": [{"op": "set", "path": "/coins", "value": 5}]}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, before) = client.get("/v1/stores/players/keys/alice", READ_SECRET).await;
    for (group, method, path, body, _) in routes() {
        if method == "GET" {
            continue;
        }
        let (status, answer) = client.send(method, &path, Some(READ_SECRET), body.as_ref(), None).await;
        assert_eq!(status, 403, "{group} {path}: {answer}");
    }
    let (_, after) = client.get("/v1/stores/players/keys/alice", READ_SECRET).await;
    assert_eq!(before, after);
    let (_, keys) = client.get("/v1/stores/players/keys", READ_SECRET).await;
    assert_eq!(keys["keys"], json!(["alice"]));
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let mut config = test_config();
    for key in &mut config.keys {
        key.rate_per_second = 1;
        key.rate_burst = 3;
    }
    let server = start_with(std::sync::Arc::new(hoard::store::memory::MemoryStore::new()), config).await;
    let http = reqwest::Client::new();
    let mut limited = None;
    for _ in 0..10 {
        let response = http
            .get(format!("{}/v1/stores/players/keys", server.url))
            .bearer_auth(READ_SECRET)
            .send()
            .await
            .expect("answer");
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("a burst past the limit is refused");
    let retry_after: u64 = response.headers()["retry-after"].to_str().expect("text").parse().expect("seconds");
    assert!(retry_after >= 1);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "rate_limited");
    // Another key has its own bucket.
    let (status, _) = Client::new(&server.url).get("/v1/stores/players/keys", GAME_SECRET).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn health_and_readiness_need_no_key_and_say_nothing_else() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let (status, body) = client.send("GET", "/healthz", None, None, None).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = client.send("GET", "/readyz", None, None, None).await;
    assert_eq!((status, body), (200, json!({"status": "ready"})));
}
