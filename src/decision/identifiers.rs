//! Whether an order in flight still asks for what the spec asks for.

use crate::api::IssuerRef;
use crate::api::names::{ANNOTATION_ISSUER_KIND, ANNOTATION_ISSUER_NAME};
use k8s_openapi::api::core::v1::Secret;
use std::net::IpAddr;

/// Whether two lists name the same identifiers: DNS names compared without case, IP addresses by value
/// (`::1` and `0:0::1` are one address), order and duplicates ignored.
pub fn same_identifiers(wanted: &[String], ordered: &[String]) -> bool {
    canonical(wanted) == canonical(ordered)
}

/// Whether the next-key Secret of an order in flight names an issuer other than `wanted`: the order was
/// placed with another issuer (its account, its CA) and must not be continued with this one. A Secret that
/// names no issuer (written before kacme recorded it) is not taken for another issuer's.
pub fn order_is_for_another_issuer(next_key_secret: &Secret, wanted: &IssuerRef) -> bool {
    let annotations = next_key_secret.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    match (annotation(ANNOTATION_ISSUER_KIND), annotation(ANNOTATION_ISSUER_NAME)) {
        (Some(kind), Some(name)) => kind != wanted.kind.to_string() || name != wanted.name,
        _ => false,
    }
}

fn canonical(identifiers: &[String]) -> std::collections::BTreeSet<String> {
    identifiers
        .iter()
        .map(|s| s.parse::<IpAddr>().map(|ip| ip.to_string()).unwrap_or_else(|_| s.to_ascii_lowercase()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn identifiers_are_the_same_regardless_of_case_order_and_address_spelling() {
        // (case, wanted, ordered, same)
        let cases = [
            ("identical", list(&["a.test", "10.0.0.1"]), list(&["a.test", "10.0.0.1"]), true),
            ("another order", list(&["b.test", "a.test"]), list(&["a.test", "b.test"]), true),
            ("another case", list(&["A.Test"]), list(&["a.test"]), true),
            ("an IPv6 address spelled differently", list(&["0:0::1"]), list(&["::1"]), true),
            ("a name added", list(&["a.test", "b.test"]), list(&["a.test"]), false),
            ("a name replaced", list(&["c.test"]), list(&["a.test"]), false),
            ("another address", list(&["10.0.0.2"]), list(&["10.0.0.1"]), false),
        ];
        for (case, wanted, ordered, same) in cases {
            assert_eq!(same_identifiers(&wanted, &ordered), same, "{case}");
        }
    }

    #[test]
    fn an_order_is_for_another_issuer_when_its_key_names_another_issuer() {
        use crate::api::IssuerKind;
        let secret = |annotations: &[(&str, &str)]| {
            let mut secret = Secret::default();
            secret.metadata.annotations =
                Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
            secret
        };
        let wanted = IssuerRef { name: "ca".into(), kind: IssuerKind::Issuer };
        let (kind, name) = (ANNOTATION_ISSUER_KIND, ANNOTATION_ISSUER_NAME);
        // (case, the next-key Secret's annotations, for another issuer)
        let cases: [(&str, &[(&str, &str)], bool); 5] = [
            ("the same issuer", &[(kind, "Issuer"), (name, "ca")], false),
            ("another name", &[(kind, "Issuer"), (name, "other")], true),
            ("a ClusterIssuer of the same name", &[(kind, "ClusterIssuer"), (name, "ca")], true),
            ("no issuer recorded", &[], false),
            ("half an issuer recorded", &[(name, "other")], false),
        ];
        for (case, annotations, another) in cases {
            assert_eq!(order_is_for_another_issuer(&secret(annotations), &wanted), another, "{case}");
        }
    }
}
