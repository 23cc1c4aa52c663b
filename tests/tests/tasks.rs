//! Tasks, end to end: start, status, output (ranges, follow, the bounded
//! output's marker), cancel, timeout, limits, delete; another user's task
//! is a 404 everywhere; a dead worker's or a restarted master's tasks are
//! `lost`; the task records on both database backends.

use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use warren_tests::accounts::{Caller, Database};
use warren_tests::{metric_value, Server, ServerOptions};

warren_tests::on_both_backends!(
    a_task_runs_ends_and_is_deleted,
    a_restart_marks_running_tasks_lost
);

async fn server_with(options: ServerOptions, users: &[&str]) -> (Server, Vec<Caller>) {
    let server = Server::ready(&options).await;
    let admin = Caller::admin(&server).await;
    let callers = warren_tests::accounts::users_on(&server, &admin, users).await;
    (server, callers)
}

/// POST /tasks: the status and the body.
async fn start(caller: &Caller, body: Value) -> (u16, Value) {
    caller.post("/api/v1/tasks", body).await
}

/// Starts a task that must be accepted; returns its id.
async fn started(caller: &Caller, body: Value) -> String {
    let (status, task) = start(caller, body.clone()).await;
    assert_eq!(status, 201, "{body}: {task}");
    task["id"].as_str().expect("id").to_string()
}

/// Waits (up to `patience`) until the task is no longer running; returns
/// its record.
async fn ended(caller: &Caller, id: &str, patience: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let (status, task) = caller.get(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(status, 200, "{task}");
        if task["state"] != "running" {
            return task;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} still running after {patience:?}: {task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn output(
    caller: &Caller,
    id: &str,
    range: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = caller.request(Method::GET, &format!("/api/v1/tasks/{id}/output"));
    if let Some(range) = range {
        request = request.header("range", range);
    }
    let response = request.send().await.expect("GET output");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.bytes().await.expect("body").to_vec(),
    )
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn a_task_runs_ends_and_is_deleted(db: Database) {
    let (server, callers) = server_with(ServerOptions::workers(2).database(&db), &["alice"]).await;
    let alice = &callers[0];
    let id = started(
        alice,
        json!({"command": ["echo", "hello"], "env": {"SECRET_TOKEN": "hunter2"}}),
    )
    .await;
    let task = ended(alice, &id, Duration::from_secs(10)).await;
    assert_eq!(task["state"], "exited", "{task}");
    assert_eq!(task["exit_code"], 0);
    assert_eq!(task["command"], json!(["echo", "hello"]));
    assert_eq!(task["env"], json!(["SECRET_TOKEN"]), "names only");
    assert_eq!(task["output_bytes"], 6);
    assert!(task["started_at"].is_string() && task["ended_at"].is_string());
    let (status, _, body) = output(alice, &id, None).await;
    assert_eq!((status, body.as_slice()), (200, b"hello\n".as_slice()));
    // Listed, newest first.
    let second = started(alice, json!({"command": "exit 3"})).await;
    let task = ended(alice, &second, Duration::from_secs(10)).await;
    assert_eq!(
        (task["state"].clone(), task["exit_code"].clone()),
        (json!("exited"), json!(3))
    );
    let (status, list) = alice.get("/api/v1/tasks?limit=1").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["tasks"][0]["id"], second.as_str());
    let cursor = list["next_cursor"].as_str().expect("a second page");
    let (_, page) = alice
        .get(&format!("/api/v1/tasks?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(page["tasks"][0]["id"], id.as_str());
    assert!(page["next_cursor"].is_null());
    let (_, exited) = alice.get("/api/v1/tasks?state=exited").await;
    assert_eq!(exited["tasks"].as_array().map(Vec::len), Some(2));
    let (_, running) = alice.get("/api/v1/tasks?state=running").await;
    assert_eq!(running["tasks"], json!([]));
    // Deleted: record and output.
    assert_eq!(alice.delete(&format!("/api/v1/tasks/{id}")).await.0, 204);
    assert_eq!(alice.get(&format!("/api/v1/tasks/{id}")).await.0, 404);
    assert_eq!(output(alice, &id, None).await.0, 404);
    // The secret value was never stored.
    let dump = db.dump(&server).await;
    assert!(
        !dump.contains("hunter2"),
        "an env value reached the database"
    );
    let metrics = server.metrics().await;
    assert!(
        metric_value(&metrics, "warren_tasks_total", "result=\"exited\"").is_some_and(|n| n >= 2.0),
        "{metrics}"
    );
    assert!(
        metric_value(&metrics, "warren_task_spawn_duration_seconds_count", "")
            .is_some_and(|n| n >= 2.0),
        "{metrics}"
    );
}

async fn a_restart_marks_running_tasks_lost(db: Database) {
    let dir = tempfile::tempdir().expect("data dir");
    let options = ServerOptions::workers(1).database(&db);
    let mut server = Server::start(dir.path(), &options);
    server.wait_ready().await;
    let admin = Caller::admin(&server).await.bearer();
    let id = started(&admin, json!({"command": ["sleep", "60"]})).await;
    let (_, task) = admin.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["state"], "running");
    server.signal(rustix::process::Signal::KILL);
    server.wait_exit(Duration::from_secs(10));
    drop(server);
    let server = Server::start(dir.path(), &options);
    server.wait_ready().await;
    let admin = Caller::admin(&server).await.bearer();
    let (_, task) = admin.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["state"], "lost", "{task}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_cancel_failure_and_limits() {
    let options = ServerOptions::workers(1)
        .arg("--task-limit")
        .arg("2")
        .arg("--task-cancel-grace")
        .arg("1s");
    let (server, callers) = server_with(options, &["alice"]).await;
    let alice = &callers[0];
    // Past its timeout: timed_out.
    let slow = started(alice, json!({"command": ["sleep", "30"], "timeout": 1})).await;
    let task = ended(alice, &slow, Duration::from_secs(10)).await;
    assert_eq!(task["state"], "timed_out", "{task}");
    // Cancelled: killed; a second cancel is a conflict.
    let victim = started(alice, json!({"command": "sleep 30 & sleep 30; wait"})).await;
    let (status, task) = alice
        .post(&format!("/api/v1/tasks/{victim}/cancel"), json!({}))
        .await;
    assert_eq!(status, 202, "{task}");
    let task = ended(alice, &victim, Duration::from_secs(10)).await;
    assert_eq!(task["state"], "killed", "{task}");
    let (status, _) = alice
        .post(&format!("/api/v1/tasks/{victim}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409);
    // Commands that cannot run: tasks that failed.
    let (status, task) = start(alice, json!({"command": [""]})).await;
    assert_eq!(
        (status, task["state"].clone()),
        (201, json!("failed")),
        "{task}"
    );
    let (status, task) = start(alice, json!({"command": ["/nonexistent/program"]})).await;
    assert_eq!(status, 201, "{task}");
    assert_eq!(task["state"], "failed", "{task}");
    assert!(task["error"].is_string(), "{task}");
    // The task limit: 429 with Retry-After, and no record of the refusal.
    let one = started(alice, json!({"command": ["sleep", "30"]})).await;
    let two = started(alice, json!({"command": ["sleep", "30"]})).await;
    let response = alice
        .request(Method::POST, "/api/v1/tasks")
        .json(&json!({"command": ["sleep", "30"]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "too_many_tasks", "{body}");
    let (_, running) = alice.get("/api/v1/tasks?state=running").await;
    assert_eq!(
        running["tasks"].as_array().map(Vec::len),
        Some(2),
        "{running}"
    );
    // A running task cannot be deleted.
    assert_eq!(alice.delete(&format!("/api/v1/tasks/{one}")).await.0, 409);
    for id in [&one, &two] {
        assert_eq!(
            alice
                .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
                .await
                .0,
            202
        );
    }
    for id in [&one, &two] {
        ended(alice, id, Duration::from_secs(10)).await;
    }
    // Audited.
    let admin = Caller::admin(&server).await;
    let (_, audit) = admin.get("/api/v1/admin/audit?event=task_started").await;
    assert!(audit.as_array().is_some_and(|a| a.len() >= 4), "{audit}");
    let (_, audit) = admin.get("/api/v1/admin/audit?event=task_cancelled").await;
    assert!(audit.as_array().is_some_and(|a| a.len() >= 3), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_ranges_follow_and_the_bound() {
    let options = ServerOptions::workers(1)
        .arg("--task-output-limit")
        .arg("4KiB");
    let (_server, callers) = server_with(options, &["alice"]).await;
    let alice = &callers[0];
    let digits = started(alice, json!({"command": ["printf", "0123456789"]})).await;
    ended(alice, &digits, Duration::from_secs(10)).await;
    let (status, headers, body) = output(alice, &digits, Some("bytes=2-5")).await;
    assert_eq!((status, body.as_slice()), (206, b"2345".as_slice()));
    assert_eq!(header(&headers, "content-range"), "bytes 2-5/10");
    let (status, _, body) = output(alice, &digits, Some("bytes=-3")).await;
    assert_eq!((status, body.as_slice()), (206, b"789".as_slice()));
    assert_eq!(output(alice, &digits, Some("bytes=10-")).await.0, 416);
    // More output than the bound: the oldest goes, with a marker.
    let chatty = started(
        alice,
        json!({"command": "head -c 10000 /dev/zero | tr '\\0' a"}),
    )
    .await;
    let task = ended(alice, &chatty, Duration::from_secs(10)).await;
    assert_eq!(task["output_bytes"], 10000, "{task}");
    let (status, headers, body) = output(alice, &chatty, None).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-warren-output-written"), "10000");
    let dropped: usize = header(&headers, "x-warren-output-dropped")
        .parse()
        .expect("dropped");
    let kept = 10000 - dropped;
    assert!(dropped > 0 && kept <= 4096, "dropped {dropped}");
    let marker = format!("[warren: {dropped} earlier bytes of output dropped]\n");
    assert!(
        body.starts_with(marker.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&body[..60.min(body.len())])
    );
    assert_eq!(&body[marker.len()..], vec![b'a'; kept].as_slice());
    assert_eq!(output(alice, &chatty, Some("bytes=0-10")).await.0, 416);
    let (status, headers, body) = output(alice, &chatty, Some("bytes=9990-")).await;
    assert_eq!((status, body.len()), (206, 10));
    assert_eq!(header(&headers, "content-range"), "bytes 9990-9999/10000");
    // Follow: output as it comes, the response ends with the task.
    let slow = started(alice, json!({"command": "echo one; sleep 1; echo two"})).await;
    let response = alice
        .request(
            Method::GET,
            &format!("/api/v1/tasks/{slow}/output?follow=true"),
        )
        .send()
        .await
        .expect("follow");
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), response.bytes())
        .await
        .expect("the followed output ends with the task")
        .expect("body");
    assert_eq!(body.as_ref(), b"one\ntwo\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_tasks_are_404_everywhere() {
    let (_server, callers) = server_with(ServerOptions::workers(2), &["alice", "bob"]).await;
    let (alice, bob) = (&callers[0], &callers[1]);
    let id = started(alice, json!({"command": ["sleep", "30"]})).await;
    let missing = uuid::Uuid::new_v4().to_string();
    for target in [id.as_str(), missing.as_str(), "not-a-uuid"] {
        assert_eq!(
            bob.get(&format!("/api/v1/tasks/{target}")).await.0,
            404,
            "{target}"
        );
        assert_eq!(output(bob, target, None).await.0, 404, "{target}");
        assert_eq!(
            bob.post(&format!("/api/v1/tasks/{target}/cancel"), json!({}))
                .await
                .0,
            404,
            "{target}"
        );
        assert_eq!(
            bob.delete(&format!("/api/v1/tasks/{target}")).await.0,
            404,
            "{target}"
        );
    }
    let (_, list) = bob.get("/api/v1/tasks").await;
    assert_eq!(list["tasks"], json!([]));
    // Still Alice's, still running.
    let (_, task) = alice.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["state"], "running");
    assert_eq!(
        alice
            .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
            .await
            .0,
        202
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_tasks_are_lost() {
    let (server, callers) = server_with(ServerOptions::workers(1), &["alice"]).await;
    let alice = &callers[0];
    let id = started(alice, json!({"command": ["sleep", "60"]})).await;
    for pid in server.worker_pids() {
        warren_tests::send_signal(pid, rustix::process::Signal::KILL);
    }
    let task = ended(alice, &id, Duration::from_secs(5)).await;
    assert_eq!(task["state"], "lost", "{task}");
    assert!(
        task["error"].as_str().is_some_and(|e| e.contains("worker")),
        "{task}"
    );
    // The slot serves again.
    let again = started(alice, json!({"command": ["true"]})).await;
    let task = ended(alice, &again, Duration::from_secs(10)).await;
    assert_eq!(task["state"], "exited");
}

/// Bad input is refused before anything runs, with a clear answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_task_requests_are_400_or_422() {
    let (_server, callers) = server_with(ServerOptions::workers(1), &["alice"]).await;
    let alice = &callers[0];
    let many: Vec<String> = (0..1100).map(|n| n.to_string()).collect();
    let cases = [
        (json!({"command": []}), 422),
        (json!({"command": ""}), 422),
        (json!({"command": ["a\u{0}b"]}), 422),
        (json!({"command": many}), 422),
        (json!({"command": "x", "env": {"BAD-NAME": "1"}}), 422),
        (json!({"command": "x", "timeout": 0}), 422),
        (json!({"command": "x", "timeout": 700000}), 422),
        (
            json!({"command": "x", "stdin": "a".repeat(1024 * 1024 + 1)}),
            422,
        ),
        (json!({"command": "x", "unknown": true}), 422),
        (json!({"command": 5}), 422),
        (json!({"command": "x", "cwd": "../elsewhere"}), 400),
        (json!({"command": "x", "cwd": "/etc"}), 400),
    ];
    for (body, expected) in cases {
        let (status, answer) = start(alice, body.clone()).await;
        assert_eq!(status, expected, "{body}: {answer}");
        assert!(answer["error"]["code"].is_string(), "{answer}");
    }
    let (status, _) = alice.get("/api/v1/tasks?state=bogus").await;
    assert_eq!(status, 400);
    let (status, _) = alice.get("/api/v1/tasks?cursor=nonsense").await;
    assert_eq!(status, 400);
    let (status, _) = alice.get("/api/v1/tasks?limit=0").await;
    assert_eq!(status, 400);
    let (_, list) = alice.get("/api/v1/tasks").await;
    assert_eq!(list["tasks"], json!([]), "nothing was recorded");
}

/// Per-user process limits: set, shown and cleared by an admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_set_per_user_process_limits() {
    let server = Server::ready(&ServerOptions::workers(1)).await;
    let admin = Caller::admin(&server).await;
    let id = admin.create_user("dora", "dora-password").await;
    let (status, user) = admin.get(&format!("/api/v1/admin/users/{id}")).await;
    assert_eq!(status, 200);
    let uid = user["uid"].as_i64().expect("a uid");
    // From the test server's own range (`warren_tests::uid_range_of`).
    let range = warren_tests::uid_range_of(&server.data_dir);
    let (low, high) = range.split_once('-').expect("a range");
    let (low, high): (i64, i64) = (low.parse().unwrap(), high.parse().unwrap());
    assert!((low..=high).contains(&uid), "{user} not in {range}");
    assert!(user["limits"]["process"].is_null());
    let path = format!("/api/v1/admin/users/{id}");
    let (status, user) = admin
        .send(
            Method::PATCH,
            &path,
            Some(json!({"limits": {"memory": 1073741824, "tasks": 3}})),
        )
        .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(
        user["limits"]["process"],
        json!({"memory": 1073741824, "tasks": 3})
    );
    for bad in [
        json!({"limits": {"tasks": 0}}),
        json!({"limits": {"cpu_weight": 20000}}),
        json!({"limits": {"bogus": 1}}),
        json!({"limits": {"memory": -1}}),
        json!({"limits": [null, null]}),
    ] {
        let (status, answer) = admin.send(Method::PATCH, &path, Some(bad.clone())).await;
        assert_eq!(status, 422, "{bad}: {answer}");
    }
    let (status, user) = admin
        .send(Method::PATCH, &path, Some(json!({"limits": null})))
        .await;
    assert_eq!(status, 200);
    assert!(user["limits"]["process"].is_null(), "{user}");
    // Another user gets another uid.
    let other = admin.create_user("erin", "erin-password").await;
    let (_, erin) = admin.get(&format!("/api/v1/admin/users/{other}")).await;
    assert_ne!(erin["uid"], json!(uid));
}

/// What one user adds to the database is bounded: beyond `--task-history`
/// records, starting a task removes the oldest finished ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_finished_tasks_are_removed_beyond_the_history() {
    let options = ServerOptions::workers(1).arg("--task-history").arg("3");
    let (_server, callers) = server_with(options, &["alice"]).await;
    let alice = &callers[0];
    let mut ids = Vec::new();
    for _ in 0..6 {
        let id = started(alice, json!({"command": ["true"]})).await;
        ended(alice, &id, Duration::from_secs(10)).await;
        ids.push(id);
    }
    let kept = warren_tests::eventually(Duration::from_secs(5), || async {
        let (_, list) = alice.get("/api/v1/tasks").await;
        list["tasks"].as_array().map(Vec::len) == Some(3)
    })
    .await;
    let (_, list) = alice.get("/api/v1/tasks").await;
    assert!(kept, "{list}");
    let listed: Vec<&str> = list["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(listed, [&ids[5], &ids[4], &ids[3]].map(String::as_str));
    assert_eq!(alice.get(&format!("/api/v1/tasks/{}", ids[0])).await.0, 404);
}

/// A followed output may last as long as its task: when the caller's
/// session ends it is cut at once (an incomplete body, not the clean end
/// that means the task ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_output_is_cut_when_the_session_ends() {
    let (_server, callers) = server_with(ServerOptions::workers(1), &["zoe"]).await;
    let zoe = &callers[0];
    let id = started(zoe, json!({"command": "echo one; sleep 60"})).await;
    let mut response = zoe
        .request(
            Method::GET,
            &format!("/api/v1/tasks/{id}/output?follow=true"),
        )
        .send()
        .await
        .expect("follow");
    assert_eq!(response.status(), 200);
    let mut seen = Vec::new();
    while !seen.ends_with(b"one\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("the first output comes")
            .expect("a chunk")
            .expect("not the end yet");
        seen.extend_from_slice(&chunk);
    }
    let (status, body) = zoe.post("/api/v1/auth/logout", json!({})).await;
    assert_eq!(status, 204, "{body}");
    let cut = warren_tests::body_end(&mut response, Duration::from_secs(5))
        .await
        .expect("the followed output stops within 5 s of the logout");
    assert!(cut, "the transfer is cut, not ended as if the task had");
}
