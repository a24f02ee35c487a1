//! The JSON-backend baselines: what a user would write instead of hoard with a Nakama-style
//! storage layer (a JSON document per player with an integer version, as Nakama's `storage`
//! table minus its content-hash version), with the same driver, the same 16 clients and the same
//! 8 KiB profile text hoard stores.
//!
//! Invariant: each operation does what such a server does per request and no more: a save is one
//! transaction with a version check on the JSON document; a trade locks both profiles in key
//! order, writes both with version checks (the versions read under the lock) and inserts a trade
//! record; a receipt inserts the purchase id and writes the profile. On PostgreSQL the value is
//! `jsonb` with lz4 (parsed by the server, as Nakama stores it); on SQLite it is TEXT checked with
//! `json_valid`. No history, no fencing: those are what hoard adds.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tokio_postgres::{Client, Statement};

use crate::BenchError;
use crate::baseline::{
    SEED_ROWS_PER_TRANSACTION, blocking, connect_postgres, expect_one_row, open_sqlite, random_pair, setup_error,
    sqlite_execute,
};
use crate::target::BaselineDb;

/// One JSON-backend request kind. Keys are `k{index}`.
#[derive(Clone, Debug)]
pub enum JsonOp {
    /// Operation `i` saves the JSON profile `k{i}` with a version check (`UPDATE … SET value,
    /// version + 1 WHERE key AND version`), one transaction.
    Save { table: String },
    /// A trade between two random profiles: lock both in key order (`SELECT … FOR UPDATE`),
    /// write both JSON profiles with version checks, insert the trade record.
    Trade { table: String, trades_table: String, accounts: usize },
    /// A purchase: insert the purchase id and write the JSON profile.
    Receipt { table: String, receipts_table: String, accounts: usize },
}

/// The record a JSON-backend trade inserts beside the two profiles.
const TRADE_RECORD_JSON: &str = r#"{"status":"committed","legs":[{"coins":1},{"gems":1}]}"#;

impl BaselineDb {
    /// Creates `table` of JSON profiles `k0..k{count}`, each holding `value` at version 1, and
    /// (if given) an empty table of trade records or receipts named `records_table`.
    pub async fn create_json_profiles(
        &self,
        table: &str,
        count: usize,
        value: &str,
        records_table: Option<&str>,
    ) -> Result<(), BenchError> {
        match self {
            BaselineDb::Sqlite { path } => {
                let mut create = format!(
                    "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (key TEXT PRIMARY KEY, \
                     value TEXT NOT NULL CHECK (json_valid(value)), version INTEGER NOT NULL);"
                );
                if let Some(records) = records_table {
                    create.push_str(&format!(
                        "DROP TABLE IF EXISTS {records}; CREATE TABLE {records} (id TEXT PRIMARY KEY, \
                         first_key TEXT NOT NULL, second_key TEXT, record TEXT);"
                    ));
                }
                let (path, table, value) = (path.clone(), table.to_string(), value.to_string());
                blocking(move || {
                    let mut connection = open_sqlite(&path)?;
                    connection.execute_batch(&create).map_err(|e| e.to_string())?;
                    let transaction = connection.transaction().map_err(|e| e.to_string())?;
                    {
                        let mut insert = transaction
                            .prepare(&format!("INSERT INTO {table} VALUES (?1, ?2, 1)"))
                            .map_err(|e| e.to_string())?;
                        for index in 0..count {
                            insert.execute(rusqlite::params![format!("k{index}"), value]).map_err(|e| e.to_string())?;
                        }
                    }
                    transaction.commit().map_err(|e| e.to_string())
                })
                .await
                .map_err(setup_error("create JSON profiles"))
            }
            BaselineDb::Postgres { url, schema } => {
                let client = connect_postgres(url, Some(schema)).await?;
                let mut create = format!(
                    "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (key TEXT PRIMARY KEY, value JSONB NOT NULL, \
                     version BIGINT NOT NULL); ALTER TABLE {table} ALTER COLUMN value SET COMPRESSION lz4;"
                );
                if let Some(records) = records_table {
                    create.push_str(&format!(
                        "DROP TABLE IF EXISTS {records}; CREATE TABLE {records} (id TEXT PRIMARY KEY, \
                         first_key TEXT NOT NULL, second_key TEXT, record JSONB);"
                    ));
                }
                client.batch_execute(&create).await.map_err(|e| setup_error("create JSON profiles")(e.to_string()))?;
                let insert = format!(
                    "INSERT INTO {table} SELECT 'k' || n, $1::text::jsonb, 1 FROM generate_series($2::bigint, $3::bigint) AS n"
                );
                for first in (0..count).step_by(SEED_ROWS_PER_TRANSACTION) {
                    let last = (first + SEED_ROWS_PER_TRANSACTION).min(count) - 1;
                    client
                        .execute(&insert, &[&value, &(first as i64), &(last as i64)])
                        .await
                        .map_err(|e| setup_error("seed JSON profiles")(e.to_string()))?;
                }
                Ok(())
            }
        }
    }
}

pub(crate) fn sqlite_operation(
    connection: &mut rusqlite::Connection,
    op: &JsonOp,
    value: &str,
    index: usize,
    random: &mut ChaCha8Rng,
) -> Result<(), String> {
    let error = |e: rusqlite::Error| e.to_string();
    match op {
        JsonOp::Save { table } => {
            let rows = sqlite_execute(
                connection,
                &format!("UPDATE {table} SET value = ?2, version = version + 1 WHERE key = ?1 AND version = ?3"),
                rusqlite::params![format!("k{index}"), value, 1],
            )?;
            expect_one_row(rows, "JSON save")
        }
        JsonOp::Trade { table, trades_table, accounts } => {
            let (low, high, _) = random_pair(random, *accounts);
            let (low, high) = (format!("k{low}"), format!("k{high}"));
            // BEGIN IMMEDIATE is SQLite's lock: the whole database, so both profiles.
            let transaction =
                connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(error)?;
            let mut versions = Vec::with_capacity(2);
            for key in [&low, &high] {
                let version: i64 = transaction
                    .prepare_cached(&format!("SELECT version FROM {table} WHERE key = ?1"))
                    .map_err(error)?
                    .query_row(rusqlite::params![key], |row| row.get(0))
                    .map_err(error)?;
                versions.push(version);
            }
            for (key, version) in [&low, &high].into_iter().zip(versions) {
                let rows = sqlite_execute(
                    &transaction,
                    &format!("UPDATE {table} SET value = ?2, version = version + 1 WHERE key = ?1 AND version = ?3"),
                    rusqlite::params![key, value, version],
                )?;
                expect_one_row(rows, "JSON trade write")?;
            }
            sqlite_execute(
                &transaction,
                &format!("INSERT INTO {trades_table} VALUES (?1, ?2, ?3, ?4)"),
                rusqlite::params![format!("t{index}"), low, high, TRADE_RECORD_JSON],
            )?;
            transaction.commit().map_err(error)
        }
        JsonOp::Receipt { table, receipts_table, accounts } => {
            let account = format!("k{}", random.random_range(0..*accounts));
            let transaction =
                connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(error)?;
            sqlite_execute(
                &transaction,
                &format!("INSERT INTO {receipts_table} VALUES (?1, ?2, NULL, NULL)"),
                rusqlite::params![format!("p{index}"), account],
            )?;
            let rows = sqlite_execute(
                &transaction,
                &format!("UPDATE {table} SET value = ?2, version = version + 1 WHERE key = ?1"),
                rusqlite::params![account, value],
            )?;
            expect_one_row(rows, "JSON receipt write")?;
            transaction.commit().map_err(error)
        }
    }
}

pub(crate) async fn prepare_postgres(
    client: &Client,
    op: &JsonOp,
) -> Result<(Statement, Option<Statement>, Option<Statement>), tokio_postgres::Error> {
    let save = |table: &str| {
        format!("UPDATE {table} SET value = $2::text::jsonb, version = version + 1 WHERE key = $1 AND version = $3")
    };
    Ok(match op {
        JsonOp::Trade { table, trades_table, .. } => (
            client
                .prepare(&format!("SELECT key, version FROM {table} WHERE key = ANY($1) ORDER BY key FOR UPDATE"))
                .await?,
            Some(client.prepare(&save(table)).await?),
            Some(client.prepare(&format!("INSERT INTO {trades_table} VALUES ($1, $2, $3, $4::text::jsonb)")).await?),
        ),
        JsonOp::Receipt { table, receipts_table, .. } => (
            client.prepare(&format!("INSERT INTO {receipts_table} VALUES ($1, $2, NULL, NULL)")).await?,
            Some(
                client
                    .prepare(&format!(
                        "UPDATE {table} SET value = $2::text::jsonb, version = version + 1 WHERE key = $1"
                    ))
                    .await?,
            ),
            None,
        ),
        JsonOp::Save { table } => (client.prepare(&save(table)).await?, None, None),
    })
}

pub(crate) async fn postgres_operation(
    client: &mut Client,
    statements: [Option<&Statement>; 3],
    op: &JsonOp,
    value: &str,
    index: usize,
    random: &mut ChaCha8Rng,
) -> Result<(), String> {
    let error = |e: tokio_postgres::Error| e.to_string();
    let missing = || "statement not prepared".to_string();
    let [first, second, third] = statements;
    let first = first.ok_or_else(missing)?;
    match op {
        JsonOp::Save { .. } => {
            let rows = client.execute(first, &[&format!("k{index}"), &value, &1i64]).await.map_err(error)?;
            expect_one_row(rows as usize, "JSON save")
        }
        JsonOp::Trade { accounts, .. } => {
            let (low, high, _) = random_pair(random, *accounts);
            let keys = vec![format!("k{low}"), format!("k{high}")];
            let transaction = client.transaction().await.map_err(error)?;
            let locked = transaction.query(first, &[&keys]).await.map_err(error)?;
            if locked.len() != 2 {
                return Err(format!("JSON trade locked {} profiles, expected 2", locked.len()));
            }
            let write = second.ok_or_else(missing)?;
            for row in &locked {
                let key: String = row.try_get(0).map_err(error)?;
                let version: i64 = row.try_get(1).map_err(error)?;
                let rows = transaction.execute(write, &[&key, &value, &version]).await.map_err(error)?;
                expect_one_row(rows as usize, "JSON trade write")?;
            }
            let record = third.ok_or_else(missing)?;
            transaction
                .execute(record, &[&format!("t{index}"), &keys[0], &keys[1], &TRADE_RECORD_JSON])
                .await
                .map_err(error)?;
            transaction.commit().await.map_err(error)
        }
        JsonOp::Receipt { accounts, .. } => {
            let account = format!("k{}", random.random_range(0..*accounts));
            let transaction = client.transaction().await.map_err(error)?;
            transaction.execute(first, &[&format!("p{index}"), &account]).await.map_err(error)?;
            let rows = transaction.execute(second.ok_or_else(missing)?, &[&account, &value]).await.map_err(error)?;
            expect_one_row(rows as usize, "JSON receipt write")?;
            transaction.commit().await.map_err(error)
        }
    }
}
