//! Several hosts on one PostgreSQL database (`--host-name`): each host runs
//! its own master, workers and data directory; a user's files live on one
//! of them, the user's **home host** (`users.home_host`, chosen when the
//! user is created, changed only by `warren user move`).
//!
//! - [`Cluster::start`] registers this host in `hosts` and renews its
//!   heartbeat every [`HEARTBEAT_EVERY`]; the same loop refreshes the view
//!   of the other hosts that forwarding reads (no query per request).
//! - [`route`], the outermost middleware: a request authenticated as a
//!   user homed elsewhere is forwarded to the home host ([`forward`]) with
//!   its body, answer, server-sent events and WebSocket streaming through;
//!   every authenticated answer sets the `warren_route` cookie naming the
//!   home host, so nginx sends the next request straight there.
//! - Forwarded requests carry `X-Warren-Forwarded`, signed with the
//!   cluster's shared secret ([`Signer`]): the home host believes the
//!   client address it names (as the first host saw it) and never forwards
//!   such a request again. Unsigned or badly signed, it is refused.

pub mod moving;

use crate::apps::proxy::strip_hop_by_hop;
use crate::auth::Principal;
use crate::http::extract::cookie;
use crate::http::{ApiError, AppState};
use crate::store::{HostRow, HostState, Store};
use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::Sha256;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often a host renews its heartbeat and re-reads the others.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// The header of a request forwarded between hosts.
pub const FORWARDED_HEADER: &str = "x-warren-forwarded";

/// The cookie nginx routes by (`map $cookie_warren_route …`).
pub const ROUTE_COOKIE: &str = "warren_route";

/// How far a forwarded request's timestamp may be from the receiver's
/// clock: bounds a replay, allows clocks a little apart.
const SIGNATURE_SKEW_MS: i64 = 30_000;

/// How long connecting to another host may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The most requests one user may have forwarded through this host at
/// once (streams included): one user cannot take every connection this host
/// may open to another.
pub const MAX_FORWARDED_PER_USER: usize = 64;

/// The shortest cluster secret accepted.
pub const MIN_SECRET_LEN: usize = 32;

/// What `--host-name`, `--host-url` and `--cluster-secret-file` say.
#[derive(Clone)]
pub struct ClusterConfig {
    pub name: String,
    pub url: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ClusterConfig {
    /// The cluster settings: all three or none (not a cluster).
    pub fn from_args(
        name: Option<&str>,
        url: Option<&str>,
        secret_file: Option<&Path>,
    ) -> anyhow::Result<Option<ClusterConfig>> {
        match (name, url, secret_file) {
            (None, None, None) => Ok(None),
            (Some(name), Some(url), Some(file)) => Ok(Some(ClusterConfig {
                name: name.to_string(),
                url: url.to_string(),
                secret: read_secret(file)?,
            })),
            _ => anyhow::bail!(
                "--host-name, --host-url and --cluster-secret-file ([cluster] host_name, \
                 host_url, secret_file) go together: set all three for several hosts, or none"
            ),
        }
    }
}

/// The cluster secret: the file's first line, at least [`MIN_SECRET_LEN`]
/// characters.
pub fn read_secret(file: &Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(file).map_err(|err| {
        anyhow::anyhow!(
            "cannot read --cluster-secret-file {}: {err}",
            file.display()
        )
    })?;
    let secret = text.lines().next().unwrap_or_default().trim();
    if secret.len() < MIN_SECRET_LEN {
        anyhow::bail!(
            "--cluster-secret-file {}: the secret must be at least {MIN_SECRET_LEN} characters \
             (e.g. `openssl rand -hex 32`), the same on every host",
            file.display()
        );
    }
    Ok(secret.as_bytes().to_vec())
}

/// Signs and checks `X-Warren-Forwarded`:
/// `v1 from=<host> peer=<ip:port> ts=<ms> sig=<hex>`, the HMAC-SHA256 of
/// version, sender, peer, timestamp, method and request target.
#[derive(Clone)]
pub struct Signer {
    secret: Vec<u8>,
}

/// A request another host forwarded, as its signature vouches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    pub from: String,
    /// The connection's peer at the first host (nginx, or the client).
    pub peer: SocketAddr,
}

impl Signer {
    pub fn new(secret: &[u8]) -> Signer {
        Signer {
            secret: secret.to_vec(),
        }
    }

    fn mac(&self, from: &str, peer: SocketAddr, ts: i64, method: &str, target: &str) -> String {
        // Any key length is accepted by HMAC.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        for part in [
            "v1",
            from,
            &peer.to_string(),
            &ts.to_string(),
            method,
            target,
        ] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        crate::auth::token::hex(&mac.finalize().into_bytes())
    }

    pub fn sign(
        &self,
        from: &str,
        peer: SocketAddr,
        ts: i64,
        method: &str,
        target: &str,
    ) -> String {
        let sig = self.mac(from, peer, ts, method, target);
        format!("v1 from={from} peer={peer} ts={ts} sig={sig}")
    }

    /// The forwarding a header vouches for, or why it is not believed.
    pub fn verify(
        &self,
        value: &str,
        now_ms: i64,
        method: &str,
        target: &str,
    ) -> Result<Forwarded, &'static str> {
        let mut parts = value.split(' ');
        if parts.next() != Some("v1") {
            return Err("unknown version");
        }
        let (mut from, mut peer, mut ts, mut sig) = (None, None, None, None);
        for part in parts {
            match part.split_once('=') {
                Some(("from", v)) => from = Some(v),
                Some(("peer", v)) => peer = v.parse::<SocketAddr>().ok(),
                Some(("ts", v)) => ts = v.parse::<i64>().ok(),
                Some(("sig", v)) => sig = Some(v),
                _ => return Err("malformed"),
            }
        }
        let (Some(from), Some(peer), Some(ts), Some(sig)) = (from, peer, ts, sig) else {
            return Err("malformed");
        };
        let expected = self.mac(from, peer, ts, method, target);
        // Compared as digests: the time taken says nothing of the secret.
        use sha2::Digest;
        if Sha256::digest(expected.as_bytes()) != Sha256::digest(sig.as_bytes()) {
            return Err("bad signature");
        }
        if (now_ms - ts).abs() > SIGNATURE_SKEW_MS {
            return Err("expired");
        }
        Ok(Forwarded {
            from: from.to_string(),
            peer,
        })
    }
}

/// This host in its cluster.
pub struct Cluster {
    pub name: Arc<str>,
    pub url: String,
    pub signer: Signer,
    store: Store,
    /// Every host as last read (every [`HEARTBEAT_EVERY`]).
    hosts: ArcSwap<Vec<HostRow>>,
    /// The other hosts' addresses, for the listener's per-address cap.
    peers: Arc<ArcSwap<Vec<std::net::IpAddr>>>,
    client: Client<HttpConnector, Body>,
    /// Requests each user has being forwarded now (see
    /// [`MAX_FORWARDED_PER_USER`]).
    forwarding: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, usize>>,
}

impl Cluster {
    /// Registers this host, gives it the users without a home host when it
    /// is the cluster's first, and renews its heartbeat until `stop` (then
    /// marks it stopped).
    pub async fn start(
        config: ClusterConfig,
        store: Store,
        peers: Arc<ArcSwap<Vec<std::net::IpAddr>>>,
        stop: CancellationToken,
    ) -> anyhow::Result<Arc<Cluster>> {
        if store.backend() != crate::store::Backend::Postgres {
            anyhow::bail!(
                "several hosts (--host-name) share one PostgreSQL database: set --database-url \
                 postgres://… (SQLite lives in one host's data directory)"
            );
        }
        let others_before = store
            .hosts()
            .await?
            .into_iter()
            .any(|host| host.name != config.name);
        store
            .register_host(&config.name, &config.url)
            .await
            .map_err(|err| anyhow::anyhow!("cannot register host {}: {err}", config.name))?;
        // A move this host was driving when it stopped died with it: the
        // user's files are still whole on their home host (the source
        // removes its copy only after the switch).
        match store.abandon_moves_to(&config.name).await {
            Ok(0) => {}
            Ok(n) => warn!(
                users = n,
                "moves to this host were cut short by its restart: abandoned"
            ),
            Err(err) => warn!(error = %err, "cannot abandon the moves cut short by a restart"),
        }
        if !others_before {
            let adopted = store.adopt_unhomed_users(&config.name).await?;
            if adopted > 0 {
                info!(
                    host = %config.name,
                    users = adopted,
                    "the first host of the cluster holds the users created before it"
                );
            }
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .set_host(false)
            .build(connector);
        let cluster = Arc::new(Cluster {
            name: Arc::from(config.name.as_str()),
            url: config.url,
            signer: Signer::new(&config.secret),
            hosts: ArcSwap::from_pointee(Vec::new()),
            peers,
            store,
            client,
            forwarding: Default::default(),
        });
        cluster.set_hosts(Arc::new(cluster.store.hosts().await?));
        tokio::spawn(cluster.clone().beat(stop));
        Ok(cluster)
    }

    async fn beat(self: Arc<Cluster>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(HEARTBEAT_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            match self.store.heartbeat(&self.name).await {
                Ok(true) => {}
                Ok(false) => {
                    warn!(host = %self.name, "this host's row was removed: registering again");
                    if let Err(err) = self.store.register_host(&self.name, &self.url).await {
                        warn!(host = %self.name, error = %err, "cannot register again");
                    }
                }
                Err(err) => {
                    if let Some(left_out) = crate::store::OUTAGE_LOG.admit("heartbeat") {
                        warn!(error = %err, left_out, "cannot renew this host's heartbeat");
                    }
                    continue;
                }
            }
            // Without the database the last view stands: a host that was
            // up is still tried (and answers 503 itself if it must).
            if let Ok(hosts) = self.store.hosts().await {
                self.set_hosts(Arc::new(hosts));
            }
        }
        if let Err(err) = self.store.host_stopped(&self.name).await {
            warn!(host = %self.name, error = %err, "cannot mark this host stopped");
        }
    }

    /// A new view of the hosts, and of the other hosts' addresses.
    fn set_hosts(&self, hosts: Arc<Vec<HostRow>>) {
        let peers = hosts
            .iter()
            .filter(|host| host.name != *self.name)
            .filter_map(|host| {
                let authority = host.url.strip_prefix("http://")?;
                let authority: axum::http::uri::Authority = authority.parse().ok()?;
                let ip = authority.host().trim_matches(['[', ']']);
                ip.parse::<std::net::IpAddr>().ok()
            })
            .map(|ip| ip.to_canonical())
            .collect();
        self.peers.store(Arc::new(peers));
        self.hosts.store(hosts);
    }

    /// Every host as last read.
    pub fn hosts(&self) -> Arc<Vec<HostRow>> {
        self.hosts.load_full()
    }

    /// Reads the hosts now (an admin's view, a move).
    pub async fn refresh(&self) -> crate::store::Result<Arc<Vec<HostRow>>> {
        let hosts = Arc::new(self.store.hosts().await?);
        self.set_hosts(hosts.clone());
        Ok(hosts)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A request of this cluster's own, signed, to `host` (a move's calls).
    pub fn internal_request(
        &self,
        host: &HostRow,
        method: axum::http::Method,
        target: &str,
        body: Body,
    ) -> Result<axum::http::Request<Body>, ApiError> {
        let uri: Uri = format!("{}{target}", host.url)
            .parse()
            .map_err(|err| ApiError::Internal(format!("bad URL of host {}: {err}", host.name)))?;
        let peer = SocketAddr::from(([127, 0, 0, 1], 0));
        let signed = self.signer.sign(
            &self.name,
            peer,
            crate::store::now_ms(),
            method.as_str(),
            target,
        );
        let mut request = axum::http::Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        if let Some(authority) = uri.authority() {
            if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                headers.insert(header::HOST, value);
            }
        }
        if let Ok(value) = HeaderValue::from_str(&signed) {
            headers.insert(FORWARDED_HEADER, value);
        }
        Ok(request)
    }

    /// Sends a request made by [`Cluster::internal_request`].
    pub async fn send(
        &self,
        request: axum::http::Request<Body>,
    ) -> Result<axum::http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>
    {
        self.client.request(request).await
    }
}

/// Paths always served by the host that receives them: logins and logouts
/// (the session is in the shared database), administration (this host's
/// pool, the shared accounts), operations, the API description, the web
/// UI's static pages, and the cluster's own internal routes.
fn stays_here(path: &str) -> bool {
    path.starts_with("/api/v1/auth/")
        || path.starts_with("/api/v1/admin/")
        || path.starts_with("/internal/")
        || matches!(
            path,
            "/healthz" | "/readyz" | "/metrics" | "/api/v1/openapi.json"
        )
        || !(path.starts_with("/api/") || path.starts_with("/user/"))
}

/// The outermost middleware (see the module's documentation). Outside
/// cluster mode it only refuses a forwarding header (nobody may sign one).
pub async fn route(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(cluster) = state.cluster.clone() else {
        if request.headers().contains_key(FORWARDED_HEADER) {
            return forged(&request, "this server is not part of a cluster");
        }
        return next.run(request).await;
    };
    let forwarded = match request.headers().get(FORWARDED_HEADER) {
        None => None,
        Some(value) => {
            let target = request
                .uri()
                .path_and_query()
                .map_or("/", |target| target.as_str());
            let checked = value.to_str().map_err(|_| "not text").and_then(|value| {
                cluster.signer.verify(
                    value,
                    crate::store::now_ms(),
                    request.method().as_str(),
                    target,
                )
            });
            match checked {
                Ok(forwarded) => Some(forwarded),
                Err(why) => return forged(&request, why),
            }
        }
    };
    if let Some(forwarded) = &forwarded {
        // The client as the first host saw it: the trusted-proxy rules
        // apply to its peer and headers exactly as they did there.
        request.extensions_mut().insert(ConnectInfo(forwarded.peer));
        // What the cluster's internal routes require (see `internal_caller`).
        request.extensions_mut().insert(forwarded.clone());
        request.headers_mut().remove(FORWARDED_HEADER);
    }
    let path = request.uri().path();
    if stays_here(path) {
        return next.run(request).await;
    }
    // Whichever way the caller came in (a session, a token, a JWT, a
    // trusted proxy's identity header), the same answer as the handler's.
    let (mut parts, body) = request.into_parts();
    let principal = crate::http::extract::caller(&parts, &state)
        .await
        .ok()
        .map(|(principal, _)| principal);
    if forwarded.is_none() {
        crate::http::identity::strip_unbelieved(&state, &mut parts);
    }
    let request = Request::from_parts(parts, body);
    // Not authenticated (or the database is out): the handler answers.
    let Some(principal) = principal else {
        return next.run(request).await;
    };
    if let Some(to) = &principal.moving_to {
        return refusal(ApiError::UserMoving(format!(
            "{}'s files are being moved to host {to}; try again in a few seconds",
            principal.username
        )));
    }
    let home = principal.home_host.clone();
    let route_cookie = cookie(request.headers(), ROUTE_COOKIE).map(str::to_string);
    let tls = state
        .web
        .client_of(request.headers(), request.extensions())
        .1;
    let mut response = match &home {
        Some(home) if **home != *cluster.name => {
            if let Some(forwarded) = &forwarded {
                // The first host thought this one was home: the two views
                // disagree for a moment (a move just ended). Never bounce.
                return refusal(ApiError::HostUnavailable(format!(
                    "{}'s files are on host {home}, not on {} (forwarded by {}); try again",
                    principal.username, cluster.name, forwarded.from
                )));
            }
            let Some(slot) = ForwardSlot::take(&cluster, principal.user_id) else {
                return refusal(ApiError::TooManyRequests(Duration::from_secs(1)));
            };
            let response = forward(&state, &cluster, home, principal.clone(), request, slot).await;
            state.metrics.forwarded(home, response.status().as_u16());
            response
        }
        _ => next.run(request).await,
    };
    // The front host names the home host to nginx; the home host answering
    // a forwarded request leaves that to the front.
    if forwarded.is_none() {
        let home = home.as_deref().unwrap_or(&cluster.name);
        if route_cookie.as_deref() != Some(home) {
            set_route_cookie(response.headers_mut(), home, tls);
        }
    }
    response
}

/// The host (or `warren user move`) that signed this request, for the
/// cluster's internal routes (`/internal/…`): anyone else gets a 404, as if
/// they did not exist.
pub fn internal_caller(parts: &axum::http::request::Parts) -> Result<&Forwarded, ApiError> {
    parts
        .extensions
        .get::<Forwarded>()
        .ok_or(ApiError::NotFound)
}

/// An answer made here rather than by a handler (outside `around`): JSON
/// errors get the same headers as every API answer.
fn refusal(err: ApiError) -> Response {
    let mut response = err.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One of a user's [`MAX_FORWARDED_PER_USER`] forwarded requests, held
/// until its answer (or its WebSocket) ends.
struct ForwardSlot {
    cluster: Arc<Cluster>,
    user: uuid::Uuid,
}

impl ForwardSlot {
    fn take(cluster: &Arc<Cluster>, user: uuid::Uuid) -> Option<ForwardSlot> {
        let mut counts = cluster
            .forwarding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(user).or_insert(0);
        if *count >= MAX_FORWARDED_PER_USER {
            return None;
        }
        *count += 1;
        Some(ForwardSlot {
            cluster: cluster.clone(),
            user,
        })
    }
}

impl Drop for ForwardSlot {
    fn drop(&mut self) {
        let mut counts = self
            .cluster
            .forwarding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// Resolves once `home` is no longer up in this host's view (checked every
/// heartbeat): a forwarded request to a host that hangs is not waited for
/// past its heartbeat timeout.
async fn host_goes_down(cluster: &Cluster, home: &str) {
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        let up = cluster
            .hosts()
            .iter()
            .any(|host| host.name == home && host.state() == HostState::Up);
        if !up {
            return;
        }
    }
}

/// A body that keeps its [`ForwardSlot`] until it is done.
struct Slotted {
    inner: hyper::body::Incoming,
    _slot: ForwardSlot,
}

impl hyper::body::Body for Slotted {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// `warren_route=<host>`: not a secret, only where to send the next
/// request.
pub fn set_route_cookie(headers: &mut HeaderMap, host: &str, tls: bool) {
    let secure = if tls { "; Secure" } else { "" };
    let cookie = format!("{ROUTE_COOKIE}={host}; Path=/; HttpOnly; SameSite=Lax{secure}");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        headers.append(header::SET_COOKIE, value);
    }
}

/// A forwarding header nobody here signed: refused, and logged as the
/// security event it is (at most one line every 10 s).
fn forged(request: &Request, why: &str) -> Response {
    static FORGED_LOG: crate::store::LogLimit =
        crate::store::LogLimit::new(Duration::from_secs(10));
    if let Some(left_out) = FORGED_LOG.admit("forged") {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.to_string());
        warn!(
            peer = peer.as_deref().unwrap_or("?"),
            path = request.uri().path(),
            why,
            left_out,
            "refused a request with a forwarding header this host cannot verify"
        );
    }
    refusal(ApiError::Forbidden(
        "the X-Warren-Forwarded header is for warren's hosts only",
    ))
}

/// Sends the request to `home` and its answer back, streaming both ways;
/// a WebSocket upgrade is spliced until either side closes or the
/// caller's credential ends.
async fn forward(
    state: &AppState,
    cluster: &Arc<Cluster>,
    home: &str,
    principal: Arc<Principal>,
    request: Request,
    slot: ForwardSlot,
) -> Response {
    let hosts = cluster.hosts();
    let Some(host) = hosts.iter().find(|host| host.name == home) else {
        return refusal(ApiError::HostUnavailable(format!(
            "{}'s files are on host {home}, which is not registered; ask the operator",
            principal.username
        )));
    };
    if host.state() != HostState::Up {
        let why = match host.state() {
            HostState::Stopped => "stopped".to_string(),
            _ => format!(
                "not answering (last heartbeat {} s ago)",
                host.heartbeat_age_ms / 1000
            ),
        };
        return refusal(ApiError::HostUnavailable(format!(
            "{}'s files are on host {home}, which is {why}; try again later",
            principal.username
        )));
    }
    let (mut parts, body) = request.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |target| target.as_str())
        .to_string();
    let uri: Uri = match format!("{}{target}", host.url).parse() {
        Ok(uri) => uri,
        Err(err) => return refusal(ApiError::Internal(format!("bad URL of host {home}: {err}"))),
    };
    let upgrade = parts.headers.contains_key(header::UPGRADE);
    let inbound_upgrade = upgrade
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |info| info.0);
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers, upgrade);
    // The home host's own `100 Continue` would not reach the client: the
    // body is sent as it comes (the client got ours already).
    headers.remove(header::EXPECT);
    let signed = cluster.signer.sign(
        &cluster.name,
        peer,
        crate::store::now_ms(),
        parts.method.as_str(),
        &target,
    );
    match HeaderValue::from_str(&signed) {
        Ok(value) => {
            headers.insert(FORWARDED_HEADER, value);
        }
        Err(err) => return refusal(ApiError::Internal(format!("cannot sign: {err}"))),
    }
    let mut outbound = axum::http::Request::new(body);
    *outbound.method_mut() = parts.method;
    *outbound.uri_mut() = uri;
    *outbound.headers_mut() = headers;
    let sent = tokio::select! {
        sent = cluster.client.request(outbound) => sent,
        () = host_goes_down(cluster, home) => {
            return refusal(ApiError::HostUnavailable(format!(
                "{}'s files are on host {home}, which stopped answering; try again later",
                principal.username
            )));
        }
    };
    let mut answer = match sent {
        Ok(answer) => answer,
        Err(err) => {
            info!(host = home, error = %err, "the home host did not answer a forwarded request");
            return refusal(ApiError::HostUnavailable(format!(
                "{}'s files are on host {home}, which is not answering; try again later",
                principal.username
            )));
        }
    };
    let switching = answer.status() == StatusCode::SWITCHING_PROTOCOLS;
    let outbound_upgrade = switching.then(|| hyper::upgrade::on(&mut answer));
    let (mut answer_parts, answer_body) = answer.into_parts();
    strip_hop_by_hop(&mut answer_parts.headers, switching);
    if let Some(outbound) = outbound_upgrade {
        let Some(inbound) = inbound_upgrade else {
            return refusal(ApiError::BadGateway(format!(
                "host {home} switched protocols unasked"
            )));
        };
        let mut watch = state.auth.watch(principal, false);
        tokio::spawn(async move {
            let (inbound, outbound) = match tokio::try_join!(inbound, outbound) {
                Ok(both) => both,
                Err(err) => {
                    tracing::debug!(error = %err, "a forwarded WebSocket upgrade failed");
                    return;
                }
            };
            let _slot = slot;
            let (mut client, mut home) = (TokioIo::new(inbound), TokioIo::new(outbound));
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut home) => {}
                () = watch.ended() => {}
            }
        });
        return Response::from_parts(answer_parts, Body::empty());
    }
    let body = Slotted {
        inner: answer_body,
        _slot: slot,
    };
    Response::from_parts(answer_parts, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_sender_peer_time_method_and_target() {
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef");
        let peer: SocketAddr = "10.0.0.7:4321".parse().unwrap();
        let now = 1_700_000_000_000;
        let header = signer.sign("a", peer, now, "GET", "/api/v1/files/x?y=1");
        let ok = signer.verify(&header, now + 1_000, "GET", "/api/v1/files/x?y=1");
        assert_eq!(
            ok,
            Ok(Forwarded {
                from: "a".into(),
                peer
            })
        );
        assert_eq!(
            signer.verify(&header, now, "PUT", "/api/v1/files/x?y=1"),
            Err("bad signature")
        );
        assert_eq!(
            signer.verify(&header, now, "GET", "/api/v1/files/z"),
            Err("bad signature")
        );
        assert_eq!(
            signer.verify(
                &header,
                now + SIGNATURE_SKEW_MS + 1,
                "GET",
                "/api/v1/files/x?y=1"
            ),
            Err("expired")
        );
        let other = Signer::new(b"another secret of at least 32 bytes!!");
        assert_eq!(
            other.verify(&header, now, "GET", "/api/v1/files/x?y=1"),
            Err("bad signature")
        );
        let spoofed = header.replace("peer=10.0.0.7:4321", "peer=1.2.3.4:1");
        assert_eq!(
            signer.verify(&spoofed, now, "GET", "/api/v1/files/x?y=1"),
            Err("bad signature")
        );
        for junk in [
            "",
            "v2 from=a",
            "v1 from=a",
            "v1 from=a peer=x ts=1 sig=00",
            "v1 x",
        ] {
            assert!(signer.verify(junk, now, "GET", "/").is_err(), "{junk:?}");
        }
    }

    #[test]
    fn what_stays_on_the_receiving_host() {
        for path in [
            "/api/v1/auth/login",
            "/api/v1/admin/pool",
            "/healthz",
            "/readyz",
            "/metrics",
            "/api/v1/openapi.json",
            "/",
            "/ui/app.js",
            "/internal/v1/moves/x",
        ] {
            assert!(stays_here(path), "{path}");
        }
        for path in [
            "/api/v1/files/a.txt",
            "/api/v1/me",
            "/api/v1/tasks",
            "/api/v1/terminals/1/socket",
            "/user/alice/jupyter/",
        ] {
            assert!(!stays_here(path), "{path}");
        }
    }
}
