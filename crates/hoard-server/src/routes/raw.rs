//! The raw store protocol under `/v1/store/*`: every `Store` method as one route, so
//! `RemoteStore` can run the full engine (and the conformance suite) against this service.
//!
//! Invariant: each route calls exactly one store method with the decoded arguments and returns
//! its answer as JSON (after the caller's scope is checked: `engine` or `admin`, and never a
//! write to the runtime API keys' stores); conflicts are 200 answers (`CommitOutcome::Conflict`), never errors, and
//! store errors keep their kind (`invalid_input`, `store_unavailable`, `outcome_unknown`) so the
//! client can map them back to the same `StoreError`.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use hoard::store::{Commit, DocId, HolderId, Key, ListQuery, Notification, StoreName, VersionQuery};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;
use crate::wire::store as S;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/store/info", get(info))
        .route("/v1/store/now", get(now))
        .route("/v1/store/commit", post(commit))
        .route("/v1/store/get_many", post(get_many))
        .route("/v1/store/list", post(list))
        .route("/v1/store/versions", post(versions))
        .route("/v1/store/version", post(version))
        .route("/v1/store/prune", post(prune))
        .route("/v1/store/holders/renew", post(renew_holder))
        .route("/v1/store/holders/release", post(release_holder))
        .route("/v1/store/holders/read", post(read_holder))
        .route("/v1/store/notify", post(notify))
        .route("/v1/store/subscribe", get(subscribe))
}

/// Body of `POST /v1/store/get_many`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GetManyBody {
    #[schema(value_type = Vec<S::DocId>)]
    pub ids: Vec<DocId>,
}

/// Body of `POST /v1/store/list`: keys holding a value, in byte order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ListBody {
    #[schema(value_type = String)]
    pub store: StoreName,
    #[serde(default)]
    pub prefix: String,
    #[schema(value_type = Option<String>)]
    pub after: Option<Key>,
    /// 0: the store's default page size.
    #[serde(default)]
    pub limit: usize,
}

/// Body of `POST /v1/store/versions`: a key's history, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionsBody {
    #[schema(value_type = S::DocId)]
    pub id: DocId,
    pub before_version: Option<u64>,
    #[serde(default)]
    pub limit: usize,
}

/// Body of `POST /v1/store/version`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionBody {
    #[schema(value_type = S::DocId)]
    pub id: DocId,
    pub version: u64,
}

/// Body of `POST /v1/store/holders/renew`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RenewBody {
    #[schema(value_type = String)]
    pub holder: HolderId,
    pub ttl_ms: u64,
}

/// Body of `POST /v1/store/holders/release` and `/read`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HolderBody {
    #[schema(value_type = String)]
    pub holder: HolderId,
}

/// The first WebSocket message of `/v1/store/subscribe`: sent once the server subscribed, so a
/// notification sent after the client saw it is delivered.
pub const SUBSCRIBED_HELLO: &str = "{\"subscribed\":true}";

/// The backend name and limits, so the client enforces the same limits before sending.
#[utoipa::path(get, path = "/v1/store/info", tag = "store", operation_id = "store_info", security(("api_key" = [])),
    responses((status = 200, body = S::StoreInfo), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 503, description = "store unavailable, shutting down, or (commit) outcome unknown", body = crate::error::ErrorBody)))]
pub async fn info(State(state): State<Arc<AppState>>, principal: Principal) -> Result<Json<Value>, ApiError> {
    principal.require_engine()?;
    Ok(Json(json!({ "backend": state.store.backend_name(), "limits": state.store.limits() })))
}

/// The store's clock (`Store::now_ms`): the only clock that judges leases.
#[utoipa::path(get, path = "/v1/store/now", tag = "store", operation_id = "store_now", security(("api_key" = [])),
    responses((status = 200, body = S::StoreNow), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 503, description = "store unavailable, shutting down, or (commit) outcome unknown", body = crate::error::ErrorBody)))]
pub async fn now(State(state): State<Arc<AppState>>, principal: Principal) -> Result<Json<Value>, ApiError> {
    principal.require_engine()?;
    Ok(Json(json!({ "now_ms": state.store.now_ms().await? })))
}

/// `Store::commit`: a conflict is a 200 answer (`{"Conflict": …}`), never an error.
#[utoipa::path(post, path = "/v1/store/commit", tag = "store", operation_id = "store_commit", security(("api_key" = [])), request_body = S::Commit,
    responses((status = 200, body = S::CommitOutcome), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 503, description = "store unavailable, shutting down, or (commit) outcome unknown", body = crate::error::ErrorBody)))]
pub async fn commit(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<Commit>,
) -> Result<Json<Value>, ApiError> {
    principal.may_use_raw(body.value.writes.iter().map(|write| write.id.store.as_str()), true)?;
    let outcome = state.store.commit(body.value).await?;
    Ok(Json(serde_json::to_value(outcome).map_err(ApiError::internal)?))
}

/// `Store::get_many`: one document per id, in order (absent keys read as version 0).
#[utoipa::path(post, path = "/v1/store/get_many", tag = "store", operation_id = "store_get_many", security(("api_key" = [])), request_body = GetManyBody,
    responses((status = 200, body = [S::Document]), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 503, description = "store unavailable, shutting down, or (commit) outcome unknown", body = crate::error::ErrorBody)))]
pub async fn get_many(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<GetManyBody>,
) -> Result<Json<Value>, ApiError> {
    principal.may_use_raw(body.value.ids.iter().map(|id| id.store.as_str()), false)?;
    let documents = state.store.get_many(&body.value.ids).await?;
    Ok(Json(serde_json::to_value(documents).map_err(ApiError::internal)?))
}

/// `Store::list_keys`.
#[utoipa::path(post, path = "/v1/store/list", tag = "store", operation_id = "store_list", security(("api_key" = [])), request_body = ListBody,
    responses((status = 200, body = S::KeyPage), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 503, description = "store unavailable, shutting down, or (commit) outcome unknown", body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<ListBody>,
) -> Result<Json<Value>, ApiError> {
    principal.may_use_raw([body.value.store.as_str()], false)?;
    let ListBody { store, prefix, after, limit } = body.value;
    let page = state.store.list_keys(&store, &ListQuery { prefix, after, limit }).await?;
    Ok(Json(serde_json::to_value(page).map_err(ApiError::internal)?))
}

/// `Store::list_versions`, newest first.
#[utoipa::path(post, path = "/v1/store/versions", tag = "store", operation_id = "store_versions", security(("api_key" = [])), request_body = VersionsBody,
    responses((status = 200, body = [S::VersionInfo]), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 503, description = "store unavailable, shutting down, or (commit) outcome unknown", body = crate::error::ErrorBody)))]
pub async fn versions(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<VersionsBody>,
) -> Result<Json<Value>, ApiError> {
    principal.may_use_raw([body.value.id.store.as_str()], false)?;
    let VersionsBody { id, before_version, limit } = body.value;
    let versions = state.store.list_versions(&id, &VersionQuery { before_version, limit }).await?;
    Ok(Json(serde_json::to_value(versions).map_err(ApiError::internal)?))
}

/// `Store::get_version`: `null` when the version is not in history.
#[utoipa::path(post, path = "/v1/store/version", tag = "store", operation_id = "store_version", security(("api_key" = [])), request_body = VersionBody,
    responses((status = 200, body = Option<S::VersionRecord>), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 503, description = "store unavailable, shutting down, or (commit) outcome unknown", body = crate::error::ErrorBody)))]
pub async fn version(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<VersionBody>,
) -> Result<Json<Value>, ApiError> {
    principal.may_use_raw([body.value.id.store.as_str()], false)?;
    let record = state.store.get_version(&body.value.id, body.value.version).await?;
    Ok(Json(serde_json::to_value(record).map_err(ApiError::internal)?))
}

/// `Store::prune_history`: removes history past retention. Takes no body.
#[utoipa::path(post, path = "/v1/store/prune", tag = "store", operation_id = "store_prune", security(("api_key" = [])),
    responses((status = 200, body = S::Pruned), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 503, description = "store unavailable, shutting down, or (commit) outcome unknown", body = crate::error::ErrorBody)))]
pub async fn prune(State(state): State<Arc<AppState>>, principal: Principal) -> Result<Json<Value>, ApiError> {
    principal.require_engine()?;
    Ok(Json(json!({ "pruned": state.store.prune_history().await? })))
}

/// `Store::renew_holder`: a holder's process lease.
#[utoipa::path(post, path = "/v1/store/holders/renew", tag = "store", operation_id = "store_renew_holder", security(("api_key" = [])), request_body = RenewBody,
    responses((status = 200, body = S::HolderLease), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 503, description = "store unavailable, shutting down, or (commit) outcome unknown", body = crate::error::ErrorBody)))]
pub async fn renew_holder(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<RenewBody>,
) -> Result<Json<Value>, ApiError> {
    principal.require_engine()?;
    let lease = state.store.renew_holder(&body.value.holder, body.value.ttl_ms).await?;
    Ok(Json(serde_json::to_value(lease).map_err(ApiError::internal)?))
}

/// `Store::release_holder`.
#[utoipa::path(post, path = "/v1/store/holders/release", tag = "store", operation_id = "store_release_holder", security(("api_key" = [])), request_body = HolderBody,
    responses((status = 200, body = S::Empty), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 503, description = "store unavailable, shutting down, or (commit) outcome unknown", body = crate::error::ErrorBody)))]
pub async fn release_holder(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<HolderBody>,
) -> Result<Json<Value>, ApiError> {
    principal.require_engine()?;
    state.store.release_holder(&body.value.holder).await?;
    Ok(Json(json!({})))
}

/// `Store::holder_lease`: `null` when the holder has no lease.
#[utoipa::path(post, path = "/v1/store/holders/read", tag = "store", operation_id = "store_read_holder", security(("api_key" = [])), request_body = HolderBody,
    responses((status = 200, body = Option<S::HolderLease>), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 503, description = "store unavailable, shutting down, or (commit) outcome unknown", body = crate::error::ErrorBody)))]
pub async fn read_holder(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<HolderBody>,
) -> Result<Json<Value>, ApiError> {
    principal.require_engine()?;
    let lease = state.store.holder_lease(&body.value.holder).await?;
    Ok(Json(serde_json::to_value(lease).map_err(ApiError::internal)?))
}

/// `Store::notify`: a best-effort wake-up to every subscriber.
#[utoipa::path(post, path = "/v1/store/notify", tag = "store", operation_id = "store_notify", security(("api_key" = [])), request_body = S::Notification,
    responses((status = 200, body = S::Empty), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 503, description = "store unavailable, shutting down, or (commit) outcome unknown", body = crate::error::ErrorBody)))]
pub async fn notify(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<Notification>,
) -> Result<Json<Value>, ApiError> {
    principal.require_engine()?;
    state.store.notify(body.value).await?;
    Ok(Json(json!({})))
}

/// Streams every notification of the store as JSON text messages (after `SUBSCRIBED_HELLO`).
/// `Store::subscribe` over a WebSocket: the first text message is `{"subscribed":true}`, then
/// one `Notification` as JSON per message. Lossy by contract: a slow client skips some.
#[utoipa::path(get, path = "/v1/store/subscribe", tag = "store", operation_id = "store_subscribe", security(("api_key" = [])),
    responses((status = 101, description = "WebSocket of notifications (JSON `Notification` per text message)"),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn subscribe(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    principal.require_engine()?;
    Ok(upgrade.on_upgrade(move |socket| forward_all(state, socket)))
}

async fn forward_all(state: Arc<AppState>, mut socket: WebSocket) {
    // Subscribe before the hello, so anything sent after the client read it reaches it.
    let mut notifications = state.store.subscribe();
    let mut closing = state.closing.subscribe();
    if socket.send(Message::Text(SUBSCRIBED_HELLO.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            received = notifications.recv() => match received {
                Ok(notification) => {
                    let Ok(text) = serde_json::to_string(&notification) else { continue };
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                // Lossy by contract: a slow client skips notifications.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = closing.changed() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
    }
}
