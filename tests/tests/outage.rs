//! PostgreSQL out of reach mid-run (issue 14): a TCP proxy in front of the
//! real PostgreSQL that the test cuts (every connection dropped, new ones
//! refused, as a stopped server does) and restores. Meanwhile a cached
//! session keeps working for what needs no database; what does needs it
//! fails fast with `503 database_unavailable` (JSON, `Retry-After`);
//! `/readyz` says why it is not ready; the log gets a few lines, not one
//! per attempt; nothing panics. Once PostgreSQL is back, everything
//! recovers by itself, and a session revoked through another master while
//! this one was cut off is refused here: no revocation is missed.

use reqwest::Method;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use warren_tests::accounts::{postgres_admin_url, Caller, Database};
use warren_tests::{eventually, Server, ServerOptions};

/// A TCP proxy to `upstream` on a port of its own that can be cut and
/// restored.
struct CuttableProxy {
    address: SocketAddr,
    upstream: String,
    /// Cancelled by a cut: the accept loop and every relayed connection.
    current: Mutex<CancellationToken>,
}

impl CuttableProxy {
    async fn start(upstream: String) -> Arc<CuttableProxy> {
        let listener = listen("127.0.0.1:0".parse().expect("address")).await;
        let proxy = Arc::new(CuttableProxy {
            address: listener.local_addr().expect("proxy address"),
            upstream,
            current: Mutex::new(CancellationToken::new()),
        });
        proxy.serve(listener);
        proxy
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let token = self.current.lock().expect("lock").clone();
        let upstream = self.upstream.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    // Dropping the listener closes the port: connection refused.
                    () = token.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                let token = token.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                    // Both sockets close here, mid-conversation if cut.
                });
            }
        });
    }

    /// Drops every relayed connection and closes the port.
    fn cut(&self) {
        self.current.lock().expect("lock").cancel();
    }

    /// Listens on the same port again.
    async fn restore(self: &Arc<Self>) {
        *self.current.lock().expect("lock") = CancellationToken::new();
        let listener = listen(self.address).await;
        self.serve(listener);
    }
}

async fn listen(address: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    // The port was just closed: its old connections may linger in TIME_WAIT.
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(address).expect("bind the proxy");
    socket.listen(128).expect("listen")
}

/// `postgres://user@host:port/db` with `host:port` replaced by `address`.
fn through(url: &str, address: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let credentials = authority
        .rsplit_once('@')
        .map_or(String::new(), |(c, _)| format!("{c}@"));
    format!("{scheme}://{credentials}{address}/{path}")
}

/// `host:port` of a PostgreSQL URL (5432 when none is given).
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").expect("a URL").1;
    let authority = rest.split(['/', '?']).next().expect("authority");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    }
}

/// The same session, sent to another server.
fn on(caller: &Caller, server: &Server) -> Caller {
    Caller {
        base_url: server.base_url.clone(),
        ..caller.clone()
    }
}

/// A login's status, error code and `Retry-After`.
async fn try_login(server: &Server, user: &str, password: &str) -> (u16, String, Option<String>) {
    let response = server
        .http
        .post(server.url("/api/v1/auth/login"))
        .json(&serde_json::json!({ "username": user, "password": password }))
        .send()
        .await
        .expect("POST /auth/login");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
    (status, code, retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_survived_and_recovered_from_by_itself() {
    let Some(database) = Database::postgres("a_database_outage_is_survived").await else {
        return;
    };
    let direct_url = database.url().expect("a PostgreSQL URL").to_string();
    let proxy = CuttableProxy::start(host_port(&postgres_admin_url())).await;
    let proxied = ServerOptions {
        workers: 1,
        database_url: Some(through(&direct_url, proxy.address)),
        ..Default::default()
    };
    let server = Server::ready(&proxied).await;
    // Another master on the same database, not behind the proxy.
    let other = Server::ready(&ServerOptions {
        workers: 1,
        database_url: Some(direct_url.clone()),
        ..Default::default()
    })
    .await;

    let admin = Caller::admin(&server).await.bearer();
    admin.create_user("alice", "alice-password").await;
    let alice = Caller::login(&server, "alice", "alice-password")
        .await
        .bearer();
    // A second session, which the other master revokes during the outage.
    let doomed = Caller::login(&server, "alice", "alice-password")
        .await
        .bearer();
    let (status, body) = warren_tests::files::put(&alice, "notes.txt", "kept on this host").await;
    assert!(status == 200 || status == 201, "{status} {body}");
    // Both sessions are in this master's cache.
    assert_eq!(alice.get("/api/v1/me").await.0, 200);
    assert_eq!(doomed.get("/api/v1/me").await.0, 200);

    // PostgreSQL goes away (for this master).
    proxy.cut();
    let log_before = server.log().lines().count();
    let cut_at = Instant::now();

    // A cached session keeps working for what needs no database.
    let response = alice
        .request(Method::GET, "/api/v1/files/notes.txt")
        .send()
        .await
        .expect("GET a file");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "kept on this host");

    // What needs the database fails fast, as JSON with Retry-After.
    let asked = Instant::now();
    let response = alice
        .request(Method::GET, "/api/v1/me")
        .send()
        .await
        .expect("GET /me");
    let took = asked.elapsed();
    assert_eq!(response.status(), 503);
    let retry_after = response.headers().get("retry-after").cloned();
    let body: serde_json::Value = response.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
    assert!(retry_after.is_some(), "no Retry-After");
    assert!(took < Duration::from_secs(6), "/me took {took:?} to fail");
    eprintln!("GET /me failed after {took:?}");
    let asked = Instant::now();
    let (status, code, retry_after) = try_login(&server, "alice", "alice-password").await;
    let took = asked.elapsed();
    assert_eq!((status, code.as_str()), (503, "database_unavailable"));
    assert!(retry_after.is_some(), "no Retry-After on a refused login");
    assert!(
        took < Duration::from_secs(6),
        "a login took {took:?} to fail"
    );
    eprintln!("a login failed after {took:?}");
    // A logout that cannot be stored says so, and changes nothing.
    let (status, body) = alice.send(Method::POST, "/api/v1/auth/logout", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "database_unavailable", "{body}");

    // Readiness says why.
    let (status, body) = server.get_json("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["database"]
            .as_str()
            .is_some_and(|d| d.starts_with("unavailable")),
        "{body}"
    );
    assert!(
        body["reasons"]
            .as_array()
            .is_some_and(|r| r.contains(&"database_unavailable".into())),
        "{body}"
    );

    // Meanwhile the other master revokes the second session.
    let (status, body) = on(&doomed, &other)
        .send(Method::POST, "/api/v1/auth/logout", None)
        .await;
    assert_eq!(status, 204, "logout through the other master: {body}");

    // The outage goes on while clients keep asking: no flood in the log.
    let mut refused = 0;
    while cut_at.elapsed() < Duration::from_secs(20) {
        let requests = (0..8).map(|_| alice.get("/api/v1/me"));
        for (status, _) in futures_util::future::join_all(requests).await {
            assert_eq!(status, 503);
            refused += 1;
        }
        let (status, _) = alice.get("/api/v1/files/notes.txt").await;
        assert_eq!(status, 200, "a cached session stopped working");
    }
    let log = server.log();
    let during: Vec<&str> = log.lines().skip(log_before).collect();
    eprintln!(
        "{} log lines in {:?} of outage ({refused} requests refused, the feed polled every 250 ms):\n{}",
        during.len(),
        cut_at.elapsed(),
        during.join("\n")
    );
    // A few kinds (requests, the revocation feed, last-seen times, task
    // checks, connections found dead), each at most once every 10 s.
    assert!(
        during.len() <= 16,
        "{} lines during the outage",
        during.len()
    );
    let requests_logged = during
        .iter()
        .filter(|line| line.contains("database unavailable"))
        .count();
    assert!(
        requests_logged <= 3,
        "{requests_logged} lines for {refused} refused requests"
    );
    assert!(!log.contains("panicked"), "a panic:\n{log}");

    // PostgreSQL is back: everything recovers by itself.
    proxy.restore().await;
    let restored = Instant::now();
    let ready = eventually(Duration::from_secs(10), || async {
        server.get_json("/readyz").await.0 == 200
    })
    .await;
    assert!(
        ready,
        "not ready again: {:?}",
        server.get_json("/readyz").await
    );
    eprintln!("ready again {:?} after the restore", restored.elapsed());
    let revoked = eventually(Duration::from_secs(5), || async {
        doomed.get("/api/v1/me").await.0 == 401
    })
    .await;
    assert!(
        revoked,
        "the session revoked during the outage still works here: {:?}",
        doomed.get("/api/v1/me").await
    );
    eprintln!(
        "revocation applied {:?} after the restore",
        restored.elapsed()
    );
    let (status, body) = alice.get("/api/v1/me").await;
    assert_eq!(status, 200, "the session whose logout failed: {body}");
    let (status, code, _) = try_login(&server, "alice", "alice-password").await;
    assert_eq!((status, code.as_str()), (200, ""));
    let log = server
        .log_containing("the revocation feed is readable again")
        .await;
    assert!(
        log.contains("the revocation feed is readable again"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "a panic:\n{log}");
    drop(other);
    drop(server);
    drop(database);
}
