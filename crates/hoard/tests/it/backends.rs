//! Opens each store backend for tests, fresh and isolated per test.
//!
//! PostgreSQL tests use `HOARD_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//! and a fresh schema per test. When no server answers they are skipped loudly, except under
//! `CI=true`, where an unreachable PostgreSQL fails the run.

use std::any::Any;
use std::sync::Arc;

use hoard::store::SharedStore;
use hoard::store::limits::{HistoryPolicy, Limits};
use hoard::store::memory::{MemoryClock, MemoryStore};
use hoard::store::postgres::{PostgresOptions, PostgresStore};
use hoard::store::sqlite::{SqliteOptions, SqliteStore};

/// How a test wants its store configured.
#[derive(Clone, Debug, Default)]
pub struct TestConfig {
    pub limits: Limits,
    pub history_policy: HistoryPolicy,
}

/// A store plus whatever must live as long as it (a temporary folder).
pub struct TestStore {
    pub store: SharedStore,
    pub _guard: Box<dyn Any + Send>,
}

pub async fn memory(config: TestConfig) -> Option<TestStore> {
    let clock = MemoryClock::Tokio {
        start_ms: hoard::store::memory::MEMORY_CLOCK_START_MS,
        started: tokio::time::Instant::now(),
    };
    let store = MemoryStore::with_options(config.limits, config.history_policy, clock);
    Some(TestStore { store: Arc::new(store), _guard: Box::new(()) })
}

pub async fn sqlite(config: TestConfig) -> Option<TestStore> {
    let folder = tempfile::tempdir().expect("temporary folder");
    let options = SqliteOptions {
        path: folder.path().join("hoard-test.sqlite3"),
        limits: config.limits,
        history_policy: config.history_policy,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open(options).await.expect("open sqlite store");
    Some(TestStore { store: Arc::new(store), _guard: Box::new(folder) })
}

pub fn postgres_url() -> String {
    std::env::var("HOARD_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A unique schema name for one test.
pub fn fresh_schema_name() -> String {
    format!("hoard_test_{}", uuid::Uuid::new_v4().simple())
}

pub async fn postgres(config: TestConfig) -> Option<TestStore> {
    postgres_in_schema(config, fresh_schema_name()).await
}

pub async fn postgres_in_schema(config: TestConfig, schema: String) -> Option<TestStore> {
    let url = postgres_url();
    let reachable =
        tokio::time::timeout(std::time::Duration::from_secs(5), tokio_postgres::connect(&url, tokio_postgres::NoTls))
            .await;
    if !matches!(reachable, Ok(Ok(_))) {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("PostgreSQL at {url} is unreachable and CI=true: PostgreSQL tests must run in CI");
        }
        eprintln!(
            "\n*** SKIPPED: PostgreSQL at {url} is unreachable; set HOARD_TEST_POSTGRES_URL or start PostgreSQL ***\n"
        );
        return None;
    }
    let options = PostgresOptions {
        url,
        schema,
        limits: config.limits,
        history_policy: config.history_policy,
        ..PostgresOptions::default()
    };
    let store = PostgresStore::open(options).await.expect("open postgres store");
    Some(TestStore { store: Arc::new(store), _guard: Box::new(()) })
}

/// Instantiates every case once per backend, as `mod <backend> { #[tokio::test] async fn <case>() }`,
/// each case opening a fresh store of that backend with `config` (evaluated inside the generated
/// module, so `super::` names the invoking module).
macro_rules! backend_suite {
    (config: $config:expr; backends: [$($backend:ident),* $(,)?]; cases: $cases:tt) => {
        $( crate::backends::backend_suite!(@one $backend, $config, $cases); )*
    };
    (@one $backend:ident, $config:expr, [$($case:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(store) = crate::backends::$backend($config).await {
                        super::$case(store).await;
                    }
                }
            )*
        }
    };
}
pub(crate) use backend_suite;
