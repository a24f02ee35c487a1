//! Cross-server trades over HTTP: the engine's protocol (`hoard::engine::trade::across`), step by
//! step, on stored JSON values. Each party's game server prepares its own party (escrowing what
//! it gives), the last prepare decides `committed`, and each party settles its side once decided;
//! a trade still pending past its deadline (by the store's clock) aborts and every giver settles
//! back its escrow. Parties held by an engine (`Engine::trade_across`) and parties held over HTTP
//! can be in the same trade: the record, escrows, pending marks and decision messages are the
//! engine's.
//!
//! Invariants:
//! - Value moves only through the engine's pure helpers (`escrow_out`, `settle_in`,
//!   `with_prepared`, `with_aborted`, `legs_to_settle`), and each step that moves value is one
//!   commit fenced by the caller's token (`Lease{holder, epoch}`) and the version the holdings
//!   were read at (and `base_version` when given: `stale` otherwise): the profile (holdings and
//!   `pending_trades` at `holdings_path`), the escrow documents (`Absent` when created,
//!   `Version(read)` when deleted), and for a prepare the record (`Absent`, or
//!   `Version(read) ∧ Before(deadline)`) and the party's trade log entry.
//! - The decision is the record's conditional write: the first writer wins; an abort is written on
//!   `Version(read)` of a pending record only; a prepare after the deadline is refused by the store.
//! - Every step is idempotent by trade id: a retry reads the record and the party's pending mark
//!   and answers where the trade stands, moving nothing twice. A commit whose answer was lost is
//!   read back before anything is answered.
//! - After a prepare that decides, or an abort, the other parties are told through their inbox
//!   with the engine's message (`decision_message`), best effort: a lost message only delays a
//!   settle until the party's next look (`GET`, settle, or its deadline).
//! - The record is the engine's `hoard.trades/{trade id}` (so an engine party can share the
//!   trade); every route checks that the caller may play every party's store.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use hoard::engine::TOPIC_INBOX;
use hoard::engine::trade::{
    CROSS_TRADE_TIMEOUT_MS_DEFAULT, CrossTrade, Escrow, Holdings, PendingTrade, TradeError, TradeLeg, TradeRecord,
    cross_record, deadline_ms, decision_message, escrow_id, escrow_out, legs_to_settle, log_id, parties_to_tell,
    party_of, record_id, settle_in, with_aborted, with_prepared,
};
use hoard::store::{Commit, Condition, ConflictKind, DocId, Document, Notification, Store, Write, get as read_doc};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::sessions::{fence, fenced_out, holds};
use super::trades::{LegBody, TRADE_ATTEMPTS_MAX, trade_error};
use super::value::{MESSAGE_FIELD_ID, Settled, commit_settling_unknown};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::metrics;
use crate::ops::Op;
use crate::state::AppState;
use crate::wire::{CurrentDocument, PartyState, SessionToken};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/trades/cross/prepare", post(prepare))
        .route("/v1/trades/cross/{trade_id}", get(read_trade))
        .route("/v1/trades/cross/{trade_id}/settle", post(settle))
        .route("/v1/trades/cross/{trade_id}/abort", post(abort))
}

/// A party of a cross-server trade.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartyBody {
    pub store: String,
    pub key: String,
}

/// The trade, the same for every party (each party's server sends it).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CrossTradeBody {
    /// Unique per trade; every step is idempotent by it.
    pub id: String,
    /// 2 to 8 players; legs name them by index.
    pub parties: Vec<PartyBody>,
    pub legs: Vec<LegBody>,
    /// How long after the first prepare the trade may still commit (1000 to 600000; default 30000).
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrepareBody {
    pub trade: CrossTradeBody,
    /// The session token of the party this server prepares (one of `trade.parties`).
    pub token: SessionToken,
    /// The version the client's state is based on: the prepare applies to the stored value only
    /// if it is still at this version (`stale` otherwise). Absent: to the stored value as it is.
    pub base_version: Option<u64>,
    /// The client's current value ("save, then prepare" in one commit): the prepare applies to it
    /// instead of the stored value. Needs `base_version`.
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    /// JSON Pointer of the holdings (`{"currencies", "items", "pending_trades"}`) inside the value;
    /// `""` (default): the value itself.
    #[serde(default)]
    pub holdings_path: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettleBody {
    /// The session token of a party of the trade.
    pub token: SessionToken,
    pub base_version: Option<u64>,
    #[serde(default)]
    pub holdings_path: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbortBody {
    /// The session token of a party of the trade (which declines it).
    pub token: SessionToken,
    /// Why, kept in the record.
    #[serde(default)]
    pub reason: Option<String>,
    pub base_version: Option<u64>,
    #[serde(default)]
    pub holdings_path: String,
}

/// Reason bytes kept in an abort.
const ABORT_REASON_BYTES_MAX: usize = 200;
const DEADLINE_REASON: &str = "the deadline passed before every party prepared";

fn check_path(holdings_path: &str) -> Result<(), ApiError> {
    if !holdings_path.is_empty() && !holdings_path.starts_with('/') {
        return Err(ApiError::bad_request("holdings_path must be a JSON Pointer (\"\" or starting with '/')"));
    }
    Ok(())
}

fn table<T: serde::de::DeserializeOwned>(at: &Value, field: &str) -> Result<BTreeMap<String, T>, ()> {
    match at.get(field) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        // `[]` is an empty table as Roblox's JSONEncode writes it.
        Some(Value::Array(empty)) if empty.is_empty() => Ok(BTreeMap::new()),
        Some(found) => serde_json::from_value(found.clone()).map_err(|_| ()),
    }
}

/// The holdings at `path`, with the pending cross-server trades.
fn holdings_of(value: Option<&Value>, path: &str, party: &DocId) -> Result<Holdings, ApiError> {
    let unreadable = || {
        ApiError::unprocessable(
            "not_tradable",
            format!(
                "{party}: holdings at {path:?} must be {{\"currencies\": {{name: integer}}, \"items\": {{id: data}}, \"pending_trades\": {{trade id: {{\"party\": index}}}}}}"
            ),
        )
    };
    let Some(at) = value.and_then(|v| v.pointer(path)) else { return Ok(Holdings::default()) };
    Ok(Holdings {
        currencies: table(at, "currencies").map_err(|_| unreadable())?,
        items: table(at, "items").map_err(|_| unreadable())?,
        pending_trades: table::<PendingTrade>(at, "pending_trades").map_err(|_| unreadable())?,
    })
}

/// The value with these holdings at `path` (`pending_trades` absent when empty, as the engine
/// writes it).
fn with_holdings(value: Option<&Value>, path: &str, holdings: &Holdings) -> Result<Value, ApiError> {
    let mut ops = vec![
        Op::Set { path: format!("{path}/currencies"), value: json!(holdings.currencies) },
        Op::Set { path: format!("{path}/items"), value: json!(holdings.items) },
    ];
    let pending_path = format!("{path}/pending_trades");
    if !holdings.pending_trades.is_empty() {
        ops.push(Op::Set { path: pending_path, value: json!(holdings.pending_trades) });
    } else if value.and_then(|v| v.pointer(&pending_path)).is_some() {
        ops.push(Op::Remove { path: pending_path });
    }
    crate::ops::apply(value, &ops).map_err(|e| ApiError::unprocessable("not_tradable", e.to_string()))
}

fn parties_of(body: &CrossTradeBody, principal: &Principal, state: &AppState) -> Result<Vec<DocId>, ApiError> {
    let mut parties = Vec::with_capacity(body.parties.len());
    for party in &body.parties {
        principal.may_play(&party.store)?;
        parties.push(super::doc_id(&party.store, &party.key, state.store.limits())?);
    }
    Ok(parties)
}

/// The caller may play every party's store (a trade's record names them all).
fn may_play_all(principal: &Principal, record: &TradeRecord) -> Result<(), ApiError> {
    record.parties.iter().try_for_each(|party| principal.may_play(party.store.as_str()))
}

/// The record and its version (0: never written); `committed_at_ms` is its creation time.
async fn read_record(store: &dyn Store, trade_id: &str) -> Result<(Option<TradeRecord>, u64), ApiError> {
    let id = record_id(trade_id).map_err(trade_error)?;
    let document = read_doc(store, &id).await?;
    let Some(value) = document.value else { return Ok((None, document.version)) };
    let mut record: TradeRecord =
        serde_json::from_value(value).map_err(|e| ApiError::internal(format!("trade record {id}: {e}")))?;
    record.committed_at_ms = document.created_at_ms;
    Ok((Some(record), document.version))
}

async fn existing_record(store: &dyn Store, trade_id: &str) -> Result<TradeRecord, ApiError> {
    match read_record(store, trade_id).await?.0 {
        Some(record) if record.timeout_ms.is_some() => Ok(record),
        Some(_) => {
            Err(ApiError::unprocessable("not_cross_trade", format!("trade {trade_id} is not a cross-server trade")))
        }
        None => Err(ApiError::not_found(format!("there is no trade {trade_id}"))),
    }
}

/// Where a trade stands, for every answer.
fn trade_view(record: &TradeRecord) -> Value {
    json!({
        "trade_id": record.trade_id,
        "status": record.status,
        "parties": record.parties,
        "legs": record.legs,
        "prepared": record.prepared,
        "deadline_ms": deadline_ms(record),
        "created_at_ms": record.committed_at_ms,
        "abort_reason": record.abort_reason,
    })
}

fn answer(record: &TradeRecord, party: &PartyState, settled: bool) -> Json<Value> {
    Json(json!({ "outcome": record.status, "trade": trade_view(record), "party": party, "settled": settled }))
}

/// The party's document, checked: still held by the token, and at `base_version` when given.
async fn fenced_document(
    store: &dyn Store,
    id: &DocId,
    lease: &Condition,
    base_version: Option<u64>,
) -> Result<Document, ApiError> {
    let document = read_doc(store, id).await?;
    if !holds(&document, lease) {
        return Err(fenced_out(id));
    }
    if let Some(base) = base_version
        && document.version != base
    {
        return Err(ApiError::stale(base, CurrentDocument::of(document)));
    }
    Ok(document)
}

fn fenced_put(id: &DocId, lease: &Condition, version: u64, value: Value) -> Write {
    Write::put(id.clone(), value).when(Condition::All(vec![lease.clone(), Condition::Version(version)]))
}

/// Tells the parties (but `except`) that the trade was decided: the engine's message in their
/// inbox, then the notification and holder event a message route sends. Best effort.
async fn tell_parties(store: &dyn Store, record: &TradeRecord, except: Option<usize>) {
    let body = decision_message(record);
    for index in parties_to_tell(record, except) {
        let id = &record.parties[index];
        let envelope = json!({ MESSAGE_FIELD_ID: uuid::Uuid::now_v7().to_string(), "body": body });
        if let Err(error) = store.commit(Commit::single(Write::new(id.clone()).push_message(envelope))).await {
            // The party learns it at its next look at the trade, or at its deadline.
            metrics::gave_up("telling a party of a cross-server trade's decision", &error);
            continue;
        }
        metrics::count(metrics::MESSAGES, "sent");
        let payload = serde_json::to_string(id).unwrap_or_default();
        if let Err(error) = store.notify(Notification { topic: TOPIC_INBOX.to_string(), payload }).await {
            metrics::gave_up("notifying a message", &error);
        }
        super::events::announce_inbox_arrival(store, id).await;
    }
}

/// Aborts the trade if it is still pending (for `reason`), telling the parties that prepared.
/// Returns the decided record: aborted now, or whatever was decided first.
async fn abort_record(store: &dyn Store, trade_id: &str, reason: &str) -> Result<TradeRecord, ApiError> {
    let record_doc = record_id(trade_id).map_err(trade_error)?;
    for _attempt in 0..TRADE_ATTEMPTS_MAX {
        let (record, version) = read_record(store, trade_id).await?;
        let current = record.ok_or_else(|| ApiError::not_found(format!("there is no trade {trade_id}")))?;
        if current.status != hoard::engine::trade::STATUS_PENDING {
            return Ok(current);
        }
        let aborted = with_aborted(&current, reason);
        let value = serde_json::to_value(&aborted).map_err(ApiError::internal)?;
        let write = Write::put(record_doc.clone(), value).when(Condition::Version(version));
        match commit_settling_unknown(store, Commit::single(write)).await? {
            Some(Settled::Committed { .. }) => {
                metrics::count(metrics::TRADES, "cross_aborted");
                tell_parties(store, &aborted, None).await;
                return Ok(aborted);
            }
            // Someone wrote the record first (or the write did not apply): read what stands.
            Some(Settled::Conflict(_)) | None => continue,
        }
    }
    Err(ApiError::conflict("contended", "the trade record kept changing; retry"))
}

/// Settles the party's side of a decided trade (or of a pending one past its deadline, aborted
/// first): takes in the escrows of its legs and clears its pending mark, in one fenced commit.
/// A party with no pending mark has nothing to settle: it answers where the trade stands.
async fn settle_party(
    store: &dyn Store,
    id: &DocId,
    lease: &Condition,
    base_version: Option<u64>,
    holdings_path: &str,
    trade_id: &str,
) -> Result<Json<Value>, ApiError> {
    let mut base_version = base_version;
    for _attempt in 0..TRADE_ATTEMPTS_MAX {
        let mut record = existing_record(store, trade_id).await?;
        let document = fenced_document(store, id, lease, base_version).await?;
        let mut holdings = holdings_of(document.value.as_ref(), holdings_path, id)?;
        let Some(mark) = holdings.pending_trades.get(trade_id).cloned() else {
            // Settled before, or it never prepared.
            return Ok(answer(&record, &PartyState::of(&document), false));
        };
        if record.status == hoard::engine::trade::STATUS_PENDING {
            if store.now_ms().await? < deadline_ms(&record) {
                return Ok(answer(&record, &PartyState::of(&document), false));
            }
            record = abort_record(store, trade_id, DEADLINE_REASON).await?;
            if record.status == hoard::engine::trade::STATUS_PENDING {
                return Ok(answer(&record, &PartyState::of(&document), false));
            }
        }
        let ids: Vec<DocId> = legs_to_settle(&record, mark.party)
            .into_iter()
            .map(|leg| escrow_id(trade_id, leg))
            .collect::<Result<_, _>>()
            .map_err(trade_error)?;
        let mut escrows: Vec<Escrow> = Vec::with_capacity(ids.len());
        let mut writes = Vec::with_capacity(ids.len() + 1);
        for escrow_doc in store.get_many(&ids).await? {
            let Some(value) = escrow_doc.value else {
                return Err(ApiError::internal(format!(
                    "escrow {} of trade {trade_id} is missing while {id} still holds the trade pending",
                    escrow_doc.id
                )));
            };
            escrows.push(
                serde_json::from_value(value)
                    .map_err(|e| ApiError::internal(format!("escrow {}: {e}", escrow_doc.id)))?,
            );
            writes.push(Write::delete(escrow_doc.id.clone()).when(Condition::Version(escrow_doc.version)));
        }
        settle_in(&mut holdings, trade_id, &escrows).map_err(trade_error)?;
        let next = with_holdings(document.value.as_ref(), holdings_path, &holdings)?;
        writes.insert(0, fenced_put(id, lease, document.version, next.clone()));
        match commit_settling_unknown(store, Commit::new(writes)).await? {
            Some(Settled::Committed { .. }) => {
                metrics::count(metrics::TRADES, "cross_settled");
                let party = PartyState::new(id, Some(next), document.version.saturating_add(1));
                return Ok(answer(&record, &party, true));
            }
            Some(Settled::Conflict(conflict)) if conflict.kind == ConflictKind::LeaseMismatch => {
                return Err(fenced_out(id));
            }
            Some(Settled::Conflict(conflict)) if conflict.id == *id && base_version.is_some() => {
                let current = read_doc(store, id).await?;
                return Err(ApiError::stale(document.version, CurrentDocument::of(current)));
            }
            // A save or a concurrent settle landed in between: read again (the mark tells).
            Some(Settled::Conflict(_)) | None => {
                metrics::count(metrics::CONFLICTS, "trade_retried");
                base_version = None;
            }
        }
    }
    Err(ApiError::conflict("contended", "the party kept saving during the settle; retry"))
}

/// Prepares the caller's party of a cross-server trade: in one commit fenced by its token, what
/// it gives leaves its value into one escrow document per leg, the trade is marked pending in its
/// holdings (`pending_trades`), and it joins the record's `prepared`; the last party to prepare
/// decides `committed`, tells the others through their inbox (`{"hoard_trade": {"trade_id",
/// "status"}}`) and settles its own side at once. Idempotent by trade id. A party that cannot
/// give aborts the trade (409 `item_not_held`, `insufficient_balance`); past the deadline the
/// answer is `aborted`. Answers `outcome` (`pending`, `committed`, `aborted`), `trade` (record,
/// legs, `prepared`, `deadline_ms`) and the party's value and version to adopt.
#[utoipa::path(post, path = "/v1/trades/cross/prepare", tag = "value", security(("api_key" = [])), request_body = PrepareBody,
    responses((status = 200, description = "`outcome` (`pending`, `committed`, `aborted`), `trade`, `party` (value and version), `settled`"),
        (status = 409, body = ErrorBody, description = "fenced_out, stale (with `current`), item_not_held, insufficient_balance, trade_id_reused, contended"),
        (status = 422, body = ErrorBody, description = "invalid_trade (parties, legs, timeout), not_a_party, not_tradable"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn prepare(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<PrepareBody>,
) -> Result<Json<Value>, ApiError> {
    let store = &*state.store;
    let PrepareBody { trade, token, base_version, value: sent, holdings_path } = body.value;
    check_path(&holdings_path)?;
    if sent.is_some() && base_version.is_none() {
        return Err(ApiError::bad_request("a prepare with a value needs the base_version it is based on"));
    }
    let (id, lease) = fence(&principal, &token, &state)?;
    let parties = parties_of(&trade, &principal, &state)?;
    let cross = CrossTrade {
        id: trade.id.clone(),
        parties,
        legs: trade
            .legs
            .into_iter()
            .map(|l| TradeLeg { from: l.from, to: l.to, items: l.items, currencies: l.currencies })
            .collect(),
        timeout_ms: trade.timeout_ms.unwrap_or(CROSS_TRADE_TIMEOUT_MS_DEFAULT),
    };
    let attempted = cross_record(&cross).map_err(trade_error)?;
    let party = party_of(&attempted, &id).ok_or_else(|| {
        ApiError::unprocessable("not_a_party", format!("{id} (the token's key) is not a party of trade {}", cross.id))
    })?;
    let record_doc = record_id(&cross.id).map_err(trade_error)?;
    let log_doc = log_id(&id, &cross.id).map_err(trade_error)?;
    let mut base_version = base_version;
    for _attempt in 0..TRADE_ATTEMPTS_MAX {
        let (record, record_version) = read_record(store, &cross.id).await?;
        let (next, condition) = match record {
            None => (with_prepared(&attempted, party), Condition::Absent),
            Some(current) => {
                if !current.same_trade(&attempted) || current.timeout_ms.is_none() {
                    return Err(trade_error(TradeError::TradeIdReused {
                        trade_id: cross.id.clone(),
                        first: Box::new(current),
                    }));
                }
                if current.status != hoard::engine::trade::STATUS_PENDING || current.prepared.contains(&party) {
                    // Prepared before (a retry), or decided: settle what is decided, answer the rest.
                    metrics::count(metrics::TRADES, "cross_replayed");
                    return settle_party(store, &id, &lease, None, &holdings_path, &cross.id).await;
                }
                let before = Condition::Before(deadline_ms(&current));
                (with_prepared(&current, party), Condition::All(vec![Condition::Version(record_version), before]))
            }
        };
        let mut document = fenced_document(store, &id, &lease, base_version).await?;
        if let Some(sent) = &sent {
            document.value = Some(sent.clone());
        }
        let mut holdings = holdings_of(document.value.as_ref(), &holdings_path, &id)?;
        let escrows = match escrow_out(&mut holdings, &next, party) {
            Ok(escrows) => escrows,
            Err(refusal) => {
                // It can never commit: abort now (if it was started), so the others get back
                // what they escrowed.
                metrics::count(metrics::TRADES, "refused");
                if !matches!(condition, Condition::Absent) {
                    abort_record(store, &cross.id, &format!("{id} cannot give: {refusal}")).await?;
                }
                return Err(trade_error(refusal));
            }
        };
        let value = with_holdings(document.value.as_ref(), &holdings_path, &holdings)?;
        let mut writes = vec![fenced_put(&id, &lease, document.version, value.clone())];
        for escrow in &escrows {
            let escrow_doc = escrow_id(&cross.id, escrow.leg).map_err(trade_error)?;
            writes.push(
                Write::put(escrow_doc, serde_json::to_value(escrow).map_err(ApiError::internal)?)
                    .when(Condition::Absent),
            );
        }
        let record_value = serde_json::to_value(&next).map_err(ApiError::internal)?;
        writes.push(Write::put(record_doc.clone(), record_value).when(condition.clone()));
        writes.push(Write::put(log_doc.clone(), json!({ "trade_id": cross.id })).when(Condition::Absent));
        let Some(outcome) = commit_settling_unknown(store, Commit::new(writes)).await? else { continue };
        match outcome {
            Settled::Committed { at_ms } => {
                let mut prepared = next;
                if matches!(condition, Condition::Absent) {
                    // This commit created the record: its creation time is the commit's.
                    prepared.committed_at_ms = match at_ms {
                        Some(at_ms) => at_ms,
                        None => read_record(store, &cross.id).await?.0.map_or(0, |r| r.committed_at_ms),
                    };
                }
                let party_state = PartyState::new(&id, Some(value), document.version.saturating_add(1));
                if prepared.status == hoard::engine::trade::STATUS_COMMITTED {
                    metrics::count(metrics::TRADES, "cross_committed");
                    tell_parties(store, &prepared, Some(party)).await;
                    return settle_party(store, &id, &lease, None, &holdings_path, &cross.id).await;
                }
                metrics::count(metrics::TRADES, "cross_prepared");
                return Ok(answer(&prepared, &party_state, false));
            }
            Settled::Conflict(conflict) if conflict.kind == ConflictKind::DeadlinePassed => {
                let record = abort_record(store, &cross.id, DEADLINE_REASON).await?;
                let document = read_doc(store, &id).await?;
                return Ok(answer(&record, &PartyState::of(&document), false));
            }
            Settled::Conflict(conflict) if conflict.id == record_doc => {
                // Another party prepared (or someone decided) since the read: read again.
                continue;
            }
            Settled::Conflict(conflict) if conflict.kind == ConflictKind::LeaseMismatch => {
                return Err(fenced_out(&id));
            }
            Settled::Conflict(conflict) if conflict.id == id => {
                if let Some(base) = base_version {
                    let current = read_doc(store, &id).await?;
                    return Err(ApiError::stale(base, CurrentDocument::of(current)));
                }
                metrics::count(metrics::CONFLICTS, "trade_retried");
                base_version = None;
            }
            Settled::Conflict(conflict) => {
                return Err(ApiError::conflict(
                    "conflict",
                    format!(
                        "{:?} on {} (an escrow or log entry of this trade exists without its record)",
                        conflict.kind, conflict.id
                    ),
                ));
            }
        }
    }
    Err(ApiError::conflict("contended", "the trade kept changing during the prepare; retry"))
}

/// The caller's party of an existing trade, by its token: the key and the fence its writes carry.
/// Refused unless the caller may play every party's store and the token's key is a party.
async fn caller_party(
    principal: &Principal,
    token: &SessionToken,
    state: &AppState,
    trade_id: &str,
) -> Result<(DocId, Condition), ApiError> {
    let (id, lease) = fence(principal, token, state)?;
    let record = existing_record(&*state.store, trade_id).await?;
    may_play_all(principal, &record)?;
    party_of(&record, &id)
        .ok_or_else(|| ApiError::unprocessable("not_a_party", format!("{id} is not a party of trade {trade_id}")))?;
    Ok((id, lease))
}

/// Settles the caller's party of a decided cross-server trade: takes in what it receives
/// (committed) or gets back what it escrowed (aborted), and clears its pending mark, in one commit
/// fenced by its token. A trade still pending past its deadline aborts first. Idempotent: a party
/// with nothing pending answers where the trade stands (`settled: false`).
#[utoipa::path(post, path = "/v1/trades/cross/{trade_id}/settle", tag = "value", security(("api_key" = [])),
    params(("trade_id" = String, Path)), request_body = SettleBody,
    responses((status = 200, description = "`outcome` (`pending`, `committed`, `aborted`), `trade`, `party` (value and version), `settled`"),
        (status = 409, body = ErrorBody, description = "fenced_out, stale (with `current`), contended"),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn settle(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    body: ApiJson<SettleBody>,
) -> Result<Json<Value>, ApiError> {
    let Path(trade_id) = path.map_err(super::path_error)?;
    let SettleBody { token, base_version, holdings_path } = body.value;
    check_path(&holdings_path)?;
    let (id, lease) = caller_party(&principal, &token, &state, &trade_id).await?;
    let store = &*state.store;
    settle_party(store, &id, &lease, base_version, &holdings_path, &trade_id).await
}

/// Aborts a pending cross-server trade for the caller's party (which declines it), tells the
/// parties that prepared, and settles the caller's own escrow back. A decided trade stays as
/// decided (the answer says which). Idempotent.
#[utoipa::path(post, path = "/v1/trades/cross/{trade_id}/abort", tag = "value", security(("api_key" = [])),
    params(("trade_id" = String, Path)), request_body = AbortBody,
    responses((status = 200, description = "`outcome` (`committed` if decided before, else `aborted`), `trade`, `party`, `settled`"),
        (status = 409, body = ErrorBody, description = "fenced_out, stale (with `current`), contended"),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn abort(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    body: ApiJson<AbortBody>,
) -> Result<Json<Value>, ApiError> {
    let Path(trade_id) = path.map_err(super::path_error)?;
    let AbortBody { token, reason, base_version, holdings_path } = body.value;
    check_path(&holdings_path)?;
    let (id, lease) = caller_party(&principal, &token, &state, &trade_id).await?;
    let store = &*state.store;
    // Only a session that still holds its key may decline for it.
    fenced_document(store, &id, &lease, base_version).await?;
    let mut reason = reason.unwrap_or_else(|| "declined".to_string());
    if reason.len() > ABORT_REASON_BYTES_MAX {
        let mut cut = ABORT_REASON_BYTES_MAX;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    abort_record(store, &trade_id, &format!("{id} declined: {reason}")).await?;
    settle_party(store, &id, &lease, base_version, &holdings_path, &trade_id).await
}

/// A cross-server trade as it stands: its record (parties, legs, status, `prepared`, abort
/// reason), its deadline by the store's clock and the store's time now.
#[utoipa::path(get, path = "/v1/trades/cross/{trade_id}", tag = "value", security(("api_key" = [])),
    params(("trade_id" = String, Path)),
    responses((status = 200, description = "`trade` (status, parties, legs, prepared, deadline_ms), `now_ms`"),
        (status = 404, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, description = "`invalid_trade`: not a trade id (1 to 64 bytes, no `/`)", body = ErrorBody)))]
pub async fn read_trade(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(trade_id) = path.map_err(super::path_error)?;
    let store = &*state.store;
    let record = existing_record(store, &trade_id).await?;
    record.parties.iter().try_for_each(|party| principal.may_read(party.store.as_str()))?;
    let now_ms = store.now_ms().await?;
    Ok(Json(json!({ "trade": trade_view(&record), "now_ms": now_ms })))
}
