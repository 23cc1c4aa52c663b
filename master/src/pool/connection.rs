//! The master's end of one worker connection: requests matched to responses
//! by id, streams, and the reader that feeds them.

use super::PoolError;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;
use tokio::io::AsyncRead;
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};
use warren_protocol::io::ReceivedDescriptors;
use warren_protocol::stream::{FrameSender, Stream, StreamRegistry};
use warren_protocol::{
    Body, Frame, FrameCodec, Heartbeat, Op, OpError, Open, Reply, Request, StreamKind, UserCtx,
};

/// A worker's answer, with the descriptor its frame carried (if the reply
/// says it hands one over; see `warren_protocol::io`); an upload's answer
/// comes counted as a transfer already (see `handed_uploads`), so a drain
/// never sees it uncounted.
type Answer = (Result<Reply, OpError>, Option<OwnedFd>, Option<UploadCount>);

/// Why a call did not get an answer from this connection.
pub(crate) enum CallError {
    /// The connection was already closed: the request never left, so it is
    /// safe to send it (given back here) to the replacement worker.
    NotSent(Op),
    /// The request was sent and the worker died before answering.
    Lost,
    Op(OpError),
}

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    closed: bool,
}

pub(crate) struct WorkerConnection {
    pub slot: u32,
    pub pid: u32,
    frames: FrameSender,
    /// Descriptors received, until their frames are dispatched.
    received: ReceivedDescriptors,
    /// Cancelled when the connection ends: whoever holds a descriptor this
    /// worker handed over (an upload's temp file) stops using it.
    gone: CancellationToken,
    /// Uploads into handed-over temp files not yet committed or dropped:
    /// transfers a drain waits for, like streams.
    handed_uploads: Arc<AtomicUsize>,
    pending: Mutex<Pending>,
    streams: Arc<StreamRegistry>,
    /// Ids of the streams that end by themselves (file transfers, a task's
    /// output up to now), which a drain waits for; a terminal or followed
    /// output lasts as long as its user likes and is not waited for.
    transfers: Mutex<Vec<u64>>,
    next_id: AtomicU64,
    started: Instant,
    /// Milliseconds after `started` of the last heartbeat.
    last_heartbeat_ms: AtomicU64,
    load: Mutex<Heartbeat>,
    events: super::EventSender,
}

impl WorkerConnection {
    pub fn new(
        slot: u32,
        pid: u32,
        frames: FrameSender,
        received: ReceivedDescriptors,
        events: super::EventSender,
    ) -> Self {
        WorkerConnection {
            slot,
            pid,
            frames,
            received,
            gone: CancellationToken::new(),
            handed_uploads: Arc::new(AtomicUsize::new(0)),
            pending: Mutex::new(Pending::default()),
            streams: StreamRegistry::new(),
            transfers: Mutex::new(Vec::new()),
            // Id 0 is for connection-level frames (hello, heartbeat).
            next_id: AtomicU64::new(1),
            started: Instant::now(),
            last_heartbeat_ms: AtomicU64::new(0),
            load: Mutex::new(Heartbeat::default()),
            events,
        }
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_closed(&self) -> bool {
        self.lock_pending().closed
    }

    /// Cancelled once this connection has ended.
    pub fn gone(&self) -> CancellationToken {
        self.gone.clone()
    }

    /// Counts an upload in progress as a transfer until the guard drops.
    fn count_upload(&self) -> UploadCount {
        self.handed_uploads.fetch_add(1, Ordering::Relaxed);
        UploadCount(self.handed_uploads.clone())
    }

    pub async fn call(
        &self,
        user: UserCtx,
        op: Op,
    ) -> Result<(Reply, Option<OwnedFd>, Option<UploadCount>), CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        {
            let mut pending = self.lock_pending();
            if pending.closed {
                return Err(CallError::NotSent(op));
            }
            pending.waiting.insert(id, answer);
        }
        let mut guard = CancelOnDrop {
            connection: self,
            id,
            armed: true,
        };
        let request = Frame {
            id,
            body: Body::Request(Request { user, op }),
        };
        if let Err(unsent) = self.frames.send(request) {
            guard.armed = false;
            self.lock_pending().waiting.remove(&id);
            return match unsent.0.body {
                Body::Request(request) => Err(CallError::NotSent(request.op)),
                _ => Err(CallError::Lost),
            };
        }
        let outcome = answered.await;
        guard.armed = false;
        match outcome {
            Ok((Ok(reply), fd, counted)) => Ok((reply, fd, counted)),
            Ok((Err(err), _, _)) => Err(CallError::Op(err)),
            Err(_) => Err(CallError::Lost),
        }
    }

    pub fn open_stream(&self, user: UserCtx, kind: StreamKind) -> Result<Stream, PoolError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ends_by_itself = match &kind {
            StreamKind::TaskOutput { follow, .. } => !follow,
            StreamKind::TerminalAttach { .. } => false,
            _ => true,
        };
        let unavailable = |_| PoolError::WorkerUnavailable { slot: self.slot };
        let stream = self
            .streams
            .register(id, self.frames.clone())
            .map_err(unavailable)?;
        self.frames
            .send(Frame {
                id,
                body: Body::Open(Open { user, kind }),
            })
            .map_err(|_| PoolError::WorkerUnavailable { slot: self.slot })?;
        if ends_by_itself {
            let mut transfers = self
                .transfers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            transfers.retain(|id| self.streams.contains(*id));
            transfers.push(id);
        }
        Ok(stream)
    }

    /// Fails every request and stream in flight on this connection at once
    /// (the worker is gone) and refuses new ones.
    pub fn fail_all(&self) {
        let waiting = {
            let mut pending = self.lock_pending();
            pending.closed = true;
            std::mem::take(&mut pending.waiting)
        };
        // Dropping the senders wakes every caller with `Lost`.
        drop(waiting);
        self.received.clear();
        self.gone.cancel();
        self.streams.fail_all(OpError::WorkerGone(format!(
            "worker {} went away; try again",
            self.slot
        )));
    }

    /// Fails the request `id`, whose frame could not be sent (it is larger
    /// than a frame may be).
    pub fn fail_unsendable(&self, id: u64, why: &warren_protocol::FrameError) {
        let waiter = self.lock_pending().waiting.remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.send((
                Err(OpError::Invalid(format!(
                    "the request is too large for the worker protocol: {why}"
                ))),
                None,
                None,
            ));
        }
    }

    pub fn inflight(&self) -> usize {
        self.lock_pending().waiting.len()
    }

    /// Byte streams open on this connection.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Streams open on this connection that end by themselves (see
    /// `transfers`).
    pub fn open_transfers(&self) -> usize {
        let mut transfers = self
            .transfers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        transfers.retain(|id| self.streams.contains(*id));
        transfers.len() + self.handed_uploads.load(Ordering::Relaxed)
    }

    /// How long this worker has been connected.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Time since the last heartbeat (or since the connection started).
    pub fn heartbeat_age(&self) -> std::time::Duration {
        let last = self.last_heartbeat_ms.load(Ordering::Relaxed);
        self.started
            .elapsed()
            .saturating_sub(std::time::Duration::from_millis(last))
    }

    pub fn load(&self) -> Heartbeat {
        *self.load.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads frames from the worker until EOF or a protocol error; then
    /// fails everything in flight. Returns why the connection ended.
    pub async fn read_frames<R: AsyncRead + Unpin>(
        &self,
        mut reader: FramedRead<R, FrameCodec>,
    ) -> String {
        let reason = loop {
            let frame = match reader.next().await {
                None => break "worker closed the connection".to_string(),
                Some(Err(err)) if err.is_lost_connection() => {
                    // A worker that dies (a crash, SIGKILL, the OOM killer)
                    // mid-write: the supervisor reports how it ended.
                    warn!(slot = self.slot, pid = self.pid, error = %err, "lost the connection to a worker");
                    break format!("connection lost: {err}");
                }
                Some(Err(err)) => {
                    error!(slot = self.slot, pid = self.pid, error = %err, "closing the connection to a worker that sent a bad frame");
                    break format!("bad frame: {err}");
                }
                Some(Ok(frame)) => frame,
            };
            if let Err(why) = self.dispatch(frame) {
                error!(slot = self.slot, pid = self.pid, error = %why, "closing the connection to a worker that broke the protocol");
                break why;
            }
        };
        self.fail_all();
        reason
    }

    fn dispatch(&self, frame: Frame) -> Result<(), String> {
        match frame.body {
            Body::Response(response) => {
                let mut result = response.result;
                let mut fd = None;
                if result
                    .as_ref()
                    .is_ok_and(|reply| reply.hands_over_descriptor())
                {
                    match self.received.take().map_err(String::from)? {
                        Some(received) => fd = Some(received),
                        None => {
                            self.drop_orphan(&result);
                            result = Err(OpError::Busy(
                                "the server is out of file descriptors; try again shortly".into(),
                            ))
                        }
                    }
                }
                // Counted before the waiter goes, so that a drain, which
                // waits while requests or transfers are open, never sees
                // an upload between the two.
                let counted =
                    matches!(result, Ok(Reply::UploadOpened { .. })).then(|| self.count_upload());
                let waiter = self.lock_pending().waiting.remove(&frame.id);
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send((result, fd, counted));
                    }
                    // The caller gave up and a Cancel is on its way: a
                    // descriptor that came is closed here, an upload begun
                    // for nobody is dropped.
                    None => self.drop_orphan(&result),
                }
                Ok(())
            }
            Body::Heartbeat(load) => {
                let now = self.started.elapsed().as_millis() as u64;
                self.last_heartbeat_ms.store(now, Ordering::Relaxed);
                *self.load.lock().unwrap_or_else(PoisonError::into_inner) = load;
                Ok(())
            }
            Body::Event(event) => {
                let _ = self.events.send(super::PoolEvent::Worker {
                    slot: self.slot,
                    worker_pid: self.pid,
                    event,
                });
                Ok(())
            }
            body @ (Body::Data(_) | Body::Close(_) | Body::Credit(_) | Body::Cancel) => self
                .streams
                .route(frame.id, body)
                .map_err(|violation| violation.to_string()),
            other => Err(format!("unexpected frame from a worker: {other:?}")),
        }
    }

    /// Drops, at the worker, an upload begun for nobody (its caller left,
    /// or its descriptor was lost): its temp file and reservation go now,
    /// not when the worker sweeps them. Nobody waits for the answer.
    fn drop_orphan(&self, result: &Result<Reply, OpError>) {
        let Ok(Reply::UploadOpened { upload, user, .. }) = result else {
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.frames.send(Frame {
            id,
            body: Body::Request(Request {
                user: UserCtx::only_id(*user),
                op: Op::Files(warren_protocol::FileOp::DropUpload { upload: *upload }),
            }),
        });
    }
}

/// One upload counted as a transfer of its connection (see
/// [`WorkerConnection::count_upload`]).
#[derive(Debug)]
pub struct UploadCount(Arc<AtomicUsize>);

impl Drop for UploadCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends `Cancel` for a request whose caller stopped waiting (its future was
/// dropped), so the worker can stop working on it.
struct CancelOnDrop<'a> {
    connection: &'a WorkerConnection,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let was_waiting = self.connection.lock_pending().waiting.remove(&self.id);
        if was_waiting.is_some() {
            let _ = self.connection.frames.send(Frame {
                id: self.id,
                body: Body::Cancel,
            });
        }
    }
}
