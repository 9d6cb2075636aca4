//! The `Certificate` resource: what a user asks for, and what kacme reports back.

use super::duration::{GO_DURATION_PATTERN, GoDuration};
use super::{DNS_NAME_PATTERN, ObjectMetaTemplate, dns_subdomain_schema};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A request for a certificate from an ACME Issuer or ClusterIssuer, kept valid in a `kubernetes.io/tls`
/// Secret and renewed before it expires.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kacme.dev",
    version = "v1alpha1",
    kind = "Certificate",
    namespaced,
    shortname = "kcert",
    category = "kacme",
    status = "CertificateStatus",
    doc = "A request for a certificate from an ACME Issuer or ClusterIssuer, kept valid in a kubernetes.io/tls Secret and renewed before it expires.",
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Secret", "type": "string", "jsonPath": ".spec.secretName"}"#,
    printcolumn = r#"{"name": "Issuer", "type": "string", "jsonPath": ".spec.issuerRef.name"}"#,
    printcolumn = r#"{"name": "Expires", "type": "string", "jsonPath": ".status.notAfter"}"#,
    printcolumn = r#"{"name": "Renewal", "type": "string", "jsonPath": ".status.renewalTime", "priority": 1}"#,
    printcolumn = r#"{"name": "Status", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].message", "priority": 1}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.dnsNames) && size(self.dnsNames) > 0) || (has(self.ipAddresses) && size(self.ipAddresses) > 0)")
        .message("at least one of dnsNames or ipAddresses must be given"),
    validation = Rule::new("!(has(self.renewBefore) && has(self.renewBeforePercentage))")
        .message("renewBefore and renewBeforePercentage are mutually exclusive: set at most one"),
    validation = Rule::new("!has(self.duration) || !has(self.renewBefore) || duration(self.renewBefore) < duration(self.duration)")
        .message("renewBefore must be shorter than duration"),
    validation = Rule::new("!has(self.commonName) || (has(self.dnsNames) && self.commonName in self.dnsNames) || (has(self.ipAddresses) && self.commonName in self.ipAddresses)")
        .message("commonName must also be listed in dnsNames or ipAddresses: an ACME CA only certifies the names of the order"),
    validation = Rule::new("!has(self.additionalOutputFormats) || self.additionalOutputFormats.all(f, self.additionalOutputFormats.exists_one(g, g.type == f.type))")
        .message("additionalOutputFormats lists each type at most once"),
)]
pub struct CertificateSpec {
    /// Name of the Secret (type kubernetes.io/tls, in the Certificate's namespace) that receives the
    /// certificate chain (tls.crt), its private key (tls.key) and the issuer's CA bundle (ca.crt).
    /// kacme creates it; an existing Secret that kacme did not create for this Certificate is never touched.
    #[schemars(schema_with = "dns_subdomain_schema")]
    pub secret_name: String,

    /// The Issuer or ClusterIssuer that signs the certificate.
    pub issuer_ref: IssuerRef,

    /// DNS names to certify, as lowercase fully qualified names (for example `api.example.internal`).
    /// Every name must be reachable by the CA through the issuer's HTTP-01 solver on port 80. Wildcard
    /// names are not supported: they need DNS-01 validation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "dns_names_schema")]
    pub dns_names: Vec<String>,

    /// IP addresses to certify (IPv4 or IPv6), validated by the CA over HTTP-01 (RFC 8738).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "ip_addresses_schema")]
    pub ip_addresses: Vec<String>,

    /// Optional subject common name. It must also be listed in dnsNames or ipAddresses. Leave it out
    /// unless a client still reads the common name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub common_name: Option<String>,

    /// Requested lifetime of the certificate as a Go duration (for example `24h`, `2160h`), at least 5m.
    /// Sent to the CA as the order's `notAfter` (unless the issuer sets `sendLifetime: false`); the CA may
    /// shorten it, and refuses one above its maximum (reason `DurationNotAllowed`). Absent: the CA's default
    /// lifetime applies (24h for step-ca). Renewal always follows the lifetime actually issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "lifetime_schema")]
    pub duration: Option<GoDuration>,

    /// How long before expiry to renew, as a Go duration (for example `8h`). Mutually exclusive with
    /// renewBeforePercentage. When both are absent the certificate is renewed when 2/3 of its lifetime
    /// has passed. A value longer than the issued lifetime is clamped so that renewal still happens
    /// after issuance, never in a loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "positive_duration_schema")]
    pub renew_before: Option<GoDuration>,

    /// How long before expiry to renew, as a percentage (1-99) of the issued lifetime. Mutually exclusive
    /// with renewBefore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub renew_before_percentage: Option<i32>,

    /// The private key of the certificate. Defaults to ECDSA P-256, PKCS#1/SEC1 encoding, rotated on
    /// every issuance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKeySpec>,

    /// Key usages and extended key usages to request. Defaults to `digital signature` and `server auth`,
    /// plus `key encipherment` for RSA keys. Workloads doing mutual TLS want both `server auth` and
    /// `client auth`. Note that a CA may apply its own policy to usages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub usages: Vec<KeyUsage>,

    /// Labels and annotations to put on the Secret, in addition to kacme's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<ObjectMetaTemplate>,

    /// The ACME profile to ask the CA for (draft-ietf-acme-profiles), instead of the issuer's `profile`:
    /// one of the names the CA's directory lists in `meta.profiles`. A name the CA does not offer fails the
    /// issuance with reason `ProfileNotOffered` before any order is placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::api::validation::profile_schema")]
    pub profile: Option<String>,

    /// More encodings of the certificate and key in the Secret, for clients that cannot read the PEM pair:
    /// `CombinedPEM` adds `tls-combined.pem` (the private key, then the chain), `DER` adds `key.der` (the
    /// private key in DER). Adding or removing a format rewrites the Secret without a new certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub additional_output_formats: Vec<OutputFormat>,

    /// Keystores written to the Secret next to the PEM files, for clients (Java, .NET) that read only
    /// keystores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keystores: Option<Keystores>,
}

/// One more encoding of the certificate and key in the Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct OutputFormat {
    /// `CombinedPEM` (`tls-combined.pem`: the private key, then the chain) or `DER` (`key.der`: the private
    /// key in DER).
    #[serde(rename = "type")]
    pub type_: OutputFormatType,
}

/// An additional output format of the Secret.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum OutputFormatType {
    /// `tls-combined.pem`: the private key followed by the certificate chain, in PEM.
    #[serde(rename = "CombinedPEM")]
    CombinedPem,
    /// `key.der`: the private key in DER (the encoding of tls.key).
    #[serde(rename = "DER")]
    Der,
}

impl OutputFormatType {
    /// The name as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormatType::CombinedPem => "CombinedPEM",
            OutputFormatType::Der => "DER",
        }
    }
}

/// Keystores in the Certificate's Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Keystores {
    /// A PKCS#12 keystore (`keystore.p12`: the private key with the chain and the CA) and, when the issuer's
    /// CA is known, a PKCS#12 truststore (`truststore.p12`: the CA certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs12: Option<Pkcs12Keystore>,
}

/// A PKCS#12 keystore and truststore, encrypted with a password read from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pkcs12Keystore {
    /// Whether to write `keystore.p12` and `truststore.p12`.
    pub create: bool,
    /// The Secret (in the Certificate's namespace) and key holding the password of the keystore and the
    /// truststore. The key defaults to `password`. kacme only reads this Secret. A changed password is used
    /// for the next issuance, or at once when the Certificate is renewed with `kacme renew`.
    pub password_secret_ref: super::SecretKeySelector,
    /// Encryption: `Modern2023` (the default: PBES2 with AES-256-CBC and PBKDF2-HMAC-SHA256, MAC
    /// HMAC-SHA256, 2048 iterations, as OpenSSL 3 writes by default) or `LegacyDES` (3DES and SHA-1, for Java before 8u301 and
    /// other old readers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Pkcs12Profile>,
}

/// How a PKCS#12 keystore is encrypted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Pkcs12Profile {
    /// PBES2 with AES-256-CBC and PBKDF2-HMAC-SHA256; MAC HMAC-SHA256.
    #[default]
    Modern2023,
    /// PBE with SHA-1 and 3-key triple DES; MAC HMAC-SHA1.
    #[serde(rename = "LegacyDES")]
    LegacyDes,
}

impl Pkcs12Profile {
    /// The name as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Pkcs12Profile::Modern2023 => "Modern2023",
            Pkcs12Profile::LegacyDes => "LegacyDES",
        }
    }
}

/// A reference to the Issuer (same namespace) or ClusterIssuer that signs a Certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the Issuer or ClusterIssuer.
    #[schemars(schema_with = "dns_subdomain_schema")]
    pub name: String,
    /// Kind of the issuer: `Issuer` (in the Certificate's namespace, the default) or `ClusterIssuer`.
    #[serde(default)]
    pub kind: IssuerKind,
}

/// The kind of an issuer reference.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum IssuerKind {
    /// A namespaced Issuer in the Certificate's namespace.
    #[default]
    Issuer,
    /// A cluster-scoped ClusterIssuer.
    ClusterIssuer,
}

impl std::fmt::Display for IssuerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IssuerKind::Issuer => "Issuer",
            IssuerKind::ClusterIssuer => "ClusterIssuer",
        })
    }
}

/// The private key of a Certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.size) || ((has(self.algorithm) ? self.algorithm : 'ECDSA') == 'RSA' && self.size in [2048, 3072, 4096]) || ((has(self.algorithm) ? self.algorithm : 'ECDSA') == 'ECDSA' && self.size in [256, 384])")
        .message("size must be 2048, 3072 or 4096 for RSA, 256 or 384 for ECDSA, and absent for Ed25519"),
    validation = Rule::new("!(has(self.algorithm) && self.algorithm == 'Ed25519' && has(self.encoding) && self.encoding == 'PKCS1')")
        .message("Ed25519 keys have no PKCS#1 form: use encoding PKCS8 or leave it out"),
)]
pub struct PrivateKeySpec {
    /// Key algorithm: `ECDSA` (the default), `RSA` or `Ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<KeyAlgorithm>,
    /// Key size in bits: 2048 (default), 3072 or 4096 for RSA; 256 (default, P-256) or 384 (P-384) for
    /// ECDSA; absent for Ed25519.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    /// Encoding of tls.key: `PKCS1` (the default; PKCS#1 for RSA, SEC1 for ECDSA) or `PKCS8`. Ed25519
    /// keys are always PKCS#8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<KeyEncoding>,
    /// Whether a new private key is generated on each issuance: `Always` (the default) or `Never`
    /// (reuse the key in the Secret while it still matches this spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_policy: Option<RotationPolicy>,
}

/// Key algorithm: `ECDSA` (the default), `RSA` or `Ed25519`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum KeyAlgorithm {
    /// Elliptic-curve DSA on P-256 or P-384.
    #[default]
    #[serde(rename = "ECDSA")]
    Ecdsa,
    /// RSA with 2048, 3072 or 4096 bits.
    #[serde(rename = "RSA")]
    Rsa,
    /// Ed25519 (fixed size).
    Ed25519,
}

/// Encoding of tls.key: `PKCS1` (the default; PKCS#1 for RSA, SEC1 for ECDSA) or `PKCS8`. Ed25519 keys are
/// always PKCS#8.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum KeyEncoding {
    /// PKCS#1 (`RSA PRIVATE KEY`) for RSA, SEC1 (`EC PRIVATE KEY`) for ECDSA.
    #[serde(rename = "PKCS1")]
    Pkcs1,
    /// PKCS#8 (`PRIVATE KEY`).
    #[serde(rename = "PKCS8")]
    Pkcs8,
}

/// Whether a new private key is generated on each issuance: `Always` (the default) or `Never` (reuse the
/// key in the Secret while it still matches the spec).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum RotationPolicy {
    /// Generate a new key on each issuance.
    #[default]
    Always,
    /// Keep the existing key while it matches the spec.
    Never,
}

/// A key usage or extended key usage, named as in cert-manager.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum KeyUsage {
    /// Key usage digitalSignature.
    #[serde(rename = "digital signature")]
    DigitalSignature,
    /// Key usage contentCommitment (nonRepudiation).
    #[serde(rename = "content commitment")]
    ContentCommitment,
    /// Key usage keyEncipherment.
    #[serde(rename = "key encipherment")]
    KeyEncipherment,
    /// Key usage dataEncipherment.
    #[serde(rename = "data encipherment")]
    DataEncipherment,
    /// Key usage keyAgreement.
    #[serde(rename = "key agreement")]
    KeyAgreement,
    /// Extended key usage TLS server authentication.
    #[serde(rename = "server auth")]
    ServerAuth,
    /// Extended key usage TLS client authentication.
    #[serde(rename = "client auth")]
    ClientAuth,
    /// Extended key usage code signing.
    #[serde(rename = "code signing")]
    CodeSigning,
    /// Extended key usage email protection (S/MIME).
    #[serde(rename = "email protection")]
    EmailProtection,
    /// Extended key usage time stamping.
    #[serde(rename = "timestamping")]
    TimeStamping,
    /// Extended key usage OCSP signing.
    #[serde(rename = "ocsp signing")]
    OcspSigning,
}

impl KeyUsage {
    /// The name of the usage as the API spells it, for example `server auth`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyUsage::DigitalSignature => "digital signature",
            KeyUsage::ContentCommitment => "content commitment",
            KeyUsage::KeyEncipherment => "key encipherment",
            KeyUsage::DataEncipherment => "data encipherment",
            KeyUsage::KeyAgreement => "key agreement",
            KeyUsage::ServerAuth => "server auth",
            KeyUsage::ClientAuth => "client auth",
            KeyUsage::CodeSigning => "code signing",
            KeyUsage::EmailProtection => "email protection",
            KeyUsage::TimeStamping => "timestamping",
            KeyUsage::OcspSigning => "ocsp signing",
        }
    }
}

/// What kacme last observed and did for a Certificate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// `Ready` (the Secret holds a valid certificate matching the spec) and `Issuing` (an issuance is in
    /// progress or has just failed), each with a CamelCase reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Start of validity of the certificate in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    /// End of validity of the certificate in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When kacme will renew the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// Number of certificates issued for this Certificate so far; increases by one on each issuance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// When the last issuance attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
    /// Consecutive failed issuance attempts since the last success; drives the retry backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_issuance_attempts: Option<i32>,
    /// Name of the Secret holding the private key of the issuance in progress (kept until the certificate
    /// is stored, so that a restart never loses the key of an issued certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_private_key_secret_name: Option<String>,
    /// The value of the `kacme.dev/renew-requested-at` annotation that the last issuance acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_renewal_request: Option<String>,
    /// The ACME order in flight, if any; a restarted operator resumes it instead of starting over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderStatus>,
    /// When the CA suggests renewing the current certificate (ACME Renewal Information, RFC 9773), for CAs
    /// whose directory offers `renewalInfo`. kacme renews at a point inside the suggested window (at once
    /// when the window has begun), or earlier when `renewBefore`/`renewBeforePercentage` ask for earlier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_info: Option<RenewalInfoStatus>,
    /// The last revocation kacme was asked for (`kacme.dev/revoke-requested-at`) and what came of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<RevocationStatus>,
}

/// A revocation of the certificate in a Certificate's Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevocationStatus {
    /// The value of `kacme.dev/revoke-requested-at` this revocation acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The serial number (hex) of the revoked certificate; empty when there was none to revoke.
    pub serial: String,
    /// The RFC 5280 reason sent.
    pub reason: String,
    /// When the CA confirmed the revocation; absent when it failed (see `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Time>,
    /// Why the revocation failed for good, in the CA's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The CA's renewal suggestion for a certificate (RFC 9773).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenewalInfoStatus {
    /// The certificate the suggestion is for: its RFC 9773 identifier
    /// (`base64url(authority key identifier).base64url(serial)`).
    pub certificate_id: String,
    /// Start of the suggested renewal window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<Time>,
    /// End of the suggested renewal window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<Time>,
    /// The CA's page explaining the window, if it gave one (for example after a revocation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "explanationURL")]
    pub explanation_url: Option<String>,
    /// When kacme asks the CA again: after the CA's Retry-After, at least a minute and at most the
    /// operator's `--renewal-info-max-interval` later.
    pub next_check: Time,
    /// Why the last check gave no window, if it failed (kacme then renews on its own schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// An ACME order in flight.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderStatus {
    /// The order URL at the CA.
    pub url: String,
    /// The order state as the CA last reported it: pending, ready, processing, valid or invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The identifiers (DNS names and IP addresses) the order was created for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifiers: Vec<String>,
    /// One entry per authorization of the order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorizations: Vec<AuthorizationStatus>,
}

/// One authorization of an ACME order and how kacme is solving it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationStatus {
    /// The identifier being authorized (a DNS name or an IP address).
    pub identifier: String,
    /// The authorization URL at the CA.
    pub url: String,
    /// The URL of the HTTP-01 challenge being used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge_url: Option<String>,
    /// The HTTP-01 token (public; the key authorization is derived from the account key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Where kacme stands with the authorization: pending (nothing presented yet), presented (the solver
    /// is being set up), submitted (the CA is validating), valid, invalid, or gone (expired, revoked or
    /// deactivated at the CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// When the challenge was first presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presented_at: Option<Time>,
    /// Name shared by the solver Pod, Service and Ingress of this authorization, while they exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver_name: Option<String>,
    /// The last message about this authorization, such as the CA's reason for an invalid challenge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn dns_names_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": super::validation::MAX_NAMES,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": 253,
            "pattern": DNS_NAME_PATTERN,
        },
        "x-kubernetes-validations": [
            {
                "rule": "self.all(n, !n.startsWith('*.'))",
                "message": "wildcard names need DNS-01 validation, which kacme does not support; list each name"
            },
            {
                "rule": super::validation::NUMERIC_TLD_RULE,
                "message": "a DNS name cannot end in an all-digit label: an IP address belongs in ipAddresses"
            }
        ],
        "x-kubernetes-list-type": "set"
    })
}

fn ip_addresses_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": super::validation::MAX_NAMES,
        "items": {
            "type": "string",
            "minLength": 2,
            "maxLength": 45,
        },
        "x-kubernetes-validations": [
            {
                "rule": "self.all(a, isIP(a))",
                "message": "every ipAddresses entry must be a valid IPv4 or IPv6 address"
            }
        ],
        "x-kubernetes-list-type": "set"
    })
}

fn lifetime_schema(_: &mut SchemaGenerator) -> Schema {
    super::validation::lifetime_schema("duration")
}

fn positive_duration_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 64,
        "pattern": GO_DURATION_PATTERN,
        "x-kubernetes-validations": [
            {
                "rule": super::validation::renew_before_rule(),
                "message": format!(
                    "renewBefore must be a positive duration such as 8h, at most {} (100 years)",
                    super::validation::MAX_DURATION_TEXT
                )
            }
        ]
    })
}
