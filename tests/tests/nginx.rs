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
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use warren_tests::accounts::{session_cookie, Caller};
use warren_tests::{Server, ServerOptions};

/// Where nginx's clients connect from (through the TLS tunnel).
const CLIENT_VIA_NGINX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Where the client that talks to warren directly connects from.
const CLIENT_DIRECT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

fn nginx_required() -> bool {
    std::env::var("WARREN_REQUIRE_NGINX").is_ok_and(|v| v == "1")
}

/// `name` on the PATH, or in /usr/sbin (where Debian puts nginx, often off
/// a normal user's PATH).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// nginx, socat and openssl, or `None` after saying loudly what is missing
/// (a failure instead when `WARREN_REQUIRE_NGINX=1`).
fn tools() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let found = ["nginx", "socat", "openssl"].map(find_program);
    if let [Some(nginx), Some(socat), Some(openssl)] = found {
        return Some((nginx, socat, openssl));
    }
    let missing: Vec<&str> = ["nginx", "socat", "openssl"]
        .iter()
        .zip(&found)
        .filter(|(_, path)| path.is_none())
        .map(|(name, _)| *name)
        .collect();
    let missing = missing.join(", ");
    assert!(
        !nginx_required(),
        "the nginx test is required here (WARREN_REQUIRE_NGINX=1) but {missing} is missing"
    );
    eprintln!(
        "\n*****************************************************************\n\
         *** SKIPPED: warren behind nginx (deploy/nginx.conf) -- NOT RUN: {missing} missing.\n\
         *** apt-get install nginx socat openssl; CI sets WARREN_REQUIRE_NGINX=1.\n\
         *****************************************************************\n"
    );
    None
}

/// The repository's root (this crate is `tests/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository root")
        .to_path_buf()
}

/// A port nothing listens on right now, on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `text` with the line `from` (exactly, once or more: `count` times)
/// replaced by `to`. A line the site file no longer has fails the test, so
/// the test never silently runs a different file than the one shipped.
fn replace_line(text: &str, from: &str, to: &str, count: usize) -> String {
    let found = text.lines().filter(|line| line.trim() == from).count();
    assert_eq!(
        found, count,
        "deploy/nginx.conf should have the line {from:?} {count} time(s): the test rewrites it"
    );
    text.lines()
        .map(|line| {
            if line.trim() == from {
                let indent = &line[..line.len() - line.trim_start().len()];
                format!("{indent}{to}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Ports and files a site file is made for.
struct Site<'a> {
    tls_port: u16,
    http_port: u16,
    warren_port: u16,
    cert: &'a Path,
    key: &'a Path,
}

/// `deploy/nginx.conf` for this test: listening on loopback test ports
/// (IPv6 listens dropped), pointed at this warren and this certificate.
/// Nothing else changes.
fn site_conf(site: &Site) -> String {
    let shipped = std::fs::read_to_string(repo_root().join("deploy/nginx.conf"))
        .expect("read deploy/nginx.conf");
    let text = replace_line(
        &shipped,
        "listen 443 ssl;",
        &format!("listen 127.0.0.1:{} ssl;", site.tls_port),
        1,
    );
    let text = replace_line(&text, "listen [::]:443 ssl;", "", 1);
    let text = replace_line(
        &text,
        "listen 80;",
        &format!("listen 127.0.0.1:{};", site.http_port),
        1,
    );
    let text = replace_line(&text, "listen [::]:80;", "", 1);
    let text = replace_line(
        &text,
        "server 127.0.0.1:8080;",
        &format!("server 127.0.0.1:{};", site.warren_port),
        1,
    );
    let text = replace_line(
        &text,
        "ssl_certificate     /etc/ssl/warren/fullchain.pem;",
        &format!("ssl_certificate {};", site.cert.display()),
        1,
    );
    replace_line(
        &text,
        "ssl_certificate_key /etc/ssl/warren/privkey.pem;",
        &format!("ssl_certificate_key {};", site.key.display()),
        1,
    )
}

/// A self-signed certificate for 127.0.0.1 (its own root): (cert, key).
fn self_signed(openssl: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let output = Command::new(openssl)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl req");
    assert!(
        output.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (cert, key)
}

/// Real nginx running `deploy/nginx.conf` in a directory of its own,
/// stopped (SIGTERM, then waited for) when dropped.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx with `deploy/nginx.conf` made for `site`, in `dir`.
    fn start(binary: &Path, dir: &Path, site: &Site) -> Nginx {
        std::fs::write(dir.join("site.conf"), site_conf(site)).expect("write site.conf");
        // The main configuration a distribution's nginx.conf would be,
        // reduced to what runs in a temporary directory. Workers run as
        // root when the test does (Debian's nginx.conf says `user
        // www-data;`; this temporary directory is root's alone).
        let user = if rustix::process::geteuid().is_root() {
            "user root root;"
        } else {
            ""
        };
        let d = dir.display();
        let main = format!(
            "{user}\n\
             daemon off;\n\
             worker_processes 2;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
                 access_log {d}/access.log;\n\
                 client_body_temp_path {d}/client_body;\n\
                 proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\n\
                 scgi_temp_path {d}/scgi;\n\
                 include {d}/site.conf;\n\
             }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).expect("write nginx.conf");
        // -e: the log before the configuration is read, too (not
        // /var/log/nginx, which an unprivileged test cannot write).
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx {
            child,
            dir: dir.to_path_buf(),
        };
        assert!(
            nginx.listening_on(site.tls_port),
            "nginx did not start with deploy/nginx.conf:\n{}",
            nginx.error_log()
        );
        nginx
    }

    /// Whether nginx listens on `port` within 10 s (false: it exited).
    fn listening_on(&mut self, port: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nginx never listened; its log:\n{}", self.error_log());
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (a SIGKILL would leave
        // them running, and listening).
        warren_tests::send_signal(self.child.id(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain-TCP listener on 127.0.0.1 whose every connection `socat` carries
/// over TLS to nginx, from [`CLIENT_VIA_NGINX`], verifying nginx's
/// certificate against `cert`. The test's clients talk plain HTTP (and
/// WebSocket) to it; the bytes pass unchanged both ways, as they arrive.
struct TlsTunnel {
    address: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl TlsTunnel {
    async fn start(socat: &Path, nginx_port: u16, cert: &Path) -> TlsTunnel {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the tunnel");
        let address = listener.local_addr().expect("tunnel address");
        let target = format!(
            "OPENSSL:127.0.0.1:{nginx_port},cafile={},bind={CLIENT_VIA_NGINX}",
            cert.display()
        );
        let socat = socat.to_path_buf();
        let accept = tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                let mut child = tokio::process::Command::new(&socat)
                    .args(["-t", "5", "STDIO", &target])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("spawn socat");
                let (mut to_tls, mut from_tls) = (
                    child.stdin.take().expect("socat stdin"),
                    child.stdout.take().expect("socat stdout"),
                );
                tokio::spawn(async move {
                    let (mut read, mut write) = connection.into_split();
                    let up = async {
                        let _ = tokio::io::copy(&mut read, &mut to_tls).await;
                        drop(to_tls);
                    };
                    let down = tokio::io::copy(&mut from_tls, &mut write);
                    let _ = tokio::join!(up, down);
                    let _ = child.kill().await;
                });
            }
        });
        TlsTunnel { address, accept }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for TlsTunnel {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// An HTTP client connecting from `local` (a loopback address).
fn client_from(local: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(local))
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client")
}

/// Logs `username` in at `base_url` with `http` (and `headers`): a caller
/// sending the session as a bearer token, and the `Set-Cookie` header.
async fn login_at(
    http: &reqwest::Client,
    base_url: &str,
    username: &str,
    headers: &[(&str, &str)],
) -> (Caller, String) {
    let mut request = http
        .post(format!("{base_url}/api/v1/auth/login"))
        .json(&json!({"username": username, "password": format!("{username}-password")}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("POST /auth/login");
    assert_eq!(response.status(), 200, "login as {username} at {base_url}");
    let (token, set_cookie) = session_cookie(&response).expect("a session cookie");
    let login: Value = response.json().await.expect("login body");
    let caller = Caller {
        token,
        base_url: base_url.to_string(),
        via_cookie: false,
        http: http.clone(),
        login,
    };
    (caller, set_cookie)
}

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

/// `size` bytes of a fixed pseudo-random sequence, in 1 MiB chunks.
fn chunks(size: usize) -> impl Iterator<Item = Vec<u8>> {
    const CHUNK: usize = 1 << 20;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..size.div_ceil(CHUNK)).map(move |n| {
        let len = CHUNK.min(size - n * CHUNK);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    })
}

/// Reads a response's body until it holds `needle`, within `patience`:
/// what came so far.
async fn read_until(response: &mut reqwest::Response, needle: &str, patience: Duration) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + patience;
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(other) => panic!("the stream ended ({other:?}) without {needle:?}: {seen}"),
            Err(_) => panic!("no {needle:?} within {patience:?}; the stream showed: {seen}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_behind_nginx_with_the_shipped_site_file() {
    let Some((nginx_binary, socat, openssl)) = tools() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let (cert, key) = self_signed(&openssl, dir.path());

    // nginx's ports first: warren's public URL names the TLS one (the only
    // Origin it accepts for cookie-authenticated changes).
    let (tls_port, http_port) = (free_port(), free_port());
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
    let site = Site {
        tls_port,
        http_port,
        warren_port,
        cert: &cert,
        key: &key,
    };
    let _nginx = Nginx::start(&nginx_binary, dir.path(), &site);
    let tunnel = TlsTunnel::start(&socat, tls_port, &cert).await;
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
    assert!(set_cookie.contains("Secure"), "{set_cookie}");
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
