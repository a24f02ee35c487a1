//! The OpenAPI document, generated from the handlers' annotations (utoipa) and committed as
//! `docs/openapi.json`; a test regenerates it and fails when the committed file drifts.
//!
//! Invariant: every route is listed here, the raw store protocol (`/v1/store/*`, used by
//! `RemoteStore`) too: its bodies are the library's store types, described by the mirrors in
//! `wire::store`.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{api_keys, documents, health, raw, sessions, updates, value};

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "hoard serve",
        description = "Player data for game servers in any language: sessions fenced by lease epochs, handoff, \
            atomic trades, exactly-once receipts, inbox messages and lock-free updates, over HTTP/JSON. Every \
            route but /healthz and /readyz needs `Authorization: Bearer <API key>`; errors are \
            `{\"error\": code, \"message\": text}`. Routes that move value take an `Idempotency-Key` header: a \
            retry with the same key returns the first answer. The raw store protocol under /v1/store/* (tag \
            `store`) takes and returns the hoard library's store types as JSON; it is used by \
            `hoard_server::RemoteStore` with an `engine` key, which can write any key without a session fence: \
            give it only to trusted Rust servers. Serve TLS through a reverse proxy."
    ),
    paths(
        health::healthz, health::readyz, health::metrics, health::openapi,
        documents::list_keys, documents::read_key, documents::list_versions, documents::read_version,
        documents::rollback, documents::release,
        api_keys::list_api_keys, api_keys::create_api_key, api_keys::revoke_api_key,
        sessions::register_holder, sessions::renew_holder, sessions::release_holder, sessions::holder_events,
        sessions::start, sessions::save, sessions::end, sessions::read, sessions::commit_many,
        value::trade, value::receipt, value::send_message,
        updates::update,
        raw::info, raw::now, raw::commit, raw::get_many, raw::list, raw::versions, raw::version, raw::prune,
        raw::renew_holder, raw::release_holder, raw::read_holder, raw::notify, raw::subscribe,
    ),
    components(schemas(crate::error::ErrorBody, crate::wire::SessionToken, crate::ops::Op)),
    modifiers(&BearerKey),
    tags(
        (name = "operations", description = "health, readiness, metrics, this document"),
        (name = "documents", description = "key reads, listing, versions"),
        (name = "admin", description = "rollback, force-release, API keys (admin keys only)"),
        (name = "sessions", description = "holders, sessions, handoff"),
        (name = "value", description = "trades, receipts, messages"),
        (name = "updates", description = "lock-free updates as data"),
        (name = "store", description = "the raw store protocol of RemoteStore (engine and admin keys only)"),
    )
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document is plain data and always serializes")
}

/// The document as the pretty text committed in `docs/openapi.json`.
pub fn document_text() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .map(|text| text + "\n")
        .expect("the OpenAPI document is plain data and always serializes")
}
