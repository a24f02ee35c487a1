//! The network between one game server incarnation and `hoard serve`: latency each way, lost
//! requests (never applied; the client times out), lost answers (applied, then the answer is
//! dropped), duplicated requests (a copy delivered up to seconds later, after later requests:
//! reordering), a pause switch (a frozen process) and a kill switch (a crashed one).
//!
//! Invariants:
//! - Every draw comes from the link's own seeded generator, in call order (replayable).
//! - A paused link holds each request before it leaves and each answer before it arrives; a
//!   killed link never answers again (its calls pend forever), so nothing a crashed incarnation
//!   still had in flight reaches it afterwards. A duplicate already in the network still arrives.
//! - A client learns only what an answer tells it: a lost request, a lost answer and a cut
//!   connection all look the same (`Answer::Lost`).
//! - A cross-server trade step fault (`step_faults`) armed here springs on the request it hits:
//!   before it leaves (a crash drops it, a freeze holds it) or after `hoard serve` applied it (a
//!   crash loses the answer, a freeze holds it). That request is not also lost by the network.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hoard::engine::trade::record_id;
use hoard::store::SharedStore;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tokio::sync::Notify;

use super::service::{Delivery, SimRequest, SimService};
use crate::config::FaultRates;
use crate::step_faults::{StepMoment, StepTrap, TradeStep, TrapSlot, request_trade};

/// How long a client waits for an answer that never comes before it calls the request lost.
pub const CLIENT_TIMEOUT_MS: u64 = 1_000;

/// What the client got back.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Status {
        status: u16,
        body: Value,
    },
    /// No answer: lost on the way there or back, or the connection was cut. Unknown outcome.
    Lost,
    /// Connection refused (the service is down): certainly not applied.
    Refused,
}

/// What the network did, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounts {
    pub requests: u64,
    pub requests_lost: u64,
    pub answers_lost: u64,
    pub duplicated: u64,
    pub cut_by_restarts: u64,
    pub refused: u64,
}

#[derive(Debug)]
pub struct HttpLink {
    id: usize,
    service: Arc<SimService>,
    rates: FaultRates,
    random: Mutex<ChaCha8Rng>,
    paused: AtomicBool,
    /// Wakes held calls in a fixed order (see `SimLink`: a `watch` would not replay).
    resumed: Notify,
    killed: AtomicBool,
    counts: Mutex<NetCounts>,
    /// The cross-server trade step fault armed on this link, if any.
    trap: TrapSlot,
    /// The world's store without faults, read only to name the step a prepare takes.
    oracle: SharedStore,
}

struct Draw {
    request_lost: bool,
    answer_lost: bool,
    duplicate_after_ms: Option<u64>,
}

impl HttpLink {
    pub fn new(id: usize, service: Arc<SimService>, rates: FaultRates, seed: u64, oracle: SharedStore) -> HttpLink {
        HttpLink {
            id,
            service,
            rates,
            random: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            paused: AtomicBool::new(false),
            resumed: Notify::new(),
            killed: AtomicBool::new(false),
            counts: Mutex::new(NetCounts::default()),
            trap: TrapSlot::default(),
            oracle,
        }
    }

    /// Arms `trap` (see `TrapSlot::arm`); answers whether it replaced one that had not sprung.
    pub fn arm(&self, trap: StepTrap) -> bool {
        self.trap.arm(trap)
    }

    /// Takes off the armed trap, if any.
    pub fn disarm(&self) {
        self.trap.disarm();
    }

    /// The armed trap, taken off the link, when `request` is the request of its trade it hits.
    async fn sprung_by(&self, request: &SimRequest) -> Option<(StepTrap, TradeStep)> {
        let armed_for = self.trap.trade_id()?;
        let (trade_id, is_prepare) = request_trade(&request.method, &request.path, request.body.as_ref())?;
        if trade_id != armed_for {
            return None;
        }
        let record = if is_prepare { self.read_record(&trade_id).await } else { None };
        self.trap.sprung_by(|armed| (armed == trade_id).then(|| TradeStep::of_request(&request.path, record.as_ref())))
    }

    async fn read_record(&self, trade_id: &str) -> Option<Value> {
        let id = record_id(trade_id).ok()?;
        hoard::store::get(&*self.oracle, &id).await.ok()?.value
    }

    pub fn id(&self) -> usize {
        self.id
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.resumed.notify_waiters();
    }

    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.resume();
    }

    pub fn counts(&self) -> NetCounts {
        *self.tally()
    }

    fn tally(&self) -> MutexGuard<'_, NetCounts> {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn random(&self) -> MutexGuard<'_, ChaCha8Rng> {
        self.random.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn travel(&self) {
        let latency_ms_max = self.rates.link_latency_ms_max;
        if latency_ms_max > 0 {
            let delay_ms = self.random().random_range(0..=latency_ms_max);
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
        }
        loop {
            let resumed = self.resumed.notified();
            if !self.paused.load(Ordering::SeqCst) {
                break;
            }
            resumed.await;
        }
        if self.killed.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    fn draw(&self) -> Draw {
        let rates = &self.rates;
        let mut random = self.random();
        let request_lost = random.random_bool(rates.http_request_lost.clamp(0.0, 1.0));
        let answer_lost = random.random_bool(rates.http_answer_lost.clamp(0.0, 1.0));
        let duplicated = random.random_bool(rates.http_duplicated.clamp(0.0, 1.0));
        let delay_ms = random.random_range(0..=rates.http_duplicate_delay_ms_max);
        Draw { request_lost, answer_lost, duplicate_after_ms: duplicated.then_some(delay_ms) }
    }

    /// Sends one request and waits for what comes back.
    pub async fn send(&self, request: &SimRequest) -> Answer {
        self.travel().await;
        let sprung = self.sprung_by(request).await;
        if let Some((trap, step)) = &sprung
            && trap.moment == StepMoment::Before
        {
            (trap.fire)(trap.fault, trap.moment, *step);
            // A crash killed the link (this pends for ever); a freeze holds the request here.
            self.travel().await;
        }
        let mut draw = self.draw();
        if sprung.is_some() {
            // The trap is this request's fault.
            draw.request_lost = false;
            draw.answer_lost = false;
        }
        self.tally().requests += 1;
        if let Some(delay_ms) = draw.duplicate_after_ms {
            self.tally().duplicated += 1;
            let (service, copy) = (self.service.clone(), request.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                let _ = service.handle(copy).await;
            });
        }
        if draw.request_lost {
            self.tally().requests_lost += 1;
            tokio::time::sleep(Duration::from_millis(CLIENT_TIMEOUT_MS)).await;
            self.travel().await;
            return Answer::Lost;
        }
        let delivered = self.service.handle(request.clone()).await;
        if let Some((trap, step)) = &sprung
            && trap.moment == StepMoment::After
        {
            // Applied (or refused) by `hoard serve`; a crash now loses the answer for ever, a
            // freeze holds it in the `travel` below.
            (trap.fire)(trap.fault, trap.moment, *step);
        }
        self.travel().await;
        match delivered {
            Delivery::Answered { .. } if draw.answer_lost => {
                self.tally().answers_lost += 1;
                tokio::time::sleep(Duration::from_millis(CLIENT_TIMEOUT_MS)).await;
                self.travel().await;
                Answer::Lost
            }
            Delivery::Answered { status, body } => Answer::Status { status, body },
            Delivery::Cut => {
                self.tally().cut_by_restarts += 1;
                Answer::Lost
            }
            Delivery::Refused => {
                self.tally().refused += 1;
                Answer::Refused
            }
        }
    }
}
