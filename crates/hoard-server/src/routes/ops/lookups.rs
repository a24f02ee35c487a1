//! Lookups: keys by platform user id, the session holder of a key, which profiles hold item X,
//! leaderboards (top-N, rank, count) from declared indexes, and the declarations themselves.
//!
//! Invariant: every answer is a page bounded by `hoard::store::index::INDEX_PAGE_ENTRIES_MAX`
//! with the cursor for the next one; declaring or dropping an index is a repair (audited).

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{delete, get};
use axum::{Json, Router};
use hoard::store::index::{IndexDecl, IndexKind};
use hoard::store::operator::RankCursor;
use hoard::store::{DocId, Key};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::{audit, operator};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::routes::{doc_id, path_error, query_error, store_name};
use crate::state::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/ops/users/{user_id}/keys", get(keys_by_user_id))
        .route("/v1/ops/stores/{store}/keys/{key}/holder", get(holder))
        .route("/v1/ops/stores/{store}/indexes", get(list_indexes).post(declare_index))
        .route("/v1/ops/stores/{store}/indexes/{index}", delete(drop_index))
        .route("/v1/ops/stores/{store}/indexes/{index}/members/{member}", get(members))
        .route("/v1/ops/stores/{store}/indexes/{index}/top", get(top))
        .route("/v1/ops/stores/{store}/indexes/{index}/rank/{key}", get(rank))
        .route("/v1/ops/stores/{store}/indexes/{index}/count", get(count))
}

/// A page cursor of the user-id lookup.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserPageParams {
    /// The `next_after` of the previous page: its store …
    pub after_store: Option<String>,
    /// … and key.
    pub after_key: Option<String>,
    /// Page size (0 or absent: the store's default; at most 1,000).
    #[serde(default)]
    pub limit: usize,
}

/// Every key carrying a platform user id (documents' `user_ids`), in (store, key) order.
#[utoipa::path(get, path = "/v1/ops/users/{user_id}/keys", tag = "liveops", security(("api_key" = [])),
    params(("user_id" = String, Path), UserPageParams),
    responses((status = 200, description = "`ids` ({store, key}) and `next_after`"), (status = 403, body = crate::error::ErrorBody)))]
pub async fn keys_by_user_id(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<UserPageParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_ops_read()?;
    let Path(user_id) = path.map_err(path_error)?;
    let Query(params) = query.map_err(query_error)?;
    hoard::liveops::erase::check_user_id(&user_id)?;
    let after = match (params.after_store, params.after_key) {
        (Some(store), Some(key)) => Some(doc_id(&store, &key, state.store.limits())?),
        (None, None) => None,
        _ => return Err(ApiError::bad_request("give both after_store and after_key, or neither")),
    };
    let page = operator(&state)?.keys_by_user_id(&user_id, after.as_ref(), params.limit).await?;
    let visible: Vec<&DocId> = page.ids.iter().filter(|id| principal.may_read(id.store.as_str()).is_ok()).collect();
    Ok(Json(json!({ "ids": visible, "next_after": page.next_after })))
}

/// Who holds a key's session now: its holder, fencing epoch and the holder's process lease.
#[utoipa::path(get, path = "/v1/ops/stores/{store}/keys/{key}/holder", tag = "liveops", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path)),
    responses((status = 200, description = "`holder` (or null), `epoch`, `expires_at_ms`, `alive`"), (status = 403, body = crate::error::ErrorBody)))]
pub async fn holder(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_ops_read()?;
    let Path((store, key)) = path.map_err(path_error)?;
    principal.may_read(&store)?;
    let id = doc_id(&store, &key, state.store.limits())?;
    let document = hoard::store::get(&*state.store, &id).await?;
    let Some(holder) = document.lease.holder else {
        return Ok(Json(
            json!({ "holder": null, "epoch": document.lease.epoch, "expires_at_ms": null, "alive": false }),
        ));
    };
    let lease = state.store.holder_lease(&holder).await?;
    let now_ms = state.store.now_ms().await?;
    let expires_at_ms = lease.map(|lease| lease.expires_at_ms);
    Ok(Json(json!({
        "holder": holder, "epoch": document.lease.epoch, "expires_at_ms": expires_at_ms,
        "alive": expires_at_ms.is_some_and(|at| at > now_ms),
    })))
}

/// An index to declare.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexBody {
    /// `[a-z0-9_]`, at most 64 bytes.
    pub name: String,
    /// `number` (top-N, rank, count), `members` (strings and numbers reached) or `keys` (object keys).
    pub kind: String,
    /// A JSON pointer, `*` for every element: `/data/stats/level`, `/data/items`.
    pub path: String,
}

fn index_json(decl: &IndexDecl) -> Value {
    json!({ "name": decl.name, "kind": decl.kind.as_str(), "path": decl.path })
}

/// The indexes declared on a store.
#[utoipa::path(get, path = "/v1/ops/stores/{store}/indexes", tag = "liveops", security(("api_key" = [])),
    params(("store" = String, Path)), responses((status = 200, description = "`indexes`"), (status = 403, body = crate::error::ErrorBody)))]
pub async fn list_indexes(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_ops_read()?;
    let Path(store) = path.map_err(path_error)?;
    principal.may_read(&store)?;
    let store = store_name(&store, state.store.limits())?;
    let decls = operator(&state)?.list_indexes(&store).await?;
    Ok(Json(json!({ "indexes": decls.iter().map(index_json).collect::<Vec<_>>() })))
}

/// Declares an index (operator) and fills it from every document of the store; saves maintain
/// it from then on in their own commit. At most 16 per store.
#[utoipa::path(post, path = "/v1/ops/stores/{store}/indexes", tag = "liveops", security(("api_key" = [])),
    params(("store" = String, Path)), request_body = IndexBody,
    responses((status = 200, description = "`indexed`: documents filled in"), (status = 403, body = crate::error::ErrorBody)))]
pub async fn declare_index(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    body: ApiJson<IndexBody>,
) -> Result<Json<Value>, ApiError> {
    principal.require_repair()?;
    let Path(store) = path.map_err(path_error)?;
    principal.may_administer(&store)?;
    let store = store_name(&store, state.store.limits())?;
    let IndexBody { name, kind, path } = body.value;
    let decl = IndexDecl { store, name, kind: IndexKind::parse(&kind)?, path };
    let indexed = operator(&state)?.declare_index(decl.clone()).await?;
    audit(
        &state,
        &principal,
        "declare_index",
        None,
        (None, None),
        format!("{}: {} {} {}", decl.store, decl.name, kind, decl.path),
    )
    .await;
    Ok(Json(json!({ "indexed": indexed, "index": index_json(&decl) })))
}

/// Drops an index and its entries (operator).
#[utoipa::path(delete, path = "/v1/ops/stores/{store}/indexes/{index}", tag = "liveops", security(("api_key" = [])),
    params(("store" = String, Path), ("index" = String, Path)),
    responses((status = 200, description = "`dropped`"), (status = 403, body = crate::error::ErrorBody)))]
pub async fn drop_index(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_repair()?;
    let Path((store, index)) = path.map_err(path_error)?;
    principal.may_administer(&store)?;
    let store = store_name(&store, state.store.limits())?;
    let dropped = operator(&state)?.drop_index(&store, &index).await?;
    audit(&state, &principal, "drop_index", None, (None, None), format!("{store}: {index}")).await;
    Ok(Json(json!({ "dropped": dropped })))
}

/// A page of keys.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyCursorParams {
    /// The last key of the previous page.
    pub after: Option<String>,
    #[serde(default)]
    pub limit: usize,
}

/// Which profiles of a store hold `member` (an item id) in a members or keys index: the dupe hunt.
#[utoipa::path(get, path = "/v1/ops/stores/{store}/indexes/{index}/members/{member}", tag = "liveops",
    security(("api_key" = [])),
    params(("store" = String, Path), ("index" = String, Path), ("member" = String, Path), KeyCursorParams),
    responses((status = 200, description = "`keys` and `next_after`"), (status = 403, body = crate::error::ErrorBody)))]
pub async fn members(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String, String)>, PathRejection>,
    query: Result<Query<KeyCursorParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_ops_read()?;
    let Path((store, index, member)) = path.map_err(path_error)?;
    let Query(params) = query.map_err(query_error)?;
    principal.may_read(&store)?;
    let limits = state.store.limits();
    let store = store_name(&store, limits)?;
    let after = params.after.map(|key| Key::with_limits(key, limits)).transpose()?;
    let limit = hoard::store::operator::index_page_size(params.limit, limits.page_size_default);
    let keys = operator(&state)?.keys_by_member(&store, &index, &member, after.as_ref(), limit).await?;
    let next_after = (keys.len() == limit).then(|| keys.last().cloned()).flatten();
    Ok(Json(json!({ "keys": keys, "next_after": next_after })))
}

/// A top-N page cursor.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TopParams {
    /// The last entry of the previous page: its value …
    pub after_value: Option<f64>,
    /// … and key.
    pub after_key: Option<String>,
    #[serde(default)]
    pub limit: usize,
}

/// The highest values of a number index, descending, ties by key (leaderboards).
#[utoipa::path(get, path = "/v1/ops/stores/{store}/indexes/{index}/top", tag = "liveops", security(("api_key" = [])),
    params(("store" = String, Path), ("index" = String, Path), TopParams),
    responses((status = 200, description = "`entries` ({key, value})"), (status = 403, body = crate::error::ErrorBody)))]
pub async fn top(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<TopParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_ops_read()?;
    let Path((store, index)) = path.map_err(path_error)?;
    let Query(params) = query.map_err(query_error)?;
    principal.may_read(&store)?;
    let limits = state.store.limits();
    let store = store_name(&store, limits)?;
    let cursor = match (params.after_value, params.after_key) {
        (Some(value), Some(key)) => Some(RankCursor { value, key: Key::with_limits(key, limits)? }),
        (None, None) => None,
        _ => return Err(ApiError::bad_request("give both after_value and after_key, or neither")),
    };
    let entries = operator(&state)?.index_top(&store, &index, cursor.as_ref(), params.limit).await?;
    Ok(Json(json!({ "entries": entries })))
}

/// A key's rank in a number index (1: the highest).
#[utoipa::path(get, path = "/v1/ops/stores/{store}/indexes/{index}/rank/{key}", tag = "liveops", security(("api_key" = [])),
    params(("store" = String, Path), ("index" = String, Path), ("key" = String, Path)),
    responses((status = 200, description = "`rank` and `value`, or null"), (status = 403, body = crate::error::ErrorBody)))]
pub async fn rank(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_ops_read()?;
    let Path((store, index, key)) = path.map_err(path_error)?;
    principal.may_read(&store)?;
    let id = doc_id(&store, &key, state.store.limits())?;
    let rank = operator(&state)?.index_rank(&id.store, &index, &id.key).await?;
    Ok(Json(json!({ "rank": rank })))
}

/// A count range.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CountParams {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// How many entries of a number index lie in `[min, max]`.
#[utoipa::path(get, path = "/v1/ops/stores/{store}/indexes/{index}/count", tag = "liveops", security(("api_key" = [])),
    params(("store" = String, Path), ("index" = String, Path), CountParams),
    responses((status = 200, description = "`count`"), (status = 403, body = crate::error::ErrorBody)))]
pub async fn count(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<CountParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_ops_read()?;
    let Path((store, index)) = path.map_err(path_error)?;
    let Query(params) = query.map_err(query_error)?;
    principal.may_read(&store)?;
    let store = store_name(&store, state.store.limits())?;
    let count = operator(&state)?.index_count(&store, &index, params.min, params.max).await?;
    Ok(Json(json!({ "count": count })))
}
