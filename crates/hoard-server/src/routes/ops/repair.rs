//! Repairs without kicking: restore a whole version or selected paths (with a preview), grant
//! or take items and currency through the player's inbox, free a stuck session, force-end one.
//!
//! Invariants:
//! - A restore writes on `Version(read) ∧ LeaseFree`: never under a live session (the player's
//!   next save would overwrite it, or it would overwrite theirs) and never over a newer version
//!   than the preview showed. A held key is repaired with a grant instead.
//! - A grant is an inbox message (`hoard::liveops::grant::OperatorGrant::message`,
//!   `{"hoard_grant": {...}}`), pushed without touching the lease: the holding session (or the
//!   next one) applies it (`hoard::liveops::grant::apply_grant_message` in an engine game's
//!   handler) and acknowledges it in one save, so it is applied exactly once and nobody is
//!   kicked. The grant id is recorded in the same commit (`hoard.grants`, `Condition::Absent`),
//!   so a retried grant (same id) is never sent twice; the grant id is this route's idempotency
//!   key (it reads no `Idempotency-Key` header).
//! - Freeing takes the key only from a holder whose process lease has lapsed; force-ending
//!   fences a live holder out (it can never write the key again).

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use hoard::liveops::diff::{diff, restore_paths};
use hoard::liveops::grant::OperatorGrant;
use hoard::store::{Commit, CommitOutcome, Condition, ConflictKind, DocId, Key, LeaseOp, StoreName, ValueOp, Write};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::audit;
use super::history::value_at;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::routes::{doc_id, path_error};
use crate::state::AppState;

/// The store recording grant ids, keyed `{store}/{key}/{grant id}`.
pub const GRANT_STORE: &str = "hoard.grants";
/// Longest grant id.
pub const GRANT_ID_BYTES_MAX: usize = 128;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/ops/stores/{store}/keys/{key}/restore", post(restore))
        .route("/v1/ops/stores/{store}/keys/{key}/grant", post(grant))
        .route("/v1/ops/stores/{store}/keys/{key}/free", post(free))
        .route("/v1/ops/stores/{store}/keys/{key}/force_end", post(force_end))
}

/// A restore.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    /// The past version to restore from.
    pub version: u64,
    /// Only these JSON pointers are taken from it (the rest stays as it is now) …
    #[serde(default)]
    pub paths: Vec<String>,
    /// … or everything but these ("everything but purchases").
    #[serde(default)]
    pub except: Vec<String>,
    /// Answer what would be written, and write nothing.
    #[serde(default)]
    pub preview: bool,
}

/// Restores a version, whole or by paths (operator); `preview` shows the value and the diff.
#[utoipa::path(post, path = "/v1/ops/stores/{store}/keys/{key}/restore", tag = "liveops", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path)), request_body = RestoreBody,
    responses((status = 200, description = "`proposed`, `changes`, and (not a preview) the new `version`"),
        (status = 409, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody)))]
pub async fn restore(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
    body: ApiJson<RestoreBody>,
) -> Result<Json<Value>, ApiError> {
    principal.require_repair()?;
    let Path((store, key)) = path.map_err(path_error)?;
    principal.may_administer(&store)?;
    let id = doc_id(&store, &key, state.store.limits())?;
    let RestoreBody { version, paths, except, preview } = body.value;
    let current = hoard::store::get(&*state.store, &id).await?;
    let old = value_at(&*state.store, &id, version).await?;
    let proposed = if paths.is_empty() && except.is_empty() {
        old
    } else {
        let (Some(now), Some(old)) = (current.value.as_ref(), old.as_ref()) else {
            return Err(ApiError::bad_request("restoring paths needs a value now and in that version"));
        };
        Some(restore_paths(now, old, &paths, &except).map_err(ApiError::bad_request)?)
    };
    let changes = diff(current.value.as_ref(), proposed.as_ref());
    if preview {
        return Ok(Json(
            json!({ "preview": true, "current_version": current.version, "proposed": proposed, "changes": changes }),
        ));
    }
    let value = match proposed.clone() {
        Some(value) => ValueOp::Put(value),
        None => ValueOp::Delete,
    };
    let condition = Condition::All(vec![Condition::Version(current.version), Condition::LeaseFree]);
    let write = Write::new(id.clone()).when(condition).value(value);
    match state.store.commit(Commit::single(write)).await? {
        CommitOutcome::Committed { applied, .. } => {
            let after = applied.first().map(|a| a.version);
            let detail =
                format!("from version {version}; paths {paths:?}; except {except:?}; {} changes", changes.len());
            audit(&state, &principal, "restore", Some(&id), (Some(current.version), after), detail).await;
            Ok(Json(json!({ "preview": false, "version": after, "proposed": proposed, "changes": changes })))
        }
        CommitOutcome::Conflict(conflict) if conflict.kind == ConflictKind::LeaseHeld => Err(ApiError::conflict(
            "held",
            "a session holds the key: grant through its inbox instead, or force-end the session first",
        )),
        CommitOutcome::Conflict(_) => {
            Err(ApiError::conflict("changed", "the key changed since the preview; preview again"))
        }
    }
}

/// A grant (or, with negative amounts, a take).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// Unique per grant: a retry with the same id sends nothing twice.
    pub grant_id: String,
    /// Currency name → amount (negative takes).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub currencies: serde_json::Map<String, Value>,
    /// Item id → item data to add.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub items: serde_json::Map<String, Value>,
    /// Item ids to take.
    #[serde(default)]
    pub take_items: Vec<String>,
    /// Why (kept in the audit log).
    #[serde(default)]
    pub reason: String,
}

/// Grants or takes items and currency through the player's inbox (operator): online or not,
/// the holding session applies it exactly once; nobody is kicked.
#[utoipa::path(post, path = "/v1/ops/stores/{store}/keys/{key}/grant", tag = "liveops", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path)), request_body = GrantBody,
    responses((status = 200, description = "`sent` (false: this grant id was sent before), `seq`"),
        (status = 409, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn grant(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
    body: ApiJson<GrantBody>,
) -> Result<Json<Value>, ApiError> {
    principal.require_repair()?;
    let Path((store, key)) = path.map_err(path_error)?;
    principal.may_administer(&store)?;
    let id = doc_id(&store, &key, state.store.limits())?;
    let grant = body.value;
    if grant.grant_id.is_empty() || grant.grant_id.len() > GRANT_ID_BYTES_MAX {
        return Err(ApiError::bad_request(format!("grant_id must be 1 to {GRANT_ID_BYTES_MAX} bytes")));
    }
    let mut currencies = std::collections::BTreeMap::new();
    for (currency, amount) in &grant.currencies {
        let Some(amount) = amount.as_i64() else {
            return Err(ApiError::bad_request("currency amounts must be integers"));
        };
        currencies.insert(currency.clone(), amount);
    }
    let record_id = DocId::new(
        StoreName::new(GRANT_STORE).map_err(ApiError::internal)?,
        Key::with_limits(format!("{}/{}/{}", id.store, id.key, grant.grant_id), state.store.limits())?,
    );
    let operator_grant = OperatorGrant {
        grant_id: grant.grant_id.clone(),
        currencies,
        items: grant.items.into_iter().collect(),
        take_items: grant.take_items,
        by: principal.name.clone(),
    };
    // What the grant moves, kept in its record: a replay must move the same (whoever sends it).
    let moves = json!({
        "currencies": operator_grant.currencies,
        "items": operator_grant.items,
        "take_items": operator_grant.take_items,
    });
    let message = operator_grant.message();
    let commit = Commit::new(vec![
        Write::new(id.clone()).push_message(message),
        Write::put(record_id.clone(), json!({ "by": principal.name, "reason": grant.reason, "moves": moves.clone() }))
            .when(Condition::Absent),
    ]);
    match state.store.commit(commit).await? {
        CommitOutcome::Committed { applied, .. } => {
            let seq = applied.first().and_then(|a| a.inbox_seqs.first().copied());
            let _ = state
                .store
                .notify(hoard::store::Notification {
                    topic: hoard::engine::TOPIC_INBOX.to_string(),
                    payload: serde_json::to_string(&id).map_err(ApiError::internal)?,
                })
                .await;
            crate::routes::events::announce_inbox_arrival(&*state.store, &id).await;
            let detail = format!("grant {} (inbox seq {seq:?}): {}", grant.grant_id, grant.reason);
            audit(&state, &principal, "grant", Some(&id), (None, None), detail).await;
            Ok(Json(json!({ "sent": true, "seq": seq })))
        }
        CommitOutcome::Conflict(conflict) if conflict.id == record_id => {
            // Sent before: the same grant again is a replay; another grant under its id is refused
            // (records written before they kept the message are taken as the same grant).
            let first = hoard::store::get(&*state.store, &record_id).await?;
            let same = first.value.as_ref().and_then(|record| record.get("moves")).is_none_or(|sent| *sent == moves);
            if !same {
                return Err(ApiError::conflict(
                    "grant_id_reused",
                    format!("grant id {} was used for a different grant; use a new id", grant.grant_id),
                ));
            }
            Ok(Json(json!({ "sent": false, "seq": null })))
        }
        CommitOutcome::Conflict(conflict) if conflict.kind == ConflictKind::InboxFull => {
            Err(ApiError::conflict("inbox_full", format!("the inbox of {id} is full")))
        }
        CommitOutcome::Conflict(conflict) => Err(ApiError::conflict("conflict", format!("{:?}", conflict.kind))),
    }
}

/// Frees a stuck session (operator): takes the key only from a holder whose process lease has
/// lapsed (a crashed server); a live holder is refused (409), use force_end.
#[utoipa::path(post, path = "/v1/ops/stores/{store}/keys/{key}/free", tag = "liveops", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path)),
    responses((status = 200, description = "`freed`"), (status = 409, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn free(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_repair()?;
    let Path((store, key)) = path.map_err(path_error)?;
    principal.may_administer(&store)?;
    let id = doc_id(&store, &key, state.store.limits())?;
    let document = hoard::store::get(&*state.store, &id).await?;
    let Some(holder) = document.lease.holder.clone() else { return Ok(Json(json!({ "freed": false }))) };
    let write = Write::new(id.clone()).when(Condition::LeaseFree).lease(LeaseOp::Release);
    match state.store.commit(Commit::single(write)).await? {
        CommitOutcome::Committed { .. } => {
            let _ = state.store.notify(hoard::engine::released_notification(&id)).await;
            audit(
                &state,
                &principal,
                "free_session",
                Some(&id),
                (Some(document.version), Some(document.version)),
                format!("holder {holder}"),
            )
            .await;
            Ok(Json(json!({ "freed": true, "holder": holder })))
        }
        CommitOutcome::Conflict(_) => {
            Err(ApiError::conflict("held", format!("{holder} is alive and holds the key; force_end fences it out")))
        }
    }
}

/// Force-ends a live session (operator): its holder is fenced out and can never write the key again.
#[utoipa::path(post, path = "/v1/ops/stores/{store}/keys/{key}/force_end", tag = "liveops", security(("api_key" = [])),
    params(("store" = String, Path), ("key" = String, Path)),
    responses((status = 200, description = "`ended`"), (status = 409, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn force_end(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_repair()?;
    let Path((store, key)) = path.map_err(path_error)?;
    principal.may_administer(&store)?;
    let id = doc_id(&store, &key, state.store.limits())?;
    let version = hoard::store::get(&*state.store, &id).await?.version;
    let ended = crate::routes::documents::fence_out_holder(&state, &id).await?;
    audit(&state, &principal, "force_end_session", Some(&id), (Some(version), Some(version)), format!("ended {ended}"))
        .await;
    Ok(Json(json!({ "ended": ended })))
}
