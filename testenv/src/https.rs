//! A small HTTPS client that trusts exactly the roots it is given (no system roots), for readiness checks and
//! for tests that prove a listener is trusted through its own root.

use anyhow::{Context as _, Result, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use std::sync::Arc;
use std::time::Duration;

/// An HTTPS connector (rustls with aws-lc-rs, HTTP/1.1) that trusts every certificate of `roots_pem` (one or
/// more PEM certificates) and nothing else.
pub(crate) fn connector_trusting(roots_pem: &str) -> Result<HttpsConnector<HttpConnector>> {
    let mut roots = rustls::RootCertStore::empty();
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(cert.context("parsing a PEM root certificate")?).context("adding a root certificate")?;
        count += 1;
    }
    if count == 0 {
        bail!("no PEM certificate among the roots to trust");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("configuring TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only().enable_http1().build())
}

/// An HTTPS client (rustls with aws-lc-rs, HTTP/1.1) whose trust store holds only the given PEM roots.
#[derive(Clone)]
pub struct HttpsClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

/// A response, body read in full.
#[derive(Clone, Debug)]
pub struct HttpsResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The body as text (lossy UTF-8).
    pub body: String,
}

impl HttpsClient {
    /// A client that trusts every certificate of `roots_pem` (one or more PEM certificates) and nothing else.
    pub fn trusting(roots_pem: &str) -> Result<Self> {
        let client =
            Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector_trusting(roots_pem)?);
        Ok(HttpsClient { client, timeout: Duration::from_secs(10) })
    }

    /// GET `url`, failing on connection or TLS errors and after a 10 s timeout (any HTTP status is a success).
    pub async fn get(&self, url: &str) -> Result<HttpsResponse> {
        self.get_with_bearer(url, None).await
    }

    /// GET `url` with an optional `Authorization: Bearer` token.
    pub async fn get_with_bearer(&self, url: &str, token: Option<&str>) -> Result<HttpsResponse> {
        // Pebble rejects requests without a User-Agent (RFC 8555 section 6.1).
        let mut request = hyper::Request::get(url).header(hyper::header::USER_AGENT, "kacme-testenv");
        if let Some(token) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::new())).with_context(|| format!("building a request to {url}"))?;
        self.exchange("GET", url, request).await
    }

    /// GET `url`: the status and the body as bytes (any HTTP status is a success).
    pub async fn get_bytes(&self, url: &str) -> Result<(u16, Vec<u8>)> {
        let request = hyper::Request::get(url)
            .header(hyper::header::USER_AGENT, "kacme-testenv")
            .body(Full::new(Bytes::new()))
            .with_context(|| format!("building a request to {url}"))?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status().as_u16();
            Ok::<_, anyhow::Error>((status, response.into_body().collect().await?.to_bytes().to_vec()))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result.with_context(|| format!("GET {url}")),
            Err(_) => bail!("GET {url}: no answer within {:?}", self.timeout),
        }
    }

    /// POST `body` as JSON to `url` (any HTTP status is a success).
    pub async fn post_json(&self, url: &str, body: &serde_json::Value) -> Result<HttpsResponse> {
        let request = hyper::Request::post(url)
            .header(hyper::header::USER_AGENT, "kacme-testenv")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .with_context(|| format!("building a request to {url}"))?;
        self.exchange("POST", url, request).await
    }

    async fn exchange(&self, method: &str, url: &str, request: hyper::Request<Full<Bytes>>) -> Result<HttpsResponse> {
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>(HttpsResponse { status, body: String::from_utf8_lossy(&body).into_owned() })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result.with_context(|| format!("{method} {url}")),
            Err(_) => bail!("{method} {url}: no answer within {:?}", self.timeout),
        }
    }
}

/// The full error chain of an error, on one line (hyper's errors hide the TLS cause in their sources).
pub fn error_chain(error: &anyhow::Error) -> String {
    error.chain().map(|e| e.to_string()).collect::<Vec<_>>().join(": ")
}
