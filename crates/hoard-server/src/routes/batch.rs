//! Calls shaped for a game server with a request budget (Roblox's HttpService: 500 requests a
//! minute, no WebSocket): `sync` (one call per holder per interval: its lease renewal, every
//! dirty session's fenced save, the sessions' new inbox messages and the holder's handoff
//! requests, optionally long-polled), `start_many` and `end_many`.
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

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::future::join_all;
use hoard::store::validate::json_bytes;
use hoard::store::{Condition, DocId, Document, HolderId, InboxMessage};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::events::{HandoffRequest, check_wait_ms, long_poll_deadline, take_pending, wait_for_a_wake};
use super::path_error;
use super::session_writes::{EndAnswer, EndBody, SaveAnswer, SaveBody, end_session, save_session};
use super::sessions::{
    HolderAnswer, StartAnswer, StartBody, StartPolicy, check_holder_live, check_start, fence, holder_answer,
    parse_holder, start_key,
};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::state::AppState;
use crate::wire::{CurrentDocument, SessionToken};

/// Sessions in one `sync`.
pub const SYNC_SESSIONS_MAX: usize = 200;
/// Bytes of inbox message bodies one `sync` answer carries, in all; past it a session says
/// `inbox_more` and the next sync (with `inbox_seen_through`) carries the rest.
pub const SYNC_INBOX_BYTES_MAX: usize = 1024 * 1024;
/// Keys in one `start_many`.
pub const START_MANY_MAX: usize = 100;
/// Sessions in one `end_many`.
pub const END_MANY_MAX: usize = 200;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/holders/{holder}/sync", post(sync))
        .route("/v1/sessions/start_many", post(start_many))
        .route("/v1/sessions/end_many", post(end_many))
}

fn is_false(value: &bool) -> bool {
    !*value
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
    fn of(error: ApiError) -> ErrorDetail {
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

fn refuse_duplicates(ids: &[DocId]) -> Result<(), ApiError> {
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
pub struct SyncSession {
    pub token: SessionToken,
    /// The version the session's state is based on (required, as on every session write).
    pub base_version: u64,
    /// Present: save this value (fenced by the token and `base_version`). Absent: only check the
    /// session (still held, still at `base_version`) and fetch its new messages.
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    /// With `value`: the inbox messages it applied, removed in the same commit.
    pub ack_inbox_through: Option<u64>,
    /// With `value`: replaces the attributes.
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Map<String, Value>>,
    /// With `value`: replaces the user ids.
    pub user_ids: Option<Vec<String>>,
    /// Answer only inbox messages after this sequence (default: after `ack_inbox_through`, or
    /// every waiting message).
    pub inbox_seen_through: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncBody {
    /// At most 200 (`SYNC_SESSIONS_MAX`); may be empty (renewal and events only).
    #[serde(default)]
    pub sessions: Vec<SyncSession>,
    /// Long-poll: when there is nothing to report after the saves (no handoff request, no new
    /// message, every session saved or unchanged), wait up to this long (at most 25000) for one.
    pub wait_ms: Option<u64>,
}

/// What happened to one session of a sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncOutcome {
    /// The value was saved (or this was a retry of a save that had: `replayed`).
    Saved,
    /// No value was sent; the session still holds the key at `base_version`.
    Unchanged,
    /// The key is past `base_version`: nothing was written; adopt `current`.
    Stale,
    /// The token no longer holds the key: the session is over.
    FencedOut,
    /// Anything else (see `error`); nothing was written for this session.
    Error,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SyncSessionAnswer {
    pub store: String,
    pub key: String,
    pub outcome: SyncOutcome,
    /// The key's version now (saved, unchanged): the next `base_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub replayed: bool,
    /// With `stale`: the stored document to adopt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<CurrentDocument>,
    /// With `error` (and `stale`, `fenced_out`): what happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
    /// Messages waiting after `inbox_seen_through`, in order: apply them, then acknowledge them
    /// with a save.
    #[schema(value_type = Vec<Object>)]
    pub inbox: Vec<InboxMessage>,
    /// More messages wait than this answer had room for (`SYNC_INBOX_BYTES_MAX`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub inbox_more: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SyncAnswer {
    /// The holder's lease, renewed.
    pub holder: HolderAnswer,
    /// One per session, in request order.
    pub sessions: Vec<SyncSessionAnswer>,
    /// Keys this holder must save and end now (another server starts them).
    pub handoffs: Vec<HandoffRequest>,
}

/// A sync's checked session: its key, fence and the save to make (if any).
struct Checked {
    id: DocId,
    lease: Condition,
    session: SyncSession,
}

fn check_sync(
    state: &AppState,
    principal: &Principal,
    holder: &HolderId,
    body: SyncBody,
) -> Result<(Vec<Checked>, u64), ApiError> {
    let wait_ms = body.wait_ms.unwrap_or(0);
    check_wait_ms(wait_ms)?;
    if body.sessions.len() > SYNC_SESSIONS_MAX {
        return Err(ApiError::bad_request(format!(
            "a sync carries at most {SYNC_SESSIONS_MAX} sessions (got {}); split it",
            body.sessions.len()
        )));
    }
    let mut checked = Vec::with_capacity(body.sessions.len());
    for session in body.sessions {
        let (id, lease) = fence(principal, &session.token, state)?;
        if session.token.holder != holder.as_str() {
            return Err(ApiError::bad_request(format!("the token of {id} belongs to another holder")));
        }
        let rides_on_a_save =
            session.ack_inbox_through.is_some() || session.attributes.is_some() || session.user_ids.is_some();
        if session.value.is_none() && rides_on_a_save {
            return Err(ApiError::bad_request(format!(
                "{id}: ack_inbox_through, attributes and user_ids are written with a save: send value too"
            )));
        }
        checked.push(Checked { id, lease, session });
    }
    refuse_duplicates(&checked.iter().map(|c| c.id.clone()).collect::<Vec<_>>())?;
    Ok((checked, wait_ms))
}

/// A session's answer before its save's outcome, check and messages are filled in.
fn blank_answer(checked: &Checked) -> SyncSessionAnswer {
    SyncSessionAnswer {
        store: checked.id.store.to_string(),
        key: checked.id.key.to_string(),
        outcome: SyncOutcome::Unchanged,
        version: None,
        replayed: false,
        current: None,
        error: None,
        inbox: Vec::new(),
        inbox_more: false,
    }
}

/// The outcome of a session's save, before its messages are added.
fn saved_outcome(checked: &Checked, result: Result<SaveAnswer, ApiError>) -> SyncSessionAnswer {
    let mut answer = blank_answer(checked);
    match result {
        Ok(saved) => {
            answer.outcome = SyncOutcome::Saved;
            answer.version = Some(saved.version);
            answer.replayed = saved.replayed;
        }
        Err(error) => {
            answer.outcome = match error.code {
                "stale" => SyncOutcome::Stale,
                "fenced_out" => SyncOutcome::FencedOut,
                _ => SyncOutcome::Error,
            };
            let detail = ErrorDetail::of(error);
            answer.current = detail.current.clone();
            answer.error = Some(ErrorDetail { current: None, ..detail });
        }
    }
    answer
}

fn holds(document: &Document, lease: &Condition) -> bool {
    matches!(lease, Condition::Lease { holder, epoch }
        if document.lease.holder.as_ref() == Some(holder) && document.lease.epoch == *epoch)
}

/// Reads the sessions' documents; a key the store cannot read fails only its own session.
async fn read_each(state: &AppState, ids: &[DocId]) -> Vec<Result<Document, ApiError>> {
    match state.store.get_many(ids).await {
        Ok(documents) => documents.into_iter().map(Ok).collect(),
        Err(_) if ids.len() > 1 => {
            join_all(
                ids.iter().map(|id| async move { hoard::store::get(&*state.store, id).await.map_err(ApiError::from) }),
            )
            .await
        }
        Err(error) => vec![Err(ApiError::from(error))],
    }
}

/// Fills in each session's check (for sessions without a value) and new messages, within the
/// answer's message budget. Returns whether anything is worth reporting.
async fn add_checks_and_messages(state: &AppState, checked: &[Checked], answers: &mut [SyncSessionAnswer]) -> bool {
    let ids: Vec<DocId> = checked.iter().map(|c| c.id.clone()).collect();
    let documents = read_each(state, &ids).await;
    let mut budget = SYNC_INBOX_BYTES_MAX;
    let mut worth_reporting = false;
    for ((checked, answer), document) in checked.iter().zip(answers.iter_mut()).zip(documents) {
        answer.inbox.clear();
        answer.inbox_more = false;
        if matches!(answer.outcome, SyncOutcome::Stale | SyncOutcome::FencedOut | SyncOutcome::Error) {
            worth_reporting = true;
            continue;
        }
        let document = match document {
            Ok(document) => document,
            Err(error) => {
                answer.outcome = SyncOutcome::Error;
                answer.error = Some(ErrorDetail::of(error));
                worth_reporting = true;
                continue;
            }
        };
        if !holds(&document, &checked.lease) {
            answer.outcome = SyncOutcome::FencedOut;
            answer.version = None;
            answer.error = Some(ErrorDetail::of(super::sessions::fenced_out(&checked.id)));
            worth_reporting = true;
            continue;
        }
        if checked.session.value.is_none() {
            if document.version != checked.session.base_version {
                let base_version = checked.session.base_version;
                answer.outcome = SyncOutcome::Stale;
                answer.error = Some(ErrorDetail::of(ApiError::stale(base_version, CurrentDocument::of(document))));
                answer.current = answer.error.as_mut().and_then(|detail| detail.current.take());
                worth_reporting = true;
                continue;
            }
            answer.outcome = SyncOutcome::Unchanged;
            answer.version = Some(document.version);
        }
        let seen_through = checked.session.inbox_seen_through.or(checked.session.ack_inbox_through).unwrap_or(0);
        for message in document.inbox.into_iter().filter(|message| message.seq > seen_through) {
            let bytes = json_bytes(&message.body);
            if bytes > budget {
                answer.inbox_more = true;
                break;
            }
            budget -= bytes;
            answer.inbox.push(message);
        }
        worth_reporting |= !answer.inbox.is_empty() || answer.inbox_more;
    }
    worth_reporting
}

/// One call per holder per interval: renews the holder's lease, saves every session that sends
/// a value (each fenced by its token and `base_version`, each with its own outcome), and answers
/// the sessions' new inbox messages and the holder's handoff requests; with `wait_ms`, waits for
/// one when there is nothing to report.
#[utoipa::path(post, path = "/v1/holders/{holder}/sync", tag = "sessions", security(("api_key" = [])),
    params(("holder" = String, Path)), request_body = SyncBody,
    responses((status = 200, body = SyncAnswer), (status = 409, body = ErrorBody, description = "holder_gone"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn sync(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    body: ApiJson<SyncBody>,
) -> Result<Json<SyncAnswer>, ApiError> {
    let Path(holder) = path.map_err(path_error)?;
    principal.may_hold()?;
    let holder = parse_holder(&holder)?;
    principal.owns_holder(&holder)?;
    let (checked, wait_ms) = check_sync(&state, &principal, &holder, body.value)?;
    // Subscribed before anything is read, so an event after the reads still wakes the wait.
    let mut notifications = state.store.subscribe();
    let deadline = long_poll_deadline(wait_ms);
    if state.store.holder_lease(&holder).await?.is_none() {
        return Err(ApiError::conflict(
            "holder_gone",
            "this holder was released or never registered; register a new one and start its sessions again",
        ));
    }
    let lease = state.store.renew_holder(&holder, state.config.lease_ttl_ms).await?;
    let saves = checked.iter().map(|checked| {
        let state = &state;
        let principal = &principal;
        async move {
            // Checked against the stored document below, with the messages.
            let Some(value) = &checked.session.value else { return blank_answer(checked) };
            let save = SaveBody {
                token: checked.session.token.clone(),
                base_version: checked.session.base_version,
                value: value.clone(),
                ack_inbox_through: checked.session.ack_inbox_through,
                attributes: checked.session.attributes.clone(),
                user_ids: checked.session.user_ids.clone(),
            };
            saved_outcome(checked, save_session(state, principal, &save).await)
        }
    });
    let mut answers: Vec<SyncSessionAnswer> = join_all(saves).await;
    loop {
        let sessions_report = add_checks_and_messages(&state, &checked, &mut answers).await;
        let handoffs = take_pending(&*state.store, &holder).await?.requests;
        if sessions_report
            || !handoffs.is_empty()
            || !wait_for_a_wake(&state, &holder, &mut notifications, deadline).await
        {
            return Ok(Json(SyncAnswer { holder: holder_answer(&state, lease), sessions: answers, handoffs }));
        }
    }
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
