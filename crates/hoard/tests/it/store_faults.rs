//! The fault wrapper over every backend: hidden outcomes are resolved by reading back, and the
//! same seed injects the same faults.

use std::sync::Arc;

use hoard::store::fault::{FaultConfig, FaultStore};
use hoard::store::{
    Commit, Condition, HolderId, LeaseOp, SharedStore, Store, StoreError, VersionQuery, Write, get,
    resolve_unknown_commit,
};
use serde_json::json;

use crate::backends::TestStore;
use crate::store_conformance::{commit_ok, doc};

fn faulty(inner: SharedStore, config: FaultConfig) -> FaultStore {
    FaultStore::new(inner, config)
}

pub async fn hidden_commit_outcome_is_visible_on_read_back_and_history_agrees(t: TestStore) {
    let inner = t.store.clone();
    let id = doc("players", "hidden");
    commit_ok(&*inner, vec![Write::put(id.clone(), json!({"coins": 1}))]).await;
    let store = faulty(inner.clone(), FaultConfig { error_after_apply: 1.0, ..FaultConfig::none(7) });
    let commit = Commit::single(Write::put(id.clone(), json!({"coins": 2})).when(Condition::Version(1)));
    let error = store.commit(commit.clone()).await.expect_err("the answer is hidden");
    assert!(matches!(error, StoreError::OutcomeUnknown { .. }), "got {error:?}");
    assert!(error.may_have_applied());
    assert_eq!(resolve_unknown_commit(&*inner, &commit).await.expect("read back"), Some(true));
    let document = get(&*inner, &id).await.expect("read");
    assert_eq!(document.value, Some(json!({"coins": 2})));
    let versions = inner.list_versions(&id, &VersionQuery::default()).await.expect("history");
    assert_eq!(versions[0].commit_id, commit.id, "history names the hidden commit");
    assert_eq!(versions.len(), 2);
    // Later commits bury it, and read-back still finds it in history.
    commit_ok(&*inner, vec![Write::put(id.clone(), json!({"coins": 3}))]).await;
    assert_eq!(resolve_unknown_commit(&*inner, &commit).await.expect("read back"), Some(true));
    assert_eq!(store.counts().errors_after_apply, 1);
}

pub async fn commit_refused_before_apply_is_absent_on_read_back(t: TestStore) {
    let inner = t.store.clone();
    let id = doc("players", "refused");
    let store = faulty(inner.clone(), FaultConfig { error_before_apply: 1.0, ..FaultConfig::none(7) });
    let commit = Commit::single(Write::put(id.clone(), json!("never")));
    let error = store.commit(commit.clone()).await.expect_err("refused");
    assert!(matches!(error, StoreError::Unavailable { .. }), "got {error:?}");
    assert!(!error.may_have_applied());
    assert_eq!(resolve_unknown_commit(&*inner, &commit).await.expect("read back"), Some(false));
    assert!(!get(&*inner, &id).await.expect("read").exists());
    assert!(inner.list_versions(&id, &VersionQuery::default()).await.expect("history").is_empty());
    assert_eq!(store.counts().errors_before_apply, 1);
}

pub async fn hidden_lease_acquisition_is_resolved_by_reading_the_holder(t: TestStore) {
    let inner = t.store.clone();
    let id = doc("players", "hidden-lease");
    let holder = HolderId::new("server-hidden").expect("holder");
    let store = faulty(inner.clone(), FaultConfig { error_after_apply: 1.0, ..FaultConfig::none(3) });
    let commit =
        Commit::single(Write::new(id.clone()).when(Condition::LeaseFree).lease(LeaseOp::Acquire(holder.clone())));
    assert!(store.commit(commit.clone()).await.is_err());
    assert_eq!(resolve_unknown_commit(&*inner, &commit).await.expect("read back"), Some(true));
    let never = Commit::single(Write::new(doc("players", "other")).lease(LeaseOp::Acquire(holder)));
    assert_eq!(resolve_unknown_commit(&*inner, &never).await.expect("read back"), Some(false));
}

crate::backends::backend_suite! {
    config: Default::default();
    backends: [memory, sqlite, postgres];
    cases: [
        hidden_commit_outcome_is_visible_on_read_back_and_history_agrees,
        commit_refused_before_apply_is_absent_on_read_back,
        hidden_lease_acquisition_is_resolved_by_reading_the_holder,
    ]
}

/// The same seed and the same calls inject the same faults: runs replay exactly.
#[tokio::test(start_paused = true)]
async fn same_seed_injects_the_same_faults() {
    async fn run(seed: u64) -> Vec<String> {
        let store = FaultStore::new(Arc::new(hoard::store::memory::MemoryStore::new()), FaultConfig::harsh(seed));
        let mut trace = Vec::new();
        for n in 0..300 {
            let id = doc("players", &format!("p{}", n % 7));
            let result = store.commit(Commit::single(Write::put(id.clone(), json!(n)))).await;
            trace
                .push(format!("{:?}", result.map(|outcome| outcome.is_committed()).map_err(|error| error.to_string())));
            trace.push(format!(
                "{:?}",
                store.get_many(&[id]).await.map(|docs| docs[0].version).map_err(|error| error.to_string())
            ));
        }
        trace
    }
    let first = run(42).await;
    assert_eq!(first, run(42).await);
    assert_ne!(first, run(43).await, "a different seed gives different faults");
    assert!(first.iter().any(|line| line.contains("unknown")), "harsh faults hide some outcomes");
}
