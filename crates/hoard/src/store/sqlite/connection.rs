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
//!
//! Errors: every SQLite error is reported through `describe_error` (its cause, SQLite's code and
//! what to do); a file SQLite cannot open for writing is explained by asking the operating system
//! (a read-only mount, permissions), since SQLite says only "unable to open database file".

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

/// What to do about an SQLite error, by its primary code; `None` when the error says it all.
fn remedy(code: rusqlite::ErrorCode) -> Option<&'static str> {
    use rusqlite::ErrorCode;
    Some(match code {
        ErrorCode::DiskFull => {
            "the file system holding the database is full: free space there (or move the database), then retry"
        }
        ErrorCode::ReadOnly => {
            "the database or its folder is read-only (a read-only mount, or file permissions): hoard writes the \
             database and its -wal and -shm files beside it, so make the folder writable"
        }
        ErrorCode::CannotOpen => {
            "check that the folder exists and is writable: hoard writes the database and its -wal and -shm files \
             beside it"
        }
        ErrorCode::PermissionDenied => "the operating system refused access: check the file's and folder's permissions",
        ErrorCode::SystemIoFailure => {
            "the operating system reported an I/O error (a failing disk, a full disk, or a file system that went \
             away): check the disk and the kernel log"
        }
        ErrorCode::DatabaseCorrupt => {
            "the file is damaged: check it with `sqlite3 FILE 'PRAGMA integrity_check'` and restore it from a backup"
        }
        ErrorCode::NotADatabase => "the file is not an SQLite database: check the path",
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
            "another process held the database's write lock longer than busy_timeout_ms: retry, and look for a \
             process that keeps a long transaction open"
        }
        ErrorCode::OutOfMemory => "the process ran out of memory",
        ErrorCode::FileLockingProtocolFailed => {
            "file locking failed: hoard needs a local file system (WAL does not work over a network file system)"
        }
        _ => return None,
    })
}

/// An SQLite error as text that names its cause (with SQLite's code) and, where there is
/// something to do, what to do. Every SQLite error hoard reports goes through this.
pub(crate) fn describe_error(error: &rusqlite::Error) -> String {
    match (error.sqlite_error_code(), error) {
        (Some(code), rusqlite::Error::SqliteFailure(failure, _)) => match remedy(code) {
            Some(remedy) => format!("{error} (SQLite code {}): {remedy}", failure.extended_code),
            None => format!("{error} (SQLite code {})", failure.extended_code),
        },
        _ => error.to_string(),
    }
}

/// Why a file cannot be opened for writing, found by asking the operating system directly
/// (SQLite reports a read-only mount as "unable to open database file"). Opens the existing file
/// for writing without changing it, or, for a missing one, creates and removes a probe file in
/// its folder; `None` when that works.
pub(crate) fn explain_write_refusal(path: &Path) -> Option<String> {
    let folder = path.parent().filter(|folder| !folder.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let probe = if path.exists() {
        std::fs::OpenOptions::new().read(true).write(true).open(path).err().map(|error| (path, error))
    } else {
        // Only after SQLite failed to create the file: try to create a file of our own there.
        let probe_path = folder.join(format!(".hoard-write-probe-{}", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe_path) {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe_path);
                None
            }
            Err(error) => Some((folder, error)),
        }
    };
    let (what, error) = probe?;
    Some(match error.kind() {
        std::io::ErrorKind::ReadOnlyFilesystem => read_only_file_system(what),
        std::io::ErrorKind::PermissionDenied => format!(
            "this user may not write {} ({error}): change its permissions or run hoard as its owner",
            what.display()
        ),
        std::io::ErrorKind::NotFound => format!("{} does not exist", what.display()),
        _ => format!("{}: {error}", what.display()),
    })
}

/// The explanation of a read-only mount under `what` (the file, or the folder it goes in).
pub(crate) fn read_only_file_system(what: &Path) -> String {
    format!(
        "{} is on a read-only file system: hoard writes the database and its -wal and -shm files beside it; \
         remount it read-write, or copy the database to a writable folder to inspect it",
        what.display()
    )
}

/// An error of opening or configuring a connection, with the operating system's reason when
/// SQLite gives only "unable to open" or "readonly".
fn open_failure(path: &Path, doing: &str, error: &rusqlite::Error) -> StoreError {
    let needs_explaining = matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::PermissionDenied)
    );
    match explain_write_refusal(path).filter(|_| needs_explaining) {
        Some(reason) => {
            StoreError::unavailable(format!("cannot {doing} the SQLite file {} ({error}): {reason}", path.display()))
        }
        None => StoreError::unavailable(format!(
            "cannot {doing} the SQLite file {}: {}",
            path.display(),
            describe_error(error)
        )),
    }
}

fn open_error(path: &Path, error: rusqlite::Error) -> StoreError {
    open_failure(path, "open", &error)
}

fn pragma_error<'a>(path: &'a Path, name: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + 'a {
    move |error| open_failure(path, &format!("set pragma {name} on"), &error)
}

fn set_common_pragmas(path: &Path, connection: &Connection, settings: &ConnectionSettings) -> Result<(), StoreError> {
    let pragma_error = |name| pragma_error(path, name);
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
fn set_wal(path: &Path, connection: &Connection, settings: &ConnectionSettings) -> Result<(), StoreError> {
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
            Err(error) => return Err(pragma_error(path, "journal_mode")(error)),
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
    // SQLite opens a file it may not write read-only without a word; hoard must write, so say why
    // it cannot now rather than at the first commit.
    match connection.is_readonly(rusqlite::MAIN_DB) {
        Ok(false) => {}
        Ok(true) => {
            let reason = explain_write_refusal(path).unwrap_or_else(|| "SQLite opened it read-only".to_string());
            return Err(StoreError::unavailable(format!("cannot write the SQLite file {}: {reason}", path.display())));
        }
        Err(error) => return Err(open_failure(path, "check write access to", &error)),
    }
    set_common_pragmas(path, &connection, settings)?;
    set_wal(path, &connection, settings)?;
    connection
        .pragma_update(None, "wal_autocheckpoint", settings.wal_autocheckpoint_pages)
        .map_err(pragma_error(path, "wal_autocheckpoint"))?;
    connection
        .pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT_BYTES)
        .map_err(pragma_error(path, "journal_size_limit"))?;
    Ok(connection)
}

/// Stamps hoard's application id into the file's header (see `identify`), so the file is known
/// as hoard's from its header alone. Idempotent; a write of page 1, made before the migrations.
pub(crate) fn stamp_application_id(path: &Path, connection: &Connection) -> Result<(), StoreError> {
    connection
        .pragma_update(None, "application_id", super::identify::HOARD_SQLITE_APPLICATION_ID)
        .map_err(pragma_error(path, "application_id"))
}

/// Opens a read-only connection to a file the writer already created and switched to WAL.
pub(crate) fn open_read_connection(path: &Path, settings: &ConnectionSettings) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags).map_err(|error| open_error(path, error))?;
    set_common_pragmas(path, &connection, settings)?;
    connection.pragma_update(None, "query_only", true).map_err(pragma_error(path, "query_only"))?;
    Ok(connection)
}
