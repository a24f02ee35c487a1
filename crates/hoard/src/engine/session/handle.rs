//! `Session<P>`: the game's handle to a live session. Cheap to clone; all clones are the same
//! session.
//!
//! Invariant: the handle adds nothing to the session's rules; every call goes to `SessionCore`.

use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::store::{DocId, HolderId};

use super::super::error::SessionError;
use super::{Profile, SaveKind, SaveOutcome, SessionCore, SessionEvent, SessionStatus};

pub struct Session<P: Profile> {
    core: Arc<SessionCore<P>>,
}

impl<P: Profile> Clone for Session<P> {
    fn clone(&self) -> Self {
        Session { core: self.core.clone() }
    }
}

impl<P: Profile> std::fmt::Debug for Session<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", self.core.id()).field("epoch", &self.core.epoch()).finish()
    }
}

impl<P: Profile> Session<P> {
    pub(crate) fn from_core(core: Arc<SessionCore<P>>) -> Session<P> {
        Session { core }
    }

    pub(crate) fn core(&self) -> &Arc<SessionCore<P>> {
        &self.core
    }

    pub fn id(&self) -> &DocId {
        self.core.id()
    }

    /// The fencing epoch this session holds the key at.
    pub fn epoch(&self) -> u64 {
        self.core.epoch()
    }

    pub fn holder(&self) -> &HolderId {
        self.core.holder()
    }

    /// Reads the in-memory profile (no I/O). Works in every status, also after the end.
    pub fn read<R>(&self, read: impl FnOnce(&P) -> R) -> R {
        self.core.read(read)
    }

    /// Changes the in-memory profile (no I/O); the change is saved by autosave, `save_now` or
    /// `end`. Refused once the session ended or lost its key, and while the lease is lapsed.
    pub fn update<R>(&self, change: impl FnOnce(&mut P) -> R) -> Result<R, SessionError> {
        self.core.update(change)
    }

    /// Saves now and returns once the data is durable. The save runs to its end even if the
    /// returned future is dropped.
    pub async fn save_now(&self) -> Result<SaveOutcome, SessionError> {
        self.core.save(SaveKind::Now).await
    }

    /// Saves, releases the key and ends the session. The session counts as ending from this
    /// call on (a new start of the key waits for this final save), and the save runs to its end
    /// even if the returned future is dropped.
    pub fn end(&self) -> impl std::future::Future<Output = Result<(), SessionError>> + Send + 'static {
        self.core.end_detached()
    }

    /// Where the session stands now, without I/O: `Active` only while this engine's lease is
    /// within its local deadline (see `SessionStatus::LeaseLapsed`).
    pub fn status(&self) -> SessionStatus {
        self.core.status()
    }

    /// Asks the store, with one read and no write, whether this session still holds its key:
    /// true when the key names this session's holder and epoch and this engine's lease is within
    /// its local deadline (then a lapsed session is active again). A key found taken fences the
    /// session out. Use it before a grant that must not be lost when `status()` is not enough.
    pub async fn still_holds(&self) -> Result<bool, SessionError> {
        self.core.still_holds().await
    }

    pub fn is_errored(&self) -> bool {
        matches!(self.core.status(), SessionStatus::Errored { .. })
    }

    /// True while in-memory changes are not yet durable.
    pub fn is_dirty(&self) -> bool {
        self.core.is_dirty()
    }

    pub fn events(&self) -> broadcast::Receiver<SessionEvent> {
        self.core.subscribe()
    }

    /// The profile as a client may see it (private fields left out). Fails only for a profile
    /// type serde cannot turn into JSON (which could not be saved either).
    pub fn client_view(&self) -> Result<Value, SessionError> {
        let data = self.core.read(|profile| serde_json::to_value(profile)).map_err(|error| SessionError::Invalid {
            reason: format!("the profile does not encode as JSON: {error}"),
        })?;
        Ok(self.core.kind().schema.client_view(&data))
    }

    pub fn attributes(&self) -> Map<String, Value> {
        self.core.attributes()
    }

    pub fn user_ids(&self) -> Vec<String> {
        self.core.user_ids()
    }

    /// Replaces the key's attributes; saved with the next save. Saves never wipe them.
    pub fn set_attributes(&self, attributes: Map<String, Value>) -> Result<(), SessionError> {
        self.core.set_metadata(Some(attributes), None)
    }

    /// Replaces the key's user ids (for data-deletion requests); saved with the next save.
    pub fn set_user_ids(&self, user_ids: Vec<String>) -> Result<(), SessionError> {
        self.core.set_metadata(None, Some(user_ids))
    }

    /// Reads the inbox now and applies new messages (the engine also does this on its own).
    pub async fn check_inbox(&self) -> Result<usize, SessionError> {
        self.core.check_inbox().await
    }
}
