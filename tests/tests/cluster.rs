//! End-to-end tests of the cluster core: real `warren serve` processes, real
//! worker processes, real signals. They drive the pool through the test-build
//! `/debug` routes (absent from release builds).

use futures_util::StreamExt;
use rustix::process::Signal;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use warren_tests::{eventually, metric_value, process_alive, user_id, Server, ServerOptions};

/// Users and the slot each must land on in a pool of 4, in every build and
/// release. Recorded once; a change here means every deployed user moves.
const FIXED_SLOTS_OF_4: [(u128, u32); 11] = [
    (1, 1),
    (2, 1),
    (3, 0),
    (4, 2),
    (5, 2),
    (6, 0),
    (7, 3),
    (8, 0),
    (1000, 0),
    (123_456_789, 2),
    (u128::MAX, 1),
];

/// A test user on `slot` of a pool of 4 (from the fixed table).
fn user_on_slot(slot: u32) -> String {
    let (n, _) = FIXED_SLOTS_OF_4
        .iter()
        .find(|(_, s)| *s == slot)
        .expect("the table covers every slot");
    user_id(*n)
}

async fn assert_fixed_slots(server: &Server) {
    for (n, slot) in FIXED_SLOTS_OF_4 {
        let (got, _) = server.ping(&user_id(n)).await.expect("ping");
        assert_eq!(got, slot, "user {n} moved");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_spread_evenly_and_stay_on_their_slot_across_restarts() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(data.path(), &ServerOptions::workers(4));
    server.wait_ready().await;
    assert_eq!(server.worker_pids().len(), 4, "four worker processes");

    // 10,000 distinct users, pinged through the real pool.
    let server_ref = &server;
    let results: Vec<(u32, u32)> = futures_util::stream::iter(0..10_000u128)
        .map(|n| async move {
            let user = user_id(n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xabcdef);
            server_ref.ping(&user).await.expect("ping")
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut per_slot = HashMap::<u32, u32>::new();
    let mut pid_of_slot = HashMap::<u32, HashSet<u32>>::new();
    for (slot, pid) in results {
        *per_slot.entry(slot).or_default() += 1;
        pid_of_slot.entry(slot).or_default().insert(pid);
    }
    assert_eq!(per_slot.len(), 4, "{per_slot:?}");
    let busiest = *per_slot.values().max().unwrap() as f64;
    let spread = busiest / (10_000.0 / 4.0);
    assert!(spread <= 1.15, "busiest/mean = {spread:.3}: {per_slot:?}");
    for (slot, pids) in &pid_of_slot {
        assert_eq!(
            pids.len(),
            1,
            "slot {slot} answered from several pids: {pids:?}"
        );
    }
    let distinct: HashSet<_> = pid_of_slot.values().flatten().collect();
    assert_eq!(distinct.len(), 4, "each slot is its own process");

    assert_fixed_slots(&server).await;
    assert!(server.stop().success());

    // The same users land on the same slots after a master restart.
    let server = Server::start(data.path(), &ServerOptions::workers(4));
    server.wait_ready().await;
    assert_fixed_slots(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_fails_its_requests_fast_and_is_back_within_a_second() {
    let server = Server::ready(&ServerOptions::workers(4)).await;
    let victim_user = user_on_slot(2);
    let (slot, victim_pid) = server.ping(&victim_user).await.unwrap();
    assert_eq!(slot, 2);

    // Requests in flight on the victim when it dies.
    let sleepers: Vec<_> = (0..3)
        .map(|_| {
            let http = server.http.clone();
            let url = server.url(&format!("/debug/sleep/{victim_user}?ms=30000"));
            tokio::spawn(async move {
                let response = http.post(url).send().await.expect("sleep request");
                let status = response.status().as_u16();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                (status, body, Instant::now())
            })
        })
        .collect();
    // Traffic for the other slots throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let others: Vec<_> = [0u32, 1, 3]
        .into_iter()
        .map(|slot| {
            let http = server.http.clone();
            let url = server.url(&format!("/debug/ping/{}", user_on_slot(slot)));
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match http.get(&url).send().await {
                        Ok(response) if response.status() == 200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let all_in_flight = eventually(Duration::from_secs(10), || async {
        let (_, ready) = server.get_json("/readyz").await;
        ready["workers"][2]["inflight_requests"] == 3
    })
    .await;
    assert!(all_in_flight, "the sleep requests never reached the worker");

    let killed_at = Instant::now();
    warren_tests::send_signal(victim_pid, Signal::KILL);

    // In-flight requests fail at once, with the distinct error.
    for sleeper in sleepers {
        let (status, body, finished) = sleeper.await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "worker_unavailable", "{body}");
        let took = finished - killed_at;
        assert!(
            took < Duration::from_millis(500),
            "in-flight request took {took:?} to fail"
        );
    }
    // Serving again within a second, from a new process.
    let mut new_pid = None;
    while killed_at.elapsed() < Duration::from_secs(1) {
        if let Ok((_, pid)) = server.ping(&victim_user).await {
            if pid != victim_pid {
                new_pid = Some(pid);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let back_after = killed_at.elapsed();
    let new_pid = new_pid.unwrap_or_else(|| {
        panic!(
            "slot 2 not back after {back_after:?}; log:\n{}",
            server.log()
        )
    });
    eprintln!("slot 2 serving again {back_after:?} after kill -9 (pid {victim_pid} -> {new_pid})");

    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for other in others {
        let (ok, failed) = other.await.unwrap();
        assert!(ok > 0, "no traffic reached the other slots");
        assert_eq!(
            failed, 0,
            "requests for healthy slots failed during the crash"
        );
    }
    let (_, metrics) = server.get_json("/metrics").await;
    let text = metrics.as_str().unwrap_or_default();
    assert_eq!(
        metric_value(text, "warren_worker_restarts_total", "slot=\"2\""),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(text, "warren_worker_restarts_total", "slot=\"0\""),
        Some(0.0),
        "{text}"
    );
    assert!(!server.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_heartbeating_is_killed_and_replaced() {
    let options = ServerOptions::workers(2)
        .arg("--heartbeat-timeout")
        .arg("1s");
    let server = Server::ready(&options).await;
    let user = user_id(3);
    let (slot, frozen_pid) = server.ping(&user).await.unwrap();

    let stopped_at = Instant::now();
    warren_tests::send_signal(frozen_pid, Signal::STOP);
    let replaced = eventually(Duration::from_secs(10), || async {
        matches!(server.ping(&user).await, Ok((_, pid)) if pid != frozen_pid)
    })
    .await;
    assert!(
        replaced,
        "the frozen worker was not replaced; log:\n{}",
        server.log()
    );
    let took = stopped_at.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "replaced after {took:?}, before the timeout"
    );
    assert!(
        !process_alive(frozen_pid),
        "the frozen worker {frozen_pid} is still there"
    );
    let log = server.log_containing("missed its heartbeats").await;
    assert!(log.contains("missed its heartbeats"), "{log}");
    let (_, ready) = server.get_json("/readyz").await;
    assert_eq!(ready["workers"][slot as usize]["restarts"], 1, "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_at_start_backs_off_and_reports_degraded() {
    let data = tempfile::tempdir().unwrap();
    let options = ServerOptions::workers(2)
        .arg("--unavailable-wait")
        .arg("300ms")
        .env("WARREN_DEBUG_CRASH_SLOTS", "1");
    let server = Server::start(data.path(), &options);
    let degraded = eventually(Duration::from_secs(10), || async {
        let (status, ready) = server.get_json("/readyz").await;
        status == 503 && ready["workers"][1]["state"] == "degraded"
    })
    .await;
    assert!(
        degraded,
        "slot 1 never reported degraded; log:\n{}",
        server.log()
    );

    let (status, ready) = server.get_json("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(ready["workers"][0]["state"], "up", "{ready}");
    assert!(
        !ready.to_string().contains("pid"),
        "readiness exposes no pids: {ready}"
    );

    // Back-off: restarts slow down instead of spinning.
    let first = ready["workers"][1]["restarts"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, later) = server.get_json("/readyz").await;
    let second = later["workers"][1]["restarts"].as_u64().unwrap();
    assert!(
        second - first <= 5,
        "{first} -> {second} restarts in 2 s: no back-off"
    );

    // Requests for the dead slot wait for the deadline, then fail cleanly;
    // the healthy slot keeps serving.
    let mut dead_user = None;
    for n in 0..100 {
        let user = user_id(n);
        match server.ping(&user).await {
            Ok((slot, _)) => assert_eq!(slot, 0),
            Err((status, body)) => {
                assert_eq!(status, 503, "{body}");
                assert_eq!(body["error"]["code"], "worker_unavailable", "{body}");
                dead_user = Some(user);
                break;
            }
        }
    }
    let dead_user = dead_user.expect("some of 100 users live on slot 1");
    let asked = Instant::now();
    let _ = server.ping(&dead_user).await;
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "waited {waited:?} for a down slot"
    );
    let (_, metrics) = server.get_json("/metrics").await;
    let text = metrics.as_str().unwrap_or_default();
    assert_eq!(
        metric_value(text, "warren_workers", "state=\"degraded\""),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sending_bad_frames_is_cut_off_and_its_slot_recovers() {
    let server = Server::ready(&ServerOptions::workers(2)).await;
    let user = user_id(3);
    for oversized in [false, true] {
        let (_, before) = server.ping(&user).await.unwrap();
        let (status, body) = server
            .post_json(&format!("/debug/garbage/{user}?oversized={oversized}"))
            .await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "worker_unavailable", "{body}");
        let recovered = eventually(Duration::from_secs(5), || async {
            matches!(server.ping(&user).await, Ok((_, pid)) if pid != before)
        })
        .await;
        assert!(recovered, "slot did not recover; log:\n{}", server.log());
    }
    server.log_containing("undecodable frame").await;
    let log = server
        .log_containing("exceeds the 1048576-byte limit")
        .await;
    assert!(log.contains("undecodable frame"), "{log}");
    assert!(log.contains("exceeds the 1048576-byte limit"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_leaves_no_worker_behind() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(data.path(), &ServerOptions::workers(3));
    server.wait_ready().await;
    let workers = server.worker_pids();
    assert_eq!(workers.len(), 3);

    let in_flight = {
        let http = server.http.clone();
        let url = server.url(&format!("/debug/sleep/{}?ms=700", user_id(1)));
        tokio::spawn(async move { http.post(url).send().await.map(|r| r.status().as_u16()) })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    server.signal(Signal::TERM);
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(10));
        (status, server)
    })
    .await
    .unwrap();
    let (status, server) = status;
    let status = status
        .unwrap_or_else(|| panic!("no exit within the drain deadline; log:\n{}", server.log()));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log()
    );
    assert!(signalled.elapsed() < Duration::from_secs(10));
    assert_eq!(
        in_flight.await.unwrap().ok(),
        Some(200),
        "the in-flight request was not drained"
    );
    for pid in workers {
        assert!(!process_alive(pid), "worker {pid} outlived its master");
    }
    assert!(
        !data.path().join("run/worker-0.sock").exists(),
        "socket left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_larger_than_its_window_echoes_through_a_worker() {
    let server = Server::ready(&ServerOptions::workers(2)).await;
    let payload: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let response = server
        .http
        .post(server.url(&format!("/debug/echo/{}", user_id(5))))
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed = response.bytes().await.unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed[..] == payload[..], "echoed bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer_in_their_formats() {
    let server = Server::ready(&ServerOptions::workers(2)).await;
    assert_eq!(
        server.get_json("/healthz").await,
        (200, serde_json::json!({ "status": "ok" }))
    );
    let (status, ready) = server.get_json("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(ready["workers"].as_array().unwrap().len(), 2);
    server.ping(&user_id(1)).await.unwrap();
    let response = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("openmetrics-text"));
    let text = response.text().await.unwrap();
    for metric in [
        "warren_workers{state=\"up\"} 2",
        "warren_worker_restarts_total{slot=\"1\"} 0",
        "warren_ipc_request_duration_seconds_bucket",
        "warren_ipc_inflight_requests",
    ] {
        assert!(text.contains(metric), "{metric} missing from:\n{text}");
    }
    let (status, body) = server.get_json("/no/such/route").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = server.get_json("/debug/ping/not-a-uuid").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_cancels_the_work_in_the_worker() {
    let options = ServerOptions::workers(2)
        .arg("--heartbeat-timeout")
        .arg("1s");
    let server = Server::ready(&options).await;
    let user = user_id(3);
    let (slot, _) = server.ping(&user).await.unwrap();
    let slot = slot as usize;

    let impatient = server
        .http
        .post(server.url(&format!("/debug/sleep/{user}?ms=60000")))
        .timeout(Duration::from_millis(500))
        .send();
    let busy = async {
        eventually(Duration::from_secs(5), || async {
            let (_, ready) = server.get_json("/readyz").await;
            ready["workers"][slot]["worker_tasks"] == 1
        })
        .await
    };
    let (gave_up, was_busy) = tokio::join!(impatient, busy);
    assert!(gave_up.is_err(), "the request should have timed out");
    assert!(was_busy, "the worker never reported the sleeping task");
    // The client hung up: the master drops the call, sends Cancel, and the
    // worker aborts the task instead of sleeping out its minute.
    let cancelled = eventually(Duration::from_secs(5), || async {
        let (_, ready) = server.get_json("/readyz").await;
        ready["workers"][slot]["worker_tasks"] == 0
            && ready["workers"][slot]["inflight_requests"] == 0
    })
    .await;
    let (_, ready) = server.get_json("/readyz").await;
    assert!(cancelled, "the abandoned request kept running: {ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_outright_takes_its_workers_along_and_restarts_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(data.path(), &ServerOptions::workers(2));
    server.wait_ready().await;
    let workers = server.worker_pids();
    assert_eq!(workers.len(), 2);

    server.signal(Signal::KILL);
    assert!(server.wait_exit(Duration::from_secs(5)).is_some());
    // No socket EOF reached the workers before the kernel's death signal did.
    let orphans_gone = eventually(Duration::from_secs(2), || async {
        workers.iter().all(|pid| !process_alive(*pid))
    })
    .await;
    assert!(
        orphans_gone,
        "workers {workers:?} outlived a SIGKILLed master"
    );
    assert!(
        data.path().join("run/worker-0.sock").exists(),
        "a crash leaves its sockets"
    );

    // The stale sockets do not block the next start on the same data dir.
    let server = Server::start(data.path(), &ServerOptions::workers(2));
    server.wait_ready().await;
    server.ping(&user_id(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_restart_from_the_running_image_even_if_the_binary_is_gone() {
    let install = tempfile::tempdir().unwrap();
    let binary = install.path().join("warren");
    std::fs::copy(warren_tests::warren_binary(), &binary).unwrap();
    let options = ServerOptions {
        binary: Some(binary.clone()),
        ..ServerOptions::workers(2)
    };
    let server = Server::ready(&options).await;
    // An upgrade replaces (here: removes) the file while warren runs.
    std::fs::remove_file(&binary).unwrap();
    let user = user_id(3);
    let (_, old_pid) = server.ping(&user).await.unwrap();
    warren_tests::send_signal(old_pid, Signal::KILL);
    let back = eventually(Duration::from_secs(5), || async {
        matches!(server.ping(&user).await, Ok((_, pid)) if pid != old_pid)
    })
    .await;
    assert!(
        back,
        "no replacement worker without the binary on disk; log:\n{}",
        server.log()
    );
    let worker = server.worker_pids()[0];
    let comm = std::fs::read_to_string(format!("/proc/{worker}/comm")).unwrap();
    assert_eq!(comm.trim(), "warren-worker", "top and pidof name it so");
    let cmdline = std::fs::read(format!("/proc/{worker}/cmdline")).unwrap();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap();
    assert!(
        argv0.ends_with(b"warren"),
        "workers show as {:?}",
        String::from_utf8_lossy(argv0)
    );
}

/// A connection left in a slot's socket by a process that died before the
/// master accepted it (a worker killed at a start-up timeout, or anyone
/// else's) is skipped by the peer's pid, not handshaken with: the
/// replacement worker comes up on its first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_connection_in_the_socket_does_not_cost_the_replacement_its_start() {
    let server = Server::ready(&ServerOptions::workers(1)).await;
    let user = user_id(1);
    let (_, first) = server.ping(&user).await.expect("ping");
    // Queued while the worker is up (the master accepts only at a start),
    // then closed: what a worker that died in the backlog leaves.
    let socket = server.data_dir.join("run").join("worker-0.sock");
    let stale = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    drop(stale);
    warren_tests::send_signal(first, Signal::KILL);
    let replaced = eventually(Duration::from_secs(10), || async {
        matches!(server.ping(&user).await, Ok((_, pid)) if pid != first)
    })
    .await;
    assert!(replaced, "no replacement; log:\n{}", server.log());
    let (_, ready) = server.get_json("/readyz").await;
    assert_eq!(
        ready["workers"][0]["restarts"],
        1,
        "{ready}\n{}",
        server.log()
    );
    let log = server.log();
    assert!(!log.contains("handshake failed"), "{log}");
}
