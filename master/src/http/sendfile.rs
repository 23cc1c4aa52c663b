//! File bodies sent with `sendfile(2)`: from an open file (handed over by
//! the worker that opened it) straight to the client's socket, without the
//! bytes passing through warren's memory.
//!
//! hyper owns the connection and writes what a body yields, so a
//! [`FileBody`] yields *stand-ins*: slices of one static, never-read buffer
//! ([`STAND_IN`]), as many bytes as the file part. When hyper hands such a
//! slice to the connection's socket ([`crate::http::listener`]), the socket
//! recognises it by its address and sends that many bytes of the file
//! instead, from the [`Lane`] of files its responses are sending. That
//! works because, on an HTTP/1.1 connection:
//! - hyper writes a response's body bytes in order, and responses one after
//!   another, so stand-in bytes are consumed in the order the bodies armed
//!   their files (a FIFO);
//! - with a `Content-Length`, hyper passes the body's `Bytes` through to
//!   `poll_write_vectored` uncopied (its "queue" strategy, chosen because
//!   the socket writes vectored); and a body that ends early or fails
//!   closes the connection, so no stand-in outlives its file on a
//!   connection that goes on.
//!
//! Nothing between the handler and hyper looks at a file body's bytes (no
//! compression, no re-chunking): a layer that did would see zeros. Where
//! no lane is known (a request that did not come through the listener),
//! the body reads the file in large buffers instead.

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

/// The stand-in bytes' buffer: never read (its pages are never touched),
/// only recognised by address.
static STAND_IN: [u8; STAND_IN_LEN] = [0; STAND_IN_LEN];
/// The most bytes one stand-in chunk stands for, so the most one `sendfile`
/// call sends (hyper's write buffer flushes a chunk whole before asking for
/// more). `sendfile` reads the file through the page cache with the
/// kernel's own read-ahead for sequential reads, so only the first pages
/// of a file not cached, and pages the read-ahead has not reached, are
/// read while a runtime thread waits (as nginx without `aio threads`).
/// Smaller steps and `POSIX_FADV_WILLNEED` ahead of them were measured
/// and cost download throughput without a gain here.
const STAND_IN_LEN: usize = 1024 * 1024;
/// The fallback's read size.
const BUFFERED_CHUNK: usize = 256 * 1024;

/// Whether `slice` is stand-in bytes (see the module documentation).
pub fn is_stand_in(slice: &[u8]) -> bool {
    let start = STAND_IN.as_ptr() as usize;
    let at = slice.as_ptr() as usize;
    !slice.is_empty() && at >= start && at + slice.len() <= start + STAND_IN_LEN
}

/// One file part to send in place of stand-in bytes.
struct Job {
    file: Arc<File>,
    offset: u64,
    remaining: u64,
    /// Held until the part is sent (or dropped): a per-user count of
    /// transfers, so a client that never reads still counts.
    _hold: Box<dyn Send + Sync>,
}

/// The file parts a connection's responses are sending, in order; shared
/// by the connection's socket and the bodies of its requests (each request
/// gets it as an extension).
#[derive(Clone)]
pub struct Lane {
    jobs: Arc<Mutex<Jobs>>,
    sent: prometheus_client::metrics::counter::Counter,
}

#[derive(Default)]
struct Jobs {
    queue: VecDeque<Job>,
    /// A body was dropped before it yielded all its stand-ins: its bytes
    /// can no longer be told from a later body's, so no stand-in is sent
    /// on this connection again (hyper closes it anyway).
    broken: bool,
}

impl Lane {
    /// A connection's lane; `sent` counts the bytes it sends.
    pub fn new(sent: prometheus_client::metrics::counter::Counter) -> Lane {
        Lane {
            jobs: Arc::default(),
            sent,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends up to `want` bytes of the first file part to `socket` (which
    /// must be writable: the caller polls readiness and retries on
    /// `WouldBlock`). Stand-in bytes with no file part, or a file that
    /// ends before its part does (changed in place), fail the connection:
    /// the client was promised exactly those bytes.
    pub fn send_to(&self, socket: &impl std::os::fd::AsFd, want: usize) -> io::Result<usize> {
        let mut jobs = self.lock();
        if jobs.broken {
            return Err(io::Error::other(
                "a file body on this connection was cut short",
            ));
        }
        let Some(job) = jobs.queue.front_mut() else {
            return Err(io::Error::other("stand-in bytes without a file to send"));
        };
        let count = want.min(usize::try_from(job.remaining).unwrap_or(usize::MAX));
        let mut offset = job.offset;
        let sent = rustix::fs::sendfile(socket, &*job.file, Some(&mut offset), count)?;
        if sent == 0 && count > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file ended before the bytes promised (changed while sent)",
            ));
        }
        job.offset = offset;
        job.remaining -= sent as u64;
        self.sent.inc_by(sent as u64);
        if job.remaining == 0 {
            jobs.queue.pop_front();
        }
        Ok(sent)
    }

    fn arm(&self, job: Job) {
        self.lock().queue.push_back(job);
    }

    fn break_off(&self) {
        let mut jobs = self.lock();
        jobs.broken = true;
        // Their files close now.
        jobs.queue.clear();
    }
}

/// `len` bytes of `file` from `offset`, as a response body: stand-ins for
/// `sendfile` on `lane`, or read in buffers without one.
pub struct FileBody {
    file: Arc<File>,
    offset: u64,
    remaining: u64,
    lane: Option<Lane>,
    armed: bool,
    reading: Option<tokio::task::JoinHandle<io::Result<Vec<u8>>>>,
    /// Held until the bytes are sent (a per-user count of transfers): by
    /// the body, then by the lane's part once armed.
    hold: Option<Box<dyn Send + Sync>>,
}

impl FileBody {
    pub fn new(
        file: File,
        offset: u64,
        len: u64,
        lane: Option<Lane>,
        hold: Box<dyn Send + Sync>,
    ) -> FileBody {
        FileBody {
            file: Arc::new(file),
            offset,
            remaining: len,
            lane,
            armed: false,
            reading: None,
            hold: Some(hold),
        }
    }

    fn poll_buffered(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let task = self.reading.get_or_insert_with(|| {
            let (file, offset) = (self.file.clone(), self.offset);
            let len = BUFFERED_CHUNK.min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0; len];
                let read = file.read_at(&mut buf, offset)?;
                buf.truncate(read);
                Ok(buf)
            })
        });
        let read = match std::task::ready!(Pin::new(task).poll(cx)) {
            Ok(read) => read,
            Err(joined) => Err(io::Error::other(joined)),
        };
        self.reading = None;
        let chunk = match read {
            Ok(chunk) if chunk.is_empty() => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file ended before the bytes promised (changed while sent)",
            )),
            other => other,
        };
        Poll::Ready(Some(chunk.map(|chunk| {
            self.offset += chunk.len() as u64;
            self.remaining -= chunk.len() as u64;
            Frame::data(Bytes::from(chunk))
        })))
    }
}

impl Drop for FileBody {
    fn drop(&mut self) {
        if self.armed && self.remaining > 0 {
            if let Some(lane) = &self.lane {
                lane.break_off();
            }
        }
    }
}

use std::future::Future;

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let Some(lane) = &this.lane else {
            return this.poll_buffered(cx);
        };
        if !this.armed {
            lane.arm(Job {
                file: this.file.clone(),
                offset: this.offset,
                remaining: this.remaining,
                _hold: this.hold.take().unwrap_or_else(|| Box::new(())),
            });
            this.armed = true;
        }
        let len = STAND_IN_LEN.min(usize::try_from(this.remaining).unwrap_or(usize::MAX));
        this.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&STAND_IN[..len])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slices_of_the_stand_in_buffer_are_stand_ins() {
        assert!(is_stand_in(&STAND_IN[..10]));
        assert!(is_stand_in(&STAND_IN[STAND_IN_LEN - 1..]));
        assert!(!is_stand_in(&STAND_IN[..0]));
        let copy = STAND_IN[..10].to_vec();
        assert!(!is_stand_in(&copy));
        assert!(!is_stand_in(b"hello"));
    }
}
