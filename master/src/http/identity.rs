//! Identity from outside at the HTTP edge: which ways in are on, and the
//! authentication of JWT bearer tokens and trusted proxies' identity
//! headers (the OpenID Connect routes are in `api::oidc`; the user
//! mapping, cache and audit in `auth::external`).

use super::extract::ClientInfo;
use super::{ApiError, AppState};
use crate::auth::external::{self, Identity, IdentityPolicy, Via};
use crate::auth::jwt::{AlbVerifier, JwtError, Verifier};
use crate::auth::oidc::Oidc;
use crate::auth::{AuthError, Principal};
use crate::store::User;
use axum::http::request::Parts;
use axum::http::HeaderName;
use std::sync::Arc;
use tracing::info;

/// The WebSocket subprotocol a browser offers to say "my bearer token is
/// in the next protocol" (a browser cannot set `Authorization` on a
/// WebSocket): `Sec-WebSocket-Protocol: warren.bearer, warren.bearer.<JWT>`.
/// The server answers `warren.bearer`; the token itself is never echoed.
/// Never a token in the URL, which ends up in logs.
pub const WS_BEARER_PROTOCOL: &str = "warren.bearer";

/// The offered subprotocol that carries the token.
const WS_BEARER_PREFIX: &str = "warren.bearer.";

/// The ways in besides warren's own passwords (built from the flags by
/// `serve_identity`).
pub struct Identities {
    /// `--password-login off` turns password logins (and sign-up) off.
    pub password_login: bool,
    pub oidc: Option<Arc<Oidc>>,
    pub jwt: Option<JwtBearer>,
    pub header: Option<IdentityHeader>,
}

/// `Authorization: Bearer <JWT>` (`--jwt-*`).
pub struct JwtBearer {
    pub verifier: Verifier,
    pub policy: IdentityPolicy,
}

/// A trusted proxy's identity header (`--identity-header`).
pub struct IdentityHeader {
    pub name: HeaderName,
    pub format: HeaderFormat,
    pub policy: IdentityPolicy,
}

pub enum HeaderFormat {
    /// The header's value is the username (oauth2-proxy's
    /// `X-Forwarded-User`, nginx's `auth_request` answers).
    Plain,
    /// The header is a JWT (the proxy signed what it vouches for),
    /// verified like a bearer token with `--jwt-*`'s keys.
    Jwt(Verifier),
    /// AWS ALB's `x-amzn-oidc-data` (see [`AlbVerifier`]).
    Alb(AlbVerifier),
}

/// Whether a bearer token has the shape of a JWT (never one of warren's
/// own tokens, which have no dots).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

/// The caller a bearer JWT stands for: from the cache, else verified and
/// mapped to a user (created on first sight if the policy allows).
pub async fn bearer(
    state: &AppState,
    parts: &Parts,
    token: &str,
) -> Result<Arc<Principal>, ApiError> {
    let Some(jwt) = &state.identities.jwt else {
        return Err(ApiError::Unauthenticated);
    };
    let key = external::cache_key("jwt", token);
    if let Some(cached) = state.auth.cached_external(&key) {
        return Ok(cached?);
    }
    let generation = state.auth.generation();
    let client = ClientInfo::of(parts, &state.web);
    let claims = match jwt.verifier.verify(token).await {
        Ok(claims) => claims,
        Err(err) => {
            if err.is_refusal() {
                state
                    .auth
                    .audit_refused_credential(Via::Jwt, &client.client, &err.to_string())
                    .await;
            }
            return Err(AuthError::Token(err).into());
        }
    };
    let identity = jwt
        .policy
        .identity(jwt.verifier.issuer(), &claims, Via::Jwt)?;
    let user = user_for(state, &identity, &jwt.policy, &client).await?;
    let principal = state
        .auth
        .admit_external(&user, key, claims.expires_at_ms(), generation)?;
    state
        .auth
        .audit_external_login(&user, &identity, &client.client)
        .await;
    Ok(principal)
}

/// The caller a trusted proxy's identity header names, if the request has
/// one. From a peer that is not a trusted proxy the header is ignored (the
/// request goes on as if it had none) and logged as a security event.
pub async fn from_proxy(
    state: &AppState,
    parts: &Parts,
) -> Result<Option<Arc<Principal>>, ApiError> {
    let Some(header) = &state.identities.header else {
        return Ok(None);
    };
    let mut values = parts.headers.get_all(&header.name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let peer_address = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0);
    let peer = peer_address.map(|address| address.ip());
    if !believed(state, parts) {
        let client = ClientInfo::of(parts, &state.web);
        info!(
            security_event = true,
            header = %header.name,
            peer = ?peer,
            "identity header from a peer that is not a trusted proxy: ignored"
        );
        state
            .auth
            .audit_refused_credential(
                Via::Header,
                &client.client,
                &format!(
                    "{} sent by {} ({}): ignored",
                    header.name,
                    peer.map_or("an unknown peer".to_string(), |peer| peer.to_string()),
                    if peer.is_some_and(|peer| state.web.trusts(peer.to_canonical())) {
                        "a trusted proxy's address, but not the proxy: a user's process \
                         or an unknown socket of this host"
                    } else {
                        "not a --trusted-proxy"
                    }
                ),
            )
            .await;
        return Ok(None);
    }
    // A proxy that appends its header instead of replacing it would let a
    // client's own come first: two are refused, never one picked.
    if values.next().is_some() {
        return Err(ApiError::BadRequest(format!(
            "{} sent more than once; the proxy must replace it, not add to it",
            header.name
        )));
    }
    let value = value
        .to_str()
        .map_err(|_| ApiError::InvalidToken(format!("{}: not ASCII", header.name)))?
        .trim();
    if value.is_empty() {
        return Ok(None);
    }
    let key = external::cache_key(header.name.as_str(), value);
    if let Some(cached) = state.auth.cached_external(&key) {
        return Ok(Some(cached?));
    }
    let generation = state.auth.generation();
    let client = ClientInfo::of(parts, &state.web);
    let (identity, expires_at) = match &header.format {
        HeaderFormat::Plain => (
            Identity {
                issuer: format!("header:{}", header.name),
                subject: value.to_string(),
                username: value.to_string(),
                admin: None,
                via: Via::Header,
            },
            // No expiry of its own: the cache's TTL bounds it, and the
            // proxy sends the header again with every request.
            i64::MAX,
        ),
        HeaderFormat::Jwt(verifier) => {
            let claims = match verifier.verify(value).await {
                Ok(claims) => claims,
                Err(err) => return Err(refused_header(state, &client, &header.name, err).await),
            };
            let identity = header
                .policy
                .identity(verifier.issuer(), &claims, Via::Header)?;
            (identity, claims.expires_at_ms())
        }
        HeaderFormat::Alb(verifier) => {
            let claims = match verifier.verify(value).await {
                Ok(claims) => claims,
                Err(err) => return Err(refused_header(state, &client, &header.name, err).await),
            };
            // Keyed by the provider the load balancer logged the user in
            // with (its `iss`), else by the load balancer itself.
            let issuer = claims
                .string("iss")
                .map_or_else(|| format!("alb:{}", header.name), str::to_string);
            let identity = header.policy.identity(&issuer, &claims, Via::Header)?;
            (identity, claims.expires_at_ms())
        }
    };
    let user = user_for(state, &identity, &header.policy, &client).await?;
    let principal = state
        .auth
        .admit_external(&user, key, expires_at, generation)?;
    state
        .auth
        .audit_external_login(&user, &identity, &client.client)
        .await;
    Ok(Some(principal))
}

/// Audits a signed identity header that did not pass, and answers it.
async fn refused_header(
    state: &AppState,
    client: &ClientInfo,
    name: &HeaderName,
    err: JwtError,
) -> ApiError {
    if err.is_refusal() {
        state
            .auth
            .audit_refused_credential(Via::Header, &client.client, &format!("{name}: {err}"))
            .await;
    }
    AuthError::Token(err).into()
}

/// Whether the request's identity header (if it has one) comes from a
/// proxy that may vouch for users: a `--trusted-proxy` peer whose socket
/// is not a user's. Users' tasks, terminals and apps run on this host and
/// (with `--sandbox-network host`) reach every address of it: when the
/// peer's socket is on this host, the kernel says whose it is (see
/// [`super::peer`], looked up once per connection), and one of a user's
/// uids, or, when warren does not run as root (users' processes then run
/// as warren's own uid), warren's own uid, is not the proxy. A request
/// another host of the cluster forwarded carries the header only if that
/// host believed it (it strips it otherwise, see [`strip_unbelieved`]).
pub fn believed(state: &AppState, parts: &Parts) -> bool {
    parts
        .extensions
        .get::<crate::cluster::Forwarded>()
        .is_some()
        || state.web.proxy_peer(&parts.extensions)
}

/// Before a request goes to another host of the cluster: its identity
/// header goes with it only if this host believed it.
pub fn strip_unbelieved(state: &AppState, parts: &mut Parts) {
    if let Some(header) = &state.identities.header {
        if parts.headers.contains_key(&header.name) && !believed(state, parts) {
            parts.headers.remove(&header.name);
        }
    }
}

/// The user an identity is linked to, or a new one.
pub async fn user_for(
    state: &AppState,
    identity: &Identity,
    policy: &IdentityPolicy,
    client: &ClientInfo,
) -> Result<User, ApiError> {
    if let Some(user) = state.auth.known_identity(identity, &client.client).await? {
        return Ok(user);
    }
    let home_host = match (&state.cluster, policy.create_users) {
        (Some(_), true) => super::api::home_host_of_new_user(state, None).await?,
        _ => None,
    };
    Ok(state
        .auth
        .create_for_identity(identity, policy, &client.client, home_host.as_deref())
        .await?)
}

/// The bearer token a WebSocket upgrade carries in its offered
/// subprotocols (see [`WS_BEARER_PROTOCOL`]).
pub fn websocket_bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let upgrade = headers
        .get(axum::http::header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return None;
    }
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .find_map(|protocol| protocol.strip_prefix(WS_BEARER_PREFIX))
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    #[test]
    fn jwts_are_told_from_warren_tokens() {
        assert!(looks_like_jwt("eyJhbGciOi.eyJzdWIi.c2ln"));
        assert!(!looks_like_jwt(
            "wrn_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"
        ));
        assert!(!looks_like_jwt("eyJ.a.b.c"));
    }

    #[test]
    fn websocket_bearers_come_from_the_offered_protocols() {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("warren.bearer, warren.bearer.eyJa.eyJb.c"),
        );
        assert_eq!(websocket_bearer(&headers), None, "not an upgrade");
        headers.insert(
            axum::http::header::UPGRADE,
            HeaderValue::from_static("websocket"),
        );
        assert_eq!(websocket_bearer(&headers), Some("eyJa.eyJb.c"));
        headers.insert(
            axum::http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("warren.bearer"),
        );
        assert_eq!(websocket_bearer(&headers), None);
    }
}
