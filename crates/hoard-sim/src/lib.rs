//! hoard-sim: the dupe hunt. A deterministic, fault-injecting simulator that runs a whole game
//! world — game servers, players joining, leaving, hopping, trading, buying, receiving gifts and
//! depositing into guild banks — against the real engine under harsh faults, and audits every
//! guarantee of DESIGN.md (G1–G9) continuously and at the end.
//!
//! Invariants:
//! - One `u64` seed decides a memory world entirely: the same (config, seed) gives the same
//!   event log (`tests/sim.rs` replays a seed twice and compares the full logs).
//! - The simulator never weakens the engine to make a control fail: the controls are separate
//!   designs in `strategies::control`, over the raw `Store`, and, over HTTP, clients that break
//!   one client rule each (`http::client::ClientRules`). The one weakened server is the no-adopt
//!   control's (`hoard-server`'s test-only `sim-controls` feature: session writes fenced by the
//!   lease alone); hoard's own client always runs against the unchanged router.
//! - A world on either path (`SimConfig::path`: in process, or HTTP clients of an in-process
//!   `hoard serve`) is replayable from its seed on the memory store.
//! - The audit reads durable state from the inner store only, and checks only promises a
//!   strategy made (see `audit`).
//!
//! Map: `world` (servers, players, loop), `actions` (player actions), `faults` (crash, freeze,
//! service restarts), `http` (the HTTP path: service, network, client),
//! `link` (latency, pause, kill, commit observation), `audit` (ledger and checks), `strategies`
//! (hoard and the controls), `model` (the profile and its ids), `report` (figures), `config`.

pub mod actions;
pub mod audit;
pub mod config;
pub mod faults;
pub mod http;
pub mod link;
pub mod model;
pub mod report;
pub mod step_faults;
pub mod strategies;
pub mod world;

pub use config::{ActionWeights, FaultRates, SimConfig, SimPath, StoreChoice};
pub use report::{SweepReport, WorldReport};
pub use strategies::Strategy;
pub use world::run_world;

/// Worlds run at once in a sweep (each on its own thread and current-thread runtime).
pub const SWEEP_THREADS_MAX: usize = 64;

/// Runs `count` worlds with seeds `first_seed..first_seed + count` on up to `threads` threads,
/// calling `on_world` as each finishes. Results are folded in seed order, so the report does not
/// depend on which thread finished first.
pub fn sweep(
    config: &SimConfig,
    first_seed: u64,
    count: u64,
    threads: usize,
    on_world: &(dyn Fn(&WorldReport) + Sync),
) -> SweepReport {
    let threads = threads.clamp(1, SWEEP_THREADS_MAX);
    let next = std::sync::atomic::AtomicU64::new(0);
    let results: std::sync::Mutex<std::collections::BTreeMap<u64, Result<WorldReport, String>>> =
        std::sync::Mutex::new(std::collections::BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let offset = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if offset >= count {
                        return;
                    }
                    let seed = first_seed.wrapping_add(offset);
                    let mut result = run_world(config, seed);
                    if let Ok(world) = &mut result {
                        on_world(world);
                        // The full log is only for replay tests; a sweep keeps the figures.
                        world.event_log = Vec::new();
                    }
                    results.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(seed, result);
                }
            });
        }
    });
    let mut report = SweepReport { first_seed, strategy: config.strategy.name().to_string(), ..SweepReport::default() };
    for (seed, result) in results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
        match result {
            Ok(world) => report.add(&world),
            Err(error) => report.errors.push((seed, error)),
        }
    }
    report
}
