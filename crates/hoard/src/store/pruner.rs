//! The background history pruner: a task that prunes a store's history a bounded step at a time,
//! every `interval_ms`, for as long as its guard lives.
//!
//! Invariant: one pass examines at most about `rows_per_pass` history rows (whole keys, through
//! `Store::prune_history_page`) and continues where the previous pass stopped, wrapping to the
//! start after the last key, so the whole history is covered in `rows / rows_per_pass` intervals
//! however large it is; a pass that fails is counted, logged and retried from the same place at
//! the next interval. Dropping the `HistoryPruner` stops the task (between two passes, or in the
//! middle of one: each page is its own transaction, so an abandoned page leaves nothing half done).
//! Several processes pruning one store is safe (each page locks its keys); it is only redundant.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::InvalidInput;
use super::types::DocId;
use super::{SharedStore, Store};

/// Default of `HistoryPruneOptions::interval_ms`: a minute.
pub const HISTORY_PRUNE_INTERVAL_MS_DEFAULT: u64 = 60_000;
/// Default of `HistoryPruneOptions::rows_per_pass`.
pub const HISTORY_PRUNE_ROWS_PER_PASS_DEFAULT: usize = 10_000;

/// How the background pruner runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPruneOptions {
    /// Pause between two passes; 0: no background pruning (`hoard prune` still prunes).
    pub interval_ms: u64,
    /// History rows one pass examines, at least (whole keys); at 10,000 rows a minute a store of
    /// ten million rows is covered every 17 hours, and a pass holds no lock for long (backends
    /// split it into transactions of a few hundred rows).
    pub rows_per_pass: usize,
}

impl Default for HistoryPruneOptions {
    fn default() -> HistoryPruneOptions {
        HistoryPruneOptions {
            interval_ms: HISTORY_PRUNE_INTERVAL_MS_DEFAULT,
            rows_per_pass: HISTORY_PRUNE_ROWS_PER_PASS_DEFAULT,
        }
    }
}

impl HistoryPruneOptions {
    /// Pruning switched off.
    pub fn disabled() -> HistoryPruneOptions {
        HistoryPruneOptions { interval_ms: 0, ..HistoryPruneOptions::default() }
    }

    pub fn check(&self) -> Result<(), InvalidInput> {
        if self.rows_per_pass == 0 {
            return Err(InvalidInput::Malformed { what: "history_pruning.rows_per_pass", expected: "at least 1" });
        }
        Ok(())
    }
}

/// What the pruner did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPrunerStats {
    /// Passes that finished.
    pub passes: u64,
    /// Passes that failed (each logged); the next one retries from the same place.
    pub failures: u64,
    /// Versions removed.
    pub pruned_versions: u64,
    /// Times the pass reached the last key and started over.
    pub rounds_completed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    passes: AtomicU64,
    failures: AtomicU64,
    pruned_versions: AtomicU64,
    rounds_completed: AtomicU64,
}

/// The guard of a running pruner: dropping it stops the task.
#[derive(Debug)]
pub struct HistoryPruner {
    task: Option<tokio::task::AbortHandle>,
    counters: Arc<Counters>,
}

impl HistoryPruner {
    /// Starts pruning `store` in the background (nothing, with `interval_ms` 0). Must be called
    /// inside a tokio runtime; time is tokio's, so paused-time tests drive it.
    pub fn start(store: SharedStore, options: HistoryPruneOptions) -> HistoryPruner {
        let counters = Arc::new(Counters::default());
        if options.interval_ms == 0 {
            return HistoryPruner { task: None, counters };
        }
        let task = tokio::spawn(run(store, options, Arc::clone(&counters)));
        HistoryPruner { task: Some(task.abort_handle()), counters }
    }

    pub fn stats(&self) -> HistoryPrunerStats {
        HistoryPrunerStats {
            passes: self.counters.passes.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
            pruned_versions: self.counters.pruned_versions.load(Ordering::Relaxed),
            rounds_completed: self.counters.rounds_completed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for HistoryPruner {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn run(store: SharedStore, options: HistoryPruneOptions, counters: Arc<Counters>) {
    let rows_per_pass = options.rows_per_pass.max(1);
    let mut after: Option<DocId> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(options.interval_ms)).await;
        match pass(&*store, after.clone(), rows_per_pass).await {
            Ok((pruned, next_after)) => {
                counters.passes.fetch_add(1, Ordering::Relaxed);
                counters.pruned_versions.fetch_add(pruned, Ordering::Relaxed);
                if next_after.is_none() {
                    counters.rounds_completed.fetch_add(1, Ordering::Relaxed);
                }
                if pruned > 0 {
                    tracing::debug!(pruned, backend = store.backend_name(), "history pruner removed versions");
                }
                after = next_after;
            }
            Err(error) => {
                let failures = counters.failures.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(%error, failures, backend = store.backend_name(), "history pruning pass failed; retrying at the next interval");
            }
        }
    }
}

/// One pass: pages until `rows_per_pass` rows were examined or the history's end was reached.
async fn pass(
    store: &dyn Store,
    mut after: Option<DocId>,
    rows_per_pass: usize,
) -> Result<(u64, Option<DocId>), super::StoreError> {
    let mut pruned = 0u64;
    let mut examined = 0usize;
    while examined < rows_per_pass {
        let page = store.prune_history_page(after.clone(), rows_per_pass - examined).await?;
        pruned += page.pruned;
        examined = examined.saturating_add(usize::try_from(page.rows_examined).unwrap_or(usize::MAX));
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok((pruned, None)),
        }
        if page.rows_examined == 0 {
            // A page that examined nothing but did not reach the end would loop forever.
            break;
        }
    }
    Ok((pruned, after))
}
