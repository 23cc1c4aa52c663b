//! The bare server (`warren-bench bare-server`), the reference of the `http`
//! and `files` figures: plain axum handlers for `GET /api/v1/ping` answering
//! the bytes warren answers (`{"slot":0}`, `application/json`), and for
//! `GET /api/v1/files/bench/1k.bin` answering the 1 KiB file `files` puts
//! there (`application/octet-stream`) from memory, with no session, no pool,
//! no worker, no disk; and `POST /api/v1/auth/login`, which lets anyone in
//! (a session cookie, no password hash), so that `warren-bench run
//! --scenario ping` can measure its own ceiling against this server. It runs as its own process on the same kind of runtime
//! as `warren serve` (multi-thread, one thread per core), so both servers
//! are measured the same way; what warren adds on top is what warren costs.

use anyhow::{Context, Result};
use axum::http::header;
use axum::routing::get;
use axum::{Json, Router};
use std::net::SocketAddr;

#[derive(Debug, Clone, clap::Args)]
pub struct BareArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

#[derive(serde::Serialize)]
struct Ping {
    slot: u32,
}

pub fn router() -> Router {
    let small_file = crate::files::pattern::small_file();
    Router::new()
        .route("/api/v1/ping", get(|| async { Json(Ping { slot: 0 }) }))
        .route(
            "/api/v1/auth/login",
            axum::routing::post(|| async {
                (
                    [(header::SET_COOKIE, "warren_session=bare; Path=/; HttpOnly")],
                    Json(serde_json::json!({})),
                )
            }),
        )
        .route(
            "/api/v1/files/bench/1k.bin",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    small_file,
                )
            }),
        )
}

/// Serves until SIGTERM or SIGINT; logs `listening address=...` at start,
/// in the same format as `warren serve`.
pub fn serve(args: &BareArgs) -> Result<()> {
    warren_master::init_tracing("info", warren_master::cli::LogFormat::Text);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        tracing::info!(%address, "listening");
        axum::serve(listener, router())
            .with_graceful_shutdown(stop_signal())
            .await
            .context("HTTP server failed")
    })
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut terminate), Ok(mut interrupt)) => tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        },
        _ => std::future::pending().await,
    }
}
