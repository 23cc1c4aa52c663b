//! systemd's service notifications (`sd_notify(3)`), for `Type=notify`
//! (`deploy/warren.service`): `READY=1` once `/readyz` would answer ready
//! (every worker slot up, the database answering and able to store),
//! `STOPPING=1` as soon as the drain on SIGTERM/SIGINT starts, and `STATUS=`
//! lines `systemctl status` shows.
//!
//! The protocol is one datagram per message to the Unix socket named by
//! `$NOTIFY_SOCKET`: an absolute path, or `@name` for an abstract socket.
//! Without that variable (not started by systemd) nothing is sent and
//! nothing is polled. Only the master notifies: workers are started without
//! the variable (`pool::supervisor`), and users' processes get a cleared
//! environment from the sandbox.

use crate::http::AppState;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The variable systemd sets for `Type=notify` services.
pub const SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// How often readiness is looked at until it is reached.
const READY_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("{SOCKET_ENV}={0:?} is neither an absolute path nor an abstract @name")]
    BadAddress(String),
    #[error("{SOCKET_ENV}: {0}")]
    Io(#[from] std::io::Error),
}

/// Where notifications go; does nothing when there is nowhere.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// The socket `$NOTIFY_SOCKET` names; a value that cannot be used is
    /// logged and ignored (warren still runs, systemd then times the start
    /// out, which says more than a refusal to start would).
    pub fn from_env() -> Notifier {
        match std::env::var_os(SOCKET_ENV) {
            None => Notifier { target: None },
            Some(value) => Notifier::for_address(&value).unwrap_or_else(|err| {
                warn!(error = %err, "cannot send systemd notifications");
                Notifier { target: None }
            }),
        }
    }

    /// A notifier sending to `address` (`/path` or `@abstract`).
    pub fn for_address(address: &OsStr) -> Result<Notifier, NotifyError> {
        let bytes = address.as_bytes();
        let target = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(address)?,
            Some(b'@') => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(&bytes[1..])?
            }
            _ => {
                return Err(NotifyError::BadAddress(
                    address.to_string_lossy().into_owned(),
                ))
            }
        };
        let socket = UnixDatagram::unbound()?;
        // A receiver that stopped reading must never stall the master.
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            target: Some((socket, target)),
        })
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `message` (`KEY=value` lines); a failure is logged, never
    /// fatal.
    pub fn send(&self, message: &str) {
        let Some((socket, target)) = &self.target else {
            return;
        };
        match socket.send_to_addr(message.as_bytes(), target) {
            Ok(_) => debug!(message, "told systemd"),
            Err(err) => warn!(error = %err, message, "cannot notify systemd"),
        }
    }
}

/// Tells systemd `READY=1` once warren is ready, then `STOPPING=1` when
/// `stop` is cancelled (the drain begins). Returns at once, polling
/// nothing, when there is no `$NOTIFY_SOCKET`.
pub async fn run(state: AppState, stop: CancellationToken) {
    let notifier = Notifier::from_env();
    if !notifier.enabled() {
        return;
    }
    // The readiness probe's queries are the server's own work, not
    // requests' (`warren_db_queries_total{origin}`).
    let store = state
        .auth
        .store()
        .counting(state.metrics.auth().background_queries());
    notifier.send("STATUS=starting: waiting for the workers and the database");
    let ready = async {
        let mut said = String::new();
        loop {
            let readiness = crate::http::readiness(&state, &store).await;
            if readiness.ready {
                return;
            }
            // Say what is awaited, once per change (not every poll).
            let why = readiness.reasons().join(", ");
            if why != said {
                notifier.send(&format!("STATUS=starting: waiting for {why}"));
                said = why;
            }
            tokio::time::sleep(READY_POLL).await;
        }
    };
    tokio::select! {
        () = ready => {
            notifier.send("READY=1\nSTATUS=ready");
            stop.cancelled().await;
        }
        () = stop.cancelled() => {}
    }
    notifier.send(
        "STOPPING=1\nSTATUS=draining: finishing in-flight requests, then stopping the workers",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buffer = [0u8; 512];
        let n = socket.recv(&mut buffer).expect("a datagram");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier::for_address(path.as_os_str()).expect("notifier");
        notifier.send("READY=1");
        assert_eq!(receive(&receiver), "READY=1");
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("warren-notify-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("address");
        let receiver = UnixDatagram::bind_addr(&address).expect("bind");
        let notifier = Notifier::for_address(OsStr::new(&format!("@{name}"))).expect("notifier");
        notifier.send("STOPPING=1");
        assert_eq!(receive(&receiver), "STOPPING=1");
    }

    #[test]
    fn other_addresses_are_refused_and_sending_nowhere_is_harmless() {
        for bad in ["", "relative/path", "vsock:2:1234"] {
            assert!(
                matches!(
                    Notifier::for_address(OsStr::new(bad)),
                    Err(NotifyError::BadAddress(_))
                ),
                "{bad:?}"
            );
        }
        let nowhere = Notifier { target: None };
        assert!(!nowhere.enabled());
        nowhere.send("READY=1");
        // A socket nobody listens on: logged, not fatal.
        let dir = tempfile::tempdir().expect("tempdir");
        let gone = Notifier::for_address(dir.path().join("none").as_os_str()).expect("notifier");
        gone.send("READY=1");
    }
}
