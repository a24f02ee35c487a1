//! The database going away under load, on private clusters (`pg_cluster`): a crash and restart of
//! the only PostgreSQL server, and failover to a synchronous streaming standby reached through a
//! multi-host URL with `target_session_attrs=read-write`.
//!
//! One audit for all of them: every commit the store acknowledged is in the database afterwards
//! (its version, with the same commit id, in the key's history), and a fencing epoch acknowledged
//! before the failure still fences after it, so no stale epoch can commit. The store recovers on
//! its own: the test never reopens it. A control (a standby that fell behind, promoted) shows that
//! the audit sees acknowledged commits go missing when they do.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hoard::store::postgres::{PostgresOptions, PostgresStore};
use hoard::store::{
    Commit, CommitId, CommitOutcome, Condition, ConflictKind, DocId, HolderId, LeaseOp, SharedStore, Store, StoreError,
    VersionQuery, Write, get,
};
use serde_json::json;

use crate::backends::fresh_schema_name;
use crate::pg_cluster::{PrivateCluster, binaries_or_skip};
use crate::store_conformance::doc;

/// Writers running at once, each with its own keys (so a conflict means a lost or doubled commit).
const WRITERS: usize = 6;
const KEYS_PER_WRITER: usize = 4;
/// Acknowledged commits each phase waits for, so every phase has load in flight.
const COMMITS_PER_PHASE: u64 = 150;
/// The longest a test waits for the store to recover by itself.
const RECOVERY_WAIT_MS: u64 = 60_000;

/// What the writers were told, and when.
#[derive(Default)]
struct Ledger {
    acknowledged: Mutex<Vec<(DocId, u64, CommitId)>>,
    acknowledged_count: AtomicU64,
    /// Commits answered `Unavailable`, which promises that nothing applied.
    refused: Mutex<Vec<CommitId>>,
    outcome_unknown: AtomicU64,
    unavailable: AtomicU64,
    conflicts: AtomicU64,
}

impl Ledger {
    fn acked(&self) -> u64 {
        self.acknowledged_count.load(Ordering::SeqCst)
    }
}

async fn open_store(url: String, schema: String) -> SharedStore {
    let options = PostgresOptions {
        url,
        schema,
        connect_timeout_ms: 2_000,
        statement_timeout_ms: 10_000,
        pool_size: 8,
        ..PostgresOptions::default()
    };
    Arc::new(PostgresStore::open(options).await.expect("open the store on the private cluster"))
}

/// Compare-and-set writes on the writer's own keys until `stop`, recording every answer.
async fn writer(store: SharedStore, writer_index: usize, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) {
    let keys: Vec<DocId> =
        (0..KEYS_PER_WRITER).map(|k| doc("failover", &format!("writer-{writer_index}-key-{k}"))).collect();
    let mut turn = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let id = &keys[turn % keys.len()];
        turn += 1;
        let current = match get(&*store, id).await {
            Ok(document) => document,
            Err(_) => {
                ledger.unavailable.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let write = Write::put(id.clone(), json!({ "writer": writer_index, "n": current.version + 1 }))
            .when(Condition::Version(current.version));
        let commit = Commit::single(write);
        let commit_id = commit.id;
        match store.commit(commit).await {
            Ok(CommitOutcome::Committed { commit_id, applied, .. }) => {
                let version = applied.first().expect("one write applied").version;
                ledger.acknowledged.lock().expect("ledger").push((id.clone(), version, commit_id));
                ledger.acknowledged_count.fetch_add(1, Ordering::SeqCst);
            }
            Ok(CommitOutcome::Conflict(_)) => {
                // Only after an unknown outcome that applied: the read above was older than it.
                ledger.conflicts.fetch_add(1, Ordering::SeqCst);
            }
            Err(StoreError::OutcomeUnknown { .. }) => {
                ledger.outcome_unknown.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                ledger.refused.lock().expect("ledger").push(commit_id);
                ledger.unavailable.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

struct Load {
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start_load(store: &SharedStore) -> Load {
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks =
        (0..WRITERS).map(|index| tokio::spawn(writer(store.clone(), index, ledger.clone(), stop.clone()))).collect();
    Load { ledger, stop, tasks }
}

impl Load {
    /// Waits until `more` further commits are acknowledged (the store works, or recovered).
    async fn wait_for_acks(&self, more: u64) -> Duration {
        let target = self.ledger.acked() + more;
        let started = Instant::now();
        while self.ledger.acked() < target {
            assert!(
                started.elapsed() < Duration::from_millis(RECOVERY_WAIT_MS),
                "the store did not recover on its own within {RECOVERY_WAIT_MS} ms ({} of {target} acknowledged)",
                self.ledger.acked()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }

    async fn finish(self) -> Arc<Ledger> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("writer task");
        }
        self.ledger
    }
}

/// What the database holds, against what the writers were told.
struct Audit {
    /// Acknowledged commits whose version, written by that commit, is not in the key's history.
    missing: Vec<(DocId, u64, CommitId)>,
    /// Commits answered `Unavailable` ("nothing was applied") that are in the history anyway.
    applied_after_refusal: Vec<CommitId>,
}

async fn audit(store: &dyn Store, ledger: &Ledger) -> Audit {
    let acknowledged = ledger.acknowledged.lock().expect("ledger").clone();
    let mut history: BTreeMap<DocId, BTreeMap<u64, CommitId>> = BTreeMap::new();
    for id in acknowledged.iter().map(|(id, _, _)| id.clone()).collect::<std::collections::BTreeSet<_>>() {
        let mut versions = BTreeMap::new();
        let mut before_version = None;
        loop {
            let query = VersionQuery { before_version, limit: store.limits().page_size_max };
            let page = store.list_versions(&id, &query).await.expect("list versions after recovery");
            let Some(last) = page.last() else { break };
            before_version = Some(last.version);
            for info in &page {
                versions.insert(info.version, info.commit_id);
            }
        }
        history.insert(id, versions);
    }
    let refused: std::collections::BTreeSet<CommitId> =
        ledger.refused.lock().expect("ledger").iter().copied().collect();
    let applied_after_refusal =
        history.values().flat_map(|versions| versions.values()).filter(|id| refused.contains(id)).copied().collect();
    let missing = acknowledged
        .into_iter()
        .filter(|(id, version, commit_id)| {
            history.get(id).and_then(|versions| versions.get(version)) != Some(commit_id)
        })
        .collect();
    Audit { missing, applied_after_refusal }
}

/// A holder takes a key; returns the epoch the store acknowledged.
async fn acquire(store: &dyn Store, holder: &HolderId, id: &DocId, condition: Condition) -> u64 {
    store.renew_holder(holder, 60_000).await.expect("renew holder");
    let write = Write::new(id.clone()).when(condition).lease(LeaseOp::Acquire(holder.clone()));
    match store.commit(Commit::single(write)).await.expect("acquire") {
        CommitOutcome::Committed { applied, .. } => applied.first().expect("one write").epoch,
        CommitOutcome::Conflict(conflict) => panic!("acquire refused: {conflict:?}"),
    }
}

/// After the failure: the epoch taken before it still fences. A second holder steals the key on
/// the first's epoch (so that epoch must still be the row's), and the first holder's write at its
/// old epoch is refused.
async fn assert_fence_survived(store: &dyn Store, id: &DocId, first: &HolderId, first_epoch: u64) {
    let document = get(store, id).await.expect("read the fenced key");
    assert_eq!(document.lease.holder.as_ref(), Some(first), "the acknowledged acquisition survived");
    assert_eq!(document.lease.epoch, first_epoch, "the acknowledged epoch survived");
    let second = HolderId::generate("second");
    let second_epoch =
        acquire(store, &second, id, Condition::Lease { holder: first.clone(), epoch: first_epoch }).await;
    assert!(second_epoch > first_epoch, "a steal bumps the epoch");
    let stale =
        Write::put(id.clone(), json!("stale")).when(Condition::Lease { holder: first.clone(), epoch: first_epoch });
    let outcome = store.commit(Commit::single(stale)).await.expect("stale write answered");
    assert_eq!(
        outcome.conflict().map(|c| c.kind),
        Some(ConflictKind::LeaseMismatch),
        "a write at the epoch from before the failure never commits"
    );
}

async fn blocking<T: Send + 'static>(step: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(step).await.expect("cluster step")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn a_crash_and_restart_of_postgres_loses_no_acknowledged_commit_and_the_store_recovers_alone() {
    let Some(bin) = binaries_or_skip("postgres crash and restart") else { return };
    let cluster = Arc::new(blocking(move || PrivateCluster::start_primary(&bin, "restart")).await);
    let store = open_store(cluster.url(), fresh_schema_name()).await;
    let fenced = doc("failover", "fenced");
    let first = HolderId::generate("first");
    let first_epoch = acquire(&*store, &first, &fenced, Condition::LeaseFree).await;

    let load = start_load(&store);
    load.wait_for_acks(COMMITS_PER_PHASE).await;
    let crashed = Instant::now();
    let crash = cluster.clone();
    blocking(move || crash.crash()).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let restart = cluster.clone();
    blocking(move || restart.start()).await;
    load.wait_for_acks(1).await;
    let unavailable = crashed.elapsed();
    load.wait_for_acks(COMMITS_PER_PHASE).await;
    let ledger = load.finish().await;

    let Audit { missing, applied_after_refusal } = audit(&*store, &ledger).await;
    eprintln!(
        "restart: {} acknowledged, {} outcome unknown, {} unavailable answers, {} conflicts, {} missing; first commit {unavailable:?} after the crash (1 s of it down on purpose)",
        ledger.acked(),
        ledger.outcome_unknown.load(Ordering::SeqCst),
        ledger.unavailable.load(Ordering::SeqCst),
        ledger.conflicts.load(Ordering::SeqCst),
        missing.len(),
    );
    assert!(missing.is_empty(), "acknowledged commits lost across a crash and restart: {missing:?}");
    assert!(applied_after_refusal.is_empty(), "commits answered Unavailable applied: {applied_after_refusal:?}");
    assert!(
        ledger.unavailable.load(Ordering::SeqCst) + ledger.outcome_unknown.load(Ordering::SeqCst) > 0,
        "the crash was felt"
    );
    assert_fence_survived(&*store, &fenced, &first, first_epoch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn failover_to_a_synchronous_standby_loses_no_acknowledged_commit_and_no_stale_epoch_commits() {
    let Some(bin) = binaries_or_skip("postgres failover") else { return };
    let primary = Arc::new(blocking(move || PrivateCluster::start_primary(&bin, "primary")).await);
    let standby_primary = primary.clone();
    let standby = Arc::new(blocking(move || PrivateCluster::start_standby_of(&standby_primary, "standby1")).await);
    let sync_primary = primary.clone();
    blocking(move || sync_primary.require_synchronous_standby("standby1")).await;

    // What an operator configures: both hosts, and "connect to whichever takes writes".
    let url = format!(
        "postgres://postgres@{},{}/postgres?target_session_attrs=read-write",
        primary.host_port(),
        standby.host_port()
    );
    let store = open_store(url, fresh_schema_name()).await;
    let fenced = doc("failover", "fenced");
    let first = HolderId::generate("first");
    let first_epoch = acquire(&*store, &first, &fenced, Condition::LeaseFree).await;

    let load = start_load(&store);
    load.wait_for_acks(COMMITS_PER_PHASE).await;
    let acked_before_crash = load.ledger.acked();
    let crashed = Instant::now();
    let crash = primary.clone();
    blocking(move || crash.crash()).await;
    let promote = standby.clone();
    blocking(move || promote.promote()).await;
    let promoted_after = crashed.elapsed();
    load.wait_for_acks(1).await;
    let unavailable = crashed.elapsed();
    load.wait_for_acks(COMMITS_PER_PHASE).await;
    let ledger = load.finish().await;

    let Audit { missing, applied_after_refusal } = audit(&*store, &ledger).await;
    eprintln!(
        "failover: {} acknowledged ({acked_before_crash} before the crash), {} outcome unknown, {} unavailable answers, \
         {} missing; promoted {promoted_after:?} after the crash, first commit on the new primary {unavailable:?} after it",
        ledger.acked(),
        ledger.outcome_unknown.load(Ordering::SeqCst),
        ledger.unavailable.load(Ordering::SeqCst),
        missing.len(),
    );
    assert!(missing.is_empty(), "acknowledged commits lost in the failover: {missing:?}");
    assert!(applied_after_refusal.is_empty(), "commits answered Unavailable applied: {applied_after_refusal:?}");
    assert_eq!(
        standby.sql("SELECT pg_is_in_recovery()"),
        "f",
        "the writes after the failover went to the promoted standby"
    );
    assert_fence_survived(&*store, &fenced, &first, first_epoch).await;
}

/// The control: the same audit on a standby that fell behind (asynchronous, stopped while the
/// primary acknowledged commits, then promoted) must find the commits it never received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
async fn control_a_promoted_standby_that_fell_behind_is_caught_losing_acknowledged_commits() {
    let Some(bin) = binaries_or_skip("postgres failover control") else { return };
    let primary = Arc::new(blocking(move || PrivateCluster::start_primary(&bin, "control-primary")).await);
    let standby_primary = primary.clone();
    let standby = Arc::new(blocking(move || PrivateCluster::start_standby_of(&standby_primary, "laggard")).await);
    let async_primary = primary.clone();
    blocking(move || async_primary.wait_for_replication_state("laggard", "async")).await;
    let schema = fresh_schema_name();
    let on_primary = open_store(primary.url(), schema.clone()).await;

    let load = start_load(&on_primary);
    load.wait_for_acks(COMMITS_PER_PHASE).await;
    // Let the standby catch up with the schema and the first commits, then cut it off.
    let caught_up = primary.sql("SELECT pg_current_wal_lsn()");
    let replayed = standby.clone();
    blocking(move || {
        let started = Instant::now();
        while replayed.sql(&format!("SELECT pg_last_wal_replay_lsn() >= '{caught_up}'::pg_lsn")) != "t" {
            assert!(started.elapsed() < Duration::from_secs(60), "the standby never caught up");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await;
    let cut = standby.clone();
    blocking(move || cut.stop()).await;
    load.wait_for_acks(COMMITS_PER_PHASE).await;
    let ledger = load.finish().await;
    let crash = primary.clone();
    blocking(move || crash.crash()).await;
    let restart = standby.clone();
    blocking(move || {
        restart.start();
        restart.promote();
    })
    .await;

    let on_standby = open_store(standby.url(), schema).await;
    let Audit { missing, .. } = audit(&*on_standby, &ledger).await;
    eprintln!("control: {} acknowledged, {} missing after promoting the laggard", ledger.acked(), missing.len());
    assert!(
        missing.len() as u64 >= COMMITS_PER_PHASE,
        "the audit must see the commits the laggard never received ({} missing of {} acknowledged)",
        missing.len(),
        ledger.acked()
    );
}
