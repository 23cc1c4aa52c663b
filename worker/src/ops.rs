//! What each operation does. Plain functions with no I/O of the connection,
//! so benchmarks can call them directly as the in-process baseline.

use crate::workspace::{self, Passable, Workspaces};
use futures_util::FutureExt;
use std::sync::Arc;
use warren_protocol::stream::Stream;
use warren_protocol::{
    FileOp, OpError, Precondition, ReadRange, Reply, StreamKind, UserCtx, UserId,
    INLINE_READ_LIMIT, MAX_DATA_CHUNK,
};

/// Identity of the worker serving a request.
#[derive(Debug, Clone, Copy)]
pub struct WorkerIdentity {
    pub slot: u32,
    pub pid: u32,
}

pub fn ping(worker: WorkerIdentity, user: &UserCtx) -> Reply {
    Reply::Pong {
        slot: worker.slot,
        pid: worker.pid,
        user: user.id,
    }
}

/// A file operation on a worker started without a users directory.
pub fn no_workspaces() -> OpError {
    OpError::Unsupported("this worker serves no files (started without --users-dir)".into())
}

/// Runs one file operation (blocking: call it on the blocking pool); an
/// answer that hands over a descriptor ([`Reply::hands_over_descriptor`])
/// comes with it.
pub fn files(
    workspaces: &Arc<Workspaces>,
    user: &UserCtx,
    op: FileOp,
) -> Result<(Reply, Option<Passable>), OpError> {
    let reply = match op {
        FileOp::ReserveUpload { upload, total } => {
            workspaces.reserve_upload(user.id, upload, total)
        }
        FileOp::CommitUpload { upload, len } => {
            let (reply, replaced) = workspaces.commit_upload(user.id, upload, len)?;
            // The file replaced is freed after the answer, off this request.
            if let Some(replaced) = replaced {
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => drop(runtime.spawn_blocking(move || drop(replaced))),
                    Err(_) => drop(replaced),
                }
            }
            Ok(reply)
        }
        FileOp::DropUpload { upload } => {
            workspaces.drop_upload(user.id, upload);
            Ok(Reply::Done)
        }
        FileOp::Usage => workspaces.usage_of(user.id).map(|usage| Reply::Usage {
            bytes: usage.bytes,
            files: usage.files,
            entries: usage.entries,
        }),
        FileOp::Purge => workspaces.purge(user.id).map(|()| Reply::Done),
        FileOp::Evict => {
            workspaces.evict(user.id);
            Ok(Reply::Done)
        }
        FileOp::CommitStaged { stages } => workspaces.commit_staged(user.id, &stages),
        FileOp::DropStaged { stages } => {
            workspaces.drop_staged(user.id, &stages);
            Ok(Reply::Done)
        }
        op => return in_workspace(workspaces, user, op),
    };
    reply.map(|reply| (reply, None))
}

/// The operations on the user's directories (opened for them first).
fn in_workspace(
    workspaces: &Arc<Workspaces>,
    user: &UserCtx,
    op: FileOp,
) -> Result<(Reply, Option<Passable>), OpError> {
    let dirs = workspaces.open_as(user.id, user.uid)?;
    let quota = workspace::Quota::of(user);
    let reply = match op {
        FileOp::Read { path, hand_over } => {
            return dirs.read_or_open(&path, INLINE_READ_LIMIT, hand_over)
        }
        FileOp::BeginUpload {
            path,
            precondition,
            parents,
            staged,
            expected,
        } => {
            let (reply, fd) = workspaces.begin_upload(
                dirs,
                &path,
                parents,
                quota,
                precondition,
                staged,
                expected,
            )?;
            return Ok((reply, Some(fd)));
        }
        FileOp::List { path, after, limit } => {
            dirs.list(&path, after.as_deref(), limit.clamp(1, 10_000))
        }
        FileOp::Mkdir { path, parents } => dirs.mkdir(workspaces, quota, &path, parents),
        FileOp::Delete { path, recursive } => dirs.delete(workspaces, &path, recursive),
        FileOp::Move { from, to } => dirs.rename(workspaces, &from, &to),
        FileOp::Copy { from, to } => dirs.copy(workspaces, quota, &from, &to),
        FileOp::CloneTemplate { name, to } => dirs.clone_template(workspaces, quota, &name, &to),
        FileOp::GetSettings => dirs.settings(),
        FileOp::PutSettings { json } => dirs.put_settings(workspaces, &json),
        FileOp::Usage
        | FileOp::Purge
        | FileOp::Evict
        | FileOp::CommitStaged { .. }
        | FileOp::DropStaged { .. }
        | FileOp::ReserveUpload { .. }
        | FileOp::CommitUpload { .. }
        | FileOp::DropUpload { .. } => Err(OpError::Internal("handled by files".into())),
    };
    reply.map(|reply| (reply, None))
}

/// A small read answered at once, on the connection's own thread, when it
/// can be done from memory: the user's directories already open, the path
/// in the dentry cache and the bytes in the page cache. That is a few system
/// calls, cheaper than the two thread hand-offs of the blocking pool, and it
/// never waits for the disk (which would stall every user of this worker).
/// `None`: run [`files`] on the pool.
pub fn read_now(
    workspaces: &Workspaces,
    user: &UserCtx,
    op: &FileOp,
) -> Option<Result<(Reply, Option<Passable>), OpError>> {
    let FileOp::Read { path, hand_over } = op else {
        return None;
    };
    let dirs = workspaces.opened(user.id)?;
    dirs.read_or_open_cached(path, INLINE_READ_LIMIT, *hand_over)
        .transpose()
}

/// Serves one stream the master opened, until both sides have closed.
pub async fn serve_stream(
    kind: StreamKind,
    user: UserCtx,
    stream: Stream,
    workspaces: Option<Arc<Workspaces>>,
) {
    let workspaces = match (&kind, workspaces) {
        (StreamKind::Echo, _) => return echo(stream).await,
        (_, Some(workspaces)) => workspaces,
        (_, None) => {
            let (mut sender, _receiver) = stream.split();
            sender.abort(no_workspaces());
            return;
        }
    };
    match kind {
        StreamKind::Echo => {}
        StreamKind::ReadFile { path } => read_file(workspaces, user.id, path, stream).await,
        StreamKind::WriteFile {
            path,
            precondition,
            parents,
            staged,
        } => {
            let write = Write {
                path,
                precondition,
                parents,
                staged,
            };
            write_file(workspaces, user, write, stream).await
        }
        StreamKind::TaskOutput { .. } => {
            let (mut sender, _receiver) = stream.split();
            sender.abort(OpError::Unsupported("task output".into()));
        }
        StreamKind::TerminalAttach { .. } => {
            let (mut sender, _receiver) = stream.split();
            sender.abort(OpError::Unsupported("terminals".into()));
        }
    }
}

/// Bytes of an upload gathered for one write.
const WRITE_BATCH: usize = 1024 * 1024;

/// Runs blocking `work` on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, OpError> + Send + 'static,
) -> Result<T, OpError> {
    joined(tokio::task::spawn_blocking(work).await)
}

/// The outcome of blocking work, once its task has ended.
fn joined<T>(outcome: Result<Result<T, OpError>, tokio::task::JoinError>) -> Result<T, OpError> {
    outcome.map_err(|err| OpError::Internal(format!("file operation failed: {err}")))?
}

async fn read_file(workspaces: Arc<Workspaces>, user: UserId, path: String, stream: Stream) {
    let (mut sender, mut receiver) = stream.split();
    let opened = blocking(move || workspaces.open(user)?.open_read(&path)).await;
    let (file, entry) = match opened {
        Ok(opened) => opened,
        Err(err) => return sender.abort(err),
    };
    let described = warren_protocol::codec::encode_message(&entry)
        .map_err(|err| OpError::Internal(err.to_string()));
    let sent = match described {
        Ok(bytes) => sender.send(&bytes).await,
        Err(err) => Err(err),
    };
    if let Err(err) = sent {
        return sender.abort(err);
    }
    // Not a file, or the master wants no bytes (HEAD, 304, a listing...).
    let Some(mut file) = file else {
        let _ = sender.finish();
        return;
    };
    let range = match receiver.recv().await {
        Some(Ok(bytes)) => match warren_protocol::codec::decode_message::<ReadRange>(&bytes) {
            Ok(range) => range,
            Err(err) => return sender.abort(OpError::StreamViolation(err.to_string())),
        },
        _ => {
            let _ = sender.finish();
            return;
        }
    };
    // The seek happens with the first read: one trip to the blocking pool.
    let mut seek_to = Some(range.offset);
    let mut remaining = range.len;
    while remaining > 0 {
        let want = remaining.min(MAX_DATA_CHUNK as u64) as usize;
        let offset = seek_to.take();
        let read = blocking(move || {
            if let Some(offset) = offset {
                workspace::seek(&mut file, offset)?;
            }
            let mut buf = vec![0u8; want];
            let n = workspace::read_chunk(&mut file, &mut buf)?;
            buf.truncate(n);
            Ok((file, buf))
        })
        .await;
        let chunk = match read {
            Ok((back, chunk)) => {
                file = back;
                chunk
            }
            Err(err) => return sender.abort(err),
        };
        if chunk.is_empty() {
            break;
        }
        remaining -= chunk.len() as u64;
        // Waits for credit: memory stays bounded by the window.
        if let Err(err) = sender.send(&chunk).await {
            return sender.abort(err);
        }
    }
    let _ = sender.finish();
    // Until the master closes its side.
    while receiver.recv().await.is_some() {}
}

/// What a [`StreamKind::WriteFile`] asks for.
struct Write {
    path: String,
    precondition: Precondition,
    parents: bool,
    staged: bool,
}

async fn write_file(workspaces: Arc<Workspaces>, user: UserCtx, write: Write, stream: Stream) {
    let Write {
        path,
        precondition,
        parents,
        staged,
    } = write;
    let (mut sender, mut receiver) = stream.split();
    let user_id = user.id;
    let begin = {
        let precondition = precondition.clone();
        let workspaces = workspaces.clone();
        blocking(move || {
            let dirs = workspaces.open_as(user.id, user.uid)?;
            let quota = workspace::Quota::of(&user);
            dirs.begin_write(workspaces, &path, parents, quota, &precondition)
        })
        .await
    };
    let pending = match begin {
        Ok(pending) => pending,
        Err(err) => return sender.abort(err),
    };
    let pending = match receive(&mut receiver, pending).await {
        Ok(pending) => pending,
        Err(Stop::Abandoned) => return,
        Err(Stop::Failed(err)) => return sender.abort(err),
    };
    if staged {
        let user = user_id;
        let outcome = blocking(move || {
            let entry = pending.describe()?;
            let stage = workspaces.stage(user, pending)?;
            warren_protocol::codec::encode_message(&warren_protocol::WriteOutcome {
                entry,
                created: false,
                stage: Some(stage),
            })
            .map_err(|err| OpError::Internal(err.to_string()))
        })
        .await;
        match outcome {
            Ok(bytes) => {
                if sender.send(&bytes).await.is_ok() {
                    let _ = sender.finish();
                }
            }
            Err(err) => sender.abort(err),
        }
        return;
    }
    let committed = blocking(move || pending.commit_keeping_replaced(&precondition)).await;
    let mut replaced = None;
    let outcome = committed.and_then(|(entry, created, old)| {
        replaced = old;
        warren_protocol::codec::encode_message(&warren_protocol::WriteOutcome {
            entry,
            created,
            stage: None,
        })
        .map_err(|err| OpError::Internal(err.to_string()))
    });
    match outcome {
        Ok(bytes) => {
            if sender.send(&bytes).await.is_ok() {
                let _ = sender.finish();
            }
        }
        Err(err) => sender.abort(err),
    }
    // Now that the client has its answer, free the file it replaced.
    if let Some(replaced) = replaced {
        tokio::task::spawn_blocking(move || drop(replaced));
    }
}

/// Why an upload stopped before its commit.
enum Stop {
    /// The master abandoned it (the client went away or timed out).
    Abandoned,
    /// Writing or flushing failed: the master must hear why.
    Failed(OpError),
}

/// Receives an upload into `pending`'s temp file until the master closes
/// its side, and flushes it (all of it reached the disk, or an error).
///
/// Double-buffered: while one batch is written on the blocking pool, the
/// next is taken from the stream (its credit going back to the master), so
/// the network and the disk work at the same time. On any stop, the temp
/// file is removed off this thread (a possibly large unlink).
async fn receive(
    receiver: &mut warren_protocol::stream::StreamReceiver,
    pending: workspace::PendingWrite,
) -> Result<workspace::PendingWrite, Stop> {
    let mut writer = Writer::Idle(pending);
    let mut flushing = Flushing::default();
    let outcome = async {
        loop {
            let (batch, ended) = next_batch(receiver, &mut writer).await?;
            let mut pending = writer.take_idle().await.map_err(Stop::Failed)?;
            if let Err(err) = flushing.kick(&pending) {
                writer = Writer::Idle(pending);
                return Err(Stop::Failed(err));
            }
            writer = if batch.is_empty() {
                Writer::Idle(pending)
            } else {
                Writer::Busy(tokio::task::spawn_blocking(move || {
                    pending.write_chunks(&batch)?;
                    Ok(pending)
                }))
            };
            if ended {
                break;
            }
        }
        let pending = writer.take_idle().await.map_err(Stop::Failed)?;
        // A writeback error is reported once per open file, to whichever
        // handle asks first: the background flush's must not be lost.
        if let Err(err) = flushing.finish().await {
            writer = Writer::Idle(pending);
            return Err(Stop::Failed(err));
        }
        Ok(pending)
    }
    .await;
    if outcome.is_err() {
        writer.discard();
    }
    outcome
}

/// The pending write of an upload: ready, busy writing a batch on the
/// blocking pool, or gone (taken, or dropped by a failed write).
enum Writer {
    Idle(workspace::PendingWrite),
    Busy(tokio::task::JoinHandle<Result<workspace::PendingWrite, OpError>>),
    Gone,
}

impl Writer {
    /// The pending write, once any batch in progress is written; leaves
    /// `Gone` behind.
    async fn take_idle(&mut self) -> Result<workspace::PendingWrite, OpError> {
        match std::mem::replace(self, Writer::Gone) {
            Writer::Idle(pending) => Ok(pending),
            Writer::Busy(task) => joined(task.await),
            Writer::Gone => Err(OpError::Internal("the upload's file is gone".into())),
        }
    }

    /// Drops the pending write (removing its temp file) off this thread,
    /// after any batch in progress.
    fn discard(self) {
        match self {
            Writer::Idle(pending) => {
                tokio::task::spawn_blocking(move || drop(pending));
            }
            Writer::Busy(task) => {
                tokio::spawn(async move {
                    if let Ok(pending) = joined(task.await) {
                        tokio::task::spawn_blocking(move || drop(pending));
                    }
                });
            }
            Writer::Gone => {}
        }
    }
}

/// Bytes of an upload written between two background flushes.
const FLUSH_STEP: u64 = 8 * 1024 * 1024;

/// Flushes an upload's temp file to disk in the background as it grows
/// (`fdatasync` on another handle, one at a time), so the disk writes while
/// the network still delivers and the fsync before the rename waits only
/// for the last few MiB instead of the whole file.
#[derive(Default)]
struct Flushing {
    flushed: u64,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Flushing {
    /// Starts a flush when one is due and none is running; fails if the
    /// last one did.
    fn kick(&mut self, pending: &workspace::PendingWrite) -> Result<(), OpError> {
        if self.task.as_ref().is_some_and(|task| !task.is_finished()) {
            return Ok(());
        }
        if let Some(done) = self.task.take().and_then(FutureExt::now_or_never) {
            flushed(done)?;
        }
        if pending.written < self.flushed + FLUSH_STEP {
            return Ok(());
        }
        if let Some(file) = pending.flusher() {
            self.flushed = pending.written;
            self.task = Some(tokio::task::spawn_blocking(move || file.sync_data()));
        }
        Ok(())
    }

    /// Waits for the flush in progress, if any; fails if it did.
    async fn finish(&mut self) -> Result<(), OpError> {
        match self.task.take() {
            Some(task) => flushed(task.await),
            None => Ok(()),
        }
    }
}

fn flushed(done: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), OpError> {
    joined(done.map(|flush| {
        flush.map_err(|err| crate::workspace::io_error(err, "cannot write the upload to disk"))
    }))
}

/// Chunks smaller than this are copied together: a client sending tiny
/// chunks must not cost an allocation and an iovec per byte or two.
const COALESCE: usize = 64 * 1024;

/// The next chunks of an upload, up to [`WRITE_BATCH`] bytes: at least one
/// chunk (unless the stream ends), and more while the previous batch is
/// still being written or more has already arrived. A write that fails
/// meanwhile is reported at once. `true` once the master closed its side.
async fn next_batch(
    receiver: &mut warren_protocol::stream::StreamReceiver,
    writer: &mut Writer,
) -> Result<(Vec<Vec<u8>>, bool), Stop> {
    enum Event {
        Chunk(Option<Result<Vec<u8>, OpError>>),
        Written(Result<Result<workspace::PendingWrite, OpError>, tokio::task::JoinError>),
    }
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut size = 0;
    while size < WRITE_BATCH {
        let event = match writer {
            Writer::Busy(task) => tokio::select! {
                next = receiver.recv() => Event::Chunk(next),
                written = task => Event::Written(written),
            },
            _ if batch.is_empty() => Event::Chunk(receiver.recv().await),
            _ => match receiver.recv().now_or_never() {
                Some(next) => Event::Chunk(next),
                None => break,
            },
        };
        match event {
            Event::Written(written) => match joined(written) {
                Ok(pending) => *writer = Writer::Idle(pending),
                Err(err) => {
                    *writer = Writer::Gone;
                    return Err(Stop::Failed(err));
                }
            },
            Event::Chunk(Some(Ok(bytes))) => {
                size += bytes.len();
                match batch.last_mut() {
                    Some(last) if bytes.len() < COALESCE && last.len() < COALESCE => {
                        last.extend_from_slice(&bytes)
                    }
                    _ => batch.push(bytes),
                }
            }
            Event::Chunk(Some(Err(_))) => return Err(Stop::Abandoned),
            Event::Chunk(None) => return Ok((batch, true)),
        }
    }
    Ok((batch, false))
}

async fn echo(stream: Stream) {
    let (mut sender, mut receiver) = stream.split();
    while let Some(chunk) = receiver.recv().await {
        let sent = match chunk {
            Ok(bytes) => sender.send(&bytes).await,
            Err(_) => return,
        };
        if let Err(err) = sent {
            sender.abort(err);
            return;
        }
    }
    let _ = sender.finish();
}
