//! `sync`: one call per holder per interval, shaped for a request budget. It renews the holder's
//! lease, saves every dirty session (each the same fenced write as `/v1/sessions/save`, each
//! with its own outcome), and answers the sessions' new inbox messages and the holder's handoff
//! requests; with `wait_ms` it long-polls for them when there is nothing to report.
//!
//! Invariants:
//! - A fenced-out, stale, unreadable or failing session never fails the others.
//! - A malformed sync (over `SYNC_SESSIONS_MAX`, a token of another holder, a key twice, an ack,
//!   attributes or user ids without a value, `wait_ms` over the long-poll limit) is refused whole
//!   with 400 before anything is done.
//! - An answer carries at most `SYNC_INBOX_BYTES_MAX` of message bodies; the rest wait for the
//!   next sync (`inbox_more`).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use futures_util::future::join_all;
use hoard::store::validate::json_bytes;
use hoard::store::{Condition, DocId, Document, HolderId, InboxMessage};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::batch::{ErrorDetail, refuse_duplicates};
use super::events::{HandoffRequest, check_wait_ms, long_poll_deadline, take_pending, wait_for_a_wake};
use super::path_error;
use super::session_writes::{SaveAnswer, SaveBody, save_session};
use super::sessions::{HolderAnswer, fence, holder_answer, holds, parse_holder};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::state::AppState;
use crate::wire::{CurrentDocument, SessionToken, is_false};

/// Sessions in one `sync`.
pub const SYNC_SESSIONS_MAX: usize = 200;
/// Bytes of inbox message bodies one `sync` answer carries, in all; past it a session says
/// `inbox_more` and the next sync (with `inbox_seen_through`) carries the rest.
pub const SYNC_INBOX_BYTES_MAX: usize = 1024 * 1024;

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
    /// Whether the session sent a value: its value, attributes and user ids are moved out of
    /// `session` into its save (a profile is kilobytes of JSON tree, not worth a copy per save).
    saves: bool,
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
        checked.push(Checked { id, lease, saves: session.value.is_some(), session });
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
        if !checked.saves {
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
    let (mut checked, wait_ms) = check_sync(&state, &principal, &holder, body.value)?;
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
    // Moved into the saves; what is read afterwards (`saves`, the fence, versions, sequences)
    // stays in `checked`.
    let taken: Vec<_> = checked
        .iter_mut()
        .map(|checked| {
            let session = &mut checked.session;
            (session.value.take(), session.attributes.take(), session.user_ids.take())
        })
        .collect();
    let saves = checked.iter().zip(taken).map(|(checked, (value, attributes, user_ids))| {
        let state = &state;
        let principal = &principal;
        async move {
            // Checked against the stored document below, with the messages.
            let Some(value) = value else { return blank_answer(checked) };
            let save = SaveBody {
                token: checked.session.token.clone(),
                base_version: checked.session.base_version,
                value,
                ack_inbox_through: checked.session.ack_inbox_through,
                attributes,
                user_ids,
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
