//! The engine's configuration: every interval, wait, retry bound and count limit, with defaults.
//!
//! Invariant: the engine reads no setting from anywhere else; every loop and wait in the engine is
//! bounded by a field here (G8).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// A label for this server in holder ids and logs (e.g. the game server's name).
    pub server_label: String,
    /// How long this process's lease lasts without renewal; a crashed server's keys are free
    /// after at most this long (G6). Anchors: ProfileStore 49 s, others 330-1800 s.
    pub lease_ttl_ms: u64,
    /// How often the process lease is renewed; well under `lease_ttl_ms` so one or two failed
    /// renewals do not lose it.
    pub lease_renew_interval_ms: u64,
    /// Autosave period of a dirty session; sessions are spread over it.
    pub autosave_interval_ms: u64,
    /// Attempts of one save before it is reported failed (it stays dirty and is tried again at
    /// the next autosave).
    pub save_attempts_max: u32,
    pub retry_backoff_initial_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// Attempts to read a profile after acquiring its key, before the load fails.
    pub load_attempts_max: u32,
    /// Attempts to acquire a key when the store fails or the holder changes under us.
    pub acquire_attempts_max: u32,
    /// Default wait for a live holder to hand a key over before stealing it.
    pub handoff_wait_ms: u64,
    /// How often a waiting acquirer re-checks the key while it waits for a handoff (a release
    /// notification wakes it sooner).
    pub handoff_poll_interval_ms: u64,
    /// Live sessions on this engine; past it, new sessions are refused.
    pub sessions_max: usize,
    /// Saves that may be in flight at once across all sessions (autosave and shutdown).
    pub concurrent_saves_max: usize,
    /// Sessions plus shared documents in one transaction or trade.
    pub transaction_parties_max: usize,
    /// How often this engine flushes the pending updates of lock-free shared documents (guild
    /// banks, auction houses, counters); the seed flushes every 10 s to stay under Roblox's
    /// UpdateAsync budget. A crash loses at most this much of this engine's unflushed updates.
    #[serde(default = "default_shared_doc_flush_interval_ms")]
    pub shared_doc_flush_interval_ms: u64,
    /// Updates of one shared document that may wait for a flush; past it `update` is refused.
    #[serde(default = "default_shared_doc_pending_updates_max")]
    pub shared_doc_pending_updates_max: usize,
    /// Shared documents this engine caches; idle ones are forgotten to make room, and past it
    /// (every one busy) a new key is refused.
    #[serde(default = "default_shared_doc_keys_max")]
    pub shared_doc_keys_max: usize,
    /// Read-and-commit attempts of one flush (version conflicts with other writers and store
    /// errors both count) before its updates are reported not applied.
    #[serde(default = "default_shared_doc_flush_attempts_max")]
    pub shared_doc_flush_attempts_max: u32,
    /// Read-back attempts to learn whether a flush whose answer was lost applied, before its
    /// updates are reported with an unknown outcome (never re-run: that could apply them twice).
    #[serde(default = "default_shared_doc_resolve_attempts_max")]
    pub shared_doc_resolve_attempts_max: u32,
    /// How often this engine prunes the store's history in the background, and how many history
    /// rows a pass examines (`store::pruner`); interval 0: never (`hoard prune` still does).
    #[serde(default)]
    pub history_pruning: crate::store::pruner::HistoryPruneOptions,
}

fn default_shared_doc_flush_interval_ms() -> u64 {
    10_000
}

fn default_shared_doc_pending_updates_max() -> usize {
    1_000
}

fn default_shared_doc_keys_max() -> usize {
    10_000
}

fn default_shared_doc_flush_attempts_max() -> u32 {
    20
}

fn default_shared_doc_resolve_attempts_max() -> u32 {
    6
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            server_label: "server".to_string(),
            lease_ttl_ms: 15_000,
            lease_renew_interval_ms: 5_000,
            autosave_interval_ms: 30_000,
            save_attempts_max: 6,
            retry_backoff_initial_ms: 50,
            retry_backoff_max_ms: 2_000,
            load_attempts_max: 5,
            acquire_attempts_max: 20,
            handoff_wait_ms: 5_000,
            handoff_poll_interval_ms: 250,
            sessions_max: 100_000,
            concurrent_saves_max: 4_096,
            transaction_parties_max: 16,
            shared_doc_flush_interval_ms: default_shared_doc_flush_interval_ms(),
            shared_doc_pending_updates_max: default_shared_doc_pending_updates_max(),
            shared_doc_keys_max: default_shared_doc_keys_max(),
            shared_doc_flush_attempts_max: default_shared_doc_flush_attempts_max(),
            shared_doc_resolve_attempts_max: default_shared_doc_resolve_attempts_max(),
            history_pruning: crate::store::pruner::HistoryPruneOptions::default(),
        }
    }
}

impl EngineConfig {
    /// Checks relationships between settings, so a bad configuration fails at open, not later.
    pub fn check(&self) -> Result<(), String> {
        if self.lease_ttl_ms == 0 || self.lease_renew_interval_ms == 0 || self.autosave_interval_ms == 0 {
            return Err("lease_ttl_ms, lease_renew_interval_ms and autosave_interval_ms must be positive".into());
        }
        if self.lease_renew_interval_ms * 2 > self.lease_ttl_ms {
            return Err(format!(
                "lease_renew_interval_ms ({}) must be at most half of lease_ttl_ms ({}) so one failed renewal does not lose the lease",
                self.lease_renew_interval_ms, self.lease_ttl_ms
            ));
        }
        if self.save_attempts_max == 0 || self.load_attempts_max == 0 || self.acquire_attempts_max == 0 {
            return Err("attempt limits must be at least 1".into());
        }
        if self.retry_backoff_initial_ms > self.retry_backoff_max_ms {
            return Err("retry_backoff_initial_ms must not exceed retry_backoff_max_ms".into());
        }
        if self.transaction_parties_max < 2 {
            return Err("transaction_parties_max must allow at least two parties (a trade)".into());
        }
        if self.sessions_max == 0 || self.concurrent_saves_max == 0 || self.handoff_poll_interval_ms == 0 {
            return Err("sessions_max, concurrent_saves_max and handoff_poll_interval_ms must be positive".into());
        }
        if self.shared_doc_flush_interval_ms == 0
            || self.shared_doc_pending_updates_max == 0
            || self.shared_doc_keys_max == 0
            || self.shared_doc_flush_attempts_max == 0
            || self.shared_doc_resolve_attempts_max == 0
        {
            return Err("shared_doc_flush_interval_ms and the shared_doc_* limits must be positive".into());
        }
        self.history_pruning.check().map_err(|error| error.to_string())?;
        Ok(())
    }

    /// Exponential backoff with full jitter for attempt `attempt` (0-based), capped.
    /// `jitter` is a number in 0.0..1.0 from the caller's random source.
    pub fn backoff_ms(&self, attempt: u32, jitter: f64) -> u64 {
        let exponential = self.retry_backoff_initial_ms.saturating_mul(1u64 << attempt.min(20));
        let capped = exponential.min(self.retry_backoff_max_ms);
        let half = capped / 2;
        // Half fixed, half jittered: never zero, never in lockstep with other retriers.
        half + ((capped - half) as f64 * jitter.clamp(0.0, 1.0)) as u64
    }
}
