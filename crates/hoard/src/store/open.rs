//! Opens a store from a location an operator types: a file path (SQLite) or a PostgreSQL URL.
//!
//! Invariant: the choice of backend is made here, once, from the location's form; callers get a
//! `SharedStore` and never branch on the backend again. Opening never creates a database where
//! `must_exist` says one must already be, and never changes a database that is not hoard's.

#[cfg(feature = "sqlite")]
use std::path::PathBuf;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use std::sync::Arc;

use super::limits::{HistoryPolicy, Limits};
#[cfg(feature = "postgres")]
use super::postgres::{PostgresOptions, PostgresStore};
#[cfg(feature = "sqlite")]
use super::sqlite::{SqliteOptions, SqliteStore};
use super::{SharedStore, StoreError};

/// Options shared by every durable backend.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    pub limits: Limits,
    pub history_policy: HistoryPolicy,
    /// PostgreSQL only: the schema hoard's tables live in (`None`: the backend's default).
    /// Processes sharing a database share data only within one schema.
    pub postgres_schema: Option<String>,
    /// PostgreSQL only: which of its features hoard relies on (`Portable` for distributed SQL).
    pub postgres_profile: super::PostgresProfile,
    /// PostgreSQL only: what sits between hoard and the database (`Transaction` for PgBouncer's
    /// transaction mode).
    pub postgres_pooler: super::Pooler,
    /// PostgreSQL only: a direct connection for LISTEN, when `location` goes through a pooler.
    pub postgres_listen_url: Option<String>,
    /// Open only a database that is already there (a hoard SQLite file, or a PostgreSQL schema
    /// with hoard's tables) and refuse, creating nothing, otherwise: for operators' reads, so a
    /// mistyped `--db` says so instead of answering from a new, empty database.
    pub must_exist: bool,
}

/// True when the location names a PostgreSQL database rather than an SQLite file.
pub fn is_postgres_location(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// Opens `location`: `postgres://…` or `postgresql://…` for PostgreSQL, anything else as the
/// path of an SQLite database file (created, with its folder, if missing, unless
/// `options.must_exist`). Every backend refuses what is not a hoard database (another
/// application's SQLite file, a file that is not SQLite, a schema of a newer hoard) and leaves it
/// as it was; errors name the cause and what to do. A backend this build left out (features
/// `sqlite`, `postgres`) is a clear `InvalidInput`.
pub async fn open_store(location: &str, options: StoreOptions) -> Result<SharedStore, StoreError> {
    if is_postgres_location(location) {
        open_postgres(location, options).await
    } else {
        open_sqlite(location, options).await
    }
}

#[cfg(feature = "postgres")]
async fn open_postgres(location: &str, options: StoreOptions) -> Result<SharedStore, StoreError> {
    let postgres_options = PostgresOptions {
        url: location.to_string(),
        limits: options.limits,
        history_policy: options.history_policy,
        must_exist: options.must_exist,
        profile: options.postgres_profile,
        pooler: options.postgres_pooler,
        listen_url: options.postgres_listen_url,
        ..PostgresOptions::default()
    };
    let postgres_options = match options.postgres_schema {
        Some(schema) => PostgresOptions { schema, ..postgres_options },
        None => postgres_options,
    };
    Ok(Arc::new(PostgresStore::open(postgres_options).await?))
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(location: &str, options: StoreOptions) -> Result<SharedStore, StoreError> {
    let sqlite_options = SqliteOptions {
        path: PathBuf::from(location),
        limits: options.limits,
        history_policy: options.history_policy,
        must_exist: options.must_exist,
        ..SqliteOptions::default()
    };
    Ok(Arc::new(SqliteStore::open(sqlite_options).await?))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_location: &str, _options: StoreOptions) -> Result<SharedStore, StoreError> {
    Err(StoreError::InvalidInput(super::InvalidInput::Malformed {
        what: "the database location",
        expected: "an SQLite path: this hoard was built without the `postgres` feature",
    }))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(_location: &str, _options: StoreOptions) -> Result<SharedStore, StoreError> {
    Err(StoreError::InvalidInput(super::InvalidInput::Malformed {
        what: "the database location",
        expected: "a postgres:// URL: this hoard was built without the `sqlite` feature",
    }))
}
