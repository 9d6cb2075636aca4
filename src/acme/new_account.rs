//! newAccount requests for a key kacme already holds (RFC 8555 section 7.3): a lookup with
//! `onlyReturnExisting` and a registration, both with the contact (and the registration with the External
//! Account Binding). instant-acme 0.8.5 sends neither for a stored key: its `from_key`/`create_from_key`
//! send an empty contact and no binding, and some CAs refuse a lookup without contact ("contact information
//! is missing"). So kacme signs this one request itself (a flattened JWS with the key as `jwk`) and builds
//! the account from the URL the CA answers, as it restores an account from a stored URL.

use super::error::AcmeError;
use super::http::SharedHttp;
use super::jws::{KeyId, SignedPost, directory_url_of, get_directory};
use super::observe::AcmeAction;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// An account key pair with its public JWK (RFC 7517) and thumbprint (RFC 7638).
pub(crate) struct AccountKeyPair {
    key: EcdsaKeyPair,
    /// `{"crv":"P-256","kty":"EC","x":…,"y":…}`: the members in the order RFC 7638 hashes them.
    jwk: String,
}

impl AccountKeyPair {
    /// `pkcs8` is the account key (PKCS#8 ECDSA P-256).
    pub(crate) fn from_pkcs8(pkcs8: &[u8]) -> Result<AccountKeyPair, AcmeError> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
            .map_err(|_| AcmeError::fatal(AcmeAction::Account, "the stored account key is not an ECDSA P-256 key"))?;
        // An uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = key.public_key().as_ref();
        let (x, y) = match point {
            [4, rest @ ..] if rest.len() == 64 => rest.split_at(32),
            _ => return Err(AcmeError::fatal(AcmeAction::Account, "the account key's public point is not P-256")),
        };
        let jwk = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(x),
            URL_SAFE_NO_PAD.encode(y)
        );
        Ok(AccountKeyPair { key, jwk })
    }

    /// The RFC 7638 thumbprint (SHA-256, base64url), as in key authorizations.
    pub(crate) fn thumbprint(&self) -> String {
        URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.jwk.as_bytes()))
    }
}

/// What a newAccount request asks for.
pub(crate) struct NewAccountRequest<'a> {
    /// `mailto:` URLs; sent also with `onlyReturnExisting`, since some CAs refuse a lookup without them.
    pub(crate) contact: &'a [String],
    /// Only look the key's account up; never create one.
    pub(crate) only_return_existing: bool,
    /// The External Account Binding (key ID, raw HMAC key), for a registration.
    pub(crate) external_account: Option<(&'a str, &'a [u8])>,
}

/// Sends newAccount for `key` and returns the account URL (the `Location` of the answer). A CA that knows no
/// account for the key answers a lookup with the `accountDoesNotExist` problem.
pub(crate) async fn send_new_account(
    http: &SharedHttp,
    directory_url: &str,
    key: &AccountKeyPair,
    request: &NewAccountRequest<'_>,
) -> Result<String, AcmeError> {
    let directory = get_directory(http, directory_url).await?;
    let (new_nonce, new_account) =
        (directory_url_of(&directory, "newNonce")?, directory_url_of(&directory, "newAccount")?);
    let payload = new_account_payload(key, &new_account, request)?;
    let post = SignedPost {
        action: AcmeAction::Account,
        name: "newAccount",
        url: &new_account,
        new_nonce_url: &new_nonce,
        key: &key.key,
        key_id: KeyId::Jwk(&key.jwk),
        payload: &payload,
    };
    post.send_for_location(http).await
}

/// The newAccount payload: terms agreed, the contact (when there is one), `onlyReturnExisting` for a lookup,
/// the External Account Binding for a registration.
fn new_account_payload(
    key: &AccountKeyPair,
    new_account_url: &str,
    request: &NewAccountRequest<'_>,
) -> Result<Value, AcmeError> {
    let mut payload = json!({"termsOfServiceAgreed": true});
    if !request.contact.is_empty() {
        payload["contact"] = json!(request.contact);
    }
    if request.only_return_existing {
        payload["onlyReturnExisting"] = json!(true);
    } else if let Some((key_id, hmac_key)) = request.external_account {
        payload["externalAccountBinding"] = external_account_binding(key, new_account_url, key_id, hmac_key)?;
    }
    Ok(payload)
}

/// RFC 8555 section 7.3.4: the account's JWK, signed with the CA's HMAC key (HS256, no nonce).
fn external_account_binding(
    key: &AccountKeyPair,
    new_account_url: &str,
    key_id: &str,
    hmac_key: &[u8],
) -> Result<Value, AcmeError> {
    let protected = json!({"alg": "HS256", "kid": key_id, "url": new_account_url});
    let protected = URL_SAFE_NO_PAD.encode(protected.to_string());
    let payload = URL_SAFE_NO_PAD.encode(&key.jwk);
    let hmac = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, hmac_key);
    let signature = aws_lc_rs::hmac::sign(&hmac, format!("{protected}.{payload}").as_bytes());
    Ok(json!({"protected": protected, "payload": payload, "signature": URL_SAFE_NO_PAD.encode(signature.as_ref())}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use instant_acme::Key;

    #[test]
    fn a_lookup_carries_the_contact_and_no_binding() {
        let (_, pkcs8) = Key::generate_pkcs8().unwrap();
        let key = AccountKeyPair::from_pkcs8(pkcs8.secret_pkcs8_der()).unwrap();
        let contact = vec!["mailto:ops@example.test".to_string()];
        let lookup = NewAccountRequest {
            contact: &contact,
            only_return_existing: true,
            external_account: Some(("kid-1", b"secret")),
        };
        let payload = new_account_payload(&key, "https://ca.test/new-account", &lookup).unwrap();
        assert_eq!(
            payload,
            json!({"termsOfServiceAgreed": true, "contact": ["mailto:ops@example.test"], "onlyReturnExisting": true})
        );
    }

    #[test]
    fn a_registration_binds_the_key_with_the_hmac_key() {
        let (_, pkcs8) = Key::generate_pkcs8().unwrap();
        let key = AccountKeyPair::from_pkcs8(pkcs8.secret_pkcs8_der()).unwrap();
        let registration =
            NewAccountRequest { contact: &[], only_return_existing: false, external_account: Some(("kid-1", b"k")) };
        let payload = new_account_payload(&key, "https://ca.test/new-account", &registration).unwrap();
        let binding = &payload["externalAccountBinding"];
        let protected: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(binding["protected"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(protected, json!({"alg": "HS256", "kid": "kid-1", "url": "https://ca.test/new-account"}));
        let jwk = URL_SAFE_NO_PAD.decode(binding["payload"].as_str().unwrap()).unwrap();
        assert_eq!(String::from_utf8(jwk).unwrap(), key.jwk);
        assert!(payload.get("contact").is_none() && payload.get("onlyReturnExisting").is_none(), "{payload}");
    }
}
