//! ACME accounts of Issuers and ClusterIssuers: the key in a Secret (generated when absent, never
//! overwritten), registered at the CA once and shared by every order of the issuer — or, for a
//! ClusterIssuer with `accountPerNamespace`, by every order of one namespace (see [`AccountLocation`]).

use super::Context;
use crate::acme::{
    AccountKey, AccountOrigin, AccountRecord, AccountSpec, AcmeAccount, AcmeError, CaTrust, ExternalAccountBinding,
    Retry, decode_eab_hmac_key,
};
use crate::api::names::{
    ANNOTATION_ACCOUNT_KEY_THUMBPRINT, ANNOTATION_ACCOUNT_NAMESPACE, ANNOTATION_ACCOUNT_SERVER, ANNOTATION_ACCOUNT_URL,
    LABEL_MANAGED_BY, MANAGED_BY, TLS_KEY,
};
use crate::api::{AcmeIssuer, ClusterIssuer, ConditionType, Issuer, IssuerKind, IssuerReason};
use crate::kube_errors::is_conflict;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

/// Default data key of an EAB HMAC key Secret (as in cert-manager).
pub const EAB_SECRET_KEY: &str = "secret";
/// Data key of the key identifier in a namespace's own EAB Secret (`accountPerNamespace`).
pub const EAB_KEY_ID_KEY: &str = "keyID";

/// Which of an issuer's ACME accounts: its own, or the one of a single namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AccountLocation {
    /// The Secret, in the issuer's Secret namespace, holding the account key.
    pub key_secret: String,
    /// The namespace whose Certificates alone use this account; `None` for the issuer's own account.
    pub namespace: Option<String>,
}

/// An issuer as the Certificate reconciler needs it, whatever its kind.
#[derive(Clone, Debug, PartialEq)]
pub struct IssuerInfo {
    pub kind: IssuerKind,
    pub name: String,
    /// Where the issuer's Secrets live: the Issuer's namespace, or the cluster resource namespace.
    pub secret_namespace: String,
    pub acme: AcmeIssuer,
    /// What Certificates may ask the issuer for.
    pub policy: Option<crate::api::IssuerPolicy>,
    /// Whether the issuer's Ready condition is True.
    pub ready: bool,
    /// Whether the issuer's status says its CA offers ACME Renewal Information (RFC 9773).
    pub offers_renewal_info: bool,
    pub generation: Option<i64>,
    /// The issuer's own account as its status records it (URL, key thumbprint, server).
    pub recorded_account: Option<AccountRecord>,
}

impl IssuerInfo {
    pub fn from_issuer(issuer: &Issuer) -> Option<IssuerInfo> {
        Some(IssuerInfo {
            kind: IssuerKind::Issuer,
            name: issuer.metadata.name.clone()?,
            secret_namespace: issuer.metadata.namespace.clone()?,
            acme: issuer.spec.acme.clone(),
            policy: issuer.spec.policy.clone(),
            ready: is_ready(issuer.status.as_ref().map(|s| s.conditions.as_slice())),
            offers_renewal_info: issuer.status.as_ref().and_then(|s| s.acme.as_ref()?.renewal_info) == Some(true),
            generation: issuer.metadata.generation,
            recorded_account: recorded_account(issuer.status.as_ref()),
        })
    }

    pub fn from_cluster_issuer(issuer: &ClusterIssuer, cluster_resource_namespace: &str) -> Option<IssuerInfo> {
        Some(IssuerInfo {
            kind: IssuerKind::ClusterIssuer,
            name: issuer.metadata.name.clone()?,
            secret_namespace: cluster_resource_namespace.to_string(),
            acme: issuer.spec.acme.clone(),
            policy: issuer.spec.policy.clone(),
            ready: is_ready(issuer.status.as_ref().map(|s| s.conditions.as_slice())),
            offers_renewal_info: issuer.status.as_ref().and_then(|s| s.acme.as_ref()?.renewal_info) == Some(true),
            generation: issuer.metadata.generation,
            recorded_account: recorded_account(issuer.status.as_ref()),
        })
    }

    /// `Issuer apps/step-ca` or `ClusterIssuer step-ca`, for messages.
    pub fn describe(&self) -> String {
        match self.kind {
            IssuerKind::Issuer => format!("Issuer {}/{}", self.secret_namespace, self.name),
            IssuerKind::ClusterIssuer => format!("ClusterIssuer {}", self.name),
        }
    }

    /// The issuer's own account: the one its Ready condition reports.
    pub fn own_account(&self) -> AccountLocation {
        AccountLocation { key_secret: self.acme.private_key_secret_ref.name.clone(), namespace: None }
    }

    /// The account that Certificates of `namespace` use: that namespace's own for a ClusterIssuer with
    /// `accountPerNamespace`, the issuer's own otherwise.
    pub fn account_for(&self, namespace: &str) -> AccountLocation {
        if self.kind != IssuerKind::ClusterIssuer || self.acme.account_per_namespace != Some(true) {
            return self.own_account();
        }
        AccountLocation {
            key_secret: crate::desired::namespace_account_secret_name(
                &self.acme.private_key_secret_ref.name,
                namespace,
            ),
            namespace: Some(namespace.to_string()),
        }
    }

    /// What an issued chain must verify to, and where `ca.crt` comes from.
    pub fn issuing_trust(&self) -> IssuingTrust {
        let read = |bundle: &str| crate::pki::parse_ca_bundle(bundle.as_bytes()).map_err(|e| e.to_string());
        match (&self.acme.issuing_ca_bundle, &self.acme.ca_bundle) {
            (Some(roots), _) => IssuingTrust::Configured(read(roots)),
            (None, Some(bundle)) => IssuingTrust::FromCaBundle(read(bundle)),
            (None, None) => IssuingTrust::Unknown,
        }
    }
}

/// The account an issuer's status records: all of URL, key thumbprint and server, or nothing.
fn recorded_account(status: Option<&crate::api::IssuerStatus>) -> Option<AccountRecord> {
    let acme = status?.acme.as_ref()?;
    Some(AccountRecord {
        url: acme.uri.clone()?,
        key_thumbprint: acme.key_thumbprint.clone()?,
        directory_url: acme.server.clone()?,
    })
}

/// The account recorded on a namespace's account key Secret (see [`record_annotations`]).
fn recorded_on_secret(secret: &Secret) -> Option<AccountRecord> {
    let annotations = secret.metadata.annotations.as_ref()?;
    Some(AccountRecord {
        url: annotations.get(ANNOTATION_ACCOUNT_URL)?.clone(),
        key_thumbprint: annotations.get(ANNOTATION_ACCOUNT_KEY_THUMBPRINT)?.clone(),
        directory_url: annotations.get(ANNOTATION_ACCOUNT_SERVER)?.clone(),
    })
}

/// The annotations that record `record` on a namespace's account key Secret.
fn record_annotations(record: &AccountRecord) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ANNOTATION_ACCOUNT_URL.to_string(), record.url.clone()),
        (ANNOTATION_ACCOUNT_KEY_THUMBPRINT.to_string(), record.key_thumbprint.clone()),
        (ANNOTATION_ACCOUNT_SERVER.to_string(), record.directory_url.clone()),
    ])
}

/// What issued chains of an issuer must verify to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuingTrust {
    /// `issuingCABundle`: the chain must verify to one of these, and all of them are `ca.crt`.
    Configured(Result<Vec<Vec<u8>>, String>),
    /// `caBundle` only: the chain must verify to one of its certificates, and those it verifies to are `ca.crt`.
    FromCaBundle(Result<Vec<Vec<u8>>, String>),
    /// Neither (the system trust store is used for TLS): nothing to verify to, no `ca.crt`.
    Unknown,
}

impl IssuingTrust {
    /// The `ca.crt` of a Secret holding `chain` (none when nothing is known to verify to), or why the chain may
    /// not be stored: it does not verify, at `at`, to the issuing roots.
    pub fn ca_crt_for(&self, chain: &crate::pki::ParsedChain, at: jiff::Timestamp) -> Result<Option<String>, String> {
        use crate::pki::{verify_chain, verifying_anchors};
        let why =
            |anchors: &[Vec<u8>]| verify_chain(chain, anchors, at).err().map(|e| e.to_string()).unwrap_or_default();
        match self {
            IssuingTrust::Unknown => Ok(None),
            IssuingTrust::Configured(roots) => {
                let roots = roots.clone().unwrap_or_default();
                if verifying_anchors(chain, &roots, at).is_empty() {
                    return Err(format!(
                        "the issued chain does not verify to the issuer's issuingCABundle: {}",
                        why(&roots)
                    ));
                }
                Ok(Some(pem_bundle(&roots)))
            }
            IssuingTrust::FromCaBundle(bundle) => {
                let bundle = bundle.clone().unwrap_or_default();
                let anchors = verifying_anchors(chain, &bundle, at);
                if anchors.is_empty() {
                    return Err(format!(
                        "the issued chain does not verify to any certificate of the issuer's caBundle ({}); put the \
                         CA's root into caBundle or issuingCABundle",
                        why(&bundle)
                    ));
                }
                Ok(Some(pem_bundle(&anchors)))
            }
        }
    }
}

/// DER certificates as a PEM bundle.
pub fn pem_bundle(ders: &[Vec<u8>]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    ders.iter().map(|der| pem::encode_config(&pem::Pem::new("CERTIFICATE", der.clone()), config)).collect()
}

fn is_ready(conditions: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]>) -> bool {
    conditions.unwrap_or_default().iter().any(|c| c.type_ == ConditionType::Ready.as_str() && c.status == "True")
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    kind: IssuerKind,
    namespace: String,
    name: String,
    account: AccountLocation,
}

/// Registered accounts, by issuer and account; an entry is reused while the issuer's spec and key are
/// unchanged. Also the account URLs that the CA refused: those are not restored again.
#[derive(Default)]
pub struct AccountCache {
    entries: Mutex<HashMap<CacheKey, (String, AcmeAccount)>>,
    distrusted: Mutex<HashSet<String>>,
}

impl AccountCache {
    fn get(&self, key: &CacheKey, fingerprint: &str) -> Option<AcmeAccount> {
        let entries = self.entries.lock().ok()?;
        entries.get(key).filter(|(f, _)| f == fingerprint).map(|(_, account)| account.clone())
    }

    fn put(&self, key: CacheKey, fingerprint: String, account: AcmeAccount) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(key, (fingerprint, account));
        }
    }

    /// Stops restoring the account at `url` from its record: the CA refused a request signed by it, so the
    /// next use looks the key's account up (or registers it) instead.
    pub fn distrust(&self, url: &str) {
        if let Ok(mut distrusted) = self.distrusted.lock() {
            distrusted.insert(url.to_string());
        }
    }

    fn is_distrusted(&self, url: &str) -> bool {
        self.distrusted.lock().map(|d| d.contains(url)).unwrap_or(false)
    }

    fn trust(&self, url: &str) {
        if let Ok(mut distrusted) = self.distrusted.lock() {
            distrusted.remove(url);
        }
    }

    /// Forgets every account of an issuer (the issuer was deleted, or the CA forgot an account).
    pub fn forget(&self, kind: IssuerKind, namespace: &str, name: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|key, _| !(key.kind == kind && key.namespace == namespace && key.name == name));
        }
    }
}

/// Why an issuer's ACME account could not be had, each variant named after the action that failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The account key Secret could not be read.
    #[error("reading Secret {secret}: {source}")]
    ReadKeySecret { secret: String, source: kube::Error },
    /// The account key Secret exists but lacks the key; kacme never overwrites it.
    #[error(
        "Secret {secret} exists but has no key {key:?}; kacme never overwrites it: add the account key or name another Secret"
    )]
    KeySecretWithoutKey { secret: String, key: String },
    /// The Secret where a namespace's account key belongs holds a key that is not recorded as that
    /// namespace's (the issuer's own key, another namespace's, or someone else's Secret).
    #[error(
        "Secret {secret} is not marked as the account key of namespace {namespace} (annotation {annotation}); \
         kacme uses no other key for that namespace's account: remove or rename that Secret"
    )]
    KeySecretOfAnother { secret: String, namespace: String, annotation: &'static str },
    /// `caBundle` holds no usable certificate.
    #[error("caBundle: {0}")]
    ParseCaBundle(crate::pki::PkiError),
    /// `server` is not an https URL the HTTP client can use (admission checks it too, less strictly).
    #[error("server {server:?} cannot be used: {problem}")]
    InvalidServer { server: String, problem: String },
    /// The EAB key Secret could not be read.
    #[error("reading Secret {secret}: {source}")]
    ReadEabSecret { secret: String, source: kube::Error },
    /// The EAB key Secret is missing or lacks the key.
    #[error("the EAB key Secret {secret} does not exist or has no key {key:?}")]
    EabSecretWithoutKey { secret: String, key: String },
    /// The EAB key is not a valid HMAC key.
    #[error(transparent)]
    DecodeEabKey(AcmeError),
    /// The policy cannot be applied.
    #[error(transparent)]
    InvalidPolicy(crate::decision::policy::InvalidPolicy),
    /// The operator does not let a namespaced Issuer use this server, or skip TLS verification.
    #[error("{0}")]
    RefuseNamespacedIssuer(crate::decision::issuer_restrictions::IssuerRefusal),
    /// A solver template sets a label or annotation the operator does not allow on solver objects.
    #[error("{0}")]
    RefuseSolverTemplate(crate::decision::solver_template::SolverTemplateRefusal),
    /// The CA refused or failed the registration.
    #[error(transparent)]
    Register(AcmeError),
    /// The new account key could not be stored.
    #[error("creating Secret {secret}: {source}")]
    StoreKey { secret: String, source: kube::Error },
}

impl AccountError {
    /// The reason of the issuer's Ready condition.
    pub fn reason(&self) -> IssuerReason {
        match self {
            AccountError::ReadKeySecret { .. } => IssuerReason::ErrReadAccountKey,
            AccountError::KeySecretWithoutKey { .. } | AccountError::KeySecretOfAnother { .. } => {
                IssuerReason::InvalidAccountKeySecret
            }
            AccountError::ParseCaBundle(_) => IssuerReason::InvalidCaBundle,
            AccountError::InvalidServer { .. } => IssuerReason::InvalidServer,
            AccountError::ReadEabSecret { .. } => IssuerReason::ErrReadEabSecret,
            AccountError::EabSecretWithoutKey { .. } | AccountError::DecodeEabKey(_) => IssuerReason::InvalidEabSecret,
            AccountError::InvalidPolicy(_) => IssuerReason::InvalidPolicy,
            AccountError::RefuseNamespacedIssuer(refusal) => refusal.reason(),
            AccountError::RefuseSolverTemplate(_) => IssuerReason::SolverTemplateNotAllowed,
            AccountError::Register(_) => IssuerReason::ErrRegisterAcmeAccount,
            AccountError::StoreKey { source, .. } if is_conflict(source) => IssuerReason::AccountKeySecretRace,
            AccountError::StoreKey { .. } => IssuerReason::ErrStoreAccountKey,
        }
    }

    /// How soon trying again may help: the CA's own retry advice for its errors, a short wait for the
    /// apiserver's, and a long one for what only a person can fix.
    pub fn retry_after(&self) -> Duration {
        match self {
            AccountError::Register(error) | AccountError::DecodeEabKey(error) => match error.retry {
                // Registration already retried its rejected nonces: the CA keeps rejecting them.
                Retry::Immediately => crate::acme::DEFAULT_RETRY_DELAY,
                Retry::After(delay) => delay,
                Retry::Never => RECHECK_FAILED,
            },
            AccountError::ReadKeySecret { .. } | AccountError::ReadEabSecret { .. } | AccountError::StoreKey { .. } => {
                Duration::from_secs(10)
            }
            AccountError::KeySecretWithoutKey { .. }
            | AccountError::KeySecretOfAnother { .. }
            | AccountError::ParseCaBundle(_)
            | AccountError::InvalidServer { .. }
            | AccountError::InvalidPolicy(_)
            | AccountError::RefuseNamespacedIssuer(_)
            | AccountError::RefuseSolverTemplate(_)
            | AccountError::EabSecretWithoutKey { .. } => RECHECK_FAILED,
        }
    }
}

/// How soon an issuer whose account failed for a final reason is looked at again.
const RECHECK_FAILED: Duration = Duration::from_secs(300);

/// Whether the operator lets `issuer` be used at all: a namespaced Issuer's server and TLS verification
/// (`--issuer-allowed-servers`, `--issuer-allow-skip-tls-verify`), and every issuer's solver templates
/// (`--solver-template-allowed-keys`). Checked before any Secret is read and any request is sent, on every
/// use of the account (so also for a Certificate whose issuer's status is not yet up to date).
pub fn check_operator_rules(issuer: &IssuerInfo, config: &super::ControllerConfig) -> Result<(), AccountError> {
    if issuer.kind == IssuerKind::Issuer {
        crate::decision::issuer_restrictions::check_namespaced_issuer(&issuer.acme, &config.namespaced_issuers)
            .map_err(AccountError::RefuseNamespacedIssuer)?;
    }
    crate::decision::solver_template::check_solver_templates(&issuer.acme, &config.solver_templates)
        .map_err(AccountError::RefuseSolverTemplate)
}

/// One account of an issuer (see [`IssuerInfo::own_account`] and [`IssuerInfo::account_for`]): from the
/// cache, or registered (loading or generating its key). Refused before anything else when the operator's
/// rules do not allow the issuer ([`check_operator_rules`]).
pub async fn ensure_account(
    ctx: &Context,
    issuer: &IssuerInfo,
    location: &AccountLocation,
) -> Result<AcmeAccount, AccountError> {
    check_operator_rules(issuer, &ctx.config)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &issuer.secret_namespace);
    let key_ref = &issuer.acme.private_key_secret_ref;
    let key_name = key_ref.key.clone().unwrap_or_else(|| TLS_KEY.to_string());
    let secret_name = format!("{}/{}", issuer.secret_namespace, location.key_secret);
    let stored = ctx
        .read_secret(&issuer.secret_namespace, &location.key_secret)
        .await
        .map_err(|source| AccountError::ReadKeySecret { secret: secret_name.clone(), source })?;
    if let (Some(secret), Some(namespace)) = (&stored, &location.namespace)
        && secret.annotations().get(ANNOTATION_ACCOUNT_NAMESPACE) != Some(namespace)
    {
        return Err(AccountError::KeySecretOfAnother {
            secret: secret_name,
            namespace: namespace.clone(),
            annotation: ANNOTATION_ACCOUNT_NAMESPACE,
        });
    }
    let stored_key = match &stored {
        Some(secret) => match secret.data.as_ref().and_then(|d| d.get(&key_name)) {
            Some(value) => Some(AccountKey::from_pem(String::from_utf8_lossy(&value.0).into_owned())),
            None => return Err(AccountError::KeySecretWithoutKey { secret: secret_name, key: key_name }),
        },
        None => None,
    };
    // The key itself, not the Secret's version: a Secret change that keeps the key (a label, an annotation)
    // keeps the account.
    let fingerprint = |key: &AccountKey| {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.pem().as_bytes());
        format!("{}|{}", serde_json::to_string(&issuer.acme).unwrap_or_default(), hex(digest.as_ref()))
    };
    let cache_key = CacheKey {
        kind: issuer.kind,
        namespace: issuer.secret_namespace.clone(),
        name: issuer.name.clone(),
        account: location.clone(),
    };
    if let Some(key) = &stored_key
        && let Some(account) = ctx.accounts.get(&cache_key, &fingerprint(key))
    {
        return Ok(account);
    }

    let spec = account_spec(ctx, issuer, location).await?;
    // Where kacme recorded the account: the issuer's status for its own, the key Secret (kacme's own, checked
    // above) for a namespace's.
    let recorded = match &location.namespace {
        None => issuer.recorded_account.clone(),
        Some(_) => stored.as_deref().and_then(recorded_on_secret),
    };
    let record = recorded.clone().filter(|record| !ctx.accounts.is_distrusted(&record.url));
    let registration = AcmeAccount::load(&spec, stored_key.as_ref(), record.as_ref(), ctx.acme_observer.clone())
        .await
        .map_err(AccountError::Register)?;
    let account = registration.account;
    if account.origin() != AccountOrigin::Restored {
        ctx.accounts.trust(account.uri());
    }
    if registration.key_is_new {
        let mut annotations = BTreeMap::new();
        if let Some(namespace) = &location.namespace {
            annotations.insert(ANNOTATION_ACCOUNT_NAMESPACE.to_string(), namespace.clone());
            annotations.extend(record_annotations(&account.record()));
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(location.key_secret.clone()),
                namespace: Some(issuer.secret_namespace.clone()),
                labels: Some(BTreeMap::from([(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string())])),
                annotations: (!annotations.is_empty()).then_some(annotations),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(key_name, ByteString(registration.key.pem().as_bytes().to_vec()))])),
            ..Secret::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(created) => ctx.remember_created_secret(&issuer.secret_namespace, &created),
            // A conflict means someone created it meanwhile: use theirs next time, never overwrite it.
            Err(source) => return Err(AccountError::StoreKey { secret: secret_name, source }),
        }
        ctx.accounts.put(cache_key, fingerprint(&registration.key), account.clone());
        return Ok(account);
    }
    if let (Some(namespace), Some(secret)) = (&location.namespace, &stored)
        && recorded.as_ref() != Some(&account.record())
    {
        record_on_secret(ctx, issuer, secret, namespace, &account).await;
    }
    ctx.accounts.put(cache_key, fingerprint(&registration.key), account.clone());
    Ok(account)
}

/// Records a namespace's account on its key Secret, which kacme created for that namespace (the caller checked
/// its annotation), so that a restarted operator uses the account without asking the CA. A failure costs only
/// a lookup after the next restart: it is logged, not returned.
async fn record_on_secret(ctx: &Context, issuer: &IssuerInfo, secret: &Secret, namespace: &str, account: &AcmeAccount) {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &issuer.secret_namespace);
    let patch = serde_json::json!({
        "metadata": {
            "annotations": record_annotations(&account.record()),
            // Patch only the Secret that was read: never one that replaced it meanwhile.
            "resourceVersion": secret.metadata.resource_version,
        }
    });
    let params = PatchParams { field_manager: Some(super::FIELD_MANAGER.into()), ..Default::default() };
    match secrets.patch(&secret.name_any(), &params, &Patch::Merge(&patch)).await {
        Ok(patched) => ctx.remember_created_secret(&issuer.secret_namespace, &patched),
        Err(error) => {
            tracing::warn!(%error, namespace, "recording the namespace's ACME account on its key Secret failed")
        }
    }
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that `server` is an https URL with a host that the HTTP client accepts as it is (CEL's `isURL`
/// admits URLs, for example with non-ASCII characters, that the client would refuse at every request).
pub fn check_directory_url(server: &str) -> Result<(), AccountError> {
    let invalid = |problem: &str| AccountError::InvalidServer { server: server.to_string(), problem: problem.into() };
    let uri: http::Uri = server.parse().map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(invalid("it must be an https:// URL"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    // `http` reads a port it cannot represent as no port at all, and the client would then dial 443.
    let written_port = uri.authority().and_then(|a| a.as_str().rsplit_once(':')).map(|(_, port)| port);
    if let Some(port) = written_port.filter(|p| !p.ends_with(']'))
        && !matches!(port.parse::<u16>(), Ok(1..))
    {
        return Err(invalid("its port is not a number from 1 to 65535"));
    }
    Ok(())
}

async fn account_spec(
    ctx: &Context,
    issuer: &IssuerInfo,
    location: &AccountLocation,
) -> Result<AccountSpec, AccountError> {
    let acme = &issuer.acme;
    check_directory_url(&acme.server)?;
    if let Some(policy) = &issuer.policy {
        crate::decision::policy::validate_policy(policy).map_err(AccountError::InvalidPolicy)?;
    }
    let trust = if acme.skip_tls_verify == Some(true) {
        CaTrust::InsecureSkipVerify
    } else if let Some(bundle) = &acme.ca_bundle {
        CaTrust::Bundle(crate::pki::parse_ca_bundle(bundle.as_bytes()).map_err(AccountError::ParseCaBundle)?)
    } else {
        CaTrust::System
    };
    let external_account = match &acme.external_account_binding {
        None => None,
        Some(eab) => match namespace_eab(ctx, issuer, location, eab).await? {
            Some(binding) => Some(binding),
            None => Some(issuer_eab(ctx, issuer, eab).await?),
        },
    };
    Ok(AccountSpec { directory_url: acme.server.clone(), email: acme.email.clone(), external_account, trust })
}

/// The issuer's own External Account Binding key.
async fn issuer_eab(
    ctx: &Context,
    issuer: &IssuerInfo,
    eab: &crate::api::ExternalAccountBinding,
) -> Result<ExternalAccountBinding, AccountError> {
    let name = &eab.key_secret_ref.name;
    let secret_name = format!("{}/{name}", issuer.secret_namespace);
    let key = eab.key_secret_ref.key.clone().unwrap_or_else(|| EAB_SECRET_KEY.to_string());
    let secret = ctx
        .read_secret(&issuer.secret_namespace, name)
        .await
        .map_err(|source| AccountError::ReadEabSecret { secret: secret_name.clone(), source })?;
    let value = secret
        .as_ref()
        .and_then(|s| s.data.as_ref()?.get(&key))
        .ok_or(AccountError::EabSecretWithoutKey { secret: secret_name, key })?;
    let hmac_key = decode_eab_hmac_key(&String::from_utf8_lossy(&value.0)).map_err(AccountError::DecodeEabKey)?;
    Ok(ExternalAccountBinding { key_id: eab.key_id.clone(), hmac_key })
}

/// The External Account Binding key of a namespace's own account, when the namespace has one: the Secret
/// `<keySecretRef.name>-<namespace>` (data `keyID` and the HMAC key under keySecretRef's key) in the
/// issuer's Secret namespace. `None` for the issuer's own account, or when that Secret does not exist.
async fn namespace_eab(
    ctx: &Context,
    issuer: &IssuerInfo,
    location: &AccountLocation,
    eab: &crate::api::ExternalAccountBinding,
) -> Result<Option<ExternalAccountBinding>, AccountError> {
    let Some(namespace) = &location.namespace else { return Ok(None) };
    let name = crate::desired::namespace_account_secret_name(&eab.key_secret_ref.name, namespace);
    let secret_name = format!("{}/{name}", issuer.secret_namespace);
    let secret = ctx
        .read_secret(&issuer.secret_namespace, &name)
        .await
        .map_err(|source| AccountError::ReadEabSecret { secret: secret_name.clone(), source })?;
    let Some(secret) = secret else { return Ok(None) };
    let data = secret.data.clone().unwrap_or_default();
    let key = eab.key_secret_ref.key.clone().unwrap_or_else(|| EAB_SECRET_KEY.to_string());
    let text = |key: &str| data.get(key).map(|value| String::from_utf8_lossy(&value.0).trim().to_string());
    let (Some(key_id), Some(hmac)) = (text(EAB_KEY_ID_KEY).filter(|id| !id.is_empty()), text(&key)) else {
        return Err(AccountError::EabSecretWithoutKey {
            secret: secret_name,
            key: format!("{EAB_KEY_ID_KEY} and {key}"),
        });
    };
    let hmac_key = decode_eab_hmac_key(&hmac).map_err(AccountError::DecodeEabKey)?;
    Ok(Some(ExternalAccountBinding { key_id, hmac_key }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        AcmeSolver, Http01Ingress, Http01Solver, ObjectMetaTemplate, SecretKeySelector, SolverPodTemplate,
    };

    fn issuer(
        kind: IssuerKind,
        server: &str,
        skip_tls_verify: Option<bool>,
        pod_annotation: Option<&str>,
    ) -> IssuerInfo {
        let metadata = pod_annotation.map(|key| ObjectMetaTemplate {
            annotations: BTreeMap::from([(key.to_string(), "x".to_string())]),
            ..Default::default()
        });
        let ingress =
            Http01Ingress { pod_template: Some(SolverPodTemplate { metadata, spec: None }), ..Default::default() };
        IssuerInfo {
            kind,
            name: "ca".into(),
            secret_namespace: "apps".into(),
            acme: AcmeIssuer {
                account_per_namespace: None,
                send_lifetime: None,
                profile: None,
                revocation: None,
                server: server.into(),
                email: None,
                ca_bundle: None,
                issuing_ca_bundle: None,
                skip_tls_verify,
                private_key_secret_ref: SecretKeySelector { name: "key".into(), key: None },
                external_account_binding: None,
                solvers: vec![AcmeSolver {
                    selector: None,
                    http01: Http01Solver { ingress: Some(ingress), gateway_http_route: None },
                }],
            },
            policy: None,
            ready: false,
            offers_renewal_info: false,
            generation: Some(1),
            recorded_account: None,
        }
    }

    #[test]
    fn the_operators_rules_give_each_refused_issuer_its_own_reason() {
        let mut config = super::super::ControllerConfig::new("kacme", "kacme:test");
        config.namespaced_issuers.allowed_servers = vec!["ca.internal".into()];
        let (issuer_kind, cluster) = (IssuerKind::Issuer, IssuerKind::ClusterIssuer);
        let allowed = "https://ca.internal/dir";
        let other = "https://other.internal/dir";
        // (case, issuer, reason of the refusal or None)
        let cases = [
            ("an Issuer on an allowed server", issuer(issuer_kind, allowed, None, None), None),
            ("an Issuer elsewhere", issuer(issuer_kind, other, None, None), Some(IssuerReason::ServerNotAllowed)),
            (
                "an Issuer skipping TLS verification",
                issuer(issuer_kind, allowed, Some(true), None),
                Some(IssuerReason::SkipTlsVerifyNotAllowed),
            ),
            ("a ClusterIssuer elsewhere, skipping verification", issuer(cluster, other, Some(true), None), None),
            (
                "an Issuer with a snippet in its pod template",
                issuer(issuer_kind, allowed, None, Some("server-snippet")),
                Some(IssuerReason::SolverTemplateNotAllowed),
            ),
            (
                "a ClusterIssuer with an auth annotation in its pod template",
                issuer(cluster, other, None, Some("example.com/auth-url")),
                Some(IssuerReason::SolverTemplateNotAllowed),
            ),
        ];
        for (case, info, reason) in cases {
            let result = check_operator_rules(&info, &config);
            assert_eq!(result.as_ref().err().map(AccountError::reason), reason, "{case}: {result:?}");
            if let Err(error) = result {
                assert_eq!(error.retry_after(), RECHECK_FAILED, "{case}: only a person can fix it");
            }
        }
    }

    #[test]
    fn only_https_urls_the_client_can_use_are_accepted_as_the_directory() {
        // (server, accepted)
        let cases = [
            ("https://ca.internal/acme/acme/directory", true),
            ("https://127.0.0.1:9000/dir", true),
            ("https://[::1]:14000/dir", true),
            ("http://ca.internal/directory", false),
            ("https:///directory", false),
            ("https://exämple.internal/directory", false),
            ("https://ca.internal/a b", false),
            ("ca.internal/directory", false),
            // A port the client would wrap or ignore, dialling another port than the one written.
            ("https://127.0.0.1:99999/dir", false),
            ("https://127.0.0.1:0/dir", false),
        ];
        for (server, accepted) in cases {
            let result = check_directory_url(server);
            assert_eq!(result.is_ok(), accepted, "{server}: {result:?}");
            if let Err(error) = result {
                assert_eq!(error.reason(), IssuerReason::InvalidServer);
                assert!(error.to_string().contains(server), "{error}");
            }
        }
    }

    // --- Accounts across restarts, with the real reconcilers over the fake apiserver and CA ---------------

    use crate::acme::fake::{Endpoint, FakeAcme};
    use crate::controller::testing::{ACCOUNT_KEY_SECRET, IssuanceHarness, NAMESPACE, ready_cluster_issuer_at};
    use std::sync::Arc;

    const MAX_PASSES: usize = 12;

    /// Runs the Issuer reconciler once over the Issuer as the fake apiserver holds it; returns its status.
    async fn reconcile_the_issuer(harness: &mut IssuanceHarness) -> crate::api::IssuerStatus {
        harness.sync_caches();
        harness.ctx.retry_gate.release_all();
        let issuer: Issuer = harness.apiserver.get(NAMESPACE, "ca").expect("the Issuer");
        super::super::issuer::reconcile_issuer(Arc::new(issuer), harness.ctx.clone()).await.expect("reconciled");
        let issuer: Issuer = harness.apiserver.get(NAMESPACE, "ca").expect("the Issuer");
        let status = issuer.status.expect("a status");
        assert!(is_ready(Some(&status.conditions)), "{status:#?}");
        status
    }

    /// Edits the account key Secret's metadata as a person would (the key stays).
    fn label_the_key_secret(harness: &IssuanceHarness, namespace: &str, name: &str) {
        let mut secret: Secret = harness.apiserver.get(namespace, name).expect("the key Secret");
        secret.metadata.labels.get_or_insert_with(BTreeMap::new).insert("team".into(), "payments".into());
        harness.apiserver.put(&secret);
    }

    fn new_accounts(ca: &FakeAcme) -> u64 {
        ca.requests(Endpoint::NewAccount)
    }

    #[tokio::test]
    async fn an_issuer_keeps_its_account_across_restarts_and_key_secret_edits_without_asking_the_ca() {
        let mut harness = IssuanceHarness::ready_to_issue().await;
        let first = reconcile_the_issuer(&mut harness).await;
        let recorded = first.acme.clone().expect("the account in status");
        assert!(recorded.key_thumbprint.is_some() && recorded.server.as_deref() == Some(&*harness.ca.directory_url()));
        assert_eq!(new_accounts(&harness.ca), 1, "registered once");

        // (case, what happens before the operator looks again)
        for case in ["a restart", "a label on the key Secret", "a label and a restart"] {
            if case.contains("label") {
                label_the_key_secret(&harness, NAMESPACE, ACCOUNT_KEY_SECRET);
            }
            if case.contains("restart") {
                harness.restart();
            }
            let status = reconcile_the_issuer(&mut harness).await;
            assert_eq!(status.acme, first.acme, "{case}");
            assert_eq!(new_accounts(&harness.ca), 1, "{case}: no newAccount");
        }
        // The Certificate reconciler of a restarted operator uses the recorded account too, and issues.
        harness.restart();
        harness.run_until_ready(MAX_PASSES).await;
        assert_eq!(new_accounts(&harness.ca), 1, "no newAccount for the Certificate either");
        assert_eq!(harness.ca.accounts_created(), 1);
        assert!(harness.stored_key_matches_certificate());
    }

    #[tokio::test]
    async fn a_recorded_account_the_ca_no_longer_knows_is_registered_again_without_failing_the_certificate() {
        let mut harness = IssuanceHarness::ready_to_issue().await;
        let first = reconcile_the_issuer(&mut harness).await.acme.expect("the account in status");
        harness.ca.forget_accounts();
        harness.restart();

        harness.run_until_ready(MAX_PASSES).await;

        // Restored (no request), refused at the first order, then one lookup and one registration.
        assert_eq!(new_accounts(&harness.ca), 3, "the first registration, a lookup and the new registration");
        assert_eq!(harness.ca.accounts_created(), 2);
        let status = harness.certificate().status.expect("a status");
        assert_eq!(status.failed_issuance_attempts, None, "the stale account is not the Certificate's failure");
        // The Issuer records the new account; a restart then restores that one.
        let second = reconcile_the_issuer(&mut harness).await.acme.expect("the account in status");
        assert_ne!(second.uri, first.uri);
        assert_eq!(second.key_thumbprint, first.key_thumbprint, "the same key");
        harness.restart();
        reconcile_the_issuer(&mut harness).await;
        assert_eq!(new_accounts(&harness.ca), 3);
    }

    #[tokio::test]
    async fn a_replaced_key_is_a_new_account_and_never_gets_the_old_url() {
        let mut harness = IssuanceHarness::ready_to_issue().await;
        let first = reconcile_the_issuer(&mut harness).await.acme.expect("the account in status");
        // Someone puts another account key into the Secret (for example a restored backup).
        let other_key = FakeAcme::start().await.register_account().await.1;
        let mut secret: Secret = harness.apiserver.get(NAMESPACE, ACCOUNT_KEY_SECRET).expect("the key Secret");
        secret.data = Some(BTreeMap::from([(TLS_KEY.to_string(), ByteString(other_key.pem().as_bytes().to_vec()))]));
        harness.apiserver.put(&secret);
        harness.restart();

        let second = reconcile_the_issuer(&mut harness).await.acme.expect("the account in status");

        assert_ne!(second.key_thumbprint, first.key_thumbprint);
        assert_ne!(second.uri, first.uri);
        assert_eq!(new_accounts(&harness.ca), 3, "a lookup, then a registration of the new key");
        assert_eq!(harness.ca.accounts_created(), 2);
    }

    #[tokio::test]
    async fn a_namespace_account_is_recorded_on_its_key_secret_and_restored_from_it() {
        let mut harness = IssuanceHarness::start().await;
        let mut cluster_issuer = ready_cluster_issuer_at("corp", &harness.ca);
        cluster_issuer.spec.acme.account_per_namespace = Some(true);
        harness.apiserver.put(&cluster_issuer);
        let info = IssuerInfo::from_cluster_issuer(&cluster_issuer, "kacme-system").expect("an issuer");
        let location = info.account_for(NAMESPACE);
        let ensure = |harness: &IssuanceHarness| {
            let (ctx, info, location) = (harness.ctx.clone(), info.clone(), location.clone());
            async move { ensure_account(&ctx, &info, &location).await.expect("the namespace's account") }
        };

        let account = ensure(&harness).await;
        let secret: Secret = harness.apiserver.get("kacme-system", &location.key_secret).expect("the key Secret");
        assert_eq!(recorded_on_secret(&secret), Some(account.record()), "recorded when the Secret is created");

        for case in ["a restart", "a label on the key Secret and a restart"] {
            if case.contains("label") {
                label_the_key_secret(&harness, "kacme-system", &location.key_secret);
            }
            harness.restart();
            harness.sync_caches();
            let again = ensure(&harness).await;
            assert_eq!(again.uri(), account.uri(), "{case}");
            assert_eq!(new_accounts(&harness.ca), 1, "{case}: no newAccount");
        }

        // A key Secret from before the record (an older kacme): one lookup, then the record is added.
        let mut secret: Secret = harness.apiserver.get("kacme-system", &location.key_secret).expect("the key Secret");
        secret.metadata.annotations.as_mut().expect("annotations").remove(ANNOTATION_ACCOUNT_URL);
        harness.apiserver.put(&secret);
        harness.restart();
        harness.sync_caches();
        ensure(&harness).await;
        assert_eq!(new_accounts(&harness.ca), 2, "one lookup");
        let secret: Secret = harness.apiserver.get("kacme-system", &location.key_secret).expect("the key Secret");
        assert_eq!(recorded_on_secret(&secret), Some(account.record()), "recorded again");
        harness.restart();
        harness.sync_caches();
        ensure(&harness).await;
        assert_eq!(new_accounts(&harness.ca), 2);
    }
}
