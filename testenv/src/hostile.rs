//! A misbehaving ACME server: a TLS reverse proxy on loopback in front of a real [`Pebble`], so that the
//! well-behaved parts are real ACME, which can be switched (at start, or at run time through a
//! [`HostileHandle`]) into answers that no CA should send: bodies that never finish or never end, huge
//! bodies, absurd `Retry-After`, a directory of invalid URLs, a permanent `badNonce`, 5xx storms and garbage.
//! It counts every request it receives, so that a test can show that a client backs off instead of looping.
//!
//! The proxy keeps the client's `Host` header, so Pebble builds every URL it hands out (and checks the URL
//! of every signed request) on the proxy's address: a client never sees Pebble's own port.

use crate::pebble::Pebble;
use crate::pki::{TestCa, random_hex};
use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the hostile server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostileBehaviour {
    /// Every request forwarded to Pebble, every answer forwarded back: a well-behaved CA.
    PassThrough,
    /// Every GET and POST: `200` and its headers at once (a `Content-Length` of 4 KiB), then the body trickled
    /// one byte every 3 s, so that it never finishes within any sane client timeout. HEAD (new nonces) is
    /// forwarded, as for the other body behaviours: a client reads no body of a HEAD answer.
    SlowBody,
    /// Every GET and POST: `200`, a chunked JSON-looking body of a few hundred bytes a second that never ends.
    EndlessBody,
    /// Every GET and POST: `200` with a 50 MiB JSON-looking body, sent as fast as the client reads it.
    HugeBody,
    /// Every request: `503` or `429` with a `rateLimited` problem and a `Retry-After` of 999999999 seconds or
    /// a date in the year 9999 (alternately).
    AbsurdRetryAfter,
    /// `GET /dir` answers a directory whose URLs are unusable (in turn: not URLs, another host such as
    /// `http://127.0.0.2:1/`, `file:///etc/passwd`, 100 KB strings, a directory that is not an object);
    /// other requests are forwarded. Start with it: clients load the directory once per account.
    InvalidDirectory,
    /// Every POST: `400 urn:ietf:params:acme:error:badNonce` with a fresh `Replay-Nonce`; GET and HEAD
    /// (directory, new nonces) are forwarded.
    PermanentBadNonce,
    /// Every request: `500`, `502` or `504` with junk bodies (binary, HTML, JSON that is no problem document,
    /// nothing), in turn.
    ServerErrorStorm,
    /// Every POST: `200` or `201` with garbage (in turn: truncated JSON, HTML with a JSON content type, an
    /// order whose fields have the wrong types, an order of invalid URLs); GET and HEAD are forwarded.
    GarbageAnswers,
}

impl HostileBehaviour {
    /// Every behaviour but [`HostileBehaviour::PassThrough`].
    pub const HOSTILE: [HostileBehaviour; 8] = [
        HostileBehaviour::SlowBody,
        HostileBehaviour::EndlessBody,
        HostileBehaviour::HugeBody,
        HostileBehaviour::AbsurdRetryAfter,
        HostileBehaviour::InvalidDirectory,
        HostileBehaviour::PermanentBadNonce,
        HostileBehaviour::ServerErrorStorm,
        HostileBehaviour::GarbageAnswers,
    ];

    /// A lowercase, DNS-label-safe name (`slow-body`), for object names.
    pub fn name(self) -> &'static str {
        match self {
            HostileBehaviour::PassThrough => "pass-through",
            HostileBehaviour::SlowBody => "slow-body",
            HostileBehaviour::EndlessBody => "endless-body",
            HostileBehaviour::HugeBody => "huge-body",
            HostileBehaviour::AbsurdRetryAfter => "absurd-retry-after",
            HostileBehaviour::InvalidDirectory => "invalid-directory",
            HostileBehaviour::PermanentBadNonce => "permanent-bad-nonce",
            HostileBehaviour::ServerErrorStorm => "server-error-storm",
            HostileBehaviour::GarbageAnswers => "garbage-answers",
        }
    }
}

/// The shared state of a hostile server: its behaviour (switchable at any time) and what it received.
#[derive(Clone)]
pub struct HostileHandle {
    shared: Arc<Shared>,
}

struct Shared {
    behaviour: Mutex<HostileBehaviour>,
    requests: AtomicU64,
    by_kind: Mutex<BTreeMap<String, u64>>,
}

impl HostileHandle {
    /// Switches the behaviour; requests that arrive from now on get it (answers under way keep theirs).
    pub fn set_behaviour(&self, behaviour: HostileBehaviour) {
        if let Ok(mut current) = self.shared.behaviour.lock() {
            *current = behaviour;
        }
    }

    /// The current behaviour.
    pub fn behaviour(&self) -> HostileBehaviour {
        self.shared.behaviour.lock().map_or(HostileBehaviour::PassThrough, |b| *b)
    }

    /// Requests received so far (whatever the behaviour was).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests received so far by `METHOD /first-path-segment` (for example `POST /order-plz`).
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        self.shared.by_kind.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Counts a request and returns its number (0 for the first).
    fn count(&self, method: &Method, path: &str) -> u64 {
        let segment = path.trim_start_matches('/').split('/').next().unwrap_or_default();
        if let Ok(mut by_kind) = self.shared.by_kind.lock() {
            *by_kind.entry(format!("{method} /{segment}")).or_insert(0) += 1;
        }
        self.shared.requests.fetch_add(1, Ordering::SeqCst)
    }
}

/// A running hostile ACME server on the loopback address of a [`Pebble`], in front of it; stopped on drop
/// (with every answer it is still trickling).
pub struct HostileAcme {
    handle: HostileHandle,
    directory_url: String,
    listener_root_pem: String,
    issuing_root_pem: String,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for HostileAcme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostileAcme")
            .field("directory_url", &self.directory_url)
            .field("behaviour", &self.handle.behaviour())
            .finish()
    }
}

impl Drop for HostileAcme {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// What every connection task needs.
struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `ip:port` of Pebble's ACME listener.
    authority: String,
    /// `ip:port` of this server.
    own_authority: String,
}

impl HostileAcme {
    /// Starts a hostile server in front of `pebble`, behaving as `behaviour` until told otherwise, on a
    /// free port of Pebble's loopback address, with a TLS certificate from its own throwaway root.
    pub async fn start(pebble: &Pebble, behaviour: HostileBehaviour) -> Result<HostileAcme> {
        let ip = pebble.address().ip();
        let listener_ca = TestCa::root("kacme-testenv hostile ACME listener root")?;
        let listener = listener_ca.issue_server(&[ip.to_string(), "localhost".into()])?;
        let certs = CertificateDer::pem_slice_iter(listener.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("reading the hostile server's certificate")?;
        let key = PrivateKeyDer::from_pem_slice(listener.key_pem.as_bytes()).context("reading its key")?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("configuring TLS versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("configuring the hostile server's certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = tokio::net::TcpListener::bind((ip, 0)).await.context("binding the hostile server")?;
        let own_authority = listener.local_addr()?.to_string();
        let pebble_url: hyper::Uri = pebble.directory_url().parse().context("Pebble's directory URL")?;
        let authority = pebble_url.authority().context("Pebble's directory URL has an authority")?.to_string();
        let upstream =
            Arc::new(Upstream { client: upstream_client(pebble.listener_root_pem())?, authority, own_authority });
        let handle = HostileHandle {
            shared: Arc::new(Shared {
                behaviour: Mutex::new(behaviour),
                requests: AtomicU64::new(0),
                by_kind: Mutex::new(BTreeMap::new()),
            }),
        };
        let directory_url = format!("https://{}/dir", upstream.own_authority);
        let server = tokio::spawn(serve(listener, acceptor, upstream, handle.clone()));
        eprintln!("testenv: hostile ACME server ({}) at {directory_url} in front of Pebble", behaviour.name());
        Ok(HostileAcme {
            handle,
            directory_url,
            listener_root_pem: listener_ca.cert_pem,
            issuing_root_pem: pebble.issuing_root_pem().to_string(),
            server,
        })
    }

    /// The directory URL, `https://<ip>:<port>/dir`.
    pub fn directory_url(&self) -> &str {
        &self.directory_url
    }

    /// The handle that switches the behaviour and reads the request counts (clone it freely).
    pub fn handle(&self) -> &HostileHandle {
        &self.handle
    }

    /// The root of this server's TLS certificate, then Pebble's issuing root: an Issuer's `caBundle`.
    pub fn ca_bundle_pem(&self) -> String {
        format!("{}{}", self.listener_root_pem, self.issuing_root_pem)
    }
}

fn upstream_client(roots_pem: &str) -> Result<Client<HttpsConnector<HttpConnector>, Full<Bytes>>> {
    Ok(Client::builder(TokioExecutor::new()).build(crate::https::connector_trusting(roots_pem)?))
}

/// Accepts connections until aborted; the connection tasks live in a set that aborts them when dropped.
async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    upstream: Arc<Upstream>,
    handle: HostileHandle,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (acceptor, upstream, handle) = (acceptor.clone(), upstream.clone(), handle.clone());
        connections.spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else { return };
            let service = hyper::service::service_fn(move |request| {
                let (upstream, handle) = (upstream.clone(), handle.clone());
                async move { Ok::<_, Infallible>(answer(&upstream, &handle, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

async fn answer(upstream: &Upstream, handle: &HostileHandle, request: Request<Incoming>) -> Response<Body> {
    let number = handle.count(request.method(), request.uri().path());
    let is_post = request.method() == Method::POST;
    // A client reads no body of a HEAD answer: new nonces are forwarded so that bodies meet the requests.
    let is_head = request.method() == Method::HEAD;
    match handle.behaviour() {
        HostileBehaviour::SlowBody | HostileBehaviour::EndlessBody | HostileBehaviour::HugeBody if is_head => {
            forward(upstream, request).await
        }
        HostileBehaviour::SlowBody => slow_body(),
        HostileBehaviour::EndlessBody => endless_body(),
        HostileBehaviour::HugeBody => huge_body(),
        HostileBehaviour::AbsurdRetryAfter => rate_limited(number),
        HostileBehaviour::InvalidDirectory if request.uri().path() == "/dir" => {
            invalid_directory(number, &upstream.own_authority)
        }
        HostileBehaviour::PermanentBadNonce if is_post => bad_nonce(),
        HostileBehaviour::ServerErrorStorm => server_error(number),
        HostileBehaviour::GarbageAnswers if is_post => garbage(number, &upstream.own_authority),
        _ => forward(upstream, request).await,
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

fn response(status: StatusCode, content_type: &str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// A body made of `chunks`, each sent after its delay.
fn trickled(chunks: impl futures::Stream<Item = Bytes> + Send + 'static) -> Body {
    StreamBody::new(chunks.map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)))).boxed_unsync()
}

fn slow_body() -> Response<Body> {
    let bytes =
        futures::stream::once(async { Bytes::from_static(b"{") }).chain(futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Some((Bytes::from_static(b" "), ()))
        }));
    let mut answer = response(StatusCode::OK, "application/json", trickled(bytes));
    answer.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(4096u32));
    answer
}

fn endless_body() -> Response<Body> {
    let opening = futures::stream::once(async { Bytes::from_static(b"{\"status\":\"valid\",\"padding\":[") });
    let padding = futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Bytes::from(b"0,".repeat(32)), ()))
    });
    response(StatusCode::OK, "application/json", trickled(opening.chain(padding)))
}

const HUGE_BYTES: usize = 50 * 1024 * 1024;

fn huge_body() -> Response<Body> {
    const CHUNK: usize = 64 * 1024;
    let opening = Bytes::from_static(b"[");
    let chunk = Bytes::from(b"0,".repeat(CHUNK / 2));
    let chunks = (HUGE_BYTES - 1) / CHUNK;
    let tail = Bytes::from(format!("{}0]", " ".repeat(HUGE_BYTES - 1 - chunks * CHUNK - 2)));
    let bytes = futures::stream::once(async move { opening })
        .chain(futures::stream::iter(std::iter::repeat_n(chunk, chunks)))
        .chain(futures::stream::once(async move { tail }));
    let mut answer = response(StatusCode::OK, "application/json", trickled(bytes));
    answer.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(HUGE_BYTES));
    answer
}

fn problem(status: StatusCode, kind: &str, detail: &str) -> Response<Body> {
    let document = serde_json::json!({"type": kind, "detail": detail, "status": status.as_u16()});
    response(status, "application/problem+json", full(document.to_string()))
}

fn rate_limited(number: u64) -> Response<Body> {
    let (status, retry_after) = match number % 2 {
        0 => (StatusCode::SERVICE_UNAVAILABLE, "999999999"),
        _ => (StatusCode::TOO_MANY_REQUESTS, "Fri, 31 Dec 9999 23:59:59 GMT"),
    };
    let mut answer =
        problem(status, "urn:ietf:params:acme:error:rateLimited", "kacme-testenv hostile CA: come back much later");
    answer.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(retry_after));
    answer
}

fn invalid_directory(number: u64, own_authority: &str) -> Response<Body> {
    let directory = |url: &str| serde_json::json!({"newNonce": url, "newAccount": url, "newOrder": url, "revokeCert": url, "keyChange": url});
    let huge = format!("https://{own_authority}/{}", "a".repeat(100_000));
    let body = match number % 5 {
        0 => directory("not a URL at all").to_string(),
        1 => directory("http://127.0.0.2:1/").to_string(),
        2 => directory("file:///etc/passwd").to_string(),
        3 => serde_json::json!({
            "newNonce": format!("https://{}.test/nonce", "n".repeat(100_000)),
            "newAccount": huge, "newOrder": huge, "revokeCert": huge, "keyChange": huge,
        })
        .to_string(),
        _ => "[\"https://example.test/dir\"]".to_string(),
    };
    response(StatusCode::OK, "application/json", full(body))
}

fn bad_nonce() -> Response<Body> {
    let mut answer =
        problem(StatusCode::BAD_REQUEST, "urn:ietf:params:acme:error:badNonce", "JWS has an invalid anti-replay nonce");
    if let Some(nonce) = random_hex(16).ok().and_then(|hex| HeaderValue::try_from(hex).ok()) {
        answer.headers_mut().insert("replay-nonce", nonce);
    }
    answer.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    answer
}

fn server_error(number: u64) -> Response<Body> {
    match number % 4 {
        0 => response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/octet-stream",
            full(b"\x00\xff\xfe junk \x1b[31m\x07 panic: runtime error".to_vec()),
        ),
        1 => response(StatusCode::BAD_GATEWAY, "text/html", full("<html><body><h1>502 Bad Gateway</h1></body></html>")),
        2 => response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/problem+json",
            full("{\"type\": 12, \"status\": \"x\"}"),
        ),
        _ => response(StatusCode::GATEWAY_TIMEOUT, "text/plain", full(Bytes::new())),
    }
}

fn garbage(number: u64, own_authority: &str) -> Response<Body> {
    let (status, content_type, body) = match number % 4 {
        0 => (StatusCode::OK, "application/json", "{\"status\": \"valid\", \"identifiers\": [".to_string()),
        1 => (StatusCode::CREATED, "application/json", "<html><body>order created</body></html>".to_string()),
        2 => (
            StatusCode::CREATED,
            "text/plain",
            serde_json::json!({
                "status": 42, "identifiers": "everything", "authorizations": [1, 2, 3],
                "finalize": {"nested": true}, "certificate": false, "expires": "yesterday",
            })
            .to_string(),
        ),
        _ => (
            StatusCode::CREATED,
            "application/json",
            serde_json::json!({
                "status": "valid", "identifiers": [{"type": "dns", "value": "*.*.*"}],
                "authorizations": ["not a URL", "file:///etc/shadow"], "finalize": "http://127.0.0.2:1/",
                "certificate": format!("https://{own_authority}/{}", "c".repeat(10_000)),
            })
            .to_string(),
        ),
    };
    let mut answer = response(status, content_type, full(body));
    answer.headers_mut().insert(header::LOCATION, HeaderValue::from_static("::not a location::"));
    answer
}

/// Forwards a request to Pebble (keeping the `Host` header, so that Pebble's URLs and its checks of signed
/// URLs use this server's address) and its answer back; a `502` when Pebble cannot be reached.
async fn forward(upstream: &Upstream, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return response(StatusCode::BAD_REQUEST, "text/plain", full(format!("reading the request: {error}")));
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("https://{}{path}", upstream.authority).parse::<hyper::Uri>() else {
        return response(StatusCode::BAD_REQUEST, "text/plain", full("unusable path"));
    };
    let mut outgoing = Request::new(Full::new(body));
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = uri;
    *outgoing.headers_mut() = without_hop_by_hop(parts.headers);
    let answer = match upstream.client.request(outgoing).await {
        Ok(answer) => answer,
        Err(error) => return response(StatusCode::BAD_GATEWAY, "text/plain", full(format!("Pebble: {error}"))),
    };
    let (mut parts, body) = answer.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return response(StatusCode::BAD_GATEWAY, "text/plain", full(format!("Pebble's answer: {error}")));
        }
    };
    parts.headers = without_hop_by_hop(parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, full(body))
}

fn without_hop_by_hop(mut headers: HeaderMap) -> HeaderMap {
    for name in [header::CONNECTION, header::TRANSFER_ENCODING, header::UPGRADE, header::TE, header::TRAILER] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers
}
