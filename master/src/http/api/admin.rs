//! `/admin…`: user administration, everyone's sessions, the audit log.
//! Administrators only (others get 403); absent in single-user mode.

use super::{check_username, SessionView, UserView};
use crate::auth::password;
use crate::http::error::ErrorBody;
use crate::http::extract::{Admin, ApiJson, ApiPath, ApiQuery, ClientInfo};
use crate::http::{ApiError, AppState};
use crate::store::{
    AuditEntry, AuditFilter, AuditRecord, LimitOverrides, NewUser, Role, User, UserPatch,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, patch_user, delete_user))
        .routes(routes!(list_sessions))
        .routes(routes!(end_session))
        .routes(routes!(end_user_sessions))
        .routes(routes!(unlock_user))
        .routes(routes!(move_user))
        .routes(routes!(audit))
}

fn entry(
    admin: &crate::auth::Principal,
    info: &ClientInfo,
    event: &'static str,
    subject: &User,
    detail: Option<String>,
) -> AuditEntry {
    AuditEntry {
        event,
        actor_id: Some(admin.user_id.to_string()),
        actor_name: Some(admin.username.clone()),
        subject: Some(subject.username.clone()),
        address: Some(info.client.address.to_string()),
        detail,
    }
}

/// Every user, by name.
#[utoipa::path(
    get, path = "/admin/users", tag = "admin",
    responses((status = 200, body = Vec<UserView>), (status = 403, body = ErrorBody)),
    security(("cookie" = []), ("bearer" = []))
)]
async fn list_users(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Vec<UserView>>, ApiError> {
    let users = state.auth.store().list_users().await?;
    Ok(Json(users.iter().map(UserView::from).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1-64 ASCII letters, digits, `.`, `_` or `-`, starting with a letter or digit.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$"
    )]
    pub username: String,
    /// 10-1024 bytes.
    #[schema(min_length = 10, max_length = 1024)]
    pub password: String,
    /// Default `user`.
    #[serde(default)]
    pub role: Option<Role>,
    /// Several hosts: the host to hold the user's files (one that is up);
    /// default: the running host with the fewest users.
    #[serde(default)]
    pub home_host: Option<String>,
}

/// Create a user.
#[utoipa::path(
    post, path = "/admin/users", tag = "admin",
    request_body = CreateUser,
    responses(
        (status = 201, body = UserView),
        (status = 409, description = "The username is taken", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn create_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    info: ClientInfo,
    ApiJson(new): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    check_username(&new.username)?;
    password::check_policy(&new.password)?;
    let home_host = super::home_host_of_new_user(&state, new.home_host.as_deref()).await?;
    let hash = state.auth.hasher().hash(&new.password).await?;
    let user = state
        .auth
        .store()
        .create_user(NewUser {
            username: &new.username,
            password_hash: &hash,
            role: new.role.unwrap_or(Role::User),
            home_host: home_host.as_deref(),
        })
        .await?;
    let detail = Some(format!("role {}", user.role.as_str()));
    state
        .auth
        .audit_trusted(entry(&admin, &info, "user_created", &user, detail))
        .await;
    Ok((StatusCode::CREATED, Json(UserView::from(&user))))
}

async fn find(state: &AppState, id: Uuid) -> Result<User, ApiError> {
    state
        .auth
        .store()
        .user_by_id(id)
        .await?
        .ok_or(ApiError::Missing("user"))
}

/// One user.
#[utoipa::path(
    get, path = "/admin/users/{id}", tag = "admin",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody)),
    security(("cookie" = []), ("bearer" = []))
)]
async fn get_user(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(UserView::from(&find(&state, id).await?)))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    /// A new password, 10-1024 bytes (a reset: ends the user's sessions
    /// and tokens).
    #[schema(min_length = 10, max_length = 1024)]
    pub password: Option<String>,
    /// 1-1000; `null` resets to the server default.
    #[serde(default, deserialize_with = "super::double_option_integer")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub max_sessions: Option<Option<i64>>,
    /// `null` resets to the server default.
    #[serde(default, deserialize_with = "super::double_option_integer")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub storage_quota_bytes: Option<Option<i64>>,
    /// Entries (files, directories...) the user may have; `null` resets
    /// to the server default.
    #[serde(default, deserialize_with = "super::double_option_integer")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub file_quota: Option<Option<i64>>,
    /// Overrides of the server's process limits (each field replaces the
    /// server's default for this user; absent fields keep it); `null`
    /// clears every override. Applies to processes started from then on.
    #[serde(default, deserialize_with = "limit_overrides")]
    #[schema(value_type = Option<LimitOverrides>)]
    pub limits: Option<Option<LimitOverrides>>,
}

/// `limits` of a PATCH: an object (serde would also take a struct written
/// as an array, which the document does not allow), or `null`.
fn limit_overrides<'de, D>(deserializer: D) -> Result<Option<Option<LimitOverrides>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let Some(fields) =
        Option::<serde_json::Map<String, serde_json::Value>>::deserialize(deserializer)?
    else {
        return Ok(Some(None));
    };
    serde_json::from_value(serde_json::Value::Object(fields))
        .map(|limits| Some(Some(limits)))
        .map_err(D::Error::custom)
}

/// Change a user's role, standing, password or limits. A password reset
/// ends the user's sessions and API tokens; a disable ends the sessions
/// (tokens are refused while disabled); a role change applies to existing
/// sessions at once.
#[utoipa::path(
    patch, path = "/admin/users/{id}", tag = "admin",
    params(("id" = Uuid, Path)),
    request_body = PatchUser,
    responses(
        (status = 200, body = UserView),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Would leave no active administrator", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn patch_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    info: ClientInfo,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(patch): ApiJson<PatchUser>,
) -> Result<Json<UserView>, ApiError> {
    if let Some(Some(n)) = patch.max_sessions {
        if !(1..=1000).contains(&n) {
            return Err(ApiError::Unprocessable(
                "max_sessions must be 1-1000".into(),
            ));
        }
    }
    if let Some(Some(n)) = patch.storage_quota_bytes {
        if n < 0 {
            return Err(ApiError::Unprocessable(
                "storage_quota_bytes must not be negative".into(),
            ));
        }
    }
    if let Some(Some(n)) = patch.file_quota {
        if n < 0 {
            return Err(ApiError::Unprocessable(
                "file_quota must not be negative".into(),
            ));
        }
    }
    if let Some(Some(limits)) = &patch.limits {
        limits.check().map_err(ApiError::Unprocessable)?;
    }
    let password_hash = match &patch.password {
        Some(password) => {
            password::check_policy(password)?;
            Some(state.auth.hasher().hash(password).await?)
        }
        None => None,
    };
    let change = UserPatch {
        role: patch.role,
        disabled: patch.disabled,
        password_hash,
        max_sessions: patch.max_sessions,
        storage_quota_bytes: patch.storage_quota_bytes,
        file_quota: patch.file_quota,
        limits: patch.limits,
    };
    let (before, user) = state
        .auth
        .store()
        .update_user(id, &change)
        .await?
        .ok_or(ApiError::Missing("user"))?;
    state.auth.user_changed(id);
    let events: [(bool, &'static str, Option<String>); 4] = [
        (
            patch.role.is_some_and(|role| role != before.role),
            "role_changed",
            Some(format!(
                "{} -> {}",
                before.role.as_str(),
                user.role.as_str()
            )),
        ),
        (
            patch.disabled.is_some_and(|d| d != before.disabled),
            if user.disabled {
                "user_disabled"
            } else {
                "user_enabled"
            },
            None,
        ),
        (patch.password.is_some(), "password_reset", None),
        (
            patch.max_sessions.is_some()
                || patch.storage_quota_bytes.is_some()
                || patch.file_quota.is_some()
                || patch.limits.is_some(),
            "limits_changed",
            Some(format!(
                "max_sessions {:?}, storage_quota_bytes {:?}, file_quota {:?}, process limits {}",
                user.max_sessions,
                user.storage_quota_bytes,
                user.file_quota,
                user.limits
                    .and_then(|l| serde_json::to_string(&l).ok())
                    .unwrap_or_else(|| "default".into())
            )),
        ),
    ];
    for (happened, event, detail) in events {
        if happened {
            state
                .auth
                .audit_trusted(entry(&admin, &info, event, &user, detail))
                .await;
        }
    }
    Ok(Json(UserView::from(&user)))
}

/// Delete a user, their sessions and tokens; their files are removed
/// within a second.
#[utoipa::path(
    delete, path = "/admin/users/{id}", tag = "admin",
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The last active administrator", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn delete_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    info: ClientInfo,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let user = find(&state, id).await?;
    if !state.auth.store().delete_user(id).await? {
        return Err(ApiError::Missing("user"));
    }
    state.auth.user_changed(id);
    state
        .auth
        .audit_trusted(entry(&admin, &info, "user_deleted", &user, None))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Every session, newest first.
#[utoipa::path(
    get, path = "/admin/sessions", tag = "admin",
    responses((status = 200, body = Vec<SessionView>), (status = 403, body = ErrorBody)),
    security(("cookie" = []), ("bearer" = []))
)]
async fn list_sessions(
    State(state): State<AppState>,
    Admin(admin): Admin,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    let sessions = state.auth.store().list_sessions(None).await?;
    let current = admin.session_id();
    Ok(Json(
        sessions
            .iter()
            .map(|session| SessionView::of(session, current))
            .collect(),
    ))
}

/// End anyone's session.
#[utoipa::path(
    delete, path = "/admin/sessions/{id}", tag = "admin",
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Ended"), (status = 404, body = ErrorBody)),
    security(("cookie" = []), ("bearer" = []))
)]
async fn end_session(
    State(state): State<AppState>,
    Admin(admin): Admin,
    info: ClientInfo,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    state
        .auth
        .revoke_session(&admin, id, None, &info.client)
        .await?
        .ok_or(ApiError::Missing("session"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Force logout: end every session of a user (API tokens stay).
#[utoipa::path(
    delete, path = "/admin/users/{id}/sessions", tag = "admin",
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Ended"), (status = 404, body = ErrorBody)),
    security(("cookie" = []), ("bearer" = []))
)]
async fn end_user_sessions(
    State(state): State<AppState>,
    Admin(admin): Admin,
    info: ClientInfo,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let user = find(&state, id).await?;
    state.auth.end_sessions(id).await?;
    let detail = Some("force logout".to_string());
    state
        .auth
        .audit_trusted(entry(&admin, &info, "sessions_revoked", &user, detail))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// End every login lockout of a user (on every master within a second):
/// addresses that failed too often may try again.
#[utoipa::path(
    post, path = "/admin/users/{id}/unlock", tag = "admin",
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Unlocked"),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn unlock_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    info: ClientInfo,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let user = find(&state, id).await?;
    if !state.auth.unlock(&admin, &user, &info.client).await? {
        return Err(ApiError::Missing("user"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveUser {
    /// The host to hold the user's files from now on (one that is up).
    pub to: String,
}

/// Several hosts: move a user's files to another host. The user is
/// paused (their requests get 503 `user_moving`) while the target copies
/// their files from their home host and checks them against a sha256
/// manifest; then their home host is switched and the old copy removed.
/// On any failure nothing changes. Answers once done.
#[utoipa::path(
    post, path = "/admin/users/{id}/move", tag = "admin",
    params(("id" = Uuid, Path)),
    request_body = MoveUser,
    responses(
        (status = 200, body = UserView, description = "Moved"),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "On that host already, or a move is under way", body = ErrorBody),
        (status = 422, description = "Not a cluster, or no such host up", body = ErrorBody),
        (status = 502, description = "The copy was refused (nothing changed)", body = ErrorBody),
        (status = 503, description = "A host is unavailable (nothing changed)", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn move_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    info: ClientInfo,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<MoveUser>,
) -> Result<axum::response::Response, ApiError> {
    use crate::cluster::moving::MoveOutcome;
    use axum::response::IntoResponse;
    let cluster = state.cluster.clone().ok_or_else(|| {
        ApiError::Unprocessable(
            "this server is not part of a cluster (--host-name): there is no other host".into(),
        )
    })?;
    let user = find(&state, id).await?;
    let host = match state.auth.store().host(&body.to).await? {
        Some(host) if host.state() == crate::store::HostState::Up => host,
        Some(_) => {
            return Err(ApiError::Unprocessable(format!(
                "host {} is not up: a user can only move to a running host",
                body.to
            )))
        }
        None => {
            return Err(ApiError::Unprocessable(format!(
                "no host is named {:?} (see GET /api/v1/admin/hosts)",
                body.to
            )))
        }
    };
    if user.home_host.as_deref() == Some(body.to.as_str()) {
        return Err(ApiError::Conflict(format!(
            "{} is on host {} already",
            user.username, body.to
        )));
    }
    if let Some(to) = &user.moving_to {
        return Err(ApiError::Conflict(format!(
            "{} is being moved to host {to} already",
            user.username
        )));
    }
    let target = format!("/internal/v1/moves/{id}");
    let request = cluster.internal_request(
        &host,
        axum::http::Method::POST,
        &target,
        axum::body::Body::empty(),
    )?;
    let answer = cluster.send(request).await.map_err(|err| {
        ApiError::HostUnavailable(format!("host {} did not answer: {err}", body.to))
    })?;
    let status = answer.status();
    let bytes = axum::body::to_bytes(axum::body::Body::new(answer.into_body()), 1 << 20)
        .await
        .map_err(|err| {
            ApiError::HostUnavailable(format!("host {} did not answer: {err}", body.to))
        })?;
    if status != StatusCode::OK {
        // The target's own error, as it said it.
        let json = [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )];
        return Ok((status, json, bytes).into_response());
    }
    let outcome: MoveOutcome = serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::Internal(format!("host {}'s answer: {err}", body.to)))?;
    let detail = Some(format!(
        "from {} to {}: {} bytes, {} files{}",
        outcome.from,
        outcome.to,
        outcome.bytes,
        outcome.files,
        outcome
            .warning
            .as_deref()
            .map_or(String::new(), |why| format!("; {why}"))
    ));
    let user = find(&state, id).await?;
    state
        .auth
        .audit_trusted(entry(&admin, &info, "user_moved", &user, detail))
        .await;
    Ok(Json(UserView::from(&user)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// An actor's id or name, or a subject.
    user: Option<String>,
    /// An event name such as `login_failed`.
    event: Option<String>,
    /// RFC 3339 time (UTC), or milliseconds since the epoch.
    #[param(
        pattern = r"^([0-9]{1,15}|(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?Z)$"
    )]
    since: Option<String>,
    /// Paging: only events older than the event with this id (pass the
    /// last `id` of a page to get the next one).
    #[param(minimum = 1)]
    before: Option<i64>,
    /// 1-1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// The audit log, newest first.
#[utoipa::path(
    get, path = "/admin/audit", tag = "admin",
    params(AuditQuery),
    responses((status = 200, body = Vec<AuditRecord>), (status = 400, body = ErrorBody)),
    security(("cookie" = []), ("bearer" = []))
)]
async fn audit(
    State(state): State<AppState>,
    _: Admin,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1-1000".into()));
    }
    if query.before.is_some_and(|before| before < 1) {
        return Err(ApiError::BadRequest(
            "before must be an event's id (1 or more)".into(),
        ));
    }
    let since = match query.since.as_deref() {
        None => None,
        Some(text) => Some(parse_time(text).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "since={text:?}: use RFC 3339 (2026-01-31T12:00:00Z) or milliseconds since the epoch"
            ))
        })?),
    };
    let filter = AuditFilter {
        user: query.user,
        event: query.event,
        since,
        before: query.before,
        limit,
    };
    Ok(Json(state.auth.store().query_audit(&filter).await?))
}

fn parse_time(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    let at = humantime::parse_rfc3339_weak(text).ok()?;
    at.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}
