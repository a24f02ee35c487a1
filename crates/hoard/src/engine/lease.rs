//! The process lease as this engine knows it: a local deadline, and a generation that counts
//! lapses. Sessions read it to answer "am I still active?" without writing.
//!
//! Invariants:
//! - The local deadline is conservative: a renewal sent at local time `t` cannot make the store
//!   expire the lease before `t + lease_ttl_ms` (the store adds the TTL to its own now, which is
//!   later), so the deadline is `t + lease_ttl_ms - lease_safety_margin_ms` (the margin covers
//!   clock-rate drift). It only moves forward.
//! - Once the deadline passes, nothing this engine holds is sure: any server may take a key.
//!   A renewal that succeeds after that starts a new generation, and a session is active again
//!   only when the store shows its key still held at its epoch after that renewal
//!   (`LeaseClock::is_standing`). Fencing keeps writes safe regardless; this keeps reports true.
//! - Pure state: no I/O, no task. The renewal loop lives in `renewal`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
struct LeaseState {
    valid_until: Instant,
    /// Bumped by each renewal that succeeded after the deadline had passed.
    generation: u64,
    /// When the next regular renewal is due.
    next_renewal_at: Instant,
    /// The current lapse was counted and logged (reset by the renewal that ends it).
    lapse_noted: bool,
}

/// What a successful renewal changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Renewed {
    /// The lease never lapsed.
    InTime,
    /// The deadline had passed: sessions must be confirmed for this new generation.
    /// `lapse_noted`: the lapse was already counted while it lasted.
    AfterLapse { generation: u64, lapse_noted: bool },
}

#[derive(Debug)]
pub(crate) struct LeaseClock {
    state: Mutex<LeaseState>,
    lease_ttl: Duration,
    safety_margin: Duration,
    renew_interval: Duration,
    /// Renewal paused on purpose (a frozen server, for tests and the simulator).
    suspended: AtomicBool,
}

impl LeaseClock {
    /// The clock after the renewal that opened the engine, sent at `sent_at`.
    pub fn opened(sent_at: Instant, lease_ttl_ms: u64, safety_margin_ms: u64, renew_interval_ms: u64) -> LeaseClock {
        debug_assert!(safety_margin_ms < lease_ttl_ms, "EngineConfig::check keeps the margin under the TTL");
        let lease_ttl = Duration::from_millis(lease_ttl_ms);
        let safety_margin = Duration::from_millis(safety_margin_ms);
        let renew_interval = Duration::from_millis(renew_interval_ms);
        let state = LeaseState {
            valid_until: sent_at + lease_ttl - safety_margin,
            generation: 0,
            next_renewal_at: sent_at + renew_interval,
            lapse_noted: false,
        };
        LeaseClock {
            state: Mutex::new(state),
            lease_ttl,
            safety_margin,
            renew_interval,
            suspended: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LeaseState> {
        // Plain data, changed in one step: a poisoned lock still holds a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a renewal sent at `sent_at` that the store acknowledged just now.
    pub fn renewed(&self, sent_at: Instant) -> Renewed {
        let now = Instant::now();
        let mut state = self.lock();
        let lapsed = now > state.valid_until;
        state.valid_until = state.valid_until.max(sent_at + self.lease_ttl - self.safety_margin);
        state.next_renewal_at = sent_at + self.renew_interval;
        let lapse_noted = std::mem::take(&mut state.lapse_noted);
        if lapsed {
            state.generation += 1;
            Renewed::AfterLapse { generation: state.generation, lapse_noted }
        } else {
            Renewed::InTime
        }
    }

    /// Marks the current lapse as counted. True the first time for this lapse.
    pub fn mark_lapse_noted(&self) -> bool {
        let mut state = self.lock();
        !std::mem::replace(&mut state.lapse_noted, true)
    }

    /// A renewal round gave up: try again after `pause`.
    pub fn retry_after(&self, pause: Duration) {
        self.lock().next_renewal_at = Instant::now() + pause;
    }

    pub fn next_renewal_at(&self) -> Instant {
        self.lock().next_renewal_at
    }

    pub fn valid_until(&self) -> Instant {
        self.lock().valid_until
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// True when a session confirmed at `confirmed_generation` may report active now.
    pub fn is_standing(&self, confirmed_generation: u64) -> bool {
        let state = self.lock();
        Instant::now() <= state.valid_until && confirmed_generation == state.generation
    }

    /// True while the local deadline has not passed (whatever the sessions' confirmation).
    pub fn is_valid_now(&self) -> bool {
        Instant::now() <= self.lock().valid_until
    }

    #[cfg(feature = "testing")]
    pub fn set_suspended(&self, suspended: bool) {
        self.suspended.store(suspended, Ordering::SeqCst);
    }

    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::SeqCst)
    }

    pub fn renew_interval(&self) -> Duration {
        self.renew_interval
    }
}
