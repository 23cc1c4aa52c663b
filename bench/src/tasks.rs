//! `warren-bench tasks`: users' tasks, beside bare process spawns.
//!
//! The figures (issue #10):
//! - (a) spawn to first output: a process that prints one line, from the
//!   moment it is asked for to its first byte read, one at a time:
//!   - bare: `fork+exec` of `/bin/echo` from this process (tokio's
//!     `Command`, a pipe), and of `/bin/true` to its exit, for reference;
//!   - sandboxed: the same `echo` through the worker's sandbox
//!     (`warren_worker::tasks::launch::Launcher`, as a worker spawns: the
//!     `sandbox-exec` stage, uid, Landlock, rlimits, cgroup), in this
//!     process, interleaved with the bare one. The difference of the
//!     medians is the sandbox's overhead (target ≤ 5 ms);
//!   - through the API: `POST /api/v1/tasks` then `GET …/output?follow=true`
//!     until the answer is complete, against a warren started by the bench.
//! - (b) `--rate` short tasks a second (`true`, open model: each task is
//!   sent on schedule whatever the server does) spread over `--users`
//!   users, while `--observers` other users each send `--observer-rate`
//!   `GET /api/v1/ping` a second; their p99 during the tasks beside their
//!   p99 without (target ≤ 2×). Calm and loaded windows alternate
//!   `--rounds` times (with a pause between for the last tasks to end),
//!   each series pooled over its windows: on a shared machine whose
//!   background load drifts, one calm window then one loaded window would
//!   compare the drift as much as the tasks.

use crate::http::api::{self, bearer};
use crate::http::load::{
    drive, histogram, Client, Connection, Outcome, Pace, Percentiles, Plan, RequestSpec,
};
use crate::http::{os_args, start_warren, stop};
use crate::TasksArgs;
use anyhow::{bail, Context, Result};
use hyper::{Method, StatusCode};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize)]
pub struct TasksReport {
    pub samples: u32,
    pub bare_true: Percentiles,
    pub bare_echo: Percentiles,
    pub sandboxed_echo: Option<Percentiles>,
    /// Median of sandboxed minus median of bare, in nanoseconds.
    pub sandbox_overhead_p50_ns: Option<i64>,
    pub api_echo: Percentiles,
    pub rate: f64,
    /// Calm and loaded windows alternated this many times.
    pub rounds: u32,
    pub tasks: SeriesFigures,
    pub calm: SeriesFigures,
    pub loaded: SeriesFigures,
    /// p99 of the observers during the tasks over p99 without.
    pub p99_ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct SeriesFigures {
    pub completed: u64,
    pub errors: String,
    pub per_second: f64,
    pub latency: Percentiles,
}

impl SeriesFigures {
    fn of(outcome: &Outcome) -> Self {
        SeriesFigures {
            completed: outcome.completed,
            errors: if outcome.errors.total() == 0 {
                "none".into()
            } else {
                outcome.errors.describe()
            },
            per_second: outcome.per_second(),
            latency: Percentiles::of(&outcome.latency),
        }
    }
}

pub async fn run(args: &TasksArgs) -> Result<TasksReport> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    eprintln!("(a) bare and sandboxed spawns, {} each ...", args.samples);
    let mut bare_true = histogram()?;
    let mut bare_echo = histogram()?;
    let mut sandboxed = histogram()?;
    let launcher = sandbox::Local::new(dir.path())?;
    for _ in 0..args.samples {
        bare_true.saturating_record(spawn_true().await?.as_nanos() as u64);
        bare_echo.saturating_record(spawn_echo().await?.as_nanos() as u64);
        if let Some(launcher) = &launcher {
            sandboxed.saturating_record(launcher.echo().await?.as_nanos() as u64);
        }
    }
    let sandboxed_echo = launcher.as_ref().map(|_| Percentiles::of(&sandboxed));
    let sandbox_overhead_p50_ns = sandboxed_echo
        .as_ref()
        .map(|figures| figures.p50_ns as i64 - Percentiles::of(&bare_echo).p50_ns as i64);

    eprintln!("starting warren with {} workers ...", args.workers);
    let warren = start_warren(
        dir.path(),
        args.workers,
        os_args(["--task-limit", "64", "--token-rate", "1000000"]),
    )
    .await?;
    let outcome = measure(args, warren.process.address, &warren.admin_password).await;
    stop(warren.process).await;
    let (api_echo, tasks, calm, loaded) = outcome?;
    let calm_p99 = calm.latency.p99_ns.max(1) as f64;
    Ok(TasksReport {
        samples: args.samples,
        bare_true: Percentiles::of(&bare_true),
        bare_echo: Percentiles::of(&bare_echo),
        sandboxed_echo,
        sandbox_overhead_p50_ns,
        api_echo,
        rate: args.rate,
        rounds: args.rounds,
        p99_ratio: loaded.latency.p99_ns as f64 / calm_p99,
        tasks,
        calm,
        loaded,
    })
}

/// The pause after each loaded window.
const SETTLE: Duration = Duration::from_millis(300);

/// The uncounted first window that opens the connections.
const WARM_UP: Duration = Duration::from_millis(500);

type Measured = (Percentiles, SeriesFigures, SeriesFigures, SeriesFigures);

async fn measure(args: &TasksArgs, server: SocketAddr, admin_password: &str) -> Result<Measured> {
    let admin = api::session(server, "admin", admin_password).await?;
    let password = crate::http::random_hex(16)?;
    let mut tokens = Vec::new();
    let count = args.users + args.observers;
    eprintln!("creating {count} accounts ...");
    for k in 0..count {
        let name = format!("bench-task-{k:04}");
        api::create_user(server, &admin, &name, &password).await?;
        tokens.push(api::session(server, &name, &password).await?);
    }
    let (taskers, observers) = tokens.split_at(args.users as usize);

    eprintln!("(a) through the API, {} tasks ...", args.samples);
    let mut through_api = histogram()?;
    let mut connection = Connection::new(server);
    for _ in 0..args.samples {
        through_api.saturating_record(
            api_echo(server, &mut connection, &taskers[0])
                .await?
                .as_nanos() as u64,
        );
    }

    let observer_clients = |tokens: &[String]| -> Result<Vec<Client>> {
        tokens
            .iter()
            .map(|token| {
                let spec = bearer(server, Method::GET, "/api/v1/ping", token)?;
                Client::new(server, spec)
            })
            .collect()
    };
    let observer_pace = Pace::Every(Duration::from_secs_f64(1.0 / args.observer_rate));
    let window = args.seconds / args.rounds;
    let plan = |pace| Plan {
        until: Instant::now() + window,
        pace,
        cancel: None,
        timeout: REQUEST_TIMEOUT,
    };
    let task_spec = |token: &str| -> Result<RequestSpec> {
        bearer(server, Method::POST, "/api/v1/tasks", token)?
            .json(&serde_json::json!({ "command": ["true"] }))
    };
    let per_tasker = Duration::from_secs_f64(args.users as f64 / args.rate);
    let (mut calm, mut loaded, mut tasks) = (Outcome::new()?, Outcome::new()?, Outcome::new()?);
    // The same connections all along, opened by a first window that is
    // not counted: a connect inside a measured window would be its slowest
    // request.
    let mut watchers = observer_clients(observers)?;
    let mut starters: Vec<Client> = taskers
        .iter()
        .map(|token| Client::new(server, task_spec(token)?))
        .collect::<Result<_>>()?;
    let warm_up = |pace| Plan {
        until: Instant::now() + WARM_UP,
        ..plan(pace)
    };
    (watchers, _) = drive(watchers, warm_up(observer_pace)).await?;
    (starters, _) = drive(starters, warm_up(Pace::Every(per_tasker))).await?;
    tokio::time::sleep(SETTLE).await;
    eprintln!(
        "(b) {} rounds of observers alone, then during {} tasks/s, {window:?} each ...",
        args.rounds, args.rate
    );
    for _ in 0..args.rounds {
        let alone;
        (watchers, alone) = drive(watchers, plan(observer_pace)).await?;
        calm.merge(&alone)?;
        let tasks_run = tokio::spawn(drive(starters, plan(Pace::Every(per_tasker))));
        let during;
        (watchers, during) = drive(watchers, plan(observer_pace)).await?;
        let started;
        (starters, started) = tasks_run.await.context("the task load panicked")??;
        loaded.merge(&during)?;
        tasks.merge(&started)?;
        // The last tasks end (and their processes are reaped) before the
        // next calm window.
        tokio::time::sleep(SETTLE).await;
    }
    Ok((
        Percentiles::of(&through_api),
        SeriesFigures::of(&tasks),
        SeriesFigures::of(&calm),
        SeriesFigures::of(&loaded),
    ))
}

/// `POST /tasks` of `echo`, then its output followed to the end.
async fn api_echo(
    server: SocketAddr,
    connection: &mut Connection,
    token: &str,
) -> Result<Duration> {
    let start = bearer(server, Method::POST, "/api/v1/tasks", token)?
        .json(&serde_json::json!({ "command": ["/bin/echo", "warren"] }))?;
    let began = Instant::now();
    let answer = connection.send(&start, REQUEST_TIMEOUT).await?;
    if answer.status != StatusCode::CREATED {
        bail!(
            "POST /api/v1/tasks: {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    let record: serde_json::Value =
        serde_json::from_slice(&answer.body).context("POST /api/v1/tasks: not JSON")?;
    let id = record["id"].as_str().context("POST /api/v1/tasks: no id")?;
    let mut output = bearer(server, Method::GET, "/", token)?;
    output.uri = format!("/api/v1/tasks/{id}/output?follow=true")
        .parse()
        .context("a task's output path")?;
    let answer = connection.send(&output, REQUEST_TIMEOUT).await?;
    let took = began.elapsed();
    if answer.status != StatusCode::OK || &answer.body[..] != b"warren\n" {
        bail!(
            "GET {}: {} {:?}",
            output.uri,
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    Ok(took)
}

async fn spawn_true() -> Result<Duration> {
    let began = Instant::now();
    let status = tokio::process::Command::new("/bin/true")
        .status()
        .await
        .context("cannot run /bin/true")?;
    if !status.success() {
        bail!("/bin/true failed: {status}");
    }
    Ok(began.elapsed())
}

/// Spawns `/bin/echo warren` and reads its first byte.
async fn spawn_echo() -> Result<Duration> {
    let began = Instant::now();
    let mut child = tokio::process::Command::new("/bin/echo")
        .arg("warren")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot run /bin/echo")?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).await.context("no output")?;
    let took = began.elapsed();
    child.wait().await.context("cannot wait for /bin/echo")?;
    Ok(took)
}

/// Spawning through the worker's own sandbox, in this process.
mod sandbox {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    use warren_protocol::{ProcessLimits, Role, UserCtx, UserId};
    use warren_worker::sandbox::{Sandbox, SandboxConfig};
    use warren_worker::tasks::launch::{Launch, Launcher};
    use warren_worker::workspace::Workspaces;

    /// A slot no worker of a warren on this machine has: its cgroups are
    /// this benchmark's alone.
    const SLOT: u32 = u32::MAX - 1;

    pub struct Local {
        launcher: Launcher,
        sandbox: Sandbox,
        user: UserCtx,
        launches: AtomicU64,
    }

    impl Local {
        /// The worker's launcher over a data directory in `dir`, with the
        /// same probe a worker makes; `None` (and why, on stderr) when the
        /// sandbox refuses to run anything here.
        pub fn new(dir: &std::path::Path) -> Result<Option<Local>> {
            let data = dir.join("sandbox-data");
            let users = data.join("users");
            std::fs::create_dir_all(&users).context("cannot create the users directory")?;
            // The user's uid traverses (never lists) the way to its workspace.
            for path in [dir, &data, &users] {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711))
                    .with_context(|| format!("cannot chmod {}", path.display()))?;
            }
            // The stage is this very binary (`main` dispatches it).
            let config = SandboxConfig::new(users.clone(), SLOT);
            let sandbox = Sandbox::probe(config, true);
            if let Err(refused) = &sandbox.report().decision.allowed {
                eprintln!("sandboxed spawns not measured: {refused}");
                return Ok(None);
            }
            let root = rustix::process::geteuid().is_root();
            let user = UserCtx {
                id: UserId([0xbe; 16]),
                name: "bench".into(),
                role: Role::User,
                quota_bytes: 1 << 30,
                quota_files: 100_000,
                uid: root.then_some(265_000),
                limits: ProcessLimits {
                    address_space: 0,
                    cpu_seconds: 60,
                    processes: 256,
                    file_size: 1 << 30,
                    open_files: 1024,
                    memory: 256 << 20,
                    pids: 256,
                    cpu_weight: 100,
                    tasks: 8,
                },
            };
            Workspaces::new(users)
                .open_as(user.id, user.uid)
                .map_err(|err| anyhow::anyhow!("cannot open the workspace: {err}"))?;
            Ok(Some(Local {
                launcher: Launcher::new(sandbox.clone()),
                sandbox,
                user,
                launches: AtomicU64::new(0),
            }))
        }

        /// `/bin/echo warren` in the sandbox: from asking to the first byte.
        pub async fn echo(&self) -> Result<Duration> {
            let n = self.launches.fetch_add(1, Ordering::Relaxed);
            let began = Instant::now();
            let spawned = self
                .launcher
                .spawn(
                    &self.user,
                    Launch {
                        argv: vec!["/bin/echo".into(), "warren".into()],
                        cwd: String::new(),
                        env: Vec::new(),
                        group: format!("bench-{n}"),
                        stdin: std::process::Stdio::null(),
                        stdout: std::process::Stdio::piped(),
                        stderr: std::process::Stdio::null(),
                        terminal: false,
                        read_execute: Vec::new(),
                        read_only: Vec::new(),
                    },
                )
                .await
                .map_err(|err| anyhow::anyhow!("sandboxed spawn failed: {err}"))?;
            let mut child = spawned.child;
            let mut stdout = child.stdout.take().context("no stdout")?;
            let mut first = [0u8; 1];
            stdout.read_exact(&mut first).await.context("no output")?;
            let took = began.elapsed();
            child
                .wait()
                .await
                .context("cannot wait for the sandboxed echo")?;
            spawned
                .group
                .kill()
                .await
                .context("cannot remove the sandboxed echo's group")?;
            Ok(took)
        }
    }

    impl Drop for Local {
        fn drop(&mut self) {
            let _ = self.sandbox.kill_slot(SLOT);
            self.sandbox.remove_cgroup_bases();
        }
    }
}

impl TasksReport {
    pub fn table(&self) -> String {
        let ms = |ns: u64| ns as f64 / 1e6;
        let row = |name: &str, p: &Percentiles| {
            format!(
                "{name:<34} p50 {:>8.2} ms  p99 {:>8.2} ms  ({} samples)\n",
                ms(p.p50_ns),
                ms(p.p99_ns),
                p.samples
            )
        };
        let mut out = String::from("(a) spawn to first output, one at a time\n");
        out += &row("bare fork+exec /bin/true (exit)", &self.bare_true);
        out += &row("bare fork+exec /bin/echo", &self.bare_echo);
        match (&self.sandboxed_echo, self.sandbox_overhead_p50_ns) {
            (Some(sandboxed), Some(overhead)) => {
                out += &row("sandboxed /bin/echo", sandboxed);
                out += &format!(
                    "{:<34} {:>8.2} ms (target ≤ 5 ms)\n",
                    "sandbox overhead, p50",
                    overhead as f64 / 1e6
                );
            }
            _ => out += "sandboxed /bin/echo                not measured\n",
        }
        out += &row("POST /tasks + GET output (echo)", &self.api_echo);
        out += &format!(
            "\n(b) {} short tasks/s over the API ({} rounds of calm and loaded windows)\n",
            self.rate, self.rounds
        );
        let series = |name: &str, s: &SeriesFigures| {
            format!(
                "{name:<34} {:>8.1}/s  p50 {:>8.2} ms  p99 {:>8.2} ms  errors: {}\n",
                s.per_second,
                ms(s.latency.p50_ns),
                ms(s.latency.p99_ns),
                s.errors
            )
        };
        out += &series("tasks started", &self.tasks);
        out += &series("other users' ping, calm", &self.calm);
        out += &series("other users' ping, during tasks", &self.loaded);
        out += &format!(
            "{:<34} {:>8.2}× (target ≤ 2×)\n",
            "p99 during / calm", self.p99_ratio
        );
        out
    }
}
