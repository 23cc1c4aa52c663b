//! The scenarios and the operations they are made of. Each operation is
//! what a person's browser or script would send, timed from when it was
//! due (so a server that stalls is charged for the wait) to its last byte.

use super::client::{status_kind, Call};
use super::users::{fnv1a, written_path, User, Written};
use crate::http::api::is_ping_body;
use futures_util::{SinkExt, StreamExt};
use hyper::header::{CONTENT_TYPE, COOKIE, HOST, ORIGIN};
use hyper::Method;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// `GET /api/v1/ping`: an authenticated round trip to the user's worker.
    Ping,
    /// The files API: list a directory, read a small file, write one.
    Files,
    /// What a person does: list, read, write small files, ping, run a short
    /// task, type in a terminal (one user in ten keeps one open).
    Mixed,
    /// Logins of `--users` over `--ramp`, a third of the way into the run,
    /// while `--calm-users` already logged in ping.
    LoginStorm,
    /// Uploads of `--upload-size` files.
    Uploads,
    /// Short tasks: `echo`, started and its output followed to the end.
    Tasks,
    /// Keystrokes in a terminal (`cat` on a PTY), echo measured.
    Terminals,
    /// Requests to the user's own web app (`--app`) through warren's proxy.
    Apps,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Ping => "ping",
            Scenario::Files => "files",
            Scenario::Mixed => "mixed",
            Scenario::LoginStorm => "login-storm",
            Scenario::Uploads => "uploads",
            Scenario::Tasks => "tasks",
            Scenario::Terminals => "terminals",
            Scenario::Apps => "apps",
        }
    }

    /// Whether the scenario writes files (and so has writes to verify).
    pub fn writes(self) -> bool {
        matches!(self, Scenario::Files | Scenario::Mixed | Scenario::Uploads)
    }

    /// The operation a user does on its `pick`th turn (pick is random).
    pub fn operation(self, pick: u64, user: &User) -> Operation {
        let weighted = |table: &[(u64, Operation)]| {
            let total: u64 = table.iter().map(|(weight, _)| weight).sum();
            let mut at = pick % total.max(1);
            for (weight, op) in table {
                if at < *weight {
                    return *op;
                }
                at -= weight;
            }
            table[0].1
        };
        match self {
            Scenario::Ping | Scenario::LoginStorm => Operation::Ping,
            Scenario::Files => weighted(&[
                (30, Operation::List),
                (50, Operation::Read),
                (20, Operation::Write),
            ]),
            Scenario::Mixed => {
                let keystroke = if has_terminal(self, user) {
                    Operation::Keystroke
                } else {
                    Operation::Read
                };
                weighted(&[
                    (25, Operation::List),
                    (35, Operation::Read),
                    (20, Operation::Write),
                    (5, Operation::Ping),
                    (5, Operation::Task),
                    (10, keystroke),
                ])
            }
            Scenario::Uploads => Operation::Upload,
            Scenario::Tasks => Operation::Task,
            Scenario::Terminals => Operation::Keystroke,
            Scenario::Apps => Operation::App,
        }
    }
}

/// Whether `user` types in a terminal in this scenario (every user in
/// `terminals`; one in ten in `mixed`, as terminals are heavier than files
/// and a box has a few thousand PTYs).
pub fn has_terminal(scenario: Scenario, user: &User) -> bool {
    match scenario {
        Scenario::Terminals => true,
        Scenario::Mixed => user.index.is_multiple_of(10),
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Ping,
    List,
    Read,
    Write,
    Upload,
    Task,
    Keystroke,
    App,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Ping => "ping",
            Operation::List => "list",
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Upload => "upload",
            Operation::Task => "task",
            Operation::Keystroke => "keystroke",
            Operation::App => "app",
        }
    }
}

/// What every operation needs besides its user.
pub struct Context {
    /// The run's directory in each workspace: `warren-bench/<run>`.
    pub directory: String,
    pub small_size: usize,
    pub upload_size: usize,
    pub timeout: Duration,
    pub app: Option<String>,
    /// `--app-path`: what is asked of the app, starting with `/`.
    pub app_path: String,
}

/// The file API's URL path of `path` in a workspace.
pub fn file_url(path: &str) -> String {
    format!("/api/v1/files/{path}")
}

/// Runs `op` for `user`; `Err(kind)` on failure.
pub async fn run(op: Operation, user: &User, context: &Context, pick: u64) -> Result<(), String> {
    let session = user.session();
    let session = session.as_deref();
    let timeout = context.timeout;
    match op {
        Operation::Ping => {
            let answer = user
                .pool
                .send(Call::new(Method::GET, "/api/v1/ping"), session, timeout)
                .await?;
            status_kind(&answer)?;
            if !is_ping_body(&answer.body) {
                return Err("check".to_string());
            }
            Ok(())
        }
        Operation::List => {
            let path = format!("{}?limit=50", file_url(&format!("{}/", context.directory)));
            let answer = user
                .pool
                .send(Call::new(Method::GET, &path), session, timeout)
                .await?;
            status_kind(&answer)
        }
        Operation::Read => {
            let Some(file) = user.some_file(pick) else {
                return Box::pin(run(Operation::List, user, context, pick)).await;
            };
            let path = file_url(&file.path(&context.directory, user.index));
            let answer = user
                .pool
                .send(Call::new(Method::GET, &path), session, timeout)
                .await?;
            status_kind(&answer)?;
            if !file.matches(&answer.body) {
                return Err("check".to_string());
            }
            Ok(())
        }
        Operation::Write => write(user, context, context.small_size, timeout).await,
        Operation::Upload => write(user, context, context.upload_size, timeout).await,
        Operation::Task => task(user, session, timeout).await,
        Operation::Keystroke => keystroke(user, session, timeout, pick).await,
        Operation::App => {
            let app = context.app.as_deref().unwrap_or("");
            let path = format!("/user/{}/{app}{}", user.account.name, context.app_path);
            let answer = user
                .pool
                .send(Call::new(Method::GET, &path), session, timeout)
                .await?;
            status_kind(&answer)
        }
    }
}

/// The bytes of a user's `sequence`th write: a header naming them, then a
/// pattern, so a file that ends up with another write's bytes is noticed.
pub fn content(user: &str, sequence: u64, size: usize) -> Vec<u8> {
    let mut bytes = format!("warren-bench {user} write {sequence}\n").into_bytes();
    let mut state = sequence.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ fnv1a(user.as_bytes());
    while bytes.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.push(b'a' + (state % 26) as u8);
    }
    bytes.truncate(size.max(1));
    bytes
}

/// `PUT` of a new file (never an overwrite: every acknowledged write has
/// its own file, so the read-back knows exactly what each must hold).
pub async fn write(
    user: &User,
    context: &Context,
    size: usize,
    timeout: Duration,
) -> Result<(), String> {
    let sequence = user.next_sequence();
    let path = written_path(&context.directory, user.index, sequence);
    let bytes = content(&user.account.name, sequence, size);
    let written = Written {
        sequence,
        length: bytes.len() as u64,
        hash: fnv1a(&bytes),
    };
    let session = user.session();
    let answer = user
        .pool
        .send(
            Call::new(Method::PUT, &format!("{}?parents=true", file_url(&path)))
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(bytes),
            session.as_deref(),
            timeout,
        )
        .await?;
    status_kind(&answer)?;
    user.remember(written);
    Ok(())
}

/// `POST path` of `body`; the `id` of what it created.
async fn create(
    user: &User,
    path: &str,
    body: &serde_json::Value,
    session: Option<&str>,
    timeout: Duration,
) -> Result<String, String> {
    let answer = user
        .pool
        .send(Call::new(Method::POST, path).json(body), session, timeout)
        .await?;
    status_kind(&answer)?;
    let record: serde_json::Value =
        serde_json::from_slice(&answer.body).map_err(|_| "check".to_string())?;
    record["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "check".to_string())
}

/// `POST /api/v1/tasks` of `echo`, then its output followed to the end.
async fn task(user: &User, session: Option<&str>, timeout: Duration) -> Result<(), String> {
    let body = serde_json::json!({ "command": ["/bin/echo", "warren-bench"] });
    let id = create(user, "/api/v1/tasks", &body, session, timeout).await?;
    let path = format!("/api/v1/tasks/{id}/output?follow=true");
    let answer = user
        .pool
        .send(Call::new(Method::GET, &path), session, timeout)
        .await?;
    status_kind(&answer)?;
    if !answer.body.starts_with(b"warren-bench") {
        return Err("check".to_string());
    }
    Ok(())
}

/// A terminal a user types in, with its WebSocket.
pub struct Terminal {
    id: String,
    socket: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
}

/// Opens the user's terminal (`cat` on a PTY) and attaches to it.
pub async fn open(user: &User, timeout: Duration) -> Result<(), String> {
    let session = user.session();
    let terminal = open_terminal(user, session.as_deref(), timeout).await?;
    *user.terminal.lock().await = Some(terminal);
    Ok(())
}

/// Opens a terminal running `cat` and attaches to it.
async fn open_terminal(
    user: &User,
    session: Option<&str>,
    timeout: Duration,
) -> Result<Terminal, String> {
    let body = serde_json::json!({ "command": ["/bin/cat"], "cols": 80, "rows": 24 });
    let id = create(user, "/api/v1/terminals", &body, session, timeout).await?;
    if let Ok(mut ids) = user.terminal_ids.lock() {
        ids.push(id.clone());
    }
    let target = user.pool.target();
    let mut request = format!(
        "ws://{}{}/api/v1/terminals/{id}/ws",
        target.authority, target.prefix
    )
    .into_client_request()
    .map_err(|_| "bad-path".to_string())?;
    let headers = request.headers_mut();
    for (name, value) in [
        (HOST, target.authority.clone()),
        (ORIGIN, target.origin.clone()),
        (COOKIE, format!("warren_session={}", session.unwrap_or(""))),
    ] {
        headers.insert(name, value.parse().map_err(|_| "bad-header".to_string())?);
    }
    let connect = async {
        let stream = user.pool.connect().await?;
        tokio_tungstenite::client_async(request, stream)
            .await
            .map_err(|err| match err {
                tokio_tungstenite::tungstenite::Error::Http(response) => {
                    response.status().as_u16().to_string()
                }
                _ => "closed".to_string(),
            })
    };
    let (socket, _) = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| "timeout".to_string())??;
    Ok(Terminal { id, socket })
}

/// Types one key in the user's terminal (opening it first if need be) and
/// waits for its echo.
async fn keystroke(
    user: &User,
    session: Option<&str>,
    timeout: Duration,
    pick: u64,
) -> Result<(), String> {
    let mut slot = user.terminal.lock().await;
    if slot.is_none() {
        // Reopened after a failure (the first was opened at log-in).
        *slot = Some(open_terminal(user, session, timeout).await?);
    }
    let Some(terminal) = slot.as_mut() else {
        return Err("check".to_string());
    };
    // A carriage return now and then, so `cat`'s line (and the PTY's
    // 4 KiB line buffer) never fills.
    let key = if pick.is_multiple_of(64) {
        b'\r'
    } else {
        b'a' + (pick % 26) as u8
    };
    // Output still on its way (a line `cat` prints after a carriage
    // return) must not pass for this key's echo.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::ZERO, terminal.socket.next()).await {
    }
    let outcome = tokio::time::timeout(timeout, async {
        terminal
            .socket
            .send(Message::Binary(vec![key].into()))
            .await
            .map_err(|_| "closed".to_string())?;
        loop {
            match terminal.socket.next().await {
                Some(Ok(Message::Binary(bytes))) if bytes.contains(&key) => return Ok(()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    return Err("closed".to_string())
                }
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("timeout".to_string()));
    if outcome.is_err() {
        // A broken terminal is hung up at once (its PTY and program are
        // the server's to free) and opened anew on the next keystroke.
        if let Some(broken) = slot.take() {
            hang_up(user, &broken.id, session, timeout).await;
        }
    }
    outcome
}

/// Answers the server's pings on the user's idle terminal socket (a
/// user who types rarely must not be closed as silent): reads what is
/// waiting, which queues the pongs, and flushes them.
pub async fn keep_alive(user: &User) {
    let Ok(mut slot) = user.terminal.try_lock() else {
        return;
    };
    let Some(terminal) = slot.as_mut() else {
        return;
    };
    let mut broken = false;
    loop {
        match tokio::time::timeout(Duration::from_millis(1), terminal.socket.next()).await {
            Err(_) => break,
            Ok(Some(Ok(_))) => {}
            Ok(_) => {
                broken = true;
                break;
            }
        }
    }
    if broken || terminal.socket.flush().await.is_err() {
        *slot = None;
    }
}

/// `DELETE /api/v1/terminals/{id}`.
async fn hang_up(user: &User, id: &str, session: Option<&str>, timeout: Duration) {
    let path = format!("/api/v1/terminals/{id}");
    let _ = user
        .pool
        .send(Call::new(Method::DELETE, &path), session, timeout)
        .await;
    if let Ok(mut ids) = user.terminal_ids.lock() {
        ids.retain(|known| known != id);
    }
}

/// Hangs up every terminal the user opened (after the run).
pub async fn close_terminals(user: &User, timeout: Duration) {
    *user.terminal.lock().await = None;
    let ids = user
        .terminal_ids
        .lock()
        .map(|mut ids| std::mem::take(&mut *ids))
        .unwrap_or_default();
    let session = user.session();
    for id in ids {
        hang_up(user, &id, session.as_deref(), timeout).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_differ_by_user_and_sequence_and_have_their_size() {
        assert_eq!(content("a", 1, 1024).len(), 1024);
        assert_ne!(content("a", 1, 64), content("a", 2, 64));
        assert_ne!(content("a", 1, 64), content("b", 1, 64));
        assert_eq!(content("a", 1, 0).len(), 1);
    }
}
