//! Lock-free shared documents: keys no server holds (guild banks, auction houses, global counters),
//! changed by pure update functions from any number of engines (the seed's `UpdateAsync` queue).
//!
//! Invariants:
//! - No lost update: a flush re-runs every queued update of a key, in issue order, on the value it
//!   just read, and commits one write on `Condition::Version(read)`. A lost race re-reads and
//!   re-runs; nothing is ever written over a value the functions did not see.
//! - Order (G5): at most one flush per key is in flight on an engine (a per-key async mutex), and
//!   updates issued during a flush wait for the next one, behind those already taken.
//! - No update applies twice: a flush whose answer was lost is resolved by reading back
//!   (`resolve_unknown_commit`); its functions are never re-run on a state that may already hold
//!   their effect. When reading back cannot tell, the callers are told the outcome is unknown.
//! - The local view is a preview, never written: the last value this engine saw stored, with the
//!   updates still waiting applied in order. Only a flush decides what an update did.
//! - Every queue, cache and retry has a named bound in `EngineConfig` (`shared_doc_*`, G8).
//!
//! Layout: `types` (the vocabulary), `queue` (the per-key queues, a component of the core),
//! `flush` (reading and committing), and here the public handle.

pub(crate) mod flush;
pub(crate) mod queue;
mod types;

use std::sync::Arc;

use serde_json::Value;

use crate::store::DocId;
use crate::store::validate::validate_doc_id;

use super::core::Core;
use queue::UpdateFn;

pub use types::{FlushAllReport, FlushReport, PendingUpdate, SharedDocError, UpdateOutcome, UpdateVerdict};

/// The handle of an engine's lock-free shared documents. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SharedDocs {
    core: Arc<Core>,
}

impl SharedDocs {
    pub(crate) fn new(core: Arc<Core>) -> SharedDocs {
        SharedDocs { core }
    }

    /// Queues a pure update of a key no server holds, applies it to this engine's view at once,
    /// and returns its preview. The first use of a key reads it once. The update runs again, on
    /// the latest stored value, at the next flush: it must give the same answer for the same
    /// value (no randomness, no clock, no side effects).
    pub async fn update<F>(&self, id: &DocId, update: F) -> Result<PendingUpdate, SharedDocError>
    where
        F: Fn(Option<&Value>) -> UpdateVerdict + Send + Sync + 'static,
    {
        let core = &self.core;
        if !core.registry().is_accepting() {
            return Err(SharedDocError::ShuttingDown);
        }
        let limits = core.store().limits();
        validate_doc_id(id, limits)
            .map_err(|error| SharedDocError::Invalid { id: id.clone(), reason: error.to_string() })?;
        let key = core.shared_docs().key(id, core.config().shared_doc_keys_max)?;
        let read = async {
            let document = core
                .read(id)
                .await
                .map_err(|error| SharedDocError::Read { id: id.clone(), message: error.to_string() })?;
            Ok(document.value)
        };
        key.load_once(limits, read).await?;
        let update: UpdateFn = Arc::new(update);
        key.enqueue(update, core.config().shared_doc_pending_updates_max, limits)
    }

    /// Flushes the key's waiting updates and returns once they are settled (after any flush
    /// already in flight for the key). `Err` when the whole batch failed; each caller was told.
    pub async fn flush(&self, id: &DocId) -> Result<FlushReport, SharedDocError> {
        match self.core.shared_docs().existing(id) {
            Some(key) => flush::flush_key(&self.core, &key).await,
            None => Ok(FlushReport::default()),
        }
    }

    /// Flushes every key with updates waiting, concurrently (bounded by `concurrent_saves_max`).
    pub async fn flush_all(&self) -> FlushAllReport {
        flush::flush_all_keys(&self.core).await
    }

    /// Reads the key's stored value (not this engine's view).
    pub async fn read(&self, id: &DocId) -> Result<Option<Value>, SharedDocError> {
        let document = self
            .core
            .read(id)
            .await
            .map_err(|error| SharedDocError::Read { id: id.clone(), message: error.to_string() })?;
        Ok(document.value)
    }

    /// This engine's current view of the key (`None`: the key is not cached here).
    pub fn local_view(&self, id: &DocId) -> Option<Option<Value>> {
        self.core.shared_docs().existing(id)?.view()
    }

    /// How many updates of the key wait for a flush on this engine.
    pub fn pending_updates(&self, id: &DocId) -> usize {
        self.core.shared_docs().existing(id).map_or(0, |key| key.pending_count())
    }
}
