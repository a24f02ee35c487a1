//! Erasure by user id (admin) and the tombstones it leaves.
//!
//! Invariant: only admin keys erase; the tombstone and an audit entry are written after the
//! data is gone, and neither holds any of it (`hoard::liveops::erase`).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use hoard::liveops::erase::{erase_user, list_tombstones};
use hoard::store::Key;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::audit;
use super::history::CursorParams;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::routes::query_error;
use crate::state::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/ops/erase", post(erase)).route("/v1/ops/erasures", get(erasures))
}

/// An erasure request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseBody {
    /// The platform user id every erased key carries in its `user_ids`.
    pub user_id: String,
    /// Why (kept in the tombstone and the audit log).
    #[serde(default)]
    pub reason: String,
}

/// Erases every key carrying a user id, with its history, index entries, trade log entries and
/// the payloads of its trade records and receipts (admin); answers the tombstone.
#[utoipa::path(post, path = "/v1/ops/erase", tag = "liveops", security(("api_key" = [])), request_body = EraseBody,
    responses((status = 200, description = "the tombstone"), (status = 403, body = crate::error::ErrorBody)))]
pub async fn erase(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<EraseBody>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let EraseBody { user_id, reason } = body.value;
    let tombstone = erase_user(&*state.store, &user_id, &principal.name, &reason).await?;
    let detail = format!("erasure {}: {} documents", tombstone.erasure_id, tombstone.documents_erased);
    audit(&state, &principal, "erase", None, (None, None), detail).await;
    Ok(Json(serde_json::to_value(tombstone).map_err(ApiError::internal)?))
}

/// The erasure tombstones, oldest first.
#[utoipa::path(get, path = "/v1/ops/erasures", tag = "liveops", security(("api_key" = [])), params(CursorParams),
    responses((status = 200, description = "`tombstones` and `next_after`"), (status = 403, body = crate::error::ErrorBody)))]
pub async fn erasures(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    query: Result<Query<CursorParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_ops_read()?;
    let Query(params) = query.map_err(query_error)?;
    let after = params.after.map(|after| Key::with_limits(after, state.store.limits())).transpose()?;
    let (tombstones, next_after) = list_tombstones(&*state.store, after, params.limit).await?;
    let tombstones: Vec<Value> = tombstones.into_iter().map(|(_, t)| json!(t)).collect();
    Ok(Json(json!({ "tombstones": tombstones, "next_after": next_after })))
}
