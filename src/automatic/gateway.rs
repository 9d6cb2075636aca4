//! The Certificates an annotated Gateway (or XListenerSet) asks for: one per Secret that its TLS-terminating
//! listeners name in `tls.certificateRefs`, with the listeners' hostnames.
//!
//! A Secret in the Gateway's own namespace gets a Certificate controlled by the Gateway (deleted with it by
//! garbage collection). A Secret in another namespace is used only when a ReferenceGrant in that namespace
//! lets the Gateway's namespace refer to it, as the Gateway API requires of its controllers; its Certificate
//! lives in the Secret's namespace (where its issuer is named, and where the tenancy policy is checked), and
//! since an owner reference cannot cross namespaces it records the Gateway's UID in a label instead.

use super::annotations::{
    AnnotationError, IssuanceAnnotations, LABEL_SOURCE, is_dns_name, parse_issuance, parse_usages,
};
use super::certificate::{build_certificate, spec_from_annotations};
use crate::api::validation::{self, Invalid, MAX_NAMES, quoted};
use crate::api::{Certificate, KeyUsage};
use crate::gateway_api::{Listener, ReferenceGrant, SecretObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Value of [`LABEL_SOURCE`] on Certificates created for Gateways.
pub const SOURCE_GATEWAY: &str = "gateway";
/// Value of [`LABEL_SOURCE`] on Certificates created for XListenerSets.
pub const SOURCE_LISTENER_SET: &str = "listenerset";
/// Label on the Certificates of a Gateway or XListenerSet: the UID of the object that asked for them (the
/// only link for a Certificate in another namespace, which cannot have an owner reference).
pub const LABEL_OWNER_UID: &str = "kacme.dev/owner-uid";
/// Annotation on those Certificates: `<Kind> <namespace>/<name>` of the object that asked for them.
pub const ANNOTATION_OWNER: &str = "kacme.dev/owner";

/// The object whose listeners ask for Certificates: a Gateway or an XListenerSet.
#[derive(Debug, Clone)]
pub struct ListenerOwner<'a> {
    /// `Gateway` or `XListenerSet`.
    pub kind: &'a str,
    /// Its API group (what a ReferenceGrant's `from` names).
    pub group: &'a str,
    /// [`SOURCE_GATEWAY`] or [`SOURCE_LISTENER_SET`].
    pub source: &'a str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its annotations.
    pub annotations: &'a BTreeMap<String, String>,
    /// Its listeners.
    pub listeners: &'a [Listener],
    /// The controller owner reference of its Certificates in its own namespace (None before it has a uid).
    pub owner_reference: Option<OwnerReference>,
}

/// What a Gateway asks for.
#[derive(Debug, Clone, Default)]
pub struct ListenerCertificates {
    /// One Certificate per Secret that TLS-terminating listeners name (in the Secret's namespace).
    pub certificates: Vec<Certificate>,
    /// Listeners or references that cannot become a Certificate, and why (reported as Events).
    pub skipped: Vec<String>,
}

/// The Certificates of `owner`: none unless it carries `kacme.dev/issuer` or `kacme.dev/cluster-issuer`.
/// Listeners with protocol `HTTPS`, or `TLS` with mode `Terminate`, and a hostname, count; each Secret their
/// `certificateRefs` name becomes a Certificate named after the Secret with the hostnames of every listener
/// naming it. `grants` are the ReferenceGrants of the cluster (only those in a referred namespace matter).
pub fn desired_listener_certificates(
    owner: &ListenerOwner,
    grants: &[&ReferenceGrant],
) -> Result<ListenerCertificates, AnnotationError> {
    let Some(issuance) = parse_issuance(owner.annotations)? else { return Ok(ListenerCertificates::default()) };
    let usages = parse_usages(owner.annotations)?;
    let mut out = ListenerCertificates::default();
    let Some(owner_reference) = owner.owner_reference.clone() else {
        out.skipped.push(format!("the {} has no uid yet", owner.kind));
        return Ok(out);
    };
    // (namespace, Secret name) -> hostnames, in the order first named.
    let mut by_secret: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    for listener in owner.listeners {
        let Some(tls) = terminating_tls(listener) else { continue };
        let label = format!("listener {}", quoted(&listener.name));
        let Some(hostname) = listener.hostname.as_deref().map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
        else {
            out.skipped.push(format!("{label} has no hostname"));
            continue;
        };
        if !is_dns_name(&hostname) {
            let why = match validation::dns_name(&hostname) {
                Err(Invalid(problem)) => problem,
                Ok(()) => "it is not a DNS name".to_string(),
            };
            out.skipped.push(format!("{label}: {why} (HTTP-01 cannot validate wildcards)"));
            continue;
        }
        if tls.is_empty() {
            out.skipped.push(format!("{label} has no tls.certificateRefs"));
        }
        for (index, reference) in tls.iter().enumerate() {
            let target = match secret_target(owner, reference, grants) {
                Ok(target) => target,
                Err(why) => {
                    out.skipped.push(format!("{label}, certificateRefs[{index}]: {why}"));
                    continue;
                }
            };
            let names = by_secret.entry(target.clone()).or_insert_with(|| {
                order.push(target);
                Vec::new()
            });
            if !names.contains(&hostname) {
                names.push(hostname.clone());
            }
        }
    }
    for (namespace, secret_name) in order {
        let dns_names = by_secret.remove(&(namespace.clone(), secret_name.clone())).unwrap_or_default();
        if dns_names.len() > MAX_NAMES {
            out.skipped.push(format!(
                "Secret {namespace}/{secret_name}: {} hostnames; a certificate may carry at most {MAX_NAMES}",
                dns_names.len()
            ));
            continue;
        }
        let same_namespace = namespace == owner.namespace;
        out.certificates.push(build_listener_certificate(
            owner,
            &namespace,
            &secret_name,
            dns_names,
            &issuance,
            &usages,
            same_namespace.then(|| owner_reference.clone()),
        ));
    }
    Ok(out)
}

/// The certificate references of a listener that terminates TLS; None for other listeners.
fn terminating_tls(listener: &Listener) -> Option<&[SecretObjectReference]> {
    let tls = listener.tls.as_ref();
    let passthrough = tls.and_then(|t| t.mode.as_deref()).is_some_and(|mode| mode != "Terminate");
    if !matches!(listener.protocol.as_str(), "HTTPS" | "TLS") || passthrough {
        return None;
    }
    Some(tls.map(|t| t.certificate_refs.as_slice()).unwrap_or_default())
}

/// The (namespace, name) of the Secret `reference` names, if the owner may refer to it.
fn secret_target(
    owner: &ListenerOwner,
    reference: &SecretObjectReference,
    grants: &[&ReferenceGrant],
) -> Result<(String, String), String> {
    let group = reference.group.as_deref().unwrap_or("");
    let kind = reference.kind.as_deref().unwrap_or("Secret");
    if !group.is_empty() || kind != "Secret" {
        return Err(format!("{} is a {}, not a Secret", quoted(&reference.name), quoted(&format!("{group}/{kind}"))));
    }
    if let Err(Invalid(problem)) = validation::object_name(&reference.name) {
        return Err(format!("Secret name: {problem}"));
    }
    let namespace = reference.namespace.clone().unwrap_or_else(|| owner.namespace.clone());
    if namespace != owner.namespace && !granted(owner, &namespace, &reference.name, grants) {
        return Err(format!(
            "Secret {namespace}/{} is in another namespace, and no ReferenceGrant in {namespace} lets {} from {} \
             refer to it",
            reference.name, owner.kind, owner.namespace
        ));
    }
    Ok((namespace, reference.name.clone()))
}

/// Whether a ReferenceGrant in `namespace` lets the owner's kind in the owner's namespace refer to the Secret
/// `name` there.
pub fn granted(owner: &ListenerOwner, namespace: &str, name: &str, grants: &[&ReferenceGrant]) -> bool {
    grants.iter().filter(|g| g.namespace().as_deref() == Some(namespace)).any(|grant| {
        let from = grant
            .spec
            .from
            .iter()
            .any(|f| f.group == owner.group && f.kind == owner.kind && f.namespace == owner.namespace);
        let to = grant
            .spec
            .to
            .iter()
            .any(|t| t.group.is_empty() && t.kind == "Secret" && t.name.as_deref().is_none_or(|n| n == name));
        from && to
    })
}

fn build_listener_certificate(
    owner: &ListenerOwner,
    namespace: &str,
    secret_name: &str,
    dns_names: Vec<String>,
    issuance: &IssuanceAnnotations,
    usages: &[KeyUsage],
    owner_reference: Option<OwnerReference>,
) -> Certificate {
    let uid = owner.owner_reference.as_ref().map(|o| o.uid.clone()).unwrap_or_default();
    let labels =
        BTreeMap::from([(LABEL_SOURCE.to_string(), owner.source.to_string()), (LABEL_OWNER_UID.to_string(), uid)]);
    let spec = spec_from_annotations(secret_name, issuance, dns_names, Vec::new(), usages.to_vec());
    let mut certificate = build_certificate(namespace, secret_name, labels, owner_reference, spec);
    certificate.metadata.annotations = Some(BTreeMap::from([(
        ANNOTATION_OWNER.to_string(),
        format!("{} {}/{}", owner.kind, owner.namespace, owner.name),
    )]));
    certificate
}

/// Whether `certificate` was made for the Gateway or XListenerSet with `uid`.
pub fn made_for(certificate: &Certificate, uid: &str) -> bool {
    certificate.labels().get(LABEL_OWNER_UID).is_some_and(|u| u == uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::IssuerKind;
    use crate::automatic::annotations::{ANNOTATION_CLUSTER_ISSUER, ANNOTATION_ISSUER};
    use crate::gateway_api::{GatewayTlsConfig, ReferenceGrantFrom, ReferenceGrantSpec, ReferenceGrantTo};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn listener(name: &str, protocol: &str, hostname: Option<&str>, refs: &[(Option<&str>, &str)]) -> Listener {
        Listener {
            name: name.into(),
            hostname: hostname.map(str::to_string),
            port: 443,
            protocol: protocol.into(),
            tls: Some(GatewayTlsConfig {
                mode: None,
                certificate_refs: refs
                    .iter()
                    .map(|(namespace, name)| SecretObjectReference {
                        name: name.to_string(),
                        namespace: namespace.map(str::to_string),
                        ..SecretObjectReference::default()
                    })
                    .collect(),
            }),
        }
    }

    fn owner<'a>(annotations: &'a BTreeMap<String, String>, listeners: &'a [Listener]) -> ListenerOwner<'a> {
        ListenerOwner {
            kind: "Gateway",
            group: "gateway.networking.k8s.io",
            source: SOURCE_GATEWAY,
            namespace: "apps".into(),
            name: "web".into(),
            annotations,
            listeners,
            owner_reference: Some(OwnerReference {
                api_version: "gateway.networking.k8s.io/v1".into(),
                kind: "Gateway".into(),
                name: "web".into(),
                uid: "uid-1".into(),
                controller: Some(true),
                block_owner_deletion: None,
            }),
        }
    }

    fn grant(namespace: &str, from_namespace: &str, to_name: Option<&str>) -> ReferenceGrant {
        ReferenceGrant {
            metadata: ObjectMeta { name: Some("g".into()), namespace: Some(namespace.into()), ..ObjectMeta::default() },
            spec: ReferenceGrantSpec {
                from: vec![ReferenceGrantFrom {
                    group: "gateway.networking.k8s.io".into(),
                    kind: "Gateway".into(),
                    namespace: from_namespace.into(),
                }],
                to: vec![ReferenceGrantTo {
                    group: "".into(),
                    kind: "Secret".into(),
                    name: to_name.map(str::to_string),
                }],
            },
        }
    }

    fn issuer() -> BTreeMap<String, String> {
        BTreeMap::from([(ANNOTATION_ISSUER.to_string(), "ca".to_string())])
    }

    fn summary(plan: &ListenerCertificates) -> Vec<(String, Vec<String>, bool)> {
        plan.certificates
            .iter()
            .map(|c| {
                let owned = c.owner_references().iter().any(|o| o.uid == "uid-1" && o.controller == Some(true));
                (format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any()), c.spec.dns_names.clone(), owned)
            })
            .collect()
    }

    #[test]
    fn a_gateway_without_issuer_annotation_asks_for_nothing() {
        let listeners = [listener("https", "HTTPS", Some("web.test"), &[(None, "web-tls")])];
        let none = BTreeMap::new();
        let plan = desired_listener_certificates(&owner(&none, &listeners), &[]).unwrap();
        assert!(plan.certificates.is_empty() && plan.skipped.is_empty());
    }

    #[test]
    fn each_secret_of_a_terminating_listener_becomes_a_certificate_with_the_listeners_hostnames() {
        let annotations = issuer();
        let mut passthrough = listener("pass", "TLS", Some("pass.test"), &[(None, "pass-tls")]);
        passthrough.tls.as_mut().unwrap().mode = Some("Passthrough".into());
        // (case, listeners, expected (namespace/name, dnsNames, controlled by the Gateway), skipped)
        type Case = (&'static str, Vec<Listener>, Vec<(&'static str, Vec<&'static str>, bool)>, usize);
        let cases: Vec<Case> = vec![
            (
                "one HTTPS listener",
                vec![listener("https", "HTTPS", Some("Web.test."), &[(None, "web-tls")])],
                vec![("apps/web-tls", vec!["web.test"], true)],
                0,
            ),
            (
                "listeners sharing a Secret merge; HTTP listeners are not asked",
                vec![
                    listener("http", "HTTP", Some("web.test"), &[]),
                    listener("a", "HTTPS", Some("a.test"), &[(None, "shared")]),
                    listener("b", "TLS", Some("b.test"), &[(Some("apps"), "shared")]),
                ],
                vec![("apps/shared", vec!["a.test", "b.test"], true)],
                0,
            ),
            ("a passthrough listener has no certificate", vec![passthrough], vec![], 0),
            (
                "no hostname, a wildcard, no refs, not a Secret: skipped and said",
                vec![
                    listener("none", "HTTPS", None, &[(None, "x")]),
                    listener("wild", "HTTPS", Some("*.test"), &[(None, "x")]),
                    listener("norefs", "HTTPS", Some("n.test"), &[]),
                    {
                        let mut l = listener("cm", "HTTPS", Some("c.test"), &[(None, "c")]);
                        l.tls.as_mut().unwrap().certificate_refs[0].kind = Some("ConfigMap".into());
                        l
                    },
                ],
                vec![],
                4,
            ),
            (
                "another namespace without a ReferenceGrant is refused",
                vec![listener("https", "HTTPS", Some("web.test"), &[(Some("certs"), "web-tls")])],
                vec![],
                1,
            ),
        ];
        for (case, listeners, expected, skipped) in cases {
            let plan = desired_listener_certificates(&owner(&annotations, &listeners), &[]).unwrap();
            let expected: Vec<(String, Vec<String>, bool)> = expected
                .into_iter()
                .map(|(n, h, o)| (n.to_string(), h.into_iter().map(str::to_string).collect(), o))
                .collect();
            assert_eq!(summary(&plan), expected, "{case}");
            assert_eq!(plan.skipped.len(), skipped, "{case}: {:?}", plan.skipped);
        }
    }

    #[test]
    fn a_secret_in_another_namespace_needs_a_reference_grant_there() {
        let annotations = issuer();
        let listeners = [listener("https", "HTTPS", Some("web.test"), &[(Some("certs"), "web-tls")])];
        let owner = owner(&annotations, &listeners);
        // (case, grants, granted)
        let cases: Vec<(&str, Vec<ReferenceGrant>, bool)> = vec![
            ("a grant for every Secret", vec![grant("certs", "apps", None)], true),
            ("a grant for that Secret", vec![grant("certs", "apps", Some("web-tls"))], true),
            ("a grant for another Secret", vec![grant("certs", "apps", Some("other"))], false),
            ("a grant from another namespace", vec![grant("certs", "elsewhere", None)], false),
            ("a grant in another namespace", vec![grant("apps", "apps", None)], false),
            (
                "a grant for XListenerSets",
                vec![{
                    let mut g = grant("certs", "apps", None);
                    g.spec.from[0].kind = "XListenerSet".into();
                    g
                }],
                false,
            ),
        ];
        for (case, grants, expected) in cases {
            let grants: Vec<&ReferenceGrant> = grants.iter().collect();
            let plan = desired_listener_certificates(&owner, &grants).unwrap();
            if expected {
                assert_eq!(
                    summary(&plan),
                    [("certs/web-tls".to_string(), vec!["web.test".to_string()], false)],
                    "{case}"
                );
                let certificate = &plan.certificates[0];
                assert!(made_for(certificate, "uid-1"), "{case}: the Gateway's UID is recorded");
                assert!(certificate.owner_references().is_empty(), "{case}: no owner reference across namespaces");
                assert_eq!(
                    certificate.annotations().get(ANNOTATION_OWNER).map(String::as_str),
                    Some("Gateway apps/web"),
                    "{case}"
                );
            } else {
                assert!(plan.certificates.is_empty(), "{case}");
                assert!(plan.skipped[0].contains("no ReferenceGrant in certs"), "{case}: {:?}", plan.skipped);
            }
        }
    }

    #[test]
    fn the_annotations_set_the_certificates_options_and_bad_ones_are_errors() {
        let listeners = [listener("https", "HTTPS", Some("web.test"), &[(None, "web-tls")])];
        let annotations = BTreeMap::from([(ANNOTATION_CLUSTER_ISSUER.to_string(), "corp".to_string())]);
        let plan = desired_listener_certificates(&owner(&annotations, &listeners), &[]).unwrap();
        let spec = &plan.certificates[0].spec;
        assert_eq!((spec.issuer_ref.name.as_str(), spec.issuer_ref.kind), ("corp", IssuerKind::ClusterIssuer));
        assert_eq!(spec.secret_name, "web-tls");
        let both = BTreeMap::from([
            (ANNOTATION_CLUSTER_ISSUER.to_string(), "corp".to_string()),
            (ANNOTATION_ISSUER.to_string(), "ca".to_string()),
        ]);
        assert!(desired_listener_certificates(&owner(&both, &listeners), &[]).is_err());
    }
}
