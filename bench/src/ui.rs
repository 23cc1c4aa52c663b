//! `warren-bench ui`: the web UI's cost (the issue that brought it: "the
//! UI's assets add less than 1 MiB to the binary, and `GET /` answers in
//! under 1 ms at p50").
//!
//! warren is `warren-bench serve` (exactly `warren serve`), started by
//! [`start_warren`]; the requests come from this process, on the same cores.
//!
//! - (a) `GET /` (the page), one request at a time on one keep-alive
//!   connection: `--requests` timed after `--warmup` untimed. Each answer
//!   must be a 200 whose body holds `<!doctype html>`. Target: p50 < 1 ms.
//! - (b) the same for `GET /ui/app.js` (a 200 with a body).
//! - (c) `GET /` revalidated, `If-None-Match` carrying the page's `ETag`:
//!   each answer must be a 304 with no body.
//!
//!   (a), (b) and (c) each have their own connection and take turns in
//!   [`SLICES`] slices, so that all three share the machine's state.
//! - (d) `GET /` from `--concurrency` keep-alive connections back to back
//!   for `--seconds`, after a short warm-up: requests per second and
//!   latency.
//! - The bytes of the assets embedded in the binary
//!   ([`warren_master::http::ui::embedded_bytes`], as compiled into this
//!   bench, which embeds the same `web/` as `warren`). Target: < 1 MiB.
//!   For information, the size of the `warren` executable beside this one
//!   (`target/release/warren`), if there is one.

use crate::http::load::{
    histogram, run_into, warm_up, Client, Connection, Errors, Percentiles, Plan, RequestSpec,
};
use crate::http::report::Series;
use crate::http::{start_warren, stop};
use crate::report::{
    nanos, per_second_of, render, target_cell, thousands, verdict, Machine, Target,
};
use crate::UiArgs;
use anyhow::{Context, Result};
use hyper::header::{ETAG, IF_NONE_MATCH};
use hyper::{Method, StatusCode};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// (a): `GET /` p50, below this.
pub const TARGET_INDEX_P50_NS: u64 = 1_000_000;
/// What the UI may add to the binary, below this.
pub const TARGET_EMBEDDED_BYTES: u64 = 1024 * 1024;
/// Turns of (a)-(c): the three series take turns this many times, so that
/// they share the machine's state (the first requests after warren's start
/// are no slower than the others').
pub const SLICES: u32 = 10;
/// One sequential request's answer, at the latest.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize)]
pub struct Settings {
    /// Timed requests of each sequential series (a), (b), (c).
    pub requests: u32,
    /// Untimed requests before each of them.
    pub warmup_requests: u32,
    /// Turns the three series take, each a tenth of its requests.
    pub slices: u32,
    /// Keep-alive connections of (d).
    pub concurrency: u32,
    /// Measuring time of (d), after a warm-up of a tenth of it (0.2–1 s).
    pub seconds: f64,
    pub warmup_seconds: f64,
    pub workers: u32,
    /// Threads of the load generator's tokio runtime.
    pub bench_threads: usize,
}

/// One series of requests sent one at a time on one connection.
#[derive(Debug, Serialize)]
pub struct Sequential {
    pub path: String,
    /// The status every answer must have.
    pub expected_status: u16,
    /// Answers as expected (status and body), timed.
    pub requests: u64,
    /// Wall time of the timed requests.
    pub seconds: f64,
    /// Good answers per second, one at a time.
    pub per_second: f64,
    /// Bytes of the last good answer's body.
    pub body_bytes: usize,
    /// Of good answers: from send to the body's last byte.
    pub latency: Percentiles,
    /// Answers with another status (by status), bodies that failed the
    /// check, connection failures and timeouts.
    pub errors: Errors,
}

impl Sequential {
    /// Some requests succeeded and none failed: the figure stands.
    pub fn clean(&self) -> bool {
        self.requests > 0 && self.errors.total() == 0
    }
}

/// The `warren` executable beside this one.
#[derive(Debug, Serialize)]
pub struct Executable {
    pub path: PathBuf,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct UiReport {
    pub machine: Machine,
    pub settings: Settings,
    /// What the UI's assets add to the binary: the sum of the embedded
    /// files' sizes (what [`warren_master::http::ui::embedded_bytes`] says).
    pub embedded_bytes: u64,
    /// `warren` beside `warren-bench`, for information; `None` if absent.
    pub warren_executable: Option<Executable>,
    /// The page's `ETag`, sent back in (c).
    pub index_etag: String,
    /// (a)
    pub index: Sequential,
    /// (b)
    pub app_js: Sequential,
    /// (c)
    pub index_revalidated: Sequential,
    /// (d)
    pub index_concurrent: Series,
    pub targets: Vec<Target>,
}

pub async fn run(args: &UiArgs) -> Result<UiReport> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    eprintln!("starting warren with {} workers ...", args.workers);
    let warren = start_warren(dir.path(), args.workers, Vec::new()).await?;
    let outcome = measure(args, warren.process.address).await;
    stop(warren.process).await;
    outcome
}

async fn measure(args: &UiArgs, server: SocketAddr) -> Result<UiReport> {
    let window = args.seconds;
    let warmup = (window / 10).clamp(Duration::from_millis(200), Duration::from_secs(1));
    let settings = Settings {
        requests: args.requests,
        warmup_requests: args.warmup,
        slices: SLICES,
        concurrency: args.concurrency,
        seconds: window.as_secs_f64(),
        warmup_seconds: warmup.as_secs_f64(),
        workers: args.workers,
        bench_threads: tokio::runtime::Handle::current().metrics().num_workers(),
    };

    // The page's ETag, for (c); and a first look that the page is served.
    let page = RequestSpec::new(server, Method::GET, "/");
    let first = Connection::new(server).send(&page, TIMEOUT).await?;
    if first.status != StatusCode::OK || !is_page(&first.body) {
        anyhow::bail!(
            "GET / answered {} with {} bytes, not the page",
            first.status,
            first.body.len()
        );
    }
    let etag = first
        .headers
        .get(ETAG)
        .context("GET / has no ETag")?
        .to_str()
        .context("GET /: the ETag is not text")?
        .to_string();

    let script = RequestSpec::new(server, Method::GET, "/ui/app.js");
    let revalidate = page.clone().header(IF_NONE_MATCH, &etag)?;
    let mut series = [
        Runner::new(server, page.clone(), StatusCode::OK, is_page)?,
        Runner::new(server, script, StatusCode::OK, |body| !body.is_empty())?,
        Runner::new(
            server,
            revalidate,
            StatusCode::NOT_MODIFIED,
            <[u8]>::is_empty,
        )?,
    ];
    eprintln!(
        "(a)-(c) GET /, GET /ui/app.js, GET / revalidated: {} requests each, one at a time, \
         in {SLICES} turns (after {} each) ...",
        args.requests, args.warmup
    );
    for runner in &mut series {
        // Failures of the warm-up show up again in the timed requests.
        runner.warm_up(args.warmup).await;
    }
    for slice in 0..SLICES {
        let count = share(args.requests, slice);
        // Each series goes first in turn, so none always follows another.
        for k in 0..series.len() {
            let index = (k + slice as usize) % series.len();
            series[index].run(count).await;
        }
    }
    let [index, app_js, index_revalidated] = series.map(Runner::finish);

    eprintln!(
        "(d) GET /, {} connections for {} s (after {} s) ...",
        args.concurrency,
        window.as_secs_f64(),
        warmup.as_secs_f64()
    );
    let mut clients = (0..args.concurrency)
        .map(|_| Client::new(server, page.clone().checked(is_page)))
        .collect::<Result<Vec<_>>>()?;
    warm_up(&mut [&mut clients], warmup).await?;
    let mut concurrent = crate::http::load::Outcome::new()?;
    run_into(&mut clients, Plan::closed(window), &mut concurrent).await?;
    drop(clients);

    Ok(UiReport::new(
        settings,
        warren_master::http::ui::embedded_bytes() as u64,
        warren_executable(),
        etag,
        index,
        app_js,
        index_revalidated,
        Series::of(&concurrent),
    ))
}

/// The body of `/`: the page, not an error document.
fn is_page(body: &[u8]) -> bool {
    const DOCTYPE: &[u8] = b"<!doctype html>";
    body.windows(DOCTYPE.len())
        .any(|window| window.eq_ignore_ascii_case(DOCTYPE))
}

/// Requests of slice `slice` out of `total`, spread over [`SLICES`].
fn share(total: u32, slice: u32) -> u32 {
    let at = |slice: u32| (u64::from(total) * u64::from(slice) / u64::from(SLICES)) as u32;
    at(slice + 1) - at(slice)
}

/// One series of (a)-(c): one request, sent one at a time on one keep-alive
/// connection, a slice at a time. An answer counts if its status is the
/// expected one and its body passes the check; anything else is counted
/// in the errors (a failed connection is opened again for the next one).
struct Runner {
    connection: Connection,
    spec: RequestSpec,
    expected: StatusCode,
    check: fn(&[u8]) -> bool,
    latency: hdrhistogram::Histogram<u64>,
    errors: Errors,
    /// Time spent in this series' timed slices.
    elapsed: Duration,
    body_bytes: usize,
}

impl Runner {
    fn new(
        server: SocketAddr,
        spec: RequestSpec,
        expected: StatusCode,
        check: fn(&[u8]) -> bool,
    ) -> Result<Runner> {
        Ok(Runner {
            connection: Connection::new(server),
            spec,
            expected,
            check,
            latency: histogram()?,
            errors: Errors::default(),
            elapsed: Duration::ZERO,
            body_bytes: 0,
        })
    }

    async fn warm_up(&mut self, count: u32) {
        for _ in 0..count {
            let _ = self.connection.send(&self.spec, TIMEOUT).await;
        }
    }

    async fn run(&mut self, count: u32) {
        let started = Instant::now();
        for _ in 0..count {
            let sent = Instant::now();
            let answer = self.connection.send(&self.spec, TIMEOUT).await;
            let took = sent.elapsed();
            let (errors, path) = (&mut self.errors, &self.spec.uri);
            match answer {
                Ok(answer) if answer.status != self.expected => {
                    *errors.status.entry(answer.status.as_u16()).or_default() += 1;
                    errors.first.get_or_insert_with(|| {
                        format!("GET {path}: {} (expected {})", answer.status, self.expected)
                    });
                }
                Ok(answer) if !(self.check)(&answer.body) => {
                    errors.bad_body += 1;
                    errors.first.get_or_insert_with(|| {
                        format!("GET {path}: unexpected body of {} bytes", answer.body.len())
                    });
                }
                Ok(answer) => {
                    self.body_bytes = answer.body.len();
                    self.latency.saturating_record(took.as_nanos() as u64);
                }
                Err(err) => {
                    if took >= TIMEOUT {
                        errors.timeout += 1;
                    } else {
                        errors.transport += 1;
                    }
                    errors.first.get_or_insert_with(|| format!("{err:#}"));
                }
            }
        }
        self.elapsed += started.elapsed();
    }

    fn finish(self) -> Sequential {
        let seconds = self.elapsed.as_secs_f64();
        let requests = self.latency.len();
        Sequential {
            path: self.spec.uri.to_string(),
            expected_status: self.expected.as_u16(),
            requests,
            seconds,
            per_second: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            body_bytes: self.body_bytes,
            latency: Percentiles::of(&self.latency),
            errors: self.errors,
        }
    }
}

/// `warren` in the directory of this executable (`target/release/warren`
/// beside `target/release/warren-bench`), if it is there.
fn warren_executable() -> Option<Executable> {
    let path = std::env::current_exe().ok()?.with_file_name("warren");
    let bytes = std::fs::metadata(&path).ok()?.len();
    Some(Executable { path, bytes })
}

impl UiReport {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Settings,
        embedded_bytes: u64,
        warren_executable: Option<Executable>,
        index_etag: String,
        index: Sequential,
        app_js: Sequential,
        index_revalidated: Sequential,
        index_concurrent: Series,
    ) -> Self {
        let targets = vec![
            Target {
                name: "UI assets embedded in the binary".into(),
                target: format!("< {}", bytes(TARGET_EMBEDDED_BYTES)),
                measured: bytes(embedded_bytes),
                met: embedded_bytes < TARGET_EMBEDDED_BYTES,
            },
            Target {
                name: "(a) GET / p50".into(),
                target: format!("< {}", nanos(TARGET_INDEX_P50_NS as f64)),
                measured: if index.clean() {
                    nanos(index.latency.p50_ns as f64)
                } else {
                    "errors".into()
                },
                met: index.clean() && index.latency.p50_ns < TARGET_INDEX_P50_NS,
            },
        ];
        UiReport {
            machine: Machine::current(),
            settings,
            embedded_bytes,
            warren_executable,
            index_etag,
            index,
            app_js,
            index_revalidated,
            index_concurrent,
            targets,
        }
    }

    pub fn table(&self) -> String {
        let s = &self.settings;
        let dash = || "-".to_string();
        let mut rows: Vec<Vec<String>> = vec![vec![
            "figure".into(),
            "answers".into(),
            "body".into(),
            "p50".into(),
            "p90".into(),
            "p99".into(),
            "rate".into(),
            "errors".into(),
            "target".into(),
        ]];
        let sequential = [
            ("(a) GET /", &self.index, target_cell(&self.targets, "(a)")),
            ("(b) GET /ui/app.js", &self.app_js, dash()),
            (
                "(c) GET /, If-None-Match (304)",
                &self.index_revalidated,
                dash(),
            ),
        ];
        for (name, series, target) in sequential {
            let p = &series.latency;
            rows.push(vec![
                name.into(),
                thousands(series.requests),
                format!("{} B", thousands(series.body_bytes as u64)),
                nanos(p.p50_ns as f64),
                nanos(p.p90_ns as f64),
                nanos(p.p99_ns as f64),
                per_second_of(series.per_second, "req/s"),
                thousands(series.errors.total()),
                target,
            ]);
        }
        let concurrent = &self.index_concurrent;
        let p = &concurrent.latency;
        rows.push(vec![
            format!("(d) GET /, {} connections", s.concurrency),
            thousands(concurrent.requests),
            dash(),
            nanos(p.p50_ns as f64),
            nanos(p.p90_ns as f64),
            nanos(p.p99_ns as f64),
            per_second_of(concurrent.per_second, "req/s"),
            thousands(concurrent.errors.total()),
            dash(),
        ]);

        let mut text = format!(
            "warren-bench ui: {} CPUs, kernel {}, {} workers; (a)-(c) {} requests each, one at a \
             time on a connection each, after {} untimed, in {} turns; (d) {} s after {} s of \
             warm-up\n\n",
            self.machine.cpus,
            self.machine.kernel.as_deref().unwrap_or("unknown"),
            s.workers,
            s.requests,
            s.warmup_requests,
            s.slices,
            s.seconds,
            s.warmup_seconds,
        );
        text.push_str(&render(&rows));
        text.push_str(
            "\nlatency: from send to the body's last byte; rate: good answers per second\n\n",
        );
        text.push_str(&format!(
            "UI assets embedded in the binary: {} ({} B), target < {} {}\n",
            bytes(self.embedded_bytes),
            thousands(self.embedded_bytes),
            bytes(TARGET_EMBEDDED_BYTES),
            verdict(self.embedded_bytes < TARGET_EMBEDDED_BYTES),
        ));
        match &self.warren_executable {
            Some(executable) => text.push_str(&format!(
                "{}: {} ({} B), for information\n",
                executable.path.display(),
                bytes(executable.bytes),
                thousands(executable.bytes),
            )),
            None => text.push_str(
                "no warren executable beside this one (build it with `cargo build --release`)\n",
            ),
        }
        let failures = [
            ("(a)", &self.index.errors),
            ("(b)", &self.app_js.errors),
            ("(c)", &self.index_revalidated.errors),
            ("(d)", &self.index_concurrent.errors),
        ];
        for (name, errors) in failures {
            if errors.total() > 0 {
                text.push_str(&format!("{name} errors: {}\n", errors.describe()));
            }
        }
        text
    }
}

/// Bytes in KiB or MiB, for people.
fn bytes(count: u64) -> String {
    let count = count as f64;
    if count < 1024.0 * 1024.0 {
        format!("{:.1} KiB", count / 1024.0)
    } else {
        format!("{:.2} MiB", count / (1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::load::Outcome;

    fn sequential(expected: u16, requests: u64, latency_us: u64, errors: u64) -> Sequential {
        let mut latency = histogram().unwrap();
        for _ in 0..requests {
            latency.record(latency_us * 1_000).unwrap();
        }
        let mut failures = Errors::default();
        if errors > 0 {
            failures.status.insert(404, errors);
            failures.first = Some("GET /: 404 Not Found (expected 200 OK)".into());
        }
        Sequential {
            path: "/".into(),
            expected_status: expected,
            requests,
            seconds: 1.0,
            per_second: requests as f64,
            body_bytes: if expected == 200 { 828 } else { 0 },
            latency: Percentiles::of(&latency),
            errors: failures,
        }
    }

    fn report(embedded: u64, index: Sequential) -> UiReport {
        let mut concurrent = Outcome::new().unwrap();
        concurrent.completed = 100;
        concurrent.elapsed = Duration::from_secs(1);
        for _ in 0..100 {
            concurrent.latency.record(500_000).unwrap();
        }
        UiReport::new(
            Settings {
                requests: 2000,
                warmup_requests: 200,
                slices: SLICES,
                concurrency: 16,
                seconds: 5.0,
                warmup_seconds: 0.5,
                workers: 2,
                bench_threads: 2,
            },
            embedded,
            None,
            "\"0123\"".into(),
            index,
            sequential(200, 2000, 150, 0),
            sequential(304, 2000, 80, 0),
            Series::of(&concurrent),
        )
    }

    #[test]
    fn targets_are_judged_against_the_figures() {
        let met = |report: &UiReport| report.targets.iter().map(|t| t.met).collect::<Vec<_>>();
        assert_eq!(
            met(&report(519_044, sequential(200, 2000, 120, 0))),
            [true, true]
        );
        assert_eq!(
            met(&report(1024 * 1024, sequential(200, 2000, 1_000, 0))),
            [false, false]
        );
        // Failed answers fail the figure, however fast the others were.
        let failed = report(519_044, sequential(200, 1999, 120, 1));
        assert_eq!(met(&failed), [true, false]);
        assert_eq!(failed.targets[1].measured, "errors");
        let table = failed.table();
        assert!(table.contains("(MISSED)"), "{table}");
        assert!(table.contains("(a) errors: 404 x1"), "{table}");
    }

    #[test]
    fn the_table_has_every_figure() {
        let table = report(519_044, sequential(200, 2000, 120, 0)).table();
        for figure in [
            "(a) GET /",
            "(b) GET /ui/app.js",
            "(c) GET /, If-None-Match (304)",
            "(d) GET /, 16 connections",
            "100 req/s",
            "506.9 KiB (519,044 B)",
            "no warren executable",
            "< 1.00 ms (met)",
        ] {
            assert!(table.contains(figure), "{figure:?} missing from\n{table}");
        }
    }

    #[test]
    fn the_page_is_recognised_by_its_doctype() {
        assert!(is_page(b"<!doctype html>\n<html lang=\"en\">"));
        assert!(is_page(b"\n<!DOCTYPE html><html>"));
        assert!(!is_page(br#"{"error":"not_found"}"#));
        assert!(!is_page(b""));
    }

    #[test]
    fn slices_share_the_requests_out() {
        for total in [1, 9, 10, 2000, 2001] {
            let shares: Vec<u32> = (0..SLICES).map(|slice| share(total, slice)).collect();
            assert_eq!(shares.iter().sum::<u32>(), total, "{shares:?}");
            let (low, high) = (shares.iter().min(), shares.iter().max());
            assert!(high.unwrap() - low.unwrap() <= 1, "{shares:?}");
        }
    }

    #[test]
    fn sizes_are_formatted_for_people() {
        assert_eq!(bytes(519_044), "506.9 KiB");
        assert_eq!(bytes(1024 * 1024), "1.00 MiB");
        assert_eq!(bytes(12 * 1024 * 1024 + 512 * 1024), "12.50 MiB");
    }

    #[test]
    fn the_bench_sees_what_warren_embeds() {
        // The budget itself is master's test; here, that the figure is
        // reachable and not empty.
        assert!(warren_master::http::ui::embedded_bytes() > 0);
    }
}
