//! One conformance suite for every store backend: each case runs against memory, SQLite and
//! PostgreSQL alike (see the `conformance!` invocations at the bottom). `hoard-server`'s tests
//! include this very file by `#[path]` and run it over `RemoteStore` in front of each backend.

use std::sync::Arc;

use hoard::store::limits::{HistoryPolicy, Limits};
use hoard::store::validate::parse_json_value;
use hoard::store::{
    Commit, CommitOutcome, Condition, ConflictKind, DocId, HolderId, InvalidInput, Key, LeaseOp, ListQuery,
    Notification, SharedStore, Store, StoreError, StoreName, ValueOp, VersionQuery, Write, get, restore_version,
};
use serde_json::{Map, Value, json};

use crate::backends::{TestConfig, TestStore};

pub fn doc(store: &str, key: &str) -> DocId {
    DocId::parse(store, key).expect("valid test key")
}

pub async fn commit_ok(store: &dyn Store, writes: Vec<Write>) -> Vec<hoard::store::Applied> {
    match store.commit(Commit::new(writes)).await.expect("commit reaches the store") {
        CommitOutcome::Committed { applied, .. } => applied,
        CommitOutcome::Conflict(conflict) => panic!("expected commit, got conflict {conflict}"),
    }
}

pub async fn commit_conflict(store: &dyn Store, writes: Vec<Write>) -> hoard::store::Conflict {
    match store.commit(Commit::new(writes)).await.expect("commit reaches the store") {
        CommitOutcome::Committed { .. } => panic!("expected a conflict, the commit applied"),
        CommitOutcome::Conflict(conflict) => conflict,
    }
}

fn assert_invalid(result: Result<CommitOutcome, StoreError>, what: &str) {
    match result {
        Err(StoreError::InvalidInput(error)) => assert!(!error.to_string().is_empty(), "{what}: error explains itself"),
        other => panic!("{what}: expected InvalidInput, got {other:?}"),
    }
}

pub async fn absent_key_reads_as_absent_with_version_zero(t: TestStore) {
    let store = &*t.store;
    let document = get(store, &doc("players", "nobody")).await.expect("read");
    assert!(!document.exists());
    assert_eq!(document.version, 0);
    assert_eq!(document.lease.epoch, 0);
    assert!(document.lease.holder.is_none());
    assert!(document.inbox.is_empty());
}

pub async fn put_then_get_returns_value_version_and_store_times(t: TestStore) {
    let store = &*t.store;
    let id = doc("players", "alice");
    let before_ms = store.now_ms().await.expect("clock");
    assert!(before_ms > 1_600_000_000_000, "store clock is in milliseconds since the epoch");
    let applied = commit_ok(store, vec![Write::put(id.clone(), json!({"coins": 5, "items": ["sword"]}))]).await;
    assert_eq!(applied[0].version, 1);
    let document = get(store, &id).await.expect("read");
    assert_eq!(document.value, Some(json!({"coins": 5, "items": ["sword"]})));
    assert_eq!(document.version, 1);
    assert!(document.created_at_ms >= before_ms);
    assert_eq!(document.created_at_ms, document.updated_at_ms);
    assert!(document.last_commit_id.is_some());
    commit_ok(store, vec![Write::put(id.clone(), json!({"coins": 6}))]).await;
    let document = get(store, &id).await.expect("read");
    assert_eq!(document.version, 2);
    assert!(document.updated_at_ms >= document.created_at_ms);
}

pub async fn get_many_returns_documents_in_request_order(t: TestStore) {
    let store = &*t.store;
    commit_ok(store, vec![Write::put(doc("s", "b"), json!(2)), Write::put(doc("s", "a"), json!(1))]).await;
    let docs = store.get_many(&[doc("s", "b"), doc("s", "missing"), doc("s", "a")]).await.expect("read");
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[0].value, Some(json!(2)));
    assert!(!docs[1].exists());
    assert_eq!(docs[2].value, Some(json!(1)));
    assert_eq!(docs[1].id, doc("s", "missing"));
}

pub async fn named_stores_keep_keys_apart(t: TestStore) {
    let store = &*t.store;
    commit_ok(store, vec![Write::put(doc("game-a", "k"), json!("a")), Write::put(doc("game-b", "k"), json!("b"))])
        .await;
    assert_eq!(get(store, &doc("game-a", "k")).await.expect("read").value, Some(json!("a")));
    assert_eq!(get(store, &doc("game-b", "k")).await.expect("read").value, Some(json!("b")));
}

pub async fn versions_keep_growing_across_delete_and_recreate(t: TestStore) {
    let store = &*t.store;
    let id = doc("players", "aba");
    commit_ok(store, vec![Write::put(id.clone(), json!("A"))]).await;
    commit_ok(store, vec![Write::put(id.clone(), json!("B"))]).await;
    commit_ok(store, vec![Write::delete(id.clone())]).await;
    let deleted = get(store, &id).await.expect("read");
    assert!(!deleted.exists());
    assert_eq!(deleted.version, 3);
    commit_ok(store, vec![Write::put(id.clone(), json!("A"))]).await;
    assert_eq!(get(store, &id).await.expect("read").version, 4, "same content, new version: never a content hash");
}

pub async fn version_condition_refuses_stale_writer_after_a_b_a(t: TestStore) {
    let store = &*t.store;
    let id = doc("players", "aba");
    commit_ok(store, vec![Write::put(id.clone(), json!("A"))]).await;
    let stale_version = get(store, &id).await.expect("read").version;
    commit_ok(store, vec![Write::put(id.clone(), json!("B"))]).await;
    commit_ok(store, vec![Write::put(id.clone(), json!("A"))]).await;
    let conflict =
        commit_conflict(store, vec![Write::put(id.clone(), json!("stale")).when(Condition::Version(stale_version))])
            .await;
    assert_eq!(conflict.kind, ConflictKind::VersionMismatch);
    assert_eq!(conflict.found.version, 3);
    assert_eq!(conflict.id, id);
    assert_eq!(get(store, &id).await.expect("read").value, Some(json!("A")));
}

pub async fn absent_condition_creates_once_and_refuses_existing(t: TestStore) {
    let store = &*t.store;
    let id = doc("receipts", "p-1");
    commit_ok(store, vec![Write::put(id.clone(), json!(1)).when(Condition::Absent)]).await;
    let conflict = commit_conflict(store, vec![Write::put(id.clone(), json!(2)).when(Condition::Absent)]).await;
    assert_eq!(conflict.kind, ConflictKind::Exists);
    assert!(conflict.found.exists);
    commit_ok(store, vec![Write::delete(id.clone())]).await;
    commit_ok(store, vec![Write::put(id.clone(), json!(3)).when(Condition::Absent)]).await;
    assert_eq!(get(store, &id).await.expect("read").value, Some(json!(3)));
}

pub async fn multi_key_commit_with_one_failing_condition_changes_no_key(t: TestStore) {
    let store = &*t.store;
    let (a, b, c) = (doc("players", "a"), doc("players", "b"), doc("players", "c"));
    commit_ok(store, vec![Write::put(a.clone(), json!(10)), Write::put(b.clone(), json!(20))]).await;
    let before = store.get_many(&[a.clone(), b.clone(), c.clone()]).await.expect("read");
    let conflict = commit_conflict(
        store,
        vec![
            Write::put(a.clone(), json!(0)).when(Condition::Version(1)),
            Write::put(c.clone(), json!("new")).when(Condition::Absent),
            Write::put(b.clone(), json!(30)).when(Condition::Version(7)),
        ],
    )
    .await;
    assert_eq!(conflict.write_index, 2);
    assert_eq!(conflict.id, b);
    assert_eq!(conflict.kind, ConflictKind::VersionMismatch);
    assert_eq!(conflict.found.version, 1);
    let after = store.get_many(&[a.clone(), b.clone(), c.clone()]).await.expect("read");
    assert_eq!(before, after, "no key changed");
    assert!(
        store.list_versions(&c, &VersionQuery::default()).await.expect("history").is_empty(),
        "no history entry either"
    );
    assert_eq!(store.list_versions(&a, &VersionQuery::default()).await.expect("history").len(), 1);
}

pub async fn multi_key_commit_applies_every_write(t: TestStore) {
    let store = &*t.store;
    let (a, b) = (doc("players", "a"), doc("players", "b"));
    commit_ok(store, vec![Write::put(a.clone(), json!({"coins": 10})), Write::put(b.clone(), json!({"coins": 0}))])
        .await;
    let applied = commit_ok(
        store,
        vec![
            Write::put(a.clone(), json!({"coins": 3})).when(Condition::Version(1)),
            Write::put(b.clone(), json!({"coins": 7})).when(Condition::Version(1)),
        ],
    )
    .await;
    assert_eq!(applied.iter().map(|applied| applied.version).collect::<Vec<_>>(), vec![2, 2]);
    let docs = store.get_many(&[a, b]).await.expect("read");
    assert_eq!(docs[0].value, Some(json!({"coins": 3})));
    assert_eq!(docs[1].value, Some(json!({"coins": 7})));
    assert_eq!(docs[0].last_commit_id, docs[1].last_commit_id, "one commit wrote both");
}

pub async fn delete_leaves_a_tombstone_that_history_keeps(t: TestStore) {
    let store = &*t.store;
    let id = doc("players", "gone");
    commit_ok(store, vec![Write::put(id.clone(), json!({"coins": 1})).user_ids(vec!["42".into()])]).await;
    commit_ok(store, vec![Write::delete(id.clone())]).await;
    let document = get(store, &id).await.expect("read");
    assert!(!document.exists());
    assert!(document.user_ids.is_empty());
    let versions = store.list_versions(&id, &VersionQuery::default()).await.expect("history");
    assert_eq!(versions.len(), 2);
    assert!(versions[0].deleted);
    assert_eq!(versions[0].version, 2);
    assert!(!versions[1].deleted);
    let old = store.get_version(&id, 1).await.expect("read version").expect("version 1 kept");
    assert_eq!(old.value, Some(json!({"coins": 1})));
    let page = store.list_keys(&id.store, &ListQuery::default()).await.expect("list");
    assert!(page.keys.is_empty(), "deleted keys are not listed");
}

pub async fn increment_creates_adds_and_refuses_non_integers(t: TestStore) {
    let store = &*t.store;
    let counter = doc("counters", "visits");
    commit_ok(store, vec![Write::increment(counter.clone(), 5)]).await;
    commit_ok(store, vec![Write::increment(counter.clone(), -2)]).await;
    let document = get(store, &counter).await.expect("read");
    assert_eq!(document.value, Some(json!(3)));
    assert_eq!(document.version, 2);
    let text = doc("counters", "text");
    commit_ok(store, vec![Write::put(text.clone(), json!("three"))]).await;
    let conflict = commit_conflict(store, vec![Write::increment(text.clone(), 1)]).await;
    assert_eq!(conflict.kind, ConflictKind::NotAnInteger);
    let big = doc("counters", "big");
    commit_ok(store, vec![Write::put(big.clone(), json!(i64::MAX))]).await;
    let conflict = commit_conflict(store, vec![Write::increment(big.clone(), 1)]).await;
    assert_eq!(conflict.kind, ConflictKind::IncrementOverflow);
    assert_eq!(get(store, &big).await.expect("read").value, Some(json!(i64::MAX)));
}

pub async fn attributes_and_user_ids_are_kept_unless_replaced(t: TestStore) {
    let store = &*t.store;
    let id = doc("players", "meta");
    let mut attributes = Map::new();
    attributes.insert("region".into(), json!("eu"));
    commit_ok(
        store,
        vec![Write::put(id.clone(), json!(1)).attributes(attributes.clone()).user_ids(vec!["7".into(), "8".into()])],
    )
    .await;
    commit_ok(store, vec![Write::put(id.clone(), json!(2))]).await;
    let document = get(store, &id).await.expect("read");
    assert_eq!(document.attributes, attributes);
    assert_eq!(document.user_ids, vec!["7".to_string(), "8".to_string()]);
    commit_ok(store, vec![Write::new(id.clone()).user_ids(vec!["9".into()])]).await;
    let document = get(store, &id).await.expect("read");
    assert_eq!(document.user_ids, vec!["9".to_string()]);
    assert_eq!(document.value, Some(json!(2)));
    assert_eq!(document.version, 3, "a metadata change is a new version");
}

pub async fn list_keys_by_prefix_paginates_in_byte_order(t: TestStore) {
    let store = &*t.store;
    let writes = (0..25).map(|n| Write::put(doc("inv", &format!("player-{n:03}")), json!(n))).collect();
    commit_ok(store, writes).await;
    commit_ok(
        store,
        vec![Write::put(doc("inv", "other"), json!(0)), Write::put(doc("elsewhere", "player-000"), json!(0))],
    )
    .await;
    let name = StoreName::new("inv").expect("name");
    let mut seen = Vec::new();
    let mut after = None;
    for _page in 0..10 {
        let page = store
            .list_keys(&name, &ListQuery { prefix: "player-".into(), after: after.clone(), limit: 10 })
            .await
            .expect("list");
        assert!(page.keys.len() <= 10);
        seen.extend(page.keys.iter().map(|key| key.as_str().to_string()));
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|n| format!("player-{n:03}")).collect();
    assert_eq!(seen, expected);
    let all = store.list_keys(&name, &ListQuery::default()).await.expect("list");
    assert_eq!(all.keys.len(), 26);
    assert!(all.next_after.is_none());
}

/// A prefix is matched literally and case-sensitively, byte for byte: `%` and `_` are not
/// wildcards (the trap of an SQL `LIKE`), and keys beyond ASCII sort and match by their bytes.
pub async fn list_keys_prefix_is_literal_and_case_sensitive(t: TestStore) {
    let store = &*t.store;
    let keys = ["a%b", "a_c", "aXb", "abc", "A%b", "a\\d", "é-1", "é-2", "f"];
    commit_ok(store, keys.iter().map(|key| Write::put(doc("lit", key), json!(1))).collect()).await;
    let name = StoreName::new("lit").expect("name");
    let cases: [(&str, &[&str]); 6] = [
        ("a%", &["a%b"]),
        ("a_", &["a_c"]),
        ("A", &["A%b"]),
        ("a\\", &["a\\d"]),
        ("é", &["é-1", "é-2"]),
        ("", &["A%b", "a%b", "aXb", "a\\d", "a_c", "abc", "f", "é-1", "é-2"]),
    ];
    for (prefix, expected) in cases {
        let query = ListQuery { prefix: prefix.to_string(), ..ListQuery::default() };
        let page = store.list_keys(&name, &query).await.expect("list");
        assert_eq!(page.keys.iter().map(|key| key.as_str()).collect::<Vec<_>>(), expected, "prefix {prefix:?}");
    }
}

pub async fn history_lists_newest_first_and_reads_every_version(t: TestStore) {
    let store = &*t.store;
    let id = doc("players", "hist");
    for n in 1..=12 {
        commit_ok(store, vec![Write::put(id.clone(), json!({"n": n}))]).await;
    }
    let first = store.list_versions(&id, &VersionQuery { before_version: None, limit: 5 }).await.expect("history");
    assert_eq!(first.iter().map(|v| v.version).collect::<Vec<_>>(), vec![12, 11, 10, 9, 8]);
    let second = store.list_versions(&id, &VersionQuery { before_version: Some(8), limit: 5 }).await.expect("history");
    assert_eq!(second.iter().map(|v| v.version).collect::<Vec<_>>(), vec![7, 6, 5, 4, 3]);
    for n in 1..=12u64 {
        let record = store.get_version(&id, n).await.expect("read").expect("kept");
        assert_eq!(record.value, Some(json!({"n": n})));
        assert_eq!(record.info.version, n);
        assert!(record.info.value_bytes > 0);
    }
    assert!(store.get_version(&id, 13).await.expect("read").is_none());
    let current = get(store, &id).await.expect("read");
    assert_eq!(first[0].commit_id, current.last_commit_id.expect("commit id"));
}

pub async fn restore_writes_a_past_version_as_a_new_version(t: TestStore) {
    let store = &*t.store;
    let id = doc("players", "rollback");
    let mut attributes = Map::new();
    attributes.insert("note".into(), json!("good"));
    commit_ok(store, vec![Write::put(id.clone(), json!({"coins": 100})).attributes(attributes.clone())]).await;
    commit_ok(store, vec![Write::put(id.clone(), json!({"coins": 0})).attributes(Map::new())]).await;
    let outcome = restore_version(store, &id, 1, Condition::Version(2)).await.expect("restore");
    assert!(outcome.is_committed());
    let document = get(store, &id).await.expect("read");
    assert_eq!(document.value, Some(json!({"coins": 100})));
    assert_eq!(document.attributes, attributes);
    assert_eq!(document.version, 3);
    let stale = restore_version(store, &id, 2, Condition::Version(2)).await.expect("restore");
    assert!(stale.conflict().is_some(), "a restore is conditional like any write");
    match restore_version(store, &id, 99, Condition::None).await {
        Err(StoreError::InvalidInput(InvalidInput::NoSuchVersion { version: 99, .. })) => {}
        other => panic!("restoring a missing version must be refused, got {other:?}"),
    }
}

pub async fn default_history_policy_prunes_nothing_recent(t: TestStore) {
    let store = &*t.store;
    let id = doc("players", "keep");
    for n in 0..5 {
        commit_ok(store, vec![Write::put(id.clone(), json!(n))]).await;
    }
    assert_eq!(store.prune_history().await.expect("prune"), 0);
    assert_eq!(store.list_versions(&id, &VersionQuery::default()).await.expect("history").len(), 5);
}

pub async fn zero_retention_prunes_every_superseded_version_but_keeps_the_latest(t: TestStore) {
    let store = &*t.store;
    let id = doc("players", "prune");
    let other = doc("players", "single");
    for n in 0..5 {
        commit_ok(store, vec![Write::put(id.clone(), json!(n))]).await;
    }
    commit_ok(store, vec![Write::put(other.clone(), json!("only"))]).await;
    assert_eq!(store.prune_history().await.expect("prune"), 4);
    let versions = store.list_versions(&id, &VersionQuery::default()).await.expect("history");
    assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), vec![5]);
    assert_eq!(store.list_versions(&other, &VersionQuery::default()).await.expect("history").len(), 1);
    assert_eq!(get(store, &id).await.expect("read").value, Some(json!(4)));
}

pub async fn acquire_bumps_epoch_and_release_keeps_it(t: TestStore) {
    let store = &*t.store;
    let id = doc("players", "leased");
    let server_a = HolderId::new("server-a").expect("holder");
    let applied = commit_ok(
        store,
        vec![Write::new(id.clone()).when(Condition::LeaseFree).lease(LeaseOp::Acquire(server_a.clone()))],
    )
    .await;
    assert_eq!(applied[0].epoch, 1);
    assert_eq!(applied[0].version, 0, "a lease change is not a new version");
    let document = get(store, &id).await.expect("read");
    assert_eq!(document.lease.holder, Some(server_a.clone()));
    assert_eq!(document.lease.epoch, 1);
    commit_ok(
        store,
        vec![
            Write::new(id.clone())
                .when(Condition::Lease { holder: server_a.clone(), epoch: 1 })
                .lease(LeaseOp::Release),
        ],
    )
    .await;
    let document = get(store, &id).await.expect("read");
    assert!(document.lease.holder.is_none());
    assert_eq!(document.lease.epoch, 1, "release keeps the epoch");
    let applied = commit_ok(
        store,
        vec![Write::new(id.clone()).when(Condition::LeaseFree).lease(LeaseOp::Acquire(server_a.clone()))],
    )
    .await;
    assert_eq!(applied[0].epoch, 2, "re-acquiring bumps again");
}

pub async fn stale_holder_cannot_write_after_steal_or_release_and_retake(t: TestStore) {
    let store = &*t.store;
    let id = doc("players", "fenced");
    let (a, b) = (HolderId::new("server-a").expect("holder"), HolderId::new("server-b").expect("holder"));
    store.renew_holder(&a, 60_000).await.expect("renew");
    store.renew_holder(&b, 60_000).await.expect("renew");
    commit_ok(
        store,
        vec![Write::put(id.clone(), json!("a1")).when(Condition::LeaseFree).lease(LeaseOp::Acquire(a.clone()))],
    )
    .await;
    let a_fence = Condition::Lease { holder: a.clone(), epoch: 1 };
    commit_ok(store, vec![Write::put(id.clone(), json!("a2")).when(a_fence.clone())]).await;
    // B steals (conditional on what it saw), and A's next write is refused.
    let steal = Condition::Lease { holder: a.clone(), epoch: 1 };
    commit_ok(store, vec![Write::new(id.clone()).when(steal).lease(LeaseOp::Acquire(b.clone()))]).await;
    let conflict = commit_conflict(store, vec![Write::put(id.clone(), json!("a-stale")).when(a_fence.clone())]).await;
    assert_eq!(conflict.kind, ConflictKind::LeaseMismatch);
    assert_eq!(conflict.found.lease.holder, Some(b.clone()));
    assert_eq!(conflict.found.lease.epoch, 2);
    // B releases; A re-acquires at a new epoch; A's old fence still fails (the DocumentService trap).
    commit_ok(
        store,
        vec![Write::new(id.clone()).when(Condition::Lease { holder: b.clone(), epoch: 2 }).lease(LeaseOp::Release)],
    )
    .await;
    commit_conflict(store, vec![Write::put(id.clone(), json!("a-stale")).when(a_fence.clone())]).await;
    commit_ok(store, vec![Write::new(id.clone()).when(Condition::LeaseFree).lease(LeaseOp::Acquire(a.clone()))]).await;
    commit_conflict(store, vec![Write::put(id.clone(), json!("a-stale")).when(a_fence)]).await;
    commit_ok(store, vec![Write::put(id.clone(), json!("a3")).when(Condition::Lease { holder: a.clone(), epoch: 3 })])
        .await;
    assert_eq!(get(store, &id).await.expect("read").value, Some(json!("a3")));
}

pub async fn lease_free_follows_the_holders_process_lease(t: TestStore) {
    let store = &*t.store;
    let id = doc("players", "liveness");
    let (a, b) = (HolderId::new("server-a").expect("holder"), HolderId::new("server-b").expect("holder"));
    let lease = store.renew_holder(&a, 60_000).await.expect("renew");
    let now_ms = store.now_ms().await.expect("clock");
    assert!(lease.expires_at_ms >= now_ms + 50_000 && lease.expires_at_ms <= now_ms + 70_000);
    assert_eq!(store.holder_lease(&a).await.expect("read"), Some(lease));
    commit_ok(store, vec![Write::new(id.clone()).when(Condition::LeaseFree).lease(LeaseOp::Acquire(a.clone()))]).await;
    let conflict = commit_conflict(
        store,
        vec![Write::new(id.clone()).when(Condition::LeaseFree).lease(LeaseOp::Acquire(b.clone()))],
    )
    .await;
    assert_eq!(conflict.kind, ConflictKind::LeaseHeld);
    assert!(conflict.found.holder_expires_at_ms.is_some());
    // A's process lease lapses (ttl 0 expires at once): the key is free by the store's clock.
    store.renew_holder(&a, 0).await.expect("renew");
    commit_ok(store, vec![Write::new(id.clone()).when(Condition::LeaseFree).lease(LeaseOp::Acquire(b.clone()))]).await;
    // B releases its process lease entirely: every key naming B is free at once.
    store.renew_holder(&b, 60_000).await.expect("renew");
    commit_conflict(store, vec![Write::new(id.clone()).when(Condition::LeaseFree).lease(LeaseOp::Acquire(a.clone()))])
        .await;
    store.release_holder(&b).await.expect("release");
    assert_eq!(store.holder_lease(&b).await.expect("read"), None);
    let applied =
        commit_ok(store, vec![Write::new(id.clone()).when(Condition::LeaseFree).lease(LeaseOp::Acquire(a.clone()))])
            .await;
    assert_eq!(applied[0].epoch, 3);
}

pub async fn inbox_assigns_sequences_acks_and_refuses_when_full(t: TestStore) {
    let store = &*t.store;
    let id = doc("players", "mail");
    let applied = commit_ok(
        store,
        vec![Write::new(id.clone()).push_message(json!({"gift": 1})).push_message(json!({"gift": 2}))],
    )
    .await;
    assert_eq!(applied[0].inbox_seqs, vec![1, 2]);
    assert_eq!(applied[0].version, 0, "a message is not a new version of the value");
    commit_ok(store, vec![Write::new(id.clone()).push_message(json!({"gift": 3}))]).await;
    let document = get(store, &id).await.expect("read");
    assert!(!document.exists(), "an offline player's inbox does not create a value");
    assert_eq!(document.inbox.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(document.inbox[2].body, json!({"gift": 3}));
    commit_ok(store, vec![Write::put(id.clone(), json!({"gifts": 2})).ack_inbox_through(2)]).await;
    let document = get(store, &id).await.expect("read");
    assert_eq!(document.inbox.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3]);
    assert_eq!(document.value, Some(json!({"gifts": 2})), "the ack and the data it changed land together");
    assert_eq!(document.inbox_next_seq, 4);
    let limits = store.limits().clone();
    let full = doc("players", "full");
    let fill: Vec<Value> = (0..limits.inbox_messages_max).map(|n| json!(n)).collect();
    let mut write = Write::new(full.clone());
    write.inbox_push = fill;
    commit_ok(store, vec![write]).await;
    let conflict = commit_conflict(store, vec![Write::new(full.clone()).push_message(json!("one too many"))]).await;
    assert_eq!(conflict.kind, ConflictKind::InboxFull);
    assert_eq!(get(store, &full).await.expect("read").inbox.len(), limits.inbox_messages_max, "nothing dropped");
}

pub async fn notifications_reach_subscribers(t: TestStore) {
    let store = &*t.store;
    let mut subscription = store.subscribe();
    let sent = Notification { topic: "holder/server-a".into(), payload: "release players/alice".into() };
    store.notify(sent.clone()).await.expect("notify");
    let received = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match subscription.recv().await {
                Ok(notification) if notification == sent => return notification,
                Ok(_) => continue,
                Err(error) => panic!("subscription failed: {error}"),
            }
        }
    })
    .await
    .expect("notification arrives within 10 s");
    assert_eq!(received.payload, "release players/alice");
}

pub async fn bad_input_is_refused_and_changes_nothing(t: TestStore) {
    let store = &*t.store;
    let limits = store.limits().clone();
    let id = doc("players", "bad");
    commit_ok(store, vec![Write::put(id.clone(), json!("original"))]).await;
    assert!(matches!(Key::new(""), Err(InvalidInput::Empty { .. })));
    assert!(matches!(Key::new("a\u{0}b"), Err(InvalidInput::ControlCharacter { .. })));
    assert!(matches!(Key::new("line\nbreak"), Err(InvalidInput::ControlCharacter { .. })));
    assert!(matches!(Key::new("k".repeat(limits.key_bytes_max + 1)), Err(InvalidInput::TooLong { .. })));
    assert!(Key::new("k".repeat(limits.key_bytes_max)).is_ok());
    assert!(Key::new("ünïcødé/键").is_ok());
    assert!(matches!(StoreName::new("s".repeat(limits.store_name_bytes_max + 1)), Err(InvalidInput::TooLong { .. })));
    assert!(matches!(parse_json_value("NaN"), Err(InvalidInput::NotJson { .. })));
    assert!(matches!(parse_json_value("{\"a\": Infinity}"), Err(InvalidInput::NotJson { .. })));
    assert!(matches!(parse_json_value("{not json"), Err(InvalidInput::NotJson { .. })));
    let oversized = Value::String("x".repeat(limits.value_bytes_max));
    assert_invalid(store.commit(Commit::single(Write::put(id.clone(), oversized))).await, "oversized value");
    let mut attributes = Map::new();
    attributes.insert("a".into(), Value::String("x".repeat(limits.attributes_bytes_max)));
    assert_invalid(
        store.commit(Commit::single(Write::put(id.clone(), json!(1)).attributes(attributes))).await,
        "oversized attributes",
    );
    let user_ids = (0..=limits.user_ids_per_key_max).map(|n| n.to_string()).collect();
    assert_invalid(
        store.commit(Commit::single(Write::put(id.clone(), json!(1)).user_ids(user_ids))).await,
        "too many user ids",
    );
    assert_invalid(
        store.commit(Commit::single(Write::put(id.clone(), json!(1)).user_ids(vec![String::new()]))).await,
        "empty user id",
    );
    assert_invalid(store.commit(Commit::new(vec![])).await, "empty commit");
    assert_invalid(
        store.commit(Commit::new(vec![Write::put(id.clone(), json!(1)), Write::put(id.clone(), json!(2))])).await,
        "same key twice",
    );
    let too_many = (0..=limits.writes_per_commit_max)
        .map(|n| Write::put(doc("players", &format!("many-{n}")), json!(n)))
        .collect();
    assert_invalid(store.commit(Commit::new(too_many)).await, "too many writes");
    let big_message = Value::String("m".repeat(limits.inbox_message_bytes_max));
    assert_invalid(
        store.commit(Commit::single(Write::new(id.clone()).push_message(big_message))).await,
        "oversized message",
    );
    let notification =
        Notification { topic: "t".into(), payload: "p".repeat(limits.notification_payload_bytes_max + 1) };
    assert!(matches!(store.notify(notification).await, Err(StoreError::InvalidInput(_))));
    let empty_topic = Notification { topic: String::new(), payload: "p".into() };
    assert!(matches!(store.notify(empty_topic).await, Err(StoreError::InvalidInput(_))));
    let document = get(store, &id).await.expect("read");
    assert_eq!(document.value, Some(json!("original")));
    assert_eq!(document.version, 1);
    assert!(document.inbox.is_empty());
    assert_eq!(store.list_keys(&id.store, &ListQuery::default()).await.expect("list").keys.len(), 1);
}

pub async fn value_at_the_size_limit_is_stored_whole(t: TestStore) {
    let store = &*t.store;
    let id = doc("players", "big");
    // A JSON string of n characters serializes to n + 2 bytes.
    let value = Value::String("é".repeat(1_000) + &"x".repeat(store.limits().value_bytes_max - 2 - 2_000));
    commit_ok(store, vec![Write::put(id.clone(), value.clone())]).await;
    assert_eq!(get(store, &id).await.expect("read").value, Some(value));
}

/// A JSON value nested `depth` deep (arrays and objects in turn, a scalar at the bottom).
pub fn nested_value(depth: usize) -> Value {
    let mut value = json!("bottom");
    for level in 0..depth {
        value = if level % 2 == 0 { json!([value]) } else { json!({ "k": value }) };
    }
    value
}

/// Values, inbox messages and attributes at the depth limit are stored and read back whole (in
/// the document and in history); one level deeper is refused and changes nothing.
pub async fn json_at_the_depth_limit_reads_back_and_one_level_deeper_is_refused(t: TestStore) {
    let store = &*t.store;
    let depth_max = store.limits().json_depth_max;
    let id = doc("players", "deepest");
    let value = nested_value(depth_max);
    let message = nested_value(depth_max);
    let mut attributes = Map::new();
    attributes.insert("a".into(), nested_value(depth_max - 1));
    let mut write = Write::put(id.clone(), value.clone()).push_message(message.clone());
    write.attributes = Some(attributes.clone());
    commit_ok(store, vec![write]).await;
    let document = get(store, &id).await.expect("the deepest accepted document reads back");
    assert_eq!(document.value.as_ref(), Some(&value));
    assert_eq!(document.inbox.first().map(|m| &m.body), Some(&message));
    assert_eq!(document.attributes, attributes);
    let record = store.get_version(&id, 1).await.expect("history reads back").expect("kept");
    assert_eq!(record.value, Some(value));

    let mut too_deep_attributes = Map::new();
    too_deep_attributes.insert("a".into(), nested_value(depth_max));
    let mut deep_attributes = Write::new(id.clone());
    deep_attributes.attributes = Some(too_deep_attributes);
    for (what, write) in [
        ("value", Write::put(id.clone(), nested_value(depth_max + 1))),
        ("message", Write::new(id.clone()).push_message(nested_value(depth_max + 1))),
        ("attributes", deep_attributes),
    ] {
        match store.commit(Commit::single(write)).await {
            Err(StoreError::InvalidInput(InvalidInput::TooDeep { depth, depth_max: max, .. })) => {
                assert_eq!((depth, max), (depth_max + 1, depth_max), "{what}");
            }
            // Through `hoard serve` (RemoteStore) the refusal arrives as the server's message.
            Err(StoreError::InvalidInput(InvalidInput::Remote { message })) => {
                let expected = format!("nested {} deep, over the limit of {depth_max}", depth_max + 1);
                assert!(message.contains(&expected), "{what}: {message}");
            }
            other => panic!("{what} one level too deep: expected TooDeep, got {other:?}"),
        }
    }
    let after = get(store, &id).await.expect("read");
    assert_eq!((after.version, after.inbox.len()), (1, 1), "nothing changed");
}

/// The stored JSON reads back as written: nested values, unicode, large integers and floats.
pub async fn values_round_trip_exactly(t: TestStore) {
    let store = &*t.store;
    let id = doc("players", "shapes");
    let value = json!({
        "u64": u64::MAX, "i64": i64::MIN, "float": 0.1, "unicode": "日本語 ✓ \u{1F600}", "quote": "a\"b\\c",
        "nested": {"list": [1, {"deep": [true, false, null]}], "empty": {}}, "zero": 0
    });
    commit_ok(store, vec![Write::put(id.clone(), value.clone())]).await;
    assert_eq!(get(store, &id).await.expect("read").value, Some(value.clone()));
    assert_eq!(store.get_version(&id, 1).await.expect("read").expect("kept").value, Some(value));
}

/// Floats read back bit for bit: a backend that stores JSON text must parse it exactly, or a value
/// read and saved again drifts by one unit in the last place at every save.
pub async fn floats_round_trip_bit_exactly(t: TestStore) {
    use rand::{Rng, SeedableRng};
    let store = &*t.store;
    let mut random = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let floats: Vec<f64> =
        (0..2_000).map(|_| f64::from_bits(random.random::<u64>())).filter(|float| float.is_finite()).collect();
    let id = doc("players", "floats");
    commit_ok(store, vec![Write::put(id.clone(), json!(floats))]).await;
    for stored in [
        get(store, &id).await.expect("read").value,
        store.get_version(&id, 1).await.expect("read").expect("kept").value,
    ] {
        let read: Vec<f64> = serde_json::from_value(stored.expect("value")).expect("floats");
        assert_eq!(read.len(), floats.len());
        for (written, read) in floats.iter().zip(&read) {
            assert_eq!(written.to_bits(), read.to_bits(), "{written} came back as {read}");
        }
    }
}

pub async fn no_lost_update_with_32_tasks_doing_200_cas_increments(t: TestStore) {
    let store: SharedStore = t.store.clone();
    let id = doc("counters", "cas");
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let store = store.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..200 {
                // Bounded: each attempt either commits or loses to another task's commit.
                let mut done = false;
                for _attempt in 0..100_000 {
                    let current = get(&*store, &id).await.expect("read");
                    let count = current.value.as_ref().and_then(Value::as_i64).unwrap_or(0);
                    let write = Write::put(id.clone(), json!(count + 1)).when(Condition::Version(current.version));
                    match store.commit(Commit::single(write)).await.expect("commit") {
                        CommitOutcome::Committed { .. } => {
                            done = true;
                            break;
                        }
                        CommitOutcome::Conflict(_) => conflicts += 1,
                    }
                }
                assert!(done, "an increment never got through");
            }
            conflicts
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let document = get(&*store, &id).await.expect("read");
    assert_eq!(document.value, Some(json!(6_400)));
    assert_eq!(document.version, 6_400);
}

pub async fn concurrent_creators_of_one_key_exactly_one_wins(t: TestStore) {
    let store: SharedStore = t.store.clone();
    let id = doc("receipts", "purchase-1");
    let mut tasks = Vec::new();
    for n in 0..50 {
        let store = store.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            store
                .commit(Commit::single(Write::put(id, json!(n)).when(Condition::Absent)))
                .await
                .expect("commit")
                .is_committed()
        }));
    }
    let mut winners = 0;
    for task in tasks {
        if task.await.expect("task") {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(get(&*store, &id).await.expect("read").version, 1);
}

/// Many concurrent multi-key transfers between a few accounts (grouped into shared transactions
/// by backends that group-commit) conserve the total, whatever order they land in.
pub async fn concurrent_transfers_conserve_the_total(t: TestStore) {
    let store: SharedStore = t.store.clone();
    let accounts: Vec<DocId> = (0..6).map(|n| doc("bank", &format!("acct-{n}"))).collect();
    commit_ok(&*store, accounts.iter().map(|id| Write::put(id.clone(), json!(1_000))).collect()).await;
    let accounts = Arc::new(accounts);
    let mut tasks = Vec::new();
    for task_index in 0..16usize {
        let store = store.clone();
        let accounts = accounts.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..25usize {
                let from = &accounts[(task_index + round) % accounts.len()];
                let to = &accounts[(task_index * 7 + round * 3 + 1) % accounts.len()];
                if from == to {
                    continue;
                }
                for _attempt in 0..10_000 {
                    let docs = store.get_many(&[from.clone(), to.clone()]).await.expect("read");
                    let balance = |d: &hoard::store::Document| d.value.as_ref().and_then(Value::as_i64).unwrap_or(0);
                    let amount = 7;
                    let writes = vec![
                        Write::put(from.clone(), json!(balance(&docs[0]) - amount))
                            .when(Condition::Version(docs[0].version)),
                        Write::put(to.clone(), json!(balance(&docs[1]) + amount))
                            .when(Condition::Version(docs[1].version)),
                    ];
                    if store.commit(Commit::new(writes)).await.expect("commit").is_committed() {
                        break;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let docs = store.get_many(&accounts).await.expect("read");
    let total: i64 = docs.iter().map(|d| d.value.as_ref().and_then(Value::as_i64).expect("balance")).sum();
    assert_eq!(total, 6_000);
}

pub async fn holder_renewal_extends_and_release_removes(t: TestStore) {
    let store = &*t.store;
    let holder = HolderId::generate("server");
    assert_eq!(store.holder_lease(&holder).await.expect("read"), None);
    let first = store.renew_holder(&holder, 1_000).await.expect("renew");
    let second = store.renew_holder(&holder, 600_000).await.expect("renew");
    assert!(second.expires_at_ms > first.expires_at_ms);
    assert_eq!(
        store.holder_lease(&holder).await.expect("read").map(|lease| lease.expires_at_ms),
        Some(second.expires_at_ms)
    );
    store.release_holder(&holder).await.expect("release");
    assert_eq!(store.holder_lease(&holder).await.expect("read"), None);
    store.release_holder(&holder).await.expect("releasing twice is harmless");
}

pub async fn write_can_combine_value_lease_and_inbox_changes(t: TestStore) {
    let store = &*t.store;
    let id = doc("players", "combo");
    let holder = HolderId::new("server-c").expect("holder");
    commit_ok(store, vec![Write::new(id.clone()).push_message(json!("welcome"))]).await;
    let applied = commit_ok(
        store,
        vec![
            Write::put(id.clone(), json!({"read": 1}))
                .when(Condition::LeaseFree)
                .lease(LeaseOp::Acquire(holder.clone()))
                .ack_inbox_through(1),
        ],
    )
    .await;
    assert_eq!((applied[0].version, applied[0].epoch), (1, 1));
    let final_save = Write::put(id.clone(), json!({"read": 2}))
        .when(Condition::Lease { holder: holder.clone(), epoch: 1 })
        .lease(LeaseOp::Release);
    commit_ok(store, vec![final_save]).await;
    let document = get(store, &id).await.expect("read");
    assert_eq!(document.value, Some(json!({"read": 2})));
    assert!(document.lease.holder.is_none());
    assert!(document.inbox.is_empty());
    let _ = ValueOp::Keep;
}

pub async fn combined_conditions_must_all_hold(t: TestStore) {
    let store = &*t.store;
    let id = doc("guild", "bank");
    let holder = HolderId::new("server-a").expect("holder");
    store.renew_holder(&holder, 60_000).await.expect("renew");
    commit_ok(store, vec![Write::put(id.clone(), json!(1))]).await;
    let both = Condition::All(vec![Condition::Version(1), Condition::LeaseFree]);
    commit_ok(store, vec![Write::put(id.clone(), json!(2)).when(both.clone())]).await;
    let conflict = commit_conflict(store, vec![Write::put(id.clone(), json!(3)).when(both)]).await;
    assert_eq!(conflict.kind, ConflictKind::VersionMismatch);
    commit_ok(store, vec![Write::new(id.clone()).lease(LeaseOp::Acquire(holder))]).await;
    let conflict = commit_conflict(
        store,
        vec![Write::put(id.clone(), json!(3)).when(Condition::All(vec![Condition::Version(2), Condition::LeaseFree]))],
    )
    .await;
    assert_eq!(conflict.kind, ConflictKind::LeaseHeld);
    let nested = Condition::All(vec![Condition::All(vec![])]);
    assert_invalid(store.commit(Commit::single(Write::put(id.clone(), json!(4)).when(nested))).await, "nested All");
    let many = Condition::All(vec![Condition::None; hoard::store::CONDITIONS_PER_WRITE_MAX + 1]);
    assert_invalid(
        store.commit(Commit::single(Write::put(id.clone(), json!(4)).when(many))).await,
        "too many conditions",
    );
    assert_eq!(get(store, &id).await.expect("read").value, Some(json!(2)));
}

/// `Before(t)` holds while the store's clock is before `t`, on any key, alone or combined; once
/// the clock has reached `t` the commit is refused whole (a cross-server trade's deadline).
pub async fn before_condition_follows_the_stores_clock(t: TestStore) {
    let store = &*t.store;
    let (record, escrow) = (doc("hoard.trades", "deadline-1"), doc("hoard.escrow", "deadline-1/0"));
    let now_ms = store.now_ms().await.expect("clock");
    let later = Condition::All(vec![Condition::Absent, Condition::Before(now_ms + 60_000)]);
    commit_ok(store, vec![Write::put(record.clone(), json!("pending")).when(later)]).await;
    let past = Condition::All(vec![Condition::Version(1), Condition::Before(now_ms - 1)]);
    let conflict = commit_conflict(
        store,
        vec![
            Write::put(escrow.clone(), json!({"sword": {}})).when(Condition::Absent),
            Write::put(record.clone(), json!("committed")).when(past),
        ],
    )
    .await;
    assert_eq!((conflict.id, conflict.kind), (record.clone(), ConflictKind::DeadlinePassed));
    assert_eq!(get(store, &record).await.expect("read").value, Some(json!("pending")), "nothing applied");
    assert!(!get(store, &escrow).await.expect("read").exists(), "not the other write either");
}

/// Limits the suite configures: small inboxes keep the inbox-full case quick.
pub fn suite_config() -> TestConfig {
    TestConfig {
        limits: Limits { inbox_messages_max: 50, ..Limits::default() },
        history_policy: HistoryPolicy::default(),
    }
}

pub fn zero_retention_config() -> TestConfig {
    TestConfig { limits: Limits::default(), history_policy: HistoryPolicy::keep_latest_only() }
}

/// Puts, metadata-only new versions (which copy the value into history) and
/// lease-only writes race on a few keys, so backends that group commits judge them together in
/// one transaction, where a backend may skip reading values no write of the batch reads. Every
/// version in history must then hold the value its commit meant: a put's own value, the previous
/// version's value for a metadata-only write, and the latest version's value in the document.
pub async fn mixed_concurrent_writes_keep_every_versions_value(t: TestStore) {
    let store: SharedStore = t.store.clone();
    let keys: Vec<DocId> = (0..3).map(|n| doc("mixed", &format!("k{n}"))).collect();
    let holder = HolderId::new("mixed-holder").expect("holder");
    store.renew_holder(&holder, 600_000).await.expect("holder lease");
    let keys = Arc::new(keys);
    let mut tasks = Vec::new();
    for task_index in 0..12usize {
        let store = store.clone();
        let keys = keys.clone();
        let holder = holder.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..15usize {
                let id = keys[(task_index + round) % keys.len()].clone();
                let write = match (task_index + round) % 4 {
                    // The put's value names its writer, so history can be checked against it.
                    0 => Write::put(id, json!({"by": format!("{task_index}-{round}"), "pad": "x".repeat(300)})),
                    1 => {
                        let mut attributes = Map::new();
                        attributes.insert("touched".into(), json!(format!("{task_index}-{round}")));
                        Write::new(id).attributes(attributes)
                    }
                    2 => Write::new(id).lease(LeaseOp::Acquire(holder.clone())),
                    _ => Write::new(id).lease(LeaseOp::Release),
                };
                let outcome = store.commit(Commit::single(write)).await.expect("commit");
                assert!(outcome.is_committed(), "unconditional writes always apply: {outcome:?}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    for id in keys.iter() {
        let document = get(&*store, id).await.expect("read");
        let mut versions = Vec::new();
        let mut before_version = None;
        loop {
            let page =
                store.list_versions(id, &VersionQuery { before_version, limit: 100 }).await.expect("list versions");
            let Some(last) = page.last() else { break };
            before_version = Some(last.version);
            versions.extend(page);
        }
        versions.sort_by_key(|info| info.version);
        assert_eq!(versions.last().map(|info| info.version), Some(document.version), "{id}: latest in history");
        let mut previous: Option<Value> = None;
        for info in &versions {
            let record = store.get_version(id, info.version).await.expect("read version").expect("version kept");
            let value = record.value.clone();
            match &value {
                Some(Value::Object(object)) if object.contains_key("by") => {}
                // A metadata-only version before any put has no value; after one, it copies it.
                other => {
                    assert_eq!(other, &previous, "{id} v{}: a metadata-only version keeps the value", info.version)
                }
            }
            assert_ne!(value, Some(Value::Null), "{id} v{}: no stand-in value stored", info.version);
            previous = value;
        }
        assert_eq!(document.value, previous, "{id}: the document holds its latest version's value");
    }
}

macro_rules! conformance {
    ($backend:ident) => {
        mod $backend {
            conformance!(@cases $backend, suite_config;
                absent_key_reads_as_absent_with_version_zero,
                put_then_get_returns_value_version_and_store_times,
                get_many_returns_documents_in_request_order,
                named_stores_keep_keys_apart,
                versions_keep_growing_across_delete_and_recreate,
                version_condition_refuses_stale_writer_after_a_b_a,
                absent_condition_creates_once_and_refuses_existing,
                multi_key_commit_with_one_failing_condition_changes_no_key,
                multi_key_commit_applies_every_write,
                delete_leaves_a_tombstone_that_history_keeps,
                increment_creates_adds_and_refuses_non_integers,
                attributes_and_user_ids_are_kept_unless_replaced,
                list_keys_by_prefix_paginates_in_byte_order,
                list_keys_prefix_is_literal_and_case_sensitive,
                history_lists_newest_first_and_reads_every_version,
                restore_writes_a_past_version_as_a_new_version,
                default_history_policy_prunes_nothing_recent,
                acquire_bumps_epoch_and_release_keeps_it,
                stale_holder_cannot_write_after_steal_or_release_and_retake,
                lease_free_follows_the_holders_process_lease,
                inbox_assigns_sequences_acks_and_refuses_when_full,
                notifications_reach_subscribers,
                bad_input_is_refused_and_changes_nothing,
                value_at_the_size_limit_is_stored_whole,
                json_at_the_depth_limit_reads_back_and_one_level_deeper_is_refused,
                values_round_trip_exactly,
                floats_round_trip_bit_exactly,
                no_lost_update_with_32_tasks_doing_200_cas_increments,
                concurrent_creators_of_one_key_exactly_one_wins,
                concurrent_transfers_conserve_the_total,
                holder_renewal_extends_and_release_removes,
                write_can_combine_value_lease_and_inbox_changes,
                combined_conditions_must_all_hold,
                before_condition_follows_the_stores_clock,
                mixed_concurrent_writes_keep_every_versions_value
            );
            conformance!(@cases $backend, zero_retention_config;
                zero_retention_prunes_every_superseded_version_but_keeps_the_latest
            );
        }
    };
    (@cases postgres, $config:ident; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
            async fn $case() {
                super::$case(crate::backends::postgres(super::$config()).await).await;
            }
        )*
    };
    (@cases postgres_portable, $config:ident; $($case:ident),* $(,)?) => {
        conformance!(@postgres_cases crate::postgres_profiles::postgres_portable, $config; $($case),*);
    };
    (@cases postgres_pooled, $config:ident; $($case:ident),* $(,)?) => {
        conformance!(@postgres_cases crate::postgres_profiles::postgres_pooled, $config; $($case),*);
    };
    (@postgres_cases $open:path, $config:ident; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
            async fn $case() {
                super::$case($open(super::$config()).await).await;
            }
        )*
    };
    (@cases $backend:ident, $config:ident; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                super::$case(crate::backends::$backend(super::$config()).await).await;
            }
        )*
    };
}

// Which backends: each including test crate says, through `conformance_backends!` (defined before
// it includes this file), so one suite serves the library's own backends and the remote store.
conformance_backends!(conformance);
