//! The registry: which sessions this engine has, per key, and whether it takes new ones.
//!
//! Invariants:
//! - At most one slot per key: a key is `Loading` (one load in flight, others wait for it) or
//!   `Live` (the session every start of the key joins), never both, never two sessions.
//! - A `Loading` slot is owned by a `LoadTicket`: however the load ends (answered, failed,
//!   cancelled, aborted by a crash), dropping the ticket frees the slot and wakes the waiters.
//! - Admission is decided under the registry lock: after `stop_accepting`, no new slot appears.
//! - The lock is a std mutex held for map operations only, never across an await.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::store::DocId;

use super::error::{SessionError, StartError};

/// The engine's type-erased view of a session, for autosave, handoff, inbox, lease checks and
/// shutdown (the game holds the typed `Session<P>`).
#[async_trait]
pub(crate) trait LiveSession: Send + Sync {
    fn id(&self) -> &DocId;
    fn epoch(&self) -> u64;
    fn is_open(&self) -> bool;
    /// True while `end` is saving and releasing.
    fn is_closing(&self) -> bool;
    /// Saves and releases; a session already closing is waited for instead.
    async fn end_dyn(self: Arc<Self>, handed_off: bool) -> Result<(), SessionError>;
    async fn check_inbox_dyn(self: Arc<Self>) -> Result<usize, SessionError>;
    /// The store showed the key still held at this session's epoch after lease renewal
    /// `generation`: the session may report active again.
    fn confirm_lease(&self, generation: u64);
    /// The store showed the key held by someone else: this session can never write again.
    fn fence_out_dyn(&self);
    /// Stops the session without saving or releasing (a simulated crash).
    #[cfg(feature = "testing")]
    fn abandon(&self);
    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

enum Slot {
    Loading(watch::Receiver<bool>),
    Live(Arc<dyn LiveSession>),
}

/// What `begin_start` found for a key.
pub(crate) enum Admission {
    /// The key's live session: join it.
    Join(Arc<dyn LiveSession>),
    /// Another start is loading the key: wait for it (the receiver turns `true`, or closes).
    WaitForLoad(watch::Receiver<bool>),
    /// The previous session of the key is saving and releasing: wait for its final save.
    WaitForClose,
    /// This caller loads the key and must hand the ticket to the load.
    Load(LoadTicket),
}

#[derive(Debug)]
pub(crate) struct Registry {
    slots: Arc<Mutex<BTreeMap<DocId, Slot>>>,
    accepting: AtomicBool,
    sessions_max: usize,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slot::Loading(_) => f.write_str("Loading"),
            Slot::Live(session) => write!(f, "Live({})", session.id()),
        }
    }
}

fn lock(slots: &Mutex<BTreeMap<DocId, Slot>>) -> MutexGuard<'_, BTreeMap<DocId, Slot>> {
    // Map operations cannot leave the map half changed; a poisoned lock is still consistent.
    slots.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    pub fn new(sessions_max: usize) -> Registry {
        Registry { slots: Arc::new(Mutex::new(BTreeMap::new())), accepting: AtomicBool::new(true), sessions_max }
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    pub fn stop_accepting(&self) {
        // Under the lock, so no `begin_start` that read "accepting" is still deciding.
        let _slots = lock(&self.slots);
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Decides what a start of `id` does now.
    pub fn begin_start(&self, id: &DocId) -> Result<Admission, StartError> {
        let mut slots = lock(&self.slots);
        if !self.is_accepting() {
            return Err(StartError::ShuttingDown);
        }
        match slots.get(id) {
            Some(Slot::Live(session)) if session.is_closing() => return Ok(Admission::WaitForClose),
            Some(Slot::Live(session)) if session.is_open() => return Ok(Admission::Join(session.clone())),
            // Ended, fenced out or handed off without being forgotten yet: the slot is stale.
            Some(Slot::Live(_)) => {
                slots.remove(id);
            }
            Some(Slot::Loading(waiter)) => return Ok(Admission::WaitForLoad(waiter.clone())),
            None => {}
        }
        if slots.len() >= self.sessions_max {
            return Err(StartError::TooManySessions { sessions_max: self.sessions_max });
        }
        let (done, waiter) = watch::channel(false);
        slots.insert(id.clone(), Slot::Loading(waiter));
        Ok(Admission::Load(LoadTicket { id: id.clone(), slots: self.slots.clone(), done: Some(done) }))
    }

    /// Removes a session that ended or lost its key (only that session, never a newer one).
    pub fn forget(&self, id: &DocId, epoch: u64) {
        let mut slots = lock(&self.slots);
        if matches!(slots.get(id), Some(Slot::Live(session)) if session.epoch() == epoch) {
            slots.remove(id);
        }
    }

    pub fn live(&self, id: &DocId) -> Option<Arc<dyn LiveSession>> {
        match lock(&self.slots).get(id) {
            Some(Slot::Live(session)) => Some(session.clone()),
            _ => None,
        }
    }

    pub fn live_sessions(&self) -> Vec<Arc<dyn LiveSession>> {
        lock(&self.slots)
            .values()
            .filter_map(|slot| match slot {
                Slot::Live(session) => Some(session.clone()),
                Slot::Loading(_) => None,
            })
            .collect()
    }

    pub fn live_count(&self) -> usize {
        lock(&self.slots).values().filter(|slot| matches!(slot, Slot::Live(_))).count()
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.slots).is_empty()
    }

    /// Empties the registry and returns the live sessions (a crash abandons them).
    #[cfg(feature = "testing")]
    pub fn take_all_live(&self) -> Vec<Arc<dyn LiveSession>> {
        std::mem::take(&mut *lock(&self.slots))
            .into_values()
            .filter_map(|slot| match slot {
                Slot::Live(session) => Some(session),
                Slot::Loading(_) => None,
            })
            .collect()
    }
}

/// Ownership of a key's `Loading` slot. `finish` turns it into the live session (or frees it);
/// dropping it unfinished frees it. Either way the waiting starts wake up.
pub(crate) struct LoadTicket {
    id: DocId,
    slots: Arc<Mutex<BTreeMap<DocId, Slot>>>,
    done: Option<watch::Sender<bool>>,
}

impl LoadTicket {
    /// Installs the loaded session (`None`: the load failed). Returns false when the engine
    /// stopped accepting meanwhile; the slot is then freed and the caller must end the session.
    pub fn finish(mut self, session: Option<Arc<dyn LiveSession>>, accepting: &Registry) -> bool {
        let installed = {
            let mut slots = lock(&self.slots);
            match session {
                Some(session) if accepting.is_accepting() => {
                    slots.insert(self.id.clone(), Slot::Live(session));
                    true
                }
                _ => {
                    slots.remove(&self.id);
                    false
                }
            }
        };
        if let Some(done) = self.done.take() {
            // No waiter is fine.
            let _ = done.send(true);
        }
        installed
    }
}

impl Drop for LoadTicket {
    fn drop(&mut self) {
        if self.done.is_some() {
            let mut slots = lock(&self.slots);
            if matches!(slots.get(&self.id), Some(Slot::Loading(_))) {
                slots.remove(&self.id);
            }
            // Dropping the sender wakes every waiter (`changed` and `wait_for` end with an error).
        }
    }
}
