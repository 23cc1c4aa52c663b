//! How the task runner starts a user's process: the one seam between the
//! runner and the sandbox ([`crate::sandbox`]).

use std::process::Stdio;
use warren_protocol::{OpError, UserCtx};

use crate::sandbox::{self, GroupHandle, Sandbox};

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

/// All the processes of one launch: its cgroup (grandchildren in sessions
/// of their own included), or its process group without cgroups.
#[derive(Debug)]
pub struct Group {
    handle: GroupHandle,
}

impl Group {
    /// SIGTERM to every process of the group.
    pub fn terminate(&self) {
        let _ = self.handle.signal(rustix::process::Signal::TERM);
    }

    /// SIGKILL to every process of the group; returns once none is left
    /// (with cgroups) and the group is removed.
    pub async fn kill(&self) {
        if let Err(err) = self.handle.kill().await {
            tracing::warn!(error = %err, "cannot kill a task's processes");
        }
    }

    /// SIGKILL to every process of the group, without waiting.
    pub fn kill_now(&self) {
        self.handle.kill_now();
    }

    /// Forgets the group once its processes are gone.
    pub fn remove(&self) {
        self.handle.remove();
    }
}

/// Starts users' processes in the sandbox.
pub struct Launcher {
    sandbox: Sandbox,
}

impl Launcher {
    pub fn new(sandbox: Sandbox) -> Launcher {
        Launcher { sandbox }
    }

    /// Whether users' processes may start at all (`--sandbox required` on
    /// a system that lacks part of it refuses every one).
    pub fn check(&self) -> Result<(), OpError> {
        self.sandbox
            .report()
            .decision
            .allowed
            .clone()
            .map_err(OpError::SandboxUnavailable)
    }

    /// Starts `launch`; call it on the worker's runtime thread (the
    /// stage's death signal is tied to the thread that forked it).
    pub async fn spawn(&self, user: &UserCtx, launch: Launch) -> Result<Spawned, SpawnError> {
        let launch = sandbox::Launch {
            argv: launch.argv.into_iter().map(Into::into).collect(),
            cwd: launch.cwd,
            env: launch
                .env
                .into_iter()
                .map(|(key, value)| (key.into(), value.into()))
                .collect(),
            group: launch.group,
            stdin: launch.stdin,
            stdout: launch.stdout,
            stderr: launch.stderr,
        };
        // No single file of the user's may outgrow their storage quota.
        let mut user = user.clone();
        if user.quota_bytes > 0 {
            let cap = user.quota_bytes;
            user.limits.file_size = match user.limits.file_size {
                0 => cap,
                limit => limit.min(cap),
            };
        }
        let spawned = self
            .sandbox
            .spawn(&user, launch)
            .await
            .map_err(|err| match err {
                sandbox::SpawnError::Unavailable(why) => SpawnError::Unavailable(why),
                sandbox::SpawnError::Command(why) => SpawnError::CannotRun(why),
                sandbox::SpawnError::Internal(why) => SpawnError::Internal(why),
            })?;
        Ok(Spawned {
            child: spawned.child,
            pid: spawned.pid,
            group: Group {
                handle: spawned.group,
            },
        })
    }
}
