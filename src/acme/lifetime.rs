//! New orders that ask for a lifetime (RFC 8555 section 7.4, `notAfter` only, so that the CA may backdate
//! `notBefore`). instant-acme 0.8.5 cannot send one, so kacme signs this one request itself (a flattened
//! JWS, section 6.2, ES256 with the account key and the account URL as `kid`) and then continues the order
//! through instant-acme by its URL, as when resuming an order.

use super::error::{AcmeError, DEFAULT_RETRY_DELAY, Retry};
use super::http::SharedHttp;
use super::observe::{AcmeAction, labelled};
use super::order::OrderOptions;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient, Identifier};
use serde_json::{Value, json};
use std::time::SystemTime;

/// RFC 8555 section 6.1: every request carries a User-Agent (Pebble refuses requests without one).
const USER_AGENT: &str = concat!("kacme/", env!("CARGO_PKG_VERSION"));

/// How often a newOrder rejected for its nonce is sent again with the nonce the CA offered.
const BAD_NONCE_ATTEMPTS: u32 = 3;

/// What kacme itself reads of the CA's directory.
#[derive(Clone, Debug)]
struct Endpoints {
    new_nonce: String,
    new_order: String,
    /// Whether the directory offers ACME Renewal Information (RFC 9773 `renewalInfo`).
    renewal_info: bool,
}

/// Signs and sends newOrder requests with a lifetime, with the account's key and HTTP client.
pub(crate) struct LifetimeOrders {
    key: EcdsaKeyPair,
    http: SharedHttp,
    directory_url: String,
    /// What kacme reads of the directory, once per account.
    endpoints: std::sync::OnceLock<Endpoints>,
}

impl LifetimeOrders {
    /// `pkcs8` is the account key (PKCS#8 ECDSA P-256).
    pub(crate) fn new(pkcs8: &[u8], http: SharedHttp, directory_url: &str) -> Result<LifetimeOrders, AcmeError> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
            .map_err(|_| AcmeError::fatal(AcmeAction::Account, "the account key is not an ECDSA P-256 key"))?;
        Ok(LifetimeOrders {
            key,
            http,
            directory_url: directory_url.to_string(),
            endpoints: std::sync::OnceLock::new(),
        })
    }

    /// Places a new order for `identifiers` ending at `not_after` (with the profile and `replaces` of
    /// `options`) and returns its URL.
    pub(crate) async fn new_order(
        &self,
        account_url: &str,
        identifiers: &[Identifier],
        not_after: SystemTime,
        options: &OrderOptions,
    ) -> Result<String, AcmeError> {
        labelled(AcmeAction::Order, self.new_order_inner(account_url, identifiers, not_after, options)).await
    }

    async fn new_order_inner(
        &self,
        account_url: &str,
        identifiers: &[Identifier],
        not_after: SystemTime,
        options: &OrderOptions,
    ) -> Result<String, AcmeError> {
        let Endpoints { new_nonce, new_order, .. } = self.endpoints().await?;
        let payload = new_order_payload(identifiers, not_after, options)?;
        let mut nonce = self.nonce(&new_nonce).await?;
        let mut attempts = 0;
        loop {
            let body = self.sign(account_url, &nonce, &new_order, &payload)?;
            let request = Request::builder()
                .method(Method::POST)
                .uri(&new_order)
                .header(http::header::CONTENT_TYPE, "application/jose+json")
                .header(http::header::USER_AGENT, USER_AGENT)
                .body(BodyWrapper::from(body))
                .map_err(|e| AcmeError::fatal(AcmeAction::Order, format!("building the newOrder request: {e}")))?;
            let (parts, body) = self.exchange(request).await?;
            if parts.status.is_success() {
                return parts
                    .headers
                    .get(http::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .ok_or_else(|| AcmeError {
                        action: AcmeAction::Order,
                        retry: Retry::After(DEFAULT_RETRY_DELAY),
                        problem: None,
                        message: "the CA answered newOrder without the order's URL (no Location header)".into(),
                    });
            }
            let error = problem_error(parts.status, &body);
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

    /// Whether the CA's directory offers ACME Renewal Information (RFC 9773): read once, then kept.
    pub(crate) async fn offers_renewal_info(&self) -> Result<bool, AcmeError> {
        Ok(self.endpoints().await?.renewal_info)
    }

    /// The directory's `newNonce` and `newOrder` URLs and whether it offers `renewalInfo`: read at the first
    /// need, then kept.
    async fn endpoints(&self) -> Result<Endpoints, AcmeError> {
        if let Some(endpoints) = self.endpoints.get() {
            return Ok(endpoints.clone());
        }
        let directory = self.directory().await?;
        let url_of = |name: &str| {
            directory
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| AcmeError::fatal(AcmeAction::Directory, format!("the CA's directory has no {name}")))
        };
        let endpoints = Endpoints {
            new_nonce: url_of("newNonce")?,
            new_order: url_of("newOrder")?,
            renewal_info: directory.get("renewalInfo").and_then(Value::as_str).is_some_and(|u| !u.is_empty()),
        };
        Ok(self.endpoints.get_or_init(|| endpoints).clone())
    }

    async fn directory(&self) -> Result<serde_json::Map<String, Value>, AcmeError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(&self.directory_url)
            .header(http::header::USER_AGENT, USER_AGENT)
            .body(BodyWrapper::default())
            .map_err(|e| AcmeError::fatal(AcmeAction::Directory, format!("building the directory request: {e}")))?;
        let (_, body) = self.exchange(request).await?;
        serde_json::from_slice(&body)
            .map_err(|e| AcmeError::fatal(AcmeAction::Directory, format!("the CA's directory is not JSON: {e}")))
    }

    async fn nonce(&self, new_nonce: &str) -> Result<String, AcmeError> {
        let request = Request::builder()
            .method(Method::HEAD)
            .uri(new_nonce)
            .header(http::header::USER_AGENT, USER_AGENT)
            .body(BodyWrapper::default())
            .map_err(|e| AcmeError::fatal(AcmeAction::Nonce, format!("building the newNonce request: {e}")))?;
        let (parts, _) = self.exchange(request).await?;
        parts.headers.get("replay-nonce").and_then(|v| v.to_str().ok()).map(str::to_string).ok_or_else(|| AcmeError {
            action: AcmeAction::Nonce,
            retry: Retry::After(DEFAULT_RETRY_DELAY),
            problem: None,
            message: "the CA's newNonce answer has no Replay-Nonce".into(),
        })
    }

    /// One request through the bounded, metered client: the answer's head and its whole body.
    async fn exchange(
        &self,
        request: Request<BodyWrapper<Bytes>>,
    ) -> Result<(http::response::Parts, Bytes), AcmeError> {
        let action = AcmeAction::Order;
        let BytesResponse { parts, mut body } =
            self.http.request(request).await.map_err(|e| AcmeError::classify(action, e))?;
        let body = body.into_bytes().await.map_err(|e| AcmeError::classify(action, instant_acme::Error::Other(e)))?;
        Ok((parts, body))
    }

    /// The flattened JWS of a request signed with the account key.
    fn sign(&self, account_url: &str, nonce: &str, url: &str, payload: &Value) -> Result<Vec<u8>, AcmeError> {
        let protected = json!({"alg": "ES256", "kid": account_url, "nonce": nonce, "url": url});
        let protected = URL_SAFE_NO_PAD.encode(protected.to_string());
        let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
        let signature = self
            .key
            .sign(&SystemRandom::new(), format!("{protected}.{payload}").as_bytes())
            .map_err(|_| AcmeError::fatal(AcmeAction::Order, "signing the newOrder request failed"))?;
        let signature = URL_SAFE_NO_PAD.encode(signature.as_ref());
        Ok(json!({"protected": protected, "payload": payload, "signature": signature}).to_string().into_bytes())
    }
}

/// The newOrder payload: the identifiers, `notAfter` (RFC 3339, UTC, whole seconds), and the profile and
/// `replaces` (RFC 9773) when given.
fn new_order_payload(
    identifiers: &[Identifier],
    not_after: SystemTime,
    options: &OrderOptions,
) -> Result<Value, AcmeError> {
    let identifiers = serde_json::to_value(identifiers)
        .map_err(|e| AcmeError::fatal(AcmeAction::Order, format!("encoding the identifiers: {e}")))?;
    let mut payload = json!({"identifiers": identifiers, "notAfter": rfc3339(not_after)});
    if let Some(profile) = &options.profile {
        payload["profile"] = json!(profile);
    }
    if let Some(replaces) = &options.replaces {
        payload["replaces"] = json!(replaces);
    }
    Ok(payload)
}

/// `2026-01-02T03:04:05Z`.
pub fn rfc3339(at: SystemTime) -> String {
    let seconds = at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let at = time::OffsetDateTime::from_unix_timestamp(i64::try_from(seconds).unwrap_or(i64::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// A failed answer as kacme's error: the CA's problem document (the client supplies one for answers
/// without).
fn problem_error(status: http::StatusCode, body: &[u8]) -> AcmeError {
    match serde_json::from_slice::<instant_acme::Problem>(body) {
        Ok(mut problem) => {
            problem.status.get_or_insert(status.as_u16());
            AcmeError::from_ca_problem(AcmeAction::Order, &problem)
        }
        Err(_) => AcmeError::from_ca_problem(
            AcmeAction::Order,
            &instant_acme::Problem {
                r#type: None,
                detail: Some(format!("HTTP {status} with an unreadable problem document")),
                status: Some(status.as_u16()),
                subproblems: Vec::new(),
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn not_after_is_written_as_rfc3339_utc() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_323_045);
        assert_eq!(rfc3339(at), "2026-01-02T03:04:05Z");
    }

    #[test]
    fn the_payload_carries_the_identifiers_and_only_not_after() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_323_045);
        let identifiers = [Identifier::Dns("a.example.test".into())];
        let payload = new_order_payload(&identifiers, at, &OrderOptions::default()).unwrap();
        assert_eq!(
            payload,
            json!({"identifiers": [{"type": "dns", "value": "a.example.test"}], "notAfter": "2026-01-02T03:04:05Z"})
        );
        let options = OrderOptions {
            not_after: Some(at),
            profile: Some("shortlived".into()),
            replaces: Some("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE".into()),
        };
        let payload = new_order_payload(&identifiers, at, &options).unwrap();
        assert_eq!(payload["profile"], "shortlived");
        assert_eq!(payload["replaces"], "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
    }
}
