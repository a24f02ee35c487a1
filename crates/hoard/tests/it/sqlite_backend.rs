//! SQLite-only behaviour the conformance suite cannot show: several OS processes on one file,
//! group commit, durability across SIGKILL, reopening, migrations, and bad paths.
//!
//! The multi-process tests re-run this test binary as child processes, each running one helper
//! test (`--exact`); a helper does nothing unless its environment variable names a database, so
//! in a normal run it passes at once.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use hoard::store::sqlite::{SQLITE_SCHEMA_VERSION, SqliteOptions, SqliteStore};
use hoard::store::{
    Commit, CommitOutcome, Condition, DocId, HolderId, LeaseOp, ListQuery, Notification, Store, StoreError,
    VersionQuery, Write, get,
};
use serde_json::{Map, Value, json};

use crate::store_conformance::{commit_ok, doc};

const CHILD_CAS_DB_ENV: &str = "HOARD_CHILD_DB";
const CHILD_CAS_INCREMENTS_ENV: &str = "HOARD_CHILD_INCREMENTS";
const CHILD_ACK_DB_ENV: &str = "HOARD_CHILD_ACK_DB";

async fn open_at(path: &Path) -> SqliteStore {
    SqliteStore::open(SqliteOptions { path: path.to_path_buf(), ..SqliteOptions::default() })
        .await
        .expect("open sqlite store")
}

/// Runs one helper test of this binary as a separate OS process.
fn child_process(test_name: &str, envs: &[(&str, String)]) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("test binary path"));
    command.args(["--exact", test_name, "--nocapture", "--test-threads=1"]);
    for (name, value) in envs {
        command.env(name, value);
    }
    command
}

fn counter(document: &hoard::store::Document) -> i64 {
    document.value.as_ref().and_then(Value::as_i64).unwrap_or(0)
}

/// Child helper: compare-and-set increments of one key, retrying on conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_cas_increments_when_asked_by_parent() {
    let Ok(path) = std::env::var(CHILD_CAS_DB_ENV) else {
        return;
    };
    let increments: u64 = std::env::var(CHILD_CAS_INCREMENTS_ENV).expect("increments").parse().expect("a number");
    let store = open_at(Path::new(&path)).await;
    let id = doc("counters", "shared");
    for _ in 0..increments {
        let mut done = false;
        for _attempt in 0..100_000 {
            let current = get(&store, &id).await.expect("read");
            let write = Write::put(id.clone(), json!(counter(&current) + 1)).when(Condition::Version(current.version));
            if store.commit(Commit::single(write)).await.expect("commit").is_committed() {
                done = true;
                break;
            }
        }
        assert!(done, "an increment never got through");
    }
    store.close().await;
}

#[test]
fn two_os_processes_incrementing_one_key_end_at_the_exact_total() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("shared.sqlite3");
    let increments_per_process = 500;
    let children: Vec<_> = (0..2)
        .map(|_| {
            child_process(
                "sqlite_backend::child_process_cas_increments_when_asked_by_parent",
                &[
                    (CHILD_CAS_DB_ENV, path.display().to_string()),
                    (CHILD_CAS_INCREMENTS_ENV, increments_per_process.to_string()),
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child process")
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().expect("child finishes");
        assert!(
            output.status.success(),
            "child failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = open_at(&path).await;
        let document = get(&store, &doc("counters", "shared")).await.expect("read");
        assert_eq!(document.value, Some(json!(2 * increments_per_process)), "no increment lost or doubled");
        assert_eq!(document.version, 2 * increments_per_process);
        store.close().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_combines_concurrent_commits_into_fewer_transactions() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let store = Arc::new(open_at(&folder.path().join("group.sqlite3")).await);
    let uncontested = 400usize;
    let contested_keys = 20usize;
    let creators_per_contested_key = 5usize;
    let mut tasks = Vec::new();
    for n in 0..uncontested {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = doc("group", &format!("own-{n}"));
            let outcome =
                store.commit(Commit::single(Write::put(id, json!(n)).when(Condition::Absent))).await.expect("commit");
            (None, outcome)
        }));
    }
    for creator in 0..creators_per_contested_key {
        for key in 0..contested_keys {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let id = doc("group", &format!("contested-{key}"));
                let write = Write::put(id, json!({"creator": creator})).when(Condition::Absent);
                (Some(key), store.commit(Commit::single(write)).await.expect("commit"))
            }));
        }
    }
    let sent = tasks.len() as u64;
    let mut winners = vec![0usize; contested_keys];
    for task in tasks {
        match task.await.expect("task") {
            (None, outcome) => assert!(outcome.is_committed(), "an uncontested create must apply: {outcome:?}"),
            (Some(key), CommitOutcome::Committed { .. }) => winners[key] += 1,
            (Some(_), CommitOutcome::Conflict(conflict)) => {
                assert_eq!(conflict.kind, hoard::store::ConflictKind::Exists)
            }
        }
    }
    assert_eq!(winners, vec![1; contested_keys], "exactly one creator wins each contested key");
    let stats = store.group_commit_stats().expect("sqlite reports group-commit stats");
    assert_eq!(stats.commits_total, sent, "every commit reached a transaction once");
    assert!(stats.transactions_total < stats.commits_total, "commits shared transactions: {stats:?}");
    assert!(stats.largest_batch > 1, "{stats:?}");
    let page = store
        .list_keys(&doc("group", "x").store, &ListQuery { limit: 1_000, ..ListQuery::default() })
        .await
        .expect("list");
    assert_eq!(page.keys.len(), uncontested + contested_keys);
    for key in 0..contested_keys {
        assert_eq!(get(&*store, &doc("group", &format!("contested-{key}"))).await.expect("read").version, 1);
    }
    store.close().await;
}

/// Child helper: commits new keys from several tasks and prints each acknowledged one, flushed,
/// until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_commits_and_prints_acknowledgements_when_asked_by_parent() {
    let Ok(path) = std::env::var(CHILD_ACK_DB_ENV) else {
        return;
    };
    let store = Arc::new(open_at(Path::new(&path)).await);
    let mut tasks = Vec::new();
    for task_index in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..1_000_000u64 {
                let key = format!("ack-{task_index}-{n}");
                let write = Write::put(doc("acks", &key), json!(n)).when(Condition::Absent);
                assert!(store.commit(Commit::single(write)).await.expect("commit").is_committed());
                let mut stdout = std::io::stdout().lock();
                writeln!(stdout, "ACK {key} {n}").expect("stdout");
                stdout.flush().expect("flush");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
}

#[test]
fn acknowledged_commits_survive_kill_9() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("killed.sqlite3");
    let mut child = child_process(
        "sqlite_backend::child_process_commits_and_prints_acknowledgements_when_asked_by_parent",
        &[(CHILD_ACK_DB_ENV, path.display().to_string())],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn child process");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut acknowledged: Vec<(String, u64)> = Vec::new();
    let parse = |line: &str| -> Option<(String, u64)> {
        let mut parts = line.strip_prefix("ACK ")?.split(' ');
        Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
    };
    let acknowledgements_before_kill = 400;
    for line in lines.by_ref() {
        let line = line.expect("read child stdout");
        if let Some(ack) = parse(&line) {
            acknowledged.push(ack);
            if acknowledged.len() >= acknowledgements_before_kill {
                break;
            }
        }
    }
    assert_eq!(acknowledged.len(), acknowledgements_before_kill, "the child kept acknowledging until the kill");
    // SIGKILL: no destructor, no flush, no checkpoint runs in the child.
    child.kill().expect("kill -9 the child");
    // Acknowledgements printed before the kill may still sit in the pipe.
    for line in lines {
        let Ok(line) = line else { break };
        if let Some(ack) = parse(&line) {
            acknowledged.push(ack);
        }
    }
    child.wait().expect("reap the child");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = open_at(&path).await;
        let ids: Vec<DocId> = acknowledged.iter().map(|(key, _)| doc("acks", key)).collect();
        let documents = store.get_many(&ids).await.expect("read");
        for ((key, n), document) in acknowledged.iter().zip(&documents) {
            assert_eq!(document.value, Some(json!(n)), "acknowledged {key} was lost by kill -9");
        }
        store.close().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_a_file_keeps_every_document_and_the_schema_version() {
    let folder = tempfile::tempdir().expect("temporary folder");
    // A nested folder that does not exist yet: open creates it.
    let path = folder.path().join("nested/deeper/hoard.sqlite3");
    let holder = HolderId::new("server-a").expect("holder");
    let mut attributes = Map::new();
    attributes.insert("region".into(), json!("eu"));
    let ids: Vec<DocId> = (0..20).map(|n| doc("players", &format!("p-{n}"))).collect();
    let (before, histories) = {
        let store = open_at(&path).await;
        assert_eq!(store.schema_version().await.expect("schema version"), SQLITE_SCHEMA_VERSION);
        for (n, id) in ids.iter().enumerate() {
            commit_ok(&store, vec![Write::put(id.clone(), json!({"coins": n, "items": ["sword", "é✓"]}))]).await;
            commit_ok(
                &store,
                vec![
                    Write::put(id.clone(), json!({"coins": n * 2}))
                        .attributes(attributes.clone())
                        .user_ids(vec![n.to_string()])
                        .lease(LeaseOp::Acquire(holder.clone()))
                        .push_message(json!({"gift": n})),
                ],
            )
            .await;
        }
        commit_ok(&store, vec![Write::delete(ids[0].clone())]).await;
        let before = store.get_many(&ids).await.expect("read");
        let mut histories = Vec::new();
        for id in &ids {
            histories.push(store.list_versions(id, &VersionQuery::default()).await.expect("history"));
        }
        // Dropped without close: everything acknowledged must still be in the file.
        (before, histories)
    };
    let store = open_at(&path).await;
    assert_eq!(store.schema_version().await.expect("schema version"), SQLITE_SCHEMA_VERSION);
    assert_eq!(store.get_many(&ids).await.expect("read"), before);
    for (id, history) in ids.iter().zip(&histories) {
        assert_eq!(&store.list_versions(id, &VersionQuery::default()).await.expect("history"), history);
    }
    assert_eq!(before[1].inbox.len(), 1);
    assert_eq!(before[1].lease.holder, Some(holder));
    store.close().await;
    let connection = rusqlite::Connection::open(&path).expect("open with plain sqlite");
    let rows: i64 = connection.query_row("SELECT count(*) FROM schema_version", [], |row| row.get(0)).expect("count");
    assert_eq!(rows, 1);
    // Operators can read values with json_extract.
    let coins: i64 = connection
        .query_row(
            "SELECT json_extract(value, '$.coins') FROM docs WHERE store = 'players' AND key = 'p-3'",
            [],
            |row| row.get(0),
        )
        .expect("json_extract");
    assert_eq!(coins, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_across_reopens_and_two_stores_opening_one_fresh_file_at_once() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("fresh.sqlite3");
    let (first, second) = tokio::join!(
        SqliteStore::open(SqliteOptions { path: path.clone(), ..SqliteOptions::default() }),
        SqliteStore::open(SqliteOptions { path: path.clone(), ..SqliteOptions::default() }),
    );
    let (first, second) = (first.expect("first open"), second.expect("second open"));
    let id = doc("players", "both");
    commit_ok(&first, vec![Write::put(id.clone(), json!(1)).when(Condition::Absent)]).await;
    let conflict =
        second.commit(Commit::single(Write::put(id.clone(), json!(2)).when(Condition::Absent))).await.expect("commit");
    assert!(conflict.conflict().is_some(), "the second store sees the first one's commit");
    commit_ok(&second, vec![Write::increment(id.clone(), 1)]).await;
    assert_eq!(get(&first, &id).await.expect("read").value, Some(json!(2)));
    first.close().await;
    second.close().await;
    for _ in 0..3 {
        let store = open_at(&path).await;
        assert_eq!(store.schema_version().await.expect("schema version"), SQLITE_SCHEMA_VERSION);
        assert_eq!(get(&store, &id).await.expect("read").version, 2);
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_from_a_newer_hoard_is_refused() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("newer.sqlite3");
    open_at(&path).await.close().await;
    let connection = rusqlite::Connection::open(&path).expect("open with plain sqlite");
    connection.execute("UPDATE schema_version SET version = 999", []).expect("update");
    drop(connection);
    match SqliteStore::open(SqliteOptions { path, ..SqliteOptions::default() }).await {
        Err(StoreError::Corrupt { message }) => assert!(message.contains("999"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_whose_folder_cannot_be_created_gives_a_clear_error() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let blocker = folder.path().join("a-file-not-a-folder");
    std::fs::write(&blocker, b"x").expect("write");
    let path: PathBuf = blocker.join("sub/hoard.sqlite3");
    match SqliteStore::open(SqliteOptions { path, ..SqliteOptions::default() }).await {
        Err(StoreError::Unavailable { message }) => {
            assert!(message.contains("cannot create the folder"), "{message}");
            assert!(message.contains("a-file-not-a-folder"), "the error names the path: {message}");
        }
        other => panic!("expected a clear error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_cross_between_two_stores_on_one_file() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("notify.sqlite3");
    let (sender, receiver) = (open_at(&path).await, open_at(&path).await);
    let mut subscription = receiver.subscribe();
    let sent = Notification { topic: "holder/b".into(), payload: "release players/x".into() };
    sender.notify(sent.clone()).await.expect("notify");
    let received = tokio::time::timeout(std::time::Duration::from_secs(10), subscription.recv())
        .await
        .expect("arrives within 10 s")
        .expect("received");
    assert_eq!(received, sent);
    sender.close().await;
    receiver.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_refuses_later_writes_and_keeps_earlier_ones() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("close.sqlite3");
    let store = open_at(&path).await;
    let id = doc("players", "closing");
    commit_ok(&store, vec![Write::put(id.clone(), json!(1))]).await;
    store.close().await;
    assert!(matches!(store.commit(Commit::single(Write::put(id.clone(), json!(2)))).await, Err(StoreError::Closed)));
    let reopened = open_at(&path).await;
    assert_eq!(get(&reopened, &id).await.expect("read").value, Some(json!(1)));
    reopened.close().await;
}

/// A commit that fails in SQL (here a history row planted by hand makes its history insert
/// collide) is rolled back to its own savepoint: it answers `Unavailable`, leaves its key as it
/// was, and the commits grouped with it still apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_sql_error_in_one_commit_rolls_back_only_that_commit() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("savepoint.sqlite3");
    let store = Arc::new(open_at(&path).await);
    let broken = doc("players", "broken");
    commit_ok(&*store, vec![Write::put(broken.clone(), json!("v1"))]).await;
    let connection = rusqlite::Connection::open(&path).expect("open with plain sqlite");
    connection.busy_timeout(std::time::Duration::from_secs(10)).expect("busy timeout");
    connection
        .execute(
            "INSERT INTO history (store, key, version, written_at_ms, deleted, value, value_bytes, attributes, user_ids, commit_id)
             VALUES ('players', 'broken', 1, 0, 0, '\"planted\"', 9, '{}', '[]', '00000000-0000-0000-0000-000000000000')",
            [],
        )
        // The next put of `broken` supersedes version 1, whose history row now exists: its
        // INSERT fails inside that commit's savepoint.
        .expect("plant a history row");
    drop(connection);
    let mut tasks = Vec::new();
    for n in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.commit(Commit::single(Write::put(doc("players", &format!("fine-{n}")), json!(n)))).await
        }));
    }
    let failing = store
        .commit(Commit::single(
            Write::put(broken.clone(), json!("v2")).lease(LeaseOp::Acquire(HolderId::new("h").expect("holder"))),
        ))
        .await;
    assert!(matches!(failing, Err(StoreError::Unavailable { .. })), "got {failing:?}");
    for task in tasks {
        assert!(task.await.expect("task").expect("commit").is_committed());
    }
    let document = get(&*store, &broken).await.expect("read");
    assert_eq!(
        (document.value, document.version, document.lease.epoch),
        (Some(json!("v1")), 1, 0),
        "nothing of the failed commit applied"
    );
    commit_ok(&*store, vec![Write::put(doc("players", "after"), json!(1))]).await;
    store.close().await;
}
