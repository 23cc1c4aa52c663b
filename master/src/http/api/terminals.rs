//! `/terminals`: the caller's shells (or other programs) on PTYs in their
//! sandbox, kept by their worker, and `/terminals/{id}/ws`, the WebSocket
//! that attaches to one (binary frames: raw bytes both ways; text frames:
//! JSON control, `{"type":"resize","cols":..,"rows":..}` from the client and
//! `{"type":"exit","code":..,"signal":..}` from the server; the shape
//! xterm.js's attach add-on speaks). A terminal outlives its WebSockets; it
//! is gone with its program, a hang-up (`DELETE`), its idle timeout, or its
//! worker. Another user's terminal is a 404 on every route, before any
//! upgrade.

use super::rfc3339;
use super::tasks::{check, StartTask, TaskCommand};
use crate::auth::Principal;
use crate::http::error::ErrorBody;
use crate::http::extract::{ApiJson, ApiPath, Authed, AuthedWriter};
use crate::http::{ApiError, AppState};
use crate::pool::PoolError;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;
use warren_protocol::{
    Op, OpError, Reply, StreamKind, TerminalEvent, TerminalId, TerminalInfo, TerminalOp,
    TerminalOpen, UserCtx, MAX_TERMINAL_SIDE,
};

/// Settings of the terminals API (from `warren serve`'s flags).
#[derive(Debug, Clone)]
pub struct TerminalSettings {
    /// `--terminal-idle-timeout` (zero: never).
    pub idle_timeout: Duration,
    /// `--max-terminals-per-user`.
    pub max_per_user: u32,
    /// `--terminal-scrollback`, bytes.
    pub scrollback: u32,
    /// SIGHUP to SIGKILL on a `DELETE` (`--task-cancel-grace`).
    pub hang_up_grace: Duration,
}

/// A WebSocket that answered nothing (not even a pong) for this long after
/// a ping is closed.
const PING_EVERY: Duration = Duration::from_secs(20);

/// A client that takes no frame for this long is closed as too slow (the
/// worker then stops holding output for it).
const SEND_LIMIT: Duration = Duration::from_secs(10);

/// A socket's read buffer.
const READ_BUFFER: usize = 4 * 1024;

/// The largest message a client may send (typed or pasted input, a
/// control message), and the most output queued for one socket.
const MAX_MESSAGE: usize = 1024 * 1024;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_terminals, open_terminal))
        .routes(routes!(get_terminal, hang_up_terminal))
        // Not an OpenAPI operation: an upgrade, described in the README.
        .route("/terminals/{id}/ws", axum::routing::get(attach))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenTerminal {
    /// The program and its arguments (default: `/bin/bash -l`, or
    /// `/bin/sh` where there is no bash).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The working directory, relative to the workspace (default: its root).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Columns, 1 to 1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub cols: u16,
    /// Rows, 1 to 1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub rows: u16,
    /// Variables added to the sandbox's clean environment (`TERM` is
    /// `xterm-256color` unless set here).
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
}

/// A terminal as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TerminalView {
    pub id: Uuid,
    pub command: Vec<String>,
    /// The program's process id.
    pub pid: u32,
    pub cols: u16,
    pub rows: u16,
    /// RFC 3339.
    pub created_at: String,
    /// The last output or input, RFC 3339.
    pub last_activity_at: String,
    /// WebSockets attached now.
    pub attached: u32,
    /// `running`, or `ended` (the program exited; the terminal goes as
    /// soon as its last output is delivered).
    pub state: &'static str,
}

impl From<&TerminalInfo> for TerminalView {
    fn from(info: &TerminalInfo) -> Self {
        TerminalView {
            id: Uuid::from_bytes(info.id.0),
            command: info.command.clone(),
            pid: info.pid,
            cols: info.cols,
            rows: info.rows,
            created_at: rfc3339(info.created_ms),
            last_activity_at: rfc3339(info.last_activity_ms),
            attached: info.attached,
            state: if info.ended { "ended" } else { "running" },
        }
    }
}

/// The caller's terminals.
#[derive(Debug, Serialize, ToSchema)]
pub struct TerminalList {
    pub terminals: Vec<TerminalView>,
}

fn check_side(name: &str, value: u16) -> Result<u16, ApiError> {
    if value == 0 || value > MAX_TERMINAL_SIDE {
        return Err(ApiError::Unprocessable(format!(
            "{name} must be 1 to {MAX_TERMINAL_SIDE}, not {value}"
        )));
    }
    Ok(value)
}

fn default_shell() -> Vec<String> {
    if std::path::Path::new("/bin/bash").exists() {
        vec!["/bin/bash".into(), "-l".into()]
    } else {
        vec!["/bin/sh".into()]
    }
}

/// Open a terminal.
///
/// Starts the program on a new terminal in the caller's sandbox; attach to
/// it with a WebSocket on `/api/v1/terminals/{id}/ws`.
#[utoipa::path(
    post, path = "/terminals", tag = "terminals",
    request_body = OpenTerminal,
    responses(
        (status = 201, description = "Running", body = TerminalView),
        (status = 400, description = "A `cwd` that breaks the path rules", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 422, description = "An empty command, NUL bytes, a bad env name, a size out of range, or a program that cannot run", body = ErrorBody),
        (status = 429, description = "As many terminals open as allowed (`too_many_terminals`)", body = ErrorBody),
        (status = 501, description = "This server's workers cannot run terminals", body = ErrorBody),
        (status = 503, description = "No sandbox (`sandbox_unavailable`), or the worker is restarting; see `Retry-After`", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn open_terminal(
    State(state): State<AppState>,
    Authed(principal): Authed,
    body: Result<ApiJson<OpenTerminal>, ApiError>,
) -> Result<(StatusCode, Json<TerminalView>), ApiError> {
    let ApiJson(request) = body?;
    let (cols, rows) = (
        check_side("cols", request.cols)?,
        check_side("rows", request.rows)?,
    );
    let checked = check(StartTask {
        command: TaskCommand::Argv(request.command.unwrap_or_else(default_shell)),
        cwd: request.cwd,
        env: request.env,
        timeout: None,
        stdin: None,
    })?;
    let settings = &state.terminals;
    let open = TerminalOpen {
        id: TerminalId(*Uuid::new_v4().as_bytes()),
        argv: checked.argv,
        cwd: checked.cwd,
        env: checked.env,
        cols,
        rows,
        scrollback: settings.scrollback,
        idle_timeout_ms: settings.idle_timeout.as_millis() as u64,
        max_per_user: settings.max_per_user,
    };
    // Not cut short by a client that goes away: a terminal opened for
    // nobody would still be hung up when idle, but a half-answered start
    // is worse.
    let user = principal.ctx.clone();
    let pool = state.pool.clone();
    let answer = tokio::spawn(async move {
        pool.call(&user, Op::Terminals(TerminalOp::Open(open)))
            .await
    })
    .await
    .map_err(|err| ApiError::Internal(format!("opening a terminal failed: {err}")))?;
    match answer {
        Ok(Reply::Terminal(info)) => Ok((StatusCode::CREATED, Json(TerminalView::from(&info)))),
        Ok(other) => Err(unexpected(other)),
        Err(PoolError::Op(OpError::Invalid(why))) => Err(ApiError::Unprocessable(why)),
        Err(err) => Err(ApiError::Pool(err)),
    }
}

pub(super) fn unexpected(reply: Reply) -> ApiError {
    ApiError::Internal(format!("unexpected reply from the worker: {reply:?}"))
}

/// List the caller's terminals.
#[utoipa::path(
    get, path = "/terminals", tag = "terminals",
    responses(
        (status = 200, description = "Oldest first", body = TerminalList),
        (status = 503, description = "The worker is restarting", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn list_terminals(
    State(state): State<AppState>,
    Authed(principal): Authed,
) -> Result<Json<TerminalList>, ApiError> {
    match terminal_op(&state, &principal.ctx, TerminalOp::List).await? {
        Reply::Terminals(infos) => Ok(Json(TerminalList {
            terminals: infos.iter().map(TerminalView::from).collect(),
        })),
        other => Err(unexpected(other)),
    }
}

async fn terminal_op(state: &AppState, user: &UserCtx, op: TerminalOp) -> Result<Reply, ApiError> {
    state
        .pool
        .call(user, Op::Terminals(op))
        .await
        .map_err(|err| match err {
            PoolError::Op(OpError::NotFound(_)) => ApiError::Missing("terminal"),
            other => ApiError::Pool(other),
        })
}

/// One of the caller's terminals.
#[utoipa::path(
    get, path = "/terminals/{id}", tag = "terminals",
    params(("id" = Uuid, Path, description = "The terminal's id")),
    responses(
        (status = 200, description = "The terminal", body = TerminalView),
        (status = 400, description = "Not a terminal id", body = ErrorBody),
        (status = 404, description = "No such terminal of the caller's", body = ErrorBody),
        (status = 503, description = "The worker is restarting", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn get_terminal(
    State(state): State<AppState>,
    Authed(principal): Authed,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<TerminalView>, ApiError> {
    let op = TerminalOp::Get {
        id: TerminalId(*id.as_bytes()),
    };
    match terminal_op(&state, &principal.ctx, op).await? {
        Reply::Terminal(info) => Ok(Json(TerminalView::from(&info))),
        other => Err(unexpected(other)),
    }
}

/// Hang up a terminal.
///
/// SIGHUP to every process of the terminal, SIGKILL after a grace period;
/// attached WebSockets get the exit and close.
#[utoipa::path(
    delete, path = "/terminals/{id}", tag = "terminals",
    params(("id" = Uuid, Path, description = "The terminal's id")),
    responses(
        (status = 204, description = "Hung up"),
        (status = 400, description = "Not a terminal id", body = ErrorBody),
        (status = 404, description = "No such terminal of the caller's", body = ErrorBody),
        (status = 503, description = "The worker is restarting", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn hang_up_terminal(
    State(state): State<AppState>,
    Authed(principal): Authed,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let op = TerminalOp::HangUp {
        id: TerminalId(*id.as_bytes()),
        grace_ms: state.terminals.hang_up_grace.as_millis() as u64,
    };
    terminal_op(&state, &principal.ctx, op).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A control message from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Control {
    Resize { cols: u16, rows: u16 },
}

/// The WebSocket: the caller's own terminal (404 before any upgrade
/// otherwise), a cookie only from our own origin (403), no read-only token.
async fn attach(
    State(state): State<AppState>,
    AuthedWriter(principal): AuthedWriter,
    ApiPath(id): ApiPath<Uuid>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let id = TerminalId(*id.as_bytes());
    terminal_op(&state, &principal.ctx, TerminalOp::Get { id }).await?;
    let upgrade =
        upgrade.map_err(|err| ApiError::BadRequest(format!("this route is a WebSocket: {err}")))?;
    Ok(upgrade
        // tungstenite's defaults (a 128 KiB read buffer, 64 MiB messages)
        // are for bulk transfers; a terminal's frames are keystrokes and
        // screenfuls, and thousands of sockets may sit idle.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_MESSAGE)
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        // A browser that sent its bearer token as a subprotocol gets
        // `warren.bearer` back (it fails the socket otherwise).
        .protocols([crate::http::identity::WS_BEARER_PROTOCOL])
        .on_upgrade(move |socket| bridge(state, principal, id, socket))
        .into_response())
}

/// Carries bytes between the WebSocket and the terminal's stream until
/// either ends.
async fn bridge(state: AppState, principal: Arc<Principal>, id: TerminalId, mut socket: WebSocket) {
    let metrics = state.metrics.terminals();
    metrics.websocket_opened();
    let user = &principal.ctx;
    let reason = match state
        .pool
        .open_stream(user, StreamKind::TerminalAttach { id })
        .await
    {
        Ok(stream) => {
            // A logout, a revocation or the user's disabling ends the
            // socket at once, not only new requests.
            let mut watch = state.auth.watch(principal.clone(), false);
            carry(&state, user, id, &mut socket, stream, watch.ended()).await
        }
        Err(err) => Close::Error(format!("cannot attach: {err}")),
    };
    let (code, text) = match reason {
        Close::Exited => (1000, "the program ended".to_string()),
        Close::ClientLeft => (1000, String::new()),
        Close::Unresponsive => (1001, "no answer to pings".to_string()),
        Close::TooSlow => (1008, "this client took no output for too long".to_string()),
        Close::Refused(why) => (1008, why),
        Close::Error(why) => (1011, why),
    };
    // A close reason is at most 123 bytes.
    let mut text = text;
    while text.len() > 123 {
        text.pop();
    }
    let close = socket.send(Message::Close(Some(CloseFrame {
        code,
        reason: text.into(),
    })));
    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
    metrics.websocket_closed();
}

enum Close {
    Exited,
    ClientLeft,
    Unresponsive,
    TooSlow,
    Refused(String),
    Error(String),
}

async fn carry(
    state: &AppState,
    user: &UserCtx,
    id: TerminalId,
    socket: &mut WebSocket,
    stream: warren_protocol::stream::Stream,
    revoked: impl std::future::Future<Output = ()>,
) -> Close {
    let metrics = state.metrics.terminals();
    tokio::pin!(revoked);
    let (mut sender, mut receiver) = stream.split();
    let mut pings = tokio::time::interval(PING_EVERY);
    pings.tick().await;
    let mut heard = Instant::now();
    let close = loop {
        tokio::select! {
            () = &mut revoked => {
                break Close::Refused("the session ended: sign in again".into());
            }
            from_worker = receiver.recv() => match from_worker {
                Some(Ok(bytes)) => {
                    let event = match warren_protocol::codec::decode_message::<TerminalEvent>(&bytes) {
                        Ok(event) => event,
                        Err(err) => break Close::Error(format!("bad terminal event: {err}")),
                    };
                    let message = match event {
                        TerminalEvent::Output(bytes) => {
                            metrics.bytes("out", bytes.len());
                            Message::Binary(bytes.into())
                        }
                        TerminalEvent::Exited { code, signal } => {
                            let text = serde_json::json!({"type": "exit", "code": code, "signal": signal});
                            let exit = socket.send(Message::Text(text.to_string().into()));
                            let _ = tokio::time::timeout(SEND_LIMIT, exit).await;
                            break Close::Exited;
                        }
                    };
                    match tokio::time::timeout(SEND_LIMIT, socket.send(message)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break Close::ClientLeft,
                        Err(_) => break Close::TooSlow,
                    }
                }
                // The worker's reason: a client that took no output, a
                // program that took no input, too many clients.
                Some(Err(OpError::Busy(why))) => break Close::Refused(why),
                Some(Err(OpError::WorkerGone(_))) => {
                    break Close::Error("the worker running this terminal stopped; the terminal is gone".into())
                }
                Some(Err(err)) => break Close::Error(err.to_string()),
                None => break Close::Exited,
            },
            from_client = socket.recv() => match from_client {
                Some(Ok(message)) => {
                    heard = Instant::now();
                    match message {
                        Message::Binary(bytes) => {
                            metrics.bytes("in", bytes.len());
                            match tokio::time::timeout(SEND_LIMIT, sender.send(&bytes)).await {
                                Ok(Ok(())) => {}
                                // The worker ended the stream: its reason
                                // comes next from `receiver`.
                                Ok(Err(_)) => {}
                                Err(_) => {
                                    break Close::Refused(
                                        "the terminal's program took no input for too long".into(),
                                    )
                                }
                            }
                        }
                        Message::Text(text) => {
                            if let Ok(Control::Resize { cols, rows }) = serde_json::from_str(text.as_str()) {
                                let op = TerminalOp::Resize { id, cols, rows };
                                if let Err(err) = state.pool.call(user, Op::Terminals(op)).await {
                                    tracing::debug!(error = %err, "a terminal resize was refused");
                                }
                            }
                        }
                        Message::Close(_) => break Close::ClientLeft,
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
                Some(Err(_)) | None => break Close::ClientLeft,
            },
            _ = pings.tick() => {
                if heard.elapsed() > 2 * PING_EVERY {
                    break Close::Unresponsive;
                }
                let ping = socket.send(Message::Ping(Vec::new().into()));
                match tokio::time::timeout(SEND_LIMIT, ping).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break Close::ClientLeft,
                    Err(_) => break Close::TooSlow,
                }
            }
        }
    };
    let _ = sender.finish();
    close
}
