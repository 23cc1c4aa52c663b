//! What each operation does. Plain functions with no I/O of the connection,
//! so benchmarks can call them directly as the in-process baseline.

use warren_protocol::stream::Stream;
use warren_protocol::{Reply, StreamKind, UserCtx};

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

/// Serves one stream the master opened, until both sides have closed.
pub async fn serve_stream(kind: StreamKind, stream: Stream) {
    match kind {
        StreamKind::Echo => echo(stream).await,
    }
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
