//! Test builds only (`debug_assertions`): routes that let end-to-end tests
//! act as any user and exercise the pool. None of this exists in a release
//! build; issue #3's authenticated routes replace it for real clients.

use super::{ApiError, AppState};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use warren_protocol::{Op, Reply, Role, StreamKind, UserCtx, UserId};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/ping/{user}", get(ping))
        .route("/sleep/{user}", post(sleep))
        .route("/garbage/{user}", post(garbage))
        .route("/echo/{user}", post(echo))
}

fn user(id: &str) -> Result<UserCtx, ApiError> {
    let id: UserId = id
        .parse()
        .map_err(|err| ApiError::BadRequest(format!("user id {id:?}: {err}")))?;
    Ok(UserCtx {
        id,
        name: format!("debug-{id}"),
        role: Role::User,
        quota_bytes: u64::MAX,
        quota_files: u64::MAX,
        uid: None,
        limits: Default::default(),
    })
}

async fn ping(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = user(&id)?;
    match state.pool.call(&user, Op::Ping).await? {
        Reply::Pong { slot, pid, user } => Ok(Json(
            serde_json::json!({ "slot": slot, "pid": pid, "user": user.to_string() }),
        )),
        other => Err(ApiError::BadRequest(format!("unexpected reply {other:?}"))),
    }
}

#[derive(Deserialize)]
struct SleepQuery {
    ms: u64,
}

async fn sleep(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<SleepQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = user(&id)?;
    state
        .pool
        .call(&user, Op::DebugSleep { millis: query.ms })
        .await?;
    Ok(Json(serde_json::json!({ "done": true })))
}

#[derive(Deserialize)]
struct GarbageQuery {
    #[serde(default)]
    oversized: bool,
}

/// Asks the user's worker to send bytes that are not a frame. The worker
/// never answers; the master closes the connection and the caller gets 503.
async fn garbage(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<GarbageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = user(&id)?;
    let op = Op::DebugSendGarbage {
        oversized: query.oversized,
    };
    state.pool.call(&user, op).await?;
    Ok(Json(serde_json::json!({ "done": true })))
}

/// Streams the request body through an echo stream on the user's worker and
/// the echoed bytes back as the response body.
async fn echo(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Body, ApiError> {
    let user = user(&id)?;
    let stream = state.pool.open_stream(&user, StreamKind::Echo).await?;
    let (mut sender, receiver) = stream.split();
    tokio::spawn(async move {
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let Ok(chunk) = chunk else {
                sender.abort(warren_protocol::OpError::Cancelled);
                return;
            };
            if sender.send(&chunk).await.is_err() {
                return;
            }
        }
        let _ = sender.finish();
    });
    let echoed = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((chunk.map_err(std::io::Error::other), receiver))
    });
    Ok(Body::from_stream(echoed))
}
