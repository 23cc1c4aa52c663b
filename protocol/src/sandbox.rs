//! What a worker hands to its `warren sandbox-exec` stage: everything the
//! stage needs to confine itself and exec the user's command, decided by
//! the worker (the stage decides nothing and reads no configuration).
//!
//! Paths and strings are raw bytes: a user's file names need not be UTF-8.
//! The spec travels encoded with [`crate::codec::encode_message`] (hex in one
//! environment variable), so it stays within one frame's size.

use crate::message::ProcessLimits;
use bincode::{Decode, Encode};

/// The environment variable carrying the hex-encoded [`ExecSpec`].
pub const SPEC_ENV: &str = "WARREN_SANDBOX_SPEC";

/// The argument that makes the `warren` binary run the stage.
pub const STAGE_ARG: &str = "sandbox-exec";

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ExecSpec {
    /// The command; `argv[0]` is looked up in the clean `PATH` of `env`.
    pub argv: Vec<Vec<u8>>,
    /// The complete environment of the command (nothing else is inherited).
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// Absolute path of the user's workspace.
    pub workspace: Vec<u8>,
    /// The working directory, relative to the workspace (empty: the
    /// workspace itself); resolved beneath it by the kernel.
    pub cwd: Vec<u8>,
    /// Switch to this uid (and gid: the same number), dropping every
    /// supplementary group; `None`: keep warren's own credentials.
    pub uid: Option<u32>,
    pub limits: ProcessLimits,
    /// `cgroup.procs` files the stage writes its pid to (v2 group first,
    /// then the v1 hierarchies' per-user groups).
    pub cgroup_procs: Vec<Vec<u8>>,
    /// A new network namespace with only loopback.
    pub network_none: bool,
    /// `None`: no Landlock (the policy allowed running without it).
    pub landlock: Option<LandlockSpec>,
    /// The worker's pid: the stage exits if its parent is another process
    /// by the time its death signal is armed.
    pub parent_pid: u32,
    /// The write end of the status pipe (close-on-exec in the stage).
    pub status_fd: i32,
    /// Standard input is a terminal (a PTY's other end): the stage makes it
    /// its new session's controlling terminal.
    pub controlling_tty: bool,
}

/// The Landlock rules: anything not named here is denied.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LandlockSpec {
    /// Everything (read, write, execute, make, remove, refer, truncate,
    /// ioctl on devices) beneath these: the workspace and private tmp.
    pub read_write: Vec<Vec<u8>>,
    /// Read and execute beneath these: program and library directories.
    pub read_execute: Vec<Vec<u8>>,
    /// Read only beneath these (files or directories).
    pub read_only: Vec<Vec<u8>>,
    /// Read and write (no execute, no creation) of these files, such as
    /// `/dev/null` and `/dev/tty`.
    pub devices: Vec<Vec<u8>>,
    /// Deny TCP bind and connect (ABI 4 and later).
    pub deny_tcp: bool,
    /// Scope signals and abstract Unix sockets to the sandbox (ABI 6).
    pub scope: bool,
}

/// The first byte of a failure report on the status pipe; the rest of the
/// report is a UTF-8 message. No byte at all means the exec succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StageFailure {
    /// The sandbox could not be set up (a bug or a changed system).
    Setup = 1,
    /// The command could not be run: not found, not executable.
    Command = 2,
    /// The working directory does not exist, is not a directory, or lies
    /// outside the workspace.
    Cwd = 3,
}

impl StageFailure {
    pub fn from_byte(byte: u8) -> Option<StageFailure> {
        match byte {
            1 => Some(StageFailure::Setup),
            2 => Some(StageFailure::Command),
            3 => Some(StageFailure::Cwd),
            _ => None,
        }
    }
}

/// The spec as the text of [`SPEC_ENV`].
pub fn encode_spec(spec: &ExecSpec) -> Result<String, crate::FrameError> {
    let bytes = crate::codec::encode_message(spec)?;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    Ok(text)
}

/// The spec from the text of [`SPEC_ENV`].
pub fn decode_spec(text: &[u8]) -> Result<ExecSpec, crate::FrameError> {
    if !text.len().is_multiple_of(2) {
        return Err(crate::FrameError::Decode("odd-length hex".into()));
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(crate::FrameError::Decode("not lower-case hex".into())),
    };
    let bytes = text
        .chunks_exact(2)
        .map(|pair| Ok(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect::<Result<Vec<u8>, crate::FrameError>>()?;
    crate::codec::decode_message(&bytes)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_survives_the_environment() {
        let spec = ExecSpec {
            argv: vec![b"sh".to_vec(), b"-c".to_vec(), vec![0xff, b'x']],
            env: vec![(b"HOME".to_vec(), b"/w".to_vec())],
            workspace: b"/data/users/u/workspace".to_vec(),
            cwd: b"src".to_vec(),
            uid: Some(200_001),
            limits: ProcessLimits {
                address_space: 1,
                cpu_seconds: 2,
                processes: 3,
                file_size: 4,
                open_files: 5,
                memory: 6,
                pids: 7,
                cpu_weight: 8,
                tasks: 9,
            },
            cgroup_procs: vec![b"/sys/fs/cgroup/x/cgroup.procs".to_vec()],
            network_none: true,
            landlock: Some(LandlockSpec {
                read_write: vec![b"/w".to_vec()],
                read_execute: vec![b"/usr".to_vec()],
                read_only: vec![b"/etc/passwd".to_vec()],
                devices: vec![b"/dev/null".to_vec()],
                deny_tcp: true,
                scope: true,
            }),
            parent_pid: 42,
            status_fd: 7,
            controlling_tty: true,
        };
        let text = encode_spec(&spec).expect("encode");
        assert_eq!(decode_spec(text.as_bytes()).expect("decode"), spec);
        assert!(decode_spec(b"0").is_err());
        assert!(decode_spec(b"zz").is_err());
        assert!(decode_spec(&text.as_bytes()[..text.len() - 2]).is_err());
    }
}
