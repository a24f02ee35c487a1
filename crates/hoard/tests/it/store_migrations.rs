//! Databases written by the previous schema (SQLite 1, PostgreSQL 2: every version whole in
//! `history`, the latest one too) open under today's schema and read back identically, history
//! included; new versions then supersede them as deltas, and pruning works across both kinds.
//!
//! The old schema is made by the old migration SQL itself, and its rows exactly as the old
//! writers wrote them (docs row plus one history row per version, the latest duplicating docs).

use hoard::store::limits::HistoryPolicy;
use hoard::store::postgres::{PostgresOptions, PostgresStore};
use hoard::store::sqlite::{SQLITE_SCHEMA_VERSION, SqliteOptions, SqliteStore};
use hoard::store::{CommitId, DocId, Store, VersionInfo, VersionQuery, Write, get};
use serde_json::{Map, Value, json};

use crate::backends::{fresh_schema_name, postgres_url};
use crate::store_conformance::{commit_ok, doc};

/// One version as the old schema stored it.
struct OldVersion {
    version: u64,
    written_at_ms: i64,
    value: Option<Value>,
    attributes: Map<String, Value>,
    user_ids: Vec<String>,
    commit_id: CommitId,
}

fn profile(coins: i64) -> Value {
    json!({"coins": coins, "items": (0..50).map(|n| format!("item-{n}")).collect::<Vec<_>>(), "journal": "z".repeat(3_000)})
}

/// A key's old history: three puts, a deletion, a re-creation and a metadata-only version.
fn old_history() -> Vec<OldVersion> {
    let version = |version: u64, value: Option<Value>, tag: Option<&str>| OldVersion {
        version,
        written_at_ms: 1_767_225_600_000 + version as i64 * 1_000,
        attributes: tag.map(|tag| Map::from_iter([("tag".to_string(), json!(tag))])).unwrap_or_default(),
        user_ids: if value.is_some() { vec!["1001".to_string()] } else { Vec::new() },
        value,
        commit_id: CommitId(uuid::Uuid::new_v4()),
    };
    vec![
        version(1, Some(profile(10)), None),
        version(2, Some(profile(20)), None),
        version(3, Some(profile(25)), Some("big")),
        version(4, None, None),
        version(5, Some(profile(5)), None),
        version(6, Some(profile(5)), Some("renamed")),
    ]
}

fn text(value: &Option<Value>) -> Option<String> {
    value.as_ref().map(|value| serde_json::to_string(value).expect("serializes"))
}

fn expected_listing(history: &[OldVersion]) -> Vec<VersionInfo> {
    history
        .iter()
        .rev()
        .map(|old| VersionInfo {
            version: old.version,
            written_at_ms: old.written_at_ms,
            deleted: old.value.is_none(),
            value_bytes: text(&old.value).map_or(0, |text| text.len() as u64),
            commit_id: old.commit_id,
        })
        .collect()
}

/// The key reads back exactly as the old schema held it: document, listing and every version.
async fn assert_reads_back(store: &dyn Store, id: &DocId, history: &[OldVersion]) {
    let latest = history.last().expect("history");
    let document = get(store, id).await.expect("read");
    assert_eq!(document.version, latest.version);
    assert_eq!(document.value, latest.value);
    assert_eq!(document.last_commit_id, Some(latest.commit_id));
    assert_eq!(document.updated_at_ms, latest.written_at_ms);
    let listing = store.list_versions(id, &VersionQuery::default()).await.expect("list");
    assert_eq!(listing, expected_listing(history), "the listing is the old one");
    for old in history {
        let record = store.get_version(id, old.version).await.expect("read version").expect("kept");
        assert_eq!(record.value, old.value, "value of version {}", old.version);
        assert_eq!(record.attributes, old.attributes, "attributes of version {}", old.version);
        assert_eq!(record.user_ids, old.user_ids, "user ids of version {}", old.version);
    }
}

/// New writes on a migrated key: the old versions still read, the new ones too, and pruning to
/// the latest leaves just it.
async fn assert_new_versions_build_on_old_ones(store: &dyn Store, id: &DocId, history: &[OldVersion]) {
    commit_ok(store, vec![Write::put(id.clone(), profile(6))]).await;
    commit_ok(store, vec![Write::put(id.clone(), profile(7))]).await;
    for old in history {
        let record = store.get_version(id, old.version).await.expect("read version").expect("kept");
        assert_eq!(record.value, old.value, "old version {} after new writes", old.version);
    }
    for (version, coins) in [(7, 6), (8, 7)] {
        let record = store.get_version(id, version).await.expect("read version").expect("kept");
        assert_eq!(record.value, Some(profile(coins)), "new version {version}");
    }
    assert_eq!(store.prune_history().await.expect("prune"), 7);
    let listing = store.list_versions(id, &VersionQuery::default()).await.expect("list");
    assert_eq!(listing.iter().map(|info| info.version).collect::<Vec<_>>(), vec![8]);
    assert_eq!(get(store, id).await.expect("read").value, Some(profile(7)));
}

fn write_old_sqlite_file(path: &std::path::Path, id: &DocId, history: &[OldVersion]) {
    let connection = rusqlite::Connection::open(path).expect("open");
    connection.execute_batch("PRAGMA journal_mode=WAL;").expect("wal");
    connection.execute_batch(include_str!("../../src/store/sqlite/schema_v1.sql")).expect("old schema");
    connection
        .execute_batch(
            "CREATE TABLE schema_version (singleton INTEGER PRIMARY KEY NOT NULL CHECK (singleton = 1), version INTEGER NOT NULL) STRICT;
             INSERT INTO schema_version VALUES (1, 1);",
        )
        .expect("old schema version");
    for old in history {
        let value = text(&old.value);
        connection
            .execute(
                "INSERT INTO history (store, key, version, written_at_ms, deleted, value, value_bytes, attributes, user_ids, commit_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                rusqlite::params![
                    id.store.as_str(),
                    id.key.as_str(),
                    old.version as i64,
                    old.written_at_ms,
                    value.is_none(),
                    value,
                    value.as_ref().map_or(0, String::len) as i64,
                    serde_json::to_string(&old.attributes).expect("attributes"),
                    serde_json::to_string(&old.user_ids).expect("user ids"),
                    old.commit_id.to_string(),
                ],
            )
            .expect("old history row");
    }
    let latest = history.last().expect("history");
    connection
        .execute(
            "INSERT INTO docs (store, key, value, version, created_at_ms, updated_at_ms, attributes, user_ids,
                               lease_holder, lease_epoch, inbox, inbox_next_seq, last_commit_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, 0, '[]', 1, ?9)",
            rusqlite::params![
                id.store.as_str(),
                id.key.as_str(),
                text(&latest.value),
                latest.version as i64,
                history[4].written_at_ms,
                latest.written_at_ms,
                serde_json::to_string(&latest.attributes).expect("attributes"),
                serde_json::to_string(&latest.user_ids).expect("user ids"),
                latest.commit_id.to_string(),
            ],
        )
        .expect("old docs row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_of_schema_1_opens_and_reads_back_identically_history_included() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("old.sqlite3");
    let id = doc("players", "veteran");
    let history = old_history();
    write_old_sqlite_file(&path, &id, &history);
    let options = SqliteOptions {
        path: path.clone(),
        history_policy: HistoryPolicy::keep_latest_only(),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open(options).await.expect("open the old file");
    assert_eq!(store.schema_version().await.expect("schema version"), SQLITE_SCHEMA_VERSION);
    assert_eq!(SQLITE_SCHEMA_VERSION, 3);
    assert_reads_back(&store, &id, &history).await;
    assert_new_versions_build_on_old_ones(&store, &id, &history).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_schema_of_version_2_opens_and_reads_back_identically_history_included() {
    let url = postgres_url();
    let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "PostgreSQL at {url} is unreachable and CI=true");
        eprintln!("\n*** SKIPPED: PostgreSQL at {url} is unreachable ***\n");
        return;
    };
    tokio::spawn(connection);
    let schema = fresh_schema_name();
    let id = doc("players", "veteran");
    let history = old_history();
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; SET search_path TO {schema};
             CREATE TABLE schema_version (version BIGINT NOT NULL PRIMARY KEY, applied_at_ms BIGINT NOT NULL);
             INSERT INTO schema_version VALUES (1, 0), (2, 0);
             {}
             {}",
            include_str!("../../src/store/postgres/migrations/0001_init.sql"),
            include_str!("../../src/store/postgres/migrations/0002_lz4_values.sql"),
        ))
        .await
        .expect("old schema");
    for old in &history {
        client
            .execute(
                "INSERT INTO history (store, key, version, written_at_ms, deleted, value, attributes, user_ids, commit_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &id.store.as_str(),
                    &id.key.as_str(),
                    &(old.version as i64),
                    &old.written_at_ms,
                    &old.value.is_none(),
                    &text(&old.value),
                    &serde_json::to_string(&old.attributes).expect("attributes"),
                    &serde_json::to_string(&old.user_ids).expect("user ids"),
                    &old.commit_id.to_string(),
                ],
            )
            .await
            .expect("old history row");
    }
    let latest = history.last().expect("history");
    client
        .execute(
            "INSERT INTO docs (store, key, value, version, created_at_ms, updated_at_ms, attributes, user_ids, last_commit_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &id.store.as_str(),
                &id.key.as_str(),
                &text(&latest.value),
                &(latest.version as i64),
                &history[4].written_at_ms,
                &latest.written_at_ms,
                &serde_json::to_string(&latest.attributes).expect("attributes"),
                &serde_json::to_string(&latest.user_ids).expect("user ids"),
                &latest.commit_id.to_string(),
            ],
        )
        .await
        .expect("old docs row");
    let options = PostgresOptions {
        url,
        schema: schema.clone(),
        history_policy: HistoryPolicy::keep_latest_only(),
        ..PostgresOptions::default()
    };
    let store = PostgresStore::open(options).await.expect("open the old schema");
    let version: i64 = client
        .query_one(&format!("SELECT max(version) FROM {schema}.schema_version"), &[])
        .await
        .expect("schema version")
        .get(0);
    assert_eq!(version, hoard::store::postgres::SCHEMA_VERSION_LATEST);
    assert_eq!(version, 5);
    assert_reads_back(&store, &id, &history).await;
    assert_new_versions_build_on_old_ones(&store, &id, &history).await;
    drop(store);
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.expect("drop the schema");
}
