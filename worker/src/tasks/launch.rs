//! How the task runner starts a user's process: the one seam between the
//! runner and the sandbox.

use std::path::PathBuf;
use std::process::Stdio;
use warren_protocol::{OpError, UserCtx};

/// A process to start for a user.
pub struct Launch {
    pub argv: Vec<String>,
    /// Relative to the user's workspace.
    pub cwd: String,
    pub env: Vec<(String, String)>,
    /// Names the group of processes the launch makes (unique per user).
    pub group: String,
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The sandbox this server requires is not available.
    #[error("{0}")]
    Unavailable(String),
    /// The command cannot be run (not found, not executable, bad cwd).
    #[error("{0}")]
    CannotRun(String),
    #[error("{0}")]
    Internal(String),
}

pub struct Spawned {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub group: Group,
}

/// All the processes of one launch.
#[derive(Debug)]
pub struct Group {
    pgid: u32,
}

impl Group {
    /// SIGTERM to every process of the group.
    pub fn terminate(&self) {
        self.signal(rustix::process::Signal::TERM);
    }

    /// SIGKILL to every process of the group.
    pub async fn kill(&self) {
        self.signal(rustix::process::Signal::KILL);
    }

    /// SIGKILL to every process of the group, without waiting.
    pub fn kill_now(&self) {
        self.signal(rustix::process::Signal::KILL);
    }

    /// Forgets the group once its processes are gone.
    pub fn remove(&self) {}

    fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pgid) = rustix::process::Pid::from_raw(self.pgid as i32) {
            let _ = rustix::process::kill_process_group(pgid, signal);
        }
    }
}

/// Starts users' processes.
pub struct Launcher {
    users_dir: PathBuf,
}

impl Launcher {
    pub fn new(users_dir: PathBuf) -> Launcher {
        Launcher { users_dir }
    }

    /// Whether users' processes may start at all.
    pub fn check(&self) -> Result<(), OpError> {
        Ok(())
    }

    pub async fn spawn(&self, user: &UserCtx, launch: Launch) -> Result<Spawned, SpawnError> {
        let workspace = self.users_dir.join(user.id.to_string()).join("workspace");
        if !launch.cwd.is_empty() {
            warren_protocol::path::check(&launch.cwd)
                .map_err(|err| SpawnError::CannotRun(format!("cwd: {err}")))?;
        }
        let mut command = tokio::process::Command::new(&launch.argv[0]);
        command
            .args(&launch.argv[1..])
            .current_dir(workspace.join(&launch.cwd))
            .env_clear()
            .env("HOME", &workspace)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .envs(launch.env)
            .stdin(launch.stdin)
            .stdout(launch.stdout)
            .stderr(launch.stderr)
            .process_group(0);
        let child = command.spawn().map_err(|err| {
            SpawnError::CannotRun(format!("cannot run `{}`: {err}", launch.argv[0]))
        })?;
        let pid = child.id().unwrap_or(0);
        Ok(Spawned {
            child,
            pid,
            group: Group { pgid: pid },
        })
    }
}
