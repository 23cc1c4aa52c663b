//! Users' tasks: commands run in their workspace, in their sandbox.
//!
//! A task is started by [`Tasks::start`] on the worker's runtime thread (the
//! thread that forks must outlive the child: `PR_SET_PDEATHSIG`), then
//! watched by its own supervisor future until it ends: it copies the
//! task's output (stdout and stderr, one pipe) into an [`output::OutputLog`],
//! stops the task on cancel or timeout (SIGTERM to all of its processes,
//! SIGKILL after a grace period), and once the command's own process has
//! exited kills whatever of the task is left, so nothing of a task outlives
//! it. Its end goes to the master as an [`Event::TaskEnded`]; the master
//! keeps the records.

pub mod launch;
pub mod output;

use crate::workspace::Workspaces;
use launch::{Group, Launch, Launcher};
use output::OutputLog;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tracing::{debug, warn};
use warren_protocol::stream::{FrameSender, Stream};
use warren_protocol::{
    Body, Event, Frame, OpError, Reply, TaskEnd, TaskId, TaskOutputInfo, TaskStart, TaskState,
    UserCtx, UserId, MAX_DATA_CHUNK,
};

/// How long the output of a task whose command exited is still read: what
/// its other processes (killed at once) had written.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Why a running task is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancelled,
    TimedOut,
    /// Its user's files (written by their tasks) went over their quota.
    OverQuota,
    /// The users' file system went below the disk reserve.
    DiskFull,
}

/// How often the guard checks the disk reserve while tasks run.
const GUARD_EVERY: Duration = Duration::from_secs(1);
/// Every how many guard turns it counts the usage of users whose tasks run.
const QUOTA_TURNS: u32 = 5;
/// Between SIGTERM and SIGKILL for a task stopped by the guard.
const GUARD_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Running {
    user: UserId,
    quota: crate::workspace::Quota,
    /// Set once; the supervisor acts on it.
    stop: Mutex<Option<(Stop, Duration)>>,
    stopping: Notify,
    /// Output bytes written so far, and whether the task still runs.
    progress: watch::Sender<(u64, bool)>,
    group: Arc<Group>,
}

/// The tasks of the users this worker serves.
pub struct Tasks {
    users_dir: PathBuf,
    workspaces: Arc<Workspaces>,
    sandbox: Arc<Launcher>,
    events: FrameSender,
    running: Mutex<HashMap<TaskId, Arc<Running>>>,
    /// Tasks each user runs or is starting (the limit's count).
    per_user: Mutex<HashMap<UserId, u32>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

impl Tasks {
    pub fn new(
        users_dir: PathBuf,
        workspaces: Arc<Workspaces>,
        sandbox: Arc<Launcher>,
        events: FrameSender,
    ) -> Arc<Tasks> {
        let tasks = Arc::new(Tasks {
            users_dir,
            workspaces,
            sandbox,
            events,
            running: Mutex::new(HashMap::new()),
            per_user: Mutex::new(HashMap::new()),
        });
        tokio::spawn(tasks.clone().guard());
        tasks
    }

    /// What the files API enforces on every write, enforced on tasks
    /// after the fact: users' own processes write without asking. Every
    /// second while tasks run, a users' file system below the disk reserve
    /// stops every running task (the reserve keeps room for warren's own
    /// database and sockets); every few seconds, a user whose files are
    /// over their quota has their tasks stopped. (Each file a task writes
    /// is also capped at the quota by `RLIMIT_FSIZE`.)
    async fn guard(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(GUARD_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut turn = 0u32;
        loop {
            ticks.tick().await;
            let running: Vec<Arc<Running>> = self.lock_running().values().cloned().collect();
            if running.is_empty() {
                continue;
            }
            turn = turn.wrapping_add(1);
            let workspaces = self.workspaces.clone();
            let short = crate::ops::blocking(move || Ok(workspaces.disk_short())).await;
            if let Ok(Some(what)) = short {
                warn!(
                    tasks = running.len(),
                    short_of = what,
                    "the users' disk is below its reserve: stopping every task"
                );
                for task in &running {
                    request_stop(task, Stop::DiskFull, GUARD_GRACE);
                }
                continue;
            }
            if !turn.is_multiple_of(QUOTA_TURNS) {
                continue;
            }
            let mut users: HashMap<UserId, crate::workspace::Quota> = HashMap::new();
            for task in &running {
                users.insert(task.user, task.quota);
            }
            for (user, quota) in users {
                let workspaces = self.workspaces.clone();
                let counted = crate::ops::blocking(move || workspaces.recount(user)).await;
                let Ok(usage) = counted else { continue };
                if usage.bytes > quota.bytes || usage.entries > quota.entries {
                    warn!(%user, bytes = usage.bytes, entries = usage.entries, "a user's tasks wrote past their quota: stopping them");
                    for task in running.iter().filter(|task| task.user == user) {
                        request_stop(task, Stop::OverQuota, GUARD_GRACE);
                    }
                }
            }
        }
    }

    fn lock_running(&self) -> MutexGuard<'_, HashMap<TaskId, Arc<Running>>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_per_user(&self) -> MutexGuard<'_, HashMap<UserId, u32>> {
        self.per_user.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tasks running now (for heartbeats).
    pub fn running_count(&self) -> usize {
        self.lock_running().len()
    }

    fn task_dir(&self, user: UserId, task: TaskId) -> PathBuf {
        self.users_dir
            .join(user.to_string())
            .join("state")
            .join("tasks")
            .join(task.to_string())
    }

    /// Counts one more task of `user`, unless they are at their limit.
    fn admit(&self, user: &UserCtx) -> Result<Admitted<'_>, OpError> {
        let mut per_user = self.lock_per_user();
        let count = per_user.entry(user.id).or_default();
        let limit = user.limits.tasks;
        if limit != 0 && *count >= limit {
            return Err(OpError::TooManyTasks { limit });
        }
        *count += 1;
        Ok(Admitted {
            tasks: self,
            user: user.id,
        })
    }

    /// Starts `start` for `user`; answers once the command runs.
    pub async fn start(
        self: &Arc<Self>,
        user: UserCtx,
        start: TaskStart,
    ) -> Result<Reply, OpError> {
        let received = Instant::now();
        if start.argv.is_empty() || start.argv[0].is_empty() {
            return Err(OpError::Invalid("the command is empty".into()));
        }
        self.sandbox.check()?;
        let admitted = self.admit(&user)?;
        // The user's directories (created on first use), then the task's.
        let workspaces = self.workspaces.clone();
        let (id, uid) = (user.id, user.uid);
        // With the user's uid: the workspace is theirs before their process runs.
        let quota = crate::workspace::Quota::of(&user);
        crate::ops::blocking(move || {
            let dirs = workspaces.open_as(id, uid)?;
            // A user over their quota (their tasks wrote past it) starts
            // nothing more until they make room.
            let usage = workspaces.usage(&dirs)?;
            if usage.bytes > quota.bytes {
                return Err(OpError::QuotaExceeded {
                    used: usage.bytes,
                    limit: quota.bytes,
                });
            }
            if usage.entries > quota.entries {
                return Err(OpError::EntryQuotaExceeded {
                    used: usage.entries,
                    limit: quota.entries,
                });
            }
            Ok(())
        })
        .await?;
        let dir = self.task_dir(user.id, start.task);
        let log = {
            let dir = dir.clone();
            let limit = start.output_limit;
            crate::ops::blocking(move || {
                if let Some(parent) = dir.parent() {
                    std::fs::create_dir_all(parent).map_err(|err| {
                        OpError::Internal(format!("cannot keep the task's output: {err}"))
                    })?;
                }
                OutputLog::create(dir, limit)
            })
            .await?
        };

        let pipe = || {
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|err| OpError::Busy(format!("cannot make a pipe: {err}")))
        };
        let (output, output_writer) = pipe()?;
        let output_for_stderr = output_writer
            .try_clone()
            .map_err(|err| OpError::Busy(format!("cannot make a pipe: {err}")))?;
        let launch = Launch {
            argv: start.argv.iter().map(Into::into).collect(),
            cwd: start.cwd.clone(),
            env: start
                .env
                .iter()
                .map(|(key, value)| (key.into(), value.into()))
                .collect(),
            group: format!("task-{}", start.task),
            stdin: if start.stdin.is_empty() {
                std::process::Stdio::null()
            } else {
                std::process::Stdio::piped()
            },
            stdout: output_writer.into(),
            stderr: output_for_stderr.into(),
            terminal: false,
            read_execute: Vec::new(),
            read_only: Vec::new(),
        };
        let spawned = match self.sandbox.spawn(&user, launch).await {
            Ok(spawned) => spawned,
            Err(err) => {
                let dir = dir.clone();
                let _ = crate::ops::blocking(move || {
                    let _ = std::fs::remove_dir_all(&dir);
                    Ok(())
                })
                .await;
                return Err(err.into());
            }
        };
        let spawn_micros = received.elapsed().as_micros() as u64;
        let started_ms = now_ms();
        let pid = spawned.pid;

        let (progress, _) = watch::channel((0, true));
        let group = Arc::new(Group::from(spawned.group));
        let running = Arc::new(Running {
            user: user.id,
            quota: crate::workspace::Quota::of(&user),
            stop: Mutex::new(None),
            stopping: Notify::new(),
            progress,
            group: group.clone(),
        });
        self.lock_running().insert(start.task, running.clone());
        let tasks = self.clone();
        let timeout = (start.timeout_ms > 0).then(|| Duration::from_millis(start.timeout_ms));
        let output = tokio::net::unix::pipe::Receiver::from_owned_fd(output)
            .map_err(|err| OpError::Internal(format!("cannot read the task's output: {err}")));
        let run = Run {
            task: start.task,
            user: user.id,
            running,
            log,
            stdin: start.stdin,
            timeout,
            group,
        };
        // The supervisor owns the admission from here: it is released when
        // the task ends.
        std::mem::forget(admitted);
        tokio::spawn(async move {
            let end = match output {
                Ok(output) => tasks.supervise(spawned.child, output, run).await,
                Err(err) => {
                    // Unreachable in practice (a fresh pipe); end it cleanly.
                    run.group.kill().await;
                    tasks.finish(run, failure(err.to_string()))
                }
            };
            debug!(state = end.state.as_str(), "task ended");
        });
        Ok(Reply::TaskStarted {
            worker_pid: std::process::id(),
            pid,
            started_ms,
            spawn_micros,
        })
    }

    async fn supervise(
        &self,
        mut child: tokio::process::Child,
        mut output: tokio::net::unix::pipe::Receiver,
        mut run: Run,
    ) -> TaskEnd {
        let feeding = child.stdin.take().map(|mut stdin| {
            let bytes = std::mem::take(&mut run.stdin);
            tokio::spawn(async move {
                // A task that does not read its input closes the pipe.
                let _ = stdin.write_all(&bytes).await;
            })
        });
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let timeout_at = run.timeout.map_or(far, |timeout| Instant::now() + timeout);
        let mut kill_at = far;
        let mut drain_until = far;
        let mut stopped: Option<Stop> = None;
        let mut exit: Option<std::process::ExitStatus> = None;
        let mut reading = true;
        let mut write_error = None;
        let mut buf = vec![0u8; 64 * 1024];
        while reading || exit.is_none() {
            tokio::select! {
                read = output.read(&mut buf), if reading => match read {
                    Ok(0) | Err(_) => reading = false,
                    Ok(n) => {
                        if write_error.is_none() {
                            if let Err(err) = run.log.append(&buf[..n]) {
                                warn!(task = %run.task, error = %err, "cannot keep a task's output");
                                write_error = Some(err);
                            }
                        }
                        run.running.progress.send_replace((run.log.written(), true));
                    }
                },
                status = child.wait(), if exit.is_none() => {
                    exit = Some(match status {
                        Ok(status) => status,
                        Err(err) => {
                            warn!(task = %run.task, error = %err, "cannot wait for a task");
                            std::os::unix::process::ExitStatusExt::from_raw(9)
                        }
                    });
                    // Nothing of a task outlives its command.
                    run.group.kill().await;
                    drain_until = Instant::now() + DRAIN_AFTER_EXIT;
                }
                _ = tokio::time::sleep_until(timeout_at.into()), if stopped.is_none() && exit.is_none() => {
                    stopped = Some(Stop::TimedOut);
                    run.group.terminate();
                    kill_at = Instant::now() + crate::tasks::TIMEOUT_GRACE;
                }
                _ = run.running.stopping.notified(), if stopped.is_none() && exit.is_none() => {
                    let requested = *run.running.stop.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some((why, grace)) = requested {
                        stopped = Some(why);
                        run.group.terminate();
                        kill_at = Instant::now() + grace;
                    }
                }
                _ = tokio::time::sleep_until(kill_at.into()), if exit.is_none() => {
                    run.group.kill().await;
                    kill_at = far;
                }
                _ = tokio::time::sleep_until(drain_until.into()), if exit.is_some() => {
                    // Something escaped the group and holds the pipe open.
                    reading = false;
                }
            }
        }
        if let Some(feeding) = feeding {
            feeding.abort();
        }
        let status = exit.unwrap_or_else(|| std::os::unix::process::ExitStatusExt::from_raw(9));
        let end = classify(status, stopped, run.log.written(), write_error);
        self.finish(run, end)
    }

    /// Forgets a task that ended and tells the master.
    fn finish(&self, run: Run, mut end: TaskEnd) -> TaskEnd {
        end.output_bytes = run.log.written();
        self.lock_running().remove(&run.task);
        run.running
            .progress
            .send_replace((run.log.written(), false));
        drop(Admitted {
            tasks: self,
            user: run.user,
        });
        // The task's processes may have changed the workspace behind the
        // files API's back: count it again when next needed.
        self.workspaces.forget_usage(run.user);
        run.group.remove();
        let _ = self.events.send(Frame {
            id: 0,
            body: Body::Event(Event::TaskEnded {
                user: run.user,
                task: run.task,
                end: end.clone(),
            }),
        });
        end
    }

    /// Asks a running task to stop: SIGTERM now, SIGKILL after `grace`.
    pub fn cancel(&self, user: &UserCtx, task: TaskId, grace: Duration) -> Result<Reply, OpError> {
        let running = self
            .lock_running()
            .get(&task)
            .filter(|running| running.user == user.id)
            .cloned()
            .ok_or_else(|| OpError::NotFound(format!("task {task} is not running")))?;
        request_stop(&running, Stop::Cancelled, grace);
        Ok(Reply::Done)
    }

    /// Removes a finished task's output.
    pub async fn delete(&self, user: &UserCtx, task: TaskId) -> Result<Reply, OpError> {
        if self.lock_running().contains_key(&task) {
            return Err(OpError::Conflict(format!("task {task} is still running")));
        }
        let dir = self.task_dir(user.id, task);
        crate::ops::blocking(move || match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(OpError::Internal(format!(
                "cannot remove the task's output: {err}"
            ))),
        })
        .await?;
        self.workspaces.forget_usage_now(user.id);
        Ok(Reply::Done)
    }

    /// Kills every task at once (the worker is exiting: their supervisors
    /// will not run again).
    pub fn kill_all(&self) {
        for running in self.lock_running().values() {
            running.group.kill_now();
        }
    }

    /// Serves a [`warren_protocol::StreamKind::TaskOutput`] stream.
    pub async fn serve_output(
        self: Arc<Self>,
        user: UserCtx,
        task: TaskId,
        from: u64,
        to: Option<u64>,
        follow: bool,
        stream: Stream,
    ) {
        let (mut sender, _receiver) = stream.split();
        let dir = self.task_dir(user.id, task);
        let progress = self
            .lock_running()
            .get(&task)
            .filter(|running| running.user == user.id)
            .map(|running| running.progress.subscribe());
        let extent = {
            let dir = dir.clone();
            crate::ops::blocking(move || output::extent(&dir)).await
        };
        let (dropped, on_disk) = match extent {
            Ok(extent) => extent,
            Err(err) => return sender.abort(err),
        };
        let (written, running) = match &progress {
            Some(progress) => *progress.borrow(),
            None => (on_disk, false),
        };
        let info = TaskOutputInfo {
            dropped,
            written,
            running,
        };
        let head = match warren_protocol::codec::encode_message(&info) {
            Ok(head) => head,
            Err(err) => return sender.abort(OpError::Internal(err.to_string())),
        };
        if let Err(err) = sender.send(&head).await {
            return sender.abort(err);
        }
        let end = to.unwrap_or(u64::MAX);
        let mut offset = from.max(dropped);
        let mut progress = progress.filter(|_| follow);
        let mut known = (written, running && follow);
        loop {
            while offset < known.0.min(end) {
                let want = (known.0.min(end) - offset).min(MAX_DATA_CHUNK as u64) as usize;
                let read = {
                    let dir = dir.clone();
                    crate::ops::blocking(move || output::read_at(&dir, offset, want)).await
                };
                match read {
                    Ok(Some(chunk)) if chunk.is_empty() => break,
                    Ok(Some(chunk)) => {
                        offset += chunk.len() as u64;
                        if let Err(err) = sender.send_vec(chunk).await {
                            return sender.abort(err);
                        }
                    }
                    // Dropped while we read (a follower slower than the
                    // task): go on from what is kept.
                    Ok(None) => {
                        let dir = dir.clone();
                        match crate::ops::blocking(move || output::extent(&dir)).await {
                            Ok((dropped, _)) if dropped > offset => offset = dropped,
                            Ok(_) => break,
                            Err(err) => return sender.abort(err),
                        }
                    }
                    Err(err) => return sender.abort(err),
                }
            }
            if offset >= end || !known.1 {
                break;
            }
            let Some(watching) = progress.as_mut() else {
                break;
            };
            // The supervisor's last word is (written, false) before it
            // drops the sender, so a closed channel means nothing more.
            if watching.changed().await.is_err() {
                break;
            }
            known = *watching.borrow_and_update();
        }
        let _ = sender.finish();
    }
}

/// Asks a running task's supervisor to stop it (the first reason wins).
fn request_stop(running: &Running, why: Stop, grace: Duration) {
    {
        let mut stop = running.stop.lock().unwrap_or_else(PoisonError::into_inner);
        if stop.is_none() {
            *stop = Some((why, grace));
        }
    }
    running.stopping.notify_one();
}

/// How long a task past its timeout has between SIGTERM and SIGKILL.
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(5);

/// What a running task's supervisor holds.
struct Run {
    task: TaskId,
    user: UserId,
    running: Arc<Running>,
    log: OutputLog,
    stdin: Vec<u8>,
    timeout: Option<Duration>,
    group: Arc<Group>,
}

/// One task counted against its user's limit until dropped.
struct Admitted<'a> {
    tasks: &'a Tasks,
    user: UserId,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut per_user = self.tasks.lock_per_user();
        if let Some(count) = per_user.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_user.remove(&self.user);
            }
        }
    }
}

fn failure(error: String) -> TaskEnd {
    TaskEnd {
        state: TaskState::Failed,
        exit_code: None,
        signal: None,
        ended_ms: now_ms(),
        output_bytes: 0,
        error: Some(error),
    }
}

fn classify(
    status: std::process::ExitStatus,
    stopped: Option<Stop>,
    output_bytes: u64,
    write_error: Option<OpError>,
) -> TaskEnd {
    use std::os::unix::process::ExitStatusExt;
    let exit_code = status.code();
    let signal = status.signal();
    let state = match (stopped, signal) {
        (Some(Stop::TimedOut), _) => TaskState::TimedOut,
        (Some(_), _) | (None, Some(_)) => TaskState::Killed,
        (None, None) => TaskState::Exited,
    };
    let error = match (stopped, signal) {
        (Some(Stop::TimedOut), _) => Some("stopped: it ran past its timeout".to_string()),
        (Some(Stop::Cancelled), _) => Some("stopped: cancelled".to_string()),
        (Some(Stop::OverQuota), _) => {
            Some("stopped: the user's files are over their storage quota".to_string())
        }
        (Some(Stop::DiskFull), _) => Some("stopped: the server's disk is nearly full".to_string()),
        (None, Some(signal)) => Some(format!("killed by signal {signal}")),
        (None, None) => None,
    }
    .or_else(|| write_error.map(|err| format!("output not kept in full: {err}")));
    TaskEnd {
        state,
        exit_code,
        signal,
        ended_ms: now_ms(),
        output_bytes,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn an_end_is_classified_by_how_it_was_stopped() {
        let exited = |code: i32| std::process::ExitStatus::from_raw(code << 8);
        let signalled = |signal: i32| std::process::ExitStatus::from_raw(signal);
        assert_eq!(classify(exited(3), None, 0, None).state, TaskState::Exited);
        assert_eq!(classify(exited(3), None, 0, None).exit_code, Some(3));
        let killed = classify(signalled(9), None, 0, None);
        assert_eq!((killed.state, killed.signal), (TaskState::Killed, Some(9)));
        assert_eq!(
            classify(signalled(15), Some(Stop::TimedOut), 0, None).state,
            TaskState::TimedOut
        );
        assert_eq!(
            classify(exited(0), Some(Stop::Cancelled), 0, None).state,
            TaskState::Killed
        );
    }
}
