//! The rest of a user's workspace: usage against the quota, settings, and
//! the shared templates they may copy in.

use super::files::EntryView;
use crate::http::error::ErrorBody;
use crate::http::extract::{Admin, ApiJson, ApiPath, Authed};
use crate::http::{ApiError, AppState};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;
use warren_protocol::{FileOp, Op, Reply, UserCtx};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(my_usage))
        .routes(routes!(my_settings, put_settings))
        .routes(routes!(templates))
        .routes(routes!(clone_template))
}

/// Routes for administrators (multi-user mode only).
pub(super) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(all_usage))
}

/// The largest settings object, in bytes of JSON.
const MAX_SETTINGS: usize = 64 * 1024;

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    /// Disk space charged against `quota_bytes`: what the entries
    /// allocate, at least 4 KiB each (directories and empty files too).
    pub bytes_used: u64,
    /// Regular files.
    pub files: u64,
    /// Every entry (files, directories, links...), against `quota_files`.
    pub entries: u64,
    pub quota_bytes: u64,
    pub quota_files: u64,
}

async fn usage(state: &AppState, user: &UserCtx) -> Result<UsageView, ApiError> {
    match state.pool.call(user, Op::Files(FileOp::Usage)).await? {
        Reply::Usage {
            bytes,
            files,
            entries,
        } => Ok(UsageView {
            bytes_used: bytes,
            files,
            entries,
            quota_bytes: user.quota_bytes,
            quota_files: user.quota_files,
        }),
        other => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
    }
}

/// Storage used by the caller against their quota.
#[utoipa::path(
    get, path = "/me/usage", tag = "me",
    responses((status = 200, body = UsageView), (status = 401, body = ErrorBody)),
    security(("cookie" = []), ("bearer" = []))
)]
async fn my_usage(
    State(state): State<AppState>,
    Authed(principal): Authed,
) -> Result<Json<UsageView>, ApiError> {
    Ok(Json(usage(&state, &principal.ctx).await?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserUsage {
    pub user_id: Uuid,
    pub username: String,
    /// Absent when this user's usage could not be counted (see `error`).
    #[serde(flatten)]
    pub usage: Option<UsageView>,
    /// Why this user's usage is missing; the other users are still listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::http::error::ErrorDetail>,
}

/// Every user's storage use, by name. A user whose usage cannot be counted
/// is listed with an `error` instead of failing the whole listing.
#[utoipa::path(
    get, path = "/admin/usage", tag = "admin",
    responses((status = 200, body = Vec<UserUsage>), (status = 403, body = ErrorBody)),
    security(("cookie" = []), ("bearer" = []))
)]
async fn all_usage(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Vec<UserUsage>>, ApiError> {
    let users = state.auth.store().list_users().await?;
    let asked = futures_util::stream::iter(users.into_iter().map(|user| {
        let state = state.clone();
        async move {
            let ctx = state.auth.ctx_of(&user);
            let (usage, error) = match usage(&state, &ctx).await {
                Ok(usage) => (Some(usage), None),
                Err(err) => {
                    tracing::warn!(user = %user.id, %err, "cannot count a user's usage");
                    (None, Some(err.detail()))
                }
            };
            UserUsage {
                user_id: user.id,
                username: user.username,
                usage,
                error,
            }
        }
    }))
    .buffered(16)
    .collect::<Vec<_>>()
    .await;
    Ok(Json(asked))
}

/// The caller's settings: one JSON object, `{}` until set.
#[utoipa::path(
    get, path = "/me/settings", tag = "me",
    responses((status = 200, description = "The settings object", body = Object), (status = 401, body = ErrorBody)),
    security(("cookie" = []), ("bearer" = []))
)]
async fn my_settings(
    State(state): State<AppState>,
    Authed(principal): Authed,
) -> Result<Response, ApiError> {
    match state
        .pool
        .call(&principal.ctx, Op::Files(FileOp::GetSettings))
        .await?
    {
        Reply::Settings(json) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
        }
        other => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
    }
}

/// Replace the caller's settings with a JSON object of at most 64 KiB.
#[utoipa::path(
    put, path = "/me/settings", tag = "me",
    request_body(content = Object, description = "Any JSON object"),
    responses(
        (status = 200, description = "Stored; the object as stored", body = Object),
        (status = 413, description = "Over 64 KiB", body = ErrorBody),
        (status = 422, description = "Not a JSON object", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn put_settings(
    State(state): State<AppState>,
    Authed(principal): Authed,
    ApiJson(settings): ApiJson<serde_json::Value>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !settings.is_object() {
        return Err(ApiError::Unprocessable(
            "settings are one JSON object".into(),
        ));
    }
    let json = serde_json::to_vec(&settings).map_err(|err| ApiError::Internal(err.to_string()))?;
    if json.len() > MAX_SETTINGS {
        return Err(ApiError::PayloadTooLarge(MAX_SETTINGS));
    }
    state
        .pool
        .call(&principal.ctx, Op::Files(FileOp::PutSettings { json }))
        .await?;
    Ok(Json(settings))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    pub name: String,
    /// The first line of the template's `.description`, if any.
    pub description: Option<String>,
}

/// The shared templates (read-only directories an operator put in
/// `<data-dir>/shared/templates/`).
#[utoipa::path(
    get, path = "/templates", tag = "workspace",
    responses((status = 200, body = Vec<TemplateView>), (status = 401, body = ErrorBody)),
    security(("cookie" = []), ("bearer" = []))
)]
async fn templates(
    State(state): State<AppState>,
    Authed(_): Authed,
) -> Result<Json<Vec<TemplateView>>, ApiError> {
    let dir = state.templates_dir.clone();
    let listed = tokio::task::spawn_blocking(move || {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut found: Vec<TemplateView> = entries
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.') && warren_protocol::path::check(name).is_ok())
            .map(|name| {
                let description = description(&dir.join(&name).join(".description"));
                TemplateView { name, description }
            })
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found
    })
    .await
    .map_err(|err| ApiError::Internal(err.to_string()))?;
    Ok(Json(listed))
}

/// The first line (at most 500 characters) of a template's
/// `.description`, read only if it is a regular file (opened without
/// blocking, so a FIFO there cannot hang the thread) and only its first
/// 4 KiB.
fn description(path: &std::path::Path) -> Option<String> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let stat = rustix::fs::fstat(&fd).ok()?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return None;
    }
    let mut head = Vec::with_capacity(4096);
    std::fs::File::from(fd)
        .take(4096)
        .read_to_end(&mut head)
        .ok()?;
    let text = String::from_utf8_lossy(&head);
    text.lines()
        .next()
        .map(|line| line.chars().take(500).collect())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    /// Where in the workspace to put the copy; never replaced.
    pub to: String,
}

/// Copy a template into the caller's workspace, within their quota.
#[utoipa::path(
    post, path = "/templates/{name}/clone", tag = "workspace",
    params(("name" = String, Path)),
    request_body = CloneRequest,
    responses(
        (status = 201, body = EntryView),
        (status = 404, description = "No such template", body = ErrorBody),
        (status = 409, description = "The destination exists, or the result would nest deeper than 256 levels", body = ErrorBody),
        (status = 507, description = "Over the byte or entry quota (`quota_exceeded`) or the disk is full (`disk_full`)", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn clone_template(
    State(state): State<AppState>,
    Authed(principal): Authed,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<CloneRequest>,
) -> Result<Response, ApiError> {
    warren_protocol::path::check(&request.to)
        .map_err(|err| ApiError::BadRequest(err.to_string()))?;
    let op = FileOp::CloneTemplate {
        name,
        to: request.to,
    };
    let result = match state.pool.call(&principal.ctx, Op::Files(op)).await {
        Ok(Reply::Entry(entry)) => {
            Ok((StatusCode::CREATED, Json(EntryView::from(&entry))).into_response())
        }
        Ok(other) => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
        Err(err) => Err(ApiError::from(err)),
    };
    let outcome = result.as_ref().map_or_else(ApiError::code, |_| "ok");
    state.metrics.files().operation("clone", outcome);
    result
}
