//! An operator's grant reaching a live engine session: a `hoard::engine::Engine` holds
//! `players/alice` on the same real store as a `hoard serve` (SQLite file, PostgreSQL schema);
//! the operator grants through `POST /v1/ops/.../grant` and retries it unchanged before the
//! session applies it, before it saves and after; the session's handler
//! (`hoard::liveops::grant::apply_grant_message`) applies it exactly once, the save stores it
//! once and acknowledges it, and the session keeps its key at the same holder and epoch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hoard::engine::trade::Holdings;
use hoard::engine::{Engine, EngineConfig, ProfileKind, ProfileSchema, SessionEvent, SessionStatus};
use hoard::liveops::grant::apply_grant_message;
use hoard::store::{DocId, Document, LeaseState, SharedStore, StoreName, get};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::http_liveops::{OPERATOR_SECRET, liveops_config};
use crate::local_backends::TestStore;
use crate::support::{Client, READ_SECRET, start_with};

/// How long the session may take to hear of the grant (a notification; SQLite polls for them).
const APPLY_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Player {
    holdings: Holdings,
    /// Grant ids in the order the handler applied them.
    #[serde(default)]
    grants: Vec<String>,
    #[serde(default)]
    level: u32,
}

/// The game's kind: operator grants go to the holdings, each application is counted.
fn players(applications: Arc<AtomicUsize>) -> ProfileKind<Player> {
    let schema = ProfileSchema::new(|| {
        let mut player = Player::default();
        player.holdings.currencies.insert("coins".into(), 0);
        player.holdings.items.insert("cursed-1".into(), json!({"curse": "slow"}));
        player
    });
    ProfileKind::new(StoreName::new("players").expect("name"), schema).on_message(
        move |player: &mut Player, message| {
            if let Ok(Some(applied)) = apply_grant_message(&mut player.holdings, message) {
                applications.fetch_add(1, Ordering::SeqCst);
                player.grants.push(applied.grant_id);
            }
        },
    )
}

fn alice() -> DocId {
    DocId::parse("players", "alice").expect("id")
}

fn stored(document: &Document) -> Player {
    let data = document.value.as_ref().and_then(|value| value.get("data")).cloned().expect("a saved profile");
    serde_json::from_value(data).expect("profile data")
}

/// The operator's request, sent unchanged every time (same grant id, same Idempotency-Key).
async fn send_grant(client: &Client) -> (u16, Value) {
    let body = json!({
        "grant_id": "refund-4711",
        "currencies": {"coins": 100},
        "items": {"sword-9": {"level": 3}},
        "take_items": ["cursed-1"],
        "reason": "ticket 4711",
    });
    client
        .send("POST", "/v1/ops/stores/players/keys/alice/grant", Some(OPERATOR_SECRET), Some(&body), Some("grant-4711"))
        .await
}

async fn wait_for_applied(events: &mut tokio::sync::broadcast::Receiver<SessionEvent>, seq: u64) {
    let waited = tokio::time::timeout(APPLY_WAIT, async {
        loop {
            match events.recv().await {
                Ok(SessionEvent::MessageApplied { seq: applied }) if applied == seq => return,
                Ok(_) => {}
                Err(error) => panic!("the session's events ended before the grant was applied: {error}"),
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "the live session did not apply inbox message {seq} within {APPLY_WAIT:?}");
}

async fn live_session_applies_an_operator_grant_exactly_once_and_keeps_its_key(store: SharedStore) {
    let server = start_with(store.clone(), liveops_config()).await;
    let client = Client::new(&server.url);
    let config = EngineConfig {
        server_label: "live-grant".into(),
        // Saves happen when the test says so.
        autosave_interval_ms: 600_000,
        ..EngineConfig::default()
    };
    let engine = Engine::open(store.clone(), config).await.expect("engine opens");
    let applications = Arc::new(AtomicUsize::new(0));
    let session = engine.start_session(&players(applications.clone()), "alice").await.expect("start");
    session.save_now().await.expect("first save");
    let held = LeaseState { holder: Some(session.holder().clone()), epoch: session.epoch() };
    let before = get(&*store, &alice()).await.expect("read");
    assert_eq!(before.lease, held, "the session holds alice");
    let mut events = session.events();

    let (status, sent) = send_grant(&client).await;
    assert_eq!((status, &sent["sent"]), (200, &json!(true)), "{sent}");
    let seq = sent["seq"].as_u64().expect("the inbox sequence number");
    // A retry at once, before the session has applied it: nothing is pushed again.
    let (status, again) = send_grant(&client).await;
    assert_eq!((status, &again["sent"]), (200, &json!(false)), "{again}");
    let pushed = get(&*store, &alice()).await.expect("read");
    assert_eq!(pushed.inbox.len(), 1, "one message for one grant id: {:?}", pushed.inbox);
    assert_eq!(
        (pushed.version, &pushed.lease),
        (before.version, &held),
        "the grant took neither a version nor the key"
    );

    wait_for_applied(&mut events, seq).await;
    assert_eq!(session.read(|p| p.holdings.currencies["coins"]), 100);
    // A retry while the change is only in memory, and a check of the inbox the message still
    // waits in (its acknowledgement goes out with the next save): nothing applies again.
    let (_, again) = send_grant(&client).await;
    assert_eq!(again["sent"], false, "{again}");
    assert_eq!(session.check_inbox().await.expect("check the inbox"), 0, "an applied message is not applied again");

    session.save_now().await.expect("save the grant");
    let saved = get(&*store, &alice()).await.expect("read");
    let player = stored(&saved);
    assert_eq!(player.holdings.currencies["coins"], 100, "+100 once, not twice");
    assert_eq!(player.holdings.items.keys().collect::<Vec<_>>(), vec!["sword-9"], "granted and taken, once");
    assert_eq!(player.grants, vec!["refund-4711".to_string()]);
    assert!(saved.inbox.is_empty(), "acknowledged in the save that holds it: {:?}", saved.inbox);
    assert_eq!(saved.lease, held, "the same holder at the same epoch");

    // A retry after the save and the acknowledgement: the grant id's record still refuses it.
    let (_, again) = send_grant(&client).await;
    assert_eq!(again["sent"], false, "{again}");
    assert_eq!(session.check_inbox().await.expect("check the inbox"), 0);
    assert!(get(&*store, &alice()).await.expect("read").inbox.is_empty(), "nothing new in the inbox");
    assert_eq!(applications.load(Ordering::SeqCst), 1, "the handler applied the grant exactly once");

    // The key was never taken: the session is active, still holds it and saves.
    assert_eq!(session.status(), SessionStatus::Active);
    assert!(session.still_holds().await.expect("read the lease"), "the session still holds alice");
    session.update(|p| p.level += 1).expect("a change after the grant");
    session.save_now().await.expect("a later save succeeds");
    let later = get(&*store, &alice()).await.expect("read");
    assert_eq!(later.lease, held);
    assert_eq!((stored(&later).holdings.currencies["coins"], stored(&later).level), (100, 1));
    let (_, audit) = client.get("/v1/ops/audit", READ_SECRET).await;
    let grants =
        audit["entries"].as_array().expect("entries").iter().filter(|e| e["entry"]["action"] == "grant").count();
    assert_eq!(grants, 1, "one grant sent, one audit entry: {audit}");

    session.end().await.expect("end");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_live_session_applies_an_operator_grant_exactly_once_and_keeps_its_key() {
    let opened: TestStore = crate::local_backends::sqlite(Default::default()).await;
    live_session_applies_an_operator_grant_exactly_once_and_keeps_its_key(opened.store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn postgres_live_session_applies_an_operator_grant_exactly_once_and_keeps_its_key() {
    let opened: TestStore = crate::local_backends::postgres(Default::default()).await;
    live_session_applies_an_operator_grant_exactly_once_and_keeps_its_key(opened.store.clone()).await;
}
