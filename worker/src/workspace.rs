//! Users' files, confined by construction.
//!
//! Each user has `<users>/<id>/` (mode 0700) with `workspace/` (their
//! files), `state/` and `tmp/`, created on first use. Every path is opened
//! with `openat2(workspace_fd, path, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`:
//! the kernel refuses any resolution that would leave the workspace, through
//! `..`, an absolute path or a symlink, whatever the string checks before it
//! did or did not catch. Names are then used only relative to a directory
//! descriptor opened that way (`*at` calls, never following a final symlink
//! where that would matter).
//!
//! Writes go to a temp file in the user's `tmp/` (same file system), are
//! fsynced, and are renamed into place, so a reader sees the old file or the
//! new one, never a part. A user's `tmp/` is emptied the first time this
//! worker process serves them, which removes what a crashed worker left.
//!
//! Everything here blocks; the connection runs it on the blocking pool.

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;
use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use warren_protocol::path;
use warren_protocol::{Entry, EntryKind, OpError, Precondition, Reply, UserId};

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);
const PRIVATE: Mode = Mode::RWXU;

/// All users' directories under one root.
#[derive(Debug)]
pub struct Workspaces {
    users_dir: PathBuf,
    /// Users whose `tmp/` this process has already emptied.
    swept: Mutex<HashSet<UserId>>,
    /// Serialises the check-then-rename step of writes per process (one
    /// worker serves a user), so `If-Match` and `If-None-Match: *` hold.
    commit: Mutex<()>,
}

/// One user's open directories.
pub struct UserDirs {
    workspace: OwnedFd,
    tmp: OwnedFd,
}

fn errno(err: Errno, what: &str) -> OpError {
    match err {
        Errno::NOENT | Errno::NOTDIR => {
            OpError::NotFound(format!("{what}: no such file or directory"))
        }
        // RESOLVE_BENEATH refused a path leaving the workspace: for the
        // caller it simply does not exist.
        Errno::XDEV | Errno::LOOP => {
            OpError::NotFound(format!("{what}: no such file or directory"))
        }
        Errno::EXIST => OpError::Conflict(format!("{what}: already exists")),
        Errno::ISDIR => OpError::Conflict(format!("{what}: is a directory")),
        Errno::NOTEMPTY => {
            OpError::Conflict(format!("{what}: directory not empty (use recursive=true)"))
        }
        Errno::INVAL => OpError::Conflict(format!("{what}: cannot move a directory into itself")),
        Errno::NAMETOOLONG => OpError::BadPath(format!("{what}: name too long")),
        Errno::NOSPC | Errno::DQUOT => {
            OpError::Internal(format!("{what}: the server's disk is full"))
        }
        other => OpError::Internal(format!("{what}: {other}")),
    }
}

fn io_error(err: std::io::Error, what: &str) -> OpError {
    match err.raw_os_error() {
        Some(code) => errno(Errno::from_raw_os_error(code), what),
        None => OpError::Internal(format!("{what}: {err}")),
    }
}

/// The checked components of `path`.
pub fn parts(path_text: &str) -> Result<Vec<&str>, OpError> {
    path::check(path_text).map_err(|err| OpError::BadPath(err.to_string()))
}

fn join(parts: &[&str]) -> String {
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

/// A strong validator from what changes when content may change.
fn etag(stat: &rustix::fs::Stat) -> String {
    format!(
        "\"{:x}-{:x}-{:x}\"",
        stat.st_ino,
        stat.st_size,
        // Any mtime a program may set, however odd, gives some value.
        stat.st_mtime
            .wrapping_mul(1_000_000_000)
            .wrapping_add(stat.st_mtime_nsec as i64)
    )
}

fn entry(name: &str, stat: &rustix::fs::Stat) -> Entry {
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        _ => EntryKind::File,
    };
    Entry {
        name: name.to_string(),
        kind,
        size: if kind == EntryKind::File {
            stat.st_size as u64
        } else {
            0
        },
        modified_ms: stat
            .st_mtime
            .saturating_mul(1000)
            .saturating_add(stat.st_mtime_nsec as i64 / 1_000_000),
        etag: etag(stat),
    }
}

impl Workspaces {
    pub fn new(users_dir: PathBuf) -> Workspaces {
        Workspaces {
            users_dir,
            swept: Mutex::new(HashSet::new()),
            commit: Mutex::new(()),
        }
    }

    /// The user's directories, created (0700) on first use; on this
    /// process's first sight of the user, leftovers in `tmp/` are removed.
    pub fn open(&self, user: UserId) -> Result<UserDirs, OpError> {
        let base = self.users_dir.join(user.to_string());
        for dir in [&self.users_dir, &base] {
            match std::fs::create_dir(dir) {
                Ok(()) => set_private(dir)?,
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(io_error(err, "cannot create the user's directory")),
            }
        }
        let base_fd = rustix::fs::open(
            &base,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|err| errno(err, "cannot open the user's directory"))?;
        let mut opened = Vec::with_capacity(3);
        for name in ["workspace", "state", "tmp"] {
            match rustix::fs::mkdirat(&base_fd, name, PRIVATE) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(err) => return Err(errno(err, "cannot create the user's directories")),
            }
            let fd = rustix::fs::openat(
                &base_fd,
                name,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|err| errno(err, "cannot open the user's directories"))?;
            opened.push(fd);
        }
        let tmp = opened
            .pop()
            .ok_or_else(|| OpError::Internal("no tmp".into()))?;
        let _state = opened.pop();
        let workspace = opened
            .pop()
            .ok_or_else(|| OpError::Internal("no workspace".into()))?;
        let dirs = UserDirs { workspace, tmp };
        let first_sight = self
            .swept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(user);
        if first_sight {
            dirs.sweep_tmp();
        }
        Ok(dirs)
    }

    /// Renames under the per-process commit lock, after `check` passes.
    fn commit<T>(
        &self,
        check: impl FnOnce() -> Result<T, OpError>,
        rename: impl FnOnce() -> Result<(), OpError>,
    ) -> Result<T, OpError> {
        let _guard = self.commit.lock().unwrap_or_else(PoisonError::into_inner);
        let value = check()?;
        rename()?;
        Ok(value)
    }
}

fn set_private(dir: &std::path::Path) -> Result<(), OpError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|err| io_error(err, "cannot protect the user's directory"))
}

/// A fresh name for a temp file or directory in `tmp/`.
fn temp_name(what: &str) -> String {
    let mut bytes = [0u8; 8];
    // Uniqueness, not secrecy: the time and pid are enough if this fails.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    bytes.copy_from_slice(&nanos.to_le_bytes());
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        ".{what}-{}-{:x}-{n}",
        std::process::id(),
        u64::from_le_bytes(bytes)
    )
}

impl UserDirs {
    /// Opens `parts` beneath the workspace.
    fn resolve(&self, parts: &[&str], flags: OFlags) -> Result<OwnedFd, OpError> {
        rustix::fs::openat2(
            &self.workspace,
            join(parts),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|err| errno(err, &join(parts)))
    }

    /// The directory holding the last component, and that component.
    fn parent<'p>(&self, parts: &[&'p str]) -> Result<(OwnedFd, &'p str), OpError> {
        let Some((name, dir)) = parts.split_last() else {
            return Err(OpError::BadPath(
                "this operation needs a path inside the workspace, not the workspace itself".into(),
            ));
        };
        let fd = self.resolve(dir, OFlags::DIRECTORY | OFlags::PATH)?;
        Ok((fd, name))
    }

    fn sweep_tmp(&self) {
        let names: Vec<String> = match Dir::read_from(&self.tmp) {
            Ok(dir) => dir
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name != "." && name != "..")
                .collect(),
            Err(_) => return,
        };
        for name in names {
            if remove_tree(&self.tmp, &name).is_ok() {
                tracing::info!(name, "removed a leftover temp file");
            }
        }
    }

    pub fn stat(&self, path_text: &str) -> Result<Reply, OpError> {
        let parts = parts(path_text)?;
        let fd = self.resolve(&parts, OFlags::PATH | OFlags::NOFOLLOW)?;
        let stat = rustix::fs::fstat(&fd).map_err(|err| errno(err, path_text))?;
        Ok(Reply::Entry(entry(
            parts.last().copied().unwrap_or(""),
            &stat,
        )))
    }

    pub fn list(&self, path_text: &str, after: Option<&str>, limit: u32) -> Result<Reply, OpError> {
        let parts = parts(path_text)?;
        let fd = self.resolve(&parts, OFlags::DIRECTORY | OFlags::RDONLY)?;
        let mut names: Vec<String> = Dir::read_from(&fd)
            .map_err(|err| errno(err, path_text))?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().ok().map(str::to_string))
            .filter(|name| name != "." && name != "..")
            .filter(|name| after.is_none_or(|after| name.as_str() > after))
            .collect();
        names.sort_unstable();
        let more = names.len() > limit as usize;
        names.truncate(limit as usize);
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            // Gone meanwhile: skip it.
            if let Ok(stat) = rustix::fs::statat(&fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                entries.push(entry(&name, &stat));
            }
        }
        Ok(Reply::Listing { entries, more })
    }

    /// Opens the entry at `path` (following symlinks that stay inside) and
    /// describes it; a regular file comes with its open handle, so what is
    /// read later is this very version whatever replaces it meanwhile.
    pub fn open_read(&self, path_text: &str) -> Result<(Option<std::fs::File>, Entry), OpError> {
        let parts = parts(path_text)?;
        let fd = self.resolve(&parts, OFlags::RDONLY)?;
        let stat = rustix::fs::fstat(&fd).map_err(|err| errno(err, path_text))?;
        let found = entry(parts.last().copied().unwrap_or(""), &stat);
        let file = (FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile)
            .then(|| std::fs::File::from(fd));
        Ok((file, found))
    }

    pub fn mkdir(&self, path_text: &str, parents: bool) -> Result<Reply, OpError> {
        let parts = parts(path_text)?;
        if parents {
            self.make_parents(&parts)?;
            let fd = self.resolve(&parts, OFlags::PATH | OFlags::DIRECTORY)?;
            let stat = rustix::fs::fstat(&fd).map_err(|err| errno(err, path_text))?;
            return Ok(Reply::Entry(entry(
                parts.last().copied().unwrap_or(""),
                &stat,
            )));
        }
        let (dir, name) = self.parent(&parts)?;
        rustix::fs::mkdirat(&dir, name, PRIVATE).map_err(|err| errno(err, path_text))?;
        let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|err| errno(err, path_text))?;
        Ok(Reply::Entry(entry(name, &stat)))
    }

    /// Creates every directory along `parts` that is missing.
    fn make_parents(&self, parts: &[&str]) -> Result<(), OpError> {
        for depth in 1..=parts.len() {
            let (dir, name) = self.parent(&parts[..depth])?;
            match rustix::fs::mkdirat(&dir, name, PRIVATE) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(err) => return Err(errno(err, &join(&parts[..depth]))),
            }
        }
        Ok(())
    }

    pub fn delete(&self, path_text: &str, recursive: bool) -> Result<Reply, OpError> {
        let parts = parts(path_text)?;
        let (dir, name) = self.parent(&parts)?;
        let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|err| errno(err, path_text))?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            if recursive {
                remove_tree(&dir, name)?;
            } else {
                rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)
                    .map_err(|err| errno(err, path_text))?;
            }
        } else {
            rustix::fs::unlinkat(&dir, name, AtFlags::empty())
                .map_err(|err| errno(err, path_text))?;
        }
        Ok(Reply::Done)
    }

    pub fn rename(&self, from: &str, to: &str) -> Result<Reply, OpError> {
        let from_parts = parts(from)?;
        let to_parts = parts(to)?;
        let (from_dir, from_name) = self.parent(&from_parts)?;
        let (to_dir, to_name) = self.parent(&to_parts)?;
        rustix::fs::renameat_with(
            &from_dir,
            from_name,
            &to_dir,
            to_name,
            RenameFlags::NOREPLACE,
        )
        .map_err(|err| errno(err, &format!("{from} -> {to}")))?;
        let stat = rustix::fs::statat(&to_dir, to_name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|err| errno(err, to))?;
        Ok(Reply::Entry(entry(to_name, &stat)))
    }

    pub fn copy(&self, from: &str, to: &str) -> Result<Reply, OpError> {
        let from_parts = parts(from)?;
        let to_parts = parts(to)?;
        let (from_dir, from_name) = self.parent(&from_parts)?;
        let (to_dir, to_name) = self.parent(&to_parts)?;
        // Build the copy in tmp/, then move it into place in one rename.
        let temp = temp_name("copy");
        let copied = copy_tree(&from_dir, from_name, &self.tmp, &temp);
        let placed = copied.and_then(|()| {
            rustix::fs::renameat_with(
                &self.tmp,
                temp.as_str(),
                &to_dir,
                to_name,
                RenameFlags::NOREPLACE,
            )
            .map_err(|err| errno(err, to))
        });
        if let Err(err) = placed {
            let _ = remove_tree(&self.tmp, &temp);
            return Err(err);
        }
        let stat = rustix::fs::statat(&to_dir, to_name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|err| errno(err, to))?;
        Ok(Reply::Entry(entry(to_name, &stat)))
    }

    /// Starts a write: checks the target's directory (creating it with
    /// `parents`) and opens a temp file.
    pub fn begin_write(
        self: Arc<Self>,
        path_text: &str,
        parents: bool,
    ) -> Result<PendingWrite, OpError> {
        let parts = parts(path_text)?;
        if parents && parts.len() > 1 {
            self.make_parents(&parts[..parts.len() - 1])?;
        }
        let (dir, name) = self.parent(&parts)?;
        let temp = temp_name("upload");
        let fd = rustix::fs::openat(
            &self.tmp,
            temp.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|err| errno(err, "cannot create a temp file"))?;
        Ok(PendingWrite {
            dirs: self,
            dir,
            name: name.to_string(),
            path: path_text.to_string(),
            temp,
            file: Some(std::fs::File::from(fd)),
            written: 0,
        })
    }
}

/// A write in progress: bytes go to a temp file; [`PendingWrite::commit`]
/// puts it in place; dropping it uncommitted removes the temp file.
pub struct PendingWrite {
    dirs: Arc<UserDirs>,
    dir: OwnedFd,
    name: String,
    path: String,
    temp: String,
    file: Option<std::fs::File>,
    pub written: u64,
}

impl PendingWrite {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), OpError> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| OpError::Internal("write after commit".into()))?;
        file.write_all(bytes)
            .map_err(|err| io_error(err, "cannot write the temp file"))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// fsyncs, checks `precondition` against the current file and renames
    /// the temp file over it (under the commit lock), then fsyncs the
    /// directory. Returns the new entry and whether the file is new.
    pub fn commit(
        mut self,
        workspaces: &Workspaces,
        precondition: &Precondition,
    ) -> Result<(Entry, bool), OpError> {
        let file = self
            .file
            .take()
            .ok_or_else(|| OpError::Internal("committed twice".into()))?;
        file.sync_all()
            .map_err(|err| io_error(err, "cannot flush the temp file"))?;
        let stat = rustix::fs::fstat(&file).map_err(|err| errno(err, "temp file"))?;
        drop(file);
        let created = workspaces.commit(
            || {
                let current = match rustix::fs::statat(
                    &self.dir,
                    self.name.as_str(),
                    AtFlags::SYMLINK_NOFOLLOW,
                ) {
                    Ok(stat) => Some(stat),
                    Err(Errno::NOENT) => None,
                    Err(err) => return Err(errno(err, &self.path)),
                };
                if let Some(current) = &current {
                    if FileType::from_raw_mode(current.st_mode) == FileType::Directory {
                        return Err(OpError::Conflict(format!("{}: is a directory", self.path)));
                    }
                }
                match (precondition, &current) {
                    (Precondition::Absent, Some(_)) => Err(OpError::PreconditionFailed(format!(
                        "{} already exists",
                        self.path
                    ))),
                    (Precondition::Match(_), None) => Err(OpError::PreconditionFailed(format!(
                        "{} does not exist",
                        self.path
                    ))),
                    (Precondition::Match(tags), Some(current))
                        if !tags.iter().any(|tag| tag == "*" || *tag == etag(current)) =>
                    {
                        Err(OpError::PreconditionFailed(format!(
                            "{} has changed",
                            self.path
                        )))
                    }
                    _ => Ok(current.is_none()),
                }
            },
            || {
                rustix::fs::renameat(
                    &self.dirs.tmp,
                    self.temp.as_str(),
                    &self.dir,
                    self.name.as_str(),
                )
                .map_err(|err| errno(err, &self.path))
            },
        )?;
        // The rename itself is durable once the directory is.
        let _ = rustix::fs::fsync(&self.dir);
        self.temp.clear();
        Ok((entry(&self.name, &stat), created))
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if !self.temp.is_empty() {
            let _ = rustix::fs::unlinkat(&self.dirs.tmp, self.temp.as_str(), AtFlags::empty());
        }
    }
}

/// Removes `name` in `dir` and, if it is a directory, everything below it,
/// never following a symlink.
fn remove_tree(dir: &impl AsFd, name: &str) -> Result<(), OpError> {
    let stat =
        rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|err| errno(err, name))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(|err| errno(err, name));
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|err| errno(err, name))?;
    let children: Vec<String> = Dir::read_from(&sub)
        .map_err(|err| errno(err, name))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|child| child != "." && child != "..")
        .collect();
    for child in children {
        remove_tree(&sub, &child)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(|err| errno(err, name))
}

/// Copies `name` in `from` to `to_name` in `to`: files with their bytes,
/// directories recursively; symlinks are left out (never followed).
fn copy_tree(from: &impl AsFd, name: &str, to: &impl AsFd, to_name: &str) -> Result<(), OpError> {
    let stat = rustix::fs::statat(from, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|err| errno(err, name))?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Directory => {
            rustix::fs::mkdirat(to, to_name, PRIVATE).map_err(|err| errno(err, to_name))?;
            let source = rustix::fs::openat(
                from,
                name,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|err| errno(err, name))?;
            let target = rustix::fs::openat(
                to,
                to_name,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|err| errno(err, to_name))?;
            let children: Vec<String> = Dir::read_from(&source)
                .map_err(|err| errno(err, name))?
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str().ok().map(str::to_string))
                .filter(|child| child != "." && child != "..")
                .collect();
            for child in children {
                copy_tree(&source, &child, &target, &child)?;
            }
            Ok(())
        }
        FileType::RegularFile => {
            let source = rustix::fs::openat(
                from,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|err| errno(err, name))?;
            let target = rustix::fs::openat(
                to,
                to_name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::RUSR | Mode::WUSR,
            )
            .map_err(|err| errno(err, to_name))?;
            let mut source = std::fs::File::from(source);
            let mut target = std::fs::File::from(target);
            std::io::copy(&mut source, &mut target).map_err(|err| io_error(err, name))?;
            target.sync_all().map_err(|err| io_error(err, to_name))
        }
        _ => Ok(()),
    }
}

/// Positions `file` at `offset`.
pub fn seek(file: &mut std::fs::File, offset: u64) -> Result<(), OpError> {
    file.seek(SeekFrom::Start(offset))
        .map(|_| ())
        .map_err(|err| io_error(err, "cannot seek"))
}

/// Reads up to `buf.len()` bytes, retrying on interruption.
pub fn read_chunk(file: &mut std::fs::File, buf: &mut [u8]) -> Result<usize, OpError> {
    loop {
        match file.read(buf) {
            Ok(n) => return Ok(n),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(io_error(err, "cannot read the file")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Workspaces, Arc<UserDirs>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let workspaces = Workspaces::new(dir.path().join("users"));
        let user = UserId([7; 16]);
        let dirs = Arc::new(workspaces.open(user).expect("open"));
        (dir, workspaces, dirs)
    }

    fn write(
        workspaces: &Workspaces,
        dirs: &Arc<UserDirs>,
        path: &str,
        bytes: &[u8],
    ) -> Result<(Entry, bool), OpError> {
        let mut pending = dirs.clone().begin_write(path, false)?;
        pending.write(bytes)?;
        pending.commit(workspaces, &Precondition::None)
    }

    #[test]
    fn symlinks_out_of_the_workspace_lead_nowhere() {
        let (root, workspaces, dirs) = setup();
        let outside = root.path().join("secret");
        std::fs::write(&outside, "top secret").expect("write");
        let ws = root
            .path()
            .join("users")
            .join(UserId([7; 16]).to_string())
            .join("workspace");
        std::os::unix::fs::symlink(&outside, ws.join("link")).expect("symlink");
        std::os::unix::fs::symlink("..", ws.join("up")).expect("symlink");
        std::os::unix::fs::symlink("loop", ws.join("loop")).expect("symlink");
        assert!(matches!(dirs.open_read("link"), Err(OpError::NotFound(_))));
        assert!(matches!(
            dirs.list("up", None, 10),
            Err(OpError::NotFound(_))
        ));
        assert!(matches!(
            dirs.open_read("up/secret"),
            Err(OpError::NotFound(_))
        ));
        assert!(matches!(dirs.open_read("loop"), Err(OpError::NotFound(_))));
        // Writing through the link replaces the link, never the target.
        let (written, created) = write(&workspaces, &dirs, "link", b"mine").expect("write");
        assert!(!created);
        assert_eq!(written.kind, EntryKind::File);
        assert_eq!(
            std::fs::read_to_string(&outside).expect("read"),
            "top secret"
        );
        assert!(matches!(
            write(&workspaces, &dirs, "up/x", b"x"),
            Err(OpError::NotFound(_))
        ));
        assert!(
            dirs.delete("up", false).is_ok(),
            "deleting the link itself is fine"
        );
        assert!(root.path().join("secret").exists());
    }

    #[test]
    fn writes_replace_atomically_and_clean_up() {
        let (root, workspaces, dirs) = setup();
        let (first, created) = write(&workspaces, &dirs, "a.txt", b"one").expect("write");
        assert!(created);
        let (second, created) = write(&workspaces, &dirs, "a.txt", b"two!").expect("write");
        assert!(!created);
        assert_ne!(first.etag, second.etag);
        assert_eq!(second.size, 4);
        // A stale If-Match fails; the content stays.
        let mut pending = dirs.clone().begin_write("a.txt", false).expect("begin");
        pending.write(b"three").expect("write");
        let stale = Precondition::Match(vec![first.etag.clone()]);
        assert!(matches!(
            pending.commit(&workspaces, &stale),
            Err(OpError::PreconditionFailed(_))
        ));
        let (file, found) = dirs.open_read("a.txt").expect("read");
        assert_eq!(found.etag, second.etag);
        let mut file = file.expect("a regular file");
        let mut buf = [0u8; 16];
        let n = read_chunk(&mut file, &mut buf).expect("read");
        assert_eq!(&buf[..n], b"two!");
        // An abandoned write leaves nothing in tmp/.
        let mut pending = dirs.clone().begin_write("b.txt", false).expect("begin");
        pending.write(b"partial").expect("write");
        drop(pending);
        let tmp = root
            .path()
            .join("users")
            .join(UserId([7; 16]).to_string())
            .join("tmp");
        assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);
        assert!(matches!(dirs.stat("b.txt"), Err(OpError::NotFound(_))));
    }

    #[test]
    fn directories_list_move_copy_and_delete() {
        let (_root, workspaces, dirs) = setup();
        dirs.mkdir("d/e", true).expect("mkdir -p");
        for name in ["c", "a", "b"] {
            write(&workspaces, &dirs, &format!("d/{name}"), name.as_bytes()).expect("write");
        }
        let Reply::Listing { entries, more } = dirs.list("d", None, 2).expect("list") else {
            panic!()
        };
        assert_eq!(
            entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(more);
        let Reply::Listing { entries, more } = dirs.list("d", Some("b"), 10).expect("list") else {
            panic!()
        };
        assert_eq!(
            entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["c", "e"]
        );
        assert!(!more);
        dirs.copy("d", "d2").expect("copy tree");
        assert!(matches!(dirs.copy("d", "d2"), Err(OpError::Conflict(_))));
        dirs.rename("d2/a", "a-moved").expect("move");
        assert!(
            matches!(dirs.rename("d/b", "a-moved"), Err(OpError::Conflict(_))),
            "no replace"
        );
        assert!(matches!(
            dirs.rename("d", "d/e/inside"),
            Err(OpError::Conflict(_))
        ));
        assert!(matches!(dirs.delete("d", false), Err(OpError::Conflict(_))));
        dirs.delete("d", true).expect("rm -r");
        assert!(matches!(dirs.stat("d"), Err(OpError::NotFound(_))));
        assert!(matches!(dirs.delete("", true), Err(OpError::BadPath(_))));
    }
}
