//! The optional self-check: before telling the CA a challenge is ready, fetch it over HTTP as the CA will.

use super::challenge::{CHALLENGE_PATH_PREFIX, Http01Challenge};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use std::net::SocketAddr;
use std::time::Duration;

/// How to check that a challenge answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfCheck {
    /// Give up (final error) when a challenge still does not answer this long after it was presented.
    pub deadline: Duration,
    /// Connect here instead of resolving the identifier (for example an ingress controller's address).
    pub connect_to: Option<SocketAddr>,
    /// The port to dial when resolving the identifier: 80 for HTTP-01.
    pub port: u16,
}

impl Default for SelfCheck {
    fn default() -> Self {
        SelfCheck { deadline: Duration::from_secs(120), connect_to: None, port: 80 }
    }
}

const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

impl SelfCheck {
    /// One attempt: `Ok` when `http://<identifier>/.well-known/acme-challenge/<token>` answers 200 with the
    /// key authorization; otherwise what went wrong.
    pub async fn check(&self, challenge: &Http01Challenge) -> Result<(), String> {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.fetch(challenge)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
        }
    }

    async fn fetch(&self, challenge: &Http01Challenge) -> Result<(), String> {
        let host = match challenge.identifier.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => challenge.identifier.clone(),
        };
        let address = match self.connect_to {
            Some(address) => address,
            None => tokio::net::lookup_host((challenge.identifier.as_str(), self.port))
                .await
                .map_err(|e| format!("cannot resolve {}: {e}", challenge.identifier))?
                .next()
                .ok_or_else(|| format!("{} resolves to no address", challenge.identifier))?,
        };
        let stream =
            tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connecting to {address}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {address}: {e}"))?;
        tokio::spawn(connection);
        let path = format!("{}{}", CHALLENGE_PATH_PREFIX, challenge.token);
        let request = hyper::Request::get(&path)
            .header(hyper::header::HOST, host)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| format!("GET {path}: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), 4096)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if status != hyper::StatusCode::OK {
            return Err(format!("GET {path} answered {status}"));
        }
        if body.as_ref() != challenge.key_authorization.as_bytes() {
            return Err(format!("GET {path} answered something other than the key authorization"));
        }
        Ok(())
    }
}
