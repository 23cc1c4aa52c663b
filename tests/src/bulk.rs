//! Many users written straight into a warren database, for start-up
//! tests and the start-up benchmark (`warren-bench startup`): what a large
//! deployment's database holds, in seconds rather than the hours logins
//! would take.

/// A pool of one connection to `url` (SQLite or PostgreSQL).
pub async fn connect(url: &str) -> Result<sqlx::AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
}

/// Writes users 1 to `users` (`user<n>`, uid `first_uid + n`, the
/// admin's password hash, so each logs in with the admin's password) and
/// a live session of each, in one transaction. The database must be one a
/// warren has started on (its tables and `admin` exist).
pub async fn fill_users(
    url: &str,
    postgres: bool,
    users: i64,
    first_uid: i64,
) -> Result<(), sqlx::Error> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    // A user's id and a session's, and its token hash, from n.
    let (numbers, user_id, session_id, token_hash) = if postgres {
        (
            "SELECT generate_series(1, $1) AS i",
            "lpad(to_hex(i), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(i), 12, '0')",
            "lpad(to_hex(i), 8, '0') || '-0000-4000-9000-' || lpad(to_hex(i), 12, '0')",
            "lpad(to_hex(i), 64, '0')",
        )
    } else {
        (
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
             SELECT i FROM n",
            "printf('%08x-0000-4000-8000-%012x', i, i)",
            "printf('%08x-0000-4000-9000-%012x', i, i)",
            "printf('%064x', i)",
        )
    };
    let pool = connect(url).await?;
    let mut transaction = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (id, username, password_hash, role, disabled, created_at, uid) \
         SELECT {user_id}, 'user' || i, \
                (SELECT password_hash FROM users WHERE username = 'admin'), \
                'user', 0, $2, $3 + i \
         FROM ({numbers}) AS numbers"
    )))
    .bind(users)
    .bind(now_ms)
    .bind(first_uid)
    .execute(&mut *transaction)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO sessions (id, token_hash, user_id, created_at, expires_at, last_seen_at) \
         SELECT {session_id}, {token_hash}, {user_id}, $2, $3, $2 \
         FROM ({numbers}) AS numbers"
    )))
    .bind(users)
    .bind(now_ms)
    .bind(now_ms + 7 * 24 * 3600 * 1000)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    pool.close().await;
    Ok(())
}
