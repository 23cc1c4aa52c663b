//! The HTML report of `warren-bench run` (`--html`): one self-contained page
//! (no script, stylesheet, font or image from elsewhere) with the results'
//! tables and their charts drawn as inline SVG, and the same charts as
//! separate SVG documents.
//!
//! Every string that comes from the results (the target, error kinds, paths
//! of lost writes...) is escaped: a results document may carry text a user
//! or a server chose. The charts' text is escaped by plotters' SVG backend.
//!
//! Values that cannot be drawn (NaN, infinite) are left out of the charts,
//! and an axis whose values are all equal (or absent) still gets a range.

use super::results::{LostWrite, OpStats, ProcessSample, RunResults, Settings};
use anyhow::{Context, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

/// One chart of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// The file-name stem (`latency-over-time`).
    pub name: &'static str,
    /// What the chart shows, for a caption.
    pub title: String,
    /// A whole SVG document (`<svg ...>...</svg>`), also fit to be put
    /// inline in HTML.
    pub svg: String,
}

/// The charts of `results`: latency, throughput and percentiles always (with
/// "no data" when there is none), memory and descriptors when the run was
/// sampled (`--sample`).
pub fn charts(results: &RunResults) -> Result<Vec<Chart>> {
    let mut charts = vec![
        chart(
            "latency-over-time",
            "Latency and errors over time",
            |area| latency_over_time(area, results),
        )?,
        chart("throughput-over-time", "Throughput over time", |area| {
            throughput_over_time(area, results)
        })?,
        chart("percentiles", "Latency percentiles by operation", |area| {
            percentiles(area, results)
        })?,
    ];
    if !results.samples.is_empty() {
        charts.push(chart(
            "memory-over-time",
            "Memory of the server's processes",
            |area| memory_over_time(area, results),
        )?);
        charts.push(chart(
            "descriptors-over-time",
            "Descriptors and threads of the server's processes",
            |area| descriptors_over_time(area, results),
        )?);
    }
    Ok(charts)
}

/// The whole report: one HTML page, with everything inline.
pub fn render(results: &RunResults) -> Result<String> {
    let charts = charts(results).context("cannot draw the report's charts")?;
    page(results, &charts).context("cannot write the HTML report")
}

/// `text` made safe inside HTML text and inside quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------- charts

/// Width and height of a chart, in SVG user units (the page scales them).
const SIZE: (u32, u32) = (960, 480);
/// A chart with a second panel beneath the first.
const TALL: (u32, u32) = (960, 620);
const FONT: &str = "sans-serif";

/// Colours that stay apart on white (the Tableau 10 palette).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const BLUE: RGBColor = PALETTE[0];
const ORANGE: RGBColor = PALETTE[1];
const GREEN: RGBColor = PALETTE[2];
const RED: RGBColor = PALETTE[3];
const CHAOS: RGBColor = PALETTE[4];

type Area<'b> = DrawingArea<SVGBackend<'b>, Shift>;
type LinearChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn color(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// Draws one chart into an SVG document.
fn chart(
    name: &'static str,
    title: &str,
    draw: impl FnOnce(&Area<'_>) -> Result<()>,
) -> Result<Chart> {
    let size = match name {
        "latency-over-time" | "descriptors-over-time" => TALL,
        _ => SIZE,
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).context("cannot fill the background")?;
        let area = root
            .titled(title, (FONT, 22))
            .context("cannot draw the title")?;
        draw(&area).with_context(|| format!("cannot draw the chart {name}"))?;
        root.present().context("cannot finish the SVG")?;
    }
    Ok(Chart {
        name,
        title: title.to_string(),
        svg,
    })
}

/// The latency lines (p50, p99) over time, and errors per second beneath,
/// both with the chaos events marked.
fn latency_over_time(area: &Area<'_>, results: &RunResults) -> Result<()> {
    let (upper, lower) = area.split_vertically(TALL.1 * 62 / 100);
    let x = time_range(
        results
            .timeline
            .iter()
            .map(|s| f64::from(s.t))
            .chain(results.chaos.iter().map(|e| e.at_s)),
    );
    // A second without answers has no latency: its point is left out.
    let latency = |pick: fn(&super::results::Second) -> f64| {
        runs(
            results
                .timeline
                .iter()
                .map(|s| (f64::from(s.t), (s.count > 0).then(|| pick(s)))),
            1.0,
        )
    };
    let p50 = latency(|s| s.p50_ms);
    let p99 = latency(|s| s.p99_ms);
    let errors = runs(
        results
            .timeline
            .iter()
            .map(|s| (f64::from(s.t), Some(s.errors as f64))),
        f64::INFINITY,
    );

    let top = y_top(p50.iter().chain(&p99).flatten().map(|p| p.1));
    let mut chart = linear_chart(&upper, x, top, "latency (ms)", None)?;
    draw_runs(&mut chart, &p99, ORANGE, "p99")?;
    draw_runs(&mut chart, &p50, BLUE, "p50")?;
    let marked = mark_chaos(&mut chart, results, x, top)?;
    if p50.is_empty() && p99.is_empty() {
        no_data(&upper)?;
    } else {
        legend(&mut chart)?;
    }

    let top = y_top(errors.iter().flatten().map(|p| p.1));
    let mut chart = linear_chart(&lower, x, top, "errors / s", Some("t (s)"))?;
    draw_runs(&mut chart, &errors, RED, "errors per second")?;
    mark_chaos(&mut chart, results, x, top)?;
    if !errors.is_empty() || marked {
        legend(&mut chart)?;
    }
    Ok(())
}

/// Answers per second over time.
fn throughput_over_time(area: &Area<'_>, results: &RunResults) -> Result<()> {
    let x = time_range(
        results
            .timeline
            .iter()
            .map(|s| f64::from(s.t))
            .chain(results.chaos.iter().map(|e| e.at_s)),
    );
    let count = runs(
        results
            .timeline
            .iter()
            .map(|s| (f64::from(s.t), Some(s.count as f64))),
        f64::INFINITY,
    );
    let top = y_top(count.iter().flatten().map(|p| p.1));
    let mut chart = linear_chart(area, x, top, "requests / s", Some("t (s)"))?;
    draw_runs(&mut chart, &count, GREEN, "requests per second")?;
    mark_chaos(&mut chart, results, x, top)?;
    if count.is_empty() {
        no_data(area)?;
    } else {
        legend(&mut chart)?;
    }
    Ok(())
}

/// The percentiles' names on the x axis of [`percentiles`].
const PERCENTILES: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];
/// The lowest latency a log axis shows (1 µs); lower values sit on it.
const LOG_FLOOR_MS: f64 = 0.001;

/// One line per operation (and `all`) across p50..max, on a log scale.
fn percentiles(area: &Area<'_>, results: &RunResults) -> Result<()> {
    let lines: Vec<(&str, Vec<(usize, f64)>)> = results
        .operations
        .iter()
        .map(|(name, stats)| (name.as_str(), stats))
        .chain([("all", &results.total)])
        .filter(|(_, stats)| stats.count > 0)
        .map(|(name, stats)| (name, percentile_points(stats)))
        .filter(|(_, points)| !points.is_empty())
        .collect();
    let (low, high) = log_range(lines.iter().flat_map(|(_, p)| p).map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            // Segments 0..=4 (plotters' integer ranges hold their end).
            (0..PERCENTILES.len() - 1).into_segmented(),
            // Nudged out so that plotters labels both end decades.
            (low * 0.999_999..high * 1.000_001).log_scale(),
        )
        .context("cannot lay out the chart")?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms, log scale)")
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => PERCENTILES.get(*i).copied().unwrap_or("").to_string(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| short(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .context("cannot draw the axes")?;
    for (index, (name, points)) in lines.iter().enumerate() {
        // `all` in black, thicker: the operations' lines are around it.
        let style = if *name == "all" {
            BLACK.stroke_width(3)
        } else {
            color(index).stroke_width(2)
        };
        let points = points
            .iter()
            .map(|&(i, ms)| (SegmentValue::CenterOf(i), ms.max(LOG_FLOOR_MS)));
        chart
            .draw_series(LineSeries::new(points, style).point_size(3))
            .context("cannot draw a line")?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    if lines.is_empty() {
        no_data(area)?;
    } else {
        legend(&mut chart)?;
    }
    Ok(())
}

/// The drawable percentiles of `stats`, by their index in [`PERCENTILES`].
fn percentile_points(stats: &OpStats) -> Vec<(usize, f64)> {
    let l = &stats.latency_ms;
    [l.p50, l.p90, l.p99, l.p999, l.max]
        .into_iter()
        .enumerate()
        .filter(|(_, ms)| ms.is_finite())
        .collect()
}

/// RSS of the master and of each worker slot over time.
fn memory_over_time(area: &Area<'_>, results: &RunResults) -> Result<()> {
    let lines = process_lines(results, |p| p.rss_bytes as f64 / (1024.0 * 1024.0));
    let x = time_range(results.samples.iter().map(|s| s.t_s));
    let top = y_top(lines.values().flatten().flatten().map(|p| p.1));
    let mut chart = linear_chart(area, x, top, "RSS (MiB)", Some("t (s)"))?;
    draw_process_lines(&mut chart, &lines)?;
    mark_chaos(&mut chart, results, x, top)?;
    if lines.is_empty() {
        no_data(area)?;
    } else {
        // Upper left: what grows leaves it free.
        legend_at(&mut chart, SeriesLabelPosition::UpperLeft)?;
    }
    Ok(())
}

/// Open file descriptors (above) and threads (beneath) of the master and of
/// each worker slot over time, a process in the same colour in both.
fn descriptors_over_time(area: &Area<'_>, results: &RunResults) -> Result<()> {
    let (upper, lower) = area.split_vertically(TALL.1 * 50 / 100);
    let x = time_range(results.samples.iter().map(|s| s.t_s));
    let fds = process_lines(results, |p| p.fds as f64);
    let threads = process_lines(results, |p| p.threads as f64);

    let top = y_top(fds.values().flatten().flatten().map(|p| p.1));
    let mut chart = linear_chart(&upper, x, top, "open descriptors", None)?;
    draw_process_lines(&mut chart, &fds)?;
    mark_chaos(&mut chart, results, x, top)?;
    if fds.is_empty() {
        no_data(&upper)?;
    } else {
        legend_at(&mut chart, SeriesLabelPosition::UpperLeft)?;
    }

    let top = y_top(threads.values().flatten().flatten().map(|p| p.1));
    let mut chart = linear_chart(&lower, x, top, "threads", Some("t (s)"))?;
    draw_process_lines(&mut chart, &threads)?;
    mark_chaos(&mut chart, results, x, top)?;
    Ok(())
}

/// A sampled process series: master first, then the workers by slot, then
/// anything else by role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ProcessKey {
    rank: u8,
    slot: Option<u32>,
    role: String,
}

impl ProcessKey {
    fn of(process: &ProcessSample) -> Self {
        let rank = match process.role.as_str() {
            "master" => 0,
            "worker" => 1,
            _ => 2,
        };
        ProcessKey {
            rank,
            slot: process.slot,
            role: process.role.clone(),
        }
    }

    fn label(&self) -> String {
        match self.slot {
            Some(slot) => format!("{} {slot}", self.role),
            None => self.role.clone(),
        }
    }
}

/// One series per process (a restarted worker stays in its slot's series),
/// of `pick`'s value, in runs of drawable points. Processes of one sample
/// with the same key (workers without a slot) are added up.
fn process_lines(
    results: &RunResults,
    pick: impl Fn(&ProcessSample) -> f64,
) -> BTreeMap<ProcessKey, Vec<Vec<(f64, f64)>>> {
    let mut points: BTreeMap<ProcessKey, Vec<(f64, Option<f64>)>> = BTreeMap::new();
    for sample in &results.samples {
        let mut at: BTreeMap<ProcessKey, f64> = BTreeMap::new();
        for process in &sample.processes {
            *at.entry(ProcessKey::of(process)).or_default() += pick(process);
        }
        for (key, value) in at {
            points
                .entry(key)
                .or_default()
                .push((sample.t_s, Some(value)));
        }
    }
    points
        .into_iter()
        .map(|(key, points)| {
            let mut points = points;
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (key, runs(points, f64::INFINITY))
        })
        .filter(|(_, runs)| !runs.is_empty())
        .collect()
}

fn draw_process_lines(
    chart: &mut LinearChart<'_, '_>,
    lines: &BTreeMap<ProcessKey, Vec<Vec<(f64, f64)>>>,
) -> Result<()> {
    for (index, (key, runs)) in lines.iter().enumerate() {
        draw_runs(chart, runs, color(index), &key.label())?;
    }
    Ok(())
}

/// A chart of linear axes from `x` and from 0 to `top`.
fn linear_chart<'a, 'b>(
    area: &'a Area<'b>,
    x: (f64, f64),
    top: f64,
    y_desc: &str,
    x_desc: Option<&str>,
) -> Result<LinearChart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .margin_right(32)
        .x_label_area_size(if x_desc.is_some() { 40 } else { 24 })
        .y_label_area_size(70)
        .build_cartesian_2d(x.0..x.1, 0.0..top)
        .context("cannot lay out the chart")?;
    // A short panel gets fewer labels on its y axis.
    let y_labels = if area.dim_in_pixel().1 < 300 { 5 } else { 10 };
    let mut mesh = chart.configure_mesh();
    mesh.y_desc(y_desc)
        .y_labels(y_labels)
        .x_label_formatter(&|v| trimmed(*v))
        .y_label_formatter(&|v| trimmed(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(BLACK.mix(0.05));
    if let Some(desc) = x_desc {
        mesh.x_desc(desc);
    }
    mesh.draw().context("cannot draw the axes")?;
    Ok(chart)
}

/// Draws a series' runs as one line in the legend; a run of one point is a
/// dot.
fn draw_runs(
    chart: &mut LinearChart<'_, '_>,
    runs: &[Vec<(f64, f64)>],
    color: RGBColor,
    label: &str,
) -> Result<()> {
    let style = color.stroke_width(2);
    for (index, run) in runs.iter().enumerate() {
        let dots = if run.len() == 1 { 3 } else { 0 };
        let drawn = chart
            .draw_series(LineSeries::new(run.iter().copied(), style).point_size(dots))
            .context("cannot draw a line")?;
        if index == 0 {
            drawn
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
    }
    Ok(())
}

/// A vertical line at each chaos event within `x`; whether there was
/// one.
fn mark_chaos(
    chart: &mut LinearChart<'_, '_>,
    results: &RunResults,
    x: (f64, f64),
    top: f64,
) -> Result<bool> {
    // Thin solid lines: a dashed one is dozens of SVG segments, and a
    // chaos run has one mark every few seconds.
    let style = CHAOS.mix(0.6).stroke_width(1);
    let mut marked = false;
    for event in &results.chaos {
        let at = event.at_s;
        if !at.is_finite() || at < x.0 || at > x.1 {
            continue;
        }
        let drawn = chart
            .draw_series(LineSeries::new([(at, 0.0), (at, top)], style))
            .context("cannot mark a chaos event")?;
        if !marked {
            drawn
                .label("chaos action")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        marked = true;
    }
    Ok(marked)
}

/// The legend of the labelled series, in the upper right corner.
fn legend<'a, 'b: 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
) -> Result<()> {
    legend_at(chart, SeriesLabelPosition::UpperRight)
}

/// The legend of the labelled series, at `position`.
fn legend_at<'a, 'b: 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 14))
        .draw()
        .context("cannot draw the legend")
}

/// "no data" in the middle of `area`.
fn no_data(area: &Area<'_>) -> Result<()> {
    let (width, height) = area.dim_in_pixel();
    let style = TextStyle::from((FONT, 20).into_font())
        .color(&PALETTE[7])
        .pos(Pos::new(HPos::Center, VPos::Center));
    let middle = (i32::try_from(width / 2)?, i32::try_from(height / 2)?);
    area.draw(&Text::new("no data", middle, style))
        .context("cannot draw text")
}

/// Splits points into runs to draw as lines: a run ends at a point without
/// a drawable value (none, NaN, infinite) and where x jumps by more than
/// `max_gap`. Negative values are drawn as 0 (the axes start at 0).
fn runs(
    points: impl IntoIterator<Item = (f64, Option<f64>)>,
    max_gap: f64,
) -> Vec<Vec<(f64, f64)>> {
    let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    for (x, y) in points {
        let drawable = y.filter(|y| y.is_finite()).filter(|_| x.is_finite());
        let jumped = current.last().is_some_and(|last| x - last.0 > max_gap);
        if (drawable.is_none() || jumped) && !current.is_empty() {
            runs.push(std::mem::take(&mut current));
        }
        if let Some(y) = drawable {
            current.push((x, y.max(0.0)));
        }
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

/// An x range over the finite `values`, from 0 (or below, if any is) and at
/// least 1 wide.
fn time_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values
        .filter(|v| v.is_finite())
        .fold((0.0_f64, 0.0_f64), |(low, high), v| {
            (low.min(v), high.max(v))
        });
    if high - low < 1.0 {
        (low, low + 1.0)
    } else {
        (low, high)
    }
}

/// The top of a linear y axis from 0: a tenth above the largest finite
/// value, 1 when there is none above 0.
fn y_top(values: impl Iterator<Item = f64>) -> f64 {
    let high = values.filter(|v| v.is_finite()).fold(0.0_f64, f64::max);
    let top = high * 1.1;
    if top > 0.0 && top.is_finite() {
        top
    } else if high > 0.0 {
        high
    } else {
        1.0
    }
}

/// A log axis range over the finite `values` (clamped up to
/// [`LOG_FLOOR_MS`]), out to whole powers of ten, at least one decade.
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values
        .filter(|v| v.is_finite())
        .map(|v| v.max(LOG_FLOOR_MS))
        .fold((f64::INFINITY, 0.0_f64), |(low, high), v| {
            (low.min(v), high.max(v))
        });
    if !low.is_finite() || high <= 0.0 {
        return (0.1, 100.0);
    }
    let low = 10f64.powf(low.log10().floor());
    let high = 10f64.powf(high.log10().ceil()).min(f64::MAX);
    if high > low {
        (low, high)
    } else {
        (low, low * 10.0)
    }
}

/// A number for a linear axis label: at most 2 decimals, without trailing
/// zeros.
fn trimmed(value: f64) -> String {
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

/// A number for a log axis label (a power of ten), without trailing zeros.
fn short(value: f64) -> String {
    if value >= 1.0 || value == 0.0 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

// ------------------------------------------------------------------ page

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
dl.summary{display:grid;grid-template-columns:max-content auto;gap:.2em 1.5em}
dl.summary dt{font-weight:600}
dl.summary dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.5em 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}
td.n,th.n{text-align:right}
tr.all td{font-weight:600;background:#f6f6f6}
.bad{color:#b00020;font-weight:600}
.good{color:#1b7a1b}
figure{margin:1.5em 0}
svg{max-width:100%;height:auto;display:block}
";

/// Most rows of a lost-write list shown; the JSON results have them all.
const LOST_SHOWN: usize = 1000;

fn page(results: &RunResults, charts: &[Chart]) -> Result<String, fmt::Error> {
    let mut out = String::new();
    let s = &results.settings;
    writeln!(out, "<!DOCTYPE html>")?;
    writeln!(out, "<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">")?;
    writeln!(
        out,
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
    )?;
    writeln!(
        out,
        "<title>warren-bench run: {} against {}</title>",
        escape(&s.scenario),
        escape(&results.target)
    )?;
    writeln!(out, "<style>\n{STYLE}</style>\n</head>\n<body>")?;
    summary(&mut out, results)?;
    slo(&mut out, results)?;
    operations(&mut out, results)?;
    figures(&mut out, charts)?;
    slots(&mut out, results)?;
    chaos(&mut out, results)?;
    verification(&mut out, results)?;
    growth(&mut out, results)?;
    writeln!(out, "</body>\n</html>")?;
    Ok(out)
}

fn summary(out: &mut String, results: &RunResults) -> fmt::Result {
    let s = &results.settings;
    writeln!(
        out,
        "<h1>warren-bench run: {} against {}</h1>",
        escape(&s.scenario),
        escape(&results.target)
    )?;
    let mut rows: Vec<(&str, String)> = vec![
        ("Scenario", escape(&s.scenario)),
        ("Target", escape(&results.target)),
        ("Users", s.users.to_string()),
        ("Load", escape(&model(s))),
        (
            "Duration",
            format!(
                "{} s (ramp {} s), {} s measured",
                fixed(s.duration_s, 1),
                fixed(s.ramp_s, 1),
                fixed(results.elapsed_s, 1)
            ),
        ),
        (
            "Requests",
            format!(
                "{} ({} errors), {} req/s",
                results.total.count,
                results.total.errors,
                fixed(results.throughput(), 1)
            ),
        ),
        ("Started", utc(results.started_unix)),
    ];
    if !s.chaos.is_empty() {
        rows.push(("Chaos", escape(&s.chaos.join(", "))));
    }
    if let Some(every) = s.sample_s {
        rows.push(("Sampled every", format!("{} s", fixed(every, 1))));
    }
    rows.push((
        "Machine",
        format!(
            "{} CPUs, kernel {}",
            results.machine.cpus,
            escape(results.machine.kernel.as_deref().unwrap_or("unknown"))
        ),
    ));
    rows.push((
        "Harness",
        format!(
            "warren-bench {} ({})",
            escape(&results.harness_version),
            escape(&results.schema)
        ),
    ));
    writeln!(out, "<dl class=\"summary\">")?;
    for (name, value) in rows {
        writeln!(out, "<dt>{name}</dt><dd>{value}</dd>")?;
    }
    writeln!(out, "</dl>")
}

/// The load model, as in the results' table.
fn model(s: &Settings) -> String {
    match (s.rate, s.concurrency) {
        (Some(rate), _) => format!("open model, {} req/s", short_or_fixed(rate)),
        (None, Some(c)) => format!("closed model, {c} in flight"),
        (None, None) => "no load".to_string(),
    }
}

fn slo(out: &mut String, results: &RunResults) -> fmt::Result {
    writeln!(out, "<h2>Service-level objectives</h2>")?;
    if results.slo.is_empty() {
        return writeln!(out, "<p>No objectives (<code>--slo</code>) were set.</p>");
    }
    writeln!(
        out,
        "<table>\n<tr><th>objective</th><th class=\"n\">measured</th><th>verdict</th></tr>"
    )?;
    for check in &results.slo {
        let measured = match check.measured.filter(|m| m.is_finite()) {
            Some(measured) => fixed(measured, 3),
            None => "not measured".to_string(),
        };
        let verdict = if check.met {
            "<span class=\"good\">met</span>"
        } else {
            "<span class=\"bad\">VIOLATED</span>"
        };
        writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{measured}</td><td>{verdict}</td></tr>",
            escape(&check.objective)
        )?;
    }
    writeln!(out, "</table>")
}

fn operations(out: &mut String, results: &RunResults) -> fmt::Result {
    writeln!(out, "<h2>Requests by operation</h2>")?;
    writeln!(
        out,
        "<table>\n<tr><th>operation</th><th class=\"n\">count</th><th class=\"n\">errors</th>\
         <th class=\"n\">p50 ms</th><th class=\"n\">p90 ms</th><th class=\"n\">p95 ms</th><th class=\"n\">p99 ms</th>\
         <th class=\"n\">p99.9 ms</th><th class=\"n\">max ms</th><th class=\"n\">mean ms</th>\
         <th>errors by kind</th></tr>"
    )?;
    let rows = results
        .operations
        .iter()
        .map(|(name, stats)| (name.as_str(), stats, ""))
        .chain([("all", &results.total, " class=\"all\"")]);
    for (name, stats, class) in rows {
        let l = &stats.latency_ms;
        let errors = if stats.errors > 0 {
            format!(
                "<span class=\"bad\">{}</span> ({} %)",
                stats.errors,
                fixed(stats.error_fraction() * 100.0, 2)
            )
        } else {
            "0".to_string()
        };
        writeln!(
            out,
            "<tr{class}><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{errors}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            escape(name),
            stats.count,
            fixed(l.p50, 2),
            fixed(l.p90, 2),
            fixed(l.p95, 2),
            fixed(l.p99, 2),
            fixed(l.p999, 2),
            fixed(l.max, 2),
            fixed(l.mean, 2),
            kinds(&stats.errors_by_kind)
        )?;
    }
    writeln!(out, "</table>")
}

fn figures(out: &mut String, charts: &[Chart]) -> fmt::Result {
    writeln!(out, "<h2>Charts</h2>")?;
    for chart in charts {
        writeln!(
            out,
            // The title is drawn in the SVG itself (it is also a file of its own).
            "<figure id=\"{}\" aria-label=\"{}\">\n{}</figure>",
            escape(chart.name),
            escape(&chart.title),
            chart.svg
        )?;
    }
    Ok(())
}

fn slots(out: &mut String, results: &RunResults) -> fmt::Result {
    writeln!(out, "<h2>Requests by worker slot of the users</h2>")?;
    if results.slots.is_empty() {
        return writeln!(out, "<p>No slots were learnt.</p>");
    }
    writeln!(
        out,
        "<table>\n<tr><th>slot</th><th class=\"n\">users</th><th class=\"n\">requests</th>\
         <th class=\"n\">errors</th><th>errors by kind</th></tr>"
    )?;
    for (slot, stats) in &results.slots {
        writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td>{}</td></tr>",
            escape(slot),
            stats.users,
            stats.count,
            stats.errors,
            kinds(&stats.errors_by_kind)
        )?;
    }
    writeln!(out, "</table>")
}

fn chaos(out: &mut String, results: &RunResults) -> fmt::Result {
    writeln!(out, "<h2>Chaos</h2>")?;
    if results.chaos.is_empty() {
        writeln!(out, "<p>No chaos actions.</p>")?;
    } else {
        writeln!(
            out,
            "<table>\n<tr><th class=\"n\">at s</th><th>action</th><th class=\"n\">slot</th>\
             <th class=\"n\">pid</th><th>outcome</th></tr>"
        )?;
        for event in &results.chaos {
            let outcome = if event.outcome == "done" {
                "done".to_string()
            } else {
                format!("<span class=\"bad\">{}</span>", escape(&event.outcome))
            };
            writeln!(
                out,
                "<tr><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td>{outcome}</td></tr>",
                fixed(event.at_s, 2),
                escape(&event.action),
                optional(event.slot),
                optional(event.pid)
            )?;
        }
        writeln!(out, "</table>")?;
    }
    match &results.orphans {
        None => Ok(()),
        Some(orphans) if orphans.is_empty() => {
            writeln!(out, "<p>Orphan processes of the run's users: none.</p>")
        }
        Some(orphans) => {
            let pids: Vec<String> = orphans.iter().map(u32::to_string).collect();
            writeln!(
                out,
                "<p class=\"bad\">Orphan processes of the run's users: {}</p>",
                pids.join(", ")
            )
        }
    }
}

fn verification(out: &mut String, results: &RunResults) -> fmt::Result {
    writeln!(out, "<h2>Acknowledged writes</h2>")?;
    let Some(v) = &results.verification else {
        return writeln!(
            out,
            "<p>Not verified (the scenario writes nothing, or <code>--verify false</code>).</p>"
        );
    };
    let verdict = if v.lost.is_empty() {
        "<span class=\"good\">none lost</span>".to_string()
    } else {
        format!("<span class=\"bad\">{} LOST</span>", v.lost.len())
    };
    let unverified = if v.unverified.is_empty() {
        String::new()
    } else {
        format!(
            ", <span class=\"bad\">{} UNVERIFIED</span> (no answer)",
            v.unverified.len()
        )
    };
    writeln!(
        out,
        "<p>{} acknowledged, {} files read back: {verdict}{unverified}.</p>",
        v.acknowledged, v.checked
    )?;
    let listed: Vec<&LostWrite> = v.lost.iter().chain(&v.unverified).collect();
    if listed.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "<table>\n<tr><th>user</th><th>path</th><th>reason</th></tr>"
    )?;
    for lost in listed.iter().take(LOST_SHOWN) {
        writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&lost.user),
            escape(&lost.path),
            escape(&lost.reason)
        )?;
    }
    writeln!(out, "</table>")?;
    if listed.len() > LOST_SHOWN {
        writeln!(
            out,
            "<p>…and {} more (the JSON results list them all).</p>",
            listed.len() - LOST_SHOWN
        )?;
    }
    Ok(())
}

fn growth(out: &mut String, results: &RunResults) -> fmt::Result {
    if results.growth.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "<h2>Growth from the first to the last tenth of the run</h2>"
    )?;
    writeln!(
        out,
        "<table>\n<tr><th>series</th><th class=\"n\">first</th><th class=\"n\">last</th>\
         <th class=\"n\">change</th><th></th></tr>"
    )?;
    for g in &results.growth {
        let flag = if g.flagged {
            "<span class=\"bad\">GROWING</span>"
        } else {
            ""
        };
        writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{} %</td><td>{flag}</td></tr>",
            escape(&g.series),
            fixed(g.first, 0),
            fixed(g.last, 0),
            signed(g.change_pct, 1)
        )?;
    }
    writeln!(out, "</table>")
}

fn kinds(kinds: &BTreeMap<String, u64>) -> String {
    kinds
        .iter()
        .map(|(kind, n)| format!("{}: {n}", escape(kind)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `value` with `decimals` decimals, a dash when it is not a number.
fn fixed(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "—".to_string()
    }
}

fn signed(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:+.decimals$}")
    } else {
        "—".to_string()
    }
}

/// A whole number without decimals, others as they are.
fn short_or_fixed(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 {
        format!("{value:.0}")
    } else if value.is_finite() {
        value.to_string()
    } else {
        "—".to_string()
    }
}

fn optional(value: Option<u32>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// Seconds since the Unix epoch as a UTC date and time (the civil-from-days
/// algorithm of Howard Hinnant's date library).
fn utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::results::tests::sample;
    use crate::run::results::{ChaosEvent, LostWrite, Sample, Second};

    /// Results with no requests at all.
    fn empty() -> RunResults {
        let mut results = sample();
        results.total = OpStats::default();
        results.operations.clear();
        results.slots.clear();
        results.timeline.clear();
        results.chaos.clear();
        results.verification = None;
        results.samples.clear();
        results.growth.clear();
        results.slo.clear();
        results.orphans = None;
        results.elapsed_s = 0.0;
        results
    }

    /// Everything in `html` that could fetch something from elsewhere.
    fn outside_references(html: &str, target: &str) -> Vec<String> {
        let rest = html
            .replace(&escape(target), "")
            .replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        let lower = rest.to_lowercase();
        [
            "http://", "https://", "<script", "<link", "src=", "href=", "url(", "@import",
        ]
        .iter()
        .filter(|needle| lower.contains(*needle))
        .map(|needle| needle.to_string())
        .collect()
    }

    #[test]
    fn escape_covers_the_five_special_characters() {
        assert_eq!(
            escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain/path é"), "plain/path é");
        assert_eq!(escape(""), "");
        assert_eq!(escape("&amp;"), "&amp;amp;");
    }

    #[test]
    fn the_page_is_self_contained_with_every_chart_inline() {
        let results = sample();
        let html = render(&results).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
        assert_eq!(html.matches("<svg").count(), 5, "{html}");
        for name in [
            "latency-over-time",
            "throughput-over-time",
            "percentiles",
            "memory-over-time",
            "descriptors-over-time",
        ] {
            assert!(html.contains(&format!("<figure id=\"{name}\" ")), "{name}");
        }
        assert_eq!(
            outside_references(&html, &results.target),
            Vec::<String>::new()
        );
        assert!(html.contains("http://127.0.0.1:8080"));
        assert!(html.contains("open model, 200 req/s"), "{html}");
        assert!(html.contains("2027-01-15 08:00:00 UTC"), "{html}");
        assert!(html.contains("503: 1, timeout: 1"), "{html}");
        assert!(html.contains("p99&lt;50ms"), "{html}");
        assert!(html.contains("1 LOST"), "{html}");
        assert!(html.contains("master rss_bytes"), "{html}");
    }

    #[test]
    fn text_from_the_results_comes_out_escaped() {
        let mut results = sample();
        let evil = "<script>alert(1)</script>";
        results.target = "http://x/\"><script>alert(2)</script>".to_string();
        results.verification = Some(crate::run::results::Verification {
            acknowledged: 1,
            checked: 1,
            lost: vec![LostWrite {
                user: "u\"1".to_string(),
                path: evil.to_string(),
                reason: "changed".to_string(),
            }],
            unverified: vec![],
        });
        results
            .total
            .errors_by_kind
            .insert("<img src=x>".to_string(), 1);
        results
            .operations
            .insert(evil.to_string(), results.total.clone());
        let html = render(&results).unwrap();
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("&lt;img src=x&gt;"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("u\"1"), "{html}");
    }

    #[test]
    fn empty_results_render_with_no_data_charts() {
        let results = empty();
        let charts = charts(&results).unwrap();
        let names: Vec<_> = charts.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            ["latency-over-time", "throughput-over-time", "percentiles"]
        );
        assert!(charts.iter().all(|c| c.svg.contains("no data")));
        let html = render(&results).unwrap();
        assert!(html.contains("<svg"));
        assert!(html.contains("Not verified"));
        assert!(html.contains("No chaos actions"));
        assert_eq!(
            outside_references(&html, &results.target),
            Vec::<String>::new()
        );
    }

    #[test]
    fn values_that_cannot_be_drawn_are_left_out() {
        let mut results = sample();
        let second = |t, p50_ms, p99_ms| Second {
            t,
            count: 10,
            errors: 0,
            p50_ms,
            p99_ms,
            max_ms: p99_ms,
        };
        results.timeline = vec![
            second(0, f64::NAN, f64::INFINITY),
            second(1, -1.0, f64::NEG_INFINITY),
            second(2, 1e300, f64::MAX),
            Second::default(),
        ];
        results.total.latency_ms.p50 = f64::NAN;
        results.total.latency_ms.p90 = 0.0;
        results.total.latency_ms.p99 = -5.0;
        results.total.latency_ms.max = f64::INFINITY;
        results.chaos.push(ChaosEvent {
            at_s: f64::NAN,
            action: "kill-worker".to_string(),
            slot: None,
            pid: None,
            outcome: "done".to_string(),
        });
        results.elapsed_s = f64::NAN;
        results.slo[0].measured = None;
        results.growth[0].change_pct = f64::INFINITY;
        let html = render(&results).unwrap();
        assert!(!html.contains("NaN"), "{html}");
        assert!(!html.contains("inf"), "{html}");
        assert!(html.contains("not measured"));
    }

    #[test]
    fn one_point_and_equal_values_still_draw() {
        let mut results = sample();
        // One second, one sample, every latency the same.
        results.total.latency_ms = crate::run::results::Percentiles {
            p50: 2.0,
            p90: 2.0,
            p95: 2.0,
            p99: 2.0,
            p999: 2.0,
            max: 2.0,
            mean: 2.0,
        };
        results.operations.clear();
        results.samples = vec![Sample {
            t_s: 0.0,
            ..results.samples[0].clone()
        }];
        let charts = charts(&results).unwrap();
        assert_eq!(charts.len(), 5);
        for chart in &charts {
            assert!(!chart.svg.contains("no data"), "{}", chart.name);
            // A lone point is drawn as a dot.
            assert!(
                chart.svg.contains("<circle"),
                "{}: {}",
                chart.name,
                chart.svg
            );
        }
    }

    #[test]
    fn a_restarted_worker_stays_in_its_slot_series() {
        let mut results = sample();
        let worker = |pid, rss_bytes| ProcessSample {
            role: "worker".to_string(),
            slot: Some(1),
            pid,
            rss_bytes,
            fds: 5,
            threads: 2,
        };
        results.samples = (0..4)
            .map(|t| Sample {
                t_s: f64::from(t),
                processes: vec![worker(100 + t, 1 << 20)],
                metrics: BTreeMap::new(),
            })
            .collect();
        let lines = process_lines(&results, |p| p.rss_bytes as f64);
        assert_eq!(lines.len(), 1);
        let (key, runs) = lines.iter().next().unwrap();
        assert_eq!(key.label(), "worker 1");
        assert_eq!(
            runs,
            &vec![(0..4)
                .map(|t| (f64::from(t), 1048576.0))
                .collect::<Vec<_>>()]
        );
    }

    #[test]
    fn runs_split_at_gaps_and_undrawable_values() {
        let points = [
            (0.0, Some(1.0)),
            (1.0, None),
            (2.0, Some(2.0)),
            (3.0, Some(f64::NAN)),
            (4.0, Some(3.0)),
            (5.0, Some(-1.0)),
            (9.0, Some(4.0)),
        ];
        assert_eq!(
            runs(points, 1.0),
            vec![
                vec![(0.0, 1.0)],
                vec![(2.0, 2.0)],
                vec![(4.0, 3.0), (5.0, 0.0)],
                vec![(9.0, 4.0)]
            ]
        );
        assert!(runs([], 1.0).is_empty());
    }

    #[test]
    fn ranges_are_never_empty() {
        assert_eq!(time_range([].into_iter()), (0.0, 1.0));
        assert_eq!(time_range([f64::NAN, 0.0].into_iter()), (0.0, 1.0));
        assert_eq!(time_range([3.0, 10.0].into_iter()), (0.0, 10.0));
        assert_eq!(y_top([].into_iter()), 1.0);
        assert_eq!(y_top([0.0, f64::INFINITY].into_iter()), 1.0);
        assert_eq!(y_top([f64::MAX].into_iter()), f64::MAX);
        assert_eq!(log_range([].into_iter()), (0.1, 100.0));
        assert_eq!(log_range([2.0, 2.0].into_iter()), (1.0, 10.0));
        assert_eq!(log_range([1.0].into_iter()), (1.0, 10.0));
        assert_eq!(log_range([0.0, 0.5, 40.0].into_iter()), (0.001, 100.0));
    }

    #[test]
    fn axis_labels_have_no_trailing_zeros() {
        assert_eq!(trimmed(20.0), "20");
        assert_eq!(trimmed(0.5), "0.5");
        assert_eq!(trimmed(0.25), "0.25");
        assert_eq!(trimmed(-0.0001), "0");
        assert_eq!(short(0.001), "0.001");
        assert_eq!(short(0.1), "0.1");
        assert_eq!(short(1000.0), "1000");
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_800_000_000), "2027-01-15 08:00:00 UTC");
    }
}
