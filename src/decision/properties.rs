//! Properties of the pure decisions over every input they can be given: any certificate window a CA may
//! sign, any renewal policy a tenant may write, any count of failures, any bytes in a Secret.

use super::*;
use crate::api::names::{ANNOTATION_CERTIFICATE_NAME, ANNOTATION_CERTIFICATE_UID, TLS_CRT, TLS_KEY};
use crate::desired::testing::certificate;
use crate::testing::properties::config;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

/// 1950-01-01, the earliest time an X.509 UTCTime can hold.
const EARLIEST_X509_SECOND: i64 = -631_152_000;
/// 9999-12-31T23:59:59Z, the latest time an X.509 GeneralizedTime can hold.
const LATEST_X509_SECOND: i64 = 253_402_300_799;

/// Any second an X.509 validity can name (certificate times have no sub-second part).
fn certificate_second() -> impl Strategy<Value = Timestamp> {
    (EARLIEST_X509_SECOND..=LATEST_X509_SECOND).prop_map(|s| Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Any time jiff can represent, to the nanosecond.
fn any_timestamp() -> impl Strategy<Value = Timestamp> {
    (Timestamp::MIN.as_second()..=Timestamp::MAX.as_second(), 0..1_000_000_000i32)
        .prop_map(|(s, n)| Timestamp::new(s, n).unwrap_or(Timestamp::new(s, 0).unwrap_or(Timestamp::UNIX_EPOCH)))
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0..u64::MAX, 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
        (0..400 * 86_400u64).prop_map(Duration::from_secs),
        Just(Duration::ZERO),
        Just(Duration::MAX),
    ]
}

fn any_policy() -> impl Strategy<Value = RenewBefore> {
    prop_oneof![
        any_duration().prop_map(RenewBefore::Duration),
        any::<u8>().prop_map(RenewBefore::Percentage),
        Just(RenewBefore::Default),
    ]
}

/// A certificate window: any start, and a lifetime from one second to a century (or an inverted one).
fn window() -> impl Strategy<Value = (Timestamp, Timestamp)> {
    (certificate_second(), prop_oneof![1..100 * 366 * 86_400i64, -86_400..=0i64]).prop_map(|(not_before, life)| {
        let not_after = Timestamp::from_second(not_before.as_second().saturating_add(life)).unwrap_or(not_before);
        (not_before, not_after)
    })
}

/// A certificate window with a lifetime from one second to a century.
fn valid_window() -> impl Strategy<Value = (Timestamp, Timestamp)> {
    window().prop_filter("a positive lifetime", |(not_before, not_after)| not_before < not_after)
}

fn identifier() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9-]{1,10}(\\.[a-zA-Z0-9-]{1,10}){0,3}", any::<IpAddr>().prop_map(|ip| ip.to_string())]
}

/// Another spelling of the same identifier: another case, an IPv6 address written out in full.
fn respelled(identifier: &str) -> String {
    match identifier.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => full_ipv6(ip),
        Ok(IpAddr::V4(ip)) => ip.to_string(),
        Err(_) => identifier.chars().map(|c| if c.is_ascii_lowercase() { c.to_ascii_uppercase() } else { c }).collect(),
    }
}

fn full_ipv6(ip: Ipv6Addr) -> String {
    ip.segments().iter().map(|s| format!("{s:04x}")).collect::<Vec<_>>().join(":")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn renewal_falls_within_the_validity_of_any_certificate_for_any_policy(
        (not_before, not_after) in window(),
        policy in any_policy(),
    ) {
        let at = renewal_time(not_before, not_after, policy);
        if not_after <= not_before {
            prop_assert_eq!(at, not_after);
        } else {
            prop_assert!(not_before <= at && at <= not_after, "{not_before} <= {at} <= {not_after}");
        }
        prop_assert_eq!(at.subsec_nanosecond(), 0, "renewal times are whole seconds");
    }

    #[test]
    fn renewal_is_never_after_expiry_even_for_times_with_fractions_of_a_second(
        not_before in any_timestamp(),
        not_after in any_timestamp(),
        policy in any_policy(),
    ) {
        // Renewal times are whole seconds: never after expiry, and never before the second validity starts in.
        let at = renewal_time(not_before, not_after, policy);
        prop_assert!(at <= not_after, "{at} after {not_after}");
        if not_before < not_after {
            let start_second = not_before.as_second() - i64::from(not_before.subsec_nanosecond() < 0);
            prop_assert!(start_second <= at.as_second(), "{at} before {not_before}");
        }
    }

    #[test]
    fn renewing_longer_before_expiry_never_renews_later(
        (not_before, not_after) in valid_window(),
        a in 0.0..1.0f64,
        b in 0.0..1.0f64,
    ) {
        // Two renewBefore durations shorter than the lifetime (longer ones fall back to the default).
        let lifetime = not_after.as_second() - not_before.as_second();
        let before = |share: f64| Duration::from_secs((lifetime as f64 * share) as u64);
        let (shorter, longer) = (before(a.min(b)), before(a.max(b)));
        let at = |d| renewal_time(not_before, not_after, RenewBefore::Duration(d));
        prop_assert!(at(longer) <= at(shorter));
    }

    #[test]
    fn a_higher_percentage_never_renews_later((not_before, not_after) in window(), a in 1..=99u8, b in 1..=99u8) {
        let at = |p| renewal_time(not_before, not_after, RenewBefore::Percentage(p));
        prop_assert!(at(a.max(b)) <= at(a.min(b)));
    }

    #[test]
    fn any_percentage_in_a_spec_becomes_one_from_1_to_99(percentage in any::<i32>()) {
        match RenewBefore::from_spec(None, Some(percentage)) {
            RenewBefore::Percentage(p) => prop_assert!((1..=99).contains(&p)),
            other => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn backoff_grows_with_failures_within_its_bounds_for_any_policy(
        initial in any_duration(),
        max in any_duration(),
        failures in any::<u32>(),
    ) {
        let policy = BackoffPolicy { initial, max };
        prop_assert_eq!(policy.delay(0), Duration::ZERO);
        let floor = initial.max(Duration::from_secs(1));
        let ceiling = max.max(floor);
        let delay = policy.delay(failures.max(1));
        prop_assert!(floor <= delay && delay <= ceiling, "{floor:?} <= {delay:?} <= {ceiling:?}");
        prop_assert!(policy.delay(failures) <= policy.delay(failures.saturating_add(1)), "not monotone");
    }

    #[test]
    fn a_retry_is_never_before_the_failure(
        initial in any_duration(),
        max in any_duration(),
        failures in any::<u32>(),
        last_failure in any_timestamp(),
    ) {
        let retry_at = BackoffPolicy { initial, max }.retry_at(last_failure, failures);
        prop_assert!(retry_at >= last_failure);
    }

    #[test]
    fn identifiers_are_the_same_in_any_order_case_spelling_and_repetition(
        identifiers in proptest::collection::vec(identifier(), 0..8),
        shuffle in any::<proptest::sample::Index>(),
    ) {
        prop_assert!(same_identifiers(&identifiers, &identifiers));
        let mut other: Vec<String> = identifiers.iter().map(|i| respelled(i)).collect();
        if !other.is_empty() {
            let k = shuffle.index(other.len());
            other.rotate_left(k);
            other.push(other[0].clone());
        }
        prop_assert!(same_identifiers(&identifiers, &other), "{identifiers:?} vs {other:?}");
        prop_assert!(same_identifiers(&other, &identifiers), "not symmetric");
    }

    #[test]
    fn an_identifier_added_or_removed_makes_the_identifiers_differ(
        identifiers in proptest::collection::vec(identifier(), 0..8),
        added in identifier(),
    ) {
        let canonical = |s: &str| s.parse::<IpAddr>().map(|ip| ip.to_string()).unwrap_or_else(|_| s.to_ascii_lowercase());
        prop_assume!(!identifiers.iter().any(|i| canonical(i) == canonical(&added)));
        let mut more = identifiers.clone();
        more.push(added);
        prop_assert!(!same_identifiers(&identifiers, &more));
        prop_assert!(!same_identifiers(&more, &identifiers));
    }

    #[test]
    fn any_bytes_in_an_owned_secret_lead_to_a_reissue_not_a_panic(
        crt in proptest::collection::vec(any::<u8>(), 0..2_000),
        key in proptest::collection::vec(any::<u8>(), 0..2_000),
        wrap in any::<bool>(),
    ) {
        let pem = |label: &str, der: &[u8]| {
            use base64::Engine as _;
            let body = base64::engine::general_purpose::STANDARD.encode(der);
            format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n").into_bytes()
        };
        let (crt, key) = if wrap { (pem("CERTIFICATE", &crt), pem("PRIVATE KEY", &key)) } else { (crt, key) };
        let certificate = certificate();
        let mut secret = Secret::default();
        secret.metadata.name = Some(certificate.spec.secret_name.clone());
        secret.metadata.annotations =
            Some(BTreeMap::from([
                (ANNOTATION_CERTIFICATE_NAME.to_string(), "web".to_string()),
                (ANNOTATION_CERTIFICATE_UID.to_string(), certificate.metadata.uid.clone().unwrap_or_default()),
            ]));
        secret.data = Some(BTreeMap::from([
            (TLS_CRT.to_string(), ByteString(crt)),
            (TLS_KEY.to_string(), ByteString(key)),
        ]));
        let observed = Observed { certificate: &certificate, secret: Some(&secret), now: Timestamp::UNIX_EPOCH };
        match issuance_decision(&observed, &BackoffPolicy::default()) {
            IssuanceDecision::Issue { reason, .. } => prop_assert!(
                matches!(reason, IssuanceReason::InvalidKeyPair | IssuanceReason::MissingData),
                "{reason:?}"
            ),
            other => prop_assert!(false, "{other:?}"),
        }
    }
}
