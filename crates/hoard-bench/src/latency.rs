//! Latency recording and the figures every workload reports: throughput and p50/p99/max.
//!
//! Invariant: latencies are recorded in microseconds into an HDR histogram with 3 significant
//! digits (0.1 % resolution) up to `LATENCY_RECORDED_MAX_US`; a longer latency is clamped to that
//! maximum and still counted, so no operation is ever left out of the figures.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The longest latency the histogram tells apart (10 minutes); longer ones count as this.
pub const LATENCY_RECORDED_MAX_US: u64 = 600_000_000;
/// Significant decimal digits the histogram keeps.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// Latencies of one run (or one client of a run); merge the clients' recorders at the end.
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    histogram: Option<Histogram<u64>>,
    failures: u64,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder::new()
    }
}

impl LatencyRecorder {
    pub fn new() -> LatencyRecorder {
        // Bounds are constants that hdrhistogram accepts; `None` only if that ever changed, and
        // then every figure reads as zero rather than failing the run.
        let histogram = Histogram::new_with_bounds(1, LATENCY_RECORDED_MAX_US, LATENCY_SIGNIFICANT_DIGITS).ok();
        LatencyRecorder { histogram, failures: 0 }
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, LATENCY_RECORDED_MAX_US);
        if let Some(histogram) = &mut self.histogram {
            histogram.saturating_record(micros);
        }
    }

    /// Counts an operation that failed; it is not in the latency figures.
    pub fn record_failure(&mut self) {
        self.failures += 1;
    }

    pub fn merge(&mut self, other: &LatencyRecorder) {
        if let (Some(mine), Some(theirs)) = (&mut self.histogram, &other.histogram) {
            // Same bounds on both sides, so adding cannot fail.
            let _ = mine.add(theirs);
        }
        self.failures += other.failures;
    }

    pub fn count(&self) -> u64 {
        self.histogram.as_ref().map_or(0, Histogram::len)
    }

    /// The figures of `count()` operations done in `elapsed`.
    pub fn figures(&self, elapsed: Duration) -> Figures {
        let operations = self.count();
        let elapsed_s = elapsed.as_secs_f64();
        let at = |quantile: f64| {
            self.histogram.as_ref().map_or(0.0, |histogram| histogram.value_at_quantile(quantile) as f64 / 1_000.0)
        };
        Figures {
            operations,
            failures: self.failures,
            elapsed_s,
            throughput_per_s: if elapsed_s > 0.0 { operations as f64 / elapsed_s } else { 0.0 },
            latency_p50_ms: at(0.50),
            latency_p99_ms: at(0.99),
            latency_max_ms: self.histogram.as_ref().map_or(0.0, |histogram| histogram.max() as f64 / 1_000.0),
        }
    }
}

/// What one side (hoard or its baseline) of a workload achieved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Operations that succeeded (the latency figures cover exactly these).
    pub operations: u64,
    /// Operations that failed; a run with failures is reported, never hidden.
    pub failures: u64,
    pub elapsed_s: f64,
    pub throughput_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}
