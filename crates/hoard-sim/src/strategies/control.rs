//! The controls: deliberately weaker designs over the raw `Store`, run through the same world and
//! faults as hoard, to prove the audit bites. Each copies a design the research found in use:
//!
//! - `naive` — the seed tutorial's first design: load on join, unconditional put on save, no
//!   lock at all; a trade changes memory and spawns two independent saves.
//! - `unfenced` — a lease is taken on join (store lease, store clock) and stolen after a bounded
//!   wait, but saves do not check it: the stolen-from server keeps writing (DocumentService,
//!   ProfileStore's old holder).
//! - `skewed-clock` — a lock document whose expiry each server writes and judges by its own,
//!   skewed clock, and a save allowed while the writer *believes* its lock alive (ProfileService).
//!
//! Invariant: these are wrong on purpose and only here; nothing in them is used by hoard.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use hoard::engine::{ProfileKind, ProfileMeta};
use hoard::store::{Commit, CommitOutcome, Condition, ConflictKind, DocId, Document, LeaseOp, StoreError, Write, get};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::{BuyAck, GameServer, OpError, ServerContext, ShutdownSummary, Strategy, TradeAck};
use crate::audit::GiftAck;
use crate::model::{
    Gift, INBOX_BODY_FIELD, Purchase, SimProfile, SimTrade, apply_message, apply_purchase, apply_trade_legs,
    bank_coins, profile_kind,
};

#[derive(Clone, Debug)]
struct ControlSession {
    profile: SimProfile,
    meta: ProfileMeta,
    /// Highest inbox sequence applied at load; acknowledged with each save.
    inbox_applied_through: u64,
    /// Skewed-clock: when this server believes its lock expires, by its own clock.
    lock_expires_local_ms: i64,
    /// Skewed-clock: a renewal found another holder in the lock.
    lock_lost: bool,
}

#[derive(Debug)]
struct Inner {
    strategy: Strategy,
    context: ServerContext,
    sessions: Mutex<BTreeMap<usize, ControlSession>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    frozen: AtomicBool,
}

#[derive(Debug)]
pub struct ControlServer {
    inner: Arc<Inner>,
}

struct Kind(ProfileKind<SimProfile>);

impl Inner {
    fn sessions(&self) -> MutexGuard<'_, BTreeMap<usize, ControlSession>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn track(&self, task: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tasks.retain(|task| !task.is_finished());
        tasks.push(task);
    }

    /// This server's clock: the world's time plus its skew (only the skewed-clock control reads it).
    fn local_now_ms(&self) -> i64 {
        i64::try_from(self.context.audit.now_ms()).unwrap_or(i64::MAX) + self.context.clock_skew_ms
    }

    fn kind() -> Result<Kind, OpError> {
        profile_kind().map(Kind).map_err(OpError::Failed)
    }

    fn player_id(&self, player: usize) -> Result<DocId, OpError> {
        self.context.names.player_id(player).map_err(OpError::Failed)
    }

    async fn backoff(&self, attempt: u32) {
        let delay_ms = self.context.config.engine.backoff_ms(attempt, 0.5);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }

    /// Commits, retrying every error but bad input (these designs treat a lost answer as a
    /// failure and simply write again).
    async fn commit_retrying(&self, make: impl Fn() -> Commit) -> Result<CommitOutcome, OpError> {
        let mut last = String::new();
        for attempt in 0..self.context.config.engine.save_attempts_max {
            if attempt > 0 {
                self.backoff(attempt - 1).await;
            }
            match self.context.store.commit(make()).await {
                Ok(outcome) => return Ok(outcome),
                Err(StoreError::InvalidInput(error)) => return Err(OpError::Failed(error.to_string())),
                Err(error) => last = error.to_string(),
            }
        }
        Err(OpError::Failed(last))
    }

    async fn get_retrying(&self, id: &DocId) -> Result<Document, OpError> {
        let mut last = String::new();
        for attempt in 0..self.context.config.engine.load_attempts_max {
            if attempt > 0 {
                self.backoff(attempt - 1).await;
            }
            match get(&*self.context.store, id).await {
                Ok(document) => return Ok(document),
                Err(error) => last = error.to_string(),
            }
        }
        Err(OpError::Failed(last))
    }

    async fn acquire(&self, player: usize) -> Result<i64, OpError> {
        match self.strategy {
            Strategy::Unfenced => self.acquire_lease(player).await.map(|()| 0),
            Strategy::SkewedClock => self.acquire_lock_document(player).await,
            _ => Ok(0),
        }
    }

    /// Store lease, judged by the store's clock; stolen after the handoff wait.
    async fn acquire_lease(&self, player: usize) -> Result<(), OpError> {
        let id = self.player_id(player)?;
        let holder = self.context.holder.clone();
        let config = &self.context.config.engine;
        let polls_max = config.handoff_wait_ms / config.handoff_poll_interval_ms;
        for poll in 0..=polls_max {
            let condition = if poll == polls_max { Condition::None } else { Condition::LeaseFree };
            let make = || {
                Commit::single(Write::new(id.clone()).when(condition.clone()).lease(LeaseOp::Acquire(holder.clone())))
            };
            match self.commit_retrying(make).await? {
                CommitOutcome::Committed { .. } => return Ok(()),
                CommitOutcome::Conflict(conflict) if conflict.found.lease.holder.as_ref() == Some(&holder) => {
                    return Ok(());
                }
                CommitOutcome::Conflict(_) => {
                    tokio::time::sleep(Duration::from_millis(config.handoff_poll_interval_ms)).await;
                }
            }
        }
        Err(OpError::Failed("could not take the lease".into()))
    }

    /// A lock document `{holder, expires_at_ms}`, expiry written and judged by this server's
    /// own clock. Returns the local expiry.
    async fn acquire_lock_document(&self, player: usize) -> Result<i64, OpError> {
        let lock_id = self.context.names.lock_id(player).map_err(OpError::Failed)?;
        let me = self.context.holder.to_string();
        let config = &self.context.config.engine;
        let polls_max = config.handoff_wait_ms / config.handoff_poll_interval_ms;
        for _poll in 0..=polls_max {
            let lock = self.get_retrying(&lock_id).await?;
            let holder = lock.value.as_ref().and_then(|v| v.get("holder")).and_then(Value::as_str).unwrap_or("");
            let expires_at_ms =
                lock.value.as_ref().and_then(|v| v.get("expires_at_ms")).and_then(Value::as_i64).unwrap_or(0);
            if holder.is_empty() || holder == me || expires_at_ms < self.local_now_ms() {
                let expires_local_ms = self.local_now_ms() + i64::try_from(config.lease_ttl_ms).unwrap_or(i64::MAX);
                let value = json!({ "holder": me, "expires_at_ms": expires_local_ms });
                let make = || {
                    Commit::single(Write::put(lock_id.clone(), value.clone()).when(Condition::Version(lock.version)))
                };
                if let CommitOutcome::Committed { .. } = self.commit_retrying(make).await? {
                    self.context.audit.acquired(&self.player_id(player)?, self.context.link);
                    return Ok(expires_local_ms);
                }
                continue;
            }
            tokio::time::sleep(Duration::from_millis(config.handoff_poll_interval_ms)).await;
        }
        Err(OpError::Failed("the lock is held".into()))
    }

    async fn load(&self, player: usize, lock_expires_local_ms: i64) -> Result<(), OpError> {
        let id = self.player_id(player)?;
        let document = self.get_retrying(&id).await?;
        let Kind(kind) = Self::kind()?;
        let decoded = kind.schema.decode(document.value.as_ref()).map_err(|e| OpError::Failed(e.to_string()))?;
        let mut profile = decoded.profile;
        let mut inbox_applied_through = 0;
        for message in &document.inbox {
            apply_message(&mut profile, message);
            inbox_applied_through = inbox_applied_through.max(message.seq);
        }
        let session = ControlSession {
            profile,
            meta: decoded.meta,
            inbox_applied_through,
            lock_expires_local_ms,
            lock_lost: false,
        };
        self.sessions().insert(player, session);
        if self.strategy == Strategy::Naive {
            self.context.audit.acquired(&id, self.context.link);
        }
        Ok(())
    }

    /// Writes a session's state unconditionally (that is the point of these controls).
    async fn write_session(&self, player: usize, session: &ControlSession, release: bool) -> Result<(), OpError> {
        if self.strategy == Strategy::SkewedClock
            && (session.lock_lost || session.lock_expires_local_ms <= self.local_now_ms())
        {
            return Err(OpError::Kicked("my lock expired by my clock".into()));
        }
        let id = self.player_id(player)?;
        let Kind(kind) = Self::kind()?;
        let value = kind.schema.encode(&session.profile, &session.meta).map_err(|e| OpError::Failed(e.to_string()))?;
        let mut write = Write::put(id, value);
        if session.inbox_applied_through > 0 {
            write = write.ack_inbox_through(session.inbox_applied_through);
        }
        if release && self.strategy == Strategy::Unfenced {
            write = write.lease(LeaseOp::Release);
        }
        self.commit_retrying(|| Commit::single(write.clone())).await?;
        if release && self.strategy == Strategy::SkewedClock {
            let lock_id = self.context.names.lock_id(player).map_err(OpError::Failed)?;
            let free = json!({ "holder": "", "expires_at_ms": 0 });
            self.commit_retrying(|| Commit::single(Write::put(lock_id.clone(), free.clone()))).await?;
        }
        Ok(())
    }

    async fn save(&self, player: usize) -> Result<(), OpError> {
        let session = self.sessions().get(&player).cloned().ok_or_else(|| OpError::Kicked("no session here".into()))?;
        self.write_session(player, &session, false).await
    }

    async fn renew(&self) {
        match self.strategy {
            Strategy::Unfenced => {
                let _ = self
                    .context
                    .store
                    .renew_holder(&self.context.holder, self.context.config.engine.lease_ttl_ms)
                    .await;
            }
            Strategy::SkewedClock => {
                let players: Vec<usize> = self.sessions().keys().copied().collect();
                for player in players {
                    self.renew_lock_document(player).await;
                }
            }
            _ => {}
        }
    }

    async fn renew_lock_document(&self, player: usize) {
        let Ok(lock_id) = self.context.names.lock_id(player) else { return };
        let Ok(lock) = get(&*self.context.store, &lock_id).await else { return };
        let me = self.context.holder.to_string();
        let holder =
            lock.value.as_ref().and_then(|v| v.get("holder")).and_then(Value::as_str).unwrap_or("").to_string();
        if holder != me {
            if let Some(session) = self.sessions().get_mut(&player) {
                session.lock_lost = true;
            }
            return;
        }
        let expires_local_ms =
            self.local_now_ms() + i64::try_from(self.context.config.engine.lease_ttl_ms).unwrap_or(i64::MAX);
        let value = json!({ "holder": me, "expires_at_ms": expires_local_ms });
        let write = Write::put(lock_id, value).when(Condition::Version(lock.version));
        if let Ok(CommitOutcome::Committed { .. }) = self.context.store.commit(Commit::single(write)).await
            && let Some(session) = self.sessions().get_mut(&player)
        {
            session.lock_expires_local_ms = expires_local_ms;
        }
    }
}

async fn background(weak: Weak<Inner>) {
    let (renew_ms, autosave_ms) = match weak.upgrade() {
        Some(inner) => {
            (inner.context.config.engine.lease_renew_interval_ms, inner.context.config.engine.autosave_interval_ms)
        }
        None => return,
    };
    let mut since_autosave_ms = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(renew_ms)).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.frozen.load(Ordering::SeqCst) {
            continue;
        }
        inner.renew().await;
        since_autosave_ms += renew_ms;
        if since_autosave_ms >= autosave_ms {
            since_autosave_ms = 0;
            let sessions: Vec<(usize, ControlSession)> =
                inner.sessions().iter().map(|(p, s)| (*p, s.clone())).collect();
            for (player, session) in sessions {
                let _ = inner.write_session(player, &session, false).await;
            }
        }
    }
}

impl ControlServer {
    pub async fn open(strategy: Strategy, context: ServerContext) -> Result<ControlServer, String> {
        if strategy == Strategy::Unfenced {
            let engine = &context.config.engine;
            let mut renewed = Err("not tried".to_string());
            for attempt in 0..engine.acquire_attempts_max {
                renewed = context
                    .store
                    .renew_holder(&context.holder, engine.lease_ttl_ms)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                if renewed.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(engine.backoff_ms(attempt, 0.5))).await;
            }
            renewed?;
        }
        let inner = Arc::new(Inner {
            strategy,
            context,
            sessions: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(Vec::new()),
            frozen: AtomicBool::new(false),
        });
        let task = tokio::spawn(background(Arc::downgrade(&inner)));
        inner.track(task);
        Ok(ControlServer { inner })
    }
}

#[async_trait]
impl GameServer for ControlServer {
    async fn join(&self, player: usize, _hop: bool) -> Result<(), OpError> {
        let lock_expires_local_ms = self.inner.acquire(player).await?;
        self.inner.load(player, lock_expires_local_ms).await
    }

    fn update(&self, player: usize, change: &mut (dyn FnMut(&mut SimProfile) + Send)) -> Result<(), OpError> {
        let mut sessions = self.inner.sessions();
        let session = sessions.get_mut(&player).ok_or_else(|| OpError::Kicked("no session here".into()))?;
        change(&mut session.profile);
        Ok(())
    }

    fn read(&self, player: usize) -> Option<SimProfile> {
        self.inner.sessions().get(&player).map(|s| s.profile.clone())
    }

    async fn save(&self, player: usize) -> Result<(), OpError> {
        self.inner.save(player).await
    }

    async fn leave(&self, player: usize) -> Result<(), OpError> {
        let session = self.inner.sessions().remove(&player).ok_or_else(|| OpError::Kicked("no session here".into()))?;
        self.inner.write_session(player, &session, true).await
    }

    async fn trade(&self, trade: &SimTrade) -> TradeAck {
        {
            let mut sessions = self.inner.sessions();
            let mut profiles = Vec::with_capacity(trade.players.len());
            for player in &trade.players {
                match sessions.get(player) {
                    Some(session) => profiles.push(session.profile.clone()),
                    None => return TradeAck::NotCommitted,
                }
            }
            if apply_trade_legs(&mut profiles, trade).is_err() {
                return TradeAck::NotCommitted;
            }
            for (player, profile) in trade.players.iter().zip(profiles) {
                if let Some(session) = sessions.get_mut(player) {
                    session.profile = profile;
                }
            }
        }
        if self.inner.strategy == Strategy::Naive {
            // The seed's naive trade: two saves spawned independently, the trade done at once.
            for player in &trade.players {
                let (inner, player) = (self.inner.clone(), *player);
                let task = tokio::spawn(async move {
                    let _ = inner.save(player).await;
                });
                self.inner.track(task);
            }
            return TradeAck::Committed;
        }
        let saves = trade.players.iter().map(|player| self.inner.save(*player));
        let results = futures_util::future::join_all(saves).await;
        if results.iter().all(Result::is_ok) { TradeAck::Committed } else { TradeAck::NotCommitted }
    }

    async fn buy(&self, player: usize, purchase: &Purchase) -> BuyAck {
        {
            let mut sessions = self.inner.sessions();
            let Some(session) = sessions.get_mut(&player) else { return BuyAck::NotGranted };
            if session.profile.purchases.contains(&purchase.purchase_id) {
                return BuyAck::AlreadyGranted;
            }
            apply_purchase(&mut session.profile, purchase);
        }
        match self.inner.save(player).await {
            Ok(()) => BuyAck::Granted,
            Err(_) => BuyAck::NotGranted,
        }
    }

    async fn send_gift(&self, player: usize, gift: &Gift) -> GiftAck {
        let Ok(id) = self.inner.player_id(player) else { return GiftAck::Failed };
        let Ok(body) = serde_json::to_value(gift) else { return GiftAck::Failed };
        let envelope = json!({ "message_id": gift.gift_id, INBOX_BODY_FIELD: body });
        match self.inner.context.store.commit(Commit::single(Write::new(id).push_message(envelope))).await {
            Ok(CommitOutcome::Committed { .. }) => GiftAck::Sent,
            Ok(CommitOutcome::Conflict(conflict)) if conflict.kind == ConflictKind::InboxFull => GiftAck::Failed,
            Ok(CommitOutcome::Conflict(_)) => GiftAck::Failed,
            Err(error) if error.may_have_applied() => GiftAck::Unknown,
            Err(_) => GiftAck::Failed,
        }
    }

    async fn deposit(&self, player: usize, bank: usize, amount: i64) -> Result<(), OpError> {
        let has_coins = self.inner.sessions().get(&player).is_some_and(|s| s.profile.coins() >= amount);
        if !has_coins {
            return Err(OpError::Failed("not enough coins".into()));
        }
        let bank_id = self.inner.context.names.bank_id(bank).map_err(OpError::Failed)?;
        let current = self.inner.get_retrying(&bank_id).await?;
        let coins = bank_coins(current.value.as_ref()) + amount;
        let value = json!({ crate::model::COINS: coins });
        self.inner.commit_retrying(|| Commit::single(Write::put(bank_id.clone(), value.clone()))).await?;
        self.update(player, &mut |profile: &mut SimProfile| profile.add_coins(-amount))?;
        self.inner.save(player).await
    }

    fn crash(&self) {
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for task in tasks {
            task.abort();
        }
        self.inner.sessions().clear();
    }

    fn set_frozen(&self, frozen: bool) {
        self.inner.frozen.store(frozen, Ordering::SeqCst);
    }

    async fn shutdown(&self, deadline: Duration) -> ShutdownSummary {
        let sessions: Vec<(usize, ControlSession)> = std::mem::take(&mut *self.inner.sessions()).into_iter().collect();
        let writes = sessions
            .iter()
            .map(|(player, session)| tokio::time::timeout(deadline, self.inner.write_session(*player, session, true)));
        let mut summary = ShutdownSummary::default();
        for result in futures_util::future::join_all(writes).await {
            match result {
                Ok(Ok(())) => summary.saved += 1,
                Ok(Err(_)) => summary.failed += 1,
                Err(_) => summary.timed_out += 1,
            }
        }
        self.crash();
        summary
    }
}
