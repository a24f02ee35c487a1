//! Tells what the file at a database path is before hoard writes anything to it: nothing, an
//! empty file, a hoard database, an SQLite database of another application, or not an SQLite
//! file at all.
//!
//! Invariant: identifying a file never changes it or its folder. The 100-byte header is read with
//! plain file I/O; when the header cannot decide (application id 0, or a header that a WAL beside
//! it may have superseded), a read-only SQLite connection lists the tables: `immutable=1` when
//! there is no WAL with content (so SQLite creates no `-wal` or `-shm` file), `mode=ro` when there
//! is one (the writer that left it also left the `-shm`). A file that is not hoard's is refused
//! before any connection that could write to it (journal mode, tables, application id) is opened.

use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::connection::describe_error;
use crate::store::StoreError;

/// `PRAGMA application_id` of every hoard database ("hoar" in ASCII): stamped when hoard first
/// writes a file, so a hoard database is recognised from its header alone.
pub const HOARD_SQLITE_APPLICATION_ID: i32 = 0x686f_6172;

/// Tables that only a hoard database has together, for files made before the application id was
/// stamped.
const HOARD_TABLES: [&str; 3] = ["schema_version", "docs", "history"];

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Tables named in a refusal of another application's file, at most.
const FOREIGN_TABLES_NAMED_MAX: usize = 5;

/// What is at a database path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// No file.
    Missing,
    /// A file with nothing in it: zero bytes, or an SQLite database without tables or
    /// application id. hoard may make it a hoard database; there is no data to find in it.
    Empty,
    /// A hoard database; `application_id_stamped` is false for files from before the stamp.
    Hoard { application_id_stamped: bool },
    /// An SQLite database that is not hoard's.
    OtherApplication { application_id: i32, tables: Vec<String> },
    /// A file that is not an SQLite database at all.
    NotSqlite,
}

/// The path of the WAL file SQLite keeps beside `path`.
pub(crate) fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn has_wal_content(path: &Path) -> bool {
    std::fs::metadata(wal_path(path)).is_ok_and(|metadata| metadata.len() > 0)
}

/// Identifies the file at `path` without changing anything.
pub(crate) fn identify(path: &Path) -> Result<FileKind, StoreError> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        // A path through a file (`a-file/hoard.sqlite3`) names nothing either; creating its folder
        // then says why it cannot be.
        Err(error) if matches!(error.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            return Ok(FileKind::Missing);
        }
        Err(error) => {
            return Err(StoreError::unavailable(format!(
                "cannot read the SQLite file {}: {error}; check its permissions",
                path.display()
            )));
        }
    };
    if file.metadata().is_ok_and(|metadata| metadata.is_dir()) {
        return Err(StoreError::wrong_database(format!(
            "{} is a folder, not a database file; give the path of the database file inside it (e.g. {}/hoard.sqlite3)",
            path.display(),
            path.display()
        )));
    }
    let mut header = Vec::with_capacity(100);
    file.by_ref()
        .take(100)
        .read_to_end(&mut header)
        .map_err(|error| StoreError::unavailable(format!("cannot read the SQLite file {}: {error}", path.display())))?;
    let wal_has_content = has_wal_content(path);
    if header.is_empty() && !wal_has_content {
        return Ok(FileKind::Empty);
    }
    if !header.is_empty() && (header.len() < 100 || !header.starts_with(SQLITE_HEADER_MAGIC)) {
        return Ok(FileKind::NotSqlite);
    }
    let header_application_id =
        header.get(68..72).and_then(|bytes| <[u8; 4]>::try_from(bytes).ok()).map_or(0, i32::from_be_bytes);
    // A WAL with content may hold a newer page 1 (hoard stamps its id after switching to WAL), so
    // the header decides alone only when there is none.
    if !wal_has_content {
        if header_application_id == HOARD_SQLITE_APPLICATION_ID {
            return Ok(FileKind::Hoard { application_id_stamped: true });
        }
        if header_application_id != 0 {
            return Ok(FileKind::OtherApplication { application_id: header_application_id, tables: Vec::new() });
        }
    }
    identify_by_tables(path, wal_has_content)
}

/// Percent-encodes the characters that mean something in an SQLite URI filename.
fn uri_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut encoded = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '%' => encoded.push_str("%25"),
            '?' => encoded.push_str("%3f"),
            '#' => encoded.push_str("%23"),
            other => encoded.push(other),
        }
    }
    encoded
}

fn identify_by_tables(path: &Path, wal_has_content: bool) -> Result<FileKind, StoreError> {
    let mode = if wal_has_content { "mode=ro" } else { "immutable=1" };
    let uri = format!("file:{}?{mode}", uri_path(path));
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let read_failed = |error: rusqlite::Error| {
        if error.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) {
            return None;
        }
        Some(StoreError::unavailable(format!(
            "cannot read the SQLite file {} to check that it is a hoard database: {}",
            path.display(),
            describe_error(&error)
        )))
    };
    let connection = match Connection::open_with_flags(&uri, flags) {
        Ok(connection) => connection,
        Err(error) => return read_failed(error).map_or(Ok(FileKind::NotSqlite), Err),
    };
    let application_id: i32 = match connection.query_row("PRAGMA application_id", [], |row| row.get(0)) {
        Ok(id) => id,
        Err(error) => return read_failed(error).map_or(Ok(FileKind::NotSqlite), Err),
    };
    if application_id == HOARD_SQLITE_APPLICATION_ID {
        return Ok(FileKind::Hoard { application_id_stamped: true });
    }
    let tables: Vec<String> = match connection
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .and_then(|mut statement| statement.query_map([], |row| row.get(0))?.collect())
    {
        Ok(tables) => tables,
        Err(error) => return read_failed(error).map_or(Ok(FileKind::NotSqlite), Err),
    };
    if application_id != 0 {
        return Ok(FileKind::OtherApplication { application_id, tables });
    }
    if tables.is_empty() {
        return Ok(FileKind::Empty);
    }
    let has_hoard_tables = HOARD_TABLES.iter().all(|table| tables.iter().any(|name| name == table));
    // hoard's schema_version is a singleton row; another application's table of that name is not.
    let has_hoard_version_row = has_hoard_tables
        && connection.query_row("SELECT singleton, version FROM schema_version", [], |_| Ok(())).is_ok();
    if has_hoard_version_row {
        Ok(FileKind::Hoard { application_id_stamped: false })
    } else {
        Ok(FileKind::OtherApplication { application_id, tables })
    }
}

/// The refusal of a file hoard must not touch, saying what to do.
pub(crate) fn refusal(path: &Path, kind: &FileKind) -> Option<StoreError> {
    let message = match kind {
        FileKind::NotSqlite => format!(
            "{} is not an SQLite database, so not a hoard database; hoard left it untouched. Check the path \
             (--db or HOARD_DB), or give a new path for a new database",
            path.display()
        ),
        FileKind::OtherApplication { application_id, tables } => {
            let mut named: Vec<&str> = tables.iter().take(FOREIGN_TABLES_NAMED_MAX).map(String::as_str).collect();
            if tables.len() > FOREIGN_TABLES_NAMED_MAX {
                named.push("…");
            }
            let what = match (application_id, named.is_empty()) {
                (0, true) => String::new(),
                (0, false) => format!(" (tables: {})", named.join(", ")),
                (id, true) => format!(" (application id {id:#x})"),
                (id, false) => format!(" (application id {id:#x}; tables: {})", named.join(", ")),
            };
            format!(
                "{} is an SQLite database of another application{what}, not a hoard database; hoard left it \
                 untouched. Check the path (--db or HOARD_DB), or give a new path for a new database",
                path.display()
            )
        }
        FileKind::Missing | FileKind::Empty | FileKind::Hoard { .. } => return None,
    };
    Some(StoreError::wrong_database(message))
}

/// The refusal of a path that must name an existing hoard database but does not.
pub(crate) fn missing_refusal(path: &Path, kind: &FileKind) -> Option<StoreError> {
    let message = match kind {
        FileKind::Missing => format!(
            "no hoard database at {}: the file does not exist (nothing was created). Check the path (--db or \
             HOARD_DB); `hoard serve` and the write commands create a new database",
            path.display()
        ),
        FileKind::Empty => format!(
            "{} is empty: it holds no hoard data yet (nothing was changed). Check the path (--db or HOARD_DB); \
             `hoard serve` and the write commands make it a hoard database",
            path.display()
        ),
        _ => return None,
    };
    Some(StoreError::wrong_database(message))
}
