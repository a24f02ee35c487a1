//! Runtime API keys: created and revoked by admins over HTTP (`/v1/admin/keys`), kept in the
//! store so that every `hoard serve` process on it shares them, and refreshed into each
//! process's key ring on an interval.
//!
//! Invariants:
//! - The store holds only the SHA-256 of a runtime key's secret (one document per key in
//!   `hoard.api_keys`, keyed by the key's name); the secret exists only in the answer to its
//!   creation, which is the one time it is shown.
//! - The number of runtime keys is kept in `hoard.api_keys_count` and changes in the same commit
//!   as the key's document, so `RUNTIME_API_KEYS_MAX` holds exactly, across processes.
//! - A revoked key stops authenticating at once in the process that revoked it (its view is
//!   changed before the answer, under the ring's `changing` lock, which every refresh also
//!   holds), and in every other process within one refresh interval plus one store read.
//! - Names are unique among configured and runtime keys: creation refuses a name this process
//!   has configured, and writes the document on `Condition::Absent`. A runtime key whose name
//!   another process has configured is ignored by that process (its configuration wins).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hoard::store::{
    Commit, CommitOutcome, Condition, DocId, Document, Key, Limits, ListQuery, Store, StoreError, StoreName, Write,
    resolve_unknown_commit,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::{ApiKey, KeyRing, RuntimeKey, Scope, hash_secret, holder_tag};
use crate::config::{self, RATE_BURST_DEFAULT, RATE_PER_SECOND_DEFAULT};
use crate::error::ApiError;
use crate::state::AppState;

/// One document per runtime key, keyed by the key's name.
pub const API_KEYS_STORE: &str = "hoard.api_keys";
/// The count of runtime keys, one integer document, changed in the same commit as a key.
pub const API_KEYS_COUNT_STORE: &str = "hoard.api_keys_count";
pub const API_KEYS_COUNT_KEY: &str = "runtime";
/// Runtime keys at most (every request compares against each key's hash, and each refresh
/// reads them all).
pub const RUNTIME_API_KEYS_MAX: u64 = 1_000;
/// Random bytes in a generated secret (256 bits), from the operating system's CSPRNG.
pub const SECRET_RANDOM_BYTES: usize = 32;
/// Generated secrets start with this, so a leaked one is recognisable in logs and scanners.
pub const SECRET_PREFIX: &str = "hoard_key_";
/// Store names one key may list.
pub const STORES_PER_KEY_MAX: usize = 64;
/// Keys read per page when refreshing.
const LOAD_PAGE_SIZE: usize = 250;
/// A create or revoke re-reads and tries again this many times when another process changed
/// the count meanwhile, then answers 409.
const CHANGE_ATTEMPTS_MAX: usize = 5;

/// A runtime key as stored: never its secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredKey {
    name: String,
    scope: Scope,
    /// `None`: every store.
    stores: Option<Vec<String>>,
    rate_per_second: u32,
    rate_burst: u32,
    /// Lower-case hex of the SHA-256 of the secret.
    sha256: String,
    created_at_ms: i64,
    created_by: String,
}

/// A checked request for a new key.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub name: String,
    pub scope: Scope,
    pub stores: Option<BTreeSet<String>>,
    pub rate_per_second: u32,
    pub rate_burst: u32,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex_32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Checks a create request; every refusal says what to send instead.
pub fn check_new_key(
    name: &str,
    scope: &str,
    stores: Option<Vec<String>>,
    rate_per_second: Option<u32>,
    rate_burst: Option<u32>,
    limits: &Limits,
) -> Result<NewKey, ApiError> {
    config::check_key_name(name).map_err(ApiError::bad_request)?;
    let scope: Scope = serde_json::from_value(Value::String(scope.to_string())).map_err(|_| {
        ApiError::bad_request(format!("scope {scope:?} is not one of game_server, read_only, engine or admin"))
    })?;
    let stores = match stores {
        None => None,
        Some(list) if list.len() == 1 && list.first().is_some_and(|s| s == "*") => None,
        Some(list) => {
            if list.is_empty() || list.len() > STORES_PER_KEY_MAX {
                return Err(ApiError::bad_request(format!(
                    "stores lists 1 to {STORES_PER_KEY_MAX} store names, or [\"*\"] (or is left out) for every store"
                )));
            }
            let mut checked = BTreeSet::new();
            for store in list {
                if store == "*" {
                    return Err(ApiError::bad_request("`*` (every store) stands alone in stores"));
                }
                StoreName::with_limits(store.clone(), limits)
                    .map_err(|e| ApiError::bad_request(format!("stores: {store:?}: {e}")))?;
                checked.insert(store);
            }
            Some(checked)
        }
    };
    if rate_per_second == Some(0) || rate_burst == Some(0) {
        return Err(ApiError::bad_request("rate_per_second and rate_burst are at least 1 (leave out for the default)"));
    }
    Ok(NewKey {
        name: name.to_string(),
        scope,
        stores,
        rate_per_second: rate_per_second.unwrap_or(RATE_PER_SECOND_DEFAULT),
        rate_burst: rate_burst.unwrap_or(RATE_BURST_DEFAULT),
    })
}

/// A new secret: `SECRET_PREFIX` and 256 random bits from the operating system, in hex.
fn generate_secret() -> Result<String, ApiError> {
    use rand::TryRngCore;
    let mut bytes = [0u8; SECRET_RANDOM_BYTES];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).map_err(ApiError::internal)?;
    Ok(format!("{SECRET_PREFIX}{}", hex(&bytes)))
}

fn key_id(name: &str) -> Result<DocId, ApiError> {
    DocId::parse(API_KEYS_STORE, name).map_err(ApiError::from)
}

fn count_id() -> Result<DocId, ApiError> {
    DocId::parse(API_KEYS_COUNT_STORE, API_KEYS_COUNT_KEY).map_err(ApiError::from)
}

/// Reads a stored key back into a ring entry; `None` (logged) when it is unreadable.
fn decode(document: &Document) -> Option<RuntimeKey> {
    let value = document.value.clone()?;
    let stored: StoredKey = match serde_json::from_value(value) {
        Ok(stored) => stored,
        Err(error) => {
            tracing::error!(key = %document.id, %error, "unreadable runtime API key; it is not accepted");
            return None;
        }
    };
    let Some(hash) = parse_hex_32(&stored.sha256) else {
        tracing::error!(key = %document.id, "runtime API key without a valid sha256; it is not accepted");
        return None;
    };
    let key = ApiKey {
        name: stored.name,
        hash,
        scope: stored.scope,
        stores: stored.stores.map(|stores| stores.into_iter().collect()),
        rate_per_second: stored.rate_per_second.max(1),
        rate_burst: stored.rate_burst.max(1),
        holder_tag: Some(holder_tag(&hash)),
    };
    Some(RuntimeKey { key: Arc::new(key), created_at_ms: stored.created_at_ms, created_by: stored.created_by })
}

/// Reads every runtime key from the store, leaving out those whose name this process has
/// configured (its configuration wins) and unreadable ones.
pub async fn load(store: &dyn Store, ring: &KeyRing) -> Result<Vec<RuntimeKey>, StoreError> {
    let store_name = StoreName::new(API_KEYS_STORE)?;
    let mut keys = Vec::new();
    let mut after: Option<Key> = None;
    loop {
        let query = ListQuery { prefix: String::new(), after: after.take(), limit: LOAD_PAGE_SIZE };
        let page = store.list_keys(&store_name, &query).await?;
        let ids: Vec<DocId> = page.keys.iter().map(|key| DocId::new(store_name.clone(), key.clone())).collect();
        for document in store.get_many(&ids).await? {
            let Some(runtime) = decode(&document) else { continue };
            if ring.is_configured(&runtime.key.name) {
                tracing::warn!(name = %runtime.key.name, "a runtime API key has a configured key's name; the configured key wins");
                continue;
            }
            keys.push(runtime);
        }
        // The count keeps the store within the limit; this bounds the loop whatever is stored.
        if keys.len() as u64 >= RUNTIME_API_KEYS_MAX {
            if page.next_after.is_some() {
                tracing::error!(
                    max = RUNTIME_API_KEYS_MAX,
                    "more runtime API keys are stored than allowed; the rest are ignored"
                );
            }
            break;
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(keys)
}

/// Re-reads the runtime keys into the ring (and forgets the rate buckets of revoked keys).
pub async fn refresh(state: &AppState) -> Result<(), StoreError> {
    let _changing = state.keys.changing.lock().await;
    let keys = load(&*state.store, &state.keys).await?;
    state.keys.set_runtime(keys);
    let names = state.keys.names();
    state.limiter.retain_names(&names.iter().map(String::as_str).collect());
    Ok(())
}

/// Refreshes the runtime keys every `api_keys_refresh_interval_ms` until shutdown begins or the
/// state is gone. A failed refresh keeps the last view (logged) and is tried again next time.
pub fn spawn_refresher(state: &Arc<AppState>) -> tokio::task::JoinHandle<()> {
    let interval_ms = state.config.api_keys_refresh_interval_ms.max(config::API_KEYS_REFRESH_INTERVAL_MS_MIN);
    let weak = Arc::downgrade(state);
    let mut closing = state.closing.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(interval_ms)) => {}
                _ = closing.changed() => return,
            }
            let Some(state) = weak.upgrade() else { return };
            if let Err(error) = refresh(&state).await {
                tracing::warn!(%error, "refreshing the runtime API keys failed; keeping the last view");
            }
        }
    })
}

/// Whether a commit applied, when its answer was lost: read back.
async fn applied_after_all(store: &dyn Store, commit: &Commit, lost: StoreError) -> Result<bool, ApiError> {
    match resolve_unknown_commit(store, commit).await? {
        Some(applied) => Ok(applied),
        None => Err(lost.into()),
    }
}

fn replace_in_view(ring: &KeyRing, name: &str, added: Option<RuntimeKey>) {
    let mut keys: Vec<RuntimeKey> = ring.runtime().iter().filter(|r| r.key.name != name).cloned().collect();
    keys.extend(added);
    keys.sort_by(|a, b| a.key.name.cmp(&b.key.name));
    ring.set_runtime(keys);
}

/// Creates a runtime key and returns it with its secret (shown this once, never stored).
pub async fn create(state: &AppState, new: NewKey, created_by: &str) -> Result<(RuntimeKey, String), ApiError> {
    let _changing = state.keys.changing.lock().await;
    if state.keys.is_configured(&new.name) {
        return Err(ApiError::conflict(
            "name_taken",
            format!("a configured key is named {:?}; pick another name", new.name),
        ));
    }
    let secret = generate_secret()?;
    let stored = StoredKey {
        name: new.name.clone(),
        scope: new.scope,
        stores: new.stores.as_ref().map(|stores| stores.iter().cloned().collect()),
        rate_per_second: new.rate_per_second,
        rate_burst: new.rate_burst,
        sha256: hex(&hash_secret(&secret)),
        created_at_ms: state.store.now_ms().await?,
        created_by: created_by.to_string(),
    };
    let value = serde_json::to_value(&stored).map_err(ApiError::internal)?;
    let (key_id, count_id) = (key_id(&new.name)?, count_id()?);
    let taken = || {
        ApiError::conflict(
            "name_taken",
            format!("a runtime key is named {:?}; revoke it first or pick another name", new.name),
        )
    };
    for _ in 0..CHANGE_ATTEMPTS_MAX {
        let documents = state.store.get_many(&[key_id.clone(), count_id.clone()]).await?;
        let (Some(existing), Some(count)) = (documents.first(), documents.get(1)) else {
            return Err(ApiError::internal("the store answered a read of two keys with fewer documents"));
        };
        if existing.exists() {
            return Err(taken());
        }
        let count_now = count.value.as_ref().and_then(Value::as_u64).unwrap_or(0);
        if count_now >= RUNTIME_API_KEYS_MAX {
            return Err(ApiError::conflict(
                "too_many_keys",
                format!("there are {RUNTIME_API_KEYS_MAX} runtime keys, the most allowed; revoke one first"),
            ));
        }
        let commit = Commit::new(vec![
            Write::put(key_id.clone(), value.clone()).when(Condition::Absent),
            Write::increment(count_id.clone(), 1).when(Condition::Version(count.version)),
        ]);
        let applied = match state.store.commit(commit.clone()).await {
            Ok(CommitOutcome::Committed { .. }) => true,
            Ok(CommitOutcome::Conflict(conflict)) if conflict.write_index == 0 => return Err(taken()),
            // The count changed meanwhile (another process created or revoked): read again.
            Ok(CommitOutcome::Conflict(_)) => false,
            Err(lost @ StoreError::OutcomeUnknown { .. }) => applied_after_all(&*state.store, &commit, lost).await?,
            Err(error) => return Err(error.into()),
        };
        if applied {
            let runtime = decode(&Document { value: Some(value), ..Document::absent(key_id) })
                .ok_or_else(|| ApiError::internal("a runtime key just written does not read back"))?;
            replace_in_view(&state.keys, &new.name, Some(runtime.clone()));
            return Ok((runtime, secret));
        }
    }
    Err(ApiError::conflict("busy", "other processes kept changing the API keys meanwhile; run it again"))
}

/// Revokes a runtime key: it stops authenticating in this process before this returns.
pub async fn revoke(state: &AppState, name: &str) -> Result<(), ApiError> {
    config::check_key_name(name).map_err(ApiError::bad_request)?;
    let _changing = state.keys.changing.lock().await;
    if state.keys.is_configured(name) {
        return Err(ApiError::conflict(
            "configured_key",
            format!(
                "key {name:?} is configured (config file, HOARD_API_KEYS or --api-keys), not created at run time; \
                 remove it from the configuration and restart to revoke it"
            ),
        ));
    }
    let (key_id, count_id) = (key_id(name)?, count_id()?);
    for _ in 0..CHANGE_ATTEMPTS_MAX {
        let existing = hoard::store::get(&*state.store, &key_id).await?;
        if !existing.exists() {
            replace_in_view(&state.keys, name, None);
            return Err(ApiError::not_found(format!("no runtime API key is named {name:?}")));
        }
        let commit = Commit::new(vec![
            Write::delete(key_id.clone()).when(Condition::Version(existing.version)),
            Write::increment(count_id.clone(), -1),
        ]);
        let applied = match state.store.commit(commit.clone()).await {
            Ok(CommitOutcome::Committed { .. }) => true,
            Ok(CommitOutcome::Conflict(_)) => false,
            Err(lost @ StoreError::OutcomeUnknown { .. }) => applied_after_all(&*state.store, &commit, lost).await?,
            Err(error) => return Err(error.into()),
        };
        if applied {
            replace_in_view(&state.keys, name, None);
            let names = state.keys.names();
            state.limiter.retain_names(&names.iter().map(String::as_str).collect());
            return Ok(());
        }
    }
    Err(ApiError::conflict("busy", "other processes kept changing the API keys meanwhile; run it again"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, scope: &str, stores: Option<Vec<&str>>, rate: Option<u32>) -> Result<NewKey, ApiError> {
        let stores = stores.map(|s| s.into_iter().map(String::from).collect());
        check_new_key(name, scope, stores, rate, None, &Limits::default())
    }

    #[test]
    fn a_well_formed_request_is_accepted_with_default_rates() {
        let key = check("eu-1", "game_server", Some(vec!["players", "guilds"]), None).expect("valid");
        assert_eq!(key.scope, Scope::GameServer);
        assert_eq!(key.stores.map(|s| s.len()), Some(2));
        assert_eq!((key.rate_per_second, key.rate_burst), (RATE_PER_SECOND_DEFAULT, RATE_BURST_DEFAULT));
        assert!(check("all", "read_only", Some(vec!["*"]), Some(5)).expect("valid").stores.is_none());
    }

    #[test]
    fn bad_names_scopes_stores_and_rates_are_refused_with_a_message() {
        let long = "n".repeat(config::KEY_NAME_BYTES_MAX + 1);
        for (name, scope, stores, rate) in [
            ("", "admin", None, None),
            (long.as_str(), "admin", None, None),
            ("with space", "admin", None, None),
            ("ok", "superuser", None, None),
            ("ok", "admin", Some(vec![]), None),
            ("ok", "admin", Some(vec!["*", "players"]), None),
            ("ok", "admin", Some(vec!["bad\nname"]), None),
            ("ok", "admin", None, Some(0)),
        ] {
            let refused = check(name, scope, stores.clone(), rate).expect_err("refused");
            assert_eq!(refused.status, 400, "{name:?} {scope:?} {stores:?} {rate:?}");
            assert!(!refused.message.is_empty());
        }
    }

    #[test]
    fn generated_secrets_are_distinct_prefixed_and_256_bits() {
        let a = generate_secret().expect("secret");
        let b = generate_secret().expect("secret");
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(a.len(), SECRET_PREFIX.len() + 2 * SECRET_RANDOM_BYTES);
    }
}
