//! A session's in-memory state: its status as the game sees it, in-memory changes, inbox
//! messages, and what a transaction may read and set.
//!
//! Invariants:
//! - The status reported is the stored one, except that `Active` reads `LeaseLapsed` while the
//!   lease clock does not vouch for this session (`LeaseClock::is_standing`).
//! - Only `Active` and `Errored` sessions take changes, and none while a transaction commits.
//! - The `in_transaction` flag is set and cleared only through `set_in_transaction`, which only
//!   the transaction's RAII `Parties` guard calls.

use std::any::Any;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio::sync::{Notify, broadcast};

use crate::store::{Condition, DocId, Document, HolderId, InboxMessage};

use super::super::core::Core;
use super::super::counters::Counter;
use super::super::error::SessionError;
use super::super::listener::check_inbox_soon;
use super::super::registry::LiveSession;
use super::super::schema::{ProfileMeta, changed_fields};
use super::kind::PendingTradesCause;
use super::{
    Profile, ProfileKind, SESSION_EVENT_CHANNEL_CAPACITY, SessionCore, SessionEvent, SessionState, SessionStatus,
};

/// What one pass over the inbox did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct InboxPass {
    /// Game messages applied by the kind's handler.
    pub applied: usize,
    /// Trade decisions seen (marked applied; settled by the pending-trades hook).
    pub trade_decisions: usize,
}

/// The field of an inbox message body by which hoard tells a party that a cross-server trade was
/// decided (`{"hoard_trade": {"trade_id": …, "status": …}}`). Such messages are hoard's, never
/// handed to the game's handler.
pub const TRADE_DECISION_MESSAGE_FIELD: &str = "hoard_trade";

/// True for a message hoard sent to tell a party of a trade's decision: the field at the top, or
/// in the body of an engine message's envelope.
fn is_trade_decision(body: &Value) -> bool {
    body.get(TRADE_DECISION_MESSAGE_FIELD).is_some()
        || body.get("body").and_then(|inner| inner.get(TRADE_DECISION_MESSAGE_FIELD)).is_some()
}

/// Everything a new session starts with.
pub(crate) struct NewSession<'a, P> {
    pub kind: &'a ProfileKind<P>,
    pub id: &'a DocId,
    /// 0 for an errored session: epoch 0 never matches a real lease, so even a bug that tried
    /// to save it would be fenced.
    pub epoch: u64,
    pub profile: P,
    pub meta: ProfileMeta,
    pub status: SessionStatus,
    /// The stored document it was loaded from (`None`: playing on defaults).
    pub document: Option<&'a Document>,
    /// New, migrated or reconciled on load: saved at the next save like any change.
    pub changed_on_load: bool,
}

/// Whether a session can take part in a transaction now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PartyStanding {
    Ready,
    LeaseLapsed,
    Errored,
    FencedOut,
    Busy,
    NotLive(SessionStatus),
}

/// What a transaction copies from a party before running its change.
pub(crate) struct PartySnapshot<P> {
    pub profile: P,
    pub meta: ProfileMeta,
    /// The revision the committed change will have in memory.
    pub next_revision: u64,
    pub inbox_applied_through: u64,
    pub inbox_durable_through: u64,
    /// The profile as JSON, only when someone listens to change events (a profile is kilobytes).
    pub before_view: Option<Value>,
}

impl<P> SessionState<P> {
    pub(super) fn is_dirty(&self) -> bool {
        self.revision > self.durable_revision || self.inbox_applied_through > self.inbox_durable_through
    }
}

impl<P: Profile> SessionCore<P> {
    pub(crate) fn new(core: &Arc<Core>, new: NewSession<'_, P>) -> Arc<SessionCore<P>> {
        debug_assert!(
            (new.epoch > 0) != matches!(new.status, SessionStatus::Errored { .. }),
            "a session holds a lease (epoch > 0) exactly when it is not errored"
        );
        // A session playing on defaults has no stored document, hence no attributes or user ids.
        let (attributes, user_ids) = match new.document {
            Some(document) => (document.attributes.clone(), document.user_ids.clone()),
            None => (Map::new(), Vec::new()),
        };
        let state = SessionState {
            profile: new.profile,
            meta: new.meta,
            status: new.status,
            revision: u64::from(new.changed_on_load),
            durable_revision: 0,
            attributes,
            user_ids,
            metadata_revision: 0,
            inbox_applied_through: 0,
            inbox_durable_through: 0,
            in_transaction: false,
            inbox_recheck: false,
            lease_generation: core.lease().generation(),
        };
        Arc::new(SessionCore {
            id: new.id.clone(),
            holder: core.holder().clone(),
            epoch: new.epoch,
            kind: new.kind.clone(),
            engine: Arc::downgrade(core),
            lease: core.lease().clone(),
            state: Mutex::new(state),
            write_order: Arc::new(tokio::sync::Mutex::new(())),
            events: OnceLock::new(),
            end_finished: Notify::new(),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, SessionState<P>> {
        // A game's change function may panic while the lock is held; the profile is then as the
        // function left it, which `update` already accepts (a change is never half applied to
        // the store). Keep serving the session rather than poisoning every later call.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn id(&self) -> &DocId {
        &self.id
    }

    pub(crate) fn holder(&self) -> &HolderId {
        &self.holder
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(crate) fn kind(&self) -> &ProfileKind<P> {
        &self.kind
    }

    pub(crate) fn engine(&self) -> Option<Arc<Core>> {
        self.engine.upgrade()
    }

    /// True when this session belongs to `core` (and not to another engine of the process).
    pub(crate) fn belongs_to(&self, core: &Arc<Core>) -> bool {
        std::ptr::eq(self.engine.as_ptr(), Arc::as_ptr(core))
    }

    /// A new listener of this session's events (the channel is made by the first one).
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.get_or_init(|| broadcast::channel(SESSION_EVENT_CHANNEL_CAPACITY).0).subscribe()
    }

    /// True while someone listens to change events: only then is the profile turned into JSON
    /// to tell what a change changed (a profile is kilobytes).
    fn is_listened_to(&self) -> bool {
        self.events.get().is_some_and(|events| events.receiver_count() > 0)
    }

    /// The condition every write of this session carries (G1).
    pub(crate) fn fence(&self) -> Condition {
        Condition::Lease { holder: self.holder.clone(), epoch: self.epoch }
    }

    pub(crate) fn emit(&self, event: SessionEvent) {
        // No listener is fine: events are for games that want them.
        if let Some(events) = self.events.get() {
            let _ = events.send(event);
        }
    }

    fn reported(&self, state: &SessionState<P>) -> SessionStatus {
        match &state.status {
            SessionStatus::Active if !self.lease.is_standing(state.lease_generation) => SessionStatus::LeaseLapsed,
            status => status.clone(),
        }
    }

    pub(crate) fn status(&self) -> SessionStatus {
        let state = self.lock();
        self.reported(&state)
    }

    pub(super) fn check_can_change(&self, state: &SessionState<P>) -> Result<(), SessionError> {
        match self.reported(state) {
            SessionStatus::Active | SessionStatus::Errored { .. } => {}
            SessionStatus::LeaseLapsed => return Err(SessionError::LeaseLapsed),
            SessionStatus::Closing | SessionStatus::Ended => return Err(SessionError::Ended),
            SessionStatus::FencedOut => return Err(SessionError::FencedOut),
            SessionStatus::HandedOff => return Err(SessionError::HandedOff),
        }
        if state.in_transaction {
            return Err(SessionError::Busy);
        }
        Ok(())
    }

    pub(crate) fn update<R>(&self, change: impl FnOnce(&mut P) -> R) -> Result<R, SessionError> {
        let listening = self.is_listened_to();
        let mut state = self.lock();
        self.check_can_change(&state)?;
        let before = if listening { serde_json::to_value(&state.profile).ok() } else { None };
        let result = change(&mut state.profile);
        state.revision += 1;
        let event = match before {
            Some(before) => serde_json::to_value(&state.profile).ok().map(|after| SessionEvent::Changed {
                changes: changed_fields(&before, &after),
                client_changes: self.kind.schema.client_changes(&before, &after),
            }),
            None => None,
        };
        drop(state);
        if let Some(event) = event {
            self.emit(event);
        }
        Ok(result)
    }

    pub(crate) fn read<R>(&self, read: impl FnOnce(&P) -> R) -> R {
        read(&self.lock().profile)
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.lock().is_dirty()
    }

    pub(super) fn attributes(&self) -> Map<String, Value> {
        self.lock().attributes.clone()
    }

    pub(super) fn user_ids(&self) -> Vec<String> {
        self.lock().user_ids.clone()
    }

    pub(super) fn set_metadata(
        &self,
        attributes: Option<Map<String, Value>>,
        user_ids: Option<Vec<String>>,
    ) -> Result<(), SessionError> {
        let mut state = self.lock();
        self.check_can_change(&state)?;
        if let Some(attributes) = attributes {
            state.attributes = attributes;
        }
        if let Some(user_ids) = user_ids {
            state.user_ids = user_ids;
        }
        state.revision += 1;
        state.metadata_revision = state.revision;
        Ok(())
    }

    /// Ends the session because another server holds the key now.
    pub(crate) fn fence_out(&self) {
        let mut state = self.lock();
        if matches!(state.status, SessionStatus::FencedOut | SessionStatus::Ended | SessionStatus::HandedOff) {
            return;
        }
        state.status = SessionStatus::FencedOut;
        drop(state);
        if let Some(core) = self.engine.upgrade() {
            core.counters().one(Counter::FencedOut);
            core.registry().forget(&self.id, self.epoch);
        }
        self.emit(SessionEvent::FencedOut);
    }

    /// The generation a read or fenced write sent in `generation_before` confirms: when no lapse
    /// began meanwhile and the lease is still within its deadline.
    pub(super) fn generation_vouched(&self, generation_before: u64) -> Option<u64> {
        (self.lease.generation() == generation_before && self.lease.is_valid_now()).then_some(generation_before)
    }

    /// One read, no write: does the store still name this session's holder and epoch?
    pub(crate) async fn still_holds(&self) -> Result<bool, SessionError> {
        if self.lock().status != SessionStatus::Active {
            // Closing is releasing the key; every other status lost it or never had it.
            return Ok(false);
        }
        let core = self.engine.upgrade().ok_or(SessionError::Ended)?;
        let generation = self.lease.generation();
        let document = core.read(&self.id).await.map_err(|error| SessionError::Store { message: error.to_string() })?;
        let held = document.lease.holder.as_ref() == Some(&self.holder) && document.lease.epoch == self.epoch;
        if !held {
            // Taken, stolen or force-released: our fence can never match again.
            self.fence_out();
            return Ok(false);
        }
        match self.generation_vouched(generation) {
            Some(generation) => {
                self.confirm_lease(generation);
                Ok(true)
            }
            // Held, but our lease is past its deadline: anyone may take it at any moment.
            None => Ok(false),
        }
    }

    /// The store showed the key held at this epoch after lease renewal `generation`.
    pub(crate) fn confirm_lease(&self, generation: u64) {
        let mut state = self.lock();
        state.lease_generation = state.lease_generation.max(generation);
    }

    /// Applies waiting inbox messages in order, once each; the acknowledgement goes out with the
    /// next save, in the same write as the changes (G7). A trade's decision (a message hoard
    /// itself sends, `TRADE_DECISION_MESSAGE_FIELD`) is not the game's: it is marked applied and
    /// settled by the kind's pending-trades hook. Without a game handler, the first game message
    /// stops the pass (it waits untouched, and acknowledgements cover a prefix only).
    pub(crate) fn apply_messages(self: &Arc<Self>, inbox: &[InboxMessage]) -> InboxPass {
        let handler = self.kind.message_handler().cloned();
        let mut applied = Vec::new();
        let mut trade_decisions = 0;
        {
            let mut state = self.lock();
            if self.check_can_change(&state).is_err() || state.status != SessionStatus::Active {
                // Errored sessions never save an acknowledgement; busy or lapsed ones read again
                // later (a busy one when its transaction releases it).
                if state.in_transaction {
                    state.inbox_recheck = true;
                }
                return InboxPass::default();
            }
            let mut messages: Vec<&InboxMessage> =
                inbox.iter().filter(|m| m.seq > state.inbox_applied_through).collect();
            messages.sort_by_key(|m| m.seq);
            for message in messages {
                if is_trade_decision(&message.body) {
                    trade_decisions += 1;
                } else if let Some(handler) = &handler {
                    handler(&mut state.profile, message);
                    state.revision += 1;
                    applied.push(message.seq);
                } else {
                    break;
                }
                state.inbox_applied_through = message.seq;
            }
        }
        for seq in &applied {
            self.emit(SessionEvent::MessageApplied { seq: *seq });
        }
        InboxPass { applied: applied.len(), trade_decisions }
    }

    /// Reads the key's inbox and applies what is new; a trade decision among it is settled.
    pub(crate) async fn check_inbox(self: &Arc<Self>) -> Result<usize, SessionError> {
        let core = self.engine.upgrade().ok_or(SessionError::Ended)?;
        let document = core.read(&self.id).await.map_err(|error| SessionError::Store { message: error.to_string() })?;
        let pass = self.apply_messages(&document.inbox);
        if pass.trade_decisions > 0 {
            self.resolve_pending_trades(PendingTradesCause::Decided);
        }
        Ok(pass.applied)
    }

    /// Lets the kind's hook resolve this session's pending cross-server trades (a no-op for a
    /// kind that is not tradable).
    pub(crate) fn resolve_pending_trades(self: &Arc<Self>, cause: PendingTradesCause) {
        if let Some(hook) = self.kind.pending_trades_hook() {
            hook(self, cause);
        }
    }

    // ---- What a transaction reads and sets (only through `transaction::Parties`). ----

    pub(crate) fn party_standing(&self) -> PartyStanding {
        let state = self.lock();
        if state.in_transaction {
            return PartyStanding::Busy;
        }
        match self.reported(&state) {
            SessionStatus::Active => PartyStanding::Ready,
            SessionStatus::LeaseLapsed => PartyStanding::LeaseLapsed,
            SessionStatus::Errored { .. } => PartyStanding::Errored,
            SessionStatus::FencedOut => PartyStanding::FencedOut,
            status => PartyStanding::NotLive(status),
        }
    }

    pub(crate) fn set_in_transaction(&self, busy: bool) {
        let mut state = self.lock();
        debug_assert_ne!(state.in_transaction, busy, "a party is locked and unlocked exactly once");
        state.in_transaction = busy;
        let recheck = !busy && std::mem::take(&mut state.inbox_recheck);
        drop(state);
        if recheck && let Some(core) = self.engine() {
            check_inbox_soon(&core, &self.id);
        }
    }

    pub(crate) fn party_snapshot(&self) -> PartySnapshot<P> {
        let state = self.lock();
        debug_assert!(state.in_transaction, "a transaction reads only parties it has locked");
        let listening = self.is_listened_to();
        PartySnapshot {
            profile: state.profile.clone(),
            meta: state.meta,
            next_revision: state.revision + 1,
            inbox_applied_through: state.inbox_applied_through,
            inbox_durable_through: state.inbox_durable_through,
            before_view: if listening { serde_json::to_value(&state.profile).ok() } else { None },
        }
    }

    /// Shows a committed transaction's result in memory (it is durable). `confirmed_generation`:
    /// the lease generation the commit was sent in, when the lease vouched for it.
    pub(crate) fn adopt_committed(
        &self,
        profile: P,
        revision: u64,
        inbox_acked_through: u64,
        before_view: Option<Value>,
        confirmed_generation: Option<u64>,
    ) {
        let after_view = before_view.as_ref().and_then(|_| serde_json::to_value(&profile).ok());
        {
            let mut state = self.lock();
            debug_assert!(state.in_transaction, "only a locked party adopts a committed result");
            debug_assert!(revision > state.durable_revision, "a committed transaction is newer than any save");
            state.profile = profile;
            state.revision = state.revision.max(revision);
            state.durable_revision = state.durable_revision.max(revision);
            state.inbox_durable_through = state.inbox_durable_through.max(inbox_acked_through);
            if let Some(generation) = confirmed_generation {
                state.lease_generation = state.lease_generation.max(generation);
            }
        }
        if let (Some(before), Some(after)) = (before_view, after_view) {
            self.emit(SessionEvent::Changed {
                changes: changed_fields(&before, &after),
                client_changes: self.kind.schema.client_changes(&before, &after),
            });
        }
        self.emit(SessionEvent::Saved { revision });
    }
}

#[async_trait]
impl<P: Profile> LiveSession for SessionCore<P> {
    fn id(&self) -> &DocId {
        &self.id
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn is_open(&self) -> bool {
        matches!(self.lock().status, SessionStatus::Active | SessionStatus::Errored { .. } | SessionStatus::Closing)
    }

    fn is_closing(&self) -> bool {
        self.lock().status == SessionStatus::Closing
    }

    async fn end_dyn(self: Arc<Self>, handed_off: bool) -> Result<(), SessionError> {
        self.end_or_join(handed_off).await
    }

    async fn check_inbox_dyn(self: Arc<Self>) -> Result<usize, SessionError> {
        self.check_inbox().await
    }

    fn confirm_lease(&self, generation: u64) {
        SessionCore::confirm_lease(self, generation);
    }

    fn fence_out_dyn(&self) {
        self.fence_out();
    }

    #[cfg(feature = "testing")]
    fn abandon(&self) {
        self.lock().status = SessionStatus::Ended;
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}
