//! Private keys: generation for the supported algorithms and sizes, PEM encoding (PKCS#1/SEC1 or PKCS#8),
//! parsing in any of those forms, and matching a key against a certificate.

use super::PkiError;
use super::pem_text::pem_blocks;
use crate::api::{KeyAlgorithm, KeyEncoding, PrivateKeySpec};
use aws_lc_rs::encoding::AsDer;
use rcgen::{KeyPair, PublicKeyData, RsaKeySize, SignatureAlgorithm};
use rustls_pki_types::PrivateKeyDer;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// The key a Certificate asks for, with defaults applied: algorithm, size in bits and PEM encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeySpec {
    pub algorithm: KeyAlgorithm,
    /// Bits for RSA (2048, 3072, 4096), the curve size for ECDSA (256, 384), 256 for Ed25519.
    pub size: u32,
    pub encoding: KeyEncoding,
}

impl KeySpec {
    /// The effective key of a Certificate's `privateKey` field: ECDSA P-256 unless told otherwise,
    /// RSA 2048 when RSA has no size, PKCS#1/SEC1 encoding except for Ed25519 (always PKCS#8).
    pub fn from_spec(spec: Option<&PrivateKeySpec>) -> KeySpec {
        let algorithm = spec.and_then(|s| s.algorithm).unwrap_or_default();
        let size = match algorithm {
            KeyAlgorithm::Rsa => spec.and_then(|s| s.size).unwrap_or(2048),
            KeyAlgorithm::Ecdsa => spec.and_then(|s| s.size).unwrap_or(256),
            KeyAlgorithm::Ed25519 => 256,
        };
        let encoding = match algorithm {
            KeyAlgorithm::Ed25519 => KeyEncoding::Pkcs8,
            _ => spec.and_then(|s| s.encoding).unwrap_or(KeyEncoding::Pkcs1),
        };
        KeySpec { algorithm, size, encoding }
    }

    fn signature_algorithm(&self) -> Result<&'static SignatureAlgorithm, PkiError> {
        match (self.algorithm, self.size) {
            (KeyAlgorithm::Ecdsa, 256) => Ok(&rcgen::PKCS_ECDSA_P256_SHA256),
            (KeyAlgorithm::Ecdsa, 384) => Ok(&rcgen::PKCS_ECDSA_P384_SHA384),
            (KeyAlgorithm::Rsa, 2048 | 3072 | 4096) => Ok(&rcgen::PKCS_RSA_SHA256),
            (KeyAlgorithm::Ed25519, _) => Ok(&rcgen::PKCS_ED25519),
            _ => Err(PkiError::GenerateKey { spec: self.to_string(), source: rcgen::Error::KeyGenerationUnavailable }),
        }
    }
}

impl std::fmt::Display for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let encoding = match self.encoding {
            KeyEncoding::Pkcs1 => "PKCS1",
            KeyEncoding::Pkcs8 => "PKCS8",
        };
        match self.algorithm {
            KeyAlgorithm::Ecdsa => write!(f, "ECDSA P-{} ({encoding})", self.size),
            KeyAlgorithm::Rsa => write!(f, "RSA {} ({encoding})", self.size),
            KeyAlgorithm::Ed25519 => write!(f, "Ed25519 ({encoding})"),
        }
    }
}

/// A private key with what was learned about it: the signing key pair, its actual algorithm, size and
/// encoding, and its PEM text. `Debug` never prints the key.
pub struct PrivateKey {
    key_pair: KeyPair,
    spec: KeySpec,
    pem: String,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// The key's actual algorithm, size and encoding.
    pub fn spec(&self) -> KeySpec {
        self.spec
    }

    /// The key as PEM, in its encoding. This is secret: store it only in a Secret.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The signing key pair (for CSRs).
    pub fn key_pair(&self) -> &KeyPair {
        &self.key_pair
    }

    /// The key in PKCS#8 DER, whatever the encoding of its PEM (keystores hold PKCS#8). This is secret.
    pub fn pkcs8_der(&self) -> Result<Vec<u8>, PkiError> {
        let der = self.key_pair.serialize_der();
        let encode_error = |detail: String| PkiError::EncodeKey { encoding: "PKCS8", detail };
        match self.spec.algorithm {
            KeyAlgorithm::Ed25519 => Ok(der),
            KeyAlgorithm::Rsa => {
                let key = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der)
                    .or_else(|_| aws_lc_rs::rsa::KeyPair::from_der(&der))
                    .map_err(|e| encode_error(format!("the RSA key could not be read: {e}")))?;
                let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der = key.as_der().map_err(|e| encode_error(e.to_string()))?;
                Ok(pkcs8.as_ref().to_vec())
            }
            KeyAlgorithm::Ecdsa => {
                let alg = if self.spec.size == 384 {
                    &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1_SIGNING
                } else {
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING
                };
                let key = aws_lc_rs::signature::EcdsaKeyPair::from_private_key_der(alg, &der)
                    .map_err(|e| encode_error(format!("the EC key could not be read: {e}")))?;
                let pkcs8 = key.to_pkcs8v1().map_err(|e| encode_error(e.to_string()))?;
                Ok(pkcs8.as_ref().to_vec())
            }
        }
    }

    /// The raw public key, as a certificate's subjectPublicKey bit string holds it.
    pub fn public_key_raw(&self) -> &[u8] {
        self.key_pair.public_key_raw()
    }
}

/// Generates a new private key as the spec says and encodes it as PEM.
pub fn generate_private_key(spec: &KeySpec) -> Result<PrivateKey, PkiError> {
    let alg = spec.signature_algorithm()?;
    let generate_error = |source| PkiError::GenerateKey { spec: spec.to_string(), source };
    let key_pair = match spec.algorithm {
        KeyAlgorithm::Rsa => {
            let size = match spec.size {
                2048 => RsaKeySize::_2048,
                3072 => RsaKeySize::_3072,
                _ => RsaKeySize::_4096,
            };
            KeyPair::generate_rsa_for(alg, size).map_err(generate_error)?
        }
        _ => KeyPair::generate_for(alg).map_err(generate_error)?,
    };
    // Freshly generated rcgen keys serialise as PKCS#8.
    let pem = encode_pkcs8_as(key_pair.serialized_der(), spec)?;
    Ok(PrivateKey { key_pair, spec: *spec, pem })
}

/// Encodes a PKCS#8 private key as PEM in the encoding the spec asks for.
fn encode_pkcs8_as(pkcs8: &[u8], spec: &KeySpec) -> Result<String, PkiError> {
    let (label, der) = match (spec.encoding, spec.algorithm) {
        (KeyEncoding::Pkcs8, _) | (_, KeyAlgorithm::Ed25519) => ("PRIVATE KEY", pkcs8.to_vec()),
        (KeyEncoding::Pkcs1, KeyAlgorithm::Rsa) => ("RSA PRIVATE KEY", rsa_pkcs1_from_pkcs8(pkcs8)?),
        (KeyEncoding::Pkcs1, KeyAlgorithm::Ecdsa) => ("EC PRIVATE KEY", ec_sec1_from_pkcs8(pkcs8, spec.size)?),
    };
    Ok(pem_encode(label, &der))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

/// PKCS#8 `PrivateKeyInfo ::= SEQUENCE { version, algorithm, privateKey OCTET STRING }`; for RSA the
/// octet string holds exactly the PKCS#1 `RSAPrivateKey`.
fn rsa_pkcs1_from_pkcs8(pkcs8: &[u8]) -> Result<Vec<u8>, PkiError> {
    let encode_error = |detail: String| PkiError::EncodeKey { encoding: "PKCS1", detail };
    let (_, info) = x509_parser::der_parser::der::parse_der_sequence(pkcs8)
        .map_err(|_| encode_error("the key is not a PKCS#8 structure".into()))?;
    let fields = info.as_sequence().map_err(|_| encode_error("the key is not a DER sequence".into()))?;
    let private_key = fields.get(2).ok_or_else(|| encode_error("the PKCS#8 structure has no private key".into()))?;
    private_key
        .as_slice()
        .map(<[u8]>::to_vec)
        .map_err(|_| encode_error("the PKCS#8 private key is not an octet string".into()))
}

/// SEC1 `ECPrivateKey` with the curve parameters, as OpenSSL writes `EC PRIVATE KEY`.
fn ec_sec1_from_pkcs8(pkcs8: &[u8], size: u32) -> Result<Vec<u8>, PkiError> {
    let alg = if size == 384 {
        &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1_SIGNING
    } else {
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING
    };
    let encode_error =
        |_| PkiError::EncodeKey { encoding: "SEC1", detail: "the EC key could not be re-encoded".into() };
    let key = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8).map_err(|e| encode_error(e.to_string()))?;
    let der = key.private_key().as_der().map_err(|e| encode_error(e.to_string()))?;
    Ok(der.as_ref().to_vec())
}

/// Parses a PEM private key in PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1
/// (`EC PRIVATE KEY`) form and finds its algorithm, size and encoding.
pub fn parse_private_key(pem_text: &[u8]) -> Result<PrivateKey, PkiError> {
    let text = std::str::from_utf8(pem_text).map_err(|_| PkiError::ParseKey("the key is not PEM text".into()))?;
    let block = pem_blocks(text)
        .map_err(|_| PkiError::ParseKey("the key is not valid PEM".into()))?
        .into_iter()
        .find(|(label, _)| label.ends_with("PRIVATE KEY"))
        .ok_or_else(|| PkiError::ParseKey("no PEM PRIVATE KEY block found".into()))?;
    let (label, der) = block;
    let (encoding, key_der) = match label.as_str() {
        "PRIVATE KEY" => (KeyEncoding::Pkcs8, PrivateKeyDer::Pkcs8(der.into())),
        "RSA PRIVATE KEY" => (KeyEncoding::Pkcs1, PrivateKeyDer::Pkcs1(der.into())),
        "EC PRIVATE KEY" => (KeyEncoding::Pkcs1, PrivateKeyDer::Sec1(der.into())),
        other => return Err(PkiError::ParseKey(format!("unsupported PEM block {other:?}"))),
    };
    let key_pair = KeyPair::try_from(&key_der)
        .map_err(|_| PkiError::ParseKey(format!("the {label} block is not a supported key")))?;
    let (algorithm, size) = key_algorithm_and_size(&key_pair)?;
    let spec = KeySpec { algorithm, size, encoding };
    Ok(PrivateKey { key_pair, spec, pem: text.to_string() })
}

fn key_algorithm_and_size(key_pair: &KeyPair) -> Result<(KeyAlgorithm, u32), PkiError> {
    let alg = key_pair.algorithm();
    if alg == &rcgen::PKCS_ED25519 {
        Ok((KeyAlgorithm::Ed25519, 256))
    } else if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Ok((KeyAlgorithm::Ecdsa, 256))
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        Ok((KeyAlgorithm::Ecdsa, 384))
    } else if alg == &rcgen::PKCS_ECDSA_P521_SHA512 {
        Ok((KeyAlgorithm::Ecdsa, 521))
    } else {
        let spki = key_pair.subject_public_key_info();
        let (_, info) = SubjectPublicKeyInfo::from_der(&spki)
            .map_err(|_| PkiError::ParseKey("the public key could not be read".into()))?;
        match info.parsed() {
            Ok(PublicKey::RSA(rsa)) => Ok((KeyAlgorithm::Rsa, rsa.key_size() as u32)),
            _ => Err(PkiError::ParseKey("unsupported key algorithm".into())),
        }
    }
}
