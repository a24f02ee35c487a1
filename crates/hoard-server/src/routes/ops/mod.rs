//! Live operations (`/v1/ops/*`): lookups (`lookups`), history an operator reads (`history`),
//! repairs without kicking (`repair`), erasure and Roblox's erasure webhook (`erasure`,
//! `webhook`), cross-server trades in flight or stuck (`trades`), and the web console's static
//! assets (`console`).
//!
//! Invariants:
//! - Reads need an operator, admin or read-only key; repairs an operator or admin key; erasure an
//!   admin key (`auth::Principal`). A refused call changes nothing.
//! - Every change made here appends one audit entry (`hoard::liveops::append_audit`) naming the
//!   API key, the action, the key and the versions before and after, after the change
//!   committed; the audit log itself is only ever appended to.

pub mod console;
pub mod erasure;
pub mod history;
pub mod lookups;
pub mod repair;
pub mod trades;
pub mod webhook;

use std::sync::Arc;

use axum::Router;
use hoard::liveops::{AuditEntry, append_audit};
use hoard::store::DocId;

use crate::auth::Principal;
use crate::state::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .merge(lookups::routes())
        .merge(history::routes())
        .merge(repair::routes())
        .merge(erasure::routes())
        .merge(trades::routes())
}

/// Records an operator's action; a failure to record is logged and counted, never hidden.
pub async fn audit(
    state: &AppState,
    principal: &Principal,
    action: &str,
    target: Option<&DocId>,
    versions: (Option<u64>, Option<u64>),
    detail: String,
) {
    let entry = AuditEntry {
        actor: principal.name.clone(),
        action: action.to_string(),
        target: target.cloned(),
        version_before: versions.0,
        version_after: versions.1,
        detail,
        at_ms: 0,
    };
    if let Err(error) = append_audit(&*state.store, entry).await {
        crate::metrics::gave_up("appending an audit entry", &error);
    }
}

/// The store's operator side, or a 503 saying this store keeps no indexes.
pub fn operator(state: &AppState) -> Result<&dyn hoard::store::OperatorStore, crate::error::ApiError> {
    hoard::liveops::operator_of(&*state.store).map_err(crate::error::ApiError::store)
}
