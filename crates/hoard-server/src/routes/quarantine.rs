//! Keys whose stored JSON a reader refuses (`StoreError::Unreadable`: nested past what serde_json
//! reads, written before the depth limit existed, or damaged outside hoard): reported and
//! quarantined instead of failing as 500, readable raw, and repairable by an admin.
//!
//! Invariants:
//! - A request that meets an unreadable key answers 409 `quarantined` naming the key (other keys
//!   of a batch are not failed by it), and the key gets the engine's quarantine record
//!   (`engine::quarantine_write`, in `hoard.quarantine`) once the answer leaves: best effort,
//!   counted and logged when it fails.
//! - The raw read shows the stored text of the field that does not read, never a guess at it.
//! - A repair writes a new version over the key on the lease being free (or after fencing the
//!   holder out, with `force`), as a rollback does; the unreadable value stays in history.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use hoard::engine::quarantine_write;
use hoard::store::{Commit, CommitOutcome, Condition, ConflictKind, StoreError, Write};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::documents::fence_out_holder;
use super::{doc_id, path_error};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody, MetUnreadable};
use crate::extract::ApiJson;
use crate::metrics;
use crate::state::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/stores/{store}/keys/{key}/raw", get(read_raw))
        .route("/v1/stores/{store}/keys/{key}/repair", post(repair))
}

/// Writes the quarantine record of every unreadable key an answer met.
pub async fn record(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if let Some(MetUnreadable(unreadable)) = response.extensions().get::<MetUnreadable>() {
        metrics::count(metrics::QUARANTINED, unreadable.field);
        let reason = format!("the stored {} cannot be read: {}", unreadable.field, unreadable.reason);
        match quarantine_write(&unreadable.id, unreadable.version, &reason, state.store.limits()) {
            Ok(write) => {
                if let Err(error) = state.store.commit(Commit::single(write)).await {
                    metrics::gave_up("writing a quarantine record", &error);
                }
            }
            Err(error) => metrics::gave_up("naming a quarantine record", &error),
        }
    }
    response
}

/// A key as stored, readable or not.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RawDocument {
    /// False when a stored field does not read; then `field`, `version`, `reason`, `raw_text`.
    pub readable: bool,
    /// The document, when it reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub document: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The field's stored JSON text, exactly as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_text: Option<String>,
}

/// Reads a key as stored: its document when it reads, else the stored text of the field that
/// does not (admin), to see what a repair should write.
#[utoipa::path(get, path = "/v1/stores/{store}/keys/{key}/raw", tag = "admin", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = RawDocument), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn read_raw(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<RawDocument>, ApiError> {
    principal.require_admin()?;
    let Path((store, key)) = path.map_err(path_error)?;
    principal.may_read(&store)?;
    let id = doc_id(&store, &key, state.store.limits())?;
    match hoard::store::get(&*state.store, &id).await {
        Ok(document) => Ok(Json(RawDocument {
            readable: true,
            document: Some(serde_json::to_value(document).map_err(ApiError::internal)?),
            field: None,
            version: None,
            reason: None,
            raw_text: None,
        })),
        Err(StoreError::Unreadable(unreadable)) => Ok(Json(RawDocument {
            readable: false,
            document: None,
            field: Some(unreadable.field.to_string()),
            version: Some(unreadable.version),
            reason: Some(unreadable.reason),
            raw_text: Some(unreadable.raw_text.0),
        })),
        Err(error) => Err(error.into()),
    }
}

/// Body of a repair.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepairBody {
    /// The value to store as the key's new version (`null`: delete it, leaving a tombstone).
    #[schema(value_type = Object)]
    pub value: Value,
    /// Fence out a session holding the key first (as a forced rollback does).
    #[serde(default)]
    pub force: bool,
}

/// Repairs a key (admin): writes `value` as its new version without reading the stored one, so
/// a key whose value does not read can be fixed (take the text from `.../raw`, or a readable
/// version from history). Refused while a session holds the key unless `force`.
#[utoipa::path(post, path = "/v1/stores/{store}/keys/{key}/repair", tag = "admin", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path)), request_body = RepairBody,
    responses((status = 200, description = "the new version"), (status = 409, body = ErrorBody, description = "held, or quarantined (another field than the value does not read)"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn repair(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
    body: ApiJson<RepairBody>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let Path((store, key)) = path.map_err(path_error)?;
    principal.may_administer(&store)?;
    let id = doc_id(&store, &key, state.store.limits())?;
    let RepairBody { value, force } = body.value;
    let released = if force { fence_out_holder(&state, &id).await? } else { false };
    let write = if value.is_null() { Write::delete(id.clone()) } else { Write::put(id.clone(), value) };
    match state.store.commit(Commit::single(write.when(Condition::LeaseFree))).await? {
        CommitOutcome::Committed { applied, commit_id, .. } => {
            tracing::info!(key = %id, by = %principal.name, "key repaired");
            Ok(Json(json!({
                "version": applied.first().map(|a| a.version),
                "commit_id": commit_id.to_string(),
                "released": released,
            })))
        }
        CommitOutcome::Conflict(conflict) if conflict.kind == ConflictKind::LeaseHeld => Err(ApiError::conflict(
            "held",
            "a session holds the key; send `\"force\": true` to fence it out and repair in one call",
        )),
        CommitOutcome::Conflict(conflict) => Err(ApiError::conflict("conflict", format!("{:?}", conflict.kind))),
    }
}
