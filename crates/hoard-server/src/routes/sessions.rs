//! Holders and sessions for game servers in any language: register a holder (one per game-server
//! process, with a process lease to renew), start a session (acquire the key with the wait /
//! steal / fail policy), and ask a holder to hand a key over.
//! The fenced writes of a session (save, end, commit) are `routes::session_writes`, the holder's
//! events (handoff requests, inbox arrivals; polled, long-polled or pushed) `routes::events`,
//! the batched calls (sync, start and end many) `routes::batch`.
//!
//! Invariants:
//! - Same semantics as the engine: start acquires with `Condition::LeaseFree` (stealing with
//!   `Lease{holder seen, epoch seen}`), and every write of a session is fenced by its token's
//!   `Condition::Lease{holder, epoch}` (`fence`), so a fenced-out token can never write.
//! - The service keeps no session state: a token is valid exactly while the store says so.
//! - A handoff request is a notification (`hoard.handoff.<holder>`, as the engine sends) plus a
//!   message in the holder's event inbox, so a holder that was not connected finds it by polling.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use hoard::engine::handoff_notification;
use hoard::engine::protocol::{
    AcquireOutcome, Acquisition, HANDOFF_WAIT_MS_DEFAULT, HandoffAsker, HeldPolicy, acquire_with_policy,
    read_or_release,
};
use hoard::retry::Jitter;
use hoard::store::{Commit, Condition, DocId, HolderId, InboxMessage, Store, Write};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::path_error;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
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
        .route("/v1/holders/{holder}/events", get(super::events::holder_events))
        .route("/v1/sessions/start", post(start))
        .merge(super::session_writes::routes())
        .merge(super::batch::routes())
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// A short label for logs (e.g. the game server's region); the id adds a unique suffix.
    #[serde(default)]
    pub label: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HolderAnswer {
    pub holder: String,
    pub expires_at_ms: i64,
    pub lease_ttl_ms: u64,
    /// Renew at least this often (a third of the lease), or lose every key at once.
    pub renew_every_ms: u64,
}

pub fn holder_answer(state: &AppState, lease: hoard::store::HolderLease) -> HolderAnswer {
    HolderAnswer {
        holder: lease.holder.to_string(),
        expires_at_ms: lease.expires_at_ms,
        lease_ttl_ms: state.config.lease_ttl_ms,
        renew_every_ms: state.config.lease_ttl_ms / 3,
    }
}

pub fn parse_holder(text: &str) -> Result<HolderId, ApiError> {
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
    super::events::mark_http_holder(&*state.store, &holder, &principal.name).await?;
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

#[derive(Clone, Debug, Deserialize, ToSchema)]
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

#[derive(Clone, Debug, Serialize, ToSchema)]
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
    /// When the key was first written, by the store's clock (0: new player).
    pub created_at_ms: i64,
    /// When its value last changed, by the store's clock.
    pub updated_at_ms: i64,
}

async fn request_handoff(store: &dyn Store, holder: &HolderId, id: &DocId) {
    metrics::count(metrics::HANDOFFS_REQUESTED, "requested");
    // Both best effort: an unanswered request ends in a steal after the wait.
    if let Ok(events) = super::events::events_id(holder) {
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
    let (id, holder) = check_start(&state, &principal, &body)?;
    check_holder_live(&*state.store, &holder).await?;
    start_key(&state, body, holder, id).await.map(Json)
}

/// The key and holder of a start, after checking the caller may use them.
pub fn check_start(state: &AppState, principal: &Principal, body: &StartBody) -> Result<(DocId, HolderId), ApiError> {
    principal.may_play(&body.store)?;
    let id = super::doc_id(&body.store, &body.key, state.store.limits())?;
    let holder = parse_holder(&body.holder)?;
    principal.owns_holder(&holder)?;
    Ok((id, holder))
}

/// Refuses a holder whose process lease expired or was released (409 `holder_expired`).
pub async fn check_holder_live(store: &dyn Store, holder: &HolderId) -> Result<(), ApiError> {
    let now_ms = store.now_ms().await?;
    match store.holder_lease(holder).await? {
        Some(lease) if lease.expires_at_ms > now_ms => Ok(()),
        _ => Err(ApiError::conflict(
            "holder_expired",
            "this holder's lease expired or was released; register a new holder",
        )),
    }
}

/// Starts one key for a live holder: acquires it (following the policy, asking a live holder to
/// hand over), then reads it. `start` and `start_many` both run this.
pub async fn start_key(
    state: &AppState,
    body: StartBody,
    holder: HolderId,
    id: DocId,
) -> Result<StartAnswer, ApiError> {
    let store = &*state.store;
    let wait_ms = body.wait_ms.unwrap_or(HANDOFF_WAIT_MS_DEFAULT).min(crate::config::START_WAIT_MS_MAX);
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
    if let Some(old_holder) = &acquired.stole_from {
        metrics::count(metrics::STEALS, "stolen");
        super::events::announce_stolen(store, old_holder, &id).await;
    }
    let epoch = acquired.epoch;
    let token = SessionToken::new(&holder, epoch, &id);
    // Never keep a key nobody will play: a read that keeps failing releases it untouched.
    let document = read_or_release(&request, epoch, &request.retry).await?;
    metrics::session_started();
    Ok(StartAnswer {
        token,
        value: document.value,
        version: document.version,
        attributes: document.attributes,
        user_ids: document.user_ids,
        inbox: document.inbox,
        stole,
        created_at_ms: document.created_at_ms,
        updated_at_ms: document.updated_at_ms,
    })
}

/// The token's key and fence, after checking the caller may use it.
pub fn fence(principal: &Principal, token: &SessionToken, state: &AppState) -> Result<(DocId, Condition), ApiError> {
    principal.may_play(&token.store)?;
    let id = super::doc_id(&token.store, &token.key, state.store.limits())?;
    let holder = token.holder_id()?;
    principal.owns_holder(&holder)?;
    Ok((id, Condition::Lease { holder, epoch: token.epoch }))
}

/// Whether the key's lease is still the token's fence (`fence`): holder and epoch.
pub fn holds(document: &hoard::store::Document, lease: &Condition) -> bool {
    matches!(lease, Condition::Lease { holder, epoch }
        if document.lease.holder.as_ref() == Some(holder) && document.lease.epoch == *epoch)
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
