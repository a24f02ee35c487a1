//! Routes that move value: trades among sessions, purchase receipts, inbox messages.
//!
//! Invariants:
//! - Same records as the library: a trade is one fenced commit of the parties' new values with
//!   the trade record (`hoard.trades`, `Condition::Absent`) and per-player log entries
//!   (`hoard.trade_log`); a receipt is one fenced commit of the grant with its record
//!   (`hoard.receipts`, `Condition::Absent`). So library and HTTP users see one history, and a
//!   trade id commits once, a purchase id grants once, whoever retries from wherever.
//! - Value moves by the library's own code (`engine::trade::apply_legs_to_holdings`).
//! - Parties are read and written on `Version(read)` as well as their fence: a save that lands
//!   between the read and the commit makes the commit retry on the new value, never overwrite it.
//! - A commit whose outcome is unknown is resolved by reading back before anything is answered.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use hoard::engine::receipt::{ReceiptOutcome, ReceiptRecord, compare, receipt_id};
use hoard::engine::trade::{
    Holdings, Trade, TradeError, TradeLeg, TradeOutcome, already, apply_legs_to_holdings, check_shape, log_id,
    record_for, record_id,
};
use hoard::engine::{TOPIC_INBOX, TradeRecord};
use hoard::store::{
    Commit, CommitOutcome, Condition, Conflict, ConflictKind, DocId, Notification, Store, StoreError, Write, get,
    resolve_unknown_commit,
};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::sessions::{fence, fenced_out};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::ops::{Op, OpError};
use crate::state::AppState;
use crate::wire::SessionToken;
use crate::{idempotency, metrics};

/// Attempts of a trade or receipt when a party saved between our read and our commit.
pub const VALUE_ATTEMPTS_MAX: usize = 16;
/// Bytes of one inbox message body sent over HTTP (the store's own limit applies too).
pub const MESSAGE_FIELD_ID: &str = hoard::engine::inbox::MESSAGE_ID_FIELD;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/trades", post(trade))
        .route("/v1/receipts", post(receipt))
        .route("/v1/stores/{store}/keys/{key}/messages", post(send_message))
}

/// One leg of a trade: party `from` gives `items` and `currencies` to party `to` (indexes into
/// `parties`).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LegBody {
    pub from: usize,
    pub to: usize,
    #[serde(default)]
    pub items: Vec<String>,
    #[serde(default)]
    pub currencies: BTreeMap<String, i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TradeBody {
    /// Unique per trade: a retry with the same id returns the first result and moves nothing.
    pub trade_id: String,
    /// The parties' session tokens. The trade applies to their *saved* values: save first, then
    /// replace the in-memory values with the ones returned.
    pub parties: Vec<SessionToken>,
    pub legs: Vec<LegBody>,
    /// JSON Pointer of the holdings (`{"currencies": {name: int}, "items": {id: data}}`) inside
    /// each party's value; `""` (default): the value itself.
    #[serde(default)]
    pub holdings_path: String,
}

fn holdings_of(value: Option<&Value>, path: &str, party: &DocId) -> Result<Holdings, ApiError> {
    let at = value.and_then(|v| v.pointer(path));
    let unreadable = || {
        ApiError::unprocessable(
            "not_tradable",
            format!(
                "{party}: holdings at {path:?} must be {{\"currencies\": {{name: integer}}, \"items\": {{id: data}}}}"
            ),
        )
    };
    let Some(at) = at else { return Ok(Holdings::default()) };
    let currencies = match at.get("currencies") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(found) => serde_json::from_value(found.clone()).map_err(|_| unreadable())?,
    };
    let items = match at.get("items") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(found) => serde_json::from_value(found.clone()).map_err(|_| unreadable())?,
    };
    Ok(Holdings { currencies, items })
}

fn with_holdings(value: Option<&Value>, path: &str, holdings: &Holdings) -> Result<Value, ApiError> {
    let ops = [
        Op::Set { path: format!("{path}/currencies"), value: json!(holdings.currencies) },
        Op::Set { path: format!("{path}/items"), value: json!(holdings.items) },
    ];
    crate::ops::apply(value, &ops).map_err(|e| ApiError::unprocessable("not_tradable", e.to_string()))
}

fn trade_error(error: TradeError) -> ApiError {
    match error {
        TradeError::Invalid { reason } => ApiError::unprocessable("invalid_trade", reason),
        error @ TradeError::ItemNotHeld { .. } => ApiError::conflict("item_not_held", error.to_string()),
        error @ TradeError::InsufficientBalance { .. } => ApiError::conflict("insufficient_balance", error.to_string()),
        error @ TradeError::TradeIdReused { .. } => ApiError::conflict("trade_id_reused", error.to_string()),
        TradeError::Store(error) => ApiError::store(error),
        TradeError::Transaction(error) => ApiError::internal(error),
    }
}

async fn read_trade_record(store: &dyn Store, trade_id: &str) -> Result<Option<TradeRecord>, ApiError> {
    let id = record_id(trade_id).map_err(trade_error)?;
    let document = get(store, &id).await?;
    let Some(value) = document.value else { return Ok(None) };
    let mut record: TradeRecord =
        serde_json::from_value(value).map_err(|e| ApiError::internal(format!("trade record {trade_id}: {e}")))?;
    record.committed_at_ms = document.created_at_ms;
    Ok(Some(record))
}

fn replayed_trade(first: TradeRecord, attempted: &TradeRecord) -> Result<Json<Value>, ApiError> {
    match already(first, attempted).map_err(trade_error)? {
        TradeOutcome::AlreadyCommitted(record) | TradeOutcome::Committed(record) => {
            metrics::count(metrics::TRADES, "already_committed");
            Ok(Json(json!({ "outcome": "already_committed", "record": record })))
        }
    }
}

/// A trade among sessions: items (by unique id) and currencies move between the parties' saved
/// values in one atomic, fenced commit with the trade record. Idempotent by `trade_id` (and an
/// optional `Idempotency-Key`).
#[utoipa::path(post, path = "/v1/trades", tag = "value", security(("api_key" = [])), request_body = TradeBody,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, description = "committed (with the parties' new values) or already_committed"),
        (status = 409, body = ErrorBody, description = "fenced_out, item_not_held, insufficient_balance, trade_id_reused"),
        (status = 422, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn trade(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    headers: HeaderMap,
    body: ApiJson<TradeBody>,
) -> Result<Json<Value>, ApiError> {
    let store = &*state.store;
    let digest = body.digest;
    let TradeBody { trade_id, parties, legs, holdings_path } = body.value;
    let mut fences = Vec::with_capacity(parties.len());
    for token in &parties {
        fences.push(fence(&principal, token, &state)?);
    }
    let trade = Trade {
        id: trade_id,
        legs: legs
            .into_iter()
            .map(|l| TradeLeg { from: l.from, to: l.to, items: l.items, currencies: l.currencies })
            .collect(),
    };
    check_shape(&trade, parties.len()).map_err(trade_error)?;
    let ids: Vec<DocId> = fences.iter().map(|(id, _)| id.clone()).collect();
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    if distinct.len() != ids.len() {
        return Err(ApiError::unprocessable("invalid_trade", "each party appears once"));
    }
    if !holdings_path.is_empty() && !holdings_path.starts_with('/') {
        return Err(ApiError::bad_request("holdings_path must be a JSON Pointer (\"\" or starting with '/')"));
    }
    let idem = idempotency::from_headers(&headers, &principal, "trade", &digest, store.limits())?;
    if let Some(first) = idempotency::replay(store, idem.as_ref()).await? {
        return Ok(Json(first));
    }
    let attempted = record_for(&trade, &ids);
    if let Some(first) = read_trade_record(store, &trade.id).await? {
        return replayed_trade(first, &attempted);
    }
    let record_doc = record_id(&trade.id).map_err(trade_error)?;
    let record_value = serde_json::to_value(&attempted).map_err(ApiError::internal)?;
    for _attempt in 0..VALUE_ATTEMPTS_MAX {
        let documents = store.get_many(&ids).await?;
        let mut holdings = Vec::with_capacity(documents.len());
        for ((id, fence), document) in fences.iter().zip(&documents) {
            if let Condition::Lease { holder, epoch } = fence
                && (document.lease.holder.as_ref() != Some(holder) || document.lease.epoch != *epoch)
            {
                return Err(fenced_out(id));
            }
            holdings.push(holdings_of(document.value.as_ref(), &holdings_path, id)?);
        }
        let mut refs: Vec<&mut Holdings> = holdings.iter_mut().collect();
        if let Err(error) = apply_legs_to_holdings(&mut refs, &ids, &trade) {
            metrics::count(metrics::TRADES, "refused");
            return Err(trade_error(error));
        }
        let mut writes = Vec::with_capacity(ids.len() * 2 + 2);
        let mut party_answers = Vec::with_capacity(ids.len());
        for (((id, fence), document), holding) in fences.iter().zip(&documents).zip(&holdings) {
            let next = with_holdings(document.value.as_ref(), &holdings_path, holding)?;
            let condition = Condition::All(vec![fence.clone(), Condition::Version(document.version)]);
            party_answers
                .push(json!({ "store": id.store, "key": id.key, "version": document.version + 1, "value": next }));
            writes.push(Write::put(id.clone(), next).when(condition));
        }
        writes.push(Write::put(record_doc.clone(), record_value.clone()).when(Condition::Absent));
        for id in &ids {
            let entry = json!({ "trade_id": trade.id });
            writes.push(Write::put(log_id(id, &trade.id).map_err(trade_error)?, entry).when(Condition::Absent));
        }
        let response = json!({ "outcome": "committed", "record": attempted, "parties": party_answers });
        if let Some(idem) = &idem {
            writes.push(idempotency::record_write(idem, &response));
        }
        let Some(outcome) = commit_settling_unknown(store, Commit::new(writes)).await? else { continue };
        match outcome {
            Settled::Committed => {
                metrics::count(metrics::TRADES, "committed");
                return Ok(Json(response));
            }
            Settled::Conflict(conflict) if idempotency::lost_the_race(idem.as_ref(), &conflict) => {
                let first = idempotency::replay(store, idem.as_ref()).await?;
                return first.map(Json).ok_or_else(|| ApiError::internal("idempotency record vanished"));
            }
            Settled::Conflict(conflict) => match conflict.kind {
                ConflictKind::VersionMismatch => metrics::count(metrics::CONFLICTS, "trade_retried"),
                ConflictKind::LeaseMismatch => return Err(fenced_out(&conflict.id)),
                ConflictKind::Exists => {
                    // Another attempt with this trade id committed first.
                    return match read_trade_record(store, &trade.id).await? {
                        Some(first) => replayed_trade(first, &attempted),
                        None => Err(ApiError::conflict("conflict", "a trade log entry exists without its record")),
                    };
                }
                kind => return Err(ApiError::conflict("conflict", format!("{kind:?} on {}", conflict.id))),
            },
        }
    }
    Err(ApiError::conflict("contended", "the parties kept saving during the trade; retry"))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    /// The buyer's session.
    pub token: SessionToken,
    /// The platform's purchase id: granted at most once per store, across servers and retries.
    pub purchase_id: String,
    /// What was bought (compared on replay: the same id with another payload is refused).
    #[schema(value_type = Object)]
    pub payload: Value,
    /// The grant, as lock-free operations on the buyer's saved value.
    pub grant: Vec<Op>,
}

async fn read_receipt(store: &dyn Store, id: &DocId) -> Result<Option<ReceiptRecord>, ApiError> {
    let document = get(store, id).await?;
    match document.value {
        None => Ok(None),
        Some(value) => {
            serde_json::from_value(value).map(Some).map_err(|e| ApiError::internal(format!("receipt record: {e}")))
        }
    }
}

fn receipt_answer(outcome: ReceiptOutcome) -> Result<Json<Value>, ApiError> {
    match outcome {
        ReceiptOutcome::AlreadyGranted => {
            metrics::count(metrics::RECEIPTS, "already_granted");
            Ok(Json(json!({ "outcome": "already_granted" })))
        }
        ReceiptOutcome::Refused { reason } => {
            metrics::count(metrics::RECEIPTS, "refused");
            Err(ApiError::conflict("receipt_refused", reason))
        }
        ReceiptOutcome::NotProcessedYet { reason } => Err(ApiError::conflict("not_processed_yet", reason)),
        ReceiptOutcome::Granted => Ok(Json(json!({ "outcome": "granted" }))),
    }
}

/// Processes a purchase receipt: applies the grant to the buyer's saved value and records the
/// purchase id in the same fenced commit. Safe to call any number of times, on any server.
#[utoipa::path(post, path = "/v1/receipts", tag = "value", security(("api_key" = [])), request_body = ReceiptBody,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, description = "granted (with the new value) or already_granted"),
        (status = 409, body = ErrorBody, description = "fenced_out, receipt_refused, precondition_failed"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn receipt(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    headers: HeaderMap,
    body: ApiJson<ReceiptBody>,
) -> Result<Json<Value>, ApiError> {
    let store = &*state.store;
    let digest = body.digest;
    let ReceiptBody { token, purchase_id, payload, grant } = body.value;
    let (id, fence_condition) = fence(&principal, &token, &state)?;
    if !grant.is_empty() {
        crate::ops::check(&grant).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let record_doc = receipt_id(&id.store, &purchase_id).map_err(ApiError::bad_request)?;
    let idem = idempotency::from_headers(&headers, &principal, "receipt", &digest, store.limits())?;
    if let Some(first) = idempotency::replay(store, idem.as_ref()).await? {
        return Ok(Json(first));
    }
    let attempted = ReceiptRecord { purchase_id, player: id.clone(), payload };
    if let Some(first) = read_receipt(store, &record_doc).await? {
        return receipt_answer(compare(&first, &attempted));
    }
    let record_value = serde_json::to_value(&attempted).map_err(ApiError::internal)?;
    for _attempt in 0..VALUE_ATTEMPTS_MAX {
        let document = get(store, &id).await?;
        if let Condition::Lease { holder, epoch } = &fence_condition
            && (document.lease.holder.as_ref() != Some(holder) || document.lease.epoch != *epoch)
        {
            return Err(fenced_out(&id));
        }
        let next = if grant.is_empty() {
            document.value.clone().unwrap_or(Value::Null)
        } else {
            crate::ops::apply(document.value.as_ref(), &grant).map_err(|error| match error {
                OpError::Invalid(reason) => ApiError::bad_request(reason),
                precondition @ OpError::Precondition { .. } => {
                    ApiError::conflict("precondition_failed", precondition.to_string())
                }
            })?
        };
        let condition = Condition::All(vec![fence_condition.clone(), Condition::Version(document.version)]);
        let response = json!({ "outcome": "granted", "version": document.version + 1, "value": next });
        let mut writes = vec![
            Write::put(id.clone(), next).when(condition),
            Write::put(record_doc.clone(), record_value.clone()).when(Condition::Absent),
        ];
        if let Some(idem) = &idem {
            writes.push(idempotency::record_write(idem, &response));
        }
        let Some(outcome) = commit_settling_unknown(store, Commit::new(writes)).await? else { continue };
        match outcome {
            Settled::Committed => {
                metrics::count(metrics::RECEIPTS, "granted");
                return Ok(Json(response));
            }
            Settled::Conflict(conflict) if idempotency::lost_the_race(idem.as_ref(), &conflict) => {
                let first = idempotency::replay(store, idem.as_ref()).await?;
                return first.map(Json).ok_or_else(|| ApiError::internal("idempotency record vanished"));
            }
            Settled::Conflict(conflict) if conflict.id == record_doc && conflict.kind == ConflictKind::Exists => {
                return match read_receipt(store, &record_doc).await? {
                    Some(first) => receipt_answer(compare(&first, &attempted)),
                    None => Err(ApiError::conflict("not_processed_yet", "the receipt record vanished; retry")),
                };
            }
            Settled::Conflict(conflict) => match conflict.kind {
                ConflictKind::VersionMismatch => metrics::count(metrics::CONFLICTS, "receipt_retried"),
                ConflictKind::LeaseMismatch => return Err(fenced_out(&id)),
                kind => return Err(ApiError::conflict("conflict", format!("{kind:?} on {}", conflict.id))),
            },
        }
    }
    Err(ApiError::conflict("not_processed_yet", "the buyer kept saving during the grant; retry"))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    /// The message, delivered in the player's inbox (wrapped as `{"message_id", "body"}`).
    #[schema(value_type = Object)]
    pub body: Value,
}

/// Sends a message to a key's inbox, whether its player is offline, here or on another server;
/// the holder applies it and acknowledges it in a save (G7). A full inbox refuses (409
/// `inbox_full`); nothing is dropped. Takes an `Idempotency-Key` header.
#[utoipa::path(post, path = "/v1/stores/{store}/keys/{key}/messages", tag = "value", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = MessageBody,
    responses((status = 200, description = "message id and sequence"), (status = 409, body = ErrorBody),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn send_message(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: ApiJson<MessageBody>,
) -> Result<Json<Value>, ApiError> {
    let Path((store_name, key)) = path.map_err(super::path_error)?;
    principal.may_play(&store_name)?;
    let store = &*state.store;
    let id = super::doc_id(&store_name, &key, store.limits())?;
    let idem = idempotency::from_headers(&headers, &principal, "message", &body.digest, store.limits())?;
    if let Some(first) = idempotency::replay(store, idem.as_ref()).await? {
        return Ok(Json(first));
    }
    let message_id = uuid::Uuid::now_v7().to_string();
    let envelope = json!({ MESSAGE_FIELD_ID: message_id, "body": body.value.body });
    let response = json!({ "message_id": message_id });
    let mut writes = vec![Write::new(id.clone()).push_message(envelope)];
    if let Some(idem) = &idem {
        writes.push(idempotency::record_write(idem, &response));
    }
    match store.commit(Commit::new(writes)).await {
        Ok(CommitOutcome::Committed { applied, .. }) => {
            metrics::count(metrics::MESSAGES, "sent");
            let payload = serde_json::to_string(&id).unwrap_or_default();
            let _ = store.notify(Notification { topic: TOPIC_INBOX.to_string(), payload }).await;
            let seq = applied.first().and_then(|a| a.inbox_seqs.first().copied());
            Ok(Json(json!({ "message_id": message_id, "seq": seq })))
        }
        Ok(CommitOutcome::Conflict(conflict)) if idempotency::lost_the_race(idem.as_ref(), &conflict) => {
            let first = idempotency::replay(store, idem.as_ref()).await?;
            first.map(Json).ok_or_else(|| ApiError::internal("idempotency record vanished"))
        }
        Ok(CommitOutcome::Conflict(conflict)) if conflict.kind == ConflictKind::InboxFull => Err(ApiError::conflict(
            "inbox_full",
            format!("the inbox of {id} is full; the player must come online before more messages fit"),
        )),
        Ok(CommitOutcome::Conflict(conflict)) => Err(ApiError::conflict("conflict", format!("{:?}", conflict.kind))),
        Err(StoreError::InvalidInput(error)) => Err(ApiError::bad_request(error.to_string())),
        Err(error) => Err(ApiError::store(error)),
    }
}

/// How a value-moving commit ended, once any lost answer was resolved by reading back.
enum Settled {
    Committed,
    Conflict(Conflict),
}

/// Commits, resolving an unknown outcome by reading the commit back before answering.
/// `Ok(None)`: it did not apply, so the caller may build the commit again and retry.
async fn commit_settling_unknown(store: &dyn Store, commit: Commit) -> Result<Option<Settled>, ApiError> {
    match store.commit(commit.clone()).await {
        Ok(CommitOutcome::Committed { .. }) => Ok(Some(Settled::Committed)),
        Ok(CommitOutcome::Conflict(conflict)) => Ok(Some(Settled::Conflict(conflict))),
        Err(error) if error.may_have_applied() => match resolve_unknown_commit(store, &commit).await {
            Ok(Some(true)) => Ok(Some(Settled::Committed)),
            Ok(Some(false)) => Ok(None),
            _ => Err(ApiError::store(error)),
        },
        Err(error) => Err(ApiError::store(error)),
    }
}
