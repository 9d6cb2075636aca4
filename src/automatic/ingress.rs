//! The Certificates an annotated Ingress asks for: one per `spec.tls[]` entry.

use super::annotations::{
    AnnotationError, IssuanceAnnotations, LABEL_SOURCE, SOURCE_INGRESS, is_dns_name, parse_issuance, parse_usages,
};
use super::certificate::{build_certificate, spec_from_annotations};
use crate::api::validation::{self, Invalid, MAX_NAMES};
use crate::api::{Certificate, KeyUsage};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// What an Ingress asks for.
#[derive(Debug, Clone, Default)]
pub struct IngressCertificates {
    /// One Certificate per usable `spec.tls[]` entry, owned by the Ingress.
    pub certificates: Vec<Certificate>,
    /// Entries that cannot become a Certificate, and why (reported as Events on the Ingress).
    pub skipped: Vec<String>,
}

/// The Certificates of `ingress`: none unless it carries `kacme.dev/issuer` or `kacme.dev/cluster-issuer`.
/// Each `spec.tls[]` entry with a secretName and hosts becomes a Certificate named after the Secret, with the
/// hosts as dnsNames. Entries without a secretName or hosts, or with a wildcard host, are skipped (HTTP-01
/// cannot validate wildcards). Entries naming a Secret an earlier entry already named are merged into it.
pub fn desired_ingress_certificates(ingress: &Ingress) -> Result<IngressCertificates, AnnotationError> {
    let annotations = ingress.annotations();
    let Some(issuance) = parse_issuance(annotations)? else { return Ok(IngressCertificates::default()) };
    let usages = parse_usages(annotations)?;
    let mut out = IngressCertificates::default();
    let Some(owner) = ingress_owner_reference(ingress) else {
        out.skipped.push("the Ingress has no uid yet".into());
        return Ok(out);
    };
    let namespace = ingress.namespace().unwrap_or_default();
    let mut by_secret: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (index, tls) in ingress.spec.as_ref().and_then(|s| s.tls.as_ref()).into_iter().flatten().enumerate() {
        let Some(secret_name) = tls.secret_name.as_deref().filter(|s| !s.is_empty()) else {
            out.skipped.push(format!("spec.tls[{index}] has no secretName"));
            continue;
        };
        let hosts: Vec<String> =
            tls.hosts.iter().flatten().map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase()).collect();
        if hosts.is_empty() {
            out.skipped.push(format!("spec.tls[{index}] ({secret_name}) has no hosts"));
            continue;
        }
        if let Some(bad) = hosts.iter().find(|h| !is_dns_name(h)) {
            let why = match validation::dns_name(bad) {
                Err(Invalid(problem)) => problem,
                Ok(()) => "it is not a DNS name".to_string(),
            };
            out.skipped.push(format!("spec.tls[{index}] ({secret_name}): {why}"));
            continue;
        }

        let names = by_secret.entry(secret_name.to_string()).or_insert_with(|| {
            order.push(secret_name.to_string());
            Vec::new()
        });
        for host in hosts {
            if !names.contains(&host) {
                names.push(host);
            }
        }
    }
    for secret_name in order {
        let dns_names = by_secret.remove(&secret_name).unwrap_or_default();
        if dns_names.len() > MAX_NAMES {
            out.skipped
                .push(format!("{secret_name}: {} hosts; a certificate may carry at most {MAX_NAMES}", dns_names.len()));
            continue;
        }
        out.certificates.push(build_ingress_certificate(
            &namespace,
            &secret_name,
            dns_names,
            &issuance,
            &usages,
            owner.clone(),
        ));
    }
    Ok(out)
}

/// The controller ownerReference of Certificates made for `ingress` (None before the Ingress has a uid).
pub fn ingress_owner_reference(ingress: &Ingress) -> Option<OwnerReference> {
    let mut owner = ingress.controller_owner_ref(&())?;
    // blockOwnerDeletion would need permission to set finalizers on Ingresses; garbage collection works without.
    owner.block_owner_deletion = None;
    Some(owner)
}

fn build_ingress_certificate(
    namespace: &str,
    secret_name: &str,
    dns_names: Vec<String>,
    issuance: &IssuanceAnnotations,
    usages: &[KeyUsage],
    owner: OwnerReference,
) -> Certificate {
    let labels = BTreeMap::from([(LABEL_SOURCE.to_string(), SOURCE_INGRESS.to_string())]);
    let spec = spec_from_annotations(secret_name, issuance, dns_names, Vec::new(), usages.to_vec());
    build_certificate(namespace, secret_name, labels, Some(owner), spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{IssuerKind, KeyAlgorithm};
    use crate::automatic::annotations::{
        ANNOTATION_CLUSTER_ISSUER, ANNOTATION_ISSUER, ANNOTATION_PRIVATE_KEY_ALGORITHM, ANNOTATION_USAGES,
    };
    use crate::automatic::certificate::controlled_by;
    use k8s_openapi::api::networking::v1::{IngressSpec, IngressTLS};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ingress(annotations: &[(&str, &str)], tls: &[(Option<&str>, &[&str])]) -> Ingress {
        Ingress {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("apps".into()),
                uid: Some("uid-1".into()),
                annotations: Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..ObjectMeta::default()
            },
            spec: Some(IngressSpec {
                tls: Some(
                    tls.iter()
                        .map(|(secret, hosts)| IngressTLS {
                            secret_name: secret.map(str::to_string),
                            hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
                        })
                        .collect(),
                ),
                ..IngressSpec::default()
            }),
            status: None,
        }
    }

    fn summary(plan: &IngressCertificates) -> Vec<(String, Vec<String>)> {
        plan.certificates.iter().map(|c| (c.name_any(), c.spec.dns_names.clone())).collect()
    }

    #[test]
    fn an_ingress_without_issuer_annotation_asks_for_nothing() {
        let plan = desired_ingress_certificates(&ingress(&[], &[(Some("web-tls"), &["web.test"])])).unwrap();
        assert!(plan.certificates.is_empty() && plan.skipped.is_empty());
    }

    #[test]
    fn each_tls_entry_becomes_a_certificate_named_after_its_secret() {
        // (case, tls entries (secretName, hosts), expected certificates (name, dnsNames), entries skipped)
        type Case<'a> = (&'a str, &'a [(Option<&'a str>, &'a [&'a str])], &'a [(&'a str, &'a [&'a str])], usize);
        let cases: &[Case] = &[
            (
                "one entry",
                &[(Some("web-tls"), &["web.test", "www.test"])],
                &[("web-tls", &["web.test", "www.test"])],
                0,
            ),
            (
                "two entries",
                &[(Some("a-tls"), &["a.test"]), (Some("b-tls"), &["B.test."])],
                &[("a-tls", &["a.test"]), ("b-tls", &["b.test"])],
                0,
            ),
            (
                "entries sharing a Secret merge",
                &[(Some("a-tls"), &["a.test"]), (Some("a-tls"), &["b.test", "a.test"])],
                &[("a-tls", &["a.test", "b.test"])],
                0,
            ),
            ("an entry without secretName is skipped", &[(None, &["a.test"])], &[], 1),
            ("an entry without hosts is skipped", &[(Some("a-tls"), &[])], &[], 1),
            (
                "a wildcard entry is skipped",
                &[(Some("w-tls"), &["*.test"]), (Some("a-tls"), &["a.test"])],
                &[("a-tls", &["a.test"])],
                1,
            ),
        ];
        for (case, tls, expected, skipped) in cases {
            let plan = desired_ingress_certificates(&ingress(&[(ANNOTATION_ISSUER, "ca")], tls)).unwrap();
            let expected: Vec<(String, Vec<String>)> =
                expected.iter().map(|(n, h)| (n.to_string(), h.iter().map(|s| s.to_string()).collect())).collect();
            assert_eq!(summary(&plan), expected, "{case}");
            assert_eq!(plan.skipped.len(), *skipped, "{case}: {:?}", plan.skipped);
        }
    }

    #[test]
    fn certificates_are_owned_by_the_ingress_and_carry_the_options() {
        let annotations = [
            (ANNOTATION_CLUSTER_ISSUER, "corp"),
            (ANNOTATION_PRIVATE_KEY_ALGORITHM, "Ed25519"),
            (ANNOTATION_USAGES, "server auth"),
        ];
        let plan = desired_ingress_certificates(&ingress(&annotations, &[(Some("web-tls"), &["web.test"])])).unwrap();
        let certificate = &plan.certificates[0];
        assert_eq!(certificate.namespace().as_deref(), Some("apps"));
        assert_eq!(certificate.spec.secret_name, "web-tls");
        assert_eq!(certificate.spec.issuer_ref.kind, IssuerKind::ClusterIssuer);
        assert_eq!(certificate.spec.issuer_ref.name, "corp");
        assert_eq!(certificate.spec.usages, [KeyUsage::ServerAuth]);
        assert_eq!(certificate.spec.private_key.as_ref().and_then(|k| k.algorithm), Some(KeyAlgorithm::Ed25519));
        let owners = certificate.metadata.owner_references.as_deref();
        assert!(controlled_by(owners, "uid-1"));
        assert_eq!(owners.unwrap()[0].kind, "Ingress");
        assert_eq!(certificate.labels().get(LABEL_SOURCE).map(String::as_str), Some(SOURCE_INGRESS));
    }

    #[test]
    fn invalid_annotations_are_an_error_not_an_empty_plan() {
        let error = desired_ingress_certificates(&ingress(
            &[(ANNOTATION_ISSUER, "ca"), (ANNOTATION_USAGES, "nope")],
            &[(Some("web-tls"), &["web.test"])],
        ))
        .unwrap_err();
        assert_eq!(error.annotation, ANNOTATION_USAGES);
    }
}
