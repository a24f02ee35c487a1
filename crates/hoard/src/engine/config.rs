//! The engine's configuration: every interval, wait, retry bound and count limit, with defaults.
//!
//! Invariant: the engine reads no setting from anywhere else; every loop and wait in the engine is
//! bounded by a field here (G8). The lease, handoff and retry defaults are the protocol's
//! (`protocol::*_DEFAULT`), shared with `hoard serve`.

use serde::{Deserialize, Serialize};

use crate::retry::Backoff;

use super::protocol::{
    ACQUIRE_ATTEMPTS_MAX_DEFAULT, HANDOFF_POLL_INTERVAL_MS_DEFAULT, HANDOFF_WAIT_MS_DEFAULT,
    LEASE_RENEW_INTERVAL_MS_DEFAULT, LEASE_TTL_MS_DEFAULT,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// A label for this server in holder ids and logs (e.g. the game server's name).
    pub server_label: String,
    /// How long this process's lease lasts without renewal; a crashed server's keys are free
    /// after at most this long (G6). Anchors: ProfileStore 49 s, others 330-1800 s.
    pub lease_ttl_ms: u64,
    /// How often the process lease is renewed. A failed renewal is retried soon (with backoff)
    /// until the local deadline, not at the next interval, so failed renewals lose the lease only
    /// when the store stays unreachable for most of a lease.
    pub lease_renew_interval_ms: u64,
    /// How much earlier than the store's expiry this engine considers its lease over: past
    /// `renewal sent + lease_ttl_ms - lease_safety_margin_ms` without a renewal, sessions report
    /// `LeaseLapsed` and refuse changes. Covers clock-rate drift between engine and store.
    #[serde(default = "default_lease_safety_margin_ms")]
    pub lease_safety_margin_ms: u64,
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
    /// Inbox checks (store reads after an inbox notification) in flight at once; checks of one
    /// key also coalesce, so a burst of notifications cannot become a burst of reads.
    #[serde(default = "default_inbox_checks_in_flight_max")]
    pub inbox_checks_in_flight_max: usize,
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

fn default_lease_safety_margin_ms() -> u64 {
    1_000
}

fn default_inbox_checks_in_flight_max() -> usize {
    32
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
            lease_ttl_ms: LEASE_TTL_MS_DEFAULT,
            lease_renew_interval_ms: LEASE_RENEW_INTERVAL_MS_DEFAULT,
            lease_safety_margin_ms: default_lease_safety_margin_ms(),
            autosave_interval_ms: 30_000,
            save_attempts_max: 6,
            retry_backoff_initial_ms: Backoff::DEFAULT.initial_ms,
            retry_backoff_max_ms: Backoff::DEFAULT.max_ms,
            load_attempts_max: 5,
            acquire_attempts_max: ACQUIRE_ATTEMPTS_MAX_DEFAULT,
            handoff_wait_ms: HANDOFF_WAIT_MS_DEFAULT,
            handoff_poll_interval_ms: HANDOFF_POLL_INTERVAL_MS_DEFAULT,
            sessions_max: 100_000,
            concurrent_saves_max: 4_096,
            inbox_checks_in_flight_max: default_inbox_checks_in_flight_max(),
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
        if self.lease_safety_margin_ms + self.lease_renew_interval_ms >= self.lease_ttl_ms {
            return Err(format!(
                "lease_safety_margin_ms ({}) plus lease_renew_interval_ms ({}) must be under lease_ttl_ms ({}), or the lease would lapse between two on-time renewals",
                self.lease_safety_margin_ms, self.lease_renew_interval_ms, self.lease_ttl_ms
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
        if self.sessions_max == 0
            || self.concurrent_saves_max == 0
            || self.handoff_poll_interval_ms == 0
            || self.inbox_checks_in_flight_max == 0
        {
            return Err(
                "sessions_max, concurrent_saves_max, handoff_poll_interval_ms and inbox_checks_in_flight_max must be positive"
                    .into(),
            );
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

    /// The backoff of every retried store call of the engine.
    pub fn backoff(&self) -> Backoff {
        Backoff { initial_ms: self.retry_backoff_initial_ms, max_ms: self.retry_backoff_max_ms }
    }

    /// The pause before retry `attempt + 1` (0-based), half fixed and half jittered by `jitter`
    /// (in 0.0..1.0); see `Backoff::delay_ms`.
    pub fn backoff_ms(&self, attempt: u32, jitter: f64) -> u64 {
        self.backoff().delay_ms(attempt, jitter)
    }
}
