//! Opens each store backend for tests, fresh and isolated per test, and holds the PostgreSQL rule
//! for every crate's tests (hoard's, hoard-server's and hoard-cli's include this file).
//!
//! The PostgreSQL rule: tests use `HOARD_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and a fresh schema per test. They are never green
//! without PostgreSQL: an unreachable server fails each of them with how to start it or opt out.
//! The opt-out is explicit, `HOARD_TEST_POSTGRES_URL=skip`: the shared build script
//! (`crates/hoard/build/postgres_tests.rs`) then sets `cfg(hoard_postgres_tests_skipped)`, and
//! every PostgreSQL test carries
//! `#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]`,
//! so cargo counts and reports them as ignored.

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

pub async fn memory(config: TestConfig) -> TestStore {
    let clock = MemoryClock::Tokio {
        start_ms: hoard::store::memory::MEMORY_CLOCK_START_MS,
        started: tokio::time::Instant::now(),
    };
    let store = MemoryStore::with_options(config.limits, config.history_policy, clock);
    TestStore { store: Arc::new(store), _guard: Box::new(()) }
}

pub async fn sqlite(config: TestConfig) -> TestStore {
    let folder = tempfile::tempdir().expect("temporary folder");
    let options = SqliteOptions {
        path: folder.path().join("hoard-test.sqlite3"),
        limits: config.limits,
        history_policy: config.history_policy,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open(options).await.expect("open sqlite store");
    TestStore { store: Arc::new(store), _guard: Box::new(folder) }
}

/// The opt-out value of `HOARD_TEST_POSTGRES_URL`.
pub const POSTGRES_OPT_OUT: &str = "skip";
const POSTGRES_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";
/// How long a PostgreSQL test waits for the server to answer before failing.
const POSTGRES_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// Where PostgreSQL tests connect.
pub fn postgres_url() -> String {
    match std::env::var("HOARD_TEST_POSTGRES_URL") {
        Ok(url) if url == POSTGRES_OPT_OUT => panic!(
            "HOARD_TEST_POSTGRES_URL=skip, yet this PostgreSQL test ran: it lacks #[cfg_attr(hoard_postgres_tests_skipped, ignore = \"...\")], or its crate lacks the shared build script (crates/hoard/build/postgres_tests.rs)"
        ),
        Ok(url) => url,
        Err(_) => POSTGRES_URL_DEFAULT.to_string(),
    }
}

/// Fails the test, saying how to fix it, unless PostgreSQL answers at `url`.
pub async fn require_postgres(url: &str) {
    let timeout = std::time::Duration::from_millis(POSTGRES_CONNECT_TIMEOUT_MS);
    let problem = match tokio::time::timeout(timeout, tokio_postgres::connect(url, tokio_postgres::NoTls)).await {
        Ok(Ok(_)) => return,
        Ok(Err(error)) => error.to_string(),
        Err(_elapsed) => format!("no answer within {POSTGRES_CONNECT_TIMEOUT_MS} ms"),
    };
    panic!(
        "PostgreSQL at {url} is unreachable ({problem}). Start it (on Debian: `pg_ctlcluster 15 main start`; `.ci/run` installs and starts it), point HOARD_TEST_POSTGRES_URL at a server that answers, or opt out explicitly with HOARD_TEST_POSTGRES_URL=skip (the PostgreSQL tests are then reported as ignored)"
    );
}

/// A unique schema name for one test.
pub fn fresh_schema_name() -> String {
    format!("hoard_test_{}", uuid::Uuid::new_v4().simple())
}

pub async fn postgres(config: TestConfig) -> TestStore {
    postgres_in_schema(config, fresh_schema_name()).await
}

pub async fn postgres_in_schema(config: TestConfig, schema: String) -> TestStore {
    let url = postgres_url();
    require_postgres(&url).await;
    let options = PostgresOptions {
        url,
        schema,
        limits: config.limits,
        history_policy: config.history_policy,
        ..PostgresOptions::default()
    };
    let store = PostgresStore::open(options).await.expect("open postgres store");
    TestStore { store: Arc::new(store), _guard: Box::new(()) }
}

/// Instantiates every case once per backend, as `mod <backend> { #[tokio::test] async fn <case>() }`,
/// each case opening a fresh store of that backend with `config` (evaluated inside the generated
/// module, so `super::` names the invoking module). PostgreSQL cases follow the PostgreSQL rule.
#[allow(unused_macros)] // the server's tests include this file for the stores, not the macro
macro_rules! backend_suite {
    (config: $config:expr; backends: [$($backend:ident),* $(,)?]; cases: $cases:tt) => {
        $( crate::backends::backend_suite!(@one $backend, $config, $cases); )*
    };
    (@one postgres, $config:expr, [$($case:ident),* $(,)?]) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
                async fn $case() {
                    super::$case(crate::backends::postgres($config).await).await;
                }
            )*
        }
    };
    (@one postgres_portable, $config:expr, [$($case:ident),* $(,)?]) => {
        crate::backends::backend_suite!(@postgres_variant postgres_portable, $config, [$($case),*]);
    };
    (@one postgres_pooled, $config:expr, [$($case:ident),* $(,)?]) => {
        crate::backends::backend_suite!(@postgres_variant postgres_pooled, $config, [$($case),*]);
    };
    // The PostgreSQL deployment variants of hoard's own test crate (`postgres_profiles`).
    (@postgres_variant $variant:ident, $config:expr, [$($case:ident),* $(,)?]) => {
        mod $variant {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
                async fn $case() {
                    super::$case(crate::postgres_profiles::$variant($config).await).await;
                }
            )*
        }
    };
    (@one $backend:ident, $config:expr, [$($case:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::backends::$backend($config).await).await;
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use backend_suite;
