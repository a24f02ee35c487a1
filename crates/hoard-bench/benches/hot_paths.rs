//! Criterion micro-benchmarks of hoard's hot paths with the 8 KiB benchmark profile: profile
//! encode and decode (every save and load) and `apply_commit` (every commit on every backend).
//! Run: `cargo bench -p hoard-bench`.
//! Wall-clock numbers are noisy on a shared machine; compare runs with `--save-baseline`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hoard::store::apply::{Current, apply_commit};
use hoard::store::limits::Limits;
use hoard::store::{Commit, Condition, DocId, Document, HolderId, LeaseOp, Write};
use hoard_bench::profile::{bench_profile, bench_schema};

fn codec(criterion: &mut Criterion) {
    let schema = bench_schema();
    let profile = bench_profile();
    let meta = schema.current_meta();
    let stored = match schema.encode(&profile, &meta) {
        Ok(stored) => stored,
        Err(error) => panic!("encode: {error}"),
    };
    let text = serde_json::to_string(&stored).unwrap_or_default();
    criterion.bench_function("profile_encode_8kib", |bench| bench.iter(|| schema.encode(black_box(&profile), &meta)));
    criterion.bench_function("profile_decode_8kib", |bench| bench.iter(|| schema.decode(Some(black_box(&stored)))));
    criterion.bench_function("profile_json_text_parse_8kib", |bench| {
        bench.iter(|| serde_json::from_str::<serde_json::Value>(black_box(&text)))
    });
}

fn apply(criterion: &mut Criterion) {
    let schema = bench_schema();
    let stored = match schema.encode(&bench_profile(), &schema.current_meta()) {
        Ok(stored) => stored,
        Err(error) => panic!("encode: {error}"),
    };
    let id = match DocId::parse("bench.players", "player-0000001") {
        Ok(id) => id,
        Err(error) => panic!("id: {error}"),
    };
    let holder = HolderId::generate("bench");
    // A held key at epoch 1, as a live session's save finds it.
    let acquire = Commit::single(Write::new(id.clone()).lease(LeaseOp::Acquire(holder.clone())));
    let limits = Limits::default();
    let empty = Current { doc: Document::absent(id.clone()), holder_expires_at_ms: None };
    let held = match apply_commit(&[empty], &acquire, 1_000, &limits) {
        Ok((mut nexts, _)) => nexts.remove(0).doc,
        Err(conflict) => panic!("acquire: {conflict:?}"),
    };
    let current = Current { doc: held, holder_expires_at_ms: Some(i64::MAX) };
    let save = Commit::single(Write::put(id, stored).when(Condition::Lease { holder, epoch: current.doc.lease.epoch }));
    criterion.bench_function("apply_commit_fenced_save_8kib", |bench| {
        bench.iter(|| apply_commit(black_box(std::slice::from_ref(&current)), black_box(&save), 2_000, &limits).is_ok())
    });
}

criterion_group!(hot_paths, codec, apply);
criterion_main!(hot_paths);
