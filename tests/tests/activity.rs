//! The live activity feed, end to end: a user's stream carries their own
//! events in full and only counts of everyone else's; the admin stream
//! carries everything; a client that stops reading is dropped and the
//! master's memory stays flat.

use reqwest::Method;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use warren_tests::accounts::Caller;
use warren_tests::files::put;
use warren_tests::{metric_value, Server, ServerOptions};

/// Reads server-sent events from a response.
struct Events {
    response: reqwest::Response,
    buffer: String,
    /// Everything received, for "never appears" checks.
    pub raw: String,
}

impl Events {
    async fn open(caller: &Caller, path: &str) -> Events {
        let response = caller
            .request(Method::GET, path)
            .send()
            .await
            .expect("GET the feed");
        assert_eq!(response.status(), 200, "{path}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Events {
            response,
            buffer: String::new(),
            raw: String::new(),
        }
    }

    /// The next event (name, JSON data) within `patience`.
    async fn next(&mut self, patience: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim().to_string();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a heartbeat comment
                }
                return Some((
                    name,
                    serde_json::from_str(&data).unwrap_or(Value::String(data)),
                ));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .ok()??;
            let text = String::from_utf8_lossy(&chunk);
            self.raw.push_str(&text);
            self.buffer.push_str(&text);
        }
    }

    /// Events until `done` says so (true) or `patience` runs out (false).
    async fn until(
        &mut self,
        patience: Duration,
        mut done: impl FnMut(&str, &Value) -> bool,
    ) -> bool {
        let deadline = Instant::now() + patience;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left).await {
                Some((name, data)) => {
                    if done(&name, &data) {
                        return true;
                    }
                }
                None => return false,
            }
        }
        false
    }
}

async fn server_with(options: ServerOptions, users: &[&str]) -> (Server, Caller, Vec<Caller>) {
    let server = Server::ready(&options).await;
    let admin = Caller::admin(&server).await;
    let callers = warren_tests::accounts::users_on(&server, &admin, users).await;
    (server, admin, callers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_events_in_full_and_only_counts_of_others() {
    let (server, admin, callers) = server_with(ServerOptions::workers(2), &["alice", "bob"]).await;
    let (alice, bob) = (&callers[0], &callers[1]);
    let mut feed = Events::open(alice, "/api/v1/activity").await;
    let mut everything = Events::open(&admin.bearer(), "/api/v1/admin/activity").await;
    // The first summary comes at once: nobody else did anything yet.
    let (name, first) = feed
        .next(Duration::from_secs(5))
        .await
        .expect("a first summary");
    assert_eq!(name, "summary");
    assert_eq!(first, json!({"users_active": 0, "tasks_running": 0}));

    // Bob's changes: names and paths that must never reach Alice.
    assert_eq!(put(bob, "bobs-secret-plan.txt", "x").await.0, 201);
    let (status, _) = bob
        .send(Method::POST, "/api/v1/files/bobs-hidden-dir?op=mkdir", None)
        .await;
    assert_eq!(status, 201);
    let (status, bobs_task) = bob
        .post(
            "/api/v1/tasks",
            json!({"command": "sleep 30 # bobs-secret-command"}),
        )
        .await;
    assert_eq!(status, 201, "{bobs_task}");
    let bobs_task = bobs_task["id"].as_str().expect("id").to_string();
    // Alice's own.
    assert_eq!(put(alice, "alices-notes.txt", "hello").await.0, 201);
    let (status, _) = alice
        .send(
            Method::POST,
            "/api/v1/files/alices-notes.txt?op=move",
            Some(json!({"to": "alices-renamed.txt"})),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        alice.delete("/api/v1/files/alices-renamed.txt").await.0,
        204
    );
    let (status, task) = alice
        .post("/api/v1/tasks", json!({"command": ["sh", "-c", "exit 7"]}))
        .await;
    assert_eq!(status, 201, "{task}");

    let mut seen = Vec::new();
    let mut exit_code = None;
    let mut others_counted = false;
    let complete = feed
        .until(Duration::from_secs(10), |name, data| {
            match name {
                "activity" => {
                    seen.push(data["type"].as_str().unwrap_or("").to_string());
                    if data["type"] == "task_finished" {
                        exit_code = data["exit_code"].as_i64();
                    }
                }
                "summary" => {
                    others_counted |= *data == json!({"users_active": 1, "tasks_running": 1})
                }
                _ => {}
            }
            seen.len() >= 5 && others_counted
        })
        .await;
    assert!(
        complete,
        "alice's five events and a count of one other user with one task: saw {seen:?}, counted {others_counted}\n{}",
        feed.raw
    );
    assert_eq!(
        seen,
        [
            "file_written",
            "file_moved",
            "file_deleted",
            "task_started",
            "task_finished"
        ]
    );
    assert_eq!(exit_code, Some(7));
    assert!(feed.raw.contains("alices-notes.txt"), "{}", feed.raw);
    assert!(feed.raw.contains("exit 7"), "{}", feed.raw);
    for secret in [
        "bob",
        &bob.user_id(),
        "bobs-secret-plan",
        "bobs-hidden-dir",
        "bobs-secret-command",
        &bobs_task,
    ] {
        assert!(
            !feed.raw.contains(secret),
            "{secret:?} reached alice's feed:\n{}",
            feed.raw
        );
    }
    // Alice's own events come with her, never with anyone else.
    assert!(!feed.raw.contains("\"name\":\"bob\""));

    // The admin sees everyone's events, with names.
    let mut names = std::collections::HashSet::new();
    let mut bobs_command = false;
    let all = everything
        .until(Duration::from_secs(10), |name, data| {
            if name == "activity" {
                if let Some(user) = data["user"]["name"].as_str() {
                    names.insert(user.to_string());
                }
                bobs_command |= data["command"].to_string().contains("bobs-secret-command");
            }
            names.contains("alice") && names.contains("bob") && bobs_command
        })
        .await;
    assert!(all, "the admin sees both users' events: {}", everything.raw);
    assert!(everything.raw.contains("bobs-secret-plan.txt"));

    // Not for users.
    assert_eq!(alice.get("/api/v1/admin/activity").await.0, 403);
    let cancel = format!("/api/v1/tasks/{bobs_task}/cancel");
    assert_eq!(bob.post(&cancel, json!({})).await.0, 202);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_memory_stays_flat() {
    let options = ServerOptions::workers(1).arg("--send-timeout").arg("2s");
    let (server, _admin, callers) = server_with(options, &["carol"]).await;
    let carol = &callers[0];
    // A deep directory, so that every move names two ~4 KiB paths: big
    // events fill the socket's buffers fast.
    let dir: Vec<String> = (0..15).map(|n| format!("{n:0>250}")).collect();
    let dir = dir.join("/");
    let (status, body) = carol
        .send(
            Method::POST,
            &format!("/api/v1/files/{dir}?op=mkdir&parents=true"),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    const CHAINS: usize = 4;
    for chain in 0..CHAINS {
        assert_eq!(put(carol, &format!("{dir}/f{chain}-a"), "x").await.0, 201);
    }
    // Warm up: the allocator's arenas, the connection pool, the routes.
    let flip = |round: usize| {
        let carol = carol.clone();
        let dir = dir.clone();
        async move {
            let mut moves = Vec::new();
            for chain in 0..CHAINS {
                let (from, to) = if round.is_multiple_of(2) {
                    ("a", "b")
                } else {
                    ("b", "a")
                };
                let carol = carol.clone();
                let dir = dir.clone();
                moves.push(tokio::spawn(async move {
                    carol
                        .send(
                            Method::POST,
                            &format!("/api/v1/files/{dir}/f{chain}-{from}?op=move"),
                            Some(json!({"to": format!("{dir}/f{chain}-{to}")})),
                        )
                        .await
                        .0
                }));
            }
            for result in moves {
                assert_eq!(result.await.expect("join"), 201);
            }
        }
    };
    for round in 0..100 {
        flip(round).await;
    }
    let before = warren_tests::rss_bytes(server.pid);

    // A client that asks for its feed and then reads nothing.
    let address = server.base_url.trim_start_matches("http://").to_string();
    let mut stalled = std::net::TcpStream::connect(&address).expect("connect");
    write!(
        stalled,
        "GET /api/v1/activity HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\r\n",
        carol.token
    )
    .expect("send the request");
    // Far more than the feed's 1024 events, and than any socket buffers.
    let flood = Instant::now();
    for round in 100..2100 {
        flip(round).await;
    }
    let event_bytes = 2000 * CHAINS * 2 * dir.len();
    eprintln!(
        "{} events, ~{} MiB of paths, in {:?}",
        2000 * CHAINS,
        event_bytes >> 20,
        flood.elapsed()
    );
    let after = warren_tests::rss_bytes(server.pid);
    eprintln!(
        "master RSS before {} MiB, after {} MiB",
        before >> 20,
        after >> 20
    );
    assert!(
        after < before + (event_bytes as u64) / 4,
        "the master's memory grew from {before} to {after} bytes with {event_bytes} bytes of events for a client that reads nothing"
    );
    // The server gave up on the client: after what was in flight, EOF.
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut sink = vec![0u8; 1 << 20];
    let closed = loop {
        match stalled.read(&mut sink) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(closed, "the server kept a client that read nothing");
    // The feed still serves clients that read.
    let mut feed = Events::open(carol, "/api/v1/activity").await;
    assert!(feed.next(Duration::from_secs(5)).await.is_some());
    let metrics = server.metrics().await;
    let timeouts = metric_value(
        &metrics,
        "warren_http_connection_timeouts_total",
        "kind=\"send\"",
    );
    assert!(
        timeouts.is_some_and(|n| n >= 1.0),
        "the send timeout closed the stalled client: {timeouts:?}"
    );
}

/// A feed ends when the credential that opened it does: a logout ends a
/// user's, and an administrator's demotion ends their admin feed, at once
/// (not at a next request: a feed has none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_ends_with_its_credential() {
    let (server, admin, callers) = server_with(ServerOptions::workers(1), &["xena", "yuri"]).await;
    let (xena, yuri) = (&callers[0], &callers[1]);

    let mut feed = Events::open(xena, "/api/v1/activity").await;
    let (status, body) = xena.post("/api/v1/auth/logout", json!({})).await;
    assert_eq!(status, 204, "{body}");
    let started = Instant::now();
    while feed.next(Duration::from_secs(10)).await.is_some() {}
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Yuri is made an administrator, opens the admin feed, and is demoted.
    let path = format!("/api/v1/admin/users/{}", yuri.user_id());
    let (status, body) = admin
        .send(Method::PATCH, &path, Some(json!({"role": "admin"})))
        .await;
    assert_eq!(status, 200, "{body}");
    let yuri = Caller::login(&server, "yuri", "yuri-password").await;
    let mut feed = Events::open(&yuri, "/api/v1/admin/activity").await;
    let (status, body) = admin
        .send(Method::PATCH, &path, Some(json!({"role": "user"})))
        .await;
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    // An event after the demotion must not reach the old admin feed.
    put(&admin, "after-demotion.txt", "x").await;
    while feed.next(Duration::from_secs(10)).await.is_some() {}
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!feed.raw.contains("after-demotion"), "{}", feed.raw);
}
