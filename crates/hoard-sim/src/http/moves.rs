//! The value moves of an HTTP game server: trades (`/v1/trades` with every party's in-memory
//! value and base version: "save, then trade" in one fenced commit), purchases (`/v1/receipts`
//! with the buyer's value including the grant), gifts (`/v1/stores/.../messages` with the gift id
//! as `Idempotency-Key`) and guild-bank deposits (a trade with the bank's session, held only for
//! the deposit).
//!
//! Invariants:
//! - Each move holds the queues of every key it touches, and saves first any party whose applied
//!   inbox messages are not yet acknowledged (a move's party state carries no acknowledgement).
//! - A move is reported done only on an answer that says so; one that never answered is
//!   `Unknown` and its parties' sessions are dropped (their state is unknown).
//! - Retries reuse the move's id (trade id, purchase id, gift id), except in the fresh-ids control.

use serde_json::{Value, json};

use super::client::{Client, ClientRules, error_code};
use super::service::SimRequest;
use crate::audit::GiftAck;
use crate::model::{GUILD_STORE, Gift, PLAYER_STORE, Purchase, SimProfile, SimTrade, apply_purchase, coins_map};
use crate::strategies::{BuyAck, OpError, TradeAck};

/// The JSON Pointer of a profile's (and a bank's) holdings, for trades.
pub const HOLDINGS_PATH: &str = "/holdings";

pub(crate) fn leg_body(leg: &hoard::engine::TradeLeg) -> Value {
    json!({"from": leg.from, "to": leg.to, "items": leg.items, "currencies": leg.currencies})
}

/// The id of a move's attempt: the fresh-ids control makes up a new one for each retry.
fn attempt_id(rules: ClientRules, id: &str, attempt: u32) -> String {
    if rules == ClientRules::FreshIds && attempt > 0 { format!("{id}-retry{attempt}") } else { id.to_string() }
}

impl Client {
    /// Before a move: hoard's client saves a party whose applied messages are unacknowledged;
    /// the no-adopt client saves every party (its trades apply to the saved values).
    pub(crate) async fn save_before_move(&self, player: usize) -> Result<(), OpError> {
        let needs = match self.rules {
            ClientRules::NoAdopt => true,
            ClientRules::Hoard | ClientRules::FreshIds | ClientRules::RecordFailureAsAbort => {
                self.session(player).ok_or_else(|| OpError::Kicked("no session here".into()))?.unacknowledged()
            }
        };
        if needs { self.save_locked(player).await } else { Ok(()) }
    }

    /// Adopts each party of a trade answer (hoard's client and fresh-ids; never no-adopt).
    fn adopt_parties(&self, players: &[usize], parties: &[Value], sent: &[Value]) {
        if self.rules == ClientRules::NoAdopt {
            self.count("answers_not_adopted");
            return;
        }
        for ((player, party), base) in players.iter().zip(parties).zip(sent) {
            let version = party.get("version").and_then(Value::as_u64).unwrap_or(0);
            let value = party.get("value").cloned().unwrap_or(Value::Null);
            self.with_session(*player, |session| session.adopt(&value, version, base));
        }
    }

    /// The party a `stale` or `fenced_out` answer names, among `players`.
    fn named_party(&self, players: &[usize], answer: &Value) -> Option<usize> {
        let key = answer.get("current").and_then(|c| c.get("key")).and_then(Value::as_str)?;
        players.iter().copied().find(|p| self.context.names.player_key(*p) == key)
    }

    pub async fn trade(&self, trade: &SimTrade) -> TradeAck {
        let keys: Vec<String> = trade.players.iter().map(|p| self.context.names.player_key(*p)).collect();
        let _queues = self.lock_queues(&keys).await;
        for player in &trade.players {
            if self.save_before_move(*player).await.is_err() {
                return TradeAck::NotCommitted;
            }
        }
        let Some(sessions) = trade.players.iter().map(|p| self.session(*p)).collect::<Option<Vec<_>>>() else {
            return TradeAck::NotCommitted;
        };
        let sent: Vec<Value> = sessions.iter().map(|s| s.data_value()).collect();
        let mut body = json!({
            "trade_id": trade.trade_id,
            "parties": sessions.iter().map(|s| s.token.clone()).collect::<Vec<_>>(),
            "legs": trade.legs.iter().map(leg_body).collect::<Vec<_>>(),
            "holdings_path": HOLDINGS_PATH,
        });
        if self.rules != ClientRules::NoAdopt {
            body["party_states"] = sessions
                .iter()
                .zip(&sent)
                .map(|(s, value)| json!({"value": value, "base_version": s.version}))
                .collect::<Vec<_>>()
                .into();
        }
        let rules = self.rules;
        let make = |attempt: u32| {
            let mut body = body.clone();
            body["trade_id"] = json!(attempt_id(rules, &trade.trade_id, attempt));
            SimRequest::post("/v1/trades", body)
        };
        match self.send_with(&make).await {
            Some((200, answer)) => {
                let parties = answer.get("parties").and_then(Value::as_array).cloned().unwrap_or_default();
                self.adopt_parties(&trade.players, &parties, &sent);
                TradeAck::Committed
            }
            Some((409, answer)) if error_code(&answer) == "stale" => {
                if let Some(player) = self.named_party(&trade.players, &answer) {
                    self.adopt_stale(player, &answer);
                }
                TradeAck::NotCommitted
            }
            Some(_) => TradeAck::NotCommitted,
            None => {
                for player in &trade.players {
                    self.drop_session(*player, "sessions_dropped_unknown");
                }
                TradeAck::Unknown
            }
        }
    }

    pub async fn buy(&self, player: usize, purchase: &Purchase) -> BuyAck {
        let _queue = self.queue(&self.context.names.player_key(player)).lock_owned().await;
        let Some(session) = self.session(player) else { return BuyAck::NotGranted };
        if session.data.purchases.contains(&purchase.purchase_id) {
            return BuyAck::AlreadyGranted;
        }
        if self.save_before_move(player).await.is_err() {
            return BuyAck::NotGranted;
        }
        let Some(session) = self.session(player) else { return BuyAck::NotGranted };
        let base = session.data_value();
        let mut candidate: SimProfile = session.data.clone();
        apply_purchase(&mut candidate, purchase);
        let body = json!({
            "token": session.token,
            "purchase_id": purchase.purchase_id,
            "payload": {"coins": purchase.coins, "item": purchase.item},
            "grant": [],
            "value": candidate,
            "base_version": session.version,
        });
        let rules = self.rules;
        let make = |attempt: u32| {
            let mut body = body.clone();
            body["purchase_id"] = json!(attempt_id(rules, &purchase.purchase_id, attempt));
            SimRequest::post("/v1/receipts", body)
        };
        match self.send_with(&make).await {
            Some((200, answer)) => {
                let party = answer.get("party").cloned().unwrap_or(Value::Null);
                self.adopt_parties(&[player], &[party], &[base]);
                match answer.get("outcome").and_then(Value::as_str) {
                    Some("granted") => BuyAck::Granted,
                    _ => BuyAck::AlreadyGranted,
                }
            }
            Some((409, answer)) if error_code(&answer) == "stale" => {
                self.adopt_stale(player, &answer);
                BuyAck::NotGranted
            }
            Some((409, answer)) if error_code(&answer) == "fenced_out" => {
                self.drop_session(player, "fenced_out");
                BuyAck::NotGranted
            }
            Some(_) => BuyAck::NotGranted,
            None => {
                self.drop_session(player, "sessions_dropped_unknown");
                BuyAck::NotGranted
            }
        }
    }

    /// Sends a gift into a player's inbox (no session needed: messages are lock-free).
    pub async fn send_gift(&self, player: usize, gift: &Gift) -> GiftAck {
        let key = self.context.names.player_key(player);
        let path = format!("/v1/stores/{PLAYER_STORE}/keys/{key}/messages");
        let Ok(body) = serde_json::to_value(gift) else { return GiftAck::Failed };
        let rules = self.rules;
        let make = |attempt: u32| {
            SimRequest::post(path.clone(), json!({ "body": body })).with_idempotency_key(attempt_id(
                rules,
                &gift.gift_id,
                attempt,
            ))
        };
        match self.send_with(&make).await {
            Some((200, _)) => GiftAck::Sent,
            Some(_) => GiftAck::Failed,
            None => GiftAck::Unknown,
        }
    }

    /// Moves coins from a player into a guild bank: the bank's session is started, a trade moves
    /// the coins (both parties fenced, in one commit), and the bank's session is ended.
    pub async fn deposit(&self, player: usize, bank: usize, amount: i64) -> Result<(), OpError> {
        let player_key = self.context.names.player_key(player);
        let bank_key = format!("{}-bank{bank}", self.context.names.namespace);
        let queue_name = format!("{GUILD_STORE}/{bank_key}");
        let _queues = self.lock_queues(&[player_key, queue_name]).await;
        let has_coins = self.session(player).is_some_and(|s| s.data.coins() >= amount);
        if !has_coins {
            return Err(OpError::Failed("not enough coins".into()));
        }
        self.save_before_move(player).await?;
        let started = self.start_key(GUILD_STORE, &bank_key).await?;
        let bank_token = started.get("token").cloned().unwrap_or(Value::Null);
        let mut bank_version = started.get("version").and_then(Value::as_u64).unwrap_or(0);
        let bank_value = started.get("value").cloned().filter(|v| !v.is_null()).unwrap_or_else(|| json!({}));
        let session = self.session(player).ok_or_else(|| OpError::Kicked("no session here".into()))?;
        let sent = session.data_value();
        let mut body = json!({
            "trade_id": self.local_id("deposit"),
            "parties": [session.token, bank_token],
            "legs": [{"from": 0, "to": 1, "currencies": coins_map(amount)}],
            "holdings_path": HOLDINGS_PATH,
        });
        if self.rules != ClientRules::NoAdopt {
            body["party_states"] = json!([
                {"value": sent, "base_version": session.version},
                {"value": bank_value, "base_version": bank_version},
            ]);
        }
        let result = match self.send(&SimRequest::post("/v1/trades", body)).await {
            Some((200, answer)) => {
                let parties = answer.get("parties").and_then(Value::as_array).cloned().unwrap_or_default();
                self.adopt_parties(&[player], &parties[..parties.len().min(1)], &[sent]);
                bank_version = parties.get(1).and_then(|p| p.get("version")).and_then(Value::as_u64).unwrap_or(0);
                Ok(())
            }
            Some((409, answer)) if error_code(&answer) == "stale" => {
                self.adopt_stale(player, &answer);
                Err(OpError::Failed("deposit: stale".into()))
            }
            Some((status, answer)) => Err(OpError::Failed(format!("deposit: {status} {}", error_code(&answer)))),
            None => {
                self.drop_session(player, "sessions_dropped_unknown");
                Err(OpError::Kicked("deposit: no answer".into()))
            }
        };
        self.end_bank(&bank_token, bank_version).await;
        result
    }

    /// Ends a bank session, without a value (it was only ever written by the trade), adopting
    /// the version of a `stale` answer when the trade's answer was not seen.
    async fn end_bank(&self, token: &Value, mut version: u64) {
        for _ in 0..=super::client::STALE_REBASES_MAX {
            let body = json!({"token": token, "base_version": version});
            match self.send(&SimRequest::post("/v1/sessions/end", body)).await {
                Some((409, answer)) if error_code(&answer) == "stale" => {
                    version = answer.get("current").and_then(|c| c.get("version")).and_then(Value::as_u64).unwrap_or(0);
                }
                _ => return,
            }
        }
    }
}
