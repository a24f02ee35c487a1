//! API keys: hashed secrets, scopes, per-key rate limits, and the middleware that checks them.
//!
//! Invariants:
//! - Only SHA-256 hashes of secrets are kept; a presented secret is hashed and compared against
//!   every key's hash in constant time (no early exit), so timing reveals neither which key nor
//!   how much of it matched.
//! - The key ring is the configured keys (fixed for the process's life) plus the runtime keys
//!   (`runtime_keys`: created and revoked over HTTP, kept in the store), swapped in whole, so a
//!   request sees one consistent set.
//! - Every route except `/healthz` and `/readyz` passes through `require_key`: no key or a wrong
//!   key is 401, a scope that does not cover the route is 403, over the rate limit is 429. (The
//!   two probes are keyless on purpose: load balancers and orchestrators probe without secrets,
//!   and the answers reveal only that the process is up and ready.)
//! - A game-server key can act only on its named stores, never on hoard's internal stores
//!   (`hoard.*`: trades, receipts, idempotency records), and only through holders it registered.
//! - The runtime keys' stores (`hoard.api_keys*`) are read only by admins and changed only by
//!   the key-management routes, never by a document, session or raw store route: an `engine`
//!   key writes any other key without a fence, but cannot mint itself an admin key.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hoard::store::HolderId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::metrics;
use crate::state::AppState;

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Sessions, trades, receipts, messages and lock-free updates on its named stores; reads of
    /// them. The key of a game server in any language.
    GameServer,
    /// Reads only: documents, keys, versions (of its named stores; `*` includes hoard's records).
    ReadOnly,
    /// The raw store protocol (`/v1/store/*`) used by `RemoteStore`, for Rust game servers
    /// running the full engine against this service. It can write any key without a fence:
    /// give it only to trusted Rust servers.
    Engine,
    /// Live operations: reads of every store (hoard's records too), lookups, history, and
    /// repair (rollback, restore of paths, inbox grants, freeing sessions, index declarations),
    /// every action recorded in the audit log. Not keys, not erasure, not sessions.
    Operator,
    /// Everything, including rollback, force-release, erasure and key management.
    Admin,
}

/// One configured key. The secret itself is never kept.
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub name: String,
    pub hash: [u8; 32],
    pub scope: Scope,
    /// `None`: every store.
    pub stores: Option<BTreeSet<String>>,
    pub rate_per_second: u32,
    pub rate_burst: u32,
    /// Set for runtime keys: a tag of this key's secret hash that its holder ids carry after the
    /// name, so a key created later under a revoked key's name can never use (renew, start,
    /// save through) the revoked key's holders. `None` for configured keys (their secrets may be
    /// weak, so nothing derived from them is shown; the operator who re-uses a configured name
    /// owns both keys).
    pub holder_tag: Option<String>,
}

/// Hex digits of the holder tag of a runtime key (48 bits: the prefix `{name}.{tag}:` stays
/// within the 48 characters of a holder label that `HolderId::generate` keeps).
pub const HOLDER_TAG_HEX_DIGITS: usize = 12;

/// The holder tag of a runtime key, from the SHA-256 of its secret. Runtime secrets are 256
/// random bits made by the server, so a tag of their hash's hash reveals nothing usable.
pub fn holder_tag(secret_hash: &[u8; 32]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"hoard holder tag\0");
    hasher.update(secret_hash);
    hasher.finalize().iter().take(HOLDER_TAG_HEX_DIGITS / 2).map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a secret: how keys are stored and compared.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest);
    out
}

/// Lower-case hex of a secret's SHA-256, for configuration files (`hoard serve --hash-key`).
pub fn hash_secret_hex(secret: &str) -> String {
    hash_secret(secret).iter().map(|b| format!("{b:02x}")).collect()
}

/// The prefix of hoard's internal named stores (trades, receipts, idempotency, handoff).
pub const INTERNAL_STORE_PREFIX: &str = "hoard.";
/// The prefix of the runtime API keys' stores (`hoard.api_keys`, `hoard.api_keys_count`).
pub const API_KEYS_STORE_PREFIX: &str = "hoard.api_keys";

/// True for the stores that hold runtime API keys: admins read them, only key management writes.
pub fn is_api_keys_store(store: &str) -> bool {
    store.starts_with(API_KEYS_STORE_PREFIX)
}

/// The caller, once its key is checked. Handlers ask it what the key may do.
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: String,
    pub scope: Scope,
    pub stores: Option<BTreeSet<String>>,
    /// `{name}:` for a configured key, `{name}.{holder tag}:` for a runtime key: starts every
    /// holder id this key registers and every idempotency record it writes.
    pub holder_prefix: String,
}

impl Principal {
    fn names_store(&self, store: &str) -> bool {
        match &self.stores {
            None => true,
            Some(stores) => stores.contains(store),
        }
    }

    /// Reads of documents, keys and versions.
    pub fn may_read(&self, store: &str) -> Result<(), ApiError> {
        if is_api_keys_store(store) && self.scope != Scope::Admin {
            return Err(ApiError::forbidden(format!("only admin keys may read store {store:?}")));
        }
        let internal = store.starts_with(INTERNAL_STORE_PREFIX);
        let allowed = match self.scope {
            Scope::Admin | Scope::Engine | Scope::Operator => true,
            Scope::ReadOnly => self.names_store(store),
            Scope::GameServer => !internal && self.names_store(store),
        };
        if allowed { Ok(()) } else { Err(ApiError::forbidden(format!("this key may not read store {store:?}"))) }
    }

    /// Sessions, trades, receipts, messages and updates: anything that changes a store.
    pub fn may_play(&self, store: &str) -> Result<(), ApiError> {
        if is_api_keys_store(store) {
            return Err(ApiError::forbidden(format!(
                "store {store:?} is changed only through /v1/admin/keys (admin keys)"
            )));
        }
        let internal = store.starts_with(INTERNAL_STORE_PREFIX);
        let allowed = match self.scope {
            Scope::Admin | Scope::Engine => true,
            Scope::ReadOnly | Scope::Operator => false,
            Scope::GameServer => !internal && self.names_store(store),
        };
        if allowed {
            Ok(())
        } else if self.scope == Scope::ReadOnly {
            Err(ApiError::forbidden("this key is read-only"))
        } else {
            Err(ApiError::forbidden(format!("this key may not change store {store:?}")))
        }
    }

    /// Registering and renewing holders (game servers).
    pub fn may_hold(&self) -> Result<(), ApiError> {
        match self.scope {
            Scope::Admin | Scope::Engine | Scope::GameServer => Ok(()),
            Scope::ReadOnly => Err(ApiError::forbidden("this key is read-only")),
            Scope::Operator => Err(ApiError::forbidden("operator keys repair data; they hold no sessions")),
        }
    }

    /// Live-operations repairs (operators and admins).
    pub fn require_repair(&self) -> Result<(), ApiError> {
        match self.scope {
            Scope::Admin | Scope::Operator => Ok(()),
            Scope::ReadOnly => Err(ApiError::forbidden("this key is read-only")),
            _ => Err(ApiError::forbidden("this route needs an operator or admin key")),
        }
    }

    /// Live-operations reads (lookups, history, logs): every scope but game servers' and
    /// engines', which have the document routes.
    pub fn require_ops_read(&self) -> Result<(), ApiError> {
        match self.scope {
            Scope::Admin | Scope::Operator | Scope::ReadOnly => Ok(()),
            _ => Err(ApiError::forbidden("this route needs an operator, admin or read-only key")),
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.scope == Scope::Admin { Ok(()) } else { Err(ApiError::forbidden("this route needs an admin key")) }
    }

    /// Rollback, force-release and the other repairs of a key: admins and operators, on any
    /// store but the API keys' (a rollback there would bring a revoked key back without
    /// counting it).
    pub fn may_administer(&self, store: &str) -> Result<(), ApiError> {
        self.require_repair()?;
        if is_api_keys_store(store) {
            return Err(ApiError::forbidden(format!(
                "store {store:?} is changed only through /v1/admin/keys (admin keys)"
            )));
        }
        Ok(())
    }

    /// The raw store protocol of `RemoteStore`.
    pub fn require_engine(&self) -> Result<(), ApiError> {
        match self.scope {
            Scope::Admin | Scope::Engine => Ok(()),
            _ => Err(ApiError::forbidden("the raw store routes need an engine or admin key")),
        }
    }

    /// The raw store protocol on these stores: reads of the API keys' stores need an admin key,
    /// and nobody writes them through it (the key count and the documents change together, only
    /// through `/v1/admin/keys`).
    pub fn may_use_raw<'a>(&self, stores: impl IntoIterator<Item = &'a str>, writes: bool) -> Result<(), ApiError> {
        self.require_engine()?;
        for store in stores {
            if !is_api_keys_store(store) {
                continue;
            }
            if writes {
                return Err(ApiError::forbidden(format!(
                    "store {store:?} is changed only through /v1/admin/keys (admin keys)"
                )));
            }
            if self.scope != Scope::Admin {
                return Err(ApiError::forbidden(format!("only admin keys may read store {store:?}")));
            }
        }
        Ok(())
    }

    /// The principal of a key.
    pub fn of(key: &ApiKey) -> Principal {
        let holder_prefix = match &key.holder_tag {
            Some(tag) => format!("{}.{tag}:", key.name),
            None => format!("{}:", key.name),
        };
        Principal { name: key.name.clone(), scope: key.scope, stores: key.stores.clone(), holder_prefix }
    }

    /// The prefix of every holder id this key registers.
    pub fn holder_prefix(&self) -> &str {
        &self.holder_prefix
    }

    /// A game server may act only through holders it registered (its prefix starts them).
    pub fn owns_holder(&self, holder: &HolderId) -> Result<(), ApiError> {
        let owned =
            matches!(self.scope, Scope::Admin | Scope::Engine) || holder.as_str().starts_with(self.holder_prefix());
        if owned { Ok(()) } else { Err(ApiError::forbidden("this holder was not registered with this key")) }
    }
}

/// Token buckets, one per key name.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// Drops the buckets of keys no longer in the ring (revoked), so churn does not grow the map.
    pub fn retain_names(&self, names: &BTreeSet<&str>) {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        buckets.retain(|name, _| names.contains(name.as_str()));
    }

    /// Takes one token from the key's bucket, or says how many seconds until one is there.
    pub fn take(&self, key: &ApiKey) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let burst = f64::from(key.rate_burst);
        let rate = f64::from(key.rate_per_second);
        let bucket = buckets.entry(key.name.clone()).or_insert(Bucket { tokens: burst, at: now });
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_s = ((1.0 - bucket.tokens) / rate).ceil();
            // Bounded: rate ≥ 1, so the wait is at most one second per missing token.
            Err(if wait_s.is_finite() && wait_s >= 1.0 { wait_s as u64 } else { 1 })
        }
    }
}

/// Where a key comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyOrigin {
    /// The configuration file, `HOARD_API_KEYS` or `--api-keys`: fixed for the process's life.
    Config,
    /// Created over HTTP (`POST /v1/admin/keys`), kept hashed in the store, shared by every
    /// process on it.
    Runtime,
}

/// A runtime key with what is known of its creation.
#[derive(Clone, Debug)]
pub struct RuntimeKey {
    pub key: Arc<ApiKey>,
    /// By the store's clock.
    pub created_at_ms: i64,
    /// The name of the admin key that created it.
    pub created_by: String,
}

/// The keys this process accepts: the configured ones and its view of the runtime ones.
#[derive(Debug)]
pub struct KeyRing {
    configured: Vec<Arc<ApiKey>>,
    runtime: RwLock<Arc<Vec<RuntimeKey>>>,
    /// Held across a refresh (read the store, swap the view) and across a change (commit, then
    /// update the view), so a refresh that read the store before a revocation can never put the
    /// revoked key back after it.
    pub(crate) changing: tokio::sync::Mutex<()>,
}

impl KeyRing {
    pub fn new(keys: Vec<ApiKey>) -> KeyRing {
        KeyRing {
            configured: keys.into_iter().map(Arc::new).collect(),
            runtime: RwLock::new(Arc::new(Vec::new())),
            changing: tokio::sync::Mutex::new(()),
        }
    }

    /// The configured keys.
    pub fn configured(&self) -> &[Arc<ApiKey>] {
        &self.configured
    }

    /// This process's current view of the runtime keys.
    pub fn runtime(&self) -> Arc<Vec<RuntimeKey>> {
        self.runtime.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Replaces the view of the runtime keys (callers hold `changing`).
    pub(crate) fn set_runtime(&self, keys: Vec<RuntimeKey>) {
        *self.runtime.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
    }

    pub fn is_configured(&self, name: &str) -> bool {
        self.configured.iter().any(|key| key.name == name)
    }

    /// The names of every key in the ring.
    pub fn names(&self) -> BTreeSet<String> {
        let runtime = self.runtime();
        self.configured.iter().map(|key| key.name.clone()).chain(runtime.iter().map(|r| r.key.name.clone())).collect()
    }

    /// Finds the key whose hash matches the secret, comparing against every key in constant time.
    pub fn find(&self, secret: &str) -> Option<Arc<ApiKey>> {
        let presented = hash_secret(secret);
        let runtime = self.runtime();
        let mut found = None;
        for key in self.configured.iter().chain(runtime.iter().map(|r| &r.key)) {
            if bool::from(key.hash.ct_eq(&presented)) {
                found = Some(key.clone());
            }
        }
        found
    }
}

/// Bytes of an `Authorization` header we look at; longer ones are refused unread.
pub const AUTHORIZATION_BYTES_MAX: usize = 1_024;

fn bearer(request: &Request) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    if value.len() > AUTHORIZATION_BYTES_MAX {
        return None;
    }
    let (scheme, token) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() { Some(token.trim()) } else { None }
}

/// Checks the API key and the key's rate limit, then hands the `Principal` to the route.
pub async fn require_key(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let Some(key) = bearer(&request).and_then(|secret| state.keys.find(secret)) else {
        metrics::unauthorized();
        return ApiError::unauthorized().into_response();
    };
    if let Err(retry_after_s) = state.limiter.take(&key) {
        metrics::rate_limited();
        return ApiError::rate_limited(retry_after_s).into_response();
    }
    let principal = Principal::of(&key);
    request.extensions_mut().insert(principal);
    next.run(request).await
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(ApiError::unauthorized)
    }
}
