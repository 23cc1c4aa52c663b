//! Helpers for the end-to-end tests: start the real `warren` binary on a free
//! port with a temporary data directory, talk to it over HTTP, find and
//! signal its worker processes, read its log.
//!
//! The binary is `target/<profile>/warren`, built by `cargo test --workspace`
//! (the `warren` package's own integration test makes cargo build it); set
//! `WARREN_BIN` to test another build.

pub mod accounts;
pub mod bulk;
pub mod files;
pub mod nginx;
pub mod oidc;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `warren` executable under test.
pub fn warren_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WARREN_BIN") {
        return PathBuf::from(path);
    }
    // This test runs from target/<profile>/deps/<name>-<hash>.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let binary = profile_dir.join("warren");
    assert!(
        binary.exists(),
        "{} does not exist: run the tests with `cargo test --workspace` (which builds it) or set WARREN_BIN",
        binary.display()
    );
    binary
}

/// `<cgroup2 mount><this process's v2 cgroup>/<name>`, where a test puts
/// the cgroups of the processes it starts (`--cgroup-root`); `None`
/// without cgroup v2.
pub fn own_cgroup_base(name: &str) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let dash = fields.iter().position(|f| *f == "-")?;
        (fields.get(dash + 1) == Some(&"cgroup2")).then(|| PathBuf::from(fields[4]))
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own.lines().find_map(|line| line.strip_prefix("0::"))?;
    Some(mount.join(own.trim_start_matches('/')).join(name))
}

/// `warren-test-<hash of the data directory's path>`.
fn data_dir_name(data_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut hasher);
    format!("warren-test-{:016x}", hasher.finish())
}

/// A running `warren serve`, killed (with its workers) when dropped.
pub struct Server {
    child: Option<Child>,
    pub pid: u32,
    pub base_url: String,
    pub data_dir: PathBuf,
    log: Arc<Mutex<String>>,
    pub http: reqwest::Client,
    /// The cgroup base the server was given (emptied cgroups removed when
    /// the server is dropped: a killed master leaves them).
    cgroup_base: Option<PathBuf>,
    workers: u32,
    /// The data directory when the server owns it; declared last so it is
    /// removed only after the processes are gone.
    owned_data_dir: Option<tempfile::TempDir>,
}

/// The address in warren's "listening" line, as text or as JSON
/// (`--log-format json`).
fn listening_address(line: &str) -> Option<String> {
    if let Some(at) = line.find("listening address=") {
        let rest = &line[at + "listening address=".len()..];
        return rest.split_whitespace().next().map(str::to_string);
    }
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = event.get("fields")?;
    (fields.get("message")?.as_str()? == "listening")
        .then(|| fields.get("address")?.as_str().map(str::to_string))
        .flatten()
}

/// Options for [`Server::start`].
#[derive(Default, Clone)]
pub struct ServerOptions {
    pub workers: u32,
    /// Another executable than [`warren_binary`].
    pub binary: Option<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Variables the harness would set that this server must not have.
    pub env_remove: Vec<String>,
    /// `--database-url`; SQLite in the data directory when `None`.
    pub database_url: Option<String>,
    /// Leave out `--admin-password-file` (to see the first-start password).
    pub no_admin_password: bool,
}

impl ServerOptions {
    pub fn workers(workers: u32) -> Self {
        ServerOptions {
            workers,
            ..Default::default()
        }
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn database(mut self, database: &accounts::Database) -> Self {
        self.database_url = database.url().map(str::to_string);
        self
    }
}

/// The password of the `admin` user the harness creates on first start.
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

impl Server {
    /// Starts warren on 127.0.0.1 port 0 with `data_dir`, and waits until it
    /// logs its address.
    pub fn start(data_dir: &Path, options: &ServerOptions) -> Server {
        let binary = options.binary.clone().unwrap_or_else(warren_binary);
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--workers")
            .arg(options.workers.max(1).to_string())
            .args(&options.args)
            .env("WARREN_LOG", "info")
            .env_remove("WARREN_DATABASE_URL")
            .env_remove("WARREN_PASSWORD")
            .env_remove("WARREN_DEBUG_CRASH_SLOTS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Servers of tests running at once share this process's cgroup: a
        // base of each data directory's own keeps one server's starting
        // workers from emptying another's slots (a restart on the same
        // data directory finds its predecessor's).
        let mut cgroup_base = None;
        if !options
            .args
            .iter()
            .any(|arg| arg.starts_with("--cgroup-root"))
        {
            if let Some(base) = own_cgroup_base(&data_dir_name(data_dir)) {
                command.env("WARREN_CGROUP_ROOT", &base);
                cgroup_base = Some(base);
            }
        }
        // Likewise uids: each server allocates users' uids from its own
        // database, so servers running at once need ranges of their own
        // (or two tests' users would share a uid, and see each other's
        // processes). Stable per data directory, for restarts.
        command.env("WARREN_UID_RANGE", uid_range_of(data_dir));
        for (key, value) in &options.env {
            command.env(key, value);
        }
        for key in &options.env_remove {
            command.env_remove(key);
        }
        if let Some(url) = &options.database_url {
            command.arg("--database-url").arg(url);
        }
        if !options.no_admin_password {
            let file = data_dir.join("admin-password");
            std::fs::write(&file, format!("{ADMIN_PASSWORD}\n")).expect("write admin password");
            command.arg("--admin-password-file").arg(file);
        }
        let mut child = command.spawn().expect("spawn warren");
        let pid = child.id();
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut address_tx = Some(address_tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(address) = listening_address(&line) {
                        if let Some(tx) = address_tx.take() {
                            let _ = tx.send(address);
                        }
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let address = address_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "warren did not report its address; log:\n{}",
                    log.lock().unwrap()
                )
            });
        Server {
            child: Some(child),
            pid,
            base_url: format!("http://{address}"),
            data_dir: data_dir.to_path_buf(),
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
            owned_data_dir: None,
            cgroup_base,
            workers: options.workers.max(1),
        }
    }

    /// Starts warren on a fresh temporary data directory and waits until it
    /// is ready.
    pub async fn ready(options: &ServerOptions) -> Server {
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        Server::ready_in(data_dir, options).await
    }

    /// Starts warren on `data_dir` (which it then owns) and waits until it is
    /// ready.
    pub async fn ready_in(data_dir: tempfile::TempDir, options: &ServerOptions) -> Server {
        let mut server = Server::start(data_dir.path(), options);
        server.owned_data_dir = Some(data_dir);
        server.wait_ready().await;
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until the log holds `needle` and returns the log.
    /// A line warren writes while answering can reach the test's reader
    /// thread after the response does, so a log assertion must wait for it.
    pub async fn log_containing(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) || std::time::Instant::now() > deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET `path`, returning the status and the JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        json_of(response).await
    }

    pub async fn post_json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.http.post(self.url(path)).send().await.expect("POST");
        json_of(response).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Pings `user` through the pool: (slot, worker pid).
    pub async fn ping(&self, user: &str) -> Result<(u32, u32), (u16, serde_json::Value)> {
        let (status, body) = self.get_json(&format!("/debug/ping/{user}")).await;
        if status != 200 {
            return Err((status, body));
        }
        Ok((
            body["slot"].as_u64().expect("slot") as u32,
            body["pid"].as_u64().expect("pid") as u32,
        ))
    }

    /// Waits until `/readyz` says ready.
    pub async fn wait_ready(&self) {
        // A failed request (a pooled connection the server just closed)
        // counts as "not yet".
        let ready = eventually(Duration::from_secs(30), || async {
            let response = self.http.get(self.url("/readyz")).send().await;
            response.is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(ready, "warren never became ready; log:\n{}", self.log());
    }

    /// The pids of the master's child processes (its workers).
    pub fn worker_pids(&self) -> Vec<u32> {
        child_pids(self.pid)
    }

    /// Sends `signal` to the master.
    pub fn signal(&self, signal: rustix::process::Signal) {
        send_signal(self.pid, signal);
    }

    /// Waits up to `timeout` for the master to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the master with SIGTERM and returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("warren did not exit on SIGTERM; log:\n{}", self.log()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let workers = child_pids(self.pid);
            let _ = child.kill();
            let _ = child.wait();
            for pid in workers {
                send_signal(pid, rustix::process::Signal::KILL);
            }
        }
        if let Some(base) = &self.cgroup_base {
            use warren_worker::sandbox::{CgroupRoot, Cgroups};
            if let Ok(cgroups) = Cgroups::discover(&CgroupRoot::Path(base.clone()), "", false) {
                for slot in 0..self.workers {
                    cgroups.remove_empty(slot);
                }
                cgroups.remove_bases();
            }
        }
    }
}

async fn json_of(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, body)
}

pub fn send_signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_field(&stat, 0).is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Field `n` after the `(comm)` of a /proc/PID/stat line: 0 is the state, 1 the parent pid.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(n)
}

/// Live processes whose parent is `parent`.
pub fn child_pids(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat_field(&stat, 1) == Some(parent.to_string().as_str())
                    && stat_field(&stat, 0).is_some_and(|s| s != "Z")
            })
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// How a streamed response body ends within `patience`: `Some(true)` cut
/// (the transfer failed), `Some(false)` a clean end, `None` still going.
pub async fn body_end(response: &mut reqwest::Response, patience: Duration) -> Option<bool> {
    tokio::time::timeout(patience, async {
        loop {
            match response.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    })
    .await
    .ok()
}

/// Polls `condition` every 20 ms until it holds or `patience` passes.
pub async fn eventually<F, Fut>(patience: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + patience;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A user id for test user number `n`.
pub fn user_id(n: u128) -> String {
    uuid::Uuid::from_u128(n).to_string()
}

/// The value of the first sample of `metric` in Prometheus text `text` whose
/// line contains `labels` (e.g. `slot="1"`).
pub fn metric_value(text: &str, metric: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(metric) && line.contains(labels))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

/// Whether a test that needs its own file system fails instead of skipping
/// when it cannot mount one (CI sets `WARREN_REQUIRE_MOUNT=1`).
pub fn mount_required() -> bool {
    std::env::var("WARREN_REQUIRE_MOUNT").is_ok_and(|v| v == "1")
}

/// A small tmpfs mounted on a temporary directory, unmounted when dropped:
/// a disk that fills up (`size`) or runs out of inodes (`nr_inodes`) for
/// the tests of what warren does then.
pub struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts a tmpfs with `options` (such as `size=8m,nr_inodes=500`), or
    /// returns `None` after saying loudly that `test` is skipped (a failure
    /// instead when [`mount_required`]).
    pub fn mount(test: &str, options: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().expect("mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .output();
        let why = match output {
            Ok(output) if output.status.success() => return Some(SmallFs { dir }),
            Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_string(),
            Err(err) => err.to_string(),
        };
        assert!(
            !mount_required(),
            "{test} needs a tmpfs (WARREN_REQUIRE_MOUNT=1) but mounting failed: {why}"
        );
        eprintln!(
            "\n*** SKIPPED {test}: cannot mount a tmpfs ({why}).\n\
             *** Run as root (or with CAP_SYS_ADMIN); CI sets WARREN_REQUIRE_MOUNT=1.\n"
        );
        None
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh `data` directory on this file system, for a server's
    /// `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("data");
        std::fs::create_dir(&dir).expect("data dir on the small file system");
        dir
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: a process that still holds a file there must not leave the
        // mount behind.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Whether a machine that cannot give users' processes the full sandbox
/// (root, Landlock, cgroups) fails the tests that need it instead of
/// skipping them (CI sets `WARREN_REQUIRE_SANDBOX=1`).
pub fn sandbox_required() -> bool {
    std::env::var("WARREN_REQUIRE_SANDBOX").is_ok_and(|v| v == "1")
}

/// A range of 1000 uids of `data_dir`'s own (by a hash of its name), far
/// above the default range: `--uid-range` for a test server.
pub fn uid_range_of(data_dir: &Path) -> String {
    let hash = data_dir_name(data_dir)
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    let base = 1_000_000 + (hash % 60_000) * 1000;
    format!("{base}-{}", base + 999)
}

/// Processes (pid, uid) on the machine.
pub fn processes() -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let uid = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|uid| uid.parse().ok());
        if let Some(uid) = uid {
            found.push((pid, uid));
        }
    }
    found
}

/// The live processes (pids; zombies are dead) running as `uid`.
pub fn processes_of(uid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(pid, owner)| *owner == uid && process_alive(*pid))
        .map(|(pid, _)| pid)
        .collect()
}

/// Bytes of resident memory of a process (`VmRSS`).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

/// The TCP port `pid` listens on (from its descriptors and /proc/net/tcp).
pub fn listening_port(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().to_string();
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
        if *state != "0A" || !inodes.iter().any(|i| i == inode) {
            return None;
        }
        u16::from_str_radix(local.split(':').nth(1)?, 16).ok()
    })
}

/// Whether process `pid` is gone within `patience`.
pub async fn process_ends(pid: u32, patience: Duration) -> bool {
    eventually(patience, || async { !process_alive(pid) }).await
}

/// A wrapper that runs `warren` listening on `port`: the harness starts
/// every server with `serve --listen 127.0.0.1:0`, but a cluster host's
/// `--host-url` must name its port before it starts, so its
/// `ServerOptions::binary` is this script, which `exec`s the same binary
/// on `port` (anything but that command line is refused).
pub fn listening_on(dir: &Path, name: &str, port: u16) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join(format!("warren-{name}"));
    let text = format!(
        "#!/bin/sh\n\
         [ \"$1 $2 $3\" = 'serve --listen 127.0.0.1:0' ] || {{ echo \"unexpected: $*\" >&2; exit 64; }}\n\
         shift 3\n\
         exec '{}' serve --listen 127.0.0.1:{port} \"$@\"\n",
        warren_binary().display()
    );
    std::fs::write(&script, text).expect("write the wrapper");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .expect("make the wrapper executable");
    script
}

/// The options of cluster host `name` listening on `port` (through
/// [`listening_on`], with its scripts in `dir`): `--host-name`,
/// `--host-url` and `--cluster-secret-file`, on `database`, with `workers`
/// worker processes.
pub fn cluster_host(
    dir: &Path,
    name: &str,
    port: u16,
    workers: u32,
    database: &accounts::Database,
    secret: &Path,
) -> ServerOptions {
    ServerOptions {
        binary: Some(listening_on(dir, name, port)),
        ..ServerOptions::workers(workers)
    }
    .database(database)
    .arg("--host-name")
    .arg(name)
    .arg("--host-url")
    .arg(&format!("http://127.0.0.1:{port}"))
    .arg("--cluster-secret-file")
    .arg(&secret.display().to_string())
}
