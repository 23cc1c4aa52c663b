//! The connection I/O both processes share: the batching frame writer, the
//! version handshake, and descriptor hand-over.
//!
//! **Descriptor hand-over.** A worker may send an open file along with a
//! response frame (`SCM_RIGHTS` on the same Unix socket), so that the
//! master moves a file's bytes itself (`sendfile`, or writes into an
//! upload's temp file) instead of carrying them in frames. The rules:
//! - only the worker sends descriptors, only with a `Response` whose reply
//!   says so ([`crate::Reply::hands_over_descriptor`]), one per frame, each
//!   frame in its own `sendmsg` with its descriptor attached;
//! - the master reads with `recvmsg` ([`DescriptorReader`]): the kernel
//!   delivers a descriptor with the first byte of the `sendmsg` it came
//!   with, so it is always queued before its frame is decoded, and
//!   descriptors are taken from the queue in frame order;
//! - the master never sends one, and the worker reads with plain `read`,
//!   which makes the kernel close any descriptor sent to it: a worker
//!   never receives a descriptor.

use crate::codec::{encode_frame, FrameCodec, FrameError};
use crate::message::{Body, Frame, Hello, PeerRole, PROTOCOL_VERSION};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

/// Frames queued while a write is in progress go out together, up to this
/// many bytes per `write` call: one syscall per batch, not per frame.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
const WRITE_BATCH_FRAMES: usize = 512;

/// A frame and the descriptor that goes with it (see the module
/// documentation); `F` is whatever the sender allows to be handed over.
pub type HandOverReceiver<F> = mpsc::UnboundedReceiver<(Frame, F)>;

/// The writing end of a connection: bytes, and bytes with a descriptor.
pub trait FrameSink: AsyncWrite + Unpin {
    fn socket(&self) -> &UnixStream;
}

impl FrameSink for OwnedWriteHalf {
    fn socket(&self) -> &UnixStream {
        self.as_ref()
    }
}

impl<T: FrameSink> FrameSink for &mut T {
    fn socket(&self) -> &UnixStream {
        (**self).socket()
    }
}

/// Writes every frame from `frames` to `out` until the channel closes (every
/// sender dropped) or the write fails. Tells `unsendable` about each frame that cannot be encoded (one over
/// [`crate::MAX_FRAME_LEN`]) and goes on with the others: one oversized
/// message must fail alone, not end the connection and stall every
/// request behind it. Frames from `handed` (a worker's only) go out each
/// with its descriptor ([`send_with_descriptor`]), which is closed here
/// once sent.
pub async fn write_frames<W: FrameSink, F: AsFd>(
    mut frames: mpsc::UnboundedReceiver<Frame>,
    mut handed: Option<HandOverReceiver<F>>,
    mut out: W,
    unsendable: impl Fn(u64, FrameError),
) -> Result<(), FrameError> {
    let mut batch = Vec::with_capacity(WRITE_BATCH_FRAMES);
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    loop {
        let received = tokio::select! {
            received = frames.recv_many(&mut batch, WRITE_BATCH_FRAMES) => received,
            Some((frame, fd)) = async {
                match handed.as_mut() {
                    Some(handed) => handed.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match encode_frame(&frame, &mut buffer) {
                    Ok(()) => match send_with_descriptor(out.socket(), &buffer, fd.as_fd()).await {
                        Ok(()) => {}
                        // Nothing of it left: the stream is intact, only
                        // this answer failed (ENOBUFS, ETOOMANYREFS...).
                        Err(HandOverError::NotSent(err)) if !is_lost_connection(&err) => {
                            unsendable(frame.id, FrameError::Io(err))
                        }
                        Err(HandOverError::NotSent(err) | HandOverError::PartlySent(err)) => {
                            return Err(err.into())
                        }
                    },
                    Err(err) => unsendable(frame.id, err),
                }
                buffer.clear();
                continue;
            }
        };
        if received == 0 {
            break;
        }
        // Under load other tasks are about to queue frames too: let them run
        // once, so their frames share this write (one syscall and one wake-up
        // of the peer instead of one each). Idle, this costs one re-poll.
        if batch.len() < WRITE_BATCH_FRAMES {
            tokio::task::yield_now().await;
            while batch.len() < WRITE_BATCH_FRAMES {
                match frames.try_recv() {
                    Ok(frame) => batch.push(frame),
                    Err(_) => break,
                }
            }
        }
        for frame in batch.drain(..) {
            if let Err(err) = encode_frame(&frame, &mut buffer) {
                unsendable(frame.id, err);
                continue;
            }
            if buffer.len() >= WRITE_BATCH_BYTES {
                out.write_all(&buffer).await?;
                buffer.clear();
            }
        }
        if !buffer.is_empty() {
            out.write_all(&buffer).await?;
            buffer.clear();
        }
    }
    out.shutdown().await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("peer closed the connection during the handshake")]
    Closed,
    #[error("peer refused the handshake: {0}")]
    Refused(String),
    #[error("refused the peer's handshake: {0}")]
    Incompatible(String),
    #[error("expected Hello as the first frame, got {0}")]
    NotHello(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Checks a peer's `Hello`: right protocol version, the expected role, and
/// the expected slot when the caller knows it.
pub fn check_hello(hello: &Hello, role: PeerRole, slot: Option<u32>) -> Result<(), String> {
    if hello.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not ours ({PROTOCOL_VERSION}); master and worker must be the same build",
            hello.version
        ));
    }
    if hello.role != role {
        return Err(format!(
            "peer says it is {:?}, expected {role:?}",
            hello.role
        ));
    }
    if let Some(slot) = slot {
        if hello.slot != slot {
            return Err(format!(
                "peer says it is slot {}, expected {slot}",
                hello.slot
            ));
        }
    }
    Ok(())
}

/// Sends our `Hello`, reads the peer's and checks it. On a mismatch the peer
/// is told why (`Refuse`) before the error is returned.
///
/// The master calls this first-speaker side; both sides send before they
/// read, so neither waits on the other.
pub async fn handshake<R, W>(
    reader: &mut FramedRead<R, FrameCodec>,
    writer: W,
    ours: Hello,
    expect_role: PeerRole,
    expect_slot: Option<u32>,
) -> Result<Hello, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut sink = FramedWrite::new(writer, FrameCodec::new());
    sink.send(Frame {
        id: 0,
        body: Body::Hello(ours),
    })
    .await?;
    let theirs = match reader.next().await {
        None => return Err(HandshakeError::Closed),
        Some(Err(err)) => return Err(err.into()),
        Some(Ok(Frame {
            body: Body::Hello(hello),
            ..
        })) => hello,
        Some(Ok(Frame {
            body: Body::Refuse(why),
            ..
        })) => return Err(HandshakeError::Refused(why)),
        Some(Ok(other)) => return Err(HandshakeError::NotHello(format!("{:?}", other.body))),
    };
    if let Err(why) = check_hello(&theirs, expect_role, expect_slot) {
        let _ = sink
            .send(Frame {
                id: 0,
                body: Body::Refuse(why.clone()),
            })
            .await;
        return Err(HandshakeError::Incompatible(why));
    }
    Ok(theirs)
}

/// Why [`send_with_descriptor`] failed.
#[derive(Debug)]
pub enum HandOverError {
    /// No byte left: the stream is as it was.
    NotSent(io::Error),
    /// Part of the frame left: the stream is broken.
    PartlySent(io::Error),
}

fn is_lost_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// Sends `bytes` on `socket` with `fd` attached to the first of them
/// (`SCM_RIGHTS`); what one `sendmsg` did not take follows plainly.
pub async fn send_with_descriptor(
    socket: &UnixStream,
    bytes: &[u8],
    fd: std::os::fd::BorrowedFd<'_>,
) -> Result<(), HandOverError> {
    let mut sent = loop {
        socket.writable().await.map_err(HandOverError::NotSent)?;
        let attempt = socket.try_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [fd];
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(io::Error::other("no room for a descriptor"));
            }
            Ok(rustix::net::sendmsg(
                socket,
                &[io::IoSlice::new(bytes)],
                &mut control,
                SendFlags::NOSIGNAL,
            )?)
        });
        match attempt {
            Ok(sent) => break sent,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(HandOverError::NotSent(err)),
        }
    };
    while sent < bytes.len() {
        socket.writable().await.map_err(HandOverError::PartlySent)?;
        match socket.try_write(&bytes[sent..]) {
            Ok(0) => return Err(HandOverError::PartlySent(io::ErrorKind::WriteZero.into())),
            Ok(n) => sent += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(HandOverError::PartlySent(err)),
        }
    }
    Ok(())
}

/// Descriptors received on a connection, oldest first, until their frames
/// take them. `None` stands for one the kernel could not give (the
/// receiver is out of descriptors: `MSG_CTRUNC`).
#[derive(Debug, Clone, Default)]
pub struct ReceivedDescriptors(Arc<Mutex<VecDeque<Option<OwnedFd>>>>);

impl ReceivedDescriptors {
    /// The next descriptor, for the frame that says it carries one:
    /// `Err` if none arrived (a protocol violation), `Ok(None)` if it was
    /// lost to a lack of descriptors.
    pub fn take(&self) -> Result<Option<OwnedFd>, &'static str> {
        self.lock()
            .pop_front()
            .ok_or("a frame said it carries a descriptor, and none came with it")
    }

    /// How many are waiting for their frames (and held open).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every descriptor waiting (the connection is gone).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Option<OwnedFd>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The master's reading end of a worker connection: `recvmsg` with room for
/// descriptors, which go to [`ReceivedDescriptors`] (close-on-exec, so no
/// process the master starts inherits one).
#[derive(Debug)]
pub struct DescriptorReader {
    half: OwnedReadHalf,
    received: ReceivedDescriptors,
}

/// The most descriptors one `recvmsg` can bring (the kernel's `SCM_MAX_FD`);
/// a worker sends one per `sendmsg`, and a stream socket's `recvmsg` stops
/// after the first message that carried any.
const MAX_DESCRIPTORS: usize = 253;

impl DescriptorReader {
    pub fn new(half: OwnedReadHalf) -> (DescriptorReader, ReceivedDescriptors) {
        let received = ReceivedDescriptors::default();
        let reader = DescriptorReader {
            half,
            received: received.clone(),
        };
        (reader, received)
    }
}

impl AsyncRead for DescriptorReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let socket: &UnixStream = this.half.as_ref();
        loop {
            ready!(socket.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let attempt = socket.try_io(Interest::READABLE, || {
                let mut space =
                    [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_DESCRIPTORS))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let message = rustix::net::recvmsg(
                    socket,
                    &mut [io::IoSliceMut::new(unfilled)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                let mut fds: Vec<OwnedFd> = Vec::new();
                for ancillary in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(rights) = ancillary {
                        fds.extend(rights);
                    }
                }
                let lost = message.flags.contains(ReturnFlags::CTRUNC) && fds.is_empty();
                Ok((message.bytes, fds, lost))
            });
            match attempt {
                Ok((bytes, fds, lost)) => {
                    if !fds.is_empty() || lost {
                        let mut queue = this.received.lock();
                        queue.extend(fds.into_iter().map(Some));
                        if lost {
                            queue.push_back(None);
                        }
                    }
                    buf.advance(bytes);
                    return Poll::Ready(Ok(()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}
