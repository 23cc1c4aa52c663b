//! Removing the files of deleted users.
//!
//! Deleting a user (API or CLI, on any master sharing the database) leaves a
//! tombstone in `deleted_users` and a user event in the revocation feed.
//! This task asks the user's worker to purge `<users>/<id>/` for each user
//! the feed names who has a tombstone, and, at start (once the workers are
//! up, not before serve is ready) and every [`SWEEP_EVERY`], for every user
//! directory with a tombstone (deletions
//! made while this master was down, events missed, purges that failed).
//! Only a tombstone makes files go: a
//! database that merely lacks a user (a wrong `--database-url`, an old
//! backup) removes nothing.

use crate::pool::Pool;
use crate::store::Store;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;
use warren_protocol::{FileOp, Op, UserCtx};

/// How often every user directory is checked against the tombstones.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// The first sweep waits for every worker to be up (they do the purging),
/// at most this long: listing every user's directory is work per user,
/// which serve's start must not wait for, nor share the machine with.
pub const FIRST_SWEEP_WAITS: Duration = Duration::from_secs(30);

pub struct Purger {
    pub store: Store,
    pub pool: std::sync::Arc<Pool>,
    /// `<data-dir>/users`.
    pub users_dir: PathBuf,
}

impl Purger {
    /// Sweeps once the workers are up (see [`FIRST_SWEEP_WAITS`]) and
    /// every [`SWEEP_EVERY`], and purges each deleted user the feed names,
    /// until `stop`. Users the feed names meanwhile wait for the first
    /// sweep (which looks at every directory if too many did).
    pub async fn run(self, mut users: broadcast::Receiver<Uuid>, stop: CancellationToken) {
        tokio::select! {
            () = stop.cancelled() => return,
            () = self.workers_up() => {}
        }
        let mut sweeps = tokio::time::interval(SWEEP_EVERY);
        sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sweeps.tick() => self.sweep().await,
                user = users.recv() => match user {
                    Ok(user) => self.purge_if_deleted(user).await,
                    // Events were missed: look at every directory instead.
                    Err(RecvError::Lagged(_)) => self.sweep().await,
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }

    /// Returns once every slot has a live worker, or after
    /// [`FIRST_SWEEP_WAITS`].
    async fn workers_up(&self) {
        let deadline = tokio::time::Instant::now() + FIRST_SWEEP_WAITS;
        while tokio::time::Instant::now() < deadline
            && !self.pool.worker_pids().iter().all(Option::is_some)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Purges every user directory that belongs to a deleted user.
    async fn sweep(&self) {
        let dir = self.users_dir.clone();
        let listed = tokio::task::spawn_blocking(move || user_dirs(&dir)).await;
        let ids = match listed.map_err(std::io::Error::other).and_then(|ids| ids) {
            Ok(ids) => ids,
            Err(err) => return warn!(error = %err, "cannot list the users' directories"),
        };
        if ids.is_empty() {
            return;
        }
        let deleted = match self.store.deleted_users().await {
            Ok(deleted) => deleted,
            Err(err) => return warn!(error = %err, "cannot read the deleted users"),
        };
        for user in ids.into_iter().filter(|id| deleted.contains(id)) {
            self.purge(user).await;
        }
    }

    async fn purge_if_deleted(&self, user: Uuid) {
        match self.store.was_deleted(user).await {
            Ok(true) => self.purge(user).await,
            Ok(false) => {}
            Err(err) => warn!(%user, error = %err, "cannot check whether a user was deleted"),
        }
    }

    /// Asks `user`'s worker to remove their files, if there are any.
    async fn purge(&self, user: Uuid) {
        let home = self.users_dir.join(user.to_string());
        let aside = self.users_dir.join(format!(".purge-{user}"));
        if !home.exists() && !aside.exists() {
            return;
        }
        let ctx = UserCtx::only_id(user.into());
        match self.pool.call(&ctx, Op::Files(FileOp::Purge)).await {
            Ok(_) => info!(%user, "removed the files of a deleted user"),
            Err(err) => warn!(
                %user,
                error = %err,
                "cannot remove the files of a deleted user; the next sweep tries again"
            ),
        }
    }
}

/// The ids of the user directories under `dir`, and of those a purge put
/// aside (`.purge-<id>`) and did not finish; none if `dir` does not exist.
fn user_dirs(dir: &std::path::Path) -> std::io::Result<Vec<Uuid>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Ok(id) = name.strip_prefix(".purge-").unwrap_or(name).parse() {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}
