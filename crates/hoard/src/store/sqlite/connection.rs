//! Opening SQLite connections with every pragma hoard relies on set explicitly.
//!
//! Invariant: no connection is used before `configure_write_connection` or
//! `configure_read_connection` ran on it, so no behaviour depends on SQLite's compile-time
//! defaults or on whatever a previous program left in the file. The pragmas and why:
//!
//! - `journal_mode=WAL` (persistent in the file): readers never block the writer nor the writer
//!   readers, and a commit appends to the WAL instead of rewriting pages, which is what makes one
//!   fsync per group commit cheap. Several processes on one machine may share the file (WAL needs
//!   shared memory, so not over a network file system).
//! - `synchronous=FULL` (default, `SqliteSynchronous::Full`): the WAL is fsynced at every COMMIT,
//!   so an acknowledged commit survives power loss. `NORMAL` fsyncs only at checkpoints: still
//!   safe against a process crash, but a power loss or OS crash may lose the last commits that
//!   were acknowledged (the file stays consistent, it just ends earlier).
//! - `fullfsync` and `checkpoint_fullfsync` (with FULL): on macOS a plain fsync does not reach the
//!   platter; F_FULLFSYNC does. No effect elsewhere.
//! - `busy_timeout` (option, default 10 s): how long a connection waits for another process's
//!   write lock before giving up with SQLITE_BUSY (`Unavailable`).
//! - `foreign_keys=ON`: off by default in SQLite; hoard declares none today, but a future
//!   migration that does must not be silently unenforced.
//! - `wal_autocheckpoint` (option, default 1000 pages): the WAL is copied back into the database
//!   after about this many pages, so it does not grow without bound; `journal_size_limit` (64 MiB)
//!   truncates the WAL file after a checkpoint so the disk space comes back.
//! - `temp_store=MEMORY`: sorts and temporary indexes never touch the disk.
//! - read connections are opened read-only (`SQLITE_OPEN_READ_ONLY`) and also set `query_only`,
//!   so a bug in a read path cannot write.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::SqliteSynchronous;
use crate::store::StoreError;

/// The WAL file is truncated to at most this size after a checkpoint.
pub(crate) const JOURNAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// Pause between attempts to switch a fresh file to WAL while another process holds it.
const JOURNAL_MODE_RETRY_PAUSE_MS: u64 = 20;

/// The connection settings shared by the writer and the readers.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionSettings {
    pub busy_timeout_ms: u64,
    pub synchronous: SqliteSynchronous,
    pub wal_autocheckpoint_pages: u32,
}

fn open_error(path: &Path, error: rusqlite::Error) -> StoreError {
    StoreError::unavailable(format!("cannot open the SQLite file {}: {error}", path.display()))
}

fn pragma_error(name: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |error| StoreError::unavailable(format!("setting SQLite pragma {name}: {error}"))
}

fn set_common_pragmas(connection: &Connection, settings: &ConnectionSettings) -> Result<(), StoreError> {
    connection.busy_timeout(Duration::from_millis(settings.busy_timeout_ms)).map_err(pragma_error("busy_timeout"))?;
    connection.pragma_update(None, "foreign_keys", "ON").map_err(pragma_error("foreign_keys"))?;
    connection.pragma_update(None, "temp_store", "MEMORY").map_err(pragma_error("temp_store"))?;
    let synchronous = match settings.synchronous {
        SqliteSynchronous::Full => "FULL",
        SqliteSynchronous::Normal => "NORMAL",
    };
    connection.pragma_update(None, "synchronous", synchronous).map_err(pragma_error("synchronous"))?;
    let full = matches!(settings.synchronous, SqliteSynchronous::Full);
    connection.pragma_update(None, "fullfsync", full).map_err(pragma_error("fullfsync"))?;
    connection.pragma_update(None, "checkpoint_fullfsync", full).map_err(pragma_error("checkpoint_fullfsync"))?;
    Ok(())
}

/// Switches the file to WAL. On a fresh file two processes may race to do it; the switch needs an
/// exclusive lock and SQLite may answer BUSY without calling the busy handler, so it is retried
/// here until `busy_timeout_ms` has passed.
fn set_wal(connection: &Connection, settings: &ConnectionSettings) -> Result<(), StoreError> {
    let deadline = Instant::now() + Duration::from_millis(settings.busy_timeout_ms);
    loop {
        let result = connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0));
        match result {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => {
                return Err(StoreError::unavailable(format!(
                    "SQLite refused journal_mode=WAL (it stayed {mode}); hoard needs WAL, which needs a local file system"
                )));
            }
            Err(error) if Instant::now() < deadline && is_busy(&error) => {
                std::thread::sleep(Duration::from_millis(JOURNAL_MODE_RETRY_PAUSE_MS));
            }
            Err(error) => return Err(pragma_error("journal_mode")(error)),
        }
    }
}

pub(crate) fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(error.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

/// Opens the connection that writes (the writer thread's, and the one migrations run on),
/// creating the file if it does not exist.
pub(crate) fn open_write_connection(path: &Path, settings: &ConnectionSettings) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags).map_err(|error| open_error(path, error))?;
    set_common_pragmas(&connection, settings)?;
    set_wal(&connection, settings)?;
    connection
        .pragma_update(None, "wal_autocheckpoint", settings.wal_autocheckpoint_pages)
        .map_err(pragma_error("wal_autocheckpoint"))?;
    connection
        .pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT_BYTES)
        .map_err(pragma_error("journal_size_limit"))?;
    Ok(connection)
}

/// Opens a read-only connection to a file the writer already created and switched to WAL.
pub(crate) fn open_read_connection(path: &Path, settings: &ConnectionSettings) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags).map_err(|error| open_error(path, error))?;
    set_common_pragmas(&connection, settings)?;
    connection.pragma_update(None, "query_only", true).map_err(pragma_error("query_only"))?;
    Ok(connection)
}
