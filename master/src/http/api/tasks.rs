//! `/tasks`: commands run in the caller's workspace, in their sandbox, by
//! their worker. The master keeps the records (a record is written
//! `running` before the worker is asked, so no end can arrive for an
//! unknown task); the worker runs the command, keeps its output bounded in
//! the user's `state/`, and reports its end, which the recorder
//! (`crate::recorder`) writes. Another user's task is a 404 on every route,
//! like a missing one.

use super::files::{parse_range, RangeAnswer, Transfer};
use super::rfc3339;
use crate::activity::ActivityKind;
use crate::auth::Principal;
use crate::http::error::ErrorBody;
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, Authed, ClientInfo};
use crate::http::{ApiError, AppState};
use crate::pool::PoolError;
use crate::store::{AuditEntry, NewTask, TaskCursor, TaskFilter, TaskRecord, TaskUpdate};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;
use warren_protocol::stream::{StreamReceiver, StreamSender};
use warren_protocol::{
    Op, OpError, Reply, StreamKind, TaskEnd, TaskId, TaskOp, TaskOutputInfo, TaskStart, TaskState,
    UserCtx,
};

/// The largest `POST /tasks` body: the command and environment (256 KiB)
/// and the standard input (512 KiB), JSON-escaped.
pub const MAX_TASK_BODY: usize = 4 * 1024 * 1024;
/// Arguments of a command at most.
pub const MAX_ARGS: usize = 1024;
/// Bytes of the command's arguments and the environment together at most.
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;
/// Environment variables at most.
pub const MAX_ENV_VARS: usize = 256;
/// Bytes of standard input at most: with the command and environment it
/// travels to the worker in one frame, which is at most 1 MiB.
pub const MAX_STDIN: usize = 512 * 1024;
/// The longest timeout: 7 days, in seconds.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// Where the headers of `GET /tasks/{id}/output` say how much output was
/// dropped (oldest first) and written in all.
const DROPPED_HEADER: &str = "x-warren-output-dropped";
const WRITTEN_HEADER: &str = "x-warren-output-written";

/// How a task tells the caller its output was cut.
fn dropped_marker(dropped: u64) -> String {
    format!("[warren: {dropped} earlier bytes of output dropped]\n")
}

/// Settings of the tasks API (from `warren serve`'s flags).
#[derive(Debug, Clone)]
pub struct TaskSettings {
    /// This master's identity in the task records.
    pub master_id: String,
    /// Output kept per task (`--task-output-limit`).
    pub output_limit: u64,
    /// SIGTERM to SIGKILL on a cancel (`--task-cancel-grace`).
    pub cancel_grace: Duration,
    /// Task records kept per user (`--task-history`).
    pub history: u64,
}

/// Finished tasks removed at most per start beyond the history bound (one
/// start adds one record, so this keeps up with any pace).
const HISTORY_BATCH: i64 = 16;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tasks, start_task))
        .routes(routes!(get_task, delete_task))
        .routes(routes!(task_output))
        .routes(routes!(cancel_task))
        // The standard input may be up to 512 KiB: more than other JSON.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_TASK_BODY))
}

/// A command: an argument vector, or a string run by `/bin/sh -c`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TaskCommand {
    /// The program (found on the sandbox's `PATH` unless it contains a
    /// `/`) and its arguments.
    Argv(Vec<String>),
    /// A shell command line, run as `["/bin/sh", "-c", line]`.
    Shell(String),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartTask {
    /// Up to 1024 arguments, 256 KiB with the environment; no NUL bytes.
    pub command: TaskCommand,
    /// The working directory, relative to the workspace (default: its root).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Variables added to the sandbox's clean environment: up to 256,
    /// names `[A-Za-z_][A-Za-z0-9_]*`. Their values are never stored.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Seconds (1 to 604800) after which the task is stopped as
    /// `timed_out`; default none.
    #[serde(default, deserialize_with = "crate::http::json_integer")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 604800)]
    pub timeout: Option<u64>,
    /// Sent to the task's standard input (up to 512 KiB), which then closes.
    #[serde(default)]
    pub stdin: Option<String>,
}

/// A task as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    pub id: Uuid,
    /// `running`, `exited`, `failed` (could not run), `killed` (a signal:
    /// a cancel or a limit), `timed_out` or `lost` (its worker died).
    pub state: &'static str,
    pub command: Vec<String>,
    /// Relative to the workspace; `""` is its root.
    pub cwd: String,
    /// The names of the variables set (values are not kept).
    pub env: Vec<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why it failed, was killed or lost, when known.
    pub error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// From start (or creation) to end, or to now while running.
    pub duration_ms: i64,
    /// Bytes written to stdout and stderr in all (some may be dropped).
    pub output_bytes: u64,
    /// Seconds; `null` for none.
    pub timeout: Option<u64>,
}

impl From<&TaskRecord> for TaskView {
    fn from(task: &TaskRecord) -> Self {
        let began = task.started_ms.unwrap_or(task.created_ms);
        let until = task.ended_ms.unwrap_or_else(crate::store::now_ms);
        TaskView {
            id: task.id,
            state: task.state.as_str(),
            command: task.command.clone(),
            cwd: task.cwd.clone(),
            env: task.env_keys.clone(),
            exit_code: task.exit_code,
            signal: task.signal,
            error: task.error.clone(),
            created_at: rfc3339(task.created_ms),
            started_at: task.started_ms.map(rfc3339),
            ended_at: task.ended_ms.map(rfc3339),
            duration_ms: (until - began).max(0),
            output_bytes: task.output_bytes,
            timeout: (task.timeout_ms > 0).then_some(task.timeout_ms / 1000),
        }
    }
}

/// What `POST /tasks` checked and will send.
#[derive(Debug)]
pub(super) struct Checked {
    pub(super) argv: Vec<String>,
    pub(super) cwd: String,
    pub(super) env: Vec<(String, String)>,
    timeout_ms: u64,
    stdin: Vec<u8>,
}

fn invalid(why: impl Into<String>) -> ApiError {
    ApiError::Unprocessable(why.into())
}

fn env_name_ok(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks a start request: clear 422s for what cannot be run, 400 for a
/// working directory that breaks the path rules.
pub(super) fn check(request: StartTask) -> Result<Checked, ApiError> {
    let argv = match request.command {
        // An empty program name is a command that cannot run: the worker
        // says so, and the task is `failed`.
        TaskCommand::Argv(argv) => {
            if argv.is_empty() {
                return Err(invalid("command must name a program"));
            }
            argv
        }
        TaskCommand::Shell(line) => {
            if line.trim().is_empty() {
                return Err(invalid("command must not be empty"));
            }
            vec!["/bin/sh".to_string(), "-c".to_string(), line]
        }
    };
    if argv.len() > MAX_ARGS {
        return Err(invalid(format!(
            "command has {} arguments; at most {MAX_ARGS}",
            argv.len()
        )));
    }
    if argv.iter().any(|arg| arg.contains('\0')) {
        return Err(invalid("command arguments may not contain NUL bytes"));
    }
    let env: Vec<(String, String)> = request.env.unwrap_or_default().into_iter().collect();
    if env.len() > MAX_ENV_VARS {
        return Err(invalid(format!(
            "env has {} variables; at most {MAX_ENV_VARS}",
            env.len()
        )));
    }
    for (name, value) in &env {
        if !env_name_ok(name) {
            return Err(invalid(format!(
                "env name {name:?} is not [A-Za-z_][A-Za-z0-9_]*"
            )));
        }
        if value.contains('\0') {
            return Err(invalid(format!(
                "env value of {name} may not contain NUL bytes"
            )));
        }
    }
    let size: usize = argv.iter().map(|a| a.len() + 1).sum::<usize>()
        + env
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
    if size > MAX_COMMAND_BYTES {
        return Err(invalid(format!(
            "command and env take {size} bytes; at most {MAX_COMMAND_BYTES}"
        )));
    }
    let cwd = match request.cwd.as_deref() {
        None | Some("") => String::new(),
        Some(cwd) => {
            warren_protocol::path::check(cwd)
                .map_err(|err| ApiError::BadRequest(format!("cwd: {err}")))?;
            cwd.trim_end_matches('/').to_string()
        }
    };
    let timeout_ms = match request.timeout {
        None => 0,
        Some(seconds) if (1..=MAX_TIMEOUT_SECS).contains(&seconds) => seconds * 1000,
        Some(seconds) => {
            return Err(invalid(format!(
                "timeout {seconds} s: use 1 to {MAX_TIMEOUT_SECS} seconds"
            )))
        }
    };
    let stdin = request.stdin.unwrap_or_default().into_bytes();
    if stdin.len() > MAX_STDIN {
        return Err(invalid(format!(
            "stdin has {} bytes; at most {MAX_STDIN}",
            stdin.len()
        )));
    }
    Ok(Checked {
        argv,
        cwd,
        env,
        timeout_ms,
        stdin,
    })
}

/// The caller's task `id`, or 404 (another user's too).
async fn find(state: &AppState, principal: &Principal, id: Uuid) -> Result<TaskRecord, ApiError> {
    state
        .auth
        .store()
        .task(principal.user_id, id)
        .await?
        .ok_or(ApiError::Missing("task"))
}

fn audit_entry(
    principal: &Principal,
    info: &ClientInfo,
    event: &'static str,
    task: &TaskRecord,
) -> AuditEntry {
    AuditEntry {
        event,
        actor_id: Some(principal.user_id.to_string()),
        actor_name: Some(principal.username.clone()),
        subject: Some(task.id.to_string()),
        address: Some(info.client.address.to_string()),
        detail: Some(format!(
            "{} -> {}",
            shell_words(&task.command),
            task.state.as_str()
        )),
    }
}

/// A command as one line, for the audit log.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            if !arg.is_empty()
                && arg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
            {
                arg.clone()
            } else {
                format!("{arg:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Start a task.
///
/// The record is `running` once the command was exec'd; a command that
/// cannot run (not found, not executable, a bad working directory) is
/// still a `201`, with state `failed` and the reason in `error`.
#[utoipa::path(
    post, path = "/tasks", tag = "tasks",
    request_body = StartTask,
    responses(
        (status = 201, description = "Started (or `failed`: could not run)", body = TaskView),
        (status = 400, description = "A `cwd` that breaks the path rules", body = ErrorBody),
        (status = 413, description = "The body is larger than 4 MiB", body = ErrorBody),
        (status = 422, description = "An empty command, NUL bytes, too many or too large arguments, env names, stdin or timeout out of range", body = ErrorBody),
        (status = 429, description = "As many tasks running as the user's limit allows (`too_many_tasks`); see `Retry-After`", body = ErrorBody),
        (status = 501, description = "This server's workers cannot run tasks", body = ErrorBody),
        (status = 503, description = "No sandbox (`sandbox_unavailable`), or the worker is restarting; see `Retry-After`", body = ErrorBody),
        (status = 507, description = "The caller is over their storage quota (`quota_exceeded`: their tasks wrote past it), or the server's disk is full", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn start_task(
    State(state): State<AppState>,
    Authed(principal): Authed,
    info: ClientInfo,
    body: Result<ApiJson<StartTask>, ApiError>,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let ApiJson(request) = body.map_err(|err| match err {
        ApiError::PayloadTooLarge(_) => ApiError::PayloadTooLarge(MAX_TASK_BODY),
        other => other,
    })?;
    let checked = check(request)?;
    // Started on a task of its own: a client that goes away mid-request
    // must not cut the start short between the record and the worker's
    // answer (the task would run with a record that never learns it did).
    tokio::spawn(start_checked(state, principal, info, checked))
        .await
        .map_err(|err| ApiError::Internal(format!("starting a task failed: {err}")))?
}

async fn start_checked(
    state: AppState,
    principal: Arc<Principal>,
    info: ClientInfo,
    checked: Checked,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let user = &principal.ctx;
    let store = state.auth.store();
    let id = Uuid::new_v4();
    let record = store
        .insert_task(&NewTask {
            id,
            user_id: principal.user_id,
            command: &checked.argv,
            cwd: &checked.cwd,
            env_keys: checked.env.iter().map(|(k, _)| k.clone()).collect(),
            timeout_ms: checked.timeout_ms,
            master_id: &state.tasks.master_id,
            slot: state.pool.slot_for(user),
        })
        .await?;
    let start = TaskStart {
        task: TaskId(*id.as_bytes()),
        argv: checked.argv,
        cwd: checked.cwd,
        env: checked.env,
        timeout_ms: checked.timeout_ms,
        stdin: checked.stdin,
        output_limit: state.tasks.output_limit,
    };
    let answer = state.pool.call(user, Op::Tasks(TaskOp::Start(start))).await;
    let record = match answer {
        Ok(Reply::TaskStarted {
            worker_pid,
            pid,
            started_ms,
            spawn_micros,
        }) => {
            state.metrics.tasks().observe_spawn(spawn_micros);
            // The start is told before it is recorded: the recorder tells an
            // end only once the start is recorded, so the feed can never
            // show a task's end before its start.
            state.activity.publish(
                principal.user_id,
                Some(&principal.username),
                ActivityKind::TaskStarted {
                    task: id,
                    command: record.command.clone(),
                    cwd: record.cwd.clone(),
                },
            );
            let update = TaskUpdate::Started {
                worker_pid,
                pid,
                started_ms,
            };
            let record = store.update_task(id, &update).await?.unwrap_or(record);
            // A short task's end may already be recorded (before the start
            // was, so the recorder left telling it to this handler).
            if record.state != TaskState::Running {
                state.activity.publish(
                    principal.user_id,
                    None,
                    crate::recorder::finished_event(&record),
                );
            }
            record
        }
        // The command cannot be run: a task that failed, not a bad request.
        Err(PoolError::Op(OpError::Invalid(why))) => {
            end_now(&state, &principal, record, TaskState::Failed, why).await?
        }
        Err(PoolError::WorkerUnavailable { slot }) => {
            // Perhaps started, perhaps not: what became of it is unknown.
            let why = "its worker process died or was down while it started".to_string();
            if let Err(err) = end_now(&state, &principal, record, TaskState::Lost, why).await {
                warn!(error = %err, task = %id, "cannot mark a task lost");
            }
            return Err(ApiError::Pool(PoolError::WorkerUnavailable { slot }));
        }
        // Refused before it started (too many tasks, no sandbox, shutting
        // down...): nothing to keep.
        Err(err) => {
            if let Err(forget) = store.forget_task(id).await {
                warn!(error = %forget, task = %id, "cannot remove a task that never started");
            }
            return Err(ApiError::Pool(err));
        }
        Ok(other) => {
            let why = format!("unexpected reply from the worker: {other:?}");
            end_now(&state, &principal, record, TaskState::Failed, why.clone()).await?;
            return Err(ApiError::Internal(why));
        }
    };
    state
        .auth
        .audit(audit_entry(&principal, &info, "task_started", &record))
        .await;
    tokio::spawn(forget_old_tasks(
        state.clone(),
        principal.ctx.clone(),
        principal.user_id,
    ));
    Ok((StatusCode::CREATED, Json(TaskView::from(&record))))
}

/// Removes the user's oldest finished tasks beyond `--task-history`: their
/// output (through the worker), then their records. A failure leaves them
/// for the next start.
async fn forget_old_tasks(state: AppState, user: UserCtx, user_id: Uuid) {
    let store = state.auth.store();
    let old = match store
        .tasks_beyond(user_id, state.tasks.history, HISTORY_BATCH)
        .await
    {
        Ok(old) => old,
        Err(err) => {
            warn!(error = %err, "cannot look for tasks beyond the history bound");
            return;
        }
    };
    for id in old {
        let op = TaskOp::Delete {
            task: TaskId(*id.as_bytes()),
        };
        match state.pool.call(&user, Op::Tasks(op)).await {
            Ok(_) | Err(PoolError::Op(OpError::NotFound(_))) => {}
            Err(err) => {
                warn!(error = %err, task = %id, "cannot remove an old task's output");
                return;
            }
        }
        if let Err(err) = store.delete_task(user_id, id).await {
            warn!(error = %err, task = %id, "cannot remove an old task's record");
            return;
        }
    }
}

/// Ends a task the master knows the end of (it could not run, or was lost
/// as it started), counted like any other end.
async fn end_now(
    state: &AppState,
    principal: &Principal,
    record: TaskRecord,
    end_state: TaskState,
    why: String,
) -> Result<TaskRecord, ApiError> {
    let end = TaskEnd {
        state: end_state,
        exit_code: None,
        signal: None,
        ended_ms: crate::store::now_ms(),
        output_bytes: 0,
        error: Some(why),
    };
    let updated = state
        .auth
        .store()
        .update_task(record.id, &TaskUpdate::Ended(end))
        .await?;
    let Some(updated) = updated else {
        // Its end was recorded meanwhile.
        return Ok(find(state, principal, record.id).await.unwrap_or(record));
    };
    state.metrics.tasks().finished(updated.state);
    state.activity.publish(
        principal.user_id,
        Some(&principal.username),
        crate::recorder::finished_event(&updated),
    );
    Ok(updated)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// From a previous page's `next_cursor` (empty: the first page).
    #[param(
        pattern = "^([0-9]{1,18}\\.[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})?$"
    )]
    cursor: Option<String>,
    /// Tasks per page, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Only tasks in this state.
    #[param(pattern = "^(running|exited|failed|killed|timed_out|lost)$")]
    state: Option<String>,
}

/// The caller's tasks, newest first.
#[utoipa::path(
    get, path = "/tasks", tag = "tasks",
    params(ListQuery),
    responses(
        (status = 200, body = TaskList),
        (status = 400, description = "A bad cursor, limit or state", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn list_tasks(
    State(state): State<AppState>,
    Authed(principal): Authed,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<TaskList>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1-1000".into()));
    }
    let state_filter = match query.state.as_deref() {
        None => None,
        Some(text) => Some(TaskState::parse(text).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "state {text:?}: use running, exited, failed, killed, timed_out or lost"
            ))
        })?),
    };
    let after = match query.cursor.as_deref() {
        // An empty cursor is the first page.
        None | Some("") => None,
        Some(text) => Some(
            TaskCursor::parse(text)
                .ok_or_else(|| ApiError::BadRequest(format!("bad cursor {text:?}")))?,
        ),
    };
    let filter = TaskFilter {
        state: state_filter,
        after,
        limit: i64::from(limit) + 1,
    };
    let mut tasks = state
        .auth
        .store()
        .list_tasks(principal.user_id, &filter)
        .await?;
    let more = tasks.len() > limit as usize;
    tasks.truncate(limit as usize);
    let next_cursor = more
        .then(|| {
            tasks.last().map(|task| {
                TaskCursor {
                    created_ms: task.created_ms,
                    id: task.id,
                }
                .encode()
            })
        })
        .flatten();
    Ok(Json(TaskList {
        tasks: tasks.iter().map(TaskView::from).collect(),
        next_cursor,
    }))
}

/// One of the caller's tasks.
#[utoipa::path(
    get, path = "/tasks/{id}", tag = "tasks",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody)),
    security(("cookie" = []), ("bearer" = []))
)]
async fn get_task(
    State(state): State<AppState>,
    Authed(principal): Authed,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<TaskView>, ApiError> {
    Ok(Json(TaskView::from(&find(&state, &principal, id).await?)))
}

/// Cancel a running task: SIGTERM to every process of the task
/// (grandchildren included), SIGKILL after `--task-cancel-grace`. The
/// record ends `killed` when the worker reports the end.
#[utoipa::path(
    post, path = "/tasks/{id}/cancel", tag = "tasks",
    params(("id" = Uuid, Path)),
    responses(
        (status = 202, description = "Being stopped", body = TaskView),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The task is not running", body = ErrorBody),
        (status = 503, description = "The worker is restarting; see `Retry-After`", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn cancel_task(
    State(state): State<AppState>,
    Authed(principal): Authed,
    info: ClientInfo,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let record = find(&state, &principal, id).await?;
    if record.state != TaskState::Running {
        return Err(not_running(&record));
    }
    let op = TaskOp::Cancel {
        task: TaskId(*id.as_bytes()),
        grace_ms: u64::try_from(state.tasks.cancel_grace.as_millis()).unwrap_or(u64::MAX),
    };
    match state.pool.call(&principal.ctx, Op::Tasks(op)).await {
        Ok(_) => {}
        // Ended on its own meanwhile; its end is on the way.
        Err(PoolError::Op(OpError::NotFound(_))) => {
            let record = find(&state, &principal, id).await?;
            if record.state != TaskState::Running {
                return Err(not_running(&record));
            }
        }
        Err(err) => return Err(err.into()),
    }
    state
        .auth
        .audit(audit_entry(&principal, &info, "task_cancelled", &record))
        .await;
    let record = find(&state, &principal, id).await?;
    Ok((StatusCode::ACCEPTED, Json(TaskView::from(&record))))
}

fn not_running(record: &TaskRecord) -> ApiError {
    ApiError::Conflict(format!(
        "task {} is not running (it is {})",
        record.id,
        record.state.as_str()
    ))
}

/// Delete a finished task: its output, then its record.
#[utoipa::path(
    delete, path = "/tasks/{id}", tag = "tasks",
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The task is still running: cancel it first", body = ErrorBody),
        (status = 503, description = "The worker is restarting; see `Retry-After`", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn delete_task(
    State(state): State<AppState>,
    Authed(principal): Authed,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let record = find(&state, &principal, id).await?;
    if record.state == TaskState::Running {
        return Err(ApiError::Conflict(format!(
            "task {id} is still running: cancel it first"
        )));
    }
    let op = TaskOp::Delete {
        task: TaskId(*id.as_bytes()),
    };
    match state.pool.call(&principal.ctx, Op::Tasks(op)).await {
        // No output (it never ran, or it is gone): the record goes anyway.
        Ok(_) | Err(PoolError::Op(OpError::NotFound(_))) => {}
        Err(err) => return Err(err.into()),
    }
    if !state
        .auth
        .store()
        .delete_task(principal.user_id, id)
        .await?
    {
        return Err(ApiError::Missing("task"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutputQuery {
    /// Keep the response open and send new output as it comes, until the
    /// task ends.
    #[serde(default)]
    follow: bool,
}

/// A task's output (stdout and stderr as they interleaved).
///
/// Offsets are absolute: `0` is the first byte the task ever wrote. Only
/// the last `--task-output-limit` bytes are kept; a plain `GET` of output
/// that lost its start begins with one line
/// `[warren: N earlier bytes of output dropped]`, and a `Range` that
/// starts before the kept bytes is a `416`. `X-Warren-Output-Dropped` and
/// `X-Warren-Output-Written` say where the kept bytes lie. With
/// `follow=true` new output streams in until the task ends (a `Range`
/// `bytes=N-` sets where it starts).
#[utoipa::path(
    get, path = "/tasks/{id}/output", tag = "tasks",
    params(("id" = Uuid, Path), OutputQuery),
    responses(
        (status = 200, description = "The output kept (and, with `follow`, what comes)"),
        (status = 206, description = "The requested range"),
        (status = 400, description = "A range other than `bytes=N-` with `follow`", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 416, description = "The range starts before the kept output or after its end", body = ErrorBody),
        (status = 429, description = "Too many transfers of this user at once; see `Retry-After`", body = ErrorBody),
        (status = 503, description = "The worker is restarting; see `Retry-After`", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn task_output(
    State(state): State<AppState>,
    Authed(principal): Authed,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<OutputQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = find(&state, &principal, id).await?;
    let transfer = Transfer::begin(&state, principal.ctx.id)?;
    let task = TaskId(*id.as_bytes());
    let user = &principal.ctx;
    let range = headers
        .get(header::RANGE)
        .map(|value| value.to_str().unwrap_or("").to_string());
    let Some(range) = range else {
        // Everything kept, with the marker for what is not.
        let Some(output) = Output::open(&state, user, task, 0, None, query.follow).await? else {
            return Ok(empty_output(&record));
        };
        let marker = (output.info.dropped > 0).then(|| dropped_marker(output.info.dropped));
        let response = output.respond(StatusCode::OK, marker, None, transfer);
        return Ok(if query.follow {
            response.map(|body| crate::http::cut_when_revoked(&state.auth, principal.clone(), body))
        } else {
            response
        });
    };
    if query.follow {
        let from = range
            .trim()
            .strip_prefix("bytes=")
            .and_then(|spec| spec.strip_suffix('-'))
            .and_then(|start| start.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::BadRequest("with follow=true, Range must be bytes=N-".into())
            })?;
        let Some(output) = Output::open(&state, user, task, from, None, true).await? else {
            return Ok(unsatisfiable(0));
        };
        if from < output.info.dropped || from > output.info.written {
            return Ok(unsatisfiable(output.info.written));
        }
        // Open-ended: no Content-Range can be promised, so a plain 200.
        let response = output.respond(StatusCode::OK, None, None, transfer);
        return Ok(response
            .map(|body| crate::http::cut_when_revoked(&state.auth, principal.clone(), body)));
    }
    // Where the output ends now decides the range: ask once to learn it,
    // then for exactly the bytes of the range.
    let Some(probe) = Output::open(&state, user, task, 0, Some(0), false).await? else {
        return Ok(unsatisfiable(0));
    };
    let written = probe.info.written;
    drop(probe);
    let (first, last) = match parse_range(&range, written) {
        RangeAnswer::Part(first, last) => (first, last),
        RangeAnswer::Unsatisfiable => return Ok(unsatisfiable(written)),
        // A range warren does not serve: the whole output, as a plain GET.
        RangeAnswer::Whole => {
            let Some(output) = Output::open(&state, user, task, 0, None, false).await? else {
                return Ok(empty_output(&record));
            };
            let marker = (output.info.dropped > 0).then(|| dropped_marker(output.info.dropped));
            return Ok(output.respond(StatusCode::OK, marker, None, transfer));
        }
    };
    let Some(output) = Output::open(&state, user, task, first, Some(last + 1), false).await? else {
        return Ok(unsatisfiable(written));
    };
    if first < output.info.dropped {
        return Ok(unsatisfiable(output.info.written));
    }
    let total = if output.info.running {
        "*".to_string()
    } else {
        output.info.written.to_string()
    };
    let content_range = format!("bytes {first}-{last}/{total}");
    Ok(output.respond(
        StatusCode::PARTIAL_CONTENT,
        None,
        Some((content_range, last - first + 1)),
        transfer,
    ))
}

/// A 416 naming where the output ends (`Content-Range: bytes */N`).
fn unsatisfiable(written: u64) -> Response {
    let mut response = ApiError::RangeNotSatisfiable.into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("bytes */{written}")) {
        response.headers_mut().insert(header::CONTENT_RANGE, value);
    }
    response
}

/// The answer for a task the worker has no output of (it never ran, or
/// its worker died with it).
fn empty_output(record: &TaskRecord) -> Response {
    let mut response = (StatusCode::OK, Body::empty()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(DROPPED_HEADER, HeaderValue::from(0u64));
    headers.insert(WRITTEN_HEADER, HeaderValue::from(record.output_bytes));
    response
}

/// An open output stream, past its description.
struct Output {
    info: TaskOutputInfo,
    sender: StreamSender,
    receiver: StreamReceiver,
}

impl Output {
    /// Opens the output of `task` at `from..to`; `None` when the worker has
    /// none.
    async fn open(
        state: &AppState,
        user: &UserCtx,
        task: TaskId,
        from: u64,
        to: Option<u64>,
        follow: bool,
    ) -> Result<Option<Output>, ApiError> {
        let kind = StreamKind::TaskOutput {
            task,
            from,
            to,
            follow,
        };
        let stream = state.pool.open_stream(user, kind).await?;
        let (sender, mut receiver) = stream.split();
        let info: TaskOutputInfo = match receiver.recv().await {
            Some(Ok(bytes)) => warren_protocol::codec::decode_message(&bytes).map_err(|err| {
                ApiError::Internal(format!("bad output description from the worker: {err}"))
            })?,
            Some(Err(OpError::NotFound(_))) => return Ok(None),
            Some(Err(err)) => return Err(ApiError::Pool(PoolError::Op(err))),
            None => {
                return Err(ApiError::Internal(
                    "the worker closed an output stream without an answer".into(),
                ))
            }
        };
        Ok(Some(Output {
            info,
            sender,
            receiver,
        }))
    }

    /// The response streaming this output: `marker` first, then the bytes;
    /// `part`: the `Content-Range` and length of a range. The transfer
    /// counts until the body is sent or dropped.
    fn respond(
        self,
        status: StatusCode,
        marker: Option<String>,
        part: Option<(String, u64)>,
        transfer: Transfer,
    ) -> Response {
        let Output {
            info,
            sender,
            receiver,
        } = self;
        let remaining = part.as_ref().map(|(_, len)| *len);
        let first = futures_util::stream::iter(
            marker.map(|text| Ok::<_, std::io::Error>(bytes::Bytes::from(text))),
        );
        let bytes = futures_util::stream::unfold(
            (sender, receiver, transfer, remaining),
            |(sender, mut receiver, transfer, remaining)| async move {
                if remaining == Some(0) {
                    return None;
                }
                let chunk = receiver.recv().await?;
                let (chunk, remaining) = match (chunk, remaining) {
                    // Never more than the promised length.
                    (Ok(mut bytes), Some(left)) => {
                        let keep = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                        bytes.truncate(keep);
                        (Ok(bytes::Bytes::from(bytes)), Some(left - keep as u64))
                    }
                    (Ok(bytes), None) => (Ok(bytes::Bytes::from(bytes)), None),
                    (Err(err), remaining) => (Err(std::io::Error::other(err)), remaining),
                };
                Some((chunk, (sender, receiver, transfer, remaining)))
            },
        );
        let mut response = Response::new(Body::from_stream(futures_util::StreamExt::chain(
            first, bytes,
        )));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        // Followed output is a live stream: proxies such as nginx must pass
        // it on as it comes, not buffer it.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        headers.insert(DROPPED_HEADER, HeaderValue::from(info.dropped));
        headers.insert(WRITTEN_HEADER, HeaderValue::from(info.written));
        if let Some((content_range, len)) = part {
            if let Ok(value) = HeaderValue::from_str(&content_range) {
                headers.insert(header::CONTENT_RANGE, value);
            }
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(json: serde_json::Value) -> Result<Checked, ApiError> {
        let request: StartTask =
            serde_json::from_value(json).map_err(|err| invalid(err.to_string()))?;
        check(request)
    }

    #[test]
    fn commands_are_checked() {
        let shell = start(serde_json::json!({"command": "echo hi"})).expect("shell");
        assert_eq!(shell.argv, ["/bin/sh", "-c", "echo hi"]);
        let argv = start(serde_json::json!({
            "command": ["ls", "-l"], "cwd": "src/", "env": {"A_1": "x"}, "timeout": 5, "stdin": "in"
        }))
        .expect("argv");
        assert_eq!(argv.cwd, "src");
        assert_eq!(argv.timeout_ms, 5000);
        assert_eq!(argv.env, [("A_1".to_string(), "x".to_string())]);
        let too_many: Vec<String> = (0..=MAX_ARGS).map(|n| n.to_string()).collect();
        let bad = [
            serde_json::json!({"command": []}),
            serde_json::json!({"command": "  "}),
            serde_json::json!({"command": ["a\u{0}b"]}),
            serde_json::json!({"command": "x", "env": {"1A": "x"}}),
            serde_json::json!({"command": "x", "env": {"A": "\u{0}"}}),
            serde_json::json!({"command": "x", "timeout": 0}),
            serde_json::json!({"command": "x", "timeout": 604801}),
            serde_json::json!({"command": too_many}),
            serde_json::json!({"command": ["x", "y".repeat(MAX_COMMAND_BYTES)]}),
            serde_json::json!({"command": "x", "stdin": "z".repeat(MAX_STDIN + 1)}),
            serde_json::json!({"command": "x", "bogus": 1}),
        ];
        for json in bad {
            let err = start(json.clone()).expect_err("refused");
            assert_eq!(err.code(), "invalid", "{json}: {err}");
        }
        for cwd in ["../x", "/etc", "a/../b"] {
            let err = start(serde_json::json!({"command": "x", "cwd": cwd})).expect_err("bad cwd");
            assert_eq!(err.code(), "bad_request", "{cwd}: {err}");
        }
    }

    #[test]
    fn audit_lines_quote_what_needs_it() {
        let argv = ["ls".to_string(), "a b".to_string(), "-l".to_string()];
        assert_eq!(shell_words(&argv), r#"ls "a b" -l"#);
    }
}
