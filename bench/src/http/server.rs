//! A server under test: a child process of this very executable
//! (`warren-bench serve ...` or `warren-bench bare-server ...`), listening on
//! a port the kernel picks, found in its log.

use super::load::{Connection, RequestSpec};
use anyhow::{bail, Context, Result};
use hyper::Method;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

/// Log lines kept for an error message.
const TAIL_LINES: usize = 40;
/// Warnings and errors from a server echoed to our stderr before we stop echoing.
const ECHO_LINES: usize = 20;
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct ServerProcess {
    name: &'static str,
    child: Child,
    pub address: SocketAddr,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl ServerProcess {
    /// Starts `<this exe> args...` with `--listen 127.0.0.1:0` among `args`,
    /// and waits for its `listening address=...` log line and then, if
    /// `ready_path` is given, for that path to answer 200.
    pub async fn start(
        name: &'static str,
        args: Vec<OsString>,
        ready_path: Option<&'static str>,
    ) -> Result<ServerProcess> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut child = Command::new(exe)
            .args(&args)
            // The `listening` line is logged at info; a WARREN_LOG set for
            // other purposes must not hide it.
            .env("WARREN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the {name} server"))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut lines = BufReader::new(stderr).lines();
        let found = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                let address = listening_address(&line);
                keep(&tail, line);
                if address.is_some() {
                    return Ok(address);
                }
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;
        let address = match found {
            Ok(Ok(Some(address))) => address,
            Ok(Ok(None)) => bail!(
                "the {name} server exited before listening; its log:\n{}",
                log(&tail)
            ),
            Ok(Err(err)) => return Err(err).context("cannot read the server's log"),
            Err(_) => bail!(
                "the {name} server did not listen within {START_TIMEOUT:?}; its log:\n{}",
                log(&tail)
            ),
        };
        tokio::spawn(drain(name, lines, tail.clone()));
        let server = ServerProcess {
            name,
            child,
            address,
            tail,
        };
        if let Some(path) = ready_path {
            server.wait_ready(path).await?;
        }
        Ok(server)
    }

    async fn wait_ready(&self, path: &'static str) -> Result<()> {
        let spec = RequestSpec::new(self.address, Method::GET, path);
        let mut connection = Connection::new(self.address);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let last = match connection.send(&spec, Duration::from_secs(5)).await {
                Ok(answer) if answer.status.is_success() => return Ok(()),
                Ok(answer) => format!(
                    "{} {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                ),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "the {} server was not ready within {START_TIMEOUT:?} (GET {path}: {last}); its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's process id (`None` once it has been waited for).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The last lines of the server's log.
    pub fn log(&self) -> String {
        log(&self.tail)
    }

    /// SIGTERM, then waits for a clean exit (SIGKILL after a deadline).
    pub async fn stop(mut self) -> Result<()> {
        let pid = self
            .child
            .id()
            .and_then(|pid| rustix::process::Pid::from_raw(pid as i32));
        if let Some(pid) = pid {
            // It may have exited already; the wait below tells.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let status = match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => status.context("cannot wait for the server")?,
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "the {} server did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed it",
                    self.name
                );
            }
        };
        if !status.success() {
            bail!(
                "the {} server exited with {status}; its log:\n{}",
                self.name,
                self.log()
            );
        }
        Ok(())
    }
}

/// The address in a `listening address=127.0.0.1:PORT ...` log line (the
/// `tracing` fmt output of `warren serve` and of the bare server).
pub fn listening_address(line: &str) -> Option<SocketAddr> {
    let (_, after) = line.split_once(" listening ")?;
    after
        .split_whitespace()
        .find_map(|field| field.strip_prefix("address="))?
        .parse()
        .ok()
}

/// Keeps reading the server's log (a full pipe would block its logging),
/// keeps the tail, and echoes warnings and errors.
async fn drain(
    name: &'static str,
    mut lines: tokio::io::Lines<BufReader<ChildStderr>>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut echoed = 0usize;
    while let Ok(Some(line)) = lines.next_line().await {
        if line.contains(" WARN ") || line.contains(" ERROR ") {
            echoed += 1;
            if echoed <= ECHO_LINES {
                eprintln!("[{name}] {line}");
            } else if echoed == ECHO_LINES + 1 {
                eprintln!("[{name}] (further warnings and errors not shown)");
            }
        }
        keep(&tail, line);
    }
}

fn keep(tail: &Mutex<VecDeque<String>>, line: String) {
    if let Ok(mut tail) = tail.lock() {
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

fn log(tail: &Mutex<VecDeque<String>>) -> String {
    match tail.lock() {
        Ok(tail) => tail.iter().cloned().collect::<Vec<_>>().join("\n"),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_read_from_the_listening_line() {
        let line = "2026-01-02T03:04:05.678901Z  INFO warren_master::serve: listening \
                    address=127.0.0.1:41234 workers=2 data_dir=/tmp/x";
        assert_eq!(
            listening_address(line),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        let bare = "2026-01-02T03:04:05Z  INFO warren_bench::bare: listening address=[::1]:80";
        assert_eq!(listening_address(bare), Some("[::1]:80".parse().unwrap()));
        for other in [
            "INFO warren_master::serve: stopping workers",
            "INFO x: listening address=nonsense",
            "INFO x: listening workers=2",
            "INFO x: not-listening address=127.0.0.1:1",
        ] {
            assert_eq!(listening_address(other), None, "{other}");
        }
    }

    #[test]
    fn the_log_tail_is_bounded() {
        let tail = Mutex::new(VecDeque::new());
        for n in 0..100 {
            keep(&tail, format!("line {n}"));
        }
        let text = log(&tail);
        assert_eq!(text.lines().count(), TAIL_LINES);
        assert!(text.ends_with("line 99"));
    }
}
