//! A live session: one player's profile held in memory by this engine, and its write path.
//!
//! Invariants:
//! - Every write of a session is conditional on `Lease { holder, epoch }` (G1). The first write
//!   that finds another holder or epoch ends the session as `FencedOut` at once; it never writes
//!   again and tells the game (unlike ProfileStore, whose stolen-from server keeps going).
//! - All writes of one key go through `write_order`, one at a time, each snapshotting the newest
//!   in-memory state when it runs, so writes apply in issue order, a retry never overtakes a later
//!   write, and a newer save supersedes an older queued one (G5). A write, once started, runs to
//!   its end in an engine task holding the order: a caller that stops waiting cannot let a later
//!   write overtake it.
//! - An errored session (load failed, playing on defaults) never writes (G2).
//! - A session reports `Active` only while this engine's lease is within its local deadline and
//!   the session was confirmed since the last lapse (`LeaseClock`); otherwise `LeaseLapsed`, and
//!   changes are refused.
//! - In-memory reads and changes are synchronous and never wait for I/O.
//!
//! Layout: the types here; `kind` (what a game declares), `state` (status, changes, inbox,
//! transaction parties), `save` and `end` (the write path), `handle` (the game's `Session<P>`).

mod end;
mod handle;
mod kind;
mod save;
mod state;

use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde_json::{Map, Value};
use tokio::sync::{Notify, broadcast};

use crate::store::{DocId, HolderId};

use super::core::Core;
use super::lease::LeaseClock;
use super::schema::{FieldChange, ProfileMeta};

pub use handle::Session;
pub(crate) use kind::PendingTradesCause;
pub use kind::{Profile, ProfileKind};
pub use state::TRADE_DECISION_MESSAGE_FIELD;
pub(crate) use state::{NewSession, PartySnapshot, PartyStanding};

/// Capacity of each session's event channel; a slow listener skips events (`Lagged`). The
/// channel's ring (about 18 KiB at this capacity) is allocated on the first `Session::events`
/// call, so a session nobody listens to does not pay for it.
pub const SESSION_EVENT_CHANNEL_CAPACITY: usize = 256;

/// Where a session stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionStatus {
    Active,
    /// This engine could not renew its process lease before its local deadline: another server
    /// may take the key at any moment. Changes, trades and grants are refused; saves still run
    /// (fenced). Back to `Active` once the lease is renewed and the key is found still held at
    /// this session's epoch; `FencedOut` if it was taken.
    LeaseLapsed,
    /// Playing on default data after a failed load: never writes.
    Errored {
        reason: String,
    },
    /// `end` is saving and releasing.
    Closing,
    Ended,
    /// Another server took the key; this session can never write again.
    FencedOut,
    /// Handed to another server on its request.
    HandedOff,
}

/// What a session tells the game.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionEvent {
    /// Profile fields changed in memory: all of them, and those a client may see.
    Changed {
        changes: Vec<FieldChange>,
        client_changes: Vec<FieldChange>,
    },
    /// A save became durable, up to this in-memory revision.
    Saved {
        revision: u64,
    },
    SaveFailed {
        message: String,
    },
    MessageApplied {
        seq: u64,
    },
    /// A cross-server trade this player took part in was settled here: what it received (when
    /// `committed`) or got back (when not) is in the profile now.
    TradeSettled {
        trade_id: String,
        committed: bool,
    },
    /// Kick the player: another server holds the key now.
    FencedOut,
    /// Kick or move the player: the key was handed to another server.
    HandedOff,
    Ended,
}

/// Which save is being made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveKind {
    /// Autosave: skipped when clean.
    Autosave,
    /// `save_now`: skipped when clean, returns once durable.
    Now,
    /// The last save of the session: also releases the key.
    Final,
}

/// What a save did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Nothing had changed since the last durable save.
    Clean,
    /// Durable up to this in-memory revision.
    Saved { revision: u64 },
}

/// The in-memory state of a session, under the session's std mutex (never held across an await).
struct SessionState<P> {
    profile: P,
    meta: ProfileMeta,
    /// The stored status; `SessionCore::status` adds what the lease clock says.
    status: SessionStatus,
    /// Bumped by every in-memory change.
    revision: u64,
    /// The newest revision known durable.
    durable_revision: u64,
    attributes: Map<String, Value>,
    user_ids: Vec<String>,
    /// Revision at which attributes or user ids last changed (0: never in this session).
    metadata_revision: u64,
    inbox_applied_through: u64,
    inbox_durable_through: u64,
    /// A multi-session transaction is committing this session: changes wait (`Busy`). Set and
    /// cleared only by the transaction's `Parties` guard.
    in_transaction: bool,
    /// An inbox check passed this session over while it was in a transaction: check again when
    /// the transaction releases it.
    inbox_recheck: bool,
    /// The lease generation this session was last confirmed in (`LeaseClock`).
    lease_generation: u64,
}

/// The shared core of a session; `Session<P>` is the game's handle to it.
pub(crate) struct SessionCore<P> {
    id: DocId,
    holder: HolderId,
    epoch: u64,
    kind: ProfileKind<P>,
    engine: Weak<Core>,
    lease: Arc<LeaseClock>,
    state: Mutex<SessionState<P>>,
    /// Serializes every write of this key (G5). In an `Arc` so a write task can own its turn.
    write_order: Arc<tokio::sync::Mutex<()>>,
    /// Made by the first subscriber (`SessionCore::subscribe`). Until then there is no listener,
    /// and an event sent then would be dropped by the channel anyway, so not having one yet
    /// changes nothing a game can see; it only spares the ring of a session nobody listens to.
    events: OnceLock<broadcast::Sender<SessionEvent>>,
    /// Woken when an `end` finishes, whatever its result (shutdown waits on it).
    end_finished: Notify,
}
