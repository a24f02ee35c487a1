//! `RemoteStore`: a `Store` backend that speaks to `hoard serve` over HTTP (the raw routes under
//! `/v1/store/*`) and a WebSocket (notifications), so a Rust game server runs the full engine —
//! autosave, queues, handoff — against a remote hoard.
//!
//! Invariants:
//! - It gives the answers of the store behind the server: conflicts are values, bad input is
//!   `InvalidInput` (checked locally first with the server's own limits, so nothing is sent that
//!   the server would refuse), and a commit whose answer was lost in transit — the request was
//!   sent but no answer came back, or the server says so — is `OutcomeUnknown`, never a failure.
//! - Notifications are best effort, as for every backend: the WebSocket reconnects after a drop
//!   and notifications sent meanwhile are lost.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use hoard::store::validate::{validate_commit_except_values, validate_notification};
use hoard::store::{
    Commit, CommitOutcome, DocId, Document, HolderId, HolderLease, InvalidInput, KeyPage, Limits, ListQuery,
    NOTIFICATION_CHANNEL_CAPACITY, Notification, Store, StoreError, StoreName, Subscription, VersionInfo, VersionQuery,
    VersionRecord,
};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::error::ErrorBody;
use crate::routes::raw::SUBSCRIBED_HELLO;

/// How long one HTTP call may take before its answer counts as lost.
pub const REMOTE_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Requests one `RemoteStore` has in flight at once; more wait their turn (within
/// `REMOTE_REQUEST_TIMEOUT_MS`). Each in-flight request holds an HTTP/1.1 connection: without a
/// bound, an autosave of 10,000 sessions opened 10,000 connections, and setting them up cost more
/// than the saves (the server serves `concurrent_requests_max` at once anyway).
pub const REMOTE_REQUESTS_IN_FLIGHT_MAX: usize = 256;
/// How long to wait before reconnecting the notification WebSocket.
pub const REMOTE_RECONNECT_DELAY_MS: u64 = 250;
/// How long `connect` waits for the notification WebSocket to be subscribed.
pub const REMOTE_SUBSCRIBE_TIMEOUT_MS: u64 = 10_000;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A store served by `hoard serve` at a URL, used with an `engine` (or `admin`) API key.
#[derive(Debug)]
pub struct RemoteStore {
    http: reqwest::Client,
    base: String,
    authorization: String,
    limits: Limits,
    remote_backend: String,
    notifications: broadcast::Sender<Notification>,
    subscriber: JoinHandle<()>,
    /// Permits for requests in flight (`REMOTE_REQUESTS_IN_FLIGHT_MAX`).
    in_flight: tokio::sync::Semaphore,
}

impl Drop for RemoteStore {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

impl RemoteStore {
    /// Connects to `hoard serve` at `url` (e.g. `http://127.0.0.1:7420`): reads its limits and
    /// subscribes to its notifications before returning.
    pub async fn connect(url: &str, api_key: &str) -> Result<RemoteStore, StoreError> {
        let base = url.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(REMOTE_REQUEST_TIMEOUT_MS))
            .pool_max_idle_per_host(REMOTE_REQUESTS_IN_FLIGHT_MAX)
            .build()
            .map_err(|e| StoreError::unavailable(format!("cannot build the HTTP client: {e}")))?;
        let authorization = format!("Bearer {api_key}");
        let info: Value =
            call(&http, &base, &authorization, reqwest::Method::GET, "/v1/store/info", None::<&()>, false).await?;
        let limits: Limits = serde_json::from_value(info.get("limits").cloned().unwrap_or(Value::Null))
            .map_err(|e| StoreError::unavailable(format!("the server sent no limits: {e}")))?;
        let remote_backend = info.get("backend").and_then(Value::as_str).unwrap_or("unknown").to_string();
        let (notifications, _) = broadcast::channel(NOTIFICATION_CHANNEL_CAPACITY);
        let ws_url = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}/v1/store/subscribe")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}/v1/store/subscribe")
        } else {
            return Err(StoreError::unavailable("the remote store URL must start with http:// or https://"));
        };
        let first = tokio::time::timeout(
            Duration::from_millis(REMOTE_SUBSCRIBE_TIMEOUT_MS),
            open_subscription(&ws_url, &authorization),
        )
        .await
        .map_err(|_| StoreError::unavailable("subscribing to the server's notifications timed out"))??;
        let subscriber = tokio::spawn(run_subscription(first, ws_url, authorization.clone(), notifications.clone()));
        Ok(RemoteStore {
            http,
            base,
            authorization,
            limits,
            remote_backend,
            notifications,
            subscriber,
            in_flight: tokio::sync::Semaphore::new(REMOTE_REQUESTS_IN_FLIGHT_MAX),
        })
    }

    /// The backend behind the server ("sqlite", "postgres", …).
    pub fn remote_backend(&self) -> &str {
        &self.remote_backend
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        may_apply: bool,
    ) -> Result<T, StoreError> {
        // Waiting for a turn sends nothing, so running out of time here is `Unavailable`.
        let permit = tokio::time::timeout(Duration::from_millis(REMOTE_REQUEST_TIMEOUT_MS), self.in_flight.acquire())
            .await
            .map_err(|_| {
                StoreError::unavailable(format!(
                    "{REMOTE_REQUESTS_IN_FLIGHT_MAX} requests to {} were in flight for {REMOTE_REQUEST_TIMEOUT_MS} ms; try again later",
                    self.base
                ))
            })?
            .map_err(|_| StoreError::Closed)?;
        let answer =
            call(&self.http, &self.base, &self.authorization, reqwest::Method::POST, path, Some(body), may_apply).await;
        drop(permit);
        answer
    }
}

async fn call<B: Serialize, T: DeserializeOwned>(
    http: &reqwest::Client,
    base: &str,
    authorization: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&B>,
    may_apply: bool,
) -> Result<T, StoreError> {
    let mut request = http.request(method, format!("{base}{path}")).header("authorization", authorization);
    if let Some(body) = body {
        request = request.json(body);
    }
    let lost = |what: String| {
        if may_apply { StoreError::outcome_unknown(what) } else { StoreError::unavailable(what) }
    };
    let response = match request.send().await {
        Ok(response) => response,
        // Never connected: the request was not sent, so nothing can have applied.
        Err(error) if error.is_connect() => {
            return Err(StoreError::unavailable(format!("cannot reach {base}: {error}")));
        }
        Err(error) => return Err(lost(format!("no answer from {base}: {error}"))),
    };
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| lost(format!("the answer from {base} was cut: {e}")))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| lost(format!("unreadable answer from {base}: {e}")));
    }
    let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
    let (code, message) = body.map_or_else(|| (String::new(), status.to_string()), |b| (b.error, b.message));
    Err(match (status, code.as_str()) {
        (_, "outcome_unknown") => StoreError::outcome_unknown(message),
        (StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNPROCESSABLE_ENTITY, _) => {
            StoreError::InvalidInput(InvalidInput::Remote { message })
        }
        (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _) => {
            StoreError::unavailable(format!("the server refused this API key: {message}"))
        }
        (_, "store_unavailable" | "shutting_down" | "rate_limited") => StoreError::unavailable(message),
        // The key's stored data cannot be read behind the server (nothing was applied).
        (_, "quarantined") => StoreError::corrupt(message),
        // A timeout or server failure during a commit may have left it applied.
        _ => lost(format!("{status}: {message}")),
    })
}

async fn open_subscription(ws_url: &str, authorization: &str) -> Result<Socket, StoreError> {
    let mut request = ws_url.into_client_request().map_err(|e| StoreError::unavailable(format!("bad URL: {e}")))?;
    let value =
        authorization.parse().map_err(|_| StoreError::unavailable("the API key is not a valid header value"))?;
    request.headers_mut().insert("authorization", value);
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| StoreError::unavailable(format!("cannot subscribe to notifications: {e}")))?;
    while let Some(message) = socket.next().await {
        match message {
            Ok(Message::Text(text)) if text.as_str() == SUBSCRIBED_HELLO => return Ok(socket),
            Ok(_) => {}
            Err(error) => return Err(StoreError::unavailable(format!("notification socket failed: {error}"))),
        }
    }
    Err(StoreError::unavailable("the notification socket closed before it was subscribed"))
}

async fn run_subscription(
    first: Socket,
    ws_url: String,
    authorization: String,
    notifications: broadcast::Sender<Notification>,
) {
    let mut socket = Some(first);
    loop {
        if let Some(mut open) = socket.take() {
            while let Some(Ok(message)) = open.next().await {
                if let Message::Text(text) = message
                    && let Ok(notification) = serde_json::from_str::<Notification>(text.as_str())
                {
                    // No receiver is fine: nobody listens right now.
                    let _ = notifications.send(notification);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(REMOTE_RECONNECT_DELAY_MS)).await;
        socket = open_subscription(&ws_url, &authorization).await.ok();
    }
}

#[async_trait]
impl Store for RemoteStore {
    fn backend_name(&self) -> &'static str {
        "remote"
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }

    async fn now_ms(&self) -> Result<i64, StoreError> {
        let answer: Value = call(
            &self.http,
            &self.base,
            &self.authorization,
            reqwest::Method::GET,
            "/v1/store/now",
            None::<&()>,
            false,
        )
        .await?;
        answer.get("now_ms").and_then(Value::as_i64).ok_or_else(|| StoreError::unavailable("the server sent no time"))
    }

    async fn get_many(&self, ids: &[DocId]) -> Result<Vec<Document>, StoreError> {
        self.post("/v1/store/get_many", &json!({ "ids": ids }), false).await
    }

    async fn list_keys(&self, store: &StoreName, query: &ListQuery) -> Result<KeyPage, StoreError> {
        let body = json!({ "store": store, "prefix": query.prefix, "after": query.after, "limit": query.limit });
        self.post("/v1/store/list", &body, false).await
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError> {
        // Everything but the values' sizes is checked here, before sending; the server checks
        // those (with these very limits) as it encodes them, and a value over the limit comes
        // back as `InvalidInput`. Counting a profile's bytes here would serialize it twice.
        validate_commit_except_values(&commit, &self.limits)?;
        self.post("/v1/store/commit", &commit, true).await
    }

    async fn list_versions(&self, id: &DocId, query: &VersionQuery) -> Result<Vec<VersionInfo>, StoreError> {
        let body = json!({ "id": id, "before_version": query.before_version, "limit": query.limit });
        self.post("/v1/store/versions", &body, false).await
    }

    async fn get_version(&self, id: &DocId, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        self.post("/v1/store/version", &json!({ "id": id, "version": version }), false).await
    }

    async fn prune_history(&self) -> Result<u64, StoreError> {
        let answer: Value = self.post("/v1/store/prune", &json!({}), true).await?;
        answer.get("pruned").and_then(Value::as_u64).ok_or_else(|| StoreError::unavailable("the server sent no count"))
    }

    async fn renew_holder(&self, holder: &HolderId, ttl_ms: u64) -> Result<HolderLease, StoreError> {
        self.post("/v1/store/holders/renew", &json!({ "holder": holder, "ttl_ms": ttl_ms }), true).await
    }

    async fn release_holder(&self, holder: &HolderId) -> Result<(), StoreError> {
        let _: Value = self.post("/v1/store/holders/release", &json!({ "holder": holder }), true).await?;
        Ok(())
    }

    async fn holder_lease(&self, holder: &HolderId) -> Result<Option<HolderLease>, StoreError> {
        self.post("/v1/store/holders/read", &json!({ "holder": holder }), false).await
    }

    async fn notify(&self, notification: Notification) -> Result<(), StoreError> {
        validate_notification(&notification, &self.limits)?;
        let _: Value = self.post("/v1/store/notify", &notification, true).await?;
        Ok(())
    }

    fn subscribe(&self) -> Subscription {
        self.notifications.subscribe()
    }
}
