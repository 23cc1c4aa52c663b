//! Users' cgroups: one per user with the user's limits, one per launch
//! ("group") beneath it, so a task's processes are limited with the rest
//! of the user's and can be killed together, grandchildren that called
//! `setsid` included.
//!
//! Layout, under a base (`<own cgroup>/warren-<hash of the data dir>` by
//! default, see [`instance_name`]):
//!
//! ```text
//! <v2 base>/master                      the master and its workers (only
//!                                       when they had to leave their own
//!                                       cgroup: v2's no-internal-processes rule)
//! <v2 base>/slot-<N>/user-<id>/<group>  a launch's processes (a leaf)
//! <v1 mount><own v1>/<base name>/slot-<N>/user-<id>   per controller missing
//!                                       from v2 but mounted as v1
//! ```
//!
//! v2 groups the processes (`cgroup.procs`, `cgroup.kill`,
//! `cgroup.events`); each of `memory`, `pids` and `cpu` is limited through
//! v2 when the v2 tree has it, else through its v1 hierarchy when mounted
//! (hybrid machines), with the same numbers. The stage joins all of them
//! itself, before it drops root.

use std::io::{Error, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warren_protocol::ProcessLimits;

/// A resource controller the user's limits need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

/// How the operator wants cgroups used (`--cgroup-root`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CgroupRoot {
    /// `<own v2 cgroup>/warren-<instance>`, if writable: `<instance>`
    /// names the data directory ([`instance_name`]), so two warrens in one
    /// cgroup never kill each other's users' processes, and a restart on
    /// the same data directory finds what its predecessor left.
    #[default]
    Auto,
    /// No cgroups: process groups only.
    Off,
    /// This v2 directory (inside a cgroup2 mount) as the base.
    Path(PathBuf),
}

impl std::str::FromStr for CgroupRoot {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(CgroupRoot::Auto),
            "off" => Ok(CgroupRoot::Off),
            path if path.starts_with('/') => Ok(CgroupRoot::Path(PathBuf::from(path))),
            other => Err(format!(
                "{other:?} is not `auto`, `off` or an absolute cgroup directory"
            )),
        }
    }
}

impl std::fmt::Display for CgroupRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CgroupRoot::Auto => f.write_str("auto"),
            CgroupRoot::Off => f.write_str("off"),
            CgroupRoot::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Where each controller is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    V2,
    V1,
}

/// The cgroups warren can use on this machine, found by [`Cgroups::discover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroups {
    /// The v2 base directory (exists and is writable).
    pub v2_base: Option<PathBuf>,
    /// Whether `cgroup.kill` exists (Linux 5.14).
    pub v2_kill: bool,
    /// Controllers enforced through v2 (enabled down to the base).
    pub v2_controllers: Vec<Controller>,
    /// Per controller missing from v2: its v1 base directory.
    pub v1_bases: Vec<(Controller, PathBuf)>,
}

impl Cgroups {
    /// Where `controller` is enforced, if anywhere.
    pub fn via(&self, controller: Controller) -> Option<Via> {
        if self.v2_controllers.contains(&controller) {
            Some(Via::V2)
        } else if self.v1_bases.iter().any(|(c, _)| *c == controller) {
            Some(Via::V1)
        } else {
            None
        }
    }

    /// Finds (and, with `create`, makes and prepares) the base cgroups.
    /// `create` is for the master at start: it may move itself into
    /// `<base>/master` so that controllers can be enabled below its own
    /// cgroup. Workers pass the master's resolved base as a path and do
    /// not create it. Errors say why cgroups cannot be used.
    /// `instance` names an `Auto` base ([`instance_name`]).
    pub fn discover(root: &CgroupRoot, instance: &str, create: bool) -> Result<Cgroups, String> {
        let mounts = Mounts::read().map_err(|err| format!("cannot read mountinfo: {err}"))?;
        let own =
            OwnCgroups::read().map_err(|err| format!("cannot read /proc/self/cgroup: {err}"))?;
        let v2_base = match (root, &mounts.v2, &own.v2) {
            (CgroupRoot::Off, _, _) => return Err("cgroups are off (--cgroup-root off)".into()),
            (CgroupRoot::Path(path), _, _) => Some(path.clone()),
            (CgroupRoot::Auto, Some(mount), Some(own)) => {
                Some(join_cgroup(mount, own).join(instance))
            }
            (CgroupRoot::Auto, _, _) => None,
        };
        // The v1 bases take the v2 base's name, so two warren instances
        // given different --cgroup-root never share a slot's v1 groups.
        let name = match root {
            CgroupRoot::Path(path) => path
                .file_name()
                .map_or_else(|| instance.into(), |n| n.to_os_string()),
            _ => instance.into(),
        };
        let mut found = Cgroups {
            v2_base: None,
            v2_kill: false,
            v2_controllers: Vec::new(),
            v1_bases: Vec::new(),
        };
        let mut why_not_v2 = None;
        if let Some(base) = v2_base {
            match prepare_v2(&base, create) {
                Ok(controllers) => {
                    found.v2_kill = base.join("cgroup.kill").exists();
                    found.v2_controllers = controllers;
                    found.v2_base = Some(base);
                }
                Err(err) => why_not_v2 = Some(err),
            }
        }
        for controller in Controller::ALL {
            if found.v2_controllers.contains(&controller) {
                continue;
            }
            let (Some(mount), Some(own_path)) = (
                mounts
                    .v1
                    .iter()
                    .find(|(c, _)| *c == controller)
                    .map(|(_, m)| m),
                own.v1
                    .iter()
                    .find(|(c, _)| *c == controller)
                    .map(|(_, p)| p),
            ) else {
                continue;
            };
            let base = join_cgroup(mount, own_path).join(&name);
            let usable = if create {
                std::fs::create_dir_all(&base).is_ok()
            } else {
                base.is_dir()
            };
            if usable && writable(&base) {
                found.v1_bases.push((controller, base));
            }
        }
        if found.v2_base.is_none() && found.v1_bases.is_empty() {
            return Err(why_not_v2.unwrap_or_else(|| "no cgroup v2 mount".into()));
        }
        Ok(found)
    }

    /// The slot's v2 directory.
    fn v2_slot(&self, slot: u32) -> Option<PathBuf> {
        self.v2_base
            .as_ref()
            .map(|base| base.join(format!("slot-{slot}")))
    }

    /// Creates the user's cgroups (and writes their limits), then the
    /// launch's group beneath; returns what the stage joins.
    pub fn enter_user(
        &self,
        slot: u32,
        user: &str,
        limits: &ProcessLimits,
        group: &str,
    ) -> Result<Joined, Error> {
        check_group_name(group)?;
        let user_dir = format!("user-{user}");
        let mut joined = Joined {
            v2_group: None,
            procs: Vec::new(),
        };
        if let Some(slot_dir) = self.v2_slot(slot) {
            if make_dir(&slot_dir)? && self.v2_controllers.contains(&Controller::Cpu) {
                idle(&slot_dir);
            }
            enable_controllers(&slot_dir, &self.v2_controllers)?;
            let user_path = slot_dir.join(&user_dir);
            make_dir(&user_path)?;
            for controller in &self.v2_controllers {
                write_limit(&user_path, *controller, Via::V2, limits)?;
            }
            let group_path = user_path.join(group);
            make_dir(&group_path)?;
            joined.procs.push(group_path.join("cgroup.procs"));
            joined.v2_group = Some(group_path);
        }
        for (controller, base) in &self.v1_bases {
            let slot_dir = base.join(format!("slot-{slot}"));
            let new_slot = !slot_dir.exists();
            let user_path = slot_dir.join(&user_dir);
            std::fs::create_dir_all(&user_path)?;
            if new_slot && *controller == Controller::Cpu {
                idle(&slot_dir);
            }
            write_limit(&user_path, *controller, Via::V1, limits)?;
            joined.procs.push(user_path.join("cgroup.procs"));
        }
        Ok(joined)
    }

    /// Kills every process of the slot (a worker that died left them, or
    /// a worker starting cleans what its predecessor left), waits until
    /// they are gone, and removes the slot's cgroups.
    pub fn kill_slot(&self, slot: u32, patience: Duration) -> Result<(), Error> {
        if let Some(slot_dir) = self.v2_slot(slot) {
            if slot_dir.is_dir() {
                kill_tree(&slot_dir, self.v2_kill, patience)?;
                remove_tree(&slot_dir, false);
            }
        }
        for (_, base) in &self.v1_bases {
            let slot_dir = base.join(format!("slot-{slot}"));
            if slot_dir.is_dir() {
                kill_v1_tree(&slot_dir, patience)?;
                remove_tree(&slot_dir, false);
            }
        }
        Ok(())
    }

    /// [`Cgroups::kill_slot`] for every slot found under the bases (a
    /// master starting: the last run may have had more slots).
    pub fn kill_every_slot(&self, patience: Duration) -> Result<(), Error> {
        let mut slots = std::collections::BTreeSet::new();
        let bases = self
            .v2_base
            .iter()
            .chain(self.v1_bases.iter().map(|(_, base)| base));
        for base in bases {
            let Ok(entries) = std::fs::read_dir(base) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if let Some(slot) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("slot-"))
                    .and_then(|n| n.parse::<u32>().ok())
                {
                    slots.insert(slot);
                }
            }
        }
        for slot in slots {
            self.kill_slot(slot, patience)?;
        }
        Ok(())
    }

    /// Removes the base cgroups if no slot is left in them (a master
    /// stopping, after [`Cgroups::kill_slot`] of each slot). Never a slot's
    /// cgroup: another process may be creating one meanwhile.
    pub fn remove_bases(&self) {
        if let Some(base) = &self.v2_base {
            let _ = std::fs::remove_dir(base.join("master"));
            let _ = std::fs::remove_dir(base);
        }
        for (_, base) in &self.v1_bases {
            let _ = std::fs::remove_dir(base);
        }
    }

    /// Removes the slot's cgroups (user cgroups, launch groups, the slot's
    /// own) that hold no process; busy ones stay. Not concurrently with a
    /// spawn in the same slot (which could find its new slot or user
    /// cgroup removed under it and fail): call it from the worker's
    /// runtime thread, where spawns run.
    pub fn remove_empty(&self, slot: u32) {
        if let Some(slot_dir) = self.v2_slot(slot) {
            remove_tree(&slot_dir, false);
        }
        for (_, base) in &self.v1_bases {
            remove_tree(&base.join(format!("slot-{slot}")), false);
        }
    }
}

/// `warren-<16 hex digits>`: FNV-1a of the data directory's path (a
/// published, frozen hash: the name must not change between builds, or a
/// new master would not find what the last one left).
pub fn instance_name(data_dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let hash = data_dir
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("warren-{hash:016x}")
}

/// The cgroups a launch's stage joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The launch's own v2 group: signalled and killed as one.
    pub v2_group: Option<PathBuf>,
    /// Every `cgroup.procs` the stage writes its pid to.
    pub procs: Vec<PathBuf>,
}

/// A group name is one path component the worker chose (`task-<uuid>`).
fn check_group_name(group: &str) -> Result<(), Error> {
    let fine = !group.is_empty()
        && group.len() <= 128
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !group.starts_with("cgroup")
        && !Controller::ALL.iter().any(|c| group.starts_with(c.name()));
    if fine {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{group:?} is not a valid group name (letters, digits, - and _)"),
        ))
    }
}

/// Signals every process of a v2 group (once: a process forked meanwhile
/// may escape this signal, not [`kill_group`]).
pub fn signal_group(group: &Path, signal: rustix::process::Signal) -> Result<(), Error> {
    for pid in procs_of(group)? {
        match rustix::process::kill_process(pid, signal) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Kills every process of a v2 group, waits until it is empty (at most
/// `patience`) and removes it.
pub fn kill_group(group: &Path, has_kill: bool, patience: Duration) -> Result<(), Error> {
    if !group.is_dir() {
        return Ok(());
    }
    kill_tree(group, has_kill, patience)?;
    match std::fs::remove_dir(group) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

/// Whether any process is left in the v2 tree at `dir`.
pub fn populated(dir: &Path) -> Result<bool, Error> {
    let events = std::fs::read_to_string(dir.join("cgroup.events"))?;
    Ok(events.lines().any(|line| line.trim() == "populated 1"))
}

fn kill_tree(dir: &Path, has_kill: bool, patience: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + patience;
    loop {
        if has_kill {
            std::fs::write(dir.join("cgroup.kill"), "1")?;
        } else {
            kill_each_below(dir)?;
        }
        if !populated(dir)? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::TimedOut,
                format!("{} still holds processes after SIGKILL", dir.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGKILL to every process in `dir` and below, until none is left (v1
/// has no `cgroup.kill`; a process forking meanwhile is caught by the
/// next round).
fn kill_v1_tree(dir: &Path, patience: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + patience;
    loop {
        if kill_each_below(dir)? == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::TimedOut,
                format!("{} still holds processes after SIGKILL", dir.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGKILL to the processes of `dir` and every cgroup below; how many.
fn kill_each_below(dir: &Path) -> Result<usize, Error> {
    let mut killed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for pid in procs_of(&dir)? {
            if rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok() {
                killed += 1;
            }
        }
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(killed)
}

fn procs_of(dir: &Path) -> Result<Vec<rustix::process::Pid>, Error> {
    let text = match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(text) => text,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    Ok(text
        .lines()
        .filter_map(|line| line.trim().parse::<i32>().ok())
        .filter_map(rustix::process::Pid::from_raw)
        .collect())
}

/// Removes the cgroup directories below `dir` (and `dir` itself unless
/// `keep_root`), deepest first; busy ones (`EBUSY`) stay.
fn remove_tree(dir: &Path, keep_root: bool) {
    let mut order = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        order.push(dir);
    }
    for path in order.iter().rev() {
        if keep_root && path == dir {
            continue;
        }
        let _ = std::fs::remove_dir(path);
    }
}

/// Makes `dir` unless it exists; says whether it made it.
fn make_dir(dir: &Path) -> Result<bool, Error> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err),
    }
}

/// Puts a slot's users' processes, all of them together, at idle priority
/// beside the slot's siblings (`cpu.idle`, Linux 5.15; v1 and v2): a
/// process's own `SCHED_IDLE` counts among its cgroup's siblings only. In
/// v2 the siblings include warren's own cgroup when the master moved into
/// `<base>/master`; elsewhere only other slots, which changes nothing but
/// is harmless. Within the slot, users share by their `cpu` weights.
/// Best effort: a kernel without `cpu.idle` keeps the weights alone, and a
/// failure is logged, never a reason to refuse the launch.
fn idle(slot_dir: &Path) {
    match std::fs::write(slot_dir.join("cpu.idle"), "1") {
        Ok(()) => {}
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => tracing::warn!(
            cgroup = %slot_dir.display(),
            error = %err,
            "cannot set cpu.idle: users' processes compete with warren as equals"
        ),
    }
}

fn write_limit(
    dir: &Path,
    controller: Controller,
    via: Via,
    limits: &ProcessLimits,
) -> Result<(), Error> {
    // 0 (unset) is the kernel's default weight.
    let weight = match limits.cpu_weight {
        0 => 100,
        weight => weight.min(10_000),
    };
    let (file, value) = match (controller, via) {
        (Controller::Memory, Via::V2) => ("memory.max", max_or(limits.memory, "max")),
        (Controller::Memory, Via::V1) => ("memory.limit_in_bytes", max_or(limits.memory, "-1")),
        (Controller::Pids, _) => ("pids.max", max_or(limits.pids, "max")),
        (Controller::Cpu, Via::V2) => ("cpu.weight", weight.to_string()),
        (Controller::Cpu, Via::V1) => (
            "cpu.shares",
            (u64::from(weight) * 1024 / 100).max(2).to_string(),
        ),
    };
    // With swap, v1 counts memory and swap apart: both get the limit (the
    // combined one may never be below the memory one, hence before and
    // after, whichever way the limit moves).
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    let v1_memory = (controller, via) == (Controller::Memory, Via::V1);
    if v1_memory {
        let _ = std::fs::write(&memsw, &value);
    }
    std::fs::write(dir.join(file), &value).map_err(|err| {
        Error::new(
            err.kind(),
            format!("cannot write {}: {err}", dir.join(file).display()),
        )
    })?;
    if v1_memory {
        let _ = std::fs::write(&memsw, &value);
    }
    if (controller, via) == (Controller::Memory, Via::V2) && limits.memory != 0 {
        // Swap would let a memory hog outlive its limit for a long time.
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
    }
    Ok(())
}

fn max_or(value: u64, unlimited: &str) -> String {
    if value == 0 {
        unlimited.to_string()
    } else {
        value.to_string()
    }
}

/// Makes the v2 base (with `create`), enables in it the controllers its
/// parent offers, and returns those warren can use.
fn prepare_v2(base: &Path, create: bool) -> Result<Vec<Controller>, String> {
    if create {
        make_dir(base).map_err(|err| format!("cannot create {}: {err}", base.display()))?;
    }
    if !base.join("cgroup.procs").exists() {
        return Err(format!("{} is not a cgroup v2 directory", base.display()));
    }
    if !writable(base) {
        return Err(format!(
            "{} is not writable (no delegation)",
            base.display()
        ));
    }
    let offered = controllers_in(base).map_err(|err| format!("{}: {err}", base.display()))?;
    let parent = base.parent().unwrap_or(base);
    let mut usable: Vec<Controller> = Controller::ALL
        .into_iter()
        .filter(|c| offered.contains(c))
        .collect();
    let parent_offers: Vec<Controller> = controllers_in(parent).unwrap_or_default();
    if create {
        // Controllers the parent has but does not pass down to the base:
        // enabling them there needs the parent free of processes (v2's
        // no-internal-processes rule); the master moves itself (and so the
        // workers it starts later) into <base>/master for that.
        let wanted: Vec<Controller> = Controller::ALL
            .into_iter()
            .filter(|c| parent_offers.contains(c) && !usable.contains(c))
            .collect();
        if !wanted.is_empty() && enable_controllers(parent, &wanted).is_err() {
            let master = base.join("master");
            let moved = make_dir(&master).and_then(|_| {
                std::fs::write(master.join("cgroup.procs"), std::process::id().to_string())
            });
            if moved.is_ok() {
                let _ = enable_controllers(parent, &wanted);
            }
        }
        usable = Controller::ALL
            .into_iter()
            .filter(|c| controllers_in(base).unwrap_or_default().contains(c))
            .collect();
    }
    // Pass them on to the slots (the base itself holds no process: the
    // master, if it moved, is in <base>/master).
    if enable_controllers(base, &usable).is_err() {
        usable.clear();
    }
    Ok(usable)
}

fn controllers_in(dir: &Path) -> Result<Vec<Controller>, Error> {
    let text = std::fs::read_to_string(dir.join("cgroup.controllers"))?;
    Ok(Controller::ALL
        .into_iter()
        .filter(|c| text.split_whitespace().any(|word| word == c.name()))
        .collect())
}

fn enable_controllers(dir: &Path, controllers: &[Controller]) -> Result<(), Error> {
    if controllers.is_empty() {
        return Ok(());
    }
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control"))?;
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| !enabled.split_whitespace().any(|word| word == c.name()))
        .map(|c| format!("+{}", c.name()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::write(dir.join("cgroup.subtree_control"), missing.join(" "))
}

fn writable(dir: &Path) -> bool {
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_ok()
        && rustix::fs::access(dir.join("cgroup.procs"), rustix::fs::Access::WRITE_OK).is_ok()
}

/// `mount` + an absolute cgroup path from `/proc/self/cgroup`.
fn join_cgroup(mount: &Path, cgroup: &str) -> PathBuf {
    let relative = cgroup.trim_start_matches('/');
    if relative.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(relative)
    }
}

/// Where the cgroup file systems are mounted.
#[derive(Debug, Default, PartialEq, Eq)]
struct Mounts {
    v2: Option<PathBuf>,
    v1: Vec<(Controller, PathBuf)>,
}

impl Mounts {
    fn read() -> Result<Mounts, Error> {
        Ok(Mounts::parse(&std::fs::read_to_string(
            "/proc/self/mountinfo",
        )?))
    }

    /// `/proc/self/mountinfo` lines: `... mount-point ... - fstype source super-options`.
    fn parse(text: &str) -> Mounts {
        let mut mounts = Mounts::default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(dash) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            let (Some(point), Some(fstype)) = (fields.get(4), fields.get(dash + 1)) else {
                continue;
            };
            let point = PathBuf::from(unescape_mount(point));
            match *fstype {
                "cgroup2" if mounts.v2.is_none() => mounts.v2 = Some(point),
                "cgroup" => {
                    let options = fields.get(dash + 3).copied().unwrap_or("");
                    for controller in Controller::ALL {
                        if options.split(',').any(|o| o == controller.name())
                            && !mounts.v1.iter().any(|(c, _)| *c == controller)
                        {
                            mounts.v1.push((controller, point.clone()));
                        }
                    }
                }
                _ => {}
            }
        }
        mounts
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        if bytes[i] == b'\\' {
            if let Some(value) = octal {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's cgroups, from `/proc/self/cgroup`.
#[derive(Debug, Default, PartialEq, Eq)]
struct OwnCgroups {
    v2: Option<String>,
    v1: Vec<(Controller, String)>,
}

impl OwnCgroups {
    fn read() -> Result<OwnCgroups, Error> {
        Ok(OwnCgroups::parse(&std::fs::read_to_string(
            "/proc/self/cgroup",
        )?))
    }

    /// Lines `hierarchy-id:controllers:path`; v2 is `0::path`.
    fn parse(text: &str) -> OwnCgroups {
        let mut own = OwnCgroups::default();
        for line in text.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                own.v2 = Some(path.to_string());
                continue;
            }
            for controller in Controller::ALL {
                if controllers.split(',').any(|c| c == controller.name()) {
                    own.v1.push((controller, path.to_string()));
                }
            }
        }
        own
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_and_own_cgroups_parse() {
        let mounts = Mounts::parse(
            "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n\
             31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
             34 30 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
             38 30 0:34 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
             40 30 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
             41 30 0:37 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n",
        );
        assert_eq!(mounts.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            mounts.v1,
            vec![
                (Controller::Cpu, PathBuf::from("/sys/fs/cgroup/cpu")),
                (Controller::Memory, PathBuf::from("/sys/fs/cgroup/memory")),
                (Controller::Pids, PathBuf::from("/sys/fs/cgroup/pids")),
            ]
        );
        assert_eq!(unescape_mount("/mnt/with\\040space"), "/mnt/with space");
        let own = OwnCgroups::parse("8:pids:/\n4:memory:/process_api/3f\n1:cpu,cpuacct:/a\n0::/\n");
        assert_eq!(own.v2.as_deref(), Some("/"));
        assert_eq!(
            own.v1,
            vec![
                (Controller::Pids, "/".to_string()),
                (Controller::Memory, "/process_api/3f".to_string()),
                (Controller::Cpu, "/a".to_string()),
            ]
        );
        assert_eq!(join_cgroup(Path::new("/m"), "/"), PathBuf::from("/m"));
        assert_eq!(
            join_cgroup(Path::new("/m"), "/a/b"),
            PathBuf::from("/m/a/b")
        );
    }

    #[test]
    fn instance_names_are_frozen() {
        // FNV-1a 64 of the empty string and of "a" (published vectors).
        assert_eq!(instance_name(Path::new("")), "warren-cbf29ce484222325");
        assert_eq!(instance_name(Path::new("a")), "warren-af63dc4c8601ec8c");
        assert_ne!(
            instance_name(Path::new("/var/lib/warren")),
            instance_name(Path::new("/srv/warren"))
        );
    }

    #[test]
    fn cgroup_root_and_group_names_parse() {
        assert_eq!("auto".parse(), Ok(CgroupRoot::Auto));
        assert_eq!("off".parse(), Ok(CgroupRoot::Off));
        assert_eq!(
            "/sys/fs/cgroup/w".parse(),
            Ok(CgroupRoot::Path(PathBuf::from("/sys/fs/cgroup/w")))
        );
        assert!("relative".parse::<CgroupRoot>().is_err());
        assert!(check_group_name("task-0f3a_1").is_ok());
        for bad in ["", "..", "a/b", "cgroup.procs", "memory.max", "pids-x"] {
            assert!(check_group_name(bad).is_err(), "{bad:?}");
        }
    }
}
