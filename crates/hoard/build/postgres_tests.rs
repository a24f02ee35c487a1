//! Build script shared by every crate with PostgreSQL tests (hoard, hoard-server, hoard-cli):
//! `HOARD_TEST_POSTGRES_URL=skip` sets `cfg(hoard_postgres_tests_skipped)`, and each PostgreSQL
//! test carries `#[cfg_attr(hoard_postgres_tests_skipped, ignore = "...")]`, so an explicit
//! opt-out shows up as ignored tests in cargo's own count, never as passed ones. Any other value
//! (or none) runs them; an unreachable server then fails each one with how to start it or opt
//! out (`tests/it/backends.rs`).

// A build script talks to cargo on stdout.
#![allow(clippy::print_stdout)]

fn main() {
    println!("cargo::rerun-if-env-changed=HOARD_TEST_POSTGRES_URL");
    println!("cargo::rustc-check-cfg=cfg(hoard_postgres_tests_skipped)");
    if std::env::var("HOARD_TEST_POSTGRES_URL").as_deref() == Ok("skip") {
        println!("cargo::rustc-cfg=hoard_postgres_tests_skipped");
    }
}
