//! The PostgreSQL backend's two deployment choices, each run through the whole conformance suite
//! (`conformance_backends!` in main.rs) and here through what the suite cannot show:
//! - `postgres_pooled`: hoard through a transaction-mode PgBouncer (`Pooler::Transaction`), its
//!   notifications on a direct connection;
//! - `postgres_portable`: the distributed-SQL subset (`PostgresProfile::Portable`): polled
//!   notifications, migrations without advisory locks, SERIALIZABLE transactions.
//!
//! The PostgreSQL rule of `backends` holds for every test here.

use std::sync::Arc;
use std::time::Duration;

use hoard::store::postgres::{PostgresOptions, PostgresStore};
use hoard::store::{Commit, Condition, DocId, Notification, Pooler, PostgresProfile, SharedStore, Write, get};
use serde_json::{Value, json};

use crate::backends::{TestConfig, TestStore, fresh_schema_name, postgres_url, require_postgres};
use crate::pgbouncer::Pgbouncer;
use crate::store_conformance::doc;

fn options(config: TestConfig, url: String, schema: String) -> PostgresOptions {
    PostgresOptions {
        url,
        schema,
        limits: config.limits,
        history_policy: config.history_policy,
        // Short enough that the suite's notification case and the hop tests see a poll quickly.
        notification_poll_interval_ms: 20,
        ..PostgresOptions::default()
    }
}

/// The portable profile on stock PostgreSQL, in a fresh schema.
pub async fn postgres_portable(config: TestConfig) -> TestStore {
    let url = postgres_url();
    require_postgres(&url).await;
    let options = PostgresOptions { profile: PostgresProfile::Portable, ..options(config, url, fresh_schema_name()) };
    let store = PostgresStore::open(options).await.expect("open the portable-profile store");
    TestStore { store: Arc::new(store), _guard: Box::new(()) }
}

/// Through a private transaction-mode PgBouncer, LISTENing on a direct connection.
pub async fn postgres_pooled(config: TestConfig) -> TestStore {
    let url = postgres_url();
    require_postgres(&url).await;
    let pooler = tokio::task::spawn_blocking({
        let url = url.clone();
        move || Pgbouncer::start_in_front_of(&url)
    })
    .await
    .expect("start pgbouncer");
    let options = PostgresOptions {
        pooler: Pooler::Transaction,
        listen_url: Some(url),
        ..options(config, pooler.url(), fresh_schema_name())
    };
    let store = PostgresStore::open(options)
        .await
        .unwrap_or_else(|error| panic!("open the store through pgbouncer: {error}; pgbouncer's log: {}", pooler.log()));
    TestStore { store: Arc::new(store), _guard: Box::new(pooler) }
}

async fn cas_increments(store: SharedStore, id: hoard::store::DocId, increments: u64) {
    for _ in 0..increments {
        loop {
            let current = get(&*store, &id).await.expect("read");
            let count = current.value.as_ref().and_then(Value::as_i64).unwrap_or(0);
            let write = Write::put(id.clone(), json!(count + 1)).when(Condition::Version(current.version));
            match store.commit(Commit::single(write)).await {
                Ok(outcome) if outcome.is_committed() => break,
                Ok(_) => continue,
                // A batch that lost every serialization retry applied nothing: try again.
                Err(error) if error.is_transient() => continue,
                Err(error) => panic!("increment failed: {error}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn without_the_pooler_setting_pgbouncer_refuses_hoards_startup_options_with_a_clear_error() {
    // The finding this setting answers: hoard's direct-connection startup options are refused by
    // PgBouncer ("unsupported startup parameter: options").
    let url = postgres_url();
    require_postgres(&url).await;
    let pooler = tokio::task::spawn_blocking(move || Pgbouncer::start_in_front_of(&url)).await.expect("pgbouncer");
    let direct = PostgresOptions {
        connect_timeout_ms: 3_000,
        ..options(TestConfig::default(), pooler.url(), fresh_schema_name())
    };
    let error = PostgresStore::open(direct).await.expect_err("PgBouncer refuses the options startup parameter");
    assert!(error.to_string().contains("options"), "the error names the refused parameter: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn behind_a_transaction_pooler_without_a_listen_url_the_full_profile_is_refused_before_connecting() {
    let options = PostgresOptions {
        pooler: Pooler::Transaction,
        ..options(TestConfig::default(), postgres_url(), fresh_schema_name())
    };
    let error = PostgresStore::open(options).await.expect_err("LISTEN needs a direct connection");
    assert!(error.to_string().contains("listen url"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn two_stores_through_one_pgbouncer_share_a_schema_lose_no_increment_and_hear_each_other() {
    let url = postgres_url();
    require_postgres(&url).await;
    let pooler = Arc::new(
        tokio::task::spawn_blocking({
            let url = url.clone();
            move || Pgbouncer::start_in_front_of(&url)
        })
        .await
        .expect("pgbouncer"),
    );
    let schema = fresh_schema_name();
    let open = || {
        let options = PostgresOptions {
            pooler: Pooler::Transaction,
            listen_url: Some(url.clone()),
            // More client connections than PgBouncer has server connections: transactions move.
            pool_size: 8,
            ..options(TestConfig::default(), pooler.url(), schema.clone())
        };
        async move { Arc::new(PostgresStore::open(options).await.expect("open through pgbouncer")) as SharedStore }
    };
    let (first, second) = (open().await, open().await);
    notification_crosses(&first, &second, "release players/alice", "over the direct LISTEN connection").await;

    let id = doc("counters", "pooled");
    increments_from_both_land_exactly_once(&first, &second, &id, &first).await;
    let versions = first.list_versions(&id, &Default::default()).await.expect("history through the pooler");
    assert!(!versions.is_empty());
    first.get_version(&id, 1).await.expect("a version rebuilt through the pooler").expect("kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn portable_profile_migrates_once_when_eight_processes_open_a_fresh_schema_at_once() {
    let url = postgres_url();
    require_postgres(&url).await;
    let schema = fresh_schema_name();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    // Advisory locks held by this schema's connections (other tests' stores hold their own).
    let advisory_locks_of_this_schema = || async {
        client
            .query_one(
                "SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND a.application_name = $1",
                &[&format!("hoard:{schema}")],
            )
            .await
            .expect("read pg_locks")
            .get::<_, i64>(0)
    };
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let options = PostgresOptions {
                profile: PostgresProfile::Portable,
                ..options(TestConfig::default(), url.clone(), schema.clone())
            };
            tokio::spawn(async move { PostgresStore::open(options).await })
        })
        .collect();
    // Sampled while the opens race (a full-profile open holds its migration lock meanwhile).
    let mut samples = 0;
    while !opens.iter().all(|open| open.is_finished()) {
        assert_eq!(advisory_locks_of_this_schema().await, 0, "the portable profile takes no advisory lock");
        samples += 1;
    }
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.expect("task").expect("every racing open succeeds (the losers retry)"));
    }
    let rows = client
        .query(
            &format!("SELECT version, count(*) FROM \"{schema}\".schema_version GROUP BY version ORDER BY version"),
            &[],
        )
        .await
        .expect("read the schema versions");
    let versions: Vec<(i64, i64)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    let expected: Vec<(i64, i64)> =
        (1..=hoard::store::postgres::SCHEMA_VERSION_LATEST).map(|version| (version, 1)).collect();
    assert_eq!(versions, expected, "each migration recorded exactly once");
    eprintln!("portable migration race: {samples} pg_locks samples while 8 opens raced, none advisory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn portable_profile_uses_no_listen_and_two_stores_hear_each_other_by_polling_and_lose_no_increment() {
    let url = postgres_url();
    require_postgres(&url).await;
    let schema = fresh_schema_name();
    let open = || {
        let options = PostgresOptions {
            profile: PostgresProfile::Portable,
            ..options(TestConfig::default(), url.clone(), schema.clone())
        };
        async move { Arc::new(PostgresStore::open(options).await.expect("open portable")) as SharedStore }
    };
    let (first, second) = (open().await, open().await);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let listening = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query ILIKE 'LISTEN%'",
            &[&format!("hoard:{schema}")],
        )
        .await
        .expect("read pg_stat_activity");
    assert_eq!(listening.get::<_, i64>(0), 0, "no connection of the portable profile LISTENs");

    notification_crosses(&first, &second, "polled", "through the poller").await;

    // Under SERIALIZABLE, contention shows up as serialization failures, which the committer
    // retries: every increment still lands exactly once.
    let id = doc("counters", "portable");
    increments_from_both_land_exactly_once(&first, &second, &id, &second).await;
}

/// A notification `first` sends reaches a subscriber of `second` (`how`: the path it takes).
async fn notification_crosses(first: &SharedStore, second: &SharedStore, payload: &str, how: &str) {
    let mut subscription = second.subscribe();
    let sent = Notification { topic: "holder/b".into(), payload: payload.into() };
    first.notify(sent.clone()).await.expect("notify");
    let received = tokio::time::timeout(Duration::from_secs(10), subscription.recv())
        .await
        .unwrap_or_else(|_| panic!("the notification arrives {how}"))
        .expect("subscription open");
    assert_eq!(received, sent);
}

/// Eight tasks, half on each store, each make 20 compare-and-set increments of `id`: read back
/// through `reader`, every one landed exactly once.
async fn increments_from_both_land_exactly_once(
    first: &SharedStore,
    second: &SharedStore,
    id: &DocId,
    reader: &SharedStore,
) {
    let tasks: Vec<_> = (0..8)
        .map(|index| {
            tokio::spawn(cas_increments(if index % 2 == 0 { first.clone() } else { second.clone() }, id.clone(), 20))
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let document = get(&**reader, id).await.expect("read");
    assert_eq!((document.value, document.version), (Some(json!(160)), 160), "no increment lost or doubled");
}
