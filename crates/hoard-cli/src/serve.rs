//! `hoard serve`: opens the store, reads the configuration (flags, then environment, then the
//! optional TOML file, then defaults), and runs the HTTP service until SIGINT/SIGTERM, then shuts
//! down gracefully within the deadline.
//!
//! Invariant: the service never starts without API keys: with none configured it makes one
//! admin key for this run only and prints it once on standard error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use hoard::store::pruner::{HistoryPruneOptions, HistoryPruner};
use hoard::store::{StoreOptions, open_store};
use hoard_server::config;

use crate::output::{print_stderr, print_stdout};

/// Options of `hoard serve`. Each flag also reads the environment variable named after it; a
/// flag or variable wins over the `--config` file, which wins over the default.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. TLS is not served: put a reverse proxy (nginx, Caddy, Envoy) in
    /// front for HTTPS. [default: 127.0.0.1:7420]
    #[arg(long, env = "HOARD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Optional TOML file: listen, db, postgres_schema, postgres_profile, postgres_pooler,
    /// postgres_listen_url, body_bytes_max, store_body_bytes_max,
    /// request_timeout_ms, concurrent_requests_max, header_read_timeout_ms, connections_max,
    /// lease_ttl_ms, shutdown_deadline_ms, api_keys_refresh_interval_ms and [[keys]] (name, scope,
    /// stores, sha256 or secret, rate_per_second, rate_burst). Unknown fields are refused.
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
    /// PostgreSQL only: `full` (stock PostgreSQL: LISTEN/NOTIFY, advisory locks, lz4) or
    /// `portable` (what CockroachDB and YugabyteDB offer: polled notifications, no advisory locks,
    /// SERIALIZABLE with retries). See docs/engines.md. [default: full]
    #[arg(long, env = "HOARD_POSTGRES_PROFILE")]
    postgres_profile: Option<String>,
    /// PostgreSQL only: `transaction` when --db goes through a transaction-mode pooler such as
    /// PgBouncer (no startup options, no prepared statements), else `none`. [default: none]
    #[arg(long, env = "HOARD_POSTGRES_POOLER")]
    postgres_pooler: Option<String>,
    /// PostgreSQL only: a direct connection URL for LISTEN, needed with `--postgres-pooler
    /// transaction` and the full profile (a pooler cannot hold a LISTEN).
    #[arg(long, env = "HOARD_POSTGRES_LISTEN_URL")]
    postgres_listen_url: Option<String>,
    /// Largest request body on the public routes, in bytes, after gzip decompression.
    /// [default: 5 MiB]
    #[arg(long, env = "HOARD_BODY_BYTES_MAX")]
    body_bytes_max: Option<usize>,
    /// Largest request body on the raw store routes (/v1/store/*), in bytes. [default: 16 MiB]
    #[arg(long, env = "HOARD_STORE_BODY_BYTES_MAX")]
    store_body_bytes_max: Option<usize>,
    /// Every request is answered or cut (408) within this many milliseconds; over 25000, the
    /// longest long-poll. [default: 30000]
    #[arg(long, env = "HOARD_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,
    /// Requests served at once; more wait. [default: 1024]
    #[arg(long, env = "HOARD_CONCURRENT_REQUESTS_MAX")]
    concurrent_requests_max: Option<usize>,
    /// A connection must send each request's complete header within this many ms or it is
    /// closed (slow-header clients); also the longest a keep-alive connection may sit idle
    /// between requests. At least 100. [default: 10000]
    #[arg(long, env = "HOARD_HEADER_READ_TIMEOUT_MS")]
    header_read_timeout_ms: Option<u64>,
    /// Client connections open at once (WebSockets included); one more is answered 503
    /// `too_many_connections` with Retry-After and closed. Keep the open-file limit (ulimit -n)
    /// above it. [default: 4096]
    #[arg(long, env = "HOARD_CONNECTIONS_MAX")]
    connections_max: Option<usize>,
    /// A holder (game server) that stops renewing loses its keys after this many ms. [default: 15000]
    #[arg(long, env = "HOARD_LEASE_TTL_MS")]
    lease_ttl_ms: Option<u64>,
    /// On SIGINT/SIGTERM, requests in flight get this many ms to finish. [default: 10000]
    #[arg(long, env = "HOARD_SHUTDOWN_DEADLINE_MS")]
    shutdown_deadline_ms: Option<u64>,
    /// How often runtime API keys (created and revoked over /v1/admin/keys) are re-read from the
    /// store, in ms: a key revoked through another process stops working here within this; on
    /// the revoking process at once. At least 10. [default: 5000]
    #[arg(long, env = "HOARD_API_KEYS_REFRESH_INTERVAL_MS")]
    api_keys_refresh_interval_ms: Option<u64>,
    /// Log format: `text` or `json`. Levels come from RUST_LOG (default `info`).
    #[arg(long, env = "HOARD_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Print the SHA-256 of a secret (for the `sha256` of a key in the file) and exit.
    #[arg(long)]
    hash_key: Option<String>,
    /// Resolve the configuration (flags, then environment, then --config file, then defaults),
    /// print it as JSON (keys by name and scope, never secrets or hashes) and exit without
    /// opening the database.
    #[arg(long)]
    check_config: bool,
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

/// What the flags and environment variables gave (clap has already let each flag win over its
/// variable); the database is an override only when `--db`/`HOARD_DB` left its default.
fn overrides(db: &str, args: &ServeArgs) -> config::Overrides {
    config::Overrides {
        listen: args.listen,
        db: (db != crate::DEFAULT_DATABASE).then(|| db.to_string()),
        postgres_schema: args.postgres_schema.clone(),
        postgres_profile: args.postgres_profile.clone(),
        postgres_pooler: args.postgres_pooler.clone(),
        postgres_listen_url: args.postgres_listen_url.clone(),
        api_keys: args.api_keys.clone(),
        body_bytes_max: args.body_bytes_max,
        store_body_bytes_max: args.store_body_bytes_max,
        request_timeout_ms: args.request_timeout_ms,
        concurrent_requests_max: args.concurrent_requests_max,
        header_read_timeout_ms: args.header_read_timeout_ms,
        connections_max: args.connections_max,
        lease_ttl_ms: args.lease_ttl_ms,
        shutdown_deadline_ms: args.shutdown_deadline_ms,
        api_keys_refresh_interval_ms: args.api_keys_refresh_interval_ms,
    }
}

/// The resolved settings as JSON for `--check-config`: key names, scopes, stores and rates, never
/// secrets or hashes.
fn settings_json(db: &str, settings: &config::Settings) -> serde_json::Value {
    let service = &settings.service;
    let keys: Vec<serde_json::Value> = service
        .keys
        .iter()
        .map(|key| {
            serde_json::json!({
                "name": key.name,
                "scope": key.scope,
                "stores": key.stores,
                "rate_per_second": key.rate_per_second,
                "rate_burst": key.rate_burst,
            })
        })
        .collect();
    serde_json::json!({
        "listen": settings.listen.to_string(),
        "db": db,
        "postgres_schema": settings.postgres_schema,
        "postgres_profile": settings.postgres_profile.as_str(),
        "postgres_pooler": settings.postgres_pooler.as_str(),
        // A URL may carry a password: only whether one is set.
        "postgres_listen_url_set": settings.postgres_listen_url.is_some(),
        "body_bytes_max": service.limits.body_bytes_max,
        "store_body_bytes_max": service.limits.store_body_bytes_max,
        "request_timeout_ms": service.limits.request_timeout_ms,
        "concurrent_requests_max": service.limits.concurrent_requests_max,
        "header_read_timeout_ms": service.limits.header_read_timeout_ms,
        "connections_max": service.limits.connections_max,
        "lease_ttl_ms": service.lease_ttl_ms,
        "shutdown_deadline_ms": settings.shutdown_deadline_ms,
        "api_keys_refresh_interval_ms": service.api_keys_refresh_interval_ms,
        "keys": keys,
    })
}

/// Runs `hoard serve` on the database at `db` (the global `--db`, whose default is the embedded
/// SQLite file; the file's `db` applies only when `--db`/`HOARD_DB` was left at its default).
pub async fn run(db: &str, args: ServeArgs) -> Result<()> {
    if let Some(secret) = &args.hash_key {
        return print_stdout(&format!("{}\n", hoard_server::auth::hash_secret_hex(secret)));
    }
    let file = match &args.config {
        Some(path) => config::load_file(path).map_err(anyhow::Error::msg)?,
        None => config::FileConfig::default(),
    };
    let mut settings = config::resolve(overrides(db, &args), file).map_err(anyhow::Error::msg)?;
    let db = settings.db.clone().unwrap_or_else(|| crate::DEFAULT_DATABASE.to_string());
    if args.check_config {
        return print_stdout(&format!("{}\n", serde_json::to_string_pretty(&settings_json(&db, &settings))?));
    }
    init_logs(&args.log_format);
    if settings.service.keys.is_empty() {
        let secret = format!("hoard-dev-{}", uuid::Uuid::new_v4().simple());
        print_stderr(&format!(
            "no API keys configured (--config, HOARD_API_KEYS): this run's admin key, shown once:\n\n    {secret}\n\nsend it as `Authorization: Bearer {secret}`"
        ));
        let entry = config::KeyEntry {
            name: "dev-admin".into(),
            scope: hoard_server::auth::Scope::Admin,
            stores: None,
            sha256: None,
            secret: Some(secret),
            rate_per_second: None,
            rate_burst: None,
        };
        settings.service.keys.push(entry.into_key().map_err(anyhow::Error::msg)?);
    }
    let options = StoreOptions {
        postgres_schema: settings.postgres_schema.clone(),
        postgres_profile: settings.postgres_profile,
        postgres_pooler: settings.postgres_pooler,
        postgres_listen_url: settings.postgres_listen_url.clone(),
        ..StoreOptions::default()
    };
    let store = open_store(&db, options).await.with_context(|| format!("opening {db}"))?;
    // Prunes history past retention while the server runs (stopped when dropped at the end).
    let _history_pruner = HistoryPruner::start(store.clone(), HistoryPruneOptions::default());
    // Erasure requests a crash left pending (recorded by Roblox's webhook, not yet done) are
    // finished in the background; a failure is logged and retried at the next start.
    let resume_store = store.clone();
    tokio::spawn(async move {
        match hoard_server::routes::ops::webhook::resume_pending(&*resume_store).await {
            Ok(0) => {}
            Ok(finished) => tracing::info!(finished, "finished pending erasure requests"),
            Err(error) => tracing::warn!(%error, "pending erasure requests were not finished; the next start retries"),
        }
    });
    let listen = settings.listen;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    let keys = settings.service.keys.len();
    tracing::info!(%address, backend = store.backend_name(), keys, "hoard serve listening");
    print_stderr(&format!("hoard serve listening on http://{address} ({} store)", store.backend_name()));
    let deadline = Duration::from_millis(settings.shutdown_deadline_ms);
    let state = hoard_server::AppState::new(store, settings.service);
    hoard_server::serve(listener, state, shutdown_signal(), deadline).await?;
    tracing::info!("hoard serve stopped");
    Ok(())
}
