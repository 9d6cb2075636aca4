//! The condition types and reasons kacme writes into status: the vocabulary that `kubectl describe`,
//! `kubectl wait --for=condition=Ready` and alerts read. One name per meaning, spelled once.

use std::fmt;

/// The type of a status condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// The object is usable: a Certificate's Secret holds a valid certificate matching the spec; an issuer's
    /// ACME account is registered.
    Ready,
    /// A Certificate is being issued (True while an order is in flight; False with the reason of the last
    /// attempt when it failed or was abandoned).
    Issuing,
}

impl ConditionType {
    /// The type as conditions spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Issuing => "Issuing",
        }
    }
}

/// Why a certificate is (re)issued: the reason of the `Issuing` condition (and of `Ready=False` while the
/// Secret holds no usable certificate). The order is the order in which the issuance policy checks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IssuanceReason {
    /// The Secret does not exist.
    DoesNotExist,
    /// The Secret was written by kacme for an earlier Certificate of the same name, since deleted: it is
    /// replaced with a certificate for a new key (its key is never trusted).
    SecretOfEarlierCertificate,
    /// The Secret lacks tls.crt or tls.key.
    MissingData,
    /// tls.crt or tls.key cannot be read, or they do not belong together.
    InvalidKeyPair,
    /// The private key's algorithm, size or encoding differs from the spec.
    KeyMismatchesSpec,
    /// Names, common name, usages or issuer differ from what the certificate was issued for.
    SpecChanged,
    /// The renewal time has been reached.
    Expiring,
    /// A user asked for renewal (annotation `kacme.dev/renew-requested-at` or `kacme renew`).
    ManuallyTriggered,
    /// The certificate in the Secret was revoked (`kacme revoke`): a new one is issued, with a new key.
    Revoked,
}

impl IssuanceReason {
    /// The CamelCase condition reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            IssuanceReason::DoesNotExist => "DoesNotExist",
            IssuanceReason::SecretOfEarlierCertificate => "SecretOfEarlierCertificate",
            IssuanceReason::MissingData => "MissingData",
            IssuanceReason::InvalidKeyPair => "InvalidKeyPair",
            IssuanceReason::KeyMismatchesSpec => "KeyMismatchesSpec",
            IssuanceReason::SpecChanged => "SpecChanged",
            IssuanceReason::Expiring => "Expiring",
            IssuanceReason::ManuallyTriggered => "ManuallyTriggered",
            IssuanceReason::Revoked => "Revoked",
        }
    }
}

/// The other reasons of a Certificate's `Ready` and `Issuing` conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertificateReason {
    /// Ready=True: the certificate is up to date.
    Ready,
    /// Issuing=True before a more precise reason is known.
    Issuing,
    /// The last issuance attempt failed (the message has the CA's words); it is retried with backoff.
    Failed,
    /// The Secret named by `secretName` belongs to something else; kacme leaves it alone.
    SecretNotOwned,
    /// The issuer named by `issuerRef` does not exist.
    IssuerNotFound,
    /// The issuer exists but its ACME account is not ready.
    IssuerNotReady,
    /// The issuer could not be read.
    IssuerUnavailable,
    /// The private key of the order in flight is gone; a new order starts.
    MissingPrivateKey,
    /// A solver (Pod, Service, Ingress) did not serve its challenge by the deadline; the attempt failed and
    /// is retried with backoff.
    SolverNotReady,
    /// The issuer's policy does not permit this namespace, a name, an address, the lifetime or a usage.
    NotPermitted,
    /// The CA refused the lifetime asked for (`spec.duration` sent as the order's `notAfter`); the message
    /// has the CA's words. Ask for a shorter duration, or turn `sendLifetime` off on the issuer.
    DurationNotAllowed,
    /// The ACME profile asked for (`spec.profile`, or the issuer's `profile`) is not one the CA's directory
    /// offers (`meta.profiles`): no order is placed.
    ProfileNotOffered,
    /// The password of the PKCS#12 keystore (`keystores.pkcs12.passwordSecretRef`) cannot be read: no order
    /// is placed until it can.
    KeystorePasswordUnavailable,
}

impl CertificateReason {
    /// The CamelCase condition reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            CertificateReason::Ready => "Ready",
            CertificateReason::Issuing => "Issuing",
            CertificateReason::Failed => "Failed",
            CertificateReason::SecretNotOwned => "SecretNotOwned",
            CertificateReason::IssuerNotFound => "IssuerNotFound",
            CertificateReason::IssuerNotReady => "IssuerNotReady",
            CertificateReason::IssuerUnavailable => "IssuerUnavailable",
            CertificateReason::MissingPrivateKey => "MissingPrivateKey",
            CertificateReason::SolverNotReady => "SolverNotReady",
            CertificateReason::NotPermitted => "NotPermitted",
            CertificateReason::DurationNotAllowed => "DurationNotAllowed",
            CertificateReason::ProfileNotOffered => "ProfileNotOffered",
            CertificateReason::KeystorePasswordUnavailable => "KeystorePasswordUnavailable",
        }
    }
}

/// The reasons of an Issuer's or ClusterIssuer's `Ready` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IssuerReason {
    /// The ACME account is registered (or was found) at the CA.
    AcmeAccountRegistered,
    /// The CA refused or failed the account registration.
    ErrRegisterAcmeAccount,
    /// `caBundle` holds no readable certificate.
    InvalidCaBundle,
    /// `server` is not a URL the HTTP client can use.
    InvalidServer,
    /// The account key Secret exists but has no key under the expected name.
    InvalidAccountKeySecret,
    /// The account key Secret could not be read.
    ErrReadAccountKey,
    /// The account key Secret was created by someone else while kacme registered.
    AccountKeySecretRace,
    /// The new account key could not be stored.
    ErrStoreAccountKey,
    /// The EAB key Secret could not be read.
    ErrReadEabSecret,
    /// The EAB key Secret is missing, lacks the key, or holds no valid HMAC key.
    InvalidEabSecret,
    /// The issuer's policy cannot be applied (a selector, template or CIDR kacme cannot read).
    InvalidPolicy,
    /// A namespaced Issuer names an ACME server the operator does not allow (`--issuer-allowed-servers`).
    ServerNotAllowed,
    /// A namespaced Issuer skips TLS verification, which the operator does not allow
    /// (`--issuer-allow-skip-tls-verify`).
    SkipTlsVerifyNotAllowed,
    /// A solver's pod or ingress template sets a label or annotation the operator does not allow on the
    /// objects it creates (`--solver-template-allowed-keys`, `--solver-template-refused-words`).
    SolverTemplateNotAllowed,
    /// `profile` names an ACME profile that the CA's directory does not offer (`meta.profiles`).
    ProfileNotOffered,
}

impl IssuerReason {
    /// The CamelCase condition reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            IssuerReason::AcmeAccountRegistered => "ACMEAccountRegistered",
            IssuerReason::ErrRegisterAcmeAccount => "ErrRegisterACMEAccount",
            IssuerReason::InvalidCaBundle => "InvalidCABundle",
            IssuerReason::InvalidServer => "InvalidServer",
            IssuerReason::InvalidAccountKeySecret => "InvalidAccountKeySecret",
            IssuerReason::ErrReadAccountKey => "ErrReadAccountKey",
            IssuerReason::AccountKeySecretRace => "AccountKeySecretRace",
            IssuerReason::ErrStoreAccountKey => "ErrStoreAccountKey",
            IssuerReason::ErrReadEabSecret => "ErrReadEABSecret",
            IssuerReason::InvalidEabSecret => "InvalidEABSecret",
            IssuerReason::InvalidPolicy => "InvalidPolicy",
            IssuerReason::ServerNotAllowed => "ServerNotAllowed",
            IssuerReason::SkipTlsVerifyNotAllowed => "SkipTLSVerifyNotAllowed",
            IssuerReason::SolverTemplateNotAllowed => "SolverTemplateNotAllowed",
            IssuerReason::ProfileNotOffered => "ProfileNotOffered",
        }
    }
}

/// Reasons any object kacme reconciles (Certificate, Issuer, ClusterIssuer) can show in its `Ready`
/// condition, whatever its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReconcileReason {
    /// The reconcile panicked (a bug of kacme): the message is the panic's; the object is retried with
    /// backoff, and the next reconcile that gets through sets `Ready` again.
    Panicked,
}

impl ReconcileReason {
    /// The CamelCase condition reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            ReconcileReason::Panicked => "ReconcilePanicked",
        }
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(ConditionType, IssuanceReason, CertificateReason, IssuerReason, ReconcileReason);
