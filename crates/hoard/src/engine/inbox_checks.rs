//! Inbox checks, coalesced per key and bounded: the receiving side of G7 must not turn a burst
//! of notifications into a burst of store reads.
//!
//! Invariants:
//! - Per key, at most one check runs and at most one more waits: a request that arrives while a
//!   check is queued or running only marks it to run once more (what it would have read, the
//!   next check reads too). So N notifications of a key cost at most two reads at a time.
//! - At most `inbox_checks_in_flight_max` checks read the store at once, across all keys
//!   (`permits`); the others wait for a permit, holding no store resource.
//! - Pure bookkeeping: the task that reads lives in `listener`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Semaphore;

use crate::store::DocId;

#[derive(Debug)]
pub(crate) struct InboxChecks {
    /// Keys with a check queued or running, and whether a request came in meanwhile.
    running: Mutex<HashMap<DocId, bool>>,
    permits: Arc<Semaphore>,
}

/// What a request for a key's check asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CheckRequest {
    /// No check was queued or running: start one.
    Start,
    /// One was: it will run once more. Nothing to start.
    Coalesced,
}

impl InboxChecks {
    pub fn new(in_flight_max: usize) -> InboxChecks {
        InboxChecks { running: Mutex::new(HashMap::new()), permits: Arc::new(Semaphore::new(in_flight_max)) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<DocId, bool>> {
        // Map operations only: a poisoned lock is still consistent.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn request(&self, id: &DocId) -> CheckRequest {
        let mut running = self.lock();
        match running.get_mut(id) {
            Some(again) => {
                *again = true;
                CheckRequest::Coalesced
            }
            None => {
                running.insert(id.clone(), false);
                CheckRequest::Start
            }
        }
    }

    /// A check of `id` read the store. True: a request came in meanwhile, check again.
    pub fn finished(&self, id: &DocId) -> bool {
        let mut running = self.lock();
        match running.get_mut(id) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                running.remove(id);
                false
            }
        }
    }

    /// A check that will not run (its task was refused, or its session is gone).
    pub fn abandon(&self, id: &DocId) {
        self.lock().remove(id);
    }

    /// Permits for store reads; one is held for the whole of each read.
    pub fn permits(&self) -> Arc<Semaphore> {
        self.permits.clone()
    }
}
