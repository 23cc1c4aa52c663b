//! Users' web apps: a single-user program serving HTTP (OpenCode, Jupyter
//! Server, code-server …) run in the user's sandbox from the operator's
//! definition ([`AppSpec`], sent by the master with each start), which the
//! master's proxy reaches directly on its Unix socket or loopback port.
//!
//! One supervisor future per running app starts its program with a fresh
//! secret, polls its `ready_path` until it answers 2xx (or the start
//! timeout: `failed`), then watches it: a crash is restarted after an
//! exponential back-off, and [`MAX_CRASHES`] within [`CRASH_WINDOW`] make
//! it `failed`; no traffic for its idle timeout stops it. Its output's last
//! lines are kept for the user. Every state change goes to the master as an
//! [`Event::AppChanged`] (it counts apps for the server's limits).
//!
//! Isolation: a Unix socket lives in `<scratch>/apps/`, a directory of the
//! user's own uid (mode 0700), so another uid cannot connect; a TCP port
//! is open to every local process, and only the launch's secret (sent by
//! the proxy, never shown to the user) keeps others out.

use crate::tasks::launch::{Group, Launch, Launcher};
use crate::workspace::Workspaces;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warren_protocol::stream::FrameSender;
use warren_protocol::{
    AppEndpoint, AppInfo, AppListen, AppSpec, AppState, Body, Event, Frame, OpError, Reply,
    UserCtx, UserId,
};

/// Crashes within [`CRASH_WINDOW`] that make an app `failed`.
const MAX_CRASHES: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// The first restart's wait; doubled after each crash, up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(16);
/// Between readiness probes: often at first (most apps answer within a
/// second or two, and each wait adds to the user's), then less.
const PROBE_EVERY: Duration = Duration::from_millis(10);
const PROBE_EVERY_LATER: Duration = Duration::from_millis(100);
const PROBE_OFTEN_FOR: Duration = Duration::from_secs(3);
/// One probe's patience.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Output lines kept, and the longest line kept whole.
const TAIL_LINES: usize = 40;
const LINE_LIMIT: usize = 400;
/// Between SIGTERM and SIGKILL when an app stops by itself (idle, failed).
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The longest Unix socket path (`sun_path` holds 108 bytes with its NUL).
const SOCKET_PATH_MAX: usize = 107;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// The apps this worker runs, by user and app name.
pub struct Apps {
    workspaces: Arc<Workspaces>,
    launcher: Arc<Launcher>,
    events: FrameSender,
    users_dir: PathBuf,
    apps: Mutex<HashMap<(UserId, String), Arc<App>>>,
}

struct App {
    user: UserId,
    name: String,
    inner: Mutex<Inner>,
    /// Bumped on every state change (waiters for `running` watch it).
    changed: watch::Sender<u64>,
}

struct Inner {
    user: UserCtx,
    spec: AppSpec,
    state: AppState,
    since_ms: i64,
    last_activity: Instant,
    last_activity_ms: i64,
    /// Which start the supervisor serves: a supervisor whose run is no
    /// longer current changes nothing.
    run: u64,
    stop: CancellationToken,
    pid: Option<u32>,
    /// The uid the app runs as (whose its socket must be).
    owner: Option<u32>,
    group: Option<Arc<Group>>,
    endpoint: Option<(AppEndpoint, String)>,
    restarts: u32,
    message: Option<String>,
    tail: VecDeque<String>,
}

impl App {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn info(&self, with_endpoint: bool) -> AppInfo {
        let inner = self.lock();
        let running = matches!(inner.state, AppState::Running | AppState::Starting);
        AppInfo {
            user: self.user,
            user_name: inner.user.name.clone(),
            name: self.name.clone(),
            state: inner.state,
            since_ms: inner.since_ms,
            last_activity_ms: inner.last_activity_ms,
            memory_bytes: match (&inner.group, running) {
                (Some(group), true) => group.memory_bytes(),
                _ => 0,
            },
            pid: inner.pid.filter(|_| running),
            restarts: inner.restarts,
            message: inner.message.clone(),
            output_tail: inner.tail.iter().cloned().collect(),
            endpoint: if with_endpoint && inner.state == AppState::Running {
                inner.endpoint.clone()
            } else {
                None
            },
            owner_uid: inner.owner,
        }
    }

    fn touch(inner: &mut Inner) {
        inner.last_activity = Instant::now();
        inner.last_activity_ms = now_ms();
    }

    /// Runs `change` if `run` is still the current start; says whether.
    fn update(&self, run: u64, change: impl FnOnce(&mut Inner)) -> bool {
        let mut inner = self.lock();
        if inner.run != run {
            return false;
        }
        change(&mut inner);
        drop(inner);
        self.changed.send_modify(|n| *n += 1);
        true
    }

    fn set_state(inner: &mut Inner, state: AppState, message: Option<String>) {
        inner.state = state;
        inner.since_ms = now_ms();
        inner.message = message;
        if state != AppState::Running && state != AppState::Starting {
            inner.pid = None;
            inner.endpoint = None;
        }
    }

    fn keep_line(&self, line: &str) {
        let mut line = line.trim_end().to_string();
        if line.len() > LINE_LIMIT {
            let mut cut = LINE_LIMIT;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        let mut inner = self.lock();
        if inner.tail.len() == TAIL_LINES {
            inner.tail.pop_front();
        }
        inner.tail.push_back(line);
    }
}

/// How one launch of an app ended before it was stopped on purpose.
enum Ended {
    /// Stopped (by a request, idle, or the worker): nothing more to do.
    Stopped,
    /// The program exited (or could not answer): restart or fail.
    Crashed(String),
    /// Failed for good (did not start, or no answer in time).
    Failed(String),
}

impl Apps {
    pub fn new(
        users_dir: PathBuf,
        workspaces: Arc<Workspaces>,
        launcher: Arc<Launcher>,
        events: FrameSender,
    ) -> Arc<Apps> {
        Arc::new(Apps {
            workspaces,
            launcher,
            events,
            users_dir,
            apps: Mutex::new(HashMap::new()),
        })
    }

    fn lock_apps(&self) -> MutexGuard<'_, HashMap<(UserId, String), Arc<App>>> {
        self.apps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Apps running or starting, for the heartbeat.
    pub fn running_count(&self) -> usize {
        self.lock_apps()
            .values()
            .filter(|app| matches!(app.lock().state, AppState::Running | AppState::Starting))
            .count()
    }

    fn announce(&self, app: &App, state: AppState, start: Option<Duration>) {
        let _ = self.events.send(Frame {
            id: 0,
            body: Body::Event(Event::AppChanged {
                user: app.user,
                name: app.name.clone(),
                state,
                start_micros: start.map(|d| d.as_micros() as u64),
            }),
        });
    }

    /// Starts the app unless it runs (see [`warren_protocol::AppOp::Ensure`]).
    pub async fn ensure(
        self: &Arc<Self>,
        user: UserCtx,
        spec: AppSpec,
        wait: Duration,
        may_start: bool,
        retry: bool,
    ) -> Result<Reply, OpError> {
        check_spec(&spec)?;
        let key = (user.id, spec.name.clone());
        let app = {
            let mut apps = self.lock_apps();
            apps.entry(key)
                .or_insert_with(|| {
                    Arc::new(App {
                        user: user.id,
                        name: spec.name.clone(),
                        inner: Mutex::new(Inner {
                            user: user.clone(),
                            spec: spec.clone(),
                            state: AppState::Stopped,
                            since_ms: now_ms(),
                            last_activity: Instant::now(),
                            last_activity_ms: now_ms(),
                            run: 0,
                            stop: CancellationToken::new(),
                            pid: None,
                            owner: None,
                            group: None,
                            endpoint: None,
                            restarts: 0,
                            message: None,
                            tail: VecDeque::new(),
                        }),
                        changed: watch::channel(0).0,
                    })
                })
                .clone()
        };
        // Counted before the app's own lock is taken (locks go map, then
        // app, everywhere).
        let others_running = if spec.max_per_user > 0 {
            self.count_of(user.id, &app)
        } else {
            0
        };
        let start = {
            let mut inner = app.lock();
            App::touch(&mut inner);
            match inner.state {
                AppState::Running | AppState::Starting => None,
                AppState::Failed if !retry => None,
                AppState::Stopped | AppState::Failed => {
                    if !may_start {
                        // The master fills in the server's limit.
                        return Err(OpError::TooManyApps {
                            app: spec.name.clone(),
                            limit: 0,
                            per_user: false,
                        });
                    }
                    self.launcher.check()?;
                    if spec.max_per_user > 0 && others_running >= spec.max_per_user as usize {
                        return Err(OpError::TooManyApps {
                            app: spec.name.clone(),
                            limit: spec.max_per_user,
                            per_user: true,
                        });
                    }
                    inner.user = user.clone();
                    inner.spec = spec.clone();
                    inner.run += 1;
                    inner.stop = CancellationToken::new();
                    inner.restarts = 0;
                    inner.tail.clear();
                    App::set_state(&mut inner, AppState::Starting, None);
                    Some((inner.run, inner.stop.clone()))
                }
            }
        };
        if let Some((run, stop)) = start {
            app.changed.send_modify(|n| *n += 1);
            self.announce(&app, AppState::Starting, None);
            tokio::spawn(self.clone().supervise(app.clone(), run, stop));
        }
        let mut changed = app.changed.subscribe();
        let _ = tokio::time::timeout(
            wait,
            changed.wait_for(|_| app.lock().state != AppState::Starting),
        )
        .await;
        Ok(Reply::App(app.info(true)))
    }

    /// The user's apps running or starting, but `except`.
    fn count_of(&self, user: UserId, except: &Arc<App>) -> usize {
        self.lock_apps()
            .values()
            .filter(|app| app.user == user && !Arc::ptr_eq(app, except))
            .filter(|app| matches!(app.lock().state, AppState::Running | AppState::Starting))
            .count()
    }

    fn find(&self, user: UserId, name: &str) -> Option<Arc<App>> {
        self.lock_apps().get(&(user, name.to_string())).cloned()
    }

    pub fn touch(&self, user: &UserCtx, name: &str) -> Result<Reply, OpError> {
        let app = self
            .find(user.id, name)
            .ok_or_else(|| OpError::NotFound(format!("app {name} is not running")))?;
        let mut inner = app.lock();
        if inner.state != AppState::Running {
            return Err(OpError::NotFound(format!("app {name} is not running")));
        }
        App::touch(&mut inner);
        Ok(Reply::Done)
    }

    /// Stops the app: it is `stopped` at once, its processes get `grace`.
    pub fn stop(&self, user: &UserCtx, name: &str, grace: Duration) -> Result<Reply, OpError> {
        if let Some(app) = self.find(user.id, name) {
            self.stop_app(&app, grace, "stopped on request");
        }
        Ok(Reply::Done)
    }

    pub fn stop_all(&self, user: &UserCtx, grace: Duration) -> Result<Reply, OpError> {
        let apps: Vec<Arc<App>> = self
            .lock_apps()
            .values()
            .filter(|app| app.user == user.id)
            .cloned()
            .collect();
        for app in apps {
            self.stop_app(&app, grace, "stopped: the account was disabled or deleted");
        }
        Ok(Reply::Done)
    }

    fn stop_app(&self, app: &Arc<App>, grace: Duration, why: &str) {
        let (stopped, group, stop) = {
            let mut inner = app.lock();
            let was = inner.state;
            if was == AppState::Stopped {
                return;
            }
            inner.run += 1;
            let group = inner.group.take();
            App::set_state(&mut inner, AppState::Stopped, Some(why.to_string()));
            (was != AppState::Failed, group, inner.stop.clone())
        };
        app.changed.send_modify(|n| *n += 1);
        stop.cancel();
        if let Some(group) = group {
            tokio::spawn(terminate(group, grace));
        }
        if stopped {
            self.announce(app, AppState::Stopped, None);
        }
    }

    pub fn list(&self, user: &UserCtx) -> Reply {
        let mut apps: Vec<AppInfo> = self
            .lock_apps()
            .values()
            .filter(|app| app.user == user.id)
            .map(|app| app.info(false))
            .collect();
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        Reply::Apps(apps)
    }

    pub fn list_all(&self) -> Reply {
        let mut apps: Vec<AppInfo> = self
            .lock_apps()
            .values()
            .map(|app| app.info(false))
            .filter(|info| info.state != AppState::Stopped)
            .collect();
        apps.sort_by(|a, b| (&a.user_name, &a.name).cmp(&(&b.user_name, &b.name)));
        Reply::Apps(apps)
    }

    /// The worker is exiting: every app's processes die now.
    pub fn kill_all(&self) {
        for app in self.lock_apps().values() {
            let mut inner = app.lock();
            inner.run += 1;
            inner.stop.cancel();
            if let Some(group) = inner.group.take() {
                group.kill_now();
            }
        }
    }

    /// Runs the app until it is stopped or fails: starts, probes, watches,
    /// restarts after crashes.
    async fn supervise(self: Arc<Self>, app: Arc<App>, run: u64, stop: CancellationToken) {
        let mut crashes: VecDeque<Instant> = VecDeque::new();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let ended = self.run_once(&app, run, &stop).await;
            let (failed, why) = match ended {
                Ended::Stopped => return,
                Ended::Failed(why) => (true, why),
                Ended::Crashed(why) => {
                    let now = Instant::now();
                    crashes.push_back(now);
                    while crashes
                        .front()
                        .is_some_and(|at| now.duration_since(*at) > CRASH_WINDOW)
                    {
                        crashes.pop_front();
                    }
                    if crashes.len() >= MAX_CRASHES {
                        let why = format!(
                            "{why}; it crashed {} times within {} s, so it is not restarted",
                            crashes.len(),
                            CRASH_WINDOW.as_secs()
                        );
                        (true, why)
                    } else {
                        (false, why)
                    }
                }
            };
            if failed {
                tracing::info!(user = %app.user, app = %app.name, reason = %why, "app failed");
                if app.update(run, |inner| {
                    App::set_state(inner, AppState::Failed, Some(why));
                    inner.group = None;
                }) {
                    self.announce(&app, AppState::Failed, None);
                }
                return;
            }
            tracing::info!(user = %app.user, app = %app.name, reason = %why, "app crashed; restarting");
            let announce = app.update(run, |inner| {
                let message = format!("{why}; restarting in {} ms", backoff.as_millis());
                App::set_state(inner, AppState::Starting, Some(message));
                inner.restarts += 1;
                inner.group = None;
            });
            if !announce {
                return;
            }
            self.announce(&app, AppState::Starting, None);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One launch: start, wait until ready, watch until it ends.
    async fn run_once(&self, app: &Arc<App>, run: u64, stop: &CancellationToken) -> Ended {
        let started = Instant::now();
        let (user, spec) = {
            let inner = app.lock();
            (inner.user.clone(), inner.spec.clone())
        };
        let launched = match self.launch(app, &user, &spec).await {
            Ok(launched) => launched,
            Err(why) => return Ended::Failed(why),
        };
        let Launched {
            mut child,
            group,
            endpoint,
            secret,
            ready_header,
            ready_path,
        } = launched;
        let pid = child.id();
        // Whose the app's socket must be: its process's uid (a path the
        // user controls could lead elsewhere; the kernel says who listens).
        let owner = pid.and_then(process_uid);
        let current = app.update(run, |inner| {
            inner.pid = pid;
            inner.owner = owner;
            inner.group = Some(group.clone());
        });
        if !current {
            // Stopped while starting.
            terminate(group, Duration::ZERO).await;
            return Ended::Stopped;
        }
        let deadline = Duration::from_millis(spec.start_timeout_ms.max(1));
        let probing = wait_ready(
            &endpoint,
            owner,
            &ready_path,
            ready_header.as_ref(),
            deadline,
        );
        let outcome = tokio::select! {
            ready = probing => ready.map_err(|()| Ended::Failed(format!(
                "it did not answer {ready_path} with a 2xx within {} ms",
                deadline.as_millis()
            ))),
            status = child.wait() => Err(Ended::Crashed(exit_words(status, "while starting"))),
            () = stop.cancelled() => Err(Ended::Stopped),
        };
        if let Err(ended) = outcome {
            terminate(group, STOP_GRACE).await;
            let _ = child.wait().await;
            return ended;
        }
        let took = started.elapsed();
        let running = app.update(run, |inner| {
            App::set_state(inner, AppState::Running, None);
            inner.endpoint = Some((endpoint.clone(), secret.clone()));
            App::touch(inner);
        });
        if !running {
            terminate(group, Duration::ZERO).await;
            return Ended::Stopped;
        }
        tracing::info!(user = %app.user, app = %app.name, millis = took.as_millis() as u64, "app running");
        self.announce(app, AppState::Running, Some(took));
        let idle = idle_timer(app.clone(), spec.idle_timeout_ms);
        tokio::select! {
            status = child.wait() => {
                group.kill().await;
                group.remove();
                Ended::Crashed(exit_words(status, "while running"))
            }
            () = idle => {
                let minutes = spec.idle_timeout_ms as f64 / 60_000.0;
                let why = format!("stopped after {minutes:.1} min without traffic");
                tracing::info!(user = %app.user, app = %app.name, "app idle; stopping");
                if app.update(run, |inner| {
                    App::set_state(inner, AppState::Stopped, Some(why));
                    inner.group = None;
                }) {
                    self.announce(app, AppState::Stopped, None);
                }
                terminate(group, STOP_GRACE).await;
                let _ = child.wait().await;
                Ended::Stopped
            }
            () = stop.cancelled() => {
                // Whoever stopped it terminates its group.
                let _ = child.wait().await;
                Ended::Stopped
            }
        }
    }

    /// Starts the app's program in the user's sandbox.
    async fn launch(
        &self,
        app: &Arc<App>,
        user: &UserCtx,
        spec: &AppSpec,
    ) -> Result<Launched, String> {
        let workspaces = self.workspaces.clone();
        let (id, uid) = (user.id, user.uid);
        crate::ops::blocking(move || workspaces.open_as(id, uid).map(|_| ()))
            .await
            .map_err(|err| format!("cannot open the workspace: {err}"))?;
        let secret = random_secret().map_err(|err| format!("no randomness: {err}"))?;
        let endpoint = match spec.listen {
            AppListen::Unix => {
                let dir = self.users_dir.join(user.id.to_string()).join("scratch");
                let socket = dir.join("apps").join(format!("{}.sock", spec.name));
                let bytes = socket.as_os_str().as_encoded_bytes().to_vec();

                if bytes.len() > SOCKET_PATH_MAX {
                    return Err(format!(
                        "the socket path {} is longer than {SOCKET_PATH_MAX} bytes: use a shorter \
                         --data-dir or listen = \"tcp\"",
                        socket.display()
                    ));
                }
                let (uid, name) = (user.uid, spec.name.clone());
                crate::ops::blocking(move || prepare_socket_dir(&dir, &name, uid))
                    .await
                    .map_err(|err| format!("cannot prepare the app's socket: {err}"))?;
                AppEndpoint::Unix(bytes)
            }
            AppListen::Tcp => AppEndpoint::Tcp(
                free_port()
                    .map_err(|err| format!("cannot find a free port on 127.0.0.1: {err}"))?,
            ),
        };
        let (socket, port) = match &endpoint {
            AppEndpoint::Unix(path) => (String::from_utf8_lossy(path).into_owned(), String::new()),
            AppEndpoint::Tcp(port) => (String::new(), port.to_string()),
        };
        let filler = Placeholders {
            socket,
            port,
            base_url: spec.base_url.clone(),
            workspace: self
                .users_dir
                .join(user.id.to_string())
                .join("workspace")
                .display()
                .to_string(),
            user: user.name.clone(),
            secret: secret.clone(),
        };
        let argv = spec
            .argv
            .iter()
            .map(|arg| filler.fill(arg).into())
            .collect();
        let env = spec
            .env
            .iter()
            .map(|(key, value)| (key.into(), filler.fill(value).into()))
            .collect();
        let ready_header = spec.auth.header(&user.name, &secret);
        let ready_path = filler.fill(&spec.ready_path);
        let (output, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|err| format!("cannot make a pipe: {err}"))?;
        let writer_too = writer
            .try_clone()
            .map_err(|err| format!("cannot make a pipe: {err}"))?;
        let launch = Launch {
            argv,
            cwd: String::new(),
            env,
            // Its own random name: cgroup paths are readable by everyone.
            group: format!(
                "app-{}-{}",
                spec.name,
                &random_secret().map_err(|err| format!("no randomness: {err}"))?[..12]
            ),
            stdin: std::process::Stdio::null(),
            stdout: writer.into(),
            stderr: writer_too.into(),
            terminal: false,
            read_execute: spec.read_execute.iter().map(PathBuf::from).collect(),
            read_only: spec.read_only.iter().map(PathBuf::from).collect(),
        };
        let spawned = self
            .launcher
            .spawn(user, launch)
            .await
            .map_err(|err| format!("cannot start {:?}: {err}", spec.argv[0]))?;
        let output = tokio::net::unix::pipe::Receiver::from_owned_fd(output)
            .map_err(|err| format!("cannot read the app's output: {err}"))?;
        tokio::spawn(keep_output(app.clone(), output));
        Ok(Launched {
            child: spawned.child,
            group: Arc::new(Group::from(spawned.group)),
            endpoint,
            secret,
            ready_header,
            ready_path,
        })
    }
}

struct Launched {
    child: tokio::process::Child,
    group: Arc<Group>,
    endpoint: AppEndpoint,
    secret: String,
    ready_header: Option<(String, String)>,
    ready_path: String,
}

fn check_spec(spec: &AppSpec) -> Result<(), OpError> {
    let name_ok = !spec.name.is_empty()
        && spec.name.len() <= 64
        && spec
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(OpError::Invalid(format!("bad app name {:?}", spec.name)));
    }
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return Err(OpError::Invalid("the app's command is empty".into()));
    }
    if !spec.ready_path.starts_with('/') && !spec.ready_path.starts_with("{base_url}") {
        return Err(OpError::Invalid("ready_path must start with /".into()));
    }
    Ok(())
}

/// Fills in an app definition's placeholders.
/// The values of an app definition's placeholders for one launch.
pub struct Placeholders {
    pub socket: String,
    pub port: String,
    pub base_url: String,
    pub workspace: String,
    pub user: String,
    pub secret: String,
}

impl Placeholders {
    /// `template` with every placeholder replaced.
    pub fn fill(&self, template: &str) -> String {
        template
            .replace("{socket}", &self.socket)
            .replace("{port}", &self.port)
            .replace("{base_url}", &self.base_url)
            .replace("{workspace}", &self.workspace)
            .replace("{user}", &self.user)
            .replace("{secret}", &self.secret)
    }
}

/// 32 random bytes, hex.
fn random_secret() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A port on 127.0.0.1 nobody listens on now (the kernel's pick).
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// `<scratch>/apps`, the user's own and closed to others, with no old
/// socket `name` in it. The user owns `scratch/` and may swap `apps` for a
/// symbolic link at any moment, so everything happens through descriptors
/// opened without following links: this (root) process never creates,
/// changes or removes anything elsewhere.
fn prepare_socket_dir(
    scratch: &std::path::Path,
    name: &str,
    uid: Option<u32>,
) -> Result<(), OpError> {
    use rustix::fs::{AtFlags, Mode, OFlags, CWD};
    let io =
        |err: rustix::io::Errno| OpError::Internal(format!("the apps' socket directory: {err}"));
    let dir_flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY;
    // `<users>/<id>/` is warren's (root's), so `scratch` itself is not the
    // user's to replace; it is made by the sandbox before any launch.
    std::fs::create_dir_all(scratch).map_err(|err| OpError::Internal(err.to_string()))?;
    let scratch = rustix::fs::openat(CWD, scratch, dir_flags, Mode::empty()).map_err(io)?;
    match rustix::fs::mkdirat(&scratch, "apps", Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(err) => return Err(io(err)),
    }
    let apps = rustix::fs::openat(&scratch, "apps", dir_flags, Mode::empty()).map_err(|err| {
        OpError::Internal(format!(
            "scratch/apps is not a directory warren can use ({err}); remove it"
        ))
    })?;
    let stat = rustix::fs::fstat(&apps).map_err(io)?;
    if let Some(uid) = uid {
        if stat.st_uid != uid {
            rustix::fs::fchown(
                &apps,
                Some(rustix::process::Uid::from_raw(uid)),
                Some(rustix::process::Gid::from_raw(uid)),
            )
            .map_err(io)?;
        }
    }
    if stat.st_mode & 0o077 != 0 {
        rustix::fs::fchmod(&apps, Mode::from_raw_mode(0o700)).map_err(io)?;
    }
    match rustix::fs::unlinkat(&apps, format!("{name}.sock"), AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(err) => Err(io(err)),
    }
}

/// Keeps the last lines of the app's output.
async fn keep_output(app: Arc<App>, output: tokio::net::unix::pipe::Receiver) {
    let mut lines = tokio::io::BufReader::new(output.take(u64::MAX)).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        app.keep_line(&String::from_utf8_lossy(&line));
    }
}

/// SIGTERM to the app's processes, SIGKILL after `grace`.
async fn terminate(group: Arc<Group>, grace: Duration) {
    if !grace.is_zero() {
        group.terminate();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !group.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    group.kill().await;
    group.remove();
}

/// Resolves when the app saw no traffic for `idle_ms` (never for 0).
async fn idle_timer(app: Arc<App>, idle_ms: u64) {
    if idle_ms == 0 {
        return std::future::pending().await;
    }
    let idle = Duration::from_millis(idle_ms);
    loop {
        let last = app.lock().last_activity;
        let quiet = last.elapsed();
        if quiet >= idle {
            return;
        }
        tokio::time::sleep(idle - quiet).await;
    }
}

fn exit_words(status: std::io::Result<std::process::ExitStatus>, when: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("it exited with code {code} {when}"),
            (_, Some(signal)) => format!("it was killed by signal {signal} {when}"),
            _ => format!("it ended {when}"),
        },
        Err(err) => format!("cannot wait for it: {err}"),
    }
}

/// The real uid of process `pid` (from its status: the `/proc/<pid>`
/// directory is root's for a program that cannot be read).
fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The uid owning the TCP socket listening on 127.0.0.1:`port`, if any
/// (from `/proc/net/tcp`): who a connection to that port reaches.
pub fn listener_owner(port: u16) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    listener_in(&text, port)
}

/// [`listener_owner`] over the text of `/proc/net/tcp`.
fn listener_in(text: &str, port: u16) -> Option<u32> {
    // 127.0.0.1 as the kernel writes it (its 32 bits little-endian).
    let wanted = format!("0100007F:{port:04X}");
    text.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let state = fields.nth(1)?;
        if !local.eq_ignore_ascii_case(&wanted) || state != "0A" {
            return None;
        }
        // tx_queue:rx_queue tr:tm->when retrnsmt uid
        fields.nth(3)?.parse().ok()
    })
}

/// Probes `path` until a 2xx or `deadline`.
async fn wait_ready(
    endpoint: &AppEndpoint,
    owner: Option<u32>,
    path: &str,
    header: Option<&(String, String)>,
    deadline: Duration,
) -> Result<(), ()> {
    let started = Instant::now();
    let until = started + deadline;
    loop {
        let probed = tokio::time::timeout(PROBE_TIMEOUT, probe(endpoint, owner, path, header));
        if let Ok(Ok(true)) = probed.await {
            return Ok(());
        }
        let pause = if started.elapsed() < PROBE_OFTEN_FOR {
            PROBE_EVERY
        } else {
            PROBE_EVERY_LATER
        };
        let now = Instant::now();
        if now >= until {
            return Err(());
        }
        tokio::time::sleep(pause.min(until - now)).await;
    }
}

/// One `GET path` over a fresh connection: whether it answered 2xx. A
/// Unix socket must be `owner`'s (else nothing is sent: no secret goes to
/// another user's listener).
async fn probe(
    endpoint: &AppEndpoint,
    owner: Option<u32>,
    path: &str,
    header: Option<&(String, String)>,
) -> std::io::Result<bool> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some((name, value)) = header {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut head = [0u8; 16];
    let read = match endpoint {
        AppEndpoint::Unix(path) => {
            use std::os::unix::ffi::OsStrExt;
            let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
            let mut stream = tokio::net::UnixStream::connect(path).await?;
            let peer = rustix::net::sockopt::socket_peercred(&stream)?;
            if owner.is_some_and(|owner| peer.uid.as_raw() != owner) {
                return Ok(false);
            }
            stream.write_all(request.as_bytes()).await?;
            stream.read_exact(&mut head[..12]).await?
        }
        AppEndpoint::Tcp(port) => {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", *port)).await?;
            // Until the app binds its port another user may hold it: the
            // credential goes to the app's uid only.
            if owner.is_some_and(|owner| listener_owner(*port) != Some(owner)) {
                return Ok(false);
            }
            stream.write_all(request.as_bytes()).await?;
            stream.read_exact(&mut head[..12]).await?
        }
    };
    // "HTTP/1.1 200"
    let status = &head[9..read.min(12)];
    Ok(head.starts_with(b"HTTP/1.") && status.first() == Some(&b'2'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listening_socket_on_loopback_is_a_listener() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 200001        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A3C2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000 200002        0 2 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(listener_in(table, 8080), Some(200001));
        assert_eq!(listener_in(table, 0xA3C2), None);
        assert_eq!(listener_in(table, 80), None);
    }

    #[test]
    fn a_process_uid_is_its_real_uid() {
        let own = rustix::process::getuid().as_raw();
        assert_eq!(process_uid(std::process::id()), Some(own));
    }
}
