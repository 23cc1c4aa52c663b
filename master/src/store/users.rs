//! Users: create, find, list, change, delete.

use super::{now_ms, uuid_of, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;
use warren_protocol::ProcessLimits;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Result<Role> {
        match text {
            "user" => Ok(Role::User),
            "admin" => Ok(Role::Admin),
            other => Err(StoreError::Corrupt {
                table: "users",
                detail: format!("unknown role {other:?}"),
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: i64,
    pub last_login_at: Option<i64>,
    pub max_sessions: Option<i64>,
    pub storage_quota_bytes: Option<i64>,
    pub file_quota: Option<i64>,
    /// The uid (and gid) of the user's processes and files when warren
    /// runs as root; allocated from the uid range, `None` only until the
    /// next serve start backfills it.
    pub uid: Option<i64>,
    /// The admin's overrides of the server's process limits.
    pub limits: Option<LimitOverrides>,
    /// The host that holds the user's files (cluster mode; `None` outside
    /// it and for users created before it).
    pub home_host: Option<String>,
    /// The host the user's files are being moved to (`warren user move`):
    /// while set, the user's requests are refused everywhere.
    pub moving_to: Option<String>,
}

/// An administrator's overrides of the server's process limits for one
/// user (`null` or absent fields: the server's default). Stored as JSON
/// in `users.limits`; sizes in bytes, `0` means "no limit" except for
/// `cpu_weight` (1-10000) and `tasks` (at least 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// `RLIMIT_AS` of each process, bytes.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::http::json_integer"
    )]
    pub address_space: Option<u64>,
    /// `RLIMIT_CPU` of each process, seconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::http::json_integer"
    )]
    pub cpu_seconds: Option<u64>,
    /// `RLIMIT_NPROC`: processes of the user's uid at once.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::http::json_integer"
    )]
    pub processes: Option<u64>,
    /// `RLIMIT_FSIZE`: the largest file a process may write, bytes.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::http::json_integer"
    )]
    pub file_size: Option<u64>,
    /// `RLIMIT_NOFILE`: open descriptors per process.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::http::json_integer"
    )]
    pub open_files: Option<u64>,
    /// The user's cgroup `memory.max`, bytes.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::http::json_integer"
    )]
    pub memory: Option<u64>,
    /// The user's cgroup `pids.max`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::http::json_integer"
    )]
    pub pids: Option<u64>,
    /// The user's cgroup `cpu.weight`, 1-10000.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::http::json_integer"
    )]
    #[schema(minimum = 1, maximum = 10000)]
    pub cpu_weight: Option<u32>,
    /// Tasks running at once, 1-10000.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::http::json_integer"
    )]
    #[schema(minimum = 1, maximum = 10000)]
    pub tasks: Option<u32>,
}

impl LimitOverrides {
    /// `defaults` with these overrides applied.
    pub fn apply(&self, defaults: ProcessLimits) -> ProcessLimits {
        ProcessLimits {
            address_space: self.address_space.unwrap_or(defaults.address_space),
            cpu_seconds: self.cpu_seconds.unwrap_or(defaults.cpu_seconds),
            processes: self.processes.unwrap_or(defaults.processes),
            file_size: self.file_size.unwrap_or(defaults.file_size),
            open_files: self.open_files.unwrap_or(defaults.open_files),
            memory: self.memory.unwrap_or(defaults.memory),
            pids: self.pids.unwrap_or(defaults.pids),
            cpu_weight: self.cpu_weight.unwrap_or(defaults.cpu_weight),
            tasks: self.tasks.unwrap_or(defaults.tasks),
        }
    }

    /// Why these overrides cannot be applied, if they cannot.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.cpu_weight.is_some_and(|w| !(1..=10_000).contains(&w)) {
            return Err("limits.cpu_weight must be 1-10000".into());
        }
        if self.tasks.is_some_and(|n| !(1..=10_000).contains(&n)) {
            return Err("limits.tasks must be 1-10000".into());
        }
        // Stored as BIGINT-safe JSON numbers and read back by every master.
        let sizes = [
            self.address_space,
            self.cpu_seconds,
            self.processes,
            self.file_size,
            self.open_files,
            self.memory,
            self.pids,
        ];
        if sizes.iter().flatten().any(|&n| n > i64::MAX as u64) {
            return Err("limits must be at most 2^63-1".into());
        }
        Ok(())
    }
}

/// The uids users' processes may be given (`--uid-range`), inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub last: u32,
}

impl Default for UidRange {
    fn default() -> Self {
        UidRange {
            first: 200_000,
            last: 265_535,
        }
    }
}

impl std::str::FromStr for UidRange {
    type Err = String;

    /// `FIRST-LAST`, both above 0 (never root) and below 2^32-1 (the
    /// kernel's "no uid"), `FIRST <= LAST`.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{text:?} is not a uid range like 200000-265535");
        let (first, last) = text.trim().split_once('-').ok_or_else(bad)?;
        let first: u32 = first.trim().parse().map_err(|_| bad())?;
        let last: u32 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || last == u32::MAX || first > last {
            return Err(format!(
                "{text:?}: the range must lie within 1-4294967294 and start at or before its end"
            ));
        }
        Ok(UidRange { first, last })
    }
}

/// Attempts at a uid before giving up: each failed attempt means another
/// allocation (another master) won that uid, so this bounds only a storm.
const UID_ATTEMPTS: u32 = 100;

/// Users without a uid given theirs by one statement (see
/// [`Store::assign_missing_uids`]).
const UID_BATCH: i64 = 10_000;

pub struct NewUser<'a> {
    pub username: &'a str,
    pub password_hash: &'a str,
    pub role: Role,
    /// The host to hold the user's files (cluster mode), else `None`.
    pub home_host: Option<&'a str>,
}

/// A change to a user; `None` leaves a field alone. For the limits,
/// `Some(None)` resets to the server default.
#[derive(Debug, Default)]
pub struct UserPatch {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    pub password_hash: Option<String>,
    pub max_sessions: Option<Option<i64>>,
    pub storage_quota_bytes: Option<Option<i64>>,
    pub file_quota: Option<Option<i64>>,
    /// `Some(None)` clears every override.
    pub limits: Option<Option<LimitOverrides>>,
}

macro_rules! user_columns {
    () => {
        "id, username, role, disabled, created_at, last_login_at, \
                            max_sessions, storage_quota_bytes, file_quota, uid, limits, \
                            home_host, moving_to"
    };
}

/// How many columns `user_columns!` names.
pub(super) const USER_COLUMNS: usize = 13;

pub(super) fn user_of(row: &AnyRow) -> Result<User> {
    user_at(row, 0)
}

/// The user in `USER_COLUMNS` order, starting at column `at` of a row.
pub(super) fn user_at(row: &AnyRow, at: usize) -> Result<User> {
    Ok(User {
        id: uuid_of(row, at, "users")?,
        username: row.try_get(at + 1)?,
        role: Role::parse(&row.try_get::<String, _>(at + 2)?)?,
        disabled: row.try_get::<i64, _>(at + 3)? != 0,
        created_at: row.try_get(at + 4)?,
        last_login_at: row.try_get(at + 5)?,
        max_sessions: row.try_get(at + 6)?,
        storage_quota_bytes: row.try_get(at + 7)?,
        file_quota: row.try_get(at + 8)?,
        uid: row.try_get(at + 9)?,
        limits: match row.try_get::<Option<String>, _>(at + 10)? {
            None => None,
            Some(json) => Some(
                serde_json::from_str(&json).map_err(|err| StoreError::Corrupt {
                    table: "users",
                    detail: format!("bad limits {json:?}: {err}"),
                })?,
            ),
        },
        home_host: row.try_get(at + 11)?,
        moving_to: row.try_get(at + 12)?,
    })
}

impl Store {
    pub async fn count_users(&self) -> Result<i64> {
        self.count(1);
        let row = sqlx::query("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Whether there is any user at all: one row looked at, where
    /// [`Store::count_users`] reads them all (serve's start asks this).
    pub async fn has_users(&self) -> Result<bool> {
        self.count(1);
        let row = sqlx::query("SELECT 1 FROM users LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Creates a user with a uid of their own from the store's uid range
    /// (see [`Store::with_uid_range`]). A uid another master took at the
    /// same moment makes the insert fail on the unique index: it is retried
    /// with the next free one.
    pub async fn create_user(&self, new: NewUser<'_>) -> Result<User> {
        self.create_user_linked(new, None).await
    }

    /// [`Store::create_user`] for an outside identity `(issuer, subject)`
    /// (see `migrations/*/…_external_identities.sql`): the user and the
    /// link are written in one transaction, so neither exists without the
    /// other. An identity linked meanwhile (another request, another
    /// master) is `Conflict("this outside identity")`: read it again.
    pub async fn create_external_user(
        &self,
        new: NewUser<'_>,
        issuer: &str,
        subject: &str,
    ) -> Result<User> {
        self.create_user_linked(new, Some((issuer, subject))).await
    }

    async fn create_user_linked(
        &self,
        new: NewUser<'_>,
        identity: Option<(&str, &str)>,
    ) -> Result<User> {
        let mut user = User {
            id: Uuid::new_v4(),
            username: new.username.to_string(),
            role: new.role,
            disabled: false,
            created_at: now_ms(),
            last_login_at: None,
            max_sessions: None,
            storage_quota_bytes: None,
            file_quota: None,
            uid: None,
            limits: None,
            home_host: new.home_host.map(str::to_string),
            moving_to: None,
        };
        for _ in 0..UID_ATTEMPTS {
            let uid = match self.free_uid().await {
                Ok(uid) => uid,
                // A taken name is the answer to give, full range or not.
                Err(StoreError::Limit(why)) => {
                    if self.user_by_name(new.username).await?.is_some() {
                        return Err(StoreError::Conflict("a user with this name"));
                    }
                    return Err(StoreError::Limit(why));
                }
                Err(err) => return Err(err),
            };
            self.count(if identity.is_some() { 2 } else { 1 });
            match self.insert_user(&user, &new, uid, identity).await {
                Ok(()) => {
                    user.uid = Some(uid);
                    return Ok(user);
                }
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    if let Some((issuer, subject)) = identity {
                        if self.user_by_identity(issuer, subject).await?.is_some() {
                            return Err(StoreError::Conflict("this outside identity"));
                        }
                    }
                    if self.user_by_name(new.username).await?.is_some() {
                        return Err(StoreError::Conflict("a user with this name"));
                    }
                    // The uid went to another user meanwhile: the next one.
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(StoreError::Limit(format!(
            "no uid could be allocated in {UID_ATTEMPTS} attempts"
        )))
    }

    /// One attempt of [`Store::create_user_linked`]: the user's row and,
    /// for an outside identity, its link, in one transaction.
    async fn insert_user(
        &self,
        user: &User,
        new: &NewUser<'_>,
        uid: i64,
        identity: Option<(&str, &str)>,
    ) -> std::result::Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, role, disabled, created_at, uid, \
             home_host) VALUES ($1, $2, $3, $4, 0, $5, $6, $7)",
        )
        .bind(user.id.to_string())
        .bind(&user.username)
        .bind(new.password_hash)
        .bind(user.role.as_str())
        .bind(user.created_at)
        .bind(uid)
        .bind(new.home_host)
        .execute(&mut *tx)
        .await?;
        if let Some((issuer, subject)) = identity {
            sqlx::query(
                "INSERT INTO external_identities (issuer, subject, user_id, created_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(issuer)
            .bind(subject)
            .bind(user.id.to_string())
            .bind(user.created_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// The user an outside identity belongs to (see
    /// [`Store::create_external_user`]).
    pub async fn user_by_identity(&self, issuer: &str, subject: &str) -> Result<Option<User>> {
        self.count(1);
        let row = sqlx::query(concat!(
            "SELECT ",
            super::sessions::joined_user_columns!(),
            " FROM external_identities e JOIN users u ON u.id = e.user_id \
             WHERE e.issuer = $1 AND e.subject = $2"
        ))
        .bind(issuer)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_of).transpose()
    }

    /// The lowest uid of the range above every allocated one, or the
    /// lowest gap when the top is taken; [`StoreError::Limit`] when the
    /// range is full. Only a proposal: the unique index decides.
    async fn free_uid(&self) -> Result<i64> {
        let (first, last) = (
            i64::from(self.uid_range.first),
            i64::from(self.uid_range.last),
        );
        self.count(1);
        let top: Option<i64> =
            sqlx::query_scalar("SELECT MAX(uid) FROM users WHERE uid >= $1 AND uid <= $2")
                .bind(first)
                .bind(last)
                .fetch_one(&self.pool)
                .await?;
        match top {
            None => return Ok(first),
            Some(top) if top < last => return Ok(top + 1),
            Some(_) => {}
        }
        self.count(2);
        let first_taken = sqlx::query("SELECT 1 FROM users WHERE uid = $1")
            .bind(first)
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        if !first_taken {
            return Ok(first);
        }
        let gap: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(u.uid) + 1 FROM users u WHERE u.uid >= $1 AND u.uid < $2 \
             AND NOT EXISTS (SELECT 1 FROM users v WHERE v.uid = u.uid + 1)",
        )
        .bind(first)
        .bind(last)
        .fetch_one(&self.pool)
        .await?;
        gap.ok_or_else(|| {
            StoreError::Limit(format!(
                "every uid of the range {first}-{last} is taken (--uid-range)"
            ))
        })
    }

    /// Gives every user without a uid one from the range (users created
    /// before uids existed); returns how many were given one. Safe with
    /// several masters at once: a user is only ever given one uid (`uid IS
    /// NULL` in the update), and a uid only ever one user (the index).
    ///
    /// serve runs this at every start, before it is ready: with every user
    /// holding a uid it is one indexed look-up (`uid IS NULL` on the uid
    /// index), and users without one (an upgraded database) are numbered
    /// in batches of [`UID_BATCH`] by one statement each, above the
    /// highest uid of the range; only once the top of the range is taken
    /// are the gaps below it filled one user at a time.
    pub async fn assign_missing_uids(&self) -> Result<u64> {
        let (first, last) = (
            i64::from(self.uid_range.first),
            i64::from(self.uid_range.last),
        );
        let mut assigned = 0;
        let mut failures = 0;
        loop {
            self.count(1);
            let top: Option<i64> =
                sqlx::query_scalar("SELECT MAX(uid) FROM users WHERE uid >= $1 AND uid <= $2")
                    .bind(first)
                    .bind(last)
                    .fetch_one(&self.pool)
                    .await?;
            let top = top.unwrap_or(first - 1);
            if top >= last {
                return Ok(assigned + self.assign_missing_uids_in_gaps().await?);
            }
            // `COALESCE(users.uid, 0) = 0` is `users.uid IS NULL` (no range
            // holds 0: a row numbered by another master meanwhile is left
            // alone) in a form that is no use to the uid index: written
            // `IS NULL`, SQLite 3.51 drove the join from the index's
            // thousands of NULLs, each scanning the batch (minutes for
            // 100,000 users), instead of from the batch by primary key.
            self.count(1);
            let numbered = sqlx::query(
                "UPDATE users SET uid = numbered.new_uid FROM ( \
                   SELECT id, $1 + ROW_NUMBER() OVER (ORDER BY id) AS new_uid \
                   FROM users WHERE uid IS NULL ORDER BY id LIMIT $2 \
                 ) AS numbered \
                 WHERE users.id = numbered.id AND COALESCE(users.uid, 0) = 0",
            )
            .bind(top)
            .bind((last - top).min(UID_BATCH))
            .execute(&self.pool)
            .await;
            match numbered {
                Ok(result) if result.rows_affected() > 0 => {
                    assigned += result.rows_affected();
                    failures = 0;
                    continue;
                }
                Ok(_) => {
                    // None numbered: none left, or another master numbered
                    // them meanwhile (its uids then conflict with ours).
                    self.count(1);
                    let left = sqlx::query("SELECT 1 FROM users WHERE uid IS NULL LIMIT 1")
                        .fetch_optional(&self.pool)
                        .await?;
                    if left.is_none() {
                        return Ok(assigned);
                    }
                }
                // Another master took some of these uids: number again
                // above its.
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {}
                Err(err) => return Err(err.into()),
            }
            failures += 1;
            if failures >= UID_ATTEMPTS {
                return Err(StoreError::Limit(format!(
                    "no uid could be allocated in {UID_ATTEMPTS} attempts"
                )));
            }
        }
    }

    /// [`Store::assign_missing_uids`] once the top of the range is taken:
    /// each user without a uid gets the lowest free one.
    async fn assign_missing_uids_in_gaps(&self) -> Result<u64> {
        self.count(1);
        let rows = sqlx::query("SELECT id FROM users WHERE uid IS NULL")
            .fetch_all(&self.pool)
            .await?;
        let mut assigned = 0;
        for row in rows {
            let id: String = row.try_get(0)?;
            let mut done = false;
            for _ in 0..UID_ATTEMPTS {
                let uid = self.free_uid().await?;
                self.count(1);
                let updated =
                    sqlx::query("UPDATE users SET uid = $1 WHERE id = $2 AND uid IS NULL")
                        .bind(uid)
                        .bind(&id)
                        .execute(&self.pool)
                        .await;
                match updated {
                    Ok(result) => {
                        assigned += result.rows_affected();
                        done = true;
                        break;
                    }
                    Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {}
                    Err(err) => return Err(err.into()),
                }
            }
            if !done {
                return Err(StoreError::Limit(format!(
                    "no uid could be allocated in {UID_ATTEMPTS} attempts"
                )));
            }
        }
        Ok(assigned)
    }

    /// The user and their password hash, by case-insensitive name.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<(User, String)>> {
        self.count(1);
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            ", password_hash FROM users WHERE lower(username) = lower($1)"
        ))
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok((user_of(&row)?, row.try_get(USER_COLUMNS)?)))
            .transpose()
    }

    pub async fn user_by_id(&self, id: Uuid) -> Result<Option<User>> {
        self.count(1);
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_of).transpose()
    }

    pub async fn password_hash(&self, id: Uuid) -> Result<Option<String>> {
        self.count(1);
        let row = sqlx::query("SELECT password_hash FROM users WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get(0)).transpose()?)
    }

    pub async fn list_users(&self) -> Result<Vec<User>> {
        self.count(1);
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users ORDER BY lower(username)"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_of).collect()
    }

    /// Applies `patch` in one transaction, against the user as it is then:
    /// a password reset ends the user's sessions and API tokens; a disable
    /// ends the sessions (tokens stay, refused while disabled); a role
    /// change keeps both (they pick up the new role). Any of these tells
    /// every master to drop the user's cached credentials. Refuses to demote
    /// or disable the last active administrator. Returns the user before
    /// and after, or `None` if there is no such user.
    pub async fn update_user(&self, id: Uuid, patch: &UserPatch) -> Result<Option<(User, User)>> {
        let mut tx = self.begin_writer().await?;
        let mut statements = 1;
        let select = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
        let Some(row) = sqlx::query(select)
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
        else {
            self.count(statements);
            return Ok(None);
        };
        let before = user_of(&row)?;
        let role_changes = patch.role.is_some_and(|role| role != before.role);
        let disables = patch.disabled == Some(true) && !before.disabled;
        let enables = patch.disabled == Some(false) && before.disabled;
        let demotes_admin = before.role == Role::Admin
            && !before.disabled
            && (disables || patch.role == Some(Role::User));
        if demotes_admin {
            statements += 1;
            Self::keep_an_admin_in(&mut tx).await?;
        }
        let changes: [(&'static str, Option<Option<i64>>); 4] = [
            (
                "UPDATE users SET disabled = $1 WHERE id = $2",
                (disables || enables).then(|| patch.disabled.map(i64::from)),
            ),
            (
                "UPDATE users SET max_sessions = $1 WHERE id = $2",
                patch.max_sessions,
            ),
            (
                "UPDATE users SET storage_quota_bytes = $1 WHERE id = $2",
                patch.storage_quota_bytes,
            ),
            (
                "UPDATE users SET file_quota = $1 WHERE id = $2",
                patch.file_quota,
            ),
        ];
        for (query, value) in changes {
            let Some(value) = value else { continue };
            statements += 1;
            sqlx::query(query)
                .bind(value)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(limits) = &patch.limits {
            statements += 1;
            let json = limits
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|err| StoreError::Corrupt {
                    table: "users",
                    detail: format!("cannot encode limits: {err}"),
                })?;
            sqlx::query("UPDATE users SET limits = $1 WHERE id = $2")
                .bind(json)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(role) = patch.role.filter(|_| role_changes) {
            statements += 1;
            sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
                .bind(role.as_str())
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(hash) = &patch.password_hash {
            statements += 3;
            sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
                .bind(hash)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            Self::end_sessions_in(&mut tx, id, None).await?;
            sqlx::query("DELETE FROM api_tokens WHERE user_id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        } else if disables {
            statements += 1;
            Self::end_sessions_in(&mut tx, id, None).await?;
        }
        // Limits travel with cached credentials (the quota goes to the
        // worker with every request): a change reloads them too.
        let limits_change = patch.max_sessions.is_some()
            || patch.storage_quota_bytes.is_some()
            || patch.file_quota.is_some()
            || patch.limits.is_some();
        if role_changes || disables || enables || limits_change || patch.password_hash.is_some() {
            statements += 1;
            Self::push_event(&mut tx, "user", &id.to_string()).await?;
        }
        statements += 1;
        let row = sqlx::query(select)
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        self.count(statements);
        Ok(Some((before, user_of(&row)?)))
    }

    /// Fails with [`StoreError::LastAdmin`] unless another active
    /// administrator exists besides the one about to go.
    async fn keep_an_admin_in(tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> Result<()> {
        let row = sqlx::query("SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0")
            .fetch_one(&mut **tx)
            .await?;
        if row.try_get::<i64, _>(0)? <= 1 {
            return Err(StoreError::LastAdmin);
        }
        Ok(())
    }

    /// Deletes a user with their sessions and tokens (never the last active
    /// administrator). `false` if no such user.
    pub async fn delete_user(&self, id: Uuid) -> Result<bool> {
        self.count(5);
        let mut tx = self.begin_writer().await?;
        let row = sqlx::query("SELECT role, disabled FROM users WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        if row.try_get::<String, _>(0)? == "admin" && row.try_get::<i64, _>(1)? == 0 {
            Self::keep_an_admin_in(&mut tx).await?;
        }
        Self::push_event(&mut tx, "user", &id.to_string()).await?;
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        // Ids are random and never reused, so a tombstone cannot clash.
        sqlx::query("INSERT INTO deleted_users (id, deleted_at) VALUES ($1, $2)")
            .bind(id.to_string())
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Every deleted user's id (those whose files may go).
    pub async fn deleted_users(&self) -> Result<std::collections::HashSet<Uuid>> {
        self.count(1);
        let rows = sqlx::query("SELECT id FROM deleted_users")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| uuid_of(row, 0, "deleted_users"))
            .collect()
    }

    /// Whether `id` belonged to a user who was deleted (whose files may go).
    pub async fn was_deleted(&self, id: Uuid) -> Result<bool> {
        self.count(1);
        let row = sqlx::query("SELECT 1 FROM deleted_users WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Sets a user's own new password and ends their other sessions (the
    /// one with `keep_hash` stays; API tokens stay).
    pub async fn change_password(&self, id: Uuid, hash: &str, keep_hash: &str) -> Result<()> {
        self.count(3);
        let mut tx = self.begin_writer().await?;
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        Self::end_sessions_in(&mut tx, id, Some(keep_hash)).await?;
        Self::push_event(&mut tx, "user", &id.to_string()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Announces an operator's unlock of user `id` to every master: a
    /// `user` event on the revocation feed, on which each master ends that
    /// account's login lockouts (and re-reads its cached credentials).
    /// `false` if no such user.
    pub async fn announce_unlock(&self, id: Uuid) -> Result<bool> {
        self.count(2);
        let mut tx = self.begin_writer().await?;
        let found = sqlx::query("SELECT 1 FROM users WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Ok(false);
        }
        Self::push_event(&mut tx, "user", &id.to_string()).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn record_login(&self, id: Uuid, at: i64) -> Result<()> {
        self.count(1);
        sqlx::query("UPDATE users SET last_login_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::sqlite_store;

    #[tokio::test]
    async fn usernames_are_unique_ignoring_case() {
        let (store, _dir) = sqlite_store().await;
        let alice = store
            .create_user(NewUser {
                username: "Alice",
                password_hash: "h",
                role: Role::User,
                home_host: None,
            })
            .await
            .expect("create");
        let err = store
            .create_user(NewUser {
                username: "alice",
                password_hash: "h",
                role: Role::Admin,
                home_host: None,
            })
            .await
            .expect_err("conflict");
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        let (found, hash) = store
            .user_by_name("ALICE")
            .await
            .expect("query")
            .expect("found");
        assert_eq!(found, alice);
        assert_eq!(hash, "h");
    }

    #[tokio::test]
    async fn patches_apply_and_missing_users_are_none() {
        let (store, _dir) = sqlite_store().await;
        let bob = store
            .create_user(NewUser {
                username: "bob",
                password_hash: "h",
                role: Role::User,
                home_host: None,
            })
            .await
            .expect("create");
        let patch = UserPatch {
            role: Some(Role::Admin),
            disabled: Some(true),
            max_sessions: Some(Some(2)),
            ..Default::default()
        };
        // Bob is no admin: nothing to keep.
        let (_, updated) = store
            .update_user(bob.id, &patch)
            .await
            .expect("update")
            .expect("exists");
        assert_eq!(updated.role, Role::Admin);
        assert!(updated.disabled);
        assert_eq!(updated.max_sessions, Some(2));
        assert!(store
            .update_user(Uuid::new_v4(), &patch)
            .await
            .expect("update")
            .is_none());
        assert!(store.delete_user(bob.id).await.expect("delete"));
        assert!(!store.delete_user(bob.id).await.expect("delete again"));
    }

    /// Two masters (two pools on one database) creating users at once
    /// never hand out one uid twice; a full range is a clear error; a
    /// freed uid is reused; users without a uid get one at start.
    pub(crate) async fn uids_are_unique_under_concurrency(first: Store, second: Store) {
        let range = UidRange {
            first: 300_000,
            last: 300_099,
        };
        let (first, second) = (first.with_uid_range(range), second.with_uid_range(range));
        let mut creations = Vec::new();
        for n in 0..40 {
            let store = if n % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            creations.push(tokio::spawn(async move {
                store
                    .create_user(NewUser {
                        username: &format!("user{n}"),
                        password_hash: "h",
                        role: Role::User,
                        home_host: None,
                    })
                    .await
            }));
        }
        let mut uids = std::collections::HashSet::new();
        for creation in creations {
            let user = creation.await.expect("join").expect("created");
            let uid = user.uid.expect("a uid");
            assert!((300_000..=300_099).contains(&uid), "{uid} in range");
            assert!(uids.insert(uid), "uid {uid} handed out twice");
        }
        let stored: std::collections::HashSet<i64> = first
            .list_users()
            .await
            .expect("list")
            .iter()
            .filter_map(|u| u.uid)
            .collect();
        assert_eq!(stored, uids, "the returned uids are the stored ones");

        // A small range: full, then a freed uid is reused.
        let tiny = first.clone().with_uid_range(UidRange {
            first: 400_000,
            last: 400_001,
        });
        let make = |name: &'static str| {
            let tiny = tiny.clone();
            async move {
                tiny.create_user(NewUser {
                    username: name,
                    password_hash: "h",
                    role: Role::User,
                    home_host: None,
                })
                .await
            }
        };
        let a = make("tiny-a").await.expect("a");
        let b = make("tiny-b").await.expect("b");
        assert_eq!((a.uid, b.uid), (Some(400_000), Some(400_001)));
        let err = make("tiny-c").await.expect_err("the range is full");
        assert!(matches!(err, StoreError::Limit(_)), "{err}");
        assert!(err.to_string().contains("--uid-range"), "{err}");
        assert!(tiny.delete_user(a.id).await.expect("delete"));
        assert_eq!(make("tiny-d").await.expect("d").uid, Some(400_000));
        // A name conflict is still a name conflict, not a uid retry.
        let err = make("tiny-b").await.expect_err("name taken");
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");

        // Users from before uids: backfilled, once, by either master.
        sqlx::query("UPDATE users SET uid = NULL WHERE username IN ('user0', 'user1')")
            .execute(&first.pool)
            .await
            .expect("forget two uids");
        let (one, two) = tokio::join!(first.assign_missing_uids(), second.assign_missing_uids());
        assert_eq!(one.expect("assign") + two.expect("assign"), 2);
        let users = first.list_users().await.expect("list");
        let all: Vec<i64> = users.iter().filter_map(|u| u.uid).collect();
        assert_eq!(all.len(), users.len(), "every user has a uid");
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len(), "no uid twice");
    }

    #[tokio::test]
    async fn uids_are_unique_under_concurrency_on_sqlite() {
        let (store, dir) = sqlite_store().await;
        let second = Store::open(
            &crate::store::default_url(dir.path()),
            prometheus_client::metrics::counter::Counter::default(),
        )
        .await
        .expect("a second pool");
        uids_are_unique_under_concurrency(store, second).await;
    }

    #[tokio::test]
    async fn uids_are_unique_under_concurrency_on_postgres() {
        let Some((store, guard)) =
            crate::store::tests::postgres_store("uids_are_unique_under_concurrency").await
        else {
            return;
        };
        // The guard's database, through a second pool of its own.
        let second = Store::open(
            &guard.url,
            prometheus_client::metrics::counter::Counter::default(),
        )
        .await
        .expect("a second pool");
        uids_are_unique_under_concurrency(store.clone(), second.clone()).await;
        guard.drop_database(vec![store, second]).await;
    }

    /// Many users without a uid (an upgraded database) are numbered in
    /// batches above the range's highest uid, each once; with the top of
    /// the range taken, the gaps below it are filled.
    async fn users_without_uids_are_numbered_in_batches(store: Store) {
        let count = 25_000i64;
        let range = UidRange {
            first: 500_000,
            last: 500_000 + 25_020,
        };
        let store = store.with_uid_range(range);
        let low = store
            .create_user(NewUser {
                username: "low",
                password_hash: "h",
                role: Role::User,
                home_host: None,
            })
            .await
            .expect("create");
        sqlx::query("UPDATE users SET uid = $1 WHERE id = $2")
            .bind(i64::from(range.first) + 10)
            .bind(low.id.to_string())
            .execute(&store.pool)
            .await
            .expect("a low uid");
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
             INSERT INTO users (id, username, password_hash, role, disabled, created_at) \
             SELECT 'batch-' || i, 'batch' || i, 'h', 'user', 0, 0 FROM n",
        )
        .bind(count)
        .execute(&store.pool)
        .await
        .expect("users without uids");
        let started = std::time::Instant::now();
        let assigned = store.assign_missing_uids().await.expect("assign");
        assert_eq!(assigned, count as u64);
        eprintln!("{count} uids assigned in {:?}", started.elapsed());
        let check = || async {
            let row = sqlx::query(
                "SELECT COUNT(*), COUNT(uid), COUNT(DISTINCT uid), MIN(uid), MAX(uid) FROM users",
            )
            .fetch_one(&store.pool)
            .await
            .expect("count");
            let column = |n: usize| row.try_get::<i64, _>(n).expect("a number");
            let users = column(0);
            assert_eq!(
                (column(1), column(2)),
                (users, users),
                "one uid each, none twice"
            );
            assert!(column(3) >= i64::from(range.first), "{}", column(3));
            assert!(column(4) <= i64::from(range.last), "{}", column(4));
            (column(3), column(4))
        };
        assert_eq!(
            check().await,
            (
                i64::from(range.first) + 10,
                i64::from(range.first) + 10 + count
            )
        );
        assert_eq!(store.assign_missing_uids().await.expect("again"), 0);

        // The top taken: the lowest free uids go to users without one.
        sqlx::query("UPDATE users SET uid = NULL WHERE username IN ('batch1', 'batch2')")
            .execute(&store.pool)
            .await
            .expect("forget two uids");
        sqlx::query("UPDATE users SET uid = $1 WHERE username = 'batch3'")
            .bind(i64::from(range.last))
            .execute(&store.pool)
            .await
            .expect("take the top");
        assert_eq!(store.assign_missing_uids().await.expect("gaps"), 2);
        assert_eq!(
            check().await,
            (i64::from(range.first), i64::from(range.last))
        );
    }

    #[tokio::test]
    async fn users_without_uids_are_numbered_in_batches_on_sqlite() {
        let (store, _dir) = sqlite_store().await;
        users_without_uids_are_numbered_in_batches(store).await;
    }

    #[tokio::test]
    async fn users_without_uids_are_numbered_in_batches_on_postgres() {
        let Some((store, guard)) =
            crate::store::tests::postgres_store("users_without_uids_are_numbered").await
        else {
            return;
        };
        users_without_uids_are_numbered_in_batches(store.clone()).await;
        guard.drop_database(vec![store]).await;
    }

    #[test]
    fn uid_ranges_parse() {
        assert_eq!("200000-265535".parse::<UidRange>(), Ok(UidRange::default()));
        for bad in ["0-10", "10-5", "5", "a-b", "1-4294967295", ""] {
            assert!(bad.parse::<UidRange>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limit_overrides_apply_and_check() {
        let overrides: LimitOverrides =
            serde_json::from_str(r#"{"memory": 1024, "tasks": 2}"#).expect("parse");
        let limits = overrides.apply(ProcessLimits::default());
        assert_eq!((limits.memory, limits.tasks), (1024, 2));
        assert_eq!(limits.pids, ProcessLimits::default().pids);
        assert!(serde_json::from_str::<LimitOverrides>(r#"{"bogus": 1}"#).is_err());
        assert!(LimitOverrides {
            cpu_weight: Some(0),
            ..Default::default()
        }
        .check()
        .is_err());
        assert!(LimitOverrides {
            tasks: Some(0),
            ..Default::default()
        }
        .check()
        .is_err());
        assert!(overrides.check().is_ok());
    }
}
