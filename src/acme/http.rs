//! The HTTP client under instant-acme: TLS trust from the issuer's CA bundle (every certificate of it),
//! request timeouts, and a metrics hook on every request.

use super::observe::{AcmeAction, AcmeObserver, AcmeOutcome, CURRENT_ACTION};
use bytes::Bytes;
use http::{Method, Request};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to trust the ACME server's TLS certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaTrust {
    /// The operating system's trust store.
    System,
    /// Every certificate of this bundle (DER) is a trust anchor: a private CA is in no system store, and
    /// its bundle may hold a root and intermediates.
    Bundle(Vec<Vec<u8>>),
    /// No verification at all. For throwaway test CAs only.
    InsecureSkipVerify,
}

/// Limits of one HTTP request to the CA: the answer (headers and the whole body) must arrive within
/// [`REQUEST_TIMEOUT`] and be at most [`MAX_ANSWER_BYTES`] long, whatever the CA (an Issuer's `server` is
/// chosen by whoever may create Issuers) sends, so that no CA can hold a worker or the memory.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read from a CA: far above any directory, order or certificate chain.
pub(crate) const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// The longest `Retry-After` a CA may ask for; longer waits are clamped to it.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// An instant-acme HTTP client that trusts what the issuer says and reports every request.
pub(crate) struct MeteredHttp {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    directory_url: String,
    /// The directory's host: the only host whose URLs are followed.
    directory_host: Option<String>,
    observer: Arc<dyn AcmeObserver>,
}

impl MeteredHttp {
    pub(crate) fn new(
        trust: &CaTrust,
        directory_url: &str,
        observer: Arc<dyn AcmeObserver>,
    ) -> Result<MeteredHttp, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?;
        let config = match trust {
            CaTrust::Bundle(certificates) => {
                let mut roots = RootCertStore::empty();
                for (index, der) in certificates.iter().enumerate() {
                    roots
                        .add(CertificateDer::from(der.clone()))
                        .map_err(|e| format!("certificate {index} of the CA bundle cannot be trusted: {e}"))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            CaTrust::System => {
                let mut roots = RootCertStore::empty();
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err("no system CA certificates found; give the issuer a caBundle".into());
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            CaTrust::InsecureSkipVerify => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth(),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https);
        let directory_host = host_of(&directory_url.parse().map_err(|e| format!("the directory URL: {e}"))?);
        Ok(MeteredHttp { client, directory_url: directory_url.to_string(), directory_host, observer })
    }
}

impl HttpClient for MeteredHttp {
    fn request(
        &self,
        request: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let is_nonce = request.method() == Method::HEAD;
        let is_directory = request.method() == Method::GET && request.uri() == self.directory_url.as_str();
        let action = if is_nonce {
            AcmeAction::Nonce
        } else if is_directory {
            AcmeAction::Directory
        } else {
            CURRENT_ACTION.try_with(|action| *action).unwrap_or(AcmeAction::Directory)
        };
        if let Err(refused) = same_host(self.directory_host.as_deref(), &self.directory_url, request.uri()) {
            return Box::pin(async move { Err(instant_acme::Error::Other(refused.into())) });
        }
        let started = Instant::now();
        let response = self.client.request(request);
        let observer = self.observer.clone();
        let (directory_url, directory_host) = (self.directory_url.clone(), self.directory_host.clone());
        Box::pin(async move {
            let exchange = async move {
                let response = response.await.map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
                let status = response.status();
                let (mut parts, body) = response.into_parts();
                let body = read_bounded(body).await?;
                clamp_retry_after(&mut parts.headers);
                let failed = status.is_client_error() || status.is_server_error();
                let answer = if (is_directory || is_nonce) && !status.is_success() {
                    // instant-acme reads any directory answer as a directory and reports any failed nonce
                    // request without its status: both would lose what the CA said.
                    Err(error_answer(status, &body))
                } else if is_directory {
                    check_directory(&directory_url, directory_host.as_deref(), &body)
                        .map(|()| {
                            BytesResponse::from(http::Response::from_parts(parts, http_body_util::Full::new(body)))
                        })
                        .map_err(|message| instant_acme::Error::Other(message.into()))
                } else if failed {
                    Ok(with_problem_document(http::Response::from_parts(parts, body)))
                } else {
                    Ok(BytesResponse::from(http::Response::from_parts(parts, http_body_util::Full::new(body))))
                };
                Ok::<_, instant_acme::Error>((status, answer))
            };
            let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange).await;
            let outcome = match &result {
                Ok(Ok((status, _))) => AcmeOutcome::from_status(status.as_u16()),
                _ => AcmeOutcome::NetworkError,
            };
            observer.request_finished(action, outcome, started.elapsed());
            match result {
                Ok(Ok((_, answer))) => answer,
                Ok(Err(error)) => Err(error),
                Err(_) => Err(instant_acme::Error::Other(
                    format!("no complete answer from the CA within {REQUEST_TIMEOUT:?}").into(),
                )),
            }
        })
    }
}

/// A [`MeteredHttp`] shared between instant-acme and kacme's own signed requests.
#[derive(Clone)]
pub(crate) struct SharedHttp(pub(crate) Arc<MeteredHttp>);

impl HttpClient for SharedHttp {
    fn request(
        &self,
        request: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        self.0.request(request)
    }
}

/// An error answer to a directory or nonce request, as the CA's problem (or one that keeps the HTTP status of
/// an answer without a problem document).
fn error_answer(status: http::StatusCode, body: &[u8]) -> instant_acme::Error {
    let document = problem_document_for(status, body).unwrap_or_else(|| Bytes::copy_from_slice(body));
    match serde_json::from_slice::<instant_acme::Problem>(&document) {
        Ok(problem) => instant_acme::Error::Api(problem),
        Err(_) => instant_acme::Error::Api(instant_acme::Problem {
            r#type: None,
            detail: Some(format!("HTTP {status} with an unreadable problem document")),
            status: Some(status.as_u16()),
            subproblems: Vec::new(),
        }),
    }
}

/// The URLs of a directory that a client needs (RFC 8555 section 7.1.1), and those it may use.
const REQUIRED_DIRECTORY_URLS: [&str; 3] = ["newNonce", "newAccount", "newOrder"];
const OPTIONAL_DIRECTORY_URLS: [&str; 4] = ["newAuthz", "revokeCert", "keyChange", "renewalInfo"];

/// Checks a directory before instant-acme uses it: a JSON object whose resource URLs are `https` URLs on the
/// directory's host. instant-acme panics on a `newNonce` that is not a URI, and a URL on another host or of
/// another scheme would be refused (or fail) only at its first use, with a message naming no directory.
fn check_directory(directory_url: &str, directory_host: Option<&str>, body: &[u8]) -> Result<(), String> {
    let unusable = |why: String| format!("the CA's directory {directory_url} is unusable: {why}");
    let directory: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| unusable(format!("not a JSON object ({e})")))?;
    for name in REQUIRED_DIRECTORY_URLS.iter().chain(&OPTIONAL_DIRECTORY_URLS) {
        let text = match directory.get(*name) {
            None if REQUIRED_DIRECTORY_URLS.contains(name) => return Err(unusable(format!("it has no {name}"))),
            None => continue,
            Some(value) => value.as_str().ok_or_else(|| unusable(format!("its {name} is not a string")))?,
        };
        let shown = shortened(text);
        let url: http::Uri = text.parse().map_err(|_| unusable(format!("its {name} {shown:?} is not a URL")))?;
        if url.scheme_str() != Some("https") {
            return Err(unusable(format!("its {name} {shown:?} is not an https URL")));
        }
        same_host(directory_host, directory_url, &url).map_err(|_| {
            unusable(format!("its {name} {shown:?} is not on the host of the directory; refusing to follow it"))
        })?;
    }
    Ok(())
}

/// At most 100 characters of a text a CA sent, for messages.
fn shortened(text: &str) -> String {
    match text.char_indices().nth(100) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// An error answer as instant-acme can read it. instant-acme reads the body of every error answer as a
/// problem document (RFC 8555 section 6.7); an answer without one (an empty 404 for an order the CA does not
/// know, a proxy's HTML 502 page) would become an unreadable-JSON error and its HTTP status would be lost.
fn with_problem_document(response: http::Response<Bytes>) -> BytesResponse {
    let (mut parts, bytes) = response.into_parts();
    let bytes = match problem_document_for(parts.status, &bytes) {
        Some(document) => {
            parts
                .headers
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/problem+json"));
            parts.headers.remove(http::header::CONTENT_LENGTH);
            document
        }
        None => bytes,
    };
    BytesResponse::from(http::Response::from_parts(parts, http_body_util::Full::new(bytes)))
}

/// Whether `url` is on the host of the directory: every URL an ACME server hands out (nonces, accounts,
/// orders, authorizations, challenges, certificates) is followed only there. A CA (whoever may create an
/// Issuer chooses it) must not make the operator send requests to other hosts of the cluster's network.
fn same_host(directory_host: Option<&str>, directory_url: &str, url: &http::Uri) -> Result<(), String> {
    let host = host_of(url);
    match (directory_host, host) {
        (Some(directory), Some(host)) if directory == host => Ok(()),
        (_, host) => Err(format!(
            "the CA sent a URL on {} instead of the host of its directory {directory_url}; refusing to follow it",
            host.unwrap_or_else(|| "no host".into())
        )),
    }
}

/// Checks the account URL a CA handed out at registration (its `Location` header, which instant-acme takes
/// without a look): an absolute `https` URL on the host of the directory. Anything else (a CA that answers
/// the registration with a junk `Location`) is no account, however the CA's status code reads.
pub(crate) fn check_account_url(directory_url: &str, account_url: &str) -> Result<(), String> {
    let shown = shortened(account_url);
    let url: http::Uri = account_url
        .parse()
        .map_err(|_| format!("the CA answered the registration with an account URL that is no URL: {shown:?}"))?;
    if url.scheme_str() != Some("https") {
        return Err(format!("the CA answered the registration with an account URL that is not https: {shown:?}"));
    }
    let directory_host = directory_url.parse::<http::Uri>().ok().as_ref().and_then(host_of);
    same_host(directory_host.as_deref(), directory_url, &url)
}

/// The host of a URL, lowercase.
fn host_of(url: &http::Uri) -> Option<String> {
    url.host().map(str::to_ascii_lowercase)
}

/// The whole body of an answer, at most [`MAX_ANSWER_BYTES`] long.
async fn read_bounded(body: hyper::body::Incoming) -> Result<Bytes, instant_acme::Error> {
    use http_body_util::BodyExt as _;
    match http_body_util::Limited::new(body, MAX_ANSWER_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(instant_acme::Error::Other(
            format!("the CA's answer is longer than {MAX_ANSWER_BYTES} bytes; refusing to read it").into(),
        )),
        Err(error) => Err(instant_acme::Error::Other(error)),
    }
}

/// Clamps `Retry-After` to [`MAX_RETRY_AFTER`]: a CA must not park an order (or a worker) for days. A value
/// that is neither seconds nor an HTTP date is dropped, so that the client's own schedule applies.
fn clamp_retry_after(headers: &mut http::HeaderMap) {
    let Some(value) = headers.get(http::header::RETRY_AFTER) else { return };
    let wait = value.to_str().ok().and_then(|text| {
        let text = text.trim();
        match text.parse::<u64>() {
            Ok(seconds) => Some(Duration::from_secs(seconds)),
            Err(_) => httpdate::parse_http_date(text)
                .ok()
                .map(|at| at.duration_since(std::time::SystemTime::now()).unwrap_or_default()),
        }
    });
    match wait {
        Some(wait) if wait > MAX_RETRY_AFTER => {
            headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(MAX_RETRY_AFTER.as_secs()));
        }
        Some(_) => {}
        None => {
            headers.remove(http::header::RETRY_AFTER);
        }
    }
}

/// A problem document that keeps the HTTP status (and the start of the body) of an error answer whose body
/// is not one; `None` when it is one.
fn problem_document_for(status: http::StatusCode, body: &[u8]) -> Option<Bytes> {
    if serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|value| value.is_object()) {
        return None;
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
    let excerpt = super::error::ca_text(&text, MAX_EXCERPT_CHARS);
    let detail = if excerpt.is_empty() {
        format!("HTTP {status} with no problem document")
    } else if looks_like_markup(&excerpt) {
        // A proxy's or a login page's HTML says nothing a user can act on, and is nothing to show verbatim.
        format!("HTTP {status} with an HTML page instead of a problem document")
    } else {
        format!("HTTP {status}: {excerpt}")
    };
    let document = serde_json::json!({"type": "about:blank", "detail": detail, "status": status.as_u16()});
    Some(Bytes::from(document.to_string()))
}

/// The most characters of a non-problem error body that kacme quotes.
const MAX_EXCERPT_CHARS: usize = 200;

/// Whether a body is HTML or XML rather than text: it starts with a tag or a doctype.
fn looks_like_markup(text: &str) -> bool {
    text.trim_start().starts_with('<')
}

/// Accepts any server certificate, but still checks handshake signatures. Only for `skipTLSVerify`.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::{AcmeError, Retry};

    fn classified(status: u16, body: &str) -> AcmeError {
        let status = http::StatusCode::from_u16(status).unwrap();
        let document = problem_document_for(status, body.as_bytes()).expect("a made-up problem document");
        let problem: instant_acme::Problem = serde_json::from_slice(&document).unwrap();
        AcmeError::classify(AcmeAction::Order, instant_acme::Error::Api(problem))
    }

    #[test]
    fn an_error_answer_without_a_problem_document_keeps_its_status() {
        let gone = classified(404, "");
        assert_eq!(gone.retry, Retry::Never, "an order the CA does not know is not retried: {gone}");
        assert!(gone.to_string().contains("HTTP 404 Not Found with no problem document"), "{gone}");
        let proxy = classified(502, "<html>\n  <h1>Bad   Gateway</h1></html>");
        assert!(matches!(proxy.retry, Retry::After(_)), "a failing proxy is retried: {proxy}");
        assert!(matches!(classified(429, "slow down").retry, Retry::After(_)));
        // (case, status, body, shown)
        let long = "z".repeat(5000);
        let cases = [
            (
                "HTML is named, not quoted",
                502,
                "<html>\n  <h1>Bad   Gateway</h1></html>",
                "HTTP 502 Bad Gateway with an HTML page instead of a problem document".to_string(),
            ),
            (
                "a doctype is HTML",
                503,
                "  <!DOCTYPE html><p>down",
                "HTTP 503 Service Unavailable with an HTML page instead of a problem document".to_string(),
            ),
            ("plain text is quoted", 429, "slow\r\ndown", "HTTP 429 Too Many Requests: slow down".to_string()),
            (
                "control characters go",
                500,
                "boom\u{1b}[2J\0!",
                "HTTP 500 Internal Server Error: boom [2J !".to_string(),
            ),
            ("long text is cut", 500, long.as_str(), format!("HTTP 500 Internal Server Error: {}…", "z".repeat(199))),
        ];
        for (case, status, body, shown) in cases {
            let error = classified(status, body);
            assert_eq!(error.problem.as_ref().map(|p| p.detail.clone()), Some(shown), "{case}");
        }
    }

    #[test]
    fn a_problem_document_is_left_as_the_ca_sent_it() {
        let body = br#"{"type":"urn:ietf:params:acme:error:malformed","detail":"no such order","status":404}"#;
        assert_eq!(problem_document_for(http::StatusCode::NOT_FOUND, body), None);
    }

    fn retry_after(value: Option<&str>) -> Option<String> {
        let mut headers = http::HeaderMap::new();
        if let Some(value) = value {
            headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_str(value).unwrap());
        }
        clamp_retry_after(&mut headers);
        headers.get(http::header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn retry_after_is_kept_when_sane_clamped_when_absurd_and_dropped_when_unreadable() {
        let in_a_year = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(365 * 86400));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
        // (case, header, expected header) -- instant-acme adds u64::MAX seconds to now and panics.
        let cases = [
            ("absent", None, None),
            ("a few seconds", Some("5"), Some("5")),
            ("an hour", Some("3600"), Some("3600")),
            ("u64::MAX seconds", Some("18446744073709551615"), Some("3600")),
            ("beyond u64", Some("99999999999999999999999"), None),
            ("a date next year", Some(in_a_year.as_str()), Some("3600")),
            ("a date in a minute", Some(soon.as_str()), Some(soon.as_str())),
            ("garbage", Some("soon"), None),
            ("negative", Some("-5"), None),
        ];
        for (case, header, expected) in cases {
            assert_eq!(retry_after(header).as_deref(), expected, "{case}");
        }
    }

    #[test]
    fn a_directory_whose_urls_are_unusable_is_refused_with_a_short_message() {
        let directory = "https://ca.internal:9000/dir";
        let host = Some("ca.internal");
        let with = |url: &str| {
            serde_json::json!({"newNonce": url, "newAccount": url, "newOrder": url, "revokeCert": url}).to_string()
        };
        let huge = format!("https://{}.test/nonce", "n".repeat(100_000));
        // (case, body, accepted)
        let cases = [
            ("Pebble's", with("https://ca.internal:9000/nonce-plz"), true),
            ("another port of the same host", with("https://ca.internal:14000/x"), true),
            ("not URLs", with("not a URL at all"), false),
            ("another host", with("http://127.0.0.2:1/"), false),
            ("a file", with("file:///etc/passwd"), false),
            ("a huge host", with(&huge), false),
            ("no newNonce", serde_json::json!({"newAccount": "https://ca.internal/a"}).to_string(), false),
            ("a number", serde_json::json!({"newNonce": 7}).to_string(), false),
            ("not an object", "[\"https://ca.internal/dir\"]".to_string(), false),
            ("not JSON", "<html>".to_string(), false),
        ];
        for (case, body, accepted) in cases {
            let result = check_directory(directory, host, body.as_bytes());
            assert_eq!(result.is_ok(), accepted, "{case}: {result:?}");
            if let Err(message) = result {
                assert!(message.len() < 400 && message.contains(directory), "{case}: {message}");
            }
        }
    }

    #[test]
    fn a_failed_directory_or_nonce_request_keeps_what_the_ca_said() {
        let limited = br#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"later","status":503}"#;
        let error =
            AcmeError::classify(AcmeAction::Directory, error_answer(http::StatusCode::SERVICE_UNAVAILABLE, limited));
        assert!(error.is_problem("rateLimited") && matches!(error.retry, Retry::After(_)), "{error}");
        let empty = AcmeError::classify(AcmeAction::Nonce, error_answer(http::StatusCode::BAD_GATEWAY, b""));
        assert!(error_text_has(&empty, "502 Bad Gateway") && matches!(empty.retry, Retry::After(_)), "{empty}");
        let junk = error_answer(http::StatusCode::INTERNAL_SERVER_ERROR, br#"{"type": 12, "status": "x"}"#);
        let junk = AcmeError::classify(AcmeAction::Directory, junk);
        assert!(error_text_has(&junk, "500") && matches!(junk.retry, Retry::After(_)), "{junk}");
    }

    fn error_text_has(error: &AcmeError, text: &str) -> bool {
        error.to_string().contains(text)
    }

    #[test]
    fn an_account_url_is_an_https_url_on_the_directory_host() {
        let directory = "https://ca.internal:9000/acme/directory";
        let long = format!("https://ca.internal/{}", "a".repeat(1_000));
        // Longer than any URI the HTTP client can send.
        let huge = format!("https://ca.internal/{}", "a".repeat(100_000));
        // (account URL, accepted)
        let cases = [
            ("https://ca.internal:9000/acme/account/1", true),
            ("https://ca.internal/my-account/7", true),
            (long.as_str(), true),
            (huge.as_str(), false),
            ("::not a location::", false),
            ("", false),
            ("/acme/account/1", false),
            ("http://ca.internal:9000/acme/account/1", false),
            ("https://127.0.0.2:1/account", false),
            ("file:///etc/passwd", false),
        ];
        for (url, accepted) in cases {
            let result = check_account_url(directory, url);
            assert_eq!(result.is_ok(), accepted, "{url:.60}: {result:?}");
            if let Err(message) = result {
                assert!(message.len() < 300, "a short message: {message}");
            }
        }
    }

    #[test]
    fn only_urls_on_the_directory_host_are_followed() {
        let directory = "https://ca.internal:9000/acme/directory";
        // (url, followed)
        let cases = [
            ("https://ca.internal:9000/acme/new-order", true),
            ("https://CA.internal/acme/cert/1", true),
            ("https://169.254.169.254/latest/meta-data", false),
            ("https://kubernetes.default.svc/api", false),
            ("https://ca.internal.evil.test/acme/order", false),
            ("/relative/path", false),
        ];
        for (url, followed) in cases {
            let result = same_host(host_of(&directory.parse().unwrap()).as_deref(), directory, &url.parse().unwrap());
            assert_eq!(result.is_ok(), followed, "{url}: {result:?}");
        }
    }
}
