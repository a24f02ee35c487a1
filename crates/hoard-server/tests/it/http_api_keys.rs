//! Runtime API keys over HTTP: a created key authenticates with its scope and only that, a
//! revoked one is refused at once on its process and within the refresh interval on another
//! over the same store, the store keeps only hashes, and refusals store nothing.

use std::sync::Arc;
use std::time::Duration;

use hoard::store::memory::MemoryStore;
use hoard::store::{Commit, DocId, SharedStore, VersionQuery, Write};
use hoard_server::runtime_keys::{API_KEYS_COUNT_KEY, API_KEYS_COUNT_STORE, API_KEYS_STORE, RUNTIME_API_KEYS_MAX};
use serde_json::{Value, json};

use crate::support::{
    ADMIN_SECRET, Client, ENGINE_SECRET, GAME_SECRET, OTHER_GAME_SECRET, READ_SECRET, TestServer, start_with,
    test_config,
};

/// The refresh interval of these tests' servers.
const REFRESH_INTERVAL_MS: u64 = 200;

async fn start_refreshing(store: SharedStore) -> TestServer {
    let mut config = test_config();
    config.api_keys_refresh_interval_ms = REFRESH_INTERVAL_MS;
    start_with(store, config).await
}

async fn create(client: &Client, body: Value) -> (u16, Value) {
    client.post("/v1/admin/keys", ADMIN_SECRET, &body).await
}

async fn revoke(client: &Client, name: &str) -> (u16, Value) {
    client.send("DELETE", &format!("/v1/admin/keys/{name}"), Some(ADMIN_SECRET), None, None).await
}

/// Every stored runtime key document and count, as text, with all their versions.
async fn stored_text(store: &SharedStore) -> String {
    let mut text = String::new();
    for (name, key) in [(API_KEYS_COUNT_STORE, API_KEYS_COUNT_KEY.to_string())]
        .into_iter()
        .chain(stored_names(store).await.into_iter().map(|key| (API_KEYS_STORE, key)))
    {
        let id = DocId::parse(name, &key).expect("id");
        text.push_str(&serde_json::to_string(&hoard::store::get(&**store, &id).await.expect("get")).expect("json"));
        for info in store.list_versions(&id, &VersionQuery::default()).await.expect("versions") {
            let record = store.get_version(&id, info.version).await.expect("version");
            text.push_str(&serde_json::to_string(&record).expect("json"));
        }
    }
    text
}

async fn stored_names(store: &SharedStore) -> Vec<String> {
    let name = hoard::store::StoreName::new(API_KEYS_STORE).expect("name");
    let page = store.list_keys(&name, &hoard::store::ListQuery::default()).await.expect("list");
    page.keys.into_iter().map(String::from).collect()
}

async fn runtime_count(store: &SharedStore) -> Option<Value> {
    let id = DocId::parse(API_KEYS_COUNT_STORE, API_KEYS_COUNT_KEY).expect("id");
    hoard::store::get(&**store, &id).await.expect("get").value
}

/// Polls `path` with `secret` until it answers `status`, up to `deadline`; returns how long it took.
async fn until_status(client: &Client, path: &str, secret: &str, status: u16, deadline: Duration) -> Duration {
    let begun = tokio::time::Instant::now();
    loop {
        let (now, answer) = client.get(path, secret).await;
        if now == status {
            return begun.elapsed();
        }
        assert!(begun.elapsed() < deadline, "{path} still answers {now} ({answer}) after {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_created_key_authenticates_with_its_scope_and_only_that_scope() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let server = start_refreshing(store.clone()).await;
    let client = Client::new(&server.url);
    let (status, created) =
        create(&client, json!({"name": "support-2", "scope": "read_only", "stores": ["players"]})).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("the secret is answered once").to_string();
    assert!(secret.starts_with("hoard_key_") && secret.len() > 64, "{secret}");
    assert_eq!(created["key"]["origin"], "runtime");
    assert_eq!(created["key"]["created_by"], "ops");
    assert_eq!(created["key"]["stores"], json!(["players"]));
    let (status, _) = client.get("/v1/stores/players/keys", &secret).await;
    assert_eq!(status, 200, "a read on its store");
    let (status, refused) = client
        .post(
            "/v1/stores/players/keys/alice/update",
            &secret,
            &json!({"ops": [{"op": "set", "path": "/a", "value": 1}]}),
        )
        .await;
    assert_eq!((status, refused["error"].clone()), (403, json!("forbidden")), "read_only cannot write");
    let (status, _) = client.get("/v1/stores/guilds/keys", &secret).await;
    assert_eq!(status, 403, "not its store");
    let (status, _) = client.get("/v1/admin/keys", &secret).await;
    assert_eq!(status, 403, "not an admin");
    // A created game server key plays on its stores.
    let (status, created) = create(
        &client,
        json!({"name": "eu-2", "scope": "game_server", "stores": ["players"],
        "rate_per_second": 50, "rate_burst": 100}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let game = created["secret"].as_str().expect("secret").to_string();
    let (status, answer) = client
        .post("/v1/stores/players/keys/alice/update", &game, &json!({"ops": [{"op": "set", "path": "/a", "value": 1}]}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, listed) = client.get("/v1/admin/keys", ADMIN_SECRET).await;
    assert_eq!(status, 200);
    let origins: Vec<(String, String)> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|k| (k["name"].as_str().unwrap_or("").to_string(), k["origin"].as_str().unwrap_or("").to_string()))
        .collect();
    for (name, origin) in [("ops", "config"), ("game", "config"), ("support-2", "runtime"), ("eu-2", "runtime")] {
        assert!(origins.contains(&(name.to_string(), origin.to_string())), "{name} {origin} in {origins:?}");
    }
    let listed = listed.to_string();
    let hash = hoard_server::auth::hash_secret_hex(&secret);
    assert!(!listed.contains(&secret) && !listed.contains(&hash), "the list shows no secret or hash: {listed}");
    assert!(!listed.contains("sha256"), "{listed}");
}

#[tokio::test]
async fn a_revoked_key_is_refused_at_once_here_and_within_the_refresh_interval_on_another_process() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    revocation_crosses_processes(store.clone(), store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn a_revoked_key_is_refused_on_another_process_sharing_postgres_within_the_refresh_interval() {
    let schema = crate::local_backends::fresh_schema_name();
    let config = crate::local_backends::TestConfig::default();
    let a = crate::local_backends::postgres_in_schema(config.clone(), schema.clone()).await;
    let b = crate::local_backends::postgres_in_schema(config, schema).await;
    revocation_crosses_processes(a.store.clone(), b.store.clone()).await;
}

/// Two servers, each with its own state (and here possibly its own store handle) over one store.
async fn revocation_crosses_processes(store_a: SharedStore, store_b: SharedStore) {
    let a = start_refreshing(store_a).await;
    let b = start_refreshing(store_b).await;
    let (client_a, client_b) = (Client::new(&a.url), Client::new(&b.url));
    let (status, created) = create(&client_a, json!({"name": "eu-3", "scope": "read_only"})).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("secret").to_string();
    let path = "/v1/stores/players/keys";
    assert_eq!(client_a.get(path, &secret).await.0, 200, "at once on the creating process");
    let bound = Duration::from_millis(REFRESH_INTERVAL_MS * 10);
    until_status(&client_b, path, &secret, 200, bound).await;
    let (status, revoked) = revoke(&client_a, "eu-3").await;
    assert_eq!((status, revoked), (200, json!({"revoked": "eu-3"})));
    let (status, refused) = client_a.get(path, &secret).await;
    assert_eq!((status, refused["error"].clone()), (401, json!("unauthorized")), "at once on the revoking process");
    let took = until_status(&client_b, path, &secret, 401, bound).await;
    eprintln!("the other process refused the revoked key after {took:?}");
    // Revoked everywhere: never accepted again.
    for client in [&client_a, &client_b] {
        assert_eq!(client.get(path, &secret).await.0, 401);
    }
    let (status, _) = revoke(&client_b, "eu-3").await;
    assert_eq!(status, 404, "already revoked");
}

#[tokio::test]
async fn the_store_keeps_only_the_secrets_hash_in_every_version() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let server = start_refreshing(store.clone()).await;
    let client = Client::new(&server.url);
    let (status, created) = create(&client, json!({"name": "eu-4", "scope": "engine"})).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("secret").to_string();
    let (status, revoked) = revoke(&client, "eu-4").await;
    assert_eq!(status, 200, "{revoked}");
    let (status, created) = create(&client, json!({"name": "eu-4", "scope": "admin"})).await;
    assert_eq!(status, 201, "the name is free again after a revocation: {created}");
    let second = created["secret"].as_str().expect("secret").to_string();
    assert_ne!(secret, second);
    let text = stored_text(&store).await;
    for secret in [&secret, &second] {
        assert!(!text.contains(secret.as_str()), "no secret stored: {text}");
        let without_prefix = secret.trim_start_matches("hoard_key_");
        assert!(!text.contains(without_prefix), "no part of a secret stored");
        assert!(text.contains(&hoard_server::auth::hash_secret_hex(secret)), "its hash is stored");
    }
    assert_eq!(runtime_count(&store).await, Some(json!(1)));
}

#[tokio::test]
async fn non_admin_keys_are_forbidden_on_every_key_route_and_change_nothing() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let server = start_refreshing(store.clone()).await;
    let client = Client::new(&server.url);
    let (status, _) = create(&client, json!({"name": "keep-me", "scope": "read_only"})).await;
    assert_eq!(status, 201);
    let before = stored_text(&store).await;
    for secret in [ENGINE_SECRET, GAME_SECRET, OTHER_GAME_SECRET, READ_SECRET] {
        let (status, answer) = client.get("/v1/admin/keys", secret).await;
        assert_eq!((status, answer["error"].clone()), (403, json!("forbidden")), "list: {answer}");
        let body = json!({"name": "sneaky", "scope": "admin"});
        let (status, answer) = client.post("/v1/admin/keys", secret, &body).await;
        assert_eq!(status, 403, "create: {answer}");
        let (status, answer) = client.send("DELETE", "/v1/admin/keys/keep-me", Some(secret), None, None).await;
        assert_eq!(status, 403, "revoke: {answer}");
        // Even a malformed body is refused for its scope first.
        let (status, _) = client.post_raw("/v1/admin/keys", secret, "application/json", b"{".to_vec()).await;
        assert_eq!(status, 403);
    }
    assert_eq!(stored_text(&store).await, before, "nothing changed");
}

#[tokio::test]
async fn duplicate_names_configured_keys_and_bad_input_are_refused_and_store_nothing() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let server = start_refreshing(store.clone()).await;
    let client = Client::new(&server.url);
    let (status, _) = create(&client, json!({"name": "dup", "scope": "read_only"})).await;
    assert_eq!(status, 201);
    let before = stored_text(&store).await;
    let (status, answer) = create(&client, json!({"name": "dup", "scope": "admin"})).await;
    assert_eq!((status, answer["error"].clone()), (409, json!("name_taken")), "{answer}");
    let (status, answer) = create(&client, json!({"name": "ops", "scope": "read_only"})).await;
    assert_eq!((status, answer["error"].clone()), (409, json!("name_taken")), "a configured name: {answer}");
    let (status, answer) = revoke(&client, "ops").await;
    assert_eq!((status, answer["error"].clone()), (409, json!("configured_key")), "{answer}");
    assert!(answer["message"].as_str().is_some_and(|m| m.contains("remove it from the configuration")), "{answer}");
    let (status, answer) = revoke(&client, "nobody").await;
    assert_eq!(status, 404, "{answer}");
    let long_name = "n".repeat(33);
    let bad = [
        json!({"name": "", "scope": "read_only"}),
        json!({"name": long_name, "scope": "read_only"}),
        json!({"name": "bad name", "scope": "read_only"}),
        json!({"name": "bad/name", "scope": "read_only"}),
        json!({"name": "ok", "scope": "superuser"}),
        json!({"name": "ok", "scope": "read_only", "rate_per_second": 0}),
        json!({"name": "ok", "scope": "read_only", "rate_burst": 0}),
        json!({"name": "ok", "scope": "read_only", "rate_per_second": -1}),
        json!({"name": "ok", "scope": "read_only", "stores": []}),
        json!({"name": "ok", "scope": "read_only", "stores": "players"}),
        json!({"name": "ok", "scope": "read_only", "stores": ["*", "players"]}),
        json!({"name": "ok", "scope": "read_only", "stores": ["bad\nstore"]}),
        json!({"name": "ok", "scope": "read_only", "stores": ["s".repeat(200)]}),
        json!({"name": "ok", "scope": "read_only", "secret": "chosen-by-me"}),
        json!({"name": "ok"}),
    ];
    for body in bad {
        let (status, answer) = create(&client, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| m.len() > 10), "{body}: a clear message: {answer}");
    }
    for name in ["bad%20name", &"n".repeat(40)] {
        let (status, answer) = revoke(&client, name).await;
        assert_eq!(status, 400, "{name}: {answer}");
    }
    assert_eq!(stored_text(&store).await, before, "nothing stored by any refusal");
    assert_eq!(stored_names(&store).await, vec!["dup".to_string()]);
}

#[tokio::test]
async fn creation_past_the_runtime_key_limit_is_refused() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let server = start_refreshing(store.clone()).await;
    let client = Client::new(&server.url);
    // Stand in for RUNTIME_API_KEYS_MAX earlier creations: the count is what the limit reads.
    let count = DocId::parse(API_KEYS_COUNT_STORE, API_KEYS_COUNT_KEY).expect("id");
    let limit = i64::try_from(RUNTIME_API_KEYS_MAX).expect("small");
    store.commit(Commit::single(Write::increment(count, limit))).await.expect("commit");
    let (status, answer) = create(&client, json!({"name": "one-too-many", "scope": "read_only"})).await;
    assert_eq!((status, answer["error"].clone()), (409, json!("too_many_keys")), "{answer}");
    assert!(stored_names(&store).await.is_empty());
}

#[tokio::test]
async fn only_admins_read_the_api_keys_stores_and_nobody_writes_them_around_key_management() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let server = start_refreshing(store.clone()).await;
    let client = Client::new(&server.url);
    let (status, _) = create(&client, json!({"name": "target", "scope": "read_only"})).await;
    assert_eq!(status, 201);
    let before = stored_text(&store).await;
    for store_name in [API_KEYS_STORE, API_KEYS_COUNT_STORE] {
        for secret in [GAME_SECRET, READ_SECRET, ENGINE_SECRET] {
            let (status, answer) = client.get(&format!("/v1/stores/{store_name}/keys"), secret).await;
            assert_eq!(status, 403, "{store_name} list: {answer}");
            let (status, answer) = client.get(&format!("/v1/stores/{store_name}/keys/target"), secret).await;
            assert_eq!(status, 403, "{store_name} read: {answer}");
        }
        for secret in [GAME_SECRET, ADMIN_SECRET, ENGINE_SECRET] {
            let update = json!({"ops": [{"op": "set", "path": "", "value": {"sha256": "00"}}]});
            let (status, answer) =
                client.post(&format!("/v1/stores/{store_name}/keys/target/update"), secret, &update).await;
            assert_eq!(status, 403, "{store_name} update: {answer}");
            let message = json!({"body": {"x": 1}});
            let (status, answer) =
                client.post(&format!("/v1/stores/{store_name}/keys/target/messages"), secret, &message).await;
            assert_eq!(status, 403, "{store_name} message: {answer}");
        }
        for admin_write in ["rollback", "release"] {
            let path = format!("/v1/stores/{store_name}/keys/target/{admin_write}");
            let (status, answer) = client.post(&path, ADMIN_SECRET, &json!({"version": 1, "force": true})).await;
            assert_eq!(status, 403, "{path}: {answer}");
        }
        let (status, _) = client.get(&format!("/v1/stores/{store_name}/keys"), ADMIN_SECRET).await;
        assert_eq!(status, 200, "admins read them");
    }
    // The raw store protocol: an engine key cannot mint itself a key, nor read the hashes.
    let doc = json!({"store": API_KEYS_STORE, "key": "minted"});
    let commit = json!({"id": "00000000-0000-7000-8000-000000000001", "writes": [{"id": doc, "condition": "None",
        "value": {"Put": {"name": "minted", "scope": "admin", "sha256": "00"}}, "attributes": null, "user_ids": null,
        "lease": "Keep", "inbox_push": [], "inbox_ack_through": null}]});
    for secret in [ENGINE_SECRET, ADMIN_SECRET] {
        let (status, answer) = client.post("/v1/store/commit", secret, &commit).await;
        assert_eq!(status, 403, "raw commit: {answer}");
    }
    let (status, _) = client.post("/v1/store/get_many", ENGINE_SECRET, &json!({"ids": [doc]})).await;
    assert_eq!(status, 403);
    let (status, _) = client.post("/v1/store/list", ENGINE_SECRET, &json!({"store": API_KEYS_STORE})).await;
    assert_eq!(status, 403);
    let (status, _) = client.post("/v1/store/versions", ENGINE_SECRET, &json!({"id": doc})).await;
    assert_eq!(status, 403);
    let (status, _) = client.post("/v1/store/get_many", ADMIN_SECRET, &json!({"ids": [doc]})).await;
    assert_eq!(status, 200, "admins read them");
    assert_eq!(stored_text(&store).await, before, "nothing changed");
}

#[tokio::test]
async fn a_runtime_key_survives_a_restart_on_the_same_sqlite_file() {
    let folder = tempfile::tempdir().expect("folder");
    let path = folder.path().join("hoard.sqlite3");
    let path = path.to_str().expect("utf-8 path");
    let secret = {
        let store = hoard::store::open_store(path, hoard::store::StoreOptions::default()).await.expect("open");
        let server = start_refreshing(store).await;
        let client = Client::new(&server.url);
        let (status, created) = create(&client, json!({"name": "kept", "scope": "read_only"})).await;
        assert_eq!(status, 201, "{created}");
        created["secret"].as_str().expect("secret").to_string()
    };
    let store = hoard::store::open_store(path, hoard::store::StoreOptions::default()).await.expect("reopen");
    let server = start_refreshing(store).await;
    let client = Client::new(&server.url);
    let (status, answer) = client.get("/v1/stores/players/keys", &secret).await;
    assert_eq!(status, 200, "accepted from the first request after the restart: {answer}");
    let (status, _) = revoke(&client, "kept").await;
    assert_eq!(status, 200);
    assert_eq!(client.get("/v1/stores/players/keys", &secret).await.0, 401);
}
