//! A real OpenID provider for the OpenID Connect login tests:
//! `tests/oidc/provider.mjs` (oidc-provider, pinned in
//! `tests/oidc/package-lock.json`, installed by `tests/oidc/install.sh` into
//! `target/oidc-node`, or `$WARREN_OIDC_DIR`), run with `node` on a free
//! port of 127.0.0.1.
//!
//! The provider (issuer `http://127.0.0.1:<port>`) knows one client,
//! `warren` / `warren-oidc-test-secret` (client_secret_basic or _post, code
//! flow, PKCE S256 required), and two accounts: `alice` / `alice-password`
//! (sub `alice-sub-0001`, groups `warren-admins`, `staff`) and `bob` /
//! `bob-password` (sub `bob-sub-0002`, groups `staff`). Its ID tokens
//! carry `preferred_username`, `email` and `groups` themselves.
//!
//! Without the install (or `node`) the tests skip, loudly; with
//! `WARREN_REQUIRE_OIDC` set (CI) they fail instead.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crate::nginx::{free_port, repo_root};

/// The client the provider knows.
pub const CLIENT_ID: &str = "warren";
/// Its secret.
pub const CLIENT_SECRET: &str = "warren-oidc-test-secret";

/// How long one start of the provider may take to print its READY line
/// (node loads oidc-provider in 1-2 s; see `Provider::start_on` for the
/// starts that never print it).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether a missing provider install fails the test instead of skipping
/// it (`WARREN_REQUIRE_OIDC` set and not "0").
pub fn oidc_required() -> bool {
    std::env::var_os("WARREN_REQUIRE_OIDC").is_some_and(|value| value != "0")
}

/// The install directory: `$WARREN_OIDC_DIR`, else `<repo>/target/oidc-node`.
pub fn install_dir() -> PathBuf {
    match std::env::var_os("WARREN_OIDC_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join("target/oidc-node"),
    }
}

/// What this machine lacks to run the provider, if anything.
fn missing(node_modules: &Path) -> Option<String> {
    let node = Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|status| status.success()) {
        return Some("`node` is not on PATH".to_string());
    }
    for needed in ["oidc-provider/package.json", "jose/package.json"] {
        let path = node_modules.join(needed);
        if !path.exists() {
            return Some(format!("{} is missing", path.display()));
        }
    }
    None
}

/// A running test OpenID provider, killed when dropped.
pub struct Provider {
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    child: Child,
    /// Held open: the provider exits when its stdin closes.
    stdin: Option<ChildStdin>,
}

/// What the stdout reader reports: the READY line's issuer, or the output
/// seen before stdout closed.
type Ready = Result<String, String>;

impl Provider {
    /// Starts the provider with these redirect URIs registered for the
    /// `warren` client. `None` (after a loud SKIP message) when the
    /// install is missing and not required; panics when it is required.
    pub async fn start(redirect_uris: &[String]) -> Option<Provider> {
        Self::start_on(None, redirect_uris).await
    }

    /// [`Provider::start`] on `port` when given (a port picked with
    /// [`free_port`] before warren started, so that warren's
    /// `--oidc-issuer` can name it; warren reads discovery only at the
    /// first login).
    pub async fn start_on(port: Option<u16>, redirect_uris: &[String]) -> Option<Provider> {
        assert!(
            !redirect_uris.is_empty(),
            "the OpenID provider needs at least one redirect URI"
        );
        let dir = install_dir();
        let node_modules = dir.join("node_modules");
        if let Some(missing) = missing(&node_modules) {
            assert!(
                !oidc_required(),
                "the OpenID Connect tests are required here (WARREN_REQUIRE_OIDC) but {missing}: \
                 run tests/oidc/install.sh (or set WARREN_OIDC_DIR to its --dir)"
            );
            eprintln!(
                "\n*****************************************************************\n\
                 *** SKIPPED: an OpenID Connect test -- NOT RUN: {missing}.\n\
                 *** Run tests/oidc/install.sh (node + npm needed; installs into\n\
                 *** target/oidc-node, or set WARREN_OIDC_DIR); CI sets WARREN_REQUIRE_OIDC=1.\n\
                 *****************************************************************\n"
            );
            return None;
        }
        let script = repo_root().join("tests/oidc/provider.mjs");
        // The port is free when picked, not necessarily when node binds it:
        // a lost race (the provider exits before READY) is retried.
        let mut failures = Vec::new();
        // Node was also seen, rarely, to stop after loading oidc-provider
        // and never listen (cause unknown): a start that stays silent is
        // killed and tried again, on the same port when it was given (the
        // killed process never bound it, or no longer holds it).
        for _ in 0..3 {
            let port = port.unwrap_or_else(|| free_port().unwrap_or_else(|err| panic!("{err}")));
            match Self::spawn(&script, &dir, &node_modules, port, redirect_uris).await {
                Ok(provider) => return Some(provider),
                Err(err) => failures.push(format!("port {port}: {err}")),
            }
        }
        panic!(
            "the test OpenID provider ({}) did not start:\n{}",
            script.display(),
            failures.join("\n")
        );
    }

    async fn spawn(
        script: &Path,
        dir: &Path,
        node_modules: &Path,
        port: u16,
        redirect_uris: &[String],
    ) -> Result<Provider, String> {
        let mut command = Command::new("node");
        command
            .arg(script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--node-modules")
            .arg(node_modules)
            .env("NODE_PATH", node_modules)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for uri in redirect_uris {
            command.arg("--redirect-uri").arg(uri);
        }
        let mut child = command
            .spawn()
            .map_err(|err| format!("cannot spawn node {}: {err}", script.display()))?;
        let stdin = child.stdin.take();

        // stderr: forwarded to the test's, line by line.
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                match line {
                    Ok(line) => eprintln!("[oidc {port}] {line}"),
                    Err(_) => break,
                }
            }
        });

        // stdout: the READY line, then drained.
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Ready>();
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            let mut seen = String::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match (ready_tx.take(), line.strip_prefix("READY ")) {
                    (Some(tx), Some(issuer)) => {
                        let _ = tx.send(Ok(issuer.trim().to_string()));
                    }
                    (tx, _) => {
                        eprintln!("[oidc {port}] (stdout) {line}");
                        seen.push_str(&line);
                        seen.push('\n');
                        ready_tx = tx;
                    }
                }
            }
            if let Some(tx) = ready_tx {
                let _ = tx.send(Err(seen));
            }
        });

        let mut provider = Provider {
            issuer: String::new(),
            client_id: CLIENT_ID.to_string(),
            client_secret: CLIENT_SECRET.to_string(),
            child,
            stdin,
        };
        match tokio::time::timeout(START_TIMEOUT, ready_rx).await {
            Ok(Ok(Ok(issuer))) => {
                let expected = format!("http://127.0.0.1:{port}");
                if issuer != expected {
                    return Err(format!("READY {issuer}, expected READY {expected}"));
                }
                provider.issuer = issuer;
                Ok(provider)
            }
            Ok(early) => {
                // stdout closed (or its reader died) before READY.
                let stdout = match early {
                    Ok(Err(stdout)) if !stdout.trim().is_empty() => {
                        format!("; stdout:\n{}", stdout.trim())
                    }
                    _ => String::new(),
                };
                // Already exiting: a kill keeps an exited child's status.
                let _ = provider.child.kill();
                let status = provider.child.wait().ok();
                Err(format!(
                    "the provider exited before READY ({}; its stderr is above){stdout}",
                    status.map_or_else(|| "status unknown".to_string(), |s| s.to_string())
                ))
            }
            Err(_) => Err(format!(
                "no READY line within {} s (its stderr is above)",
                START_TIMEOUT.as_secs()
            )),
        }
    }

    /// Makes the token endpoint answer the next token request that issues
    /// an ID token with a malicious one instead (`Some(kind)`), or clears
    /// that (`None`). Kinds: `other-aud`, `expired`, `wrong-nonce`,
    /// `alg-none`, `hs256-rsa-public`, `unknown-kid`, `other-key-same-kid`,
    /// `wrong-issuer`, `future-iat` (see `tests/oidc/provider.mjs`).
    pub async fn tamper(&self, kind: Option<&str>) {
        let url = format!("{}/test/tamper", self.issuer);
        let response = http_client()
            .post(&url)
            .json(&serde_json::json!({ "kind": kind }))
            .send()
            .await
            .unwrap_or_else(|err| panic!("POST {url}: {err}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(
            status == reqwest::StatusCode::OK,
            "POST {url} {{\"kind\": {kind:?}}}: {status}: {}",
            excerpt(&body)
        );
    }

    /// Writes the client secret to `dir/oidc-client-secret` (mode 0600, no
    /// trailing newline), for warren's `--oidc-client-secret-file`.
    pub fn secret_file(&self, dir: &Path) -> PathBuf {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = dir.join("oidc-client-secret");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|err| panic!("create {}: {err}", path.display()));
        // An existing file keeps its mode on open: set it.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|err| panic!("chmod 600 {}: {err}", path.display()));
        file.write_all(self.client_secret.as_bytes())
            .unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
        path
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        // Closing stdin alone makes it exit; kill in case it is stuck.
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client for the provider's test hooks (no proxy: the provider is on
/// 127.0.0.1).
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// The first 600 characters of a body, for failure messages.
fn excerpt(body: &str) -> String {
    let mut text: String = body.chars().take(600).collect();
    if text.len() < body.len() {
        text.push_str("...");
    }
    text
}

/// Signs `login` in at the provider: from `authorize_url` (the provider's
/// authorization URL warren redirected to) follows the provider's
/// redirects, fetches and posts its login form, and returns where the
/// provider finally redirects to (warren's callback, with `code`, `state`
/// and `iss`, or an `error`) WITHOUT requesting it.
///
/// `client` must not follow redirects (`redirect::Policy::none()`) and must
/// keep cookies (`cookie_store(true)`): the provider ties the steps
/// together with path-scoped cookies (`_interaction`, `_interaction_resume`),
/// then remembers the login in a `_session` cookie. With that cookie it
/// does not ask again (whoever logs in): this panics then, so use a fresh
/// client per login, or [`follow_provider_session`] when reusing the
/// session is the point. Panics, with the status, `Location` and a body
/// excerpt, on anything unexpected, including a wrong password (401).
pub async fn log_in_at_provider(
    client: &reqwest::Client,
    authorize_url: &str,
    login: &str,
    password: &str,
) -> reqwest::Url {
    walk_provider(client, authorize_url, Some((login, password))).await
}

/// Like [`log_in_at_provider`] for a client whose provider session
/// (`_session` cookie) is still valid: the provider redirects back without
/// asking for a login. Panics when it asks for one.
pub async fn follow_provider_session(
    client: &reqwest::Client,
    authorize_url: &str,
) -> reqwest::Url {
    walk_provider(client, authorize_url, None).await
}

async fn walk_provider(
    client: &reqwest::Client,
    authorize_url: &str,
    credentials: Option<(&str, &str)>,
) -> reqwest::Url {
    use reqwest::{StatusCode, Url};

    let start = Url::parse(authorize_url)
        .unwrap_or_else(|err| panic!("the authorize URL {authorize_url:?}: {err}"));
    let provider_origin = start.origin();
    let mut url = start;
    let mut logged_in = false;
    // /auth -> /interaction/<uid> -> (login) -> /auth/<uid> -> callback.
    for _ in 0..10 {
        let response = client
            .get(url.clone())
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {url}: {err}"));
        let next = redirect_target(response, "GET", &url).await;
        if next.origin() != provider_origin {
            if let Some((login, _)) = credentials {
                assert!(
                    logged_in,
                    "the provider redirected to {next} without asking {login:?} to log in: \
                     the client still has a provider session (_session cookie) -- use a fresh \
                     client per login, or follow_provider_session"
                );
            }
            return next;
        }
        let is_interaction = next
            .path()
            .strip_prefix("/interaction/")
            .is_some_and(|uid| !uid.is_empty() && !uid.contains('/'));
        if !is_interaction {
            url = next;
            continue;
        }
        let Some((login, password)) = credentials else {
            panic!(
                "the provider asked for a login ({next}): the client has no valid provider session"
            );
        };
        assert!(
            !logged_in,
            "the provider asked for a second interaction ({next}) after {login:?} logged in"
        );

        // The login form.
        let response = client
            .get(next.clone())
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {next}: {err}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(
            status == StatusCode::OK && body.contains("name=\"login\""),
            "GET {next} (the provider's login page): expected 200 with a login form, got {status}: {}",
            excerpt(&body)
        );

        // Posting it.
        let post = Url::parse(&format!("{next}/login")).expect("login URL");
        let response = client
            .post(post.clone())
            .form(&[("login", login), ("password", password)])
            .send()
            .await
            .unwrap_or_else(|err| panic!("POST {post}: {err}"));
        if response.status() == StatusCode::UNAUTHORIZED {
            let body = response.text().await.unwrap_or_default();
            panic!(
                "POST {post}: the provider refused {login:?}'s password (401): {}",
                excerpt(&body)
            );
        }
        logged_in = true;
        url = redirect_target(response, "POST", &post).await;
        if url.origin() != provider_origin {
            return url;
        }
    }
    panic!("more than 10 redirects at the provider from {authorize_url} (last: {url})");
}

/// The absolute target of a 302/303/307 `response`; panics otherwise.
async fn redirect_target(
    response: reqwest::Response,
    method: &str,
    url: &reqwest::Url,
) -> reqwest::Url {
    let status = response.status();
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    match location {
        Some(location) if status.is_redirection() => url.join(&location).unwrap_or_else(|err| {
            panic!("{method} {url}: {status} with a bad Location {location:?}: {err}")
        }),
        location => {
            let body = response.text().await.unwrap_or_default();
            panic!(
                "{method} {url}: expected a redirect, got {status} (Location: {location:?}): {}",
                excerpt(&body)
            );
        }
    }
}
