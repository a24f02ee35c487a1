//! Group commit: many callers' commits share one PostgreSQL transaction (and one WAL flush).
//!
//! Invariant: a batch's transaction locks every key of the batch with `SELECT ... FOR UPDATE` in
//! one canonical order (store, then key, by bytes, via `COLLATE "C"`), the same in every process,
//! so two batches can wait on each other only in one direction and never deadlock. Under those
//! locks the batch's commits are evaluated one after another with `apply::apply_commit`, each
//! against the state left by the earlier successful commits of the same batch, exactly as if they
//! had been sent one by one; a conflicting commit changes nothing. Callers are answered only after
//! COMMIT returned (committed outcomes are durable then), or with `Unavailable` when the
//! transaction certainly did not commit, or `OutcomeUnknown` when the connection failed while
//! COMMIT was in flight.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::Pool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::error::{Severity, SqlState};
use tokio_postgres::types::Type;

use super::PostgresProfile;
use super::indexes::{
    BatchReindex, DELETE_INDEX_ROWS_SQL, INSERT_INDEX_ROWS_SQL, IndexColumns, LOCK_STORES_SHARED_SQL, SELECT_DECLS_SQL,
    decls_from_rows,
};
use super::rows::{DocColumns, HistoryColumns, document_from_row_with_text, to_json_text};
use super::sql::{Param, Sql, StatementMode};
use super::unavailable;
use crate::store::apply::{Current, VALUE_NOT_READ, apply_commit, write_reads_value};
use crate::store::encoded::EncodedCommit;
use crate::store::history::encode_superseded;
use crate::store::limits::{HistoryPolicy, Limits};
use crate::store::types::{CommitOutcome, DocId, ValueOp};
use crate::store::{GroupCommitStats, StoreError};

/// How many times a batch is tried when PostgreSQL aborts it with a serialization failure
/// (40001) or a deadlock (40P01). Under READ COMMITTED neither should happen given the canonical
/// lock order, but PostgreSQL may still report them (e.g. a deadlock with an operator's manual
/// transaction).
pub const GROUP_COMMIT_RETRY_ATTEMPTS_MAX: u32 = 5;

/// The same under SERIALIZABLE (the portable profile), where a batch that waited for a row lock
/// held by a batch that then committed a change of that row always fails with 40001: contention
/// on one key costs retries, so more are allowed.
pub const SERIALIZABLE_GROUP_COMMIT_RETRY_ATTEMPTS_MAX: u32 = 40;

/// Backoff between tries of an aborted batch, jittered so that the workers that collided do not
/// collide again in lockstep.
pub const GROUP_COMMIT_RETRY_BACKOFF: crate::retry::Backoff = crate::retry::Backoff { initial_ms: 5, max_ms: 200 };

/// One caller's commit waiting in the queue, with where to send its answer.
#[derive(Debug)]
pub struct PendingCommit {
    /// Validated, with its put values already serialized (on the caller's task).
    pub encoded: EncodedCommit,
    pub reply: oneshot::Sender<Result<CommitOutcome, StoreError>>,
}

/// Counters behind `Store::group_commit_stats`.
#[derive(Debug, Default)]
pub struct GroupCommitCounters {
    commits_total: AtomicU64,
    transactions_total: AtomicU64,
    largest_batch: AtomicU64,
}

impl GroupCommitCounters {
    pub fn snapshot(&self) -> GroupCommitStats {
        GroupCommitStats {
            commits_total: self.commits_total.load(Ordering::Relaxed),
            transactions_total: self.transactions_total.load(Ordering::Relaxed),
            largest_batch: self.largest_batch.load(Ordering::Relaxed),
        }
    }

    fn record_batch(&self, commits: usize) {
        let commits = u64::try_from(commits).unwrap_or(u64::MAX);
        self.commits_total.fetch_add(commits, Ordering::Relaxed);
        self.transactions_total.fetch_add(1, Ordering::Relaxed);
        self.largest_batch.fetch_max(commits, Ordering::Relaxed);
    }
}

/// What every worker shares.
#[derive(Debug)]
pub struct CommitterShared {
    pub pool: Pool,
    pub sql: Arc<Sql>,
    /// Set inside each batch transaction when a pooler keeps hoard from setting it per connection.
    pub statement_timeout_ms: u64,
    pub limits: Limits,
    pub history_policy: HistoryPolicy,
    pub group_commit_max_commits: usize,
    pub counters: GroupCommitCounters,
    /// Tries of a batch aborted by a serialization failure or a deadlock.
    pub retry_attempts_max: u32,
    pub jitter: crate::retry::Jitter,
    /// Whether batches take the stores' index locks (the full profile) or rely on SERIALIZABLE.
    pub profile: PostgresProfile,
}

/// Starts `workers` tasks that take batches from `receiver` until every sender is dropped (the
/// store was dropped); commits already queued then are still run and answered.
pub fn spawn_workers(shared: Arc<CommitterShared>, receiver: mpsc::Receiver<PendingCommit>, workers: usize) {
    let receiver = Arc::new(Mutex::new(receiver));
    for _ in 0..workers {
        tokio::spawn(run_worker(shared.clone(), receiver.clone()));
    }
}

async fn run_worker(shared: Arc<CommitterShared>, receiver: Arc<Mutex<mpsc::Receiver<PendingCommit>>>) {
    loop {
        // Only one idle worker waits on the queue at a time; while the others run transactions,
        // commits pile up and the next worker takes them all as one batch. This is what groups
        // commits: no timer, no added latency when the database is idle.
        let mut batch = Vec::new();
        let received = receiver.lock().await.recv_many(&mut batch, shared.group_commit_max_commits).await;
        if received == 0 {
            return;
        }
        run_batch(&shared, batch).await;
    }
}

/// Why a batch's transaction ended without committing, and whether it may have applied.
#[derive(Debug)]
enum BatchFailure {
    /// Aborted by PostgreSQL for a reason a retry can cure (40001, 40P01). Nothing applied.
    Retryable(String),
    /// Nothing applied.
    NothingApplied(String),
    /// The connection failed while COMMIT was in flight.
    OutcomeUnknown(String),
}

impl std::fmt::Display for BatchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchFailure::Retryable(message) | BatchFailure::NothingApplied(message) => f.write_str(message),
            BatchFailure::OutcomeUnknown(message) => write!(f, "outcome unknown: {message}"),
        }
    }
}

fn is_retryable(error: &tokio_postgres::Error) -> bool {
    // 25P02 (a transaction already aborted) can only come first from a connection left inside a
    // failed transaction; the batch ran nothing, and its retry takes another connection.
    matches!(error.code(), Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::IN_FAILED_SQL_TRANSACTION)
}

/// Classifies an error raised before COMMIT was sent: the transaction did not commit.
fn before_commit(context: &str) -> impl Fn(tokio_postgres::Error) -> BatchFailure + '_ {
    move |error| {
        let message = format!("{context}: {}", super::describe_error(&error));
        if is_retryable(&error) { BatchFailure::Retryable(message) } else { BatchFailure::NothingApplied(message) }
    }
}

/// What the batch needs of a key's stored value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct KeyReads {
    /// Some write of the batch reads the current value (`apply::write_reads_value`): decode it.
    value: bool,
    /// Some write of the batch makes a new version, superseding the stored one, whose history
    /// row is made from the stored text (`store::history`): fetch the text.
    text: bool,
}

/// Every key of the batch, with what its writes need of the stored value.
fn batch_keys(batch: &[PendingCommit]) -> BTreeMap<DocId, KeyReads> {
    let mut keys: BTreeMap<DocId, KeyReads> = BTreeMap::new();
    for pending in batch {
        for write in &pending.encoded.commit.writes {
            let reads = keys.entry(write.id.clone()).or_default();
            reads.value |= write_reads_value(write);
            reads.text |= write_reads_value(write) || write.changes_version();
        }
    }
    keys
}

async fn run_batch(shared: &CommitterShared, mut batch: Vec<PendingCommit>) {
    // A put value that no write of the batch reads back is stored from its text: drop the decoded
    // value now rather than copy it into the next document (see `encoded`). A retry of the batch
    // sees the same keys, so stripping once holds for every attempt.
    let keys = batch_keys(&batch);
    for pending in &mut batch {
        pending.encoded.strip_put_values(|id| keys.get(id).is_none_or(|reads| reads.value));
    }
    let retry = crate::retry::Retry::new(
        "run a group commit batch",
        shared.retry_attempts_max,
        GROUP_COMMIT_RETRY_BACKOFF,
        &shared.jitter,
    );
    let result = retry
        .run(|_| async {
            match try_batch(shared, &batch, &keys).await {
                Ok(outcomes) => crate::retry::Attempt::Done(outcomes),
                Err(failure @ BatchFailure::Retryable(_)) => crate::retry::Attempt::Retry(failure),
                Err(failure) => crate::retry::Attempt::Fail(failure),
            }
        })
        .await
        .map_err(crate::retry::GaveUp::into_error);
    match result {
        Ok(outcomes) => {
            shared.counters.record_batch(batch.len());
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                // A caller that stopped waiting is not an error: its commit's fate is decided.
                let _ = pending.reply.send(Ok(outcome));
            }
        }
        Err(failure) => {
            let error = |message: &str| match &failure {
                BatchFailure::Retryable(_) | BatchFailure::NothingApplied(_) => StoreError::unavailable(message),
                BatchFailure::OutcomeUnknown(_) => StoreError::outcome_unknown(message),
            };
            let message = match &failure {
                BatchFailure::Retryable(message)
                | BatchFailure::NothingApplied(message)
                | BatchFailure::OutcomeUnknown(message) => message.clone(),
            };
            tracing::warn!(commits = batch.len(), %message, "group commit batch failed");
            for pending in batch {
                let _ = pending.reply.send(Err(error(&message)));
            }
        }
    }
}

// BEGIN names its isolation level (`Sql::begin`), so a server configured with another default
// does not change how batches behave: row locks, not snapshots, are what make them correct (the
// portable profile runs them SERIALIZABLE, where a lost race is a serialization failure, retried).
const COMMIT_SQL: &str = "COMMIT";
// Stands in for a step of the read pipeline that this configuration does not need.
const NOTHING_SQL: &str = "SELECT 1";
const ROLLBACK_SQL: &str = "ROLLBACK";

// Behind a transaction-mode pooler, the limits a direct connection gets at startup, for this
// transaction only (one statement, so it rides in the same pipeline as BEGIN).
const SET_TIMEOUTS_SQL: &str = "SELECT set_config('statement_timeout', $1, true),
            set_config('idle_in_transaction_session_timeout', $1, true)";

const INSERT_PLACEHOLDERS_SQL: &str = "INSERT INTO {docs} (store, key)
     SELECT want.store, want.key FROM unnest($1::text[], $2::text[]) AS want(store, key)
     ORDER BY want.store COLLATE \"C\", want.key COLLATE \"C\"
     ON CONFLICT (store, key) DO NOTHING";

// The holders' process leases that judge `LeaseFree` for this batch (of the locked rows, and of
// every holder the batch acquires for), with the database clock, in one statement: an aggregate
// without GROUP BY is always one row, so `clock_timestamp()` is read once.
const SELECT_HOLDERS_AND_NOW_SQL: &str = "SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint AS now_ms,
            coalesce(array_agg(h.holder), '{}') AS holders, coalesce(array_agg(h.expires_at_ms), '{}') AS expires_at_ms
     FROM {holders} AS h
     WHERE h.holder = ANY(array_cat($3::text[], ARRAY(
         SELECT d.lease_holder FROM {docs} AS d
         JOIN unnest($1::text[], $2::text[]) AS want(store, key) ON d.store = want.store AND d.key = want.key
         WHERE d.lease_holder IS NOT NULL)))";

// A key whose value no applied write of the batch changed (`value_set` false: a lease or inbox
// change) keeps its stored value: PostgreSQL then reuses the TOASTed datum instead of
// compressing kilobytes again, and the stand-in the batch held for an unread value
// (`VALUE_NOT_READ`) is never stored.
// The batch's whole write in one statement: the final state of every changed key and the batch's
// new history rows (an empty set of arrays inserts none). A key whose value no applied write of
// the batch changed (`value_set` false: a lease or inbox change) keeps its stored value:
// PostgreSQL then reuses the TOASTed datum instead of compressing kilobytes again, and the
// stand-in the batch held for an unread value (`VALUE_NOT_READ`) is never stored.
const WRITE_BATCH_SQL: &str = "WITH updated AS (
         UPDATE {docs} AS d SET
             value = CASE WHEN n.value_set THEN n.value ELSE d.value END, version = n.version,
             created_at_ms = n.created_at_ms, updated_at_ms = n.updated_at_ms, attributes = n.attributes,
             user_ids = n.user_ids, lease_holder = n.lease_holder, lease_epoch = n.lease_epoch, inbox = n.inbox,
             inbox_next_seq = n.inbox_next_seq, last_commit_id = n.last_commit_id
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[],
                     $8::text[], $9::text[], $10::bigint[], $11::text[], $12::bigint[], $13::text[], $14::bool[])
              AS n(store, key, value, version, created_at_ms, updated_at_ms, attributes, user_ids, lease_holder,
                   lease_epoch, inbox, inbox_next_seq, last_commit_id, value_set)
         WHERE d.store = n.store AND d.key = n.key
         RETURNING 1
     ), inserted AS (
         INSERT INTO {history}
             (store, key, version, written_at_ms, deleted, value, delta, value_bytes, attributes, user_ids, commit_id)
         SELECT * FROM unnest($15::text[], $16::text[], $17::bigint[], $18::bigint[], $19::bool[], $20::text[],
                              $21::bytea[], $22::bigint[], $23::text[], $24::text[], $25::text[])
         RETURNING 1
     )
     SELECT (SELECT count(*) FROM updated) AS updated_rows, (SELECT count(*) FROM inserted) AS inserted_rows";

/// `lock_docs_sql`, built once.
static LOCK_DOCS_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(lock_docs_sql);

fn lock_docs_sql() -> String {
    // ORDER BY runs below the row-locking step, so rows are locked in this order: the canonical
    // order every process uses. Under READ COMMITTED a row changed by a transaction we waited for
    // is re-read at its newest committed version before it is returned. A value is sent only
    // where a write of the batch reads it or supersedes it (`want.read_text`); elsewhere only
    // whether there is one (`IS NOT NULL` looks at the row's null bitmap, not at the TOASTed text).
    let columns = super::rows::DOC_COLUMNS
        .replace("d.value,", "CASE WHEN want.read_text THEN d.value END AS value, d.value IS NOT NULL AS has_value,");
    format!(
        "SELECT {columns} FROM {{docs}} AS d
         JOIN unnest($1::text[], $2::text[], $3::bool[]) AS want(store, key, read_text)
           ON d.store = want.store AND d.key = want.key
         ORDER BY d.store, d.key
         FOR UPDATE OF d"
    )
}

/// Runs one batch in one transaction; returns each commit's outcome, in batch order.
///
/// The connection is handed back to the pool only after a clean COMMIT or ROLLBACK; after any
/// failure it is closed instead (`Object::take`), which also makes the server roll back whatever
/// was open, so no pooled connection is ever left inside a transaction.
async fn try_batch(
    shared: &CommitterShared,
    batch: &[PendingCommit],
    keys: &BTreeMap<DocId, KeyReads>,
) -> Result<Vec<CommitOutcome>, BatchFailure> {
    let client = shared.pool.get().await.map_err(|error| {
        BatchFailure::NothingApplied(format!("get a connection: {}", super::describe_error(&error)))
    })?;
    let result = batch_transaction(&client, shared, batch, keys).await;
    if result.is_err() {
        drop(deadpool_postgres::Object::take(client));
    }
    result
}

async fn batch_transaction(
    client: &deadpool_postgres::Object,
    shared: &CommitterShared,
    batch: &[PendingCommit],
    ids: &BTreeMap<DocId, KeyReads>,
) -> Result<Vec<CommitOutcome>, BatchFailure> {
    // Every key of the batch (`ids`, from `batch_keys`), once, in canonical order (Rust's `str`
    // order is byte order, like COLLATE "C"), and every holder the batch acquires for (their
    // process leases decide `LeaseFree` for later commits of the batch).
    let mut acquiring_holders: BTreeSet<&str> = BTreeSet::new();
    for pending in batch {
        for write in &pending.encoded.commit.writes {
            if let crate::store::LeaseOp::Acquire(holder) = &write.lease {
                acquiring_holders.insert(holder.as_str());
            }
        }
    }
    let stores: Vec<&str> = ids.keys().map(|id| id.store.as_str()).collect();
    let keys: Vec<&str> = ids.keys().map(|id| id.key.as_str()).collect();
    let read_texts: Vec<bool> = ids.values().map(|reads| reads.text).collect();
    let acquiring_holders: Vec<&str> = acquiring_holders.into_iter().collect();

    // Statements are prepared once per pooled connection and then served from its statement
    // cache, or sent unnamed behind a pooler. All are made ready before any is sent, so that the
    // pipeline below runs them in order (`Sql::ready`).
    let sql = &shared.sql;
    let timeout = format!("{}ms", shared.statement_timeout_ms);
    let no_params: [Param<'_>; 0] = [];
    let timeout_params: [Param<'_>; 1] = [(&timeout, Type::TEXT)];
    let placeholder_params: [Param<'_>; 2] = [(&stores, Type::TEXT_ARRAY), (&keys, Type::TEXT_ARRAY)];
    let lock_params: [Param<'_>; 3] =
        [(&stores, Type::TEXT_ARRAY), (&keys, Type::TEXT_ARRAY), (&read_texts, Type::BOOL_ARRAY)];
    let holders_params: [Param<'_>; 3] =
        [(&stores, Type::TEXT_ARRAY), (&keys, Type::TEXT_ARRAY), (&acquiring_holders, Type::TEXT_ARRAY)];
    let stores_params: [Param<'_>; 1] = [(&stores, Type::TEXT_ARRAY)];
    // Behind a pooler the timeouts are set per transaction; the portable profile takes no
    // advisory lock (SERIALIZABLE keeps a batch and an index declaration from both committing on
    // what the other did not see, `indexes`): both are then the empty statement `SELECT 1`.
    let set_timeouts_sql = match sql.statements() {
        StatementMode::Prepared => NOTHING_SQL,
        StatementMode::Unnamed => SET_TIMEOUTS_SQL,
    };
    let set_timeouts_params: &[Param<'_>] = if set_timeouts_sql == NOTHING_SQL { &no_params } else { &timeout_params };
    let lock_stores_sql: &str = match shared.profile {
        PostgresProfile::Full => &LOCK_STORES_SHARED_SQL,
        PostgresProfile::Portable => NOTHING_SQL,
    };
    let lock_stores_params: &[Param<'_>] = if lock_stores_sql == NOTHING_SQL { &no_params } else { &stores_params };
    let steps: [(&str, &[Param<'_>]); 7] = [
        (sql.begin(), &no_params),
        (set_timeouts_sql, set_timeouts_params),
        (INSERT_PLACEHOLDERS_SQL, &placeholder_params),
        (&LOCK_DOCS_SQL, &lock_params),
        (SELECT_HOLDERS_AND_NOW_SQL, &holders_params),
        (lock_stores_sql, lock_stores_params),
        (SELECT_DECLS_SQL, &stores_params),
    ];
    let mut ready = Vec::with_capacity(steps.len());
    for (template, params) in steps {
        ready.push(sql.ready(client, template, params).await.map_err(before_commit("prepare"))?);
    }
    // Pipelined: the statements go out together and run in this order on the server, so the
    // whole read phase costs one round trip. The holder and clock read runs after the locks are
    // held, so it sees the locked rows' holders and a `now` no earlier than the previous
    // writer's commit of any of these keys. The index lock (shared) and the declarations come
    // last, each its own statement so the declarations are read after the lock is held
    // (`indexes`).
    let run = |index: usize| sql.run(client, &ready[index], steps[index].1);
    // Every reply is awaited and the first failure in pipeline order is the one reported: once a
    // statement fails, PostgreSQL answers the ones behind it with 25P02 (transaction aborted),
    // which says nothing of why (a serialization failure, retried, or a real error).
    let ((r0, r1, r2, r3, r4), (r5, r6)) = futures_util::future::join(
        futures_util::future::join5(run(0), run(1), run(2), run(3), run(4)),
        futures_util::future::join(run(5), run(6)),
    )
    .await;
    let first_failure = [&r0, &r1, &r2, &r3, &r4, &r5, &r6].into_iter().position(|result| result.is_err());
    if let Some(index) = first_failure {
        let failed = [r0, r1, r2, r3, r4, r5, r6].into_iter().nth(index).expect("the position was just found");
        return Err(failed.map(|_| ()).map_err(before_commit("lock the batch's keys")).expect_err("it failed"));
    }
    let (doc_rows, holders_rows, decl_rows) = (
        r3.expect("no statement of the pipeline failed"),
        r4.expect("no statement of the pipeline failed"),
        r6.expect("no statement of the pipeline failed"),
    );
    let holders_row = holders_rows.first().ok_or_else(|| {
        BatchFailure::NothingApplied("lock the batch's keys: the holder and clock read answered no row".to_string())
    })?;
    let decls = decls_from_rows(&decl_rows).map_err(BatchFailure::NothingApplied)?;

    let now_ms: i64 = holders_row.try_get("now_ms").map_err(before_commit("read the clock"))?;
    let holders: Vec<String> = holders_row.try_get("holders").map_err(before_commit("read holders"))?;
    let expiries: Vec<i64> = holders_row.try_get("expires_at_ms").map_err(before_commit("read holders"))?;
    let holder_expires_at_ms: HashMap<String, i64> = holders.into_iter().zip(expiries).collect();
    let expiry_of = |doc: &crate::store::Document| {
        doc.lease.holder.as_ref().and_then(|holder| holder_expires_at_ms.get(holder.as_str()).copied())
    };

    // Each key's state as the batch goes (its document and its value's text), starting from the
    // locked rows; each applied commit replaces its keys' entries.
    let mut states: HashMap<DocId, (Current, Option<String>)> = HashMap::with_capacity(doc_rows.len());
    for row in &doc_rows {
        // A row that does not parse fails the whole batch: nothing is written over it.
        let store: &str = row.try_get("store").map_err(before_commit("read the batch's keys"))?;
        let key: &str = row.try_get("key").map_err(before_commit("read the batch's keys"))?;
        let parse_value =
            DocId::parse(store, key).ok().and_then(|id| ids.get(&id).copied()).is_none_or(|reads| reads.value);
        let (mut doc, text) = document_from_row_with_text(row, parse_value)
            .map_err(|error| BatchFailure::NothingApplied(error.to_string()))?;
        let has_value: bool = row.try_get("has_value").map_err(before_commit("read the batch's keys"))?;
        if has_value && doc.value.is_none() {
            // Not decoded: no write of the batch reads it (see `lock_docs_sql`).
            doc.value = Some(VALUE_NOT_READ);
        }
        let holder_expiry = expiry_of(&doc);
        states.insert(doc.id.clone(), (Current { doc, holder_expires_at_ms: holder_expiry }, text));
    }
    if states.len() != ids.len() {
        // Every key got a row from the placeholder insert (or already had one) and hoard never
        // deletes docs rows, so this means something outside hoard changed the table.
        return Err(BatchFailure::NothingApplied(format!(
            "locked {} of the batch's {} keys; the docs table was changed outside hoard",
            states.len(),
            ids.len()
        )));
    }

    let mut outcomes = Vec::with_capacity(batch.len());
    // Every key an applied commit changed, with the JSON text of its newest value when an applied
    // write changed the value (`None` inside: deleted).
    let mut changed: BTreeMap<DocId, Option<Option<String>>> = BTreeMap::new();
    let mut history = HistoryColumns::default();
    let mut reindex = BatchReindex::default();
    let nothing_applied = |error: StoreError| BatchFailure::NothingApplied(error.to_string());
    for pending in batch {
        let commit = &pending.encoded.commit;
        let mut currents = Vec::with_capacity(commit.writes.len());
        for write in &commit.writes {
            let (current, _) = states
                .get(&write.id)
                .ok_or_else(|| BatchFailure::NothingApplied(format!("key {} of the batch was not locked", write.id)))?;
            currents.push(current);
        }
        let result = apply_commit(&currents, commit, now_ms, &shared.limits);
        drop(currents);
        match result {
            Ok((nexts, applied)) => {
                for (index, next) in nexts.into_iter().enumerate() {
                    let id = next.doc.id.clone();
                    let (superseded, stored_text) = states
                        .remove(&id)
                        .ok_or_else(|| BatchFailure::NothingApplied(format!("key {id} of the batch was not locked")))?;
                    let entry = changed.entry(id.clone()).or_insert(None);
                    // A new version is the only way a write changes the stored value; any other
                    // write keeps it (`value_set` false), whatever stand-in the batch holds.
                    let text = if next.new_version {
                        let write = &commit.writes[index];
                        reindex.new_version(&id, &superseded.doc.user_ids, !matches!(write.value, ValueOp::Keep));
                        let new_text = match (&write.value, pending.encoded.value_text(index)) {
                            (_, Some(text)) => Some(text.clone()),
                            // New metadata on the same value: the stored text stays as it is.
                            (ValueOp::Keep, None) => stored_text.clone(),
                            (_, None) => next
                                .doc
                                .value
                                .as_ref()
                                .map(|value| to_json_text(value, "value", &id))
                                .transpose()
                                .map_err(nothing_applied)?,
                        };
                        if superseded.doc.version > 0 {
                            let payload = encode_superseded(
                                superseded.doc.version,
                                stored_text.as_deref(),
                                new_text.as_deref(),
                                &shared.history_policy,
                            );
                            history.push(&superseded.doc, stored_text.as_deref(), payload).map_err(nothing_applied)?;
                        }
                        if !matches!(write.value, ValueOp::Keep) {
                            *entry = Some(new_text.clone());
                        }
                        new_text
                    } else {
                        stored_text
                    };
                    let holder_expiry = expiry_of(&next.doc);
                    states.insert(id, (Current { doc: next.doc, holder_expires_at_ms: holder_expiry }, text));
                }
                outcomes.push(CommitOutcome::Committed { commit_id: commit.id, at_ms: now_ms, applied });
            }
            Err(conflict) => outcomes.push(CommitOutcome::Conflict(conflict)),
        }
    }

    if changed.is_empty() {
        // Every commit conflicted: the answers were decided under the locks, nothing needs to be
        // durable, and rolling back also removes this batch's placeholder rows.
        sql.query(client, ROLLBACK_SQL, &[]).await.map_err(before_commit("roll back"))?;
        return Ok(outcomes);
    }
    let mut index = IndexColumns::default();
    for (id, (user_ids_before, value_changed)) in &reindex.keys {
        let (current, text) =
            states.get(id).ok_or_else(|| BatchFailure::NothingApplied(format!("reindexed key {id} has no state")))?;
        if &current.doc.user_ids != user_ids_before {
            index.user_ids_changed(id, &current.doc.user_ids);
        }
        if let Some(decls) = decls.get(id.store.as_str()).filter(|_| *value_changed) {
            index.value_changed(id, decls, text.as_deref()).map_err(nothing_applied)?;
        }
    }
    write_back_and_commit(client, sql, &states, changed, &history, &index).await?;
    Ok(outcomes)
}

/// Classifies the reply to a statement sent in the same pipeline as COMMIT. An error reply from
/// the server means the transaction is aborted, so the COMMIT behind it turns into a rollback:
/// nothing applied. A lost connection means COMMIT may have reached the server: unknown.
fn in_commit_pipeline(context: &str, error: tokio_postgres::Error) -> BatchFailure {
    let message = format!("{context}: {}", super::describe_error(&error));
    let server_refused =
        error.as_db_error().is_some_and(|db_error| db_error.parsed_severity() == Some(Severity::Error));
    if !server_refused {
        BatchFailure::OutcomeUnknown(message)
    } else if is_retryable(&error) {
        BatchFailure::Retryable(message)
    } else {
        BatchFailure::NothingApplied(message)
    }
}

/// Writes the final state of every changed key and the batch's new history rows, and COMMITs,
/// all pipelined in one round trip. COMMIT is durable (WAL flushed, with the server's default
/// `synchronous_commit = on`) when its reply arrives.
async fn write_back_and_commit(
    client: &deadpool_postgres::Object,
    sql: &Sql,
    states: &HashMap<DocId, (Current, Option<String>)>,
    changed: BTreeMap<DocId, Option<Option<String>>>,
    history: &HistoryColumns,
    index: &IndexColumns,
) -> Result<(), BatchFailure> {
    let mut docs = DocColumns::default();
    for (id, value_text) in changed {
        let (current, _) =
            states.get(&id).ok_or_else(|| BatchFailure::NothingApplied(format!("changed key {id} has no state")))?;
        docs.push(&current.doc, value_text).map_err(|error| BatchFailure::NothingApplied(error.to_string()))?;
    }
    let params: [super::sql::Param<'_>; 25] = [
        (&docs.stores, Type::TEXT_ARRAY),
        (&docs.keys, Type::TEXT_ARRAY),
        (&docs.values, Type::TEXT_ARRAY),
        (&docs.versions, Type::INT8_ARRAY),
        (&docs.created_at_ms, Type::INT8_ARRAY),
        (&docs.updated_at_ms, Type::INT8_ARRAY),
        (&docs.attributes, Type::TEXT_ARRAY),
        (&docs.user_ids, Type::TEXT_ARRAY),
        (&docs.lease_holders, Type::TEXT_ARRAY),
        (&docs.lease_epochs, Type::INT8_ARRAY),
        (&docs.inboxes, Type::TEXT_ARRAY),
        (&docs.inbox_next_seqs, Type::INT8_ARRAY),
        (&docs.last_commit_ids, Type::TEXT_ARRAY),
        (&docs.value_sets, Type::BOOL_ARRAY),
        (&history.stores, Type::TEXT_ARRAY),
        (&history.keys, Type::TEXT_ARRAY),
        (&history.versions, Type::INT8_ARRAY),
        (&history.written_at_ms, Type::INT8_ARRAY),
        (&history.deleted, Type::BOOL_ARRAY),
        (&history.values, Type::TEXT_ARRAY),
        (&history.deltas, Type::BYTEA_ARRAY),
        (&history.value_bytes, Type::INT8_ARRAY),
        (&history.attributes, Type::TEXT_ARRAY),
        (&history.user_ids, Type::TEXT_ARRAY),
        (&history.commit_ids, Type::TEXT_ARRAY),
    ];
    // All are polled (and so sent) in this order before any reply is awaited; each reply is then
    // looked at, because which one failed decides what the failure means. The index rows go
    // first (deleted, then inserted), only when the batch changed any.
    // Every statement is made ready before any is sent (`Sql::ready`): a COMMIT already cached
    // must not overtake the writes it commits.
    let write_batch = sql.ready(client, WRITE_BATCH_SQL, &params).await.map_err(before_commit("prepare"))?;
    let commit = sql.ready(client, COMMIT_SQL, &[]).await.map_err(before_commit("prepare"))?;
    let (written, committed) = if index.is_empty() {
        futures_util::future::join(sql.run(client, &write_batch, &params), sql.run(client, &commit, &[])).await
    } else {
        let delete_params = index.delete_params();
        let insert_params = index.insert_params();
        let delete_index =
            sql.ready(client, DELETE_INDEX_ROWS_SQL, &delete_params).await.map_err(before_commit("prepare"))?;
        let insert_index =
            sql.ready(client, INSERT_INDEX_ROWS_SQL, &insert_params).await.map_err(before_commit("prepare"))?;
        let (deleted, inserted, written, committed) = futures_util::future::join4(
            sql.run(client, &delete_index, &delete_params),
            sql.run(client, &insert_index, &insert_params),
            sql.run(client, &write_batch, &params),
            sql.run(client, &commit, &[]),
        )
        .await;
        deleted.map_err(|error| in_commit_pipeline("delete index rows", error))?;
        inserted.map_err(|error| in_commit_pipeline("insert index rows", error))?;
        (written, committed)
    };
    let written = written.map_err(|error| in_commit_pipeline("write documents and history", error))?;
    committed.map_err(|error| in_commit_pipeline("commit", error))?;
    let written = written.into_iter().next().ok_or_else(|| {
        BatchFailure::OutcomeUnknown("write documents and history: the count answered no row".to_string())
    })?;
    let counts: Result<(i64, i64), tokio_postgres::Error> =
        written.try_get("updated_rows").and_then(|updated| Ok((updated, written.try_get("inserted_rows")?)));
    let expected = (docs.stores.len() as i64, history.stores.len() as i64);
    if counts.as_ref().ok() != Some(&expected) {
        // Cannot happen while the rows are locked; if it does, the commit is in and the anomaly
        // must be visible.
        tracing::error!(?counts, ?expected, "group commit wrote an unexpected number of rows (documents, history)");
    }
    Ok(())
}

/// Used by `PostgresStore::commit`: a failure to queue is `Unavailable` (nothing applied).
pub fn queue_full(depth: usize) -> StoreError {
    unavailable(
        "queue the commit",
        format!("the commit queue is full ({depth} commits waiting, the commit_queue_depth limit); retry later"),
    )
}
