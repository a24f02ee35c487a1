//! The in-process `hoard serve` of the HTTP path: the real axum router of `hoard-server` over the
//! world's store, driven as a tower service in memory (no socket, so a world stays on one
//! thread, on paused time, replayable), and its restarts.
//!
//! Invariants:
//! - Each request runs as a task owned by the current process incarnation, as a handler runs in
//!   the server process whatever its client does; a restart aborts every one of them mid-way
//!   (a kill: whatever each had committed stays, the rest never happens) and its client sees
//!   the connection cut, an unknown outcome.
//! - While the process is down, requests are refused before anything is read (connection
//!   refused: certainly not applied). A new incarnation is a new `AppState` and router over the
//!   same store: nothing of the service survives a restart but what the store holds.
//! - The service's only key is a `game_server` key, with its rate limit out of the way (the
//!   limiter reads the wall clock, which a paused world must never depend on).

use std::sync::{Mutex, MutexGuard};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, header};
use hoard::store::SharedStore;
use hoard_server::auth::{ApiKey, Scope, hash_secret};
use hoard_server::{AppState, ServiceConfig};
use serde_json::Value;
use tokio::task::AbortHandle;
use tower::ServiceExt;

/// The game servers' API key name and secret (the only key the simulated service knows).
pub const SIM_KEY_NAME: &str = "sim";
pub const SIM_KEY_SECRET: &str = "hoard-sim-game-server-secret";
/// Bytes of one answer body the simulated clients read.
pub const ANSWER_BYTES_MAX: usize = 16 * 1024 * 1024;

/// One HTTP request of a simulated game server.
#[derive(Clone, Debug, PartialEq)]
pub struct SimRequest {
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
    pub idempotency_key: Option<String>,
}

impl SimRequest {
    pub fn post(path: impl Into<String>, body: Value) -> SimRequest {
        SimRequest { method: Method::POST, path: path.into(), body: Some(body), idempotency_key: None }
    }

    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> SimRequest {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// What came back from the service process.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    Answered {
        status: u16,
        body: Value,
    },
    /// The process died while the request was in it: it may or may not have applied.
    Cut,
    /// The process was down: nothing was read.
    Refused,
}

#[derive(Debug, Default)]
struct Process {
    incarnation: u64,
    router: Option<Router>,
    in_flight: Vec<AbortHandle>,
}

#[derive(Debug)]
pub struct SimService {
    store: SharedStore,
    config: ServiceConfig,
    /// The no-adopt control's service: session writes fenced by the lease alone.
    weakened: bool,
    process: Mutex<Process>,
}

impl SimService {
    /// Starts the first incarnation over `store` (the world's store behind its observing link).
    pub fn start(store: SharedStore, lease_ttl_ms: u64, weakened: bool) -> SimService {
        let key = ApiKey {
            name: SIM_KEY_NAME.to_string(),
            hash: hash_secret(SIM_KEY_SECRET),
            scope: Scope::GameServer,
            stores: None,
            rate_per_second: u32::MAX,
            rate_burst: u32::MAX,
            holder_tag: None,
        };
        let config = ServiceConfig { lease_ttl_ms, keys: vec![key], ..ServiceConfig::default() };
        let service = SimService { store, config, weakened, process: Mutex::new(Process::default()) };
        service.boot();
        service
    }

    fn process(&self) -> MutexGuard<'_, Process> {
        self.process.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn boot(&self) {
        let state = if self.weakened {
            AppState::weakened_for_the_simulator(self.store.clone(), self.config.clone())
        } else {
            AppState::new(self.store.clone(), self.config.clone())
        };
        let mut process = self.process();
        process.incarnation += 1;
        process.router = Some(hoard_server::router(state));
    }

    /// The process dies now: every request in it is cut; new ones are refused until `restart`.
    pub fn kill(&self) -> u64 {
        let mut process = self.process();
        process.router = None;
        for task in std::mem::take(&mut process.in_flight) {
            task.abort();
        }
        process.incarnation
    }

    /// A new process over the same store.
    pub fn restart(&self) {
        self.boot();
    }

    /// Delivers one request to the current process and waits for its answer.
    pub async fn handle(&self, request: SimRequest) -> Delivery {
        let Some(router) = self.process().router.clone() else { return Delivery::Refused };
        let task = tokio::spawn(call(router, request));
        {
            let mut process = self.process();
            process.in_flight.retain(|task| !task.is_finished());
            process.in_flight.push(task.abort_handle());
        }
        task.await.unwrap_or(Delivery::Cut)
    }
}

async fn call(router: Router, request: SimRequest) -> Delivery {
    let mut builder = Request::builder()
        .method(request.method)
        .uri(request.path)
        .header(header::AUTHORIZATION, format!("Bearer {SIM_KEY_SECRET}"));
    if let Some(key) = &request.idempotency_key {
        builder = builder.header("Idempotency-Key", key);
    }
    let body = match &request.body {
        Some(value) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Body::from(value.to_string())
        }
        None => Body::empty(),
    };
    let Ok(built) = builder.body(body) else {
        return Delivery::Answered { status: 400, body: Value::String("the simulator built a bad request".into()) };
    };
    let response = match router.oneshot(built).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    match axum::body::to_bytes(response.into_body(), ANSWER_BYTES_MAX).await {
        Ok(bytes) => {
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            Delivery::Answered { status, body }
        }
        Err(_) => Delivery::Cut,
    }
}
