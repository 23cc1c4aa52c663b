//! `/activity` and `/admin/activity`: the live activity feed as
//! server-sent events (see `crate::activity`).
//!
//! A user's stream carries their own events in full (`event: activity`)
//! and, about everyone else, only counts (`event: summary`, sent at once,
//! then on change at most every [`SUMMARY_INTERVAL`]): never another
//! user's id, name, path, command or task. The admin stream carries every
//! event with the user's name, and the workers' restarts. Both send a
//! comment every [`HEARTBEAT_INTERVAL`] so proxies keep idle connections.
//! A client that falls too far behind is dropped: its stream ends when its
//! receiver lags, and the listener's send timeout closes a connection that
//! accepts no byte at all.

use crate::activity::{Activity, ActivitySummary};
use crate::auth::{CredentialWatch, Principal};
use crate::http::error::ErrorBody;
use crate::http::extract::{Admin, Authed};
use crate::http::AppState;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

/// How often a user's stream looks at the counts (sent only on change).
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(2);
/// A comment this often keeps idle connections through proxies.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(activity))
}

pub(super) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(admin_activity))
}

/// Whose events a stream shows.
#[derive(Debug, Clone, Copy)]
enum Audience {
    /// One user: their own events, and counts of everyone else's.
    User(Uuid),
    /// An administrator: everything.
    Admin,
}

/// The caller's live activity (`text/event-stream`): their own task and
/// file events in full (`event: activity`, JSON), and counts of everyone
/// else's (`event: summary`, `{"users_active", "tasks_running"}`), sent
/// at once and then when they change.
#[utoipa::path(
    get, path = "/activity", tag = "activity",
    responses(
        (status = 200, description = "Server-sent events: `activity` (the caller's own, see `Activity`) and `summary` (see `ActivitySummary`)", content_type = "text/event-stream", body = String),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn activity(State(state): State<AppState>, Authed(principal): Authed) -> Response {
    stream(&state, Audience::User(principal.user_id), principal)
}

/// Everyone's live activity with users' names, and worker restarts
/// (`text/event-stream`, `event: activity`).
#[utoipa::path(
    get, path = "/admin/activity", tag = "admin",
    responses(
        (status = 200, description = "Server-sent events: `activity` (see `Activity`)", content_type = "text/event-stream", body = String),
        (status = 403, body = ErrorBody),
    ),
    security(("cookie" = []), ("bearer" = []))
)]
async fn admin_activity(State(state): State<AppState>, Admin(principal): Admin) -> Response {
    stream(&state, Audience::Admin, principal)
}

/// The stream ends when the caller's credential does (a logout, a
/// revocation, the user disabled or, for the admin stream, no longer an
/// administrator), not only when the client leaves.
fn stream(state: &AppState, audience: Audience, principal: Arc<Principal>) -> Response {
    let admin = matches!(audience, Audience::Admin);
    let watch = state.auth.watch(principal, admin);
    let events = feed(
        state.activity.subscribe(),
        state.activity.clone(),
        audience,
        watch,
    );
    let mut response = Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(HEARTBEAT_INTERVAL)
                .text("heartbeat"),
        )
        .into_response();
    // Proxies such as nginx buffer responses unless told not to.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

/// What a stream remembers between events.
struct FeedState {
    receiver: Receiver<Arc<Activity>>,
    hub: Arc<crate::activity::ActivityHub>,
    audience: Audience,
    summary_tick: tokio::time::Interval,
    last_summary: Option<ActivitySummary>,
    /// The caller's credential: nothing is sent once it has ended.
    watch: CredentialWatch,
}

/// The stream's events: the audience's share of the hub's events, and for
/// a user the counts of others whenever they change. Ends when the
/// receiver lags (the client read too slowly) or the hub goes away.
fn feed(
    receiver: Receiver<Arc<Activity>>,
    hub: Arc<crate::activity::ActivityHub>,
    audience: Audience,
    watch: CredentialWatch,
) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
    let mut summary_tick = tokio::time::interval(SUMMARY_INTERVAL);
    summary_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = FeedState {
        receiver,
        hub,
        audience,
        summary_tick,
        last_summary: None,
        watch,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            let viewer = match state.audience {
                Audience::User(id) => Some(id),
                Audience::Admin => None,
            };
            let event = tokio::select! {
                () = state.watch.ended() => return None,
                received = state.receiver.recv() => match received {
                    Ok(event) => {
                        let shown = match state.audience {
                            Audience::Admin => true,
                            Audience::User(id) => event.user.as_ref().is_some_and(|user| user.id == id),
                        };
                        if !shown {
                            continue;
                        }
                        let Ok(event_json) = Event::default().event("activity").json_data(event.as_ref()) else {
                            continue;
                        };
                        event_json
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "an activity client fell behind; its stream ends");
                        return None;
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = state.summary_tick.tick(), if viewer.is_some() => {
                    let Some(viewer) = viewer else { continue };
                    let summary = state.hub.summary_for(viewer);
                    if state.last_summary == Some(summary) {
                        continue;
                    }
                    state.last_summary = Some(summary);
                    let Ok(event) = Event::default().event("summary").json_data(summary) else {
                        continue;
                    };
                    event
                }
            };
            // An invalidation may have come between the event and now.
            if !state.watch.holds().await {
                return None;
            }
            return Some((Ok(event), state));
        }
    })
}
