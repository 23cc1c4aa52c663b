//! Message types. Every frame on a connection is a [`Frame`]: an id and a body.
//!
//! Requests and responses share the id the master chose for the request, so
//! one connection carries thousands of concurrent requests. A stream uses the
//! id of the `Open` frame that started it for all of its frames.

use bincode::{Decode, Encode};
use std::fmt;

/// Bumped on every incompatible change to any type in this module.
pub const PROTOCOL_VERSION: u32 = 10;

/// Bytes a stream's receiver lets its sender have in flight before the sender
/// must wait for a [`Body::Credit`]. Both ends start with this much credit.
pub const STREAM_WINDOW: u32 = 1024 * 1024;

/// The largest payload of one [`Body::Data`] frame; well under the frame bound
/// so that a data frame plus its envelope always fits.
pub const MAX_DATA_CHUNK: usize = 256 * 1024;

/// A regular file of at most this many bytes comes back whole in the reply to
/// [`FileOp::Read`]; a larger one is read through a [`StreamKind::ReadFile`].
pub const INLINE_READ_LIMIT: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Frame {
    pub id: u64,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Body {
    /// First frame in each direction. Keep this variant first and its fields
    /// unchanged forever so any two versions can at least refuse each other.
    Hello(Hello),
    /// The peer's `Hello` was not acceptable; the connection closes after this.
    Refuse(String),
    /// Master -> worker: run `op` on behalf of `user`.
    Request(Request),
    /// Worker -> master: the outcome of the request with the same id.
    Response(Response),
    /// Master -> worker: the caller gave up on this request or stream.
    Cancel,
    /// Worker -> master, periodically: proof of life and load figures.
    Heartbeat(Heartbeat),
    /// Master -> worker: open a byte stream with this frame's id.
    Open(Open),
    /// Stream payload, at most [`MAX_DATA_CHUNK`] bytes, within the sender's credit.
    Data(Vec<u8>),
    /// The sender will send no more data on this stream; `Err` aborts it.
    Close(Result<(), OpError>),
    /// The receiver consumed this many bytes: the sender may send that many more.
    Credit(u32),
    /// Worker -> master, unsolicited (frame id 0): something happened to a
    /// user's live state that the master records (a task ended).
    Event(Event),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum PeerRole {
    Master,
    Worker,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Hello {
    pub version: u32,
    pub role: PeerRole,
    pub slot: u32,
    pub pid: u32,
}

/// A user's id: a UUID, carried as its 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
pub struct UserId(pub [u8; 16]);

impl UserId {
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        uuid::Uuid::from_bytes(self.0).hyphenated().fmt(f)
    }
}

impl std::str::FromStr for UserId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(|u| UserId(u.into_bytes()))
    }
}

impl From<uuid::Uuid> for UserId {
    fn from(u: uuid::Uuid) -> Self {
        UserId(u.into_bytes())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum Role {
    User,
    Admin,
}

/// Who a request is for, as authenticated by the master. Workers never see
/// passwords or session tokens: this is all they learn about a user.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct UserCtx {
    pub id: UserId,
    pub name: String,
    pub role: Role,
    /// The user's storage quota in bytes (of disk space charged: allocated
    /// blocks, at least [`MIN_ENTRY_CHARGE`] an entry).
    pub quota_bytes: u64,
    /// The most entries (files, directories, links...) the user may have.
    pub quota_files: u64,
    /// The unprivileged uid (and gid: the same number) the user's processes
    /// run as and their workspace belongs to; `None` when warren does not
    /// run as root (then nothing changes owner).
    pub uid: Option<u32>,
    /// What the user's processes may use: the server's defaults with the
    /// admin's overrides for this user already applied.
    pub limits: ProcessLimits,
}

impl UserCtx {
    /// A user known by id alone (deleted, or only to be routed to their
    /// worker: the worker's slot follows from the id).
    pub fn only_id(id: UserId) -> UserCtx {
        UserCtx {
            id,
            name: String::new(),
            role: Role::User,
            quota_bytes: 0,
            quota_files: 0,
            uid: None,
            limits: ProcessLimits::default(),
        }
    }
}

/// Limits on a user's processes. `0` means "no limit" for every field but
/// `cpu_weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct ProcessLimits {
    /// `RLIMIT_AS` of each process, bytes.
    pub address_space: u64,
    /// `RLIMIT_CPU` of each process, seconds.
    pub cpu_seconds: u64,
    /// `RLIMIT_NPROC`: processes (and threads) of the user's uid at once.
    pub processes: u64,
    /// `RLIMIT_FSIZE`: the largest file a process may write, bytes.
    pub file_size: u64,
    /// `RLIMIT_NOFILE`: open descriptors per process.
    pub open_files: u64,
    /// The user's cgroup `memory.max`, bytes, all processes together.
    pub memory: u64,
    /// The user's cgroup `pids.max`, all processes together.
    pub pids: u64,
    /// The user's cgroup `cpu.weight` (1-10000; 100 is the kernel's default).
    pub cpu_weight: u32,
    /// Tasks running at once.
    pub tasks: u32,
}

impl Default for ProcessLimits {
    fn default() -> Self {
        const GIB: u64 = 1024 * 1024 * 1024;
        ProcessLimits {
            address_space: 16 * GIB,
            cpu_seconds: 0,
            processes: 512,
            file_size: 4 * GIB,
            open_files: 4096,
            memory: 2 * GIB,
            pids: 512,
            cpu_weight: 100,
            tasks: 8,
        }
    }
}

/// The least an entry of a workspace is charged against the quota, whatever
/// it allocates (an empty file or directory still costs an inode and a
/// directory entry).
pub const MIN_ENTRY_CHARGE: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Request {
    pub user: UserCtx,
    pub op: Op,
}

/// Operations a worker performs for a user.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Op {
    /// Answers which worker served the request; the cheapest user-scoped op.
    Ping,
    /// An operation on the user's workspace files.
    Files(FileOp),
    /// Starting, stopping and forgetting the user's tasks.
    Tasks(TaskOp),
    /// The user's terminals (a program on a PTY, attached to by streams).
    Terminals(TerminalOp),
    /// The user's web apps (a program serving HTTP, proxied by the master).
    Apps(AppOp),
    /// Test builds only: answer after sleeping this long.
    #[cfg(debug_assertions)]
    DebugSleep { millis: u64 },
    /// Test builds only: write bytes that are not a valid frame to the master.
    #[cfg(debug_assertions)]
    DebugSendGarbage { oversized: bool },
}

/// Paths are relative to the user's workspace, `/`-separated, already
/// checked by the master ([`crate::path::check`]); the worker checks again and
/// resolves them beneath the workspace whatever they contain.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum FileOp {
    /// Describes the entry at `path` ([`Reply::File`]); a regular file of at
    /// most [`INLINE_READ_LIMIT`] bytes comes with its content, read from the
    /// very file described. With `hand_over`, a larger regular file comes
    /// as [`Reply::Opened`]: the worker opened it (read-only) and the
    /// response frame carries that open descriptor (see [`crate::io`]).
    Read {
        path: String,
        hand_over: bool,
    },
    /// Entries sorted by name, those after `after`, at most `limit`.
    List {
        path: String,
        after: Option<String>,
        limit: u32,
    },
    Mkdir {
        path: String,
        parents: bool,
    },
    Delete {
        path: String,
        recursive: bool,
    },
    /// Renames within the workspace; never replaces an existing entry.
    Move {
        from: String,
        to: String,
    },
    /// Copies a file or a directory tree; never replaces an existing entry.
    Copy {
        from: String,
        to: String,
    },
    /// Bytes and files used (never creates the user's directories).
    Usage,
    /// Copies the shared template `name` to `to`, within the quota.
    CloneTemplate {
        name: String,
        to: String,
    },
    /// The user's settings object (JSON bytes; `{}` when never set).
    GetSettings,
    /// Replaces the user's settings object (JSON bytes, checked by the master).
    PutSettings {
        json: Vec<u8>,
    },
    /// Removes everything of a deleted user (`<users>/<id>/`); done when
    /// there is nothing left, including when there was nothing.
    Purge,
    /// Forgets everything this worker keeps of the user (open directories,
    /// usage, the sweep of `tmp/`, staged writes) without removing or
    /// refusing anything: their directory is about to be replaced or
    /// removed by a move to another host (`warren user move`), and a later
    /// move back must find them served again (unlike [`FileOp::Purge`]).
    Evict,
    /// Puts in place, in order, the writes staged by
    /// [`StreamKind::WriteFile`] streams with `staged` ([`Reply::Written`]).
    CommitStaged {
        stages: Vec<u64>,
    },
    /// Abandons staged writes (their temp files and reservations go).
    DropStaged {
        stages: Vec<u64>,
    },
    /// Starts an upload the master writes itself: the worker checks the
    /// target (parents, precondition, quota for `expected` bytes if the
    /// length is known), creates a temp file in the user's `tmp/` and
    /// answers [`Reply::UploadOpened`], whose frame carries a write-only
    /// descriptor of that temp file. The upload then waits for
    /// [`FileOp::CommitUpload`] or [`FileOp::DropUpload`]; one whose temp
    /// file is left unwritten for a few minutes is dropped.
    BeginUpload {
        path: String,
        precondition: Precondition,
        parents: bool,
        /// Put in place by [`FileOp::CommitStaged`] later, not at once.
        staged: bool,
        /// The body's length, when the client said it.
        expected: Option<u64>,
    },
    /// The master is about to write past what the upload has reserved:
    /// reserve room (against the quota) for `total` bytes in all
    /// ([`Reply::Reserved`]), or refuse.
    ReserveUpload {
        upload: u64,
        total: u64,
    },
    /// The master wrote `len` bytes and stopped: fsync, check the size,
    /// the precondition and the quota, and rename into place
    /// ([`Reply::Written`] with one outcome), or keep it staged (the
    /// outcome's `stage`).
    CommitUpload {
        upload: u64,
        len: u64,
    },
    /// Abandons an upload (its temp file and reservation go); unknown ids
    /// are ignored.
    DropUpload {
        upload: u64,
    },
}

/// An id the master chose as a UUID, carried as its 16 bytes and shown
/// hyphenated.
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
        pub struct $name(pub [u8; 16]);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                uuid::Uuid::from_bytes(self.0).hyphenated().fmt(f)
            }
        }

        impl From<uuid::Uuid> for $name {
            fn from(u: uuid::Uuid) -> Self {
                $name(u.into_bytes())
            }
        }
    };
}

uuid_id!(
    /// A task's id: a UUID chosen by the master.
    TaskId
);

/// Operations on a user's tasks (commands run in their workspace, in
/// their sandbox). The master keeps the records; the worker runs them and
/// reports each end as an [`Event::TaskEnded`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum TaskOp {
    /// Starts a task ([`Reply::TaskStarted`] once the command was exec'd;
    /// `TooManyTasks`, `SandboxUnavailable`, or `Invalid` for a command that
    /// cannot be run, such as one not found).
    Start(TaskStart),
    /// SIGTERM to every process of the task, SIGKILL after `grace_ms`
    /// ([`Reply::Done`] at once; the end comes as an event). `NotFound`
    /// when the task is not running on this worker.
    Cancel { task: TaskId, grace_ms: u64 },
    /// Removes a finished task's output ([`Reply::Done`]; `Conflict` while
    /// it runs; done when there was nothing).
    Delete { task: TaskId },
}

uuid_id!(
    /// A terminal's id: a UUID chosen by the master.
    TerminalId
);

/// The largest side of a terminal, in cells (columns or rows).
pub const MAX_TERMINAL_SIDE: u16 = 1000;

/// Operations on a user's terminals. A terminal lives in its worker only
/// (no record): it is gone with the worker, its program, or a hang-up.
/// Another user's terminal is `NotFound`, like a missing one.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum TerminalOp {
    /// Starts the program on a new PTY ([`Reply::Terminal`]; `TooManyTerminals`,
    /// `SandboxUnavailable`, or `Invalid` for a program that cannot run).
    Open(TerminalOpen),
    /// The user's terminals ([`Reply::Terminals`]).
    List,
    /// One terminal ([`Reply::Terminal`]).
    Get { id: TerminalId },
    /// New size (the program gets `SIGWINCH`); [`Reply::Done`].
    Resize {
        id: TerminalId,
        cols: u16,
        rows: u16,
    },
    /// SIGHUP to every process of the terminal, SIGKILL after `grace_ms`;
    /// [`Reply::Done`] at once, attached streams end with the exit.
    HangUp { id: TerminalId, grace_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TerminalOpen {
    pub id: TerminalId,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Working directory, relative to the workspace (`""`: its root).
    pub cwd: String,
    /// Added to the sandbox's clean environment.
    pub env: Vec<(String, String)>,
    pub cols: u16,
    pub rows: u16,
    /// Output kept for a client that attaches later, in bytes.
    pub scrollback: u32,
    /// Hung up after this long with no client attached and no output (0:
    /// never).
    pub idle_timeout_ms: u64,
    /// The most terminals one user may have open on the server.
    pub max_per_user: u32,
}

/// A terminal as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TerminalInfo {
    pub id: TerminalId,
    pub command: Vec<String>,
    /// The program's pid (in the worker's pid namespace).
    pub pid: u32,
    pub cols: u16,
    pub rows: u16,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// The last output or input, milliseconds since the Unix epoch.
    pub last_activity_ms: i64,
    /// Streams attached now.
    pub attached: u32,
    /// The program ended; the terminal is going (its last output being
    /// read, its streams told).
    pub ended: bool,
}

/// What a [`StreamKind::TerminalAttach`] stream carries from the worker:
/// each data frame is one of these (bincode). The master sends the raw
/// bytes typed.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum TerminalEvent {
    /// What the program wrote: first the scrollback, then live output.
    Output(Vec<u8>),
    /// The program ended; the stream closes after this. `code` for an
    /// exit, `signal` for a death by signal.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// Operations on a user's web apps. An app lives in its worker only (no
/// record): it is gone with the worker. The master sends the app's
/// definition with each start, so workers need no configuration of their own.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum AppOp {
    /// Starts the app unless it runs or is starting (a failed one stays
    /// failed unless `retry`), marks it used, and answers [`Reply::App`]
    /// once it is running or after `wait_ms`, whichever comes first.
    /// With `may_start` false, an app that is not running is
    /// `TooManyApps` (the server's limit, which the master counts).
    Ensure {
        spec: Box<AppSpec>,
        wait_ms: u64,
        may_start: bool,
        retry: bool,
    },
    /// Marks the app used (proxied traffic) without a reply's cost beyond
    /// [`Reply::Done`]; `NotFound` when it is not running.
    Touch { name: String },
    /// Stops the app (SIGTERM to its processes, SIGKILL after `grace_ms`);
    /// [`Reply::Done`] at once; done when it was not running.
    Stop { name: String, grace_ms: u64 },
    /// Stops every app of the user (disabled or deleted).
    StopAll { grace_ms: u64 },
    /// The user's apps known to this worker ([`Reply::Apps`]).
    List,
    /// Every user's apps on this worker (admins; the request's user is the
    /// admin).
    ListAll,
}

/// How an app listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum AppListen {
    /// On a Unix socket the worker names (`{socket}`), in a directory only
    /// the user's uid can enter.
    Unix,
    /// On `127.0.0.1:{port}`, a port the worker picks; only the launch's
    /// secret keeps other local users out.
    Tcp,
}

/// An app's definition, as the operator wrote it, with the master's
/// choices for this user (`base_url`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct AppSpec {
    pub name: String,
    /// The program and its arguments, with placeholders (`{socket}`,
    /// `{port}`, `{base_url}`, `{workspace}`, `{user}`, `{secret}`) the
    /// worker fills in.
    pub argv: Vec<String>,
    /// Added to the sandbox's environment, placeholders filled in.
    pub env: Vec<(String, String)>,
    pub listen: AppListen,
    /// `/user/{name}/{app}/`.
    pub base_url: String,
    /// Polled (`GET`) until it answers 2xx: the app is up.
    pub ready_path: String,
    /// How the proxy (and the readiness probe) authenticates to the app.
    pub auth: AppAuth,
    pub start_timeout_ms: u64,
    /// Stopped after this long without traffic (0: never).
    pub idle_timeout_ms: u64,
    /// The most apps of this kind one user may run (0: no limit).
    pub max_per_user: u32,
    /// Extra paths the app may read and execute (where it is installed).
    pub read_execute: Vec<String>,
    /// Extra paths the app may read.
    pub read_only: Vec<String>,
}

/// How the proxy proves itself to an app: a header carrying the launch's
/// secret. Values may hold `{secret}` and `{user}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum AppAuth {
    None,
    /// `Authorization: Basic base64(user:password)`.
    Basic {
        user: String,
        password: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        token: String,
    },
    /// Any header.
    Header {
        name: String,
        value: String,
    },
}

impl AppAuth {
    /// The header to send, placeholders filled in.
    pub fn header(&self, user: &str, secret: &str) -> Option<(String, String)> {
        use base64::Engine;
        let fill = |s: &str| s.replace("{secret}", secret).replace("{user}", user);
        match self {
            AppAuth::None => None,
            AppAuth::Basic {
                user: name,
                password,
            } => {
                let pair = format!("{}:{}", fill(name), fill(password));
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                Some(("authorization".into(), format!("Basic {encoded}")))
            }
            AppAuth::Bearer { token } => {
                Some(("authorization".into(), format!("Bearer {}", fill(token))))
            }
            AppAuth::Header { name, value } => Some((name.to_ascii_lowercase(), fill(value))),
        }
    }
}

/// Where a running app answers.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum AppEndpoint {
    /// A Unix socket's path.
    Unix(Vec<u8>),
    /// A port on 127.0.0.1.
    Tcp(u16),
}

/// An app's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum AppState {
    Stopped,
    /// Started (or waiting to be restarted after a crash), not answering
    /// yet.
    Starting,
    Running,
    /// Did not come up within its start timeout, crashed too often, or
    /// could not start; the output's last lines say why.
    Failed,
}

impl AppState {
    pub fn as_str(self) -> &'static str {
        match self {
            AppState::Stopped => "stopped",
            AppState::Starting => "starting",
            AppState::Running => "running",
            AppState::Failed => "failed",
        }
    }
}

/// An app as the API shows it (and, for the master's proxy, where it is).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct AppInfo {
    pub user: UserId,
    pub user_name: String,
    pub name: String,
    pub state: AppState,
    /// When it entered this state, milliseconds since the Unix epoch.
    pub since_ms: i64,
    /// The last proxied traffic (or start), milliseconds since the epoch.
    pub last_activity_ms: i64,
    /// Resident memory of its processes (its cgroup's, else the main
    /// process's), bytes; 0 when not running.
    pub memory_bytes: u64,
    /// The main process, while there is one.
    pub pid: Option<u32>,
    /// Restarts after crashes since the last explicit start.
    pub restarts: u32,
    /// Why it failed or stopped, in words.
    pub message: Option<String>,
    /// The last lines of its output (kept for a failure's reader).
    pub output_tail: Vec<String>,
    /// Where it answers, and the launch's secret (only in an
    /// [`AppOp::Ensure`]'s reply, only while running).
    pub endpoint: Option<(AppEndpoint, String)>,
    /// The uid its processes run as: whoever listens on its endpoint must
    /// be it (the proxy checks, so a path or port another user took over
    /// never gets the user's requests).
    pub owner_uid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TaskStart {
    pub task: TaskId,
    /// The program and its arguments (a shell string arrives as
    /// `["/bin/sh", "-c", string]`).
    pub argv: Vec<String>,
    /// Working directory, relative to the workspace (`""`: its root).
    pub cwd: String,
    /// Added to the sandbox's clean environment.
    pub env: Vec<(String, String)>,
    /// Milliseconds until the task is stopped as `TimedOut`; 0: never.
    pub timeout_ms: u64,
    /// Bytes fed to the task's standard input, which then closes.
    pub stdin: Vec<u8>,
    /// Most bytes of output kept; beyond it the oldest are dropped.
    pub output_limit: u64,
}

/// How a task is or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum TaskState {
    Running,
    /// The command exited by itself (any exit code).
    Exited,
    /// The command could not be run at all (see `TaskEnd::error`).
    Failed,
    /// Ended by a signal: a cancel, or the kernel (a limit, the OOM killer).
    Killed,
    /// Stopped because it ran past its timeout.
    TimedOut,
    /// Its worker died while it ran; what became of it is unknown.
    Lost,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Exited => "exited",
            TaskState::Failed => "failed",
            TaskState::Killed => "killed",
            TaskState::TimedOut => "timed_out",
            TaskState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        [
            TaskState::Running,
            TaskState::Exited,
            TaskState::Failed,
            TaskState::Killed,
            TaskState::TimedOut,
            TaskState::Lost,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TaskEnd {
    pub state: TaskState,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Milliseconds since the Unix epoch.
    pub ended_ms: i64,
    /// Bytes the task wrote to stdout and stderr in all (kept or dropped).
    pub output_bytes: u64,
    /// Why it failed or was killed, in words, when warren knows.
    pub error: Option<String>,
}

/// Worker -> master events ([`Body::Event`]).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Event {
    TaskEnded {
        user: UserId,
        task: TaskId,
        end: TaskEnd,
    },
    /// A user's app changed state (the master counts running apps for the
    /// server's limits and metrics).
    AppChanged {
        user: UserId,
        name: String,
        state: AppState,
        /// For a start that ended (running or failed): how long it took.
        start_micros: Option<u64>,
    },
}

/// What a [`StreamKind::TaskOutput`] stream sends first (bincode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct TaskOutputInfo {
    /// Output bytes dropped from the start to keep within the limit.
    pub dropped: u64,
    /// Output bytes written so far (offsets run from 0 to this).
    pub written: u64,
    /// Whether the task is still running (more output may come).
    pub running: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum EntryKind {
    File,
    Dir,
    /// A symbolic link (made by a user's own programs); never followed out
    /// of the workspace.
    Symlink,
    /// A named pipe (made by a user's own programs); never read.
    Fifo,
    /// A Unix socket (made by a user's own programs); never read.
    Socket,
    /// A block or character device; never read.
    Device,
}

/// One file or directory as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Entry {
    /// The name; one that is not UTF-8 (made on disk by a user's own
    /// programs) is shown lossily (U+FFFD for each bad sequence) and
    /// `name_valid` is false.
    pub name: String,
    /// False when `name` is a lossy rendering that no path can name: such
    /// an entry is listed (it counts against the quota) and removed by
    /// deleting its directory recursively.
    pub name_valid: bool,
    pub kind: EntryKind,
    pub size: u64,
    /// Milliseconds since the Unix epoch.
    pub modified_ms: i64,
    /// A strong validator: changes whenever the content may have changed.
    pub etag: String,
}

/// What a stream of kind [`StreamKind::WriteFile`] sends back before it
/// closes: the file as written.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct WriteOutcome {
    pub entry: Entry,
    /// Whether the file did not exist before.
    pub created: bool,
    /// For a staged write: the stage to name in [`FileOp::CommitStaged`]
    /// (then `entry` describes the bytes received and `created` is not
    /// known yet).
    pub stage: Option<u64>,
}

/// Which bytes of an opened file to send (see [`StreamKind::ReadFile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct ReadRange {
    pub offset: u64,
    pub len: u64,
}

/// A precondition on the current state of a file about to be replaced.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Precondition {
    None,
    /// `If-Match`: the file exists and has one of these etags (`*`: exists).
    Match(Vec<String>),
    /// `If-None-Match: *`: the file does not exist.
    Absent,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Response {
    pub result: Result<Reply, OpError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Reply {
    Pong {
        slot: u32,
        pid: u32,
        user: UserId,
    },
    Done,
    Entry(Entry),
    /// The answer to [`FileOp::Read`]: `content` is the whole file when it is
    /// a regular file of at most [`INLINE_READ_LIMIT`] bytes, else `None`.
    File {
        entry: Entry,
        content: Option<Vec<u8>>,
    },
    Listing {
        entries: Vec<Entry>,
        more: bool,
    },
    /// `bytes`: disk space charged against the quota; `files`: regular
    /// files; `entries`: every entry (what the entry quota counts).
    Usage {
        bytes: u64,
        files: u64,
        entries: u64,
    },
    Settings(Vec<u8>),
    /// The answer to [`FileOp::CommitStaged`]: each file as put in place.
    Written(Vec<WriteOutcome>),
    /// The answer to [`TaskOp::Start`]: the command runs.
    TaskStarted {
        /// The worker process running the task (the master records it, so a
        /// worker's death marks exactly its tasks lost).
        worker_pid: u32,
        pid: u32,
        /// Milliseconds since the Unix epoch.
        started_ms: i64,
        /// From the request to the command's `execve`, microseconds.
        spawn_micros: u64,
    },
    Terminal(TerminalInfo),
    Terminals(Vec<TerminalInfo>),
    App(AppInfo),
    Apps(Vec<AppInfo>),
    /// The answer to [`FileOp::Read`] with `hand_over` for a regular file
    /// too large to come inline: the response frame carries the file's
    /// open descriptor (read-only), which `entry` describes.
    Opened {
        entry: Entry,
    },
    /// The answer to [`FileOp::BeginUpload`]: the response frame carries
    /// the temp file's descriptor (write-only, empty). `reserved`: bytes
    /// the master may write before it must ask [`FileOp::ReserveUpload`].
    /// `user`: whose it is, so that an answer nobody waits for any more
    /// (or whose descriptor was lost) can be dropped.
    UploadOpened {
        upload: u64,
        reserved: u64,
        user: UserId,
    },
    /// The answer to [`FileOp::ReserveUpload`]: bytes reserved in all.
    Reserved {
        reserved: u64,
    },
}

impl Reply {
    /// Whether a response frame with this reply carries one descriptor
    /// (`SCM_RIGHTS`, see [`crate::io`]): exactly these replies do, and
    /// only from a worker.
    pub fn hands_over_descriptor(&self) -> bool {
        matches!(self, Reply::Opened { .. } | Reply::UploadOpened { .. })
    }
}

/// What kind of byte stream an [`Open`] asks for.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum StreamKind {
    /// Sends back every byte it receives, then closes: the reference stream
    /// that exercises flow control end to end.
    Echo,
    /// Opens the entry at `path` and sends its [`Entry`] (see
    /// [`crate::codec::encode_message`]) as the first data. For a regular
    /// file the master then sends a [`ReadRange`] and the worker sends those
    /// bytes of the very file it opened (a replacement meanwhile does not
    /// matter), then closes; a master that closes its side instead ends it.
    ReadFile { path: String },
    /// Receives the new content of a file; when the master closes its side,
    /// the file replaces the old one at once (temp file, fsync, rename) and
    /// the worker sends a bincode [`WriteOutcome`] and closes. An aborted
    /// stream leaves nothing behind.
    /// With `staged`, the file is not put in place when the master closes:
    /// the write (its temp file and quota reservation) is kept under a
    /// stage number until [`FileOp::CommitStaged`] or
    /// [`FileOp::DropStaged`] (or a few minutes pass), so a request writing
    /// several files can check them all before any appears.
    WriteFile {
        path: String,
        precondition: Precondition,
        parents: bool,
        staged: bool,
    },
    /// A task's output (stdout and stderr as they interleaved). The worker
    /// sends a bincode [`TaskOutputInfo`] first, then the bytes at offsets
    /// `from..to` that are still kept (from `max(from, dropped)`), then
    /// closes; with `follow`, it keeps sending new output until the task
    /// ends (or `to`). `NotFound` when the task has no output here.
    TaskOutput {
        task: TaskId,
        from: u64,
        to: Option<u64>,
        follow: bool,
    },
    /// Attaches to a terminal: the worker sends [`TerminalEvent`]s (the
    /// scrollback, then live output, then the exit if the program ends);
    /// the master's data is typed input. A client too slow to keep up is
    /// dropped (`Busy`) rather than let output pile up. `NotFound` for no
    /// such terminal of this user.
    TerminalAttach { id: TerminalId },
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Open {
    pub user: UserCtx,
    pub kind: StreamKind,
}

/// Load figures a worker reports with every heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
pub struct Heartbeat {
    pub inflight_requests: u32,
    pub open_streams: u32,
    pub users_seen: u32,
    pub tasks_running: u32,
    pub terminals_open: u32,
    pub apps_running: u32,
}

/// A typed failure of an operation, as the worker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, thiserror::Error)]
pub enum OpError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("operation not supported by this worker: {0}")]
    Unsupported(String),
    #[error("request cancelled")]
    Cancelled,
    #[error("stream protocol violated: {0}")]
    StreamViolation(String),
    #[error("{0}")]
    BadPath(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PreconditionFailed(String),
    /// The worker serving the stream went away (the master says so; a
    /// worker never sends it).
    #[error("{0}")]
    WorkerGone(String),
    #[error("storage quota exceeded: {used} of {limit} bytes used")]
    QuotaExceeded { used: u64, limit: u64 },
    #[error("file quota exceeded: {used} of {limit} entries used")]
    EntryQuotaExceeded { used: u64, limit: u64 },
    /// A read of something that is not a regular file (a FIFO, socket,
    /// device).
    #[error("{0}")]
    NotARegularFile(String),
    #[error("internal worker error: {0}")]
    Internal(String),
    /// The server's disk (or its file-system quota) is full: nothing was
    /// written, and a file being replaced is intact.
    #[error("{0}")]
    DiskFull(String),
    /// The worker ran out of something that frees up again (open files,
    /// memory): the same request may succeed shortly.
    #[error("{0}")]
    Busy(String),
    /// The user already runs as many tasks as their limit allows.
    #[error("too many tasks running: the limit is {limit}")]
    TooManyTasks { limit: u32 },
    /// The user already has as many terminals open as allowed.
    #[error("too many terminals open: the limit is {limit}")]
    TooManyTerminals { limit: u32 },
    /// The user (`per_user`) or the server already runs as many of this
    /// app as allowed.
    #[error("too many {app} apps running{}: the limit is {limit}", if *.per_user { " for this user" } else { " on this server" })]
    TooManyApps {
        app: String,
        limit: u32,
        per_user: bool,
    },
    /// The sandbox this server requires is not available, so no user
    /// process may start (the reason says what is missing).
    #[error("{0}")]
    SandboxUnavailable(String),
}
