//! One supervisor task per slot: spawn the worker, accept its connection,
//! handshake, watch it (exit, EOF, heartbeats), and restart it with back-off.

use super::connection::WorkerConnection;
use super::{EventSender, PoolConfig, PoolEvent, Slot};
use crate::metrics::PoolMetrics;
use interprocess::local_socket::tokio::{prelude::*, Listener, Stream as LocalStream};
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::unix::OwnedWriteHalf;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};
use warren_protocol::io::{handshake, write_frames, DescriptorReader, ReceivedDescriptors};
use warren_protocol::{FrameCodec, Hello, PeerRole, PROTOCOL_VERSION};

const READ_BUFFER: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// A worker was spawned and has not finished its handshake yet.
    #[default]
    Starting,
    /// Serving requests.
    Up,
    /// The worker failed; a replacement is about to start.
    Restarting,
    /// The worker keeps failing: it is retried at the back-off cap, and the
    /// pool is not ready until it has stayed up for `stable_after`.
    Degraded,
    /// The pool is shut down.
    Stopped,
}

impl SlotState {
    pub const ALL: [SlotState; 5] = [
        SlotState::Starting,
        SlotState::Up,
        SlotState::Restarting,
        SlotState::Degraded,
        SlotState::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Starting => "starting",
            SlotState::Up => "up",
            SlotState::Restarting => "restarting",
            SlotState::Degraded => "degraded",
            SlotState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SlotStatus {
    pub state: SlotState,
    pub restarts: u64,
    /// Failures since the worker last stayed up for `stable_after`.
    pub crashes_in_a_row: u32,
}

/// Restart policy: the first restart is immediate; further ones wait
/// `initial`, doubling up to `max`. A worker that stays up `stable_after`
/// resets the count; `degraded_after` failures in a row mark the slot degraded.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub stable_after: Duration,
    pub degraded_after: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
            degraded_after: 3,
        }
    }
}

impl Backoff {
    /// The wait before restarting after the `crashes_in_a_row`-th failure.
    pub fn delay(&self, crashes_in_a_row: u32) -> Duration {
        match crashes_in_a_row {
            0 | 1 => Duration::ZERO,
            n => {
                let doublings = (n - 2).min(31);
                self.initial.saturating_mul(1 << doublings).min(self.max)
            }
        }
    }
}

pub fn socket_path(run_dir: &Path, slot: u32) -> PathBuf {
    run_dir.join(format!("worker-{slot}.sock"))
}

/// Creates the sockets' directory, readable by this user only.
pub fn prepare_run_dir(run_dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(run_dir)?;
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o700))
}

/// Binds slot `slot`'s socket. A socket file left by a crashed master is
/// removed; one that a live process still answers on is an error, since two
/// masters must not share a data directory.
pub fn bind(run_dir: &Path, slot: u32) -> std::io::Result<Listener> {
    let path = socket_path(run_dir, slot);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "{} is in use: is another warren running on this data directory?",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let name = path.as_path().to_fs_name::<GenericFilePath>()?;
    let listener = ListenerOptions::new().name(name).create_tokio()?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

enum End {
    Stopped,
    Failed(String),
    /// An operator's restart: the worker was drained and let go.
    Replaced,
}

/// Keeps slot `slot` served until `stopping` is cancelled.
pub(crate) async fn supervise(
    slot: Arc<Slot>,
    listener: Listener,
    config: PoolConfig,
    metrics: PoolMetrics,
    stopping: CancellationToken,
    events: EventSender,
) {
    let span = info_span!("slot", slot = slot.index);
    async move {
        let socket = socket_path(&config.run_dir, slot.index);
        metrics.touch_slot(slot.index);
        loop {
            let started = Instant::now();
            let reason = match run_once(&slot, &listener, &socket, &config, &stopping, &events).await {
                End::Stopped => break,
                End::Failed(reason) => reason,
                End::Replaced => {
                    // Not a failure: no back-off, no crash counted.
                    slot.set_status(|status| {
                        status.restarts += 1;
                        status.state = SlotState::Restarting;
                    });
                    info!("worker replaced at an operator's request");
                    continue;
                }
            };
            metrics.count_restart(slot.index);
            let mut crashes = 0;
            slot.set_status(|status| {
                if started.elapsed() >= config.backoff.stable_after {
                    status.crashes_in_a_row = 0;
                }
                status.crashes_in_a_row += 1;
                status.restarts += 1;
                crashes = status.crashes_in_a_row;
                status.state = if crashes >= config.backoff.degraded_after {
                    SlotState::Degraded
                } else {
                    SlotState::Restarting
                };
            });
            let delay = config.backoff.delay(crashes);
            warn!(%reason, crashes_in_a_row = crashes, restart_in_ms = delay.as_millis() as u64, "worker failed; restarting");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopping.cancelled() => break,
            }
        }
        slot.set_status(|status| status.state = SlotState::Stopped);
        drop(listener);
        let _ = std::fs::remove_file(&socket);
    }
    .instrument(span)
    .await
}

/// Kills what the slot's users still run once its worker is gone (the
/// master marks their tasks lost; nothing may keep running unseen).
async fn kill_users_processes(config: &PoolConfig, slot: u32) {
    let Some(sandbox) = config.sandbox.clone() else {
        return;
    };
    match tokio::task::spawn_blocking(move || sandbox.kill_slot(slot)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!(error = %err, "cannot kill the slot's user processes"),
        Err(err) => warn!(error = %err, "cannot kill the slot's user processes"),
    }
}

/// One worker's life: spawn, handshake, serve until it fails or the pool stops.
async fn run_once(
    slot: &Slot,
    listener: &Listener,
    socket: &Path,
    config: &PoolConfig,
    stopping: &CancellationToken,
    events: &EventSender,
) -> End {
    slot.set_status(|status| {
        if status.state != SlotState::Degraded {
            status.state = SlotState::Starting;
        }
    });
    let mut child = match spawn_worker(config, slot.index, socket) {
        Ok(child) => child,
        Err(err) => return End::Failed(format!("cannot spawn a worker: {err}")),
    };
    let pid = child.id().unwrap_or(0);

    let connect = accept_and_handshake(listener, slot.index, pid);
    let connected = tokio::select! {
        outcome = tokio::time::timeout(config.start_timeout, connect) => match outcome {
            Ok(result) => result,
            Err(_) => Err(format!("worker did not connect within {:?}", config.start_timeout)),
        },
        status = child.wait() => Err(format!("worker exited during start-up ({})", describe_exit(status))),
        _ = stopping.cancelled() => {
            stop_child(&mut child, Duration::ZERO).await;
            return End::Stopped;
        }
    };
    let (reader, writer_half, received) = match connected {
        Ok(halves) => halves,
        Err(reason) => {
            stop_child(&mut child, Duration::ZERO).await;
            return End::Failed(reason);
        }
    };

    let (frames, outgoing) = mpsc::unbounded_channel();
    let connection = Arc::new(WorkerConnection::new(
        slot.index,
        pid,
        frames,
        received,
        events.clone(),
    ));
    let writer = tokio::spawn({
        let connection = connection.clone();
        // The master hands nothing over to a worker.
        let handed: Option<warren_protocol::io::HandOverReceiver<std::os::fd::OwnedFd>> = None;
        write_frames(outgoing, handed, writer_half, move |id, err| {
            warn!(id, error = %err, "a request too large for a frame was refused");
            connection.fail_unsendable(id, &err);
        })
    });
    let mut reader_task = tokio::spawn({
        let connection = connection.clone();
        async move { connection.read_frames(reader).await }
    });
    slot.current.store(Some(connection.clone()));
    slot.changed.notify_waiters();
    let mut stable = false;
    slot.set_status(|status| {
        if status.crashes_in_a_row < config.backoff.degraded_after {
            status.state = SlotState::Up;
        }
    });
    info!(pid, "worker up");
    let _ = events.send(PoolEvent::WorkerUp {
        slot: slot.index,
        worker_pid: pid,
    });

    let stable_timer = tokio::time::sleep(config.backoff.stable_after);
    tokio::pin!(stable_timer);
    let mut heartbeat_check = tokio::time::interval(config.heartbeat_timeout / 4);
    let mut reader_done = false;
    let end = loop {
        tokio::select! {
            status = child.wait() => break End::Failed(format!("worker exited ({})", describe_exit(status))),
            reason = &mut reader_task => {
                reader_done = true;
                break End::Failed(reason.unwrap_or_else(|err| err.to_string()));
            }
            _ = heartbeat_check.tick() => {
                let age = connection.heartbeat_age();
                if age > config.heartbeat_timeout {
                    warn!(pid, silent_ms = age.as_millis() as u64, "worker missed its heartbeats; killing it");
                    break End::Failed(format!("no heartbeat for {age:?}"));
                }
            }
            _ = &mut stable_timer, if !stable => {
                stable = true;
                slot.set_status(|status| {
                    status.crashes_in_a_row = 0;
                    status.state = SlotState::Up;
                });
            }
            _ = slot.replace.notified() => {
                // A permit left from a drain of an earlier worker is not
                // for this one.
                if slot.draining_pid.load(std::sync::atomic::Ordering::Acquire) == pid {
                    break End::Replaced;
                }
            }
            _ = stopping.cancelled() => break End::Stopped,
        }
    };

    // Take the worker out of routing first, then fail what it held.
    slot.current.store(None);
    if matches!(end, End::Replaced) {
        slot.set_status(|status| status.state = SlotState::Restarting);
    }
    connection.fail_all();
    writer.abort();
    let _ = writer.await;
    if !reader_done {
        reader_task.abort();
        let _ = reader_task.await;
    }
    // Both halves of the socket went with their tasks: the worker sees EOF,
    // which is how a worker is asked to stop.
    let grace = match end {
        End::Stopped | End::Replaced => config.stop_timeout,
        End::Failed(_) => Duration::ZERO,
    };
    stop_child(&mut child, grace).await;
    // Before the worker is reported down: its tasks are lost only once
    // nothing of theirs runs.
    kill_users_processes(config, slot.index).await;
    let _ = events.send(PoolEvent::WorkerDown {
        slot: slot.index,
        worker_pid: pid,
        reason: match &end {
            End::Stopped => "stopped".to_string(),
            End::Replaced => "restarted by an operator".to_string(),
            End::Failed(reason) => reason.clone(),
        },
    });
    end
}

type ReadHalf = FramedRead<DescriptorReader, FrameCodec>;

async fn accept_and_handshake(
    listener: &Listener,
    slot: u32,
    pid: u32,
) -> Result<(ReadHalf, OwnedWriteHalf, ReceivedDescriptors), String> {
    let stream = loop {
        let stream = listener
            .accept()
            .await
            .map_err(|err| format!("accepting the worker's connection failed: {err}"))?;
        // The backlog may hold a connection from a process that is not the
        // worker just spawned: one killed at a start-up timeout after it
        // connected but before it was accepted. Handshaking with it fails
        // ("Broken pipe") and costs the real worker its start; the kernel
        // says who connected, so such a connection is dropped unread.
        match stream.peer_creds().ok().and_then(|creds| creds.pid()) {
            Some(peer) if u32::try_from(peer).ok() != Some(pid) => {
                info!(
                    peer,
                    pid, "dropping a connection to the worker socket from another process"
                );
            }
            _ => break stream,
        }
    };
    // A tokio socket, read with `recvmsg`: the worker hands over open
    // files with its answers (see warren_protocol::io).
    let LocalStream::UdSocket(stream) = stream;
    let (read_half, mut write_half) = tokio::net::UnixStream::from(stream).into_split();
    let (read_half, received) = DescriptorReader::new(read_half);
    let mut reader = FramedRead::with_capacity(read_half, FrameCodec::new(), READ_BUFFER);
    let ours = Hello {
        version: PROTOCOL_VERSION,
        role: PeerRole::Master,
        slot,
        pid: std::process::id(),
    };
    let theirs = handshake(
        &mut reader,
        &mut write_half,
        ours,
        PeerRole::Worker,
        Some(slot),
    )
    .await
    .map_err(|err| format!("handshake failed: {err}"))?;
    if theirs.pid != pid {
        return Err(format!(
            "a process claiming pid {} connected, but the worker spawned is pid {pid}",
            theirs.pid
        ));
    }
    Ok((reader, write_half, received))
}

fn spawn_worker(config: &PoolConfig, slot: u32, socket: &Path) -> std::io::Result<Child> {
    let command = &config.worker_command;
    tokio::process::Command::new(&command.program)
        .arg0(command.arg0())
        .args(&command.args)
        .arg("--slot")
        .arg(slot.to_string())
        .arg("--socket")
        .arg(socket)
        .arg("--heartbeat-interval-ms")
        .arg(config.heartbeat_interval().as_millis().to_string())
        .stdin(Stdio::null())
        // Only the master talks to systemd (`crate::notify`).
        .env_remove(crate::notify::SOCKET_ENV)
        .kill_on_drop(true)
        .spawn()
}

/// Waits up to `grace` for the child to exit, then kills it, and reaps it.
async fn stop_child(child: &mut Child, grace: Duration) {
    if !grace.is_zero() && tokio::time::timeout(grace, child.wait()).await.is_ok() {
        return;
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(err) => format!("unknown status: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_restarts_at_once_then_doubles_to_the_cap() {
        let backoff = Backoff::default();
        let delays: Vec<u64> = (1..=12)
            .map(|n| backoff.delay(n).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [0, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn a_stale_socket_file_does_not_block_binding() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), 0);
        // A socket file with nobody listening, as a crashed master leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            bind(dir.path(), 0).unwrap();
        });
    }

    #[test]
    fn a_live_socket_is_not_stolen() {
        let dir = tempfile::tempdir().unwrap();
        let _live = std::os::unix::net::UnixListener::bind(socket_path(dir.path(), 1)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = runtime.block_on(async { bind(dir.path(), 1).err().unwrap() });
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }
}
