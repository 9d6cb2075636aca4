//! One loopback address per environment, so that environments running at the same time (test threads of
//! one binary, several test binaries) never share a port — step-ca always dials port 80 for HTTP-01.

use anyhow::{Context as _, Result, bail};
use std::fs::{File, OpenOptions, TryLockError};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;

/// Third octets 1..=250 and fourth octets 1..=250: 127.0.1.1 to 127.0.250.250.
const OCTET_RANGE: u32 = 250;
const CANDIDATES: u32 = OCTET_RANGE * OCTET_RANGE;

/// An address out of 127.0.0.0/8 that this environment holds exclusively while any clone of it lives.
///
/// Exclusivity comes from an exclusive lock on `$TMPDIR/kacme-testenv-loopback/<ip>.lock`, which the kernel
/// releases when the holder closes it or dies, so a crashed test never leaves a stale reservation.
#[derive(Clone, Debug)]
pub struct LoopbackAddress {
    lease: Arc<Lease>,
}

#[derive(Debug)]
struct Lease {
    ip: Ipv4Addr,
    /// `None` for an address that something else reserves ([`LoopbackAddress::held_by_caller`]).
    _lock: Option<File>,
}

impl LoopbackAddress {
    /// Reserves a loopback address that no other environment (in this or another process) holds.
    pub fn allocate() -> Result<Self> {
        let dir = lock_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating the lock directory {}", dir.display()))?;
        // Lowest free address first, so that the set of lock files stays as small as the peak concurrency.
        for index in 0..CANDIDATES {
            let ip = Ipv4Addr::new(127, 0, (1 + index / OCTET_RANGE) as u8, (1 + index % OCTET_RANGE) as u8);
            let path = dir.join(format!("{ip}.lock"));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(error)) => {
                    return Err(error).with_context(|| format!("locking {}", path.display()));
                }
            }
            if !address_is_usable(ip) {
                continue;
            }
            return Ok(LoopbackAddress { lease: Arc::new(Lease { ip, _lock: Some(file) }) });
        }
        bail!("no free loopback address in 127.0.1.1-127.0.250.250 (all locked in {})", dir.display())
    }

    /// An address that the caller holds by other means, without a lock file: the real node's bridge address
    /// ([`crate::Node::address`]), which the node lock reserves (one node per machine). CAs started on it
    /// listen where Pods can reach them.
    pub fn held_by_caller(ip: Ipv4Addr) -> Self {
        LoopbackAddress { lease: Arc::new(Lease { ip, _lock: None }) }
    }

    /// The address.
    pub fn ip(&self) -> Ipv4Addr {
        self.lease.ip
    }

    /// `ip:port` on this address.
    pub fn socket_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.lease.ip), port)
    }

    /// A TCP port that is free on this address right now.
    pub fn free_port(&self) -> Result<u16> {
        Ok(self.free_ports(1)?[0])
    }

    /// `count` distinct TCP ports that are free on this address right now (all bound at once, then released,
    /// so they differ from each other).
    pub fn free_ports(&self, count: usize) -> Result<Vec<u16>> {
        let listeners = (0..count)
            .map(|_| TcpListener::bind((self.lease.ip, 0)))
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("binding free ports on {}", self.lease.ip))?;
        listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
    }

    /// A port that is free for both TCP and UDP on this address (for a DNS server).
    pub fn free_tcp_and_udp_port(&self) -> Result<u16> {
        for _ in 0..100 {
            let tcp = TcpListener::bind((self.lease.ip, 0))?;
            let port = tcp.local_addr()?.port();
            if UdpSocket::bind((self.lease.ip, port)).is_ok() {
                return Ok(port);
            }
        }
        bail!("found no port free for both TCP and UDP on {}", self.lease.ip)
    }
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("kacme-testenv-loopback")
}

/// The address can be bound, and nobody (say, a process leaked by a killed earlier run) holds port 80 on it.
fn address_is_usable(ip: Ipv4Addr) -> bool {
    if TcpListener::bind((ip, 0)).is_err() {
        return false;
    }
    match TcpListener::bind((ip, 80)) {
        Ok(_) => true,
        Err(error) => error.kind() != std::io::ErrorKind::AddrInUse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_alive_at_the_same_time_never_share_an_address() {
        let first = LoopbackAddress::allocate().unwrap();
        let second = LoopbackAddress::allocate().unwrap();
        let clone_of_first = first.clone();
        assert_ne!(first.ip(), second.ip());
        drop(first);
        let third = LoopbackAddress::allocate().unwrap();
        assert_ne!(third.ip(), clone_of_first.ip(), "a clone keeps the address reserved");
        assert_ne!(third.ip(), second.ip());
        let ports = second.free_ports(5).unwrap();
        let mut distinct = ports.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 5, "{ports:?}");
    }
}
