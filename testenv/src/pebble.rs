//! Pebble, Let's Encrypt's ACME test server, with pebble-challtestsrv as its DNS.

use crate::binaries::Binaries;
use crate::dns::ChallTestSrv;
use crate::https::{HttpsClient, error_chain};
use crate::loopback::LoopbackAddress;
use crate::pki::{TestCa, random_bytes};
use crate::process::{ChildProcess, TempDir, poll_until};
use anyhow::{Context as _, Result};
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How to run Pebble.
#[derive(Clone, Debug)]
pub struct PebbleOptions {
    /// The loopback address to run on; a fresh one when `None`.
    pub address: Option<LoopbackAddress>,
    /// Require External Account Binding for new accounts, with one generated key id and HMAC key.
    pub eab: bool,
    /// Percentage of valid nonces that Pebble rejects as bad (`PEBBLE_WFE_NONCEREJECT`); Pebble's default
    /// is 5, which exercises a client's badNonce retry. 0 turns it off.
    pub nonce_reject_percent: u8,
    /// Lifetime of issued certificates (the `default` profile's validityPeriod); Pebble's default is 90
    /// days. A client may still ask for other dates in its order (notBefore/notAfter).
    pub validity: Option<Duration>,
    /// Percentage of authorizations that Pebble reuses across orders of an account (`PEBBLE_AUTHZREUSE`);
    /// Pebble's default is 50.
    pub authz_reuse_percent: Option<u8>,
    /// Retry-After seconds that Pebble sends for pending authorizations and orders (`retryAfter`); Pebble
    /// sends none when `None`.
    pub retry_after_seconds: Option<u32>,
}

impl Default for PebbleOptions {
    fn default() -> Self {
        PebbleOptions {
            address: None,
            eab: false,
            nonce_reject_percent: 5,
            validity: None,
            authz_reuse_percent: None,
            retry_after_seconds: None,
        }
    }
}

/// External Account Binding credentials that Pebble accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EabCredentials {
    /// The key id.
    pub key_id: String,
    /// The HMAC key, base64url without padding (as CAs hand it out and as an Issuer's Secret holds it).
    pub hmac_key: String,
}

/// A running Pebble (and its pebble-challtestsrv DNS), stopped on drop.
///
/// Pebble validates HTTP-01 by resolving the name through challtestsrv (which answers this environment's
/// loopback address) and dialing [`Pebble::http01_addr`]: serve the solver stand-in there.
pub struct Pebble {
    process: ChildProcess,
    dns: ChallTestSrv,
    directory_url: String,
    management_url: String,
    listener_root_pem: String,
    issuing_root_pem: String,
    http01_addr: SocketAddr,
    eab: Option<EabCredentials>,
    address: LoopbackAddress,
    dir: TempDir,
}

impl std::fmt::Debug for Pebble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pebble").field("directory_url", &self.directory_url).field("dir", &self.dir.path()).finish()
    }
}

impl Pebble {
    /// Starts challtestsrv and Pebble and waits until the directory answers and the issuing root is fetched.
    pub async fn start(options: PebbleOptions) -> Result<Self> {
        let started = Instant::now();
        let pebble_bin = Binaries::locate()?.path("pebble")?;
        Binaries::locate()?.path("pebble-challtestsrv")?;
        let address = match options.address {
            Some(address) => address,
            None => LoopbackAddress::allocate()?,
        };
        let ip = address.ip();
        let dir = TempDir::new("pebble")?;
        let dns = ChallTestSrv::start(&address, &dir).await?;

        let listener_ca = TestCa::root("kacme-testenv Pebble listener root")?;
        let listener = listener_ca.issue_server(&[ip.to_string(), "localhost".into()])?;
        std::fs::write(dir.join("listener.crt"), &listener.cert_pem)?;
        std::fs::write(dir.join("listener.key"), &listener.key_pem)?;

        let ports = address.free_ports(4)?;
        let (acme_port, management_port, http_port, tls_port) = (ports[0], ports[1], ports[2], ports[3]);
        let eab = if options.eab {
            use base64::Engine as _;
            Some(EabCredentials {
                key_id: "kacme-testenv-kid".into(),
                hmac_key: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(32)?),
            })
        } else {
            None
        };
        let mac_keys: serde_json::Map<String, serde_json::Value> =
            eab.iter().map(|e| (e.key_id.clone(), e.hmac_key.clone().into())).collect();
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("{ip}:{acme_port}"),
                "managementListenAddress": format!("{ip}:{management_port}"),
                "certificate": dir.join("listener.crt"),
                "privateKey": dir.join("listener.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": eab.is_some(),
                "externalAccountMACKeys": mac_keys,
            }
        });
        if let Some(validity) = options.validity {
            config["pebble"]["profiles"] = serde_json::json!({
                "default": {"description": "kacme-testenv default profile", "validityPeriod": validity.as_secs().max(1)}
            });
        }
        if let Some(seconds) = options.retry_after_seconds {
            config["pebble"]["retryAfter"] = serde_json::json!({"authz": seconds, "order": seconds});
        }
        std::fs::write(dir.join("pebble-config.json"), serde_json::to_vec_pretty(&config)?)?;

        let nonce_reject = options.nonce_reject_percent.min(100).to_string();
        let authz_reuse = options.authz_reuse_percent.map(|p| p.min(100).to_string());
        let mut envs: Vec<(&str, &OsStr)> =
            vec![("PEBBLE_VA_NOSLEEP", OsStr::new("1")), ("PEBBLE_WFE_NONCEREJECT", OsStr::new(&nonce_reject))];
        if let Some(reuse) = &authz_reuse {
            envs.push(("PEBBLE_AUTHZREUSE", OsStr::new(reuse)));
        }
        let process = ChildProcess::spawn(
            "pebble",
            &pebble_bin,
            [
                "-config".to_string(),
                dir.join("pebble-config.json").display().to_string(),
                "-dnsserver".into(),
                dns.dns_addr().to_string(),
            ],
            &envs,
            dir.join("pebble.log"),
        )?;

        let directory_url = format!("https://{ip}:{acme_port}/dir");
        let management_url = format!("https://{ip}:{management_port}");
        let https = HttpsClient::trusting(&listener_ca.cert_pem)?;
        poll_until("Pebble's ACME directory", Duration::from_secs(30), Duration::from_millis(50), || async {
            process.ensure_running()?;
            Ok(match https.get(&directory_url).await {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("HTTP {}: {}", r.status, r.body)),
                Err(e) => Err(error_chain(&e)),
            })
        })
        .await
        .map_err(|e| process.with_log_tail(e))?;
        let roots_url = format!("{management_url}/roots/0");
        let issuing_root_pem =
            poll_until("Pebble's issuing root", Duration::from_secs(10), Duration::from_millis(50), || async {
                process.ensure_running()?;
                Ok(match https.get(&roots_url).await {
                    Ok(r) if r.status == 200 && r.body.contains("BEGIN CERTIFICATE") => Ok(r.body),
                    Ok(r) => Err(format!("HTTP {}: {}", r.status, r.body)),
                    Err(e) => Err(error_chain(&e)),
                })
            })
            .await
            .map_err(|e| process.with_log_tail(e))?;
        eprintln!(
            "testenv: Pebble ready in {:.1}s at {directory_url} (HTTP-01 dials port {http_port})",
            started.elapsed().as_secs_f64()
        );
        Ok(Pebble {
            process,
            dns,
            directory_url,
            management_url,
            listener_root_pem: listener_ca.cert_pem,
            issuing_root_pem,
            http01_addr: address.socket_addr(http_port),
            eab,
            address,
            dir,
        })
    }

    /// The ACME directory URL, `https://<ip>:<port>/dir`.
    pub fn directory_url(&self) -> &str {
        &self.directory_url
    }

    /// The management interface base URL (`/roots/0`, `/intermediates/0`, ...), same TLS listener root.
    pub fn management_url(&self) -> &str {
        &self.management_url
    }

    /// The root that signed Pebble's TLS listener certificate: trust it to talk to the ACME endpoint.
    pub fn listener_root_pem(&self) -> &str {
        &self.listener_root_pem
    }

    /// Pebble's issuing root (generated at each start): verify issued certificates against it.
    pub fn issuing_root_pem(&self) -> &str {
        &self.issuing_root_pem
    }

    /// Both roots, listener first: what an Issuer's `caBundle` needs for TLS to Pebble and for workloads
    /// verifying issued certificates.
    pub fn ca_bundle_pem(&self) -> String {
        format!("{}{}", self.listener_root_pem, self.issuing_root_pem)
    }

    /// Where Pebble dials HTTP-01 challenges: this environment's address and Pebble's `httpPort`.
    pub fn http01_addr(&self) -> SocketAddr {
        self.http01_addr
    }

    /// The External Account Binding credentials, when [`PebbleOptions::eab`] was set.
    pub fn eab(&self) -> Option<&EabCredentials> {
        self.eab.as_ref()
    }

    /// The loopback address of this environment (every DNS name resolves to it).
    pub fn address(&self) -> &LoopbackAddress {
        &self.address
    }

    /// The DNS server Pebble resolves names with.
    pub fn dns(&self) -> &ChallTestSrv {
        &self.dns
    }

    /// The temp dir with `pebble.log`, `pebble-challtestsrv.log` and the configuration.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fails with the tail of Pebble's log if it has exited.
    pub fn ensure_running(&self) -> Result<()> {
        self.process.ensure_running().context("Pebble is not running")
    }
}
