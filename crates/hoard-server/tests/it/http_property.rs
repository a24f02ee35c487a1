//! The HTTP path's property test (issue 11): honest game servers that keep hoard's client rules
//! (base every write on the last version adopted, adopt and rebase every returned value, one
//! queue per key, retry unchanged) run random interleavings of play, save, trade, receipt and
//! end-and-restart against a real `hoard serve` on memory, SQLite and PostgreSQL, while the
//! network delays requests, duplicates them (a duplicate may arrive long after its original) and
//! loses answers (the request applied; the client retries it unchanged). Afterwards:
//! - conservation: every item is held by exactly one player, and the gold is the starting gold
//!   plus the grants that were made;
//! - exactly-once grants: every purchase granted (or answered already granted) left exactly one
//!   grant, none left two;
//! - no lost write: every player's stored profile is the client's own, play included (xp), after
//!   every adoption, rebase and restart.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use crate::support::{Client, GAME_SECRET, register_holder};

const PLAYERS: usize = 6;
const OPS_PER_PLAYER: usize = 40;
const SEEDS_PER_BACKEND: u64 = 3;
const STARTING_GOLD: i64 = 100;
const GRANT_GOLD: i64 = 10;
/// A request is sent at most this many times when its answers are lost (the last answer counts).
const SEND_ATTEMPTS_MAX: usize = 3;
const DUPLICATE_DELAY_MS_MAX: u64 = 40;

fn is_number(value: &Value) -> bool {
    value.is_number()
}

/// The game's changes from `sent` to `now`, applied onto `new` (README, client rule 2).
fn rebase(new: &Value, sent: &Value, now: &Value) -> Value {
    if now == sent {
        return new.clone();
    }
    if is_number(sent) && is_number(now) && is_number(new) {
        let (Some(new), Some(sent), Some(now)) = (new.as_i64(), sent.as_i64(), now.as_i64()) else {
            return now.clone();
        };
        return json!(new + (now - sent));
    }
    if let (Value::Object(sent), Value::Object(now), Value::Object(new)) = (sent, now, new) {
        let mut merged = new.clone();
        for key in sent.keys().chain(now.keys()) {
            match (sent.get(key), now.get(key)) {
                (Some(_), None) => {
                    merged.remove(key);
                }
                (None, Some(added)) => {
                    merged.insert(key.clone(), added.clone());
                }
                (Some(before), Some(after)) => match new.get(key) {
                    Some(answered) => {
                        merged.insert(key.clone(), rebase(answered, before, after));
                    }
                    None if before != after => {
                        merged.insert(key.clone(), after.clone());
                    }
                    None => {}
                },
                (None, None) => {}
            }
        }
        return Value::Object(merged);
    }
    now.clone()
}

/// One player's session as its game server keeps it.
#[derive(Clone, Debug)]
struct Session {
    token: Value,
    version: u64,
    saved: Value,
    data: Value,
}

impl Session {
    /// Adopts a returned value at `version` for a request based on `sent`.
    fn adopt(&mut self, value: &Value, version: u64, sent: &Value) {
        if version <= self.version {
            return;
        }
        self.data = rebase(value, sent, &self.data);
        self.saved = value.clone();
        self.version = version;
    }
}

struct Player {
    key: String,
    /// The key's request queue: one request touching the key in flight at a time.
    queue: tokio::sync::Mutex<()>,
    session: Mutex<Session>,
}

impl Player {
    fn session(&self) -> Session {
        self.session.lock().expect("session lock").clone()
    }

    fn with<T>(&self, change: impl FnOnce(&mut Session) -> T) -> T {
        change(&mut self.session.lock().expect("session lock"))
    }
}

/// What the world observed, for the final checks.
#[derive(Default)]
struct Ledger {
    /// Purchase id → player key, for every purchase answered granted or already granted.
    acknowledged: BTreeMap<String, String>,
    /// Every purchase id sent, with its player.
    sent: BTreeMap<String, String>,
    stale_answers: u64,
    requests: u64,
}

struct World {
    client: Client,
    holders: Vec<String>,
    players: Vec<Player>,
    ledger: Mutex<Ledger>,
    duplicates: Mutex<tokio::task::JoinSet<()>>,
    seed: u64,
}

impl World {
    /// Sends a request over a network that delays, duplicates and loses answers: a lost answer
    /// is retried unchanged (client rule 4); a duplicate goes out later, and its answer is lost.
    async fn deliver(
        &self,
        rng: &mut ChaCha8Rng,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> (u16, Value) {
        if rng.random_bool(0.25) {
            let (client, path, body) = (self.client.clone(), path.to_string(), body.clone());
            let key = idempotency_key.map(str::to_string);
            let delay_ms = rng.random_range(0..=DUPLICATE_DELAY_MS_MAX);
            self.duplicates.lock().expect("duplicates").spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                let _ = client.send("POST", &path, Some(GAME_SECRET), Some(&body), key.as_deref()).await;
            });
        }
        for attempt in 0..SEND_ATTEMPTS_MAX {
            if rng.random_bool(0.2) {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..5))).await;
            }
            self.ledger.lock().expect("ledger").requests += 1;
            let answer = self.client.send("POST", path, Some(GAME_SECRET), Some(body), idempotency_key).await;
            let lost = attempt + 1 < SEND_ATTEMPTS_MAX && rng.random_bool(0.15);
            if !lost {
                return answer;
            }
        }
        unreachable!("the last attempt returns")
    }

    fn note_stale(&self, answer: &Value, player: &Player) {
        self.ledger.lock().expect("ledger").stale_answers += 1;
        let current = &answer["current"];
        assert_eq!(current["key"], player.key.as_str(), "seed {}: a stale answer names the key", self.seed);
        let version = current["version"].as_u64().expect("version");
        player.with(|s| {
            let saved = s.saved.clone();
            s.adopt(&current["value"], version, &saved);
        });
    }

    async fn save(&self, rng: &mut ChaCha8Rng, index: usize) {
        let player = &self.players[index];
        let _queue = player.queue.lock().await;
        let session = player.session();
        let sent = session.data.clone();
        let body = json!({"token": session.token, "base_version": session.version, "value": sent});
        let (status, answer) = self.deliver(rng, "/v1/sessions/save", &body, None).await;
        match (status, answer["error"].as_str()) {
            (200, _) => player.with(|s| {
                s.version = answer["version"].as_u64().expect("version");
                s.saved = sent;
            }),
            (409, Some("stale")) => self.note_stale(&answer, player),
            _ => panic!("seed {}: save of {}: {status} {answer}", self.seed, player.key),
        }
    }

    async fn trade(&self, rng: &mut ChaCha8Rng, index: usize, trade_number: usize) {
        let other = (index + rng.random_range(1..PLAYERS)) % PLAYERS;
        let (first, second) = (index.min(other), index.max(other));
        let _first = self.players[first].queue.lock().await;
        let _second = self.players[second].queue.lock().await;
        let (giver, taker) = (&self.players[index], &self.players[other]);
        let (giver_session, taker_session) = (giver.session(), taker.session());
        let held: Vec<String> =
            giver_session.data["items"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        let gold = giver_session.data["currencies"]["gold"].as_i64().expect("gold");
        let leg = if !held.is_empty() && rng.random_bool(0.6) {
            json!({"from": 0, "to": 1, "items": [held[rng.random_range(0..held.len())]]})
        } else {
            // Now and then more than the giver has: refused, nothing moves.
            json!({"from": 0, "to": 1, "currencies": {"gold": rng.random_range(1..=gold.max(1) + 5)}})
        };
        let with_states = rng.random_bool(0.7);
        let sent: Vec<Value> = if with_states {
            vec![giver_session.data.clone(), taker_session.data.clone()]
        } else {
            vec![giver_session.saved.clone(), taker_session.saved.clone()]
        };
        let mut body = json!({"trade_id": format!("t-{}-{index}-{trade_number}", self.seed),
            "parties": [giver_session.token, taker_session.token], "legs": [leg]});
        if with_states {
            body["party_states"] = json!([
                {"value": sent[0], "base_version": giver_session.version},
                {"value": sent[1], "base_version": taker_session.version},
            ]);
        }
        let (status, answer) = self.deliver(rng, "/v1/trades", &body, None).await;
        match (status, answer["error"].as_str()) {
            (200, _) => {
                for (party, (player, sent)) in
                    answer["parties"].as_array().expect("parties").iter().zip([(giver, &sent[0]), (taker, &sent[1])])
                {
                    let version = party["version"].as_u64().expect("version");
                    player.with(|s| s.adopt(&party["value"], version, sent));
                }
            }
            (409, Some("insufficient_balance")) => {}
            (409, Some("stale")) => {
                let named = if answer["current"]["key"] == giver.key.as_str() { giver } else { taker };
                self.note_stale(&answer, named);
            }
            _ => panic!("seed {}: trade {body}: {status} {answer}", self.seed),
        }
    }

    async fn receipt(&self, rng: &mut ChaCha8Rng, index: usize, purchase_number: usize) {
        let player = &self.players[index];
        let _queue = player.queue.lock().await;
        let earlier: Vec<String> = {
            let ledger = self.ledger.lock().expect("ledger");
            ledger.sent.iter().filter(|(_, key)| **key == player.key).map(|(id, _)| id.clone()).collect()
        };
        // Now and then the platform delivers an earlier purchase again (after a hop, say).
        let purchase_id = if !earlier.is_empty() && rng.random_bool(0.25) {
            earlier[rng.random_range(0..earlier.len())].clone()
        } else {
            format!("p-{}-{index}-{purchase_number}", self.seed)
        };
        self.ledger.lock().expect("ledger").sent.insert(purchase_id.clone(), player.key.clone());
        let session = player.session();
        let with_value = rng.random_bool(0.7);
        let sent = if with_value { session.data.clone() } else { session.saved.clone() };
        let mut body = json!({"token": session.token, "purchase_id": purchase_id,
            "payload": {"player": player.key, "pack": "gold"},
            "grant": [{"op": "increment", "path": "/currencies/gold", "by": GRANT_GOLD},
                      {"op": "add_item", "path": "/items", "id": format!("grant-{purchase_id}"), "value": {}}]});
        if with_value {
            body["value"] = sent.clone();
            body["base_version"] = json!(session.version);
        }
        let (status, answer) = self.deliver(rng, "/v1/receipts", &body, None).await;
        match (status, answer["error"].as_str()) {
            (200, _) => {
                assert!(matches!(answer["outcome"].as_str(), Some("granted" | "already_granted")), "{answer}");
                self.ledger.lock().expect("ledger").acknowledged.insert(purchase_id, player.key.clone());
                let party = &answer["party"];
                let version = party["version"].as_u64().expect("version");
                player.with(|s| s.adopt(&party["value"], version, &sent));
            }
            (409, Some("stale")) => self.note_stale(&answer, player),
            _ => panic!("seed {}: receipt {body}: {status} {answer}", self.seed),
        }
    }

    /// Ends the session with its final value and starts it again on a random holder: the start
    /// must see exactly what the end wrote.
    async fn hop(&self, rng: &mut ChaCha8Rng, index: usize) {
        let player = &self.players[index];
        let _queue = player.queue.lock().await;
        let final_value = self.end(rng, index).await;
        let holder = &self.holders[rng.random_range(0..self.holders.len())];
        let start = json!({"store": "players", "key": player.key, "holder": holder, "policy": "fail_fast"});
        let (status, started) = self.client.post("/v1/sessions/start", GAME_SECRET, &start).await;
        assert_eq!(status, 200, "seed {}: restart of {}: {started}", self.seed, player.key);
        assert_eq!(
            started["value"], final_value,
            "seed {}: the start sees the final save of {}",
            self.seed, player.key
        );
        player.with(|s| {
            *s = Session {
                token: started["token"].clone(),
                version: started["version"].as_u64().expect("version"),
                saved: started["value"].clone(),
                data: started["value"].clone(),
            }
        });
    }

    /// Ends a session (the caller holds its queue); returns the value stored.
    async fn end(&self, rng: &mut ChaCha8Rng, index: usize) -> Value {
        let player = &self.players[index];
        loop {
            let session = player.session();
            let body = json!({"token": session.token, "base_version": session.version, "value": session.data});
            let (status, answer) = self.deliver(rng, "/v1/sessions/end", &body, None).await;
            match (status, answer["error"].as_str()) {
                (200, _) => return session.data,
                (409, Some("stale")) => self.note_stale(&answer, player),
                _ => panic!("seed {}: end of {}: {status} {answer}", self.seed, player.key),
            }
        }
    }
}

async fn actor(world: Arc<World>, index: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(world.seed * 1_000 + index as u64);
    for op in 0..OPS_PER_PLAYER {
        // Play happens in memory at any time, also while this player's requests are in flight.
        world.players[index].with(|s| {
            let xp = s.data["xp"].as_i64().expect("xp");
            s.data["xp"] = json!(xp + 1);
        });
        match rng.random_range(0..10) {
            0..=2 => world.save(&mut rng, index).await,
            3..=5 => world.trade(&mut rng, index, op).await,
            6..=7 => world.receipt(&mut rng, index, op).await,
            _ => world.hop(&mut rng, index).await,
        }
        if rng.random_bool(0.3) {
            tokio::task::yield_now().await;
        }
    }
}

async fn run_world(store: hoard::store::SharedStore, seed: u64) {
    let server = crate::support::start(store).await;
    let client = Client::new(&server.url);
    let holders = vec![register_holder(&client, "gs-a").await, register_holder(&client, "gs-b").await];
    let mut players = Vec::new();
    for index in 0..PLAYERS {
        let key = format!("p{index}");
        let start = json!({"store": "players", "key": key, "holder": holders[index % 2], "policy": "fail_fast"});
        let (status, started) = client.post("/v1/sessions/start", GAME_SECRET, &start).await;
        assert_eq!(status, 200, "{started}");
        let value = json!({"currencies": {"gold": STARTING_GOLD}, "xp": 0,
            "items": {format!("sword-{index}"): {}, format!("shield-{index}"): {}}});
        let body = json!({"token": started["token"], "base_version": 0, "value": value});
        let (status, saved) = client.post("/v1/sessions/save", GAME_SECRET, &body).await;
        assert_eq!(status, 200, "{saved}");
        let session = Session { token: started["token"].clone(), version: 1, saved: value.clone(), data: value };
        players.push(Player { key, queue: tokio::sync::Mutex::new(()), session: Mutex::new(session) });
    }
    let world = Arc::new(World {
        client: client.clone(),
        holders: holders.clone(),
        players,
        ledger: Mutex::new(Ledger::default()),
        duplicates: Mutex::new(tokio::task::JoinSet::new()),
        seed,
    });
    let renewer = {
        let (client, holders) = (client.clone(), holders.clone());
        tokio::spawn(async move {
            loop {
                for holder in &holders {
                    let _ = client.post(&format!("/v1/holders/{holder}/renew"), GAME_SECRET, &json!({})).await;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    let actors: Vec<_> = (0..PLAYERS).map(|index| tokio::spawn(actor(world.clone(), index))).collect();
    for actor in actors {
        actor.await.expect("an actor panicked");
    }
    // Every duplicate arrives before the end, so a late one has its chance to do harm.
    let mut duplicates = std::mem::take(&mut *world.duplicates.lock().expect("duplicates"));
    while duplicates.join_next().await.is_some() {}
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for index in 0..PLAYERS {
        let _queue = world.players[index].queue.lock().await;
        world.end(&mut rng, index).await;
    }
    renewer.abort();

    let mut item_holders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut total_gold = 0;
    for player in &world.players {
        let (status, document) =
            client.get(&format!("/v1/stores/players/keys/{}", player.key), crate::support::READ_SECRET).await;
        assert_eq!(status, 200, "{document}");
        let value = &document["value"];
        assert_eq!(value, &player.session().data, "seed {seed}: {} stored exactly the client's profile", player.key);
        let gold = value["currencies"]["gold"].as_i64().expect("gold");
        assert!(gold >= 0, "seed {seed}: {} has {gold} gold", player.key);
        total_gold += gold;
        for item in value["items"].as_object().expect("items").keys() {
            item_holders.entry(item.clone()).or_default().push(player.key.clone());
        }
    }
    for (item, holders) in &item_holders {
        assert_eq!(holders.len(), 1, "seed {seed}: item {item} is held by {holders:?}");
    }
    for index in 0..PLAYERS {
        for item in [format!("sword-{index}"), format!("shield-{index}")] {
            assert!(item_holders.contains_key(&item), "seed {seed}: item {item} was lost");
        }
    }
    let ledger = world.ledger.lock().expect("ledger");
    let grants: Vec<&String> = item_holders.keys().filter(|item| item.starts_with("grant-")).collect();
    for purchase_id in ledger.acknowledged.keys() {
        let item = format!("grant-{purchase_id}");
        assert!(item_holders.contains_key(&item), "seed {seed}: acknowledged purchase {purchase_id} was not granted");
    }
    for item in &grants {
        let purchase_id = item.trim_start_matches("grant-");
        assert!(ledger.sent.contains_key(purchase_id), "seed {seed}: {item} granted without a purchase");
    }
    let granted_gold = i64::try_from(grants.len()).expect("count") * GRANT_GOLD;
    assert_eq!(total_gold, STARTING_GOLD * PLAYERS as i64 + granted_gold, "seed {seed}: gold is conserved");
    assert!(ledger.requests > (PLAYERS * OPS_PER_PLAYER) as u64, "the world ran");
    assert!(!ledger.acknowledged.is_empty(), "seed {seed}: purchases were made");
}

async fn run_seeds(open: impl AsyncFn() -> crate::local_backends::TestStore) {
    for seed in 1..=SEEDS_PER_BACKEND {
        let opened = open().await;
        run_world(opened.store.clone(), seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_random_saves_trades_receipts_and_hops_over_a_lossy_network_conserve_value_and_grant_once() {
    run_seeds(async || crate::local_backends::memory(Default::default()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_random_saves_trades_receipts_and_hops_over_a_lossy_network_conserve_value_and_grant_once() {
    run_seeds(async || crate::local_backends::sqlite(Default::default()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn postgres_random_saves_trades_receipts_and_hops_over_a_lossy_network_conserve_value_and_grant_once() {
    run_seeds(async || crate::local_backends::postgres(Default::default()).await).await;
}
