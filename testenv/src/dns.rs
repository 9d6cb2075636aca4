//! `pebble-challtestsrv` as the DNS server of an environment: every A query is answered with the
//! environment's loopback address, so that a CA validating `http://<any name>/...` dials the stand-in.

use crate::binaries::Binaries;
use crate::loopback::LoopbackAddress;
use crate::process::{ChildProcess, TempDir, poll_until};
use anyhow::{Context as _, Result, bail};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// A running `pebble-challtestsrv` serving DNS (UDP and TCP) on the environment's address; its HTTP-01,
/// HTTPS-01, TLS-ALPN-01 and DoH servers are disabled.
#[derive(Debug)]
pub struct ChallTestSrv {
    process: ChildProcess,
    dns_addr: SocketAddr,
    management_addr: SocketAddr,
    answer: Ipv4Addr,
}

impl ChallTestSrv {
    /// Starts it on `address`, answering `address` for every A query (and nothing for AAAA), with its log in
    /// `dir`. Waits until it answers a query.
    pub async fn start(address: &LoopbackAddress, dir: &TempDir) -> Result<Self> {
        let binary = Binaries::locate()?.path("pebble-challtestsrv")?;
        let dns_addr = address.socket_addr(address.free_tcp_and_udp_port()?);
        let management_addr = address.socket_addr(address.free_port()?);
        let process = ChildProcess::spawn(
            "pebble-challtestsrv",
            &binary,
            [
                format!("-dnsserver={dns_addr}"),
                format!("-management={management_addr}"),
                format!("-defaultIPv4={}", address.ip()),
                "-defaultIPv6=".into(),
                "-http01=".into(),
                "-https01=".into(),
                "-tlsalpn01=".into(),
                "-doh=".into(),
            ],
            &[],
            dir.join("pebble-challtestsrv.log"),
        )?;
        let server = ChallTestSrv { process, dns_addr, management_addr, answer: address.ip() };
        poll_until("pebble-challtestsrv to answer DNS", Duration::from_secs(20), Duration::from_millis(50), || async {
            server.process.ensure_running()?;
            Ok(match server.resolve_a("readiness.kacme.test").await {
                Ok(addrs) if addrs.contains(&server.answer) => Ok(()),
                Ok(addrs) => Err(format!("answered {addrs:?}")),
                Err(e) => Err(e.to_string()),
            })
        })
        .await
        .map_err(|e| server.process.with_log_tail(e))?;
        Ok(server)
    }

    /// The DNS server address (UDP and TCP), for Pebble's `-dnsserver` and step-ca's `--resolver`.
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns_addr
    }

    /// The management API address (plain HTTP), for `/add-a`, `/set-default-ipv4` and friends.
    pub fn management_addr(&self) -> SocketAddr {
        self.management_addr
    }

    /// Resolves `name` to IPv4 addresses through this server, with one UDP query (2 s timeout).
    pub async fn resolve_a(&self, name: &str) -> Result<Vec<Ipv4Addr>> {
        resolve_a(self.dns_addr, name).await
    }
}

/// Asks the DNS server at `server` for the A records of `name` over UDP.
pub async fn resolve_a(server: SocketAddr, name: &str) -> Result<Vec<Ipv4Addr>> {
    let socket = tokio::net::UdpSocket::bind((server.ip(), 0)).await.context("binding a UDP socket")?;
    // Connected, so that "port unreachable" comes back as an error at once instead of a timeout.
    socket.connect(server).await.with_context(|| format!("connecting a UDP socket to {server}"))?;
    let id = (std::process::id() as u16) ^ 0x5a5a;
    socket.send(&dns_query(id, name)?).await.with_context(|| format!("sending a DNS query to {server}"))?;
    let mut buffer = [0u8; 1500];
    let len = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buffer))
        .await
        .with_context(|| format!("no DNS answer from {server} within 2s"))?
        .with_context(|| format!("asking {server}"))?;
    parse_a_answers(&buffer[..len], id)
}

fn dns_query(id: u16, name: &str) -> Result<Vec<u8>> {
    let mut query = Vec::with_capacity(64);
    query.extend_from_slice(&id.to_be_bytes());
    query.extend_from_slice(&[0x01, 0x00]); // standard query, recursion desired
    query.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // 1 question, no other records
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            bail!("{name:?} is not a valid DNS name");
        }
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.push(0);
    query.extend_from_slice(&[0, 1, 0, 1]); // type A, class IN
    Ok(query)
}

fn parse_a_answers(message: &[u8], id: u16) -> Result<Vec<Ipv4Addr>> {
    let byte = |i: usize| message.get(i).copied().context("truncated DNS answer");
    let u16_at = |i: usize| Ok::<_, anyhow::Error>(u16::from_be_bytes([byte(i)?, byte(i + 1)?]));
    if u16_at(0)? != id {
        bail!("DNS answer for another query id");
    }
    let rcode = byte(3)? & 0x0f;
    if rcode != 0 {
        bail!("DNS error response code {rcode}");
    }
    let (questions, answers) = (u16_at(4)?, u16_at(6)?);
    let skip_name = |mut i: usize| -> Result<usize> {
        loop {
            let len = byte(i)?;
            if len & 0xc0 == 0xc0 {
                return Ok(i + 2);
            }
            if len == 0 {
                return Ok(i + 1);
            }
            i += 1 + len as usize;
        }
    };
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(at)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        at = skip_name(at)?;
        let (kind, rdlength) = (u16_at(at)?, u16_at(at + 8)? as usize);
        at += 10;
        if kind == 1 && rdlength == 4 {
            out.push(Ipv4Addr::new(byte(at)?, byte(at + 1)?, byte(at + 2)?, byte(at + 3)?));
        }
        at += rdlength;
    }
    Ok(out)
}
