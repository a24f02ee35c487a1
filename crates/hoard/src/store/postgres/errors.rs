//! PostgreSQL errors as text an operator can act on: the cause the driver hides, and what to do.
//!
//! Invariant: no PostgreSQL error reaches a message or a log as the driver's bare summary ("db
//! error", "Error occurred while creating a new object"): `describe_error` walks the error's
//! sources down to the server's own message (with its SQLSTATE) or the operating system's, and
//! adds what to do for the causes an operator meets (a database that does not exist, a server that
//! is down or restarting, a refused login, a read-only standby, a full disk).

use std::error::Error;

use tokio_postgres::error::{DbError, SqlState};

/// What to do about a server error, by SQLSTATE; `None` when the message says it all.
fn server_remedy(error: &DbError) -> Option<String> {
    let code = error.code();
    let remedy = if *code == SqlState::INVALID_CATALOG_NAME {
        "create the database (`CREATE DATABASE name`, or `createdb name`), or correct the database name in the URL"
            .to_string()
    } else if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
        "check the user and password in the URL, and the server's pg_hba.conf".to_string()
    } else if *code == SqlState::ADMIN_SHUTDOWN || *code == SqlState::CRASH_SHUTDOWN {
        "the PostgreSQL server is shutting down or restarting: hoard retries on its own (requests answer 503 \
         until it is back); if it does not come back, start it"
            .to_string()
    } else if *code == SqlState::CANNOT_CONNECT_NOW {
        "the PostgreSQL server is starting up, shutting down or in recovery: hoard retries on its own; wait for it"
            .to_string()
    } else if *code == SqlState::TOO_MANY_CONNECTIONS {
        "the server has no connection slots left: raise its max_connections, or lower hoard's pool size or its \
         number of processes"
            .to_string()
    } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        "the server accepts only reads (a standby, or default_transaction_read_only): point the URL at the \
         primary, e.g. list every host and add target_session_attrs=read-write"
            .to_string()
    } else if *code == SqlState::DISK_FULL {
        "the database server's disk is full: free space on it; nothing of this transaction was applied".to_string()
    } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        "the user lacks a privilege hoard needs (to create its schema and tables, or to use them): grant it, or \
         connect as the schema's owner"
            .to_string()
    } else if code.code().starts_with("08") {
        "the connection to PostgreSQL failed: hoard retries on its own; check the server and the network".to_string()
    } else {
        return None;
    };
    Some(remedy)
}

/// What to do about an operating-system error on the way to the server.
fn io_remedy(error: &std::io::Error) -> Option<&'static str> {
    use std::io::ErrorKind;
    Some(match error.kind() {
        ErrorKind::ConnectionRefused => {
            "nothing accepts connections at the URL's host and port: start PostgreSQL there, or correct the host \
             and port in the URL"
        }
        ErrorKind::TimedOut => "the server did not answer in time: check that it is up and that the network reaches it",
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::UnexpectedEof => {
            "the connection was cut (a restart, a failover, a proxy or a network fault): hoard retries on its own"
        }
        ErrorKind::NotFound | ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
            "the host cannot be reached: check the host name and port in the URL and the network"
        }
        _ => return None,
    })
}

/// The error's deepest cause hoard knows how to read, with its remedy.
fn known_cause(error: &(dyn Error + 'static)) -> Option<(String, Option<String>)> {
    let mut cause: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(db_error) = current.downcast_ref::<DbError>() {
            let mut text = format!("{} {}: {}", db_error.severity(), db_error.code().code(), db_error.message());
            if let Some(detail) = db_error.detail() {
                text.push_str(&format!(" (detail: {detail})"));
            }
            if let Some(hint) = db_error.hint() {
                text.push_str(&format!(" (server's hint: {hint})"));
            }
            return Some((text, server_remedy(db_error)));
        }
        if let Some(io_error) = current.downcast_ref::<std::io::Error>() {
            // An io::Error may wrap the real cause (e.g. a failed name lookup) as its own source.
            return Some((io_error.to_string(), io_remedy(io_error).map(str::to_string)));
        }
        cause = current.source();
    }
    None
}

/// `error` as one line: the driver's summary, the underlying cause (the server's message with its
/// SQLSTATE, or the operating system's) and, where there is one, what to do.
pub(crate) fn describe_error(error: &(dyn Error + 'static)) -> String {
    let summary = match error.downcast_ref::<deadpool_postgres::PoolError>() {
        // deadpool's words for "the connection could not be opened".
        Some(deadpool_postgres::PoolError::Backend(_)) => "cannot open a connection".to_string(),
        _ => error.to_string(),
    };
    let timed_out = error
        .downcast_ref::<deadpool_postgres::PoolError>()
        .is_some_and(|pool_error| matches!(pool_error, deadpool_postgres::PoolError::Timeout(_)));
    if timed_out {
        return format!(
            "{summary}: no connection could be made or freed within connect_timeout_ms; check that PostgreSQL is up \
             and reachable, and that it has connection slots free"
        );
    }
    match known_cause(error) {
        Some((cause, remedy)) => {
            let summary = summary.trim_end_matches(": db error").trim_end_matches("db error");
            let text =
                if summary.is_empty() || summary.contains(&cause) { cause } else { format!("{summary}: {cause}") };
            match remedy {
                Some(remedy) => format!("{text}; {remedy}"),
                None => text,
            }
        }
        None => {
            // No cause the driver knows: show every source it chained, which is all there is.
            let mut text = summary;
            let mut source = error.source();
            while let Some(current) = source {
                let next = current.to_string();
                if !text.contains(&next) {
                    text.push_str(": ");
                    text.push_str(&next);
                }
                source = current.source();
            }
            text
        }
    }
}

/// `describe_error` for a value whose type is not known here: the driver's and pool's errors are
/// described, anything else (a message hoard wrote itself) is shown as it is.
pub(crate) fn describe_any<E: std::fmt::Display + 'static>(error: &E) -> String {
    let any: &dyn std::any::Any = error;
    if let Some(error) = any.downcast_ref::<tokio_postgres::Error>() {
        return describe_error(error);
    }
    if let Some(error) = any.downcast_ref::<deadpool_postgres::PoolError>() {
        return describe_error(error);
    }
    error.to_string()
}
