//! What each operation does. Plain functions with no I/O of the connection,
//! so benchmarks can call them directly as the in-process baseline.

use crate::workspace::{self, Workspaces};
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

/// Runs one file operation (blocking: call it on the blocking pool).
pub fn files(workspaces: &Workspaces, user: &UserCtx, op: FileOp) -> Result<Reply, OpError> {
    if let FileOp::Usage = op {
        let usage = workspaces.usage_of(user.id)?;
        return Ok(Reply::Usage {
            bytes: usage.bytes,
            files: usage.files,
        });
    }
    let dirs = workspaces.open(user.id)?;
    let quota = user.quota_bytes;
    match op {
        FileOp::Read { path } => dirs.read_small(&path, INLINE_READ_LIMIT),
        FileOp::List { path, after, limit } => {
            dirs.list(&path, after.as_deref(), limit.clamp(1, 10_000))
        }
        FileOp::Mkdir { path, parents } => dirs.mkdir(&path, parents),
        FileOp::Delete { path, recursive } => dirs.delete(workspaces, &path, recursive),
        FileOp::Move { from, to } => dirs.rename(workspaces, &from, &to),
        FileOp::Copy { from, to } => dirs.copy(workspaces, quota, &from, &to),
        FileOp::CloneTemplate { name, to } => dirs.clone_template(workspaces, quota, &name, &to),
        FileOp::GetSettings => dirs.settings(),
        FileOp::PutSettings { json } => dirs.put_settings(&json),
        FileOp::Usage => Err(OpError::Internal("handled above".into())),
    }
}

/// A small read answered at once, on the connection's own thread, when the
/// user's directories are already open: opening a file and reading at most
/// [`INLINE_READ_LIMIT`] bytes of it is a few system calls, cheaper than the
/// two thread hand-offs of the blocking pool (which is how nginx serves files
/// too, unless told to use threads). `None`: run [`files`] on the pool.
pub fn read_now(
    workspaces: &Workspaces,
    user: &UserCtx,
    op: &FileOp,
) -> Option<Result<Reply, OpError>> {
    let FileOp::Read { path } = op else {
        return None;
    };
    let dirs = workspaces.opened(user.id)?;
    Some(dirs.read_small(path, INLINE_READ_LIMIT))
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
        } => write_file(workspaces, user, path, precondition, parents, stream).await,
    }
}

/// Bytes of an upload gathered for one write.
const WRITE_BATCH: usize = 1024 * 1024;

/// Runs blocking `work` on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, OpError> + Send + 'static,
) -> Result<T, OpError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| OpError::Internal(format!("file operation failed: {err}")))?
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

async fn write_file(
    workspaces: Arc<Workspaces>,
    user: UserCtx,
    path: String,
    precondition: Precondition,
    parents: bool,
    stream: Stream,
) {
    let (mut sender, mut receiver) = stream.split();
    let begin = {
        let precondition = precondition.clone();
        blocking(move || {
            let dirs = workspaces.open(user.id)?;
            dirs.begin_write(workspaces, &path, parents, user.quota_bytes, &precondition)
        })
        .await
    };
    let pending = match begin {
        Ok(pending) => pending,
        Err(err) => return sender.abort(err),
    };
    // Double-buffered: while one batch is written on the blocking pool, the
    // next is taken from the stream (its credit going back to the master),
    // so the network and the disk work at the same time.
    let mut writer = Writer::Idle(pending);
    let mut flushing = Flushing::default();
    loop {
        let (batch, ended) = match next_batch(&mut receiver, &writer).await {
            Ok(next) => next,
            // The upload was abandoned: dropping the pending write removes
            // the temp file (a possibly large unlink: off this thread).
            Err(()) => {
                tokio::spawn(async move {
                    if let Ok(pending) = writer.idle().await {
                        tokio::task::spawn_blocking(move || drop(pending));
                    }
                });
                return;
            }
        };
        let mut pending = match writer.idle().await {
            Ok(pending) => pending,
            Err(err) => return sender.abort(err),
        };
        flushing.kick(&pending);
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
    let pending = match writer.idle().await {
        Ok(pending) => pending,
        Err(err) => return sender.abort(err),
    };
    let committed = blocking(move || pending.commit_keeping_replaced(&precondition)).await;
    let mut replaced = None;
    let outcome = committed.and_then(|(entry, created, old)| {
        replaced = old;
        warren_protocol::codec::encode_message(&warren_protocol::WriteOutcome { entry, created })
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

/// The pending write of an upload: ready, or busy writing a batch on the
/// blocking pool.
enum Writer {
    Idle(workspace::PendingWrite),
    Busy(tokio::task::JoinHandle<Result<workspace::PendingWrite, OpError>>),
}

impl Writer {
    fn is_busy(&self) -> bool {
        matches!(self, Writer::Busy(task) if !task.is_finished())
    }

    /// The pending write, once any batch in progress is written.
    async fn idle(self) -> Result<workspace::PendingWrite, OpError> {
        match self {
            Writer::Idle(pending) => Ok(pending),
            Writer::Busy(task) => task
                .await
                .map_err(|err| OpError::Internal(format!("file operation failed: {err}")))?,
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
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Flushing {
    fn kick(&mut self, pending: &workspace::PendingWrite) {
        if pending.written < self.flushed + FLUSH_STEP
            || self.task.as_ref().is_some_and(|task| !task.is_finished())
        {
            return;
        }
        if let Some(file) = pending.flusher() {
            self.flushed = pending.written;
            // A failure shows again, and is reported, at the final fsync.
            self.task = Some(tokio::task::spawn_blocking(move || {
                let _ = file.sync_data();
            }));
        }
    }
}

/// The next chunks of an upload, up to [`WRITE_BATCH`] bytes: at least one
/// chunk, and more while the previous batch is still being written or
/// more has already arrived. `true` once the master closed its side;
/// `Err` when it abandoned the upload.
async fn next_batch(
    receiver: &mut warren_protocol::stream::StreamReceiver,
    writer: &Writer,
) -> Result<(Vec<Vec<u8>>, bool), ()> {
    let mut batch = Vec::new();
    let mut size = 0;
    while size < WRITE_BATCH {
        let next = if batch.is_empty() || writer.is_busy() {
            receiver.recv().await
        } else {
            match receiver.recv().now_or_never() {
                Some(next) => next,
                None => break,
            }
        };
        match next {
            Some(Ok(bytes)) => {
                size += bytes.len();
                batch.push(bytes);
            }
            Some(Err(_)) => return Err(()),
            None => return Ok((batch, true)),
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
