//! Deterministic names and label values for the objects kacme creates.
//!
//! Kubernetes limits differ per place: a Service name must be a DNS-1035 label (63 characters, starting
//! with a letter), a Secret name a DNS subdomain (253 characters), a label value 63 characters. Where an
//! input may be too long, it is shortened and a hash of the whole input keeps the result unique.

use crate::acme::Http01Challenge;
use aws_lc_rs::digest::{SHA256, digest};

/// Prefix of every solver object name.
const SOLVER_NAME_PREFIX: &str = "kacme-";
/// Maximum length of a DNS-1035 label (Service names) and of a label value.
const MAX_LABEL_LENGTH: usize = 63;
/// Maximum length of a DNS subdomain (Secret names).
const MAX_SUBDOMAIN_LENGTH: usize = 253;
/// Hex digits of the hash that makes a shortened name unique.
const SHORT_HASH_LENGTH: usize = 10;
/// Hex digits of [`token_hash`]: 128 bits.
const TOKEN_HASH_LENGTH: usize = 32;
/// Suffix of the Secret holding the private key of an issuance in progress.
const NEXT_KEY_SUFFIX: &str = "-next-key";

/// The name shared by the solver Pod, Service and Ingress of one challenge of a Certificate, for
/// example `kacme-web-3f2a9c01be`.
///
/// It is a valid DNS-1035 label (at most 63 characters, starts with a letter), the same on every call,
/// and different for every (Certificate, authorization URL) pair: the hash covers the whole Certificate
/// name and the authorization URL, so shortening a long Certificate name cannot make two names collide.
pub fn solver_name(certificate_name: &str, challenge: &Http01Challenge) -> String {
    let hash = sha256_hex(&[certificate_name, &challenge.authorization_url], SHORT_HASH_LENGTH);
    let room = MAX_LABEL_LENGTH - SOLVER_NAME_PREFIX.len() - 1 - SHORT_HASH_LENGTH;
    let readable: String = certificate_name.chars().map(dns_label_char).take(room).collect();
    format!("{SOLVER_NAME_PREFIX}{readable}-{hash}")
}

/// The value of the `kacme.dev/token-hash` label for a challenge token: 32 hex digits of its SHA-256
/// (tokens may be longer than a label value and contain characters a label value cannot).
pub fn token_hash(token: &str) -> String {
    sha256_hex(&[token], TOKEN_HASH_LENGTH)
}

/// The value of the `kacme.dev/certificate` label for a Certificate name.
///
/// A name that is a valid label value (up to 63 characters) is used as it is, so that
/// `kubectl get pods -l kacme.dev/certificate=<name>` works. A longer name (Certificate names may have
/// up to 253 characters) becomes its first 52 characters and a hash of the whole name. Select solver
/// objects of a Certificate with this function, never with the raw name.
pub fn certificate_label_value(certificate_name: &str) -> String {
    if is_label_value(certificate_name) {
        return certificate_name.to_string();
    }
    let hash = sha256_hex(&[certificate_name], SHORT_HASH_LENGTH);
    let room = MAX_LABEL_LENGTH - 1 - SHORT_HASH_LENGTH;
    let readable: String = certificate_name.chars().map(label_value_char).take(room).collect();
    let readable = readable.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if readable.is_empty() { hash } else { format!("{readable}-{hash}") }
}

/// The name of the Secret that holds the private key of a Certificate's issuance in progress:
/// `<certificate name>-next-key`, or, when that would exceed 253 characters, a shortened Certificate
/// name, a hash of the whole name and `-next-key`.
pub fn next_key_secret_name(certificate_name: &str) -> String {
    if certificate_name.len() + NEXT_KEY_SUFFIX.len() <= MAX_SUBDOMAIN_LENGTH {
        return format!("{certificate_name}{NEXT_KEY_SUFFIX}");
    }
    let hash = sha256_hex(&[certificate_name], SHORT_HASH_LENGTH);
    let room = MAX_SUBDOMAIN_LENGTH - NEXT_KEY_SUFFIX.len() - 1 - SHORT_HASH_LENGTH;
    let readable: String = certificate_name.chars().take(room).collect();
    // A subdomain label must end with a letter or digit, and "-<hash>" starts a new part of this one.
    let readable = readable.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{readable}-{hash}{NEXT_KEY_SUFFIX}")
}

/// The name of the Secret that holds the ACME account key (or the EAB key) of one namespace at a
/// ClusterIssuer with `accountPerNamespace`: `<base>-<namespace>`, or, when that would exceed 253
/// characters, a shortened base and a hash of both. A valid Secret name when `base` is one.
pub fn namespace_account_secret_name(base: &str, namespace: &str) -> String {
    if base.len() + 1 + namespace.len() <= MAX_SUBDOMAIN_LENGTH {
        return format!("{base}-{namespace}");
    }
    let hash = sha256_hex(&[base, namespace], SHORT_HASH_LENGTH);
    let room = MAX_SUBDOMAIN_LENGTH - 1 - SHORT_HASH_LENGTH;
    let readable: String = base.chars().take(room).collect();
    let readable = readable.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if readable.is_empty() { hash } else { format!("{readable}-{hash}") }
}

/// The first `length` hex digits of the SHA-256 of `parts`, separated by NUL bytes (which no name
/// contains, so that ("ab", "c") and ("a", "bc") hash differently).
fn sha256_hex(parts: &[&str], length: usize) -> String {
    let input = parts.join("\0");
    let hash = digest(&SHA256, input.as_bytes());
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    hex.chars().take(length).collect()
}

/// A character as it may appear inside a DNS-1035 label: lowercase letters, digits and `-`.
fn dns_label_char(c: char) -> char {
    match c.to_ascii_lowercase() {
        c @ ('a'..='z' | '0'..='9') => c,
        _ => '-',
    }
}

/// A character as it may appear inside a label value: letters, digits, `-`, `_` and `.`.
fn label_value_char(c: char) -> char {
    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' }
}

/// Whether `value` is a valid label value: empty, or up to 63 of letters, digits, `-`, `_` and `.`,
/// beginning and ending with a letter or digit.
fn is_label_value(value: &str) -> bool {
    let alphanumeric_ends =
        value.starts_with(|c: char| c.is_ascii_alphanumeric()) && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    value.is_empty()
        || (value.len() <= MAX_LABEL_LENGTH && alphanumeric_ends && value.chars().all(|c| label_value_char(c) == c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::testing::{challenge, is_dns_1035_label, is_dns_subdomain};

    #[test]
    fn solver_names_are_short_valid_and_stable() {
        let long = "a".repeat(253);
        let dotted = "web.example.test";
        // (case, certificate name, authorization URL, expected prefix)
        let cases = [
            ("a short name keeps the whole Certificate name", "web", "https://ca/authz/1", "kacme-web-"),
            ("a 253-character name is shortened", long.as_str(), "https://ca/authz/1", "kacme-aaaa"),
            ("dots become hyphens", dotted, "https://ca/authz/1", "kacme-web-example-test-"),
            ("an empty name still starts with a letter", "", "https://ca/authz/1", "kacme--"),
        ];
        for (case, name, url, prefix) in cases {
            let got = solver_name(name, &challenge("web.example.test", "tok", url));
            assert!(is_dns_1035_label(&got), "{case}: {got:?} is a DNS-1035 label");
            assert!(got.starts_with(prefix), "{case}: {got:?} starts with {prefix:?}");
            assert_eq!(got, solver_name(name, &challenge("other", "other", url)), "{case}: stable");
        }
    }

    #[test]
    fn solver_names_differ_per_certificate_and_authorization() {
        let long_a = format!("{}-a", "x".repeat(100));
        let long_b = format!("{}-b", "x".repeat(100));
        let name = |cert: &str, url: &str| solver_name(cert, &challenge("web.example.test", "tok", url));
        // (case, one name, another name)
        let cases = [
            (
                "two authorizations of one Certificate",
                name("web", "https://ca/authz/1"),
                name("web", "https://ca/authz/2"),
            ),
            (
                "one authorization of two Certificates",
                name("web", "https://ca/authz/1"),
                name("api", "https://ca/authz/1"),
            ),
            (
                "two long Certificate names with the same beginning",
                name(&long_a, "https://ca/authz/1"),
                name(&long_b, "https://ca/authz/1"),
            ),
        ];
        for (case, one, other) in cases {
            assert_ne!(one, other, "{case}");
        }
    }

    #[test]
    fn token_hashes_are_label_values_unique_per_token() {
        let long_token = "T".repeat(300);
        for token in ["", "abc", "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0", long_token.as_str()] {
            let hash = token_hash(token);
            assert_eq!(hash.len(), 32, "{token}");
            assert!(is_label_value(&hash), "{hash}");
            assert_eq!(hash, token_hash(token), "stable");
        }
        assert_ne!(token_hash("a"), token_hash("b"));
    }

    #[test]
    fn certificate_label_values_keep_short_names_and_shorten_long_ones() {
        let long = format!("{}.example", "web".repeat(30));
        let long_other = format!("{}.other", "web".repeat(30));
        // (case, name, expected to be kept as it is)
        let cases = [
            ("a short name is kept", "web", true),
            ("a dotted name is kept", "web.example.test", true),
            ("a 63-character name is kept", &"w".repeat(63), true),
            ("a 64-character name is shortened", &"w".repeat(64), false),
            ("a 98-character name is shortened", long.as_str(), false),
        ];
        for (case, name, kept) in cases {
            let value = certificate_label_value(name);
            assert!(is_label_value(&value) && !value.is_empty(), "{case}: {value:?} is a label value");
            assert_eq!(value == name, kept, "{case}: {value:?}");
        }
        assert_ne!(certificate_label_value(&long), certificate_label_value(&long_other));
    }

    #[test]
    fn next_key_secret_names_are_subdomains_unique_per_certificate() {
        let fits = "a".repeat(244);
        let dot_at_cut = format!("{}.{}", "a".repeat(232), "b".repeat(20));
        // (case, certificate name, expected name; None = shortened with a hash)
        let cases = [
            ("a short name gets the suffix", "web".to_string(), Some("web-next-key".to_string())),
            ("a 244-character name still fits", fits.clone(), Some(format!("{fits}-next-key"))),
            ("a 253-character name is shortened", "a".repeat(253), None),
            ("a name shortened at a dot never ends a label with it", dot_at_cut, None),
        ];
        for (case, name, want) in cases {
            let got = next_key_secret_name(&name);
            assert!(is_dns_subdomain(&got), "{case}: {got:?} is a DNS subdomain");
            assert!(got.ends_with("-next-key"), "{case}: {got:?}");
            if let Some(want) = want {
                assert_eq!(got, want, "{case}");
            }
        }
        let long = "a".repeat(249);
        assert_ne!(next_key_secret_name(&format!("{long}x")), next_key_secret_name(&format!("{long}y")));
    }

    #[test]
    fn namespace_account_secret_names_are_subdomains_unique_per_base_and_namespace() {
        let ns = "n".repeat(63);
        // (case, base, namespace, expected name; None = shortened with a hash)
        let cases = [
            (
                "base and namespace joined",
                "cluster-ca-account".to_string(),
                "team-a",
                Some("cluster-ca-account-team-a".to_string()),
            ),
            (
                "a 189-character base still fits",
                "a".repeat(189),
                ns.as_str(),
                Some(format!("{}-{ns}", "a".repeat(189))),
            ),
            ("a 190-character base is shortened", "a".repeat(190), ns.as_str(), None),
            (
                "a base shortened at a dot never ends a label with it",
                format!("{}.{}", "a".repeat(241), "b".repeat(11)),
                "x",
                None,
            ),
        ];
        for (case, base, namespace, want) in cases {
            let got = namespace_account_secret_name(&base, namespace);
            assert!(is_dns_subdomain(&got), "{case}: {got:?} is a DNS subdomain");
            if let Some(want) = want {
                assert_eq!(got, want, "{case}");
            }
        }
        let long = "a".repeat(250);
        assert_ne!(namespace_account_secret_name(&long, "team-a"), namespace_account_secret_name(&long, "team-b"));
    }
}
