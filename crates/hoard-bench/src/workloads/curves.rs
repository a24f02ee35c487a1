//! The two curves of issue 15, each with hoard beside the JSON backend (`json_baseline`) at every
//! point: saves per second against the number of concurrent clients (1 to 64), and the cost of a
//! save (wall time per save in a storm of saves, so batching shows) against the profile's size
//! (1 to 256 KiB).
//!
//! Invariant: at every point both sides do the same saves of the same bytes with the same number
//! of clients; a point that fails leaves its side empty and records why in the curve, and the
//! other points are still measured.

use std::sync::Arc;
use std::time::Duration;

use crate::baseline::{BaselineOp, LatencyFrom};
use crate::json_baseline::JsonOp;
use crate::profile::{BenchProfile, bench_kind_with, profile_of_stored_bytes, stored_profile_text, stored_text_of};
use crate::progress::Progress;
use crate::report::{Curve, CurvePoint};
use crate::target::Target;
use crate::workloads::{
    HoardPlace, bench_engine_config, closed_loop, discard_engine, make_dirty, open_engine, seed_and_start,
    seed_profiles_with, start_sessions, storm,
};
use crate::{BenchError, Sizes};

pub const NAME: &str = "curves";
/// The x values of the clients curve.
pub const CLIENTS_CURVE: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
/// The x values of the profile-size curve, in KiB.
pub const PROFILE_KIB_CURVE: [usize; 5] = [1, 4, 16, 64, 256];
/// Clients of the JSON backend on the size curve (the baselines' usual count).
pub const SIZE_CURVE_BASELINE_CLIENTS: usize = crate::baseline::BASELINE_CLIENTS;

pub async fn run(target: &Target, sizes: &Sizes, progress: &Progress) -> Vec<Curve> {
    vec![clients_curve(target, sizes, progress).await, size_curve(target, sizes, progress).await]
}

fn note_error(curve: &mut Curve, what: String, error: BenchError) {
    curve.errors.push(format!("{what}: {error}"));
}

async fn clients_curve(target: &Target, sizes: &Sizes, progress: &Progress) -> Curve {
    let mut curve = Curve::new(
        "throughput_by_clients",
        target.spec.name(),
        "saves per second against concurrent clients",
        "concurrent clients",
        "saves per second",
    );
    let saves = sizes.curve_saves;
    let place = HoardPlace::in_process(target, NAME);
    let started = seed_and_start(&place, "curve-clients", "bench-curve-clients", saves, progress).await;
    let (engine, sessions) = match started {
        Ok(started) => started,
        Err(error) => {
            note_error(&mut curve, "start sessions".into(), error);
            return curve;
        }
    };
    let sessions = Arc::new(sessions);
    let value = Arc::new(stored_profile_text());
    for clients in CLIENTS_CURVE {
        let mut point = CurvePoint { x: clients as f64, hoard: None, json_baseline: None };
        match make_dirty(&sessions) {
            Ok(()) => {
                let live = sessions.clone();
                let (recorder, elapsed) = closed_loop(
                    clients,
                    saves,
                    move |index| {
                        let session = live[index].clone();
                        async move { session.save_now().await.map(|_| ()).map_err(|error| error.to_string()) }
                    },
                    &progress.bar(saves, place.label(&format!("{clients} clients"))),
                )
                .await;
                let figures = recorder.figures(elapsed);
                if figures.failures == 0 {
                    point.hoard = Some(figures.throughput_per_s);
                } else {
                    curve.errors.push(format!("hoard at {clients} clients: {} saves failed", figures.failures));
                }
            }
            Err(error) => note_error(&mut curve, format!("hoard at {clients} clients"), error),
        }
        if let Some(database) = &target.baseline {
            let table = "baseline_json_curve_clients".to_string();
            let measured = async {
                database.create_json_profiles(&table, saves, &value, None).await?;
                let op = BaselineOp::Json(JsonOp::Save { table: table.clone() });
                let bar = progress.bar(saves, place.label(&format!("JSON backend, {clients} clients")));
                database.measure_with_clients(&op, &value, saves, LatencyFrom::OperationStart, clients, bar).await
            };
            match measured.await {
                Ok(figures) => point.json_baseline = Some(figures.throughput_per_s),
                Err(error) => note_error(&mut curve, format!("JSON backend at {clients} clients"), error),
            }
        }
        curve.points.push(point);
    }
    drop(sessions);
    discard_engine(engine).await;
    curve
}

async fn size_curve(target: &Target, sizes: &Sizes, progress: &Progress) -> Curve {
    let mut curve = Curve::new(
        "save_cost_by_profile_size",
        target.spec.name(),
        "cost per save against profile size (a storm of saves, wall time per save)",
        "profile KiB",
        "microseconds per save",
    );
    let saves = sizes.curve_size_saves;
    let place = HoardPlace::in_process(target, NAME);
    for kib in PROFILE_KIB_CURVE {
        let profile = profile_of_stored_bytes(kib * 1024);
        let text = stored_text_of(&profile);
        let mut point = CurvePoint { x: kib as f64, hoard: None, json_baseline: None };
        match hoard_storm_of_size(&place, kib, profile, &text, saves, progress).await {
            Ok(elapsed) => point.hoard = Some(micros_per_save(elapsed, saves)),
            Err(error) => note_error(&mut curve, format!("hoard at {kib} KiB"), error),
        }
        if let Some(database) = &target.baseline {
            let table = "baseline_json_curve_size".to_string();
            let value = Arc::new(text);
            let measured = async {
                database.create_json_profiles(&table, saves, &value, None).await?;
                let op = BaselineOp::Json(JsonOp::Save { table: table.clone() });
                let bar = progress.bar(saves, place.label(&format!("JSON backend, {kib} KiB")));
                database
                    .measure_with_clients(&op, &value, saves, LatencyFrom::RunStart, SIZE_CURVE_BASELINE_CLIENTS, bar)
                    .await
            };
            match measured.await {
                Ok(figures) => {
                    point.json_baseline = Some(micros_per_save(Duration::from_secs_f64(figures.elapsed_s), saves))
                }
                Err(error) => note_error(&mut curve, format!("JSON backend at {kib} KiB"), error),
            }
        }
        curve.points.push(point);
    }
    curve
}

fn micros_per_save(elapsed: Duration, saves: usize) -> f64 {
    elapsed.as_secs_f64() * 1e6 / saves.max(1) as f64
}

/// `saves` live sessions of a `kib` KiB profile, all dirty, all saved at once; the storm's wall time.
async fn hoard_storm_of_size(
    place: &HoardPlace,
    kib: usize,
    profile: BenchProfile,
    text: &str,
    saves: usize,
    progress: &Progress,
) -> Result<Duration, BenchError> {
    let name = place.store_name(&format!("curve-size-{kib}"))?;
    seed_profiles_with(&place.store, &name, saves, text, &progress.bar(saves, place.label(&format!("seed {kib} KiB"))))
        .await?;
    let engine = open_engine(&place.store, bench_engine_config("bench-curve-size")).await?;
    let kind = bench_kind_with(&name, profile);
    let started = start_sessions(&engine, &kind, 0, saves, &progress.bar(saves, place.label("start"))).await;
    let (sessions, _, _) = match started {
        Ok(started) => started,
        Err(error) => {
            discard_engine(engine).await;
            return Err(error);
        }
    };
    make_dirty(&sessions)?;
    let storm_saves: Vec<_> = sessions
        .iter()
        .cloned()
        .map(|session| async move { session.save_now().await.map(|_| ()).map_err(|error| error.to_string()) })
        .collect();
    let (recorder, elapsed) = storm(storm_saves, &progress.bar(saves, place.label(&format!("{kib} KiB")))).await;
    drop(sessions);
    discard_engine(engine).await;
    let failures = recorder.figures(elapsed).failures;
    if failures > 0 {
        return Err(BenchError::Hoard(format!("{failures} of {saves} saves failed")));
    }
    Ok(elapsed)
}
