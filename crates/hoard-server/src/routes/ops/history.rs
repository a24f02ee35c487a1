//! History an operator reads: a diff between two versions, the history of one field, a player's
//! trades and receipts from the logs the engine and `hoard serve` write, and the audit log.
//!
//! Invariant: read only; each answer is bounded (`FIELD_HISTORY_VERSIONS_MAX`, page sizes).

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use hoard::liveops::diff::diff;
use hoard::liveops::{list_audit, receipts_of, trades_of};
use hoard::store::{DocId, Key, Store, VersionQuery};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::routes::{doc_id, path_error, query_error};
use crate::state::AppState;

/// Versions one field-history answer looks through at most (newest first).
pub const FIELD_HISTORY_VERSIONS_MAX: usize = 200;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/ops/stores/{store}/keys/{key}/diff", get(version_diff))
        .route("/v1/ops/stores/{store}/keys/{key}/field", get(field_history))
        .route("/v1/ops/stores/{store}/keys/{key}/trades", get(trades))
        .route("/v1/ops/stores/{store}/keys/{key}/receipts", get(receipts))
        .route("/v1/ops/audit", get(audit_log))
}

/// Which two versions.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffParams {
    pub from: u64,
    /// Absent: the current version.
    pub to: Option<u64>,
}

/// A value of a version, reading the current document for the latest one.
pub async fn value_at(store: &dyn Store, id: &DocId, version: u64) -> Result<Option<Value>, ApiError> {
    match store.get_version(id, version).await? {
        Some(record) => Ok(record.value),
        None => {
            Err(ApiError::not_found(format!("version {version} of {id} is not in history (pruned or never written)")))
        }
    }
}

/// The changes between two versions of a key, by JSON pointer.
#[utoipa::path(get, path = "/v1/ops/stores/{store}/keys/{key}/diff", tag = "liveops", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path), DiffParams),
    responses((status = 200, description = "`changes`: {path, from, to}"), (status = 404, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody)))]
pub async fn version_diff(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<DiffParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_ops_read()?;
    let Path((store, key)) = path.map_err(path_error)?;
    let Query(params) = query.map_err(query_error)?;
    principal.may_read(&store)?;
    let id = doc_id(&store, &key, state.store.limits())?;
    let to = match params.to {
        Some(to) => to,
        None => hoard::store::get(&*state.store, &id).await?.version,
    };
    let from_value = value_at(&*state.store, &id, params.from).await?;
    let to_value = value_at(&*state.store, &id, to).await?;
    Ok(Json(json!({ "from": params.from, "to": to, "changes": diff(from_value.as_ref(), to_value.as_ref()) })))
}

/// Which field.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FieldParams {
    /// A JSON pointer, e.g. `/data/coins`.
    pub path: String,
    /// Versions to look through (at most 200).
    #[serde(default)]
    pub limit: usize,
}

/// When a field changed: each version where its value differs from the version before, with the
/// commit and time (newest first).
#[utoipa::path(get, path = "/v1/ops/stores/{store}/keys/{key}/field", tag = "liveops", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path), FieldParams),
    responses((status = 200, description = "`changes`: {version, written_at_ms, commit_id, value}"),
        (status = 403, body = crate::error::ErrorBody)))]
pub async fn field_history(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<FieldParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_ops_read()?;
    let Path((store, key)) = path.map_err(path_error)?;
    let Query(params) = query.map_err(query_error)?;
    principal.may_read(&store)?;
    if !params.path.starts_with('/') {
        return Err(ApiError::bad_request("path must be a JSON pointer such as /data/coins"));
    }
    let id = doc_id(&store, &key, state.store.limits())?;
    let limit =
        if params.limit == 0 { FIELD_HISTORY_VERSIONS_MAX } else { params.limit.min(FIELD_HISTORY_VERSIONS_MAX) };
    let mut versions = Vec::new();
    let mut before_version = None;
    while versions.len() < limit {
        let page =
            state.store.list_versions(&id, &VersionQuery { before_version, limit: limit - versions.len() }).await?;
        let Some(last) = page.last() else { break };
        before_version = Some(last.version);
        versions.extend(page);
    }
    // Oldest first, so each version is compared with the one before it.
    versions.reverse();
    let mut changes = Vec::new();
    let mut previous: Option<Option<Value>> = None;
    for info in versions {
        let value = state.store.get_version(&id, info.version).await?.and_then(|r| r.value);
        let field = value.as_ref().and_then(|v| v.pointer(&params.path)).cloned();
        if previous.as_ref() != Some(&field) {
            changes.push(json!({
                "version": info.version, "written_at_ms": info.written_at_ms,
                "commit_id": info.commit_id.to_string(), "value": field,
            }));
        }
        previous = Some(field);
    }
    changes.reverse();
    Ok(Json(json!({ "path": params.path, "changes": changes })))
}

/// A page after a cursor.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CursorParams {
    pub after: Option<String>,
    #[serde(default)]
    pub limit: usize,
}

/// A player's trades, from the trade log, with each trade's record.
#[utoipa::path(get, path = "/v1/ops/stores/{store}/keys/{key}/trades", tag = "liveops", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path), CursorParams),
    responses((status = 200, description = "`trades`: {trade_id, record}"), (status = 403, body = crate::error::ErrorBody)))]
pub async fn trades(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<CursorParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_ops_read()?;
    let Path((store, key)) = path.map_err(path_error)?;
    let Query(params) = query.map_err(query_error)?;
    principal.may_read(&store)?;
    principal.may_read(hoard::engine::trade::TRADE_RECORD_STORE)?;
    let id = doc_id(&store, &key, state.store.limits())?;
    let trade_ids = trades_of(&*state.store, &id, params.after.as_deref(), params.limit).await?;
    let mut record_ids = Vec::with_capacity(trade_ids.len());
    for trade_id in &trade_ids {
        record_ids.push(doc_id(hoard::engine::trade::TRADE_RECORD_STORE, trade_id, state.store.limits())?);
    }
    let records = state.store.get_many(&record_ids).await?;
    let trades: Vec<Value> = trade_ids
        .iter()
        .zip(records)
        .map(
            |(trade_id, record)| json!({ "trade_id": trade_id, "record": record.value, "at_ms": record.created_at_ms }),
        )
        .collect();
    Ok(Json(json!({ "trades": trades })))
}

/// A player's purchase receipts (`hoard.receipts` records naming the player).
#[utoipa::path(get, path = "/v1/ops/stores/{store}/keys/{key}/receipts", tag = "liveops", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path), CursorParams),
    responses((status = 200, description = "`receipts`: {key, record}"), (status = 403, body = crate::error::ErrorBody)))]
pub async fn receipts(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<CursorParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_ops_read()?;
    let Path((store, key)) = path.map_err(path_error)?;
    let Query(params) = query.map_err(query_error)?;
    principal.may_read(&store)?;
    principal.may_read(hoard::engine::receipt::RECEIPT_STORE)?;
    let id = doc_id(&store, &key, state.store.limits())?;
    let after = params.after.map(|after| Key::with_limits(after, state.store.limits())).transpose()?;
    let found = receipts_of(&*state.store, &id, after.as_ref(), params.limit).await?;
    let receipts: Vec<Value> = found.into_iter().map(|(key, record)| json!({ "key": key, "record": record })).collect();
    Ok(Json(json!({ "receipts": receipts })))
}

/// The audit log, oldest first: which key did what, when, and the versions before and after.
#[utoipa::path(get, path = "/v1/ops/audit", tag = "liveops", security(("api_key" = [])), params(CursorParams),
    responses((status = 200, description = "`entries` and `next_after`"), (status = 403, body = crate::error::ErrorBody)))]
pub async fn audit_log(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    query: Result<Query<CursorParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_ops_read()?;
    principal.may_read(hoard::liveops::AUDIT_STORE)?;
    let Query(params) = query.map_err(query_error)?;
    let after = params.after.map(|after| Key::with_limits(after, state.store.limits())).transpose()?;
    let (entries, next_after) = list_audit(&*state.store, after, params.limit).await?;
    let entries: Vec<Value> = entries.into_iter().map(|(id, entry)| json!({ "id": id, "entry": entry })).collect();
    Ok(Json(json!({ "entries": entries, "next_after": next_after })))
}
