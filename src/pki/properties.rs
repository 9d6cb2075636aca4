//! Properties of reading what a CA sends and what a Secret holds: any bytes, and any corruption of a real
//! certificate chain or key, are read or refused with an error, never a panic.

use super::testing::TestCa;
use super::{KeySpec, generate_private_key, parse_ca_bundle, parse_chain, parse_private_key};
use crate::api::{KeyAlgorithm, KeyEncoding};
use crate::testing::properties::{config, hostile_text};
use jiff::{Timestamp, ToSpan};
use proptest::prelude::*;
use std::sync::OnceLock;

/// A real chain (leaf and intermediate) and a real PKCS#8 key, made once.
fn originals() -> &'static (Vec<(String, Vec<u8>)>, Vec<u8>) {
    static ORIGINALS: OnceLock<(Vec<(String, Vec<u8>)>, Vec<u8>)> = OnceLock::new();
    ORIGINALS.get_or_init(|| {
        let ca = TestCa::new("Property");
        let spec = KeySpec { algorithm: KeyAlgorithm::Ecdsa, size: 256, encoding: KeyEncoding::Pkcs8 };
        let key = generate_private_key(&spec).expect("a key");
        let issued: Timestamp = "2026-01-01T00:00:00Z".parse().expect("a time");
        let chain = ca.issue(&key, &["web.example.test"], &["10.0.0.1"], Some("web"), issued, issued + 24.hours());
        let blocks = super::pem_text::pem_blocks(&chain).expect("PEM");
        let key_der = super::pem_text::pem_blocks(key.pem()).expect("PEM").remove(0).1;
        (blocks, key_der)
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
}

/// What a corruption does to DER: overwrite some bytes, then cut it short or not.
#[derive(Clone, Debug)]
struct Corruption {
    writes: Vec<(proptest::sample::Index, u8)>,
    cut: Option<proptest::sample::Index>,
}

fn corruption() -> impl Strategy<Value = Corruption> {
    (proptest::collection::vec(any::<(proptest::sample::Index, u8)>(), 0..8), any::<Option<proptest::sample::Index>>())
        .prop_map(|(writes, cut)| Corruption { writes, cut })
}

fn corrupt(der: &[u8], corruption: &Corruption) -> Vec<u8> {
    let mut der = der.to_vec();
    for (at, byte) in &corruption.writes {
        let i = at.index(der.len());
        der[i] = *byte;
    }
    if let Some(cut) = &corruption.cut {
        der.truncate(cut.index(der.len() + 1));
    }
    der
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_are_read_as_a_chain_a_bundle_or_a_key_or_refused(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..4_000),
            hostile_text().prop_map(String::into_bytes),
            (hostile_text(), proptest::collection::vec(any::<u8>(), 0..2_000))
                .prop_map(|(label, der)| pem(&label, &der).into_bytes()),
        ],
    ) {
        let _ = parse_chain(&bytes);
        let _ = parse_ca_bundle(&bytes);
        let _ = parse_private_key(&bytes);
    }

    #[test]
    fn a_corrupted_certificate_chain_is_read_or_refused_never_a_panic(
        leaf in corruption(),
        intermediate in corruption(),
    ) {
        let (blocks, _) = originals();
        let text = format!(
            "{}{}",
            pem("CERTIFICATE", &corrupt(&blocks[0].1, &leaf)),
            pem("CERTIFICATE", &corrupt(&blocks[1].1, &intermediate)),
        );
        if let Ok(chain) = parse_chain(text.as_bytes()) {
            prop_assert_eq!(chain.certificates.len(), 2);
        }
        let _ = parse_ca_bundle(text.as_bytes());
    }

    #[test]
    fn a_corrupted_private_key_is_read_or_refused_never_a_panic(
        key in corruption(),
        label in proptest::sample::select(&["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"][..]),
    ) {
        let (_, key_der) = originals();
        let _ = parse_private_key(pem(label, &corrupt(key_der, &key)).as_bytes());
    }
}
