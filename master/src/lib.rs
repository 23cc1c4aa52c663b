//! The warren master: the one process that talks to the network.
//!
//! - [`cli`]: the command line (`warren serve`, hidden `warren worker`).
//! - [`config`]: the configuration file and where each setting came from.
//! - [`serve`]: start-up and shutdown of `warren serve`.
//! - [`pool`]: worker processes, routing by consistent hash, supervision.
//! - [`http`]: the axum routes and the one error -> response mapping.
//! - [`auth`]: logins, sessions, API tokens, throttling, the session cache.
//! - [`store`]: the accounts database (SQLite or PostgreSQL, via sqlx).
//! - [`pool_cli`]: `warren pool …`, the pool's state and rolling restart.
//! - [`user_cli`]: `warren user …`, the operator's user management.
//! - [`metrics`]: Prometheus metrics.
//! - [`notify`]: systemd's readiness notifications (`READY=1`, `STOPPING=1`).
//! - [`recorder`]: task records kept in step with the workers' reports.
//! - [`activity`]: the live activity feed (SSE) and its aggregates.
#![forbid(unsafe_code)]

pub mod activity;
pub mod apps;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod pool;
pub mod pool_cli;
pub mod purge;
pub mod recorder;
pub mod serve;
pub mod serve_identity;
pub mod store;
pub mod user_cli;

use std::process::ExitCode;

/// The `warren` binary's entry point.
pub fn main() -> ExitCode {
    dispatch_sandbox_stage();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let parsed = match config::parse(&args) {
        Ok(parsed) => parsed,
        Err(config::ParseError::Clap(err)) => err.exit(),
        Err(config::ParseError::File(problems)) => {
            eprintln!("error: the configuration file has problems:\n{problems}");
            return ExitCode::from(2);
        }
    };
    match parsed.cli.command {
        cli::Command::Worker(args) => {
            init_tracing(&args.log_level, args.log_format);
            run_worker(args)
        }
        cli::Command::Serve(ref args) => {
            let args = (**args).clone();
            init_tracing(&args.log_level, args.log_format);
            run_serve(args, Some(parsed.matches))
        }
        cli::Command::User(command) => {
            init_tracing("info", cli::LogFormat::Text);
            block_on(
                tokio::runtime::Builder::new_current_thread(),
                user_cli::run(command),
            )
        }
        cli::Command::Pool(command) => {
            init_tracing("warn", cli::LogFormat::Text);
            block_on(
                tokio::runtime::Builder::new_current_thread(),
                pool_cli::run(command),
            )
        }
        cli::Command::Config(cli::ConfigCommand::Check { ref file }) => match config::check(file) {
            Ok(checked) => {
                println!(
                    "{}: ok ({} settings{})",
                    file.display(),
                    checked.values.len(),
                    if checked.apps.is_some() {
                        ", app definitions"
                    } else {
                        ""
                    }
                );
                ExitCode::SUCCESS
            }
            Err(problems) => {
                eprintln!("{problems}");
                ExitCode::FAILURE
            }
        },
        cli::Command::Config(cli::ConfigCommand::Print(_)) => {
            print!("{}", config::print(&parsed));
            ExitCode::SUCCESS
        }
    }
}

/// `warren sandbox-exec` (started by a worker for each user process):
/// becomes the user's command and never returns. Checked before clap,
/// logging or any runtime, so the stage stays a single thread. Shared with
/// any binary the pool re-executes as its workers (such as `warren-bench`).
pub fn dispatch_sandbox_stage() {
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(warren_protocol::sandbox::STAGE_ARG))
    {
        warren_worker::sandbox::stage_main();
    }
}

/// Runs `warren serve` until it stops (on a thread per core). `matches`
/// is the parsed command line, for SIGHUP to tell what a new configuration
/// file changes (`None`: no reloading).
pub fn run_serve(args: cli::ServeArgs, matches: Option<clap::ArgMatches>) -> ExitCode {
    block_on(
        tokio::runtime::Builder::new_multi_thread(),
        serve::run(args, matches),
    )
}

/// Runs `work` to completion on a runtime from `builder`; errors go to
/// stderr with their causes.
fn block_on(
    mut builder: tokio::runtime::Builder,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `warren worker`: run one worker until its master goes away. Shared with
/// any binary the pool re-executes as its workers (such as `warren-bench`).
pub fn run_worker(args: cli::WorkerArgs) -> ExitCode {
    let sandbox = args.users_dir.clone().map(|users_dir| {
        let mut sandbox = warren_worker::sandbox::SandboxConfig::new(users_dir, args.slot);
        sandbox.mode = args.sandbox;
        sandbox.network = args.sandbox_network;
        sandbox.extra_read = args.sandbox_read.clone();
        sandbox.env = args.sandbox_env.clone();
        sandbox.cgroup_root = args.cgroup_root.clone();
        sandbox
    });
    let config = warren_worker::WorkerConfig {
        slot: args.slot,
        sandbox,
        socket: args.socket,
        heartbeat_interval: std::time::Duration::from_millis(args.heartbeat_interval_ms.max(1)),
        users_dir: args.users_dir,
        disk_reserve: warren_worker::workspace::DiskReserve {
            bytes: args.disk_reserve_bytes,
            inodes: args.disk_reserve_inodes,
        },
    };
    match warren_worker::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(slot = args.slot, error = %err, "worker failed");
            ExitCode::FAILURE
        }
    }
}

/// Replaces the log filter of the running process (SIGHUP).
static LOG_FILTER: std::sync::OnceLock<
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
> = std::sync::OnceLock::new();

/// Logs to stderr at `level` (an `EnvFilter` directive such as `info` or
/// `warn,warren_master=debug`), as text or one JSON object per line.
pub fn init_tracing(level: &str, format: cli::LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        cli::LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
        cli::LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if installed.is_ok() {
        let _ = LOG_FILTER.set(handle);
    }
}

/// Applies a new log level to the running process.
pub fn set_log_level(level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map_err(|err| err.to_string())?;
    let handle = LOG_FILTER.get().ok_or("logging is not set up")?;
    handle.reload(filter).map_err(|err| err.to_string())
}
