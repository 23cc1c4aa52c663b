//! The hosts of a cluster (several masters on one PostgreSQL database, each
//! with its own data directory): their registration and heartbeats, and
//! which host holds each user's files (`users.home_host`).
//!
//! Times here are the database's clock (`now_ms` of the database, not of
//! the host), so hosts whose clocks disagree still agree on who is alive.
//! Cluster mode needs PostgreSQL; on SQLite the table stays empty.

use super::{Backend, Result, Store, StoreError};
use sqlx::Row;
use uuid::Uuid;

/// A host without a heartbeat for this long is down.
pub const HOST_DOWN_AFTER_MS: i64 = 10_000;

/// One row of `hosts`, with its state as of the database's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    pub name: String,
    pub url: String,
    pub started_at: i64,
    /// 0 once the host stopped cleanly.
    pub heartbeat_at: i64,
    /// Milliseconds since the last heartbeat, by the database's clock.
    pub heartbeat_age_ms: i64,
}

/// Whether a host answers requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    Up,
    /// No heartbeat for [`HOST_DOWN_AFTER_MS`]: crashed, cut off, or its
    /// database connection lost.
    Down,
    /// Stopped cleanly.
    Stopped,
}

impl HostRow {
    pub fn state(&self) -> HostState {
        if self.heartbeat_at == 0 {
            HostState::Stopped
        } else if self.heartbeat_age_ms > HOST_DOWN_AFTER_MS {
            HostState::Down
        } else {
            HostState::Up
        }
    }
}

/// The database's clock in milliseconds since the epoch, as SQL: a
/// constant spliced into the queries below (`AssertSqlSafe`), never input.
fn db_now(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    }
}

impl Store {
    /// Registers this host (or takes its row over at a restart). Refused
    /// when a live host of that name has another URL: two hosts given one
    /// name would take each other's users.
    pub async fn register_host(&self, name: &str, url: &str) -> Result<HostRow> {
        if let Some(found) = self.host(name).await? {
            if found.state() == HostState::Up && found.url != url {
                return Err(StoreError::Conflict(
                    "a live host with this name and another URL (--host-name must be unique)",
                ));
            }
        }
        self.count(1);
        let now = db_now(self.backend);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO hosts (name, url, started_at, heartbeat_at) VALUES ($1, $2, {now}, {now}) \
             ON CONFLICT (name) DO UPDATE SET url = $2, started_at = {now}, heartbeat_at = {now}"
        )))
        .bind(name)
        .bind(url)
        .execute(&self.pool)
        .await?;
        self.host(name).await?.ok_or(StoreError::Corrupt {
            table: "hosts",
            detail: format!("the row of host {name} vanished after its registration"),
        })
    }

    /// Renews this host's heartbeat; `false` when its row is gone (someone
    /// removed it: it is registered again).
    pub async fn heartbeat(&self, name: &str) -> Result<bool> {
        self.count(1);
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE hosts SET heartbeat_at = {} WHERE name = $1",
            db_now(self.backend)
        )))
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks this host stopped (a clean shutdown): the others stop
    /// forwarding to it at once rather than after the heartbeat times out.
    pub async fn host_stopped(&self, name: &str) -> Result<()> {
        self.count(1);
        sqlx::query("UPDATE hosts SET heartbeat_at = 0 WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every host, by name.
    pub async fn hosts(&self) -> Result<Vec<HostRow>> {
        self.count(1);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT name, url, started_at, heartbeat_at, {} - heartbeat_at FROM hosts ORDER BY name",
            db_now(self.backend)
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(host_of).collect()
    }

    pub async fn host(&self, name: &str) -> Result<Option<HostRow>> {
        self.count(1);
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT name, url, started_at, heartbeat_at, {} - heartbeat_at FROM hosts WHERE name = $1",
            db_now(self.backend)
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(host_of).transpose()
    }

    /// How many users each host holds, by name (users without a home host
    /// under `None`).
    pub async fn users_per_host(&self) -> Result<Vec<(Option<String>, i64)>> {
        self.count(1);
        let rows = sqlx::query("SELECT home_host, COUNT(*) FROM users GROUP BY home_host")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// The live host holding the fewest users (ties: by name), for a new
    /// user; `None` when no host is up (outside cluster mode).
    pub async fn least_loaded_host(&self) -> Result<Option<String>> {
        let hosts = self.hosts().await?;
        let counts = self.users_per_host().await?;
        let users_of = |name: &str| {
            counts
                .iter()
                .find(|(host, _)| host.as_deref() == Some(name))
                .map_or(0, |(_, n)| *n)
        };
        Ok(hosts
            .iter()
            .filter(|host| host.state() == HostState::Up)
            .min_by_key(|host| (users_of(&host.name), host.name.clone()))
            .map(|host| host.name.clone()))
    }

    /// The home host of a new user: `wanted` when it is a host that is up
    /// ([`StoreError::BadHost`] if not), else the up host with the fewest
    /// users; `None` outside cluster mode (no host registered, none asked).
    pub async fn choose_home_host(&self, wanted: Option<&str>) -> Result<Option<String>> {
        let Some(wanted) = wanted else {
            let chosen = self.least_loaded_host().await?;
            if chosen.is_none() && !self.hosts().await?.is_empty() {
                // A cluster with no host up: a user created now would have
                // no home, and each host would serve their files apart.
                return Err(StoreError::BadHost(
                    "no host of the cluster is up to hold the user's files; start one, \
                     or name one that is (--host)"
                        .into(),
                ));
            }
            return Ok(chosen);
        };
        match self.host(wanted).await? {
            Some(host) if host.state() == HostState::Up => Ok(Some(host.name)),
            Some(host) => Err(StoreError::BadHost(format!(
                "host {wanted} is {}: a user's home host must be running",
                match host.state() {
                    HostState::Stopped => "stopped",
                    _ => "down",
                }
            ))),
            None => Err(StoreError::BadHost(format!(
                "no host is named {wanted} (see GET /api/v1/admin/hosts)"
            ))),
        }
    }

    /// Gives every user without a home host this one; returns how many.
    /// Only for the first host of a cluster (users created before it were
    /// created on it).
    pub async fn adopt_unhomed_users(&self, name: &str) -> Result<u64> {
        self.count(1);
        let done = sqlx::query("UPDATE users SET home_host = $1 WHERE home_host IS NULL")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Starts a move of `user` from `from` to `to`: refused (`Stale`) when
    /// the user is not homed on `from` or a move is already under way.
    /// Every master drops the user's cached credentials (a user event), so
    /// the user's requests are refused everywhere within a second.
    pub async fn begin_move(&self, user: Uuid, from: &str, to: &str) -> Result<()> {
        let mut tx = self.begin_writer().await?;
        self.count(2);
        let done = sqlx::query(
            "UPDATE users SET moving_to = $1 WHERE id = $2 AND home_host = $3 AND moving_to IS NULL",
        )
        .bind(to)
        .bind(user.to_string())
        .bind(from)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Stale);
        }
        Self::push_event(&mut tx, "user", &user.to_string()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends every move `to` was driving (it restarted: they died with it);
    /// their users stay on their home host, served again. Returns how many.
    pub async fn abandon_moves_to(&self, to: &str) -> Result<u64> {
        self.count(1);
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM users WHERE moving_to = $1")
            .bind(to)
            .fetch_all(&self.pool)
            .await?;
        let mut ended = 0;
        for id in ids {
            let Ok(user) = Uuid::parse_str(&id) else {
                continue;
            };
            match self.end_move(user, to, false).await {
                Ok(()) => ended += 1,
                // Ended meanwhile by someone else.
                Err(StoreError::Stale) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(ended)
    }

    /// Ends a move: the user is homed on `to` when `done`, else stays where
    /// they were; either way their requests are served again.
    pub async fn end_move(&self, user: Uuid, to: &str, done: bool) -> Result<()> {
        let mut tx = self.begin_writer().await?;
        self.count(2);
        let query = if done {
            "UPDATE users SET home_host = moving_to, moving_to = NULL \
             WHERE id = $1 AND moving_to = $2"
        } else {
            "UPDATE users SET moving_to = NULL WHERE id = $1 AND moving_to = $2"
        };
        let changed = sqlx::query(query)
            .bind(user.to_string())
            .bind(to)
            .execute(&mut *tx)
            .await?;
        if changed.rows_affected() != 1 {
            return Err(StoreError::Stale);
        }
        Self::push_event(&mut tx, "user", &user.to_string()).await?;
        tx.commit().await?;
        Ok(())
    }
}

fn host_of(row: &sqlx::any::AnyRow) -> Result<HostRow> {
    Ok(HostRow {
        name: row.try_get(0)?,
        url: row.try_get(1)?,
        started_at: row.try_get(2)?,
        heartbeat_at: row.try_get(3)?,
        heartbeat_age_ms: row.try_get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::sqlite_store;

    #[tokio::test]
    async fn hosts_register_beat_and_stop() {
        let (store, _dir) = sqlite_store().await;
        assert_eq!(store.least_loaded_host().await.unwrap(), None);
        let a = store
            .register_host("a", "http://10.0.0.1:4000")
            .await
            .unwrap();
        assert_eq!(a.state(), HostState::Up);
        assert!(a.heartbeat_age_ms.abs() < 5_000, "{a:?}");
        store
            .register_host("b", "http://10.0.0.2:4000")
            .await
            .unwrap();
        // A second live host may not take a's name with another address.
        assert!(matches!(
            store.register_host("a", "http://10.0.0.9:4000").await,
            Err(StoreError::Conflict(_))
        ));
        // The same host restarting takes its row back.
        store
            .register_host("a", "http://10.0.0.1:4000")
            .await
            .unwrap();
        assert!(store.heartbeat("a").await.unwrap());
        assert!(!store.heartbeat("nobody").await.unwrap());
        assert_eq!(
            store.least_loaded_host().await.unwrap().as_deref(),
            Some("a")
        );
        store.host_stopped("a").await.unwrap();
        assert_eq!(
            store.host("a").await.unwrap().unwrap().state(),
            HostState::Stopped
        );
        assert_eq!(
            store.least_loaded_host().await.unwrap().as_deref(),
            Some("b")
        );
        // No host up at all: a new user is refused rather than left homeless.
        store.host_stopped("b").await.unwrap();
        assert!(matches!(
            store.choose_home_host(None).await,
            Err(StoreError::BadHost(_))
        ));
    }

    #[tokio::test]
    async fn a_move_cut_short_by_its_target_restarting_is_abandoned() {
        let (store, _dir) = sqlite_store().await;
        let user = store
            .create_user(crate::store::NewUser {
                username: "alice",
                password_hash: "h",
                role: crate::store::Role::User,
                home_host: Some("a"),
            })
            .await
            .unwrap();
        store.begin_move(user.id, "a", "b").await.unwrap();
        // A second move while one is under way is refused.
        assert!(matches!(
            store.begin_move(user.id, "a", "c").await,
            Err(StoreError::Stale)
        ));
        assert_eq!(store.abandon_moves_to("c").await.unwrap(), 0);
        assert_eq!(store.abandon_moves_to("b").await.unwrap(), 1);
        let after = store.user_by_id(user.id).await.unwrap().unwrap();
        assert_eq!(after.home_host.as_deref(), Some("a"));
        assert_eq!(after.moving_to, None);
    }
}
