//! The results of `warren-bench micro`: a table for people, JSON for tools,
//! and the targets judged against the figures (never the other way round).

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// Pool round trip, one caller, p50 (from the acceptance criteria).
pub const TARGET_P50_NS: f64 = 30_000.0;
/// Pool throughput with 256 concurrent callers.
pub const TARGET_CALLERS: usize = 256;
pub const TARGET_OPS_PER_SEC: f64 = 250_000.0;

#[derive(Debug, Serialize)]
pub struct Machine {
    /// CPUs this process may use (what `nproc` prints).
    pub cpus: usize,
    /// `uname -r`, if readable.
    pub kernel: Option<String>,
}

impl Machine {
    pub fn current() -> Self {
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|text| text.trim().to_string()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub seconds_per_figure: f64,
    pub warmup_seconds: f64,
    pub workers: u32,
    /// Threads of the master-side (multi-thread) tokio runtime.
    pub runtime_threads: usize,
}

/// One series of per-call latencies, in nanoseconds.
#[derive(Debug, Serialize)]
pub struct Distribution {
    pub samples: usize,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    /// `[fraction, ns]` pairs: the shape, which on this 2-core VM is often
    /// bimodal (the peer process is either running or must be woken).
    pub shape_ns: Vec<(f64, u64)>,
}

impl Distribution {
    fn of(mut samples: Vec<u64>) -> Result<Self> {
        if samples.is_empty() {
            bail!("no latency samples were recorded: use a longer --seconds");
        }
        samples.sort_unstable();
        Ok(Distribution {
            samples: samples.len(),
            mean_ns: mean(&samples),
            p50_ns: percentile(&samples, 0.50),
            p99_ns: percentile(&samples, 0.99),
            shape_ns: DISTRIBUTION
                .iter()
                .map(|&fraction| (fraction, percentile(&samples, fraction)))
                .collect(),
        })
    }

    fn p50_and_p99(&self) -> String {
        format!(
            "{} / {}",
            nanos(self.p50_ns as f64),
            nanos(self.p99_ns as f64)
        )
    }

    fn shape(&self) -> String {
        self.shape_ns
            .iter()
            .map(|(fraction, ns)| format!("p{}={}", fraction * 100.0, nanos(*ns as f64)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Sequential (one caller) latency.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// One user's requests: always the same worker. The target is judged here.
    pub pool_one_worker: Distribution,
    /// Users in turn, so each call goes to the next worker process.
    pub pool_across_workers: Distribution,
    /// The bare tokio + Unix socket + bincode echo, one process.
    pub echo_one_process: Distribution,
    /// Bare echo processes, as many as workers, taken in turn.
    pub echo_across_processes: Distribution,
    /// `warren_worker::ops::ping` called directly (plus one clock read).
    pub baseline: Distribution,
}

impl Latency {
    pub fn from_samples(
        sequential: crate::micro::SequentialSamples,
        baseline: Vec<u64>,
    ) -> Result<Self> {
        Ok(Latency {
            pool_one_worker: Distribution::of(sequential.pool_one_worker)?,
            pool_across_workers: Distribution::of(sequential.pool_across_workers)?,
            echo_one_process: Distribution::of(sequential.echo_one_process)?,
            echo_across_processes: Distribution::of(sequential.echo_across_processes)?,
            baseline: Distribution::of(baseline)?,
        })
    }
}

const DISTRIBUTION: [f64; 11] = [0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.99, 0.999, 1.0];

fn mean(samples: &[u64]) -> f64 {
    samples.iter().map(|&ns| ns as f64).sum::<f64>() / samples.len() as f64
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub callers: usize,
    pub pool_ops_per_sec: f64,
    pub baseline_ops_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    pub codec_frame_bytes: usize,
    pub codec_ns_per_op: f64,
    pub slot_for_ns_per_op: f64,
    pub sequential: Latency,
    pub throughput: Vec<Throughput>,
    pub targets: Vec<Target>,
}

impl Report {
    pub fn new(
        machine: Machine,
        settings: Settings,
        codec_frame_bytes: usize,
        codec_ns_per_op: f64,
        slot_for_ns_per_op: f64,
        sequential: Latency,
        throughput: Vec<Throughput>,
    ) -> Self {
        let mut targets = vec![Target {
            name: "pool round trip, sequential p50".into(),
            target: format!("<= {}", nanos(TARGET_P50_NS)),
            measured: nanos(sequential.pool_one_worker.p50_ns as f64),
            met: sequential.pool_one_worker.p50_ns as f64 <= TARGET_P50_NS,
        }];
        if let Some(point) = throughput.iter().find(|t| t.callers == TARGET_CALLERS) {
            targets.push(Target {
                name: format!("pool throughput, {TARGET_CALLERS} callers"),
                target: format!(">= {}", rate(TARGET_OPS_PER_SEC)),
                measured: rate(point.pool_ops_per_sec),
                met: point.pool_ops_per_sec >= TARGET_OPS_PER_SEC,
            });
        }
        Report {
            machine,
            settings,
            codec_frame_bytes,
            codec_ns_per_op,
            slot_for_ns_per_op,
            sequential,
            throughput,
            targets,
        }
    }

    pub fn table(&self) -> String {
        let mut rows: Vec<Vec<String>> = vec![
            vec![
                "figure".into(),
                "pool (real workers)".into(),
                "in-process baseline".into(),
                "slowdown".into(),
                "target".into(),
            ],
            vec![
                format!("codec encode+decode ({} B request)", self.codec_frame_bytes),
                format!("{:.1} ns/op", self.codec_ns_per_op),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
            vec![
                "ring::slot_for (4 slots)".into(),
                format!("{:.1} ns/op", self.slot_for_ns_per_op),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        ];
        let seq = &self.sequential;
        let one = &seq.pool_one_worker;
        let p50_verdict = verdict(one.p50_ns as f64 <= TARGET_P50_NS);
        rows.push(vec![
            "round trip, 1 caller, p50".into(),
            nanos(one.p50_ns as f64),
            nanos(seq.baseline.p50_ns as f64),
            ratio(one.p50_ns as f64, seq.baseline.p50_ns as f64),
            format!("<= {} {p50_verdict}", nanos(TARGET_P50_NS)),
        ]);
        rows.push(vec![
            "round trip, 1 caller, mean".into(),
            nanos(one.mean_ns),
            nanos(seq.baseline.mean_ns),
            ratio(one.mean_ns, seq.baseline.mean_ns),
            "-".into(),
        ]);
        rows.push(vec![
            "round trip, 1 caller, p99".into(),
            nanos(one.p99_ns as f64),
            nanos(seq.baseline.p99_ns as f64),
            ratio(one.p99_ns as f64, seq.baseline.p99_ns as f64),
            "-".into(),
        ]);
        let (echo, across, echo_across) = (
            &seq.echo_one_process,
            &seq.pool_across_workers,
            &seq.echo_across_processes,
        );
        rows.push(vec![
            "bare echo, 1 process, p50 / p99".into(),
            echo.p50_and_p99(),
            "-".into(),
            format!("pool/echo {}", ratio(one.p50_ns as f64, echo.p50_ns as f64)),
            "-".into(),
        ]);
        rows.push(vec![
            "round trip across workers, p50 / p99".into(),
            across.p50_and_p99(),
            "-".into(),
            format!(
                "pool/echo {}",
                ratio(across.p50_ns as f64, echo_across.p50_ns as f64)
            ),
            "-".into(),
        ]);
        rows.push(vec![
            "bare echo across processes, p50 / p99".into(),
            echo_across.p50_and_p99(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
        for point in &self.throughput {
            let target = if point.callers == TARGET_CALLERS {
                let met = point.pool_ops_per_sec >= TARGET_OPS_PER_SEC;
                format!(">= {} {}", rate(TARGET_OPS_PER_SEC), verdict(met))
            } else {
                "-".into()
            };
            rows.push(vec![
                match point.callers {
                    1 => "throughput, 1 caller".into(),
                    callers => format!("throughput, {callers} callers"),
                },
                rate(point.pool_ops_per_sec),
                rate(point.baseline_ops_per_sec),
                ratio(point.baseline_ops_per_sec, point.pool_ops_per_sec),
                target,
            ]);
        }

        let mut text = format!(
            "warren-bench micro: {} CPUs, kernel {}, {} workers, {} runtime threads, {} s per figure (+{} s warm-up)\n\n",
            self.machine.cpus,
            self.machine.kernel.as_deref().unwrap_or("unknown"),
            self.settings.workers,
            self.settings.runtime_threads,
            self.settings.seconds_per_figure,
            self.settings.warmup_seconds,
        );
        text.push_str(&render(&rows));
        text.push_str(
            "\nslowdown: pool latency / baseline latency, or baseline rate / pool rate\n",
        );
        text.push_str("round trips are sequential, one caller; \"1 caller\" rows send one user's requests (always one worker);\n");
        text.push_str("\"across\" rows take users (echo processes) in turn, so every call wakes a process that was idle\n\n");
        let series = [
            ("pool, one worker", one),
            ("pool, across workers", &seq.pool_across_workers),
            ("echo, one process", &seq.echo_one_process),
            ("echo, across processes", &seq.echo_across_processes),
        ];
        for (name, figure) in series {
            text.push_str(&format!(
                "{name:<23} ({} samples): {}\n",
                figure.samples,
                figure.shape()
            ));
        }
        text
    }
}

/// Prints the table to stdout; with `json`, the JSON document to stdout and
/// the table to stderr, so `> results.json` still shows the table.
pub fn print(table: String, report: &impl Serialize, json: bool) -> Result<()> {
    if json {
        eprintln!("{table}");
        let document =
            serde_json::to_string_pretty(report).context("cannot serialise the results")?;
        println!("{document}");
    } else {
        println!("{table}");
    }
    Ok(())
}

/// Lays out rows as columns: the first row is the header (ruled off below
/// it); the first and last columns (names, targets) are left-aligned, the
/// figures between them right-aligned.
pub fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for (index, row) in rows.iter().enumerate() {
        let cells: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(column, &width)| {
                let cell = row.get(column).map_or("", String::as_str);
                if column == 0 || column + 1 == columns {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
        if index == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            text.push_str(&rule.join("  "));
            text.push('\n');
        }
    }
    text
}

/// The target cell of a table row: the first target whose name starts with
/// `prefix`, with its verdict; `-` when there is none.
pub fn target_cell(targets: &[Target], prefix: &str) -> String {
    targets
        .iter()
        .find(|target| target.name.starts_with(prefix))
        .map_or("-".into(), |target| {
            format!("{} {}", target.target, verdict(target.met))
        })
}

pub fn verdict(met: bool) -> &'static str {
    if met {
        "(met)"
    } else {
        "(MISSED)"
    }
}

/// Nanoseconds with a unit a person reads at a glance.
pub fn nanos(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.1} µs", ns / 1_000.0)
    } else if ns < 1_000_000_000.0 {
        format!("{:.2} ms", ns / 1_000_000.0)
    } else {
        format!("{:.2} s", ns / 1_000_000_000.0)
    }
}

/// Operations per second with thousands separators.
pub fn rate(per_second: f64) -> String {
    per_second_of(per_second, "ops/s")
}

/// A rate with thousands separators and the given unit (`req/s`).
pub fn per_second_of(per_second: f64, unit: &str) -> String {
    format!("{} {unit}", thousands(per_second.round() as u64))
}

pub fn ratio(worse: f64, better: f64) -> String {
    if better > 0.0 && worse.is_finite() {
        let times = worse / better;
        if times >= 100.0 {
            format!("{}x", thousands(times.round() as u64))
        } else {
            format!("{times:.1}x")
        }
    } else {
        "-".into()
    }
}

pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.50), 50);
        assert_eq!(percentile(&samples, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
    }

    #[test]
    fn figures_are_formatted_for_people() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(250_000), "250,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
        assert_eq!(nanos(21.0), "21 ns");
        assert_eq!(nanos(24_150.0), "24.1 µs");
        assert_eq!(nanos(1_812_990_000.0), "1.81 s");
        assert_eq!(ratio(30.0, 10.0), "3.0x");
        assert_eq!(ratio(1.0, 0.0), "-");
    }
}
