//! (b): one large file up and down warren's files API, and the local copy it
//! is compared with.
//!
//! The upload's body is a [`PatternBody`]: 1 MiB frames made on demand, so
//! the bench never holds the file. The download is consumed frame by frame,
//! each frame compared with the bytes expected at its offset. Each transfer
//! has a fresh connection; its time runs from sending the request to the
//! end of the answer (for an upload, warren answers after its fsync).

use super::pattern::{self, PatternBody};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Body;
use hyper::client::conn::http1;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Buffer of the local copy's read + write loop.
pub const COPY_BUFFER: usize = pattern::CHUNK;

/// How long a transfer of `len` bytes may take: a minute, or 5 MB/s.
pub fn timeout_for(len: u64) -> Duration {
    Duration::from_secs(60).max(Duration::from_secs(len / 5_000_000))
}

/// A request on a new connection, its hyper connection driven by a task of
/// its own (stopped when the answer is in).
async fn exchange<B>(
    server: SocketAddr,
    request: Request<B>,
) -> Result<(
    hyper::Response<hyper::body::Incoming>,
    tokio::task::JoinHandle<()>,
)>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(server)
        .await
        .with_context(|| format!("cannot connect to {server}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {server}"))?;
    let driver = tokio::spawn(async move {
        // Its errors surface as the request's own.
        let _ = connection.await;
    });
    let response = sender.send_request(request).await;
    match response {
        Ok(response) => Ok((response, driver)),
        Err(err) => {
            driver.abort();
            Err(err.into())
        }
    }
}

fn request<B>(
    server: SocketAddr,
    method: Method,
    path: &str,
    token: &str,
    body: B,
) -> Result<Request<B>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, server.to_string())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(body)
        .context("cannot build the request")
}

/// `PUT path` of `len` bytes of the pattern, streamed; the time from the
/// send to warren's answer (which comes after the file is fsynced). Checks
/// the answer: `200`/`201` and an entry of `len` bytes.
pub async fn upload(server: SocketAddr, token: &str, path: &str, len: u64) -> Result<Duration> {
    let mut put = request(server, Method::PUT, path, token, PatternBody::new(len))?;
    put.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/octet-stream"),
    );
    let limit = timeout_for(len);
    let timed = async {
        let started = Instant::now();
        let (response, driver) = exchange(server, put).await?;
        let status = response.status();
        let body = response.into_body().collect().await;
        let took = started.elapsed();
        driver.abort();
        let body = body.context("reading the answer")?.to_bytes();
        Ok::<_, anyhow::Error>((status, body, took))
    };
    let (status, body, took) = tokio::time::timeout(limit, timed)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {limit:?}"))
        .and_then(|outcome| outcome)
        .with_context(|| format!("PUT {path}"))?;
    if !matches!(status, StatusCode::OK | StatusCode::CREATED) {
        bail!("PUT {path}: {status} {}", String::from_utf8_lossy(&body));
    }
    let entry: serde_json::Value =
        serde_json::from_slice(&body).with_context(|| format!("PUT {path}: not a JSON entry"))?;
    match entry.get("size").and_then(serde_json::Value::as_u64) {
        Some(size) if size == len => Ok(took),
        _ => bail!("PUT {path}: sent {len} bytes, warren answered {entry}"),
    }
}

/// `GET path`, consumed frame by frame and compared with the pattern; the
/// time from the send to the last byte. Fails unless exactly `len` bytes of
/// the pattern come back.
pub async fn download(server: SocketAddr, token: &str, path: &str, len: u64) -> Result<Duration> {
    let get = request(server, Method::GET, path, token, Empty::<Bytes>::new())?;
    let limit = timeout_for(len);
    let timed = async {
        let started = Instant::now();
        let (response, driver) = exchange(server, get).await?;
        let consumed = consume(response, len).await;
        let took = started.elapsed();
        driver.abort();
        consumed.map(|()| took)
    };
    tokio::time::timeout(limit, timed)
        .await
        .map_err(|_| anyhow::anyhow!("not done within {limit:?}"))
        .and_then(|outcome| outcome)
        .with_context(|| format!("GET {path}"))
}

async fn consume(response: hyper::Response<hyper::body::Incoming>, len: u64) -> Result<()> {
    let status = response.status();
    let announced = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let mut body = response.into_body();
    if status != StatusCode::OK {
        let text = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        bail!("{status} {}", String::from_utf8_lossy(&text));
    }
    if announced != Some(len) {
        bail!("Content-Length {announced:?}, expected {len}");
    }
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("after {received} bytes"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if !pattern::matches(received, &data) {
            bail!("wrong bytes in {} bytes at offset {received}", data.len());
        }
        received += data.len() as u64;
        if received > len {
            bail!("more than the {len} bytes expected");
        }
    }
    if received != len {
        bail!("{received} bytes, expected {len}");
    }
    Ok(())
}

/// Writes `len` bytes of the pattern to `path` and fsyncs it: the local
/// copy's source (not timed).
pub fn write_source(path: &Path, len: u64) -> Result<()> {
    let file = write_pattern(path, len)?;
    file.sync_all()
        .with_context(|| format!("cannot fsync {}", path.display()))
}

/// Writes `len` bytes of the pattern to `path` and removes it at once, with
/// no fsync (so no disk I/O): `len` bytes of page cache that the next
/// writer of as many bytes can reuse (not timed).
///
/// On a virtual machine whose balloon takes back the memory the guest
/// leaves free (free page reporting, as on this Firecracker VM), a page the
/// guest touches for the first time since costs a fault in the host: writing
/// a GiB into fresh page cache takes ~2 s more than into pages just freed.
/// Which of the two a timed write gets depends on what ran before it, so
/// each timed write (an upload, a copy) is preceded by this, and all of them
/// start from the same state.
pub fn prime(path: &Path, len: u64) -> Result<()> {
    drop(write_pattern(path, len)?);
    std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))
}

fn write_pattern(path: &Path, len: u64) -> Result<std::fs::File> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut written = 0u64;
    while written < len {
        let chunk = pattern::expected(written, (len - written).min(COPY_BUFFER as u64) as usize);
        file.write_all(&chunk)
            .with_context(|| format!("cannot write {}", path.display()))?;
        written += chunk.len() as u64;
    }
    Ok(file)
}

/// How the local copy is made.
#[derive(Debug, Clone, Copy)]
pub enum CopyKind {
    /// `read` into a [`COPY_BUFFER`]-byte buffer and `write`, in a loop:
    /// every byte through user space, as warren's do.
    ReadWrite,
    /// `std::fs::copy` (`copy_file_range` on Linux: in the kernel).
    Std,
}

/// Copies `from` to a new `to`, then fsyncs `to` (warren fsyncs every
/// upload); the time of the whole. Removes `to` afterwards (not timed).
pub fn timed_copy(kind: CopyKind, from: &Path, to: &Path, len: u64) -> Result<Duration> {
    let started = Instant::now();
    let copied = match kind {
        CopyKind::ReadWrite => copy_loop(from, to),
        CopyKind::Std => std::fs::copy(from, to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display())),
    }
    .and_then(|copied| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(to)
            .and_then(|file| file.sync_all())
            .with_context(|| format!("cannot fsync {}", to.display()))?;
        Ok(copied)
    });
    let took = started.elapsed();
    let removed = std::fs::remove_file(to);
    let copied = copied?;
    removed.with_context(|| format!("cannot remove {}", to.display()))?;
    if copied != len {
        bail!(
            "copied {copied} bytes of {}, expected {len}",
            from.display()
        );
    }
    Ok(took)
}

fn copy_loop(from: &Path, to: &Path) -> Result<u64> {
    let mut source =
        std::fs::File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    let mut target =
        std::fs::File::create(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut copied = 0u64;
    loop {
        let read = match source.read(&mut buffer) {
            Ok(0) => return Ok(copied),
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", from.display())),
        };
        target
            .write_all(&buffer[..read])
            .with_context(|| format!("cannot write {}", to.display()))?;
        copied += read as u64;
    }
}

/// The local copy's files: `dir/source` and `dir/copy`, and `dir/prime`
/// for [`prime`].
pub struct CopyFiles {
    pub source: PathBuf,
    pub target: PathBuf,
    pub prime: PathBuf,
}

impl CopyFiles {
    pub fn in_dir(dir: &Path) -> Self {
        CopyFiles {
            source: dir.join("source"),
            target: dir.join("copy"),
            prime: dir.join("prime"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_copies_copy_every_byte_and_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let files = CopyFiles::in_dir(dir.path());
        let len = 2 * COPY_BUFFER as u64 + 777;
        write_source(&files.source, len).unwrap();
        let written = std::fs::read(&files.source).unwrap();
        assert_eq!(written.len() as u64, len);
        assert!(pattern::matches(0, &written));
        prime(&files.prime, len).unwrap();
        assert!(!files.prime.exists());
        for kind in [CopyKind::ReadWrite, CopyKind::Std] {
            timed_copy(kind, &files.source, &files.target, len).unwrap();
            assert!(!files.target.exists(), "{kind:?}");
            let wrong = timed_copy(kind, &files.source, &files.target, len + 1);
            assert!(wrong.is_err() && !files.target.exists(), "{kind:?}");
        }
    }

    #[test]
    fn large_transfers_get_more_time() {
        assert_eq!(timeout_for(1 << 20), Duration::from_secs(60));
        assert_eq!(
            timeout_for(1 << 40),
            Duration::from_secs((1 << 40) / 5_000_000)
        );
    }

    /// An in-process server with warren's upload and download answers.
    async fn server(len: u64) -> SocketAddr {
        use axum::routing::get;
        let app = axum::Router::new()
            .route(
                "/good",
                get(move || async move { axum::body::Body::new(PatternBody::new(len)) }).put(
                    move |body: axum::body::Bytes| async move {
                        let ok = pattern::matches(0, &body);
                        (
                            if ok {
                                StatusCode::CREATED
                            } else {
                                StatusCode::BAD_REQUEST
                            },
                            format!(r#"{{"size":{}}}"#, body.len()),
                        )
                    },
                ),
            )
            .route(
                "/short",
                get(move || async move { axum::body::Body::new(PatternBody::new(len - 1)) })
                    .put(|| async { (StatusCode::CREATED, r#"{"size":1}"#) }),
            )
            .layer(axum::extract::DefaultBodyLimit::disable());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        address
    }

    #[tokio::test]
    async fn transfers_are_checked() {
        let len = 3 * pattern::CHUNK as u64 + 5;
        let server = server(len).await;
        upload(server, "t", "/good", len).await.unwrap();
        download(server, "t", "/good", len).await.unwrap();
        let short = upload(server, "t", "/short", len).await.unwrap_err();
        assert!(
            format!("{short:#}").contains("warren answered"),
            "{short:#}"
        );
        let short = download(server, "t", "/short", len).await.unwrap_err();
        assert!(format!("{short:#}").contains("Content-Length"), "{short:#}");
        let missing = download(server, "t", "/missing", len).await.unwrap_err();
        assert!(format!("{missing:#}").contains("404"), "{missing:#}");
    }
}
