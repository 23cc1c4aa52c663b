//! Users' apps through the real master and worker, with a small real app
//! (`tests/apps/fixture_app.py`, Debian's python3 as the user's uid in the
//! sandbox): start on first request, the proxy's headers and streaming,
//! crashes, failures, idle stop, limits, who may reach whose app, and a
//! worker's death. The real applications (Jupyter Server, OpenCode,
//! code-server) are in `real_apps.rs`.

use reqwest::Method;
use serde_json::Value;
use std::time::{Duration, Instant};
use warren_tests::accounts::Caller;
use warren_tests::{Server, ServerOptions};

fn fixture_dir() -> String {
    format!("{}/apps", env!("CARGO_MANIFEST_DIR"))
}

/// An app definition of the fixture: `listen` unix or tcp, `env` entries
/// beside its secret, and extra lines.
fn fixture(name: &str, listen: &str, env: &str, extra: &str) -> String {
    let dir = fixture_dir();
    let (flag, strip) = match listen {
        "tcp" => (
            "--port\", \"{port}",
            "strip_prefix = true\nready_path = \"/health\"",
        ),
        _ => (
            "--socket\", \"{socket}\", \"--prefix\", \"{base_url}",
            "ready_path = \"{base_url}health\"",
        ),
    };
    let env = if env.is_empty() {
        String::new()
    } else {
        format!(", {env}")
    };
    format!(
        r#"
[apps.{name}]
command = ["/usr/bin/python3", "{dir}/fixture_app.py", "{flag}"]
listen = "{listen}"
{strip}
auth = "bearer:{{secret}}"
env = {{ FIXTURE_SECRET = "{{secret}}"{env} }}
read_execute = ["{dir}"]
{extra}
"#
    )
}

/// A server with `apps` (TOML) and users `names`; `None` (said loudly)
/// where this machine cannot run the sandbox and nothing requires it.
async fn server_with_apps(
    apps: &str,
    options: ServerOptions,
    names: &[&str],
) -> Option<(Server, Caller, Vec<Caller>, tempfile::TempDir)> {
    if !std::path::Path::new("/usr/bin/python3").exists() {
        assert!(
            !warren_tests::sandbox_required(),
            "the apps' tests need /usr/bin/python3"
        );
        eprintln!("*** SKIPPED: no /usr/bin/python3 for the fixture app");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("apps.toml");
    std::fs::write(&file, apps).expect("write apps.toml");
    let options = options
        .arg("--apps")
        .arg(file.to_str().expect("utf-8 path"));
    let (server, admin, callers) =
        warren_tests::accounts::sandboxed_server(&options, names).await?;
    Some((server, admin, callers, dir))
}

/// GET through the proxy: status and body as JSON (or a string).
async fn get(caller: &Caller, path: &str) -> (u16, Value) {
    caller.get(path).await
}

async fn app_state(caller: &Caller, name: &str) -> Value {
    warren_tests::accounts::app_of(caller, name).await
}

/// Waits (up to `patience`) until the caller's app `name` is in `state`
/// and its message says `why`; the app.
async fn ends_up(caller: &Caller, name: &str, state: &str, why: &str, patience: Duration) -> Value {
    let reached = warren_tests::eventually(patience, || async {
        app_state(caller, name).await["state"] == state
    })
    .await;
    let app = app_state(caller, name).await;
    assert!(reached, "{name} not {state}: {app}");
    let message = app["message"].as_str().unwrap_or("");
    assert!(message.contains(why), "{name}: {app}");
    app
}

/// GETs `path` until it answers 200 (an app starting or restarting
/// answers 503 meanwhile).
async fn get_when_up(caller: &Caller, path: &str, patience: Duration) -> Value {
    let deadline = Instant::now() + patience;
    loop {
        let (status, body) = get(caller, path).await;
        if status == 200 {
            return body;
        }
        assert!(
            Instant::now() < deadline && (status == 503 || status == 502),
            "GET {path}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn uid_of(caller: &Caller) -> u32 {
    caller.login["user"]["uid"].as_u64().expect("uid") as u32
}

#[tokio::test]
async fn an_app_starts_on_first_request_and_the_proxy_passes_only_what_it_should() {
    let apps = fixture("fix", "unix", "", "") + &fixture("fixtcp", "tcp", "", "");
    let Some((server, _admin, users, _dir)) =
        server_with_apps(&apps, ServerOptions::workers(2), &["alice"]).await
    else {
        return;
    };
    let alice = &users[0];
    assert_eq!(app_state(alice, "fix").await["state"], "stopped");
    // A browser: its session in a cookie.
    let browser = Caller::login(&server, "alice", "alice-password").await;
    assert!(browser.via_cookie);

    // The first request starts it and is answered, not refused.
    let started = Instant::now();
    let mut cookies = reqwest::header::HeaderMap::new();
    let both = format!("warren_session={}; theirs=kept", browser.token);
    cookies.insert("cookie", both.parse().expect("header"));
    let response = browser
        .request(Method::GET, "/user/alice/fix/echo/x?q=1")
        .headers(cookies)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.expect("json");
    eprintln!("first request answered in {:?}", started.elapsed());
    assert_eq!(echo["path"], "/user/alice/fix/echo/x?q=1", "{echo}");
    assert_eq!(echo["uid"], uid_of(alice), "the app runs as the user's uid");
    let headers = &echo["headers"];
    let cookie = headers["cookie"].as_str().unwrap_or("");
    assert!(!cookie.contains("warren_session"), "{headers}");
    assert!(cookie.contains("theirs=kept"), "{headers}");
    let auth = headers["authorization"].as_str().expect("auth");
    assert!(
        auth.starts_with("Bearer ") && auth.len() == 7 + 64,
        "{auth}"
    );
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    // A client's own credential never reaches the app.
    let (_, echo) = get(alice, "/user/alice/fix/echo").await;
    assert_eq!(echo["headers"]["authorization"], auth, "{echo}");
    assert!(!echo.to_string().contains(&alice.token));
    let app = app_state(alice, "fix").await;
    assert_eq!(app["state"], "running", "{app}");
    assert!(
        app["memory_bytes"].as_u64().unwrap_or(0) > 1_000_000,
        "{app}"
    );

    // TCP, prefix stripped.
    let echo = get_when_up(alice, "/user/alice/fixtcp/echo/y", Duration::from_secs(20)).await;
    assert_eq!(echo["path"], "/echo/y");
    assert_eq!(echo["headers"]["x-forwarded-prefix"], "/user/alice/fixtcp");

    // Bodies stream both ways, whole.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(&body);
        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let response = alice
        .request(Method::POST, "/user/alice/fix/echo")
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.expect("json");
    assert_eq!(echo["length"], 3_000_000);
    assert_eq!(echo["sha256"], digest);

    // An event stream arrives as it is written, not at its end.
    let started = Instant::now();
    let mut response = alice
        .request(Method::GET, "/user/alice/fix/events")
        .send()
        .await
        .expect("GET events");
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.expect("chunk").expect("some bytes");
    assert!(String::from_utf8_lossy(&first).contains("tick 0"));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the first event took {:?} (the stream lasts 2 s)",
        started.elapsed()
    );

    // A stream outlives its request: it is cut (not ended cleanly) as soon
    // as the session that opened it ends.
    let other = Caller::login(&server, "alice", "alice-password").await;
    let mut response = other
        .request(Method::GET, "/user/alice/fix/events?n=300")
        .send()
        .await
        .expect("GET events");
    assert_eq!(response.status(), 200);
    response.chunk().await.expect("chunk").expect("some bytes");
    let (status, body) = other
        .post("/api/v1/auth/logout", serde_json::json!({}))
        .await;
    assert_eq!(status, 204, "{body}");
    let cut = warren_tests::body_end(&mut response, Duration::from_secs(5))
        .await
        .expect("the app's stream stops within 5 s of the logout (it lasts 30 s)");
    assert!(cut, "cut, not ended as if the app had finished");

    // A trailing-slash-less URL is redirected beneath the app.
    let response = alice
        .request(Method::GET, "/user/alice/fix?a=b")
        .send()
        .await
        .expect("GET");
    // (Followed: the app has no page at its root.)
    assert!(
        response.url().as_str().ends_with("/user/alice/fix/?a=b"),
        "{}",
        response.url()
    );

    // A cross-site POST with the cookie is refused before the app.
    let mut evil = reqwest::header::HeaderMap::new();
    evil.insert("origin", "https://evil.example".parse().expect("header"));
    let response = browser
        .request(Method::POST, "/user/alice/fix/echo")
        .headers(evil)
        .body("x")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 403);

    // An unknown app is a 404; no login is a 401.
    assert_eq!(get(alice, "/user/alice/nope/").await.0, 404);
    let (status, _) = server.get_json("/user/alice/fix/echo").await;
    assert_eq!(status, 401);

    let metrics = server.metrics().await;
    assert_eq!(
        warren_tests::metric_value(&metrics, "warren_apps_running", "app=\"fix\""),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        warren_tests::metric_value(
            &metrics,
            "warren_proxy_requests_total",
            "app=\"fix\",status=\"200\""
        )
        .is_some_and(|n| n >= 3.0),
        "{metrics}"
    );
    assert!(metrics.contains("warren_app_start_duration_seconds_bucket{"));
    assert_eq!(
        warren_tests::metric_value(
            &metrics,
            "warren_app_starts_total",
            "app=\"fix\",result=\"running\""
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn no_one_else_reaches_a_users_app() {
    let dir = fixture_dir();
    // An app with no credential of its own (as code-server runs): only
    // where its socket is keeps others out.
    let open = format!(
        r#"
[apps.open]
command = ["/usr/bin/python3", "{dir}/fixture_app.py", "--socket", "{{socket}}"]
strip_prefix = true
ready_path = "/health"
read_execute = ["{dir}"]
"#
    );
    let apps = fixture("fix", "unix", "", "") + &fixture("fixtcp", "tcp", "", "") + &open;
    let Some((server, admin, users, _dir)) =
        server_with_apps(&apps, ServerOptions::workers(2), &["alice", "bob"]).await
    else {
        return;
    };
    let (alice, bob) = (&users[0], &users[1]);
    get_when_up(alice, "/user/alice/fix/echo", Duration::from_secs(20)).await;
    let echo = get_when_up(alice, "/user/alice/fixtcp/echo", Duration::from_secs(20)).await;

    // By path: a 404 for bob, his token, and an administrator.
    for caller in [bob, &bob.bearer(), &admin] {
        for path in [
            "/user/alice/fix/echo",
            "/user/alice/fixtcp/echo",
            "/user/alice/fix/",
        ] {
            let (status, body) = get(caller, path).await;
            assert_eq!(status, 404, "{path}: {body}");
        }
    }

    // By socket and by port, from bob's own process.
    let socket = format!(
        "{}/users/{}/scratch/apps/fix.sock",
        server.data_dir.display(),
        alice.user_id()
    );
    let port = {
        // The app's port is the one its process listens on: ask the kernel.
        let pid = echo["pid"].as_u64().expect("pid") as u32;
        warren_tests::listening_port(pid).expect("the TCP app listens")
    };
    let script = format!(
        r#"
import socket, urllib.request, urllib.error
try:
    s = socket.socket(socket.AF_UNIX); s.connect("{socket}"); print("socket: connected")
except OSError as e:
    print("socket: refused", e.errno)
try:
    urllib.request.urlopen("http://127.0.0.1:{port}/echo", timeout=5); print("port: answered")
except urllib.error.HTTPError as e:
    print("port: status", e.code)
except OSError as e:
    print("port: unreachable", e)
import os
print("sees the app:", os.path.exists("/proc/{pid}"), "sees its own:", os.path.exists("/proc/%d" % os.getpid()))
others = [p for p in os.listdir("/proc") if p.isdigit() and os.stat("/proc/" + p).st_uid != os.getuid()]
print("others:", len(others))
"#,
        pid = echo["pid"]
    );
    let (status, task) = bob
        .post(
            "/api/v1/tasks",
            serde_json::json!({"command": ["/usr/bin/python3", "-c", script]}),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().expect("id");
    let output = task_output(bob, id).await;
    assert!(output.contains("socket: refused"), "{output}");
    assert!(
        output.contains("port: status 403") || output.contains("port: unreachable"),
        "{output}"
    );
    // Nor see it: another uid's processes (an app's port in its arguments)
    // are not in a user's /proc.
    assert!(
        output.contains("sees the app: False sees its own: True"),
        "{output}"
    );
    assert!(output.contains("others: 0"), "{output}");

    // bob points his own socket directory at alice's (he owns scratch/,
    // so he may): warren (root) following that path must still never
    // hand bob's requests to alice's app.
    let bob_first = get_when_up(bob, "/user/bob/open/echo", Duration::from_secs(20)).await;
    assert_eq!(bob_first["uid"], uid_of(bob));
    get_when_up(alice, "/user/alice/open/echo", Duration::from_secs(20)).await;
    let alice_apps = format!(
        "{}/users/{}/scratch/apps",
        server.data_dir.display(),
        alice.user_id()
    );
    let script = format!(
        "import os\ns = os.environ['TMPDIR']\nos.rename(s + '/apps', s + '/apps-old')\n\
         os.symlink({alice_apps:?}, s + '/apps')\nprint('swapped')\n"
    );
    let (status, task) = bob
        .post(
            "/api/v1/tasks",
            serde_json::json!({"command": ["/usr/bin/python3", "-c", script]}),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    let output = task_output(bob, task["id"].as_str().expect("id")).await;
    assert!(output.contains("swapped"), "{output}");
    // Concurrent requests need new connections to bob's app's path.
    let requests = (0..6).map(|_| async { get(bob, "/user/bob/open/events").await });
    let answers = futures_util::future::join_all(requests).await;
    let requests = (0..6).map(|_| async { get(bob, "/user/bob/open/echo").await });
    let answers2 = futures_util::future::join_all(requests).await;
    for (status, body) in answers.iter().chain(&answers2) {
        assert!(
            body["uid"] != uid_of(alice),
            "bob reached alice's app: {status} {body}"
        );
    }
    // And alice's own app still answers her.
    let (status, echo) = get(alice, "/user/alice/open/echo").await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["uid"], uid_of(alice));
}

async fn task_output(caller: &Caller, id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, task) = caller.get(&format!("/api/v1/tasks/{id}")).await;
        if task["state"] != "running" {
            break;
        }
        assert!(Instant::now() < deadline, "task still running: {task}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = caller
        .request(Method::GET, &format!("/api/v1/tasks/{id}/output"))
        .send()
        .await
        .expect("output");
    response.text().await.expect("text")
}

#[tokio::test]
async fn a_crashed_app_is_restarted_and_one_that_keeps_crashing_fails() {
    let apps = fixture("fix", "unix", "", "")
        + &fixture("broken", "unix", "FIXTURE_FAIL = \"no licence key\"", "");
    let Some((_server, _admin, users, _dir)) =
        server_with_apps(&apps, ServerOptions::workers(1), &["alice"]).await
    else {
        return;
    };
    let alice = &users[0];
    let first = get_when_up(alice, "/user/alice/fix/echo", Duration::from_secs(20)).await;
    let pid = first["pid"].as_u64().expect("pid") as u32;
    warren_tests::send_signal(pid, rustix::process::Signal::KILL);
    // Restarted on its own, and the next request is answered.
    let again = get_when_up(alice, "/user/alice/fix/echo", Duration::from_secs(20)).await;
    assert_ne!(again["pid"], first["pid"]);
    let app = app_state(alice, "fix").await;
    assert_eq!(app["state"], "running");
    assert_eq!(app["restarts"], 1, "{app}");

    // An app that exits at once is retried, then fails with its output.
    let (status, body) = alice
        .post("/api/v1/me/apps/broken/start", Value::Null)
        .await;
    assert_eq!(status, 200, "{body}");
    let app = ends_up(
        alice,
        "broken",
        "failed",
        "crashed 5 times",
        Duration::from_secs(60),
    )
    .await;
    let tail = app["output_tail"].to_string();
    assert!(tail.contains("no licence key"), "{app}");
    // The proxy says so too, with the output, and does not retry alone.
    let (status, body) = get(alice, "/user/alice/broken/").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "app_failed");
    assert!(body["output_tail"].to_string().contains("no licence key"));
}

#[tokio::test]
async fn slow_starts_fail_idle_apps_stop_and_browsers_see_a_starting_page() {
    let apps = fixture(
        "slow",
        "unix",
        "FIXTURE_START_DELAY = \"30\"",
        "start_timeout = \"1500ms\"",
    ) + &fixture("lazy", "unix", "FIXTURE_START_DELAY = \"4\"", "")
        + &fixture("idle", "unix", "", "idle_timeout = \"2s\"");
    let Some((_server, _admin, users, _dir)) =
        server_with_apps(&apps, ServerOptions::workers(1), &["alice"]).await
    else {
        return;
    };
    let alice = &users[0];

    // Starting: a page that reloads for a browser, 503 + Retry-After else.
    let response = alice
        .request(Method::GET, "/user/alice/lazy/health")
        .header("accept", "text/html")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let page = response.text().await.expect("page");
    assert!(
        page.contains("http-equiv=\"refresh\"") && page.contains("starting"),
        "{page}"
    );
    let (status, body) = get(alice, "/user/alice/lazy/health").await;
    if status == 503 {
        assert_eq!(body["error"]["code"], "app_starting", "{body}");
    }

    // Not up within start_timeout: failed, saying so.
    let _ = get(alice, "/user/alice/slow/health").await;
    ends_up(
        alice,
        "slow",
        "failed",
        "within 1500 ms",
        Duration::from_secs(15),
    )
    .await;

    // No traffic for idle_timeout: stopped, its processes gone. An answer
    // still streaming is traffic the whole time (4 s against 2 s here).
    let echo = get_when_up(alice, "/user/alice/idle/echo", Duration::from_secs(20)).await;
    let pid = echo["pid"].as_u64().expect("pid") as u32;
    let response = alice
        .request(Method::GET, "/user/alice/idle/events?n=40")
        .send()
        .await
        .expect("GET events");
    assert_eq!(response.status(), 200);
    let stream = response.text().await.expect("the whole stream");
    assert!(stream.contains("tick 39"), "{stream}");
    assert_eq!(app_state(alice, "idle").await["state"], "running");
    ends_up(
        alice,
        "idle",
        "stopped",
        "without traffic",
        Duration::from_secs(15),
    )
    .await;
    assert!(warren_tests::process_ends(pid, Duration::from_secs(10)).await);
    // And the next request starts it again.
    get_when_up(alice, "/user/alice/idle/echo", Duration::from_secs(20)).await;
}

#[tokio::test]
async fn stopping_limits_admins_disabling_and_a_workers_death() {
    // A top-level key comes before the tables.
    let apps = "max_running_per_user = 1\n".to_string()
        + &fixture("fix", "unix", "", "max_running = 1")
        + &fixture("other", "unix", "", "");
    let Some((server, admin, users, _dir)) =
        server_with_apps(&apps, ServerOptions::workers(1), &["alice", "bob"]).await
    else {
        return;
    };
    let (alice, bob) = (&users[0], &users[1]);
    let echo = get_when_up(alice, "/user/alice/fix/echo", Duration::from_secs(20)).await;
    let pid = echo["pid"].as_u64().expect("pid") as u32;

    // One of each per user, one `fix` on the server.
    let (status, body) = alice.post("/api/v1/me/apps/other/start", Value::Null).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_apps");
    let (status, body) = get(bob, "/user/bob/fix/echo").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "too_many_apps");

    // Administrators see it, and stop it.
    let (status, list) = admin.get("/api/v1/admin/apps").await;
    assert_eq!(status, 200, "{list}");
    let listed = list["apps"].as_array().expect("apps");
    assert!(
        listed.iter().any(|app| app["username"] == "alice"
            && app["name"] == "fix"
            && app["state"] == "running"),
        "{list}"
    );
    let path = format!("/api/v1/admin/apps/{}/fix/stop", alice.user_id());
    let (status, body) = admin.post(&path, Value::Null).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(app_state(alice, "fix").await["state"], "stopped");
    assert!(warren_tests::process_ends(pid, Duration::from_secs(10)).await);
    // Room again, for bob now.
    let echo = get_when_up(bob, "/user/bob/fix/echo", Duration::from_secs(20)).await;
    let bob_pid = echo["pid"].as_u64().expect("pid") as u32;
    // Stop by the user; stopping what is stopped is fine.
    let (status, _) = bob.post("/api/v1/me/apps/fix/stop", Value::Null).await;
    assert_eq!(status, 204);
    let (status, _) = bob.post("/api/v1/me/apps/fix/stop", Value::Null).await;
    assert_eq!(status, 204);
    assert_eq!(app_state(bob, "fix").await["state"], "stopped");
    assert!(warren_tests::process_ends(bob_pid, Duration::from_secs(10)).await);
    let (status, _) = bob.post("/api/v1/me/apps/nope/stop", Value::Null).await;
    assert_eq!(status, 404);

    // A disabled user's apps stop.
    let echo = get_when_up(alice, "/user/alice/other/echo", Duration::from_secs(20)).await;
    let pid = echo["pid"].as_u64().expect("pid") as u32;
    let (status, body) = admin
        .send(
            Method::PATCH,
            &format!("/api/v1/admin/users/{}", alice.user_id()),
            Some(serde_json::json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        warren_tests::process_ends(pid, Duration::from_secs(15)).await,
        "a disabled user's app still runs"
    );

    // A worker's death takes its apps; the next request starts them again.
    let echo = get_when_up(bob, "/user/bob/other/echo", Duration::from_secs(20)).await;
    let pid = echo["pid"].as_u64().expect("pid") as u32;
    let worker = server.worker_pids()[0];
    warren_tests::send_signal(worker, rustix::process::Signal::KILL);
    assert!(
        warren_tests::process_ends(pid, Duration::from_secs(15)).await,
        "the app outlived its worker"
    );
    let again = get_when_up(bob, "/user/bob/other/echo", Duration::from_secs(30)).await;
    assert_ne!(again["pid"], echo["pid"]);
}

#[tokio::test]
async fn a_bad_apps_file_stops_the_server_with_the_key_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("apps.toml");
    std::fs::write(
        &file,
        "[apps.jupyter]\ncommand = [\"jupyter\", \"--sock\", \"{sock}\"]\n",
    )
    .expect("write");
    let data = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(warren_tests::warren_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .arg("--apps")
        .arg(&file)
        .output()
        .expect("run warren");
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("[apps.jupyter]") && log.contains("unknown placeholder {sock}"),
        "{log}"
    );
    // Nothing was set up first.
    assert!(!data.path().join("warren.db").exists());
}

#[tokio::test]
async fn sighup_reloads_the_app_definitions_and_stops_removed_apps() {
    let Some((server, _admin, users, dir)) = server_with_apps(
        &fixture("one", "unix", "", ""),
        ServerOptions::workers(1),
        &["alice"],
    )
    .await
    else {
        return;
    };
    let alice = &users[0];
    get_when_up(alice, "/user/alice/one/health", Duration::from_secs(20)).await;
    assert_eq!(app_state(alice, "one").await["state"], "running");
    let uid = uid_of(alice);
    assert!(!warren_tests::processes_of(uid).is_empty());

    // "one" goes, "two" comes.
    std::fs::write(dir.path().join("apps.toml"), fixture("two", "unix", "", "")).expect("write");
    server.signal(rustix::process::Signal::HUP);
    let log = server.log_containing("app definitions reloaded").await;
    let line = log
        .lines()
        .find(|line| line.contains("app definitions reloaded"))
        .unwrap_or_else(|| panic!("no reload in:\n{log}"));
    assert!(
        line.contains("added=two") && line.contains("removed=one"),
        "{line}"
    );

    assert_eq!(get(alice, "/user/alice/one/health").await.0, 404);
    let (status, list) = alice.get("/api/v1/me/apps").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .filter_map(|app| app["name"].as_str())
        .collect();
    assert_eq!(names, ["two"]);
    // The removed app's processes were stopped; the new one starts.
    assert!(
        warren_tests::eventually(Duration::from_secs(10), || async {
            warren_tests::processes_of(uid).is_empty()
        })
        .await,
        "the removed app still runs: {:?}",
        warren_tests::processes_of(uid)
    );
    get_when_up(alice, "/user/alice/two/health", Duration::from_secs(20)).await;

    // A broken file changes nothing.
    std::fs::write(dir.path().join("apps.toml"), "[apps.two]\nbogus = 1\n").expect("write");
    server.signal(rustix::process::Signal::HUP);
    server
        .log_containing("the app definitions have problems")
        .await;
    assert_eq!(get(alice, "/user/alice/two/health").await.0, 200);
}
