//! `warren-bench run`: load against a running warren (directly or through
//! nginx), the way its users would make it, with faults on purpose
//! (`--chaos`) and the server watched over time (`--sample`).
//!
//! A run: users are created through the admin API (or read from
//! `--users-file`); they log in for real over `--ramp` (argon2 on the
//! server); from the start, requests of `--scenario` go to the users logged
//! in, at `--rate` per second (open model: the schedule does not wait for
//! the server, and each request is timed from when it was due) or
//! `--concurrency` at a time (closed model); after `--duration` past the
//! ramp, the load stops, every file a user wrote and got a 2xx for is read
//! back, and the results are printed, written as JSON (`--out`) and HTML
//! (`--html`), and judged against `--slo`.

pub mod chaos;
pub mod client;
pub mod html;
pub mod ops;
pub mod record;
pub mod results;
pub mod soak;
pub mod users;

use anyhow::{bail, Context, Result};
use client::{status_kind, Call, Pool, Target};
use hyper::header::AUTHORIZATION;
use hyper::Method;
use ops::{Operation, Scenario};
use record::Recorder;
use results::{LostWrite, MachineInfo, RunResults, Settings, Verification, SCHEMA};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use users::{Account, User};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The server: `http://host:port[/prefix]`, warren's own listener or
    /// nginx in front of it.
    #[arg(long)]
    pub target: String,
    /// What the users do.
    #[arg(long, value_enum, default_value = "mixed")]
    pub scenario: Scenario,
    /// Simulated users (in `login-storm`: the users who log in during the
    /// storm); 10 when not given. With `--users-file`, the first this many
    /// of its users (all when not given).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub users: Option<u32>,
    /// `name:password` per line: existing users to log in as, instead of
    /// creating them.
    #[arg(long)]
    pub users_file: Option<PathBuf>,
    /// An administrator's API token (first line): to create the users
    /// (`warren-bench-NNNNN`, kept for the next run), and for chaos and
    /// sampling through the admin API.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// The password of the users the harness creates.
    #[arg(
        long,
        env = "WARREN_BENCH_USER_PASSWORD",
        default_value = "warren-bench-load-user"
    )]
    pub user_password: String,
    /// Logins are spread over this long (`0s`: all at once).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub ramp: Duration,
    /// How long the load runs after the ramp (`login-storm`: in all).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Open model: requests started per second in all, whatever the
    /// server does (the default is `--concurrency 16`).
    #[arg(long, conflicts_with = "concurrency", value_parser = crate::parse_rate)]
    pub rate: Option<f64>,
    /// Closed model: requests in flight at once, the next sent when an
    /// answer is in.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: Option<u32>,
    /// Open model: requests in flight at most; an arrival beyond is counted
    /// as a `backlog` error (the client, not the server, fell behind).
    #[arg(long, default_value_t = 20_000)]
    pub max_in_flight: usize,
    /// `login-storm`: users logged in before measuring, whose pings are
    /// the API's latency before, during and after the storm.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub calm_users: u32,
    /// A request with no answer this long is a `timeout` error.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Bytes of a small file (`files`, `mixed`).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 26))]
    pub file_size: u64,
    /// Bytes of an upload (`uploads`).
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..=1 << 32))]
    pub upload_size: u64,
    /// The app of `apps` (a name from the server's `--apps`).
    #[arg(long)]
    pub app: Option<String>,
    /// The path requested of the app (below `/user/NAME/APP`), query
    /// included.
    #[arg(long, default_value = "/")]
    pub app_path: String,
    /// Each user's connections from its own address of this IPv4 network
    /// (e.g. `127.1.0.0/16` against a server on loopback), as if from its
    /// own machine: per-address login limits then apply per user.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// `kill-worker:every=2s[,slot=N][,via=signal|api]` or
    /// `restart-master:at=30s` (repeatable).
    #[arg(long)]
    pub chaos: Vec<String>,
    /// A shell command that starts the master again after
    /// `restart-master` (when no supervisor does).
    #[arg(long)]
    pub restart_command: Option<String>,
    /// Record the server's processes (RSS, descriptors, threads) and
    /// `/metrics` this often (needs the harness on the server's host).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub sample: Option<Duration>,
    /// The master's pid (else found through the admin API's worker pids).
    #[arg(long)]
    pub master_pid: Option<u32>,
    /// A bearer token for `/metrics` (the server's `--metrics-token-file`).
    #[arg(long)]
    pub metrics_token_file: Option<PathBuf>,
    /// Growth (in %) of a sampled series that is flagged.
    #[arg(long, default_value_t = 5.0)]
    pub growth_limit: f64,
    /// Read back every acknowledged write after the load.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub verify: bool,
    /// A shell command run after the load and before the read-back (a
    /// restore from backups, a failover...).
    #[arg(long)]
    pub before_verify: Option<String>,
    /// Leave the run's files in the workspaces (else deleted at the end).
    #[arg(long)]
    pub keep_files: bool,
    /// Write the results as JSON (schema `warren-bench-run/1`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write a self-contained HTML report with its plots.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Write each plot as an SVG file into this directory.
    #[arg(long)]
    pub svg_dir: Option<PathBuf>,
    /// Objectives, e.g. `p99<50ms,errors<0.1%,read.p99<20ms,rps>500`: exit
    /// status 1 when one is not met.
    #[arg(long)]
    pub slo: Option<String>,
    /// An earlier run's `--out`: each figure's change is printed.
    #[arg(long)]
    pub compare: Option<PathBuf>,
}

/// `warren-bench report`: a saved run's table, HTML and SVG plots again.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// A run's `--out` file.
    pub results: PathBuf,
    #[arg(long)]
    pub html: Option<PathBuf>,
    #[arg(long)]
    pub svg_dir: Option<PathBuf>,
    /// An earlier run's `--out`: each figure's change is printed.
    #[arg(long)]
    pub compare: Option<PathBuf>,
}

pub fn report(args: &ReportArgs) -> Result<()> {
    let results = RunResults::read(&args.results)?;
    print!("{}", results.table());
    if let Some(old) = &args.compare {
        print!("{}", results::compare(&RunResults::read(old)?, &results));
    }
    write_reports(&results, args.html.as_deref(), args.svg_dir.as_deref())
}

/// The HTML report and the SVG plots, where asked for.
fn write_reports(
    results: &RunResults,
    html_path: Option<&std::path::Path>,
    svg_dir: Option<&std::path::Path>,
) -> Result<()> {
    if let Some(path) = html_path {
        std::fs::write(path, html::render(results)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(dir) = svg_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for chart in html::charts(results)? {
            let path = dir.join(format!("{}.svg", chart.name));
            std::fs::write(&path, chart.svg)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

/// The master's pid, from a worker pid the admin API names that runs on
/// this host.
pub async fn discover_master(admin: &Pool, token: Option<&str>) -> Option<u32> {
    let token = token?;
    let call = Call::new(Method::GET, "/api/v1/admin/pool")
        .header(AUTHORIZATION, format!("Bearer {token}"));
    let answer = admin.send(call, None, Duration::from_secs(10)).await.ok()?;
    let pool: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    pool["slots"]
        .as_array()?
        .iter()
        .filter_map(|slot| u32::try_from(slot["pid"].as_u64()?).ok())
        .find_map(soak::master_of)
}

/// An open-model arrival started later than this after its due time
/// counts as the harness falling behind.
const LATE: Duration = Duration::from_millis(5);

/// A random number for picking operations and files.
fn pick() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let mut z = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The users the load goes to: those logged in.
struct Ready {
    users: RwLock<Vec<Arc<User>>>,
    next: AtomicUsize,
}

impl Ready {
    fn add(&self, user: Arc<User>) {
        if let Ok(mut users) = self.users.write() {
            users.push(user);
        }
    }

    fn next(&self) -> Option<Arc<User>> {
        let users = self.users.read().ok()?;
        if users.is_empty() {
            return None;
        }
        let at = self.next.fetch_add(1, Ordering::Relaxed) % users.len();
        users.get(at).cloned()
    }
}

/// What every load task shares.
struct Run {
    scenario: Scenario,
    recorder: Recorder,
    context: ops::Context,
    ready: Ready,
    /// `login-storm`: when the storm starts and (once every login is done)
    /// ends, in seconds since the start.
    storm: Option<(f64, Mutex<Option<f64>>)>,
    /// Arrivals with no user logged in yet to take them (the ramp's start).
    no_user: AtomicU64,
    /// Users who logged in (the calm ones included).
    logged_in: AtomicU64,
}

/// The longest a login waits for `Retry-After`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

impl Run {
    /// One operation for the next ready user, timed from `from`. An
    /// operation (some are several requests) gets twice the timeout in
    /// all; beyond, it is a `timeout`.
    async fn one(&self, from: Instant) {
        let Some(user) = self.ready.next() else {
            self.no_user.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let op = self.scenario.operation(pick(), &user);
        let outcome = tokio::time::timeout(
            self.context.timeout * 2,
            ops::run(op, &user, &self.context, pick()),
        )
        .await
        .unwrap_or_else(|_| Err("timeout".to_string()));
        self.recorder.record(
            self.op_name(op),
            user.slot(),
            from.elapsed(),
            outcome.as_ref().err().map(String::as_str),
        );
    }

    fn op_name(&self, op: Operation) -> &'static str {
        let Some((start, end)) = &self.storm else {
            return op.name();
        };
        let now = self.recorder.now_s();
        if now < *start {
            "ping-calm"
        } else if end
            .lock()
            .ok()
            .and_then(|end| *end)
            .is_none_or(|end| now < end)
        {
            "ping-storm"
        } else {
            "ping-after"
        }
    }

    /// Logs `user` in at `due` (retrying after a clean 429/503's
    /// `Retry-After` until `until`), then readies it for the load.
    async fn log_in(
        &self,
        user: Arc<User>,
        mut due: Instant,
        until: Instant,
        timeout: Duration,
    ) -> bool {
        loop {
            tokio::time::sleep_until(due.into()).await;
            let outcome = user.login(timeout).await;
            self.recorder.record(
                "login",
                user.slot(),
                due.elapsed(),
                outcome.as_ref().err().map(|(kind, _)| kind.as_str()),
            );
            match outcome {
                Ok(()) => break,
                Err((kind, retry_after)) => {
                    // A browser comes back when Retry-After says (else in a
                    // second); a bad password or a broken server does not
                    // get better.
                    let retry = matches!(kind.as_str(), "429" | "503" | "timeout" | "connect");
                    due = Instant::now()
                        + retry_after
                            .unwrap_or(Duration::from_secs(1))
                            .min(MAX_RETRY_AFTER);
                    if !retry || due > until {
                        return false;
                    }
                }
            }
        }
        user.learn_slot().await;
        if self.scenario.writes() {
            // A first file, so that listing and reading have something.
            let _ = ops::write(&user, &self.context, self.context.small_size, timeout).await;
        }
        if ops::has_terminal(self.scenario, &user) {
            // Opening the terminal is its own figure; keystrokes are
            // timed from the key to its echo.
            let begun = Instant::now();
            let outcome = ops::open(&user, timeout).await;
            self.recorder.record(
                "terminal-open",
                user.slot(),
                begun.elapsed(),
                outcome.as_ref().err().map(String::as_str),
            );
        }
        if self.scenario == Scenario::Apps {
            start_app(&user, &self.context).await;
        }
        self.ready.add(user);
        self.logged_in.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// Starts the user's app and waits (up to the timeout) until it runs.
async fn start_app(user: &User, context: &ops::Context) {
    let Some(app) = &context.app else { return };
    let session = user.session();
    let path = format!("/api/v1/me/apps/{app}/start");
    let deadline = Instant::now() + context.timeout;
    while Instant::now() < deadline {
        if let Ok(answer) = user
            .pool
            .send(
                Call::new(Method::POST, &path),
                session.as_deref(),
                context.timeout,
            )
            .await
        {
            let state = serde_json::from_slice::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|v| v["state"].as_str().map(str::to_string));
            if answer.status.is_success() && state.as_deref() == Some("running") {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Raises the open-file limit to its hard limit (every user holds
/// connections and maybe a terminal's socket); warns when it is still
/// short of what `users` may need, as running out would show as the
/// server's `connect` errors.
fn raise_file_limit(users: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let current = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(_) => limit.current,
    };
    if let Some(current) = current {
        let needed = users * 3 + 256;
        if current < needed {
            eprintln!(
                "warning: {current} open files at most (ulimit -n): {users} users may need {needed}; \
                 beyond, connections fail as `connect` errors that are the harness's, not the server's"
            );
        }
    }
}

pub async fn main(args: RunArgs) -> Result<ExitCode> {
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let target = Arc::new(Target::parse(&args.target).await?);
    let chaos_actions = args
        .chaos
        .iter()
        .map(|spec| chaos::parse(spec))
        .collect::<Result<Vec<_>>>()?;
    let objectives = args.slo.as_deref().map(results::parse_slo).transpose()?;
    let compare_with = args.compare.as_deref().map(RunResults::read).transpose()?;
    if args.scenario == Scenario::Apps && args.app.is_none() {
        bail!("--scenario apps needs --app NAME (an app of the server's --apps)");
    }
    let admin_token = args
        .admin_token_file
        .as_deref()
        .map(users::read_token)
        .transpose()?;
    let metrics_token = args
        .metrics_token_file
        .as_deref()
        .map(users::read_token)
        .transpose()?;
    let admin = Arc::new(Pool::new(target.clone(), None));

    // Who logs in.
    let storm = args.scenario == Scenario::LoginStorm;
    let wanted = args.users.unwrap_or(10) + if storm { args.calm_users } else { 0 };
    let accounts: Vec<Account> = match &args.users_file {
        Some(path) => {
            let mut accounts = users::read_users_file(path)?;
            if let Some(n) = args.users {
                let n = (n + if storm { args.calm_users } else { 0 }) as usize;
                if accounts.len() < n {
                    bail!(
                        "--users-file has {} users, fewer than the {n} asked for",
                        accounts.len()
                    );
                }
                accounts.truncate(n);
            }
            accounts
        }
        None => {
            let Some(token) = &admin_token else {
                bail!("give --admin-token-file (users are created through the admin API) or --users-file");
            };
            let accounts: Vec<Account> = (0..wanted)
                .map(|i| Account {
                    name: format!("warren-bench-{i:05}"),
                    password: args.user_password.clone(),
                })
                .collect();
            let begun = Instant::now();
            let (created, existing) = users::create(target.clone(), token, &accounts, 4).await?;
            eprintln!(
                "users: {created} created, {existing} already there ({:.1} s)",
                begun.elapsed().as_secs_f64()
            );
            accounts
        }
    };
    raise_file_limit(accounts.len() as u64);
    let users: Vec<Arc<User>> = accounts
        .into_iter()
        .enumerate()
        .map(|(i, account)| {
            let bind = args
                .source_ips
                .as_deref()
                .map(|cidr| client::source_address(cidr, i as u32))
                .transpose()?;
            Ok(Arc::new(User::new(i as u32, account, target.clone(), bind)))
        })
        .collect::<Result<_>>()?;
    let calm_count = if storm { args.calm_users as usize } else { 0 };
    let (calm, movers) = users.split_at(calm_count.min(users.len()));

    let master = match args.master_pid {
        Some(pid) if !soak::is_master(pid) => {
            bail!("--master-pid {pid}: not a warren master on this host (its command line has no `serve`)")
        }
        Some(pid) => Some(pid),
        None => discover_master(&admin, admin_token.as_deref()).await,
    };
    if args.sample.is_some() && master.is_none() {
        bail!("--sample reads the server's processes: run on its host and give --master-pid or --admin-token-file");
    }
    let needs_pid = chaos_actions.iter().any(|action| {
        matches!(
            action,
            chaos::Action::KillWorker {
                graceful: false,
                ..
            } | chaos::Action::RestartMaster { .. }
        )
    });
    if needs_pid && master.is_none() {
        bail!("--chaos kill-worker (by signal) and restart-master act on the server's processes: run on its host and give --master-pid or --admin-token-file (or use kill-worker:via=api)");
    }
    let master = Arc::new(Mutex::new(master));

    let run_directory = format!("warren-bench/{started_unix:x}-{}", std::process::id());
    // Growth is judged on the samples after the logins (and a tenth of the
    // run more), when the server has reached its working size.
    let warm_up = if storm {
        args.duration / 10
    } else {
        args.ramp + args.duration / 10
    };
    if storm && args.ramp.as_secs_f64() > args.duration.as_secs_f64() * 2.0 / 3.0 {
        bail!("login-storm: the storm starts a third of the way into --duration, so --ramp must fit in the other two thirds");
    }
    if args.sample.is_some_and(|every| every.is_zero()) {
        bail!("--sample must be longer than 0s");
    }
    if args.rate.is_some_and(|rate| rate > 1_000_000.0) {
        bail!("--rate: at most 1,000,000 requests per second");
    }
    let (storm_start, total_length) = if storm {
        (args.duration.as_secs_f64() / 3.0, args.duration)
    } else {
        (0.0, args.ramp + args.duration)
    };
    // Calm users log in before measuring (their logins are not the storm).
    for user in calm {
        user.login(users::SETUP_TIMEOUT)
            .await
            .map_err(|(kind, _)| {
                anyhow::anyhow!("login of calm user {}: {kind}", user.account.name)
            })?;
        user.learn_slot().await;
    }

    // Measuring starts.
    let run = Arc::new(Run {
        scenario: args.scenario,
        recorder: Recorder::new()?,
        context: ops::Context {
            directory: run_directory,
            small_size: args.file_size as usize,
            upload_size: args.upload_size as usize,
            timeout: args.timeout,
            app: args.app.clone(),
            app_path: if args.app_path.starts_with('/') {
                args.app_path.clone()
            } else {
                format!("/{}", args.app_path)
            },
        },
        ready: Ready {
            users: RwLock::new(calm.to_vec()),
            next: AtomicUsize::new(0),
        },
        storm: storm.then(|| (storm_start, Mutex::new(None))),
        no_user: AtomicU64::new(0),
        logged_in: AtomicU64::new(calm.len() as u64),
    });
    let start = run.recorder.start();
    let end = start + total_length;
    let stop = CancellationToken::new();
    let mut background = Vec::new();

    // The ticker: one timeline entry a second, and the live line.
    let progress = indicatif::ProgressBar::new_spinner();
    {
        let run = run.clone();
        let stop = stop.clone();
        let progress = progress.clone();
        background.push(tokio::spawn(async move {
            let mut recent: std::collections::VecDeque<results::Second> = Default::default();
            let mut tick = tokio::time::interval_at(
                (start + Duration::from_secs(1)).into(),
                Duration::from_secs(1),
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if let Some(second) = run.recorder.roll() {
                    recent.push_back(second);
                    if recent.len() > 5 {
                        recent.pop_front();
                    }
                }
                let line = record::progress_line(
                    run.recorder.now_s(),
                    recent.make_contiguous(),
                    run.recorder.totals(),
                );
                if progress.is_hidden() {
                    if recent.back().is_some_and(|s| s.t % 10 == 9) {
                        eprintln!("{line}");
                    }
                } else {
                    progress.set_message(line);
                    progress.tick();
                }
            }
        }));
    }

    // Chaos.
    let events = Arc::new(Mutex::new(Vec::new()));
    let chaos = Arc::new(chaos::Chaos {
        admin: admin.clone(),
        admin_token: admin_token.clone(),
        master: master.clone(),
        restart_command: args.restart_command.clone(),
        start,
        events: events.clone(),
    });
    for action in chaos_actions {
        background.push(tokio::spawn(chaos.clone().run(action, stop.clone())));
    }

    // Sampling.
    let samples = Arc::new(Mutex::new(Vec::new()));
    if let Some(every) = args.sample {
        let samples = samples.clone();
        let stop = stop.clone();
        let master = master.clone();
        let admin = admin.clone();
        let metrics_token = metrics_token.clone();
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(start.into(), every);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Some(pid) = master.lock().ok().and_then(|m| *m) else {
                    continue;
                };
                let sample = soak::sample(
                    start.elapsed().as_secs_f64(),
                    pid,
                    &admin,
                    metrics_token.as_deref(),
                )
                .await;
                if let Ok(mut samples) = samples.lock() {
                    samples.push(sample);
                }
            }
        }));
    }

    // Idle terminals answer the server's pings.
    if matches!(args.scenario, Scenario::Mixed | Scenario::Terminals) {
        let users = users.clone();
        let stop = stop.clone();
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                for user in &users {
                    ops::keep_alive(user).await;
                }
            }
        }));
    }

    // Logins over the ramp (login-storm: from a third of the way in).
    let logins = {
        let run = run.clone();
        let movers: Vec<Arc<User>> = movers.to_vec();
        let ramp = args.ramp;
        let timeout = args.timeout;
        let offset = Duration::from_secs_f64(storm_start);
        tokio::spawn(async move {
            let count = movers.len().max(1) as u32;
            let mut tasks = Vec::new();
            for (i, user) in movers.into_iter().enumerate() {
                let due = start + offset + ramp * i as u32 / count;
                let run = run.clone();
                tasks.push(tokio::spawn(async move {
                    run.log_in(user, due, end, timeout).await
                }));
            }
            let mut logged_in = 0u32;
            for task in tasks {
                if matches!(task.await, Ok(true)) {
                    logged_in += 1;
                }
            }
            if let Some((_, end)) = &run.storm {
                if let Ok(mut end) = end.lock() {
                    *end = Some(run.recorder.now_s());
                }
            }
            logged_in
        })
    };

    // The load.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let late = AtomicU64::new(0);
    match args.rate {
        Some(rate) => {
            let mut sent: u64 = 0;
            while Instant::now() < end {
                // Arrival k is due at k / rate: those with k <= elapsed * rate.
                let due_count = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
                // At most a second's worth at once, so that a stalled
                // harness catches up in steps and still sees the end.
                let due_count = due_count.min(sent + rate.ceil() as u64);
                while sent < due_count {
                    let due = start + Duration::from_secs_f64(sent as f64 / rate);
                    sent += 1;
                    // Each arrival is a task of its own: no send waits for an
                    // earlier answer. A request started on time is timed from
                    // its start (the 1 ms timer's lateness is not the
                    // server's); one the harness started late (its CPU
                    // fell behind, maybe because the server took it) is
                    // timed from when it was due, and counted apart.
                    let now = Instant::now();
                    let from = if now.saturating_duration_since(due) > LATE {
                        late.fetch_add(1, Ordering::Relaxed);
                        due
                    } else {
                        now
                    };
                    if in_flight.load(Ordering::Relaxed) >= args.max_in_flight {
                        run.recorder.unsent("backlog", "backlog", 1);
                        continue;
                    }
                    if Instant::now() >= end {
                        break;
                    }
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    let run = run.clone();
                    let in_flight = in_flight.clone();
                    tokio::spawn(async move {
                        run.one(from).await;
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        None => {
            let loops = args.concurrency.unwrap_or(16);
            let mut tasks = Vec::new();
            for _ in 0..loops {
                let run = run.clone();
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < end {
                        if run.ready.users.read().map(|u| u.is_empty()).unwrap_or(true) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        run.one(Instant::now()).await;
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        }
    }
    // Requests still in flight finish (or time out).
    let drain = Instant::now() + args.timeout * 2 + Duration::from_secs(1);
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    // What never ended is counted, not dropped.
    run.recorder.unsent(
        "unfinished",
        "unfinished",
        in_flight.load(Ordering::Relaxed) as u64,
    );
    let _ = run.recorder.roll();
    stop.cancel();
    logins.abort();
    for task in background {
        let _ = task.await;
    }
    progress.finish_and_clear();
    let logged_in = run.logged_in.load(Ordering::Relaxed) as u32;

    // After the load: terminals hang up, the read-back, the clean-up.
    let all_users: Vec<Arc<User>> = users.clone();
    {
        use futures_util::stream::{self, StreamExt};
        let timeout = args.timeout.min(Duration::from_secs(10));
        stream::iter(&all_users)
            .for_each_concurrent(32, |user| ops::close_terminals(user, timeout))
            .await;
    }
    if let Some(command) = &args.before_verify {
        let status = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .status()
            .await
            .context("--before-verify")?;
        if !status.success() {
            eprintln!(
                "warning: --before-verify {command:?} failed ({status}); reading back anyway"
            );
        }
    }
    let verification = if args.verify && args.scenario.writes() {
        // The server first (after chaos it may still be restarting).
        let _ = wait_ready(&admin, Duration::from_secs(120)).await;
        Some(verify(&all_users, &run.context.directory, args.timeout).await)
    } else {
        None
    };
    if !args.keep_files && args.scenario.writes() {
        clean_up(&all_users, &run.context.directory, args.timeout).await;
    }
    // Processes of the run's users (by the uids their logins named) that
    // no worker of this master owns. Hung-up terminals' programs and
    // cancelled tasks get the server's grace (5 s by default) to end.
    let uids: std::collections::BTreeSet<u32> = all_users.iter().filter_map(|u| u.uid()).collect();
    let orphans = match master.lock().ok().and_then(|m| *m) {
        Some(pid) if !uids.is_empty() => {
            let mut left = soak::orphans(pid, &uids);
            let patience = Instant::now() + Duration::from_secs(10);
            while !left.is_empty() && Instant::now() < patience {
                tokio::time::sleep(Duration::from_millis(250)).await;
                left = soak::orphans(pid, &uids);
            }
            Some(left)
        }
        _ => None,
    };

    let mut by_slot: BTreeMap<Option<u32>, u32> = BTreeMap::new();
    for user in &all_users {
        if user.session().is_some() {
            *by_slot.entry(user.slot()).or_default() += 1;
        }
    }
    let recorded = run.recorder.finish(&by_slot);
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let machine = crate::report::Machine::current();
    let mut results = RunResults {
        schema: SCHEMA.to_string(),
        harness_version: env!("CARGO_PKG_VERSION").to_string(),
        started_unix,
        target: target.url.clone(),
        settings: Settings {
            scenario: args.scenario.name().to_string(),
            users: movers.len() as u32,
            ramp_s: args.ramp.as_secs_f64(),
            duration_s: args.duration.as_secs_f64(),
            rate: args.rate,
            concurrency: if args.rate.is_some() {
                None
            } else {
                Some(args.concurrency.unwrap_or(16))
            },
            chaos: args.chaos.clone(),
            sample_s: args.sample.map(|d| d.as_secs_f64()),
        },
        machine: MachineInfo {
            cpus: machine.cpus,
            kernel: machine.kernel,
        },
        elapsed_s,
        total: recorded.total,
        operations: recorded.operations,
        slots: recorded.slots,
        timeline: recorded.timeline,
        chaos: events.lock().map(|e| e.clone()).unwrap_or_default(),
        verification,
        growth: soak::growth(&samples, warm_up.as_secs_f64(), args.growth_limit),
        samples,
        slo: Vec::new(),
        orphans,
        users_logged_in: logged_in,
        arrivals_without_user: run.no_user.load(Ordering::Relaxed),
        harness_late: late.load(Ordering::Relaxed),
    };
    if let Some(objectives) = &objectives {
        results.slo = results::check_slo(&results, objectives);
    }
    print!("{}", results.table());
    if let Some(old) = &compare_with {
        print!("{}", results::compare(old, &results));
    }
    if let Some(path) = &args.out {
        std::fs::write(path, results.to_json()?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    write_reports(&results, args.html.as_deref(), args.svg_dir.as_deref())?;
    if results.users_logged_in == 0 || results.total.count == 0 {
        bail!("no user could log in or no request was made: nothing was measured (see the logins above)");
    }
    let lost = results
        .verification
        .as_ref()
        .is_some_and(|v| !v.lost.is_empty() || !v.unverified.is_empty());
    let violated = results.slo.iter().any(|check| !check.met);
    if lost {
        eprintln!("acknowledged writes were lost or could not be read back: see above");
    }
    if violated {
        eprintln!("--slo: objectives violated: see above");
    }
    Ok(if lost || violated {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Waits until `/readyz` answers 200; false when `patience` ends first.
async fn wait_ready(pool: &Pool, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        let ready = Call::new(Method::GET, "/readyz");
        if let Ok(answer) = pool.send(ready, None, Duration::from_secs(5)).await {
            if answer.status.is_success() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Reads back every acknowledged write, 32 at a time. A file that is gone
/// (404) or holds other bytes is lost; a read that gets no answer is tried
/// again for up to a minute, then the file is unverified (not lost: the
/// server did not say).
async fn verify(users: &[Arc<User>], directory: &str, timeout: Duration) -> Verification {
    use futures_util::stream::{self, StreamExt};
    let mut work = Vec::new();
    for user in users {
        if let Ok(files) = user.files.lock() {
            for file in files.iter() {
                work.push((user.clone(), *file));
            }
        }
    }
    let acknowledged = work.len() as u64;
    let timeout = timeout.min(Duration::from_secs(30));
    let outcomes: Vec<Option<(bool, LostWrite)>> = stream::iter(work)
        .map(|(user, file)| async move {
            let session = user.session();
            let path = file.path(directory, user.index);
            let url = ops::file_url(&path);
            let give_up = Instant::now() + Duration::from_secs(60);
            let (lost, reason) = loop {
                let failure = match user
                    .pool
                    .send(Call::new(Method::GET, &url), session.as_deref(), timeout)
                    .await
                {
                    Ok(answer) if answer.status.as_u16() == 404 => {
                        break (true, "missing".to_string())
                    }
                    Ok(answer) => match status_kind(&answer) {
                        Ok(()) if file.matches(&answer.body) => return None,
                        Ok(()) => break (true, format!("changed ({} bytes)", answer.body.len())),
                        Err(kind) => kind,
                    },
                    Err(kind) => kind,
                };
                if Instant::now() > give_up {
                    break (false, format!("no answer to read it back: {failure}"));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            Some((
                lost,
                LostWrite {
                    user: user.account.name.clone(),
                    path,
                    reason,
                },
            ))
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut verification = Verification {
        acknowledged,
        checked: acknowledged,
        ..Verification::default()
    };
    for (lost, write) in outcomes.into_iter().flatten() {
        if lost {
            verification.lost.push(write);
        } else {
            verification.checked -= 1;
            verification.unverified.push(write);
        }
    }
    verification
}

/// Deletes the run's directory from each workspace.
async fn clean_up(users: &[Arc<User>], directory: &str, timeout: Duration) {
    use futures_util::stream::{self, StreamExt};
    let path = format!("{}?recursive=true", ops::file_url(directory));
    stream::iter(users.iter().filter(|u| u.session().is_some()))
        .for_each_concurrent(16, |user| {
            let path = path.clone();
            async move {
                let session = user.session();
                let _ = user
                    .pool
                    .send(
                        Call::new(Method::DELETE, &path),
                        session.as_deref(),
                        timeout,
                    )
                    .await;
            }
        })
        .await;
}
