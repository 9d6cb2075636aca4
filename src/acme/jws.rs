//! The few requests kacme signs itself, because instant-acme 0.8.5 cannot send what they carry (a newOrder
//! with `notAfter`, a newAccount for a stored key with contact and binding): RFC 8555 section 6.2 flattened
//! JWS (ES256), sent through the account's bounded, metered HTTP client, with rejected nonces retried.

use super::error::{AcmeError, DEFAULT_RETRY_DELAY, Retry};
use super::http::SharedHttp;
use super::observe::AcmeAction;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::EcdsaKeyPair;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use serde_json::{Value, json};

/// RFC 8555 section 6.1: every request carries a User-Agent (Pebble refuses requests without one).
const USER_AGENT: &str = concat!("kacme/", env!("CARGO_PKG_VERSION"));

/// How often a request rejected for its nonce is sent again with the nonce the CA offered.
const BAD_NONCE_ATTEMPTS: u32 = 3;

/// How a signed request names its key (RFC 8555 section 6.2): the account URL, or the public key itself (for
/// newAccount, before there is an account).
#[derive(Clone, Copy, Debug)]
pub(crate) enum KeyId<'a> {
    /// `kid`: the account URL.
    Account(&'a str),
    /// `jwk`: the public key as JWK text.
    Jwk(&'a str),
}

/// One signed POST: to `url` (the directory's `name`, for messages), `payload` signed with `key`.
pub(crate) struct SignedPost<'a> {
    pub(crate) action: AcmeAction,
    /// What the request is, for messages: `newOrder`, `newAccount`.
    pub(crate) name: &'a str,
    pub(crate) url: &'a str,
    pub(crate) new_nonce_url: &'a str,
    pub(crate) key: &'a EcdsaKeyPair,
    pub(crate) key_id: KeyId<'a>,
    pub(crate) payload: &'a Value,
}

impl SignedPost<'_> {
    /// Sends the request (again with the CA's fresh nonce after a rejected one) and returns the `Location` of
    /// the CA's success answer: the URL of what it created or found.
    pub(crate) async fn send_for_location(&self, http: &SharedHttp) -> Result<String, AcmeError> {
        let mut nonce = get_nonce(http, self.new_nonce_url).await?;
        let mut attempts = 0;
        loop {
            let request = Request::builder()
                .method(Method::POST)
                .uri(self.url)
                .header(http::header::CONTENT_TYPE, "application/jose+json")
                .header(http::header::USER_AGENT, USER_AGENT)
                .body(BodyWrapper::from(self.sign(&nonce)?))
                .map_err(|e| AcmeError::fatal(self.action, format!("building the {} request: {e}", self.name)))?;
            let (parts, body) = exchange(http, request, self.action).await?;
            if parts.status.is_success() {
                return parts
                    .headers
                    .get(http::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .ok_or_else(|| AcmeError {
                        action: self.action,
                        retry: Retry::After(DEFAULT_RETRY_DELAY),
                        problem: None,
                        message: format!("the CA answered {} without a Location header", self.name),
                    });
            }
            let error = problem_error(self.action, parts.status, &body);
            let offered = parts.headers.get("replay-nonce").and_then(|v| v.to_str().ok()).map(str::to_string);
            match offered {
                Some(offered) if error.is_problem("badNonce") && attempts < BAD_NONCE_ATTEMPTS => {
                    attempts += 1;
                    nonce = offered;
                }
                _ => return Err(error),
            }
        }
    }

    /// The flattened JWS of the request.
    fn sign(&self, nonce: &str) -> Result<Vec<u8>, AcmeError> {
        let mut protected = json!({"alg": "ES256", "nonce": nonce, "url": self.url});
        match self.key_id {
            KeyId::Account(url) => protected["kid"] = json!(url),
            KeyId::Jwk(jwk) => {
                protected["jwk"] = serde_json::from_str(jwk)
                    .map_err(|e| AcmeError::fatal(self.action, format!("the account key's JWK: {e}")))?;
            }
        }
        let protected = URL_SAFE_NO_PAD.encode(protected.to_string());
        let payload = URL_SAFE_NO_PAD.encode(self.payload.to_string());
        let signature = self
            .key
            .sign(&SystemRandom::new(), format!("{protected}.{payload}").as_bytes())
            .map_err(|_| AcmeError::fatal(self.action, format!("signing the {} request failed", self.name)))?;
        let signature = URL_SAFE_NO_PAD.encode(signature.as_ref());
        Ok(json!({"protected": protected, "payload": payload, "signature": signature}).to_string().into_bytes())
    }
}

/// The CA's directory, read through the account's client.
pub(crate) async fn get_directory(
    http: &SharedHttp,
    directory_url: &str,
) -> Result<serde_json::Map<String, Value>, AcmeError> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(directory_url)
        .header(http::header::USER_AGENT, USER_AGENT)
        .body(BodyWrapper::default())
        .map_err(|e| AcmeError::fatal(AcmeAction::Directory, format!("building the directory request: {e}")))?;
    let (_, body) = exchange(http, request, AcmeAction::Directory).await?;
    serde_json::from_slice(&body)
        .map_err(|e| AcmeError::fatal(AcmeAction::Directory, format!("the CA's directory is not JSON: {e}")))
}

/// The URL the directory names `name` (`newNonce`, `newOrder`, ...).
pub(crate) fn directory_url_of(directory: &serde_json::Map<String, Value>, name: &str) -> Result<String, AcmeError> {
    directory
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| AcmeError::fatal(AcmeAction::Directory, format!("the CA's directory has no {name}")))
}

async fn get_nonce(http: &SharedHttp, new_nonce_url: &str) -> Result<String, AcmeError> {
    let request = Request::builder()
        .method(Method::HEAD)
        .uri(new_nonce_url)
        .header(http::header::USER_AGENT, USER_AGENT)
        .body(BodyWrapper::default())
        .map_err(|e| AcmeError::fatal(AcmeAction::Nonce, format!("building the newNonce request: {e}")))?;
    let (parts, _) = exchange(http, request, AcmeAction::Nonce).await?;
    parts.headers.get("replay-nonce").and_then(|v| v.to_str().ok()).map(str::to_string).ok_or_else(|| AcmeError {
        action: AcmeAction::Nonce,
        retry: Retry::After(DEFAULT_RETRY_DELAY),
        problem: None,
        message: "the CA's newNonce answer has no Replay-Nonce".into(),
    })
}

/// One request through the bounded, metered client: the answer's head and its whole body.
async fn exchange(
    http: &SharedHttp,
    request: Request<BodyWrapper<Bytes>>,
    action: AcmeAction,
) -> Result<(http::response::Parts, Bytes), AcmeError> {
    let BytesResponse { parts, mut body } = http.request(request).await.map_err(|e| AcmeError::classify(action, e))?;
    let body = body.into_bytes().await.map_err(|e| AcmeError::classify(action, instant_acme::Error::Other(e)))?;
    Ok((parts, body))
}

/// A failed answer as kacme's error: the CA's problem document (one is made up for answers without).
fn problem_error(action: AcmeAction, status: http::StatusCode, body: &[u8]) -> AcmeError {
    let mut problem = serde_json::from_slice::<instant_acme::Problem>(body).unwrap_or_else(|_| instant_acme::Problem {
        r#type: None,
        detail: Some(format!("HTTP {status} with an unreadable problem document")),
        status: Some(status.as_u16()),
        subproblems: Vec::new(),
    });
    problem.status.get_or_insert(status.as_u16());
    AcmeError::from_ca_problem(action, &problem)
}
