//! The HTTP surface: `/api/v1` (see [`api`]), health, readiness, metrics,
//! and in test builds only the `/debug` routes the end-to-end tests drive
//! the pool through. Every response carries the security headers; every
//! request is counted by route template and status.

mod api;
#[cfg(debug_assertions)]
mod debug;
mod error;
pub mod extract;

pub use api::files::Transfers;
pub use api::{check_username, rfc3339};
pub use error::ApiError;
pub use extract::WebConfig;

use crate::auth::Auth;
use crate::metrics::{self, Metrics};
use crate::pool::Pool;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Instant;

/// The largest JSON request body accepted (413 beyond).
pub const MAX_JSON_BODY: usize = 64 * 1024;

/// What every handler may use; one `Arc`, so extracting it is cheap.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Auth>,
    pub web: WebConfig,
    /// `<data-dir>/shared/templates`: read-only templates users may copy.
    pub templates_dir: std::path::PathBuf,
    /// How long an upload may send nothing before it is abandoned.
    pub upload_idle_timeout: std::time::Duration,
    /// Streamed transfers in progress, per user.
    pub transfers: Transfers,
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
        .merge(api::files::routes());
    #[cfg(debug_assertions)]
    let router = router.nest("/debug", debug::routes());
    router
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), around))
        .with_state(state)
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
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    let tls = state.web.client_of(request.headers(), peer).1;
    let api = request.uri().path().starts_with("/api/");
    let file_op = api::files::operation_of(route, &request);
    let request = match file_op {
        Some(_) => api::files::count_inbound(&state, request),
        None => request,
    };
    let mut response = next.run(request).await;
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
    if api && !headers.contains_key(header::CACHE_CONTROL) {
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

/// 200 when every slot is up and the database answers, else 503; the body
/// says which.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let slots = state.pool.report();
    let workers_ready = slots
        .iter()
        .all(|slot| slot.state == crate::pool::supervisor::SlotState::Up);
    let database = state.auth.store().ping().await;
    let ready = workers_ready && database.is_ok();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "database": match &database {
            Ok(()) => "ok".to_string(),
            Err(err) => err.to_string(),
        },
        "workers": slots,
    });
    (status, Json(body))
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state.metrics.render(&state.pool.report());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
}
