//! The CA bundle ConfigMaps: the issuers' issuing roots (`issuingCABundle`, else `caBundle`), published in every
//! selected namespace. A namespaced Issuer's roots reach only its own namespace: no tenant adds a CA to another
//! tenant's trust.
//!
//! One ConfigMap per selected namespace (name configurable, default `kacme-ca-bundle`):
//! - `ca.crt`: every distinct CA certificate of every ClusterIssuer and of the namespace's own Issuers, in a
//!   stable order — what a client that trusts "anything kacme issues here" mounts;
//! - `clusterissuer-<name>.crt` and `issuer-<name>.crt`: each issuer's bundle on its own.

use crate::api::names::{CA_CRT, LABEL_MANAGED_BY, MANAGED_BY};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// Label on the CA bundle ConfigMaps kacme writes (and the only ones it ever deletes).
pub const LABEL_CA_BUNDLE: &str = "kacme.dev/ca-bundle";

/// One issuer's CA bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerBundle {
    /// `Issuer` or `ClusterIssuer`.
    pub kind: crate::api::IssuerKind,
    /// The issuer's name.
    pub name: String,
    /// For an Issuer, its namespace.
    pub namespace: Option<String>,
    /// The PEM of the issuer's `spec.acme.issuingCABundle`, else of its `caBundle`.
    pub pem: String,
}

/// The ConfigMaps to publish: one named `name` in each of `namespaces` (sorted by namespace). Issuers
/// without a parseable bundle contribute nothing; a namespace with no bundle at all gets no ConfigMap.
pub fn desired_ca_bundle_config_maps(name: &str, namespaces: &[String], issuers: &[IssuerBundle]) -> Vec<ConfigMap> {
    let mut issuers: Vec<&IssuerBundle> = issuers.iter().collect();
    issuers.sort_by(|a, b| {
        (a.kind != crate::api::IssuerKind::ClusterIssuer, &a.name)
            .cmp(&(b.kind != crate::api::IssuerKind::ClusterIssuer, &b.name))
    });
    let mut namespaces: Vec<&String> = namespaces.iter().collect();
    namespaces.sort();
    namespaces.dedup();
    let mut out = Vec::new();
    for namespace in namespaces {
        let mut data = BTreeMap::new();
        let mut all: Vec<String> = Vec::new();
        for issuer in &issuers {
            let visible = match issuer.kind {
                crate::api::IssuerKind::ClusterIssuer => true,
                crate::api::IssuerKind::Issuer => issuer.namespace.as_deref() == Some(namespace.as_str()),
            };
            if !visible {
                continue;
            }
            let certificates = pem_certificates(&issuer.pem);
            if certificates.is_empty() {
                continue;
            }
            let key = format!("{}-{}.crt", issuer.kind.to_string().to_ascii_lowercase(), issuer.name);
            data.insert(key, certificates.concat());
            for certificate in certificates {
                if !all.contains(&certificate) {
                    all.push(certificate);
                }
            }
        }
        if all.is_empty() {
            continue;
        }
        data.insert(CA_CRT.to_string(), all.concat());
        out.push(ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.clone()),
                labels: Some(BTreeMap::from([
                    (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                    (LABEL_CA_BUNDLE.to_string(), "true".to_string()),
                ])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        });
    }
    out
}

/// The CERTIFICATE blocks of `pem`, each re-encoded canonically (so that the same certificate written
/// differently is recognised as the same).
fn pem_certificates(pem_text: &str) -> Vec<String> {
    pem::parse_many(pem_text)
        .unwrap_or_default()
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(|block| pem::encode_config(&block, pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::IssuerKind;

    fn certificate_pem(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec![name.to_string()]).unwrap().self_signed(&key).unwrap().pem()
    }

    fn bundle(kind: IssuerKind, name: &str, namespace: Option<&str>, pem: &str) -> IssuerBundle {
        IssuerBundle { kind, name: name.into(), namespace: namespace.map(str::to_string), pem: pem.into() }
    }

    #[test]
    fn each_selected_namespace_gets_cluster_issuers_and_its_own_issuers() {
        let (a, b, c) = (certificate_pem("a"), certificate_pem("b"), certificate_pem("c"));
        let issuers = [
            bundle(IssuerKind::ClusterIssuer, "corp", None, &a),
            bundle(IssuerKind::Issuer, "team", Some("apps"), &format!("{b}{a}")),
            bundle(IssuerKind::Issuer, "other", Some("elsewhere"), &c),
            bundle(IssuerKind::Issuer, "broken", Some("apps"), "not a pem"),
        ];
        let maps = desired_ca_bundle_config_maps("kacme-ca-bundle", &["web".into(), "apps".into()], &issuers);
        assert_eq!(maps.len(), 2);
        let apps = maps[0].data.as_ref().unwrap();
        assert_eq!(maps[0].metadata.namespace.as_deref(), Some("apps"));
        assert_eq!(apps.keys().cloned().collect::<Vec<_>>(), ["ca.crt", "clusterissuer-corp.crt", "issuer-team.crt"]);
        assert_eq!(pem::parse_many(&apps["ca.crt"]).unwrap().len(), 2, "a appears once");
        let web = maps[1].data.as_ref().unwrap();
        assert_eq!(web.keys().cloned().collect::<Vec<_>>(), ["ca.crt", "clusterissuer-corp.crt"]);
        assert_eq!(maps[1].metadata.labels.as_ref().unwrap()[LABEL_CA_BUNDLE], "true");
    }

    #[test]
    fn a_namespace_without_any_bundle_gets_no_config_map() {
        let issuers = [bundle(IssuerKind::Issuer, "team", Some("apps"), &certificate_pem("a"))];
        assert!(desired_ca_bundle_config_maps("x", &["web".into()], &issuers).is_empty());
    }
}
