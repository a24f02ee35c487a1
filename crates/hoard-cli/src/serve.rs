//! `hoard serve`: opens the store, reads the configuration (flags, then environment, then the
//! optional TOML file, then defaults), and runs the HTTP service until SIGINT/SIGTERM, then shuts
//! down gracefully within the deadline.
//!
//! Invariant: the service never starts without API keys: with none configured it makes one
//! admin key for this run only and prints it once on standard error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use hoard::store::{StoreOptions, open_store};
use hoard_server::config::{self, HttpLimits, ServiceConfig};

/// Options of `hoard serve`. Each flag also reads the environment variable named after it; a
/// flag or variable wins over the `--config` file, which wins over the default.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. TLS is not served: put a reverse proxy (nginx, Caddy, Envoy) in
    /// front for HTTPS. [default: 127.0.0.1:7420]
    #[arg(long, env = "HOARD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Optional TOML file: listen, db, postgres_schema, limits, lease_ttl_ms,
    /// shutdown_deadline_ms and [[keys]] (name, scope, stores, sha256 or secret, rate_per_second,
    /// rate_burst).
    #[arg(long, env = "HOARD_CONFIG")]
    config: Option<PathBuf>,
    /// API keys: `name:scope:stores:sha256:HEX` or `name:scope:stores:secret:TEXT`, separated by
    /// `;`; scope is game_server, read_only, engine or admin; stores is `*` or names joined by `|`.
    /// Added to the file's keys.
    #[arg(long, env = "HOARD_API_KEYS", hide_env_values = true)]
    api_keys: Option<String>,
    /// PostgreSQL only: the schema hoard's tables live in (processes share data within one).
    #[arg(long, env = "HOARD_POSTGRES_SCHEMA")]
    postgres_schema: Option<String>,
    /// Largest request body on the public routes, in bytes. [default: 5 MiB]
    #[arg(long, env = "HOARD_BODY_BYTES_MAX")]
    body_bytes_max: Option<usize>,
    /// Largest request body on the raw store routes (/v1/store/*), in bytes. [default: 16 MiB]
    #[arg(long, env = "HOARD_STORE_BODY_BYTES_MAX")]
    store_body_bytes_max: Option<usize>,
    /// Every request is answered or cut (408) within this many milliseconds. [default: 30000]
    #[arg(long, env = "HOARD_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,
    /// Requests served at once; more wait. [default: 1024]
    #[arg(long, env = "HOARD_CONCURRENT_REQUESTS_MAX")]
    concurrent_requests_max: Option<usize>,
    /// A holder (game server) that stops renewing loses its keys after this many ms. [default: 15000]
    #[arg(long, env = "HOARD_LEASE_TTL_MS")]
    lease_ttl_ms: Option<u64>,
    /// On SIGINT/SIGTERM, requests in flight get this many ms to finish. [default: 10000]
    #[arg(long, env = "HOARD_SHUTDOWN_DEADLINE_MS")]
    shutdown_deadline_ms: Option<u64>,
    /// How often runtime API keys (created and revoked over /v1/admin/keys) are re-read from the
    /// store, in ms: a key revoked through another process stops working here within this; on
    /// the revoking process at once. [default: 5000]
    #[arg(long, env = "HOARD_API_KEYS_REFRESH_INTERVAL_MS")]
    api_keys_refresh_interval_ms: Option<u64>,
    /// Log format: `text` or `json`. Levels come from RUST_LOG (default `info`).
    #[arg(long, env = "HOARD_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Print the SHA-256 of a secret (for the `sha256` of a key in the file) and exit.
    #[arg(long)]
    hash_key: Option<String>,
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second initialisation (tests) is harmless: the first subscriber stays.
    let _ = if format == "json" { builder.json().try_init() } else { builder.try_init() };
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(terminate) => terminate,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Runs `hoard serve` on the database at `db` (the global `--db`, whose default is the embedded
/// SQLite file; the file's `db` applies only when `--db`/`HOARD_DB` was left at its default).
pub async fn run(db: &str, args: ServeArgs) -> Result<()> {
    if let Some(secret) = &args.hash_key {
        #[allow(clippy::print_stdout)]
        {
            println!("{}", hoard_server::auth::hash_secret_hex(secret));
        }
        return Ok(());
    }
    init_logs(&args.log_format);
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            config::parse_file(&text).map_err(anyhow::Error::msg)?
        }
        None => config::FileConfig::default(),
    };
    let db = match &file.db {
        Some(file_db) if db == crate::DEFAULT_DATABASE => file_db.clone(),
        _ => db.to_string(),
    };
    let mut keys = Vec::new();
    for entry in file.keys.clone() {
        keys.push(entry.into_key().map_err(anyhow::Error::msg)?);
    }
    if let Some(text) = &args.api_keys {
        keys.extend(config::parse_env_keys(text).map_err(anyhow::Error::msg)?);
    }
    if keys.is_empty() {
        let secret = format!("hoard-dev-{}", uuid::Uuid::new_v4().simple());
        eprintln!(
            "no API keys configured (--config, HOARD_API_KEYS): this run's admin key, shown once:\n\n    {secret}\n\nsend it as `Authorization: Bearer {secret}`"
        );
        let entry = config::KeyEntry {
            name: "dev-admin".into(),
            scope: hoard_server::auth::Scope::Admin,
            stores: None,
            sha256: None,
            secret: Some(secret),
            rate_per_second: None,
            rate_burst: None,
        };
        keys.push(entry.into_key().map_err(anyhow::Error::msg)?);
    }
    config::check_keys(&keys).map_err(anyhow::Error::msg)?;
    let defaults = HttpLimits::default();
    let limits = HttpLimits {
        body_bytes_max: args.body_bytes_max.or(file.body_bytes_max).unwrap_or(defaults.body_bytes_max),
        store_body_bytes_max: args
            .store_body_bytes_max
            .or(file.store_body_bytes_max)
            .unwrap_or(defaults.store_body_bytes_max),
        request_timeout_ms: args.request_timeout_ms.or(file.request_timeout_ms).unwrap_or(defaults.request_timeout_ms),
        concurrent_requests_max: args
            .concurrent_requests_max
            .or(file.concurrent_requests_max)
            .unwrap_or(defaults.concurrent_requests_max),
    };
    if limits.request_timeout_ms <= config::START_WAIT_MS_MAX {
        bail!("--request-timeout-ms must be over {} (the longest session-start wait)", config::START_WAIT_MS_MAX);
    }
    let lease_ttl_ms = args.lease_ttl_ms.or(file.lease_ttl_ms).unwrap_or(config::LEASE_TTL_MS_DEFAULT);
    let deadline_ms =
        args.shutdown_deadline_ms.or(file.shutdown_deadline_ms).unwrap_or(config::SHUTDOWN_DEADLINE_MS_DEFAULT);
    let listen = match args.listen.or(file.listen) {
        Some(listen) => listen,
        None => config::DEFAULT_LISTEN.parse().context("default listen address")?,
    };
    let options =
        StoreOptions { postgres_schema: args.postgres_schema.or(file.postgres_schema), ..StoreOptions::default() };
    let store = open_store(&db, options).await.with_context(|| format!("opening {db}"))?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, backend = store.backend_name(), keys = keys.len(), "hoard serve listening");
    eprintln!("hoard serve listening on http://{address} ({} store)", store.backend_name());
    let api_keys_refresh_interval_ms = args
        .api_keys_refresh_interval_ms
        .or(file.api_keys_refresh_interval_ms)
        .unwrap_or(config::API_KEYS_REFRESH_INTERVAL_MS_DEFAULT);
    let state =
        hoard_server::AppState::new(store, ServiceConfig { limits, lease_ttl_ms, keys, api_keys_refresh_interval_ms });
    hoard_server::serve(listener, state, shutdown_signal(), Duration::from_millis(deadline_ms)).await?;
    tracing::info!("hoard serve stopped");
    Ok(())
}
