//! The smallest run of every workload through the library API, on the memory and SQLite stores:
//! the JSON report must carry every figure, including the over-HTTP rows (a `hoard serve` in
//! process) and their in-process comparison. Speed is never asserted.

use hoard_bench::latency::Figures;
use hoard_bench::report::{Curve, CurvePoint, Goal, Report, WORKLOADS, WorkloadResult};
use hoard_bench::svg::{curve_plot, summary_plot, text_boxes, workload_plot};
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
            if workload == "storage" && store == "memory" {
                // The memory store has no size on disk; the row says so instead of a figure.
                assert!(row["not_measured"].is_string(), "storage on memory: {row}");
            } else {
                assert!(row["not_measured"].is_null(), "{workload} on {store} not measured: {}", row["not_measured"]);
            }
            if store == "sqlite" && ["autosave_storm", "trades", "receipts"].contains(&workload) {
                assert_figures(row, "json_baseline");
                assert!(row["json_ratio"].is_number(), "{workload} on {store}: JSON-backend ratio missing");
            }
            assert_figures(row, "hoard");
            assert_eq!(row["hoard"]["failures"], 0, "{workload} on {store}: {row}");
            let over_http = workload.starts_with("over_http/");
            let has_baseline = over_http
                || store == "sqlite"
                    && ["autosave_storm", "session_cycle", "trades", "receipts", "shutdown"].contains(&workload)
                || workload == "cross_trades";
            if has_baseline {
                assert_figures(row, "baseline");
                assert!(row["ratio"].is_number(), "{workload} on {store}: ratio missing");
            }
            if over_http {
                // The baseline of an over-HTTP row is the in-process row's hoard figures.
                // The batched-sync storm is compared with the autosave storm; the others are
                // named after their in-process workload.
                let in_process_name = if workload == hoard_bench::workloads::over_http_sync::ROW {
                    hoard_bench::workloads::autosave::NAME
                } else {
                    workload.trim_start_matches("over_http/")
                };
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
    let storage = rows.iter().find(|row| row["workload"] == "storage" && row["store"] == "sqlite").expect("storage");
    for figure in ["store_bytes_after_load", "history_bytes_per_save", "history_share_of_profile"] {
        assert!(
            storage["extra"][figure].as_f64().is_some_and(|bytes| bytes > 0.0),
            "storage on sqlite: {figure} in {storage}"
        );
    }
    assert_eq!(report.curves.len(), 4, "two curves per store");
    for curve in report.curves.iter().filter(|curve| curve.store == "sqlite") {
        assert!(curve.errors.is_empty(), "{} on sqlite: {:?}", curve.name, curve.errors);
        assert!(
            curve.points.iter().all(|point| point.hoard.is_some() && point.json_baseline.is_some()),
            "{} on sqlite: every point has both sides",
            curve.name
        );
    }
    let memory_row = rows.iter().find(|row| row["workload"] == "memory" && row["store"] == "sqlite").expect("memory");
    assert!(memory_row["extra"]["rss_bytes_per_session"].is_number());
    // The run removed its SQLite file.
    let left: Vec<_> = std::fs::read_dir(folder.path()).expect("folder").collect();
    assert!(left.is_empty(), "the bench left files behind: {left:?}");

    let plots = tempfile::tempdir().expect("plots folder");
    let written = hoard_bench::svg::write_plots(&report, plots.path()).expect("plots");
    assert_eq!(
        written.len(),
        WORKLOADS.len() + report.curves.len() / 2 + 1,
        "a plot per workload, per curve, and the summary"
    );
    assert!(plots.path().join("throughput_by_clients.svg").exists());
    assert!(plots.path().join("save_cost_by_profile_size.svg").exists());
    for path in &written {
        assert_text_stays_on_the_canvas_and_apart(
            &std::fs::read_to_string(path).expect("plot"),
            &path.display().to_string(),
        );
    }
    assert!(written.iter().all(|path| path.exists()));
    assert!(plots.path().join("over_http-trades.svg").exists());
    let sync = rows
        .iter()
        .find(|row| row["workload"] == hoard_bench::workloads::over_http_sync::ROW && row["store"] == "sqlite")
        .expect("the batched-sync row");
    assert!(sync["extra"]["requests_per_save"].as_f64().is_some_and(|share| share > 0.0), "{sync}");
    let table = report.table();
    assert!(table.contains("autosave_storm"));
    assert!(table.contains("over_http/session_cycle"));
}

/// Every text of `svg` lies inside its canvas and overlaps no other text.
fn assert_text_stays_on_the_canvas_and_apart(svg: &str, name: &str) {
    let ((width, height), boxes) = text_boxes(svg);
    assert!(width > 0.0 && height > 0.0, "{name}: no canvas size");
    assert!(!boxes.is_empty(), "{name}: no text at all");
    for text in &boxes {
        assert!(
            text.left >= 0.0 && text.top >= 0.0 && text.right <= width && text.bottom <= height,
            "{name}: {text:?} leaves the {width} x {height} canvas"
        );
    }
    for (index, first) in boxes.iter().enumerate() {
        for second in &boxes[index + 1..] {
            assert!(!first.overlaps(second), "{name}: {first:?} runs into {second:?}");
        }
    }
}

fn figures(throughput_per_s: f64, p99_ms: f64) -> Figures {
    Figures {
        operations: 1_000,
        failures: 0,
        elapsed_s: 1.0,
        throughput_per_s,
        latency_p50_ms: p99_ms / 3.0,
        latency_p99_ms: p99_ms,
        latency_max_ms: p99_ms * 7.0,
    }
}

/// A report with every workload on three stores, long names, figures across many decades, a
/// failure and missing measurements: what a plot must lay out without a word off the canvas.
fn crowded_report() -> Report {
    let mut results = Vec::new();
    for (index, workload) in WORKLOADS.iter().enumerate() {
        for (store, scale) in [("postgres", 1.0), ("sqlite", 13.7), ("memory", 0.003)] {
            let mut row = WorkloadResult::new(workload, store)
                .with_figures(figures(123_456.0 * scale, 1_234.5 * scale), Some(figures(98_765.4 / scale, 0.05)));
            row = row.with_json_baseline("json".into(), figures(7.0 + index as f64, 999.0));
            row.goal = Some(Goal { text: "a goal".into(), met: Some(index % 2 == 0) });
            if index == 3 && store == "sqlite" {
                row.error =
                    Some("the database went away while the workload was running, and this message is long".into());
            }
            if index == 5 && store == "memory" {
                row.not_measured = Some("not measured: no /proc/self/status on this system, so nothing to say".into());
            }
            results.push(row);
        }
    }
    let curve = |name: &str, store: &str, xs: &[f64]| Curve {
        name: name.into(),
        store: store.into(),
        title: "a curve whose title is long enough to need measuring before it is drawn on the canvas".into(),
        x_label: "concurrent clients".into(),
        y_label: "saves per second".into(),
        points: xs
            .iter()
            .enumerate()
            .map(|(index, x)| CurvePoint {
                x: *x,
                hoard: (index != 2).then_some(1_000.0 * (index as f64 + 1.0)),
                json_baseline: Some(if index % 2 == 0 { 1_000.0 * (index as f64 + 1.0) } else { 5.0 }),
            })
            .collect(),
        errors: vec!["hoard at 4 clients: 3 saves failed".into()],
    };
    Report {
        hoard_version: "0".into(),
        size: "quick".into(),
        profile_stored_bytes: 8_192,
        baseline_clients: 16,
        machine: hoard_bench::report::Machine { cores: 2, os: "linux".into() },
        results,
        curves: vec![
            curve("throughput_by_clients", "postgres", &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            curve("throughput_by_clients", "sqlite", &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            curve("save_cost_by_profile_size", "sqlite", &[1.0, 4.0, 16.0, 64.0, 256.0]),
        ],
        total_elapsed_s: 1.0,
    }
}

#[test]
fn every_plot_of_a_crowded_report_keeps_its_text_on_the_canvas_and_apart() {
    let report = crowded_report();
    for workload in WORKLOADS {
        let rows: Vec<&WorkloadResult> = report.results.iter().filter(|row| row.workload == workload).collect();
        assert_text_stays_on_the_canvas_and_apart(&workload_plot(workload, &rows), workload);
    }
    assert_text_stays_on_the_canvas_and_apart(&summary_plot(&report), "summary");
    for name in ["throughput_by_clients", "save_cost_by_profile_size"] {
        let curves: Vec<&Curve> = report.curves.iter().filter(|curve| curve.name == name).collect();
        let svg = curve_plot(&curves);
        assert_text_stays_on_the_canvas_and_apart(&svg, name);
        let measured: usize = curves
            .iter()
            .flat_map(|curve| curve.points.iter())
            .map(|point| usize::from(point.hoard.is_some()) + usize::from(point.json_baseline.is_some()))
            .sum();
        assert_eq!(svg.matches("<circle").count(), measured, "{name}: a marker for every measured point");
    }
}

#[test]
fn the_text_check_catches_a_title_wider_than_the_canvas() {
    // The check itself must be able to fail: a hand-made plot with a title running off the edge.
    let svg = r#"<svg xmlns="http://www.w3.org/2000/svg" width="100" height="50"><text x="10" y="20" font-size="18" text-anchor="start">a title far too long for this canvas</text></svg>"#;
    let ((width, _), boxes) = text_boxes(svg);
    assert_eq!(boxes.len(), 1);
    assert!(boxes[0].right > width);
    let overlapping = r#"<svg width="300" height="50"><text x="10" y="20" font-size="12" text-anchor="start">first label</text><text x="40" y="22" font-size="12" text-anchor="start">second</text></svg>"#;
    let (_, boxes) = text_boxes(overlapping);
    assert!(boxes[0].overlaps(&boxes[1]));
}
