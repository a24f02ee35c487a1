//! Liveness, readiness, metrics and the OpenAPI document.
//!
//! Invariant: `/healthz` and `/readyz` need no key and say nothing but ok / not ready (load
//! balancers cannot send keys); everything else here needs a key of any scope.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// How long `/readyz` waits for the store's clock before saying not ready.
pub const READY_STORE_TIMEOUT_MS: u64 = 2_000;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

pub fn authed_routes() -> Router<Arc<AppState>> {
    Router::new().route("/metrics", get(metrics)).route("/v1/openapi.json", get(openapi))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "up")))]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// The process takes traffic: not shutting down, and the store answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready"), (status = 503, description = "shutting down or store unreachable")))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    if !state.ready.load(Ordering::SeqCst) {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down"));
    }
    let probe = tokio::time::timeout(Duration::from_millis(READY_STORE_TIMEOUT_MS), state.store.now_ms()).await;
    match probe {
        Ok(Ok(_)) => Ok(Json(json!({ "status": "ready" }))),
        _ => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the store does not answer")),
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("api_key" = [])),
    responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub async fn metrics(State(state): State<Arc<AppState>>, _principal: Principal) -> impl IntoResponse {
    let text = state.metrics.as_ref().map(|handle| handle.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations", security(("api_key" = [])),
    responses((status = 200, description = "OpenAPI 3.1 document")))]
pub async fn openapi(_principal: Principal) -> impl IntoResponse {
    Json(crate::openapi::document())
}
