//! Labels and annotations kacme reads and writes.

/// Label on every object kacme creates: `app.kubernetes.io/managed-by: kacme`.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "kacme";
/// Label on solver objects: the Certificate they solve for.
pub const LABEL_CERTIFICATE: &str = "kacme.dev/certificate";
/// Label on solver objects: marks them as HTTP-01 solver objects.
pub const LABEL_SOLVER: &str = "kacme.dev/solver";
/// Label on solver objects: a hash of the challenge token (tokens are longer than a label value may be).
pub const LABEL_TOKEN_HASH: &str = "kacme.dev/token-hash";

/// Secret annotation: the Certificate this Secret belongs to. Without it, kacme never touches a Secret.
pub const ANNOTATION_CERTIFICATE_NAME: &str = "kacme.dev/certificate-name";
/// Secret annotation: the UID of the Certificate this Secret was written for. A Secret is kacme's for a
/// Certificate only when it records that Certificate's UID (see [`crate::decision::secret_ownership`]).
pub const ANNOTATION_CERTIFICATE_UID: &str = "kacme.dev/certificate-uid";
/// Secret annotation: the name of the issuer that signed the certificate.
pub const ANNOTATION_ISSUER_NAME: &str = "kacme.dev/issuer-name";
/// Secret annotation: the kind of the issuer that signed the certificate.
pub const ANNOTATION_ISSUER_KIND: &str = "kacme.dev/issuer-kind";
/// Secret annotation: the usages requested for the certificate, comma-separated, sorted.
pub const ANNOTATION_USAGES: &str = "kacme.dev/usages";
/// Secret annotation: the DNS names of the certificate, comma-separated.
pub const ANNOTATION_DNS_NAMES: &str = "kacme.dev/dns-names";
/// Secret annotation: the IP addresses of the certificate, comma-separated.
pub const ANNOTATION_IP_ADDRESSES: &str = "kacme.dev/ip-addresses";
/// Secret annotation: the namespace whose own ACME account key this Secret holds (ClusterIssuers with
/// `accountPerNamespace`). kacme uses such a key only for that namespace.
pub const ANNOTATION_ACCOUNT_NAMESPACE: &str = "kacme.dev/account-namespace";
/// Annotation of a namespace's account key Secret (which kacme created): the account URL at the CA, recorded
/// so that the account is used after a restart without asking the CA.
pub const ANNOTATION_ACCOUNT_URL: &str = "kacme.dev/account-url";
/// Annotation of a namespace's account key Secret: the RFC 7638 thumbprint of the key that the account URL
/// belongs to (a different key is a different account).
pub const ANNOTATION_ACCOUNT_KEY_THUMBPRINT: &str = "kacme.dev/account-key-thumbprint";
/// Annotation of a namespace's account key Secret: the ACME directory URL that the account URL belongs to.
pub const ANNOTATION_ACCOUNT_SERVER: &str = "kacme.dev/account-server";
/// Certificate annotation: set it to any new value (conventionally the current time) to renew now.
pub const ANNOTATION_RENEW_REQUESTED_AT: &str = "kacme.dev/renew-requested-at";
/// Certificate annotation: set it to any new value (conventionally the current time) to revoke the certificate
/// in the Secret now; kacme then issues a new one with a new key (`kacme revoke`).
pub const ANNOTATION_REVOKE_REQUESTED_AT: &str = "kacme.dev/revoke-requested-at";
/// Certificate annotation: the RFC 5280 reason sent with the revocation that `kacme.dev/revoke-requested-at`
/// asks for (`unspecified`, `keyCompromise`, `affiliationChanged`, `superseded`, `cessationOfOperation`).
pub const ANNOTATION_REVOCATION_REASON: &str = "kacme.dev/revocation-reason";

/// Secret data key of the certificate chain.
pub const TLS_CRT: &str = "tls.crt";
/// Secret data key of the private key.
pub const TLS_KEY: &str = "tls.key";
/// Secret data key of the CA bundle.
pub const CA_CRT: &str = "ca.crt";
/// Secret data key of the private key followed by the chain, in PEM (`additionalOutputFormats: CombinedPEM`).
pub const TLS_COMBINED_PEM: &str = "tls-combined.pem";
/// Secret data key of the private key in DER (`additionalOutputFormats: DER`).
pub const KEY_DER: &str = "key.der";
/// Secret data key of the PKCS#12 keystore (`keystores.pkcs12`).
pub const KEYSTORE_P12: &str = "keystore.p12";
/// Secret data key of the PKCS#12 truststore (`keystores.pkcs12`, when the CA is known).
pub const TRUSTSTORE_P12: &str = "truststore.p12";
/// The key of a keystore's password Secret when `passwordSecretRef.key` is absent.
pub const DEFAULT_KEYSTORE_PASSWORD_KEY: &str = "password";
/// Secret annotation: the additional output formats and keystores the Secret was written with, so that a
/// change of them rewrites the Secret (without a new certificate).
pub const ANNOTATION_OUTPUTS: &str = "kacme.dev/outputs";
