//! The Landlock ruleset of a user's process: everything the newest ABI
//! this crate knows can handle is handled (so denied unless a rule grants
//! it), in best-effort compatibility (rights the running kernel lacks are
//! dropped; [`abi`] records which ABI that is).

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetError, Scope, ABI,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use warren_protocol::sandbox::LandlockSpec;

/// The newest ABI this build knows; what the kernel lacks of it is dropped.
const NEWEST: ABI = ABI::V7;

/// The running kernel's Landlock ABI (`None`: no Landlock).
pub fn abi() -> Option<u8> {
    // SAFETY: landlock_create_ruleset with a null attribute, size 0 and
    // the VERSION flag only returns the ABI number; it reads no memory.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    u8::try_from(version).ok().filter(|v| *v > 0)
}

/// Builds (but does not yet enforce) the ruleset; opening the paths
/// happens here, while the stage still has warren's privileges.
pub fn build(spec: &LandlockSpec) -> Result<RulesetCreated, RulesetError> {
    let all = AccessFs::from_all(NEWEST);
    let read_execute = AccessFs::from_read(NEWEST);
    let read_only = AccessFs::ReadFile | AccessFs::ReadDir;
    let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)?;
    if spec.deny_tcp {
        ruleset = ruleset.handle_access(AccessNet::from_all(NEWEST))?;
    }
    if spec.scope {
        ruleset = ruleset.scope(Scope::from_all(NEWEST))?;
    }
    let mut created = ruleset.create()?;
    for (paths, access) in [
        (&spec.read_write, all),
        (&spec.read_execute, read_execute),
        (&spec.read_only, read_only),
        (&spec.devices, device),
    ] {
        for path in paths {
            created = add(created, path, access)?;
        }
    }
    Ok(created)
}

/// A rule for `path` (skipped when it does not exist: the lists name
/// what a typical system has). On a file, only the rights that apply to
/// files are granted.
fn add(
    created: RulesetCreated,
    path: &[u8],
    access: BitFlags<AccessFs>,
) -> Result<RulesetCreated, RulesetError> {
    let path = OsStr::from_bytes(path);
    let Ok(fd) = PathFd::new(path) else {
        return Ok(created);
    };
    // The very inode the rule is for (no second lookup by path).
    let is_dir = rustix::fs::fstat(std::os::fd::AsFd::as_fd(&fd))
        .is_ok_and(|stat| rustix::fs::FileType::from_raw_mode(stat.st_mode).is_dir());
    let access = if is_dir {
        access
    } else {
        access & AccessFs::from_file(NEWEST)
    };
    created.add_rule(PathBeneath::new(fd, access))
}
