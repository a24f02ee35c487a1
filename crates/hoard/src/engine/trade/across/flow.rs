//! The engine's driver of a cross-server trade (the protocol is in `across`): prepare, decide,
//! settle, abort, tell the other parties, and resolve what a session holds pending on load, when
//! a decision arrives in its inbox, and at the deadline.
//!
//! Invariants:
//! - Every step that moves value is one fenced commit (`transaction::transact`), which resolves a
//!   hidden outcome by reading back and never re-runs a change on a state that may contain it.
//! - A record write that lost a race (its version moved) is re-read and re-derived, through the
//!   retry helper; nothing is decided from a stale read.
//! - Telling the other parties is best effort: a lost message delays a settle until the party's
//!   next inbox check, its next load or its deadline timer; it never changes an outcome.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::retry::Attempt;
use crate::store::{Condition, ConflictKind, DocId, StoreError, Write};

use super::super::super::core::Core;
use super::super::super::inbox::send_message;
use super::super::super::session::{PendingTradesCause, ProfileKind, Session, SessionCore, SessionEvent};
use super::super::super::transaction::{TransactError, transact};
use super::super::record::{RecordRead, log_id, read_record, record_id};
use super::super::{STATUS_COMMITTED, STATUS_PENDING, Tradable, TradeError, TradeRecord};
use super::{
    CrossOutcome, CrossTrade, Escrow, cross_record, deadline_ms, decision_message, escrow_id, escrow_out,
    legs_to_settle, parties_to_tell, party_of, settle_in, with_aborted, with_prepared,
};

/// A deadline timer fires this long after the deadline it waits for (local clocks drift a little
/// from the store's).
const DEADLINE_TIMER_GRACE_MS: u64 = 250;
/// Deadline checks per pending trade before its timer gives up (the next load resolves it).
const DEADLINE_CHECKS_MAX: u32 = 4;

impl<P: Tradable> ProfileKind<P> {
    /// Lets sessions of this kind trade across servers: the engine then settles their pending
    /// cross-server trades by itself, on load, when a decision arrives, and at the deadline.
    pub fn tradable(self) -> ProfileKind<P> {
        self.with_pending_trades_hook(pending_trades_hook::<P>)
    }
}

/// What one prepare attempt found or did.
enum Step {
    /// This party's prepare committed; the record as it wrote it.
    Prepared(TradeRecord),
    /// Nothing to prepare: already prepared, or decided.
    Seen(TradeRecord),
    /// The store's clock passed the deadline before this party prepared.
    DeadlinePassed,
    /// This party cannot give what the trade says.
    Refused(TradeError),
}

/// Takes `session`'s part in a cross-server trade: prepares it (escrowing what it gives), decides
/// the trade when it is the last to prepare, and settles its side once decided.
pub(crate) async fn trade_across<P: Tradable>(
    core: &Arc<Core>,
    session: &Session<P>,
    trade: &CrossTrade,
) -> Result<CrossOutcome, TradeError> {
    if session.core().kind().pending_trades_hook().is_none() {
        return Err(TradeError::invalid(
            "declare the profile kind with ProfileKind::tradable() to trade across servers, so that pending trades are resolved on load",
        ));
    }
    if !session.core().belongs_to(core) {
        return Err(TradeError::Transaction(TransactError::OnAnotherEngine {
            id: session.id().clone(),
            holder: session.holder().clone(),
        }));
    }
    let attempted = cross_record(trade)?;
    let party = party_of(&attempted, session.id())
        .ok_or_else(|| TradeError::invalid(format!("{} is not a party of trade {}", session.id(), trade.id)))?;
    let step = core
        .retry("prepare a cross-server trade", core.config().save_attempts_max)
        .run(|_| prepare_once(core, session, &attempted, party))
        .await
        .map_err(|gave_up| gave_up.into_error())?;
    match step {
        Step::Refused(error) => {
            // It can never commit: abort now (recording it even if nobody prepared yet, so a
            // later prepare cannot start it again), and the others get back what they escrowed.
            let reason = format!("{} cannot give: {error}", session.id());
            abort_or_record(core, &trade.id, &reason, Some(&attempted)).await?;
            Err(error)
        }
        Step::DeadlinePassed => {
            let record = abort_trade(core, &trade.id, "the deadline passed before every party prepared").await?;
            Ok(CrossOutcome::of(record))
        }
        Step::Prepared(record) if record.status == STATUS_COMMITTED => {
            tell_parties(core, &record, Some(party));
            settle_pending(core, session, &trade.id).await
        }
        Step::Prepared(mut record) => {
            if record.committed_at_ms == 0 {
                // The prepare's answer was resolved by reading back, which does not say when the
                // record was created: read it, so the deadline the caller sees is the store's.
                record = read_record(core, &trade.id).await?.record.unwrap_or(record);
            }
            watch_deadline(core, session.core(), &record);
            Ok(CrossOutcome::Pending(record))
        }
        Step::Seen(record) if record.status == STATUS_PENDING => Ok(CrossOutcome::Pending(record)),
        Step::Seen(_) => settle_pending(core, session, &trade.id).await,
    }
}

async fn prepare_once<P: Tradable>(
    core: &Arc<Core>,
    session: &Session<P>,
    attempted: &TradeRecord,
    party: usize,
) -> Attempt<Step, TradeError> {
    let trade_id = &attempted.trade_id;
    let RecordRead { record, version } = match read_record(core, trade_id).await {
        Ok(read) => read,
        Err(error) => return Attempt::Fail(error),
    };
    let (next, condition) = match record {
        None => (with_prepared(attempted, party), Condition::Absent),
        Some(current) => {
            if !current.same_trade(attempted) || current.timeout_ms.is_none() {
                return Attempt::Fail(TradeError::TradeIdReused {
                    trade_id: trade_id.clone(),
                    first: Box::new(current),
                });
            }
            if current.status != STATUS_PENDING || current.prepared.contains(&party) {
                return Attempt::Done(Step::Seen(current));
            }
            let deadline = deadline_ms(&current);
            (
                with_prepared(&current, party),
                Condition::All(vec![Condition::Version(version), Condition::Before(deadline)]),
            )
        }
    };
    let ids = match (record_id(trade_id), log_id(session.id(), trade_id)) {
        (Ok(record), Ok(log)) => (record, log),
        (Err(error), _) | (_, Err(error)) => return Attempt::Fail(error),
    };
    let (record_doc, log_doc) = ids;
    let record_value = match serde_json::to_value(&next) {
        Ok(value) => value,
        Err(error) => return Attempt::Fail(TradeError::invalid(error.to_string())),
    };
    let mut refusal: Option<TradeError> = None;
    let result = transact(core, &[session], &[], |context| {
        let holdings = context.profiles[0].holdings_mut();
        let escrows = escrow_out(holdings, &next, party).map_err(|error| {
            let reason = error.to_string();
            refusal = Some(error);
            reason
        })?;
        for escrow in escrows {
            let id = escrow_id(trade_id, escrow.leg).map_err(|error| error.to_string())?;
            let value = serde_json::to_value(&escrow).map_err(|error| error.to_string())?;
            context.add_write(Write::put(id, value).when(Condition::Absent));
        }
        context.add_write(Write::put(record_doc.clone(), record_value.clone()).when(condition.clone()));
        context.add_write(Write::put(log_doc.clone(), json!({ "trade_id": trade_id })).when(Condition::Absent));
        Ok(())
    })
    .await;
    match result {
        Ok(((), at_ms)) => {
            let mut prepared = next;
            if let (Condition::Absent, Some(at_ms)) = (&condition, at_ms) {
                // This commit created the record: its creation time is the commit's.
                prepared.committed_at_ms = at_ms;
            }
            Attempt::Done(Step::Prepared(prepared))
        }
        Err(TransactError::Refused { reason }) => {
            Attempt::Done(Step::Refused(refusal.unwrap_or(TradeError::Invalid { reason })))
        }
        Err(TransactError::Conflict(conflict)) if conflict.kind == ConflictKind::DeadlinePassed => {
            Attempt::Done(Step::DeadlinePassed)
        }
        Err(TransactError::Conflict(conflict))
            if conflict.id == record_doc
                && matches!(conflict.kind, ConflictKind::VersionMismatch | ConflictKind::Exists) =>
        {
            // Another party prepared (or someone decided) since the read: read again.
            Attempt::Retry(TradeError::Transaction(TransactError::Conflict(conflict)))
        }
        Err(TransactError::Conflict(conflict)) if conflict.id == log_doc => {
            // The log entry is written only by this party's prepare, once: it applied before.
            Attempt::Fail(TradeError::Store(StoreError::corrupt(format!(
                "{} has a log entry for trade {trade_id} but is not in its record's prepared parties",
                session.id()
            ))))
        }
        Err(error) => Attempt::Fail(TradeError::Transaction(error)),
    }
}

/// Aborts a trade that is still pending (for `reason`), and tells the parties that prepared.
/// Returns the decided record: aborted now, or whatever was decided first.
pub(crate) async fn abort_trade(core: &Arc<Core>, trade_id: &str, reason: &str) -> Result<TradeRecord, TradeError> {
    abort_or_record(core, trade_id, reason, None).await
}

/// `abort_trade`; a trade with no record yet is refused, unless `attempted` gives the record to
/// create as aborted (`Absent`: a prepare that created it first is aborted instead).
async fn abort_or_record(
    core: &Arc<Core>,
    trade_id: &str,
    reason: &str,
    attempted: Option<&TradeRecord>,
) -> Result<TradeRecord, TradeError> {
    let record_doc = record_id(trade_id)?;
    let (record, aborted_now) = core
        .retry("abort a cross-server trade", core.config().save_attempts_max)
        .run(|_| async {
            let RecordRead { record, version } = match read_record(core, trade_id).await {
                Ok(read) => read,
                Err(error) => return Attempt::Fail(error),
            };
            let (current, condition) = match (record, attempted) {
                (Some(current), _) => (current, Condition::Version(version)),
                (None, Some(attempted)) => (attempted.clone(), Condition::Absent),
                (None, None) => return Attempt::Fail(TradeError::invalid(format!("there is no trade {trade_id}"))),
            };
            if current.status != STATUS_PENDING {
                return Attempt::Done((current, false));
            }
            let aborted = with_aborted(&current, reason);
            let value = match serde_json::to_value(&aborted) {
                Ok(value) => value,
                Err(error) => return Attempt::Fail(TradeError::invalid(error.to_string())),
            };
            let write = Write::put(record_doc.clone(), value).when(condition);
            match core.store().commit(crate::store::Commit::single(write)).await {
                Ok(crate::store::CommitOutcome::Committed { .. }) => Attempt::Done((aborted, true)),
                // Someone wrote the record first: read what they decided.
                Ok(crate::store::CommitOutcome::Conflict(conflict)) => {
                    Attempt::Retry(TradeError::Transaction(TransactError::Conflict(Box::new(conflict))))
                }
                // A hidden outcome: reading again tells (aborted by us, or decided by another).
                Err(error) if error.is_transient() => Attempt::Retry(TradeError::Store(error)),
                Err(error) => Attempt::Fail(TradeError::Store(error)),
            }
        })
        .await
        .map_err(|gave_up| gave_up.into_error())?;
    if aborted_now {
        tell_parties(core, &record, None);
    }
    Ok(record)
}

/// Settles `session`'s side of a trade it holds pending, if the trade is decided: takes in what
/// it receives (committed) or gets back (aborted), in one fenced commit. A trade still pending
/// past its deadline (by the store's clock) is aborted first. Returns where the trade stands.
pub(crate) async fn settle_pending<P: Tradable>(
    core: &Arc<Core>,
    session: &Session<P>,
    trade_id: &str,
) -> Result<CrossOutcome, TradeError> {
    let mut record = read_record(core, trade_id)
        .await?
        .record
        .ok_or_else(|| TradeError::invalid(format!("there is no trade {trade_id}")))?;
    let Some(mark) = session.read(|profile| profile.holdings().pending_trades.get(trade_id).cloned()) else {
        // Nothing of this party's is pending: settled before, or it never prepared.
        return Ok(CrossOutcome::of(record));
    };
    if record.status == STATUS_PENDING {
        let now_ms = core.store().now_ms().await.map_err(TradeError::Store)?;
        if now_ms < deadline_ms(&record) {
            return Ok(CrossOutcome::Pending(record));
        }
        record = abort_trade(core, trade_id, "the deadline passed before every party prepared").await?;
        if record.status == STATUS_PENDING {
            return Ok(CrossOutcome::Pending(record));
        }
    }
    let ids: Vec<DocId> = legs_to_settle(&record, mark.party)
        .into_iter()
        .map(|leg| escrow_id(trade_id, leg))
        .collect::<Result<_, _>>()?;
    let documents = core
        .retry("read a cross-server trade's escrows", core.config().load_attempts_max)
        .run(|_| async { Attempt::from_store(core.store().get_many(&ids).await) })
        .await
        .map_err(|gave_up| TradeError::Store(gave_up.into_error()))?;
    let mut escrows = Vec::with_capacity(documents.len());
    let mut deletes = Vec::with_capacity(documents.len());
    for document in documents {
        let Some(value) = document.value else {
            // Escrow leaves only in the settle that clears this party's mark, so the mark says
            // it must still be here.
            return Err(TradeError::Store(StoreError::corrupt(format!(
                "escrow {} of trade {trade_id} is missing while {} still holds the trade pending",
                document.id,
                session.id()
            ))));
        };
        let escrow: Escrow = serde_json::from_value(value)
            .map_err(|e| TradeError::Store(StoreError::corrupt(format!("escrow {}: {e}", document.id))))?;
        deletes.push(Write::delete(document.id.clone()).when(Condition::Version(document.version)));
        escrows.push(escrow);
    }
    let mut refusal: Option<TradeError> = None;
    let result = transact(core, &[session], &[], |context| {
        if !context.profiles[0].holdings().pending_trades.contains_key(trade_id) {
            // Settled meanwhile (a concurrent settle of the same session won its turn first).
            return Err(ALREADY_SETTLED.to_string());
        }
        settle_in(context.profiles[0].holdings_mut(), trade_id, &escrows).map_err(|error| {
            let reason = error.to_string();
            refusal = Some(error);
            reason
        })?;
        for delete in &deletes {
            context.add_write(delete.clone());
        }
        Ok(())
    })
    .await;
    match result {
        Ok(_) => {
            session.core().emit(SessionEvent::TradeSettled {
                trade_id: trade_id.to_string(),
                committed: record.status == STATUS_COMMITTED,
            });
            Ok(CrossOutcome::of(record))
        }
        Err(TransactError::Refused { reason }) if reason == ALREADY_SETTLED => Ok(CrossOutcome::of(record)),
        Err(TransactError::Refused { reason }) => Err(refusal.unwrap_or(TradeError::Invalid { reason })),
        Err(error) => Err(TradeError::Transaction(error)),
    }
}

const ALREADY_SETTLED: &str = "already settled";

/// Tells every party (but `except`) that the trade was decided, through its inbox: its holder
/// settles it at once. For an abort, only parties that prepared have anything to settle.
fn tell_parties(core: &Arc<Core>, record: &TradeRecord, except: Option<usize>) {
    let body = decision_message(record);
    for index in parties_to_tell(record, except) {
        let (task_core, party, body) = (core.clone(), record.parties[index].clone(), body.clone());
        let telling = async move {
            if let Err(error) = send_message(&task_core, &party, body).await {
                // The party settles at its next load or at its deadline timer instead.
                task_core.gave_up("tell a party that its cross-server trade was decided", &party, &error);
            }
        };
        // A refused task is counted and logged by `spawn`; the party settles later, as above.
        let _ = core.spawn("tell a cross-server trade's party", telling);
    }
}

/// Settles the trade once its deadline has passed, if nothing decided it before (an abandoned
/// trade aborts by itself, and this party gets back what it escrowed).
fn watch_deadline<P: Tradable>(core: &Arc<Core>, session: &Arc<SessionCore<P>>, record: &TradeRecord) {
    let (task_core, session, trade_id) = (core.clone(), Session::from_core(session.clone()), record.trade_id.clone());
    let mut deadline = deadline_ms(record);
    let watching = async move {
        for _check in 0..DEADLINE_CHECKS_MAX {
            let now_ms = match task_core.store().now_ms().await {
                Ok(now_ms) => now_ms,
                Err(error) => {
                    task_core.gave_up("wait for a cross-server trade's deadline", session.id(), &error);
                    return;
                }
            };
            let wait_ms = u64::try_from(deadline.saturating_sub(now_ms)).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait_ms + DEADLINE_TIMER_GRACE_MS)).await;
            match settle_pending(&task_core, &session, &trade_id).await {
                // Still before the deadline by the store's clock (the record as read knows its
                // creation time even when the prepare's answer did not say it).
                Ok(CrossOutcome::Pending(current)) => deadline = deadline_ms(&current),
                Ok(_) => return,
                Err(error) => {
                    // A session that ended or lost its key is settled at its next load.
                    tracing::debug!(trade_id, %error, "a cross-server trade was not settled at its deadline");
                    return;
                }
            }
        }
    };
    let _ = core.spawn("watch a cross-server trade's deadline", watching);
}

/// The kind's hook (`ProfileKind::tradable`): settles every trade the session holds pending that
/// is decided, and (on load) watches the deadline of the rest.
fn pending_trades_hook<P: Tradable>(session: &Arc<SessionCore<P>>, cause: PendingTradesCause) {
    let Some(core) = session.engine() else { return };
    let pending: Vec<String> = session.read(|profile| profile.holdings().pending_trades.keys().cloned().collect());
    for trade_id in pending {
        let (task_core, task_session) = (core.clone(), Session::from_core(session.clone()));
        let settling = async move {
            match settle_pending(&task_core, &task_session, &trade_id).await {
                Ok(CrossOutcome::Pending(record)) if cause == PendingTradesCause::Loaded => {
                    watch_deadline(&task_core, task_session.core(), &record);
                }
                Ok(_) => {}
                Err(error) => {
                    task_core.gave_up("settle a pending cross-server trade", task_session.id(), &error);
                }
            }
        };
        let _ = core.spawn("settle a pending cross-server trade", settling);
    }
}
