//! ACME accounts: registered or loaded from a key that can live in a Secret.

use super::error::AcmeError;
use super::error::{DEFAULT_RETRY_DELAY, Retry};
use super::http::{CaTrust, MeteredHttp, SharedHttp, check_account_url};
use super::lifetime::LifetimeOrders;
use super::new_account::{AccountKeyPair, NewAccountRequest, send_new_account};
use super::observe::{AcmeAction, AcmeObserver, labelled};
use instant_acme::{Account, ExternalAccountKey, NewAccount};
use rustls_pki_types::PrivatePkcs8KeyDer;
use std::sync::Arc;

/// How often account registration is retried after rejected nonces (instant-acme retries each request
/// three times already).
const BAD_NONCE_ATTEMPTS: u32 = 3;

/// Where and how to hold an ACME account.
#[derive(Clone, Debug)]
pub struct AccountSpec {
    /// The ACME directory URL.
    pub directory_url: String,
    /// Contact email, registered as `mailto:` (optional).
    pub email: Option<String>,
    /// External Account Binding for CAs that require it.
    pub external_account: Option<ExternalAccountBinding>,
    /// How to trust the CA's TLS certificate.
    pub trust: CaTrust,
}

/// External Account Binding credentials. `Debug` never shows the HMAC key.
#[derive(Clone)]
pub struct ExternalAccountBinding {
    pub key_id: String,
    /// The raw HMAC key (CAs hand it out base64url-encoded; decode it first, see [`decode_eab_hmac_key`]).
    pub hmac_key: Vec<u8>,
}

impl std::fmt::Debug for ExternalAccountBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAccountBinding").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// Decodes an EAB HMAC key as CAs hand it out: base64url without padding (padded and standard base64
/// are accepted too).
pub fn decode_eab_hmac_key(text: &str) -> Result<Vec<u8>, AcmeError> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    let text = text.trim();
    URL_SAFE_NO_PAD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .or_else(|_| STANDARD.decode(text))
        .map_err(|_| AcmeError::fatal(AcmeAction::Account, "the EAB HMAC key is not base64url text"))
}

/// An ACME account key as stored in a Secret: a PKCS#8 PEM ECDSA P-256 key. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountKey(String);

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountKey(..)")
    }
}

impl AccountKey {
    /// Takes a PEM key read from a Secret.
    pub fn from_pem(pem: impl Into<String>) -> AccountKey {
        AccountKey(pem.into())
    }

    /// The key as PEM, to store in a Secret. Secret: never log it.
    pub fn pem(&self) -> &str {
        &self.0
    }

    fn from_pkcs8(der: &PrivatePkcs8KeyDer<'_>) -> AccountKey {
        let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        AccountKey(pem::encode_config(&pem::Pem::new("PRIVATE KEY", der.secret_pkcs8_der().to_vec()), config))
    }

    fn pkcs8(&self) -> Result<PrivatePkcs8KeyDer<'static>, AcmeError> {
        let unusable = || {
            AcmeError::fatal(
                AcmeAction::Account,
                "the stored account key is not a PEM PKCS#8 (\"PRIVATE KEY\") ECDSA P-256 key, the only kind kacme uses",
            )
        };
        let block = pem::parse(&self.0).map_err(|_| unusable())?;
        if block.tag() != "PRIVATE KEY" {
            return Err(unusable());
        }
        Ok(PrivatePkcs8KeyDer::from(block.into_contents()))
    }
}

/// Where kacme recorded an account it registered or found: its URL, valid only for the key of this
/// thumbprint at this directory (a replaced key or another server never gets an old URL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRecord {
    /// The account URL at the CA.
    pub url: String,
    /// The RFC 7638 thumbprint of the account key.
    pub key_thumbprint: String,
    /// The ACME directory URL.
    pub directory_url: String,
}

/// How an [`AcmeAccount`] was had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountOrigin {
    /// From a recorded URL and the stored key, without asking the CA: unchecked until the CA answers a
    /// request signed by it.
    Restored,
    /// Looked up at the CA (newAccount with `onlyReturnExisting`) for the stored key.
    Found,
    /// Registered at the CA (a new key, or a stored key the CA did not know).
    Registered,
}

/// A registered ACME account, ready to place orders. Cheap to clone; share it between orders.
#[derive(Clone)]
pub struct AcmeAccount {
    pub(crate) inner: Account,
    uri: String,
    directory_url: String,
    origin: AccountOrigin,
    /// New orders that ask for a lifetime, which instant-acme cannot place.
    pub(crate) lifetime_orders: Arc<LifetimeOrders>,
}

impl std::fmt::Debug for AcmeAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeAccount").field("uri", &self.uri).field("origin", &self.origin).finish_non_exhaustive()
    }
}

/// The outcome of [`AcmeAccount::register`].
#[derive(Debug)]
pub struct Registration {
    pub account: AcmeAccount,
    /// The account key; when `key_is_new`, the caller must store it (in the Secret named by the issuer).
    pub key: AccountKey,
    pub key_is_new: bool,
}

impl AcmeAccount {
    /// Registers an account (a new key, with the spec's email and EAB) or, given a stored key, looks the
    /// account of that key up, registering it if the CA does not know it. See [`AcmeAccount::load`].
    pub async fn register(
        spec: &AccountSpec,
        stored_key: Option<&AccountKey>,
        observer: Arc<dyn AcmeObserver>,
    ) -> Result<Registration, AcmeError> {
        Self::load(spec, stored_key, None, observer).await
    }

    /// The account of `stored_key` (or of a new key, registered with the spec's email and EAB, when there is
    /// none): restored without any account request when `record` names an account of this very key at this
    /// very directory (only the directory is read), else looked up with `onlyReturnExisting` and the
    /// contact, and registered (terms agreed, contact, EAB) when the CA answers `accountDoesNotExist`.
    pub async fn load(
        spec: &AccountSpec,
        stored_key: Option<&AccountKey>,
        record: Option<&AccountRecord>,
        observer: Arc<dyn AcmeObserver>,
    ) -> Result<Registration, AcmeError> {
        // A rejected nonce rejects the whole request: nothing was registered, so simply try again.
        let mut attempts = 0;
        loop {
            match Self::load_once(spec, stored_key, record, observer.clone()).await {
                Err(error) if error.retry == Retry::Immediately && attempts < BAD_NONCE_ATTEMPTS => {
                    attempts += 1;
                }
                result => return result,
            }
        }
    }

    async fn load_once(
        spec: &AccountSpec,
        stored_key: Option<&AccountKey>,
        record: Option<&AccountRecord>,
        observer: Arc<dyn AcmeObserver>,
    ) -> Result<Registration, AcmeError> {
        let http = MeteredHttp::new(&spec.trust, &spec.directory_url, observer)
            .map_err(|message| AcmeError::fatal(AcmeAction::Directory, message))?;
        let http = SharedHttp(Arc::new(http));
        let builder = Account::builder_with_http(Box::new(http.clone()));
        let contact = spec.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let classify = |e| AcmeError::classify(AcmeAction::Account, e);
        let (account, key, key_is_new, pkcs8, origin) = match stored_key {
            None => {
                let eab =
                    spec.external_account.as_ref().map(|e| ExternalAccountKey::new(e.key_id.clone(), &e.hmac_key));
                let new_account =
                    NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
                let (account, credentials) = labelled(
                    AcmeAction::Account,
                    builder.create(&new_account, spec.directory_url.clone(), eab.as_ref()),
                )
                .await
                .map_err(classify)?;
                let pkcs8 = credentials.private_key().secret_pkcs8_der().to_vec();
                let key = AccountKey::from_pkcs8(credentials.private_key());
                (account, key, true, pkcs8, AccountOrigin::Registered)
            }
            Some(stored) => {
                let der = stored.pkcs8()?;
                let pair = AccountKeyPair::from_pkcs8(der.secret_pkcs8_der())?;
                let thumbprint = pair.thumbprint();
                let recorded = record
                    .filter(|r| r.key_thumbprint == thumbprint && r.directory_url == spec.directory_url)
                    .filter(|r| check_account_url(&spec.directory_url, &r.url).is_ok());
                let (url, origin) = match recorded {
                    Some(record) => (record.url.clone(), AccountOrigin::Restored),
                    None => look_up_or_register(spec, &http, &pair).await?,
                };
                let pkcs8 = der.secret_pkcs8_der().to_vec();
                let account = labelled(AcmeAction::Account, builder.from_parts(url, der, spec.directory_url.clone()))
                    .await
                    .map_err(classify)?;
                (account, stored.clone(), false, pkcs8, origin)
            }
        };
        let uri = account.id().to_string();
        // Retried like a CA in trouble: nothing usable was registered, and a later answer may be sane.
        check_account_url(&spec.directory_url, &uri).map_err(|message| AcmeError {
            action: AcmeAction::Account,
            retry: Retry::After(DEFAULT_RETRY_DELAY),
            problem: None,
            message,
        })?;
        let lifetime_orders = Arc::new(LifetimeOrders::new(&pkcs8, http, &spec.directory_url)?);
        let account =
            AcmeAccount { inner: account, uri, directory_url: spec.directory_url.clone(), origin, lifetime_orders };
        Ok(Registration { account, key, key_is_new })
    }

    /// How this account was had: restored accounts are checked by the CA's first answer.
    pub fn origin(&self) -> AccountOrigin {
        self.origin
    }

    /// What to record so that a later [`AcmeAccount::load`] restores this account without a request.
    pub fn record(&self) -> AccountRecord {
        AccountRecord {
            url: self.uri.clone(),
            key_thumbprint: self.inner.key_thumbprint().to_string(),
            directory_url: self.directory_url.clone(),
        }
    }

    /// The account URI at the CA.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Sets the account's contact email (for example after the issuer's email changed).
    pub async fn update_contact(&self, email: Option<&str>) -> Result<(), AcmeError> {
        let contact = email.map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        labelled(AcmeAction::Account, self.inner.update_contacts(&contacts))
            .await
            .map_err(|e| AcmeError::classify(AcmeAction::Account, e))
    }

    /// The key authorization of an HTTP-01 token for this account.
    pub fn key_authorization(&self, token: &str) -> String {
        format!("{token}.{}", self.inner.key_thumbprint())
    }
}

/// The account of a stored key that kacme has no usable record of: looked up (newAccount with
/// `onlyReturnExisting`), and registered (terms agreed, contact, EAB) when the CA does not know the key.
async fn look_up_or_register(
    spec: &AccountSpec,
    http: &SharedHttp,
    key: &AccountKeyPair,
) -> Result<(String, AccountOrigin), AcmeError> {
    let contact: Vec<String> = spec.email.iter().map(|e| format!("mailto:{e}")).collect();
    let external_account = spec.external_account.as_ref().map(|e| (e.key_id.as_str(), e.hmac_key.as_slice()));
    let lookup = NewAccountRequest { contact: &contact, only_return_existing: true, external_account };
    // Some CAs refuse a lookup without the contact ("contact information is missing"), others one with it
    // (step-ca: "onlyReturnExisting must be alone"): the contact first, then without it when the CA calls
    // the first malformed.
    let found = match labelled(AcmeAction::Account, send_new_account(http, &spec.directory_url, key, &lookup)).await {
        Err(error) if error.is_problem("malformed") && !contact.is_empty() => {
            let alone = NewAccountRequest { contact: &[], ..lookup };
            labelled(AcmeAction::Account, send_new_account(http, &spec.directory_url, key, &alone)).await
        }
        found => found,
    };
    match found {
        Ok(url) => Ok((url, AccountOrigin::Found)),
        Err(error) if error.is_problem("accountDoesNotExist") => {
            let registration = NewAccountRequest { only_return_existing: false, ..lookup };
            let url =
                labelled(AcmeAction::Account, send_new_account(http, &spec.directory_url, key, &registration)).await?;
            Ok((url, AccountOrigin::Registered))
        }
        Err(error) => Err(error),
    }
}
