//! `warren-bench startup`: how long `warren serve` takes to be ready with
//! no users and with `--users` of them (issue 14: "with 100,000 users in
//! the database, `warren serve` is ready in under a second").
//!
//! Ready is what `/readyz` answering 200 means (and when systemd is told
//! `READY=1`): every worker up, the database answering and writable. Each
//! figure is the time from spawning `warren-bench serve` (exactly `warren
//! serve`) to the first 200 of `/readyz`, polled every millisecond over
//! one connection; `--runs` starts of each kind, after one untimed start
//! (the page cache warm, as for a restart). SQLite in the data directory,
//! and PostgreSQL too with `--postgres` (a database of its own is created
//! there for each user count, and dropped afterwards).
//!
//! The users are written straight into the database, in one transaction,
//! as warren leaves them: a uid each from `--uid-range`, a password hash
//! and a live session each; `--user-dirs` of them have a directory under
//! `<data>/users` (users who have used their files). Last, for each
//! backend, one start after the users' uids are cleared: the one-time
//! cost of an upgraded database from before uids.

use crate::http::load::{Connection, RequestSpec};
use crate::http::server::ServerProcess;
use crate::http::{os_args, random_hex};
use crate::report::{nanos, render, thousands, verdict, Machine};
use crate::StartupArgs;
use anyhow::{bail, Context, Result};
use hyper::Method;
use serde::Serialize;
use std::ffi::OsString;
use std::time::{Duration, Instant};

/// Ready within this with `--users` users (the bound).
pub const TARGET_READY_NS: u64 = 1_000_000_000;
/// Give up on a start after this.
const PATIENCE: Duration = Duration::from_secs(60);
/// The first uid of the range given to warren (wide enough for any
/// `--users`, far from the default range).
const FIRST_UID: i64 = 300_000_000;

#[derive(Debug, Serialize)]
pub struct Figure {
    pub backend: &'static str,
    pub users: u64,
    /// What was measured: `ready` (every user with a uid) or `uid backfill`.
    pub kind: &'static str,
    pub runs: usize,
    pub median_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
}

#[derive(Debug, Serialize)]
pub struct StartupReport {
    pub machine: Machine,
    pub workers: u32,
    pub user_dirs: u64,
    pub figures: Vec<Figure>,
}

pub async fn run(args: &StartupArgs) -> Result<StartupReport> {
    let mut figures = Vec::new();
    let mut backends: Vec<Option<String>> = vec![None];
    if let Some(admin_url) = &args.postgres {
        backends.push(Some(admin_url.clone()));
    }
    for admin_url in &backends {
        for users in [0, args.users] {
            let database = match admin_url {
                Some(admin_url) => Some(PostgresDatabase::create(admin_url).await?),
                None => None,
            };
            let outcome = measure(args, users, database.as_ref().map(|db| db.url.as_str())).await;
            if let Some(database) = database {
                database.drop_it().await;
            }
            figures.extend(outcome?);
        }
    }
    Ok(StartupReport {
        machine: Machine::current(),
        workers: args.workers,
        user_dirs: args.user_dirs.min(args.users),
        figures,
    })
}

/// The figures of one database with `users` users.
async fn measure(args: &StartupArgs, users: u64, postgres: Option<&str>) -> Result<Vec<Figure>> {
    let backend = if postgres.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let data_dir = dir.path().join("data");
    let password_file = dir.path().join("admin-password");
    std::fs::write(&password_file, random_hex(16)?).context("cannot write the password")?;
    let last_uid = FIRST_UID + users as i64 + 1000;
    let mut serve = os_args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
    serve.push(data_dir.clone().into());
    serve.extend(os_args(["--workers", &args.workers.to_string()]));
    serve.push("--admin-password-file".into());
    serve.push(password_file.into());
    serve.extend(os_args(["--uid-range", &format!("{FIRST_UID}-{last_uid}")]));
    let url = match postgres {
        Some(url) => {
            serve.extend(os_args(["--database-url", url]));
            url.to_string()
        }
        None => format!("sqlite://{}", data_dir.join("warren.db").display()),
    };
    // The tables and the admin, then the users.
    start_timed(&serve).await?;
    if users > 0 {
        let started = Instant::now();
        let count = i64::try_from(users).context("too many users")?;
        warren_tests::bulk::fill_users(&url, postgres.is_some(), count, FIRST_UID)
            .await
            .context("cannot write the users")?;
        let users_dir = data_dir.join("users");
        for n in 1..=args.user_dirs.min(users) {
            let dir = users_dir.join(user_id(n)).join("workspace");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot make {}", dir.display()))?;
        }
        eprintln!(
            "[{backend}] {} users written in {:.1} s",
            thousands(users),
            started.elapsed().as_secs_f64()
        );
    }
    start_timed(&serve).await?;
    let mut samples = Vec::new();
    for _ in 0..args.runs {
        samples.push(start_timed(&serve).await?);
    }
    let mut figures = vec![figure(backend, users, "ready", samples)];
    eprintln!("{}", line(&figures[0]));
    if users > 0 {
        let pool = connect(&url).await?;
        sqlx::query("UPDATE users SET uid = NULL WHERE username <> 'admin'")
            .execute(&pool)
            .await
            .context("cannot clear the uids")?;
        pool.close().await;
        let backfill = start_timed(&serve).await?;
        figures.push(figure(backend, users, "uid backfill", vec![backfill]));
        eprintln!("{}", line(&figures[1]));
    }
    Ok(figures)
}

fn figure(backend: &'static str, users: u64, kind: &'static str, mut ns: Vec<u64>) -> Figure {
    ns.sort_unstable();
    Figure {
        backend,
        users,
        kind,
        runs: ns.len(),
        median_ns: ns.get(ns.len() / 2).copied().unwrap_or(0),
        min_ns: ns.first().copied().unwrap_or(0),
        max_ns: ns.last().copied().unwrap_or(0),
    }
}

fn line(figure: &Figure) -> String {
    format!(
        "[{}] {} users, {}: median {} (min {}, max {}, {} runs)",
        figure.backend,
        thousands(figure.users),
        figure.kind,
        nanos(figure.median_ns as f64),
        nanos(figure.min_ns as f64),
        nanos(figure.max_ns as f64),
        figure.runs
    )
}

/// Spawns the server, polls `/readyz` until it answers 200, stops the
/// server (SIGTERM, a clean exit): the nanoseconds from spawn to ready.
async fn start_timed(serve: &[OsString]) -> Result<u64> {
    let started = Instant::now();
    let server = ServerProcess::start("warren", serve.to_vec(), None).await?;
    let spec = RequestSpec::new(server.address, Method::GET, "/readyz");
    let mut connection = Connection::new(server.address);
    let took = loop {
        match connection.send(&spec, Duration::from_secs(5)).await {
            Ok(answer) if answer.status.is_success() => break started.elapsed(),
            Ok(_) => {}
            Err(_) => connection.reset(),
        }
        if started.elapsed() > PATIENCE {
            bail!(
                "warren was not ready within {PATIENCE:?}; its log:\n{}",
                server.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    server.stop().await?;
    Ok(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX))
}

/// The id of user number `n` (a valid UUID, made the same way in SQL).
fn user_id(n: u64) -> String {
    format!("{n:08x}-0000-4000-8000-{n:012x}")
}

async fn connect(url: &str) -> Result<sqlx::AnyPool> {
    warren_tests::bulk::connect(url)
        .await
        .context("cannot connect to the database")
}

/// A PostgreSQL database made for one measurement (also `hosts`'s), on
/// the server of `admin_url`, dropped by [`PostgresDatabase::drop_it`].
pub(crate) struct PostgresDatabase {
    admin_url: String,
    name: String,
    pub(crate) url: String,
}

impl PostgresDatabase {
    pub(crate) async fn create(admin_url: &str) -> Result<PostgresDatabase> {
        let name = format!("warren_bench_{}", random_hex(8)?);
        let pool = connect(admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .context("cannot create a database (--postgres)")?;
        pool.close().await;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url, |(base, _)| base);
        Ok(PostgresDatabase {
            admin_url: admin_url.to_string(),
            url: format!("{base}/{name}"),
            name,
        })
    }

    pub(crate) async fn drop_it(self) {
        let dropped = async {
            let pool = connect(&self.admin_url).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&pool)
            .await?;
            pool.close().await;
            Ok::<_, anyhow::Error>(())
        };
        if let Err(err) = dropped.await {
            eprintln!("warning: cannot drop the database {}: {err:#}", self.name);
        }
    }
}

impl StartupReport {
    pub fn table(&self) -> String {
        let mut rows = vec![vec![
            "database".to_string(),
            "users".into(),
            "start".into(),
            "runs".into(),
            "median".into(),
            "min".into(),
            "max".into(),
            "target".into(),
        ]];
        let most = self.figures.iter().map(|f| f.users).max().unwrap_or(0);
        for figure in &self.figures {
            let target = if figure.kind == "ready" && figure.users == most && most > 0 {
                format!(
                    "< {} {}",
                    nanos(TARGET_READY_NS as f64),
                    verdict(figure.median_ns < TARGET_READY_NS)
                )
            } else {
                "-".into()
            };
            rows.push(vec![
                figure.backend.to_string(),
                thousands(figure.users),
                figure.kind.to_string(),
                figure.runs.to_string(),
                nanos(figure.median_ns as f64),
                nanos(figure.min_ns as f64),
                nanos(figure.max_ns as f64),
                target,
            ]);
        }
        let mut text = format!(
            "warren-bench startup: {} CPUs, kernel {}, {} workers, {} user directories\n\n",
            self.machine.cpus,
            self.machine.kernel.as_deref().unwrap_or("unknown"),
            self.workers,
            thousands(self.user_dirs),
        );
        text.push_str(&render(&rows));
        text.push_str(
            "\nspawn of `warren serve` to the first 200 of /readyz; \"uid backfill\": one start \
             after every user's uid was cleared (an upgraded database)\n",
        );
        text
    }
}
