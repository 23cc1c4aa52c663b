//! Who is asking: logins, sessions, API tokens, and their validation.
//!
//! Credentials are 256-bit random secrets; the database holds only their
//! SHA-256. Validation goes through a moka cache keyed by that hash, so a
//! steady stream of authenticated requests makes no database query:
//! `last_seen` is kept in memory and written in batches, and revocations
//! (logout, revoke, password change, disable, delete; from this master,
//! another master or the operator CLI) arrive through the `auth_events`
//! feed that every master polls, and drop the matching cache entries.
//! A generation counter makes sure a lookup that raced a revocation never
//! re-inserts the revoked credential.

pub mod external;
pub mod jwt;
pub mod oidc;
pub mod password;
pub mod throttle;
pub mod token;

use crate::metrics::AuthMetrics;
use crate::store::{
    self, AuditEntry, EventKind, NewApiToken, NewSession, Role, Store, StoreError, User,
};
use password::{Hasher, PasswordError};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use throttle::{AuditLimiter, Refusal, Throttle, ThrottleConfig};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;
use warren_protocol::{UserCtx, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A user database with an admin (default).
    Multi,
    /// One implicit user with one password; no user administration.
    Single,
}

/// The name of the implicit user in single-user mode.
pub const SINGLE_USER_NAME: &str = "owner";

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mode: Mode,
    pub session_ttl: Duration,
    pub idle_timeout: Duration,
    /// Sessions per user unless the user has their own limit.
    pub max_sessions: u32,
    pub hash_concurrency: usize,
    pub hash_queue_timeout: Duration,
    pub throttle: ThrottleConfig,
    /// How often the revocation feed is read.
    pub poll_interval: Duration,
    /// How often batched `last_seen` times are written.
    pub flush_interval: Duration,
    /// Storage quota of users without one of their own.
    pub default_quota_bytes: u64,
    /// Audit events older than this are deleted.
    pub audit_retention: Duration,
    /// Audit events caused by requests stored per minute (also the burst)
    /// per client address and per user; more are counted and dropped.
    pub audit_rate_per_minute: u32,
    /// The most audit events kept; the oldest beyond it are deleted.
    pub audit_max_rows: u64,
    /// API tokens one user may create per minute (also the burst).
    pub token_rate_per_minute: u32,
    /// Entry quota (files, directories...) of every user.
    pub default_quota_files: u64,
    /// Users' process limits unless an admin set others for them.
    pub default_limits: warren_protocol::ProcessLimits,
    /// Whether users' processes run as their own uids: only when warren
    /// runs as root (nothing else can change a process's owner).
    pub per_user_uids: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: Mode::Multi,
            session_ttl: Duration::from_secs(24 * 3600),
            idle_timeout: Duration::from_secs(3600),
            max_sessions: 5,
            hash_concurrency: default_hash_concurrency(),
            hash_queue_timeout: Duration::from_secs(30),
            throttle: ThrottleConfig::default(),
            poll_interval: Duration::from_millis(250),
            flush_interval: Duration::from_secs(10),
            default_quota_bytes: 1 << 30,
            audit_retention: Duration::from_secs(90 * 24 * 3600),
            audit_rate_per_minute: 60,
            audit_max_rows: 1_000_000,
            token_rate_per_minute: 30,
            default_quota_files: 100_000,
            default_limits: warren_protocol::ProcessLimits::default(),
            per_user_uids: rustix::process::geteuid().is_root(),
        }
    }
}

/// Half the cores (at least one): a login storm leaves the rest for serving.
pub fn default_hash_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required")]
    Unauthenticated,
    #[error("wrong username or password")]
    InvalidCredentials,
    #[error("too many login attempts; retry in {} s", throttle::retry_after_secs(*retry_after))]
    Throttled { retry_after: Duration, locked: bool },
    /// A change a user makes too often (creating API tokens).
    #[error("too many changes; retry in {} s", throttle::retry_after_secs(*.0))]
    TooFast(Duration),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Random(#[from] token::RandomError),
    /// A JWT (bearer token, ID token, identity header) that does not pass.
    #[error(transparent)]
    Token(#[from] jwt::JwtError),
    /// An identity from outside that warren does not let in (unknown and
    /// not created, disabled, an unusable name).
    #[error("{0}")]
    IdentityRefused(String),
    /// An identity from outside whose username another account holds.
    #[error("{0}")]
    UsernameTaken(String),
    /// An OpenID Connect callback without a login it belongs to.
    #[error("{0}")]
    LoginState(String),
    /// The OpenID provider could not be reached or answered nonsense.
    #[error("the identity provider: {0}")]
    Provider(String),
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Safe methods only (GET, HEAD).
    Read,
    /// Everything the user may do.
    Write,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Session {
        id: Uuid,
    },
    Token {
        id: Uuid,
        scope: Scope,
    },
    /// A JWT bearer token or a trusted proxy's identity header (see
    /// [`external`]): no row of its own, lives until the token's `exp`
    /// (or the cache's TTL) unless its user is disabled or deleted.
    External,
}

/// An authenticated caller, as cached.
#[derive(Debug)]
pub struct Principal {
    pub user_id: Uuid,
    pub username: String,
    pub role: Role,
    pub kind: CredentialKind,
    pub token_hash: String,
    /// What the worker is told about the user.
    pub ctx: UserCtx,
    /// Absolute expiry (ms since the epoch); `i64::MAX` for none.
    pub expires_at: i64,
    /// The host that holds the user's files (cluster mode).
    pub home_host: Option<Arc<str>>,
    /// Set while the user's files move to that host.
    pub moving_to: Option<Arc<str>>,
    last_seen: AtomicI64,
    flushed: AtomicI64,
}

impl Principal {
    fn new(
        user: &User,
        kind: CredentialKind,
        token_hash: String,
        expires_at: i64,
        last_seen: i64,
        config: &AuthConfig,
        default_limits: warren_protocol::ProcessLimits,
    ) -> Self {
        Principal {
            user_id: user.id,
            username: user.username.clone(),
            role: user.role,
            kind,
            token_hash,
            ctx: ctx_of(user, config, default_limits),
            expires_at,
            home_host: user.home_host.as_deref().map(Arc::from),
            moving_to: user.moving_to.as_deref().map(Arc::from),
            last_seen: AtomicI64::new(last_seen),
            flushed: AtomicI64::new(last_seen),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn session_id(&self) -> Option<Uuid> {
        match self.kind {
            CredentialKind::Session { id } => Some(id),
            CredentialKind::Token { .. } | CredentialKind::External => None,
        }
    }
}

/// What the workers are told about `user`: the server's defaults (quotas,
/// process limits) with the user's own values applied, and the user's uid
/// only when warren runs as root.
fn ctx_of(
    user: &User,
    config: &AuthConfig,
    default_limits: warren_protocol::ProcessLimits,
) -> UserCtx {
    let default_quota = (config.default_quota_bytes, config.default_quota_files);
    UserCtx {
        id: UserId(*user.id.as_bytes()),
        name: user.username.clone(),
        role: match user.role {
            Role::Admin => warren_protocol::Role::Admin,
            Role::User => warren_protocol::Role::User,
        },
        quota_bytes: user
            .storage_quota_bytes
            .map_or(default_quota.0, |quota| quota.max(0) as u64),
        quota_files: user
            .file_quota
            .map_or(default_quota.1, |quota| quota.max(0) as u64),
        uid: if config.per_user_uids {
            user.uid.and_then(|uid| u32::try_from(uid).ok())
        } else {
            None
        },
        limits: user
            .limits
            .map_or(default_limits, |own| own.apply(default_limits)),
    }
}

/// The name a login attempt is throttled and audited under: lower-cased,
/// at most 64 bytes (longer names cannot exist, and must not bloat the
/// throttle's memory or the audit log).
fn account_key(username: &str) -> String {
    let mut end = username.len().min(64);
    while !username.is_char_boundary(end) {
        end -= 1;
    }
    username[..end].to_ascii_lowercase()
}

fn refused(refusal: Refusal) -> AuthError {
    match refusal {
        Refusal::RateLimited { retry_after } => AuthError::Throttled {
            retry_after,
            locked: false,
        },
        Refusal::LockedOut { retry_after } => AuthError::Throttled {
            retry_after,
            locked: true,
        },
    }
}

/// Where this master is in the revocation feed.
struct Feed {
    /// The last event applied.
    last: i64,
    /// When the feed was last read.
    last_read: std::time::Instant,
    /// Since when reads fail, and how many did in a row.
    failing_since: Option<std::time::Instant>,
    failures: u32,
    /// No read before this (back-off while reads fail).
    retry_at: Option<std::time::Instant>,
}

impl Feed {
    fn new(last: i64) -> Feed {
        Feed {
            last,
            last_read: std::time::Instant::now(),
            failing_since: None,
            failures: 0,
            retry_at: None,
        }
    }
}

/// A successful login.
pub struct Login {
    pub user: User,
    pub token: String,
    pub session: store::SessionRow,
}

/// Where a request came from, for throttling and the audit log.
#[derive(Debug, Clone)]
pub struct Client {
    pub address: IpAddr,
    pub user_agent: Option<String>,
}

pub struct Auth {
    store: Store,
    /// The same database, counting its queries as background work.
    background_store: Store,
    hasher: Hasher,
    throttle: Throttle,
    audit_limiter: AuditLimiter,
    /// API token creations per user (`--token-rate`).
    token_creations: throttle::UserChangeLimiter,
    cache: moka::sync::Cache<String, Arc<Principal>>,
    /// Hashes recently found to be no credential at all, so a flood of
    /// made-up tokens does not become a flood of queries. Safe to keep: a
    /// new credential is a fresh random secret that no one sent before.
    unknown: moka::sync::Cache<String, ()>,
    /// Bumped by every invalidation; a cache fill that started before a
    /// bump is not inserted.
    generation: AtomicU64,
    /// Told what every invalidation dropped, so a long-lived stream
    /// (terminal, event stream, followed output, an app's answer) whose
    /// credential it was looks again at once: see [`CredentialWatch`].
    changes: tokio::sync::broadcast::Sender<Invalidated>,
    /// Every user the revocation feed names (deleted, disabled, changed),
    /// for whoever has more to do about them than forgetting credentials.
    user_events: tokio::sync::broadcast::Sender<Uuid>,
    config: AuthConfig,
    /// `config.default_limits`, replaceable by a reload.
    default_limits: arc_swap::ArcSwap<warren_protocol::ProcessLimits>,
    metrics: AuthMetrics,
}

/// What an invalidation dropped from the cache.
#[derive(Debug, Clone)]
pub enum Invalidated {
    /// One credential, by its token's hash.
    Credential(String),
    /// Every credential of a user (disabled, deleted, a new password, a
    /// new role or limits).
    User(Uuid),
    /// Every credential: the revocation feed could not be read for so long
    /// that events may have been pruned before this master saw them.
    Everything,
}

/// How long a credential stays in the cache without being read from the
/// database again, however it is used: a backstop, since the revocation
/// feed invalidates entries at once. It also bounds how long a credential
/// revoked elsewhere keeps working here while this master cannot read the
/// feed (a database outage, or a network cut between this host and it).
pub const CREDENTIAL_CACHE_TTL: Duration = Duration::from_secs(600);

/// How long revocation events stay in `auth_events` (the background loop
/// prunes older ones).
pub const FEED_RETENTION: Duration = Duration::from_secs(3600);

// A master that could not read the feed for a while and then resumes reads
// every event after the last one it applied, unless events were pruned
// meanwhile. Those are older than the retention, so older than any entry
// still cached (its fill read the database after they were written):
// pruning can never hide a revocation from a live cache entry.
const _: () = assert!(CREDENTIAL_CACHE_TTL.as_secs() < FEED_RETENTION.as_secs());

/// After this long without reading the feed, the cache is emptied and every
/// watched stream looks at its credential again when the feed is read
/// again: a stream outlives the cache's TTL, so a pruned event could be
/// one it needed.
const FEED_GAP_LIMIT: Duration = Duration::from_secs(FEED_RETENTION.as_secs() / 2);

/// The longest wait between two reads of the feed while they fail (each
/// failed read already took the database's connection timeout).
const FEED_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Whether a credential still stands, for a stream that lives on after the
/// request that opened it. A request is checked when it arrives; a stream
/// has no next request, so it holds one of these: [`CredentialWatch::ended`]
/// resolves once the credential is logged out, revoked, its user disabled,
/// deleted, given a new password or (with `admin`) no longer an
/// administrator, here, through another master or the CLI, or once it
/// expires; [`CredentialWatch::holds`] answers before each thing the stream
/// sends, so nothing goes out after the end is known. It looks at the
/// credential again (the cache, else one query) only when an invalidation
/// names it or its user, so other users' logouts cost it nothing; the
/// absolute expiry is a timer. Idle expiry does not apply: an open stream
/// is the user's activity. While the database cannot answer, the
/// credential is taken to stand and looked at again at the next change.
pub struct CredentialWatch {
    auth: Arc<Auth>,
    changes: tokio::sync::broadcast::Receiver<Invalidated>,
    principal: Arc<Principal>,
    admin: bool,
    /// An invalidation named this credential (or more were missed than the
    /// channel holds) and it was not looked at since.
    stale: bool,
}

impl CredentialWatch {
    fn concerns(&self, invalidated: &Invalidated) -> bool {
        match invalidated {
            Invalidated::Credential(hash) => *hash == self.principal.token_hash,
            Invalidated::User(user) => *user == self.principal.user_id,
            Invalidated::Everything => true,
        }
    }

    /// Notes every invalidation received so far.
    fn drain(&mut self) {
        use tokio::sync::broadcast::error::TryRecvError;
        loop {
            match self.changes.try_recv() {
                Ok(invalidated) => self.stale |= self.concerns(&invalidated),
                Err(TryRecvError::Lagged(_)) => self.stale = true,
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            }
        }
    }

    fn expired(&self) -> bool {
        store::now_ms() >= self.principal.expires_at
    }

    /// Whether the credential still stands (and belongs to an
    /// administrator, if asked). Costs nothing unless an invalidation named
    /// it since the last look.
    pub async fn holds(&mut self) -> bool {
        self.drain();
        if self.expired() {
            return false;
        }
        if !self.stale {
            return true;
        }
        let holds = self.look().await;
        self.stale = false;
        holds
    }

    /// Resolves once the credential no longer stands.
    pub async fn ended(&mut self) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            if !self.holds().await {
                return;
            }
            let left = self
                .principal
                .expires_at
                .saturating_sub(store::now_ms())
                .max(0);
            // Far-off expiries (API tokens without one) are not timers.
            let left = Duration::from_millis(u64::try_from(left).unwrap_or(0))
                .min(Duration::from_secs(86_400));
            tokio::select! {
                received = self.changes.recv() => match received {
                    Ok(invalidated) => self.stale |= self.concerns(&invalidated),
                    Err(RecvError::Lagged(_)) => self.stale = true,
                    // The Auth is gone, and with it the server.
                    Err(RecvError::Closed) => return,
                },
                () = tokio::time::sleep(left) => {}
            }
        }
    }

    async fn look(&self) -> bool {
        match self.auth.recheck(&self.principal).await {
            Ok(now) => !self.admin || now.is_admin(),
            Err(AuthError::Unauthenticated) => false,
            Err(err) => {
                debug!(error = %err, "cannot look at a stream's credential again");
                true
            }
        }
    }
}

impl Auth {
    pub fn new(
        store: Store,
        config: AuthConfig,
        metrics: AuthMetrics,
    ) -> Result<Arc<Auth>, AuthError> {
        Ok(Arc::new(Auth {
            hasher: Hasher::new(config.hash_concurrency, config.hash_queue_timeout)?,
            throttle: Throttle::new(config.throttle.clone()),
            audit_limiter: AuditLimiter::new(config.audit_rate_per_minute),
            token_creations: throttle::UserChangeLimiter::new(config.token_rate_per_minute),
            cache: moka::sync::Cache::builder()
                .max_capacity(200_000)
                // A backstop only: revocations invalidate entries at once.
                .time_to_live(CREDENTIAL_CACHE_TTL)
                .support_invalidation_closures()
                .build(),
            unknown: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            generation: AtomicU64::new(0),
            changes: tokio::sync::broadcast::Sender::new(1024),
            user_events: tokio::sync::broadcast::Sender::new(1024),
            background_store: store.counting(metrics.background_queries()),
            store,
            default_limits: arc_swap::ArcSwap::from_pointee(config.default_limits),
            config,
            metrics,
        }))
    }

    /// What a worker is told about `user` (for work not done on behalf of
    /// a caller holding their credentials, such as an admin's usage report).
    pub fn ctx_of(&self, user: &User) -> UserCtx {
        ctx_of(user, &self.config, **self.default_limits.load())
    }

    /// New process limits for users without their own (SIGHUP): each
    /// process started from now on gets them. Cached credentials carry
    /// the old ones, so with `invalidate` the cache is emptied (the next
    /// request of each session reads it again; no session ends); without
    /// (the database cannot be read), they reach each session when it is
    /// next read.
    pub fn set_default_limits(&self, limits: warren_protocol::ProcessLimits, invalidate: bool) {
        if **self.default_limits.load() == limits {
            return;
        }
        self.default_limits.store(Arc::new(limits));
        if invalidate {
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.cache.invalidate_all();
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The users the revocation feed names from now on, on every master
    /// (a receiver that falls over 1024 behind is told it lagged).
    pub fn user_events(&self) -> tokio::sync::broadcast::Receiver<Uuid> {
        self.user_events.subscribe()
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// Checks a username and password and opens a session.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client: &Client,
    ) -> Result<Login, AuthError> {
        let account = account_key(username);
        if let Err(refusal) = self.throttle.admit(client.address, &account) {
            let locked = matches!(refusal, Refusal::LockedOut { .. });
            self.metrics
                .login(if locked { "locked" } else { "throttled" });
            // Logged, not stored: a flood of refusals must not become a flood
            // of database writes. The lockout itself was stored. The log
            // lines share the audit rate limit, so a flood of refusals is
            // not a flood of log lines either.
            const EVENT: &str = "login_throttled";
            if self.audit_limiter.admit(None, Some(client.address)) {
                info!(
                    security_event = true,
                    event = EVENT,
                    actor = %account,
                    address = %client.address,
                    locked,
                    "security event"
                );
            } else {
                self.audit_dropped(EVENT, None, Some(&client.address.to_string()));
            }
            return Err(refused(refusal));
        }
        // Only names that could exist are looked up (ASCII, at most 64
        // bytes: PostgreSQL's lower() would otherwise fold look-alikes such
        // as "admİn" onto real accounts), but every attempt costs one hash.
        let lookup = username.is_ascii() && username.len() <= 64;
        let found = if lookup && password.len() <= password::MAX_PASSWORD_BYTES {
            self.store.user_by_name(username).await?
        } else {
            None
        };
        let matched = self
            .hasher
            .verify(password, found.as_ref().map(|(_, hash)| hash.as_str()))
            .await?;
        let (user, hash) = match found {
            Some((user, hash)) if matched && !user.disabled => (user, hash),
            found => {
                let reason = match found {
                    None => "unknown user",
                    Some((user, _)) if user.disabled && matched => "account disabled",
                    Some(_) => "wrong password",
                };
                return Err(self.failed_login(&account, reason, client).await);
            }
        };
        self.throttle.record_success(&account, client.address);
        let login = match self.open_session(&user, &hash, client).await {
            // The password was reset, or the user disabled or deleted, while
            // the hash was being checked.
            Err(AuthError::Store(StoreError::Stale)) => {
                return Err(self
                    .failed_login(&account, "account changed during login", client)
                    .await)
            }
            other => other?,
        };
        self.metrics.login("success");
        self.audit(AuditEntry {
            event: "login",
            actor_id: Some(user.id.to_string()),
            actor_name: Some(user.username.clone()),
            subject: Some(login.session.id.to_string()),
            address: Some(client.address.to_string()),
            ..Default::default()
        })
        .await;
        Ok(login)
    }

    /// Counts and audits a failed login (and the lockout it may cause).
    async fn failed_login(&self, account: &str, reason: &str, client: &Client) -> AuthError {
        self.metrics.login("failure");
        let locked = self.throttle.record_failure(account, client.address);
        self.audit(AuditEntry {
            event: "login_failed",
            actor_name: Some(account.to_string()),
            address: Some(client.address.to_string()),
            detail: Some(reason.into()),
            ..Default::default()
        })
        .await;
        if locked {
            self.audit_lockout(account, client).await;
        }
        AuthError::InvalidCredentials
    }

    async fn audit_lockout(&self, account: &str, client: &Client) {
        self.audit(AuditEntry {
            event: "lockout",
            actor_name: Some(account.to_string()),
            address: Some(client.address.to_string()),
            detail: Some(format!(
                "{} failures; locked for {} s from this address",
                self.config.throttle.lockout_failures,
                self.config.throttle.lockout_duration.as_secs()
            )),
            ..Default::default()
        })
        .await;
    }

    /// Opens a session for a user whose password was just checked against
    /// `password_hash` (the session is refused as stale if that changed).
    pub async fn open_session(
        &self,
        user: &User,
        password_hash: &str,
        client: &Client,
    ) -> Result<Login, AuthError> {
        let token = token::new_session_token()?;
        let token_hash = token::hash_token(&token);
        let max_sessions = user
            .max_sessions
            .unwrap_or(i64::from(self.config.max_sessions));
        let address = client.address.to_string();
        let (session, evicted) = self
            .store
            .create_session(NewSession {
                token_hash: &token_hash,
                user_id: user.id,
                password_hash,
                expires_at: store::now_ms() + self.config.session_ttl.as_millis() as i64,
                address: Some(&address),
                user_agent: client.user_agent.as_deref(),
                max_sessions,
            })
            .await?;
        for hash in &evicted {
            self.forget(hash);
        }
        if !evicted.is_empty() {
            self.audit(AuditEntry {
                event: "sessions_evicted",
                actor_id: Some(user.id.to_string()),
                actor_name: Some(user.username.clone()),
                subject: Some(user.username.clone()),
                address: Some(address.clone()),
                detail: Some(format!(
                    "{} oldest beyond the limit of {max_sessions}",
                    evicted.len()
                )),
            })
            .await;
        }
        if let Err(err) = self.store.record_login(user.id, session.created_at).await {
            warn!(error = %err, "cannot record the login time");
        }
        Ok(Login {
            user: user.clone(),
            token,
            session,
        })
    }

    /// The caller behind a session or API token, or `Unauthenticated`.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        if !token::plausible(token) {
            return Err(AuthError::Unauthenticated);
        }
        let hash = token::hash_token(token);
        let now = store::now_ms();
        if let Some(principal) = self.cache.get(&hash) {
            self.metrics.cache("hit");
            return self.check_live(principal, now);
        }
        self.metrics.cache("miss");
        if self.unknown.contains_key(&hash) {
            return Err(AuthError::Unauthenticated);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let api_token = token.starts_with(token::API_TOKEN_PREFIX);
        let principal = match self.store.credential_by_hash(&hash, api_token).await? {
            None => {
                self.unknown.insert(hash, ());
                return Err(AuthError::Unauthenticated);
            }
            Some(found) => self
                .principal_of(found, hash.clone())
                .ok_or(AuthError::Unauthenticated)?,
        };
        let principal = Arc::new(principal);
        if self.generation.load(Ordering::Acquire) == generation {
            self.cache.insert(hash.clone(), principal.clone());
            // An invalidation between the check and the insert: undo, and
            // let the next request read the database again.
            if self.generation.load(Ordering::Acquire) != generation {
                self.cache.invalidate(&hash);
            }
        }
        self.check_live(principal, now)
    }

    /// The caller a stored credential stands for; `None` when its user is
    /// disabled or an API token's scope is not one warren knows.
    fn principal_of(&self, found: store::Credential, hash: String) -> Option<Principal> {
        let (user, kind, expires_at, last_seen) = match found {
            store::Credential::Session(session, user) => (
                user,
                CredentialKind::Session { id: session.id },
                session.expires_at,
                session.last_seen_at,
            ),
            store::Credential::Token(token, user) => (
                user,
                CredentialKind::Token {
                    id: token.id,
                    scope: Scope::parse(&token.scope)?,
                },
                token.expires_at.unwrap_or(i64::MAX),
                token.last_used_at.unwrap_or(token.created_at),
            ),
        };
        if user.disabled {
            return None;
        }
        Some(Principal::new(
            &user,
            kind,
            hash,
            expires_at,
            last_seen,
            &self.config,
            **self.default_limits.load(),
        ))
    }

    /// Absolute and idle expiry; a live credential's `last_seen` moves on.
    fn check_live(&self, principal: Arc<Principal>, now: i64) -> Result<Arc<Principal>, AuthError> {
        let idle_limit = self.config.idle_timeout.as_millis() as i64;
        let idle = matches!(principal.kind, CredentialKind::Session { .. })
            && now - principal.last_seen.load(Ordering::Relaxed) > idle_limit;
        if now >= principal.expires_at || idle {
            debug!(user = %principal.username, idle, "credential expired");
            self.forget(&principal.token_hash);
            return Err(AuthError::Unauthenticated);
        }
        principal.last_seen.fetch_max(now, Ordering::Relaxed);
        Ok(principal)
    }

    /// Drops one credential from this master's cache.
    fn forget(&self, token_hash: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate(token_hash);
        // No receiver is fine.
        let _ = self
            .changes
            .send(Invalidated::Credential(token_hash.to_string()));
    }

    /// A watch on `principal`'s credential for a stream that lives on after
    /// its request (a terminal, an event stream, followed output, an app's
    /// answer or WebSocket): see [`CredentialWatch`]. With `admin`, the
    /// credential must also still belong to an administrator.
    pub fn watch(self: &Arc<Self>, principal: Arc<Principal>, admin: bool) -> CredentialWatch {
        CredentialWatch {
            auth: self.clone(),
            changes: self.changes.subscribe(),
            principal,
            admin,
            // Once at the start: an invalidation between the request's
            // authentication and now would otherwise go unseen.
            stale: true,
        }
    }

    /// `principal`'s credential as it stands now (from the cache, else the
    /// database), without counting as its use.
    async fn recheck(&self, principal: &Principal) -> Result<Arc<Principal>, AuthError> {
        let now = store::now_ms();
        let current = match self.cache.get(&principal.token_hash) {
            Some(current) => current,
            None if principal.kind == CredentialKind::External => {
                let user = self
                    .store
                    .user_by_id(principal.user_id)
                    .await?
                    .filter(|user| !user.disabled)
                    .ok_or(AuthError::Unauthenticated)?;
                Arc::new(Principal::new(
                    &user,
                    CredentialKind::External,
                    principal.token_hash.clone(),
                    principal.expires_at,
                    principal.last_seen.load(Ordering::Relaxed),
                    &self.config,
                    **self.default_limits.load(),
                ))
            }
            None => {
                let api_token = matches!(principal.kind, CredentialKind::Token { .. });
                let found = self
                    .store
                    .credential_by_hash(&principal.token_hash, api_token)
                    .await?
                    .ok_or(AuthError::Unauthenticated)?;
                let current = self
                    .principal_of(found, principal.token_hash.clone())
                    .filter(|current| current.user_id == principal.user_id)
                    .ok_or(AuthError::Unauthenticated)?;
                Arc::new(current)
            }
        };
        if now >= current.expires_at {
            return Err(AuthError::Unauthenticated);
        }
        Ok(current)
    }

    /// Drops every cached credential of `user` from this master's cache.
    fn forget_user(&self, user: Uuid) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Err(err) = self
            .cache
            .invalidate_entries_if(move |_, principal| principal.user_id == user)
        {
            // Only possible if invalidation closures were not enabled.
            warn!(error = %err, "cannot invalidate by user; clearing the whole cache");
            self.cache.invalidate_all();
        }
        let _ = self.changes.send(Invalidated::User(user));
    }

    /// Ends the caller's own session (logout).
    pub async fn logout(&self, principal: &Principal, client: &Client) -> Result<(), AuthError> {
        // The database first: a stream woken by the invalidation then finds
        // the session gone.
        self.store
            .delete_session_by_hash(&principal.token_hash)
            .await?;
        self.forget(&principal.token_hash);
        self.audit(AuditEntry {
            event: "logout",
            actor_id: Some(principal.user_id.to_string()),
            actor_name: Some(principal.username.clone()),
            subject: principal.session_id().map(|id| id.to_string()),
            address: Some(client.address.to_string()),
            ..Default::default()
        })
        .await;
        Ok(())
    }

    /// Ends a session by id: the caller's own (`owner` given) or anyone's.
    /// `None` if there is no such session (or it is not the owner's).
    pub async fn revoke_session(
        &self,
        actor: &Principal,
        id: Uuid,
        owner: Option<Uuid>,
        client: &Client,
    ) -> Result<Option<store::SessionRow>, AuthError> {
        let Some(session) = self.store.delete_session(id, owner).await? else {
            return Ok(None);
        };
        self.forget(&session.token_hash);
        // The subject is the session's owner, by name like every user event.
        let owner = match self.store.user_by_id(session.user_id).await {
            Ok(Some(user)) => user.username,
            _ => session.user_id.to_string(),
        };
        self.audit(AuditEntry {
            event: "session_revoked",
            actor_id: Some(actor.user_id.to_string()),
            actor_name: Some(actor.username.clone()),
            subject: Some(owner),
            address: Some(client.address.to_string()),
            detail: Some(format!("session {}", session.id)),
        })
        .await;
        Ok(Some(session))
    }

    /// Counts a request to a login route refused before it named an account
    /// (a cross-site login or sign-up) against the client's login rate
    /// limit, so such requests cannot be sent without limit either.
    pub fn admit_refused_login(&self, client: &Client) -> Result<(), AuthError> {
        self.throttle.admit_address(client.address).map_err(refused)
    }

    /// Ends every login lockout of `user` on every master (an admin's
    /// unlock), and audits it. `false` if there is no such user.
    pub async fn unlock(
        &self,
        actor: &Principal,
        user: &User,
        client: &Client,
    ) -> Result<bool, AuthError> {
        if !self.store.announce_unlock(user.id).await? {
            return Ok(false);
        }
        // At once here; other masters when they read the feed.
        let here = self.throttle.unlock(&account_key(&user.username));
        self.forget_user(user.id);
        self.audit_trusted(AuditEntry {
            event: "unlock",
            actor_id: Some(actor.user_id.to_string()),
            actor_name: Some(actor.username.clone()),
            subject: Some(user.username.clone()),
            address: Some(client.address.to_string()),
            detail: Some(format!("{here} locked-out address(es) on this master")),
        })
        .await;
        Ok(true)
    }

    /// Admits a sign-up attempt under the login rate limits.
    pub fn admit_signup(&self, client: &Client, username: &str) -> Result<(), AuthError> {
        self.throttle
            .admit(client.address, &account_key(username))
            .map_err(refused)
    }

    /// Ends every session of `user` (force logout) on every master.
    pub async fn end_sessions(&self, user: Uuid) -> Result<(), AuthError> {
        self.store.end_user_sessions(user).await?;
        self.forget_user(user);
        Ok(())
    }

    /// Checks the caller's current password (throttled and counted like a
    /// login attempt), for changes that need it.
    pub async fn check_password(
        &self,
        principal: &Principal,
        password: &str,
        client: &Client,
    ) -> Result<(), AuthError> {
        let account = account_key(&principal.username);
        self.throttle
            .admit(client.address, &account)
            .map_err(refused)?;
        let hash = self.store.password_hash(principal.user_id).await?;
        if self.hasher.verify(password, hash.as_deref()).await? {
            return Ok(());
        }
        if self.throttle.record_failure(&account, client.address) {
            self.audit_lockout(&account, client).await;
        }
        self.audit(AuditEntry {
            event: "password_check_failed",
            actor_id: Some(principal.user_id.to_string()),
            actor_name: Some(principal.username.clone()),
            address: Some(client.address.to_string()),
            ..Default::default()
        })
        .await;
        Err(AuthError::InvalidCredentials)
    }

    /// Called after the store changed a user in a way that ends their
    /// credentials (the store already announced it to other masters).
    pub fn user_changed(&self, user: Uuid) {
        self.forget_user(user);
    }

    pub async fn create_token(
        &self,
        principal: &Principal,
        name: &str,
        scope: Scope,
        expires_at: Option<i64>,
        client: &Client,
    ) -> Result<(store::ApiTokenRow, String), AuthError> {
        self.token_creations
            .admit(&principal.user_id.to_string())
            .map_err(AuthError::TooFast)?;
        let secret = token::new_api_token()?;
        let row = self
            .store
            .create_token(NewApiToken {
                token_hash: &token::hash_token(&secret),
                creator_hash: &principal.token_hash,
                user_id: principal.user_id,
                name,
                scope: scope.as_str(),
                expires_at,
            })
            .await?;
        self.audit(AuditEntry {
            event: "token_created",
            actor_id: Some(principal.user_id.to_string()),
            actor_name: Some(principal.username.clone()),
            subject: Some(row.id.to_string()),
            address: Some(client.address.to_string()),
            detail: Some(format!("{name:?}, scope {}", scope.as_str())),
        })
        .await;
        Ok((row, secret))
    }

    pub async fn revoke_token(
        &self,
        principal: &Principal,
        id: Uuid,
        client: &Client,
    ) -> Result<bool, AuthError> {
        let Some(row) = self.store.delete_token(id, principal.user_id).await? else {
            return Ok(false);
        };
        self.forget(&row.token_hash);
        self.audit(AuditEntry {
            event: "token_revoked",
            actor_id: Some(principal.user_id.to_string()),
            actor_name: Some(principal.username.clone()),
            subject: Some(row.id.to_string()),
            address: Some(client.address.to_string()),
            detail: Some(format!("{:?}", row.name)),
        })
        .await;
        Ok(true)
    }

    /// A security event caused by a request: a `tracing` event with
    /// `security_event = true` and a row in `audit_log`, both with fields
    /// capped to 256 bytes. Rate-limited per client address and per
    /// authenticated user (`--audit-rate`): beyond the limit the event is
    /// counted in `warren_audit_dropped_total{event}` and not stored, and
    /// drops are logged at most once a minute. A failure to store the row
    /// is logged, never turned into a failure of the request it describes.
    pub async fn audit(&self, entry: AuditEntry) {
        let address = entry.address.as_deref().and_then(|a| a.parse().ok());
        if !self.audit_limiter.admit(entry.actor_id.as_deref(), address) {
            self.audit_dropped(
                entry.event,
                entry.actor_id.as_deref(),
                entry.address.as_deref(),
            );
            return;
        }
        self.audit_trusted(entry).await;
    }

    /// Counts an event beyond the audit rate limit, and logs the drops at
    /// most once a minute.
    fn audit_dropped(&self, event: &'static str, actor_id: Option<&str>, address: Option<&str>) {
        self.metrics.audit_dropped(event);
        if let Some(dropped) = self.audit_limiter.dropped() {
            warn!(
                dropped,
                event,
                actor_id,
                address,
                "audit events beyond the audit rate limit are not stored \
                 (counted in warren_audit_dropped_total; this is logged at most once a minute)"
            );
        }
    }

    /// A security event done by an administrator: like [`Auth::audit`],
    /// never rate-limited.
    pub async fn audit_trusted(&self, entry: AuditEntry) {
        let entry = entry.capped();
        info!(
            security_event = true,
            event = entry.event,
            actor_id = entry.actor_id.as_deref(),
            actor = entry.actor_name.as_deref(),
            subject = entry.subject.as_deref(),
            address = entry.address.as_deref(),
            detail = entry.detail.as_deref(),
            "security event"
        );
        if let Err(err) = self.store.insert_audit(&entry).await {
            warn!(error = %err, event = entry.event, "cannot write the audit log");
        }
    }

    /// Follows the revocation feed, writes batched `last_seen` times, and
    /// keeps the database and rate-limit state tidy, until `stop`.
    pub async fn run_background(self: Arc<Self>, stop: CancellationToken) {
        let last_event = match self.background_store.last_event_id().await {
            Ok(id) => id,
            Err(err) => {
                warn!(error = %err, "cannot read the revocation feed; following from the start");
                0
            }
        };
        let mut feed = Feed::new(last_event);
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(self.config.flush_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tidy = tokio::time::interval(Duration::from_secs(300));
        tidy.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Often enough that no event outlives the retention by more than a
        // quarter of it (and at most 10 minutes); at start too.
        let mut retention = tokio::time::interval(
            (self.config.audit_retention / 4)
                .clamp(Duration::from_secs(1), Duration::from_secs(600)),
        );
        retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = poll.tick() => self.follow_feed(&mut feed).await,
                _ = flush.tick() => {
                    self.flush_last_seen().await;
                    self.count_sessions().await;
                }
                _ = tidy.tick() => self.tidy().await,
                _ = retention.tick() => self.prune_audit().await,
            }
        }
        // Nothing lost on a clean stop.
        self.flush_last_seen().await;
    }

    /// Applies the feed's events after the last one applied. While the
    /// database cannot be read, cached credentials keep working (for up to
    /// [`CREDENTIAL_CACHE_TTL`] since each was read) but revocations made
    /// elsewhere cannot be learnt: reads back off (up to
    /// [`FEED_MAX_BACKOFF`]), failures are logged once every few seconds,
    /// and the next read resumes after the last event applied, so none is
    /// missed (see [`FEED_RETENTION`] and [`FEED_GAP_LIMIT`]).
    async fn follow_feed(&self, feed: &mut Feed) {
        let now = std::time::Instant::now();
        if feed.retry_at.is_some_and(|at| now < at) {
            return;
        }
        match self.background_store.events_after(feed.last).await {
            Ok(events) => {
                if let Some(since) = feed.failing_since.take() {
                    let gap = now.saturating_duration_since(feed.last_read);
                    if gap >= FEED_GAP_LIMIT {
                        self.forget_everything();
                    }
                    info!(
                        outage = ?now.saturating_duration_since(since),
                        failures = feed.failures,
                        events = events.len(),
                        "the revocation feed is readable again; applying what happened meanwhile"
                    );
                }
                feed.last_read = now;
                feed.failures = 0;
                feed.retry_at = None;
                for event in events {
                    match event.kind {
                        EventKind::Session => self.forget(&event.subject),
                        EventKind::User => match event.subject.parse() {
                            Ok(user) => {
                                self.forget_user(user);
                                self.unlock_from_feed(user).await;
                                // No receiver is fine.
                                let _ = self.user_events.send(user);
                            }
                            Err(_) => {
                                warn!(subject = %event.subject, "bad user id in the revocation feed")
                            }
                        },
                    }
                    feed.last = event.id;
                }
            }
            Err(err) => {
                feed.failing_since.get_or_insert(now);
                feed.failures = feed.failures.saturating_add(1);
                let backoff = self
                    .config
                    .poll_interval
                    .checked_mul(2u32.saturating_pow(feed.failures))
                    .map_or(FEED_MAX_BACKOFF, |wait| wait.min(FEED_MAX_BACKOFF));
                feed.retry_at = Some(std::time::Instant::now() + backoff);
                if let Some(left_out) = store::OUTAGE_LOG.admit("revocation feed") {
                    warn!(
                        error = %err,
                        left_out,
                        after_event = feed.last,
                        "cannot read the revocation feed; cached credentials stay valid, \
                         revocations made elsewhere apply once it is read again"
                    );
                }
            }
        }
    }

    /// Drops every cached credential and has every watched stream look at
    /// its credential again.
    fn forget_everything(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
        let _ = self.changes.send(Invalidated::Everything);
        warn!(
            limit = ?FEED_GAP_LIMIT,
            "the revocation feed was not read for too long: every cached credential is read again"
        );
    }

    async fn flush_last_seen(&self) {
        let mut seen = Vec::new();
        for (_, principal) in self.cache.iter() {
            let last = principal.last_seen.load(Ordering::Relaxed);
            if principal.flushed.load(Ordering::Relaxed) < last {
                seen.push((principal.clone(), last));
            }
        }
        if seen.is_empty() {
            return;
        }
        let rows: Vec<(String, i64)> = seen
            .iter()
            .map(|(principal, last)| (principal.token_hash.clone(), *last))
            .collect();
        match self.background_store.touch(&rows).await {
            Ok(()) => {
                for (principal, last) in seen {
                    principal.flushed.fetch_max(last, Ordering::Relaxed);
                }
            }
            // Kept (not marked flushed): written by the next flush.
            Err(err) => {
                if let Some(left_out) = store::OUTAGE_LOG.admit("last-seen times") {
                    warn!(error = %err, left_out, "cannot write last-seen times");
                }
            }
        }
    }

    /// A user event (among them `warren user unlock` and the admin API's
    /// unlock) ends that account's login lockouts on this master.
    async fn unlock_from_feed(&self, user: Uuid) {
        match self.background_store.user_by_id(user).await {
            Ok(Some(user)) => {
                let unlocked = self.throttle.unlock(&account_key(&user.username));
                if unlocked > 0 {
                    info!(user = %user.username, addresses = unlocked, "login lockout ended");
                }
            }
            Ok(None) => {}
            Err(err) => warn!(error = %err, "cannot read a changed user"),
        }
    }

    async fn prune_audit(&self) {
        let before = store::now_ms() - self.config.audit_retention.as_millis() as i64;
        let max_rows = i64::try_from(self.config.audit_max_rows).unwrap_or(i64::MAX);
        match self.background_store.prune_audit(before, max_rows).await {
            Ok(0) => {}
            Ok(n) => debug!(
                events = n,
                "removed audit events past the retention or the row cap"
            ),
            Err(err) => warn!(error = %err, "cannot remove old audit events"),
        }
    }

    async fn tidy(&self) {
        self.throttle.shrink();
        self.audit_limiter.shrink();
        self.token_creations.shrink();
        match self
            .background_store
            .prune(FEED_RETENTION, self.config.idle_timeout)
            .await
        {
            Ok(0) => {}
            Ok(n) => debug!(sessions = n, "removed expired sessions"),
            Err(err) => warn!(error = %err, "cannot remove expired sessions"),
        }
    }

    /// Refreshes the `warren_sessions_active` gauge now.
    pub async fn count_sessions(&self) {
        match self.background_store.count_sessions().await {
            Ok(n) => self.metrics.set_sessions(n),
            Err(err) => {
                if let Some(left_out) = store::OUTAGE_LOG.admit("count sessions") {
                    warn!(error = %err, left_out, "cannot count sessions");
                }
            }
        }
    }
}
