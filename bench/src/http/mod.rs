//! `warren-bench http`: warren under HTTP load, beside a bare axum handler.
//!
//! Both servers are child processes of this executable: warren is
//! `warren-bench serve` (exactly `warren serve`, its workers re-executing
//! this binary as `warren-bench worker`), the reference is
//! `warren-bench bare-server` (see [`crate::bare`]). Both listen on
//! 127.0.0.1 with a port the kernel picks; the load comes from
//! [`load`], in this process, on the same two cores.
//!
//! The figures (issue #3):
//! - (a) throughput and latency of authenticated `GET /api/v1/ping` (the
//!   session cookie, as a browser sends it), `--concurrency` keep-alive
//!   connections back to back, beside the bare handler given the very same
//!   requests; the two are measured in alternating slices so that both see
//!   the same machine state. Target: warren ≥ 0.5× the bare throughput.
//! - (b) database queries per authenticated request over (a)'s window, from
//!   `warren_db_queries_total` read between slices. Target: 0, judged on
//!   the label sets not marked `origin="background"` (timers, not requests);
//!   all label sets, and their counts while warren idles (during the bare
//!   server's slices), are shown beside it.
//! - (c) `/ping` latency of logged-in users, each connection sending
//!   `--user-rate` pings a second on a fixed schedule, without and then
//!   during a storm of 200 concurrent logins. Target: p99 during the storm
//!   ≤ 3× without. (A fixed rate, not a share of (a)'s throughput, so that
//!   runs compare even when the machine's speed drifts; the report gives
//!   the share too. At a high share the figure measures queueing on the
//!   cores the hashing leaves, not interference.)
//! - (d) login latency, one login at a time (and, for information, during
//!   the storm).

pub mod api;
pub mod load;
pub mod report;
pub mod server;

use crate::HttpArgs;
use anyhow::{Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use load::{drive, run_into, turns, warm_up, Client, Outcome, Pace, Plan};
use report::{DbQueries, HttpReport, Settings, StormFigure};
use server::ServerProcess;
use std::ffi::OsString;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Slices each series of (a) is cut into, taking turns with the other.
pub const SLICES: u32 = 10;
/// Concurrent logins of the storm in (c).
pub const STORM_LOGINS: usize = 200;
/// Accounts the storm logs in as (each by several connections at once).
pub const STORM_ACCOUNTS: usize = 20;
/// The storm runs this long before (c)'s window opens.
const STORM_RAMP: Duration = Duration::from_secs(1);
/// Accounts created (and users logged in) at once while setting up.
const SETUP_PARALLEL: usize = 4;
/// Server-side login throttles, set far above anything the bench sends so
/// that the figures measure logins, not refusals.
const LOGIN_RATE: &str = "1000000";

pub async fn run(args: &HttpArgs) -> Result<HttpReport> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    eprintln!("starting the bare server ...");
    let bare = ServerProcess::start(
        "bare",
        os_args(["bare-server", "--listen", "127.0.0.1:0"]),
        None,
    )
    .await?;
    let warren = if args.bare_only {
        None
    } else {
        eprintln!("starting warren with {} workers ...", args.workers);
        match start_warren(dir.path(), args.workers, Vec::new()).await {
            Ok(warren) => Some(warren),
            Err(err) => {
                stop(bare).await;
                return Err(err);
            }
        }
    };
    let outcome = measure(args, &bare, warren.as_ref()).await;
    stop(bare).await;
    if let Some(warren) = warren {
        stop(warren.process).await;
    }
    outcome
}

/// Stops a server; a server that does not stop cleanly is reported, but
/// does not void figures already measured.
pub(crate) async fn stop(server: ServerProcess) {
    if let Err(err) = server.stop().await {
        eprintln!("warning: {err:#}");
    }
}

pub(crate) struct Warren {
    pub process: ServerProcess,
    pub admin_password: String,
}

/// Starts `warren-bench serve` with its data in `dir/data`, `admin`'s
/// password in a file, the login throttles and per-address caps out of the
/// way, and `extra` arguments.
pub(crate) async fn start_warren(dir: &Path, workers: u32, extra: Vec<OsString>) -> Result<Warren> {
    let admin_password = random_hex(16)?;
    let password_file = dir.join("admin-password");
    std::fs::write(&password_file, &admin_password)
        .context("cannot write the admin password file")?;
    let mut args = os_args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
    args.push(dir.join("data").into());
    args.extend(os_args(["--workers", &workers.to_string()]));
    args.push("--admin-password-file".into());
    args.push(password_file.into());
    args.extend(os_args([
        "--login-rate-per-address",
        LOGIN_RATE,
        "--login-rate-per-account",
        LOGIN_RATE,
        // Every load connection comes from 127.0.0.1, one client machine
        // standing for many users: the caps meant for strangers (256
        // connections and 60 audit events a minute per address) would
        // refuse the login storm's connections and drop its audit rows,
        // which is not what a deployment behind a trusted proxy does.
        "--max-connections-per-address",
        "1000000",
        "--audit-rate",
        "1000000",
    ]));
    args.extend(extra);
    let process = ServerProcess::start("warren", args, Some("/readyz")).await?;
    Ok(Warren {
        process,
        admin_password,
    })
}

pub(crate) fn os_args<'a>(args: impl IntoIterator<Item = &'a str>) -> Vec<OsString> {
    args.into_iter().map(OsString::from).collect()
}

/// Hex of `bytes` random bytes from the kernel.
pub(crate) fn random_hex(bytes: usize) -> Result<String> {
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut buffer))
        .context("cannot read /dev/urandom")?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The bench's accounts on warren.
struct Accounts {
    /// A session token per ping user.
    tokens: Vec<String>,
    /// Accounts the logins of (c) and (d) use.
    storm: Vec<String>,
    password: String,
}

async fn accounts(server: SocketAddr, admin_password: &str, users: usize) -> Result<Accounts> {
    let admin = api::session(server, "admin", admin_password)
        .await
        .context("logging in as admin")?;
    let password = random_hex(16)?;
    let names: Vec<String> = (0..users).map(|k| format!("bench-{k:05}")).collect();
    let storm: Vec<String> = (0..STORM_ACCOUNTS)
        .map(|k| format!("bench-storm-{k:02}"))
        .collect();
    eprintln!("creating {} accounts ...", names.len() + storm.len());
    futures_util::stream::iter(names.iter().chain(&storm))
        .map(|name| api::create_user(server, &admin, name, &password))
        .buffer_unordered(SETUP_PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    eprintln!("logging {users} users in ...");
    let tokens = futures_util::stream::iter(&names)
        .map(|name| api::session(server, name, &password))
        .buffered(SETUP_PARALLEL)
        .try_collect()
        .await?;
    Ok(Accounts {
        tokens,
        storm,
        password,
    })
}

/// `warren_db_queries_total` by label set (nothing without warren).
async fn query_counts(warren: Option<&Warren>) -> Result<api::Samples> {
    match warren {
        Some(warren) => api::db_queries(warren.process.address).await,
        None => Ok(api::Samples::new()),
    }
}

/// `count` clients sending the ping request, connection k as user k mod users.
fn ping_clients(server: SocketAddr, tokens: &[String], count: usize) -> Result<Vec<Client>> {
    (0..count)
        .map(|k| Client::new(server, api::ping(server, &tokens[k % tokens.len()])?))
        .collect()
}

async fn measure(
    args: &HttpArgs,
    bare: &ServerProcess,
    warren: Option<&Warren>,
) -> Result<HttpReport> {
    let users = args.users as usize;
    let concurrency = args.concurrency as usize;
    let window = args.seconds;
    let warmup = (window / 10).clamp(Duration::from_millis(200), Duration::from_secs(1));
    let settings = Settings {
        seconds: window.as_secs_f64(),
        warmup_seconds: warmup.as_secs_f64(),
        slices: SLICES,
        users,
        concurrency,
        workers: args.workers,
        storm_logins: STORM_LOGINS,
        storm_accounts: STORM_ACCOUNTS,
        user_rate: args.user_rate,
        bench_threads: tokio::runtime::Handle::current().metrics().num_workers(),
        bare_only: warren.is_none(),
    };

    let accounts = match warren {
        Some(warren) => {
            Some(accounts(warren.process.address, &warren.admin_password, users).await?)
        }
        None => None,
    };
    // The bare server gets the same requests, cookie included.
    let tokens = match &accounts {
        Some(accounts) => accounts.tokens.clone(),
        None => vec![random_hex(32)?],
    };

    // (a) and (b): interleaved slices, closed loop.
    let mut bare_clients = ping_clients(bare.address, &tokens, concurrency)?;
    let mut warren_clients = match warren {
        Some(warren) => ping_clients(warren.process.address, &tokens, concurrency)?,
        None => Vec::new(),
    };
    eprintln!("(a) GET /api/v1/ping, {concurrency} connections: warm-up ...");
    if warren.is_some() {
        warm_up(&mut [&mut bare_clients, &mut warren_clients], warmup).await?;
    } else {
        warm_up(&mut [&mut bare_clients], warmup).await?;
    }
    eprintln!(
        "(a) measuring {} s each, in {SLICES} alternating slices ...",
        window.as_secs_f64()
    );
    // (b) `warren_db_queries_total` is read between slices: its increase
    // over warren's slices, and over the bare server's (as long, while
    // warren is idle: its background work alone).
    let mut last_count = query_counts(warren).await?;
    let (mut during_load, mut while_idle) = (api::Samples::new(), api::Samples::new());
    let slice = window / SLICES;
    let (mut bare_ping, mut warren_ping) = (Outcome::new()?, Outcome::new()?);
    for index in 0..SLICES {
        for warren_turn in turns(index) {
            if warren_turn && warren.is_none() {
                continue;
            }
            let (clients, total, queries) = if warren_turn {
                (&mut warren_clients, &mut warren_ping, &mut during_load)
            } else {
                (&mut bare_clients, &mut bare_ping, &mut while_idle)
            };
            run_into(clients, Plan::closed(slice), total).await?;
            let count = query_counts(warren).await?;
            api::add_increase(queries, &last_count, &count);
            last_count = count;
        }
    }
    drop(bare_clients);

    let (Some(warren), Some(accounts)) = (warren, accounts) else {
        return Ok(HttpReport::new(
            settings,
            None,
            report::Series::of(&bare_ping),
            None,
            None,
            None,
        ));
    };
    let server = warren.process.address;
    let db_queries = DbQueries::new(
        !last_count.is_empty(),
        during_load,
        while_idle,
        warren_ping.completed,
    );

    // (d) one login at a time.
    eprintln!("(d) logins one at a time ...");
    let login = api::login(server, &accounts.storm[0], &accounts.password)?;
    let mut login_clients = vec![Client::new(server, login)?];
    let mut sequential_logins = Outcome::new()?;
    let login_plan = Plan::closed((window / 2).max(Duration::from_secs(1)));
    run_into(&mut login_clients, login_plan, &mut sequential_logins).await?;

    // (c) paced pings, quiet / during the storm / quiet again.
    let rate = args.user_rate * concurrency as f64;
    let interval = Duration::from_secs_f64(1.0 / args.user_rate);
    let paced = |length: Duration| Plan {
        until: Instant::now() + length,
        pace: Pace::Every(interval),
        cancel: None,
        timeout: Duration::from_secs(30),
    };
    eprintln!("(c) pings at {rate:.0}/s, quiet ...");
    let mut quiet = Outcome::new()?;
    run_into(&mut warren_clients, paced(window / 2), &mut quiet).await?;

    eprintln!("(c) pings at {rate:.0}/s during {STORM_LOGINS} concurrent logins ...");
    let storm_clients = (0..STORM_LOGINS)
        .map(|k| {
            let account = &accounts.storm[k % accounts.storm.len()];
            Client::new(server, api::login(server, account, &accounts.password)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let cancel = CancellationToken::new();
    let storm = tokio::spawn(drive(
        storm_clients,
        Plan {
            until: Instant::now() + Duration::from_secs(3600),
            pace: Pace::Closed,
            cancel: Some(cancel.clone()),
            timeout: Duration::from_secs(60),
        },
    ));
    tokio::time::sleep(STORM_RAMP).await;
    let mut stormy = Outcome::new()?;
    let measured = run_into(&mut warren_clients, paced(window), &mut stormy).await;
    cancel.cancel();
    let (_, storm_logins) = storm.await.context("the login storm panicked")??;
    measured?;

    // Logins still queued in warren when the storm's connections closed
    // would slow the quiet run after it: one more login waits them out.
    eprintln!("(c) waiting for the storm to drain, then pings at {rate:.0}/s, quiet ...");
    let draining = Instant::now();
    api::session(server, &accounts.storm[0], &accounts.password)
        .await
        .context("login after the storm")?;
    let drain_seconds = draining.elapsed().as_secs_f64();
    run_into(&mut warren_clients, paced(window / 2), &mut quiet).await?;

    let storm = StormFigure {
        rate_per_second: rate,
        quiet: report::Series::of(&quiet),
        during_storm: report::Series::of(&stormy),
        storm_logins: report::Series::of(&storm_logins),
        drain_seconds,
    };
    Ok(HttpReport::new(
        settings,
        Some(report::Series::of(&warren_ping)),
        report::Series::of(&bare_ping),
        Some(db_queries),
        Some(storm),
        Some(report::Series::of(&sequential_logins)),
    ))
}
