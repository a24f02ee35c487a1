//! A real `hoard serve` for the specs: SQLite in a temporary directory, one game-server key,
//! on a free loopback port, on its own tokio runtime; stopped when dropped.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hoard::store::{StoreOptions, open_store};
use hoard_server::auth::Scope;
use hoard_server::config::{KeyEntry, ServiceConfig};
use hoard_server::{AppState, serve};

/// Requests a second the spec key may send (far above any spec: the budget is counted, not limited).
const SPEC_KEY_RATE_PER_SECOND: u32 = 100_000;

#[derive(Debug)]
pub struct HoardServer {
    pub url: String,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl HoardServer {
    pub fn start(lease_ttl_ms: u64) -> anyhow::Result<HoardServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("a tokio runtime for hoard serve")?;
        let dir = tempfile::tempdir().context("a temporary directory")?;
        let path = dir.path().join("hoard.sqlite3");
        let key = KeyEntry {
            name: "roblox".into(),
            scope: Scope::GameServer,
            stores: Some(vec!["players".into(), "guilds".into()]),
            sha256: None,
            secret: Some(crate::GAME_SECRET.into()),
            rate_per_second: Some(SPEC_KEY_RATE_PER_SECOND),
            rate_burst: Some(SPEC_KEY_RATE_PER_SECOND),
        }
        .into_key()
        .map_err(|e| anyhow::anyhow!("the spec key: {e}"))?;
        let config = ServiceConfig { keys: vec![key], lease_ttl_ms, ..ServiceConfig::default() };
        let url = runtime.block_on(async {
            let store = open_store(path.to_str().context("a UTF-8 path")?, StoreOptions::default()).await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}", listener.local_addr()?);
            let state = AppState::new(Arc::clone(&store), config);
            tokio::spawn(async move {
                let _ = serve(listener, state, std::future::pending(), Duration::from_secs(1)).await;
            });
            anyhow::Ok(url)
        })?;
        Ok(HoardServer { url, runtime: Some(runtime), _dir: dir })
    }
}

impl Drop for HoardServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}
