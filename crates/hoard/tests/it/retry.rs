//! The one bounded retry helper (`hoard::retry`), on paused time: its bounds, what it retries,
//! and that it never sleeps where no attempt follows.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hoard::retry::{Attempt, Backoff, GaveUpBecause, Jitter, Retry, RetryCounters};
use hoard::store::StoreError;

const SEED: u64 = 42;
const BACKOFF: Backoff = Backoff { initial_ms: 100, max_ms: 400 };

/// The pauses a helper seeded with `SEED` makes before attempts 2..=attempts.
fn expected_pauses_ms(attempts: u32) -> u64 {
    let jitter = Jitter::seeded(SEED);
    (0..attempts.saturating_sub(1)).map(|attempt| BACKOFF.delay_ms(attempt, jitter.unit())).sum()
}

#[tokio::test(start_paused = true)]
async fn retry_makes_at_most_attempts_max_attempts_and_never_sleeps_after_the_last() {
    let jitter = Jitter::seeded(SEED);
    let counters = RetryCounters::default();
    let retry = Retry::new("always failing", 4, BACKOFF, &jitter).counted(&counters);
    let calls = AtomicU32::new(0);
    let started = tokio::time::Instant::now();
    let result: Result<(), _> = retry
        .run(|_| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Attempt::Retry(StoreError::unavailable("down"))
        })
        .await;
    let gave_up = result.expect_err("every attempt failed");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(gave_up.attempts, 4);
    assert_eq!(gave_up.because, GaveUpBecause::AttemptsSpent);
    assert_eq!(started.elapsed(), Duration::from_millis(expected_pauses_ms(4)), "three pauses, none after the last");
    assert_eq!(counters.retries(), 3);
    assert_eq!(counters.gave_up(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_stops_at_once_on_an_error_that_is_not_transient() {
    let jitter = Jitter::seeded(SEED);
    let counters = RetryCounters::default();
    let retry = Retry::new("bad request", 10, BACKOFF, &jitter).counted(&counters);
    let calls = AtomicU32::new(0);
    let started = tokio::time::Instant::now();
    let result: Result<(), _> = retry
        .run(|_| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Attempt::from_store(Err(StoreError::corrupt("unreadable")))
        })
        .await;
    let gave_up = result.expect_err("refused");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a request a retry cannot cure is sent once");
    assert_eq!(gave_up.because, GaveUpBecause::NotTransient);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(counters.gave_up(), 0, "a refusal is a failure, not a give-up");
}

#[tokio::test(start_paused = true)]
async fn retry_starts_no_attempt_after_its_deadline() {
    let jitter = Jitter::seeded(SEED);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    let retry = Retry::new("until a deadline", 1_000, BACKOFF, &jitter).until(deadline);
    let result: Result<(), _> = retry
        .run(|_| async {
            assert!(tokio::time::Instant::now() < deadline, "no attempt starts at or after the deadline");
            Attempt::Retry(StoreError::unavailable("down"))
        })
        .await;
    let gave_up = result.expect_err("the deadline came first");
    assert_eq!(gave_up.because, GaveUpBecause::DeadlineReached);
    assert!(gave_up.attempts < 1_000);
    assert!(tokio::time::Instant::now() <= deadline, "it never sleeps past the deadline");
}

#[tokio::test(start_paused = true)]
async fn retry_returns_the_first_success_and_counts_the_retries_before_it() {
    let jitter = Jitter::seeded(SEED);
    let counters = RetryCounters::default();
    let retry = Retry::new("flaky", 10, BACKOFF, &jitter).counted(&counters);
    let value = retry
        .run(|attempt| async move {
            if attempt < 2 { Attempt::Retry(StoreError::unavailable("flaky")) } else { Attempt::Done(attempt) }
        })
        .await
        .expect("third time lucky");
    assert_eq!(value, 2);
    assert_eq!(counters.retries(), 2);
    assert_eq!(counters.gave_up(), 0);
}

#[test]
fn backoff_doubles_up_to_its_cap_and_is_never_zero() {
    assert_eq!(BACKOFF.delay_ms(0, 0.0), 50, "half of the initial delay, with no jitter");
    assert_eq!(BACKOFF.delay_ms(0, 1.0), 100);
    assert_eq!(BACKOFF.delay_ms(1, 1.0), 200);
    assert_eq!(BACKOFF.delay_ms(30, 1.0), 400, "capped");
    assert!((0..40).all(|attempt| BACKOFF.delay_ms(attempt, 0.0) > 0));
}

#[test]
fn jitter_replays_from_its_seed() {
    let (a, b) = (Jitter::seeded(7), Jitter::seeded(7));
    let first: Vec<f64> = (0..5).map(|_| a.unit()).collect();
    let second: Vec<f64> = (0..5).map(|_| b.unit()).collect();
    assert_eq!(first, second);
    assert!(first.iter().all(|unit| (0.0..1.0).contains(unit)));
    assert_ne!(first[0], first[1]);
}
