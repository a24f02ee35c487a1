//! Inbox arrivals on the receiving side: notifications wake the holder's session, which reads
//! its inbox. Checks coalesce per key and their store reads are bounded, so a burst of
//! notifications cannot turn into a burst of reads. Paused time on the memory store.

use std::sync::Arc;
use std::time::Duration;

use hoard::engine::{Engine, EngineConfig, TOPIC_INBOX};
use hoard::store::memory::MemoryStore;
use hoard::store::{DocId, Notification, SharedStore};
use serde_json::json;

use crate::engine_sessions::players;
use crate::probe_store::ProbeStore;

const KEYS: usize = 100;
const NOTIFICATIONS: usize = 10_000;

#[tokio::test(start_paused = true)]
async fn a_burst_of_ten_thousand_inbox_notifications_keeps_store_reads_in_flight_under_their_limit() {
    let probe = Arc::new(ProbeStore::new(Arc::new(MemoryStore::new())));
    let store: SharedStore = probe.clone();
    let engine = Engine::open(store.clone(), EngineConfig { server_label: "inbox".into(), ..EngineConfig::default() })
        .await
        .expect("open");
    let mut sessions = Vec::with_capacity(KEYS);
    for n in 0..KEYS {
        sessions.push(engine.start_session(&players(), &format!("burst-{n}")).await.expect("start"));
    }
    engine.send_message(sessions[0].id(), json!({"gift": "rose"})).await.expect("send");
    let ids: Vec<DocId> = sessions.iter().map(|s| s.id().clone()).collect();
    let reads_before = probe.reads();
    probe.delay_reads(100);
    for n in 0..NOTIFICATIONS {
        let payload = serde_json::to_string(&ids[n % KEYS]).expect("id as JSON");
        store.notify(Notification { topic: TOPIC_INBOX.to_string(), payload }).await.expect("notify");
        if n % 100 == 99 {
            // Let the engine's listener take what arrived, so every notification is delivered.
            tokio::task::yield_now().await;
        }
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    let in_flight_max = probe.reads_in_flight_max();
    let limit = engine.config().inbox_checks_in_flight_max as u64;
    assert!(in_flight_max <= limit, "{in_flight_max} inbox reads in flight at once, over the limit of {limit}");
    assert!(in_flight_max > 1, "the reads did run concurrently (the limit, not luck, bounded them)");
    let reads = probe.reads() - reads_before;
    assert!(
        reads <= 2 * KEYS as u64,
        "{reads} reads for {NOTIFICATIONS} notifications of {KEYS} keys: checks coalesce"
    );
    assert_eq!(sessions[0].read(|p| p.gifts.clone()), vec!["rose".to_string()], "the message was applied, once");
}
