//! The checks a Pod's CSR must pass before kacme finalizes an order with it: nothing in it is trusted.
//!
//! The CSR must be well formed and signed by the key it carries (proof of possession, checked with
//! aws-lc-rs), name exactly the names the Pod may have (no more, no fewer, no other common name), and carry
//! a key kacme would generate itself (ECDSA P-256/P-384, Ed25519, RSA 2048 to 8192 bits).

use super::names::PodNames;
use crate::api::validation::quoted;
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use std::collections::BTreeSet;
use std::net::IpAddr;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry as oids;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// The largest CSR accepted (an RSA 8192 CSR with 100 names is far below).
pub const MAX_CSR_BYTES: usize = 64 * 1024;

/// A CSR kacme will not finalize with, and why (shown to the agent as it is: no key material in it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CsrRefusal(pub String);

/// What a CSR that passed [`check_csr`] asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedCsr {
    /// The CSR, DER.
    pub der: Vec<u8>,
    /// The subjectPublicKey bit string: what the issued leaf must carry.
    pub public_key_raw: Vec<u8>,
}

/// The DER of a PEM CSR (`CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST`), one block only.
pub fn csr_der_from_pem(text: &str) -> Result<Vec<u8>, CsrRefusal> {
    if text.len() > MAX_CSR_BYTES * 2 {
        return Err(CsrRefusal(format!("the CSR is larger than {} bytes", MAX_CSR_BYTES * 2)));
    }
    let blocks = pem::parse_many(text).map_err(|e| CsrRefusal(format!("the CSR is not PEM: {e}")))?;
    match blocks.as_slice() {
        [block] if matches!(block.tag(), "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST") => {
            Ok(block.contents().to_vec())
        }
        [block] => Err(CsrRefusal(format!("expected a CERTIFICATE REQUEST, found {}", quoted(block.tag())))),
        _ => Err(CsrRefusal(format!("expected one PEM block, found {}", blocks.len()))),
    }
}

/// Checks `der` against the names the Pod may have; see the module's doc.
pub fn check_csr(der: &[u8], permitted: &PodNames) -> Result<CheckedCsr, CsrRefusal> {
    if der.len() > MAX_CSR_BYTES {
        return Err(CsrRefusal(format!("the CSR is larger than {MAX_CSR_BYTES} bytes")));
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrRefusal(format!("the CSR does not parse: {e}")))?;
    if !rest.is_empty() {
        return Err(CsrRefusal("the CSR has trailing bytes".into()));
    }
    let info = &csr.certification_request_info;
    let public_key_raw = info.subject_pki.subject_public_key.data.to_vec();
    let algorithm = verification_algorithm(&csr)?;
    UnparsedPublicKey::new(algorithm, &public_key_raw)
        .verify(info.raw, &csr.signature_value.data)
        .map_err(|_| CsrRefusal("the CSR's signature does not verify with its own public key".into()))?;

    let mut dns_names = BTreeSet::new();
    let mut ip_addresses = BTreeSet::new();
    for extension in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(name) => {
                        dns_names.insert(name.to_ascii_lowercase());
                    }
                    GeneralName::IPAddress(bytes) => {
                        ip_addresses.insert(ip_of(bytes)?);
                    }
                    other => {
                        return Err(CsrRefusal(format!("the CSR asks for a name kacme does not issue: {other}")));
                    }
                }
            }
        }
    }
    let wanted_dns: BTreeSet<String> = permitted.dns_names.iter().cloned().collect();
    let wanted_ips: BTreeSet<IpAddr> = permitted.ip_addresses.iter().copied().collect();
    if let Some(extra) = dns_names.difference(&wanted_dns).next() {
        return Err(CsrRefusal(format!("the CSR asks for {}, which this Pod may not have", quoted(extra))));
    }
    if let Some(extra) = ip_addresses.difference(&wanted_ips).next() {
        return Err(CsrRefusal(format!("the CSR asks for {extra}, which this Pod may not have")));
    }
    let missing: Vec<String> = wanted_dns
        .difference(&dns_names)
        .cloned()
        .chain(wanted_ips.difference(&ip_addresses).map(ToString::to_string))
        .collect();
    if !missing.is_empty() {
        return Err(CsrRefusal(format!("the CSR lacks {} (it must name exactly the Pod's names)", missing.join(", "))));
    }
    for cn in info.subject.iter_common_name() {
        let cn = cn.as_str().map_err(|_| CsrRefusal("the CSR's common name is not text".into()))?;
        let is_name = wanted_dns.contains(&cn.to_ascii_lowercase())
            || cn.parse::<IpAddr>().is_ok_and(|ip| wanted_ips.contains(&ip));
        if !is_name {
            return Err(CsrRefusal(format!("the CSR's common name {} is not one of its names", quoted(cn))));
        }
    }
    Ok(CheckedCsr { der: der.to_vec(), public_key_raw })
}

fn ip_of(bytes: &[u8]) -> Result<IpAddr, CsrRefusal> {
    match bytes.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default())),
        16 => Ok(IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap_or_default())),
        n => Err(CsrRefusal(format!("the CSR has an IP address of {n} bytes"))),
    }
}

/// The algorithm that verifies the CSR's signature, when its key and signature are ones kacme accepts.
fn verification_algorithm(
    csr: &X509CertificationRequest<'_>,
) -> Result<&'static dyn VerificationAlgorithm, CsrRefusal> {
    let spki = &csr.certification_request_info.subject_pki;
    let key = spki.parsed().map_err(|e| CsrRefusal(format!("the CSR's public key does not parse: {e}")))?;
    let signature = &csr.signature_algorithm.algorithm;
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
    match key {
        PublicKey::EC(_)
            if curve.as_ref() == Some(&oids::OID_EC_P256) && *signature == oids::OID_SIG_ECDSA_WITH_SHA256 =>
        {
            Ok(&signature::ECDSA_P256_SHA256_ASN1)
        }
        PublicKey::EC(_)
            if curve.as_ref() == Some(&oids::OID_NIST_EC_P384) && *signature == oids::OID_SIG_ECDSA_WITH_SHA384 =>
        {
            Ok(&signature::ECDSA_P384_SHA384_ASN1)
        }
        PublicKey::RSA(rsa) if (2048..=8192).contains(&rsa.key_size()) => match signature {
            s if *s == oids::OID_PKCS1_SHA256WITHRSA => Ok(&signature::RSA_PKCS1_2048_8192_SHA256),
            s if *s == oids::OID_PKCS1_SHA384WITHRSA => Ok(&signature::RSA_PKCS1_2048_8192_SHA384),
            s if *s == oids::OID_PKCS1_SHA512WITHRSA => Ok(&signature::RSA_PKCS1_2048_8192_SHA512),
            other => Err(CsrRefusal(format!("the CSR's RSA signature algorithm {other} is not accepted"))),
        },
        PublicKey::Unknown(_)
            if spki.algorithm.algorithm == oids::OID_SIG_ED25519 && *signature == oids::OID_SIG_ED25519 =>
        {
            Ok(&signature::ED25519)
        }
        PublicKey::RSA(rsa) => Err(CsrRefusal(format!("an RSA key of {} bits: use 2048 to 8192", rsa.key_size()))),
        _ => Err(CsrRefusal(
            "the CSR's key is not one kacme accepts (ECDSA P-256 or P-384, Ed25519, RSA 2048-8192)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{KeyAlgorithm, KeyEncoding, KeyUsage};
    use crate::pki::{CsrRequest, KeySpec, build_csr, generate_private_key};

    fn names(dns: &[&str], ips: &[&str]) -> PodNames {
        PodNames {
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ip_addresses: ips.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    fn csr(spec: KeySpec, dns: &[&str], ips: &[&str], cn: Option<&str>) -> Vec<u8> {
        let key = generate_private_key(&spec).unwrap();
        let request = CsrRequest {
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ip_addresses: ips.iter().map(|s| s.parse().unwrap()).collect(),
            common_name: cn.map(Into::into),
            usages: [KeyUsage::DigitalSignature, KeyUsage::ServerAuth].into(),
        };
        build_csr(&request, &key).unwrap()
    }

    fn ecdsa() -> KeySpec {
        KeySpec { algorithm: KeyAlgorithm::Ecdsa, size: 256, encoding: KeyEncoding::Pkcs8 }
    }

    #[test]
    fn a_csr_with_exactly_the_pods_names_passes_for_every_key_kacme_generates() {
        let permitted = names(&["web-0.web.apps.svc"], &["10.213.0.12"]);
        let specs = [
            ecdsa(),
            KeySpec { algorithm: KeyAlgorithm::Ecdsa, size: 384, encoding: KeyEncoding::Pkcs8 },
            KeySpec { algorithm: KeyAlgorithm::Ed25519, size: 256, encoding: KeyEncoding::Pkcs8 },
            KeySpec { algorithm: KeyAlgorithm::Rsa, size: 2048, encoding: KeyEncoding::Pkcs8 },
        ];
        for spec in specs {
            let der = csr(spec, &["web-0.web.apps.svc"], &["10.213.0.12"], Some("web-0.web.apps.svc"));
            let checked = check_csr(&der, &permitted).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert!(!checked.public_key_raw.is_empty());
        }
    }

    #[test]
    fn a_csr_that_asks_for_more_fewer_or_other_names_is_refused() {
        let permitted = names(&["web-0.web.apps.svc", "web.apps.svc"], &[]);
        let cases = [
            (
                "another Pod's name",
                csr(ecdsa(), &["web-0.web.apps.svc", "web.apps.svc", "web-1.web.apps.svc"], &[], None),
                "web-1.web.apps.svc",
            ),
            ("an address", csr(ecdsa(), &["web-0.web.apps.svc", "web.apps.svc"], &["10.0.0.1"], None), "10.0.0.1"),
            ("a name short", csr(ecdsa(), &["web-0.web.apps.svc"], &[], None), "lacks web.apps.svc"),
            (
                "a foreign common name",
                csr(ecdsa(), &["web-0.web.apps.svc", "web.apps.svc"], &[], Some("admin")),
                "common name",
            ),
        ];
        for (case, der, expected) in cases {
            let error = check_csr(&der, &permitted).unwrap_err().0;
            assert!(error.contains(expected), "{case}: {error}");
        }
    }

    #[test]
    fn a_csr_whose_signature_does_not_match_its_key_is_refused() {
        let mut der = csr(ecdsa(), &["web.apps.svc"], &[], None);
        // The signature is at the end: flip a bit of it.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let error = check_csr(&der, &names(&["web.apps.svc"], &[])).unwrap_err().0;
        assert!(error.contains("signature") || error.contains("parse"), "{error}");
    }

    #[test]
    fn garbage_and_wrong_pem_are_refused_plainly() {
        assert!(check_csr(b"not a csr", &names(&["a.test"], &[])).unwrap_err().0.contains("does not parse"));
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(csr_der_from_pem(cert).unwrap_err().0.contains("expected a CERTIFICATE REQUEST"));
        assert!(csr_der_from_pem("hello").is_err());
    }

    proptest::proptest! {
        #[test]
        fn checking_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = check_csr(&bytes, &names(&["a.test"], &[]));
        }
    }
}
