//! Test fixtures: a throwaway CA (root + intermediate) that signs leaf certificates for any key.

use super::PrivateKey;
use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use std::net::IpAddr;

/// A root CA and an intermediate, as a private CA such as step-ca has them.
pub(crate) struct TestCa {
    root: CertifiedIssuer<'static, KeyPair>,
    intermediate: CertifiedIssuer<'static, KeyPair>,
}

pub(crate) fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

pub(crate) fn offset(t: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).unwrap()
}

impl TestCa {
    pub(crate) fn new(name: &str) -> TestCa {
        let root =
            CertifiedIssuer::self_signed(ca_params(&format!("{name} Root CA")), KeyPair::generate().unwrap()).unwrap();
        let intermediate = CertifiedIssuer::signed_by(
            ca_params(&format!("{name} Intermediate CA")),
            KeyPair::generate().unwrap(),
            &root,
        )
        .unwrap();
        TestCa { root, intermediate }
    }

    /// The root certificate as PEM: what an issuer's caBundle holds.
    pub(crate) fn root_pem(&self) -> String {
        self.root.pem()
    }

    /// The intermediate certificate as PEM.
    pub(crate) fn intermediate_pem(&self) -> String {
        self.intermediate.pem()
    }

    /// A leaf for `key` with the given names, valid from `not_before` to `not_after`, as the PEM chain an
    /// ACME CA returns (leaf, then intermediate).
    pub(crate) fn issue(
        &self,
        key: &PrivateKey,
        dns_names: &[&str],
        ips: &[&str],
        common_name: Option<&str>,
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> String {
        let mut params = CertificateParams::new(dns_names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = common_name {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(ip.parse::<IpAddr>().unwrap())));
        params.not_before = offset(not_before);
        params.not_after = offset(not_after);
        // As ACME CAs issue them: with an authority key identifier (so with an RFC 9773 identifier).
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(key.key_pair(), &self.intermediate).unwrap();
        format!("{}{}", leaf.pem(), self.intermediate.pem())
    }
}
