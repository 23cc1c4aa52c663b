//! The worker pool: a fixed number of worker processes, each user pinned to
//! one by consistent hashing, each worker watched and restarted by its own
//! supervisor task.
//!
//! - [`ring`]: user -> slot.
//! - [`supervisor`]: spawn, handshake, watch, restart with back-off.
//! - `connection`: one worker connection, requests matched by id.
//!
//! The slot -> connection table is the only routing state; a request reads it
//! without taking a lock (`ArcSwapOption`).

mod connection;
pub mod ring;
pub mod supervisor;

use crate::metrics::PoolMetrics;
use arc_swap::ArcSwapOption;
use connection::{CallError, WorkerConnection};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use supervisor::{Backoff, SlotState, SlotStatus};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warren_protocol::stream::Stream;
use warren_protocol::{Op, OpError, Reply, StreamKind, UserCtx};

/// The program and leading arguments that start a worker; the pool appends
/// `--slot N --socket PATH --heartbeat-interval-ms MS`.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// The kernel's handle on the running executable: exec'ing it starts the
/// same image even after the file on disk was replaced or deleted.
const SELF_EXE: &str = "/proc/self/exe";

impl WorkerCommand {
    /// This very executable, re-run as `<exe> worker`.
    ///
    /// On Linux it is `/proc/self/exe`, not the path it was started from: an
    /// upgrade that replaces the binary while warren runs must not make the
    /// next worker restart run a different build (whose protocol version the
    /// master would refuse, leaving the slot in a crash loop).
    pub fn current_exe() -> std::io::Result<Self> {
        let own_image = PathBuf::from(SELF_EXE);
        let program = if own_image.exists() {
            own_image
        } else {
            std::env::current_exe()?
        };
        Ok(WorkerCommand {
            program,
            args: vec!["worker".into()],
        })
    }

    /// `argv[0]` for the worker: the master's own, so `ps` shows `warren
    /// worker ...` rather than `/proc/self/exe worker ...`.
    pub(crate) fn arg0(&self) -> std::ffi::OsString {
        if self.program == std::path::Path::new(SELF_EXE) {
            if let Some(name) = std::env::args_os().next() {
                return name;
            }
        }
        self.program.clone().into_os_string()
    }
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub workers: u32,
    /// Private directory (mode 0700) holding the workers' sockets.
    pub run_dir: PathBuf,
    pub worker_command: WorkerCommand,
    /// A worker that sends no heartbeat for this long is killed and replaced.
    pub heartbeat_timeout: Duration,
    /// How long a request for a slot that is down waits for its replacement.
    pub unavailable_wait: Duration,
    /// How long a new worker has to connect and complete the handshake.
    pub start_timeout: Duration,
    /// How long a stopping worker has to exit before it is killed.
    pub stop_timeout: Duration,
    pub backoff: Backoff,
    /// Whose cgroups to empty when a slot's worker ends (its users'
    /// processes outlive it otherwise: only the stage's direct child has
    /// a death signal tied to the worker).
    pub sandbox: Option<std::sync::Arc<warren_worker::sandbox::Sandbox>>,
}

impl PoolConfig {
    pub fn new(workers: u32, run_dir: PathBuf, worker_command: WorkerCommand) -> Self {
        PoolConfig {
            workers,
            run_dir,
            worker_command,
            heartbeat_timeout: Duration::from_secs(5),
            unavailable_wait: Duration::from_secs(2),
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            backoff: Backoff::default(),
            sandbox: None,
        }
    }

    /// Workers beat five times per timeout, so one late beat is no alarm.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.heartbeat_timeout / 5).max(Duration::from_millis(10))
    }
}

/// An open file a worker handed over with its answer (see
/// `warren_protocol::io`): a file to read (a download) or an upload's temp
/// file to write. Closed when dropped.
pub struct HandedFile {
    pub file: std::fs::File,
    pub worker: HandingWorker,
}

/// The worker that handed a file over: later calls about that file (an
/// upload's reservations and commit) must reach this very worker, even
/// while it drains for a restart (which waits for them).
pub struct HandingWorker {
    connection: Arc<WorkerConnection>,
    /// An upload counts as a transfer of its worker until it ends.
    _counted: Option<connection::UploadCount>,
}

impl HandingWorker {
    /// Cancelled when the worker is gone: an upload then stops (its temp
    /// file is swept by the next worker).
    pub fn gone(&self) -> CancellationToken {
        self.connection.gone()
    }

    /// Runs `op` on this worker; `WorkerUnavailable` once it is gone.
    pub async fn call(&self, user: &UserCtx, op: Op) -> Result<Reply, PoolError> {
        let slot = self.connection.slot;
        match self.connection.call(user.clone(), op).await {
            Ok((reply, _, _)) => Ok(reply),
            Err(CallError::Op(err)) => Err(PoolError::Op(err)),
            Err(CallError::Lost | CallError::NotSent(_)) => {
                Err(PoolError::WorkerUnavailable { slot })
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The user's worker is down (crashed, restarting or hung) or died while
    /// working on the request. The request may or may not have taken effect.
    #[error("worker for slot {slot} is unavailable")]
    WorkerUnavailable { slot: u32 },
    #[error(transparent)]
    Op(#[from] OpError),
    #[error("the pool is shutting down")]
    ShuttingDown,
    #[error("cannot start the pool: {0}")]
    Start(String),
}

/// Why an operator's restart of a slot did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error("there is no slot {0}")]
    NoSuchSlot(u32),
    #[error("slot {0} has no worker up to restart (it is starting or restarting)")]
    NotUp(u32),
    #[error("slot {0} is already being restarted")]
    AlreadyDraining(u32),
    #[error("slot {0}'s new worker did not come up in time")]
    DidNotComeBack(u32),
    #[error("the pool is shutting down")]
    ShuttingDown,
}

/// The longest part of a drain's grace that new requests are held for;
/// after it (plus a worker's stop and start) they fail as for a worker
/// that is down, so a long grace for a large transfer cannot stall a
/// slot's other users.
const MAX_REQUEST_HOLD: Duration = Duration::from_secs(30);

/// Ends a slot's drain when dropped: the slot is routed again (to the new
/// worker, or to the old one if the drain was called off).
struct DrainGuard<'a>(&'a Slot);

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.0.drain_until_ms.store(0, Ordering::Release);
        self.0.draining_pid.store(0, Ordering::Release);
        self.0.changed.notify_waiters();
    }
}

/// One slot: the current worker connection, if any, and its status.
pub(crate) struct Slot {
    index: u32,
    current: ArcSwapOption<WorkerConnection>,
    /// Woken whenever `current` changes.
    changed: Notify,
    status: Mutex<SlotStatus>,
    /// The pid of a worker being drained for an operator's restart (0:
    /// none): new requests do not go to it, they wait for its successor.
    draining_pid: std::sync::atomic::AtomicU32,
    /// Until when (milliseconds after the pool's start) requests wait for
    /// the drained worker's successor.
    drain_until_ms: std::sync::atomic::AtomicU64,
    /// Tells the supervisor to replace its worker (the drain is over); it
    /// acts only while its worker's pid is `draining_pid`.
    pub(crate) replace: Notify,
}

impl Slot {
    fn set_status(&self, update: impl FnOnce(&mut SlotStatus)) {
        update(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// A slot's state as `/readyz` and `/metrics` report it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotReport {
    pub slot: u32,
    pub state: SlotState,
    /// An operator's restart is draining it.
    pub draining: bool,
    /// How long its current worker has served.
    pub uptime_ms: Option<u64>,
    /// Byte streams (transfers, terminals, followed output) the master has
    /// open to the worker.
    pub master_streams: usize,
    pub restarts: u64,
    /// Requests the master has sent to this slot and not had answered.
    pub inflight_requests: usize,
    /// Requests the worker reports still working on (last heartbeat).
    pub worker_tasks: u32,
    pub open_streams: u32,
    pub users_seen: u32,
    /// Users' tasks the worker runs (last heartbeat).
    pub tasks_running: u32,
    /// Users' terminals the worker has open (last heartbeat).
    pub terminals_open: u32,
    #[serde(skip)]
    pub pid: Option<u32>,
}

/// What the pool tells the rest of the master about its workers, in order,
/// through [`Pool::take_events`].
#[derive(Debug, Clone)]
pub enum PoolEvent {
    /// An event a worker sent (a task ended).
    Worker {
        slot: u32,
        worker_pid: u32,
        event: warren_protocol::Event,
    },
    /// A worker process is gone (it exited, crashed, hung, or the pool
    /// stopped it), and with it its users' live state: their tasks are
    /// lost. Sent after the process was reaped and after every event it
    /// sent.
    WorkerDown {
        slot: u32,
        worker_pid: u32,
        reason: String,
    },
    /// A worker came up and serves its slot.
    WorkerUp { slot: u32, worker_pid: u32 },
}

pub(crate) type EventSender = tokio::sync::mpsc::UnboundedSender<PoolEvent>;

pub struct Pool {
    /// Taken once by whoever records the pool's events; until then (or
    /// without a taker) they queue (a few per task).
    events: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<PoolEvent>>>,
    slots: Arc<[Arc<Slot>]>,
    config: PoolConfig,
    metrics: PoolMetrics,
    stopping: CancellationToken,
    supervisors: Mutex<Vec<JoinHandle<()>>>,
    /// The clock of the slots' drain deadlines.
    started: Instant,
}

impl Pool {
    /// Creates the run directory and one supervisor per slot, which start the
    /// workers. Returns without waiting for them: `wait_ready` does that.
    ///
    /// Must be called from the long-lived runtime: workers are forked from
    /// its threads, and `PR_SET_PDEATHSIG` fires when the forking thread ends.
    pub fn start(config: PoolConfig, metrics: PoolMetrics) -> Result<Arc<Pool>, PoolError> {
        if config.workers == 0 {
            return Err(PoolError::Start("a pool needs at least one worker".into()));
        }
        supervisor::prepare_run_dir(&config.run_dir)
            .map_err(|err| PoolError::Start(format!("{}: {err}", config.run_dir.display())))?;
        let slots: Arc<[Arc<Slot>]> = (0..config.workers)
            .map(|index| {
                Arc::new(Slot {
                    index,
                    current: ArcSwapOption::empty(),
                    changed: Notify::new(),
                    status: Mutex::new(SlotStatus::default()),
                    draining_pid: std::sync::atomic::AtomicU32::new(0),
                    drain_until_ms: std::sync::atomic::AtomicU64::new(0),
                    replace: Notify::new(),
                })
            })
            .collect();
        let (event_sender, events) = tokio::sync::mpsc::unbounded_channel();
        let pool = Arc::new(Pool {
            events: Mutex::new(Some(events)),
            slots,
            config,
            metrics,
            stopping: CancellationToken::new(),
            supervisors: Mutex::new(Vec::new()),
            started: Instant::now(),
        });
        let mut supervisors = Vec::new();
        for slot in pool.slots.iter() {
            let listener = supervisor::bind(&pool.config.run_dir, slot.index)
                .map_err(|err| PoolError::Start(format!("slot {}: {err}", slot.index)))?;
            supervisors.push(tokio::spawn(supervisor::supervise(
                slot.clone(),
                listener,
                pool.config.clone(),
                pool.metrics.clone(),
                pool.stopping.clone(),
                event_sender.clone(),
            )));
        }
        *pool
            .supervisors
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = supervisors;
        Ok(pool)
    }

    pub fn size(&self) -> u32 {
        self.config.workers
    }

    /// The pool's events, in order; `None` after the first call.
    pub fn take_events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<PoolEvent>> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The pid of each slot's live worker (`None` while it is down).
    pub fn worker_pids(&self) -> Vec<Option<u32>> {
        self.slots
            .iter()
            .map(|slot| slot.current.load().as_ref().map(|c| c.pid))
            .collect()
    }

    pub fn slot_for(&self, user: &UserCtx) -> u32 {
        ring::slot_for(&user.id, self.config.workers)
    }

    /// Runs `op` for `user` on the user's worker.
    pub async fn call(&self, user: &UserCtx, op: Op) -> Result<Reply, PoolError> {
        self.call_slot(self.slot_for(user), user, op).await
    }

    /// Runs `op` on the worker of `slot` (what concerns every worker, such
    /// as an administrator's view of every user's apps).
    pub async fn call_slot(&self, slot: u32, user: &UserCtx, op: Op) -> Result<Reply, PoolError> {
        // A descriptor handed over unasked for is closed here.
        self.call_on(slot, user, op)
            .await
            .map(|(reply, _fd, _counted, _connection)| reply)
    }

    /// Runs `op`, whose answer may hand over an open file (a read's
    /// [`Reply::Opened`], an upload's [`Reply::UploadOpened`]): the file
    /// comes with a watch on the worker that opened it.
    pub async fn call_handing(
        &self,
        user: &UserCtx,
        op: Op,
    ) -> Result<(Reply, Option<HandedFile>), PoolError> {
        let (reply, fd, counted, connection) = self.call_on(self.slot_for(user), user, op).await?;
        let handed = fd.map(|fd| HandedFile {
            file: std::fs::File::from(fd),
            worker: HandingWorker {
                _counted: counted,
                connection,
            },
        });
        Ok((reply, handed))
    }

    async fn call_on(
        &self,
        slot: u32,
        user: &UserCtx,
        op: Op,
    ) -> Result<
        (
            Reply,
            Option<std::os::fd::OwnedFd>,
            Option<connection::UploadCount>,
            Arc<WorkerConnection>,
        ),
        PoolError,
    > {
        let started = Instant::now();
        let deadline = started + self.config.unavailable_wait;
        let _inflight = self.metrics.inflight_guard();
        let mut stale = None;
        let mut op = op;
        let outcome = loop {
            let connection = self.connection(slot, deadline, stale.as_ref()).await?;
            match connection.call(user.clone(), op).await {
                Ok((reply, fd, counted)) => break Ok((reply, fd, counted, connection)),
                Err(CallError::Op(err)) => break Err(PoolError::Op(err)),
                Err(CallError::Lost) => break Err(PoolError::WorkerUnavailable { slot }),
                // That worker is already gone; wait for its replacement.
                Err(CallError::NotSent(unsent)) => {
                    op = unsent;
                    stale = Some(connection);
                }
            }
        };
        self.metrics.observe_call(started.elapsed());
        outcome
    }

    /// Opens a byte stream of `kind` to the user's worker.
    pub async fn open_stream(&self, user: &UserCtx, kind: StreamKind) -> Result<Stream, PoolError> {
        let slot = self.slot_for(user);
        let deadline = Instant::now() + self.config.unavailable_wait;
        let connection = self.connection(slot, deadline, None).await?;
        connection.open_stream(user.clone(), kind)
    }

    /// The slot's live connection, waiting until `deadline` while the slot is
    /// down (or still on `stale`, a connection known to be dead).
    async fn connection(
        &self,
        slot: u32,
        deadline: Instant,
        stale: Option<&Arc<WorkerConnection>>,
    ) -> Result<Arc<WorkerConnection>, PoolError> {
        let slot_state = &self.slots[slot as usize];
        let usable = |candidate: Option<Arc<WorkerConnection>>| {
            candidate.filter(|c| {
                stale.is_none_or(|s| !Arc::ptr_eq(s, c))
                    && !c.is_closed()
                    && slot_state
                        .draining_pid
                        .load(std::sync::atomic::Ordering::Acquire)
                        != c.pid
            })
        };
        // The fast path, taken by every request while its worker is up: one
        // atomic load, no lock.
        if let Some(connection) = usable(slot_state.current.load_full()) {
            return Ok(connection);
        }
        loop {
            if self.stopping.is_cancelled() {
                return Err(PoolError::ShuttingDown);
            }
            let changed = slot_state.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(connection) = usable(slot_state.current.load_full()) {
                return Ok(connection);
            }
            // While an operator's restart drains the slot, a request waits
            // for the new worker as long as the drain may last.
            let drain_until = slot_state
                .drain_until_ms
                .load(std::sync::atomic::Ordering::Acquire);
            let deadline = match drain_until {
                0 => deadline,
                ms => deadline
                    .max(self.started + Duration::from_millis(ms) + self.config.unavailable_wait),
            };
            let wait = tokio::time::timeout_at(deadline.into(), changed);
            if wait.await.is_err() {
                return Err(PoolError::WorkerUnavailable { slot });
            }
        }
    }

    /// Each slot's state, for readiness and metrics.
    pub fn report(&self) -> Vec<SlotReport> {
        self.slots
            .iter()
            .map(|slot| {
                let status = slot
                    .status
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let current = slot.current.load_full();
                let load = current.as_ref().map(|c| c.load()).unwrap_or_default();
                SlotReport {
                    slot: slot.index,
                    state: status.state,
                    draining: slot.draining_pid.load(std::sync::atomic::Ordering::Acquire) != 0,
                    uptime_ms: current.as_ref().map(|c| c.uptime().as_millis() as u64),
                    master_streams: current.as_ref().map_or(0, |c| c.open_streams()),
                    restarts: status.restarts,
                    inflight_requests: current.as_ref().map_or(0, |c| c.inflight()),
                    worker_tasks: load.inflight_requests,
                    open_streams: load.open_streams,
                    users_seen: load.users_seen,
                    tasks_running: load.tasks_running,
                    terminals_open: load.terminals_open,
                    pid: current.as_ref().map(|c| c.pid),
                }
            })
            .collect()
    }

    /// An operator's graceful restart of `slot`'s worker: new requests for
    /// the slot wait (they are not refused); requests and transfers in
    /// flight get up to `grace` to finish; then the worker is replaced
    /// (asked to stop, SIGKILL after the stop timeout; what its users
    /// still run, terminals and followed output included, ends with it, as
    /// at any worker's end) and the call returns once its successor
    /// serves. Run it as a task of its own (the HTTP handler does): if the
    /// future is dropped half-way, the drain is called off (the slot is
    /// routed to its worker again) rather than left hanging.
    pub async fn restart_slot(&self, slot: u32, grace: Duration) -> Result<(), RestartError> {
        use std::sync::atomic::Ordering;
        let state = self
            .slots
            .get(slot as usize)
            .ok_or(RestartError::NoSuchSlot(slot))?;
        if self.stopping.is_cancelled() {
            return Err(RestartError::ShuttingDown);
        }
        let old = state.current.load_full().ok_or(RestartError::NotUp(slot))?;
        if state
            .draining_pid
            .compare_exchange(0, old.pid, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(RestartError::AlreadyDraining(slot));
        }
        // From here on, however this ends, the slot is routed again.
        let _draining = DrainGuard(state);
        // New requests are held at most this long (then 503 as for any
        // worker that is down), however long the grace.
        let hold =
            grace.min(MAX_REQUEST_HOLD) + self.config.stop_timeout + self.config.start_timeout;
        let until = (self.started.elapsed() + hold).as_millis().max(1) as u64;
        state.drain_until_ms.store(until, Ordering::Release);
        info!(
            slot,
            pid = old.pid,
            grace_ms = grace.as_millis() as u64,
            "draining the worker for a restart"
        );
        let drained = Instant::now() + grace;
        // A request that took the connection just before the drain began
        // registers within moments: give it those before looking.
        tokio::time::sleep(Duration::from_millis(20)).await;
        while (old.inflight() > 0 || old.open_transfers() > 0) && !old.is_closed() {
            if Instant::now() >= drained {
                warn!(
                    slot,
                    requests = old.inflight(),
                    transfers = old.open_transfers(),
                    "the drain's grace is over: replacing the worker with these still open"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A worker that died meanwhile is being replaced by its supervisor
        // already; the supervisor acts on `replace` only for the drained pid.
        if !old.is_closed() {
            state.replace.notify_one();
        }
        let came_back = async {
            loop {
                let changed = state.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if let Some(new) = state.current.load_full() {
                    if !Arc::ptr_eq(&new, &old) {
                        return;
                    }
                }
                changed.await;
            }
        };
        tokio::select! {
            outcome = tokio::time::timeout(self.config.stop_timeout + self.config.start_timeout, came_back) => {
                outcome.map_err(|_| RestartError::DidNotComeBack(slot))
            }
            () = self.stopping.cancelled() => Err(RestartError::ShuttingDown),
        }
    }

    pub fn all_up(&self) -> bool {
        self.report().iter().all(|slot| slot.state == SlotState::Up)
    }

    /// Waits until every slot is up, or `timeout` passes. Returns whether all came up.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.all_up() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops every worker (closing its connection, then SIGKILL after the
    /// stop timeout) and waits for the supervisors to finish.
    pub async fn shutdown(&self) {
        self.stopping.cancel();
        for slot in self.slots.iter() {
            slot.changed.notify_waiters();
        }
        let supervisors = std::mem::take(
            &mut *self
                .supervisors
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for supervisor in supervisors {
            let _ = supervisor.await;
        }
    }
}
