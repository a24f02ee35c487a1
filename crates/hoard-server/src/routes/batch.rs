//! Calls shaped for a game server with a request budget (Roblox's HttpService: 500 requests a
//! minute, no WebSocket): `start_many` and `end_many` here, `sync` in `routes::sync`, and what
//! they share (per-entry results, the checks every batch makes).
//!
//! Invariants:
//! - Each session of a batch is the very same write as its single-session route
//!   (`session_writes::save_session` / `end_session`, `sessions::start_key`), fenced by its token
//!   and `base_version`, and gets its own outcome: a fenced-out, stale or failing session never
//!   fails the others.
//! - A malformed batch (over a per-call limit, a token of another holder, a key twice, a field
//!   that rides only on a save without one) is refused whole with 400 before anything is done.
//! - Every per-call count and wait has a named limit here or in `events`.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use futures_util::future::join_all;
use hoard::store::DocId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::session_writes::{EndAnswer, EndBody, end_session};
use super::sessions::{
    StartAnswer, StartBody, StartPolicy, check_holder_live, check_start, fence, parse_holder, start_key,
};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::state::AppState;
use crate::wire::CurrentDocument;

/// Keys in one `start_many`.
pub const START_MANY_MAX: usize = 100;
/// Sessions in one `end_many`.
pub const END_MANY_MAX: usize = 200;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/holders/{holder}/sync", post(super::sync::sync))
        .route("/v1/sessions/start_many", post(start_many))
        .route("/v1/sessions/end_many", post(end_many))
}

/// Why one entry of a batch did not succeed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub error: String,
    pub message: String,
    /// With `stale`: the key's stored document, to adopt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<CurrentDocument>,
}

impl ErrorDetail {
    pub fn of(error: ApiError) -> ErrorDetail {
        ErrorDetail { error: error.code.to_string(), message: error.message, current: error.current.map(|c| *c) }
    }
}

/// One entry's result in a batch: `{"ok": answer}` or `{"error": {error, message, current?}}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryResult<T> {
    Ok(T),
    Error(Box<ErrorDetail>),
}

impl<T> EntryResult<T> {
    fn of(result: Result<T, ApiError>) -> EntryResult<T> {
        match result {
            Ok(answer) => EntryResult::Ok(answer),
            Err(error) => EntryResult::Error(Box::new(ErrorDetail::of(error))),
        }
    }
}

pub fn refuse_duplicates(ids: &[DocId]) -> Result<(), ApiError> {
    let mut sorted: Vec<&DocId> = ids.iter().collect();
    sorted.sort();
    match sorted.windows(2).find(|pair| pair.first() == pair.get(1)) {
        Some(pair) => Err(ApiError::bad_request(format!("{} appears twice; give each key once", pair[0]))),
        None => Ok(()),
    }
}

fn check_count(what: &str, count: usize, count_max: usize) -> Result<(), ApiError> {
    if count == 0 || count > count_max {
        return Err(ApiError::bad_request(format!("{what}: give 1 to {count_max} entries (got {count})")));
    }
    Ok(())
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartManyEntry {
    pub store: String,
    pub key: String,
    /// This key's policy (default: the call's).
    pub policy: Option<StartPolicy>,
    /// This key's wait (default: the call's).
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartManyBody {
    pub holder: String,
    #[serde(default)]
    pub policy: StartPolicy,
    /// How long each start waits for a handoff (default 5000, at most 20000).
    pub wait_ms: Option<u64>,
    /// 1 to 100 keys (`START_MANY_MAX`), each once.
    pub starts: Vec<StartManyEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StartManyAnswer {
    /// In the order of `starts`.
    pub results: Vec<EntryResult<StartAnswer>>,
}

/// Starts many sessions of one holder at once (a join wave): each key is started as
/// `/v1/sessions/start` would, in parallel, with its own result.
#[utoipa::path(post, path = "/v1/sessions/start_many", tag = "sessions", security(("api_key" = [])),
    request_body = StartManyBody,
    responses((status = 200, body = StartManyAnswer), (status = 409, body = ErrorBody, description = "holder_expired"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn start_many(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<StartManyBody>,
) -> Result<Json<StartManyAnswer>, ApiError> {
    let body = body.value;
    check_count("starts", body.starts.len(), START_MANY_MAX)?;
    let mut starts = Vec::with_capacity(body.starts.len());
    for entry in body.starts {
        let start = StartBody {
            store: entry.store,
            key: entry.key,
            holder: body.holder.clone(),
            policy: entry.policy.unwrap_or(body.policy),
            wait_ms: entry.wait_ms.or(body.wait_ms),
        };
        let (id, holder) = check_start(&state, &principal, &start)?;
        starts.push((start, holder, id));
    }
    refuse_duplicates(&starts.iter().map(|(_, _, id)| id.clone()).collect::<Vec<_>>())?;
    let holder = parse_holder(&body.holder)?;
    check_holder_live(&*state.store, &holder).await?;
    let results = join_all(starts.into_iter().map(|(start, holder, id)| {
        let state = &state;
        async move { EntryResult::of(start_key(state, start, holder, id).await) }
    }))
    .await;
    Ok(Json(StartManyAnswer { results }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndManyBody {
    /// 1 to 200 sessions (`END_MANY_MAX`), each once.
    pub ends: Vec<EndBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndManyAnswer {
    /// In the order of `ends`.
    pub results: Vec<EntryResult<EndAnswer>>,
}

/// Ends many sessions at once (shutdown): each is ended as `/v1/sessions/end` would, in
/// parallel (their final saves group-commit in the store), with its own result.
#[utoipa::path(post, path = "/v1/sessions/end_many", tag = "sessions", security(("api_key" = [])),
    request_body = EndManyBody,
    responses((status = 200, body = EndManyAnswer), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn end_many(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<EndManyBody>,
) -> Result<Json<EndManyAnswer>, ApiError> {
    let ends = &body.value.ends;
    check_count("ends", ends.len(), END_MANY_MAX)?;
    let mut ids = Vec::with_capacity(ends.len());
    for end in ends {
        ids.push(fence(&principal, &end.token, &state)?.0);
    }
    refuse_duplicates(&ids)?;
    let results = join_all(ends.iter().map(|end| {
        let (state, principal) = (&state, &principal);
        async move { EntryResult::of(end_session(state, principal, end).await) }
    }))
    .await;
    Ok(Json(EndManyAnswer { results }))
}
