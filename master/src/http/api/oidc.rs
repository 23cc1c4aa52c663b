//! `/auth/methods` (which ways in are on) and the OpenID Connect login:
//! `/auth/oidc/login` → the provider → `/auth/oidc/callback` → a warren
//! session (see `auth::oidc` for the protocol, `auth::external` for the
//! user it maps to).

use super::auth::session_cookies;
use crate::auth::external::Via;
use crate::auth::oidc::printable;
use crate::auth::{AuthError, Mode};
use crate::http::error::ErrorBody;
use crate::http::extract::{cookie, ApiQuery, ClientInfo};
use crate::http::identity::user_for;
use crate::http::{ApiError, AppState};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(methods))
        .routes(routes!(oidc_login))
        .routes(routes!(oidc_callback))
}

/// The cookie that ties a login's `state` to the browser that started it.
const STATE_COOKIE: &str = "warren_oidc_state";
const CALLBACK_PATH: &str = "/api/v1/auth/oidc/callback";
/// The longest `return_to` kept.
const MAX_RETURN_TO: usize = 2048;

#[derive(Debug, Serialize, ToSchema)]
pub struct AuthMethods {
    /// `POST /auth/login` with a username and password.
    pub password: bool,
    /// `POST /auth/signup` (needs `password` too).
    pub signup: bool,
    /// Where a browser starts an OpenID Connect login (add
    /// `?return_to=/path`), when on.
    pub oidc_login_url: Option<String>,
    /// `Authorization: Bearer <JWT>` is accepted.
    pub jwt_bearer: bool,
    /// A trusted proxy's identity header names the user.
    pub identity_header: bool,
}

/// Which ways to log in are on (for a login page).
#[utoipa::path(
    get, path = "/auth/methods", tag = "auth",
    responses((status = 200, description = "The ways in", body = AuthMethods))
)]
async fn methods(State(state): State<AppState>) -> Json<AuthMethods> {
    let ways = &state.identities;
    let multi = state.auth.config().mode == Mode::Multi;
    Json(AuthMethods {
        password: ways.password_login,
        signup: ways.password_login && multi && state.web.allow_signup,
        oidc_login_url: ways
            .oidc
            .as_ref()
            .map(|_| "/api/v1/auth/oidc/login".to_string()),
        jwt_bearer: ways.jwt.is_some(),
        identity_header: ways.header.is_some(),
    })
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct LoginQuery {
    /// A path on this server to land on after the login (default `/`);
    /// anything else (another site, `//host`, a scheme) is refused.
    return_to: Option<String>,
}

/// Start an OpenID Connect login: a redirect to the provider.
#[utoipa::path(
    get, path = "/auth/oidc/login", tag = "auth",
    params(LoginQuery),
    responses(
        (status = 303, description = "To the provider's login; sets the `warren_oidc_state` cookie"),
        (status = 400, description = "`return_to` is not a path on this server", body = ErrorBody),
        (status = 404, description = "OpenID Connect is not configured", body = ErrorBody),
        (status = 502, description = "The provider's discovery document could not be read", body = ErrorBody),
    )
)]
async fn oidc_login(
    State(state): State<AppState>,
    info: ClientInfo,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<LoginQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let Some(oidc) = &state.identities.oidc else {
        return Err(ApiError::NotFound);
    };
    // Each start holds a pending login for 10 minutes: they count against
    // the address's login rate limit, so one client cannot push real
    // logins out of the pending table.
    state.auth.admit_refused_login(&info.client)?;
    let return_to = match query.return_to.as_deref() {
        None | Some("") => "/".to_string(),
        Some(target) if is_local_path(target) => target.to_string(),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "return_to must be a path on this server (starting with a single /)".into(),
            ))
        }
    };
    let redirect_uri = match &state.web.public_origin {
        Some(origin) => format!("{origin}{CALLBACK_PATH}"),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|host| host.to_str().ok())
                .filter(|host| {
                    (1..=255).contains(&host.len())
                        && host.bytes().all(|b| {
                            b.is_ascii_alphanumeric()
                                || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                        })
                })
                .ok_or_else(|| ApiError::BadRequest("no usable Host header".into()))?;
            let scheme = if info.tls { "https" } else { "http" };
            format!("{scheme}://{host}{CALLBACK_PATH}")
        }
    };
    let started = oidc.start(redirect_uri, return_to).await?;
    let secure = if info.tls { "; Secure" } else { "" };
    let state_cookie = format!(
        "{STATE_COOKIE}={}; Path=/api/v1/auth/oidc; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        started.state,
        crate::auth::oidc::LOGIN_TTL.as_secs()
    );
    let mut answer = HeaderMap::new();
    answer.insert(
        header::LOCATION,
        HeaderValue::from_str(&started.location)
            .map_err(|_| ApiError::ProviderUnavailable("bad authorization endpoint".into()))?,
    );
    if let Ok(value) = HeaderValue::from_str(&state_cookie) {
        answer.insert(header::SET_COOKIE, value);
    }
    answer.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok((StatusCode::SEE_OTHER, answer))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    /// The issuer, when the provider says (RFC 9207).
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Where the provider sends the browser back: a warren session.
#[utoipa::path(
    get, path = "/auth/oidc/callback", tag = "auth",
    params(CallbackQuery),
    responses(
        (status = 303, description = "Logged in: session cookies set, on to `return_to`"),
        (status = 400, description = "No login of this browser has this `state` (forged, replayed, expired)", body = ErrorBody),
        (status = 401, description = "The provider refused, or its ID token did not pass", body = ErrorBody),
        (status = 403, description = "The identity is not let in (unknown and not created, disabled, an unusable name)", body = ErrorBody),
        (status = 404, description = "OpenID Connect is not configured", body = ErrorBody),
        (status = 409, description = "The username is another account's", body = ErrorBody),
        (status = 502, description = "The provider could not be reached", body = ErrorBody),
    )
)]
async fn oidc_callback(
    State(state): State<AppState>,
    info: ClientInfo,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<CallbackQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let Some(oidc) = &state.identities.oidc else {
        return Err(ApiError::NotFound);
    };
    let refused = |why: String| async {
        state
            .auth
            .audit_refused_credential(Via::Oidc, &info.client, &why)
            .await;
        why
    };
    let login_state = query.state.as_deref().unwrap_or("");
    // Only the browser that started this login may finish it: a login
    // started elsewhere (an attacker's, to log a victim into the
    // attacker's account) carries no matching cookie.
    if login_state.is_empty() || cookie(&headers, STATE_COOKIE) != Some(login_state) {
        let why = refused("OpenID Connect callback whose state is not this browser's".into()).await;
        return Err(AuthError::LoginState(format!("{why}; start the login again")).into());
    }
    if let Some(error) = &query.error {
        // The pending login is spent too: the provider said no.
        oidc.abandon(login_state);
        let why = refused(format!(
            "the identity provider refused the login: {} {}",
            printable(error),
            printable(query.error_description.as_deref().unwrap_or(""))
        ))
        .await;
        return Err(ApiError::InvalidToken(why));
    }
    let code = query.code.as_deref().unwrap_or("");
    if code.is_empty() {
        return Err(ApiError::BadRequest("no `code` in the callback".into()));
    }
    let finished = match oidc.finish(login_state, code, query.iss.as_deref()).await {
        Ok(finished) => finished,
        Err(err) => {
            refused(err.to_string()).await;
            return Err(err.into());
        }
    };
    let identity =
        oidc.config()
            .policy
            .identity(&oidc.config().issuer, &finished.claims, Via::Oidc)?;
    let user = user_for(&state, &identity, &oidc.config().policy, &info).await?;
    let password_hash = state
        .auth
        .store()
        .password_hash(user.id)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let login = state
        .auth
        .open_session(&user, &password_hash, &info.client)
        .await?;
    state
        .auth
        .audit_external_login(&user, &identity, &info.client)
        .await;
    let mut answer = session_cookies(&state, &info, &login);
    let clear =
        format!("{STATE_COOKIE}=; Path=/api/v1/auth/oidc; HttpOnly; SameSite=Lax; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&clear) {
        answer.append(header::SET_COOKIE, value);
    }
    let location = HeaderValue::from_str(&finished.return_to)
        .unwrap_or_else(|_| HeaderValue::from_static("/"));
    answer.insert(header::LOCATION, location);
    answer.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok((StatusCode::SEE_OTHER, answer))
}

/// A path on this server, and nothing a browser could take for another
/// site: one leading `/` (not `//`, not `/\`), no backslashes or control
/// characters anywhere.
fn is_local_path(target: &str) -> bool {
    target.len() <= MAX_RETURN_TO
        && target.starts_with('/')
        && !target.starts_with("//")
        && !target
            .chars()
            .any(|c| c == '\\' || c.is_control() || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_return_targets() {
        for good in ["/", "/files?x=1", "/user/alice/jupyter/"] {
            assert!(is_local_path(good), "{good}");
        }
        for bad in [
            "https://evil.test/",
            "//evil.test",
            "/\\evil.test",
            "\\\\evil.test",
            "evil.test",
            "/%0d%0a\nx",
            "/ok\tno",
            "javascript:alert(1)",
        ] {
            assert!(!is_local_path(bad), "{bad}");
        }
    }
}
