//! The OpenAPI document, generated from the handlers' annotations (utoipa) and committed as
//! `docs/openapi.json`; a test regenerates it and fails when the committed file drifts.
//!
//! Invariant: every route is listed here, the raw store protocol (`/v1/store/*`, used by
//! `RemoteStore`) too: its bodies are the library's store types, described by the mirrors in
//! `wire::store`. Every status an operation can answer is documented: its own, in its
//! annotation, and those of the layers every route runs under (`SharedAnswers`), so a client
//! (and schemathesis, which the hostile-input test runs against the served document) never
//! meets an undocumented one.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    api_keys, batch, cross_trades, documents, events, health, ops, quarantine, raw, receipts, session_writes, sessions,
    sync, trades, updates, value,
};

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// Documents, on every operation, the answers the shared layers give (`app::router`, `auth`,
/// `extract`, the store): whatever a route's own annotation does not already say.
struct SharedAnswers;

/// The answers the layers give, each with the condition under which the layer applies.
fn shared_answers(operation: &Operation) -> Vec<(&'static str, &'static str)> {
    let secured = operation.security.as_ref().is_some_and(|requirements| !requirements.is_empty());
    let has_body = operation.request_body.is_some();
    let has_parameters = operation.parameters.as_ref().is_some_and(|parameters| !parameters.is_empty());
    let upgrades = operation.responses.responses.contains_key("101");
    let operations_tag = operation.tags.as_ref().is_some_and(|tags| tags.iter().any(|tag| tag == "operations"));
    let mut answers =
        vec![("408", "the request took longer than request_timeout_ms; retry (with the same Idempotency-Key)")];
    if secured {
        answers.push(("401", "no API key, or not a valid one (`Authorization: Bearer <key>`)"));
        answers.push(("429", "the key's rate limit is exceeded; retry after `Retry-After` seconds"));
    }
    if secured && !operations_tag {
        answers.push((
            "503",
            "the store is unavailable (nothing applied), its outcome is unknown, or the server is shutting down; retry",
        ));
    }
    if has_body {
        answers.push(("400", "the body is not JSON of the expected shape, or breaks a documented rule"));
        answers.push(("413", "the body is over the route's size limit"));
        answers.push(("415", "the body is not sent as `Content-Type: application/json`"));
    }
    if has_parameters {
        answers.push(("400", "a path, query or header parameter is malformed or breaks a documented rule"));
    }
    if upgrades {
        answers.push(("400", "a WebSocket upgrade request with missing or malformed upgrade headers"));
        answers.push(("426", "the connection cannot be upgraded to a WebSocket"));
    }
    answers
}

impl Modify for SharedAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, description) in shared_answers(operation) {
                    let error_body = Content::new(Some(Ref::from_schema_name("ErrorBody")));
                    let answer =
                        ResponseBuilder::new().description(description).content("application/json", error_body);
                    operation.responses.responses.entry(status.to_string()).or_insert(RefOr::T(answer.build()));
                }
            }
        }
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
        documents::rollback, documents::release, quarantine::read_raw, quarantine::repair,
        api_keys::list_api_keys, api_keys::create_api_key, api_keys::revoke_api_key,
        sessions::register_holder, sessions::renew_holder, sessions::release_holder, events::holder_events,
        sessions::start, session_writes::save, session_writes::end, session_writes::read, session_writes::commit_many,
        sync::sync, batch::start_many, batch::end_many,
        trades::trade, cross_trades::prepare, cross_trades::settle, cross_trades::abort, cross_trades::read_trade,
        receipts::receipt, value::send_message,
        updates::update,
        raw::info, raw::now, raw::commit, raw::get_many, raw::list, raw::versions, raw::version, raw::prune,
        raw::renew_holder, raw::release_holder, raw::read_holder, raw::notify, raw::subscribe,
        ops::lookups::keys_by_user_id, ops::lookups::holder, ops::lookups::list_indexes, ops::lookups::declare_index,
        ops::lookups::drop_index, ops::lookups::members, ops::lookups::top, ops::lookups::rank, ops::lookups::count,
        ops::history::version_diff, ops::history::field_history, ops::history::trades, ops::history::receipts,
        ops::history::audit_log, ops::repair::restore, ops::repair::grant, ops::repair::free, ops::repair::force_end,
        ops::erasure::erase, ops::erasure::erasures, ops::webhook::roblox_erasure, ops::trades::trade,
        ops::trades::stuck_trades,
    ),
    components(schemas(crate::error::ErrorBody, crate::wire::SessionToken, crate::wire::CurrentDocument, crate::wire::PartyState, crate::ops::Op)),
    modifiers(&BearerKey, &SharedAnswers),
    tags(
        (name = "operations", description = "health, readiness, metrics, this document"),
        (name = "documents", description = "key reads, listing, versions"),
        (name = "admin", description = "rollback, force-release, API keys (admin keys only)"),
        (name = "sessions", description = "holders, sessions, handoff"),
        (name = "value", description = "trades, receipts, messages"),
        (name = "updates", description = "lock-free updates as data"),
        (name = "store", description = "the raw store protocol of RemoteStore (engine and admin keys only)"),
        (name = "liveops", description = "lookups, history, repairs, erasure, the audit log and Roblox's erasure webhook (operator, admin and read-only keys; the console at /console uses them)"),
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
