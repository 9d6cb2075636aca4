//! `kacme agent`, the Pod's side: generates the key in the Pod, sends only a CSR for the Pod's own names to the
//! operator (with the Pod's projected token), writes `tls.crt`, `tls.key` and `ca.crt` atomically, and renews at
//! two thirds of the lifetime, for as long as the Pod runs.
//!
//! The files are swapped the way the kubelet swaps Secret volumes: each version in a directory of its own,
//! `..data` a symlink to the current one (replaced with one rename), and `tls.crt` etc. symlinks through
//! `..data`, so a reader never sees a key from one version and a certificate from another.

use super::endpoint::{AgentRequest, AgentResponse};
use crate::api::names::{CA_CRT, TLS_CRT, TLS_KEY};
use crate::api::{KeyAlgorithm, KeyUsage};
use crate::pki::{CsrRequest, KeySpec, build_csr, effective_usages, generate_private_key, parse_chain};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Method, Request, StatusCode};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How the agent runs (from its environment, which the webhook sets).
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The operator endpoint, `https://<host>:<port>/pod-certificate`.
    pub url: String,
    /// Where to connect instead of the URL's host (`ip:port`).
    pub connect: Option<String>,
    /// The CA of the endpoint's serving certificate (PEM).
    pub ca_pem: String,
    /// The projected token (read again for every request: the kubelet rotates it).
    pub token_path: PathBuf,
    /// Where to write the files.
    pub dir: PathBuf,
    /// The key to generate.
    pub algorithm: KeyAlgorithm,
}

/// What stops the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration cannot work (the Pod must be fixed; retrying would not help).
    #[error("{0}")]
    Configuration(String),
    /// Writing the files failed.
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// The longest wait between two attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one CSR may stay pending before the agent starts over.
const MAX_PENDING: Duration = Duration::from_secs(600);

/// Runs until `shutdown` resolves: a certificate now (unless a current one is on disk), then renewals.
pub async fn run(config: AgentConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
    tokio::pin!(shutdown);
    let client = EndpointClient::new(&config)?;
    loop {
        let wait = match current_renewal_wait(&config.dir) {
            Some(wait) if !wait.is_zero() => wait,
            _ => {
                tokio::select! {
                    result = obtain(&config, &client) => result?,
                    () = &mut shutdown => return Ok(()),
                }
                current_renewal_wait(&config.dir).unwrap_or(Duration::from_secs(60))
            }
        };
        tracing::info!(renew_in = ?wait, "certificate current; waiting to renew");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => return Ok(()),
        }
    }
}

/// Whether the files hold a certificate that has not expired (the sidecar's startup and readiness probe).
pub fn files_are_current(dir: &Path) -> bool {
    let Ok(chain) = std::fs::read(dir.join(TLS_CRT)) else { return false };
    let key_present = std::fs::metadata(dir.join(TLS_KEY)).is_ok_and(|m| m.len() > 0);
    key_present && parse_chain(&chain).is_ok_and(|c| c.leaf.not_after > jiff::Timestamp::now())
}

/// How long until the certificate on disk is due for renewal (two thirds of its lifetime); `None` without one.
pub fn current_renewal_wait(dir: &Path) -> Option<Duration> {
    let chain = std::fs::read(dir.join(TLS_CRT)).ok()?;
    let leaf = parse_chain(&chain).ok()?.leaf;
    let at = renewal_time(leaf.not_before, leaf.not_after);
    let now = jiff::Timestamp::now();
    Some(if at > now { Duration::try_from(at.duration_since(now)).unwrap_or_default() } else { Duration::ZERO })
}

/// Two thirds into the lifetime.
pub fn renewal_time(not_before: jiff::Timestamp, not_after: jiff::Timestamp) -> jiff::Timestamp {
    let lifetime = not_after.duration_since(not_before);
    not_before.checked_add(lifetime * 2 / 3).unwrap_or(not_after)
}

/// Generates a key, asks until the certificate is issued (backing off on failures), and writes the files.
async fn obtain(config: &AgentConfig, client: &EndpointClient) -> Result<(), AgentError> {
    let mut backoff = Duration::from_secs(1);
    loop {
        // The names come from the operator, which reads the Pod (its addresses, the Services selecting it).
        let names = match client.names(config).await {
            Ok(names) => names,
            Err(message) => {
                tracing::warn!(%message, retry_in = ?backoff, "no names yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let spec = KeySpec::from_spec(Some(&crate::api::PrivateKeySpec {
            algorithm: Some(config.algorithm),
            ..Default::default()
        }));
        let key = generate_private_key(&spec).map_err(|e| AgentError::Configuration(e.to_string()))?;
        let mut usages = effective_usages(&[], config.algorithm);
        usages.insert(KeyUsage::ClientAuth);
        let (ip_addresses, dns_names): (Vec<String>, Vec<String>) =
            names.into_iter().partition(|n| n.parse::<std::net::IpAddr>().is_ok());
        let ip_addresses = ip_addresses.iter().filter_map(|ip| ip.parse().ok()).collect();
        let request = CsrRequest { dns_names, ip_addresses, common_name: None, usages };
        let csr = build_csr(&request, &key).map_err(|e| AgentError::Configuration(e.to_string()))?;
        let csr_pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr));
        // The same CSR while the operator works on it; a new key only after a failure, or when the operator
        // seems to have lost the order (a restarted replica behind the same Service answers for it anyway).
        let asked = std::time::Instant::now();
        loop {
            if asked.elapsed() > MAX_PENDING {
                tracing::warn!(after = ?MAX_PENDING, "still pending; starting over with a new key");
                break;
            }
            match client.ask(config, &csr_pem).await {
                Ok(Answer::Issued { certificate, ca }) => {
                    write_files(&config.dir, &certificate, key.pem(), ca.as_deref().unwrap_or(""))?;
                    tracing::info!(names = ?request.dns_names, addresses = ?request.ip_addresses, "certificate written");
                    return Ok(());
                }
                Ok(Answer::Pending(after)) => {
                    backoff = Duration::from_secs(1);
                    tokio::time::sleep(after).await;
                }
                Err(message) => {
                    tracing::warn!(%message, retry_in = ?backoff, "no certificate yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    break;
                }
            }
        }
    }
}

enum Answer {
    Issued { certificate: String, ca: Option<String> },
    Pending(Duration),
}

/// The HTTPS client of the endpoint: one kept-alive connection (so that a replica that started an order is
/// the one asked again), reopened when it breaks.
pub struct EndpointClient {
    tls: tokio_rustls::TlsConnector,
    server_name: rustls_pki_types::ServerName<'static>,
    host_header: String,
    path: String,
    address: String,
    connection: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl EndpointClient {
    /// A client for `config`'s URL, trusting only `config`'s CA.
    pub fn new(config: &AgentConfig) -> Result<EndpointClient, AgentError> {
        let bad = |why: String| AgentError::Configuration(why);
        let uri: hyper::Uri = config.url.parse().map_err(|e| bad(format!("KACME_AGENT_URL {:?}: {e}", config.url)))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad(format!("KACME_AGENT_URL {:?}: must be https", config.url)));
        }
        let host = uri.host().ok_or_else(|| bad("KACME_AGENT_URL has no host".into()))?.to_string();
        let port = uri.port_u16().unwrap_or(443);
        let mut roots = rustls::RootCertStore::empty();
        for block in pem::parse_many(&config.ca_pem).map_err(|e| bad(format!("KACME_AGENT_CA: {e}")))? {
            roots
                .add(rustls_pki_types::CertificateDer::from(block.into_contents()))
                .map_err(|e| bad(format!("KACME_AGENT_CA: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("KACME_AGENT_CA holds no certificate".into()));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
            .map_err(|e| bad(format!("KACME_AGENT_URL host {host:?}: {e}")))?;
        Ok(EndpointClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            server_name,
            host_header: format!("{host}:{port}"),
            path: uri.path().to_string(),
            address: config.connect.clone().unwrap_or_else(|| format!("{host}:{port}")),
            connection: tokio::sync::Mutex::default(),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(&self.address))
            .await
            .map_err(|_| format!("connecting to {}: timed out", self.address))?
            .map_err(|e| format!("connecting to {}: {e}", self.address))?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", self.address))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP with {}: {e}", self.address))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// The names the Pod may have now, as the operator says.
    async fn names(&self, config: &AgentConfig) -> Result<Vec<String>, String> {
        let (status, answer, _) = self.get_names(&read_token(config)?).await?;
        match (status, answer.names) {
            (StatusCode::OK, Some(names)) if !names.is_empty() => Ok(names),
            _ => Err(format!("{status}: {}", answer.message.unwrap_or_default())),
        }
    }

    /// One request: the answer, or why there is none (never the token, never the key).
    async fn ask(&self, config: &AgentConfig, csr_pem: &str) -> Result<Answer, String> {
        let (status, answer, retry_after) = self.post(&read_token(config)?, csr_pem).await?;
        match (status, answer.certificate) {
            (StatusCode::OK, Some(certificate)) => Ok(Answer::Issued { certificate, ca: answer.ca }),
            (StatusCode::ACCEPTED, _) => Ok(Answer::Pending(retry_after)),
            _ => Err(format!("{status}: {}", answer.message.unwrap_or_default())),
        }
    }

    /// POSTs `csr_pem` with `token` (empty: no Authorization header) and returns the status, the answer and
    /// the Retry-After it carries (2 s when none).
    pub async fn post(&self, token: &str, csr_pem: &str) -> Result<(StatusCode, AgentResponse, Duration), String> {
        let body = serde_json::to_vec(&AgentRequest { csr: csr_pem.to_string() }).map_err(|e| e.to_string())?;
        self.send(Method::POST, token, body).await
    }

    /// GETs the names the token's Pod may have (`names` of the answer).
    pub async fn get_names(&self, token: &str) -> Result<(StatusCode, AgentResponse, Duration), String> {
        self.send(Method::GET, token, Vec::new()).await
    }

    async fn send(
        &self,
        method: Method,
        token: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, AgentResponse, Duration), String> {
        let mut request = Request::builder()
            .method(method)
            .uri(&self.path)
            .header(HOST, &self.host_header)
            .header(CONTENT_TYPE, "application/json");
        if !token.is_empty() {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
        let mut slot = self.connection.lock().await;
        let mut sender = match slot.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.connect().await?,
        };
        sender.ready().await.map_err(|e| format!("the connection to {} broke: {e}", self.address))?;
        let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
            .await
            .map_err(|_| "no answer within 30s".to_string())?
            .map_err(|e| format!("the request to {} failed: {e}", self.address))?;
        *slot = Some(sender);
        drop(slot);
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Duration::from_secs(2), |s| Duration::from_secs(s.clamp(1, 60)));
        let body = Limited::new(response.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        let answer: AgentResponse = serde_json::from_slice(&body)
            .map_err(|_| format!("the operator answered {status} with a body that is not kacme's"))?;
        Ok((status, answer, retry_after))
    }
}

/// The projected token, read afresh (the kubelet rotates it).
fn read_token(config: &AgentConfig) -> Result<String, String> {
    let token = std::fs::read_to_string(&config.token_path)
        .map_err(|e| format!("reading the token {}: {e}", config.token_path.display()))?;
    Ok(token.trim().to_string())
}

/// Writes one version of the files and makes it current with a single rename (see the module's doc).
pub fn write_files(dir: &Path, chain: &str, key: &str, ca: &str) -> Result<(), AgentError> {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let fail = |path: &Path| {
        let path = path.display().to_string();
        move |source| AgentError::Write { path, source }
    };
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let version = format!("..{stamp}");
    let version_dir = dir.join(&version);
    std::fs::create_dir(&version_dir).map_err(fail(&version_dir))?;
    std::fs::set_permissions(&version_dir, std::fs::Permissions::from_mode(0o755)).map_err(fail(&version_dir))?;
    // Readable by the Pod's other containers, whatever user they run as: the volume is theirs alone.
    for (name, content) in [(TLS_CRT, chain), (TLS_KEY, key), (CA_CRT, ca)] {
        let path = version_dir.join(name);
        std::fs::write(&path, content).map_err(fail(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).map_err(fail(&path))?;
    }
    let staged = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&staged);
    symlink(&version, &staged).map_err(fail(&staged))?;
    let data = dir.join("..data");
    let previous = std::fs::read_link(&data).ok();
    std::fs::rename(&staged, &data).map_err(fail(&data))?;
    for name in [TLS_CRT, TLS_KEY, CA_CRT] {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link).map_err(fail(&link))?;
        }
    }
    if let Some(previous) = previous.filter(|p| p.as_os_str() != version.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(previous));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_two_thirds_into_the_lifetime() {
        let start = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let end = start.checked_add(jiff::SignedDuration::from_hours(24)).unwrap();
        assert_eq!(renewal_time(start, end), start.checked_add(jiff::SignedDuration::from_hours(16)).unwrap());
    }

    #[test]
    fn each_write_replaces_all_three_files_at_once_and_leaves_no_old_version() {
        let dir = std::env::temp_dir().join(format!("kacme-agent-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        write_files(&dir, "chain 1", "key 1", "ca 1").unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(TLS_KEY)).unwrap(), "key 1");
        write_files(&dir, "chain 2", "key 2", "ca 2").unwrap();
        for (name, content) in [(TLS_CRT, "chain 2"), (TLS_KEY, "key 2"), (CA_CRT, "ca 2")] {
            assert_eq!(std::fs::read_to_string(dir.join(name)).unwrap(), content);
        }
        let versions = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name().into_string().unwrap();
                name.starts_with("..") && name != "..data"
            })
            .count();
        assert_eq!(versions, 1, "one version directory");
        assert!(!files_are_current(&dir), "not a certificate");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
