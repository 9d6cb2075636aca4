//! Throwaway certificate authorities for the listeners of the test environment.

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA certificate and its key, able to sign server certificates and sub-CAs.
pub(crate) struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

/// A certificate and its private key, both PEM (the key as PKCS#8).
pub(crate) struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// A self-signed root CA (ECDSA P-256).
    pub fn root(common_name: &str) -> Result<Self> {
        let params = ca_params(common_name, BasicConstraints::Unconstrained);
        let key = KeyPair::generate().context("generating a CA key")?;
        let cert_pem = params.self_signed(&key).context("self-signing a CA certificate")?.pem();
        Ok(TestCa { params, key, cert_pem })
    }

    /// An intermediate CA (path length 0) signed by this CA.
    pub fn intermediate(&self, common_name: &str) -> Result<Self> {
        let params = ca_params(common_name, BasicConstraints::Constrained(0));
        let key = KeyPair::generate().context("generating an intermediate CA key")?;
        let cert_pem = params.signed_by(&key, &self.issuer()).context("signing an intermediate CA")?.pem();
        Ok(TestCa { params, key, cert_pem })
    }

    /// The CA's private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A TLS server certificate for `names` (DNS names or IP addresses), also usable as a client certificate.
    pub fn issue_server(&self, names: &[String]) -> Result<CertAndKey> {
        let mut params = CertificateParams::new(names.to_vec()).context("building server certificate params")?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("generating a server key")?;
        let cert = params.signed_by(&key, &self.issuer()).context("signing a server certificate")?;
        Ok(CertAndKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A TLS client certificate for the user `common_name` in the group `organization` (how Kubernetes reads
    /// client certificates).
    pub fn issue_client(&self, common_name: &str, organization: &str) -> Result<CertAndKey> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.distinguished_name.push(DnType::OrganizationName, organization);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("generating a client key")?;
        let cert = params.signed_by(&key, &self.issuer()).context("signing a client certificate")?;
        Ok(CertAndKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

fn ca_params(common_name: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.distinguished_name.push(DnType::OrganizationName, "kacme-testenv");
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params
}

/// A fresh ECDSA P-256 key pair as (private PKCS#8 PEM, public SPKI PEM), for service-account token signing.
pub(crate) fn signing_key_pair() -> Result<(String, String)> {
    let key = KeyPair::generate().context("generating a signing key")?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// `bytes` random bytes from the system's secure random source.
pub(crate) fn random_bytes(bytes: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| anyhow::anyhow!("the system random source failed"))?;
    Ok(out)
}

/// A random lowercase hex token of `bytes` random bytes.
pub(crate) fn random_hex(bytes: usize) -> Result<String> {
    Ok(random_bytes(bytes)?.iter().map(|b| format!("{b:02x}")).collect())
}
