//! The test environment is real: a real apiserver enforces our CRDs, a real controller-manager collects
//! garbage, solver Pods are run and reached through their Ingress, and real ACME CAs answer over TLS and
//! validate HTTP-01 through the solver stand-in.
//!
//! Needs the binaries that `tests/env/install` builds (each test fails with that hint when one is missing).

mod common;

use common::within;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kacme::api::{Certificate, ClusterIssuer, Issuer};
use kacme_testenv::{
    ControlPlane, HttpsClient, Pebble, PebbleOptions, SOLVER_LABEL, SolverStandIn, StepCa, StepCaOptions, TempDir,
    poll_until,
};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const KACME: &str = env!("CARGO_BIN_EXE_kacme");

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds")
}

/// `base` with a JSON merge patch (RFC 7386) applied: objects merge, `null` removes a key.
fn merged(base: &Value, patch: &Value) -> Value {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            let mut out = base.clone();
            for (key, value) in patch {
                if value.is_null() {
                    out.remove(key);
                } else {
                    let merged_value = merged(out.get(key).unwrap_or(&Value::Null), value);
                    out.insert(key.clone(), merged_value);
                }
            }
            Value::Object(out)
        }
        (_, patch) => patch.clone(),
    }
}

fn dynamic(resource: &ApiResource, name: &str, spec: Value) -> DynamicObject {
    let mut object = DynamicObject::new(name, resource);
    object.data = json!({ "spec": spec });
    object
}

/// Creates the object and returns the apiserver's rejection message, failing if it was accepted.
async fn rejection(api: &Api<DynamicObject>, object: &DynamicObject) -> String {
    match api.create(&PostParams::default(), object).await {
        Ok(_) => panic!("the apiserver accepted the invalid object {}: {:#}", object.name_any(), object.data),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "expected 422 Invalid for {}: {status:?}", object.name_any());
            status.message.clone()
        }
        Err(other) => panic!("creating {} failed with a non-API error: {other}", object.name_any()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crds_install_explain_their_fields_and_reject_invalid_objects_at_admission() {
    within(240, async {
        let control_plane = ControlPlane::start().await.expect("starting the control plane");
        let names = control_plane.install_crds(crds_dir()).await.expect("installing crds/");
        assert_eq!(names, ["certificates.kacme.dev", "clusterissuers.kacme.dev", "issuers.kacme.dev"]);

        // kubectl (with the environment's kubeconfig) explains fields from the doc comments. The OpenAPI
        // document is published shortly after the CRD is Established, hence the retry.
        let explain = poll_until("kubectl explain", Duration::from_secs(30), Duration::from_millis(200), || async {
            Ok(control_plane.kubectl(&["explain", "certificate.spec.dnsNames"]).await.map_err(|e| format!("{e:#}")))
        })
        .await
        .expect("kubectl explain certificate.spec.dnsNames");
        assert!(explain.contains("DNS names to certify"), "kubectl explain lacks the field doc:\n{explain}");
        assert!(explain.contains("Wildcard"), "kubectl explain lacks the field doc:\n{explain}");

        let client = control_plane.client().await.expect("client");
        let certificates = ApiResource::erase::<Certificate>(&());
        let certificate_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &certificates);
        let valid_certificate = json!({
            "secretName": "web-tls",
            "issuerRef": {"name": "private-ca"},
            "dnsNames": ["app.example.test"],
        });
        // (case, change to the valid spec, fragments the rejection message must contain)
        let certificate_cases: Vec<(&str, Value, &[&str])> = vec![
            (
                "neither dnsNames nor ipAddresses",
                json!({"dnsNames": null}),
                &["at least one of dnsNames or ipAddresses must be given"],
            ),
            (
                "a DNS name with an underscore and capitals",
                json!({"dnsNames": ["Bad_Name.example"]}),
                &["spec.dnsNames[0]", "Bad_Name.example", "should match"],
            ),
            (
                "a wildcard name",
                json!({"dnsNames": ["*.example.test"]}),
                &["wildcard names need DNS-01 validation, which kacme does not support"],
            ),
            (
                "an invalid IP address",
                json!({"dnsNames": null, "ipAddresses": ["999.1.1.1"]}),
                &["every ipAddresses entry must be a valid IPv4 or IPv6 address"],
            ),
            (
                "renewBefore and renewBeforePercentage together",
                json!({"renewBefore": "8h", "renewBeforePercentage": 30}),
                &["renewBefore and renewBeforePercentage are mutually exclusive"],
            ),
            (
                "renewBefore not shorter than duration",
                json!({"duration": "1h", "renewBefore": "2h"}),
                &["renewBefore must be shorter than duration"],
            ),
            ("a duration under 5m", json!({"duration": "1m"}), &["duration must be at least 5m"]),
            ("a duration that is no duration", json!({"duration": "abc"}), &["spec.duration", "should match"]),
            (
                "an RSA key of 1000 bits",
                json!({"privateKey": {"algorithm": "RSA", "size": 1000}}),
                &["size must be 2048, 3072 or 4096 for RSA, 256 or 384 for ECDSA, and absent for Ed25519"],
            ),
            (
                "an ECDSA key of 521 bits",
                json!({"privateKey": {"algorithm": "ECDSA", "size": 521}}),
                &["size must be 2048, 3072 or 4096 for RSA, 256 or 384 for ECDSA, and absent for Ed25519"],
            ),
            (
                "an Ed25519 key with a size",
                json!({"privateKey": {"algorithm": "Ed25519", "size": 256}}),
                &["size must be 2048, 3072 or 4096 for RSA, 256 or 384 for ECDSA, and absent for Ed25519"],
            ),
            (
                "an Ed25519 key in PKCS#1",
                json!({"privateKey": {"algorithm": "Ed25519", "encoding": "PKCS1"}}),
                &["Ed25519 keys have no PKCS#1 form"],
            ),
            (
                "an issuerRef of an unknown kind",
                json!({"issuerRef": {"name": "private-ca", "kind": "Foo"}}),
                &["spec.issuerRef.kind", "Unsupported value: \"Foo\"", "\"Issuer\"", "\"ClusterIssuer\""],
            ),
            (
                "a Secret template label value the apiserver would refuse on the Secret",
                json!({"secretTemplate": {"labels": {"team": "not a valid label value!"}}}),
                &["spec.secretTemplate.labels.team", "should match"],
            ),
            (
                "a Secret template label key the apiserver would refuse on the Secret",
                json!({"secretTemplate": {"labels": {"bad key": "x"}}}),
                &["label keys must be valid Kubernetes label keys"],
            ),
            (
                "a Secret template annotation key the apiserver would refuse on the Secret",
                json!({"secretTemplate": {"annotations": {"a/b/c": "x"}}}),
                &["annotation keys must be valid Kubernetes annotation keys"],
            ),
            (
                "a commonName that is not among the names",
                json!({"commonName": "other.example.test"}),
                &["commonName must also be listed in dnsNames or ipAddresses"],
            ),
        ];
        for (index, (case, change, fragments)) in certificate_cases.iter().enumerate() {
            let object = dynamic(&certificates, &format!("invalid-{index}"), merged(&valid_certificate, change));
            let message = rejection(&certificate_api, &object).await;
            eprintln!("Certificate with {case}: {message}");
            for fragment in *fragments {
                assert!(message.contains(fragment), "Certificate with {case}: {fragment:?} missing from: {message}");
            }
        }

        let issuers = ApiResource::erase::<Issuer>(&());
        let cluster_issuers = ApiResource::erase::<ClusterIssuer>(&());
        let issuer_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &issuers);
        let cluster_issuer_api: Api<DynamicObject> = Api::all_with(client.clone(), &cluster_issuers);
        let valid_issuer = json!({"acme": {
            "server": "https://ca.example.test/acme/acme/directory",
            "privateKeySecretRef": {"name": "acme-account"},
            "solvers": [{"http01": {"ingress": {}}}],
        }});
        let issuer_cases: Vec<(&str, Value, &[&str])> = vec![
            (
                "an http:// server",
                json!({"acme": {"server": "http://ca.example.test/acme/acme/directory"}}),
                &["server must be the https:// URL of the CA's ACME directory"],
            ),
            (
                "a server port out of range",
                json!({"acme": {"server": "https://127.0.0.1:99999/dir"}}),
                &["the server's port must be a number from 1 to 65535"],
            ),
            (
                "a policy CIDR that is no CIDR",
                json!({"policy": {"ipAddresses": ["10.0.0.0/33"]}}),
                &["every ipAddresses entry must be a CIDR such as 10.0.0.0/8"],
            ),
            (
                "a policy name template with capitals",
                json!({"policy": {"dnsNames": ["Web.{namespace}.svc"]}}),
                &["spec.policy.dnsNames[0]", "should match"],
            ),
            (
                "a policy maxDuration under 5m",
                json!({"policy": {"maxDuration": "1m"}}),
                &["maxDuration must be at least 5m"],
            ),
            ("no solvers", json!({"acme": {"solvers": []}}), &["spec.acme.solvers", "should have at least 1 items"]),
            ("no server", json!({"acme": {"server": null}}), &["spec.acme.server", "Required value"]),
        ];
        for (index, (case, change, fragments)) in issuer_cases.iter().enumerate() {
            let spec = merged(&valid_issuer, change);
            for (kind, resource, api) in
                [("Issuer", &issuers, &issuer_api), ("ClusterIssuer", &cluster_issuers, &cluster_issuer_api)]
            {
                let message = rejection(api, &dynamic(resource, &format!("invalid-{index}"), spec.clone())).await;
                eprintln!("{kind} with {case}: {message}");
                for fragment in *fragments {
                    assert!(message.contains(fragment), "{kind} with {case}: {fragment:?} missing from: {message}");
                }
            }
        }

        // A namespaced Issuer serves only its own namespace: selecting namespaces is for ClusterIssuers.
        let selecting =
            merged(&valid_issuer, &json!({"policy": {"namespaceSelector": {"matchLabels": {"tenant": "a"}}}}));
        let message = rejection(&issuer_api, &dynamic(&issuers, "selecting", selecting.clone())).await;
        assert!(message.contains("namespaceSelector is for ClusterIssuers"), "{message}");
        cluster_issuer_api
            .create(&PostParams::default(), &dynamic(&cluster_issuers, "selecting", selecting))
            .await
            .expect("a ClusterIssuer may select namespaces");
        // The same for one ACME account per namespace.
        let per_namespace = merged(&valid_issuer, &json!({"acme": {"accountPerNamespace": true}}));
        let message = rejection(&issuer_api, &dynamic(&issuers, "per-namespace", per_namespace.clone())).await;
        assert!(message.contains("accountPerNamespace is for ClusterIssuers"), "{message}");
        cluster_issuer_api
            .create(&PostParams::default(), &dynamic(&cluster_issuers, "per-namespace", per_namespace))
            .await
            .expect("a ClusterIssuer may have an account per namespace");
        let not_per_namespace = merged(&valid_issuer, &json!({"acme": {"accountPerNamespace": false}}));
        issuer_api
            .create(&PostParams::default(), &dynamic(&issuers, "not-per-namespace", not_per_namespace))
            .await
            .expect("an Issuer may say false");

        // Valid objects are stored as given.
        let stored = certificate_api
            .create(&PostParams::default(), &dynamic(&certificates, "web", valid_certificate.clone()))
            .await
            .expect("a valid Certificate is accepted");
        // The schema's default for issuerRef.kind is applied.
        assert_eq!(stored.data["spec"], merged(&valid_certificate, &json!({"issuerRef": {"kind": "Issuer"}})));
        let stored = issuer_api
            .create(&PostParams::default(), &dynamic(&issuers, "private-ca", valid_issuer.clone()))
            .await
            .expect("a valid Issuer is accepted");
        assert_eq!(stored.data["spec"], valid_issuer);
        let listed = control_plane.kubectl(&["get", "kcert", "-o", "name"]).await.expect("kubectl get kcert");
        assert_eq!(listed.trim(), "certificate.kacme.dev/web");
    })
    .await
}

/// What a tenant may write in an annotation and in the Certificate field it becomes.
#[derive(Clone, Copy, Debug)]
enum Field {
    /// `kacme.dev/names`, which becomes `spec.dnsNames` or `spec.ipAddresses`.
    Names,
    /// `kacme.dev/duration` and `spec.duration`.
    Duration,
    /// `kacme.dev/renew-before` and `spec.renewBefore`.
    RenewBefore,
    /// `kacme.dev/private-key-algorithm` and `spec.privateKey.algorithm`.
    Algorithm,
    /// `kacme.dev/usages` and `spec.usages`.
    Usage,
    /// `kacme.dev/issuer` and `spec.issuerRef.name`.
    IssuerName,
    /// `kacme.dev/profile` and `spec.profile`.
    Profile,
}

/// Whether kacme's annotation parser accepts `value` for `field`.
fn annotation_accepts(field: Field, value: &str) -> Result<(), String> {
    use kacme::automatic::annotations::*;
    let with_issuer = |key: &str| {
        let mut annotations = std::collections::BTreeMap::from([(ANNOTATION_ISSUER.to_string(), "ca".to_string())]);
        annotations.insert(key.to_string(), value.to_string());
        annotations
    };
    let result = match field {
        Field::Names => parse_names(value).map(drop),
        Field::Duration => parse_issuance(&with_issuer(ANNOTATION_DURATION)).map(drop),
        Field::RenewBefore => parse_issuance(&with_issuer(ANNOTATION_RENEW_BEFORE)).map(drop),
        Field::Algorithm => parse_issuance(&with_issuer(ANNOTATION_PRIVATE_KEY_ALGORITHM)).map(drop),
        Field::Usage => parse_usages(&with_issuer(ANNOTATION_USAGES)).map(drop),
        Field::IssuerName => parse_issuance(&with_issuer(ANNOTATION_ISSUER)).map(drop),
        Field::Profile => parse_issuance(&with_issuer(ANNOTATION_PROFILE)).map(drop),
    };
    result.map_err(|e| e.to_string())
}

/// The Certificate specs in which `value` stands for `field` (two for names: as a DNS name and as an address).
fn specs_with(field: Field, value: &str) -> Vec<Value> {
    let base = json!({"secretName": "tls", "issuerRef": {"name": "ca"}, "dnsNames": ["web.apps.test"]});
    let changes = match field {
        Field::Names => vec![json!({"dnsNames": [value]}), json!({"dnsNames": null, "ipAddresses": [value]})],
        Field::Duration => vec![json!({"duration": value})],
        Field::RenewBefore => vec![json!({"renewBefore": value})],
        Field::Algorithm => vec![json!({"privateKey": {"algorithm": value, "size": null}})],
        Field::Usage => vec![json!({"usages": [value]})],
        Field::IssuerName => vec![json!({"issuerRef": {"name": value}})],
        Field::Profile => vec![json!({"profile": value})],
    };
    changes.iter().map(|change| merged(&base, change)).collect()
}

/// One validator for everything a tenant writes: for each value, the annotation parser accepts it exactly when
/// the real apiserver admits it in the Certificate field it becomes, and every admitted Certificate is one the
/// controller can read (a value admitted but unreadable would fail the controller's whole watch).
#[tokio::test(flavor = "multi_thread")]
async fn annotations_accept_exactly_the_values_the_certificate_fields_admit() {
    within(180, async {
        let control_plane = ControlPlane::start().await.expect("starting the control plane");
        control_plane.install_crds(crds_dir()).await.expect("installing crds/");
        let client = control_plane.client().await.expect("client");
        let certificates = ApiResource::erase::<Certificate>(&());
        let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &certificates);
        let dry_run = PostParams { dry_run: true, ..PostParams::default() };
        let label = |n: usize| "a".repeat(n);
        let longest_name = format!("{}.{}.{}.{}", label(63), label(63), label(63), label(61));
        let cases: Vec<(Field, String)> = [
            (
                Field::Names,
                vec![
                    "web.apps.test",
                    "Web.apps.test",
                    "web.apps.test.",
                    "*.apps.test",
                    "a_b.test",
                    "-a.test",
                    "a-.test",
                    "a..b",
                    "é.test",
                    "123",
                    "web.1",
                    "1.2.3.4.example",
                    "0x1",
                    "10.0.0.1",
                    "010.0.0.1",
                    "256.0.0.1",
                    "1.2.3",
                    "::1",
                    "::",
                    "0.0.0.0",
                    "2001:DB8::1",
                    "2001:db8::1",
                    "::ffff:10.0.0.1",
                    "fe80::1%eth0",
                    "::1.2.3.4",
                    "1:2:3:4:5:6:7:8",
                    "1:2:3:4:5:6:1.2.3.4",
                    "1:2:3:4:5:6:7:8:9",
                    "[::1]",
                    "10.0.0.1/32",
                ],
            ),
            (
                Field::Duration,
                vec![
                    "5m",
                    "300s",
                    "4m59s",
                    "4m59.9999999999s",
                    "24h",
                    "1h30m",
                    "1.5h",
                    "2160h",
                    "876000h",
                    "876000h1ns",
                    "1000000h",
                    "99999999999h",
                    "1e3h",
                    "-1h",
                    "+1h",
                    "0s",
                    "h",
                    "1d",
                    "1µs",
                    "1us",
                    "1.h",
                    ".5h",
                    "24H",
                ],
            ),
            (Field::RenewBefore, vec!["8h", "0s", "0.0s", "1ns", "00h", "876000h", "876001h", "-8h", "1 h"]),
            (Field::Algorithm, vec!["ECDSA", "RSA", "Ed25519", "ecdsa", "rsa", "ED25519", "DSA"]),
            (
                Field::Usage,
                vec!["server auth", "client auth", "timestamping", "ocsp signing", "Server Auth", "serverAuth"],
            ),
            (Field::IssuerName, vec!["ca", "corp-ca.v2", "CA", "ca_1", "-ca", "ca.", "a.b"]),
            (Field::Profile, vec!["shortlived", "tlsserver", "a/b.c_d-e", "with space", "é", "", "tab\tx", "~!"]),
        ]
        .into_iter()
        .flat_map(|(field, values)| values.into_iter().map(move |v| (field, v.to_string())))
        .chain([
            (Field::Profile, "p".repeat(64)),
            (Field::Profile, "p".repeat(65)),
            (Field::Names, label(63) + ".test"),
            (Field::Names, label(64) + ".test"),
            (Field::Names, longest_name.clone()),
            (Field::Names, longest_name.clone() + "a"),
            (Field::IssuerName, label(64)),
            (Field::IssuerName, label(253)),
            (Field::IssuerName, label(254)),
            (Field::Duration, "1h".repeat(32)),
            (Field::Duration, "1h".repeat(33)),
            // 63 characters, 84 bytes: the CRD's maxLength counts characters.
            (Field::RenewBefore, "1µs".repeat(21)),
            (Field::RenewBefore, "1µs".repeat(22)),
        ])
        .collect();
        let mut disagreements = Vec::new();
        for (index, (field, value)) in cases.iter().enumerate() {
            let mut admitted = Vec::new();
            for spec in specs_with(*field, value) {
                let object = dynamic(&certificates, &format!("value-{index}"), spec);
                match api.create(&dry_run, &object).await {
                    Ok(stored) => {
                        let readable = serde_json::from_value::<Certificate>(serde_json::to_value(&stored).unwrap());
                        if let Err(e) = readable {
                            disagreements.push(format!("{field:?} {value:?}: admitted but unreadable: {e}"));
                        }
                        admitted.push(Ok(()));
                    }
                    Err(kube::Error::Api(status)) if status.code == 422 => admitted.push(Err(status.message)),
                    Err(other) => panic!("{field:?} {value:?}: the dry run failed: {other}"),
                }
            }
            let apiserver = admitted.iter().any(Result::is_ok);
            let annotation = annotation_accepts(*field, value);
            eprintln!("{field:?} {value:?}: apiserver {apiserver}, annotation {annotation:?}");
            if apiserver != annotation.is_ok() {
                disagreements.push(format!("{field:?} {value:?}: apiserver {admitted:?}, annotation {annotation:?}"));
            }
        }
        assert!(disagreements.is_empty(), "annotation and CRD disagree:\n{}", disagreements.join("\n"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn owners_are_garbage_collected_and_service_account_tokens_are_issued_and_authorized_by_rbac() {
    within(180, async {
        // CRDs before the controller-manager starts, so that its garbage collector watches Certificates.
        let control_plane = ControlPlane::start_with_crds(crds_dir()).await.expect("starting the control plane");
        let client = control_plane.client().await.expect("client");
        let certificates = ApiResource::erase::<Certificate>(&());
        let certificate_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &certificates);
        let spec = json!({"secretName": "web-tls", "issuerRef": {"name": "ca"}, "dnsNames": ["web.example.test"]});
        let owner = certificate_api
            .create(&PostParams::default(), &dynamic(&certificates, "web", spec))
            .await
            .expect("creating the owner Certificate");
        let owner_reference = OwnerReference {
            api_version: "kacme.dev/v1alpha1".into(),
            kind: "Certificate".into(),
            name: owner.name_any(),
            uid: owner.uid().expect("the apiserver sets a uid"),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
        let mut owned_config_map = ConfigMap::default();
        owned_config_map.metadata.name = Some("owned".into());
        owned_config_map.metadata.owner_references = Some(vec![owner_reference.clone()]);
        config_maps.create(&PostParams::default(), &owned_config_map).await.expect("creating the owned ConfigMap");
        let mut owned_secret = Secret::default();
        owned_secret.metadata.name = Some("owned".into());
        owned_secret.metadata.owner_references = Some(vec![owner_reference]);
        secrets.create(&PostParams::default(), &owned_secret).await.expect("creating the owned Secret");
        let mut unowned = ConfigMap::default();
        unowned.metadata.name = Some("unowned".into());
        config_maps.create(&PostParams::default(), &unowned).await.expect("creating an unowned ConfigMap");

        certificate_api.delete("web", &DeleteParams::background()).await.expect("deleting the owner");
        poll_until(
            "the owned objects to be collected",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async {
                let config_map = config_maps.get_opt("owned").await?;
                let secret = secrets.get_opt("owned").await?;
                Ok(match (config_map, secret) {
                    (None, None) => Ok(()),
                    (config_map, secret) => {
                        Err(format!("ConfigMap left: {}, Secret left: {}", config_map.is_some(), secret.is_some()))
                    }
                })
            },
        )
        .await
        .expect("garbage collection");
        assert!(config_maps.get_opt("unowned").await.expect("get").is_some(), "an unowned object was collected");

        // TokenRequest works (service-account signing keys), and RBAC applies to the token's identity.
        let token = control_plane.kubectl(&["create", "token", "default"]).await.expect("kubectl create token");
        let token = token.trim();
        assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
        let denied = control_plane
            .kubectl_command()
            .args(["--token", token, "get", "secrets"])
            .output()
            .await
            .expect("running kubectl");
        let stderr = String::from_utf8_lossy(&denied.stderr);
        assert!(!denied.status.success(), "the default ServiceAccount may list Secrets");
        assert!(
            stderr.contains("Forbidden") && stderr.contains("system:serviceaccount:default:default"),
            "RBAC denies the ServiceAccount by name: {stderr}"
        );
    })
    .await
}

/// One raw HTTP/1.1 GET; returns (status, body).
async fn http_get(address: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await??;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_string()))
}

/// A solver Pod, its Service and its Ingress, as the operator creates them (minus the hardening).
async fn create_solver_objects(
    client: &Client,
    namespace: &str,
    name: &str,
    domain: &str,
    token: &str,
    key_auth: &str,
) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {SOLVER_LABEL: "true", "app": name}},
        "spec": {"containers": [{
            "name": "solver",
            "image": "kacme:test",
            "args": ["solver", "--listen", "0.0.0.0:8089", "--domain", domain, "--token", token,
                     "--key-authorization", key_auth],
        }]},
    }))
    .expect("a Pod");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 8089, "targetPort": 8089}]},
    }))
    .expect("a Service");
    let ingress: Ingress = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"rules": [{"host": domain, "http": {"paths": [{
            "path": format!("/.well-known/acme-challenge/{token}"),
            "pathType": "Exact",
            "backend": {"service": {"name": name, "port": {"number": 8089}}},
        }]}}]},
    }))
    .expect("an Ingress");
    let pp = PostParams::default();
    Api::<Pod>::namespaced(client.clone(), namespace).create(&pp, &pod).await.expect("creating the solver Pod");
    Api::<Service>::namespaced(client.clone(), namespace).create(&pp, &service).await.expect("creating the Service");
    Api::<Ingress>::namespaced(client.clone(), namespace).create(&pp, &ingress).await.expect("creating the Ingress");
}

/// GETs through the stand-in until the challenge answers 200 (the stand-in's watches lag a little, as a real
/// ingress controller's do); returns the body.
async fn wait_for_challenge(stand_in: SocketAddr, host: &str, token: &str) -> String {
    let path = format!("/.well-known/acme-challenge/{token}");
    poll_until(
        "the challenge to be served through the stand-in",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            Ok(match http_get(stand_in, host, &path).await {
                Ok((200, body)) => Ok(body),
                Ok((status, body)) => Err(format!("HTTP {status}: {}", body.trim())),
                Err(error) => Err(error.to_string()),
            })
        },
    )
    .await
    .expect("the stand-in serves the challenge")
}

#[tokio::test(flavor = "multi_thread")]
async fn solver_pods_run_and_answer_through_their_service_and_ingress() {
    within(180, async {
        let control_plane = ControlPlane::start().await.expect("starting the control plane");
        let client = control_plane.client().await.expect("client");
        let address = control_plane.address().clone();
        let listen = address.socket_addr(address.free_port().expect("a free port"));
        let stand_in = SolverStandIn::start(client.clone(), KACME, listen).await.expect("starting the stand-in");
        control_plane.create_namespace("solvers").await.expect("creating a namespace");
        create_solver_objects(&client, "solvers", "solver-1", "app.example.test", "TOK", "TOK.THUMB").await;

        let body = wait_for_challenge(listen, "app.example.test", "TOK").await;
        assert_eq!(body, "TOK.THUMB");
        let challenge = "/.well-known/acme-challenge/TOK";
        let (status, _) = http_get(listen, "APP.example.test:80", challenge).await.expect("GET");
        assert_eq!(status, 200, "the Host is matched without port and case");
        let (status, body) = http_get(listen, "other.example.test", challenge).await.expect("GET");
        assert_eq!(status, 404, "a host without Ingress rule: {body}");
        let (status, body) =
            http_get(listen, "app.example.test", "/.well-known/acme-challenge/OTHER").await.expect("GET");
        assert_eq!(status, 404, "a path without Ingress rule: {body}");

        // The process answers as soon as it listens; the stand-in reports that in the Pod's status right after.
        let pods: Api<Pod> = Api::namespaced(client.clone(), "solvers");
        let status =
            poll_until("the Pod reported Running", Duration::from_secs(10), Duration::from_millis(50), || async {
                let status = pods.get("solver-1").await?.status.unwrap_or_default();
                Ok(if status.phase.as_deref() == Some("Running") {
                    Ok(status)
                } else {
                    Err(format!("{:?}", status.phase))
                })
            })
            .await
            .expect("the stand-in reports the Pod Running");
        let ready = status.conditions.iter().flatten().find(|c| c.type_ == "Ready").expect("a Ready condition");
        assert_eq!(ready.status, "True");
        assert_eq!(status.pod_ip, Some(address.ip().to_string()));

        let running = stand_in.running();
        assert_eq!(running.len(), 1, "{running:?}");
        let solver = running[0].clone();
        assert_eq!((solver.namespace.as_str(), solver.name.as_str()), ("solvers", "solver-1"));
        assert!(solver.args.contains(&solver.addr.to_string()), "the listen address is rewritten: {:?}", solver.args);

        // A solver that cannot start (no --domain) turns its Pod Failed.
        let broken: Pod = serde_json::from_value(json!({
            "metadata": {"name": "broken", "labels": {SOLVER_LABEL: "true"}},
            "spec": {"containers": [{"name": "solver", "image": "kacme:test", "args": ["solver", "--token", "T"]}]},
        }))
        .expect("a Pod");
        pods.create(&PostParams::default(), &broken).await.expect("creating the broken Pod");
        let message =
            poll_until("the broken Pod to be Failed", Duration::from_secs(30), Duration::from_millis(100), || async {
                let pod = pods.get("broken").await?;
                let status = pod.status.unwrap_or_default();
                Ok(match status.phase.as_deref() {
                    Some("Failed") => Ok(status.message.unwrap_or_default()),
                    phase => Err(format!("phase {phase:?}")),
                })
            })
            .await
            .expect("a Pod whose process exits is Failed");
        assert!(message.contains("--domain"), "the Failed message carries the solver's error: {message}");

        // Deleting the Pod stops its process.
        pods.delete("solver-1", &DeleteParams::default()).await.expect("deleting the Pod");
        poll_until("the solver process to stop", Duration::from_secs(30), Duration::from_millis(50), || async {
            let running = stand_in.running();
            Ok(if running.iter().any(|r| r.name == "solver-1") { Err(format!("{running:?}")) } else { Ok(()) })
        })
        .await
        .expect("the process of a deleted Pod stops");
        // The stand-in forgets the Pod when it has killed the process; the kernel reaps it a moment later.
        let proc_path = format!("/proc/{}", solver.pid);
        poll_until("the solver process to be reaped", Duration::from_secs(10), Duration::from_millis(50), || async {
            Ok(if std::path::Path::new(&proc_path).exists() { Err(format!("{proc_path} exists")) } else { Ok(()) })
        })
        .await
        .expect("the process of a deleted Pod is gone");
        assert!(
            tokio::net::TcpStream::connect(solver.addr).await.is_err(),
            "{} still accepts connections",
            solver.addr
        );
        let (status, body) = http_get(listen, "app.example.test", challenge).await.expect("GET");
        assert_eq!(status, 503, "an Ingress whose Pod is gone: {body}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn pebble_answers_its_directory_over_tls_trusted_through_its_listener_root() {
    within(60, async {
        let pebble = Pebble::start(PebbleOptions::default()).await.expect("starting Pebble");
        let trusting_pebble = HttpsClient::trusting(pebble.listener_root_pem()).expect("a TLS client");
        let directory = trusting_pebble.get(pebble.directory_url()).await.expect("GET the directory");
        assert_eq!(directory.status, 200, "{}", directory.body);
        let directory: Value = serde_json::from_str(&directory.body).expect("the directory is JSON");
        for field in ["newNonce", "newAccount", "newOrder"] {
            assert!(directory[field].as_str().is_some_and(|url| url.starts_with("https://")), "{field}: {directory}");
        }
        assert!(pebble.issuing_root_pem().contains("BEGIN CERTIFICATE"));
        assert_ne!(pebble.issuing_root_pem(), pebble.listener_root_pem());

        // The trust is real: a client trusting only another root refuses Pebble's listener.
        let other_root = StepCa::start(StepCaOptions::default()).await.expect("starting step-ca");
        let trusting_other = HttpsClient::trusting(other_root.root_pem()).expect("a TLS client");
        let error = trusting_other.get(pebble.directory_url()).await.expect_err("TLS must fail with a foreign root");
        let chain = kacme_testenv::error_chain(&error);
        assert!(chain.contains("certificate") || chain.contains("UnknownIssuer"), "{chain}");

        // challtestsrv resolves any name to the environment's address.
        let resolved = pebble.dns().resolve_a("anything.kacme.test").await.expect("DNS");
        assert_eq!(resolved, vec![pebble.address().ip()]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn step_ca_answers_its_directory_over_tls_trusted_through_its_root() {
    within(60, async {
        let step_ca = StepCa::start(StepCaOptions::default()).await.expect("starting step-ca");
        let client = HttpsClient::trusting(step_ca.root_pem()).expect("a TLS client");
        let directory = client.get(step_ca.directory_url()).await.expect("GET the directory");
        assert_eq!(directory.status, 200, "{}", directory.body);
        let directory: Value = serde_json::from_str(&directory.body).expect("the directory is JSON");
        assert!(directory["newOrder"].as_str().is_some_and(|url| url.starts_with("https://")), "{directory}");
        let resolved = step_ca.dns().resolve_a("anything.kacme.test").await.expect("DNS");
        assert_eq!(resolved, vec![step_ca.address().ip()]);
    })
    .await
}

/// Orders a certificate for `domain` over HTTP-01 with a real ACME client, serving the challenge through a
/// solver Pod + Service + Ingress and the stand-in; returns the issued chain (PEM).
async fn issue_through_the_stand_in(
    control_plane: &ControlPlane,
    stand_in: &SolverStandIn,
    directory_url: &str,
    tls_root_pem: &str,
    eab: Option<&ExternalAccountKey>,
    domain: &str,
) -> String {
    let client = control_plane.client().await.expect("client");
    let dir = TempDir::new("acme-client").expect("a temp dir");
    std::fs::write(dir.join("root.pem"), tls_root_pem).expect("writing the root");
    let (account, _) = Account::builder_with_root(dir.join("root.pem"))
        .expect("an ACME client")
        .create(
            &NewAccount { contact: &[], terms_of_service_agreed: true, only_return_existing: false },
            directory_url.to_string(),
            eab,
        )
        .await
        .expect("creating an ACME account");
    let mut order = account.new_order(&NewOrder::new(&[Identifier::Dns(domain.into())])).await.expect("a new order");
    let mut authorizations = order.authorizations();
    let mut index = 0;
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.expect("an authorization");
        if authorization.status == AuthorizationStatus::Valid {
            continue;
        }
        let mut challenge = authorization.challenge(ChallengeType::Http01).expect("an HTTP-01 challenge");
        let token = challenge.token.clone();
        let key_authorization = challenge.key_authorization().as_str().to_string();
        index += 1;
        let name = format!("solver-{index}");
        create_solver_objects(&client, "default", &name, domain, &token, &key_authorization).await;
        let served = wait_for_challenge(stand_in.listen_addr(), domain, &token).await;
        assert_eq!(served, key_authorization);
        challenge.set_ready().await.expect("telling the CA the challenge is ready");
    }
    let retries = RetryPolicy::new().timeout(Duration::from_secs(60));
    let status = order.poll_ready(&retries).await.expect("polling the order");
    assert_eq!(status, OrderStatus::Ready, "the CA did not validate the challenge: {:?}", order.state());
    order.finalize().await.expect("finalizing the order");
    order.poll_certificate(&retries).await.expect("downloading the certificate")
}

/// The chain's leaf certifies `domain` and chains up to `root_pem` (verified with webpki).
fn assert_chain_certifies(chain_pem: &str, root_pem: &str, domain: &str) {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain_pem.as_bytes()).collect::<Result<_, _>>().expect("PEM chain");
    let root = CertificateDer::from_pem_slice(root_pem.as_bytes()).expect("PEM root");
    let anchors = [webpki::anchor_from_trusted_cert(&root).expect("a trust anchor").to_owned()];
    let leaf = webpki::EndEntityCert::try_from(&chain[0]).expect("a leaf certificate");
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain[1..],
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .expect("the chain verifies up to the CA's root");
    leaf.verify_is_valid_for_subject_name(&ServerName::try_from(domain).expect("a DNS name"))
        .expect("the leaf certifies the domain");
}

#[tokio::test(flavor = "multi_thread")]
async fn pebble_validates_http01_through_the_stand_in_and_issues() {
    within(180, async {
        let (control_plane, pebble) =
            tokio::join!(ControlPlane::start(), Pebble::start(PebbleOptions { eab: true, ..Default::default() }));
        let (control_plane, pebble) = (control_plane.expect("control plane"), pebble.expect("Pebble"));
        let client = control_plane.client().await.expect("client");
        let stand_in = SolverStandIn::start(client, KACME, pebble.http01_addr()).await.expect("stand-in");

        let eab = pebble.eab().expect("EAB credentials");
        use base64::Engine as _;
        let hmac = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&eab.hmac_key).expect("base64url HMAC");
        let eab_key = ExternalAccountKey::new(eab.key_id.clone(), &hmac);
        let chain = issue_through_the_stand_in(
            &control_plane,
            &stand_in,
            pebble.directory_url(),
            pebble.listener_root_pem(),
            Some(&eab_key),
            "web.pebble.test",
        )
        .await;
        assert_chain_certifies(&chain, pebble.issuing_root_pem(), "web.pebble.test");
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn step_ca_validates_http01_on_port_80_through_the_stand_in_and_issues() {
    within(180, async {
        let (control_plane, step_ca) = tokio::join!(ControlPlane::start(), StepCa::start(StepCaOptions::default()));
        let (control_plane, step_ca) = (control_plane.expect("control plane"), step_ca.expect("step-ca"));
        let client = control_plane.client().await.expect("client");
        let stand_in = SolverStandIn::start(client, KACME, step_ca.http01_addr()).await.expect("stand-in");
        let chain = issue_through_the_stand_in(
            &control_plane,
            &stand_in,
            step_ca.directory_url(),
            step_ca.root_pem(),
            None,
            "web.step.test",
        )
        .await;
        assert_chain_certifies(&chain, step_ca.root_pem(), "web.step.test");
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_counts_each_users_requests_by_verb_and_answer() {
    within(60, async {
        let control_plane = ControlPlane::start_with_options(kacme_testenv::ControlPlaneOptions {
            audit_log: true,
            users: vec!["probe".into()],
            ..Default::default()
        })
        .await
        .expect("starting the control plane");
        let path = control_plane.audit_log_path().expect("an audit log").to_path_buf();
        let mut audit = kacme_testenv::AuditReader::from_end(&path).expect("reading the audit log");

        let kubeconfig = kube::config::Kubeconfig::read_from(control_plane.kubeconfig_of("probe").unwrap()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
        let probe: Api<ConfigMap> = Api::namespaced(Client::try_from(config).unwrap(), "default");
        let admin: Api<ConfigMap> = Api::namespaced(control_plane.client().await.unwrap(), "default");
        let mut map = ConfigMap::default();
        map.metadata.name = Some("probe".into());
        probe.create(&PostParams::default(), &map).await.expect("create as probe");
        probe.get("probe").await.expect("get as probe");
        let conflict = probe.create(&PostParams::default(), &map).await.expect_err("a second create conflicts");
        assert!(matches!(conflict, kube::Error::Api(ref s) if s.code == 409), "{conflict}");
        admin.get("probe").await.expect("get as admin");

        // The apiserver writes each line before it answers (blocking mode): everything is there already.
        let requests: Vec<_> = audit
            .read_new()
            .expect("reading the audit log")
            .into_iter()
            .filter(|r| r.user == "probe" && r.resource == "configmaps")
            .collect();
        let summary: Vec<(String, u16)> = requests.iter().map(|r| (r.verb.clone(), r.code)).collect();
        assert_eq!(summary, [("create".to_string(), 201), ("get".to_string(), 200), ("create".to_string(), 409)]);
        assert!(requests.iter().all(|r| r.namespace == "default"), "{requests:?}");
        assert_eq!(requests.iter().filter(|r| r.is_write()).count(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_pebble_serves_the_same_directory_url_and_forgets_everything() {
    within(60, async {
        let mut pebble = Pebble::start(PebbleOptions::default()).await.expect("starting Pebble");
        let https = HttpsClient::trusting(pebble.listener_root_pem()).expect("a TLS client");
        assert_eq!(https.get(pebble.directory_url()).await.expect("GET the directory").status, 200);
        let first_root = pebble.issuing_root_pem().to_string();

        pebble.stop();
        let down = https.get(pebble.directory_url()).await.expect_err("a stopped Pebble does not answer");
        assert!(kacme_testenv::error_chain(&down).to_lowercase().contains("refused"), "{down:#}");

        pebble.restart().await.expect("restarting Pebble");
        let directory = https.get(pebble.directory_url()).await.expect("GET the directory after the restart");
        assert_eq!(directory.status, 200, "same URL, same listener certificate: {}", directory.body);
        assert_ne!(pebble.issuing_root_pem(), first_root, "a new Pebble has a new issuing root");
        let counts = pebble.request_counts().expect("Pebble's request counts");
        assert!(counts.get("GET /dir").is_some_and(|n| *n >= 2), "requests of both runs are counted: {counts:?}");
        assert!(pebble.issued_serials().expect("issued serials").is_empty());
    })
    .await
}
