//! Certificate signing requests whose names match an ACME order's identifiers exactly.

use super::{PkiError, keys::PrivateKey};
use crate::api::{KeyAlgorithm, KeyUsage};
use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// What a CSR asks for. The names must be exactly the order's identifiers: step-ca rejects a CSR whose
/// names differ from them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CsrRequest {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub common_name: Option<String>,
    pub usages: BTreeSet<KeyUsage>,
}

/// The usages to request: the spec's, or by default `digital signature` and `server auth`, plus
/// `key encipherment` for RSA keys (key transport is an RSA-only use).
pub fn effective_usages(requested: &[KeyUsage], algorithm: KeyAlgorithm) -> BTreeSet<KeyUsage> {
    if !requested.is_empty() {
        return requested.iter().copied().collect();
    }
    let mut usages = BTreeSet::from([KeyUsage::DigitalSignature, KeyUsage::ServerAuth]);
    if algorithm == KeyAlgorithm::Rsa {
        usages.insert(KeyUsage::KeyEncipherment);
    }
    usages
}

/// Builds a DER CSR signed by the key, carrying exactly the requested names, the optional common name
/// and the requested key usages and extended key usages.
pub fn build_csr(request: &CsrRequest, key: &PrivateKey) -> Result<Vec<u8>, PkiError> {
    let mut params = CertificateParams::default();
    // rcgen's default subject carries a placeholder common name; an ACME CSR has only what was asked.
    params.distinguished_name = DistinguishedName::new();
    if let Some(cn) = &request.common_name {
        params.distinguished_name.push(DnType::CommonName, cn.as_str());
    }
    for name in &request.dns_names {
        let ia5 = Ia5String::try_from(name.as_str())
            .map_err(|_| PkiError::BuildCsr(format!("{name:?} is not an ASCII DNS name")))?;
        params.subject_alt_names.push(SanType::DnsName(ia5));
    }
    params.subject_alt_names.extend(request.ip_addresses.iter().copied().map(SanType::IpAddress));
    for usage in &request.usages {
        match usage {
            KeyUsage::DigitalSignature => params.key_usages.push(KeyUsagePurpose::DigitalSignature),
            KeyUsage::ContentCommitment => params.key_usages.push(KeyUsagePurpose::ContentCommitment),
            KeyUsage::KeyEncipherment => params.key_usages.push(KeyUsagePurpose::KeyEncipherment),
            KeyUsage::DataEncipherment => params.key_usages.push(KeyUsagePurpose::DataEncipherment),
            KeyUsage::KeyAgreement => params.key_usages.push(KeyUsagePurpose::KeyAgreement),
            KeyUsage::ServerAuth => params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth),
            KeyUsage::ClientAuth => params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth),
            KeyUsage::CodeSigning => params.extended_key_usages.push(ExtendedKeyUsagePurpose::CodeSigning),
            KeyUsage::EmailProtection => params.extended_key_usages.push(ExtendedKeyUsagePurpose::EmailProtection),
            KeyUsage::TimeStamping => params.extended_key_usages.push(ExtendedKeyUsagePurpose::TimeStamping),
            KeyUsage::OcspSigning => params.extended_key_usages.push(ExtendedKeyUsagePurpose::OcspSigning),
        }
    }
    let csr = params.serialize_request(key.key_pair()).map_err(|e| PkiError::BuildCsr(e.to_string()))?;
    Ok(csr.der().to_vec())
}
