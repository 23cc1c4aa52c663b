//! Real nginx for the tests (`tests/tests/nginx.rs`, `tests/tests/hosts.rs`)
//! and the benchmarks (`warren-bench nginx`, which depends on this crate):
//! finding the programs, a self-signed certificate, a shipped site file
//! (`deploy/nginx.conf`, `deploy/nginx-hosts.conf`) rewritten only on exact
//! lines (its ports, its upstreams' addresses, its certificate paths), and
//! nginx itself running in a temporary directory, stopped when dropped.
//!
//! Errors are `String`s (this crate has no error library); the tests
//! `expect` them, the benchmarks turn them into their own errors.

use crate::accounts::{session_cookie, Caller};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether a missing nginx (or socat, openssl) fails the tests instead of
/// skipping them (`.ci/run` sets `WARREN_REQUIRE_NGINX=1` and installs
/// them).
pub fn nginx_required() -> bool {
    std::env::var("WARREN_REQUIRE_NGINX").is_ok_and(|v| v == "1")
}

/// `name` on the PATH, or in /usr/sbin (where Debian puts nginx, often off
/// a normal user's PATH) or /usr/bin.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The programs a test behind nginx needs.
pub struct Tools {
    pub nginx: PathBuf,
    pub socat: PathBuf,
    pub openssl: PathBuf,
}

/// nginx, socat and openssl, or `None` after saying loudly that `test` is
/// skipped and what is missing (a failure instead when
/// `WARREN_REQUIRE_NGINX=1`).
pub fn tools(test: &str) -> Option<Tools> {
    let found = ["nginx", "socat", "openssl"].map(find_program);
    if let [Some(nginx), Some(socat), Some(openssl)] = found {
        return Some(Tools {
            nginx,
            socat,
            openssl,
        });
    }
    let missing: Vec<&str> = ["nginx", "socat", "openssl"]
        .iter()
        .zip(&found)
        .filter(|(_, path)| path.is_none())
        .map(|(name, _)| *name)
        .collect();
    let missing = missing.join(", ");
    assert!(
        !nginx_required(),
        "{test} is required here (WARREN_REQUIRE_NGINX=1) but {missing} is missing"
    );
    eprintln!(
        "\n*****************************************************************\n\
         *** SKIPPED: {test} -- NOT RUN: {missing} missing.\n\
         *** apt-get install nginx socat openssl; CI sets WARREN_REQUIRE_NGINX=1.\n\
         *****************************************************************\n"
    );
    None
}

/// `nginx -v`'s `nginx/1.22.1`.
pub fn nginx_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("-v")
        .output()
        .ok()
        .and_then(|output| {
            let text = String::from_utf8_lossy(&output.stderr).into_owned();
            text.split_whitespace()
                .find(|word| word.starts_with("nginx/"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "nginx (version unknown)".into())
}

/// The repository's root (this crate is `tests/`).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// A shipped site file, `deploy/<name>`.
pub fn shipped_site(name: &str) -> PathBuf {
    repo_root().join("deploy").join(name)
}

/// A port nothing listens on right now, on 127.0.0.1.
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|err| format!("no free port on 127.0.0.1: {err}"))
}

/// `text` with the line `from` (exactly, after trimming; `count` times)
/// replaced by `to`, at the same indentation. A line the site file does
/// not have exactly `count` times is an error, so nothing silently runs (or
/// measures) a different file than the one shipped.
pub fn replace_line(text: &str, from: &str, to: &str, count: usize) -> Result<String, String> {
    let found = text.lines().filter(|line| line.trim() == from).count();
    if found != count {
        return Err(format!(
            "the site file has the line {from:?} {found} time(s), not {count}: it is rewritten"
        ));
    }
    Ok(text
        .lines()
        .map(|line| {
            if line.trim() == from {
                let indent = &line[..line.len() - line.trim_start().len()];
                format!("{indent}{to}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Where a shipped site file listens, made local: its TLS server on
/// 127.0.0.1:`tls_port` (still TLS with `tls`, plain HTTP without: the
/// benchmarks' load generator speaks plain HTTP only), its redirecting
/// plain-HTTP server on 127.0.0.1:`http_port`, IPv6 listens dropped, and
/// the certificate at `cert` / `key`.
pub struct Listen<'a> {
    pub tls_port: u16,
    pub tls: bool,
    pub http_port: u16,
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// `text` (a shipped site file: `deploy/nginx.conf` or
/// `deploy/nginx-hosts.conf`, which share these lines) listening as
/// `listen` says, with each upstream line `(from, to)` replaced (`to` is a
/// whole line, such as `server 127.0.0.1:4001;`, and `from` must be there
/// exactly once). Nothing else changes.
pub fn local_site(
    text: &str,
    listen: &Listen,
    upstreams: &[(&str, String)],
) -> Result<String, String> {
    let ssl = if listen.tls { " ssl" } else { "" };
    let mut text = replace_line(
        text,
        "listen 443 ssl;",
        &format!("listen 127.0.0.1:{}{ssl};", listen.tls_port),
        1,
    )?;
    text = replace_line(&text, "listen [::]:443 ssl;", "", 1)?;
    text = replace_line(
        &text,
        "listen 80;",
        &format!("listen 127.0.0.1:{};", listen.http_port),
        1,
    )?;
    text = replace_line(&text, "listen [::]:80;", "", 1)?;
    for (from, to) in upstreams {
        text = replace_line(&text, from, to, 1)?;
    }
    text = replace_line(
        &text,
        "ssl_certificate     /etc/ssl/warren/fullchain.pem;",
        &format!("ssl_certificate {};", listen.cert.display()),
        1,
    )?;
    replace_line(
        &text,
        "ssl_certificate_key /etc/ssl/warren/privkey.pem;",
        &format!("ssl_certificate_key {};", listen.key.display()),
        1,
    )
}

/// A self-signed certificate for 127.0.0.1 (its own root), made by
/// `openssl req` in `dir`: (cert, key).
pub fn self_signed(openssl: &Path, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let output = Command::new(openssl)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(|err| format!("cannot run {}: {err}", openssl.display()))?;
    if !output.status.success() {
        return Err(format!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok((cert, key))
}

/// The main configuration around a site file: what a distribution's
/// nginx.conf would be, reduced to what runs in a temporary directory.
pub struct MainConf {
    pub worker_processes: u32,
    pub worker_connections: u32,
    /// `error_log`'s level (`info`, `warn`).
    pub error_log_level: &'static str,
    /// An access log in the directory (`access.log`), or none.
    pub access_log: bool,
    /// More lines in the `http` block (the benchmarks' reference server).
    pub extra_http: String,
}

impl MainConf {
    /// What the tests run: two workers, a log of everything.
    pub fn tests() -> MainConf {
        MainConf {
            worker_processes: 2,
            worker_connections: 256,
            error_log_level: "info",
            access_log: true,
            extra_http: String::new(),
        }
    }

    fn render(&self, dir: &Path) -> String {
        // Workers run as root when the caller does (Debian's nginx.conf
        // says `user www-data;`; this temporary directory is root's alone).
        let user = if rustix::process::geteuid().is_root() {
            "user root root;"
        } else {
            ""
        };
        let d = dir.display();
        // Which upstream took each request, and by which route cookie
        // (several hosts).
        let access_log = if self.access_log {
            format!(
                "log_format warren '$remote_addr \"$request\" $status \
                 upstream=$upstream_addr route=$cookie_warren_route';\n\
                 access_log {d}/access.log warren;"
            )
        } else {
            "access_log off;".to_string()
        };
        format!(
            "{user}\n\
             daemon off;\n\
             worker_processes {};\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log {};\n\
             events {{ worker_connections {}; }}\n\
             http {{\n\
                 {access_log}\n\
                 client_body_temp_path {d}/client_body;\n\
                 proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\n\
                 scgi_temp_path {d}/scgi;\n\
                 include {d}/site.conf;\n\
             {}\n\
             }}\n",
            self.worker_processes, self.error_log_level, self.worker_connections, self.extra_http
        )
    }
}

/// Real nginx running a site file in a directory of its own, stopped
/// (SIGTERM, then waited for) when dropped.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Starts `binary` in `dir` with `site` (the site file's text, written
    /// to `dir/site.conf`) inside `main`, and waits (10 s at most) until it
    /// listens on every address of `listening`.
    pub fn start(
        binary: &Path,
        dir: &Path,
        site: &str,
        main: &MainConf,
        listening: &[SocketAddr],
    ) -> Result<Nginx, String> {
        std::fs::write(dir.join("site.conf"), site)
            .map_err(|err| format!("cannot write site.conf: {err}"))?;
        std::fs::write(dir.join("nginx.conf"), main.render(dir))
            .map_err(|err| format!("cannot write nginx.conf: {err}"))?;
        // -e: the log before the configuration is read, too (not
        // /var/log/nginx, which an unprivileged caller cannot write).
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", binary.display()))?;
        let mut nginx = Nginx {
            child,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = listening
                .iter()
                .all(|address| std::net::TcpStream::connect(address).is_ok());
            if up {
                return Ok(nginx);
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                return Err(format!(
                    "nginx exited ({status}) instead of listening; its log:\n{}",
                    nginx.error_log()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "nginx did not listen on {listening:?} within 10 s; its log:\n{}",
                    nginx.error_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// nginx's access log so far (empty without one).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (a SIGKILL would leave
        // them running, and listening).
        crate::send_signal(self.child.id(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain-TCP listener on 127.0.0.1 whose every connection `socat` carries
/// over TLS to nginx, from `from`, verifying nginx's certificate against
/// `cert`. A test's clients talk plain HTTP (and WebSocket) to it; the
/// bytes pass unchanged both ways, as they arrive.
pub struct TlsTunnel {
    address: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl TlsTunnel {
    pub async fn start(socat: &Path, nginx_port: u16, cert: &Path, from: Ipv4Addr) -> TlsTunnel {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the tunnel");
        let address = listener.local_addr().expect("tunnel address");
        let target = format!(
            "OPENSSL:127.0.0.1:{nginx_port},cafile={},bind={from}",
            cert.display()
        );
        let socat = socat.to_path_buf();
        let accept = tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                let mut child = tokio::process::Command::new(&socat)
                    .args(["-t", "5", "STDIO", &target])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("spawn socat");
                let (mut to_tls, mut from_tls) = (
                    child.stdin.take().expect("socat stdin"),
                    child.stdout.take().expect("socat stdout"),
                );
                tokio::spawn(async move {
                    let (mut read, mut write) = connection.into_split();
                    let up = async {
                        let _ = tokio::io::copy(&mut read, &mut to_tls).await;
                        drop(to_tls);
                    };
                    let down = tokio::io::copy(&mut from_tls, &mut write);
                    let _ = tokio::join!(up, down);
                    let _ = child.kill().await;
                });
            }
        });
        TlsTunnel { address, accept }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for TlsTunnel {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// An HTTP client connecting from `local` (a loopback address).
pub fn client_from(local: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(local))
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client")
}

/// The cookies a login answer set (whole `Set-Cookie` headers).
pub struct LoginCookies {
    /// `warren_session=...`.
    pub session: String,
    /// The value of `warren_route` (several hosts: the user's home host).
    pub route: Option<String>,
}

/// The value of the `warren_route` cookie a response sets, if it does.
pub fn route_cookie(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|cookie| {
            let value = cookie.strip_prefix("warren_route=")?;
            Some(value.split(';').next()?.to_string())
        })
}

/// Logs `username` (password `<username>-password`) in at `base_url` with
/// `http` (and `headers`): a caller sending the session as a bearer token,
/// and the cookies the answer set.
pub async fn login_at(
    http: &reqwest::Client,
    base_url: &str,
    username: &str,
    headers: &[(&str, &str)],
) -> (Caller, LoginCookies) {
    let mut request = http
        .post(format!("{base_url}/api/v1/auth/login"))
        .json(&serde_json::json!({
            "username": username,
            "password": format!("{username}-password"),
        }));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("POST /auth/login");
    assert_eq!(response.status(), 200, "login as {username} at {base_url}");
    let (token, session) = session_cookie(&response).expect("a session cookie");
    let route = route_cookie(response.headers());
    let login: serde_json::Value = response.json().await.expect("login body");
    let caller = Caller {
        token,
        base_url: base_url.to_string(),
        via_cookie: false,
        http: http.clone(),
        login,
    };
    (caller, LoginCookies { session, route })
}

/// `size` bytes of a fixed pseudo-random sequence, in 1 MiB chunks.
pub fn chunks(size: usize) -> impl Iterator<Item = Vec<u8>> {
    const CHUNK: usize = 1 << 20;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..size.div_ceil(CHUNK)).map(move |n| {
        let len = CHUNK.min(size - n * CHUNK);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    })
}

/// Reads a response's body until it holds `needle`, within `patience`:
/// what came so far.
pub async fn read_until(
    response: &mut reqwest::Response,
    needle: &str,
    patience: Duration,
) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + patience;
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(other) => panic!("the stream ended ({other:?}) without {needle:?}: {seen}"),
            Err(_) => panic!("no {needle:?} within {patience:?}; the stream showed: {seen}"),
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_replaced_exactly_at_their_indentation() {
        assert_eq!(
            replace_line("a\n  listen 80;\nb", "listen 80;", "listen 1;", 1).unwrap(),
            "a\n  listen 1;\nb"
        );
        assert!(replace_line("a\nb", "listen 80;", "x", 1).is_err());
        assert!(replace_line("listen 80;\nlisten 80;", "listen 80;", "x", 1).is_err());
        assert!(replace_line("# listen 80; here", "listen 80;", "x", 1).is_err());
    }
}
