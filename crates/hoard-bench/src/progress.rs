//! Progress on stderr (indicatif), so stdout stays the table or the JSON.
//!
//! Invariant: progress is decoration only: a hidden bar (tests, pipes, `progress: false`) changes
//! nothing that is measured or reported.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Makes one bar per phase of a workload.
#[derive(Clone, Debug)]
pub struct Progress {
    enabled: bool,
}

impl Progress {
    pub fn new(enabled: bool) -> Progress {
        Progress { enabled }
    }

    /// A bar of `length` steps labelled `label` ("sqlite autosave_storm: hoard").
    pub fn bar(&self, length: usize, label: String) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(length as u64), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{prefix:<40} [{bar:30}] {pos}/{len} {elapsed}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label);
        bar
    }
}
