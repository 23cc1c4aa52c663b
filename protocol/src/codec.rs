//! Bytes <-> [`Frame`]s. The only module in warren that calls bincode, so a
//! swap to a wire-compatible successor touches this file alone.
//!
//! On the wire each frame is a 4-byte big-endian length followed by that many
//! bytes of bincode (`config::standard()`). A length over [`MAX_FRAME_LEN`] is
//! refused before anything is allocated for it, and decoding is bounded by the
//! same limit, so no byte string can make the decoder panic or allocate more
//! than one frame's worth of memory.

use crate::message::Frame;
use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec, LengthDelimitedCodecError};

/// The largest frame body either side sends or accepts.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

const LENGTH_PREFIX: usize = 4;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLong { len: usize },
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("unencodable frame: {0}")]
    Encode(String),
    /// The peer closed the connection part-way through a frame: it died
    /// (or was killed) while writing, which is not a protocol violation.
    #[error("the connection ended {buffered} bytes into a frame")]
    Truncated { buffered: usize },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Whether the connection was lost (the peer died, was killed or closed
    /// its socket) rather than the peer sending something wrong.
    pub fn is_lost_connection(&self) -> bool {
        matches!(self, FrameError::Truncated { .. } | FrameError::Io(_))
    }
}

/// A `tokio_util` codec for [`Frame`]s: `LengthDelimitedCodec` framing, bincode bodies.
#[derive(Debug)]
pub struct FrameCodec {
    framing: LengthDelimitedCodec,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameCodec {
    pub fn new() -> Self {
        let framing = LengthDelimitedCodec::builder()
            .length_field_length(LENGTH_PREFIX)
            .big_endian()
            .max_frame_length(MAX_FRAME_LEN)
            .new_codec();
        FrameCodec { framing }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let claimed = (src.len() >= LENGTH_PREFIX)
            .then(|| u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize);
        match self.framing.decode(src) {
            Ok(Some(bytes)) => decode_body(&bytes).map(Some),
            Ok(None) => Ok(None),
            Err(err) if is_too_long(&err) => Err(FrameError::TooLong {
                len: claimed.unwrap_or(0),
            }),
            Err(err) => Err(FrameError::Io(err)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(&frame, dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(frame, dst)
    }
}

fn is_too_long(err: &std::io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
}

/// Appends one length-prefixed frame to `dst`. On error `dst` is left as it was.
pub fn encode_frame(frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
    let start = dst.len();
    dst.put_u32(0);
    let mut writer = dst.writer();
    let result = bincode::encode_into_std_write(frame, &mut writer, config());
    let dst = writer.into_inner();
    let len = dst.len() - start - LENGTH_PREFIX;
    let failure = match result {
        Err(err) => Some(FrameError::Encode(err.to_string())),
        Ok(_) if len > MAX_FRAME_LEN => Some(FrameError::TooLong { len }),
        Ok(_) => None,
    };
    if let Some(err) = failure {
        dst.truncate(start);
        return Err(err);
    }
    dst[start..start + LENGTH_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Decodes one frame body (the bytes after the length prefix). Trailing bytes
/// are an error: a frame is exactly one message.
pub fn decode_body(bytes: &[u8]) -> Result<Frame, FrameError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLong { len: bytes.len() });
    }
    let (frame, used) = bincode::decode_from_slice::<Frame, _>(bytes, config())
        .map_err(|err| FrameError::Decode(err.to_string()))?;
    if used != bytes.len() {
        return Err(FrameError::Decode(format!(
            "{} trailing bytes after the message",
            bytes.len() - used
        )));
    }
    Ok(frame)
}

/// Encodes a message that travels inside a stream's data (an `Entry`, a
/// `ReadRange`, a `WriteOutcome`).
pub fn encode_message<T: bincode::Encode>(message: &T) -> Result<Vec<u8>, FrameError> {
    bincode::encode_to_vec(message, config()).map_err(|err| FrameError::Encode(err.to_string()))
}

/// Decodes what [`encode_message`] made; trailing bytes are an error.
pub fn decode_message<T: bincode::Decode<()>>(bytes: &[u8]) -> Result<T, FrameError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLong { len: bytes.len() });
    }
    let (message, used) = bincode::decode_from_slice(bytes, config())
        .map_err(|err| FrameError::Decode(err.to_string()))?;
    if used != bytes.len() {
        return Err(FrameError::Decode(
            "trailing bytes after a stream message".into(),
        ));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;
    use proptest::prelude::*;

    #[test]
    fn a_connection_that_ends_mid_frame_is_a_lost_connection_not_a_bad_frame() {
        let mut codec = FrameCodec::new();
        let mut bytes = BytesMut::new();
        encode_frame(
            &Frame {
                id: 1,
                body: Body::Heartbeat(Heartbeat::default()),
            },
            &mut bytes,
        )
        .expect("encode");
        let mut cut = BytesMut::from(&bytes[..bytes.len() - 1]);
        let err = codec.decode_eof(&mut cut).expect_err("truncated");
        assert!(matches!(err, FrameError::Truncated { .. }), "{err}");
        assert!(err.is_lost_connection());
        let mut codec = FrameCodec::new();
        let mut whole = bytes.clone();
        assert!(codec.decode_eof(&mut whole).expect("whole").is_some());
        assert!(codec.decode_eof(&mut whole).expect("empty").is_none());
        let mut garbage = BytesMut::from(&[0u8, 0, 0, 2, 0xff, 0xff][..]);
        let err = FrameCodec::new().decode(&mut garbage).expect_err("garbage");
        assert!(!err.is_lost_connection(), "{err}");
    }

    fn user() -> UserCtx {
        UserCtx {
            id: UserId([7; 16]),
            name: "alice".into(),
            role: Role::User,
            quota_bytes: 1 << 30,
            quota_files: u64::MAX,
            uid: None,
            limits: Default::default(),
        }
    }

    fn samples() -> Vec<Frame> {
        let bodies = vec![
            Body::Hello(Hello {
                version: PROTOCOL_VERSION,
                role: PeerRole::Worker,
                slot: 3,
                pid: 4242,
            }),
            Body::Refuse("version 9 is not 1".into()),
            Body::Request(Request {
                user: user(),
                op: Op::Ping,
            }),
            Body::Response(Response {
                result: Ok(Reply::Pong {
                    slot: 1,
                    pid: 2,
                    user: UserId([1; 16]),
                }),
            }),
            Body::Response(Response {
                result: Err(OpError::Invalid("nope".into())),
            }),
            Body::Cancel,
            Body::Heartbeat(Heartbeat {
                inflight_requests: 5,
                open_streams: 1,
                users_seen: 9,
                tasks_running: 2,
                terminals_open: 1,
                apps_running: 3,
            }),
            Body::Open(Open {
                user: user(),
                kind: StreamKind::Echo,
            }),
            Body::Data(vec![0xab; MAX_DATA_CHUNK]),
            Body::Close(Ok(())),
            Body::Close(Err(OpError::Cancelled)),
            Body::Credit(STREAM_WINDOW),
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Frame {
                id: (i as u64) << 40 | 17,
                body,
            })
            .collect()
    }

    #[test]
    fn every_body_round_trips_through_the_codec() {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::new();
        for frame in samples() {
            codec.encode(&frame, &mut buf).unwrap();
        }
        for expected in samples() {
            assert_eq!(codec.decode(&mut buf).unwrap(), Some(expected));
        }
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_frame_split_at_every_byte_decodes_once_complete() {
        let mut whole = BytesMut::new();
        encode_frame(&samples()[2], &mut whole).unwrap();
        for cut in 0..whole.len() {
            let mut codec = FrameCodec::new();
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(codec.decode(&mut buf).unwrap(), None, "cut at {cut}");
            buf.extend_from_slice(&whole[cut..]);
            assert_eq!(codec.decode(&mut buf).unwrap(), Some(samples()[2].clone()));
        }
    }

    #[test]
    fn an_over_long_length_prefix_is_refused_without_allocating_it() {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        buf.extend_from_slice(b"xyz");
        match codec.decode(&mut buf) {
            Err(FrameError::TooLong { len }) => assert_eq!(len, u32::MAX as usize),
            other => panic!("expected TooLong, got {other:?}"),
        }
        assert!(buf.capacity() < 1024, "capacity {}", buf.capacity());
    }

    #[test]
    fn an_oversized_frame_is_not_encoded_and_leaves_the_buffer_intact() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        let frame = Frame {
            id: 1,
            body: Body::Data(vec![0; MAX_FRAME_LEN + 1]),
        };
        assert!(matches!(
            encode_frame(&frame, &mut buf),
            Err(FrameError::TooLong { .. })
        ));
        assert_eq!(&buf[..], b"keep");
    }

    #[test]
    fn trailing_bytes_in_a_frame_are_an_error() {
        let mut buf = BytesMut::new();
        encode_frame(&samples()[5], &mut buf).unwrap();
        let mut body = buf[LENGTH_PREFIX..].to_vec();
        body.push(0);
        assert!(matches!(decode_body(&body), Err(FrameError::Decode(_))));
    }

    #[test]
    fn a_huge_claimed_vector_length_inside_a_frame_is_refused() {
        // id 1, Body::Data (variant 8), then a varint length of u64::MAX.
        let mut body = vec![1u8, 8, 0xff];
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode_body(&body), Err(FrameError::Decode(_))));
    }

    #[test]
    fn overlong_varints_decode_to_their_value_and_encode_canonically() {
        // Found by the `frame` fuzz target: bincode's varints accept
        // overlong forms ([251, 0, 0] is a u16 marker and 0). Harmless,
        // since nothing hashes or signs frames, but pinned: the value is
        // the same and it re-encodes in the shortest form.
        let range: ReadRange = decode_message(&[4, 251, 0, 0]).expect("decodes");
        assert_eq!(range, ReadRange { offset: 4, len: 0 });
        assert_eq!(encode_message(&range).expect("encodes"), vec![4, 0]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut codec = FrameCodec::new();
            let mut buf = BytesMut::from(&bytes[..]);
            // Drain until the codec needs more input or reports an error.
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
            let _ = decode_body(&bytes);
        }

        #[test]
        fn truncated_and_mutated_frames_never_panic(index in 0usize..12, cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), value in any::<u8>()) {
            let frame = samples()[index].clone();
            let mut encoded = BytesMut::new();
            encode_frame(&frame, &mut encoded).unwrap();
            let body = &encoded[LENGTH_PREFIX..];
            let truncated = &body[..cut.index(body.len())];
            prop_assert!(decode_body(truncated).is_err());
            let mut mutated = body.to_vec();
            let at = flip.index(mutated.len());
            mutated[at] = value;
            let _ = decode_body(&mutated);
        }
    }
}
