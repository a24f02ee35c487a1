//! The operator's view through the engine: read any profile without taking its key, and roll a
//! key back to a past version.
//!
//! Invariant: an operator never writes under a live session. A rollback is refused while a live
//! holder has the key, unless forced; forcing first fences the holder out (release at its epoch),
//! so the holder's next write fails instead of overwriting the rollback.

use thiserror::Error;

use crate::store::{
    CommitOutcome, Condition, DocId, Document, StoreError, VersionInfo, VersionQuery, force_release, restore_version,
};

use super::engine::Engine;
use super::schema::DecodeError;
use super::session::{Profile, ProfileKind};

#[derive(Debug, Error)]
pub enum OperatorError {
    #[error("{id} is held by a live session; pass force to take it from its holder first")]
    Held { id: DocId },
    #[error("the key changed while rolling back; try again: {reason}")]
    Changed { reason: String },
    #[error("the stored value is not a readable profile: {0}")]
    Decode(DecodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A profile read without taking its key.
#[derive(Clone, Debug)]
pub struct Peek<P> {
    pub document: Document,
    /// `None` when the key holds no value.
    pub profile: Option<P>,
}

impl Engine {
    /// Reads a key's document and decodes its profile, without taking the key.
    pub async fn peek<P: Profile>(&self, kind: &ProfileKind<P>, key: &str) -> Result<Peek<P>, OperatorError> {
        let id = DocId::new(kind.store.clone(), crate::store::Key::new(key).map_err(StoreError::from)?);
        let document = self.shared.read_with_retries(&id).await?;
        let profile = match &document.value {
            None => None,
            Some(value) => Some(kind.schema.decode(Some(value)).map_err(OperatorError::Decode)?.profile),
        };
        Ok(Peek { document, profile })
    }

    /// Lists a key's versions, newest first.
    pub async fn versions(&self, id: &DocId, query: &VersionQuery) -> Result<Vec<VersionInfo>, OperatorError> {
        Ok(self.store().list_versions(id, query).await?)
    }

    /// Writes version `version` of `id` as its new version. Refused while a live session holds the
    /// key unless `force`, which fences the holder out first. Returns the new version.
    pub async fn rollback(&self, id: &DocId, version: u64, force: bool) -> Result<u64, OperatorError> {
        if force && let Err(conflict) = force_release(&**self.store(), id).await? {
            return Err(OperatorError::Changed { reason: conflict.to_string() });
        }
        match restore_version(&**self.store(), id, version, Condition::LeaseFree).await? {
            CommitOutcome::Committed { applied, .. } => Ok(applied.first().map_or(0, |applied| applied.version)),
            CommitOutcome::Conflict(conflict) if conflict.kind == crate::store::ConflictKind::LeaseHeld => {
                Err(OperatorError::Held { id: id.clone() })
            }
            CommitOutcome::Conflict(conflict) => Err(OperatorError::Changed { reason: conflict.to_string() }),
        }
    }
}
