//! `warren-bench terminals`: users' terminals (issue #11).
//!
//! - (a) keystroke to echo: one byte typed, its echo read back, one at a
//!   time, `--samples` of each, interleaved: through warren (a WebSocket to
//!   a terminal running `cat`: master, worker, the PTY's line discipline)
//!   and on a PTY of this process running the same `cat` (the same echo,
//!   with nothing between). Target: p99 through warren ≤ 2 ms.
//! - (b) memory per idle attached terminal: `--terminals` terminals running
//!   `cat`, each with a WebSocket attached, spread over users of
//!   `--per-user` terminals each: the workers' resident memory before and
//!   after, per terminal, plus the master's per socket from (c) (the
//!   master's own reading across (b) is dominated by the memory of the
//!   accounts' password hashes being given back), against the target of
//!   64 KiB; the programs' own apart.
//! - (c) the master's memory per idle WebSocket: `--websockets` more
//!   sockets attached to those terminals (several sockets may attach to
//!   one terminal); the master's resident memory per socket (target
//!   ≤ 20 KiB), the workers' apart (each socket is a stream there).

use crate::files::memory::{Processes, Rss};
use crate::http::api;
use crate::http::load::{histogram, Percentiles};
use crate::http::{os_args, start_warren, stop};
use crate::TerminalsArgs;
use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Time for one echo before the run is called broken.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize)]
pub struct TerminalsReport {
    pub samples: u32,
    pub local_echo: Percentiles,
    pub warren_echo: Percentiles,
    pub terminals: u32,
    /// Workers after − before, per terminal of (b), in bytes.
    pub worker_bytes_per_terminal: u64,
    /// That plus the master's per socket (c): what one idle attached
    /// terminal costs warren, in bytes.
    pub bytes_per_terminal: u64,
    /// The `cat`s' own resident memory per terminal, in bytes.
    pub program_bytes_per_terminal: u64,
    pub websockets: u32,
    /// Master after − before, per extra socket, in bytes.
    pub master_bytes_per_websocket: u64,
    /// Workers after − before, per extra socket, in bytes.
    pub worker_bytes_per_websocket: u64,
    pub memory_before: Rss,
    pub memory_with_terminals: Rss,
    pub memory_with_websockets: Rss,
}

pub async fn run(args: &TerminalsArgs) -> Result<TerminalsReport> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let per_user = args.per_user.max(1);
    eprintln!("starting warren with {} workers ...", args.workers);
    let warren = start_warren(
        dir.path(),
        args.workers,
        os_args([
            "--max-terminals-per-user",
            &per_user.to_string(),
            "--token-rate",
            "1000000",
            // Every socket of (b) and (c) at once, and a few more.
            "--max-connections",
            &(args.terminals + args.websockets + 100).to_string(),
        ]),
    )
    .await?;
    let outcome = measure(
        args,
        warren.process.address,
        &warren.admin_password,
        warren.process.pid(),
    )
    .await;
    stop(warren.process).await;
    outcome
}

async fn measure(
    args: &TerminalsArgs,
    server: SocketAddr,
    admin_password: &str,
    master: Option<u32>,
) -> Result<TerminalsReport> {
    let master = master.context("the warren master has no pid")?;
    let mut processes = Processes::find(master)?;
    let admin = api::session(server, "admin", admin_password).await?;
    let password = crate::http::random_hex(16)?;
    let per_user = args.per_user.max(1);
    let users = args.terminals.div_ceil(per_user).max(1);
    eprintln!("creating {users} accounts ...");
    let mut tokens = Vec::new();
    for k in 0..users {
        let name = format!("bench-term-{k:04}");
        api::create_user(server, &admin, &name, &password).await?;
        tokens.push(api::session(server, &name, &password).await?);
    }

    // Before any terminal: (b) counts the first one too.
    let before = processes.sample()?;
    eprintln!("(a) keystroke to echo, {} samples each ...", args.samples);
    let first = open(server, &tokens[0]).await?;
    let mut socket = connect(server, &tokens[0], &first).await?;
    settle(&mut socket).await;
    let local = LocalEcho::start()?;
    let (mut through_warren, mut on_a_local_pty) = (histogram()?, histogram()?);
    for k in 0..args.samples {
        let key = b'a' + (k % 26) as u8;
        on_a_local_pty.saturating_record(local.echo(key)?.as_nanos() as u64);
        through_warren.saturating_record(echo(&mut socket, key).await?.as_nanos() as u64);
    }
    drop(local);

    eprintln!(
        "(b) {} terminals, each with a socket attached ...",
        args.terminals
    );
    // The first terminal and its socket stay: part of the count.
    let mut ids = vec![first];
    let mut sockets = vec![socket];
    for k in 1..args.terminals {
        let token = &tokens[(k / per_user) as usize];
        let id = open(server, token).await?;
        sockets.push(connect(server, token, &id).await?);
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_terminals = processes.sample()?;
    let programs_kib = programs_rss_kib(processes.workers())?;

    eprintln!("(c) {} more sockets ...", args.websockets);
    for k in 0..args.websockets {
        let index = (k % args.terminals.max(1)) as usize;
        let token = &tokens[index / per_user as usize];
        sockets.push(connect(server, token, &ids[index]).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_websockets = processes.sample()?;
    drop(sockets);

    let per = |grown: u64, count: u32| grown * 1024 / u64::from(count.max(1));
    let worker_bytes_per_terminal = per(
        with_terminals
            .workers_kib
            .saturating_sub(before.workers_kib),
        args.terminals,
    );
    let master_bytes_per_websocket = per(
        with_websockets
            .master_kib
            .saturating_sub(with_terminals.master_kib),
        args.websockets,
    );
    Ok(TerminalsReport {
        samples: args.samples,
        local_echo: Percentiles::of(&on_a_local_pty),
        warren_echo: Percentiles::of(&through_warren),
        terminals: args.terminals,
        worker_bytes_per_terminal,
        bytes_per_terminal: worker_bytes_per_terminal + master_bytes_per_websocket,
        program_bytes_per_terminal: per(programs_kib, args.terminals),
        websockets: args.websockets,
        master_bytes_per_websocket,
        worker_bytes_per_websocket: per(
            with_websockets
                .workers_kib
                .saturating_sub(with_terminals.workers_kib),
            args.websockets,
        ),
        memory_before: before,
        memory_with_terminals: with_terminals,
        memory_with_websockets: with_websockets,
    })
}

/// A terminal running `cat` (quiet, and echoing what is typed); its id.
async fn open(server: SocketAddr, token: &str) -> Result<String> {
    let spec = api::bearer(server, hyper::Method::POST, "/api/v1/terminals", token)?
        .json(&serde_json::json!({"command": ["cat"], "cols": 80, "rows": 24}))?;
    let answer = crate::http::load::Connection::new(server)
        .send(&spec, Duration::from_secs(30))
        .await?;
    if answer.status != hyper::StatusCode::CREATED {
        bail!(
            "POST /api/v1/terminals: {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    let terminal: serde_json::Value =
        serde_json::from_slice(&answer.body).context("POST /api/v1/terminals: not JSON")?;
    Ok(terminal["id"]
        .as_str()
        .context("POST /api/v1/terminals: no id")?
        .to_string())
}

async fn connect(server: SocketAddr, token: &str, id: &str) -> Result<Socket> {
    let mut request = format!("ws://{server}/api/v1/terminals/{id}/ws")
        .into_client_request()
        .context("the WebSocket request")?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("the authorization header")?,
    );
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("WebSocket to terminal {id}"))?;
    Ok(socket)
}

/// Lets the terminal's start-up output (none for `cat`) pass.
async fn settle(socket: &mut Socket) {
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), socket.next()).await {}
}

/// Types `key`; the time until its echo is back.
async fn echo(socket: &mut Socket, key: u8) -> Result<Duration> {
    let started = Instant::now();
    socket
        .send(Message::Binary(vec![key].into()))
        .await
        .context("typing")?;
    loop {
        let message = tokio::time::timeout(ECHO_TIMEOUT, socket.next())
            .await
            .context("no echo in time")?;
        match message {
            Some(Ok(Message::Binary(bytes))) if bytes.contains(&key) => {
                return Ok(started.elapsed())
            }
            Some(Ok(Message::Close(frame))) => bail!("the terminal closed: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(err)) => bail!("WebSocket: {err}"),
            None => bail!("the WebSocket ended"),
        }
    }
}

/// `cat` on a PTY of this process: the same echo with nothing between.
struct LocalEcho {
    controller: std::fs::File,
    child: std::process::Child,
}

impl LocalEcho {
    fn start() -> Result<LocalEcho> {
        let pty = warren_worker::sandbox::pty::Pty::open(80, 24, None)
            .context("cannot open a local PTY")?;
        let (stdin, stdout, stderr) = pty.stdio().context("the local PTY")?;
        let child = std::process::Command::new("cat")
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .context("cannot start cat on the local PTY")?;
        let controller = std::fs::File::from(pty.controller);
        Ok(LocalEcho { controller, child })
    }

    fn echo(&self, key: u8) -> Result<Duration> {
        use std::io::{Read, Write};
        let started = Instant::now();
        (&self.controller).write_all(&[key]).context("typing")?;
        let mut buf = [0u8; 256];
        loop {
            let n = (&self.controller)
                .read(&mut buf)
                .context("reading the echo")?;
            if n == 0 {
                bail!("the local PTY closed");
            }
            if buf[..n].contains(&key) {
                return Ok(started.elapsed());
            }
        }
    }
}

impl Drop for LocalEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of every process below the workers (the terminals'
/// programs and their stages), in KiB.
fn programs_rss_kib(workers: &[u32]) -> Result<u64> {
    let mut total = 0;
    for worker in workers {
        for child in crate::files::memory::children_of(*worker)? {
            total += crate::files::memory::rss_kib(child).unwrap_or(0);
        }
    }
    Ok(total)
}

impl TerminalsReport {
    pub fn table(&self) -> String {
        let row = |name: &str, p: &Percentiles| {
            format!(
                "{name:<34} p50 {:>8.3} ms  p99 {:>8.3} ms  ({} samples)\n",
                p.p50_ns as f64 / 1e6,
                p.p99_ns as f64 / 1e6,
                self.samples
            )
        };
        let kib = |bytes: u64| bytes as f64 / 1024.0;
        let mut out = String::from("(a) keystroke to echo, one at a time\n");
        out += &row("local PTY (cat)", &self.local_echo);
        out += &row("through warren (WebSocket, cat)", &self.warren_echo);
        out += &format!(
            "p99 through warren                 {:.3} ms (target ≤ 2 ms)\n",
            self.warren_echo.p99_ns as f64 / 1e6
        );
        out += &format!(
            "\n(b) {} idle terminals, a socket attached to each\n\
             workers per terminal               {:.1} KiB\n\
             with the master's socket (c)       {:.1} KiB (target ≤ 64 KiB)\n\
             the programs' own, per terminal    {:.1} KiB\n",
            self.terminals,
            kib(self.worker_bytes_per_terminal),
            kib(self.bytes_per_terminal),
            kib(self.program_bytes_per_terminal)
        );
        out += &format!(
            "\n(c) {} more idle sockets\n\
             master per socket                  {:.1} KiB (target ≤ 20 KiB)\n\
             workers per socket                 {:.1} KiB\n",
            self.websockets,
            kib(self.master_bytes_per_websocket),
            kib(self.worker_bytes_per_websocket)
        );
        out
    }
}
