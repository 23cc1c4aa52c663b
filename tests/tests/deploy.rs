//! The systemd deployment (issue 14): `deploy/warren.service` passes
//! `systemd-analyze verify`, and the real binary speaks systemd's
//! notification protocol: `READY=1` only once `/readyz` says ready (never
//! while a worker slot is down), `STOPPING=1` as soon as SIGTERM starts the
//! drain, and only the master holds `NOTIFY_SOCKET`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::net::UnixDatagram;
use warren_tests::{Server, ServerOptions};

fn unit_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/warren.service")
}

/// `systemd-analyze verify` on `unit`: (success, what it printed). It
/// exits 0 on many mistakes (an unknown key, a bad value) and only says so,
/// so anything printed counts as a failure too.
fn verify(unit: &Path) -> (bool, String) {
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect("run systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success() && said.trim().is_empty(), said)
}

/// The shipped unit, with `ExecStart`'s program swapped for the binary
/// under test, in a directory of its own (named `warren.service`: verify
/// reads the unit's name from the file name).
fn unit_for_test(dir: &Path, replace: &[(&str, &str)]) -> PathBuf {
    let text = std::fs::read_to_string(unit_file()).expect("read deploy/warren.service");
    // verify checks that ExecStart's program exists and is executable:
    // /usr/local/bin/warren is where an operator installs it, not here.
    let binary = warren_tests::warren_binary();
    let mut text = text.replace(
        "ExecStart=/usr/local/bin/warren ",
        &format!("ExecStart={} ", binary.display()),
    );
    for (from, to) in replace {
        assert!(text.contains(from), "the unit has no {from:?}");
        text = text.replace(from, to);
    }
    let path = dir.join("warren.service");
    std::fs::write(&path, text).expect("write the unit");
    path
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let text = std::fs::read_to_string(unit_file()).expect("read deploy/warren.service");
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/local/bin/warren serve --config /etc/warren/warren.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "LimitNOFILE=1048576",
        "Delegate=yes",
        "KillMode=mixed",
        "StateDirectory=warren",
        "ReadWritePaths=/var/lib/warren",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "deploy/warren.service lacks {line:?}"
        );
    }
    // Every setting says why it is there: the line above it is a comment.
    let lines: Vec<&str> = text.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        let setting = !line.is_empty() && !line.starts_with('#') && !line.starts_with('[');
        if setting {
            assert!(
                n > 0 && lines[n - 1].starts_with('#'),
                "line {} ({line:?}) has no comment above it",
                n + 1
            );
        }
    }
    // Longer than the drain (10 s by default) plus the workers' and the
    // recorder's 5 s each, or systemd's SIGKILL cuts the drain short.
    let stop = text
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("TimeoutStopSec=Ns");
    assert!(stop > 10 + 5 + 5, "TimeoutStopSec={stop}s");

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("\n*** SKIPPED systemd-analyze verify: systemd-analyze is not installed\n");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, said) = verify(&unit_for_test(dir.path(), &[]));
    assert!(ok, "systemd-analyze verify deploy/warren.service:\n{said}");
    // The check has teeth: a misspelt key and a bad value are caught.
    let broken = tempfile::tempdir().expect("tempdir");
    let (ok, said) = verify(&unit_for_test(
        broken.path(),
        &[
            ("Delegate=yes", "Delegat=yes"),
            ("KillMode=mixed", "KillMode=gently"),
        ],
    ));
    assert!(!ok, "a broken unit passed: {said}");
    assert!(
        said.contains("Delegat") && said.contains("gently"),
        "{said}"
    );
}

/// The messages (`KEY=value` lines) sent to `socket` until `until` holds
/// for one of them or `patience` passes.
async fn messages_until(
    socket: &UnixDatagram,
    patience: Duration,
    seen: &mut Vec<String>,
    until: impl Fn(&str) -> bool,
) -> bool {
    let deadline = Instant::now() + patience;
    let mut buffer = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.recv(&mut buffer)).await {
            Ok(Ok(n)) => {
                let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
                let done = until(&message);
                seen.push(message);
                if done {
                    return true;
                }
            }
            Ok(Err(err)) => panic!("receiving notifications: {err}"),
            Err(_) => return false,
        }
    }
}

fn has_line(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

/// Whether process `pid`'s environment holds `name`.
fn environment_has(pid: u32, name: &str) -> bool {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    environ
        .split(|b| *b == 0)
        .any(|entry| entry.starts_with(format!("{name}=").as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_sent_once_ready_and_stopping_when_the_drain_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notification socket");
    let data = tempfile::tempdir().expect("data dir");
    let options = ServerOptions::workers(2).env("NOTIFY_SOCKET", path.to_str().expect("utf-8"));
    let mut server = Server::start(data.path(), &options);
    let started = Instant::now();

    let mut seen = Vec::new();
    let ready = messages_until(&socket, Duration::from_secs(30), &mut seen, |m| {
        has_line(m, "READY=1")
    })
    .await;
    assert!(ready, "no READY=1; got {seen:?}; log:\n{}", server.log());
    // Ready means what /readyz means: it says so at once, not eventually.
    let (status, body) = server.get_json("/readyz").await;
    assert_eq!(status, 200, "READY=1 but /readyz: {body}");
    eprintln!("READY=1 after {:?}: {seen:?}", started.elapsed());
    assert!(
        seen.iter().any(|m| m.contains("STATUS=")),
        "no STATUS line: {seen:?}"
    );

    // Workers are started without the variable; the master has it.
    let workers = server.worker_pids();
    assert_eq!(workers.len(), 2, "workers: {workers:?}");
    assert!(environment_has(server.pid, "NOTIFY_SOCKET"));
    for worker in workers {
        assert!(
            !environment_has(worker, "NOTIFY_SOCKET"),
            "worker {worker} inherited NOTIFY_SOCKET"
        );
    }

    // SIGTERM: STOPPING=1 when the drain starts, before the exit.
    server.signal(rustix::process::Signal::TERM);
    let mut after = Vec::new();
    let stopping = messages_until(&socket, Duration::from_secs(10), &mut after, |m| {
        has_line(m, "STOPPING=1")
    })
    .await;
    assert!(stopping, "no STOPPING=1; got {after:?}");
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(30));
        (status, server)
    })
    .await
    .expect("join");
    assert!(
        status.0.is_some_and(|s| s.success()),
        "warren did not exit cleanly: {:?}; log:\n{}",
        status.0,
        status.1.log()
    );
    // READY was sent once.
    assert_eq!(
        seen.iter()
            .chain(&after)
            .filter(|m| has_line(m, "READY=1"))
            .count(),
        1,
        "{seen:?} {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_not_sent_while_a_worker_slot_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notification socket");
    let data = tempfile::tempdir().expect("data dir");
    // Slot 1's worker crashes at every start (test builds only).
    let options = ServerOptions::workers(2)
        .env("NOTIFY_SOCKET", path.to_str().expect("utf-8"))
        .env("WARREN_DEBUG_CRASH_SLOTS", "1");
    let mut server = Server::start(data.path(), &options);

    let mut seen = Vec::new();
    let ready = messages_until(&socket, Duration::from_secs(4), &mut seen, |m| {
        has_line(m, "READY=1")
    })
    .await;
    assert!(!ready, "READY=1 with a slot down: {seen:?}");
    let (status, body) = server.get_json("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        seen.iter()
            .any(|m| m.contains("STATUS=starting: waiting for workers")),
        "the status does not say what is awaited: {seen:?}"
    );

    // Stopping before ever being ready still says so.
    server.signal(rustix::process::Signal::TERM);
    let mut after = Vec::new();
    let stopping = messages_until(&socket, Duration::from_secs(10), &mut after, |m| {
        has_line(m, "STOPPING=1")
    })
    .await;
    assert!(stopping, "no STOPPING=1; got {after:?}");
    assert!(
        !after.iter().any(|m| has_line(m, "READY=1")),
        "READY=1 while stopping: {after:?}"
    );
    tokio::task::spawn_blocking(move || {
        server.wait_exit(Duration::from_secs(30));
    })
    .await
    .expect("join");
}
