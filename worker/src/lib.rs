//! The warren worker: one OS process per slot, started by the master as
//! `warren worker --slot N --socket PATH`, serving the users hashed to it.
//!
//! - [`connection`]: the one connection to the master: handshake, frame
//!   dispatch, cancellation, heartbeats.
//! - [`ops`]: what each operation does, as plain functions.
//! - [`sandbox`]: the confinement of users' processes, and the
//!   `warren sandbox-exec` stage ([`sandbox::stage_main`]).
//!
//! A worker has no listening port and trusts only the socket its master
//! handed it. It exits when the master goes away: on socket EOF, and through
//! `PR_SET_PDEATHSIG` if the master dies without closing the socket.
// Only `sandbox` may use unsafe code (it allows it, block by block).
#![deny(unsafe_code)]

pub mod apps;
pub mod connection;
pub mod ops;
pub mod sandbox;
pub mod tasks;
pub mod terminals;
pub mod workspace;

use std::path::PathBuf;
use std::time::Duration;

/// How a worker was asked to run (from its command line).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub slot: u32,
    pub socket: PathBuf,
    pub heartbeat_interval: Duration,
    /// Where users' directories live (`<data-dir>/users`); without it, file
    /// operations are refused as unsupported.
    pub users_dir: Option<PathBuf>,
    /// What users' writes leave free on the users' file system.
    pub disk_reserve: workspace::DiskReserve,
    /// How users' processes are confined (with `users_dir`); probed at start.
    pub sandbox: Option<sandbox::SandboxConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot connect to the master at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("handshake with the master failed: {0}")]
    Handshake(#[from] warren_protocol::io::HandshakeError),
    #[error("connection to the master failed: {0}")]
    Connection(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot arrange to die with the master: {0}")]
    DeathSignal(std::io::Error),
    #[cfg(debug_assertions)]
    #[error("crashing at start as WARREN_DEBUG_CRASH_SLOTS asks")]
    DebugCrash,
}

/// Runs the worker until its master goes away. Returns `Ok` when the master
/// closed the connection (the normal way to stop a worker).
pub fn run(config: WorkerConfig) -> Result<(), WorkerError> {
    // If the master dies without closing the socket, the kernel kills us.
    // The signal is tied to the master *thread* that forked us; the master
    // spawns workers from its long-lived runtime threads for that reason.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|err| WorkerError::DeathSignal(err.into()))?;
    // Started from /proc/self/exe, the process would be named "exe" in top,
    // pidof and perf. Failing to rename is harmless.
    let _ = rustix::thread::set_name(c"warren-worker");
    #[cfg(debug_assertions)]
    debug_crash_at_start(config.slot)?;
    // Processes a predecessor in this slot left (it was killed: its
    // users' processes lost their parent but not their cgroup) go first.
    // Still single-threaded here; the task runner probes again for its own
    // `Sandbox` (cheap: a few reads of /proc and /sys).
    if let Some(sandbox) = &config.sandbox {
        let sandbox = sandbox::Sandbox::probe(sandbox.clone(), false);
        if let Err(err) = sandbox.kill_slot(config.slot) {
            tracing::warn!(slot = config.slot, error = %err, "cannot clean the slot's cgroups");
        }
    }
    // One thread per worker: the pool has one worker per core, and a
    // current-thread runtime keeps a request's path free of cross-thread
    // wake-ups. Blocking work goes to the blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WorkerError::Runtime)?;
    runtime.block_on(connection::serve(config))
}

/// Test builds only: `WARREN_DEBUG_CRASH_SLOTS=1,3` makes those slots' workers
/// exit at once every time they start, to exercise crash-loop back-off.
#[cfg(debug_assertions)]
fn debug_crash_at_start(slot: u32) -> Result<(), WorkerError> {
    let Ok(slots) = std::env::var("WARREN_DEBUG_CRASH_SLOTS") else {
        return Ok(());
    };
    if slots.split(',').any(|s| s.trim().parse() == Ok(slot)) {
        return Err(WorkerError::DebugCrash);
    }
    Ok(())
}
