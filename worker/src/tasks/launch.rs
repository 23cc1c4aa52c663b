//! How the task runner starts a user's process: the one seam between the
//! runner and the sandbox ([`crate::sandbox`]).

use warren_protocol::{OpError, UserCtx};

use crate::sandbox::{GroupHandle, Sandbox};

pub use crate::sandbox::{Launch, SpawnError, Spawned};

/// All the processes of one launch: its cgroup (grandchildren in sessions
/// of their own included), or its process group without cgroups. The
/// sandbox's handle, with failures logged rather than returned (a task's
/// supervisor can do nothing else about them).
#[derive(Debug)]
pub struct Group(GroupHandle);

impl Group {
    /// SIGTERM to every process of the group.
    pub fn terminate(&self) {
        if let Err(err) = self.0.signal(rustix::process::Signal::TERM) {
            tracing::warn!(error = %err, "cannot signal a task's processes");
        }
    }

    /// SIGHUP to every process of the group (a terminal hung up).
    pub fn hang_up(&self) {
        if let Err(err) = self.0.signal(rustix::process::Signal::HUP) {
            tracing::warn!(error = %err, "cannot signal a terminal's processes");
        }
    }

    /// SIGKILL to every process of the group; returns once none is left
    /// (with cgroups) and the group is removed.
    pub async fn kill(&self) {
        if let Err(err) = self.0.kill().await {
            tracing::warn!(error = %err, "cannot kill a task's processes");
        }
    }

    /// SIGKILL to every process of the group, without waiting.
    pub fn kill_now(&self) {
        self.0.kill_now();
    }

    /// See [`GroupHandle::memory_bytes`].
    pub fn memory_bytes(&self) -> u64 {
        self.0.memory_bytes()
    }

    /// See [`GroupHandle::is_empty`].
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Forgets the group once its processes are gone.
    pub fn remove(&self) {
        self.0.remove();
    }
}

impl From<GroupHandle> for Group {
    fn from(handle: GroupHandle) -> Group {
        Group(handle)
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
        // No single file of the user's may outgrow their storage quota.
        let mut user = user.clone();
        if user.quota_bytes > 0 {
            let cap = user.quota_bytes;
            user.limits.file_size = match user.limits.file_size {
                0 => cap,
                limit => limit.min(cap),
            };
        }
        self.sandbox.spawn(&user, launch).await
    }
}
