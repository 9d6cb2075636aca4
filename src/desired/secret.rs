//! The Certificate's `kubernetes.io/tls` Secret, and the Secret that holds the private key of an
//! issuance in progress.

use super::names::{certificate_label_value, next_key_secret_name};
use super::solver_objects::{certificate_name, controller_owner_reference};
use crate::api::names::{
    ANNOTATION_CERTIFICATE_NAME, ANNOTATION_CERTIFICATE_UID, ANNOTATION_DNS_NAMES, ANNOTATION_IP_ADDRESSES,
    ANNOTATION_ISSUER_KIND, ANNOTATION_ISSUER_NAME, ANNOTATION_OUTPUTS, ANNOTATION_USAGES, CA_CRT,
    DEFAULT_KEYSTORE_PASSWORD_KEY, KEY_DER, KEYSTORE_P12, LABEL_CERTIFICATE, LABEL_MANAGED_BY, MANAGED_BY,
    TLS_COMBINED_PEM, TLS_CRT, TLS_KEY, TRUSTSTORE_P12,
};
use crate::api::validation::quoted;
use crate::api::{Certificate, CertificateSpec, IssuerRef, OutputFormatType, Pkcs12Keystore};
use crate::pki::{PkiError, PrivateKey};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// The type of the Certificate's Secret.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
/// The type of the next-key Secret.
const OPAQUE_SECRET_TYPE: &str = "Opaque";

/// The Certificate's Secret (`spec.secretName`, type `kubernetes.io/tls`) holding `chain_pem` (leaf and
/// intermediates) as tls.crt, `key_pem` as tls.key and, when known and not empty, `ca_bundle_pem` as
/// ca.crt.
///
/// Labels are the secretTemplate's plus `app.kubernetes.io/managed-by: kacme`; annotations are the
/// secretTemplate's plus kacme's own (certificate name and UID, `issuer`'s name and kind, `usages` as
/// [`crate::decision::usages_annotation`] wrote it, DNS names and IP addresses comma-separated, empty when
/// none, and [`outputs_annotation`] when the spec asks for more outputs). kacme's win on conflict: the
/// issuance decision reads them back. `outputs` ([`additional_outputs`]) are added to the data. The Secret
/// has no owner reference: as in cert-manager, deleting a Certificate keeps its Secret.
pub fn build_certificate_secret(
    certificate: &Certificate,
    issuer: &IssuerRef,
    chain_pem: &str,
    key_pem: &str,
    ca_bundle_pem: Option<&str>,
    usages: &str,
    outputs: BTreeMap<String, ByteString>,
) -> Secret {
    let template = certificate.spec.secret_template.as_ref();
    let mut labels = template.map(|t| t.labels.clone()).unwrap_or_default();
    labels.insert(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string());
    let mut annotations = template.map(|t| t.annotations.clone()).unwrap_or_default();
    annotations.extend(kacme_secret_annotations(certificate, issuer, usages));
    let recorded_outputs = outputs_annotation(&certificate.spec);
    if !recorded_outputs.is_empty() {
        annotations.insert(ANNOTATION_OUTPUTS.to_string(), recorded_outputs);
    }

    let mut data = outputs;
    data.insert(TLS_CRT.to_string(), bytes(chain_pem));
    data.insert(TLS_KEY.to_string(), bytes(key_pem));
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

/// The PKCS#12 keystore the spec asks for, if any (`keystores.pkcs12` with `create: true`).
pub fn pkcs12_wanted(spec: &CertificateSpec) -> Option<&Pkcs12Keystore> {
    spec.keystores.as_ref()?.pkcs12.as_ref().filter(|p| p.create)
}

/// The key of the keystore password in its Secret.
pub fn keystore_password_key(keystore: &Pkcs12Keystore) -> &str {
    keystore.password_secret_ref.key.as_deref().unwrap_or(DEFAULT_KEYSTORE_PASSWORD_KEY)
}

/// The longest keystore password kacme uses (bytes): a password Secret is the tenant's, and its value is fed
/// to the key derivation of every keystore written.
pub const MAX_KEYSTORE_PASSWORD_BYTES: usize = 1024;

/// The keystore password from the value of its Secret key, or why it cannot be used (the words never quote
/// the value): absent, empty, not UTF-8 text, or longer than [`MAX_KEYSTORE_PASSWORD_BYTES`].
pub fn keystore_password(value: Option<&[u8]>) -> Result<String, String> {
    let Some(value) = value else { return Err("cannot be read: the Secret has no such key".into()) };
    if value.len() > MAX_KEYSTORE_PASSWORD_BYTES {
        return Err(format!("is longer than {MAX_KEYSTORE_PASSWORD_BYTES} bytes ({} bytes)", value.len()));
    }
    match std::str::from_utf8(value) {
        Ok("") => Err("is empty".into()),
        Ok(password) => Ok(password.to_string()),
        Err(_) => Err("is not UTF-8 text".into()),
    }
}

/// What `spec` asks the Secret to carry besides tls.crt, tls.key and ca.crt, as its `kacme.dev/outputs`
/// annotation records it (empty: nothing more), for example `CombinedPEM,DER,PKCS12/Modern2023/store-pass/password`.
/// When it differs from the Secret's, the Secret is written again from its own certificate and key.
pub fn outputs_annotation(spec: &CertificateSpec) -> String {
    let formats: std::collections::BTreeSet<OutputFormatType> =
        spec.additional_output_formats.iter().map(|f| f.type_).collect();
    let mut parts: Vec<String> = formats.into_iter().map(|f| f.as_str().to_string()).collect();
    if let Some(keystore) = pkcs12_wanted(spec) {
        parts.push(format!(
            "PKCS12/{}/{}/{}",
            keystore.profile.unwrap_or_default().as_str(),
            keystore.password_secret_ref.name,
            keystore_password_key(keystore)
        ));
    }
    parts.join(",")
}

/// The data of the additional outputs `spec` asks for, from the chain, its key, the CA bundle and (for a
/// PKCS#12 keystore) the keystore password: `tls-combined.pem`, `key.der`, `keystore.p12` and, with a CA
/// bundle, `truststore.p12`.
pub fn additional_outputs(
    spec: &CertificateSpec,
    chain_pem: &str,
    key: &PrivateKey,
    ca_bundle_pem: Option<&str>,
    keystore_password: Option<&str>,
) -> Result<BTreeMap<String, ByteString>, PkiError> {
    let mut data = BTreeMap::new();
    for format in &spec.additional_output_formats {
        match format.type_ {
            OutputFormatType::CombinedPem => {
                data.insert(TLS_COMBINED_PEM.to_string(), bytes(&crate::pki::combined_pem(key, chain_pem)));
            }
            OutputFormatType::Der => {
                data.insert(KEY_DER.to_string(), ByteString(crate::pki::key_der(key)?));
            }
        }
    }
    if let Some(keystore) = pkcs12_wanted(spec) {
        let password = keystore_password.ok_or_else(|| PkiError::EncodeKey {
            encoding: "PKCS#12",
            detail: "no keystore password was read".to_string(),
        })?;
        let profile = keystore.profile.unwrap_or_default();
        let (keystore, truststore) = crate::pki::pkcs12(key, chain_pem, ca_bundle_pem, password, profile)?;
        data.insert(KEYSTORE_P12.to_string(), ByteString(keystore));
        if let Some(truststore) = truststore {
            data.insert(TRUSTSTORE_P12.to_string(), ByteString(truststore));
        }
    }
    Ok(data)
}

/// Why the Secret of an up-to-date certificate must be written again without a new certificate: the spec
/// asks for other outputs than the Secret was written with, or the secretTemplate's labels and annotations
/// are not all on it. `None` when it is as the spec says.
pub fn secret_rewrite_needed(certificate: &Certificate, secret: &Secret) -> Option<String> {
    let wanted = outputs_annotation(&certificate.spec);
    let written = secret.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_OUTPUTS)).map(String::as_str);
    if written.unwrap_or_default() != wanted {
        // The Secret's annotation is whatever someone wrote there: quoted, bounded.
        let shown = |outputs: &str| if outputs.is_empty() { "none".to_string() } else { quoted(outputs) };
        return Some(format!(
            "the Secret's additional outputs ({}) differ from the spec's ({})",
            shown(written.unwrap_or_default()),
            shown(&wanted)
        ));
    }
    let template = certificate.spec.secret_template.as_ref()?;
    // Keys kacme writes itself win over the template's (see build_certificate_secret): never wait for those.
    let kacme_writes = |key: &str| key.starts_with("kacme.dev/") || key == LABEL_MANAGED_BY;
    let has_all = |wanted: &BTreeMap<String, String>, present: Option<&BTreeMap<String, String>>| {
        wanted.iter().filter(|(k, _)| !kacme_writes(k)).all(|(k, v)| present.and_then(|p| p.get(k)) == Some(v))
    };
    if !has_all(&template.labels, secret.metadata.labels.as_ref())
        || !has_all(&template.annotations, secret.metadata.annotations.as_ref())
    {
        return Some("the Secret lacks labels or annotations of the secretTemplate".to_string());
    }
    None
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
            let secret = build_certificate_secret(
                &certificate(),
                &issuer(),
                CHAIN,
                KEY,
                ca_bundle,
                "server auth",
                BTreeMap::new(),
            );
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
        let secret = build_certificate_secret(
            &certificate,
            &cluster_issuer,
            CHAIN,
            KEY,
            None,
            "client auth,server auth",
            BTreeMap::new(),
        );
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
        let secret =
            build_certificate_secret(&certificate(), &issuer(), CHAIN, KEY, None, "server auth", BTreeMap::new());
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
        let secret = build_certificate_secret(
            &certificate,
            issuer,
            &chain,
            key.pem(),
            Some(&ca.root_pem()),
            &usages,
            BTreeMap::new(),
        );

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

    fn with_outputs(formats: &[OutputFormatType], pkcs12: Option<crate::api::Pkcs12Profile>) -> Certificate {
        let mut certificate = certificate();
        certificate.spec.additional_output_formats =
            formats.iter().map(|f| crate::api::OutputFormat { type_: *f }).collect();
        certificate.spec.keystores = pkcs12.map(|profile| crate::api::Keystores {
            pkcs12: Some(crate::api::Pkcs12Keystore {
                create: true,
                password_secret_ref: crate::api::SecretKeySelector { name: "store-pass".into(), key: None },
                profile: Some(profile),
            }),
        });
        certificate
    }

    #[test]
    fn the_outputs_annotation_names_each_output_once_in_a_fixed_order() {
        use crate::api::Pkcs12Profile;
        use OutputFormatType::{CombinedPem, Der};
        // (formats, pkcs12, annotation)
        let cases = [
            (vec![], None, ""),
            (vec![Der, CombinedPem], None, "CombinedPEM,DER"),
            (vec![CombinedPem], Some(Pkcs12Profile::Modern2023), "CombinedPEM,PKCS12/Modern2023/store-pass/password"),
            (vec![], Some(Pkcs12Profile::LegacyDes), "PKCS12/LegacyDES/store-pass/password"),
        ];
        for (formats, pkcs12, annotation) in cases {
            assert_eq!(outputs_annotation(&with_outputs(&formats, pkcs12).spec), annotation, "{formats:?} {pkcs12:?}");
        }
        let mut not_created = with_outputs(&[], Some(Pkcs12Profile::Modern2023));
        not_created.spec.keystores.as_mut().unwrap().pkcs12.as_mut().unwrap().create = false;
        assert_eq!(outputs_annotation(&not_created.spec), "", "create: false writes no keystore");
    }

    #[test]
    fn additional_outputs_read_back_as_the_stored_key_and_chain() {
        use crate::api::Pkcs12Profile;
        let ca = TestCa::new("Outputs");
        for (key_spec, profile) in [
            (KeySpec::from_spec(None), Pkcs12Profile::Modern2023),
            (
                KeySpec {
                    algorithm: crate::api::KeyAlgorithm::Rsa,
                    size: 2048,
                    encoding: crate::api::KeyEncoding::Pkcs1,
                },
                Pkcs12Profile::LegacyDes,
            ),
            (
                KeySpec {
                    algorithm: crate::api::KeyAlgorithm::Ed25519,
                    size: 256,
                    encoding: crate::api::KeyEncoding::Pkcs8,
                },
                Pkcs12Profile::Modern2023,
            ),
        ] {
            let key = generate_private_key(&key_spec).unwrap();
            let issued: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
            let chain = ca.issue(&key, &["web.example.test"], &[], None, issued, issued + 24.hours());
            let certificate = with_outputs(&[OutputFormatType::CombinedPem, OutputFormatType::Der], Some(profile));
            let root = ca.root_pem();
            let data = additional_outputs(&certificate.spec, &chain, &key, Some(&root), Some("s3cret")).unwrap();
            let keys: Vec<&str> = data.keys().map(String::as_str).collect();
            assert_eq!(keys, ["key.der", "keystore.p12", "tls-combined.pem", "truststore.p12"], "{key_spec}");

            let combined = String::from_utf8(data[TLS_COMBINED_PEM].0.clone()).unwrap();
            assert!(combined.starts_with(key.pem().trim_end()), "the key comes first ({key_spec})");
            assert!(combined.ends_with(&chain), "then the chain ({key_spec})");
            let key_block = pem::parse(key.pem()).unwrap();
            assert_eq!(data[KEY_DER].0, key_block.contents(), "key.der is tls.key in DER ({key_spec})");

            let keystore = p12_keystore::KeyStore::from_pkcs12(
                &data[KEYSTORE_P12].0,
                "s3cret",
                p12_keystore::Pkcs12ImportPolicy::Strict,
            )
            .unwrap();
            let (alias, key_chain) = keystore.private_key_chain().unwrap();
            assert_eq!(alias, crate::pki::KEYSTORE_ALIAS);
            assert_eq!(key_chain.key().as_der(), key.pkcs8_der().unwrap(), "the keystore's key ({key_spec})");
            // A key read back from the Secret (PKCS#1 and SEC1 included) gives the same keystore key.
            let parsed = crate::pki::parse_private_key(key.pem().as_bytes()).unwrap();
            let again = additional_outputs(&certificate.spec, &chain, &parsed, Some(&root), Some("s3cret")).unwrap();
            let reread = p12_keystore::KeyStore::from_pkcs12(
                &again[KEYSTORE_P12].0,
                "s3cret",
                p12_keystore::Pkcs12ImportPolicy::Strict,
            )
            .unwrap();
            assert_eq!(reread.private_key_chain().unwrap().1.key().as_der(), key_chain.key().as_der(), "{key_spec}");
            let mut expected: Vec<Vec<u8>> =
                pem::parse_many(&chain).unwrap().into_iter().map(|b| b.into_contents()).collect();
            expected.push(pem::parse(&root).unwrap().into_contents());
            let certs: Vec<Vec<u8>> = key_chain.certs().iter().map(|c| c.as_der().to_vec()).collect();
            assert_eq!(certs.len(), 3, "leaf, intermediate, root ({key_spec})");
            assert_eq!(certs, expected, "the chain, then the CA ({key_spec})");
            assert!(
                p12_keystore::KeyStore::from_pkcs12(
                    &data[KEYSTORE_P12].0,
                    "wrong",
                    p12_keystore::Pkcs12ImportPolicy::Strict
                )
                .is_err(),
                "another password does not open it"
            );
            let truststore = p12_keystore::KeyStore::from_pkcs12(
                &data[TRUSTSTORE_P12].0,
                "s3cret",
                p12_keystore::Pkcs12ImportPolicy::Relaxed,
            )
            .unwrap();
            assert_eq!(truststore.entries_len(), 1, "the truststore holds the CA ({key_spec})");
        }
    }

    #[test]
    fn without_a_ca_there_is_no_truststore_and_without_a_password_no_keystore() {
        let ca = TestCa::new("Outputs");
        let key = generate_private_key(&KeySpec::from_spec(None)).unwrap();
        let issued: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
        let chain = ca.issue(&key, &["web.example.test"], &[], None, issued, issued + 24.hours());
        let certificate = with_outputs(&[], Some(crate::api::Pkcs12Profile::Modern2023));
        let data = additional_outputs(&certificate.spec, &chain, &key, None, Some("pw")).unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["keystore.p12"]);
        let error = additional_outputs(&certificate.spec, &chain, &key, None, None).unwrap_err();
        assert!(error.to_string().contains("no keystore password"), "{error}");
    }

    #[test]
    fn a_secret_is_rewritten_when_its_outputs_or_template_lag_the_spec() {
        let plain = certificate();
        let written = build_certificate_secret(&plain, &issuer(), CHAIN, KEY, None, "server auth", BTreeMap::new());
        assert_eq!(secret_rewrite_needed(&plain, &written), None, "as the spec says");

        let wants_der = with_outputs(&[OutputFormatType::Der], None);
        let why = secret_rewrite_needed(&wants_der, &written).unwrap();
        assert!(why.contains("none") && why.contains("DER"), "{why}");
        let rewritten =
            build_certificate_secret(&wants_der, &issuer(), CHAIN, KEY, None, "server auth", BTreeMap::new());
        assert_eq!(secret_rewrite_needed(&wants_der, &rewritten), None, "written with the outputs asked for");
        assert!(secret_rewrite_needed(&plain, &rewritten).is_some(), "outputs removed from the spec");

        let mut templated = certificate();
        templated.spec.secret_template = Some(ObjectMetaTemplate {
            labels: map(&[("team", "web"), (LABEL_MANAGED_BY, "someone")]),
            annotations: map(&[("kacme.dev/usages", "ignored")]),
        });
        assert!(secret_rewrite_needed(&templated, &written).unwrap().contains("secretTemplate"));
        let rewritten =
            build_certificate_secret(&templated, &issuer(), CHAIN, KEY, None, "server auth", BTreeMap::new());
        assert_eq!(
            secret_rewrite_needed(&templated, &rewritten),
            None,
            "keys kacme writes itself never make it rewrite (no loop)"
        );
    }

    #[test]
    fn a_keystore_password_is_used_only_when_it_is_bounded_text() {
        assert_eq!(keystore_password(Some(b"s3cret")), Ok("s3cret".to_string()));
        // (value, why)
        let long = vec![b'a'; MAX_KEYSTORE_PASSWORD_BYTES + 1];
        for (value, why) in [
            (None, "no such key"),
            (Some(&b""[..]), "is empty"),
            (Some(&[0xff, 0xfe][..]), "not UTF-8"),
            (Some(&long[..]), "longer than 1024 bytes"),
        ] {
            let error = keystore_password(value).unwrap_err();
            assert!(error.contains(why), "{error}");
            assert!(!error.contains("aaaa"), "the value is never quoted: {error}");
        }
        assert!(keystore_password(Some(&long[..MAX_KEYSTORE_PASSWORD_BYTES])).is_ok(), "the bound itself is fine");
    }

    #[test]
    fn a_huge_outputs_annotation_is_quoted_bounded() {
        let mut written =
            build_certificate_secret(&certificate(), &issuer(), CHAIN, KEY, None, "server auth", BTreeMap::new());
        written.metadata.annotations.as_mut().unwrap().insert(ANNOTATION_OUTPUTS.into(), "x".repeat(200_000));
        let why = secret_rewrite_needed(&certificate(), &written).unwrap();
        assert!(why.len() < 300, "{} bytes", why.len());
    }
}
