//! The HTTP surface: `/api/v1` (see [`api`]), health, readiness, metrics,
//! and in test builds only the `/debug` routes the end-to-end tests drive
//! the pool through. Every response carries the security headers; every
//! request is counted by route template and status.

mod api;
#[cfg(debug_assertions)]
mod debug;
mod error;
pub mod extract;
pub mod identity;
pub mod listener;
pub mod peer;
pub mod sendfile;
pub mod ui;

pub use api::files::Transfers;
pub use api::tasks::TaskSettings;
pub use api::terminals::TerminalSettings;
pub use api::{check_username, json_integer, rfc3339};
pub use error::ApiError;
pub use extract::WebConfig;

use crate::auth::Auth;
use crate::metrics::{self, Metrics};
use crate::pool::Pool;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The largest JSON request body accepted (413 beyond).
pub const MAX_JSON_BODY: usize = 64 * 1024;

/// The longest request target (path and query) accepted (414 beyond):
/// room for the longest workspace path (4096 bytes) percent-encoded (three
/// times as long) and a query. Hyper's own limit is 64 KiB, answered by
/// hyper without a body.
pub const MAX_URI_LEN: usize = 16 * 1024;

/// The most request headers accepted (431 beyond). Hyper parses up to twice
/// as many, so that the answer just over this limit is warren's own.
pub const MAX_HEADERS: usize = 100;

/// The largest total size of request headers (names, values and their
/// separators) accepted (431 beyond). Hyper's own limit is its read buffer,
/// about 400 KiB, answered without a body.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Who may read `/metrics` and `/readyz`'s details on the main listener
/// (an administrator may always read `/readyz`'s details; the
/// `--metrics-listen` listener serves both to whoever reaches it).
#[derive(Clone)]
pub enum MetricsAccess {
    /// Neither `--metrics-listen` nor `--metrics-token-file`: clients on this
    /// host only (a loopback peer, with no `X-Forwarded-For` or `Forwarded`
    /// header, so a proxy on the same host does not open them to its users).
    Loopback,
    /// `--metrics-token-file`: `Authorization: Bearer` with this token.
    Token(String),
    /// Only `--metrics-listen`: not on the main listener.
    Elsewhere,
}

impl std::fmt::Debug for MetricsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.write_str(match self {
            MetricsAccess::Loopback => "Loopback",
            MetricsAccess::Token(_) => "Token(..)",
            MetricsAccess::Elsewhere => "Elsewhere",
        })
    }
}

/// Marks requests that came through the `--metrics-listen` listener.
#[derive(Debug, Clone, Copy)]
struct OperationsListener;

/// What every handler may use; one `Arc`, so extracting it is cheap.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub pool: Arc<Pool>,
    /// What confines users' processes (probed at start; shown in
    /// `/readyz`'s details and `warren_sandbox_level`).
    pub sandbox: Arc<warren_worker::sandbox::SandboxReport>,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Auth>,
    pub web: WebConfig,
    /// The ways in besides warren's passwords (OpenID Connect, JWT bearer
    /// tokens, identity headers), and whether passwords are one.
    pub identities: Arc<identity::Identities>,
    /// `<data-dir>/shared/templates`: read-only templates users may copy.
    pub templates_dir: std::path::PathBuf,
    /// How long an upload may send nothing before it is abandoned.
    pub upload_idle_timeout: std::time::Duration,
    /// How long a JSON (non-file) request body may take to arrive in full.
    pub body_timeout: std::time::Duration,
    /// Streamed transfers in progress, per user.
    pub transfers: Transfers,
    /// Who may read `/metrics` on the main listener.
    pub metrics_access: MetricsAccess,
    /// The live activity feed.
    pub activity: Arc<crate::activity::ActivityHub>,
    /// Settings of the tasks API.
    pub tasks: TaskSettings,
    /// Settings of the terminals API.
    pub terminals: TerminalSettings,
    /// Users' apps (`--apps`): `None` without definitions.
    pub apps: Option<Arc<crate::apps::proxy::Proxy>>,
    /// This host in its cluster (`--host-name`): `None` for a lone host.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub fn router(state: AppState) -> Router {
    let (api, openapi) = api::routes(state.auth.config().mode);
    let openapi = Arc::new(openapi);
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let openapi = openapi.clone();
                async move { Json(openapi.as_ref().clone()) }
            }),
        )
        .merge(api)
        .merge(api::files::routes())
        .merge(ui::routes())
        // A move's signed calls between hosts (404 to anyone else).
        .merge(crate::cluster::moving::routes());
    #[cfg(debug_assertions)]
    let router = router.nest("/debug", debug::routes());
    let proxy = crate::apps::proxy::routes(state.clone());
    let cluster = state.clone();
    router
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), around))
        .with_state(state)
        // After the layers: an app's pages keep their own headers, and
        // its bodies are as long and slow as they are.
        .merge(proxy)
        // Outermost: a request for a user homed on another host goes
        // there whole (see crate::cluster).
        .layer(middleware::from_fn_with_state(
            cluster,
            crate::cluster::route,
        ))
}

/// The router of the `--metrics-listen` listener: `/metrics`, `/healthz`
/// and `/readyz` with its details, for whoever can reach that address.
pub fn operations_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), around))
        .layer(axum::Extension(OperationsListener))
        .with_state(state)
}

/// Whether the request may read operational data (`/metrics`, `/readyz`'s
/// details) without being an administrator.
fn is_operator(state: &AppState, parts: &axum::http::request::Parts) -> bool {
    if parts.extensions.get::<OperationsListener>().is_some() {
        return true;
    }
    match &state.metrics_access {
        MetricsAccess::Elsewhere => false,
        MetricsAccess::Token(expected) => {
            use sha2::{Digest, Sha256};
            let given = parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::trim);
            // Compared as digests: the time taken says nothing of the token.
            given.is_some_and(|given| {
                Sha256::digest(given.as_bytes()) == Sha256::digest(expected.as_bytes())
            })
        }
        MetricsAccess::Loopback => {
            let peer = parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| std::net::SocketAddr::new(info.0.ip().to_canonical(), info.0.port()));
            let forwarded = parts.headers.contains_key("x-forwarded-for")
                || parts.headers.contains_key(header::FORWARDED);
            let Some(peer) = peer.filter(|peer| peer.ip().is_loopback()) else {
                return false;
            };
            // Users' tasks are on this host too: not the operator.
            let owner = parts
                .extensions
                .get::<peer::PeerOwner>()
                .map_or(peer::Owner::Unknown, |owner| owner.of(peer));
            let users = state.auth.store().uid_range();
            !forwarded
                && matches!(owner, peer::Owner::Uid(uid) if !(users.first..=users.last).contains(&uid))
        }
    }
}

/// A response body that may last long after its request (a followed task
/// output, an app's event stream): it fails (the client sees the transfer
/// cut, not a clean end) as soon as the caller's credential ends.
pub fn cut_when_revoked(
    auth: &Arc<crate::auth::Auth>,
    principal: Arc<crate::auth::Principal>,
    body: axum::body::Body,
) -> axum::body::Body {
    use futures_util::StreamExt;
    let mut watch = auth.watch(principal, false);
    let revoked: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
        Box::pin(async move { watch.ended().await });
    let data = body.into_data_stream();
    let cut = futures_util::stream::unfold(Some((data, revoked)), |parts| async move {
        let (mut data, mut revoked) = parts?;
        tokio::select! {
            item = data.next() => item.map(|item| (item, Some((data, revoked)))),
            () = &mut revoked => {
                let ended = std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the session ended",
                );
                Some((Err(axum::Error::new(ended)), None))
            }
        }
    });
    axum::body::Body::from_stream(cut)
}

/// Why a request is refused before it reaches a handler: a request target
/// or headers larger than warren accepts (hyper's own, larger limits answer
/// without warren's JSON body).
fn oversized(request: &Request) -> Option<ApiError> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if target > MAX_URI_LEN {
        return Some(ApiError::UriTooLong(MAX_URI_LEN));
    }
    let headers = request.headers();
    if headers.len() > MAX_HEADERS {
        return Some(ApiError::HeadersTooLarge(format!(
            "more than {MAX_HEADERS} request headers"
        )));
    }
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Some(ApiError::HeadersTooLarge(format!(
            "the request headers are larger than {MAX_HEADER_BYTES} bytes"
        )));
    }
    None
}

/// Why a JSON request body was cut short (see [`time_limited`]).
const BODY_IN_TIME: u8 = 0;
const BODY_STALLED: u8 = 1;
const BODY_TOO_SLOW: u8 = 2;

/// The body of a request that is not a file transfer (those have their own
/// idle rule), failing once its client sends nothing for
/// `--upload-idle-timeout` or once `--body-timeout` has passed since the
/// request started, whichever comes first: the idle rule alone restarts
/// with every byte, so a client dribbling one byte a second would hold its
/// connection for the whole 64 KiB. The flag returned (none for a request
/// without a body) tells the middleware which limit ended it, to answer
/// `408`.
fn time_limited(request: Request, state: &AppState) -> (Request, Option<Arc<AtomicU8>>) {
    use futures_util::StreamExt;
    if axum::body::HttpBody::is_end_stream(request.body()) {
        return (request, None);
    }
    let (idle, deadline) = (state.upload_idle_timeout, state.body_timeout);
    let cut = Arc::new(AtomicU8::new(BODY_IN_TIME));
    let flag = cut.clone();
    let deadline = tokio::time::Instant::now() + deadline;
    let request = request.map(|body| {
        let chunks = body.into_data_stream();
        let timed = futures_util::stream::unfold(Some(chunks), move |chunks| {
            let cut = cut.clone();
            async move {
                let mut chunks = chunks?;
                let idle_until = tokio::time::Instant::now() + idle;
                let (until, why) = if idle_until < deadline {
                    (idle_until, BODY_STALLED)
                } else {
                    (deadline, BODY_TOO_SLOW)
                };
                match tokio::time::timeout_at(until, chunks.next()).await {
                    Ok(Some(chunk)) => Some((chunk, Some(chunks))),
                    Ok(None) => None,
                    Err(_) => {
                        cut.store(why, Ordering::Relaxed);
                        let err = std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the request body did not arrive in time",
                        );
                        Some((Err(axum::Error::new(err)), None))
                    }
                }
            }
        });
        axum::body::Body::from_stream(timed)
    });
    (request, Some(flag))
}

const CSP: &str = "default-src 'self'; base-uri 'none'; object-src 'none'; \
                   frame-ancestors 'none'; form-action 'self'";

/// Around every request: counts and times it by route template (never the
/// raw path, which would let clients mint label values), and sets CSP,
/// nosniff, framing and referrer policy on the response; HSTS when the
/// request came over TLS; no caching of API answers.
async fn around(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let http = state.metrics.http();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| http.route(path.as_str()));
    let tls = state
        .web
        .client_of(request.headers(), request.extensions())
        .1;
    let api = request.uri().path().starts_with("/api/");
    let operational = matches!(request.uri().path(), "/readyz" | "/metrics" | "/healthz");
    let refusal = oversized(&request);
    let file_op = match refusal {
        Some(_) => None,
        None => api::files::operation_of(route, &request),
    };
    let mut response = match refusal {
        Some(refusal) => refusal.into_response(),
        None => {
            let (request, cut) = match file_op {
                // Uploads are long by nature: they have their own idle rule
                // (and a cap per user on how many run at once).
                Some("write" | "upload") => (api::files::count_inbound(&state, request), None),
                // Any other body, a file operation's ({"to": PATH}) too, is
                // bounded like a JSON body.
                Some(_) => time_limited(api::files::count_inbound(&state, request), &state),
                None => time_limited(request, &state),
            };
            let response = next.run(request).await;
            let why = match cut.map_or(BODY_IN_TIME, |cut| cut.load(Ordering::Relaxed)) {
                BODY_STALLED => Some(format!(
                    "the request body stalled: nothing received for {} s",
                    state.upload_idle_timeout.as_secs()
                )),
                BODY_TOO_SLOW => {
                    state.metrics.connections().timed_out("body");
                    Some(format!(
                        "the request body did not arrive within {} s",
                        state.body_timeout.as_secs()
                    ))
                }
                _ => None,
            };
            match why {
                // The rest of the body may still be on its way: the
                // connection closes after this answer.
                Some(why) => {
                    let mut response = ApiError::RequestTimeout(why).into_response();
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    response
                }
                None => response,
            }
        }
    };
    http.observe(route, response.status().as_u16(), started.elapsed());
    if let Some(op) = file_op {
        response = api::files::count_outbound(&state, op, response);
    }
    let headers = response.headers_mut();
    // Unless the handler chose a stricter one (files' bytes).
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    // API answers, and the operational ones (an admin's /readyz details,
    // /metrics), are never kept by a shared cache.
    if (api || operational) && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if tls {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    response
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// How long readiness waits for the database before calling it
/// unavailable: a probe must answer before its caller gives up on it, even
/// while every connection attempt hangs.
pub const READINESS_DATABASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What `/readyz` (and systemd's `READY=1`, see `crate::notify`) is
/// decided on.
pub struct Readiness {
    pub ready: bool,
    pub slots: Vec<crate::pool::SlotReport>,
    pub workers_ready: bool,
    /// `Err` says why the database cannot serve: `unavailable: …`,
    /// `disk_full: …` (see [`crate::store::StoreError::status_text`]).
    pub database: Result<(), String>,
}

impl Readiness {
    /// Short, secret-free names of what is not ready (`workers`,
    /// `database_unavailable`, `database_disk_full`, `database`): empty
    /// when ready.
    pub fn reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if !self.workers_ready {
            reasons.push("workers");
        }
        if let Err(why) = &self.database {
            reasons.push(if why.starts_with("unavailable") {
                "database_unavailable"
            } else if why.starts_with("disk_full") {
                "database_disk_full"
            } else {
                "database"
            });
        }
        reasons
    }
}

/// Every slot up, and the database answering and able to store (within
/// [`READINESS_DATABASE_TIMEOUT`]).
pub async fn readiness(state: &AppState, store: &crate::store::Store) -> Readiness {
    let slots = state.pool.report();
    let workers_ready = slots
        .iter()
        .all(|slot| slot.state == crate::pool::supervisor::SlotState::Up);
    let probe = async {
        store.ping().await.map_err(|err| err.status_text())?;
        store.check_writable().await
    };
    let database = match tokio::time::timeout(READINESS_DATABASE_TIMEOUT, probe).await {
        Ok(found) => found,
        Err(_) => Err(format!(
            "unavailable: no answer within {} s",
            READINESS_DATABASE_TIMEOUT.as_secs()
        )),
    };
    Readiness {
        ready: workers_ready && database.is_ok(),
        slots,
        workers_ready,
        database,
    }
}

/// 200 when every slot is up and the database answers, else 503 with the
/// short reasons (`workers`, `database_unavailable`...). The body says
/// only that, except to an operator (see [`is_operator`]) or an
/// administrator, who also see each slot and the database's status (its
/// error, e.g. `unavailable: …`).
async fn readyz(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    let details = is_operator(&state, &parts)
        || extract::Authed::from_request_parts(&mut parts, &state)
            .await
            .is_ok_and(|authed| authed.0.is_admin());
    let readiness = readiness(&state, state.auth.store()).await;
    let (status, summary) = if readiness.ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    let mut body = serde_json::json!({ "status": summary });
    if !readiness.ready {
        body["reasons"] = readiness.reasons().into();
    }
    if details {
        body["database"] = match &readiness.database {
            Ok(()) => "ok".to_string(),
            Err(err) => err.clone(),
        }
        .into();
        body["workers"] = serde_json::json!(readiness.slots);
        body["sandbox"] = sandbox_json(&state.sandbox);
    }
    (status, Json(body)).into_response()
}

/// The sandbox report as `/readyz` shows it: the mode, each feature's
/// level, and why users' processes would be refused (if they would).
fn sandbox_json(report: &warren_worker::sandbox::SandboxReport) -> serde_json::Value {
    let levels: serde_json::Map<String, serde_json::Value> = report
        .levels()
        .into_iter()
        .map(|(feature, level)| (feature.to_string(), level.into()))
        .collect();
    serde_json::json!({
        "mode": report.mode.as_str(),
        "network": report.network.as_str(),
        "levels": levels,
        "refused": report.decision.allowed.as_ref().err(),
        "warnings": report.decision.warnings,
    })
}

async fn render_metrics(State(state): State<AppState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    if !is_operator(&state, &parts) {
        return match state.metrics_access {
            MetricsAccess::Elsewhere => ApiError::NotFound,
            MetricsAccess::Token(_) => ApiError::Unauthenticated,
            MetricsAccess::Loopback => ApiError::Forbidden(
                "metrics are served to this host only: see --metrics-listen and --metrics-token-file",
            ),
        }
        .into_response();
    }
    let text = state.metrics.render(&state.pool.report());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}
