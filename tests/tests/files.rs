//! Workspace files, end to end: confinement against a corpus of path
//! attacks, isolation between users, atomic replacement under concurrency
//! and crashes, and the HTTP semantics of ranges, etags and preconditions.

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::json;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;
use warren_tests::accounts::Caller;
use warren_tests::files::{channel_body, get_bytes, put, workspace_of};
use warren_tests::{eventually, metric_value, Server, ServerOptions};

async fn server_with(users: &[&str]) -> (Server, Vec<Caller>) {
    server_from(ServerOptions::workers(2), users).await
}

async fn server_from(options: ServerOptions, users: &[&str]) -> (Server, Vec<Caller>) {
    let server = Server::ready(&options).await;
    let admin = Caller::admin(&server).await;
    let callers = warren_tests::accounts::users_on(&server, &admin, users).await;
    (server, callers)
}

/// Sends `method raw_target` exactly as given (no client-side path
/// normalisation) and returns the status code.
fn raw_status(server: &Server, token: &str, method: &str, target: &str) -> u16 {
    let address = server.base_url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let body = r#"{"to":"zzz"}"#;
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// Every file under `dir` (relative paths), sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            out.push(relative);
            if is_dir {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_attacks_are_refused_and_nothing_outside_is_touched() {
    let (server, callers) = server_with(&["mallory"]).await;
    let mallory = &callers[0];
    let (status, _) = put(mallory, "inside.txt", "mine").await;
    assert_eq!(status, 201);
    let workspace = workspace_of(&server, mallory);
    // Bait outside the workspace, and links to it made directly on disk.
    let canary = server.data_dir.join("canary.txt");
    std::fs::write(&canary, "do not touch").expect("canary");
    std::os::unix::fs::symlink(&canary, workspace.join("link-file")).expect("symlink");
    std::os::unix::fs::symlink(&server.data_dir, workspace.join("link-dir")).expect("symlink");
    std::os::unix::fs::symlink("../..", workspace.join("link-up")).expect("symlink");
    std::os::unix::fs::symlink("loop-a", workspace.join("loop-b")).expect("symlink");
    std::os::unix::fs::symlink("loop-b", workspace.join("loop-a")).expect("symlink");
    let before = tree(&server.data_dir);

    let long_name = "n".repeat(256);
    let long_path = format!("{}/x", vec!["d"; 2100].join("/"));
    let attacks: Vec<String> = vec![
        "..".into(),
        "../canary.txt".into(),
        "../../canary.txt".into(),
        "a/../../canary.txt".into(),
        "inside.txt/../../canary.txt".into(),
        "./inside.txt".into(),
        "%2e%2e/canary.txt".into(),
        "%2E%2E%2F%2E%2E%2Fcanary.txt".into(),
        "..%2f..%2fcanary.txt".into(),
        ".%2e/.%2e/canary.txt".into(),
        "%252e%252e/%252e%252e/canary.txt".into(),
        "/etc/passwd".into(),
        "%2Fetc%2Fpasswd".into(),
        "..%5c..%5ccanary.txt".into(),
        "a%5cb".into(),
        "a%00b".into(),
        "inside.txt%00.png".into(),
        "%c0%ae%c0%ae/canary.txt".into(),
        "%ff%fe".into(),
        long_name.clone(),
        long_path.clone(),
        "link-file".into(),
        "link-dir/canary.txt".into(),
        "link-dir".into(),
        "link-up/canary.txt".into(),
        "link-up/users".into(),
        "loop-a".into(),
        "loop-a/x".into(),
    ];
    for attack in &attacks {
        // A link itself (not a path through it) may be replaced or deleted
        // like any entry: checked on its own below.
        if ["link-file", "link-dir", "loop-a"].contains(&attack.as_str()) {
            for method in ["GET", "HEAD"] {
                let status = raw_status(
                    &server,
                    &mallory.token,
                    method,
                    &format!("/api/v1/files/{attack}"),
                );
                assert_eq!(status, 404, "{method} {attack}");
            }
            continue;
        }
        for method in ["GET", "HEAD", "PUT", "DELETE"] {
            let target = format!("/api/v1/files/{attack}");
            let status = raw_status(&server, &mallory.token, method, &target);
            assert!(
                [400, 404].contains(&status)
                    || (method == "PUT" && attack.starts_with("link-file")),
                "{method} {attack:.80}: {status}"
            );
        }
        for op in ["move", "copy"] {
            // The attack as the source, then as the destination.
            let status = raw_status(
                &server,
                &mallory.token,
                "POST",
                &format!("/api/v1/files/{attack}?op={op}"),
            );
            assert!(
                [400, 404].contains(&status),
                "{op} from {attack:.80}: {status}"
            );
        }
        let status = raw_status(
            &server,
            &mallory.token,
            "POST",
            &format!("/api/v1/files/{attack}?op=mkdir&parents=true"),
        );
        // Double encoding decodes once, to names like `%2e%2e`: harmless
        // names inside the workspace, which mkdir may create.
        let inside = attack.starts_with("%252e");
        assert!(
            [400, 404].contains(&status) || (inside && status == 201),
            "mkdir {attack:.80}: {status}"
        );
    }
    // Destinations that try to leave.
    for to in [
        "../escaped",
        "../../escaped",
        "/tmp/escaped",
        "link-dir/escaped",
        "link-up/escaped",
    ] {
        for op in ["move", "copy"] {
            let response = mallory
                .request(Method::POST, &format!("/api/v1/files/inside.txt?op={op}"))
                .json(&json!({ "to": to }))
                .send()
                .await
                .expect("POST");
            let status = response.status().as_u16();
            assert!([400, 404].contains(&status), "{op} to {to}: {status}");
        }
    }
    assert_eq!(
        std::fs::read_to_string(&canary).expect("canary"),
        "do not touch"
    );
    let after = tree(&server.data_dir);
    let outside = |list: &[String]| -> Vec<String> {
        list.iter()
            .filter(|p| {
                !p.contains("/workspace/")
                    && !p.contains("/tmp/")
                    && !p.starts_with("run/")
                    && !p.starts_with("warren.db")
            })
            .cloned()
            .collect()
    };
    assert_eq!(
        outside(&before),
        outside(&after),
        "something was written outside a workspace"
    );
    // Writing to a link replaces the link, never its target; deleting a
    // link deletes the link only. A file where there was a link is a new
    // file: 201.
    assert_eq!(put(mallory, "link-file", "replaced").await.0, 201);
    assert_eq!(
        std::fs::read_to_string(&canary).expect("canary"),
        "do not touch"
    );
    assert!(std::fs::symlink_metadata(workspace.join("link-file")).is_ok_and(|m| m.is_file()));
    assert_eq!(mallory.delete("/api/v1/files/link-dir").await.0, 204);
    assert!(server.data_dir.join("warren.db").exists());
    assert!(std::fs::symlink_metadata(workspace.join("link-dir")).is_err());
    let (status, body) = get_bytes(mallory, "inside.txt").await;
    assert_eq!((status, body.as_slice()), (200, b"mine".as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_cannot_reach_each_others_files() {
    let (server, callers) = server_with(&["alice", "bob"]).await;
    let (alice, bob) = (&callers[0], &callers[1]);
    assert_eq!(
        put(alice, "secret/plan.txt?parents=true", "alice's plan")
            .await
            .0,
        201
    );
    let alice_id = alice.user_id();
    let paths = [
        "secret/plan.txt".to_string(),
        "secret".to_string(),
        format!("../{alice_id}/workspace/secret/plan.txt"),
        format!("../../users/{alice_id}/workspace/secret"),
        format!("%2e%2e/{alice_id}/workspace/secret/plan.txt"),
    ];
    for path in &paths {
        // PUT last: it may create bob's own file of that name.
        for method in ["GET", "HEAD", "DELETE", "POST", "PUT"] {
            let target = if method == "POST" {
                format!("/api/v1/files/{path}?op=move")
            } else {
                format!("/api/v1/files/{path}")
            };
            let status = raw_status(&server, &bob.token, method, &target);
            if method == "PUT" && !path.contains("..") && !path.contains("%2e") {
                // Bob may create his own file of that name: never alice's.
                assert!(
                    [201, 404].contains(&status),
                    "bob {method} {path}: {status}"
                );
            } else {
                assert!(
                    [400, 404].contains(&status),
                    "bob {method} {path}: {status}"
                );
            }
        }
    }
    // Moving onto alice's paths from bob's own file.
    assert_eq!(put(bob, "mine.txt", "bob's").await.0, 201);
    let target = format!("../{alice_id}/workspace/secret/plan.txt");
    let response = bob
        .request(Method::POST, "/api/v1/files/mine.txt?op=move")
        .json(&json!({ "to": target }))
        .send()
        .await
        .expect("move");
    assert_eq!(response.status(), 400);
    // Alice's data is intact, and bob's listing is his own.
    let (status, body) = get_bytes(alice, "secret/plan.txt").await;
    assert_eq!((status, body.as_slice()), (200, b"alice's plan".as_slice()));
    let (status, listing) = bob.get("/api/v1/files").await;
    assert_eq!(status, 200);
    assert!(!listing.to_string().contains("plan.txt"), "{listing}");
    assert!(!listing.to_string().contains("alice's"), "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_readers_see_whole_files() {
    let (_server, callers) = server_with(&["carol"]).await;
    let carol = callers[0].clone();
    const SIZE: usize = 512 * 1024;
    assert_eq!(put(&carol, "shared.bin", vec![0u8; SIZE]).await.0, 201);
    let writers: Vec<_> = (1..=6u8)
        .map(|n| {
            let carol = carol.clone();
            tokio::spawn(async move {
                for _ in 0..3 {
                    let (status, body) = put(&carol, "shared.bin", vec![n; SIZE]).await;
                    assert!([200, 201].contains(&status), "{status}: {body}");
                }
            })
        })
        .collect();
    let reader = {
        let carol = carol.clone();
        tokio::spawn(async move {
            let mut reads = 0;
            for _ in 0..40 {
                let (status, body) = get_bytes(&carol, "shared.bin").await;
                assert_eq!(status, 200);
                assert_eq!(body.len(), SIZE, "a torn read");
                assert!(body.iter().all(|b| *b == body[0]), "a mixed read");
                reads += 1;
            }
            reads
        })
    };
    for writer in writers {
        writer.await.expect("writer");
    }
    assert_eq!(reader.await.expect("reader"), 40);
    let (_, body) = get_bytes(&carol, "shared.bin").await;
    assert_eq!(body.len(), SIZE);
    assert!(body.iter().all(|b| *b == body[0] && *b != 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_upload_leaves_no_partial_file() {
    let (server, callers) = server_with(&["dave"]).await;
    let dave = &callers[0];
    assert_eq!(put(dave, "big.bin", "old content").await.0, 201);
    let tmp = server
        .data_dir
        .join("users")
        .join(dave.user_id())
        .join("tmp");
    // A body that trickles: 1 MiB, then waits.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = channel_body(rx);
    let upload = {
        let request = dave
            .request(Method::PUT, "/api/v1/files/big.bin")
            .body(body);
        tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
    };
    for _ in 0..16 {
        tx.send(Ok(vec![7u8; 64 * 1024])).await.expect("feed");
    }
    let started = eventually(Duration::from_secs(10), || async {
        std::fs::read_dir(&tmp).is_ok_and(|d| d.count() > 0)
    })
    .await;
    assert!(started, "the upload never reached the worker's temp file");
    for pid in server.worker_pids() {
        warren_tests::send_signal(pid, rustix::process::Signal::KILL);
    }
    let status = tokio::time::timeout(Duration::from_secs(10), upload)
        .await
        .expect("the upload answers")
        .expect("task");
    if let Ok(status) = status {
        assert_eq!(status, 503, "an interrupted upload fails as unavailable");
    }
    drop(tx);
    server.wait_ready().await;
    let (status, body) = get_bytes(dave, "big.bin").await;
    assert_eq!((status, body.as_slice()), (200, b"old content".as_slice()));
    // The new worker removed the leftover temp file on first sight of dave.
    assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_upload_leaves_nothing() {
    let (server, callers) = server_with(&["erin"]).await;
    let erin = &callers[0];
    let tmp = server
        .data_dir
        .join("users")
        .join(erin.user_id())
        .join("tmp");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let request = erin
        .request(Method::PUT, "/api/v1/files/half.bin")
        .body(channel_body(rx));
    let upload = tokio::spawn(async move { request.send().await });
    for _ in 0..8 {
        tx.send(Ok(vec![1u8; 64 * 1024])).await.expect("feed");
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            std::fs::read_dir(&tmp).is_ok_and(|d| d.count() > 0)
        })
        .await
    );
    // The client fails mid-body: the connection drops.
    tx.send(Err(std::io::Error::other("client gave up")))
        .await
        .expect("feed");
    let _ = upload.await;
    let cleaned = eventually(Duration::from_secs(5), || async {
        std::fs::read_dir(&tmp).is_ok_and(|d| d.count() == 0)
    })
    .await;
    assert!(cleaned, "the temp file outlived the upload");
    assert_eq!(get_bytes(erin, "half.bin").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_times_out_and_leaves_nothing() {
    let options = ServerOptions::workers(1)
        .arg("--upload-idle-timeout")
        .arg("1s");
    let (server, callers) = server_from(options, &["gina"]).await;
    let gina = &callers[0];
    let tmp = server
        .data_dir
        .join("users")
        .join(gina.user_id())
        .join("tmp");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let request = gina
        .request(Method::PUT, "/api/v1/files/stalled.bin")
        .body(channel_body(rx));
    let started = std::time::Instant::now();
    let upload = tokio::spawn(async move { request.send().await });
    tx.send(Ok(vec![1u8; 64 * 1024])).await.expect("feed");
    // Then nothing more, with the connection left open (`tx` lives on).
    let response = upload
        .await
        .expect("join")
        .expect("an answer, not a hang-up");
    assert_eq!(response.status(), 408);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(10));
    let cleaned = eventually(Duration::from_secs(5), || async {
        std::fs::read_dir(&tmp).is_ok_and(|d| d.count() == 0)
    })
    .await;
    assert!(cleaned, "the temp file outlived the upload");
    assert_eq!(get_bytes(gina, "stalled.bin").await.0, 404);
    let (status, usage) = gina.get("/api/v1/me/usage").await;
    assert_eq!(status, 200);
    assert_eq!(usage["bytes_used"], 0, "{usage}");
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_transfers_per_user_are_capped() {
    let options = ServerOptions::workers(1)
        .arg("--max-transfers-per-user")
        .arg("1");
    let (server, callers) = server_from(options, &["hana", "ivan"]).await;
    let (hana, ivan) = (&callers[0], &callers[1]);
    let tmp = server
        .data_dir
        .join("users")
        .join(hana.user_id())
        .join("tmp");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let request = hana
        .request(Method::PUT, "/api/v1/files/first.bin")
        .body(channel_body(rx));
    let first = tokio::spawn(async move { request.send().await });
    tx.send(Ok(vec![1u8; 1024])).await.expect("feed");
    assert!(
        eventually(Duration::from_secs(10), || async {
            std::fs::read_dir(&tmp).is_ok_and(|d| d.count() > 0)
        })
        .await
    );
    // A second streamed transfer of hana's waits for the first.
    let response = hana
        .request(Method::PUT, "/api/v1/files/second.bin")
        .body("second")
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    // Another user is not affected.
    assert_eq!(put(ivan, "other.bin", "ivan's").await.0, 201);
    drop(tx);
    let response = first.await.expect("join").expect("first upload");
    assert_eq!(response.status(), 201);
    // Done: the slot is free again.
    assert_eq!(put(hana, "second.bin", "second").await.0, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_etags_and_preconditions_follow_rfc_9110() {
    let (_server, callers) = server_with(&["frank"]).await;
    let frank = &callers[0];
    let (status, created) = put(frank, "notes/a.txt?parents=true", "0123456789").await;
    assert_eq!(status, 201, "{created}");
    let etag = created["etag"].as_str().expect("etag").to_string();
    let get = |headers: Vec<(&'static str, String)>| {
        let mut request = frank.request(Method::GET, "/api/v1/files/notes/a.txt");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let response = get(vec![]).await.expect("get");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], etag.as_str());
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.headers()["accept-ranges"], "bytes");
    assert!(response.headers().contains_key("last-modified"));
    /// Request headers, then the expected status, Content-Range and body.
    type Case<'a> = (Vec<(&'static str, String)>, u16, Option<&'a str>, &'a [u8]);
    let cases: Vec<Case> = vec![
        (
            vec![("range", "bytes=2-4".into())],
            206,
            Some("bytes 2-4/10"),
            b"234",
        ),
        (
            vec![("range", "bytes=7-".into())],
            206,
            Some("bytes 7-9/10"),
            b"789",
        ),
        (
            vec![("range", "bytes=-3".into())],
            206,
            Some("bytes 7-9/10"),
            b"789",
        ),
        (
            vec![("range", "bytes=5-100".into())],
            206,
            Some("bytes 5-9/10"),
            b"56789",
        ),
        (
            vec![("range", "bytes=10-".into())],
            416,
            Some("bytes */10"),
            b"",
        ),
        (
            vec![("range", "bytes=0-1,4-5".into())],
            200,
            None,
            b"0123456789",
        ),
        (
            vec![
                ("range", "bytes=2-4".into()),
                ("if-range", "\"other\"".into()),
            ],
            200,
            None,
            b"0123456789",
        ),
        (
            vec![("range", "bytes=2-4".into()), ("if-range", etag.clone())],
            206,
            Some("bytes 2-4/10"),
            b"234",
        ),
        (vec![("if-none-match", etag.clone())], 304, None, b""),
        (vec![("if-none-match", format!("W/{etag}"))], 304, None, b""),
        (
            vec![("if-none-match", "\"other\"".into())],
            200,
            None,
            b"0123456789",
        ),
        (vec![("if-match", "\"other\"".into())], 412, None, b""),
        (vec![("if-match", etag.clone())], 200, None, b"0123456789"),
    ];
    for (headers, status, content_range, body) in cases {
        let label = format!("{headers:?}");
        let response = get(headers).await.expect("get");
        assert_eq!(response.status().as_u16(), status, "{label}");
        assert_eq!(
            response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok()),
            content_range,
            "{label}"
        );
        let bytes = response.bytes().await.expect("body");
        if status != 416 && status != 412 {
            assert_eq!(bytes.as_ref(), body, "{label}");
        }
    }
    let head = frank
        .request(Method::HEAD, "/api/v1/files/notes/a.txt")
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "10");
    assert!(
        head.headers()["content-security-policy"]
            .to_str()
            .expect("csp")
            .starts_with("sandbox"),
        "a file's bytes never run as warren's origin"
    );

    // Conditional writes.
    let put_with = |name: &'static str, value: String, body: &'static str| {
        frank
            .request(Method::PUT, "/api/v1/files/notes/a.txt")
            .header(name, value)
            .body(body)
            .send()
    };
    let response = put_with("if-none-match", "*".into(), "x")
        .await
        .expect("put");
    assert_eq!(response.status(), 412, "exists already");
    let response = put_with("content-range", "bytes 0-0/10".into(), "x")
        .await
        .expect("put");
    assert_eq!(response.status(), 400, "a partial PUT is refused");
    let response = put_with("if-match", "\"stale\"".into(), "x")
        .await
        .expect("put");
    assert_eq!(response.status(), 412);
    let response = put_with("if-match", etag.clone(), "new")
        .await
        .expect("put");
    assert_eq!(response.status(), 200);
    let new_etag = response.headers()["etag"]
        .to_str()
        .expect("etag")
        .to_string();
    assert_ne!(new_etag, etag);
    let response = put_with("if-match", etag.clone(), "newer")
        .await
        .expect("put");
    assert_eq!(response.status(), 412, "the old etag is stale now");
    let response = frank
        .request(Method::PUT, "/api/v1/files/notes/a.txt")
        .header("if-match", new_etag.clone())
        .header("if-none-match", "*")
        .body("never")
        .send()
        .await
        .expect("put");
    assert_eq!(
        response.status(),
        412,
        "If-Match holds, then If-None-Match: * fails (RFC 9110 13.2.2)"
    );
    let response = put_with("if-none-match", new_etag.clone(), "x")
        .await
        .expect("put");
    assert_eq!(response.status(), 400, "only If-None-Match: * on PUT");
    assert_eq!(get_bytes(frank, "notes/a.txt").await.1, b"new");
    let response = frank
        .request(Method::PUT, "/api/v1/files/notes/b.txt")
        .header("if-none-match", "*")
        .body("b")
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 201);

    // Directories: listing, paging, mkdir, move, copy, delete.
    let (status, _) = frank
        .post("/api/v1/files/notes/sub?op=mkdir", json!({}))
        .await;
    assert_eq!(status, 201);
    let (status, page) = frank.get("/api/v1/files/notes?limit=2").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["a.txt", "b.txt"]);
    let cursor = page["next_cursor"].as_str().expect("cursor").to_string();
    let (_, page) = frank
        .get(&format!("/api/v1/files/notes?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(page["entries"][0]["name"], "sub");
    assert!(page["next_cursor"].is_null());
    let (status, _) = frank
        .post(
            "/api/v1/files/notes/b.txt?op=move",
            json!({"to": "notes/a.txt"}),
        )
        .await;
    assert_eq!(status, 409, "move never replaces");
    let (status, _) = frank
        .post("/api/v1/files/notes?op=copy", json!({"to": "notes-copy"}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(get_bytes(frank, "notes-copy/a.txt").await.1, b"new");
    let (status, _) = frank.delete("/api/v1/files/notes").await;
    assert_eq!(status, 409, "not empty");
    let (status, _) = frank.delete("/api/v1/files/notes?recursive=true").await;
    assert_eq!(status, 204);
    assert_eq!(get_bytes(frank, "notes/a.txt").await.0, 404);
    let (status, body) = put(frank, "missing/parent.txt", "x").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = put(frank, "notes-copy", "x").await;
    assert_eq!(status, 409, "a directory: {body}");
    let (_, body) = frank.post("/api/v1/files/x?op=explode", json!({})).await;
    assert_eq!(body["error"]["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_streams_both_ways() {
    let (_server, callers) = server_with(&["grace"]).await;
    let grace = &callers[0];
    let size = 24 * 1024 * 1024;
    let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let (status, body) = put(grace, "large.bin", content.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["size"], size);
    let response = grace
        .request(Method::GET, "/api/v1/files/large.bin")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    let mut received = Vec::with_capacity(size);
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        received.extend_from_slice(&chunk.expect("chunk"));
    }
    assert!(received == content, "the download differs from the upload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_answers_507_and_keeps_the_old_file() {
    let server = Server::ready(&ServerOptions::workers(2)).await;
    let admin = Caller::admin(&server).await;
    let heidi_id = admin.create_user("heidi", "heidi-password").await;
    let (status, body) = admin
        .send(
            Method::PATCH,
            &format!("/api/v1/admin/users/{heidi_id}"),
            Some(json!({"storage_quota_bytes": 100_000})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let heidi = Caller::login(&server, "heidi", "heidi-password")
        .await
        .bearer();
    assert_eq!(put(&heidi, "a.bin", vec![1u8; 60_000]).await.0, 201);
    assert_eq!(
        put(&heidi, "a.bin", vec![2u8; 90_000]).await.0,
        200,
        "a replacement counts once"
    );
    let (status, usage_before) = heidi.get("/api/v1/me/usage").await;
    assert_eq!(status, 200);
    // Charged by the blocks it takes: 90,000 bytes are 22 blocks of 4 KiB.
    assert_eq!(
        usage_before,
        json!({"bytes_used": 90_112, "files": 1, "entries": 1,
               "quota_bytes": 100_000, "quota_files": 100_000})
    );

    let (status, body) = put(&heidi, "b.bin", vec![3u8; 20_000]).await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    let (status, body) = put(&heidi, "a.bin", vec![4u8; 100_001]).await;
    assert_eq!(status, 507, "{body}");
    let (status, content) = get_bytes(&heidi, "a.bin").await;
    assert_eq!(status, 200);
    assert!(
        content.len() == 90_000 && content.iter().all(|b| *b == 2),
        "the old file is intact"
    );
    assert_eq!(get_bytes(&heidi, "b.bin").await.0, 404);
    let (status, _) = heidi
        .post("/api/v1/files/a.bin?op=copy", json!({"to": "c.bin"}))
        .await;
    assert_eq!(status, 507);
    assert_eq!(
        heidi.get("/api/v1/me/usage").await.1,
        usage_before,
        "usage unchanged"
    );
    let tmp = server.data_dir.join("users").join(&heidi_id).join("tmp");
    assert_eq!(
        std::fs::read_dir(tmp).expect("tmp").count(),
        0,
        "no temp file left"
    );

    // An admin raises the quota: it applies at once.
    admin
        .send(
            Method::PATCH,
            &format!("/api/v1/admin/users/{heidi_id}"),
            Some(json!({"storage_quota_bytes": 200_000})),
        )
        .await;
    assert_eq!(put(&heidi, "b.bin", vec![3u8; 20_000]).await.0, 201);
    let (status, all) = admin.get("/api/v1/admin/usage").await;
    assert_eq!(status, 200, "{all}");
    let row = all
        .as_array()
        .expect("rows")
        .iter()
        .find(|row| row["username"] == "heidi")
        .expect("heidi's row")
        .clone();
    assert_eq!(row["bytes_used"], 90_112 + 20_480);
    assert_eq!(row["files"], 2);
    assert_eq!(row["entries"], 2);
    assert_eq!(row["quota_bytes"], 200_000);
    let (status, _) = heidi.get("/api/v1/admin/usage").await;
    assert_eq!(status, 403);
    let metrics = server.metrics().await;
    let value = |name: &str, labels: &str| metric_value(&metrics, name, labels).unwrap_or(0.0);
    assert_eq!(value("warren_quota_rejections_total", ""), 3.0, "{metrics}");
    assert_eq!(
        value(
            "warren_file_operations_total",
            "op=\"write\",result=\"quota_exceeded\""
        ),
        2.0
    );
    assert_eq!(
        value(
            "warren_file_operations_total",
            "op=\"copy\",result=\"quota_exceeded\""
        ),
        1.0
    );
    assert_eq!(
        value("warren_file_operations_total", "op=\"write\",result=\"ok\""),
        3.0
    );
    assert!(value("warren_file_bytes_total", "direction=\"in\"") >= 170_000.0);
    assert!(value("warren_file_bytes_total", "direction=\"out\"") >= 90_000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_one_object_kept_across_restarts() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(data_dir.path(), &ServerOptions::workers(1));
    server.wait_ready().await;
    let admin = Caller::admin(&server).await;
    let (status, settings) = admin.get("/api/v1/me/settings").await;
    assert_eq!((status, settings), (200, json!({})));
    let mine = json!({"theme": "dark", "editor": {"tabs": 4}});
    let (status, stored) = admin
        .send(Method::PUT, "/api/v1/me/settings", Some(mine.clone()))
        .await;
    assert_eq!((status, &stored), (200, &mine));
    let (status, body) = admin
        .send(Method::PUT, "/api/v1/me/settings", Some(json!([1, 2])))
        .await;
    assert_eq!(status, 422, "{body}");
    let huge = json!({ "x": "y".repeat(70 * 1024) });
    let (status, body) = admin
        .send(Method::PUT, "/api/v1/me/settings", Some(huge))
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(server.stop().code(), Some(0));
    let mut again = Server::start(data_dir.path(), &ServerOptions::workers(1));
    again.wait_ready().await;
    let admin = Caller {
        base_url: again.base_url.clone(),
        ..admin
    };
    let (status, settings) = admin.get("/api/v1/me/settings").await;
    assert_eq!((status, settings), (200, mine));
    assert_eq!(again.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_listed_and_cloned_within_the_quota() {
    let (server, callers) = server_with(&["ivan"]).await;
    let ivan = &callers[0];
    let starter = server.data_dir.join("shared/templates/starter");
    std::fs::create_dir_all(starter.join("src")).expect("template");
    std::fs::write(starter.join(".description"), "A Python starter\nmore").expect("write");
    std::fs::write(starter.join("README.md"), "# Starter").expect("write");
    std::fs::write(starter.join("src/main.py"), "print('hi')").expect("write");
    std::os::unix::fs::symlink("/etc/passwd", starter.join("src/passwd")).expect("symlink");
    std::fs::create_dir_all(server.data_dir.join("shared/templates/.hidden")).expect("hidden");
    let (status, listed) = ivan.get("/api/v1/templates").await;
    assert_eq!(status, 200);
    assert_eq!(
        listed,
        json!([{"name": "starter", "description": "A Python starter"}])
    );

    let (status, body) = ivan
        .post("/api/v1/templates/starter/clone", json!({"to": "project"}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        get_bytes(ivan, "project/src/main.py").await.1,
        b"print('hi')"
    );
    assert_eq!(get_bytes(ivan, "project/README.md").await.1, b"# Starter");
    assert_eq!(get_bytes(ivan, "project/.description").await.0, 404);
    assert_eq!(
        get_bytes(ivan, "project/src/passwd").await.0,
        404,
        "links are not copied"
    );
    let (status, _) = ivan
        .post("/api/v1/templates/starter/clone", json!({"to": "project"}))
        .await;
    assert_eq!(status, 409);
    for name in ["nope", ".hidden", "..", "%2e%2e", "starter%2f..%2f.."] {
        let (status, body) = ivan
            .post(
                &format!("/api/v1/templates/{name}/clone"),
                json!({"to": "x"}),
            )
            .await;
        assert!([400, 404].contains(&status), "{name}: {status} {body}");
    }
    let (_, usage) = ivan.get("/api/v1/me/usage").await;
    // Two files and two directories (project/, src/), a block each.
    assert_eq!(usage["files"], 2);
    assert_eq!(usage["entries"], 4);
    assert_eq!(usage["bytes_used"], 4 * 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_upload_with_multipart_forms() {
    let (_server, callers) = server_with(&["judy"]).await;
    let judy = &callers[0];
    let (status, _) = judy.post("/api/v1/files/docs?op=mkdir", json!({})).await;
    assert_eq!(status, 201);
    let form = |parts: Vec<(&'static str, Vec<u8>)>| {
        let mut form = reqwest::multipart::Form::new().text("note", "not a file");
        for (name, bytes) in parts {
            form = form.part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name(name),
            );
        }
        form
    };
    let big = vec![9u8; 3 * 1024 * 1024];
    let response = judy
        .request(Method::POST, "/api/v1/upload/docs")
        .multipart(form(vec![
            ("a.txt", b"alpha".to_vec()),
            ("big.bin", big.clone()),
        ]))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 201);
    let written: serde_json::Value = response.json().await.expect("json");
    assert_eq!(written.as_array().map(Vec::len), Some(2), "{written}");
    assert_eq!(get_bytes(judy, "docs/a.txt").await.1, b"alpha");
    assert!(get_bytes(judy, "docs/big.bin").await.1 == big);
    for (dir, name, expected) in [
        ("docs", "../escape.txt", 400),
        ("docs", "sub/x.txt", 400),
        ("nowhere", "x.txt", 404),
        // The client normalises `upload/..` (and `%2e%2e`) away: no such
        // route. Raw dot segments are covered by the attack corpus above.
        ("..", "x.txt", 404),
        ("docs/..%2f..", "x.txt", 400),
    ] {
        let response = judy
            .request(Method::POST, &format!("/api/v1/upload/{dir}"))
            .multipart(form(vec![(name, b"x".to_vec())]))
            .send()
            .await
            .expect("upload");
        assert_eq!(response.status().as_u16(), expected, "{dir} {name}");
    }
    let response = judy
        .request(Method::POST, "/api/v1/upload/docs")
        .multipart(reqwest::multipart::Form::new().text("note", "no files"))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 400);
}

/// Deleting a user removes their files: at once when deleted through the
/// API, at the next start when deleted with the CLI while the server was
/// down. Nothing of anyone else goes: not another user's files, not a
/// directory the database never knew of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_removes_their_files_and_nobody_elses() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let options = ServerOptions::workers(2);
    let mut server = Server::start(data_dir.path(), &options);
    server.wait_ready().await;
    let admin = Caller::admin(&server).await;
    let mut callers = Vec::new();
    for name in ["kim", "lee"] {
        let password = format!("{name}-password");
        admin.create_user(name, &password).await;
        let caller = Caller::login(&server, name, &password).await.bearer();
        assert_eq!(put(&caller, "notes.txt", name).await.0, 201);
        callers.push(caller);
    }
    let users = data_dir.path().join("users");
    let [kim, lee] = [0, 1].map(|n| users.join(callers[n].user_id()));
    let stranger = users.join("00000000-0000-4000-8000-000000000001");
    std::fs::create_dir_all(stranger.join("workspace")).expect("mkdir");
    std::fs::write(stranger.join("workspace/keep.txt"), "mine").expect("write");

    let path = format!("/api/v1/admin/users/{}", callers[0].user_id());
    assert_eq!(admin.delete(&path).await.0, 204);
    let gone = eventually(Duration::from_secs(10), || async { !kim.exists() }).await;
    assert!(gone, "kim's files are still there; log:\n{}", server.log());
    assert_eq!(
        get_bytes(&callers[1], "notes.txt").await,
        (200, b"lee".to_vec())
    );

    assert_eq!(server.stop().code(), Some(0));
    let deleted = std::process::Command::new(warren_tests::warren_binary())
        .args(["user", "delete", "lee", "--data-dir"])
        .arg(data_dir.path())
        .env_remove("WARREN_DATABASE_URL")
        .output()
        .expect("run warren user delete");
    assert!(deleted.status.success(), "{deleted:?}");
    assert!(
        lee.join("workspace/notes.txt").exists(),
        "removed while stopped"
    );
    let mut again = Server::start(data_dir.path(), &options);
    again.wait_ready().await;
    // Only the stranger's directory remains (no `.purge-…` either).
    let names = || -> Vec<_> {
        std::fs::read_dir(&users)
            .expect("users")
            .map(|entry| entry.expect("entry").file_name())
            .collect()
    };
    let only_stranger = [stranger.file_name().expect("name")];
    let gone = eventually(Duration::from_secs(10), || async {
        names() == only_stranger
    })
    .await;
    assert!(gone, "{:?} remain; log:\n{}", names(), again.log());
    assert!(!lee.exists());
    assert_eq!(
        std::fs::read_to_string(stranger.join("workspace/keep.txt")).expect("kept"),
        "mine"
    );
    assert_eq!(again.stop().code(), Some(0));
}
