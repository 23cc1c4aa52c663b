//! The HTTP surface: health, readiness and metrics (and, in test builds only,
//! the `/debug` routes the end-to-end tests drive the pool through).

#[cfg(debug_assertions)]
mod debug;
mod error;

pub use error::ApiError;

use crate::metrics::{self, Metrics};
use crate::pool::Pool;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: AppState) -> Router {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics));
    #[cfg(debug_assertions)]
    let router = router.nest("/debug", debug::routes());
    router
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// 200 when every slot is up, else 503; lists each slot's state either way.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let slots = state.pool.report();
    let ready = slots
        .iter()
        .all(|slot| slot.state == crate::pool::supervisor::SlotState::Up);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "workers": slots,
    });
    (status, Json(body))
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state.metrics.render(&state.pool.report());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
}
