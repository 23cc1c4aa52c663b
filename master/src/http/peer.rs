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

/// The owner of a connection's peer socket, looked up once per connection
/// (the first time a request on it needs to know) and kept: each request
/// of the connection has the same peer. `None` inside: no socket of this
/// host (of this network namespace) is the peer, it is on another host.
#[derive(Debug, Clone, Default)]
pub struct PeerOwner(Arc<OnceLock<Option<u32>>>);

impl PeerOwner {
    pub fn of(&self, peer: SocketAddr) -> Option<u32> {
        *self.0.get_or_init(|| socket_owner(peer))
    }
}

/// The uid owning the TCP socket whose local address is `peer` (the
/// client's end of a connection to us), if the kernel lists one.
pub fn socket_owner(peer: SocketAddr) -> Option<u32> {
    let in_table = |table: &str, address: SocketAddr| {
        let text = std::fs::read_to_string(table).ok()?;
        owner_in(&text, address)
    };
    match peer.ip() {
        // A client of a dual-stack listener is listed as `::ffff:a.b.c.d`.
        IpAddr::V4(ip) => in_table("/proc/net/tcp", peer).or_else(|| {
            in_table(
                "/proc/net/tcp6",
                SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), peer.port()),
            )
        }),
        IpAddr::V6(_) => in_table("/proc/net/tcp6", peer),
    }
}

/// [`socket_owner`] over the text of a `/proc/net/tcp{,6}` table.
fn owner_in(text: &str, peer: SocketAddr) -> Option<u32> {
    let wanted = proc_address(peer);
    text.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        if !local.eq_ignore_ascii_case(&wanted) {
            return None;
        }
        // rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid
        fields.nth(5)?.parse().ok()
    })
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

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A3C2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000 200001        0 2 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn finds_the_uid_of_the_clients_socket() {
        let peer: SocketAddr = "127.0.0.1:41922".parse().unwrap();
        assert_eq!(owner_in(TCP, peer), Some(200001));
        let listener: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(owner_in(TCP, listener), Some(0));
        assert_eq!(owner_in(TCP, "127.0.0.1:1".parse().unwrap()), None);
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
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let peer = client.local_addr().unwrap();
        assert_eq!(
            socket_owner(peer),
            Some(rustix::process::geteuid().as_raw())
        );
    }
}
