//! `/user/{name}/{app}/…`: the reverse proxy to a user's running app.
//!
//! The caller must be `{name}` (anyone else gets a 404, as if the path did
//! not exist); a state-changing request or a WebSocket upgrade carried by
//! the session cookie must come from our own origin (the proxy adds the
//! app's credentials, so the app's own cross-site checks cannot see a
//! forged request). Bodies stream both ways without buffering; a WebSocket
//! upgrade is passed through and its bytes copied until either side
//! closes. While the app starts, a browser gets a page that reloads itself
//! and an API client a 503 with `Retry-After`.
//!
//! Connections to apps are pooled by hyper-util's client, keyed by launch
//! (a restarted app never gets an old connection).

use super::{AppDef, AppsHub, Upstream};
use crate::http::extract::{authenticate_request, ClientInfo, SESSION_COOKIE};
use crate::http::{ApiError, AppState};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use warren_protocol::{AppEndpoint, AppInfo, AppState as State_};

/// How long a request waits for an app that is starting before the
/// "starting" answer.
const START_WAIT: Duration = Duration::from_secs(3);

/// How long connecting to an app may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The proxy: the hub and a pooled client to the apps.
pub struct Proxy {
    pub hub: Arc<AppsHub>,
    client: Client<Connector, Body>,
}

impl Proxy {
    pub fn new(hub: Arc<AppsHub>) -> Arc<Proxy> {
        let connector = Connector {
            endpoints: hub.endpoints.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(32)
            .set_host(false)
            .build(connector);
        Arc::new(Proxy { hub, client })
    }
}

/// The routes, outside the API's middleware: the app's own pages choose
/// their security headers, and their bodies are as long as they are.
pub fn routes(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/user/{name}/{app}", axum::routing::any(proxy))
        .route("/user/{name}/{app}/", axum::routing::any(proxy))
        .route("/user/{name}/{app}/{*rest}", axum::routing::any(proxy))
        .with_state(state)
}

/// What a browser is told, rather than JSON.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

async fn proxy(State(state): State<AppState>, request: Request) -> Response {
    let Some(proxy) = state.apps.clone() else {
        return ApiError::NotFound.into_response();
    };
    let html = wants_html(request.headers());
    match forward(&state, &proxy, request).await {
        Ok(response) => response,
        Err(Refusal::Api(err)) => err.into_response(),
        Err(Refusal::NotRunning(info, def)) => not_running(&info, &def, html),
    }
}

enum Refusal {
    Api(ApiError),
    NotRunning(AppInfo, Box<AppDef>),
}

impl From<ApiError> for Refusal {
    fn from(err: ApiError) -> Self {
        Refusal::Api(err)
    }
}

async fn forward(
    state: &AppState,
    proxy: &Arc<Proxy>,
    request: Request,
) -> Result<Response, Refusal> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let mut segments = path.splitn(5, '/').skip(2);
    let (Some(name), Some(app)) = (segments.next(), segments.next()) else {
        return Err(ApiError::NotFound.into());
    };
    let rest = segments.next();
    let upgrade = parts.headers.contains_key(header::UPGRADE);
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let principal = authenticate_request(&parts, state, !safe || upgrade).await?;
    // An app does what it likes with a GET (and a GET starts it): a token
    // that may only read warren's API may not use apps at all.
    if let crate::auth::CredentialKind::Token {
        scope: crate::auth::Scope::Read,
        ..
    } = principal.kind
    {
        return Err(ApiError::Forbidden("a read-only token cannot use apps").into());
    }
    // Another user's app does not exist, for anyone.
    if principal.username != name {
        return Err(ApiError::NotFound.into());
    }
    let hub = &proxy.hub;
    let Some(def) = hub.def(app) else {
        return Err(ApiError::NotFound.into());
    };
    let def = &*def;
    if rest.is_none() {
        // `/user/alice/jupyter` → `/user/alice/jupyter/`: relative links
        // in the app's pages resolve beneath it.
        let target = match parts.uri.query() {
            Some(query) => format!("{path}/?{query}"),
            None => format!("{path}/"),
        };
        return Ok((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)]).into_response());
    }
    let user = principal.ctx.clone();
    // In use from here until the answer's last byte.
    let in_use = hub.begin(&user, &def.name);
    let upstream = match hub.upstream(def, &user, START_WAIT).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(info)) => return Err(Refusal::NotRunning(info, Box::new(def.clone()))),
        Err(err) => return Err(ApiError::Pool(err).into()),
    };
    let inbound_upgrade = upgrade
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    let target = upstream_target(def, &upstream, &path, rest.unwrap_or(""), parts.uri.query())?;
    let client = ClientInfo::of(&parts, &state.web);
    let mut headers = outbound_headers(&parts.headers, &upstream, &client, def, name, upgrade);
    // warren's credentials from outside are warren's, not the app's.
    if let Some(identity) = &state.identities.header {
        headers.remove(&identity.name);
        // An AWS load balancer sends the user's access token beside its
        // assertion.
        if matches!(identity.format, crate::http::identity::HeaderFormat::Alb(_)) {
            for name in [
                "x-amzn-oidc-accesstoken",
                "x-amzn-oidc-identity",
                "x-amzn-oidc-data",
            ] {
                headers.remove(name);
            }
        }
    }
    strip_bearer_protocols(&mut headers);
    let retryable = safe && !has_body(&parts.headers);
    let method = parts.method.clone();
    let send = |target: Uri, headers: HeaderMap, body: Body| {
        let mut outbound = axum::http::Request::new(body);
        *outbound.method_mut() = method.clone();
        *outbound.uri_mut() = target;
        *outbound.headers_mut() = headers;
        proxy.client.request(outbound)
    };
    let answer = match send(target, headers, body).await {
        Ok(answer) => answer,
        Err(_) if retryable => {
            // The app died (or restarted) since we last asked, or took a
            // pooled connection down with it: ask again, which restarts
            // it if need be, and try once more (a bodiless GET, HEAD or
            // OPTIONS: safe to repeat).
            hub.forget(user.id, &def.name);
            let upstream = match hub.upstream(def, &user, START_WAIT).await {
                Ok(Ok(upstream)) => upstream,
                Ok(Err(info)) => return Err(Refusal::NotRunning(info, Box::new(def.clone()))),
                Err(err) => return Err(ApiError::Pool(err).into()),
            };
            let target =
                upstream_target(def, &upstream, &path, rest.unwrap_or(""), parts.uri.query())?;
            let headers = outbound_headers(&parts.headers, &upstream, &client, def, name, upgrade);
            send(target, headers, Body::empty())
                .await
                .map_err(|err| unreachable_app(hub, &user, def, &err))?
        }
        Err(err) => return Err(unreachable_app(hub, &user, def, &err).into()),
    };
    hub.metrics().proxied(&def.name, answer.status().as_u16());
    let mut answer = answer;
    let switching = answer.status() == StatusCode::SWITCHING_PROTOCOLS;
    let outbound_upgrade = switching.then(|| hyper::upgrade::on(&mut answer));
    let (mut answer_parts, answer_body) = answer.into_parts();
    strip_hop_by_hop(&mut answer_parts.headers, switching);
    drop_session_cookie(&mut answer_parts.headers);
    if let Some(outbound) = outbound_upgrade {
        let Some(inbound) = inbound_upgrade else {
            return Err(ApiError::BadGateway("the app switched protocols unasked".into()).into());
        };
        drop(in_use);
        // The socket lives on after this request: it ends when the
        // caller's credential does.
        let auth = state.auth.clone();
        let revoked = async move { auth.watch(principal, false).ended().await };
        tokio::spawn(splice(
            inbound,
            outbound,
            hub.clone(),
            user,
            def.name.clone(),
            revoked,
        ));
        return Ok(Response::from_parts(answer_parts, Body::empty()));
    }
    let body = InUse {
        inner: answer_body,
        _guard: in_use,
    };
    // An answer may stream for as long as the app likes (OpenCode's event
    // stream): it is cut when the caller's credential ends.
    let body = crate::http::cut_when_revoked(&state.auth, principal, Body::new(body));
    Ok(Response::from_parts(answer_parts, body))
}

/// The app could not be reached: 502, and the app is looked up afresh next
/// time.
fn unreachable_app(
    hub: &AppsHub,
    user: &warren_protocol::UserCtx,
    def: &AppDef,
    err: &hyper_util::client::legacy::Error,
) -> ApiError {
    hub.forget(user.id, &def.name);
    hub.metrics().proxied(&def.name, 502);
    tracing::info!(user = %user.name, app = %def.name, error = %err, "app unreachable");
    ApiError::BadGateway(format!("the app {} did not answer; try again", def.name))
}

/// The request's URI at the app: the whole path, or what follows the
/// prefix (`strip_prefix`).
fn upstream_target(
    def: &AppDef,
    upstream: &Upstream,
    path: &str,
    rest: &str,
    query: Option<&str>,
) -> Result<Uri, ApiError> {
    let path = if def.strip_prefix {
        format!("/{rest}")
    } else {
        path.to_string()
    };
    let target = match query {
        Some(query) => format!("http://{}{path}?{query}", upstream.key),
        None => format!("http://{}{path}", upstream.key),
    };
    Uri::try_from(target).map_err(|err| ApiError::BadRequest(format!("bad request target: {err}")))
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
}

/// Drops the offered WebSocket subprotocols that carry a warren bearer
/// token (`warren.bearer.<token>`, see `http::identity`) and the marker
/// beside them.
fn strip_bearer_protocols(headers: &mut HeaderMap) {
    let name = header::SEC_WEBSOCKET_PROTOCOL;
    if !headers.contains_key(&name) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(&name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|protocol| {
            !protocol.is_empty()
                && *protocol != crate::http::identity::WS_BEARER_PROTOCOL
                && !protocol.starts_with("warren.bearer.")
        })
        .map(str::to_string)
        .collect();
    headers.remove(&name);
    if !kept.is_empty() {
        if let Ok(value) = HeaderValue::try_from(kept.join(", ")) {
            headers.insert(name, value);
        }
    }
}

/// The request's headers as the app gets them: hop-by-hop ones, warren's
/// session cookie and the client's `Authorization` removed; the app's own
/// credential and `X-Forwarded-*` added.
fn outbound_headers(
    inbound: &HeaderMap,
    upstream: &Upstream,
    client: &ClientInfo,
    def: &AppDef,
    user: &str,
    upgrade: bool,
) -> HeaderMap {
    let mut headers = inbound.clone();
    strip_hop_by_hop(&mut headers, upgrade);
    headers.remove(header::AUTHORIZATION);
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-prefix",
        "forwarded",
    ] {
        headers.remove(name);
    }
    let cookies: Vec<String> = inbound
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split('=').next().map(str::trim) != Some(SESSION_COOKIE))
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if !cookies.is_empty() {
        if let Ok(value) = HeaderValue::try_from(cookies.join("; ")) {
            headers.insert(header::COOKIE, value);
        }
    }
    if let Some((name, value)) = &upstream.auth {
        headers.insert(name.clone(), value.clone());
    }
    if let Ok(value) = HeaderValue::try_from(client.client.address.to_string()) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if client.tls { "https" } else { "http" }),
    );
    if let Some(host) = inbound.get(header::HOST) {
        headers.insert("x-forwarded-host", host.clone());
    } else {
        headers.insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    if def.strip_prefix {
        if let Ok(value) = HeaderValue::try_from(format!("/user/{user}/{}", def.name)) {
            headers.insert("x-forwarded-prefix", value);
        }
    }
    headers
}

/// Removes hop-by-hop headers and those `Connection` names; an upgrade
/// keeps `Connection: upgrade` and `Upgrade`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    let kept_upgrade = upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    if let Some(protocol) = kept_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// An app may not set (or clear) warren's own session cookie: a
/// `Set-Cookie` whose name is `warren_session` as a browser reads it
/// (surrounding whitespace trimmed), or that is not text at all, is dropped.
fn drop_session_cookie(headers: &mut HeaderMap) {
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|value| {
            let Ok(text) = std::str::from_utf8(value.as_bytes()) else {
                return false;
            };
            let pair = text.split(';').next().unwrap_or("");
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            !name.trim().eq_ignore_ascii_case(SESSION_COOKIE)
        })
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for value in kept {
        headers.append(header::SET_COOKIE, value);
    }
}

/// Copies a WebSocket's bytes both ways until either side closes, telling
/// the worker while bytes move.
async fn splice(
    inbound: hyper::upgrade::OnUpgrade,
    outbound: hyper::upgrade::OnUpgrade,
    hub: Arc<AppsHub>,
    user: warren_protocol::UserCtx,
    app: String,
    revoked: impl std::future::Future<Output = ()>,
) {
    let (inbound, outbound) = match tokio::try_join!(inbound, outbound) {
        Ok(both) => both,
        Err(err) => {
            tracing::debug!(error = %err, "an app's WebSocket upgrade failed");
            return;
        }
    };
    let moved = Arc::new(AtomicU64::new(0));
    let mut client = Counted {
        inner: TokioIo::new(inbound),
        moved: moved.clone(),
    };
    let mut app_side = TokioIo::new(outbound);
    // A WebSocket is traffic while bytes move (an open, silent one is not).
    let toucher = {
        let moved = moved.clone();
        let every = hub.touch_every(&app);
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                tokio::time::sleep(every).await;
                let now = moved.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    hub.touch(&user, &app).await;
                }
            }
        })
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut app_side) => {}
        () = revoked => tracing::debug!("an app's WebSocket ended with its session"),
    }
    toucher.abort();
}

/// An answer's body that keeps its app in use until it is done.
struct InUse {
    inner: hyper::body::Incoming,
    _guard: super::InFlightGuard,
}

impl hyper::body::Body for InUse {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A stream that counts the bytes through it.
struct Counted<S> {
    inner: S,
    moved: Arc<AtomicU64>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.moved.fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.moved.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The answer while the app is not running: a page that reloads itself for
/// a browser, JSON for an API client.
fn not_running(info: &AppInfo, def: &AppDef, html: bool) -> Response {
    let (status, code, message) = match info.state {
        State_::Failed => (
            StatusCode::BAD_GATEWAY,
            "app_failed",
            format!(
                "{} failed: {}. Start it again with POST /api/v1/me/apps/{}/start.",
                def.title,
                info.message.as_deref().unwrap_or("no reason given"),
                def.name
            ),
        ),
        State_::Stopped => (
            StatusCode::SERVICE_UNAVAILABLE,
            "app_stopped",
            format!("{} was stopped while starting; try again", def.title),
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "app_starting",
            format!("{} is starting", def.title),
        ),
    };
    let mut response = if html {
        let escape = |text: &str| {
            text.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        let refresh = if status == StatusCode::SERVICE_UNAVAILABLE {
            "<meta http-equiv=\"refresh\" content=\"1\">"
        } else {
            ""
        };
        let tail = if info.output_tail.is_empty() || status != StatusCode::BAD_GATEWAY {
            String::new()
        } else {
            format!("<pre>{}</pre>", escape(&info.output_tail.join("\n")))
        };
        let page = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
             <meta name=\"viewport\" content=\"width=device-width\">\
             <title>{title}</title></head><body><main><h1>{title}</h1><p>{message}</p>{tail}\
             </main></body></html>",
            title = escape(&def.title),
            message = escape(&message),
        );
        let mut response = (status, page).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        response
    } else {
        let body = serde_json::json!({
            "error": { "code": code, "message": message },
            "state": info.state.as_str(),
            "output_tail": if status == StatusCode::BAD_GATEWAY { info.output_tail.clone() } else { Vec::new() },
        });
        (status, axum::Json(body)).into_response()
    };
    let headers = response.headers_mut();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    response
}

/// Connects to the app a pool key names.
#[derive(Clone)]
struct Connector {
    endpoints: moka::sync::Cache<String, (AppEndpoint, Option<u32>)>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = AppConnection;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<AppConnection>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: Uri) -> Self::Future {
        let endpoint = target.host().and_then(|host| self.endpoints.get(host));
        Box::pin(async move {
            let Some((endpoint, owner)) = endpoint else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such app launch",
                ));
            };
            // Whoever listens must be the app's uid: the socket's path is in
            // a directory the user controls, and a port is anyone's once
            // the app is gone.
            let foreign = |listener: Option<u32>| {
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("the app's endpoint is held by uid {listener:?}, not {owner:?}"),
                )
            };
            let connect = async {
                match endpoint {
                    AppEndpoint::Unix(path) => {
                        use std::os::unix::ffi::OsStrExt;
                        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&path));
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        let peer = rustix::net::sockopt::socket_peercred(&stream)?;
                        if owner.is_some_and(|owner| owner != peer.uid.as_raw()) {
                            return Err(foreign(Some(peer.uid.as_raw())));
                        }
                        Ok(AppConnection::Unix(TokioIo::new(stream)))
                    }
                    AppEndpoint::Tcp(port) => {
                        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                        if let Some(owner) = owner {
                            let listener = warren_worker::apps::listener_owner(port);
                            if listener != Some(owner) {
                                return Err(foreign(listener));
                            }
                        }
                        stream.set_nodelay(true)?;
                        Ok(AppConnection::Tcp(TokioIo::new(stream)))
                    }
                }
            };
            tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })?
        })
    }
}

/// A connection to an app.
enum AppConnection {
    Unix(TokioIo<tokio::net::UnixStream>),
    Tcp(TokioIo<tokio::net::TcpStream>),
}

impl Connection for AppConnection {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for AppConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AppConnection::Unix(io) => Pin::new(io).poll_read(cx, buf),
            AppConnection::Tcp(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for AppConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            AppConnection::Unix(io) => Pin::new(io).poll_write(cx, buf),
            AppConnection::Tcp(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AppConnection::Unix(io) => Pin::new(io).poll_flush(cx),
            AppConnection::Tcp(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AppConnection::Unix(io) => Pin::new(io).poll_shutdown(cx),
            AppConnection::Tcp(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_cannot_set_the_session_cookie_however_it_spells_it() {
        let mut headers = HeaderMap::new();
        for cookie in [
            "warren_session=evil; Path=/",
            "warren_session =evil; Path=/api",
            "\twarren_session\t=evil3",
            "WARREN_SESSION=x",
            "theirs=kept; Path=/",
            "_xsrf=abc",
        ] {
            headers.append(header::SET_COOKIE, HeaderValue::from_str(cookie).unwrap());
        }
        headers.append(
            header::SET_COOKIE,
            HeaderValue::from_bytes(b"warren_session=\xff").unwrap(),
        );
        drop_session_cookie(&mut headers);
        let left: Vec<&str> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, ["theirs=kept; Path=/", "_xsrf=abc"]);
    }
}
