//! Pure certificate logic: private keys, CSRs, certificate chains. No I/O, no clock (time is a parameter).
//!
//! Errors never carry key material: messages name what failed, not what was in the input.

mod chain;
mod csr;
mod keys;
mod outputs;
mod pem_text;
#[cfg(test)]
mod properties;
#[cfg(test)]
pub(crate) mod testing;

pub use chain::{
    CertificateInfo, ParsedChain, key_matches_certificate, parse_ca_bundle, parse_chain, verify_chain,
    verifying_anchors,
};
pub use csr::{CsrRequest, build_csr, effective_usages};
pub use keys::{KeySpec, PrivateKey, generate_private_key, parse_private_key};
pub use outputs::{KEYSTORE_ALIAS, combined_pem, key_der, pkcs12};

/// What went wrong in certificate logic; each variant names the action that failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a {spec} private key failed: {source}")]
    GenerateKey { spec: String, source: rcgen::Error },
    #[error("encoding the private key as {encoding} failed: {detail}")]
    EncodeKey { encoding: &'static str, detail: String },
    #[error("parsing the private key failed: {0}")]
    ParseKey(String),
    #[error("building the CSR failed: {0}")]
    BuildCsr(String),
    #[error("reading PEM data failed: {0}")]
    ParsePem(String),
    #[error("parsing certificate {index} of the chain failed: {detail}")]
    ParseCertificate { index: usize, detail: String },
    #[error("the PEM data holds no certificate")]
    EmptyChain,
    #[error("the CA bundle holds no certificate")]
    EmptyCaBundle,
    #[error("the certificate does not verify against the CA bundle: {0}")]
    VerifyChain(String),
}

#[cfg(test)]
mod tests;
