//! `hoard serve` while its PostgreSQL crashes and restarts under load (a private cluster, so the
//! machine's shared PostgreSQL is never touched).
//!
//! What must hold: every request during the outage is answered 503 with `Retry-After` (never a
//! 500, never a hang past the request timeout); `/readyz` is 503 the whole time the database is
//! down, including while it is restarting; the server recovers on its own (nothing is restarted but
//! the database); and nothing acknowledged is lost or applied twice: clients retry each increment
//! with its own Idempotency-Key until it is acknowledged, and every key ends at exactly the number
//! of increments acknowledged on it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hoard::store::postgres::{PostgresOptions, PostgresStore};
use serde_json::{Value, json};

use crate::local_backends::fresh_schema_name;
use crate::pg_cluster::{PrivateCluster, binaries_or_skip};
use crate::support::{Client, GAME_SECRET, start};

const CLIENTS: usize = 4;
const KEYS_PER_CLIENT: usize = 3;
/// Increments acknowledged before the crash, and again after the recovery.
const INCREMENTS_PER_PHASE: u64 = 60;
/// The longest the test waits for the service to recover by itself.
const RECOVERY_WAIT_MS: u64 = 60_000;

#[derive(Default)]
struct Observed {
    /// Acknowledged increments per key.
    acknowledged: Mutex<BTreeMap<String, u64>>,
    acknowledged_total: AtomicU64,
    /// Every status answered during the run, with how many times.
    statuses: Mutex<BTreeMap<u16, u64>>,
    /// 503 answers without a Retry-After header.
    unavailable_without_retry_after: AtomicU64,
}

async fn send_update(client: &Client, key: &str, idempotency_key: &str) -> (u16, bool) {
    let body = json!({ "ops": [{ "op": "increment", "path": "/count", "by": 1 }] });
    let response = client
        .http
        .post(format!("{}/v1/stores/players/keys/{key}/update", client.url))
        .bearer_auth(GAME_SECRET)
        .header("Idempotency-Key", idempotency_key)
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("the server answers within the request timeout, database or not");
    let retry_after = response.headers().contains_key("retry-after");
    (response.status().as_u16(), retry_after)
}

/// One game server's worth of increments: each retried with the same key until acknowledged.
async fn client_loop(client: Client, index: usize, observed: Arc<Observed>, stop: Arc<AtomicBool>) {
    let mut sequence = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let key = format!("outage-{index}-{}", sequence % KEYS_PER_CLIENT as u64);
        let idempotency_key = format!("client-{index}-increment-{sequence}");
        loop {
            let (status, retry_after) = send_update(&client, &key, &idempotency_key).await;
            *observed.statuses.lock().expect("statuses").entry(status).or_default() += 1;
            match status {
                200 => {
                    *observed.acknowledged.lock().expect("acknowledged").entry(key.clone()).or_default() += 1;
                    observed.acknowledged_total.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                503 => {
                    if !retry_after {
                        observed.unavailable_without_retry_after.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => panic!("unexpected status {other} for an increment during a database outage"),
            }
        }
        sequence += 1;
    }
}

async fn wait_for_acks(observed: &Observed, more: u64) {
    let target = observed.acknowledged_total.load(Ordering::SeqCst) + more;
    let started = Instant::now();
    while observed.acknowledged_total.load(Ordering::SeqCst) < target {
        assert!(started.elapsed() < Duration::from_millis(RECOVERY_WAIT_MS), "hoard serve did not recover on its own");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether PostgreSQL at `url` accepts a connection now.
async fn database_answers(url: &str) -> bool {
    let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
    matches!(tokio::time::timeout(Duration::from_millis(1_000), connect).await, Ok(Ok(_)))
}

async fn readyz(client: &Client) -> u16 {
    client.send("GET", "/readyz", None, None, None).await.0
}

async fn blocking<T: Send + 'static>(step: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(step).await.expect("cluster step")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn a_postgres_restart_mid_load_answers_503_with_retry_after_and_loses_nothing_acknowledged() {
    let Some(bin) = binaries_or_skip("hoard serve through a PostgreSQL restart") else { return };
    let cluster = Arc::new(blocking(move || PrivateCluster::start_primary(&bin, "serve-outage")).await);
    let options = PostgresOptions {
        url: cluster.url(),
        schema: fresh_schema_name(),
        connect_timeout_ms: 1_000,
        statement_timeout_ms: 5_000,
        ..PostgresOptions::default()
    };
    let store = Arc::new(PostgresStore::open(options).await.expect("open the store on the private cluster"));
    let server = start(store).await;
    let client = Client::new(&server.url);
    assert_eq!(readyz(&client).await, 200, "ready before the outage");

    let observed = Arc::new(Observed::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| tokio::spawn(client_loop(client.clone(), index, observed.clone(), stop.clone())))
        .collect();
    wait_for_acks(&observed, INCREMENTS_PER_PHASE).await;

    // Down: crash, then a restart that takes its time (crash recovery runs at start).
    let crash = cluster.clone();
    blocking(move || crash.crash()).await;
    let down_since = Instant::now();
    let mut readyz_while_down = BTreeMap::<u16, u64>::new();
    while down_since.elapsed() < Duration::from_millis(1_500) {
        *readyz_while_down.entry(readyz(&client).await).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restart = cluster.clone();
    let restarting = tokio::task::spawn_blocking(move || restart.start());
    let mut ready_once_the_database_answered = 0u64;
    while !restarting.is_finished() {
        // The restart returns only after PostgreSQL accepts connections, so a 200 here is true
        // when the database answers right after it; only a 200 while it still refuses is a lie.
        let status = readyz(&client).await;
        if status == 200 && database_answers(&cluster.url()).await {
            ready_once_the_database_answered += 1;
        } else {
            *readyz_while_down.entry(status).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    restarting.await.expect("restart");
    let restarted = Instant::now();
    let mut ready_after_ms = None;
    while ready_after_ms.is_none() {
        if readyz(&client).await == 200 {
            ready_after_ms = Some(restarted.elapsed().as_millis());
        } else {
            assert!(restarted.elapsed() < Duration::from_millis(RECOVERY_WAIT_MS), "/readyz never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    wait_for_acks(&observed, INCREMENTS_PER_PHASE).await;
    stop.store(true, Ordering::SeqCst);
    for task in clients {
        task.await.expect("client task");
    }

    let statuses = observed.statuses.lock().expect("statuses").clone();
    eprintln!(
        "outage: answers by status {statuses:?}; /readyz while down or restarting {readyz_while_down:?} \
         (and {ready_once_the_database_answered} ready once it answered again); \
         ready {ready_after_ms:?} ms after the restart; {} increments acknowledged",
        observed.acknowledged_total.load(Ordering::SeqCst)
    );
    assert_eq!(
        readyz_while_down.keys().copied().collect::<Vec<_>>(),
        vec![503],
        "/readyz is 503 whenever the database is down"
    );
    assert!(statuses.contains_key(&503), "the outage was felt by the clients");
    assert_eq!(observed.unavailable_without_retry_after.load(Ordering::SeqCst), 0, "every 503 carries Retry-After");

    // Exactly once: each key holds the number of increments acknowledged on it.
    let acknowledged = observed.acknowledged.lock().expect("acknowledged").clone();
    for (key, count) in acknowledged {
        let (status, body) = client.get(&format!("/v1/stores/players/keys/{key}"), GAME_SECRET).await;
        assert_eq!(status, 200, "read {key}: {body}");
        let stored = body.pointer("/value/count").and_then(Value::as_u64);
        assert_eq!(stored, Some(count), "{key}: every acknowledged increment applied exactly once");
    }
}
