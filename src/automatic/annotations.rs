//! The annotations users put on Ingresses and pod templates, and their parsing into plain values.
//!
//! Parsing never panics and every error names the annotation and the problem, because the admission
//! webhook returns these messages to `kubectl` as they are.

use crate::api::duration::{GoDuration, parse_go_duration};
use crate::api::{IssuerKind, IssuerRef, KeyAlgorithm, KeyUsage};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Ingress and pod template annotation: the Issuer (in the same namespace) that signs the certificates.
pub const ANNOTATION_ISSUER: &str = "kacme.dev/issuer";
/// Ingress and pod template annotation: the ClusterIssuer that signs the certificates.
pub const ANNOTATION_CLUSTER_ISSUER: &str = "kacme.dev/cluster-issuer";
/// Optional: the requested certificate lifetime, a Go duration such as `24h`.
pub const ANNOTATION_DURATION: &str = "kacme.dev/duration";
/// Optional: renew this long before expiry, a Go duration such as `8h`.
pub const ANNOTATION_RENEW_BEFORE: &str = "kacme.dev/renew-before";
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

/// The shortest lifetime a Certificate may ask for (the CRD's bound).
const MIN_DURATION: std::time::Duration = std::time::Duration::from_secs(300);
/// Most names one workload certificate may carry.
const MAX_NAMES: usize = 100;

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
    let duration = parse_duration(annotations, ANNOTATION_DURATION)?;
    if let Some(d) = duration
        && std::time::Duration::from(d) < MIN_DURATION
    {
        return Err(problem(ANNOTATION_DURATION, format!("{d} is shorter than the minimum of 5m")));
    }
    let renew_before = parse_duration(annotations, ANNOTATION_RENEW_BEFORE)?;
    if let (Some(d), Some(r)) = (duration, renew_before)
        && std::time::Duration::from(r) >= std::time::Duration::from(d)
    {
        return Err(problem(ANNOTATION_RENEW_BEFORE, format!("{r} must be shorter than {ANNOTATION_DURATION} ({d})")));
    }
    let algorithm = match annotations.get(ANNOTATION_PRIVATE_KEY_ALGORITHM).map(|s| s.trim()) {
        None => None,
        Some(value) => Some(match value.to_ascii_lowercase().as_str() {
            "ecdsa" => KeyAlgorithm::Ecdsa,
            "rsa" => KeyAlgorithm::Rsa,
            "ed25519" => KeyAlgorithm::Ed25519,
            _ => {
                return Err(problem(
                    ANNOTATION_PRIVATE_KEY_ALGORITHM,
                    format!("{value:?} is not one of ECDSA, RSA, Ed25519"),
                ));
            }
        }),
    };
    Ok(Some(IssuanceAnnotations { issuer_ref, duration, renew_before, algorithm }))
}

fn issuer_name(annotation: &'static str, name: &str) -> Result<String, AnnotationError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(problem(annotation, "the issuer name is empty"));
    }
    if !is_dns_name(name) {
        return Err(problem(annotation, format!("{name:?} is not a valid issuer name (lowercase RFC 1123 subdomain)")));
    }
    Ok(name.to_string())
}

fn parse_duration(
    annotations: &BTreeMap<String, String>,
    annotation: &'static str,
) -> Result<Option<GoDuration>, AnnotationError> {
    let Some(value) = annotations.get(annotation) else { return Ok(None) };
    parse_go_duration(value.trim())
        .map(|duration| Some(GoDuration::from(duration)))
        .map_err(|e| problem(annotation, format!("{value:?} is not a duration such as 24h or 90m: {e}")))
}

/// The usages of `kacme.dev/usages`, sorted and deduplicated; empty when the annotation is absent.
pub fn parse_usages(annotations: &BTreeMap<String, String>) -> Result<Vec<KeyUsage>, AnnotationError> {
    let Some(value) = annotations.get(ANNOTATION_USAGES) else { return Ok(Vec::new()) };
    let mut usages = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let usage: KeyUsage =
            serde_json::from_value(serde_json::Value::String(item.to_ascii_lowercase())).map_err(|_| {
                problem(
                    ANNOTATION_USAGES,
                    format!("{item:?} is not a usage (for example: server auth, client auth, digital signature)"),
                )
            })?;
        usages.push(usage);
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
        if let Ok(ip) = item.parse::<IpAddr>() {
            let ip = ip.to_string();
            if !names.ip_addresses.contains(&ip) {
                names.ip_addresses.push(ip);
            }
            continue;
        }
        let name = item.trim_end_matches('.').to_ascii_lowercase();
        if name.starts_with("*.") {
            return Err(problem(
                ANNOTATION_NAMES,
                format!("{item:?} is a wildcard; wildcards need DNS-01 validation, which kacme does not do"),
            ));
        }
        if !is_dns_name(&name) {
            return Err(problem(ANNOTATION_NAMES, format!("{item:?} is neither a DNS name nor an IP address")));
        }
        if !names.dns_names.contains(&name) {
            names.dns_names.push(name);
        }
    }
    let count = names.dns_names.len() + names.ip_addresses.len();
    if count == 0 {
        return Err(problem(ANNOTATION_NAMES, "no names given (expected a comma-separated list of DNS names or IPs)"));
    }
    if count > MAX_NAMES {
        return Err(problem(ANNOTATION_NAMES, format!("{count} names; at most {MAX_NAMES} are allowed")));
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

/// Whether `name` is a lowercase DNS name: dot-separated labels of 1 to 63 letters, digits and hyphens,
/// not beginning or ending with a hyphen, 253 characters at most.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
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
                    (ANNOTATION_PRIVATE_KEY_ALGORITHM, "rsa"),
                ],
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
        let names = parse_names(" Web.Apps.Internal., 10.0.0.1,web.apps.internal,::1 ,").unwrap();
        assert_eq!(names.dns_names, ["web.apps.internal"]);
        assert_eq!(names.ip_addresses, ["10.0.0.1", "::1"]);
    }

    #[test]
    fn names_that_cannot_be_certified_are_refused_with_the_reason() {
        for (value, needle) in
            [("", "no names"), ("*.apps.internal", "wildcard"), ("web_1.internal", "neither"), ("-a.b", "neither")]
        {
            let error = parse_names(value).unwrap_err();
            assert_eq!(error.annotation, ANNOTATION_NAMES);
            assert!(error.problem.contains(needle), "{value:?}: {error}");
        }
    }

    #[test]
    fn usages_are_parsed_sorted_and_unknown_ones_refused() {
        let usages = parse_usages(&map(&[(ANNOTATION_USAGES, "client auth, Server Auth,client auth")])).unwrap();
        assert_eq!(
            usages,
            [KeyUsage::ServerAuth, KeyUsage::ClientAuth]
                .iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
        assert_eq!(parse_usages(&map(&[(ANNOTATION_USAGES, "flying")])).unwrap_err().annotation, ANNOTATION_USAGES);
        assert!(parse_usages(&map(&[])).unwrap().is_empty());
    }
}
