//! Baselines: what a game would do without hoard, with the same driver against the same
//! database: one plain SQL transaction per request, from a fixed number of concurrent clients.
//!
//! Invariant: a baseline does at least the work its name says and nothing hoard-specific: no
//! history, no fencing beyond the `lease_epoch` condition, no JSON parsing. Its tables live in the
//! run's own SQLite file or PostgreSQL schema (prefixed `baseline_`), never among hoard's.
//!
//! Clients: `BASELINE_CLIENTS` (16) concurrent clients, the connection count of hoard's own
//! PostgreSQL pool and what a one-save-per-request server with a typical pool would use. On
//! PostgreSQL each client has its own connection. SQLite allows one writer at a time, so its 16
//! clients share one write connection (separate connections would only add busy-waits).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio_postgres::{Client, NoTls, Statement};

use crate::BenchError;
use crate::latency::{Figures, LatencyRecorder};
use crate::target::BaselineDb;

/// Concurrent clients of every baseline (see the module docs for why 16).
pub const BASELINE_CLIENTS: usize = 16;
/// Rows written per statement while seeding baseline tables.
pub const SEED_ROWS_PER_TRANSACTION: usize = 500;
/// The holder name baseline leases carry.
const BASELINE_HOLDER: &str = "baseline";
/// SQLite's wait for the write lock, as hoard's default.
const SQLITE_BUSY_TIMEOUT_MS: u64 = 10_000;

/// Where a latency is measured from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyFrom {
    /// From the start of the whole run: every request was issued at once (a storm).
    RunStart,
    /// From the start of each operation (closed loop: a client issues its next request when the
    /// previous one is answered).
    OperationStart,
}

/// One baseline request kind. Keys are `k{index}` in the table.
#[derive(Clone, Debug)]
pub enum BaselineOp {
    /// Operation `i` saves key `k{i}`: `UPDATE … SET value, version + 1 WHERE key = $1 AND
    /// lease_epoch = $2` in its own transaction; with `release`, it also clears the holder (a
    /// final save).
    Save { table: String, release: bool },
    /// Operation `i` plays a session on key `k{i}`: acquire (`UPDATE … SET lease_holder,
    /// lease_epoch + 1 WHERE lease_holder IS NULL RETURNING value`), five conditional saves, and a
    /// releasing save: seven transactions.
    Cycle { table: String },
    /// A two-row transfer between two random accounts in one transaction (rows updated in key
    /// order, as any deadlock-free design does).
    Transfer { table: String, accounts: usize },
    /// A purchase: insert the purchase id (primary key: a second insert fails) and credit the
    /// account, in one transaction.
    Receipt { accounts_table: String, receipts_table: String, accounts: usize },
    /// What a Nakama-style JSON backend writes (`json_baseline`).
    Json(crate::json_baseline::JsonOp),
}

/// Saves in one session cycle (the "five saves").
pub const CYCLE_SAVES: usize = 5;

pub async fn connect_postgres(url: &str, schema: Option<&str>) -> Result<Client, BenchError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|error| BenchError::Setup(format!("connect to PostgreSQL at {url}: {error}")))?;
    tokio::spawn(async move {
        // Ends when the client is dropped; an error here surfaces as a failed query.
        let _ = connection.await;
    });
    if let Some(schema) = schema {
        client
            .batch_execute(&format!("SET search_path TO \"{schema}\""))
            .await
            .map_err(|error| BenchError::Setup(format!("set search_path: {error}")))?;
    }
    Ok(client)
}

pub(crate) fn open_sqlite(path: &Path) -> Result<rusqlite::Connection, String> {
    let connection = rusqlite::Connection::open(path).map_err(|error| error.to_string())?;
    // The same durability as hoard's SQLite store: WAL, fsync at every commit.
    connection.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;").map_err(|error| error.to_string())?;
    connection.busy_timeout(Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS)).map_err(|error| error.to_string())?;
    Ok(connection)
}

pub(crate) fn setup_error(what: &str) -> impl Fn(String) -> BenchError + '_ {
    move |error| BenchError::Setup(format!("baseline {what}: {error}"))
}

impl BaselineDb {
    /// Creates `table` with keys `k0..k{count}`, each holding `value`. With `held`, each key is
    /// leased to the baseline holder at epoch 1 (a live session); otherwise it is free.
    pub async fn create_docs(&self, table: &str, count: usize, value: &str, held: bool) -> Result<(), BenchError> {
        let create = format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (key TEXT PRIMARY KEY, value TEXT NOT NULL, \
             version BIGINT NOT NULL, lease_holder TEXT NULL, lease_epoch BIGINT NOT NULL)"
        );
        let holder = held.then_some(BASELINE_HOLDER);
        match self {
            BaselineDb::Sqlite { path } => {
                let (path, table, value) = (path.clone(), table.to_string(), value.to_string());
                blocking(move || {
                    let mut connection = open_sqlite(&path)?;
                    connection.execute_batch(&create).map_err(|e| e.to_string())?;
                    let transaction = connection.transaction().map_err(|e| e.to_string())?;
                    {
                        let mut insert = transaction
                            .prepare(&format!("INSERT INTO {table} VALUES (?1, ?2, 1, ?3, 1)"))
                            .map_err(|e| e.to_string())?;
                        for index in 0..count {
                            insert
                                .execute(rusqlite::params![format!("k{index}"), value, holder])
                                .map_err(|e| e.to_string())?;
                        }
                    }
                    transaction.commit().map_err(|e| e.to_string())
                })
                .await
                .map_err(setup_error("create docs"))
            }
            BaselineDb::Postgres { url, schema } => {
                let client = connect_postgres(url, Some(schema)).await?;
                client.batch_execute(&create).await.map_err(|e| setup_error("create docs")(e.to_string()))?;
                let insert = format!(
                    "INSERT INTO {table} SELECT 'k' || n, $1, 1, $2, 1 FROM generate_series($3::bigint, $4::bigint) AS n"
                );
                for first in (0..count).step_by(SEED_ROWS_PER_TRANSACTION) {
                    let last = (first + SEED_ROWS_PER_TRANSACTION).min(count) - 1;
                    client
                        .execute(&insert, &[&value, &holder, &(first as i64), &(last as i64)])
                        .await
                        .map_err(|e| setup_error("seed docs")(e.to_string()))?;
                }
                Ok(())
            }
        }
    }

    /// Creates `table` of `count` accounts `k0..` with a large balance, and (if given) an empty
    /// receipts table.
    pub async fn create_accounts(
        &self,
        table: &str,
        count: usize,
        receipts_table: Option<&str>,
    ) -> Result<(), BenchError> {
        let mut create = format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (key TEXT PRIMARY KEY, balance BIGINT NOT NULL);"
        );
        if let Some(receipts) = receipts_table {
            create.push_str(&format!(
                "DROP TABLE IF EXISTS {receipts}; CREATE TABLE {receipts} (purchase_id TEXT PRIMARY KEY, key TEXT NOT NULL);"
            ));
        }
        let balance = crate::profile::PROFILE_STARTING_BALANCE;
        match self {
            BaselineDb::Sqlite { path } => {
                let (path, table) = (path.clone(), table.to_string());
                blocking(move || {
                    let mut connection = open_sqlite(&path)?;
                    connection.execute_batch(&create).map_err(|e| e.to_string())?;
                    let transaction = connection.transaction().map_err(|e| e.to_string())?;
                    {
                        let mut insert = transaction
                            .prepare(&format!("INSERT INTO {table} VALUES (?1, ?2)"))
                            .map_err(|e| e.to_string())?;
                        for index in 0..count {
                            insert
                                .execute(rusqlite::params![format!("k{index}"), balance])
                                .map_err(|e| e.to_string())?;
                        }
                    }
                    transaction.commit().map_err(|e| e.to_string())
                })
                .await
                .map_err(setup_error("create accounts"))
            }
            BaselineDb::Postgres { url, schema } => {
                let client = connect_postgres(url, Some(schema)).await?;
                client.batch_execute(&create).await.map_err(|e| setup_error("create accounts")(e.to_string()))?;
                client
                    .execute(
                        &format!(
                            "INSERT INTO {table} SELECT 'k' || n, $1 FROM generate_series(0, $2::bigint - 1) AS n"
                        ),
                        &[&balance, &(count as i64)],
                    )
                    .await
                    .map_err(|e| setup_error("seed accounts")(e.to_string()))?;
                Ok(())
            }
        }
    }

    /// Runs `total` operations from `clients` concurrent clients; returns their latencies and
    /// the run's wall time.
    pub async fn run(
        &self,
        op: &BaselineOp,
        value: &Arc<String>,
        total: usize,
        from: LatencyFrom,
        clients: usize,
        progress: &ProgressBar,
    ) -> Result<(LatencyRecorder, Duration), BenchError> {
        let clients = clients.max(1);
        match self {
            BaselineDb::Sqlite { path } => {
                let (path, op, value, progress) = (path.clone(), op.clone(), value.clone(), progress.clone());
                blocking(move || run_sqlite(&path, &op, &value, total, from, clients, &progress))
                    .await
                    .map_err(BenchError::Baseline)
            }
            BaselineDb::Postgres { url, schema } => {
                run_postgres(url, schema, op, value, total, from, clients, progress).await
            }
        }
    }

    /// `run` from `BASELINE_CLIENTS` clients behind the progress bar `bar` (cleared afterwards),
    /// as the run's figures.
    pub async fn measure(
        &self,
        op: &BaselineOp,
        value: &Arc<String>,
        total: usize,
        from: LatencyFrom,
        bar: ProgressBar,
    ) -> Result<Figures, BenchError> {
        self.measure_with_clients(op, value, total, from, BASELINE_CLIENTS, bar).await
    }

    /// `measure` from `clients` clients (the curve of throughput against clients).
    pub async fn measure_with_clients(
        &self,
        op: &BaselineOp,
        value: &Arc<String>,
        total: usize,
        from: LatencyFrom,
        clients: usize,
        bar: ProgressBar,
    ) -> Result<Figures, BenchError> {
        let (recorder, elapsed) = self.run(op, value, total, from, clients, &bar).await?;
        bar.finish_and_clear();
        Ok(recorder.figures(elapsed))
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work).await.map_err(|error| format!("baseline thread failed: {error}"))?
}

fn elapsed_since(from: LatencyFrom, run_started: Instant, operation_started: Instant) -> Duration {
    match from {
        LatencyFrom::RunStart => run_started.elapsed(),
        LatencyFrom::OperationStart => operation_started.elapsed(),
    }
}

/// Two distinct random account indexes, lower first (the lock order).
pub(crate) fn random_pair(random: &mut ChaCha8Rng, accounts: usize) -> (usize, usize, bool) {
    let first = random.random_range(0..accounts);
    let mut second = random.random_range(0..accounts.saturating_sub(1).max(1));
    if second >= first {
        second += 1;
    }
    let second = second.min(accounts.saturating_sub(1));
    let forward = random.random::<bool>();
    (first.min(second), first.max(second), forward)
}

fn run_sqlite(
    path: &Path,
    op: &BaselineOp,
    value: &str,
    total: usize,
    from: LatencyFrom,
    clients: usize,
    progress: &ProgressBar,
) -> Result<(LatencyRecorder, Duration), String> {
    let connection = Mutex::new(open_sqlite(path)?);
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let recorders: Vec<LatencyRecorder> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|client| {
                let (connection, next) = (&connection, &next);
                scope.spawn(move || {
                    let mut random = ChaCha8Rng::seed_from_u64(client as u64);
                    let mut recorder = LatencyRecorder::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= total {
                            return recorder;
                        }
                        let operation_started = Instant::now();
                        let mut guard = connection.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        let result = sqlite_operation(&mut guard, op, value, index, &mut random);
                        drop(guard);
                        match result {
                            Ok(()) => recorder.record(elapsed_since(from, started, operation_started)),
                            Err(_) => recorder.record_failure(),
                        }
                        progress.inc(1);
                    }
                })
            })
            .collect();
        workers.into_iter().filter_map(|worker| worker.join().ok()).collect()
    });
    let elapsed = started.elapsed();
    let mut merged = LatencyRecorder::new();
    for recorder in &recorders {
        merged.merge(recorder);
    }
    Ok((merged, elapsed))
}

/// Runs one cached statement on SQLite; the rows it changed.
pub(crate) fn sqlite_execute(
    connection: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<usize, String> {
    connection
        .prepare_cached(sql)
        .and_then(|mut statement| statement.execute(params))
        .map_err(|error| error.to_string())
}

pub(crate) fn expect_one_row(rows: usize, what: &str) -> Result<(), String> {
    if rows == 1 { Ok(()) } else { Err(format!("{what}: {rows} rows changed, expected 1")) }
}

fn sqlite_operation(
    connection: &mut rusqlite::Connection,
    op: &BaselineOp,
    value: &str,
    index: usize,
    random: &mut ChaCha8Rng,
) -> Result<(), String> {
    let error = |e: rusqlite::Error| e.to_string();
    match op {
        BaselineOp::Json(op) => crate::json_baseline::sqlite_operation(connection, op, value, index, random),
        BaselineOp::Save { table, release } => {
            let sql = if *release {
                format!(
                    "UPDATE {table} SET value = ?3, version = version + 1, lease_holder = NULL WHERE key = ?1 AND lease_epoch = ?2"
                )
            } else {
                format!("UPDATE {table} SET value = ?3, version = version + 1 WHERE key = ?1 AND lease_epoch = ?2")
            };
            let rows = connection
                .prepare_cached(&sql)
                .map_err(error)?
                .execute(rusqlite::params![format!("k{index}"), 1, value])
                .map_err(error)?;
            expect_one_row(rows, "save")
        }
        BaselineOp::Cycle { table } => {
            let key = format!("k{index}");
            let epoch: i64 = connection
                .prepare_cached(&format!(
                    "UPDATE {table} SET lease_holder = ?2, lease_epoch = lease_epoch + 1 \
                     WHERE key = ?1 AND lease_holder IS NULL RETURNING lease_epoch, value"
                ))
                .map_err(error)?
                .query_row(rusqlite::params![key, BASELINE_HOLDER], |row| {
                    let _value: String = row.get(1)?;
                    row.get(0)
                })
                .map_err(error)?;
            for _ in 0..CYCLE_SAVES {
                let rows = sqlite_execute(
                    connection,
                    &format!(
                        "UPDATE {table} SET value = ?3, version = version + 1 WHERE key = ?1 AND lease_epoch = ?2"
                    ),
                    rusqlite::params![key, epoch, value],
                )?;
                expect_one_row(rows, "cycle save")?;
            }
            let rows = sqlite_execute(
                connection,
                &format!(
                    "UPDATE {table} SET value = ?3, version = version + 1, lease_holder = NULL WHERE key = ?1 AND lease_epoch = ?2"
                ),
                rusqlite::params![key, epoch, value],
            )?;
            expect_one_row(rows, "cycle release")
        }
        BaselineOp::Transfer { table, accounts } => {
            let (low, high, forward) = random_pair(random, *accounts);
            let amount: i64 = if forward { 1 } else { -1 };
            let transaction =
                connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(error)?;
            {
                let mut update = transaction
                    .prepare_cached(&format!("UPDATE {table} SET balance = balance + ?2 WHERE key = ?1"))
                    .map_err(error)?;
                expect_one_row(update.execute(rusqlite::params![format!("k{low}"), -amount]).map_err(error)?, "debit")?;
                expect_one_row(
                    update.execute(rusqlite::params![format!("k{high}"), amount]).map_err(error)?,
                    "credit",
                )?;
            }
            transaction.commit().map_err(error)
        }
        BaselineOp::Receipt { accounts_table, receipts_table, accounts } => {
            let account = format!("k{}", random.random_range(0..*accounts));
            let transaction =
                connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(error)?;
            sqlite_execute(
                &transaction,
                &format!("INSERT INTO {receipts_table} VALUES (?1, ?2)"),
                rusqlite::params![format!("p{index}"), account],
            )?;
            let rows = sqlite_execute(
                &transaction,
                &format!("UPDATE {accounts_table} SET balance = balance + 10 WHERE key = ?1"),
                rusqlite::params![account],
            )?;
            expect_one_row(rows, "credit")?;
            transaction.commit().map_err(error)
        }
    }
}

/// Prepared statements of one PostgreSQL client.
struct PostgresStatements {
    first: Statement,
    second: Option<Statement>,
    third: Option<Statement>,
}

async fn prepare_postgres(client: &Client, op: &BaselineOp) -> Result<PostgresStatements, tokio_postgres::Error> {
    Ok(match op {
        BaselineOp::Json(op) => {
            let (first, second, third) = crate::json_baseline::prepare_postgres(client, op).await?;
            PostgresStatements { first, second, third }
        }
        BaselineOp::Save { table, release } => {
            let sql = if *release {
                format!("UPDATE {table} SET value = $3, version = version + 1, lease_holder = NULL WHERE key = $1 AND lease_epoch = $2")
            } else {
                format!("UPDATE {table} SET value = $3, version = version + 1 WHERE key = $1 AND lease_epoch = $2")
            };
            PostgresStatements { first: client.prepare(&sql).await?, second: None, third: None }
        }
        BaselineOp::Cycle { table } => PostgresStatements {
            first: client
                .prepare(&format!(
                    "UPDATE {table} SET lease_holder = $2, lease_epoch = lease_epoch + 1 \
                     WHERE key = $1 AND lease_holder IS NULL RETURNING lease_epoch, value"
                ))
                .await?,
            second: Some(
                client
                    .prepare(&format!(
                        "UPDATE {table} SET value = $3, version = version + 1 WHERE key = $1 AND lease_epoch = $2"
                    ))
                    .await?,
            ),
            third: Some(
                client
                    .prepare(&format!(
                        "UPDATE {table} SET value = $3, version = version + 1, lease_holder = NULL WHERE key = $1 AND lease_epoch = $2"
                    ))
                    .await?,
            ),
        },
        BaselineOp::Transfer { table, .. } => PostgresStatements {
            first: client.prepare(&format!("UPDATE {table} SET balance = balance + $2 WHERE key = $1")).await?,
            second: None,
            third: None,
        },
        BaselineOp::Receipt { accounts_table, receipts_table, .. } => PostgresStatements {
            first: client.prepare(&format!("INSERT INTO {receipts_table} VALUES ($1, $2)")).await?,
            second: Some(
                client.prepare(&format!("UPDATE {accounts_table} SET balance = balance + 10 WHERE key = $1")).await?,
            ),
            third: None,
        },
    })
}

async fn postgres_operation(
    client: &mut Client,
    statements: &PostgresStatements,
    op: &BaselineOp,
    value: &str,
    index: usize,
    random: &mut ChaCha8Rng,
) -> Result<(), String> {
    let error = |e: tokio_postgres::Error| e.to_string();
    let missing = || "statement not prepared".to_string();
    match op {
        BaselineOp::Json(op) => {
            let statements = [Some(&statements.first), statements.second.as_ref(), statements.third.as_ref()];
            crate::json_baseline::postgres_operation(client, statements, op, value, index, random).await
        }
        BaselineOp::Save { .. } => {
            let rows =
                client.execute(&statements.first, &[&format!("k{index}"), &1i64, &value]).await.map_err(error)?;
            expect_one_row(rows as usize, "save")
        }
        BaselineOp::Cycle { .. } => {
            let key = format!("k{index}");
            let row = client.query_one(&statements.first, &[&key, &BASELINE_HOLDER]).await.map_err(error)?;
            let epoch: i64 = row.try_get(0).map_err(error)?;
            let save = statements.second.as_ref().ok_or_else(missing)?;
            for _ in 0..CYCLE_SAVES {
                let rows = client.execute(save, &[&key, &epoch, &value]).await.map_err(error)?;
                expect_one_row(rows as usize, "cycle save")?;
            }
            let release = statements.third.as_ref().ok_or_else(missing)?;
            let rows = client.execute(release, &[&key, &epoch, &value]).await.map_err(error)?;
            expect_one_row(rows as usize, "cycle release")
        }
        BaselineOp::Transfer { accounts, .. } => {
            let (low, high, forward) = random_pair(random, *accounts);
            let amount: i64 = if forward { 1 } else { -1 };
            let transaction = client.transaction().await.map_err(error)?;
            let debit =
                transaction.execute(&statements.first, &[&format!("k{low}"), &(-amount)]).await.map_err(error)?;
            expect_one_row(debit as usize, "debit")?;
            let credit =
                transaction.execute(&statements.first, &[&format!("k{high}"), &amount]).await.map_err(error)?;
            expect_one_row(credit as usize, "credit")?;
            transaction.commit().await.map_err(error)
        }
        BaselineOp::Receipt { accounts, .. } => {
            let account = format!("k{}", random.random_range(0..*accounts));
            let transaction = client.transaction().await.map_err(error)?;
            transaction.execute(&statements.first, &[&format!("p{index}"), &account]).await.map_err(error)?;
            let credit = statements.second.as_ref().ok_or_else(missing)?;
            let rows = transaction.execute(credit, &[&account]).await.map_err(error)?;
            expect_one_row(rows as usize, "credit")?;
            transaction.commit().await.map_err(error)
        }
    }
}

// The same load as `run_sqlite` (operation, value, count, latency origin, clients) and where.
#[allow(clippy::too_many_arguments)]
async fn run_postgres(
    url: &str,
    schema: &str,
    op: &BaselineOp,
    value: &Arc<String>,
    total: usize,
    from: LatencyFrom,
    client_count: usize,
    progress: &ProgressBar,
) -> Result<(LatencyRecorder, Duration), BenchError> {
    // Connections are made and statements prepared before the clock starts.
    let mut clients = Vec::with_capacity(client_count);
    for _ in 0..client_count {
        let client = connect_postgres(url, Some(schema)).await?;
        let statements =
            prepare_postgres(&client, op).await.map_err(|e| BenchError::Baseline(format!("prepare: {e}")))?;
        clients.push((client, statements));
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(number, (mut client, statements))| {
            let (next, op, value, progress) = (next.clone(), op.clone(), value.clone(), progress.clone());
            tokio::spawn(async move {
                let mut random = ChaCha8Rng::seed_from_u64(number as u64);
                let mut recorder = LatencyRecorder::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= total {
                        return recorder;
                    }
                    let operation_started = Instant::now();
                    match postgres_operation(&mut client, &statements, &op, &value, index, &mut random).await {
                        Ok(()) => recorder.record(elapsed_since(from, started, operation_started)),
                        Err(_) => recorder.record_failure(),
                    }
                    progress.inc(1);
                }
            })
        })
        .collect();
    let mut merged = LatencyRecorder::new();
    for task in tasks {
        let recorder = task.await.map_err(|e| BenchError::Baseline(format!("client task failed: {e}")))?;
        merged.merge(&recorder);
    }
    Ok((merged, started.elapsed()))
}
