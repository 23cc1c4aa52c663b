//! The `warren` command line.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "warren", version, about = "A multi-user workspace server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: the master process and its pool of workers.
    Serve(Box<ServeArgs>),
    /// Manage users in the database (works while the server runs).
    #[command(subcommand)]
    User(UserCommand),
    /// Check a configuration file, or show the settings in effect.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// A running server's worker pool: its state, or a graceful restart.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Run one worker process (started by `warren serve`, not by hand).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file: every problem with its key and line
    /// (exit status 1), or nothing wrong (0).
    Check { file: PathBuf },
    /// The settings `warren serve` would run with, given these flags, the
    /// environment and --config, and where each came from (secrets hidden).
    Print(Box<ServeArgs>),
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Each slot: state, worker pid, uptime, restarts, load, memory.
    Status {
        #[command(flatten)]
        api: PoolArgs,
    },
    /// Restart workers gracefully: new requests wait, those in flight
    /// finish (up to --grace), then the worker is replaced; users' tasks
    /// and terminals on a restarted slot end with its worker.
    Restart {
        #[command(flatten)]
        api: PoolArgs,
        /// Every slot, one after another (each waits for the last to serve).
        #[arg(long)]
        rolling: bool,
        /// Only this slot.
        #[arg(long)]
        slot: Option<u32>,
        /// How long requests and streams in flight get to finish.
        #[arg(long, default_value = "30s", value_parser = parse_timeout)]
        grace: Duration,
    },
}

/// How `warren pool` reaches the server.
#[derive(Debug, Clone, Args)]
pub struct PoolArgs {
    /// warren's own HTTP listener (not the TLS front).
    #[arg(long, env = "WARREN_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An administrator's API token (its first line).
    #[arg(long, env = "WARREN_ADMIN_TOKEN_FILE")]
    pub token_file: PathBuf,
}

/// Where the accounts database is: shared by `serve` and `user`.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// A TOML file of settings (see deploy/warren.toml): a flag beats a
    /// WARREN_* variable, which beats the file, which beats the default.
    #[arg(long, env = "WARREN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for all state: database, users' files, worker sockets.
    #[arg(long, env = "WARREN_DATA_DIR", default_value = "./warren-data")]
    pub data_dir: PathBuf,
    /// `postgres://…` to use PostgreSQL [default: SQLite at DATA_DIR/warren.db].
    #[arg(long, env = "WARREN_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The database URL read from this file's first line (keeps a
    /// password out of the process list and the configuration file).
    #[arg(long, env = "WARREN_DATABASE_URL_FILE", value_name = "FILE")]
    pub database_url_file: Option<PathBuf>,
    /// The uids (and gids) given to users, one each, for their processes
    /// and files when warren runs as root (FIRST-LAST, inclusive): set it
    /// alike for `serve` and `user`, outside any range used by real
    /// accounts of this host.
    #[arg(long, env = "WARREN_UID_RANGE", default_value = "200000-265535")]
    pub uid_range: crate::store::UidRange,
}

impl StoreArgs {
    /// The database URL: --database-url, the first line of
    /// --database-url-file, or SQLite in the data directory.
    pub fn url(&self) -> anyhow::Result<String> {
        match (&self.database_url, &self.database_url_file) {
            (Some(_), Some(_)) => anyhow::bail!(
                "both --database-url and --database-url-file are set (flags, WARREN_* or the \
                 configuration file): use one"
            ),
            (Some(url), None) => Ok(url.clone()),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file).map_err(|err| {
                    anyhow::anyhow!("cannot read --database-url-file {}: {err}", file.display())
                })?;
                let url = text.lines().next().unwrap_or_default().trim();
                if url.is_empty() {
                    anyhow::bail!("--database-url-file {} is empty", file.display());
                }
                Ok(url.to_string())
            }
            (None, None) => Ok(crate::store::default_url(&self.data_dir)),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user (asks for the password, or reads --password-file).
    Add {
        name: String,
        /// Make the user an administrator.
        #[arg(long)]
        admin: bool,
        /// Read the password from this file (first line) instead of asking.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Several hosts: the host to hold the user's files [default: the
        /// running host with the fewest users].
        #[arg(long, value_parser = parse_host_name)]
        host: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List users.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Set a user's password (ends their sessions and API tokens).
    Passwd {
        name: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Make a user an administrator or a plain user (applies at once).
    SetRole {
        name: String,
        role: crate::store::Role,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Disable a user: they cannot log in; their sessions end at once.
    Disable {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Enable a disabled user.
    Enable {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete a user with their sessions and tokens.
    Delete {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print a new API token of a user (`Authorization: Bearer TOKEN`):
    /// how an administrator gets in when password login is off.
    Token {
        name: String,
        /// The token's name, as listed in GET /api/v1/me/tokens.
        #[arg(long, default_value = "cli")]
        label: String,
        /// `read` (GET and HEAD only) or `write`.
        #[arg(long, default_value = "write", value_parser = ["read", "write"])]
        scope: String,
        /// How long it lasts (e.g. 1h, 7d; at least a minute).
        #[arg(long, default_value = "1d", value_parser = parse_token_lifetime)]
        expires_in: Duration,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// End a user's login lockouts (on every running server within a second).
    Unlock {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Several hosts: move a user's files to another host. The user is
    /// paused (503 user_moving) while their files are copied and checked;
    /// on any failure nothing changes.
    Move {
        name: String,
        /// The host to hold the user's files from now on (one that is up).
        #[arg(long, value_parser = parse_host_name)]
        to: String,
        /// The cluster's shared secret (as for `serve`): signs the request
        /// to the target host.
        #[arg(long, env = "WARREN_CLUSTER_SECRET_FILE", value_name = "FILE")]
        cluster_secret_file: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on for HTTP.
    #[arg(long, env = "WARREN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Number of worker processes [default: number of CPUs].
    #[arg(long, env = "WARREN_WORKERS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,
    /// A worker silent for this long is killed and replaced.
    #[arg(long, env = "WARREN_HEARTBEAT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,
    /// How long a request for a restarting worker waits before failing with 503.
    #[arg(long, env = "WARREN_UNAVAILABLE_WAIT", default_value = "2s", value_parser = parse_duration)]
    pub unavailable_wait: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests get to finish.
    #[arg(long, env = "WARREN_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// `multi`: a user database with administrators; `single`: one implicit
    /// user with one password (--password-file or WARREN_PASSWORD).
    #[arg(long, env = "WARREN_MODE", value_enum, default_value = "multi")]
    pub mode: crate::auth::Mode,
    /// Single-user mode: the password (first line of the file), or an
    /// argon2 PHC hash of it (`$argon2id$…`).
    #[arg(long, env = "WARREN_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// First start (empty database): the `admin` user's password (first line
    /// of the file) instead of a random one printed once to stderr.
    #[arg(long, env = "WARREN_ADMIN_PASSWORD_FILE")]
    pub admin_password_file: Option<PathBuf>,
    /// Let anyone create an account with POST /api/v1/auth/signup
    /// (`--allow-signup false` turns off what the file turned on).
    #[arg(
        long,
        env = "WARREN_ALLOW_SIGNUP",
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub allow_signup: bool,
    /// A proxy (CIDR, repeatable or comma-separated) whose X-Forwarded-For
    /// and X-Forwarded-Proto are believed.
    #[arg(
        long = "trusted-proxy",
        env = "WARREN_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The URL users reach warren at (e.g. https://warren.example.org): the
    /// only Origin accepted for cookie-authenticated changes, and TLS when
    /// it is https [default: the request's own Host].
    #[arg(long, env = "WARREN_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,
    /// A session ends this long after login.
    #[arg(long, env = "WARREN_SESSION_TTL", default_value = "24h", value_parser = parse_duration)]
    pub session_ttl: Duration,
    /// A session unused for this long ends.
    #[arg(long, env = "WARREN_SESSION_IDLE", default_value = "1h", value_parser = parse_duration)]
    pub session_idle: Duration,
    /// Sessions per user; a new login ends the oldest beyond it.
    #[arg(long, env = "WARREN_MAX_SESSIONS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_sessions: u32,
    /// Password hashes computed at once [default: half the CPUs, at least 1].
    #[arg(long, env = "WARREN_HASH_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub hash_concurrency: Option<u32>,
    /// Storage quota of users without one of their own (bytes, or with a
    /// unit: 500MiB, 1GiB, 2TB).
    #[arg(long, env = "WARREN_DEFAULT_QUOTA", default_value = "1GiB", value_parser = parse_size)]
    pub default_quota: u64,
    /// Entries (files, directories, links...) each user may have: with
    /// the byte quota (which charges every entry at least 4 KiB), it keeps
    /// one user from using up the file system's inodes.
    #[arg(long, env = "WARREN_DEFAULT_FILE_QUOTA", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub default_file_quota: u64,
    /// Space users' writes always leave free on the file system of
    /// DATA_DIR/users, for the database, sockets and logs (at most a tenth
    /// of that file system); a write that would take it fails with 507.
    #[arg(long, env = "WARREN_DISK_RESERVE", default_value = "1GiB", value_parser = parse_size)]
    pub disk_reserve: u64,
    /// Inodes users' writes always leave free there (at most a tenth).
    #[arg(long, env = "WARREN_INODE_RESERVE", default_value_t = 10_000)]
    pub inode_reserve: u64,
    /// An upload whose client sends nothing for this long is abandoned
    /// (408); its temp file goes and its quota reservation is released.
    /// Any other request body that stalls this long also ends with 408.
    #[arg(long, env = "WARREN_UPLOAD_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_timeout)]
    pub upload_idle_timeout: Duration,
    /// Uploads and downloads (of files over 64 KiB) one user may have at
    /// once; more get 429 (each holds an open file in the master).
    #[arg(long, env = "WARREN_MAX_TRANSFERS_PER_USER", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_transfers_per_user: u32,
    /// Login attempts per minute from one client address.
    #[arg(long, env = "WARREN_LOGIN_RATE_PER_ADDRESS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_rate_per_address: u32,
    /// Login attempts per minute for one account.
    #[arg(long, env = "WARREN_LOGIN_RATE_PER_ACCOUNT", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_rate_per_account: u32,
    /// Failed logins within --lockout-window that lock an account.
    #[arg(long, env = "WARREN_LOCKOUT_FAILURES", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub lockout_failures: u32,
    #[arg(long, env = "WARREN_LOCKOUT_WINDOW", default_value = "15m", value_parser = parse_duration)]
    pub lockout_window: Duration,
    /// How long a locked account stays locked.
    #[arg(long, env = "WARREN_LOCKOUT_DURATION", default_value = "15m", value_parser = parse_duration)]
    pub lockout_duration: Duration,
    /// Audit events older than this are deleted (checked at start and at
    /// least every 10 minutes).
    #[arg(long, env = "WARREN_AUDIT_RETENTION", default_value = "90d", value_parser = parse_timeout)]
    pub audit_retention: Duration,
    /// Audit events caused by requests stored per minute per client address
    /// and per user; more are dropped and counted in warren_audit_dropped_total.
    #[arg(long, env = "WARREN_AUDIT_RATE", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub audit_rate: u32,
    /// The most audit events kept (the oldest beyond are deleted with the
    /// retention's pruning, at least every 10 minutes).
    #[arg(long, env = "WARREN_AUDIT_MAX_ROWS", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub audit_max_rows: u64,
    /// API tokens one user may create per minute (each is a database row,
    /// each revocation another): more are answered 429.
    #[arg(long, env = "WARREN_TOKEN_RATE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub token_rate: u32,
    /// A connection must deliver a request's complete headers within this
    /// long, from connecting or from the end of its previous response (so
    /// it is also the keep-alive idle timeout); then it is closed.
    #[arg(long, env = "WARREN_HEADER_READ_TIMEOUT", default_value = "15s", value_parser = parse_timeout)]
    pub header_read_timeout: Duration,
    /// A connection whose client accepts no byte of a response for this
    /// long (it stopped reading) is closed, like nginx's send_timeout.
    #[arg(long, env = "WARREN_SEND_TIMEOUT", default_value = "60s", value_parser = parse_timeout)]
    pub send_timeout: Duration,
    /// A request body that is not a file upload (JSON, at most 64 KiB) must
    /// arrive completely within this long, else 408 and the connection
    /// closes (uploads have --upload-idle-timeout instead).
    #[arg(long, env = "WARREN_BODY_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
    pub body_timeout: Duration,
    /// HTTP connections open at once; more are answered 503 and closed
    /// [default: half the open-file limit].
    #[arg(long, env = "WARREN_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// HTTP connections open at once from one peer address (trusted proxies
    /// are exempt) [default: 256, or a quarter of --max-connections if less].
    #[arg(long, env = "WARREN_MAX_CONNECTIONS_PER_ADDRESS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_address: Option<u32>,
    /// Tasks one user may run at once (admins may set another number per
    /// user); more are answered 429.
    #[arg(long, env = "WARREN_TASK_LIMIT", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub task_limit: u32,
    /// Output a task keeps (stdout and stderr together, at least 4KiB);
    /// beyond it the oldest bytes are dropped (half the limit at a time),
    /// with a marker where they were.
    #[arg(long, env = "WARREN_TASK_OUTPUT_LIMIT", default_value = "16MiB", value_parser = parse_output_limit)]
    pub task_output_limit: u64,
    /// Task records (with their output) kept per user: starting a task
    /// removes the user's oldest finished ones beyond this, so what one
    /// user adds to the database stays bounded.
    #[arg(long, env = "WARREN_TASK_HISTORY", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub task_history: u64,
    /// How long a cancelled task has between SIGTERM and SIGKILL.
    #[arg(long, env = "WARREN_TASK_CANCEL_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub task_cancel_grace: Duration,
    /// A terminal with no client attached and no output for this long is
    /// hung up (0: never).
    #[arg(long, env = "WARREN_TERMINAL_IDLE_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub terminal_idle_timeout: Duration,
    /// Terminals one user may have open at once (more: 429).
    #[arg(long, env = "WARREN_MAX_TERMINALS_PER_USER", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_terminals_per_user: u32,
    /// Output a terminal keeps for a client that attaches later.
    #[arg(long, env = "WARREN_TERMINAL_SCROLLBACK", default_value = "256KiB", value_parser = parse_scrollback)]
    pub terminal_scrollback: u64,
    /// Users' web apps (OpenCode, Jupyter Server, code-server …): a TOML
    /// file of `[apps.NAME]` definitions (see deploy/apps.toml), served at
    /// /user/{name}/{app}/. Without it, no apps.
    #[arg(long, env = "WARREN_APPS", value_name = "FILE")]
    pub apps: Option<PathBuf>,
    /// Memory of all of a user's processes together (cgroup memory.max; 0:
    /// no limit).
    #[arg(long, env = "WARREN_LIMIT_MEMORY", default_value = "2GiB", value_parser = parse_size)]
    pub limit_memory: u64,
    /// Processes (and threads) of a user's uid at once (RLIMIT_NPROC; 0: no
    /// limit).
    #[arg(long, env = "WARREN_LIMIT_PROCESSES", default_value_t = 512)]
    pub limit_processes: u64,
    /// Address space of each user process (RLIMIT_AS; 0: no limit).
    #[arg(long, env = "WARREN_LIMIT_ADDRESS_SPACE", default_value = "16GiB", value_parser = parse_size)]
    pub limit_address_space: u64,
    /// The largest file a user process may write (RLIMIT_FSIZE; 0: no limit).
    #[arg(long, env = "WARREN_LIMIT_FILE_SIZE", default_value = "4GiB", value_parser = parse_size)]
    pub limit_file_size: u64,
    /// Open descriptors of each user process (RLIMIT_NOFILE; 0: no limit).
    #[arg(long, env = "WARREN_LIMIT_OPEN_FILES", default_value_t = 4096)]
    pub limit_open_files: u64,
    /// CPU seconds of each user process (RLIMIT_CPU; 0: no limit).
    #[arg(long, env = "WARREN_LIMIT_CPU_SECONDS", default_value_t = 0)]
    pub limit_cpu_seconds: u64,
    /// Processes of a user's cgroup at once (pids.max; 0: no limit).
    #[arg(long, env = "WARREN_LIMIT_PIDS", default_value_t = 512)]
    pub limit_pids: u64,
    /// A user's share of the CPU against others' (cgroup cpu.weight,
    /// 1-10000; 100 is the kernel's default).
    #[arg(long, env = "WARREN_LIMIT_CPU_WEIGHT", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit_cpu_weight: u32,
    /// A second listener serving /metrics, /healthz and /readyz with its
    /// details to whoever reaches it (e.g. 127.0.0.1:9090).
    #[arg(long, env = "WARREN_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Confinement users' processes need before they may run: `required`
    /// (Landlock, a uid per user, cgroups with memory and pids limits,
    /// rlimits: refuse if any is missing), `best-effort` (what exists,
    /// each missing one logged), `off` [default: required as root,
    /// best-effort otherwise].
    #[arg(long, env = "WARREN_SANDBOX")]
    pub sandbox: Option<warren_worker::sandbox::Mode>,
    /// `none`: users' processes get a network namespace with loopback only.
    #[arg(long, env = "WARREN_SANDBOX_NETWORK", default_value = "host")]
    pub sandbox_network: warren_worker::sandbox::Network,
    /// A path users' processes may read, beyond the system's programs,
    /// libraries and /etc (repeatable or comma-separated).
    #[arg(
        long = "sandbox-read",
        env = "WARREN_SANDBOX_READ",
        value_delimiter = ','
    )]
    pub sandbox_read: Vec<PathBuf>,
    /// KEY=VALUE added to every user process's environment (repeatable).
    #[arg(long = "sandbox-env", env = "WARREN_SANDBOX_ENV", value_parser = parse_env_pair)]
    pub sandbox_env: Vec<(String, String)>,
    /// The cgroup v2 directory under which users' cgroups go: `auto`
    /// (OWN_CGROUP/warren-HASH, HASH naming DATA_DIR), `off`, or a path.
    #[arg(long, env = "WARREN_CGROUP_ROOT", default_value = "auto")]
    pub cgroup_root: warren_worker::sandbox::CgroupRoot,
    /// /metrics (and /readyz's details) on the main listener for
    /// `Authorization: Bearer TOKEN`, the token being the file's first line.
    #[arg(long, env = "WARREN_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// What is logged: a level (`info`, `debug`) or per-module directives
    /// (`info,warren_master::pool=debug`); SIGHUP applies a new one.
    #[arg(long, env = "WARREN_LOG", default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,
    /// `text` for people, `json` (one object per line) for journald and
    /// log shippers.
    #[arg(long, env = "WARREN_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// This host's name in a cluster of several hosts on one PostgreSQL
    /// database (turns cluster mode on; needs --host-url and
    /// --cluster-secret-file): lowercase letters, digits and `-`.
    #[arg(long, env = "WARREN_HOST_NAME", value_parser = parse_host_name)]
    pub host_name: Option<String>,
    /// Where the other hosts reach this one: `http://ADDRESS:PORT` of this
    /// server's own listener (not the TLS front), on a private network.
    #[arg(long, env = "WARREN_HOST_URL", value_parser = parse_host_url)]
    pub host_url: Option<String>,
    /// The secret every host of the cluster shares (the file's first line,
    /// at least 32 characters): it signs requests forwarded between hosts.
    #[arg(long, env = "WARREN_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// `off`: no logins with warren's own passwords (POST /auth/login and
    /// sign-up answer 403); users come in through OpenID Connect, JWTs or
    /// an identity header. Administrators still get API tokens from the CLI.
    #[arg(long, env = "WARREN_PASSWORD_LOGIN", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub password_login: bool,
    /// OpenID Connect login: the provider's issuer URL (discovery at
    /// ISSUER/.well-known/openid-configuration). Needs --oidc-client-id and
    /// a secret (--oidc-client-secret-file or WARREN_OIDC_CLIENT_SECRET).
    #[arg(long, env = "WARREN_OIDC_ISSUER", value_parser = parse_issuer)]
    pub oidc_issuer: Option<String>,
    /// The client id warren is registered with at the provider; register
    /// PUBLIC_URL/api/v1/auth/oidc/callback as its redirect URI.
    #[arg(long, env = "WARREN_OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,
    /// A file whose first line is the client secret (never a flag value,
    /// which `ps` shows; or the WARREN_OIDC_CLIENT_SECRET variable).
    #[arg(long, env = "WARREN_OIDC_CLIENT_SECRET_FILE", value_name = "FILE")]
    pub oidc_client_secret_file: Option<PathBuf>,
    /// The scopes asked for (space-separated; `openid` is always asked).
    #[arg(
        long,
        env = "WARREN_OIDC_SCOPES",
        default_value = "openid profile email"
    )]
    pub oidc_scopes: String,
    /// The ID token claim a new user's name comes from: `preferred_username`,
    /// `email` (its part before the @), `sub`, or another string claim.
    #[arg(
        long,
        env = "WARREN_OIDC_USERNAME_CLAIM",
        default_value = "preferred_username"
    )]
    pub oidc_username_claim: String,
    /// CLAIM=VALUE: a user is an administrator exactly when the claim is
    /// VALUE or a list holding it (e.g. groups=warren-admins), set at each
    /// login [default: roles are warren's own].
    #[arg(long, env = "WARREN_OIDC_ADMIN_CLAIM", value_parser = parse_claim_pair)]
    pub oidc_admin_claim: Option<(String, String)>,
    /// Whether a first login of an unknown identity creates its user
    /// (`false`: refused with 403; only identities that logged in before get in).
    #[arg(long, env = "WARREN_OIDC_CREATE_USERS", default_value = "true", action = clap::ArgAction::Set)]
    pub oidc_create_users: bool,
    /// Whether `Authorization: Bearer <JWT>` is accepted [default: true
    /// when a --jwt-* key source is given, unless it is for
    /// --identity-header-format jwt: a proxy's assertion must not also be
    /// usable straight at warren, past the proxy's own checks].
    #[arg(long, env = "WARREN_JWT_BEARER", action = clap::ArgAction::Set)]
    pub jwt_bearer: Option<bool>,
    /// JWT bearer tokens signed with this shared secret (HS256/384/512;
    /// the file's content, at least 32 bytes).
    #[arg(long, env = "WARREN_JWT_SECRET_FILE", value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// JWT bearer tokens signed by a key of this JWKS URL (RS256/ES256...).
    #[arg(long, env = "WARREN_JWT_JWKS_URL", value_parser = parse_issuer)]
    pub jwt_jwks_url: Option<String>,
    /// JWT bearer tokens signed by a key of this JWKS file.
    #[arg(long, env = "WARREN_JWT_JWKS_FILE", value_name = "FILE")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// The `iss` every JWT must carry (required with a key source).
    #[arg(long, env = "WARREN_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` every JWT must carry (required with a key source).
    #[arg(long, env = "WARREN_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The JWT claim a new user's name comes from.
    #[arg(long, env = "WARREN_JWT_USERNAME_CLAIM", default_value = "sub")]
    pub jwt_username_claim: String,
    /// CLAIM=VALUE mapping JWTs to the administrator role, as for OIDC.
    #[arg(long, env = "WARREN_JWT_ADMIN_CLAIM", value_parser = parse_claim_pair)]
    pub jwt_admin_claim: Option<(String, String)>,
    /// Whether a JWT of an unknown subject creates its user.
    #[arg(long, env = "WARREN_JWT_CREATE_USERS", default_value = "true", action = clap::ArgAction::Set)]
    pub jwt_create_users: bool,
    /// A header that names the user, believed only from --trusted-proxy
    /// peers (from anyone else it is ignored and logged as a security
    /// event): e.g. X-Forwarded-User (oauth2-proxy, nginx auth_request).
    #[arg(long, env = "WARREN_IDENTITY_HEADER", value_parser = parse_header_name)]
    pub identity_header: Option<String>,
    /// `plain`: the header's value is the username; `jwt`: it is a JWT,
    /// verified with the --jwt-* keys, issuer and audience; `alb`: AWS
    /// ALB's x-amzn-oidc-data (ES256, key by kid from the region's URL).
    #[arg(
        long,
        env = "WARREN_IDENTITY_HEADER_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    pub identity_header_format: IdentityHeaderFormat,
    /// `--identity-header-format alb`: the load balancer's ARN (the
    /// header's `signer` must be exactly this).
    #[arg(long, env = "WARREN_ALB_ARN")]
    pub alb_arn: Option<String>,
    /// `--identity-header-format alb`: the load balancer's AWS region.
    #[arg(long, env = "WARREN_ALB_REGION")]
    pub alb_region: Option<String>,
    /// Where the load balancer's public keys are ({region} and {kid} are
    /// filled in).
    #[arg(long, env = "WARREN_ALB_KEY_URL", default_value = crate::auth::jwt::ALB_KEY_URL, value_parser = parse_key_url)]
    pub alb_key_url: String,
    /// Whether an identity header naming an unknown user creates them.
    #[arg(long, env = "WARREN_IDENTITY_HEADER_CREATE_USERS", default_value = "true", action = clap::ArgAction::Set)]
    pub identity_header_create_users: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IdentityHeaderFormat {
    Plain,
    Jwt,
    /// AWS ALB's `x-amzn-oidc-data` (needs --alb-arn and --alb-region).
    Alb,
}

fn parse_token_lifetime(text: &str) -> Result<Duration, String> {
    let lifetime = parse_duration(text)?;
    if lifetime < Duration::from_secs(60) {
        return Err(format!("{text:?}: a token must last at least a minute"));
    }
    // As for tokens made through the API.
    if lifetime > Duration::from_secs(10 * 366 * 86_400) {
        return Err(format!("{text:?}: a token lasts at most 10 years"));
    }
    Ok(lifetime)
}

fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("{text:?}: use on or off")),
    }
}

/// An https URL (or http on a loopback address, for tests and providers
/// on the same host): an issuer, a JWKS URL.
pub fn parse_issuer(text: &str) -> Result<String, String> {
    crate::auth::jwt::check_secure_url(text)?;
    // Kept exactly: ID tokens must name the issuer as configured (some
    // providers' issuers end in a slash).
    Ok(text.to_string())
}

/// A key URL template: `{region}` and `{kid}` filled in, then the rule of
/// [`parse_issuer`].
fn parse_key_url(text: &str) -> Result<String, String> {
    let example = text
        .replace("{region}", "eu-west-1")
        .replace("{kid}", "00000000-0000-4000-8000-000000000000");
    crate::auth::jwt::check_secure_url(&example)?;
    Ok(text.to_string())
}

fn parse_claim_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((claim, value)) if !claim.is_empty() && !value.is_empty() => {
            Ok((claim.to_string(), value.to_string()))
        }
        _ => Err(format!(
            "{text:?}: use CLAIM=VALUE, e.g. groups=warren-admins"
        )),
    }
}

fn parse_header_name(text: &str) -> Result<String, String> {
    let name = axum::http::HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| format!("{text:?} is not a header name"))?;
    if matches!(
        name.as_str(),
        "authorization" | "cookie" | "host" | "x-forwarded-for" | "x-forwarded-proto"
    ) {
        return Err(format!(
            "{text:?} has another meaning; pick a header of its own"
        ));
    }
    Ok(name.as_str().to_string())
}

/// A host's name: 1-63 of `a-z`, `0-9` and `-`, starting with a letter or
/// digit (it goes into a cookie and nginx's `map`).
pub fn parse_host_name(text: &str) -> Result<String, String> {
    let good = !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-');
    if good {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a host name: 1-63 lowercase letters, digits and '-', \
             not starting with '-'"
        ))
    }
}

/// `http://HOST:PORT` with no path: where other hosts send this one's
/// users' requests.
fn parse_host_url(text: &str) -> Result<String, String> {
    let rest = text.strip_prefix("http://").ok_or_else(|| {
        format!(
            "{text:?} is not an http://HOST:PORT URL (hosts talk plain HTTP on a private network)"
        )
    })?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(format!("{text:?} must be http://HOST:PORT with no path"));
    }
    authority
        .parse::<axum::http::uri::Authority>()
        .map_err(|err| format!("{text:?} is not an http://HOST:PORT URL: {err}"))?;
    Ok(format!("http://{authority}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A `tracing` filter directive such as `info` or `warn,warren_master=debug`.
fn parse_log_level(text: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map(|_| text.to_string())
        .map_err(|err| format!("{text:?} is not a log level or filter: {err}"))
}

/// `https://host[:port]` (a path is allowed and ignored for the origin).
fn parse_public_url(text: &str) -> Result<String, String> {
    let origin = crate::http::extract::origin_of_url(text)
        .filter(|_| text.starts_with("http://") || text.starts_with("https://"))
        .ok_or_else(|| format!("{text:?} is not an http:// or https:// URL"))?;
    Ok(origin.to_ascii_lowercase())
}

impl ServeArgs {
    /// The process limits of users without overrides of their own.
    pub fn process_limits(&self) -> warren_protocol::ProcessLimits {
        warren_protocol::ProcessLimits {
            address_space: self.limit_address_space,
            cpu_seconds: self.limit_cpu_seconds,
            processes: self.limit_processes,
            file_size: self.limit_file_size,
            open_files: self.limit_open_files,
            memory: self.limit_memory,
            pids: self.limit_pids,
            cpu_weight: self.limit_cpu_weight,
            tasks: self.task_limit,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub slot: u32,
    #[arg(long)]
    pub socket: PathBuf,
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_interval_ms: u64,
    /// Where users' directories live; without it, no file operations.
    #[arg(long)]
    pub users_dir: Option<PathBuf>,
    /// Bytes users' writes leave free on the users' file system.
    #[arg(long, default_value_t = 1 << 30)]
    pub disk_reserve_bytes: u64,
    /// Inodes users' writes leave free on the users' file system.
    #[arg(long, default_value_t = 10_000)]
    pub disk_reserve_inodes: u64,
    /// The sandbox mode the master resolved (`required`, ...).
    #[arg(long)]
    pub sandbox: Option<warren_worker::sandbox::Mode>,
    #[arg(long, default_value = "host")]
    pub sandbox_network: warren_worker::sandbox::Network,
    #[arg(long = "sandbox-read")]
    pub sandbox_read: Vec<PathBuf>,
    #[arg(long = "sandbox-env", value_parser = parse_env_pair)]
    pub sandbox_env: Vec<(String, String)>,
    /// The v2 base cgroup the master made (or `auto`, `off`).
    #[arg(long, default_value = "auto")]
    pub cgroup_root: warren_worker::sandbox::CgroupRoot,
    /// The master's --log-level and --log-format at the worker's start.
    #[arg(long, default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// `KEY=VALUE` with a non-empty key free of `=` and NUL.
pub fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !text.contains('\0') => {
            Ok((key.to_string(), value.to_string()))
        }
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Parses a byte size: `1048576`, `512KiB`, `500MiB`, `1GiB`, `2TiB`, or
/// decimal `kB`, `MB`, `GB`, `TB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 500MiB or 1GiB"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use KiB, MiB, GiB or TiB"
            ))
        }
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A task output limit: a size of at least what the worker keeps anyway.
/// A scrollback: 0 to 16 MiB.
fn parse_scrollback(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    if size > 16 << 20 {
        return Err(format!("{text:?} is more than 16 MiB of scrollback"));
    }
    Ok(size)
}

fn parse_output_limit(text: &str) -> Result<u64, String> {
    let limit = parse_size(text)?;
    let least = warren_worker::tasks::output::MIN_OUTPUT_LIMIT;
    if limit < least {
        return Err(format!(
            "{text:?} is less than the least output kept ({least} bytes)"
        ));
    }
    Ok(limit)
}

/// Parses `250ms`, `5s`, `2m`, `24h` or a bare number of seconds.
/// A duration of at least one second: a timeout shorter than that would end
/// healthy requests.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < Duration::from_secs(1) {
        return Err(format!("{text:?} is too short for a timeout (at least 1s)"));
    }
    Ok(duration)
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 5s, 2m or 24h"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ms, s, m, h or d"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|err| format!("{text:?}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sandbox_flags_parse() {
        assert_eq!(parse_env_pair("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(
            parse_env_pair("EMPTY="),
            Ok(("EMPTY".into(), String::new()))
        );
        for bad in ["=x", "novalue", "A=\0"] {
            assert!(parse_env_pair(bad).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from([
            "warren",
            "serve",
            "--sandbox",
            "best-effort",
            "--sandbox-network",
            "none",
            "--sandbox-read",
            "/srv/a,/srv/b",
            "--sandbox-env",
            "PIP_INDEX_URL=http://mirror",
            "--cgroup-root",
            "off",
        ])
        .expect("parse");
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        use warren_worker::sandbox::{CgroupRoot, Mode, Network};
        assert_eq!(args.sandbox, Some(Mode::BestEffort));
        assert_eq!(args.sandbox_network, Network::None);
        assert_eq!(
            args.sandbox_read,
            [PathBuf::from("/srv/a"), PathBuf::from("/srv/b")]
        );
        assert_eq!(
            args.sandbox_env,
            [("PIP_INDEX_URL".into(), "http://mirror".into())]
        );
        assert_eq!(args.cgroup_root, CgroupRoot::Off);
        assert!(Cli::try_parse_from(["warren", "serve", "--sandbox", "lax"]).is_err());
    }

    #[test]
    fn timeouts_are_at_least_a_second() {
        assert_eq!(parse_timeout("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("500ms").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        let cases = [
            ("250ms", Some(Duration::from_millis(250))),
            ("5s", Some(Duration::from_secs(5))),
            ("2", Some(Duration::from_secs(2))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("2m", Some(Duration::from_secs(120))),
            ("5h", Some(Duration::from_secs(5 * 3600))),
            ("90d", Some(Duration::from_secs(90 * 86400))),
            ("5w", None),
            ("", None),
            ("-1s", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text).ok(), expected, "{text:?}");
        }
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn the_default_process_limits_are_the_protocol_defaults() {
        let cli = Cli::try_parse_from(["warren", "serve"]).expect("parse");
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(
            args.process_limits(),
            warren_protocol::ProcessLimits::default()
        );
        assert_eq!(args.store.uid_range, crate::store::UidRange::default());
        assert_eq!(args.task_output_limit, 16 << 20);
    }

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
