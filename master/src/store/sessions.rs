//! Credentials: login sessions and API tokens, both found by the SHA-256 of
//! their secret (the secret itself is never stored).

use super::users::user_at;
use super::{now_ms, uuid_of, Result, Store, StoreError, User};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

/// API tokens one user may hold at once.
pub const MAX_TOKENS_PER_USER: i64 = 100;

pub struct NewSession<'a> {
    pub token_hash: &'a str,
    pub user_id: Uuid,
    /// The password hash the login was checked against: the session is only
    /// created if it is still the user's and the user is still enabled.
    pub password_hash: &'a str,
    pub expires_at: i64,
    pub address: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// The user's session limit; the oldest sessions beyond it are evicted.
    pub max_sessions: i64,
}

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: Uuid,
    pub token_hash: String,
    pub user_id: Uuid,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_seen_at: i64,
    pub address: Option<String>,
    pub user_agent: Option<String>,
}

pub struct NewApiToken<'a> {
    pub token_hash: &'a str,
    /// The hash of the session creating the token: the token is only
    /// created if that session still exists (not revoked meanwhile).
    pub creator_hash: &'a str,
    pub user_id: Uuid,
    pub name: &'a str,
    pub scope: &'a str,
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ApiTokenRow {
    pub id: Uuid,
    pub token_hash: String,
    pub user_id: Uuid,
    pub name: String,
    pub scope: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// A credential found by its hash, with its user.
#[derive(Debug, Clone)]
pub enum Credential {
    Session(SessionRow, User),
    Token(ApiTokenRow, User),
}

macro_rules! session_columns {
    () => {
        "s.id, s.token_hash, s.user_id, s.created_at, s.expires_at, s.last_seen_at, s.address, s.user_agent"
    };
}
macro_rules! token_columns {
    () => {
        "t.id, t.token_hash, t.user_id, t.name, t.scope, t.created_at, t.expires_at, t.last_used_at"
    };
}
macro_rules! joined_user_columns {
    () => {
        "u.id, u.username, u.role, u.disabled, u.created_at, \
                                   u.last_login_at, u.max_sessions, u.storage_quota_bytes, u.file_quota, u.uid, u.limits, \
                                   u.home_host, u.moving_to"
    };
}
pub(super) use joined_user_columns;

fn session_of(row: &AnyRow) -> Result<SessionRow> {
    Ok(SessionRow {
        id: uuid_of(row, 0, "sessions")?,
        token_hash: row.try_get(1)?,
        user_id: uuid_of(row, 2, "sessions")?,
        created_at: row.try_get(3)?,
        expires_at: row.try_get(4)?,
        last_seen_at: row.try_get(5)?,
        address: row.try_get(6)?,
        user_agent: row.try_get(7)?,
    })
}

fn token_of(row: &AnyRow) -> Result<ApiTokenRow> {
    Ok(ApiTokenRow {
        id: uuid_of(row, 0, "api_tokens")?,
        token_hash: row.try_get(1)?,
        user_id: uuid_of(row, 2, "api_tokens")?,
        name: row.try_get(3)?,
        scope: row.try_get(4)?,
        created_at: row.try_get(5)?,
        expires_at: row.try_get(6)?,
        last_used_at: row.try_get(7)?,
    })
}

impl Store {
    /// Stores a new session and evicts the user's oldest beyond the limit.
    /// Returns the session and the token hashes of the evicted ones.
    pub async fn create_session(&self, new: NewSession<'_>) -> Result<(SessionRow, Vec<String>)> {
        let now = now_ms();
        let session = SessionRow {
            id: Uuid::new_v4(),
            token_hash: new.token_hash.to_string(),
            user_id: new.user_id,
            created_at: now,
            expires_at: new.expires_at,
            last_seen_at: now,
            address: new.address.map(str::to_string),
            user_agent: new.user_agent.map(str::to_string),
        };
        let mut tx = self.begin_writer().await?;
        let inserted = sqlx::query(
            "INSERT INTO sessions (id, token_hash, user_id, created_at, expires_at, last_seen_at, \
             address, user_agent) SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS \
             (SELECT 1 FROM users WHERE id = $3 AND password_hash = $9 AND disabled = 0)",
        )
        .bind(session.id.to_string())
        .bind(&session.token_hash)
        .bind(session.user_id.to_string())
        .bind(session.created_at)
        .bind(session.expires_at)
        .bind(session.last_seen_at)
        .bind(session.address.clone())
        .bind(session.user_agent.clone())
        .bind(new.password_hash)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            self.count(1);
            return Err(StoreError::Stale);
        }
        let rows = sqlx::query(
            "SELECT id, token_hash FROM sessions WHERE user_id = $1 ORDER BY created_at DESC, id",
        )
        .bind(session.user_id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        let mut evicted = Vec::new();
        let keep = usize::try_from(new.max_sessions.max(1)).unwrap_or(1);
        for row in rows.iter().skip(keep) {
            let id: String = row.try_get(0)?;
            let hash: String = row.try_get(1)?;
            if hash == session.token_hash {
                continue;
            }
            sqlx::query("DELETE FROM sessions WHERE id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            Self::push_event(&mut tx, "session", &hash).await?;
            evicted.push(hash);
        }
        tx.commit().await?;
        self.count(2 + 2 * evicted.len() as u64);
        Ok((session, evicted))
    }

    /// The session (or, with `api_token`, the API token) whose secret
    /// hashes to `token_hash`, with its user.
    pub async fn credential_by_hash(
        &self,
        token_hash: &str,
        api_token: bool,
    ) -> Result<Option<Credential>> {
        self.count(1);
        if api_token {
            let row = sqlx::query(concat!(
                "SELECT ",
                token_columns!(),
                ", ",
                joined_user_columns!(),
                " FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1"
            ))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
            return row
                .map(|row| Ok(Credential::Token(token_of(&row)?, user_at(&row, 8)?)))
                .transpose();
        }
        let row = sqlx::query(concat!(
            "SELECT ",
            session_columns!(),
            ", ",
            joined_user_columns!(),
            " FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok(Credential::Session(session_of(&row)?, user_at(&row, 8)?)))
            .transpose()
    }

    /// Sessions of one user (or of everyone), newest first.
    pub async fn list_sessions(&self, user: Option<Uuid>) -> Result<Vec<SessionRow>> {
        self.count(1);
        let rows = match user {
            Some(user) => {
                sqlx::query(concat!(
                    "SELECT ",
                    session_columns!(),
                    " FROM sessions s WHERE s.user_id = $1 \
                     ORDER BY s.created_at DESC"
                ))
                .bind(user.to_string())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    session_columns!(),
                    " FROM sessions s ORDER BY s.created_at DESC"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(session_of).collect()
    }

    pub async fn count_sessions(&self) -> Result<i64> {
        self.count(1);
        let row = sqlx::query("SELECT COUNT(*) FROM sessions WHERE expires_at > $1")
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Deletes a session by id, only if it belongs to `owner` when one is
    /// given. Returns the deleted session.
    pub async fn delete_session(
        &self,
        id: Uuid,
        owner: Option<Uuid>,
    ) -> Result<Option<SessionRow>> {
        let query = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions s WHERE s.id = $1"
        );
        self.delete_session_where(query, &id.to_string(), owner)
            .await
    }

    /// Deletes the session with this token hash (logout).
    pub async fn delete_session_by_hash(&self, token_hash: &str) -> Result<Option<SessionRow>> {
        let query = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions s WHERE s.token_hash = $1"
        );
        self.delete_session_where(query, token_hash, None).await
    }

    async fn delete_session_where(
        &self,
        select: &'static str,
        value: &str,
        owner: Option<Uuid>,
    ) -> Result<Option<SessionRow>> {
        let mut tx = self.begin_writer().await?;
        let row = sqlx::query(select)
            .bind(value)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(session) = row.as_ref().map(session_of).transpose()? else {
            self.count(1);
            return Ok(None);
        };
        if owner.is_some_and(|owner| owner != session.user_id) {
            self.count(1);
            return Ok(None);
        }
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(session.id.to_string())
            .execute(&mut *tx)
            .await?;
        Self::push_event(&mut tx, "session", &session.token_hash).await?;
        tx.commit().await?;
        self.count(3);
        Ok(Some(session))
    }

    /// Ends every session of `user` (force logout); API tokens stay. Every
    /// master drops the user's cached credentials.
    pub async fn end_user_sessions(&self, user: Uuid) -> Result<()> {
        self.count(3);
        let mut tx = self.begin_writer().await?;
        Self::end_sessions_in(&mut tx, user, None).await?;
        Self::push_event(&mut tx, "user", &user.to_string()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes `user`'s sessions but the one with `keep_hash`. The caller
    /// pushes the `user` event.
    pub(super) async fn end_sessions_in(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        user: Uuid,
        keep_hash: Option<&str>,
    ) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND token_hash <> $2")
            .bind(user.to_string())
            // No token hashes to the empty string.
            .bind(keep_hash.unwrap_or(""))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Writes batched `last_seen_at` (sessions) and `last_used_at` (tokens).
    pub async fn touch(&self, seen: &[(String, i64)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (hash, at) in seen {
            sqlx::query(
                "UPDATE sessions SET last_seen_at = $1 WHERE token_hash = $2 AND last_seen_at < $1",
            )
            .bind(*at)
            .bind(hash)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE token_hash = $2")
                .bind(*at)
                .bind(hash)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.count(2 * seen.len() as u64);
        Ok(())
    }

    pub async fn create_token(&self, new: NewApiToken<'_>) -> Result<ApiTokenRow> {
        self.count(1);
        let token = ApiTokenRow {
            id: Uuid::new_v4(),
            token_hash: new.token_hash.to_string(),
            user_id: new.user_id,
            name: new.name.to_string(),
            scope: new.scope.to_string(),
            created_at: now_ms(),
            expires_at: new.expires_at,
            last_used_at: None,
        };
        // Only while the creating session exists, and below the cap: each
        // token is a row of the accounts database, which users' file quotas
        // and the disk reserve do not bound.
        let inserted = sqlx::query(
            "INSERT INTO api_tokens (id, token_hash, user_id, name, scope, created_at, expires_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS \
             (SELECT 1 FROM sessions WHERE token_hash = $8 AND user_id = $3) \
             AND (SELECT COUNT(*) FROM api_tokens WHERE user_id = $3) < $9",
        )
        .bind(token.id.to_string())
        .bind(&token.token_hash)
        .bind(token.user_id.to_string())
        .bind(&token.name)
        .bind(&token.scope)
        .bind(token.created_at)
        .bind(token.expires_at)
        .bind(new.creator_hash)
        .bind(MAX_TOKENS_PER_USER)
        .execute(&self.pool)
        .await
        .map_err(|err| StoreError::conflict_or(err, "a token with this secret"))?;
        if inserted.rows_affected() == 0 {
            // The session is gone (a revocation won the race), or tokens
            // created meanwhile reached the cap: say which.
            self.count(1);
            let held: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens WHERE user_id = $1")
                    .bind(new.user_id.to_string())
                    .fetch_one(&self.pool)
                    .await?;
            if held >= MAX_TOKENS_PER_USER {
                return Err(StoreError::Limit(format!(
                    "you have {held} API tokens, the most allowed; revoke one first \
                     (DELETE /api/v1/me/tokens/{{id}})"
                )));
            }
            return Err(StoreError::Stale);
        }
        Ok(token)
    }

    /// An API token made by the operator (`warren user token`): no session
    /// creates it (the operator may reach the database; with
    /// `--password-login off` this is how an administrator gets in), the
    /// per-user cap still holds.
    pub async fn create_operator_token(
        &self,
        user_id: Uuid,
        token_hash: &str,
        name: &str,
        scope: &str,
        expires_at: Option<i64>,
    ) -> Result<ApiTokenRow> {
        self.count(1);
        let token = ApiTokenRow {
            id: Uuid::new_v4(),
            token_hash: token_hash.to_string(),
            user_id,
            name: name.to_string(),
            scope: scope.to_string(),
            created_at: now_ms(),
            expires_at,
            last_used_at: None,
        };
        let inserted = sqlx::query(
            "INSERT INTO api_tokens (id, token_hash, user_id, name, scope, created_at, expires_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM users WHERE id = $3) \
             AND (SELECT COUNT(*) FROM api_tokens WHERE user_id = $3) < $8",
        )
        .bind(token.id.to_string())
        .bind(&token.token_hash)
        .bind(user_id.to_string())
        .bind(&token.name)
        .bind(&token.scope)
        .bind(token.created_at)
        .bind(token.expires_at)
        .bind(MAX_TOKENS_PER_USER)
        .execute(&self.pool)
        .await
        .map_err(|err| StoreError::conflict_or(err, "a token with this secret"))?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Limit(format!(
                "the user is gone, or holds {MAX_TOKENS_PER_USER} API tokens already"
            )));
        }
        Ok(token)
    }

    pub async fn list_tokens(&self, user: Uuid) -> Result<Vec<ApiTokenRow>> {
        self.count(1);
        let rows = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens t WHERE t.user_id = $1 ORDER BY t.created_at DESC"
        ))
        .bind(user.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_of).collect()
    }

    /// Deletes `owner`'s token `id`. Returns it, or `None` if `owner` has no
    /// such token.
    pub async fn delete_token(&self, id: Uuid, owner: Uuid) -> Result<Option<ApiTokenRow>> {
        let mut tx = self.begin_writer().await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens t WHERE t.id = $1 AND t.user_id = $2"
        ))
        .bind(id.to_string())
        .bind(owner.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(token) = row.as_ref().map(token_of).transpose()? else {
            self.count(1);
            return Ok(None);
        };
        sqlx::query("DELETE FROM api_tokens WHERE id = $1")
            .bind(token.id.to_string())
            .execute(&mut *tx)
            .await?;
        Self::push_event(&mut tx, "session", &token.token_hash).await?;
        tx.commit().await?;
        self.count(3);
        Ok(Some(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::sqlite_store;
    use crate::store::{EventKind, NewUser, Role};

    #[tokio::test]
    async fn the_oldest_sessions_beyond_the_limit_are_evicted_and_announced() {
        let (store, _dir) = sqlite_store().await;
        let user = store
            .create_user(NewUser {
                username: "carol",
                password_hash: "h",
                role: Role::User,
                home_host: None,
            })
            .await
            .expect("user");
        let start = store.last_event_id().await.expect("events");
        let mut evicted_all = Vec::new();
        for n in 0..4 {
            let hash = format!("hash{n}");
            let (_, evicted) = store
                .create_session(NewSession {
                    token_hash: &hash,
                    user_id: user.id,
                    password_hash: "h",
                    expires_at: now_ms() + 60_000,
                    address: None,
                    user_agent: None,
                    max_sessions: 2,
                })
                .await
                .expect("session");
            evicted_all.extend(evicted);
            // Distinct creation times.
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
        assert_eq!(evicted_all, ["hash0", "hash1"]);
        let left: Vec<_> = store
            .list_sessions(Some(user.id))
            .await
            .expect("list")
            .into_iter()
            .map(|s| s.token_hash)
            .collect();
        assert_eq!(left, ["hash3", "hash2"]);
        let events = store.events_after(start).await.expect("events");
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| e.kind == EventKind::Session));
        match store
            .credential_by_hash("hash3", false)
            .await
            .expect("lookup")
        {
            Some(Credential::Session(session, found)) => {
                assert_eq!(session.user_id, user.id);
                assert_eq!(found, user);
            }
            other => panic!("expected a session, got {other:?}"),
        }
        assert!(store
            .credential_by_hash("hash0", false)
            .await
            .expect("lookup")
            .is_none());
    }
}
