//! `warren-bench`: measurements of warren's hot paths.
//!
//! - `warren-bench micro`: codec, routing hash, and pool round trips through
//!   real worker processes, each beside an in-process baseline measured in
//!   the same run (see [`micro`]).
//! - `warren-bench echo-server` (hidden): the bare tokio + Unix socket +
//!   bincode echo that the pool's latency is compared with (see [`echo`]).
//! - `warren-bench worker` (hidden): a worker process, exactly as
//!   `warren worker`. The pool under test re-executes this binary as its
//!   workers, so the benchmark needs no separately built `warren` binary and
//!   always measures master and worker from the same build.
#![forbid(unsafe_code)]

mod echo;
mod micro;
mod report;

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
    /// Micro-benchmarks: codec, routing hash, pool round trip vs in-process call.
    Micro(MicroArgs),
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

fn main() -> ExitCode {
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
        Command::Micro(args) => match micro::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Exactly `warren worker`, logging only warnings and errors so the
/// benchmark's output stays its results.
fn run_worker(args: warren_master::cli::WorkerArgs) -> ExitCode {
    warren_master::init_tracing("warn");
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
    fn seconds_must_be_positive_and_finite() {
        assert_eq!(parse_seconds("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["0", "-1", "nan", "inf", "", "3s"] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
    }
}
