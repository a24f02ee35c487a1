//! SVG plots, drawn by hand (no plotting crate): per workload, throughput of hoard beside its
//! baselines and its latency percentiles, per store; a summary of every ratio; and the curves
//! (throughput against clients, cost per save against profile size). An `over_http/<workload>`
//! row is drawn as HTTP beside in process (its baseline), to `over_http-<workload>.svg`.
//!
//! Invariant: a plot is drawn from the report only and every bar and point carries its value as
//! text, so a chart never shows a figure the table and the JSON do not; and every text is placed
//! by its measured size (`text_width`, a deliberately wide estimate of a sans-serif font), never
//! rotated, so none leaves the canvas or runs into another (`text_boxes` reads them back; the
//! bench's tests check every plot).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::report::{Curve, Report, WorkloadResult};

/// Width of every plot, in SVG user units (pixels).
pub const CANVAS_WIDTH: f64 = 960.0;
/// Space around the canvas's edges.
const MARGIN: f64 = 16.0;
const TITLE_FONT: f64 = 18.0;
const PANEL_TITLE_FONT: f64 = 14.0;
const LABEL_FONT: f64 = 12.0;
const VALUE_FONT: f64 = 11.0;
/// Height of one bar row, and the gap between a row's bar and its neighbours.
const ROW_HEIGHT: f64 = 22.0;
const BAR_HEIGHT: f64 = 14.0;
/// Gap between a label and what it labels.
const GAP: f64 = 8.0;
/// Height of a curve's plotting area.
const CURVE_PLOT_HEIGHT: f64 = 260.0;

const COLOR_HOARD: &str = "#2b6cb0";
const COLOR_BASELINE: &str = "#a0aec0";
const COLOR_JSON: &str = "#dd6b20";
const COLOR_TEXT: &str = "#1a202c";
const COLOR_MUTED: &str = "#4a5568";
const COLOR_GRID: &str = "#e2e8f0";
const FONT_FAMILY: &str = "DejaVu Sans, Verdana, Arial, sans-serif";

/// The advance width of `text` at `font_size`, estimated on the wide side of common sans-serif
/// fonts (Verdana, DejaVu Sans), so text laid out by it fits whichever the viewer has.
pub fn text_width(text: &str, font_size: f64) -> f64 {
    let em: f64 = text
        .chars()
        .map(|c| match c {
            'i' | 'l' | 'j' | '!' | '|' | '.' | ',' | ':' | ';' | '\'' => 0.36,
            'f' | 't' | 'r' | 'I' | ' ' | '(' | ')' | '[' | ']' | '-' | '/' => 0.48,
            'm' | 'w' | 'M' | 'W' | '%' => 1.0,
            'A'..='Z' => 0.78,
            '0'..='9' => 0.66,
            'a'..='z' => 0.64,
            _ => 0.9,
        })
        .sum();
    em * font_size
}

/// A text's box: left, top, right, bottom.
#[derive(Clone, Debug, PartialEq)]
pub struct TextBox {
    pub text: String,
    pub left: f64,
    pub top: f64,
    pub right: f64,
    pub bottom: f64,
}

impl TextBox {
    pub fn overlaps(&self, other: &TextBox) -> bool {
        self.left < other.right && other.left < self.right && self.top < other.bottom && other.top < self.bottom
    }
}

fn text_box(text: &str, x: f64, baseline_y: f64, font_size: f64, anchor: &str) -> TextBox {
    let width = text_width(text, font_size);
    let left = match anchor {
        "middle" => x - width / 2.0,
        "end" => x - width,
        _ => x,
    };
    // Ascent and descent of the same fonts, generously.
    TextBox {
        text: text.to_string(),
        left,
        top: baseline_y - font_size,
        right: left + width,
        bottom: baseline_y + font_size * 0.3,
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&")
}

/// The canvas size and the box of every text in `svg` (as written by this module).
pub fn text_boxes(svg: &str) -> ((f64, f64), Vec<TextBox>) {
    let attribute = |element: &str, name: &str| -> Option<String> {
        let start = element.find(&format!(" {name}=\""))? + name.len() + 3;
        let end = element[start..].find('"')? + start;
        Some(element[start..end].to_string())
    };
    let number = |element: &str, name: &str| {
        attribute(element, name).and_then(|text| text.parse::<f64>().ok()).unwrap_or(f64::NAN)
    };
    let header_end = svg.find('>').unwrap_or(0);
    let size = (number(&svg[..header_end], "width"), number(&svg[..header_end], "height"));
    let mut boxes = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find("<text ") {
        let after = &rest[start..];
        let Some(open_end) = after.find('>') else { break };
        let Some(close) = after.find("</text>") else { break };
        let element = &after[..open_end];
        let content = unescape(&after[open_end + 1..close]);
        let anchor = attribute(element, "text-anchor").unwrap_or_else(|| "start".into());
        boxes.push(text_box(
            &content,
            number(element, "x"),
            number(element, "y"),
            number(element, "font-size"),
            &anchor,
        ));
        rest = &after[close..];
    }
    (size, boxes)
}

fn format_value(value: f64) -> String {
    if value >= 1_000.0 {
        let whole = format!("{value:.0}");
        // Thousands separated, as in the table.
        let mut out = String::new();
        for (index, c) in whole.chars().enumerate() {
            if index > 0 && (whole.len() - index) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// An SVG under construction: everything is appended to `body`, and `height` grows as rows are
/// laid out top to bottom.
struct Canvas {
    body: String,
    height: f64,
}

impl Canvas {
    fn new() -> Canvas {
        Canvas { body: String::new(), height: MARGIN }
    }

    // One SVG text element's attributes, each named where it is drawn.
    #[allow(clippy::too_many_arguments)]
    fn text(&mut self, x: f64, y: f64, size: f64, anchor: &str, weight: &str, color: &str, text: &str) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}" fill="{color}">{}</text>"#,
            escape(text)
        );
    }

    /// A heading on its own line, shortened with "…" until it fits the canvas.
    fn heading(&mut self, text: &str, size: f64) {
        let fitted = fit(text, CANVAS_WIDTH - 2.0 * MARGIN, size);
        self.height += size * 1.2;
        self.text(MARGIN, self.height, size, "start", "bold", COLOR_TEXT, &fitted);
        self.height += size * 0.5;
    }

    fn rect(&mut self, x: f64, y: f64, width: f64, height: f64, color: &str) {
        let _ = writeln!(
            self.body,
            r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{height:.1}" fill="{color}" stroke="#2d3748" stroke-width="0.5"/>"##,
            width.max(0.5)
        );
    }

    fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, color: &str, width: f64) {
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{color}" stroke-width="{width}"/>"#
        );
    }

    fn finish(self) -> String {
        let height = self.height + MARGIN;
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{CANVAS_WIDTH:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {CANVAS_WIDTH:.0} {height:.0}\" font-family=\"{FONT_FAMILY}\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{}</svg>\n",
            self.body
        )
    }
}

/// `text`, cut and ended with "…" if it is wider than `width`.
fn fit(text: &str, width: f64, size: f64) -> String {
    if text_width(text, size) <= width {
        return text.to_string();
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate: String = chars.iter().collect::<String>() + "…";
        if text_width(&candidate, size) <= width {
            return candidate;
        }
    }
    String::new()
}

/// One horizontal bar: its label (left), value (drawn at its end) and colour.
struct Row {
    label: String,
    value: f64,
    /// The text at the bar's end (the value, or several).
    value_text: String,
    color: &'static str,
}

/// A panel of horizontal bars, one per row; linear from 0, or log10 when `log_scale`. A
/// `reference` value draws a dashed line (e.g. a ratio of 1).
fn bar_panel(canvas: &mut Canvas, title: &str, rows: &[Row], log_scale: bool, reference: Option<(f64, &str)>) {
    canvas.heading(title, PANEL_TITLE_FONT);
    if rows.is_empty() {
        canvas.height += LABEL_FONT * 1.4;
        canvas.text(MARGIN, canvas.height, LABEL_FONT, "start", "normal", COLOR_MUTED, "no figures");
        canvas.height += LABEL_FONT;
        return;
    }
    let label_width = rows.iter().map(|row| text_width(&row.label, LABEL_FONT)).fold(0.0, f64::max);
    let value_width = rows.iter().map(|row| text_width(&row.value_text, VALUE_FONT)).fold(0.0, f64::max);
    let bars_left = MARGIN + label_width + GAP;
    let bars_width = (CANVAS_WIDTH - MARGIN - value_width - GAP - bars_left).max(40.0);
    let positive: Vec<f64> =
        rows.iter().map(|row| row.value).chain(reference.map(|(value, _)| value)).filter(|v| *v > 0.0).collect();
    let maximum = positive.iter().copied().fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    let minimum = positive.iter().copied().fold(maximum, f64::min);
    let (low, high) = (minimum.log10().floor(), maximum.log10().ceil().max(minimum.log10().floor() + 1.0));
    let length_of = |value: f64| -> f64 {
        if value <= 0.0 {
            0.0
        } else if log_scale {
            // A bar starts one decade below the smallest value, so the smallest is still visible.
            ((value.log10() - (low - 1.0)) / (high - (low - 1.0))).clamp(0.0, 1.0) * bars_width
        } else {
            (value / maximum).clamp(0.0, 1.0) * bars_width
        }
    };
    let top = canvas.height;
    let bottom = top + ROW_HEIGHT * rows.len() as f64;
    if let Some((value, _)) = reference {
        // Drawn first, so bars and their values lie over it.
        let x = bars_left + length_of(value);
        let _ = writeln!(
            canvas.body,
            r#"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="{COLOR_TEXT}" stroke-dasharray="4 3"/>"#
        );
    }
    for (index, row) in rows.iter().enumerate() {
        let row_top = top + ROW_HEIGHT * index as f64;
        let baseline = row_top + ROW_HEIGHT / 2.0 + LABEL_FONT * 0.35;
        canvas.text(bars_left - GAP, baseline, LABEL_FONT, "end", "normal", COLOR_TEXT, &row.label);
        let length = length_of(row.value);
        canvas.rect(bars_left, row_top + (ROW_HEIGHT - BAR_HEIGHT) / 2.0, length, BAR_HEIGHT, row.color);
        canvas.text(
            bars_left + length + GAP / 2.0,
            baseline,
            VALUE_FONT,
            "start",
            "normal",
            COLOR_MUTED,
            &row.value_text,
        );
    }
    canvas.line(bars_left, top, bars_left, bottom, COLOR_MUTED, 1.0);
    if let Some((value, label)) = reference {
        let x = bars_left + length_of(value);
        canvas.height = bottom + LABEL_FONT * 1.3;
        canvas.text(x, canvas.height, VALUE_FONT, "middle", "normal", COLOR_MUTED, label);
    } else {
        canvas.height = bottom;
    }
    if log_scale {
        canvas.height += VALUE_FONT * 1.4;
        canvas.text(bars_left, canvas.height, VALUE_FONT, "start", "normal", COLOR_MUTED, "log scale");
    }
    canvas.height += GAP;
}

/// What a workload's sides are called on its plot.
fn side_names(workload: &str) -> (&'static str, &'static str) {
    if workload.starts_with(&format!("{}/", crate::workloads::over_http::NAME)) {
        ("over HTTP", "in process")
    } else if workload == crate::workloads::cross_trades::NAME {
        ("across servers", "same engine")
    } else {
        ("hoard", "baseline (integers)")
    }
}

/// A workload's plot file: its name with `/` as `-` (`over_http-trades.svg`).
pub fn plot_file_name(workload: &str) -> String {
    format!("{}.svg", workload.replace('/', "-"))
}

/// The plot of one workload: throughput of each side, then latency percentiles, per store.
pub fn workload_plot(workload: &str, results: &[&WorkloadResult]) -> String {
    let (hoard_side, baseline_side) = side_names(workload);
    let mut canvas = Canvas::new();
    let heading = match results.iter().find_map(|r| r.not_measured.clone()) {
        Some(reason) => format!("{workload}: {reason}"),
        None => workload.to_string(),
    };
    canvas.heading(&heading, TITLE_FONT);
    let mut throughput = Vec::new();
    let mut latency = Vec::new();
    for result in results {
        let sides = [
            (hoard_side, result.hoard, COLOR_HOARD, None),
            (baseline_side, result.baseline, COLOR_BASELINE, result.ratio),
            ("JSON backend", result.json_baseline, COLOR_JSON, result.json_ratio),
        ];
        for (side, figures, color, ratio) in sides {
            let Some(figures) = figures else { continue };
            let ratio_text = ratio.map(|ratio| format!("  (hoard {ratio:.2}x)")).unwrap_or_default();
            throughput.push(Row {
                label: format!("{} · {side}", result.store),
                value: figures.throughput_per_s,
                value_text: format!("{}/s{ratio_text}", format_value(figures.throughput_per_s)),
                color,
            });
            latency.push(Row {
                label: format!("{} · {side}", result.store),
                value: figures.latency_p99_ms,
                value_text: format!(
                    "p50 {} · p99 {} · max {} ms",
                    format_value(figures.latency_p50_ms),
                    format_value(figures.latency_p99_ms),
                    format_value(figures.latency_max_ms)
                ),
                color,
            });
        }
        if let Some(error) = &result.error {
            throughput.push(Row {
                label: format!("{} · FAILED", result.store),
                value: 0.0,
                value_text: fit(error, 400.0, VALUE_FONT),
                color: COLOR_BASELINE,
            });
        }
    }
    bar_panel(&mut canvas, "throughput, operations per second", &throughput, false, None);
    bar_panel(&mut canvas, "latency: bar to p99, milliseconds", &latency, true, None);
    canvas.finish()
}

/// Every ratio of the run in one chart, against the integer floor and the JSON backend.
pub fn summary_plot(report: &Report) -> String {
    let mut canvas = Canvas::new();
    canvas.heading(&format!("hoard's throughput over each baseline's ({} run)", report.size), TITLE_FONT);
    let mut rows = Vec::new();
    for result in &report.results {
        let (_, baseline_side) = side_names(&result.workload);
        for (ratio, against, color) in
            [(result.ratio, baseline_side, COLOR_HOARD), (result.json_ratio, "JSON backend", COLOR_JSON)]
        {
            if let Some(ratio) = ratio {
                rows.push(Row {
                    label: format!("{} · {} · vs {against}", result.workload, result.store),
                    value: ratio,
                    value_text: format!("{ratio:.2}x"),
                    color,
                });
            }
        }
    }
    bar_panel(&mut canvas, "ratio (the dashed line: as fast as the baseline)", &rows, false, Some((1.0, "1.0x")));
    canvas.finish()
}

/// A curve's plot: one panel per store, hoard and the JSON backend as two lines over the x values
/// (evenly spaced: they double or quadruple), every point labelled with its value.
pub fn curve_plot(curves: &[&Curve]) -> String {
    let mut canvas = Canvas::new();
    let Some(first) = curves.first() else { return canvas.finish() };
    canvas.heading(&first.title, TITLE_FONT);
    // Legend, on its own line.
    canvas.height += LABEL_FONT * 1.3;
    let mut x = MARGIN;
    for (name, color) in [("hoard", COLOR_HOARD), ("JSON backend", COLOR_JSON)] {
        canvas.rect(x, canvas.height - LABEL_FONT * 0.8, 18.0, LABEL_FONT * 0.8, color);
        canvas.text(x + 24.0, canvas.height, LABEL_FONT, "start", "normal", COLOR_TEXT, name);
        x += 24.0 + text_width(name, LABEL_FONT) + 2.0 * GAP;
    }
    canvas.height += GAP;
    for curve in curves {
        curve_panel(&mut canvas, curve);
    }
    canvas.finish()
}

fn curve_panel(canvas: &mut Canvas, curve: &Curve) {
    canvas.heading(&format!("{} · {}", curve.store, curve.y_label), PANEL_TITLE_FONT);
    let values: Vec<f64> = curve
        .points
        .iter()
        .flat_map(|point| [point.hoard, point.json_baseline])
        .flatten()
        .filter(|v| *v > 0.0)
        .collect();
    let maximum = values.iter().copied().fold(0.0, f64::max);
    if values.is_empty() || curve.points.is_empty() {
        canvas.height += LABEL_FONT * 1.4;
        canvas.text(MARGIN, canvas.height, LABEL_FONT, "start", "normal", COLOR_MUTED, "no figures");
        canvas.height += GAP;
        return;
    }
    // Round ticks (1, 2 or 5 times a power of ten) up to just above the largest value.
    let raw_step = maximum * 1.1 / 4.0;
    let power = 10f64.powf(raw_step.log10().floor());
    let tick_step = power * [1.0, 2.0, 5.0, 10.0].into_iter().find(|m| m * power >= raw_step).unwrap_or(10.0);
    let top_tick = (maximum * 1.1 / tick_step).ceil().max(1.0) * tick_step;
    let ticks: Vec<f64> =
        (0..).map(|n| f64::from(n) * tick_step).take_while(|tick| *tick <= top_tick * 1.000_001).collect();
    let tick_width = ticks.iter().map(|tick| text_width(&format_value(*tick), VALUE_FONT)).fold(0.0, f64::max);
    let plot_left = MARGIN + tick_width + GAP;
    // Room on both sides for the first and last point's labels.
    let label_room = curve
        .points
        .iter()
        .flat_map(|point| [point.hoard, point.json_baseline])
        .flatten()
        .map(|value| text_width(&format_value(value), VALUE_FONT))
        .fold(0.0, f64::max)
        / 2.0
        + GAP;
    let plot_right = CANVAS_WIDTH - MARGIN - label_room;
    let inner_left = plot_left + label_room;
    let plot_top = canvas.height + VALUE_FONT;
    let plot_bottom = plot_top + CURVE_PLOT_HEIGHT;
    let y_of = |value: f64| plot_bottom - value / top_tick * CURVE_PLOT_HEIGHT;
    let step = if curve.points.len() > 1 { (plot_right - inner_left) / (curve.points.len() - 1) as f64 } else { 0.0 };
    let x_of = |index: usize| inner_left + step * index as f64;
    for tick in &ticks {
        let y = y_of(*tick);
        canvas.line(plot_left, y, plot_right, y, COLOR_GRID, 1.0);
        canvas.text(
            plot_left - GAP / 2.0,
            y + VALUE_FONT * 0.35,
            VALUE_FONT,
            "end",
            "normal",
            COLOR_MUTED,
            &format_value(*tick),
        );
    }
    canvas.line(plot_left, plot_bottom, plot_right, plot_bottom, COLOR_MUTED, 1.0);
    // Lines, then points with their values: hoard's above its point, the JSON backend's below,
    // each moved off the other when they would meet.
    for (side, color) in [(0, COLOR_HOARD), (1, COLOR_JSON)] {
        let points: Vec<(f64, f64)> = curve
            .points
            .iter()
            .enumerate()
            .filter_map(|(index, point)| {
                [point.hoard, point.json_baseline][side].map(|value| (x_of(index), y_of(value)))
            })
            .collect();
        let path: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            canvas.body,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (x, y) in &points {
            let _ = writeln!(canvas.body, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{color}"/>"#);
        }
    }
    for (index, point) in curve.points.iter().enumerate() {
        let x = x_of(index);
        let (hoard_y, json_y) = (point.hoard.map(y_of), point.json_baseline.map(y_of));
        // The higher point's label goes above it, the lower's below; one line of text apart at least.
        let mut labels: Vec<(f64, f64, &str)> = Vec::new();
        if let (Some(value), Some(y)) = (point.hoard, hoard_y) {
            labels.push((value, y, COLOR_HOARD));
        }
        if let (Some(value), Some(y)) = (point.json_baseline, json_y) {
            labels.push((value, y, COLOR_JSON));
        }
        labels.sort_by(|a, b| a.1.total_cmp(&b.1));
        for (rank, (value, y, color)) in labels.iter().enumerate() {
            let baseline = if rank == 0 {
                (y - GAP / 1.5).min(labels.get(1).map_or(f64::MAX, |other| other.1 - VALUE_FONT * 1.6))
            } else {
                (y + VALUE_FONT + GAP / 1.5).max(labels[0].1 + VALUE_FONT * 1.6)
            };
            let baseline = baseline.clamp(plot_top, plot_bottom - GAP / 2.0);
            canvas.text(x, baseline, VALUE_FONT, "middle", "bold", color, &format_value(*value));
        }
        let x_label = if point.x.fract() == 0.0 { format!("{:.0}", point.x) } else { format_value(point.x) };
        canvas.text(x, plot_bottom + VALUE_FONT * 1.5, VALUE_FONT, "middle", "normal", COLOR_TEXT, &x_label);
    }
    canvas.height = plot_bottom + VALUE_FONT * 1.5 + LABEL_FONT * 1.5;
    canvas.text(
        (plot_left + plot_right) / 2.0,
        canvas.height,
        LABEL_FONT,
        "middle",
        "normal",
        COLOR_TEXT,
        &curve.x_label,
    );
    for error in &curve.errors {
        canvas.height += VALUE_FONT * 1.4;
        let text = fit(&format!("FAILED: {error}"), CANVAS_WIDTH - 2.0 * MARGIN, VALUE_FONT);
        canvas.text(MARGIN, canvas.height, VALUE_FONT, "start", "normal", COLOR_MUTED, &text);
    }
    canvas.height += 2.0 * GAP;
}

/// Writes a plot for each workload (`plot_file_name`), one per curve (`<name>.svg`) and
/// `summary.svg` into `folder`; returns the paths.
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
    let mut names: Vec<&str> = Vec::new();
    for curve in &report.curves {
        if !names.contains(&curve.name.as_str()) {
            names.push(&curve.name);
        }
    }
    for name in names {
        let curves: Vec<&Curve> = report.curves.iter().filter(|curve| curve.name == name).collect();
        let path = folder.join(format!("{name}.svg"));
        std::fs::write(&path, curve_plot(&curves))?;
        written.push(path);
    }
    let path = folder.join("summary.svg");
    std::fs::write(&path, summary_plot(report))?;
    written.push(path);
    Ok(written)
}
