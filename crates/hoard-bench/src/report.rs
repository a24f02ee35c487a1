//! The report: every figure of every workload on every store, as JSON and as a readable table.
//!
//! Invariant: the table and the plots are drawn from this structure only, so whatever a person
//! sees is also in `--json`. A ratio is hoard's throughput over its baseline's, measured in the
//! same process and the same minute, which is what stays meaningful on a shared, noisy machine.
//! For the `over_http/*` rows the baseline is hoard itself in process (the same workload's row of
//! the same run), so their ratio is HTTP ÷ in process.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::latency::Figures;

/// The workloads, in report order.
pub const WORKLOADS: [&str; 14] = [
    "storage",
    "autosave_storm",
    "session_cycle",
    "trades",
    "cross_trades",
    "receipts",
    "handoff_live",
    "handoff_crashed",
    "shutdown",
    "over_http/autosave_storm",
    "over_http/session_cycle",
    "over_http/trades",
    "over_http/autosave_sync",
    "memory",
];

/// A goal from the issue and whether this run met it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    pub text: String,
    /// `None` when the goal applies to another store (e.g. PostgreSQL-only goals on SQLite).
    pub met: Option<bool>,
}

/// One workload on one store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadResult {
    pub workload: String,
    pub store: String,
    /// What hoard did, in words (sizes, concurrency).
    pub hoard_setup: String,
    pub hoard: Option<Figures>,
    /// What the baseline did, in words; empty when there is none. (Over HTTP: hoard in process.)
    pub baseline_setup: String,
    pub baseline: Option<Figures>,
    /// hoard throughput / baseline throughput.
    pub ratio: Option<f64>,
    /// What the JSON-backend baseline did (a Nakama-style server writing its JSON profiles);
    /// empty when the workload has none.
    #[serde(default)]
    pub json_baseline_setup: String,
    #[serde(default)]
    pub json_baseline: Option<Figures>,
    /// hoard throughput / JSON-backend baseline throughput.
    #[serde(default)]
    pub json_ratio: Option<f64>,
    pub goal: Option<Goal>,
    /// Workload-specific figures (commits per transaction, bytes per session, lease time, ...).
    pub extra: BTreeMap<String, f64>,
    /// A short note for the table's last column.
    pub note: String,
    /// Why it was not measured (e.g. "not measured: no /proc/self/status on this system").
    pub not_measured: Option<String>,
    /// Why the run failed, if it did; its figures are then missing.
    pub error: Option<String>,
}

impl WorkloadResult {
    pub fn new(workload: &str, store: &str) -> WorkloadResult {
        WorkloadResult {
            workload: workload.to_string(),
            store: store.to_string(),
            hoard_setup: String::new(),
            hoard: None,
            baseline_setup: String::new(),
            baseline: None,
            ratio: None,
            json_baseline_setup: String::new(),
            json_baseline: None,
            json_ratio: None,
            goal: None,
            extra: BTreeMap::new(),
            note: String::new(),
            not_measured: None,
            error: None,
        }
    }

    /// Sets both sides and the ratio.
    pub fn with_figures(mut self, hoard: Figures, baseline: Option<Figures>) -> WorkloadResult {
        self.ratio = baseline
            .filter(|baseline| baseline.throughput_per_s > 0.0)
            .map(|baseline| hoard.throughput_per_s / baseline.throughput_per_s);
        self.hoard = Some(hoard);
        self.baseline = baseline;
        self
    }

    /// Sets the JSON-backend baseline and its ratio (after `with_figures`).
    pub fn with_json_baseline(mut self, setup: String, json_baseline: Figures) -> WorkloadResult {
        self.json_ratio = self
            .hoard
            .filter(|_| json_baseline.throughput_per_s > 0.0)
            .map(|hoard| hoard.throughput_per_s / json_baseline.throughput_per_s);
        self.json_baseline_setup = setup;
        self.json_baseline = Some(json_baseline);
        self
    }
}

/// One point of a curve: the x value and each side's y value (`None`: not measured, see the
/// curve's `errors`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub x: f64,
    pub hoard: Option<f64>,
    pub json_baseline: Option<f64>,
}

/// A measured curve, hoard beside the JSON backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// "throughput_by_clients" or "save_cost_by_profile_size"; its plot is `<name>.svg`.
    pub name: String,
    pub store: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub points: Vec<CurvePoint>,
    /// Why points are missing, if any are.
    pub errors: Vec<String>,
}

impl Curve {
    pub fn new(name: &str, store: &str, title: &str, x_label: &str, y_label: &str) -> Curve {
        Curve {
            name: name.to_string(),
            store: store.to_string(),
            title: title.to_string(),
            x_label: x_label.to_string(),
            y_label: y_label.to_string(),
            points: Vec::new(),
            errors: Vec::new(),
        }
    }
}

/// The whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub hoard_version: String,
    /// "smoke", "quick" or "full".
    pub size: String,
    /// Bytes of the benchmark profile as stored.
    pub profile_stored_bytes: usize,
    pub baseline_clients: usize,
    pub machine: Machine,
    pub results: Vec<WorkloadResult>,
    /// The curves (`workloads::curves`), per store.
    #[serde(default)]
    pub curves: Vec<Curve>,
    pub total_elapsed_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub os: String,
}

impl Machine {
    pub fn this() -> Machine {
        Machine {
            cores: std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            os: std::env::consts::OS.to_string(),
        }
    }
}

fn throughput(figures: Option<&Figures>) -> String {
    figures.map_or_else(|| "-".into(), |f| format!("{:.0}/s", f.throughput_per_s))
}

fn latencies(figures: Option<&Figures>) -> String {
    figures.map_or_else(
        || "-".into(),
        |f| format!("{:.1} / {:.1} / {:.1}", f.latency_p50_ms, f.latency_p99_ms, f.latency_max_ms),
    )
}

impl Report {
    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let header = [
            "workload",
            "store",
            "hoard",
            "baseline",
            "ratio",
            "JSON backend",
            "vs JSON",
            "hoard p50/p99/max ms",
            "baseline p50/p99/max ms",
            "goal",
            "note",
        ];
        let mut rows: Vec<[String; 11]> = Vec::new();
        for result in &self.results {
            let goal = match &result.goal {
                Some(Goal { met: Some(true), .. }) => "met".to_string(),
                Some(Goal { met: Some(false), .. }) => "MISSED".to_string(),
                _ => "-".to_string(),
            };
            let note = match (&result.not_measured, &result.error) {
                (Some(reason), _) => reason.clone(),
                (None, Some(error)) => format!("FAILED: {error}"),
                (None, None) => result.note.clone(),
            };
            rows.push([
                result.workload.clone(),
                result.store.clone(),
                throughput(result.hoard.as_ref()),
                throughput(result.baseline.as_ref()),
                result.ratio.map_or_else(|| "-".into(), |ratio| format!("{ratio:.2}x")),
                throughput(result.json_baseline.as_ref()),
                result.json_ratio.map_or_else(|| "-".into(), |ratio| format!("{ratio:.2}x")),
                latencies(result.hoard.as_ref()),
                latencies(result.baseline.as_ref()),
                goal,
                note,
            ]);
        }
        let mut widths = header.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row.iter()) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let last = cells.len() - 1;
            for (index, (cell, width)) in cells.iter().zip(widths.iter()).enumerate() {
                if index == last {
                    let _ = write!(out, "{cell}");
                } else {
                    let _ = write!(out, "{cell:<width$}  ");
                }
            }
            out.push('\n');
        };
        line(&mut out, &header.map(String::from));
        line(&mut out, &widths.map(|width| "-".repeat(width)));
        for row in &rows {
            line(&mut out, row);
        }
        let _ = writeln!(
            out,
            "\nprofile: {} bytes stored; baselines: {} concurrent clients, one plain SQL transaction per request (integers: the floor; JSON backend: what a Nakama-style server writes), same driver and database; {} cores, {} run, {:.0} s",
            self.profile_stored_bytes, self.baseline_clients, self.machine.cores, self.size, self.total_elapsed_s
        );
        for curve in &self.curves {
            let _ = writeln!(out, "\n{} on {} ({}: hoard / JSON backend):", curve.title, curve.store, curve.y_label);
            for point in &curve.points {
                let side = |value: Option<f64>| value.map_or_else(|| "-".to_string(), |value| format!("{value:.0}"));
                let _ = writeln!(
                    out,
                    "  {} {:>4}: {:>9} / {:>9}",
                    curve.x_label,
                    point.x,
                    side(point.hoard),
                    side(point.json_baseline)
                );
            }
            for error in &curve.errors {
                let _ = writeln!(out, "  FAILED: {error}");
            }
        }
        out.push('\n');
        for result in &self.results {
            if let Some(goal) = &result.goal
                && goal.met.is_some()
            {
                let verdict = if goal.met == Some(true) { "met" } else { "MISSED" };
                let _ = writeln!(out, "goal {} on {}: {} — {verdict}", result.workload, result.store, goal.text);
            }
        }
        out
    }
}
