//! Issuer policy: may this namespace ask this issuer for these names, addresses, lifetime and usages?
//!
//! One pure check serves the three ways of asking (a Certificate, an annotated Ingress, an annotated Pod), so
//! that none of them can obtain what another refuses. It runs before any ACME request and before any solver
//! object exists. Refusals name the value and the rule, because they are shown as they are to the tenant.

use crate::api::validation::quoted;
use crate::api::{Certificate, IssuerPolicy, KeyUsage};
use crate::pki::effective_usages;
use ipnet::IpNet;
use kube::core::{Selector, SelectorExt};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

/// Placeholder of a name template for the requesting namespace.
pub const NAMESPACE_PLACEHOLDER: &str = "{namespace}";
/// Placeholder of a name template for exactly one DNS label.
pub const LABEL_PLACEHOLDER: &str = "{label}";

/// What a namespace asks an issuer for.
#[derive(Debug, Clone, Copy)]
pub struct PolicyRequest<'a> {
    /// The requesting namespace.
    pub namespace: &'a str,
    /// Its labels, when the policy selects namespaces ([`needs_namespace_labels`]); `None` reads as no labels.
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
    /// The DNS names asked for.
    pub dns_names: &'a [String],
    /// The IP addresses asked for.
    pub ip_addresses: &'a [String],
    /// The lifetime asked for, if any (without one, the CA's default applies).
    pub duration: Option<Duration>,
    /// The usages the certificate will carry.
    pub usages: &'a BTreeSet<KeyUsage>,
}

/// A request outside the issuer's policy, and why: shown to the tenant with reason `NotPermitted`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotPermitted(pub String);

/// A policy kacme cannot apply, and why (an Issuer condition).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPolicy(pub String);

/// Whether checking `policy` needs the requesting namespace's labels.
pub fn needs_namespace_labels(policy: Option<&IssuerPolicy>) -> bool {
    policy.is_some_and(|p| p.namespace_selector.is_some())
}

/// Checks a policy before it is applied: a selector kube can read, well-formed templates and CIDRs.
pub fn validate_policy(policy: &IssuerPolicy) -> Result<(), InvalidPolicy> {
    if let Some(selector) = &policy.namespace_selector {
        Selector::try_from(selector.clone()).map_err(|e| InvalidPolicy(format!("policy.namespaceSelector: {e}")))?;
    }
    for template in policy.dns_names.iter().flatten() {
        for label in template.split('.') {
            if label.contains(LABEL_PLACEHOLDER) && label != LABEL_PLACEHOLDER {
                return Err(InvalidPolicy(format!(
                    "policy.dnsNames: {} uses {LABEL_PLACEHOLDER} inside a label; it must be a whole label",
                    quoted(template)
                )));
            }
        }
    }
    for cidr in policy.ip_addresses.iter().flatten() {
        cidr.parse::<IpNet>().map_err(|_| {
            InvalidPolicy(format!("policy.ipAddresses: {} is not a CIDR such as 10.0.0.0/8", quoted(cidr)))
        })?;
    }
    Ok(())
}

/// Whether `certificate` is within `policy` of `issuer`: the names, addresses, lifetime and usages (the
/// requested ones, or the defaults for its key algorithm) of its spec, from its namespace.
pub fn check_certificate(
    issuer: &str,
    policy: Option<&IssuerPolicy>,
    certificate: &Certificate,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> Result<(), NotPermitted> {
    let spec = &certificate.spec;
    let algorithm = spec.private_key.as_ref().and_then(|k| k.algorithm).unwrap_or_default();
    let usages = effective_usages(&spec.usages, algorithm);
    let request = PolicyRequest {
        namespace: certificate.metadata.namespace.as_deref().unwrap_or_default(),
        namespace_labels,
        dns_names: &spec.dns_names,
        ip_addresses: &spec.ip_addresses,
        duration: spec.duration.map(Duration::from),
        usages: &usages,
    };
    check_policy(issuer, policy, &request)
}

/// Whether `request` is within `policy` of `issuer` (for messages: `ClusterIssuer corp`). No policy permits
/// everything.
pub fn check_policy(issuer: &str, policy: Option<&IssuerPolicy>, request: &PolicyRequest) -> Result<(), NotPermitted> {
    let Some(policy) = policy else { return Ok(()) };
    let refuse = |message: String| Err(NotPermitted(message));
    if let Some(selector) = &policy.namespace_selector {
        let no_labels = BTreeMap::new();
        let labels = request.namespace_labels.unwrap_or(&no_labels);
        // A selector that cannot be read permits nobody (validate_policy reports it on the issuer).
        let selected = Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels));
        if !selected {
            return refuse(format!(
                "namespace {} may not use {issuer}: it is not selected by the issuer's policy.namespaceSelector",
                request.namespace
            ));
        }
    }
    if let Some(templates) = &policy.dns_names {
        for name in request.dns_names {
            if !templates.iter().any(|t| name_matches_template(name, t, request.namespace)) {
                let rule = if templates.is_empty() {
                    "policy.dnsNames is empty: no DNS names".to_string()
                } else {
                    format!("policy.dnsNames allows only {}", templates.join(", "))
                };
                return refuse(format!(
                    "{issuer} does not permit DNS name {} in namespace {}: {rule}",
                    quoted(name),
                    request.namespace
                ));
            }
        }
    }
    if let Some(cidrs) = &policy.ip_addresses {
        let networks: Vec<IpNet> = cidrs.iter().filter_map(|c| c.parse().ok()).collect();
        for address in request.ip_addresses {
            let inside = address.parse::<IpAddr>().is_ok_and(|ip| networks.iter().any(|n| n.contains(&ip)));
            if !inside {
                let rule = if cidrs.is_empty() {
                    "policy.ipAddresses is empty: no IP addresses".to_string()
                } else {
                    format!("policy.ipAddresses allows only {}", cidrs.join(", "))
                };
                return refuse(format!("{issuer} does not permit IP address {}: {rule}", quoted(address)));
            }
        }
    }
    if let (Some(max), Some(asked)) = (policy.max_duration, request.duration)
        && asked > Duration::from(max)
    {
        return refuse(format!(
            "{issuer} does not permit a lifetime of {}: policy.maxDuration is {}",
            written(asked),
            written(max.into())
        ));
    }
    if let Some(allowed) = &policy.usages {
        let allowed: BTreeSet<KeyUsage> = allowed.iter().copied().collect();
        if let Some(usage) = request.usages.iter().find(|u| !allowed.contains(u)) {
            let list: Vec<&str> = allowed.iter().map(|u| u.as_str()).collect();
            return refuse(format!(
                "{issuer} does not permit usage {:?}: policy.usages allows only {}",
                usage.as_str(),
                list.join(", ")
            ));
        }
    }
    Ok(())
}

/// Whether `name` matches `template` in `namespace`: label by label, `{label}` matches any one DNS label and
/// `{namespace}` stands for the namespace; anything else must be equal.
pub fn name_matches_template(name: &str, template: &str, namespace: &str) -> bool {
    let names: Vec<&str> = name.split('.').collect();
    let templates: Vec<&str> = template.split('.').collect();
    names.len() == templates.len()
        && names.iter().zip(&templates).all(|(label, pattern)| {
            !label.is_empty()
                && (*pattern == LABEL_PLACEHOLDER || *label == pattern.replace(NAMESPACE_PLACEHOLDER, namespace))
        })
}

/// A duration as a person writes it: `720h`, `90m`, `45s`.
fn written(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if duration.subsec_nanos() == 0 && seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if duration.subsec_nanos() == 0 && seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{duration:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn tenant_policy() -> IssuerPolicy {
        IssuerPolicy {
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "tenant".into(),
                    operator: "Exists".into(),
                    values: None,
                }]),
                match_labels: None,
            }),
            dns_names: Some(strings(&["{label}.{namespace}.svc", "{label}.{namespace}.svc.cluster.local"])),
            ip_addresses: Some(strings(&["10.20.0.0/16", "fd00:20::/32"])),
            max_duration: Some(Duration::from_secs(720 * 3600).into()),
            usages: Some(vec![
                KeyUsage::DigitalSignature,
                KeyUsage::KeyEncipherment,
                KeyUsage::ServerAuth,
                KeyUsage::ClientAuth,
            ]),
        }
    }

    #[test]
    fn templates_match_label_by_label_and_label_never_spans_a_dot() {
        // (name, template, namespace, matches)
        let cases = [
            ("api.team-a.svc", "{label}.{namespace}.svc", "team-a", true),
            ("api.team-b.svc", "{label}.{namespace}.svc", "team-a", false),
            ("x.api.team-a.svc", "{label}.{namespace}.svc", "team-a", false),
            ("team-a.svc", "{label}.{namespace}.svc", "team-a", false),
            ("api.team-a.svc.cluster.local", "{label}.{namespace}.svc.cluster.local", "team-a", true),
            ("team-a.apps.internal", "{namespace}.apps.internal", "team-a", true),
            ("web-team-a.apps.internal", "web-{namespace}.apps.internal", "team-a", true),
            ("web-team-b.apps.internal", "web-{namespace}.apps.internal", "team-a", false),
            ("exact.example.test", "exact.example.test", "team-a", true),
            // A namespace whose name is a prefix or suffix of another's gets only its own.
            ("api.team-ab.svc", "{label}.{namespace}.svc", "team-a", false),
            ("api..svc", "{label}..svc", "team-a", false),
        ];
        for (name, template, namespace, matches) in cases {
            assert_eq!(name_matches_template(name, template, namespace), matches, "{name} ~ {template} in {namespace}");
        }
    }

    #[test]
    fn requests_outside_the_policy_are_refused_naming_the_value_and_the_rule() {
        let policy = tenant_policy();
        let labels = BTreeMap::from([("tenant".to_string(), "a".to_string())]);
        let default_usages = BTreeSet::from([KeyUsage::DigitalSignature, KeyUsage::ServerAuth]);
        let ok = PolicyRequest {
            namespace: "team-a",
            namespace_labels: Some(&labels),
            dns_names: &strings(&["api.team-a.svc", "api.team-a.svc.cluster.local"]),
            ip_addresses: &strings(&["10.20.3.4"]),
            duration: Some(Duration::from_secs(24 * 3600)),
            usages: &default_usages,
        };
        assert_eq!(check_policy("ClusterIssuer corp", Some(&policy), &ok), Ok(()));
        assert_eq!(check_policy("ClusterIssuer corp", None, &ok), Ok(()), "no policy permits everything");

        let other_names = strings(&["api.team-b.svc"]);
        let other_address = strings(&["10.30.0.1"]);
        let mapped = strings(&["::ffff:10.20.0.1"]);
        let signing = BTreeSet::from([KeyUsage::CodeSigning]);
        let no_labels = BTreeMap::new();
        // (case, request, fragments of the message)
        let cases: Vec<(&str, PolicyRequest, &[&str])> = vec![
            (
                "a namespace outside the selector",
                PolicyRequest { namespace_labels: Some(&no_labels), ..ok },
                &["namespace team-a may not use ClusterIssuer corp", "namespaceSelector"],
            ),
            ("unknown labels", PolicyRequest { namespace_labels: None, ..ok }, &["namespaceSelector"]),
            (
                "another namespace's name",
                PolicyRequest { dns_names: &other_names, ..ok },
                &["\"api.team-b.svc\"", "{label}.{namespace}.svc"],
            ),
            (
                "an address outside the CIDRs",
                PolicyRequest { ip_addresses: &other_address, ..ok },
                &["\"10.30.0.1\"", "10.20.0.0/16"],
            ),
            ("an IPv4-mapped address", PolicyRequest { ip_addresses: &mapped, ..ok }, &["::ffff:10.20.0.1"]),
            (
                "a lifetime above the maximum",
                PolicyRequest { duration: Some(Duration::from_secs(721 * 3600)), ..ok },
                &["721h", "policy.maxDuration is 720h"],
            ),
            ("a usage not allowed", PolicyRequest { usages: &signing, ..ok }, &["\"code signing\"", "policy.usages"]),
        ];
        for (case, request, fragments) in cases {
            let refused = check_policy("ClusterIssuer corp", Some(&policy), &request).expect_err(case);
            for fragment in fragments {
                assert!(refused.0.contains(fragment), "{case}: {fragment:?} missing from {refused}");
            }
        }
    }

    #[test]
    fn empty_lists_permit_nothing_and_absent_ones_everything() {
        let policy = IssuerPolicy { dns_names: Some(vec![]), ip_addresses: None, ..IssuerPolicy::default() };
        let usages = BTreeSet::new();
        let names = strings(&["a.test"]);
        let addresses = strings(&["192.0.2.1"]);
        let request = PolicyRequest {
            namespace: "ns",
            namespace_labels: None,
            dns_names: &names,
            ip_addresses: &addresses,
            duration: None,
            usages: &usages,
        };
        let refused = check_policy("Issuer ns/ca", Some(&policy), &request).expect_err("no DNS names");
        assert!(refused.0.contains("policy.dnsNames is empty"), "{refused}");
        assert_eq!(check_policy("Issuer ns/ca", Some(&policy), &PolicyRequest { dns_names: &[], ..request }), Ok(()));
    }

    #[test]
    fn policies_kacme_cannot_apply_are_reported() {
        assert_eq!(validate_policy(&tenant_policy()), Ok(()));
        let partial = IssuerPolicy { dns_names: Some(strings(&["web-{label}.apps.test"])), ..IssuerPolicy::default() };
        assert!(validate_policy(&partial).unwrap_err().0.contains("whole label"));
        let cidr = IssuerPolicy { ip_addresses: Some(strings(&["10.0.0.0/33"])), ..IssuerPolicy::default() };
        assert!(validate_policy(&cidr).unwrap_err().0.contains("not a CIDR"));
        let selector = IssuerPolicy {
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "tenant".into(),
                    operator: "Sometimes".into(),
                    values: None,
                }]),
                match_labels: None,
            }),
            ..IssuerPolicy::default()
        };
        assert!(validate_policy(&selector).unwrap_err().0.contains("namespaceSelector"));
    }
}
