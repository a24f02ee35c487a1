//! The `hoard` strategy: a game server running the real engine, unchanged, through its public
//! API (sessions, trades, receipts, inbox, transactions over shared documents, crash, shutdown).
//!
//! Invariant: this file only translates; every rule is the engine's, so a violation found here is
//! a bug in hoard, never in the simulator's copy of it. The one exception is `flaw`, set only by
//! the cross-server trade controls: its broken steps live in `cross_controls`.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use std::sync::Arc;

use hoard::engine::{
    CrossOutcome, CrossTrade, Engine, HeldPolicy, LoadFailurePolicy, ProfileKind, ReceiptOutcome, SendError, Session,
    SessionError, StartOptions, Trade, TradeError, TradeOutcome, TransactError,
};
use hoard::store::SharedStore;
use serde_json::json;

use super::cross_controls::{CrossFlaw, TapStore, refund_in_memory, take_escrows_early};
use super::{BuyAck, CrossAck, GameServer, OpError, ServerContext, ShutdownSummary, TradeAck};
use crate::audit::GiftAck;
use crate::model::{Gift, Purchase, SimProfile, SimTrade, apply_purchase, profile_kind};

pub struct EngineServer {
    context: ServerContext,
    engine: Engine,
    kind: ProfileKind<SimProfile>,
    sessions: Mutex<BTreeMap<usize, Session<SimProfile>>>,
    /// The cross-server trade controls' broken step (`None`: hoard as it is).
    flaw: Option<CrossFlaw>,
    /// `record-failure-as-abort`: the engine's store, telling which deciding writes failed.
    tap: Option<Arc<TapStore>>,
}

impl std::fmt::Debug for EngineServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineServer").field("link", &self.context.link).finish()
    }
}

fn session_error(error: SessionError) -> OpError {
    match error {
        SessionError::FencedOut | SessionError::HandedOff | SessionError::Ended | SessionError::Errored => {
            OpError::Kicked(error.to_string())
        }
        other => OpError::Failed(other.to_string()),
    }
}

impl EngineServer {
    pub async fn open(context: ServerContext, flaw: Option<CrossFlaw>) -> Result<EngineServer, String> {
        let mut config = context.config.engine.clone();
        config.server_label = context.holder.to_string();
        let tap =
            (flaw == Some(CrossFlaw::RecordFailureAsAbort)).then(|| Arc::new(TapStore::new(context.store.clone())));
        let store: SharedStore = match &tap {
            Some(tap) => tap.clone(),
            None => context.store.clone(),
        };
        let engine = Engine::open_with_holder(store, config, context.holder.clone(), context.seed)
            .await
            .map_err(|e| e.to_string())?;
        Ok(EngineServer { kind: profile_kind()?, context, engine, sessions: Mutex::new(BTreeMap::new()), flaw, tap })
    }

    fn sessions(&self) -> MutexGuard<'_, BTreeMap<usize, Session<SimProfile>>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn session(&self, player: usize) -> Result<Session<SimProfile>, OpError> {
        self.sessions().get(&player).cloned().ok_or_else(|| OpError::Kicked("no session here".into()))
    }
}

#[async_trait]
impl GameServer for EngineServer {
    async fn join(&self, player: usize, _hop: bool) -> Result<(), OpError> {
        // Every join may meet a holder (the server the player came from, or a crashed one):
        // ask it to hand over, then take the key after the bounded wait (G6).
        let options = StartOptions {
            held: HeldPolicy::WaitThenSteal { wait_ms: self.engine.config().handoff_wait_ms },
            on_load_failure: LoadFailurePolicy::Fail,
        };
        let key = self.context.names.player_key(player);
        let session = self
            .engine
            .start_session_with(&self.kind, &key, options)
            .await
            .map_err(|e| OpError::Failed(e.to_string()))?;
        self.sessions().insert(player, session);
        Ok(())
    }

    fn update(&self, player: usize, change: &mut (dyn FnMut(&mut SimProfile) + Send)) -> Result<(), OpError> {
        self.session(player)?.update(|profile| change(profile)).map_err(session_error)
    }

    fn read(&self, player: usize) -> Option<SimProfile> {
        self.sessions().get(&player).map(|session| session.read(SimProfile::clone))
    }

    async fn save(&self, player: usize) -> Result<(), OpError> {
        self.session(player)?.save_now().await.map(|_| ()).map_err(session_error)
    }

    async fn leave(&self, player: usize) -> Result<(), OpError> {
        let session = self.session(player)?;
        self.sessions().remove(&player);
        session.end().await.map_err(session_error)
    }

    async fn trade(&self, trade: &SimTrade) -> TradeAck {
        let mut sessions = Vec::with_capacity(trade.players.len());
        for player in &trade.players {
            match self.session(*player) {
                Ok(session) => sessions.push(session),
                Err(_) => return TradeAck::NotCommitted,
            }
        }
        let refs: Vec<&Session<SimProfile>> = sessions.iter().collect();
        let engine_trade = Trade { id: trade.trade_id.clone(), legs: trade.legs.clone() };
        match self.engine.trade(&refs, &engine_trade).await {
            Ok(TradeOutcome::Committed(_) | TradeOutcome::AlreadyCommitted(_)) => TradeAck::Committed,
            Err(TradeError::Transaction(TransactError::OutcomeUnknown)) => TradeAck::Unknown,
            Err(_) => TradeAck::NotCommitted,
        }
    }

    async fn trade_across(&self, player: usize, trade: &CrossTrade) -> CrossAck {
        let session = match self.session(player) {
            Ok(session) => session,
            Err(error) => return CrossAck::Failed { reason: error.to_string(), kicked: true },
        };
        if self.flaw == Some(CrossFlaw::EarlyEscrowRelease) {
            take_escrows_early(&self.engine, &session, trade).await;
        }
        let before = session.read(SimProfile::clone);
        let result = self.engine.trade_across(&session, trade).await;
        if let (Some(tap), Ok(CrossOutcome::Committed(_))) = (&self.tap, &result)
            && tap.take_failed_decision(&trade.id)
        {
            refund_in_memory(&session, trade, &before);
        }
        match result {
            Ok(CrossOutcome::Pending(_)) => CrossAck::Pending,
            Ok(CrossOutcome::Committed(_)) => CrossAck::Committed,
            Ok(CrossOutcome::Aborted(_)) => CrossAck::Aborted,
            Err(
                error @ (TradeError::InsufficientBalance { .. }
                | TradeError::ItemNotHeld { .. }
                | TradeError::Invalid { .. }),
            ) => CrossAck::Refused(error.to_string()),
            Err(
                error @ TradeError::Transaction(
                    TransactError::FencedOut { .. }
                    | TransactError::OutcomeUnknown
                    | TransactError::NotLive { .. }
                    | TransactError::OnAnotherEngine { .. },
                ),
            ) => CrossAck::Failed { reason: error.to_string(), kicked: true },
            Err(error) => CrossAck::Failed { reason: error.to_string(), kicked: false },
        }
    }

    async fn settle_pending(&self, player: usize) -> Option<usize> {
        let session = self.session(player).ok()?;
        let pending: Vec<String> = session.read(|profile| profile.holdings.pending_trades.keys().cloned().collect());
        for trade_id in &pending {
            let _ = self.engine.settle_trade(&session, trade_id).await;
        }
        Some(session.read(|profile| profile.holdings.pending_trades.len()))
    }

    async fn buy(&self, player: usize, purchase: &Purchase) -> BuyAck {
        let Ok(session) = self.session(player) else { return BuyAck::NotGranted };
        let payload = json!({ "coins": purchase.coins, "item": purchase.item });
        let outcome = self
            .engine
            .process_receipt(&session, &purchase.purchase_id, payload, |profile| {
                apply_purchase(profile, purchase);
                Ok(())
            })
            .await;
        match outcome {
            ReceiptOutcome::Granted => BuyAck::Granted,
            ReceiptOutcome::AlreadyGranted => BuyAck::AlreadyGranted,
            ReceiptOutcome::NotProcessedYet { .. } | ReceiptOutcome::Refused { .. } => BuyAck::NotGranted,
        }
    }

    async fn send_gift(&self, player: usize, gift: &Gift) -> GiftAck {
        let Ok(id) = self.context.names.player_id(player) else { return GiftAck::Failed };
        let Ok(body) = serde_json::to_value(gift) else { return GiftAck::Failed };
        match self.engine.send_message(&id, body).await {
            Ok(_) => GiftAck::Sent,
            Err(SendError::OutcomeUnknown) => GiftAck::Unknown,
            Err(_) => GiftAck::Failed,
        }
    }

    async fn deposit(&self, player: usize, bank: usize, amount: i64) -> Result<(), OpError> {
        let session = self.session(player)?;
        let bank_id = self.context.names.bank_id(bank).map_err(OpError::Failed)?;
        let result = self
            .engine
            .transact(&[&session], std::slice::from_ref(&bank_id), |context| {
                let profile = context.profiles.first_mut().ok_or("no profile")?;
                if profile.coins() < amount {
                    return Err("not enough coins".to_string());
                }
                profile.add_coins(-amount);
                let bank = context.docs.first_mut().ok_or("no bank")?;
                let coins = crate::model::bank_coins(bank.as_ref()) + amount;
                *bank = Some(json!({ crate::model::COINS: coins }));
                Ok(())
            })
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(TransactError::FencedOut { .. } | TransactError::OutcomeUnknown) => {
                Err(OpError::Kicked("lost the key during the deposit".into()))
            }
            Err(error) => Err(OpError::Failed(error.to_string())),
        }
    }

    fn crash(&self) {
        self.engine.crash();
        self.sessions().clear();
    }

    fn set_frozen(&self, frozen: bool) {
        self.engine.suspend_lease_renewal(frozen);
    }

    async fn shutdown(&self, deadline: Duration) -> ShutdownSummary {
        let report = self.engine.shutdown(deadline).await;
        self.sessions().clear();
        ShutdownSummary { saved: report.saved.len(), failed: report.failed.len(), timed_out: report.timed_out.len() }
    }

    fn counters(&self) -> BTreeMap<String, u64> {
        let c = self.engine.counters();
        BTreeMap::from([
            ("saves".to_string(), c.saves),
            ("conflicts".to_string(), c.conflicts),
            ("fenced_out".to_string(), c.fenced_out),
            ("steals".to_string(), c.steals),
            ("handoffs_given".to_string(), c.handoffs_given),
            ("handoffs_requested".to_string(), c.handoffs_requested),
            ("retries".to_string(), c.retries),
            ("load_failures".to_string(), c.load_failures),
            ("renew_failures".to_string(), c.renew_failures),
            ("sessions_started".to_string(), c.sessions_started),
        ])
    }
}
