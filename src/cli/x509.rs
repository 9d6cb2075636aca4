//! The public facts of one X.509 certificate, as `kacme status` and `kacme inspect secret` show them.

use jiff::Timestamp;
use serde::Serialize;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// What a certificate says about itself. Public facts only: no key material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateFacts {
    /// The subject's distinguished name (RFC 4514 text; empty for an ACME leaf without a common name).
    pub subject: String,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// DNS names of the subjectAltName extension, in certificate order.
    pub dns_names: Vec<String>,
    /// IP addresses of the subjectAltName extension, in certificate order.
    pub ip_addresses: Vec<String>,
    /// The serial number as lowercase hex (as `status.revocation.serial` writes it).
    pub serial: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// The public key: `ECDSA P-256`, `RSA 2048`, `Ed25519`, ...
    pub public_key: String,
    /// Key usages (`Digital Signature`, `Key Encipherment`, ...).
    pub key_usages: Vec<String>,
    /// Extended key usages (`server auth`, `client auth`, ...; other purposes as OIDs).
    pub extended_key_usages: Vec<String>,
    /// Whether it is a CA certificate (basic constraints).
    pub is_ca: bool,
    /// SHA-256 of the DER, as colon-separated uppercase hex (as `openssl x509 -fingerprint -sha256`).
    pub sha256_fingerprint: String,
}

/// Reads the facts of a DER certificate; the error says what could not be read.
pub fn certificate_facts(der: &[u8]) -> Result<CertificateFacts, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let timestamp = |t: x509_parser::time::ASN1Time| {
        Timestamp::from_second(t.timestamp()).map_err(|e| format!("validity out of range: {e}"))
    };
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_names.push(dns.to_string()),
                GeneralName::IPAddress(bytes) => ip_addresses.push(ip_text(bytes)),
                _ => {}
            }
        }
    }
    let key_usages = match cert.key_usage() {
        Ok(Some(usage)) => usage.value.to_string().split(", ").filter(|s| !s.is_empty()).map(str::to_string).collect(),
        _ => Vec::new(),
    };
    let extended_key_usages = match cert.extended_key_usage() {
        Ok(Some(eku)) => {
            let eku = &eku.value;
            let named = [
                (eku.any, "any"),
                (eku.server_auth, "server auth"),
                (eku.client_auth, "client auth"),
                (eku.code_signing, "code signing"),
                (eku.email_protection, "email protection"),
                (eku.time_stamping, "time stamping"),
                (eku.ocsp_signing, "OCSP signing"),
            ];
            let mut usages: Vec<String> = named.iter().filter(|(on, _)| *on).map(|(_, n)| n.to_string()).collect();
            usages.extend(eku.other.iter().map(|oid| oid.to_id_string()));
            usages
        }
        _ => Vec::new(),
    };
    Ok(CertificateFacts {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        dns_names,
        ip_addresses,
        serial: cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect(),
        not_before: timestamp(cert.validity().not_before)?,
        not_after: timestamp(cert.validity().not_after)?,
        public_key: public_key_text(&cert),
        key_usages,
        extended_key_usages,
        is_ca: cert.is_ca(),
        sha256_fingerprint: fingerprint(der),
    })
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).map(|b| std::net::IpAddr::from(b).to_string()).unwrap_or_default(),
        16 => <[u8; 16]>::try_from(bytes).map(|b| std::net::IpAddr::from(b).to_string()).unwrap_or_default(),
        _ => format!("<{} bytes>", bytes.len()),
    }
}

fn public_key_text(cert: &X509Certificate<'_>) -> String {
    use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384, OID_NIST_EC_P521, OID_SIG_ED25519};
    let info = cert.public_key();
    if info.algorithm.algorithm == OID_SIG_ED25519 {
        return "Ed25519".into();
    }
    match info.parsed() {
        Ok(PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
        Ok(PublicKey::EC(_)) => {
            let curve = info.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            match curve {
                Some(oid) if oid == OID_EC_P256 => "ECDSA P-256".into(),
                Some(oid) if oid == OID_NIST_EC_P384 => "ECDSA P-384".into(),
                Some(oid) if oid == OID_NIST_EC_P521 => "ECDSA P-521".into(),
                Some(oid) => format!("ECDSA ({oid})"),
                None => "ECDSA".into(),
            }
        }
        _ => format!("{}", info.algorithm.algorithm),
    }
}

/// SHA-256 of `der` as colon-separated uppercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{KeyAlgorithm, KeyEncoding};
    use crate::pki::testing::TestCa;
    use crate::pki::{KeySpec, generate_private_key, parse_chain};

    fn leaf_facts(algorithm: KeyAlgorithm, size: u32) -> CertificateFacts {
        let ca = TestCa::new("Facts");
        let key = generate_private_key(&KeySpec { algorithm, size, encoding: KeyEncoding::Pkcs8 }).unwrap();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let pem = ca.issue(
            &key,
            &["a.example", "b.example"],
            &["10.0.0.1"],
            None,
            now,
            now + jiff::SignedDuration::from_hours(24),
        );
        let chain = parse_chain(pem.as_bytes()).unwrap();
        certificate_facts(&chain.certificates[0]).unwrap()
    }

    #[test]
    fn a_leaf_shows_its_names_serial_validity_and_issuer() {
        let facts = leaf_facts(KeyAlgorithm::Ecdsa, 256);
        assert_eq!(facts.dns_names, ["a.example", "b.example"]);
        assert_eq!(facts.ip_addresses, ["10.0.0.1"]);
        assert_eq!(facts.issuer, "CN=Facts Intermediate CA");
        assert_eq!(facts.not_before, Timestamp::from_second(1_700_000_000).unwrap());
        assert!(!facts.is_ca);
        assert!(!facts.serial.is_empty() && facts.serial.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(facts.sha256_fingerprint.len(), 32 * 3 - 1);
    }

    #[test]
    fn the_public_key_reads_as_algorithm_and_size() {
        assert_eq!(leaf_facts(KeyAlgorithm::Ecdsa, 256).public_key, "ECDSA P-256");
        assert_eq!(leaf_facts(KeyAlgorithm::Ecdsa, 384).public_key, "ECDSA P-384");
        assert_eq!(leaf_facts(KeyAlgorithm::Ed25519, 256).public_key, "Ed25519");
        assert_eq!(leaf_facts(KeyAlgorithm::Rsa, 2048).public_key, "RSA 2048");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(certificate_facts(b"not a certificate").is_err());
    }
}
