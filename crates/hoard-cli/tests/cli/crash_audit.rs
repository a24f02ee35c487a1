//! The crash rounds' audit (`crash_rounds`): what the clients' journals say hoard acknowledged,
//! checked against what the database holds after the last kill.
//!
//! `read_stored` reads the database through the library's store API (every player's current
//! value and every version, the receipt and trade records); `audit` is a pure function of that
//! and the journals, so the controls below can feed it a broken database and see it caught.
//! The checks:
//! - conservation: every seeded item is held by exactly one player and nothing else is held; the
//!   gold of all players is the seeded gold plus the gold of every receipt record; no balance is
//!   negative;
//! - exactly-once purchases: every acknowledged purchase has its record, naming its buyer; every
//!   record's purchase is marked in its buyer's profile and nowhere else, and every mark has its
//!   record (with the gold sum, a grant applied twice or without a record shows);
//! - no acknowledged loss: every (key, version, value) hoard answered (start, save, end, grant,
//!   each party of a trade) is that key's stored version, and every acknowledged trade has its
//!   record;
//! - no stale overwrite: each key's versions run 1..=current without a hole and its xp (which
//!   honest play only raises) never goes down from one version to the next;
//! - no anomaly: no client was refused what an honest client must never be refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use hoard::store::{DocId, ListQuery, Store, StoreName, get};
use serde_json::Value;

pub const PLAYERS_STORE: &str = "players";
const RECEIPTS_STORE: &str = "hoard.receipts";
const TRADES_STORE: &str = "hoard.trades";

/// What the database holds, as the audit needs it.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    /// Every player's current version and value.
    pub players: BTreeMap<String, (u64, Option<Value>)>,
    /// Every version of every player: (key, version) → value (`None`: a deletion).
    pub versions: BTreeMap<(String, u64), Option<Value>>,
    /// Receipt records of the players store: purchase id → (buyer key, gold of the payload).
    pub receipts: BTreeMap<String, (String, i64)>,
    /// Trade ids recorded for the players store.
    pub trades: BTreeSet<String>,
}

/// What the rounds started from.
#[derive(Clone, Debug, Default)]
pub struct Seeded {
    pub items: BTreeSet<String>,
    pub gold_total: i64,
}

/// The audit's findings and the figures of a run.
#[derive(Clone, Debug, Default)]
pub struct Audit {
    /// Operations the clients sent (`attempt` lines).
    pub operations: usize,
    /// Acknowledged outcomes, by kind.
    pub acknowledged: BTreeMap<String, usize>,
    /// Operations whose outcome stayed unknown past the client's deadline, sessions fenced out
    /// or stolen, holders lost: counted, never violations.
    pub gave_up: usize,
    pub fenced: usize,
    /// Requests refused while a server was down, and requests reset or cut mid-answer by a
    /// kill (outcome unknown); each retried unchanged.
    pub refused: usize,
    pub cut: usize,
    /// Acknowledgements that answered a retry or a redelivery as the first time (`replayed`
    /// saves, `already_committed` trades, `already_granted` purchases).
    pub replays: usize,
    pub violations: Vec<String>,
}

impl Audit {
    pub fn acknowledged_total(&self) -> usize {
        self.acknowledged.values().sum()
    }
}

/// Every complete line of every journal in `folder` (`journal-*.jsonl`). A line cut by a kill was
/// never fsynced whole, so nothing was acknowledged on it.
pub fn read_journals(folder: &Path) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(folder)
        .expect("the run folder")
        .map(|entry| entry.expect("a folder entry").path())
        .filter(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("journal-")))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("a journal");
        entries.extend(text.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()));
    }
    entries
}

fn doc_id(store: &str, key: &str) -> DocId {
    DocId::parse(store, key).expect("a valid key")
}

/// Every key of `store` that starts with `prefix`.
async fn keys_of(store: &dyn Store, name: &str, prefix: &str) -> Vec<String> {
    let name = StoreName::new(name).expect("a store name");
    let mut keys = Vec::new();
    let mut after = None;
    loop {
        let query = ListQuery { prefix: prefix.to_string(), after, limit: 0 };
        let page = store.list_keys(&name, &query).await.expect("list keys");
        keys.extend(page.keys.iter().map(ToString::to_string));
        match page.next_after {
            Some(next) => after = Some(next),
            None => return keys,
        }
    }
}

/// Reads what the audit needs from the store.
pub async fn read_stored(store: &dyn Store, players: &[String]) -> Stored {
    let mut stored = Stored::default();
    for key in players {
        let id = doc_id(PLAYERS_STORE, key);
        let document = get(store, &id).await.expect("read a player");
        for version in 1..=document.version {
            let value = if version == document.version {
                document.value.clone()
            } else {
                store.get_version(&id, version).await.expect("read a version").and_then(|record| record.value)
            };
            stored.versions.insert((key.clone(), version), value);
        }
        stored.players.insert(key.clone(), (document.version, document.value));
    }
    let prefix = format!("{PLAYERS_STORE}/");
    for key in keys_of(store, RECEIPTS_STORE, &prefix).await {
        let record = get(store, &doc_id(RECEIPTS_STORE, &key)).await.expect("read a receipt record");
        let value = record.value.unwrap_or(Value::Null);
        let buyer = value["player"]["key"].as_str().unwrap_or_default().to_string();
        let gold = value["payload"]["gold"].as_i64().unwrap_or_default();
        stored.receipts.insert(key[prefix.len()..].to_string(), (buyer, gold));
    }
    for key in keys_of(store, TRADES_STORE, &prefix).await {
        stored.trades.insert(key[prefix.len()..].to_string());
    }
    stored
}

fn check_acknowledged(stored: &Stored, what: &str, key: &str, version: u64, value: &Value, audit: &mut Audit) {
    match stored.versions.get(&(key.to_string(), version)) {
        Some(Some(found)) if found == value => {}
        Some(found) => audit
            .violations
            .push(format!("{what}: {key} v{version} was acknowledged as {value} but the store holds {found:?}")),
        None => audit.violations.push(format!("{what}: {key} v{version} was acknowledged but is not in the store")),
    }
}

fn check_conservation(stored: &Stored, seeded: &Seeded, audit: &mut Audit) {
    let mut holders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut gold_total = 0;
    for (key, (_, value)) in &stored.players {
        let Some(value) = value else {
            audit.violations.push(format!("conservation: {key} has no value"));
            continue;
        };
        for item in value["items"].as_object().into_iter().flat_map(|items| items.keys()) {
            holders.entry(item.clone()).or_default().push(key.clone());
        }
        let gold = value["currencies"]["gold"].as_i64().unwrap_or(i64::MIN);
        if gold < 0 {
            audit.violations.push(format!("conservation: {key} holds {gold} gold"));
        } else {
            gold_total += gold;
        }
    }
    for item in &seeded.items {
        match holders.get(item).map(Vec::as_slice) {
            Some([_]) => {}
            Some(many) => audit.violations.push(format!("conservation: item {item} is held by {many:?}")),
            None => audit.violations.push(format!("conservation: item {item} is held by nobody")),
        }
    }
    for (item, keys) in &holders {
        if !seeded.items.contains(item) {
            audit.violations.push(format!("conservation: item {item}, never seeded, is held by {keys:?}"));
        }
    }
    let granted: i64 = stored.receipts.values().map(|(_, gold)| gold).sum();
    if gold_total != seeded.gold_total + granted {
        audit.violations.push(format!(
            "conservation: players hold {gold_total} gold, but {} were seeded and receipt records grant {granted}",
            seeded.gold_total
        ));
    }
}

fn check_purchases(stored: &Stored, audit: &mut Audit) {
    let mut marked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, (_, value)) in &stored.players {
        let purchases = value.as_ref().and_then(|value| value["purchases"].as_object());
        for purchase in purchases.into_iter().flat_map(|purchases| purchases.keys()) {
            marked.entry(purchase.clone()).or_default().push(key.clone());
        }
    }
    for (purchase, (buyer, _)) in &stored.receipts {
        match marked.get(purchase).map(Vec::as_slice) {
            Some([holder]) if holder == buyer => {}
            found => audit.violations.push(format!(
                "exactly once: purchase {purchase} of {buyer} is marked in {found:?}, not once in its buyer"
            )),
        }
    }
    for (purchase, keys) in &marked {
        if !stored.receipts.contains_key(purchase) {
            audit.violations.push(format!("exactly once: purchase {purchase} is granted to {keys:?} without a record"));
        }
    }
}

fn check_history(stored: &Stored, audit: &mut Audit) {
    for (key, (current, _)) in &stored.players {
        let mut xp_before = i64::MIN;
        for version in 1..=*current {
            match stored.versions.get(&(key.clone(), version)) {
                None => audit.violations.push(format!("history: {key} has no version {version}")),
                Some(value) => {
                    let xp = value.as_ref().and_then(|value| value["xp"].as_i64()).unwrap_or(i64::MIN);
                    if xp < xp_before {
                        audit.violations.push(format!(
                            "stale overwrite: {key} v{version} has xp {xp} after {xp_before} (an older state won)"
                        ));
                    }
                    xp_before = xp_before.max(xp);
                }
            }
        }
    }
}

/// Checks the journals against the store; see the module's documentation.
pub fn audit(stored: &Stored, seeded: &Seeded, journal: &[Value]) -> Audit {
    let mut audit = Audit::default();
    check_conservation(stored, seeded, &mut audit);
    check_purchases(stored, &mut audit);
    check_history(stored, &mut audit);
    for entry in journal {
        let kind = entry["kind"].as_str().unwrap_or_default();
        match entry["t"].as_str().unwrap_or_default() {
            "attempt" => audit.operations += 1,
            "gave_up" => audit.gave_up += 1,
            "fenced" | "holder_lost" => audit.fenced += 1,
            "cut" if entry["refused"] == Value::Bool(true) => audit.refused += 1,
            "cut" => audit.cut += 1,
            "anomaly" => audit.violations.push(format!("anomaly: {entry}")),
            "ack" => {
                *audit.acknowledged.entry(kind.to_string()).or_default() += 1;
                if matches!(entry["outcome"].as_str(), Some("replayed" | "already_committed" | "already_granted")) {
                    audit.replays += 1;
                }
                if kind == "trade" {
                    let trade_id = entry["trade_id"].as_str().unwrap_or_default();
                    if !stored.trades.contains(trade_id) {
                        audit.violations.push(format!("trade {trade_id} was acknowledged but has no record"));
                    }
                    for party in entry["parties"].as_array().into_iter().flatten() {
                        let (key, version) = (party["key"].as_str().unwrap_or_default(), party["version"].as_u64());
                        check_acknowledged(stored, "trade", key, version.unwrap_or(0), &party["value"], &mut audit);
                    }
                    continue;
                }
                let (key, version) = (entry["key"].as_str().unwrap_or_default(), entry["version"].as_u64());
                check_acknowledged(stored, kind, key, version.unwrap_or(0), &entry["value"], &mut audit);
                if kind == "grant" {
                    let purchase = entry["purchase_id"].as_str().unwrap_or_default();
                    match stored.receipts.get(purchase) {
                        Some((buyer, _)) if buyer == key => {}
                        found => audit.violations.push(format!(
                            "exactly once: purchase {purchase} of {key} was acknowledged but its record is {found:?}"
                        )),
                    }
                }
            }
            _ => {}
        }
    }
    audit
}

/// The controls: an audit that could not see these failures would prove nothing.
#[cfg(test)]
mod controls {
    use serde_json::json;

    use super::*;

    /// Two players after one trade (a sword moved from a to b, 5 gold from b to a) and one
    /// purchase of 10 gold by a, with the journal that acknowledged all of it.
    fn consistent() -> (Stored, Seeded, Vec<Value>) {
        let a1 = json!({"currencies": {"gold": 100}, "items": {"sword": {}}, "xp": 0, "purchases": {}});
        let b1 = json!({"currencies": {"gold": 100}, "items": {"shield": {}}, "xp": 0, "purchases": {}});
        let a2 = json!({"currencies": {"gold": 105}, "items": {}, "xp": 2, "purchases": {}});
        let b2 = json!({"currencies": {"gold": 95}, "items": {"shield": {}, "sword": {}}, "xp": 0, "purchases": {}});
        let a3 = json!({"currencies": {"gold": 115}, "items": {}, "xp": 2, "purchases": {"c0p1": true}});
        let mut stored = Stored::default();
        for (key, version, value) in [("a", 1, &a1), ("a", 2, &a2), ("a", 3, &a3), ("b", 1, &b1), ("b", 2, &b2)] {
            stored.versions.insert((key.to_string(), version), Some(value.clone()));
        }
        stored.players.insert("a".into(), (3, Some(a3.clone())));
        stored.players.insert("b".into(), (2, Some(b2.clone())));
        stored.receipts.insert("c0p1".into(), ("a".into(), 10));
        stored.trades.insert("c0t1".into());
        let seeded = Seeded { items: ["sword".to_string(), "shield".to_string()].into(), gold_total: 200 };
        let journal = vec![
            json!({"t": "attempt", "kind": "trade"}),
            json!({"t": "ack", "kind": "trade", "trade_id": "c0t1", "outcome": "committed",
                   "parties": [{"key": "a", "version": 2, "value": a2}, {"key": "b", "version": 2, "value": b2}]}),
            json!({"t": "attempt", "kind": "grant"}),
            json!({"t": "ack", "kind": "grant", "purchase_id": "c0p1", "gold": 10, "outcome": "granted",
                   "key": "a", "version": 3, "value": a3}),
        ];
        (stored, seeded, journal)
    }

    fn violations_of(stored: &Stored, seeded: &Seeded, journal: &[Value]) -> Vec<String> {
        audit(stored, seeded, journal).violations
    }

    #[test]
    fn the_crash_audit_passes_a_consistent_database_and_counts_its_operations() {
        let (stored, seeded, journal) = consistent();
        let found = audit(&stored, &seeded, &journal);
        assert_eq!(found.violations, Vec::<String>::new());
        assert_eq!((found.operations, found.acknowledged_total()), (2, 2));
    }

    #[test]
    fn the_crash_audit_reports_an_acknowledged_grant_that_is_absent() {
        let (mut stored, seeded, journal) = consistent();
        // The grant's version never reached the store (a lost acknowledged commit): a is at v2.
        stored.versions.remove(&("a".to_string(), 3));
        let a2 = stored.versions[&("a".to_string(), 2)].clone();
        stored.players.insert("a".into(), (2, a2));
        stored.receipts.clear();
        let found = violations_of(&stored, &seeded, &journal);
        assert!(found.iter().any(|v| v.contains("grant: a v3 was acknowledged but is not in the store")), "{found:?}");
        assert!(found.iter().any(|v| v.contains("purchase c0p1 of a was acknowledged")), "{found:?}");
    }

    #[test]
    fn the_crash_audit_reports_a_duplicated_item() {
        let (mut stored, seeded, journal) = consistent();
        // A stale save of a's pre-trade state won: the sword is in both profiles.
        let mut a = stored.players["a"].1.clone().expect("a value");
        a["items"]["sword"] = json!({});
        stored.players.insert("a".into(), (3, Some(a.clone())));
        stored.versions.insert(("a".to_string(), 3), Some(a));
        let found = violations_of(&stored, &seeded, &journal);
        assert!(found.iter().any(|v| v.contains(r#"item sword is held by ["a", "b"]"#)), "{found:?}");
        assert!(found.iter().any(|v| v.contains("grant: a v3 was acknowledged as")), "{found:?}");
    }

    #[test]
    fn the_crash_audit_reports_a_grant_applied_twice_or_without_a_record() {
        let (mut stored, seeded, journal) = consistent();
        let mut twice = stored.players["a"].1.clone().expect("a value");
        twice["currencies"]["gold"] = json!(125);
        stored.players.insert("a".into(), (4, Some(twice.clone())));
        stored.versions.insert(("a".to_string(), 4), Some(twice));
        let found = violations_of(&stored, &seeded, &journal);
        assert!(found.iter().any(|v| v.contains("players hold 220 gold, but 200 were seeded")), "{found:?}");

        let (mut stored, seeded, journal) = consistent();
        stored.receipts.clear();
        let found = violations_of(&stored, &seeded, &journal[..2]);
        assert!(found.iter().any(|v| v.contains("purchase c0p1 is granted to [\"a\"] without a record")), "{found:?}");
    }

    #[test]
    fn the_crash_audit_reports_a_stale_overwrite_and_an_acknowledged_trade_without_its_record() {
        let (mut stored, seeded, journal) = consistent();
        let mut older = stored.players["b"].1.clone().expect("b value");
        older["xp"] = json!(-1);
        stored.versions.insert(("b".to_string(), 2), Some(older));
        stored.trades.clear();
        let found = violations_of(&stored, &seeded, &journal);
        assert!(found.iter().any(|v| v.contains("stale overwrite: b v2")), "{found:?}");
        assert!(found.iter().any(|v| v.contains("trade c0t1 was acknowledged but has no record")), "{found:?}");
        assert!(found.iter().any(|v| v.contains("trade: b v2 was acknowledged as")), "{found:?}");
    }

    #[test]
    fn the_crash_audit_reports_an_anomaly_a_client_journaled() {
        let (stored, seeded, mut journal) = consistent();
        journal.push(json!({"t": "anomaly", "what": "purchase refused"}));
        let found = violations_of(&stored, &seeded, &journal);
        assert!(found.iter().any(|v| v.contains("purchase refused")), "{found:?}");
    }
}
