//! hoard: a player-data engine for online games.
//!
//! `store` is the durable ground floor: documents with monotonic versions, leases with fencing
//! epochs, inboxes, history, conditional multi-key atomic commits and notifications, on SQLite,
//! PostgreSQL and an in-memory backend. See ARCHITECTURE.md for the map and the invariants.

pub mod engine;
pub mod store;
