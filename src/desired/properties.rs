//! Properties of the names and requeue times derived from tenant-chosen names: valid Kubernetes names and
//! label values whatever the input, and a requeue time within its jitter.

use super::testing::{challenge, is_dns_1035_label, is_dns_subdomain};
use super::{certificate_label_value, next_key_secret_name, requeue_at, solver_name, token_hash};
use crate::testing::properties::{config, hostile_text};
use jiff::Timestamp;
use proptest::prelude::*;
use std::time::Duration;

/// A Certificate name as the apiserver admits it: a DNS subdomain of up to 253 characters.
fn object_name() -> impl Strategy<Value = String> {
    proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", 1..6)
        .prop_map(|parts| parts.join("."))
        .prop_filter("at most 253 characters", |name| name.len() <= 253)
}

fn is_label_value(value: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_alphanumeric();
    value.is_empty()
        || (value.len() <= 63
            && value.starts_with(alphanumeric)
            && value.ends_with(alphanumeric)
            && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_certificate_label_value_is_a_valid_label_value_for_any_name(name in prop_oneof![object_name(), hostile_text()]) {
        let value = certificate_label_value(&name);
        prop_assert!(is_label_value(&value), "{name:?} gave {value:?}");
        prop_assert_eq!(certificate_label_value(&name), value, "not stable");
    }

    #[test]
    fn a_next_key_secret_name_is_a_dns_subdomain_for_any_certificate_name(name in object_name()) {
        let secret = next_key_secret_name(&name);
        prop_assert!(is_dns_subdomain(&secret), "{name:?} gave {secret:?}");
    }

    #[test]
    fn a_solver_name_is_a_dns_1035_label_for_any_certificate_and_authorization(
        name in prop_oneof![object_name(), hostile_text()],
        authorization_url in hostile_text(),
    ) {
        let solver = solver_name(&name, &challenge("web.example.test", "token", &authorization_url));
        prop_assert!(is_dns_1035_label(&solver), "{name:?} gave {solver:?}");
    }

    #[test]
    fn a_token_hash_is_a_label_value_for_any_token(token in hostile_text()) {
        let hash = token_hash(&token);
        prop_assert!(is_label_value(&hash) && hash.len() == 32, "{hash:?}");
    }

    #[test]
    fn a_requeue_is_never_before_the_renewal_nor_later_than_the_jitter(
        seconds in Timestamp::MIN.as_second()..=Timestamp::MAX.as_second(),
        key in hostile_text(),
        max_jitter in prop_oneof![
            (0..3_600_000_000_000u64).prop_map(Duration::from_nanos),
            (0..u64::MAX, 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
        ],
    ) {
        let renewal = Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH);
        let at = requeue_at(renewal, &key, max_jitter);
        prop_assert!(at >= renewal);
        if max_jitter.is_zero() {
            prop_assert_eq!(at, renewal);
        } else if at < Timestamp::MAX {
            let offset = Duration::try_from(at.duration_since(renewal)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(offset < max_jitter, "{offset:?} >= {max_jitter:?}");
        }
        prop_assert_eq!(requeue_at(renewal, &key, max_jitter), at, "not stable");
    }
}
