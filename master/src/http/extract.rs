//! Request extractors: who the client is, who the caller is, and request
//! bodies and parameters that fail in our error shape.

use super::{ApiError, AppState};
use crate::auth::{Client, CredentialKind, Principal, Scope};
use crate::store::AuditEntry;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, Extensions, HeaderMap, Method};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "warren_session";

/// HTTP settings that decide who a client is and what origin is ours.
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// Peers whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// `scheme://host[:port]` of the public URL, when configured: the only
    /// origin accepted for cookie-authenticated state changes.
    pub public_origin: Option<String>,
    pub allow_signup: bool,
    /// Whose processes users' are: a connection from this host whose
    /// socket one of these uids owns is never a proxy.
    pub users: UsersUids,
}

/// The uids users' processes run as: their range, and warren's own when
/// warren is not root (users' processes then run as warren's uid).
#[derive(Debug, Clone)]
pub struct UsersUids {
    pub first: u32,
    pub last: u32,
    pub own: Option<u32>,
}

impl Default for UsersUids {
    /// None.
    fn default() -> Self {
        UsersUids {
            first: 1,
            last: 0,
            own: None,
        }
    }
}

impl UsersUids {
    pub fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid) || self.own == Some(uid)
    }
}

impl WebConfig {
    /// Whether the request's TCP peer may speak for others (forwarded
    /// addresses, an identity header): a `--trusted-proxy` address whose
    /// socket, when it is on this host, the kernel lists under exactly
    /// this connection and a uid that is not a user's (see `peer`). Users'
    /// tasks, terminals and apps run on this host and reach every address
    /// of it.
    pub fn proxy_peer(&self, extensions: &Extensions) -> bool {
        let Some(peer) = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| SocketAddr::new(info.0.ip().to_canonical(), info.0.port()))
        else {
            return false;
        };
        if !self.trusts(peer.ip()) {
            return false;
        }
        let Some(owner) = extensions.get::<super::peer::PeerOwner>() else {
            return false;
        };
        match owner.of(peer) {
            // A socket of another host: the proxy's.
            super::peer::Owner::Remote => true,
            super::peer::Owner::Uid(uid) => !self.users.contains(uid),
            super::peer::Owner::Unknown => false,
        }
    }

    /// Whether `peer` is one of the `--trusted-proxy` networks.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }

    /// The client's address and whether it reached us over TLS: the TCP
    /// peer's, unless it is a proxy that may speak for others
    /// ([`WebConfig::proxy_peer`]; a request another host of the cluster
    /// forwarded carries that host's view), whose `X-Forwarded-*` count.
    pub fn client_of(&self, parts_headers: &HeaderMap, extensions: &Extensions) -> (IpAddr, bool) {
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([127, 0, 0, 1]), |info| info.0.ip());
        let public_tls = self
            .public_origin
            .as_deref()
            .is_some_and(|origin| origin.starts_with("https://"));
        let forwarded = extensions.get::<crate::cluster::Forwarded>().is_some();
        if !self.trusts(peer) || !(forwarded || self.proxy_peer(extensions)) {
            return (peer, public_tls);
        }
        // The right-most address not added by a trusted proxy is the client.
        let forwarded = parts_headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|item| item.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        let address = forwarded
            .iter()
            .rev()
            .find(|address| !self.trusts(**address))
            .or(forwarded.first())
            .copied()
            .unwrap_or(peer);
        let proxied_tls = parts_headers
            .get("x-forwarded-proto")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(',').next())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
        (address, public_tls || proxied_tls)
    }

    /// Whether the request's `Origin` (or, lacking one, `Referer`) is ours.
    /// With neither header, `required` decides.
    pub fn same_origin(&self, headers: &HeaderMap, tls: bool, required: bool) -> bool {
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                headers
                    .get(header::REFERER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(origin_of_url)
            });
        let Some(origin) = origin else {
            return !required;
        };
        let expected = match &self.public_origin {
            Some(public) => public.clone(),
            None => {
                let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
                    return false;
                };
                format!("{}://{host}", if tls { "https" } else { "http" })
            }
        };
        origin.eq_ignore_ascii_case(&expected)
    }
}

/// `https://host:port/path?q` → `https://host:port`.
pub fn origin_of_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    if host.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{host}"))
}

/// Where the request came from.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub client: Client,
    /// Served over TLS (directly or by a trusted proxy).
    pub tls: bool,
}

impl ClientInfo {
    pub fn of(parts: &Parts, web: &WebConfig) -> ClientInfo {
        let (address, tls) = web.client_of(&parts.headers, &parts.extensions);
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .map(|agent| agent.chars().take(256).collect());
        ClientInfo {
            client: Client {
                address,
                user_agent,
            },
            tls,
        }
    }
}

impl FromRequestParts<AppState> for ClientInfo {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(ClientInfo::of(parts, &state.web))
    }
}

/// The caller's secret: a bearer token or the session cookie.
pub(crate) fn credential(headers: &HeaderMap) -> Result<Option<(&str, bool)>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| ApiError::Unauthenticated)?;
        return match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                Ok(Some((token.trim(), false)))
            }
            _ => Err(ApiError::Unauthenticated),
        };
    }
    if let Some(token) = cookie(headers, SESSION_COOKIE) {
        return Ok(Some((token, true)));
    }
    Ok(super::identity::websocket_bearer(headers).map(|token| (token, false)))
}

/// The value of cookie `name`, if sent.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

/// An authenticated caller. State-changing requests authenticated by the
/// session cookie must come from our own origin (CSRF); read-only API tokens
/// may only read.
pub struct Authed(pub Arc<Principal>);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        Ok(Authed(authenticate(parts, state, !safe).await?))
    }
}

/// An authenticated caller who may change state although the request is a
/// `GET`: a WebSocket upgrade (a browser sends no CSRF token with one, so
/// a cookie must come from our own origin; a read-only token may not).
pub struct AuthedWriter(pub Arc<Principal>);

impl FromRequestParts<AppState> for AuthedWriter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(AuthedWriter(authenticate(parts, state, true).await?))
    }
}

/// The caller of a request whose body stays unread (the apps' proxy);
/// `changes_state` as for [`AuthedWriter`].
pub async fn authenticate_request(
    parts: &Parts,
    state: &AppState,
    changes_state: bool,
) -> Result<Arc<Principal>, ApiError> {
    authenticate(parts, state, changes_state).await
}

/// Who the request's credentials name, and whether they came like a
/// cookie (the session cookie, or a trusted proxy's identity header, which
/// stands for its user's browser session at the proxy): an identity
/// header first, then a bearer JWT, then a session or API token.
pub async fn caller(parts: &Parts, state: &AppState) -> Result<(Arc<Principal>, bool), ApiError> {
    if let Some(principal) = super::identity::from_proxy(state, parts).await? {
        return Ok((principal, true));
    }
    let Some((token, via_cookie)) = credential(&parts.headers)? else {
        return Err(ApiError::Unauthenticated);
    };
    let principal = if !via_cookie && super::identity::looks_like_jwt(token) {
        super::identity::bearer(state, parts, token).await?
    } else {
        state.auth.authenticate(token).await?
    };
    Ok((principal, via_cookie))
}

/// The caller; for a request that changes state, a cookie from another
/// origin and a read-only token are refused (403).
async fn authenticate(
    parts: &Parts,
    state: &AppState,
    changes_state: bool,
) -> Result<Arc<Principal>, ApiError> {
    let (principal, via_cookie) = caller(parts, state).await?;
    if changes_state {
        if via_cookie {
            let client = ClientInfo::of(parts, &state.web);
            if !state.web.same_origin(&parts.headers, client.tls, true) {
                deny(
                    state,
                    &principal,
                    parts,
                    &client,
                    "cross-site request (Origin check)",
                )
                .await;
                return Err(ApiError::Forbidden(
                    "cross-site request refused: Origin does not match this server",
                ));
            }
        }
        if let CredentialKind::Token {
            scope: Scope::Read, ..
        } = principal.kind
        {
            let client = ClientInfo::of(parts, &state.web);
            deny(state, &principal, parts, &client, "read-only token").await;
            return Err(ApiError::Forbidden("this API token may only read"));
        }
    }
    Ok(principal)
}

/// An authenticated administrator (multi-user mode only).
pub struct Admin(pub Arc<Principal>);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Authed(principal) = Authed::from_request_parts(parts, state).await?;
        if !principal.is_admin() {
            let client = ClientInfo::of(parts, &state.web);
            deny(state, &principal, parts, &client, "administrators only").await;
            return Err(ApiError::Forbidden("administrators only"));
        }
        Ok(Admin(principal))
    }
}

async fn deny(
    state: &AppState,
    principal: &Principal,
    parts: &Parts,
    client: &ClientInfo,
    why: &'static str,
) {
    let request = format!("{} {}", parts.method, original_path(parts));
    audit_denied(state, Some(principal), request, client, why).await;
}

/// Records an access denial (a 403) in the audit log.
pub async fn audit_denied(
    state: &AppState,
    principal: Option<&Principal>,
    request: String,
    client: &ClientInfo,
    why: &'static str,
) {
    state
        .auth
        .audit(AuditEntry {
            event: "access_denied",
            actor_id: principal.map(|p| p.user_id.to_string()),
            actor_name: principal.map(|p| p.username.clone()),
            subject: Some(request),
            address: Some(client.client.address.to_string()),
            detail: Some(why.to_string()),
        })
        .await;
}

/// A 403 for `why`, recorded in the audit log.
pub async fn forbidden(
    state: &AppState,
    principal: Option<&Principal>,
    request: &str,
    client: &ClientInfo,
    why: &'static str,
) -> ApiError {
    audit_denied(state, principal, request.to_string(), client, why).await;
    ApiError::Forbidden(why)
}

/// The request path as the client sent it (nested routers strip their
/// prefix from `parts.uri`).
fn original_path(parts: &Parts) -> &str {
    parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or(parts.uri.path(), |uri| uri.0.path())
}

/// `axum::Json` whose rejections are [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}

/// `axum::extract::Path` whose rejections are [`ApiError`]s.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(value))
    }
}

/// `axum::extract::Query` whose rejections are [`ApiError`]s.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let web = WebConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().expect("cidr")],
            ..Default::default()
        };
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9, 198.51.100.7"),
            ("x-forwarded-for", "10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        // A connection from `peer` to this server, as the listener marks it.
        let from = |peer: &str| {
            let peer: SocketAddr = format!("{peer}:40000").parse().expect("address");
            let mut extensions = Extensions::new();
            extensions.insert(ConnectInfo(peer));
            extensions.insert(super::super::peer::PeerOwner::new(
                "127.0.0.1:8080".parse().expect("address"),
            ));
            extensions
        };
        // From the proxy: the right-most untrusted address, and TLS.
        assert_eq!(
            web.client_of(&h, &from("10.0.0.2")),
            ("198.51.100.7".parse().expect("ip"), true)
        );
        // From anyone else: the peer, no TLS, whatever the headers claim.
        assert_eq!(
            web.client_of(&h, &from("192.0.2.1")),
            ("192.0.2.1".parse().expect("ip"), false)
        );
    }

    #[test]
    fn origins_must_match_the_host_or_the_public_url() {
        let web = WebConfig::default();
        let ours = headers(&[
            ("host", "example.org:8080"),
            ("origin", "http://example.org:8080"),
        ]);
        assert!(web.same_origin(&ours, false, true));
        assert!(!web.same_origin(&ours, true, true), "scheme differs");
        let theirs = headers(&[("host", "example.org:8080"), ("origin", "http://evil.test")]);
        assert!(!web.same_origin(&theirs, false, true));
        let referer = headers(&[
            ("host", "example.org"),
            ("referer", "http://example.org/app?x=1"),
        ]);
        assert!(web.same_origin(&referer, false, true));
        let neither = headers(&[("host", "example.org")]);
        assert!(!web.same_origin(&neither, false, true));
        assert!(web.same_origin(&neither, false, false));
        let null = headers(&[("host", "example.org"), ("origin", "null")]);
        assert!(!web.same_origin(&null, false, false));
        let public = WebConfig {
            public_origin: Some("https://warren.example".into()),
            ..Default::default()
        };
        let proxied = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://warren.example"),
        ]);
        assert!(public.same_origin(&proxied, true, true));
    }

    #[test]
    fn cookies_and_bearer_tokens_are_found() {
        let h = headers(&[("cookie", "a=1; warren_session=abc; b=2")]);
        assert_eq!(credential(&h).expect("ok"), Some(("abc", true)));
        let h = headers(&[
            ("authorization", "Bearer xyz"),
            ("cookie", "warren_session=abc"),
        ]);
        assert_eq!(credential(&h).expect("ok"), Some(("xyz", false)));
        let h = headers(&[("authorization", "Basic xyz")]);
        assert!(credential(&h).is_err());
        assert_eq!(credential(&HeaderMap::new()).expect("ok"), None);
    }

    #[test]
    fn origins_of_urls() {
        assert_eq!(
            origin_of_url("https://a.example:8443/x/y?z").as_deref(),
            Some("https://a.example:8443")
        );
        assert_eq!(origin_of_url("not a url"), None);
    }
}
