//! `warren-bench hosts`: what forwarding between hosts costs (issue 14,
//! several hosts on one PostgreSQL).
//!
//! Two hosts, `a` and `b`, each `warren-bench serve` (exactly `warren
//! serve`) with its own data directory and workers, on one PostgreSQL
//! database created for the run (and dropped after it) on `--postgres`,
//! sharing a cluster secret. One user homed on `a` with a 1 KiB file.
//!
//! Figures, in the same run, the two series of each pair taking turns in
//! [`SLICES`] slices so they share the machine's state:
//! - (a) sequential: one keep-alive connection, one `GET` of the 1 KiB
//!   file at a time, straight to `a` (the home host);
//! - (b) the same, sent to `b`, which forwards it to `a` (an authenticated
//!   lookup on `b`, a signed request over `b`'s pooled connection to `a`,
//!   the answer streamed back);
//! - (c), (d): the same two with `--concurrency` connections back to back.
//!
//! The report gives each series' median and p99, and what forwarding adds:
//! (b) − (a) and (d) − (c) at the median and p99, in µs and as a ratio.
//! Both hosts run on this machine (as do the load and PostgreSQL), so the
//! network between hosts is loopback: a real one adds its round trip.

use crate::http::api;
use crate::http::load::{run_into, warm_up, Client, Outcome, Plan};
use crate::http::random_hex;
use crate::http::report::Series;
use crate::http::server::ServerProcess;
use crate::report::{nanos, per_second_of, render, thousands, Machine};
use crate::HostsArgs;
use anyhow::{bail, Context, Result};
use hyper::{Method, StatusCode};
use serde::Serialize;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Turns the two series of a pair take.
pub const SLICES: u32 = 10;
use crate::nginx::{body, is_body, FILE_PATH, FILE_PUT};

#[derive(Debug, Serialize)]
pub struct Settings {
    pub seconds: f64,
    pub warmup_seconds: f64,
    pub slices: u32,
    pub concurrency: usize,
    pub workers: u32,
    /// The PostgreSQL server the run's database was made on (password
    /// redacted).
    pub postgres: String,
}

/// What forwarding adds: the forwarded series minus the direct one.
#[derive(Debug, Serialize)]
pub struct Extra {
    pub p50_ns: i64,
    pub p99_ns: i64,
    /// Forwarded p50 / direct p50.
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    /// Forwarded rate / direct rate.
    pub rate_ratio: f64,
}

impl Extra {
    fn of(direct: &Series, forwarded: &Series) -> Extra {
        let (d, f) = (&direct.latency, &forwarded.latency);
        let ratio = |f: f64, d: f64| if d > 0.0 { f / d } else { f64::NAN };
        Extra {
            p50_ns: f.p50_ns as i64 - d.p50_ns as i64,
            p99_ns: f.p99_ns as i64 - d.p99_ns as i64,
            p50_ratio: ratio(f.p50_ns as f64, d.p50_ns as f64),
            p99_ratio: ratio(f.p99_ns as f64, d.p99_ns as f64),
            rate_ratio: ratio(forwarded.per_second, direct.per_second),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct HostsReport {
    pub machine: Machine,
    pub settings: Settings,
    /// (a) one at a time, straight to the home host.
    pub sequential_direct: Series,
    /// (b) one at a time, sent to the other host (forwarded).
    pub sequential_forwarded: Series,
    /// (c) `concurrency` connections, straight to the home host.
    pub concurrent_direct: Series,
    /// (d) `concurrency` connections, sent to the other host (forwarded).
    pub concurrent_forwarded: Series,
    /// (b) − (a).
    pub sequential_extra: Extra,
    /// (d) − (c).
    pub concurrent_extra: Extra,
}

/// `±12.3 µs` (a difference of latencies).
fn signed_nanos(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "+" };
    format!("{sign}{}", nanos(ns.unsigned_abs() as f64))
}

impl HostsReport {
    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut rows: Vec<Vec<String>> = vec![vec![
            "figure".into(),
            "requests".into(),
            "rate".into(),
            "p50".into(),
            "p90".into(),
            "p99".into(),
            "errors".into(),
        ]];
        let series = [
            (
                "(a) 1 KiB GET at home host, 1 conn",
                &self.sequential_direct,
            ),
            (
                "(b) same at other host (forwarded)",
                &self.sequential_forwarded,
            ),
            (
                "(c) 1 KiB GET at home host, N conns",
                &self.concurrent_direct,
            ),
            (
                "(d) same at other host (forwarded)",
                &self.concurrent_forwarded,
            ),
        ];
        for (name, series) in series {
            let p = &series.latency;
            rows.push(vec![
                name.into(),
                thousands(series.requests),
                per_second_of(series.per_second, "req/s"),
                nanos(p.p50_ns as f64),
                nanos(p.p90_ns as f64),
                nanos(p.p99_ns as f64),
                thousands(series.errors.total()),
            ]);
        }
        let mut text = format!(
            "warren-bench hosts: two hosts on one PostgreSQL ({}), {} warren workers each, \
             {} s per series in {} slices, N = {} connections\n\n",
            s.postgres, s.workers, s.seconds, s.slices, s.concurrency
        );
        text.push_str(&render(&rows));
        let mut extra: Vec<Vec<String>> = vec![vec![
            "forwarding adds".into(),
            "p50".into(),
            "p99".into(),
            "p50 ratio".into(),
            "p99 ratio".into(),
            "rate ratio".into(),
        ]];
        for (name, e) in [
            ("sequential (b) vs (a)", &self.sequential_extra),
            ("concurrent (d) vs (c)", &self.concurrent_extra),
        ] {
            extra.push(vec![
                name.into(),
                signed_nanos(e.p50_ns),
                signed_nanos(e.p99_ns),
                format!("{:.2}x", e.p50_ratio),
                format!("{:.2}x", e.p99_ratio),
                format!("{:.2}x", e.rate_ratio),
            ]);
        }
        text.push('\n');
        text.push_str(&render(&extra));
        for (name, series) in series {
            if series.errors.total() > 0 {
                text.push_str(&format!("{name}: {}\n", series.errors.describe()));
            }
        }
        text
    }
}

pub async fn run(args: &HostsArgs) -> Result<HostsReport> {
    let database = crate::startup::PostgresDatabase::create(&args.postgres)
        .await
        .with_context(|| format!("on {} (--postgres)", redact(&args.postgres)))?;
    let outcome = measure_on(args, &database.url).await;
    database.drop_it().await;
    let (seq_a, seq_b, con_a, con_b) = outcome?;
    let sequential_direct = Series::of(&seq_a);
    let sequential_forwarded = Series::of(&seq_b);
    let concurrent_direct = Series::of(&con_a);
    let concurrent_forwarded = Series::of(&con_b);
    Ok(HostsReport {
        machine: Machine::current(),
        settings: Settings {
            seconds: args.seconds.as_secs_f64(),
            warmup_seconds: warmup(args).as_secs_f64(),
            slices: SLICES,
            concurrency: args.concurrency as usize,
            workers: args.workers,
            postgres: redact(&args.postgres),
        },
        sequential_extra: Extra::of(&sequential_direct, &sequential_forwarded),
        concurrent_extra: Extra::of(&concurrent_direct, &concurrent_forwarded),
        sequential_direct,
        sequential_forwarded,
        concurrent_direct,
        concurrent_forwarded,
    })
}

fn warmup(args: &HostsArgs) -> Duration {
    (args.seconds / 10).clamp(Duration::from_millis(200), Duration::from_secs(1))
}

/// `postgres://user@host/db` without a password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user_info = &url[scheme + 3..at];
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Starts the two hosts on `database_url`, measures, stops them.
async fn measure_on(
    args: &HostsArgs,
    database_url: &str,
) -> Result<(Outcome, Outcome, Outcome, Outcome)> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let secret = dir.path().join("cluster-secret");
    std::fs::write(&secret, random_hex(32)?).context("cannot write the cluster secret")?;
    let admin_password = random_hex(16)?;
    let password_file = dir.path().join("admin-password");
    std::fs::write(&password_file, &admin_password)
        .context("cannot write the admin password file")?;
    let host = |name: &'static str| Host {
        name,
        dir: dir.path(),
        workers: args.workers,
        database_url,
        secret: &secret,
        password_file: &password_file,
    };
    eprintln!("starting hosts a and b, {} workers each ...", args.workers);
    let a = host("a").start().await?;
    let b = match host("b").start().await {
        Ok(b) => b,
        Err(err) => {
            stop(a).await;
            return Err(err);
        }
    };
    let measured = async {
        let token = account(a.address, b.address, &admin_password).await?;
        measure(args, a.address, b.address, &token).await
    }
    .await;
    stop(b).await;
    stop(a).await;
    measured
}

async fn stop(server: ServerProcess) {
    if let Err(err) = server.stop().await {
        eprintln!("warning: {err:#}");
    }
}

/// One host's settings.
struct Host<'a> {
    name: &'static str,
    dir: &'a Path,
    workers: u32,
    database_url: &'a str,
    secret: &'a Path,
    password_file: &'a Path,
}

impl Host<'_> {
    /// `warren-bench serve` as host `name`, listening on a port chosen here
    /// (its `--host-url` names it before it starts).
    async fn start(&self) -> Result<ServerProcess> {
        let port = warren_tests::nginx::free_port().map_err(anyhow::Error::msg)?;
        let data = self.dir.join(format!("data-{}", self.name));
        let mut args: Vec<OsString> = vec!["serve".into(), "--listen".into()];
        args.push(format!("127.0.0.1:{port}").into());
        args.push("--data-dir".into());
        args.push(data.into());
        args.push("--workers".into());
        args.push(self.workers.to_string().into());
        args.push("--admin-password-file".into());
        args.push(self.password_file.into());
        args.push("--database-url".into());
        args.push(self.database_url.into());
        args.push("--host-name".into());
        args.push(self.name.into());
        args.push("--host-url".into());
        args.push(format!("http://127.0.0.1:{port}").into());
        args.push("--cluster-secret-file".into());
        args.push(self.secret.into());
        // The load's connections all come from 127.0.0.1 (as do b's to a).
        args.push("--max-connections-per-address".into());
        args.push("1000000".into());
        ServerProcess::start("warren", args, Some("/readyz"))
            .await
            .with_context(|| format!("starting host {}", self.name))
    }
}

/// A user homed on `a` with the 1 KiB file, logged in: the session token
/// (checked to be served by `b` too).
async fn account(a: SocketAddr, b: SocketAddr, admin_password: &str) -> Result<String> {
    let admin = api::session(a, "admin", admin_password)
        .await
        .context("logging in as admin")?;
    let password = random_hex(16)?;
    let create =
        api::bearer(a, Method::POST, "/api/v1/admin/users", &admin)?.json(&serde_json::json!({
            "username": "hosts-bench",
            "password": password,
            "home_host": "a",
        }))?;
    let answer = crate::http::load::Connection::new(a)
        .send(&create, Duration::from_secs(60))
        .await?;
    if answer.status != StatusCode::CREATED {
        bail!(
            "creating the user on host a: {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    let token = api::session(a, "hosts-bench", &password).await?;
    let entry = api::put_file(a, &token, FILE_PUT, body().into()).await?;
    if entry.get("size").and_then(serde_json::Value::as_u64) != Some(body().len() as u64) {
        bail!("PUT {FILE_PUT}: warren answered {entry}");
    }
    // Through b: the same bytes (forwarded), or the figures mean nothing.
    let spec = api::bearer(b, Method::GET, FILE_PATH, &token)?;
    let answer = crate::http::load::Connection::new(b)
        .send(&spec, Duration::from_secs(60))
        .await?;
    if answer.status != StatusCode::OK || !is_body(&answer.body) {
        bail!(
            "GET {FILE_PATH} at host b (forwarded to a): {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    Ok(token)
}

/// (a) and (b), then (c) and (d), each pair taking turns.
async fn measure(
    args: &HostsArgs,
    a: SocketAddr,
    b: SocketAddr,
    token: &str,
) -> Result<(Outcome, Outcome, Outcome, Outcome)> {
    let clients = |address: SocketAddr, count: usize| -> Result<Vec<Client>> {
        (0..count)
            .map(|_| {
                let spec = api::bearer(address, Method::GET, FILE_PATH, token)?.checked(is_body);
                Client::new(address, spec)
            })
            .collect()
    };
    let mut pairs = Vec::new();
    for (what, count) in [
        ("one connection", 1),
        ("concurrent", args.concurrency as usize),
    ] {
        let mut groups = [clients(a, count)?, clients(b, count)?];
        eprintln!("GET {FILE_PATH}, {what} ({count}): warm-up ...");
        {
            let [direct, forwarded] = &mut groups;
            warm_up(&mut [direct, forwarded], warmup(args)).await?;
        }
        eprintln!(
            "measuring {} s each, in {SLICES} turns ...",
            args.seconds.as_secs_f64()
        );
        let slice = args.seconds / SLICES;
        let mut totals = [Outcome::new()?, Outcome::new()?];
        for index in 0..SLICES as usize {
            for turn in 0..2 {
                let which = (index + turn) % 2;
                run_into(&mut groups[which], Plan::closed(slice), &mut totals[which]).await?;
            }
        }
        pairs.push(totals);
    }
    let [[seq_a, seq_b], [con_a, con_b]]: [[Outcome; 2]; 2] = pairs
        .try_into()
        .map_err(|_| anyhow::anyhow!("two pairs of series"))?;
    Ok((seq_a, seq_b, con_a, con_b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://warren:secret@db:5432/x"),
            "postgres://warren@db:5432/x"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
    }

    #[test]
    fn the_body_is_1_kib() {
        assert_eq!(body().len(), 1024);
        assert!(is_body(&body()));
        assert!(!is_body(&body()[1..]));
    }
}
