//! A holder's events: handoff requests (another server starts a key this holder has: save and
//! end it now), inbox arrivals (a message came for a key it holds) and steals (another server
//! took a key from it: stop playing it, write nothing). They are read by
//! polling (`?poll=1`), by long-polling (`?wait_ms=N`: the only push a Roblox server can
//! receive), by a WebSocket, or inside `sync`.
//!
//! Invariants:
//! - Every event is a message in the holder's event inbox (`hoard.holder_events/<holder>`),
//!   written before its notification, so a holder that missed the notification (not connected,
//!   a lost NOTIFY) finds it at its next read; notifications only wake waiters early.
//! - An event is delivered once: reading acknowledges the event inbox through what was read. An
//!   unanswered handoff ends in a steal after the starter's wait, exactly as a lost notification
//!   does; an unread inbox arrival loses nothing, since the message stays in the key's inbox,
//!   which start, read and sync return.
//! - Only events of keys the holder still holds are answered.
//! - Inbox arrivals are edge-triggered (one event per message sent), never "keys with waiting
//!   messages": a message the game never acknowledges must not make every poll answer at once.
//! - Inbox arrivals and steals are recorded only for holders registered over HTTP (their event
//!   document holds a value, written at registration): an engine holder never reads this inbox,
//!   and events for it would only pile up. Handoff requests go to every holder, as the engine's.
//! - Every wait is bounded (`LONG_POLL_WAIT_MS_MAX`) and re-reads the event inbox every
//!   `LONG_POLL_RECHECK_INTERVAL_MS`, so a lost notification delays an answer by at most that.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use hoard::engine::TOPIC_HANDOFF_PREFIX;
use hoard::store::{Commit, DocId, HolderId, Key, Notification, Store, StoreName, Write, get as read_doc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

use super::path_error;
use super::sessions::{HOLDER_EVENTS_STORE, parse_holder};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::metrics;
use crate::state::AppState;

/// The longest a long-poll (`events?wait_ms`, `sync`'s `wait_ms`) waits for something to report.
pub const LONG_POLL_WAIT_MS_MAX: u64 = 25_000;
/// How often a waiting long-poll re-reads the event inbox, in case a notification was lost.
pub const LONG_POLL_RECHECK_INTERVAL_MS: u64 = 2_000;
/// The notification topic that wakes a holder's long-polls on an inbox arrival (apart from
/// `hoard.handoff.<holder>`, which engines act on by handing the key over).
pub const TOPIC_HOLDER_EVENTS_PREFIX: &str = "hoard.holder_events.";

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsParams {
    /// `1`: answer at once with the pending events (JSON) instead of a WebSocket.
    pub poll: Option<u8>,
    /// Long-poll: answer at once if events are pending, else at the first one, else after this
    /// many milliseconds with empty lists (at most 25000).
    pub wait_ms: Option<u64>,
}

/// A request to save and end the session of a key at once, because another server starts it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HandoffRequest {
    #[serde(rename = "type")]
    pub kind: String,
    pub store: String,
    pub key: String,
}

/// A key an event is about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyName {
    pub store: String,
    pub key: String,
}

impl KeyName {
    fn of(id: &DocId) -> KeyName {
        KeyName { store: id.store.to_string(), key: id.key.to_string() }
    }
}

/// The answer of a poll or long-poll of a holder's events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HolderEvents {
    /// Save and end these keys now: another server starts them.
    pub requests: Vec<HandoffRequest>,
    /// Messages arrived for these keys (still held): fetch them (start, read or sync).
    pub inbox: Vec<KeyName>,
    /// These keys were taken by force: their sessions are over; write nothing more.
    pub stolen: Vec<KeyName>,
}

impl HolderEvents {
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.inbox.is_empty() && self.stolen.is_empty()
    }
}

/// One message of a holder's event inbox. A handoff request is the bare key (as it always was);
/// an inbox arrival is wrapped, so that a reader that knows only handoffs ignores it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EventBody {
    Inbox { inbox: DocId },
    Stolen { stolen: DocId },
    Handoff(DocId),
}

pub fn events_id(holder: &HolderId) -> Result<DocId, ApiError> {
    let store = StoreName::new(HOLDER_EVENTS_STORE).map_err(ApiError::internal)?;
    let key = Key::new(holder.as_str()).map_err(ApiError::internal)?;
    Ok(DocId::new(store, key))
}

pub fn handoff(id: &DocId) -> HandoffRequest {
    HandoffRequest { kind: "handoff".into(), store: id.store.to_string(), key: id.key.to_string() }
}

fn holder_topic(holder: &str) -> String {
    format!("{TOPIC_HOLDER_EVENTS_PREFIX}{holder}")
}

/// The events waiting for this holder, for keys it still holds; the event inbox is acknowledged
/// through what was read.
pub async fn take_pending(store: &dyn Store, holder: &HolderId) -> Result<HolderEvents, ApiError> {
    let events_doc = events_id(holder)?;
    let document = read_doc(store, &events_doc).await?;
    let Some(last) = document.inbox.last().map(|m| m.seq) else { return Ok(HolderEvents::default()) };
    let mut handoffs = Vec::new();
    let mut arrivals = Vec::new();
    let mut stolen = Vec::new();
    for message in &document.inbox {
        match serde_json::from_value::<EventBody>(message.body.clone()) {
            Ok(EventBody::Handoff(id)) if !handoffs.contains(&id) => handoffs.push(id),
            Ok(EventBody::Inbox { inbox }) if !arrivals.contains(&inbox) => arrivals.push(inbox),
            Ok(EventBody::Stolen { stolen: id }) if !stolen.contains(&id) => stolen.push(id),
            Ok(_) => {}
            Err(error) => metrics::gave_up("reading a holder event", &error),
        }
    }
    let mut events = HolderEvents::default();
    let ids: Vec<DocId> = handoffs.iter().chain(&arrivals).chain(&stolen).cloned().collect();
    if !ids.is_empty() {
        let held: Vec<DocId> = store
            .get_many(&ids)
            .await?
            .into_iter()
            .filter(|document| document.lease.holder.as_ref() == Some(holder))
            .map(|document| document.id)
            .collect();
        events.requests = handoffs.iter().filter(|id| held.contains(id)).map(handoff).collect();
        events.inbox = arrivals.iter().filter(|id| held.contains(id)).map(KeyName::of).collect();
        // A key taken back since (this holder started it again) is not stolen any more.
        events.stolen = stolen.iter().filter(|id| !held.contains(id)).map(KeyName::of).collect();
    }
    // Best effort: an unacknowledged event is only delivered again.
    if let Err(error) = store.commit(Commit::single(Write::new(events_doc).ack_inbox_through(last))).await {
        metrics::gave_up("acknowledging holder events", &error);
    }
    Ok(events)
}

/// Marks a holder as registered over HTTP: its event document gets a value (who registered it,
/// when by the store's clock), so only such holders are sent inbox arrivals and steals.
pub async fn mark_http_holder(store: &dyn Store, holder: &HolderId, key_name: &str) -> Result<(), ApiError> {
    let marker = serde_json::json!({ "registered_by": key_name, "registered_at_ms": store.now_ms().await? });
    match store.commit(Commit::single(Write::put(events_id(holder)?, marker))).await? {
        hoard::store::CommitOutcome::Committed { .. } => Ok(()),
        hoard::store::CommitOutcome::Conflict(conflict) => {
            Err(ApiError::internal(format!("marking a new holder conflicted: {conflict}")))
        }
    }
}

/// Whether `holder` was registered over HTTP (reads its event document).
async fn is_http_holder(store: &dyn Store, holder: &HolderId, what: &'static str) -> Option<DocId> {
    let events_doc = events_id(holder).ok()?;
    match read_doc(store, &events_doc).await {
        Ok(document) if document.value.is_some() => Some(events_doc),
        Ok(_) => None,
        Err(error) => {
            metrics::gave_up(what, &error);
            None
        }
    }
}

/// Records that a message arrived for `id`, if a holder has it: an event for that holder and a
/// notification that wakes its long-polls. Best effort (the message itself is durable in the
/// key's inbox); the caller has committed the message first.
pub async fn announce_inbox_arrival(store: &dyn Store, id: &DocId) {
    let holder = match read_doc(store, id).await {
        Ok(document) => document.lease.holder,
        Err(error) => {
            metrics::gave_up("reading the holder of a message's key", &error);
            return;
        }
    };
    let Some(holder) = holder else { return };
    let Some(events_doc) = is_http_holder(store, &holder, "reading a holder's events").await else { return };
    let body = serde_json::json!({ "inbox": id });
    if let Err(error) = store.commit(Commit::single(Write::new(events_doc).push_message(body))).await {
        metrics::gave_up("recording an inbox arrival", &error);
        return;
    }
    let wake = Notification { topic: holder_topic(holder.as_str()), payload: String::new() };
    if let Err(error) = store.notify(wake).await {
        metrics::gave_up("notifying an inbox arrival", &error);
    }
}

/// Tells `old_holder` that a start took `id` from it by force: an event in its event inbox and a
/// wake-up of its long-polls, so a game server that cannot hold a WebSocket stops playing the
/// key within a round trip. Best effort: its next write is fenced out anyway (G1).
pub async fn announce_stolen(store: &dyn Store, old_holder: &HolderId, id: &DocId) {
    let Some(events_doc) = is_http_holder(store, old_holder, "reading a holder's events").await else { return };
    let body = serde_json::json!({ "stolen": id });
    if let Err(error) = store.commit(Commit::single(Write::new(events_doc).push_message(body))).await {
        metrics::gave_up("recording a steal", &error);
        return;
    }
    let wake = Notification { topic: holder_topic(old_holder.as_str()), payload: String::new() };
    if let Err(error) = store.notify(wake).await {
        metrics::gave_up("notifying a steal", &error);
    }
}

/// Whether a notification concerns this holder's events (a handoff request or an inbox arrival).
pub fn wakes(notification: &Notification, holder: &HolderId) -> bool {
    notification.topic.strip_prefix(TOPIC_HANDOFF_PREFIX) == Some(holder.as_str())
        || notification.topic.strip_prefix(TOPIC_HOLDER_EVENTS_PREFIX) == Some(holder.as_str())
}

/// Waits until a notification for this holder, the recheck interval, the deadline or shutdown,
/// whichever comes first. Returns false once the deadline passed or shutdown began.
pub async fn wait_for_a_wake(
    state: &AppState,
    holder: &HolderId,
    notifications: &mut hoard::store::Subscription,
    deadline: tokio::time::Instant,
) -> bool {
    let now = tokio::time::Instant::now();
    if now >= deadline || *state.closing.borrow() {
        return false;
    }
    let recheck = (now + Duration::from_millis(LONG_POLL_RECHECK_INTERVAL_MS)).min(deadline);
    let mut closing = state.closing.subscribe();
    let sleep = tokio::time::sleep_until(recheck);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return tokio::time::Instant::now() < deadline,
            received = notifications.recv() => match received {
                Ok(notification) if wakes(&notification, holder) => return true,
                // A lagged receiver may have skipped a wake: look again at once.
                Err(RecvError::Lagged(_)) => return true,
                Ok(_) => {}
                Err(RecvError::Closed) => { sleep.as_mut().await; return tokio::time::Instant::now() < deadline; }
            },
            _ = closing.changed() => return false,
        }
    }
}

/// The deadline of a long-poll of `wait_ms` (capped at `LONG_POLL_WAIT_MS_MAX`).
pub fn long_poll_deadline(wait_ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(LONG_POLL_WAIT_MS_MAX))
}

/// Refuses a `wait_ms` over the long-poll limit.
pub fn check_wait_ms(wait_ms: u64) -> Result<(), ApiError> {
    if wait_ms > LONG_POLL_WAIT_MS_MAX {
        return Err(ApiError::bad_request(format!("wait_ms is at most {LONG_POLL_WAIT_MS_MAX}")));
    }
    Ok(())
}

/// The pending events at once, or the first ones within `wait_ms`.
async fn long_poll(state: &AppState, holder: &HolderId, wait_ms: u64) -> Result<HolderEvents, ApiError> {
    // Subscribed before the first read, so an event written after it also wakes this poll.
    let mut notifications = state.store.subscribe();
    let deadline = long_poll_deadline(wait_ms);
    loop {
        let events = take_pending(&*state.store, holder).await?;
        if !events.is_empty() {
            metrics::count(metrics::LONG_POLLS, "answered");
            return Ok(events);
        }
        if !wait_for_a_wake(state, holder, &mut notifications, deadline).await {
            metrics::count(metrics::LONG_POLLS, "waited");
            return Ok(events);
        }
    }
}

/// A holder's events: with `?poll=1` the pending ones as JSON; with `?wait_ms=N` a long-poll
/// (the pending ones at once, else the first within N ms, else empty lists); otherwise a
/// WebSocket that pushes `{"type":"handoff","store","key"}` messages (pending ones first).
#[utoipa::path(get, path = "/v1/holders/{holder}/events", tag = "sessions", security(("api_key" = [])),
    params(("holder" = String, Path), EventsParams),
    responses((status = 101, description = "WebSocket of handoff requests"), (status = 200, body = HolderEvents, description = "pending events (poll or long-poll)"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn holder_events(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<EventsParams>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Path(holder) = path.map_err(path_error)?;
    let Query(params) = query.map_err(super::query_error)?;
    principal.may_hold()?;
    let holder = parse_holder(&holder)?;
    principal.owns_holder(&holder)?;
    if let Some(wait_ms) = params.wait_ms {
        check_wait_ms(wait_ms)?;
        return Ok(Json(long_poll(&state, &holder, wait_ms).await?).into_response());
    }
    if params.poll == Some(1) {
        return Ok(Json(take_pending(&*state.store, &holder).await?).into_response());
    }
    match upgrade {
        Ok(upgrade) => Ok(upgrade.on_upgrade(move |socket| push_events(state, holder, socket))),
        Err(_) => Err(ApiError::bad_request("connect with a WebSocket upgrade, or add ?poll=1 or ?wait_ms=N")),
    }
}

async fn push_events(state: Arc<AppState>, holder: HolderId, mut socket: WebSocket) {
    let topic = format!("{TOPIC_HANDOFF_PREFIX}{holder}");
    let mut notifications = state.store.subscribe();
    let mut closing = state.closing.subscribe();
    if let Ok(events) = take_pending(&*state.store, &holder).await {
        for request in events.requests {
            let Ok(text) = serde_json::to_string(&request) else { continue };
            if socket.send(Message::Text(text.into())).await.is_err() {
                return;
            }
        }
    }
    loop {
        tokio::select! {
            received = notifications.recv() => match received {
                Ok(notification) if notification.topic == topic => {
                    let Ok(id) = serde_json::from_str::<DocId>(&notification.payload) else { continue };
                    let Ok(text) = serde_json::to_string(&handoff(&id)) else { continue };
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = closing.changed() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
    }
}
