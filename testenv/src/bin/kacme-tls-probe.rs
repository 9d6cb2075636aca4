//! kacme-tls-probe: the workload of the mutual-TLS tests on the real node (image `kacme.test/tls-probe:1`).
//!
//!   kacme-tls-probe serve [--listen 0.0.0.0:8443] [--dir /var/run/kacme]
//!   kacme-tls-probe connect HOST:PORT --server-name NAME [--dir /var/run/kacme]
//!   kacme-tls-probe apiserver [PATH]
//!
//! Both sides use the files kacme mounts (`tls.crt`, `tls.key`, `ca.crt` in `--dir`) and require the other
//! side's certificate to chain to `ca.crt`. The server reads the files again for every connection, so a
//! renewed Secret shows in the next handshake. Each side prints the SHA-256 of both leaf certificates:
//! `client=<hex> server=<hex>`; `connect` exits non-zero when the handshake fails.
//!
//! `apiserver` is the in-cluster check of the real node: it GETs `PATH` (default `/version`) from
//! `$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT` (the `kubernetes` Service) with the Pod's
//! service-account token, trusting the service-account `ca.crt` for the name `kubernetes.default.svc`, and
//! prints the status line and the body; it exits non-zero unless the answer is 200.
#![forbid(unsafe_code)]

use anyhow::{Context as _, Result, bail};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str = "usage: kacme-tls-probe serve [--listen ADDR] [--dir DIR] | connect HOST:PORT --server-name NAME [--dir DIR] \
     | apiserver [PATH]";

/// Where the kubelet mounts the Pod's service-account token and the cluster CA.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

struct Files {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

fn load(dir: &Path) -> Result<Files> {
    let read = |name: &str| -> Result<Vec<u8>> {
        std::fs::read(dir.join(name)).with_context(|| format!("reading {}", dir.join(name).display()))
    };
    let chain = CertificateDer::pem_slice_iter(&read("tls.crt")?).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&read("tls.key")?).context("tls.key")?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read("ca.crt")?) {
        roots.add(ca?).context("ca.crt")?;
    }
    if chain.is_empty() || roots.is_empty() {
        bail!("tls.crt or ca.crt in {} holds no certificate", dir.display());
    }
    Ok(Files { chain, key, roots: Arc::new(roots) })
}

fn fingerprint(der: Option<&CertificateDer<'_>>) -> String {
    match der {
        Some(der) => aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        None => "none".into(),
    }
}

fn serve(listen: &str, dir: PathBuf) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    eprintln!("kacme-tls-probe: serving mutual TLS on {listen} with the files in {}", dir.display());
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let dir = dir.clone();
        std::thread::spawn(move || {
            if let Err(error) = answer(stream, &dir) {
                eprintln!("kacme-tls-probe: connection failed: {error:#}");
            }
        });
    }
    Ok(())
}

fn answer(stream: TcpStream, dir: &Path) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let files = load(dir)?;
    let server_leaf = fingerprint(files.chain.first());
    let verifier = rustls::server::WebPkiClientVerifier::builder(files.roots).build()?;
    let config =
        ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(files.chain, files.key)?;
    let connection = rustls::ServerConnection::new(Arc::new(config))?;
    let mut tls = rustls::StreamOwned::new(connection, stream);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let client_leaf = fingerprint(tls.conn.peer_certificates().and_then(|c| c.first()));
    let line = format!("client={client_leaf} server={server_leaf}");
    eprintln!("kacme-tls-probe: {line}");
    writeln!(tls, "{line}")?;
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok(())
}

fn connect(address: &str, server_name: &str, dir: &Path) -> Result<()> {
    let files = load(dir)?;
    let client_leaf = fingerprint(files.chain.first());
    let config =
        ClientConfig::builder().with_root_certificates(files.roots).with_client_auth_cert(files.chain, files.key)?;
    let name = ServerName::try_from(server_name.to_string()).context("--server-name")?;
    let connection = rustls::ClientConnection::new(Arc::new(config), name)?;
    let stream = TcpStream::connect(address).with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(connection, stream);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).context("TLS handshake")?;
    }
    let server_leaf = fingerprint(tls.conn.peer_certificates().and_then(|c| c.first()));
    let mut reply = String::new();
    BufReader::new(&mut tls).read_line(&mut reply).context("reading the server's line")?;
    let expected = format!("client={client_leaf} server={server_leaf}");
    if reply.trim() != expected {
        bail!("the server saw another handshake: it says {:?}, this side saw {expected:?}", reply.trim());
    }
    println!("{expected}");
    Ok(())
}

fn get_from_apiserver(path: &str) -> Result<()> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").context("KUBERNETES_SERVICE_HOST is not set")?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").context("KUBERNETES_SERVICE_PORT is not set")?;
    let dir = Path::new(SERVICE_ACCOUNT_DIR);
    let token = std::fs::read_to_string(dir.join("token")).context("reading the service-account token")?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&std::fs::read(dir.join("ca.crt")).context("reading ca.crt")?) {
        roots.add(ca?).context("ca.crt")?;
    }
    let config = ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let name = ServerName::try_from("kubernetes.default.svc").context("server name")?;
    let connection = rustls::ClientConnection::new(Arc::new(config), name)?;
    let address = format!("{host}:{port}");
    let stream = TcpStream::connect(&address).with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(connection, stream);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.trim()
    )?;
    tls.flush()?;
    let mut reply = String::new();
    // The apiserver closes without close_notify at times: keep what arrived.
    let _ = std::io::Read::read_to_string(&mut tls, &mut reply);
    let status = reply.lines().next().unwrap_or_default().to_string();
    println!("{address} {path}: {status}");
    if let Some((_, body)) = reply.split_once("\r\n\r\n") {
        println!("{body}");
    }
    if !status.contains(" 200 ") {
        bail!("the apiserver answered {status:?}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let option = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let dir = PathBuf::from(option("--dir").unwrap_or_else(|| "/var/run/kacme".into()));
    match args.first().map(String::as_str) {
        Some("serve") => serve(&option("--listen").unwrap_or_else(|| "0.0.0.0:8443".into()), dir),
        Some("connect") => {
            let (Some(address), Some(server_name)) = (args.get(1), option("--server-name")) else { bail!("{USAGE}") };
            connect(address, &server_name, &dir)
        }
        Some("apiserver") => get_from_apiserver(args.get(1).map(String::as_str).unwrap_or("/version")),
        Some("--help" | "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}
