//! The annotations users put on Ingresses and pod templates, and their parsing into plain values.
//!
//! Parsing never panics and every error names the annotation and the problem, because the admission
//! webhook returns these messages to `kubectl` as they are. Each value is checked by the validator of
//! the Certificate field it becomes ([`crate::api::validation`]), so an annotation accepts exactly what the
//! field accepts; the annotations' own syntax is only that surrounding whitespace is ignored and that lists
//! are comma-separated (duplicates merged).

use crate::api::duration::GoDuration;
use crate::api::validation::{self, Invalid, MAX_NAMES};
use crate::api::{IssuerKind, IssuerRef, KeyAlgorithm, KeyUsage};
use std::collections::BTreeMap;

pub use crate::api::validation::is_dns_name;

/// Ingress and pod template annotation: the Issuer (in the same namespace) that signs the certificates.
pub const ANNOTATION_ISSUER: &str = "kacme.dev/issuer";
/// Ingress and pod template annotation: the ClusterIssuer that signs the certificates.
pub const ANNOTATION_CLUSTER_ISSUER: &str = "kacme.dev/cluster-issuer";
/// Optional: the requested certificate lifetime, a Go duration such as `24h`.
pub const ANNOTATION_DURATION: &str = "kacme.dev/duration";
/// Optional: renew this long before expiry, a Go duration such as `8h`.
pub const ANNOTATION_RENEW_BEFORE: &str = "kacme.dev/renew-before";
/// Optional: the ACME profile to ask the CA for (as the Certificate's `spec.profile`).
pub const ANNOTATION_PROFILE: &str = "kacme.dev/profile";
/// Optional: `ECDSA` (default), `RSA` or `Ed25519`.
pub const ANNOTATION_PRIVATE_KEY_ALGORITHM: &str = "kacme.dev/private-key-algorithm";
/// Optional, Ingresses only: comma-separated usages as in cert-manager (`server auth, client auth`).
pub const ANNOTATION_USAGES: &str = "kacme.dev/usages";
/// Pod template annotation: comma-separated DNS names and IP addresses to certify.
pub const ANNOTATION_NAMES: &str = "kacme.dev/names";
/// Optional pod template annotation: comma-separated names of the containers that get the mount
/// (default: every container).
pub const ANNOTATION_CONTAINERS: &str = "kacme.dev/containers";
/// Label the admission webhook puts on Pods that get a workload certificate: the workload's name.
pub const LABEL_WORKLOAD: &str = "kacme.dev/workload";
/// Label on Certificates kacme creates for an Ingress or a workload: `ingress` or `workload`.
pub const LABEL_SOURCE: &str = "kacme.dev/source";
/// Value of [`LABEL_SOURCE`] on Certificates created for Ingresses.
pub const SOURCE_INGRESS: &str = "ingress";
/// Value of [`LABEL_SOURCE`] on Certificates created for workloads.
pub const SOURCE_WORKLOAD: &str = "workload";

/// An annotation kacme cannot use, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {problem}")]
pub struct AnnotationError {
    /// The annotation's key, for example `kacme.dev/names`.
    pub annotation: &'static str,
    /// What is wrong with it, in plain words.
    pub problem: String,
}

fn problem(annotation: &'static str, problem: impl Into<String>) -> AnnotationError {
    AnnotationError { annotation, problem: problem.into() }
}

/// What the issuance annotations ask for, common to Ingresses and workloads.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuanceAnnotations {
    /// The issuer named by `kacme.dev/issuer` or `kacme.dev/cluster-issuer`.
    pub issuer_ref: IssuerRef,
    /// `kacme.dev/duration`.
    pub duration: Option<GoDuration>,
    /// `kacme.dev/renew-before`.
    pub renew_before: Option<GoDuration>,
    /// `kacme.dev/private-key-algorithm`.
    pub algorithm: Option<KeyAlgorithm>,
    /// `kacme.dev/profile`.
    pub profile: Option<String>,
}

/// The issuer and options of `annotations`; `None` when neither issuer annotation is present.
pub fn parse_issuance(annotations: &BTreeMap<String, String>) -> Result<Option<IssuanceAnnotations>, AnnotationError> {
    let issuer = annotations.get(ANNOTATION_ISSUER);
    let cluster_issuer = annotations.get(ANNOTATION_CLUSTER_ISSUER);
    let issuer_ref = match (issuer, cluster_issuer) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(problem(
                ANNOTATION_CLUSTER_ISSUER,
                format!("set either {ANNOTATION_ISSUER} or {ANNOTATION_CLUSTER_ISSUER}, not both"),
            ));
        }
        (Some(name), None) => IssuerRef { name: issuer_name(ANNOTATION_ISSUER, name)?, kind: IssuerKind::Issuer },
        (None, Some(name)) => {
            IssuerRef { name: issuer_name(ANNOTATION_CLUSTER_ISSUER, name)?, kind: IssuerKind::ClusterIssuer }
        }
    };
    let duration = optional(annotations, ANNOTATION_DURATION, validation::lifetime)?;
    let renew_before = optional(annotations, ANNOTATION_RENEW_BEFORE, validation::renew_before)?;
    if let (Some(d), Some(r)) = (duration, renew_before)
        && r >= d
    {
        return Err(problem(ANNOTATION_RENEW_BEFORE, format!("{r} must be shorter than {ANNOTATION_DURATION} ({d})")));
    }
    let algorithm = optional(annotations, ANNOTATION_PRIVATE_KEY_ALGORITHM, validation::key_algorithm)?;
    let profile = optional(annotations, ANNOTATION_PROFILE, validation::profile)?;
    Ok(Some(IssuanceAnnotations { issuer_ref, duration, renew_before, algorithm, profile }))
}

fn issuer_name(annotation: &'static str, name: &str) -> Result<String, AnnotationError> {
    let name = name.trim();
    validation::object_name(name).map_err(|Invalid(e)| problem(annotation, e))?;
    Ok(name.to_string())
}

/// The value of `annotation` checked by `validate`, when the annotation is present.
fn optional<T>(
    annotations: &BTreeMap<String, String>,
    annotation: &'static str,
    validate: impl Fn(&str) -> Result<T, Invalid>,
) -> Result<Option<T>, AnnotationError> {
    let Some(value) = annotations.get(annotation) else { return Ok(None) };
    validate(value.trim()).map(Some).map_err(|Invalid(e)| problem(annotation, e))
}

/// The usages of `kacme.dev/usages`, sorted and deduplicated; empty when the annotation is absent.
pub fn parse_usages(annotations: &BTreeMap<String, String>) -> Result<Vec<KeyUsage>, AnnotationError> {
    let Some(value) = annotations.get(ANNOTATION_USAGES) else { return Ok(Vec::new()) };
    let mut usages = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        usages.push(validation::key_usage(item).map_err(|Invalid(e)| problem(ANNOTATION_USAGES, e))?);
    }
    usages.sort();
    usages.dedup();
    Ok(usages)
}

/// The DNS names and IP addresses of `kacme.dev/names`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// Lowercase DNS names, in the annotation's order, without duplicates.
    pub dns_names: Vec<String>,
    /// IP addresses in canonical form, in the annotation's order, without duplicates.
    pub ip_addresses: Vec<String>,
}

/// Parses `kacme.dev/names`: comma-separated DNS names and IP addresses, at least one.
pub fn parse_names(value: &str) -> Result<Names, AnnotationError> {
    let mut names = Names::default();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        // An item is an address exactly when spec.ipAddresses would take it, else a name exactly when
        // spec.dnsNames would (the two never both do); the error is the one of the field it looks meant for.
        let as_address = validation::ip_address(item);
        if let Ok(ip) = as_address {
            let ip = ip.to_string();
            if !names.ip_addresses.contains(&ip) {
                names.ip_addresses.push(ip);
            }
            continue;
        }
        if let Err(Invalid(as_name)) = validation::dns_name(item) {
            let looks_like_an_address = item.contains(':') || item.bytes().all(|b| b.is_ascii_digit() || b == b'.');
            let problem_text = match as_address {
                Err(Invalid(as_address)) if looks_like_an_address => as_address,
                _ => as_name,
            };
            return Err(problem(ANNOTATION_NAMES, problem_text));
        }
        if !names.dns_names.iter().any(|n| n == item) {
            names.dns_names.push(item.to_string());
        }
        // Stop at once: the duplicate checks above cost the square of the names kept.
        if names.dns_names.len() + names.ip_addresses.len() > MAX_NAMES {
            break;
        }
    }
    let count = names.dns_names.len() + names.ip_addresses.len();
    if count == 0 {
        return Err(problem(ANNOTATION_NAMES, "no names given (expected a comma-separated list of DNS names or IPs)"));
    }
    if count > MAX_NAMES {
        return Err(problem(ANNOTATION_NAMES, format!("more than {MAX_NAMES} names; at most {MAX_NAMES} are allowed")));
    }
    Ok(names)
}

/// Parses `kacme.dev/containers`: comma-separated container names, at least one.
pub fn parse_containers(value: &str) -> Result<Vec<String>, AnnotationError> {
    let mut containers: Vec<String> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !containers.iter().any(|c| c == item) {
            containers.push(item.to_string());
        }
    }
    if containers.is_empty() {
        return Err(problem(ANNOTATION_CONTAINERS, "no container names given"));
    }
    Ok(containers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn issuance_annotations_parse_or_name_the_annotation_at_fault() {
        let cases: &[(&str, &[(&str, &str)], Result<Option<IssuerKind>, &str>)] = &[
            ("no issuer means nothing to do", &[("other", "x")], Ok(None)),
            ("an issuer", &[(ANNOTATION_ISSUER, "ca")], Ok(Some(IssuerKind::Issuer))),
            ("a cluster issuer", &[(ANNOTATION_CLUSTER_ISSUER, "corp")], Ok(Some(IssuerKind::ClusterIssuer))),
            (
                "both issuers",
                &[(ANNOTATION_ISSUER, "a"), (ANNOTATION_CLUSTER_ISSUER, "b")],
                Err(ANNOTATION_CLUSTER_ISSUER),
            ),
            ("an empty issuer", &[(ANNOTATION_ISSUER, " ")], Err(ANNOTATION_ISSUER)),
            ("an uppercase issuer", &[(ANNOTATION_ISSUER, "CA")], Err(ANNOTATION_ISSUER)),
            ("a bad duration", &[(ANNOTATION_ISSUER, "ca"), (ANNOTATION_DURATION, "a day")], Err(ANNOTATION_DURATION)),
            // kube's own parser panics on these three: the operator must refuse them, never crash.
            ("an exponent", &[(ANNOTATION_ISSUER, "ca"), (ANNOTATION_DURATION, "1e300h")], Err(ANNOTATION_DURATION)),
            (
                "an infinite duration",
                &[(ANNOTATION_ISSUER, "ca"), (ANNOTATION_DURATION, "infh")],
                Err(ANNOTATION_DURATION),
            ),
            (
                "a duration beyond range",
                &[(ANNOTATION_ISSUER, "ca"), (ANNOTATION_RENEW_BEFORE, "99999999999999999999999h")],
                Err(ANNOTATION_RENEW_BEFORE),
            ),
            (
                "a negative renew-before",
                &[(ANNOTATION_ISSUER, "ca"), (ANNOTATION_RENEW_BEFORE, "-8h")],
                Err(ANNOTATION_RENEW_BEFORE),
            ),
            (
                "a too short duration",
                &[(ANNOTATION_ISSUER, "ca"), (ANNOTATION_DURATION, "1m")],
                Err(ANNOTATION_DURATION),
            ),
            (
                "renew-before not shorter than duration",
                &[(ANNOTATION_ISSUER, "ca"), (ANNOTATION_DURATION, "1h"), (ANNOTATION_RENEW_BEFORE, "2h")],
                Err(ANNOTATION_RENEW_BEFORE),
            ),
            (
                "an unknown algorithm",
                &[(ANNOTATION_ISSUER, "ca"), (ANNOTATION_PRIVATE_KEY_ALGORITHM, "dsa")],
                Err(ANNOTATION_PRIVATE_KEY_ALGORITHM),
            ),
            (
                "all options",
                &[
                    (ANNOTATION_ISSUER, "ca"),
                    (ANNOTATION_DURATION, "24h"),
                    (ANNOTATION_RENEW_BEFORE, "8h"),
                    (ANNOTATION_PRIVATE_KEY_ALGORITHM, "RSA"),
                ],
                Ok(Some(IssuerKind::Issuer)),
            ),
            // The annotations accept exactly what the Certificate fields accept, spelled the same way.
            (
                "an algorithm spelled otherwise than in spec.privateKey.algorithm",
                &[(ANNOTATION_ISSUER, "ca"), (ANNOTATION_PRIVATE_KEY_ALGORITHM, "rsa")],
                Err(ANNOTATION_PRIVATE_KEY_ALGORITHM),
            ),
            (
                "a zero renew-before",
                &[(ANNOTATION_ISSUER, "ca"), (ANNOTATION_RENEW_BEFORE, "0s")],
                Err(ANNOTATION_RENEW_BEFORE),
            ),
            (
                "a duration over 100 years",
                &[(ANNOTATION_ISSUER, "ca"), (ANNOTATION_DURATION, "876001h")],
                Err(ANNOTATION_DURATION),
            ),
            (
                "an issuer name with a label over 63 characters, as Kubernetes allows",
                &[(ANNOTATION_ISSUER, "a-very-long-issuer-name-that-is-still-a-valid-kubernetes-object-name")],
                Ok(Some(IssuerKind::Issuer)),
            ),
        ];
        for (case, pairs, expected) in cases {
            let got = parse_issuance(&map(pairs));
            match (got, expected) {
                (Ok(got), Ok(kind)) => assert_eq!(got.map(|g| g.issuer_ref.kind), *kind, "{case}"),
                (Err(e), Err(annotation)) => {
                    assert_eq!(e.annotation, *annotation, "{case}");
                    assert!(e.to_string().starts_with(&format!("annotation {annotation}: ")), "{case}: {e}");
                }
                (got, _) => panic!("{case}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn names_split_into_dns_names_and_ip_addresses_without_duplicates() {
        let names =
            parse_names(" web.apps.internal, 10.0.0.1,web.apps.internal,::1 , 2001:DB8::1,2001:db8::1").unwrap();
        assert_eq!(names.dns_names, ["web.apps.internal"]);
        assert_eq!(names.ip_addresses, ["10.0.0.1", "::1", "2001:db8::1"]);
    }

    #[test]
    fn names_that_cannot_be_certified_are_refused_with_the_reason() {
        for (value, needle) in [
            ("", "no names"),
            ("*.apps.internal", "wildcard"),
            ("web_1.internal", "not a DNS name"),
            ("-a.b", "not a DNS name"),
            // As in spec.dnsNames: lowercase, no trailing dot.
            ("Web.apps.internal", "not a DNS name"),
            ("web.apps.internal.", "not a DNS name"),
            ("010.0.0.1", "not an IPv4 or IPv6 address"),
            ("::ffff:10.0.0.1", "IPv4-mapped"),
            ("fe80::1%eth0", "not an IPv4 or IPv6 address"),
        ] {
            let error = parse_names(value).unwrap_err();
            assert_eq!(error.annotation, ANNOTATION_NAMES);
            assert!(error.problem.contains(needle), "{value:?}: {error}");
        }
    }

    #[test]
    fn usages_are_parsed_sorted_and_unknown_ones_refused() {
        let usages = parse_usages(&map(&[(ANNOTATION_USAGES, "client auth, server auth,client auth")])).unwrap();
        assert_eq!(
            usages,
            [KeyUsage::ServerAuth, KeyUsage::ClientAuth]
                .iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
        for bad in ["flying", "Server Auth", "serverAuth"] {
            assert_eq!(parse_usages(&map(&[(ANNOTATION_USAGES, bad)])).unwrap_err().annotation, ANNOTATION_USAGES);
        }
        assert!(parse_usages(&map(&[])).unwrap().is_empty());
    }
}
