//! The bytes of every file the files benchmark writes, and how it checks
//! them when they come back.
//!
//! Byte `o` of a file is [`byte_at`]`(o)`, a sequence whose period,
//! [`PERIOD`], is a prime: no power-of-two chunk boundary lines up with it,
//! so a chunk lost, sent twice or out of place shifts the bytes after it and
//! shows as a mismatch. One buffer of [`CHUNK`] + [`PERIOD`] bytes holds
//! every chunk the bench sends (a zero-copy slice of it) and every run of
//! bytes it expects (compared with `memcmp`, cheaper than any checksum and
//! exact).

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

/// The sequence's period (a prime).
pub const PERIOD: usize = 4093;
/// The upload body's chunks: 1 MiB.
pub const CHUNK: usize = 1 << 20;
/// The small file of (a).
pub const SMALL_FILE_BYTES: usize = 1024;

/// Bytes `0..CHUNK + PERIOD` of the sequence.
static PATTERN: LazyLock<Bytes> = LazyLock::new(|| {
    (0..(CHUNK + PERIOD) as u64)
        .map(byte_at)
        .collect::<Vec<u8>>()
        .into()
});

/// Byte `offset` of every file the bench writes.
pub fn byte_at(offset: u64) -> u8 {
    // `offset % PERIOD` fits in u32; the multiplier spreads it over the byte.
    let index = (offset % PERIOD as u64) as u32;
    (index.wrapping_mul(2_654_435_761) >> 24) as u8
}

/// Bytes `offset..offset + len` of a file, `len` at most [`CHUNK`] (more is
/// cut to [`CHUNK`]), without copying.
pub fn expected(offset: u64, len: usize) -> Bytes {
    let start = (offset % PERIOD as u64) as usize;
    PATTERN.slice(start..start + len.min(CHUNK))
}

/// Whether `data` is what a file holds at `offset`.
pub fn matches(offset: u64, data: &[u8]) -> bool {
    let mut at = offset;
    data.chunks(CHUNK).all(|piece| {
        let same = *piece == expected(at, piece.len());
        at += piece.len() as u64;
        same
    })
}

/// The small file of (a): its first [`SMALL_FILE_BYTES`] bytes.
pub fn small_file() -> Bytes {
    expected(0, SMALL_FILE_BYTES)
}

/// The check of (a)'s answers: the small file, whole.
pub fn is_small_file(body: &[u8]) -> bool {
    body.len() == SMALL_FILE_BYTES && matches(0, body)
}

/// A request body of `len` bytes of the pattern, in [`CHUNK`]-byte frames
/// made on demand (zero-copy slices of one buffer): however large the file,
/// the bench holds no more of it than hyper has not yet written. Its exact
/// size is known, so hyper sends it with `Content-Length`.
#[derive(Debug)]
pub struct PatternBody {
    sent: u64,
    len: u64,
}

impl PatternBody {
    pub fn new(len: u64) -> Self {
        PatternBody { sent: 0, len }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.sent)
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let body = self.get_mut();
        let remaining = body.remaining();
        if remaining == 0 {
            return Poll::Ready(None);
        }
        // At most CHUNK, so it fits in usize.
        let len = remaining.min(CHUNK as u64) as usize;
        let chunk = expected(body.sent, len);
        body.sent += len as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining() == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn slices_hold_the_sequence_at_any_offset() {
        for offset in [0u64, 1, 4092, 4093, 1 << 20, (1 << 30) + 17, u64::MAX - 400] {
            let slice = expected(offset, 300);
            assert_eq!(slice.len(), 300);
            for (k, byte) in slice.iter().enumerate() {
                assert_eq!(*byte, byte_at(offset + k as u64), "{offset}+{k}");
            }
        }
        assert_eq!(expected(5, CHUNK + 1).len(), CHUNK);
        assert_eq!(PATTERN.len(), CHUNK + PERIOD);
    }

    #[test]
    fn the_sequence_is_not_trivial() {
        let distinct: std::collections::BTreeSet<u8> = (0..PERIOD as u64).map(byte_at).collect();
        assert!(distinct.len() > 200, "{}", distinct.len());
        assert_eq!(byte_at(3), byte_at(3 + PERIOD as u64));
    }

    #[test]
    fn matching_finds_shifted_lost_and_changed_bytes() {
        let data: Vec<u8> = (0..3 * CHUNK as u64 + 5).map(byte_at).collect();
        assert!(matches(0, &data));
        assert!(matches(7, &data[7..]));
        assert!(!matches(0, &data[1..]));
        // A lost chunk: the rest is shifted by a whole chunk.
        let mut lost = data[..CHUNK].to_vec();
        lost.extend_from_slice(&data[2 * CHUNK..]);
        assert!(!matches(0, &lost));
        let mut changed = data.clone();
        changed[2 * CHUNK + 3] ^= 1;
        assert!(!matches(0, &changed));
        assert!(matches(0, &[]));
    }

    #[test]
    fn the_small_file_is_checked_whole() {
        let file = small_file();
        assert!(is_small_file(&file));
        assert!(!is_small_file(&file[..1023]));
        let mut longer = file.to_vec();
        longer.push(byte_at(1024));
        assert!(!is_small_file(&longer));
        let mut changed = file.to_vec();
        changed[512] ^= 0x80;
        assert!(!is_small_file(&changed));
    }

    #[tokio::test]
    async fn the_body_streams_the_file_in_chunks_of_known_size() {
        let len = 2 * CHUNK as u64 + 12_345;
        let mut body = PatternBody::new(len);
        assert_eq!(body.size_hint().exact(), Some(len));
        let mut sizes = Vec::new();
        let mut all = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            sizes.push(data.len());
            all.extend_from_slice(&data);
        }
        assert_eq!(sizes, [CHUNK, CHUNK, 12_345]);
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(matches(0, &all));
        assert!(PatternBody::new(0).is_end_stream());
    }
}
