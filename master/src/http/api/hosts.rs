//! `/admin/hosts`: the hosts of a cluster (several masters on one
//! PostgreSQL database), as the database's heartbeats show them.
//! Administrators only.

use super::rfc3339;
use crate::http::error::ErrorBody;
use crate::http::extract::Admin;
use crate::http::{ApiError, AppState};
use crate::store::HostState;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(hosts))
}

/// One host.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostView {
    name: String,
    /// Where the other hosts reach it.
    url: String,
    /// `up`, `down` (no heartbeat for 10 s) or `stopped` (cleanly).
    state: HostState,
    /// Milliseconds since its last heartbeat (the database's clock).
    heartbeat_age_ms: i64,
    /// When it (re)started, RFC 3339.
    started_at: String,
    /// Users whose files it holds.
    users: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HostsView {
    /// The host that answered (`null` for a lone host).
    this: Option<String>,
    hosts: Vec<HostView>,
    /// Users without a home host (created before the cluster, by a host
    /// that is not part of it): served by whichever host they reach.
    users_without_host: i64,
}

/// The cluster's hosts: state, heartbeat, users held.
#[utoipa::path(
    get, path = "/admin/hosts", tag = "admin",
    responses(
        (status = 200, body = HostsView),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "The database is unavailable"),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn hosts(
    State(state): State<AppState>,
    Admin(_admin): Admin,
) -> Result<Json<HostsView>, ApiError> {
    let store = state.auth.store();
    let hosts = match &state.cluster {
        Some(cluster) => cluster.refresh().await?.as_ref().clone(),
        None => store.hosts().await?,
    };
    let counts = store.users_per_host().await?;
    let users_of = |name: Option<&str>| {
        counts
            .iter()
            .find(|(host, _)| host.as_deref() == name)
            .map_or(0, |(_, n)| *n)
    };
    Ok(Json(HostsView {
        this: state
            .cluster
            .as_ref()
            .map(|cluster| cluster.name.to_string()),
        users_without_host: users_of(None),
        hosts: hosts
            .into_iter()
            .map(|host| HostView {
                state: host.state(),
                users: users_of(Some(&host.name)),
                started_at: rfc3339(host.started_at),
                heartbeat_age_ms: host.heartbeat_age_ms.max(0),
                name: host.name,
                url: host.url,
            })
            .collect(),
    }))
}
