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
use rustix::io::{Errno, ReadWriteFlags};
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::io::{IoSlice, IoSliceMut, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use warren_protocol::path::{self, MAX_DEPTH};
use warren_protocol::{
    Entry, EntryKind, OpError, Precondition, Reply, UserCtx, UserId, MIN_ENTRY_CHARGE,
};

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);
const PRIVATE: Mode = Mode::RWXU;

/// All users' directories under one root.
#[derive(Debug)]
pub struct Workspaces {
    users_dir: PathBuf,
    /// Room on the file system that users' writes never take (for the
    /// database, sockets and logs beside them).
    disk_reserve: DiskReserve,
    /// Users whose `tmp/` this process has already emptied.
    swept: Mutex<HashSet<UserId>>,
    /// Deleted users whose files this process removed: never reopened.
    purged: Mutex<HashSet<UserId>>,
    /// One lock per user, held across every change of their workspace
    /// that matters to preconditions or usage (check, rename, accounting),
    /// and across the first-sight sweep of their `tmp/`.
    locks: Mutex<HashMap<UserId, Arc<Mutex<()>>>>,
    /// Open directories (three descriptors a user) of the users served
    /// most recently, at most [`open_users_limit`] of them, so a worker
    /// serving any number of users stays within its open-file limit. A user
    /// evicted while a request of theirs runs keeps that request's
    /// descriptors until it ends.
    dirs: moka::sync::Cache<UserId, Arc<UserDirs>>,
    /// Each user's usage: counted by walking the workspace the first time
    /// this process needs it, then kept up to date by every change.
    usage: Mutex<HashMap<UserId, Usage>>,
    /// Users whose usage must be counted again before it is next used
    /// (their own processes, tasks, may have changed the workspace), and
    /// when each user's usage was last counted from the disk: a stale count
    /// is taken again at most every [`RECOUNT_EVERY`].
    stale: Mutex<Recounts>,
    /// Writes received but not yet put in place (a multipart upload's
    /// parts until all are known good), by user and stage number, with
    /// when they were staged.
    staged: Mutex<Staged>,
}

#[derive(Default)]
struct Staged {
    next: u64,
    writes: HashMap<(UserId, u64), (PendingWrite, std::time::Instant)>,
    /// Uploads the master writes into through a handed-over descriptor,
    /// until it commits or drops them, by user and upload number.
    uploads: HashMap<(UserId, u64), OpenUpload>,
}

/// An upload whose temp file the master writes (see [`Workspaces::begin_upload`]).
struct OpenUpload {
    pending: PendingWrite,
    precondition: Precondition,
    staged: bool,
}

/// An open file the worker may hand over to the master with an answer
/// (`SCM_RIGHTS`, see `warren_protocol::io`). It is made only in this
/// module, in two places: [`UserDirs::read_or_open`] (a regular file
/// opened beneath the user's workspace with `openat2(RESOLVE_BENEATH |
/// RESOLVE_NO_MAGICLINKS)`, read-only) and [`Workspaces::begin_upload`]
/// (a duplicate of the temp file this module created in the user's
/// `tmp/`, write-only). The connection's hand-over channel takes nothing
/// but this type, so the worker cannot hand over anything else: no
/// directory, nothing outside a workspace, no socket.
#[derive(Debug)]
pub struct Passable(OwnedFd);

impl AsFd for Passable {
    fn as_fd(&self) -> rustix::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("writes", &self.writes.len())
            .field("uploads", &self.uploads.len())
            .finish()
    }
}

/// A staged write not committed or dropped within this long is dropped
/// (its master request is long gone).
const STAGE_TTL: std::time::Duration = std::time::Duration::from_secs(600);
/// An upload the master writes whose temp file nobody wrote for this long
/// is dropped: the master would have dropped it after its
/// `--upload-idle-timeout`, so only a drop that never arrived is left.
const UPLOAD_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
/// Staged writes one user may have at once.
const MAX_STAGED_PER_USER: usize = 1000;

/// How often at most a user's usage is counted again from the disk while
/// their tasks keep making it stale.
const RECOUNT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Which users' usage counts are out of date, and when each was taken.
#[derive(Debug, Default)]
struct Recounts {
    /// Their tasks ran since their usage was last counted.
    stale: HashSet<UserId>,
    /// To be counted at the next need however recent the last count (the
    /// task guard asks).
    force: HashSet<UserId>,
    /// When each user's usage was last counted from the disk.
    counted: HashMap<UserId, std::time::Instant>,
}

impl Recounts {
    /// Whether the user's usage is to be counted from the disk now (if so,
    /// the count is taken as done now).
    fn take(&mut self, user: UserId, now: std::time::Instant) -> bool {
        let due = self.force.remove(&user)
            || (self.stale.contains(&user)
                && self
                    .counted
                    .get(&user)
                    .is_none_or(|at| now.saturating_duration_since(*at) >= RECOUNT_EVERY));
        if due {
            self.stale.remove(&user);
            self.counted.insert(user, now);
        }
        due
    }

    fn forget(&mut self, user: UserId) {
        self.stale.remove(&user);
        self.force.remove(&user);
        self.counted.remove(&user);
    }
}

/// What a workspace takes: the disk space charged for its entries (see
/// [`charge`]), its regular files and all its entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
    pub entries: u64,
    /// Bytes of writes and copies in progress (in `tmp/`), counted against
    /// the quota so parallel uploads cannot overshoot it together.
    pub reserved: u64,
    /// Entries that writes and copies in progress will add.
    pub reserved_entries: u64,
}

impl Usage {
    fn add(&mut self, other: Usage) {
        self.bytes += other.bytes;
        self.files += other.files;
        self.entries += other.entries;
    }

    fn sub(&mut self, other: Usage) {
        self.bytes = self.bytes.saturating_sub(other.bytes);
        self.files = self.files.saturating_sub(other.files);
        self.entries = self.entries.saturating_sub(other.entries);
    }

    /// Bytes, files and entries only (what the API reports).
    fn counted(self) -> Usage {
        Usage {
            reserved: 0,
            reserved_entries: 0,
            ..self
        }
    }

    /// What one entry so described takes.
    fn of(stat: &rustix::fs::Stat) -> Usage {
        Usage {
            bytes: charge(stat),
            files: u64::from(FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile),
            entries: 1,
            ..Usage::default()
        }
    }
}

/// What an entry is charged against the quota: the disk space it holds
/// (allocated blocks, so a sparse file costs what it allocates), and at
/// least [`MIN_ENTRY_CHARGE`], so that empty files and directories, which
/// cost the file system an inode and a directory entry, are not free.
fn charge(stat: &rustix::fs::Stat) -> u64 {
    (stat.st_blocks as u64)
        .saturating_mul(512)
        .max(MIN_ENTRY_CHARGE)
}

/// `bytes` rounded up to whole blocks of [`MIN_ENTRY_CHARGE`], at least one:
/// what a file of that many bytes will be charged once written.
fn charge_of_len(bytes: u64) -> u64 {
    bytes
        .div_ceil(MIN_ENTRY_CHARGE)
        .max(1)
        .saturating_mul(MIN_ENTRY_CHARGE)
}

/// A user's limits: disk space charged and entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub bytes: u64,
    pub entries: u64,
}

impl Quota {
    pub fn of(user: &UserCtx) -> Quota {
        Quota {
            bytes: user.quota_bytes,
            entries: user.quota_files,
        }
    }
}

/// One user's open directories.
#[derive(Debug)]
pub struct UserDirs {
    user: UserId,
    /// The uid (and gid) the user's processes run as: every entry the
    /// API makes in the workspace is given to it before it appears there.
    /// `None`: entries stay warren's.
    owner: Option<u32>,
    workspace: OwnedFd,
    state: OwnedFd,
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
        Errno::NXIO | Errno::NODEV => {
            OpError::NotARegularFile(format!("{what}: not a regular file"))
        }
        Errno::NOSPC | Errno::DQUOT => {
            OpError::DiskFull(format!("{what}: the server's disk is full"))
        }
        Errno::MFILE | Errno::NFILE | Errno::NOMEM => OpError::Busy(format!(
            "{what}: the server is out of open files or memory; try again shortly"
        )),
        other => OpError::Internal(format!("{what}: {other}")),
    }
}

pub(crate) fn io_error(err: std::io::Error, what: &str) -> OpError {
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

fn kind_of(stat: &rustix::fs::Stat) -> EntryKind {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        FileType::Fifo => EntryKind::Fifo,
        FileType::Socket => EntryKind::Socket,
        FileType::CharacterDevice | FileType::BlockDevice | FileType::Unknown => EntryKind::Device,
    }
}

/// How an error names a kind of entry.
fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "a file",
        EntryKind::Dir => "a directory",
        EntryKind::Symlink => "a symbolic link",
        EntryKind::Fifo => "a named pipe (FIFO)",
        EntryKind::Socket => "a socket",
        EntryKind::Device => "a device",
    }
}

/// What reading `path`, found to be `kind` (neither a file nor a
/// directory), gets.
fn not_regular(path: &str, kind: EntryKind) -> OpError {
    OpError::NotARegularFile(format!(
        "{path} is {}, not a regular file: it is not read",
        kind_name(kind)
    ))
}

fn entry(name: &str, stat: &rustix::fs::Stat) -> Entry {
    let kind = kind_of(stat);
    Entry {
        name: name.to_string(),
        name_valid: true,
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

/// What a purged user's requests get.
fn purged() -> OpError {
    OpError::NotFound("this user's files were removed".into())
}

/// Removes `dir` and everything in it at any depth (std's `remove_dir_all`
/// never follows a symlink); already gone is fine. A request still running
/// may add an entry meanwhile, so a failure is retried a few times.
fn remove_all(dir: &std::path::Path) -> Result<(), OpError> {
    let mut tries = 0;
    loop {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) if tries < 3 => tries += 1,
            Err(err) => {
                return Err(OpError::Internal(format!(
                    "cannot remove the user's files in {}: {err}",
                    dir.display()
                )))
            }
        }
    }
}

/// How many users' directories a worker keeps open: a quarter of its
/// open-file limit at three descriptors each, leaving the rest for files
/// being read or written, the master's socket and the runtime.
pub fn open_users_limit() -> u64 {
    let files = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    (files / 4 / 3).clamp(4, 1 << 16)
}

impl Workspaces {
    pub fn new(users_dir: PathBuf) -> Workspaces {
        Workspaces::keeping_open(users_dir, open_users_limit())
    }

    /// Leaves `reserve` free on the file system of the users' directories.
    pub fn reserving(mut self, reserve: DiskReserve) -> Workspaces {
        self.disk_reserve = reserve;
        self
    }

    /// Keeps at most `open_users` users' directories open at once.
    pub fn keeping_open(users_dir: PathBuf, open_users: u64) -> Workspaces {
        Workspaces {
            users_dir,
            disk_reserve: DiskReserve::default(),
            swept: Mutex::new(HashSet::new()),
            purged: Mutex::new(HashSet::new()),
            locks: Mutex::new(HashMap::new()),
            dirs: moka::sync::Cache::builder()
                .max_capacity(open_users)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            usage: Mutex::new(HashMap::new()),
            stale: Mutex::new(Recounts::default()),
            staged: Mutex::new(Staged::default()),
        }
    }

    /// Keeps `pending` (all its bytes received; fsynced at the commit)
    /// under a new stage number, to be put in place by
    /// [`Self::commit_staged`]; until then its temp file and reservation
    /// stay. Drops stale stages on the way.
    pub fn stage(&self, user: UserId, pending: PendingWrite) -> Result<u64, OpError> {
        let stale: Vec<PendingWrite>;
        let outcome = {
            let mut staged = self.staged.lock().unwrap_or_else(PoisonError::into_inner);
            let now = std::time::Instant::now();
            stale = take_where(&mut staged.writes, |(_, at)| {
                now.duration_since(*at) > STAGE_TTL
            })
            .into_iter()
            .map(|(pending, _)| pending)
            .collect();
            let mine = staged.writes.keys().filter(|(u, _)| *u == user).count();
            if mine >= MAX_STAGED_PER_USER {
                Err(OpError::Invalid(format!(
                    "more than {MAX_STAGED_PER_USER} files in uploads at once"
                )))
            } else {
                staged.next += 1;
                let stage = staged.next;
                staged.writes.insert((user, stage), (pending, now));
                Ok(stage)
            }
        };
        // Their temp files go outside the lock.
        drop(stale);
        outcome
    }

    /// Puts the staged writes in place in order; stops at the first that
    /// fails (dropping the rest).
    pub fn commit_staged(&self, user: UserId, stages: &[u64]) -> Result<Reply, OpError> {
        let pending: Vec<Option<PendingWrite>> = {
            let mut staged = self.staged.lock().unwrap_or_else(PoisonError::into_inner);
            stages
                .iter()
                .map(|stage| staged.writes.remove(&(user, *stage)).map(|(p, _)| p))
                .collect()
        };
        let mut written = Vec::with_capacity(pending.len());
        for pending in pending {
            let pending = pending.ok_or_else(|| {
                OpError::NotFound("the upload's files are gone (it took too long)".into())
            })?;
            let (entry, created, replaced) =
                pending.commit_keeping_replaced(&Precondition::None)?;
            drop(replaced);
            written.push(warren_protocol::WriteOutcome {
                entry,
                created,
                stage: None,
            });
        }
        Ok(Reply::Written(written))
    }

    /// Starts an upload the master writes itself: checks as a write does
    /// ([`UserDirs::begin_write`]), reserves `expected` bytes if known,
    /// and keeps the pending write under a new upload number. Returns the
    /// answer and a write-only descriptor of the temp file to hand over.
    /// Uploads whose temp file nobody wrote for [`UPLOAD_TTL`] are dropped
    /// on the way (their master request is long gone).
    #[allow(clippy::too_many_arguments)]
    pub fn begin_upload(
        self: &Arc<Self>,
        dirs: Arc<UserDirs>,
        path: &str,
        parents: bool,
        quota: Quota,
        precondition: Precondition,
        staged: bool,
        expected: Option<u64>,
    ) -> Result<(Reply, Passable), OpError> {
        let user = dirs.user;
        let mut pending = dirs.begin_write(self.clone(), path, parents, quota, &precondition)?;
        if let Some(expected) = expected {
            pending.reserve_for(expected)?;
        }
        let file = pending
            .file
            .as_ref()
            .ok_or_else(|| OpError::Internal("an upload without its temp file".into()))?;
        let handed = rustix::io::fcntl_dupfd_cloexec(file, 0)
            .map_err(|err| errno(err, "cannot hand over the temp file"))?;
        let reserved = pending.reserved;
        let stale: Vec<OpenUpload>;
        let outcome = {
            let mut staged_writes = self.staged.lock().unwrap_or_else(PoisonError::into_inner);
            stale = take_where(&mut staged_writes.uploads, |upload| {
                upload.pending.idle_for() > UPLOAD_TTL
            });
            let mine = staged_writes
                .uploads
                .keys()
                .filter(|(u, _)| *u == user)
                .count();
            if mine >= MAX_STAGED_PER_USER {
                Err(OpError::Invalid(format!(
                    "more than {MAX_STAGED_PER_USER} uploads at once"
                )))
            } else {
                // Numbers no earlier worker of this slot gave out (its
                // master may still name them): they start at the pid.
                if staged_writes.next == 0 {
                    staged_writes.next = u64::from(std::process::id()) << 32;
                }
                staged_writes.next += 1;
                let upload = staged_writes.next;
                staged_writes.uploads.insert(
                    (user, upload),
                    OpenUpload {
                        pending,
                        precondition,
                        staged,
                    },
                );
                Ok((
                    Reply::UploadOpened {
                        upload,
                        reserved,
                        user,
                    },
                    Passable(handed),
                ))
            }
        };
        // Their temp files go outside the lock.
        drop(stale);
        outcome
    }

    /// Reserves room for `total` bytes of an upload in all.
    pub fn reserve_upload(&self, user: UserId, upload: u64, total: u64) -> Result<Reply, OpError> {
        let mut staged = self.staged.lock().unwrap_or_else(PoisonError::into_inner);
        let open = staged
            .uploads
            .get_mut(&(user, upload))
            .ok_or_else(upload_gone)?;
        open.pending.reserve_for(total)?;
        Ok(Reply::Reserved {
            reserved: open.pending.reserved,
        })
    }

    /// Ends an upload the master wrote `len` bytes into: put in place
    /// (fsync, precondition, quota, rename) or staged. Returns the answer
    /// and the handle of the file it replaced (free it after answering).
    pub fn commit_upload(
        &self,
        user: UserId,
        upload: u64,
        len: u64,
    ) -> Result<(Reply, Option<OwnedFd>), OpError> {
        let open = self
            .staged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .uploads
            .remove(&(user, upload))
            .ok_or_else(upload_gone)?;
        let OpenUpload {
            mut pending,
            precondition,
            staged,
        } = open;
        let entry = pending.describe()?;
        if entry.size != len {
            return Err(OpError::Internal(format!(
                "the upload's temp file holds {} bytes, the master wrote {len}",
                entry.size
            )));
        }
        // Charged for what is there, whoever wrote it.
        pending.reserve_for(len)?;
        pending.written = len;
        if staged {
            let stage = self.stage(user, pending)?;
            let outcome = warren_protocol::WriteOutcome {
                entry,
                created: false,
                stage: Some(stage),
            };
            return Ok((Reply::Written(vec![outcome]), None));
        }
        let (entry, created, replaced) = pending.commit_keeping_replaced(&precondition)?;
        let outcome = warren_protocol::WriteOutcome {
            entry,
            created,
            stage: None,
        };
        Ok((Reply::Written(vec![outcome]), replaced))
    }

    /// Abandons an upload (an unknown one is ignored).
    pub fn drop_upload(&self, user: UserId, upload: u64) {
        let dropped = self
            .staged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .uploads
            .remove(&(user, upload));
        drop(dropped);
    }

    /// Abandons staged writes (unknown stages are ignored).
    pub fn drop_staged(&self, user: UserId, stages: &[u64]) {
        let dropped: Vec<_> = {
            let mut staged = self.staged.lock().unwrap_or_else(PoisonError::into_inner);
            stages
                .iter()
                .filter_map(|stage| staged.writes.remove(&(user, *stage)))
                .collect()
        };
        drop(dropped);
    }

    /// The user's directories, created (0700) on first use; on this
    /// process's first sight of the user, leftovers in `tmp/` are removed.
    pub fn open(&self, user: UserId) -> Result<Arc<UserDirs>, OpError> {
        if let Some(dirs) = self.opened(user) {
            return Ok(dirs);
        }
        self.open_as(user, None)
    }

    /// [`Workspaces::open`] for a user whose processes run as `owner`
    /// (`UserCtx::uid`): the workspace is handed over to that uid on this
    /// process's first sight of it, and everything the API makes in it
    /// belongs to that uid.
    pub fn open_as(&self, user: UserId, owner: Option<u32>) -> Result<Arc<UserDirs>, OpError> {
        if let Some(dirs) = self.opened(user) {
            if dirs.owner == owner {
                return Ok(dirs);
            }
            // Opened without the uid (a usage count) or before a change.
            self.dirs.invalidate(&user);
        }
        let dirs = self
            .dirs
            .entry(user)
            .or_try_insert_with(|| self.open_fresh(user, owner).map(Arc::new))
            .map_err(|err| OpError::clone(&err))?
            .into_value();
        // A purge between the opening and the insertion must not leave the
        // removed tree in the cache.
        if self.was_purged(user) {
            self.dirs.invalidate(&user);
            return Err(purged());
        }
        // Evict now rather than on the cache's own schedule, so the
        // descriptors kept never exceed the bound. Only a miss gets here,
        // and a miss already costs a few system calls.
        self.dirs.run_pending_tasks();
        Ok(dirs)
    }

    /// The user's directories if this process has them open already: using
    /// them costs no directory creation and no sweep of `tmp/`.
    pub fn opened(&self, user: UserId) -> Option<Arc<UserDirs>> {
        self.dirs.get(&user)
    }

    /// Creates (on first use) and opens the user's directories, under the
    /// user's lock: no request of theirs can create a temp file that the
    /// sweep would then remove, and none can recreate what a purge removed.
    fn open_fresh(&self, user: UserId, owner: Option<u32>) -> Result<UserDirs, OpError> {
        let lock = self.user_lock(user);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if self.was_purged(user) {
            return Err(purged());
        }
        let base = self.users_dir.join(user.to_string());
        for dir in [&self.users_dir, &base] {
            match std::fs::create_dir(dir) {
                Ok(()) => set_private(dir)?,
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(io_error(err, "cannot create the user's directory")),
            }
            // The user's uid traverses (never lists) them to its workspace.
            if owner.is_some() {
                set_mode(dir, 0o711)?;
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
        let state = opened
            .pop()
            .ok_or_else(|| OpError::Internal("no state".into()))?;
        let workspace = opened
            .pop()
            .ok_or_else(|| OpError::Internal("no workspace".into()))?;
        if let Some(owner) = owner {
            hand_over(&workspace, owner)?;
        }
        let dirs = UserDirs {
            user,
            owner,
            workspace,
            state,
            tmp,
        };
        let mut swept = self.swept.lock().unwrap_or_else(PoisonError::into_inner);
        if !swept.contains(&user) {
            dirs.sweep_tmp();
            swept.insert(user);
        }
        Ok(dirs)
    }

    fn was_purged(&self, user: UserId) -> bool {
        self.purged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&user)
    }

    /// Removes everything of a deleted user: their directory is renamed
    /// aside (`.purge-<id>`, at once, so nothing can be added to it under
    /// its name) and then removed. A purge cut short by a crash is finished
    /// by the next one for the same user. From then on this process refuses
    /// to open the user's directories again; a request of theirs still
    /// running keeps its descriptors and fails or writes into the tree being
    /// removed (the removal is retried).
    pub fn purge(&self, user: UserId) -> Result<(), OpError> {
        let lock = self.user_lock(user);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.purged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(user);
        self.forget_dirs(user);
        let home = self.users_dir.join(user.to_string());
        let aside = self.users_dir.join(format!(".purge-{user}"));
        match std::fs::rename(&home, &aside) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            // A leftover of an earlier purge is in the way: remove it first.
            Err(_) if aside.exists() => {
                remove_all(&aside)?;
                std::fs::rename(&home, &aside)
                    .map_err(|err| io_error(err, "cannot put the user's files aside"))?;
            }
            Err(err) => return Err(io_error(err, "cannot put the user's files aside")),
        }
        remove_all(&aside)
    }

    /// Closes the user's open directories and drops what was counted and
    /// swept of them (a purge, an eviction); the caller holds the user's
    /// lock.
    fn forget_dirs(&self, user: UserId) {
        self.dirs.invalidate(&user);
        // Closes the descriptors now rather than at the cache's next turn.
        self.dirs.run_pending_tasks();
        self.lock_usage().remove(&user);
        self.lock_stale().forget(user);
        self.swept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&user);
    }

    /// Forgets the user (a move to another host): their open directories
    /// are closed, their usage, `tmp/` sweep and staged writes dropped, so
    /// the next request opens whatever is then at `<users>/<id>/` afresh.
    /// Nothing is removed and nothing refused (a purge's `purged` mark
    /// would make a later move back to this host fail).
    pub fn evict(&self, user: UserId) {
        let lock = self.user_lock(user);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.forget_dirs(user);
        let dropped: Vec<_> = {
            let mut staged = self.staged.lock().unwrap_or_else(PoisonError::into_inner);
            let keys: Vec<_> = staged
                .writes
                .keys()
                .filter(|(owner, _)| *owner == user)
                .copied()
                .collect();
            keys.iter()
                .filter_map(|key| staged.writes.remove(key))
                .collect()
        };
        drop(dropped);
    }

    /// Which of the disk reserve's floors (`"blocks"`, `"inodes"`) the users'
    /// file system is below now, if any: what users' own processes wrote
    /// (the files API never goes below them).
    pub fn disk_short(&self) -> Option<&'static str> {
        self.disk_reserve.refuses(Room::of(&self.users_dir)?, 1, 1)
    }

    /// Counts the user's usage again now (their tasks wrote meanwhile).
    pub fn recount(&self, user: UserId) -> Result<Usage, OpError> {
        self.forget_usage_now(user);
        self.usage_of(user)
    }

    /// Makes the next need of the user's usage count it again (a task of
    /// theirs ended: its processes may have written anywhere in the
    /// workspace, and its output counts too), at most once a second.
    pub fn forget_usage(&self, user: UserId) {
        self.lock_stale().stale.insert(user);
    }

    /// Makes the next need of the user's usage count it again however
    /// recent the last count (they removed a task's output to make room:
    /// their next start must see it).
    pub fn forget_usage_now(&self, user: UserId) {
        self.lock_stale().force.insert(user);
    }

    fn lock_stale(&self) -> std::sync::MutexGuard<'_, Recounts> {
        self.stale.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The user's usage (counted on first need, and again after
    /// [`Self::forget_usage`]): the workspace, plus the output kept of
    /// their tasks (`state/tasks/`) and their processes' private tmp
    /// (`scratch/`).
    ///
    /// A stale count is taken again at most every [`RECOUNT_EVERY`]: a
    /// user running many short tasks must not make the worker walk their
    /// workspace and task outputs for each (the walk is as long as the
    /// tree). Until then what their tasks wrote is not yet counted, which
    /// the files API's quota check shares with the task guard (both are
    /// after the fact for what users' processes write).
    pub fn usage(&self, dirs: &UserDirs) -> Result<Usage, OpError> {
        let recount = self.lock_stale().take(dirs.user, std::time::Instant::now());
        if !recount {
            if let Some(usage) = self.lock_usage().get(&dirs.user) {
                return Ok(usage.counted());
            }
        }
        let counted = self.count(dirs);
        let mut stale = self.lock_stale();
        match &counted {
            // The next need counts again (a task renaming directories as
            // they are walked must not leave the old count standing).
            Err(_) if recount => {
                stale.stale.insert(dirs.user);
            }
            // Spaced from the walk's end: a walk longer than the spacing
            // must not run back to back.
            Ok(_) if recount => {
                stale.counted.insert(dirs.user, std::time::Instant::now());
            }
            _ => {}
        }
        drop(stale);
        let counted = counted?;
        let mut known = self.lock_usage();
        let usage = known.entry(dirs.user).or_default();
        // A reservation made meanwhile stays; the count is the entries.
        usage.bytes = counted.bytes;
        usage.files = counted.files;
        usage.entries = counted.entries;
        Ok(usage.counted())
    }

    /// The user's usage on disk now: the workspace, their tasks' output
    /// and their scratch space.
    fn count(&self, dirs: &UserDirs) -> Result<Usage, OpError> {
        let mut counted = count_tree(&dirs.workspace)?;
        match rustix::fs::openat(
            &dirs.state,
            "tasks",
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(tasks) => counted.add(count_tree(&tasks)?),
            Err(Errno::NOENT) => {}
            Err(err) => return Err(errno(err, "cannot count the tasks' output")),
        }
        // The private tmp of the user's processes (`TMPDIR`) is theirs too.
        let scratch = self.users_dir.join(dirs.user.to_string()).join("scratch");
        match rustix::fs::open(
            &scratch,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(scratch) => counted.add(count_tree(&scratch)?),
            Err(Errno::NOENT) => {}
            Err(err) => return Err(errno(err, "cannot count the user's scratch space")),
        }
        Ok(counted)
    }

    /// Usage of a user this worker may never have served, without creating
    /// their directories.
    pub fn usage_of(&self, user: UserId) -> Result<Usage, OpError> {
        if !self
            .users_dir
            .join(user.to_string())
            .join("workspace")
            .is_dir()
        {
            return Ok(Usage::default());
        }
        let dirs = self.open(user)?;
        self.usage(&dirs)
    }

    fn lock_usage(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Usage>> {
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn grow(&self, user: UserId, by: Usage) {
        if let Some(usage) = self.lock_usage().get_mut(&user) {
            usage.add(by);
        }
    }

    fn shrink(&self, user: UserId, by: Usage) {
        if let Some(usage) = self.lock_usage().get_mut(&user) {
            usage.sub(by);
        }
    }

    /// The shared templates' directory: `<data-dir>/shared/templates`.
    fn templates_dir(&self) -> PathBuf {
        let data_dir = self.users_dir.parent().unwrap_or(&self.users_dir);
        data_dir.join("shared").join("templates")
    }

    /// The lock of one user's workspace.
    fn user_lock(&self, user: UserId) -> Arc<Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(user)
            .or_default()
            .clone()
    }

    /// Reserves `bytes` and `entries` more for a write, copy or mkdir in
    /// progress, if they fit beside what is used and reserved, both in the
    /// user's quota and in what the file system has beyond the disk
    /// reserve. `credit` is what the operation will free at its end (the
    /// file a write replaces): the quota counts it as freed already, the
    /// disk does not (the old file keeps its blocks and inode until the
    /// commit, so the new bytes and the temp file's inode are all taken).
    fn reserve(
        &self,
        user: UserId,
        bytes: u64,
        entries: u64,
        credit: Usage,
        quota: Quota,
    ) -> Result<(), OpError> {
        let mut known = self.lock_usage();
        // Callers count the usage first (`usage`).
        let Some(usage) = known.get_mut(&user) else {
            return Err(OpError::Internal(
                "usage reserved before it was counted".into(),
            ));
        };
        let mut counted = *usage;
        counted.entries = counted.entries.saturating_sub(credit.entries);
        fits(&counted, bytes, entries, credit.bytes, quota)?;
        self.disk_reserve.admit(&self.users_dir, bytes, entries)?;
        usage.reserved += bytes;
        usage.reserved_entries += entries;
        Ok(())
    }

    /// `507 disk_full` unless `bytes` and `inodes` more leave the disk
    /// reserve free (for what is not counted in a quota, such as a mkdir's
    /// directory or the settings' temp file).
    fn admit(&self, bytes: u64, inodes: u64) -> Result<(), OpError> {
        self.disk_reserve.admit(&self.users_dir, bytes, inodes)
    }

    fn release(&self, user: UserId, bytes: u64, entries: u64) {
        if let Some(usage) = self.lock_usage().get_mut(&user) {
            usage.reserved = usage.reserved.saturating_sub(bytes);
            usage.reserved_entries = usage.reserved_entries.saturating_sub(entries);
        }
    }
}

/// Free space and inodes that users' writes leave on the file system of
/// `<data-dir>/users`, so that a user who fills the disk within their
/// quota (or many users together) never takes the last blocks or inodes
/// that the accounts database, the worker sockets and the logs need. Each
/// is at most a tenth of the file system, so a small one stays usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskReserve {
    pub bytes: u64,
    pub inodes: u64,
}

impl Default for DiskReserve {
    fn default() -> Self {
        DiskReserve {
            bytes: 1 << 30,
            inodes: 10_000,
        }
    }
}

impl DiskReserve {
    /// `507 disk_full` if writing `bytes` and making `entries` would eat
    /// into the reserve. A file system that cannot be asked is not refused
    /// (the write itself then fails with `ENOSPC` if the disk is full).
    fn admit(&self, dir: &std::path::Path, bytes: u64, entries: u64) -> Result<(), OpError> {
        if bytes == 0 && entries == 0 {
            return Ok(());
        }
        let Some(room) = Room::of(dir) else {
            return Ok(());
        };
        match self.refuses(room, bytes, entries) {
            Some(what) => Err(OpError::DiskFull(format!(
                "the server's disk is nearly full (the last {what} are kept for the server itself)"
            ))),
            None => Ok(()),
        }
    }

    fn refuses(&self, room: Room, bytes: u64, entries: u64) -> Option<&'static str> {
        let reserve = self.bytes.min(room.total_bytes / 10);
        if bytes > 0 && room.free_bytes.saturating_sub(bytes) < reserve {
            return Some("blocks");
        }
        // File systems without an inode limit report none at all.
        let reserve = self.inodes.min(room.total_inodes / 10);
        if entries > 0
            && room.total_inodes > 0
            && room.free_inodes.saturating_sub(entries) < reserve
        {
            return Some("inodes");
        }
        None
    }
}

/// What a file system holds and has free.
#[derive(Debug, Clone, Copy)]
struct Room {
    total_bytes: u64,
    free_bytes: u64,
    total_inodes: u64,
    free_inodes: u64,
}

impl Room {
    /// The file system of `dir` as `statvfs` describes it (`None` when it
    /// cannot be asked).
    fn of(dir: &std::path::Path) -> Option<Room> {
        let fs = rustix::fs::statvfs(dir).ok()?;
        let block = fs.f_frsize.max(1);
        Some(Room {
            total_bytes: fs.f_blocks.saturating_mul(block),
            free_bytes: fs.f_bavail.saturating_mul(block),
            total_inodes: fs.f_files,
            free_inodes: fs.f_favail,
        })
    }
}

/// Whether `bytes` and `entries` more (less `credit` bytes freed) fit beside
/// what `usage` holds and reserves.
fn fits(usage: &Usage, bytes: u64, entries: u64, credit: u64, quota: Quota) -> Result<(), OpError> {
    let after = usage
        .bytes
        .saturating_sub(credit)
        .saturating_add(usage.reserved)
        .saturating_add(bytes);
    if bytes > 0 && after > quota.bytes {
        return Err(OpError::QuotaExceeded {
            used: usage.bytes,
            limit: quota.bytes,
        });
    }
    let after = usage
        .entries
        .saturating_add(usage.reserved_entries)
        .saturating_add(entries);
    if entries > 0 && after > quota.entries {
        return Err(OpError::EntryQuotaExceeded {
            used: usage.entries,
            limit: quota.entries,
        });
    }
    Ok(())
}

/// Gives an entry the API just made to the user's uid (and gid).
fn give(fd: &impl AsFd, owner: Option<u32>) -> Result<(), Errno> {
    match owner {
        Some(owner) => rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(owner)),
            Some(rustix::fs::Gid::from_raw(owner)),
        ),
        None => Ok(()),
    }
}

/// Hands an existing workspace over to `owner`: every entry (symlinks
/// themselves, never what they point to), the root last, so a hand-over
/// cut short is done again on the next first sight.
fn hand_over(workspace: &OwnedFd, owner: u32) -> Result<(), OpError> {
    let stat = rustix::fs::fstat(workspace).map_err(|err| errno(err, "workspace"))?;
    if stat.st_uid == owner && stat.st_gid == owner {
        return Ok(());
    }
    let (uid, gid) = (
        rustix::fs::Uid::from_raw(owner),
        rustix::fs::Gid::from_raw(owner),
    );
    let root = rustix::fs::openat(
        workspace,
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|err| errno(err, "workspace"))?;
    walk(
        root,
        &mut |dir, name, stat| {
            if stat.st_uid != owner || stat.st_gid != owner {
                match rustix::fs::chownat(
                    dir,
                    name,
                    Some(uid),
                    Some(gid),
                    AtFlags::SYMLINK_NOFOLLOW,
                ) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(err) => return Err(errno(err, &name.to_string_lossy())),
                }
            }
            Ok(true)
        },
        &mut |_, _| Ok(()),
    )?;
    rustix::fs::fchown(workspace, Some(uid), Some(gid)).map_err(|err| errno(err, "workspace"))
}

fn set_mode(dir: &std::path::Path, mode: u32) -> Result<(), OpError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|err| io_error(err, "cannot set the mode of the user's directory"))
}

fn set_private(dir: &std::path::Path) -> Result<(), OpError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|err| io_error(err, "cannot protect the user's directory"))
}

/// Why [`UserDirs::make_dir`] made nothing.
enum Made {
    /// The system call failed (`EXIST`: something is there already).
    Failed(Errno),
    /// The quota (or counting the usage) refused it.
    Refused(OpError),
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
        let Ok(names) = children(&self.tmp, c"tmp") else {
            return;
        };
        for name in names {
            let mut ignored = Usage::default();
            if remove_tree(&self.tmp, &name, &mut ignored).is_ok() {
                tracing::info!(name = %name.to_string_lossy(), "removed a leftover temp file");
            }
        }
    }

    pub fn list(&self, path_text: &str, after: Option<&str>, limit: u32) -> Result<Reply, OpError> {
        let parts = parts(path_text)?;
        let fd = self.resolve(&parts, OFlags::DIRECTORY | OFlags::RDONLY)?;
        // Names that are not UTF-8 (made by a user's own programs) are
        // listed lossily, flagged, and looked at by their real bytes: they
        // count against the quota, so the user must see them.
        let mut names: Vec<(String, CString)> = Dir::read_from(&fd)
            .map_err(|err| errno(err, path_text))?
            .filter_map(Result::ok)
            .map(|e| {
                let raw = e.file_name().to_owned();
                (raw.to_string_lossy().into_owned(), raw)
            })
            .filter(|(name, _)| name != "." && name != "..")
            .filter(|(name, _)| after.is_none_or(|after| name.as_str() > after))
            .collect();
        names.sort_unstable();
        let more = names.len() > limit as usize;
        names.truncate(limit as usize);
        let mut entries = Vec::with_capacity(names.len());
        for (name, raw) in names {
            // Gone meanwhile: skip it.
            if let Ok(stat) = rustix::fs::statat(&fd, raw.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                let mut found = entry(&name, &stat);
                found.name_valid = raw.to_str().is_ok();
                entries.push(found);
            }
        }
        Ok(Reply::Listing { entries, more })
    }

    /// Opens the entry at `path` (following symlinks that stay inside) and
    /// describes it; a regular file comes with its open handle, so what is
    /// read later is this very version whatever replaces it meanwhile.
    pub fn open_read(&self, path_text: &str) -> Result<(Option<std::fs::File>, Entry), OpError> {
        let parts = parts(path_text)?;
        // O_NONBLOCK: a FIFO made by a user's program must not hang the
        // open; it is then refused, never read. O_NOCTTY: a terminal never
        // becomes the worker's.
        let fd = self.resolve(&parts, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)?;
        let stat = rustix::fs::fstat(&fd).map_err(|err| errno(err, path_text))?;
        let found = entry(parts.last().copied().unwrap_or(""), &stat);
        match found.kind {
            EntryKind::File => Ok((Some(std::fs::File::from(fd)), found)),
            EntryKind::Dir => Ok((None, found)),
            kind => Err(not_regular(path_text, kind)),
        }
    }

    /// Describes the entry at `path`; a regular file of at most `limit`
    /// bytes comes with its content, read from the file described. Files
    /// written through the API are replaced whole (a new inode), never
    /// changed in place, so what was opened is one version. With
    /// `hand_over`, a larger regular file comes as [`Reply::Opened`] with
    /// the descriptor described, to hand to the master.
    pub fn read_or_open(
        &self,
        path_text: &str,
        limit: u64,
        hand_over: bool,
    ) -> Result<(Reply, Option<Passable>), OpError> {
        self.read_small_with(path_text, limit, false, hand_over)?
            .ok_or_else(|| OpError::Internal("a blocking read would block".into()))
    }

    /// [`Self::read_or_open`] only if it can be done from memory: the path
    /// resolved from the dentry cache (`RESOLVE_CACHED`) and the bytes from
    /// the page cache (`RWF_NOWAIT`). `None`: it would wait for the disk (or
    /// the kernel cannot tell), so run [`Self::read_or_open`] where blocking
    /// is harmless.
    pub fn read_or_open_cached(
        &self,
        path_text: &str,
        limit: u64,
        hand_over: bool,
    ) -> Result<Option<(Reply, Option<Passable>)>, OpError> {
        self.read_small_with(path_text, limit, true, hand_over)
    }

    #[cfg(test)]
    fn read_small(&self, path_text: &str, limit: u64) -> Result<Reply, OpError> {
        self.read_or_open(path_text, limit, false)
            .map(|(reply, _)| reply)
    }

    #[cfg(test)]
    fn read_small_cached(&self, path_text: &str, limit: u64) -> Result<Option<Reply>, OpError> {
        Ok(self
            .read_or_open_cached(path_text, limit, false)?
            .map(|(reply, _)| reply))
    }

    fn read_small_with(
        &self,
        path_text: &str,
        limit: u64,
        cached: bool,
        hand_over: bool,
    ) -> Result<Option<(Reply, Option<Passable>)>, OpError> {
        let would_block = |err: Errno| {
            // EAGAIN: not in memory; EINVAL / EOPNOTSUPP: a kernel without
            // RESOLVE_CACHED (5.12) or RWF_NOWAIT for this file system.
            cached && matches!(err, Errno::AGAIN | Errno::INVAL | Errno::OPNOTSUPP)
        };
        let parts = parts(path_text)?;
        let resolve = if cached {
            RESOLVE | ResolveFlags::CACHED
        } else {
            RESOLVE
        };
        // O_NONBLOCK: a FIFO made by a user's program must not hang the
        // open; it is then refused, never read. O_NOCTTY: a terminal never
        // becomes the worker's.
        let fd = match rustix::fs::openat2(
            &self.workspace,
            join(&parts),
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
            resolve,
        ) {
            Ok(fd) => fd,
            Err(err) if would_block(err) => return Ok(None),
            Err(err) => return Err(errno(err, path_text)),
        };
        let stat = rustix::fs::fstat(&fd).map_err(|err| errno(err, path_text))?;
        let entry = entry(parts.last().copied().unwrap_or(""), &stat);
        let regular = match entry.kind {
            EntryKind::File => true,
            EntryKind::Dir => false,
            kind => return Err(not_regular(path_text, kind)),
        };
        if regular && entry.size > limit && hand_over {
            // Opened beneath the workspace above, a regular file: the only
            // kind of read descriptor ever handed over.
            return Ok(Some((Reply::Opened { entry }, Some(Passable(fd)))));
        }
        if !regular || entry.size > limit {
            let reply = Reply::File {
                entry,
                content: None,
            };
            return Ok(Some((reply, None)));
        }
        // The bytes described (what Content-Length will say): a file that
        // grew meanwhile gives its first `size` bytes, as a ranged read
        // would; one that shrank comes without content.
        let flags = if cached {
            ReadWriteFlags::NOWAIT
        } else {
            ReadWriteFlags::empty()
        };
        let mut content = vec![0u8; entry.size as usize];
        let mut filled = 0;
        while filled < content.len() {
            let mut slices = [IoSliceMut::new(&mut content[filled..])];
            match rustix::io::preadv2(&fd, &mut slices, filled as u64, flags) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(Errno::INTR) => {}
                Err(err) if would_block(err) => return Ok(None),
                Err(err) => return Err(errno(err, path_text)),
            }
        }
        let whole = filled == content.len();
        let reply = Reply::File {
            entry,
            content: whole.then_some(content),
        };
        Ok(Some((reply, None)))
    }

    pub fn mkdir(
        &self,
        workspaces: &Workspaces,
        quota: Quota,
        path_text: &str,
        parents: bool,
    ) -> Result<Reply, OpError> {
        let parts = parts(path_text)?;
        if parents {
            self.make_parents(workspaces, quota, &parts)?;
            let fd = self.resolve(&parts, OFlags::PATH | OFlags::DIRECTORY)?;
            let stat = rustix::fs::fstat(&fd).map_err(|err| errno(err, path_text))?;
            return Ok(Reply::Entry(entry(
                parts.last().copied().unwrap_or(""),
                &stat,
            )));
        }
        let (dir, name) = self.parent(&parts)?;
        let stat = self
            .make_dir(workspaces, quota, &dir, name)
            .map_err(|err| match err {
                Made::Failed(err) => errno(err, path_text),
                Made::Refused(err) => err,
            })?;
        Ok(Reply::Entry(entry(name, &stat)))
    }

    /// Creates every directory along `parts` that is missing.
    fn make_parents(
        &self,
        workspaces: &Workspaces,
        quota: Quota,
        parts: &[&str],
    ) -> Result<(), OpError> {
        for depth in 1..=parts.len() {
            let (dir, name) = self.parent(&parts[..depth])?;
            match self.make_dir(workspaces, quota, &dir, name) {
                Ok(_) | Err(Made::Failed(Errno::EXIST)) => {}
                Err(Made::Failed(err)) => return Err(errno(err, &join(&parts[..depth]))),
                Err(Made::Refused(err)) => return Err(err),
            }
        }
        Ok(())
    }

    /// Creates directory `name` in `dir` if one more entry (charged at
    /// least [`MIN_ENTRY_CHARGE`]) fits the quota, and counts it.
    fn make_dir(
        &self,
        workspaces: &Workspaces,
        quota: Quota,
        dir: &OwnedFd,
        name: &str,
    ) -> Result<rustix::fs::Stat, Made> {
        workspaces.usage(self).map_err(Made::Refused)?;
        let lock = workspaces.user_lock(self.user);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        // Already there: not a new entry, whatever the quota says.
        if rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            return Err(Made::Failed(Errno::EXIST));
        }
        {
            let known = workspaces.lock_usage();
            let usage = known.get(&self.user).copied().unwrap_or_default();
            fits(&usage, MIN_ENTRY_CHARGE, 1, 0, quota).map_err(Made::Refused)?;
        }
        // A directory is an inode and a block: never out of the reserve.
        workspaces
            .admit(MIN_ENTRY_CHARGE, 1)
            .map_err(Made::Refused)?;
        rustix::fs::mkdirat(dir, name, PRIVATE).map_err(Made::Failed)?;
        if let Some(owner) = self.owner {
            // Mode 0700 until then: the user's processes cannot use it
            // before it is theirs.
            let id = rustix::fs::Uid::from_raw(owner);
            rustix::fs::chownat(
                dir,
                name,
                Some(id),
                Some(rustix::fs::Gid::from_raw(owner)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(Made::Failed)?;
        }
        let stat =
            rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(Made::Failed)?;
        workspaces.grow(self.user, Usage::of(&stat));
        Ok(stat)
    }

    pub fn delete(
        &self,
        workspaces: &Workspaces,
        path_text: &str,
        recursive: bool,
    ) -> Result<Reply, OpError> {
        let parts = parts(path_text)?;
        let (dir, name) = self.parent(&parts)?;
        workspaces.usage(self)?;
        let lock = workspaces.user_lock(self.user);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|err| errno(err, path_text))?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory && !recursive {
            rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)
                .map_err(|err| errno(err, path_text))?;
            workspaces.shrink(self.user, Usage::of(&stat));
            return Ok(Reply::Done);
        }
        // What was removed is accounted for even if the rest fails.
        let mut removed = Usage::default();
        let outcome = remove_tree(&dir, &c_name(name)?, &mut removed);
        workspaces.shrink(self.user, removed);
        outcome?;
        Ok(Reply::Done)
    }

    pub fn rename(&self, workspaces: &Workspaces, from: &str, to: &str) -> Result<Reply, OpError> {
        let from_parts = parts(from)?;
        let to_parts = parts(to)?;
        let (from_dir, from_name) = self.parent(&from_parts)?;
        let (to_dir, to_name) = self.parent(&to_parts)?;
        // Deeper than before: what is below must stay within the depth
        // every path of the API can reach.
        if to_parts.len() > from_parts.len() {
            let stat = rustix::fs::statat(&from_dir, from_name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|err| errno(err, from))?;
            if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                let below = open_dir(&from_dir, &c_name(from_name)?)?;
                check_depth(to, &to_parts, walk_shape(&below)?)?;
            }
        }
        let lock = workspaces.user_lock(self.user);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
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

    pub fn copy(
        &self,
        workspaces: &Workspaces,
        quota: Quota,
        from: &str,
        to: &str,
    ) -> Result<Reply, OpError> {
        let from_parts = parts(from)?;
        let (from_dir, from_name) = self.parent(&from_parts)?;
        self.place_copy(workspaces, quota, &from_dir, from_name, to, false)
    }

    /// Copies a shared template into the workspace at `to`.
    pub fn clone_template(
        &self,
        workspaces: &Workspaces,
        quota: Quota,
        name: &str,
        to: &str,
    ) -> Result<Reply, OpError> {
        let name_parts = parts(name)?;
        let [name] = name_parts.as_slice() else {
            return Err(OpError::BadPath("a template is named by one name".into()));
        };
        if name.starts_with('.') {
            return Err(OpError::NotFound(format!("no template {name:?}")));
        }
        let missing = || OpError::NotFound(format!("no template {name:?}"));
        let root = rustix::fs::open(
            workspaces.templates_dir(),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|_| missing())?;
        // The template itself must be a directory right there.
        rustix::fs::openat2(
            &root,
            *name,
            OFlags::DIRECTORY | OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|_| missing())?;
        self.place_copy(workspaces, quota, &root, name, to, true)
    }

    /// Copies `name` in `from_dir` to `to` in the workspace: what it takes
    /// (space and entries) is counted and reserved against the quota first,
    /// the copy is built in `tmp/` (stopping should it outgrow what was
    /// counted), checked against the quota again and renamed into place
    /// (never replacing anything); anything that fails removes the copy.
    fn place_copy(
        &self,
        workspaces: &Workspaces,
        quota: Quota,
        from_dir: &impl AsFd,
        from_name: &str,
        to: &str,
        template: bool,
    ) -> Result<Reply, OpError> {
        let to_parts = parts(to)?;
        let (to_dir, to_name) = self.parent(&to_parts)?;
        workspaces.usage(self)?;
        let (needed, shape) = size_of(from_dir, from_name)?;
        check_depth(to, &to_parts, shape)?;
        workspaces.reserve(
            self.user,
            needed.bytes,
            needed.entries,
            Usage::default(),
            quota,
        )?;
        let temp = temp_name("copy");
        let placed = (|| {
            let mut copied = Usage::default();
            copy_tree(
                from_dir,
                &c_name(from_name)?,
                &self.tmp,
                &c_name(&temp)?,
                0,
                &CopyLimits {
                    budget: &needed,
                    admit: &|bytes, inodes| workspaces.admit(bytes, inodes),
                    owner: self.owner,
                },
                &mut copied,
            )?;
            if template {
                // A template's description is not part of what users get.
                let description = format!("{temp}/.description");
                if let Ok(stat) =
                    rustix::fs::statat(&self.tmp, description.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                {
                    if rustix::fs::unlinkat(&self.tmp, description.as_str(), AtFlags::empty())
                        .is_ok()
                    {
                        copied.sub(Usage::of(&stat));
                    }
                }
            }
            let _ = rustix::fs::fsync(&self.tmp);
            let lock = workspaces.user_lock(self.user);
            let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
            {
                // What was copied, instead of what was reserved for it.
                let known = workspaces.lock_usage();
                let mut usage = known.get(&self.user).copied().unwrap_or_default();
                usage.reserved = usage.reserved.saturating_sub(needed.bytes);
                usage.reserved_entries = usage.reserved_entries.saturating_sub(needed.entries);
                fits(&usage, copied.bytes, copied.entries, 0, quota)?;
            }
            rustix::fs::renameat_with(
                &self.tmp,
                temp.as_str(),
                &to_dir,
                to_name,
                RenameFlags::NOREPLACE,
            )
            .map_err(|err| errno(err, to))?;
            workspaces.grow(self.user, copied);
            Ok(())
        })();
        workspaces.release(self.user, needed.bytes, needed.entries);
        if let Err(err) = placed {
            let mut ignored = Usage::default();
            if let Ok(temp) = c_name(&temp) {
                let _ = remove_tree(&self.tmp, &temp, &mut ignored);
            }
            return Err(err);
        }
        let stat = rustix::fs::statat(&to_dir, to_name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|err| errno(err, to))?;
        Ok(Reply::Entry(entry(to_name, &stat)))
    }

    /// A new, empty temp file in `tmp/` (mode 0600), and its name; one
    /// `for_workspace` belongs to the user's uid (it will be renamed into
    /// the workspace), others stay warren's (settings).
    fn create_temp(&self, what: &str, for_workspace: bool) -> Result<(String, OwnedFd), OpError> {
        let temp = temp_name(what);
        let fd = rustix::fs::openat(
            &self.tmp,
            temp.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|err| errno(err, "cannot create a temp file"))?;
        if for_workspace {
            if let Err(err) = give(&fd, self.owner) {
                let _ = rustix::fs::unlinkat(&self.tmp, temp.as_str(), AtFlags::empty());
                return Err(errno(err, "cannot give a temp file to the user"));
            }
        }
        Ok((temp, fd))
    }

    /// The user's settings (`{}` when never set).
    pub fn settings(&self) -> Result<Reply, OpError> {
        // O_NONBLOCK and the check: whatever sits there, reading it never
        // blocks the worker.
        match rustix::fs::openat(
            &self.state,
            "settings.json",
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => {
                let stat = rustix::fs::fstat(&fd).map_err(|err| errno(err, "settings"))?;
                if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                    return Err(not_regular("settings", kind_of(&stat)));
                }
                let mut json = Vec::new();
                std::fs::File::from(fd)
                    .read_to_end(&mut json)
                    .map_err(|err| io_error(err, "cannot read the settings"))?;
                Ok(Reply::Settings(json))
            }
            Err(Errno::NOENT) => Ok(Reply::Settings(b"{}".to_vec())),
            Err(err) => Err(errno(err, "settings")),
        }
    }

    /// Replaces the user's settings atomically (temp file, fsync, rename).
    pub fn put_settings(&self, workspaces: &Workspaces, json: &[u8]) -> Result<Reply, OpError> {
        // A new inode and its blocks beside the old settings until the
        // rename: out of the disk reserve like any write (not counted in
        // the quota: the master bounds settings to 64 KiB).
        workspaces.admit(charge_of_len(json.len() as u64), 1)?;
        let (temp, fd) = self.create_temp("settings", false)?;
        let mut file = std::fs::File::from(fd);
        let written = file
            .write_all(json)
            .and_then(|()| file.sync_all())
            .map_err(|err| io_error(err, "cannot write the settings"))
            .and_then(|()| {
                rustix::fs::renameat(&self.tmp, temp.as_str(), &self.state, "settings.json")
                    .map_err(|err| errno(err, "settings"))
            });
        if written.is_err() {
            let _ = rustix::fs::unlinkat(&self.tmp, temp.as_str(), AtFlags::empty());
        }
        written?;
        let _ = rustix::fs::fsync(&self.state);
        Ok(Reply::Done)
    }

    /// Starts a write: checks the target's directory (creating it with
    /// `parents`), the precondition and the quota as things stand, and
    /// opens a temp file. All is checked again at the commit.
    pub fn begin_write(
        self: Arc<Self>,
        workspaces: Arc<Workspaces>,
        path_text: &str,
        parents: bool,
        quota: Quota,
        precondition: &Precondition,
    ) -> Result<PendingWrite, OpError> {
        let parts = parts(path_text)?;
        if parents && parts.len() > 1 {
            self.make_parents(&workspaces, quota, &parts[..parts.len() - 1])?;
        }
        let Some((name, dir_parts)) = parts.split_last() else {
            return Err(OpError::BadPath("a file needs a name".into()));
        };
        // Readable, not O_PATH: the directory is fsynced after the rename.
        let dir = self.resolve(dir_parts, OFlags::DIRECTORY | OFlags::RDONLY)?;
        workspaces.usage(&self)?;
        let current = match rustix::fs::statat(&dir, *name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Some(stat),
            Err(Errno::NOENT) => None,
            Err(err) => return Err(errno(err, path_text)),
        };
        // Fail early, before the body is sent.
        check_current(path_text, current.as_ref(), precondition)?;
        // Whatever is replaced (a file, a link, a FIFO...) frees its space
        // and its entry at the commit: the quota counts them as freed now.
        let replaced = current.as_ref().map_or(0, charge);
        let credit = Usage {
            bytes: replaced,
            entries: u64::from(current.is_some()),
            ..Usage::default()
        };
        // Even an empty file is charged: refused before the body is sent.
        // The temp file is a new inode until the commit, replacing or not:
        // one entry of the quota and one inode of the disk while it lasts,
        // so staged uploads over existing files cannot pile up unbounded.
        workspaces.reserve(self.user, MIN_ENTRY_CHARGE, 1, credit, quota)?;
        let mut pending = PendingWrite {
            dirs: self,
            workspaces,
            dir,
            name: name.to_string(),
            path: path_text.to_string(),
            temp: String::new(),
            file: None,
            written: 0,
            reserved: MIN_ENTRY_CHARGE,
            reserved_entries: 1,
            replaced,
            quota,
        };
        // Dropping `pending` on failure releases the reservation.
        let (temp, fd) = pending.dirs.create_temp("upload", true)?;
        pending.temp = temp;
        pending.file = Some(std::fs::File::from(fd));
        Ok(pending)
    }
}

/// Whether the current state of a file (`None`: absent) allows a write
/// under `precondition`; a directory is never replaced by a file.
fn check_current(
    path: &str,
    current: Option<&rustix::fs::Stat>,
    precondition: &Precondition,
) -> Result<(), OpError> {
    if let Some(current) = current {
        if FileType::from_raw_mode(current.st_mode) == FileType::Directory {
            return Err(OpError::Conflict(format!("{path}: is a directory")));
        }
    }
    match (precondition, current) {
        (Precondition::Absent, Some(_)) => Err(OpError::PreconditionFailed(format!(
            "{path} already exists"
        ))),
        (Precondition::Match(_), None) => Err(OpError::PreconditionFailed(format!(
            "{path} does not exist"
        ))),
        (Precondition::Match(tags), Some(current))
            if !tags.iter().any(|tag| tag == "*" || *tag == etag(current)) =>
        {
            Err(OpError::PreconditionFailed(format!("{path} has changed")))
        }
        _ => Ok(()),
    }
}

/// A write in progress: bytes go to a temp file; [`PendingWrite::commit`]
/// puts it in place; dropping it uncommitted removes the temp file and its
/// reservation. Dropping may unlink a large file: do it off the runtime.
pub struct PendingWrite {
    dirs: Arc<UserDirs>,
    workspaces: Arc<Workspaces>,
    dir: OwnedFd,
    name: String,
    path: String,
    temp: String,
    file: Option<std::fs::File>,
    pub written: u64,
    /// Bytes reserved against the quota so far: what `written` bytes will
    /// be charged (whole blocks, at least one).
    reserved: u64,
    /// Entries reserved: 1, the temp file (the quota credits the file it
    /// replaces, if any).
    reserved_entries: u64,
    /// What the entry this write replaces is charged, as seen when it
    /// began: credited against the quota, never against the disk reserve
    /// (its blocks stay taken until the commit).
    replaced: u64,
    quota: Quota,
}

impl PendingWrite {
    /// Appends `bytes`; fails (leaving the old file as it was) once they
    /// would not fit the quota beside everything else in progress.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), OpError> {
        self.write_chunks(&[bytes])
    }

    /// The bytes received so far, described as the file they will be.
    pub fn describe(&self) -> Result<Entry, OpError> {
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| OpError::Internal("described after commit".into()))?;
        let stat = rustix::fs::fstat(file).map_err(|err| errno(err, "temp file"))?;
        Ok(entry(&self.name, &stat))
    }

    /// Another handle on the temp file, to start flushing what has been
    /// written while writing goes on.
    pub fn flusher(&self) -> Option<std::fs::File> {
        self.file.as_ref().and_then(|file| file.try_clone().ok())
    }

    /// Reserves what `total` bytes of content will be charged, if more
    /// than reserved already: fails once they would not fit the quota
    /// beside everything else in progress.
    pub fn reserve_for(&mut self, total: u64) -> Result<(), OpError> {
        let needed = charge_of_len(total);
        if needed > self.reserved {
            self.workspaces.reserve(
                self.dirs.user,
                needed - self.reserved,
                0,
                Usage {
                    bytes: self.replaced,
                    ..Usage::default()
                },
                self.quota,
            )?;
            self.reserved = needed;
        }
        Ok(())
    }

    /// How long since the temp file was last written (its mtime).
    fn idle_for(&self) -> std::time::Duration {
        let modified = self
            .file
            .as_ref()
            .and_then(|file| file.metadata().ok())
            .and_then(|meta| meta.modified().ok());
        modified
            .and_then(|at| at.elapsed().ok())
            .unwrap_or_default()
    }

    /// Appends `chunks` in order, with as few `writev` calls as the kernel
    /// allows (no copying them together first).
    pub fn write_chunks<B: AsRef<[u8]>>(&mut self, chunks: &[B]) -> Result<(), OpError> {
        let len: u64 = chunks.iter().map(|c| c.as_ref().len() as u64).sum();
        self.reserve_for(self.written.saturating_add(len))?;
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| OpError::Internal("write after commit".into()))?;
        let mut slices: Vec<IoSlice<'_>> = chunks
            .iter()
            .map(AsRef::as_ref)
            .filter(|chunk| !chunk.is_empty())
            .map(IoSlice::new)
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match file.write_vectored(rest) {
                Ok(0) => {
                    return Err(io_error(
                        std::io::ErrorKind::WriteZero.into(),
                        "cannot write the temp file",
                    ))
                }
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(io_error(err, "cannot write the temp file")),
            }
        }
        self.written += len;
        Ok(())
    }

    /// fsyncs, then under the user's lock checks `precondition` and the
    /// quota against the current file, renames the temp file over it and
    /// updates the usage; then fsyncs the directory. Returns the new entry
    /// and whether the file is new.
    pub fn commit(self, precondition: &Precondition) -> Result<(Entry, bool), OpError> {
        self.commit_keeping_replaced(precondition)
            .map(|(entry, created, _replaced)| (entry, created))
    }

    /// [`Self::commit`], handing back a handle on the file it replaced (if
    /// any): that file's blocks and cached pages are released only when the
    /// handle is dropped. Freeing a large file takes tens of milliseconds
    /// (~50 ms for 256 MiB on ext4), which the caller can do after answering.
    pub fn commit_keeping_replaced(
        mut self,
        precondition: &Precondition,
    ) -> Result<(Entry, bool, Option<OwnedFd>), OpError> {
        let file = self
            .file
            .take()
            .ok_or_else(|| OpError::Internal("committed twice".into()))?;
        file.sync_all()
            .map_err(|err| io_error(err, "cannot flush the temp file"))?;
        let stat = rustix::fs::fstat(&file).map_err(|err| errno(err, "temp file"))?;
        drop(file);
        let new_charge = charge(&stat);
        let workspaces = self.workspaces.clone();
        let lock = workspaces.user_lock(self.dirs.user);
        let created = {
            let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
            // Held (O_PATH: no read access needed) so that renaming over it
            // does not free it yet; looked at through that very handle.
            let held = match rustix::fs::openat(
                &self.dir,
                self.name.as_str(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => Some(fd),
                Err(Errno::NOENT) => None,
                Err(err) => return Err(errno(err, &self.path)),
            };
            let current = match &held {
                Some(fd) => Some(rustix::fs::fstat(fd).map_err(|err| errno(err, &self.path))?),
                None => None,
            };
            check_current(&self.path, current.as_ref(), precondition)?;
            let replaced = current.as_ref().map(Usage::of).unwrap_or_default();
            // Our own reservation is in `reserved`: take it out of the check.
            {
                let known = workspaces.lock_usage();
                let mut usage = known.get(&self.dirs.user).copied().unwrap_or_default();
                usage.reserved = usage.reserved.saturating_sub(self.reserved);
                usage.reserved_entries =
                    usage.reserved_entries.saturating_sub(self.reserved_entries);
                fits(
                    &usage,
                    new_charge,
                    u64::from(current.is_none()),
                    replaced.bytes,
                    self.quota,
                )?;
            }
            // Never over an entry that appeared since the check (a move).
            let flags = if current.is_none() {
                RenameFlags::NOREPLACE
            } else {
                RenameFlags::empty()
            };
            rustix::fs::renameat_with(
                &self.dirs.tmp,
                self.temp.as_str(),
                &self.dir,
                self.name.as_str(),
                flags,
            )
            .map_err(|err| errno(err, &self.path))?;
            self.temp.clear();
            let mut known = workspaces.lock_usage();
            let usage = known.entry(self.dirs.user).or_default();
            usage.sub(replaced);
            usage.add(Usage::of(&stat));
            usage.reserved = usage.reserved.saturating_sub(self.reserved);
            usage.reserved_entries = usage.reserved_entries.saturating_sub(self.reserved_entries);
            self.reserved = 0;
            self.reserved_entries = 0;
            // A file where there was none, or where there was a link, a
            // FIFO...: a new file.
            let created =
                current.is_none_or(|c| FileType::from_raw_mode(c.st_mode) != FileType::RegularFile);
            (created, held)
        };
        let (created, replaced) = created;
        // The rename itself is durable once the directory is.
        let _ = rustix::fs::fsync(&self.dir);
        Ok((entry(&self.name, &stat), created, replaced))
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        self.workspaces
            .release(self.dirs.user, self.reserved, self.reserved_entries);
        if !self.temp.is_empty() {
            let _ = rustix::fs::unlinkat(&self.dirs.tmp, self.temp.as_str(), AtFlags::empty());
        }
    }
}

/// Removes the entries of `map` that `drop` picks, and returns them (to be
/// dropped outside the caller's lock).
fn take_where<K: Copy + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    drop: impl Fn(&V) -> bool,
) -> Vec<V> {
    let keys: Vec<K> = map
        .iter()
        .filter(|(_, value)| drop(value))
        .map(|(key, _)| *key)
        .collect();
    keys.iter().filter_map(|key| map.remove(key)).collect()
}

fn upload_gone() -> OpError {
    OpError::NotFound("the upload is gone (it was dropped, or its worker restarted)".into())
}

fn too_deep() -> OpError {
    OpError::Conflict(format!("directories nested deeper than {MAX_DEPTH} levels"))
}

/// How far a tree reaches below its top: its height in levels (1:
/// entries only in the top directory) and its longest path in bytes
/// (relative to the top).
#[derive(Debug, Clone, Copy, Default)]
struct Shape {
    height: usize,
    longest: usize,
}

/// Refuses to place at `to` (`parts`) a tree of `shape` if its deepest
/// entries would lie beyond [`MAX_DEPTH`] components or its longest paths
/// beyond [`path::MAX_PATH_BYTES`], where no path of the API could reach
/// them.
fn check_depth(to: &str, parts: &[&str], shape: Shape) -> Result<(), OpError> {
    let depth = parts.len().saturating_add(shape.height);
    if depth > MAX_DEPTH {
        return Err(OpError::Conflict(format!(
            "{to}: its deepest entries would be {depth} levels deep; paths have at most {MAX_DEPTH}"
        )));
    }
    let longest = join(parts)
        .len()
        .saturating_add(1)
        .saturating_add(shape.longest);
    if shape.longest > 0 && longest > path::MAX_PATH_BYTES {
        return Err(OpError::Conflict(format!(
            "{to}: its longest paths would be {longest} bytes long; paths have at most {} bytes",
            path::MAX_PATH_BYTES
        )));
    }
    Ok(())
}

/// The names in `dir`, as the file system has them (a user's program may
/// make names that are not UTF-8: they are counted, copied and deleted
/// like any other).
fn children(dir: &impl AsFd, name: &CStr) -> Result<Vec<CString>, OpError> {
    Ok(Dir::read_from(dir)
        .map_err(|err| errno(err, &name.to_string_lossy()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_owned())
        .filter(|child| child.as_bytes() != b"." && child.as_bytes() != b"..")
        .collect())
}

/// `name` (a checked path component: no NUL) for the `*at` calls.
fn c_name(name: &str) -> Result<CString, OpError> {
    CString::new(name).map_err(|_| OpError::BadPath(format!("{name:?}: NUL in a name")))
}

fn open_dir(dir: &impl AsFd, name: &CStr) -> Result<OwnedFd, OpError> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|err| errno(err, &name.to_string_lossy()))
}

/// One directory of a [`walk`] on the way down: who it is and the
/// entries of it still to visit.
struct Level {
    name: CString,
    /// Bytes of this directory's path relative to the top (0 for the top).
    path_len: usize,
    id: (u64, u64),
    left: Vec<CString>,
}

fn id_of(fd: &impl AsFd) -> Result<(u64, u64), OpError> {
    let stat = rustix::fs::fstat(fd).map_err(|err| errno(err, "walk"))?;
    Ok((stat.st_dev, stat.st_ino))
}

/// Visits every entry below the directory `root`, depth first, however
/// deep the tree: `visit(dir, name, stat)` for each entry (a directory is
/// entered if it returns true), `leave(dir, name)` after everything below a
/// directory entered was visited. Holds one directory descriptor at a time
/// (going back up through `..`, checked to be the directory it came from),
/// so neither the stack nor the open files grow with the depth; the names
/// still to visit are kept in memory. Entries that vanish meanwhile are
/// skipped. Returns the shape of the tree.
fn walk(
    root: OwnedFd,
    visit: &mut dyn FnMut(&OwnedFd, &CStr, &rustix::fs::Stat) -> Result<bool, OpError>,
    leave: &mut dyn FnMut(&OwnedFd, &CStr) -> Result<(), OpError>,
) -> Result<Shape, OpError> {
    let mut shape = Shape::default();
    let mut stack = vec![Level {
        name: CString::default(),
        path_len: 0,
        id: id_of(&root)?,
        left: children(&root, c"workspace")?,
    }];
    let mut current = root;
    loop {
        let depth = stack.len();
        let Some(level) = stack.last_mut() else {
            return Ok(shape);
        };
        let parent_len = level.path_len;
        let Some(child) = level.left.pop() else {
            let Some(done) = stack.pop() else {
                return Ok(shape);
            };
            let Some(parent) = stack.last() else {
                return Ok(shape);
            };
            let up = rustix::fs::openat(
                &current,
                "..",
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|err| errno(err, &done.name.to_string_lossy()))?;
            if id_of(&up)? != parent.id {
                return Err(OpError::Conflict(format!(
                    "{}: moved while it was being walked",
                    done.name.to_string_lossy()
                )));
            }
            current = up;
            leave(&current, &done.name)?;
            continue;
        };
        let stat = match rustix::fs::statat(&current, child.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => continue,
            Err(err) => return Err(errno(err, &child.to_string_lossy())),
        };
        let path_len = if parent_len == 0 {
            child.as_bytes().len()
        } else {
            parent_len + 1 + child.as_bytes().len()
        };
        shape.height = shape.height.max(depth);
        shape.longest = shape.longest.max(path_len);
        let enter = visit(&current, &child, &stat)?;
        if !enter || FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            continue;
        }
        let below = match open_dir(&current, &child) {
            Ok(fd) => fd,
            Err(OpError::NotFound(_)) => continue,
            Err(err) => return Err(err),
        };
        let left = children(&below, &child)?;
        stack.push(Level {
            name: child,
            path_len,
            id: id_of(&below)?,
            left,
        });
        current = below;
    }
}

/// What every entry below `dir` takes. Entries that vanish meanwhile are
/// skipped; any other failure is an error (never an undercount).
fn count_tree(dir: &impl AsFd) -> Result<Usage, OpError> {
    Ok(count_below(dir)?.0)
}

/// What every entry below `dir` takes, and the shape of its tree.
fn count_below(dir: &impl AsFd) -> Result<(Usage, Shape), OpError> {
    let mut usage = Usage::default();
    let shape = walk(
        open_dir(dir, c".")?,
        &mut |_, _, stat| {
            usage.add(Usage::of(stat));
            Ok(true)
        },
        &mut |_, _| Ok(()),
    )?;
    Ok((usage, shape))
}

/// The shape of the tree below `dir`.
fn walk_shape(dir: &impl AsFd) -> Result<Shape, OpError> {
    walk(
        open_dir(dir, c".")?,
        &mut |_, _, stat| Ok(FileType::from_raw_mode(stat.st_mode) == FileType::Directory),
        &mut |_, _| Ok(()),
    )
}

/// What copying `name` in `dir` would take (a file as if written whole:
/// a copy does not keep holes), and the shape of its tree (empty for a
/// file).
/// Only files and directories are copied.
fn size_of(dir: &impl AsFd, name: &str) -> Result<(Usage, Shape), OpError> {
    let stat =
        rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|err| errno(err, name))?;
    let as_copied = |stat: &rustix::fs::Stat| {
        let mut usage = Usage::of(stat);
        if usage.files == 1 {
            usage.bytes = usage.bytes.max(charge_of_len(stat.st_size as u64));
        }
        usage
    };
    match kind_of(&stat) {
        EntryKind::File => Ok((as_copied(&stat), Shape::default())),
        EntryKind::Dir => {
            let mut usage = Usage::of(&stat);
            let shape = walk(
                open_dir(dir, &c_name(name)?)?,
                &mut |_, _, stat| {
                    // Links and special files inside are left out.
                    if matches!(kind_of(stat), EntryKind::File | EntryKind::Dir) {
                        usage.add(as_copied(stat));
                    }
                    Ok(true)
                },
                &mut |_, _| Ok(()),
            )?;
            Ok((usage, shape))
        }
        kind => Err(OpError::Conflict(format!(
            "{name} is {}: only files and directories are copied",
            kind_name(kind)
        ))),
    }
}

/// Removes `name` in `dir` and, if it is a directory, everything below it
/// at any depth, never following a symlink. Adds what the removed entries
/// took to `removed`, also when it fails part-way.
fn remove_tree(dir: &impl AsFd, name: &CStr, removed: &mut Usage) -> Result<(), OpError> {
    let shown = name.to_string_lossy();
    let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        // Gone already (a concurrent delete): nothing to do.
        Err(Errno::NOENT) => return Ok(()),
        Err(err) => return Err(errno(err, &shown)),
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) => {
                removed.add(Usage::of(&stat));
                Ok(())
            }
            Err(Errno::NOENT) => Ok(()),
            Err(err) => Err(errno(err, &shown)),
        };
    }
    // Both callbacks count what goes.
    let removed = std::cell::RefCell::new(removed);
    walk(
        open_dir(dir, name)?,
        &mut |at, child, stat| {
            if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                return Ok(true);
            }
            match rustix::fs::unlinkat(at, child, AtFlags::empty()) {
                Ok(()) => removed.borrow_mut().add(Usage::of(stat)),
                Err(Errno::NOENT) => {}
                Err(err) => return Err(errno(err, &child.to_string_lossy())),
            }
            Ok(false)
        },
        &mut |at, child| remove_empty_dir(at, child, &mut removed.borrow_mut()),
    )?;
    let removed = removed.into_inner();
    remove_empty_dir(dir, name, removed)
}

/// Removes the directory `name` in `dir`, emptied, and counts it.
fn remove_empty_dir(dir: &impl AsFd, name: &CStr, removed: &mut Usage) -> Result<(), OpError> {
    let shown = name.to_string_lossy();
    let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Ok(()),
        Err(err) => return Err(errno(err, &shown)),
    };
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) => {
            removed.add(Usage::of(&stat));
            Ok(())
        }
        Err(Errno::NOENT) => Ok(()),
        Err(Errno::NOTEMPTY) => Err(OpError::Conflict(format!(
            "{shown}: new entries appeared while it was being deleted"
        ))),
        Err(err) => Err(errno(err, &shown)),
    }
}

/// What a copy may take: at most `budget` (counted before it began), and
/// each entry only if `admit(bytes, inodes)` says the disk reserve allows.
struct CopyLimits<'a> {
    budget: &'a Usage,
    admit: &'a dyn Fn(u64, u64) -> Result<(), OpError>,
    /// Who the copies belong to ([`UserDirs::owner`]).
    owner: Option<u32>,
}

/// Copies `name` in `from` to `to_name` in `to`: files with their bytes,
/// directories recursively (at most [`MAX_DEPTH`] levels: callers check the
/// height first); symlinks and special files are left out (never
/// followed, never opened). Adds what the copies take to `copied`, and
/// stops once that outgrows `budget` (the source grew meanwhile).
fn copy_tree(
    from: &impl AsFd,
    name: &CStr,
    to: &impl AsFd,
    to_name: &CStr,
    depth: usize,
    limits: &CopyLimits<'_>,
    copied: &mut Usage,
) -> Result<(), OpError> {
    let (budget, admit) = (limits.budget, limits.admit);
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    let (shown, to_shown) = (name.to_string_lossy(), to_name.to_string_lossy());
    let (name_text, to_name_text): (&str, &str) = (&shown, &to_shown);
    let outgrown = || {
        OpError::Conflict(format!(
            "{name_text}: grew while it was being copied; try again"
        ))
    };
    let stat = rustix::fs::statat(from, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|err| errno(err, name_text))?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Directory => {
            if copied.entries >= budget.entries {
                return Err(outgrown());
            }
            // The disk reserve again, entry by entry: the check before the
            // copy began saw the free space of that moment, which copies
            // running beside this one are taking too.
            admit(MIN_ENTRY_CHARGE, 1)?;
            rustix::fs::mkdirat(to, to_name, PRIVATE).map_err(|err| errno(err, to_name_text))?;
            let source = open_dir(from, name)?;
            let target = open_dir(to, to_name)?;
            give(&target, limits.owner).map_err(|err| errno(err, to_name_text))?;
            for child in children(&source, name)? {
                copy_tree(&source, &child, &target, &child, depth + 1, limits, copied)?;
            }
            let _ = rustix::fs::fsync(&target);
            let made = rustix::fs::fstat(&target).map_err(|err| errno(err, to_name_text))?;
            copied.add(Usage::of(&made));
            Ok(())
        }
        FileType::RegularFile => {
            if copied.entries >= budget.entries {
                return Err(outgrown());
            }
            // O_NONBLOCK: should the entry have become a FIFO meanwhile,
            // opening it must not hang.
            let source = rustix::fs::openat(
                from,
                name,
                OFlags::RDONLY
                    | OFlags::NOFOLLOW
                    | OFlags::NONBLOCK
                    | OFlags::NOCTTY
                    | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|err| errno(err, name_text))?;
            let source_stat = rustix::fs::fstat(&source).map_err(|err| errno(err, name_text))?;
            if FileType::from_raw_mode(source_stat.st_mode) != FileType::RegularFile {
                return Ok(());
            }
            admit(charge(&source_stat), 1)?;
            let target = rustix::fs::openat(
                to,
                to_name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::RUSR | Mode::WUSR,
            )
            .map_err(|err| errno(err, to_name_text))?;
            give(&target, limits.owner).map_err(|err| errno(err, to_name_text))?;
            let mut target = std::fs::File::from(target);
            // No more than the budget left (and a block): a file that grows
            // while copied is not copied without end.
            let room = budget
                .bytes
                .saturating_sub(copied.bytes)
                .saturating_add(MIN_ENTRY_CHARGE);
            let mut source = std::fs::File::from(source).take(room);
            let bytes =
                std::io::copy(&mut source, &mut target).map_err(|err| io_error(err, name_text))?;
            if bytes >= room {
                return Err(outgrown());
            }
            target
                .sync_all()
                .map_err(|err| io_error(err, to_name_text))?;
            let made = rustix::fs::fstat(&target).map_err(|err| errno(err, to_name_text))?;
            copied.add(Usage::of(&made));
            Ok(())
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

    #[test]
    fn a_stale_count_is_taken_again_at_most_every_second_unless_forced() {
        let user = UserId([7; 16]);
        let mut recounts = Recounts::default();
        let start = std::time::Instant::now();
        // Not stale: the cached count serves.
        assert!(!recounts.take(user, start));
        // Stale and never counted: now.
        recounts.stale.insert(user);
        assert!(recounts.take(user, start));
        assert!(!recounts.stale.contains(&user));
        // Stale again within a second: the last count serves, still stale.
        recounts.stale.insert(user);
        assert!(!recounts.take(user, start + RECOUNT_EVERY / 2));
        assert!(recounts.stale.contains(&user));
        // A second on: counted again.
        assert!(recounts.take(user, start + RECOUNT_EVERY));
        // Forced (the guard): counted however recent the last count.
        recounts.force.insert(user);
        assert!(recounts.take(user, start + RECOUNT_EVERY));
        recounts.forget(user);
        assert!(recounts.counted.is_empty());
    }

    #[test]
    fn the_disk_reserve_is_kept_and_at_most_a_tenth() {
        let reserve = DiskReserve {
            bytes: 1 << 30,
            inodes: 10_000,
        };
        let gib = 1u64 << 30;
        let big = Room {
            total_bytes: 100 * gib,
            free_bytes: 2 * gib,
            total_inodes: 1_000_000,
            free_inodes: 20_000,
        };
        assert_eq!(reserve.refuses(big, gib / 2, 1), None);
        assert_eq!(reserve.refuses(big, gib + 1, 0), Some("blocks"));
        assert_eq!(reserve.refuses(big, 0, 10_001), Some("inodes"));
        // Freeing space or writing nothing is never refused.
        let full = Room {
            free_bytes: 0,
            free_inodes: 0,
            ..big
        };
        assert_eq!(reserve.refuses(full, 0, 0), None);
        // On a 20 MiB file system the reserve is 2 MiB, not 1 GiB.
        let small = Room {
            total_bytes: 20 << 20,
            free_bytes: 3 << 20,
            total_inodes: 0,
            free_inodes: 0,
        };
        assert_eq!(reserve.refuses(small, 512 << 10, 100), None);
        assert_eq!(reserve.refuses(small, 2 << 20, 0), Some("blocks"));
    }

    const QUOTA: Quota = Quota {
        bytes: 1 << 20,
        entries: 1000,
    };

    fn setup() -> (tempfile::TempDir, Arc<Workspaces>, Arc<UserDirs>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let workspaces = Arc::new(Workspaces::new(dir.path().join("users")));
        let user = UserId([7; 16]);
        let dirs = workspaces.open(user).expect("open");
        (dir, workspaces, dirs)
    }

    /// A write of `path` with the test quota and no precondition.
    fn begin(
        workspaces: &Arc<Workspaces>,
        dirs: &Arc<UserDirs>,
        path: &str,
    ) -> Result<PendingWrite, OpError> {
        dirs.clone()
            .begin_write(workspaces.clone(), path, false, QUOTA, &Precondition::None)
    }

    fn write(
        workspaces: &Arc<Workspaces>,
        dirs: &Arc<UserDirs>,
        path: &str,
        bytes: &[u8],
    ) -> Result<(Entry, bool), OpError> {
        let mut pending = begin(workspaces, dirs, path)?;
        pending.write(bytes)?;
        pending.commit(&Precondition::None)
    }

    /// With a uid, an existing workspace is handed over on first sight
    /// (symlinks themselves, never their targets), and everything the API
    /// makes there belongs to the uid before it appears; settings and the
    /// user's own directory stay warren's. Needs root (chown).
    #[test]
    fn the_users_uid_owns_the_workspace_and_all_the_api_makes() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        const UID: u32 = 200_123;
        let (dir, _, dirs) = setup();
        let workspace = workspace_path(&dir);
        std::fs::create_dir_all(workspace.join("old/deeper")).expect("mkdir");
        std::fs::write(workspace.join("old/deeper/file"), b"x").expect("write");
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"root's").expect("write");
        std::os::unix::fs::symlink(&outside, workspace.join("old/link")).expect("symlink");
        drop(dirs);
        let workspaces = Arc::new(Workspaces::new(dir.path().join("users")));
        let user = UserId([7; 16]);
        // A count first (no uid), then the first open with the uid.
        workspaces.usage_of(user).expect("usage");
        let dirs = workspaces
            .open_as(user, Some(UID))
            .expect("open as the uid");
        let owner = |path: &std::path::Path| {
            let meta = std::fs::symlink_metadata(path).expect("stat");
            (meta.uid(), meta.gid())
        };
        for path in ["", "old", "old/deeper", "old/deeper/file", "old/link"] {
            assert_eq!(owner(&workspace.join(path)), (UID, UID), "{path}");
        }
        assert_eq!(
            owner(&outside),
            (0, 0),
            "a symlink's target is never handed over"
        );
        let base = workspace.parent().expect("user dir");
        assert_eq!(owner(base), (0, 0));
        for kept in ["state", "tmp"] {
            assert_eq!(owner(&base.join(kept)), (0, 0), "{kept}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &std::path::Path| {
            std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
        };
        assert_eq!(mode(base), 0o711);
        assert_eq!(mode(base.parent().expect("users")), 0o711);
        dirs.mkdir(&workspaces, QUOTA, "made/below", true)
            .expect("mkdir -p");
        write(&workspaces, &dirs, "made/below/new", b"data").expect("write");
        write(&workspaces, &dirs, "old/deeper/file", b"replaced").expect("replace");
        dirs.copy(&workspaces, QUOTA, "old", "copied")
            .expect("copy");
        dirs.put_settings(&workspaces, b"{}").expect("settings");
        for path in [
            "made",
            "made/below",
            "made/below/new",
            "old/deeper/file",
            "copied",
            "copied/deeper",
            "copied/deeper/file",
        ] {
            assert_eq!(owner(&workspace.join(path)), (UID, UID), "{path}");
        }
        assert_eq!(owner(&base.join("state/settings.json")), (0, 0));
    }

    /// A user whose directories were closed to make room for others is
    /// served again as before: their upload in progress completes, and
    /// reopening does not sweep its temp file away.
    #[test]
    fn users_beyond_the_open_bound_are_reopened_without_losing_anything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let workspaces = Arc::new(Workspaces::keeping_open(dir.path().join("users"), 2));
        let first = UserId([1; 16]);
        let dirs = workspaces.open(first).expect("open");
        write(&workspaces, &dirs, "kept", b"old").expect("write");
        let mut pending = begin(&workspaces, &dirs, "uploading").expect("begin");
        pending.write(b"half").expect("write");
        drop(dirs);
        for n in 2..10 {
            workspaces.open(UserId([n; 16])).expect("open another");
        }
        assert!(workspaces.opened(first).is_none(), "still open");
        assert!(workspaces.dirs.entry_count() <= 2);
        let dirs = workspaces.open(first).expect("reopen");
        pending.write(b" and half").expect("write after reopening");
        pending.commit(&Precondition::None).expect("commit");
        for (path, content) in [("kept", &b"old"[..]), ("uploading", b"half and half")] {
            match dirs.read_small(path, 64) {
                Ok(Reply::File { content: got, .. }) => assert_eq!(got.as_deref(), Some(content)),
                other => panic!("read {path}: {other:?}"),
            }
        }
        let usage = workspaces.usage(&dirs).expect("usage");
        assert_eq!((usage.bytes, usage.files, usage.entries), (8192, 2, 2));
    }

    /// An eviction closes the user's directories and forgets their usage
    /// but removes nothing and refuses nothing: a directory put in place
    /// afterwards (a move back) is served.
    #[test]
    fn an_eviction_forgets_the_user_without_refusing_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let users = dir.path().join("users");
        let workspaces = Workspaces::new(users.clone());
        let user = UserId([7; 16]);
        let dirs = workspaces.open(user).expect("open");
        std::fs::write(users.join(user.to_string()).join("workspace/a"), b"1").expect("write");
        drop(dirs);
        workspaces.evict(user);
        assert!(workspaces.opened(user).is_none());
        // Replaced behind the worker's back (a move back), then served.
        let home = users.join(user.to_string());
        std::fs::rename(&home, users.join("old")).expect("aside");
        std::fs::create_dir_all(home.join("workspace")).expect("mkdir");
        std::fs::write(home.join("workspace/b"), b"22").expect("write");
        workspaces.evict(user);
        let dirs = workspaces.open(user).expect("served again");
        assert!(dirs.read_small("b", 100).is_ok());
        assert!(users.join(user.to_string()).join("workspace/b").exists());
    }

    /// A purge takes everything of the user, finishes an earlier purge
    /// that was cut short, and forgets what this process knew of them.
    #[test]
    fn a_purge_removes_the_user_and_a_leftover_of_an_earlier_one() {
        let (root, workspaces, dirs) = setup();
        let user = UserId([7; 16]);
        write(&workspaces, &dirs, "file", b"bytes").expect("write");
        dirs.mkdir(&workspaces, QUOTA, "deep", false)
            .expect("mkdir");
        let users = root.path().join("users");
        let leftover = users.join(format!(".purge-{user}"));
        std::fs::create_dir_all(leftover.join("workspace/old")).expect("leftover");
        drop(dirs);
        workspaces.purge(user).expect("purge");
        let left: Vec<_> = std::fs::read_dir(&users).expect("users").collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(workspaces.opened(user).is_none());
        workspaces.purge(user).expect("nothing to purge is fine");
        let usage = workspaces.usage_of(user).expect("usage");
        assert_eq!(usage, Usage::default());
        // A request of theirs arriving late recreates nothing.
        assert!(matches!(workspaces.open(user), Err(OpError::NotFound(_))));
        assert!(std::fs::read_dir(&users).expect("users").next().is_none());
    }

    #[test]
    fn chunks_are_written_in_order() {
        let (_root, workspaces, dirs) = setup();
        let mut pending = begin(&workspaces, &dirs, "joined").expect("begin");
        let chunks: [&[u8]; 4] = [b"ab", b"", b"cde", b"f"];
        pending.write_chunks(&chunks).expect("write");
        pending.write_chunks(&[b"gh"]).expect("write");
        let (entry, _) = pending.commit(&Precondition::None).expect("commit");
        assert_eq!(entry.size, 8);
        match dirs.read_small("joined", 64) {
            Ok(Reply::File { content, .. }) => {
                assert_eq!(content.as_deref(), Some(&b"abcdefgh"[..]))
            }
            other => panic!("read: {other:?}"),
        }
    }

    #[test]
    fn small_files_come_whole_with_their_description() {
        let (_root, workspaces, dirs) = setup();
        let limit = 4096;
        let at_limit = vec![b'a'; limit as usize];
        let over_limit = vec![b'b'; limit as usize + 1];
        write(&workspaces, &dirs, "small", &at_limit).expect("write");
        write(&workspaces, &dirs, "large", &over_limit).expect("write");
        write(&workspaces, &dirs, "empty", b"").expect("write");
        dirs.mkdir(&workspaces, QUOTA, "dir", false).expect("mkdir");
        let read = |path| match dirs.read_small(path, limit) {
            Ok(Reply::File { entry, content }) => (entry, content),
            other => panic!("read_small({path}): {other:?}"),
        };
        let (entry, content) = read("small");
        assert_eq!((entry.size, content), (limit, Some(at_limit.clone())));
        // Just written, so in memory: the non-blocking read serves it too.
        match dirs.read_small_cached("small", limit) {
            Ok(Some(Reply::File { content, .. })) => assert_eq!(content, Some(at_limit)),
            other => panic!("read_small_cached: {other:?}"),
        }
        let (entry, content) = read("large");
        assert_eq!((entry.size, content), (limit + 1, None));
        assert_eq!(read("empty").1, Some(Vec::new()));
        let (entry, content) = read("dir");
        assert_eq!((entry.kind, content), (EntryKind::Dir, None));
        assert!(matches!(
            dirs.read_small("missing", limit),
            Err(OpError::NotFound(_))
        ));
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
        // A file where there was a link: a new file (finding 12).
        let (written, created) = write(&workspaces, &dirs, "link", b"mine").expect("write");
        assert!(created);
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
            dirs.delete(&workspaces, "up", false).is_ok(),
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
        let mut pending = begin(&workspaces, &dirs, "a.txt").expect("begin");
        pending.write(b"three").expect("write");
        let stale = Precondition::Match(vec![first.etag.clone()]);
        assert!(matches!(
            pending.commit(&stale),
            Err(OpError::PreconditionFailed(_))
        ));
        let (file, found) = dirs.open_read("a.txt").expect("read");
        assert_eq!(found.etag, second.etag);
        let mut file = file.expect("a regular file");
        let mut buf = [0u8; 16];
        let n = read_chunk(&mut file, &mut buf).expect("read");
        assert_eq!(&buf[..n], b"two!");
        // An abandoned write leaves nothing in tmp/.
        let mut pending = begin(&workspaces, &dirs, "b.txt").expect("begin");
        pending.write(b"partial").expect("write");
        drop(pending);
        let tmp = root
            .path()
            .join("users")
            .join(UserId([7; 16]).to_string())
            .join("tmp");
        assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);
        assert!(matches!(dirs.open_read("b.txt"), Err(OpError::NotFound(_))));
    }

    #[test]
    fn the_quota_refuses_what_does_not_fit_and_keeps_the_old_file() {
        let (_root, workspaces, dirs) = setup();
        let (_, _) = write(&workspaces, &dirs, "a.bin", &vec![1u8; 600 * 1024]).expect("fits");
        assert_eq!(
            workspaces.usage(&dirs).expect("usage"),
            Usage {
                bytes: 600 * 1024,
                files: 1,
                entries: 1,
                ..Usage::default()
            }
        );
        // Replacing a.bin with 900 KiB fits (the old 600 KiB go).
        let (_, created) =
            write(&workspaces, &dirs, "a.bin", &vec![2u8; 900 * 1024]).expect("replace");
        assert!(!created);
        // A new 200 KiB file does not fit beside it.
        let err = write(&workspaces, &dirs, "b.bin", &vec![3u8; 200 * 1024]).expect_err("over");
        assert!(
            matches!(err, OpError::QuotaExceeded { used, limit } if used == 900 * 1024 && limit == QUOTA.bytes),
            "{err:?}"
        );
        assert!(matches!(dirs.open_read("b.bin"), Err(OpError::NotFound(_))));
        assert!(matches!(
            dirs.copy(&workspaces, QUOTA, "a.bin", "c.bin"),
            Err(OpError::QuotaExceeded { .. })
        ));
        assert_eq!(
            workspaces.usage(&dirs).expect("usage"),
            Usage {
                bytes: 900 * 1024,
                files: 1,
                entries: 1,
                ..Usage::default()
            }
        );
        dirs.delete(&workspaces, "a.bin", false).expect("delete");
        assert_eq!(workspaces.usage(&dirs).expect("usage"), Usage::default());
        // A fresh count agrees with the tracked one.
        write(&workspaces, &dirs, "d/e.bin", b"12345").expect_err("no parent");
        dirs.mkdir(&workspaces, QUOTA, "d", false).expect("mkdir");
        write(&workspaces, &dirs, "d/e.bin", b"12345").expect("write");
        assert_eq!(
            count_tree(&dirs.workspace).expect("count"),
            workspaces.usage(&dirs).expect("usage")
        );
    }

    #[test]
    fn parallel_uploads_share_one_quota() {
        let (root, workspaces, dirs) = setup();
        let mut first = begin(&workspaces, &dirs, "one.bin").expect("begin");
        let mut second = begin(&workspaces, &dirs, "two.bin").expect("begin");
        first.write(&vec![1u8; 700 * 1024]).expect("fits alone");
        let err = second
            .write(&vec![2u8; 700 * 1024])
            .expect_err("not together");
        assert!(matches!(err, OpError::QuotaExceeded { .. }), "{err:?}");
        drop(second);
        first.commit(&Precondition::None).expect("commit");
        assert_eq!(
            workspaces.usage(&dirs).expect("usage"),
            Usage {
                bytes: 700 * 1024,
                files: 1,
                entries: 1,
                ..Usage::default()
            }
        );
        assert_eq!(
            workspaces.lock_usage()[&dirs.user].reserved,
            0,
            "reservations released"
        );
        let tmp = root
            .path()
            .join("users")
            .join(UserId([7; 16]).to_string())
            .join("tmp");
        assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);
    }

    #[test]
    fn directories_list_move_copy_and_delete() {
        let (_root, workspaces, dirs) = setup();
        dirs.mkdir(&workspaces, QUOTA, "d/e", true)
            .expect("mkdir -p");
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
        dirs.copy(&workspaces, QUOTA, "d", "d2").expect("copy tree");
        assert!(matches!(
            dirs.copy(&workspaces, QUOTA, "d", "d2"),
            Err(OpError::Conflict(_))
        ));
        dirs.rename(&workspaces, "d2/a", "a-moved").expect("move");
        assert!(
            matches!(
                dirs.rename(&workspaces, "d/b", "a-moved"),
                Err(OpError::Conflict(_))
            ),
            "no replace"
        );
        assert!(matches!(
            dirs.rename(&workspaces, "d", "d/e/inside"),
            Err(OpError::Conflict(_))
        ));
        assert!(matches!(
            dirs.delete(&workspaces, "d", false),
            Err(OpError::Conflict(_))
        ));
        dirs.delete(&workspaces, "d", true).expect("rm -r");
        assert!(matches!(dirs.open_read("d"), Err(OpError::NotFound(_))));
        assert!(matches!(
            dirs.delete(&workspaces, "", true),
            Err(OpError::BadPath(_))
        ));
    }

    /// The workspace directory of the test user, on disk.
    fn workspace_path(root: &tempfile::TempDir) -> PathBuf {
        root.path()
            .join("users")
            .join(UserId([7; 16]).to_string())
            .join("workspace")
    }

    /// Builds `levels` nested directories `d/d/d/...` below `dir` with
    /// mkdirat / openat (no path ever gets long) and a file at the bottom.
    fn deep_tree(dir: &std::path::Path, levels: usize) {
        let mut fd =
            rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).expect("open");
        for _ in 0..levels {
            rustix::fs::mkdirat(&fd, "d", PRIVATE).expect("mkdirat");
            fd = open_dir(&fd, c"d").expect("openat");
        }
        let file = rustix::fs::openat(
            &fd,
            "bottom",
            OFlags::CREATE | OFlags::WRONLY,
            Mode::RUSR | Mode::WUSR,
        )
        .expect("create");
        rustix::io::write(&file, b"x").expect("write");
    }

    /// A tree deeper than any path of the API, made on disk by a user's
    /// program: counted and deleted all the same (finding 5), with a
    /// bounded number of descriptors; the API refuses to make one.
    #[test]
    fn a_copy_asks_the_disk_reserve_before_every_entry() {
        // Copies running side by side all passed the reserve checked at
        // their start; each must check again as it writes.
        let source = tempfile::tempdir().expect("tempdir");
        let target = tempfile::tempdir().expect("tempdir");
        let tree = source.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
        for n in 0..4 {
            std::fs::write(tree.join("sub").join(format!("f{n}")), b"data").expect("write");
        }
        let from = rustix::fs::open(source.path(), OFlags::DIRECTORY, Mode::empty()).expect("open");
        let to = rustix::fs::open(target.path(), OFlags::DIRECTORY, Mode::empty()).expect("open");
        let asked = std::cell::Cell::new(0);
        let admit = |_bytes: u64, inodes: u64| {
            asked.set(asked.get() + inodes);
            if asked.get() > 3 {
                Err(OpError::DiskFull("the reserve".into()))
            } else {
                Ok(())
            }
        };
        let budget = Usage {
            bytes: 1 << 20,
            entries: 100,
            ..Usage::default()
        };
        let limits = CopyLimits {
            budget: &budget,
            admit: &admit,
            owner: None,
        };
        let mut copied = Usage::default();
        let err = copy_tree(&from, c"tree", &to, c"copy", 0, &limits, &mut copied)
            .expect_err("refused part-way");
        assert!(matches!(err, OpError::DiskFull(_)), "{err:?}");
        assert_eq!(asked.get(), 4, "asked once per entry until refused");
    }

    #[test]
    fn trees_of_any_depth_are_counted_and_deleted() {
        const BIG: Quota = Quota {
            bytes: u64::MAX,
            entries: u64::MAX,
        };
        let (root, workspaces, dirs) = setup();
        drop(dirs);
        deep_tree(&workspace_path(&root), 1000);
        // A name that is not UTF-8 (programs may make them) is counted
        // and deleted like any other.
        {
            use std::os::unix::ffi::OsStrExt;
            let odd = workspace_path(&root).join("odd");
            std::fs::create_dir(&odd).expect("mkdir");
            let name = std::ffi::OsStr::from_bytes(b"not-utf8-\xff\xfe");
            std::fs::write(odd.join(name), b"x").expect("write");
        }
        // A fresh process: the usage is counted from the disk.
        let workspaces2 = Arc::new(Workspaces::new(root.path().join("users")));
        drop(workspaces);
        let dirs = workspaces2.open(UserId([7; 16])).expect("open");
        let usage = workspaces2.usage(&dirs).expect("usage of a deep tree");
        assert_eq!((usage.files, usage.entries), (2, 1003));
        assert!(usage.bytes >= 1003 * MIN_ENTRY_CHARGE);
        // Copying or moving it (or into it) would go beyond the API's depth.
        let err = dirs
            .copy(&workspaces2, BIG, "d", "copy")
            .expect_err("too deep");
        assert!(
            matches!(&err, OpError::Conflict(m) if m.contains("levels deep")),
            "{err:?}"
        );
        dirs.mkdir(&workspaces2, BIG, "x", false).expect("mkdir");
        let err = dirs.rename(&workspaces2, "d", "x/d").expect_err("too deep");
        assert!(
            matches!(&err, OpError::Conflict(m) if m.contains("levels deep")),
            "{err:?}"
        );
        let deepest = vec!["a"; MAX_DEPTH + 1].join("/");
        assert!(matches!(
            dirs.mkdir(&workspaces2, BIG, &deepest, true),
            Err(OpError::BadPath(_))
        ));
        let fine = vec!["a"; MAX_DEPTH].join("/");
        dirs.mkdir(&workspaces2, BIG, &fine, true)
            .expect("MAX_DEPTH levels");
        let err = dirs
            .rename(&workspaces2, "a", "x/a")
            .expect_err("one too many");
        assert!(matches!(err, OpError::Conflict(_)), "{err:?}");
        dirs.rename(&workspaces2, "x", "a/x")
            .expect("a shallow tree may go deeper");
        // Deleted whatever the depth, and the usage follows.
        dirs.delete(&workspaces2, "d", true)
            .expect("delete a deep tree");
        dirs.delete(&workspaces2, "odd", true)
            .expect("delete a name that is not UTF-8");
        dirs.delete(&workspaces2, "a", true).expect("delete");
        assert!(std::fs::read_dir(workspace_path(&root))
            .expect("ls")
            .next()
            .is_none());
        assert_eq!(
            workspaces2.usage(&dirs).expect("usage").counted(),
            Usage::default()
        );
    }

    /// Directories and empty files are charged, and entries are counted
    /// against their own quota: mkdir, write and copy all refuse what
    /// would exceed either, before making anything (finding 3).
    #[test]
    fn every_entry_is_charged_and_counted() {
        let (root, workspaces, dirs) = setup();
        let tiny = Quota {
            bytes: 1,
            entries: 1000,
        };
        let err = dirs
            .mkdir(&workspaces, tiny, "d", false)
            .expect_err("1 byte");
        assert!(matches!(err, OpError::QuotaExceeded { .. }), "{err:?}");
        let err = dirs
            .clone()
            .begin_write(
                workspaces.clone(),
                "empty",
                false,
                tiny,
                &Precondition::None,
            )
            .map(|_| ())
            .expect_err("1 byte");
        assert!(matches!(err, OpError::QuotaExceeded { .. }), "{err:?}");
        assert!(std::fs::read_dir(workspace_path(&root))
            .expect("ls")
            .next()
            .is_none());

        let few = Quota {
            bytes: 1 << 30,
            entries: 5,
        };
        dirs.mkdir(&workspaces, few, "t/u", true)
            .expect("2 entries");
        write(&workspaces, &dirs, "t/u/f", b"").expect("3 entries");
        let usage = workspaces.usage(&dirs).expect("usage");
        assert_eq!((usage.files, usage.entries), (1, 3));
        assert_eq!(
            usage.bytes,
            3 * MIN_ENTRY_CHARGE,
            "empty entries cost a block"
        );
        let err = dirs.copy(&workspaces, few, "t", "t2").expect_err("3 more");
        assert!(
            matches!(err, OpError::EntryQuotaExceeded { used: 3, limit: 5 }),
            "{err:?}"
        );
        dirs.mkdir(&workspaces, few, "v/w", true)
            .expect("5 entries");
        let err = dirs
            .mkdir(&workspaces, few, "v/w/x", true)
            .expect_err("6th");
        assert!(matches!(err, OpError::EntryQuotaExceeded { .. }), "{err:?}");
        let err = dirs
            .clone()
            .begin_write(workspaces.clone(), "g", false, few, &Precondition::None)
            .map(|_| ())
            .expect_err("6th");
        assert!(matches!(err, OpError::EntryQuotaExceeded { .. }), "{err:?}");
        // Replacing a file adds no entry.
        let mut pending = dirs
            .clone()
            .begin_write(workspaces.clone(), "t/u/f", false, few, &Precondition::None)
            .expect("replace");
        pending.write(b"bytes").expect("write");
        pending.commit(&Precondition::None).expect("commit");
        let usage = workspaces.usage(&dirs).expect("usage");
        assert_eq!(usage.entries, 5);
        assert_eq!(count_tree(&dirs.workspace).expect("count"), usage);
        // Nothing was left in tmp/ by the refused copy.
        let tmp = root
            .path()
            .join("users")
            .join(UserId([7; 16]).to_string())
            .join("tmp");
        assert_eq!(std::fs::read_dir(tmp).expect("tmp").count(), 0);
    }

    /// FIFOs and sockets made by a user's program are listed as what they
    /// are, never read (nothing blocks), not copied (409 naming what they
    /// are), and a write over one makes a new, counted file (findings 7,
    /// 9, 12).
    #[test]
    fn special_files_are_named_never_read_and_replaced_as_new() {
        let (root, workspaces, dirs) = setup();
        let ws = workspace_path(&root);
        let fd =
            rustix::fs::open(&ws, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).expect("open");
        rustix::fs::mknodat(&fd, "pipe", FileType::Fifo, Mode::RUSR | Mode::WUSR, 0)
            .expect("mkfifo");
        let _socket = std::os::unix::net::UnixListener::bind(ws.join("sock")).expect("bind");
        std::os::unix::fs::symlink("pipe", ws.join("to-pipe")).expect("symlink");
        std::os::unix::fs::symlink("nowhere", ws.join("dangling")).expect("symlink");
        let Reply::Listing { entries, .. } = dirs.list("", None, 10).expect("list") else {
            panic!()
        };
        let kinds: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("dangling", EntryKind::Symlink),
                ("pipe", EntryKind::Fifo),
                ("sock", EntryKind::Socket),
                ("to-pipe", EntryKind::Symlink)
            ]
        );
        for path in ["pipe", "sock", "to-pipe"] {
            for cached in [false, true] {
                let err = dirs
                    .read_small_with(path, 64, cached, false)
                    .expect_err(path);
                assert!(
                    matches!(err, OpError::NotARegularFile(_)),
                    "{path}: {err:?}"
                );
            }
            let err = dirs.open_read(path).map(|_| ()).expect_err(path);
            assert!(
                matches!(err, OpError::NotARegularFile(_)),
                "{path}: {err:?}"
            );
        }
        for (path, says) in [
            ("pipe", "named pipe"),
            ("sock", "socket"),
            ("to-pipe", "symbolic link"),
            ("dangling", "symbolic link"),
        ] {
            let err = dirs.copy(&workspaces, QUOTA, path, "copy").expect_err(path);
            assert!(
                matches!(&err, OpError::Conflict(m) if m.contains(says) && m.contains(path)),
                "{path}: {err:?}"
            );
        }
        let before = workspaces.usage(&dirs).expect("usage");
        assert_eq!((before.files, before.entries), (0, 4));
        let (entry, created) = write(&workspaces, &dirs, "pipe", b"now a file").expect("write");
        assert!(created, "a file where there was none is created");
        assert_eq!(entry.kind, EntryKind::File);
        let after = workspaces.usage(&dirs).expect("usage");
        assert_eq!((after.files, after.entries), (1, 4));
        assert_eq!(count_tree(&dirs.workspace).expect("count"), after);
    }

    /// Staged writes appear only when committed, keep their reservation
    /// meanwhile, and leave nothing when dropped (finding 10).
    #[test]
    fn staged_writes_appear_only_when_committed() {
        let (root, workspaces, dirs) = setup();
        let user = UserId([7; 16]);
        let mut stages = Vec::new();
        for name in ["one", "two"] {
            let mut pending = begin(&workspaces, &dirs, name).expect("begin");
            pending.write(&vec![1u8; 300 * 1024]).expect("write");
            stages.push(workspaces.stage(user, pending).expect("stage"));
        }
        assert!(std::fs::read_dir(workspace_path(&root))
            .expect("ls")
            .next()
            .is_none());
        // The staged bytes count: a third does not fit beside them.
        let mut third = begin(&workspaces, &dirs, "three").expect("begin");
        let err = third.write(&vec![1u8; 500 * 1024]).expect_err("over");
        assert!(matches!(err, OpError::QuotaExceeded { .. }), "{err:?}");
        drop(third);
        let Reply::Written(written) = workspaces.commit_staged(user, &stages).expect("commit")
        else {
            panic!("not Written")
        };
        let names: Vec<_> = written
            .iter()
            .map(|w| (w.entry.name.as_str(), w.created))
            .collect();
        assert_eq!(names, [("one", true), ("two", true)]);
        assert!(matches!(
            workspaces.commit_staged(user, &stages),
            Err(OpError::NotFound(_))
        ));
        let mut dropped = begin(&workspaces, &dirs, "dropped").expect("begin");
        dropped.write(b"x").expect("write");
        let stage = workspaces.stage(user, dropped).expect("stage");
        workspaces.drop_staged(user, &[stage]);
        let tmp = root.path().join("users").join(user.to_string()).join("tmp");
        assert_eq!(std::fs::read_dir(tmp).expect("tmp").count(), 0);
        let usage = workspaces.lock_usage()[&user];
        assert_eq!(
            (usage.reserved, usage.reserved_entries, usage.files),
            (0, 0, 2)
        );
    }

    /// Staged writes over an existing file each hold a temp file (an
    /// inode) until committed: they count against the entry quota, so no
    /// user piles up more of them than their quota allows (hardening round
    /// 2, finding 3); one replacement at a time fits even at the quota.
    #[test]
    fn staged_replacements_count_against_the_entry_quota() {
        let (_root, workspaces, dirs) = setup();
        let user = UserId([7; 16]);
        let quota = Quota {
            bytes: 1 << 20,
            entries: 3,
        };
        let begin = |path: &str| {
            dirs.clone()
                .begin_write(workspaces.clone(), path, false, quota, &Precondition::None)
        };
        for name in ["a", "b"] {
            let mut pending = begin(name).expect("begin");
            pending.write(b"old").expect("write");
            pending.commit(&Precondition::None).expect("commit");
        }
        // 2 entries of 3: two more temp files fit, the third does not.
        let mut stages = Vec::new();
        for _ in 0..2 {
            let mut pending = begin("a").expect("begin");
            pending.write(b"new").expect("write");
            stages.push(workspaces.stage(user, pending).expect("stage"));
        }
        let err = begin("a").err().expect("a third temp file is refused");
        assert!(matches!(err, OpError::EntryQuotaExceeded { .. }), "{err:?}");
        workspaces.drop_staged(user, &stages);
        // At the quota, a file is still replaced (its entry is credited).
        let mut pending = begin("c").expect("begin");
        pending.write(b"third").expect("write");
        pending.commit(&Precondition::None).expect("commit");
        let mut pending = begin("a").expect("replacing at the quota");
        pending.write(b"newer").expect("write");
        pending.commit(&Precondition::None).expect("commit");
        let usage = workspaces.lock_usage()[&user];
        assert_eq!((usage.entries, usage.reserved_entries), (3, 0));
    }

    /// A move or copy that would make paths longer than any the API takes
    /// is refused, like one that would nest too deep (finding 5).
    #[test]
    fn moves_and_copies_keep_paths_within_the_byte_limit() {
        let (root, workspaces, dirs) = setup();
        let long = "n".repeat(250);
        let chain = std::iter::once("t")
            .chain(std::iter::repeat_n(long.as_str(), 15))
            .collect::<Vec<_>>()
            .join("/");
        std::fs::create_dir_all(workspace_path(&root).join(&chain)).expect("mkdir -p");
        let big = Quota {
            bytes: u64::MAX,
            entries: u64::MAX,
        };
        dirs.copy(&workspaces, big, "t", "t2").expect("fits");
        let far = format!("{}/{}", "x".repeat(250), "y".repeat(250));
        dirs.mkdir(&workspaces, big, &far, true).expect("mkdir");
        let into = format!("{far}/t");
        let err = dirs
            .copy(&workspaces, big, "t", &into)
            .expect_err("too long");
        assert!(
            matches!(&err, OpError::Conflict(m) if m.contains("bytes")),
            "{err:?}"
        );
        let err = dirs.rename(&workspaces, "t", &into).expect_err("too long");
        assert!(
            matches!(&err, OpError::Conflict(m) if m.contains("bytes")),
            "{err:?}"
        );
        assert!(
            matches!(dirs.open_read(&chain), Ok((None, _))),
            "the source stays"
        );
    }
}
