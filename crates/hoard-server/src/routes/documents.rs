//! Key reads, listing and versions for any key holder with read rights; rollback and
//! force-release for admins.
//!
//! Invariant: the admin writes keep the library's rules: a rollback is refused while a session
//! holds the key unless forced, and forcing (like a force-release) fences the holder out for
//! good before anything is written, so the holder's next save fails instead of overwriting it.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use hoard::store::{
    CommitOutcome, Condition, ConflictKind, Key, ListQuery, VersionQuery, force_release, restore_version,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{doc_id, path_error, query_error, store_name};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;
use crate::wire::{DocumentSchema, ListParams, VersionParams};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/stores/{store}/keys", get(list_keys))
        .route("/v1/stores/{store}/keys/{key}", get(read_key))
        .route("/v1/stores/{store}/keys/{key}/versions", get(list_versions))
        .route("/v1/stores/{store}/keys/{key}/versions/{version}", get(read_version))
        .route("/v1/stores/{store}/keys/{key}/rollback", post(rollback))
        .route("/v1/stores/{store}/keys/{key}/release", post(release))
        .merge(super::quarantine::routes())
}

/// A page of keys.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyPageBody {
    pub keys: Vec<String>,
    pub next_after: Option<String>,
}

/// Lists keys holding a value, in byte order, a page at a time.
#[utoipa::path(get, path = "/v1/stores/{store}/keys", tag = "documents", security(("api_key" = [])),
    params(("store" = String, Path), ListParams),
    responses((status = 200, body = KeyPageBody), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn list_keys(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<KeyPageBody>, ApiError> {
    let Path(store) = path.map_err(path_error)?;
    let Query(params) = query.map_err(query_error)?;
    principal.may_read(&store)?;
    let limits = state.store.limits();
    let store = store_name(&store, limits)?;
    let after = params
        .after
        .map(|after| Key::with_limits(after, limits))
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("after: {e}")))?;
    let query = ListQuery { prefix: params.prefix, after, limit: params.limit };
    let page = state.store.list_keys(&store, &query).await?;
    Ok(Json(KeyPageBody {
        keys: page.keys.into_iter().map(String::from).collect(),
        next_after: page.next_after.map(String::from),
    }))
}

/// Reads a key's document: value, version, times, attributes, user ids, lease and inbox.
#[utoipa::path(get, path = "/v1/stores/{store}/keys/{key}", tag = "documents", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = DocumentSchema), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn read_key(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((store, key)) = path.map_err(path_error)?;
    principal.may_read(&store)?;
    let id = doc_id(&store, &key, state.store.limits())?;
    let document = hoard::store::get(&*state.store, &id).await?;
    Ok(Json(serde_json::to_value(document).map_err(ApiError::internal)?))
}

/// Lists a key's versions, newest first.
#[utoipa::path(get, path = "/v1/stores/{store}/keys/{key}/versions", tag = "documents", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path), VersionParams),
    responses((status = 200, description = "versions, newest first"), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn list_versions(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<VersionParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((store, key)) = path.map_err(path_error)?;
    let Query(params) = query.map_err(query_error)?;
    principal.may_read(&store)?;
    let id = doc_id(&store, &key, state.store.limits())?;
    let versions =
        state.store.list_versions(&id, &VersionQuery { before_version: params.before, limit: params.limit }).await?;
    Ok(Json(json!({ "versions": versions })))
}

/// Reads one past (or the current) version.
#[utoipa::path(get, path = "/v1/stores/{store}/keys/{key}/versions/{version}", tag = "documents",
    security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path), ("version" = u64, Path)),
    responses((status = 200, description = "the version's value, attributes and user ids"),
        (status = 404, body = crate::error::ErrorBody), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn read_version(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String, u64)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((store, key, version)) = path.map_err(path_error)?;
    principal.may_read(&store)?;
    let id = doc_id(&store, &key, state.store.limits())?;
    match state.store.get_version(&id, version).await? {
        Some(record) => Ok(Json(serde_json::to_value(record).map_err(ApiError::internal)?)),
        None => {
            Err(ApiError::not_found(format!("version {version} of {id} is not in history (pruned or never written)")))
        }
    }
}

/// Body of a rollback.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// The past version to write again as the key's new version.
    pub version: u64,
    /// Take the key from a session holding it first (as `POST .../release` does): its holder is
    /// fenced out and can never overwrite the rollback. Without it a held key is refused (409).
    #[serde(default)]
    pub force: bool,
}

/// Rolls a key back (admin): writes a past version as a new version. Refused while a session
/// holds the key, unless `force`, which first fences the holder out (as the library's
/// `Engine::rollback` with force).
#[utoipa::path(post, path = "/v1/stores/{store}/keys/{key}/rollback", tag = "admin", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path)), request_body = RollbackBody,
    responses((status = 200, description = "the new version"), (status = 409, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody)))]
pub async fn rollback(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
    body: ApiJson<RollbackBody>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let Path((store, key)) = path.map_err(path_error)?;
    principal.may_administer(&store)?;
    let id = doc_id(&store, &key, state.store.limits())?;
    let RollbackBody { version, force } = body.value;
    if state.store.get_version(&id, version).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "version {version} of {id} is not in history (pruned or never written)"
        )));
    }
    let released = if force { fence_out_holder(&state, &id).await? } else { false };
    match restore_version(&*state.store, &id, version, Condition::LeaseFree).await? {
        CommitOutcome::Committed { applied, commit_id, .. } => Ok(Json(json!({
            "restored_from": version,
            "version": applied.first().map(|a| a.version),
            "commit_id": commit_id.to_string(),
            "released": released,
        }))),
        // Forced: a session took the key again between the release and the rollback.
        CommitOutcome::Conflict(conflict) if conflict.kind == ConflictKind::LeaseHeld && force => {
            Err(ApiError::conflict("held", "a session took the key again while rolling back; run the rollback again"))
        }
        CommitOutcome::Conflict(conflict) if conflict.kind == ConflictKind::LeaseHeld => Err(ApiError::conflict(
            "held",
            "a session holds the key; send `\"force\": true` to fence it out and roll back in one call \
             (or force-release it first: POST .../release)",
        )),
        CommitOutcome::Conflict(conflict) => Err(ApiError::conflict("conflict", format!("{:?}", conflict.kind))),
    }
}

/// Frees a key a session still holds (admin). Its holder is fenced out: it can never write
/// this key again.
#[utoipa::path(post, path = "/v1/stores/{store}/keys/{key}/release", tag = "admin", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path)),
    responses((status = 200, description = "whether a holder was fenced out"), (status = 409, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn release(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let Path((store, key)) = path.map_err(path_error)?;
    principal.may_administer(&store)?;
    let id = doc_id(&store, &key, state.store.limits())?;
    let released = fence_out_holder(&state, &id).await?;
    Ok(Json(json!({ "released": released })))
}

/// Force-releases a key (its holder is fenced out) and tells waiting starters it is free.
/// Returns whether a holder was fenced out.
pub async fn fence_out_holder(state: &AppState, id: &hoard::store::DocId) -> Result<bool, ApiError> {
    match force_release(&*state.store, id).await? {
        Ok(holder) => {
            if holder.is_some() {
                // Best effort: starters waiting on the key also poll, so a lost notification only delays them.
                let _ = state.store.notify(hoard::engine::released_notification(id)).await;
            }
            Ok(holder.is_some())
        }
        Err(_conflict) => {
            Err(ApiError::conflict("changed_hands", "the key changed hands while releasing it; run it again"))
        }
    }
}
