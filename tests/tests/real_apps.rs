//! The real applications warren ships definitions for (deploy/apps.toml):
//! Jupyter Server, OpenCode and code-server, each started through the
//! proxy in a user's sandbox and used the way its clients use it.
//!
//! They are installed (pinned, cached) by `tests/apps/install.sh` into
//! `target/apps` (or `WARREN_APPS_DIR`); a test whose app is missing says
//! so loudly and passes, unless `WARREN_REQUIRE_APPS=1` (CI) makes it a
//! failure. deploy/apps.toml names the install root `/opt/warren-apps`;
//! the tests read that very file with the root replaced.

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use warren_tests::accounts::Caller;
use warren_tests::{Server, ServerOptions};

fn apps_dir() -> PathBuf {
    std::env::var_os("WARREN_APPS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/apps")))
}

/// Whether `component` is installed; loudly not (or a failure in CI).
fn installed(component: &str) -> bool {
    let stamp = apps_dir().join(".stamps").join(component);
    if stamp.exists() {
        return true;
    }
    let required = std::env::var("WARREN_REQUIRE_APPS").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{component} is not installed in {} (WARREN_REQUIRE_APPS=1): run tests/apps/install.sh",
        apps_dir().display()
    );
    eprintln!(
        "*** SKIPPED: {component} is not installed in {} (run tests/apps/install.sh {component})",
        apps_dir().display()
    );
    false
}

/// deploy/apps.toml with the install root replaced, `idle_timeout`s
/// shortened to `idle`.
fn apps_file(dir: &std::path::Path, idle: &str) -> PathBuf {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/apps.toml"))
            .expect("deploy/apps.toml");
    let root = std::fs::canonicalize(apps_dir()).expect("apps dir");
    let text = shipped
        .replace("/opt/warren-apps", &root.display().to_string())
        .replace(
            "idle_timeout = \"30m\"",
            &format!("idle_timeout = \"{idle}\""),
        );
    let file = dir.join("apps.toml");
    std::fs::write(&file, text).expect("write apps.toml");
    file
}

/// A sandboxed server with the shipped apps and users `names`.
async fn server(
    idle: &str,
    names: &[&str],
) -> Option<(Server, Caller, Vec<Caller>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = apps_file(dir.path(), idle);
    let options = ServerOptions::workers(2)
        .arg("--apps")
        .arg(file.to_str().expect("utf-8"));
    let (server, admin, callers) =
        warren_tests::accounts::sandboxed_server(&options, names).await?;
    Some((server, admin, callers, dir))
}

/// Sends until the answer is not "starting" (503) or `patience` passes.
async fn when_up(
    caller: &Caller,
    method: Method,
    path: &str,
    body: Option<Value>,
    patience: Duration,
) -> (u16, Value) {
    let deadline = Instant::now() + patience;
    loop {
        let (status, answer) = caller.send(method.clone(), path, body.clone()).await;
        if status != 503 || Instant::now() > deadline {
            return (status, answer);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn app(caller: &Caller, name: &str) -> Value {
    warren_tests::accounts::app_of(caller, name).await
}

async fn pid_of(caller: &Caller, name: &str) -> u32 {
    let app = app(caller, name).await;
    app["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid: {app}")) as u32
}

/// The app's pid while it runs.
async fn running_pid(caller: &Caller, name: &str) -> Option<u32> {
    let app = app(caller, name).await;
    if app["state"] != "running" {
        return None;
    }
    app["pid"].as_u64().map(|pid| pid as u32)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn websocket(server: &Server, caller: &Caller, path: &str) -> Socket {
    let url = server.url(path).replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", caller.token).parse().expect("header"),
    );
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .unwrap_or_else(|err| panic!("WebSocket {path}: {err}"));
    assert_eq!(response.status(), 101);
    socket
}

/// Runs `script` (Python) as `caller`'s task; its output.
async fn task_output(caller: &Caller, script: &str) -> String {
    let (status, task) = caller
        .post(
            "/api/v1/tasks",
            json!({"command": ["/usr/bin/python3", "-c", script]}),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().expect("id").to_string();
    assert!(
        warren_tests::eventually(Duration::from_secs(30), || async {
            caller.get(&format!("/api/v1/tasks/{id}")).await.1["state"] != "running"
        })
        .await
    );
    caller
        .request(Method::GET, &format!("/api/v1/tasks/{id}/output"))
        .send()
        .await
        .expect("output")
        .text()
        .await
        .expect("text")
}

/// The lifecycle checks every real app gets: idle stop, kill -9 of the
/// app, kill -9 of its worker.
async fn lifecycle(server: &Server, caller: &Caller, name: &str, probe: &str) {
    // Idle: stopped, its processes gone.
    let pid = pid_of(caller, name).await;
    let stopped = warren_tests::eventually(Duration::from_secs(60), || async {
        app(caller, name).await["state"] == "stopped"
    })
    .await;
    assert!(
        stopped,
        "{name} not stopped when idle: {}",
        app(caller, name).await
    );
    assert!(
        warren_tests::process_ends(pid, Duration::from_secs(15)).await,
        "{name}'s process outlived its idle stop"
    );
    // Started again by a request; kill -9 → restarted, answering again.
    let (status, body) = when_up(caller, Method::GET, probe, None, Duration::from_secs(90)).await;
    assert_eq!(status, 200, "{name} again: {body}");
    let pid = pid_of(caller, name).await;
    warren_tests::send_signal(pid, rustix::process::Signal::KILL);
    let restarted = warren_tests::eventually(Duration::from_secs(90), || async {
        running_pid(caller, name)
            .await
            .is_some_and(|new| new != pid)
            && caller.get(probe).await.0 == 200
    })
    .await;
    assert!(
        restarted,
        "{name} not back after kill -9: {}",
        app(caller, name).await
    );
    // kill -9 of the worker: the app's processes go with it; the next
    // request starts it again.
    let pid = pid_of(caller, name).await;
    for worker in server.worker_pids() {
        warren_tests::send_signal(worker, rustix::process::Signal::KILL);
    }
    assert!(
        warren_tests::process_ends(pid, Duration::from_secs(15)).await,
        "{name} outlived its worker"
    );
    let uid = caller.login["user"]["uid"].as_u64().expect("uid") as u32;
    assert!(
        warren_tests::eventually(Duration::from_secs(15), || async {
            warren_tests::processes_of(uid).is_empty()
        })
        .await,
        "processes of {name}'s user outlived the worker: {:?}",
        warren_tests::processes_of(uid)
    );
    let (status, body) = when_up(caller, Method::GET, probe, None, Duration::from_secs(90)).await;
    assert_eq!(
        status,
        200,
        "{name} after its worker died: {body}\n{}",
        server.log()
    );
}

#[tokio::test]
async fn jupyter_server_through_the_proxy() {
    if !installed("jupyter") {
        return;
    }
    let Some((server, admin, users, _dir)) = server("8s", &["alice", "bob"]).await else {
        return;
    };
    let (alice, bob) = (&users[0], &users[1]);
    let base = "/user/alice/jupyter";
    let started = Instant::now();
    let (status, body) = when_up(
        alice,
        Method::GET,
        &format!("{base}/api/status"),
        None,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eprintln!(
        "jupyter answered through the proxy after {:?}",
        started.elapsed()
    );

    // Contents: written and read back through the proxy, in the workspace.
    let (status, body) = alice
        .send(
            Method::PUT,
            &format!("{base}/api/contents/hello.txt"),
            Some(json!({"type": "file", "format": "text", "content": "hi from jupyter"})),
        )
        .await;
    assert!(status == 201 || status == 200, "{status} {body}");
    let (status, body) = alice.get(&format!("{base}/api/contents/hello.txt")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["content"], "hi from jupyter");
    let (status, file) = alice.get("/api/v1/files/hello.txt").await;
    assert_eq!(status, 200, "the file is in the user's workspace: {file}");

    // A terminal (terminado), kernel-less, over a proxied WebSocket.
    let (status, terminal) = alice
        .send(Method::POST, &format!("{base}/api/terminals"), None)
        .await;
    assert_eq!(status, 200, "{terminal}");
    let name = terminal["name"].as_str().expect("name");
    let mut socket = websocket(
        &server,
        alice,
        &format!("{base}/terminals/websocket/{name}"),
    )
    .await;
    socket
        .send(Message::text(
            json!(["stdin", "echo warren-$((6*7))\r"]).to_string(),
        ))
        .await
        .expect("send");
    let echoed = tokio::time::timeout(Duration::from_secs(20), async {
        let mut seen = String::new();
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message {
                seen.push_str(&text);
                if seen.contains("warren-42") {
                    return seen;
                }
            }
        }
        seen
    })
    .await
    .expect("the terminal answers");
    assert!(echoed.contains("warren-42"), "{echoed}");
    drop(socket);

    // Nobody else: not by path (bob, admin), not by socket.
    for caller in [bob, &admin] {
        let (status, _) = caller.get(&format!("{base}/api/status")).await;
        assert_eq!(status, 404);
    }
    let socket_path = format!(
        "{}/users/{}/scratch/apps/jupyter.sock",
        server.data_dir.display(),
        alice.user_id()
    );
    let output = task_output(
        bob,
        &format!(
            "import socket\ntry:\n s = socket.socket(socket.AF_UNIX); s.connect({socket_path:?}); print('connected')\nexcept OSError as e:\n print('refused', e.errno)\n"
        ),
    )
    .await;
    assert!(output.contains("refused"), "{output}");

    lifecycle(&server, alice, "jupyter", &format!("{base}/api/status")).await;
}

#[tokio::test]
async fn opencode_through_the_proxy() {
    if !installed("opencode") {
        return;
    }
    let Some((server, admin, users, _dir)) = server("10s", &["alice", "bob"]).await else {
        return;
    };
    let (alice, bob) = (&users[0], &users[1]);
    let base = "/user/alice/opencode";
    let started = Instant::now();
    let (status, sessions) = when_up(
        alice,
        Method::GET,
        &format!("{base}/session"),
        None,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(status, 200, "{sessions}");
    assert!(sessions.is_array(), "{sessions}");
    eprintln!(
        "opencode answered through the proxy after {:?}",
        started.elapsed()
    );

    // Its event stream arrives through the proxy as it is written.
    let mut events = alice
        .request(Method::GET, &format!("{base}/event"))
        .send()
        .await
        .expect("GET /event");
    assert_eq!(events.status(), 200);
    assert!(events.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/event-stream"));
    let first = tokio::time::timeout(Duration::from_secs(10), events.chunk())
        .await
        .expect("an event within 10 s")
        .expect("chunk")
        .expect("bytes");
    assert!(
        String::from_utf8_lossy(&first).contains("server.connected"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    // A session created is listed, and announced on the stream.
    let (status, session) = alice
        .send(
            Method::POST,
            &format!("{base}/session"),
            Some(json!({"title": "from warren"})),
        )
        .await;
    assert_eq!(status, 200, "{session}");
    let id = session["id"].as_str().expect("id").to_string();
    let (_, sessions) = alice.get(&format!("{base}/session")).await;
    assert!(sessions.to_string().contains(&id), "{sessions}");
    let announced = tokio::time::timeout(Duration::from_secs(10), async {
        let mut seen = String::new();
        while let Ok(Some(chunk)) = events.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains(&id) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(announced, Ok(true), "the new session on the event stream");
    drop(events);

    // Nobody else: not by path, not by its port without the secret.
    for caller in [bob, &admin] {
        assert_eq!(caller.get(&format!("{base}/session")).await.0, 404);
    }
    let port = warren_tests::listening_port(pid_of(alice, "opencode").await).expect("port");
    let output = task_output(
        bob,
        &format!(
            "import urllib.request, urllib.error\ntry:\n urllib.request.urlopen('http://127.0.0.1:{port}/session', timeout=10); print('answered')\nexcept urllib.error.HTTPError as e:\n print('status', e.code)\n"
        ),
    )
    .await;
    assert!(output.contains("status 401"), "{output}");

    lifecycle(&server, alice, "opencode", &format!("{base}/global/health")).await;
}

#[tokio::test]
async fn code_server_through_the_proxy() {
    if !installed("code-server") {
        return;
    }
    let Some((server, _admin, users, _dir)) = server("8s", &["alice"]).await else {
        return;
    };
    let alice = &users[0];
    let base = "/user/alice/code";
    let started = Instant::now();
    let (status, body) = when_up(
        alice,
        Method::GET,
        &format!("{base}/healthz"),
        None,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eprintln!(
        "code-server answered through the proxy after {:?}",
        started.elapsed()
    );

    // The workbench page (after its redirect to ./?folder=…) and an asset.
    let response = alice
        .request(Method::GET, &format!("{base}/"))
        .header("accept", "text/html")
        .send()
        .await
        .expect("GET workbench");
    assert_eq!(response.status(), 200);
    let page_url = response.url().clone();
    assert!(
        page_url.path().starts_with(&format!("{base}/")),
        "{page_url}"
    );
    let page = response.text().await.expect("page");
    assert!(page.contains("workbench"), "{page}");
    let asset = page
        .split(['"', '\''])
        .find(|part| part.contains("/static/") && (part.ends_with(".css") || part.ends_with(".js")))
        .unwrap_or_else(|| panic!("no static asset in the page: {page}"))
        .to_string();
    let asset_url = page_url.join(&asset).expect("asset URL");
    let response = alice
        .request(Method::GET, asset_url.path())
        .send()
        .await
        .expect("GET asset");
    assert_eq!(response.status(), 200, "{asset_url}");
    assert!(!response.bytes().await.expect("asset").is_empty());

    // Its WebSocket upgrade passes through (101).
    let token = uuid::Uuid::new_v4();
    let socket = websocket(
        &server,
        alice,
        &format!("{base}/?reconnectionToken={token}&reconnection=false&skipWebSocketFrames=false"),
    )
    .await;
    drop(socket);

    lifecycle(&server, alice, "code", &format!("{base}/healthz")).await;
}
