//! The `hoard` command lives in `main.rs`; this library target is empty on purpose.
//!
//! Why it exists: `hoard sim` is behind the `sim` feature (it needs tokio's paused test clock,
//! which the release binary must not link), and the binary's own tests run `hoard sim`. Cargo
//! turns a feature on for a package's tests only through a dev-dependency on the package
//! itself, and such a dependency needs a library target. So `cargo test` builds `hoard` with
//! `sim`, and `cargo build --release -p hoard-cli` builds it without.
