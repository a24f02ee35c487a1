//! Holders and sessions for game servers in any language: register a holder (one per game-server
//! process, with a process lease to renew), start a session (acquire the key with the wait /
//! steal / fail policy), save, end, read, commit several sessions at once, and the handoff
//! requests a holder must answer, pushed over a WebSocket or polled.
//!
//! Invariants:
//! - Same semantics as the engine: start acquires with `Condition::LeaseFree` (stealing with
//!   `Lease{holder seen, epoch seen}`), and every save is `Condition::Lease{holder, epoch}` of
//!   the token, so a fenced-out token can never write (409 `fenced_out`).
//! - The service keeps no session state: a token is valid exactly while the store says so.
//! - A handoff request is a notification (`hoard.handoff.<holder>`, as the engine sends) plus a
//!   message in the holder's event inbox, so a holder that was not connected finds it by polling.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hoard::engine::protocol::{
    AcquireOutcome, Acquisition, HANDOFF_WAIT_MS_DEFAULT, HandoffAsker, HeldPolicy, acquire_with_policy,
    read_or_release,
};
use hoard::engine::{TOPIC_HANDOFF_PREFIX, handoff_notification, released_notification};
use hoard::retry::Jitter;
use hoard::store::{
    Commit, CommitOutcome, Condition, ConflictKind, DocId, HolderId, InboxMessage, LeaseOp, Store, StoreName, Write,
    get as read_doc,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

use super::path_error;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::idempotency;
use crate::metrics;
use crate::state::AppState;
use crate::wire::SessionToken;

/// The named store whose per-holder inbox keeps handoff requests for polling.
pub const HOLDER_EVENTS_STORE: &str = "hoard.holder_events";
/// Bytes of a holder label.
pub const HOLDER_LABEL_BYTES_MAX: usize = 15;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/holders", post(register_holder))
        .route("/v1/holders/{holder}/renew", post(renew_holder))
        .route("/v1/holders/{holder}/release", post(release_holder))
        .route("/v1/holders/{holder}/events", get(holder_events))
        .route("/v1/sessions/start", post(start))
        .route("/v1/sessions/save", post(save))
        .route("/v1/sessions/end", post(end))
        .route("/v1/sessions/read", post(read))
        .route("/v1/sessions/commit", post(commit_many))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// A short label for logs (e.g. the game server's region); the id adds a unique suffix.
    #[serde(default)]
    pub label: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HolderAnswer {
    pub holder: String,
    pub expires_at_ms: i64,
    pub lease_ttl_ms: u64,
    /// Renew at least this often (a third of the lease), or lose every key at once.
    pub renew_every_ms: u64,
}

fn holder_answer(state: &AppState, lease: hoard::store::HolderLease) -> HolderAnswer {
    HolderAnswer {
        holder: lease.holder.to_string(),
        expires_at_ms: lease.expires_at_ms,
        lease_ttl_ms: state.config.lease_ttl_ms,
        renew_every_ms: state.config.lease_ttl_ms / 3,
    }
}

fn parse_holder(text: &str) -> Result<HolderId, ApiError> {
    HolderId::new(text).map_err(|e| ApiError::bad_request(format!("holder: {e}")))
}

/// Registers a holder: one per game-server process incarnation. Its id starts with this key's
/// name, so only this key can use it.
#[utoipa::path(post, path = "/v1/holders", tag = "sessions", security(("api_key" = [])), request_body = RegisterBody,
    responses((status = 200, body = HolderAnswer), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn register_holder(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<RegisterBody>,
) -> Result<Json<HolderAnswer>, ApiError> {
    principal.may_hold()?;
    let label: String = body
        .value
        .label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(HOLDER_LABEL_BYTES_MAX)
        .collect();
    let holder = HolderId::generate(&format!("{}{label}", principal.holder_prefix()));
    let lease = state.store.renew_holder(&holder, state.config.lease_ttl_ms).await?;
    Ok(Json(holder_answer(&state, lease)))
}

/// Renews a holder's process lease (every `renew_every_ms`).
#[utoipa::path(post, path = "/v1/holders/{holder}/renew", tag = "sessions", security(("api_key" = [])),
    params(("holder" = String, Path)),
    responses((status = 200, body = HolderAnswer), (status = 409, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn renew_holder(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<HolderAnswer>, ApiError> {
    let Path(holder) = path.map_err(path_error)?;
    principal.may_hold()?;
    let holder = parse_holder(&holder)?;
    principal.owns_holder(&holder)?;
    if state.store.holder_lease(&holder).await?.is_none() {
        return Err(ApiError::conflict(
            "holder_gone",
            "this holder was released or never registered; register a new one",
        ));
    }
    let lease = state.store.renew_holder(&holder, state.config.lease_ttl_ms).await?;
    Ok(Json(holder_answer(&state, lease)))
}

/// Ends a holder's process lease: every key it holds is free at once (a game server shutting
/// down after its final saves, or a supervisor cleaning up after a crash).
#[utoipa::path(post, path = "/v1/holders/{holder}/release", tag = "sessions", security(("api_key" = [])),
    params(("holder" = String, Path)), responses((status = 200, description = "released"), (status = 403, body = ErrorBody)))]
pub async fn release_holder(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(holder) = path.map_err(path_error)?;
    principal.may_hold()?;
    let holder = parse_holder(&holder)?;
    principal.owns_holder(&holder)?;
    state.store.release_holder(&holder).await?;
    Ok(Json(json!({ "released": true })))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsParams {
    /// `1`: answer at once with pending handoff requests (JSON) instead of a WebSocket.
    pub poll: Option<u8>,
}

/// A request to save and end the session of a key at once, because another server starts it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HandoffRequest {
    #[serde(rename = "type")]
    pub kind: String,
    pub store: String,
    pub key: String,
}

fn events_id(holder: &HolderId) -> Result<DocId, ApiError> {
    let store = StoreName::new(HOLDER_EVENTS_STORE).map_err(ApiError::internal)?;
    let key = hoard::store::Key::new(holder.as_str()).map_err(ApiError::internal)?;
    Ok(DocId::new(store, key))
}

fn handoff(id: &DocId) -> HandoffRequest {
    HandoffRequest { kind: "handoff".into(), store: id.store.to_string(), key: id.key.to_string() }
}

/// Handoff requests waiting in the holder's event inbox for keys it still holds; the inbox is
/// acknowledged through what was read (a request is delivered once by polling; an unanswered
/// one ends in a steal after the starter's wait, exactly as a lost notification does).
async fn pending_requests(store: &dyn Store, holder: &HolderId) -> Result<Vec<HandoffRequest>, ApiError> {
    let events = events_id(holder)?;
    let document = read_doc(store, &events).await?;
    let Some(last) = document.inbox.last().map(|m| m.seq) else { return Ok(Vec::new()) };
    let ids: Vec<DocId> =
        document.inbox.iter().filter_map(|m: &InboxMessage| serde_json::from_value(m.body.clone()).ok()).collect();
    let mut requests = Vec::new();
    if !ids.is_empty() {
        for document in store.get_many(&ids).await? {
            if document.lease.holder.as_ref() == Some(holder) && !requests.contains(&handoff(&document.id)) {
                requests.push(handoff(&document.id));
            }
        }
    }
    // Best effort: an unacknowledged request is only delivered again.
    let _ = store.commit(Commit::single(Write::new(events).ack_inbox_through(last))).await;
    Ok(requests)
}

/// Handoff requests for this holder: a WebSocket that pushes `{"type":"handoff","store","key"}`
/// messages (pending ones first), or with `?poll=1` the pending ones as JSON.
#[utoipa::path(get, path = "/v1/holders/{holder}/events", tag = "sessions", security(("api_key" = [])),
    params(("holder" = String, Path), EventsParams),
    responses((status = 101, description = "WebSocket of handoff requests"), (status = 200, description = "pending handoff requests (poll)"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn holder_events(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<EventsParams>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Path(holder) = path.map_err(path_error)?;
    let Query(params) = query.map_err(super::query_error)?;
    principal.may_hold()?;
    let holder = parse_holder(&holder)?;
    principal.owns_holder(&holder)?;
    if params.poll == Some(1) {
        let requests = pending_requests(&*state.store, &holder).await?;
        return Ok(Json(json!({ "requests": requests })).into_response());
    }
    match upgrade {
        Ok(upgrade) => Ok(upgrade.on_upgrade(move |socket| push_events(state, holder, socket))),
        Err(_) => Err(ApiError::bad_request("connect with a WebSocket upgrade, or add ?poll=1 to poll")),
    }
}

async fn push_events(state: Arc<AppState>, holder: HolderId, mut socket: WebSocket) {
    let topic = format!("{TOPIC_HANDOFF_PREFIX}{holder}");
    let mut notifications = state.store.subscribe();
    let mut closing = state.closing.subscribe();
    if let Ok(requests) = pending_requests(&*state.store, &holder).await {
        for request in requests {
            let Ok(text) = serde_json::to_string(&request) else { continue };
            if socket.send(Message::Text(text.into())).await.is_err() {
                return;
            }
        }
    }
    loop {
        tokio::select! {
            received = notifications.recv() => match received {
                Ok(notification) if notification.topic == topic => {
                    let Ok(id) = serde_json::from_str::<DocId>(&notification.payload) else { continue };
                    let Ok(text) = serde_json::to_string(&handoff(&id)) else { continue };
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
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

/// What to do when another holder has the key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartPolicy {
    /// Ask the holder to hand over, wait up to `wait_ms`, then take the key (it is fenced out).
    #[default]
    WaitThenSteal,
    /// Ask and wait up to `wait_ms`; never take it by force (409 `locked` after the wait).
    Wait,
    /// Take the key at once.
    StealNow,
    /// 409 `locked` at once.
    FailFast,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    pub store: String,
    pub key: String,
    pub holder: String,
    #[serde(default)]
    pub policy: StartPolicy,
    /// How long to wait for a handoff (default 5000, at most 20000).
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StartAnswer {
    pub token: SessionToken,
    /// The stored value (`null`: new player).
    #[schema(value_type = Object)]
    pub value: Option<Value>,
    pub version: u64,
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
    pub user_ids: Vec<String>,
    /// Messages waiting for the player: apply them, then save with `ack_inbox_through`.
    #[schema(value_type = Vec<Object>)]
    pub inbox: Vec<InboxMessage>,
    /// True when the key was taken from another holder.
    pub stole: bool,
}

async fn request_handoff(store: &dyn Store, holder: &HolderId, id: &DocId) {
    metrics::count(metrics::HANDOFFS_REQUESTED, "requested");
    // Both best effort: an unanswered request ends in a steal after the wait.
    if let Ok(events) = events_id(holder) {
        let body = serde_json::to_value(id).unwrap_or(Value::Null);
        let _ = store.commit(Commit::single(Write::new(events).push_message(body))).await;
    }
    let _ = store.notify(handoff_notification(holder, id)).await;
}

/// The library's acquisition protocol asks a holder this way over HTTP: event inbox and notification.
struct AskOverHttp<'a>(&'a dyn Store);

impl HandoffAsker for AskOverHttp<'_> {
    async fn ask(&self, holder: &HolderId, id: &DocId) {
        request_handoff(self.0, holder, id).await;
    }
}

/// Starts a session: acquires the key for the holder (following the policy, asking a live
/// holder to hand over) and returns the token with the stored value.
#[utoipa::path(post, path = "/v1/sessions/start", tag = "sessions", security(("api_key" = [])), request_body = StartBody,
    responses((status = 200, body = StartAnswer), (status = 409, body = ErrorBody, description = "locked, or holder_expired"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn start(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<StartBody>,
) -> Result<Json<StartAnswer>, ApiError> {
    let body = body.value;
    principal.may_play(&body.store)?;
    let store = &*state.store;
    let id = super::doc_id(&body.store, &body.key, store.limits())?;
    let holder = parse_holder(&body.holder)?;
    principal.owns_holder(&holder)?;
    let wait_ms = body.wait_ms.unwrap_or(HANDOFF_WAIT_MS_DEFAULT).min(crate::config::START_WAIT_MS_MAX);
    let now_ms = store.now_ms().await?;
    match store.holder_lease(&holder).await? {
        Some(lease) if lease.expires_at_ms > now_ms => {}
        _ => {
            return Err(ApiError::conflict(
                "holder_expired",
                "this holder's lease expired or was released; register a new holder",
            ));
        }
    }
    let policy = match body.policy {
        StartPolicy::WaitThenSteal => HeldPolicy::WaitThenSteal { wait_ms },
        StartPolicy::Wait => HeldPolicy::Wait { wait_ms },
        StartPolicy::StealNow => HeldPolicy::StealNow,
        StartPolicy::FailFast => HeldPolicy::FailFast,
    };
    // The library's one acquisition protocol (the engine's too): waits, polls, steals and
    // retries transient store errors exactly as a game server in process does.
    let jitter = Jitter::seeded(Jitter::seed_from(&format!("{holder}/{id}")));
    let request = Acquisition::with_defaults(store, &holder, &id, policy, &jitter);
    let acquired = match acquire_with_policy(&request, &AskOverHttp(store)).await? {
        AcquireOutcome::Acquired(acquired) => acquired,
        AcquireOutcome::Locked { .. } => {
            return Err(ApiError::conflict(
                "locked",
                "another holder has this key; retry later or choose another policy",
            ));
        }
    };
    let stole = acquired.stole_from.is_some();
    if stole {
        metrics::count(metrics::STEALS, "stolen");
    }
    let epoch = acquired.epoch;
    let token = SessionToken::new(&holder, epoch, &id);
    // Never keep a key nobody will play: a read that keeps failing releases it untouched.
    let document = read_or_release(&request, epoch, &request.retry).await?;
    metrics::session_started();
    Ok(Json(StartAnswer {
        token,
        value: document.value,
        version: document.version,
        attributes: document.attributes,
        user_ids: document.user_ids,
        inbox: document.inbox,
        stole,
    }))
}

/// The token's key and fence, after checking the caller may use it.
pub fn fence(principal: &Principal, token: &SessionToken, state: &AppState) -> Result<(DocId, Condition), ApiError> {
    principal.may_play(&token.store)?;
    let id = super::doc_id(&token.store, &token.key, state.store.limits())?;
    let holder = token.holder_id()?;
    principal.owns_holder(&holder)?;
    Ok((id, Condition::Lease { holder, epoch: token.epoch }))
}

pub fn fenced_out(id: &DocId) -> ApiError {
    metrics::count(metrics::FENCED_OUT, "fenced_out");
    ApiError::conflict(
        "fenced_out",
        format!(
            "the session token of {id} no longer holds the key (taken by another session or released); nothing was written; end the player's session"
        ),
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveBody {
    pub token: SessionToken,
    /// The whole new value.
    #[schema(value_type = Object)]
    pub value: Value,
    /// Inbox messages applied by this value: removed in the same commit.
    pub ack_inbox_through: Option<u64>,
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Map<String, Value>>,
    pub user_ids: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SaveAnswer {
    pub version: u64,
    /// Highest inbox sequence still waiting (0: none): more messages arrived when non-zero.
    pub inbox_last_waiting_seq: u64,
}

fn save_write(id: DocId, fence: Condition, save: &SaveBody) -> Write {
    let mut write = Write::put(id, save.value.clone()).when(fence);
    write.attributes = save.attributes.clone();
    write.user_ids = save.user_ids.clone();
    write.inbox_ack_through = save.ack_inbox_through;
    write
}

/// Saves the session's value, fenced by its token.
#[utoipa::path(post, path = "/v1/sessions/save", tag = "sessions", security(("api_key" = [])), request_body = SaveBody,
    responses((status = 200, body = SaveAnswer), (status = 409, body = ErrorBody, description = "fenced_out"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn save(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<SaveBody>,
) -> Result<Json<SaveAnswer>, ApiError> {
    let (id, fence_condition) = fence(&principal, &body.value.token, &state)?;
    let write = save_write(id.clone(), fence_condition, &body.value);
    match state.store.commit(Commit::single(write)).await? {
        CommitOutcome::Committed { applied, .. } => {
            metrics::count(metrics::SAVES, "saved");
            let applied = applied.first().ok_or_else(|| ApiError::internal("commit applied no write"))?;
            Ok(Json(SaveAnswer { version: applied.version, inbox_last_waiting_seq: applied.inbox_last_waiting_seq }))
        }
        CommitOutcome::Conflict(conflict) if conflict.kind == ConflictKind::LeaseMismatch => Err(fenced_out(&id)),
        CommitOutcome::Conflict(conflict) => {
            metrics::count(metrics::CONFLICTS, "save");
            Err(ApiError::conflict("conflict", format!("{:?} on {}", conflict.kind, conflict.id)))
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndBody {
    pub token: SessionToken,
    /// The final value; absent: end without saving again.
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    pub ack_inbox_through: Option<u64>,
}

/// Ends the session: the final save (if a value is given) and the release, in one fenced commit.
#[utoipa::path(post, path = "/v1/sessions/end", tag = "sessions", security(("api_key" = [])), request_body = EndBody,
    responses((status = 200, description = "ended"), (status = 409, body = ErrorBody, description = "fenced_out"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn end(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<EndBody>,
) -> Result<Json<Value>, ApiError> {
    let (id, fence_condition) = fence(&principal, &body.value.token, &state)?;
    let mut write = Write::new(id.clone()).when(fence_condition).lease(LeaseOp::Release);
    if let Some(value) = &body.value.value {
        write = write.value(hoard::store::ValueOp::Put(value.clone()));
    }
    write.inbox_ack_through = body.value.ack_inbox_through;
    match state.store.commit(Commit::single(write)).await? {
        CommitOutcome::Committed { applied, .. } => {
            metrics::session_ended();
            // Best effort: a waiting starter also polls.
            let _ = state.store.notify(released_notification(&id)).await;
            Ok(Json(json!({ "ended": true, "version": applied.first().map(|a| a.version) })))
        }
        CommitOutcome::Conflict(conflict) if conflict.kind == ConflictKind::LeaseMismatch => Err(fenced_out(&id)),
        CommitOutcome::Conflict(conflict) => {
            Err(ApiError::conflict("conflict", format!("{:?} on {}", conflict.kind, conflict.id)))
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadBody {
    pub token: SessionToken,
}

/// Reads the session's stored document and whether the token still holds the key.
#[utoipa::path(post, path = "/v1/sessions/read", tag = "sessions", security(("api_key" = [])), request_body = ReadBody,
    responses((status = 200, description = "the document and `held`"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn read(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<ReadBody>,
) -> Result<Json<Value>, ApiError> {
    let (id, _) = fence(&principal, &body.value.token, &state)?;
    let document = read_doc(&*state.store, &id).await?;
    let held = document.lease.holder.as_ref().map(HolderId::as_str) == Some(body.value.token.holder.as_str())
        && document.lease.epoch == body.value.token.epoch;
    Ok(Json(json!({ "held": held, "document": document })))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitManyBody {
    /// Saves of several sessions, applied all or none.
    pub saves: Vec<SaveBody>,
}

/// Saves several sessions in one atomic, fenced commit (all or none). Takes an
/// `Idempotency-Key` header.
#[utoipa::path(post, path = "/v1/sessions/commit", tag = "sessions", security(("api_key" = [])), request_body = CommitManyBody,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, description = "versions, in the order of `saves`"), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn commit_many(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    headers: HeaderMap,
    body: ApiJson<CommitManyBody>,
) -> Result<Json<Value>, ApiError> {
    let store = &*state.store;
    let idem = idempotency::from_headers(&headers, &principal, "commit", &body.digest, store.limits())?;
    let mut writes = Vec::with_capacity(body.value.saves.len() + 1);
    for save in &body.value.saves {
        let (id, fence_condition) = fence(&principal, &save.token, &state)?;
        writes.push(save_write(id, fence_condition, save));
    }
    if writes.is_empty() {
        return Err(ApiError::bad_request("give at least one save"));
    }
    if let Some(first) = idempotency::replay(store, idem.as_ref()).await? {
        return Ok(Json(first));
    }
    let ids: Vec<DocId> = writes.iter().map(|w| w.id.clone()).collect();
    // Versions are known only after the commit; the stored answer names the commit instead.
    let commit = Commit::new(writes);
    let response = json!({ "committed": true, "commit_id": commit.id.to_string(), "keys": ids });
    let mut commit = commit;
    if let Some(idem) = &idem {
        commit.writes.push(idempotency::record_write(idem, &response));
    }
    match store.commit(commit).await? {
        CommitOutcome::Committed { .. } => {
            metrics::count(metrics::SAVES, "multi");
            Ok(Json(response))
        }
        CommitOutcome::Conflict(conflict) if idempotency::lost_the_race(idem.as_ref(), &conflict) => {
            let first = idempotency::replay(store, idem.as_ref()).await?;
            first.map(Json).ok_or_else(|| ApiError::internal("idempotency record vanished"))
        }
        CommitOutcome::Conflict(conflict) if conflict.kind == ConflictKind::LeaseMismatch => {
            Err(fenced_out(&conflict.id))
        }
        CommitOutcome::Conflict(conflict) => {
            Err(ApiError::conflict("conflict", format!("{:?} on {}", conflict.kind, conflict.id)))
        }
    }
}
