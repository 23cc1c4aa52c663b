//! Users: create, find, list, change, delete.

use super::{now_ms, uuid_of, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

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
}

pub struct NewUser<'a> {
    pub username: &'a str,
    pub password_hash: &'a str,
    pub role: Role,
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
}

macro_rules! user_columns {
    () => {
        "id, username, role, disabled, created_at, last_login_at, \
                            max_sessions, storage_quota_bytes, file_quota"
    };
}

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

    pub async fn create_user(&self, new: NewUser<'_>) -> Result<User> {
        self.count(1);
        let user = User {
            id: Uuid::new_v4(),
            username: new.username.to_string(),
            role: new.role,
            disabled: false,
            created_at: now_ms(),
            last_login_at: None,
            max_sessions: None,
            storage_quota_bytes: None,
            file_quota: None,
        };
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, role, disabled, created_at) \
             VALUES ($1, $2, $3, $4, 0, $5)",
        )
        .bind(user.id.to_string())
        .bind(&user.username)
        .bind(new.password_hash)
        .bind(user.role.as_str())
        .bind(user.created_at)
        .execute(&self.pool)
        .await
        .map_err(|err| StoreError::conflict_or(err, "a user with this name"))?;
        Ok(user)
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
        row.map(|row| Ok((user_of(&row)?, row.try_get(9)?)))
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
            || patch.file_quota.is_some();
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
            })
            .await
            .expect("create");
        let err = store
            .create_user(NewUser {
                username: "alice",
                password_hash: "h",
                role: Role::Admin,
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
}
