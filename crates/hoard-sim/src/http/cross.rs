//! Cross-server trades of an HTTP game server, as the Roblox client makes them: each party's
//! server prepares its own party (`/v1/trades/cross/prepare`, with its in-memory value and base
//! version: "save, then prepare" in one fenced commit) and adopts the answer; a trade left
//! pending is settled (`/v1/trades/cross/{id}/settle`) when its decision arrives in the inbox
//! (through `sync`), when its deadline has passed by the server's own clock, and when the player
//! joins with it pending (the seed's resolution on load).
//!
//! Invariants:
//! - Each step holds the player's queue and is retried unchanged while unanswered (every step is
//!   idempotent by trade id); one that never answered leaves the session's state unknown, so the
//!   session is dropped (the player joins again, and joining settles).
//! - The client never moves value itself: what it holds is what an answer said, rebased (client
//!   rule 2), except in the `record-failure-as-abort` control, which refunds what it gave when
//!   the prepare's first attempt went unanswered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hoard::engine::trade::{STATUS_ABORTED, STATUS_COMMITTED, STATUS_PENDING};
use hoard::engine::{CrossTrade, TRADE_DECISION_MESSAGE_FIELD};
use hoard::store::InboxMessage;
use serde_json::{Value, json};

use super::client::{Client, ClientRules, PlayerSession, error_code};
use super::moves::{HOLDINGS_PATH, leg_body};
use super::service::SimRequest;
use crate::strategies::cross_controls::refund_given;
use crate::strategies::{CrossAck, OpError};

/// After a trade's deadline (by this server's clock, counted from its own prepare), how long the
/// server waits before it settles the trade itself: the store's clock decides the deadline, and
/// a settle a little early only answers `pending` again.
pub const SETTLE_AFTER_DEADLINE_MS: u64 = 1_000;
/// How long after a settle answered `pending` (its deadline unknown here, as after a join) the
/// server asks again.
pub const SETTLE_RECHECK_MS: u64 = 2_000;

/// The trade a message tells the decision of (`{"hoard_trade": {"trade_id", "status"}}`, at the
/// top of the body or inside an engine message's envelope).
pub fn decided_trade(message: &InboxMessage) -> Option<&str> {
    let body = &message.body;
    let decision =
        body.get(TRADE_DECISION_MESSAGE_FIELD).or_else(|| body.get("body")?.get(TRADE_DECISION_MESSAGE_FIELD))?;
    decision.get("trade_id")?.as_str()
}

impl PlayerSession {
    /// Trades pending in the profile whose settle is due at `now`.
    pub fn trades_due(&self, now: tokio::time::Instant) -> Vec<String> {
        self.data
            .holdings
            .pending_trades
            .keys()
            .filter(|trade_id| self.settle_at.get(*trade_id).is_none_or(|at| *at <= now))
            .cloned()
            .collect()
    }
}

fn cross_ack(outcome: &str) -> CrossAck {
    match outcome {
        STATUS_PENDING => CrossAck::Pending,
        STATUS_COMMITTED => CrossAck::Committed,
        STATUS_ABORTED => CrossAck::Aborted,
        other => CrossAck::Failed { reason: format!("unknown outcome {other:?}"), kicked: false },
    }
}

impl Client {
    /// Takes `player`'s part in a cross-server trade: one prepare, adopted.
    pub async fn trade_across(&self, player: usize, trade: &CrossTrade) -> CrossAck {
        let _queue = self.queue(&self.player_key(player)).lock_owned().await;
        if let Err(error) = self.save_before_move(player).await {
            return CrossAck::Failed { kicked: matches!(error, OpError::Kicked(_)), reason: error.to_string() };
        }
        let Some(session) = self.session(player) else {
            return CrossAck::Failed { reason: "no session here".into(), kicked: true };
        };
        let Some(me) = trade.parties.iter().position(|party| self.context.names.player_of(party) == Some(player))
        else {
            return CrossAck::Refused(format!("p{player} is not a party of {}", trade.id));
        };
        let sent = session.data_value();
        let before = session.data.clone();
        let parties: Vec<Value> = trade
            .parties
            .iter()
            .map(|party| json!({"store": party.store.as_str(), "key": party.key.as_str()}))
            .collect();
        let body = json!({
            "trade": {"id": trade.id, "parties": parties, "legs": trade.legs.iter().map(leg_body).collect::<Vec<_>>(),
                "timeout_ms": trade.timeout_ms},
            "token": session.token,
            "base_version": session.version,
            "value": sent,
            "holdings_path": HOLDINGS_PATH,
        });
        let request = SimRequest::post("/v1/trades/cross/prepare", body);
        let first_attempt_unanswered = AtomicBool::new(false);
        let make = |attempt: u32| {
            if attempt > 0 {
                first_attempt_unanswered.store(true, Ordering::Relaxed);
            }
            request.clone()
        };
        match self.send_with(&make).await {
            Some((200, answer)) => {
                let outcome = answer.get("outcome").and_then(Value::as_str).unwrap_or("").to_string();
                self.adopt_party(player, &answer, &sent);
                if outcome == STATUS_PENDING {
                    let at = tokio::time::Instant::now()
                        + Duration::from_millis(trade.timeout_ms.saturating_add(SETTLE_AFTER_DEADLINE_MS));
                    self.with_session(player, |session| session.settle_at.insert(trade.id.clone(), at));
                }
                if self.rules == ClientRules::RecordFailureAsAbort
                    && first_attempt_unanswered.load(Ordering::Relaxed)
                    && outcome != STATUS_ABORTED
                {
                    // The control's flaw: the first attempt "failed", so the trade "never happened".
                    self.with_session(player, |session| refund_given(&mut session.data, me, trade, &before));
                    self.count("refunded_after_unanswered_prepare");
                }
                cross_ack(&outcome)
            }
            Some((409, answer)) => match error_code(&answer) {
                "stale" => {
                    self.adopt_stale(player, &answer);
                    CrossAck::Failed { reason: "prepare: stale".into(), kicked: false }
                }
                "fenced_out" => {
                    self.drop_session(player, "fenced_out");
                    CrossAck::Failed { reason: "prepare: fenced out".into(), kicked: true }
                }
                code @ ("item_not_held" | "insufficient_balance") => CrossAck::Refused(code.to_string()),
                code => CrossAck::Failed { reason: format!("prepare: 409 {code}"), kicked: false },
            },
            Some((422, answer)) => CrossAck::Refused(error_code(&answer).to_string()),
            Some((status, answer)) => {
                CrossAck::Failed { reason: format!("prepare: {status} {}", error_code(&answer)), kicked: false }
            }
            None => {
                self.drop_session(player, "sessions_dropped_unknown");
                CrossAck::Failed { reason: "prepare: no answer; the session's state is unknown".into(), kicked: true }
            }
        }
    }

    /// Adopts the `party` of a cross-server trade answer, based on `base` (what the request's
    /// effect applied to).
    fn adopt_party(&self, player: usize, answer: &Value, base: &Value) {
        let Some(party) = answer.get("party") else { return };
        let version = party.get("version").and_then(Value::as_u64).unwrap_or(0);
        let value = party.get("value").cloned().unwrap_or(Value::Null);
        self.with_session(player, |session| session.adopt(&value, version, base));
    }

    /// Settles one trade of a player whose queue the caller holds; answers where it stands.
    async fn settle_locked(&self, player: usize, trade_id: &str) -> Result<CrossAck, OpError> {
        for _ in 0..=super::client::STALE_REBASES_MAX {
            let session = self.session(player).ok_or_else(|| OpError::Kicked("no session here".into()))?;
            let body = json!({"token": session.token, "base_version": session.version, "holdings_path": HOLDINGS_PATH});
            let request = SimRequest::post(format!("/v1/trades/cross/{trade_id}/settle"), body);
            match self.send(&request).await {
                Some((200, answer)) => {
                    // The settle applied to the stored value the session last adopted.
                    self.adopt_party(player, &answer, &session.saved);
                    let outcome = answer.get("outcome").and_then(Value::as_str).unwrap_or("");
                    if outcome == STATUS_PENDING {
                        let later = tokio::time::Instant::now() + Duration::from_millis(SETTLE_RECHECK_MS);
                        self.with_session(player, |session| session.settle_at.insert(trade_id.to_string(), later));
                    } else {
                        self.with_session(player, |session| session.settle_at.remove(trade_id));
                        self.count("cross_trades_settled");
                    }
                    return Ok(cross_ack(outcome));
                }
                Some((409, answer)) if error_code(&answer) == "stale" => self.adopt_stale(player, &answer),
                other => return Err(self.session_write_failed(player, "settle", other)),
            }
        }
        Err(OpError::Failed("settle: stale again after every rebase".into()))
    }

    /// Settles every due trade of a player whose queue the caller holds (all of them when
    /// `every`, as on join); answers how many stay pending.
    pub(crate) async fn settle_due_locked(&self, player: usize, every: bool) -> Result<usize, OpError> {
        let session = self.session(player).ok_or_else(|| OpError::Kicked("no session here".into()))?;
        let due = if every {
            session.data.holdings.pending_trades.keys().cloned().collect()
        } else {
            session.trades_due(tokio::time::Instant::now())
        };
        for trade_id in due {
            self.settle_locked(player, &trade_id).await?;
        }
        Ok(self.session(player).map_or(0, |session| session.data.holdings.pending_trades.len()))
    }

    /// Settles every pending trade of `player`; `None`: no session here.
    pub async fn settle_pending(&self, player: usize) -> Option<usize> {
        let _queue = self.queue(&self.player_key(player)).lock_owned().await;
        self.session(player)?;
        match self.settle_due_locked(player, true).await {
            Ok(left) => Some(left),
            Err(_) => self.session(player).map(|session| session.data.holdings.pending_trades.len()),
        }
    }

    /// From the background sync: settles, in tasks of their own, the players with a trade due
    /// (decided, or past its deadline) whose queue is free now (a busy one is seen next time).
    pub(crate) fn settle_due_in_background(self: &Arc<Self>) {
        let now = tokio::time::Instant::now();
        let due: Vec<usize> = self
            .sessions()
            .iter()
            .filter(|(_, session)| !session.trades_due(now).is_empty())
            .map(|(player, _)| *player)
            .collect();
        for player in due {
            let Ok(queue) = self.queue(&self.player_key(player)).try_lock_owned() else { continue };
            let client = self.clone();
            let task = tokio::spawn(async move {
                let _queue = queue;
                let _ = client.settle_due_locked(player, false).await;
            });
            self.track(task);
        }
    }
}
