//! The HTTP path (`hoard sim --path http`): each game server is a stateless HTTP client of one
//! in-process `hoard serve`, under network faults (lost requests and answers, duplicates
//! arriving late, freezes, crashes) and restarts of the service process.
//!
//! Map: `service` (the real router over the world's store, driven in memory; restarts), `net`
//! (`HttpLink`: one game server's network), `client` (sessions and their writes, the background
//! sync; the client rules), `sync` (the background loop: renewal, autosave, messages, handoffs),
//! `moves` (trades, receipts, gifts, deposits), `cross` (cross-server trades: prepare, settle on
//! a decision, at the deadline and on join), `rebase` (client rule 2).
//!
//! Invariant: the game servers speak only the documented API; the audit is the in-process
//! path's, fed by the service's store link (`SimLink::for_service`), which attributes each
//! write to the game server whose holder it names.

pub mod client;
pub mod cross;
pub mod moves;
pub mod net;
pub mod rebase;
pub mod service;
pub mod sync;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;

use crate::audit::GiftAck;
use crate::model::{Gift, Purchase, SimProfile, SimTrade};
use crate::strategies::{BuyAck, CrossAck, GameServer, OpError, ShutdownSummary, Strategy, TradeAck};
use client::Client;
pub use client::{ClientRules, HttpContext};
use hoard::engine::CrossTrade;
pub use net::{HttpLink, NetCounts};
pub use service::SimService;
use sync::background;

/// The rules a strategy's clients keep over HTTP.
pub fn client_rules(strategy: Strategy) -> Result<ClientRules, String> {
    match strategy {
        Strategy::Hoard => Ok(ClientRules::Hoard),
        Strategy::NoAdopt => Ok(ClientRules::NoAdopt),
        Strategy::FreshIds => Ok(ClientRules::FreshIds),
        Strategy::RecordFailureAsAbort => Ok(ClientRules::RecordFailureAsAbort),
        other => Err(format!("strategy {} does not run over HTTP", other.name())),
    }
}

/// One game server incarnation of the HTTP path.
#[derive(Debug)]
pub struct HttpServer {
    client: Arc<Client>,
}

impl HttpServer {
    /// Registers the incarnation's holder and starts its background sync.
    pub async fn open(rules: ClientRules, context: HttpContext) -> Result<HttpServer, String> {
        let client = Arc::new(Client::new(rules, context));
        client.register().await?;
        let task = tokio::spawn(background(Arc::downgrade(&client)));
        client.track(task);
        Ok(HttpServer { client })
    }
}

#[async_trait]
impl GameServer for HttpServer {
    async fn join(&self, player: usize, _hop: bool) -> Result<(), OpError> {
        self.client.join(player).await
    }

    fn update(&self, player: usize, change: &mut (dyn FnMut(&mut SimProfile) + Send)) -> Result<(), OpError> {
        self.client
            .with_session(player, |session| change(&mut session.data))
            .ok_or_else(|| OpError::Kicked("no session here".into()))
    }

    fn read(&self, player: usize) -> Option<SimProfile> {
        self.client.session(player).map(|session| session.data)
    }

    async fn save(&self, player: usize) -> Result<(), OpError> {
        self.client.save(player).await
    }

    async fn leave(&self, player: usize) -> Result<(), OpError> {
        self.client.end(player).await
    }

    async fn trade(&self, trade: &SimTrade) -> TradeAck {
        self.client.trade(trade).await
    }

    async fn trade_across(&self, player: usize, trade: &CrossTrade) -> CrossAck {
        self.client.trade_across(player, trade).await
    }

    async fn settle_pending(&self, player: usize) -> Option<usize> {
        self.client.settle_pending(player).await
    }

    async fn buy(&self, player: usize, purchase: &Purchase) -> BuyAck {
        self.client.buy(player, purchase).await
    }

    async fn send_gift(&self, player: usize, gift: &Gift) -> GiftAck {
        self.client.send_gift(player, gift).await
    }

    async fn deposit(&self, player: usize, bank: usize, amount: i64) -> Result<(), OpError> {
        self.client.deposit(player, bank, amount).await
    }

    fn crash(&self) {
        let tasks = std::mem::take(&mut *self.client.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for task in tasks {
            task.abort();
        }
        self.client.sessions().clear();
    }

    fn set_frozen(&self, frozen: bool) {
        self.client.frozen.store(frozen, Ordering::SeqCst);
    }

    async fn shutdown(&self, deadline: Duration) -> ShutdownSummary {
        let players: Vec<usize> = self.client.sessions().keys().copied().collect();
        let ends = players.iter().map(|player| tokio::time::timeout(deadline, self.client.end(*player)));
        let mut summary = ShutdownSummary::default();
        for result in futures_util::future::join_all(ends).await {
            match result {
                Ok(Ok(())) => summary.saved += 1,
                Ok(Err(_)) => summary.failed += 1,
                Err(_) => summary.timed_out += 1,
            }
        }
        if let Some(holder) = self.client.holder() {
            let release = service::SimRequest::post(format!("/v1/holders/{holder}/release"), serde_json::json!({}));
            let _ = tokio::time::timeout(deadline, self.client.send(&release)).await;
        }
        self.crash();
        summary
    }

    fn counters(&self) -> BTreeMap<String, u64> {
        self.client.counters()
    }
}
