//! `hoard serve`: the HTTP/JSON service that gives game servers in any language what the hoard
//! library gives a Rust server, and `RemoteStore`, the store backend that speaks to it.
//!
//! Invariant: this crate is the only place in hoard that knows HTTP. It holds no session state
//! of its own: every semantic (fencing, exactly-once receipts, atomic trades) is the store's and
//! the library's, applied through the same primitives, so several processes act as one service.

pub mod app;
pub mod auth;
pub mod config;
pub mod connections;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod remote;
pub mod routes;
pub mod runtime_keys;
pub mod state;
pub mod wire;

pub use app::{router, serve};
pub use config::ServiceConfig;
pub use remote::RemoteStore;
pub use state::AppState;
