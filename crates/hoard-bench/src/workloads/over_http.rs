//! Workload 7, over HTTP: workloads 1–3 through `hoard serve` with its remote store, against the
//! in-process figures. NOT MEASURED YET: the server is being built on another branch.
//!
//! The hook: once the server and its remote store exist, add `TargetSpec::Remote { url }` in
//! `target.rs` opening the remote store as a `SharedStore` (and `open_another_store` as a second
//! client), start `hoard serve` on the run's own SQLite file or PostgreSQL schema, and replace the
//! body of `run` with `autosave::run`, `cycle::run` and `trades::run` on that target; their
//! hoard-side code only speaks `SharedStore`, so nothing else changes. Report each as a row
//! `over_http` whose ratio is the HTTP throughput over the in-process throughput of the same
//! workload on the same backend (the goal: at least 0.5).
//!
//! Invariant: until measured, the report says so in a row of its own ("not measured: needs
//! hoard serve"), never by leaving the workload out.

use crate::Sizes;
use crate::progress::Progress;
use crate::report::{Goal, WorkloadResult};
use crate::target::Target;

pub const NAME: &str = "over_http";
pub const NOT_MEASURED: &str = "not measured: needs hoard serve";
/// The goal: HTTP throughput at least this share of in-process throughput.
pub const GOAL_SHARE_OF_IN_PROCESS_MIN: f64 = 0.5;

pub async fn run(target: &Target, _sizes: &Sizes, _progress: &Progress) -> WorkloadResult {
    let mut result = WorkloadResult::new(NAME, target.spec.name());
    result.hoard_setup = "autosave storm, session cycle and trades through hoard serve (remote store)".into();
    result.not_measured = Some(NOT_MEASURED.into());
    result.goal =
        Some(Goal { text: format!("at least {GOAL_SHARE_OF_IN_PROCESS_MIN}x the in-process throughput"), met: None });
    result
}
