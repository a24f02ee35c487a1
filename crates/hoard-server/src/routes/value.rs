//! Inbox messages over HTTP, and what every value-moving route shares: committing with a lost
//! answer resolved by reading back. Trades are `routes::trades`, receipts `routes::receipts`.
//!
//! Invariants:
//! - A message is pushed into the key's inbox (exactly once with an `Idempotency-Key`); the
//!   holder applies it and acknowledges it in a save (G7). A full inbox refuses; nothing is
//!   dropped.
//! - A commit whose outcome is unknown is resolved by reading back before anything is answered.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use hoard::engine::TOPIC_INBOX;
use hoard::store::{
    Commit, CommitOutcome, Conflict, ConflictKind, Notification, Store, StoreError, Write, resolve_unknown_commit,
};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;
use crate::{idempotency, metrics};

/// The field of a message envelope naming its unique id (the library's).
pub const MESSAGE_FIELD_ID: &str = hoard::engine::inbox::MESSAGE_ID_FIELD;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/stores/{store}/keys/{key}/messages", post(send_message))
        .merge(super::trades::routes())
        .merge(super::cross_trades::routes())
        .merge(super::receipts::routes())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    /// The message, delivered in the player's inbox (wrapped as `{"message_id", "body"}`).
    #[schema(value_type = Object)]
    pub body: Value,
}

/// Sends a message to a key's inbox, whether its player is offline, here or on another server;
/// the holder applies it and acknowledges it in a save (G7). A full inbox refuses (409
/// `inbox_full`); nothing is dropped. Takes an `Idempotency-Key` header.
#[utoipa::path(post, path = "/v1/stores/{store}/keys/{key}/messages", tag = "value", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = MessageBody,
    responses((status = 200, description = "message id and sequence"), (status = 409, body = crate::error::ErrorBody),
        (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn send_message(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: ApiJson<MessageBody>,
) -> Result<Json<Value>, ApiError> {
    let Path((store_name, key)) = path.map_err(super::path_error)?;
    principal.may_play(&store_name)?;
    let store = &*state.store;
    let id = super::doc_id(&store_name, &key, store.limits())?;
    let idem =
        idempotency::from_headers(&headers, &principal, "message", &id.to_string(), &body.digest, store.limits())?;
    if let Some(first) = idempotency::replay(store, idem.as_ref()).await? {
        return Ok(Json(first));
    }
    let message_id = uuid::Uuid::now_v7().to_string();
    let envelope = json!({ MESSAGE_FIELD_ID: message_id, "body": body.value.body });
    let response = json!({ "message_id": message_id });
    let mut writes = vec![Write::new(id.clone()).push_message(envelope)];
    if let Some(idem) = &idem {
        writes.push(idempotency::record_write(idem, &response));
    }
    match store.commit(Commit::new(writes)).await {
        Ok(CommitOutcome::Committed { applied, .. }) => {
            metrics::count(metrics::MESSAGES, "sent");
            let payload = serde_json::to_string(&id).map_err(ApiError::internal)?;
            if let Err(error) = store.notify(Notification { topic: TOPIC_INBOX.to_string(), payload }).await {
                metrics::gave_up("notifying a message", &error);
            }
            super::events::announce_inbox_arrival(store, &id).await;
            let seq = applied.first().and_then(|a| a.inbox_seqs.first().copied());
            Ok(Json(json!({ "message_id": message_id, "seq": seq })))
        }
        Ok(CommitOutcome::Conflict(conflict)) if idempotency::lost_the_race(idem.as_ref(), &conflict) => {
            let first = idempotency::replay(store, idem.as_ref()).await?;
            first.map(Json).ok_or_else(|| ApiError::internal("idempotency record vanished"))
        }
        Ok(CommitOutcome::Conflict(conflict)) if conflict.kind == ConflictKind::InboxFull => Err(ApiError::conflict(
            "inbox_full",
            format!("the inbox of {id} is full; the player must come online before more messages fit"),
        )),
        Ok(CommitOutcome::Conflict(conflict)) => Err(ApiError::conflict("conflict", format!("{:?}", conflict.kind))),
        Err(StoreError::InvalidInput(error)) => Err(ApiError::bad_request(error.to_string())),
        Err(error) => Err(ApiError::store(error)),
    }
}

/// How a value-moving commit ended, once any lost answer was resolved by reading back.
#[derive(Debug)]
pub enum Settled {
    /// `at_ms`: the store's commit time (`None` when the answer was lost and read back).
    Committed {
        at_ms: Option<i64>,
    },
    Conflict(Conflict),
}

/// Commits, resolving an unknown outcome by reading the commit back before answering.
/// `Ok(None)`: it did not apply, so the caller may build the commit again and retry.
pub async fn commit_settling_unknown(store: &dyn Store, commit: Commit) -> Result<Option<Settled>, ApiError> {
    match store.commit(commit.clone()).await {
        Ok(CommitOutcome::Committed { at_ms, .. }) => Ok(Some(Settled::Committed { at_ms: Some(at_ms) })),
        Ok(CommitOutcome::Conflict(conflict)) => Ok(Some(Settled::Conflict(conflict))),
        Err(error) if error.may_have_applied() => match resolve_unknown_commit(store, &commit).await {
            Ok(Some(true)) => Ok(Some(Settled::Committed { at_ms: None })),
            Ok(Some(false)) => Ok(None),
            _ => Err(ApiError::store(error)),
        },
        Err(error) => Err(ApiError::store(error)),
    }
}
