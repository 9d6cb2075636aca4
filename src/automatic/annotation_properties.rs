//! Properties of the annotation parsers that hold whatever exact set of values they accept: a tenant's
//! annotation is parsed or refused with an error naming it, never a panic; what is accepted is bounded,
//! canonical, and reads back the same when written out again.

use super::annotations::*;
use crate::api::KeyUsage;
use crate::testing::properties::{config, hostile_text};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Every annotation [`parse_issuance`] reads.
const ISSUANCE_ANNOTATIONS: [&str; 5] = [
    ANNOTATION_ISSUER,
    ANNOTATION_CLUSTER_ISSUER,
    ANNOTATION_DURATION,
    ANNOTATION_RENEW_BEFORE,
    ANNOTATION_PRIVATE_KEY_ALGORITHM,
];

const USAGES: [KeyUsage; 11] = [
    KeyUsage::DigitalSignature,
    KeyUsage::ContentCommitment,
    KeyUsage::KeyEncipherment,
    KeyUsage::DataEncipherment,
    KeyUsage::KeyAgreement,
    KeyUsage::ServerAuth,
    KeyUsage::ClientAuth,
    KeyUsage::CodeSigning,
    KeyUsage::EmailProtection,
    KeyUsage::TimeStamping,
    KeyUsage::OcspSigning,
];

/// A lowercase RFC 1123 name such as `web-1.apps.internal`, whose last label is not all digits (as no
/// top-level domain is).
fn dns_name() -> impl Strategy<Value = String> {
    (proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 0..4), "[a-z]([a-z0-9-]{0,10}[a-z0-9])?").prop_map(
        |(mut labels, last)| {
            labels.push(last);
            labels.join(".")
        },
    )
}

/// An IPv4 or IPv6 address in canonical form, not IPv4-mapped (which `spec.ipAddresses` refuses).
fn ip_address() -> impl Strategy<Value = String> {
    any::<IpAddr>()
        .prop_filter("IPv4-mapped", |ip| !matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()))
        .prop_map(|ip| ip.to_string())
}

/// A comma-separated list as a tenant might write it: names, addresses and hostile text, with stray spaces.
fn name_list() -> impl Strategy<Value = String> {
    let item = prop_oneof![dns_name(), ip_address(), hostile_text(), Just(String::new())];
    (proptest::collection::vec(item, 0..120), any::<bool>())
        .prop_map(|(items, spaced)| items.join(if spaced { " , " } else { "," }))
}

/// Values for the issuance annotations: plausible ones and hostile ones.
fn issuance_value() -> impl Strategy<Value = String> {
    prop_oneof![
        dns_name(),
        "[0-9]{1,4}(\\.[0-9]{1,3})?(ns|us|µs|ms|s|m|h)",
        "(ecdsa|ECDSA|rsa|RSA|ed25519|Ed25519|dsa)",
        hostile_text(),
    ]
}

fn issuance_annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(
        prop_oneof![proptest::sample::select(&ISSUANCE_ANNOTATIONS[..]).prop_map(str::to_string), "[a-z./-]{1,20}"],
        issuance_value(),
        0..6,
    )
}

/// Checks what every error of a parser must be: about `annotation`, and saying so first.
fn assert_names_the_annotation(error: &AnnotationError, annotation: &str) {
    assert_eq!(error.annotation, annotation, "{error}");
    assert!(error.to_string().starts_with(&format!("annotation {annotation}: ")), "{error}");
    assert!(!error.problem.is_empty(), "{error}");
}

fn usage_text(usage: KeyUsage) -> String {
    serde_json::to_value(usage).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn names_are_parsed_or_refused_with_an_error_about_the_names_annotation(value in name_list()) {
        if let Err(error) = parse_names(&value) {
            assert_names_the_annotation(&error, ANNOTATION_NAMES);
        }
    }

    #[test]
    fn hostile_names_never_panic_the_parser(value in hostile_text()) {
        if let Err(error) = parse_names(&value) {
            assert_names_the_annotation(&error, ANNOTATION_NAMES);
        }
    }

    #[test]
    fn accepted_names_are_bounded_distinct_and_canonical(value in name_list()) {
        let Ok(names) = parse_names(&value) else { return Ok(()) };
        let count = names.dns_names.len() + names.ip_addresses.len();
        prop_assert!((1..=100).contains(&count), "{count} names");
        prop_assert_eq!(names.dns_names.iter().collect::<BTreeSet<_>>().len(), names.dns_names.len());
        prop_assert_eq!(names.ip_addresses.iter().collect::<BTreeSet<_>>().len(), names.ip_addresses.len());
        for name in &names.dns_names {
            prop_assert!(is_dns_name(name), "{name:?} is not a DNS name");
            prop_assert!(!name.contains(','), "{name:?}");
        }
        for ip in &names.ip_addresses {
            let parsed: IpAddr = ip.parse().map_err(|e| TestCaseError::fail(format!("{ip:?}: {e}")))?;
            prop_assert_eq!(&parsed.to_string(), ip, "not canonical");
        }
    }

    #[test]
    fn accepted_names_written_out_again_parse_to_the_same_names(value in name_list()) {
        let Ok(names) = parse_names(&value) else { return Ok(()) };
        let written = names.dns_names.iter().chain(&names.ip_addresses).cloned().collect::<Vec<_>>().join(",");
        prop_assert_eq!(parse_names(&written), Ok(names));
    }

    #[test]
    fn canonical_names_and_addresses_are_accepted_as_written(
        items in proptest::collection::vec(prop_oneof![dns_name(), ip_address()], 1..100),
    ) {
        let names = parse_names(&items.join(", ")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut expected = Vec::new();
        for item in &items {
            if !expected.contains(item) {
                expected.push(item.clone());
            }
        }
        let got: Vec<String> = names.dns_names.iter().chain(&names.ip_addresses).cloned().collect();
        prop_assert_eq!(got.iter().collect::<BTreeSet<_>>(), expected.iter().collect::<BTreeSet<_>>());
    }

    #[test]
    fn more_than_a_hundred_distinct_names_are_refused(extra in 1..50usize) {
        let value = (0..100 + extra).map(|i| format!("n{i}.test")).collect::<Vec<_>>().join(",");
        let error = parse_names(&value).expect_err("too many names");
        assert_names_the_annotation(&error, ANNOTATION_NAMES);
    }

    #[test]
    fn a_dns_name_is_short_lowercase_ascii_and_never_empty(value in prop_oneof![hostile_text(), dns_name()]) {
        if is_dns_name(&value) {
            prop_assert!(!value.is_empty() && value.len() <= 253, "{value:?}");
            prop_assert!(value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
            prop_assert!(value.split('.').all(|label| (1..=63).contains(&label.len())), "{value:?}");
            prop_assert_eq!(value.to_ascii_lowercase(), value.clone());
        }
    }

    #[test]
    fn a_dns_name_alone_parses_to_itself(value in dns_name()) {
        prop_assume!(is_dns_name(&value));
        let names = parse_names(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        match value.parse::<IpAddr>() {
            Ok(ip) => prop_assert_eq!(names.ip_addresses, vec![ip.to_string()]),
            Err(_) => prop_assert_eq!(names.dns_names, vec![value]),
        }
    }

    #[test]
    fn containers_are_parsed_or_refused_with_an_error_about_the_containers_annotation(
        value in prop_oneof![hostile_text(), proptest::collection::vec("[a-z0-9-]{0,12}", 0..20).prop_map(|v| v.join(","))],
    ) {
        match parse_containers(&value) {
            Err(error) => assert_names_the_annotation(&error, ANNOTATION_CONTAINERS),
            Ok(containers) => {
                prop_assert!(!containers.is_empty());
                prop_assert_eq!(containers.iter().collect::<BTreeSet<_>>().len(), containers.len(), "duplicates");
                for name in &containers {
                    prop_assert!(!name.is_empty() && !name.contains(',') && name.trim() == name, "{name:?}");
                }
                prop_assert_eq!(parse_containers(&containers.join(",")), Ok(containers));
            }
        }
    }

    #[test]
    fn usages_are_parsed_or_refused_with_an_error_about_the_usages_annotation(
        value in prop_oneof![
            hostile_text(),
            proptest::collection::vec(proptest::sample::select(&USAGES[..]).prop_map(usage_text), 0..15)
                .prop_map(|v| v.join(" ,")),
        ],
    ) {
        let annotations = BTreeMap::from([(ANNOTATION_USAGES.to_string(), value)]);
        match parse_usages(&annotations) {
            Err(error) => assert_names_the_annotation(&error, ANNOTATION_USAGES),
            Ok(usages) => {
                prop_assert!(usages.windows(2).all(|w| w[0] < w[1]), "not sorted and distinct: {usages:?}");
                let written = usages.iter().map(|u| usage_text(*u)).collect::<Vec<_>>().join(", ");
                let again = BTreeMap::from([(ANNOTATION_USAGES.to_string(), written)]);
                prop_assert_eq!(parse_usages(&again), Ok(usages));
            }
        }
    }

    #[test]
    fn issuance_annotations_are_parsed_or_refused_with_an_error_about_one_of_them(
        annotations in issuance_annotations(),
    ) {
        match parse_issuance(&annotations) {
            Err(error) => {
                prop_assert!(annotations.contains_key(error.annotation), "{error} is about an absent annotation");
                assert_names_the_annotation(&error, error.annotation);
            }
            Ok(None) => {
                prop_assert!(!annotations.contains_key(ANNOTATION_ISSUER));
                prop_assert!(!annotations.contains_key(ANNOTATION_CLUSTER_ISSUER));
            }
            Ok(Some(issuance)) => {
                // An object name (an RFC 1123 subdomain, whose labels may be longer than a DNS name's).
                let name = &issuance.issuer_ref.name;
                prop_assert!(crate::api::validation::object_name(name).is_ok(), "{:?}", name);
                if let (Some(duration), Some(renew_before)) = (issuance.duration, issuance.renew_before) {
                    prop_assert!(renew_before < duration, "renew-before {renew_before} not shorter than {duration}");
                }
            }
        }
    }

    #[test]
    fn accepted_issuance_annotations_written_out_again_parse_to_the_same_request(
        annotations in issuance_annotations(),
    ) {
        let Ok(Some(issuance)) = parse_issuance(&annotations) else { return Ok(()) };
        let issuer_key = match issuance.issuer_ref.kind {
            crate::api::IssuerKind::Issuer => ANNOTATION_ISSUER,
            crate::api::IssuerKind::ClusterIssuer => ANNOTATION_CLUSTER_ISSUER,
        };
        let mut written = BTreeMap::from([(issuer_key.to_string(), issuance.issuer_ref.name.clone())]);
        if let Some(duration) = issuance.duration {
            written.insert(ANNOTATION_DURATION.into(), duration.to_string());
        }
        if let Some(renew_before) = issuance.renew_before {
            written.insert(ANNOTATION_RENEW_BEFORE.into(), renew_before.to_string());
        }
        if let Some(algorithm) = &issuance.algorithm {
            let text = serde_json::to_value(algorithm).ok().and_then(|v| v.as_str().map(str::to_string));
            written.insert(ANNOTATION_PRIVATE_KEY_ALGORITHM.into(), text.unwrap_or_default());
        }
        prop_assert_eq!(parse_issuance(&written), Ok(Some(issuance)));
    }
}
