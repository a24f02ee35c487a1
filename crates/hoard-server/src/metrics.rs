//! Prometheus metrics: the names, the recorder, and the request-counting middleware.
//!
//! Invariant: every metric name is a constant here, so `/metrics` and the docs cannot drift
//! from the code; labels are bounded (route templates, not raw paths; outcome codes, not ids).

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "hoard_http_requests_total";
pub const HTTP_DURATION: &str = "hoard_http_request_duration_seconds";
pub const SESSIONS_LIVE: &str = "hoard_sessions_live";
pub const SESSIONS_STARTED: &str = "hoard_sessions_started_total";
pub const SAVES: &str = "hoard_saves_total";
pub const CONFLICTS: &str = "hoard_conflicts_total";
pub const FENCED_OUT: &str = "hoard_fenced_out_total";
pub const STEALS: &str = "hoard_steals_total";
pub const HANDOFFS_REQUESTED: &str = "hoard_handoffs_requested_total";
pub const TRADES: &str = "hoard_trades_total";
pub const RECEIPTS: &str = "hoard_receipts_total";
pub const MESSAGES: &str = "hoard_messages_total";
pub const UPDATES: &str = "hoard_updates_total";
pub const IDEMPOTENT_REPLAYS: &str = "hoard_idempotent_replays_total";
pub const STORE_ERRORS: &str = "hoard_store_errors_total";
pub const UNAUTHORIZED: &str = "hoard_unauthorized_total";
pub const RATE_LIMITED: &str = "hoard_rate_limited_total";
/// Client connections open now (WebSockets included).
pub const HTTP_CONNECTIONS_OPEN: &str = "hoard_http_connections_open";
/// Connections answered 503 `too_many_connections` (or dropped, when even the refusals were at
/// their limit) because `connections_max` were open.
pub const HTTP_CONNECTIONS_REFUSED: &str = "hoard_http_connections_refused_total";
/// Connections closed because a request header did not arrive within `header_read_timeout_ms`.
pub const HTTP_HEADER_READ_TIMEOUTS: &str = "hoard_http_header_read_timeouts_total";
/// Failed `accept` calls (e.g. out of file descriptors), by error kind.
pub const HTTP_ACCEPT_ERRORS: &str = "hoard_http_accept_errors_total";
pub const BEST_EFFORT_FAILURES: &str = "hoard_best_effort_failures_total";
pub const QUARANTINED: &str = "hoard_quarantined_total";
pub const LONG_POLLS: &str = "hoard_long_polls_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once (every router in the process shares it) and returns
/// its handle; `None` when another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
            let builder = PrometheusBuilder::new().set_buckets(&buckets).ok()?;
            builder.install_recorder().ok()
        })
        .clone()
}

pub fn count(name: &'static str, outcome: &'static str) {
    metrics::counter!(name, "outcome" => outcome).increment(1);
}

/// A best-effort step gave up (a notification, an event acknowledgement, a quarantine record):
/// nothing correct depends on it, so it is counted and logged, not answered as an error.
pub fn gave_up(what: &'static str, error: &dyn std::fmt::Display) {
    metrics::counter!(BEST_EFFORT_FAILURES, "what" => what).increment(1);
    tracing::warn!(what, %error, "a best-effort step failed");
}

pub fn store_error(kind: &'static str) {
    metrics::counter!(STORE_ERRORS, "kind" => kind).increment(1);
}

pub fn unauthorized() {
    metrics::counter!(UNAUTHORIZED).increment(1);
}

pub fn rate_limited() {
    metrics::counter!(RATE_LIMITED).increment(1);
}

pub fn session_started() {
    metrics::counter!(SESSIONS_STARTED).increment(1);
    metrics::gauge!(SESSIONS_LIVE).increment(1.0);
}

/// A session ended through this process. Sessions started elsewhere or abandoned make the
/// gauge an estimate per process, never a count to act on.
pub fn session_ended() {
    metrics::gauge!(SESSIONS_LIVE).decrement(1.0);
}

/// Counts every request and its latency by route template and status.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!(HTTP_DURATION, "route" => route).record(started.elapsed().as_secs_f64());
    response
}
