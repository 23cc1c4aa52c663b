//! The warren master: the one process that talks to the network.
//!
//! - [`cli`]: the command line (`warren serve`, hidden `warren worker`).
//! - [`serve`]: start-up and shutdown of `warren serve`.
//! - [`pool`]: worker processes, routing by consistent hash, supervision.
//! - [`http`]: the axum routes and the one error -> response mapping.
//! - [`auth`]: logins, sessions, API tokens, throttling, the session cache.
//! - [`store`]: the accounts database (SQLite or PostgreSQL, via sqlx).
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
pub mod http;
pub mod metrics;
pub mod notify;
pub mod pool;
pub mod purge;
pub mod recorder;
pub mod serve;
pub mod store;
pub mod user_cli;

use std::process::ExitCode;

/// The `warren` binary's entry point.
pub fn main() -> ExitCode {
    use clap::Parser;
    dispatch_sandbox_stage();
    let cli = cli::Cli::parse();
    init_tracing("info");
    match cli.command {
        cli::Command::Worker(args) => run_worker(args),
        cli::Command::Serve(args) => run_serve(*args),
        cli::Command::User(command) => block_on(
            tokio::runtime::Builder::new_current_thread(),
            user_cli::run(command),
        ),
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

/// Runs `warren serve` until it stops (on a thread per core).
pub fn run_serve(args: cli::ServeArgs) -> ExitCode {
    block_on(
        tokio::runtime::Builder::new_multi_thread(),
        serve::run(args),
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

/// Logs to stderr; `WARREN_LOG` (an `EnvFilter` directive such as `debug`)
/// overrides `default_level`.
pub fn init_tracing(default_level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
