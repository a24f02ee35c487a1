//! Cross-server trades as an operator sees them: one trade by id (`GET /v1/ops/trades/{trade_id}`:
//! its record, deadline, legs with the escrow each still holds, and for each party the holder of
//! its key and whether its profile still marks the trade pending), and the trades with value still
//! in escrow (`GET /v1/ops/trades?stuck=true`), a page at a time. The answers are
//! `hoard::liveops::trades`'s, the same the CLI's `hoard trade show` and `hoard trade stuck` print.
//!
//! Invariant: read only; operator, admin and read-only keys; a key must be allowed to read the
//! trade records, the escrows and every party's store.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use hoard::engine::trade::{TRADE_ESCROW_STORE, TRADE_RECORD_STORE};
use hoard::liveops::trades::{escrowed_trades, trade_view};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::routes::{path_error, query_error};
use crate::state::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/ops/trades", get(stuck_trades)).route("/v1/ops/trades/{trade_id}", get(trade))
}

/// One trade: record, deadline, legs and escrows, parties' holders and pending marks.
#[utoipa::path(get, path = "/v1/ops/trades/{trade_id}", tag = "liveops", security(("api_key" = [])),
    params(("trade_id" = String, Path)),
    responses((status = 200, description = "`trade`: status, cross_server, created_at_ms, deadline_ms, now_ms, past_deadline, \
        prepared, abort_reason, escrows_present, `legs` ({leg, from, to, items, currencies, escrow_id, escrow, escrow_version}) \
        and `parties` ({party, id, prepared, holder, epoch, holder_expires_at_ms, holder_alive, pending, pending_at, version})"),
        (status = 404, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn trade(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_ops_read()?;
    principal.may_read(TRADE_RECORD_STORE)?;
    principal.may_read(TRADE_ESCROW_STORE)?;
    let Path(trade_id) = path.map_err(path_error)?;
    let Some(view) = trade_view(&*state.store, &trade_id).await? else {
        return Err(ApiError::not_found(format!("there is no trade {trade_id:?}")));
    };
    for party in &view.parties {
        principal.may_read(party.id.store.as_str())?;
    }
    Ok(Json(json!({ "trade": view })))
}

/// Which trades to list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StuckParams {
    /// Must be `true`: the trades with an escrow document still present (pending, or decided and
    /// not yet settled by every party). A player's trades are at
    /// `/v1/ops/stores/{store}/keys/{key}/trades`.
    #[serde(default)]
    pub stuck: bool,
    /// The `next_after` of the previous page (a trade id).
    pub after: Option<String>,
    /// Trades per page (0 or absent: 50; at most 100).
    #[serde(default)]
    pub limit: usize,
}

/// The trades with value still in escrow, in escrow key order, a page at a time: each with its
/// status, deadline, whether it is pending past the deadline, and the legs escrowed.
#[utoipa::path(get, path = "/v1/ops/trades", tag = "liveops", security(("api_key" = [])), params(StuckParams),
    responses((status = 200, description = "`trades` ({trade_id, status, deadline_ms, past_deadline, escrowed_legs}), \
        `now_ms` and `next_after`"), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn stuck_trades(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    query: Result<Query<StuckParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_ops_read()?;
    principal.may_read(TRADE_RECORD_STORE)?;
    principal.may_read(TRADE_ESCROW_STORE)?;
    let Query(params) = query.map_err(query_error)?;
    if !params.stuck {
        return Err(ApiError::bad_request(
            "only trades with value in escrow can be listed: pass stuck=true (a player's trades are at /v1/ops/stores/{store}/keys/{key}/trades)",
        ));
    }
    let page = escrowed_trades(&*state.store, params.after.as_deref(), params.limit).await?;
    Ok(Json(serde_json::to_value(page).map_err(ApiError::internal)?))
}
