//! The one bounded retry helper: every retried store call in hoard goes through `Retry::run`.
//!
//! Invariants:
//! - Bounded: at most `attempts_max` attempts, and, with `until`, no attempt starts after the
//!   deadline. The helper never sleeps after the last attempt, nor past the deadline.
//! - Only what the operation itself calls transient is retried (`Attempt::Retry`); anything else
//!   ends the loop at once (`Attempt::Fail`), so a bad request is never sent twice.
//! - Backoff is exponential with jitter from a seeded source, so simulated runs replay exactly.
//! - Giving up is never silent: it is logged, and counted when the caller passes counters.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::store::StoreError;

/// Exponential backoff: `initial_ms`, doubling per attempt, capped at `max_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
}

/// The doubling stops here (2^20 times the initial delay is far past any sensible cap).
const BACKOFF_DOUBLINGS_MAX: u32 = 20;

impl Backoff {
    /// The library's default: 50 ms doubling to 2 s (`EngineConfig::default` uses the same).
    pub const DEFAULT: Backoff = Backoff { initial_ms: 50, max_ms: 2_000 };

    /// The pause before retry number `attempt + 1` (`attempt` is 0-based). Half is fixed and half
    /// jittered by `jitter_unit` (in `0.0..1.0`): never zero, never in lockstep with other retriers.
    pub fn delay_ms(&self, attempt: u32, jitter_unit: f64) -> u64 {
        let exponential = self.initial_ms.saturating_mul(1u64 << attempt.min(BACKOFF_DOUBLINGS_MAX));
        let capped = exponential.min(self.max_ms);
        let half = capped / 2;
        half + ((capped - half) as f64 * jitter_unit.clamp(0.0, 1.0)) as u64
    }
}

/// A seeded source of jitter (SplitMix64 over an atomic counter): the same seed and the same
/// order of calls give the same delays, and no clock or OS entropy is read.
#[derive(Debug)]
pub struct Jitter {
    state: AtomicU64,
}

impl Jitter {
    pub fn seeded(seed: u64) -> Jitter {
        Jitter { state: AtomicU64::new(seed) }
    }

    /// A seed derived from a text (a holder id, a key), FNV-1a: stable across runs and processes.
    pub fn seed_from(text: &str) -> u64 {
        text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3))
    }

    /// The next number in `0.0..1.0`.
    pub fn unit(&self) -> f64 {
        let mut z = self.state.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The top 53 bits fill an f64 mantissa exactly.
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What one attempt of an operation decided.
#[derive(Debug)]
pub enum Attempt<T, E> {
    /// It succeeded (or reached an expected outcome the caller handles): stop, return this.
    Done(T),
    /// It failed in a way a retry may cure: try again after a pause, if the bounds allow.
    Retry(E),
    /// It failed in a way a retry cannot cure: stop at once.
    Fail(E),
}

impl<T> Attempt<T, StoreError> {
    /// A store call's result: transient errors (`Unavailable`, `OutcomeUnknown`) are retried,
    /// everything else ends the loop. Callers whose request may have applied must resolve
    /// `OutcomeUnknown` themselves before retrying; this is for reads and idempotent writes.
    pub fn from_store(result: Result<T, StoreError>) -> Attempt<T, StoreError> {
        match result {
            Ok(value) => Attempt::Done(value),
            Err(error) if error.is_transient() => Attempt::Retry(error),
            Err(error) => Attempt::Fail(error),
        }
    }
}

/// Why the loop ended without `Done`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GaveUpBecause {
    /// The operation said a retry cannot help.
    NotTransient,
    /// Every allowed attempt failed.
    AttemptsSpent,
    /// The next attempt would have started after the deadline.
    DeadlineReached,
}

/// The last error, how many attempts were made, and why the loop stopped.
#[derive(Debug)]
pub struct GaveUp<E> {
    pub error: E,
    pub attempts: u32,
    pub because: GaveUpBecause,
}

impl<E> GaveUp<E> {
    pub fn into_error(self) -> E {
        self.error
    }
}

/// Counters a caller may attach: retries made, and loops that gave up on a transient error.
#[derive(Debug, Default)]
pub struct RetryCounters {
    retries: AtomicU64,
    gave_up: AtomicU64,
}

impl RetryCounters {
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    pub fn gave_up(&self) -> u64 {
        self.gave_up.load(Ordering::Relaxed)
    }

    /// Counts a give-up decided outside the helper (a best-effort call that was not retried).
    pub fn count_gave_up(&self) {
        self.gave_up.fetch_add(1, Ordering::Relaxed);
    }
}

/// One bounded retry loop, described: what it does (for logs), its bounds, its backoff.
#[derive(Debug)]
pub struct Retry<'a> {
    operation: &'static str,
    attempts_max: u32,
    backoff: Backoff,
    jitter: &'a Jitter,
    deadline: Option<tokio::time::Instant>,
    counters: Option<&'a RetryCounters>,
}

impl<'a> Retry<'a> {
    /// At most `attempts_max` attempts (at least one is always made).
    pub fn new(operation: &'static str, attempts_max: u32, backoff: Backoff, jitter: &'a Jitter) -> Retry<'a> {
        debug_assert!(attempts_max >= 1, "{operation}: a retry loop makes at least one attempt");
        Retry { operation, attempts_max: attempts_max.max(1), backoff, jitter, deadline: None, counters: None }
    }

    /// Starts no attempt after `deadline`.
    pub fn until(self, deadline: tokio::time::Instant) -> Retry<'a> {
        Retry { deadline: Some(deadline), ..self }
    }

    /// Counts retries and give-ups in `counters`.
    pub fn counted(self, counters: &'a RetryCounters) -> Retry<'a> {
        Retry { counters: Some(counters), ..self }
    }

    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// Runs `op(attempt)` (0-based) until it is `Done` or `Fail`, or the bounds are spent.
    pub async fn run<T, E, F, Fut>(&self, mut op: F) -> Result<T, GaveUp<E>>
    where
        E: Display,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Attempt<T, E>>,
    {
        let mut attempt = 0u32;
        loop {
            let error = match op(attempt).await {
                Attempt::Done(value) => return Ok(value),
                Attempt::Fail(error) => {
                    return Err(GaveUp { error, attempts: attempt + 1, because: GaveUpBecause::NotTransient });
                }
                Attempt::Retry(error) => error,
            };
            let attempts = attempt + 1;
            if attempts >= self.attempts_max {
                return Err(self.give_up(error, attempts, GaveUpBecause::AttemptsSpent));
            }
            let delay = Duration::from_millis(self.backoff.delay_ms(attempt, self.jitter.unit()));
            if self.deadline.is_some_and(|deadline| tokio::time::Instant::now() + delay >= deadline) {
                return Err(self.give_up(error, attempts, GaveUpBecause::DeadlineReached));
            }
            if let Some(counters) = self.counters {
                counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(operation = self.operation, attempt = attempts, %error, ?delay, "retrying");
            tokio::time::sleep(delay).await;
            attempt = attempts;
        }
    }

    fn give_up<E: Display>(&self, error: E, attempts: u32, because: GaveUpBecause) -> GaveUp<E> {
        if let Some(counters) = self.counters {
            counters.gave_up.fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(operation = self.operation, attempts, ?because, %error, "gave up retrying");
        GaveUp { error, attempts, because }
    }
}
