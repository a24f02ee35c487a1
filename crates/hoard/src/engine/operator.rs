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

use super::core::Core;
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

/// Reads a key's document and decodes its profile, without taking the key.
pub(crate) async fn peek<P: Profile>(core: &Core, kind: &ProfileKind<P>, key: &str) -> Result<Peek<P>, OperatorError> {
    let id = DocId::new(
        kind.store.clone(),
        crate::store::Key::with_limits(key, core.store().limits()).map_err(StoreError::from)?,
    );
    let document = core.read(&id).await?;
    let profile = match &document.value {
        None => None,
        Some(value) => Some(kind.schema.decode(Some(value)).map_err(OperatorError::Decode)?.profile),
    };
    Ok(Peek { document, profile })
}

/// Lists a key's versions, newest first.
pub(crate) async fn versions(core: &Core, id: &DocId, query: &VersionQuery) -> Result<Vec<VersionInfo>, OperatorError> {
    Ok(core.store().list_versions(id, query).await?)
}

/// Writes version `version` of `id` as its new version. Refused while a live session holds the
/// key unless `force`, which fences the holder out first. Returns the new version.
pub(crate) async fn rollback(core: &Core, id: &DocId, version: u64, force: bool) -> Result<u64, OperatorError> {
    if force && let Err(conflict) = force_release(&**core.store(), id).await? {
        return Err(OperatorError::Changed { reason: conflict.to_string() });
    }
    match restore_version(&**core.store(), id, version, Condition::LeaseFree).await? {
        CommitOutcome::Committed { applied, .. } => applied
            .first()
            .map(|applied| applied.version)
            .ok_or_else(|| OperatorError::Store(StoreError::corrupt("a rollback committed no write"))),
        CommitOutcome::Conflict(conflict) if conflict.kind == crate::store::ConflictKind::LeaseHeld => {
            Err(OperatorError::Held { id: id.clone() })
        }
        CommitOutcome::Conflict(conflict) => Err(OperatorError::Changed { reason: conflict.to_string() }),
    }
}
