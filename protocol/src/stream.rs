//! Credit-based flow control for byte streams multiplexed on one connection.
//!
//! Each end of a stream may have at most [`STREAM_WINDOW`] bytes in flight
//! toward the other; the receiver hands credit back with [`Body::Credit`] as
//! its consumer takes the data. So a stream buffers at most one window per
//! direction however fast the sender is, and a slow consumer slows down the
//! producer instead of growing memory. A peer that sends beyond its credit is
//! violating the protocol and the connection is closed.
//!
//! Both processes use the same pieces: a [`StreamRegistry`] per connection,
//! which the connection's reader feeds with stream frames, and a [`Stream`]
//! handle per stream, used by whoever produces and consumes the bytes.

use crate::message::{Body, Frame, OpError, MAX_DATA_CHUNK, STREAM_WINDOW};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{mpsc, Semaphore};

/// Where a connection's outgoing frames go (its writer task drains it).
pub type FrameSender = mpsc::UnboundedSender<Frame>;

/// Credit is returned once this much has been consumed, so a bulk transfer
/// sends a credit frame per quarter window rather than per chunk.
const CREDIT_BATCH: u32 = STREAM_WINDOW / 4;

#[derive(Debug)]
enum Event {
    Data(Vec<u8>),
    Closed(Result<(), OpError>),
}

#[derive(Debug)]
struct Entry {
    /// Bytes this end may still send.
    send_credit: Semaphore,
    /// Why sending stopped, once `send_credit` is closed.
    send_failure: Mutex<Option<OpError>>,
    /// Bytes the peer may still send to this end before it needs more credit.
    peer_allowance: AtomicI64,
    inbox: mpsc::UnboundedSender<Event>,
}

impl Entry {
    fn stop_sending(&self, why: OpError) {
        let mut failure = self
            .send_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        failure.get_or_insert(why);
        self.send_credit.close();
    }
}

/// The peer broke the stream rules; the caller must close the connection.
#[derive(Debug, thiserror::Error)]
#[error("stream {id}: {what}")]
pub struct StreamViolation {
    pub id: u64,
    pub what: String,
}

/// The open streams of one connection, by id.
#[derive(Debug, Default)]
pub struct StreamRegistry {
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    streams: HashMap<u64, Arc<Entry>>,
    /// Set once the connection is gone: no new stream may start.
    failed: Option<OpError>,
}

impl StreamRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts tracking stream `id` and returns this end's handle. Fails when
    /// the connection has already failed, or the id is in use.
    pub fn register(self: &Arc<Self>, id: u64, frames: FrameSender) -> Result<Stream, OpError> {
        let (inbox, events) = mpsc::unbounded_channel();
        let entry = Arc::new(Entry {
            send_credit: Semaphore::new(STREAM_WINDOW as usize),
            send_failure: Mutex::new(None),
            peer_allowance: AtomicI64::new(i64::from(STREAM_WINDOW)),
            inbox,
        });
        let mut registry = self.lock();
        if let Some(err) = &registry.failed {
            return Err(err.clone());
        }
        if registry.streams.contains_key(&id) {
            return Err(OpError::StreamViolation(format!(
                "stream id {id} is already open"
            )));
        }
        registry.streams.insert(id, entry.clone());
        drop(registry);
        let handle = Arc::new(Handle {
            id,
            frames,
            entry,
            registry: self.clone(),
            sent_close: AtomicBool::new(false),
            received_close: AtomicBool::new(false),
        });
        Ok(Stream {
            sender: StreamSender {
                handle: handle.clone(),
            },
            receiver: StreamReceiver {
                handle,
                events,
                unacknowledged: 0,
            },
        })
    }

    /// The number of streams open on this connection.
    pub fn len(&self) -> usize {
        self.lock().streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether stream `id` is still open.
    pub fn contains(&self, id: u64) -> bool {
        self.lock().streams.contains_key(&id)
    }

    fn get(&self, id: u64) -> Option<Arc<Entry>> {
        self.lock().streams.get(&id).cloned()
    }

    fn remove(&self, id: u64) {
        self.lock().streams.remove(&id);
    }

    /// Delivers a stream frame (`Data`, `Close`, `Credit` or `Cancel`) that
    /// arrived for `id`. Frames for a stream this end already dropped are
    /// ignored: they were in flight when it went away.
    pub fn route(&self, id: u64, body: Body) -> Result<(), StreamViolation> {
        let Some(entry) = self.get(id) else {
            return Ok(());
        };
        match body {
            Body::Data(bytes) => {
                let len = bytes.len() as i64;
                let left = entry.peer_allowance.fetch_sub(len, Ordering::AcqRel) - len;
                if left < 0 {
                    return Err(StreamViolation {
                        id,
                        what: format!("peer sent {} bytes beyond its credit", -left),
                    });
                }
                let _ = entry.inbox.send(Event::Data(bytes));
            }
            Body::Credit(bytes) => {
                let available = entry.send_credit.available_permits();
                if available + bytes as usize > 2 * STREAM_WINDOW as usize {
                    return Err(StreamViolation {
                        id,
                        what: format!("peer granted {bytes} bytes of credit it never owed"),
                    });
                }
                entry.send_credit.add_permits(bytes as usize);
            }
            Body::Close(result) => {
                if let Err(err) = &result {
                    entry.stop_sending(err.clone());
                }
                let _ = entry.inbox.send(Event::Closed(result));
            }
            Body::Cancel => {
                entry.stop_sending(OpError::Cancelled);
                let _ = entry.inbox.send(Event::Closed(Err(OpError::Cancelled)));
                self.remove(id);
            }
            other => {
                return Err(StreamViolation {
                    id,
                    what: format!("{other:?} is not a stream frame"),
                })
            }
        }
        Ok(())
    }

    /// Ends every stream with `why` (the connection is gone) and refuses new ones.
    pub fn fail_all(&self, why: OpError) {
        let streams = {
            let mut registry = self.lock();
            registry.failed = Some(why.clone());
            std::mem::take(&mut registry.streams)
        };
        for entry in streams.into_values() {
            entry.stop_sending(why.clone());
            let _ = entry.inbox.send(Event::Closed(Err(why.clone())));
        }
    }
}

/// State both halves of a stream share; when the last half goes, the stream
/// leaves the registry, and the peer is told to cancel it unless both
/// directions had already closed.
#[derive(Debug)]
struct Handle {
    id: u64,
    frames: FrameSender,
    entry: Arc<Entry>,
    registry: Arc<StreamRegistry>,
    sent_close: AtomicBool,
    received_close: AtomicBool,
}

impl Handle {
    fn send_frame(&self, body: Body) -> Result<(), OpError> {
        self.frames
            .send(Frame { id: self.id, body })
            .map_err(|_| OpError::Internal("connection closed".into()))
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let done =
            self.sent_close.load(Ordering::Acquire) && self.received_close.load(Ordering::Acquire);
        if !done {
            let _ = self.send_frame(Body::Cancel);
        }
        self.registry.remove(self.id);
    }
}

/// The sending half of a stream.
#[derive(Debug)]
pub struct StreamSender {
    handle: Arc<Handle>,
}

impl StreamSender {
    fn send_failure(&self) -> OpError {
        let failure = self
            .handle
            .entry
            .send_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        failure.clone().unwrap_or(OpError::Cancelled)
    }

    /// Sends `data`, waiting for credit whenever the peer's window is full.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), OpError> {
        self.check_open()?;
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            self.send_chunk(chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// [`Self::send`] of a buffer the caller gives away: not copied again
    /// when it fits one data frame.
    pub async fn send_vec(&mut self, data: Vec<u8>) -> Result<(), OpError> {
        if data.len() > MAX_DATA_CHUNK || data.is_empty() {
            return self.send(&data).await;
        }
        self.check_open()?;
        self.send_chunk(data).await
    }

    fn check_open(&self) -> Result<(), OpError> {
        if self.handle.sent_close.load(Ordering::Acquire) {
            return Err(OpError::StreamViolation("send after close".into()));
        }
        Ok(())
    }

    /// One data frame of at most [`MAX_DATA_CHUNK`] bytes, once the peer's
    /// window has room for it.
    async fn send_chunk(&mut self, chunk: Vec<u8>) -> Result<(), OpError> {
        let permit = self
            .handle
            .entry
            .send_credit
            .acquire_many(chunk.len() as u32)
            .await
            .map_err(|_| self.send_failure())?;
        permit.forget();
        self.handle.send_frame(Body::Data(chunk))
    }

    /// Tells the peer this end will send nothing more. Receiving goes on.
    pub fn finish(&mut self) -> Result<(), OpError> {
        if self.handle.sent_close.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.handle.send_frame(Body::Close(Ok(())))
    }

    /// Ends the stream in both directions, telling the peer why.
    pub fn abort(&mut self, why: OpError) {
        if !self.handle.sent_close.swap(true, Ordering::AcqRel) {
            let _ = self.handle.send_frame(Body::Close(Err(why.clone())));
        }
        self.handle.received_close.store(true, Ordering::Release);
        self.handle.entry.stop_sending(why);
    }
}

/// The receiving half of a stream.
#[derive(Debug)]
pub struct StreamReceiver {
    handle: Arc<Handle>,
    events: mpsc::UnboundedReceiver<Event>,
    unacknowledged: u32,
}

impl StreamReceiver {
    /// The next chunk from the peer; `None` once the peer finished cleanly.
    /// Taking a chunk returns its credit to the peer.
    pub async fn recv(&mut self) -> Option<Result<Vec<u8>, OpError>> {
        if self.handle.received_close.load(Ordering::Acquire) {
            return None;
        }
        match self.events.recv().await {
            Some(Event::Data(bytes)) => {
                self.acknowledge(bytes.len() as u32);
                Some(Ok(bytes))
            }
            Some(Event::Closed(Ok(()))) => {
                self.handle.received_close.store(true, Ordering::Release);
                None
            }
            Some(Event::Closed(Err(err))) => {
                self.handle.received_close.store(true, Ordering::Release);
                self.handle.sent_close.store(true, Ordering::Release);
                Some(Err(err))
            }
            None => {
                self.handle.received_close.store(true, Ordering::Release);
                Some(Err(OpError::Internal("stream registry dropped".into())))
            }
        }
    }

    fn acknowledge(&mut self, len: u32) {
        self.unacknowledged += len;
        if self.unacknowledged >= CREDIT_BATCH {
            let credit = std::mem::take(&mut self.unacknowledged);
            self.handle
                .entry
                .peer_allowance
                .fetch_add(i64::from(credit), Ordering::AcqRel);
            let _ = self.handle.send_frame(Body::Credit(credit));
        }
    }
}

/// One end of a byte stream: a sender and a receiver. Dropping both halves
/// before both directions have closed cancels the stream at the peer.
#[derive(Debug)]
pub struct Stream {
    pub sender: StreamSender,
    pub receiver: StreamReceiver,
}

impl Stream {
    pub fn id(&self) -> u64 {
        self.sender.handle.id
    }

    /// Splits the stream so that sending and receiving can run concurrently,
    /// as they must when the peer answers while it is still being fed.
    pub fn split(self) -> (StreamSender, StreamReceiver) {
        (self.sender, self.receiver)
    }

    pub async fn send(&mut self, data: &[u8]) -> Result<(), OpError> {
        self.sender.send(data).await
    }

    pub async fn recv(&mut self) -> Option<Result<Vec<u8>, OpError>> {
        self.receiver.recv().await
    }

    pub fn finish(&mut self) -> Result<(), OpError> {
        self.sender.finish()
    }

    pub fn abort(&mut self, why: OpError) {
        self.sender.abort(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two registries joined back to back by in-memory frame pipes, as the
    /// two ends of a connection would be.
    fn pair() -> (
        Arc<StreamRegistry>,
        FrameSender,
        Arc<StreamRegistry>,
        FrameSender,
    ) {
        let (a_tx, mut a_rx) = mpsc::unbounded_channel::<Frame>();
        let (b_tx, mut b_rx) = mpsc::unbounded_channel::<Frame>();
        let a = StreamRegistry::new();
        let b = StreamRegistry::new();
        let (a2, b2) = (a.clone(), b.clone());
        tokio::spawn(async move {
            while let Some(frame) = a_rx.recv().await {
                b2.route(frame.id, frame.body).unwrap();
            }
        });
        tokio::spawn(async move {
            while let Some(frame) = b_rx.recv().await {
                a2.route(frame.id, frame.body).unwrap();
            }
        });
        (a, a_tx, b, b_tx)
    }

    #[tokio::test]
    async fn a_transfer_larger_than_the_window_completes_in_order() {
        let (a, a_tx, b, b_tx) = pair();
        let mut sender = a.register(1, a_tx).unwrap();
        let mut receiver = b.register(1, b_tx).unwrap();
        let payload: Vec<u8> = (0..5 * STREAM_WINDOW).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        let producer = tokio::spawn(async move {
            sender.send(&payload).await.unwrap();
            sender.finish().unwrap();
            assert!(sender.recv().await.is_none());
        });
        let mut got = Vec::new();
        while let Some(chunk) = receiver.recv().await {
            got.extend(chunk.unwrap());
        }
        receiver.finish().unwrap();
        producer.await.unwrap();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_sender_stalls_when_the_receiver_does_not_read() {
        let (a, a_tx, b, b_tx) = pair();
        let mut sender = a.register(1, a_tx).unwrap();
        let _receiver = b.register(1, b_tx).unwrap();
        let big = vec![0u8; 2 * STREAM_WINDOW as usize];
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(200), sender.send(&big)).await;
        assert!(blocked.is_err(), "sent more than a window without credit");
    }

    #[tokio::test]
    async fn data_beyond_credit_is_a_violation() {
        let registry = StreamRegistry::new();
        let (tx, _rx) = mpsc::unbounded_channel();
        let _stream = registry.register(9, tx).unwrap();
        registry
            .route(9, Body::Data(vec![0; STREAM_WINDOW as usize]))
            .unwrap();
        assert!(registry.route(9, Body::Data(vec![0])).is_err());
    }

    #[tokio::test]
    async fn failing_the_connection_ends_streams_and_refuses_new_ones() {
        let registry = StreamRegistry::new();
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut stream = registry.register(1, tx.clone()).unwrap();
        registry.fail_all(OpError::Internal("gone".into()));
        assert_eq!(
            stream.recv().await,
            Some(Err(OpError::Internal("gone".into())))
        );
        assert!(stream.send(b"x").await.is_err());
        assert!(registry.register(2, tx).is_err());
    }

    #[tokio::test]
    async fn dropping_an_unfinished_stream_cancels_it_at_the_peer() {
        let (a, a_tx, b, b_tx) = pair();
        let sender = a.register(1, a_tx).unwrap();
        let mut receiver = b.register(1, b_tx).unwrap();
        drop(sender);
        assert_eq!(receiver.recv().await, Some(Err(OpError::Cancelled)));
        assert!(a.is_empty());
    }
}
