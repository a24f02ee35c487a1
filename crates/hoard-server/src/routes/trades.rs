//! Trades among sessions over HTTP: items (by unique id) and currencies move between the
//! parties' values in one atomic commit, fenced by every party's token, with the trade record
//! and per-player log entries.
//!
//! Invariants:
//! - The library's record format and log (`engine::trade`): value moves by
//!   `apply_legs_to_holdings`, the record is written with `Condition::Absent`, so a trade id
//!   commits at most once in its scope, whoever retries from wherever.
//! - Trade ids are scoped by the parties' stores: the record is
//!   `hoard.trades/{first party store in byte order}/{trade id}`, a key only a principal allowed
//!   to play every party's store can write, so one tenant's key can neither block nor detect
//!   another's ids. (The library's own trades keep `hoard.trades/{trade id}`.)
//! - With `party_states`, the trade applies to the values the client sent, on
//!   `Lease + Version(base_version)` ("save, then trade" in one commit): a stale party refuses
//!   the whole trade (`stale`, with its current document). Without them it applies to the saved
//!   values on `Lease + Version(read)`, re-read when a save lands in between.
//! - Every answer (committed, or a replay by trade id or `Idempotency-Key`) carries every
//!   party's value and version, which the client adopts; a replay reads them fresh.
//! - A commit whose outcome is unknown is resolved by reading back before anything is answered,
//!   and a refusal (item not held, short balance, a conflict) is answered only after the record
//!   is read again: a concurrent duplicate of the same trade may have committed meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use hoard::engine::TradeRecord;
use hoard::engine::trade::{
    Holdings, TRADE_RECORD_STORE, Trade, TradeError, TradeLeg, TradeOutcome, already, apply_legs_to_holdings,
    check_shape, log_id, record_for,
};
use hoard::store::{Condition, ConflictKind, DocId, Key, Store, StoreName, Write, get};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::sessions::{fence, fenced_out, holds};
use super::value::{Settled, commit_settling_unknown};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::ops::Op;
use crate::state::AppState;
use crate::wire::{CurrentDocument, PartyState, SessionToken};
use crate::{idempotency, metrics};

/// Attempts of a trade without party states when a party saved between our read and our commit.
pub const TRADE_ATTEMPTS_MAX: usize = 16;
/// Parties of one trade over HTTP (each costs two writes of the one commit).
pub const TRADE_PARTIES_MAX: usize = 16;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/trades", post(trade))
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

/// A party's in-memory value and the version it is based on, sent with a trade or receipt so
/// that "save, then trade" is one fenced commit.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartyStateBody {
    #[schema(value_type = Object)]
    pub value: Value,
    pub base_version: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TradeBody {
    /// Unique per trade (in the scope of the parties' stores): a retry with the same id returns
    /// the first result and moves nothing.
    pub trade_id: String,
    /// The parties' session tokens.
    pub parties: Vec<SessionToken>,
    /// Each party's current value and `base_version`, in the order of `parties`: the trade
    /// applies to these ("save, then trade" in one commit). Without them it applies to the
    /// saved values.
    pub party_states: Option<Vec<PartyStateBody>>,
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
    // `[]` is an empty table as Roblox's JSONEncode writes it: no holdings, like `{}`.
    let currencies = match at.get("currencies") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Array(empty)) if empty.is_empty() => BTreeMap::new(),
        Some(found) => serde_json::from_value(found.clone()).map_err(|_| unreadable())?,
    };
    let items = match at.get("items") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Array(empty)) if empty.is_empty() => BTreeMap::new(),
        Some(found) => serde_json::from_value(found.clone()).map_err(|_| unreadable())?,
    };
    // A local trade leaves the pending cross-server trades as they are (`with_holdings` never
    // writes them).
    Ok(Holdings { currencies, items, ..Holdings::default() })
}

fn with_holdings(value: Option<&Value>, path: &str, holdings: &Holdings) -> Result<Value, ApiError> {
    let ops = [
        Op::Set { path: format!("{path}/currencies"), value: json!(holdings.currencies) },
        Op::Set { path: format!("{path}/items"), value: json!(holdings.items) },
    ];
    crate::ops::apply(value, &ops).map_err(|e| ApiError::unprocessable("not_tradable", e.to_string()))
}

pub fn trade_error(error: TradeError) -> ApiError {
    match error {
        TradeError::Invalid { reason } => ApiError::unprocessable("invalid_trade", reason),
        error @ TradeError::ItemNotHeld { .. } => ApiError::conflict("item_not_held", error.to_string()),
        error @ TradeError::InsufficientBalance { .. } => ApiError::conflict("insufficient_balance", error.to_string()),
        TradeError::TradeIdReused { trade_id, .. } => ApiError::conflict(
            "trade_id_reused",
            format!("trade id {trade_id} was already used for a different trade; use a new id"),
        ),
        TradeError::Store(error) => ApiError::store(error),
        TradeError::Transaction(error) => ApiError::internal(error),
    }
}

/// `hoard.trades/{first party store}/{trade id}`: see the module invariants.
fn scoped_record_id(parties: &[DocId], trade_id: &str, store: &dyn Store) -> Result<DocId, ApiError> {
    let scope = parties
        .iter()
        .map(|party| party.store.as_str())
        .min()
        .ok_or_else(|| ApiError::bad_request("a trade needs parties"))?;
    let records = StoreName::new(TRADE_RECORD_STORE).map_err(ApiError::internal)?;
    let key = Key::with_limits(format!("{scope}/{trade_id}"), store.limits())
        .map_err(|e| ApiError::bad_request(format!("trade id: {e}")))?;
    Ok(DocId::new(records, key))
}

/// The trade's record, with the store's commit time (the record document's creation time).
async fn read_trade_record(store: &dyn Store, record_doc: &DocId) -> Result<Option<TradeRecord>, ApiError> {
    let document = get(store, record_doc).await?;
    let Some(value) = document.value else { return Ok(None) };
    let mut record: TradeRecord =
        serde_json::from_value(value).map_err(|e| ApiError::internal(format!("trade record {record_doc}: {e}")))?;
    record.committed_at_ms = document.created_at_ms;
    Ok(Some(record))
}

/// Every party's current value and version.
async fn current_parties(store: &dyn Store, ids: &[DocId]) -> Result<Vec<PartyState>, ApiError> {
    Ok(store.get_many(ids).await?.iter().map(PartyState::of).collect())
}

/// The answer to a trade id that already committed: the first record and the parties as they
/// are now (they hold the trade's result and whatever was saved since), to adopt.
async fn replayed_trade(
    store: &dyn Store,
    first: TradeRecord,
    attempted: &TradeRecord,
    ids: &[DocId],
) -> Result<Json<Value>, ApiError> {
    match already(first, attempted).map_err(trade_error)? {
        TradeOutcome::AlreadyCommitted(record) | TradeOutcome::Committed(record) => {
            metrics::count(metrics::TRADES, "already_committed");
            let parties = current_parties(store, ids).await?;
            Ok(Json(json!({ "outcome": "already_committed", "record": record, "parties": parties })))
        }
    }
}

/// The checked request: each party's id and fence, the trade, and where its record lives.
struct CheckedTrade {
    fences: Vec<(DocId, Condition)>,
    ids: Vec<DocId>,
    trade: Trade,
    record_doc: DocId,
    party_states: Option<Vec<PartyStateBody>>,
    holdings_path: String,
}

fn check_trade(state: &AppState, principal: &Principal, body: TradeBody) -> Result<CheckedTrade, ApiError> {
    let TradeBody { trade_id, parties, party_states, legs, holdings_path } = body;
    if parties.len() > TRADE_PARTIES_MAX {
        return Err(ApiError::unprocessable(
            "invalid_trade",
            format!("a trade has at most {TRADE_PARTIES_MAX} parties"),
        ));
    }
    let mut fences = Vec::with_capacity(parties.len());
    for token in &parties {
        fences.push(fence(principal, token, state)?);
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
    if let Some(states) = &party_states
        && states.len() != parties.len()
    {
        return Err(ApiError::bad_request("party_states has one entry per party, in the order of parties"));
    }
    let record_doc = scoped_record_id(&ids, &trade.id, &*state.store)?;
    Ok(CheckedTrade { fences, ids, trade, record_doc, party_states, holdings_path })
}

/// The trade's commit on these base values (each with the version its condition names), and
/// each party's answer.
fn trade_commit(
    checked: &CheckedTrade,
    bases: &[(Option<Value>, u64)],
    record_value: &Value,
) -> Result<(Vec<Write>, Vec<PartyState>), ApiError> {
    let CheckedTrade { fences, ids, trade, record_doc, holdings_path, .. } = checked;
    let mut holdings = Vec::with_capacity(bases.len());
    for ((id, _), (value, _)) in fences.iter().zip(bases) {
        holdings.push(holdings_of(value.as_ref(), holdings_path, id)?);
    }
    let mut refs: Vec<&mut Holdings> = holdings.iter_mut().collect();
    if let Err(error) = apply_legs_to_holdings(&mut refs, ids, trade) {
        metrics::count(metrics::TRADES, "refused");
        return Err(trade_error(error));
    }
    let mut writes = Vec::with_capacity(ids.len() * 2 + 2);
    let mut parties = Vec::with_capacity(ids.len());
    for (((id, lease), (value, version)), holding) in fences.iter().zip(bases).zip(&holdings) {
        let next = with_holdings(value.as_ref(), holdings_path, holding)?;
        let condition = Condition::All(vec![lease.clone(), Condition::Version(*version)]);
        parties.push(PartyState::new(id, Some(next.clone()), version.saturating_add(1)));
        writes.push(Write::put(id.clone(), next).when(condition));
    }
    writes.push(Write::put(record_doc.clone(), record_value.clone()).when(Condition::Absent));
    for id in ids {
        let entry = json!({ "trade_id": trade.id });
        writes.push(Write::put(log_id(id, &trade.id).map_err(trade_error)?, entry).when(Condition::Absent));
    }
    Ok((writes, parties))
}

/// A trade among sessions: items (by unique id) and currencies move between the parties' values
/// in one atomic, fenced commit with the trade record. Idempotent by `trade_id` (and an optional
/// `Idempotency-Key`). Every answer carries each party's value and version: adopt them.
#[utoipa::path(post, path = "/v1/trades", tag = "value", security(("api_key" = [])), request_body = TradeBody,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, description = "`committed` or `already_committed`, with the `record` and every party's value and version (`parties`)"),
        (status = 409, body = ErrorBody, description = "fenced_out, stale (with `current`), item_not_held, insufficient_balance, trade_id_reused, contended"),
        (status = 422, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn trade(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    headers: HeaderMap,
    body: ApiJson<TradeBody>,
) -> Result<Json<Value>, ApiError> {
    let store = &*state.store;
    let digest = body.digest;
    let checked = check_trade(&state, &principal, body.value)?;
    let idem = idempotency::from_headers(&headers, &principal, "trade", "", &digest, store.limits())?;
    if let Some(mut first) = idempotency::replay(store, idem.as_ref()).await? {
        first["parties"] =
            serde_json::to_value(current_parties(store, &checked.ids).await?).map_err(ApiError::internal)?;
        return Ok(Json(first));
    }
    let attempted = record_for(&checked.trade, &checked.ids);
    if let Some(first) = read_trade_record(store, &checked.record_doc).await? {
        return replayed_trade(store, first, &attempted, &checked.ids).await;
    }
    let record_value = serde_json::to_value(&attempted).map_err(ApiError::internal)?;
    let attempts = if checked.party_states.is_some() { 1 } else { TRADE_ATTEMPTS_MAX };
    for _attempt in 0..attempts {
        let bases: Vec<(Option<Value>, u64)> = match &checked.party_states {
            Some(states) => states.iter().map(|s| (Some(s.value.clone()), s.base_version)).collect(),
            None => {
                let documents = store.get_many(&checked.ids).await?;
                if let Some(((id, _), _)) =
                    checked.fences.iter().zip(&documents).find(|((_, lease), document)| !holds(document, lease))
                {
                    return match read_trade_record(store, &checked.record_doc).await? {
                        Some(first) => replayed_trade(store, first, &attempted, &checked.ids).await,
                        None => Err(fenced_out(id)),
                    };
                }
                documents.into_iter().map(|document| (document.value, document.version)).collect()
            }
        };
        let (mut writes, parties) = match trade_commit(&checked, &bases, &record_value) {
            Ok(commit) => commit,
            // A duplicate of this very trade may have committed since the record was looked up
            // and moved the items already: the record decides before a refusal is answered.
            Err(refusal) => {
                return match read_trade_record(store, &checked.record_doc).await? {
                    Some(first) => replayed_trade(store, first, &attempted, &checked.ids).await,
                    None => Err(refusal),
                };
            }
        };
        // The stored answer holds no values (see `idempotency`); a replay reads them fresh.
        let mut response = json!({ "outcome": "committed", "record": attempted });
        if let Some(idem) = &idem {
            writes.push(idempotency::record_write(idem, &response));
        }
        let Some(outcome) = commit_settling_unknown(store, hoard::store::Commit::new(writes)).await? else { continue };
        match outcome {
            Settled::Committed { at_ms } => {
                metrics::count(metrics::TRADES, "committed");
                let committed_at_ms = match at_ms {
                    Some(at_ms) => at_ms,
                    None => read_trade_record(store, &checked.record_doc).await?.map_or(0, |r| r.committed_at_ms),
                };
                response["record"]["committed_at_ms"] = json!(committed_at_ms);
                response["parties"] = serde_json::to_value(parties).map_err(ApiError::internal)?;
                return Ok(Json(response));
            }
            Settled::Conflict(conflict) if idempotency::lost_the_race(idem.as_ref(), &conflict) => {
                let mut first = idempotency::replay(store, idem.as_ref())
                    .await?
                    .ok_or_else(|| ApiError::internal("idempotency record vanished"))?;
                first["parties"] =
                    serde_json::to_value(current_parties(store, &checked.ids).await?).map_err(ApiError::internal)?;
                return Ok(Json(first));
            }
            Settled::Conflict(conflict) => {
                // A concurrent or earlier attempt of this very trade may have committed: its
                // record decides, before any conflict is reported.
                if let Some(first) = read_trade_record(store, &checked.record_doc).await? {
                    return replayed_trade(store, first, &attempted, &checked.ids).await;
                }
                match conflict.kind {
                    ConflictKind::LeaseMismatch => return Err(fenced_out(&conflict.id)),
                    ConflictKind::VersionMismatch if checked.party_states.is_some() => {
                        let base = checked
                            .ids
                            .iter()
                            .zip(&bases)
                            .find(|(id, _)| **id == conflict.id)
                            .map_or(0, |(_, (_, version))| *version);
                        let document = get(store, &conflict.id).await?;
                        return Err(ApiError::stale(base, CurrentDocument::of(document)));
                    }
                    ConflictKind::VersionMismatch => metrics::count(metrics::CONFLICTS, "trade_retried"),
                    ConflictKind::Exists => {
                        return Err(ApiError::conflict("conflict", "a trade log entry exists without its record"));
                    }
                    kind => return Err(ApiError::conflict("conflict", format!("{kind:?} on {}", conflict.id))),
                }
            }
        }
    }
    Err(ApiError::conflict("contended", "the parties kept saving during the trade; retry"))
}
