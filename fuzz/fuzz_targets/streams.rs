//! Stream frames from a peer (a compromised worker, as the master sees it):
//! `Data`, `Credit`, `Close` and `Cancel` routed into open streams whose
//! receivers are drained as they arrive. Nothing may panic or hang; a
//! violation (data beyond credit, credit never owed, a non-stream frame)
//! is an error, after which the connection would be dropped.
#![no_main]

use bytes::BytesMut;
use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use warren_protocol::stream::StreamRegistry;
use warren_protocol::{Body, FrameCodec, OpError, STREAM_WINDOW};

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let registry = StreamRegistry::new();
        let (frames, mut sent) = tokio::sync::mpsc::unbounded_channel();
        let mut streams: Vec<_> = (1..=3)
            .map(|id| registry.register(id, frames.clone()).expect("register"))
            .collect();
        let mut accepted = [0u64; 4];
        let mut credited = [0u64; 4];
        let mut codec = FrameCodec::new();
        let mut input = BytesMut::from(data);
        while let Ok(Some(frame)) = codec.decode(&mut input) {
            let id = frame.id;
            let len = match &frame.body {
                Body::Data(bytes) => bytes.len() as u64,
                _ => 0,
            };
            if registry.route(id, frame.body).is_err() {
                break;
            }
            if let Some(slot) = accepted.get_mut(id as usize) {
                *slot += len;
            }
            for stream in &mut streams {
                // Bounded: each call takes one event at most.
                for _ in 0..64 {
                    match stream.receiver.recv().now_or_never() {
                        Some(Some(_)) => {}
                        Some(None) | None => break,
                    }
                }
                // Sending what the peer's credit allows never blocks.
                let _ = stream.sender.send(b"x").now_or_never();
            }
            while let Ok(out) = sent.try_recv() {
                if let (Body::Credit(n), Some(slot)) = (&out.body, credited.get_mut(out.id as usize))
                {
                    *slot += u64::from(*n);
                }
            }
            for id in 1..=3 {
                assert!(
                    accepted[id] <= u64::from(STREAM_WINDOW) + credited[id],
                    "stream {id} accepted {} bytes on {} of credit",
                    accepted[id],
                    credited[id]
                );
            }
        }
        registry.fail_all(OpError::WorkerGone("fuzz: connection closed".into()));
        for stream in &mut streams {
            for _ in 0..64 {
                match stream.receiver.recv().now_or_never() {
                    Some(Some(_)) => {}
                    Some(None) | None => break,
                }
            }
        }
    });
});
