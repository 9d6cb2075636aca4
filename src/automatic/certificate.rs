//! The Certificate kacme creates for an Ingress or a workload, and how to tell which object controls one.

use super::annotations::IssuanceAnnotations;
use crate::api::names::{LABEL_MANAGED_BY, MANAGED_BY};
use crate::api::{Certificate, CertificateSpec, KeyUsage, PrivateKeySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::BTreeMap;

/// A Certificate as kacme creates it for an Ingress or a workload: labelled as kacme's, with `source`.
pub(crate) fn build_certificate(
    namespace: &str,
    name: &str,
    mut labels: BTreeMap<String, String>,
    owner: Option<OwnerReference>,
    spec: CertificateSpec,
) -> Certificate {
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    Certificate {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

/// The spec fields the issuance annotations set.
pub(crate) fn spec_from_annotations(
    secret_name: &str,
    issuance: &IssuanceAnnotations,
    dns_names: Vec<String>,
    ip_addresses: Vec<String>,
    usages: Vec<KeyUsage>,
) -> CertificateSpec {
    CertificateSpec {
        secret_name: secret_name.into(),
        issuer_ref: issuance.issuer_ref.clone(),
        dns_names,
        ip_addresses,
        common_name: None,
        duration: issuance.duration,
        renew_before: issuance.renew_before,
        renew_before_percentage: None,
        private_key: issuance
            .algorithm
            .map(|algorithm| PrivateKeySpec { algorithm: Some(algorithm), ..PrivateKeySpec::default() }),
        usages,
        secret_template: None,
        profile: issuance.profile.clone(),
        additional_output_formats: Vec::new(),
        keystores: None,
    }
}

/// Whether `certificate` is controlled by the object with `uid`.
pub fn controlled_by(certificate_owners: Option<&[OwnerReference]>, uid: &str) -> bool {
    certificate_owners.into_iter().flatten().any(|o| o.controller == Some(true) && o.uid == uid)
}
