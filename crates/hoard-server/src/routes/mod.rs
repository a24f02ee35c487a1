//! The routes, one module per group; each module owns its handlers and its route table.
//!
//! Invariant: handlers check the caller's scope (`Principal`) before touching the store, and
//! parse every path part with the store's own checked constructors, so bad names are 400s.

pub mod api_keys;
pub mod batch;
pub mod cross_trades;
pub mod documents;
pub mod events;
pub mod health;
pub mod ops;
pub mod quarantine;
pub mod raw;
pub mod receipts;
pub mod session_writes;
pub mod sessions;
pub mod sync;
pub mod trades;
pub mod updates;
pub mod value;

use axum::extract::rejection::{PathRejection, QueryRejection};
use hoard::store::{DocId, Key, Limits, StoreName};

use crate::error::ApiError;

/// Parses a store name and key from a path with the store's limits.
pub fn doc_id(store: &str, key: &str, limits: &Limits) -> Result<DocId, ApiError> {
    let store = StoreName::with_limits(store, limits).map_err(|e| ApiError::bad_request(format!("store: {e}")))?;
    let key = Key::with_limits(key, limits).map_err(|e| ApiError::bad_request(format!("key: {e}")))?;
    Ok(DocId::new(store, key))
}

pub fn store_name(store: &str, limits: &Limits) -> Result<StoreName, ApiError> {
    StoreName::with_limits(store, limits).map_err(|e| ApiError::bad_request(format!("store: {e}")))
}

pub fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::bad_request(format!("bad path: {}", rejection.body_text()))
}

pub fn query_error(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("bad query: {}", rejection.body_text()))
}
