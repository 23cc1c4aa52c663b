//! `/admin/pool…`: the worker pool as an operator sees it, and a graceful
//! restart of one slot (`warren pool restart` calls it for each slot in
//! turn). Administrators only.

use crate::http::error::ErrorBody;
use crate::http::extract::{Admin, ApiPath, ApiQuery, ClientInfo};
use crate::http::{ApiError, AppState};
use crate::pool::{RestartError, SlotReport};
use crate::store::AuditEntry;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(pool))
        .routes(routes!(restart_slot))
}

/// The grace a restart gives requests and streams in flight by default.
const DEFAULT_GRACE_SECONDS: u64 = 30;

/// One slot of the pool.
#[derive(Debug, Serialize, ToSchema)]
pub struct SlotView {
    slot: u32,
    /// `starting`, `up`, `restarting`, `degraded` or `stopped`.
    state: &'static str,
    /// An operator's restart is draining the slot: new requests wait for
    /// the next worker.
    draining: bool,
    /// The worker's process id (none while it is down).
    pid: Option<u32>,
    /// Seconds the current worker has served.
    uptime_seconds: Option<u64>,
    /// Workers this slot has started after its first (failures and
    /// operators' restarts).
    restarts: u64,
    /// Users the worker served recently (its last heartbeat).
    users_seen: u32,
    /// Requests sent to the worker and not yet answered.
    in_flight: usize,
    /// Byte streams open to the worker (transfers, terminals, followed
    /// output).
    open_streams: usize,
    /// Users' tasks and terminals the worker runs.
    tasks_running: u32,
    terminals_open: u32,
    /// The worker process's resident memory, bytes.
    rss_bytes: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolView {
    slots: Vec<SlotView>,
}

fn view(report: SlotReport) -> SlotView {
    SlotView {
        slot: report.slot,
        state: report.state.as_str(),
        draining: report.draining,
        pid: report.pid,
        uptime_seconds: report.uptime_ms.map(|ms| ms / 1000),
        restarts: report.restarts,
        users_seen: report.users_seen,
        in_flight: report.inflight_requests,
        open_streams: report.master_streams,
        tasks_running: report.tasks_running,
        terminals_open: report.terminals_open,
        rss_bytes: report.pid.and_then(rss_bytes),
    }
}

/// Resident memory of `pid` from /proc (none if it is gone).
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The worker pool: each slot's state, worker and load.
#[utoipa::path(
    get, path = "/admin/pool", tag = "admin",
    responses(
        (status = 200, body = PoolView),
        (status = 403, body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn pool(State(state): State<AppState>, Admin(_admin): Admin) -> Json<PoolView> {
    Json(PoolView {
        slots: state.pool.report().into_iter().map(view).collect(),
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RestartQuery {
    /// Seconds requests and streams in flight get to finish before the
    /// worker is replaced (1-3600, default 30). Users' tasks and terminals
    /// on the slot end with the worker.
    #[param(minimum = 1, maximum = 3600)]
    grace_seconds: Option<i64>,
}

/// Restart one slot's worker gracefully: new requests for its users wait
/// (they are not refused), requests and streams in flight get the grace
/// to finish, then the worker is replaced. Answers once the new worker
/// serves.
#[utoipa::path(
    post, path = "/admin/pool/{slot}/restart", tag = "admin",
    params(("slot" = u32, Path), RestartQuery),
    responses(
        (status = 200, body = SlotView, description = "The slot with its new worker"),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The slot is not up, or already restarting"),
        (status = 503, body = ErrorBody, description = "The new worker did not come up in time"),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn restart_slot(
    State(state): State<AppState>,
    Admin(admin): Admin,
    info: ClientInfo,
    ApiPath(slot): ApiPath<u32>,
    ApiQuery(query): ApiQuery<RestartQuery>,
) -> Result<Json<SlotView>, ApiError> {
    let grace = match query.grace_seconds {
        None => DEFAULT_GRACE_SECONDS,
        Some(seconds @ 1..=3600) => seconds as u64,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "grace_seconds must be 1 to 3600, not {other}"
            )))
        }
    };
    // A task of its own: a client that goes away (a timeout, Ctrl-C of
    // `warren pool restart`) must not cut a drain off half-way; the audit
    // record is written whatever the client does.
    let task = {
        let state = state.clone();
        let admin = admin.clone();
        let address = info.client.address.to_string();
        tokio::spawn(async move {
            let outcome = state
                .pool
                .restart_slot(slot, Duration::from_secs(grace))
                .await;
            let detail = match &outcome {
                Ok(()) => format!("slot {slot}, grace {grace}s"),
                Err(err) => format!("slot {slot}: {err}"),
            };
            if !matches!(outcome, Err(RestartError::NoSuchSlot(_))) {
                state
                    .auth
                    .audit_trusted(AuditEntry {
                        event: "worker_restarted",
                        actor_id: Some(admin.user_id.to_string()),
                        actor_name: Some(admin.username.clone()),
                        subject: None,
                        address: Some(address),
                        detail: Some(detail),
                    })
                    .await;
            }
            outcome
        })
    };
    let outcome = task
        .await
        .map_err(|err| ApiError::Internal(format!("the restart failed: {err}")))?;
    match outcome {
        Ok(()) => {}
        Err(RestartError::NoSuchSlot(_)) => return Err(ApiError::Missing("slot")),
        Err(err @ (RestartError::NotUp(_) | RestartError::AlreadyDraining(_))) => {
            return Err(ApiError::Conflict(err.to_string()))
        }
        Err(err @ (RestartError::DidNotComeBack(_) | RestartError::ShuttingDown)) => {
            return Err(ApiError::Busy(err.to_string()))
        }
    }
    let report = state
        .pool
        .report()
        .into_iter()
        .find(|report| report.slot == slot)
        .ok_or(ApiError::Missing("slot"))?;
    Ok(Json(view(report)))
}
