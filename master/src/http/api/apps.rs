//! `/me/apps`: the caller's web apps (what the operator defined with
//! `--apps`), their state, and starting and stopping them;
//! `/admin/apps`: every user's running apps. The apps themselves are
//! served at `/user/{name}/{app}/` (see `crate::apps::proxy`).

use super::rfc3339;
use super::terminals::unexpected;
use crate::apps::{AppDef, AppsHub, STOP_GRACE};
use crate::http::error::ErrorBody;
use crate::http::extract::{Admin, ApiPath, Authed};
use crate::http::{ApiError, AppState};
use crate::pool::PoolError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;
use warren_protocol::{AppInfo, AppOp, AppState as Lifecycle, Op, OpError, Reply, UserCtx};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_apps))
        .routes(routes!(start_app))
        .routes(routes!(stop_app))
}

pub(super) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_all_apps))
        .routes(routes!(admin_stop_app))
}

/// One of the caller's apps.
#[derive(Debug, Serialize, ToSchema)]
pub struct AppView {
    /// The app's name, as in its URL.
    pub name: String,
    pub title: String,
    /// `/user/{name}/{app}/`.
    pub url: String,
    /// `stopped`, `starting`, `running` or `failed`.
    pub state: &'static str,
    /// When it entered this state, RFC 3339 (absent for an app never
    /// started since its worker started).
    pub since: Option<String>,
    /// The last proxied request, RFC 3339.
    pub last_activity_at: Option<String>,
    /// Resident memory of its processes, bytes (0 unless running).
    pub memory_bytes: u64,
    /// Its main process, while it runs or starts.
    pub pid: Option<u32>,
    /// Restarts after crashes since it was last started.
    pub restarts: u32,
    /// Why it failed or stopped.
    pub message: Option<String>,
    /// The last lines of its output (when it failed).
    pub output_tail: Vec<String>,
}

impl AppView {
    fn of(def: &AppDef, user: &str, info: Option<&AppInfo>) -> AppView {
        let failed = info.is_some_and(|info| info.state == Lifecycle::Failed);
        AppView {
            name: def.name.clone(),
            title: def.title.clone(),
            url: format!("/user/{user}/{}/", def.name),
            state: info.map_or("stopped", |info| info.state.as_str()),
            since: info.map(|info| rfc3339(info.since_ms)),
            last_activity_at: info.map(|info| rfc3339(info.last_activity_ms)),
            memory_bytes: info.map_or(0, |info| info.memory_bytes),
            pid: info.and_then(|info| info.pid),
            restarts: info.map_or(0, |info| info.restarts),
            message: info.and_then(|info| info.message.clone()),
            output_tail: if failed {
                info.map(|info| info.output_tail.clone())
                    .unwrap_or_default()
            } else {
                Vec::new()
            },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppList {
    pub apps: Vec<AppView>,
}

/// An app of some user, for administrators.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserAppView {
    pub user_id: Uuid,
    pub username: String,
    #[serde(flatten)]
    pub app: AppView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserAppList {
    pub apps: Vec<UserAppView>,
}

fn hub(state: &AppState) -> Result<Arc<AppsHub>, ApiError> {
    state
        .apps
        .as_ref()
        .map(|proxy| proxy.hub.clone())
        .ok_or(ApiError::Missing("app"))
}

fn def(hub: &AppsHub, name: &str) -> Result<std::sync::Arc<AppDef>, ApiError> {
    hub.def(name).ok_or(ApiError::Missing("app"))
}

async fn infos_of(hub: &AppsHub, user: &UserCtx) -> Result<Vec<AppInfo>, ApiError> {
    match hub.pool().call(user, Op::Apps(AppOp::List)).await? {
        Reply::Apps(infos) => Ok(infos),
        other => Err(unexpected(other)),
    }
}

/// The caller's apps.
///
/// Every app the operator defined, with its state for the caller.
#[utoipa::path(
    get, path = "/me/apps", tag = "apps",
    responses(
        (status = 200, description = "By name", body = AppList),
        (status = 503, description = "The worker is restarting", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn list_apps(
    State(state): State<AppState>,
    Authed(principal): Authed,
) -> Result<Json<AppList>, ApiError> {
    let Some(proxy) = &state.apps else {
        return Ok(Json(AppList { apps: Vec::new() }));
    };
    let hub = &proxy.hub;
    let infos = infos_of(hub, &principal.ctx).await?;
    let apps = hub
        .config()
        .apps
        .values()
        .map(|def| {
            let info = infos.iter().find(|info| info.name == def.name);
            AppView::of(def, &principal.username, info)
        })
        .collect();
    Ok(Json(AppList { apps }))
}

/// Start one of the caller's apps.
///
/// Starts it unless it runs (a failed one is tried afresh) and answers once
/// it runs, or after a few seconds with `starting`.
#[utoipa::path(
    post, path = "/me/apps/{name}/start", tag = "apps",
    params(("name" = String, Path, description = "The app's name")),
    responses(
        (status = 200, description = "Running, starting or failed", body = AppView),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 429, description = "As many apps running as the caller may (`too_many_apps`)", body = ErrorBody),
        (status = 503, description = "As many of this app running as the server allows (`too_many_apps`), no sandbox, or the worker is restarting", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn start_app(
    State(state): State<AppState>,
    Authed(principal): Authed,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<AppView>, ApiError> {
    let hub = hub(&state)?;
    let def = def(&hub, &name)?.clone();
    let user = principal.ctx.clone();
    // A start goes on when its client leaves.
    let started = {
        let hub = hub.clone();
        let def = def.clone();
        tokio::spawn(async move { hub.ensure(&def, &user, Duration::from_secs(3), true).await })
    };
    let info = started
        .await
        .map_err(|err| ApiError::Internal(format!("starting an app failed: {err}")))?
        .map_err(ApiError::Pool)?;
    Ok(Json(AppView::of(&def, &principal.username, Some(&info))))
}

/// Stop one of the caller's apps.
///
/// Its processes get SIGTERM, then SIGKILL after a grace period; it is
/// `stopped` at once.
#[utoipa::path(
    post, path = "/me/apps/{name}/stop", tag = "apps",
    params(("name" = String, Path, description = "The app's name")),
    responses(
        (status = 204, description = "Stopped (or was not running)"),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 503, description = "The worker is restarting", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn stop_app(
    State(state): State<AppState>,
    Authed(principal): Authed,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let hub = hub(&state)?;
    def(&hub, &name)?;
    stop(&hub, &principal.ctx, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stop(hub: &AppsHub, user: &UserCtx, name: &str) -> Result<(), ApiError> {
    let op = AppOp::Stop {
        name: name.to_string(),
        grace_ms: STOP_GRACE.as_millis() as u64,
    };
    hub.pool().call(user, Op::Apps(op)).await?;
    hub.forget(user.id, name);
    Ok(())
}

/// Every user's apps that run, start or failed.
#[utoipa::path(
    get, path = "/admin/apps", tag = "admin",
    responses(
        (status = 200, description = "By user, then app", body = UserAppList),
        (status = 503, description = "A worker is restarting", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn list_all_apps(
    State(state): State<AppState>,
    Admin(admin): Admin,
) -> Result<Json<UserAppList>, ApiError> {
    let Some(proxy) = &state.apps else {
        return Ok(Json(UserAppList { apps: Vec::new() }));
    };
    let hub = &proxy.hub;
    let mut apps = Vec::new();
    for slot in 0..hub.pool().size() {
        let reply = hub
            .pool()
            .call_slot(slot, &admin.ctx, Op::Apps(AppOp::ListAll))
            .await?;
        let Reply::Apps(infos) = reply else {
            return Err(unexpected(reply));
        };
        for info in infos {
            let Some(def) = hub.def(&info.name) else {
                continue;
            };
            apps.push(UserAppView {
                user_id: Uuid::from_bytes(info.user.0),
                username: info.user_name.clone(),
                app: AppView::of(&def, &info.user_name, Some(&info)),
            });
        }
    }
    apps.sort_by(|a, b| (&a.username, &a.app.name).cmp(&(&b.username, &b.app.name)));
    Ok(Json(UserAppList { apps }))
}

/// Stop a user's app.
#[utoipa::path(
    post, path = "/admin/apps/{user_id}/{name}/stop", tag = "admin",
    params(
        ("user_id" = Uuid, Path, description = "The user's id"),
        ("name" = String, Path, description = "The app's name"),
    ),
    responses(
        (status = 204, description = "Stopped (or was not running)"),
        (status = 400, description = "Not a user id", body = ErrorBody),
        (status = 404, description = "No such user or app", body = ErrorBody),
        (status = 503, description = "The worker is restarting", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn admin_stop_app(
    State(state): State<AppState>,
    Admin(_admin): Admin,
    ApiPath((user_id, name)): ApiPath<(Uuid, String)>,
) -> Result<StatusCode, ApiError> {
    let hub = hub(&state)?;
    def(&hub, &name)?;
    let user = state
        .auth
        .store()
        .user_by_id(user_id)
        .await?
        .ok_or(ApiError::Missing("user"))?;
    let ctx = state.auth.ctx_of(&user);
    stop(&hub, &ctx, &name).await.map_err(|err| match err {
        ApiError::Pool(PoolError::Op(OpError::NotFound(_))) => ApiError::Missing("app"),
        other => other,
    })?;
    Ok(StatusCode::NO_CONTENT)
}
