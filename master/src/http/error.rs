//! The one place an error becomes an HTTP response:
//! `{"error": {"code": "...", "message": "..."}}` with the right status.

use crate::pool::PoolError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use warren_protocol::OpError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no such route")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Pool(PoolError::WorkerUnavailable { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "worker_unavailable")
            }
            ApiError::Pool(PoolError::ShuttingDown) => {
                (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
            }
            ApiError::Pool(PoolError::Start(_)) => (StatusCode::SERVICE_UNAVAILABLE, "not_started"),
            ApiError::Pool(PoolError::Op(err)) => match err {
                OpError::Invalid(_) | OpError::StreamViolation(_) => {
                    (StatusCode::BAD_REQUEST, "invalid_request")
                }
                OpError::Unsupported(_) => (StatusCode::NOT_IMPLEMENTED, "unsupported"),
                OpError::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "cancelled"),
                OpError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({ "error": { "code": code, "message": self.to_string() } });
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
