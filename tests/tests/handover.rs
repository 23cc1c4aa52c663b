//! Bulk bytes bypass the frame protocol: the worker opens (confined) and
//! hands the open file to the master, which sends a download with
//! `sendfile` and writes an upload into the worker's temp file itself.
//! These tests look at the master's descriptor table (`/proc/<pid>/fd`) to
//! see the hand-over happen, and check that every way a transfer can end
//! closes what the master held and leaves no partial file.

use futures_util::StreamExt;
use reqwest::Method;
use std::path::{Path, PathBuf};
use std::time::Duration;
use warren_tests::accounts::Caller;
use warren_tests::files::{channel_body, get_bytes, put};
use warren_tests::{eventually, metric_value, Server, ServerOptions};

async fn server_from(options: ServerOptions, users: &[&str]) -> (Server, Vec<Caller>) {
    let server = Server::ready(&options).await;
    let admin = Caller::admin(&server).await;
    let callers = warren_tests::accounts::users_on(&server, &admin, users).await;
    (server, callers)
}

/// The files under `dir` that process `pid` holds open (a removed one
/// ends in " (deleted)").
fn open_under(pid: u32, dir: &Path) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.starts_with(dir))
        .map(|target| target.to_string_lossy().into_owned())
        .collect()
}

/// `len` bytes that differ from one offset to the next (a shifted range
/// or a block out of place shows).
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect()
}

fn users_dir(server: &Server) -> PathBuf {
    server.data_dir.join("users")
}

async fn sendfile_bytes(server: &Server) -> f64 {
    metric_value(
        &server.metrics().await,
        "warren_files_sendfile_bytes_total",
        "",
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_and_ranges_go_from_the_workers_open_file_by_sendfile() {
    let (server, callers) = server_from(ServerOptions::workers(2), &["ann"]).await;
    let ann = &callers[0];
    let content = pattern(32 << 20);
    assert_eq!(put(ann, "big.bin", content.clone()).await.0, 201);
    let before = sendfile_bytes(&server).await;

    let whole = ann
        .request(Method::GET, "/api/v1/files/big.bin")
        .send()
        .await
        .expect("GET");
    assert_eq!(whole.status().as_u16(), 200);
    assert_eq!(whole.content_length(), Some(content.len() as u64));
    assert!(whole.bytes().await.expect("body") == content.as_slice());

    // Ranges are offsets into the same open file.
    for (range, start, end) in [
        ("bytes=1000-1999999", 1000usize, 2_000_000usize),
        ("bytes=-70000", content.len() - 70_000, content.len()),
        ("bytes=33000000-", 33_000_000, content.len()),
    ] {
        let part = ann
            .request(Method::GET, "/api/v1/files/big.bin")
            .header("range", range)
            .send()
            .await
            .expect("GET range");
        assert_eq!(part.status().as_u16(), 206, "{range}");
        assert!(
            part.bytes().await.expect("body") == content[start..end],
            "{range}: wrong bytes"
        );
    }
    let sent = sendfile_bytes(&server).await - before;
    let expected = content.len() + 1_999_000 + 70_000 + (content.len() - 33_000_000);
    assert_eq!(sent as usize, expected, "every byte went by sendfile");

    // While a download is under way, the master holds the workspace file
    // the worker opened; once the client goes, nothing.
    let workspace_file = users_dir(&server);
    let mut slow = ann
        .request(Method::GET, "/api/v1/files/big.bin")
        .send()
        .await
        .expect("GET");
    let first = slow.chunk().await.expect("chunk").expect("some bytes");
    assert_eq!(&first[..], &content[..first.len()]);
    let held = open_under(server.pid, &workspace_file);
    assert!(
        held.iter().any(|path| path.ends_with("/workspace/big.bin")),
        "the master does not hold the file it sends: {held:?}"
    );
    drop(slow);
    let released = eventually(Duration::from_secs(10), || async {
        open_under(server.pid, &workspace_file).is_empty()
    })
    .await;
    assert!(
        released,
        "a client that left mid-download left a descriptor open: {:?}",
        open_under(server.pid, &workspace_file)
    );
    // A HEAD sends headers only, and holds nothing.
    let head = ann
        .request(Method::HEAD, "/api/v1/files/big.bin")
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status().as_u16(), 200);
    assert!(open_under(server.pid, &workspace_file).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_written_by_the_master_into_the_workers_temp_file() {
    let (server, callers) = server_from(ServerOptions::workers(2), &["bob"]).await;
    let bob = &callers[0];
    let tmp = users_dir(&server).join(bob.user_id()).join("tmp");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let request = bob
        .request(Method::PUT, "/api/v1/files/up.bin")
        .body(channel_body(rx));
    let upload = tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) });
    let content = pattern(3 << 20);
    tx.send(Ok(content[..1 << 20].to_vec()))
        .await
        .expect("feed");
    // The master writes into a temp file of bob's tmp/ that it did not
    // open itself: the worker created it and handed it over.
    let handed = eventually(Duration::from_secs(10), || async {
        !open_under(server.pid, &tmp).is_empty()
    })
    .await;
    assert!(handed, "the master holds no temp file of bob's");
    for chunk in content[1 << 20..].chunks(256 << 10) {
        tx.send(Ok(chunk.to_vec())).await.expect("feed");
    }
    drop(tx);
    let status = upload.await.expect("task").expect("PUT");
    assert_eq!(status, 201);
    let (status, body) = get_bytes(bob, "up.bin").await;
    assert_eq!(status, 200);
    assert!(body == content, "the file is not what was sent");
    assert!(
        open_under(server.pid, &tmp).is_empty(),
        "the master still holds the temp file after the commit"
    );
    assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);

    // A client that leaves mid-upload: the master closes the file, the
    // worker removes it, nothing appears.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let request = bob
        .request(Method::PUT, "/api/v1/files/half.bin")
        .body(channel_body(rx));
    let upload = tokio::spawn(async move { request.send().await });
    tx.send(Ok(vec![1; 1 << 20])).await.expect("feed");
    assert!(
        eventually(Duration::from_secs(10), || async {
            !open_under(server.pid, &tmp).is_empty()
        })
        .await
    );
    tx.send(Err(std::io::Error::other("client gave up")))
        .await
        .expect("feed");
    let _ = upload.await;
    let cleaned = eventually(Duration::from_secs(10), || async {
        open_under(server.pid, &tmp).is_empty()
            && std::fs::read_dir(&tmp).is_ok_and(|d| d.count() == 0)
    })
    .await;
    assert!(
        cleaned,
        "an abandoned upload left its temp file or descriptor"
    );
    assert_eq!(get_bytes(bob, "half.bin").await.0, 404);

    // A declared length over the quota is refused before any byte is
    // written, and no descriptor is handed over.
    let too_big = {
        use std::io::{Read, Write};
        let address = server.base_url.trim_start_matches("http://").to_string();
        let token = bob.token.clone();
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(&address).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let request = format!(
                "PUT /api/v1/files/huge.bin HTTP/1.1\r\nHost: {address}\r\n\
                 Authorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
                1u64 << 40
            );
            stream.write_all(request.as_bytes()).expect("write");
            let mut answer = [0u8; 64];
            let read = stream.read(&mut answer).expect("an answer before the body");
            String::from_utf8_lossy(&answer[..read]).into_owned()
        })
        .await
        .expect("task")
    };
    assert!(too_big.starts_with("HTTP/1.1 507"), "{too_big}");
    assert!(open_under(server.pid, &tmp).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_hand_off_and_commit_leaves_nothing() {
    let (server, callers) = server_from(ServerOptions::workers(1), &["cat"]).await;
    let cat = &callers[0];
    assert_eq!(put(cat, "kept.bin", "old content").await.0, 201);
    let tmp = users_dir(&server).join(cat.user_id()).join("tmp");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let request = cat
        .request(Method::PUT, "/api/v1/files/kept.bin")
        .body(channel_body(rx));
    let upload = tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) });
    tx.send(Ok(vec![7; 2 << 20])).await.expect("feed");
    let handed = eventually(Duration::from_secs(10), || async {
        !open_under(server.pid, &tmp).is_empty()
    })
    .await;
    assert!(handed, "the temp file was never handed over");
    for pid in server.worker_pids() {
        warren_tests::send_signal(pid, rustix::process::Signal::KILL);
    }
    // The upload fails at once (the master watches the worker that handed
    // the file over), without waiting for the rest of the body.
    let status = tokio::time::timeout(Duration::from_secs(10), upload)
        .await
        .expect("the upload answers without the rest of its body")
        .expect("task");
    if let Ok(status) = status {
        assert_eq!(status, 503, "an upload whose worker died is unavailable");
    }
    drop(tx);
    let closed = eventually(Duration::from_secs(10), || async {
        open_under(server.pid, &tmp).is_empty()
    })
    .await;
    assert!(
        closed,
        "the master kept the dead worker's temp file open: {:?}",
        open_under(server.pid, &tmp)
    );
    server.wait_ready().await;
    let (status, body) = get_bytes(cat, "kept.bin").await;
    assert_eq!((status, body.as_slice()), (200, b"old content".as_slice()));
    // The new worker swept the leftover temp file on first sight of cat.
    assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_parallel_downloads_hold_a_descriptor_each_at_most() {
    let options = ServerOptions::workers(2)
        .arg("--max-transfers-per-user")
        .arg("256")
        .arg("--max-connections-per-address")
        .arg("1024");
    let (server, callers) = server_from(options, &["dan"]).await;
    let dan = &callers[0];
    let content = pattern(16 << 20);
    assert_eq!(put(dan, "shared.bin", content.clone()).await.0, 201);
    let workspace = users_dir(&server).join(dan.user_id()).join("workspace");
    const DOWNLOADS: usize = 200;
    // Each download reads its first bytes, then waits until all have.
    let started = std::sync::Arc::new(tokio::sync::Barrier::new(DOWNLOADS + 1));
    let finish = std::sync::Arc::new(tokio::sync::Barrier::new(DOWNLOADS + 1));
    let mut downloads = Vec::new();
    for _ in 0..DOWNLOADS {
        let request = dan
            .bearer()
            .request(Method::GET, "/api/v1/files/shared.bin");
        let (started, finish) = (started.clone(), finish.clone());
        downloads.push(tokio::spawn(async move {
            let mut response = request.send().await.expect("GET");
            assert_eq!(response.status().as_u16(), 200);
            let mut got = response.chunk().await.expect("chunk").expect("bytes").len();
            started.wait().await;
            finish.wait().await;
            let mut rest = response.bytes_stream();
            while let Some(chunk) = rest.next().await {
                got += chunk.expect("chunk").len();
            }
            got
        }));
    }
    started.wait().await;
    let held = open_under(server.pid, &workspace).len();
    assert!(
        (1..=DOWNLOADS).contains(&held),
        "{held} descriptors held for {DOWNLOADS} downloads in flight"
    );
    finish.wait().await;
    for download in downloads {
        assert_eq!(download.await.expect("task"), content.len());
    }
    let released = eventually(Duration::from_secs(10), || async {
        open_under(server.pid, &workspace).is_empty()
    })
    .await;
    assert!(released, "descriptors outlived their downloads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_of_unknown_length_keep_only_their_own_quota() {
    // 44 MB in four parts, and as four chunked PUTs, under a 50 MB quota:
    // what an upload reserves ahead of its bytes must not count against
    // the others (nor stay reserved once its length is known).
    let options = ServerOptions::workers(1)
        .arg("--default-quota")
        .arg("50000000");
    let (_server, callers) = server_from(options, &["eve"]).await;
    let eve = &callers[0];
    let part = pattern(11_000_000);
    let mut form = reqwest::multipart::Form::new();
    for name in ["a.bin", "b.bin", "c.bin", "d.bin"] {
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(part.clone()).file_name(name),
        );
    }
    let response = eve
        .request(Method::POST, "/api/v1/upload")
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let status = response.status().as_u16();
    assert_eq!(status, 201, "{}", response.text().await.unwrap_or_default());
    for name in ["a.bin", "b.bin", "c.bin", "d.bin"] {
        assert_eq!(eve.delete(&format!("/api/v1/files/{name}")).await.0, 204);
    }
    let mut uploads = Vec::new();
    for name in ["a.bin", "b.bin", "c.bin", "d.bin"] {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
        let request = eve
            .request(Method::PUT, &format!("/api/v1/files/{name}"))
            .body(channel_body(rx));
        uploads.push(tokio::spawn(async move {
            request.send().await.map(|r| r.status().as_u16())
        }));
        let part = part.clone();
        tokio::spawn(async move {
            for chunk in part.chunks(1 << 20) {
                if tx.send(Ok(chunk.to_vec())).await.is_err() {
                    return;
                }
            }
        });
    }
    for upload in uploads {
        assert_eq!(upload.await.expect("task").expect("PUT"), 201);
    }
}

/// Reads one HTTP/1.1 response from `stream`: status, and the body (none
/// for a HEAD).
fn read_response(
    stream: &mut std::io::BufReader<std::net::TcpStream>,
    head: bool,
) -> (u16, Vec<u8>) {
    use std::io::{BufRead, Read};
    let mut line = String::new();
    stream.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"));
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        stream.read_line(&mut header).expect("header");
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("content-length");
            }
        }
    }
    let mut body = vec![0; if head { 0 } else { length }];
    stream.read_exact(&mut body).expect("body");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_of_two_users_on_one_connection_get_their_own_bytes() {
    // As nginx reuses one upstream connection for many clients: file
    // bodies sent by sendfile and ordinary answers, one after another on
    // one connection, each with exactly its own bytes.
    let (server, callers) = server_from(ServerOptions::workers(2), &["fay", "gus"]).await;
    let (fay, gus) = (&callers[0], &callers[1]);
    let fay_big = pattern(3 << 20);
    let gus_big: Vec<u8> = pattern(5 << 20).into_iter().map(|b| !b).collect();
    assert_eq!(put(fay, "big.bin", fay_big.clone()).await.0, 201);
    assert_eq!(put(gus, "big.bin", gus_big.clone()).await.0, 201);
    assert_eq!(put(gus, "small.txt", "gus's small file").await.0, 201);
    let (fay_token, gus_token) = (fay.token.clone(), gus.token.clone());
    let address = server.base_url.trim_start_matches("http://").to_string();
    let requests: Vec<(&str, &str, String, &str)> = vec![
        ("GET", "big.bin", fay_token.clone(), "bytes=100-"),
        ("GET", "big.bin", gus_token.clone(), ""),
        ("HEAD", "big.bin", fay_token.clone(), ""),
        ("GET", "small.txt", gus_token.clone(), ""),
        ("GET", "big.bin", gus_token.clone(), "bytes=-70000"),
        ("GET", "big.bin", fay_token.clone(), "bytes=0-0"),
        ("GET", "big.bin", fay_token, ""),
    ];
    let mut text = String::new();
    for (method, path, token, range) in &requests {
        text.push_str(&format!(
            "{method} /api/v1/files/{path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n"
        ));
        if !range.is_empty() {
            text.push_str(&format!("Range: {range}\r\n"));
        }
        text.push_str("\r\n");
    }
    let answers = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(&address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        stream.write_all(text.as_bytes()).expect("pipeline");
        let mut reader = std::io::BufReader::new(stream);
        requests
            .iter()
            .map(|(method, ..)| read_response(&mut reader, *method == "HEAD"))
            .collect::<Vec<_>>()
    })
    .await
    .expect("task");
    let expected: Vec<(u16, &[u8])> = vec![
        (206, &fay_big[100..]),
        (200, &gus_big[..]),
        (200, b""),
        (200, b"gus's small file"),
        (206, &gus_big[gus_big.len() - 70_000..]),
        (206, &fay_big[..1]),
        (200, &fay_big[..]),
    ];
    for (n, ((status, body), (want_status, want_body))) in
        answers.iter().zip(expected.iter()).enumerate()
    {
        assert_eq!(status, want_status, "answer {n}");
        assert!(body.as_slice() == *want_body, "answer {n}: wrong bytes");
    }
}
