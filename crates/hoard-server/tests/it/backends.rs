//! The conformance suite's backend, served by `hoard serve` and reached through `RemoteStore`: the
//! name matches hoard's (`memory`) so the included suite's invocation runs unchanged (see
//! `conformance_backends!` in `main.rs` for why only the memory store stands behind the server).

use std::sync::Arc;

use hoard_server::RemoteStore;

pub use crate::local_backends::{TestConfig, TestStore};
use crate::support::{self, ENGINE_SECRET};

async fn remote(inner: TestStore) -> TestStore {
    let server = support::start(inner.store.clone()).await;
    let store = RemoteStore::connect(&server.url, ENGINE_SECRET).await.expect("connect the remote store");
    TestStore { store: Arc::new(store), _guard: Box::new((inner, server)) }
}

pub async fn memory(config: TestConfig) -> TestStore {
    remote(crate::local_backends::memory(config).await).await
}
