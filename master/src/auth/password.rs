//! Password hashing: argon2id with the OWASP parameters (m = 19 MiB, t = 2,
//! p = 1), run on a few dedicated threads behind a semaphore so a login
//! storm queues instead of taking all memory and every core. The threads run
//! at a lower CPU priority (nice 10): when the machine is busy, serving
//! logged-in users comes first and logins wait.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

pub const M_COST_KIB: u32 = 19 * 1024;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;

pub const MIN_PASSWORD_BYTES: usize = 10;
pub const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("passwords must be at least {MIN_PASSWORD_BYTES} bytes long")]
    TooShort,
    #[error("passwords must be at most {MAX_PASSWORD_BYTES} bytes long")]
    TooLong,
    #[error("the server is busy hashing passwords; try again shortly")]
    Busy,
    #[error("password hashing failed: {0}")]
    Internal(String),
}

/// Checks a new password against the length policy.
pub fn check_policy(password: &str) -> Result<(), PasswordError> {
    match password.len() {
        n if n < MIN_PASSWORD_BYTES => Err(PasswordError::TooShort),
        n if n > MAX_PASSWORD_BYTES => Err(PasswordError::TooLong),
        _ => Ok(()),
    }
}

fn argon2() -> Argon2<'static> {
    // The constants are valid parameters (the unit test proves it).
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).unwrap_or(Params::DEFAULT);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password now, on this thread (for the CLI and start-up).
pub fn hash_now(password: &str) -> Result<String, PasswordError> {
    argon2()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|err| PasswordError::Internal(err.to_string()))
}

/// Whether `password` matches the PHC string `hash`. A malformed hash
/// matches nothing.
/// The password hash of a user created by a login from outside (OpenID
/// Connect, a JWT, a proxy's identity header): no password matches it.
pub const EXTERNAL_PASSWORD_HASH: &str = "!external";

pub fn verify_now(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The nice value of the hashing threads.
const HASH_NICE: i32 = 10;

/// Hashes and verifies off the async runtime, at most `concurrency` at once.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    jobs: std::sync::mpsc::Sender<Job>,
    /// How long a request may queue for a permit before it gets 503.
    queue_timeout: Duration,
    /// Verified against when the user does not exist, so that an unknown
    /// user costs the same work as a wrong password.
    dummy_hash: Arc<str>,
}

impl Hasher {
    pub fn new(concurrency: usize, queue_timeout: Duration) -> Result<Hasher, PasswordError> {
        let concurrency = concurrency.max(1);
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for n in 0..concurrency {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("warren-hash-{n}"))
                .spawn(move || {
                    // Per thread on Linux; unprivileged, it can only go down.
                    if let Err(err) = rustix::process::setpriority_process(None, HASH_NICE) {
                        tracing::warn!(error = %err, "cannot lower the hashing thread's priority");
                    }
                    loop {
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        match job {
                            // A panic fails that one request (its answer
                            // channel drops), not the thread.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            // Every Hasher is gone.
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|err| {
                    PasswordError::Internal(format!("cannot start a hashing thread: {err}"))
                })?;
        }
        Ok(Hasher {
            permits: Arc::new(Semaphore::new(concurrency)),
            jobs,
            queue_timeout,
            dummy_hash: hash_now("not a password of anyone's")?.into(),
        })
    }

    pub async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let password = password.to_string();
        self.run(move || hash_now(&password)).await?
    }

    /// Verifies `password` against `hash`, or against a dummy hash when
    /// there is no user: the same work either way.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> Result<bool, PasswordError> {
        // A user who logs in from outside has no password: their hash is
        // no PHC string (`EXTERNAL_PASSWORD_HASH`). They cost a full hash
        // too, so timing does not tell them from other users.
        let hash = hash.filter(|hash| *hash != EXTERNAL_PASSWORD_HASH);
        let exists = hash.is_some();
        let hash: Arc<str> = hash.map_or_else(|| self.dummy_hash.clone(), Arc::from);
        let password = password.to_string();
        let matched = self.run(move || verify_now(&password, &hash)).await?;
        Ok(exists && matched)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let permit = tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| PasswordError::Busy)?
            .map_err(|_| PasswordError::Busy)?;
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _permit = permit;
            // The waiting request may be gone; its result is then dropped.
            let _ = done.send(work());
        });
        self.jobs
            .send(job)
            .map_err(|_| PasswordError::Internal("the hashing threads are gone".into()))?;
        result
            .await
            .map_err(|_| PasswordError::Internal("a hashing thread failed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_with_the_owasp_parameters() {
        assert!(Params::new(M_COST_KIB, T_COST, P_COST, None).is_ok());
        let hash = hash_now("correct horse battery").expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_now("correct horse battery", &hash));
        assert!(!verify_now("correct horse battery!", &hash));
        assert!(!verify_now("correct horse battery", "not a hash"));
    }

    #[test]
    fn the_length_policy_is_in_bytes() {
        assert!(matches!(
            check_policy("short"),
            Err(PasswordError::TooShort)
        ));
        assert!(check_policy("ten bytes!").is_ok());
        assert!(check_policy(&"x".repeat(1024)).is_ok());
        assert!(matches!(
            check_policy(&"x".repeat(1025)),
            Err(PasswordError::TooLong)
        ));
    }

    #[tokio::test]
    async fn unknown_users_never_verify() {
        let hasher = Hasher::new(1, Duration::from_secs(5)).expect("hasher");
        let real = hasher.hash("a real password").await.expect("hash");
        assert!(hasher
            .verify("a real password", Some(&real))
            .await
            .expect("verify"));
        assert!(!hasher
            .verify("not a password of anyone's", None)
            .await
            .expect("verify"));
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy() {
        let hasher = Hasher::new(1, Duration::from_millis(1)).expect("hasher");
        let _held = hasher
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("permit");
        assert!(matches!(
            hasher.hash("a real password").await,
            Err(PasswordError::Busy)
        ));
    }
}
