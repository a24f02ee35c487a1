//! The server's configuration: listen address, limits, lease timing and API keys, from flags,
//! environment and an optional TOML file (flags win over environment, which wins over the file;
//! `resolve` merges them, so `hoard serve` and the tests take one path).
//!
//! Invariant: secrets never stay in memory as given: a key configured in plain text is hashed
//! (SHA-256) as it is read, and only the hash is kept. Every limit has a name and a default here.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::auth::{ApiKey, Scope, hash_secret};

/// Default address: loopback only, so a fresh server is not exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";
/// Bytes of one request body on the public routes (a 4 MiB value plus its envelope).
pub const BODY_BYTES_MAX_DEFAULT: usize = 5 * 1024 * 1024;
/// Bytes of one request body on the raw store routes (`/v1/store/*`, multi-key commits).
pub const STORE_BODY_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
/// Every request is answered (or cut with 408) within this.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// The longest a session start may wait for a holder to hand over.
pub const START_WAIT_MS_MAX: u64 = 20_000;
/// A holder's process lease: a game server that stops renewing loses its keys after this.
pub const LEASE_TTL_MS_DEFAULT: u64 = hoard::engine::protocol::LEASE_TTL_MS_DEFAULT;
/// Graceful shutdown: in-flight requests get this long to finish.
pub const SHUTDOWN_DEADLINE_MS_DEFAULT: u64 = 10_000;
/// Per-key rate limit (requests per second, sustained) and burst.
pub const RATE_PER_SECOND_DEFAULT: u32 = 1_000;
pub const RATE_BURST_DEFAULT: u32 = 2_000;
/// Requests served at once; past it new requests wait (tower concurrency limit).
pub const CONCURRENT_REQUESTS_MAX_DEFAULT: usize = 1_024;
/// A connection must deliver each request's complete header within this, or it is closed (a
/// slow-header attack holds a connection, not the server); it is also how long a keep-alive
/// connection may sit idle between two requests.
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// The shortest header-read timeout accepted.
pub const HEADER_READ_TIMEOUT_MS_MIN: u64 = 100;
/// Open client connections (WebSockets included); a connection past it is answered 503
/// `too_many_connections` with `Retry-After` and closed. The process's open-file limit
/// (`ulimit -n`) must be above it, plus the store's files and connections.
pub const CONNECTIONS_MAX_DEFAULT: usize = 4_096;
/// How often each process re-reads the runtime API keys from the store: a key revoked through
/// another process stops working here within this (and at once in the revoking process).
pub const API_KEYS_REFRESH_INTERVAL_MS_DEFAULT: u64 = 5_000;
/// The shortest refresh interval accepted (each refresh reads the store).
pub const API_KEYS_REFRESH_INTERVAL_MS_MIN: u64 = 10;

/// The HTTP limits every route runs under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    pub body_bytes_max: usize,
    pub store_body_bytes_max: usize,
    pub request_timeout_ms: u64,
    pub concurrent_requests_max: usize,
    pub header_read_timeout_ms: u64,
    pub connections_max: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            store_body_bytes_max: STORE_BODY_BYTES_MAX_DEFAULT,
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            concurrent_requests_max: CONCURRENT_REQUESTS_MAX_DEFAULT,
            header_read_timeout_ms: HEADER_READ_TIMEOUT_MS_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
        }
    }
}

/// Everything the service needs besides its store.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub limits: HttpLimits,
    pub lease_ttl_ms: u64,
    /// The configured keys (runtime keys live in the store).
    pub keys: Vec<ApiKey>,
    pub api_keys_refresh_interval_ms: u64,
    /// The secret of Roblox's right-to-erasure webhook (`roblox_webhook_secret` in the file);
    /// `None`: the webhook route answers 404 (not configured).
    pub roblox_webhook_secret: Option<String>,
    /// Prepended to a Roblox UserId to make the hoard user id it erases (`roblox_user_id_prefix`;
    /// empty by default: the game stored the bare UserId).
    pub roblox_user_id_prefix: String,
}

impl Default for ServiceConfig {
    fn default() -> ServiceConfig {
        ServiceConfig {
            limits: HttpLimits::default(),
            lease_ttl_ms: LEASE_TTL_MS_DEFAULT,
            keys: Vec::new(),
            api_keys_refresh_interval_ms: API_KEYS_REFRESH_INTERVAL_MS_DEFAULT,
            roblox_webhook_secret: None,
            roblox_user_id_prefix: String::new(),
        }
    }
}

/// The optional TOML file (`hoard serve --config FILE`). Every field is optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub db: Option<String>,
    pub postgres_schema: Option<String>,
    /// `full` or `portable` (hoard::store::PostgresProfile).
    pub postgres_profile: Option<String>,
    /// `none` or `transaction` (hoard::store::Pooler).
    pub postgres_pooler: Option<String>,
    pub postgres_listen_url: Option<String>,
    pub body_bytes_max: Option<usize>,
    pub store_body_bytes_max: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub concurrent_requests_max: Option<usize>,
    pub header_read_timeout_ms: Option<u64>,
    pub connections_max: Option<usize>,
    pub lease_ttl_ms: Option<u64>,
    pub shutdown_deadline_ms: Option<u64>,
    pub api_keys_refresh_interval_ms: Option<u64>,
    pub roblox_webhook_secret: Option<String>,
    pub roblox_user_id_prefix: Option<String>,
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
}

/// One API key as configured: give `sha256` (hex of the secret's SHA-256, preferred) or `secret`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub name: String,
    pub scope: Scope,
    /// Named stores the key may use (`"*"`: every store). Default: every store.
    #[serde(default)]
    pub stores: Option<Vec<String>>,
    pub sha256: Option<String>,
    pub secret: Option<String>,
    pub rate_per_second: Option<u32>,
    pub rate_burst: Option<u32>,
}

/// Bytes of a key name; names appear in holder ids and idempotency records.
pub const KEY_NAME_BYTES_MAX: usize = 32;

/// Checks a key name: 1 to `KEY_NAME_BYTES_MAX` of `[A-Za-z0-9_-]`.
pub fn check_key_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= KEY_NAME_BYTES_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok { Ok(()) } else { Err(format!("key name {name:?} must be 1 to {KEY_NAME_BYTES_MAX} of [A-Za-z0-9_-]")) }
}

fn parse_hex_32(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    if text.len() != 64 {
        return Err("sha256 must be 64 hex digits".into());
    }
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        let pair = text.get(index * 2..index * 2 + 2).ok_or("sha256 must be 64 hex digits")?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| "sha256 must be 64 hex digits".to_string())?;
    }
    Ok(out)
}

impl KeyEntry {
    /// Checks the entry and hashes a plain secret; the secret is not kept.
    pub fn into_key(self) -> Result<ApiKey, String> {
        check_key_name(&self.name)?;
        let hash = match (&self.sha256, &self.secret) {
            (Some(hex), None) => parse_hex_32(hex).map_err(|e| format!("key {}: {e}", self.name))?,
            (None, Some(secret)) if !secret.is_empty() => hash_secret(secret),
            _ => return Err(format!("key {}: give exactly one of `sha256` or `secret`", self.name)),
        };
        let stores = match self.stores {
            None => None,
            Some(list) if list.iter().any(|s| s == "*") => None,
            Some(list) => Some(list.into_iter().collect::<BTreeSet<_>>()),
        };
        Ok(ApiKey {
            name: self.name,
            hash,
            scope: self.scope,
            stores,
            rate_per_second: self.rate_per_second.unwrap_or(RATE_PER_SECOND_DEFAULT).max(1),
            rate_burst: self.rate_burst.unwrap_or(RATE_BURST_DEFAULT).max(1),
            holder_tag: None,
        })
    }
}

/// Parses the TOML file's text. An unknown field or a wrong type is refused with the field, its
/// line and column.
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| format!("configuration file: {e}"))
}

/// Reads and parses the file of `hoard serve --config`.
pub fn load_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse_file(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What `hoard serve` was given by flag or environment variable (clap reads both into one
/// field, the flag winning); each `None` falls back to the file, then to the default.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    /// `--db`/`HOARD_DB` when not left at the default.
    pub db: Option<String>,
    pub postgres_schema: Option<String>,
    pub postgres_profile: Option<String>,
    pub postgres_pooler: Option<String>,
    pub postgres_listen_url: Option<String>,
    /// `--api-keys`/`HOARD_API_KEYS`: added to the file's keys.
    pub api_keys: Option<String>,
    pub body_bytes_max: Option<usize>,
    pub store_body_bytes_max: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub concurrent_requests_max: Option<usize>,
    pub header_read_timeout_ms: Option<u64>,
    pub connections_max: Option<usize>,
    pub lease_ttl_ms: Option<u64>,
    pub shutdown_deadline_ms: Option<u64>,
    pub api_keys_refresh_interval_ms: Option<u64>,
}

/// Everything `hoard serve` runs with, once flags, environment, file and defaults are merged.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// `None`: the command's default database.
    pub db: Option<String>,
    pub postgres_schema: Option<String>,
    pub postgres_profile: hoard::store::PostgresProfile,
    pub postgres_pooler: hoard::store::Pooler,
    pub postgres_listen_url: Option<String>,
    pub service: ServiceConfig,
    pub shutdown_deadline_ms: u64,
}

/// Merges flags and environment (`overrides`) over the file over the defaults, and checks the
/// result: the keys (file keys, then `--api-keys`), and the timings' bounds.
pub fn resolve(overrides: Overrides, file: FileConfig) -> Result<Settings, String> {
    let mut keys = Vec::new();
    for entry in file.keys {
        keys.push(entry.into_key()?);
    }
    if let Some(text) = &overrides.api_keys {
        keys.extend(parse_env_keys(text)?);
    }
    check_keys(&keys)?;
    let defaults = HttpLimits::default();
    let limits = HttpLimits {
        body_bytes_max: overrides.body_bytes_max.or(file.body_bytes_max).unwrap_or(defaults.body_bytes_max),
        store_body_bytes_max: overrides
            .store_body_bytes_max
            .or(file.store_body_bytes_max)
            .unwrap_or(defaults.store_body_bytes_max),
        request_timeout_ms: overrides
            .request_timeout_ms
            .or(file.request_timeout_ms)
            .unwrap_or(defaults.request_timeout_ms),
        concurrent_requests_max: overrides
            .concurrent_requests_max
            .or(file.concurrent_requests_max)
            .unwrap_or(defaults.concurrent_requests_max),
        header_read_timeout_ms: overrides
            .header_read_timeout_ms
            .or(file.header_read_timeout_ms)
            .unwrap_or(defaults.header_read_timeout_ms),
        connections_max: overrides.connections_max.or(file.connections_max).unwrap_or(defaults.connections_max),
    };
    let longest_wait_ms = START_WAIT_MS_MAX.max(crate::routes::events::LONG_POLL_WAIT_MS_MAX);
    if limits.request_timeout_ms <= longest_wait_ms {
        return Err(format!(
            "request_timeout_ms must be over {longest_wait_ms} (the longest session-start wait or long-poll)"
        ));
    }
    if limits.header_read_timeout_ms < HEADER_READ_TIMEOUT_MS_MIN {
        return Err(format!("header_read_timeout_ms must be at least {HEADER_READ_TIMEOUT_MS_MIN}"));
    }
    if limits.connections_max == 0 {
        return Err("connections_max must be at least 1".to_string());
    }
    let api_keys_refresh_interval_ms = overrides
        .api_keys_refresh_interval_ms
        .or(file.api_keys_refresh_interval_ms)
        .unwrap_or(API_KEYS_REFRESH_INTERVAL_MS_DEFAULT);
    if api_keys_refresh_interval_ms < API_KEYS_REFRESH_INTERVAL_MS_MIN {
        return Err(format!("api_keys_refresh_interval_ms must be at least {API_KEYS_REFRESH_INTERVAL_MS_MIN}"));
    }
    let listen = match overrides.listen.or(file.listen) {
        Some(listen) => listen,
        None => DEFAULT_LISTEN.parse().map_err(|e| format!("default listen address: {e}"))?,
    };
    let postgres_profile = match overrides.postgres_profile.or(file.postgres_profile) {
        Some(text) => text.parse().map_err(|error| format!("postgres_profile: {error}"))?,
        None => hoard::store::PostgresProfile::default(),
    };
    let postgres_pooler = match overrides.postgres_pooler.or(file.postgres_pooler) {
        Some(text) => text.parse().map_err(|error| format!("postgres_pooler: {error}"))?,
        None => hoard::store::Pooler::default(),
    };
    Ok(Settings {
        listen,
        db: overrides.db.or(file.db),
        postgres_schema: overrides.postgres_schema.or(file.postgres_schema),
        postgres_profile,
        postgres_pooler,
        postgres_listen_url: overrides.postgres_listen_url.or(file.postgres_listen_url),
        service: ServiceConfig {
            limits,
            lease_ttl_ms: overrides.lease_ttl_ms.or(file.lease_ttl_ms).unwrap_or(LEASE_TTL_MS_DEFAULT),
            keys,
            api_keys_refresh_interval_ms,
            roblox_webhook_secret: file.roblox_webhook_secret,
            roblox_user_id_prefix: file.roblox_user_id_prefix.unwrap_or_default(),
        },
        shutdown_deadline_ms: overrides
            .shutdown_deadline_ms
            .or(file.shutdown_deadline_ms)
            .unwrap_or(SHUTDOWN_DEADLINE_MS_DEFAULT),
    })
}

/// Parses `HOARD_API_KEYS`: entries separated by `;`, each `name:scope:stores:sha256:HEX` or
/// `name:scope:stores:secret:TEXT`, where `stores` is `*` or store names joined by `|`.
/// Example: `ops:admin:*:sha256:9f86…;eu1:game_server:players|guilds:secret:s3cret`.
pub fn parse_env_keys(text: &str) -> Result<Vec<ApiKey>, String> {
    let mut keys = Vec::new();
    for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let mut parts = entry.splitn(5, ':');
        let (Some(name), Some(scope), Some(stores), Some(kind), Some(value)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(
                "HOARD_API_KEYS entries are name:scope:stores:sha256:HEX or name:scope:stores:secret:TEXT".into()
            );
        };
        let scope: Scope = serde_json::from_value(serde_json::Value::String(scope.to_string()))
            .map_err(|_| format!("key {name}: scope must be game_server, read_only, engine or admin"))?;
        let stores = Some(stores.split('|').map(str::to_string).collect());
        let (sha256, secret) = match kind {
            "sha256" => (Some(value.to_string()), None),
            "secret" => (None, Some(value.to_string())),
            _ => return Err(format!("key {name}: give sha256:HEX or secret:TEXT")),
        };
        let entry =
            KeyEntry { name: name.to_string(), scope, stores, sha256, secret, rate_per_second: None, rate_burst: None };
        keys.push(entry.into_key()?);
    }
    Ok(keys)
}

/// Refuses two keys with one name or one secret (a secret must identify one key).
pub fn check_keys(keys: &[ApiKey]) -> Result<(), String> {
    let mut names = BTreeSet::new();
    let mut hashes = BTreeSet::new();
    for key in keys {
        if !names.insert(key.name.as_str()) {
            return Err(format!("two API keys are named {}", key.name));
        }
        if !hashes.insert(key.hash) {
            return Err(format!("API key {} has the same secret as another key", key.name));
        }
    }
    Ok(())
}
