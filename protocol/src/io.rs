//! The two pieces of connection I/O both processes share: the batching frame
//! writer and the version handshake.

use crate::codec::{encode_frame, FrameCodec, FrameError};
use crate::message::{Body, Frame, Hello, PeerRole, PROTOCOL_VERSION};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

/// Frames queued while a write is in progress go out together, up to this
/// many bytes per `write` call: one syscall per batch, not per frame.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
const WRITE_BATCH_FRAMES: usize = 512;

/// Writes every frame from `frames` to `out` until the channel closes (every
/// sender dropped) or the write fails. Tells `unsendable` about each frame that cannot be encoded (one over
/// [`crate::MAX_FRAME_LEN`]) and goes on with the others: one oversized
/// message must fail alone, not end the connection and stall every
/// request behind it.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    mut frames: mpsc::UnboundedReceiver<Frame>,
    mut out: W,
    unsendable: impl Fn(u64, FrameError),
) -> Result<(), FrameError> {
    let mut batch = Vec::with_capacity(WRITE_BATCH_FRAMES);
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    while frames.recv_many(&mut batch, WRITE_BATCH_FRAMES).await > 0 {
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

/// One owner of a connection shared by its reader and writer tasks: for
/// stream types whose `&T` reads and writes (as interprocess local sockets do),
/// this gives each task an owned, `'static` handle.
#[derive(Debug)]
pub struct SharedConnection<T>(std::sync::Arc<T>);

impl<T> SharedConnection<T> {
    pub fn pair(connection: T) -> (Self, Self) {
        let shared = std::sync::Arc::new(connection);
        (Self(shared.clone()), Self(shared))
    }
}

impl<T> AsyncRead for SharedConnection<T>
where
    for<'a> &'a T: AsyncRead,
{
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut &*self.0).poll_read(cx, buf)
    }
}

impl<T> AsyncWrite for SharedConnection<T>
where
    for<'a> &'a T: AsyncWrite,
{
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut &*self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut &*self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut &*self.0).poll_shutdown(cx)
    }
}
