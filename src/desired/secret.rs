//! The Certificate's `kubernetes.io/tls` Secret, and the Secret that holds the private key of an
//! issuance in progress.

use super::names::{certificate_label_value, next_key_secret_name};
use super::solver_objects::{certificate_name, controller_owner_reference};
use crate::api::names::{
    ANNOTATION_CERTIFICATE_NAME, ANNOTATION_CERTIFICATE_UID, ANNOTATION_DNS_NAMES, ANNOTATION_IP_ADDRESSES,
    ANNOTATION_ISSUER_KIND, ANNOTATION_ISSUER_NAME, ANNOTATION_USAGES, CA_CRT, LABEL_CERTIFICATE, LABEL_MANAGED_BY,
    MANAGED_BY, TLS_CRT, TLS_KEY,
};
use crate::api::{Certificate, IssuerRef};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// The type of the Certificate's Secret.
const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
/// The type of the next-key Secret.
const OPAQUE_SECRET_TYPE: &str = "Opaque";

/// The Certificate's Secret (`spec.secretName`, type `kubernetes.io/tls`) holding `chain_pem` (leaf and
/// intermediates) as tls.crt, `key_pem` as tls.key and, when known and not empty, `ca_bundle_pem` as
/// ca.crt.
///
/// Labels are the secretTemplate's plus `app.kubernetes.io/managed-by: kacme`; annotations are the
/// secretTemplate's plus kacme's own (certificate name and UID, `issuer`'s name and kind, `usages` as
/// [`crate::decision::usages_annotation`] wrote it, DNS names and IP addresses comma-separated, empty when
/// none). kacme's win on conflict: the issuance decision reads them back. The Secret has no owner
/// reference: as in cert-manager, deleting a Certificate keeps its Secret.
pub fn build_certificate_secret(
    certificate: &Certificate,
    issuer: &IssuerRef,
    chain_pem: &str,
    key_pem: &str,
    ca_bundle_pem: Option<&str>,
    usages: &str,
) -> Secret {
    let template = certificate.spec.secret_template.as_ref();
    let mut labels = template.map(|t| t.labels.clone()).unwrap_or_default();
    labels.insert(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string());
    let mut annotations = template.map(|t| t.annotations.clone()).unwrap_or_default();
    annotations.extend(kacme_secret_annotations(certificate, issuer, usages));

    let mut data = BTreeMap::from([(TLS_CRT.to_string(), bytes(chain_pem)), (TLS_KEY.to_string(), bytes(key_pem))]);
    if let Some(ca_bundle) = ca_bundle_pem.filter(|pem| !pem.is_empty()) {
        data.insert(CA_CRT.to_string(), bytes(ca_bundle));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(certificate.spec.secret_name.clone()),
            namespace: certificate.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        type_: Some(TLS_SECRET_TYPE.to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// The annotations by which kacme recognises its Secret and tells what its certificate was issued for.
fn kacme_secret_annotations(certificate: &Certificate, issuer: &IssuerRef, usages: &str) -> BTreeMap<String, String> {
    let spec = &certificate.spec;
    BTreeMap::from([
        (ANNOTATION_CERTIFICATE_NAME.to_string(), certificate_name(certificate)),
        (ANNOTATION_CERTIFICATE_UID.to_string(), certificate_uid(certificate)),
        (ANNOTATION_ISSUER_NAME.to_string(), issuer.name.clone()),
        (ANNOTATION_ISSUER_KIND.to_string(), issuer.kind.to_string()),
        (ANNOTATION_USAGES.to_string(), usages.to_string()),
        (ANNOTATION_DNS_NAMES.to_string(), spec.dns_names.join(",")),
        (ANNOTATION_IP_ADDRESSES.to_string(), spec.ip_addresses.join(",")),
    ])
}

/// The Secret ([`next_key_secret_name`], type `Opaque`) that holds `key_pem`, the private key of the
/// Certificate's issuance in progress, as tls.key until the certificate is stored. It is owned by the
/// Certificate (it is kacme's, and temporary), labelled with the Certificate, annotated with the
/// Certificate's name and UID (see [`crate::decision::next_key_ownership`]) and with the issuer the order is placed with (the spec's), so that a pass can tell the order from another issuer's.
pub fn build_next_key_secret(certificate: &Certificate, key_pem: &str) -> Secret {
    let name = certificate_name(certificate);
    Secret {
        metadata: ObjectMeta {
            name: Some(next_key_secret_name(&name)),
            namespace: certificate.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                (LABEL_CERTIFICATE.to_string(), certificate_label_value(&name)),
            ])),
            annotations: Some(BTreeMap::from([
                (ANNOTATION_CERTIFICATE_NAME.to_string(), name),
                (ANNOTATION_CERTIFICATE_UID.to_string(), certificate_uid(certificate)),
                (ANNOTATION_ISSUER_NAME.to_string(), certificate.spec.issuer_ref.name.clone()),
                (ANNOTATION_ISSUER_KIND.to_string(), certificate.spec.issuer_ref.kind.to_string()),
            ])),
            owner_references: controller_owner_reference(certificate).map(|owner| vec![owner]),
            ..Default::default()
        },
        type_: Some(OPAQUE_SECRET_TYPE.to_string()),
        data: Some(BTreeMap::from([(TLS_KEY.to_string(), bytes(key_pem))])),
        ..Default::default()
    }
}

/// The Certificate's UID, which its Secrets record (see [`crate::decision::secret_ownership`]); empty for a
/// Certificate without one, which owns no Secret.
fn certificate_uid(certificate: &Certificate) -> String {
    certificate.metadata.uid.clone().unwrap_or_default()
}

fn bytes(text: &str) -> ByteString {
    ByteString(text.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{IssuerKind, ObjectMetaTemplate};
    use crate::decision::{
        BackoffPolicy, IssuanceDecision, Observed, SecretOwnership, issuance_decision, secret_ownership,
        usages_annotation,
    };
    use crate::desired::testing::certificate;
    use crate::pki::testing::TestCa;
    use crate::pki::{KeySpec, effective_usages, generate_private_key};
    use jiff::{Timestamp, ToSpan};

    const CHAIN: &str = "-----BEGIN CERTIFICATE-----\nleaf\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n";
    const CA: &str = "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n";
    /// The fixture Certificate's UID.
    const UID: &str = "0b6b2c4e-1d1f-4c55-9a7e-3c1f00000001";

    fn issuer() -> IssuerRef {
        IssuerRef { name: "ca".into(), kind: IssuerKind::Issuer }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn data_of(secret: &Secret, key: &str) -> Option<String> {
        secret.data.as_ref()?.get(key).map(|v| String::from_utf8(v.0.clone()).unwrap())
    }

    #[test]
    fn a_certificate_secret_holds_chain_key_and_ca_bundle_when_known() {
        // (case, CA bundle, expected ca.crt)
        let cases = [
            ("a known CA bundle is ca.crt", Some(CA), Some(CA)),
            ("an unknown CA bundle leaves ca.crt out", None, None),
            ("an empty CA bundle leaves ca.crt out", Some(""), None),
        ];
        for (case, ca_bundle, want) in cases {
            let secret = build_certificate_secret(&certificate(), &issuer(), CHAIN, KEY, ca_bundle, "server auth");
            assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"), "{case}");
            assert_eq!(secret.metadata.name.as_deref(), Some("web-tls"), "{case}");
            assert_eq!(secret.metadata.namespace.as_deref(), Some("apps"), "{case}");
            assert_eq!(data_of(&secret, TLS_CRT).as_deref(), Some(CHAIN), "{case}");
            assert_eq!(data_of(&secret, TLS_KEY).as_deref(), Some(KEY), "{case}");
            assert_eq!(data_of(&secret, CA_CRT).as_deref(), want, "{case}");
            assert_eq!(secret.metadata.owner_references, None, "{case}: deleting the Certificate keeps the Secret");
        }
    }

    #[test]
    fn a_certificate_secret_carries_kacme_annotations_over_the_template() {
        let mut certificate = certificate();
        certificate.spec.dns_names = vec!["web.example.test".into(), "www.example.test".into()];
        certificate.spec.ip_addresses = vec!["10.0.0.1".into(), "fd00::1".into()];
        certificate.spec.secret_template = Some(ObjectMetaTemplate {
            labels: map(&[("team", "web"), (LABEL_MANAGED_BY, "helm")]),
            annotations: map(&[("reflector/enabled", "true"), (ANNOTATION_CERTIFICATE_NAME, "forged")]),
        });
        let cluster_issuer = IssuerRef { name: "corp-ca".into(), kind: IssuerKind::ClusterIssuer };
        let secret =
            build_certificate_secret(&certificate, &cluster_issuer, CHAIN, KEY, None, "client auth,server auth");
        let labels = secret.metadata.labels.unwrap();
        let annotations = secret.metadata.annotations.unwrap();
        // (case, map, key, expected value)
        let cases = [
            ("the template's label is kept", &labels, "team", "web"),
            ("kacme's managed-by label wins", &labels, LABEL_MANAGED_BY, "kacme"),
            ("the template's annotation is kept", &annotations, "reflector/enabled", "true"),
            ("kacme's certificate name wins", &annotations, ANNOTATION_CERTIFICATE_NAME, "web"),
            ("the Certificate's UID is recorded", &annotations, ANNOTATION_CERTIFICATE_UID, UID),
            ("the issuer name is recorded", &annotations, ANNOTATION_ISSUER_NAME, "corp-ca"),
            ("the issuer kind is recorded", &annotations, ANNOTATION_ISSUER_KIND, "ClusterIssuer"),
            ("the usages are recorded as given", &annotations, ANNOTATION_USAGES, "client auth,server auth"),
            ("the DNS names are comma-joined", &annotations, ANNOTATION_DNS_NAMES, "web.example.test,www.example.test"),
            ("the IP addresses are comma-joined", &annotations, ANNOTATION_IP_ADDRESSES, "10.0.0.1,fd00::1"),
        ];
        for (case, map, key, want) in cases {
            assert_eq!(map.get(key).map(String::as_str), Some(want), "{case}");
        }
    }

    #[test]
    fn a_certificate_without_ip_addresses_records_an_empty_list() {
        let secret = build_certificate_secret(&certificate(), &issuer(), CHAIN, KEY, None, "server auth");
        let annotations = secret.metadata.annotations.unwrap();
        assert_eq!(annotations.get(ANNOTATION_IP_ADDRESSES).map(String::as_str), Some(""));
        assert_eq!(secret.metadata.labels.unwrap(), map(&[(LABEL_MANAGED_BY, "kacme")]));
    }

    #[test]
    fn the_issuance_decision_recognises_the_secret_as_ours_and_up_to_date() {
        let ca = TestCa::new("Desired");
        let certificate = certificate();
        let key_spec = KeySpec::from_spec(None);
        let key = generate_private_key(&key_spec).unwrap();
        let issued: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
        let chain = ca.issue(&key, &["web.example.test"], &[], None, issued, issued + 24.hours());
        let usages = usages_annotation(&effective_usages(&[], key_spec.algorithm));
        let issuer = &certificate.spec.issuer_ref;
        let secret = build_certificate_secret(&certificate, issuer, &chain, key.pem(), Some(&ca.root_pem()), &usages);

        assert_eq!(secret_ownership(&secret, &certificate), SecretOwnership::Ours);
        let observed = Observed { certificate: &certificate, secret: Some(&secret), now: issued + 1.hour() };
        let decision = issuance_decision(&observed, &BackoffPolicy::default());
        assert!(matches!(decision, IssuanceDecision::UpToDate { .. }), "got {decision:?}");
    }

    #[test]
    fn a_next_key_secret_is_owned_labelled_and_holds_only_the_key() {
        let secret = build_next_key_secret(&certificate(), KEY);
        let owner = secret.metadata.owner_references.clone().unwrap();
        // (case, holds)
        let cases = [
            ("it is named after the Certificate", secret.metadata.name.as_deref() == Some("web-next-key")),
            ("it is in the Certificate's namespace", secret.metadata.namespace.as_deref() == Some("apps")),
            ("it is Opaque", secret.type_.as_deref() == Some("Opaque")),
            (
                "it holds tls.key only",
                secret.data.as_ref().map(|d| d.len()) == Some(1) && data_of(&secret, TLS_KEY).as_deref() == Some(KEY),
            ),
            (
                "it is labelled as kacme's for the Certificate",
                secret.metadata.labels == Some(map(&[(LABEL_MANAGED_BY, "kacme"), (LABEL_CERTIFICATE, "web")])),
            ),
            (
                "it names the Certificate and the issuer of the order",
                secret.metadata.annotations
                    == Some(map(&[
                        (ANNOTATION_CERTIFICATE_NAME, "web"),
                        (ANNOTATION_CERTIFICATE_UID, UID),
                        (ANNOTATION_ISSUER_NAME, "ca"),
                        (ANNOTATION_ISSUER_KIND, "Issuer"),
                    ])),
            ),
            (
                "it is controlled by the Certificate",
                owner.len() == 1
                    && owner[0].kind == "Certificate"
                    && owner[0].api_version == "kacme.dev/v1alpha1"
                    && owner[0].name == "web"
                    && owner[0].controller == Some(true)
                    && owner[0].block_owner_deletion == Some(true),
            ),
        ];
        for (case, holds) in cases {
            assert!(holds, "{case}: {secret:?}");
        }
    }
}
