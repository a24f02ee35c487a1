//! Workload 7b, the autosave storm through batched `sync`: what a Roblox game server (via
//! `clients/roblox`) does each autosave interval, against the in-process autosave storm of the
//! same run.
//!
//! `SYNC_BENCH_SERVERS` game servers (holders, registered with `POST /v1/holders`) share the
//! same N sessions of the same ~8 KiB bench profile as workload 1 (session i belongs to server
//! i mod K, each started with `POST /v1/sessions/start`). In the measured round every session is
//! dirty, and each server sends its sessions in `POST /v1/holders/{holder}/sync` requests of at
//! most `SYNC_SESSIONS_MAX` entries (`{token, base_version, value, ack_inbox_through}`), every
//! request of every server at once (the storm's worst case, as in workload 1). The requests go
//! over real loopback HTTP (`reqwest`) to a `hoard serve` in this process on the target's store
//! (`over_http::start_server`: same store handle, engine key, limiter raised out of the way).
//!
//! The request bodies are encoded before the storm starts: in a deployment the game server
//! encodes on its own machine, while here client and server share the cores. A save is counted
//! when its sync's answer says `saved`; its latency runs from the storm's start until that
//! answer arrived (as in workload 1). `requests_per_save` (requests ÷ saves) is what a game
//! server's request budget (Roblox: 500 a minute) pays per save.
//!
//! Invariant: the row exists on every target, measured or saying why not (a server that did not
//! start, a failed setup, no in-process figure); the holders are released and the server shut
//! down before the target is removed.

use std::time::Instant;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use hoard_server::routes::sync::{SYNC_SESSIONS_MAX, SyncAnswer, SyncOutcome};
use serde_json::{Value, json};

use crate::latency::{Figures, LatencyRecorder};
use crate::profile::{bench_profile, stored_text_of};
use crate::progress::Progress;
use crate::report::WorkloadResult;
use crate::target::Target;
use crate::workloads::over_http::{BenchServer, HTTP_STORE_PREFIX, start_server};
use crate::workloads::{
    SESSION_STARTS_IN_FLIGHT_MAX, autosave, commits_per_transaction, key_name, measured_row, seed_profiles, store_name,
};
use crate::{BenchError, Sizes};

/// The name `hoard bench --only` takes.
pub const NAME: &str = "autosave_sync";
/// The row's workload name.
pub const ROW: &str = "over_http/autosave_sync";
/// Game servers (holders) sharing the sessions: the quick run's 2,000 sessions are 200 per
/// server, one full `sync` each; the full run's 10,000 are 1,000 per server, five syncs each.
pub const SYNC_BENCH_SERVERS: usize = 10;
/// The named store (under the HTTP prefix) the sessions live in.
pub const SYNC_BENCH_STORE: &str = "autosave_sync";

pub async fn run(target: &Target, sizes: &Sizes, progress: &Progress, in_process: &[WorkloadResult]) -> WorkloadResult {
    let backend = target.spec.name();
    let server = match start_server(target.store.clone()).await {
        Ok(server) => server,
        Err(error) => {
            let mut row = WorkloadResult::new(ROW, backend);
            row.error = Some(error.to_string());
            return row;
        }
    };
    let in_process_row = in_process.iter().find(|row| row.workload == autosave::NAME && row.store == backend);
    let mut row = measured_row(ROW, backend, async |result| {
        let figures = measure(target, &server, sizes, progress, result).await?;
        super::over_http::compare_with_in_process(result, figures, autosave::NAME, in_process_row, backend);
        Ok(())
    })
    .await;
    if let Err(error) = server.stop().await {
        row.error.get_or_insert_with(|| error.to_string());
    }
    row
}

/// One started session: its token (sent back as is) and version.
struct Started {
    server: usize,
    token: Value,
    version: u64,
}

/// The game servers' HTTP side: one client (its connection pool) and the bench key.
struct Client {
    http: reqwest::Client,
    base_url: String,
    authorization: String,
}

impl Client {
    /// POSTs `body` (JSON text) to `path`; the answer's JSON, or why not.
    async fn post(&self, path: &str, body: Vec<u8>) -> Result<Value, String> {
        let answer = self
            .http
            .post(format!("{}{path}", self.base_url))
            .header("authorization", &self.authorization)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|error| format!("POST {path}: {error}"))?;
        let status = answer.status();
        let bytes = answer.bytes().await.map_err(|error| format!("POST {path}: read the answer: {error}"))?;
        if !status.is_success() {
            return Err(format!("POST {path}: {status}: {}", String::from_utf8_lossy(&bytes)));
        }
        serde_json::from_slice(&bytes).map_err(|error| format!("POST {path}: the answer is not JSON: {error}"))
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<Value, String> {
        let text = serde_json::to_vec(body).map_err(|error| format!("POST {path}: encode the body: {error}"))?;
        self.post(path, text).await
    }
}

/// Sets up the servers and sessions, runs the storm, releases the holders; returns the figures.
async fn measure(
    target: &Target,
    server: &BenchServer,
    sizes: &Sizes,
    progress: &Progress,
    result: &mut WorkloadResult,
) -> Result<Figures, BenchError> {
    let count = sizes.autosave_sessions;
    let servers = SYNC_BENCH_SERVERS.min(count).max(1);
    let backend = target.spec.name();
    let label = |phase: &str| format!("{backend} {ROW}: {phase}");
    let store = store_name(&format!("{HTTP_STORE_PREFIX}{SYNC_BENCH_STORE}"))?;
    seed_profiles(&target.store, &store, count, &progress.bar(count, label("seed"))).await?;
    let http = reqwest::Client::builder()
        .build()
        .map_err(|error| BenchError::Setup(format!("build the HTTP client: {error}")))?;
    let client = Client { http, base_url: server.base_url.clone(), authorization: format!("Bearer {}", server.secret) };
    let setup = |error: String| BenchError::Setup(error);

    let mut holders = Vec::with_capacity(servers);
    for index in 0..servers {
        let answer =
            client.post_json("/v1/holders", &json!({ "label": format!("sync{index}") })).await.map_err(setup)?;
        let holder =
            answer.get("holder").and_then(Value::as_str).ok_or_else(|| setup("no holder in the answer".into()))?;
        holders.push(holder.to_string());
    }

    let start_bar = progress.bar(count, label("start"));
    let started: Vec<Started> = stream::iter(0..count)
        .map(|index| {
            let (client, holders, store, bar) = (&client, &holders, &store, &start_bar);
            async move {
                let server = index % holders.len();
                let body = json!({ "store": store.as_str(), "key": key_name(index), "holder": holders[server] });
                let answer = client.post_json("/v1/sessions/start", &body).await?;
                bar.inc(1);
                let token = answer.get("token").cloned().ok_or("no token in the start answer")?;
                let version = answer.get("version").and_then(Value::as_u64).ok_or("no version in the start answer")?;
                Ok::<_, String>(Started { server, token, version })
            }
        })
        .buffered(SESSION_STARTS_IN_FLIGHT_MAX)
        .try_collect()
        .await
        .map_err(|error| BenchError::Setup(format!("start a session: {error}")))?;
    start_bar.finish_and_clear();

    // Every session dirty, as in workload 1: the bench profile with one change.
    let mut dirty = bench_profile();
    dirty.changes += 1;
    let value: Value = serde_json::from_str(&stored_text_of(&dirty))
        .map_err(|error| BenchError::Setup(format!("encode the profile: {error}")))?;
    let mut requests: Vec<(String, usize, Vec<u8>)> = Vec::new();
    for (server, holder) in holders.iter().enumerate() {
        let mine: Vec<&Started> = started.iter().filter(|session| session.server == server).collect();
        for chunk in mine.chunks(SYNC_SESSIONS_MAX) {
            let entries: Vec<Value> = chunk
                .iter()
                .map(|session| {
                    json!({ "token": session.token, "base_version": session.version, "value": value, "ack_inbox_through": 0 })
                })
                .collect();
            let body = serde_json::to_vec(&json!({ "sessions": entries }))
                .map_err(|error| BenchError::Setup(format!("encode a sync: {error}")))?;
            requests.push((format!("/v1/holders/{holder}/sync"), chunk.len(), body));
        }
    }
    let request_count = requests.len();
    let request_bytes: usize = requests.iter().map(|(_, _, body)| body.len()).sum();

    let stats_before = target.store.group_commit_stats();
    let bar = progress.bar(count, label("hoard"));
    let storm_started = Instant::now();
    let answers = futures_util::future::join_all(requests.into_iter().map(|(path, sessions, body)| {
        let (client, bar) = (&client, &bar);
        async move {
            let answer = client.post(&path, body).await;
            let latency = storm_started.elapsed();
            bar.inc(sessions as u64);
            (sessions, latency, answer)
        }
    }))
    .await;
    let elapsed = storm_started.elapsed();
    bar.finish_and_clear();
    let stats_after = target.store.group_commit_stats();

    let mut recorder = LatencyRecorder::new();
    let mut first_error = None;
    for (sessions, latency, answer) in answers {
        let saved = match answer.and_then(|answer| {
            serde_json::from_value::<SyncAnswer>(answer).map_err(|error| format!("a sync answer: {error}"))
        }) {
            Ok(answer) => {
                let saved = answer.sessions.iter().filter(|session| session.outcome == SyncOutcome::Saved).count();
                if let Some(unsaved) = answer.sessions.iter().find(|session| session.outcome != SyncOutcome::Saved) {
                    first_error
                        .get_or_insert_with(|| format!("{}: {:?} {:?}", unsaved.key, unsaved.outcome, unsaved.error));
                }
                saved
            }
            Err(error) => {
                first_error.get_or_insert(error);
                0
            }
        };
        for _ in 0..saved {
            recorder.record(latency);
        }
        for _ in saved..sessions {
            recorder.record_failure();
        }
    }
    if let Some(error) = &first_error {
        eprintln!("hoard bench: {ROW}: a save failed: {error}");
    }

    // The keys are free again at once, for whatever runs next on this database.
    for holder in &holders {
        let _ = client.post(&format!("/v1/holders/{holder}/release"), b"{}".to_vec()).await;
    }

    let saves = recorder.count() as f64;
    result.hoard_setup = format!(
        "{count} live sessions over {servers} game servers (holders), all dirty; each server sends its sessions in POST /v1/holders/{{holder}}/sync requests of at most {SYNC_SESSIONS_MAX} (SYNC_SESSIONS_MAX), all {request_count} requests at once over loopback HTTP (reqwest, bodies encoded before the storm, {:.1} KiB each on average) to hoard serve in this process (engine key, limiter raised out of the way; client and server share the cores)",
        request_bytes as f64 / request_count.max(1) as f64 / 1024.0
    );
    result.extra.insert("requests".into(), request_count as f64);
    result.extra.insert("servers".into(), servers as f64);
    if saves > 0.0 {
        result.extra.insert("requests_per_save".into(), request_count as f64 / saves);
    }
    let mut note = format!(
        "{request_count} requests for {saves:.0} saves ({:.3} requests per save; {} per server per round)",
        request_count as f64 / saves.max(1.0),
        request_count.div_ceil(servers)
    );
    if let Some((per_transaction, transactions)) = commits_per_transaction(stats_before, stats_after) {
        result.extra.insert("commits_per_transaction".into(), per_transaction);
        result.extra.insert("transactions".into(), transactions);
        note.push_str(&format!("; {per_transaction:.1} saves per database transaction"));
    }
    result.note = note;
    Ok(recorder.figures(elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_is_in_the_report_order_and_selectable() {
        assert!(crate::report::WORKLOADS.contains(&ROW));
        assert!(crate::workloads::SELECTABLE.contains(&NAME));
        assert!(crate::workloads::OVER_HTTP_COMPARES_WITH.contains(&autosave::NAME));
    }
}
