//! Lock-free updates: `ops` applied to a key's latest value by compare-and-set, retried on a
//! version conflict (guild banks, auction houses, global counters).
//!
//! Invariant: an update never lands under a live session: without a token it is conditional on
//! `LeaseFree` as well as the version read, and with a token it is fenced by it, so a player's
//! session can never overwrite (or be overwritten by) a lock-free update.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use hoard::store::{Commit, CommitOutcome, Condition, ConflictKind, DocId, Store, Write};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{doc_id, path_error};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::ops::{Op, OpError, apply, check};
use crate::state::AppState;
use crate::wire::SessionToken;
use crate::{idempotency, metrics};

/// Compare-and-set attempts of one update before it gives up (409 `contended`).
pub const UPDATE_ATTEMPTS_MAX: usize = 32;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/stores/{store}/keys/{key}/update", post(update))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    pub ops: Vec<Op>,
    /// Update a key held by this session instead (fenced by the token).
    pub token: Option<SessionToken>,
}

/// The first answer of a replayed update: the version it made, with that version's value read
/// back from history (every version is kept at least a day; past that, the current one).
async fn replayed_update(store: &dyn Store, id: &DocId, mut first: Value) -> Result<Value, ApiError> {
    let version = first["version"].as_u64().ok_or_else(|| ApiError::internal("an update record without a version"))?;
    let value = match store.get_version(id, version).await? {
        Some(record) => record.value,
        None => {
            let current = hoard::store::get(store, id).await?;
            first["version"] = json!(current.version);
            current.value
        }
    };
    first["value"] = value.unwrap_or(Value::Null);
    Ok(first)
}

/// Applies operations to the key's latest value, atomically, retrying on concurrent changes.
/// Takes an `Idempotency-Key` header.
#[utoipa::path(post, path = "/v1/stores/{store}/keys/{key}/update", tag = "updates", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = UpdateBody,
    responses((status = 200, description = "the new version and value"),
        (status = 409, body = ErrorBody, description = "precondition_failed, held, fenced_out or contended"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: ApiJson<UpdateBody>,
) -> Result<Json<Value>, ApiError> {
    let Path((store_name, key)) = path.map_err(path_error)?;
    principal.may_play(&store_name)?;
    let store = &*state.store;
    let id = doc_id(&store_name, &key, store.limits())?;
    let UpdateBody { ops, token } = body.value;
    check(&ops, store.limits()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fence = match &token {
        Some(token) => {
            let (token_id, fence) = super::sessions::fence(&principal, token, &state)?;
            if token_id != id {
                return Err(ApiError::bad_request("the token is for another key"));
            }
            Some(fence)
        }
        None => None,
    };
    let idem =
        idempotency::from_headers(&headers, &principal, "update", &id.to_string(), &body.digest, store.limits())?;
    if let Some(first) = idempotency::replay(store, idem.as_ref()).await? {
        return replayed_update(store, &id, first).await.map(Json);
    }
    for _attempt in 0..UPDATE_ATTEMPTS_MAX {
        let document = hoard::store::get(store, &id).await?;
        let next = apply(document.value.as_ref(), &ops).map_err(|error| match error {
            OpError::Invalid(reason) => ApiError::bad_request(reason),
            precondition @ OpError::Precondition { .. } => {
                metrics::count(metrics::UPDATES, "precondition_failed");
                ApiError::conflict("precondition_failed", precondition.to_string())
            }
        })?;
        let version = Condition::Version(document.version);
        let condition = match &fence {
            Some(fence) => Condition::All(vec![fence.clone(), version]),
            None => Condition::All(vec![version, Condition::LeaseFree]),
        };
        let version = document.version + 1;
        let response = json!({ "version": version, "value": next });
        let mut writes = vec![Write::put(id.clone(), next).when(condition)];
        if let Some(idem) = &idem {
            // The record holds no value (see `idempotency`): a replay reads that version back.
            writes.push(idempotency::record_write(idem, &json!({ "version": version })));
        }
        match store.commit(Commit::new(writes)).await? {
            CommitOutcome::Committed { .. } => {
                metrics::count(metrics::UPDATES, "applied");
                return Ok(Json(response));
            }
            CommitOutcome::Conflict(conflict) if idempotency::lost_the_race(idem.as_ref(), &conflict) => {
                let first = idempotency::replay(store, idem.as_ref())
                    .await?
                    .ok_or_else(|| ApiError::internal("idempotency record vanished"))?;
                return replayed_update(store, &id, first).await.map(Json);
            }
            CommitOutcome::Conflict(conflict) => match conflict.kind {
                ConflictKind::VersionMismatch => metrics::count(metrics::CONFLICTS, "update_retried"),
                ConflictKind::LeaseHeld => {
                    return Err(ApiError::conflict(
                        "held",
                        "a session holds this key; update it through its session token",
                    ));
                }
                ConflictKind::LeaseMismatch => return Err(super::sessions::fenced_out(&id)),
                kind => return Err(ApiError::conflict("conflict", format!("{kind:?} on {}", conflict.id))),
            },
        }
    }
    Err(ApiError::conflict("contended", "the key changed under every attempt; retry later"))
}
