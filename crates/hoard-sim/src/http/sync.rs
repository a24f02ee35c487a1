//! The background loop of an HTTP game server: one `sync` per renewal interval renews the
//! holder's lease, saves every dirty session whose queue is free (every autosave interval),
//! fetches their new inbox messages, settles the cross-server trades that are due (`cross`), and
//! answers handoff requests by ending those sessions.
//!
//! Invariants:
//! - A sync touches only the keys whose queue it took (`try_lock`): it never overlaps another
//!   request of the same key (client rule 3), and never waits for one.
//! - A sync whose answer never came after its retries (each unchanged) leaves the saves it
//!   carried unknown: those sessions are dropped, as after any unanswered write.
//! - Nothing runs while the server is frozen.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hoard::store::InboxMessage;
use serde_json::{Value, json};

use super::client::{Client, error_code};
use super::service::SimRequest;
use crate::model::PLAYER_STORE;

impl Client {
    /// One `sync`: renews the holder, saves the dirty sessions whose queue is free (when
    /// `autosave`), fetches their new messages, and hands over what other servers ask for.
    pub async fn sync_once(self: &Arc<Self>, autosave: bool) {
        let holder = match self.holder() {
            Some(holder) => holder,
            None => match self.register().await {
                Ok(holder) => holder,
                Err(_) => return,
            },
        };
        let players: Vec<usize> = self.sessions().keys().copied().collect();
        let mut guards = Vec::new();
        let mut entries = Vec::new();
        for player in players {
            let Ok(guard) = self.queue(&self.player_key(player)).try_lock_owned() else { continue };
            let Some(session) = self.session(player) else { continue };
            let mut entry = json!({"token": session.token, "base_version": session.version});
            let sent = if autosave && session.dirty() {
                let (value, ack) = session.save_fields();
                entry["value"] = value.clone();
                entry["ack_inbox_through"] = json!(ack);
                Some((value, ack))
            } else {
                entry["inbox_seen_through"] = json!(session.applied_through);
                None
            };
            entries.push(entry);
            guards.push((player, sent, guard));
        }
        let request = SimRequest::post(format!("/v1/holders/{holder}/sync"), json!({ "sessions": entries }));
        let answer = match self.send(&request).await {
            Some((200, answer)) => answer,
            Some((409, answer)) if error_code(&answer) == "holder_gone" => {
                self.forget_holder();
                return;
            }
            Some(_) => return,
            None => {
                for (player, sent, _) in &guards {
                    if sent.is_some() {
                        self.drop_session(*player, "sessions_dropped_unknown");
                    }
                }
                return;
            }
        };
        let outcomes = answer.get("sessions").and_then(Value::as_array).cloned().unwrap_or_default();
        for ((player, sent, _), outcome) in guards.iter().zip(&outcomes) {
            let inbox: Vec<InboxMessage> =
                outcome.get("inbox").and_then(|inbox| serde_json::from_value(inbox.clone()).ok()).unwrap_or_default();
            match (outcome.get("outcome").and_then(Value::as_str), sent) {
                (Some("saved"), Some((value, ack))) => self.on_saved(*player, value, *ack, outcome),
                (Some("stale"), _) => self.adopt_stale(*player, outcome),
                (Some("fenced_out"), _) => self.drop_session(*player, "fenced_out"),
                _ => {}
            }
            self.with_session(*player, |session| session.apply_inbox(&inbox));
        }
        drop(guards);
        self.settle_due_in_background();
        let handoffs = answer.get("handoffs").and_then(Value::as_array).cloned().unwrap_or_default();
        for handoff in handoffs {
            let Some(key) = handoff.get("key").and_then(Value::as_str) else { continue };
            let Ok(id) = crate::model::doc_id(PLAYER_STORE, key) else { continue };
            let Some(player) = self.context.names.player_of(&id) else { continue };
            if handoff.get("store").and_then(Value::as_str) != Some(PLAYER_STORE)
                || !self.sessions().contains_key(&player)
            {
                continue;
            }
            self.count("handoffs_given");
            let client = self.clone();
            let task = tokio::spawn(async move {
                let _ = client.end(player).await;
            });
            self.track(task);
        }
    }
}

/// The server's background loop: a sync every renewal interval, saving dirty sessions every
/// autosave interval; nothing while frozen.
pub(crate) async fn background(client: std::sync::Weak<Client>) {
    let (renew_ms, autosave_ms) = match client.upgrade() {
        Some(client) => {
            let engine = &client.context.config.engine;
            (engine.lease_renew_interval_ms, engine.autosave_interval_ms)
        }
        None => return,
    };
    let mut since_autosave_ms = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(renew_ms)).await;
        let Some(client) = client.upgrade() else { return };
        if client.frozen.load(Ordering::SeqCst) {
            continue;
        }
        since_autosave_ms += renew_ms;
        let autosave = since_autosave_ms >= autosave_ms;
        if autosave {
            since_autosave_ms = 0;
        }
        client.sync_once(autosave).await;
    }
}
