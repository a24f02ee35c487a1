//! Faults aimed at the steps of a cross-server trade: a server crashes or freezes just before one
//! of its commits of the trade reaches the store, or just after that commit applied (its answer
//! then lost to the crash, or held back by the freeze). Random crashes rarely land on the few
//! milliseconds a step takes; these do, at every step.
//!
//! Which commit a trap hits is chosen by its place among the link's commits that touch the trade
//! (its record `hoard.trades/<id>` or its escrows `hoard.escrow/<id>/…`). Which step that was is
//! read from the commit itself:
//! - `escrow`: a prepare, which moves what the party gives into escrow and leaves the record
//!   pending;
//! - `decision`: a write of the record's outcome (`committed` by the last party to prepare, in
//!   the same commit as its escrow, or `aborted`);
//! - `leg`: a settle, which takes escrow into a profile and writes no record.
//!
//! Invariants:
//! - A trap fires at most once, on the link it was armed on (a crashed incarnation's link never
//!   carries another commit).
//! - A crash before a commit stops it before it reaches the store; a crash after it lets it apply
//!   and loses its answer; a freeze holds the commit (or its answer) until the server wakes.
//! - A trap whose fault cannot be made (its server is no longer the incarnation it was armed
//!   for, is frozen already, or is the last one up) lets the commit through unharmed.

use std::fmt;

use hoard::engine::trade::{STATUS_PENDING, TRADE_ESCROW_STORE, TRADE_RECORD_STORE};
use hoard::store::{Commit, ValueOp};
use serde_json::Value;

/// What happens to the server at the trap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepFault {
    Crash,
    Freeze,
}

/// Whether the fault hits before the commit reaches the store or after it applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepMoment {
    Before,
    After,
}

/// The step of a cross-server trade a commit takes (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TradeStep {
    Escrow,
    Decision,
    Leg,
}

/// Makes the fault happen to the server the trap was armed for (or counts why it could not),
/// told which step of the trade the commit takes.
pub type FireStepFault = Box<dyn Fn(StepFault, StepMoment, TradeStep) + Send + Sync>;

/// A fault armed on one link for one trade.
pub struct StepTrap {
    pub trade_id: String,
    /// Which of the link's commits touching the trade it hits (0: the first).
    pub commit_index: usize,
    pub moment: StepMoment,
    pub fault: StepFault,
    pub fire: FireStepFault,
    /// Commits touching the trade the link has carried since the trap was armed.
    pub commits_seen: usize,
}

impl fmt::Debug for StepTrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepTrap")
            .field("trade_id", &self.trade_id)
            .field("commit_index", &self.commit_index)
            .field("moment", &self.moment)
            .field("fault", &self.fault)
            .field("commits_seen", &self.commits_seen)
            .finish_non_exhaustive()
    }
}

impl StepFault {
    pub fn name(self) -> &'static str {
        match self {
            StepFault::Crash => "crash",
            StepFault::Freeze => "freeze",
        }
    }
}

impl StepMoment {
    pub fn name(self) -> &'static str {
        match self {
            StepMoment::Before => "before",
            StepMoment::After => "after",
        }
    }
}

impl TradeStep {
    pub fn name(self) -> &'static str {
        match self {
            TradeStep::Escrow => "escrow",
            TradeStep::Decision => "decision",
            TradeStep::Leg => "leg",
        }
    }

    /// The step `commit` takes in trade `trade_id`, or `None` when it does not touch the trade.
    pub fn of(commit: &Commit, trade_id: &str) -> Option<TradeStep> {
        let escrow_prefix = format!("{trade_id}/");
        let mut touches = false;
        let mut record_status = None;
        for write in &commit.writes {
            let store = write.id.store.as_str();
            let key = write.id.key.as_str();
            if store == TRADE_RECORD_STORE && key == trade_id {
                touches = true;
                if let ValueOp::Put(value) = &write.value {
                    record_status = Some(value.get("status").and_then(Value::as_str).unwrap_or("").to_string());
                }
            } else if store == TRADE_ESCROW_STORE && key.starts_with(&escrow_prefix) {
                touches = true;
            }
        }
        touches.then_some(match record_status.as_deref() {
            None => TradeStep::Leg,
            Some(STATUS_PENDING) => TradeStep::Escrow,
            Some(_) => TradeStep::Decision,
        })
    }
}

/// Every (fault, moment, step) a sweep should reach, as the outcome names the world counts.
pub fn every_step_fault_name() -> Vec<String> {
    let mut names = Vec::new();
    for fault in [StepFault::Crash, StepFault::Freeze] {
        for moment in [StepMoment::Before, StepMoment::After] {
            for step in [TradeStep::Escrow, TradeStep::Decision, TradeStep::Leg] {
                names.push(step_fault_name(fault, moment, step));
            }
        }
    }
    names
}

/// The outcome counter of one fired trap.
pub fn step_fault_name(fault: StepFault, moment: StepMoment, step: TradeStep) -> String {
    format!("cross_trade.step_fault.{}.{}.{}", fault.name(), moment.name(), step.name())
}
