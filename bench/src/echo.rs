//! The bare echo: the reference point the latency target was set
//! against ("a bare tokio + Unix-socket + bincode echo"). A child process
//! (`warren-bench echo-server`) on a current-thread runtime answers each
//! request frame with a `Pong` over one Unix socket; the client writes and
//! reads the socket directly, with no pool, no writer task, no pending map.
//! What the pool adds on top of this is what warren itself costs.

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use std::path::{Path, PathBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Framed;
use warren_protocol::{Body, Frame, FrameCodec, Reply, Request, Response, UserCtx};

/// The client end: a child echo process and the socket to it.
pub struct BareEcho {
    connection: Framed<UnixStream, FrameCodec>,
    child: tokio::process::Child,
    next_id: u64,
    _dir: tempfile::TempDir,
}

impl BareEcho {
    /// Starts `<this exe> echo-server` and accepts its connection.
    pub async fn start() -> Result<BareEcho> {
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let socket = dir.path().join("echo.sock");
        let listener = UnixListener::bind(&socket).context("cannot bind the echo socket")?;
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("echo-server")
            .arg("--socket")
            .arg(&socket)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the echo process")?;
        let accepted = tokio::time::timeout(std::time::Duration::from_secs(10), listener.accept())
            .await
            .context("the echo process did not connect")??;
        Ok(BareEcho {
            connection: Framed::new(accepted.0, FrameCodec::new()),
            child,
            next_id: 1,
            _dir: dir,
        })
    }

    /// One request out, its answer back.
    pub async fn round_trip(&mut self, user: &UserCtx) -> Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        let request = Frame {
            id,
            body: Body::Request(Request {
                user: user.clone(),
                op: warren_protocol::Op::Ping,
            }),
        };
        self.connection.send(request).await?;
        match self.connection.next().await {
            Some(Ok(Frame {
                id: answered,
                body: Body::Response(_),
            })) if answered == id => Ok(()),
            other => bail!("the echo process answered {other:?}"),
        }
    }

    pub async fn stop(mut self) {
        drop(self.connection);
        let _ = self.child.wait().await;
    }
}

/// The echo process: answer every request until the socket closes.
pub fn serve(socket: &Path) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stream = UnixStream::connect(socket).await?;
        let mut connection = Framed::new(stream, FrameCodec::new());
        while let Some(frame) = connection.next().await {
            let frame = frame?;
            let Body::Request(request) = frame.body else {
                bail!("expected a request, got {:?}", frame.body)
            };
            let reply = Reply::Pong {
                slot: 0,
                pid: std::process::id(),
                user: request.user.id,
            };
            let answer = Frame {
                id: frame.id,
                body: Body::Response(Response { result: Ok(reply) }),
            };
            connection.send(answer).await?;
        }
        Ok(())
    })
}

#[derive(Debug, Clone, clap::Args)]
pub struct EchoArgs {
    #[arg(long)]
    pub socket: PathBuf,
}
