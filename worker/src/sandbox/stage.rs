//! `warren sandbox-exec`: the fresh, single-threaded process that confines
//! itself and then becomes the user's command.
//!
//! The worker is multi-threaded (a runtime and its blocking pool), where
//! anything between `fork` and `exec` must be async-signal-safe: no
//! allocation, no locks. So the worker only spawns its own executable with
//! the [`ExecSpec`] in one environment variable, and this stage, a new
//! single-threaded process, does the set-up with ordinary code, in the
//! order the kernel requires:
//!
//! 1. read the spec and close every descriptor but 0-2 and the status pipe;
//! 2. `setsid` (its own session and process group);
//! 3. join the cgroups, set the rlimits, make the network namespace and
//!    build the Landlock ruleset, all while still privileged;
//! 4. drop supplementary groups, gid, uid (all three of each);
//! 5. arm `PR_SET_PDEATHSIG` (a uid change clears it) and check that the
//!    worker is still the parent;
//! 6. `no_new_privs` and the Landlock ruleset;
//! 7. signal dispositions and mask to defaults, `chdir` beneath the
//!    workspace (resolved by the kernel: `RESOLVE_BENEATH`), `execvp` with
//!    the clean environment.
//!
//! Any failure is written to the status pipe (close-on-exec, so a
//! successful exec closes it with nothing written) and the stage exits 127.

use std::convert::Infallible;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::process::{Gid, Uid};
use warren_protocol::sandbox::{decode_spec, ExecSpec, StageFailure, SPEC_ENV};

/// The exit status of a stage that could not exec (like a shell's
/// "command not found").
const FAILED: i32 = 127;

type Failure = (StageFailure, String);

/// The nice value of users' processes, and of the stage from its fork
/// (the spawner thread runs at it).
pub const USER_NICE: i32 = 10;

/// Lowers the calling thread to nice 10 (Linux applies it to the thread
/// only; what it forks inherits it). Failing is harmless.
pub fn lower_priority() {
    let _ = rustix::process::setpriority_process(None, USER_NICE);
}

/// Puts the stage at the `SCHED_IDLE` policy, last thing before `execve`:
/// the command then yields the processor to warren's own threads (and the
/// system's) at once instead of finishing its time slice first
/// (`warren-bench tasks`, (b): many short tasks must not slow the API for
/// others); among themselves users' processes share by their cgroups'
/// weights. Not earlier: the stage's set-up takes kernel locks every fork
/// on the machine needs (joining cgroups), and an idle holder could keep
/// them while busy threads starve it. The command cannot leave the policy:
/// it has no privileges and `RLIMIT_NICE` is 0 ([`set_rlimits`]).
/// Failing is harmless (nice 10 stays).
fn go_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialised sched_param that outlives
    // the call; pid 0 is the calling thread; the call touches no memory of
    // ours beyond reading `param`.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
}

/// Runs the stage; never returns. Call it first thing in `main` when
/// `argv[1]` is `sandbox-exec`, before any thread, runtime or logger.
pub fn stage_main() -> ! {
    // Users' processes yield the processor to warren's own threads. The
    // spawner thread that forked this stage is at nice 10 already (the
    // stage's set-up runs so from its first instruction); again for a
    // stage started otherwise.
    lower_priority();
    let Some(text) = std::env::var_os(SPEC_ENV) else {
        eprintln!("warren sandbox-exec: no {SPEC_ENV}: this stage is started by a worker only");
        std::process::exit(FAILED);
    };
    // Single-threaded: nothing reads the environment concurrently.
    std::env::remove_var(SPEC_ENV);
    let spec = match decode_spec(text.as_bytes()) {
        Ok(spec) => spec,
        Err(err) => {
            eprintln!("warren sandbox-exec: bad {SPEC_ENV}: {err}");
            std::process::exit(FAILED);
        }
    };
    // SAFETY: the worker passed the status pipe's write end as this number
    // and nothing else in this fresh process owns it.
    let status = unsafe { OwnedFd::from_raw_fd(spec.status_fd) };
    let result = confine_and_exec(&spec, &status);
    let (kind, message) = match result {
        Ok(never) => match never {},
        Err(failure) => failure,
    };
    let mut report = Vec::with_capacity(message.len() + 1);
    report.push(kind as u8);
    report.extend_from_slice(message.as_bytes());
    let _ = std::fs::File::from(status).write_all(&report);
    std::process::exit(FAILED);
}

fn setup(what: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |err| (StageFailure::Setup, format!("sandbox: {what}: {err}"))
}

fn confine_and_exec(spec: &ExecSpec, status: &OwnedFd) -> Result<Infallible, Failure> {
    rustix::io::ioctl_fioclex(status).map_err(|e| setup("close-on-exec status pipe")(e.into()))?;
    close_other_descriptors(spec.status_fd);
    rustix::process::setsid().map_err(|e| setup("setsid")(e.into()))?;
    if spec.controlling_tty {
        // The new session's controlling terminal: job control, ^C, and a
        // SIGHUP to the session when the terminal is hung up.
        rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())
            .map_err(|e| setup("TIOCSCTTY")(e.into()))?;
    }
    let pid = std::process::id().to_string();
    for procs in &spec.cgroup_procs {
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(procs));
        std::fs::write(path, &pid).map_err(|err| {
            (
                StageFailure::Setup,
                format!("sandbox: cannot join the cgroup {}: {err}", path.display()),
            )
        })?;
    }
    set_rlimits(spec)?;
    if spec.network_none {
        isolate_network()?;
    }
    if spec.uid.is_some() {
        // Before the Landlock rules, which name the new /proc.
        hide_other_processes()?;
    }
    let ruleset = match &spec.landlock {
        Some(rules) => Some(
            super::landlock::build(rules)
                .map_err(|err| (StageFailure::Setup, format!("sandbox: Landlock: {err}")))?,
        ),
        None => None,
    };
    if let Some(uid) = spec.uid {
        rustix::thread::set_thread_groups(&[]).map_err(|e| setup("setgroups")(e.into()))?;
        let gid = Gid::from_raw(uid);
        rustix::thread::set_thread_res_gid(gid, gid, gid)
            .map_err(|e| setup("setresgid")(e.into()))?;
        let uid = Uid::from_raw(uid);
        rustix::thread::set_thread_res_uid(uid, uid, uid)
            .map_err(|e| setup("setresuid")(e.into()))?;
    }
    // After the uid change, which clears it. Tied to the worker's thread
    // that forked this process: the worker's one runtime thread.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| setup("PR_SET_PDEATHSIG")(e.into()))?;
    let parent = rustix::process::getppid().map_or(0, |pid| pid.as_raw_nonzero().get());
    if u32::try_from(parent).ok() != Some(spec.parent_pid) {
        // The worker died before the death signal was armed.
        std::process::exit(FAILED);
    }
    rustix::thread::set_no_new_privs(true).map_err(|e| setup("no_new_privs")(e.into()))?;
    if let Some(ruleset) = ruleset {
        let status = ruleset
            .restrict_self()
            .map_err(|err| (StageFailure::Setup, format!("sandbox: Landlock: {err}")))?;
        // The worker asked for Landlock because the probe found it: a
        // kernel that now enforces nothing must not run the command.
        if status.ruleset == ::landlock::RulesetStatus::NotEnforced {
            return Err((
                StageFailure::Setup,
                "sandbox: Landlock is not enforced by this kernel".into(),
            ));
        }
    }
    reset_signals();
    enter_cwd(spec)?;
    go_idle();
    exec(spec)
}

/// Closes every descriptor above 2 but `keep` (what the worker had open
/// without close-on-exec, or a library left behind, never reaches the
/// command).
fn close_other_descriptors(keep: i32) {
    let keep = u32::try_from(keep).unwrap_or(u32::MAX);
    let ranges = [
        (3, keep.saturating_sub(1)),
        (keep.saturating_add(1), u32::MAX),
    ];
    for (first, last) in ranges {
        if first <= last {
            // SAFETY: close_range only closes descriptors; this process
            // owns no Rust object for any of them (the spec's status pipe,
            // the only one in use, is outside the ranges).
            unsafe {
                libc::syscall(libc::SYS_close_range, first, last, 0);
            }
        }
    }
}

fn set_rlimits(spec: &ExecSpec) -> Result<(), Failure> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let limits = &spec.limits;
    let mut wanted = vec![
        (Resource::As, limits.address_space, "RLIMIT_AS"),
        (Resource::Cpu, limits.cpu_seconds, "RLIMIT_CPU"),
        (Resource::Fsize, limits.file_size, "RLIMIT_FSIZE"),
        (Resource::Nofile, limits.open_files, "RLIMIT_NOFILE"),
    ];
    // Counted per uid: under warren's own uid it would count warren's
    // threads too (and root is exempt anyway).
    if spec.uid.is_some() {
        wanted.push((Resource::Nproc, limits.processes, "RLIMIT_NPROC"));
    }
    // No way back to a better priority or policy than the stage leaves
    // (whatever warren itself was given, e.g. systemd's LimitNICE=).
    setrlimit(
        Resource::Nice,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|err| {
        (
            StageFailure::Setup,
            format!("sandbox: cannot set RLIMIT_NICE to 0: {err}"),
        )
    })?;
    for (resource, value, name) in wanted {
        if value == 0 {
            continue;
        }
        // Never above warren's own hard limit: lower is all a limit is for,
        // and without privileges raising it would fail.
        let value = match rustix::process::getrlimit(resource).maximum {
            Some(hard) => value.min(hard),
            None => value,
        };
        let limit = Rlimit {
            current: Some(value),
            maximum: Some(value),
        };
        setrlimit(resource, limit).map_err(|err| {
            (
                StageFailure::Setup,
                format!("sandbox: cannot set {name} to {value}: {err}"),
            )
        })?;
    }
    Ok(())
}

/// A mount namespace of its own whose `/proc` shows only the processes of
/// the command's own uid (`hidepid=invisible`): another user's commands,
/// their arguments (an app's port among them) and their very existence are
/// out of sight. Nothing else changes: every other mount is the host's, no
/// longer propagated either way.
fn hide_other_processes() -> Result<(), Failure> {
    use rustix::mount::{MountFlags, MountPropagationFlags};
    // SAFETY: NEWNS does not unshare the descriptor table (the reason the
    // call is unsafe) and this process has a single thread.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .map_err(|e| setup("unshare(CLONE_NEWNS)")(e.into()))?;
    // Private first: a mount made here must not reach the host's namespace.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(|e| setup("making the mounts private")(e.into()))?;
    rustix::mount::mount(
        "proc",
        "/proc",
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        c"hidepid=invisible",
    )
    .map_err(|e| setup("mounting /proc with hidepid")(e.into()))?;
    Ok(())
}

/// A network namespace of its own, with loopback up.
fn isolate_network() -> Result<(), Failure> {
    // SAFETY: NEWNET does not unshare the descriptor table (the reason the
    // call is unsafe) and this process has a single thread.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .map_err(|e| setup("unshare(CLONE_NEWNET)")(e.into()))?;
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )
    .map_err(|e| setup("socket")(e.into()))?;
    // SAFETY: ifreq is plain old data; all zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads one ifreq, which lives across the call;
    // the socket is open.
    let done = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SIOCSIFFLAGS,
            &request,
        )
    };
    if done != 0 {
        return Err(setup("bringing up loopback")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The kernel's `struct sigaction` (x86-64 and arm64 share it): glibc's
/// `signal` refuses the real-time signals it reserves (32, 33), whose
/// ignored disposition would otherwise survive the exec.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// Default dispositions and an empty mask: whatever the worker (or its
/// own parent) ignored or blocked must not be inherited.
fn reset_signals() {
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction reads one kernel sigaction, alive across
        // the call, of the size given; SIG_DFL installs no handler.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            );
        }
    }
    let empty: u64 = 0;
    // SAFETY: as above, with an 8-byte signal set.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            std::mem::size_of::<u64>(),
        );
    }
}

/// `chdir` to the workspace, then to `cwd` resolved beneath it by the
/// kernel, as the user (after the uid change and Landlock).
fn enter_cwd(spec: &ExecSpec) -> Result<(), Failure> {
    let workspace = std::ffi::OsStr::from_bytes(&spec.workspace);
    let root = rustix::fs::open(
        workspace,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|err| {
        (
            StageFailure::Setup,
            format!("sandbox: cannot open the workspace: {err}"),
        )
    })?;
    let cwd = if spec.cwd.is_empty() {
        root
    } else {
        let relative = std::ffi::OsStr::from_bytes(&spec.cwd);
        rustix::fs::openat2(
            root.as_fd(),
            relative,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|err| {
            let why = match err {
                rustix::io::Errno::XDEV => "it leads outside the workspace".to_string(),
                rustix::io::Errno::NOTDIR => "not a directory".to_string(),
                other => other.to_string(),
            };
            (
                StageFailure::Cwd,
                format!(
                    "cannot use {:?} as the working directory: {why}",
                    String::from_utf8_lossy(&spec.cwd)
                ),
            )
        })?
    };
    rustix::process::fchdir(&cwd).map_err(|err| {
        (
            StageFailure::Cwd,
            format!("cannot enter the working directory: {err}"),
        )
    })
}

fn exec(spec: &ExecSpec) -> Result<Infallible, Failure> {
    let Some((program, args)) = spec.argv.split_first() else {
        return Err((StageFailure::Command, "the command is empty".into()));
    };
    let program = OsString::from_vec(program.clone());
    let mut command = std::process::Command::new(&program);
    command
        .args(args.iter().map(|arg| OsString::from_vec(arg.clone())))
        .env_clear()
        .envs(spec.env.iter().map(|(key, value)| {
            (
                OsString::from_vec(key.clone()),
                OsString::from_vec(value.clone()),
            )
        }));
    let err = command.exec();
    // "No such file or directory", without std's " (os error 2)".
    let text = err.to_string();
    let reason = text
        .rfind(" (os error ")
        .map_or(text.as_str(), |end| &text[..end]);
    Err((
        StageFailure::Command,
        format!("could not run `{}`: {reason}", program.to_string_lossy()),
    ))
}
