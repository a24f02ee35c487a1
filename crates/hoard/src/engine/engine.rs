//! The engine's facade: `Engine`, what a game server holds. Every method delegates to the module
//! that owns the behaviour; nothing inside the engine uses this file.
//!
//! Invariants:
//! - One engine process incarnation is one holder; its process lease is renewed by one write per
//!   `lease_renew_interval_ms`, whatever the number of sessions (ARCHITECTURE.md, "Leases").
//! - The engine reads no wall clock: time comes from tokio (tests and the simulator pause it)
//!   and lease expiry from the store's clock.
//! - Cheap to clone; all clones are the same engine. Background tasks hold only weak
//!   references: dropping every handle stops them (a crash, as far as the store can tell).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::retry::Jitter;
use crate::store::{DocId, HolderId, SharedStore, VersionInfo, VersionQuery};

use super::config::EngineConfig;
use super::core::Core;
use super::counters::EngineCounters;
use super::error::StartError;
use super::inbox;
use super::inbox::SendError;
use super::lifecycle::{self, OpenError, ShutdownReport};
use super::operator::{self, OperatorError, Peek};
use super::receipt::{self, ReceiptOutcome};
use super::session::{Profile, ProfileKind, Session};
use super::shared_docs::SharedDocs;
use super::start::{self, StartOptions};
use super::trade::{self, CrossOutcome, CrossTrade, Tradable, Trade, TradeError, TradeOutcome, TradeRecord};
use super::transaction::{self, TransactError, TxContext};

/// The engine. Cheap to clone; all clones are the same engine.
#[derive(Clone, Debug)]
pub struct Engine {
    core: Arc<Core>,
}

impl Engine {
    /// Opens an engine on a store: registers this process's lease and starts the background
    /// tasks (lease renewal, handoff and inbox notifications, shared-document flushes).
    pub async fn open(store: SharedStore, config: EngineConfig) -> Result<Engine, OpenError> {
        config.check().map_err(OpenError::Config)?;
        let holder = HolderId::generate(&config.server_label);
        let seed = Jitter::seed_from(holder.as_str());
        Engine::open_with_holder(store, config, holder, seed).await
    }

    /// Opens with a given holder id and random seed (the simulator uses this for replayable
    /// runs). The holder id must be unique to this process incarnation.
    pub async fn open_with_holder(
        store: SharedStore,
        config: EngineConfig,
        holder: HolderId,
        seed: u64,
    ) -> Result<Engine, OpenError> {
        Ok(Engine { core: lifecycle::open(store, config, holder, seed).await? })
    }

    pub fn holder(&self) -> &HolderId {
        self.core.holder()
    }

    pub fn config(&self) -> &EngineConfig {
        self.core.config()
    }

    pub fn store(&self) -> &SharedStore {
        self.core.store()
    }

    pub fn default_start_options(&self) -> StartOptions {
        StartOptions::default_for(self.core.config())
    }

    pub fn counters(&self) -> EngineCounters {
        self.core.counters_snapshot()
    }

    /// Starts (or joins) the session of `key`, with the engine's default options.
    pub async fn start_session<P: Profile>(&self, kind: &ProfileKind<P>, key: &str) -> Result<Session<P>, StartError> {
        self.start_session_with(kind, key, self.default_start_options()).await
    }

    /// Starts (or joins) the session of `key`. A second call for a key this engine is loading
    /// or holds returns the same session.
    pub async fn start_session_with<P: Profile>(
        &self,
        kind: &ProfileKind<P>,
        key: &str,
        options: StartOptions,
    ) -> Result<Session<P>, StartError> {
        start::start_session(&self.core, kind, key, options).await
    }

    /// The lock-free shared documents of this engine: keys no server holds, changed by pure
    /// update functions from any number of engines (see `shared_docs`).
    pub fn shared_docs(&self) -> SharedDocs {
        SharedDocs::new(self.core.clone())
    }

    /// Sends a message to a key's inbox, whether its player is offline, here or elsewhere. It is
    /// applied exactly once by whichever session holds the key now or next (G7). A full inbox
    /// refuses the message; nothing is dropped.
    pub async fn send_message(&self, id: &DocId, body: Value) -> Result<u64, SendError> {
        inbox::send_message(&self.core, id, body).await
    }

    /// Changes several sessions' profiles (and optionally shared lock-free documents) in one
    /// fenced atomic commit (G3). Every session must be live on this engine and not errored. The
    /// result shows in memory only once durable; on any failure memory keeps its prior state.
    /// `change` sees the profiles in the order of `sessions` and may run more than once.
    pub async fn transact<P: Profile, R>(
        &self,
        sessions: &[&Session<P>],
        shared_docs: &[DocId],
        change: impl FnMut(&mut TxContext<P>) -> Result<R, String>,
    ) -> Result<R, TransactError> {
        transaction::transact(&self.core, sessions, shared_docs, change).await.map(|(result, _)| result)
    }

    /// Trades items and currencies among sessions held by this engine, atomically (G3).
    /// Idempotent by `trade.id`: a retry returns the first result and moves nothing. A session of
    /// another engine is refused at once (`TransactError::OnAnotherEngine`): players on different
    /// servers trade with `trade_across`.
    pub async fn trade<P: Tradable>(
        &self,
        sessions: &[&Session<P>],
        trade: &Trade,
    ) -> Result<TradeOutcome, TradeError> {
        trade::trade_local(&self.core, sessions, trade).await
    }

    /// Takes `session`'s part in a trade among players who may be on different servers (G3):
    /// every party's server calls this with the same `CrossTrade`. This party's gives go into
    /// escrow in one fenced commit; the last party to do so decides `committed`; each side is
    /// settled by whichever server holds it. Idempotent by `trade.id`. Returns `Pending` until
    /// the others have prepared: the session then sees `SessionEvent::TradeSettled` when it is
    /// settled, and past `trade.timeout_ms` the trade aborts by itself. The kind must be declared
    /// `ProfileKind::tradable()`.
    pub async fn trade_across<P: Tradable>(
        &self,
        session: &Session<P>,
        trade: &CrossTrade,
    ) -> Result<CrossOutcome, TradeError> {
        trade::trade_across(&self.core, session, trade).await
    }

    /// Settles `session`'s side of a cross-server trade it holds pending, if decided (aborting it
    /// first if its deadline passed). The engine does this by itself; this is for a game that
    /// wants the answer now.
    pub async fn settle_trade<P: Tradable>(
        &self,
        session: &Session<P>,
        trade_id: &str,
    ) -> Result<CrossOutcome, TradeError> {
        trade::settle_pending(&self.core, session, trade_id).await
    }

    /// Aborts a cross-server trade that is still pending (a player declined, or an operator
    /// acts); parties that escrowed get it back. Returns the decided record: aborted now, or
    /// what was decided first.
    pub async fn abort_trade(&self, trade_id: &str, reason: &str) -> Result<TradeRecord, TradeError> {
        trade::abort_trade(&self.core, trade_id, reason).await
    }

    /// Reads a trade's record.
    pub async fn trade_record(&self, trade_id: &str) -> Result<Option<TradeRecord>, TradeError> {
        trade::trade_record(&self.core, trade_id).await
    }

    /// Lists a player's trades (ids), oldest id first, a page at a time.
    pub async fn trades_of(
        &self,
        player: &DocId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, TradeError> {
        trade::trades_of(&self.core, player, after, limit).await
    }

    /// Processes a purchase receipt: runs `grant` on the player's profile and records the
    /// purchase id in the same fenced commit. Safe to call any number of times, on any server.
    pub async fn process_receipt<P: Profile>(
        &self,
        session: &Session<P>,
        purchase_id: &str,
        payload: Value,
        grant: impl FnMut(&mut P) -> Result<(), String>,
    ) -> ReceiptOutcome {
        receipt::process_receipt(&self.core, session, purchase_id, payload, grant).await
    }

    /// Reads a key's document and decodes its profile, without taking the key.
    pub async fn peek<P: Profile>(&self, kind: &ProfileKind<P>, key: &str) -> Result<Peek<P>, OperatorError> {
        operator::peek(&self.core, kind, key).await
    }

    /// Lists a key's versions, newest first.
    pub async fn versions(&self, id: &DocId, query: &VersionQuery) -> Result<Vec<VersionInfo>, OperatorError> {
        operator::versions(&self.core, id, query).await
    }

    /// Writes version `version` of `id` as its new version. Refused while a live session holds the
    /// key unless `force`, which fences the holder out first. Returns the new version.
    pub async fn rollback(&self, id: &DocId, version: u64, force: bool) -> Result<u64, OperatorError> {
        operator::rollback(&self.core, id, version, force).await
    }

    /// Saves and releases every session in parallel, refusing new ones, and flushes every shared
    /// document with updates waiting, all within `deadline` (G9).
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        lifecycle::shutdown(&self.core, deadline).await
    }

    /// Stops (or resumes) renewing this process's lease, as a paused or partitioned server would.
    /// Its keys become free to take once the lease lapses; its sessions report `LeaseLapsed`
    /// after the local deadline and are fenced out by their next write if another server took
    /// their key. Test hook (feature `testing`), for tests and the simulator.
    #[cfg(feature = "testing")]
    pub fn suspend_lease_renewal(&self, suspended: bool) {
        self.core.lease().set_suspended(suspended);
    }

    /// Simulates a crash: stops every background task and forgets every session without saving
    /// or releasing anything. The process lease lapses after `lease_ttl_ms`. Test hook (feature
    /// `testing`), for tests and the simulator.
    #[cfg(feature = "testing")]
    pub fn crash(&self) {
        lifecycle::crash(&self.core);
    }
}
