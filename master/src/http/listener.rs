//! The accept loop: warren's own instead of `axum::serve`, so that every
//! connection is bounded in time and number.
//!
//! - **Header-read timeout** (hyper's, with tokio's timer): a connection must
//!   deliver a request's complete headers within `header_read_timeout` of
//!   starting to wait for them. Hyper starts that clock both on a fresh
//!   connection and when a keep-alive connection goes idle after a
//!   response, so the same limit is the keep-alive idle timeout. It does
//!   not run while a request is being handled or its body streamed (uploads
//!   have `--upload-idle-timeout`), nor on an upgraded connection.
//! - **Send timeout**: a connection whose client accepts no byte of a
//!   response for `send_timeout` is closed (see [`CountedStream`]).
//! - **Connection caps**: at most `max_connections` open at once, and at most
//!   `max_per_address` from one peer address (IPv6: one /64; the direct peer: behind a
//!   reverse proxy every connection comes from the proxy, so trusted proxies
//!   are exempt from the per-address cap and bounded by the global one only).
//!   A connection over a cap gets a `503` JSON answer written straight to
//!   the socket, if it can take it at once, and is closed.
//! - **Graceful shutdown**: on `stop`, no more accepts; idle connections
//!   close, those with a request in flight finish it; `serve` returns when
//!   every connection has closed (the caller bounds that with its deadline).

use super::sendfile::{is_stand_in, Lane};
use crate::metrics::ConnectionMetrics;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use tracing::{debug, warn};

/// The largest number of headers hyper parses. The request-level limit
/// ([`super::MAX_HEADERS`]) is lower, so that a request just over it gets
/// warren's JSON `431` rather than hyper's bare one.
const HYPER_MAX_HEADERS: usize = 2 * super::MAX_HEADERS;

/// How long and how many connections may stay open.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    /// How long a write to the client may make no progress (see
    /// [`CountedStream`]).
    pub send_timeout: Duration,
    pub max_connections: usize,
    pub max_per_address: usize,
    /// Peers not subject to `max_per_address` (the trusted proxies).
    pub exempt: Vec<IpNet>,
    /// The other hosts of a cluster (kept current by its heartbeat loop):
    /// every request one forwards comes from its address, so they too are
    /// bounded by the global cap only.
    pub cluster_peers: std::sync::Arc<arc_swap::ArcSwap<Vec<IpAddr>>>,
}

/// Why a connection was refused (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Global,
    PerAddress,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Global => "max_connections",
            Refusal::PerAddress => "max_connections_per_address",
        }
    }
}

/// Open connections, in total and by peer address.
struct Tracker {
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    counts: Mutex<Counts>,
    /// When a refusal was last logged: at most one line a minute, so that a
    /// flood of connections cannot flood the log (the metric counts all).
    last_logged: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

impl Tracker {
    fn log_refusal(&self, peer: SocketAddr, refusal: Refusal) {
        let mut last = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
            return;
        }
        *last = Some(Instant::now());
        warn!(
            %peer,
            reason = refusal.label(),
            max_connections = self.limits.max_connections,
            max_connections_per_address = self.limits.max_per_address,
            "refusing connections over a cap (logged once a minute at most; \
             warren_http_connections_rejected_total counts them)"
        );
    }

    /// Counts a new connection from `peer`, or says which cap refuses it.
    fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        drain: mpsc::Sender<()>,
    ) -> Result<ConnectionGuard, Refusal> {
        let per_address = !self.limits.exempt.iter().any(|net| net.contains(&peer))
            && !self
                .limits
                .cluster_peers
                .load()
                .contains(&peer.to_canonical());
        let peer = address_key(peer);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= self.limits.max_connections {
            return Err(Refusal::Global);
        }
        if per_address {
            let open = counts.by_address.entry(peer).or_insert(0);
            if *open >= self.limits.max_per_address {
                return Err(Refusal::PerAddress);
            }
            *open += 1;
        }
        counts.total += 1;
        self.metrics.opened();
        Ok(ConnectionGuard {
            tracker: self.clone(),
            address: per_address.then_some(peer),
            _drain: drain,
        })
    }
}

/// What the per-address cap counts by: an IPv4 address, or an IPv6 /64
/// (one subscriber's usual allocation: counting each of its 2^64
/// addresses apart would let one client open connections without limit).
fn address_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
    }
}

/// One counted connection; dropping it (with the socket) uncounts it.
struct ConnectionGuard {
    tracker: Arc<Tracker>,
    address: Option<IpAddr>,
    /// Held until the connection closes: `serve` waits for every sender.
    _drain: mpsc::Sender<()>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut counts = self
            .tracker
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(address) = self.address {
            if let Some(open) = counts.by_address.get_mut(&address) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    counts.by_address.remove(&address);
                }
            }
        }
        self.tracker.metrics.closed();
    }
}

/// A socket that carries its guard, so the connection stays counted for as
/// long as the socket lives, also after an upgrade hands it to a handler;
/// and that bounds how long a write may wait on the client (the send
/// timeout).
///
/// **Send timeout** (nginx's `send_timeout`): when a write finds the socket
/// full, a timer starts; any write that the socket accepts (one byte is
/// enough) stops it; if it runs out first, the write fails with
/// `TimedOut`, hyper drops the connection, and its slot is free. So a
/// client that stops reading is cut after `send_timeout`, while one that
/// reads slowly but steadily is not. This is also what bounds pipelining:
/// hyper serves a connection's requests one at a time, and only reads the
/// next once the previous response is written, so a client that pipelines
/// requests without reading the answers holds at most one response in
/// flight — until the send buffers fill and this timer runs.
///
/// Upgraded connections keep the same stream, so the rule applies to them
/// too: a peer that reads nothing for `send_timeout` while the server has
/// something to send is gone, whatever the protocol (a future WebSocket
/// keep-alive ping needs the peer to read as well). No route upgrades today.
struct CountedStream {
    stream: TcpStream,
    /// Files to send in place of stand-in bytes (see `super::sendfile`).
    lane: Lane,
    send_timeout: Duration,
    /// Armed while a write waits for room in the socket.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    guard: ConnectionGuard,
}

impl CountedStream {
    /// After a write attempt: stops the timer on progress, starts it when
    /// the socket is full, and turns a timer run out into `TimedOut`.
    fn after_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let timeout = self.send_timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.stalled = None;
                self.guard.tracker.metrics.timed_out("send");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing for the send timeout",
                )))
            }
        }
    }
}

impl CountedStream {
    /// Sends up to `want` bytes of the lane's first file part with
    /// `sendfile(2)`, once the socket has room.
    fn poll_send_file(&self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.stream.poll_write_ready(cx))?;
            let sent = self.stream.try_io(tokio::io::Interest::WRITABLE, || {
                self.lane.send_to(&self.stream, want)
            });
            match sent {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = if is_stand_in(buf) {
            this.poll_send_file(cx, buf.len())
        } else {
            Pin::new(&mut this.stream).poll_write(cx, buf)
        };
        this.after_write(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Stand-in bytes (a file body's) go as the file's bytes; plain
        // bytes before them go first, in one `writev`.
        let result = match bufs.iter().find(|buf| !buf.is_empty()) {
            Some(first) if is_stand_in(first) => this.poll_send_file(cx, first.len()),
            _ => {
                let plain = bufs
                    .iter()
                    .position(|buf| is_stand_in(buf))
                    .unwrap_or(bufs.len());
                Pin::new(&mut this.stream).poll_write_vectored(cx, &bufs[..plain])
            }
        };
        this.after_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    /// A socket's flush never waits; hyper flushes only once its buffer has
    /// gone out, which is progress like a write.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.stream).poll_flush(cx);
        this.after_write(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener` until `stop`, then drains (see the module
/// documentation). Requests see their peer as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    stop: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(HYPER_MAX_HEADERS)
        .keep_alive(true);
    let tracker = Arc::new(Tracker {
        limits,
        metrics,
        counts: Mutex::default(),
        last_logged: Mutex::default(),
    });
    let (drain, mut drained) = mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                accept_failed(&err).await;
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        let guard = match tracker.admit(ip, drain.clone()) {
            Ok(guard) => guard,
            Err(refusal) => {
                tracker.metrics.rejected(refusal.label());
                tracker.log_refusal(peer, refusal);
                refuse(stream, refusal);
                continue;
            }
        };
        // TCP_NODELAY: a streamed body goes out after its headers in a
        // second write, which Nagle would hold back until the client's
        // delayed ACK (~40 ms per small file download).
        if let Err(err) = stream.set_nodelay(true) {
            warn!(error = %err, "cannot set TCP_NODELAY");
        }
        let lane = Lane::new(tracker.metrics.sendfile_bytes());
        let owner = match stream.local_addr() {
            Ok(ours) => Some(super::peer::PeerOwner::new(ours)),
            Err(_) => None,
        };
        let io = TokioIo::new(CountedStream {
            stream,
            lane: lane.clone(),
            send_timeout: tracker.limits.send_timeout,
            stalled: None,
            guard,
        });
        let router = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(lane.clone());
            if let Some(owner) = &owner {
                request.extensions_mut().insert(owner.clone());
            }
            let mut router = router.clone();
            async move { router.call(request.map(axum::body::Body::new)).await }
        });
        let connection = http.serve_connection(io, service).with_upgrades();
        let stop = stop.clone();
        let metrics = tracker.metrics.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = result {
                if err.is_timeout() {
                    metrics.timed_out("header_read");
                    debug!(%peer, "connection closed: no complete request headers in time");
                } else if send_timed_out(&err) {
                    // Counted where the timer ran out.
                    debug!(%peer, "connection closed: the client read nothing for the send timeout");
                } else {
                    debug!(%peer, error = %err, "connection ended with an error");
                }
            }
        });
    }
    drop(listener);
    drop(drain);
    // Every guard holds a sender: this returns once all connections closed.
    let _ = drained.recv().await;
}

/// Whether hyper ended a connection because a write hit the send timeout.
fn send_timed_out(err: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// After a failed `accept`: errors of one connection are skipped; others
/// (out of file descriptors, most often) are logged and the loop pauses,
/// as spinning would not help.
async fn accept_failed(err: &io::Error) {
    use io::ErrorKind::*;
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    warn!(error = %err, "cannot accept a connection; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Answers a refused connection with a `503` in warren's error shape, if its
/// socket takes it at once (a fresh socket's send buffer does), and closes.
fn refuse(stream: TcpStream, refusal: Refusal) {
    let message = match refusal {
        Refusal::Global => "the server has too many open connections; retry shortly",
        Refusal::PerAddress => "too many open connections from your address; close some and retry",
    };
    let body = serde_json::json!({
        "error": { "code": "too_many_connections", "message": message }
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\n\
         content-type: application/json\r\n\
         content-length: {}\r\n\
         retry-after: 1\r\n\
         x-content-type-options: nosniff\r\n\
         cache-control: no-store\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_peers_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(address_key(v4), v4);
    }
}
