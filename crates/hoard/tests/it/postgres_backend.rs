//! PostgreSQL-only tests: what the conformance suite cannot show with one store, i.e. several
//! processes' worth of stores sharing one schema, concurrent migrations, group commit and lock
//! ordering under contention. The PostgreSQL rule of `backends` holds: an unreachable server
//! fails each test; `HOARD_TEST_POSTGRES_URL=skip` reports them as ignored.

use std::sync::Arc;

use hoard::store::postgres::{PostgresOptions, PostgresStore, SCHEMA_VERSION_LATEST};
use hoard::store::{Commit, CommitOutcome, Condition, Notification, SharedStore, Store, Write, get};
use serde_json::{Value, json};

use crate::backends::{TestConfig, fresh_schema_name, postgres, postgres_in_schema, postgres_url};
use crate::store_conformance::doc;

/// Two stores (two processes' worth of pools, workers and listeners) on one fresh schema.
async fn two_stores_on_one_schema() -> (SharedStore, SharedStore) {
    let schema = fresh_schema_name();
    let first = postgres_in_schema(TestConfig::default(), schema.clone()).await;
    let second = postgres_in_schema(TestConfig::default(), schema).await;
    (first.store, second.store)
}

async fn cas_increment(store: &dyn Store, id: &hoard::store::DocId) {
    for _attempt in 0..100_000 {
        let current = get(store, id).await.expect("read");
        let count = current.value.as_ref().and_then(Value::as_i64).unwrap_or(0);
        let write = Write::put(id.clone(), json!(count + 1)).when(Condition::Version(current.version));
        if store.commit(Commit::single(write)).await.expect("commit").is_committed() {
            return;
        }
    }
    panic!("an increment never got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn two_stores_on_one_schema_increment_one_key_to_the_exact_total() {
    let (first, second) = two_stores_on_one_schema().await;
    let id = doc("counters", "shared");
    let mut tasks = Vec::new();
    for task_index in 0..16 {
        let store = if task_index % 2 == 0 { first.clone() } else { second.clone() };
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                cas_increment(&*store, &id).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    for store in [&first, &second] {
        let document = get(&**store, &id).await.expect("read");
        assert_eq!(document.value, Some(json!(400)), "no increment lost or doubled, seen from either store");
        assert_eq!(document.version, 400);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn notification_from_one_store_reaches_another() {
    let (first, second) = two_stores_on_one_schema().await;
    // A store in another schema must not hear it: channels are per schema.
    let elsewhere = postgres(TestConfig::default()).await;
    let mut subscription = second.subscribe();
    let mut elsewhere_subscription = elsewhere.store.subscribe();
    let sent = Notification { topic: "holder/server-b".into(), payload: "release \"players/alice\" \\ now".into() };
    first.notify(sent.clone()).await.expect("notify");
    let received = tokio::time::timeout(std::time::Duration::from_secs(10), subscription.recv())
        .await
        .expect("notification arrives within 10 s")
        .expect("subscription open");
    assert_eq!(received, sent);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(elsewhere_subscription.try_recv().is_err(), "another schema's store hears nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn many_processes_opening_a_fresh_schema_at_once_migrate_once() {
    let schema = fresh_schema_name();
    // Fail at once, saying how to fix it, when the server is unreachable.
    crate::backends::require_postgres(&postgres_url()).await;
    let mut opens = Vec::new();
    for _ in 0..4 {
        let options = PostgresOptions { url: postgres_url(), schema: schema.clone(), ..PostgresOptions::default() };
        opens.push(tokio::spawn(PostgresStore::open(options)));
    }
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.expect("task").expect("every concurrent open succeeds"));
    }
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let row = client
        .query_one(&format!("SELECT count(*), max(version) FROM \"{schema}\".schema_version"), &[])
        .await
        .expect("read schema_version");
    let (migrations_recorded, version): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(version, SCHEMA_VERSION_LATEST);
    assert_eq!(migrations_recorded, SCHEMA_VERSION_LATEST, "each migration recorded exactly once");
    // Every store works on the shared schema.
    let id = doc("players", "migrated");
    stores[0].commit(Commit::single(Write::put(id.clone(), json!(1)))).await.expect("commit");
    assert_eq!(get(&stores[3], &id).await.expect("read").value, Some(json!(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn group_commit_combines_concurrent_commits_into_fewer_transactions() {
    let t = postgres(TestConfig::default()).await;
    let store = t.store.clone();
    let contested_keys = 20;
    let mut tasks = Vec::new();
    for n in 0..500usize {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // Every fifth commit races for one of 20 receipts; the rest write keys of their own.
            let (id, contested) = if n % 5 == 0 {
                (doc("receipts", &format!("purchase-{}", (n / 5) % contested_keys)), true)
            } else {
                (doc("players", &format!("p-{n}")), false)
            };
            let write = Write::put(id.clone(), json!({"by": n})).when(Condition::Absent);
            let outcome = store.commit(Commit::single(write)).await.expect("commit");
            (id, contested, outcome.is_committed())
        }));
    }
    let mut winners_per_contested_key = std::collections::HashMap::new();
    for task in tasks {
        let (id, contested, committed) = task.await.expect("task");
        if contested {
            *winners_per_contested_key.entry(id).or_insert(0) += usize::from(committed);
        } else {
            assert!(committed, "an uncontested create commits");
        }
    }
    assert_eq!(winners_per_contested_key.len(), contested_keys);
    assert!(winners_per_contested_key.values().all(|winners| *winners == 1), "exactly one winner per contested key");
    for (id, _) in winners_per_contested_key {
        assert_eq!(get(&*store, &id).await.expect("read").version, 1);
    }
    let stats = store.group_commit_stats().expect("postgres reports group-commit stats");
    assert_eq!(stats.commits_total, 500);
    assert!(stats.transactions_total < stats.commits_total, "commits shared transactions: {stats:?}");
    assert!(stats.largest_batch > 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn concurrent_multi_key_commits_in_opposite_orders_do_not_deadlock() {
    let (first, second) = two_stores_on_one_schema().await;
    let pairs: Arc<Vec<(hoard::store::DocId, hoard::store::DocId)>> =
        Arc::new((0..4).map(|n| (doc("bank", &format!("a-{n}")), doc("bank", &format!("b-{n}")))).collect());
    let mut tasks = Vec::new();
    for task_index in 0..16usize {
        let store = if task_index % 2 == 0 { first.clone() } else { second.clone() };
        let pairs = pairs.clone();
        tasks.push(tokio::spawn(async move {
            let mut committed = 0u64;
            for round in 0..20usize {
                let (a, b) = &pairs[(task_index + round) % pairs.len()];
                // Half the tasks name the keys a-then-b, the other half b-then-a.
                let writes = if task_index % 4 < 2 {
                    vec![Write::increment(a.clone(), 1), Write::increment(b.clone(), 1)]
                } else {
                    vec![Write::increment(b.clone(), 1), Write::increment(a.clone(), 1)]
                };
                match store.commit(Commit::new(writes)).await.expect("no deadlock or error surfaces") {
                    CommitOutcome::Committed { .. } => committed += 1,
                    CommitOutcome::Conflict(conflict) => {
                        panic!("unconditional increments conflicted: {conflict}")
                    }
                }
            }
            committed
        }));
    }
    let finished = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        let mut total = 0;
        for task in tasks {
            total += task.await.expect("task");
        }
        total
    })
    .await
    .expect("all commits finish: no deadlock");
    assert_eq!(finished, 16 * 20);
    let mut sum = 0;
    for (a, b) in pairs.iter() {
        let docs = first.get_many(&[a.clone(), b.clone()]).await.expect("read");
        let (a_count, b_count) =
            (docs[0].value.as_ref().and_then(Value::as_i64), docs[1].value.as_ref().and_then(Value::as_i64));
        assert_eq!(a_count, b_count, "each pair moved together");
        sum += a_count.expect("count");
    }
    assert_eq!(sum, 16 * 20);
}

/// A placeholder row (made to lock a key a conflicting commit named) must read as absent and
/// must not be listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn keys_locked_by_commits_that_did_not_create_them_still_read_as_absent() {
    let t = postgres(TestConfig::default()).await;
    let store = &*t.store;
    let (kept, ghost) = (doc("players", "kept"), doc("players", "ghost"));
    let commit = Commit::new(vec![
        Write::put(kept.clone(), json!(1)),
        Write::put(ghost.clone(), json!(2)).when(Condition::Version(5)),
    ]);
    assert!(!store.commit(commit).await.expect("commit").is_committed());
    // A batch that changes something commits, so placeholders of its conflicting commits stay.
    let both = [
        Commit::new(vec![Write::put(kept.clone(), json!(1))]),
        Commit::new(vec![Write::put(ghost.clone(), json!(2)).when(Condition::Version(5))]),
    ];
    let outcomes = futures_util::future::join_all(both.into_iter().map(|commit| store.commit(commit))).await;
    assert!(outcomes[0].as_ref().expect("commit").is_committed());
    assert!(!outcomes[1].as_ref().expect("commit").is_committed());
    let document = get(store, &ghost).await.expect("read");
    assert_eq!(document, hoard::store::Document::absent(ghost.clone()));
    let page = store.list_keys(&ghost.store, &hoard::store::ListQuery::default()).await.expect("list");
    assert_eq!(page.keys.iter().map(|key| key.as_str()).collect::<Vec<_>>(), vec!["kept"]);
}

/// When PostgreSQL drops every connection of a store (a failover, a restart, an operator's
/// pg_terminate_backend), commits fail cleanly as `Unavailable` or `OutcomeUnknown`, then work
/// again on fresh connections, and the listener reconnects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn store_recovers_after_its_connections_are_terminated() {
    let schema = fresh_schema_name();
    let t = postgres_in_schema(TestConfig::default(), schema.clone()).await;
    let store = t.store.clone();
    let id = doc("players", "survivor");
    store.commit(Commit::single(Write::put(id.clone(), json!(1)))).await.expect("commit");
    let mut subscription = store.subscribe();
    // The schema is in the application name: terminate exactly this store's connections.
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("hoard:{schema}")],
        )
        .await
        .expect("terminate");
    let terminated: i64 = row.get(0);
    assert!(terminated >= 2, "the listener and at least one pooled connection were terminated");
    let mut committed = false;
    for _attempt in 0..20 {
        match store.commit(Commit::single(Write::increment(doc("players", "counter"), 1))).await {
            Ok(outcome) => {
                committed = outcome.is_committed();
                break;
            }
            Err(error) => assert!(error.is_transient(), "a dropped connection is a transient error: {error}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(committed, "commits work again on fresh connections");
    assert_eq!(get(&*store, &id).await.expect("read").value, Some(json!(1)));
    let sent = Notification { topic: "after-reconnect".into(), payload: "hello".into() };
    let received = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            // Notifications sent while the listener was reconnecting are lost (best-effort), so
            // keep sending until one gets through.
            store.notify(sent.clone()).await.expect("notify");
            if let Ok(Ok(notification)) =
                tokio::time::timeout(std::time::Duration::from_millis(300), subscription.recv()).await
            {
                return notification;
            }
        }
    })
    .await
    .expect("the listener reconnects and delivers again");
    assert_eq!(received, sent);
}
