//! `warren serve`: open the database, make sure someone can log in, start
//! the pool, serve HTTP, shut down cleanly on a signal.

use crate::auth::password::{self, hash_now, verify_now};
use crate::auth::throttle::ThrottleConfig;
use crate::auth::{token, Auth, AuthConfig, Mode, SINGLE_USER_NAME};
use crate::cli::ServeArgs;
use crate::http::listener::ConnectionLimits;
use crate::http::{self, AppState, MetricsAccess, Shared, WebConfig};
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolConfig, WorkerCommand};
use crate::store::{redact_url, NewUser, Role, Store, StoreError, UserPatch};
use anyhow::{bail, Context};
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warren_worker::sandbox::{Sandbox, SandboxConfig};

pub async fn run(args: ServeArgs, matches: Option<clap::ArgMatches>) -> anyhow::Result<()> {
    // SIGHUP's default action ends the process: from the first moment on,
    // it waits for the reload task instead (a reload sent while warren
    // starts is applied once it runs).
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    let open_files = raise_open_file_limit();
    let metrics_token = match &args.metrics_token_file {
        Some(file) => Some(read_metrics_token(file)?),
        None => None,
    };
    let cluster_config = crate::cluster::ClusterConfig::from_args(
        args.host_name.as_deref(),
        args.host_url.as_deref(),
        args.cluster_secret_file.as_deref(),
    )?;
    let data_dir = &args.store.data_dir;
    create_private_dir(data_dir)?;
    let sandbox = Arc::new(probe_sandbox(&args));
    let metrics = Arc::new(Metrics::new());
    metrics.set_sandbox_levels(&sandbox.report().levels());
    let apps_config = match apps_config(&args)? {
        Some((path, config)) => {
            info!(
                apps = %config.apps.keys().cloned().collect::<Vec<_>>().join(" "),
                file = %path.display(),
                "users' apps"
            );
            Some(config)
        }
        None => None,
    };
    let url = args.store.url()?;
    let store = Store::open(&url, metrics.auth().request_queries())
        .await
        .with_context(|| format!("cannot open the database {}", redact_url(&url)))?
        .with_uid_range(args.store.uid_range);
    let config = AuthConfig {
        mode: args.mode,
        session_ttl: args.session_ttl,
        idle_timeout: args.session_idle,
        max_sessions: args.max_sessions,
        hash_concurrency: args
            .hash_concurrency
            .map_or_else(crate::auth::default_hash_concurrency, |n| n as usize),
        default_quota_bytes: args.default_quota,
        default_quota_files: args.default_file_quota,
        throttle: ThrottleConfig {
            per_address_per_minute: args.login_rate_per_address,
            per_account_per_minute: args.login_rate_per_account,
            lockout_failures: args.lockout_failures,
            lockout_window: args.lockout_window,
            lockout_duration: args.lockout_duration,
            ..ThrottleConfig::default()
        },
        audit_retention: args.audit_retention,
        audit_rate_per_minute: args.audit_rate,
        audit_max_rows: args.audit_max_rows,
        token_rate_per_minute: args.token_rate,
        default_limits: args.process_limits(),
        ..AuthConfig::default()
    };
    match args.mode {
        Mode::Multi => first_admin(&store, args.admin_password_file.as_deref()).await?,
        Mode::Single => single_user(&store, args.password_file.as_deref()).await?,
    }
    // Users from before uids existed (or created while the range was
    // full) get theirs now, before anyone can start a process: one indexed
    // look-up when every user has one, batches of thousands otherwise.
    match store.assign_missing_uids().await {
        Ok(0) => {}
        Ok(n) => info!(users = n, "gave users without a uid one from --uid-range"),
        Err(err) => warn!(error = %err, "cannot give every user a uid (--uid-range)"),
    }
    let per_user_uids = config.per_user_uids;
    let auth = Auth::new(store.clone(), config, metrics.auth())?;
    let identities = Arc::new(crate::serve_identity::identities(&args)?);

    let workers = match args.workers {
        Some(workers) => workers,
        None => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    };
    let mut command =
        WorkerCommand::current_exe().context("cannot find this executable to start workers")?;
    command.args.push("--users-dir".into());
    command.args.push(data_dir.join("users").into());
    command.args.push("--disk-reserve-bytes".into());
    command.args.push(args.disk_reserve.to_string().into());
    command.args.push("--disk-reserve-inodes".into());
    command.args.push(args.inode_reserve.to_string().into());
    sandbox_worker_args(&sandbox, &mut command.args);
    command.args.push("--log-level".into());
    command.args.push(args.log_level.clone().into());
    command.args.push("--log-format".into());
    command.args.push(
        match args.log_format {
            crate::cli::LogFormat::Text => "text",
            crate::cli::LogFormat::Json => "json",
        }
        .into(),
    );
    let mut pool_config = PoolConfig::new(workers, data_dir.join("run"), command);
    pool_config.heartbeat_timeout = args.heartbeat_timeout;
    pool_config.unavailable_wait = args.unavailable_wait;
    pool_config.sandbox = Some(sandbox.clone());
    // Before any worker runs: the last run's workers, and their users'
    // processes, are gone, so none of its tasks still runs. (A killed
    // master's workers died with it; what their users started, in every
    // slot of the last run, is killed here.)
    {
        let sandbox = sandbox.clone();
        if let Err(err) = tokio::task::spawn_blocking(move || sandbox.kill_every_slot()).await? {
            warn!(error = %err, "cannot kill what the last run's users left running");
        }
    }
    let master_id = master_id(data_dir)?;
    crate::recorder::lose_all_at_start(&store, &master_id)
        .await
        .context("cannot mark the tasks of the last run lost")?;
    let pool = Pool::start(pool_config, metrics.pool())?;
    let apps =
        apps_config.map(|config| crate::apps::AppsHub::new(config, pool.clone(), metrics.apps()));
    let activity = crate::activity::ActivityHub::new();
    let recorder = pool.take_events().map(|events| {
        let recorder = crate::recorder::Recorder {
            store: store.counting(metrics.auth().background_queries()),
            pool: pool.clone(),
            activity: activity.clone(),
            metrics: metrics.tasks(),
            master_id: master_id.clone(),
            apps: apps.clone(),
        };
        tokio::spawn(recorder.run(events))
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let operations_listener = match args.metrics_listen {
        Some(metrics_listen) => {
            let listener = tokio::net::TcpListener::bind(metrics_listen)
                .await
                .with_context(|| format!("cannot listen on {metrics_listen} (--metrics-listen)"))?;
            info!(metrics_address = %listener.local_addr()?, "serving metrics");
            Some(listener)
        }
        None => None,
    };
    let metrics_access = match (metrics_token, &operations_listener) {
        (Some(token), _) => MetricsAccess::Token(token),
        (None, Some(_)) => MetricsAccess::Elsewhere,
        (None, None) => MetricsAccess::Loopback,
    };
    if !args.trusted_proxies.is_empty() && args.public_url.is_none() {
        warn!(
            "--trusted-proxy is set without --public-url: the Origin check of \
             cookie-authenticated changes compares with the Host header the proxy \
             passes on; set --public-url to the address users reach warren at"
        );
    }
    let limits = connection_limits(&args, open_files);
    info!(
        %address,
        workers,
        data_dir = %data_dir.display(),
        database = store.backend().as_str(),
        mode = ?args.mode,
        "listening"
    );

    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signal(stop.clone()));
    let cluster = match cluster_config {
        Some(config) => {
            let name = config.name.clone();
            let cluster = crate::cluster::Cluster::start(
                config,
                store.counting(metrics.auth().background_queries()),
                limits.cluster_peers.clone(),
                stop.child_token(),
            )
            .await?;
            info!(host = %name, url = %cluster.url, "this host is part of a cluster");
            Some(cluster)
        }
        None => None,
    };
    let purger = crate::purge::Purger {
        store: store.counting(metrics.auth().background_queries()),
        pool: pool.clone(),
        users_dir: data_dir.join("users"),
    };
    tokio::spawn(purger.run(auth.user_events(), stop.child_token()));
    if let Some(apps) = &apps {
        tokio::spawn(apps.clone().keep_in_use(stop.child_token()));
        tokio::spawn(crate::apps::stop_for_gone_users(
            apps.clone(),
            store.counting(metrics.auth().background_queries()),
            auth.user_events(),
            stop.child_token(),
        ));
    }
    if let Some(matches) = matches {
        tokio::spawn(reload_on_hangup(
            hangup,
            matches,
            auth.clone(),
            apps.clone(),
            stop.child_token(),
        ));
    }
    // Its first round counts the sessions (the `warren_sessions_active`
    // gauge) at once, in the background: a count reads every session,
    // which readiness must not wait for (nothing before readiness does
    // work per user; see ARCHITECTURE.md).
    let background = tokio::spawn(auth.clone().run_background(stop.child_token()));
    protect_data_dir(data_dir, sandbox.report().decision.uid_switch, &url)?;
    let state = AppState::new(Shared {
        pool: pool.clone(),
        sandbox: Arc::new(sandbox.report().clone()),
        metrics: metrics.clone(),
        auth,
        web: WebConfig {
            trusted_proxies: args.trusted_proxies.clone(),
            public_origin: args.public_url.clone(),
            allow_signup: args.allow_signup,
            users: http::extract::UsersUids {
                first: store.uid_range().first,
                last: store.uid_range().last,
                own: (!per_user_uids).then(|| rustix::process::geteuid().as_raw()),
            },
        },
        identities,
        templates_dir: data_dir.join("shared").join("templates"),
        upload_idle_timeout: args.upload_idle_timeout,
        body_timeout: args.body_timeout,
        transfers: http::Transfers::new(args.max_transfers_per_user),
        metrics_access,
        activity,
        tasks: http::TaskSettings {
            master_id,
            output_limit: args.task_output_limit,
            cancel_grace: args.task_cancel_grace,
            history: args.task_history,
        },
        terminals: http::TerminalSettings {
            idle_timeout: args.terminal_idle_timeout,
            max_per_user: args.max_terminals_per_user,
            scrollback: args.terminal_scrollback as u32,
            hang_up_grace: args.task_cancel_grace,
        },
        apps: apps.map(crate::apps::proxy::Proxy::new),
        cluster,
    });
    let app = http::router(state.clone());
    // systemd (Type=notify): READY=1 once ready, STOPPING=1 when draining.
    tokio::spawn(crate::notify::run(state.clone(), stop.clone()));
    info!(
        header_read_timeout = ?limits.header_read_timeout,
        send_timeout = ?limits.send_timeout,
        body_timeout = ?args.body_timeout,
        max_connections = limits.max_connections,
        max_connections_per_address = limits.max_per_address,
        "connection limits"
    );
    // The metrics listener has caps of its own: a scraper or two, not a
    // second share of the descriptors.
    let operations_limits = ConnectionLimits {
        max_connections: limits.max_connections.min(64),
        max_per_address: limits.max_per_address.min(64),
        ..limits.clone()
    };
    let operations = operations_listener.map(|listener| {
        http::listener::serve(
            listener,
            http::operations_router(state.clone()),
            operations_limits,
            metrics.connections(),
            stop.clone(),
        )
    });
    let main = http::listener::serve(listener, app, limits, metrics.connections(), stop.clone());
    let server = async {
        match operations {
            Some(operations) => {
                tokio::join!(main, operations);
            }
            None => main.await,
        }
    };
    let drain_deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(args.shutdown_timeout).await;
    };
    tokio::select! {
        () = server => {}
        _ = drain_deadline => warn!(timeout = ?args.shutdown_timeout, "in-flight requests did not finish in time; stopping anyway"),
    }
    stop.cancel();
    info!("stopping workers");
    pool.shutdown().await;
    sandbox.remove_cgroup_bases();
    // The workers' last ends and deaths are recorded (the recorder stops
    // when the stopped pool's queue closes); a database that is down
    // meanwhile does not hold the exit up for long.
    if let Some(recorder) = recorder {
        if tokio::time::timeout(std::time::Duration::from_secs(5), recorder)
            .await
            .is_err()
        {
            warn!("the last task events could not be recorded in time");
        }
    }
    // Writes the last batched last-seen times.
    let _ = background.await;
    info!("stopped");
    Ok(())
}

/// Finds what confines users' processes on this machine (the workers run
/// with the same kernel and privileges), makes the base cgroup, and logs
/// the report: a warning for each thing missing.
fn probe_sandbox(args: &ServeArgs) -> Sandbox {
    let users_dir = args.store.data_dir.join("users");
    let mut config = SandboxConfig::new(users_dir, 0);
    config.mode = args.sandbox;
    config.network = args.sandbox_network;
    config.extra_read = args.sandbox_read.clone();
    config.env = args.sandbox_env.clone();
    config.cgroup_root = args.cgroup_root.clone();
    let sandbox = Sandbox::probe(config, true);
    sandbox.report().log();
    let url = args.store.url().ok();
    if let Some(host) = loopback_database(url.as_deref()) {
        if args.sandbox_network == warren_worker::sandbox::Network::Host {
            warn!(
                database = host,
                "the database listens on this host's loopback, which users' processes reach                  with --sandbox-network host: make sure it asks for a password only warren has                  (no trust authentication), or use --sandbox-network none"
            );
        }
    }
    sandbox
}

/// The host of a PostgreSQL URL when it is this host's loopback (or a
/// Unix socket directory, which users' processes cannot reach).
fn loopback_database(url: Option<&str>) -> Option<&str> {
    let rest = url?.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host_port.split(':').next()?,
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback.then_some(host)
}

/// What the workers need of the sandbox settings: the resolved mode and
/// the base cgroup the master made (a worker's own cgroup may differ).
fn sandbox_worker_args(sandbox: &Sandbox, args: &mut Vec<std::ffi::OsString>) {
    let config = sandbox.config();
    args.push("--sandbox".into());
    args.push(sandbox.report().mode.as_str().into());
    args.push("--sandbox-network".into());
    args.push(config.network.as_str().into());
    for path in &config.extra_read {
        args.push("--sandbox-read".into());
        args.push(path.into());
    }
    for (key, value) in &config.env {
        args.push("--sandbox-env".into());
        args.push(format!("{key}={value}").into());
    }
    args.push("--cgroup-root".into());
    match sandbox.cgroup_base() {
        Some(base) => args.push(base.into()),
        None => args.push(config.cgroup_root.to_string().into()),
    }
}

/// With a uid per user, those uids must traverse (never list) the data
/// directory to reach their workspaces: the data dir, `users/` get 0711
/// (each `users/<id>` is set by the worker), while `run/` stays 0700 and
/// the SQLite files become 0600 (SQLite makes them 0644 under the usual
/// umask; its -wal and -shm files take the database file's mode).
fn protect_data_dir(data_dir: &Path, uid_switch: bool, url: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))
    };
    if url.starts_with("sqlite:") {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let file = data_dir.join(format!("warren.db{suffix}"));
            if file.exists() {
                mode(&file, 0o600)?;
            }
        }
    }
    let run = data_dir.join("run");
    if run.exists() {
        mode(&run, 0o700)?;
    }
    if !uid_switch {
        return Ok(());
    }
    let users = data_dir.join("users");
    create_private_dir(&users)?;
    mode(data_dir, 0o711)?;
    mode(&users, 0o711)
}

/// The connection limits from the flags; the defaults keep half the
/// open-file limit for other uses (database, worker sockets, a burst of
/// connections accepted only to be refused).
fn connection_limits(args: &ServeArgs, open_files: Option<u64>) -> ConnectionLimits {
    let max_connections = match args.max_connections {
        Some(n) => n as usize,
        None => open_files.map_or(usize::MAX, |n| usize::try_from(n / 2).unwrap_or(usize::MAX)),
    }
    .max(1);
    let max_per_address = match args.max_connections_per_address {
        Some(n) => n as usize,
        None => (max_connections / 4).clamp(1, 256),
    };
    ConnectionLimits {
        header_read_timeout: args.header_read_timeout,
        send_timeout: args.send_timeout,
        max_connections,
        max_per_address,
        exempt: args.trusted_proxies.clone(),
        cluster_peers: Default::default(),
    }
}

/// Raises the soft open-file limit to the hard one, for this process and
/// the workers it starts, and returns it (`None`: unlimited). Every
/// connection and every user a worker keeps open takes descriptors; the
/// usual soft default of 1024 exists for old programs using `select`, which
/// warren does not.
fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %err, "cannot raise the open-file limit");
        }
    }
    let files = getrlimit(Resource::Nofile).current;
    tracing::info!(
        open_files = files.map_or_else(|| "unlimited".into(), |n| n.to_string()),
        "open-file limit"
    );
    files
}

/// The bearer token for `/metrics` on the main listener: the file's first
/// line, at least 16 characters (a guessable token would be no guard).
fn read_metrics_token(file: &Path) -> anyhow::Result<String> {
    let token = read_secret_file(file)?.trim().to_string();
    if token.len() < 16 {
        bail!(
            "the metrics token in {} is shorter than 16 characters: use a random one \
             (e.g. `openssl rand -hex 32`)",
            file.display()
        );
    }
    Ok(token)
}

/// This master's identity in task records (`<data-dir>/master-id`, made
/// on first start): the same across restarts, so a restart marks exactly
/// its own earlier tasks lost, and distinct between masters sharing one
/// PostgreSQL database, so none marks another's.
fn master_id(data_dir: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    let file = data_dir.join("master-id");
    match std::fs::read_to_string(&file) {
        Ok(text) if uuid::Uuid::parse_str(text.trim()).is_ok() => return Ok(text.trim().into()),
        Ok(_) => bail!(
            "{} does not hold a UUID: remove it (this master's running tasks are then not marked lost once)",
            file.display()
        ),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", file.display())),
    }
    let id = uuid::Uuid::new_v4().to_string();
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)
        .with_context(|| format!("cannot create {}", file.display()))?;
    out.write_all(format!("{id}\n").as_bytes())
        .and_then(|()| out.sync_all())
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(id)
}

/// Creates `dir` (mode 0700 when new): it holds the database and users' files.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))
}

/// The first line of a secret file, without its line ending.
pub fn read_secret_file(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        bail!(
            "{} is empty: put the password on its first line",
            path.display()
        );
    }
    Ok(line)
}

/// On an empty database, creates `admin` with the password from `file` or a
/// random one, printed once to stderr and nowhere else.
async fn first_admin(store: &Store, file: Option<&Path>) -> anyhow::Result<()> {
    if store.has_users().await? {
        return Ok(());
    }
    let (password, generated) = match file {
        Some(path) => {
            let password = read_secret_file(path)?;
            password::check_policy(&password)
                .with_context(|| format!("the admin password in {}", path.display()))?;
            (password, false)
        }
        None => (token::random_password(20)?, true),
    };
    let hash =
        tokio::task::spawn_blocking(move || hash_now(&password).map(|h| (h, password))).await??;
    let created = store
        .create_user(NewUser {
            username: "admin",
            password_hash: &hash.0,
            role: Role::Admin,
            home_host: None,
        })
        .await;
    match created {
        Ok(_) => {
            if generated {
                eprintln!(
                    "\nwarren: created the administrator `admin` with password\n\n    {}\n\n\
                     It is shown only this once. Log in and change it (POST /api/v1/me/password),\n\
                     or set another with `warren user passwd admin`.\n",
                    hash.1
                );
            }
            info!(
                security_event = true,
                event = "user_created",
                subject = "admin",
                "created the first administrator"
            );
            Ok(())
        }
        // Another master sharing the database got there first.
        Err(StoreError::Conflict(_)) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Single-user mode: the implicit user exists and has the configured
/// password (or hash); a changed password ends the old sessions.
async fn single_user(store: &Store, file: Option<&Path>) -> anyhow::Result<()> {
    let secret = match (file, std::env::var("WARREN_PASSWORD")) {
        (Some(path), _) => read_secret_file(path)?,
        (None, Ok(password)) if !password.is_empty() => password,
        _ => bail!("single-user mode needs a password: --password-file FILE or WARREN_PASSWORD"),
    };
    let given_hash = secret.starts_with("$argon2");
    if given_hash {
        if argon2::password_hash::phc::PasswordHash::new(&secret).is_err() {
            bail!("the single-user password looks like an argon2 hash but does not parse");
        }
    } else {
        password::check_policy(&secret).context("the single-user password")?;
    }
    let hash_of = |secret: String| async move {
        if given_hash {
            Ok::<_, anyhow::Error>(secret)
        } else {
            Ok(tokio::task::spawn_blocking(move || hash_now(&secret)).await??)
        }
    };
    match store.user_by_name(SINGLE_USER_NAME).await? {
        None => {
            let hash = hash_of(secret).await?;
            store
                .create_user(NewUser {
                    username: SINGLE_USER_NAME,
                    password_hash: &hash,
                    role: Role::User,
                    home_host: None,
                })
                .await?;
        }
        Some((user, stored)) => {
            let unchanged = if given_hash {
                stored == secret
            } else {
                let check = secret.clone();
                tokio::task::spawn_blocking(move || verify_now(&check, &stored)).await?
            };
            if !unchanged || user.disabled {
                let patch = UserPatch {
                    password_hash: Some(hash_of(secret).await?),
                    disabled: Some(false),
                    ..Default::default()
                };
                store.update_user(user.id, &patch).await?;
                info!("single-user password changed; earlier sessions ended");
            }
        }
    }
    Ok(())
}

/// The users' apps: `--apps FILE`, or `[apps.NAME]` tables of the
/// configuration file.
fn apps_config(
    args: &ServeArgs,
) -> anyhow::Result<Option<(std::path::PathBuf, crate::apps::AppsConfig)>> {
    let data_dir = &args.store.data_dir;
    if let Some(path) = &args.apps {
        return Ok(Some((
            path.clone(),
            crate::apps::AppsConfig::load(path, data_dir)?,
        )));
    }
    let Some(config) = &args.store.config else {
        return Ok(None);
    };
    let file = crate::config::ConfigFile::load(config)?;
    match file.apps {
        Some(table) => Ok(Some((
            config.clone(),
            crate::apps::AppsConfig::from_table(table, config, data_dir)?,
        ))),
        None => Ok(None),
    }
}

/// On SIGHUP: reads the configuration file again and applies what can
/// change while warren runs (the log level, users' default process
/// limits, the app definitions); names every other changed setting as
/// needing a restart. A file with problems changes nothing.
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    started: clap::ArgMatches,
    auth: Arc<crate::auth::Auth>,
    apps: Option<Arc<crate::apps::AppsHub>>,
    stop: CancellationToken,
) {
    use clap::FromArgMatches;
    // What the last reload applied; `started` is what the settings that
    // need a restart still are.
    let mut last = started.clone();
    loop {
        tokio::select! {
            _ = hangup.recv() => {}
            () = stop.cancelled() => return,
        }
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let parsed = match crate::config::parse(&args) {
            Ok(parsed) => parsed,
            Err(crate::config::ParseError::File(problems)) => {
                warn!(problems = %problems, "SIGHUP: the configuration file has problems; nothing changed");
                continue;
            }
            Err(crate::config::ParseError::Clap(err)) => {
                warn!(error = %err.render(), "SIGHUP: the settings do not parse; nothing changed");
                continue;
            }
        };
        let leaf = parsed.leaf().clone();
        let new = match ServeArgs::from_arg_matches(&leaf) {
            Ok(new) => new,
            Err(err) => {
                warn!(error = %err.render(), "SIGHUP: the settings do not parse; nothing changed");
                continue;
            }
        };
        let new_apps = match apps_config(&new) {
            Ok(config) => config.map(|(_, config)| config),
            Err(err) => {
                warn!(error = %format!("{err:#}"), "SIGHUP: the app definitions have problems; nothing changed");
                continue;
            }
        };
        let applied = crate::config::changes(leaf_of(&last), &leaf).0;
        let restart = crate::config::changes(leaf_of(&started), &leaf).1;
        if let Err(err) = crate::set_log_level(&new.log_level) {
            warn!(error = %err, "SIGHUP: cannot apply the log level");
        }
        // Emptying the credential cache while the database cannot be read
        // would end every session until it returns: then the new limits
        // reach sessions as they are next read instead.
        let reachable = auth.store().ping().await.is_ok();
        if !reachable {
            warn!("SIGHUP: the database is unavailable: new default limits reach each session when it is next read from it");
        }
        auth.set_default_limits(new.process_limits(), reachable);
        match (&apps, new_apps) {
            (Some(hub), config) => {
                let change = hub.reload(config.unwrap_or_default()).await;
                info!(
                    added = %change.added.join(" "),
                    changed = %change.changed.join(" "),
                    removed = %change.removed.join(" "),
                    "SIGHUP: app definitions reloaded (a changed app's running instances keep \
                     their definition until they stop; removed apps' are stopped)"
                );
            }
            (None, Some(_)) => {
                warn!("SIGHUP: apps are defined now but were not at start: they need a restart")
            }
            (None, None) => {}
        }
        let names = |settings: &[crate::config::Setting]| {
            settings
                .iter()
                .map(crate::config::name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        info!(
            applied = %names(&applied),
            "SIGHUP: configuration reloaded (the log level, users' default process limits and \
             app definitions; workers keep the log level they started with)"
        );
        if !restart.is_empty() {
            warn!(
                settings = %names(&restart),
                "SIGHUP: these changed settings take effect only after a restart"
            );
        }
        last = parsed.matches;
    }
}

/// The innermost subcommand's matches (those of `serve`).
fn leaf_of(matches: &clap::ArgMatches) -> &clap::ArgMatches {
    match matches.subcommand() {
        Some((_, sub)) => leaf_of(sub),
        None => matches,
    }
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

#[cfg(test)]
mod loopback_database_tests {
    use super::loopback_database;

    #[test]
    fn a_database_on_this_hosts_loopback_is_recognised() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/test",
            "postgres://u:p@localhost/db",
            "postgresql://[::1]:5432/x",
        ] {
            assert!(loopback_database(Some(url)).is_some(), "{url}");
        }
        for url in ["postgres://db.internal:5432/x", "postgres://10.0.0.5/x"] {
            assert_eq!(loopback_database(Some(url)), None, "{url}");
        }
        assert_eq!(loopback_database(None), None);
    }
}
