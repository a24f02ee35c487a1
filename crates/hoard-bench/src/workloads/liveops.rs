//! Workload liveops: the operators' lookups and what an index costs a save. Seeds
//! `liveops_players` profiles (each with a user id, a level and three item ids) and declares a
//! number index (`/data/level`) and a keys index (`/data/items`) on them, then measures, one
//! lookup at a time: keys by user id (`lookup_user_p50_ms`, `_p99_ms`) and the holders of an
//! item (`lookup_item_p50_ms`, `_p99_ms`). The row's own figures are saves (puts of a whole
//! profile) into the indexed store from 16 clients; its baseline is the same saves into a store
//! with no declared index, so the ratio is the write cost the two indexes add.
//!
//! Invariant: setup (seeding, declaring and filling the indexes) is outside every measured
//! interval; the declaration's fill time is reported apart (`declare_fill_ms`).

use std::time::{Duration, Instant};

use hoard::store::index::{IndexDecl, IndexKind};
use hoard::store::{Commit, DocId, Key, SharedStore, StoreName, Write};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use crate::latency::LatencyRecorder;
use crate::progress::Progress;
use crate::report::WorkloadResult;
use crate::target::Target;
use crate::workloads::{IN_PROCESS_STORE_PREFIX, SEED_WRITES_PER_COMMIT, closed_loop, measured_row};
use crate::{BenchError, Sizes};

pub const NAME: &str = "liveops";
/// Lookups of each kind measured, one at a time.
pub const LOOKUPS_PER_KIND: usize = 1_000;
/// Save clients of the write-cost comparison.
pub const SAVE_CLIENTS: usize = 16;
/// Distinct item ids the seeded profiles draw from.
pub const ITEM_IDS: usize = 10_000;

pub async fn run(target: &Target, sizes: &Sizes, progress: &Progress) -> WorkloadResult {
    measured_row(NAME, target.spec.name(), async |result| measure(target, sizes, progress, result).await).await
}

fn profile(player: usize, rng: &mut ChaCha8Rng) -> Value {
    let items: serde_json::Map<String, Value> =
        (0..3).map(|_| (format!("item-{}", rng.random_range(0..ITEM_IDS)), json!({"level": 1}))).collect();
    json!({"data": {"level": rng.random_range(0..100), "coins": player, "items": items}})
}

fn store_name(suffix: &str) -> Result<StoreName, BenchError> {
    StoreName::new(format!("{IN_PROCESS_STORE_PREFIX}liveops_{suffix}")).map_err(|e| BenchError::Setup(e.to_string()))
}

fn id(store: &StoreName, player: usize) -> Result<DocId, BenchError> {
    Ok(DocId::new(store.clone(), Key::new(format!("p{player:07}")).map_err(|e| BenchError::Setup(e.to_string()))?))
}

async fn seed(store: &SharedStore, name: &StoreName, players: usize) -> Result<(), BenchError> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for start in (0..players).step_by(SEED_WRITES_PER_COMMIT) {
        let mut writes = Vec::with_capacity(SEED_WRITES_PER_COMMIT);
        for player in start..(start + SEED_WRITES_PER_COMMIT).min(players) {
            writes.push(
                Write::put(id(name, player)?, profile(player, &mut rng)).user_ids(vec![format!("roblox:{player}")]),
            );
        }
        let outcome = store.commit(Commit::new(writes)).await.map_err(|e| BenchError::Setup(e.to_string()))?;
        if !outcome.is_committed() {
            return Err(BenchError::Setup("a seeding commit conflicted".into()));
        }
    }
    Ok(())
}

async fn saves(
    store: &SharedStore,
    name: &StoreName,
    players: usize,
    total: usize,
    progress: &Progress,
    label: &str,
) -> (LatencyRecorder, Duration) {
    let (store, name) = (store.clone(), name.clone());
    closed_loop(
        SAVE_CLIENTS,
        total,
        move |index| {
            let (store, name) = (store.clone(), name.clone());
            async move {
                let mut rng = ChaCha8Rng::seed_from_u64(index as u64);
                let player = rng.random_range(0..players);
                let id = id(&name, player).map_err(|e| e.to_string())?;
                let write = Write::put(id, profile(player, &mut rng));
                match store.commit(Commit::single(write)).await {
                    Ok(outcome) if outcome.is_committed() => Ok(()),
                    Ok(_) => Err("a save conflicted".to_string()),
                    Err(error) => Err(error.to_string()),
                }
            }
        },
        &progress.bar(total, label.to_string()),
    )
    .await
}

async fn measure(
    target: &Target,
    sizes: &Sizes,
    progress: &Progress,
    result: &mut WorkloadResult,
) -> Result<(), BenchError> {
    let store = &target.store;
    let operator = store.operator().ok_or_else(|| BenchError::Setup("this store keeps no operator indexes".into()))?;
    let players = sizes.liveops_players.max(1);
    let (indexed, plain) = (store_name("indexed")?, store_name("plain")?);
    seed(store, &indexed, players).await?;
    seed(store, &plain, players).await?;
    let declared = Instant::now();
    for (index, kind, path) in [("level", IndexKind::Number, "/data/level"), ("items", IndexKind::Keys, "/data/items")]
    {
        let decl = IndexDecl { store: indexed.clone(), name: index.into(), kind, path: path.into() };
        operator.declare_index(decl).await.map_err(|e| BenchError::Setup(e.to_string()))?;
    }
    result.extra.insert("declare_fill_ms".into(), declared.elapsed().as_secs_f64() * 1_000.0);

    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (mut by_user, mut by_item) = (LatencyRecorder::new(), LatencyRecorder::new());
    for _ in 0..LOOKUPS_PER_KIND {
        let user_id = format!("roblox:{}", rng.random_range(0..players));
        let started = Instant::now();
        let page = operator.keys_by_user_id(&user_id, None, 10).await.map_err(|e| BenchError::Hoard(e.to_string()))?;
        by_user.record(started.elapsed());
        if page.ids.len() != 2 {
            return Err(BenchError::Hoard(format!(
                "{user_id} should have 2 keys (indexed and plain), found {}",
                page.ids.len()
            )));
        }
        let item = format!("item-{}", rng.random_range(0..ITEM_IDS));
        let started = Instant::now();
        operator
            .keys_by_member(&indexed, "items", &item, None, 100)
            .await
            .map_err(|e| BenchError::Hoard(e.to_string()))?;
        by_item.record(started.elapsed());
    }
    let (user, item) = (by_user.figures(Duration::from_secs(1)), by_item.figures(Duration::from_secs(1)));
    result.extra.insert("lookup_user_p50_ms".into(), user.latency_p50_ms);
    result.extra.insert("lookup_user_p99_ms".into(), user.latency_p99_ms);
    result.extra.insert("lookup_item_p50_ms".into(), item.latency_p50_ms);
    result.extra.insert("lookup_item_p99_ms".into(), item.latency_p99_ms);

    let total = sizes.liveops_saves.max(1);
    let (with_index, elapsed) = saves(store, &indexed, players, total, progress, "liveops saves, 2 indexes").await;
    let (without, plain_elapsed) = saves(store, &plain, players, total, progress, "liveops saves, no index").await;
    let (hoard, baseline) = (with_index.figures(elapsed), without.figures(plain_elapsed));
    result.ratio = Some(hoard.throughput_per_s / baseline.throughput_per_s.max(f64::MIN_POSITIVE));
    result.hoard_setup = format!(
        "{total} saves (whole profile puts) from {SAVE_CLIENTS} clients into {players} profiles with a number and a keys index; lookups: {LOOKUPS_PER_KIND} of each, one at a time"
    );
    result.baseline_setup = format!("the same saves into {players} profiles with no declared index");
    result.hoard = Some(hoard);
    result.baseline = Some(baseline);
    result.note = format!(
        "by user id p50 {:.2} ms, by item p50 {:.2} ms; ratio = save throughput with / without the indexes",
        user.latency_p50_ms, item.latency_p50_ms
    );
    Ok(())
}
