//! Frame decoding: whatever a peer (a compromised worker, or a master that
//! is not ours) writes on the socket. The decoder must never panic nor
//! allocate beyond one frame; every frame it accepts encodes, and that
//! encoding decodes to the same frame. (Not necessarily to the same bytes:
//! bincode's varints accept overlong forms, e.g. `[251, 0, 0]` for 0, which
//! is harmless here because nothing hashes or signs frames.)
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use warren_protocol::codec::{decode_body, decode_message, encode_frame, encode_message};
use warren_protocol::{Entry, FrameCodec, ReadRange, WriteOutcome, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    // As a stream of length-prefixed frames, fed in two pieces the way
    // reads from a socket split it.
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut codec = FrameCodec::new();
    let mut buffer = BytesMut::new();
    'feed: for piece in [&data[..split], &data[split..]] {
        buffer.extend_from_slice(piece);
        loop {
            let before = buffer.len();
            match codec.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    let mut encoded = BytesMut::new();
                    encode_frame(&frame, &mut encoded).expect("a decoded frame encodes");
                    let again = decode_body(&encoded[4..]).expect("an encoded frame decodes");
                    assert_eq!(again, frame);
                    assert!(buffer.len() < before, "a frame consumes input");
                }
                Ok(None) => break,
                // The connection is dropped on any error: stop feeding.
                Err(_) => break 'feed,
            }
        }
    }

    // As one frame body, and as each message that travels inside streams.
    assert!(data.len() <= MAX_FRAME_LEN || decode_body(data).is_err());
    if let Ok(frame) = decode_body(data) {
        let mut encoded = BytesMut::new();
        encode_frame(&frame, &mut encoded).expect("a decoded frame encodes");
        assert!(
            encoded.len() <= data.len() + 4,
            "the canonical form is the shortest"
        );
        assert_eq!(decode_body(&encoded[4..]).expect("decodes"), frame);
    }
    if let Ok(entry) = decode_message::<Entry>(data) {
        let encoded = encode_message(&entry).expect("encodes");
        assert_eq!(decode_message::<Entry>(&encoded).expect("decodes"), entry);
    }
    if let Ok(outcome) = decode_message::<WriteOutcome>(data) {
        let encoded = encode_message(&outcome).expect("encodes");
        assert_eq!(
            decode_message::<WriteOutcome>(&encoded).expect("decodes"),
            outcome
        );
    }
    if let Ok(range) = decode_message::<ReadRange>(data) {
        let encoded = encode_message(&range).expect("encodes");
        assert_eq!(
            decode_message::<ReadRange>(&encoded).expect("decodes"),
            range
        );
    }
});
