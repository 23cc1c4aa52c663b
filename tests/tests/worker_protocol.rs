//! A real `warren worker` process against a test-controlled master socket:
//! the worker's side of the handshake and its response to bad input.

use futures_util::{SinkExt, StreamExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Framed;
use warren_protocol::*;

struct Harness {
    _dir: tempfile::TempDir,
    worker: Child,
    connection: Framed<UnixStream, FrameCodec>,
    /// Stream frames that came while a response was awaited.
    pending: std::collections::VecDeque<Frame>,
}

async fn start_worker() -> Harness {
    start_worker_with(false, |_| None).await
}

/// Starts a worker, with a users directory if asked; once it has connected
/// (and before the handshake, after which it sizes its caches),
/// `open_files` may return a new open-file limit for it, given its pid.
async fn start_worker_with(
    with_users_dir: bool,
    open_files: impl Fn(u32) -> Option<u64>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("worker-0.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let mut command = Command::new(warren_tests::warren_binary());
    if with_users_dir {
        // The runner's protocol, not the sandbox (tests/tests/sandbox.rs):
        // the test's user has no uid of their own, which `required` (the
        // default as root) refuses, and cgroups would be shared with other
        // tests' workers of slot 0.
        command
            .arg("worker")
            .arg("--users-dir")
            .arg(dir.path())
            .args(["--sandbox", "best-effort", "--cgroup-root", "off"]);
    } else {
        command.arg("worker");
    }
    let worker = command
        .args(["--slot", "0", "--heartbeat-interval-ms", "50", "--socket"])
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the worker connects")
        .unwrap();
    if let Some(limit) = open_files(worker.id()) {
        use rustix::process::{prlimit, Pid, Resource, Rlimit};
        let pid = Pid::from_raw(worker.id() as i32);
        let limit = Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        };
        prlimit(pid, Resource::Nofile, limit).expect("set the worker's open-file limit");
    }
    Harness {
        _dir: dir,
        worker,
        connection: Framed::new(stream, FrameCodec::new()),
        pending: Default::default(),
    }
}

fn hello(version: u32) -> Frame {
    Frame {
        id: 0,
        body: Body::Hello(Hello {
            version,
            role: PeerRole::Master,
            slot: 0,
            pid: std::process::id(),
        }),
    }
}

impl Harness {
    /// Sends `op` for `user` as request `id` and waits for its outcome
    /// (heartbeats meanwhile are skipped).
    async fn call(&mut self, id: u64, user: UserCtx, op: FileOp) -> Result<Reply, OpError> {
        let request = Request {
            user,
            op: Op::Files(op),
        };
        let body = Body::Request(request);
        self.connection.send(Frame { id, body }).await.unwrap();
        loop {
            let frame = self.next().await;
            match frame.body {
                Body::Response(response) if frame.id == id => return response.result,
                Body::Heartbeat(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn next(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(5), self.connection.next())
            .await
            .expect("a frame in time")
            .expect("connection open")
            .expect("a valid frame")
    }

    async fn handshake(&mut self) -> Hello {
        self.connection.send(hello(PROTOCOL_VERSION)).await.unwrap();
        match self.next().await.body {
            Body::Hello(hello) => hello,
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    /// Waits for the worker to exit; returns (success, stderr).
    fn exit(mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = self.worker.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the worker did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        use std::io::Read;
        self.worker
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(!stderr.contains("panicked"), "{stderr}");
        (status.success(), stderr)
    }
}

#[tokio::test]
async fn a_worker_answers_pings_and_heartbeats_then_exits_cleanly_on_eof() {
    let mut harness = start_worker().await;
    let theirs = harness.handshake().await;
    assert_eq!(theirs.role, PeerRole::Worker);
    assert_eq!(theirs.pid, harness.worker.id());
    let user = UserCtx {
        id: UserId([9; 16]),
        name: "nine".into(),
        role: Role::User,
        quota_bytes: u64::MAX,
        quota_files: u64::MAX,
        uid: None,
        limits: Default::default(),
    };
    harness
        .connection
        .send(Frame {
            id: 41,
            body: Body::Request(Request { user, op: Op::Ping }),
        })
        .await
        .unwrap();
    let mut answered = false;
    let mut heartbeats = 0;
    while !(answered && heartbeats >= 2) {
        let frame = harness.next().await;
        match frame.body {
            Body::Response(Response {
                result: Ok(Reply::Pong { slot, pid, user }),
            }) => {
                assert_eq!(
                    (frame.id, slot, pid, user),
                    (41, 0, theirs.pid, UserId([9; 16]))
                );
                answered = true;
            }
            Body::Heartbeat(load) => {
                heartbeats += 1;
                assert!(load.users_seen <= 1);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(harness.connection.into_inner());
    // Re-create the harness shape without the connection to wait for exit.
    let mut worker = harness.worker;
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the worker outlived its master's socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_worker_refuses_a_master_of_another_protocol_version() {
    let mut harness = start_worker().await;
    harness
        .connection
        .send(hello(PROTOCOL_VERSION + 998))
        .await
        .unwrap();
    let expected = format!("protocol version {}", PROTOCOL_VERSION + 998);
    assert!(matches!(harness.next().await.body, Body::Hello(_)));
    match harness.next().await.body {
        Body::Refuse(why) => assert!(why.contains(&expected), "{why}"),
        other => panic!("expected Refuse, got {other:?}"),
    }
    let (success, stderr) = harness.exit();
    assert!(!success);
    assert!(stderr.contains(&expected), "{stderr}");
}

#[tokio::test]
async fn a_worker_sent_garbage_or_an_over_long_frame_logs_it_and_exits() {
    let cases: [(&[u8], &str); 3] = [
        (
            &[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            "undecodable frame",
        ),
        (
            &[0xff, 0xff, 0xff, 0xf0, 1, 2, 3],
            "exceeds the 1048576-byte limit",
        ),
        // A well-formed frame the worker never expects from a master.
        (&[], "unexpected frame"),
    ];
    for (bytes, expected) in cases {
        let mut harness = start_worker().await;
        harness.handshake().await;
        if bytes.is_empty() {
            let heartbeat = Frame {
                id: 0,
                body: Body::Heartbeat(Heartbeat::default()),
            };
            harness.connection.send(heartbeat).await.unwrap();
        } else {
            harness.connection.get_mut().write_all(bytes).await.unwrap();
        }
        let (success, stderr) = harness.exit();
        assert!(!success, "{expected}: the worker exited cleanly");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}

/// A worker keeps a few directories open per user it has served; however
/// many users it serves, it must stay within its open-file limit.
#[tokio::test]
async fn a_worker_serves_more_users_than_its_open_file_limit_allows_at_once() {
    let mut harness = start_worker_with(true, |_| Some(64)).await;
    harness.handshake().await;
    let user = |n: u32| UserCtx {
        id: UserId(uuid::Uuid::from_u128(n as u128 + 1).into_bytes()),
        name: format!("user{n}"),
        role: Role::User,
        quota_bytes: 1 << 20,
        quota_files: u64::MAX,
        uid: None,
        limits: Default::default(),
    };
    let users = 200;
    for n in 0..users {
        let made = FileOp::Mkdir {
            path: format!("made-by-{n}"),
            parents: false,
        };
        let result = harness.call(u64::from(n) + 1, user(n), made).await;
        assert!(
            matches!(result, Ok(Reply::Entry(_))),
            "user {n}: {result:?}"
        );
    }
    // Everyone's directory is still theirs, the first ones' included.
    for n in [0, 1, users / 2, users - 1] {
        let list = FileOp::List {
            path: String::new(),
            after: None,
            limit: 10,
        };
        match harness.call(1000 + u64::from(n), user(n), list).await {
            Ok(Reply::Listing { entries, .. }) => {
                let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
                assert_eq!(names, [format!("made-by-{n}")], "user {n}");
            }
            other => panic!("user {n}: {other:?}"),
        }
    }
    drop(harness.connection);
}

/// Out of descriptors altogether, a worker says so as a retryable `Busy`,
/// not as a fault, and keeps serving.
#[tokio::test]
async fn a_worker_out_of_descriptors_answers_busy_and_carries_on() {
    // Room for two more descriptors: opening a user takes four.
    let mut harness = start_worker_with(true, |pid| Some(limit_leaving(pid, 2))).await;
    harness.handshake().await;
    let user = UserCtx {
        id: UserId([5; 16]),
        name: "five".into(),
        role: Role::User,
        quota_bytes: 1 << 20,
        quota_files: u64::MAX,
        uid: None,
        limits: Default::default(),
    };
    for id in 1..=2 {
        let mkdir = FileOp::Mkdir {
            path: "d".into(),
            parents: false,
        };
        let result = harness.call(id, user.clone(), mkdir).await;
        match result {
            Err(OpError::Busy(why)) => assert!(why.contains("out of open files"), "{why}"),
            other => panic!("expected Busy, got {other:?}"),
        }
    }
    drop(harness.connection);
}

/// The open-file limit that leaves the process `pid` exactly `free` more
/// descriptors (the lowest free numbers below the limit).
fn limit_leaving(pid: u32, free: u64) -> u64 {
    let open: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the worker's descriptors")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (1..)
        .find(|&limit| limit - open.iter().filter(|&&fd| fd < limit).count() as u64 == free)
        .expect("a limit")
}

fn task_user() -> UserCtx {
    UserCtx {
        id: UserId([42; 16]),
        name: "tasker".into(),
        role: Role::User,
        quota_bytes: u64::MAX,
        quota_files: u64::MAX,
        uid: None,
        limits: Default::default(),
    }
}

impl Harness {
    async fn task_op(&mut self, id: u64, user: UserCtx, op: TaskOp) -> Result<Reply, OpError> {
        self.request(id, user, Op::Tasks(op)).await
    }

    async fn task_end(&mut self) -> (TaskId, TaskEnd) {
        loop {
            match self.next().await.body {
                Body::Event(Event::TaskEnded { task, end, .. }) => return (task, end),
                Body::Heartbeat(_) | Body::Cancel => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// The task's output info and bytes from `from`, as a TaskOutput stream sends them.
    async fn task_output(
        &mut self,
        id: u64,
        user: UserCtx,
        task: TaskId,
        from: u64,
    ) -> (TaskOutputInfo, Vec<u8>) {
        let open = Body::Open(Open {
            user,
            kind: StreamKind::TaskOutput {
                task,
                from,
                to: None,
                follow: false,
            },
        });
        self.connection
            .send(Frame { id, body: open })
            .await
            .unwrap();
        let mut info = None;
        let mut bytes = Vec::new();
        loop {
            let frame = self.next().await;
            match frame.body {
                Body::Data(data) if frame.id == id => match info {
                    None => info = Some(codec::decode_message::<TaskOutputInfo>(&data).unwrap()),
                    Some(_) => bytes.extend_from_slice(&data),
                },
                Body::Close(Ok(())) if frame.id == id => return (info.unwrap(), bytes),
                Body::Close(Err(err)) if frame.id == id => panic!("stream failed: {err}"),
                // An earlier stream's receiving end going away.
                Body::Heartbeat(_) | Body::Cancel => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn start(task: TaskId, argv: &[&str]) -> TaskOp {
    TaskOp::Start(TaskStart {
        task,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        cwd: String::new(),
        env: vec![("GREETING".into(), "hi".into())],
        timeout_ms: 0,
        stdin: b"from stdin\n".to_vec(),
        output_limit: 1 << 20,
    })
}

#[tokio::test]
async fn a_worker_runs_a_task_reports_its_end_and_serves_its_output() {
    let mut harness = start_worker_with(true, |_| None).await;
    harness.handshake().await;
    let task = TaskId([1; 16]);
    let script = "echo $GREETING; cat; echo oops >&2; exit 3";
    let started = harness
        .task_op(1, task_user(), start(task, &["/bin/sh", "-c", script]))
        .await
        .expect("the task starts");
    assert!(
        matches!(started, Reply::TaskStarted { pid, .. } if pid > 0),
        "{started:?}"
    );
    let (ended, end) = harness.task_end().await;
    assert_eq!(ended, task);
    assert_eq!(
        (end.state, end.exit_code),
        (TaskState::Exited, Some(3)),
        "{end:?}"
    );
    let (info, bytes) = harness.task_output(2, task_user(), task, 0).await;
    assert_eq!(String::from_utf8_lossy(&bytes), "hi\nfrom stdin\noops\n");
    assert_eq!((info.dropped, info.written, info.running), (0, 19, false));
    assert_eq!(end.output_bytes, 19);
    let (_, tail) = harness.task_output(3, task_user(), task, 3).await;
    assert_eq!(tail, b"from stdin\noops\n");

    // A missing command is refused as invalid, with the reason.
    let missing = harness
        .task_op(
            4,
            task_user(),
            start(TaskId([2; 16]), &["no-such-command-here"]),
        )
        .await;
    assert!(
        matches!(&missing, Err(OpError::Invalid(why)) if why.contains("no-such-command-here")),
        "{missing:?}"
    );

    // Cancel: the task and what it started in its own session go.
    let long = TaskId([3; 16]);
    harness
        .task_op(
            5,
            task_user(),
            start(long, &["/bin/sh", "-c", "setsid sleep 1000 & sleep 1000"]),
        )
        .await
        .expect("the task starts");
    harness
        .task_op(
            6,
            task_user(),
            TaskOp::Cancel {
                task: long,
                grace_ms: 100,
            },
        )
        .await
        .expect("cancel");
    let (_, end) = harness.task_end().await;
    assert_eq!(end.state, TaskState::Killed, "{end:?}");

    // Delete removes the output.
    harness
        .task_op(7, task_user(), TaskOp::Delete { task })
        .await
        .expect("delete");
    harness.connection.get_mut().shutdown().await.unwrap();
    let (ok, stderr) = harness.exit();
    assert!(ok, "{stderr}");
}

impl Harness {
    async fn terminal_op(
        &mut self,
        id: u64,
        user: UserCtx,
        op: TerminalOp,
    ) -> Result<Reply, OpError> {
        self.request(id, user, Op::Terminals(op)).await
    }

    /// Sends `op` as request `id` and waits for its outcome; stream frames
    /// meanwhile are kept for `read_terminal`, heartbeats skipped.
    async fn request(&mut self, id: u64, user: UserCtx, op: Op) -> Result<Reply, OpError> {
        let body = Body::Request(Request { user, op });
        self.connection.send(Frame { id, body }).await.unwrap();
        loop {
            match self.next().await {
                Frame {
                    id: got,
                    body: Body::Response(response),
                } if got == id => return response.result,
                Frame {
                    body: Body::Heartbeat(_) | Body::Cancel | Body::Credit(_),
                    ..
                } => {}
                // An attached terminal's output, for `read_terminal`.
                frame @ Frame {
                    body: Body::Data(_) | Body::Close(_),
                    ..
                } => self.pending.push_back(frame),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn attach(&mut self, stream: u64, user: UserCtx, terminal: TerminalId) {
        let open = Body::Open(Open {
            user,
            kind: StreamKind::TerminalAttach { id: terminal },
        });
        self.connection
            .send(Frame {
                id: stream,
                body: open,
            })
            .await
            .unwrap();
    }

    async fn type_in(&mut self, stream: u64, text: &str) {
        let body = Body::Data(text.as_bytes().to_vec());
        self.connection
            .send(Frame { id: stream, body })
            .await
            .unwrap();
    }

    /// Reads the stream's events until the output shows `needle` (or the
    /// stream closes); the output seen, the exit if any, and how it closed.
    async fn read_terminal(
        &mut self,
        stream: u64,
        needle: &str,
    ) -> (String, Option<TerminalEvent>, Option<Result<(), OpError>>) {
        let mut output = Vec::new();
        let mut exit = None;
        loop {
            let frame = match self.pending.iter().position(|frame| frame.id == stream) {
                Some(at) => self.pending.remove(at).expect("a pending frame"),
                None => self.next().await,
            };
            match frame.body {
                Body::Data(data) if frame.id == stream => {
                    match codec::decode_message::<TerminalEvent>(&data).unwrap() {
                        TerminalEvent::Output(bytes) => output.extend_from_slice(&bytes),
                        end @ TerminalEvent::Exited { .. } => exit = Some(end),
                    }
                    if !needle.is_empty() && String::from_utf8_lossy(&output).contains(needle) {
                        return (String::from_utf8_lossy(&output).into_owned(), exit, None);
                    }
                }
                Body::Close(closed) if frame.id == stream => {
                    return (
                        String::from_utf8_lossy(&output).into_owned(),
                        exit,
                        Some(closed),
                    )
                }
                Body::Heartbeat(_) | Body::Cancel | Body::Credit(_) => {}
                // Another terminal's stream: later.
                Body::Data(_) | Body::Close(_) => self.pending.push_back(frame),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn open_terminal(id: TerminalId, idle_timeout_ms: u64) -> TerminalOp {
    TerminalOp::Open(TerminalOpen {
        id,
        argv: vec!["/bin/sh".into()],
        cwd: String::new(),
        env: vec![("PS1".into(), "$ ".into())],
        cols: 80,
        rows: 24,
        scrollback: 64 * 1024,
        idle_timeout_ms,
        max_per_user: 2,
    })
}

#[tokio::test]
async fn a_worker_runs_terminals_that_outlive_their_streams() {
    let mut harness = start_worker_with(true, |_| None).await;
    harness.handshake().await;
    let user = task_user();
    let other = UserCtx {
        id: UserId([43; 16]),
        name: "other".into(),
        ..task_user()
    };
    let first = TerminalId([1; 16]);
    let opened = harness
        .terminal_op(1, user.clone(), open_terminal(first, 0))
        .await
        .expect("the terminal opens");
    assert!(
        matches!(&opened, Reply::Terminal(info) if info.pid > 0 && info.cols == 80),
        "{opened:?}"
    );

    // Typed input reaches the shell; its output comes back.
    harness.attach(10, user.clone(), first).await;
    harness.type_in(10, "echo hel''lo\n").await;
    let (seen, _, _) = harness.read_terminal(10, "hello").await;
    assert!(seen.contains("hello"), "{seen}");
    let info = harness
        .terminal_op(2, user.clone(), TerminalOp::Get { id: first })
        .await
        .expect("get");
    assert!(
        matches!(&info, Reply::Terminal(info) if info.attached == 1),
        "{info:?}"
    );

    // A resize is what the program sees.
    harness
        .terminal_op(
            3,
            user.clone(),
            TerminalOp::Resize {
                id: first,
                cols: 100,
                rows: 40,
            },
        )
        .await
        .expect("resize");
    harness.type_in(10, "stty size\n").await;
    harness.read_terminal(10, "40 100").await;

    // Detach: the terminal stays; attaching again replays the scrollback.
    harness
        .connection
        .send(Frame {
            id: 10,
            body: Body::Close(Ok(())),
        })
        .await
        .unwrap();
    let (_, _, closed) = harness.read_terminal(10, "").await;
    assert_eq!(closed, Some(Ok(())));
    harness.attach(11, user.clone(), first).await;
    let (replayed, _, _) = harness.read_terminal(11, "40 100").await;
    assert!(replayed.contains("hello"), "{replayed}");

    // Another user's view: not found, and no attaching.
    let theirs = harness
        .terminal_op(4, other.clone(), TerminalOp::Get { id: first })
        .await;
    assert!(matches!(theirs, Err(OpError::NotFound(_))), "{theirs:?}");
    harness.attach(12, other.clone(), first).await;
    let (_, _, refused) = harness.read_terminal(12, "").await;
    assert!(
        matches!(refused, Some(Err(OpError::NotFound(_)))),
        "{refused:?}"
    );

    // At most two per user.
    let second = TerminalId([2; 16]);
    harness
        .terminal_op(5, user.clone(), open_terminal(second, 0))
        .await
        .expect("a second terminal");
    let third = harness
        .terminal_op(6, user.clone(), open_terminal(TerminalId([3; 16]), 0))
        .await;
    assert_eq!(third, Err(OpError::TooManyTerminals { limit: 2 }));

    // The program's exit ends the terminal, telling the exit code.
    harness.type_in(11, "exit 7\n").await;
    let (_, exit, closed) = harness.read_terminal(11, "").await;
    assert_eq!(
        exit,
        Some(TerminalEvent::Exited {
            code: Some(7),
            signal: None
        })
    );
    assert_eq!(closed, Some(Ok(())));

    // A hang-up ends the other; an idle one is hung up by itself.
    harness
        .terminal_op(
            7,
            user.clone(),
            TerminalOp::HangUp {
                id: second,
                grace_ms: 500,
            },
        )
        .await
        .expect("hang up");
    let idle = TerminalId([4; 16]);
    harness
        .terminal_op(8, user.clone(), open_terminal(idle, 300))
        .await
        .expect("an idle terminal");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut call = 100;
    loop {
        call += 1;
        let listed = harness
            .terminal_op(call, user.clone(), TerminalOp::List)
            .await
            .expect("list");
        match listed {
            Reply::Terminals(open) if open.is_empty() => break,
            other => assert!(Instant::now() < deadline, "still open: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    harness.connection.get_mut().shutdown().await.unwrap();
    let (ok, stderr) = harness.exit();
    assert!(ok, "{stderr}");
}
