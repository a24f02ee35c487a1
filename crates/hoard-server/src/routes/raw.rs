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

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

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

#[derive(Debug, Serialize, Deserialize)]
pub struct GetManyBody {
    pub ids: Vec<DocId>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ListBody {
    pub store: StoreName,
    #[serde(default)]
    pub prefix: String,
    pub after: Option<Key>,
    #[serde(default)]
    pub limit: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VersionsBody {
    pub id: DocId,
    pub before_version: Option<u64>,
    #[serde(default)]
    pub limit: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VersionBody {
    pub id: DocId,
    pub version: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RenewBody {
    pub holder: HolderId,
    pub ttl_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HolderBody {
    pub holder: HolderId,
}

/// The first WebSocket message of `/v1/store/subscribe`: sent once the server subscribed, so a
/// notification sent after the client saw it is delivered.
pub const SUBSCRIBED_HELLO: &str = "{\"subscribed\":true}";

/// The backend name and limits, so the client enforces the same limits before sending.
pub async fn info(State(state): State<Arc<AppState>>, principal: Principal) -> Result<Json<Value>, ApiError> {
    principal.require_engine()?;
    Ok(Json(json!({ "backend": state.store.backend_name(), "limits": state.store.limits() })))
}

pub async fn now(State(state): State<Arc<AppState>>, principal: Principal) -> Result<Json<Value>, ApiError> {
    principal.require_engine()?;
    Ok(Json(json!({ "now_ms": state.store.now_ms().await? })))
}

pub async fn commit(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<Commit>,
) -> Result<Json<Value>, ApiError> {
    principal.may_use_raw(body.value.writes.iter().map(|write| write.id.store.as_str()), true)?;
    let outcome = state.store.commit(body.value).await?;
    Ok(Json(serde_json::to_value(outcome).map_err(ApiError::internal)?))
}

pub async fn get_many(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<GetManyBody>,
) -> Result<Json<Value>, ApiError> {
    principal.may_use_raw(body.value.ids.iter().map(|id| id.store.as_str()), false)?;
    let documents = state.store.get_many(&body.value.ids).await?;
    Ok(Json(serde_json::to_value(documents).map_err(ApiError::internal)?))
}

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

pub async fn version(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<VersionBody>,
) -> Result<Json<Value>, ApiError> {
    principal.may_use_raw([body.value.id.store.as_str()], false)?;
    let record = state.store.get_version(&body.value.id, body.value.version).await?;
    Ok(Json(serde_json::to_value(record).map_err(ApiError::internal)?))
}

pub async fn prune(State(state): State<Arc<AppState>>, principal: Principal) -> Result<Json<Value>, ApiError> {
    principal.require_engine()?;
    Ok(Json(json!({ "pruned": state.store.prune_history().await? })))
}

pub async fn renew_holder(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<RenewBody>,
) -> Result<Json<Value>, ApiError> {
    principal.require_engine()?;
    let lease = state.store.renew_holder(&body.value.holder, body.value.ttl_ms).await?;
    Ok(Json(serde_json::to_value(lease).map_err(ApiError::internal)?))
}

pub async fn release_holder(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<HolderBody>,
) -> Result<Json<Value>, ApiError> {
    principal.require_engine()?;
    state.store.release_holder(&body.value.holder).await?;
    Ok(Json(json!({})))
}

pub async fn read_holder(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<HolderBody>,
) -> Result<Json<Value>, ApiError> {
    principal.require_engine()?;
    let lease = state.store.holder_lease(&body.value.holder).await?;
    Ok(Json(serde_json::to_value(lease).map_err(ApiError::internal)?))
}

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
