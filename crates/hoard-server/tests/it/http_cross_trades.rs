//! Cross-server trades over HTTP (issue 13, point 2): two game servers (each its own holder, on
//! its own `hoard serve` in front of one store) trade; each prepares its own party, the last
//! prepare decides, and the other learns of the decision through `sync` and settles. Retries move
//! nothing twice, a fenced-out token moves nothing, an abandoned trade aborts at its deadline and
//! bad input changes nothing. On memory, SQLite and PostgreSQL.

use std::time::Duration;

use hoard::store::SharedStore;
use serde_json::{Value, json};

use crate::support::{self, Client, GAME_SECRET, READ_SECRET, read_document, register_holder};

const ALICE: &str = "cross-alice";
const BOB: &str = "cross-bob";

/// A game server: its `hoard serve` (sharing the store) and its holder.
struct GameServer {
    _server: support::TestServer,
    client: Client,
    holder: String,
}

async fn game_server(store: &SharedStore, label: &str) -> GameServer {
    let server = support::start(store.clone()).await;
    let client = Client::new(&server.url);
    let holder = register_holder(&client, label).await;
    GameServer { _server: server, client, holder }
}

/// Starts `key` on this server with `value` saved; returns the token and version.
async fn player(server: &GameServer, key: &str, value: Value) -> (Value, u64) {
    let started = support::start_player(&server.client, &server.holder, key).await;
    let (status, saved) = support::save_value(&server.client, &started["token"], 0, value).await;
    assert_eq!(status, 200, "{saved}");
    (started["token"].clone(), saved["version"].as_u64().expect("version"))
}

fn holdings(gold: i64, items: Value) -> Value {
    json!({"name": "p", "bag": {"currencies": {"gold": gold}, "items": items}})
}

/// Alice gives `sword-1`, Bob gives 7 gold.
fn trade(id: &str, timeout_ms: u64) -> Value {
    json!({"id": id, "timeout_ms": timeout_ms,
        "parties": [{"store": "players", "key": ALICE}, {"store": "players", "key": BOB}],
        "legs": [{"from": 0, "to": 1, "items": ["sword-1"]}, {"from": 1, "to": 0, "currencies": {"gold": 7}}]})
}

async fn prepare(server: &GameServer, trade: &Value, token: &Value) -> (u16, Value) {
    let body = json!({"trade": trade, "token": token, "holdings_path": "/bag"});
    server.client.post("/v1/trades/cross/prepare", GAME_SECRET, &body).await
}

async fn settle(server: &GameServer, id: &str, token: &Value) -> (u16, Value) {
    let body = json!({"token": token, "holdings_path": "/bag"});
    server.client.post(&format!("/v1/trades/cross/{id}/settle"), GAME_SECRET, &body).await
}

async fn bag(client: &Client, key: &str) -> Value {
    read_document(client, "players", key).await["value"]["bag"].clone()
}

async fn escrow_gone(client: &Client, id: &str, leg: usize) -> bool {
    let (status, document) = client.get(&format!("/v1/stores/hoard.escrow/keys/{id}%2F{leg}"), READ_SECRET).await;
    status == 404 || document["value"].is_null()
}

/// The `hoard_trade` messages of `key` that a `sync` of this server delivers.
async fn decisions_in_sync(server: &GameServer, token: &Value, version: u64) -> Vec<Value> {
    let body = json!({"sessions": [{"token": token, "base_version": version}]});
    let (status, synced) = server.client.post(&format!("/v1/holders/{}/sync", server.holder), GAME_SECRET, &body).await;
    assert_eq!(status, 200, "{synced}");
    synced["sessions"][0]["inbox"]
        .as_array()
        .expect("inbox")
        .iter()
        .filter_map(|message| message["body"]["body"].get("hoard_trade").cloned())
        .collect()
}

async fn two_servers_trade_across_and_retries_move_nothing_twice(store: SharedStore) {
    let (a, b) = (game_server(&store, "a").await, game_server(&store, "b").await);
    let (alice, alice_v) = player(&a, ALICE, holdings(100, json!({"sword-1": {"dmg": 5}}))).await;
    let (bob, _) = player(&b, BOB, holdings(10, json!({}))).await;
    let t = trade("x-1", 30_000);

    let (status, first) = prepare(&a, &t, &alice).await;
    assert_eq!((status, first["outcome"].clone()), (200, json!("pending")), "{first}");
    assert_eq!(first["trade"]["prepared"], json!([0]));
    assert!(first["trade"]["deadline_ms"].as_i64().expect("deadline") > 0);
    assert_eq!(first["party"]["value"]["bag"]["items"], json!({}), "the sword is in escrow");
    assert_eq!(first["party"]["value"]["bag"]["pending_trades"]["x-1"], json!({"party": 0}));
    assert_eq!(first["party"]["value"]["name"], "p", "the rest of the value is kept");
    let (status, again) = prepare(&a, &t, &alice).await;
    assert_eq!((status, again["outcome"].clone(), again["settled"].clone()), (200, json!("pending"), json!(false)));
    assert_eq!(again["party"]["version"], first["party"]["version"], "a retried prepare moves nothing");
    assert!(!escrow_gone(&a.client, "x-1", 0).await, "alice's escrow is stored");

    let (status, decided) = prepare(&b, &t, &bob).await;
    assert_eq!(
        (status, decided["outcome"].clone(), decided["settled"].clone()),
        (200, json!("committed"), json!(true))
    );
    assert_eq!(decided["party"]["value"]["bag"]["items"]["sword-1"], json!({"dmg": 5}), "{decided}");
    assert_eq!(decided["party"]["value"]["bag"]["currencies"]["gold"], 3);
    assert!(decided["party"]["value"]["bag"].get("pending_trades").is_none());

    // Alice's server learns of it through sync, and settles.
    let version = first["party"]["version"].as_u64().expect("version");
    assert!(version > alice_v);
    let decisions = decisions_in_sync(&a, &alice, version).await;
    assert_eq!(decisions, vec![json!({"trade_id": "x-1", "status": "committed"})]);
    let (status, settled) = settle(&a, "x-1", &alice).await;
    assert_eq!(
        (status, settled["outcome"].clone(), settled["settled"].clone()),
        (200, json!("committed"), json!(true))
    );
    assert_eq!(settled["party"]["value"]["bag"]["currencies"]["gold"], 107);

    // Retries of every step answer the decision and move nothing.
    for (server, token) in [(&a, &alice), (&b, &bob)] {
        let (status, replay) = prepare(server, &t, token).await;
        assert_eq!(
            (status, replay["outcome"].clone(), replay["settled"].clone()),
            (200, json!("committed"), json!(false))
        );
        let (status, replay) = settle(server, "x-1", token).await;
        assert_eq!(
            (status, replay["outcome"].clone(), replay["settled"].clone()),
            (200, json!("committed"), json!(false))
        );
    }
    assert_eq!(bag(&a.client, ALICE).await, json!({"currencies": {"gold": 107}, "items": {}}));
    assert_eq!(bag(&a.client, BOB).await, json!({"currencies": {"gold": 3}, "items": {"sword-1": {"dmg": 5}}}));
    assert!(escrow_gone(&a.client, "x-1", 0).await && escrow_gone(&a.client, "x-1", 1).await, "escrows are gone");
    let (status, read) = a.client.get("/v1/trades/cross/x-1", GAME_SECRET).await;
    assert_eq!((status, read["trade"]["status"].clone()), (200, json!("committed")), "{read}");
    assert_eq!(read["trade"]["prepared"], json!([0, 1]));

    // The same id for another trade is refused.
    let mut other = t.clone();
    other["legs"] = json!([{"from": 1, "to": 0, "currencies": {"gold": 1}}]);
    let (status, reused) = prepare(&b, &other, &bob).await;
    assert_eq!((status, reused["error"].clone()), (409, json!("trade_id_reused")), "{reused}");
}

async fn a_fenced_out_token_can_neither_prepare_nor_settle(store: SharedStore) {
    let (a, b) = (game_server(&store, "a").await, game_server(&store, "b").await);
    let (alice, _) = player(&a, ALICE, holdings(100, json!({"sword-1": {"dmg": 5}}))).await;
    let (bob, _) = player(&b, BOB, holdings(10, json!({}))).await;
    let t = trade("x-fence", 30_000);
    let (status, pending) = prepare(&a, &t, &alice).await;
    assert_eq!((status, pending["outcome"].clone()), (200, json!("pending")), "{pending}");
    // Bob's key is taken by a third server: the old token is fenced out.
    let c = game_server(&store, "c").await;
    let body = json!({"store": "players", "key": BOB, "holder": c.holder, "policy": "steal_now"});
    let (status, stolen) = c.client.post("/v1/sessions/start", GAME_SECRET, &body).await;
    assert_eq!(status, 200, "{stolen}");
    let (status, refused) = prepare(&b, &t, &bob).await;
    assert_eq!((status, refused["error"].clone()), (409, json!("fenced_out")), "{refused}");
    assert_eq!(bag(&a.client, BOB).await, json!({"currencies": {"gold": 10}, "items": {}}), "nothing moved");
    // The new holder of Bob decides; Alice's key is then stolen too and her old token cannot settle.
    let (status, decided) = prepare(&c, &t, &stolen["token"]).await;
    assert_eq!((status, decided["outcome"].clone()), (200, json!("committed")), "{decided}");
    let body = json!({"store": "players", "key": ALICE, "holder": c.holder, "policy": "steal_now"});
    let (status, alice_now) = c.client.post("/v1/sessions/start", GAME_SECRET, &body).await;
    assert_eq!(status, 200, "{alice_now}");
    let (status, refused) = settle(&a, "x-fence", &alice).await;
    assert_eq!((status, refused["error"].clone()), (409, json!("fenced_out")), "{refused}");
    assert_eq!(bag(&a.client, ALICE).await["pending_trades"]["x-fence"], json!({"party": 0}), "still pending");
    // Whoever holds her now settles it (as a rejoin would).
    let (status, settled) = settle(&c, "x-fence", &alice_now["token"]).await;
    assert_eq!((status, settled["settled"].clone()), (200, json!(true)), "{settled}");
    assert_eq!(bag(&a.client, ALICE).await, json!({"currencies": {"gold": 107}, "items": {}}));
}

async fn an_abandoned_trade_aborts_at_its_deadline_and_the_giver_settles_back(store: SharedStore) {
    let (a, b) = (game_server(&store, "a").await, game_server(&store, "b").await);
    let (alice, _) = player(&a, ALICE, holdings(100, json!({"sword-1": {"dmg": 5}}))).await;
    let (bob, _) = player(&b, BOB, holdings(10, json!({}))).await;
    let t = trade("x-late", 1_000);
    let (status, pending) = prepare(&a, &t, &alice).await;
    assert_eq!((status, pending["outcome"].clone()), (200, json!("pending")), "{pending}");
    let (status, early) = settle(&a, "x-late", &alice).await;
    assert_eq!((status, early["outcome"].clone(), early["settled"].clone()), (200, json!("pending"), json!(false)));
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    // Bob's server comes too late: the store refuses its prepare, and the trade aborts.
    let (status, late) = prepare(&b, &t, &bob).await;
    assert_eq!((status, late["outcome"].clone()), (200, json!("aborted")), "{late}");
    assert_eq!(bag(&a.client, BOB).await, json!({"currencies": {"gold": 10}, "items": {}}), "bob gave nothing");
    let decisions = decisions_in_sync(&a, &alice, pending["party"]["version"].as_u64().expect("version")).await;
    assert_eq!(decisions, vec![json!({"trade_id": "x-late", "status": "aborted"})]);
    let (status, back) = settle(&a, "x-late", &alice).await;
    assert_eq!(
        (status, back["outcome"].clone(), back["settled"].clone()),
        (200, json!("aborted"), json!(true)),
        "{back}"
    );
    assert_eq!(bag(&a.client, ALICE).await, json!({"currencies": {"gold": 100}, "items": {"sword-1": {"dmg": 5}}}));
    assert!(escrow_gone(&a.client, "x-late", 0).await);
    let (_, read) = a.client.get("/v1/trades/cross/x-late", GAME_SECRET).await;
    assert_eq!(read["trade"]["status"], "aborted");

    // A party that declines aborts at once, and gets its escrow back in the same call.
    let t = trade("x-decline", 30_000);
    let (status, pending) = prepare(&a, &t, &alice).await;
    assert_eq!((status, pending["outcome"].clone()), (200, json!("pending")), "{pending}");
    let body = json!({"token": alice, "holdings_path": "/bag", "reason": "changed my mind"});
    let (status, aborted) = a.client.post("/v1/trades/cross/x-decline/abort", GAME_SECRET, &body).await;
    assert_eq!((status, aborted["outcome"].clone(), aborted["settled"].clone()), (200, json!("aborted"), json!(true)));
    let (status, late) = prepare(&b, &t, &bob).await;
    assert_eq!((status, late["outcome"].clone()), (200, json!("aborted")), "{late}");
    assert_eq!(bag(&a.client, ALICE).await["items"]["sword-1"], json!({"dmg": 5}));
    assert_eq!(bag(&a.client, BOB).await, json!({"currencies": {"gold": 10}, "items": {}}));

    // A party that cannot give aborts the trade, and the one that prepared settles back.
    let t = trade("x-short", 30_000);
    let (status, pending) = prepare(&a, &t, &alice).await;
    assert_eq!((status, pending["outcome"].clone()), (200, json!("pending")), "{pending}");
    let (_, bob_doc) = b.client.get(&format!("/v1/stores/players/keys/{BOB}"), READ_SECRET).await;
    let version = bob_doc["version"].as_u64().expect("version");
    let (status, _) = support::save_value(&b.client, &bob, version, holdings(2, json!({}))).await;
    assert_eq!(status, 200);
    let (status, short) = prepare(&b, &t, &bob).await;
    assert_eq!((status, short["error"].clone()), (409, json!("insufficient_balance")), "{short}");
    let (status, back) = settle(&a, "x-short", &alice).await;
    assert_eq!(
        (status, back["outcome"].clone(), back["settled"].clone()),
        (200, json!("aborted"), json!(true)),
        "{back}"
    );
    assert_eq!(bag(&a.client, ALICE).await["items"]["sword-1"], json!({"dmg": 5}));
}

async fn bad_input_gets_a_clear_4xx_and_changes_nothing(store: SharedStore) {
    let a = game_server(&store, "a").await;
    let (alice, version) = player(&a, ALICE, holdings(100, json!({"sword-1": {"dmg": 5}}))).await;
    let mut cases: Vec<(Value, u16, &str)> = Vec::new();
    let mut unknown = trade("x-bad", 30_000);
    unknown["parties"][0]["key"] = json!("somebody-else");
    cases.push((unknown, 422, "not_a_party"));
    cases.push((trade("x-bad", 10), 422, "invalid_trade"));
    cases.push((trade("x-bad", 3_600_000), 422, "invalid_trade"));
    let mut out_of_range = trade("x-bad", 30_000);
    out_of_range["legs"][0]["to"] = json!(5);
    cases.push((out_of_range, 422, "invalid_trade"));
    let mut malformed = trade("x-bad", 30_000);
    malformed["legs"] = json!("sword-1 for 7 gold");
    cases.push((malformed.clone(), 422, ""));
    let mut one = trade("x-bad", 30_000);
    one["parties"] = json!([{"store": "players", "key": ALICE}]);
    one["legs"] = json!([]);
    cases.push((one, 422, "invalid_trade"));
    let mut foreign = trade("x-bad", 30_000);
    foreign["parties"][1]["store"] = json!("other-game");
    cases.push((foreign, 403, ""));
    for (body, expected, code) in cases {
        let (status, refused) = prepare(&a, &body, &alice).await;
        assert!(status == expected || (code.is_empty() && (400..500).contains(&status)), "{body}: {status} {refused}");
        if !code.is_empty() {
            assert_eq!(refused["error"], code, "{body}");
        }
        assert!(refused["message"].as_str().is_some_and(|m| !m.is_empty()), "a clear message: {refused}");
    }
    let body = json!({"trade": trade("x-bad", 30_000), "token": alice, "holdings_path": "bag"});
    let (status, _) = a.client.post("/v1/trades/cross/prepare", GAME_SECRET, &body).await;
    assert_eq!(status, 400, "holdings_path must be a pointer");
    let body = json!({"trade": trade("x-bad", 30_000), "token": alice, "value": holdings(1, json!({}))});
    let (status, _) = a.client.post("/v1/trades/cross/prepare", GAME_SECRET, &body).await;
    assert_eq!(status, 400, "a value needs its base_version");
    let body = json!({"trade": trade("x-bad", 30_000), "token": alice, "value": holdings(1, json!({})),
        "base_version": version - 1, "holdings_path": "/bag"});
    let (status, stale) = a.client.post("/v1/trades/cross/prepare", GAME_SECRET, &body).await;
    assert_eq!((status, stale["error"].clone()), (409, json!("stale")), "{stale}");
    let (status, _) = settle(&a, "x-none", &alice).await;
    assert_eq!(status, 404, "settling an unknown trade");
    let document = read_document(&a.client, "players", ALICE).await;
    assert_eq!(document["version"].as_u64(), Some(version), "nothing changed");
    let (status, _) = a.client.get("/v1/trades/cross/x-bad", GAME_SECRET).await;
    assert_eq!(status, 404, "no record was written");
}

macro_rules! on_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                let opened = crate::local_backends::memory(Default::default()).await;
                super::$name(opened.store.clone()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let opened = crate::local_backends::sqlite(Default::default()).await;
                super::$name(opened.store.clone()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                hoard_postgres_tests_skipped,
                ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)"
            )]
            async fn postgres() {
                let opened = crate::local_backends::postgres(Default::default()).await;
                super::$name(opened.store.clone()).await;
            }
        }
    };
}

on_backends!(two_servers_trade_across_and_retries_move_nothing_twice);
on_backends!(a_fenced_out_token_can_neither_prepare_nor_settle);
on_backends!(an_abandoned_trade_aborts_at_its_deadline_and_the_giver_settles_back);
on_backends!(bad_input_gets_a_clear_4xx_and_changes_nothing);

/// An engine's profile that trades: the holdings at `/data/holdings` of the stored value.
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

fn engine_config(label: &str) -> hoard::engine::EngineConfig {
    hoard::engine::EngineConfig {
        server_label: label.to_string(),
        lease_ttl_ms: 1_000,
        lease_renew_interval_ms: 200,
        lease_safety_margin_ms: 100,
        autosave_interval_ms: 60_000,
        retry_backoff_initial_ms: 5,
        retry_backoff_max_ms: 50,
        ..hoard::engine::EngineConfig::default()
    }
}

/// One party held by an engine (`Engine::trade_across`), the other over HTTP, on one store:
/// the engine prepares and the HTTP party decides (the engine settles on the decision message),
/// then the HTTP party prepares and the engine decides (the HTTP party learns it through `sync`).
async fn an_engine_party_and_an_http_party_share_one_trade(store: SharedStore) {
    use hoard::engine::{CrossOutcome, CrossTrade, Engine, ProfileKind, ProfileSchema, TradeLeg};
    use hoard::store::{DocId, StoreName};

    let engine = Engine::open(store.clone(), engine_config("mixed")).await.expect("open the engine");
    let kind: ProfileKind<Trader> =
        ProfileKind::new(StoreName::new("players").expect("name"), ProfileSchema::new(Trader::default)).tradable();
    let alice = engine.start_session(&kind, ALICE).await.expect("start alice on the engine");
    alice
        .update(|t| {
            t.holdings.currencies.insert("gold".into(), 100);
            t.holdings.items.insert("sword-1".into(), json!({"dmg": 5}));
        })
        .expect("seed");
    alice.save_now().await.expect("save");
    let b = game_server(&store, "b").await;
    let (bob, _) = player(&b, BOB, holdings(10, json!({}))).await;
    let ids = || vec![DocId::parse("players", ALICE).expect("id"), DocId::parse("players", BOB).expect("id")];

    // The engine prepares, the HTTP party decides; the engine settles by itself.
    let mut events = alice.events();
    let first = CrossTrade {
        id: "x-mixed-1".into(),
        parties: ids(),
        legs: vec![
            TradeLeg { from: 0, to: 1, items: vec!["sword-1".into()], currencies: Default::default() },
            TradeLeg { from: 1, to: 0, items: vec![], currencies: [("gold".to_string(), 7)].into() },
        ],
        timeout_ms: 30_000,
    };
    let outcome = engine.trade_across(&alice, &first).await.expect("the engine prepares");
    assert!(matches!(outcome, CrossOutcome::Pending(_)), "{outcome:?}");
    let (status, decided) = prepare(&b, &trade("x-mixed-1", 30_000), &bob).await;
    assert_eq!(
        (status, decided["outcome"].clone(), decided["settled"].clone()),
        (200, json!("committed"), json!(true)),
        "{decided}"
    );
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(hoard::engine::SessionEvent::TradeSettled { trade_id, committed: true }) = events.recv().await
                && trade_id == "x-mixed-1"
            {
                return;
            }
        }
    })
    .await
    .expect("the engine settles alice on the decision message");
    assert_eq!(alice.read(|t| t.holdings.currencies["gold"]), 107);
    assert!(alice.read(|t| t.holdings.pending_trades.is_empty() && t.holdings.items.is_empty()));
    assert_eq!(bag(&b.client, BOB).await, json!({"currencies": {"gold": 3}, "items": {"sword-1": {"dmg": 5}}}));

    // The HTTP party prepares, the engine decides; the HTTP party learns it through sync.
    let back = json!({"id": "x-mixed-2", "timeout_ms": 30_000,
        "parties": [{"store": "players", "key": ALICE}, {"store": "players", "key": BOB}],
        "legs": [{"from": 1, "to": 0, "items": ["sword-1"]}, {"from": 0, "to": 1, "currencies": {"gold": 50}}]});
    let (status, pending) = prepare(&b, &back, &bob).await;
    assert_eq!((status, pending["outcome"].clone()), (200, json!("pending")), "{pending}");
    let second = CrossTrade {
        id: "x-mixed-2".into(),
        parties: ids(),
        legs: vec![
            TradeLeg { from: 1, to: 0, items: vec!["sword-1".into()], currencies: Default::default() },
            TradeLeg { from: 0, to: 1, items: vec![], currencies: [("gold".to_string(), 50)].into() },
        ],
        timeout_ms: 30_000,
    };
    let outcome = engine.trade_across(&alice, &second).await.expect("the engine decides");
    assert!(matches!(outcome, CrossOutcome::Committed(_)), "{outcome:?}");
    assert_eq!(alice.read(|t| t.holdings.currencies["gold"]), 57);
    assert!(alice.read(|t| t.holdings.items.contains_key("sword-1")));
    let decisions = decisions_in_sync(&b, &bob, pending["party"]["version"].as_u64().expect("version")).await;
    assert_eq!(decisions, vec![json!({"trade_id": "x-mixed-2", "status": "committed"})]);
    let (status, settled) = settle(&b, "x-mixed-2", &bob).await;
    assert_eq!((status, settled["settled"].clone()), (200, json!(true)), "{settled}");
    assert_eq!(bag(&b.client, BOB).await, json!({"currencies": {"gold": 53}, "items": {}}));
    for (id, leg) in [("x-mixed-1", 0), ("x-mixed-1", 1), ("x-mixed-2", 0), ("x-mixed-2", 1)] {
        assert!(escrow_gone(&b.client, id, leg).await, "escrow {id}/{leg} is gone");
    }
    let stored = read_document(&b.client, "players", ALICE).await;
    assert_eq!(stored["value"]["data"]["holdings"]["currencies"]["gold"], 57, "{stored}");
    engine.shutdown(Duration::from_secs(5)).await;
}

on_backends!(an_engine_party_and_an_http_party_share_one_trade);
