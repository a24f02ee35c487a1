//! PostgreSQL backend. Being written.

use crate::store::StoreError;
use crate::store::limits::{HistoryPolicy, Limits};

#[derive(Clone, Debug)]
pub struct PostgresOptions {
    pub url: String,
    /// The schema hoard's tables live in (created if missing).
    pub schema: String,
    pub limits: Limits,
    pub history_policy: HistoryPolicy,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            url: String::new(),
            schema: "hoard".to_string(),
            limits: Limits::default(),
            history_policy: HistoryPolicy::default(),
        }
    }
}

#[derive(Debug)]
pub struct PostgresStore;

impl PostgresStore {
    pub async fn open(_options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        Err(StoreError::unavailable("postgres backend not written yet"))
    }
}

#[async_trait::async_trait]
impl crate::store::Store for PostgresStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }
    fn limits(&self) -> &Limits {
        unreachable!()
    }
    async fn now_ms(&self) -> Result<i64, StoreError> {
        unreachable!()
    }
    async fn get_many(&self, _: &[crate::store::DocId]) -> Result<Vec<crate::store::Document>, StoreError> {
        unreachable!()
    }
    async fn list_keys(
        &self,
        _: &crate::store::StoreName,
        _: &crate::store::ListQuery,
    ) -> Result<crate::store::KeyPage, StoreError> {
        unreachable!()
    }
    async fn commit(&self, _: crate::store::Commit) -> Result<crate::store::CommitOutcome, StoreError> {
        unreachable!()
    }
    async fn list_versions(
        &self,
        _: &crate::store::DocId,
        _: &crate::store::VersionQuery,
    ) -> Result<Vec<crate::store::VersionInfo>, StoreError> {
        unreachable!()
    }
    async fn get_version(
        &self,
        _: &crate::store::DocId,
        _: u64,
    ) -> Result<Option<crate::store::VersionRecord>, StoreError> {
        unreachable!()
    }
    async fn prune_history(&self) -> Result<u64, StoreError> {
        unreachable!()
    }
    async fn renew_holder(&self, _: &crate::store::HolderId, _: u64) -> Result<crate::store::HolderLease, StoreError> {
        unreachable!()
    }
    async fn release_holder(&self, _: &crate::store::HolderId) -> Result<(), StoreError> {
        unreachable!()
    }
    async fn holder_lease(&self, _: &crate::store::HolderId) -> Result<Option<crate::store::HolderLease>, StoreError> {
        unreachable!()
    }
    async fn notify(&self, _: crate::store::Notification) -> Result<(), StoreError> {
        unreachable!()
    }
    fn subscribe(&self) -> crate::store::Subscription {
        unreachable!()
    }
}
