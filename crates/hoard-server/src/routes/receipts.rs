//! Purchase receipts over HTTP (G4): a grant and its purchase id in one fenced commit.
//!
//! Invariants:
//! - The library's record (`engine::receipt`): `hoard.receipts/{store}/{purchase id}`, written
//!   with `Condition::Absent` in the same commit as the grant, so "first" is decided by the
//!   commit that inserted it and a purchase id grants at most once per store (a store belongs to
//!   one game, so receipts are scoped per tenant already), across servers and retries.
//! - With `value` and `base_version` the grant applies to the value the client sent, on
//!   `Lease + Version(base_version)` ("save, then grant" in one commit); with `base_version`
//!   alone it applies to the saved value only if that is still the base. Either way a stale
//!   base refuses (`stale`, with the current document) and nothing changes. With neither, the
//!   grant applies to the saved value, re-read when a save lands in between.
//! - The purchase record is read again before a refusal (a precondition that fails) is answered:
//!   a concurrent duplicate may have granted meanwhile, and then the answer is `already_granted`.
//! - Every answer (granted, already granted, or an `Idempotency-Key` replay) carries the
//!   buyer's value and version (`party`), which the client adopts; a replay reads them fresh.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use hoard::engine::receipt::{ReceiptOutcome, ReceiptRecord, compare, receipt_id};
use hoard::store::{Commit, Condition, ConflictKind, DocId, Store, Write, get};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::sessions::{fence, fenced_out, holds};
use super::value::{Settled, commit_settling_unknown};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::ops::{Op, OpError};
use crate::state::AppState;
use crate::wire::{CurrentDocument, PartyState, SessionToken};
use crate::{idempotency, metrics};

/// Attempts of a receipt without a base when the buyer saved between our read and our commit.
pub const RECEIPT_ATTEMPTS_MAX: usize = 16;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/receipts", post(receipt))
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
    /// The grant, as lock-free operations on the buyer's value.
    pub grant: Vec<Op>,
    /// The buyer's current in-memory value: the grant applies to it ("save, then grant" in one
    /// commit). Needs `base_version`.
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    /// The version `value` (or, without it, the client's view of the saved value) is based on.
    pub base_version: Option<u64>,
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

/// The answer to a purchase id that was processed before: `already_granted` with the buyer as
/// stored now (it holds the first grant), or `receipt_refused` for another purchase.
async fn replayed_receipt(
    store: &dyn Store,
    first: &ReceiptRecord,
    attempted: &ReceiptRecord,
    buyer: &DocId,
) -> Result<Json<Value>, ApiError> {
    match compare(first, attempted) {
        ReceiptOutcome::AlreadyGranted => {
            metrics::count(metrics::RECEIPTS, "already_granted");
            let party = PartyState::of(&get(store, buyer).await?);
            Ok(Json(json!({ "outcome": "already_granted", "party": party })))
        }
        ReceiptOutcome::Refused { reason } => {
            metrics::count(metrics::RECEIPTS, "refused");
            Err(ApiError::conflict("receipt_refused", reason))
        }
        ReceiptOutcome::NotProcessedYet { reason } => Err(ApiError::conflict("not_processed_yet", reason)),
        ReceiptOutcome::Granted => Err(ApiError::internal("comparing two records answered granted")),
    }
}

fn grant_error(error: OpError) -> ApiError {
    match error {
        OpError::Invalid(reason) => ApiError::bad_request(reason),
        precondition @ OpError::Precondition { .. } => {
            ApiError::conflict("precondition_failed", precondition.to_string())
        }
    }
}

/// Processes a purchase receipt: applies the grant to the buyer's value and records the purchase
/// id in the same fenced commit. Safe to call any number of times, on any server.
#[utoipa::path(post, path = "/v1/receipts", tag = "value", security(("api_key" = [])), request_body = ReceiptBody,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, description = "`granted` or `already_granted`, with the buyer's value and version (`party`)"),
        (status = 409, body = ErrorBody, description = "fenced_out, stale (with `current`), receipt_refused, precondition_failed, not_processed_yet"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn receipt(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    headers: HeaderMap,
    body: ApiJson<ReceiptBody>,
) -> Result<Json<Value>, ApiError> {
    let store = &*state.store;
    let digest = body.digest;
    let ReceiptBody { token, purchase_id, payload, grant, value, base_version } = body.value;
    let (id, lease) = fence(&principal, &token, &state)?;
    if !grant.is_empty() {
        crate::ops::check(&grant, store.limits()).map_err(grant_error)?;
    }
    if value.is_some() && base_version.is_none() {
        return Err(ApiError::bad_request("a receipt that sends the buyer's value sends its base_version too"));
    }
    let record_doc = receipt_id(&id.store, &purchase_id).map_err(ApiError::bad_request)?;
    let idem = idempotency::from_headers(&headers, &principal, "receipt", "", &digest, store.limits())?;
    if let Some(mut first) = idempotency::replay(store, idem.as_ref()).await? {
        first["party"] = json!(PartyState::of(&get(store, &id).await?));
        return Ok(Json(first));
    }
    let attempted = ReceiptRecord { purchase_id, player: id.clone(), payload };
    if let Some(first) = read_receipt(store, &record_doc).await? {
        return replayed_receipt(store, &first, &attempted, &id).await;
    }
    let record_value = serde_json::to_value(&attempted).map_err(ApiError::internal)?;
    let attempts = if base_version.is_some() { 1 } else { RECEIPT_ATTEMPTS_MAX };
    for _attempt in 0..attempts {
        let (base_value, version) = match (&value, base_version) {
            (Some(sent), Some(base)) => (Some(sent.clone()), base),
            (_, base) => {
                let document = get(store, &id).await?;
                let refused = if !holds(&document, &lease) {
                    Some(fenced_out(&id))
                } else {
                    base.filter(|base| *base != document.version)
                        .map(|base| ApiError::stale(base, CurrentDocument::of(document.clone())))
                };
                if let Some(refused) = refused {
                    // A concurrent duplicate may have granted meanwhile: the record decides.
                    return match read_receipt(store, &record_doc).await? {
                        Some(first) => replayed_receipt(store, &first, &attempted, &id).await,
                        None => Err(refused),
                    };
                }
                (document.value, document.version)
            }
        };
        let next = if grant.is_empty() {
            base_value.unwrap_or(Value::Null)
        } else {
            match crate::ops::apply(base_value.as_ref(), &grant) {
                Ok(next) => next,
                // A duplicate of this purchase may have granted since the record was looked up
                // (its `add_item` is there now): the record decides before a refusal.
                Err(refusal) => {
                    return match read_receipt(store, &record_doc).await? {
                        Some(first) => replayed_receipt(store, &first, &attempted, &id).await,
                        None => Err(grant_error(refusal)),
                    };
                }
            }
        };
        let condition = Condition::All(vec![lease.clone(), Condition::Version(version)]);
        let party = PartyState::new(&id, Some(next.clone()), version.saturating_add(1));
        // The stored answer holds no value (see `idempotency`); a replay reads it fresh.
        let response = json!({ "outcome": "granted" });
        let mut writes = vec![
            Write::put(id.clone(), next).when(condition),
            Write::put(record_doc.clone(), record_value.clone()).when(Condition::Absent),
        ];
        if let Some(idem) = &idem {
            writes.push(idempotency::record_write(idem, &response));
        }
        let Some(outcome) = commit_settling_unknown(store, Commit::new(writes)).await? else { continue };
        match outcome {
            Settled::Committed { .. } => {
                metrics::count(metrics::RECEIPTS, "granted");
                return Ok(Json(json!({ "outcome": "granted", "party": party })));
            }
            Settled::Conflict(conflict) if idempotency::lost_the_race(idem.as_ref(), &conflict) => {
                let mut first = idempotency::replay(store, idem.as_ref())
                    .await?
                    .ok_or_else(|| ApiError::internal("idempotency record vanished"))?;
                first["party"] = json!(PartyState::of(&get(store, &id).await?));
                return Ok(Json(first));
            }
            Settled::Conflict(conflict) => {
                // A concurrent or earlier attempt of this purchase may have committed: its
                // record decides, before any conflict is reported.
                if let Some(first) = read_receipt(store, &record_doc).await? {
                    return replayed_receipt(store, &first, &attempted, &id).await;
                }
                match conflict.kind {
                    ConflictKind::LeaseMismatch => return Err(fenced_out(&id)),
                    ConflictKind::VersionMismatch if base_version.is_some() => {
                        let document = get(store, &id).await?;
                        return Err(ApiError::stale(version, CurrentDocument::of(document)));
                    }
                    ConflictKind::VersionMismatch => metrics::count(metrics::CONFLICTS, "receipt_retried"),
                    ConflictKind::Exists => {
                        return Err(ApiError::conflict("not_processed_yet", "the receipt record vanished; retry"));
                    }
                    kind => return Err(ApiError::conflict("conflict", format!("{kind:?} on {}", conflict.id))),
                }
            }
        }
    }
    Err(ApiError::conflict("not_processed_yet", "the buyer kept saving during the grant; retry"))
}
