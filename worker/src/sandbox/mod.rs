//! The sandbox every process warren starts for a user runs in.
//!
//! - [`policy`]: what to use, from what the system gives and `--sandbox`
//!   (a pure function).
//! - [`cgroup`]: per-user cgroups (limits) and per-launch groups (kill).
//! - [`landlock`]: the file-system (and, with `--sandbox-network none`,
//!   TCP) ruleset.
//! - [`stage`]: `warren sandbox-exec`, the single-threaded process that
//!   confines itself and execs the command.
//! - [`pty`]: a pseudo-terminal whose terminal end a launch may run on.
//!
//! A worker calls [`Sandbox::spawn`]; it re-executes the warren binary as
//! the stage with an [`ExecSpec`], and learns through a close-on-exec
//! status pipe whether the command itself started. This module is the
//! only place in the worker with `unsafe` code (descriptor and signal
//! set-up in the stage), each block with its reason.
//!
//! Invariants: no user process starts unless [`Sandbox::report`] allows
//! it (`--sandbox required` refuses what is missing, never silently
//! weaker); a user's process never shares warren's descriptors, environment
//! or (as root) uid; its cwd is resolved beneath the workspace by the
//! kernel; every launch with cgroups is a cgroup of its own, so killing it
//! kills every descendant whatever sessions they made.
#![allow(unsafe_code)]

pub mod cgroup;
pub mod landlock;
pub mod policy;
pub mod pty;
pub mod stage;

pub use cgroup::{CgroupRoot, Cgroups};
pub use policy::{Capabilities, Decision, Mode, Network};
pub use stage::stage_main;

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use warren_protocol::sandbox::{
    encode_spec, ExecSpec, LandlockSpec, StageFailure, SPEC_ENV, STAGE_ARG,
};
use warren_protocol::{OpError, UserCtx};

/// How long killing a group or a slot waits for its processes to go.
const KILL_PATIENCE: Duration = Duration::from_secs(5);

/// The operator's sandbox settings (serve flags, passed on to workers).
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// `None`: [`Mode::default_for`] the running privileges.
    pub mode: Option<Mode>,
    pub network: Network,
    /// Extra read-only paths (`--sandbox-read`).
    pub extra_read: Vec<PathBuf>,
    /// Extra environment of every user process (`--sandbox-env`).
    pub env: Vec<(String, String)>,
    pub cgroup_root: CgroupRoot,
    /// `<data-dir>`: never readable from a sandbox, whatever the lists say.
    pub data_dir: Option<PathBuf>,
    /// `<data-dir>/users`.
    pub users_dir: PathBuf,
    /// The executable run as the stage (`/proc/self/exe`: see
    /// `WorkerCommand` in the master for why not the path on disk).
    pub stage_exe: PathBuf,
    /// The worker's slot: its launches live in the slot's cgroup.
    pub slot: u32,
}

impl SandboxConfig {
    /// Defaults for a worker serving `users_dir` as `slot`.
    pub fn new(users_dir: PathBuf, slot: u32) -> SandboxConfig {
        // Absolute: it becomes HOME and Landlock rules, read elsewhere.
        let users_dir = std::path::absolute(&users_dir).unwrap_or(users_dir);
        SandboxConfig {
            mode: None,
            network: Network::Host,
            extra_read: Vec::new(),
            env: Vec::new(),
            cgroup_root: CgroupRoot::Auto,
            data_dir: users_dir.parent().map(Path::to_path_buf),
            users_dir,
            stage_exe: PathBuf::from("/proc/self/exe"),
            slot,
        }
    }
}

/// What the system gives, what `--sandbox` decided, and how: made once
/// at start ([`Sandbox::probe`]), shown in the log, `/readyz` and metrics.
#[derive(Debug, Clone)]
pub struct SandboxReport {
    pub mode: Mode,
    pub network: Network,
    pub capabilities: Capabilities,
    pub decision: Decision,
    /// Why cgroups are not used (when they are not).
    pub cgroup_problem: Option<String>,
}

impl SandboxReport {
    /// `(feature, level)` pairs for `warren_sandbox_level{feature}` and
    /// `/readyz`: 1/0 for what is used, the ABI for Landlock (0: none).
    /// No name holds "pid" (a test checks `/readyz` shows no pids).
    pub fn levels(&self) -> Vec<(&'static str, i64)> {
        let used = |b: bool| i64::from(b);
        let caps = &self.capabilities;
        let decision = &self.decision;
        vec![
            ("allowed", used(decision.allowed.is_ok())),
            (
                "landlock",
                if decision.landlock {
                    i64::from(caps.landlock_abi.unwrap_or(0))
                } else {
                    0
                },
            ),
            ("uid", used(decision.uid_switch)),
            ("cgroup", used(decision.cgroups && caps.cgroup_grouping)),
            (
                "cgroup_memory",
                used(decision.cgroups && caps.cgroup_memory.is_some()),
            ),
            (
                "cgroup_processes",
                used(decision.cgroups && caps.cgroup_pids.is_some()),
            ),
            (
                "cgroup_cpu",
                used(decision.cgroups && caps.cgroup_cpu.is_some()),
            ),
            ("rlimits", 1),
            ("netns", used(decision.netns)),
        ]
    }

    /// Logs the report: one line, then a warning per weakness.
    pub fn log(&self) {
        let levels: Vec<String> = self
            .levels()
            .iter()
            .map(|(feature, level)| format!("{feature}={level}"))
            .collect();
        tracing::info!(
            mode = self.mode.as_str(),
            network = self.network.as_str(),
            levels = %levels.join(" "),
            "sandbox"
        );
        for warning in &self.decision.warnings {
            tracing::warn!("{warning}");
        }
        if let Some(problem) = &self.cgroup_problem {
            tracing::warn!("cgroups not used: {problem}");
        }
        if let Err(refused) = &self.decision.allowed {
            tracing::warn!("users' processes will be refused: {refused}");
        }
    }
}

/// The sandbox of one process (master or worker): its settings and what
/// the system gives.
#[derive(Debug, Clone)]
pub struct Sandbox {
    config: SandboxConfig,
    report: SandboxReport,
    cgroups: Option<Cgroups>,
    /// The Landlock rules but the user's own directories.
    system_rules: LandlockSpec,
    /// The one thread that forks the stages (started on the first spawn).
    spawner: std::sync::Arc<std::sync::OnceLock<Spawner>>,
}

/// What the spawner thread is asked: fork this command, with this status
/// pipe end made inheritable for it alone.
type SpawnRequest = (
    tokio::process::Command,
    OwnedFd,
    tokio::sync::oneshot::Sender<std::io::Result<tokio::process::Child>>,
);

/// A thread of the worker's own that forks every stage, for two reasons:
/// the parent-death signal the stage sets is tied to the *thread* that
/// forked it, so that thread must live as long as the worker (this one
/// does: it ends only when the sandbox is dropped, at exit); and a fork
/// (vfork until the stage's `execve`) then never holds up the runtime
/// thread that serves the worker's requests. One thread, so the status
/// pipe's write end can be made inheritable for exactly one fork at a
/// time.
#[derive(Debug)]
struct Spawner {
    requests: std::sync::Mutex<std::sync::mpsc::Sender<SpawnRequest>>,
}

impl Spawner {
    /// Starts the thread, in the current runtime's context (tokio's
    /// children are reaped by the runtime that spawned them).
    fn start() -> Spawner {
        let (requests, incoming) = std::sync::mpsc::channel::<SpawnRequest>();
        let runtime = tokio::runtime::Handle::try_current().ok();
        let thread = std::thread::Builder::new()
            .name("warren-spawner".into())
            .spawn(move || {
                let _context = runtime.as_ref().map(|runtime| runtime.enter());
                // This thread's forks, and the stages' set-up, yield to
                // the threads serving the API (nice only: an idle thread
                // could be starved of the processor while every user's
                // task start waits on it).
                stage::lower_priority();
                for (mut command, status_write, answer) in incoming {
                    let spawned = rustix::io::ioctl_fionclex(&status_write)
                        .map_err(std::io::Error::from)
                        .and_then(|()| command.spawn());
                    drop(status_write);
                    let _ = answer.send(spawned);
                }
            });
        if let Err(err) = thread {
            tracing::error!(error = %err, "cannot start the thread that spawns users' processes");
        }
        Spawner {
            requests: std::sync::Mutex::new(requests),
        }
    }

    async fn spawn(
        &self,
        command: tokio::process::Command,
        status_write: OwnedFd,
    ) -> Result<tokio::process::Child, SpawnError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send((command, status_write, answer))
            .map_err(|_| SpawnError::Internal("the spawner thread is gone".into()))?;
        answered
            .await
            .map_err(|_| SpawnError::Internal("the spawner thread is gone".into()))?
            .map_err(|err| SpawnError::Internal(format!("stage: {err}")))
    }
}

/// What to run.
#[derive(Debug)]
pub struct Launch {
    pub argv: Vec<OsString>,
    /// Relative to the workspace (empty: the workspace); resolved beneath
    /// it, an escape is refused.
    pub cwd: String,
    /// Added last (overrides the clean environment).
    pub env: Vec<(OsString, OsString)>,
    /// The launch's group (`task-<uuid>`): its own cgroup.
    pub group: String,
    pub stdin: std::process::Stdio,
    pub stdout: std::process::Stdio,
    pub stderr: std::process::Stdio,
    /// `stdin` is a PTY's terminal end ([`pty::Pty`]): it becomes the
    /// session's controlling terminal.
    pub terminal: bool,
    /// Extra paths to read and execute, and to read only (an app's own
    /// installation); refused when they overlap the data directory.
    pub read_execute: Vec<PathBuf>,
    pub read_only: Vec<PathBuf>,
}

/// A started command.
#[derive(Debug)]
pub struct Spawned {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub group: GroupHandle,
}

/// Every process of one launch: to signal or kill them together.
#[derive(Debug, Clone)]
pub struct GroupHandle {
    /// The launch's v2 cgroup (`None`: process group only).
    cgroup: Option<PathBuf>,
    has_kill: bool,
    /// The session and process group the stage made (its pid).
    process_group: rustix::process::Pid,
}

impl GroupHandle {
    /// Sends `signal` to every process of the launch.
    pub fn signal(&self, signal: rustix::process::Signal) -> std::io::Result<()> {
        if let Some(cgroup) = &self.cgroup {
            return cgroup::signal_group(cgroup, signal);
        }
        match rustix::process::kill_process_group(self.process_group, signal) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Kills every process of the launch (grandchildren in sessions of
    /// their own included, with cgroups), waits until none is left and
    /// removes the group. Runs on the blocking pool.
    pub async fn kill(&self) -> std::io::Result<()> {
        let Some(cgroup) = self.cgroup.clone() else {
            return self.signal(rustix::process::Signal::KILL);
        };
        let has_kill = self.has_kill;
        tokio::task::spawn_blocking(move || cgroup::kill_group(&cgroup, has_kill, KILL_PATIENCE))
            .await
            .map_err(std::io::Error::other)?
    }

    /// SIGKILL to every process of the launch without waiting (the worker
    /// is exiting); the group's cgroup stays until [`GroupHandle::kill`]
    /// or the slot's cleaning removes it.
    pub fn kill_now(&self) {
        if let Some(cgroup) = &self.cgroup {
            if self.has_kill && std::fs::write(cgroup.join("cgroup.kill"), "1").is_ok() {
                return;
            }
            let _ = cgroup::signal_group(cgroup, rustix::process::Signal::KILL);
        }
        let _ =
            rustix::process::kill_process_group(self.process_group, rustix::process::Signal::KILL);
    }

    /// Removes the launch's cgroup once its processes are gone (a busy
    /// one stays: kill it first).
    pub fn remove(&self) {
        if let Some(cgroup) = &self.cgroup {
            let _ = std::fs::remove_dir(cgroup);
        }
    }

    /// Resident memory of the launch: its cgroup's `memory.current`, else
    /// the resident set of its first process.
    pub fn memory_bytes(&self) -> u64 {
        let cgroup = self.cgroup.as_ref().and_then(|cgroup| {
            std::fs::read_to_string(cgroup.join("memory.current"))
                .ok()
                .and_then(|text| text.trim().parse().ok())
        });
        cgroup.unwrap_or_else(|| {
            let statm = format!("/proc/{}/statm", self.process_group.as_raw_nonzero());
            std::fs::read_to_string(statm)
                .ok()
                .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
                .map_or(0, |pages| pages * rustix::param::page_size() as u64)
        })
    }

    /// Whether no process of the launch is left.
    pub fn is_empty(&self) -> bool {
        match &self.cgroup {
            Some(cgroup) => std::fs::read_to_string(cgroup.join("cgroup.procs"))
                .map_or(true, |procs| procs.trim().is_empty()),
            None => rustix::process::test_kill_process_group(self.process_group).is_err(),
        }
    }

    /// Whether the launch is a cgroup (else only its process group).
    pub fn is_cgroup(&self) -> bool {
        self.cgroup.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The sandbox required is not available (or the user has no uid).
    #[error("{0}")]
    Unavailable(String),
    /// The command cannot run: not found, not executable, bad cwd or env.
    #[error("{0}")]
    Command(String),
    #[error("cannot start the process: {0}")]
    Internal(String),
}

impl From<SpawnError> for OpError {
    fn from(err: SpawnError) -> OpError {
        match err {
            SpawnError::Unavailable(text) => OpError::SandboxUnavailable(text),
            SpawnError::Command(text) => OpError::Invalid(text),
            SpawnError::Internal(text) => OpError::Internal(text),
        }
    }
}

impl Sandbox {
    /// Finds what the kernel and privileges give and decides what to use.
    /// Never fails: what is missing is in the report. `create_cgroups` is
    /// for the master (it makes the base cgroup); workers find it.
    pub fn probe(config: SandboxConfig, create_cgroups: bool) -> Sandbox {
        let root = rustix::process::geteuid().is_root();
        let mode = config.mode.unwrap_or(Mode::default_for(root));
        let (cgroups, cgroup_problem) = if mode == Mode::Off {
            (None, Some("--sandbox off".to_string()))
        } else {
            let data_dir = config.users_dir.parent().unwrap_or(&config.users_dir);
            let instance = cgroup::instance_name(data_dir);
            match Cgroups::discover(&config.cgroup_root, &instance, create_cgroups) {
                Ok(found) => (Some(found), None),
                Err(problem) => (None, Some(problem)),
            }
        };
        let via = |controller| cgroups.as_ref().and_then(|c: &Cgroups| c.via(controller));
        let capabilities = Capabilities {
            landlock_abi: landlock::abi(),
            uid_switch: root,
            cgroup_grouping: cgroups.as_ref().is_some_and(|c| c.v2_base.is_some()),
            cgroup_memory: via(cgroup::Controller::Memory),
            cgroup_pids: via(cgroup::Controller::Pids),
            cgroup_cpu: via(cgroup::Controller::Cpu),
            netns: root,
        };
        let mut decision = policy::decide(mode, &capabilities, config.network);
        let cgroups = cgroups.filter(|_| decision.cgroups);
        let (system_rules, left_out) = system_rules(&config, decision.netns);
        if decision.uid_switch {
            // Users' processes could not even reach their workspaces: every
            // launch would fail. Say so once, clearly, instead of failing
            // each task with an internal error.
            let blocked = untraversable(&config.users_dir);
            if !blocked.is_empty() && decision.allowed.is_ok() {
                decision.allowed = Err(format!(
                    "users' processes cannot reach their workspaces: {}",
                    blocked.join("; ")
                ));
            }
        }
        if decision.landlock {
            for path in left_out {
                decision.warnings.push(format!(
                    "{} is not readable in the sandbox: the data directory lies beneath it \
                     (put --data-dir elsewhere)",
                    path.display()
                ));
            }
        }
        let report = SandboxReport {
            mode,
            network: config.network,
            capabilities,
            decision,
            cgroup_problem,
        };
        Sandbox {
            config,
            report,
            cgroups,
            system_rules,
            spawner: Default::default(),
        }
    }

    pub fn report(&self) -> &SandboxReport {
        &self.report
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The v2 base cgroup the workers should use (`--cgroup-root` for
    /// them), if any.
    pub fn cgroup_base(&self) -> Option<&Path> {
        self.cgroups.as_ref().and_then(|c| c.v2_base.as_deref())
    }

    /// Kills every process left in `slot`'s cgroups and removes them: the
    /// master after a worker died, a worker when it starts. Blocking
    /// (waits for the processes to go, at most a few seconds).
    pub fn kill_slot(&self, slot: u32) -> std::io::Result<()> {
        match &self.cgroups {
            Some(cgroups) => cgroups.kill_slot(slot, KILL_PATIENCE),
            None => Ok(()),
        }
    }

    /// Kills what every slot's users left (a master starting, before its
    /// workers: the last run may have had other slots). Blocking.
    pub fn kill_every_slot(&self) -> std::io::Result<()> {
        match &self.cgroups {
            Some(cgroups) => cgroups.kill_every_slot(KILL_PATIENCE),
            None => Ok(()),
        }
    }

    /// Removes the base cgroups once no slot is left in them: for a master
    /// that stops, after its workers (whose slots the pool empties).
    pub fn remove_cgroup_bases(&self) {
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove_bases();
        }
    }

    /// Removes the slot's cgroups that hold no process (from the worker's
    /// runtime thread: not concurrently with [`Sandbox::spawn`]).
    pub fn remove_empty_cgroups(&self) {
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove_empty(self.config.slot);
        }
    }

    /// The user's directories: `<users>/<id>/workspace` and `scratch`.
    pub fn user_paths(&self, user: &UserCtx) -> (PathBuf, PathBuf) {
        let base = self.config.users_dir.join(user.id.to_string());
        (base.join("workspace"), base.join("scratch"))
    }

    /// Starts `launch` in the sandbox for `user`. Call it on the worker's
    /// runtime thread (never from `spawn_blocking`): the stage's death
    /// signal fires when the *thread* that forked it ends. The workspace
    /// must exist (open the user's `Workspaces` entry first, which also
    /// hands it over to the user's uid).
    pub async fn spawn(&self, user: &UserCtx, launch: Launch) -> Result<Spawned, SpawnError> {
        let decision = &self.report.decision;
        if let Err(refused) = &decision.allowed {
            return Err(SpawnError::Unavailable(refused.clone()));
        }
        let uid = if decision.uid_switch {
            match user.uid {
                Some(uid) if uid != 0 => Some(uid),
                _ if self.report.mode == Mode::Required => {
                    return Err(SpawnError::Unavailable(format!(
                        "user {} has no uid of their own; the sandbox requires one",
                        user.name
                    )))
                }
                _ => None,
            }
        } else {
            None
        };
        check_launch(&launch)?;
        self.check_extra_paths(&launch)?;
        let (workspace, scratch) = self.user_paths(user);
        // Directories and cgroup files: on the blocking pool, so the
        // worker's runtime thread (which serves every request of its
        // users) only forks.
        let prepare = {
            let scratch = scratch.clone();
            let cgroups = self.cgroups.clone();
            let slot = self.config.slot;
            let user_id = user.id.to_string();
            let limits = user.limits;
            let group = launch.group.clone();
            move || -> Result<Option<cgroup::Joined>, SpawnError> {
                prepare_scratch(&scratch, uid).map_err(|err| {
                    SpawnError::Internal(format!("cannot prepare {}: {err}", scratch.display()))
                })?;
                cgroups
                    .map(|cgroups| {
                        cgroups
                            .enter_user(slot, &user_id, &limits, &group)
                            .map_err(|err| match err.kind() {
                                std::io::ErrorKind::InvalidInput => {
                                    SpawnError::Command(err.to_string())
                                }
                                _ => SpawnError::Internal(format!("cgroup: {err}")),
                            })
                    })
                    .transpose()
            }
        };
        let joined = tokio::task::spawn_blocking(prepare)
            .await
            .map_err(|err| SpawnError::Internal(format!("preparing the launch: {err}")))??;
        let (status_read, status_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|err| SpawnError::Internal(format!("pipe: {err}")))?;
        let spec = ExecSpec {
            argv: launch.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            env: self.environment(user, &workspace, &scratch, &launch.env),
            workspace: workspace.as_os_str().as_bytes().to_vec(),
            cwd: launch.cwd.as_bytes().to_vec(),
            uid,
            limits: user.limits,
            cgroup_procs: joined
                .iter()
                .flat_map(|j| j.procs.iter())
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .collect(),
            network_none: decision.netns,
            landlock: decision
                .landlock
                .then(|| self.landlock_rules(&workspace, &scratch, &launch)),
            parent_pid: std::process::id(),
            status_fd: status_write.as_raw_fd(),
            controlling_tty: launch.terminal,
        };
        let encoded = encode_spec(&spec)
            .map_err(|err| SpawnError::Command(format!("launch too large: {err}")))?;
        let mut command = tokio::process::Command::new(&self.config.stage_exe);
        command
            .arg0("warren-sandbox")
            .arg(STAGE_ARG)
            .env_clear()
            .env(SPEC_ENV, encoded)
            .stdin(launch.stdin)
            .stdout(launch.stdout)
            .stderr(launch.stderr);
        let mut child = self
            .spawner
            .get_or_init(Spawner::start)
            .spawn(command, status_write)
            .await?;
        let pid = child.id().unwrap_or(0);
        match read_status(status_read).await {
            Ok(None) => {}
            Ok(Some((kind, message))) => {
                let _ = child.wait().await;
                if let Some(group) = joined.as_ref().and_then(|j| j.v2_group.clone()) {
                    let _ = std::fs::remove_dir(group);
                }
                return Err(match kind {
                    StageFailure::Command | StageFailure::Cwd => SpawnError::Command(message),
                    StageFailure::Setup => SpawnError::Internal(message),
                });
            }
            Err(err) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(SpawnError::Internal(format!("status pipe: {err}")));
            }
        }
        let process_group = rustix::process::Pid::from_raw(pid as i32)
            .ok_or_else(|| SpawnError::Internal("the stage has no pid".into()))?;
        Ok(Spawned {
            child,
            pid,
            group: GroupHandle {
                cgroup: joined.and_then(|j| j.v2_group),
                has_kill: self.cgroups.as_ref().is_some_and(|c| c.v2_kill),
                process_group,
            },
        })
    }

    /// A launch's extra paths must be absolute and clear of the data
    /// directory (Landlock grants whole subtrees).
    fn check_extra_paths(&self, launch: &Launch) -> Result<(), SpawnError> {
        for path in launch.read_execute.iter().chain(&launch.read_only) {
            let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            let overlaps = self.config.data_dir.as_deref().is_some_and(|data| {
                let data_real = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
                [
                    (path.as_path(), data),
                    (real.as_path(), data_real.as_path()),
                ]
                .iter()
                .any(|(p, d)| p.starts_with(d) || d.starts_with(p))
            });
            let climbs = path
                .components()
                .any(|part| part == std::path::Component::ParentDir);
            if !path.is_absolute() || overlaps || climbs {
                return Err(SpawnError::Command(format!(
                    "{} cannot be granted: paths must be absolute, without '..', and outside the data directory",
                    path.display()
                )));
            }
        }
        Ok(())
    }

    /// The command's whole environment: nothing of warren's own.
    fn environment(
        &self,
        user: &UserCtx,
        workspace: &Path,
        scratch: &Path,
        extra: &[(OsString, OsString)],
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let shell = ["/bin/bash", "/bin/sh"]
            .into_iter()
            .find(|shell| Path::new(shell).exists())
            .unwrap_or("/bin/sh");
        let mut env: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"HOME".to_vec(), workspace.as_os_str().as_bytes().to_vec()),
            (b"USER".to_vec(), user.name.as_bytes().to_vec()),
            (b"LOGNAME".to_vec(), user.name.as_bytes().to_vec()),
            (
                b"PATH".to_vec(),
                b"/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin".to_vec(),
            ),
            (b"LANG".to_vec(), b"C.UTF-8".to_vec()),
            (b"TERM".to_vec(), b"dumb".to_vec()),
            (b"TMPDIR".to_vec(), scratch.as_os_str().as_bytes().to_vec()),
            (b"SHELL".to_vec(), shell.as_bytes().to_vec()),
        ];
        let mut set = |key: &[u8], value: &[u8]| {
            env.retain(|(k, _)| k != key);
            env.push((key.to_vec(), value.to_vec()));
        };
        for (key, value) in &self.config.env {
            set(key.as_bytes(), value.as_bytes());
        }
        for (key, value) in extra {
            set(key.as_bytes(), value.as_bytes());
        }
        env
    }

    /// The launch's rules: the system's (made once at probe) and the
    /// user's two read-write directories.
    fn landlock_rules(&self, workspace: &Path, scratch: &Path, launch: &Launch) -> LandlockSpec {
        let bytes = |p: &PathBuf| p.as_os_str().as_bytes().to_vec();
        let mut rules = self.system_rules.clone();
        rules.read_write = vec![
            workspace.as_os_str().as_bytes().to_vec(),
            scratch.as_os_str().as_bytes().to_vec(),
        ];
        rules
            .read_execute
            .extend(launch.read_execute.iter().map(bytes));
        rules.read_only.extend(launch.read_only.iter().map(bytes));
        rules
    }
}

/// The directories above `<data>/users` the users' uids cannot pass
/// (no execute permission for others): their processes could not reach
/// their workspaces, so users' processes are refused, saying which. The data directory itself and
/// `users/` are made 0711 by warren.
fn untraversable(users_dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let Some(data_dir) = users_dir.parent() else {
        return Vec::new();
    };
    data_dir
        .ancestors()
        .skip(1)
        .filter(|dir| {
            std::fs::metadata(dir).is_ok_and(|meta| meta.permissions().mode() & 0o001 == 0)
        })
        .map(|dir| {
            format!(
                "{} cannot be traversed by other users (mode o-x): users' processes cannot \
                 reach their workspaces below it (chmod o+x it, or move --data-dir)",
                dir.display()
            )
        })
        .collect()
}

/// What every launch may read and execute, and the paths left out because
/// the data directory lies beneath them (Landlock grants whole subtrees:
/// it cannot grant `/opt` but `/opt/warren`).
fn system_rules(config: &SandboxConfig, netns: bool) -> (LandlockSpec, Vec<PathBuf>) {
    let bytes = |p: &Path| p.as_os_str().as_bytes().to_vec();
    let mut left_out = Vec::new();
    let mut allowed = |p: &Path| {
        let overlaps = config
            .data_dir
            .as_deref()
            .is_some_and(|data| p.starts_with(data) || data.starts_with(p));
        if overlaps {
            left_out.push(p.to_path_buf());
        }
        !overlaps
    };
    let read_execute = SYSTEM_PROGRAMS
        .iter()
        .map(Path::new)
        .filter(|p| p.exists() && allowed(p))
        .map(bytes)
        .collect();
    let read_only = etc_entries()
        .into_iter()
        .chain(
            ["/proc", "/sys/devices/system/cpu"]
                .into_iter()
                .map(PathBuf::from),
        )
        .chain(config.extra_read.iter().cloned())
        .filter(|p| allowed(p))
        .map(|p| bytes(&p))
        .collect();
    let rules = LandlockSpec {
        read_write: Vec::new(),
        read_execute,
        read_only,
        devices: DEVICES.iter().map(|d| d.as_bytes().to_vec()).collect(),
        // Only without a namespace of its own: inside one, TCP on
        // loopback is the user's business.
        deny_tcp: config.network == Network::None && !netns,
        scope: true,
    };
    (rules, left_out)
}

/// Directories of programs and libraries: read and execute.
const SYSTEM_PROGRAMS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/opt",
];

/// Device files a program expects to read and write (terminals later).
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
];

/// `/etc` entries no user may read: secrets and warren's own settings.
const ETC_SECRETS: &[&str] = &[
    "shadow",
    "gshadow",
    "shadow-",
    "gshadow-",
    "sudoers",
    "sudoers.d",
    "ssh",
    "warren",
    "ssl",
];

/// Each top-level entry of `/etc` but the secrets; `/etc/ssl` comes back
/// without `private/`.
fn etc_entries() -> Vec<PathBuf> {
    let mut entries = Vec::new();
    if let Ok(listing) = std::fs::read_dir("/etc") {
        for entry in listing.flatten() {
            let name = entry.file_name();
            if ETC_SECRETS.iter().any(|s| name.as_bytes() == s.as_bytes()) {
                continue;
            }
            entries.push(entry.path());
        }
    }
    if let Ok(listing) = std::fs::read_dir("/etc/ssl") {
        for entry in listing.flatten() {
            if entry.file_name().as_bytes() != b"private" {
                entries.push(entry.path());
            }
        }
    }
    entries.sort();
    entries
}

/// The private tmp: made 0700 and the user's own (uid) on first use.
fn prepare_scratch(scratch: &Path, uid: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(scratch) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err),
    }
    if let Some(uid) = uid {
        let meta = std::fs::symlink_metadata(scratch)?;
        if !meta.is_dir() {
            return Err(std::io::Error::other("not a directory"));
        }
        if meta.uid() != uid {
            std::os::unix::fs::lchown(scratch, Some(uid), Some(uid))?;
        }
    }
    Ok(())
}

fn check_launch(launch: &Launch) -> Result<(), SpawnError> {
    if launch.argv.is_empty() || launch.argv[0].is_empty() {
        return Err(SpawnError::Command("the command is empty".into()));
    }
    if launch.argv.iter().any(|arg| arg.as_bytes().contains(&0)) {
        return Err(SpawnError::Command(
            "an argument contains a NUL byte".into(),
        ));
    }
    for (key, value) in &launch.env {
        let key = key.as_bytes();
        if key.is_empty()
            || key.contains(&b'=')
            || key.contains(&0)
            || value.as_bytes().contains(&0)
        {
            return Err(SpawnError::Command(format!(
                "{:?} is not a valid environment variable",
                String::from_utf8_lossy(key)
            )));
        }
    }
    if !launch.cwd.is_empty() {
        warren_protocol::path::check(&launch.cwd)
            .map_err(|err| SpawnError::Command(format!("bad working directory: {err}")))?;
    }
    Ok(())
}

/// The stage's verdict: `None` when the pipe closed empty (the exec
/// succeeded), else what failed.
async fn read_status(read: OwnedFd) -> std::io::Result<Option<(StageFailure, String)>> {
    let mut receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
    let mut report = Vec::new();
    // A stage writes at most one short report.
    (&mut receiver)
        .take(64 * 1024)
        .read_to_end(&mut report)
        .await?;
    let Some((&first, message)) = report.split_first() else {
        return Ok(None);
    };
    let kind = StageFailure::from_byte(first).unwrap_or(StageFailure::Setup);
    Ok(Some((kind, String::from_utf8_lossy(message).into_owned())))
}
