//! Roblox's right-to-erasure webhook (`POST /v1/webhooks/roblox/erasure`), keyless: the body's
//! HMAC-SHA256 signature (`roblox-signature: t=<unix s>,v1=<base64>`, over `t + "." + body`,
//! with `roblox_webhook_secret`) is the authentication.
//!
//! Invariants:
//! - Nothing is read or written before the signature checks out and its timestamp is within
//!   `WEBHOOK_TIMESTAMP_TOLERANCE_S` of the store's clock (a replayed capture is stale).
//! - A request is recorded durably (`hoard.erasure_requests/<NotificationId>`, written with
//!   `Condition::Absent`) before it is answered 2xx: Roblox's retries of one notification find
//!   the record and are answered at once without erasing twice. Processing runs in its own
//!   task, waited for at most `WEBHOOK_PROCESS_WAIT_MS` (Roblox wants an answer within 5 s);
//!   past that it goes on in the background, and `resume_pending` (at `hoard serve` start)
//!   finishes any request a crash left pending. Erasure is idempotent, so finishing twice is
//!   harmless.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use hoard::liveops::erase::erase_user;
use hoard::store::{Commit, CommitOutcome, Condition, DocId, Key, ListQuery, Store, StoreName, Write};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

/// Where webhook requests are recorded, by notification id.
pub const ERASURE_REQUEST_STORE: &str = "hoard.erasure_requests";
/// How far a signature's timestamp may be from the store's clock.
pub const WEBHOOK_TIMESTAMP_TOLERANCE_S: i64 = 300;
/// How long the webhook waits for its erasure before answering 202 and finishing in the background.
pub const WEBHOOK_PROCESS_WAIT_MS: u64 = 3_000;
/// Longest notification id.
pub const NOTIFICATION_ID_BYTES_MAX: usize = 128;
/// The actor recorded for webhook erasures.
pub const WEBHOOK_ACTOR: &str = "roblox-webhook";

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/webhooks/roblox/erasure", post(roblox_erasure))
}

/// Checks `roblox-signature` for `body` against `secret` at `now_s`.
pub fn verify_signature(header: &str, body: &[u8], secret: &str, now_s: i64) -> Result<(), &'static str> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.push(value.to_string()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("roblox-signature has no t=<unix seconds>")?;
    if signatures.is_empty() {
        return Err("roblox-signature has no v1=<signature>");
    }
    if (now_s - timestamp).abs() > WEBHOOK_TIMESTAMP_TOLERANCE_S {
        return Err("roblox-signature is stale (its timestamp is too far from now)");
    }
    for signature in signatures {
        let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(signature.as_bytes()) else { continue };
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| "bad secret")?;
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        // Constant-time comparison.
        if mac.verify_slice(&expected).is_ok() {
            return Ok(());
        }
    }
    Err("roblox-signature does not match the body")
}

fn requests_store() -> StoreName {
    StoreName::new(ERASURE_REQUEST_STORE).expect("a valid internal store name")
}

/// Receives a Roblox webhook notification; erases on `RightToErasureRequest`.
#[utoipa::path(post, path = "/v1/webhooks/roblox/erasure", tag = "liveops",
    params(("roblox-signature" = String, Header)),
    request_body(content = Object, description = "Roblox's notification: {NotificationId, EventType, EventPayload: {UserId, GameIds}}"),
    responses((status = 200, description = "erased, a duplicate, or an event ignored"),
        (status = 202, description = "recorded; the erasure finishes in the background"),
        (status = 401, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
        (status = 400, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub async fn roblox_erasure(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let header = headers
        .get("roblox-signature")
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", "no roblox-signature header"))?;
    let Some(secret) = state.config.roblox_webhook_secret.as_deref() else {
        return Err(ApiError::not_found("the Roblox webhook is not configured (roblox_webhook_secret)"));
    };
    let now_s = state.store.now_ms().await? / 1_000;
    verify_signature(header, &body, secret, now_s)
        .map_err(|why| ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", why))?;
    let notification: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    let notification_id = notification
        .get("NotificationId")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.len() <= NOTIFICATION_ID_BYTES_MAX)
        .ok_or_else(|| ApiError::bad_request("NotificationId must be a string of 1 to 128 bytes"))?;
    if notification.get("EventType").and_then(Value::as_str) != Some("RightToErasureRequest") {
        return Ok(Json(json!({ "ignored": true })).into_response());
    }
    let user_id = match notification.pointer("/EventPayload/UserId") {
        Some(Value::Number(number)) => number.to_string(),
        Some(Value::String(text)) => text.clone(),
        _ => return Err(ApiError::bad_request("EventPayload.UserId is missing")),
    };
    let user_id = format!("{}{user_id}", state.config.roblox_user_id_prefix);
    hoard::liveops::erase::check_user_id(&user_id)?;
    let id = DocId::new(requests_store(), Key::with_limits(notification_id, state.store.limits())?);
    let record = json!({ "status": "pending", "user_id": user_id, "received_at_ms": now_s * 1_000,
                         "game_ids": notification.pointer("/EventPayload/GameIds") });
    match state.store.commit(Commit::single(Write::put(id.clone(), record).when(Condition::Absent))).await? {
        CommitOutcome::Committed { .. } => {}
        CommitOutcome::Conflict(_) => return Ok(Json(json!({ "duplicate": true })).into_response()),
    }
    let store = state.store.clone();
    let task = tokio::spawn(async move { process_request(&*store, &id).await });
    match tokio::time::timeout(Duration::from_millis(WEBHOOK_PROCESS_WAIT_MS), task).await {
        Ok(Ok(Ok(erasure_id))) => Ok(Json(json!({ "erased": true, "erasure_id": erasure_id })).into_response()),
        // Recorded: Roblox need not retry; the erasure finishes in the background or at restart.
        _ => Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": true }))).into_response()),
    }
}

/// Erases for one recorded request and marks it done; a request already done is left alone.
pub async fn process_request(store: &dyn Store, id: &DocId) -> Result<Option<String>, hoard::store::StoreError> {
    let document = hoard::store::get(store, id).await?;
    let Some(record) = document.value else { return Ok(None) };
    if record.get("status").and_then(Value::as_str) != Some("pending") {
        return Ok(record.get("erasure_id").and_then(Value::as_str).map(str::to_string));
    }
    let user_id = record.get("user_id").and_then(Value::as_str).unwrap_or_default().to_string();
    let tombstone = erase_user(store, &user_id, WEBHOOK_ACTOR, &format!("RightToErasureRequest {}", id.key)).await?;
    let mut done = record.clone();
    done["status"] = json!("done");
    done["erasure_id"] = json!(tombstone.erasure_id);
    let write = Write::put(id.clone(), done).when(Condition::Version(document.version));
    // A conflict means another process finished it meanwhile: erasure is idempotent.
    let _ = store.commit(Commit::single(write)).await?;
    Ok(Some(tombstone.erasure_id))
}

/// Finishes every request a crash left pending (called when `hoard serve` starts); returns how
/// many were finished.
pub async fn resume_pending(store: &dyn Store) -> Result<u64, hoard::store::StoreError> {
    let mut finished = 0;
    let mut after = None;
    loop {
        let page = store.list_keys(&requests_store(), &ListQuery { prefix: String::new(), after, limit: 0 }).await?;
        for key in &page.keys {
            let id = DocId::new(requests_store(), key.clone());
            let document = hoard::store::get(store, &id).await?;
            if document.value.as_ref().and_then(|v| v.get("status")).and_then(Value::as_str) == Some("pending") {
                process_request(store, &id).await?;
                finished += 1;
            }
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(finished),
        }
    }
}
