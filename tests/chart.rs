//! The Helm chart `charts/kacme`: its CRDs are the generated ones, `helm lint` passes, it renders a hardened
//! Deployment, and it installs, upgrades and uninstalls cleanly on a real control plane.

mod common;

use common::helm::{Helm, chart_dir};
use common::within;
use kacme_testenv::ControlPlane;
use serde_yaml::Value;
use std::path::Path;
use std::time::Duration;

/// Bounds a test: a hung helm or control plane fails it instead of hanging the run.

#[test]
fn the_charts_crds_equal_the_generated_ones() {
    let dir = chart_dir().join("crds");
    let regenerate = "run `cargo run -- crds --dir crds --dir charts/kacme/crds`";
    let mut expected = Vec::new();
    for crd in kacme::api::crds() {
        let name = kacme::api::crd_file_name(&crd);
        let checked_in = std::fs::read_to_string(dir.join(&name))
            .unwrap_or_else(|e| panic!("charts/kacme/crds/{name} is missing ({e}); {regenerate}"));
        assert!(
            checked_in == kacme::api::crd_yaml(&crd).unwrap(),
            "charts/kacme/crds/{name} is stale or was edited by hand; {regenerate}"
        );
        expected.push(name);
    }
    let mut present: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    present.sort();
    expected.sort();
    assert_eq!(present, expected, "charts/kacme/crds/ holds a file the code does not generate");
}

fn chart_yaml() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap()).unwrap()
}

#[test]
fn the_charts_app_version_is_the_crate_version_and_the_binarys_default_image_tag() {
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(chart_yaml()["appVersion"].as_str(), Some(version), "Chart.yaml appVersion = Cargo.toml version");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_kacme")).args(["controller", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains(&format!("ghcr.io/kacme/kacme:{version}")),
        "the binary's default solver image is the chart's default image:\n{help}"
    );
}

fn find<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|d| d["kind"].as_str() == Some(kind)).collect()
}

fn kinds(documents: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = documents.iter().filter_map(|d| d["kind"].as_str().map(String::from)).collect();
    kinds.sort();
    kinds
}

#[tokio::test]
async fn helm_lint_passes_and_the_chart_renders_a_hardened_operator() {
    within(60, async {
        let helm = Helm::offline().unwrap();
        let chart = chart_dir().display().to_string();
        helm.run(&["lint", "--strict", &chart]).await.unwrap();
        helm.run(&["lint", "--strict", &chart, "--set", "podDisruptionBudget.enabled=true"]).await.unwrap();
        let monitoring = "metrics.serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true";
        helm.run(&["lint", "--strict", &chart, "--set", monitoring]).await.unwrap();

        let documents = helm.template("kacme", "kacme-system", &[]).await.unwrap();
        assert_eq!(
            kinds(&documents),
            [
                "ClusterRole",
                "ClusterRole",
                "ClusterRole",
                "ClusterRoleBinding",
                "Deployment",
                "Role",
                "RoleBinding",
                "Service",
                "ServiceAccount"
            ],
            "by default: no ServiceMonitor, PrometheusRule, dashboard ConfigMap or PodDisruptionBudget"
        );
        // edit and admin may manage Certificates, not Issuers (an Issuer picks the CA); view reads both.
        let role_rules = |documents: &[Value], name: &str| -> Vec<(String, String)> {
            let role = documents
                .iter()
                .find(|d| d["kind"].as_str() == Some("ClusterRole") && d["metadata"]["name"].as_str() == Some(name));
            let mut rights = Vec::new();
            for rule in role.map(|r| r["rules"].as_sequence().unwrap().clone()).unwrap_or_default() {
                for resource in rule["resources"].as_sequence().unwrap() {
                    for verb in rule["verbs"].as_sequence().unwrap() {
                        rights.push((resource.as_str().unwrap().to_string(), verb.as_str().unwrap().to_string()));
                    }
                }
            }
            rights
        };
        let edit = role_rules(&documents, "kacme-edit");
        assert!(edit.iter().any(|(r, v)| r == "certificates" && v == "create"), "{edit:?}");
        assert!(edit.iter().all(|(r, _)| r == "certificates"), "edit gets no rights on issuers by default: {edit:?}");
        let view = role_rules(&documents, "kacme-view");
        assert!(view.contains(&("issuers".to_string(), "get".to_string())), "{view:?}");
        assert!(role_rules(&documents, "kacme-edit-issuers").is_empty());
        let with_issuers = helm.template("kacme", "kacme-system", &["--set", "rbac.aggregateIssuersToEdit=true"]).await.unwrap();
        let edit_issuers = role_rules(&with_issuers, "kacme-edit-issuers");
        assert!(edit_issuers.contains(&("issuers".to_string(), "create".to_string())), "{edit_issuers:?}");
        let labels = &with_issuers
            .iter()
            .find(|d| d["metadata"]["name"].as_str() == Some("kacme-edit-issuers"))
            .unwrap()["metadata"]["labels"];
        assert_eq!(labels["rbac.authorization.k8s.io/aggregate-to-edit"].as_str(), Some("true"));

        let deployment = find(&documents, "Deployment")[0];
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(container["image"].as_str(), Some(format!("ghcr.io/kacme/kacme:{version}").as_str()));
        let args: Vec<&str> = container["args"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
        for arg in [
            "controller",
            "--cluster-resource-namespace=kacme-system",
            &format!("--solver-image=ghcr.io/kacme/kacme:{version}"),
            "--metrics-address=0.0.0.0:9402",
            "--leader-elect=true",
            "--leader-election-namespace=kacme-system",
            "--leader-election-lease-duration=15s",
            "--stall-threshold=10m",
        ] {
            assert!(args.contains(&arg), "{arg} in {args:?}");
        }
        assert!(!args.iter().any(|a| a.starts_with("--issuer-concurrency")), "the operator's default: {args:?}");
        let with_limit = helm.template("kacme", "kacme-system", &["--set", "issuerConcurrency=6"]).await.unwrap();
        let limited = &find(&with_limit, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"];
        let limited: Vec<&str> = limited.as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(limited.contains(&"--issuer-concurrency=6"), "{limited:?}");
        let security = &container["securityContext"];
        assert_eq!(security["allowPrivilegeEscalation"], Value::Bool(false));
        assert_eq!(security["readOnlyRootFilesystem"], Value::Bool(true));
        assert_eq!(security["capabilities"]["drop"][0].as_str(), Some("ALL"));
        assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::Bool(true));
        assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(65532));
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
        assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
        assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
        let env: Vec<(&str, &str)> = container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap_or("")))
            .collect();
        assert!(env.contains(&("POD_NAME", "metadata.name")) && env.contains(&("POD_NAMESPACE", "metadata.namespace")));
        let spread = &pod["topologySpreadConstraints"][0];
        assert_eq!(spread["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"].as_str(), Some("kacme"));
        assert!(container["resources"]["requests"]["memory"].is_string());
        assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));

        // The options: a pinned digest for both images, ServiceMonitor and PodDisruptionBudget, no spreading.
        let documents = helm
            .template(
                "kacme",
                "kacme-system",
                &[
                    "--set",
                    "metrics.serviceMonitor.enabled=true,podDisruptionBudget.enabled=true,topologySpreadConstraints=null",
                    "--set-string",
                    "image.digest=sha256:0123,clusterResourceNamespace=pki",
                ],
            )
            .await
            .unwrap();
        assert_eq!(find(&documents, "ServiceMonitor").len(), 1);
        assert_eq!(find(&documents, "PodDisruptionBudget")[0]["spec"]["minAvailable"].as_u64(), Some(1));
        let pod = &find(&documents, "Deployment")[0]["spec"]["template"]["spec"];
        assert!(pod["topologySpreadConstraints"].is_null());
        let container = &pod["containers"][0];
        assert_eq!(container["image"].as_str(), Some("ghcr.io/kacme/kacme@sha256:0123"));
        assert!(!container["args"].as_sequence().unwrap().iter().any(|a| a.as_str().unwrap().starts_with("--self-check")));
        // The self-check, dialing the ingress controller instead of resolving names.
        let documents = helm
            .template("kacme", "kacme-system", &["--set", "selfCheckDeadline=60s,selfCheckAddress=10.0.0.80:80"])
            .await
            .unwrap();
        let args = &find(&documents, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"];
        let args: Vec<&str> = args.as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(args.contains(&"--self-check-deadline=60s") && args.contains(&"--self-check-address=10.0.0.80:80"), "{args:?}");
        let args: Vec<&str> = container["args"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(args.contains(&"--solver-image=ghcr.io/kacme/kacme@sha256:0123"), "{args:?}");
        assert!(args.contains(&"--cluster-resource-namespace=pki"), "{args:?}");

        // The workload webhook and CA bundle distribution: off by default, values when on.
        assert!(find(&documents, "Role").iter().all(|r| r["metadata"]["name"].as_str() != Some("kacme-webhook")));
        let documents = helm
            .template(
                "kacme",
                "kacme-system",
                &[
                    "--set",
                    "webhook.enabled=true,webhook.failurePolicy=Ignore,caBundle.namespaceSelector=team=web",
                    "--set-string",
                    "webhook.namespaceSelector=kacme!=off",
                ],
            )
            .await
            .unwrap();
        let container = &find(&documents, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
        for arg in [
            "--webhook-address=0.0.0.0:9443",
            "--webhook-service=kacme-webhook",
            "--webhook-namespace=kacme-system",
            "--webhook-failure-policy=Ignore",
            "--webhook-namespace-selector=kacme!=off",
            "--ca-bundle-namespace-selector=team=web",
        ] {
            assert!(args.contains(&arg), "{arg} in {args:?}");
        }
        let services: Vec<&str> = find(&documents, "Service").iter().filter_map(|s| s["metadata"]["name"].as_str()).collect();
        assert!(services.contains(&"kacme-webhook"), "{services:?}");
        assert!(args.contains(&"--webhook-manage-configuration=false"), "the chart owns the configuration: {args:?}");
        let rules = serde_yaml::to_string(&find(&documents, "ClusterRole")[0]["rules"]).unwrap();
        assert!(rules.contains("configmaps"), "{rules}");
        let webhook_rules: Vec<&Value> = find(&documents, "ClusterRole")[0]["rules"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|r| r["resources"][0].as_str() == Some("mutatingwebhookconfigurations"))
            .collect();
        assert_eq!(webhook_rules.len(), 1, "{rules}");
        let names: Vec<&str> =
            webhook_rules[0]["resourceNames"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
        let verbs: Vec<&str> = webhook_rules[0]["verbs"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
        assert_eq!(names, ["kacme"], "only the chart's own configuration");
        assert_eq!(verbs, ["list", "watch", "patch"], "patch its caBundle, watch it by name; never create it");

        // The chart's configuration is the one the operator would build (minus the caBundle, which it fills in).
        let configurations = find(&documents, "MutatingWebhookConfiguration");
        assert_eq!(configurations.len(), 1);
        assert_eq!(configurations[0]["metadata"]["name"].as_str(), Some("kacme"));
        let rendered: serde_json::Value = serde_json::to_value(&configurations[0]["webhooks"]).unwrap();
        let policy = kacme::webhook::configuration::WebhookPolicy {
            failure_policy: "Ignore".into(),
            excluded_namespaces: vec!["kacme-system".into(), "kube-system".into()],
            namespace_selector: kacme::webhook::configuration::parse_label_selector("kacme!=off").unwrap(),
            timeout_seconds: 5,
        };
        let endpoint = kacme::webhook::configuration::WebhookEndpoint::Service {
            namespace: "kacme-system".into(),
            name: "kacme-webhook".into(),
            port: 443,
        };
        let built = kacme::webhook::configuration::build_webhook_configuration("kacme", &endpoint, "", &policy);
        let mut expected = serde_json::to_value(&built.webhooks).unwrap();
        expected[0]["clientConfig"].as_object_mut().unwrap().remove("caBundle");
        assert_eq!(rendered, expected, "templates/webhook.yaml and build_webhook_configuration agree");
        // The chart parses webhook.namespaceSelector as the operator parses --webhook-namespace-selector.
        for (selector, own_expressions) in [("", 0), ("a=b,c==d", 0), ("team, !legacy, tier!=infra", 3)] {
            let value = format!("webhook.namespaceSelector={}", selector.replace(',', "\\,"));
            let documents =
                helm.template("kacme", "kacme", &["--set", "webhook.enabled=true", "--set-string", &value]).await.unwrap();
            let configuration = find(&documents, "MutatingWebhookConfiguration")[0];
            let rendered = serde_json::to_value(&configuration["webhooks"][0]["namespaceSelector"]).unwrap();
            let policy = kacme::webhook::configuration::WebhookPolicy {
                excluded_namespaces: vec!["kacme".into(), "kube-system".into()],
                namespace_selector: kacme::webhook::configuration::parse_label_selector(selector).unwrap(),
                ..policy.clone()
            };
            let built = kacme::webhook::configuration::build_webhook_configuration("kacme", &endpoint, "", &policy);
            let built = serde_json::to_value(&built.webhooks.unwrap()[0].namespace_selector).unwrap();
            assert_eq!(rendered, built, "namespaceSelector {selector:?}");
            let expressions = rendered["matchExpressions"].as_array().map_or(0, Vec::len);
            assert_eq!(expressions, own_expressions + 1, "{selector:?}: {rendered}");
        }
        assert!(rules.contains("replicasets") && rules.contains("jobs"), "workload controllers read: {rules}");
        helm.run(&["lint", "--strict", &chart, "--set", "webhook.enabled=true,caBundle.namespaceSelector=x"]).await.unwrap();
    })
    .await
}

const SERVICE_MONITOR_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
";

/// Every object in the cluster, of every listable kind, carrying `selector`, as `kind/name` lines.
/// ReplicaSets and Pods that the Deployment controller makes carry the chart's labels too.
async fn objects_labelled(control_plane: &ControlPlane, selector: &str) -> Vec<String> {
    let kinds = control_plane.kubectl(&["api-resources", "--verbs=list", "-o", "name"]).await.unwrap();
    // Events are not the chart's objects; they are named after their subject, and go by themselves.
    let kinds: Vec<&str> = kinds.lines().filter(|k| !k.starts_with("events")).collect();
    let listed = control_plane
        .kubectl(&["get", &kinds.join(","), "--all-namespaces", "-l", selector, "-o", "name"])
        .await
        .unwrap();
    let mut names: Vec<String> = listed.lines().map(String::from).collect();
    names.sort();
    names
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_installs_upgrades_and_uninstalls_the_chart_leaving_only_the_crds_and_user_data() {
    within(120, async {
        let control_plane = ControlPlane::start().await.expect("starting the control plane");
        let helm = Helm::for_cluster(control_plane.kubeconfig_path()).unwrap();
        let chart = chart_dir().display().to_string();
        let dir = control_plane.dir().to_path_buf();
        control_plane.kubectl(&["apply", "-f", &write(&dir, "servicemonitor-crd.yaml", SERVICE_MONITOR_CRD)]).await.unwrap();
        control_plane
            .kubectl(&["wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com", "--timeout=30s"])
            .await
            .unwrap();

        helm.run(&["install", "kacme", &chart, "--namespace", "kacme", "--create-namespace"]).await.unwrap();
        for crd in ["certificates.kacme.dev", "issuers.kacme.dev", "clusterissuers.kacme.dev"] {
            control_plane
                .kubectl(&["wait", "--for=condition=Established", &format!("crd/{crd}"), "--timeout=30s"])
                .await
                .unwrap_or_else(|e| panic!("helm installed the CRD {crd} from crds/: {e:#}"));
        }
        let selector = "app.kubernetes.io/instance=kacme";
        let installed: Vec<String> = objects_labelled(&control_plane, selector)
            .await
            .into_iter()
            .filter(|o| !o.starts_with("replicaset.apps/") && !o.starts_with("pod/"))
            .collect();
        let expected = [
            "clusterrole.rbac.authorization.k8s.io/kacme-controller",
            "clusterrole.rbac.authorization.k8s.io/kacme-edit",
            "clusterrole.rbac.authorization.k8s.io/kacme-view",
            "clusterrolebinding.rbac.authorization.k8s.io/kacme-controller",
            "deployment.apps/kacme",
            "role.rbac.authorization.k8s.io/kacme-leader-election",
            "rolebinding.rbac.authorization.k8s.io/kacme-leader-election",
            "service/kacme-metrics",
            "serviceaccount/kacme",
        ];
        assert_eq!(installed, expected, "the chart's objects, found by its labels");
        let replicas = |output: String| output.trim().to_string();
        let deployment = |field: &'static str| {
            let control_plane = &control_plane;
            async move {
                control_plane
                    .kubectl(&["get", "deployment", "kacme", "-n", "kacme", "-o", &format!("jsonpath={field}")])
                    .await
                    .unwrap()
            }
        };
        assert_eq!(replicas(deployment("{.spec.replicas}").await), "2");

        // User data: a Certificate (nothing reconciles it here: no Pods run).
        let certificate = "apiVersion: kacme.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: web\n  namespace: default\nspec:\n  secretName: web-tls\n  issuerRef:\n    name: ca\n  dnsNames: [web.example.test]\n";
        control_plane.kubectl(&["apply", "-f", &write(&dir, "certificate.yaml", certificate)]).await.unwrap();

        helm.run(&[
            "upgrade",
            "kacme",
            &chart,
            "--namespace",
            "kacme",
            "--set",
            "replicaCount=3,logLevel=debug,podDisruptionBudget.enabled=true,metrics.serviceMonitor.enabled=true",
        ])
        .await
        .unwrap();
        let status: serde_json::Value =
            serde_json::from_str(&helm.run(&["status", "kacme", "--namespace", "kacme", "-o", "json"]).await.unwrap())
                .unwrap();
        assert_eq!(status["info"]["status"], "deployed");
        assert_eq!(status["version"], 2);
        assert_eq!(replicas(deployment("{.spec.replicas}").await), "3");
        assert_eq!(deployment("{.metadata.generation}").await.trim(), "2", "the upgrade changed the Deployment once");
        let args = deployment("{.spec.template.spec.containers[0].args}").await;
        assert!(args.contains("--log-level=debug"), "{args}");
        let upgraded = objects_labelled(&control_plane, selector).await;
        for added in ["poddisruptionbudget.policy/kacme", "servicemonitor.monitoring.coreos.com/kacme"] {
            assert!(upgraded.iter().any(|o| o == added), "{added} in {upgraded:?}");
        }

        helm.run(&["uninstall", "kacme", "--namespace", "kacme", "--wait", "--timeout", "30s"]).await.unwrap();
        // What helm deleted is gone at once; what the Deployment made goes with the garbage collector.
        kacme_testenv::poll_until(
            "nothing of the chart left after helm uninstall",
            Duration::from_secs(30),
            Duration::from_millis(250),
            || async {
                let left = objects_labelled(&control_plane, selector).await;
                Ok(if left.is_empty() { Ok(()) } else { Err(format!("left: {left:?}")) })
            },
        )
        .await
        .unwrap();
        let release_secrets = control_plane
            .kubectl(&["get", "secrets", "-n", "kacme", "-l", "owner=helm,name=kacme", "-o", "name"])
            .await
            .unwrap();
        assert!(release_secrets.trim().is_empty(), "helm's release records are gone: {release_secrets}");
        let crds = control_plane.kubectl(&["get", "crds", "-o", "name"]).await.unwrap();
        for crd in ["certificates.kacme.dev", "issuers.kacme.dev", "clusterissuers.kacme.dev"] {
            assert!(crds.contains(crd), "the CRD {crd} stays (helm never deletes crds/): {crds}");
        }
        let certificates = control_plane.kubectl(&["get", "kcert", "-A", "-o", "name"]).await.unwrap();
        assert_eq!(certificates.trim(), "certificate.kacme.dev/web", "user data stays");
    })
    .await
}
