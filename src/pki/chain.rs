//! Certificate chains: parsing a PEM chain, reading the leaf, and verifying it to a CA bundle.

use super::PkiError;
use super::keys::PrivateKey;
use super::pem_text::pem_blocks;
use jiff::Timestamp;
use rustls_pki_types::{CertificateDer, UnixTime};
use std::net::IpAddr;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What kacme needs to know of a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// DNS names of the subjectAltName extension, in certificate order.
    pub dns_names: Vec<String>,
    /// IP addresses of the subjectAltName extension, in certificate order.
    pub ip_addresses: Vec<IpAddr>,
    /// The subject's common name, if any.
    pub common_name: Option<String>,
    /// The subjectPublicKey bit string (the raw public key).
    pub public_key_raw: Vec<u8>,
    /// The serial number, as lowercase hex.
    pub serial: String,
    /// The issuer's distinguished name, as text.
    pub issuer: String,
    /// The certificate's identifier for ACME Renewal Information (RFC 9773 section 4.1:
    /// `base64url(authority key identifier).base64url(serial)`); `None` without an authority key identifier.
    pub renewal_id: Option<String>,
}

/// A parsed PEM chain: the leaf first, then the certificates that followed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedChain {
    pub leaf: CertificateInfo,
    /// Every certificate of the chain as DER, leaf first.
    pub certificates: Vec<Vec<u8>>,
}

/// Parses a PEM chain (leaf first, as ACME CAs and kubernetes.io/tls Secrets hold it).
pub fn parse_chain(pem_text: &[u8]) -> Result<ParsedChain, PkiError> {
    let certificates = certificate_ders(pem_text)?;
    let leaf_der = certificates.first().ok_or(PkiError::EmptyChain)?;
    let leaf = certificate_info(leaf_der, 0)?;
    for (index, der) in certificates.iter().enumerate().skip(1) {
        X509Certificate::from_der(der).map_err(|e| PkiError::ParseCertificate { index, detail: e.to_string() })?;
    }
    Ok(ParsedChain { leaf, certificates })
}

/// Reads a CA bundle: PEM text, or base64-encoded PEM text as cert-manager's caBundle fields take it.
/// Returns the DER of every certificate in it.
pub fn parse_ca_bundle(text: &[u8]) -> Result<Vec<Vec<u8>>, PkiError> {
    use base64::Engine as _;
    let decoded;
    let pem_text = if contains(text, b"-----BEGIN") {
        text
    } else {
        let compact: Vec<u8> = text.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
        decoded = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|_| PkiError::ParsePem("the CA bundle is neither PEM nor base64-encoded PEM".into()))?;
        &decoded
    };
    let certificates = certificate_ders(pem_text)?;
    if certificates.is_empty() {
        return Err(PkiError::EmptyCaBundle);
    }
    for (index, der) in certificates.iter().enumerate() {
        X509Certificate::from_der(der).map_err(|e| PkiError::ParseCertificate { index, detail: e.to_string() })?;
    }
    Ok(certificates)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn certificate_ders(pem_text: &[u8]) -> Result<Vec<Vec<u8>>, PkiError> {
    let text = std::str::from_utf8(pem_text).map_err(|_| PkiError::ParsePem("the data is not text".into()))?;
    Ok(pem_blocks(text)?.into_iter().filter(|(label, _)| label == "CERTIFICATE").map(|(_, der)| der).collect())
}

fn certificate_info(der: &[u8], index: usize) -> Result<CertificateInfo, PkiError> {
    let parse_error = |detail: String| PkiError::ParseCertificate { index, detail };
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| parse_error(e.to_string()))?;
    let timestamp = |t: x509_parser::time::ASN1Time| {
        Timestamp::from_second(t.timestamp()).map_err(|e| parse_error(format!("validity out of range: {e}")))
    };
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    let san = cert.subject_alternative_name().map_err(|e| parse_error(e.to_string()))?;
    for name in san.iter().flat_map(|san| san.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(dns) => dns_names.push(dns.to_string()),
            GeneralName::IPAddress(bytes) => {
                if let Some(ip) = ip_from_bytes(bytes) {
                    ip_addresses.push(ip);
                }
            }
            _ => {}
        }
    }
    let common_name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string);
    Ok(CertificateInfo {
        not_before: timestamp(cert.validity().not_before)?,
        not_after: timestamp(cert.validity().not_after)?,
        dns_names,
        ip_addresses,
        common_name,
        public_key_raw: cert.public_key().subject_public_key.data.to_vec(),
        serial: cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect(),
        issuer: cert.issuer().to_string(),
        renewal_id: renewal_id(&cert),
    })
}

/// RFC 9773 section 4.1: the base64url (unpadded) key identifier of the authority key identifier extension,
/// a dot, and the base64url DER content of the serial number.
fn renewal_id(cert: &X509Certificate<'_>) -> Option<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let aki = cert.iter_extensions().find_map(|extension| match extension.parsed_extension() {
        x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
        _ => None,
    })?;
    Some(format!("{}.{}", URL_SAFE_NO_PAD.encode(aki.0), URL_SAFE_NO_PAD.encode(cert.raw_serial())))
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Verifies that the chain's leaf leads, through the chain's other certificates, to one of the CA
/// bundle's certificates, with every certificate valid at `at`. Every certificate of the bundle is a
/// trust anchor (a private CA's bundle often holds a root and its intermediate). Extended key usages are
/// not restricted: a client-only certificate verifies as well as a server one.
pub fn verify_chain(chain: &ParsedChain, ca_bundle: &[Vec<u8>], at: Timestamp) -> Result<(), PkiError> {
    if ca_bundle.is_empty() {
        return Err(PkiError::EmptyCaBundle);
    }
    let anchor_ders: Vec<CertificateDer<'_>> = ca_bundle.iter().map(|d| CertificateDer::from(d.as_slice())).collect();
    let anchors = anchor_ders
        .iter()
        .map(webpki::anchor_from_trusted_cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::VerifyChain(format!("a CA bundle certificate cannot be a trust anchor: {e}")))?;
    let leaf_der = CertificateDer::from(chain.certificates[0].as_slice());
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| PkiError::VerifyChain(e.to_string()))?;
    let intermediates: Vec<CertificateDer<'_>> =
        chain.certificates[1..].iter().map(|d| CertificateDer::from(d.as_slice())).collect();
    let seconds = u64::try_from(at.as_second()).unwrap_or(0);
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds)),
        AnyExtendedKeyUsage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| PkiError::VerifyChain(e.to_string()))
}

/// The certificates of `ca_bundle` that the chain verifies to at `at`, each tried as the only trust anchor:
/// the roots (or intermediates) a client needs to trust this chain, and nothing else of the bundle.
pub fn verifying_anchors(chain: &ParsedChain, ca_bundle: &[Vec<u8>], at: Timestamp) -> Vec<Vec<u8>> {
    ca_bundle.iter().filter(|der| verify_chain(chain, std::slice::from_ref(*der), at).is_ok()).cloned().collect()
}

/// Accepts whatever extended key usages the leaf has: chain verification here is about the issuer.
struct AnyExtendedKeyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyExtendedKeyUsage {
    fn validate(&self, _: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

/// Whether the private key is the one whose public key the certificate carries.
pub fn key_matches_certificate(key: &PrivateKey, certificate: &CertificateInfo) -> bool {
    key.public_key_raw() == certificate.public_key_raw.as_slice()
}
