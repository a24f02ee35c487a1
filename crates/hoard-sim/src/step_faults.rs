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
//! On the HTTP path the trap sits in the game server's network (`HttpLink`) and counts its
//! requests of the trade (`/v1/trades/cross/…`): "before" holds or drops the request before it
//! leaves, "after" lets `hoard serve` apply it and then loses (crash) or holds (freeze) its
//! answer. A request's step is read from the route and, for a prepare, from the record as it
//! stands when the request leaves (`TradeStep::of_request`): a prepare that the record shows
//! every other party has made is the decision.
//!
//! Invariants:
//! - A trap fires at most once, on the link it was armed on (a crashed incarnation's link never
//!   carries another commit).
//! - A crash before a commit stops it before it reaches the store; a crash after it lets it apply
//!   and loses its answer; a freeze holds the commit (or its answer) until the server wakes.
//! - A trap whose fault cannot be made (its server is no longer the incarnation it was armed
//!   for, is frozen already, or is the last one up) lets the commit through unharmed.

use std::fmt;
use std::sync::{Mutex, MutexGuard};

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

/// The trap slot of one link: at most one armed trap, the newest.
#[derive(Debug, Default)]
pub struct TrapSlot {
    armed: Mutex<Option<StepTrap>>,
}

impl TrapSlot {
    fn armed(&self) -> MutexGuard<'_, Option<StepTrap>> {
        self.armed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Arms `trap`, in place of one that has not sprung (its commit may never come: its trade
    /// was decided elsewhere, or its party left); answers whether it replaced one.
    pub fn arm(&self, trap: StepTrap) -> bool {
        self.armed().replace(trap).is_some()
    }

    /// Takes off the armed trap, if any.
    pub fn disarm(&self) {
        self.armed().take();
    }

    /// The trade the armed trap waits for.
    pub fn trade_id(&self) -> Option<String> {
        self.armed().as_ref().map(|trap| trap.trade_id.clone())
    }

    /// The armed trap, taken off, when the message `step_of` reads is the one it hits;
    /// `step_of` is given the trap's trade id and answers the step the message takes in it
    /// (`None`: the message does not touch that trade).
    pub fn sprung_by(&self, step_of: impl FnOnce(&str) -> Option<TradeStep>) -> Option<(StepTrap, TradeStep)> {
        let mut armed = self.armed();
        let trap = armed.as_mut()?;
        let step = step_of(&trap.trade_id)?;
        trap.commits_seen += 1;
        if trap.commits_seen <= trap.commit_index {
            return None;
        }
        armed.take().map(|trap| (trap, step))
    }
}

/// The trade a request of the HTTP cross-server trade routes is about, and whether it is a
/// prepare (whose step depends on the record); `None` for any other request (a `GET` of a trade
/// moves nothing).
pub fn request_trade(method: &axum::http::Method, path: &str, body: Option<&Value>) -> Option<(String, bool)> {
    if method != axum::http::Method::POST {
        return None;
    }
    let rest = path.strip_prefix("/v1/trades/cross/")?;
    if rest == "prepare" {
        let id = body?.pointer("/trade/id")?.as_str()?;
        return Some((id.to_string(), true));
    }
    let (id, action) = rest.split_once('/')?;
    matches!(action, "settle" | "abort").then(|| (id.to_string(), false))
}

impl TradeStep {
    /// The step an HTTP request of trade `trade_id` takes: a settle is a leg, an abort a
    /// decision, and a prepare, by `record` (the record's value as the request leaves, `None`
    /// when absent): the decision when every other party has prepared, a leg when the trade is
    /// decided already (the prepare then only settles), else an escrow.
    pub fn of_request(path: &str, record: Option<&Value>) -> TradeStep {
        if path.ends_with("/settle") {
            return TradeStep::Leg;
        }
        if path.ends_with("/abort") {
            return TradeStep::Decision;
        }
        let Some(record) = record else { return TradeStep::Escrow };
        if record.get("status").and_then(Value::as_str) != Some(STATUS_PENDING) {
            return TradeStep::Leg;
        }
        let parties = record.get("parties").and_then(Value::as_array).map_or(0, Vec::len);
        let prepared = record.get("prepared").and_then(Value::as_array).map_or(0, Vec::len);
        if prepared + 1 >= parties { TradeStep::Decision } else { TradeStep::Escrow }
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
