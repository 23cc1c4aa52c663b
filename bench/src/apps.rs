//! `warren-bench apps`: users' apps (issue #12), with the fixture app
//! (`tests/apps/fixture_app.py`) or any app of an `--apps-file`.
//!
//! - (a) spawn overhead: for each of `--samples` users, the time from
//!   their first proxied request (retried at once while it answers 503
//!   "starting") to the first 200; and, interleaved, the same command
//!   started directly by this process (no warren, no sandbox) and probed
//!   on its `ready_path` the same way. The overhead is the difference of
//!   the medians (target ≤ 50 ms; JupyterHub's spawn measured 4.1 s).
//! - (b) proxied small requests: `--concurrency` keep-alive connections
//!   each sending GETs one after another for `--seconds`, through warren
//!   and straight to the app's socket (with the app's credential), in
//!   alternating windows: requests per second, and their ratio (target
//!   ≥ 0.8).
//! - (c) memory: `--running` apps started for as many users; the master's
//!   and workers' resident memory before and after, per app (target
//!   ≤ 1 MiB), the apps' own apart.

use crate::files::memory::{Processes, Rss};
use crate::http::api;
use crate::http::load::{histogram, Percentiles};
use crate::http::{os_args, start_warren, stop};
use crate::AppsArgs;
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use warren_master::apps::{AppDef, AppsConfig};
use warren_protocol::{AppListen, AppSpec};

/// The uid (and gid) an app started directly runs as when the bench is root.
const NOBODY: u32 = 65534;

/// How often a starting app is asked again, on both sides of (a).
const RETRY_EVERY: Duration = Duration::from_millis(5);

#[derive(Debug, Serialize)]
pub struct AppsReport {
    pub app: String,
    pub samples: u32,
    /// First proxied request to first 200, through warren.
    pub warren_spawn: Percentiles,
    /// Launch to first 2xx on ready_path, started directly.
    pub direct_start: Percentiles,
    /// Median through warren minus median direct, nanoseconds.
    pub spawn_overhead_nanos: i64,
    pub concurrency: u32,
    pub seconds: f64,
    pub proxied_per_second: f64,
    pub direct_per_second: f64,
    pub proxied_latency: Percentiles,
    pub direct_latency: Percentiles,
    pub ratio: f64,
    pub running: u32,
    pub memory_before: Rss,
    pub memory_with_apps: Rss,
    /// Master and workers after − before, per app, bytes.
    pub warren_bytes_per_app: u64,
    /// The apps' own resident memory per app, bytes (their cgroups).
    pub app_bytes_per_app: u64,
}

impl AppsReport {
    pub fn table(&self) -> String {
        let ms = |nanos: u64| nanos as f64 / 1e6;
        format!(
            "apps ({app})\n\
             (a) spawn, {samples} users: through warren p50 {wp50:.1} ms p90 {wp90:.1} ms; \
             direct p50 {dp50:.1} ms p90 {dp90:.1} ms; overhead {over:.1} ms (target ≤ 50 ms)\n\
             (b) small GETs, {c} connections, {s:.0} s each: proxied {p:.0}/s (p50 {pp50:.2} ms, \
             p99 {pp99:.2} ms), direct {d:.0}/s (p50 {dp50b:.2} ms, p99 {dp99:.2} ms): \
             ratio {ratio:.2} (target ≥ 0.8)\n\
             (c) {n} running apps: warren {w:.0} KiB per app (target ≤ 1024 KiB), \
             the apps' own {a:.1} MiB each\n",
            app = self.app,
            samples = self.samples,
            wp50 = ms(self.warren_spawn.p50_ns),
            wp90 = ms(self.warren_spawn.p90_ns),
            dp50 = ms(self.direct_start.p50_ns),
            dp90 = ms(self.direct_start.p90_ns),
            over = self.spawn_overhead_nanos as f64 / 1e6,
            c = self.concurrency,
            s = self.seconds,
            p = self.proxied_per_second,
            pp50 = ms(self.proxied_latency.p50_ns),
            pp99 = ms(self.proxied_latency.p99_ns),
            d = self.direct_per_second,
            dp50b = ms(self.direct_latency.p50_ns),
            dp99 = ms(self.direct_latency.p99_ns),
            ratio = self.ratio,
            n = self.running,
            w = self.warren_bytes_per_app as f64 / 1024.0,
            a = self.app_bytes_per_app as f64 / 1024.0 / 1024.0,
        )
    }
}

/// The fixture's definition (the repository's own test app).
fn fixture_file(dir: &Path) -> Result<PathBuf> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/apps");
    let fixture = std::fs::canonicalize(&fixture)
        .with_context(|| format!("cannot find the fixture app in {}", fixture.display()))?;
    let text = format!(
        r#"
[apps.fixture]
command = ["/usr/bin/python3", "{dir}/fixture_app.py", "--socket", "{{socket}}", "--prefix", "{{base_url}}"]
ready_path = "{{base_url}}health"
auth = "bearer:{{secret}}"
env = {{ FIXTURE_SECRET = "{{secret}}" }}
read_execute = ["{dir}"]
"#,
        dir = fixture.display()
    );
    let file = dir.join("apps.toml");
    std::fs::write(&file, text).context("cannot write the apps file")?;
    Ok(file)
}

pub async fn run(args: &AppsArgs) -> Result<AppsReport> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let (file, name) = match (&args.apps_file, &args.app) {
        (Some(file), Some(name)) => (file.clone(), name.clone()),
        (None, None) => (fixture_file(dir.path())?, "fixture".to_string()),
        _ => bail!("--apps-file and --app go together"),
    };
    let config = AppsConfig::load(&file, &dir.path().join("data"))?;
    let def = config
        .apps
        .get(&name)
        .with_context(|| format!("{} defines no app {name}", file.display()))?
        .clone();
    let users = args.samples.max(args.running) + 1;
    eprintln!("starting warren with {} workers ...", args.workers);
    let mut extra = os_args(["--token-rate", "1000000", "--apps"]);
    extra.push(file.clone().into());
    let warren = start_warren(dir.path(), args.workers, extra).await?;
    let outcome = measure(args, &def, users, &warren, dir.path()).await;
    stop(warren.process).await;
    outcome
}

async fn measure(
    args: &AppsArgs,
    def: &AppDef,
    users: u32,
    warren: &crate::http::Warren,
    dir: &Path,
) -> Result<AppsReport> {
    let server = warren.process.address;
    let master = warren
        .process
        .pid()
        .context("the warren master has no pid")?;
    let mut processes = Processes::find(master)?;
    let admin = api::session(server, "admin", &warren.admin_password).await?;
    let password = crate::http::random_hex(16)?;
    eprintln!("creating {users} accounts ...");
    let mut accounts = Vec::new();
    for k in 0..users {
        let name = format!("bench-app-{k:04}");
        api::create_user(server, &admin, &name, &password).await?;
        let token = api::session(server, &name, &password).await?;
        accounts.push((name, token));
    }

    eprintln!("(a) {} spawns each way ...", args.samples);
    let (mut through_warren, mut direct) = (histogram()?, histogram()?);
    for (k, (name, token)) in accounts.iter().take(args.samples as usize).enumerate() {
        let path = format!("/user/{name}/{}/{}", def.name, probe_path(def, name));
        through_warren.saturating_record(first_200(server, token, &path).await?.as_nanos() as u64);
        let started = DirectApp::start(def, name, &dir.join(format!("direct-{k}"))).await?;
        direct.saturating_record(started.took.as_nanos() as u64);
    }
    let warren_spawn = Percentiles::of(&through_warren);
    let direct_start = Percentiles::of(&direct);

    eprintln!(
        "(b) {} connections, proxied and direct ...",
        args.concurrency
    );
    let (name, token) = &accounts[0];
    let proxied_path = format!("user/{name}/{}/{}", def.name, probe_path(def, name));
    let direct_app = DirectApp::start(def, name, &dir.join("direct-b")).await?;
    let rounds = 4u32;
    let window = args.seconds / rounds;
    let (mut proxied_latency, mut direct_latency) = (histogram()?, histogram()?);
    let (mut proxied_count, mut direct_count) = (0u64, 0u64);
    for _ in 0..rounds {
        let target = Target::Warren {
            server,
            token: token.clone(),
            path: proxied_path.clone(),
        };
        proxied_count += load(&target, args.concurrency, window, &mut proxied_latency).await?;
        let target = direct_app.target(def, name);
        direct_count += load(&target, args.concurrency, window, &mut direct_latency).await?;
    }
    drop(direct_app);
    let seconds = args.seconds.as_secs_f64();
    let proxied_per_second = proxied_count as f64 / seconds;
    let direct_per_second = direct_count as f64 / seconds;

    eprintln!("(c) {} running apps ...", args.running);
    // The apps of (a) stop first, so (c) starts from none.
    for (name, token) in accounts.iter().take(args.samples as usize) {
        let _ = name;
        let path = format!("/api/v1/me/apps/{}/stop", def.name);
        api_post(server, token, &path).await?;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = processes.sample()?;
    for (name, token) in accounts.iter().skip(1).take(args.running as usize) {
        let path = format!("/user/{name}/{}/{}", def.name, probe_path(def, name));
        first_200(server, token, &path).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_apps = processes.sample()?;
    let app_bytes = apps_memory(server, &accounts[1..=args.running as usize]).await?;
    let per = |grown: u64| grown * 1024 / u64::from(args.running.max(1));
    let warren_bytes_per_app = per((with_apps.master_kib + with_apps.workers_kib)
        .saturating_sub(before.master_kib + before.workers_kib));
    Ok(AppsReport {
        app: def.name.clone(),
        samples: args.samples,
        spawn_overhead_nanos: warren_spawn.p50_ns as i64 - direct_start.p50_ns as i64,
        warren_spawn,
        direct_start,
        concurrency: args.concurrency,
        seconds,
        proxied_per_second,
        direct_per_second,
        proxied_latency: Percentiles::of(&proxied_latency),
        direct_latency: Percentiles::of(&direct_latency),
        ratio: proxied_per_second / direct_per_second.max(1e-9),
        running: args.running,
        memory_before: before,
        memory_with_apps: with_apps,
        warren_bytes_per_app,
        app_bytes_per_app: app_bytes / u64::from(args.running.max(1)),
    })
}

/// What (a) and (b) ask for: the app's ready_path beneath its prefix.
fn probe_path(def: &AppDef, user: &str) -> String {
    let base = format!("/user/{user}/{}/", def.name);
    let path = def
        .ready_path
        .replace("{base_url}", &base)
        .replace("{user}", user);
    let path = path
        .strip_prefix(&base)
        .unwrap_or(path.trim_start_matches('/'));
    path.to_string()
}

/// The apps' own memory, as `/me/apps` reports it (their cgroups).
async fn apps_memory(server: SocketAddr, accounts: &[(String, String)]) -> Result<u64> {
    let mut total = 0;
    for (_, token) in accounts {
        let answer = api_get(server, token, "/api/v1/me/apps").await?;
        let list: serde_json::Value = serde_json::from_slice(&answer)?;
        total += list["apps"].as_array().map_or(0, |apps| {
            apps.iter().filter_map(|a| a["memory_bytes"].as_u64()).sum()
        });
    }
    Ok(total)
}

async fn api_get(server: SocketAddr, token: &str, path: &str) -> Result<Bytes> {
    let target = Target::Warren {
        server,
        token: token.to_string(),
        path: path.trim_start_matches('/').to_string(),
    };
    let mut link = target.connect().await?;
    let (status, body) = link.get(&target).await?;
    if status != 200 {
        bail!("GET {path}: {status}");
    }
    Ok(body)
}

async fn api_post(server: SocketAddr, token: &str, path: &str) -> Result<()> {
    let stream = tokio::net::TcpStream::connect(server).await?;
    let (mut sender, driver) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(driver);
    let request = hyper::Request::post(path)
        .header("host", server.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        bail!("POST {path}: {}", response.status());
    }
    Ok(())
}

/// GETs `path` until 200 (503 "starting" is retried at once): how long.
async fn first_200(server: SocketAddr, token: &str, path: &str) -> Result<Duration> {
    let target = Target::Warren {
        server,
        token: token.to_string(),
        path: path.trim_start_matches('/').to_string(),
    };
    let started = Instant::now();
    let mut link = target.connect().await?;
    loop {
        let (status, body) = link.get(&target).await?;
        match status {
            200 => return Ok(started.elapsed()),
            503 if started.elapsed() < Duration::from_secs(120) => {
                tokio::time::sleep(RETRY_EVERY).await
            }
            other => bail!("GET {path}: {other} {}", String::from_utf8_lossy(&body)),
        }
    }
}

/// Where (b)'s requests go.
enum Target {
    Warren {
        server: SocketAddr,
        token: String,
        path: String,
    },
    Unix {
        socket: PathBuf,
        path: String,
        auth: Option<(String, String)>,
    },
    Tcp {
        port: u16,
        path: String,
        auth: Option<(String, String)>,
    },
}

struct Link {
    sender: http1::SendRequest<Empty<Bytes>>,
}

impl Target {
    async fn connect(&self) -> Result<Link> {
        let sender = match self {
            Target::Warren { server, .. } => {
                let stream = tokio::net::TcpStream::connect(server).await?;
                stream.set_nodelay(true)?;
                let (sender, driver) = http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(driver);
                sender
            }
            Target::Unix { socket, .. } => {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                let (sender, driver) = http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(driver);
                sender
            }
            Target::Tcp { port, .. } => {
                let stream = tokio::net::TcpStream::connect(("127.0.0.1", *port)).await?;
                stream.set_nodelay(true)?;
                let (sender, driver) = http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(driver);
                sender
            }
        };
        Ok(Link { sender })
    }
}

impl Link {
    async fn get(&mut self, target: &Target) -> Result<(u16, Bytes)> {
        let mut request = hyper::Request::builder();
        request = match target {
            Target::Warren {
                server,
                token,
                path,
            } => request
                .uri(format!("/{path}"))
                .header("host", server.to_string())
                .header("authorization", format!("Bearer {token}")),
            Target::Unix { path, auth, .. } | Target::Tcp { path, auth, .. } => {
                let request = request.uri(path.as_str()).header("host", "localhost");
                match auth {
                    Some((name, value)) => request.header(name.as_str(), value.as_str()),
                    None => request,
                }
            }
        };
        self.sender.ready().await?;
        let response = self
            .sender
            .send_request(request.body(Empty::new())?)
            .await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// `concurrency` connections sending GETs for `window`: how many answered
/// (each must be a 200).
async fn load(
    target: &Target,
    concurrency: u32,
    window: Duration,
    latency: &mut hdrhistogram::Histogram<u64>,
) -> Result<u64> {
    let until = Instant::now() + window;
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        let mut link = target.connect().await?;
        clients.push(async move {
            let mut histogram = histogram()?;
            let mut count = 0u64;
            while Instant::now() < until {
                let started = Instant::now();
                let (status, _) = link.get(target).await?;
                if status != 200 {
                    bail!("a request answered {status}");
                }
                histogram.saturating_record(started.elapsed().as_nanos() as u64);
                count += 1;
            }
            Ok::<_, anyhow::Error>((count, histogram))
        });
    }
    let mut total = 0;
    for outcome in futures_util::future::join_all(clients).await {
        let (count, histogram) = outcome?;
        total += count;
        latency.add(&histogram).context("histogram")?;
    }
    Ok(total)
}

/// The app started by this process, with nothing between: for comparison.
struct DirectApp {
    child: tokio::process::Child,
    took: Duration,
    socket: PathBuf,
    port: u16,
    secret: String,
}

impl DirectApp {
    async fn start(def: &AppDef, user: &str, dir: &Path) -> Result<DirectApp> {
        std::fs::create_dir_all(dir.join("workspace"))?;
        // As root, the app runs as `nobody`, as it would as a user (some
        // apps refuse root), in a directory of its own.
        let root = rustix::process::geteuid().is_root();
        if root {
            use std::os::unix::fs::PermissionsExt;
            for path in [dir.parent().unwrap_or(dir), dir] {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711))?;
            }
            for path in [dir.to_path_buf(), dir.join("workspace")] {
                std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY))?;
            }
        }
        let socket = dir.join("app.sock");
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
            .local_addr()?
            .port();
        let secret = crate::http::random_hex(32)?;
        let spec = AppSpec {
            base_url: format!("/user/{user}/{}/", def.name),
            ..spec_of(def)
        };
        let placeholders = warren_worker::apps::Placeholders {
            socket: socket.display().to_string(),
            port: port.to_string(),
            base_url: spec.base_url.clone(),
            workspace: dir.join("workspace").display().to_string(),
            user: user.to_string(),
            secret: secret.clone(),
        };
        let fill = |text: &str| placeholders.fill(text);
        let argv: Vec<String> = spec.argv.iter().map(|a| fill(a)).collect();
        let started = Instant::now();
        // At the priority warren gives users' processes (nice 10,
        // SCHED_IDLE: issue 10), so (a) and (b) compare the path to the app,
        // not the scheduling class.
        let mut command = tokio::process::Command::new("chrt");
        command
            .args(["--idle", "0", "nice", "-n", "10"])
            .arg(&argv[0]);
        if root {
            command.uid(NOBODY).gid(NOBODY);
        }
        command
            .args(&argv[1..])
            .current_dir(dir.join("workspace"))
            .env("HOME", dir.join("workspace"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        for (key, value) in &spec.env {
            command.env(key, fill(value));
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {:?}", argv[0]))?;
        let mut app = DirectApp {
            child,
            took: Duration::ZERO,
            socket,
            port,
            secret,
        };
        let target = app.target(def, user);
        loop {
            let answered = match target.connect().await {
                Ok(mut link) => link.get(&target).await.ok(),
                Err(_) => None,
            };
            if answered.is_some_and(|(status, _)| (200..300).contains(&status)) {
                break;
            }
            if started.elapsed() > def.start_timeout {
                bail!(
                    "{} did not answer directly within its start timeout",
                    def.name
                );
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
        app.took = started.elapsed();
        Ok(app)
    }

    fn target(&self, def: &AppDef, user: &str) -> Target {
        let base = format!("/user/{user}/{}/", def.name);
        let path = def
            .ready_path
            .replace("{base_url}", &base)
            .replace("{user}", user);
        let auth = def.auth.header(user, &self.secret);
        match def.listen {
            AppListen::Unix => Target::Unix {
                socket: self.socket.clone(),
                path,
                auth,
            },
            AppListen::Tcp => Target::Tcp {
                port: self.port,
                path,
                auth,
            },
        }
    }
}

impl Drop for DirectApp {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn spec_of(def: &AppDef) -> AppSpec {
    AppSpec {
        name: def.name.clone(),
        argv: def.command.clone(),
        env: def.env.clone(),
        listen: def.listen,
        base_url: String::new(),
        ready_path: def.ready_path.clone(),
        auth: def.auth.clone(),
        start_timeout_ms: 0,
        idle_timeout_ms: 0,
        max_per_user: 0,
        read_execute: Vec::new(),
        read_only: Vec::new(),
    }
}
