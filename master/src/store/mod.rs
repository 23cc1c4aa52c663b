//! The accounts store: users, sessions, API tokens, the audit log and the
//! revocation feed, in SQLite (default, `<data-dir>/warren.db`, WAL) or
//! PostgreSQL (`--database-url postgres://…`).
//!
//! One set of queries serves both through sqlx's `any` driver: `$N`
//! placeholders (both engines accept them), `BIGINT` milliseconds for times,
//! `TEXT` UUIDs, `0/1` for flags. Migrations live in `migrations/<backend>/`
//! and are embedded in the binary. Every statement is counted in
//! `warren_db_queries_total` so "no query per request" can be measured.

mod audit;
mod hosts;
mod log_limit;
mod sessions;
mod tasks;
mod users;

pub use audit::{AuditEntry, AuditFilter, AuditRecord};
pub use hosts::{HostRow, HostState, HOST_DOWN_AFTER_MS};
pub use log_limit::{LogLimit, OUTAGE_LOG};
pub use sessions::{ApiTokenRow, Credential, NewApiToken, NewSession, SessionRow};
pub use tasks::{LostTasks, NewTask, TaskCursor, TaskFilter, TaskRecord, TaskUpdate};
pub use users::{LimitOverrides, NewUser, Role, UidRange, User, UserPatch};

use prometheus_client::metrics::counter::Counter;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor, Row};
use std::path::Path;
use std::time::Duration;
use tracing::warn;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error(
        "the database schema is at version {database}, newer than this warren knows \
         (up to {binary}); run a newer warren or restore a matching backup"
    )]
    NewerSchema { database: i64, binary: i64 },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("this is the last active administrator; promote another user first")]
    LastAdmin,
    /// The credentials checked before the write changed meanwhile (a
    /// password reset, disable or delete raced a login or token creation).
    #[error("the account changed meanwhile")]
    Stale,
    /// A per-user limit on rows of the accounts database.
    #[error("{0}")]
    Limit(String),
    /// A home host that is not a running host of the cluster.
    #[error("{0}")]
    BadHost(String),
}

impl StoreError {
    /// Maps a unique-constraint violation to [`StoreError::Conflict`].
    fn conflict_or(err: sqlx::Error, what: &'static str) -> StoreError {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what),
            _ => StoreError::Database(err),
        }
    }
}

/// Why the database could not do some work that was valid: the request
/// may succeed later, so it is answered `507` or `503`, never `500`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// The disk (or a database quota) is full: SQLite `SQLITE_FULL`,
    /// PostgreSQL `53100`, or `ENOSPC` on a socket or file.
    DiskFull,
    /// The database is out of reach, restarting or short of resources: a
    /// lost or refused connection, a pool that timed out (no connection
    /// within [`ACQUIRE_TIMEOUT_POSTGRES`]), SQLite I/O errors, PostgreSQL
    /// classes 08, 53 (but a full disk), 57P and a missing database.
    Unavailable,
    /// The database answers but refused this statement for contention: a
    /// serialization failure or deadlock, a lock not available, a statement
    /// cancelled, SQLite busy or locked. Trying again soon may work.
    Busy,
}

impl StoreError {
    /// `Some` when this error is the database's condition rather than a
    /// bug or a bad request.
    pub fn outage(&self) -> Option<Outage> {
        match self {
            StoreError::Database(err)
            | StoreError::Migrate(sqlx::migrate::MigrateError::Execute(err)) => outage_of(err),
            _ => None,
        }
    }

    /// How `/readyz` describes this error to an operator: its kind first
    /// (`unavailable: `, `disk_full: `, `busy: ` or `error: `), then the
    /// error (which never holds the URL's password).
    pub fn status_text(&self) -> String {
        let kind = match self.outage() {
            Some(Outage::Unavailable) => "unavailable",
            Some(Outage::DiskFull) => "disk_full",
            Some(Outage::Busy) => "busy",
            None => "error",
        };
        format!("{kind}: {self}")
    }
}

/// How long a statement waits for a PostgreSQL connection before it fails
/// `Unavailable`. sqlx retries a refused connection with back-off until
/// this deadline, so it is also how long a request that needs the database
/// takes to fail while PostgreSQL is down: short, so callers hear
/// `503 database_unavailable` in seconds, not after half a minute.
pub const ACQUIRE_TIMEOUT_POSTGRES: Duration = Duration::from_secs(3);

/// The same for SQLite, which has no connection to lose: only contention
/// for its few connections (one writer at a time) waits here.
const ACQUIRE_TIMEOUT_SQLITE: Duration = Duration::from_secs(10);

fn outage_of(err: &sqlx::Error) -> Option<Outage> {
    match err {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            Some(Outage::DiskFull)
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Some(Outage::Unavailable),
        sqlx::Error::Database(db) => {
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                sqlite_outage(db.code().as_deref())
            } else {
                postgres_outage(db.code().as_deref())
            }
        }
        _ => None,
    }
}

/// SQLite's primary result codes (the low byte of an extended code).
fn sqlite_outage(code: Option<&str>) -> Option<Outage> {
    let primary = code?.parse::<i32>().ok()? & 0xff;
    match primary {
        13 => Some(Outage::DiskFull), // SQLITE_FULL
        // BUSY, LOCKED.
        5 | 6 => Some(Outage::Busy),
        // NOMEM, READONLY (a file system remounted read-only), IOERR,
        // CANTOPEN, PROTOCOL.
        7 | 8 | 10 | 14 | 15 => Some(Outage::Unavailable),
        _ => None,
    }
}

/// PostgreSQL SQLSTATEs that say "not now" rather than "never".
fn postgres_outage(code: Option<&str>) -> Option<Outage> {
    let code = code?;
    match code {
        "53100" => Some(Outage::DiskFull),
        "40001" | "40P01" | "55P03" | "57014" => Some(Outage::Busy),
        // 3D000: the database itself is gone (dropped, or not yet restored).
        _ if code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P")
            || code == "3D000" =>
        {
            Some(Outage::Unavailable)
        }
        _ => None,
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// When the database was last probed for writing, and what was found.
type WriteProbe = (std::time::Instant, std::result::Result<(), String>);

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    queries: Counter,
    /// The last write probe: when, and what it found (see
    /// [`Store::check_writable`]).
    write_probe: std::sync::Arc<tokio::sync::Mutex<Option<WriteProbe>>>,
    /// Where new users' uids come from (`--uid-range`).
    uid_range: UidRange,
}

/// The default database: `<data-dir>/warren.db`.
pub fn default_url(data_dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("warren.db").display())
}

impl Store {
    /// Connects, applies pending migrations and refuses a schema newer than
    /// this binary knows. `queries` counts every statement sent.
    pub async fn open(url: &str, queries: Counter) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let options = AnyPoolOptions::new()
            .max_connections(match backend {
                // One writer at a time anyway; readers share WAL snapshots.
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .acquire_timeout(match backend {
                Backend::Sqlite => ACQUIRE_TIMEOUT_SQLITE,
                Backend::Postgres => ACQUIRE_TIMEOUT_POSTGRES,
            })
            // A connection whose transaction could not be ended must never
            // serve another request. SQLite rolls a transaction back by
            // itself on some errors (SQLITE_FULL, SQLITE_IOERR, SQLITE_BUSY
            // at COMMIT): sqlx's own ROLLBACK then fails ("no transaction is
            // active") and the connection comes back to the pool still
            // counted as inside a transaction, so every later `begin` on it
            // failed ("begin_with at non-zero transaction depth") until a
            // restart. By the time a connection is idle again, the drop's
            // rollback and the pool's release ping have run in order, so the
            // depth read here is settled: a connection still "in" a
            // transaction is closed and replaced by a fresh one.
            .before_acquire(|conn, _meta| {
                Box::pin(async move {
                    let clean = !sqlx::Connection::is_in_transaction(conn);
                    if !clean {
                        warn!("closing a database connection left inside a failed transaction");
                    }
                    Ok(clean)
                })
            });
        let options = match backend {
            // An embedded database has no link to lose: a ping before each
            // use is a wasted round trip to the connection's thread (sqlx
            // still pings on release, which settles a dropped transaction).
            Backend::Sqlite => options
                .test_before_acquire(false)
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                        )
                        .await?;
                        Ok(())
                    })
                }),
            Backend::Postgres => options,
        };
        let pool = options.connect(url).await?;
        let store = Store {
            pool,
            backend,
            queries,
            write_probe: Default::default(),
            uid_range: UidRange::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The same database, counting queries in `queries` instead.
    pub fn counting(&self, queries: Counter) -> Store {
        Store {
            queries,
            ..self.clone()
        }
    }

    /// The same database, giving new users uids from `range`.
    /// Where users' uids come from.
    pub fn uid_range(&self) -> UidRange {
        self.uid_range
    }

    pub fn with_uid_range(self, range: UidRange) -> Store {
        Store {
            uid_range: range,
            ..self
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn migrator(&self) -> &'static Migrator {
        match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    async fn migrate(&self) -> Result<()> {
        let migrator = self.migrator();
        let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        // The table does not exist before the first migration: not an error.
        let applied: Option<i64> = sqlx::query("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&self.pool)
            .await
            .ok()
            .and_then(|row| row.try_get::<Option<i64>, _>(0).ok().flatten());
        if let Some(database) = applied.filter(|&applied| applied > known) {
            return Err(StoreError::NewerSchema {
                database,
                binary: known,
            });
        }
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// Counts `n` statements about to be sent.
    fn count(&self, n: u64) {
        self.queries.inc_by(n);
    }

    /// `SELECT 1`, for readiness.
    pub async fn ping(&self) -> Result<()> {
        self.count(1);
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Whether the database can store anything: a database that answers
    /// reads while every write fails (a full disk) is not ready. Rewrites
    /// one row at most once a second, however often it is asked (readiness
    /// is public), and answers from that probe meanwhile.
    pub async fn check_writable(&self) -> std::result::Result<(), String> {
        let mut last = self.write_probe.lock().await;
        if let Some((at, found)) = last.as_ref() {
            if at.elapsed() < Duration::from_secs(1) {
                return found.clone();
            }
        }
        self.count(1);
        let found = sqlx::query(
            "INSERT INTO health (id, checked_at) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
        )
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(|err| StoreError::from(err).status_text());
        *last = Some((std::time::Instant::now(), found.clone()));
        found
    }

    /// A write transaction that keeps the revocation feed in order. SQLite:
    /// `BEGIN IMMEDIATE` takes the write lock up front, so a transaction
    /// that reads before it writes never fails with "database is locked".
    /// PostgreSQL: an exclusive lock on `auth_events` serialises the writers
    /// of the feed, so event ids become visible in commit order and a master
    /// following `id > last` never skips one.
    async fn begin_writer(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        match self.backend {
            Backend::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("LOCK TABLE auth_events IN EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    /// Records a revocation that every master must apply (see
    /// [`Store::events_after`]). Part of the caller's transaction.
    async fn push_event(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        kind: &str,
        subject: &str,
    ) -> Result<()> {
        sqlx::query("INSERT INTO auth_events (at, kind, subject) VALUES ($1, $2, $3)")
            .bind(now_ms())
            .bind(kind)
            .bind(subject)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Revocation events newer than `after`, oldest first.
    pub async fn events_after(&self, after: i64) -> Result<Vec<AuthEvent>> {
        self.count(1);
        let rows = sqlx::query(
            "SELECT id, kind, subject FROM auth_events WHERE id > $1 ORDER BY id LIMIT 10000",
        )
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuthEvent {
                    id: row.try_get(0)?,
                    kind: match row.try_get::<String, _>(1)?.as_str() {
                        "session" => EventKind::Session,
                        _ => EventKind::User,
                    },
                    subject: row.try_get(2)?,
                })
            })
            .collect()
    }

    /// The newest event id (a master starts following the feed from here).
    pub async fn last_event_id(&self) -> Result<i64> {
        self.count(1);
        let row = sqlx::query("SELECT MAX(id) FROM auth_events")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
    }

    /// Housekeeping: drops events older than `max_age` and sessions past
    /// their absolute expiry or idle for longer than `idle`.
    pub async fn prune(&self, max_age: Duration, idle: Duration) -> Result<u64> {
        self.count(2);
        let now = now_ms();
        sqlx::query("DELETE FROM auth_events WHERE at < $1")
            .bind(now - max_age.as_millis() as i64)
            .execute(&self.pool)
            .await?;
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at <= $2")
            .bind(now)
            .bind(now - idle.as_millis() as i64)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// A revocation every master applies to its cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthEvent {
    pub id: i64,
    pub kind: EventKind,
    /// A session's token hash, or a user id.
    pub subject: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// One credential (session or API token), by token hash.
    Session,
    /// Every credential of one user (disabled, deleted, password or role
    /// changed).
    User,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for
/// messages and logs: the password of the authority (split at its last
/// `@`, as a password may hold one) and of any `password` query parameter
/// (`?password=`, `sslpassword=`) is hidden.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL we understand: show only what cannot be secret.
        return if url.contains('=') || url.contains('@') {
            "***".into()
        } else {
            url.to_string()
        };
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(at) => before_query.split_at(at),
        None => (before_query, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{credentials}@{host}"),
        },
        None => authority.to_string(),
    };
    let query = query.map(|query| {
        query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.to_ascii_lowercase().contains("password") => {
                    format!("{key}=***")
                }
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    match query {
        Some(query) => format!("{scheme}://{authority}{path}?{query}"),
        None => format!("{scheme}://{authority}{path}"),
    }
}

fn uuid_of(row: &AnyRow, index: usize, table: &'static str) -> Result<uuid::Uuid> {
    let text: String = row.try_get(index)?;
    uuid::Uuid::parse_str(&text).map_err(|err| StoreError::Corrupt {
        table,
        detail: format!("bad id {text:?}: {err}"),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_passwords() {
        let cases = [
            ("postgres://u:secret@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p@ss@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://h/db?user=u&password=QS&sslmode=require",
                "postgres://h/db?user=u&password=***&sslmode=require",
            ),
            (
                "postgres://h/db?sslpassword=x",
                "postgres://h/db?sslpassword=***",
            ),
            (
                "sqlite:///srv/warren.db?mode=rwc",
                "sqlite:///srv/warren.db?mode=rwc",
            ),
            ("user=u password=x", "***"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    /// A store on a fresh SQLite file, removed with the returned directory.
    pub async fn sqlite_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&default_url(dir.path()), Counter::default())
            .await
            .expect("open store");
        (store, dir)
    }

    /// A store on a fresh PostgreSQL database (`WARREN_TEST_POSTGRES`, as
    /// the end-to-end tests use), dropped with the returned guard; `None`
    /// (said loudly) when PostgreSQL is unreachable, unless
    /// `WARREN_REQUIRE_POSTGRES=1` makes that a failure.
    pub async fn postgres_store(test: &str) -> Option<(Store, PostgresGuard)> {
        let admin_url = std::env::var("WARREN_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        let required = std::env::var("WARREN_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
        sqlx::any::install_default_drivers();
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            AnyPoolOptions::new().max_connections(1).connect(&admin_url),
        )
        .await;
        let admin = match connected {
            Ok(Ok(pool)) => pool,
            _ => {
                assert!(
                    !required,
                    "PostgreSQL at {admin_url} is required but unreachable"
                );
                eprintln!("\n*** SKIPPED {test} on PostgreSQL: cannot reach {admin_url}\n");
                return None;
            }
        };
        let name = format!("warren_unit_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create a test database");
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(base, _)| base);
        let url = format!("{base}/{name}");
        let store = Store::open(&url, Counter::default())
            .await
            .expect("open the test database");
        Some((store, PostgresGuard { admin, name, url }))
    }

    /// Drops its test database when the test is done with it.
    pub struct PostgresGuard {
        admin: AnyPool,
        name: String,
        /// The test database's URL.
        pub url: String,
    }

    impl PostgresGuard {
        pub async fn drop_database(self, stores: Vec<Store>) {
            for store in stores {
                store.pool.close().await;
            }
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&self.admin)
            .await;
        }
    }

    #[tokio::test]
    async fn migrations_are_idempotent_and_a_newer_schema_is_refused() {
        let (store, dir) = sqlite_store().await;
        drop(store);
        // Opening again applies nothing new.
        let store = Store::open(&default_url(dir.path()), Counter::default())
            .await
            .expect("reopen");
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99991231000000, 'from the future', 1, x'00', 0)",
        )
        .execute(&store.pool)
        .await
        .expect("fake a future migration");
        drop(store);
        let err = Store::open(&default_url(dir.path()), Counter::default())
            .await
            .expect_err("refused");
        assert!(
            matches!(
                err,
                StoreError::NewerSchema {
                    database: 99991231000000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("newer than this warren knows"));
    }

    #[tokio::test]
    async fn an_unknown_url_scheme_is_a_clear_error() {
        let err = Store::open("mysql://root:hunter2@localhost/db", Counter::default())
            .await
            .expect_err("refused");
        let message = err.to_string();
        assert!(message.contains("unsupported database URL"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn outages_are_told_from_bugs() {
        // SQLITE_FULL, SQLITE_IOERR_WRITE (10 | 3 << 8), SQLITE_BUSY.
        assert_eq!(sqlite_outage(Some("13")), Some(Outage::DiskFull));
        assert_eq!(sqlite_outage(Some("778")), Some(Outage::Unavailable));
        assert_eq!(sqlite_outage(Some("5")), Some(Outage::Busy));
        assert_eq!(sqlite_outage(Some("14")), Some(Outage::Unavailable));
        // SQLITE_CONSTRAINT_UNIQUE, SQLITE_ERROR, garbage.
        assert_eq!(sqlite_outage(Some("2067")), None);
        assert_eq!(sqlite_outage(Some("1")), None);
        assert_eq!(sqlite_outage(Some("x")), None);
        assert_eq!(postgres_outage(Some("53100")), Some(Outage::DiskFull));
        assert_eq!(postgres_outage(Some("08006")), Some(Outage::Unavailable));
        assert_eq!(postgres_outage(Some("57P01")), Some(Outage::Unavailable));
        assert_eq!(postgres_outage(Some("40001")), Some(Outage::Busy));
        assert_eq!(postgres_outage(Some("3D000")), Some(Outage::Unavailable));
        assert_eq!(postgres_outage(Some("23505")), None);
        assert_eq!(postgres_outage(Some("42601")), None);
        let lost = StoreError::Database(sqlx::Error::PoolTimedOut);
        assert_eq!(lost.outage(), Some(Outage::Unavailable));
        assert!(
            lost.status_text().starts_with("unavailable: "),
            "{}",
            lost.status_text()
        );
        assert!(StoreError::LastAdmin.status_text().starts_with("error: "));
        assert_eq!(StoreError::LastAdmin.outage(), None);
    }

    #[tokio::test]
    async fn a_connection_left_inside_a_transaction_is_never_handed_out() {
        let (store, _dir) = sqlite_store().await;
        // What SQLITE_FULL at COMMIT leaves: SQLite ended the transaction
        // by itself, so sqlx's rollback fails and its depth stays at 1.
        let mut tx = store.pool.begin().await.expect("begin");
        sqlx::query("ROLLBACK")
            .execute(&mut *tx)
            .await
            .expect("end the transaction behind sqlx's back");
        drop(tx);
        for _ in 0..8 {
            store
                .begin_writer()
                .await
                .expect("a clean writer")
                .commit()
                .await
                .expect("commit");
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }
}
