//! The smallest run of every workload through the library API, on the memory and SQLite stores:
//! the JSON report must carry every figure, including the over-HTTP rows (a `hoard serve` in
//! process) and their in-process comparison. Speed is never asserted.

use hoard_bench::report::WORKLOADS;
use hoard_bench::{BenchConfig, BenchSize, TargetSpec, run};
use serde_json::Value;

const FIGURE_FIELDS: [&str; 7] =
    ["operations", "failures", "elapsed_s", "throughput_per_s", "latency_p50_ms", "latency_p99_ms", "latency_max_ms"];

fn assert_figures(row: &Value, side: &str) {
    let figures = &row[side];
    for field in FIGURE_FIELDS {
        assert!(figures[field].is_number(), "{} on {}: {side}.{field} missing in {row}", row["workload"], row["store"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_run_reports_every_figure_on_memory_and_sqlite() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let config = BenchConfig {
        size: BenchSize::Smoke,
        targets: vec![TargetSpec::Memory, TargetSpec::Sqlite { folder: folder.path().to_path_buf() }],
        progress: false,
        only: Vec::new(),
    };
    let report = run(&config).await.expect("the bench runs");
    let json = serde_json::to_value(&report).expect("the report is JSON");
    for key in ["hoard_version", "size", "profile_stored_bytes", "baseline_clients", "machine", "total_elapsed_s"] {
        assert!(!json[key].is_null(), "report field {key} missing");
    }
    let rows = json["results"].as_array().expect("results");
    for store in ["memory", "sqlite"] {
        for workload in WORKLOADS {
            let row = rows
                .iter()
                .find(|row| row["workload"] == workload && row["store"] == store)
                .unwrap_or_else(|| panic!("no row for {workload} on {store}"));
            assert!(row["error"].is_null(), "{workload} on {store} failed: {}", row["error"]);
            assert!(row["not_measured"].is_null(), "{workload} on {store} not measured: {}", row["not_measured"]);
            assert_figures(row, "hoard");
            assert_eq!(row["hoard"]["failures"], 0, "{workload} on {store}: {row}");
            let over_http = workload.starts_with("over_http/");
            let has_baseline = over_http
                || store == "sqlite"
                    && ["autosave_storm", "session_cycle", "trades", "receipts", "shutdown"].contains(&workload);
            if has_baseline {
                assert_figures(row, "baseline");
                assert!(row["ratio"].is_number(), "{workload} on {store}: ratio missing");
            }
            if over_http {
                // The baseline of an over-HTTP row is the in-process row's hoard figures.
                let in_process_name = workload.trim_start_matches("over_http/");
                let in_process = rows
                    .iter()
                    .find(|row| row["workload"] == in_process_name && row["store"] == store)
                    .unwrap_or_else(|| panic!("no in-process row {in_process_name} on {store}"));
                assert_eq!(row["baseline"], in_process["hoard"], "{workload} on {store}");
                let met = &row["goal"]["met"];
                assert_eq!(met.is_boolean(), store != "memory", "{workload} on {store}: goal {met}");
            }
        }
    }
    let memory_row = rows.iter().find(|row| row["workload"] == "memory" && row["store"] == "sqlite").expect("memory");
    assert!(memory_row["extra"]["rss_bytes_per_session"].is_number());
    // The run removed its SQLite file.
    let left: Vec<_> = std::fs::read_dir(folder.path()).expect("folder").collect();
    assert!(left.is_empty(), "the bench left files behind: {left:?}");

    let plots = tempfile::tempdir().expect("plots folder");
    let written = hoard_bench::svg::write_plots(&report, plots.path()).expect("plots");
    assert_eq!(written.len(), WORKLOADS.len() + 1);
    assert!(written.iter().all(|path| path.exists()));
    assert!(plots.path().join("over_http-trades.svg").exists());
    let table = report.table();
    assert!(table.contains("autosave_storm"));
    assert!(table.contains("over_http/session_cycle"));
}
