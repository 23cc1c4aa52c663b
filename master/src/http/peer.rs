//! Who is at the other end of a loopback connection.
//!
//! "A client on this host" used to mean the operator. Since users' tasks
//! run on this host too (with `--sandbox-network host` they reach
//! 127.0.0.1), a loopback peer is the operator only if its socket does not
//! belong to a user's uid. The kernel says whose a socket is: the `uid`
//! column of `/proc/net/tcp` and `/proc/net/tcp6` (of this network
//! namespace: tasks in a namespace of their own cannot reach this one's
//! loopback at all).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

/// Whose socket the other end of a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The peer's address is not one of this host's: a socket elsewhere.
    Remote,
    /// A socket of this host, owned by this uid.
    Uid(u32),
    /// The peer's address is this host's, but the kernel's table does not
    /// name exactly one owner (the connection is already closing, or the
    /// table could not be read): believe nothing of it.
    Unknown,
}

/// The owner of a connection's peer socket, looked up once per connection
/// (the first time a request on it needs to know) and kept: each request
/// of the connection has the same peer.
#[derive(Debug, Clone)]
pub struct PeerOwner {
    /// This server's end of the connection.
    server: SocketAddr,
    owner: Arc<OnceLock<Owner>>,
}

impl PeerOwner {
    pub fn new(server: SocketAddr) -> PeerOwner {
        PeerOwner {
            server,
            owner: Arc::default(),
        }
    }

    pub fn of(&self, peer: SocketAddr) -> Owner {
        *self
            .owner
            .get_or_init(|| connection_owner(peer, self.server))
    }
}

/// Whose socket the client's end of the connection `peer` → `server` is:
/// the row of the kernel's table with exactly that four-tuple, in state
/// ESTABLISHED. Matching the client's address alone is not enough: a user
/// can leave a TIME_WAIT row (listed as root's) with the same local
/// address, bound with `SO_REUSEADDR`, beside their own connection.
pub fn connection_owner(peer: SocketAddr, server: SocketAddr) -> Owner {
    let canonical =
        |address: SocketAddr| SocketAddr::new(address.ip().to_canonical(), address.port());
    let (peer, server) = (canonical(peer), canonical(server));
    if !is_local(peer.ip()) {
        return Owner::Remote;
    }
    let mut owners = Vec::new();
    let mut read =
        |table: &str, local: SocketAddr, remote: SocketAddr| match std::fs::read_to_string(table) {
            Ok(text) => owners.extend(owners_in(&text, local, remote)),
            Err(_) => owners.push(None),
        };
    match (peer.ip(), server.ip()) {
        (IpAddr::V4(peer_ip), IpAddr::V4(server_ip)) => {
            read("/proc/net/tcp", peer, server);
            // Through a dual-stack listener the same connection is listed
            // in tcp6, as `::ffff:a.b.c.d`.
            read(
                "/proc/net/tcp6",
                SocketAddr::new(IpAddr::V6(peer_ip.to_ipv6_mapped()), peer.port()),
                SocketAddr::new(IpAddr::V6(server_ip.to_ipv6_mapped()), server.port()),
            );
        }
        (IpAddr::V6(_), IpAddr::V6(_)) => read("/proc/net/tcp6", peer, server),
        _ => return Owner::Unknown,
    }
    match owners.as_slice() {
        [Some(uid)] => Owner::Uid(*uid),
        _ => Owner::Unknown,
    }
}

/// Whether `ip` is an address of this host (a socket can be bound to it).
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The uids of the ESTABLISHED sockets of a `/proc/net/tcp{,6}` table
/// whose local address is `local` and remote address `remote` (`Some`
/// each; a row whose uid does not parse is `None`, which believes nothing).
fn owners_in(text: &str, local: SocketAddr, remote: SocketAddr) -> Vec<Option<u32>> {
    let (local, remote) = (proc_address(local), proc_address(remote));
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let this_local = fields.nth(1)?;
            let this_remote = fields.next()?;
            let state = fields.next()?;
            let matches = this_local.eq_ignore_ascii_case(&local)
                && this_remote.eq_ignore_ascii_case(&remote)
                && state == "01";
            // tx_queue:rx_queue tr:tm->when retrnsmt uid
            matches.then(|| fields.nth(3).and_then(|uid| uid.parse().ok()))
        })
        .collect()
}

/// An address as `/proc/net/tcp` writes it: the IP's 32-bit words in the
/// kernel's (little-endian) byte order, in hex, then `:` and the port.
fn proc_address(address: SocketAddr) -> String {
    let ip = match address.ip() {
        IpAddr::V4(ip) => format!("{:08X}", u32::from_le_bytes(ip.octets())),
        IpAddr::V6(ip) => ip
            .octets()
            .chunks(4)
            .map(|word| {
                format!(
                    "{:08X}",
                    u32::from_le_bytes([word[0], word[1], word[2], word[3]])
                )
            })
            .collect(),
    };
    format!("{ip}:{:04X}", address.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    // A listener, a user's connection to it from port 41922, and a
    // TIME_WAIT row with the same local address (the kernel lists those
    // as root's) that a user left to look like someone else.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A3C2 0100007F:2710 06 00000000:00000000 03:00000BB8 00000000     0        0 0 3 0000000000000000
   2: 0100007F:A3C2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000 200001        0 2 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn finds_the_uid_of_exactly_this_connection() {
        let peer: SocketAddr = "127.0.0.1:41922".parse().unwrap();
        let server: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(owners_in(TCP, peer, server), vec![Some(200001)]);
        // The TIME_WAIT row is no connection to this server.
        let elsewhere: SocketAddr = "127.0.0.1:10000".parse().unwrap();
        assert_eq!(owners_in(TCP, peer, elsewhere), vec![]);
        // Nor is the listener.
        assert_eq!(owners_in(TCP, server, "0.0.0.0:0".parse().unwrap()), vec![]);
    }

    #[test]
    fn writes_addresses_as_the_kernel_does() {
        assert_eq!(
            proc_address("127.0.0.1:8080".parse().unwrap()),
            "0100007F:1F90"
        );
        assert_eq!(
            proc_address("[::1]:443".parse().unwrap()),
            "00000000000000000000000001000000:01BB"
        );
    }

    #[test]
    fn this_process_owns_its_own_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(server).unwrap();
        let peer = client.local_addr().unwrap();
        assert_eq!(
            connection_owner(peer, server),
            Owner::Uid(rustix::process::geteuid().as_raw())
        );
        // An address of no interface here is another host's.
        assert_eq!(
            connection_owner("192.0.2.77:5000".parse().unwrap(), server),
            Owner::Remote
        );
        // Ours, but no such connection: nothing is believed.
        assert_eq!(
            connection_owner("127.0.0.1:1".parse().unwrap(), server),
            Owner::Unknown
        );
    }
}
