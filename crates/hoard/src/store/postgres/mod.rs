//! PostgreSQL backend: the store shared by many machines.
//!
//! Invariant: every process that opens the same schema sees one set of rows, one clock (the
//! database server's `clock_timestamp()`) and one lock order, so any number of hoard processes
//! can commit to the same keys at once without lost updates or deadlocks. Commits go through the
//! group committer (`committer.rs`), which locks rows with `FOR UPDATE` in canonical order and
//! evaluates them with `apply::apply_commit` (the same semantics as every other backend). Reads,
//! holder leases and notifications go straight to the pool. What each failure leaves behind is
//! spelled out on `StoreError`: `Unavailable` means nothing applied, `OutcomeUnknown` means the
//! connection failed while COMMIT was in flight.

mod committer;
mod errors;
mod history;
mod indexes;
mod listener;
mod poller;
mod rows;
mod schema;
mod sql;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_postgres::NoTls;
use tokio_postgres::types::Type;

use self::committer::{CommitterShared, GroupCommitCounters, PendingCommit};
pub use self::poller::{NOTIFICATION_POLL_ROWS_MAX, NOTIFICATION_RETENTION_MS};
use self::rows::{DOC_COLUMNS, document_from_row};
pub use self::schema::SCHEMA_VERSION_LATEST;
use self::sql::Sql;
pub use self::sql::StatementMode;
use crate::store::encoded::EncodedCommit;
use crate::store::limits::{HistoryPolicy, Limits};
use crate::store::types::{
    Commit, CommitOutcome, DocId, Document, HolderId, HolderLease, Key, KeyPage, ListQuery, Notification, StoreName,
    VersionInfo, VersionQuery, VersionRecord,
};
use crate::store::validate::{validate_doc_id, validate_notification};
use crate::store::{
    GroupCommitStats, InvalidInput, NOTIFICATION_CHANNEL_CAPACITY, PrunedPage, Store, StoreError, Subscription,
};

/// Longest schema name: PostgreSQL identifiers (and NOTIFY channel names) are at most 63 bytes,
/// and the channel is `hoard_` followed by the schema.
pub const SCHEMA_NAME_BYTES_MAX: usize = 57;

/// PostgreSQL refuses NOTIFY payloads of 8,000 bytes or more.
pub const NOTIFY_PAYLOAD_BYTES_MAX: usize = 7_999;

pub use self::history::PRUNE_HISTORY_ROWS_PER_TRANSACTION;

/// How often the `Portable` profile polls for notifications by default: a handoff request
/// reaches its holder within about this long.
pub const NOTIFICATION_POLL_INTERVAL_MS_DEFAULT: u64 = 100;

pub use super::postgres_choices::{Pooler, PostgresProfile};

#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// A libpq-style URL or key=value string, e.g. `postgres://hoard@db:5432/hoard`.
    pub url: String,
    /// What sits between hoard and the database (`Pooler::Transaction` for PgBouncer's
    /// transaction mode).
    pub pooler: Pooler,
    /// Where the notification listener connects, when not at `url`: a direct connection to the
    /// database, required behind a transaction-mode pooler with the `Full` profile.
    pub listen_url: Option<String>,
    /// Which PostgreSQL features the store relies on (`Portable` for distributed SQL engines).
    pub profile: PostgresProfile,
    /// How often the `Portable` profile polls for notifications.
    pub notification_poll_interval_ms: u64,
    /// The schema hoard's tables live in (created if missing, unless `must_exist`):
    /// `[a-z_][a-z0-9_]*`, at most `SCHEMA_NAME_BYTES_MAX` bytes. Stores in different schemas are
    /// fully isolated, including their notifications.
    pub schema: String,
    /// Refuse a database without hoard's schema instead of creating it (operators' reads: a typo
    /// in a URL must not create tables in some other database).
    pub must_exist: bool,
    pub limits: Limits,
    pub history_policy: HistoryPolicy,
    /// Most connections this process keeps open (group-commit workers and reads share them);
    /// the notification listener uses one more.
    pub pool_size: usize,
    /// How long to wait for a connection to be made or freed from the pool.
    pub connect_timeout_ms: u64,
    /// Server-side limit on one statement (including waits for row locks); also bounds how long a
    /// transaction may sit idle, so a stalled process cannot hold row locks forever.
    pub statement_timeout_ms: u64,
    /// Most commits that share one database transaction.
    pub group_commit_max_commits: usize,
    /// Batch transactions run at the same time.
    pub group_commit_workers: usize,
    /// Commits waiting for a batch; past it, `commit` is refused with `Unavailable` (G8).
    pub commit_queue_depth: usize,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            url: String::new(),
            pooler: Pooler::None,
            listen_url: None,
            profile: PostgresProfile::Full,
            notification_poll_interval_ms: NOTIFICATION_POLL_INTERVAL_MS_DEFAULT,
            schema: "hoard".to_string(),
            must_exist: false,
            limits: Limits::default(),
            history_policy: HistoryPolicy::default(),
            pool_size: 16,
            connect_timeout_ms: 10_000,
            statement_timeout_ms: 30_000,
            group_commit_max_commits: 256,
            group_commit_workers: 4,
            commit_queue_depth: 16_384,
        }
    }
}

/// A store on PostgreSQL. Cheap to share behind an `Arc`; dropping it stops its workers (after
/// they answered every queued commit) and its listener.
#[derive(Debug)]
pub struct PostgresStore {
    pool: Pool,
    sql: Arc<Sql>,
    profile: PostgresProfile,
    schema: String,
    channel: String,
    limits: Limits,
    history_policy: HistoryPolicy,
    commit_queue: mpsc::Sender<PendingCommit>,
    commit_queue_depth: usize,
    committer: Arc<CommitterShared>,
    notifications: broadcast::Sender<Notification>,
    /// Dropped with the store, which ends the listener (or poller) task.
    _listener_shutdown: watch::Sender<()>,
}

pub(crate) use self::errors::describe_error;

/// `Unavailable` with what was being done, and the error's cause and remedy (`describe_error`)
/// when it is the driver's or the pool's.
pub(crate) fn unavailable(context: impl std::fmt::Display, error: impl std::fmt::Display + 'static) -> StoreError {
    StoreError::unavailable(format!("postgres: {context}: {}", errors::describe_any(&error)))
}

/// Quotes an identifier for SQL text. Schema names are validated to `[a-z_][a-z0-9_]*` first;
/// quoting anyway keeps reserved words (e.g. a schema named `user`) working.
pub(crate) fn quote_identifier(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

fn validate_schema_name(schema: &str) -> Result<(), InvalidInput> {
    const EXPECTED: &str = "1 to 57 bytes of [a-z0-9_], not starting with a digit";
    let mut chars = schema.chars();
    let first_ok = chars.next().is_some_and(|first| first.is_ascii_lowercase() || first == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || schema.len() > SCHEMA_NAME_BYTES_MAX {
        return Err(InvalidInput::Malformed { what: "postgres schema name", expected: EXPECTED });
    }
    Ok(())
}

fn validate_options(options: &PostgresOptions) -> Result<(), InvalidInput> {
    validate_schema_name(&options.schema)?;
    options.history_policy.check()?;
    let counts = [
        ("pool_size", options.pool_size),
        ("group_commit_max_commits", options.group_commit_max_commits),
        ("group_commit_workers", options.group_commit_workers),
        ("commit_queue_depth", options.commit_queue_depth),
        ("notification_poll_interval_ms", usize::try_from(options.notification_poll_interval_ms).unwrap_or(usize::MAX)),
    ];
    for (what, count) in counts {
        if count == 0 {
            return Err(InvalidInput::Malformed { what, expected: "at least 1" });
        }
    }
    if options.pooler == Pooler::Transaction && options.profile == PostgresProfile::Full && options.listen_url.is_none()
    {
        return Err(InvalidInput::Malformed {
            what: "postgres listen url",
            expected: "a direct connection to the database (not through the pooler) for LISTEN: a transaction-mode \
                       pooler cannot hold a LISTEN; or the portable profile, which polls instead",
        });
    }
    Ok(())
}

/// Byte-order upper bound (exclusive) of every string starting with `prefix`, or `None` when
/// there is none (empty prefix, or only U+10FFFF characters). Lets `list_keys` walk the primary
/// key index from the prefix to its end instead of to the end of the store.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // UTF-8 preserves code point order, so the next code point sorts right after every
        // string that starts with `last`. Surrogates are not chars: skip over their range.
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            other => char::from_u32(u32::from(other) + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

impl PostgresStore {
    /// Connects, migrates the schema (safe with many processes opening at once; with
    /// `must_exist`, only a schema that is already there), starts the notification listener (and
    /// waits until it listens) and the group-commit workers. Errors name their cause and what to
    /// do (`describe_error`).
    pub async fn open(options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        validate_options(&options)?;
        let mut config: tokio_postgres::Config =
            options.url.parse().map_err(|error| unavailable("parse the connection URL", error))?;
        let connect_timeout = Duration::from_millis(options.connect_timeout_ms);
        // Plans that stay on the index, and stay cached: statements are prepared once per pooled
        // connection, and after five runs PostgreSQL may keep a generic plan made while the table
        // was small (a fresh store): a sequential scan of `docs` hash-joined with the `unnest` of a
        // batch's keys, kept for the connection's life (measured by `hoard bench`: 123 M rows read
        // by 15 k seq scans in one quick run). Every statement hoard sends is a lookup or a range
        // by primary key, so scans and hash or merge joins are never what it wants: switched off
        // for its connections, the planner's only remaining choice for a generic plan is the
        // nested loop over the primary-key index, and the plan is cached rather than made again
        // for every execution (what `plan_cache_mode=force_custom_plan` cost before).
        let server_options = format!(
            "{existing} -c search_path={schema} -c statement_timeout={timeout} -c idle_in_transaction_session_timeout={timeout} -c enable_seqscan=off -c enable_hashjoin=off -c enable_mergejoin=off",
            existing = config.get_options().unwrap_or_default(),
            schema = options.schema,
            timeout = options.statement_timeout_ms,
        );
        // The application name names the schema, so an operator can tell (and a test can terminate)
        // one store's connections in pg_stat_activity.
        let application_name = format!("hoard:{}", options.schema);
        config.connect_timeout(connect_timeout).application_name(&application_name);
        let listen_config = match &options.listen_url {
            Some(url) => {
                let mut listen: tokio_postgres::Config =
                    url.parse().map_err(|error| unavailable("parse the listen URL", error))?;
                listen.connect_timeout(connect_timeout).application_name(&application_name);
                listen
            }
            None => config.clone(),
        };
        // Behind a transaction-mode pooler nothing may depend on the connection: PgBouncer refuses
        // the `options` startup parameter, and a server connection's settings would not follow
        // hoard's transactions anyway. Plans need no help there: unnamed statements are planned for
        // their parameters every time. The timeouts are set inside each commit (`committer`).
        let statements = match options.pooler {
            Pooler::None => {
                config.options(server_options.trim());
                StatementMode::Prepared
            }
            Pooler::Transaction => StatementMode::Unnamed,
        };
        let isolation = match options.profile {
            PostgresProfile::Full => tokio_postgres::IsolationLevel::ReadCommitted,
            PostgresProfile::Portable => tokio_postgres::IsolationLevel::Serializable,
        };
        let sql = Arc::new(Sql::new(&options.schema, statements, isolation));
        let manager =
            Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(connect_timeout))
            .create_timeout(Some(connect_timeout))
            .build()
            .map_err(|error| unavailable("build the connection pool", error))?;
        // The first connection names where it went, so "connection refused" or "database does not
        // exist" says which server and database; it goes back to the pool for the migrations.
        let first_connection = pool
            .get()
            .await
            .map_err(|error| unavailable(format!("connect to the {}", schema::target_text(&config)), error))?;
        drop(first_connection);
        if options.must_exist {
            schema::refuse_missing_schema(&pool, &sql, &config, &options.schema).await?;
        }
        schema::migrate(&pool, &options.schema, options.profile).await?;

        let channel = format!("hoard_{}", options.schema);
        let (notifications, _) = broadcast::channel(NOTIFICATION_CHANNEL_CAPACITY);
        let (listener_shutdown, shutdown_receiver) = watch::channel(());
        let (ready_sender, ready_receiver) = oneshot::channel();
        match options.profile {
            PostgresProfile::Full => {
                tokio::spawn(listener::run_listener(
                    listen_config,
                    channel.clone(),
                    notifications.clone(),
                    ready_sender,
                    shutdown_receiver,
                ));
            }
            PostgresProfile::Portable => {
                let poll_interval = Duration::from_millis(options.notification_poll_interval_ms);
                tokio::spawn(poller::run_poller(
                    pool.clone(),
                    sql.clone(),
                    poll_interval,
                    notifications.clone(),
                    ready_sender,
                    shutdown_receiver,
                ));
            }
        }
        match tokio::time::timeout(connect_timeout.saturating_mul(2), ready_receiver).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(message))) => {
                return Err(unavailable("start the notification listener", message));
            }
            Ok(Err(_)) => {
                return Err(unavailable("start the notification listener", "listener task ended"));
            }
            Err(_) => return Err(unavailable("start the notification listener", "timed out")),
        }

        let committer = Arc::new(CommitterShared {
            pool: pool.clone(),
            sql: sql.clone(),
            statement_timeout_ms: options.statement_timeout_ms,
            limits: options.limits.clone(),
            history_policy: options.history_policy.clone(),
            group_commit_max_commits: options.group_commit_max_commits,
            counters: GroupCommitCounters::default(),
            retry_attempts_max: match options.profile {
                PostgresProfile::Full => committer::GROUP_COMMIT_RETRY_ATTEMPTS_MAX,
                PostgresProfile::Portable => committer::SERIALIZABLE_GROUP_COMMIT_RETRY_ATTEMPTS_MAX,
            },
            jitter: crate::retry::Jitter::seeded(crate::retry::Jitter::seed_from(&options.schema)),
            profile: options.profile,
        });
        let (commit_queue, commit_receiver) = mpsc::channel(options.commit_queue_depth);
        committer::spawn_workers(committer.clone(), commit_receiver, options.group_commit_workers);

        Ok(PostgresStore {
            pool,
            sql,
            profile: options.profile,
            schema: options.schema,
            channel,
            limits: options.limits,
            history_policy: options.history_policy,
            commit_queue,
            commit_queue_depth: options.commit_queue_depth,
            committer,
            notifications,
            _listener_shutdown: listener_shutdown,
        })
    }

    /// The schema this store's tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|error| unavailable("get a connection", error))
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }

    async fn now_ms(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let row = self
            .sql
            .query_opt(&client, "SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint", &[])
            .await
            .map_err(|error| unavailable("read the clock", error))?
            .ok_or_else(|| StoreError::unavailable("postgres: read the clock: no row answered"))?;
        row.try_get(0).map_err(|error| unavailable("read the clock", error))
    }

    async fn get_many(&self, ids: &[DocId]) -> Result<Vec<Document>, StoreError> {
        for id in ids {
            validate_doc_id(id, &self.limits)?;
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let stores: Vec<&str> = ids.iter().map(|id| id.store.as_str()).collect();
        let keys: Vec<&str> = ids.iter().map(|id| id.key.as_str()).collect();
        let client = self.client().await?;
        let template = format!(
            "SELECT {DOC_COLUMNS} FROM {{docs}} AS d
             JOIN unnest($1::text[], $2::text[]) AS want(store, key) ON d.store = want.store AND d.key = want.key"
        );
        let rows = self
            .sql
            .query(&client, &template, &[(&stores, Type::TEXT_ARRAY), (&keys, Type::TEXT_ARRAY)])
            .await
            .map_err(|error| unavailable("read documents", error))?;
        let mut found: HashMap<DocId, Document> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let doc = document_from_row(row)?;
            found.insert(doc.id.clone(), doc);
        }
        // Placeholder rows read exactly like absent keys (see rows.rs), so no filtering is needed.
        Ok(ids.iter().map(|id| found.get(id).cloned().unwrap_or_else(|| Document::absent(id.clone()))).collect())
    }

    async fn list_keys(&self, store: &StoreName, query: &ListQuery) -> Result<KeyPage, StoreError> {
        let limit = self.limits.page_size(query.limit);
        if query.prefix.contains('\0') {
            // PostgreSQL text cannot hold NUL, and no key contains one.
            return Ok(KeyPage::default());
        }
        let prefix_chars = i32::try_from(query.prefix.chars().count()).unwrap_or(i32::MAX);
        let upper_bound = prefix_upper_bound(&query.prefix);
        let after = query.after.as_ref().map(Key::as_str);
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let client = self.client().await?;
        // `key >= prefix` and `key < upper bound` bound the index scan; `left(key, n) = prefix`
        // is the exact test (no LIKE, so `%` and `_` in a prefix are plain characters).
        let rows = self
            .sql
            .query(
                &client,
                "SELECT key FROM {docs}
                 WHERE store = $1 AND value IS NOT NULL
                   AND key >= $2 AND ($3::text IS NULL OR key < $3) AND left(key, $4) = $2
                   AND ($5::text IS NULL OR key > $5)
                 ORDER BY key
                 LIMIT $6",
                &[
                    (&store.as_str(), Type::TEXT),
                    (&query.prefix, Type::TEXT),
                    (&upper_bound, Type::TEXT),
                    (&prefix_chars, Type::INT4),
                    (&after, Type::TEXT),
                    (&fetch, Type::INT8),
                ],
            )
            .await
            .map_err(|error| unavailable("list keys", error))?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            let text: String = row.try_get(0).map_err(|error| unavailable("list keys", error))?;
            let key = Key::new(text.clone())
                .map_err(|error| StoreError::corrupt(format!("key {store}/{text} is unreadable: {error}")))?;
            keys.push(key);
        }
        let more = keys.len() > limit;
        keys.truncate(limit);
        let next_after = if more { keys.last().cloned() } else { None };
        Ok(KeyPage { keys, next_after })
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError> {
        let encoded = EncodedCommit::new(commit, &self.limits)?;
        let (reply, answer) = oneshot::channel();
        match self.commit_queue.try_send(PendingCommit { encoded, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(committer::queue_full(self.commit_queue_depth));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(StoreError::Closed),
        }
        answer.await.map_err(|_| {
            // Workers answer every commit they take; losing the answer means a worker died
            // mid-batch, after which the commit may or may not have applied.
            StoreError::outcome_unknown("postgres: the group-commit worker stopped before answering")
        })?
    }

    async fn list_versions(&self, id: &DocId, query: &VersionQuery) -> Result<Vec<VersionInfo>, StoreError> {
        validate_doc_id(id, &self.limits)?;
        history::list_versions(&self.pool, &self.sql, id, query, &self.limits).await
    }

    async fn get_version(&self, id: &DocId, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        validate_doc_id(id, &self.limits)?;
        history::get_version(&self.pool, &self.sql, id, version).await
    }

    async fn prune_history(&self) -> Result<u64, StoreError> {
        crate::store::prune_every_page(self).await
    }

    async fn prune_history_page(&self, after: Option<DocId>, rows_max: usize) -> Result<PrunedPage, StoreError> {
        history::prune_history_page(&self.pool, &self.sql, after, rows_max, &self.history_policy).await
    }

    async fn renew_holder(&self, holder: &HolderId, ttl_ms: u64) -> Result<HolderLease, StoreError> {
        let ttl_ms = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let client = self.client().await?;
        // Expiry by the database's clock, saturating like the memory store.
        let row = self
            .sql
            .query_opt(
                &client,
                "WITH clock AS (SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint AS now_ms)
                 INSERT INTO {holders} (holder, expires_at_ms)
                 SELECT $1, CASE WHEN $2::bigint > 9223372036854775807 - clock.now_ms THEN 9223372036854775807
                                 ELSE clock.now_ms + $2::bigint END
                 FROM clock
                 ON CONFLICT (holder) DO UPDATE SET expires_at_ms = EXCLUDED.expires_at_ms
                 RETURNING expires_at_ms",
                &[(&holder.as_str(), Type::TEXT), (&ttl_ms, Type::INT8)],
            )
            .await
            .map_err(|error| unavailable("renew holder", error))?
            .ok_or_else(|| StoreError::unavailable("postgres: renew holder: no row answered"))?;
        let expires_at_ms: i64 = row.try_get(0).map_err(|error| unavailable("renew holder", error))?;
        Ok(HolderLease { holder: holder.clone(), expires_at_ms })
    }

    async fn release_holder(&self, holder: &HolderId) -> Result<(), StoreError> {
        let client = self.client().await?;
        self.sql
            .query(&client, "DELETE FROM {holders} WHERE holder = $1", &[(&holder.as_str(), Type::TEXT)])
            .await
            .map_err(|error| unavailable("release holder", error))?;
        Ok(())
    }

    async fn holder_lease(&self, holder: &HolderId) -> Result<Option<HolderLease>, StoreError> {
        let client = self.client().await?;
        let row = self
            .sql
            .query_opt(
                &client,
                "SELECT expires_at_ms FROM {holders} WHERE holder = $1",
                &[(&holder.as_str(), Type::TEXT)],
            )
            .await
            .map_err(|error| unavailable("read holder", error))?;
        row.map(|row| {
            let expires_at_ms: i64 = row.try_get(0).map_err(|error| unavailable("read holder", error))?;
            Ok(HolderLease { holder: holder.clone(), expires_at_ms })
        })
        .transpose()
    }

    async fn notify(&self, notification: Notification) -> Result<(), StoreError> {
        validate_notification(&notification, &self.limits)?;
        let payload = serde_json::to_string(&notification)
            .map_err(|error| StoreError::corrupt(format!("notification does not serialize: {error}")))?;
        if payload.len() > NOTIFY_PAYLOAD_BYTES_MAX {
            // JSON escaping (quotes, backslashes, control characters) can grow a payload that is
            // within `notification_payload_bytes_max` past what NOTIFY accepts.
            return Err(InvalidInput::TooLong {
                what: "notification encoded as JSON for PostgreSQL NOTIFY",
                bytes: payload.len(),
                bytes_max: NOTIFY_PAYLOAD_BYTES_MAX,
            }
            .into());
        }
        let client = self.client().await?;
        match self.profile {
            PostgresProfile::Full => self
                .sql
                .query(&client, "SELECT pg_notify($1, $2)", &[(&self.channel, Type::TEXT), (&payload, Type::TEXT)])
                .await
                .map_err(|error| unavailable("notify", error))?,
            PostgresProfile::Portable => self
                .sql
                .query(&client, poller::INSERT_NOTIFICATION_SQL, &[(&payload, Type::TEXT)])
                .await
                .map_err(|error| unavailable("notify", error))?,
        };
        Ok(())
    }

    fn subscribe(&self) -> Subscription {
        self.notifications.subscribe()
    }

    fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        Some(self.committer.counters.snapshot())
    }

    fn operator(&self) -> Option<&dyn crate::store::OperatorStore> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_lowercase_identifiers() {
        assert!(validate_schema_name("hoard").is_ok());
        assert!(validate_schema_name("_hoard_2").is_ok());
        assert!(validate_schema_name(&"s".repeat(SCHEMA_NAME_BYTES_MAX)).is_ok());
        for bad in ["", "2hoard", "Hoard", "ho-ard", "ho\"ard", "hoärd", &"s".repeat(SCHEMA_NAME_BYTES_MAX + 1)] {
            assert!(validate_schema_name(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn prefix_upper_bound_is_just_past_every_extension() {
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("player-").as_deref(), Some("player."));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
        let bound = prefix_upper_bound("ab").unwrap_or_default();
        for key in ["ab", "abz", "ab\u{10FFFF}\u{10FFFF}", "ab键"] {
            assert!(key < bound.as_str(), "{key:?} sorts before the bound");
        }
    }
}
