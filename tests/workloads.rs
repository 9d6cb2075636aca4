//! Automatic certificates end to end: the apiserver calls kacme's admission webhook over TLS for Pods that
//! the real ReplicaSet controller creates, workload Certificates become Ready through Pebble and complete a
//! real mutual-TLS handshake; annotated Ingresses get Certificates; CA bundles reach selected namespaces.

mod common;

use anyhow::{Context as _, Result};
use common::operator_env::OperatorEnv;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kacme::api::ClusterIssuer;
use kacme::api::names::{CA_CRT, TLS_CRT, TLS_KEY};
use kacme_testenv::{PebbleOptions, StepCaOptions, poll_until};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// An environment whose operator runs with the arguments `args` gives for the environment's loopback
/// address (the operator is restarted with them right after the start).
async fn env_with(args: impl FnOnce(std::net::IpAddr) -> Vec<String>) -> OperatorEnv {
    restarted_with(OperatorEnv::with_pebble(PebbleOptions::default()).await.unwrap(), args)
}

fn restarted_with(mut env: OperatorEnv, args: impl FnOnce(std::net::IpAddr) -> Vec<String>) -> OperatorEnv {
    env.kill_operator();
    env.extra_args = args(env.ca.ip());
    env.start_operator().unwrap();
    env
}

/// Arguments that serve the webhook on the environment's own loopback address.
fn webhook_args(env_ip: std::net::IpAddr) -> Vec<String> {
    let port = std::net::TcpListener::bind((env_ip, 0)).unwrap().local_addr().unwrap().port();
    vec![
        "--webhook-address".into(),
        format!("{env_ip}:{port}"),
        "--webhook-url".into(),
        format!("https://{env_ip}:{port}/mutate-pods"),
    ]
}

fn deployment_yaml(name: &str, replicas: u32, annotations: &str, containers: &[&str]) -> String {
    let containers: String =
        containers.iter().map(|c| format!("      - name: {c}\n        image: registry.test/{c}:1\n")).collect();
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: apps\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n      annotations:\n{annotations}    spec:\n      containers:\n{containers}"
    )
}

fn pod_yaml(namespace: &str, name: &str, annotations: &[(&str, &str)]) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>()},
        "spec": {"containers": [{"name": "app", "image": "registry.test/app:1"}]}
    }))
    .unwrap()
}

async fn pods_of(env: &OperatorEnv, app: &str, count: usize) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "apps");
    poll_until(&format!("{count} Pods of {app}"), WAIT, POLL, || async {
        let list = pods.list(&ListParams::default().labels(&format!("app={app}"))).await?.items;
        Ok(if list.len() == count { Ok(list) } else { Err(format!("{} Pods", list.len())) })
    })
    .await
}

/// (secret volume name, mount paths per container) of a Pod.
fn mounts(pod: &Pod) -> (Option<String>, Vec<(String, Vec<(String, Option<bool>)>)>) {
    let spec = pod.spec.as_ref().unwrap();
    let secret = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "kacme-tls")
        .and_then(|v| v.secret.as_ref().and_then(|s| s.secret_name.clone()));
    let containers = spec
        .containers
        .iter()
        .map(|c| {
            let mounts = c
                .volume_mounts
                .iter()
                .flatten()
                .filter(|m| m.name == "kacme-tls")
                .map(|m| (m.mount_path.clone(), m.read_only))
                .collect();
            (c.name.clone(), mounts)
        })
        .collect();
    (secret, containers)
}

/// TLS material of a workload's Secret.
struct Material {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<rustls::RootCertStore>,
}

impl Material {
    async fn of_secret(env: &OperatorEnv, name: &str) -> Material {
        let data = env.secrets("apps").get(name).await.unwrap().data.unwrap();
        let chain = CertificateDer::pem_slice_iter(&data[TLS_CRT].0).collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(&data[TLS_KEY].0).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for root in CertificateDer::pem_slice_iter(&data[CA_CRT].0) {
            roots.add(root.unwrap()).unwrap();
        }
        Material { chain, key, roots: Arc::new(roots) }
    }

    /// A certificate for `name` from a CA nobody trusts here.
    fn foreign(name: &str) -> Material {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = params.signed_by(&key, &issuer).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        Material {
            chain: vec![leaf.der().clone()],
            key: PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            roots: Arc::new(roots),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// One mutual-TLS exchange over loopback: `server` requires a client certificate that verifies with its
/// ca.crt, `client` verifies the server as `server_name` with its ca.crt. Returns (server side, client side).
async fn mutual_tls(
    server: &Material,
    client: &Material,
    server_name: &str,
) -> (Result<(), String>, Result<(), String>) {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(server.roots.clone(), provider()).build().unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(server.chain.clone(), server.key.clone_key())
        .unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(client.roots.clone())
        .with_client_auth_cert(client.chain.clone(), client.key.clone_key())
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let server_side = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(stream).await.map_err(|e| e.to_string())?;
        let mut hello = [0u8; 5];
        tls.read_exact(&mut hello).await.map_err(|e| e.to_string())?;
        tls.write_all(b"olleh").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let client_side = async {
        let stream = tokio::net::TcpStream::connect(address).await.map_err(|e| e.to_string())?;
        let mut tls = connector.connect(name, stream).await.map_err(|e| e.to_string())?;
        tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
        let mut answer = [0u8; 5];
        tls.read_exact(&mut answer).await.map_err(|e| e.to_string())?;
        if &answer == b"olleh" { Ok(()) } else { Err("wrong answer".into()) }
    };
    let client_result =
        tokio::time::timeout(Duration::from_secs(10), client_side).await.unwrap_or(Err("timeout".into()));
    let server_result = match tokio::time::timeout(Duration::from_secs(10), server_side).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(join.to_string()),
        Err(_) => Err("timeout".into()),
    };
    (server_result, client_result)
}

/// The Pods of the namespace `plain`, which the webhook does not select.
fn elsewhere_pods(env: &OperatorEnv) -> Api<Pod> {
    Api::namespaced(env.client.clone(), "plain")
}

fn extended_key_usages(der: &[u8]) -> (bool, bool) {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).unwrap();
    let usages = certificate.extended_key_usage().unwrap().map(|e| e.value.clone());
    usages.map_or((false, false), |u| (u.server_auth, u.client_auth))
}

#[tokio::test(flavor = "multi_thread")]
async fn workloads_get_mounted_certificates_through_the_webhook_and_complete_mutual_tls() {
    let started = Instant::now();
    // step-ca: its certificates carry server auth and client auth (Debian's Pebble 2.4 gives server auth only).
    let env = restarted_with(OperatorEnv::with_step_ca(StepCaOptions::default()).await.unwrap(), webhook_args);
    let kubectl = |args: &'static [&'static str]| env.control_plane.kubectl(args);
    kubectl(&["label", "namespace", "apps", "kacme.dev/webhook=enabled"]).await.unwrap();
    env.control_plane.create_namespace("plain").await.unwrap();
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();

    // The operator makes its serving certificate and the MutatingWebhookConfiguration carrying its CA.
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(env.client.clone());
    poll_until("the webhook configuration with a caBundle", WAIT, POLL, || async {
        Ok(match configurations.get_opt("kacme").await? {
            Some(c) if kacme::webhook::configuration::current_ca_bundle(&c).is_some_and(|b| !b.is_empty()) => Ok(()),
            _ => Err("not yet".to_string()),
        })
    })
    .await
    .with_context(|| env.operator_log())
    .unwrap();

    let annotations = |names: &str, extra: &str| {
        format!("        kacme.dev/names: \"{names}\"\n        kacme.dev/issuer: ca\n{extra}")
    };
    env.apply(&deployment_yaml(
        "alpha",
        2,
        &annotations("alpha.apps.test", "        kacme.dev/containers: app\n"),
        &["app", "sidecar"],
    ))
    .await
    .unwrap();
    env.apply(&deployment_yaml("beta", 1, &annotations("beta.apps.test", ""), &["app"])).await.unwrap();

    // Pods made by the real ReplicaSet controller carry the volume, the mount (only in the selected container)
    // and the workload label.
    for pod in pods_of(&env, "alpha", 2).await.unwrap() {
        assert_eq!(pod.labels().get("kacme.dev/workload").map(String::as_str), Some("alpha"));
        let (secret, containers) = mounts(&pod);
        assert_eq!(secret.as_deref(), Some("alpha-kacme-tls"));
        assert_eq!(
            containers,
            [("app".to_string(), vec![("/var/run/kacme".to_string(), Some(true))]), ("sidecar".to_string(), vec![]),]
        );
    }
    let beta_pod = pods_of(&env, "beta", 1).await.unwrap().remove(0);
    assert_eq!(mounts(&beta_pod).0.as_deref(), Some("beta-kacme-tls"));

    // One Certificate per workload, Ready through Pebble, with server and client auth.
    let ready_started = Instant::now();
    let alpha = env.wait_ready("apps", "alpha-kacme", WAIT).await.unwrap();
    env.wait_ready("apps", "beta-kacme", WAIT).await.unwrap();
    eprintln!("workload Certificates Ready {:.2}s after their Pods", ready_started.elapsed().as_secs_f64());
    assert_eq!(alpha.spec.dns_names, ["alpha.apps.test"]);
    assert_eq!(alpha.spec.secret_name, "alpha-kacme-tls");
    let alpha_tls = Material::of_secret(&env, "alpha-kacme-tls").await;
    let beta_tls = Material::of_secret(&env, "beta-kacme-tls").await;
    assert_eq!(extended_key_usages(&alpha_tls.chain[0]), (true, true), "server auth and client auth");
    assert_eq!(extended_key_usages(&beta_tls.chain[0]), (true, true), "server auth and client auth");

    // Mutual TLS between the two workloads, in both roles, each verifying the other with its ca.crt.
    let (server, client) = mutual_tls(&beta_tls, &alpha_tls, "beta.apps.test").await;
    assert_eq!((server, client), (Ok(()), Ok(())), "alpha (client) -> beta (server)");
    let (server, client) = mutual_tls(&alpha_tls, &beta_tls, "alpha.apps.test").await;
    assert_eq!((server, client), (Ok(()), Ok(())), "beta (client) -> alpha (server)");
    // A certificate from another CA is refused, as a client and as a server.
    // (The foreign side trusts the workloads' CA, so that the only failing check is the workload's.)
    let mut foreign = Material::foreign("beta.apps.test");
    foreign.roots = beta_tls.roots.clone();
    let (server, _) = mutual_tls(&beta_tls, &foreign, "beta.apps.test").await;
    assert!(server.as_ref().is_err_and(|e| e.contains("UnknownIssuer")), "beta refuses the client: {server:?}");
    let (_, client) = mutual_tls(&foreign, &alpha_tls, "beta.apps.test").await;
    assert!(client.as_ref().is_err_and(|e| e.contains("UnknownIssuer")), "alpha refuses the server: {client:?}");

    // Bad annotations are refused at admission with a message naming the annotation and the problem.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "apps");
    let bad = pod_yaml("apps", "bad", &[("kacme.dev/names", "not a name"), ("kacme.dev/issuer", "ca")]);
    let error = pods.create(&PostParams::default(), &bad).await.unwrap_err().to_string();
    assert!(error.contains("annotation kacme.dev/names") && error.contains("\"not a name\""), "{error}");
    let bad = pod_yaml("apps", "bad", &[("kacme.dev/names", "bad.apps.test")]);
    let error = pods.create(&PostParams::default(), &bad).await.unwrap_err().to_string();
    assert!(error.contains("needs an issuer"), "{error}");
    // Pods without the annotations are untouched.
    let plain = pods.create(&PostParams::default(), &pod_yaml("apps", "plain", &[])).await.unwrap();
    assert_eq!(mounts(&plain).0, None);
    assert!(plain.labels().get("kacme.dev/workload").is_none());
    assert_eq!(mounts(&plain).1, [("app".to_string(), vec![])]);

    // Attacks on alpha's Certificate, none of which changes it: (1) a bare Pod named alpha (the webhook labels
    // it `kacme.dev/workload: alpha`) asking for other names; (2) a Pod that names alpha's real ReplicaSet as
    // its controller, asking for other names; (3) a Pod naming a ReplicaSet UID that does not exist; (4) a
    // Pod in a namespace the webhook does not select, labelled as alpha by itself.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(env.client.clone(), "apps");
    let alpha_uid = deployments.get("alpha").await.unwrap().metadata.uid.unwrap();
    let alpha_labels = |c: &kacme::api::Certificate| {
        (c.labels().get("kacme.dev/workload-kind").cloned(), c.labels().get("kacme.dev/workload-uid").cloned())
    };
    assert_eq!(alpha_labels(&alpha), (Some("Deployment".into()), Some(alpha_uid.clone())), "identity recorded");
    let evil = [("kacme.dev/names", "evil.apps.test"), ("kacme.dev/issuer", "ca")];
    let bare = pods.create(&PostParams::default(), &pod_yaml("apps", "alpha", &evil)).await.unwrap();
    assert_eq!(bare.labels().get("kacme.dev/workload").map(String::as_str), Some("alpha"));
    let replica_sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(env.client.clone(), "apps");
    let alpha_rs = replica_sets.list(&ListParams::default().labels("app=alpha")).await.unwrap().items.remove(0);
    let claiming = |name: &str, uid: &str| {
        let mut pod = pod_yaml("apps", name, &evil);
        pod.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: alpha_rs.name_any(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        pod
    };
    let rs_uid = alpha_rs.metadata.uid.clone().unwrap();
    let forged = pods.create(&PostParams::default(), &claiming("alpha-forged", &rs_uid)).await.unwrap();
    assert_eq!(mounts(&forged).0.as_deref(), Some("alpha-kacme-tls"), "the webhook names it alpha");
    pods.create(&PostParams::default(), &claiming("alpha-stale", "00000000-0000-0000-0000-000000000000"))
        .await
        .unwrap();
    let mut outside = pod_yaml("plain", "alpha", &evil);
    outside.metadata.labels = Some([("kacme.dev/workload".to_string(), "alpha".to_string())].into());
    elsewhere_pods(&env).create(&PostParams::default(), &outside).await.unwrap();
    // A Pod created after them that gets its Certificate shows that a pass has seen them all.
    let gamma = [("kacme.dev/names", "gamma.apps.test"), ("kacme.dev/issuer", "ca")];
    pods.create(&PostParams::default(), &pod_yaml("apps", "gamma", &gamma)).await.unwrap();
    env.wait_certificate("apps", "gamma-kacme", WAIT, "gamma's Certificate", |_| true).await.unwrap();
    let after = env.certificates("apps").get("alpha-kacme").await.unwrap();
    assert_eq!(after.spec, alpha.spec, "alpha's Certificate is unchanged");
    assert_eq!(alpha_labels(&after), (Some("Deployment".into()), Some(alpha_uid)), "and still alpha's");
    let in_plain = env.certificates("plain").list(&ListParams::default()).await.unwrap().items;
    assert!(in_plain.is_empty(), "no workload Certificate in a namespace the webhook does not select: {in_plain:?}");

    // No Pod of beta left: its Certificate goes; alpha's stays.
    kubectl(&["scale", "deployment", "beta", "-n", "apps", "--replicas=0"]).await.unwrap();
    env.wait_certificate_gone("apps", "beta-kacme", WAIT).await.unwrap();
    assert!(env.certificates("apps").get_opt("alpha-kacme").await.unwrap().is_some());

    // With the webhook down, namespaces it does not select still admit Pods; selected ones wait for it.
    let mut env = env;
    env.kill_operator();
    let elsewhere: Api<Pod> = Api::namespaced(env.client.clone(), "plain");
    let annotated = [("kacme.dev/names", "x.plain.test"), ("kacme.dev/issuer", "ca")];
    let admitted =
        elsewhere.create(&PostParams::default(), &pod_yaml("plain", "while-down", &annotated)).await.unwrap();
    assert_eq!(mounts(&admitted).0, None, "not selected, so not mutated");
    let refused = pods.create(&PostParams::default(), &pod_yaml("apps", "while-down", &annotated)).await;
    assert!(refused.is_err(), "failurePolicy Fail in a selected namespace");
    eprintln!("workload test took {:.1}s", started.elapsed().as_secs_f64());
}

fn ingress_yaml(annotations: &str, tls: &[(&str, &[&str])]) -> String {
    let tls: String = tls
        .iter()
        .map(|(secret, hosts)| {
            let hosts: String = hosts.iter().map(|h| format!("    - {h}\n")).collect();
            format!("  - secretName: {secret}\n    hosts:\n{hosts}")
        })
        .collect();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: web\n  namespace: apps\n  annotations:\n{annotations}spec:\n  ingressClassName: public\n  rules:\n  - host: web.example.test\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend:\n          service:\n            name: web\n            port:\n              number: 80\n  tls:\n{tls}"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_annotated_ingress_gets_its_certificates_and_loses_them_with_the_annotation() {
    let started = Instant::now();
    let env = OperatorEnv::with_pebble(PebbleOptions::default()).await.unwrap();
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    // A Certificate the user made under a name the Ingress will ask for: kacme must leave it alone.
    env.apply("apiVersion: kacme.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: taken-tls\n  namespace: apps\nspec:\n  secretName: taken-tls\n  issuerRef:\n    name: ca\n  dnsNames:\n  - mine.example.test\n")
        .await
        .unwrap();
    let annotation = "    kacme.dev/issuer: ca\n    kacme.dev/private-key-algorithm: RSA\n";
    env.apply(&ingress_yaml(annotation, &[("web-tls", &["web.example.test"]), ("taken-tls", &["taken.example.test"])]))
        .await
        .unwrap();
    let certificate = env.wait_ready("apps", "web-tls", WAIT).await.unwrap();
    eprintln!("Ingress Certificate Ready {:.2}s after the start", started.elapsed().as_secs_f64());
    let owner = &certificate.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Ingress", "web", Some(true)));
    assert_eq!(certificate.spec.dns_names, ["web.example.test"]);
    assert_eq!(certificate.spec.private_key.as_ref().and_then(|k| k.algorithm), Some(kacme::api::KeyAlgorithm::Rsa));
    let taken = env.certificates("apps").get("taken-tls").await.unwrap();
    assert_eq!(taken.spec.dns_names, ["mine.example.test"], "the user's Certificate is untouched");
    assert!(taken.owner_references().is_empty());

    // Hosts change: the Certificate follows.
    env.apply(&ingress_yaml(annotation, &[("web-tls", &["web.example.test", "www.example.test"])])).await.unwrap();
    env.wait_certificate("apps", "web-tls", WAIT, "dnsNames follow the hosts", |c| {
        c.spec.dns_names == ["web.example.test", "www.example.test"]
    })
    .await
    .unwrap();

    // The annotation goes: so do the Certificates the Ingress owns, and only those.
    env.control_plane.kubectl(&["annotate", "ingress", "web", "-n", "apps", "kacme.dev/issuer-"]).await.unwrap();
    env.wait_certificate_gone("apps", "web-tls", WAIT).await.unwrap();
    assert!(env.certificates("apps").get_opt("taken-tls").await.unwrap().is_some());
    eprintln!("Ingress test took {:.1}s", started.elapsed().as_secs_f64());
}

fn pem_count(text: &str) -> usize {
    text.matches("-----BEGIN CERTIFICATE-----").count()
}

#[tokio::test(flavor = "multi_thread")]
async fn issuer_ca_bundles_are_published_in_selected_namespaces_and_kept_current() {
    let started = Instant::now();
    let env = env_with(|_| vec!["--ca-bundle-namespace-selector".into(), "kacme.dev/ca-bundle=enabled".into()]).await;
    env.control_plane.kubectl(&["label", "namespace", "apps", "kacme.dev/ca-bundle=enabled"]).await.unwrap();
    env.control_plane.create_namespace("other").await.unwrap();
    env.control_plane.kubectl(&["label", "namespace", "other", "kacme.dev/ca-bundle=enabled"]).await.unwrap();
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    let config_maps = |namespace: &str| -> Api<ConfigMap> { Api::namespaced(env.client.clone(), namespace) };
    let wait_data = |namespace: &'static str,
                     what: &'static str,
                     check: fn(&std::collections::BTreeMap<String, String>) -> bool| {
        let api = config_maps(namespace);
        async move {
            poll_until(what, WAIT, POLL, || async {
                Ok(match api.get_opt("kacme-ca-bundle").await? {
                    Some(c) if check(c.data.as_ref().unwrap_or(&Default::default())) => Ok(()),
                    Some(c) => Err(format!("data keys {:?}", c.data.unwrap_or_default().keys().collect::<Vec<_>>())),
                    None => Err("no ConfigMap".into()),
                })
            })
            .await
        }
    };
    // The Issuer's bundle (Pebble's two roots) in its own namespace only.
    wait_data("apps", "the Issuer's bundle in apps", |d| {
        d.get("ca.crt").is_some_and(|c| pem_count(c) == 2) && d.contains_key("issuer-ca.crt")
    })
    .await
    .with_context(|| env.operator_log())
    .unwrap();
    assert!(config_maps("other").get_opt("kacme-ca-bundle").await.unwrap().is_none(), "no issuer visible there yet");

    // A ClusterIssuer's bundle reaches every selected namespace, and follows its changes.
    let key = rcgen::KeyPair::generate().unwrap();
    let first = rcgen::CertificateParams::new(vec!["corp-a".to_string()]).unwrap().self_signed(&key).unwrap().pem();
    let second = rcgen::CertificateParams::new(vec!["corp-b".to_string()]).unwrap().self_signed(&key).unwrap().pem();
    let cluster_issuer = |bundle: &str| {
        let bundle: String = bundle.lines().map(|l| format!("      {l}\n")).collect();
        format!(
            "apiVersion: kacme.dev/v1alpha1\nkind: ClusterIssuer\nmetadata:\n  name: corp\nspec:\n  acme:\n    server: https://127.0.0.1:1/directory\n    caBundle: |\n{bundle}    privateKeySecretRef:\n      name: corp-account\n    solvers:\n    - http01:\n        ingress: {{}}\n"
        )
    };
    env.apply(&cluster_issuer(&first)).await.unwrap();
    wait_data("other", "the ClusterIssuer's bundle in other", |d| {
        d.get("ca.crt").is_some_and(|c| pem_count(c) == 1) && d.contains_key("clusterissuer-corp.crt")
    })
    .await
    .unwrap();
    wait_data("apps", "both bundles in apps", |d| d.get("ca.crt").is_some_and(|c| pem_count(c) == 3)).await.unwrap();
    let api: Api<ClusterIssuer> = Api::all(env.client.clone());
    let patch = serde_json::json!({"spec": {"acme": {"caBundle": format!("{first}{second}")}}});
    api.patch("corp", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_data("other", "the changed bundle in other", |d| {
        d.get("clusterissuer-corp.crt").is_some_and(|c| pem_count(c) == 2)
    })
    .await
    .unwrap();

    // A namespace no longer selected loses the ConfigMap.
    env.control_plane.kubectl(&["label", "namespace", "other", "kacme.dev/ca-bundle-"]).await.unwrap();
    let other = config_maps("other");
    poll_until("the ConfigMap gone from other", WAIT, POLL, || async {
        Ok(if other.get_opt("kacme-ca-bundle").await?.is_none() { Ok(()) } else { Err("still there".to_string()) })
    })
    .await
    .unwrap();
    eprintln!("CA bundle test took {:.1}s", started.elapsed().as_secs_f64());
}

/// A configuration as a Helm chart installs it: no caBundle (kacme fills it in).
fn chart_configuration_yaml(url: &str) -> String {
    format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata:\n  name: kacme-chart\nwebhooks:\n- name: pods.kacme.dev\n  admissionReviewVersions: [v1]\n  sideEffects: None\n  failurePolicy: Fail\n  timeoutSeconds: 5\n  clientConfig:\n    url: {url}\n  namespaceSelector:\n    matchLabels:\n      kacme.dev/webhook: enabled\n  rules:\n  - apiGroups: [\"\"]\n    apiVersions: [v1]\n    operations: [CREATE]\n    resources: [pods]\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_installed_webhook_configuration_gets_the_ca_bundle_kept_across_restarts_and_restored() {
    let started = Instant::now();
    let mut url = String::new();
    let mut env = restarted_with(OperatorEnv::with_pebble(PebbleOptions::default()).await.unwrap(), |ip| {
        let mut args = webhook_args(ip);
        url = args[3].clone();
        args.extend(["--webhook-manage-configuration=false".into(), "--webhook-configuration=kacme-chart".into()]);
        args
    });
    env.apply(&chart_configuration_yaml(&url)).await.unwrap();
    env.control_plane.kubectl(&["label", "namespace", "apps", "kacme.dev/webhook=enabled"]).await.unwrap();
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(env.client.clone());
    let bundle = || async {
        let configuration = configurations.get("kacme-chart").await.unwrap();
        kacme::webhook::configuration::current_ca_bundle(&configuration).unwrap_or_default()
    };
    let wait_bundle = |what: &'static str| {
        poll_until(what, WAIT, POLL, move || async move {
            let current = bundle().await;
            Ok(if current.contains("BEGIN CERTIFICATE") { Ok(current) } else { Err("no caBundle".to_string()) })
        })
    };
    let first = wait_bundle("the caBundle filled in").await.with_context(|| env.operator_log()).unwrap();
    let configuration = configurations.get("kacme-chart").await.unwrap();
    let webhook = &configuration.webhooks.as_ref().unwrap()[0];
    assert_eq!(webhook.client_config.url.as_deref(), Some(url.as_str()), "the rest is the chart's");
    assert_eq!(webhook.failure_policy.as_deref(), Some("Fail"));

    // The apiserver calls kacme through the chart's configuration.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "apps");
    let annotated = [("kacme.dev/names", "one.apps.test"), ("kacme.dev/issuer", "ca")];
    let pod = pods.create(&PostParams::default(), &pod_yaml("apps", "one", &annotated)).await.unwrap();
    assert_eq!(mounts(&pod).0.as_deref(), Some("one-kacme-tls"));

    // A restarted operator serves the same certificate (it is kept in a Secret) and leaves the bundle be.
    let serving = env.secrets("kacme").get("kacme-webhook-tls").await.unwrap().data.unwrap()[TLS_CRT].clone();
    env.kill_operator();
    env.start_operator().unwrap();
    let pod = poll_until("a Pod admitted by the restarted operator", WAIT, POLL, || async {
        Ok(match pods.create(&PostParams::default(), &pod_yaml("apps", "two", &annotated)).await {
            Ok(pod) => Ok(pod),
            Err(error) => Err(error.to_string()),
        })
    })
    .await
    .unwrap();
    assert_eq!(mounts(&pod).0.as_deref(), Some("two-kacme-tls"));
    assert_eq!(env.secrets("kacme").get("kacme-webhook-tls").await.unwrap().data.unwrap()[TLS_CRT], serving);
    assert_eq!(bundle().await, first);

    // Someone empties the caBundle (a chart upgrade would): kacme restores it.
    let patch = serde_json::json!([{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": ""}]);
    configurations
        .patch("kacme-chart", &PatchParams::default(), &Patch::Json::<()>(serde_json::from_value(patch).unwrap()))
        .await
        .unwrap();
    let restored = wait_bundle("the caBundle restored").await.unwrap();
    assert_eq!(restored, first);
    eprintln!("installed-configuration test took {:.1}s", started.elapsed().as_secs_f64());
}
