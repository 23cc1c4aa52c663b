//! `/auth/login`, `/auth/logout`, `/auth/signup`, and `/ping`: the first
//! user-scoped operation, routed through the pool to the caller's worker.

use super::{check_username, rfc3339, UserView};
use crate::auth::{password, CredentialKind, Login, Mode, SINGLE_USER_NAME};
use crate::http::error::ErrorBody;
use crate::http::extract::{forbidden, ApiJson, Authed, ClientInfo, SESSION_COOKIE};
use crate::http::{ApiError, AppState};
use crate::store::{AuditEntry, NewUser, Role};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use warren_protocol::{Op, Reply};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(signup))
        .routes(routes!(ping))
}

const CROSS_SITE: &str = "cross-site request refused: Origin does not match this server";

const PASSWORDS_OFF: &str =
    "password login is turned off on this server (see GET /api/v1/auth/methods)";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Required in multi-user mode; ignored in single-user mode.
    #[serde(default)]
    pub username: Option<String>,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub user: UserView,
    /// When the session ends at the latest (RFC 3339); idle sessions end
    /// sooner.
    pub expires_at: String,
}

/// Log in: sets the `warren_session` cookie (the same token also works as
/// `Authorization: Bearer`).
#[utoipa::path(
    post, path = "/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in; `Set-Cookie: warren_session=…`", body = LoginResponse),
        (status = 401, description = "Wrong username or password (one answer for both)", body = ErrorBody),
        (status = 403, description = "Cross-site request, or password login is off (`--password-login off`)", body = ErrorBody),
        (status = 429, description = "Too many attempts (cross-site ones included); see `Retry-After`", body = ErrorBody),
    )
)]
async fn login(
    State(state): State<AppState>,
    info: ClientInfo,
    headers: HeaderMap,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<impl IntoResponse, ApiError> {
    // Login CSRF: a browser on another site may not log a victim in. Such
    // a refusal counts against the address's login rate limit, as a login
    // attempt would (and its audit row against the audit rate limit).
    if !state.identities.password_login {
        return Err(ApiError::Forbidden(PASSWORDS_OFF));
    }
    if !state.web.same_origin(&headers, info.tls, false) {
        state.auth.admit_refused_login(&info.client)?;
        return Err(forbidden(&state, None, "POST /api/v1/auth/login", &info, CROSS_SITE).await);
    }
    let username = match state.auth.config().mode {
        Mode::Single => SINGLE_USER_NAME.to_string(),
        Mode::Multi => request
            .username
            .ok_or_else(|| ApiError::Unprocessable("missing field `username`".into()))?,
    };
    let login = state
        .auth
        .login(&username, &request.password, &info.client)
        .await?;
    Ok(logged_in(&state, &info, login, StatusCode::OK))
}

/// The response to a login or sign-up: the user and the session cookies.
fn logged_in(
    state: &AppState,
    info: &ClientInfo,
    login: Login,
    status: StatusCode,
) -> impl IntoResponse {
    let headers = session_cookies(state, info, &login);
    let body = LoginResponse {
        user: UserView::from(&login.user),
        expires_at: rfc3339(login.session.expires_at),
    };
    (status, headers, Json(body))
}

/// The cookies of a new session: the session's, and the route's.
pub(super) fn session_cookies(state: &AppState, info: &ClientInfo, login: &Login) -> HeaderMap {
    let max_age = state.auth.config().session_ttl.as_secs();
    let secure = if info.tls { "; Secure" } else { "" };
    let session = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        login.token
    );
    // Several hosts: nginx's `map $cookie_warren_route` sends the next
    // request straight to the user's home host (see crate::cluster).
    let route = match (&state.cluster, &login.user.home_host) {
        (Some(_), Some(home)) => home.clone(),
        (Some(cluster), None) => cluster.name.to_string(),
        (None, _) => login.user.id.to_string(),
    };
    let route = format!(
        "{}={route}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        crate::cluster::ROUTE_COOKIE
    );
    let mut headers = HeaderMap::new();
    for cookie in [session, route] {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    headers
}

/// Log out: ends this session and clears the cookie. An API token is not
/// a session: revoke it with `DELETE /me/tokens/{id}` (400 here).
#[utoipa::path(
    post, path = "/auth/logout", tag = "auth",
    responses(
        (status = 204, description = "Logged out"),
        (status = 400, description = "Called with an API token, which logout does not end", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn logout(
    State(state): State<AppState>,
    Authed(principal): Authed,
    info: ClientInfo,
) -> Result<impl IntoResponse, ApiError> {
    // Never report success for nothing: logout ends sessions only.
    match principal.kind {
        CredentialKind::Token { id, .. } => {
            return Err(ApiError::BadRequest(format!(
                "this is an API token, not a login session: logout does not end it; \
                 revoke it with DELETE /api/v1/me/tokens/{id}"
            )))
        }
        CredentialKind::External => {
            return Err(ApiError::BadRequest(
                "this is a JWT or a proxy's identity header, not a login session: \
                 logout does not end it (it ends at its own expiry, or at the proxy)"
                    .into(),
            ))
        }
        CredentialKind::Session { .. } => {}
    }
    state.auth.logout(&principal, &info.client).await?;
    let clear = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&clear) {
        headers.append(header::SET_COOKIE, value);
    }
    Ok((StatusCode::NO_CONTENT, headers))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
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
}

/// Create an account and log in (only with `--allow-signup`).
#[utoipa::path(
    post, path = "/auth/signup", tag = "auth",
    request_body = SignupRequest,
    responses(
        (status = 201, description = "Account created and logged in", body = LoginResponse),
        (status = 404, description = "Sign-up is not enabled", body = ErrorBody),
        (status = 403, description = "Cross-site request, or password login is off", body = ErrorBody),
        (status = 409, description = "The username is taken", body = ErrorBody),
        (status = 422, description = "Invalid username (1-64 ASCII letters, digits, '.', '_', '-') or password", body = ErrorBody),
        (status = 429, description = "Too many attempts; see `Retry-After`", body = ErrorBody),
    )
)]
async fn signup(
    State(state): State<AppState>,
    info: ClientInfo,
    headers: HeaderMap,
    ApiJson(request): ApiJson<SignupRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if !state.web.allow_signup || state.auth.config().mode != Mode::Multi {
        return Err(ApiError::NotFound);
    }
    if !state.identities.password_login {
        return Err(ApiError::Forbidden(PASSWORDS_OFF));
    }
    if !state.web.same_origin(&headers, info.tls, false) {
        state.auth.admit_refused_login(&info.client)?;
        return Err(forbidden(&state, None, "POST /api/v1/auth/signup", &info, CROSS_SITE).await);
    }
    check_username(&request.username)?;
    password::check_policy(&request.password)?;
    state.auth.admit_signup(&info.client, &request.username)?;
    let home_host = super::home_host_of_new_user(&state, None).await?;
    let hash = state.auth.hasher().hash(&request.password).await?;
    let user = state
        .auth
        .store()
        .create_user(NewUser {
            username: &request.username,
            password_hash: &hash,
            role: Role::User,
            home_host: home_host.as_deref(),
        })
        .await?;
    state
        .auth
        .audit(AuditEntry {
            event: "user_created",
            actor_id: Some(user.id.to_string()),
            actor_name: Some(user.username.clone()),
            subject: Some(user.username.clone()),
            address: Some(info.client.address.to_string()),
            detail: Some("self-service sign-up".into()),
        })
        .await;
    let login = state.auth.open_session(&user, &hash, &info.client).await?;
    Ok(logged_in(&state, &info, login, StatusCode::CREATED))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PingResponse {
    /// The worker slot that serves the caller.
    pub slot: u32,
}

/// A round trip to the caller's own worker process.
#[utoipa::path(
    get, path = "/ping", tag = "workspace",
    responses(
        (status = 200, description = "The caller's worker answered", body = PingResponse),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 503, description = "The worker is restarting; see `Retry-After`", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn ping(
    State(state): State<AppState>,
    Authed(principal): Authed,
) -> Result<Json<PingResponse>, ApiError> {
    match state.pool.call(&principal.ctx, Op::Ping).await? {
        Reply::Pong { slot, .. } => Ok(Json(PingResponse { slot })),
        other => Err(ApiError::Internal(format!(
            "worker answered ping with {other:?}"
        ))),
    }
}
