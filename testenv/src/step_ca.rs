//! smallstep step-ca with an ACME provisioner, resolving every name through pebble-challtestsrv.

use crate::binaries::Binaries;
use crate::dns::ChallTestSrv;
use crate::https::{HttpsClient, error_chain};
use crate::loopback::LoopbackAddress;
use crate::pki::TestCa;
use crate::process::{ChildProcess, TempDir, poll_until};
use anyhow::{Context as _, Result};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How to run step-ca.
#[derive(Clone, Debug)]
pub struct StepCaOptions {
    /// The loopback address to run on; a fresh one when `None`.
    pub address: Option<LoopbackAddress>,
    /// Name of the ACME provisioner (part of the directory URL).
    pub provisioner: String,
    /// Lifetime of a certificate when the order asks for none (step-ca's default is 24h).
    pub default_duration: Duration,
    /// Shortest lifetime an order may ask for.
    pub min_duration: Duration,
    /// Longest lifetime an order may ask for.
    pub max_duration: Duration,
    /// The port step-ca dials for HTTP-01. `None` keeps step-ca's real behaviour, port 80, when this
    /// process may bind it (root or CAP_NET_BIND_SERVICE) and otherwise falls back to a free port (with a
    /// note on stderr); `Some(port)` forces a port. Any port other than 80 is passed to step-ca as
    /// `--insecure --acme-http-port <port>`. [`StepCa::http01_addr`] tells where to serve.
    pub http01_port: Option<u16>,
}

impl Default for StepCaOptions {
    fn default() -> Self {
        StepCaOptions {
            address: None,
            provisioner: "acme".into(),
            default_duration: Duration::from_secs(24 * 3600),
            min_duration: Duration::from_secs(60),
            max_duration: Duration::from_secs(90 * 24 * 3600),
            http01_port: None,
        }
    }
}

/// A running step-ca (and its pebble-challtestsrv DNS), stopped on drop.
///
/// Its root and intermediate are generated per start; the intermediate signs both the CA's own TLS
/// certificate and the issued certificates, so [`StepCa::root_pem`] is the one trust anchor for both.
/// step-ca validates HTTP-01 by resolving the name through challtestsrv (this environment's loopback
/// address) and dialing [`StepCa::http01_addr`] (port 80 unless overridden): serve the solver stand-in there.
pub struct StepCa {
    process: ChildProcess,
    dns: ChallTestSrv,
    directory_url: String,
    root_pem: String,
    intermediate_pem: String,
    http01_addr: SocketAddr,
    provisioner: String,
    address: LoopbackAddress,
    dir: TempDir,
}

impl std::fmt::Debug for StepCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepCa").field("directory_url", &self.directory_url).field("dir", &self.dir.path()).finish()
    }
}

impl StepCa {
    /// Writes the CA's configuration, root and intermediate, starts challtestsrv and step-ca, and waits
    /// until the ACME directory answers.
    pub async fn start(options: StepCaOptions) -> Result<Self> {
        let started = Instant::now();
        let step_ca_bin = Binaries::locate()?.path("step-ca")?;
        Binaries::locate()?.path("pebble-challtestsrv")?;
        let address = match options.address {
            Some(address) => address,
            None => LoopbackAddress::allocate()?,
        };
        let ip = address.ip();
        let dir = TempDir::new("step-ca")?;
        let dns = ChallTestSrv::start(&address, &dir).await?;

        let root = TestCa::root("kacme-testenv step-ca root")?;
        let intermediate = root.intermediate("kacme-testenv step-ca intermediate")?;
        std::fs::write(dir.join("root_ca.crt"), &root.cert_pem)?;
        std::fs::write(dir.join("intermediate_ca.crt"), &intermediate.cert_pem)?;
        std::fs::write(dir.join("intermediate_ca.key"), intermediate.key_pem())?;

        let port = address.free_port()?;
        let go_duration = |d: Duration| format!("{}s", d.as_secs().max(1));
        let config = serde_json::json!({
            "root": dir.join("root_ca.crt"),
            "federatedRoots": null,
            "crt": dir.join("intermediate_ca.crt"),
            "key": dir.join("intermediate_ca.key"),
            "address": format!("{ip}:{port}"),
            "insecureAddress": "",
            "dnsNames": [ip.to_string(), "localhost"],
            "logger": {"format": "text"},
            // A CRL, rebuilt at each revocation, so that tests can see what was revoked (`revoked_serials`).
            "crl": {"enabled": true, "generateOnRevoke": true},
            "db": {"type": "badgerv2", "dataSource": dir.join("db")},
            "authority": {
                "provisioners": [{
                    "type": "ACME",
                    "name": options.provisioner,
                    "claims": {
                        "minTLSCertDuration": go_duration(options.min_duration),
                        "maxTLSCertDuration": go_duration(options.max_duration),
                        "defaultTLSCertDuration": go_duration(options.default_duration),
                    }
                }]
            },
            "tls": {
                "cipherSuites": [
                    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
                ],
                "minVersion": 1.2,
                "maxVersion": 1.3,
                "renegotiation": false
            }
        });
        std::fs::write(dir.join("ca.json"), serde_json::to_vec_pretty(&config)?)?;

        let http01_port = match options.http01_port {
            Some(port) => port,
            None => match std::net::TcpListener::bind((ip, 80)) {
                Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                    let port = address.free_port()?;
                    eprintln!(
                        "testenv: this process may not bind port 80, so step-ca dials HTTP-01 on port {port} instead \
                         (--insecure --acme-http-port); run as root or with CAP_NET_BIND_SERVICE to test port 80"
                    );
                    port
                }
                _ => 80,
            },
        };
        let mut args = vec![dir.join("ca.json").display().to_string(), format!("--resolver={}", dns.dns_addr())];
        if http01_port != 80 {
            args.extend(["--insecure".to_string(), format!("--acme-http-port={http01_port}")]);
        }
        let step_path = dir.join("step");
        let process = ChildProcess::spawn(
            "step-ca",
            &step_ca_bin,
            args,
            &[("STEPPATH", step_path.as_os_str())],
            dir.join("step-ca.log"),
        )?;

        let directory_url = format!("https://{ip}:{port}/acme/{}/directory", options.provisioner);
        let https = HttpsClient::trusting(&root.cert_pem)?;
        poll_until("step-ca's ACME directory", Duration::from_secs(30), Duration::from_millis(50), || async {
            process.ensure_running()?;
            Ok(match https.get(&directory_url).await {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("HTTP {}: {}", r.status, r.body)),
                Err(e) => Err(error_chain(&e)),
            })
        })
        .await
        .map_err(|e| process.with_log_tail(e))?;
        let http01_addr = address.socket_addr(http01_port);
        eprintln!(
            "testenv: step-ca ready in {:.1}s at {directory_url} (HTTP-01 dials {http01_addr})",
            started.elapsed().as_secs_f64()
        );
        Ok(StepCa {
            process,
            dns,
            directory_url,
            root_pem: root.cert_pem,
            intermediate_pem: intermediate.cert_pem,
            http01_addr,
            provisioner: options.provisioner,
            address,
            dir,
        })
    }

    /// The serial numbers (lowercase hex, no leading zeros) on step-ca's CRL: the certificates it revoked.
    pub async fn revoked_serials(&self) -> Result<Vec<String>> {
        use x509_parser::prelude::FromDer as _;
        let url = self.directory_url.split("/acme/").next().unwrap_or_default().to_string() + "/crl";
        let https = HttpsClient::trusting(&self.root_pem)?;
        let response = https.get_bytes(&url).await?;
        if response.0 != 200 {
            anyhow::bail!("GET {url}: HTTP {}", response.0);
        }
        let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&response.1)
            .map_err(|e| anyhow::anyhow!("step-ca's CRL does not parse: {e}"))?;
        Ok(crl.iter_revoked_certificates().map(|r| serial_hex(r.raw_serial())).collect())
    }

    /// The ACME directory URL, `https://<ip>:<port>/acme/<provisioner>/directory`.
    pub fn directory_url(&self) -> &str {
        &self.directory_url
    }

    /// The root certificate: trust anchor for TLS to the CA and for the certificates it issues.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The intermediate that signs the TLS and issued certificates (step-ca sends it in chains).
    pub fn intermediate_pem(&self) -> &str {
        &self.intermediate_pem
    }

    /// Where step-ca dials HTTP-01 challenges: this environment's address, port 80 unless overridden.
    pub fn http01_addr(&self) -> SocketAddr {
        self.http01_addr
    }

    /// The ACME provisioner's name.
    pub fn provisioner(&self) -> &str {
        &self.provisioner
    }

    /// The loopback address of this environment (every DNS name resolves to it).
    pub fn address(&self) -> &LoopbackAddress {
        &self.address
    }

    /// The DNS server step-ca resolves names with.
    pub fn dns(&self) -> &ChallTestSrv {
        &self.dns
    }

    /// The temp dir with `step-ca.log`, `pebble-challtestsrv.log`, `ca.json`, the certificates and the DB.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fails with the tail of step-ca's log if it has exited.
    pub fn ensure_running(&self) -> Result<()> {
        self.process.ensure_running().context("step-ca is not running")
    }
}

/// A serial number as lowercase hex without leading zeros (as Pebble and Go print them).
pub fn serial_hex(raw: &[u8]) -> String {
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() { "0".into() } else { trimmed.into() }
}
