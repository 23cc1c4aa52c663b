//! The results of `warren-bench run`: a versioned JSON document
//! (`--out`), the table printed at the end, the SLO gate (`--slo`) and the
//! comparison with an earlier run (`--compare`).
//!
//! The schema is [`SCHEMA`]; a change that renames or removes a field, or
//! changes a field's meaning, takes a new version. Fields may be added
//! within a version (readers ignore unknown fields; absent new fields read
//! as their defaults).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// The schema name and version every results document carries.
pub const SCHEMA: &str = "warren-bench-run/1";

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResults {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// warren-bench's version.
    pub harness_version: String,
    /// Start of the run, seconds since the Unix epoch.
    pub started_unix: u64,
    pub target: String,
    pub settings: Settings,
    pub machine: MachineInfo,
    /// Seconds from the first measured request to the last answer.
    pub elapsed_s: f64,
    /// Every measured request together but logins (which are their own
    /// operation): what logged-in users wait for.
    pub total: OpStats,
    /// By operation (`ping`, `list`, `read`, `write`, `task`, `terminal`,
    /// `login`, `upload`, `app`...).
    pub operations: BTreeMap<String, OpStats>,
    /// By worker slot of the users who made the requests (what
    /// `/api/v1/ping` answered at log-in); `unknown` for users whose slot
    /// was not learnt (the bare server has none).
    pub slots: BTreeMap<String, SlotStats>,
    /// One entry per second of the run.
    pub timeline: Vec<Second>,
    /// What `--chaos` did, in order.
    #[serde(default)]
    pub chaos: Vec<ChaosEvent>,
    /// The read-back of every write the server acknowledged (none when the
    /// scenario writes nothing or `--verify false`).
    #[serde(default)]
    pub verification: Option<Verification>,
    /// `--sample`: the server's processes and metrics over time.
    #[serde(default)]
    pub samples: Vec<Sample>,
    /// Growth of the master's and the workers' memory, descriptors and
    /// threads, from the first to the last tenth of the samples after
    /// warming up (`/metrics` is recorded, not judged: its counters grow
    /// by nature).
    #[serde(default)]
    pub growth: Vec<Growth>,
    /// `--slo`'s checks.
    #[serde(default)]
    pub slo: Vec<SloCheck>,
    /// Processes of the run's users still alive after the run (chaos:
    /// orphans of killed workers); none when not checked.
    #[serde(default)]
    pub orphans: Option<Vec<u32>>,
    /// Users logged in by the end (`login-storm`: the calm users too).
    #[serde(default)]
    pub users_logged_in: u32,
    /// Open model: requests the harness started more than 5 ms after they
    /// were due (its own CPU fell behind: the rate was not fully offered).
    #[serde(default)]
    pub harness_late: u64,
    /// Open model: arrivals dropped because no user had logged in yet
    /// (during the ramp's first login), not sent and not counted above.
    #[serde(default)]
    pub arrivals_without_user: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub scenario: String,
    pub users: u32,
    pub ramp_s: f64,
    pub duration_s: f64,
    /// Open model: requests started per second, whatever the answers do.
    pub rate: Option<f64>,
    /// Closed model: requests in flight at once, each sent when the last
    /// answer is in.
    pub concurrency: Option<u32>,
    pub chaos: Vec<String>,
    pub sample_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineInfo {
    pub cpus: usize,
    pub kernel: Option<String>,
}

/// Counts and latencies of one operation (or of all).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OpStats {
    /// Requests answered or failed.
    pub count: u64,
    pub errors: u64,
    /// Errors by kind: an HTTP status (`"503"`), `connect`, `timeout`,
    /// `closed` (the connection ended mid-answer), `check` (a 2xx whose
    /// body was wrong), `backlog` (the client could not start the request
    /// on time: more in flight than `--max-in-flight`).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Latency of every request, failed ones included, in milliseconds.
    pub latency_ms: Percentiles,
}

impl OpStats {
    pub fn error_fraction(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.errors as f64 / self.count as f64
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    #[serde(default)]
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// A histogram of nanoseconds in milliseconds.
    pub fn of(histogram: &hdrhistogram::Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        Percentiles {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p95: ms(histogram.value_at_quantile(0.95)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1e6,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SlotStats {
    pub users: u32,
    pub count: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
}

/// One second of the run (requests that ended in it).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the start of measuring (this entry covers t..t+1).
    pub t: u32,
    pub count: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChaosEvent {
    /// Seconds since the start of measuring.
    pub at_s: f64,
    /// `kill-worker` or `restart-master`.
    pub action: String,
    pub slot: Option<u32>,
    pub pid: Option<u32>,
    /// `done`, or what went wrong.
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Verification {
    /// Writes the server answered 2xx (the newest per file is checked).
    pub acknowledged: u64,
    /// Files read back.
    pub checked: u64,
    /// Files whose content is not what the acknowledged write put there
    /// (or that are gone: 404).
    pub lost: Vec<LostWrite>,
    /// Files the server gave no answer for, for a minute (not counted as
    /// lost, nor as checked).
    #[serde(default)]
    pub unverified: Vec<LostWrite>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LostWrite {
    pub user: String,
    pub path: String,
    /// `missing` (404), `changed` (other bytes), or the read's error.
    pub reason: String,
}

/// The server's processes and metrics at one moment.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the start of measuring.
    pub t_s: f64,
    pub processes: Vec<ProcessSample>,
    /// Chosen series of the server's `/metrics` (name with labels).
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProcessSample {
    /// `master` or `worker`.
    pub role: String,
    pub slot: Option<u32>,
    pub pid: u32,
    pub rss_bytes: u64,
    pub fds: u64,
    pub threads: u64,
}

/// How a sampled series grew over the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Growth {
    /// `master rss_bytes`, `workers fds`...
    pub series: String,
    /// Mean over the first and the last tenth of the samples.
    pub first: f64,
    pub last: f64,
    pub change_pct: f64,
    /// Grew by more than the allowed share (`--growth-limit`).
    pub flagged: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloCheck {
    /// As written: `p99<50ms`, `errors<0.1%`, `list.p99<20ms`.
    pub objective: String,
    /// The measured value, in the objective's unit (ms, %, or req/s); none
    /// when the run made no such request (then not met).
    pub measured: Option<f64>,
    pub met: bool,
}

impl RunResults {
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).context("cannot encode the results")
    }

    /// Reads a results document, refusing another schema by name.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text).context("not a JSON document")?;
        match value.get("schema").and_then(|schema| schema.as_str()) {
            Some(SCHEMA) => {}
            Some(other) => bail!("results of schema {other:?}, this warren-bench reads {SCHEMA:?}"),
            None => bail!("not warren-bench run results (no \"schema\" field)"),
        }
        serde_json::from_value(value).context("malformed results")
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        RunResults::from_json(&text).with_context(|| format!("{}", path.display()))
    }

    /// Requests per second over the run.
    pub fn throughput(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.total.count as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    /// The table a person reads at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let s = &self.settings;
        let model = match (s.rate, s.concurrency) {
            (Some(rate), _) => format!("open model, {rate} req/s"),
            (None, Some(c)) => format!("closed model, {c} in flight"),
            (None, None) => "no load".to_string(),
        };
        let _ = writeln!(
            out,
            "warren-bench run: {} against {}, {} users, {model}, {:.1} s measured ({:.0} req/s)",
            s.scenario,
            self.target,
            s.users,
            self.elapsed_s,
            self.throughput()
        );
        let _ = writeln!(
            out,
            "{:<13} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  errors by kind",
            "operation",
            "count",
            "errors",
            "p50 ms",
            "p90 ms",
            "p95 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms"
        );
        let rows = self
            .operations
            .iter()
            .map(|(name, stats)| (name.as_str(), stats))
            .chain([("all", &self.total)]);
        for (name, stats) in rows {
            let l = &stats.latency_ms;
            let _ = writeln!(
                out,
                "{name:<13} {:>9} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  {}",
                stats.count,
                stats.errors,
                l.p50,
                l.p90,
                l.p95,
                l.p99,
                l.p999,
                l.max,
                kinds(&stats.errors_by_kind)
            );
        }
        let _ = writeln!(out, "users logged in at the end: {}", self.users_logged_in);
        if self.arrivals_without_user > 0 {
            let _ = writeln!(
                out,
                "harness: {} arrivals before any user had logged in were not sent",
                self.arrivals_without_user
            );
        }
        if self.harness_late > 0 {
            let _ = writeln!(
                out,
                "harness: {} requests started over 5 ms late (the client fell behind its schedule)",
                self.harness_late
            );
        }
        if self.slots.len() > 1 || !self.chaos.is_empty() {
            let _ = writeln!(out, "by slot of the users:");
            for (slot, stats) in &self.slots {
                let _ = writeln!(
                    out,
                    "  slot {slot:<7} {:>5} users {:>9} requests {:>8} errors  {}",
                    stats.users,
                    stats.count,
                    stats.errors,
                    kinds(&stats.errors_by_kind)
                );
            }
        }
        if !self.chaos.is_empty() {
            let done = self.chaos.iter().filter(|e| e.outcome == "done").count();
            let _ = writeln!(
                out,
                "chaos: {} actions, {done} done{}",
                self.chaos.len(),
                self.chaos
                    .iter()
                    .find(|e| e.outcome != "done")
                    .map(|e| format!(" (first failure: {})", e.outcome))
                    .unwrap_or_default()
            );
        }
        if let Some(orphans) = &self.orphans {
            let _ = writeln!(
                out,
                "orphan processes of the run's users: {}",
                if orphans.is_empty() {
                    "none".to_string()
                } else {
                    format!("{orphans:?}")
                }
            );
        }
        if let Some(v) = &self.verification {
            let _ = writeln!(
                out,
                "acknowledged writes: {} ({} files read back): {}{}",
                v.acknowledged,
                v.checked,
                if v.lost.is_empty() {
                    "none lost".to_string()
                } else {
                    format!("{} LOST", v.lost.len())
                },
                if v.unverified.is_empty() {
                    String::new()
                } else {
                    format!(", {} UNVERIFIED (no answer)", v.unverified.len())
                }
            );
            for lost in v.lost.iter().chain(&v.unverified).take(20) {
                let _ = writeln!(out, "  {} {} ({})", lost.user, lost.path, lost.reason);
            }
        }
        for growth in &self.growth {
            let _ = writeln!(
                out,
                "growth {:<24} {:>14.0} -> {:>14.0} ({:+.1} %){}",
                growth.series,
                growth.first,
                growth.last,
                growth.change_pct,
                if growth.flagged { "  GROWING" } else { "" }
            );
        }
        for check in &self.slo {
            let measured = check
                .measured
                .map_or_else(|| "not measured".to_string(), |m| format!("{m:.3}"));
            let _ = writeln!(
                out,
                "slo {:<24} measured {measured:<12} {}",
                check.objective,
                if check.met { "met" } else { "VIOLATED" }
            );
        }
        out
    }
}

fn kinds(kinds: &BTreeMap<String, u64>) -> String {
    kinds
        .iter()
        .map(|(kind, n)| format!("{kind}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One objective of `--slo`: `[operation.]metric < value[unit]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    pub text: String,
    /// None: all requests together.
    pub operation: Option<String>,
    pub metric: Metric,
    /// In the metric's unit: ms, a fraction (not %), req/s.
    pub limit: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// A latency percentile (p50, p90, p99, p99.9, max, mean): below.
    Latency(Quantile),
    /// Share of failed requests: below.
    Errors,
    /// Requests per second: above.
    Throughput,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantile {
    P50,
    P90,
    P95,
    P99,
    P999,
    Max,
    Mean,
}

impl Quantile {
    fn of(self, p: &Percentiles) -> f64 {
        match self {
            Quantile::P50 => p.p50,
            Quantile::P90 => p.p90,
            Quantile::P95 => p.p95,
            Quantile::P99 => p.p99,
            Quantile::P999 => p.p999,
            Quantile::Max => p.max,
            Quantile::Mean => p.mean,
        }
    }
}

/// Parses `p99<50ms,errors<0.1%,rps>100,list.p99<20ms`.
pub fn parse_slo(text: &str) -> Result<Vec<Objective>> {
    let mut objectives = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        objectives.push(parse_objective(part).with_context(|| {
            format!("bad objective {part:?} (the form is p99<50ms, errors<0.1%, rps>100, or OP.p99<50ms)")
        })?);
    }
    if objectives.is_empty() {
        bail!("--slo names no objective");
    }
    Ok(objectives)
}

fn parse_objective(text: &str) -> Result<Objective> {
    let (left, right, above) = if let Some((l, r)) = text.split_once('<') {
        (l.trim(), r.trim(), false)
    } else if let Some((l, r)) = text.split_once('>') {
        (l.trim(), r.trim(), true)
    } else {
        bail!("no < or >");
    };
    // `p99.9` has a dot of its own.
    let (operation, name) = if let Some(op) = left.strip_suffix(".p99.9") {
        (Some(op.to_string()), "p99.9".to_string())
    } else if left == "p99.9" {
        (None, left.to_string())
    } else {
        match left.rsplit_once('.') {
            Some((op, rest)) => (Some(op.to_string()), rest.to_string()),
            None => (None, left.to_string()),
        }
    };
    let metric = match name.as_str() {
        "p50" => Metric::Latency(Quantile::P50),
        "p90" => Metric::Latency(Quantile::P90),
        "p95" => Metric::Latency(Quantile::P95),
        "p99" => Metric::Latency(Quantile::P99),
        "p99.9" | "p999" => Metric::Latency(Quantile::P999),
        "max" => Metric::Latency(Quantile::Max),
        "mean" => Metric::Latency(Quantile::Mean),
        "errors" => Metric::Errors,
        "rps" => Metric::Throughput,
        other => bail!("unknown measure {other:?}"),
    };
    let number = |s: &str| -> Result<f64> {
        let value: f64 = s
            .trim()
            .parse()
            .with_context(|| format!("{s:?} is not a number"))?;
        if !value.is_finite() || value < 0.0 {
            bail!("{s:?} is not a finite, non-negative number");
        }
        Ok(value)
    };
    let limit = match metric {
        Metric::Latency(_) => {
            if above {
                bail!("latency objectives are upper bounds (<)");
            }
            if let Some(ms) = right.strip_suffix("ms") {
                number(ms)?
            } else if let Some(us) = right.strip_suffix("us") {
                number(us)? / 1000.0
            } else if let Some(s) = right.strip_suffix('s') {
                number(s)? * 1000.0
            } else {
                bail!("a latency needs a unit: ms, us or s");
            }
        }
        Metric::Errors => {
            if above {
                bail!("error objectives are upper bounds (<)");
            }
            match right.strip_suffix('%') {
                Some(pct) => number(pct)? / 100.0,
                None => bail!("an error share is a percentage (errors<0.1%)"),
            }
        }
        Metric::Throughput => {
            if !above {
                bail!("throughput objectives are lower bounds (rps>100)");
            }
            number(right)?
        }
    };
    Ok(Objective {
        text: text.to_string(),
        operation,
        metric,
        limit,
    })
}

/// Judges `objectives` against `results`; an objective naming an operation
/// the run did not make is not met (a gate that cannot see must not pass).
pub fn check_slo(results: &RunResults, objectives: &[Objective]) -> Vec<SloCheck> {
    objectives
        .iter()
        .map(|objective| {
            let stats = match &objective.operation {
                None => Some(&results.total),
                Some(op) => results.operations.get(op),
            };
            let Some(stats) = stats.filter(|s| s.count > 0) else {
                return SloCheck {
                    objective: objective.text.clone(),
                    measured: None,
                    met: false,
                };
            };
            let (measured, met) = match objective.metric {
                Metric::Latency(quantile) => {
                    let value = quantile.of(&stats.latency_ms);
                    (value, value < objective.limit)
                }
                Metric::Errors => {
                    let share = stats.error_fraction();
                    (share * 100.0, share < objective.limit)
                }
                Metric::Throughput => {
                    let rps = if results.elapsed_s > 0.0 {
                        stats.count as f64 / results.elapsed_s
                    } else {
                        0.0
                    };
                    (rps, rps > objective.limit)
                }
            };
            SloCheck {
                objective: objective.text.clone(),
                measured: Some(measured),
                met,
            }
        })
        .collect()
}

/// Each figure of `new` beside the same in `old`, with its change.
pub fn compare(old: &RunResults, new: &RunResults) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "compared with the run of {} ({} against {}):",
        old.started_unix, old.settings.scenario, old.target
    );
    let _ = writeln!(
        out,
        "{:<12} {:<8} {:>12} {:>12} {:>9}",
        "operation", "figure", "old", "new", "change"
    );
    let mut row = |op: &str, figure: &str, a: f64, b: f64| {
        let change = if a != 0.0 {
            format!("{:+.1} %", (b - a) / a * 100.0)
        } else if b == 0.0 {
            "=".to_string()
        } else {
            "new".to_string()
        };
        let _ = writeln!(out, "{op:<12} {figure:<8} {a:>12.3} {b:>12.3} {change:>9}");
    };
    row("all", "req/s", old.throughput(), new.throughput());
    let names: std::collections::BTreeSet<&String> =
        old.operations.keys().chain(new.operations.keys()).collect();
    let empty = OpStats::default();
    for name in names.into_iter().map(String::as_str).chain(["all"]) {
        let (a, b) = if name == "all" {
            (&old.total, &new.total)
        } else {
            (
                old.operations.get(name).unwrap_or(&empty),
                new.operations.get(name).unwrap_or(&empty),
            )
        };
        row(name, "count", a.count as f64, b.count as f64);
        row(
            name,
            "errors%",
            a.error_fraction() * 100.0,
            b.error_fraction() * 100.0,
        );
        row(name, "p50 ms", a.latency_ms.p50, b.latency_ms.p50);
        row(name, "p99 ms", a.latency_ms.p99, b.latency_ms.p99);
        row(name, "p99.9 ms", a.latency_ms.p999, b.latency_ms.p999);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A results document with every part filled in.
    pub(crate) fn sample() -> RunResults {
        let stats = OpStats {
            count: 1000,
            errors: 2,
            errors_by_kind: BTreeMap::from([("503".to_string(), 1), ("timeout".to_string(), 1)]),
            latency_ms: Percentiles {
                p50: 1.5,
                p90: 3.0,
                p95: 6.0,
                p99: 12.25,
                p999: 40.0,
                max: 80.5,
                mean: 2.0,
            },
        };
        RunResults {
            schema: SCHEMA.to_string(),
            harness_version: "0.1.0".to_string(),
            started_unix: 1_800_000_000,
            target: "http://127.0.0.1:8080".to_string(),
            settings: Settings {
                scenario: "mixed".to_string(),
                users: 100,
                ramp_s: 5.0,
                duration_s: 60.0,
                rate: Some(200.0),
                concurrency: None,
                chaos: vec!["kill-worker:every=2s".to_string()],
                sample_s: Some(10.0),
            },
            machine: MachineInfo {
                cpus: 2,
                kernel: Some("6.1".to_string()),
            },
            elapsed_s: 10.0,
            total: stats.clone(),
            operations: BTreeMap::from([("list".to_string(), stats.clone())]),
            slots: BTreeMap::from([(
                "0".to_string(),
                SlotStats {
                    users: 50,
                    count: 500,
                    errors: 2,
                    errors_by_kind: BTreeMap::from([("503".to_string(), 2)]),
                },
            )]),
            timeline: vec![Second {
                t: 0,
                count: 100,
                errors: 1,
                p50_ms: 1.0,
                p99_ms: 9.0,
                max_ms: 20.0,
            }],
            chaos: vec![ChaosEvent {
                at_s: 2.0,
                action: "kill-worker".to_string(),
                slot: Some(0),
                pid: Some(1234),
                outcome: "done".to_string(),
            }],
            verification: Some(Verification {
                acknowledged: 10,
                checked: 9,
                lost: vec![LostWrite {
                    user: "u1".to_string(),
                    path: "a/b".to_string(),
                    reason: "missing".to_string(),
                }],
                unverified: vec![],
            }),
            samples: vec![Sample {
                t_s: 10.0,
                processes: vec![ProcessSample {
                    role: "master".to_string(),
                    slot: None,
                    pid: 1,
                    rss_bytes: 1 << 20,
                    fds: 12,
                    threads: 3,
                }],
                metrics: BTreeMap::from([("warren_sessions_active".to_string(), 5.0)]),
            }],
            growth: vec![Growth {
                series: "master rss_bytes".to_string(),
                first: 1.0,
                last: 1.01,
                change_pct: 1.0,
                flagged: false,
            }],
            slo: vec![SloCheck {
                objective: "p99<50ms".to_string(),
                measured: Some(12.25),
                met: true,
            }],
            orphans: Some(vec![]),
            users_logged_in: 100,
            harness_late: 3,
            arrivals_without_user: 0,
        }
    }

    #[test]
    fn the_json_schema_round_trips() {
        let results = sample();
        let text = results.to_json().unwrap();
        assert!(text.contains(r#""schema": "warren-bench-run/1""#), "{text}");
        assert_eq!(RunResults::from_json(&text).unwrap(), results);
    }

    #[test]
    fn another_schema_or_no_schema_is_refused_by_name() {
        let text = sample().to_json().unwrap();
        let other = text.replace("warren-bench-run/1", "warren-bench-run/2");
        let err = RunResults::from_json(&other).unwrap_err().to_string();
        assert!(err.contains("warren-bench-run/2"), "{err}");
        let err = RunResults::from_json("{}").unwrap_err().to_string();
        assert!(err.contains("no \"schema\""), "{err}");
    }

    #[test]
    fn slo_objectives_parse_with_units() {
        let objectives =
            parse_slo("p99<50ms, errors<0.1%,rps>100,list.p99.9<2s,p50<500us").unwrap();
        assert_eq!(objectives.len(), 5);
        assert_eq!(objectives[0].limit, 50.0);
        assert!((objectives[1].limit - 0.001).abs() < 1e-12);
        assert_eq!(objectives[2].metric, Metric::Throughput);
        assert_eq!(objectives[3].operation.as_deref(), Some("list"));
        assert_eq!(objectives[3].limit, 2000.0);
        assert_eq!(objectives[4].limit, 0.5);
        for bad in [
            "p99<50",
            "p99>50ms",
            "errors<1",
            "rps<3",
            "p98<1ms",
            "",
            "p99<-1ms",
            "p99<NaNms",
        ] {
            assert!(parse_slo(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn slo_fails_on_a_violated_threshold_and_on_an_unseen_operation() {
        let results = sample();
        let checks = check_slo(&results, &parse_slo("p99<50ms,errors<1%").unwrap());
        assert!(checks.iter().all(|c| c.met), "{checks:?}");
        let checks = check_slo(&results, &parse_slo("p99<10ms").unwrap());
        assert!(!checks[0].met);
        assert_eq!(checks[0].measured, Some(12.25));
        let checks = check_slo(&results, &parse_slo("errors<0.1%").unwrap());
        assert!(!checks[0].met, "0.2 % errors passed 0.1 %");
        let checks = check_slo(&results, &parse_slo("write.p99<1s").unwrap());
        assert!(!checks[0].met, "an operation the run never made passed");
        let checks = check_slo(&results, &parse_slo("rps>1000").unwrap());
        assert!(!checks[0].met, "100 req/s passed rps>1000");
    }

    #[test]
    fn compare_prints_each_change() {
        let old = sample();
        let mut new = sample();
        new.total.latency_ms.p99 = 24.5;
        let text = compare(&old, &new);
        assert!(text.contains("+100.0 %"), "{text}");
    }
}
