//! `kacme solver`: the HTTP-01 challenge server that solver Pods run.
//!
//! It answers exactly one challenge: `GET /.well-known/acme-challenge/<token>` with the expected Host
//! (any port) gets the key authorization; `/healthz` answers `ok`; everything else is 404. Responses
//! carry `Cache-Control: no-cache` so that no proxy serves a stale answer.

use crate::http_server::ServeOptions;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub use crate::acme::CHALLENGE_PATH_PREFIX;

/// The one challenge a solver answers.
#[derive(Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The identifier being validated: a DNS name or an IP address.
    pub domain: String,
    /// The challenge token (the last path segment).
    pub token: String,
    /// The key authorization to answer with (`token.thumbprint`).
    pub key_authorization: String,
}

impl std::fmt::Debug for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenge").field("domain", &self.domain).field("token", &self.token).finish_non_exhaustive()
    }
}

/// What the solver answers to a request: status and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

/// The answer to a request, from its method, Host header and path alone.
pub fn answer(challenge: &Challenge, method: &Method, host: Option<&str>, path: &str) -> Answer {
    let not_found = Answer { status: StatusCode::NOT_FOUND, body: "not found\n".into() };
    if method != Method::GET {
        return not_found;
    }
    if path == "/healthz" {
        return Answer { status: StatusCode::OK, body: "ok\n".into() };
    }
    let Some(token) = path.strip_prefix(CHALLENGE_PATH_PREFIX) else {
        return not_found;
    };
    if token != challenge.token || !host.is_some_and(|h| host_matches(h, &challenge.domain)) {
        return not_found;
    }
    Answer { status: StatusCode::OK, body: challenge.key_authorization.clone() }
}

/// Whether a Host header names the domain: case-insensitive, port and trailing dot ignored, IPv6 in
/// brackets, IP addresses compared as addresses.
fn host_matches(host: &str, domain: &str) -> bool {
    let host = strip_port(host.trim());
    let host = host.trim_end_matches('.');
    let domain = domain.trim().trim_end_matches('.');
    let domain = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')).unwrap_or(domain);
    match (host.parse::<IpAddr>(), domain.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        (Err(_), Err(_)) => host.eq_ignore_ascii_case(domain),
        _ => false,
    }
}

/// `name:port` → `name`, `[v6]:port` and `[v6]` → `v6`, a bare IPv6 address unchanged.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Serves the challenge on `listener` until `shutdown` completes, then lets requests in flight finish
/// (for at most `drain`) and returns.
pub async fn serve(
    listener: TcpListener,
    challenge: Challenge,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> std::io::Result<()> {
    let challenge = Arc::new(challenge);
    let options = ServeOptions { drain, ..ServeOptions::plain("solver") };
    let handler = move |request: Request<Incoming>| {
        let response = respond(&challenge, &request);
        async move { response }
    };
    crate::http_server::serve(listener, options, handler, shutdown).await;
    Ok(())
}

fn respond(challenge: &Challenge, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let host = request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    let answer = answer(challenge, request.method(), host, request.uri().path());
    // Debug, not info: whoever reaches a solver could otherwise fill its log.
    tracing::debug!(method = %request.method(), path = request.uri().path(), host, status = answer.status.as_u16(), "request");
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = answer.status;
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Resolves when the process gets SIGTERM or SIGINT (Ctrl-C).
pub async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge() -> Challenge {
        Challenge {
            domain: "app.example.test".into(),
            token: "tok-123_ABC".into(),
            key_authorization: "tok-123_ABC.thumb".into(),
        }
    }

    #[test]
    fn the_solver_answers_only_its_challenge() {
        let c = challenge();
        let ok = StatusCode::OK;
        let nf = StatusCode::NOT_FOUND;
        let path = "/.well-known/acme-challenge/tok-123_ABC";
        // (case, method, host, path, expected status)
        let cases: &[(&str, Method, Option<&str>, &str, StatusCode)] = &[
            ("matching host and token", Method::GET, Some("app.example.test"), path, ok),
            ("host with a port", Method::GET, Some("app.example.test:5002"), path, ok),
            ("host in upper case", Method::GET, Some("APP.Example.TEST"), path, ok),
            ("host with a trailing dot", Method::GET, Some("app.example.test."), path, ok),
            ("another host", Method::GET, Some("other.example.test"), path, nf),
            ("a subdomain of the host", Method::GET, Some("x.app.example.test"), path, nf),
            ("no host header", Method::GET, None, path, nf),
            ("another token", Method::GET, Some("app.example.test"), "/.well-known/acme-challenge/other", nf),
            ("a token prefix", Method::GET, Some("app.example.test"), "/.well-known/acme-challenge/tok-123", nf),
            ("a longer token", Method::GET, Some("app.example.test"), "/.well-known/acme-challenge/tok-123_ABCD", nf),
            ("the bare challenge directory", Method::GET, Some("app.example.test"), CHALLENGE_PATH_PREFIX, nf),
            ("the root path", Method::GET, Some("app.example.test"), "/", nf),
            ("a POST", Method::POST, Some("app.example.test"), path, nf),
            ("a HEAD", Method::HEAD, Some("app.example.test"), path, nf),
            ("the health check", Method::GET, Some("anything"), "/healthz", ok),
        ];
        for (case, method, host, path, status) in cases {
            assert_eq!(answer(&c, method, *host, path).status, *status, "{case}");
        }
        assert_eq!(answer(&c, &Method::GET, Some("app.example.test"), path).body, "tok-123_ABC.thumb");
    }

    #[test]
    fn ip_identifiers_match_the_host_header_as_addresses() {
        let v4 = Challenge { domain: "127.0.0.1".into(), ..challenge() };
        let v6 = Challenge { domain: "2001:db8::1".into(), ..challenge() };
        let path = "/.well-known/acme-challenge/tok-123_ABC";
        let cases: &[(&str, &Challenge, &str, StatusCode)] = &[
            ("IPv4 host", &v4, "127.0.0.1", StatusCode::OK),
            ("IPv4 host with port", &v4, "127.0.0.1:80", StatusCode::OK),
            ("another IPv4 host", &v4, "127.0.0.2", StatusCode::NOT_FOUND),
            ("IPv6 host in brackets", &v6, "[2001:db8::1]", StatusCode::OK),
            ("IPv6 host in brackets with port", &v6, "[2001:db8::1]:80", StatusCode::OK),
            ("IPv6 host in another spelling", &v6, "[2001:0db8:0::1]", StatusCode::OK),
            ("another IPv6 host", &v6, "[2001:db8::2]", StatusCode::NOT_FOUND),
            ("a name for an IP identifier", &v4, "localhost", StatusCode::NOT_FOUND),
        ];
        for (case, c, host, status) in cases {
            assert_eq!(answer(c, &Method::GET, Some(host), path).status, *status, "{case}");
        }
    }
}
