//! How the HTTP server holds up against clients that misbehave at the
//! connection level (issue 9, findings 4, 11, 13 and 14): header-read and
//! keep-alive timeouts, connection caps, errors in warren's JSON shape for
//! what hyper would refuse bare, who may read `/metrics` and `/readyz`'s
//! details, and the start-up warning about a proxy without `--public-url`.
//!
//! Several peers are needed: every address in 127.0.0.0/8 is this host, so
//! a socket bound to 127.0.0.3 before connecting acts as another client.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use warren_tests::accounts::Caller;
use warren_tests::{eventually, metric_value, user_id, Server, ServerOptions};

fn address_of(server: &Server) -> SocketAddr {
    server
        .base_url
        .trim_start_matches("http://")
        .parse()
        .expect("server address")
}

/// A connection to `server` from the local address `from`.
async fn connect_from(server: &Server, from: [u8; 4]) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::from(from), 0))
        .expect("bind a loopback client address");
    socket.connect(address_of(server)).await.expect("connect")
}

/// What the server sends until it closes the connection, or `None` if it
/// keeps it open (sending nothing more) for `patience`.
async fn read_until_closed(stream: &mut TcpStream, patience: Duration) -> Option<String> {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&received).into()),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends one keep-alive `GET path` and reads its (small, length-delimited)
/// response: the raw text.
async fn get_on(stream: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: warren\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&received).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "connection closed before the response: {text:?}");
        received.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_partial_and_idle_connections_are_closed_after_the_header_timeout() {
    let options = ServerOptions::workers(1)
        .arg("--header-read-timeout")
        .arg("1s");
    let server = Server::ready(&options).await;
    let started = Instant::now();

    // Sends nothing at all.
    let mut silent = connect_from(&server, [127, 0, 0, 3]).await;
    // Sends half a request, then drips a byte now and then (slowloris): the
    // deadline counts from the start of the headers, not from the last byte.
    let mut partial = connect_from(&server, [127, 0, 0, 3]).await;
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: warren\r\n")
        .await
        .unwrap();
    // One complete request, then idle on keep-alive.
    let mut idle = connect_from(&server, [127, 0, 0, 3]).await;
    assert!(get_on(&mut idle, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));

    let drip = async {
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if partial.write_all(b"x").await.is_err() {
                break;
            }
        }
    };
    drip.await;
    let patience = Duration::from_secs(5);
    assert!(
        read_until_closed(&mut silent, patience).await.is_some(),
        "a connection that sent nothing was kept"
    );
    assert!(
        read_until_closed(&mut partial, patience).await.is_some(),
        "a connection dripping a partial header was kept"
    );
    let rest = read_until_closed(&mut idle, patience).await;
    assert_eq!(
        rest.as_deref(),
        Some(""),
        "an idle keep-alive connection was kept (or sent something)"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "closed, but too late: {:?}",
        started.elapsed()
    );

    let metrics = server.metrics().await;
    let timeouts = metric_value(
        &metrics,
        "warren_http_connection_timeouts_total",
        "kind=\"header_read\"",
    )
    .unwrap_or(0.0);
    assert!(timeouts >= 3.0, "timeouts counted: {timeouts}\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stops_coming_is_answered_408_and_the_connection_freed() {
    let options = ServerOptions::workers(1)
        .arg("--upload-idle-timeout")
        .arg("1s");
    let server = Server::ready(&options).await;
    let started = Instant::now();
    // Login is a JSON route (not a file transfer): promise 50 bytes, send 10.
    let mut stalled = connect_from(&server, [127, 0, 0, 3]).await;
    stalled
        .write_all(
            b"POST /api/v1/auth/login HTTP/1.1\r\nhost: warren\r\n\
              content-type: application/json\r\ncontent-length: 50\r\n\r\n{\"username",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stalled, Duration::from_secs(10))
        .await
        .expect("a stalled body holds its connection");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        answer.contains("\"code\":\"request_timeout\""),
        "{answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A body that does come is read as before.
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/auth/login"))
        .json(&serde_json::json!({ "username": "admin", "password": "wrong-password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_connections_at_once_and_lets_a_request_in_flight_finish() {
    let mut server = Server::ready(&ServerOptions::workers(1)).await;
    // Idle keep-alive connections, well inside the header timeout (15 s).
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from(&server, [127, 0, 0, 3]).await;
        assert!(get_on(&mut stream, "/healthz")
            .await
            .starts_with("HTTP/1.1 200"));
        idle.push(stream);
    }
    let url = server.url(&format!("/debug/sleep/{}?ms=1500", user_id(1)));
    let in_flight = tokio::spawn(async move {
        let response = reqwest::Client::new().post(url).send().await?;
        Ok::<_, reqwest::Error>(response.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    server.signal(rustix::process::Signal::TERM);
    for stream in &mut idle {
        assert_eq!(
            read_until_closed(stream, Duration::from_secs(3))
                .await
                .as_deref(),
            Some(""),
            "an idle connection was not closed on SIGTERM"
        );
    }
    assert_eq!(
        in_flight.await.unwrap().expect("the request in flight"),
        200
    );
    let status = server.wait_exit(Duration::from_secs(8)).expect("exit");
    assert!(status.success(), "{status:?}");
    // Not the 10 s drain deadline: nothing was left to wait for.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !server.log().contains("did not finish in time"),
        "{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_does_not_cut_a_slow_answer() {
    let options = ServerOptions::workers(1)
        .arg("--header-read-timeout")
        .arg("1s");
    let server = Server::ready(&options).await;
    // The handler takes 2.5 s, well over the header timeout: the timeout is
    // for a request's headers, not for the request.
    let url = server.url(&format!("/debug/sleep/{}?ms=2500", user_id(1)));
    let response = reqwest::Client::new().post(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_address_cap_are_refused_and_others_still_served() {
    let options = ServerOptions::workers(1)
        .arg("--max-connections-per-address")
        .arg("3");
    let server = Server::ready(&options).await;

    // Three connections from 127.0.0.3, each shown to be accepted by an
    // answer, then left idle.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from(&server, [127, 0, 0, 3]).await;
        assert!(get_on(&mut stream, "/healthz")
            .await
            .starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    // A fourth from the same address is refused, in warren's error shape.
    let mut refused = connect_from(&server, [127, 0, 0, 3]).await;
    let answer = read_until_closed(&mut refused, Duration::from_secs(5))
        .await
        .expect("a refused connection is closed at once");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(
        answer.contains("\"code\":\"too_many_connections\""),
        "{answer:?}"
    );
    assert!(answer.contains("from your address"), "{answer:?}");
    let log = server
        .log_containing("refusing connections over a cap")
        .await;
    assert!(log.contains("max_connections_per_address"), "{log}");

    // Another address is served meanwhile.
    let mut other = connect_from(&server, [127, 0, 0, 2]).await;
    assert!(get_on(&mut other, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));
    let (status, _) = server.get_json("/healthz").await;
    assert_eq!(status, 200);

    let metrics = server.metrics().await;
    let rejected = metric_value(
        &metrics,
        "warren_http_connections_rejected_total",
        "reason=\"max_connections_per_address\"",
    );
    assert_eq!(rejected, Some(1.0), "{metrics}");
    let open = metric_value(&metrics, "warren_http_connections_open", "").unwrap_or(0.0);
    assert!(open >= 4.0, "open connections: {open}\n{metrics}");

    // Once one closes, the address may connect again.
    drop(held.pop());
    let served = eventually(Duration::from_secs(5), || async {
        let mut stream = connect_from(&server, [127, 0, 0, 3]).await;
        let request = b"GET /healthz HTTP/1.1\r\nhost: warren\r\nconnection: close\r\n\r\n";
        if stream.write_all(request).await.is_err() {
            return false;
        }
        read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .is_some_and(|answer| answer.starts_with("HTTP/1.1 200"))
    })
    .await;
    assert!(
        served,
        "the address stayed refused after a connection closed"
    );
}

/// The finding as reported: under an open-file limit of 256, 300 idle
/// connections from one client took `/healthz` and login away from
/// everyone. With the default caps (derived from that limit) they do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_client_cannot_use_up_a_small_open_file_limit() {
    let data = tempfile::tempdir().unwrap();
    let wrapper = data.path().join("warren-256");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -n 256 || exit 97\nexec '{}' \"$@\"\n",
            warren_tests::warren_binary().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let options = ServerOptions {
        binary: Some(wrapper),
        ..ServerOptions::workers(1)
    };
    let server = Server::ready_in(data, &options).await;
    let log = server.log();
    assert!(log.contains("open_files=\"256\""), "{log}");

    let mut held = Vec::new();
    for _ in 0..300 {
        held.push(connect_from(&server, [127, 0, 0, 3]).await);
    }
    // Everyone else is still served, at once, on new connections (the
    // harness's client may hold one from before).
    let fresh = reqwest::Client::new();
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        let healthz = fresh.get(server.url("/healthz")).send().await?;
        let login = fresh
            .post(server.url("/api/v1/auth/login"))
            .json(&serde_json::json!({
                "username": "admin",
                "password": warren_tests::ADMIN_PASSWORD,
            }))
            .send()
            .await?;
        Ok::<_, reqwest::Error>((healthz.status().as_u16(), login.status().as_u16()))
    })
    .await;
    assert!(
        matches!(served, Ok(Ok((200, 200)))),
        "/healthz and login failed for others: {served:?}"
    );
    let metrics = server.metrics().await;
    let refused = metric_value(
        &metrics,
        "warren_http_connections_rejected_total",
        "reason=\"max_connections_per_address\"",
    )
    .unwrap_or(0.0);
    assert!(refused >= 200.0, "refused: {refused}\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_global_cap_are_refused_until_some_close() {
    let options = ServerOptions::workers(1)
        .arg("--max-connections")
        .arg("4")
        .arg("--max-connections-per-address")
        .arg("100");
    let server = Server::ready(&options).await;
    // The harness's own client may hold a connection or two: open more
    // than the cap and count.
    let mut held = Vec::new();
    let mut refusals = 0;
    for _ in 0..8 {
        let mut stream = connect_from(&server, [127, 0, 0, 3]).await;
        // A refused connection is answered at once, unasked (nothing is sent
        // first, so that the close does not turn into a reset).
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            Ok(read) => {
                let n = read.unwrap_or(0);
                let answer = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
                assert!(answer.contains("too many open connections"), "{answer}");
                refusals += 1;
            }
            Err(_) => {
                assert!(get_on(&mut stream, "/healthz")
                    .await
                    .starts_with("HTTP/1.1 200"));
                held.push(stream);
            }
        }
    }
    assert!(
        held.len() <= 4,
        "{} connections held over a cap of 4",
        held.len()
    );
    assert!(refusals >= 4, "refused: {refusals}");
    drop(held);
    let recovered = eventually(Duration::from_secs(5), || async {
        let metrics = reqwest::Client::new()
            .get(server.url("/metrics"))
            .send()
            .await;
        match metrics {
            Ok(response) => {
                let text = response.text().await.unwrap_or_default();
                metric_value(
                    &text,
                    "warren_http_connections_rejected_total",
                    "reason=\"max_connections\"",
                )
                .is_some_and(|n| n >= refusals as f64)
            }
            Err(_) => false,
        }
    })
    .await;
    assert!(recovered, "no metrics after the connections closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_get_json_errors_with_security_headers() {
    let server = Server::ready(&ServerOptions::workers(1)).await;
    let http = reqwest::Client::new();
    let check = |response: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(response.status(), status);
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert!(response.headers().contains_key("content-security-policy"));
        let body: serde_json::Value = response.json().await.expect("a JSON body");
        assert_eq!(body["error"]["code"], code, "{body}");
    };

    let long = format!("/api/v1/files/{}", "a".repeat(17 * 1024));
    check(
        http.get(server.url(&long)).send().await.unwrap(),
        414,
        "uri_too_long",
    )
    .await;
    // The longest workspace path (4096 bytes), percent-encoded, is not too
    // long a target (no credentials: 401, past the target check).
    let longest = format!("/api/v1/files/{}", "%C3%A9".repeat(2048));
    let response = http.get(server.url(&longest)).send().await.unwrap();
    assert_eq!(response.status(), 401);

    let mut many = http.get(server.url("/healthz"));
    for n in 0..120 {
        many = many.header(format!("x-extra-{n}"), "1");
    }
    check(many.send().await.unwrap(), 431, "headers_too_large").await;

    let big = http
        .get(server.url("/healthz"))
        .header("x-big", "b".repeat(70 * 1024));
    check(big.send().await.unwrap(), 431, "headers_too_large").await;

    // Just under the limits, the request is served.
    let fine = http
        .get(server.url("/healthz"))
        .header("x-big", "b".repeat(60 * 1024));
    assert_eq!(fine.send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_metrics_and_readiness_details_are_for_this_host_and_admins() {
    let server = Server::ready(&ServerOptions::workers(1)).await;
    // A local client (the harness) reads both.
    let (status, ready) = server.get_json("/readyz").await;
    assert_eq!(status, 200);
    assert!(ready["workers"].is_array(), "{ready}");
    assert!(server
        .metrics()
        .await
        .contains("warren_http_connections_open"));

    // Through a proxy on this host (X-Forwarded-For): neither.
    let http = reqwest::Client::new();
    let forwarded = |path: &str| {
        http.get(server.url(path))
            .header("x-forwarded-for", "203.0.113.9")
    };
    let response = forwarded("/metrics").send().await.unwrap();
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let response = forwarded("/readyz").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "status": "ready" }));

    // An administrator sees the details from anywhere.
    let admin = Caller::admin(&server).await.bearer();
    let response = forwarded("/readyz")
        .bearer_auth(&admin.token)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["workers"].is_array(), "{body}");
    assert_eq!(body["database"], "ok", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_token_guards_metrics_on_the_main_listener() {
    let data = tempfile::tempdir().unwrap();
    let token_file = data.path().join("metrics-token");
    std::fs::write(&token_file, "scrape-me-7f3a9c\n").unwrap();
    let options = ServerOptions::workers(1)
        .arg("--metrics-token-file")
        .arg(token_file.to_str().unwrap());
    let server = Server::ready_in(data, &options).await;
    let http = reqwest::Client::new();

    // Not even a local client without the token.
    let response = http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = http
        .get(server.url("/metrics"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let (_, ready) = server.get_json("/readyz").await;
    assert_eq!(ready, serde_json::json!({ "status": "ready" }));

    let response = http
        .get(server.url("/metrics"))
        .bearer_auth("scrape-me-7f3a9c")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("warren_http_connections_open"));
}

#[test]
fn a_short_metrics_token_is_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let token_file = data.path().join("metrics-token");
    std::fs::write(&token_file, "short\n").unwrap();
    let output = std::process::Command::new(warren_tests::warren_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--metrics-token-file")
        .arg(&token_file)
        .env_remove("WARREN_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("shorter than 16 characters"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_listener_serves_metrics_and_the_main_one_no_longer_does() {
    let options = ServerOptions::workers(1)
        .arg("--metrics-listen")
        .arg("127.0.0.1:0");
    let server = Server::ready(&options).await;
    let log = server.log_containing("metrics_address=").await;
    let address = log
        .split("metrics_address=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"))
        .to_string();
    let http = reqwest::Client::new();

    let response = http
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("warren_workers"));
    let response = http
        .get(format!("http://{address}/readyz"))
        .send()
        .await
        .unwrap();
    let ready: serde_json::Value = response.json().await.unwrap();
    assert!(ready["workers"].is_array(), "{ready}");
    // Only the operational routes there.
    let response = http
        .get(format!("http://{address}/api/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // The main listener: no metrics, no details, even for a local client.
    let (status, body) = server.get_json("/metrics").await;
    assert_eq!(status, 404, "{body}");
    let (_, ready) = server.get_json("/readyz").await;
    assert_eq!(ready, serde_json::json!({ "status": "ready" }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_without_a_public_url_is_warned_about_at_start() {
    const WARNING: &str = "--trusted-proxy is set without --public-url";
    let options = ServerOptions::workers(1)
        .arg("--trusted-proxy")
        .arg("10.0.0.0/8");
    let server = Server::ready(&options).await;
    let log = server.log_containing(WARNING).await;
    assert!(log.contains(WARNING), "{log}");
    drop(server);

    let options = options
        .arg("--public-url")
        .arg("https://warren.example.org");
    let server = Server::ready(&options).await;
    assert!(!server.log().contains(WARNING), "{}", server.log());
}

/// A connection from `from` whose receive buffer is as small as the kernel
/// allows, so that the server's writes to it fill up quickly.
async fn connect_small_window(server: &Server, from: [u8; 4]) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket
        .bind(SocketAddr::new(IpAddr::from(from), 0))
        .expect("bind a loopback client address");
    socket.connect(address_of(server)).await.expect("connect")
}

/// The status of `GET /healthz` on a fresh connection from `from` (a
/// refused connection answers 503 unasked); `None` if nothing came.
async fn healthz_from(server: &Server, from: [u8; 4]) -> Option<u16> {
    let mut stream = connect_from(server, from).await;
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: warren\r\nconnection: close\r\n\r\n")
        .await;
    let answer = read_until_closed(&mut stream, Duration::from_secs(3)).await?;
    answer.get(9..12)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_pipeline_requests_and_never_read_are_cut_by_the_send_timeout() {
    // Issue 9, review 2: a client that reads nothing held its connections
    // forever, so three addresses could hold the whole connection cap.
    let options = ServerOptions::workers(1)
        .env("WARREN_LOG", "info,warren_master::http::listener=debug")
        .arg("--send-timeout")
        .arg("1s")
        .arg("--max-connections")
        .arg("8")
        .arg("--max-connections-per-address")
        .arg("4");
    let server = Server::ready(&options).await;
    let pipelined = b"GET /api/v1/openapi.json HTTP/1.1\r\nhost: warren\r\n\r\n".repeat(300);
    let mut opened = Vec::new();
    for from in [[127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4]] {
        for _ in 0..4 {
            opened.push(connect_small_window(&server, from).await);
        }
    }
    // One over a cap is answered 503 at once, unasked: keep the others.
    let probes = opened.into_iter().map(|mut stream| async move {
        let mut buf = [0u8; 1024];
        let refused = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf))
            .await
            .is_ok();
        (!refused).then_some(stream)
    });
    let mut attackers: Vec<TcpStream> = futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect();
    for stream in &mut attackers {
        stream
            .write_all(&pipelined)
            .await
            .expect("pipelined requests");
    }
    let held = attackers.len();
    assert!(held >= 4, "only {held} connections held");
    // Every slot is held (the harness's client may hold some too) by a
    // client that reads nothing...
    assert_eq!(healthz_from(&server, [127, 0, 0, 1]).await, Some(503));
    let started = Instant::now();
    // ...until their writes have made no progress for the send timeout
    // (the idle harness connections would free some only after 15 s).
    let freed = eventually(Duration::from_secs(6), || async {
        healthz_from(&server, [127, 0, 0, 5]).await == Some(200)
    })
    .await;
    assert!(
        freed,
        "the stalled readers still hold the connection cap after {:?}",
        started.elapsed()
    );
    // All of them, each counted.
    let all_cut = eventually(Duration::from_secs(6), || async {
        let metrics = server.metrics().await;
        metric_value(
            &metrics,
            "warren_http_connection_timeouts_total",
            "kind=\"send\"",
        )
        .is_some_and(|cut| cut >= held as f64)
    })
    .await;
    assert!(
        all_cut,
        "not all {held} stalled readers were cut:\n{}",
        server.metrics().await
    );
    assert!(
        server
            .log()
            .contains("the client read nothing for the send timeout"),
        "{}",
        server.log()
    );
    for mut stream in attackers {
        // Closed by the server: what it had sent, then the end (or a reset).
        assert!(read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_timeout_does_not_cut_a_slow_but_steady_reader() {
    let options = ServerOptions::workers(1).arg("--send-timeout").arg("1s");
    let server = Server::ready(&options).await;
    let admin = Caller::admin(&server).await;
    let size = 8 * 1024 * 1024;
    let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let (status, body) = warren_tests::files::put(&admin, "big.bin", content).await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let login = warren_tests::accounts::login_response(
        &server,
        serde_json::json!({ "username": "admin", "password": warren_tests::ADMIN_PASSWORD }),
    )
    .await;
    let (token, _) = warren_tests::accounts::session_cookie(&login).expect("a session");

    // About 2 MiB/s: pauses of 250 ms (each shorter than the send timeout)
    // with the socket full, for about 4 s in all (longer than it). A
    // receive buffer of 128 KiB: smaller than the 8 MiB, so the server's
    // writes wait on the reader, but not so small that the kernel stops
    // sending window updates (a window under one loopback segment, 64 KiB,
    // is only reopened by the sender's zero-window probes, whose backoff
    // soon exceeds a second: no progress, as far as the socket can tell).
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(128 * 1024).expect("SO_RCVBUF");
    socket
        .bind(SocketAddr::new(IpAddr::from([127, 0, 0, 3]), 0))
        .expect("bind");
    let mut stream = socket.connect(address_of(&server)).await.expect("connect");
    let request = format!(
        "GET /api/v1/files/big.bin HTTP/1.1\r\nhost: warren\r\n\
         authorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut received = 0usize;
    let mut since_pause = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("data in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        received += n;
        since_pause += n;
        if since_pause >= 512 * 1024 {
            since_pause = 0;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert!(
        received > size,
        "the download was cut after {received} bytes ({:?})\n{}\n{}",
        started.elapsed(),
        server.metrics().await,
        server.log()
    );
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "not a slow read: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_dribbled_byte_by_byte_gets_408_at_the_body_deadline() {
    // Issue 9, review 2: the idle rule restarts with every byte, so a login
    // body dribbled slower than that held its connection for good.
    let options = ServerOptions::workers(1).arg("--body-timeout").arg("2s");
    let server = Server::ready(&options).await;
    dribble_is_cut_at_the_body_deadline(
        &server,
        "POST /api/v1/auth/login HTTP/1.1\r\nhost: warren\r\n\
         content-type: application/json\r\ncontent-length: 60000\r\n\r\n{\"username\":\"",
    )
    .await;
    let metrics = server.metrics().await;
    let counted = metric_value(
        &metrics,
        "warren_http_connection_timeouts_total",
        "kind=\"body\"",
    )
    .unwrap_or(0.0);
    assert!(
        counted >= 1.0,
        "body timeouts counted: {counted}\n{metrics}"
    );
    // A login that comes in time is read as before.
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/auth/login"))
        .json(&serde_json::json!({ "username": "admin", "password": "wrong-password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

/// Sends `head` (a request line, headers promising a long body, and the
/// body's first bytes), then one more byte every 300 ms: the server must
/// answer `408` and close at its 2 s body deadline.
async fn dribble_is_cut_at_the_body_deadline(server: &Server, head: &str) {
    let stream = connect_from(server, [127, 0, 0, 3]).await;
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let dribble = tokio::spawn(async move {
        // Each gap (300 ms) far shorter than the idle timeout (60 s).
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer.write_all(b"a").await.is_err() {
                break;
            }
        }
        writer
    });
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(7);
    loop {
        match tokio::time::timeout_at(deadline, reader.read(&mut buf)).await {
            Err(_) => panic!("still open after {:?}", started.elapsed()),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
    let elapsed = started.elapsed();
    let answer = String::from_utf8_lossy(&received);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        answer.contains("\"code\":\"request_timeout\""),
        "{answer:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    dribble.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_operations_json_body_has_the_body_deadline_and_json_errors() {
    // Review 3: POST /files/{path}?op=... bodies were treated as uploads
    // (no deadline) and their 413 was axum's plain text.
    let options = ServerOptions::workers(1).arg("--body-timeout").arg("2s");
    let server = Server::ready(&options).await;
    let admin = warren_tests::accounts::Caller::admin(&server)
        .await
        .bearer();
    let head = format!(
        "POST /api/v1/files/a?op=move HTTP/1.1\r\nhost: warren\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100000\r\n\r\n{{\"to\":",
        admin.token
    );
    dribble_is_cut_at_the_body_deadline(&server, &head).await;
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/files/a?op=copy"))
        .bearer_auth(&admin.token)
        .body(vec![b' '; 100_000])
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
}
