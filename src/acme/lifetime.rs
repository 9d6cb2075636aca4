//! New orders that ask for a lifetime (RFC 8555 section 7.4, `notAfter` only, so that the CA may backdate
//! `notBefore`). instant-acme 0.8.5 cannot send one, so kacme signs this one request itself (a flattened
//! JWS, section 6.2, ES256 with the account key and the account URL as `kid`) and then continues the order
//! through instant-acme by its URL, as when resuming an order.

use super::error::AcmeError;
use super::http::SharedHttp;
use super::jws::{KeyId, SignedPost, directory_url_of, get_directory};
use super::observe::{AcmeAction, labelled};
use super::order::OrderOptions;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use instant_acme::Identifier;
use serde_json::{Value, json};
use std::time::SystemTime;

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
        let post = SignedPost {
            action: AcmeAction::Order,
            name: "newOrder",
            url: &new_order,
            new_nonce_url: &new_nonce,
            key: &self.key,
            key_id: KeyId::Account(account_url),
            payload: &payload,
        };
        post.send_for_location(&self.http).await
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
        let directory = get_directory(&self.http, &self.directory_url).await?;
        let endpoints = Endpoints {
            new_nonce: directory_url_of(&directory, "newNonce")?,
            new_order: directory_url_of(&directory, "newOrder")?,
            renewal_info: directory.get("renewalInfo").and_then(Value::as_str).is_some_and(|u| !u.is_empty()),
        };
        Ok(self.endpoints.get_or_init(|| endpoints).clone())
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
