//! Schema creation and migrations of the PostgreSQL store.
//!
//! Invariant: a schema is migrated exactly once, whatever the number of processes opening it at
//! the same moment: every process runs the migrations in one transaction that first takes a
//! transaction-scoped advisory lock derived from the schema name, so the second process waits,
//! then sees the `schema_version` rows of the first and applies nothing. A database migrated by a
//! newer hoard (a version this build does not know) is refused rather than misread.
//!
//! The portable profile (no advisory locks) keeps the same invariant differently: its migration
//! transaction is SERIALIZABLE, and DDL is transactional, so of two processes migrating at once
//! one commits and the other fails (a serialization failure, or a duplicate catalog entry) having
//! applied nothing; the loser retries (`hoard::retry`), finds the versions recorded, and applies
//! nothing.

use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::sql::Sql;
use super::{PostgresProfile, quote_identifier, unavailable};
use crate::retry::{Attempt, Backoff, Jitter, Retry};
use crate::store::StoreError;

/// Attempts of a portable-profile migration that lost a race to another process (the second
/// attempt normally finds the work done).
pub const PORTABLE_MIGRATION_ATTEMPTS_MAX: u32 = 8;

/// The migration that only sets lz4 compression: the portable profile records it without running
/// it (distributed SQL engines have no TOAST compression settings).
const LZ4_MIGRATION_VERSION: i64 = 2;

/// The migrations, in order; `schema_version` records which have been applied.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_lz4_values.sql")),
    (3, include_str!("migrations/0003_history_deltas.sql")),
    (4, include_str!("migrations/0004_operator_indexes.sql")),
    (5, include_str!("migrations/0005_notifications.sql")),
];

/// The schema version this build of hoard writes and reads.
pub const SCHEMA_VERSION_LATEST: i64 = 5;

/// Creates the schema if missing and applies every migration it lacks. Returns the schema
/// version now in force.
pub async fn migrate(pool: &Pool, schema: &str, profile: PostgresProfile) -> Result<i64, StoreError> {
    match profile {
        PostgresProfile::Full => migrate_once(pool, schema, profile).await.map_err(MigrationFailure::into_error),
        PostgresProfile::Portable => {
            let jitter = Jitter::seeded(Jitter::seed_from(schema));
            Retry::new("migrate the postgres schema", PORTABLE_MIGRATION_ATTEMPTS_MAX, Backoff::DEFAULT, &jitter)
                .run(|_| async {
                    match migrate_once(pool, schema, profile).await {
                        Ok(version) => Attempt::Done(version),
                        Err(MigrationFailure::LostRace(error)) => Attempt::Retry(error),
                        Err(MigrationFailure::Failed(error)) => Attempt::Fail(error),
                    }
                })
                .await
                .map_err(|gave_up| gave_up.into_error())
        }
    }
}

/// Why one migration transaction failed.
enum MigrationFailure {
    /// Another process migrated at the same moment; nothing of this attempt applied.
    LostRace(StoreError),
    Failed(StoreError),
}

impl MigrationFailure {
    fn into_error(self) -> StoreError {
        match self {
            MigrationFailure::LostRace(error) | MigrationFailure::Failed(error) => error,
        }
    }
}

/// What a failed migration statement means: a lost race (the portable profile retries it) or a
/// failure.
fn migration_error(context: impl std::fmt::Display) -> impl Fn(tokio_postgres::Error) -> MigrationFailure {
    move |error| {
        let lost_race = error.code().is_some_and(|code| {
            [
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::UNIQUE_VIOLATION,
                SqlState::DUPLICATE_TABLE,
                SqlState::DUPLICATE_SCHEMA,
                SqlState::DUPLICATE_OBJECT,
            ]
            .contains(code)
        });
        let error = unavailable(&context, error);
        if lost_race { MigrationFailure::LostRace(error) } else { MigrationFailure::Failed(error) }
    }
}

async fn migrate_once(pool: &Pool, schema: &str, profile: PostgresProfile) -> Result<i64, MigrationFailure> {
    let mut client =
        pool.get().await.map_err(|error| MigrationFailure::Failed(unavailable("connect for migrations", error)))?;
    let isolation = match profile {
        PostgresProfile::Full => tokio_postgres::IsolationLevel::ReadCommitted,
        PostgresProfile::Portable => tokio_postgres::IsolationLevel::Serializable,
    };
    let transaction = client
        .build_transaction()
        .isolation_level(isolation)
        .start()
        .await
        .map_err(migration_error("begin migrations"))?;
    if profile == PostgresProfile::Full {
        let lock_name = format!("hoard-migrate:{schema}");
        transaction
            .execute("SELECT pg_advisory_xact_lock(hashtext($1)::bigint)", &[&lock_name])
            .await
            .map_err(migration_error("take the migration lock"))?;
    }
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
        .map_err(migration_error("create the schema"))?;
    let row = transaction
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .map_err(migration_error("read the schema version"))?;
    let found_version: i64 = row.try_get(0).map_err(migration_error("read the schema version"))?;
    if found_version > SCHEMA_VERSION_LATEST {
        return Err(MigrationFailure::Failed(StoreError::corrupt(format!(
            "schema {schema} is at version {found_version}, newer than this hoard knows ({SCHEMA_VERSION_LATEST}); upgrade hoard"
        ))));
    }
    for (version, sql) in MIGRATIONS {
        if *version <= found_version {
            continue;
        }
        let skipped = profile == PostgresProfile::Portable && *version == LZ4_MIGRATION_VERSION;
        if !skipped {
            transaction.batch_execute(sql).await.map_err(migration_error(format!("apply migration {version}")))?;
        }
        transaction
            .execute(
                "INSERT INTO schema_version (version, applied_at_ms)
                 VALUES ($1, (extract(epoch from clock_timestamp()) * 1000)::bigint)",
                &[version],
            )
            .await
            .map_err(migration_error(format!("record migration {version}")))?;
    }
    transaction.commit().await.map_err(migration_error("commit migrations"))?;
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
    sql: &Sql,
    config: &tokio_postgres::Config,
    schema: &str,
) -> Result<(), StoreError> {
    let client = pool.get().await.map_err(|error| unavailable("connect", error))?;
    let table = format!("{}.schema_version", quote_identifier(schema));
    let row = sql
        .query_opt(&client, "SELECT to_regclass($1) IS NOT NULL", &[(&table, Type::TEXT)])
        .await
        .map_err(|error| unavailable("look for hoard's schema", error))?
        .ok_or_else(|| StoreError::unavailable("postgres: look for hoard's schema: no row answered"))?;
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
