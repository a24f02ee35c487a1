//! The operators' lookups and erasure on every backend: user id → keys, declared JSON-path
//! indexes (members, keys, numbers: top-N, rank, count), the session holder, indexes kept right
//! under concurrent saves and rollbacks, and an erasure that leaves no trace (quarantine records
//! included).

use std::sync::Arc;

use hoard::liveops::erase::{
    ERASURE_PLAN_STORE, erase_user, erase_user_crashing_after_the_scrub, holds_no_data, list_tombstones,
};
use hoard::liveops::{AuditEntry, append_audit, list_audit};
use hoard::store::index::{INDEXES_PER_STORE_MAX, IndexDecl, IndexKind};
use hoard::store::operator::RankCursor;
use hoard::store::{
    Commit, CommitOutcome, Condition, DocId, HolderId, Key, LeaseOp, ListQuery, OperatorStore, Store, StoreError,
    StoreName, VersionQuery, Write, get, restore_version,
};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::backends::TestStore;
use crate::store_conformance::{commit_ok, doc};

fn op(store: &dyn Store) -> &dyn OperatorStore {
    store.operator().expect("every durable backend and memory keep operator indexes")
}

fn players() -> StoreName {
    StoreName::new("players").expect("valid")
}

fn decl(name: &str, kind: IndexKind, path: &str) -> IndexDecl {
    IndexDecl { store: players(), name: name.into(), kind, path: path.into() }
}

fn key(text: &str) -> Key {
    Key::new(text).expect("valid key")
}

fn profile(level: i64, items: &[&str]) -> Value {
    let bag: serde_json::Map<String, Value> = items.iter().map(|item| (item.to_string(), json!({}))).collect();
    json!({"data": {"stats": {"level": level}, "items": bag, "tags": items}})
}

async fn declare_standard_indexes(store: &dyn Store) {
    op(store).declare_index(decl("level", IndexKind::Number, "/data/stats/level")).await.expect("declare level");
    op(store).declare_index(decl("items", IndexKind::Keys, "/data/items")).await.expect("declare items");
}

pub async fn user_id_lookup_finds_every_key_pages_and_follows_changes(t: TestStore) {
    let store = &*t.store;
    let mut writes = Vec::new();
    for n in 0..5 {
        writes.push(Write::put(doc("players", &format!("p{n}")), json!({"n": n})).user_ids(vec!["roblox:42".into()]));
    }
    writes.push(Write::put(doc("guilds", "g1"), json!({})).user_ids(vec!["roblox:42".into(), "roblox:7".into()]));
    writes.push(Write::put(doc("players", "other"), json!({})).user_ids(vec!["roblox:7".into()]));
    commit_ok(store, writes).await;

    let first = op(store).keys_by_user_id("roblox:42", None, 4).await.expect("lookup");
    assert_eq!(first.ids.len(), 4);
    assert_eq!(first.ids[0], doc("guilds", "g1"), "(store, key) byte order");
    let second = op(store).keys_by_user_id("roblox:42", first.next_after.as_ref(), 4).await.expect("next page");
    assert_eq!(second.ids, vec![doc("players", "p3"), doc("players", "p4")]);
    assert_eq!(second.next_after, None);

    // A new version with other user ids moves the key; a metadata-only write counts too.
    commit_ok(store, vec![Write::new(doc("players", "p0")).user_ids(vec!["roblox:7".into()])]).await;
    let sevens = op(store).keys_by_user_id("roblox:7", None, 0).await.expect("lookup");
    assert_eq!(sevens.ids, vec![doc("guilds", "g1"), doc("players", "other"), doc("players", "p0")]);
    let forty_twos = op(store).keys_by_user_id("roblox:42", None, 0).await.expect("lookup");
    assert_eq!(forty_twos.ids.len(), 5, "p0 left user 42");
    assert!(op(store).keys_by_user_id("nobody", None, 0).await.expect("lookup").ids.is_empty());

    // A conflicting commit changes no index row.
    let conflict = store
        .commit(Commit::new(vec![
            Write::new(doc("players", "p1")).user_ids(vec!["roblox:9".into()]),
            Write::put(doc("players", "p2"), json!(1)).when(Condition::Absent),
        ]))
        .await
        .expect("commit reaches the store");
    assert!(matches!(conflict, CommitOutcome::Conflict(_)));
    assert!(op(store).keys_by_user_id("roblox:9", None, 0).await.expect("lookup").ids.is_empty());

    // Who holds the session now: the key's lease names its holder.
    let holder = HolderId::new("server-a").expect("valid");
    store.renew_holder(&holder, 60_000).await.expect("renew");
    commit_ok(
        store,
        vec![Write::new(doc("players", "p1")).when(Condition::LeaseFree).lease(LeaseOp::Acquire(holder.clone()))],
    )
    .await;
    assert_eq!(get(store, &doc("players", "p1")).await.expect("read").lease.holder, Some(holder));
}

pub async fn declared_indexes_answer_members_top_rank_and_count(t: TestStore) {
    let store = &*t.store;
    // Documents written before the declaration are filled in by it.
    commit_ok(store, vec![Write::put(doc("players", "a"), profile(10, &["sword-1", "gem-9"]))]).await;
    commit_ok(store, vec![Write::put(doc("players", "b"), profile(30, &["gem-9"]))]).await;
    commit_ok(store, vec![Write::put(doc("other", "z"), profile(99, &["gem-9"]))]).await;
    declare_standard_indexes(store).await;
    assert_eq!(
        op(store).declare_index(decl("level", IndexKind::Number, "/data/stats/level")).await.expect("again"),
        0,
        "declaring the same index again changes nothing"
    );
    commit_ok(store, vec![Write::put(doc("players", "c"), profile(20, &["sword-1"]))]).await;
    commit_ok(store, vec![Write::put(doc("players", "d"), profile(20, &[]))]).await;
    commit_ok(store, vec![Write::put(doc("players", "e"), json!({"data": {"stats": {"level": "high"}}}))]).await;

    let holders = op(store).keys_by_member(&players(), "items", "gem-9", None, 0).await.expect("members");
    assert_eq!(holders, vec![key("a"), key("b")], "only this store's profiles");
    let swords = op(store).keys_by_member(&players(), "items", "sword-1", None, 1).await.expect("members");
    assert_eq!(swords, vec![key("a")]);
    let swords = op(store).keys_by_member(&players(), "items", "sword-1", Some(&key("a")), 1).await.expect("next");
    assert_eq!(swords, vec![key("c")]);

    let top = op(store).index_top(&players(), "level", None, 3).await.expect("top");
    let ranked: Vec<(String, f64)> = top.iter().map(|r| (r.key.to_string(), r.value)).collect();
    assert_eq!(ranked, vec![("b".into(), 30.0), ("c".into(), 20.0), ("d".into(), 20.0)], "ties by key");
    let cursor = RankCursor { value: 20.0, key: key("c") };
    let rest = op(store).index_top(&players(), "level", Some(&cursor), 10).await.expect("next page");
    let rest: Vec<String> = rest.iter().map(|r| r.key.to_string()).collect();
    assert_eq!(rest, vec!["d", "a"], "a string level is not a number: e is not ranked");
    let rank = op(store).index_rank(&players(), "level", &key("d")).await.expect("rank").expect("ranked");
    assert_eq!((rank.rank, rank.value), (3, 20.0));
    assert_eq!(op(store).index_rank(&players(), "level", &key("e")).await.expect("rank"), None);
    assert_eq!(op(store).index_count(&players(), "level", Some(15.0), None).await.expect("count"), 3);
    assert_eq!(op(store).index_count(&players(), "level", None, Some(20.0)).await.expect("count"), 3);

    // A save moves the entries; a deletion removes them; a metadata-only version keeps them.
    commit_ok(store, vec![Write::put(doc("players", "b"), profile(5, &["sword-1"]))]).await;
    commit_ok(store, vec![Write::delete(doc("players", "a"))]).await;
    commit_ok(store, vec![Write::new(doc("players", "c")).user_ids(vec!["u".into()])]).await;
    assert!(op(store).keys_by_member(&players(), "items", "gem-9", None, 0).await.expect("members").is_empty());
    let swords = op(store).keys_by_member(&players(), "items", "sword-1", None, 0).await.expect("members");
    assert_eq!(swords, vec![key("b"), key("c")]);
    let top: Vec<String> = op(store)
        .index_top(&players(), "level", None, 0)
        .await
        .expect("top")
        .iter()
        .map(|r| r.key.to_string())
        .collect();
    assert_eq!(top, vec!["c", "d", "b"]);

    // Dropping an index removes it and its entries.
    assert!(op(store).drop_index(&players(), "items").await.expect("drop"));
    assert!(!op(store).drop_index(&players(), "items").await.expect("drop again"));
    assert!(op(store).keys_by_member(&players(), "items", "sword-1", None, 0).await.is_err());
    assert_eq!(op(store).list_indexes(&players()).await.expect("list").len(), 1);
}

pub async fn index_declarations_refuse_bad_input_and_past_the_limit(t: TestStore) {
    let store = &*t.store;
    let refused = |result: Result<u64, StoreError>| matches!(result, Err(StoreError::InvalidInput(_)));
    assert!(refused(op(store).declare_index(decl("Bad Name", IndexKind::Number, "/a")).await));
    assert!(refused(op(store).declare_index(decl("star", IndexKind::Number, "/a/*")).await));
    assert!(refused(op(store).declare_index(decl("nopath", IndexKind::Members, "items")).await));
    op(store).declare_index(decl("level", IndexKind::Number, "/level")).await.expect("declare");
    assert!(
        refused(op(store).declare_index(decl("level", IndexKind::Number, "/other")).await),
        "same name, other path"
    );
    for n in 1..INDEXES_PER_STORE_MAX {
        op(store).declare_index(decl(&format!("i{n}"), IndexKind::Members, "/x")).await.expect("within the limit");
    }
    assert!(refused(op(store).declare_index(decl("one_more", IndexKind::Members, "/x")).await));
    assert_eq!(op(store).list_indexes(&players()).await.expect("list").len(), INDEXES_PER_STORE_MAX);
    // Queries name a declared index of the right kind.
    assert!(op(store).index_top(&players(), "missing", None, 0).await.is_err());
    assert!(op(store).index_top(&players(), "i1", None, 0).await.is_err(), "a members index has no top");
    assert!(op(store).keys_by_member(&players(), "level", "1", None, 0).await.is_err());
}

/// What the indexes must say, recomputed from the documents themselves.
async fn assert_indexes_match_documents(store: &dyn Store, keys: &[String]) {
    let ids: Vec<DocId> = keys.iter().map(|k| doc("players", k)).collect();
    let docs = store.get_many(&ids).await.expect("read");
    let mut expected_top: Vec<(f64, String)> = Vec::new();
    let mut expected_members: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for document in &docs {
        let Some(value) = &document.value else { continue };
        if let Some(level) = value.pointer("/data/stats/level").and_then(Value::as_f64) {
            expected_top.push((level, document.id.key.to_string()));
        }
        if let Some(items) = value.pointer("/data/items").and_then(Value::as_object) {
            for item in items.keys() {
                expected_members.entry(item.clone()).or_default().push(document.id.key.to_string());
            }
        }
    }
    expected_top.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let top = op(store).index_top(&players(), "level", None, 1_000).await.expect("top");
    let top: Vec<(f64, String)> = top.into_iter().map(|r| (r.value, r.key.to_string())).collect();
    assert_eq!(top, expected_top, "the number index is exactly the documents' levels");
    for item in ["i0", "i1", "i2", "i3", "i4", "i5"] {
        let found = op(store).keys_by_member(&players(), "items", item, None, 1_000).await.expect("members");
        let found: Vec<String> = found.iter().map(|k| k.to_string()).collect();
        assert_eq!(found, expected_members.get(item).cloned().unwrap_or_default(), "holders of {item}");
    }
}

pub async fn indexes_stay_right_under_concurrent_saves_and_rollbacks(t: TestStore) {
    let store: Arc<dyn Store> = t.store.clone();
    declare_standard_indexes(&*store).await;
    let keys: Vec<String> = (0..6).map(|n| format!("k{n}")).collect();
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let store = store.clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(task);
            for _ in 0..25 {
                let k = &keys[rng.random_range(0..keys.len())];
                let id = doc("players", k);
                let current = get(&*store, &id).await.expect("read");
                let roll = rng.random_range(0..10);
                if roll == 0 && current.version > 1 {
                    // A rollback to an earlier version, conditioned like an operator's.
                    let version = rng.random_range(1..current.version);
                    let _ = restore_version(&*store, &id, version, Condition::Version(current.version)).await;
                    continue;
                }
                let items: Vec<String> = (0..6).filter(|_| rng.random_bool(0.4)).map(|i| format!("i{i}")).collect();
                let items: Vec<&str> = items.iter().map(String::as_str).collect();
                let value = profile(rng.random_range(0..20), &items);
                let condition =
                    if current.version == 0 { Condition::Absent } else { Condition::Version(current.version) };
                // Two-key commits whose second write often fails roll the first back with them.
                let other = doc("players", &keys[rng.random_range(0..keys.len())]);
                let mut writes = vec![Write::put(id.clone(), value.clone()).when(condition)];
                if other != id && roll < 4 {
                    writes
                        .push(Write::put(other, profile(99, &["i5"])).when(Condition::Version(rng.random_range(0..3))));
                } else if roll == 9 {
                    writes = vec![Write::delete(id.clone()).when(Condition::Version(current.version))];
                }
                let _ = store.commit(Commit::new(writes)).await.expect("commit reaches the store");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    assert_indexes_match_documents(&*store, &keys).await;
}

pub async fn erasure_leaves_no_trace_and_keeps_a_tombstone(t: TestStore) {
    let store = &*t.store;
    op(store).declare_index(decl("items", IndexKind::Keys, "/data/items")).await.expect("declare");
    let secret = "SECRET-PAYLOAD-7731";
    let alice = doc("players", "alice");
    let bob = doc("players", "bob");
    // Alice: several versions (history), attributes, an inbox message, a held lease.
    for level in 0..3 {
        commit_ok(
            store,
            vec![
                Write::put(alice.clone(), json!({"data": {"items": {"sword-1": {"note": secret}}, "level": level}}))
                    .user_ids(vec!["roblox:1".into()])
                    .attributes(serde_json::Map::from_iter([("email".into(), json!(secret))])),
            ],
        )
        .await;
    }
    commit_ok(store, vec![Write::new(alice.clone()).push_message(json!({"gift": secret}))]).await;
    let holder = HolderId::new("server-a").expect("valid");
    store.renew_holder(&holder, 60_000).await.expect("renew");
    commit_ok(store, vec![Write::new(alice.clone()).lease(LeaseOp::Acquire(holder.clone()))]).await;
    let epoch = get(store, &alice).await.expect("read").lease.epoch;
    commit_ok(
        store,
        vec![Write::put(bob.clone(), json!({"data": {"items": {"sword-1": {}}}})).user_ids(vec!["roblox:2".into()])],
    )
    .await;
    // Quarantine records of two of alice's versions, as the engine and hoard serve write them
    // (the first written twice, so it has history); one of bob's and one of a key `alice/x`
    // (listed under the same prefix), which stay.
    let quarantine = |id: &DocId, version: u64| {
        hoard::engine::quarantine_write(id, version, &format!("not a profile: {secret}"), store.limits())
            .expect("a record's key")
    };
    let alice_x = doc("players", "alice/x");
    commit_ok(store, vec![quarantine(&alice, 1)]).await;
    commit_ok(store, vec![quarantine(&alice, 1), quarantine(&alice, 3), quarantine(&bob, 1), quarantine(&alice_x, 1)])
        .await;
    let alice_records = [doc("hoard.quarantine", "players/alice/v1"), doc("hoard.quarantine", "players/alice/v3")];
    for record in &alice_records {
        assert!(get(store, record).await.expect("read").exists(), "{record} is written before the erasure");
    }
    // A trade between them and a receipt of Alice's, as the engine records them.
    let trade = json!({"trade_id": "t1", "parties": [alice, bob], "legs": [{"from": alice, "to": bob, "items": [secret], "currencies": {}}],
                       "status": "committed", "escrow": null});
    commit_ok(
        store,
        vec![
            Write::put(doc("hoard.trades", "t1"), trade),
            Write::put(doc("hoard.trade_log", "players/alice/t1"), json!({"trade_id": "t1"})),
            Write::put(doc("hoard.trade_log", "players/bob/t1"), json!({"trade_id": "t1"})),
            Write::put(
                doc("hoard.receipts", "players/p1"),
                json!({"purchase_id": "p1", "player": alice, "payload": {"sku": secret}}),
            ),
            Write::put(doc("hoard.receipts", "players/p2"), json!({"purchase_id": "p2", "player": bob, "payload": {}})),
        ],
    )
    .await;

    let tombstone = erase_user(store, "roblox:1", "support@example", "RightToErasureRequest").await.expect("erase");
    assert_eq!(tombstone.documents_erased, 1);
    assert_eq!(
        (tombstone.trade_log_entries_erased, tombstone.trade_records_redacted, tombstone.receipts_redacted),
        (1, 1, 1)
    );
    assert_eq!(tombstone.quarantine_records_erased, 2, "both of alice's quarantine records, not bob's or alice/x's");
    assert!(tombstone.history_rows_purged >= 3, "alice's superseded versions were purged");

    for id in [
        &alice,
        &doc("hoard.trade_log", "players/alice/t1"),
        &doc("hoard.trades", "t1"),
        &doc("hoard.receipts", "players/p1"),
        &alice_records[0],
        &alice_records[1],
    ] {
        assert!(holds_no_data(store, id).await.expect("check"), "{id} holds no data");
        let versions = store.list_versions(id, &VersionQuery::default()).await.expect("versions");
        for info in versions {
            if let Some(record) = store.get_version(id, info.version).await.expect("version") {
                assert!(
                    !serde_json::to_string(&record).expect("json").contains(secret),
                    "no version of {id} holds the data"
                );
            }
        }
    }
    assert!(op(store).keys_by_user_id("roblox:1", None, 0).await.expect("lookup").ids.is_empty());
    let sword_holders = op(store).keys_by_member(&players(), "items", "sword-1", None, 0).await.expect("members");
    assert_eq!(sword_holders, vec![key("bob")], "alice's index entries are gone, bob's stay");
    // The session that held alice is fenced out: it can never write her data back.
    let stale = Write::put(alice.clone(), json!({"data": secret})).when(Condition::Lease { holder, epoch });
    assert!(matches!(store.commit(Commit::single(stale)).await.expect("commit"), CommitOutcome::Conflict(_)));
    let quarantine_store = StoreName::new(hoard::engine::QUARANTINE_STORE).expect("name");
    let listed = store
        .list_keys(&quarantine_store, &ListQuery { prefix: "players/alice".into(), ..ListQuery::default() })
        .await
        .expect("list");
    assert_eq!(listed.keys, vec![key("players/alice/x/v1")], "only another key's record is left under alice's name");
    // Bob's own data stays.
    assert!(get(store, &bob).await.expect("read").exists());
    assert!(get(store, &doc("hoard.quarantine", "players/bob/v1")).await.expect("read").exists());
    assert!(get(store, &doc("hoard.receipts", "players/p2")).await.expect("read").exists());
    // The tombstone says what, when and by whom, and holds none of the data.
    let (tombstones, _) = list_tombstones(store, None, 0).await.expect("tombstones");
    assert_eq!(tombstones.len(), 1);
    let kept = &tombstones[0].1;
    assert_eq!((kept.user_id.as_str(), kept.requested_by.as_str()), ("roblox:1", "support@example"));
    assert!(kept.erased_at_ms > 0);
    assert!(!serde_json::to_string(kept).expect("json").contains(secret));
    // Erasing again finds nothing left and is harmless.
    let again = erase_user(store, "roblox:1", "support@example", "retry").await.expect("erase again");
    assert_eq!(again.documents_erased, 0);
}

/// A run that crashed after scrubbing and before purging history left the keys without their
/// user ids (so a lookup by user id no longer finds them) while their history still holds the
/// data. Running the erasure again finishes it, from the plan the first run wrote.
pub async fn an_erasure_that_crashed_after_its_scrub_is_finished_by_running_it_again(t: TestStore) {
    let store = &*t.store;
    let secret = "alice@example.com";
    let alice = doc("players", "alice");
    for level in 0..3 {
        commit_ok(
            store,
            vec![
                Write::put(alice.clone(), json!({"data": {"email": secret, "level": level}}))
                    .user_ids(vec!["roblox:7".into()]),
            ],
        )
        .await;
    }
    let log = doc("hoard.trade_log", "players/alice/t7");
    let record = doc("hoard.trades", "t7");
    commit_ok(
        store,
        vec![
            Write::put(log.clone(), json!({"trade_id": "t7"})),
            Write::put(record.clone(), json!({"trade_id": "t7", "parties": [alice], "note": secret})),
        ],
    )
    .await;
    erase_user_crashing_after_the_scrub(store, "roblox:7").await.expect("the first run, up to its crash");
    assert!(op(store).keys_by_user_id("roblox:7", None, 0).await.expect("lookup").ids.is_empty(), "ids scrubbed");
    assert!(!holds_no_data(store, &alice).await.expect("check"), "the crash left alice's history holding the data");
    let tombstone = erase_user(store, "roblox:7", "support@example", "retry").await.expect("erase again");
    assert_eq!(
        (tombstone.documents_erased, tombstone.trade_log_entries_erased, tombstone.trade_records_redacted),
        (1, 1, 1),
        "the rerun found the first run's documents through its plan"
    );
    for id in [&alice, &log, &record] {
        assert!(holds_no_data(store, id).await.expect("check"), "{id} holds no data after the rerun");
    }
    let plans = StoreName::new(ERASURE_PLAN_STORE).expect("name");
    let left = store.list_keys(&plans, &ListQuery::default()).await.expect("list plans");
    assert!(left.keys.is_empty(), "the plan is gone once the erasure is done: {:?}", left.keys);
}

pub async fn audit_log_appends_in_time_order(t: TestStore) {
    let store = &*t.store;
    for n in 0..3u64 {
        let entry = AuditEntry {
            actor: "ops".into(),
            action: format!("action-{n}"),
            target: Some(doc("players", "a")),
            version_before: Some(n),
            version_after: Some(n + 1),
            detail: String::new(),
            at_ms: 0,
        };
        append_audit(store, entry).await.expect("append");
    }
    let (first, next) = list_audit(store, None, 2).await.expect("list");
    assert_eq!(first.iter().map(|(_, e)| e.action.as_str()).collect::<Vec<_>>(), vec!["action-0", "action-1"]);
    let (rest, _) = list_audit(store, next, 2).await.expect("next");
    assert_eq!(rest.len(), 1);
    assert_eq!((rest[0].1.version_before, rest[0].1.version_after), (Some(2), Some(3)));
    assert!(rest[0].1.at_ms > 0, "stamped by the store's clock");
}

crate::backends::backend_suite! {
    config: Default::default();
    backends: [memory, sqlite, postgres, postgres_portable, postgres_pooled];
    cases: [
        user_id_lookup_finds_every_key_pages_and_follows_changes,
        declared_indexes_answer_members_top_rank_and_count,
        index_declarations_refuse_bad_input_and_past_the_limit,
        indexes_stay_right_under_concurrent_saves_and_rollbacks,
        erasure_leaves_no_trace_and_keeps_a_tombstone,
        an_erasure_that_crashed_after_its_scrub_is_finished_by_running_it_again,
        audit_log_appends_in_time_order,
    ]
}
