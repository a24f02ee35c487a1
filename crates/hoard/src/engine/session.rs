//! A live session: one player's profile held in memory by this engine, and its write path.
//!
//! Invariants:
//! - Every write of a session is conditional on `Lease { holder, epoch }` (G1). The first write
//!   that finds another holder or epoch ends the session as `FencedOut` at once; it never writes
//!   again and tells the game (unlike ProfileStore, whose stolen-from server keeps going).
//! - All writes of one key go through `write_order`, one at a time, each snapshotting the newest
//!   in-memory state when it runs, so writes apply in issue order, a retry never overtakes a later
//!   write, and a newer save supersedes an older queued one (G5).
//! - An errored session (load failed, playing on defaults) never writes (G2).
//! - In-memory reads and changes are synchronous and never wait for I/O.

use std::any::Any;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::store::{
    Commit, CommitOutcome, Condition, ConflictKind, DocId, HolderId, InboxMessage, LeaseOp, StoreError, ValueOp, Write,
    get, resolve_unknown_commit,
};

use super::engine::EngineShared;
use super::error::SessionError;
use super::schema::{FieldChange, ProfileMeta, ProfileSchema};

/// Capacity of each session's event channel; a slow listener skips events (`Lagged`).
pub const SESSION_EVENT_CHANNEL_CAPACITY: usize = 256;

/// What a game declares about one kind of profile: where it lives, its schema, and how inbox
/// messages change it.
pub struct ProfileKind<P> {
    pub store: crate::store::StoreName,
    pub schema: ProfileSchema<P>,
    message_handler: Option<MessageHandler<P>>,
}

type MessageHandler<P> = Arc<dyn Fn(&mut P, &InboxMessage) + Send + Sync>;

impl<P> Clone for ProfileKind<P> {
    fn clone(&self) -> Self {
        ProfileKind {
            store: self.store.clone(),
            schema: self.schema.clone(),
            message_handler: self.message_handler.clone(),
        }
    }
}

impl<P> std::fmt::Debug for ProfileKind<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileKind")
            .field("store", &self.store)
            .field("has_message_handler", &self.message_handler.is_some())
            .finish()
    }
}

impl<P: Profile> ProfileKind<P> {
    pub fn new(store: crate::store::StoreName, schema: ProfileSchema<P>) -> ProfileKind<P> {
        ProfileKind { store, schema, message_handler: None }
    }

    /// Sets how an inbox message changes the profile. Without a handler, messages wait in the
    /// inbox untouched (never dropped).
    pub fn on_message(mut self, handler: impl Fn(&mut P, &InboxMessage) + Send + Sync + 'static) -> ProfileKind<P> {
        self.message_handler = Some(Arc::new(handler));
        self
    }
}

/// What a profile type needs: serde both ways, cloneable, shareable.
pub trait Profile: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Profile for T {}

/// Where a session stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionStatus {
    Active,
    /// Playing on default data after a failed load: never writes.
    Errored {
        reason: String,
    },
    /// `end` is saving and releasing.
    Closing,
    Ended,
    /// Another server took the key; this session can never write again.
    FencedOut,
    /// Handed to another server on its request.
    HandedOff,
}

/// What a session tells the game.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionEvent {
    /// Profile fields changed in memory: all of them, and those a client may see.
    Changed {
        changes: Vec<FieldChange>,
        client_changes: Vec<FieldChange>,
    },
    /// A save became durable, up to this in-memory revision.
    Saved {
        revision: u64,
    },
    SaveFailed {
        message: String,
    },
    MessageApplied {
        seq: u64,
    },
    /// Kick the player: another server holds the key now.
    FencedOut,
    /// Kick or move the player: the key was handed to another server.
    HandedOff,
    Ended,
}

/// Which save is being made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveKind {
    /// Autosave: skipped when clean.
    Autosave,
    /// `save_now`: skipped when clean, returns once durable.
    Now,
    /// The last save of the session: also releases the key.
    Final,
}

/// What a save did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Nothing had changed since the last durable save.
    Clean,
    /// Durable up to this in-memory revision.
    Saved { revision: u64 },
}

pub(crate) struct SessionState<P> {
    pub profile: P,
    pub meta: ProfileMeta,
    pub status: SessionStatus,
    /// Bumped by every in-memory change.
    pub revision: u64,
    /// The newest revision known durable.
    pub durable_revision: u64,
    pub attributes: Map<String, Value>,
    pub user_ids: Vec<String>,
    /// Revision at which attributes or user ids last changed (0: never in this session).
    pub metadata_revision: u64,
    pub inbox_applied_through: u64,
    pub inbox_durable_through: u64,
    /// A multi-session transaction is committing this session: changes wait (`Busy`).
    pub in_transaction: bool,
}

impl<P> SessionState<P> {
    fn is_dirty(&self) -> bool {
        self.revision > self.durable_revision || self.inbox_applied_through > self.inbox_durable_through
    }
}

/// The shared core of a session; `Session<P>` is the game's handle to it.
pub(crate) struct SessionCore<P> {
    pub id: DocId,
    pub holder: HolderId,
    pub epoch: u64,
    pub kind: ProfileKind<P>,
    pub engine: Weak<EngineShared>,
    pub state: Mutex<SessionState<P>>,
    /// Serializes every write of this key (G5).
    pub write_order: tokio::sync::Mutex<()>,
    pub events: broadcast::Sender<SessionEvent>,
}

/// Data a save took from memory, and what the store must be told.
struct Snapshot {
    value: Option<Value>,
    revision: u64,
    ack_through: Option<u64>,
    attributes: Option<Map<String, Value>>,
    user_ids: Option<Vec<String>>,
}

impl<P: Profile> SessionCore<P> {
    pub fn lock(&self) -> MutexGuard<'_, SessionState<P>> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn fence(&self) -> Condition {
        Condition::Lease { holder: self.holder.clone(), epoch: self.epoch }
    }

    pub fn emit(&self, event: SessionEvent) {
        // No listener is fine: events are for games that want them.
        let _ = self.events.send(event);
    }

    fn check_can_change(state: &SessionState<P>) -> Result<(), SessionError> {
        match &state.status {
            SessionStatus::Active | SessionStatus::Errored { .. } => {}
            SessionStatus::Closing | SessionStatus::Ended => return Err(SessionError::Ended),
            SessionStatus::FencedOut => return Err(SessionError::FencedOut),
            SessionStatus::HandedOff => return Err(SessionError::HandedOff),
        }
        if state.in_transaction {
            return Err(SessionError::Busy);
        }
        Ok(())
    }

    pub fn update<R>(&self, change: impl FnOnce(&mut P) -> R) -> Result<R, SessionError> {
        let listening = self.events.receiver_count() > 0;
        let mut state = self.lock();
        Self::check_can_change(&state)?;
        let before = if listening { serde_json::to_value(&state.profile).ok() } else { None };
        let result = change(&mut state.profile);
        state.revision += 1;
        let event = match before {
            Some(before) => serde_json::to_value(&state.profile).ok().map(|after| SessionEvent::Changed {
                changes: super::schema::changed_fields(&before, &after),
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

    fn snapshot(&self, kind: SaveKind) -> Result<Option<Snapshot>, SessionError> {
        let state = self.lock();
        match (&state.status, kind) {
            (SessionStatus::Active, _) | (SessionStatus::Closing, SaveKind::Final) => {}
            (SessionStatus::Errored { .. }, _) => return Err(SessionError::Errored),
            (SessionStatus::FencedOut, _) => return Err(SessionError::FencedOut),
            (SessionStatus::HandedOff, _) => return Err(SessionError::HandedOff),
            (SessionStatus::Closing | SessionStatus::Ended, _) => return Err(SessionError::Ended),
        }
        if !state.is_dirty() && kind != SaveKind::Final {
            return Ok(None);
        }
        let value = if state.revision > state.durable_revision {
            Some(self.kind.schema.encode(&state.profile, &state.meta)?)
        } else {
            None
        };
        let metadata_changed = state.metadata_revision > state.durable_revision;
        Ok(Some(Snapshot {
            value,
            revision: state.revision,
            ack_through: (state.inbox_applied_through > state.inbox_durable_through)
                .then_some(state.inbox_applied_through),
            attributes: metadata_changed.then(|| state.attributes.clone()),
            user_ids: metadata_changed.then(|| state.user_ids.clone()),
        }))
    }

    /// The write that saves `snapshot`. Takes the encoded value out of it (a profile is
    /// kilobytes of JSON; a snapshot is made per attempt, so it is not needed again).
    fn write_for(&self, snapshot: &mut Snapshot, kind: SaveKind) -> Write {
        let mut write = Write::new(self.id.clone()).when(self.fence());
        if let Some(value) = snapshot.value.take() {
            write = write.value(ValueOp::Put(value));
        }
        if let Some(through) = snapshot.ack_through {
            write = write.ack_inbox_through(through);
        }
        if let Some(attributes) = &snapshot.attributes {
            write = write.attributes(attributes.clone());
        }
        if let Some(user_ids) = &snapshot.user_ids {
            write = write.user_ids(user_ids.clone());
        }
        if kind == SaveKind::Final {
            write = write.lease(LeaseOp::Release);
        }
        write
    }

    fn on_durable(&self, snapshot: &Snapshot, kind: SaveKind, inbox_last_waiting_seq: Option<u64>) -> bool {
        let mut state = self.lock();
        state.durable_revision = state.durable_revision.max(snapshot.revision);
        if let Some(through) = snapshot.ack_through {
            state.inbox_durable_through = state.inbox_durable_through.max(through);
        }
        if kind == SaveKind::Final && state.status == SessionStatus::Closing {
            state.status = SessionStatus::Ended;
        }
        let messages_waiting = inbox_last_waiting_seq.is_some_and(|seq| seq > state.inbox_applied_through);
        drop(state);
        self.emit(SessionEvent::Saved { revision: snapshot.revision });
        messages_waiting
    }

    /// Ends the session because another server holds the key now.
    pub fn fence_out(&self) {
        let mut state = self.lock();
        if matches!(state.status, SessionStatus::FencedOut | SessionStatus::Ended | SessionStatus::HandedOff) {
            return;
        }
        state.status = SessionStatus::FencedOut;
        drop(state);
        if let Some(engine) = self.engine.upgrade() {
            engine.counters.fenced_out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            engine.forget(&self.id);
        }
        self.emit(SessionEvent::FencedOut);
    }

    /// Saves the session's newest state, in order with every other write of the key.
    pub async fn save(self: &Arc<Self>, kind: SaveKind) -> Result<SaveOutcome, SessionError> {
        let engine = self.engine.upgrade().ok_or(SessionError::Ended)?;
        let _order = self.write_order.lock().await;
        let mut last_unknown: Option<Commit> = None;
        let mut last_error = String::new();
        for attempt in 0..engine.config.save_attempts_max {
            if attempt > 0 {
                engine.counters.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                engine.sleep_backoff(attempt - 1).await;
            }
            let Some(mut snapshot) = self.snapshot(kind)? else { return Ok(SaveOutcome::Clean) };
            let writes_value = snapshot.value.is_some();
            let commit = Commit::single(self.write_for(&mut snapshot, kind));
            // What a hidden outcome is resolved with: the commit without its value.
            let trace = commit.trace();
            match engine.store.commit(commit).await {
                Ok(CommitOutcome::Committed { applied, .. }) => {
                    let waiting = applied.first().map(|applied| applied.inbox_last_waiting_seq);
                    engine.counters.saves.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if self.on_durable(&snapshot, kind, waiting) {
                        engine.spawn_inbox_check(self.id.clone());
                    }
                    return Ok(SaveOutcome::Saved { revision: snapshot.revision });
                }
                Ok(CommitOutcome::Conflict(conflict)) if conflict.kind == ConflictKind::LeaseMismatch => {
                    // A retry after a hidden outcome can meet its own earlier success (a final
                    // save that already released the key): read back before giving up the key.
                    if let Some(unknown) = &last_unknown
                        && matches!(resolve_unknown_commit(&*engine.store, unknown).await, Ok(Some(true)))
                    {
                        self.on_durable(&snapshot, kind, None);
                        return Ok(SaveOutcome::Saved { revision: snapshot.revision });
                    }
                    // A final save with nothing to write only releases: if the key is released at
                    // our epoch (by our own earlier attempt, or by an operator), nothing is lost.
                    let released_at_our_epoch =
                        conflict.found.lease.holder.is_none() && conflict.found.lease.epoch == self.epoch;
                    if kind == SaveKind::Final && !writes_value && released_at_our_epoch {
                        self.on_durable(&snapshot, kind, None);
                        return Ok(SaveOutcome::Saved { revision: snapshot.revision });
                    }
                    engine.counters.conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.fence_out();
                    return Err(SessionError::FencedOut);
                }
                Ok(CommitOutcome::Conflict(conflict)) => {
                    let message = format!("the store refused the save: {conflict}");
                    self.emit(SessionEvent::SaveFailed { message: message.clone() });
                    return Err(SessionError::SaveFailed { attempts: attempt + 1, message });
                }
                Err(StoreError::InvalidInput(error)) => {
                    let message = error.to_string();
                    self.emit(SessionEvent::SaveFailed { message: message.clone() });
                    return Err(SessionError::Invalid { reason: message });
                }
                Err(error) if error.may_have_applied() => {
                    last_error = error.to_string();
                    match resolve_unknown_commit(&*engine.store, &trace).await {
                        Ok(Some(true)) => {
                            engine.counters.saves.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            self.on_durable(&snapshot, kind, None);
                            engine.spawn_inbox_check(self.id.clone());
                            return Ok(SaveOutcome::Saved { revision: snapshot.revision });
                        }
                        Ok(Some(false)) => {}
                        Ok(None) | Err(_) => last_unknown = Some(trace),
                    }
                }
                Err(error) => last_error = error.to_string(),
            }
        }
        let attempts = engine.config.save_attempts_max;
        self.emit(SessionEvent::SaveFailed { message: last_error.clone() });
        Err(SessionError::SaveFailed { attempts, message: last_error })
    }

    /// Applies waiting inbox messages in order, once each; the acknowledgement goes out with the
    /// next save, in the same write as the changes (G7).
    pub fn apply_messages(&self, inbox: &[InboxMessage]) -> usize {
        let Some(handler) = self.kind.message_handler.clone() else { return 0 };
        let mut applied = Vec::new();
        {
            let mut state = self.lock();
            if state.status != SessionStatus::Active || state.in_transaction {
                return 0;
            }
            let mut messages: Vec<&InboxMessage> =
                inbox.iter().filter(|m| m.seq > state.inbox_applied_through).collect();
            messages.sort_by_key(|m| m.seq);
            for message in messages {
                handler(&mut state.profile, message);
                state.inbox_applied_through = message.seq;
                state.revision += 1;
                applied.push(message.seq);
            }
        }
        for seq in &applied {
            self.emit(SessionEvent::MessageApplied { seq: *seq });
        }
        applied.len()
    }

    /// Reads the key's inbox and applies what is new.
    pub async fn check_inbox(self: &Arc<Self>) -> Result<usize, SessionError> {
        let engine = self.engine.upgrade().ok_or(SessionError::Ended)?;
        let document =
            get(&*engine.store, &self.id).await.map_err(|error| SessionError::Store { message: error.to_string() })?;
        Ok(self.apply_messages(&document.inbox))
    }

    /// Marks the session closing, at once and synchronously, so that a start of the same key that
    /// comes after this call waits for the final save instead of joining a session about to end.
    /// Returns whether a final save is needed.
    fn begin_end(&self) -> Result<bool, SessionError> {
        let mut state = self.lock();
        match &state.status {
            SessionStatus::Active => {
                state.status = SessionStatus::Closing;
                Ok(true)
            }
            SessionStatus::Errored { .. } => {
                state.status = SessionStatus::Ended;
                drop(state);
                self.finish(false);
                Ok(false)
            }
            SessionStatus::Closing | SessionStatus::Ended => Err(SessionError::Ended),
            SessionStatus::FencedOut => Err(SessionError::FencedOut),
            SessionStatus::HandedOff => Err(SessionError::HandedOff),
        }
    }

    async fn complete_end(self: &Arc<Self>, handed_off: bool) -> Result<(), SessionError> {
        match self.save(SaveKind::Final).await {
            Ok(_) => {
                if handed_off {
                    self.lock().status = SessionStatus::HandedOff;
                }
                self.finish(handed_off);
                Ok(())
            }
            Err(error) => {
                let mut state = self.lock();
                if state.status == SessionStatus::Closing {
                    state.status = SessionStatus::Active;
                }
                Err(error)
            }
        }
    }

    /// Saves and releases; the session ends. On failure it stays open (and dirty) so nothing
    /// acknowledged to the game is dropped; the caller may try again.
    pub async fn end(self: &Arc<Self>, handed_off: bool) -> Result<(), SessionError> {
        if self.begin_end()? { self.complete_end(handed_off).await } else { Ok(()) }
    }

    /// `end` that marks the session closing now and finishes in its own task, so a caller that
    /// drops the future cannot leave the session half closed.
    pub fn end_detached(
        self: &Arc<Self>,
    ) -> impl std::future::Future<Output = Result<(), SessionError>> + Send + 'static {
        let begun = self.begin_end();
        let core = self.clone();
        let task = match begun {
            Ok(true) => Some(tokio::spawn(async move { core.complete_end(false).await })),
            Ok(false) | Err(_) => None,
        };
        async move {
            match (begun, task) {
                (Err(error), _) => Err(error),
                (Ok(_), None) => Ok(()),
                (Ok(_), Some(task)) => task.await.unwrap_or(Err(SessionError::Ended)),
            }
        }
    }

    fn finish(&self, handed_off: bool) {
        if let Some(engine) = self.engine.upgrade() {
            engine.forget(&self.id);
            engine.announce_released(&self.id);
            if handed_off {
                engine.counters.handoffs_given.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.emit(if handed_off { SessionEvent::HandedOff } else { SessionEvent::Ended });
    }
}

/// The engine's type-erased view of a session, for autosave, handoff, inbox and shutdown.
#[async_trait]
pub(crate) trait LiveSession: Send + Sync {
    fn id(&self) -> &DocId;
    fn is_dirty(&self) -> bool;
    fn is_open(&self) -> bool;
    /// True while `end` is saving and releasing.
    fn is_closing(&self) -> bool;
    async fn end_dyn(self: Arc<Self>, handed_off: bool) -> Result<(), SessionError>;
    async fn check_inbox_dyn(self: Arc<Self>) -> Result<usize, SessionError>;
    /// Stops the session without saving or releasing (a simulated crash).
    fn abandon(&self);
    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

#[async_trait]
impl<P: Profile> LiveSession for SessionCore<P> {
    fn id(&self) -> &DocId {
        &self.id
    }

    fn is_dirty(&self) -> bool {
        self.lock().is_dirty()
    }

    fn is_open(&self) -> bool {
        matches!(self.lock().status, SessionStatus::Active | SessionStatus::Errored { .. } | SessionStatus::Closing)
    }

    fn is_closing(&self) -> bool {
        self.lock().status == SessionStatus::Closing
    }

    async fn end_dyn(self: Arc<Self>, handed_off: bool) -> Result<(), SessionError> {
        self.end(handed_off).await
    }

    async fn check_inbox_dyn(self: Arc<Self>) -> Result<usize, SessionError> {
        self.check_inbox().await
    }

    fn abandon(&self) {
        self.lock().status = SessionStatus::Ended;
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// The game's handle to a live session. Cheap to clone; all clones are the same session.
pub struct Session<P: Profile> {
    pub(crate) core: Arc<SessionCore<P>>,
}

impl<P: Profile> Clone for Session<P> {
    fn clone(&self) -> Self {
        Session { core: self.core.clone() }
    }
}

impl<P: Profile> std::fmt::Debug for Session<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.core.id).field("epoch", &self.core.epoch).finish()
    }
}

impl<P: Profile> Session<P> {
    pub fn id(&self) -> &DocId {
        &self.core.id
    }

    /// The fencing epoch this session holds the key at.
    pub fn epoch(&self) -> u64 {
        self.core.epoch
    }

    pub fn holder(&self) -> &HolderId {
        &self.core.holder
    }

    /// Reads the in-memory profile (no I/O). Works in every status, also after the end.
    pub fn read<R>(&self, read: impl FnOnce(&P) -> R) -> R {
        read(&self.core.lock().profile)
    }

    /// Changes the in-memory profile (no I/O); the change is saved by autosave, `save_now` or
    /// `end`. Refused once the session ended or lost its key.
    pub fn update<R>(&self, change: impl FnOnce(&mut P) -> R) -> Result<R, SessionError> {
        self.core.update(change)
    }

    /// Saves now and returns once the data is durable.
    pub async fn save_now(&self) -> Result<SaveOutcome, SessionError> {
        self.core.save(SaveKind::Now).await
    }

    /// Saves, releases the key and ends the session. The session counts as ending from this
    /// call on (a new start of the key waits for this final save), and the save runs to its end
    /// even if the returned future is dropped.
    pub fn end(&self) -> impl std::future::Future<Output = Result<(), SessionError>> + Send + 'static {
        self.core.end_detached()
    }

    pub fn status(&self) -> SessionStatus {
        self.core.lock().status.clone()
    }

    pub fn is_errored(&self) -> bool {
        matches!(self.core.lock().status, SessionStatus::Errored { .. })
    }

    /// True while in-memory changes are not yet durable.
    pub fn is_dirty(&self) -> bool {
        self.core.lock().is_dirty()
    }

    pub fn events(&self) -> broadcast::Receiver<SessionEvent> {
        self.core.events.subscribe()
    }

    /// The profile as a client may see it (private fields left out).
    pub fn client_view(&self) -> Value {
        let data = serde_json::to_value(&self.core.lock().profile).unwrap_or(Value::Null);
        self.core.kind.schema.client_view(&data)
    }

    pub fn attributes(&self) -> Map<String, Value> {
        self.core.lock().attributes.clone()
    }

    pub fn user_ids(&self) -> Vec<String> {
        self.core.lock().user_ids.clone()
    }

    /// Replaces the key's attributes; saved with the next save. Saves never wipe them.
    pub fn set_attributes(&self, attributes: Map<String, Value>) -> Result<(), SessionError> {
        let mut state = self.core.lock();
        SessionCore::<P>::check_can_change(&state)?;
        state.attributes = attributes;
        state.revision += 1;
        state.metadata_revision = state.revision;
        Ok(())
    }

    /// Replaces the key's user ids (for data-deletion requests); saved with the next save.
    pub fn set_user_ids(&self, user_ids: Vec<String>) -> Result<(), SessionError> {
        let mut state = self.core.lock();
        SessionCore::<P>::check_can_change(&state)?;
        state.user_ids = user_ids;
        state.revision += 1;
        state.metadata_revision = state.revision;
        Ok(())
    }

    /// Reads the inbox now and applies new messages (the engine also does this on its own).
    pub async fn check_inbox(&self) -> Result<usize, SessionError> {
        self.core.check_inbox().await
    }
}
