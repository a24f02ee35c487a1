//! Workload 4, receipts: purchases processed per second (`Engine::process_receipt`: read the
//! receipt record, one fenced commit of the grant and the record). Baseline: insert the purchase
//! id and credit the account in one transaction, from `BASELINE_CLIENTS` clients.
//!
//! Invariant: every purchase id is new, so every receipt is expected to be `Granted`.

use std::sync::Arc;

use hoard::engine::ReceiptOutcome;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::baseline::{BASELINE_CLIENTS, BaselineOp, LatencyFrom};
use crate::progress::Progress;
use crate::report::WorkloadResult;
use crate::target::Target;
use crate::workloads::{HoardPlace, closed_loop, discard_engine, measured_row, seed_and_start};
use crate::{BenchError, Sizes};

pub const NAME: &str = "receipts";
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
        "{total} purchases for {players} live sessions, {RECEIPT_CLIENTS} in flight; each: read the record, one fenced commit of grant + record"
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
    Ok(())
}
