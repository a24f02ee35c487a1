//! The JSON shapes of the public routes that are not the store's own types.
//!
//! Invariant: a session token names exactly what the store fences on — holder, epoch and key —
//! so the server needs no memory of sessions: a token is valid exactly while the store's lease
//! of that key names that holder at that epoch.

use hoard::store::{DocId, HolderId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;

/// What `POST /v1/sessions/start` returns and every session route takes. Not secret, and
/// unforgeable in effect: it writes only while the store's lease still names its holder at its
/// epoch, and only the key that registered the holder may use it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionToken {
    pub holder: String,
    pub epoch: u64,
    pub store: String,
    pub key: String,
}

impl SessionToken {
    pub fn new(holder: &HolderId, epoch: u64, id: &DocId) -> SessionToken {
        SessionToken { holder: holder.to_string(), epoch, store: id.store.to_string(), key: id.key.to_string() }
    }

    pub fn holder_id(&self) -> Result<HolderId, ApiError> {
        HolderId::new(self.holder.clone()).map_err(|e| ApiError::bad_request(format!("token holder: {e}")))
    }

    pub fn doc_id(&self) -> Result<DocId, ApiError> {
        DocId::parse(&self.store, &self.key).map_err(|e| ApiError::bad_request(format!("token: {e}")))
    }
}

/// Query of `GET /v1/stores/{store}/keys`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only keys starting with this (literal, case-sensitive).
    #[serde(default)]
    pub prefix: String,
    /// Start after this key: the `next_after` of the previous page.
    pub after: Option<String>,
    /// Page size (0 or absent: the store's default; capped at its maximum).
    #[serde(default)]
    pub limit: usize,
}

/// Query of `GET /v1/stores/{store}/keys/{key}/versions`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct VersionParams {
    /// List versions strictly older than this one.
    pub before: Option<u64>,
    #[serde(default)]
    pub limit: usize,
}

/// A key's document as stored (value, version, times, attributes, user ids, lease, inbox).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(value_type = Object)]
pub struct DocumentSchema(pub serde_json::Value);
