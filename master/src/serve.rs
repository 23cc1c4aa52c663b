//! `warren serve`: start the pool, serve HTTP, shut down cleanly on a signal.

use crate::cli::ServeArgs;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolConfig, WorkerCommand};
use anyhow::Context;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    let workers = match args.workers {
        Some(workers) => workers,
        None => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    };
    let mut config = PoolConfig::new(
        workers,
        args.data_dir.join("run"),
        WorkerCommand::current_exe().context("cannot find this executable to start workers")?,
    );
    config.heartbeat_timeout = args.heartbeat_timeout;
    config.unavailable_wait = args.unavailable_wait;

    let metrics = Arc::new(Metrics::new());
    let pool = Pool::start(config, metrics.pool())?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    info!(%address, workers, data_dir = %args.data_dir.display(), "listening");

    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signal(stop.clone()));
    let app = http::router(AppState {
        pool: pool.clone(),
        metrics,
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
    let drain_deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(args.shutdown_timeout).await;
    };
    tokio::select! {
        served = server => served.context("HTTP server failed")?,
        _ = drain_deadline => warn!(timeout = ?args.shutdown_timeout, "in-flight requests did not finish in time; stopping anyway"),
    }
    info!("stopping workers");
    pool.shutdown().await;
    info!("stopped");
    Ok(())
}

async fn stop_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop warren with SIGKILL");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM: draining"),
        _ = interrupt.recv() => info!("SIGINT: draining"),
    }
    stop.cancel();
    // Keep the handlers installed so a second signal does not kill the drain
    // half-way; the drain deadline bounds it instead.
    std::future::pending::<()>().await;
}
