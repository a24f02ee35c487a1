//! The engine: sessions over a store, with fenced leases, ordered writes, autosave, handoff,
//! inbox, trades, receipts, lock-free shared documents and shutdown. No SQL and no HTTP here;
//! time comes from tokio.
//!
//! Layout (arrows run one way: facade → modules → core → components):
//! - `engine`: the facade `Engine`; nothing inside imports it.
//! - Modules, each owning one behaviour: `start` (admission and load), `session` (the game's
//!   handle, state, save and end), `transaction`, `trade`, `receipt`, `inbox` (sending),
//!   `listener` (handoff requests, inbox arrivals), `autosave`, `renewal` (the lease by
//!   deadline), `shared_docs`, `operator`, `lifecycle` (open, shutdown, crash), and `protocol`
//!   (acquisition, handoff and notifications, shared with `hoard serve`).
//! - `core`: what the modules share, with private fields.
//! - Components the core holds, which know neither the core nor the modules: `registry`,
//!   `lease`, `tasks`, `announce`, `inbox_checks`, `counters`, and `shared_docs::queue`.
//! - Vocabulary: `config`, `error`, `schema` (pure).

mod announce;
mod autosave;
pub mod config;
mod core;
mod counters;
#[allow(clippy::module_inception)]
mod engine;
pub mod error;
pub mod inbox;
mod inbox_checks;
mod lease;
mod lifecycle;
mod listener;
pub mod operator;
pub mod protocol;
pub mod receipt;
mod registry;
mod renewal;
pub mod schema;
pub mod session;
pub mod shared_docs;
mod start;
mod tasks;
pub mod trade;
pub mod transaction;

pub use announce::RELEASED_OUTBOX_IDS_MAX;
pub use config::EngineConfig;
pub use counters::EngineCounters;
pub use engine::Engine;
pub use error::{SessionError, StartError};
pub use inbox::SendError;
pub use lifecycle::{OpenError, ShutdownReport};
pub use operator::{OperatorError, Peek};
pub use protocol::{
    AcquireAttempt, HeldPolicy, TOPIC_HANDOFF_PREFIX, TOPIC_INBOX, TOPIC_RELEASED, acquire_once, announces_release,
    handoff_notification, released_notification, released_notifications,
};
pub use receipt::{ReceiptOutcome, ReceiptRecord};
pub use schema::{FieldChange, ProfileMeta, ProfileSchema};
pub use session::{
    Profile, ProfileKind, SaveKind, SaveOutcome, Session, SessionEvent, SessionStatus, TRADE_DECISION_MESSAGE_FIELD,
};
pub use shared_docs::{
    FlushAllReport, FlushReport, PendingUpdate, SharedDocError, SharedDocs, UpdateOutcome, UpdateVerdict,
};
pub use start::{LoadFailurePolicy, QUARANTINE_STORE, StartOptions, quarantine_write};
pub use trade::{
    CrossOutcome, CrossTrade, Holdings, PendingTrade, Tradable, Trade, TradeError, TradeLeg, TradeOutcome, TradeRecord,
};
pub use transaction::{TransactError, TxContext};
