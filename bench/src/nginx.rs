//! `warren-bench nginx`: warren behind nginx running `deploy/nginx.conf`
//! (issue 14: "routed 1 KiB file read through nginx beside nginx `return
//! 200` in the same run").
//!
//! warren is `warren-bench serve` (exactly `warren serve`, with
//! `--trusted-proxy 127.0.0.1/32`), started by [`start_warren`]; nginx is
//! the system's, run by this process in a temporary directory with the
//! shipped site file, changed only where the test (`tests/tests/nginx.rs`)
//! changes it: its `listen` ports, the upstream's port, the certificate
//! paths. One more change: the TLS `listen` loses `ssl`, because the load
//! generator ([`crate::http::load`]) speaks plain HTTP only; TLS would cost
//! the two nginx series alike. The main configuration (this module's) has
//! one worker process and a server of its own that answers every request
//! with `return 200` and the same 1,024 bytes.
//!
//! Figures, `--concurrency` keep-alive connections back to back, the three
//! series taking turns in [`SLICES`] slices so they share the machine's
//! state:
//! - (a) an authenticated `GET` of a 1 KiB file through nginx (nginx →
//!   upstream keep-alive → warren's router → a worker → the file);
//! - (b) nginx's `return 200` with the same 1,024 bytes and the same
//!   request (nginx alone: the floor of anything behind it);
//! - (c) the same `GET` straight to warren (for information: what nginx
//!   adds).

use crate::http::load::{run_into, warm_up, Client, Outcome, Plan, RequestSpec};
use crate::http::report::Series;
use crate::http::{api, os_args, random_hex, start_warren, stop};
use crate::report::{nanos, per_second_of, ratio, render, thousands, Machine};
use crate::NginxArgs;
use anyhow::{bail, Context, Result};
use hyper::Method;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use warren_tests::nginx::{
    find_program, free_port, local_site, nginx_version, self_signed, Listen, MainConf,
};

/// Turns the three series take.
pub const SLICES: u32 = 10;
/// The file read, and the query that writes it.
pub(crate) const FILE_PATH: &str = "/api/v1/files/bench/1k.txt";
pub(crate) const FILE_PUT: &str = "/api/v1/files/bench/1k.txt?parents=true";
/// One line of the file, 64 times: 1,024 bytes nginx can also `return`
/// (no quote, no `$`).
const LINE: &[u8; 16] = b"0123456789abcde\n";
const REPEAT: usize = 64;

/// The 1,024 bytes every answer must be.
pub(crate) fn body() -> Vec<u8> {
    LINE.repeat(REPEAT)
}

pub(crate) fn is_body(answer: &[u8]) -> bool {
    answer.len() == LINE.len() * REPEAT && answer.chunks(LINE.len()).all(|line| line == LINE)
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub seconds: f64,
    pub warmup_seconds: f64,
    pub slices: u32,
    pub concurrency: usize,
    pub workers: u32,
    pub nginx: String,
    pub nginx_version: String,
    pub nginx_worker_processes: u32,
    pub site_file: String,
}

#[derive(Debug, Serialize)]
pub struct NginxReport {
    pub machine: Machine,
    pub settings: Settings,
    /// (a) warren through nginx.
    pub through_nginx: Series,
    /// (b) nginx's `return 200`.
    pub nginx_return: Series,
    /// (c) warren directly.
    pub direct: Series,
}

impl NginxReport {
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
            "vs (b)".into(),
        ]];
        let series = [
            ("(a) GET 1 KiB file via nginx", &self.through_nginx),
            ("(b) nginx return 200, 1 KiB", &self.nginx_return),
            ("(c) GET 1 KiB file direct", &self.direct),
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
                ratio(series.per_second, self.nginx_return.per_second),
            ]);
        }
        let mut text = format!(
            "warren-bench nginx: {} connections, {} s per series in {} slices, {} warren workers, \
             {} ({} worker process), {}\n\n",
            s.concurrency,
            s.seconds,
            s.slices,
            s.workers,
            s.nginx_version,
            s.nginx_worker_processes,
            s.site_file
        );
        text.push_str(&render(&rows));
        text.push_str(&format!(
            "\n(a) through nginx is {} of (c) direct's rate\n",
            ratio(self.through_nginx.per_second, self.direct.per_second)
        ));
        for (name, series) in series {
            if series.errors.total() > 0 {
                text.push_str(&format!("{name}: {}\n", series.errors.describe()));
            }
        }
        text
    }
}

pub async fn run(args: &NginxArgs) -> Result<NginxReport> {
    let nginx_binary = match &args.nginx {
        Some(path) => path.clone(),
        None => find_program("nginx").context("no nginx on the PATH or in /usr/sbin")?,
    };
    let openssl = find_program("openssl").context("no openssl on the PATH")?;
    let site_file = args
        .site
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx.conf"));
    let site_file = std::fs::canonicalize(&site_file).unwrap_or(site_file);
    let site = std::fs::read_to_string(&site_file)
        .with_context(|| format!("cannot read {}", site_file.display()))?;
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;

    eprintln!("starting warren with {} workers ...", args.workers);
    let warren = start_warren(
        dir.path(),
        args.workers,
        os_args(["--trusted-proxy", "127.0.0.1/32"]),
    )
    .await?;
    let direct = warren.process.address;
    let outcome = async {
        let token = account(direct, &warren.admin_password).await?;
        let nginx = Nginx::start(&nginx_binary, &openssl, dir.path(), &site, direct)?;
        let measured = measure(args, &nginx, direct, &token).await;
        drop(nginx);
        let (through_nginx, nginx_return, direct) = measured?;
        Ok(NginxReport {
            machine: Machine::current(),
            settings: Settings {
                seconds: args.seconds.as_secs_f64(),
                warmup_seconds: warmup(args).as_secs_f64(),
                slices: SLICES,
                concurrency: args.concurrency as usize,
                workers: args.workers,
                nginx: nginx_binary.display().to_string(),
                nginx_version: nginx_version(&nginx_binary),
                nginx_worker_processes: 1,
                site_file: site_file.display().to_string(),
            },
            through_nginx: Series::of(&through_nginx),
            nginx_return: Series::of(&nginx_return),
            direct: Series::of(&direct),
        })
    }
    .await;
    stop(warren.process).await;
    outcome
}

fn warmup(args: &NginxArgs) -> Duration {
    (args.seconds / 10).clamp(Duration::from_millis(200), Duration::from_secs(1))
}

/// A user with the 1 KiB file: their session token.
async fn account(server: SocketAddr, admin_password: &str) -> Result<String> {
    let admin = api::session(server, "admin", admin_password)
        .await
        .context("logging in as admin")?;
    let password = random_hex(16)?;
    api::create_user(server, &admin, "nginx-bench", &password).await?;
    let token = api::session(server, "nginx-bench", &password).await?;
    let entry = api::put_file(server, &token, FILE_PUT, body().into()).await?;
    if entry.get("size").and_then(serde_json::Value::as_u64) != Some(body().len() as u64) {
        bail!("PUT {FILE_PUT}: warren answered {entry}");
    }
    Ok(token)
}

/// (a), (b), (c), taking turns (the order rotates from slice to slice).
async fn measure(
    args: &NginxArgs,
    nginx: &Nginx,
    direct: SocketAddr,
    token: &str,
) -> Result<(Outcome, Outcome, Outcome)> {
    let clients = |address: SocketAddr| -> Result<Vec<Client>> {
        (0..args.concurrency)
            .map(|_| {
                let spec = api::bearer(address, Method::GET, FILE_PATH, token)?.checked(is_body);
                Client::new(address, spec)
            })
            .collect()
    };
    // (b) gets the very same request (its Authorization header unread).
    let reference = |address: SocketAddr| -> Result<Vec<Client>> {
        (0..args.concurrency)
            .map(|_| {
                let spec = RequestSpec::new(address, Method::GET, FILE_PATH)
                    .header(hyper::header::AUTHORIZATION, &format!("Bearer {token}"))?
                    .checked(is_body);
                Client::new(address, spec)
            })
            .collect()
    };
    let mut groups = [
        clients(nginx.site)?,
        reference(nginx.reference)?,
        clients(direct)?,
    ];
    eprintln!(
        "GET {FILE_PATH}, {} connections: warm-up ...",
        args.concurrency
    );
    {
        let [a, b, c] = &mut groups;
        warm_up(&mut [a, b, c], warmup(args)).await?;
    }
    eprintln!(
        "measuring {} s each, in {SLICES} turns ...",
        args.seconds.as_secs_f64()
    );
    let slice = args.seconds / SLICES;
    let mut totals = [Outcome::new()?, Outcome::new()?, Outcome::new()?];
    for index in 0..SLICES as usize {
        for turn in 0..3 {
            let which = (index + turn) % 3;
            run_into(&mut groups[which], Plan::closed(slice), &mut totals[which]).await?;
        }
    }
    let [a, b, c] = totals;
    Ok((a, b, c))
}

/// nginx running the site file and the reference server (stopped when
/// dropped).
struct Nginx {
    _process: warren_tests::nginx::Nginx,
    /// The site file's (formerly TLS) listener.
    site: SocketAddr,
    /// The `return 200` server.
    reference: SocketAddr,
}

impl Nginx {
    fn start(
        binary: &Path,
        openssl: &Path,
        dir: &Path,
        site: &str,
        warren: SocketAddr,
    ) -> Result<Nginx> {
        let (cert, key) = self_signed(openssl, dir).map_err(anyhow::Error::msg)?;
        let site_addr =
            SocketAddr::from(([127, 0, 0, 1], free_port().map_err(anyhow::Error::msg)?));
        let reference =
            SocketAddr::from(([127, 0, 0, 1], free_port().map_err(anyhow::Error::msg)?));
        let listen = Listen {
            tls_port: site_addr.port(),
            tls: false,
            http_port: free_port().map_err(anyhow::Error::msg)?,
            cert: &cert,
            key: &key,
        };
        let text = local_site(
            site,
            &listen,
            &[("server 127.0.0.1:8080;", format!("server {warren};"))],
        )
        .map_err(anyhow::Error::msg)?;
        let body = String::from_utf8_lossy(&body()).replace('\n', "\\n");
        // keepalive_requests: each load connection stands for many
        // clients; nginx's default (1000) would close it mid-series.
        let main = MainConf {
            worker_processes: 1,
            worker_connections: 4096,
            error_log_level: "warn",
            access_log: false,
            extra_http: format!(
                "keepalive_requests 100000000;\n\
                 server {{\n\
                     listen {reference};\n\
                     default_type application/octet-stream;\n\
                     location / {{ return 200 \"{body}\"; }}\n\
                 }}"
            ),
        };
        let process =
            warren_tests::nginx::Nginx::start(binary, dir, &text, &main, &[site_addr, reference])
                .map_err(anyhow::Error::msg)?;
        Ok(Nginx {
            _process: process,
            site: site_addr,
            reference,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_1_kib_that_nginx_can_return() {
        let body = body();
        assert_eq!(body.len(), 1024);
        assert!(is_body(&body));
        assert!(!is_body(&body[1..]));
        assert!(!body.contains(&b'"') && !body.contains(&b'$'));
    }
}
