//! Test support: a `hoard serve` on a free local port with one key of every scope, and a small
//! HTTP client that returns status and JSON body.

use std::sync::Arc;
use std::time::Duration;

use hoard::store::SharedStore;
use hoard::store::memory::MemoryStore;
use hoard_server::config::{KeyEntry, ServiceConfig};
use hoard_server::{AppState, auth::Scope};
use serde_json::Value;

pub const ADMIN_SECRET: &str = "admin-secret-0123456789";
pub const ENGINE_SECRET: &str = "engine-secret-0123456789";
pub const GAME_SECRET: &str = "game-secret-0123456789";
pub const OTHER_GAME_SECRET: &str = "other-game-secret-0123456789";
pub const READ_SECRET: &str = "read-secret-0123456789";

fn key(name: &str, scope: Scope, stores: Option<Vec<&str>>, secret: &str) -> hoard_server::auth::ApiKey {
    KeyEntry {
        name: name.into(),
        scope,
        stores: stores.map(|s| s.into_iter().map(String::from).collect()),
        sha256: None,
        secret: Some(secret.into()),
        rate_per_second: Some(1_000_000),
        rate_burst: Some(1_000_000),
    }
    .into_key()
    .expect("valid key")
}

pub fn test_config() -> ServiceConfig {
    ServiceConfig {
        keys: vec![
            key("ops", Scope::Admin, None, ADMIN_SECRET),
            key("engine", Scope::Engine, None, ENGINE_SECRET),
            key("game", Scope::GameServer, Some(vec!["players", "guilds", "world"]), GAME_SECRET),
            key("other", Scope::GameServer, Some(vec!["other-game"]), OTHER_GAME_SECRET),
            key("support", Scope::ReadOnly, None, READ_SECRET),
        ],
        ..ServiceConfig::default()
    }
}

/// A running server; stopped when dropped.
pub struct TestServer {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start_with(store: SharedStore, config: ServiceConfig) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let state = AppState::new(store, config);
    let task = tokio::spawn(async move {
        let _ = hoard_server::serve(listener, state, std::future::pending(), Duration::from_secs(1)).await;
    });
    TestServer { url, task }
}

pub async fn start(store: SharedStore) -> TestServer {
    start_with(store, test_config()).await
}

pub async fn start_memory() -> TestServer {
    start(Arc::new(MemoryStore::new())).await
}

/// An HTTP client for tests: every call returns the status and the JSON body (or Null).
#[derive(Clone, Debug)]
pub struct Client {
    pub url: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(url: &str) -> Client {
        Client { url: url.to_string(), http: reqwest::Client::new() }
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        secret: Option<&str>,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(secret) = secret {
            request = request.bearer_auth(secret);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, secret: &str) -> (u16, Value) {
        self.send("GET", path, Some(secret), None, None).await
    }

    pub async fn post(&self, path: &str, secret: &str, body: &Value) -> (u16, Value) {
        self.send("POST", path, Some(secret), Some(body), None).await
    }

    /// POSTs raw bytes with a content type, for malformed-input tests.
    pub async fn post_raw(&self, path: &str, secret: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{}", self.url, path))
            .bearer_auth(secret)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// Registers a holder with the game key and returns its id.
pub async fn register_holder(client: &Client, label: &str) -> String {
    let (status, answer) = client.post("/v1/holders", GAME_SECRET, &serde_json::json!({"label": label})).await;
    assert_eq!(status, 200, "{answer}");
    answer["holder"].as_str().expect("holder").to_string()
}

/// Starts a session of `players/{key}` for the holder with the game key; returns the answer.
pub async fn start_player(client: &Client, holder: &str, key: &str) -> Value {
    let body = serde_json::json!({"store": "players", "key": key, "holder": holder, "policy": "fail_fast"});
    let (status, started) = client.post("/v1/sessions/start", GAME_SECRET, &body).await;
    assert_eq!(status, 200, "{started}");
    started
}

/// Saves a session's value on a base version with the game key; returns status and answer.
pub async fn save_value(client: &Client, token: &Value, base_version: u64, value: Value) -> (u16, Value) {
    let body = serde_json::json!({"token": token, "base_version": base_version, "value": value});
    client.post("/v1/sessions/save", GAME_SECRET, &body).await
}

/// Reads a key's document with the read-only key.
pub async fn read_document(client: &Client, store: &str, key: &str) -> Value {
    let (status, document) = client.get(&format!("/v1/stores/{store}/keys/{key}"), READ_SECRET).await;
    assert_eq!(status, 200, "{document}");
    document
}
