//! Cross-server trades (issue 13): two engines in this process (two "servers") on the same store,
//! `trade_clients` trader pairs, each pair split across them (one party live on each engine), every
//! pair trading over and over (coins one way, gems the other). Each trade is both parties' servers
//! calling `Engine::trade_across` at once (the second to prepare decides); its latency runs from
//! the start until both sides are settled: the deciding call returned `Committed` and the other
//! side saw its `TradeSettled` (its server learns of the decision through its inbox). Baseline,
//! in the same run: the same pairs trading on one engine with `Engine::trade` (one fenced commit).
//!
//! Invariant: each trade has a fresh id, balances never run short (`PROFILE_STARTING_BALANCE`) and
//! a pair has one trade in flight at a time, so every trade is expected to commit; anything else
//! (aborted, refused, not settled within `CROSS_TRADE_SETTLE_WAIT_MS`) is a failure.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hoard::engine::{CrossOutcome, CrossTrade, Session, SessionEvent, Trade, TradeLeg, TradeOutcome};
use tokio::sync::broadcast::error::RecvError;

use crate::latency::{Figures, LatencyRecorder};
use crate::profile::{BenchProfile, bench_kind};
use crate::progress::Progress;
use crate::report::WorkloadResult;
use crate::target::Target;
use crate::workloads::{
    HoardPlace, bench_engine_config, discard_engine, measured_row, open_engine, seed_profiles, start_sessions,
};
use crate::{BenchError, Sizes};

pub const NAME: &str = "cross_trades";
/// How long a trade's other side may take to be settled before the trade counts as failed.
pub const CROSS_TRADE_SETTLE_WAIT_MS: u64 = 30_000;
/// The trades' timeout (`CrossTrade::timeout_ms`): long enough that no benchmark trade aborts.
pub const BENCH_CROSS_TRADE_TIMEOUT_MS: u64 = 60_000;

pub async fn run(target: &Target, sizes: &Sizes, progress: &Progress) -> WorkloadResult {
    measured_row(NAME, target.spec.name(), async |result| measure(target, sizes, progress, result).await).await
}

fn legs() -> Vec<TradeLeg> {
    vec![
        TradeLeg { from: 0, to: 1, items: vec![], currencies: BTreeMap::from([("coins".to_string(), 1)]) },
        TradeLeg { from: 1, to: 0, items: vec![], currencies: BTreeMap::from([("gems".to_string(), 1)]) },
    ]
}

async fn measure(
    target: &Target,
    sizes: &Sizes,
    progress: &Progress,
    result: &mut WorkloadResult,
) -> Result<(), BenchError> {
    let (pairs, total) = (sizes.trade_clients.max(1), sizes.cross_trades_total);
    let place = HoardPlace::in_process(target, NAME);
    let cross = measure_cross(&place, pairs, total, progress).await?;
    let local = measure_local(&place, pairs, total, progress).await?;
    result.hoard_setup = format!(
        "{total} cross-server trades by {pairs} trader pairs at once, each pair split across two engines on one store; each: both servers call trade_across at once (escrow per party, the second decides), timed until both sides are settled"
    );
    result.baseline_setup =
        format!("{total} same-engine trades (Engine::trade: one fenced commit) by the same {pairs} pairs at once");
    result.note = format!(
        "cross-server p50 {:.1} ms, p99 {:.1} ms; same engine p50 {:.1} ms, p99 {:.1} ms",
        cross.latency_p50_ms, cross.latency_p99_ms, local.latency_p50_ms, local.latency_p99_ms
    );
    *result = result.clone().with_figures(cross, Some(local));
    Ok(())
}

/// Waits until `session` no longer holds `trade_id` pending (its `TradeSettled` arrived).
async fn other_side_settled(
    session: &Session<BenchProfile>,
    events: &mut tokio::sync::broadcast::Receiver<SessionEvent>,
    trade_id: &str,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(CROSS_TRADE_SETTLE_WAIT_MS);
    loop {
        if !session.read(|profile| profile.holdings.pending_trades.contains_key(trade_id)) {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(_) | Err(RecvError::Lagged(_))) => continue,
            Ok(Err(RecvError::Closed)) => {
                return Err(format!("{} ended before trade {trade_id} settled", session.id()));
            }
            Err(_) => {
                return Err(format!(
                    "trade {trade_id}: {} not settled within {CROSS_TRADE_SETTLE_WAIT_MS} ms",
                    session.id()
                ));
            }
        }
    }
}

/// Two engines on the place's store, a pair's parties on different ones; returns the figures.
async fn measure_cross(
    place: &HoardPlace,
    pairs: usize,
    total: usize,
    progress: &Progress,
) -> Result<Figures, BenchError> {
    let name = place.store_name("cross_trades")?;
    seed_profiles(&place.store, &name, 2 * pairs, &progress.bar(2 * pairs, place.label("seed"))).await?;
    let kind = bench_kind(&name).tradable();
    let server_a = open_engine(&place.store, bench_engine_config("bench-cross-a")).await?;
    let server_b = open_engine(&place.store, bench_engine_config("bench-cross-b")).await?;
    let (left, _, _) = start_sessions(&server_a, &kind, 0, pairs, &progress.bar(pairs, place.label("start a"))).await?;
    let (right, _, _) =
        start_sessions(&server_b, &kind, pairs, pairs, &progress.bar(pairs, place.label("start b"))).await?;
    let bar = progress.bar(total, place.label("hoard"));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(pairs);
    for (pair, (alice, bob)) in left.into_iter().zip(right).enumerate() {
        let (a, b, bar, id_prefix) = (server_a.clone(), server_b.clone(), bar.clone(), place.store_prefix);
        let trades = total / pairs + usize::from(pair < total % pairs);
        tasks.push(tokio::spawn(async move {
            let (mut alice_events, mut bob_events) = (alice.events(), bob.events());
            let mut recorder = LatencyRecorder::new();
            let mut first_error = None;
            for round in 0..trades {
                let trade = CrossTrade {
                    id: format!("{id_prefix}x-{pair}-{round}-{}", uuid::Uuid::new_v4().simple()),
                    parties: vec![alice.id().clone(), bob.id().clone()],
                    legs: legs(),
                    timeout_ms: BENCH_CROSS_TRADE_TIMEOUT_MS,
                };
                let trade_started = Instant::now();
                let (left, right) = tokio::join!(a.trade_across(&alice, &trade), b.trade_across(&bob, &trade));
                let outcome = async {
                    match (left.map_err(|e| e.to_string())?, right.map_err(|e| e.to_string())?) {
                        (CrossOutcome::Committed(_), CrossOutcome::Committed(_)) => Ok(()),
                        (CrossOutcome::Committed(_), CrossOutcome::Pending(_)) => {
                            other_side_settled(&bob, &mut bob_events, &trade.id).await
                        }
                        (CrossOutcome::Pending(_), CrossOutcome::Committed(_)) => {
                            other_side_settled(&alice, &mut alice_events, &trade.id).await
                        }
                        other => Err(format!("trade {} did not commit: {other:?}", trade.id)),
                    }
                }
                .await;
                match outcome {
                    Ok(()) => recorder.record(trade_started.elapsed()),
                    Err(error) => {
                        recorder.record_failure();
                        first_error.get_or_insert(error);
                    }
                }
                bar.inc(1);
            }
            (recorder, first_error)
        }));
    }
    let figures = merged(tasks, started).await;
    bar.finish_and_clear();
    discard_engine(server_a).await;
    discard_engine(server_b).await;
    Ok(figures)
}

/// The baseline: the same number of pairs, both parties live on one engine, `Engine::trade`.
async fn measure_local(
    place: &HoardPlace,
    pairs: usize,
    total: usize,
    progress: &Progress,
) -> Result<Figures, BenchError> {
    let name = place.store_name("cross_trades_local")?;
    seed_profiles(&place.store, &name, 2 * pairs, &progress.bar(2 * pairs, place.label("seed baseline"))).await?;
    let kind = bench_kind(&name);
    let engine = open_engine(&place.store, bench_engine_config("bench-cross-local")).await?;
    let (sessions, _, _) =
        start_sessions(&engine, &kind, 0, 2 * pairs, &progress.bar(2 * pairs, place.label("start baseline"))).await?;
    let mut sessions = sessions.into_iter();
    let bar = progress.bar(total, place.label("same engine"));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(pairs);
    for pair in 0..pairs {
        let (Some(alice), Some(bob)) = (sessions.next(), sessions.next()) else { break };
        let (engine, bar, id_prefix) = (engine.clone(), bar.clone(), place.store_prefix);
        let trades = total / pairs + usize::from(pair < total % pairs);
        tasks.push(tokio::spawn(async move {
            let mut recorder = LatencyRecorder::new();
            let mut first_error = None;
            for round in 0..trades {
                let trade = Trade {
                    id: format!("{id_prefix}l-{pair}-{round}-{}", uuid::Uuid::new_v4().simple()),
                    legs: legs(),
                };
                let trade_started = Instant::now();
                match engine.trade(&[&alice, &bob], &trade).await {
                    Ok(TradeOutcome::Committed(_)) => recorder.record(trade_started.elapsed()),
                    other => {
                        recorder.record_failure();
                        first_error.get_or_insert(format!("trade {} did not commit now: {other:?}", trade.id));
                    }
                }
                bar.inc(1);
            }
            (recorder, first_error)
        }));
    }
    let figures = merged(tasks, started).await;
    bar.finish_and_clear();
    discard_engine(engine).await;
    Ok(figures)
}

/// Merges the pairs' recorders; the first failure of each pair goes to stderr (stdout stays the
/// report).
async fn merged(tasks: Vec<tokio::task::JoinHandle<(LatencyRecorder, Option<String>)>>, started: Instant) -> Figures {
    let mut recorder = LatencyRecorder::new();
    for task in tasks {
        match task.await {
            Ok((pair, first_error)) => {
                recorder.merge(&pair);
                if let Some(error) = first_error {
                    eprintln!("hoard bench: a cross-server trade failed: {error}");
                }
            }
            Err(_) => recorder.record_failure(),
        }
    }
    recorder.figures(started.elapsed())
}
