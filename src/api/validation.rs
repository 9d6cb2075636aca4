//! The one validator of the values a tenant writes, wherever they write them: a Certificate's fields are
//! checked at admission by the CRD schema, and the same values in `kacme.dev/*` annotations (on Ingresses
//! and pod templates) are checked by these functions, which follow the schema rule for rule. A value is
//! accepted in an annotation exactly when it is accepted in the Certificate field it becomes, and every
//! value the apiserver admits is one the controller can read (`tests/environment.rs` proves both against a
//! real apiserver, value by value).
//!
//! Each function returns the problem in plain words, without the field's name: the caller names the
//! field or annotation.

use super::duration::{GoDuration, MAX_DURATION, parse_go_duration};
use super::{KeyAlgorithm, KeyUsage};
use std::net::IpAddr;
use std::time::Duration;

/// The shortest lifetime a certificate may ask for.
pub const MIN_LIFETIME: Duration = Duration::from_secs(300);
/// [`MIN_LIFETIME`] as the CRD's CEL rules write it.
pub const MIN_LIFETIME_TEXT: &str = "5m";
/// [`MAX_DURATION`] as the CRD's CEL rules write it.
pub const MAX_DURATION_TEXT: &str = "876000h";
/// The longest DNS name or object name.
pub const MAX_NAME_LENGTH: usize = 253;
/// Most DNS names (and, separately, most IP addresses) one certificate may carry: the CRD's `maxItems`.
pub const MAX_NAMES: usize = 100;
/// The longest part of a rejected value that a message quotes.
const MAX_QUOTED: usize = 80;

/// `value` quoted for a message, cut after [`MAX_QUOTED`] characters: a tenant's value of any size makes
/// an Event or a condition of bounded size.
pub fn quoted(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTED) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

/// A value a tenant wrote that kacme does not accept, and why (without the field's name).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(problem: impl Into<String>) -> Invalid {
    Invalid(problem.into())
}

/// A DNS name to certify, as `spec.dnsNames` accepts it: lowercase letters, digits and hyphens in labels of
/// 1 to 63 characters that neither begin nor end with a hyphen, 253 characters at most, no wildcard, no
/// trailing dot (the schema's `DNS_NAME_PATTERN`), and a last label that is not all digits (no top-level
/// domain is: such a name is a mistyped IP address, which belongs in `ipAddresses`; [`NUMERIC_TLD_RULE`]).
pub fn dns_name(value: &str) -> Result<(), Invalid> {
    if value.starts_with("*.") {
        return Err(invalid(format!(
            "{} is a wildcard; wildcard names need DNS-01 validation, which kacme does not support",
            quoted(value)
        )));
    }
    if value.len() > MAX_NAME_LENGTH {
        return Err(invalid(format!("a DNS name is at most {MAX_NAME_LENGTH} characters long")));
    }
    let label_ok = |label: &str| label.len() <= 63 && subdomain_label(label);
    if value.is_empty() || !value.split('.').all(label_ok) {
        return Err(invalid(format!(
            "{} is not a DNS name (lowercase letters, digits and hyphens in dot-separated labels of at most 63 \
             characters, no trailing dot)",
            quoted(value)
        )));
    }
    if value.rsplit('.').next().is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit())) {
        return Err(invalid(format!(
            "{} ends in an all-digit label, which no DNS name does: an IP address belongs in ipAddresses",
            quoted(value)
        )));
    }
    Ok(())
}

/// The CEL rule of `spec.dnsNames` that [`dns_name`] follows for the last label.
pub const NUMERIC_TLD_RULE: &str = "self.all(n, !n.matches('(^|[.])[0-9]+$'))";

/// Whether `name` is a DNS name [`dns_name`] accepts.
pub fn is_dns_name(name: &str) -> bool {
    dns_name(name).is_ok()
}

/// The name of an object kacme refers to (an issuer, a Secret): a lowercase RFC 1123 subdomain of at most
/// 253 characters, as the schema's `DNS_SUBDOMAIN_PATTERN` and Kubernetes itself accept it.
pub fn object_name(value: &str) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if value.len() > MAX_NAME_LENGTH {
        return Err(invalid(format!("a name is at most {MAX_NAME_LENGTH} characters long")));
    }
    if !value.split('.').all(subdomain_label) {
        return Err(invalid(format!(
            "{} is not a valid object name (lowercase RFC 1123 subdomain: letters, digits, '-' and '.')",
            quoted(value)
        )));
    }
    Ok(())
}

/// One label of an RFC 1123 subdomain, of any length: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
fn subdomain_label(label: &str) -> bool {
    !label.is_empty()
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// An IP address to certify, as `spec.ipAddresses` accepts it (the apiserver's CEL `isIP`): IPv4 in dotted
/// decimal without leading zeros, or IPv6, without a zone and not IPv4-mapped.
pub fn ip_address(value: &str) -> Result<IpAddr, Invalid> {
    let ip: IpAddr = value.parse().map_err(|_| invalid(format!("{} is not an IPv4 or IPv6 address", quoted(value))))?;
    if let IpAddr::V6(v6) = ip
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(invalid(format!("{} is an IPv4-mapped IPv6 address: write the IPv4 address", quoted(value))));
    }
    Ok(ip)
}

/// A certificate lifetime, as `spec.duration` accepts it: a Go duration from [`MIN_LIFETIME`] to
/// [`MAX_DURATION`].
pub fn lifetime(value: &str) -> Result<GoDuration, Invalid> {
    let duration = duration(value)?;
    if duration < MIN_LIFETIME {
        return Err(invalid(format!("{value} is shorter than the minimum of {MIN_LIFETIME_TEXT}")));
    }
    Ok(GoDuration::from(duration))
}

/// How long before expiry to renew, as `spec.renewBefore` accepts it: a positive Go duration of at most
/// [`MAX_DURATION`].
pub fn renew_before(value: &str) -> Result<GoDuration, Invalid> {
    let duration = duration(value)?;
    if duration.is_zero() {
        return Err(invalid(format!("{value} is not a positive duration such as 8h")));
    }
    Ok(GoDuration::from(duration))
}

fn duration(value: &str) -> Result<Duration, Invalid> {
    let duration = parse_go_duration(value)
        .map_err(|e| invalid(format!("{} is not a duration such as 24h or 90m: {e}", quoted(value))))?;
    debug_assert!(duration <= MAX_DURATION);
    Ok(duration)
}

/// A key algorithm, spelled as `spec.privateKey.algorithm` spells it: `ECDSA`, `RSA` or `Ed25519`.
pub fn key_algorithm(value: &str) -> Result<KeyAlgorithm, Invalid> {
    serde_json::from_value(serde_json::Value::String(value.to_string()))
        .map_err(|_| invalid(format!("{} is not one of ECDSA, RSA, Ed25519", quoted(value))))
}

/// A key usage, spelled as `spec.usages` spells it, for example `server auth` or `digital signature`.
pub fn key_usage(value: &str) -> Result<KeyUsage, Invalid> {
    serde_json::from_value(serde_json::Value::String(value.to_string())).map_err(|_| {
        invalid(format!("{} is not a usage (for example: server auth, client auth, digital signature)", quoted(value)))
    })
}

/// The longest ACME profile name accepted (`spec.profile`, `spec.acme.profile`, `kacme.dev/profile`).
pub const MAX_PROFILE_LENGTH: usize = 64;
/// An ACME profile name: printable ASCII without spaces (CAs name them like `shortlived` or `tlsserver`).
pub const PROFILE_PATTERN: &str = "^[!-~]+$";

/// An ACME profile name, as `spec.profile` accepts it: 1 to [`MAX_PROFILE_LENGTH`] printable ASCII
/// characters, no spaces ([`PROFILE_PATTERN`]).
pub fn profile(value: &str) -> Result<String, Invalid> {
    if value.is_empty() || value.len() > MAX_PROFILE_LENGTH || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(format!(
            "{} is not a profile name (1 to {MAX_PROFILE_LENGTH} printable ASCII characters, no spaces)",
            quoted(value)
        )));
    }
    Ok(value.to_string())
}

/// The schema of a profile field (`spec.profile`, `spec.acme.profile`): the rules of [`profile`].
pub(crate) fn profile_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_PROFILE_LENGTH,
        "pattern": PROFILE_PATTERN,
    })
}

/// The schema of a lifetime field (`spec.duration`, `spec.policy.maxDuration`), `field` naming it in the message:
/// the grammar of [`GO_DURATION_PATTERN`] and the bounds of [`lifetime`].
pub(crate) fn lifetime_schema(field: &str) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "maxLength": super::duration::MAX_DURATION_LENGTH,
        "pattern": super::duration::GO_DURATION_PATTERN,
        "x-kubernetes-validations": [
            {
                "rule": lifetime_rule(),
                "message": format!(
                    "{field} must be at least {MIN_LIFETIME_TEXT} and at most {MAX_DURATION_TEXT} (100 years)"
                )
            }
        ]
    })
}

/// The CEL rule of a lifetime field, from the same constants as [`lifetime`].
pub(crate) fn lifetime_rule() -> String {
    format!("duration(self) >= duration('{MIN_LIFETIME_TEXT}') && duration(self) <= duration('{MAX_DURATION_TEXT}')")
}

/// The CEL rule of a renewBefore field, from the same constants as [`renew_before`].
pub(crate) fn renew_before_rule() -> String {
    format!("duration(self) > duration('0s') && duration(self) <= duration('{MAX_DURATION_TEXT}')")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_quote_a_bounded_part_of_a_huge_value() {
        let huge = "9".repeat(200 * 1024);
        let message = lifetime(&huge).unwrap_err().0;
        assert!(message.len() < 300, "{message}");
        assert!(message.contains("(204800 bytes)"), "{message}");
        assert_eq!(quoted("24h"), "\"24h\"");
        assert_eq!(quoted(&"é".repeat(100)).chars().filter(|c| *c == 'é').count(), 80);
    }

    #[test]
    fn the_rule_texts_say_the_same_as_the_constants() {
        assert_eq!(parse_go_duration(MIN_LIFETIME_TEXT), Ok(MIN_LIFETIME));
        assert_eq!(parse_go_duration(MAX_DURATION_TEXT), Ok(MAX_DURATION));
    }

    #[test]
    fn dns_names_are_lowercase_labels_without_wildcards_or_trailing_dots() {
        let long_label = "a".repeat(63);
        let too_long_label = "a".repeat(64);
        let long_name = format!("{long_label}.{long_label}.{long_label}.{}", "a".repeat(61));
        assert_eq!(long_name.len(), 253);
        for ok in ["a", "web.apps.svc", "x-1.example.test", "1.2.3.4.example", "0x1", long_label.as_str(), &long_name] {
            assert_eq!(dns_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Web.example",
            "web.example.",
            "*.example",
            "-a.example",
            "a-.example",
            "a..b",
            "a_b",
            "é.example",
            "10.0.0.1",
            "123",
            "web.1",
            too_long_label.as_str(),
            &format!("{long_name}a"),
        ] {
            assert!(dns_name(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(dns_name("*.example").unwrap_err().0.contains("wildcard"));
    }

    #[test]
    fn object_names_are_subdomains_whose_labels_may_be_long() {
        assert_eq!(object_name(&"a".repeat(64)), Ok(()));
        assert_eq!(object_name("corp-ca.v2"), Ok(()));
        for bad in ["", "CA", "ca_1", "ca.", ".ca", "-ca", &"a".repeat(254)] {
            assert!(object_name(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn ip_addresses_are_read_as_the_apiservers_is_ip_reads_them() {
        for ok in ["10.0.0.1", "::1", "2001:DB8::1", "fe80::1", "::", "0.0.0.0", "::1.2.3.4"] {
            assert!(ip_address(ok).is_ok(), "{ok} was refused");
        }
        for bad in ["", "010.0.0.1", "10.0.0", "10.0.0.1/32", "fe80::1%eth0", "::ffff:10.0.0.1", "web", " 10.0.0.1"] {
            assert!(ip_address(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn durations_are_bounded_as_the_schema_bounds_them() {
        assert_eq!(lifetime("5m").map(Duration::from), Ok(MIN_LIFETIME));
        assert_eq!(lifetime("876000h").map(Duration::from), Ok(MAX_DURATION));
        assert!(lifetime("4m59s").unwrap_err().0.contains("shorter than the minimum of 5m"));
        assert!(lifetime("876000h1ns").is_err());
        assert!(renew_before("0s").unwrap_err().0.contains("not a positive duration"));
        assert!(renew_before("1ns").is_ok());
        assert!(renew_before("-8h").is_err());
    }

    #[test]
    fn algorithms_and_usages_are_spelled_as_the_api_spells_them() {
        assert_eq!(key_algorithm("ECDSA"), Ok(KeyAlgorithm::Ecdsa));
        assert_eq!(key_algorithm("Ed25519"), Ok(KeyAlgorithm::Ed25519));
        for bad in ["ecdsa", "rsa", "ED25519", "DSA", ""] {
            assert!(key_algorithm(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(key_usage("server auth"), Ok(KeyUsage::ServerAuth));
        for bad in ["Server Auth", "serverAuth", "server  auth", ""] {
            assert!(key_usage(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
