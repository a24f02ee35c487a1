//! Strategies: what a game server does for its players. `hoard` runs the real engine; the
//! controls (`naive`, `unfenced`, `skewed-clock`) are deliberately weaker designs written over
//! the raw `Store`, to prove the audit catches what they get wrong; the cross-server trade
//! controls (`record-failure-as-abort`, `early-escrow-release`, in `cross_controls`) run the
//! engine with one broken step of the cross-server trade protocol written beside it.
//!
//! Invariant: every strategy answers the world through `GameServer` with the same meaning: `Ok`
//! (or `Committed`, `Granted`, `Sent`) is a promise to the player that the change is durable, and
//! the audit holds each strategy to exactly the promises it made.

pub mod control;
pub mod cross_controls;
pub mod engine;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hoard::engine::CrossTrade;
use hoard::store::{HolderId, SharedStore};
use serde::{Deserialize, Serialize};

use crate::audit::{Audit, GiftAck};
use crate::config::SimConfig;
use crate::model::{Gift, Names, Purchase, SimProfile, SimTrade};

/// Which design the game servers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Strategy {
    /// The real hoard engine.
    Hoard,
    /// Load on join, unconditional put on save, no lock; a trade is two independent saves.
    Naive,
    /// A lease is taken on join, but saves do not check it (a stolen-from server keeps writing).
    Unfenced,
    /// A lock whose liveness each server judges by its own (skewed) clock.
    SkewedClock,
    /// HTTP only: a client that never adopts the values answers carry (as before issue 11),
    /// against a `hoard serve` weakened to fence session writes by the lease alone.
    NoAdopt,
    /// HTTP only: hoard's client, except that it retries a value move (trade, receipt, gift)
    /// whose answer was lost with a fresh id instead of the same one.
    FreshIds,
    /// The engine, except that a cross-server trade whose deciding record write was answered
    /// with an error is taken as "not committed": the party gets back what it escrowed, in
    /// memory, although the record may have committed (the seed's own flaw). Over HTTP: hoard's
    /// client, except that a prepare whose first attempt went unanswered is taken as "not
    /// committed" in the same way, whatever its retry answered.
    RecordFailureAsAbort,
    /// The engine, except that a receiver takes what the other party escrowed as soon as it is
    /// there, before the trade is decided.
    EarlyEscrowRelease,
}

impl Strategy {
    pub const ALL: [Strategy; 8] = [
        Strategy::Hoard,
        Strategy::Naive,
        Strategy::Unfenced,
        Strategy::SkewedClock,
        Strategy::NoAdopt,
        Strategy::FreshIds,
        Strategy::RecordFailureAsAbort,
        Strategy::EarlyEscrowRelease,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Hoard => "hoard",
            Strategy::Naive => "naive",
            Strategy::Unfenced => "unfenced",
            Strategy::SkewedClock => "skewed-clock",
            Strategy::NoAdopt => "no-adopt",
            Strategy::FreshIds => "fresh-ids",
            Strategy::RecordFailureAsAbort => "record-failure-as-abort",
            Strategy::EarlyEscrowRelease => "early-escrow-release",
        }
    }

    /// The strategies whose servers trade across servers (the engine and its two cross-server
    /// trade controls in process; hoard's client and `record-failure-as-abort` over HTTP).
    pub fn trades_across_servers(self) -> bool {
        matches!(self, Strategy::Hoard | Strategy::RecordFailureAsAbort | Strategy::EarlyEscrowRelease)
    }

    /// The controls that exist only as clients of `hoard serve`.
    pub fn is_http_only(self) -> bool {
        matches!(self, Strategy::NoAdopt | Strategy::FreshIds)
    }

    /// What `--path http` can run: hoard's own client, the HTTP controls and the
    /// `record-failure-as-abort` client.
    pub fn runs_over_http(self) -> bool {
        matches!(self, Strategy::Hoard | Strategy::RecordFailureAsAbort) || self.is_http_only()
    }

    pub fn parse(text: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.name() == text)
    }
}

/// Why an operation did not give the player what they asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpError {
    /// The server lost the player's key (fenced out, handed off, not here): kick the player.
    Kicked(String),
    /// It failed; the player may try again.
    Failed(String),
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::Kicked(reason) => write!(f, "kicked: {reason}"),
            OpError::Failed(reason) => write!(f, "failed: {reason}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TradeAck {
    Committed,
    NotCommitted,
    Unknown,
}

/// What one party's server was told by its part in a cross-server trade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrossAck {
    /// Prepared (escrowed); waiting for the others or the deadline.
    Pending,
    Committed,
    Aborted,
    /// This party could not give what the trade says (the trade aborts).
    Refused(String),
    /// It failed; `kicked`: the server lost the player's key (or the outcome is unknown).
    Failed {
        reason: String,
        kicked: bool,
    },
    /// This strategy has no cross-server trades.
    Unsupported,
}

impl CrossAck {
    /// The outcome's short name, for counts and logs.
    pub fn name(&self) -> &'static str {
        match self {
            CrossAck::Pending => "pending",
            CrossAck::Committed => "committed",
            CrossAck::Aborted => "aborted",
            CrossAck::Refused(_) => "refused",
            CrossAck::Failed { .. } => "failed",
            CrossAck::Unsupported => "unsupported",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuyAck {
    Granted,
    AlreadyGranted,
    NotGranted,
}

/// What shutdown did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownSummary {
    pub saved: usize,
    pub failed: usize,
    pub timed_out: usize,
}

/// One incarnation of one game server.
#[async_trait]
pub trait GameServer: Send + Sync + std::fmt::Debug {
    /// Starts (or joins) the player's session here. `hop`: the player comes from another server
    /// that may still hold the key (ask it to hand over, then take it).
    async fn join(&self, player: usize, hop: bool) -> Result<(), OpError>;
    /// Changes the in-memory profile (no I/O).
    fn update(&self, player: usize, change: &mut (dyn FnMut(&mut SimProfile) + Send)) -> Result<(), OpError>;
    fn read(&self, player: usize) -> Option<SimProfile>;
    /// Saves now; `Ok` means durable.
    async fn save(&self, player: usize) -> Result<(), OpError>;
    /// Saves, releases and forgets the player; `Ok` means the final save is durable.
    async fn leave(&self, player: usize) -> Result<(), OpError>;
    async fn trade(&self, trade: &SimTrade) -> TradeAck;
    /// Takes `player`'s part in a cross-server trade (the other parties' servers take theirs).
    async fn trade_across(&self, _player: usize, _trade: &CrossTrade) -> CrossAck {
        CrossAck::Unsupported
    }
    /// Settles every cross-server trade `player` holds pending here that is decided (aborting
    /// one past its deadline first); returns how many stay pending (`None`: no session here).
    async fn settle_pending(&self, _player: usize) -> Option<usize> {
        None
    }
    async fn buy(&self, player: usize, purchase: &Purchase) -> BuyAck;
    async fn send_gift(&self, player: usize, gift: &Gift) -> GiftAck;
    /// Moves coins from the player into a guild bank; `Ok` means durable.
    async fn deposit(&self, player: usize, bank: usize, amount: i64) -> Result<(), OpError>;
    /// The process dies now: no saves, no releases.
    fn crash(&self);
    /// The process freezes (true) or wakes (false); the link's traffic is frozen by the world.
    fn set_frozen(&self, frozen: bool);
    async fn shutdown(&self, deadline: Duration) -> ShutdownSummary;
    /// What the server counted (the engine's counters; empty for the controls).
    fn counters(&self) -> std::collections::BTreeMap<String, u64> {
        std::collections::BTreeMap::new()
    }
}

/// Everything a server incarnation is built from.
#[derive(Clone, Debug)]
pub struct ServerContext {
    pub config: SimConfig,
    pub names: Names,
    /// The server's store: `FaultStore` over its `SimLink`.
    pub store: SharedStore,
    pub audit: Arc<Audit>,
    pub link: usize,
    pub holder: HolderId,
    /// Seed of this incarnation's own random choices (retry jitter, clock skew).
    pub seed: u64,
    /// This server's clock error, for the skewed-clock control.
    pub clock_skew_ms: i64,
}

/// Opens one server incarnation of the strategy.
pub async fn open_server(strategy: Strategy, context: ServerContext) -> Result<Arc<dyn GameServer>, String> {
    match strategy {
        Strategy::Hoard => Ok(Arc::new(engine::EngineServer::open(context, None).await?)),
        Strategy::RecordFailureAsAbort => Ok(Arc::new(
            engine::EngineServer::open(context, Some(cross_controls::CrossFlaw::RecordFailureAsAbort)).await?,
        )),
        Strategy::EarlyEscrowRelease => Ok(Arc::new(
            engine::EngineServer::open(context, Some(cross_controls::CrossFlaw::EarlyEscrowRelease)).await?,
        )),
        Strategy::Naive | Strategy::Unfenced | Strategy::SkewedClock => {
            Ok(Arc::new(control::ControlServer::open(strategy, context).await?))
        }
        Strategy::NoAdopt | Strategy::FreshIds => Err(format!("{} runs over HTTP only", strategy.name())),
    }
}
