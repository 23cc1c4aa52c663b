//! `warren-bench files`: warren's workspace files API (issue #4).
//!
//! Warren (`warren-bench serve`) and the bare server run as child processes
//! exactly as for `http` (see [`crate::http`]); warren's data dir and the
//! local copy's files share one temporary directory, so one filesystem.
//!
//! The figures:
//! - (a) throughput and latency of an authenticated `GET` of a 1 KiB file
//!   (`Authorization: Bearer`), `--concurrency` keep-alive connections back
//!   to back, beside the bare server answering the same 1,024 bytes from
//!   memory, in alternating slices. Target: warren ≥ 0.6× bare.
//! - (b) a `--size-mib` file uploaded (`PUT`, the body made on demand in
//!   1 MiB chunks) and downloaded (`GET`, every byte checked), beside a local
//!   copy of a file as large (read + write, then fsync: warren fsyncs every
//!   upload); `--repetitions` times, each figure's median reported. Target:
//!   upload ≥ 0.6× and download ≥ 0.8× the copy. Each upload and each copy is
//!   preceded by an untimed write of as many bytes (see [`transfer::prime`]).
//! - (c) resident memory (`VmRSS`) of the master and of its workers during
//!   (b)'s transfers, against the idle reading before the first one. Target
//!   (stated for 1 GiB): master + workers grow by less than 64 MiB.
//!
//! (b) and (c) run first, on a warren that has served only the setup, so
//! that (a)'s 64 connections have not already grown the master's heap when
//! its idle memory is read.

pub mod memory;
pub mod pattern;
pub mod report;
pub mod transfer;

use crate::http::load::{run_into, turns, warm_up, Client, Outcome, Plan};
use crate::http::server::ServerProcess;
use crate::http::{api, os_args, random_hex, start_warren, stop, Warren};
use crate::FilesArgs;
use anyhow::{bail, Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use hyper::Method;
use memory::{Processes, Sampler};
use report::{FilesReport, Memory, Repetition, Settings};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use transfer::{CopyFiles, CopyKind};

/// Slices each series of (a) is cut into, taking turns with the other.
pub const SLICES: u32 = 10;
/// (c): time between two readings of each process's memory.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(10);
/// (a)'s file, and the query that writes it.
const SMALL_PATH: &str = "/api/v1/files/bench/1k.bin";
const SMALL_PUT: &str = "/api/v1/files/bench/1k.bin?parents=true";
/// (b)'s file, and the query that writes it.
const LARGE_PATH: &str = "/api/v1/files/bench/big.bin";
const LARGE_PUT: &str = "/api/v1/files/bench/big.bin?parents=true";
/// Accounts created (and logged in, and given their file) at once.
const SETUP_PARALLEL: usize = 4;
/// Let warren settle (the setup's answers sent, its buffers freed) before
/// the idle reading of (c).
const SETTLE: Duration = Duration::from_millis(500);

pub async fn run(args: &FilesArgs) -> Result<FilesReport> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let size_bytes = args.size_mib << 20;
    check_space(dir.path(), space_needed(size_bytes))?;
    eprintln!("starting the bare server ...");
    let bare = ServerProcess::start(
        "bare",
        os_args(["bare-server", "--listen", "127.0.0.1:0"]),
        None,
    )
    .await?;
    eprintln!("starting warren with {} workers ...", args.workers);
    // Room for the file, its replacement while it is written, and (a)'s files.
    let quota = (3 * size_bytes).max(4 << 30);
    let extra: Vec<OsString> = os_args(["--default-quota", &quota.to_string()]);
    let warren = match start_warren(dir.path(), args.workers, extra).await {
        Ok(warren) => warren,
        Err(err) => {
            stop(bare).await;
            return Err(err);
        }
    };
    let outcome = measure(args, &bare, &warren, dir.path()).await;
    stop(bare).await;
    stop(warren.process).await;
    outcome
}

async fn measure(
    args: &FilesArgs,
    bare: &ServerProcess,
    warren: &Warren,
    dir: &Path,
) -> Result<FilesReport> {
    let server = warren.process.address;
    let window = args.seconds;
    let warmup = (window / 10).clamp(Duration::from_millis(200), Duration::from_secs(1));
    let settings = Settings {
        seconds: window.as_secs_f64(),
        warmup_seconds: warmup.as_secs_f64(),
        slices: SLICES,
        concurrency: args.concurrency as usize,
        users: args.users as usize,
        workers: args.workers,
        size_mib: args.size_mib,
        repetitions: args.repetitions,
        upload_chunk_bytes: pattern::CHUNK,
        copy_buffer_bytes: transfer::COPY_BUFFER,
        prime: args.prime,
        sample_interval_ms: SAMPLE_INTERVAL.as_millis() as u64,
        filesystem: filesystem(dir),
        bench_threads: tokio::runtime::Handle::current().metrics().num_workers(),
    };
    let tokens = accounts(server, &warren.admin_password, args.users as usize).await?;
    let Some(first) = tokens.first() else {
        bail!("no users to measure with");
    };

    // (b) and (c), on a warren that has served only the setup.
    let master = warren
        .process
        .pid()
        .context("the warren server has no process id")?;
    let copy_dir = dir.join("copy");
    std::fs::create_dir(&copy_dir)
        .with_context(|| format!("cannot create {}", copy_dir.display()))?;
    let (repetitions, memory) = transfers(args, server, master, first, copy_dir).await?;

    // (a)
    let (small_file_warren, small_file_bare) =
        small_file(args, bare.address, server, &tokens, warmup).await?;

    Ok(FilesReport::new(
        settings,
        crate::http::report::Series::of(&small_file_warren),
        crate::http::report::Series::of(&small_file_bare),
        repetitions,
        memory,
    ))
}

/// Creates `users` plain users, logs them in and gives each (a)'s file;
/// their session tokens.
async fn accounts(server: SocketAddr, admin_password: &str, users: usize) -> Result<Vec<String>> {
    let admin = api::session(server, "admin", admin_password)
        .await
        .context("logging in as admin")?;
    let password = random_hex(16)?;
    let names: Vec<String> = (0..users).map(|k| format!("files-{k:05}")).collect();
    eprintln!("creating {users} users, each with a 1 KiB file ...");
    futures_util::stream::iter(&names)
        .map(|name| api::create_user(server, &admin, name, &password))
        .buffer_unordered(SETUP_PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    let password = &password;
    futures_util::stream::iter(&names)
        .map(|name| async move {
            let token = api::session(server, name, password).await?;
            let entry = api::put_file(server, &token, SMALL_PUT, pattern::small_file()).await?;
            let size = entry.get("size").and_then(serde_json::Value::as_u64);
            if size != Some(pattern::SMALL_FILE_BYTES as u64) {
                bail!("PUT {SMALL_PUT} as {name}: warren answered {entry}");
            }
            Ok(token)
        })
        .buffered(SETUP_PARALLEL)
        .try_collect()
        .await
}

/// (b) and (c): each repetition uploads, downloads, then copies locally
/// (read + write, then `std::fs::copy`), memory sampled during both
/// transfers.
async fn transfers(
    args: &FilesArgs,
    server: SocketAddr,
    master: u32,
    token: &str,
    copy_dir: PathBuf,
) -> Result<(Vec<Repetition>, Memory)> {
    let size = args.size_mib;
    let len = size << 20;
    let files = CopyFiles::in_dir(&copy_dir);
    eprintln!("(b) writing the local copy's {size} MiB source ...");
    let source = files.source.clone();
    blocking(move || transfer::write_source(&source, len)).await?;

    let mut processes = Processes::find(master)?;
    let worker_processes = processes.workers().len();
    tokio::time::sleep(SETTLE).await;
    let idle = processes.sample()?;
    let mut repetitions = Vec::new();
    for round in 1..=args.repetitions {
        if args.prime {
            prime(&files, len).await?;
        }
        let before = processes.sample()?;
        eprintln!("(b) {round}/{}: upload {size} MiB ...", args.repetitions);
        let (back, up, upload_peak) = sampled(processes, || {
            transfer::upload(server, token, LARGE_PUT, len)
        })
        .await?;
        eprintln!("(b) {round}/{}: download ...", args.repetitions);
        let (back, down, download_peak) =
            sampled(back, || transfer::download(server, token, LARGE_PATH, len)).await?;
        processes = back;
        eprintln!("(b) {round}/{}: local copies ...", args.repetitions);
        let mut copies = Vec::new();
        for kind in [CopyKind::ReadWrite, CopyKind::Std] {
            if args.prime {
                prime(&files, len).await?;
            }
            let (from, to) = (files.source.clone(), files.target.clone());
            copies.push(blocking(move || transfer::timed_copy(kind, &from, &to, len)).await?);
        }
        repetitions.push(Repetition {
            upload_seconds: up.as_secs_f64(),
            download_seconds: down.as_secs_f64(),
            copy_seconds: copies[0].as_secs_f64(),
            std_copy_seconds: copies[1].as_secs_f64(),
            idle: before,
            upload_peak,
            download_peak,
        });
    }
    if let Err(err) = std::fs::remove_file(&files.source) {
        eprintln!("warning: cannot remove {}: {err}", files.source.display());
    }
    let memory = Memory::new(worker_processes, idle, &repetitions, processes.changes);
    Ok((repetitions, memory))
}

/// [`transfer::prime`] in `files`' directory.
async fn prime(files: &CopyFiles, len: u64) -> Result<()> {
    let path = files.prime.clone();
    blocking(move || transfer::prime(&path, len)).await
}

/// Runs `transfer` with the processes' memory sampled meanwhile.
async fn sampled<F, Fut>(
    processes: Processes,
    transfer: F,
) -> Result<(Processes, Duration, memory::Peak)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Duration>>,
{
    let sampler = Sampler::start(processes, SAMPLE_INTERVAL)?;
    let took = transfer().await;
    // Stopped before any error is returned: the thread must not outlive us.
    let (processes, peak) = sampler.finish()?;
    Ok((processes, took?, peak))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("a file operation panicked")?
}

/// (a): `concurrency` connections to each server, connection k as user k
/// mod users, measured in alternating slices.
async fn small_file(
    args: &FilesArgs,
    bare: SocketAddr,
    server: SocketAddr,
    tokens: &[String],
    warmup: Duration,
) -> Result<(Outcome, Outcome)> {
    let concurrency = args.concurrency as usize;
    let clients = |address: SocketAddr| -> Result<Vec<Client>> {
        (0..concurrency)
            .map(|k| {
                let token = &tokens[k % tokens.len()];
                let spec = api::bearer(address, Method::GET, SMALL_PATH, token)?
                    .checked(pattern::is_small_file);
                Client::new(address, spec)
            })
            .collect()
    };
    let (mut bare_clients, mut warren_clients) = (clients(bare)?, clients(server)?);
    eprintln!("(a) GET {SMALL_PATH}, {concurrency} connections: warm-up ...");
    warm_up(&mut [&mut bare_clients, &mut warren_clients], warmup).await?;
    eprintln!(
        "(a) measuring {} s each, in {SLICES} alternating slices ...",
        args.seconds.as_secs_f64()
    );
    let slice = args.seconds / SLICES;
    let (mut bare_total, mut warren_total) = (Outcome::new()?, Outcome::new()?);
    for index in 0..SLICES {
        for warren_turn in turns(index) {
            let (clients, total) = if warren_turn {
                (&mut warren_clients, &mut warren_total)
            } else {
                (&mut bare_clients, &mut bare_total)
            };
            run_into(clients, Plan::closed(slice), total).await?;
        }
    }
    Ok((warren_total, bare_total))
}

/// Bytes (b) needs on the filesystem at once: warren's file and the one
/// replacing it during an upload, the local copy's source and its copy, and
/// some room for everything else.
pub fn space_needed(size_bytes: u64) -> u64 {
    size_bytes.saturating_mul(4).saturating_add(256 << 20)
}

/// Fails early, before minutes of work, if `dir`'s filesystem has less than
/// `needed` bytes free.
fn check_space(dir: &Path, needed: u64) -> Result<()> {
    let stat = rustix::fs::statvfs(dir)
        .with_context(|| format!("cannot read the free space of {}", dir.display()))?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    if free < needed {
        bail!(
            "{} has {} MiB free; (b) needs {} MiB (the file 4 times over)",
            dir.display(),
            free >> 20,
            needed >> 20
        );
    }
    Ok(())
}

/// The kind of filesystem `dir` is on (`ext4`, `tmpfs`, ...), by its magic.
fn filesystem(dir: &Path) -> String {
    match rustix::fs::statfs(dir) {
        Ok(stat) => filesystem_name(stat.f_type as u64),
        Err(err) => format!("an unknown filesystem ({err})"),
    }
}

/// The name of a filesystem magic number of `statfs(2)`.
pub fn filesystem_name(magic: u64) -> String {
    match magic {
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        0xF2F5_2010 => "f2fs".into(),
        other => format!("filesystem 0x{other:x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystems_are_named_by_their_magic() {
        assert_eq!(filesystem_name(0xEF53), "ext4");
        assert_eq!(filesystem_name(0x0102_1994), "tmpfs");
        assert_eq!(filesystem_name(0x1234), "filesystem 0x1234");
        let here = filesystem(Path::new("/proc/self"));
        assert!(!here.is_empty());
    }

    #[test]
    fn space_is_checked_for_the_file_four_times_over() {
        assert_eq!(space_needed(1 << 30), (4 << 30) + (256 << 20));
        assert_eq!(space_needed(u64::MAX), u64::MAX);
        let dir = tempfile::tempdir().unwrap();
        assert!(check_space(dir.path(), 1).is_ok());
        let error = check_space(dir.path(), u64::MAX).unwrap_err();
        assert!(format!("{error:#}").contains("MiB free"), "{error:#}");
    }

    #[test]
    fn the_paths_are_the_files_api() {
        assert_eq!(SMALL_PUT, format!("{SMALL_PATH}?parents=true"));
        assert_eq!(LARGE_PUT, format!("{LARGE_PATH}?parents=true"));
        assert!(warren_protocol::path::check(&SMALL_PATH["/api/v1/files/".len()..]).is_ok());
        assert!(warren_protocol::path::check(&LARGE_PATH["/api/v1/files/".len()..]).is_ok());
    }
}
