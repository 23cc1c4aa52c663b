//! The pool as a library, over real worker processes (this package's own
//! `warren` binary, re-run as `warren worker`).

use std::sync::Arc;
use std::time::{Duration, Instant};
use warren_master::metrics::Metrics;
use warren_master::pool::{Pool, PoolConfig, PoolError, WorkerCommand};
use warren_protocol::{Op, OpError, Reply, Role, StreamKind, UserCtx, UserId};

fn user(n: u128) -> UserCtx {
    UserCtx {
        id: UserId(n.to_be_bytes()),
        name: format!("user{n}"),
        role: Role::User,
        quota_bytes: u64::MAX,
        quota_files: u64::MAX,
        uid: None,
        limits: Default::default(),
    }
}

async fn start_pool(workers: u32, run_dir: &std::path::Path) -> Arc<Pool> {
    let command = WorkerCommand {
        program: env!("CARGO_BIN_EXE_warren").into(),
        args: vec!["worker".into()],
    };
    let config = PoolConfig::new(workers, run_dir.to_path_buf(), command);
    let pool = Pool::start(config, Metrics::new().pool()).expect("pool starts");
    assert!(pool.wait_ready(Duration::from_secs(20)).await, "workers up");
    pool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_requests_share_one_connection_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start_pool(1, dir.path()).await;
    let started = Instant::now();
    let calls: Vec<_> = (0..5_000u128)
        .map(|n| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.call(&user(n), Op::DebugSleep { millis: 200 }).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), Reply::Done);
    }
    let took = started.elapsed();
    // One at a time would take 1,000 s; all at once takes one sleep plus overhead.
    assert!(
        took < Duration::from_secs(10),
        "5,000 concurrent sleeps took {took:?}"
    );
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_their_requests_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start_pool(2, dir.path()).await;
    let calls: Vec<_> = (0..2_000u128)
        .map(|n| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let asked = user(n);
                let reply = pool.call(&asked, Op::Ping).await.unwrap();
                let slot = pool.slot_for(&asked);
                (asked, slot, reply)
            })
        })
        .collect();
    for call in calls {
        let (asked, slot_expected, reply) = call.await.unwrap();
        match reply {
            Reply::Pong { slot, user, .. } => {
                assert_eq!(user, asked.id, "an answer went to the wrong caller");
                assert_eq!(slot, slot_expected);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_echo_independently() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start_pool(2, dir.path()).await;
    let streams: Vec<_> = (0..16u128)
        .map(|n| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let stream = pool.open_stream(&user(n), StreamKind::Echo).await.unwrap();
                let (mut sender, mut receiver) = stream.split();
                let payload: Vec<u8> = (0..700_000u32)
                    .map(|i| (i as u128 * (n + 1)) as u8)
                    .collect();
                let expected = payload.clone();
                let feeding = tokio::spawn(async move {
                    sender.send(&payload).await.unwrap();
                    sender.finish().unwrap();
                });
                let mut echoed = Vec::new();
                while let Some(chunk) = receiver.recv().await {
                    echoed.extend(chunk.unwrap());
                }
                feeding.await.unwrap();
                assert!(echoed == expected, "stream {n} echoed other bytes");
            })
        })
        .collect();
    for stream in streams {
        stream.await.unwrap();
    }
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_is_shut_down_refuses_calls() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start_pool(1, dir.path()).await;
    pool.shutdown().await;
    assert!(matches!(
        pool.call(&user(1), Op::Ping).await,
        Err(PoolError::ShuttingDown)
    ));
    assert!(!dir.path().join("worker-0.sock").exists());
}

/// A request too large for a frame fails at once, alone: the connection
/// and every other request on it go on (it used to end the master's
/// writer and leave the slot stalled until its worker was killed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_too_large_for_a_frame_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start_pool(1, dir.path()).await;
    let huge = Op::Files(warren_protocol::FileOp::PutSettings {
        json: vec![b' '; 2 * 1024 * 1024],
    });
    let refused = tokio::time::timeout(Duration::from_secs(5), pool.call(&user(1), huge))
        .await
        .expect("an answer, not a hang");
    assert!(
        matches!(&refused, Err(PoolError::Op(OpError::Invalid(why))) if why.contains("too large")),
        "{refused:?}"
    );
    let after = tokio::time::timeout(Duration::from_secs(5), pool.call(&user(2), Op::Ping))
        .await
        .expect("the slot still serves");
    assert!(matches!(after, Ok(Reply::Pong { .. })), "{after:?}");
    pool.shutdown().await;
}
