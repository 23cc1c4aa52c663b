//! Terminals through the real master and worker, with a real WebSocket
//! client: typing, resizing, reattaching, the exit, hang-ups, and who may
//! attach.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use warren_tests::accounts::Caller;
use warren_tests::{Server, ServerOptions};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A server (with `options`) and its users `names`, where the sandbox runs.
async fn server_with(
    options: ServerOptions,
    names: &[&str],
) -> Option<(Server, Caller, Vec<Caller>)> {
    warren_tests::accounts::sandboxed_server(&options, names).await
}

/// Waits for `socket`'s close frame.
async fn close_frame(socket: &mut Socket) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => {
                    return frame.expect("a close frame with a reason")
                }
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("the socket closes")
}

/// Whether `caller`'s terminal `id` is gone (404) within `patience`.
async fn gone(caller: &Caller, id: &str, patience: Duration) -> bool {
    warren_tests::eventually(patience, || async {
        caller.get(&format!("/api/v1/terminals/{id}")).await.0 == 404
    })
    .await
}

fn ws_url(server: &Server, id: &str) -> String {
    server
        .url(&format!("/api/v1/terminals/{id}/ws"))
        .replacen("http://", "ws://", 1)
}

/// Connects with `headers`; the socket, or the HTTP status that refused it.
async fn connect(server: &Server, id: &str, headers: &[(&str, String)]) -> Result<Socket, u16> {
    let mut request = ws_url(server, id).into_client_request().expect("request");
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(axum_header(name), value.parse().expect("header value"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(err) => panic!("connect: {err}"),
    }
}

fn axum_header(name: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    name.parse().expect("header name")
}

fn bearer(caller: &Caller) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {}", caller.token))]
}

/// Reads until the output shows `needle`; the output, and the exit
/// message if one came.
async fn read_until(socket: &mut Socket, needle: &str) -> (String, Option<Value>) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {needle:?} from the terminal; it showed:\n{}",
                    String::from_utf8_lossy(&seen)
                )
            });
        match message {
            Some(Ok(Message::Binary(bytes))) => seen.extend_from_slice(&bytes),
            Some(Ok(Message::Text(text))) => {
                let exit: Value = serde_json::from_str(text.as_str()).expect("json control");
                return (String::from_utf8_lossy(&seen).into_owned(), Some(exit));
            }
            Some(Ok(Message::Close(_))) | None => {
                return (String::from_utf8_lossy(&seen).into_owned(), None)
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => panic!("websocket: {err}"),
        }
        if !needle.is_empty() && String::from_utf8_lossy(&seen).contains(needle) {
            return (String::from_utf8_lossy(&seen).into_owned(), None);
        }
    }
}

async fn open(caller: &Caller) -> String {
    let (status, terminal) = caller
        .post(
            "/api/v1/terminals",
            json!({"command": ["/bin/sh"], "cols": 80, "rows": 24, "env": {"PS1": "$ "}}),
        )
        .await;
    assert_eq!(status, 201, "{terminal}");
    terminal["id"].as_str().expect("id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_over_a_websocket_types_resizes_reattaches_and_exits() {
    let Some((server, _admin, callers)) =
        server_with(ServerOptions::workers(1), &["tess", "uma"]).await
    else {
        return;
    };
    let (tess, uma) = (&callers[0], &callers[1]);
    let id = open(tess).await;

    let mut socket = connect(&server, &id, &bearer(tess)).await.expect("upgrade");
    socket
        .send(Message::Binary(b"echo hel''lo\n".to_vec().into()))
        .await
        .expect("type");
    read_until(&mut socket, "hello").await;
    let (_, shown) = tess.get(&format!("/api/v1/terminals/{id}")).await;
    assert_eq!(shown["attached"], 1, "{shown}");
    assert_eq!(shown["state"], "running", "{shown}");

    socket
        .send(Message::Text(
            json!({"type": "resize", "cols": 100, "rows": 40})
                .to_string()
                .into(),
        ))
        .await
        .expect("resize");
    socket
        .send(Message::Binary(b"stty size\n".to_vec().into()))
        .await
        .expect("type");
    read_until(&mut socket, "40 100").await;

    // Gone and back: the scrollback first.
    drop(socket);
    let mut socket = connect(&server, &id, &bearer(tess)).await.expect("upgrade");
    let (replayed, _) = read_until(&mut socket, "40 100").await;
    assert!(replayed.contains("hello"), "{replayed}");

    // Another user: 404 on the route and before any upgrade.
    let (status, _) = uma.get(&format!("/api/v1/terminals/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(connect(&server, &id, &bearer(uma)).await.err(), Some(404));
    // The session cookie from a foreign page: 403; from ours: fine.
    let cookie = ("cookie", format!("warren_session={}", tess.token));
    let foreign = vec![cookie.clone(), ("origin", "http://evil.test".to_string())];
    assert_eq!(connect(&server, &id, &foreign).await.err(), Some(403));
    let ours = vec![cookie, ("origin", server.base_url.clone())];
    let second = connect(&server, &id, &ours)
        .await
        .expect("same-origin cookie upgrade");
    drop(second);

    // The program's end comes as an exit message, then a close.
    socket
        .send(Message::Binary(b"exit 3\n".to_vec().into()))
        .await
        .expect("type");
    let (_, exit) = read_until(&mut socket, "").await;
    assert_eq!(
        exit,
        Some(json!({"type": "exit", "code": 3, "signal": null}))
    );
    let ended = gone(tess, &id, Duration::from_secs(10)).await;
    assert!(ended, "the terminal outlived its program");

    // A hang-up ends another; the metrics count what went through.
    let other = open(tess).await;
    let (status, _) = tess.delete(&format!("/api/v1/terminals/{other}")).await;
    assert_eq!(status, 204);
    // Gone at once for the API (its processes get their grace meanwhile).
    let (status, _) = tess.get(&format!("/api/v1/terminals/{other}")).await;
    assert_eq!(status, 404);
    let empty = warren_tests::eventually(Duration::from_secs(10), || async {
        tess.get("/api/v1/terminals").await.1["terminals"] == json!([])
    })
    .await;
    assert!(empty, "{:?}", tess.get("/api/v1/terminals").await);
    let metrics = server.metrics().await;
    let typed =
        warren_tests::metric_value(&metrics, "warren_terminal_bytes_total", "direction=\"in\"");
    assert!(typed.is_some_and(|n| n >= 20.0), "{metrics}");
}

/// The uid `caller`'s processes run as (the owner of their workspace).
async fn uid_of(admin: &Caller, caller: &Caller) -> u32 {
    let (_, user) = admin
        .get(&format!("/api/v1/admin/users/{}", caller.user_id()))
        .await;
    user["uid"].as_u64().expect("a uid of their own") as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_keeps_memory_flat_and_a_client_that_stops_reading_is_dropped() {
    let Some((server, _admin, callers)) = server_with(ServerOptions::workers(1), &["vera"]).await
    else {
        return;
    };
    let vera = &callers[0];
    let (status, terminal) = vera
        .post(
            "/api/v1/terminals",
            json!({"command": ["/bin/sh", "-c", "exec yes 0123456789abcdefghijklmnopqrstuvwxyz"], "cols": 80, "rows": 24}),
        )
        .await;
    assert_eq!(status, 201, "{terminal}");
    let id = terminal["id"].as_str().expect("id").to_string();
    let processes = || {
        let mut pids = vec![server.pid];
        pids.extend(server.worker_pids());
        pids
    };
    let rss = || -> u64 { processes().into_iter().map(warren_tests::rss_bytes).sum() };
    // One client that never reads, one that reads everything.
    let stalled = connect(&server, &id, &bearer(vera)).await.expect("upgrade");
    let mut reader = connect(&server, &id, &bearer(vera)).await.expect("upgrade");
    let mut received = 0usize;
    let warm = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < warm {
        if let Some(Ok(Message::Binary(bytes))) = reader.next().await {
            received += bytes.len();
        }
    }
    let before = rss();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(5), reader.next()).await {
            Ok(Some(Ok(Message::Binary(bytes)))) => received += bytes.len(),
            Ok(Some(Ok(_))) => {}
            other => panic!("the reading client lost its terminal: {other:?}"),
        }
    }
    let after = rss();
    assert!(received > 10 << 20, "only {received} bytes in 12 s");
    assert!(
        after < before + (32 << 20),
        "master and worker grew from {before} to {after} bytes during the flood"
    );
    // The client that never read was dropped, saying why; the process
    // is still there for the one that reads.
    let (status, shown) = vera.get(&format!("/api/v1/terminals/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        shown["attached"], 1,
        "the stalled client is still attached: {shown}"
    );
    drop(stalled);
    let (status, _) = vera.delete(&format!("/api/v1/terminals/{id}")).await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_closes_its_terminals_with_a_reason_and_leaves_no_process() {
    let Some((server, admin, callers)) = server_with(ServerOptions::workers(1), &["walt"]).await
    else {
        return;
    };
    let walt = &callers[0];
    let id = open(walt).await;
    let mut socket = connect(&server, &id, &bearer(walt)).await.expect("upgrade");
    socket
        .send(Message::Binary(
            b"sleep 1000 & echo start''ed\n".to_vec().into(),
        ))
        .await
        .expect("type");
    read_until(&mut socket, "started").await;
    let uid = uid_of(&admin, walt).await;
    assert!(!warren_tests::processes_of(uid).is_empty());
    warren_tests::send_signal(server.worker_pids()[0], rustix::process::Signal::KILL);
    let frame = close_frame(&mut socket).await;
    assert_eq!(u16::from(frame.code), 1011, "{frame:?}");
    assert!(frame.reason.contains("worker"), "{frame:?}");
    let none_left = warren_tests::eventually(Duration::from_secs(10), || async {
        warren_tests::processes_of(uid).is_empty()
    })
    .await;
    assert!(
        none_left,
        "left behind: {:?}",
        warren_tests::processes_of(uid)
    );
    // The slot serves again; the terminal is gone, not hung.
    assert!(gone(walt, &id, Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_terminal_is_hung_up() {
    let options = ServerOptions::workers(1)
        .arg("--terminal-idle-timeout")
        .arg("1s");
    let Some((server, _admin, callers)) = server_with(options, &["xena"]).await else {
        return;
    };
    let xena = &callers[0];
    let id = open(xena).await;
    // Attached, it stays however quiet.
    let socket = connect(&server, &id, &bearer(xena)).await.expect("upgrade");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(xena.get(&format!("/api/v1/terminals/{id}")).await.0, 200);
    drop(socket);
    let ended = gone(xena, &id, Duration::from_secs(15)).await;
    assert!(ended, "the idle terminal is still open");
}

/// Descriptors a process has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// What a hostile or unlucky client can do: paste into a program that
/// never reads and leave; keep a finished terminal's device open from
/// another terminal; attach too many sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_input_held_devices_and_socket_floods_leave_nothing_behind() {
    let options = ServerOptions::workers(1)
        .arg("--terminal-idle-timeout")
        .arg("2s");
    let Some((server, _admin, callers)) = server_with(options, &["yuri"]).await else {
        return;
    };
    let yuri = &callers[0];

    // 4 MiB pasted into a program that reads nothing, then the tab closed:
    // the socket goes, and the terminal idles out.
    let (status, terminal) = yuri
        .post(
            "/api/v1/terminals",
            json!({"command": ["sleep", "100000"], "cols": 80, "rows": 24}),
        )
        .await;
    assert_eq!(status, 201, "{terminal}");
    let sleeper = terminal["id"].as_str().expect("id").to_string();
    let mut socket = connect(&server, &sleeper, &bearer(yuri))
        .await
        .expect("upgrade");
    for _ in 0..4 {
        let paste = Message::Binary(vec![b'x'; 1 << 20].into());
        if tokio::time::timeout(Duration::from_secs(15), socket.send(paste))
            .await
            .is_err()
        {
            break;
        }
    }
    drop(socket);
    let ended = gone(yuri, &sleeper, Duration::from_secs(30)).await;
    assert!(
        ended,
        "{:?}",
        yuri.get(&format!("/api/v1/terminals/{sleeper}")).await
    );
    let sockets = warren_tests::eventually(Duration::from_secs(15), || async {
        warren_tests::metric_value(&server.metrics().await, "warren_websocket_connections", "")
            == Some(0.0)
    })
    .await;
    assert!(sockets, "a stuck socket is still open");

    // A terminal whose device another terminal holds open: when its
    // program ends, the worker lets go of it all the same.
    let holder = open(yuri).await;
    // Attached at once: with a 2 s idle timeout, a loaded machine could
    // otherwise hang it up before it is used.
    let mut holder_socket = connect(&server, &holder, &bearer(yuri))
        .await
        .expect("upgrade");
    let worker = server.worker_pids()[0];
    let baseline = open_fds(worker);
    let held = open(yuri).await;
    let mut held_socket = connect(&server, &held, &bearer(yuri))
        .await
        .expect("upgrade");
    held_socket
        .send(Message::Binary(b"echo DEV=$(tty)\n".to_vec().into()))
        .await
        .expect("type");
    let (seen, _) = read_until(&mut held_socket, "DEV=/dev/pts/").await;
    let (seen, _) = if seen
        .lines()
        .any(|l| l.starts_with("DEV=/dev/pts/") && l.trim().len() > 13)
    {
        (seen, None)
    } else {
        read_until(&mut held_socket, "\n$ ").await
    };
    let device = seen
        .lines()
        .find_map(|line| line.strip_prefix("DEV="))
        .expect("the device")
        .trim()
        .to_string();
    holder_socket
        .send(Message::Binary(
            format!("exec 3<>{device}; echo hel''d\n")
                .into_bytes()
                .into(),
        ))
        .await
        .expect("type");
    read_until(&mut holder_socket, "held").await;
    held_socket
        .send(Message::Binary(b"exit\n".to_vec().into()))
        .await
        .expect("type");
    read_until(&mut held_socket, "").await;
    let let_go = warren_tests::eventually(Duration::from_secs(15), || async {
        open_fds(worker) <= baseline
    })
    .await;
    assert!(
        let_go,
        "the worker holds {} descriptors, {baseline} before",
        open_fds(worker)
    );

    // At most 16 sockets on one terminal.
    let mut sockets = Vec::new();
    for _ in 0..16 {
        sockets.push(
            connect(&server, &holder, &bearer(yuri))
                .await
                .expect("upgrade"),
        );
    }
    let mut extra = connect(&server, &holder, &bearer(yuri))
        .await
        .expect("upgrade");
    let refused = close_frame(&mut extra).await;
    assert_eq!(u16::from(refused.code), 1008, "{refused:?}");
    assert!(refused.reason.contains("16"), "{refused:?}");
}

/// A credential that ends ends the sockets it opened at once (`1008`), not
/// at their next request: a logout, and an administrator disabling the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_session_or_a_disabled_user_closes_open_terminal_sockets_at_once() {
    let Some((server, admin, callers)) =
        server_with(ServerOptions::workers(1), &["vera", "walt"]).await
    else {
        return;
    };
    let (vera, walt) = (&callers[0], &callers[1]);

    // Vera signs out (the same session, elsewhere): her open socket closes.
    let id = open(vera).await;
    let mut socket = connect(&server, &id, &bearer(vera)).await.expect("upgrade");
    socket
        .send(Message::Binary(b"echo al''ive\n".to_vec().into()))
        .await
        .expect("type");
    read_until(&mut socket, "alive").await;
    let (status, body) = vera.post("/api/v1/auth/logout", json!({})).await;
    assert_eq!(status, 204, "{body}");
    let started = std::time::Instant::now();
    let frame = close_frame(&mut socket).await;
    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
    assert!(frame.reason.contains("session ended"), "{frame:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Walt is disabled by an administrator while attached.
    let id = open(walt).await;
    let mut socket = connect(&server, &id, &bearer(walt)).await.expect("upgrade");
    socket
        .send(Message::Binary(b"echo al''ive\n".to_vec().into()))
        .await
        .expect("type");
    read_until(&mut socket, "alive").await;
    let (status, body) = admin
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/users/{}", walt.user_id()),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let frame = close_frame(&mut socket).await;
    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
    // And nothing typed after the disabling can reach the shell.
    assert!(connect(&server, &id, &bearer(walt)).await.is_err());
}
