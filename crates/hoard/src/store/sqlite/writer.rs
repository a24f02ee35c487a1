//! The group-commit writer: one OS thread owns the only write connection of this process and
//! turns many queued write requests into few SQLite transactions.
//!
//! Invariant: a request is answered only after the transaction that carried it has COMMITted (or
//! is known not to have), and the answer says exactly what happened to that request:
//! - `Ok(..)`: COMMIT returned, so with `synchronous=FULL` the request is durable (one WAL fsync
//!   covers the whole batch). A `CommitOutcome::Conflict` wrote nothing.
//! - `Unavailable`: nothing of the request is in the file (BEGIN failed, its own savepoint was
//!   rolled back, SQLite rolled the whole transaction back, or it conflicted in a batch whose
//!   COMMIT failed: its verdict was judged against batch-mates that are not in the file).
//! - `OutcomeUnknown`: COMMIT itself failed (I/O or fsync error, full disk) after the request
//!   wrote rows; after a failed fsync nothing can be promised either way, so the caller reads back.
//!
//! Every request in a batch runs in its own SAVEPOINT, in arrival order, and sees the rows of the
//! requests before it in the same batch: conditions are judged against them exactly as if each
//! request had its own transaction. Conditions and new documents come only from `apply_commit`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use super::clock;
use super::history::{PruneCursor, PrunePage, SupersededRow, insert_superseded, prune_history_page};
use super::indexes::{Reindex, reindex};
use super::rows::{read_current, sql_error, to_json_text, upsert_document};
use crate::store::apply::{apply_commit, write_reads_value};
use crate::store::encoded::EncodedCommit;
use crate::store::history::encode_superseded;
use crate::store::limits::{HistoryPolicy, Limits};
use crate::store::types::ValueOp;
use crate::store::types::{CommitOutcome, HolderId, HolderLease, Notification};
use crate::store::{GroupCommitStats, StoreError};

/// Where to answer one request.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// History rows one pruning transaction examines at most (whole keys, so a key with more rows
/// makes a longer one), so pruning a large history never holds the write lock (and delays
/// commits) for long.
pub(crate) const PRUNE_HISTORY_ROWS_PER_TRANSACTION: usize = 500;

/// The writer deletes notifications older than the retention at most this often.
const NOTIFICATION_CLEANUP_INTERVAL_MS: i64 = 1_000;

/// A write for the writer thread.
#[derive(Debug)]
pub(crate) enum WriteRequest {
    /// Validated, put values serialized (and stripped) on the caller's task.
    Commit {
        encoded: EncodedCommit,
        reply: Reply<CommitOutcome>,
    },
    RenewHolder {
        holder: HolderId,
        ttl_ms: i64,
        reply: Reply<HolderLease>,
    },
    ReleaseHolder {
        holder: HolderId,
        reply: Reply<()>,
    },
    Notify {
        notification: Notification,
        reply: Reply<()>,
    },
    PruneHistoryPage {
        after: Option<PruneCursor>,
        rows_max: usize,
        reply: Reply<PrunePage>,
    },
    /// An operator's write (declare or drop an index, purge history: `indexes`), in its own
    /// savepoint like a commit; answers a count.
    Operator {
        work: OperatorWork,
        reply: Reply<u64>,
    },
}

/// What an operator's write runs on the writer's connection.
pub(crate) type OperatorFn = dyn FnOnce(&Connection) -> Result<u64, StoreError> + Send;

/// The work of a `WriteRequest::Operator`, run once on the writer's connection.
pub(crate) struct OperatorWork(pub Box<OperatorFn>);

impl std::fmt::Debug for OperatorWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorWork")
    }
}

/// Counters of the writer, shared with the store for `group_commit_stats`.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    commits_total: AtomicU64,
    transactions_total: AtomicU64,
    largest_batch: AtomicU64,
}

impl WriterStats {
    pub(crate) fn snapshot(&self) -> GroupCommitStats {
        GroupCommitStats {
            commits_total: self.commits_total.load(Ordering::SeqCst),
            transactions_total: self.transactions_total.load(Ordering::SeqCst),
            largest_batch: self.largest_batch.load(Ordering::SeqCst),
        }
    }
}

/// What the writer thread needs besides its connection and queue.
#[derive(Debug)]
pub(crate) struct WriterContext {
    pub limits: Limits,
    pub history_policy: HistoryPolicy,
    /// Most requests carried by one transaction.
    pub group_commit_max_commits: usize,
    pub notification_retention_ms: i64,
    pub stats: Arc<WriterStats>,
}

/// The body of the writer thread: runs until every sender is gone and the queue is drained, so
/// everything queued before the store was dropped is still written and answered.
pub(crate) fn run_writer(mut connection: Connection, mut queue: mpsc::Receiver<WriteRequest>, context: WriterContext) {
    let batch_max = context.group_commit_max_commits.max(1);
    let mut last_notification_cleanup_ms = i64::MIN;
    while let Some(first) = queue.blocking_recv() {
        // Group commit: whatever queued up while the previous transaction was fsyncing rides in
        // this one, so under load many commits share one fsync; alone, a commit goes at once.
        let mut batch = Vec::with_capacity(batch_max.min(64));
        batch.push(first);
        while batch.len() < batch_max {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        run_batch(&mut connection, batch, &context, &mut last_notification_cleanup_ms);
    }
}

/// One request's result, waiting for the transaction's fate before it is sent.
enum Answer {
    Commit(Reply<CommitOutcome>, Result<CommitOutcome, StoreError>),
    Holder(Reply<HolderLease>, Result<HolderLease, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
    Prune(Reply<PrunePage>, Result<PrunePage, StoreError>),
    Count(Reply<u64>, Result<u64, StoreError>),
}

impl Answer {
    /// True when the request left rows in the transaction.
    fn wrote(&self) -> bool {
        match self {
            Answer::Commit(_, result) => matches!(result, Ok(CommitOutcome::Committed { .. })),
            Answer::Holder(_, result) => result.is_ok(),
            Answer::Unit(_, result) => result.is_ok(),
            Answer::Prune(_, result) => result.as_ref().is_ok_and(|page| page.pruned > 0),
            Answer::Count(_, result) => result.is_ok(),
        }
    }

    fn succeeded(&self) -> bool {
        match self {
            Answer::Commit(_, result) => result.is_ok(),
            Answer::Holder(_, result) => result.is_ok(),
            Answer::Unit(_, result) => result.is_ok(),
            Answer::Prune(_, result) => result.is_ok(),
            Answer::Count(_, result) => result.is_ok(),
        }
    }

    /// Replaces a success with `error` (keeps an error the request already had).
    fn fail_with(self, error: impl Fn() -> StoreError) -> Answer {
        match self {
            Answer::Commit(reply, result) => Answer::Commit(reply, result.and_then(|_| Err(error()))),
            Answer::Holder(reply, result) => Answer::Holder(reply, result.and_then(|_| Err(error()))),
            Answer::Unit(reply, result) => Answer::Unit(reply, result.and_then(|_| Err(error()))),
            Answer::Prune(reply, result) => Answer::Prune(reply, result.and_then(|_| Err(error()))),
            Answer::Count(reply, result) => Answer::Count(reply, result.and_then(|_| Err(error()))),
        }
    }

    fn send(self) {
        // A caller that stopped waiting (its future was dropped) is not an error of the writer.
        match self {
            Answer::Commit(reply, result) => drop(reply.send(result)),
            Answer::Holder(reply, result) => drop(reply.send(result)),
            Answer::Unit(reply, result) => drop(reply.send(result)),
            Answer::Prune(reply, result) => drop(reply.send(result)),
            Answer::Count(reply, result) => drop(reply.send(result)),
        }
    }
}

impl WriteRequest {
    fn refuse(self, error: StoreError) {
        match self {
            WriteRequest::Commit { reply, .. } => drop(reply.send(Err(error))),
            WriteRequest::RenewHolder { reply, .. } => drop(reply.send(Err(error))),
            WriteRequest::ReleaseHolder { reply, .. } => drop(reply.send(Err(error))),
            WriteRequest::Notify { reply, .. } => drop(reply.send(Err(error))),
            WriteRequest::PruneHistoryPage { reply, .. } => drop(reply.send(Err(error))),
            WriteRequest::Operator { reply, .. } => drop(reply.send(Err(error))),
        }
    }

    fn is_commit(&self) -> bool {
        matches!(self, WriteRequest::Commit { .. })
    }
}

fn run_batch(
    connection: &mut Connection,
    batch: Vec<WriteRequest>,
    context: &WriterContext,
    last_cleanup_ms: &mut i64,
) {
    // One now per transaction: every commit of the batch is stamped and judged (lease expiry) by
    // the same instant, and it is read after the previous transaction ended, so it never runs
    // behind a time already written by this process.
    let now_ms = clock::now_ms();
    let commits_in_batch = batch.iter().filter(|request| request.is_commit()).count() as u64;
    if let Err(error) = connection.execute_batch("BEGIN IMMEDIATE") {
        // BEGIN IMMEDIATE takes the write lock or fails having changed nothing (e.g. BUSY after
        // busy_timeout because another process held the lock that long).
        let message = format!("SQLite could not start a write transaction: {}", super::describe_error(&error));
        for request in batch {
            request.refuse(StoreError::unavailable(&message));
        }
        return;
    }
    let mut answers = Vec::with_capacity(batch.len());
    let mut requests = batch.into_iter();
    let mut transaction_lost = None;
    for request in requests.by_ref() {
        let (answer, savepoint_clean) = run_in_savepoint(connection, request, now_ms, context, last_cleanup_ms);
        answers.push(answer);
        if !savepoint_clean {
            transaction_lost = Some("a savepoint could not be released or rolled back");
            break;
        }
        if connection.is_autocommit() {
            // SQLite rolls the whole transaction back by itself on some errors (I/O, full disk,
            // out of memory). Going on would run the next requests outside any transaction.
            transaction_lost = Some("SQLite rolled the transaction back after an error");
            break;
        }
    }
    if let Some(reason) = transaction_lost {
        // Nothing was COMMITted, so nothing of this batch is in the file.
        let _ = connection.execute_batch("ROLLBACK");
        let error = || StoreError::unavailable(format!("SQLite write transaction abandoned: {reason}"));
        for answer in answers {
            answer.fail_with(error).send();
        }
        for request in requests {
            request.refuse(error());
        }
        return;
    }
    match connection.execute_batch("COMMIT") {
        Ok(()) => {
            let stats = &context.stats;
            // Stats describe the commit path: a transaction that carried only holder renewals,
            // notifications or pruning is not counted, so commits / transactions is the real
            // number of commits per fsync.
            if commits_in_batch > 0 {
                stats.commits_total.fetch_add(commits_in_batch, Ordering::SeqCst);
                stats.transactions_total.fetch_add(1, Ordering::SeqCst);
                stats.largest_batch.fetch_max(commits_in_batch, Ordering::SeqCst);
            }
            for answer in answers {
                answer.send();
            }
        }
        Err(error) => {
            // The transaction may or may not be in the file (the WAL fsync may have failed after
            // the frames were written). Clear whatever state is left before the next batch.
            if !connection.is_autocommit() {
                let _ = connection.execute_batch("ROLLBACK");
            }
            let message = format!("SQLite COMMIT failed: {}", super::describe_error(&error));
            for answer in answers {
                if answer.wrote() {
                    answer.fail_with(|| StoreError::outcome_unknown(&message)).send();
                } else if answer.succeeded() {
                    answer.fail_with(|| StoreError::unavailable(&message)).send();
                } else {
                    answer.send();
                }
            }
        }
    }
}

/// Runs one request inside its own savepoint; returns its answer and whether the savepoint ended
/// cleanly (released, or rolled back and released).
fn run_in_savepoint(
    connection: &Connection,
    request: WriteRequest,
    now_ms: i64,
    context: &WriterContext,
    last_cleanup_ms: &mut i64,
) -> (Answer, bool) {
    if let Err(error) = connection.execute_batch("SAVEPOINT hoard_request") {
        let answer = match request {
            WriteRequest::Commit { reply, .. } => Answer::Commit(reply, Err(sql_error("savepoint")(error))),
            WriteRequest::RenewHolder { reply, .. } => Answer::Holder(reply, Err(sql_error("savepoint")(error))),
            WriteRequest::ReleaseHolder { reply, .. } | WriteRequest::Notify { reply, .. } => {
                Answer::Unit(reply, Err(sql_error("savepoint")(error)))
            }
            WriteRequest::PruneHistoryPage { reply, .. } => Answer::Prune(reply, Err(sql_error("savepoint")(error))),
            WriteRequest::Operator { reply, .. } => Answer::Count(reply, Err(sql_error("savepoint")(error))),
        };
        return (answer, false);
    }
    let answer = match request {
        WriteRequest::Commit { encoded, reply } => {
            Answer::Commit(reply, write_commit(connection, &encoded, now_ms, context))
        }
        WriteRequest::RenewHolder { holder, ttl_ms, reply } => {
            Answer::Holder(reply, renew_holder(connection, holder, ttl_ms, now_ms))
        }
        WriteRequest::ReleaseHolder { holder, reply } => Answer::Unit(reply, release_holder(connection, &holder)),
        WriteRequest::Notify { notification, reply } => {
            Answer::Unit(reply, insert_notification(connection, &notification, now_ms, context, last_cleanup_ms))
        }
        WriteRequest::PruneHistoryPage { after, rows_max, reply } => {
            let rows_max = rows_max.clamp(1, PRUNE_HISTORY_ROWS_PER_TRANSACTION);
            Answer::Prune(
                reply,
                prune_history_page(connection, after.as_ref(), rows_max, now_ms, &context.history_policy),
            )
        }
        WriteRequest::Operator { work, reply } => Answer::Count(reply, (work.0)(connection)),
    };
    if connection.is_autocommit() {
        // The transaction is already gone (see `run_batch`); there is no savepoint to end.
        return (answer, true);
    }
    if answer.succeeded() {
        if let Err(error) = connection.execute_batch("RELEASE hoard_request") {
            let answer = answer.fail_with(|| sql_error("releasing a savepoint")(clone_error(&error)));
            let clean = connection.execute_batch("ROLLBACK TO hoard_request; RELEASE hoard_request").is_ok();
            return (answer, clean);
        }
        (answer, true)
    } else {
        // An SQL error part-way through a commit: undo whatever rows it already wrote.
        let clean = connection.execute_batch("ROLLBACK TO hoard_request; RELEASE hoard_request").is_ok();
        (answer, clean)
    }
}

fn clone_error(error: &rusqlite::Error) -> rusqlite::Error {
    rusqlite::Error::InvalidParameterName(error.to_string())
}

/// Reads the commit's keys, judges it with `apply_commit`, and writes back exactly what it
/// returns: the documents, and for each new version a history row of the version it supersedes
/// (`store::history`: the one copy of a value is the document's; the superseded one becomes a
/// delta against it, or a keyframe).
fn write_commit(
    connection: &Connection,
    encoded: &EncodedCommit,
    now_ms: i64,
    context: &WriterContext,
) -> Result<CommitOutcome, StoreError> {
    let commit = &encoded.commit;
    let mut currents = Vec::with_capacity(commit.writes.len());
    let mut stored_texts = Vec::with_capacity(commit.writes.len());
    for write in &commit.writes {
        // A new version supersedes the stored one, whose text its history row is made from.
        let (current, text) =
            read_current(connection, &write.id, &context.limits, write_reads_value(write), write.changes_version())?;
        currents.push(current);
        stored_texts.push(text);
    }
    let (nexts, applied) = match apply_commit(&currents, commit, now_ms, &context.limits) {
        Ok(result) => result,
        Err(conflict) => return Ok(CommitOutcome::Conflict(conflict)),
    };
    for (index, next) in nexts.iter().enumerate() {
        // A new version is the only way a write changes the stored value (or its user ids, or
        // what an index reads); any other write keeps it.
        if !next.new_version {
            upsert_document(connection, &next.doc, None)?;
            continue;
        }
        let stored_text = stored_texts[index].take();
        let new_text = match (&commit.writes[index].value, encoded.value_text(index)) {
            (_, Some(text)) => Some(text.clone()),
            // New metadata on the same value: the stored text stays, byte for byte.
            (ValueOp::Keep, None) => stored_text.clone(),
            (_, None) => next.doc.value.as_ref().map(|value| to_json_text("value", value)).transpose()?,
        };
        let superseded = &currents[index].doc;
        if superseded.version > 0 {
            insert_superseded(
                connection,
                SupersededRow {
                    id: &superseded.id,
                    version: superseded.version,
                    written_at_ms: superseded.updated_at_ms,
                    value_bytes: stored_text.as_ref().map_or(0, String::len) as u64,
                    attributes: to_json_text("attributes", &superseded.attributes)?,
                    user_ids: to_json_text("user ids", &superseded.user_ids)?,
                    commit_id: superseded.last_commit_id.ok_or_else(|| {
                        StoreError::corrupt(format!(
                            "{} has version {} but no commit id",
                            superseded.id, superseded.version
                        ))
                    })?,
                    payload: encode_superseded(
                        superseded.version,
                        stored_text.as_deref(),
                        new_text.as_deref(),
                        &context.history_policy,
                    ),
                },
            )?;
        }
        // A metadata-only version leaves the stored text in place (`None`): nothing to rewrite.
        let keeps_text = matches!(commit.writes[index].value, ValueOp::Keep);
        reindex(
            connection,
            Reindex {
                id: &next.doc.id,
                old_user_ids: &superseded.user_ids,
                new_user_ids: &next.doc.user_ids,
                new_text: if keeps_text { None } else { Some(new_text.as_deref()) },
            },
        )?;
        upsert_document(connection, &next.doc, if keeps_text { None } else { Some(new_text) })?;
    }
    Ok(CommitOutcome::Committed { commit_id: commit.id, at_ms: now_ms, applied })
}

fn renew_holder(
    connection: &Connection,
    holder: HolderId,
    ttl_ms: i64,
    now_ms: i64,
) -> Result<HolderLease, StoreError> {
    let expires_at_ms = now_ms.saturating_add(ttl_ms);
    connection
        .prepare_cached(
            "INSERT INTO holders (holder, expires_at_ms) VALUES (?1, ?2)
             ON CONFLICT (holder) DO UPDATE SET expires_at_ms = excluded.expires_at_ms",
        )
        .and_then(|mut statement| statement.execute(params![holder.as_str(), expires_at_ms]))
        .map_err(sql_error("renewing a holder"))?;
    Ok(HolderLease { holder, expires_at_ms })
}

fn release_holder(connection: &Connection, holder: &HolderId) -> Result<(), StoreError> {
    connection
        .prepare_cached("DELETE FROM holders WHERE holder = ?1")
        .and_then(|mut statement| statement.execute(params![holder.as_str()]))
        .map_err(sql_error("releasing a holder"))?;
    Ok(())
}

fn insert_notification(
    connection: &Connection,
    notification: &Notification,
    now_ms: i64,
    context: &WriterContext,
    last_cleanup_ms: &mut i64,
) -> Result<(), StoreError> {
    connection
        .prepare_cached("INSERT INTO notifications (topic, payload, created_at_ms) VALUES (?1, ?2, ?3)")
        .and_then(|mut statement| statement.execute(params![notification.topic, notification.payload, now_ms]))
        .map_err(sql_error("inserting a notification"))?;
    // Old notifications are deleted here, by the writer, rather than by the pollers: pollers are
    // read-only, and a notification only needs to live as long as the slowest poll interval.
    if now_ms.saturating_sub(*last_cleanup_ms) >= NOTIFICATION_CLEANUP_INTERVAL_MS {
        connection
            .prepare_cached("DELETE FROM notifications WHERE created_at_ms < ?1")
            .and_then(|mut statement| {
                statement.execute(params![now_ms.saturating_sub(context.notification_retention_ms)])
            })
            .map_err(sql_error("deleting old notifications"))?;
        *last_cleanup_ms = now_ms;
    }
    Ok(())
}
