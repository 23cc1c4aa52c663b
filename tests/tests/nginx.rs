//! warren behind real nginx, configured by `deploy/nginx.conf` itself (only
//! its ports, its upstream's port and its certificate paths are changed,
//! each an exact line of the file), with TLS on a certificate made here by
//! `openssl req`. Through nginx: logins, a 64 MiB upload and download with
//! their hashes compared, a terminal's WebSocket, server-sent events and a
//! followed task output arriving live, and the client's address (from
//! nginx's `X-Forwarded-For`) in the audit log; the same header sent
//! straight to warren by a client that is not a trusted proxy is ignored.
//!
//! The client side of TLS is `socat` (one per connection, verifying the
//! certificate against the test's own root): the test's HTTP and WebSocket
//! clients speak plain HTTP to a local tunnel, socat carries each
//! connection over TLS to nginx from 127.0.0.2, so nginx sees a client
//! address that is neither its own (127.0.0.1, towards warren) nor the
//! direct client's (127.0.0.3).
//!
//! Without nginx (or socat, openssl) the test says so loudly and passes,
//! unless `WARREN_REQUIRE_NGINX=1` (`.ci/run` sets it and installs them).

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use warren_tests::accounts::Caller;
use warren_tests::nginx::{
    chunks, client_from, free_port, local_site, login_at, read_until, self_signed, shipped_site,
    tools, Listen, MainConf, Nginx, TlsTunnel,
};
use warren_tests::{Server, ServerOptions};

/// Where nginx's clients connect from (through the TLS tunnel).
const CLIENT_VIA_NGINX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Where the client that talks to warren directly connects from.
const CLIENT_DIRECT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// The address the audit log recorded for `username`'s latest login.
async fn login_address(admin: &Caller, username: &str) -> String {
    let (status, rows) = admin
        .get(&format!("/api/v1/admin/audit?event=login&user={username}"))
        .await;
    assert_eq!(status, 200, "{rows}");
    rows[0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no login of {username} in the audit log: {rows}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_behind_nginx_with_the_shipped_site_file() {
    let Some(tools) = tools("warren behind nginx (deploy/nginx.conf)") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let (cert, key) = self_signed(&tools.openssl, dir.path()).expect("a certificate");

    // nginx's ports first: warren's public URL names the TLS one (the only
    // Origin it accepts for cookie-authenticated changes).
    let (tls_port, http_port) = (free_port().expect("a port"), free_port().expect("a port"));
    let public_url = format!("https://127.0.0.1:{tls_port}");
    let server = Server::ready(
        &ServerOptions::workers(2)
            .arg("--trusted-proxy")
            .arg("127.0.0.1/32")
            .arg("--public-url")
            .arg(&public_url),
    )
    .await;
    let warren_port: u16 = server
        .base_url
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("warren's port");
    // deploy/nginx.conf listening on loopback test ports (IPv6 listens
    // dropped), pointed at this warren and this certificate. Nothing else
    // changes.
    let shipped =
        std::fs::read_to_string(shipped_site("nginx.conf")).expect("read deploy/nginx.conf");
    let listen = Listen {
        tls_port,
        tls: true,
        http_port,
        cert: &cert,
        key: &key,
    };
    let site = local_site(
        &shipped,
        &listen,
        &[(
            "server 127.0.0.1:8080;",
            format!("server 127.0.0.1:{warren_port};"),
        )],
    )
    .expect("deploy/nginx.conf, made local");
    let _nginx = Nginx::start(
        &tools.nginx,
        dir.path(),
        &site,
        &MainConf::tests(),
        &[SocketAddr::from(([127, 0, 0, 1], tls_port))],
    )
    .expect("nginx with deploy/nginx.conf");
    let tunnel = TlsTunnel::start(&tools.socat, tls_port, &cert, CLIENT_VIA_NGINX).await;
    // The test's side of the tunnel (nginx sees socat, from CLIENT_VIA_NGINX).
    let via_nginx = client_from(Ipv4Addr::LOCALHOST);
    let front = tunnel.url();

    // Plain HTTP is only a redirect to https.
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(format!("http://127.0.0.1:{http_port}/api/v1/me"))
        .send()
        .await
        .expect("GET over plain http");
    assert_eq!(redirect.status(), 301);
    let location = redirect.headers()["location"].to_str().unwrap_or_default();
    assert!(location.starts_with("https://"), "{location}");

    // Logins through nginx: the session cookie is Secure (nginx says
    // https in X-Forwarded-Proto), and the audit log has the client's
    // address from nginx's X-Forwarded-For.
    let admin = Caller::admin(&server).await.bearer();
    for name in ["alice", "sam", "dora"] {
        admin.create_user(name, &format!("{name}-password")).await;
    }
    let (alice, set_cookie) = login_at(&via_nginx, &front, "alice", &[]).await;
    assert!(
        set_cookie.session.contains("Secure"),
        "{}",
        set_cookie.session
    );
    assert_eq!(
        login_address(&admin, "alice").await,
        CLIENT_VIA_NGINX.to_string()
    );
    // A client's own X-Forwarded-For through nginx: nginx appends the real
    // address, which is what warren takes.
    login_at(
        &via_nginx,
        &front,
        "sam",
        &[("x-forwarded-for", "198.51.100.66")],
    )
    .await;
    assert_eq!(
        login_address(&admin, "sam").await,
        CLIENT_VIA_NGINX.to_string()
    );
    // The same header sent straight to warren from an address that is not
    // a trusted proxy: ignored, the peer's address is recorded.
    login_at(
        &client_from(CLIENT_DIRECT),
        &server.base_url,
        "dora",
        &[("x-forwarded-for", "198.51.100.77")],
    )
    .await;
    assert_eq!(
        login_address(&admin, "dora").await,
        CLIENT_DIRECT.to_string()
    );

    // 64 MiB up (a streamed, chunked body) and down, through nginx.
    const SIZE: usize = 64 << 20;
    let mut sent = Sha256::new();
    let body: Vec<Vec<u8>> = chunks(SIZE).inspect(|chunk| sent.update(chunk)).collect();
    let sent = sent.finalize().to_vec();
    let started = Instant::now();
    let response = alice
        .request(Method::PUT, "/api/v1/files/big.bin")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            body.into_iter().map(Ok::<_, std::io::Error>),
        )))
        .send()
        .await
        .expect("PUT 64 MiB through nginx");
    let status = response.status();
    assert_eq!(status, 201, "{:?}", response.text().await);
    let upload = started.elapsed();
    let started = Instant::now();
    let mut response = alice
        .request(Method::GET, "/api/v1/files/big.bin")
        .send()
        .await
        .expect("GET 64 MiB through nginx");
    assert_eq!(response.status(), 200);
    let (mut received, mut length) = (Sha256::new(), 0);
    while let Some(chunk) = response.chunk().await.expect("download chunk") {
        received.update(&chunk);
        length += chunk.len();
    }
    assert_eq!(length, SIZE);
    assert_eq!(received.finalize().to_vec(), sent, "the download's sha256");
    eprintln!(
        "64 MiB through nginx: up {upload:?}, down {:?}",
        started.elapsed()
    );

    // Server-sent events through nginx: the feed's first summary, then an
    // event caused afterwards, live.
    let mut feed = alice
        .request(Method::GET, "/api/v1/activity")
        .send()
        .await
        .expect("GET the activity feed");
    assert_eq!(feed.status(), 200);
    read_until(&mut feed, "event: summary", Duration::from_secs(10)).await;
    let (status, _) = warren_tests::files::put(&alice, "live.txt", "now").await;
    assert_eq!(status, 201);
    let seen = read_until(&mut feed, "live.txt", Duration::from_secs(5)).await;
    assert!(seen.contains("file_written"), "{seen}");
    drop(feed);

    // What needs users' processes: a terminal and a task.
    if !warren_tests::accounts::sandboxed(&server).await {
        return;
    }
    // A terminal's WebSocket through nginx, the way a browser opens it: the
    // session cookie, and the public https origin.
    let (status, terminal) = alice
        .post(
            "/api/v1/terminals",
            json!({"command": ["/bin/sh"], "cols": 80, "rows": 24}),
        )
        .await;
    assert_eq!(status, 201, "{terminal}");
    let id = terminal["id"].as_str().expect("terminal id");
    let url = format!(
        "{}/api/v1/terminals/{id}/ws",
        front.replacen("http://", "ws://", 1)
    );
    let mut request = url.into_client_request().expect("websocket request");
    let headers = request.headers_mut();
    let cookie = format!("warren_session={}", alice.token);
    headers.insert("cookie", cookie.parse().expect("cookie"));
    headers.insert("origin", public_url.parse().expect("origin"));
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket upgrade through nginx");
    socket
        .send(Message::Binary(b"echo through-''nginx\n".to_vec().into()))
        .await
        .expect("type");
    let mut shown = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&shown).contains("through-nginx") {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Binary(bytes)))) => shown.extend_from_slice(&bytes),
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "no echo from the terminal ({other:?}); it showed: {}",
                String::from_utf8_lossy(&shown)
            ),
        }
    }
    drop(socket);

    // A task's output followed through nginx arrives as it is written: a
    // line printed after the follow began, while the task still runs (the
    // response is not over, so only an unbuffered proxy passes it on).
    let (status, task) = alice
        .post(
            "/api/v1/tasks",
            json!({"command": "echo one; sleep 2; echo two; sleep 60"}),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    let task = task["id"].as_str().expect("task id");
    let follow = alice
        .request(
            Method::GET,
            &format!("/api/v1/tasks/{task}/output?follow=true"),
        )
        .send();
    // (A buffering nginx would hold back even the response's head.)
    let mut output = tokio::time::timeout(Duration::from_secs(10), follow)
        .await
        .expect("the followed output's head within 10 s")
        .expect("follow the task's output");
    assert_eq!(output.status(), 200);
    read_until(&mut output, "one", Duration::from_secs(10)).await;
    read_until(&mut output, "two", Duration::from_secs(15)).await;
    let (status, _) = alice
        .post(&format!("/api/v1/tasks/{task}/cancel"), json!({}))
        .await;
    assert_eq!(status, 202, "cancel");
}
