//! Where a benchmark runs: a hoard store (memory, SQLite or PostgreSQL) and, beside it, the same
//! database opened with its plain driver for the baselines.
//!
//! Invariant: every run works in a place of its own that it removes afterwards: a fresh SQLite
//! file (with its `-wal` and `-shm`) in the chosen folder, or a fresh PostgreSQL schema
//! `hoard_bench_<uuid>` that is dropped with everything in it. A user's own data is never read or
//! written.

use std::path::PathBuf;
use std::sync::Arc;

use hoard::store::SharedStore;
use hoard::store::memory::MemoryStore;
use hoard::store::postgres::{PostgresOptions, PostgresStore};
use hoard::store::sqlite::{SqliteOptions, SqliteStore};
use serde::{Deserialize, Serialize};

use crate::BenchError;

/// Which database a benchmark targets, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetSpec {
    /// The in-memory reference store: no durability, no baseline. For tests.
    Memory,
    /// A fresh SQLite file made in this folder.
    Sqlite { folder: PathBuf },
    /// A fresh schema in this PostgreSQL database.
    Postgres { url: String },
}

impl TargetSpec {
    pub fn name(&self) -> &'static str {
        match self {
            TargetSpec::Memory => "memory",
            TargetSpec::Sqlite { .. } => "sqlite",
            TargetSpec::Postgres { .. } => "postgres",
        }
    }
}

/// The plain-driver view of the same database, for baselines.
#[derive(Clone, Debug)]
pub enum BaselineDb {
    Sqlite { path: PathBuf },
    Postgres { url: String, schema: String },
}

/// An opened target: a hoard store, a way to open more handles on the same database (a second
/// server), and the baseline's view of it.
#[derive(Debug)]
pub struct Target {
    pub spec: TargetSpec,
    pub store: SharedStore,
    pub baseline: Option<BaselineDb>,
    place: Place,
}

#[derive(Debug)]
enum Place {
    Memory,
    SqliteFile { path: PathBuf },
    PostgresSchema { url: String, schema: String },
}

impl Target {
    pub async fn open(spec: &TargetSpec) -> Result<Target, BenchError> {
        match spec {
            TargetSpec::Memory => Ok(Target {
                spec: spec.clone(),
                store: Arc::new(MemoryStore::new()),
                baseline: None,
                place: Place::Memory,
            }),
            TargetSpec::Sqlite { folder } => {
                std::fs::create_dir_all(folder)
                    .map_err(|error| BenchError::Setup(format!("create {}: {error}", folder.display())))?;
                let path = folder.join(format!("bench-{}.sqlite3", uuid::Uuid::new_v4().simple()));
                let place = Place::SqliteFile { path: path.clone() };
                let store = open_sqlite(&path).await?;
                Ok(Target { spec: spec.clone(), store, baseline: Some(BaselineDb::Sqlite { path }), place })
            }
            TargetSpec::Postgres { url } => {
                let schema = format!("hoard_bench_{}", uuid::Uuid::new_v4().simple());
                let store = open_postgres(url, &schema).await?;
                Ok(Target {
                    spec: spec.clone(),
                    store,
                    baseline: Some(BaselineDb::Postgres { url: url.clone(), schema: schema.clone() }),
                    place: Place::PostgresSchema { url: url.clone(), schema },
                })
            }
        }
    }

    /// Another handle on the same database, as a second server process would open it. The
    /// memory store has no second handle: it is shared.
    pub async fn open_another_store(&self) -> Result<SharedStore, BenchError> {
        match &self.place {
            Place::Memory => Ok(self.store.clone()),
            Place::SqliteFile { path } => open_sqlite(path).await,
            Place::PostgresSchema { url, schema } => open_postgres(url, schema).await,
        }
    }

    /// Drops the store and removes the run's file or schema. Call after every engine and store
    /// handle of the run is gone.
    pub async fn remove(self) -> Result<(), BenchError> {
        drop(self.store);
        match self.place {
            Place::Memory => Ok(()),
            Place::SqliteFile { path } => {
                // Give the writer thread a moment to close after the last handle went away.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(PathBuf::from(file));
                }
                Ok(())
            }
            Place::PostgresSchema { url, schema } => {
                let client = crate::baseline::connect_postgres(&url, None).await?;
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await
                    .map_err(|error| BenchError::Setup(format!("drop schema {schema}: {error}")))
            }
        }
    }
}

async fn open_sqlite(path: &std::path::Path) -> Result<SharedStore, BenchError> {
    let options = SqliteOptions { path: path.to_path_buf(), ..SqliteOptions::default() };
    let store = SqliteStore::open(options)
        .await
        .map_err(|error| BenchError::Setup(format!("open SQLite at {}: {error}", path.display())))?;
    Ok(Arc::new(store))
}

async fn open_postgres(url: &str, schema: &str) -> Result<SharedStore, BenchError> {
    let options = PostgresOptions { url: url.to_string(), schema: schema.to_string(), ..PostgresOptions::default() };
    let store = PostgresStore::open(options)
        .await
        .map_err(|error| BenchError::Setup(format!("open PostgreSQL at {url} (schema {schema}): {error}")))?;
    Ok(Arc::new(store))
}

/// What a store holds on disk, by table (each with its indexes and, on PostgreSQL, its TOAST).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredBytes {
    /// Every table of hoard's (the baselines' left out), with indexes and TOAST.
    pub total: u64,
    pub docs: u64,
    pub history: u64,
}

impl Target {
    /// Measures `StoredBytes`, whatever hoard's schema version (it reads only table names);
    /// `None` for the memory store.
    pub async fn stored_bytes(&self) -> Result<Option<StoredBytes>, BenchError> {
        let error = |what: &str, error: String| BenchError::Setup(format!("measure stored bytes ({what}): {error}"));
        match &self.place {
            Place::Memory => Ok(None),
            Place::SqliteFile { path } => {
                let path = path.clone();
                let measured = tokio::task::spawn_blocking(move || -> Result<StoredBytes, String> {
                    let connection = rusqlite::Connection::open(&path).map_err(|e| e.to_string())?;
                    connection
                        .busy_timeout(std::time::Duration::from_secs(10))
                        .map_err(|e| e.to_string())?;
                    // Move the WAL into the main file, so the file's size is what the store holds.
                    connection.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").map_err(|e| e.to_string())?;
                    let table_bytes = |table: &str| -> Result<u64, String> {
                        connection
                            .query_row(
                                "SELECT coalesce(sum(pgsize), 0) FROM dbstat
                                 WHERE name = ?1 OR name IN (SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = ?1)",
                                [table],
                                |row| row.get::<_, i64>(0),
                            )
                            .map(|bytes| bytes as u64)
                            .map_err(|e| e.to_string())
                    };
                    // hoard's tables only (the baselines' share the file).
                    let total = connection
                        .query_row("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name NOT LIKE '%baseline%'", [], |row| {
                            row.get::<_, i64>(0)
                        })
                        .map(|bytes| bytes as u64)
                        .map_err(|e| e.to_string())?;
                    Ok(StoredBytes { total, docs: table_bytes("docs")?, history: table_bytes("history")? })
                })
                .await
                .map_err(|e| error("sqlite", e.to_string()))?
                .map_err(|e| error("sqlite", e))?;
                Ok(Some(measured))
            }
            Place::PostgresSchema { url, schema } => {
                let client = crate::baseline::connect_postgres(url, None).await?;
                let row = client
                    .query_one(
                        "SELECT coalesce(sum(pg_total_relation_size(c.oid)) FILTER (WHERE c.relkind IN ('r', 'm')), 0)::bigint,
                                pg_total_relation_size(format('%I.docs', $1::text)::regclass)::bigint,
                                pg_total_relation_size(format('%I.history', $1::text)::regclass)::bigint
                         FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                         WHERE n.nspname = $1 AND c.relname NOT LIKE 'baseline%'",
                        &[schema],
                    )
                    .await
                    .map_err(|e| error("postgres", e.to_string()))?;
                let bytes = |index: usize| row.try_get::<_, i64>(index).map(|bytes| bytes as u64);
                Ok(Some(StoredBytes {
                    total: bytes(0).map_err(|e| error("postgres", e.to_string()))?,
                    docs: bytes(1).map_err(|e| error("postgres", e.to_string()))?,
                    history: bytes(2).map_err(|e| error("postgres", e.to_string()))?,
                }))
            }
        }
    }
}
