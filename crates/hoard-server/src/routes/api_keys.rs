//! API-key management for admins: list the configured and runtime keys, create a runtime key
//! (its secret is answered once), revoke a runtime key.
//!
//! Invariant: no answer ever holds a stored hash, and a secret appears only in the answer to the
//! creation that generated it; every refusal (bad input, taken name, configured key) stores
//! nothing. The rules themselves are `runtime_keys`'.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::path_error;
use crate::auth::{ApiKey, KeyOrigin, Principal, Scope};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::runtime_keys;
use crate::state::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/admin/keys", get(list_api_keys).post(create_api_key))
        .route("/v1/admin/keys/{name}", delete(revoke_api_key))
}

/// One key, without its hash or secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyInfo {
    pub name: String,
    pub scope: Scope,
    /// `null`: every store.
    pub stores: Option<Vec<String>>,
    pub rate_per_second: u32,
    pub rate_burst: u32,
    /// `config` (file or environment: revoked by editing the configuration) or `runtime`
    /// (created over HTTP, kept in the store, revoked with `DELETE /v1/admin/keys/{name}`).
    pub origin: KeyOrigin,
    /// Runtime keys: when it was created, by the store's clock.
    pub created_at_ms: Option<i64>,
    /// Runtime keys: the name of the admin key that created it.
    pub created_by: Option<String>,
}

impl ApiKeyInfo {
    fn of(key: &ApiKey, origin: KeyOrigin, created: Option<(i64, String)>) -> ApiKeyInfo {
        let (created_at_ms, created_by) = created.map_or((None, None), |(at, by)| (Some(at), Some(by)));
        ApiKeyInfo {
            name: key.name.clone(),
            scope: key.scope,
            stores: key.stores.as_ref().map(|stores| stores.iter().cloned().collect()),
            rate_per_second: key.rate_per_second,
            rate_burst: key.rate_burst,
            origin,
            created_at_ms,
            created_by,
        }
    }
}

/// Lists every API key (admin): configured ones, then runtime ones as stored now. Hashes and
/// secrets are never shown.
#[utoipa::path(get, path = "/v1/admin/keys", tag = "admin", security(("api_key" = [])),
    responses((status = 200, body = [ApiKeyInfo]), (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub async fn list_api_keys(
    State(state): State<Arc<AppState>>,
    principal: Principal,
) -> Result<Json<Vec<ApiKeyInfo>>, ApiError> {
    principal.require_admin()?;
    runtime_keys::refresh(&state).await?;
    let configured = state.keys.configured().iter().map(|key| ApiKeyInfo::of(key, KeyOrigin::Config, None));
    let runtime = state.keys.runtime();
    let runtime = runtime
        .iter()
        .map(|r| ApiKeyInfo::of(&r.key, KeyOrigin::Runtime, Some((r.created_at_ms, r.created_by.clone()))));
    Ok(Json(configured.chain(runtime).collect()))
}

/// Body of `POST /v1/admin/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyBody {
    /// 1 to 32 of `[A-Za-z0-9_-]`, unique among configured and runtime keys.
    pub name: String,
    #[schema(value_type = Scope)]
    pub scope: String,
    /// Store names the key may use; left out or `["*"]`: every store.
    pub stores: Option<Vec<String>>,
    /// Sustained requests per second (at least 1). Default 1000.
    pub rate_per_second: Option<u32>,
    /// Burst (at least 1). Default 2000.
    pub rate_burst: Option<u32>,
}

/// The created key and its secret, shown this once: only its SHA-256 is stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedKeyBody {
    pub key: ApiKeyInfo,
    /// Send it as `Authorization: Bearer <secret>`. It cannot be shown again.
    pub secret: String,
}

/// Creates a runtime API key (admin). The server generates the secret (256 random bits) and
/// answers it once; the store keeps only its SHA-256, shared by every process on the store.
#[utoipa::path(post, path = "/v1/admin/keys", tag = "admin", security(("api_key" = [])),
    request_body = CreateKeyBody,
    responses((status = 201, body = CreatedKeyBody),
        (status = 400, description = "bad name, scope, stores or rates", body = crate::error::ErrorBody),
        (status = 409, description = "the name is taken, or the runtime key limit is reached", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn create_api_key(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: Result<ApiJson<CreateKeyBody>, ApiError>,
) -> Result<(StatusCode, Json<CreatedKeyBody>), ApiError> {
    principal.require_admin()?;
    let CreateKeyBody { name, scope, stores, rate_per_second, rate_burst } = body?.value;
    let new = runtime_keys::check_new_key(&name, &scope, stores, rate_per_second, rate_burst, state.store.limits())?;
    let (runtime, secret) = runtime_keys::create(&state, new, &principal.name).await?;
    tracing::info!(name = %runtime.key.name, scope = ?runtime.key.scope, by = %principal.name, "runtime API key created");
    let key = ApiKeyInfo::of(&runtime.key, KeyOrigin::Runtime, Some((runtime.created_at_ms, runtime.created_by)));
    Ok((StatusCode::CREATED, Json(CreatedKeyBody { key, secret })))
}

/// Revokes a runtime API key (admin). It stops working at once on this process and within the
/// refresh interval (`--api-keys-refresh-interval-ms`) on the others. A configured key is
/// refused (409): remove it from the configuration instead.
#[utoipa::path(delete, path = "/v1/admin/keys/{name}", tag = "admin", security(("api_key" = [])),
    params(("name" = String, Path)),
    responses((status = 200, description = "`{\"revoked\": name}`"), (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "a configured key", body = crate::error::ErrorBody),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody)))]
pub async fn revoke_api_key(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let Path(name) = path.map_err(path_error)?;
    runtime_keys::revoke(&state, &name).await?;
    tracing::info!(%name, by = %principal.name, "runtime API key revoked");
    Ok(Json(json!({ "revoked": name })))
}
