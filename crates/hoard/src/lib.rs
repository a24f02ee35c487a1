//! hoard: a player-data engine for online games.
//!
//! # Layout
//! - `store`: the durable ground floor: documents with monotonic versions, leases with fencing
//!   epochs, inboxes, history, conditional multi-key atomic commits and notifications, on
//!   SQLite (feature `sqlite`), PostgreSQL (feature `postgres`) and an in-memory backend.
//! - `engine`: sessions over any store: fenced, ordered saves, autosave, handoff, trades,
//!   receipts, inbox, lock-free shared documents, shutdown. `engine::protocol` is the part
//!   `hoard serve` shares.
//! - `retry`: the one bounded retry helper every retried store call goes through.
//!
//! Features: `sqlite` and `postgres` (both default) pick the backends; `testing` adds the fault
//! store (`store::fault`) and the engine's test hooks (`Engine::crash`,
//! `Engine::suspend_lease_renewal`), which production builds do not link.
//!
//! See ARCHITECTURE.md for the map and the invariants.

pub mod engine;
pub mod liveops;
pub mod retry;
pub mod store;
