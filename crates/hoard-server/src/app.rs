//! The router (every route with its layers) and the server loop with graceful shutdown.
//!
//! Invariants:
//! - Every route runs under a timeout, a body-size limit and a concurrency limit, and every
//!   error answer is JSON (`ErrorBody`), including the ones tower and axum make themselves.
//! - Every connection runs under the connection limit and the header-read timeout
//!   (`connections`).
//! - An answer that met an unreadable key leaves its quarantine record behind
//!   (`routes::quarantine::record`).
//! - Request bodies may be gzipped (`Content-Encoding: gzip`, as Roblox's HttpService sends
//!   them); the routes' body limits apply to the decompressed bytes, read as a stream, so a small
//!   compressed body cannot expand past them. Answers are gzipped when the request accepts it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tower::limit::ConcurrencyLimitLayer;
use tower_http::compression::CompressionLayer;
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::state::AppState;
use crate::{auth, connections, metrics, routes};

/// Builds the whole service for a state. Tests drive it in-process or on a socket.
pub fn router(state: Arc<AppState>) -> Router {
    let limits = state.config.limits.clone();
    // Keyless: the probes, the console's static assets (every call it makes carries a key) and
    // Roblox's webhook (its HMAC signature authenticates it).
    let public = routes::health::routes()
        .merge(routes::ops::console::routes())
        .merge(routes::ops::webhook::routes().layer(DefaultBodyLimit::max(limits.body_bytes_max)));
    let api = Router::new()
        .merge(routes::health::authed_routes())
        .merge(routes::documents::routes())
        .merge(routes::api_keys::routes())
        .merge(routes::sessions::routes())
        .merge(routes::value::routes())
        .merge(routes::updates::routes())
        .merge(routes::ops::routes())
        .layer(DefaultBodyLimit::max(limits.body_bytes_max));
    let raw = routes::raw::routes().layer(DefaultBodyLimit::max(limits.store_body_bytes_max));
    let authed = api.merge(raw).route_layer(from_fn_with_state(state.clone(), auth::require_key));
    public
        .merge(authed)
        .route_layer(from_fn(metrics::track))
        .fallback(|| async { ApiError::not_found("no such route; the API is described at /v1/openapi.json") })
        .layer(from_fn_with_state(state.clone(), routes::quarantine::record))
        .layer(from_fn(json_errors))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(limits.request_timeout_ms),
        ))
        // Inside the wire limit below and outside the routes' own limits (`DefaultBodyLimit`,
        // applied as the body is read): those count decompressed bytes.
        .layer(RequestDecompressionLayer::new().gzip(true))
        .layer(RequestBodyLimitLayer::new(limits.store_body_bytes_max))
        .layer(CompressionLayer::new().gzip(true))
        .layer(ConcurrencyLimitLayer::new(limits.concurrent_requests_max))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Gives the answers axum and tower make themselves (404, 405, 408, 413, …) our JSON body.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !status.is_client_error() && !status.is_server_error() || is_json {
        return response;
    }
    let error = match status {
        StatusCode::NOT_FOUND => ApiError::not_found("no such route; the API is described at /v1/openapi.json"),
        StatusCode::METHOD_NOT_ALLOWED => {
            ApiError::new(status, "method_not_allowed", "this route does not take that method")
        }
        StatusCode::REQUEST_TIMEOUT => ApiError::new(
            status,
            "timeout",
            "the request took longer than the server's timeout; retry (with the same Idempotency-Key)",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(status, "body_too_large", "the request body is over this route's size limit")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            status,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        _ if status.is_client_error() => ApiError::new(status, "bad_request", "the request was refused"),
        _ => ApiError::new(status, "internal", "the server failed; nothing to fix in the request"),
    };
    let mut answer = error.into_response();
    for name in [header::RETRY_AFTER, header::ALLOW, header::UPGRADE, header::CONNECTION] {
        if let Some(value) = response.headers().get(&name) {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    drop(response.into_body());
    answer
}

/// Serves until `shutdown` completes, then stops taking requests and gives those in flight (and
/// open WebSockets) up to `deadline` to finish (G9 for the service). Connections are accepted by
/// `connections::run`, under `connections_max` and `header_read_timeout_ms`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    deadline: Duration,
) -> std::io::Result<()> {
    let app = router(state.clone());
    // Runtime keys are read before the first request, so a restart accepts them at once; a
    // store that cannot be read yet leaves the configured keys, and the refresher tries again.
    if let Err(error) = crate::runtime_keys::refresh(&state).await {
        tracing::warn!(%error, "reading the runtime API keys failed; serving with the configured keys until a refresh succeeds");
    }
    let refresher = crate::runtime_keys::spawn_refresher(&state);
    let (begin_shutdown, shutdown_begun) = tokio::sync::oneshot::channel::<()>();
    let signal_state = state.clone();
    let limits = state.config.limits.clone();
    let server = tokio::spawn(async move {
        connections::run(listener, app, &limits, async move {
            let _ = shutdown_begun.await;
        })
        .await;
        Ok::<(), std::io::Error>(())
    });
    shutdown.await;
    tracing::info!(deadline_ms = deadline.as_millis() as u64, "shutting down: refusing new requests");
    signal_state.ready.store(false, Ordering::SeqCst);
    let _ = signal_state.closing.send(true);
    let _ = begin_shutdown.send(());
    refresher.abort();
    match tokio::time::timeout(deadline, server).await {
        Ok(Ok(result)) => result,
        Ok(Err(join_error)) => Err(std::io::Error::other(join_error.to_string())),
        Err(_elapsed) => {
            tracing::warn!("shutdown deadline passed with requests in flight; they are cut");
            Ok(())
        }
    }
}
