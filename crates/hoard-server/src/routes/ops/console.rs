//! The web console (`/console`): plain HTML, JavaScript and CSS compiled into the binary with
//! `include_str!`, so it needs no Node toolchain to build and no CDN to run.
//!
//! Invariant: the assets are static and keyless; every call the console makes goes to the API
//! with the key the operator typed (kept in the tab's sessionStorage only), so the console can
//! do exactly what that key may do and nothing more.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::AppState;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/console",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML).into_response() }),
        )
        .route(
            "/console/console.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], CONSOLE_JS).into_response() }),
        )
        .route(
            "/console/console.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CONSOLE_CSS).into_response() }),
        )
}
