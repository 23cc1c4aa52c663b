//! `warren-bench micro`: the cost of each hop on a request's path, measured
//! in one run so that every figure shares the machine's state at the time.
//!
//! - codec: encode + decode of a typical request frame;
//! - routing: `ring::slot_for`;
//! - the pool: `Pool::call(user, Op::Ping)` through real worker processes,
//!   sequential latency and throughput with 1, 16 and 256 concurrent callers.
//!
//! Each pool figure stands beside an in-process baseline: the very function
//! the worker runs for `Ping` (`warren_worker::ops::ping`), called directly
//! in the same way (one caller timed per call; or the same number of tokio
//! tasks). The ratio is then the price of process isolation: framing, the
//! socket, the scheduler hops on both sides.

use crate::echo::BareEcho;
use crate::report::{self, Latency, Machine, Report, Settings, Throughput};
use crate::MicroArgs;
use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::codec::Decoder;
use warren_master::metrics::Metrics;
use warren_master::pool::{ring, Pool, PoolConfig, WorkerCommand};
use warren_protocol::codec::encode_frame;
use warren_protocol::{Body, Frame, FrameCodec, Op, Reply, Request, Role, UserCtx, UserId};
use warren_worker::ops::{self, WorkerIdentity};

/// Concurrent callers for the throughput figures: one (pure round-trip
/// bound), a handful, and many (where batching of frames should pay off).
pub const CALLERS: [usize; 3] = [1, 16, 256];

/// Latency samples kept per figure: bounds memory for the in-process
/// baseline, which would otherwise record tens of millions in a few seconds.
const MAX_SAMPLES: usize = 2_000_000;

/// Calls between clock reads (and, for tokio tasks, between yields) when a
/// figure is an average rather than a distribution: keeps the clock and the
/// scheduler out of a nanosecond-scale measurement.
const BATCH: u64 = 1024;

pub fn run(args: &MicroArgs) -> Result<()> {
    let window = args.seconds;
    let warmup = (window / 5).clamp(Duration::from_millis(100), Duration::from_secs(1));

    eprintln!("codec encode+decode ...");
    let (frame_bytes, codec_ns) = codec_ns_per_op(window, warmup)?;
    eprintln!("ring::slot_for ...");
    let slot_for_ns = slot_for_ns_per_op(window, warmup)?;

    // The master side as `warren serve` runs it: a multi-thread runtime with
    // one thread per core. The pool must start inside it (workers are forked
    // from its threads).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let runtime_threads = runtime.metrics().num_workers();
    let (sequential, throughput) = runtime.block_on(pool_figures(args.workers, window, warmup))?;
    drop(runtime);

    let report = Report::new(
        Machine::current(),
        Settings {
            seconds_per_figure: window.as_secs_f64(),
            warmup_seconds: warmup.as_secs_f64(),
            workers: args.workers,
            runtime_threads,
        },
        frame_bytes,
        codec_ns,
        slot_for_ns,
        sequential,
        throughput,
    );
    report::print(report.table(), &report, args.json)
}

/// Mean nanoseconds per call of `op`, run in batches of [`BATCH`] for
/// `window` after `warmup`.
fn ns_per_op(
    window: Duration,
    warmup: Duration,
    mut op: impl FnMut() -> Result<()>,
) -> Result<f64> {
    let mut timed = |length: Duration| -> Result<f64> {
        let started = Instant::now();
        let mut calls = 0u64;
        while started.elapsed() < length {
            for _ in 0..BATCH {
                op()?;
            }
            calls += BATCH;
        }
        Ok(started.elapsed().as_nanos() as f64 / calls as f64)
    };
    timed(warmup)?;
    timed(window)
}

/// A request as the master sends it for an HTTP call: a UUID, a short name.
fn sample_frame() -> Frame {
    Frame {
        id: 1_234_567,
        body: Body::Request(Request {
            user: user_ctx(
                0,
                UserId(0x6f1c_2b9e_8d4a_4f03_9a57_e2c1_0b3d_7a55_u128.to_be_bytes()),
            ),
            op: Op::Ping,
        }),
    }
}

/// Encodes the sample frame into one reused buffer and decodes it back with
/// the connection's `FrameCodec`, as the two ends of a connection do.
/// Returns the frame's size on the wire and ns per encode+decode.
fn codec_ns_per_op(window: Duration, warmup: Duration) -> Result<(usize, f64)> {
    let frame = sample_frame();
    let mut codec = FrameCodec::new();
    let mut buffer = BytesMut::with_capacity(4096);
    encode_frame(&frame, &mut buffer).context("encoding the sample frame")?;
    let frame_bytes = buffer.len();
    match codec
        .decode(&mut buffer)
        .context("decoding the sample frame")?
    {
        Some(decoded) if decoded == frame && buffer.is_empty() => {}
        other => bail!("the sample frame did not round-trip: {other:?}"),
    }
    let ns = ns_per_op(window, warmup, || {
        encode_frame(black_box(&frame), &mut buffer)?;
        match codec.decode(&mut buffer)? {
            Some(decoded) => {
                black_box(decoded);
                Ok(())
            }
            None => bail!("a whole encoded frame did not decode"),
        }
    })?;
    Ok((frame_bytes, ns))
}

/// `ring::slot_for` over 4096 different ids (so neither the branch predictor
/// nor the compiler sees the same input twice in a row) in a pool of 4.
fn slot_for_ns_per_op(window: Duration, warmup: Duration) -> Result<f64> {
    let mut ids = SplitMix64(0x5eed);
    let ids: Vec<UserId> = (0..4096).map(|_| ids.user_id()).collect();
    let mut next = 0usize;
    ns_per_op(window, warmup, || {
        black_box(ring::slot_for(black_box(&ids[next & 4095]), 4));
        next = next.wrapping_add(1);
        Ok(())
    })
}

/// Starts a pool of real worker processes (this binary, re-executed as
/// `warren-bench worker`), measures it and its baselines, and always shuts
/// it down, whether measuring succeeded or not.
async fn pool_figures(
    workers: u32,
    window: Duration,
    warmup: Duration,
) -> Result<(Latency, Vec<Throughput>)> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let metrics = Metrics::new();
    let command = WorkerCommand::current_exe().context("cannot find this executable")?;
    let config = PoolConfig::new(workers, dir.path().join("run"), command);
    let pool = Pool::start(config, metrics.pool()).context("cannot start the pool")?;
    eprintln!("waiting for {workers} workers ...");
    let outcome = if pool.wait_ready(Duration::from_secs(10)).await {
        measure_pool(&pool, workers, window, warmup).await
    } else {
        Err(anyhow::anyhow!(
            "workers not up within 10 s: {:?}",
            pool.report()
        ))
    };
    pool.shutdown().await;
    outcome
}

async fn measure_pool(
    pool: &Arc<Pool>,
    workers: u32,
    window: Duration,
    warmup: Duration,
) -> Result<(Latency, Vec<Throughput>)> {
    let max_callers = CALLERS.iter().copied().max().unwrap_or(1);
    let users = users_over_slots(max_callers, workers);

    eprintln!("sequential round trip ...");
    let sequential_samples = {
        let pool = pool.clone();
        let users = users.clone();
        // A spawned task, as an HTTP handler would be, not the block_on thread.
        tokio::spawn(async move { pool_latency_samples(&pool, &users, window, warmup).await })
            .await
            .context("the sequential caller panicked")??
    };
    let baseline_samples = baseline_latency_samples(&users, window, warmup);
    let sequential = Latency::from_samples(sequential_samples, baseline_samples)?;

    let mut throughput = Vec::new();
    for callers in CALLERS {
        eprintln!("throughput with {callers} concurrent callers ...");
        let callers_users = &users[..callers];
        let pool_rate = {
            let pool = pool.clone();
            ops_per_second(callers_users, window, warmup, move |user, progress| {
                pool_caller(pool.clone(), user, progress)
            })
            .await?
        };
        let baseline_rate = ops_per_second(callers_users, window, warmup, baseline_caller).await?;
        throughput.push(Throughput {
            callers,
            pool_ops_per_sec: pool_rate,
            baseline_ops_per_sec: baseline_rate,
        });
    }
    Ok((sequential, throughput))
}

/// One ping through the pool, checked: the reply must name this user and
/// come from the slot the ring assigns, or the figure would measure nothing.
async fn checked_ping(pool: &Pool, user: &UserCtx) -> Result<()> {
    match pool.call(user, Op::Ping).await {
        Ok(Reply::Pong {
            slot, user: served, ..
        }) if served == user.id && slot == pool.slot_for(user) => Ok(()),
        Ok(other) => bail!("unexpected reply for user {}: {other:?}", user.id),
        Err(err) => Err(err).with_context(|| format!("ping for user {}", user.id)),
    }
}

/// Slices the sequential window is cut into per probe. Probes take turns
/// slice by slice, so all of them see the same machine state (on a shared
/// 2-core VM it drifts within seconds).
const SLICES: u32 = 20;

/// The sequential probes, in the order of [`SequentialSamples`].
#[derive(Clone, Copy)]
enum Probe {
    /// One user's requests: always the same worker process.
    PoolOneWorker,
    /// Users taken in turn: each call goes to the next worker process.
    PoolAcrossWorkers,
    /// The bare echo, one process.
    EchoOneProcess,
    /// Bare echo processes (as many as workers) taken in turn.
    EchoAcrossProcesses,
}

const PROBES: [Probe; 4] = [
    Probe::PoolOneWorker,
    Probe::PoolAcrossWorkers,
    Probe::EchoOneProcess,
    Probe::EchoAcrossProcesses,
];

/// Per-call latencies, in nanoseconds, of each [`Probe`].
pub struct SequentialSamples {
    pub pool_one_worker: Vec<u64>,
    pub pool_across_workers: Vec<u64>,
    pub echo_one_process: Vec<u64>,
    pub echo_across_processes: Vec<u64>,
}

/// One caller, one request at a time, each timed, for every [`Probe`].
async fn pool_latency_samples(
    pool: &Pool,
    users: &[UserCtx],
    window: Duration,
    warmup: Duration,
) -> Result<SequentialSamples> {
    let processes = users
        .iter()
        .map(|user| pool.slot_for(user))
        .collect::<std::collections::HashSet<_>>()
        .len();
    let mut echoes = Vec::new();
    for _ in 0..processes.max(1) {
        echoes.push(BareEcho::start().await?);
    }
    let mut samples: [Vec<u64>; 4] = Default::default();
    let mut turn = 0usize;
    let mut run_probe = async |probe: Probe, until: Instant, record: Option<&mut Vec<u64>>| {
        let mut record = record;
        loop {
            let started = Instant::now();
            if started >= until || record.as_ref().is_some_and(|r| r.len() >= MAX_SAMPLES) {
                return Ok::<(), anyhow::Error>(());
            }
            turn = turn.wrapping_add(1);
            match probe {
                Probe::PoolOneWorker => checked_ping(pool, &users[0]).await?,
                Probe::PoolAcrossWorkers => checked_ping(pool, &users[turn % users.len()]).await?,
                Probe::EchoOneProcess => echoes[0].round_trip(&users[0]).await?,
                Probe::EchoAcrossProcesses => {
                    let index = turn % echoes.len();
                    echoes[index].round_trip(&users[0]).await?
                }
            }
            if let Some(record) = record.as_mut() {
                record.push(started.elapsed().as_nanos() as u64);
            }
        }
    };
    for probe in PROBES {
        run_probe(probe, Instant::now() + warmup / 4, None).await?;
    }
    let slice = window / SLICES;
    for _ in 0..SLICES {
        for (index, probe) in PROBES.into_iter().enumerate() {
            run_probe(probe, Instant::now() + slice, Some(&mut samples[index])).await?;
        }
    }
    for echo in echoes {
        echo.stop().await;
    }
    let [pool_one_worker, pool_across_workers, echo_one_process, echo_across_processes] = samples;
    Ok(SequentialSamples {
        pool_one_worker,
        pool_across_workers,
        echo_one_process,
        echo_across_processes,
    })
}

/// The same loop as [`pool_latency_samples`] around the plain function. Each
/// sample includes one clock read (tens of ns), which is most of it: an
/// upper bound on the function, a floor for any measured call.
fn baseline_latency_samples(users: &[UserCtx], window: Duration, warmup: Duration) -> Vec<u64> {
    let identity = WorkerIdentity {
        slot: 0,
        pid: std::process::id(),
    };
    let mut turn = users.iter().cycle();
    let warm_until = Instant::now() + warmup;
    while Instant::now() < warm_until {
        if let Some(user) = turn.next() {
            black_box(ops::ping(black_box(identity), black_box(user)));
        }
    }
    let mut samples = Vec::with_capacity(MAX_SAMPLES);
    let until = Instant::now() + window;
    while samples.len() < MAX_SAMPLES {
        let Some(user) = turn.next() else { break };
        let started = Instant::now();
        if started >= until {
            break;
        }
        black_box(ops::ping(black_box(identity), black_box(user)));
        samples.push(started.elapsed().as_nanos() as u64);
    }
    samples
}

/// Shared by the tasks of one throughput figure.
#[derive(Default)]
struct Progress {
    done: AtomicU64,
    stop: AtomicBool,
}

/// Runs one task per user, each calling in a loop, and counts completed calls
/// over `window` once `warmup` has passed. Counting by snapshots of one
/// counter (rather than timing each task) leaves start-up and wind-down out.
async fn ops_per_second<F, Fut>(
    users: &[UserCtx],
    window: Duration,
    warmup: Duration,
    caller: F,
) -> Result<f64>
where
    F: Fn(UserCtx, Arc<Progress>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let progress = Arc::new(Progress::default());
    let tasks: Vec<_> = users
        .iter()
        .map(|user| tokio::spawn(caller(user.clone(), progress.clone())))
        .collect();
    tokio::time::sleep(warmup).await;
    let (first_count, first) = (progress.done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(window).await;
    let (last_count, last) = (progress.done.load(Ordering::Relaxed), Instant::now());
    progress.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.context("a caller task panicked")??;
    }
    Ok((last_count - first_count) as f64 / (last - first).as_secs_f64())
}

async fn pool_caller(pool: Arc<Pool>, user: UserCtx, progress: Arc<Progress>) -> Result<()> {
    while !progress.stop.load(Ordering::Relaxed) {
        checked_ping(&pool, &user).await?;
        progress.done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// The plain function in a tokio task. It never waits, so the task yields
/// every [`BATCH`] calls to let the other tasks run, as the pool's callers
/// do at every `await`.
async fn baseline_caller(user: UserCtx, progress: Arc<Progress>) -> Result<()> {
    let identity = WorkerIdentity {
        slot: 0,
        pid: std::process::id(),
    };
    while !progress.stop.load(Ordering::Relaxed) {
        for _ in 0..BATCH {
            black_box(ops::ping(black_box(identity), black_box(&user)));
        }
        progress.done.fetch_add(BATCH, Ordering::Relaxed);
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// `count` distinct users, the k-th on slot `k % slots`: any number of
/// callers spreads evenly over the workers, whatever ids chance produces.
fn users_over_slots(count: usize, slots: u32) -> Vec<UserCtx> {
    let mut ids = SplitMix64(0xb0a7);
    (0..count)
        .map(|k| {
            let wanted = (k as u64 % u64::from(slots)) as u32;
            // Jump hash is uniform: about `slots` draws per user.
            let id = loop {
                let id = ids.user_id();
                if ring::slot_for(&id, slots) == wanted {
                    break id;
                }
            };
            user_ctx(k, id)
        })
        .collect()
}

fn user_ctx(index: usize, id: UserId) -> UserCtx {
    UserCtx {
        id,
        name: format!("bench-user-{index}"),
        role: Role::User,
        quota_bytes: u64::MAX,
        quota_files: u64::MAX,
        uid: None,
        limits: Default::default(),
    }
}

/// A tiny deterministic generator (SplitMix64), so runs use the same ids
/// without pulling in a random-number crate.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn user_id(&mut self) -> UserId {
        let high = u128::from(self.next()) << 64;
        UserId((high | u128::from(self.next())).to_be_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_distinct_and_spread_evenly_over_slots() {
        let users = users_over_slots(256, 2);
        let mut ids: Vec<_> = users.iter().map(|u| u.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 256);
        for (k, user) in users.iter().enumerate() {
            assert_eq!(ring::slot_for(&user.id, 2), k as u32 % 2);
        }
    }

    #[test]
    fn the_codec_figure_round_trips_a_real_frame() {
        let (bytes, ns) =
            codec_ns_per_op(Duration::from_millis(5), Duration::from_millis(1)).unwrap();
        assert!(bytes > 4 && ns > 0.0);
    }
}
