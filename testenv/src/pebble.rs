//! Pebble, Let's Encrypt's ACME test server, with pebble-challtestsrv as its DNS.

use crate::binaries::Binaries;
use crate::dns::ChallTestSrv;
use crate::https::{HttpsClient, error_chain};
use crate::loopback::LoopbackAddress;
use crate::pki::{TestCa, random_bytes};
use crate::process::{ChildProcess, TempDir, poll_until};
use anyhow::{Context as _, Result};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// Profiles Pebble offers besides `default` (name and validity period), listed in its directory's
    /// `meta.profiles`.
    pub profiles: Vec<(String, Duration)>,
    /// The port Pebble dials for HTTP-01 (its `httpPort`); a free port of the address when `None`. On the
    /// real node: 80, where Traefik listens ([`crate::NodeOptions::traefik`]).
    pub http01_port: Option<u16>,
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
            profiles: Vec::new(),
            http01_port: None,
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
    /// Boxed: keeps `Pebble` small next to other CA types in enums.
    command: Box<PebbleCommand>,
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

/// What it takes to start the same Pebble again ([`Pebble::restart`]).
struct PebbleCommand {
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(&'static str, String)>,
    log: PathBuf,
    /// A client trusting the TLS listener, for readiness checks.
    https: HttpsClient,
}

impl PebbleCommand {
    fn spawn(&self) -> Result<ChildProcess> {
        let envs: Vec<(&str, &OsStr)> = self.envs.iter().map(|(k, v)| (*k, OsStr::new(v))).collect();
        ChildProcess::spawn("pebble", &self.program, &self.args, &envs, &self.log)
    }
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
        let (acme_port, management_port, tls_port) = (ports[0], ports[1], ports[3]);
        let http_port = options.http01_port.unwrap_or(ports[2]);
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
        if options.validity.is_some() || !options.profiles.is_empty() {
            // Pebble's own default lifetime is 90 days (7776000 s).
            let default = options.validity.map_or(7_776_000, |v| v.as_secs().max(1));
            let mut profiles = serde_json::json!({
                "default": {"description": "kacme-testenv default profile", "validityPeriod": default}
            });
            for (name, validity) in &options.profiles {
                profiles[name] = serde_json::json!({
                    "description": format!("kacme-testenv profile {name}"),
                    "validityPeriod": validity.as_secs().max(1),
                });
            }
            config["pebble"]["profiles"] = profiles;
        }
        if let Some(seconds) = options.retry_after_seconds {
            config["pebble"]["retryAfter"] = serde_json::json!({"authz": seconds, "order": seconds});
        }
        std::fs::write(dir.join("pebble-config.json"), serde_json::to_vec_pretty(&config)?)?;

        let nonce_reject = options.nonce_reject_percent.min(100).to_string();
        let mut envs = vec![("PEBBLE_VA_NOSLEEP", "1".to_string()), ("PEBBLE_WFE_NONCEREJECT", nonce_reject)];
        if let Some(reuse) = options.authz_reuse_percent {
            envs.push(("PEBBLE_AUTHZREUSE", reuse.min(100).to_string()));
        }
        let https = HttpsClient::trusting(&listener_ca.cert_pem)?;
        let command = PebbleCommand {
            https,
            program: pebble_bin,
            args: vec![
                "-config".to_string(),
                dir.join("pebble-config.json").display().to_string(),
                "-dnsserver".into(),
                dns.dns_addr().to_string(),
            ],
            envs,
            log: dir.join("pebble.log"),
        };
        let process = command.spawn()?;

        let directory_url = format!("https://{ip}:{acme_port}/dir");
        let management_url = format!("https://{ip}:{management_port}");
        let issuing_root_pem = wait_until_serving(&process, &command.https, &directory_url, &management_url).await?;
        eprintln!(
            "testenv: Pebble ready in {:.1}s at {directory_url} (HTTP-01 dials port {http_port})",
            started.elapsed().as_secs_f64()
        );
        Ok(Pebble {
            process,
            command: Box::new(command),
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

    /// Sets the renewal window Pebble's ACME Renewal Information (RFC 9773) suggests for the certificate
    /// `leaf_pem` (through the management interface's `/set-renewal-info/`).
    pub async fn set_renewal_window(
        &self,
        leaf_pem: &str,
        start: std::time::SystemTime,
        end: std::time::SystemTime,
    ) -> Result<()> {
        let rfc3339 = |t: std::time::SystemTime| -> Result<String> {
            let seconds = t.duration_since(std::time::UNIX_EPOCH).context("a time before 1970")?.as_secs();
            Ok(jiff::Timestamp::from_second(i64::try_from(seconds)?)?.to_string())
        };
        let window = serde_json::json!({"suggestedWindow": {"start": rfc3339(start)?, "end": rfc3339(end)?}});
        let url = format!("{}/set-renewal-info/", self.management_url);
        let body = serde_json::json!({"Certificate": leaf_pem, "ARIResponse": window.to_string()});
        let response = self.command.https.post_json(&url, &body).await?;
        if response.status != 200 {
            anyhow::bail!("POST {url}: HTTP {}: {}", response.status, response.body);
        }
        Ok(())
    }

    /// What Pebble says of the certificate with serial `serial_hex` (hex): `Valid`, `Revoked`, or `None` when it
    /// issued no such certificate (the management interface's `/cert-status-by-serial/`).
    pub async fn certificate_status(&self, serial_hex: &str) -> Result<Option<String>> {
        let url = format!("{}/cert-status-by-serial/{serial_hex}", self.management_url);
        let response = self.command.https.get(&url).await?;
        match response.status {
            404 => Ok(None),
            200 => {
                let body: serde_json::Value = serde_json::from_str(&response.body).context("Pebble's answer")?;
                Ok(body["Status"].as_str().map(str::to_string))
            }
            status => anyhow::bail!("GET {url}: HTTP {status}: {}", response.body),
        }
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

    /// Stops Pebble (SIGKILL), as a CA outage would; its DNS keeps running. [`Pebble::restart`] brings it back.
    pub fn stop(&self) {
        self.process.kill();
    }

    /// Starts Pebble again after [`Pebble::stop`] (or a crash), on the same address, ports, TLS listener
    /// certificate and configuration, and waits until it serves. Like any restart of Pebble it forgets all
    /// accounts, orders and authorizations, and generates a new issuing root ([`Pebble::issuing_root_pem`]
    /// changes). Its log goes on in the same `pebble.log`.
    pub async fn restart(&mut self) -> Result<()> {
        let started = Instant::now();
        self.process.kill();
        // The old listener's ports are free once the process is reaped; a new one may bind them at once.
        let process = self.command.spawn()?;
        let issuing_root_pem =
            wait_until_serving(&process, &self.command.https, &self.directory_url, &self.management_url).await?;
        self.process = process;
        self.issuing_root_pem = issuing_root_pem;
        eprintln!("testenv: Pebble restarted in {:.1}s at {}", started.elapsed().as_secs_f64(), self.directory_url);
        Ok(())
    }

    /// `pebble.log`: Pebble's own log, across restarts.
    pub fn log_path(&self) -> &Path {
        &self.command.log
    }

    /// The ACME requests Pebble has handled so far (across restarts), by `METHOD /handler-path` (for
    /// example `POST /order-plz`, `POST /chalZ/`), from the line Pebble logs for each request.
    pub fn request_counts(&self) -> Result<BTreeMap<String, u64>> {
        Ok(parse_request_counts(&self.read_log()?))
    }

    /// The serials (hex, as Pebble logs them) of every certificate Pebble has issued so far, in order.
    pub fn issued_serials(&self) -> Result<Vec<String>> {
        Ok(parse_issued_serials(&self.read_log()?))
    }

    fn read_log(&self) -> Result<String> {
        let bytes = std::fs::read(&self.command.log)
            .with_context(|| format!("reading Pebble's log {}", self.command.log.display()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Fails with the tail of Pebble's log if it has exited.
    pub fn ensure_running(&self) -> Result<()> {
        self.process.ensure_running().context("Pebble is not running")
    }
}

/// Waits until Pebble's directory answers, then fetches its issuing root (PEM).
async fn wait_until_serving(
    process: &ChildProcess,
    https: &HttpsClient,
    directory_url: &str,
    management_url: &str,
) -> Result<String> {
    poll_until("Pebble's ACME directory", Duration::from_secs(30), Duration::from_millis(50), || async {
        process.ensure_running()?;
        Ok(match https.get(directory_url).await {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!("HTTP {}: {}", r.status, r.body)),
            Err(e) => Err(error_chain(&e)),
        })
    })
    .await
    .map_err(|e| process.with_log_tail(e))?;
    let roots_url = format!("{management_url}/roots/0");
    poll_until("Pebble's issuing root", Duration::from_secs(10), Duration::from_millis(50), || async {
        process.ensure_running()?;
        Ok(match https.get(&roots_url).await {
            Ok(r) if r.status == 200 && r.body.contains("BEGIN CERTIFICATE") => Ok(r.body),
            Ok(r) => Err(format!("HTTP {}: {}", r.status, r.body)),
            Err(e) => Err(error_chain(&e)),
        })
    })
    .await
    .map_err(|e| process.with_log_tail(e))
}

/// Counts Pebble's per-request log lines, `<date> <time> <METHOD> <pattern> -> calling handler()`.
fn parse_request_counts(log: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in log.lines() {
        let Some(before) = line.strip_suffix(" -> calling handler()") else { continue };
        let words: Vec<&str> = before.split_whitespace().collect();
        if let [.., method, pattern] = words.as_slice() {
            *counts.entry(format!("{method} {pattern}")).or_insert(0) += 1;
        }
    }
    counts
}

/// The serials of Pebble's `Issued certificate serial <hex> for order <id>` lines.
fn parse_issued_serials(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| line.split_once("Issued certificate serial ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_issued_serials_are_read_from_pebbles_log() {
        let log = "Pebble 2026/11/28 12:00:00 GET /dir -> calling handler()\n\
                   Pebble 2026/11/28 12:00:00 HEAD /nonce-plz -> calling handler()\n\
                   Pebble 2026/11/28 12:00:01 POST /order-plz -> calling handler()\n\
                   Pebble 2026/11/28 12:00:01 POST /order-plz -> calling handler()\n\
                   Pebble 2026/11/28 12:00:02 Issued certificate serial 1a2b3c for order abc\n\
                   Pebble 2026/11/28 12:00:03 Issued certificate serial 4d5e for order def\n";
        let counts = parse_request_counts(log);
        assert_eq!(counts.get("POST /order-plz"), Some(&2));
        assert_eq!(counts.get("GET /dir"), Some(&1));
        assert_eq!(counts.values().sum::<u64>(), 4);
        assert_eq!(parse_issued_serials(log), ["1a2b3c", "4d5e"]);
    }
}
