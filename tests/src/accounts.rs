//! Helpers for the accounts tests: a fresh database of either backend, and a
//! logged-in caller.

use crate::{Server, ADMIN_PASSWORD};
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;

/// Where the admin connection for test databases points; each test gets a
/// database of its own on that server.
pub fn postgres_admin_url() -> String {
    std::env::var("WARREN_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Whether a missing PostgreSQL fails the tests (CI) instead of skipping.
pub fn postgres_required() -> bool {
    std::env::var("WARREN_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// One connection to the PostgreSQL database at `url`.
async fn connect(url: &str) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect to the test database")
}

/// The accounts database a test runs against.
pub enum Database {
    /// SQLite in the server's data directory (the default).
    Sqlite,
    /// A database created for this test, dropped afterwards.
    Postgres { url: String, name: String },
}

impl Database {
    pub fn url(&self) -> Option<&str> {
        match self {
            Database::Sqlite => None,
            Database::Postgres { url, .. } => Some(url),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Database::Postgres { .. })
    }

    /// A fresh PostgreSQL database, or `None` after saying loudly that the
    /// test is skipped (a failure instead when `WARREN_REQUIRE_POSTGRES=1`).
    pub async fn postgres(test: &str) -> Option<Database> {
        let admin_url = postgres_admin_url();
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&admin_url),
        )
        .await;
        let pool = match connected {
            Ok(Ok(pool)) => pool,
            failed => {
                let why = match failed {
                    Ok(Err(err)) => err.to_string(),
                    _ => "timed out".to_string(),
                };
                assert!(
                    !postgres_required(),
                    "PostgreSQL at {admin_url} is required (WARREN_REQUIRE_POSTGRES=1) but unreachable: {why}"
                );
                eprintln!(
                    "\n*** SKIPPED {test} on PostgreSQL: cannot reach {admin_url} ({why}).\n\
                     *** Start PostgreSQL or set WARREN_TEST_POSTGRES; CI sets WARREN_REQUIRE_POSTGRES=1.\n"
                );
                return None;
            }
        };
        let name = format!("warren_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .expect("create a test database");
        pool.close().await;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(base, _)| base);
        Some(Database::Postgres {
            url: format!("{base}/{name}"),
            name,
        })
    }

    /// Every value stored in the accounts tables, as text (for scanning
    /// for secrets). For SQLite, reads the database files' raw bytes too.
    pub async fn dump(&self, server: &Server) -> String {
        match self {
            Database::Sqlite => {
                let mut text = String::new();
                for file in ["warren.db", "warren.db-wal"] {
                    if let Ok(bytes) = std::fs::read(server.data_dir.join(file)) {
                        text.push_str(&String::from_utf8_lossy(&bytes));
                    }
                }
                text
            }
            Database::Postgres { url, .. } => {
                let pool = connect(url).await;
                let mut text = String::new();
                for table in [
                    "users",
                    "sessions",
                    "api_tokens",
                    "audit_log",
                    "auth_events",
                ] {
                    let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT CAST(t AS TEXT) FROM {table} t"
                    )))
                    .fetch_all(&pool)
                    .await
                    .expect("dump a table");
                    for (row,) in rows {
                        text.push_str(&row);
                        text.push('\n');
                    }
                }
                pool.close().await;
                text
            }
        }
    }

    /// The stored password hash of `username`.
    pub async fn password_hash(&self, server: &Server, username: &str) -> String {
        let query = "SELECT password_hash FROM users WHERE username = $1";
        match self {
            Database::Sqlite => {
                let url = format!("sqlite://{}", server.data_dir.join("warren.db").display());
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .expect("open the SQLite database");
                let (hash,): (String,) = sqlx::query_as(query)
                    .bind(username)
                    .fetch_one(&pool)
                    .await
                    .expect("hash");
                hash
            }
            Database::Postgres { url, .. } => {
                let pool = connect(url).await;
                let (hash,): (String,) = sqlx::query_as(query)
                    .bind(username)
                    .fetch_one(&pool)
                    .await
                    .expect("hash");
                hash
            }
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let Database::Postgres { name, .. } = self else {
            return;
        };
        let name = name.clone();
        // Drop is synchronous: use a runtime of its own on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&postgres_admin_url())
                    .await
                    .ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&pool)
                .await
                .ok()
            })
        });
        let _ = dropped.join();
    }
}

#[derive(Clone)]
/// A logged-in client: sends its session as the cookie (with a same-origin
/// `Origin` on changes, as a browser would) or as a bearer token.
pub struct Caller {
    pub token: String,
    pub base_url: String,
    pub via_cookie: bool,
    pub http: reqwest::Client,
    /// The login response body.
    pub login: Value,
}

/// POST /api/v1/auth/login with a JSON body.
pub async fn login_response(server: &Server, body: Value) -> reqwest::Response {
    server
        .http
        .post(server.url("/api/v1/auth/login"))
        .json(&body)
        .send()
        .await
        .expect("POST /auth/login")
}

/// The `warren_session` value of a response's `Set-Cookie`, and the whole
/// header.
pub fn session_cookie(response: &reqwest::Response) -> Option<(String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|cookie| {
            let value = cookie.strip_prefix("warren_session=")?;
            Some((value.split(';').next()?.to_string(), cookie.to_string()))
        })
}

impl Caller {
    /// Logs in (panicking unless 200), using the cookie from then on.
    pub async fn login(server: &Server, username: &str, password: &str) -> Caller {
        let body = serde_json::json!({ "username": username, "password": password });
        let response = login_response(server, body).await;
        let status = response.status();
        let (token, _) = session_cookie(&response).unwrap_or_default();
        let login: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "login as {username}: {login}");
        Caller {
            token,
            base_url: server.base_url.clone(),
            via_cookie: true,
            http: server.http.clone(),
            login,
        }
    }

    pub async fn admin(server: &Server) -> Caller {
        Caller::login(server, "admin", ADMIN_PASSWORD).await
    }

    /// The same session, sent as `Authorization: Bearer`.
    pub fn bearer(&self) -> Caller {
        Caller {
            token: self.token.clone(),
            base_url: self.base_url.clone(),
            via_cookie: false,
            http: self.http.clone(),
            login: self.login.clone(),
        }
    }

    pub fn user_id(&self) -> String {
        self.login["user"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if self.via_cookie {
            builder
                .header("cookie", format!("warren_session={}", self.token))
                .header("origin", &self.base_url)
        } else {
            builder.bearer_auth(&self.token)
        }
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut builder = self.request(method, path);
        if let Some(body) = body {
            builder = builder.json(&body);
        }
        let response = builder.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(Method::DELETE, path, None).await
    }

    /// Creates a user as this (admin) caller; returns the new user's id.
    /// POST /api/v1/me/tokens for a read-scoped token named `name`.
    pub async fn new_token(&self, name: &str) -> (u16, Value) {
        self.post(
            "/api/v1/me/tokens",
            serde_json::json!({ "name": name, "scope": "read" }),
        )
        .await
    }

    pub async fn create_user(&self, username: &str, password: &str) -> String {
        let (status, body) = self
            .post(
                "/api/v1/admin/users",
                serde_json::json!({ "username": username, "password": password }),
            )
            .await;
        assert_eq!(status, 201, "create {username}: {body}");
        body["id"].as_str().expect("id").to_string()
    }
}

/// Creates `users` as `admin` (password `<name>-password`) and logs each
/// in: their callers, sending the session as a bearer token.
pub async fn users_on(server: &Server, admin: &Caller, users: &[&str]) -> Vec<Caller> {
    let mut callers = Vec::new();
    for user in users {
        let password = format!("{user}-password");
        admin.create_user(user, &password).await;
        callers.push(Caller::login(server, user, &password).await.bearer());
    }
    callers
}

/// The caller's web app `name` as `GET /api/v1/me/apps` shows it.
pub async fn app_of(caller: &Caller, name: &str) -> Value {
    let (status, list) = caller.get("/api/v1/me/apps").await;
    assert_eq!(status, 200, "{list}");
    list["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .find(|app| app["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no app {name} in {list}"))
}

/// Whether `server` may run users' processes; loudly not (or a failure
/// where the sandbox is required: `WARREN_REQUIRE_SANDBOX=1`).
pub async fn sandboxed(server: &Server) -> bool {
    let (_, ready) = server.get_json("/readyz").await;
    match ready["sandbox"]["refused"].as_str() {
        None => true,
        Some(why) => {
            assert!(
                !crate::sandbox_required(),
                "the sandbox is required here (WARREN_REQUIRE_SANDBOX=1) but refused: {why}"
            );
            eprintln!("*** SKIPPED: this machine cannot run the sandbox ({why})");
            false
        }
    }
}

/// A server (with `options`), its admin and its users `names`; `None`
/// (said loudly) where this machine cannot run the sandbox and nothing
/// requires it.
pub async fn sandboxed_server(
    options: &crate::ServerOptions,
    names: &[&str],
) -> Option<(Server, Caller, Vec<Caller>)> {
    let server = Server::ready(options).await;
    if !sandboxed(&server).await {
        return None;
    }
    let admin = Caller::admin(&server).await;
    let callers = users_on(&server, &admin, names).await;
    Some((server, admin, callers))
}

/// Runs each async `fn scenario(db: Database)` named as two tests: on
/// SQLite (`sqlite::scenario`) and on a fresh PostgreSQL database
/// (`postgres::scenario`, skipped loudly when PostgreSQL is unreachable).
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(warren_tests::accounts::Database::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    if let Some(db) =
                        warren_tests::accounts::Database::postgres(stringify!($scenario)).await
                    {
                        super::$scenario(db).await
                    }
                }
            )*
        }
    };
}
