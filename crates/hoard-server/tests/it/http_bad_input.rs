//! Bad input of every kind is a 4xx with a clear JSON message, stores nothing, and never makes
//! the server answer 5xx or stop.

use serde_json::{Value, json};

use crate::support::{ADMIN_SECRET, Client, ENGINE_SECRET, GAME_SECRET, start_memory};

const GARBAGE: &[&[u8]] = &[
    b"",
    b"{",
    b"not json",
    b"[]",
    b"null",
    b"42",
    b"\"text\"",
    b"{\"unexpected\": true}",
    b"{\"store\": 5, \"key\": [], \"holder\": {}}",
    b"{\"token\": \"nope\", \"value\": NaN}",
    b"\xff\xfe\x00garbage",
    b"{\"ops\": [{\"op\": \"explode\", \"path\": \"/a\"}]}",
];

#[tokio::test]
async fn malformed_and_mistyped_bodies_are_400_and_store_nothing() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let routes = crate::http_auth::routes();
    for (group, method, path, body, _) in &routes {
        // Prune takes no arguments and reads no body.
        if *method != "POST" || body.is_none() || path.ends_with("/prune") {
            continue;
        }
        for garbage in GARBAGE {
            let (status, answer) = client.post_raw(path, ADMIN_SECRET, "application/json", garbage.to_vec()).await;
            assert!((400..500).contains(&status), "{group} {path} with {garbage:?}: {status} {answer}");
            assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()), "{path}: clear message: {answer}");
        }
        let (status, answer) = client.post_raw(path, ADMIN_SECRET, "text/plain", b"{}".to_vec()).await;
        assert_eq!(status, 415, "{path}: {answer}");
    }
    for store in ["players", "guilds", "world", "hoard.trades", "hoard.receipts", "hoard.idempotency"] {
        let (_, page) = client.get(&format!("/v1/stores/{store}/keys"), ADMIN_SECRET).await;
        assert_eq!(page["keys"], json!([]), "{store}: nothing stored");
    }
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let huge =
        format!("{{\"ops\": [{{\"op\": \"set\", \"path\": \"/a\", \"value\": \"{}\"}}]}}", "x".repeat(6 * 1024 * 1024));
    let (status, answer) = client
        .post_raw("/v1/stores/players/keys/alice/update", GAME_SECRET, "application/json", huge.into_bytes())
        .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "body_too_large");
    let huge = vec![b' '; 17 * 1024 * 1024];
    let (status, _) = client.post_raw("/v1/store/commit", ENGINE_SECRET, "application/json", huge).await;
    assert_eq!(status, 413);
    let (_, page) = client.get("/v1/stores/players/keys", ADMIN_SECRET).await;
    assert_eq!(page["keys"], json!([]));
}

#[tokio::test]
async fn invalid_store_names_keys_and_paths_are_400_or_404_with_a_message() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    let long_key = "k".repeat(300);
    let long_store = "s".repeat(200);
    let cases: Vec<(String, u16)> = vec![
        (format!("/v1/stores/players/keys/{long_key}"), 400),
        (format!("/v1/stores/{long_store}/keys/alice"), 400),
        ("/v1/stores/players/keys/a%00b".into(), 400),
        ("/v1/stores/players/keys/a%0Ab".into(), 400),
        ("/v1/stores/players/keys/alice/versions/not-a-number".into(), 400),
        ("/v1/stores/players/keys/alice/versions/-1".into(), 400),
        ("/v1/stores/players/keys?limit=lots".into(), 400),
        ("/v1/stores/players/keys?unknown=1".into(), 400),
        ("/v1/stores/players/keys/alice/versions/99".into(), 404),
        ("/v1/no/such/route".into(), 404),
    ];
    for (path, expected) in cases {
        let (status, answer) = client.get(&path, ADMIN_SECRET).await;
        assert_eq!(status, expected, "{path}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()), "{path}: {answer}");
    }
    let (status, answer) = client.send("DELETE", "/v1/stores/players/keys/alice", Some(ADMIN_SECRET), None, None).await;
    assert_eq!(status, 405, "{answer}");
    assert_eq!(answer["error"], "method_not_allowed");
}

#[tokio::test]
async fn a_game_server_cannot_name_stores_outside_its_list_or_hoards_own() {
    let server = start_memory().await;
    let client = Client::new(&server.url);
    for store in ["unknown-store", "hoard.receipts", "hoard.trades", "hoard.idempotency"] {
        let (status, answer) = client.get(&format!("/v1/stores/{store}/keys"), GAME_SECRET).await;
        assert_eq!(status, 403, "{store}: {answer}");
        let body = json!({"body": {"grant": 1}});
        let (status, _) = client.post(&format!("/v1/stores/{store}/keys/x/messages"), GAME_SECRET, &body).await;
        assert_eq!(status, 403, "{store}");
    }
    let value: Value = json!(null);
    let _ = value;
}
