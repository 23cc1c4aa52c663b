//! The run's simulated users: where they come from (created through the
//! admin API, or a `--users-file`), their real logins, and what each one
//! holds during the run (its session, worker slot, connections, files and
//! terminal).

use super::client::{status_kind, Call, Pool, Target};
use crate::http::api::session_token;
use anyhow::{bail, Context, Result};
use hyper::header::AUTHORIZATION;
use hyper::Method;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

/// Requests of setting up (user creation, logins before measuring).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// A name and password to log in with.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub password: String,
}

/// `name:password` per line (`#` comments and blank lines skipped).
pub fn read_users_file(path: &Path) -> Result<Vec<Account>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --users-file {}", path.display()))?;
    let mut accounts = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, password)) = line.split_once(':') else {
            bail!("{} line {}: not name:password", path.display(), number + 1);
        };
        if name.is_empty() || password.is_empty() {
            bail!(
                "{} line {}: empty name or password",
                path.display(),
                number + 1
            );
        }
        accounts.push(Account {
            name: name.to_string(),
            password: password.to_string(),
        });
    }
    if accounts.is_empty() {
        bail!("--users-file {} names no user", path.display());
    }
    Ok(accounts)
}

/// The admin token's first line.
pub fn read_token(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(token)
}

/// Creates `accounts` through `POST /api/v1/admin/users` (an existing user
/// of that name is kept: reruns reuse their users), `parallel` at a time.
pub async fn create(
    target: Arc<Target>,
    admin_token: &str,
    accounts: &[Account],
    parallel: usize,
) -> Result<(u32, u32)> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let pool = Arc::new(Pool::new(target, None));
    let outcomes: Vec<bool> = stream::iter(accounts.iter().cloned())
        .map(|account| {
            let pool = pool.clone();
            let token = admin_token.to_string();
            async move {
                let body = serde_json::json!({
                    "username": account.name,
                    "password": account.password,
                    "role": "user",
                });
                let call = Call::new(Method::POST, "/api/v1/admin/users")
                    .header(AUTHORIZATION, format!("Bearer {token}"))
                    .json(&body);
                let answer = pool
                    .send(call, None, SETUP_TIMEOUT)
                    .await
                    .map_err(|kind| anyhow::anyhow!("creating {}: {kind}", account.name))?;
                match answer.status.as_u16() {
                    201 => Ok(true),
                    409 => Ok(false),
                    _ => bail!(
                        "creating {}: {} {}",
                        account.name,
                        answer.status,
                        String::from_utf8_lossy(&answer.body)
                    ),
                }
            }
        })
        .buffer_unordered(parallel.max(1))
        .try_collect()
        .await?;
    let created = outcomes.iter().filter(|created| **created).count() as u32;
    Ok((created, outcomes.len() as u32 - created))
}

/// One simulated user during the run.
pub struct User {
    pub index: u32,
    pub account: Account,
    pub pool: Pool,
    session: RwLock<Option<String>>,
    slot: OnceLock<u32>,
    /// The uid the server runs this user's processes as (its login
    /// answer's `user.uid`), for the orphan check.
    uid: OnceLock<u32>,
    /// The files this user wrote and the server acknowledged, with their
    /// length and FNV-1a hash.
    pub files: Mutex<Vec<Written>>,
    /// Writes sent, for unique file names.
    pub sequence: AtomicU64,
    pub terminal: tokio::sync::Mutex<Option<super::ops::Terminal>>,
    pub terminal_ids: Mutex<Vec<String>>,
}

/// An acknowledged write: 24 bytes, so that an hour of writes fits in
/// the harness's memory (its path is made again from the sequence).
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub sequence: u64,
    pub length: u64,
    pub hash: u64,
}

impl Written {
    /// The file's path in the workspace: `DIRECTORY/USER-SEQUENCE`.
    pub fn path(&self, directory: &str, user: u32) -> String {
        written_path(directory, user, self.sequence)
    }

    /// Whether `body` is what was written.
    pub fn matches(&self, body: &[u8]) -> bool {
        body.len() as u64 == self.length && fnv1a(body) == self.hash
    }
}

/// The path of user `user`'s `sequence`th write in `directory`.
pub fn written_path(directory: &str, user: u32, sequence: u64) -> String {
    format!("{directory}/{user}-{sequence}")
}

impl User {
    pub fn new(index: u32, account: Account, target: Arc<Target>, bind: Option<IpAddr>) -> Self {
        User {
            index,
            account,
            pool: Pool::new(target, bind),
            session: RwLock::new(None),
            slot: OnceLock::new(),
            uid: OnceLock::new(),
            files: Mutex::new(Vec::new()),
            sequence: AtomicU64::new(0),
            terminal: tokio::sync::Mutex::new(None),
            terminal_ids: Mutex::new(Vec::new()),
        }
    }

    pub fn session(&self) -> Option<String> {
        self.session.read().ok().and_then(|s| s.clone())
    }

    pub fn slot(&self) -> Option<u32> {
        self.slot.get().copied()
    }

    pub fn uid(&self) -> Option<u32> {
        self.uid.get().copied()
    }

    pub fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// A real login (`POST /api/v1/auth/login`, an argon2 verification on
    /// the server); a success keeps the session. A failure is its kind,
    /// with the answer's `Retry-After` when it had one.
    pub async fn login(&self, timeout: Duration) -> Result<(), (String, Option<Duration>)> {
        let body = serde_json::json!({
            "username": self.account.name,
            "password": self.account.password,
        });
        let answer = self
            .pool
            .send(
                Call::new(Method::POST, "/api/v1/auth/login").json(&body),
                None,
                timeout,
            )
            .await
            .map_err(|kind| (kind, None))?;
        if let Err(kind) = status_kind(&answer) {
            let retry_after = answer
                .headers
                .get(hyper::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err((kind, retry_after));
        }
        let token = session_token(&answer.headers).ok_or_else(|| ("check".to_string(), None))?;
        let uid = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|body| u32::try_from(body["user"]["uid"].as_u64()?).ok());
        if let Some(uid) = uid {
            let _ = self.uid.set(uid);
        }
        if let Ok(mut session) = self.session.write() {
            *session = Some(token);
        }
        Ok(())
    }

    /// Learns the user's worker slot from `/api/v1/ping` (`{"slot":N}`);
    /// a server without slots (the bare one) leaves it unknown.
    pub async fn learn_slot(&self) {
        let session = self.session();
        let Ok(answer) = self
            .pool
            .send(
                Call::new(Method::GET, "/api/v1/ping"),
                session.as_deref(),
                SETUP_TIMEOUT,
            )
            .await
        else {
            return;
        };
        let slot = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|value| value.get("slot")?.as_u64())
            .and_then(|slot| u32::try_from(slot).ok());
        if let Some(slot) = slot {
            let _ = self.slot.set(slot);
        }
    }

    pub fn remember(&self, written: Written) {
        if let Ok(mut files) = self.files.lock() {
            files.push(written);
        }
    }

    /// One of the user's acknowledged files, picked by `pick`.
    pub fn some_file(&self, pick: u64) -> Option<Written> {
        let files = self.files.lock().ok()?;
        if files.is_empty() {
            return None;
        }
        files.get((pick % files.len() as u64) as usize).copied()
    }
}

/// FNV-1a, 64 bits: what the read-back compares (with the length).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_files_are_name_colon_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "# comment\nalice:pw:with:colons\n\nbob:x\n").unwrap();
        let accounts = read_users_file(&path).unwrap();
        assert_eq!(accounts.len(), 2);
        assert_eq!(accounts[0].password, "pw:with:colons");
        std::fs::write(&path, "alice\n").unwrap();
        let err = read_users_file(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(read_users_file(&path).is_err());
    }

    #[test]
    fn fnv_tells_contents_apart() {
        assert_ne!(fnv1a(b"ab"), fnv1a(b"ba"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }
}
