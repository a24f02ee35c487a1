//! Idempotency keys for every route that moves value: the first answer is stored as a record,
//! written with `Condition::Absent` in the same commit as the change, and returned on replay.
//!
//! Invariants:
//! - A request and its record commit together or not at all, so a retry — after a client
//!   timeout, a lost answer, or a concurrent duplicate — finds either no record (nothing
//!   applied; it runs) or the record (it applied once; the first answer is returned).
//! - A record is bound to the API key (its holder prefix, which differs for a key re-created
//!   under a revoked key's name), the route, the target key and the body: the same
//!   `Idempotency-Key` with any other request is refused (422), never applied and never answered
//!   with another request's answer.
//! - A record holds no profile values (they can be megabytes deep inside an envelope, past the
//!   store's size and depth limits): routes that answer with values read them again on replay.

use axum::http::HeaderMap;
use hoard::store::{Condition, Conflict, ConflictKind, DocId, Key, Limits, Store, StoreName, Write, get};
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::metrics;

/// The named store of idempotency records, keyed `{holder prefix}{Idempotency-Key}` (one
/// namespace per API key: the same key on another route is another request, refused).
pub const IDEMPOTENCY_STORE: &str = "hoard.idempotency";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// A request's idempotency record address and the digest of its body.
#[derive(Clone, Debug)]
pub struct Idempotency {
    pub id: DocId,
    pub fingerprint: String,
}

/// Reads the `Idempotency-Key` header, if any.
pub fn from_headers(
    headers: &HeaderMap,
    principal: &Principal,
    route: &str,
    target: &str,
    digest: &str,
    limits: &Limits,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_HEADER) else { return Ok(None) };
    let text = value.to_str().map_err(|_| ApiError::bad_request("Idempotency-Key must be printable ASCII"))?;
    if text.is_empty() || text.len() > IDEMPOTENCY_KEY_BYTES_MAX || text.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} printable characters"
        )));
    }
    let store = StoreName::with_limits(IDEMPOTENCY_STORE, limits).map_err(ApiError::internal)?;
    let key = Key::with_limits(format!("{}{text}", principal.holder_prefix()), limits)
        .map_err(|e| ApiError::bad_request(format!("Idempotency-Key: {e}")))?;
    // The target (`store/key` of a path) is not in the body, so it is named apart; a body
    // digest is 64 hex digits, so the parts cannot run into one another.
    let fingerprint = format!("{route}:{digest}:{target}");
    Ok(Some(Idempotency { id: DocId::new(store, key), fingerprint }))
}

/// The first answer, when this key was used before (422 when used for another request).
pub async fn replay(store: &dyn Store, idempotency: Option<&Idempotency>) -> Result<Option<Value>, ApiError> {
    let Some(idempotency) = idempotency else { return Ok(None) };
    let document = get(store, &idempotency.id).await?;
    let Some(record) = document.value else { return Ok(None) };
    if record.get("fingerprint").and_then(Value::as_str) != Some(idempotency.fingerprint.as_str()) {
        return Err(ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request (another route, key or body); use a new key for a new request",
        ));
    }
    metrics::count(metrics::IDEMPOTENT_REPLAYS, "replayed");
    let mut response = record.get("response").cloned().unwrap_or(Value::Null);
    if let Some(object) = response.as_object_mut() {
        object.insert("replayed".into(), Value::Bool(true));
    }
    Ok(Some(response))
}

/// The record write that commits with the change.
pub fn record_write(idempotency: &Idempotency, response: &Value) -> Write {
    Write::put(idempotency.id.clone(), json!({ "fingerprint": idempotency.fingerprint, "response": response }))
        .when(Condition::Absent)
}

/// True when a commit failed because this request's record already exists (a concurrent
/// duplicate committed first): answer with `replay`.
pub fn lost_the_race(idempotency: Option<&Idempotency>, conflict: &Conflict) -> bool {
    idempotency.is_some_and(|i| i.id == conflict.id && conflict.kind == ConflictKind::Exists)
}
