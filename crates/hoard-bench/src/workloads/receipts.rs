//! Workload 4, receipts: purchases processed per second (`Engine::process_receipt`: one fenced
//! commit of the grant and the record). Baselines, from `BASELINE_CLIENTS` clients: insert the
//! purchase id and credit an integer balance in one transaction (the floor), and the same with the
//! JSON profile written instead (`json_baseline`).
//!
//! Invariant: every purchase id is new, so every receipt is expected to be `Granted`.

use std::sync::Arc;

use hoard::engine::ReceiptOutcome;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::baseline::{BASELINE_CLIENTS, BaselineOp, LatencyFrom};
use crate::json_baseline::JsonOp;
use crate::profile::stored_profile_text;
use crate::progress::Progress;
use crate::report::{Goal, WorkloadResult};
use crate::target::Target;
use crate::workloads::{HoardPlace, closed_loop, discard_engine, measured_row, seed_and_start};
use crate::{BenchError, Sizes};

pub const NAME: &str = "receipts";
/// The goal on PostgreSQL (issue 15): at least this many times the JSON backend's purchases.
pub const GOAL_JSON_RATIO_MIN: f64 = 2.0;
/// Purchases in flight at once (as many as the baseline's clients).
pub const RECEIPT_CLIENTS: usize = BASELINE_CLIENTS;

pub async fn run(target: &Target, sizes: &Sizes, progress: &Progress) -> WorkloadResult {
    measured_row(NAME, target.spec.name(), async |result| measure(target, sizes, progress, result).await).await
}

async fn measure(
    target: &Target,
    sizes: &Sizes,
    progress: &Progress,
    result: &mut WorkloadResult,
) -> Result<(), BenchError> {
    let (players, total) = (sizes.receipt_sessions.max(1), sizes.receipts_total);
    let place = HoardPlace::in_process(target, NAME);
    let (engine, sessions) = seed_and_start(&place, "receipts", "bench-receipts", players, progress).await?;
    let sessions = Arc::new(sessions);
    let (granter, live) = (engine.clone(), sessions.clone());
    let (recorder, elapsed) = closed_loop(
        RECEIPT_CLIENTS,
        total,
        move |index| {
            let (engine, sessions) = (granter.clone(), live.clone());
            async move {
                let player = ChaCha8Rng::seed_from_u64(index as u64).random_range(0..sessions.len());
                let purchase_id = format!("bench-purchase-{index}");
                let outcome = engine
                    .process_receipt(&sessions[player], &purchase_id, json!({"product": "gems_100"}), |profile| {
                        *profile.holdings.currencies.entry("gems".into()).or_insert(0) += 100;
                        Ok(())
                    })
                    .await;
                match outcome {
                    ReceiptOutcome::Granted => Ok(()),
                    other => Err(format!("receipt not granted: {other:?}")),
                }
            }
        },
        &progress.bar(total, place.label("hoard")),
    )
    .await;
    drop(sessions);
    discard_engine(engine).await;
    let hoard = recorder.figures(elapsed);
    result.hoard_setup = format!(
        "{total} purchases for {players} live sessions, {RECEIPT_CLIENTS} in flight; each: one fenced commit of grant + record"
    );

    let mut baseline = None;
    if let Some(database) = &target.baseline {
        let (accounts_table, receipts_table) =
            ("baseline_receipt_accounts".to_string(), "baseline_receipts".to_string());
        database.create_accounts(&accounts_table, players, Some(&receipts_table)).await?;
        let op = BaselineOp::Receipt { accounts_table, receipts_table, accounts: players };
        let bar = progress.bar(total, place.label("baseline"));
        baseline =
            Some(database.measure(&op, &Arc::new(String::new()), total, LatencyFrom::OperationStart, bar).await?);
        result.baseline_setup = format!(
            "{total} purchases as INSERT purchase id + UPDATE balance in one transaction, {BASELINE_CLIENTS} clients"
        );
    }
    *result = result.clone().with_figures(hoard, baseline);
    if let Some(database) = &target.baseline {
        let (table, receipts_table) = ("baseline_json_buyers".to_string(), "baseline_json_receipts".to_string());
        let value = Arc::new(stored_profile_text());
        database.create_json_profiles(&table, players, &value, Some(&receipts_table)).await?;
        let op = BaselineOp::Json(JsonOp::Receipt { table, receipts_table, accounts: players });
        let bar = progress.bar(total, place.label("JSON backend"));
        let json = database.measure(&op, &value, total, LatencyFrom::OperationStart, bar).await?;
        let setup = format!(
            "{total} JSON-backend purchases: INSERT purchase id + UPDATE the JSON profile in one transaction, {BASELINE_CLIENTS} clients"
        );
        *result = result.clone().with_json_baseline(setup, json);
    }
    result.goal = Some(Goal {
        text: format!("at least {GOAL_JSON_RATIO_MIN}x the JSON backend's purchases on PostgreSQL"),
        met: (target.spec.name() == "postgres")
            .then(|| result.json_ratio.is_some_and(|ratio| ratio >= GOAL_JSON_RATIO_MIN)),
    });
    Ok(())
}
