//! What a game declares about one kind of profile: where it lives, its schema, and how inbox
//! messages change it.
//!
//! Invariant: a kind is immutable once built; every session of it shares the same handler.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::{InboxMessage, StoreName};

use super::super::schema::ProfileSchema;
use super::SessionCore;

/// What a profile type needs: serde both ways, cloneable, shareable.
pub trait Profile: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Profile for T {}

type MessageHandler<P> = Arc<dyn Fn(&mut P, &InboxMessage) + Send + Sync>;

/// How the engine resolves a session's pending cross-server trades by itself (on load, when a
/// trade's decision arrives in the inbox). Set by `ProfileKind::tradable` (in `trade::across`),
/// so this module needs nothing of trades.
pub(crate) type PendingTradesHook<P> = fn(&Arc<SessionCore<P>>, PendingTradesCause);

/// Why the hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PendingTradesCause {
    /// The session was loaded: resolve what it holds, and wait for the deadline of the rest.
    Loaded,
    /// A trade's decision arrived in the inbox: settle what is decided.
    Decided,
}

pub struct ProfileKind<P> {
    pub store: StoreName,
    pub schema: ProfileSchema<P>,
    message_handler: Option<MessageHandler<P>>,
    pending_trades_hook: Option<PendingTradesHook<P>>,
}

impl<P> Clone for ProfileKind<P> {
    fn clone(&self) -> Self {
        ProfileKind {
            store: self.store.clone(),
            schema: self.schema.clone(),
            message_handler: self.message_handler.clone(),
            pending_trades_hook: self.pending_trades_hook,
        }
    }
}

impl<P> std::fmt::Debug for ProfileKind<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileKind")
            .field("store", &self.store)
            .field("has_message_handler", &self.message_handler.is_some())
            .field("tradable", &self.pending_trades_hook.is_some())
            .finish()
    }
}

impl<P: Profile> ProfileKind<P> {
    pub fn new(store: StoreName, schema: ProfileSchema<P>) -> ProfileKind<P> {
        ProfileKind { store, schema, message_handler: None, pending_trades_hook: None }
    }

    /// Sets how an inbox message changes the profile. Without a handler, messages wait in the
    /// inbox untouched (never dropped).
    pub fn on_message(mut self, handler: impl Fn(&mut P, &InboxMessage) + Send + Sync + 'static) -> ProfileKind<P> {
        self.message_handler = Some(Arc::new(handler));
        self
    }

    pub(crate) fn message_handler(&self) -> Option<&MessageHandler<P>> {
        self.message_handler.as_ref()
    }

    pub(crate) fn with_pending_trades_hook(mut self, hook: PendingTradesHook<P>) -> ProfileKind<P> {
        self.pending_trades_hook = Some(hook);
        self
    }

    pub(crate) fn pending_trades_hook(&self) -> Option<PendingTradesHook<P>> {
        self.pending_trades_hook
    }
}
