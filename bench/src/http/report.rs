//! The results of `warren-bench http`: a table for people, JSON for tools,
//! and the targets of issue #3 judged against the figures.

use super::api::Samples;
use super::load::{Errors, Outcome, Percentiles};
use crate::report::{nanos, per_second_of, ratio, render, target_cell, thousands, Machine, Target};
use serde::Serialize;

/// (a): warren's ping throughput over the bare handler's, at least.
pub const TARGET_THROUGHPUT_RATIO: f64 = 0.5;
/// (b): the label warren puts on queries of its background work (the
/// revocation feed, batched `last_seen` writes, housekeeping): they run on
/// timers, not per request, so (b) is judged on all other label sets.
pub const BACKGROUND_LABEL: &str = r#"origin="background""#;
/// (c): ping p99 during the login storm over the quiet p99, at most.
pub const TARGET_STORM_P99_RATIO: f64 = 3.0;

#[derive(Debug, Serialize)]
pub struct Settings {
    /// Measuring time of each series of (a) and of (c)'s storm window; (c)'s
    /// quiet series is as long, half before and half after the storm.
    pub seconds: f64,
    pub warmup_seconds: f64,
    /// Alternating slices per series in (a).
    pub slices: u32,
    pub users: usize,
    /// Keep-alive connections of the ping load.
    pub concurrency: usize,
    /// Worker processes of the warren under test.
    pub workers: u32,
    pub storm_logins: usize,
    pub storm_accounts: usize,
    /// (c): pings per second sent by each connection.
    pub user_rate: f64,
    /// Threads of the load generator's tokio runtime.
    pub bench_threads: usize,
    pub bare_only: bool,
}

/// One series of requests.
#[derive(Debug, Serialize)]
pub struct Series {
    /// Successful requests (2xx, body checked).
    pub requests: u64,
    pub seconds: f64,
    /// Successful requests per second.
    pub per_second: f64,
    /// Of successful requests; from send (closed loop) or from the scheduled
    /// send (paced) to the answer's last byte.
    pub latency: Percentiles,
    pub errors: Errors,
    /// In flight when the series was cancelled (the login storm only).
    pub abandoned: u64,
}

impl Series {
    pub fn of(outcome: &Outcome) -> Self {
        Series {
            requests: outcome.completed,
            seconds: outcome.elapsed.as_secs_f64(),
            per_second: outcome.per_second(),
            latency: Percentiles::of(&outcome.latency),
            errors: outcome.errors.clone(),
            abandoned: outcome.abandoned,
        }
    }

    /// Some requests succeeded and none failed: the figure stands.
    pub fn clean(&self) -> bool {
        self.requests > 0 && self.errors.total() == 0
    }

    fn p50_p99(&self) -> String {
        format!(
            "{} / {}",
            nanos(self.latency.p50_ns as f64),
            nanos(self.latency.p99_ns as f64)
        )
    }
}

/// (b): `warren_db_queries_total` over (a)'s slices.
#[derive(Debug, Serialize)]
pub struct DbQueries {
    /// Whether warren exports the counter at all.
    pub exported: bool,
    /// Successful pings in warren's slices.
    pub requests: u64,
    /// Increase over warren's slices, by label set.
    pub during_load: Samples,
    /// Increase over the bare server's slices (as long, warren idle): what
    /// warren queries with no requests at all.
    pub while_idle: Samples,
    /// All label sets during load / requests.
    pub per_request: Option<f64>,
    /// Label sets other than [`BACKGROUND_LABEL`] during load / requests:
    /// the queries made while serving requests. The target (0) is judged on
    /// this.
    pub per_request_excluding_background: Option<f64>,
}

impl DbQueries {
    pub fn new(exported: bool, during_load: Samples, while_idle: Samples, requests: u64) -> Self {
        let foreground: f64 = during_load
            .iter()
            .filter(|(labels, _)| !labels.contains(BACKGROUND_LABEL))
            .map(|(_, queries)| queries)
            .sum();
        let per = |queries: f64| (exported && requests > 0).then(|| queries / requests as f64);
        DbQueries {
            exported,
            requests,
            per_request: per(total(&during_load)),
            per_request_excluding_background: per(foreground),
            during_load,
            while_idle,
        }
    }

    fn by_label_set(&self) -> String {
        let mut labels: Vec<&String> = self.during_load.keys().collect();
        labels.extend(self.while_idle.keys());
        labels.sort();
        labels.dedup();
        labels
            .into_iter()
            .map(|label| {
                let count = |samples: &Samples| samples.get(label).copied().unwrap_or(0.0);
                let name = if label.is_empty() {
                    "(no labels)"
                } else {
                    label
                };
                format!(
                    "{name} {} / {}",
                    count(&self.during_load),
                    count(&self.while_idle)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn total(samples: &Samples) -> f64 {
    samples.values().sum()
}

/// (c): paced pings without and during the login storm.
#[derive(Debug, Serialize)]
pub struct StormFigure {
    /// Pings per second sent (all connections together).
    pub rate_per_second: f64,
    pub quiet: Series,
    pub during_storm: Series,
    /// The storm's logins (throughput and latency under the storm).
    pub storm_logins: Series,
    /// How long one login took right after the storm's connections closed:
    /// the time warren needed to drop (or finish) the logins still queued.
    pub drain_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct HttpReport {
    pub machine: Machine,
    pub settings: Settings,
    /// (a) warren; `None` with `--bare-only`.
    pub ping_warren: Option<Series>,
    /// (a) the bare handler.
    pub ping_bare: Series,
    /// (b)
    pub db_queries: Option<DbQueries>,
    /// (c)
    pub storm: Option<StormFigure>,
    /// (d) one login at a time.
    pub login: Option<Series>,
    pub targets: Vec<Target>,
}

impl HttpReport {
    pub fn new(
        settings: Settings,
        ping_warren: Option<Series>,
        ping_bare: Series,
        db_queries: Option<DbQueries>,
        storm: Option<StormFigure>,
        login: Option<Series>,
    ) -> Self {
        let mut targets = Vec::new();
        if let Some(warren) = &ping_warren {
            let times = warren.per_second / ping_bare.per_second;
            let clean = warren.clean() && ping_bare.clean();
            targets.push(Target {
                name: "(a) ping throughput, warren / bare".into(),
                target: format!(">= {TARGET_THROUGHPUT_RATIO:.2}x"),
                measured: if clean {
                    format!("{times:.2}x")
                } else {
                    "errors".into()
                },
                met: clean && times >= TARGET_THROUGHPUT_RATIO,
            });
        }
        if let Some(db) = &db_queries {
            targets.push(Target {
                name: "(b) database queries per authenticated request".into(),
                target: "= 0".into(),
                measured: match db.per_request_excluding_background {
                    Some(per_request) => format!("{per_request:.4}"),
                    None if !db.exported => "no warren_db_queries_total".into(),
                    None => "no requests".into(),
                },
                met: db.per_request_excluding_background == Some(0.0),
            });
        }
        if let Some(storm) = &storm {
            let times =
                storm.during_storm.latency.p99_ns as f64 / storm.quiet.latency.p99_ns as f64;
            let clean = storm.quiet.clean() && storm.during_storm.clean();
            targets.push(Target {
                name: format!(
                    "(c) ping p99 during {} logins / quiet",
                    settings.storm_logins
                ),
                target: format!("<= {TARGET_STORM_P99_RATIO:.1}x"),
                measured: if clean {
                    format!("{times:.2}x")
                } else {
                    "errors".into()
                },
                met: clean && times <= TARGET_STORM_P99_RATIO,
            });
        }
        HttpReport {
            machine: Machine::current(),
            settings,
            ping_warren,
            ping_bare,
            db_queries,
            storm,
            login,
            targets,
        }
    }

    pub fn table(&self) -> String {
        let s = &self.settings;
        let dash = || "-".to_string();
        let mut rows: Vec<Vec<String>> = vec![vec![
            "figure".into(),
            "warren".into(),
            "bare axum".into(),
            "ratio".into(),
            "target".into(),
        ]];
        let bare = &self.ping_bare;
        let warren = self.ping_warren.as_ref();
        rows.push(vec![
            format!("(a) GET /api/v1/ping, {} connections", s.concurrency),
            warren.map_or_else(dash, |w| per_second_of(w.per_second, "req/s")),
            per_second_of(bare.per_second, "req/s"),
            warren.map_or_else(dash, |w| format!("{:.2}x", w.per_second / bare.per_second)),
            target_cell(&self.targets, "(a)"),
        ]);
        rows.push(vec![
            "    latency p50 / p99".into(),
            warren.map_or_else(dash, Series::p50_p99),
            bare.p50_p99(),
            warren.map_or_else(dash, |w| {
                ratio(w.latency.p99_ns as f64, bare.latency.p99_ns as f64)
            }),
            dash(),
        ]);
        if let Some(db) = &self.db_queries {
            let per_request = |figure: Option<f64>| {
                figure.map_or("unknown".into(), |per_request| format!("{per_request:.4}"))
            };
            rows.push(vec![
                "(b) DB queries per request, not background".into(),
                per_request(db.per_request_excluding_background),
                dash(),
                dash(),
                target_cell(&self.targets, "(b)"),
            ]);
            rows.push(vec![
                "    all label sets".into(),
                per_request(db.per_request),
                dash(),
                dash(),
                dash(),
            ]);
        }
        if let Some(storm) = &self.storm {
            rows.push(vec![
                format!(
                    "(c) ping at {}, quiet, p50 / p99",
                    per_second_of(storm.rate_per_second, "req/s")
                ),
                storm.quiet.p50_p99(),
                dash(),
                dash(),
                dash(),
            ]);
            rows.push(vec![
                format!("    during {} logins, p50 / p99", s.storm_logins),
                storm.during_storm.p50_p99(),
                dash(),
                ratio(
                    storm.during_storm.latency.p99_ns as f64,
                    storm.quiet.latency.p99_ns as f64,
                ),
                target_cell(&self.targets, "(c)"),
            ]);
        }
        if let Some(login) = &self.login {
            rows.push(vec![
                "(d) login, one at a time, p50 / p99".into(),
                login.p50_p99(),
                dash(),
                dash(),
                dash(),
            ]);
        }
        if let Some(storm) = &self.storm {
            let logins = &storm.storm_logins;
            rows.push(vec![
                format!("    during the storm, p50 / p99"),
                logins.p50_p99(),
                dash(),
                dash(),
                dash(),
            ]);
            rows.push(vec![
                "    logins completed during the storm".into(),
                per_second_of(logins.per_second, "logins/s"),
                dash(),
                dash(),
                dash(),
            ]);
        }

        let mut text = format!(
            "warren-bench http: {} CPUs, kernel {}; {}{} users over {} connections; {} s per series (+{} s warm-up), {} alternating slices\n\n",
            self.machine.cpus,
            self.machine.kernel.as_deref().unwrap_or("unknown"),
            if s.bare_only {
                "bare server only; ".to_string()
            } else {
                format!("warren with {} workers; ", s.workers)
            },
            s.users,
            s.concurrency,
            s.seconds,
            s.warmup_seconds,
            s.slices,
        );
        text.push_str(&render(&rows));
        text.push_str("\nthroughput: successful requests / wall time; latency: from the send (a paced ping sent late because\nthe previous answer was late: from its scheduled time) to the answer's last byte; ratio: warren / bare\n(throughput), or p99 / p99 (latency: warren / bare in (a), storm / quiet in (c))\n");
        if let Some(db) = &self.db_queries {
            text.push_str(&format!(
                "(b): warren_db_queries_total between (a)'s slices, by label set, during warren's ({} requests) / during the bare server's (warren idle): {}\n",
                thousands(db.requests),
                if db.exported { db.by_label_set() } else { "not exported".into() }
            ));
        }
        if let Some(storm) = &self.storm {
            let share = warren.map_or(0.0, |w| storm.rate_per_second / w.per_second);
            text.push_str(&format!(
                "(c): each connection pings {} times a second on a fixed schedule ({:.1}% of warren's (a) throughput); the storm: {} connections logging in back to back as {} accounts\n",
                s.user_rate,
                share * 100.0,
                s.storm_logins,
                s.storm_accounts
            ));
        }
        text.push_str("\nerrors:\n");
        let mut series: Vec<(&str, &Series)> = Vec::new();
        if let Some(warren) = warren {
            series.push(("(a) warren", warren));
        }
        series.push(("(a) bare", bare));
        if let Some(storm) = &self.storm {
            series.push(("(c) quiet", &storm.quiet));
            series.push(("(c) during the storm", &storm.during_storm));
            series.push(("(c) storm logins", &storm.storm_logins));
        }
        if let Some(login) = &self.login {
            series.push(("(d) logins", login));
        }
        for (name, figure) in series {
            let abandoned = if figure.abandoned > 0 {
                format!(", {} in flight when stopped", figure.abandoned)
            } else {
                String::new()
            };
            text.push_str(&format!(
                "  {name:<21} {} requests: {}{abandoned}\n",
                thousands(figure.requests),
                figure.errors.describe()
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::load::{histogram, Outcome};
    use std::time::Duration;

    fn series(requests: u64, seconds: u64, latency_us: u64, errors: u64) -> Series {
        let mut outcome = Outcome::new().unwrap();
        outcome.completed = requests;
        outcome.elapsed = Duration::from_secs(seconds);
        outcome.latency = histogram().unwrap();
        for _ in 0..requests {
            outcome.latency.record(latency_us * 1_000).unwrap();
        }
        outcome.errors.transport = errors;
        Series::of(&outcome)
    }

    fn settings() -> Settings {
        Settings {
            seconds: 10.0,
            warmup_seconds: 1.0,
            slices: 10,
            users: 64,
            concurrency: 64,
            workers: 2,
            storm_logins: 200,
            storm_accounts: 20,
            user_rate: 25.0,
            bench_threads: 2,
            bare_only: false,
        }
    }

    fn storm(quiet_us: u64, storm_us: u64) -> StormFigure {
        StormFigure {
            rate_per_second: 1000.0,
            quiet: series(100, 1, quiet_us, 0),
            during_storm: series(100, 1, storm_us, 0),
            storm_logins: series(10, 1, 50_000, 0),
            drain_seconds: 0.05,
        }
    }

    #[test]
    fn targets_are_judged_against_the_figures() {
        let report = HttpReport::new(
            settings(),
            Some(series(600, 1, 100, 0)),
            series(1000, 1, 50, 0),
            Some(db(0.0, 40.0, 600_000)),
            Some(storm(100, 300)),
            Some(series(10, 1, 40_000, 0)),
        );
        let met: Vec<bool> = report.targets.iter().map(|t| t.met).collect();
        assert_eq!(met, [true, true, true]);
        assert_eq!(report.targets[0].measured, "0.60x");

        let report = HttpReport::new(
            settings(),
            Some(series(400, 1, 100, 0)),
            series(1000, 1, 50, 0),
            Some(db(60.0, 40.0, 600_000)),
            Some(storm(100, 310)),
            None,
        );
        let met: Vec<bool> = report.targets.iter().map(|t| t.met).collect();
        assert_eq!(met, [false, false, false]);
        assert_eq!(report.targets[1].measured, "0.0001");
    }

    #[test]
    fn errors_fail_a_figure_whatever_its_numbers() {
        let report = HttpReport::new(
            settings(),
            Some(series(1000, 1, 100, 1)),
            series(1000, 1, 50, 0),
            Some(DbQueries::new(false, Samples::new(), Samples::new(), 1000)),
            None,
            None,
        );
        assert!(!report.targets[0].met);
        assert_eq!(report.targets[0].measured, "errors");
        // No counter at all: not "0 queries".
        assert!(!report.targets[1].met);
        assert_eq!(report.targets[1].measured, "no warren_db_queries_total");
        let table = report.table();
        assert!(table.contains("(MISSED)"), "{table}");
        assert!(table.contains("transport x1"), "{table}");
    }

    /// `requests` queries on the request path, and background ones.
    fn db(request_path: f64, background: f64, requests: u64) -> DbQueries {
        let during_load = Samples::from([
            (r#"{origin="background"}"#.into(), background),
            (r#"{origin="request"}"#.into(), request_path),
        ]);
        let while_idle = Samples::from([(r#"{origin="background"}"#.into(), 10.0)]);
        DbQueries::new(true, during_load, while_idle, requests)
    }

    #[test]
    fn db_queries_of_background_work_are_shown_but_not_judged() {
        let mut during_load = Samples::from([(r#"{origin="background"}"#.into(), 50.0)]);
        let figure = DbQueries::new(true, during_load.clone(), Samples::new(), 1000);
        assert_eq!(figure.per_request, Some(0.05));
        assert_eq!(figure.per_request_excluding_background, Some(0.0));
        during_load.insert(r#"{origin="request"}"#.into(), 10.0);
        let figure = DbQueries::new(true, during_load, Samples::new(), 1000);
        assert_eq!(figure.per_request, Some(0.06));
        assert_eq!(figure.per_request_excluding_background, Some(0.01));
        assert_eq!(
            figure.by_label_set(),
            r#"{origin="background"} 50 / 0, {origin="request"} 10 / 0"#
        );
        assert_eq!(db(1.0, 1.0, 0).per_request, None);
    }

    #[test]
    fn the_table_has_every_figure() {
        let report = HttpReport::new(
            settings(),
            Some(series(600, 1, 100, 0)),
            series(1000, 1, 50, 0),
            Some(db(0.0, 0.0, 600)),
            Some(storm(100, 200)),
            Some(series(10, 1, 40_000, 0)),
        );
        let table = report.table();
        for needle in [
            "(a) GET /api/v1/ping, 64 connections",
            "600 req/s",
            "1,000 req/s",
            ">= 0.50x (met)",
            "(b) DB queries per request, not background",
            "= 0 (met)",
            r#"{origin="background"} 0 / 10, {origin="request"} 0 / 0"#,
            "<= 3.0x (met)",
            "(d) login, one at a time",
            "40.0",
            "10 logins/s",
        ] {
            assert!(table.contains(needle), "{needle:?} missing from\n{table}");
        }
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["ping_warren"]["requests"], 600);
        assert_eq!(json["targets"].as_array().unwrap().len(), 3);
    }
}
