//! The sandbox of users' processes, on the real kernel: commands run
//! through `warren sandbox-exec` (the built binary) as users with uids of
//! their own, and each escape is refused by a system call (the errno is
//! the kernel's, printed by the command itself). Needs root (uids,
//! cgroups); skipped otherwise.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use warren_protocol::{ProcessLimits, Role, UserCtx, UserId};
use warren_tests::{process_alive, warren_binary};
use warren_worker::sandbox::{
    CgroupRoot, Launch, Mode, Network, Sandbox, SandboxConfig, SpawnError, Spawned,
};
use warren_worker::workspace::Workspaces;

/// Uids from the default range, a fresh one per user so tests running at
/// once never share an `RLIMIT_NPROC` count.
static NEXT_UID: AtomicU32 = AtomicU32::new(200_001);
static NEXT_SLOT: AtomicU32 = AtomicU32::new(0);
/// Labs alive: the last one to go removes the base cgroups, which the
/// others' slots need (taken while a lab probes, so no lab makes its
/// slot in a base being removed).
static LABS: std::sync::Mutex<u32> = std::sync::Mutex::new(0);

/// One data directory, one slot and its sandbox.
struct Lab {
    dir: tempfile::TempDir,
    data: PathBuf,
    workspaces: Workspaces,
    sandbox: Sandbox,
    slot: u32,
    cgroup_base: PathBuf,
}

fn root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        assert!(
            !warren_tests::sandbox_required(),
            "the sandbox tests need root (WARREN_REQUIRE_SANDBOX=1)"
        );
        eprintln!("*** SKIPPED: the sandbox tests need root; CI sets WARREN_REQUIRE_SANDBOX=1");
    }
    root
}

/// A base of this test process's own, apart from any server's (a
/// starting worker kills its slot's cgroups).
fn test_cgroup_base() -> PathBuf {
    warren_tests::own_cgroup_base(&format!("warren-test-{}", std::process::id()))
        .expect("a cgroup v2 mount")
}

impl Lab {
    fn new(configure: impl FnOnce(&mut SandboxConfig)) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        // The uids traverse (never list) the way to their workspaces.
        for path in [dir.path(), &data] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711)).expect("chmod");
        }
        let users = data.join("users");
        let slot = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
        let cgroup_base = test_cgroup_base();
        let mut config = SandboxConfig::new(users.clone(), slot);
        config.stage_exe = warren_binary();
        config.cgroup_root = CgroupRoot::Path(cgroup_base.clone());
        config.mode = Some(Mode::Required);
        configure(&mut config);
        let sandbox = {
            let mut labs = LABS.lock().unwrap_or_else(|e| e.into_inner());
            *labs += 1;
            Sandbox::probe(config, true)
        };
        Lab {
            workspaces: Workspaces::new(users),
            data,
            sandbox,
            slot,
            cgroup_base,
            dir,
        }
    }

    /// A user with a uid of their own and a workspace that is theirs.
    fn user(&self, limits: ProcessLimits) -> UserCtx {
        let uid = NEXT_UID.fetch_add(1, Ordering::Relaxed);
        let user = UserCtx {
            id: UserId(uuid::Uuid::new_v4().into_bytes()),
            name: format!("user{uid}"),
            role: Role::User,
            quota_bytes: 1 << 30,
            quota_files: 100_000,
            uid: Some(uid),
            limits,
        };
        self.workspaces
            .open_as(user.id, user.uid)
            .expect("open the workspace");
        user
    }

    fn workspace(&self, user: &UserCtx) -> PathBuf {
        self.sandbox.user_paths(user).0
    }

    async fn spawn(&self, user: &UserCtx, argv: &[&str], cwd: &str) -> Result<Spawned, SpawnError> {
        self.sandbox
            .spawn(
                user,
                Launch {
                    argv: argv.iter().map(OsString::from).collect(),
                    cwd: cwd.into(),
                    env: vec![("EXTRA".into(), "from-the-launch".into())],
                    group: format!("task-{}", uuid::Uuid::new_v4().simple()),
                    stdin: Stdio::null(),
                    stdout: Stdio::piped(),
                    stderr: Stdio::piped(),
                    terminal: false,
                    read_execute: Vec::new(),
                    read_only: Vec::new(),
                },
            )
            .await
    }

    /// Runs a command to its end: (exit code or -signal, stdout, stderr).
    async fn run(&self, user: &UserCtx, argv: &[&str]) -> (i32, String, String) {
        let spawned = self.spawn(user, argv, "").await.expect("spawn");
        let output =
            tokio::time::timeout(Duration::from_secs(60), spawned.child.wait_with_output())
                .await
                .expect("the command ends")
                .expect("wait");
        let _ = spawned.group.kill().await;
        use std::os::unix::process::ExitStatusExt;
        let code = output
            .status
            .code()
            .unwrap_or_else(|| -output.status.signal().unwrap_or(0));
        (
            code,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.sandbox.kill_slot(self.slot);
        let mut labs = LABS.lock().unwrap_or_else(|e| e.into_inner());
        *labs -= 1;
        if *labs == 0 {
            self.sandbox.remove_cgroup_bases();
        }
    }
}

fn limits() -> ProcessLimits {
    ProcessLimits {
        address_space: 0,
        cpu_seconds: 600,
        processes: 256,
        file_size: 1 << 30,
        open_files: 1024,
        memory: 512 << 20,
        pids: 256,
        cpu_weight: 100,
        tasks: 8,
    }
}

/// Tries each `op:argument` and prints `op:argument RESULT`, RESULT being
/// ALLOWED or the errno name the kernel answered.
const PROBE: &str = r#"
import ctypes, errno, os, signal, socket, sys
def write(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644); os.close(fd)
def read(path):
    fd = os.open(path, os.O_RDONLY); os.read(fd, 1); os.close(fd)
def connect(path):
    s = socket.socket(socket.AF_UNIX); s.connect(path)
def kill(pid):
    os.kill(int(pid), signal.SIGTERM)
def ptrace(pid):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, int(pid), None, None) != 0:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
for spec in sys.argv[1:]:
    op, _, arg = spec.partition(":")
    try:
        {"write": write, "read": read, "connect": connect, "kill": kill, "ptrace": ptrace}[op](arg)
        print(spec, "ALLOWED")
    except OSError as e:
        print(spec, errno.errorcode.get(e.errno, str(e.errno)))
"#;

fn check_probe(output: &str, expected: &[(String, &str)]) {
    let mut failures = Vec::new();
    for (spec, want) in expected {
        let line = format!("{spec} {want}");
        if !output.lines().any(|l| l == line) {
            failures.push(format!("want `{line}`"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\ngot:\n{output}");
}

#[tokio::test]
async fn escapes_are_denied_by_the_kernel() {
    if !root() {
        return;
    }
    let lab = Lab::new(|_| {});
    assert!(
        lab.sandbox.report().decision.allowed.is_ok(),
        "{:?}",
        lab.sandbox.report()
    );
    let (me, other) = (lab.user(limits()), lab.user(limits()));
    let (mine, theirs) = (lab.workspace(&me), lab.workspace(&other));
    // Another user's file, readable by mode, and their workspace open to
    // all by mode: only the sandbox stands in the way.
    std::fs::write(theirs.join("secret"), b"theirs").expect("write");
    std::fs::set_permissions(
        theirs.join("secret"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::symlink(theirs.join("secret"), mine.join("link")).expect("symlink");
    // A readable accounts database (0644 on purpose: Landlock denies it).
    let database = lab.data.join("warren.db");
    std::fs::write(&database, b"SQLite format 3\0").expect("write");
    std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    // The worker's socket, in the 0700 run directory.
    let run = lab.data.join("run");
    std::fs::create_dir(&run).expect("run dir");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let socket = run.join("worker-0.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    // A process of the other user, and one of warren's own uid.
    let theirs_running = lab
        .spawn(&other, &["sleep", "60"], "")
        .await
        .expect("spawn");
    let their_pid = theirs_running.pid;
    let mut warren_own = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("sleep");
    let tmp_file = format!("/tmp/warren-escape-{}", me.uid.unwrap_or(0));
    // What a run without the sandbox (a failed one) may have left.
    let _ = std::fs::remove_file(&tmp_file);
    let scratch = lab.sandbox.user_paths(&me).1;
    let specs: Vec<(String, &str)> = vec![
        ("write:../../escape".into(), "EACCES"),
        (
            format!("write:{}", lab.data.join("users/escape").display()),
            "EACCES",
        ),
        (
            format!("write:{}", lab.dir.path().join("escape").display()),
            "EACCES",
        ),
        (format!("write:{tmp_file}"), "EACCES"),
        ("write:/etc/passwd".into(), "EACCES"),
        ("write:/root/escape".into(), "EACCES"),
        (format!("read:{}", database.display()), "EACCES"),
        (format!("write:{}", database.display()), "EACCES"),
        (
            format!("read:{}", theirs.join("secret").display()),
            "EACCES",
        ),
        (
            format!("write:{}", theirs.join("planted").display()),
            "EACCES",
        ),
        ("read:link".into(), "EACCES"),
        (format!("kill:{their_pid}"), "EPERM"),
        (format!("ptrace:{their_pid}"), "EPERM"),
        (format!("kill:{}", warren_own.id()), "EPERM"),
        (format!("connect:{}", socket.display()), "EACCES"),
        ("read:/etc/shadow".into(), "EACCES"),
        // What the user may do, so the denials above are not blanket ones.
        ("write:mine".into(), "ALLOWED"),
        (
            format!("write:{}", scratch.join("tmp-file").display()),
            "ALLOWED",
        ),
        ("read:/etc/passwd".into(), "ALLOWED"),
    ];
    let mut argv = vec!["python3", "-c", PROBE];
    let joined: Vec<&str> = specs.iter().map(|(spec, _)| spec.as_str()).collect();
    argv.extend(joined);
    let (code, out, err) = lab.run(&me, &argv).await;
    assert_eq!(code, 0, "{err}");
    check_probe(&out, &specs);
    assert!(!Path::new(&tmp_file).exists());
    assert!(process_alive(their_pid) && process_alive(warren_own.id()));
    assert_eq!(
        std::fs::read(theirs.join("secret")).expect("read"),
        b"theirs"
    );
    let _ = warren_own.kill();
    let _ = warren_own.wait();
    theirs_running.group.kill().await.expect("kill");
}

#[tokio::test]
async fn the_command_gets_a_clean_environment_cwd_and_no_descriptors() {
    if !root() {
        return;
    }
    let lab = Lab::new(|config| config.env = vec![("OPERATOR".into(), "set".into())]);
    let user = lab.user(limits());
    let workspace = lab.workspace(&user);
    std::fs::create_dir_all(workspace.join("sub/dir")).expect("mkdir");
    // A descriptor the test process leaves inheritable must not arrive.
    let leaked = rustix::fs::open(
        "/etc/hostname",
        rustix::fs::OFlags::RDONLY,
        rustix::fs::Mode::empty(),
    )
    .expect("open");
    let script = r#"
import json, os
fds = []
for fd in range(3, 4096):
    try:
        os.fstat(fd); fds.append(fd)
    except OSError:
        pass
print(json.dumps({"env": dict(os.environ), "cwd": os.getcwd(), "fds": fds,
    "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()], "groups": os.getgroups(),
    "session_leader": os.getsid(0) == os.getpid()}))
"#;
    let spawned = lab
        .spawn(&user, &["python3", "-c", script], "sub/dir")
        .await
        .expect("spawn");
    let output = spawned.child.wait_with_output().await.expect("wait");
    drop(leaked);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let uid = user.uid.expect("uid");
    let scratch = lab.sandbox.user_paths(&user).1;
    let expected = serde_json::json!({
        "HOME": workspace.to_str(),
        "USER": user.name,
        "LOGNAME": user.name,
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "TMPDIR": scratch.to_str(),
        "SHELL": "/bin/bash",
        "OPERATOR": "set",
        "EXTRA": "from-the-launch",
        // Python itself adds this one for its locale coercion.
        "LC_CTYPE": "C.UTF-8",
    });
    let mut env = seen["env"].clone();
    if env.get("LC_CTYPE").is_none() {
        env["LC_CTYPE"] = "C.UTF-8".into();
    }
    assert_eq!(env, expected);
    assert_eq!(
        seen["cwd"],
        workspace.join("sub/dir").to_str().expect("utf-8")
    );
    assert_eq!(seen["fds"], serde_json::json!([]));
    assert_eq!(seen["ids"], serde_json::json!([uid, uid, uid, uid]));
    assert_eq!(seen["groups"], serde_json::json!([]));
    assert_eq!(seen["session_leader"], true);
    // Signals the test process ignores or blocks (Rust ignores SIGPIPE)
    // are back to their defaults; no_new_privs is set.
    let (code, out, _) = lab
        .run(
            &user,
            &[
                "grep",
                "-E",
                "^(SigIgn|SigBlk|NoNewPrivs)",
                "/proc/self/status",
            ],
        )
        .await;
    assert_eq!(code, 0);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        [
            "SigBlk:",
            "0000000000000000",
            "SigIgn:",
            "0000000000000000",
            "NoNewPrivs:",
            "1"
        ]
    );
}

#[tokio::test]
async fn commands_that_cannot_run_are_told_apart_from_running_ones() {
    if !root() {
        return;
    }
    let lab = Lab::new(|_| {});
    let user = lab.user(limits());
    let workspace = lab.workspace(&user);
    std::fs::write(workspace.join("script"), b"#!/bin/sh\necho hi\n").expect("write");
    std::os::unix::fs::symlink("/", workspace.join("out")).expect("symlink");
    let command_error = |result: Result<Spawned, SpawnError>| match result {
        Err(SpawnError::Command(text)) => text,
        other => panic!("expected a command error, got {other:?}"),
    };
    let text = command_error(lab.spawn(&user, &["no-such-command"], "").await);
    assert_eq!(
        text,
        "could not run `no-such-command`: No such file or directory"
    );
    let text = command_error(lab.spawn(&user, &["./script"], "").await);
    assert_eq!(text, "could not run `./script`: Permission denied");
    let text = command_error(lab.spawn(&user, &["true"], "../..").await);
    assert!(text.contains("working directory"), "{text}");
    let text = command_error(lab.spawn(&user, &["true"], "out").await);
    assert!(text.contains("outside the workspace"), "{text}");
    let text = command_error(lab.spawn(&user, &["true"], "script").await);
    assert!(text.contains("not a directory"), "{text}");
    let text = command_error(lab.spawn(&user, &["true"], "missing").await);
    assert!(text.contains("No such file"), "{text}");
    // A command that exists but fails is a running task, not a spawn error.
    let (code, _, _) = lab.run(&user, &["sh", "-c", "exit 3"]).await;
    assert_eq!(code, 3);
}

#[tokio::test]
async fn a_fork_bomb_stays_within_its_process_limits() {
    if !root() {
        return;
    }
    let lab = Lab::new(|_| {});
    let bomb = r#"
import errno, os, time
n = 0
try:
    for _ in range(2000):
        if os.fork() == 0:
            os.close(1); os.close(2); time.sleep(60); os._exit(0)
        n += 1
    print(n, "ALLOWED")
except OSError as e:
    print(n, errno.errorcode[e.errno])
"#;
    // RLIMIT_NPROC of the uid.
    let user = lab.user(ProcessLimits {
        processes: 40,
        pids: 0,
        ..limits()
    });
    let (code, out, err) = lab.run(&user, &["python3", "-c", bomb]).await;
    assert_eq!(code, 0, "{err}");
    let (count, result) = out.trim().split_once(' ').expect("count and result");
    assert_eq!(result, "EAGAIN", "{out}");
    assert!(count.parse::<u32>().expect("count") < 40, "{out}");
    // The cgroup's pids.max for all of the user's processes together.
    let user = lab.user(ProcessLimits {
        processes: 0,
        pids: 30,
        ..limits()
    });
    let (code, out, err) = lab.run(&user, &["python3", "-c", bomb]).await;
    assert_eq!(code, 0, "{err}");
    let (count, result) = out.trim().split_once(' ').expect("count and result");
    assert_eq!(result, "EAGAIN", "{out}");
    assert!(count.parse::<u32>().expect("count") < 30, "{out}");
}

#[tokio::test]
async fn a_memory_hog_is_stopped_by_its_limit() {
    if !root() {
        return;
    }
    let lab = Lab::new(|_| {});
    let user = lab.user(ProcessLimits {
        memory: 64 << 20,
        ..limits()
    });
    let hog = "b = bytearray(b'x') * (512 << 20); print('survived', len(b))";
    let (code, out, _) = lab.run(&user, &["python3", "-c", hog]).await;
    assert_eq!(code, -9, "killed by the OOM killer, not {code}: {out}");
    // Within the limit, the same program runs.
    let (code, out, err) = lab
        .run(
            &user,
            &[
                "python3",
                "-c",
                "b = bytearray(b'x') * (8 << 20); print(len(b))",
            ],
        )
        .await;
    assert_eq!((code, out.trim()), (0, "8388608"), "{err}");
}

/// A grandchild in a session of its own: its pid, read from the first
/// line the command prints.
async fn grandchild(spawned: &mut Spawned) -> u32 {
    let stdout = spawned.child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = lines.next_line().await.expect("read").expect("a line");
    line.trim().parse().expect("a pid")
}

const SETSID_GRANDCHILD: &[&str] = &["bash", "-c", "setsid sleep 300 & echo $!; exec sleep 300"];

#[tokio::test]
async fn killing_a_group_kills_a_grandchild_in_its_own_session() {
    if !root() {
        return;
    }
    let lab = Lab::new(|_| {});
    let user = lab.user(limits());
    let mut spawned = lab
        .spawn(&user, SETSID_GRANDCHILD, "")
        .await
        .expect("spawn");
    assert!(spawned.group.is_cgroup());
    let grandchild = grandchild(&mut spawned).await;
    assert!(process_alive(grandchild));
    let session = |pid: u32| rustix::process::getsid(rustix::process::Pid::from_raw(pid as i32));
    // setsid(1) runs just after the shell printed its pid.
    let own_session = warren_tests::eventually(Duration::from_secs(5), || async {
        session(grandchild).ok() != session(spawned.pid).ok()
    })
    .await;
    assert!(own_session, "the grandchild never got a session of its own");
    spawned.group.kill().await.expect("kill the group");
    let status = spawned.child.wait().await.expect("wait");
    assert!(!status.success());
    assert!(!process_alive(grandchild), "the grandchild survived");
    // SIGTERM to a group reaches its processes too.
    let spawned = lab
        .spawn(&user, &["sleep", "300"], "")
        .await
        .expect("spawn");
    spawned
        .group
        .signal(rustix::process::Signal::TERM)
        .expect("signal");
    let output = spawned.child.wait_with_output().await.expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(output.status.signal(), Some(15));
    spawned.group.kill().await.expect("remove the group");
}

#[tokio::test]
async fn killing_the_slot_leaves_no_process_of_its_users() {
    if !root() {
        return;
    }
    let lab = Lab::new(|_| {});
    let user = lab.user(limits());
    let uid = user.uid.expect("uid");
    let mut children = Vec::new();
    for _ in 0..3 {
        let mut spawned = lab
            .spawn(&user, SETSID_GRANDCHILD, "")
            .await
            .expect("spawn");
        grandchild(&mut spawned).await;
        children.push(spawned.child);
    }
    assert!(
        warren_tests::processes_of(uid).len() >= 6,
        "{:?}",
        warren_tests::processes_of(uid)
    );
    // What the master does when the worker died (its children lost their
    // parent but not their cgroups).
    lab.sandbox.kill_slot(lab.slot).expect("kill the slot");
    for mut child in children {
        let _ = child.wait().await;
    }
    assert_eq!(warren_tests::processes_of(uid), Vec::<u32>::new());
    assert!(!lab.cgroup_base.join(format!("slot-{}", lab.slot)).exists());
}

#[tokio::test]
async fn network_none_leaves_only_loopback() {
    if !root() {
        return;
    }
    let lab = Lab::new(|config| config.network = Network::None);
    let user = lab.user(limits());
    let script = r#"
import socket
names = [line.split(':')[0].strip() for line in open('/proc/net/dev').readlines()[2:]]
server = socket.socket(); server.bind(('127.0.0.1', 0)); server.listen()
client = socket.create_connection(server.getsockname())
print(' '.join(names), 'loopback-ok')
"#;
    let (code, out, err) = lab.run(&user, &["python3", "-c", script]).await;
    assert_eq!((code, out.trim()), (0, "lo loopback-ok"), "{err}");
}

#[tokio::test]
async fn a_required_sandbox_refuses_users_without_a_uid() {
    if !root() {
        return;
    }
    let lab = Lab::new(|_| {});
    let mut user = lab.user(limits());
    user.uid = None;
    match lab.spawn(&user, &["true"], "").await {
        Err(SpawnError::Unavailable(text)) => assert!(text.contains("uid"), "{text}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let levels = lab.sandbox.report().levels();
    for feature in [
        "allowed",
        "uid",
        "cgroup",
        "cgroup_memory",
        "cgroup_processes",
        "rlimits",
    ] {
        assert!(levels.contains(&(feature, 1)), "{feature}: {levels:?}");
    }
    assert!(levels
        .iter()
        .any(|(f, level)| *f == "landlock" && *level >= 1));
}

#[tokio::test]
async fn the_server_reports_its_sandbox_and_empties_a_dead_workers_slot() {
    use warren_tests::{eventually, metric_value, Server, ServerOptions};
    if !root() {
        return;
    }
    let base = warren_tests::own_cgroup_base(&format!("warren-test-server-{}", std::process::id()))
        .expect("cgroup v2");
    let options = ServerOptions::workers(1).arg(&format!("--cgroup-root={}", base.display()));
    let server = Server::ready(&options).await;
    let (status, ready) = server.get_json("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let sandbox = &ready["sandbox"];
    assert_eq!(sandbox["mode"], "required", "{ready}");
    assert_eq!(sandbox["levels"]["allowed"], 1, "{ready}");
    assert!(sandbox["levels"]["landlock"].as_i64() >= Some(1), "{ready}");
    assert!(sandbox["refused"].is_null(), "{ready}");
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics");
    for feature in [
        "allowed",
        "uid",
        "cgroup",
        "cgroup_memory",
        "cgroup_processes",
    ] {
        let labels = format!("feature=\"{feature}\"");
        assert_eq!(
            metric_value(&metrics, "warren_sandbox_level", &labels),
            Some(1.0),
            "{feature}"
        );
    }
    // The uids traverse the data directory; nothing else of it is theirs.
    let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
    let data = &server.data_dir;
    assert_eq!(mode(data), 0o711);
    assert_eq!(mode(&data.join("users")), 0o711);
    assert_eq!(mode(&data.join("run")), 0o700);
    assert_eq!(mode(&data.join("warren.db")), 0o600);

    // A user process in the worker's slot, with a grandchild in a session
    // of its own; the worker is then killed.
    let mut config = SandboxConfig::new(data.join("users"), 0);
    config.stage_exe = warren_binary();
    config.cgroup_root = CgroupRoot::Path(base.clone());
    let sandbox = Sandbox::probe(config, false);
    let workspaces = Workspaces::new(data.join("users"));
    let user = UserCtx {
        id: UserId(uuid::Uuid::new_v4().into_bytes()),
        name: "victim".into(),
        role: Role::User,
        quota_bytes: 1 << 30,
        quota_files: 1000,
        uid: Some(NEXT_UID.fetch_add(1, Ordering::Relaxed)),
        limits: limits(),
    };
    workspaces.open_as(user.id, user.uid).expect("workspace");
    let mut spawned = sandbox
        .spawn(
            &user,
            Launch {
                argv: SETSID_GRANDCHILD.iter().map(OsString::from).collect(),
                cwd: String::new(),
                env: Vec::new(),
                group: "task-victim".into(),
                stdin: Stdio::null(),
                stdout: Stdio::piped(),
                stderr: Stdio::null(),
                terminal: false,
                read_execute: Vec::new(),
                read_only: Vec::new(),
            },
        )
        .await
        .expect("spawn");
    let grandchild = grandchild(&mut spawned).await;
    let workers = server.worker_pids();
    assert_eq!(workers.len(), 1);
    warren_tests::send_signal(workers[0], rustix::process::Signal::KILL);
    let gone = eventually(Duration::from_secs(5), || async {
        !process_alive(grandchild)
    })
    .await;
    assert!(gone, "the grandchild outlived its worker");
    let _ = spawned.child.wait().await;
    let back = eventually(Duration::from_secs(5), || async {
        server.get_json("/readyz").await.0 == 200
    })
    .await;
    assert!(back, "the slot did not come back");
    drop(server);
    let _ = sandbox.kill_slot(0);
    sandbox.remove_cgroup_bases();
}

/// Reads the PTY's controller end until `needle` shows (or `patience`
/// runs out); everything read so far.
fn read_until(controller: &std::fs::File, needle: &str, patience: Duration) -> String {
    use std::io::Read;
    let deadline = std::time::Instant::now() + patience;
    let mut seen = Vec::new();
    let mut reader = controller;
    while !String::from_utf8_lossy(&seen).contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} from the terminal; it showed:\n{}",
            String::from_utf8_lossy(&seen)
        );
        let mut buf = [0u8; 4096];
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            // EIO: every terminal-end descriptor is closed (it exited).
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// A program on a PTY has it as its controlling terminal, in the
/// foreground, of the size asked and resized live; the terminal is the
/// user's alone: another user's process cannot open it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_on_a_pty_runs_in_its_own_controlling_terminal() {
    if !root() {
        return;
    }
    let lab = Lab::new(|_| {});
    let (alice, bob) = (lab.user(limits()), lab.user(limits()));
    let pty = warren_worker::sandbox::pty::Pty::open(80, 24, alice.uid).expect("a pty");
    let (stdin, stdout, stderr) = pty.stdio().expect("stdio");
    let script = "import os, sys\n\
        tty = os.ttyname(0); st = os.stat(tty)\n\
        print('tty', tty, st.st_uid, oct(st.st_mode & 0o777), flush=True)\n\
        print('controlling', os.tcgetpgrp(0) == os.getpgrp(), flush=True)\n\
        os.close(os.open('/dev/tty', os.O_RDWR))\n\
        print('size', *os.get_terminal_size(), flush=True)\n\
        line = sys.stdin.readline().strip()\n\
        print('size', *os.get_terminal_size(), flush=True)\n\
        print('got', line[::-1], flush=True)\n";
    let spawned = lab
        .sandbox
        .spawn(
            &alice,
            Launch {
                argv: ["python3", "-c", script].map(OsString::from).to_vec(),
                cwd: String::new(),
                env: Vec::new(),
                group: format!("terminal-{}", uuid::Uuid::new_v4().simple()),
                stdin,
                stdout,
                stderr,
                terminal: true,
                read_execute: Vec::new(),
                read_only: Vec::new(),
            },
        )
        .await
        .expect("spawn on the pty");
    let controller = std::fs::File::from(pty.controller.try_clone().expect("dup"));
    rustix::fs::fcntl_setfl(&controller, rustix::fs::OFlags::NONBLOCK).expect("nonblock");
    let patience = Duration::from_secs(30);
    let first = tokio::task::block_in_place(|| read_until(&controller, "size 80 24", patience));
    let uid = alice.uid.expect("uid");
    let tty = first
        .lines()
        .find_map(|line| line.strip_prefix("tty "))
        .expect("the tty line")
        .split(' ')
        .collect::<Vec<_>>();
    assert!(tty[0].starts_with("/dev/pts/"), "{first}");
    assert_eq!(
        tty[1],
        uid.to_string(),
        "the terminal is the user's: {first}"
    );
    assert_eq!(tty[2], "0o600", "{first}");
    assert!(first.contains("controlling True"), "{first}");

    // Another user's process cannot open it.
    let (_, probe, _) = lab
        .run(
            &bob,
            &["python3", "-c", PROBE, &format!("write:{}", tty[0])],
        )
        .await;
    assert!(
        probe.contains(&format!("write:{} EACCES", tty[0])),
        "another user opened the terminal: {probe}"
    );

    pty.resize(100, 40).expect("resize");
    rustix::io::write(&pty.controller, b"olleh\n").expect("type");
    let rest = tokio::task::block_in_place(|| read_until(&controller, "got hello", patience));
    assert!(rest.contains("size 100 40"), "{rest}");
    let status = tokio::time::timeout(patience, spawned.child.wait_with_output())
        .await
        .expect("it exits")
        .expect("wait");
    assert!(status.status.success(), "{status:?}");
}
