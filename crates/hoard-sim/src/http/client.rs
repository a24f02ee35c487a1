//! A stateless game server of the HTTP path, as a Roblox server is: it keeps its players'
//! profiles in memory and speaks only the documented API of `hoard serve` (holders, sessions
//! start/save/end with `base_version`, sync, trades, receipts, messages). This file holds the
//! client's state, its sessions and their writes; value moves are `http::moves`, the background
//! loop `http::sync`.
//!
//! Invariants (the README's client rules, which `ClientRules::Hoard` keeps and each control
//! breaks one of on purpose):
//! - Every write is based on the last version adopted, and every value an answer carries is
//!   adopted with the game's changes since the request rebased onto it (`rebase`): onto what the
//!   request sent when the answer is the request's own effect, onto the last adopted value when
//!   it is someone else's (`stale`).
//! - One queue per key: no two requests touching one key are in flight at once (actions lock
//!   the key's queue; the background sync takes only the keys it finds free).
//! - A request whose answer is lost is retried unchanged until it answers; one that never
//!   answers leaves the session's state unknown, so the session is dropped (the player starts
//!   again and reads the truth), never written on a guess.
//! - An inbox message is applied once (by sequence) and acknowledged by the next save, before
//!   any value move carries the value it changed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hoard::store::InboxMessage;
use serde_json::{Value, json};
use tokio::sync::OwnedMutexGuard;
use tokio::task::JoinHandle;

use super::net::{Answer, HttpLink};
use super::rebase::rebase;
use super::service::SimRequest;
use crate::audit::Audit;
use crate::config::SimConfig;
use crate::model::{Names, PLAYER_STORE, SimProfile, apply_message, decode_stored_profile};
use crate::strategies::OpError;

/// Times a request is sent while no answer comes (client rule 4: unchanged each time).
pub const REQUEST_ATTEMPTS_MAX: u32 = 5;
/// Backoff before the second attempt; doubled for each later one.
pub const RETRY_BACKOFF_MS_INITIAL: u64 = 100;
/// Times one write adopts a `stale` answer and is sent again before it gives up.
pub const STALE_REBASES_MAX: u32 = 4;
/// Attempts to register a holder before a server incarnation gives up starting.
pub const REGISTER_ATTEMPTS_MAX: u32 = 5;

/// Which client the game servers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientRules {
    /// hoard's own client: every rule kept.
    Hoard,
    /// Never adopts the values answers carry (trades, receipts, `stale`); sends trades without
    /// party states after saving each party. Runs against the weakened service.
    NoAdopt,
    /// hoard's client, but a value move whose answer was lost is retried with a fresh id.
    FreshIds,
    /// hoard's client, but a cross-server trade's prepare whose first attempt went unanswered is
    /// taken as "not committed": what the party gave is refunded in memory (`http::cross`).
    RecordFailureAsAbort,
}

/// Everything one game server incarnation is built from.
#[derive(Clone, Debug)]
pub struct HttpContext {
    pub config: SimConfig,
    pub names: Names,
    pub audit: Arc<Audit>,
    pub link: Arc<HttpLink>,
    /// `s{index}-i{incarnation}`: the holder label and the prefix of this server's own ids.
    pub label: String,
}

/// One player's session as the game server keeps it.
#[derive(Clone, Debug)]
pub(crate) struct PlayerSession {
    pub token: Value,
    /// The version `saved` is: the `base_version` of the next write.
    pub version: u64,
    /// The stored value at `version`, as last adopted.
    pub saved: Value,
    /// The game's profile in memory.
    pub data: SimProfile,
    /// Highest inbox sequence applied to `data`.
    pub applied_through: u64,
    /// Highest inbox sequence a save acknowledged.
    pub acked_through: u64,
    /// When each pending cross-server trade is next settled by this server (decided: now; else
    /// after its deadline). A pending trade not listed is due now (as after a join).
    pub settle_at: BTreeMap<String, tokio::time::Instant>,
}

impl PlayerSession {
    pub fn data_value(&self) -> Value {
        serde_json::to_value(&self.data).unwrap_or(Value::Null)
    }

    pub fn unacknowledged(&self) -> bool {
        self.applied_through > self.acked_through
    }

    pub fn dirty(&self) -> bool {
        self.unacknowledged() || self.data_value() != self.saved
    }

    pub fn apply_inbox(&mut self, messages: &[InboxMessage]) {
        let mut messages: Vec<&InboxMessage> = messages.iter().filter(|m| m.seq > self.applied_through).collect();
        messages.sort_by_key(|m| m.seq);
        for message in messages {
            apply_message(&mut self.data, message);
            if let Some(trade_id) = super::cross::decided_trade(message)
                && self.data.holdings.pending_trades.contains_key(trade_id)
            {
                self.settle_at.insert(trade_id.to_string(), tokio::time::Instant::now());
            }
            self.applied_through = message.seq;
        }
    }

    /// Adopts `value` at `version`: `base` is what the game's changes are counted from.
    pub fn adopt(&mut self, value: &Value, version: u64, base: &Value) {
        if version <= self.version {
            return;
        }
        let now = self.data_value();
        let rebased = rebase(&stored_or_default(value), &stored_or_default(base), &now);
        if let Ok(profile) = decode_stored_profile(&rebased) {
            self.data = profile;
        }
        self.saved = stored_or_default(value);
        self.version = version;
    }

    /// The body of a save (or the session part of an end or sync) of the current data.
    pub fn save_fields(&self) -> (Value, Option<u64>) {
        (self.data_value(), (self.applied_through > 0).then_some(self.applied_through))
    }
}

/// A stored value, with "never written" read as the default profile.
pub fn stored_or_default(value: &Value) -> Value {
    if value.is_null() { serde_json::to_value(SimProfile::default()).unwrap_or(Value::Null) } else { value.clone() }
}

pub(crate) fn error_code(body: &Value) -> &str {
    body.get("error").and_then(Value::as_str).unwrap_or("")
}

#[derive(Debug)]
pub(crate) struct Client {
    pub rules: ClientRules,
    pub context: HttpContext,
    holder: Mutex<Option<String>>,
    sessions: Mutex<BTreeMap<usize, PlayerSession>>,
    queues: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub tasks: Mutex<Vec<JoinHandle<()>>>,
    pub frozen: AtomicBool,
    counters: Mutex<BTreeMap<String, u64>>,
    next_local_id: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Client {
    pub fn new(rules: ClientRules, context: HttpContext) -> Client {
        Client {
            rules,
            context,
            holder: Mutex::new(None),
            sessions: Mutex::new(BTreeMap::new()),
            queues: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(Vec::new()),
            frozen: AtomicBool::new(false),
            counters: Mutex::new(BTreeMap::new()),
            next_local_id: AtomicU64::new(0),
        }
    }

    pub fn sessions(&self) -> MutexGuard<'_, BTreeMap<usize, PlayerSession>> {
        lock(&self.sessions)
    }

    pub fn session(&self, player: usize) -> Option<PlayerSession> {
        self.sessions().get(&player).cloned()
    }

    pub fn with_session<T>(&self, player: usize, change: impl FnOnce(&mut PlayerSession) -> T) -> Option<T> {
        self.sessions().get_mut(&player).map(change)
    }

    pub fn drop_session(&self, player: usize, why: &str) {
        if self.sessions().remove(&player).is_some() {
            self.count(why);
        }
    }

    pub fn count(&self, what: &str) {
        *lock(&self.counters).entry(what.to_string()).or_insert(0) += 1;
    }

    pub fn counters(&self) -> BTreeMap<String, u64> {
        lock(&self.counters).clone()
    }

    pub fn local_id(&self, what: &str) -> String {
        let n = self.next_local_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{}-{what}{n}", self.context.names.namespace, self.context.label)
    }

    pub fn holder(&self) -> Option<String> {
        lock(&self.holder).clone()
    }

    /// The key's request queue (client rule 3).
    pub fn queue(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.queues).entry(key.to_string()).or_default().clone()
    }

    /// Locks the queues of several keys, in key order (so two actions never wait on each other).
    pub async fn lock_queues(&self, keys: &[String]) -> Vec<OwnedMutexGuard<()>> {
        let mut sorted = keys.to_vec();
        sorted.sort();
        sorted.dedup();
        let mut guards = Vec::with_capacity(sorted.len());
        for key in sorted {
            guards.push(self.queue(&key).lock_owned().await);
        }
        guards
    }

    /// Sends a request, again while no answer comes (unchanged: `make` is given the attempt
    /// number only so that the fresh-ids control can break the rule). `None`: never answered.
    pub async fn send_with(&self, make: &(dyn Fn(u32) -> SimRequest + Sync)) -> Option<(u16, Value)> {
        for attempt in 0..REQUEST_ATTEMPTS_MAX {
            if attempt > 0 {
                let backoff_ms = RETRY_BACKOFF_MS_INITIAL << (attempt - 1);
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            }
            match self.context.link.send(&make(attempt)).await {
                Answer::Status { status, body } => return Some((status, body)),
                Answer::Lost | Answer::Refused => self.count("requests_retried"),
            }
        }
        self.count("requests_unanswered");
        None
    }

    pub async fn send(&self, request: &SimRequest) -> Option<(u16, Value)> {
        self.send_with(&|_| request.clone()).await
    }

    /// Registers a new holder (one per game-server process incarnation, and again after its
    /// lease was lost) and tells the audit whose it is.
    pub async fn register(&self) -> Result<String, String> {
        let request = SimRequest::post("/v1/holders", json!({ "label": self.context.label }));
        for _ in 0..REGISTER_ATTEMPTS_MAX {
            if let Some((200, body)) = self.send(&request).await
                && let Some(holder) = body.get("holder").and_then(Value::as_str)
            {
                self.context.audit.holder_registered(holder, self.context.link.id());
                *lock(&self.holder) = Some(holder.to_string());
                self.count("holders_registered");
                return Ok(holder.to_string());
            }
        }
        Err(format!("{}: could not register a holder", self.context.label))
    }

    pub fn forget_holder(&self) {
        *lock(&self.holder) = None;
        let players: Vec<usize> = self.sessions().keys().copied().collect();
        for player in players {
            self.drop_session(player, "sessions_dropped_holder_gone");
        }
    }

    pub fn player_key(&self, player: usize) -> String {
        self.context.names.player_key(player)
    }

    /// Starts a session of `key` in `store` for this server's holder; the answer's body.
    pub async fn start_key(&self, store: &str, key: &str) -> Result<Value, OpError> {
        for _ in 0..2 {
            let holder = match self.holder() {
                Some(holder) => holder,
                None => self.register().await.map_err(OpError::Failed)?,
            };
            let body = json!({"store": store, "key": key, "holder": holder, "policy": "wait_then_steal",
                "wait_ms": self.context.config.engine.handoff_wait_ms});
            match self.send(&SimRequest::post("/v1/sessions/start", body)).await {
                Some((200, answer)) => return Ok(answer),
                Some((409, answer)) if error_code(&answer) == "holder_expired" => self.forget_holder(),
                Some((status, answer)) => {
                    return Err(OpError::Failed(format!("start: {status} {}", error_code(&answer))));
                }
                None => return Err(OpError::Failed("start: no answer".into())),
            }
        }
        Err(OpError::Failed("start: the holder kept expiring".into()))
    }

    /// Joins a player here (a session already here is kept).
    pub async fn join(&self, player: usize) -> Result<(), OpError> {
        let key = self.player_key(player);
        let _queue = self.queue(&key).lock_owned().await;
        if self.sessions().contains_key(&player) {
            return Ok(());
        }
        let answer = self.start_key(PLAYER_STORE, &key).await?;
        let value = answer.get("value").cloned().unwrap_or(Value::Null);
        let saved = stored_or_default(&value);
        let data = decode_stored_profile(&saved).map_err(|e| OpError::Failed(format!("unreadable profile: {e}")))?;
        let mut session = PlayerSession {
            token: answer.get("token").cloned().unwrap_or(Value::Null),
            version: answer.get("version").and_then(Value::as_u64).unwrap_or(0),
            saved,
            data,
            applied_through: 0,
            acked_through: 0,
            settle_at: BTreeMap::new(),
        };
        let inbox: Vec<InboxMessage> =
            answer.get("inbox").and_then(|inbox| serde_json::from_value(inbox.clone()).ok()).unwrap_or_default();
        session.apply_inbox(&inbox);
        let settles = !session.data.holdings.pending_trades.is_empty();
        self.sessions().insert(player, session);
        self.count("sessions_started");
        if settles {
            // The seed's resolution on load: a trade left pending is settled from its record.
            if let Err(OpError::Kicked(reason)) = self.settle_due_locked(player, true).await {
                return Err(OpError::Kicked(reason));
            }
        }
        Ok(())
    }

    /// Adopts a `stale` answer's current document (onto the last adopted value).
    pub fn adopt_stale(&self, player: usize, answer: &Value) {
        let Some(current) = answer.get("current") else { return };
        if self.rules == ClientRules::NoAdopt {
            self.count("stale_ignored");
            return;
        }
        let version = current.get("version").and_then(Value::as_u64).unwrap_or(0);
        let value = current.get("value").cloned().unwrap_or(Value::Null);
        let inbox: Vec<InboxMessage> =
            current.get("inbox").and_then(|inbox| serde_json::from_value(inbox.clone()).ok()).unwrap_or_default();
        self.with_session(player, |session| {
            let base = session.saved.clone();
            session.adopt(&value, version, &base);
            session.apply_inbox(&inbox);
        });
        self.count("stale_adopted");
    }

    pub fn on_saved(&self, player: usize, sent: &Value, ack: Option<u64>, answer: &Value) {
        let version = answer.get("version").and_then(Value::as_u64).unwrap_or(0);
        if answer.get("replayed").and_then(Value::as_bool) == Some(true) {
            self.count("saves_replayed");
        }
        self.with_session(player, |session| {
            session.version = version;
            session.saved = sent.clone();
            session.acked_through = session.acked_through.max(ack.unwrap_or(0));
        });
    }

    /// The error of a session write (`what`: save, end, settle) answered neither done nor
    /// `stale`: `fenced_out` drops the session (kicked); no answer leaves its state unknown, so it
    /// is dropped too (kicked); any other answer fails.
    pub fn session_write_failed(&self, player: usize, what: &str, answer: Option<(u16, Value)>) -> OpError {
        match answer {
            Some((409, answer)) if error_code(&answer) == "fenced_out" => {
                self.drop_session(player, "fenced_out");
                OpError::Kicked("fenced out".into())
            }
            Some((status, answer)) => OpError::Failed(format!("{what}: {status} {}", error_code(&answer))),
            None => {
                self.drop_session(player, "sessions_dropped_unknown");
                OpError::Kicked(format!("{what}: no answer; the session's state is unknown"))
            }
        }
    }

    /// Saves a player whose queue the caller holds: adopts `stale` and saves again.
    pub async fn save_locked(&self, player: usize) -> Result<(), OpError> {
        for _ in 0..=STALE_REBASES_MAX {
            let session = self.session(player).ok_or_else(|| OpError::Kicked("no session here".into()))?;
            let (sent, ack) = session.save_fields();
            let body = json!({"token": session.token, "base_version": session.version, "value": sent,
                "ack_inbox_through": ack});
            match self.send(&SimRequest::post("/v1/sessions/save", body)).await {
                Some((200, answer)) => {
                    self.on_saved(player, &sent, ack, &answer);
                    return Ok(());
                }
                Some((409, answer)) if error_code(&answer) == "stale" && self.rules != ClientRules::NoAdopt => {
                    self.adopt_stale(player, &answer);
                }
                other => return Err(self.session_write_failed(player, "save", other)),
            }
        }
        Err(OpError::Failed("save: stale again after every rebase".into()))
    }

    pub async fn save(&self, player: usize) -> Result<(), OpError> {
        let _queue = self.queue(&self.player_key(player)).lock_owned().await;
        self.save_locked(player).await
    }

    /// Ends a player's session with its final value (leave, handoff, shutdown).
    pub async fn end(&self, player: usize) -> Result<(), OpError> {
        let _queue = self.queue(&self.player_key(player)).lock_owned().await;
        for _ in 0..=STALE_REBASES_MAX {
            let session = self.session(player).ok_or_else(|| OpError::Kicked("no session here".into()))?;
            let (sent, ack) = session.save_fields();
            let body = json!({"token": session.token, "base_version": session.version, "value": sent,
                "ack_inbox_through": ack});
            match self.send(&SimRequest::post("/v1/sessions/end", body)).await {
                Some((200, _)) => {
                    self.sessions().remove(&player);
                    return Ok(());
                }
                Some((409, answer)) if error_code(&answer) == "stale" && self.rules != ClientRules::NoAdopt => {
                    self.adopt_stale(player, &answer);
                }
                other => return Err(self.session_write_failed(player, "end", other)),
            }
        }
        Err(OpError::Failed("end: stale again after every rebase".into()))
    }

    pub fn track(&self, task: JoinHandle<()>) {
        let mut tasks = lock(&self.tasks);
        tasks.retain(|task| !task.is_finished());
        tasks.push(task);
    }
}
