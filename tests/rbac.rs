//! The chart's RBAC is sufficient and minimal: `kacme controller` running with a token of the chart's
//! ServiceAccount (TokenRequest) issues certificates end to end, every right the chart grants is used on the
//! way (read from the apiserver's audit log), nothing it does is refused, and the ServiceAccount is denied
//! what the operator does not need. The chart's webhook is on: the operator may patch only the caBundle of the
//! chart's own MutatingWebhookConfiguration (and watch that one object).

mod common;

use common::helm::{Helm, chart_dir};
use common::operator_env::{Ca, OperatorEnv, OperatorLaunch};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::Namespace;
use kacme_testenv::{ApiRequest, Pebble, PebbleOptions, poll_until};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

const SERVICE_ACCOUNT: &str = "system:serviceaccount:kacme:kacme";

fn certificate_yaml(name: &str, issuer_kind: &str, issuer: &str) -> String {
    format!(
        "apiVersion: kacme.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: {name}\n  namespace: apps\nspec:\n  secretName: {name}-tls\n  issuerRef:\n    name: {issuer}\n    kind: {issuer_kind}\n  dnsNames:\n  - {name}.example.test\n"
    )
}

/// A kubeconfig that authenticates with `token` to the environment's apiserver.
fn token_kubeconfig(env: &OperatorEnv, token: &str, path: &Path) {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(env.control_plane.ca_pem());
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": env.control_plane.server(), "certificate-authority-data": ca}}],
        "users": [{"name": "kacme", "user": {"token": token}}],
        "contexts": [{"name": "kacme", "context": {"cluster": "test", "user": "kacme", "namespace": "kacme"}}],
        "current-context": "kacme",
    });
    std::fs::write(path, serde_json::to_string_pretty(&kubeconfig).unwrap()).unwrap();
}

/// The rights the chart grants the operator (its ClusterRole and leader-election Role), as
/// `verb resource[/subresource]`.
fn granted_rights(manifest: &str) -> BTreeSet<String> {
    let mut rights = BTreeSet::new();
    for document in serde_yaml::Deserializer::from_str(manifest) {
        let object: Value = serde::Deserialize::deserialize(document).unwrap();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        if !matches!((kind, name), ("ClusterRole", "kacme-controller") | ("Role", "kacme-leader-election")) {
            continue;
        }
        for rule in object["rules"].as_sequence().unwrap() {
            for resource in rule["resources"].as_sequence().unwrap() {
                for verb in rule["verbs"].as_sequence().unwrap() {
                    rights.insert(format!("{} {}", verb.as_str().unwrap(), resource.as_str().unwrap()));
                }
            }
        }
    }
    rights
}

/// Rights that an end-to-end run does not exercise as requests of their own, and why they are granted.
const NOT_SEEN_AS_REQUESTS: &[(&str, &str)] = &[
    (
        "update certificates/finalizers",
        "checked by the OwnerReferencesPermissionEnforcement admission plugin when a solver object is created \
         with blockOwnerDeletion (an authorization check, not a request); without it those creations are refused",
    ),
    ("patch events", "kacme's Event publisher patches an Event whose very same message repeats into a series"),
    (
        "create certificates",
        "the Certificates of annotated Ingresses are created by server-side apply: a patch request that the \
         apiserver authorizes as create when the object does not exist yet",
    ),
    (
        "get httproutes",
        "the gatewayHTTPRoute solver's rights (tests/gateway.rs uses them): this run has no Gateway API CRDs",
    ),
    ("create httproutes", "the gatewayHTTPRoute solver's rights (tests/gateway.rs); no Gateway API CRDs here"),
    ("delete httproutes", "the gatewayHTTPRoute solver's rights (tests/gateway.rs); no Gateway API CRDs here"),
    (
        "deletecollection httproutes",
        "the gatewayHTTPRoute solver's rights (tests/gateway.rs); no Gateway API CRDs here",
    ),
    ("list gateways", "annotated Gateways (tests/gateway.rs, tests/node_e2e.rs); this run has no Gateway API CRDs"),
    ("watch gateways", "annotated Gateways (tests/gateway.rs, tests/node_e2e.rs); no Gateway API CRDs here"),
    ("list referencegrants", "Gateways' cross-namespace Secrets (tests/gateway.rs); no Gateway API CRDs here"),
    ("watch referencegrants", "Gateways' cross-namespace Secrets (tests/gateway.rs); no Gateway API CRDs here"),
    ("list xlistenersets", "annotated XListenerSets (tests/gateway.rs); no Gateway API CRDs here"),
    ("watch xlistenersets", "annotated XListenerSets (tests/gateway.rs); no Gateway API CRDs here"),
    ("get certificates", "a Certificate is read afresh when the cache may predate kacme's own status write"),
    (
        "get issuers",
        "an Issuer is read from the watch cache; the apiserver is asked only while the cache does not hold it Ready \
         (at start-up, or while it is missing or not Ready)",
    ),
    ("get clusterissuers", "as Issuers: read from the apiserver only while the watch cache does not hold it Ready"),
    ("get namespaces", "a namespace's labels are read only when an issuer's policy has a namespaceSelector"),
    (
        "get replicasets",
        "a workload Pod's controller is read only when the webhook marked a Pod (tests/workloads.rs covers it; this \
         scenario runs no workload)",
    ),
    ("get statefulsets", "as replicasets: the controller of a marked workload Pod"),
    ("get daemonsets", "as replicasets: the controller of a marked workload Pod"),
    ("get jobs", "as replicasets: the controller of a marked workload Pod"),
];

/// Whether the client's user may `verb` `resource` (`[name@]resource[/subresource]`) of `group` in `namespace`.
async fn access_allowed(client: &kube::Client, verb: &str, group: &str, resource: &str, namespace: &str) -> bool {
    let (name, resource) = match resource.split_once('@') {
        Some((name, resource)) => (Some(name.to_string()), resource),
        None => (None, resource),
    };
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r.to_string(), Some(s.to_string())),
        None => (resource.to_string(), None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource),
                subresource,
                name,
                namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await.expect("a SelfSubjectAccessReview");
    answer.status.is_some_and(|s| s.allowed)
}

const INGRESS: &str = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: shop
  namespace: apps
  annotations:
    kacme.dev/issuer: ca
spec:
  ingressClassName: public
  rules:
  - host: shop.example.test
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: shop
            port:
              number: 80
  tls:
  - secretName: shop-tls
    hosts: [shop.example.test]
";

/// A Pod asking for a per-Pod certificate (created before its namespace is the webhook's), its bound token,
/// and a CSR sent to the operator's endpoint until the chain comes back.
async fn per_pod_certificate(env: &OperatorEnv, connect: &str) {
    use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
    use kube::ResourceExt;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "agent-0", "namespace": "apps", "annotations": {
            "kacme.dev/per-pod": "true", "kacme.dev/issuer": "ca", "kacme.dev/names": "${POD_NAME}.pods.test",
        }},
        "spec": {"containers": [{"name": "app", "image": "registry.test/app:1"}]}
    }))
    .unwrap();
    let pod = Api::<Pod>::namespaced(env.client.clone(), "apps").create(&PostParams::default(), &pod).await.unwrap();
    // Only Pods of the namespaces the webhook serves may ask (labelled after the Pod's creation: no Pod of this
    // test could reach the webhook through the chart's Service).
    env.control_plane.kubectl(&["label", "namespace", "apps", "kacme.dev/webhook=enabled"]).await.unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), "apps");
    poll_until("the default ServiceAccount of apps", Duration::from_secs(30), Duration::from_millis(100), || async {
        Ok(accounts.get_opt("default").await?.map(|_| ()).ok_or_else(|| "not yet".to_string()))
    })
    .await
    .unwrap();
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["kacme.dev/agent".into()],
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.metadata.uid.clone(),
            }),
            expiration_seconds: Some(3600),
        },
        ..TokenRequest::default()
    };
    let token = accounts.create_token_request("default", &PostParams::default(), &request).await.unwrap();
    let token = token.status.unwrap().token;
    let serving = env.secrets("kacme").get("kacme-webhook-tls").await.unwrap();
    let ca_pem = String::from_utf8(serving.data.unwrap()["ca.crt"].0.clone()).unwrap();
    let config = kacme::pod_certificate::agent::AgentConfig {
        url: "https://kacme-webhook.kacme.svc:443/pod-certificate".into(),
        connect: Some(connect.into()),
        ca_pem,
        token_path: "/nonexistent".into(),
        dir: "/nonexistent".into(),
        algorithm: kacme::api::KeyAlgorithm::Ecdsa,
    };
    let client = kacme::pod_certificate::agent::EndpointClient::new(&config).unwrap();
    let key = kacme::pki::generate_private_key(&kacme::pki::KeySpec::from_spec(None)).unwrap();
    let csr = kacme::pki::CsrRequest { dns_names: vec!["agent-0.pods.test".into()], ..Default::default() };
    let csr = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", kacme::pki::build_csr(&csr, &key).unwrap()));
    poll_until("the per-Pod certificate", Duration::from_secs(60), Duration::from_millis(500), || async {
        let (status, answer, _) = client.post(&token, &csr).await.map_err(anyhow::Error::msg)?;
        Ok(match (status.as_u16(), answer.certificate) {
            (200, Some(_)) => Ok(()),
            (202, _) => Err("pending".to_string()),
            (code, _) => panic!("{code}: {:?}\n{}", answer.message, env.operator_log()),
        })
    })
    .await
    .unwrap();
    env.wait_no_solver_objects("apps").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_charts_service_account_issues_certificates_and_may_do_nothing_more() {
    tokio::time::timeout(Duration::from_secs(150), run()).await.expect("the test did not finish within 150s");
}

async fn run() {
    let pebble = Pebble::start(PebbleOptions::default()).await.expect("starting Pebble");
    let mut env = OperatorEnv::prepare(Ca::Pebble(pebble), true).await.expect("starting the environment");

    // The chart's ServiceAccount and RBAC (the CRDs are in place already; no Pod runs here).
    let helm = Helm::for_cluster(env.control_plane.kubeconfig_path()).unwrap();
    let chart = chart_dir().display().to_string();
    // With the webhook: the chart installs its MutatingWebhookConfiguration, the operator fills in its caBundle.
    let install = [
        "install",
        "kacme",
        &chart,
        "--namespace",
        "kacme",
        "--skip-crds",
        "--set",
        "webhook.enabled=true,webhook.podCertificates.enabled=true",
    ];
    helm.run(&install).await.expect("helm install");
    let manifest = helm.run(&["get", "manifest", "kacme", "--namespace", "kacme"]).await.unwrap();
    let granted = granted_rights(&manifest);

    // A token for the ServiceAccount from the TokenRequest API, and the operator running with it.
    let token = env
        .control_plane
        .kubectl(&["create", "token", "kacme", "--namespace", "kacme", "--duration", "1h"])
        .await
        .expect("TokenRequest for the chart's ServiceAccount");
    let kubeconfig = env.control_plane.dir().join("kacme-serviceaccount.kubeconfig");
    token_kubeconfig(&env, token.trim(), &kubeconfig);
    // The webhook as the chart runs it (only the address differs: no Pod runs here, so the apiserver could not
    // reach the chart's Service; no Pod in this test goes through the webhook).
    let ip = env.ca.ip();
    let port = std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
    let webhook_args = [
        format!("--webhook-address={ip}:{port}"),
        "--webhook-service=kacme-webhook".into(),
        "--webhook-namespace=kacme".into(),
        "--webhook-configuration=kacme".into(),
        "--webhook-manage-configuration=false".into(),
        "--pod-certificates".into(),
        "--pod-certificate-audience=kacme.dev/agent".into(),
    ];
    env.start_operator_with(&OperatorLaunch {
        kubeconfig: Some(kubeconfig.clone()),
        leader_elect: true,
        args: webhook_args.to_vec(),
        envs: vec![("POD_NAME".into(), "kacme-0".into()), ("POD_NAMESPACE".into(), "kacme".into())],
    })
    .unwrap();

    // Issuance through an Issuer (its account key in apps) and a ClusterIssuer (its key in kacme).
    env.apply(&env.issuer_yaml("apps", "ca")).await.unwrap();
    let cluster_issuer = env
        .issuer_yaml("apps", "cluster-ca")
        .replace("kind: Issuer", "kind: ClusterIssuer")
        .replace("  namespace: apps\n", "");
    env.apply(&cluster_issuer).await.unwrap();
    env.apply(&certificate_yaml("web", "Issuer", "ca")).await.unwrap();
    env.apply(&certificate_yaml("api", "ClusterIssuer", "cluster-ca")).await.unwrap();
    env.wait_ready("apps", "web", Duration::from_secs(60)).await.expect("issued with the ServiceAccount's rights");
    env.wait_ready("apps", "api", Duration::from_secs(60)).await.expect("issued through the ClusterIssuer");
    env.wait_no_solver_objects("apps").await.unwrap();
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(env.client.clone());
    poll_until(
        "the chart's webhook configuration with kacme's caBundle",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let configuration = configurations.get("kacme").await?;
            let bundle = kacme::webhook::configuration::current_ca_bundle(&configuration).unwrap_or_default();
            Ok(if bundle.contains("BEGIN CERTIFICATE") { Ok(()) } else { Err("no caBundle yet".to_string()) })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", env.operator_log()));
    assert!(env.secrets("kacme").get_opt("cluster-ca-account").await.unwrap().is_some(), "ClusterIssuer key");

    // A renewal replaces the Secret kacme created (a Secret is created with a POST, replaced with a patch).
    env.control_plane
        .kubectl(&["annotate", "certificate", "web", "-n", "apps", "kacme.dev/renew-requested-at=now"])
        .await
        .unwrap();
    env.wait_certificate("apps", "web", Duration::from_secs(60), "Certificate apps/web renewed", |c| {
        c.status.as_ref().and_then(|s| s.revision) == Some(2) && c.status.as_ref().is_some_and(|s| s.order.is_none())
    })
    .await
    .expect("renewed with the ServiceAccount's rights");

    // An Ingress annotated with the issuer gets a Certificate, which goes with the annotation.
    env.apply(INGRESS).await.unwrap();
    env.wait_ready("apps", "shop-tls", Duration::from_secs(60)).await.expect("the annotated Ingress's Certificate");
    env.control_plane.kubectl(&["annotate", "ingress", "shop", "-n", "apps", "kacme.dev/issuer-"]).await.unwrap();
    env.wait_certificate_gone("apps", "shop-tls", Duration::from_secs(30)).await.unwrap();

    // A per-Pod certificate: the endpoint reviews the Pod's token, reads the Pod and its solver objects.
    // The agent's URL names the chart's Service (the serving certificate's name); it connects to the address.
    per_pod_certificate(&env, &format!("{ip}:{port}")).await;

    // Deleting a Certificate runs the finalizer's cleanup.
    env.certificates("apps").delete("api", &DeleteParams::default()).await.unwrap();
    env.wait_certificate_gone("apps", "api", Duration::from_secs(30)).await.unwrap();

    // What the operator did, from the audit log: nothing refused, every granted right used.
    let requests: Vec<ApiRequest> =
        env.audit().unwrap().read_new().unwrap().into_iter().filter(|r| r.user == SERVICE_ACCOUNT).collect();
    assert!(!requests.is_empty(), "the audit log has the ServiceAccount's requests");
    let refused: Vec<String> =
        requests.iter().filter(|r| r.code == 403).map(|r| format!("{} {}", r.verb_and_resource(), r.name)).collect();
    assert!(refused.is_empty(), "requests of the operator refused: {refused:?}\n{}", env.operator_log());
    // Non-resource requests (API discovery: whether the Gateway API is served) are every authenticated user's
    // through the system:discovery role, not the chart's.
    let used: BTreeSet<String> =
        requests.iter().filter(|r| !r.resource.is_empty()).map(ApiRequest::verb_and_resource).collect();
    let beyond: Vec<&String> = used.iter().filter(|u| !granted.contains(*u) && !u.contains("selfsubject")).collect();
    assert!(beyond.is_empty(), "used without a grant (the apiserver allowed them?): {beyond:?}");
    let unused: Vec<&String> = granted
        .iter()
        .filter(|g| !used.contains(*g) && !NOT_SEEN_AS_REQUESTS.iter().any(|(right, _)| right == g))
        .collect();
    eprintln!("rights granted: {granted:?}\nrights used: {used:?}");
    assert!(unused.is_empty(), "granted but never used (remove them from the chart, or explain them): {unused:?}");

    // And it is denied what it does not need.
    let kubeconfig = Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    let client = kube::Client::try_from(config).unwrap();
    for (verb, group, resource, namespace) in [
        ("get", "kacme.dev", "certificates", "apps"),
        ("patch", "kacme.dev", "certificates/status", "apps"),
        ("patch", "", "secrets", "apps"),
        ("patch", "coordination.k8s.io", "kacme-controller@leases", "kacme"),
        ("patch", "admissionregistration.k8s.io", "kacme@mutatingwebhookconfigurations", ""),
        ("watch", "admissionregistration.k8s.io", "kacme@mutatingwebhookconfigurations", ""),
    ] {
        assert!(access_allowed(&client, verb, group, resource, namespace).await, "allowed: {verb} {resource}");
    }
    for (verb, group, resource, namespace) in [
        ("delete", "", "namespaces", ""),
        ("create", "apiextensions.k8s.io", "customresourcedefinitions", ""),
        ("update", "apiextensions.k8s.io", "customresourcedefinitions", ""),
        ("update", "kacme.dev", "certificates", "apps"),
        ("deletecollection", "kacme.dev", "certificates", "apps"),
        ("patch", "networking.k8s.io", "ingresses", "apps"),
        ("patch", "kacme.dev", "issuers", "apps"),
        ("delete", "kacme.dev", "clusterissuers", ""),
        ("update", "", "secrets", "apps"),
        ("deletecollection", "", "secrets", "apps"),
        ("get", "", "configmaps", "apps"),
        ("patch", "", "pods", "apps"),
        ("create", "", "pods/exec", "apps"),
        ("get", "", "nodes", ""),
        ("create", "apps", "deployments", "kacme"),
        ("create", "rbac.authorization.k8s.io", "clusterrolebindings", ""),
        ("escalate", "rbac.authorization.k8s.io", "clusterroles", ""),
        ("impersonate", "", "users", ""),
        ("create", "", "events", "apps"),
        ("get", "coordination.k8s.io", "leases", "apps"),
        ("delete", "coordination.k8s.io", "leases", "kacme"),
        ("update", "coordination.k8s.io", "kacme-controller@leases", "kacme"),
        ("patch", "coordination.k8s.io", "another-lease@leases", "kacme"),
        ("create", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", ""),
        ("list", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", ""),
        ("patch", "admissionregistration.k8s.io", "another-webhook@mutatingwebhookconfigurations", ""),
        ("delete", "admissionregistration.k8s.io", "kacme@mutatingwebhookconfigurations", ""),
        ("update", "admissionregistration.k8s.io", "kacme@mutatingwebhookconfigurations", ""),
        ("patch", "admissionregistration.k8s.io", "kacme@validatingwebhookconfigurations", ""),
    ] {
        assert!(
            !access_allowed(&client, verb, group, resource, namespace).await,
            "the ServiceAccount may {verb} {group}/{resource} in {namespace:?}, which kacme never needs"
        );
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let error = namespaces.delete("apps", &DeleteParams::default()).await.expect_err("deleting a namespace is denied");
    assert!(matches!(&error, kube::Error::Api(status) if status.code == 403), "{error}");

    // Without its Lease rights the leader cannot renew: it stops (exits) before the Lease could expire.
    env.control_plane
        .kubectl(&["delete", "rolebinding", "kacme-leader-election", "--namespace", "kacme"])
        .await
        .unwrap();
    let revoked = std::time::Instant::now();
    let operator = env.operator().unwrap();
    poll_until(
        "the operator to exit without its Lease",
        Duration::from_secs(25),
        Duration::from_millis(200),
        || async { Ok(if operator.exited() { Ok(()) } else { Err("still running".to_string()) }) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log_tail(20)));
    eprintln!("the leader stepped down {:.1}s after losing its Lease rights", revoked.elapsed().as_secs_f64());
    assert!(operator.log().contains("renewing the Lease failed for too long"), "{}", operator.log_tail(10));
}
