//! The other encodings of a certificate and its key that a Secret may carry for clients that cannot read the
//! PEM pair: the key and chain in one PEM file, the key in DER, and PKCS#12 keystore and truststore.

use super::PkiError;
use super::keys::PrivateKey;
use super::pem_text::pem_blocks;
use crate::api::Pkcs12Profile;
use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
use p12_keystore::{
    Certificate as P12Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKeyChain,
};

/// The alias of the key entry in `keystore.p12` (the friendly name Java's keytool lists).
pub const KEYSTORE_ALIAS: &str = "certificate";
/// Key derivation and MAC iterations, as OpenSSL 3 and Go's `pkcs12.Modern2023` write keystores: the password
/// protects a file whose readers (Java, .NET, OpenSSL) expect these costs.
const ITERATIONS: u32 = 2048;

/// `tls-combined.pem`: the private key, then the chain, as HAProxy and others read them from one file.
pub fn combined_pem(key: &PrivateKey, chain_pem: &str) -> String {
    let mut combined = key.pem().trim_end().to_string();
    combined.push('\n');
    combined.push_str(chain_pem.trim_start());
    if !combined.ends_with('\n') {
        combined.push('\n');
    }
    combined
}

/// `key.der`: the private key in DER, in the encoding of tls.key (PKCS#1/SEC1 or PKCS#8).
pub fn key_der(key: &PrivateKey) -> Result<Vec<u8>, PkiError> {
    let mut blocks = pem_blocks(key.pem())?;
    match blocks.len() {
        1 => Ok(blocks.remove(0).1),
        _ => Err(PkiError::ParseKey("tls.key is not one PEM block".to_string())),
    }
}

/// The PKCS#12 keystore (the key, with the chain and the CA certificates after it) and, when `ca_pem` holds
/// certificates, the truststore (the CA certificates only), encrypted with `password` as `profile` says.
pub fn pkcs12(
    key: &PrivateKey,
    chain_pem: &str,
    ca_pem: Option<&str>,
    password: &str,
    profile: Pkcs12Profile,
) -> Result<(Vec<u8>, Option<Vec<u8>>), PkiError> {
    let chain = certificates(chain_pem)?;
    let cas = match ca_pem {
        Some(pem) if !pem.trim().is_empty() => certificates(pem)?,
        _ => Vec::new(),
    };
    let mut certs = chain.clone();
    for ca in &cas {
        if !certs.iter().any(|c| c.as_der() == ca.as_der()) {
            certs.push(ca.clone());
        }
    }
    let private_key = p12_keystore::PrivateKey::from_der(&key.pkcs8_der()?).map_err(encode_error)?;
    // As OpenSSL does: the key's local id is the SHA-1 digest of its certificate.
    let leaf = chain.first().ok_or(PkiError::EmptyChain)?;
    let local_key_id = digest(&SHA1_FOR_LEGACY_USE_ONLY, leaf.as_der()).as_ref().to_vec();
    let mut keystore = KeyStore::new();
    keystore.add_entry(
        KEYSTORE_ALIAS,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, private_key, certs)),
    );
    let keystore = write(&keystore, password, profile)?;
    let truststore = if cas.is_empty() {
        None
    } else {
        let mut truststore = KeyStore::new();
        for (index, ca) in cas.into_iter().enumerate() {
            truststore.add_entry(&format!("ca-{index}"), KeyStoreEntry::Certificate(ca));
        }
        Some(write(&truststore, password, profile)?)
    };
    Ok((keystore, truststore))
}

fn write(store: &KeyStore, password: &str, profile: Pkcs12Profile) -> Result<Vec<u8>, PkiError> {
    let writer = store.writer(password);
    let writer = match profile {
        Pkcs12Profile::Modern2023 => writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
            .encryption_iterations(ITERATIONS)
            .mac_algorithm(MacAlgorithm::HmacSha256)
            .mac_iterations(ITERATIONS),
        Pkcs12Profile::LegacyDes => writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
            .encryption_iterations(ITERATIONS)
            .mac_algorithm(MacAlgorithm::HmacSha1)
            .mac_iterations(ITERATIONS),
    };
    writer.write().map_err(encode_error)
}

fn certificates(pem: &str) -> Result<Vec<P12Certificate>, PkiError> {
    pem_blocks(pem)?
        .iter()
        .filter(|(label, _)| label == "CERTIFICATE")
        .enumerate()
        .map(|(index, (_, der))| {
            P12Certificate::from_der(der).map_err(|e| PkiError::ParseCertificate { index, detail: e.to_string() })
        })
        .collect()
}

/// The error of a keystore that could not be written; it never carries the password or the key.
fn encode_error(error: p12_keystore::error::Error) -> PkiError {
    PkiError::EncodeKey { encoding: "PKCS#12", detail: error.to_string() }
}
