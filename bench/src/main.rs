//! `warren-bench`: measurements of warren's hot paths.
//!
//! - `warren-bench run`: load against a running warren, directly or
//!   through nginx: simulated users of a scenario, open or closed model,
//!   chaos, sampling of the server, JSON and HTML results, an SLO gate
//!   (see [`run`]).
//! - `warren-bench micro`: codec, routing hash, and pool round trips through
//!   real worker processes, each beside an in-process baseline measured in
//!   the same run (see [`micro`]).
//! - `warren-bench http`: warren under HTTP load (authenticated requests,
//!   a login storm, database queries per request) beside a bare axum
//!   handler, both as child processes (see [`http`]).
//! - `warren-bench files`: the workspace files API (a small file's GET,
//!   a large file up and down, the servers' memory meanwhile) beside a
//!   bare handler and a local file copy (see [`files`]).
//! - `warren-bench ui`: the web UI: `GET /` and `GET /ui/app.js` one at a
//!   time, `GET /` revalidated (304) and from many connections, and what
//!   the embedded assets add to the binary (see [`ui`]).
//! - `warren-bench nginx`: a 1 KiB file read through nginx running
//!   `deploy/nginx.conf`, beside nginx's own `return 200` and warren
//!   directly (see [`nginx`]).
//! - `warren-bench hosts`: two hosts on one PostgreSQL; a 1 KiB file read
//!   at the user's home host beside the same read sent to the other host,
//!   which forwards it (see [`hosts`]).
//! - `warren-bench jwt`: authenticated `/api/v1/ping` with a JWT bearer
//!   (HS256, `--jwt-secret-file`) beside the same with a warren API token,
//!   in alternating slices of one run (see [`jwt`]).
//! - `warren-bench startup`: `warren serve`'s time to ready with no users
//!   and with 100,000, on SQLite and PostgreSQL (see [`startup`]).
//! - `warren-bench serve` and `warren-bench bare-server` (hidden): the two
//!   servers `http` and `files` measure; `serve` is exactly `warren serve`.
//! - `warren-bench echo-server` (hidden): the bare tokio + Unix socket +
//!   bincode echo that the pool's latency is compared with (see [`echo`]).
//! - `warren-bench worker` (hidden): a worker process, exactly as
//!   `warren worker`. The pool under test re-executes this binary as its
//!   workers, so the benchmark needs no separately built `warren` binary and
//!   always measures master and worker from the same build.
#![forbid(unsafe_code)]

/// The allocator the `warren` binary uses, so the servers measured here
/// (re-executions of this binary) allocate as the shipped one does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod apps;
mod bare;
mod echo;
mod files;
mod hosts;
mod http;
mod jwt;
mod micro;
mod nginx;
mod report;
mod run;
mod startup;
mod tasks;
mod terminals;
mod ui;

use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "warren-bench", version, about = "Benchmarks for warren")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load against a running warren (or nginx in front of it): simulated
    /// users log in and work, optionally with faults (--chaos) and the
    /// server sampled over time (--sample); results as a table, JSON, HTML.
    Run(Box<run::RunArgs>),
    /// A saved run (`run --out`) as a table, HTML report and SVG plots again.
    Report(run::ReportArgs),
    /// Micro-benchmarks: codec, routing hash, pool round trip vs in-process call.
    Micro(MicroArgs),
    /// HTTP load: warren's authenticated API beside a bare axum handler.
    Http(HttpArgs),
    /// Workspace files: a 1 KiB GET beside a bare handler, a large file's
    /// upload and download beside a local copy, and the memory they take.
    Files(FilesArgs),
    /// Users' tasks: spawn to first output beside a bare fork+exec, and
    /// other users' latency while many short tasks run.
    Tasks(TasksArgs),
    /// Users' terminals: keystroke to echo beside a local PTY, and the
    /// memory of idle terminals and WebSockets.
    Terminals(TerminalsArgs),
    /// Users' apps: spawn overhead, proxied requests, memory per app.
    Apps(AppsArgs),
    /// The web UI: `GET /` and an asset one at a time, revalidated, and
    /// from many connections; the assets' size in the binary.
    Ui(UiArgs),
    /// JWT bearer tokens: `/api/v1/ping` with `Authorization: Bearer <JWT>`
    /// beside the same with a warren API token, in one run.
    Jwt(JwtArgs),
    /// Start-up: spawn to `/readyz` 200 with no users and with 100,000.
    Startup(StartupArgs),
    /// warren behind nginx (deploy/nginx.conf): a 1 KiB file read through
    /// nginx beside nginx's `return 200` and warren directly.
    Nginx(NginxArgs),
    /// Several hosts on one PostgreSQL: a 1 KiB file read at the user's
    /// home host beside the same read forwarded by another host.
    Hosts(HostsArgs),
    /// Run warren's server (started by `http`, not by hand): exactly
    /// `warren serve`, with its arguments.
    #[command(hide = true)]
    Serve(Box<warren_master::cli::ServeArgs>),
    /// The bare axum server `http` compares warren with (started by `http`).
    #[command(hide = true)]
    BareServer(bare::BareArgs),
    /// Run one worker process (started by the pool under test, not by hand).
    /// Reuses `warren worker`'s own arguments so the two cannot drift apart.
    #[command(hide = true)]
    Worker(warren_master::cli::WorkerArgs),
    /// The bare echo process the pool is compared with (started by `micro`).
    #[command(hide = true)]
    EchoServer(echo::EchoArgs),
}

#[derive(Debug, Clone, Args)]
pub struct MicroArgs {
    /// Measuring time of each figure, in seconds (fractions allowed); each
    /// pool figure is preceded by a shorter warm-up.
    #[arg(long, default_value = "3", value_parser = parse_seconds)]
    pub seconds: Duration,
    /// Number of worker processes in the pool under test.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Write the results as JSON to stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Measuring time of each series, in seconds (fractions allowed). A
    /// whole run takes about 5 times this, plus setting up.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub seconds: Duration,
    /// Logged-in users the ping load is spread over.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub users: u32,
    /// Keep-alive connections of the ping load; connection k acts as user
    /// k mod users.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Pings per second each connection sends while the logins' effect is
    /// measured (c).
    #[arg(long, default_value = "25", value_parser = parse_rate)]
    pub user_rate: f64,
    /// Number of worker processes of the warren under test.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Write the results as JSON to stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Measure the bare handler only: a check of the generator itself
    /// (beside wrk, say) that needs no warren.
    #[arg(long)]
    pub bare_only: bool,
}

#[derive(Debug, Clone, Args)]
pub struct FilesArgs {
    /// Measuring time of each series of (a), the 1 KiB GET, in seconds
    /// (fractions allowed).
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub seconds: Duration,
    /// Size of the file uploaded and downloaded in (b) and (c), in MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub size_mib: u64,
    /// Times (b) is repeated; each figure's median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repetitions: u32,
    /// Keep-alive connections of (a).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Users of (a), each with its own file; connection k acts as user
    /// k mod users. (b) uses the first.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub users: u32,
    /// Number of worker processes of the warren under test.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Before each timed write of (b) (an upload, a copy), write and remove
    /// as many bytes, untimed, so that every timed write starts from the
    /// same page cache (on a VM whose balloon takes back free memory, writing
    /// into memory left untouched for seconds is several times slower).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub prime: bool,
    /// Write the results as JSON to stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TerminalsArgs {
    /// Keystrokes measured in (a), of each kind.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub samples: u32,
    /// Idle terminals of (b), each with a WebSocket attached.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub terminals: u32,
    /// Terminals per user in (b) (the server's --max-terminals-per-user).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub per_user: u32,
    /// More idle WebSockets in (c), attached to (b)'s terminals.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub websockets: u32,
    /// Number of worker processes of the warren under test.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Write the results as JSON to stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct AppsArgs {
    /// Spawns measured in (a), each way (one user each).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub samples: u32,
    /// Measuring time of (b), each way, in seconds.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub seconds: Duration,
    /// Connections of (b).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Apps running at once in (c) (one user each).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub running: u32,
    /// An apps file to take the app from (default: the repository's
    /// fixture app, tests/apps/fixture_app.py).
    #[arg(long, requires = "app")]
    pub apps_file: Option<std::path::PathBuf>,
    /// The app of --apps-file to measure.
    #[arg(long, requires = "apps_file")]
    pub app: Option<String>,
    /// Number of worker processes of the warren under test.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Write the results as JSON to stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TasksArgs {
    /// Spawns measured one at a time in (a), of each kind.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub samples: u32,
    /// Measuring time of each series of (b), in seconds (split over the
    /// rounds).
    #[arg(long, default_value = "20", value_parser = parse_seconds)]
    pub seconds: Duration,
    /// Rounds of (b): calm and loaded windows alternate this many times,
    /// so the shared machine's own drift falls on both alike.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Short tasks started per second in (b), in all.
    #[arg(long, default_value = "100", value_parser = parse_rate)]
    pub rate: f64,
    /// Users the tasks of (b) are spread over.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub users: u32,
    /// Other users, each sending pings on a schedule during (b).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub observers: u32,
    /// Pings per second of each observer.
    #[arg(long, default_value = "50", value_parser = parse_rate)]
    pub observer_rate: f64,
    /// Number of worker processes of the warren under test.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Write the results as JSON to stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct UiArgs {
    /// Timed requests of each one-at-a-time series ((a) `GET /`, (b)
    /// `GET /ui/app.js`, (c) `GET /` revalidated).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub requests: u32,
    /// Untimed requests before each of those series.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub warmup: u32,
    /// Keep-alive connections of (d), `GET /` back to back.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Measuring time of (d), in seconds (fractions allowed), after a
    /// warm-up of a tenth of it (0.2 to 1 s).
    #[arg(long, default_value = "5", value_parser = parse_seconds)]
    pub seconds: Duration,
    /// Number of worker processes of the warren under test.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Write the results as JSON to stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct NginxArgs {
    /// Measuring time of each series, in seconds (fractions allowed), after
    /// a warm-up of a tenth of it (0.2 to 1 s).
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub seconds: Duration,
    /// Keep-alive connections of each series.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Number of worker processes of the warren under test.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// The nginx executable (default: nginx on the PATH, or /usr/sbin/nginx).
    #[arg(long)]
    pub nginx: Option<std::path::PathBuf>,
    /// The site file (default: the repository's deploy/nginx.conf).
    #[arg(long)]
    pub site: Option<std::path::PathBuf>,
    /// Write the results as JSON to stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct HostsArgs {
    /// Measuring time of each series, in seconds (fractions allowed), after
    /// a warm-up of a tenth of it (0.2 to 1 s).
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub seconds: Duration,
    /// Keep-alive connections of the concurrent series.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Number of worker processes of each host.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// PostgreSQL on which the bench creates (and then drops) the hosts'
    /// database.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub postgres: String,
    /// Write the results as JSON to stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct JwtArgs {
    /// Measuring time of each series, in seconds (fractions allowed), after
    /// a warm-up of a tenth of it (0.2 to 1 s).
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub seconds: Duration,
    /// Users of each kind: local users with an API token, and JWT users
    /// (created by warren on their first request).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub users: u32,
    /// Keep-alive connections of each series; connection k acts as user
    /// k mod users.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Number of worker processes of the warren under test.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Write the results as JSON to stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StartupArgs {
    /// Users in the database of the second series (the first has none).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub users: u64,
    /// Of them, those with a directory under `<data>/users` (made before
    /// the timed starts; each takes a few file-system operations).
    #[arg(long, default_value_t = 10_000)]
    pub user_dirs: u64,
    /// Timed starts of each series (after one untimed start).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: u32,
    /// Number of worker processes of the warren under test.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Also measure PostgreSQL: a URL on which the bench may create (and
    /// then drop) databases of its own, e.g. postgres://postgres@127.0.0.1/postgres.
    #[arg(long)]
    pub postgres: Option<String>,
    /// Write the results as JSON to stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// A positive, finite number of seconds.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    match Duration::try_from_secs_f64(seconds) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(format!("{text:?}: need a positive number of seconds")),
    }
}

/// A positive, finite rate (per second).
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{text:?}: need a positive number per second")),
    }
}

fn main() -> ExitCode {
    // The pool's workers re-execute this binary for users' processes too.
    warren_master::dispatch_sandbox_stage();
    let cli = Cli::parse();
    match cli.command {
        Command::Worker(args) => run_worker(args),
        Command::EchoServer(args) => match echo::serve(&args.socket) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("warren-bench echo-server: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Micro(args) => report_failure(micro::run(&args)),
        Command::Http(args) => report_failure(
            on_runtime(http::run(&args)).and_then(|r| report::print(r.table(), &r, args.json)),
        ),
        Command::Files(args) => report_failure(
            on_runtime(files::run(&args)).and_then(|r| report::print(r.table(), &r, args.json)),
        ),
        Command::Tasks(args) => report_failure(
            on_runtime(tasks::run(&args)).and_then(|r| report::print(r.table(), &r, args.json)),
        ),
        Command::Apps(args) => report_failure(
            on_runtime(apps::run(&args)).and_then(|r| report::print(r.table(), &r, args.json)),
        ),
        Command::Terminals(args) => report_failure(
            on_runtime(terminals::run(&args)).and_then(|r| report::print(r.table(), &r, args.json)),
        ),
        Command::Ui(args) => report_failure(
            on_runtime(ui::run(&args)).and_then(|r| report::print(r.table(), &r, args.json)),
        ),
        Command::Nginx(args) => report_failure(
            on_runtime(nginx::run(&args)).and_then(|r| report::print(r.table(), &r, args.json)),
        ),
        Command::Hosts(args) => report_failure(
            on_runtime(hosts::run(&args)).and_then(|r| report::print(r.table(), &r, args.json)),
        ),
        Command::Jwt(args) => report_failure(
            on_runtime(jwt::run(&args)).and_then(|r| report::print(r.table(), &r, args.json)),
        ),
        Command::Startup(args) => report_failure(
            on_runtime(startup::run(&args)).and_then(|r| report::print(r.table(), &r, args.json)),
        ),
        Command::Run(args) => match on_runtime(run::main(*args)) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::from(2)
            }
        },
        Command::Report(args) => report_failure(run::report(&args)),
        Command::Serve(args) => run_serve(*args),
        Command::BareServer(args) => report_failure(bare::serve(&args)),
    }
}

fn report_failure(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `work` on the load generator's runtime: multi-thread, one thread
/// per core, like the servers it measures (and `wrk -t <cores>`).
fn on_runtime<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(work)
}

/// Exactly what `warren serve` runs (`warren_master::main`): tracing at
/// info, a multi-thread runtime, `serve::run`.
fn run_serve(args: warren_master::cli::ServeArgs) -> ExitCode {
    warren_master::init_tracing("info", warren_master::cli::LogFormat::Text);
    warren_master::run_serve(args, None)
}

/// Exactly `warren worker`, logging only warnings and errors so the
/// benchmark's output stays its results.
fn run_worker(args: warren_master::cli::WorkerArgs) -> ExitCode {
    warren_master::init_tracing("warn", warren_master::cli::LogFormat::Text);
    warren_master::run_worker(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ui_defaults_are_the_documented_ones() {
        let Command::Ui(args) = Cli::try_parse_from(["warren-bench", "ui"]).unwrap().command else {
            panic!("not the ui command");
        };
        assert_eq!((args.requests, args.warmup), (2000, 200));
        assert_eq!((args.concurrency, args.workers), (16, 2));
        assert_eq!(args.seconds, Duration::from_secs(5));
        assert!(!args.json);
    }

    #[test]
    fn seconds_must_be_positive_and_finite() {
        assert_eq!(parse_seconds("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["0", "-1", "nan", "inf", "", "3s"] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_rate("2.5"), Ok(2.5));
    }
}
