//! The one place an error becomes an HTTP response:
//! `{"error": {"code": "...", "message": "..."}}` with the right status.

use crate::auth::password::PasswordError;
use crate::auth::throttle::retry_after_secs;
use crate::auth::AuthError;
use crate::pool::PoolError;
use crate::store::{Outage, StoreError, OUTAGE_LOG};
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::time::Duration;
use tracing::{error, warn};
use warren_protocol::OpError;

/// `Retry-After` of a start refused at the user's task limit.
pub const TASK_LIMIT_RETRY_AFTER_SECS: u64 = 2;

/// `Retry-After` of a request refused because the accounts database is out
/// of reach: an outage rarely ends within a second, and every retry costs
/// up to the connection timeout.
pub const DATABASE_RETRY_AFTER_SECS: u64 = 3;

/// `Retry-After` of a request whose user's home host is out of reach, or
/// whose user is being moved: a restart or a move takes seconds.
pub const HOST_RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no such route")]
    NotFound,
    #[error("this route does not take that method")]
    MethodNotAllowed,
    #[error("the requested range is not within the file")]
    RangeNotSatisfiable,
    /// A resource that does not exist, or that the caller may not know of.
    #[error("no such {0}")]
    Missing(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("authentication required")]
    Unauthenticated,
    #[error("wrong username or password")]
    InvalidCredentials,
    /// A JWT or a login from outside that did not pass (the reason is safe
    /// to show: it names no key).
    #[error("{0}")]
    InvalidToken(String),
    #[error("{0}")]
    Forbidden(&'static str),
    /// An identity from outside that warren does not let in.
    #[error("{0}")]
    IdentityRefused(String),
    /// The OpenID provider or a key URL could not be reached.
    #[error("{0}")]
    ProviderUnavailable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("too many requests; retry in {} s", retry_after_secs(*.0))]
    TooManyRequests(Duration),
    #[error("{0}")]
    Busy(String),
    /// The accounts database is out of reach: nothing was read or changed.
    #[error("{0}")]
    DatabaseUnavailable(String),
    #[error("{0}")]
    RequestTimeout(String),
    /// The server's disk is full: nothing was stored.
    #[error("{0}")]
    DiskFull(String),
    #[error("the request URI is longer than {0} bytes")]
    UriTooLong(usize),
    #[error("{0}")]
    HeadersTooLarge(String),
    /// A user's app did not answer the proxy.
    #[error("{0}")]
    BadGateway(String),
    /// The user's home host (cluster mode) is down or out of reach.
    #[error("{0}")]
    HostUnavailable(String),
    /// The user's files are being moved to another host.
    #[error("{0}")]
    UserMoving(String),
    /// A move's copy arrived but is not what the source sent (refused
    /// entries, a manifest mismatch): nothing changed.
    #[error("{0}")]
    MoveFailed(String),
    /// Details are logged, never sent.
    #[error("internal error")]
    Internal(String),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// The code of an error response, left in its extensions for middleware
/// (such as the file metrics) that labels what failed.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// The body of every error response.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code such as `unauthenticated`.
    pub code: &'static str,
    /// A human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// The code and message this error is answered with.
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.status_and_code().1,
            message: self.to_string(),
        }
    }

    /// The machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound | ApiError::Missing(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::RangeNotSatisfiable => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ApiError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            ApiError::InvalidToken(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::IdentityRefused(_) => (StatusCode::FORBIDDEN, "identity_refused"),
            ApiError::ProviderUnavailable(_) => {
                (StatusCode::BAD_GATEWAY, "identity_provider_unavailable")
            }
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::DatabaseUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::DiskFull(_) => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            ApiError::UriTooLong(_) => (StatusCode::URI_TOO_LONG, "uri_too_long"),
            ApiError::HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
            ),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "app_unreachable"),
            ApiError::HostUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "host_unavailable"),
            ApiError::UserMoving(_) => (StatusCode::SERVICE_UNAVAILABLE, "user_moving"),
            ApiError::MoveFailed(_) => (StatusCode::BAD_GATEWAY, "move_failed"),
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
                OpError::BadPath(_) => (StatusCode::BAD_REQUEST, "bad_path"),
                OpError::WorkerGone(_) => (StatusCode::SERVICE_UNAVAILABLE, "worker_unavailable"),
                OpError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                OpError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
                OpError::PreconditionFailed(_) => {
                    (StatusCode::PRECONDITION_FAILED, "precondition_failed")
                }
                OpError::QuotaExceeded { .. } | OpError::EntryQuotaExceeded { .. } => {
                    (StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded")
                }
                OpError::NotARegularFile(_) => (StatusCode::CONFLICT, "not_a_regular_file"),
                OpError::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "cancelled"),
                OpError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
                OpError::DiskFull(_) => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
                OpError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
                OpError::TooManyTasks { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_tasks"),
                OpError::TooManyTerminals { .. } => {
                    (StatusCode::TOO_MANY_REQUESTS, "too_many_terminals")
                }
                OpError::TooManyApps { per_user: true, .. } => {
                    (StatusCode::TOO_MANY_REQUESTS, "too_many_apps")
                }
                OpError::TooManyApps {
                    per_user: false, ..
                } => (StatusCode::SERVICE_UNAVAILABLE, "too_many_apps"),
                OpError::SandboxUnavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "sandbox_unavailable")
                }
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(detail) = &self {
            error!(%detail, "internal error");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(code));
        let retry_after = match &self {
            ApiError::TooManyRequests(wait) => Some(retry_after_secs(*wait)),
            // A task's end frees room; when is unknown: look again soon.
            ApiError::Pool(PoolError::Op(
                OpError::TooManyTasks { .. } | OpError::TooManyApps { .. },
            )) => Some(TASK_LIMIT_RETRY_AFTER_SECS),
            ApiError::DatabaseUnavailable(_) => Some(DATABASE_RETRY_AFTER_SECS),
            ApiError::HostUnavailable(_) | ApiError::UserMoving(_) => Some(HOST_RETRY_AFTER_SECS),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Unauthenticated => ApiError::Unauthenticated,
            AuthError::InvalidCredentials => ApiError::InvalidCredentials,
            AuthError::Throttled { retry_after, .. } | AuthError::TooFast(retry_after) => {
                ApiError::TooManyRequests(retry_after)
            }
            AuthError::Password(err) => err.into(),
            AuthError::Store(err) => err.into(),
            AuthError::Random(err) => ApiError::Internal(err.to_string()),
            AuthError::Token(err) if err.is_refusal() => ApiError::InvalidToken(err.to_string()),
            AuthError::Token(err) => ApiError::ProviderUnavailable(err.to_string()),
            AuthError::IdentityRefused(why) => ApiError::IdentityRefused(why),
            AuthError::UsernameTaken(why) => ApiError::Conflict(why),
            AuthError::LoginState(why) => ApiError::BadRequest(why),
            AuthError::Provider(why) => ApiError::ProviderUnavailable(why),
        }
    }
}

impl From<PasswordError> for ApiError {
    fn from(err: PasswordError) -> Self {
        match err {
            PasswordError::TooShort | PasswordError::TooLong => {
                ApiError::Unprocessable(err.to_string())
            }
            PasswordError::Busy => ApiError::Busy(err.to_string()),
            PasswordError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            StoreError::LastAdmin => ApiError::Conflict(StoreError::LastAdmin.to_string()),
            // The credential in use was revoked while the request ran.
            StoreError::Stale => ApiError::Unauthenticated,
            StoreError::Limit(why) => ApiError::Conflict(why),
            StoreError::BadHost(why) => ApiError::Unprocessable(why),
            // Nothing was stored: the client must know the change did not
            // happen (a logout that failed leaves its session valid). While
            // the cause lasts every such request fails alike, so the log
            // gets one line per kind every few seconds (`OUTAGE_LOG`), with
            // the count of those left out.
            other => match other.outage() {
                Some(Outage::DiskFull) => {
                    if let Some(left_out) = OUTAGE_LOG.admit("request: disk full") {
                        warn!(error = %other, left_out, "database write refused: disk full");
                    }
                    ApiError::DiskFull(
                        "the server's disk is full; nothing was changed, try again later".into(),
                    )
                }
                Some(Outage::Unavailable) => {
                    if let Some(left_out) = OUTAGE_LOG.admit("request: database unavailable") {
                        warn!(error = %other, left_out, "database unavailable");
                    }
                    ApiError::DatabaseUnavailable(
                        "the accounts database is unavailable; nothing was changed, try again later"
                            .into(),
                    )
                }
                Some(Outage::Busy) => {
                    if let Some(left_out) = OUTAGE_LOG.admit("request: database busy") {
                        warn!(error = %other, left_out, "database busy");
                    }
                    ApiError::Busy(
                        "the accounts database is busy; nothing was changed, try again".into(),
                    )
                }
                None => ApiError::Internal(other.to_string()),
            },
        }
    }
}

/// axum's own rejections (bad JSON, wrong content type, body too large,
/// bad path or query) in our shape and with their status.
fn from_rejection(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(super::MAX_JSON_BODY),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(text),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable(text),
        _ => ApiError::BadRequest(text),
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        from_rejection(rejection.status(), rejection.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        from_rejection(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        from_rejection(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        // A malformed id names nothing that exists.
        match rejection {
            PathRejection::FailedToDeserializePathParams(_) => ApiError::Missing("resource"),
            other => ApiError::Internal(other.body_text()),
        }
    }
}
