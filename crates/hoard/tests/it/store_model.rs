//! Random operation sequences against a deliberately simple model, on every backend.
//!
//! The model is written separately from `store::apply` (plain maps, no shared code), so a bug in
//! the shared commit semantics shows up as a disagreement here, not as two wrongs agreeing.

use std::collections::BTreeMap;

use hoard::store::{
    Commit, CommitOutcome, Condition, ConflictKind, DocId, HolderId, LeaseOp, SharedStore, StoreName, ValueOp,
    VersionQuery, Write,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const KEYS: usize = 4;
const HOLDERS: usize = 2;

#[derive(Clone, Debug)]
enum CondSpec {
    None,
    Absent,
    /// Version equal to the model's current version, plus this offset (0: matches).
    Version(i8),
    /// The key's current lease if `true`, else a made-up stale one.
    Lease(bool),
    LeaseFree,
}

#[derive(Clone, Debug)]
enum OpSpec {
    Put(i64),
    Delete,
    Increment(i64),
    Acquire(usize),
    Release,
    Push(i64),
    Ack,
}

#[derive(Clone, Debug)]
struct WriteSpec {
    key: usize,
    cond: CondSpec,
    op: OpSpec,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct ModelDoc {
    value: Option<Value>,
    version: u64,
    holder: Option<usize>,
    epoch: u64,
    inbox: Vec<(u64, Value)>,
    next_seq: u64,
    history: Vec<(u64, Option<Value>)>,
}

fn cond_strategy() -> impl Strategy<Value = CondSpec> {
    prop_oneof![
        Just(CondSpec::None),
        Just(CondSpec::Absent),
        (-1i8..=1).prop_map(CondSpec::Version),
        any::<bool>().prop_map(CondSpec::Lease),
        Just(CondSpec::LeaseFree),
    ]
}

fn op_strategy() -> impl Strategy<Value = OpSpec> {
    prop_oneof![
        (-5i64..100).prop_map(OpSpec::Put),
        Just(OpSpec::Delete),
        (-3i64..4).prop_map(OpSpec::Increment),
        (0..HOLDERS).prop_map(OpSpec::Acquire),
        Just(OpSpec::Release),
        (0i64..10).prop_map(OpSpec::Push),
        Just(OpSpec::Ack),
    ]
}

fn commit_strategy() -> impl Strategy<Value = Vec<WriteSpec>> {
    prop::collection::vec(
        (0..KEYS, cond_strategy(), op_strategy()).prop_map(|(key, cond, op)| WriteSpec { key, cond, op }),
        1..=3,
    )
}

fn holder(index: usize) -> HolderId {
    HolderId::new(format!("holder-{index}")).expect("holder")
}

/// The model's verdict on one write: the new document, or the conflict kind.
fn model_write(doc: &ModelDoc, spec: &WriteSpec) -> Result<ModelDoc, ConflictKind> {
    let lease_live = doc.holder.is_some(); // every model holder keeps a live process lease
    match &spec.cond {
        CondSpec::None => {}
        CondSpec::Absent if doc.value.is_some() => return Err(ConflictKind::Exists),
        CondSpec::Absent => {}
        CondSpec::Version(offset) => {
            if *offset != 0 {
                return Err(ConflictKind::VersionMismatch);
            }
        }
        CondSpec::Lease(current) => {
            if !*current || doc.holder.is_none() {
                return Err(ConflictKind::LeaseMismatch);
            }
        }
        CondSpec::LeaseFree if lease_live => return Err(ConflictKind::LeaseHeld),
        CondSpec::LeaseFree => {}
    }
    let mut next = doc.clone();
    match &spec.op {
        OpSpec::Put(n) => next.value = Some(json!(n)),
        OpSpec::Delete => next.value = None,
        OpSpec::Increment(by) => {
            let base = match &doc.value {
                None => 0,
                Some(value) => value.as_i64().ok_or(ConflictKind::NotAnInteger)?,
            };
            next.value = Some(json!(base + by));
        }
        OpSpec::Acquire(index) => {
            next.holder = Some(*index);
            next.epoch += 1;
        }
        OpSpec::Release => next.holder = None,
        OpSpec::Push(n) => {
            next.inbox.push((next.next_seq, json!(n)));
            next.next_seq += 1;
        }
        OpSpec::Ack => {
            let through = doc.inbox.first().map_or(0, |(seq, _)| *seq);
            next.inbox.retain(|(seq, _)| *seq > through);
        }
    }
    if matches!(spec.op, OpSpec::Put(_) | OpSpec::Delete | OpSpec::Increment(_)) {
        next.version += 1;
        next.history.push((next.version, next.value.clone()));
    }
    Ok(next)
}

fn to_write(id: DocId, doc: &ModelDoc, spec: &WriteSpec) -> Write {
    let condition = match &spec.cond {
        CondSpec::None => Condition::None,
        CondSpec::Absent => Condition::Absent,
        CondSpec::Version(0) => Condition::Version(doc.version),
        // Any other version must mismatch, also below version 0.
        CondSpec::Version(offset) => {
            Condition::Version(doc.version.checked_add_signed(i64::from(*offset)).unwrap_or(doc.version + 7))
        }
        CondSpec::Lease(true) if doc.holder.is_some() => {
            Condition::Lease { holder: holder(doc.holder.unwrap_or(0)), epoch: doc.epoch }
        }
        CondSpec::Lease(_) => Condition::Lease { holder: holder(0), epoch: doc.epoch + 100 },
        CondSpec::LeaseFree => Condition::LeaseFree,
    };
    let write = Write::new(id).when(condition);
    match &spec.op {
        OpSpec::Put(n) => write.value(ValueOp::Put(json!(n))),
        OpSpec::Delete => write.value(ValueOp::Delete),
        OpSpec::Increment(by) => write.value(ValueOp::Increment(*by)),
        OpSpec::Acquire(index) => write.lease(LeaseOp::Acquire(holder(*index))),
        OpSpec::Release => write.lease(LeaseOp::Release),
        OpSpec::Push(n) => write.push_message(json!(n)),
        OpSpec::Ack => write.ack_inbox_through(doc.inbox.first().map_or(0, |(seq, _)| *seq)),
    }
}

async fn run_sequence(
    store: SharedStore,
    store_name: StoreName,
    commits: Vec<Vec<WriteSpec>>,
) -> Result<(), TestCaseError> {
    for index in 0..HOLDERS {
        store.renew_holder(&holder(index), 3_600_000).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    let ids: Vec<DocId> = (0..KEYS)
        .map(|n| DocId::new(store_name.clone(), hoard::store::Key::new(format!("k{n}")).expect("key")))
        .collect();
    let mut model: BTreeMap<usize, ModelDoc> =
        (0..KEYS).map(|n| (n, ModelDoc { next_seq: 1, ..ModelDoc::default() })).collect();
    for mut specs in commits {
        specs.sort_by_key(|spec| spec.key);
        specs.dedup_by_key(|spec| spec.key);
        let writes: Vec<Write> =
            specs.iter().map(|spec| to_write(ids[spec.key].clone(), &model[&spec.key], spec)).collect();
        let mut expected = model.clone();
        let mut expected_conflict = None;
        for (index, spec) in specs.iter().enumerate() {
            match model_write(&expected[&spec.key], spec) {
                Ok(next) => {
                    expected.insert(spec.key, next);
                }
                Err(kind) => {
                    expected_conflict = Some((index, kind));
                    break;
                }
            }
        }
        let outcome = store.commit(Commit::new(writes)).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
        match (&outcome, expected_conflict) {
            (CommitOutcome::Committed { .. }, None) => model = expected,
            (CommitOutcome::Conflict(conflict), Some((index, kind))) => {
                prop_assert_eq!(conflict.write_index, index);
                prop_assert_eq!(conflict.kind, kind);
            }
            (outcome, expected) => {
                prop_assert!(false, "store said {:?}, model expected conflict {:?}", outcome, expected)
            }
        }
        let docs = store.get_many(&ids).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (n, document) in docs.iter().enumerate() {
            let want = &model[&n];
            prop_assert_eq!(&document.value, &want.value, "value of k{}", n);
            prop_assert_eq!(document.version, want.version, "version of k{}", n);
            prop_assert_eq!(document.lease.epoch, want.epoch, "epoch of k{}", n);
            prop_assert_eq!(document.lease.holder.clone(), want.holder.map(holder), "holder of k{}", n);
            let inbox: Vec<(u64, Value)> = document.inbox.iter().map(|m| (m.seq, m.body.clone())).collect();
            prop_assert_eq!(&inbox, &want.inbox, "inbox of k{}", n);
        }
    }
    for (n, id) in ids.iter().enumerate() {
        let versions = store
            .list_versions(id, &VersionQuery { before_version: None, limit: 1_000 })
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want: Vec<u64> = model[&n].history.iter().rev().map(|(version, _)| *version).collect();
        prop_assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), want, "history of k{}", n);
        for (version, value) in &model[&n].history {
            let record = store.get_version(id, *version).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(record.map(|r| r.value), Some(value.clone()), "k{} version {}", n, version);
        }
    }
    Ok(())
}

/// Runs the model test on one backend: `cases` random sequences of up to 40 commits, each in its
/// own named store within one opened backend.
fn check_backend(opened: crate::backends::TestStore, runtime: &tokio::runtime::Runtime, cases: u32) {
    let counter = std::sync::atomic::AtomicU64::new(0);
    let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(commits in prop::collection::vec(commit_strategy(), 1..40))| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = StoreName::new(format!("model-{n}")).expect("name");
        runtime.block_on(run_sequence(opened.store.clone(), name, commits))?;
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

#[test]
fn random_operation_sequences_match_the_model_on_memory() {
    let runtime = runtime();
    let opened = runtime.block_on(crate::backends::memory(Default::default()));
    check_backend(opened, &runtime, 256);
}

#[test]
fn random_operation_sequences_match_the_model_on_sqlite() {
    let runtime = runtime();
    let opened = runtime.block_on(crate::backends::sqlite(Default::default()));
    check_backend(opened, &runtime, 48);
}

#[test]
#[cfg_attr(hoard_postgres_tests_skipped, ignore = "PostgreSQL tests opted out (HOARD_TEST_POSTGRES_URL=skip)")]
fn random_operation_sequences_match_the_model_on_postgres() {
    let runtime = runtime();
    let opened = runtime.block_on(crate::backends::postgres(Default::default()));
    check_backend(opened, &runtime, 48);
}
