//! A pseudo-terminal for a user's process: the worker keeps the controller
//! end; the process gets the terminal end as its standard streams and its
//! controlling terminal ([`super::Launch::terminal`]). What terminals
//! (and anything else interactive) run on.

use rustix::fd::OwnedFd;
use rustix::fs::{Gid, Mode, Uid};
use rustix::pty::OpenptFlags;
use std::process::Stdio;
use tokio::io::unix::AsyncFd;

/// Both ends of a new PTY.
#[derive(Debug)]
pub struct Pty {
    /// Read: what the program writes; write: what it reads (its keyboard).
    pub controller: OwnedFd,
    /// The program's end (`/dev/pts/N`).
    pub terminal: OwnedFd,
}

impl Pty {
    /// A PTY of `cols` × `rows`. With `uid`, the terminal end belongs to
    /// that uid alone (mode 0600), as a login's terminal does: the user's
    /// programs may reopen it (`/dev/tty`), no other user's may.
    pub fn open(cols: u16, rows: u16, uid: Option<u32>) -> std::io::Result<Pty> {
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        let controller = rustix::pty::openpt(flags)?;
        rustix::pty::grantpt(&controller)?;
        rustix::pty::unlockpt(&controller)?;
        // By descriptor, not by the name `ptsname` gives: no path to race.
        let terminal = rustix::pty::ioctl_tiocgptpeer(&controller, flags)?;
        if let Some(uid) = uid {
            rustix::fs::fchown(
                &terminal,
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(uid)),
            )?;
            rustix::fs::fchmod(&terminal, Mode::RUSR | Mode::WUSR)?;
        }
        let pty = Pty {
            controller,
            terminal,
        };
        pty.resize(cols, rows)?;
        Ok(pty)
    }

    /// Sets the terminal's size (the kernel signals `SIGWINCH` to its
    /// foreground process group).
    pub fn resize(&self, cols: u16, rows: u16) -> std::io::Result<()> {
        set_size(&self.controller, cols, rows)
    }

    /// The controller end, non-blocking and registered with the runtime
    /// (call within it), for the worker to read and write; the terminal
    /// end is closed here (only the program keeps it, so reading fails
    /// once it and whatever it left behind are gone).
    pub fn into_async_controller(self) -> std::io::Result<AsyncFd<OwnedFd>> {
        let Pty {
            controller,
            terminal,
        } = self;
        drop(terminal);
        rustix::fs::fcntl_setfl(&controller, rustix::fs::OFlags::NONBLOCK)?;
        // SAFETY: an OwnedFd's descriptor is open, and stays open and the
        // same file until its owner, the AsyncFd, drops it.
        unsafe { AsyncFd::register(controller) }.map_err(|err| err.into_parts().1)
    }

    /// The terminal end as stdin, stdout and stderr of a launch.
    pub fn stdio(&self) -> std::io::Result<(Stdio, Stdio, Stdio)> {
        Ok((
            Stdio::from(self.terminal.try_clone()?),
            Stdio::from(self.terminal.try_clone()?),
            Stdio::from(self.terminal.try_clone()?),
        ))
    }
}

/// Sets the size of the terminal `fd` is an end of (the kernel signals
/// `SIGWINCH` to its foreground process group).
pub fn set_size(fd: impl rustix::fd::AsFd, cols: u16, rows: u16) -> std::io::Result<()> {
    let size = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    Ok(rustix::termios::tcsetwinsize(fd, size)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pty_has_the_size_asked_and_carries_bytes_both_ways() {
        let pty = Pty::open(100, 40, None).expect("a pty");
        let size = rustix::termios::tcgetwinsize(&pty.terminal).expect("size");
        assert_eq!((size.ws_col, size.ws_row), (100, 40));
        pty.resize(80, 24).expect("resize");
        let size = rustix::termios::tcgetwinsize(&pty.terminal).expect("size");
        assert_eq!((size.ws_col, size.ws_row), (80, 24));
        // What the program writes, the controller reads (with the line
        // discipline's CR LF).
        rustix::io::write(&pty.terminal, b"hi\n").expect("write");
        let mut buf = [0u8; 16];
        let n = rustix::io::read(&pty.controller, &mut buf).expect("read");
        assert_eq!(&buf[..n], b"hi\r\n");
    }
}
