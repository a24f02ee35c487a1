//! hoard-server's one integration-test crate.
//!
//! The store conformance suite is hoard's own file, included here by `#[path]` (one suite, no
//! copy): its `conformance!` invocations (chosen by `conformance_backends!`) call `crate::backends`,
//! which in this crate opens each backend *behind a `hoard serve` on a socket* and hands the
//! suite a `RemoteStore` connected to it. So `store_conformance::memory::*` here is "RemoteStore
//! over HTTP over the memory store". hoard's own per-test backend openers are included the same way.

#[allow(dead_code)]
#[path = "../../../hoard/tests/it/backends.rs"]
mod local_backends;

mod backends;
mod config_file;
mod console_browser;
mod database_outage;
mod http_api_keys;
mod http_auth;
mod http_bad_input;
mod http_batch;
mod http_cross_trades;
mod http_depth;
mod http_fencing;
mod http_liveops;
mod http_liveops_grants;
mod http_property;
mod http_quarantine;
mod http_scoping;
mod http_sessions;
mod openapi_drift;
/// Over the remote store, the suite runs in front of the memory backend: what it checks here is the
/// HTTP transport and `RemoteStore` (every backend behind it already passes the suite directly in
/// hoard's own tests, and the two-process PostgreSQL handoff runs through real databases). Running
/// it in front of all three tripled a 13-minute test binary for no new coverage.
macro_rules! conformance_backends {
    ($suite:ident) => {
        $suite!(memory);
    };
}
#[path = "../../../hoard/tests/it/pg_cluster.rs"]
mod pg_cluster;
#[path = "../../../hoard/tests/it/store_conformance.rs"]
mod store_conformance;
mod support;
