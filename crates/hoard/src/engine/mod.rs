//! The engine: sessions over a store, with fenced leases, ordered writes, autosave, handoff,
//! inbox, lock-free shared documents and shutdown. No SQL and no HTTP here; time comes from tokio.

mod announce;
mod background;
pub mod config;
#[allow(clippy::module_inception)]
mod engine;
pub mod error;
pub mod inbox;
mod load;
pub mod operator;
pub mod receipt;
pub mod schema;
pub mod session;
pub mod shared_docs;
pub mod trade;
pub mod transaction;

pub use announce::{RELEASED_OUTBOX_IDS_MAX, announces_release, released_notification, released_notifications};
pub use config::EngineConfig;
pub use engine::{
    Engine, EngineCounters, HeldPolicy, LoadFailurePolicy, OpenError, ShutdownReport, StartOptions,
    TOPIC_HANDOFF_PREFIX, TOPIC_INBOX, TOPIC_RELEASED,
};
pub use error::{SessionError, StartError};
pub use inbox::SendError;
pub use load::{AcquireAttempt, QUARANTINE_STORE, acquire_once, handoff_notification, quarantine_write};
pub use operator::{OperatorError, Peek};
pub use receipt::{ReceiptOutcome, ReceiptRecord};
pub use schema::{FieldChange, ProfileMeta, ProfileSchema};
pub use session::{Profile, ProfileKind, SaveKind, SaveOutcome, Session, SessionEvent, SessionStatus};
pub use shared_docs::{
    FlushAllReport, FlushReport, PendingUpdate, SharedDocError, SharedDocs, UpdateOutcome, UpdateVerdict,
};
pub use trade::{Holdings, Tradable, Trade, TradeError, TradeLeg, TradeOutcome, TradeRecord};
pub use transaction::{TransactError, TxContext};
