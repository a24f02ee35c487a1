//! The SQLite schema and its migrations, applied when a store opens.
//!
//! Invariant: a file's `schema_version` names the last migration applied to it, and migrations
//! run inside one `BEGIN IMMEDIATE` transaction together with the version update, so two
//! processes opening a fresh file at once apply each migration exactly once (the second waits
//! for the first's write lock, then finds the version already current). A file written by a
//! newer hoard (a version above `SCHEMA_VERSION_LATEST`) is refused, never downgraded.

use rusqlite::{Connection, OptionalExtension};

use crate::store::StoreError;

/// Migrations in order: `MIGRATIONS[n]` takes a file from version `n` to version `n + 1`.
const MIGRATIONS: &[&str] =
    &[include_str!("schema_v1.sql"), include_str!("schema_v2.sql"), include_str!("schema_v3.sql")];

/// The schema version this build of hoard writes.
pub const SCHEMA_VERSION_LATEST: i64 = MIGRATIONS.len() as i64;

/// Brings the file's schema to `SCHEMA_VERSION_LATEST`; a no-op when it is already there.
pub(crate) fn migrate(connection: &Connection) -> Result<(), StoreError> {
    let unavailable = |error: rusqlite::Error| {
        StoreError::unavailable(format!("migrating the SQLite schema: {}", super::describe_error(&error)))
    };
    connection.execute_batch("BEGIN IMMEDIATE").map_err(unavailable)?;
    let result = migrate_in_transaction(connection);
    match result {
        Ok(()) => connection.execute_batch("COMMIT").map_err(unavailable),
        Err(error) => {
            // The migration failed before COMMIT: rolling back leaves the file as it was.
            let _ = connection.execute_batch("ROLLBACK");
            Err(error)
        }
    }
}

fn migrate_in_transaction(connection: &Connection) -> Result<(), StoreError> {
    let unavailable = |error: rusqlite::Error| {
        StoreError::unavailable(format!("migrating the SQLite schema: {}", super::describe_error(&error)))
    };
    connection
        .execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 singleton INTEGER PRIMARY KEY NOT NULL CHECK (singleton = 1),
                 version INTEGER NOT NULL
             ) STRICT;",
        )
        .map_err(unavailable)?;
    let current: i64 = connection
        .query_row("SELECT version FROM schema_version WHERE singleton = 1", [], |row| row.get(0))
        .optional()
        .map_err(unavailable)?
        .unwrap_or(0);
    if current > SCHEMA_VERSION_LATEST {
        return Err(StoreError::corrupt(format!(
            "the SQLite file has schema version {current}, but this hoard knows versions up to \
             {SCHEMA_VERSION_LATEST}; open it with a newer hoard"
        )));
    }
    let first_pending =
        usize::try_from(current).map_err(|_| StoreError::corrupt(format!("negative schema version {current}")))?;
    for migration in MIGRATIONS.iter().skip(first_pending) {
        connection.execute_batch(migration).map_err(unavailable)?;
    }
    connection
        .execute(
            "INSERT INTO schema_version (singleton, version) VALUES (1, ?1)
             ON CONFLICT (singleton) DO UPDATE SET version = excluded.version",
            [SCHEMA_VERSION_LATEST],
        )
        .map_err(unavailable)?;
    Ok(())
}

/// Reads the file's schema version (0 when no migration ran).
pub(crate) fn schema_version(connection: &Connection) -> Result<i64, StoreError> {
    let version: Option<i64> = connection
        .query_row("SELECT version FROM schema_version WHERE singleton = 1", [], |row| row.get(0))
        .optional()
        .map_err(|error| StoreError::unavailable(format!("reading the SQLite schema version: {error}")))?;
    Ok(version.unwrap_or(0))
}
