//! `/me…`: the caller's own account, sessions, password and API tokens.
//! Another user's session or token is `404`, exactly like one that does
//! not exist.

use super::{check_display_text, rfc3339, SessionView, UserView};
use crate::auth::{password, Mode, Scope};
use crate::http::error::ErrorBody;
use crate::http::extract::{forbidden, ApiJson, ApiPath, Authed, ClientInfo};
use crate::http::{ApiError, AppState};
use crate::store::{self, AuditEntry};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(my_sessions))
        .routes(routes!(end_my_session))
        .routes(routes!(change_password))
        .routes(routes!(my_tokens, create_token))
        .routes(routes!(revoke_token))
}

/// The caller.
#[utoipa::path(
    get, path = "/me", tag = "me",
    responses(
        (status = 200, body = UserView),
        (status = 401, body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn me(
    State(state): State<AppState>,
    Authed(principal): Authed,
) -> Result<Json<UserView>, ApiError> {
    let user = state
        .auth
        .store()
        .user_by_id(principal.user_id)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    Ok(Json(UserView::from(&user)))
}

/// The caller's sessions, newest first.
#[utoipa::path(
    get, path = "/me/sessions", tag = "me",
    responses(
        (status = 200, body = Vec<SessionView>),
        (status = 401, body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn my_sessions(
    State(state): State<AppState>,
    Authed(principal): Authed,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    let sessions = state
        .auth
        .store()
        .list_sessions(Some(principal.user_id))
        .await?;
    let current = principal.session_id();
    Ok(Json(
        sessions
            .iter()
            .map(|session| SessionView::of(session, current))
            .collect(),
    ))
}

/// End one of the caller's sessions (any other user's: 404).
#[utoipa::path(
    delete, path = "/me/sessions/{id}", tag = "me",
    params(("id" = Uuid, Path, description = "Session id")),
    responses(
        (status = 204, description = "Ended"),
        (status = 404, body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn end_my_session(
    State(state): State<AppState>,
    Authed(principal): Authed,
    info: ClientInfo,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    state
        .auth
        .revoke_session(&principal, id, Some(principal.user_id), &info.client)
        .await?
        .ok_or(ApiError::Missing("session"))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    /// 10-1024 bytes.
    #[schema(min_length = 10, max_length = 1024)]
    pub new_password: String,
}

/// Change the caller's password; ends their other sessions.
#[utoipa::path(
    post, path = "/me/password", tag = "me",
    request_body = PasswordChange,
    responses(
        (status = 204, description = "Changed"),
        (status = 401, description = "Wrong current password", body = ErrorBody),
        (status = 403, description = "Single-user mode, or an API token", body = ErrorBody),
        (status = 422, description = "The new password breaks the policy", body = ErrorBody),
        (status = 429, body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn change_password(
    State(state): State<AppState>,
    Authed(principal): Authed,
    info: ClientInfo,
    ApiJson(change): ApiJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    const REQUEST: &str = "POST /api/v1/me/password";
    if state.auth.config().mode == Mode::Single {
        let why = "single-user mode: the operator sets the password";
        return Err(forbidden(&state, Some(&principal), REQUEST, &info, why).await);
    }
    if principal.session_id().is_none() {
        let why = "log in to change your password";
        return Err(forbidden(&state, Some(&principal), REQUEST, &info, why).await);
    }
    password::check_policy(&change.new_password)?;
    state
        .auth
        .check_password(&principal, &change.current_password, &info.client)
        .await?;
    let hash = state.auth.hasher().hash(&change.new_password).await?;
    state
        .auth
        .store()
        .change_password(principal.user_id, &hash, &principal.token_hash)
        .await?;
    state.auth.user_changed(principal.user_id);
    state
        .auth
        .audit(AuditEntry {
            event: "password_changed",
            actor_id: Some(principal.user_id.to_string()),
            actor_name: Some(principal.username.clone()),
            subject: Some(principal.username.clone()),
            address: Some(info.client.address.to_string()),
            detail: Some("other sessions ended".into()),
        })
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// An API token as listed (never with its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub id: Uuid,
    pub name: String,
    pub scope: Scope,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
}

impl TokenView {
    fn of(row: &store::ApiTokenRow) -> Self {
        TokenView {
            id: row.id,
            name: row.name.clone(),
            scope: Scope::parse(&row.scope).unwrap_or(Scope::Read),
            created_at: rfc3339(row.created_at),
            expires_at: row.expires_at.map(rfc3339),
            last_used_at: row.last_used_at.map(rfc3339),
        }
    }
}

/// The caller's API tokens.
#[utoipa::path(
    get, path = "/me/tokens", tag = "me",
    responses((status = 200, body = Vec<TokenView>), (status = 401, body = ErrorBody)),
    security(("cookie" = []), ("bearer" = []))
)]
async fn my_tokens(
    State(state): State<AppState>,
    Authed(principal): Authed,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let tokens = state.auth.store().list_tokens(principal.user_id).await?;
    Ok(Json(tokens.iter().map(TokenView::of).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// 1–100 characters (not only spaces), to tell tokens apart; no
    /// control, format (bidi, zero-width) or other invisible characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    pub scope: Scope,
    /// Lifetime in seconds (at most ten years); none means the token lasts
    /// until revoked.
    #[serde(default, deserialize_with = "super::integer")]
    #[schema(minimum = 1, maximum = 315_360_000)]
    pub expires_in_seconds: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: TokenView,
    /// The secret, shown this once: use it as `Authorization: Bearer`.
    pub secret: String,
}

/// Create an API token for scripts; its secret is shown once.
#[utoipa::path(
    post, path = "/me/tokens", tag = "me",
    request_body = NewToken,
    responses(
        (status = 201, body = CreatedToken),
        (status = 403, description = "API tokens cannot create tokens", body = ErrorBody),
        (status = 409, description = "The user already holds 100 API tokens, the most allowed", body = ErrorBody),
        (status = 429, description = "More API tokens created this minute than `--token-rate` allows", body = ErrorBody),
        (status = 422, description = "A bad name (empty, over 100 characters, or with control, bidi or invisible characters) or lifetime", body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn create_token(
    State(state): State<AppState>,
    Authed(principal): Authed,
    info: ClientInfo,
    ApiJson(new): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    if principal.session_id().is_none() {
        let why = "log in to create API tokens";
        let request = "POST /api/v1/me/tokens";
        return Err(forbidden(&state, Some(&principal), request, &info, why).await);
    }
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::Unprocessable(
            "token names are 1-100 printable characters".into(),
        ));
    }
    check_display_text("token names", name)?;
    let expires_at = match new.expires_in_seconds {
        None => None,
        Some(seconds @ 1..=315_360_000) => Some(store::now_ms() + seconds as i64 * 1000),
        Some(_) => {
            return Err(ApiError::Unprocessable(
                "expires_in_seconds must be between 1 and 315360000 (10 years)".into(),
            ))
        }
    };
    let (row, secret) = state
        .auth
        .create_token(&principal, name, new.scope, expires_at, &info.client)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: TokenView::of(&row),
            secret,
        }),
    ))
}

/// Revoke one of the caller's API tokens (any other user's: 404).
#[utoipa::path(
    delete, path = "/me/tokens/{id}", tag = "me",
    params(("id" = Uuid, Path, description = "Token id")),
    responses((status = 204, description = "Revoked"), (status = 404, body = ErrorBody)),
    security(("cookie" = []), ("bearer" = []))
)]
async fn revoke_token(
    State(state): State<AppState>,
    Authed(principal): Authed,
    info: ClientInfo,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    if state
        .auth
        .revoke_token(&principal, id, &info.client)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::Missing("token"))
    }
}
