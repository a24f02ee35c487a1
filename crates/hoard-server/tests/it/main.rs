//! hoard-server's one integration-test crate.
//!
//! The store conformance suite is hoard's own file, included here by `#[path]` (one suite, no
//! copy): its `conformance!(memory | sqlite | postgres)` invocations call `crate::backends`,
//! which in this crate opens each backend *behind a `hoard serve` on a socket* and hands the
//! suite a `RemoteStore` connected to it. So `store_conformance::sqlite::*` here is "RemoteStore
//! over HTTP over SQLite". hoard's own per-test backend openers are included the same way.

#[allow(dead_code)]
#[path = "../../../hoard/tests/it/backends.rs"]
mod local_backends;

mod backends;
mod http_auth;
mod http_bad_input;
mod http_sessions;
mod openapi_drift;
#[path = "../../../hoard/tests/it/store_conformance.rs"]
mod store_conformance;
mod support;
