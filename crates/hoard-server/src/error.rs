//! The one error type of every route and its JSON form: `{"error": code, "message": text}`.
//!
//! Invariant: client errors explain themselves (what was wrong and what to send instead); server
//! errors say only that something failed and are logged here, so no internal detail (SQL, paths,
//! stack traces, other tenants' holders) ever reaches a response body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hoard::store::StoreError;
use serde::Serialize;

use crate::metrics;
use crate::wire::CurrentDocument;

/// An error answer. Every handler returns `Result<_, ApiError>`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable, machine-readable code (documented in the OpenAPI document).
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (rate limits, unavailable store).
    pub retry_after_s: Option<u64>,
    /// The key's stored state, on `stale` (409): what the write was not based on.
    pub current: Option<Box<CurrentDocument>>,
    /// On `quarantined` (409): the unreadable key, recorded in `hoard.quarantine` once the answer
    /// leaves (`routes::quarantine::record`).
    pub unreadable: Option<Box<hoard::store::Unreadable>>,
}

/// Put on an answer whose request met an unreadable key, for the quarantine recorder.
#[derive(Clone, Debug)]
pub struct MetUnreadable(pub Box<hoard::store::Unreadable>);

/// The JSON body of every error.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    /// With `stale` only: the key's stored document. Adopt it (rebase your unsaved changes onto
    /// its value) and write again with its `version` as `base_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<CurrentDocument>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after_s: None, current: None, unreadable: None }
    }

    /// 409 `stale`: the write was based on `base_version`, but the key is at `current.version`
    /// (a trade, grant or other change the client has not adopted). Nothing was written.
    pub fn stale(base_version: u64, current: CurrentDocument) -> ApiError {
        metrics::count(metrics::CONFLICTS, "stale");
        let message = format!(
            "{}/{} is at version {}, not the base_version {base_version} this write was based on; nothing was written; \
             adopt `current` (rebase your unsaved changes onto its value) and write again with base_version {}",
            current.store, current.key, current.version, current.version
        );
        ApiError { current: Some(Box::new(current)), ..ApiError::conflict("stale", message) }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key; send the header `Authorization: Bearer <key>`",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn rate_limited(retry_after_s: u64) -> ApiError {
        ApiError {
            retry_after_s: Some(retry_after_s.max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "this API key sent more requests than its rate limit allows; retry after the Retry-After delay",
            )
        }
    }

    /// A failure that is not the caller's: logged in full, answered without detail.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(detail = %detail, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the server failed; nothing to fix in the request")
    }

    /// The store failed or may have: the caller retries (with the same Idempotency-Key).
    pub fn store(error: StoreError) -> ApiError {
        match error {
            StoreError::InvalidInput(invalid) => ApiError::bad_request(invalid.to_string()),
            StoreError::Unavailable { message } => {
                metrics::store_error("unavailable");
                tracing::warn!(%message, "store unavailable");
                ApiError {
                    retry_after_s: Some(1),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        "the store is unavailable; nothing was applied; retry",
                    )
                }
            }
            StoreError::OutcomeUnknown { message } => {
                metrics::store_error("outcome_unknown");
                tracing::warn!(%message, "commit outcome unknown");
                ApiError {
                    retry_after_s: Some(1),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "outcome_unknown",
                        "the store lost the answer: the change may have applied; retry with the same Idempotency-Key, or read back",
                    )
                }
            }
            StoreError::Closed => {
                metrics::store_error("closed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "the server is shutting down; retry on another",
                )
            }
            StoreError::Corrupt { message } => {
                metrics::store_error("corrupt");
                ApiError::internal(format!("corrupt stored data: {message}"))
            }
            // Only opening a store refuses a database; a store that is serving never answers it.
            StoreError::WrongDatabase { message } => {
                metrics::store_error("wrong_database");
                ApiError::internal(format!("the store refused its database: {message}"))
            }
            StoreError::Unreadable(unreadable) => {
                metrics::store_error("unreadable");
                tracing::error!(key = %unreadable.id, field = unreadable.field, reason = %unreadable.reason, "unreadable stored data; quarantined");
                let message = format!(
                    "the stored {} of {} cannot be read ({}); it is quarantined for an operator: \
                     GET /v1/stores/{}/keys/{}/raw shows it, POST .../repair replaces it",
                    unreadable.field, unreadable.id, unreadable.reason, unreadable.id.store, unreadable.id.key
                );
                ApiError { unreadable: Some(unreadable), ..ApiError::conflict("quarantined", message) }
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        ApiError::store(error)
    }
}

impl From<hoard::store::InvalidInput> for ApiError {
    fn from(error: hoard::store::InvalidInput) -> ApiError {
        ApiError::bad_request(error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: self.code.to_string(), message: self.message, current: self.current.map(|c| *c) };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(unreadable) = self.unreadable {
            response.extensions_mut().insert(MetUnreadable(unreadable));
        }
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
