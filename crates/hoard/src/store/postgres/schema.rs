//! Schema creation and migrations of the PostgreSQL store.
//!
//! Invariant: a schema is migrated exactly once, whatever the number of processes opening it at
//! the same moment: every process runs the migrations in one transaction that first takes a
//! transaction-scoped advisory lock derived from the schema name, so the second process waits,
//! then sees the `schema_version` rows of the first and applies nothing. A database migrated by a
//! newer hoard (a version this build does not know) is refused rather than misread.

use deadpool_postgres::Pool;

use super::{quote_identifier, unavailable};
use crate::store::StoreError;

/// The migrations, in order; `schema_version` records which have been applied.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_lz4_values.sql")),
    (3, include_str!("migrations/0003_history_deltas.sql")),
];

/// The schema version this build of hoard writes and reads.
pub const SCHEMA_VERSION_LATEST: i64 = 3;

/// Creates the schema if missing and applies every migration it lacks. Returns the schema
/// version now in force.
pub async fn migrate(pool: &Pool, schema: &str) -> Result<i64, StoreError> {
    let mut client = pool.get().await.map_err(|error| unavailable("connect for migrations", error))?;
    let transaction = client.transaction().await.map_err(|error| unavailable("begin migrations", error))?;
    let lock_name = format!("hoard-migrate:{schema}");
    transaction
        .execute("SELECT pg_advisory_xact_lock(hashtext($1)::bigint)", &[&lock_name])
        .await
        .map_err(|error| unavailable("take the migration lock", error))?;
    let quoted = quote_identifier(schema);
    transaction
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {quoted};
             SET LOCAL search_path TO {quoted};
             CREATE TABLE IF NOT EXISTS schema_version (
                 version BIGINT NOT NULL PRIMARY KEY,
                 applied_at_ms BIGINT NOT NULL
             );"
        ))
        .await
        .map_err(|error| unavailable("create the schema", error))?;
    let row = transaction
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .map_err(|error| unavailable("read the schema version", error))?;
    let found_version: i64 = row.try_get(0).map_err(|error| unavailable("read the schema version", error))?;
    if found_version > SCHEMA_VERSION_LATEST {
        return Err(StoreError::corrupt(format!(
            "schema {schema} is at version {found_version}, newer than this hoard knows ({SCHEMA_VERSION_LATEST}); upgrade hoard"
        )));
    }
    for (version, sql) in MIGRATIONS {
        if *version <= found_version {
            continue;
        }
        transaction
            .batch_execute(sql)
            .await
            .map_err(|error| unavailable(format!("apply migration {version}"), error))?;
        transaction
            .execute(
                "INSERT INTO schema_version (version, applied_at_ms)
                 VALUES ($1, (extract(epoch from clock_timestamp()) * 1000)::bigint)",
                &[version],
            )
            .await
            .map_err(|error| unavailable(format!("record migration {version}"), error))?;
    }
    transaction.commit().await.map_err(|error| unavailable("commit migrations", error))?;
    Ok(SCHEMA_VERSION_LATEST)
}

/// Where a configuration points, for messages: `database "name" on host:port` (never the
/// password).
pub(crate) fn target_text(config: &tokio_postgres::Config) -> String {
    let database = config.get_dbname().or(config.get_user()).unwrap_or("(default)");
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let port = ports.get(index).or(ports.first()).copied().unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    format!("database \"{database}\" on {}", hosts.join(","))
}

/// Refuses, creating nothing, a database in which `schema` holds no hoard tables (operators'
/// reads open existing data only).
pub async fn refuse_missing_schema(
    pool: &Pool,
    config: &tokio_postgres::Config,
    schema: &str,
) -> Result<(), StoreError> {
    let client = pool.get().await.map_err(|error| unavailable("connect", error))?;
    let table = format!("{}.schema_version", quote_identifier(schema));
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(|error| unavailable("look for hoard's schema", error))?;
    let present: bool = row.try_get(0).map_err(|error| unavailable("look for hoard's schema", error))?;
    if present {
        return Ok(());
    }
    Err(StoreError::wrong_database(format!(
        "no hoard data in the PostgreSQL {}: it has no schema {schema} with hoard's tables (nothing was created). \
         Check the database name in the URL (--db or HOARD_DB) and the schema; `hoard serve` and the write \
         commands create them",
        target_text(config)
    )))
}
