//! The operator's pool controls (issue 14): `GET /api/v1/admin/pool`, a
//! graceful restart of one slot (in-flight work finishes, new requests
//! wait instead of failing) and `warren pool restart --rolling` under load
//! with no failed request.

use reqwest::Method;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warren_tests::accounts::{users_on, Caller};
use warren_tests::files::{channel_body, put};
use warren_tests::{warren_binary, Server, ServerOptions};

async fn pool(admin: &Caller) -> Vec<Value> {
    let (status, body) = admin.get("/api/v1/admin/pool").await;
    assert_eq!(status, 200, "{body}");
    body["slots"].as_array().expect("slots").clone()
}

/// An administrator's write-scoped API token in a file, for `warren pool`.
async fn token_file(admin: &Caller, dir: &std::path::Path) -> std::path::PathBuf {
    let (status, body) = admin
        .post(
            "/api/v1/me/tokens",
            serde_json::json!({ "name": "pool", "scope": "write" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let path = dir.join("token");
    std::fs::write(
        &path,
        format!("{}\n", body["secret"].as_str().expect("secret")),
    )
    .expect("write");
    path
}

#[tokio::test]
async fn the_pool_is_shown_and_its_restart_is_refused_clearly() {
    let server = Server::ready(&ServerOptions::workers(2)).await;
    let admin = Caller::admin(&server).await;
    let slots = pool(&admin).await;
    assert_eq!(slots.len(), 2);
    let pids = server.worker_pids();
    for slot in &slots {
        assert_eq!(slot["state"], "up", "{slot}");
        let pid = slot["pid"].as_u64().expect("pid") as u32;
        assert!(pids.contains(&pid), "{slot} not among {pids:?}");
        assert!(slot["rss_bytes"].as_u64().expect("rss") > 1 << 20, "{slot}");
        assert!(slot["uptime_seconds"].is_u64(), "{slot}");
        assert_eq!(slot["restarts"], 0);
        assert_eq!(slot["draining"], false);
    }

    let alice = users_on(&server, &admin, &["alice"]).await.remove(0);
    assert_eq!(alice.get("/api/v1/admin/pool").await.0, 403);
    assert_eq!(
        alice
            .post("/api/v1/admin/pool/0/restart", Value::Null)
            .await
            .0,
        403
    );

    let restart = |path: &'static str| admin.send(Method::POST, path, None);
    assert_eq!(restart("/api/v1/admin/pool/2/restart").await.0, 404);
    assert_eq!(restart("/api/v1/admin/pool/x/restart").await.0, 404);
    assert_eq!(
        restart("/api/v1/admin/pool/0/restart?grace_seconds=0")
            .await
            .0,
        400
    );
    assert_eq!(
        restart("/api/v1/admin/pool/0/restart?grace_seconds=9999")
            .await
            .0,
        400
    );

    let (status, after) = restart("/api/v1/admin/pool/1/restart?grace_seconds=5").await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["state"], "up");
    assert_eq!(after["restarts"], 1);
    let new_pid = after["pid"].as_u64().expect("pid") as u32;
    assert!(!pids.contains(&new_pid), "slot 1 kept its worker {new_pid}");
    let (_, audit) = admin
        .get("/api/v1/admin/audit?event=worker_restarted")
        .await;
    assert!(audit.to_string().contains("slot 1, grace 5s"), "{audit}");
}

#[tokio::test]
async fn a_restart_lets_an_upload_in_flight_finish_and_holds_new_requests() {
    let server = Server::ready(&ServerOptions::workers(1)).await;
    let admin = Caller::admin(&server).await;
    let alice = users_on(&server, &admin, &["alice"]).await.remove(0);
    let old_pid = server.worker_pids()[0];

    // An upload whose body arrives slowly: in flight when the restart
    // begins.
    let (sender, upload) = slow_upload(&alice).await;

    let started = Instant::now();
    let restart = restart_in_background(&admin, 20);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let slots = pool(&admin).await;
    assert_eq!(slots[0]["draining"], true, "{slots:?}");
    assert_eq!(
        slots[0]["pid"].as_u64(),
        Some(u64::from(old_pid)),
        "replaced mid-upload"
    );

    // A request arriving meanwhile waits for the new worker, not failing.
    let waiting = tokio::spawn({
        let alice = alice.clone_caller();
        async move { alice.get("/api/v1/files").await.0 }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a request went to the draining worker"
    );

    sender.send(Ok(vec![b'b'; 1 << 16])).await.expect("send");
    drop(sender);
    let (status, body) = upload.await.expect("upload task");
    assert!(status == 201 || status == 200, "upload: {status} {body}");
    let (status, after) = restart.await.expect("restart task");
    assert_eq!(status, 200, "{after}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_ne!(after["pid"].as_u64(), Some(u64::from(old_pid)));
    assert_eq!(waiting.await.expect("waiting"), 200);

    let response = alice
        .request(Method::GET, "/api/v1/files/slow.bin")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.expect("body");
    assert_eq!(bytes.len(), 2 << 16);
    assert!(
        bytes[..1 << 16].iter().all(|&b| b == b'a') && bytes[1 << 16..].iter().all(|&b| b == b'b')
    );
}

/// Slot 0's restart with `grace` seconds, answered when it is done.
fn restart_in_background(admin: &Caller, grace: u32) -> tokio::task::JoinHandle<(u16, Value)> {
    let admin = admin.clone_caller();
    tokio::spawn(async move {
        let path = format!("/api/v1/admin/pool/0/restart?grace_seconds={grace}");
        admin.send(Method::POST, &path, None).await
    })
}

type Chunks = tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>;

/// An upload of `slow.bin` by `caller` that has sent 64 KiB of `a` and
/// waits for more (send on the sender; drop it to finish): in flight for
/// as long as the test likes.
async fn slow_upload(caller: &Caller) -> (Chunks, tokio::task::JoinHandle<(u16, Value)>) {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let body = channel_body(receiver);
    let upload = tokio::spawn({
        let caller = caller.clone_caller();
        async move { put(&caller, "slow.bin", body).await }
    });
    sender.send(Ok(vec![b'a'; 1 << 16])).await.expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    (sender, upload)
}

trait CloneCaller {
    fn clone_caller(&self) -> Caller;
}

impl CloneCaller for Caller {
    fn clone_caller(&self) -> Caller {
        Caller {
            token: self.token.clone(),
            base_url: self.base_url.clone(),
            via_cookie: self.via_cookie,
            http: self.http.clone(),
            login: self.login.clone(),
        }
    }
}

#[tokio::test]
async fn a_rolling_restart_under_load_fails_no_request() {
    let server = Server::ready(&ServerOptions::workers(3)).await;
    let admin = Caller::admin(&server).await;
    let names: Vec<String> = (0..6).map(|i| format!("user{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let users = users_on(&server, &admin, &names).await;
    for user in &users {
        assert_eq!(put(user, "note.txt", "hello").await.0, 201);
    }
    let before = server.worker_pids();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for user in users {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let outcome = if n.is_multiple_of(4) {
                    put(&user, &format!("w{}.txt", n % 8), format!("write {n}"))
                        .await
                        .0
                } else {
                    let response = user
                        .request(Method::GET, "/api/v1/files/note.txt")
                        .send()
                        .await
                        .expect("GET");
                    response.status().as_u16()
                };
                if (200..300).contains(&outcome) {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.lock().unwrap().push(outcome);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let token = token_file(&admin, dir.path()).await;
    let output = tokio::process::Command::new(warren_binary())
        .args(["pool", "restart", "--rolling", "--grace", "10s", "--url"])
        .arg(&server.base_url)
        .arg("--token-file")
        .arg(&token)
        .output()
        .await
        .expect("warren pool restart");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.matches("restarted in").count(), 3, "{stdout}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    let failures = failures.lock().unwrap().clone();
    assert_eq!(
        failures,
        Vec::<u16>::new(),
        "requests failed during the rolling restart"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 50,
        "too little load: {}",
        ok.load(Ordering::Relaxed)
    );
    let after = server.worker_pids();
    assert!(
        before.iter().all(|pid| !after.contains(pid)),
        "{before:?} -> {after:?}: a worker was not replaced"
    );
    for slot in pool(&admin).await {
        assert_eq!(slot["restarts"], 1, "{slot}");
    }

    // Without --rolling or --slot, or with a bad token: a clear error.
    let output = std::process::Command::new(warren_binary())
        .args(["pool", "restart", "--url", &server.base_url, "--token-file"])
        .arg(&token)
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--rolling"));
    std::fs::write(&token, "not-a-token\n").expect("write");
    let output = std::process::Command::new(warren_binary())
        .args(["pool", "status", "--url", &server.base_url, "--token-file"])
        .arg(&token)
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_restart_whose_caller_goes_away_still_ends_well() {
    let server = Server::ready(&ServerOptions::workers(1)).await;
    let admin = Caller::admin(&server).await;
    let alice = users_on(&server, &admin, &["alice"]).await.remove(0);
    let old_pid = server.worker_pids()[0];

    // An upload keeps the drain waiting while the restart's caller gives up.
    let (sender, upload) = slow_upload(&alice).await;
    let impatient = admin
        .request(
            Method::POST,
            "/api/v1/admin/pool/0/restart?grace_seconds=30",
        )
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(
        impatient.is_err(),
        "the restart answered before the drain: {impatient:?}"
    );
    assert_eq!(pool(&admin).await[0]["draining"], true);

    // The drain goes on without its caller: the upload finishes, the
    // worker is replaced, and the slot serves again.
    sender.send(Ok(vec![b'b'; 16])).await.expect("send");
    drop(sender);
    let (status, body) = upload.await.expect("upload task");
    assert!(status == 201 || status == 200, "upload: {status} {body}");
    let replaced = warren_tests::eventually(Duration::from_secs(15), || async {
        let slot = pool(&admin).await.remove(0);
        slot["draining"] == false
            && slot["state"] == "up"
            && slot["pid"]
                .as_u64()
                .is_some_and(|pid| pid != u64::from(old_pid))
    })
    .await;
    assert!(replaced, "{:?}", pool(&admin).await);
    assert_eq!(alice.get("/api/v1/files").await.0, 200);
    let (_, audit) = admin
        .get("/api/v1/admin/audit?event=worker_restarted")
        .await;
    assert!(audit.to_string().contains("slot 0, grace 30s"), "{audit}");
    // And a later restart is not refused as "already restarting".
    let (status, after) = admin
        .send(
            Method::POST,
            "/api/v1/admin/pool/0/restart?grace_seconds=1",
            None,
        )
        .await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["restarts"], 2, "{after}");
}

#[tokio::test]
async fn a_worker_that_dies_during_the_drain_is_replaced_once() {
    let server = Server::ready(&ServerOptions::workers(1)).await;
    let admin = Caller::admin(&server).await;
    let alice = users_on(&server, &admin, &["alice"]).await.remove(0);
    let old_pid = server.worker_pids()[0];
    let (sender, upload) = slow_upload(&alice).await;
    let restart = restart_in_background(&admin, 30);
    tokio::time::sleep(Duration::from_millis(300)).await;
    warren_tests::send_signal(old_pid, rustix::process::Signal::KILL);
    let (status, after) = restart.await.expect("restart task");
    assert_eq!(status, 200, "{after}");
    let new_pid = after["pid"].as_u64().expect("pid");
    drop(sender);
    let _ = upload.await;
    // The successor is not replaced too by a leftover wake-up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let slot = pool(&admin).await.remove(0);
    assert_eq!(slot["pid"].as_u64(), Some(new_pid), "{slot}");
    assert_eq!(slot["restarts"], 1, "{slot}");
    assert!(!server
        .log()
        .contains("worker replaced at an operator's request"));
    assert_eq!(alice.get("/api/v1/files").await.0, 200);
}
