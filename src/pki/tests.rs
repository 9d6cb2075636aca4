use super::testing::TestCa;
use super::*;
use crate::api::{KeyAlgorithm, KeyEncoding, KeyUsage, PrivateKeySpec};
use jiff::{Timestamp, ToSpan};
use std::collections::BTreeSet;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509CertificationRequest};

fn spec(algorithm: KeyAlgorithm, size: u32, encoding: KeyEncoding) -> KeySpec {
    KeySpec { algorithm, size, encoding }
}

fn now() -> Timestamp {
    "2026-06-01T12:00:00Z".parse().unwrap()
}

#[test]
fn every_supported_key_is_generated_with_its_algorithm_size_and_encoding() {
    use KeyAlgorithm::*;
    use KeyEncoding::*;
    // (key spec, PEM label expected in tls.key)
    let cases = [
        (spec(Ecdsa, 256, Pkcs1), "EC PRIVATE KEY"),
        (spec(Ecdsa, 256, Pkcs8), "PRIVATE KEY"),
        (spec(Ecdsa, 384, Pkcs1), "EC PRIVATE KEY"),
        (spec(Ecdsa, 384, Pkcs8), "PRIVATE KEY"),
        (spec(Rsa, 2048, Pkcs1), "RSA PRIVATE KEY"),
        (spec(Rsa, 2048, Pkcs8), "PRIVATE KEY"),
        (spec(Rsa, 3072, Pkcs1), "RSA PRIVATE KEY"),
        (spec(Rsa, 4096, Pkcs8), "PRIVATE KEY"),
        (spec(Ed25519, 256, Pkcs8), "PRIVATE KEY"),
    ];
    for (wanted, label) in cases {
        let key = generate_private_key(&wanted).unwrap_or_else(|e| panic!("{wanted}: {e}"));
        assert!(key.pem().starts_with(&format!("-----BEGIN {label}-----\n")), "{wanted}: PEM label");
        let parsed = parse_private_key(key.pem().as_bytes()).unwrap_or_else(|e| panic!("{wanted}: {e}"));
        assert_eq!(parsed.spec(), wanted, "{wanted}: parsed back");
        assert_eq!(parsed.public_key_raw(), key.public_key_raw(), "{wanted}: same key after parsing");
    }
}

#[test]
fn two_generated_keys_differ() {
    let s = KeySpec::from_spec(None);
    assert_ne!(generate_private_key(&s).unwrap().public_key_raw(), generate_private_key(&s).unwrap().public_key_raw());
}

#[test]
fn sec1_keys_carry_their_curve_as_openssl_expects() {
    // ECPrivateKey ::= SEQUENCE { version, privateKey, [0] parameters (the curve OID), [1] publicKey }
    for (size, curve_oid) in [(256, "1.2.840.10045.3.1.7"), (384, "1.3.132.0.34")] {
        let key = generate_private_key(&spec(KeyAlgorithm::Ecdsa, size, KeyEncoding::Pkcs1)).unwrap();
        let der = pem::parse(key.pem()).unwrap().into_contents();
        let (_, sequence) = x509_parser::der_parser::der::parse_der_sequence(&der).unwrap();
        let fields = sequence.as_sequence().unwrap();
        let parameters = fields.iter().find(|f| f.header.raw_tag() == Some(&[0xa0])).expect("a [0] parameters field");
        let (_, oid) = x509_parser::der_parser::der::parse_der_oid(parameters.as_slice().unwrap()).unwrap();
        assert_eq!(oid.as_oid().unwrap().to_id_string(), curve_oid, "P-{size}");
    }
}

#[test]
fn key_spec_defaults_follow_the_api_documentation() {
    let with = |algorithm, size, encoding| PrivateKeySpec { algorithm, size, encoding, rotation_policy: None };
    let cases = [
        ("nothing given is ECDSA P-256 PKCS1", None, spec(KeyAlgorithm::Ecdsa, 256, KeyEncoding::Pkcs1)),
        (
            "RSA without size is 2048",
            Some(with(Some(KeyAlgorithm::Rsa), None, None)),
            spec(KeyAlgorithm::Rsa, 2048, KeyEncoding::Pkcs1),
        ),
        (
            "RSA 4096 PKCS8",
            Some(with(Some(KeyAlgorithm::Rsa), Some(4096), Some(KeyEncoding::Pkcs8))),
            spec(KeyAlgorithm::Rsa, 4096, KeyEncoding::Pkcs8),
        ),
        (
            "size alone means ECDSA of that size",
            Some(with(None, Some(384), None)),
            spec(KeyAlgorithm::Ecdsa, 384, KeyEncoding::Pkcs1),
        ),
        (
            "Ed25519 is always PKCS8",
            Some(with(Some(KeyAlgorithm::Ed25519), None, Some(KeyEncoding::Pkcs1))),
            spec(KeyAlgorithm::Ed25519, 256, KeyEncoding::Pkcs8),
        ),
    ];
    for (case, given, want) in cases {
        assert_eq!(KeySpec::from_spec(given.as_ref()), want, "{case}");
    }
}

#[test]
fn unreadable_keys_are_refused_without_echoing_their_content() {
    let cases: [(&str, &[u8]); 4] = [
        ("not PEM", b"secret-material-xyz"),
        ("a certificate instead of a key", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        (
            "a PEM key with garbage inside",
            b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LW1hdGVyaWFsLXh5eg==\n-----END PRIVATE KEY-----\n",
        ),
        ("an empty value", b""),
    ];
    for (case, input) in cases {
        let error = parse_private_key(input).expect_err(case).to_string();
        assert!(!error.contains("secret-material") && !error.contains("c2VjcmV0"), "{case}: {error}");
    }
}

fn csr_names(der: &[u8]) -> (Vec<String>, Vec<String>, Option<String>, Vec<String>) {
    let (_, csr) = X509CertificationRequest::from_der(der).unwrap();
    csr.verify_signature().expect("the CSR is signed by the key");
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    let mut ekus = Vec::new();
    for extension in csr.requested_extensions().into_iter().flatten() {
        match extension {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(n) => dns.push(n.to_string()),
                        GeneralName::IPAddress(b) => ips.push(match b.len() {
                            4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string(),
                            _ => std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string(),
                        }),
                        other => panic!("unexpected SAN {other:?}"),
                    }
                }
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                if eku.server_auth {
                    ekus.push("server auth".to_string());
                }
                if eku.client_auth {
                    ekus.push("client auth".to_string());
                }
            }
            _ => {}
        }
    }
    let cn = csr.certification_request_info.subject.iter_common_name().next().map(|c| c.as_str().unwrap().to_string());
    (dns, ips, cn, ekus)
}

#[test]
fn a_csr_carries_exactly_the_requested_names_and_usages() {
    let key = generate_private_key(&KeySpec::from_spec(None)).unwrap();
    let server = BTreeSet::from([KeyUsage::DigitalSignature, KeyUsage::ServerAuth]);
    let mtls = BTreeSet::from([KeyUsage::DigitalSignature, KeyUsage::ServerAuth, KeyUsage::ClientAuth]);
    // (case, dns names, ips, common name, usages, expected EKUs)
    let cases: [(&str, &[&str], &[&str], Option<&str>, &BTreeSet<KeyUsage>, &[&str]); 5] = [
        ("one name", &["app.example.test"], &[], None, &server, &["server auth"]),
        (
            "several names",
            &["a.example.test", "b.example.test", "c.example.test"],
            &[],
            None,
            &server,
            &["server auth"],
        ),
        ("names and IPs", &["a.example.test"], &["127.0.0.1", "2001:db8::1"], None, &server, &["server auth"]),
        ("an IP only", &[], &["10.1.2.3"], None, &mtls, &["server auth", "client auth"]),
        ("a common name", &["a.example.test"], &[], Some("a.example.test"), &mtls, &["server auth", "client auth"]),
    ];
    for (case, dns, ips, cn, usages, ekus) in cases {
        let request = CsrRequest {
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ip_addresses: ips.iter().map(|s| s.parse().unwrap()).collect(),
            common_name: cn.map(str::to_string),
            usages: usages.clone(),
        };
        let der = build_csr(&request, &key).unwrap();
        let (got_dns, got_ips, got_cn, got_ekus) = csr_names(&der);
        assert_eq!(got_dns, dns.to_vec(), "{case}: DNS names");
        assert_eq!(
            got_ips,
            ips.iter().map(|s| s.parse::<std::net::IpAddr>().unwrap().to_string()).collect::<Vec<_>>(),
            "{case}: IPs"
        );
        assert_eq!(got_cn.as_deref(), cn, "{case}: common name");
        assert_eq!(got_ekus, ekus.to_vec(), "{case}: extended key usages");
    }
}

#[test]
fn a_csr_is_signed_by_every_key_type() {
    for wanted in [
        spec(KeyAlgorithm::Ecdsa, 384, KeyEncoding::Pkcs8),
        spec(KeyAlgorithm::Rsa, 2048, KeyEncoding::Pkcs1),
        spec(KeyAlgorithm::Ed25519, 256, KeyEncoding::Pkcs8),
    ] {
        let key = parse_private_key(generate_private_key(&wanted).unwrap().pem().as_bytes()).unwrap();
        let request = CsrRequest { dns_names: vec!["k.example.test".into()], ..Default::default() };
        let (dns, _, cn, _) = csr_names(&build_csr(&request, &key).unwrap());
        assert_eq!(dns, ["k.example.test"], "{wanted}");
        assert_eq!(cn, None, "{wanted}: no placeholder common name");
    }
}

#[test]
fn default_usages_depend_on_the_key_algorithm() {
    use KeyUsage::*;
    assert_eq!(effective_usages(&[], KeyAlgorithm::Ecdsa), BTreeSet::from([DigitalSignature, ServerAuth]));
    assert_eq!(
        effective_usages(&[], KeyAlgorithm::Rsa),
        BTreeSet::from([DigitalSignature, KeyEncipherment, ServerAuth])
    );
    assert_eq!(effective_usages(&[ClientAuth, ClientAuth], KeyAlgorithm::Rsa), BTreeSet::from([ClientAuth]));
}

#[test]
fn a_chain_is_parsed_into_the_leaf_validity_names_and_key() {
    let ca = TestCa::new("Parse");
    let key = generate_private_key(&KeySpec::from_spec(None)).unwrap();
    let not_before = now();
    let not_after = now() + 24.hours();
    let pem = ca.issue(
        &key,
        &["a.example.test", "b.example.test"],
        &["127.0.0.1"],
        Some("a.example.test"),
        not_before,
        not_after,
    );
    let chain = parse_chain(pem.as_bytes()).unwrap();
    assert_eq!(chain.certificates.len(), 2);
    assert_eq!(chain.leaf.not_before, not_before);
    assert_eq!(chain.leaf.not_after, not_after);
    assert_eq!(chain.leaf.dns_names, ["a.example.test", "b.example.test"]);
    assert_eq!(chain.leaf.ip_addresses, ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(chain.leaf.common_name.as_deref(), Some("a.example.test"));
    assert!(chain.leaf.issuer.contains("Parse Intermediate CA"));
    assert!(key_matches_certificate(&key, &chain.leaf));
}

#[test]
fn a_key_matches_only_its_own_certificate() {
    let ca = TestCa::new("Match");
    let keys: Vec<PrivateKey> = [
        spec(KeyAlgorithm::Ecdsa, 256, KeyEncoding::Pkcs1),
        spec(KeyAlgorithm::Ecdsa, 384, KeyEncoding::Pkcs1),
        spec(KeyAlgorithm::Rsa, 2048, KeyEncoding::Pkcs1),
        spec(KeyAlgorithm::Ed25519, 256, KeyEncoding::Pkcs8),
    ]
    .iter()
    .map(|s| parse_private_key(generate_private_key(s).unwrap().pem().as_bytes()).unwrap())
    .collect();
    for (i, signed) in keys.iter().enumerate() {
        let pem = ca.issue(signed, &["m.example.test"], &[], None, now(), now() + 1.hour());
        let leaf = parse_chain(pem.as_bytes()).unwrap().leaf;
        for (j, key) in keys.iter().enumerate() {
            assert_eq!(key_matches_certificate(key, &leaf), i == j, "key {j} against the certificate of key {i}");
        }
    }
}

#[test]
fn text_without_certificates_is_not_a_chain() {
    assert!(matches!(parse_chain(b"hello"), Err(PkiError::EmptyChain)));
    assert!(matches!(parse_chain(b""), Err(PkiError::EmptyChain)));
    let bad = b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
    assert!(matches!(parse_chain(bad), Err(PkiError::ParseCertificate { index: 0, .. })));
}

#[test]
fn a_chain_verifies_only_to_its_own_ca_while_valid() {
    let ca = TestCa::new("Good");
    let other = TestCa::new("Other");
    let key = generate_private_key(&KeySpec::from_spec(None)).unwrap();
    let full = ca.issue(&key, &["v.example.test"], &[], None, now(), now() + 24.hours());
    let leaf_only = full.split_inclusive("-----END CERTIFICATE-----\n").next().unwrap().to_string();
    let bundle = |pems: &[String]| parse_ca_bundle(pems.concat().as_bytes()).unwrap();
    // (case, chain PEM, CA bundle, time, verifies)
    let cases = [
        ("leaf and intermediate to the root", full.clone(), bundle(&[ca.root_pem()]), now() + 1.hour(), true),
        (
            "a bundle of another root and ours",
            full.clone(),
            bundle(&[other.root_pem(), ca.root_pem()]),
            now() + 1.hour(),
            true,
        ),
        (
            "a bundle holding only the intermediate",
            leaf_only.clone(),
            bundle(&[ca.intermediate_pem()]),
            now() + 1.hour(),
            true,
        ),
        (
            "the leaf alone, bundle of root and intermediate",
            leaf_only.clone(),
            bundle(&[ca.root_pem(), ca.intermediate_pem()]),
            now() + 1.hour(),
            true,
        ),
        ("another CA's bundle", full.clone(), bundle(&[other.root_pem()]), now() + 1.hour(), false),
        ("the leaf alone without the intermediate", leaf_only, bundle(&[ca.root_pem()]), now() + 1.hour(), false),
        ("after expiry", full.clone(), bundle(&[ca.root_pem()]), now() + 25.hours(), false),
        ("before validity", full, bundle(&[ca.root_pem()]), now() - 1.hour(), false),
    ];
    for (case, pem, ca_bundle, at, verifies) in cases {
        let chain = parse_chain(pem.as_bytes()).unwrap();
        assert_eq!(verify_chain(&chain, &ca_bundle, at).is_ok(), verifies, "{case}");
    }
}

#[test]
fn a_ca_bundle_is_read_from_pem_or_base64_pem() {
    use base64::Engine as _;
    let ca = TestCa::new("Bundle");
    let pem = format!("{}{}", ca.root_pem(), ca.intermediate_pem());
    let base64 = base64::engine::general_purpose::STANDARD.encode(&pem);
    assert_eq!(parse_ca_bundle(pem.as_bytes()).unwrap().len(), 2);
    assert_eq!(parse_ca_bundle(format!("{base64}\n").as_bytes()).unwrap().len(), 2);
    assert!(matches!(parse_ca_bundle(b"not a bundle!"), Err(PkiError::ParsePem(_))));
    assert!(matches!(parse_ca_bundle(b"   "), Err(PkiError::EmptyCaBundle)));
    assert!(matches!(
        verify_chain(&parse_chain(ca.intermediate_pem().as_bytes()).unwrap(), &[], now()),
        Err(PkiError::EmptyCaBundle)
    ));
}

#[test]
fn the_renewal_id_is_the_rfc_9773_certificate_identifier() {
    // RFC 9773 section 4.1's example: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4
    // and serial 00:87:65:43:21 give "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE".
    use rcgen::{CertificateParams, CertifiedIssuer, KeyIdMethod, KeyPair, SerialNumber};
    let aki = vec![
        0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3, 0x7B, 0x84, 0x7B, 0xA0, 0xAE, 0x2C, 0xDE, 0x01,
        0xC8, 0xD4,
    ];
    let mut ca = super::testing::ca_params("ARI Example CA");
    ca.key_identifier_method = KeyIdMethod::PreSpecified(aki);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec!["ari.example.test".to_string()]).unwrap();
    leaf.serial_number = Some(SerialNumber::from(vec![0x00, 0x87, 0x65, 0x43, 0x21]));
    leaf.use_authority_key_identifier_extension = true;
    let leaf = leaf.signed_by(&KeyPair::generate().unwrap(), &ca).unwrap();
    let chain = parse_chain(leaf.pem().as_bytes()).unwrap();
    assert_eq!(chain.leaf.renewal_id.as_deref(), Some("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"));

    // Without an authority key identifier there is no identifier (and no ARI for that certificate).
    let mut bare = CertificateParams::new(vec!["bare.example.test".to_string()]).unwrap();
    bare.use_authority_key_identifier_extension = false;
    let bare = bare.self_signed(&KeyPair::generate().unwrap()).unwrap();
    assert_eq!(parse_chain(bare.pem().as_bytes()).unwrap().leaf.renewal_id, None);
}
