//! Moving a user's files to another host (`warren user move`, `POST
//! /api/v1/admin/users/{id}/move`). The **target** host drives it, on its
//! signed internal route `POST /internal/v1/moves/{id}`:
//!
//! 1. `begin_move` pauses the user everywhere (503 `user_moving`); the
//!    target waits [`SETTLE`] for every host to see it and for requests in
//!    flight to end.
//! 2. `GET {source}/internal/v1/moves/{id}/archive`: the source (which
//!    checks that the user's `moving_to` names its caller) waits for the
//!    user's transfers, stops their tasks, terminals and apps, makes its
//!    worker forget them ([`FileOp::Evict`]) and streams a tar of
//!    `<data>/users/<id>/` without `tmp/`, ending with a manifest (every
//!    entry's path, type, size, sha256, symlink target) taken while packing.
//! 3. The target unpacks into `<data>/users/.incoming-<id>` (refusing any
//!    entry that would land outside it), checks it against the manifest,
//!    fsyncs, puts it in place, and `end_move` switches `home_host`.
//! 4. `POST {source}/internal/v1/moves/{id}/done`: the source removes its
//!    copy. A failure there is reported but the move stands.
//!
//! Any failure before the switch: `end_move(.., false)`, the staging goes,
//! the user is served by the source again with their files untouched.
//!
//! Packing and unpacking run in the master (on the blocking pool), not in
//! a worker: the master runs as the same user as its workers and owns the
//! data directory, and a tar stream is not a user's file operation (the
//! worker protocol has no stream kind for it). When warren runs as root
//! the owners recorded in the archive are restored (`lchown`).

use super::{internal_caller, Cluster};
use crate::http::{ApiError, AppState};
use crate::store::{HostState, StoreError, User};
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};
use uuid::Uuid;
use warren_protocol::{FileOp, Op, TaskId, TaskOp, TerminalOp, UserCtx};

/// How long the target waits after pausing the user: every host drops
/// the user's cached credentials within a second (the user event), and
/// requests already admitted get the rest to finish.
pub const SETTLE: Duration = Duration::from_millis(1500);

/// How long the source waits for the user's streamed transfers to end.
const TRANSFERS_WAIT: Duration = Duration::from_secs(30);

/// How long the source waits for the user's tasks to be reported ended.
const PROCESSES_WAIT: Duration = Duration::from_secs(10);

/// How long the source may send nothing before the copy is abandoned
/// (the user is paused meanwhile).
const STALL: Duration = Duration::from_secs(60);

/// The archive's last entry: the manifest (at the root of the user's
/// directory, where only warren writes, so no user file has this name).
pub const MANIFEST_NAME: &str = ".warren-manifest.json";

/// The largest manifest accepted (about a million entries).
const MAX_MANIFEST: u64 = 256 << 20;

/// The cluster's internal routes of a move.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/internal/v1/moves/{user}", post(run_move))
        .route("/internal/v1/moves/{user}/archive", get(archive))
        .route("/internal/v1/moves/{user}/done", post(done))
}

/// What went wrong packing, unpacking or checking a user's directory.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("{0}")]
    Io(String),
    /// An archive entry that would land outside the staging directory, or
    /// of a kind a move never sends.
    #[error("refused archive entry {path:?}: {why}")]
    Refused { path: String, why: &'static str },
    /// What arrived is not what the source packed.
    #[error("the copy differs from the source: {0}")]
    Mismatch(String),
}

fn io(what: impl std::fmt::Display, err: std::io::Error) -> MoveError {
    MoveError::Io(format!("{what}: {err}"))
}

/// One entry of a user's directory, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative, `/`-separated.
    pub path: String,
    pub kind: EntryKind,
    /// Bytes of a regular file (0 otherwise).
    pub size: u64,
    /// Hex sha256 of a regular file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where a symlink points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
}

/// Every entry, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    pub fn files(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .count() as u64
    }

    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    fn sorted(mut self) -> Manifest {
        self.entries.sort_by(|a, b| a.path.cmp(&b.path));
        self
    }
}

fn utf8(path: &Path) -> Result<String, MoveError> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| MoveError::Io(format!("{}: not a UTF-8 name", path.display())))
}

/// The entries under `root` (never following a symlink), parents before
/// their children; the top-level `tmp/` and manifest name are left out,
/// and so are sockets and fifos (meaningless once the user's processes
/// are stopped).
fn walk(root: &Path) -> Result<Vec<(String, std::fs::Metadata)>, MoveError> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        let full = root.join(&dir);
        let mut names: Vec<_> = std::fs::read_dir(&full)
            .map_err(|err| io(full.display(), err))?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|err| io(full.display(), err))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let rel = dir.join(&name);
            if dir.as_os_str().is_empty() && (name == "tmp" || name == MANIFEST_NAME) {
                continue;
            }
            let meta =
                std::fs::symlink_metadata(root.join(&rel)).map_err(|err| io(rel.display(), err))?;
            let kind = meta.file_type();
            if !(kind.is_dir() || kind.is_file() || kind.is_symlink()) {
                continue;
            }
            if kind.is_dir() {
                subdirs.push(rel.clone());
            }
            out.push((utf8(&rel)?, meta));
        }
        // Depth first, in name order.
        pending.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

/// Opens a regular file without following a symlink.
fn open_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// A reader that hashes what it reads.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    read: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Writes a tar of `root` (see [`walk`]) to `out`, the manifest last;
/// returns the manifest. Modes, owners and mtimes are in the headers.
pub fn pack(root: &Path, out: impl Write) -> Result<Manifest, MoveError> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut manifest = Manifest::default();
    for (rel, meta) in walk(root)? {
        let full = root.join(&rel);
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        let failed = |err| io(format!("cannot pack {rel}"), err);
        if meta.file_type().is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, &rel, std::io::empty())
                .map_err(failed)?;
            manifest.entries.push(ManifestEntry {
                path: rel,
                kind: EntryKind::Dir,
                size: 0,
                sha256: None,
                target: None,
            });
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&full).map_err(failed)?;
            let target = utf8(&target)?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder
                .append_link(&mut header, &rel, &target)
                .map_err(failed)?;
            manifest.entries.push(ManifestEntry {
                path: rel,
                kind: EntryKind::Symlink,
                size: 0,
                sha256: None,
                target: Some(target),
            });
        } else {
            let file = open_nofollow(&full).map_err(failed)?;
            let meta = file.metadata().map_err(failed)?;
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            let mut reader = Hashing {
                inner: file.take(meta.len()),
                hash: Sha256::new(),
                read: 0,
            };
            builder
                .append_data(&mut header, &rel, &mut reader)
                .map_err(failed)?;
            if reader.read != meta.len() {
                return Err(MoveError::Io(format!(
                    "{rel} changed while it was packed ({} of {} bytes)",
                    reader.read,
                    meta.len()
                )));
            }
            manifest.entries.push(ManifestEntry {
                path: rel,
                kind: EntryKind::File,
                size: meta.len(),
                sha256: Some(crate::auth::token::hex(&reader.hash.finalize())),
                target: None,
            });
        }
    }
    let manifest = manifest.sorted();
    let json = serde_json::to_vec(&manifest)
        .map_err(|err| MoveError::Io(format!("cannot write the manifest: {err}")))?;
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o600);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(json.len() as u64);
    builder
        .append_data(&mut header, MANIFEST_NAME, json.as_slice())
        .map_err(|err| io("cannot pack the manifest", err))?;
    builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(|err| io("cannot finish the archive", err))?;
    Ok(manifest)
}

/// The relative path of an archive entry, or why it is refused: absolute
/// paths, `.` and `..` components and empty names never reach the disk.
fn checked_path(raw: &[u8]) -> Result<String, MoveError> {
    let text = String::from_utf8_lossy(raw).into_owned();
    let refuse = |why| {
        Err(MoveError::Refused {
            path: text.clone(),
            why,
        })
    };
    let Ok(path) = std::str::from_utf8(raw) else {
        return refuse("not UTF-8");
    };
    if path.starts_with('/') {
        return refuse("absolute path");
    }
    let path = path.trim_end_matches('/');
    if path.is_empty() {
        return refuse("empty path");
    }
    for part in path.split('/') {
        match part {
            "" | "." => return refuse("empty or '.' component"),
            ".." => return refuse("'..' component"),
            _ => {}
        }
    }
    Ok(path.to_string())
}

/// Unpacks an archive made by [`pack`] into `staging` (which must not
/// exist), refusing any entry that would escape it: each entry's parents
/// must be directories the archive made (never a symlink), and nothing
/// is written over an existing entry. Owners are restored when
/// `owners`. Files are fsynced. Returns the manifest the archive carried.
pub fn unpack(input: impl Read, staging: &Path, owners: bool) -> Result<Manifest, MoveError> {
    std::fs::create_dir(staging).map_err(|err| io(staging.display(), err))?;
    std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o700))
        .map_err(|err| io(staging.display(), err))?;
    let mut archive = tar::Archive::new(input);
    let mut manifest: Option<Manifest> = None;
    // Directories get their modes and mtimes once everything is inside.
    let mut dirs: Vec<(PathBuf, u32, u64)> = Vec::new();
    let entries = archive
        .entries()
        .map_err(|err| io("cannot read the archive", err))?;
    for entry in entries {
        let mut entry = entry.map_err(|err| io("cannot read the archive", err))?;
        let raw = entry.path_bytes().into_owned();
        if manifest.is_some() {
            return Err(MoveError::Refused {
                path: String::from_utf8_lossy(&raw).into_owned(),
                why: "an entry after the manifest",
            });
        }
        let rel = checked_path(&raw)?;
        let kind = entry.header().entry_type();
        if rel == MANIFEST_NAME {
            if kind != tar::EntryType::Regular || entry.size() > MAX_MANIFEST {
                return Err(MoveError::Refused {
                    path: rel,
                    why: "not a manifest",
                });
            }
            let mut json = Vec::new();
            entry
                .read_to_end(&mut json)
                .map_err(|err| io("cannot read the manifest", err))?;
            manifest = Some(
                serde_json::from_slice::<Manifest>(&json)
                    .map_err(|err| MoveError::Io(format!("bad manifest: {err}")))?
                    .sorted(),
            );
            continue;
        }
        let header = entry.header();
        let mode = header.mode().map_err(|err| io(&rel, err))? & 0o7777;
        let mtime = header.mtime().map_err(|err| io(&rel, err))?;
        let owner = match owners {
            true => Some((
                header.uid().map_err(|err| io(&rel, err))?,
                header.gid().map_err(|err| io(&rel, err))?,
            )),
            false => None,
        };
        let refuse = |why| {
            Err(MoveError::Refused {
                path: rel.clone(),
                why,
            })
        };
        // Every parent a real directory inside the staging (lstat: a
        // symlink is refused, not followed).
        let mut parent = staging.to_path_buf();
        let parts: Vec<&str> = rel.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            parent.push(part);
            match std::fs::symlink_metadata(&parent) {
                Ok(meta) if meta.file_type().is_dir() => {}
                Ok(_) => return refuse("a parent is not a directory (a symlink?)"),
                Err(_) => return refuse("a parent directory is missing"),
            }
        }
        let full = staging.join(&rel);
        if std::fs::symlink_metadata(&full).is_ok() {
            return refuse("a second entry with this path");
        }
        let failed = |err| io(format!("cannot unpack {rel}"), err);
        match kind {
            tar::EntryType::Directory => {
                std::fs::create_dir(&full).map_err(failed)?;
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o700))
                    .map_err(failed)?;
                dirs.push((full.clone(), mode, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&full)
                    .map_err(failed)?;
                std::io::copy(&mut entry, &mut file).map_err(failed)?;
                file.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(failed)?;
                file.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(mtime))
                    .map_err(failed)?;
                file.sync_all().map_err(failed)?;
            }
            tar::EntryType::Symlink => {
                let Some(target) = entry.link_name_bytes() else {
                    return refuse("a symlink without a target");
                };
                let target = String::from_utf8_lossy(&target).into_owned();
                std::os::unix::fs::symlink(&target, &full).map_err(failed)?;
            }
            _ => return refuse("not a directory, regular file or symlink"),
        }
        if let Some((uid, gid)) = owner {
            let (uid, gid) = (u32::try_from(uid), u32::try_from(gid));
            let (Ok(uid), Ok(gid)) = (uid, gid) else {
                return refuse("an owner out of range");
            };
            std::os::unix::fs::lchown(&full, Some(uid), Some(gid)).map_err(failed)?;
        }
    }
    for (dir, mode, mtime) in dirs.iter().rev() {
        let failed = |err| io(format!("cannot finish {}", dir.display()), err);
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(*mode)).map_err(failed)?;
        let handle = std::fs::File::open(dir).map_err(failed)?;
        handle
            .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(*mtime))
            .map_err(failed)?;
        handle.sync_all().map_err(failed)?;
    }
    std::fs::File::open(staging)
        .and_then(|dir| dir.sync_all())
        .map_err(|err| io(staging.display(), err))?;
    manifest.ok_or_else(|| MoveError::Mismatch("the archive has no manifest (cut short?)".into()))
}

/// What is under `root` now, as a manifest (files hashed again).
pub fn scan(root: &Path) -> Result<Manifest, MoveError> {
    let mut manifest = Manifest::default();
    for (rel, meta) in walk(root)? {
        let full = root.join(&rel);
        let entry = if meta.file_type().is_dir() {
            ManifestEntry {
                path: rel,
                kind: EntryKind::Dir,
                size: 0,
                sha256: None,
                target: None,
            }
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&full).map_err(|err| io(&rel, err))?;
            ManifestEntry {
                target: Some(utf8(&target)?),
                path: rel,
                kind: EntryKind::Symlink,
                size: 0,
                sha256: None,
            }
        } else {
            let file = open_nofollow(&full).map_err(|err| io(&rel, err))?;
            let mut reader = Hashing {
                inner: file,
                hash: Sha256::new(),
                read: 0,
            };
            std::io::copy(&mut reader, &mut std::io::sink()).map_err(|err| io(&rel, err))?;
            ManifestEntry {
                path: rel,
                kind: EntryKind::File,
                size: reader.read,
                sha256: Some(crate::auth::token::hex(&reader.hash.finalize())),
                target: None,
            }
        };
        manifest.entries.push(entry);
    }
    Ok(manifest.sorted())
}

/// Checks `root` against `expected`: every entry present and alike,
/// nothing missing, nothing extra.
pub fn verify(root: &Path, expected: &Manifest) -> Result<(), MoveError> {
    let found = scan(root)?;
    let mut wanted = expected.entries.iter().peekable();
    let mut got = found.entries.iter().peekable();
    loop {
        match (wanted.peek(), got.peek()) {
            (None, None) => return Ok(()),
            (Some(w), None) => return Err(MoveError::Mismatch(format!("{} is missing", w.path))),
            (None, Some(g)) => return Err(MoveError::Mismatch(format!("{} is extra", g.path))),
            (Some(w), Some(g)) => match w.path.cmp(&g.path) {
                std::cmp::Ordering::Less => {
                    return Err(MoveError::Mismatch(format!("{} is missing", w.path)))
                }
                std::cmp::Ordering::Greater => {
                    return Err(MoveError::Mismatch(format!("{} is extra", g.path)))
                }
                std::cmp::Ordering::Equal if w != g => {
                    return Err(MoveError::Mismatch(format!(
                        "{} differs ({:?} {} bytes, expected {:?} {} bytes)",
                        w.path, g.kind, g.size, w.kind, w.size
                    )))
                }
                std::cmp::Ordering::Equal => {
                    wanted.next();
                    got.next();
                }
            },
        }
    }
}

/// What a finished move answers (the internal route, for the CLI and the
/// admin API).
#[derive(Debug, Serialize, Deserialize)]
pub struct MoveOutcome {
    pub user: Uuid,
    pub username: String,
    pub from: String,
    pub to: String,
    pub bytes: u64,
    pub files: u64,
    /// Set when the source's copy could not be removed (left in place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

fn cluster_of(state: &AppState) -> Result<Arc<Cluster>, ApiError> {
    state.cluster.clone().ok_or(ApiError::NotFound)
}

/// `<data-dir>/users` (the templates are `<data-dir>/shared/templates`).
fn users_dir(state: &AppState) -> Result<PathBuf, ApiError> {
    state
        .templates_dir
        .parent()
        .and_then(Path::parent)
        .map(|data| data.join("users"))
        .ok_or_else(|| ApiError::Internal("no data directory".into()))
}

async fn user_of(state: &AppState, id: Uuid) -> Result<User, ApiError> {
    state
        .auth
        .store()
        .user_by_id(id)
        .await?
        .ok_or(ApiError::Missing("user"))
}

/// Blocking work on the blocking pool, its failure as an answer.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, MoveError> + Send + 'static,
) -> Result<T, MoveError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| MoveError::Io(format!("the copy's thread failed: {err}")))?
}

/// Removes `dir` after renaming it to `aside` (at once, so nothing is
/// served from it under its name); gone already is fine.
fn remove_aside(dir: &Path, aside: &Path) -> std::io::Result<()> {
    if aside.exists() {
        std::fs::remove_dir_all(aside)?;
    }
    match std::fs::rename(dir, aside) {
        Ok(()) => std::fs::remove_dir_all(aside),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

/// The target's route: moves the user here from their home host.
async fn run_move(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<Uuid>,
    request: Request,
) -> Result<Json<MoveOutcome>, ApiError> {
    let (parts, _) = request.into_parts();
    let caller = internal_caller(&parts)?.from.clone();
    let cluster = cluster_of(&state)?;
    let store = state.auth.store();
    let user = user_of(&state, id).await?;
    let Some(from) = user.home_host.clone() else {
        return Err(ApiError::Unprocessable(format!(
            "{} has no home host (created before the cluster?)",
            user.username
        )));
    };
    if from == *cluster.name {
        return Err(ApiError::Conflict(format!(
            "{} is on host {from} already",
            user.username
        )));
    }
    if let Some(to) = &user.moving_to {
        return Err(ApiError::Conflict(format!(
            "{} is being moved to host {to} already",
            user.username
        )));
    }
    let source = match store.host(&from).await? {
        Some(host) if host.state() == HostState::Up => host,
        _ => {
            return Err(ApiError::HostUnavailable(format!(
                "{}'s files are on host {from}, which is not up: they cannot be moved now",
                user.username
            )))
        }
    };
    match store.begin_move(id, &from, &cluster.name).await {
        Ok(()) => {}
        Err(StoreError::Stale) => {
            return Err(ApiError::Conflict(format!(
                "{} is being moved already, or was moved meanwhile",
                user.username
            )))
        }
        Err(err) => return Err(err.into()),
    }
    state.auth.user_changed(id);
    info!(user = %user.username, from = %from, to = %cluster.name, by = %caller, "moving a user's files");
    let users = users_dir(&state)?;
    let staging = users.join(format!(".incoming-{id}"));
    let ctx = state.auth.ctx_of(&user);
    let pulled = pull(&state, &cluster, &source, &user, &ctx, &users, &staging).await;
    let manifest = match pulled {
        Ok(manifest) => manifest,
        Err(err) => {
            let aside = users.join(format!(".incoming-{id}.failed"));
            let _ =
                blocking(move || remove_aside(&staging, &aside).map_err(|err| io("staging", err)))
                    .await;
            if let Err(end) = store.end_move(id, &cluster.name, false).await {
                warn!(user = %user.username, error = %end, "cannot end a failed move: the user stays paused until it is ended");
            }
            state.auth.user_changed(id);
            warn!(user = %user.username, from = %from, error = ?err, "a move failed; nothing changed");
            return Err(err);
        }
    };
    let warning = finish(&cluster, &source, &user).await.err();
    if let Some(why) = &warning {
        warn!(user = %user.username, host = %from, why, "moved, but the source's copy is left");
    }
    info!(user = %user.username, from = %from, to = %cluster.name, bytes = manifest.bytes(), files = manifest.files(), "moved a user's files");
    Ok(Json(MoveOutcome {
        user: id,
        username: user.username,
        from,
        to: cluster.name.to_string(),
        bytes: manifest.bytes(),
        files: manifest.files(),
        warning,
    }))
}

/// Pulls, checks and puts the user's files in place, and switches their
/// home host here. Any error leaves the user homed on the source (the
/// caller ends the move and removes the staging).
async fn pull(
    state: &AppState,
    cluster: &Arc<Cluster>,
    source: &crate::store::HostRow,
    user: &User,
    ctx: &UserCtx,
    users: &Path,
    staging: &Path,
) -> Result<Manifest, ApiError> {
    tokio::time::sleep(SETTLE).await;
    let id = user.id;
    let target = format!("/internal/v1/moves/{id}/archive");
    let request = cluster.internal_request(source, Method::GET, &target, Body::empty())?;
    let answer = cluster.send(request).await.map_err(|err| {
        ApiError::HostUnavailable(format!(
            "host {} did not answer for {}'s files: {err}",
            source.name, user.username
        ))
    })?;
    if answer.status() != StatusCode::OK {
        let status = answer.status();
        let body = axum::body::to_bytes(Body::new(answer.into_body()), 64 << 10)
            .await
            .unwrap_or_default();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let why = json["error"]["message"].as_str().map_or_else(
            || String::from_utf8_lossy(&body).into_owned(),
            str::to_string,
        );
        return Err(ApiError::HostUnavailable(format!(
            "host {} could not send {}'s files ({status}): {why}",
            source.name, user.username
        )));
    }
    // Any staging left by an earlier attempt goes first.
    let (dir, aside) = (
        staging.to_path_buf(),
        users.join(format!(".incoming-{id}.old")),
    );
    blocking(move || remove_aside(&dir, &aside).map_err(|err| io("old staging", err)))
        .await
        .map_err(|err| ApiError::Internal(err.to_string()))?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(16);
    let mut body = Body::new(answer.into_body()).into_data_stream();
    let pump = tokio::spawn(async move {
        use futures_util::StreamExt;
        loop {
            let item = match tokio::time::timeout(STALL, body.next()).await {
                Ok(Some(item)) => item.map_err(std::io::Error::other),
                Ok(None) => return,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the source sent nothing for {} s", STALL.as_secs()),
                )),
            };
            let failed = item.is_err();
            if sender.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    let owners = rustix::process::geteuid().is_root();
    let dir = staging.to_path_buf();
    let unpacked = blocking(move || {
        let manifest = unpack(ChannelReader::new(receiver), &dir, owners)?;
        verify(&dir, &manifest)?;
        Ok(manifest)
    })
    .await;
    pump.abort();
    let manifest = unpacked.map_err(|err| match err {
        MoveError::Io(why) => ApiError::HostUnavailable(format!(
            "{}'s files did not arrive from host {}: {why}",
            user.username, source.name
        )),
        other => ApiError::MoveFailed(format!(
            "{}'s files from host {} were refused: {other}",
            user.username, source.name
        )),
    })?;
    // This host's worker may hold the user's directory of an earlier stay.
    state.pool.call(ctx, Op::Files(FileOp::Evict)).await?;
    let (dir, home) = (staging.to_path_buf(), users.join(id.to_string()));
    let aside = users.join(format!(".stale-{id}"));
    let users_dir = users.to_path_buf();
    blocking(move || {
        remove_aside(&home, &aside).map_err(|err| io("the stale copy", err))?;
        std::fs::rename(&dir, &home).map_err(|err| io("cannot put the files in place", err))?;
        std::fs::File::open(&users_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|err| io("cannot sync the users' directory", err))
    })
    .await
    .map_err(|err| ApiError::Internal(err.to_string()))?;
    if let Err(err) = state.auth.store().end_move(id, &cluster.name, true).await {
        // Not switched: the copy here must not be served later.
        let (home, back) = (users.join(id.to_string()), staging.to_path_buf());
        let _ =
            blocking(move || std::fs::rename(&home, &back).map_err(|err| io("undo", err))).await;
        return Err(err.into());
    }
    state.auth.user_changed(id);
    Ok(manifest)
}

/// Tells the source the move is done, so it removes its copy; the reason
/// if it could not.
async fn finish(
    cluster: &Arc<Cluster>,
    source: &crate::store::HostRow,
    user: &User,
) -> Result<(), String> {
    let target = format!("/internal/v1/moves/{}/done", user.id);
    let request = cluster
        .internal_request(source, Method::POST, &target, Body::empty())
        .map_err(|err| format!("{err:?}"))?;
    let answer = cluster.send(request).await.map_err(|err| {
        format!(
            "host {} did not answer; its copy of {}'s files is left in its data directory: {err}",
            source.name, user.username
        )
    })?;
    if answer.status().is_success() {
        return Ok(());
    }
    Err(format!(
        "host {} answered {} to the removal; its copy of {}'s files is left in its data directory",
        source.name,
        answer.status(),
        user.username
    ))
}

/// A blocking reader of the chunks a channel brings.
struct ChannelReader {
    receiver: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    chunk: Bytes,
}

impl ChannelReader {
    fn new(receiver: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> ChannelReader {
        ChannelReader {
            receiver,
            chunk: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.chunk = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// A blocking writer into a channel, in chunks of 256 KiB.
struct ChannelWriter {
    sender: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buffer: Vec<u8>,
}

const CHUNK: usize = 256 << 10;

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= CHUNK {
            self.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buffer));
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the target left"))
    }
}

/// The caller may act on this user's move: their `moving_to` names it and
/// this host is their home.
async fn moving_user(state: &AppState, id: Uuid, caller: &str) -> Result<User, ApiError> {
    let cluster = cluster_of(state)?;
    let user = user_of(state, id).await?;
    if user.moving_to.as_deref() != Some(caller)
        || user.home_host.as_deref() != Some(&*cluster.name)
    {
        return Err(ApiError::Conflict(format!(
            "{} is not being moved from host {} to host {caller}",
            user.username, cluster.name
        )));
    }
    Ok(user)
}

/// Stops every process of the user on this host: tasks, terminals, apps.
async fn stop_processes(state: &AppState, user: &User, ctx: &UserCtx) -> Result<(), ApiError> {
    let store = state.auth.store();
    let running = || async {
        let filter = crate::store::TaskFilter {
            state: Some(warren_protocol::TaskState::Running),
            after: None,
            limit: 1000,
        };
        store.list_tasks(user.id, &filter).await
    };
    for task in running().await? {
        let op = Op::Tasks(TaskOp::Cancel {
            task: TaskId::from(task.id),
            grace_ms: 0,
        });
        // Not running on its worker any more: its end is on its way.
        let _ = state.pool.call(ctx, op).await;
    }
    if let Ok(warren_protocol::Reply::Terminals(terminals)) =
        state.pool.call(ctx, Op::Terminals(TerminalOp::List)).await
    {
        for terminal in terminals {
            let op = Op::Terminals(TerminalOp::HangUp {
                id: terminal.id,
                grace_ms: 0,
            });
            let _ = state.pool.call(ctx, op).await;
        }
    }
    if let Some(apps) = &state.apps {
        apps.hub.stop_all(ctx).await;
    }
    let deadline = tokio::time::Instant::now() + PROCESSES_WAIT;
    while !running().await?.is_empty() {
        if tokio::time::Instant::now() > deadline {
            return Err(ApiError::Busy(format!(
                "{}'s tasks did not end within {} s",
                user.username,
                PROCESSES_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Killed processes are reaped by their worker within moments.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// The source's route: the user's directory as a tar with its manifest.
async fn archive(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<Uuid>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let caller = internal_caller(&parts)?.from.clone();
    let user = moving_user(&state, id, &caller).await?;
    let deadline = tokio::time::Instant::now() + TRANSFERS_WAIT;
    while state.transfers.of(id.into()) > 0 {
        if tokio::time::Instant::now() > deadline {
            return Err(ApiError::Busy(format!(
                "{}'s uploads or downloads did not end within {} s",
                user.username,
                TRANSFERS_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ctx = state.auth.ctx_of(&user);
    stop_processes(&state, &user, &ctx).await?;
    state.pool.call(&ctx, Op::Files(FileOp::Evict)).await?;
    let root = users_dir(&state)?.join(id.to_string());
    if !root.is_dir() {
        return Err(ApiError::Conflict(format!(
            "{}'s files are not on host {} (no directory)",
            user.username,
            cluster_of(&state)?.name
        )));
    }
    // What cannot be packed (a name that is not UTF-8, an unreadable
    // directory) is said now, in the answer, rather than as a cut stream.
    let walked = root.clone();
    blocking(move || walk(&walked).map(drop))
        .await
        .map_err(|err| {
            ApiError::Conflict(format!("{}'s files cannot be moved: {err}", user.username))
        })?;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let username = user.username.clone();
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            sender: sender.clone(),
            buffer: Vec::with_capacity(CHUNK),
        };
        match pack(&root, &mut writer) {
            Ok(manifest) => {
                info!(user = %username, bytes = manifest.bytes(), files = manifest.files(), "sent a user's files to their new host")
            }
            Err(err) => {
                warn!(user = %username, error = %err, "cannot pack a user's files for a move");
                let _ = sender.blocking_send(Err(std::io::Error::other(err.to_string())));
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx));
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The source's route once the user is homed on the caller: removes this
/// host's copy.
async fn done(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<Uuid>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let (parts, _) = request.into_parts();
    let caller = internal_caller(&parts)?.from.clone();
    let cluster = cluster_of(&state)?;
    let user = user_of(&state, id).await?;
    if user.home_host.as_deref() != Some(caller.as_str()) || caller == *cluster.name {
        return Err(ApiError::Conflict(format!(
            "{} is not homed on host {caller}: this host's copy stays",
            user.username
        )));
    }
    let ctx = state.auth.ctx_of(&user);
    state.pool.call(&ctx, Op::Files(FileOp::Evict)).await?;
    let users = users_dir(&state)?;
    let (home, aside) = (
        users.join(id.to_string()),
        users.join(format!(".moved-{id}")),
    );
    blocking(move || remove_aside(&home, &aside).map_err(|err| io("cannot remove", err)))
        .await
        .map_err(|err| ApiError::Internal(err.to_string()))?;
    info!(user = %user.username, to = %caller, "removed the copy of a moved user's files");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn user_dir(root: &Path) {
        std::fs::create_dir_all(root.join("workspace/nested/deeper")).unwrap();
        std::fs::create_dir_all(root.join("state")).unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::write(root.join("workspace/a.txt"), b"hello").unwrap();
        std::fs::write(
            root.join("workspace/nested/deeper/b.bin"),
            vec![7u8; 100_000],
        )
        .unwrap();
        std::fs::write(root.join("tmp/scratch"), b"not moved").unwrap();
        std::os::unix::fs::symlink("nested/deeper/b.bin", root.join("workspace/link")).unwrap();
        std::fs::set_permissions(
            root.join("workspace/a.txt"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
    }

    fn packed(root: &Path) -> (Vec<u8>, Manifest) {
        let mut tar = Vec::new();
        let manifest = pack(root, &mut tar).unwrap();
        (tar, manifest)
    }

    #[test]
    fn a_directory_travels_whole_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        user_dir(&source);
        let (tar, manifest) = packed(&source);
        assert_eq!(manifest.files(), 2);
        assert!(manifest.entries.iter().all(|e| !e.path.starts_with("tmp")));
        let staging = dir.path().join("staging");
        let carried = unpack(tar.as_slice(), &staging, false).unwrap();
        assert_eq!(carried, manifest);
        verify(&staging, &carried).unwrap();
        assert_eq!(
            std::fs::read_link(staging.join("workspace/link")).unwrap(),
            PathBuf::from("nested/deeper/b.bin")
        );
        let meta = std::fs::metadata(staging.join("workspace/a.txt")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        let original = std::fs::metadata(source.join("workspace/a.txt")).unwrap();
        assert_eq!(meta.mtime(), original.mtime());
        assert!(!staging.join("tmp").exists());
    }

    #[test]
    fn a_tampered_missing_or_extra_file_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        user_dir(&source);
        let (tar, manifest) = packed(&source);
        for (n, spoil) in [
            |s: &Path| std::fs::write(s.join("workspace/a.txt"), b"hellO").unwrap(),
            |s: &Path| std::fs::remove_file(s.join("workspace/a.txt")).unwrap(),
            |s: &Path| std::fs::write(s.join("workspace/extra"), b"x").unwrap(),
            |s: &Path| {
                std::fs::remove_file(s.join("workspace/link")).unwrap();
                std::os::unix::fs::symlink("/etc/passwd", s.join("workspace/link")).unwrap();
            },
        ]
        .into_iter()
        .enumerate()
        {
            let staging = dir.path().join(format!("staging{n}"));
            unpack(tar.as_slice(), &staging, false).unwrap();
            spoil(&staging);
            assert!(
                matches!(verify(&staging, &manifest), Err(MoveError::Mismatch(_))),
                "case {n}"
            );
        }
    }

    /// An archive with the given entries (no manifest unless listed).
    fn hostile(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o755);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            if *kind == tar::EntryType::Symlink {
                header.set_size(0);
                // Written raw: the builder's own checks would refuse some.
                header
                    .set_link_name(std::str::from_utf8(data).unwrap())
                    .unwrap();
                let name = &mut header.as_old_mut().name;
                name[..path.len()].copy_from_slice(path.as_bytes());
                header.set_cksum();
                builder.append(&header, std::io::empty()).unwrap();
            } else {
                header.set_size(data.len() as u64);
                let name = &mut header.as_old_mut().name;
                name[..path.len()].copy_from_slice(path.as_bytes());
                header.set_cksum();
                builder.append(&header, *data).unwrap();
            }
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn hostile_archives_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let cases: Vec<Vec<(&str, tar::EntryType, &[u8])>> = vec![
            vec![("../x", tar::EntryType::Regular, b"escaped")],
            vec![("workspace/../../x", tar::EntryType::Regular, b"escaped")],
            vec![("/tmp/x", tar::EntryType::Regular, b"escaped")],
            vec![
                ("workspace", tar::EntryType::Directory, b""),
                ("workspace/l", tar::EntryType::Symlink, b"../../outside"),
                (
                    "workspace/l/x",
                    tar::EntryType::Regular,
                    b"through a symlink",
                ),
            ],
            vec![
                ("l", tar::EntryType::Symlink, b"../outside/x"),
                ("l", tar::EntryType::Regular, b"over the symlink"),
            ],
            vec![("dev", tar::EntryType::Char, b"")],
            vec![("h", tar::EntryType::Link, b"")],
        ];
        for (n, entries) in cases.iter().enumerate() {
            let tar = hostile(entries);
            let staging = dir.path().join(format!("staging{n}"));
            let result = unpack(tar.as_slice(), &staging, false);
            assert!(
                matches!(result, Err(MoveError::Refused { .. })),
                "case {n}: {result:?}"
            );
            assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
            assert!(!dir.path().join("x").exists());
        }
        // No manifest: cut short, refused.
        let tar = hostile(&[("workspace", tar::EntryType::Directory, b"")]);
        let result = unpack(tar.as_slice(), &dir.path().join("cut"), false);
        assert!(matches!(result, Err(MoveError::Mismatch(_))), "{result:?}");
    }
}
