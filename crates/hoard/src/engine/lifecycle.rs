//! An engine's life: open (register the process lease, start the background tasks), shutdown
//! (save and release everything within a deadline, G9), and, for tests and the simulator, crash.
//!
//! Invariants:
//! - Opening registers the process lease before anything else: an engine that cannot reach its
//!   store (after `acquire_attempts_max` tries) does not open.
//! - Shutdown refuses new sessions first (under the registry lock), then ends every live session
//!   in parallel, waits for ends already in flight, flushes shared documents, aborts every task,
//!   and only when everything was released drops the process lease (retried while transient):
//!   after the renewal task, so no renewal round can bring the released lease back.
//! - A crash saves and releases nothing: every task is aborted and every session abandoned; the
//!   process lease lapses after `lease_ttl_ms`, as a real crash's would.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::retry::{Attempt, Jitter, Retry};
use crate::store::{DocId, HolderId, SharedStore, StoreError};

use super::config::EngineConfig;
use super::core::Core;
use super::error::SessionError;
use super::lease::LeaseClock;
use super::shared_docs::flush::{self as shared_docs_flush, flush_all_keys};
use super::{listener, renewal};

/// Why an engine could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("invalid engine configuration: {0}")]
    Config(String),
    #[error("cannot register this server's lease with the store: {0}")]
    Store(StoreError),
}

/// What shutdown did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownReport {
    pub saved: Vec<DocId>,
    pub failed: Vec<(DocId, String)>,
    /// Sessions whose final save had not finished by the deadline.
    pub timed_out: Vec<DocId>,
}

pub(crate) async fn open(
    store: SharedStore,
    config: EngineConfig,
    holder: HolderId,
    seed: u64,
) -> Result<Arc<Core>, OpenError> {
    config.check().map_err(OpenError::Config)?;
    let jitter = Jitter::seeded(seed);
    let retry = Retry::new("register the process lease", config.acquire_attempts_max, config.backoff(), &jitter);
    let sent_at = retry
        .run(|_| async {
            let sent_at = tokio::time::Instant::now();
            crate::retry::Attempt::from_store(store.renew_holder(&holder, config.lease_ttl_ms).await.map(|_| sent_at))
        })
        .await
        .map_err(|gave_up| OpenError::Store(gave_up.into_error()))?;
    let lease =
        LeaseClock::opened(sent_at, config.lease_ttl_ms, config.lease_safety_margin_ms, config.lease_renew_interval_ms);
    let core = Arc::new(Core::new(store, config, holder, seed, lease));
    let started =
        renewal::start(&core).and_then(|()| listener::start(&core)).and_then(|()| shared_docs_flush::start(&core));
    started.expect("a new engine's task set has room for its own tasks");
    Ok(core)
}

/// Attempts at dropping the process lease at shutdown (transient failures only).
const RELEASE_ATTEMPTS_MAX: u32 = 5;

pub(crate) async fn shutdown(core: &Arc<Core>, deadline: Duration) -> ShutdownReport {
    core.registry().stop_accepting();
    let sessions = core.registry().live_sessions();
    let deadline_at = tokio::time::Instant::now() + deadline;
    let ends = sessions.into_iter().map(|session| async move {
        let id = session.id().clone();
        let result = tokio::time::timeout_at(deadline_at, session.end_dyn(false)).await;
        (id, result)
    });
    let docs_waiting = core.shared_docs().ids_with_pending();
    let docs_flush = tokio::time::timeout_at(deadline_at, flush_all_keys(core));
    let (ended, docs_flushed) = tokio::join!(futures_util::future::join_all(ends), docs_flush);
    let mut report = ShutdownReport::default();
    match docs_flushed {
        Ok(flushed) => {
            report.saved.extend(flushed.flushed.into_iter().map(|(id, _)| id));
            report.failed.extend(flushed.failed.into_iter().map(|(id, error)| (id, error.to_string())));
        }
        Err(_elapsed) => report.timed_out.extend(docs_waiting),
    }
    for (id, result) in ended {
        match result {
            Ok(Ok(())) => report.saved.push(id),
            // Ended by the game before shutdown reached it: nothing to save.
            Ok(Err(SessionError::Ended)) => {}
            Ok(Err(error)) => report.failed.push((id, error.to_string())),
            Err(_elapsed) => report.timed_out.push(id),
        }
    }
    // First: a renewal round racing the release would write the lease back (renewing upserts).
    core.abort_tasks();
    if report.failed.is_empty() && report.timed_out.is_empty() {
        // Every key is released; dropping the process lease frees anything left at once.
        let released = core
            .retry("release the process lease", RELEASE_ATTEMPTS_MAX)
            .run(|_| async { Attempt::from_store(core.store().release_holder(core.holder()).await) })
            .await;
        if let Err(gave_up) = released {
            core.counters().gave_up();
            let error = gave_up.into_error();
            tracing::warn!(%error, "the process lease was not released; it lapses after lease_ttl_ms");
        }
    }
    report
}

/// Stops everything without saving or releasing anything (a simulated crash).
#[cfg(feature = "testing")]
pub(crate) fn crash(core: &Core) {
    core.registry().stop_accepting();
    core.abort_tasks();
    core.shared_docs().abandon_all();
    for session in core.registry().take_all_live() {
        session.abandon();
    }
}
