//! The SQLite store's clock: wall-clock milliseconds since the Unix epoch, never going backwards
//! within this process.
//!
//! Invariant: this is the only place the SQLite backend reads a wall clock. Lease expiry, version
//! times and history retention are all judged by it. Why a wall clock: every process on the
//! machine shares one SQLite file, and a holder's `expires_at_ms` written by one process is judged
//! by another, so all of them must read the same clock; the OS wall clock is the one they share.
//! Why monotonic: an NTP step backwards must not make an expired lease live again or make a
//! newer version look older than the one before it, so within a process the value is clamped to
//! the largest one handed out so far (shared by every store in the process).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The largest value `now_ms` has returned in this process.
static LARGEST_NOW_MS: AtomicI64 = AtomicI64::new(0);

/// The store's now, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    // A wall clock before 1970 is a broken machine; reading it as 0 keeps the clamp below honest.
    let wall_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let previous_ms = LARGEST_NOW_MS.fetch_max(wall_ms, Ordering::SeqCst);
    previous_ms.max(wall_ms)
}

#[cfg(test)]
mod tests {
    use super::now_ms;

    #[test]
    fn now_never_goes_backwards_and_is_in_milliseconds() {
        let mut previous_ms = now_ms();
        assert!(previous_ms > 1_600_000_000_000);
        for _ in 0..10_000 {
            let next_ms = now_ms();
            assert!(next_ms >= previous_ms);
            previous_ms = next_ms;
        }
    }
}
