//! Several hosts on one PostgreSQL (issue 14): two `warren serve` masters,
//! `a` and `b`, each with its own data directory and workers, on one real
//! PostgreSQL database, behind real nginx running
//! `deploy/nginx-hosts.conf` itself (only its ports, its hosts' addresses
//! and its certificate paths changed, each an exact line of the file), over
//! TLS (the client side is `socat`, as in `tests/tests/nginx.rs`).
//!
//! What it shows:
//! - both hosts register and `GET /api/v1/admin/hosts` lists them up;
//! - a user created with `"home_host": "a"` is homed there; her login
//!   through nginx sets `warren_route=a`, with which nginx sends her
//!   requests to `a` (its access log says which upstream took each one);
//! - the same requests sent straight to `b` are forwarded to `a`: the same
//!   answers (files, listings, a 10 MiB upload made through `b`), the
//!   `warren_route=a` cookie set; server-sent events and, where users'
//!   processes may run, a terminal's WebSocket and a followed task output
//!   stream through `b` from `a`;
//! - a logout on one host ends the session on the other within a second;
//! - a forged `X-Warren-Forwarded` sent straight to a host is refused;
//!   through nginx it never arrives (the site file drops it);
//! - `warren user move alice --to b` (the CLI): her files are on `b`,
//!   byte for byte (sha256, a 10 MiB file among them), and gone from `a`'s
//!   data directory; her requests follow, whichever host they reach;
//! - `b` killed (SIGKILL): nginx falls back to `a`, which answers `b`'s
//!   users (bob, and alice now) `503 host_unavailable` with `Retry-After`,
//!   through nginx and straight; carol (homed on `a`) is unaffected; `b`
//!   is `down` in the host list within its heartbeat timeout.
//!
//! Without nginx (socat, openssl) or PostgreSQL the test says so loudly and
//! passes, unless `WARREN_REQUIRE_NGINX=1` / `WARREN_REQUIRE_POSTGRES=1`.
//!
//! The harness starts every server with `--listen 127.0.0.1:0`; a host's
//! `--host-url` must name its port before it starts, so each host is run
//! through a two-line wrapper that `exec`s the same binary with a port
//! chosen here instead (same process, same arguments otherwise).

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use warren_tests::accounts::{Caller, Database};
use warren_tests::nginx::{
    chunks, client_from, free_port, local_site, login_at, read_until, replace_line, route_cookie,
    self_signed, shipped_site, tools, Listen, MainConf, Nginx, TlsTunnel,
};
use warren_tests::{eventually, warren_binary, Server};

/// Where nginx's clients connect from (through the TLS tunnel).
const CLIENT_VIA_NGINX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Where the clients that talk to a host directly connect from.
const CLIENT_DIRECT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// The site file's hosts: `a` at 10.0.0.11:8080, `b` at 10.0.0.12:8080.
const SITE_A: &str = "10.0.0.11:8080";
const SITE_B: &str = "10.0.0.12:8080";

/// One host of the cluster.
struct Host {
    name: &'static str,
    port: u16,
    server: Server,
}

impl Host {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Starts host `name` on `port`, on `database`, sharing `secret`.
async fn start_host(
    dir: &Path,
    name: &'static str,
    port: u16,
    database: &Database,
    secret: &Path,
    public_url: &str,
) -> Host {
    let options = warren_tests::cluster_host(dir, name, port, 2, database, secret)
        .arg("--trusted-proxy")
        .arg("127.0.0.1/32")
        .arg("--public-url")
        .arg(public_url);
    let data = tempfile::tempdir().expect("a data directory");
    let server = Server::ready_in(data, &options).await;
    assert_eq!(
        server.base_url,
        format!("http://127.0.0.1:{port}"),
        "host {name} listens where its --host-url says"
    );
    Host { name, port, server }
}

/// An answer: status, headers, body.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into()))
    }

    fn route(&self) -> Option<String> {
        route_cookie(&self.headers)
    }
}

/// `method path` as `caller` at `base_url` with `http` (the caller's
/// bearer token), sending `warren_route=<route>` when given.
async fn send(
    caller: &Caller,
    http: &reqwest::Client,
    base_url: &str,
    method: Method,
    path: &str,
    route: Option<&str>,
    body: Option<Vec<u8>>,
) -> Answer {
    let mut request = http
        .request(method.clone(), format!("{base_url}{path}"))
        .bearer_auth(&caller.token);
    if let Some(route) = route {
        request = request.header("cookie", format!("warren_route={route}"));
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|err| panic!("{method} {base_url}{path}: {err}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("the body").to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// The upstream (`127.0.0.1:PORT`) nginx's access log names for the last
/// request whose line contains `needle`.
fn upstream_of(nginx: &Nginx, needle: &str) -> Option<String> {
    nginx
        .access_log()
        .lines()
        .rev()
        .find(|line| line.contains(needle))
        .and_then(|line| line.split("upstream=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
}

/// Waits up to 2 s for nginx's access log to hold `needle` (nginx writes
/// the line after the answer).
async fn logged_upstream(nginx: &Nginx, needle: &str) -> String {
    let mut found = None;
    eventually(Duration::from_secs(2), || {
        found = upstream_of(nginx, needle);
        let done = found.is_some();
        async move { done }
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "no {needle:?} in nginx's access log:\n{}",
            nginx.access_log()
        )
    })
}

/// The host list as `GET /api/v1/admin/hosts` shows it: name → state.
async fn host_states(admin: &Caller) -> (Value, BTreeMap<String, String>) {
    let (status, body) = admin.get("/api/v1/admin/hosts").await;
    assert_eq!(status, 200, "GET /api/v1/admin/hosts: {body}");
    let states = body["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("no hosts in {body}"))
        .iter()
        .map(|host| {
            (
                host["name"].as_str().unwrap_or_default().to_string(),
                host["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    (body, states)
}

/// `warren user move NAME --to HOST` with the serve flags it needs.
fn move_user(database: &Database, secret: &Path, name: &str, to: &str) -> std::process::Output {
    let url = database.url().expect("a PostgreSQL URL");
    std::process::Command::new(warren_binary())
        .args(["user", "move", name, "--to", to, "--database-url", url])
        .arg("--cluster-secret-file")
        .arg(secret)
        .env_remove("WARREN_DATABASE_URL")
        .output()
        .expect("run warren user move")
}

/// Two hosts, `a` and `b`, on one fresh PostgreSQL database, behind nginx
/// with `deploy/nginx-hosts.conf`; users alice (homed on `a`), bob (`b`)
/// and carol (`a`). Dropped in this order: the tunnel, nginx, the hosts,
/// the directory.
struct Fixture {
    tunnel: TlsTunnel,
    nginx: Nginx,
    a: Host,
    b: Host,
    /// nginx's upstream addresses of a and b (`127.0.0.1:PORT`).
    local_a: String,
    local_b: String,
    via_nginx: reqwest::Client,
    direct: reqwest::Client,
    admin_a: Caller,
    secret: PathBuf,
    database: Database,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// The tunnel's URL: nginx, over TLS.
    fn front(&self) -> String {
        self.tunnel.url()
    }

    /// Starts it all, or `None` (said loudly) without nginx or PostgreSQL.
    async fn start(test: &str) -> Option<Fixture> {
        let tools = tools(&format!("{test} (deploy/nginx-hosts.conf)"))?;
        let database = Database::postgres(test).await?;
        let dir = tempfile::tempdir().expect("temporary directory");
        let (cert, key) = self_signed(&tools.openssl, dir.path()).expect("a certificate");
        let secret = dir.path().join("cluster-secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef-test-secret\n")
            .expect("write the cluster secret");

        let port = || free_port().expect("a port");
        let (tls_port, http_port, port_a, port_b) = (port(), port(), port(), port());
        let public_url = format!("https://127.0.0.1:{tls_port}");
        let a = start_host(dir.path(), "a", port_a, &database, &secret, &public_url).await;
        let b = start_host(dir.path(), "b", port_b, &database, &secret, &public_url).await;

        // nginx with deploy/nginx-hosts.conf, its two hosts pointed at a and b.
        let shipped = std::fs::read_to_string(shipped_site("nginx-hosts.conf"))
            .expect("read deploy/nginx-hosts.conf");
        let (local_a, local_b) = (
            a.server.base_url.replacen("http://", "", 1),
            b.server.base_url.replacen("http://", "", 1),
        );
        let mut site = shipped;
        for (from, to, count) in [
            (format!("server {SITE_A};"), format!("server {local_a};"), 2),
            (format!("server {SITE_B};"), format!("server {local_b};"), 2),
            (
                format!("server {SITE_A} backup;"),
                format!("server {local_a} backup;"),
                1,
            ),
            (
                format!("server {SITE_B} backup;"),
                format!("server {local_b} backup;"),
                1,
            ),
        ] {
            site = replace_line(&site, &from, &to, count).expect("deploy/nginx-hosts.conf's hosts");
        }
        let listen = Listen {
            tls_port,
            tls: true,
            http_port,
            cert: &cert,
            key: &key,
        };
        let site = local_site(&site, &listen, &[]).expect("deploy/nginx-hosts.conf, made local");
        let nginx = Nginx::start(
            &tools.nginx,
            dir.path(),
            &site,
            &MainConf::tests(),
            &[SocketAddr::from(([127, 0, 0, 1], tls_port))],
        )
        .expect("nginx with deploy/nginx-hosts.conf");
        let tunnel = TlsTunnel::start(&tools.socat, tls_port, &cert, CLIENT_VIA_NGINX).await;
        let via_nginx = client_from(Ipv4Addr::LOCALHOST);
        let direct = client_from(CLIENT_DIRECT);

        // Both hosts registered and up, seen from either.
        let admin_a = Caller::admin(&a.server).await.bearer();
        let admin_b = Caller::admin(&b.server).await.bearer();
        for admin in [&admin_a, &admin_b] {
            let (body, states) = host_states(admin).await;
            assert_eq!(
                states,
                BTreeMap::from([("a".into(), "up".into()), ("b".into(), "up".into())]),
                "{body}"
            );
            assert_eq!(
                body["this"],
                if admin.base_url == a.url() { "a" } else { "b" },
                "{body}"
            );
        }
        let (hosts, _) = host_states(&admin_a).await;
        for host in hosts["hosts"].as_array().expect("hosts") {
            let port = if host["name"] == "a" { a.port } else { b.port };
            assert_eq!(host["url"], format!("http://127.0.0.1:{port}"), "{hosts}");
        }

        // Users with a home host each, created on either host.
        for (admin, name, home) in [
            (&admin_b, "alice", "a"),
            (&admin_a, "bob", "b"),
            (&admin_a, "carol", "a"),
        ] {
            let (status, user) = admin
                .post(
                    "/api/v1/admin/users",
                    json!({"username": name, "password": format!("{name}-password"), "home_host": home}),
                )
                .await;
            assert_eq!(status, 201, "create {name} on {home}: {user}");
            assert_eq!(user["home_host"], home, "{user}");
        }
        // A host that does not exist: 422.
        let (status, body) = admin_a
            .post(
                "/api/v1/admin/users",
                json!({"username": "dave", "password": "dave-password", "home_host": "zz"}),
            )
            .await;
        assert_eq!(status, 422, "a user homed on an unknown host: {body}");
        // Each host counts its users (the administrator, made before the
        // cluster had a host, went to the first).
        let (hosts, _) = host_states(&admin_a).await;
        let users: BTreeMap<String, u64> = hosts["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .map(|host| {
                (
                    host["name"].as_str().unwrap_or_default().into(),
                    host["users"].as_u64().unwrap_or(u64::MAX),
                )
            })
            .collect();
        assert_eq!(
            users,
            BTreeMap::from([("a".into(), 3), ("b".into(), 1)]),
            "{hosts}"
        );

        Some(Fixture {
            tunnel,
            nginx,
            a,
            b,
            local_a,
            local_b,
            via_nginx,
            direct,
            admin_a,
            secret,
            database,
            _dir: dir,
        })
    }
}

/// Kills host b (SIGKILL). Then `on_b` (users homed there) get `503
/// host_unavailable` with `Retry-After`, quickly, through nginx (which
/// falls back to a) and straight from a; `on_a` (a user, a file, its
/// bytes) still read their files through nginx, with their route cookie
/// and without one; and b is `down` in the host list once its heartbeat is
/// old.
async fn kill_b(fx: &mut Fixture, on_b: &[(&Caller, &str)], on_a: &[(&Caller, &str, &[u8])]) {
    warren_tests::send_signal(fx.b.server.pid, rustix::process::Signal::KILL);
    assert!(
        fx.b.server.wait_exit(Duration::from_secs(10)).is_some(),
        "host b did not die of SIGKILL"
    );
    let (front, a_url) = (fx.front(), fx.a.url());
    for (caller, name) in on_b {
        for (http, base, how) in [
            (&fx.via_nginx, front.as_str(), "through nginx"),
            (&fx.direct, a_url.as_str(), "straight to a"),
        ] {
            let started = Instant::now();
            let got = send(
                caller,
                http,
                base,
                Method::GET,
                "/api/v1/files",
                Some("b"),
                None,
            )
            .await;
            let error = got.json();
            assert_eq!(got.status, 503, "{name} {how} with b dead: {error}");
            assert_eq!(error["error"]["code"], "host_unavailable", "{error}");
            assert!(
                got.headers.contains_key("retry-after"),
                "503 without Retry-After: {:?}",
                got.headers
            );
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{name} {how}: the 503 took {:?}",
                started.elapsed()
            );
        }
    }
    for (caller, path, bytes) in on_a {
        // Without a route cookie too: nginx's hash may pick the dead b.
        for route in [Some("a"), None] {
            let got = send(
                caller,
                &fx.via_nginx,
                &front,
                Method::GET,
                &format!("/api/v1/files/{path}"),
                route,
                None,
            )
            .await;
            assert_eq!(
                got.status, 200,
                "{path} of a user homed on a, b dead, route {route:?}"
            );
            assert_eq!(&got.body[..], *bytes);
        }
    }
    let admin = &fx.admin_a;
    let down = eventually(Duration::from_secs(20), || async {
        host_states(admin).await.1.get("b").map(String::as_str) == Some("down")
    })
    .await;
    assert!(down, "b is not down in {}", host_states(admin).await.0);
    // A new user cannot be homed on a host that is down; without a host
    // named, the one up is chosen.
    let (status, body) = admin
        .post(
            "/api/v1/admin/users",
            json!({"username": "erin", "password": "erin-password", "home_host": "b"}),
        )
        .await;
    assert_eq!(status, 422, "a user homed on a host that is down: {body}");
    let (status, body) = admin
        .post(
            "/api/v1/admin/users",
            json!({"username": "erin", "password": "erin-password"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["home_host"], "a", "the only host up: {body}");
}

/// bob and carol logged in through nginx, carol with a file `c.txt` on a.
async fn bob_and_carol(fx: &Fixture) -> (Caller, Caller) {
    let front = fx.front();
    let (bob, _) = login_at(&fx.via_nginx, &front, "bob", &[]).await;
    let (carol, cookies) = login_at(&fx.via_nginx, &front, "carol", &[]).await;
    assert_eq!(cookies.route.as_deref(), Some("a"));
    let put = send(
        &carol,
        &fx.via_nginx,
        &front,
        Method::PUT,
        "/api/v1/files/c.txt",
        Some("a"),
        Some(b"carol".to_vec()),
    )
    .await;
    assert_eq!(put.status, 201, "{}", put.json());
    (bob, carol)
}

/// alice logs in through nginx and writes three files (one of 10 MiB)
/// there, which nginx sends to her home host `a`: the opening of both
/// tests. Returns her and the files' contents: small, nested, big.
async fn alice_writes_through_nginx(fx: &Fixture) -> (Caller, Vec<u8>, Vec<u8>, Vec<u8>) {
    let (nginx, front, via_nginx) = (&fx.nginx, fx.front(), fx.via_nginx.clone());
    let local_a = fx.local_a.clone();
    // alice logs in through nginx (no route cookie yet: any host); the
    // answer names her home.
    let (alice, cookies) = login_at(&via_nginx, &front, "alice", &[]).await;
    assert_eq!(
        cookies.route.as_deref(),
        Some("a"),
        "alice's login sets warren_route=a"
    );
    assert_eq!(alice.login["user"]["home_host"], "a", "{}", alice.login);
    let (status, me) = alice.get("/api/v1/me").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["home_host"], "a", "{me}");

    // Her files through nginx, with her route cookie: nginx sends them to a.
    let small = b"hello from alice\n".to_vec();
    let nested = b"nested\n".repeat(1000);
    let big: Vec<u8> = chunks(10 << 20).flatten().collect();
    for (path, bytes) in [
        ("small.txt", &small),
        ("docs/nested.txt", &nested),
        ("big.bin", &big),
    ] {
        let put = send(
            &alice,
            &via_nginx,
            &front,
            Method::PUT,
            &format!("/api/v1/files/{path}?parents=true"),
            Some("a"),
            Some(bytes.clone()),
        )
        .await;
        assert_eq!(put.status, 201, "PUT {path} through nginx: {}", put.json());
        assert_eq!(put.route(), None, "the route cookie was right: none set");
    }
    assert_eq!(
        logged_upstream(nginx, "PUT /api/v1/files/big.bin").await,
        local_a,
        "nginx sends route a to host a"
    );
    (alice, small, nested, big)
}

/// Routing and forwarding: nginx's map, a host forwarding a user homed on
/// the other (files, an upload, events, a terminal, a task's output), the
/// route cookie, a forged forwarding header, logouts across hosts, and b's
/// death for the users of each host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_home_host_through_nginx_or_the_other_host() {
    const TEST: &str = "two warren hosts behind nginx: forwarding";
    let Some(mut fx) = Fixture::start(TEST).await else {
        return;
    };
    let (a, b, nginx) = (&fx.a, &fx.b, &fx.nginx);
    let (front, via_nginx, direct) = (fx.front(), fx.via_nginx.clone(), fx.direct.clone());
    let local_b = fx.local_b.clone();
    let (alice, small, _nested, big) = alice_writes_through_nginx(&fx).await;

    // The same requests straight to b: forwarded to a, the same answers,
    // and the cookie that sends the next one to a.
    let listing_a = send(
        &alice,
        &direct,
        &a.url(),
        Method::GET,
        "/api/v1/files",
        None,
        None,
    )
    .await;
    assert_eq!(listing_a.status, 200, "{}", listing_a.json());
    let listing_b = send(
        &alice,
        &direct,
        &b.url(),
        Method::GET,
        "/api/v1/files",
        Some("b"),
        None,
    )
    .await;
    assert_eq!(listing_b.status, 200, "{}", listing_b.json());
    assert_eq!(listing_b.json(), listing_a.json(), "the listing through b");
    assert_eq!(
        listing_b.route().as_deref(),
        Some("a"),
        "b names alice's home"
    );
    for (path, bytes) in [("small.txt", &small), ("big.bin", &big)] {
        let got = send(
            &alice,
            &direct,
            &b.url(),
            Method::GET,
            &format!("/api/v1/files/{path}"),
            None,
            None,
        )
        .await;
        assert_eq!(got.status, 200, "GET {path} through b");
        assert_eq!(sha256(&got.body), sha256(bytes), "{path} through b");
        assert_eq!(got.route().as_deref(), Some("a"));
    }
    // An upload sent to b lands on a.
    let upload = send(
        &alice,
        &direct,
        &b.url(),
        Method::PUT,
        "/api/v1/files/via-b.bin",
        None,
        Some(big.clone()),
    )
    .await;
    assert_eq!(upload.status, 201, "PUT through b: {}", upload.json());
    let on_a = a
        .server
        .data_dir
        .join("users")
        .join(alice.user_id())
        .join("workspace");
    assert_eq!(
        sha256(&std::fs::read(on_a.join("via-b.bin")).expect("via-b.bin on a's disk")),
        sha256(&big)
    );
    assert!(
        !b.server
            .data_dir
            .join("users")
            .join(alice.user_id())
            .exists(),
        "nothing of alice's on b"
    );
    // A wrong route cookie through nginx: b takes it and forwards.
    let wrong = send(
        &alice,
        &via_nginx,
        &front,
        Method::GET,
        "/api/v1/files/small.txt",
        Some("b"),
        None,
    )
    .await;
    assert_eq!(wrong.status, 200);
    assert_eq!(wrong.body, small);
    assert_eq!(wrong.route().as_deref(), Some("a"), "corrected to a");
    assert_eq!(
        logged_upstream(nginx, "route=b").await,
        local_b,
        "nginx sent route b to b"
    );

    // Server-sent events through b: the feed from a, live.
    let alice_b = Caller {
        base_url: b.url(),
        http: direct.clone(),
        ..alice.clone()
    };
    let mut feed = alice_b
        .request(Method::GET, "/api/v1/activity")
        .send()
        .await
        .expect("GET the activity feed through b");
    assert_eq!(feed.status(), 200);
    read_until(&mut feed, "event: summary", Duration::from_secs(10)).await;
    let live = send(
        &alice,
        &direct,
        &a.url(),
        Method::PUT,
        "/api/v1/files/live.txt",
        None,
        Some(b"now".to_vec()),
    )
    .await;
    assert_eq!(live.status, 201);
    let seen = read_until(&mut feed, "live.txt", Duration::from_secs(5)).await;
    assert!(seen.contains("file_written"), "{seen}");
    drop(feed);

    // A forged forwarding header straight to a host is refused; through
    // nginx it is dropped, and the request is an ordinary one.
    let forged = "v1 from=b peer=198.51.100.9:4444 ts=0 sig=00";
    for host in [&a, &b] {
        let response = direct
            .get(format!("{}/api/v1/files/small.txt", host.url()))
            .bearer_auth(&alice.token)
            .header("x-warren-forwarded", forged)
            .send()
            .await
            .expect("GET with a forged header");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(
            status, 403,
            "a forged X-Warren-Forwarded at {}: {body}",
            host.name
        );
    }
    let through = via_nginx
        .get(format!("{front}/api/v1/files/small.txt"))
        .bearer_auth(&alice.token)
        .header("x-warren-forwarded", forged)
        .send()
        .await
        .expect("GET with a forged header through nginx");
    assert_eq!(through.status(), 200, "nginx drops the header");

    // What needs users' processes: a terminal and a task, through b.
    if warren_tests::accounts::sandboxed(&a.server).await {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::Message;
        let (status, terminal) = alice_b
            .post(
                "/api/v1/terminals",
                json!({"command": ["/bin/sh"], "cols": 80, "rows": 24}),
            )
            .await;
        assert_eq!(status, 201, "a terminal through b: {terminal}");
        let id = terminal["id"].as_str().expect("terminal id");
        let mut request = format!(
            "{}/api/v1/terminals/{id}/ws",
            b.url().replacen("http://", "ws://", 1)
        )
        .into_client_request()
        .expect("websocket request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", alice.token).parse().expect("header"),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("WebSocket upgrade through b");
        socket
            .send(Message::Binary(b"echo via-''host-b\n".to_vec().into()))
            .await
            .expect("type");
        let mut shown = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !String::from_utf8_lossy(&shown).contains("via-host-b") {
            match tokio::time::timeout_at(deadline, socket.next()).await {
                Ok(Some(Ok(Message::Binary(bytes)))) => shown.extend_from_slice(&bytes),
                Ok(Some(Ok(_))) => {}
                other => panic!(
                    "no echo from the terminal through b ({other:?}); it showed: {}",
                    String::from_utf8_lossy(&shown)
                ),
            }
        }
        drop(socket);

        let (status, task) = alice_b
            .post(
                "/api/v1/tasks",
                json!({"command": "echo one; sleep 2; echo two; sleep 60"}),
            )
            .await;
        assert_eq!(status, 201, "{task}");
        let task = task["id"].as_str().expect("task id").to_string();
        let mut output = alice_b
            .request(
                Method::GET,
                &format!("/api/v1/tasks/{task}/output?follow=true"),
            )
            .send()
            .await
            .expect("follow the task's output through b");
        assert_eq!(output.status(), 200);
        read_until(&mut output, "one", Duration::from_secs(10)).await;
        read_until(&mut output, "two", Duration::from_secs(15)).await;
        let (status, _) = alice_b
            .post(&format!("/api/v1/tasks/{task}/cancel"), json!({}))
            .await;
        assert_eq!(status, 202, "cancel through b");
    }

    // A logout on one host ends the session on the other within a second:
    // the home host's cache (a logout at b), and b's (a logout at a).
    for (logout_at, checked_at) in [(&b, &a), (&a, &b)] {
        let (session, _) = login_at(&direct, &logout_at.url(), "alice", &[]).await;
        let before = send(
            &session,
            &direct,
            &checked_at.url(),
            Method::GET,
            "/api/v1/me",
            None,
            None,
        )
        .await;
        assert_eq!(before.status, 200, "{}", before.json());
        let out = send(
            &session,
            &direct,
            &logout_at.url(),
            Method::POST,
            "/api/v1/auth/logout",
            None,
            None,
        )
        .await;
        assert!(
            out.status == 200 || out.status == 204,
            "logout at {}: {}",
            logout_at.name,
            out.json()
        );
        let started = Instant::now();
        let ended = eventually(Duration::from_secs(1), || async {
            send(
                &session,
                &direct,
                &checked_at.url(),
                Method::GET,
                "/api/v1/me",
                None,
                None,
            )
            .await
            .status
                == 401
        })
        .await;
        assert!(
            ended,
            "a logout at {} still lets the session in at {} after {:?}",
            logout_at.name,
            checked_at.name,
            started.elapsed()
        );
    }

    let (bob, carol) = bob_and_carol(&fx).await;
    kill_b(
        &mut fx,
        &[(&bob, "bob")],
        &[(&alice, "small.txt", &small), (&carol, "c.txt", b"carol")],
    )
    .await;
}

/// `warren user move alice --to b`: her files on b byte for byte and gone
/// from a, her requests following wherever they land; then b's death.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_moves_to_another_host_with_her_files() {
    const TEST: &str = "two warren hosts behind nginx: moving a user";
    let Some(mut fx) = Fixture::start(TEST).await else {
        return;
    };
    let (a, b) = (&fx.a, &fx.b);
    let (front, via_nginx, direct) = (fx.front(), fx.via_nginx.clone(), fx.direct.clone());
    let (alice, small, nested, big) = alice_writes_through_nginx(&fx).await;

    // Hashes of alice's files before the move.
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("small.txt", sha256(&small)),
        ("docs/nested.txt", sha256(&nested)),
        ("big.bin", sha256(&big)),
    ];

    // alice moves to b (the CLI).
    let moved = move_user(&fx.database, &fx.secret, "alice", "b");
    assert!(
        moved.status.success(),
        "warren user move alice --to b: {}\n{}\nlog of a:\n{}\nlog of b:\n{}",
        String::from_utf8_lossy(&moved.stdout),
        String::from_utf8_lossy(&moved.stderr),
        a.server.log(),
        b.server.log()
    );
    let on_b = b
        .server
        .data_dir
        .join("users")
        .join(alice.user_id())
        .join("workspace");
    for (path, hash) in &files {
        let bytes = std::fs::read(on_b.join(path))
            .unwrap_or_else(|err| panic!("{path} on b's disk after the move: {err}"));
        assert_eq!(&sha256(&bytes), hash, "{path} on b's disk");
    }
    assert!(
        !a.server
            .data_dir
            .join("users")
            .join(alice.user_id())
            .exists(),
        "alice's directory is gone from a's data directory"
    );
    // Her requests follow, whichever way they come: her old route cookie
    // through nginx (a forwards, and names b), straight to either host.
    let old_route = send(
        &alice,
        &via_nginx,
        &front,
        Method::GET,
        "/api/v1/files/big.bin",
        Some("a"),
        None,
    )
    .await;
    assert_eq!(
        old_route.status, 200,
        "after the move, through nginx with route a"
    );
    assert_eq!(sha256(&old_route.body), sha256(&big));
    assert_eq!(
        old_route.route().as_deref(),
        Some("b"),
        "a names alice's new home"
    );
    for host in [&a, &b] {
        for (path, hash) in &files {
            let got = send(
                &alice,
                &direct,
                &host.url(),
                Method::GET,
                &format!("/api/v1/files/{path}"),
                None,
                None,
            )
            .await;
            assert_eq!(
                got.status, 200,
                "GET {path} at {} after the move",
                host.name
            );
            assert_eq!(
                &sha256(&got.body),
                hash,
                "{path} at {} after the move",
                host.name
            );
        }
    }
    let (status, me) = alice.get("/api/v1/me").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["home_host"], "b", "{me}");

    let (bob, carol) = bob_and_carol(&fx).await;
    kill_b(
        &mut fx,
        &[(&alice, "alice"), (&bob, "bob")],
        &[(&carol, "c.txt", b"carol")],
    )
    .await;
}
