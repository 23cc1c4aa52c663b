//! The worker's one connection to its master.
//!
//! The reader loop below decodes frames and dispatches them; cheap operations
//! are answered inline, anything that waits runs as its own task, tracked by
//! request id so a `Cancel` from the master can abort it. Every reply goes
//! through one writer task that batches frames into few writes.

use crate::apps::Apps;
use crate::ops::{self, WorkerIdentity};
use crate::tasks::launch::Launcher;
use crate::tasks::Tasks;
use crate::terminals::Terminals;
use crate::workspace::{Passable, Workspaces};
use crate::{WorkerConfig, WorkerError};
use futures_util::StreamExt;
use interprocess::local_socket::tokio::{prelude::*, Stream as LocalStream};
use interprocess::local_socket::{GenericFilePath, ToFsName};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::codec::FramedRead;
use tracing::{debug, error, info};
use warren_protocol::io::{handshake, write_frames};
use warren_protocol::stream::{FrameSender, StreamRegistry};
use warren_protocol::{
    AppOp, Body, Frame, FrameCodec, Heartbeat, Hello, Op, OpError, PeerRole, Reply, Request,
    Response, StreamKind, TaskOp, TerminalOp, UserCtx, UserId, PROTOCOL_VERSION,
};

const READ_BUFFER: usize = 64 * 1024;

/// Frames handled between two turns of the reply writer.
const FRAMES_PER_TURN: usize = 4;

/// Connects to the master, handshakes, and serves until the master goes away.
pub async fn serve(config: WorkerConfig) -> Result<(), WorkerError> {
    leave_stopping_to_the_master()?;
    let connect_error = |source| WorkerError::Connect {
        path: config.socket.clone(),
        source,
    };
    let name = config
        .socket
        .as_path()
        .to_fs_name::<GenericFilePath>()
        .map_err(connect_error)?;
    let connection = LocalStream::connect(name).await.map_err(connect_error)?;
    // Read with plain `read`: a descriptor sent to a worker would be closed
    // by the kernel, never received (see warren_protocol::io). Answers that
    // hand one over go out with `sendmsg`.
    let LocalStream::UdSocket(connection) = connection;
    let (receive, mut send) = tokio::net::UnixStream::from(connection).into_split();
    let mut reader = FramedRead::with_capacity(receive, FrameCodec::new(), READ_BUFFER);

    let identity = WorkerIdentity {
        slot: config.slot,
        pid: std::process::id(),
    };
    let ours = Hello {
        version: PROTOCOL_VERSION,
        role: PeerRole::Worker,
        slot: identity.slot,
        pid: identity.pid,
    };
    handshake(
        &mut reader,
        &mut send,
        ours,
        PeerRole::Master,
        Some(identity.slot),
    )
    .await?;
    info!(
        slot = identity.slot,
        pid = identity.pid,
        open_users = crate::workspace::open_users_limit(),
        "worker ready"
    );

    let (frames, outgoing) = mpsc::unbounded_channel();
    let (handing, handed) = mpsc::unbounded_channel();
    #[cfg(debug_assertions)]
    let (garbage, garbage_requests) = mpsc::unbounded_channel();
    let workspaces = config
        .users_dir
        .clone()
        .map(|dir| Arc::new(Workspaces::new(dir).reserving(config.disk_reserve)));
    let (tasks, terminals_and_apps): (Option<_>, Option<_>) = config
        .users_dir
        .clone()
        .zip(workspaces.clone())
        .map(|(users_dir, workspaces)| {
            let sandbox = config.sandbox.clone().unwrap_or_else(|| {
                crate::sandbox::SandboxConfig::new(users_dir.clone(), config.slot)
            });
            let launcher = Arc::new(Launcher::new(crate::sandbox::Sandbox::probe(
                sandbox, false,
            )));
            let tasks = Tasks::new(
                users_dir.clone(),
                workspaces.clone(),
                launcher.clone(),
                frames.clone(),
            );
            let apps = Apps::new(
                users_dir,
                workspaces.clone(),
                launcher.clone(),
                frames.clone(),
            );
            (tasks, (Terminals::new(workspaces, launcher), apps))
        })
        .unzip();
    let (terminals, apps) = terminals_and_apps.unzip();
    let worker = Arc::new(Worker {
        identity,
        frames,
        handing,
        inflight: Mutex::new(HashMap::new()),
        streams: StreamRegistry::new(),
        users: Mutex::new(HashSet::new()),
        workspaces,
        tasks,
        terminals,
        apps,
        #[cfg(debug_assertions)]
        garbage,
    });
    #[cfg(debug_assertions)]
    let writer = tokio::spawn(debug::write_or_garbage(
        outgoing,
        handed,
        send,
        garbage_requests,
        unsendable(worker.frames.clone()),
    ));
    #[cfg(not(debug_assertions))]
    let writer = tokio::spawn(write_frames(
        outgoing,
        Some(handed),
        send,
        unsendable(worker.frames.clone()),
    ));
    let heartbeat = tokio::spawn(heartbeat_loop(worker.clone(), config.heartbeat_interval));

    let mut handled = 0usize;
    let outcome = loop {
        // One read from the socket can hold dozens of requests. Handled all
        // in a row, their replies would wait for the last one (the writer
        // runs when this loop waits) and the master would sit idle
        // meanwhile; letting the writer send every few replies keeps master
        // and worker busy at once (+10 % small-file GETs on 2 vCPUs).
        handled += 1;
        if handled.is_multiple_of(FRAMES_PER_TURN) {
            tokio::task::yield_now().await;
        }
        match reader.next().await {
            None => {
                info!("master closed the connection; exiting");
                break Ok(());
            }
            Some(Err(err)) => {
                error!(error = %err, "closing the connection to the master: bad frame");
                break Err(WorkerError::Connection(err.to_string()));
            }
            Some(Ok(frame)) => {
                if let Err(err) = worker.handle(frame) {
                    error!(error = %err, "closing the connection to the master");
                    break Err(err);
                }
            }
        }
    };
    heartbeat.abort();
    worker.shut_down();
    drop(worker);
    // The writer ends once every frame sender is gone; don't wait long for a
    // master that stopped reading.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer).await;
    outcome
}

/// What the writer does with a reply too large for a frame (a bug, not
/// something a request can cause) or one whose descriptor the kernel would
/// not take: logs it and answers the request with an error instead, so the
/// master's caller does not wait forever.
fn unsendable(frames: FrameSender) -> impl Fn(u64, warren_protocol::FrameError) {
    move |id, err| {
        error!(id, error = %err, "a reply that could not be sent was dropped");
        let _ = frames.send(Frame {
            id,
            body: Body::Response(Response {
                result: Err(OpError::Internal(format!(
                    "the reply could not be sent: {err}"
                ))),
            }),
        });
    }
}

/// A terminal's Ctrl-C, `timeout`, or a service manager may signal the whole
/// process group. The master decides when its workers stop (it drains first,
/// then closes their sockets), so workers take no action on SIGINT/SIGTERM,
/// nor on SIGHUP (a reload habit such as `pkill -HUP warren`, or a
/// terminal's hangup, must not end every user's tasks): once tokio has a
/// handler registered, the default "terminate" is gone.
fn leave_stopping_to_the_master() -> Result<(), WorkerError> {
    use tokio::signal::unix::{signal, SignalKind};
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ] {
        let _handler = signal(kind).map_err(WorkerError::Signals)?;
    }
    Ok(())
}

struct Worker {
    identity: WorkerIdentity,
    frames: FrameSender,
    /// Answers that hand over a descriptor, each with it: only a
    /// [`Passable`], which only `workspace` makes (a regular file opened
    /// beneath a workspace, or an upload's temp file).
    handing: mpsc::UnboundedSender<(Frame, Passable)>,
    /// Requests running as their own task, by request id.
    inflight: Mutex<HashMap<u64, AbortHandle>>,
    streams: Arc<StreamRegistry>,
    users: Mutex<HashSet<UserId>>,
    workspaces: Option<Arc<Workspaces>>,
    tasks: Option<Arc<Tasks>>,
    terminals: Option<Arc<Terminals>>,
    apps: Option<Arc<Apps>>,
    /// Test builds only: asks the writer to send bytes that are not a frame.
    #[cfg(debug_assertions)]
    garbage: mpsc::UnboundedSender<bool>,
}

impl Worker {
    fn handle(self: &Arc<Self>, frame: Frame) -> Result<(), WorkerError> {
        let id = frame.id;
        match frame.body {
            Body::Request(Request { user, op }) => {
                self.request(id, user, op);
                Ok(())
            }
            Body::Cancel => {
                let task = self.lock_inflight().remove(&id);
                match task {
                    Some(task) => {
                        debug!(id, "request cancelled by the master");
                        task.abort();
                        Ok(())
                    }
                    None => self.route_stream(id, Body::Cancel),
                }
            }
            Body::Open(open) => {
                self.saw_user(&open.user);
                match self.streams.register(id, self.frames.clone()) {
                    Ok(stream) => match (open.kind, &self.tasks) {
                        (StreamKind::TerminalAttach { id }, _) => match &self.terminals {
                            Some(terminals) => {
                                tokio::spawn(terminals.clone().attach(open.user, id, stream));
                            }
                            None => {
                                let (mut sender, _receiver) = stream.split();
                                sender.abort(ops::no_workspaces());
                            }
                        },
                        (
                            StreamKind::TaskOutput {
                                task,
                                from,
                                to,
                                follow,
                            },
                            Some(tasks),
                        ) => {
                            let serving = tasks
                                .clone()
                                .serve_output(open.user, task, from, to, follow, stream);
                            tokio::spawn(serving);
                        }
                        (kind, _) => {
                            let workspaces = self.workspaces.clone();
                            tokio::spawn(ops::serve_stream(kind, open.user, stream, workspaces));
                        }
                    },
                    Err(err) => self.send(id, Body::Close(Err(err))),
                }
                Ok(())
            }
            body @ (Body::Data(_) | Body::Close(_) | Body::Credit(_)) => {
                self.route_stream(id, body)
            }
            Body::Refuse(why) => Err(WorkerError::Connection(format!("master refused us: {why}"))),
            other => Err(WorkerError::Connection(format!(
                "unexpected frame from the master: {other:?}"
            ))),
        }
    }

    fn route_stream(&self, id: u64, body: Body) -> Result<(), WorkerError> {
        self.streams
            .route(id, body)
            .map_err(|violation| WorkerError::Connection(violation.to_string()))
    }

    fn request(self: &Arc<Self>, id: u64, user: UserCtx, op: Op) {
        // A purge is for a user who is gone, not one served.
        if !matches!(op, Op::Files(warren_protocol::FileOp::Purge)) {
            self.saw_user(&user);
        }
        match op {
            Op::Ping => self.respond(id, Ok(ops::ping(self.identity, &user))),
            Op::Files(op) => {
                if let Some(result) = self
                    .workspaces
                    .as_deref()
                    .and_then(|workspaces| ops::read_now(workspaces, &user, &op))
                {
                    return self.respond_handing(id, result);
                }
                // An upload begun must be answered, so the master can
                // drop it if its caller left: not cancellable.
                let cancellable = !matches!(op, warren_protocol::FileOp::BeginUpload { .. });
                let workspaces = self.workspaces.clone();
                self.spawn_answer(id, cancellable, async move {
                    let workspaces = workspaces.ok_or_else(ops::no_workspaces)?;
                    ops::blocking(move || ops::files(&workspaces, &user, op)).await
                });
            }
            Op::Tasks(op) => self.task_op(id, user, op),
            Op::Terminals(op) => self.terminal_op(id, user, op),
            Op::Apps(op) => self.app_op(id, user, op),
            #[cfg(debug_assertions)]
            Op::DebugSleep { millis } => self.spawn_tracked(id, async move {
                tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
                Ok(Reply::Done)
            }),
            #[cfg(debug_assertions)]
            Op::DebugSendGarbage { oversized } => {
                tracing::warn!(oversized, "sending garbage to the master as a test asked");
                let _ = self.garbage.send(oversized);
            }
        }
    }

    fn task_op(self: &Arc<Self>, id: u64, user: UserCtx, op: TaskOp) {
        let Some(tasks) = self.tasks.clone() else {
            return self.respond(id, Err(ops::no_workspaces()));
        };
        match op {
            // Not cancellable: a start cut short after the fork would leave
            // a process nobody watches. Spawned here, on the runtime's own
            // thread, which forks (see `Tasks::start`).
            TaskOp::Start(start) => {
                let worker = self.clone();
                tokio::spawn(async move {
                    let result = tasks.start(user, start).await;
                    worker.respond(id, result);
                });
            }
            TaskOp::Cancel { task, grace_ms } => {
                let grace = std::time::Duration::from_millis(grace_ms);
                self.respond(id, tasks.cancel(&user, task, grace))
            }
            TaskOp::Delete { task } => {
                self.spawn_tracked(id, async move { tasks.delete(&user, task).await })
            }
        }
    }

    fn terminal_op(self: &Arc<Self>, id: u64, user: UserCtx, op: TerminalOp) {
        let Some(terminals) = self.terminals.clone() else {
            return self.respond(id, Err(ops::no_workspaces()));
        };
        match op {
            // Not cancellable, like a task's start (see `task_op`).
            TerminalOp::Open(open) => {
                let worker = self.clone();
                tokio::spawn(async move {
                    let result = terminals.open(user, open).await;
                    worker.respond(id, result);
                });
            }
            TerminalOp::List => self.respond(id, Ok(terminals.list(&user))),
            TerminalOp::Get { id: terminal } => self.respond(id, terminals.get(&user, terminal)),
            TerminalOp::Resize {
                id: terminal,
                cols,
                rows,
            } => self.respond(id, terminals.resize(&user, terminal, cols, rows)),
            TerminalOp::HangUp {
                id: terminal,
                grace_ms,
            } => {
                let grace = std::time::Duration::from_millis(grace_ms);
                self.respond(id, terminals.hang_up(&user, terminal, grace))
            }
        }
    }

    fn app_op(self: &Arc<Self>, id: u64, user: UserCtx, op: AppOp) {
        let Some(apps) = self.apps.clone() else {
            return self.respond(id, Err(ops::no_workspaces()));
        };
        let millis = std::time::Duration::from_millis;
        match op {
            AppOp::Ensure {
                spec,
                wait_ms,
                may_start,
                retry,
            } => self.spawn_tracked(id, async move {
                apps.ensure(user, *spec, millis(wait_ms), may_start, retry)
                    .await
            }),
            AppOp::Touch { name } => self.respond(id, apps.touch(&user, &name)),
            AppOp::Stop { name, grace_ms } => {
                self.respond(id, apps.stop(&user, &name, millis(grace_ms)))
            }
            AppOp::StopAll { grace_ms } => self.respond(id, apps.stop_all(&user, millis(grace_ms))),
            AppOp::List => self.respond(id, Ok(apps.list(&user))),
            AppOp::ListAll => self.respond(id, Ok(apps.list_all())),
        }
    }

    /// Runs a request that waits as its own task, cancellable by id.
    fn spawn_tracked(
        self: &Arc<Self>,
        id: u64,
        work: impl std::future::Future<Output = Result<Reply, OpError>> + Send + 'static,
    ) {
        self.spawn_answer(
            id,
            true,
            async move { work.await.map(|reply| (reply, None)) },
        );
    }

    /// Runs a request that waits as its own task (cancellable by id if
    /// `cancellable`), answering with the descriptor its reply hands over.
    fn spawn_answer(
        self: &Arc<Self>,
        id: u64,
        cancellable: bool,
        work: impl std::future::Future<Output = Result<(Reply, Option<Passable>), OpError>>
            + Send
            + 'static,
    ) {
        let worker = self.clone();
        // Holding the lock while spawning means the task cannot finish and
        // remove its entry before the entry exists.
        let mut inflight = self.lock_inflight();
        let task = tokio::spawn(async move {
            let result = work.await;
            worker.lock_inflight().remove(&id);
            worker.respond_handing(id, result);
        });
        if cancellable {
            inflight.insert(id, task.abort_handle());
        }
    }

    fn respond(&self, id: u64, result: Result<Reply, OpError>) {
        self.send(id, Body::Response(Response { result }));
    }

    /// Answers with the descriptor that goes with the reply, if any.
    fn respond_handing(&self, id: u64, result: Result<(Reply, Option<Passable>), OpError>) {
        match result {
            Ok((reply, Some(fd))) if reply.hands_over_descriptor() => {
                let frame = Frame {
                    id,
                    body: Body::Response(Response { result: Ok(reply) }),
                };
                // Fails only once the writer is gone (the worker exits).
                let _ = self.handing.send((frame, fd));
            }
            Ok((reply, None)) if !reply.hands_over_descriptor() => self.respond(id, Ok(reply)),
            Ok((reply, _)) => self.respond(
                id,
                Err(OpError::Internal(format!(
                    "a reply and its descriptor do not match: {reply:?}"
                ))),
            ),
            Err(err) => self.respond(id, Err(err)),
        }
    }

    fn send(&self, id: u64, body: Body) {
        // Fails only once the writer is gone, when the worker is exiting anyway.
        let _ = self.frames.send(Frame { id, body });
    }

    fn saw_user(&self, user: &UserCtx) {
        self.users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(user.id);
    }

    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, HashMap<u64, AbortHandle>> {
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn load(&self) -> Heartbeat {
        let users_seen = self
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        Heartbeat {
            inflight_requests: self.lock_inflight().len() as u32,
            open_streams: self.streams.len() as u32,
            users_seen: users_seen as u32,
            tasks_running: self.tasks.as_ref().map_or(0, |t| t.running_count()) as u32,
            terminals_open: self.terminals.as_ref().map_or(0, |t| t.count()) as u32,
            apps_running: self.apps.as_ref().map_or(0, |a| a.running_count()) as u32,
        }
    }

    fn shut_down(&self) {
        if let Some(tasks) = &self.tasks {
            tasks.kill_all();
        }
        if let Some(terminals) = &self.terminals {
            terminals.hang_up_all();
        }
        if let Some(apps) = &self.apps {
            apps.kill_all();
        }
        for (_, task) in self.lock_inflight().drain() {
            task.abort();
        }
        self.streams
            .fail_all(OpError::Internal("worker is shutting down".into()));
    }
}

async fn heartbeat_loop(worker: Arc<Worker>, every: std::time::Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        worker.send(0, Body::Heartbeat(worker.load()));
    }
}

/// Test builds only: writing bytes that are not a frame, to check that the
/// master closes such a connection and recovers the slot.
#[cfg(debug_assertions)]
mod debug {
    use super::*;
    use tokio::io::AsyncWriteExt;

    pub(super) async fn write_or_garbage<W: warren_protocol::io::FrameSink>(
        frames: mpsc::UnboundedReceiver<Frame>,
        handed: warren_protocol::io::HandOverReceiver<Passable>,
        mut out: W,
        mut garbage: mpsc::UnboundedReceiver<bool>,
        unsendable: impl Fn(u64, warren_protocol::FrameError),
    ) -> Result<(), warren_protocol::FrameError> {
        tokio::select! {
            result = write_frames(frames, Some(handed), &mut out, unsendable) => result,
            Some(oversized) = garbage.recv() => {
                let bytes: Vec<u8> = if oversized {
                    // A length prefix far over the frame bound.
                    let mut bytes = 0xFFFF_FFF0u32.to_be_bytes().to_vec();
                    bytes.extend_from_slice(&[0; 16]);
                    bytes
                } else {
                    // A well-framed body that is no valid message.
                    let mut bytes = 8u32.to_be_bytes().to_vec();
                    bytes.extend_from_slice(&[0xff; 8]);
                    bytes
                };
                out.write_all(&bytes).await?;
                out.flush().await?;
                // Keep the connection open: the master must be the one to close it.
                std::future::pending().await
            }
        }
    }
}
