//! Whether an order in flight still asks for what the spec asks for.

use std::net::IpAddr;

/// Whether two lists name the same identifiers: DNS names compared without case, IP addresses by value
/// (`::1` and `0:0::1` are one address), order and duplicates ignored.
pub fn same_identifiers(wanted: &[String], ordered: &[String]) -> bool {
    canonical(wanted) == canonical(ordered)
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
}
