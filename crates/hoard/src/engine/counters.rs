//! What the engine did, counted: one private atomic per `Counter`, read as an `EngineCounters`
//! snapshot by operators, tests and the simulator.
//!
//! Invariant: counters only grow, and only through `Counters::add`; nothing reads them to decide
//! anything (they are for people, not for control flow).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::retry::RetryCounters;

/// Every event the engine counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counter {
    Saves,
    Conflicts,
    FencedOut,
    Steals,
    HandoffsGiven,
    HandoffsRequested,
    LoadFailures,
    RenewFailures,
    SessionsStarted,
    /// The process lease passed its local deadline without a successful renewal.
    LeaseLapses,
    /// Inbox notifications that found a check of the key already waiting or running.
    InboxChecksCoalesced,
    /// Notifications this engine's listener missed because it fell behind (`Lagged`).
    NotificationsMissed,
    /// Background tasks refused because the task set was full (a bug in the accounting).
    TasksRefused,
}

const COUNTERS: usize = 13;
// Every variant has a slot: the last one's index is the last slot.
const _: () = assert!(Counter::TasksRefused as usize + 1 == COUNTERS);

impl Counter {
    fn index(self) -> usize {
        self as usize
    }
}

/// The engine's counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    values: [AtomicU64; COUNTERS],
    /// Shared with every `Retry` the engine runs.
    retry: RetryCounters,
}

impl Counters {
    pub fn add(&self, counter: Counter, count: u64) {
        self.values[counter.index()].fetch_add(count, Ordering::Relaxed);
    }

    pub fn one(&self, counter: Counter) {
        self.add(counter, 1);
    }

    fn get(&self, counter: Counter) -> u64 {
        self.values[counter.index()].load(Ordering::Relaxed)
    }

    pub fn retry(&self) -> &RetryCounters {
        &self.retry
    }

    /// Counts something that gave up without the retry helper (a best-effort call): logged by
    /// the caller, counted here with the helper's own give-ups.
    pub fn gave_up(&self) {
        self.retry.count_gave_up();
    }

    pub fn snapshot(&self, sessions_live: u64, tasks_panicked: u64) -> EngineCounters {
        EngineCounters {
            saves: self.get(Counter::Saves),
            conflicts: self.get(Counter::Conflicts),
            fenced_out: self.get(Counter::FencedOut),
            steals: self.get(Counter::Steals),
            handoffs_given: self.get(Counter::HandoffsGiven),
            handoffs_requested: self.get(Counter::HandoffsRequested),
            retries: self.retry.retries(),
            gave_up: self.retry.gave_up(),
            load_failures: self.get(Counter::LoadFailures),
            renew_failures: self.get(Counter::RenewFailures),
            lease_lapses: self.get(Counter::LeaseLapses),
            sessions_started: self.get(Counter::SessionsStarted),
            sessions_live,
            inbox_checks_coalesced: self.get(Counter::InboxChecksCoalesced),
            notifications_missed: self.get(Counter::NotificationsMissed),
            tasks_refused: self.get(Counter::TasksRefused),
            tasks_panicked,
        }
    }
}

/// A snapshot of the engine's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineCounters {
    pub saves: u64,
    pub conflicts: u64,
    pub fenced_out: u64,
    pub steals: u64,
    pub handoffs_given: u64,
    pub handoffs_requested: u64,
    /// Store calls retried after a transient failure.
    pub retries: u64,
    /// Operations that gave up: retries spent, a deadline reached, or a best-effort call failed
    /// (each is also logged, naming the operation).
    #[serde(default)]
    pub gave_up: u64,
    pub load_failures: u64,
    pub renew_failures: u64,
    /// Times the process lease passed its local deadline without a successful renewal.
    #[serde(default)]
    pub lease_lapses: u64,
    pub sessions_started: u64,
    pub sessions_live: u64,
    #[serde(default)]
    pub inbox_checks_coalesced: u64,
    #[serde(default)]
    pub notifications_missed: u64,
    #[serde(default)]
    pub tasks_refused: u64,
    #[serde(default)]
    pub tasks_panicked: u64,
}
