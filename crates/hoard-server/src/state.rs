//! The state every route shares: the store, the keys, the rate limiter, the configuration.
//!
//! Invariant: the service keeps no session state of its own — sessions live in the store (leases,
//! epochs) and in the game servers — so any number of processes can serve the same store.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use hoard::store::SharedStore;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::{KeyRing, RateLimiter};
use crate::config::ServiceConfig;

#[derive(Debug)]
pub struct AppState {
    pub store: SharedStore,
    pub keys: KeyRing,
    pub limiter: RateLimiter,
    pub config: ServiceConfig,
    pub metrics: Option<PrometheusHandle>,
    /// False once shutdown began: `/readyz` says so, so load balancers stop sending.
    pub ready: AtomicBool,
    /// Set to true when shutdown begins: open WebSockets close.
    pub closing: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    pub fn new(store: SharedStore, config: ServiceConfig) -> Arc<AppState> {
        Arc::new(AppState {
            store,
            keys: KeyRing::new(config.keys.clone()),
            limiter: RateLimiter::default(),
            config,
            metrics: crate::metrics::install(),
            ready: AtomicBool::new(true),
            closing: tokio::sync::watch::Sender::new(false),
        })
    }
}
