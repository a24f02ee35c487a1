//! SVG plots, drawn by hand (no plotting crate): per workload, throughput of hoard beside its
//! baseline and latency percentiles on a log scale, per store; plus a summary of every ratio.
//! An `over_http/<workload>` row is drawn as HTTP beside in process (its baseline), to
//! `over_http-<workload>.svg`.
//!
//! Invariant: a plot is drawn from the report only and every bar carries its value as text, so a
//! chart never shows a figure the table and the JSON do not.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::report::{Report, WorkloadResult};

/// Size of one panel, in SVG user units (pixels).
const PANEL_WIDTH: f64 = 520.0;
const PANEL_HEIGHT: f64 = 300.0;
/// Space around a panel's plotting area for titles and labels.
const PANEL_MARGIN_LEFT: f64 = 70.0;
const PANEL_MARGIN_TOP: f64 = 40.0;
const PANEL_MARGIN_BOTTOM: f64 = 60.0;

const COLOR_HOARD: &str = "#2b6cb0";
const COLOR_BASELINE: &str = "#a0aec0";
const COLORS_HOARD_LATENCY: [&str; 3] = ["#90cdf4", "#3182ce", "#1a365d"];
const COLORS_BASELINE_LATENCY: [&str; 3] = ["#edf2f7", "#a0aec0", "#4a5568"];

struct Bar {
    label: String,
    value: f64,
    color: &'static str,
}

struct Group {
    label: String,
    bars: Vec<Bar>,
}

/// What a workload's two sides are called on its plot: hoard and its baseline, or, over HTTP,
/// hoard through `hoard serve` and hoard in process.
fn side_names(workload: &str) -> (&'static str, &'static str) {
    if workload.starts_with(&format!("{}/", crate::workloads::over_http::NAME)) {
        ("over HTTP", "in process")
    } else {
        ("hoard", "baseline")
    }
}

/// A workload's plot file: its name with `/` as `-` (`over_http-trades.svg`).
pub fn plot_file_name(workload: &str) -> String {
    format!("{}.svg", workload.replace('/', "-"))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn format_value(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Draws grouped bars in a panel whose top-left corner is (`left`, `top`). With `log_scale`,
/// heights follow log10 of the values (latencies span decades).
fn panel(out: &mut String, left: f64, top: f64, title: &str, unit: &str, groups: &[Group], log_scale: bool) {
    let plot_left = left + PANEL_MARGIN_LEFT;
    let plot_top = top + PANEL_MARGIN_TOP;
    let plot_width = PANEL_WIDTH - PANEL_MARGIN_LEFT - 20.0;
    let plot_height = PANEL_HEIGHT - PANEL_MARGIN_TOP - PANEL_MARGIN_BOTTOM;
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="15" font-weight="bold">{}</text>"#,
        left + 10.0,
        top + 22.0,
        escape(title)
    );
    let values: Vec<f64> = groups.iter().flat_map(|g| g.bars.iter().map(|b| b.value)).filter(|v| *v > 0.0).collect();
    let Some(maximum) = values.iter().copied().reduce(f64::max) else {
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="13" fill="#718096">no figures</text>"##,
            plot_left,
            plot_top + plot_height / 2.0
        );
        return;
    };
    let minimum = values.iter().copied().reduce(f64::min).unwrap_or(maximum);
    let (low_decade, high_decade) =
        (minimum.log10().floor() - 0.0, maximum.log10().ceil().max(minimum.log10().floor() + 1.0));
    let height_of = |value: f64| -> f64 {
        if value <= 0.0 {
            return 0.0;
        }
        if log_scale {
            ((value.log10() - low_decade) / (high_decade - low_decade)).clamp(0.0, 1.0) * plot_height
        } else {
            value / maximum * plot_height
        }
    };
    // Axis and grid.
    let _ = writeln!(
        out,
        r##"<line x1="{plot_left:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#4a5568"/>"##,
        plot_top + plot_height,
        plot_left + plot_width,
        plot_top + plot_height
    );
    let ticks: Vec<f64> = if log_scale {
        (low_decade as i32..=high_decade as i32).map(|decade| 10f64.powi(decade)).collect()
    } else {
        (0..=4).map(|step| maximum * f64::from(step) / 4.0).collect()
    };
    for tick in ticks {
        let y = plot_top + plot_height - height_of(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{plot_left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e2e8f0"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="#4a5568">{}</text>"##,
            plot_left + plot_width,
            plot_left - 6.0,
            y + 4.0,
            format_value(tick)
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#4a5568" transform="rotate(-90 {:.1} {:.1})" text-anchor="middle">{}</text>"##,
        left + 14.0,
        plot_top + plot_height / 2.0,
        left + 14.0,
        plot_top + plot_height / 2.0,
        escape(unit)
    );
    let group_width = plot_width / groups.len().max(1) as f64;
    for (group_index, group) in groups.iter().enumerate() {
        let group_left = plot_left + group_width * group_index as f64;
        let bar_width = (group_width * 0.8 / group.bars.len().max(1) as f64).min(60.0);
        let bars_left = group_left + (group_width - bar_width * group.bars.len() as f64) / 2.0;
        for (bar_index, bar) in group.bars.iter().enumerate() {
            let height = height_of(bar.value);
            let x = bars_left + bar_width * bar_index as f64;
            let y = plot_top + plot_height - height;
            let _ = writeln!(
                out,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{height:.1}" fill="{}" stroke="#2d3748" stroke-width="0.5"><title>{}: {}</title></rect>"##,
                bar_width * 0.9,
                bar.color,
                escape(&bar.label),
                format_value(bar.value)
            );
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"##,
                x + bar_width * 0.45,
                y - 3.0,
                format_value(bar.value)
            );
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="end" fill="#4a5568" transform="rotate(-40 {:.1} {:.1})">{}</text>"##,
                x + bar_width * 0.45,
                plot_top + plot_height + 12.0,
                x + bar_width * 0.45,
                plot_top + plot_height + 12.0,
                escape(&bar.label)
            );
        }
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" font-weight="bold" text-anchor="middle">{}</text>"##,
            group_left + group_width / 2.0,
            top + PANEL_HEIGHT - 6.0,
            escape(&group.label)
        );
    }
}

fn document(width: f64, height: f64, body: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}

/// The plot of one workload: throughput (hoard beside baseline) and latency percentiles.
fn workload_plot(workload: &str, results: &[&WorkloadResult]) -> String {
    let (hoard_side, baseline_side) = side_names(workload);
    let mut throughput = Vec::new();
    let mut latency = Vec::new();
    for result in results {
        let mut bars = Vec::new();
        let mut latency_bars = Vec::new();
        for (side, figures, color, shades) in [
            (hoard_side, result.hoard, COLOR_HOARD, COLORS_HOARD_LATENCY),
            (baseline_side, result.baseline, COLOR_BASELINE, COLORS_BASELINE_LATENCY),
        ] {
            let Some(figures) = figures else { continue };
            bars.push(Bar { label: side.into(), value: figures.throughput_per_s, color });
            for ((name, value), shade) in
                [("p50", figures.latency_p50_ms), ("p99", figures.latency_p99_ms), ("max", figures.latency_max_ms)]
                    .into_iter()
                    .zip(shades)
            {
                latency_bars.push(Bar { label: format!("{side} {name}"), value, color: shade });
            }
        }
        let label = match result.ratio {
            Some(ratio) => format!("{} ({ratio:.2}x)", result.store),
            None => result.store.clone(),
        };
        throughput.push(Group { label: label.clone(), bars });
        latency.push(Group { label: result.store.clone(), bars: latency_bars });
    }
    let mut body = String::new();
    let heading = match results.iter().find_map(|r| r.not_measured.clone()) {
        Some(reason) => format!("{workload}: {reason}"),
        None => workload.to_string(),
    };
    let _ = writeln!(body, r#"<text x="10" y="24" font-size="18" font-weight="bold">{}</text>"#, escape(&heading));
    let throughput_title = format!("throughput ({hoard_side} beside {baseline_side})");
    panel(&mut body, 0.0, 30.0, &throughput_title, "operations per second", &throughput, false);
    panel(&mut body, PANEL_WIDTH, 30.0, "latency percentiles (log scale)", "milliseconds", &latency, true);
    document(PANEL_WIDTH * 2.0, PANEL_HEIGHT + 40.0, &body)
}

/// Every hoard/baseline ratio in one chart.
fn summary_plot(report: &Report) -> String {
    let groups: Vec<Group> = report
        .results
        .iter()
        .filter_map(|result| {
            result.ratio.map(|ratio| {
                let (hoard_side, baseline_side) = side_names(&result.workload);
                Group {
                    label: format!("{} {}", result.workload, result.store),
                    bars: vec![Bar {
                        label: format!("{hoard_side} / {baseline_side}"),
                        value: ratio,
                        color: COLOR_HOARD,
                    }],
                }
            })
        })
        .collect();
    let width = (groups.len() as f64 * 90.0 + PANEL_MARGIN_LEFT + 40.0).max(PANEL_WIDTH);
    let mut body = String::new();
    let _ = writeln!(
        body,
        r#"<text x="10" y="24" font-size="18" font-weight="bold">hoard throughput / baseline throughput; over_http: HTTP / in process ({} run)</text>"#,
        escape(&report.size)
    );
    let mut panel_body = String::new();
    panel(&mut panel_body, 0.0, 30.0, "ratio (1.0 = as fast as the baseline)", "ratio", &groups, false);
    // Stretch the standard panel to the summary's width.
    body.push_str(&format!("<g transform=\"scale({:.3} 1)\">\n{panel_body}</g>\n", width / PANEL_WIDTH));
    document(width, PANEL_HEIGHT + 40.0, &body)
}

/// Writes a plot for each workload (`plot_file_name`) and `summary.svg` into `folder`; returns
/// the paths.
pub fn write_plots(report: &Report, folder: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(folder)?;
    let mut written = Vec::new();
    for workload in crate::report::WORKLOADS {
        let results: Vec<&WorkloadResult> = report.results.iter().filter(|r| r.workload == workload).collect();
        if results.is_empty() {
            continue;
        }
        let path = folder.join(plot_file_name(workload));
        std::fs::write(&path, workload_plot(workload, &results))?;
        written.push(path);
    }
    let path = folder.join("summary.svg");
    std::fs::write(&path, summary_plot(report))?;
    written.push(path);
    Ok(written)
}
