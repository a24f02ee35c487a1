//! The conformance suite's backends, each served by `hoard serve` and reached through
//! `RemoteStore`: the names match hoard's (`memory`, `sqlite`, `postgres`) so the included suite's
//! invocations run unchanged.

use std::sync::Arc;

use hoard_server::RemoteStore;

pub use crate::local_backends::{TestConfig, TestStore};
use crate::support::{self, ENGINE_SECRET};

async fn remote(inner: TestStore) -> Option<TestStore> {
    let server = support::start(inner.store.clone()).await;
    let store = RemoteStore::connect(&server.url, ENGINE_SECRET).await.expect("connect the remote store");
    Some(TestStore { store: Arc::new(store), _guard: Box::new((inner, server)) })
}

pub async fn memory(config: TestConfig) -> Option<TestStore> {
    remote(crate::local_backends::memory(config).await?).await
}

pub async fn sqlite(config: TestConfig) -> Option<TestStore> {
    remote(crate::local_backends::sqlite(config).await?).await
}

pub async fn postgres(config: TestConfig) -> Option<TestStore> {
    remote(crate::local_backends::postgres(config).await?).await
}
