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
    /// The simulator's control only (feature `sim-controls`): session writes fenced by the lease
    /// alone, as before issue 11, so that the audit can be shown to catch a stale save.
    #[cfg(feature = "sim-controls")]
    pub lease_only_session_fence: bool,
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
            #[cfg(feature = "sim-controls")]
            lease_only_session_fence: false,
        })
    }

    /// The simulator's weakened service (feature `sim-controls`, never in a release build):
    /// session saves and ends are fenced by the lease alone, ignoring `base_version`.
    #[cfg(feature = "sim-controls")]
    pub fn weakened_for_the_simulator(store: SharedStore, config: ServiceConfig) -> Arc<AppState> {
        let mut state = AppState::new(store, config);
        if let Some(state) = Arc::get_mut(&mut state) {
            state.lease_only_session_fence = true;
        }
        state
    }
}
