//! Fenced session writes: save, end and the multi-session commit, each conditional on the
//! token's lease *and* on the version the client's value was based on (`base_version`). The
//! batched calls (`routes::batch`) run the same functions per session.
//!
//! Invariants:
//! - Every write is `Condition::All[Lease{holder, epoch}, Version(base_version)]`. Over HTTP the
//!   game server holds the profile and this service holds nothing, so the lease alone cannot
//!   tell a current value from a stale one (an autosave in flight across a trade, a client that
//!   has not adopted a grant): the version can. A write based on a version the key has moved
//!   past is refused as `stale` with the current document, and nothing changes.
//! - The lease is checked first, so a token that lost its key is told `fenced_out` (the session
//!   is over), never `stale` (adopt and write again).
//! - A retry of a write that applied but whose answer was lost is recognized by reading back:
//!   when the stored state is exactly what the write asked for, it answers as the first attempt
//!   did (`replayed: true`) and writes nothing. Anything else is `stale` or `fenced_out`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use hoard::engine::released_notification;
use hoard::store::{
    Commit, CommitOutcome, Condition, ConflictKind, DocId, Document, HolderId, LeaseOp, ValueOp, Write, get as read_doc,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::sessions::{fence, fenced_out, holds};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::state::AppState;
use crate::wire::{CurrentDocument, SessionToken, is_false};
use crate::{idempotency, metrics};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/sessions/save", post(save))
        .route("/v1/sessions/end", post(end))
        .route("/v1/sessions/read", post(read))
        .route("/v1/sessions/commit", post(commit_many))
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveBody {
    pub token: SessionToken,
    /// The version `value` is based on: from the start answer, or from the last answer adopted
    /// (a save's, a trade's, a receipt's, a sync's, a `stale` answer's `current`). Required.
    pub base_version: u64,
    /// The whole new value.
    #[schema(value_type = Object)]
    pub value: Value,
    /// Inbox messages applied by this value: removed in the same commit.
    pub ack_inbox_through: Option<u64>,
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Map<String, Value>>,
    pub user_ids: Option<Vec<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SaveAnswer {
    /// The key's version now: the `base_version` of the session's next write.
    pub version: u64,
    /// Highest inbox sequence still waiting (0: none): more messages arrived when non-zero.
    pub inbox_last_waiting_seq: u64,
    /// True when this was a retry of a save that had already applied (nothing written now).
    #[serde(default, skip_serializing_if = "is_false")]
    pub replayed: bool,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndBody {
    pub token: SessionToken,
    /// The version the final value (or, without one, the session's last adopted state) is
    /// based on. Required.
    pub base_version: u64,
    /// The final value; absent: end without saving again.
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    pub ack_inbox_through: Option<u64>,
    /// Replaces the attributes in the final write.
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Map<String, Value>>,
    /// Replaces the user ids in the final write.
    pub user_ids: Option<Vec<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EndAnswer {
    pub ended: bool,
    /// The key's version after the final save.
    pub version: u64,
    /// True when this was a retry of an end that had already applied (nothing written now).
    #[serde(default, skip_serializing_if = "is_false")]
    pub replayed: bool,
}

/// The fence of a session write: the token's lease, then the version the value is based on.
fn fenced_on(state: &AppState, lease: Condition, base_version: u64) -> Condition {
    // The simulator's weakened control only (never compiled into a release build).
    #[cfg(feature = "sim-controls")]
    if state.lease_only_session_fence {
        return lease;
    }
    let _ = state;
    Condition::All(vec![lease, Condition::Version(base_version)])
}

fn save_write(state: &AppState, id: DocId, lease: Condition, save: &SaveBody) -> Write {
    let mut write = Write::put(id, save.value.clone()).when(fenced_on(state, lease, save.base_version));
    write.attributes = save.attributes.clone();
    write.user_ids = save.user_ids.clone();
    write.inbox_ack_through = save.ack_inbox_through;
    write
}

/// No message the write acknowledged is still waiting.
fn acknowledged(document: &Document, ack_inbox_through: Option<u64>) -> bool {
    ack_inbox_through.is_none_or(|through| document.inbox.iter().all(|message| message.seq > through))
}

/// The stored state is exactly what this save asked for, at a version past its base: the save
/// applied before (its answer was lost), or something else wrote the very same state. Either
/// way the client's state is the stored state, so answering `saved` loses nothing.
fn save_already_applied(document: &Document, lease: &Condition, save: &SaveBody) -> bool {
    holds(document, lease)
        && document.version > save.base_version
        && document.value.as_ref() == Some(&save.value)
        && save.attributes.as_ref().is_none_or(|attributes| &document.attributes == attributes)
        && save.user_ids.as_ref().is_none_or(|user_ids| &document.user_ids == user_ids)
        && acknowledged(document, save.ack_inbox_through)
}

/// The key was released at the token's epoch with the final value (if any) stored: this end
/// applied before, and nobody has taken the key since.
fn end_already_applied(document: &Document, token: &SessionToken, end: &EndBody) -> bool {
    document.lease.holder.is_none()
        && document.lease.epoch == token.epoch
        && end.value.as_ref().is_none_or(|value| document.value.as_ref() == Some(value))
        && end.attributes.as_ref().is_none_or(|attributes| &document.attributes == attributes)
        && end.user_ids.as_ref().is_none_or(|user_ids| &document.user_ids == user_ids)
        && acknowledged(document, end.ack_inbox_through)
}

fn inbox_last_waiting_seq(document: &Document) -> u64 {
    document.inbox.last().map_or(0, |message| message.seq)
}

fn other_conflict(kind: ConflictKind, id: &DocId) -> ApiError {
    ApiError::conflict("conflict", format!("{kind:?} on {id}"))
}

/// Saves one session's value, fenced by its token and `base_version`.
pub async fn save_session(state: &AppState, principal: &Principal, save: &SaveBody) -> Result<SaveAnswer, ApiError> {
    let (id, lease) = fence(principal, &save.token, state)?;
    let write = save_write(state, id.clone(), lease.clone(), save);
    match state.store.commit(Commit::single(write)).await? {
        CommitOutcome::Committed { applied, .. } => {
            metrics::count(metrics::SAVES, "saved");
            let applied = applied.first().ok_or_else(|| ApiError::internal("commit applied no write"))?;
            Ok(SaveAnswer {
                version: applied.version,
                inbox_last_waiting_seq: applied.inbox_last_waiting_seq,
                replayed: false,
            })
        }
        CommitOutcome::Conflict(conflict) if conflict.kind == ConflictKind::LeaseMismatch => Err(fenced_out(&id)),
        CommitOutcome::Conflict(conflict) if conflict.kind == ConflictKind::VersionMismatch => {
            let document = read_doc(&*state.store, &id).await?;
            if !holds(&document, &lease) {
                return Err(fenced_out(&id));
            }
            if save_already_applied(&document, &lease, save) {
                metrics::count(metrics::SAVES, "replayed");
                return Ok(SaveAnswer {
                    version: document.version,
                    inbox_last_waiting_seq: inbox_last_waiting_seq(&document),
                    replayed: true,
                });
            }
            Err(ApiError::stale(save.base_version, CurrentDocument::of(document)))
        }
        CommitOutcome::Conflict(conflict) => Err(other_conflict(conflict.kind, &conflict.id)),
    }
}

/// Ends one session: the final save (if a value is given) and the release, in one commit
/// fenced by the token and `base_version`.
pub async fn end_session(state: &AppState, principal: &Principal, end: &EndBody) -> Result<EndAnswer, ApiError> {
    let (id, lease) = fence(principal, &end.token, state)?;
    let mut write =
        Write::new(id.clone()).when(fenced_on(state, lease.clone(), end.base_version)).lease(LeaseOp::Release);
    if let Some(value) = &end.value {
        write = write.value(ValueOp::Put(value.clone()));
    }
    write.inbox_ack_through = end.ack_inbox_through;
    write.attributes = end.attributes.clone();
    write.user_ids = end.user_ids.clone();
    match state.store.commit(Commit::single(write)).await? {
        CommitOutcome::Committed { applied, .. } => {
            metrics::session_ended();
            // Best effort: a waiting starter also polls.
            let _ = state.store.notify(released_notification(&id)).await;
            let version =
                applied.first().map(|a| a.version).ok_or_else(|| ApiError::internal("commit applied no write"))?;
            Ok(EndAnswer { ended: true, version, replayed: false })
        }
        CommitOutcome::Conflict(conflict)
            if matches!(conflict.kind, ConflictKind::LeaseMismatch | ConflictKind::VersionMismatch) =>
        {
            let document = read_doc(&*state.store, &id).await?;
            if conflict.kind == ConflictKind::LeaseMismatch || !holds(&document, &lease) {
                if end_already_applied(&document, &end.token, end) {
                    metrics::count(metrics::SAVES, "end_replayed");
                    return Ok(EndAnswer { ended: true, version: document.version, replayed: true });
                }
                return Err(fenced_out(&id));
            }
            Err(ApiError::stale(end.base_version, CurrentDocument::of(document)))
        }
        CommitOutcome::Conflict(conflict) => Err(other_conflict(conflict.kind, &conflict.id)),
    }
}

/// Saves the session's value, fenced by its token and by `base_version`.
#[utoipa::path(post, path = "/v1/sessions/save", tag = "sessions", security(("api_key" = [])), request_body = SaveBody,
    responses((status = 200, body = SaveAnswer),
        (status = 409, body = ErrorBody, description = "fenced_out (the session is over), or stale (with `current`: adopt it and save again)"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn save(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<SaveBody>,
) -> Result<Json<SaveAnswer>, ApiError> {
    save_session(&state, &principal, &body.value).await.map(Json)
}

/// Ends the session: the final save (if a value is given) and the release, in one commit fenced
/// by its token and by `base_version`.
#[utoipa::path(post, path = "/v1/sessions/end", tag = "sessions", security(("api_key" = [])), request_body = EndBody,
    responses((status = 200, body = EndAnswer),
        (status = 409, body = ErrorBody, description = "fenced_out, or stale (with `current`: adopt it and end again)"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn end(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: ApiJson<EndBody>,
) -> Result<Json<EndAnswer>, ApiError> {
    end_session(&state, &principal, &body.value).await.map(Json)
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
    /// Saves of several sessions, applied all or none, each fenced by its token and its
    /// `base_version`.
    pub saves: Vec<SaveBody>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CommitManyAnswer {
    pub committed: bool,
    pub commit_id: String,
    #[schema(value_type = Vec<Object>)]
    pub keys: Vec<DocId>,
    /// Each key's version now, in the order of `saves`.
    pub versions: Vec<u64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub replayed: bool,
}

/// After a conflict of a multi-session commit: a retry of a commit that applied (every key holds
/// exactly what was asked), or the first key that is fenced out, or else stale.
async fn settle_commit_conflict(
    state: &AppState,
    fenced: &[(DocId, Condition)],
    saves: &[SaveBody],
    commit_id: String,
) -> Result<CommitManyAnswer, ApiError> {
    let ids: Vec<DocId> = fenced.iter().map(|(id, _)| id.clone()).collect();
    let documents = state.store.get_many(&ids).await?;
    if let Some(((id, _), _)) = fenced.iter().zip(&documents).find(|((_, lease), document)| !holds(document, lease)) {
        return Err(fenced_out(id));
    }
    let applied = fenced
        .iter()
        .zip(&documents)
        .zip(saves)
        .all(|(((_, lease), document), save)| save_already_applied(document, lease, save));
    if applied {
        return Ok(CommitManyAnswer {
            committed: true,
            commit_id,
            versions: documents.iter().map(|document| document.version).collect(),
            keys: ids,
            replayed: true,
        });
    }
    let stale = documents.into_iter().zip(saves).find(|(document, save)| document.version != save.base_version);
    match stale {
        Some((document, save)) => Err(ApiError::stale(save.base_version, CurrentDocument::of(document))),
        None => Err(ApiError::conflict("conflict", "the commit conflicted but every key is as it was based; retry")),
    }
}

/// Saves several sessions in one atomic commit (all or none), each fenced by its token and its
/// `base_version`. Takes an `Idempotency-Key` header.
#[utoipa::path(post, path = "/v1/sessions/commit", tag = "sessions", security(("api_key" = [])), request_body = CommitManyBody,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommitManyAnswer), (status = 409, body = ErrorBody, description = "fenced_out, or stale (with `current` of the first stale key)"),
        (status = 422, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn commit_many(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    headers: HeaderMap,
    body: ApiJson<CommitManyBody>,
) -> Result<Json<Value>, ApiError> {
    let store = &*state.store;
    let idem = idempotency::from_headers(&headers, &principal, "commit", "", &body.digest, store.limits())?;
    let saves = &body.value.saves;
    let mut fenced = Vec::with_capacity(saves.len());
    let mut writes = Vec::with_capacity(saves.len() + 1);
    for save in saves {
        let (id, lease) = fence(&principal, &save.token, &state)?;
        writes.push(save_write(&state, id.clone(), lease.clone(), save));
        fenced.push((id, lease));
    }
    if writes.is_empty() {
        return Err(ApiError::bad_request("give at least one save"));
    }
    if let Some(first) = idempotency::replay(store, idem.as_ref()).await? {
        return Ok(Json(first));
    }
    let commit = Commit::new(writes);
    // Each write is conditional on its base version and puts a value, so it makes exactly the
    // next version: the answer is known before the commit, and the record can hold it.
    let answer = CommitManyAnswer {
        committed: true,
        commit_id: commit.id.to_string(),
        keys: fenced.iter().map(|(id, _)| id.clone()).collect(),
        versions: saves.iter().map(|save| save.base_version.saturating_add(1)).collect(),
        replayed: false,
    };
    let response = serde_json::to_value(&answer).map_err(ApiError::internal)?;
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
        CommitOutcome::Conflict(conflict)
            if matches!(conflict.kind, ConflictKind::LeaseMismatch | ConflictKind::VersionMismatch) =>
        {
            let settled = settle_commit_conflict(&state, &fenced, saves, answer.commit_id).await?;
            Ok(Json(serde_json::to_value(settled).map_err(ApiError::internal)?))
        }
        CommitOutcome::Conflict(conflict) => Err(other_conflict(conflict.kind, &conflict.id)),
    }
}
