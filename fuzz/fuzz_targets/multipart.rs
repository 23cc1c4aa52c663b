//! Multipart uploads (`POST /api/v1/upload/{dir}`): the body is parsed by
//! multer (behind axum's `Multipart` extractor) and every part's file name
//! must pass `warren_protocol::path::check` as exactly one name before
//! anything is written. Input: the first line is the request's
//! `Content-Type`, the rest the body, delivered in chunks whose sizes come
//! from the first byte (as a slow client would split it). The parser must
//! never panic, hang or hand back a name that would write anywhere but
//! directly in the target directory.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use warren_protocol::path::{check, check_name};

/// The upload handler's rule for a part's file name: one name, no path.
fn upload_name(name: &str) -> Option<String> {
    check_name(name).ok().map(str::to_string)
}

fuzz_target!(|data: &[u8]| {
    let Some(newline) = data.iter().position(|b| *b == b'\n') else {
        return;
    };
    let Ok(content_type) = std::str::from_utf8(&data[..newline]) else {
        return;
    };
    let Ok(boundary) = multer::parse_boundary(content_type) else {
        return;
    };
    let body = &data[newline + 1..];
    let chunk = usize::from(body.first().copied().unwrap_or(1)).max(1);
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let stream = futures_util::stream::iter(chunks);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut form = multer::Multipart::new(stream, boundary);
        // A body of n bytes cannot hold more than n parts.
        for _ in 0..=body.len() {
            let mut field = match form.next_field().await {
                Ok(Some(field)) => field,
                Ok(None) | Err(_) => return,
            };
            if let Some(name) = field.file_name().map(str::to_string) {
                if let Some(written) = upload_name(&name) {
                    assert!(!written.is_empty() && written != "." && written != "..");
                    assert!(!written.contains('/') && !written.contains('\\'));
                    assert!(!written.chars().any(char::is_control));
                    // In the target directory, it is one level down.
                    assert_eq!(check(&format!("dir/{written}")).map(|p| p.len()), Ok(2));
                }
            }
            let mut total = 0usize;
            loop {
                match field.chunk().await {
                    Ok(Some(bytes)) => {
                        total += bytes.len();
                        assert!(total <= body.len(), "a part larger than its body");
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
        panic!("more parts than bytes");
    });
});
